//! The amd64 `.deb`, installed for real: `cargo deb` packages the binary
//! this test run built (the test profile: a release build per CI run
//! would cost more than the whole rest of the suite), `dpkg -i` installs
//! it on this machine, the installed binary runs as the package's
//! `meshlet` user on the installed config (no systemd: the unit is only
//! checked to be in place), takes data over MQTT and HTTP and answers
//! GraphQL; `dpkg -r` keeps the data and the config, a reinstall finds
//! them, and only `dpkg --purge` deletes them.
//!
//! It needs root and `cargo-deb` (tests/run.sh installs the pinned one).
//! Without them the test is **skipped** and says so on the terminal; in CI
//! (`CI` or `REQUIRE_DEB_PACKAGE` set) it fails instead. It refuses to run
//! on a machine where a `meshlet` package, `/etc/meshlet` or
//! `/var/lib/meshlet` already exists: it would purge them.

use crate::common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const DATA: &str = "/var/lib/meshlet";
const CONFIG: &str = "/etc/meshlet/meshlet.toml";
const PRODUCTS: &str = "/etc/meshlet/products";
const BINARY: &str = "/usr/bin/meshlet";
const UNIT: &str = "/usr/lib/systemd/system/meshlet.service";

fn required() -> bool {
    let set = |name: &str| {
        std::env::var(name)
            .is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
    };
    set("REQUIRE_DEB_PACKAGE") || set("CI")
}

/// Why this machine cannot run the test, if it cannot.
fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (dpkg -i needs it)".to_string());
    }
    let cargo_deb = Command::new(env!("CARGO"))
        .args(["deb", "--version"])
        .output();
    if !cargo_deb.is_ok_and(|o| o.status.success()) {
        return Some("cargo-deb is not installed (tests/run.sh installs it)".to_string());
    }
    None
}

fn sh(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = sh(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn installed() -> bool {
    sh("dpkg-query", &["-W", "-f=${Status}", "meshlet"])
        .status
        .success()
        && stdout(&sh("dpkg-query", &["-W", "-f=${Status}", "meshlet"])).contains("installed")
}

/// Purges the package when the test ends, however it ends, so a failed
/// run leaves no meshlet installed on the machine.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "meshlet"]).output();
    }
}

/// A launcher that runs the node as the package's user, the way the
/// unit's `User=meshlet` does.
fn as_meshlet_user(dir: &Path) -> PathBuf {
    let path = dir.join("as-meshlet");
    std::fs::write(
        &path,
        "#!/bin/sh\nexec setpriv --reuid=meshlet --regid=meshlet --init-groups -- \"$@\"\n",
    )
    .expect("write launcher");
    ok("chmod", &["755", path.to_str().expect("utf8")]);
    path
}

fn start_installed(launcher: &Path) -> NodeProcess {
    NodeBuilder::new(Path::new("/"))
        .under(launcher, BINARY)
        .arg("--config")
        .arg(CONFIG)
        .start()
        .expect("the installed node starts on the installed config")
}

const QUERY: &str = r#"{"query": "{ machineHealth(machine_id: \"PR-0042\") { status temperature_c line _meta { version } } }"}"#;

fn lookup(node: &NodeProcess) -> serde_json::Value {
    let (status, body) = http_post(
        &node.url("/graphql"),
        "application/json",
        QUERY.as_bytes().to_vec(),
    );
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    body["data"]["machineHealth"].clone()
}

