//! The node as a user meets it: the real binary, its exit codes, its
//! messages, and a clean start and stop.

use crate::common;

use std::time::Duration;

use common::*;

#[test]
fn version_prints_the_crate_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(dir.path(), &["--version"]);
    assert!(out.status.success());
    assert_eq!(
        stdout(&out).trim(),
        format!("meshlet {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_accepts_the_shipped_examples() {
    let out = run(&repo_root(), &["check", "schema/examples"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("ok: 5 products valid ("), "{text}");
    for name in [
        "machine_health",
        "energy_meter",
        "customer_asset",
        "press_line",
        "room_climate",
    ] {
        assert!(text.contains(name), "{name} missing from: {text}");
    }
}

#[test]
fn check_without_paths_uses_the_embedded_default_examples() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_examples(dir.path());
    let out = run(dir.path(), &["check"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(stdout(&out).starts_with("ok: 5 products valid"));
}

#[test]
fn check_reports_every_problem_of_every_file_and_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("a.yaml"),
        "product: a\nversion: 1\ndomain: d\nowner: o@example.com\nkey: id\nfields:\n  id: { type: string }\n  temp: { type: flaot }\n",
    )
    .expect("write a");
    std::fs::write(
        dir.path().join("b.yaml"),
        "product: b\nversion: 1\ndomain: d\nowner: o@example.com\nkey: missing\nfields:\n  id: { type: string }\n",
    )
    .expect("write b");
    let out = run(dir.path(), &["check", "."]);
    assert_eq!(out.status.code(), Some(1), "stdout: {}", stdout(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("./a.yaml:8:17: fields.temp.type: ")),
        "{err}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("./b.yaml:5:6: key: ")),
        "{err}"
    );
    assert_eq!(
        lines.last().copied(),
        Some("error: 2 problems in 2 files"),
        "{err}"
    );
}

#[test]
fn check_refuses_a_broken_hub_config_with_its_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("meshlet.toml"), "[http]\nlisten = 8080\n").expect("write");
    let out = run(
        &repo_root(),
        &[
            "--config",
            dir.path().join("meshlet.toml").to_str().expect("utf8 path"),
            "check",
            "schema/examples",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with("error: invalid hub config: "), "{err}");
    assert!(
        err.contains("meshlet.toml:2:10: invalid type: integer `8080`"),
        "{err}"
    );
}

#[test]
fn sync_rule_to_an_upstream_the_config_does_not_declare_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("meshlet.toml"), "[upstreams.hq]\n").expect("write");
    let out = run(
        &repo_root(),
        &[
            "--config",
            dir.path().join("meshlet.toml").to_str().expect("utf8 path"),
            "check",
            "schema/examples",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("unknown upstream `central`"), "{err}");
}

#[test]
fn serve_on_the_embedded_default_is_ready_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_examples(dir.path());
    let node = NodeBuilder::new(dir.path()).start().expect("node starts");

    let (status, body) = http_get(&node.url("/livez"));
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = http_get(&node.url("/readyz"));
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("readyz JSON");
    assert_eq!(ready["status"], "ready");
    assert_eq!(
        ready["products"],
        serde_json::json!([
            "customer_asset",
            "energy_meter",
            "machine_health",
            "press_line",
            "room_climate"
        ])
    );
    let node_id = ready["node_id"].as_str().expect("node id").to_string();
    assert!(
        dir.path().join("meshlet-data/store").is_dir(),
        "data lives under ./meshlet-data"
    );

    let (status, logs) = node.stop();
    assert!(
        status.success(),
        "exit status {status:?}; logs:\n{}",
        logs.join("\n")
    );
    assert!(
        logs.iter().any(|l| l.contains("store flushed; stopped")),
        "final flush logged:\n{}",
        logs.join("\n")
    );

    // The generated node id survives a restart.
    let node = NodeBuilder::new(dir.path()).start().expect("node restarts");
    let (_, body) = http_get(&node.url("/readyz"));
    let ready: serde_json::Value = serde_json::from_str(&body).expect("readyz JSON");
    assert_eq!(ready["node_id"], node_id.as_str());
    let (status, _) = node.stop();
    assert!(status.success());
}

