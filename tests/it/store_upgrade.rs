//! Upgrades keep data, downgrades are refused — through the real binary.
//!
//! `tests/fixtures/store-format-3/` is a gateway as an operator has it:
//! its config, its product, a data directory written by the meshlet of
//! store format 3 (instances, history in sealed chunks and an open tail,
//! audit, quarantined payloads, an erased entity with its tombstone and
//! `Erased` audit line, outbox entries for an upstream that never
//! answered, an API token) and `expected.json`, what that meshlet answered
//! to the read-back query below. The upgrade test starts today's binary on
//! a copy and asks the same question: the answer must be the same, the
//! old token must still work, and the node must go on writing (the erased
//! entity comes back as new, after its `Erased` line). A later store
//! format proves its migration by keeping this test green, unchanged: it
//! is about what a user reads back, not about what is on disk.
//!
//! The fixture is rewritten by `regenerate_store_format_3_fixture`
//! (`#[ignore]`d; run it only with the meshlet that writes format 3, i.e.
//! never again once format 4 has landed — see the fixture's README.md).

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::graphql::Gql;
use common::*;
use serde_json::{json, Value};

/// The committed fixture.
fn fixture() -> PathBuf {
    repo_root().join("tests/fixtures/store-format-3")
}

/// Everything a user can read back about the stored data, and nothing
/// that depends on the clock at query time (staleness, ages) or on how
/// many bytes something takes on disk.
const READ_BACK: &str = r#"
fragment Machine on MachineHealth {
  machine_id site line temperature_c vibration_rms spindle_rpm status
  last_fault operator_email reported_at
  _meta { version firstSeen lastSeen eventTime source actor }
  history(first: 50) {
    nodes {
      version eventTime receivedAt source actor
      values {
        machine_id site line temperature_c vibration_rms spindle_rpm status
        last_fault operator_email reported_at
      }
    }
  }
  audit(first: 20) {
    action firstAt lastAt fromVersion toVersion count fields source actor
  }
}
{
  pr1: machineHealth(machine_id: "PR-0001") { ...Machine }
  pr2: machineHealth(machine_id: "PR-0002") { ...Machine }
  erased: machineHealth(machine_id: "PR-0003") { ...Machine }
  machineHealthConnection(first: 10) {
    nodes { machine_id status _meta { version } }
  }
  product(name: "machine_health") { entities quarantineCount }
  quarantine(product: "machine_health", first: 10) {
    totalCount
    nodes { id quarantinedAt source topic index reasons payloadBase64 payloadBytes }
  }
  syncStatus { name pending }
}
"#;