#[test]
fn the_amd64_deb_installs_runs_keeps_data_on_remove_and_purges() {
    if let Some(why) = missing_prerequisite() {
        assert!(
            !required(),
            "{why}, and CI (or REQUIRE_DEB_PACKAGE) requires this test"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED deb_package: {why}; this test checked nothing"
        );
        return;
    }
    assert!(
        !installed() && !Path::new(DATA).exists() && !Path::new("/etc/meshlet").exists(),
        "a meshlet package, /etc/meshlet or {DATA} is already on this machine: \
         this test installs and purges its own, so it will not run here"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let deb = dir.path().join("meshlet_amd64.deb");

    // The binary of this test run, packaged as it is (`--profile dev`
    // points the `target/release/meshlet` asset at target/debug).
    let out = Command::new(env!("CARGO"))
        .current_dir(repo_root())
        .args([
            "deb",
            "--no-build",
            "--no-strip",
            "--fast",
            "--profile",
            "dev",
        ])
        .arg("--output")
        .arg(&deb)
        .output()
        .expect("cargo deb runs");
    assert!(out.status.success(), "cargo deb: {}", stderr(&out));
    let info = ok("dpkg-deb", &["--info", deb.to_str().expect("utf8")]);
    assert!(info.contains("Architecture: amd64"), "{info}");
    let contents = ok("dpkg-deb", &["--contents", deb.to_str().expect("utf8")]);
    for path in [
        "./usr/bin/meshlet",
        "./etc/meshlet/meshlet.toml",
        "./usr/lib/systemd/system/meshlet.service",
        "./usr/share/doc/meshlet/examples/machine_health.yaml",
    ] {
        assert!(
            contents.contains(path),
            "{path} in the package:\n{contents}"
        );
    }

    let _purge = Purge;
    ok("dpkg", &["-i", deb.to_str().expect("utf8")]);
    assert!(installed());
    assert!(Path::new(BINARY).is_file());
    assert!(Path::new(UNIT).is_file());
    let conffiles = ok("dpkg-query", &["-W", "-f=${Conffiles}", "meshlet"]);
    assert!(conffiles.contains(CONFIG), "a conffile: {conffiles}");
    let uid: u32 = ok("id", &["-u", "meshlet"]).trim().parse().expect("uid");
    let data = std::fs::metadata(DATA).expect("the data dir exists");
    assert_eq!(data.uid(), uid, "{DATA} belongs to the meshlet user");
    assert_eq!(data.mode() & 0o777, 0o750);
    let config = std::fs::metadata(CONFIG).expect("config");
    assert_eq!(
        config.mode() & 0o777,
        0o640,
        "tokens and passwords stay private"
    );

    // The operator's part: a product definition.
    std::fs::copy(
        repo_root().join("schema/examples/machine_health.yaml"),
        Path::new(PRODUCTS).join("machine_health.yaml"),
    )
    .expect("install a product");

    let launcher = as_meshlet_user(dir.path());
    let node = start_installed(&launcher);
    let mqtt = node.mqtt.expect("embedded broker").port();
    let out = mosquitto_pub(
        mqtt,
        "plant/berlin/machine/PR-0042/telemetry",
        br#"{"temp": 71.5, "state": "ok"}"#,
        1,
        false,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (status, body) = http_post(
        &node.url("/ingest/machine_health"),
        "application/json",
        br#"{"machine_id": "PR-0042", "line": "L7", "status": "warn"}"#.to_vec(),
    );
    assert_eq!(status, 200, "{body}");
    let mut seen = serde_json::Value::Null;
    assert!(
        eventually(Duration::from_secs(10), || {
            seen = lookup(&node);
            seen["_meta"]["version"] == 2
        }),
        "both records applied: {seen}"
    );
    assert_eq!(seen["status"], "warn");
    assert_eq!(seen["temperature_c"], 71.5);
    assert_eq!(seen["line"], "L7");
    stop_cleanly(node);
    let store = Path::new(DATA).join("store");
    assert!(store.is_dir(), "the store is under {DATA}");
    assert_eq!(std::fs::metadata(&store).expect("store").uid(), uid);

    // Remove: the program goes, the data and the config stay.
    ok("dpkg", &["-r", "meshlet"]);
    assert!(!Path::new(BINARY).exists(), "the binary is removed");
    assert!(store.is_dir(), "dpkg -r keeps {DATA}");
    assert!(Path::new(CONFIG).is_file(), "dpkg -r keeps the conffile");
    assert!(Path::new(PRODUCTS).join("machine_health.yaml").is_file());

    // A reinstall (or an upgrade) finds them as they were.
    ok("dpkg", &["-i", deb.to_str().expect("utf8")]);
    let node = start_installed(&launcher);
    let again = lookup(&node);
    assert_eq!(again, seen, "the data survived remove and reinstall");
    stop_cleanly(node);

    // Purge, and only purge, deletes them.
    ok("dpkg", &["--purge", "meshlet"]);
    assert!(!installed());
    assert!(!Path::new(DATA).exists(), "dpkg --purge deletes {DATA}");
    assert!(!Path::new("/etc/meshlet").exists(), "and /etc/meshlet");
}