#[test]
fn sigint_also_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_examples(dir.path());
    let mut node = NodeBuilder::new(dir.path()).start().expect("node starts");
    node.signal(libc::SIGINT);
    let status = node.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(status.success(), "{status:?}");
}

#[test]
fn serve_refuses_to_start_on_an_invalid_definition() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("bad.yaml"),
        "product: bad\nversion: 1\ndomain: d\nowner: o@example.com\nkey: id\nfields:\n  id: { type: string, colour: red }\n",
    )
    .expect("write");
    let out = meshlet(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--products", "bad.yaml"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("product definitions are invalid"), "{err}");
    assert!(err.contains("bad.yaml:7:"), "{err}");
    assert!(err.contains("colour"), "{err}");
    assert!(
        !dir.path().join("meshlet-data").exists(),
        "nothing is created before the definitions are valid"
    );
}

#[test]
fn serve_reports_an_address_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = meshlet(dir.path())
        .args(["serve", "--listen", &addr])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("cannot listen on {addr}")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn env_overrides_reach_the_running_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_examples(dir.path());
    let node = NodeBuilder::new(dir.path())
        .env("MESHLET_NODE_ID", "gw-env-1")
        .env("MESHLET_DATA_DIR", "elsewhere")
        .start()
        .expect("node starts");
    let (_, body) = http_get(&node.url("/readyz"));
    assert!(body.contains("\"node_id\":\"gw-env-1\""), "{body}");
    assert!(dir.path().join("elsewhere/store").is_dir());
    let (status, _) = node.stop();
    assert!(status.success());
}

/// The allocator's purge delay (`src/memory.rs`): the node's own default,
/// or what the service's environment says; `/metrics` shows which.
#[test]
fn the_allocator_purge_delay_is_the_default_unless_the_environment_sets_it() {
    for (environment, seconds) in [(None, 0.1), (Some("250"), 0.25)] {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_examples(dir.path());
        let mut builder = NodeBuilder::new(dir.path());
        if let Some(ms) = environment {
            builder = builder.env("MIMALLOC_PURGE_DELAY", ms);
        }
        let node = builder.start().expect("node starts");
        assert_eq!(
            metric(&node, "meshlet_allocator_purge_delay_seconds"),
            Some(seconds),
            "MIMALLOC_PURGE_DELAY={environment:?}"
        );
        let (status, _) = node.stop();
        assert!(status.success());
    }
}

#[test]
fn under_systemd_it_notifies_ready_pets_the_watchdog_and_announces_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_examples(dir.path());
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let node = NodeBuilder::new(dir.path())
        .env("NOTIFY_SOCKET", socket_path.to_str().expect("utf8"))
        .env("WATCHDOG_USEC", "200000")
        .start()
        .expect("node starts");
    let mut buffer = [0u8; 256];
    let mut receive = || {
        let n = socket.recv(&mut buffer).expect("a notification");
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    };
    assert_eq!(receive(), "READY=1");
    assert_eq!(receive(), "WATCHDOG=1");
    assert_eq!(receive(), "WATCHDOG=1", "petted again within the interval");
    let (status, _) = node.stop();
    assert!(status.success());
    let mut rest = Vec::new();
    while let Ok(n) = socket.recv(&mut buffer) {
        rest.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        if rest.last().is_some_and(|m| m == "STOPPING=1") {
            break;
        }
    }
    assert!(rest.iter().any(|m| m == "STOPPING=1"), "{rest:?}");
}

