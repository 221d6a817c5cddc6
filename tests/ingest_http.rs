//! HTTP push against the real server: answers, limits, and what reached
//! the store.

mod common;

use common::*;
use meshlet::record::Value;

const PRODUCT: &str = r#"
product: asset
version: 1
domain: test
owner: test@example.com
key: asset_id
fields:
  asset_id: { type: string, required: true, pattern: "A-[0-9]+" }
  name:     { type: string, required: true }
  weight:   { type: float, min: 0 }
  seen_at:  { type: timestamp }
sources:
  - http: {}
quality: { on_invalid: quarantine }
"#;

const TIMED: &str = r#"
product: timed
version: 1
domain: test
owner: test@example.com
key: id
fields:
  id: { type: string, required: true }
  v:  { type: int }
sources:
  - http: { event_time: /at }
"#;

const NOT_PUSHABLE: &str = r#"
product: mqtt_only
version: 1
domain: test
owner: test@example.com
key: id
fields:
  id: { type: string }
sources:
  - mqtt: { topic: "x/{id}" }
"#;

fn start() -> (tempfile::TempDir, NodeProcess) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("products")).expect("dir");
    std::fs::write(dir.path().join("products/asset.yaml"), PRODUCT).expect("write");
    std::fs::write(dir.path().join("products/mqtt_only.yaml"), NOT_PUSHABLE).expect("write");
    std::fs::write(dir.path().join("products/timed.yaml"), TIMED).expect("write");
    let node = NodeBuilder::new(dir.path())
        .arg("--products")
        .arg("products")
        .arg("--data-dir")
        .arg("data")
        .env("MESHLET_MQTT__EMBEDDED__ENABLED", "false")
        .env("MESHLET_INGEST__MAX_HTTP_BODY_BYTES", "65536")
        .start()
        .expect("node starts");
    (dir, node)
}

#[test]
fn push_is_acknowledged_after_durable_and_refused_whole_when_invalid() {
    let (dir, node) = start();
    let url = node.url("/ingest/asset");

    let (status, body) = http_post(
        &url,
        "application/json",
        br#"[{"asset_id": "A-1", "name": "pump", "weight": "12.5", "seen_at": "2024-05-01T12:00:00Z"},
             {"asset_id": "A-2", "name": "valve", "seen_at": 1714564800000}]"#
            .to_vec(),
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["accepted"], 2);

    let (status, body) = http_post(
        &url,
        "application/x-ndjson",
        b"{\"asset_id\": \"A-3\", \"name\": \"fan\"}\n{\"asset_id\": \"A-4\", \"name\": \"belt\"}\n".to_vec(),
    );
    assert_eq!(status, 200, "{body}");

    // One bad record: 400 naming each bad record and reason; nothing of the
    // request is written, not even its valid record.
    let (status, body) = http_post(
        &url,
        "application/x-ndjson",
        b"{\"asset_id\": \"A-5\", \"name\": \"ok\"}\n{\"asset_id\": \"B-6\", \"weight\": -1}\nnot json\n".to_vec(),
    );
    assert_eq!(status, 400, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let records = answer["records"].as_array().expect("records");
    assert_eq!(records.len(), 2, "{body}");
    assert_eq!(records[0]["index"], 1);
    let errors = records[0]["errors"].to_string();
    for expected in ["asset_id", "name", "weight"] {
        assert!(
            errors.contains(expected),
            "every reason of record 1 is listed: {errors}"
        );
    }
    assert_eq!(records[1]["index"], 2);
    assert!(
        records[1]["errors"]
            .to_string()
            .to_lowercase()
            .contains("json"),
        "{body}"
    );

    // Over the body limit: 413 with a message, the node carries on.
    let (status, body) = http_post(&url, "application/json", vec![b' '; 70_000]);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("limit"), "{body}");

    let (status, body) = http_post(
        &node.url("/ingest/nope"),
        "application/json",
        b"{}".to_vec(),
    );
    assert_eq!(status, 404);
    assert!(body.contains("no product named `nope`"), "{body}");
    let (status, body) = http_post(
        &node.url("/ingest/mqtt_only"),
        "application/json",
        b"{}".to_vec(),
    );
    assert_eq!(status, 404);
    assert!(body.contains("takes no HTTP push"), "{body}");

    assert_eq!(
        metric(&node, "meshlet_ingest_records_total{product=\"asset\",source=\"http:0\",outcome=\"accepted\"}"),
        Some(4.0)
    );
    assert_eq!(
        metric(&node, "meshlet_ingest_records_total{product=\"asset\",source=\"http:0\",outcome=\"rejected\"}"),
        Some(2.0)
    );

    let (status, _) = node.stop();
    assert!(status.success());
    let store = open_store(&dir.path().join("data"));
    let a1 = store.get("asset", "A-1").expect("read").expect("A-1");
    assert_eq!(a1.fields.get("weight"), Some(&Value::Float(12.5)));
    assert!(store.get("asset", "A-4").expect("read").is_some());
    assert!(
        store.get("asset", "A-5").expect("read").is_none(),
        "refused requests write nothing"
    );
    assert_eq!(
        store.quarantine_count("asset").expect("count"),
        0,
        "HTTP answers, it does not quarantine"
    );
}

#[test]
fn a_retried_push_is_recognised_when_records_carry_their_event_time() {
    let (dir, node) = start();
    // `asset` records have no event time: a repeat is a new observation.
    let url = node.url("/ingest/asset");
    let body = br#"{"asset_id": "A-9", "name": "crane"}"#.to_vec();
    for _ in 0..2 {
        let (status, body) = http_post(&url, "application/json", body.clone());
        assert_eq!(status, 200, "{body}");
    }
    // `timed` records do: a retry of a request whose answer was lost is
    // recognised and not written twice.
    let url = node.url("/ingest/timed");
    let body = br#"[{"id": "t1", "v": 1, "at": "2024-05-01T12:00:00Z"}, {"id": "t1", "v": 2, "at": "2024-05-01T12:00:01Z"}]"#.to_vec();
    let (status, first) = http_post(&url, "application/json", body.clone());
    assert_eq!(status, 200, "{first}");
    let (status, retry) = http_post(&url, "application/json", body);
    assert_eq!(status, 200, "{retry}");
    let retry: serde_json::Value = serde_json::from_str(&retry).expect("JSON");
    assert_eq!(retry["accepted"], 0, "{retry}");
    assert_eq!(retry["duplicates"], 2, "{retry}");

    let (status, _) = node.stop();
    assert!(status.success());
    let store = open_store(&dir.path().join("data"));
    let all = meshlet::store::HistoryQuery::default();
    assert_eq!(
        store.history("asset", "A-9", &all).expect("history").len(),
        2
    );
    assert_eq!(
        store.history("timed", "t1", &all).expect("history").len(),
        2
    );
}

#[test]
fn metrics_are_served_as_prometheus_text() {
    let (_dir, node) = start();
    let (status, body) = http_get(&node.url("/metrics"));
    assert_eq!(status, 200);
    assert!(
        body.contains("# TYPE meshlet_ingest_records_total counter"),
        "{body}"
    );
    assert!(
        body.contains("meshlet_ingest_records_total{product=\"asset\",source=\"http:0\",outcome=\"accepted\"} 0"),
        "every declared source is listed from the start: {body}"
    );
}