/// A working copy of the fixture (the committed one is never written).
fn copy_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_tree(&fixture(), dir.path());
    dir
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A node on the fixture's config, access control as configured (no
/// anonymous admin): every query below goes with the fixture's token.
fn start_secured(dir: &Path) -> NodeProcess {
    NodeBuilder::new(dir)
        .secured()
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("the node starts on the fixture")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_format_3_reads_back_the_same_after_the_upgrade() {
    let dir = copy_fixture();
    let expected: Value =
        serde_json::from_str(&read(&fixture().join("expected.json"))).expect("expected.json");
    let token = read(&fixture().join("token")).trim().to_string();

    let node = start_secured(dir.path());
    let gql = Gql::new(&node).with_token(&token);
    let answer = gql.data(READ_BACK, json!({})).await;
    // Part by part, so a failure names what was lost.
    for (part, want) in expected.as_object().expect("an object") {
        assert_eq!(
            serde_json::to_string_pretty(&answer[part]).unwrap(),
            serde_json::to_string_pretty(want).unwrap(),
            "`{part}`: today's build must answer what the format 3 build answered"
        );
    }
    assert_eq!(answer, expected);
    // The fixture is what it claims to be (so the equality above is worth
    // something): data in every part of the store.
    let pr1 = &expected["pr1"];
    assert!(pr1["history"]["nodes"].as_array().unwrap().len() >= 9);
    assert!(pr1["audit"].as_array().unwrap().len() >= 2);
    assert_eq!(expected["erased"], Value::Null);
    assert!(expected["quarantine"]["totalCount"].as_i64().unwrap() >= 2);
    assert!(expected["syncStatus"][0]["pending"].as_i64().unwrap() >= 1);

    // The upgraded store takes new data (no event time in the payload: the
    // time of arrival, later than anything stored): PR-0001 goes on from
    // its version,
    // the erased PR-0003 comes back as a new entity (version 1) after its
    // `Erased` audit line, which survived the upgrade.
    let mqtt = node.mqtt.expect("embedded broker").port();
    let out = mosquitto_pub(
        mqtt,
        "plant/berlin/machine/PR-0001/telemetry",
        br#"{"temp": 80.5, "state": "warn"}"#,
        1,
        false,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = mosquitto_pub(
        mqtt,
        "plant/lyon/machine/PR-0003/telemetry",
        br#"{"temp": 20.0, "state": "ok"}"#,
        1,
        false,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let old_version = pr1["_meta"]["version"].as_i64().unwrap();
    let after = r#"{
      pr1: machineHealth(machine_id: "PR-0001") {
        status _meta { version } history(last: 1) { nodes { version } }
      }
      pr3: machineHealth(machine_id: "PR-0003") {
        status _meta { version } audit { action toVersion }
      }
    }"#;
    let done = |d: &Value| {
        d["pr1"]["_meta"]["version"].as_i64() == Some(old_version + 1) && !d["pr3"].is_null()
    };
    let written = gql.until(Duration::from_secs(10), after, done).await;
    assert_eq!(written["pr1"]["status"], "warn");
    assert_eq!(
        written["pr1"]["history"]["nodes"][0]["version"],
        old_version + 1
    );
    assert_eq!(written["pr3"]["_meta"]["version"], 1);
    let actions: Vec<&str> = written["pr3"]["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["ERASED", "CREATED"], "{written:#}");
    stop_cleanly(node);

    // And the upgraded store opens again as it was left.
    let node = start_secured(dir.path());
    let gql = Gql::new(&node).with_token(&token);
    let again = gql.data(after, json!({})).await;
    assert_eq!(again, written, "the upgraded store reopens unchanged");
    stop_cleanly(node);
}

/// The node is killed (a failpoint aborts it, as SIGKILL would) in the
/// middle of the format 3 → 4 migration, after the conversion and before
/// the new format is stamped: the next start finishes the migration and
/// reads back what the format 3 build answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_the_migration_is_finished_by_the_next_start() {
    let dir = copy_fixture();
    let expected: Value =
        serde_json::from_str(&read(&fixture().join("expected.json"))).expect("expected.json");
    let token = read(&fixture().join("token")).trim().to_string();
    let crashed = NodeBuilder::new(dir.path())
        .secured()
        .arg("--config")
        .arg("meshlet.toml")
        .env("FAILPOINT_MESHLET_STORE", "store-migration")
        .start();
    match crashed {
        Ok(_) => panic!("the failpoint stopped the node before it was ready"),
        Err(logs) => assert!(
            logs.contains("failpoint store-migration"),
            "stopped by the failpoint, not something else: {logs}"
        ),
    }
    let node = start_secured(dir.path());
    let gql = Gql::new(&node).with_token(&token);
    let answer = gql.data(READ_BACK, json!({})).await;
    assert_eq!(answer, expected, "the migration finished on the next start");
    stop_cleanly(node);
}

#[test]
fn a_store_written_by_a_newer_meshlet_is_refused_and_left_alone() {
    let dir = copy_fixture();
    let store_dir = dir.path().join("data/store");
    let newer = meshlet::store::STORE_FORMAT_VERSION + 1;
    let stamped = {
        let db = sled::open(&store_dir).expect("the fixture's store opens raw");
        let meta = db.open_tree("meta").expect("meta tree");
        let bytes = stamp(newer);
        meta.insert("format", bytes.clone()).expect("stamp");
        db.flush().expect("flush");
        bytes
    };

    let err = match NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .start()
    {
        Ok(_) => panic!("a store of format {newer} must be refused"),
        Err(err) => err,
    };
    assert!(
        err.contains(&format!(
            "format version {newer} is newer than this meshlet supports"
        )) && err.contains("upgrade meshlet or point it at another directory"),
        "the refusal says what and what to do: {err}"
    );
    assert!(err.contains("data/store"), "names the store: {err}");
    assert!(!err.contains("\"message\":\"ready\""), "{err}");

    // Refused before anything was converted or re-stamped.
    let db = sled::open(&store_dir).expect("the store still opens raw");
    let meta = db.open_tree("meta").expect("meta tree");
    assert_eq!(
        meta.get("format").expect("read").as_deref(),
        Some(&stamped[..])
    );
}

/// The `meta/format` record of a store stamped with `version`: the
/// codec's MessagePack frame (format byte 1) of `{format_version}`.
fn stamp(version: u32) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Meta {
        format_version: u32,
    }
    let mut out = vec![1u8];
    out.extend(
        rmp_serde::to_vec_named(&Meta {
            format_version: version,
        })
        .expect("encode"),
    );
    out
}

/// Rewrites the fixture's `data/`, `token` and `expected.json` with the
/// build at hand. Only for the meshlet that writes store format 3: run
/// `cargo test --test it store_upgrade::regenerate -- --ignored` on that
/// commit (see tests/fixtures/store-format-3/README.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "rewrites the committed fixture; only with the format 3 build"]
async fn regenerate_store_format_3_fixture() {
    assert_eq!(
        meshlet::store::STORE_FORMAT_VERSION,
        3,
        "this fixture is the format 3 one: a newer build must not rewrite it"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        fixture().join("meshlet.toml"),
        dir.path().join("meshlet.toml"),
    )
    .expect("config");
    copy_tree(&fixture().join("products"), &dir.path().join("products"));
    let token = create_token(dir.path(), "admin", "fixture");

    let node = NodeBuilder::new(dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("node starts");
    let gql = Gql::new(&node).with_token(&token);
    let mqtt = node.mqtt.expect("embedded broker").port();
    let publish = |topic: &str, payload: &str| {
        let out = mosquitto_pub(mqtt, topic, payload.as_bytes(), 1, false);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    // PR-0001: ten readings (two sealed chunks of four and a tail of two),
    // then a correction over HTTP.
    for i in 0..10 {
        let state = if i % 3 == 0 { "warn" } else { "ok" };
        publish(
            "plant/berlin/machine/PR-0001/telemetry",
            &format!(
                r#"{{"temp": {}.5, "vib": {{"rms": 2.{i}}}, "rpm": {}, "state": "{state}", "hmi": {{"operator": "ann@example.com"}}, "ts": "2026-01-01T00:00:{i:02}Z"}}"#,
                60 + i,
                1400 + i
            ),
        );
    }
    let (status, body) = tokio::task::block_in_place(|| {
        http_post(
            &node.url("/ingest/machine_health"),
            "application/json",
            br#"{"machine_id": "PR-0001", "line": "L2", "status": "maintenance", "last_fault": "E42"}"#
                .to_vec(),
        )
    });
    assert_eq!(status, 200, "{body}");
    // PR-0002: three readings, one with a fault.
    for (i, state) in ["ok", "fault", "ok"].iter().enumerate() {
        publish(
            "plant/lyon/machine/PR-0002/telemetry",
            &format!(
                r#"{{"temp": 45.{i}, "state": "{state}", "fault": {{"code": "F{i}"}}, "ts": "2026-01-01T01:00:0{i}Z"}}"#
            ),
        );
    }
    // PR-0003: two readings, erased below.
    for i in 0..2 {
        publish(
            "plant/brno/machine/PR-0003/telemetry",
            &format!(r#"{{"temp": 30.{i}, "state": "warn", "ts": "2026-01-01T02:00:0{i}Z"}}"#),
        );
    }
    // The quarantine: a reading out of range, and a payload that is not JSON.
    publish(
        "plant/lyon/machine/PR-0002/telemetry",
        r#"{"temp": 999, "state": "ok"}"#,
    );
    publish("plant/lyon/machine/PR-0002/telemetry", "{not json");

    let settled = r#"{
      pr1: machineHealth(machine_id: "PR-0001") { _meta { version } }
      pr2: machineHealth(machine_id: "PR-0002") { _meta { version } }
      pr3: machineHealth(machine_id: "PR-0003") { _meta { version } }
      product(name: "machine_health") { quarantineCount }
    }"#;
    gql.until(Duration::from_secs(20), settled, |d| {
        d["pr1"]["_meta"]["version"] == 11
            && d["pr2"]["_meta"]["version"] == 3
            && d["pr3"]["_meta"]["version"] == 2
            && d["product"]["quarantineCount"] == 2
    })
    .await;
    let erased = gql
        .data(
            r#"mutation { eraseMachineHealth(machine_id: "PR-0003") }"#,
            json!({}),
        )
        .await;
    assert_eq!(erased["eraseMachineHealth"], true);

    let answer = gql.data(READ_BACK, json!({})).await;
    assert!(answer["syncStatus"][0]["pending"].as_i64().unwrap() >= 1);
    stop_cleanly(node);

    let data = fixture().join("data");
    if data.exists() {
        std::fs::remove_dir_all(&data).expect("remove the old fixture data");
    }
    copy_tree(&dir.path().join("data"), &data);
    std::fs::write(fixture().join("token"), format!("{token}\n")).expect("token");
    std::fs::write(
        fixture().join("expected.json"),
        format!("{}\n", serde_json::to_string_pretty(&answer).expect("json")),
    )
    .expect("expected.json");
}