#[test]
fn the_shipped_production_config_is_valid() {
    let out = run(
        &repo_root(),
        &[
            "--config",
            "cross/deb/meshlet.toml",
            "check",
            "schema/examples",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("hub config valid"));
}

/// `meshlet check` on something that is not a plain file: a named pipe
/// (nobody writes to it: reading would block forever) and `/dev/zero`
/// (never ends: reading it whole exhausts memory). Each is refused at
/// once with a message naming the path; the child runs with a 1 GiB
/// address-space limit and a deadline, so a regression fails the test
/// instead of the machine.
#[cfg(unix)]
#[test]
fn check_refuses_pipes_and_devices_without_reading_them() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("pipe.yaml");
    let c_path = std::ffi::CString::new(fifo.to_str().expect("utf8 path")).expect("no NUL");
    // SAFETY: a valid NUL-terminated path; mkfifo only reads it.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    let fifo_text = fifo.to_str().expect("utf8 path").to_string();
    for (path, kind) in [
        (fifo_text.as_str(), "a named pipe"),
        ("/dev/zero", "a character device"),
    ] {
        let mut cmd = meshlet(dir.path());
        cmd.args(["check", path])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 1 << 30,
                    rlim_max: 1 << 30,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("meshlet runs");
        let finished = eventually(Duration::from_secs(20), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !finished {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`meshlet check {path}` did not finish within 20 s");
        }
        let out = child.wait_with_output().expect("output");
        assert_eq!(out.status.code(), Some(1), "{path}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("{path}:1:1: "))
                && err.contains(&format!("not a regular file ({kind})")),
            "{path}: {err}"
        );
    }
}

/// A definition of product `name` with a string key `id`.
fn named_product(name: &str) -> String {
    format!("product: {name}\nversion: 1\ndomain: d\nowner: o@example.com\nkey: id\nfields:\n  id: {{ type: string }}\n")
}

/// Runs `meshlet serve` in `dir` until it exits (at most 20 s: a node
/// that starts is killed and reported).
fn serve_until_exit(dir: &std::path::Path) -> std::process::Output {
    let mut child = meshlet(dir)
        .args(["-c", "meshlet.toml", "serve", "--listen", "127.0.0.1:0"])
        .env("MESHLET_MQTT__EMBEDDED__ENABLED", "false")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("meshlet runs");
    let exited = eventually(Duration::from_secs(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
    }
    child.wait_with_output().expect("output")
}

/// "check passes" means "serve starts": definitions whose GraphQL names
/// collide (with each other, with the API's own names or GraphQL's
/// scalars) and hub configs `serve` refuses are refused by `check` too,
/// each with a message naming the file and the product or setting — and
/// `serve` refuses them with an error, never a panic.
#[test]
fn check_refuses_everything_serve_refuses() {
    let cases: &[(&str, &[&str], &str, &[&str])] = &[
        (
            "a_1 and a1",
            &["a_1", "a1"],
            "",
            &["a_1.yaml", "product `a1`", "`A1`"],
        ),
        (
            "m and m_connection",
            &["m", "m_connection"],
            "",
            &["m_connection.yaml", "product `m_connection`", "mConnection"],
        ),
        (
            "string",
            &["string"],
            "",
            &["string.yaml", "product `string`", "`String`"],
        ),
        ("int", &["int"], "", &["int.yaml", "product `int`", "`Int`"]),
        (
            "date_time",
            &["date_time"],
            "",
            &["date_time.yaml", "product `date_time`", "`DateTime`"],
        ),
        (
            "nodes",
            &["nodes"],
            "",
            &["nodes.yaml", "product `nodes`", "`nodes`"],
        ),
        (
            "sync_status",
            &["sync_status"],
            "",
            &["sync_status.yaml", "product `sync_status`", "`syncStatus`"],
        ),
        (
            "an upstream URL",
            &["ok"],
            "[upstreams.central]\nurl = \"ftp://hq.example.com\"\n",
            &["upstream `central`", "ftp://hq.example.com"],
        ),
        (
            "an upstream CA file",
            &["ok"],
            "[upstreams.central]\nurl = \"https://hq.example.com\"\nca_file = \"missing-ca.pem\"\n",
            &["upstream `central`", "missing-ca.pem"],
        ),
        (
            "HTTP TLS files",
            &["ok"],
            "[http.tls]\ncert_file = \"missing-cert.pem\"\nkey_file = \"missing-key.pem\"\n",
            &["http.tls", "missing-cert.pem"],
        ),
        (
            "the store key file",
            &["ok"],
            "[store]\nencryption_key_file = \"missing.key\"\n",
            &["store.encryption_key_file", "missing.key"],
        ),
        (
            "the token file",
            &["ok"],
            "[security]\ntokens_file = \"tokens.json\"\n",
            &["tokens", "tokens.json"],
        ),
    ];
    for (what, products, config, expected) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("products")).expect("products dir");
        for name in *products {
            std::fs::write(
                dir.path().join(format!("products/{name}.yaml")),
                named_product(name),
            )
            .expect("write product");
        }
        std::fs::write(dir.path().join("tokens.json"), "{ not json").expect("write tokens");
        std::fs::write(
            dir.path().join("meshlet.toml"),
            format!("data_dir = \"data\"\nproducts = [\"products\"]\n{config}"),
        )
        .expect("write config");

        let out = run(dir.path(), &["-c", "meshlet.toml", "check"]);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what}: check passed: {}{err}",
            stdout(&out)
        );
        for needle in *expected {
            assert!(
                err.contains(needle),
                "{what}: `{needle}` missing from: {err}"
            );
        }
        assert!(
            err.lines()
                .last()
                .unwrap_or_default()
                .starts_with("error: "),
            "{what}: {err}"
        );

        let out = serve_until_exit(dir.path());
        let served = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: serve: {served}");
        assert!(!served.contains("panicked"), "{what}: {served}");
    }
}

