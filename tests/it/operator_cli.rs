//! Operator experience, through the real binary: `meshlet init` in an empty
//! folder, then the steps its output suggests (check, token, serve,
//! publish, query) exactly as a newcomer would type them there.

use crate::common;

use common::graphql::Gql;
use common::{mosquitto_pub, run, stderr, stdout, NodeBuilder};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_then_serve_works_from_an_empty_folder_with_a_token() {
    let dir = tempfile::tempdir().expect("temp dir");

    let out = run(dir.path(), &["init"]);
    assert!(out.status.success(), "init: {}", stderr(&out));
    let said = stdout(&out);
    assert!(said.contains("meshlet token create --role admin"), "{said}");
    assert!(dir.path().join("meshlet.toml").is_file());
    assert!(dir.path().join("products/sensor.yaml").is_file());

    // No --config anywhere below: ./meshlet.toml is found.
    let out = run(dir.path(), &["check"]);
    assert!(
        out.status.success(),
        "check: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("sensor"), "{}", stdout(&out));

    let out = run(
        dir.path(),
        &["token", "create", "--role", "admin", "--name", "me"],
    );
    assert!(out.status.success(), "token create: {}", stderr(&out));
    let token = stdout(&out).trim().to_string();
    assert!(
        dir.path().join("meshlet-data/tokens.json").is_file(),
        "config's data_dir used"
    );

    // The harness only moves the ports to free ones; access stays as the
    // starter config says (no anonymous role).
    let node = NodeBuilder::new(dir.path())
        .secured()
        .start()
        .expect("node starts");
    let port = node
        .mqtt
        .expect("the starter config enables the embedded broker")
        .port();
    let out = mosquitto_pub(
        port,
        "sensors/s-1/telemetry",
        br#"{"temperature_c": 21.5, "status": "ok"}"#,
        1,
        false,
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let anonymous = reqwest::Client::new()
        .post(node.url("/graphql"))
        .json(&json!({ "query": "{ sensor(sensor_id: \"s-1\") { temperature_c } }" }))
        .send()
        .await
        .expect("request");
    assert_eq!(anonymous.status().as_u16(), 401, "no token, no data");

    let gql = Gql::new(&node).with_token(&token);
    let data = gql
        .data(
            r#"{ sensor(sensor_id: "s-1") { sensor_id temperature_c status _meta { source } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(data["sensor"]["temperature_c"], 21.5, "{data}");
    assert_eq!(data["sensor"]["status"], "ok");
    assert_eq!(
        data["sensor"]["_meta"]["source"],
        "mqtt:sensors/s-1/telemetry"
    );

    // The starter's HTTP source, with the same token.
    let pushed = reqwest::Client::new()
        .post(node.url("/ingest/sensor"))
        .bearer_auth(&token)
        .json(&json!({ "sensor_id": "s-2", "humidity_pct": 40 }))
        .send()
        .await
        .expect("request");
    let status = pushed.status().as_u16();
    assert!(
        (200..300).contains(&status),
        "{status}: {}",
        pushed.text().await.unwrap_or_default()
    );
    let data = gql
        .data(
            r#"{ sensor(sensor_id: "s-2") { humidity_pct } }"#,
            json!({}),
        )
        .await;
    assert_eq!(data["sensor"]["humidity_pct"], 40.0, "{data}");

    let (status, _) = node.stop();
    assert!(status.success());
}

#[test]
fn init_refuses_to_overwrite_and_leaves_the_existing_file_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("meshlet.toml"), "# mine\n").expect("write");

    let out = run(dir.path(), &["init"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("meshlet.toml already exists"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("meshlet.toml")).expect("read"),
        "# mine\n"
    );
    assert!(
        !dir.path().join("products").exists(),
        "nothing else written"
    );

    // Into a new subfolder it works, and names the folder to cd into.
    let out = run(dir.path(), &["init", "edge"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("cd edge"), "{}", stdout(&out));
    assert!(dir.path().join("edge/products/sensor.yaml").is_file());
}

/// `meshlet init` plus an admin token in `dir`, with the config's HTTP
/// port moved to a free one (so commands that read the config find the
/// node) and a node started there.
fn init_and_serve(dir: &std::path::Path) -> (common::NodeProcess, String) {
    let out = run(dir, &["init"]);
    assert!(out.status.success(), "init: {}", stderr(&out));
    let config = dir.join("meshlet.toml");
    let listen = format!("127.0.0.1:{}", common::free_port());
    let text = std::fs::read_to_string(&config).expect("read config");
    let moved = text.replace(
        "listen = \"127.0.0.1:8080\"",
        &format!("listen = \"{listen}\""),
    );
    assert_ne!(text, moved, "the starter config names http.listen");
    std::fs::write(&config, moved).expect("write config");
    let out = run(
        dir,
        &["token", "create", "--role", "admin", "--name", "ops"],
    );
    assert!(out.status.success(), "token create: {}", stderr(&out));
    let token = stdout(&out).trim().to_string();
    let node = NodeBuilder::new(dir)
        .secured()
        .listen(listen)
        .start()
        .expect("node starts");
    (node, token)
}

#[test]
fn status_summarises_a_running_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (node, token) = init_and_serve(dir.path());
    let port = node.mqtt.expect("embedded broker").port();
    for (topic, payload) in [
        ("sensors/s-1/telemetry", r#"{"temperature_c": 20}"#),
        ("sensors/s-2/telemetry", r#"{"temperature_c": 21}"#),
        ("sensors/s-1/telemetry", r#"{"temperature_c": 22}"#),
        // Out of range: quarantined.
        ("sensors/s-3/telemetry", r#"{"temperature_c": 999}"#),
    ] {
        let out = mosquitto_pub(port, topic, payload.as_bytes(), 1, false);
        assert!(out.status.success(), "{}", stderr(&out));
    }

    // No --url: the config's http.listen.
    let out = run(
        dir.path(),
        &["status", "--token", &token, "--sample", "100ms"],
    );
    let screen = stdout(&out);
    assert!(out.status.success(), "status: {}{screen}", stderr(&out));
    assert!(
        screen.starts_with(&format!(
            "meshlet {} at http://{}, up ",
            env!("CARGO_PKG_VERSION"),
            node.http
        )),
        "{screen}"
    );
    assert!(
        !screen.lines().next().unwrap_or_default().ends_with("up ?"),
        "process_start_time_seconds is served: {screen}"
    );
    let row = screen
        .lines()
        .find(|l| l.starts_with("sensor "))
        .unwrap_or_else(|| panic!("a row for the product: {screen}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    // name, entities, last update, stale, accepted, rejected, quarantined (now)
    assert_eq!(cells[1], "2", "{row}");
    assert_eq!(cells[3], "no", "{row}");
    assert_eq!(cells[4], "3", "{row}");
    assert_eq!(cells[5], "0", "{row}");
    assert_eq!(&cells[6..], ["1", "(1)"], "{row}");
    assert!(screen.contains("  accepted              3"), "{screen}");
    assert!(screen.contains("  quarantined           1"), "{screen}");
    assert!(
        screen.contains("central          pending 0 (oldest -), last ack never"),
        "{screen}"
    );

    // The token from the environment (kept out of `ps`) works the same.
    let out = common::meshlet(dir.path())
        .args(["status", "--sample", "0s"])
        .env("MESHLET_TOKEN", &token)
        .output()
        .expect("status runs");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("\nsensor "), "{}", stdout(&out));

    // Without the token the node refuses, and status says so.
    let out = run(dir.path(), &["status", "--sample", "0s"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/status/v1 answered 401"),
        "{}",
        stderr(&out)
    );

    let (status, _) = node.stop();
    assert!(status.success());
}

/// `meshlet status --json` prints the node's `/status/v1` document; after
/// real ingest its figures are the ones the same node's `/metrics` shows,
/// and its keys are the documented v1 set.
#[test]
fn status_json_is_the_status_document_and_agrees_with_metrics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (node, token) = init_and_serve(dir.path());
    let port = node.mqtt.expect("embedded broker").port();
    for (topic, payload) in [
        ("sensors/s-1/telemetry", r#"{"temperature_c": 20}"#),
        ("sensors/s-2/telemetry", r#"{"temperature_c": 21}"#),
        ("sensors/s-3/telemetry", r#"{"temperature_c": 999}"#),
    ] {
        let out = mosquitto_pub(port, topic, payload.as_bytes(), 1, false);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = run(dir.path(), &["status", "--json", "--token", &token]);
    assert!(out.status.success(), "status --json: {}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON on stdout");
    let metrics = common::http_get(&node.url("/metrics")).1;
    let metric = |series: &str| {
        common::metric_value(&metrics, series).unwrap_or_else(|| panic!("{series} in {metrics}"))
    };

    assert_eq!(doc["status_version"], 1, "{doc}");
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(doc["readiness"]["phase"], "ready", "{doc}");
    let sources = doc["ingest"]["sources"].as_array().expect("sources");
    // The starter product reads MQTT and HTTP pushes; the MQTT source
    // took the records.
    let sensor = sources
        .iter()
        .find(|s| {
            s["product"] == "sensor" && s["source"].as_str().is_some_and(|s| s.starts_with("mqtt"))
        })
        .unwrap_or_else(|| panic!("the sensor's MQTT source: {doc}"));
    let source = sensor["source"].as_str().expect("source name");
    for (key, outcome, want) in [
        ("accepted", "accepted", 2.0),
        ("quarantined", "quarantined", 1.0),
        ("rejected", "rejected", 0.0),
    ] {
        let series = format!(
            "meshlet_ingest_records_total{{product=\"sensor\",source=\"{source}\",outcome=\"{outcome}\"}}"
        );
        assert_eq!(metric(&series), want, "{series}");
        assert_eq!(sensor[key].as_f64(), Some(want), "{key}: {sensor}");
    }
    assert_eq!(
        doc["ingest"]["records_written"].as_f64(),
        Some(metric("meshlet_ingest_records_written_total")),
        "{doc}"
    );
    assert_eq!(
        doc["store"]["journal"]["frames_written"].as_f64(),
        Some(metric("meshlet_store_journal_frames_total")),
        "{doc}"
    );
    assert!(
        doc["store"]["journal"]["frames_written"].as_u64() > Some(0),
        "{doc}"
    );
    assert!(doc["store"]["bytes_on_disk"].as_u64() > Some(0), "{doc}");
    let central = &doc["sync"]["upstreams"][0];
    assert_eq!(central["name"], "central", "{doc}");
    assert_eq!(
        central["pending"].as_f64(),
        Some(metric("meshlet_sync_pending{upstream=\"central\"}")),
        "{doc}"
    );
    assert!(
        (doc["started_at"].as_f64().unwrap_or(0.0) - metric("process_start_time_seconds")).abs()
            < 1e-3,
        "{doc}"
    );
    // Every key is one of the documented v1 set.
    let golden: Vec<&str> = include_str!("../../src/api/status_v1_keys.txt")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for key in meshlet::api::status::key_paths(&doc) {
        assert!(golden.contains(&key.as_str()), "{key} is not in the v1 set");
    }

    // A node without the endpoint is named as older, not misread: here a
    // URL whose answers are all 404.
    let out = run(
        dir.path(),
        &[
            "status",
            "--json",
            "--token",
            &token,
            "--url",
            &node.url("/nothing-here"),
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("has no /status/v1: it runs a meshlet older than this one"),
        "{}",
        stderr(&out)
    );

    let (status, _) = node.stop();
    assert!(status.success());
}

#[test]
fn logs_are_one_json_object_per_line_by_flag_or_environment() {
    // The starter config says `format = "text"`; the flag beats the
    // environment, and the environment (what the harness sets) beats the
    // file.
    for by_flag in [true, false] {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = run(dir.path(), &["init"]);
        assert!(out.status.success(), "init: {}", stderr(&out));
        let mut builder = NodeBuilder::new(dir.path());
        if by_flag {
            builder = builder
                .env("MESHLET_LOG__FORMAT", "text")
                .arg("--log-format")
                .arg("json");
        }
        let node = builder.start().expect("node starts");
        let port = node.mqtt.expect("embedded broker").port();
        let out = mosquitto_pub(
            port,
            "sensors/s-1/telemetry",
            br#"{"temperature_c": 999}"#,
            1,
            false,
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let (status, logs) = node.stop();
        assert!(status.success());

        assert!(logs.len() >= 3, "by_flag={by_flag}: {logs:?}");
        for line in &logs {
            let event: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("by_flag={by_flag}: not JSON ({e}): {line}"));
            assert!(event["timestamp"].is_string(), "{line}");
            assert!(event["level"].is_string(), "{line}");
            assert!(event["target"].is_string(), "{line}");
        }
        // The events carry their fields as JSON members, not inside a
        // formatted message.
        let events: Vec<serde_json::Value> = logs
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert!(
            events
                .iter()
                .any(|e| e["message"] == "ready" && e["http"].is_string()),
            "{logs:?}"
        );
    }
}

#[test]
fn quarantine_replay_shows_progress_at_a_terminal_and_always_a_summary() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run(dir.path(), &["init"]);
    assert!(out.status.success(), "init: {}", stderr(&out));
    let node = NodeBuilder::new(dir.path()).start().expect("node starts");
    let port = node.mqtt.expect("embedded broker").port();
    for sensor in ["s-1", "s-2", "s-3"] {
        let topic = format!("sensors/{sensor}/telemetry");
        let out = mosquitto_pub(port, &topic, br#"{"temperature_c": 180}"#, 1, false);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let (status, _) = node.stop();
    assert!(status.success());

    // At a terminal (a pseudo-terminal from `script`): the progress line,
    // then the summary. Still invalid under the starter's range.
    let mut at_terminal = std::process::Command::new("script");
    at_terminal
        .current_dir(dir.path())
        .arg("-qec")
        .arg(format!(
            "{} quarantine replay sensor",
            common::meshlet_bin().display()
        ))
        .arg("/dev/null");
    for (name, _) in std::env::vars() {
        if name.starts_with("MESHLET_") || name == "RUST_LOG" {
            at_terminal.env_remove(name);
        }
    }
    let out = at_terminal.output().expect("script runs");
    let screen = stdout(&out);
    assert!(out.status.success(), "{screen}{}", stderr(&out));
    assert!(
        screen.contains("replaying the quarantine of sensor: 0 of 3 resolved"),
        "{screen:?}"
    );
    assert!(
        screen.contains("replayed 0 of 3 quarantined payloads of sensor"),
        "{screen:?}"
    );

    // Into a pipe: no progress, only the summary.
    let product = dir.path().join("products/sensor.yaml");
    let text = std::fs::read_to_string(&product).expect("read product");
    let widened = text.replace("min: -50, max: 150", "min: -50, max: 200");
    assert_ne!(text, widened);
    std::fs::write(&product, widened).expect("write product");
    let out = run(dir.path(), &["quarantine", "replay", "sensor"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "replayed 3 of 3 quarantined payloads of sensor (3 records written); 0 still invalid\n"
    );
    assert!(!stderr(&out).contains("replaying"), "{}", stderr(&out));
}