/// `[store]` settings the store cannot open with are refused by `check`
/// with the message start-up gives (one mapping from settings to the
/// store's config, one `validate`), every problem at once.
#[test]
fn check_and_serve_refuse_bad_store_settings_with_the_same_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("products")).expect("products dir");
    std::fs::write(dir.path().join("products/ok.yaml"), named_product("ok")).expect("write");
    std::fs::write(
        dir.path().join("meshlet.toml"),
        "data_dir = \"data\"\nproducts = [\"products\"]\n[store]\nzstd_level = 99\nhot_bytes = 10\n",
    )
    .expect("write config");
    let out = run(dir.path(), &["-c", "meshlet.toml", "check"]);
    let checked = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "check passed: {checked}");
    let out = serve_until_exit(dir.path());
    let served = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "serve: {served}");
    for needle in [
        "store config: zstd_level must be in",
        "got 99; hot_bytes must be at least 65536, got 10",
    ] {
        assert!(
            checked.contains(needle),
            "check: `{needle}` missing: {checked}"
        );
        assert!(
            served.contains(needle),
            "serve: `{needle}` missing: {served}"
        );
    }
}

/// Roles that tokens act as but no product names do not stop `serve`, so
/// `check` passes — and says so, once per token.
#[test]
fn check_warns_about_tokens_whose_role_no_product_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("products")).expect("products dir");
    std::fs::write(dir.path().join("products/ok.yaml"), named_product("ok")).expect("write");
    std::fs::write(
        dir.path().join("meshlet.toml"),
        "data_dir = \"data\"\nproducts = [\"products\"]\n",
    )
    .expect("write config");
    create_token(dir.path(), "ghost", "casper");
    create_token(dir.path(), "reader", "dashboard");
    let out = run(dir.path(), &["-c", "meshlet.toml", "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            "warning: token `casper` acts as role `ghost`, which no product's `access` names"
        ),
        "{err}"
    );
    assert!(!err.contains("dashboard"), "{err}");
}

/// Product fields may be named like the fields the API generates beside
/// them (a bucket's `start`, `end`, `count` and `values`, a group's
/// `key` and `count`): `check` passes, the schema builds, and a bucket's
/// per-field statistics are reachable under `values`. A product with a
/// `count` field once stopped the node at start (`Field count already
/// exists`).
#[test]
fn fields_named_like_generated_fields_check_and_build() {
    let dir = tempfile::tempdir().expect("tempdir");
    let products = dir.path().join("products");
    std::fs::create_dir_all(&products).expect("products dir");
    std::fs::write(
        products.join("meter.yaml"),
        "product: meter\nversion: 1\ndomain: d\nowner: o@example.com\nkey: id\nfields:\n  id: { type: string }\n  count: { type: int }\n  start: { type: float }\n  end: { type: string }\n  values: { type: float }\n  key: { type: string }\n",
    )
    .expect("definition");
    let out = run(dir.path(), &["check", "products"]);
    assert!(out.status.success(), "check: {}", stderr(&out));
    let out = run(dir.path(), &["schema", "print", "--products", "products"]);
    assert!(out.status.success(), "schema print: {}", stderr(&out));
    let sdl = stdout(&out);
    let values_type = sdl
        .split("type MeterBucketValues")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .unwrap_or_else(|| panic!("no MeterBucketValues in:\n{sdl}"));
    for field in ["count:", "start:", "end:", "values:"] {
        assert!(values_type.contains(field), "{field} in {values_type}");
    }
}
