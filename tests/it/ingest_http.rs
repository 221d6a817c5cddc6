//! HTTP push against the real server: answers, limits, and what reached
//! the store.

use crate::common;

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

    // No graceful stop (it would flush): a 200 must already be on disk, so
    // the node is killed outright right after the last answer.
    let (status, body) = http_post(
        &url,
        "application/json",
        br#"{"asset_id": "A-7", "name": "last before the kill"}"#.to_vec(),
    );
    assert_eq!(status, 200, "{body}");
    let mut node = node;
    node.signal(libc::SIGKILL);
    let status = node
        .wait_exit(std::time::Duration::from_secs(10))
        .expect("the killed node exits");
    assert!(!status.success(), "killed, not stopped: {status}");
    let store = open_store(&dir.path().join("data"));
    let a1 = store.get("asset", "A-1").expect("read").expect("A-1");
    assert_eq!(a1.fields.get("weight"), Some(&Value::Float(12.5)));
    assert!(store.get("asset", "A-4").expect("read").is_some());
    assert!(
        store.get("asset", "A-7").expect("read").is_some(),
        "acknowledged just before the kill, and stored"
    );
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
        body.contains("# TYPE meshlet_ingest_records counter"),
        "OpenMetrics: the counter family is named without _total: {body}"
    );
    assert!(
        body.contains("meshlet_ingest_records_total{product=\"asset\",source=\"http:0\",outcome=\"accepted\"} 0"),
        "every declared source is listed from the start: {body}"
    );
}

/// A POST with headers, through a real client: status, the
/// `idempotent-replayed` header, body.
fn post_with(url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Option<String>, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut request = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("HTTP request");
        let status = response.status().as_u16();
        let replayed = response
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (status, replayed, response.text().await.expect("HTTP body"))
    })
}

/// Records without an event time are new observations each time, so only
/// the `Idempotency-Key` tells a resend from a new push. The first push is
/// durable and answered; the node is then killed (SIGKILL, as if it died
/// before the client read the answer) and restarted, and the client
/// resends: the records are written once, the resend gets the first
/// answer. The same key with another body is refused (422), a malformed
/// key is refused (400), and both kinds of resend are counted.
#[test]
fn a_push_with_an_idempotency_key_is_applied_once_across_a_crash() {
    let (dir, mut node) = start();
    let body = br#"[{"asset_id": "A-1", "name": "crane"}, {"asset_id": "A-2", "name": "hoist"}]"#;
    let key = [("idempotency-key", "push-0001")];
    let (status, replayed, first) = post_with(&node.url("/ingest/asset"), &key, body);
    assert_eq!(status, 200, "{first}");
    assert_eq!(replayed, None);
    node.signal(libc::SIGKILL);
    node.wait_exit(std::time::Duration::from_secs(10))
        .expect("the node dies");
    let node = NodeBuilder::new(dir.path())
        .arg("--products")
        .arg("products")
        .arg("--data-dir")
        .arg("data")
        .env("MESHLET_MQTT__EMBEDDED__ENABLED", "false")
        .start()
        .expect("node restarts");
    let url = node.url("/ingest/asset");
    let (status, replayed, again) = post_with(&url, &key, body);
    assert_eq!(status, 200, "{again}");
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(again, first, "the resend is answered like the first push");
    let first: serde_json::Value = serde_json::from_str(&first).expect("JSON");
    assert_eq!(first["accepted"], 2, "{first}");

    let other = br#"{"asset_id": "A-1", "name": "other"}"#;
    let (status, _, refused) = post_with(&url, &key, other);
    assert_eq!(status, 422, "{refused}");
    assert!(refused.contains("Idempotency-Key"), "{refused}");
    let (status, _, refused) = post_with(&url, &[("idempotency-key", "")], body);
    assert_eq!(status, 400, "{refused}");
    let long = "k".repeat(256);
    let (status, _, refused) = post_with(&url, &[("idempotency-key", &long)], body);
    assert_eq!(status, 400, "{refused}");
    // Another key is another request, and the same key in another product
    // is that product's.
    let (status, replayed, _) = post_with(&url, &[("idempotency-key", "push-0002")], body);
    assert_eq!((status, replayed), (200, None));
    let timed = br#"{"id": "t9", "v": 1, "at": "2024-05-01T12:00:00Z"}"#;
    let (status, replayed, _) = post_with(&node.url("/ingest/timed"), &key, timed);
    assert_eq!((status, replayed), (200, None));
    assert_eq!(
        metric(
            &node,
            "meshlet_ingest_idempotent_resends_total{outcome=\"replayed\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &node,
            "meshlet_ingest_idempotent_resends_total{outcome=\"conflict\"}"
        ),
        Some(1.0)
    );

    let (status, _) = node.stop();
    assert!(status.success());
    let store = open_store(&dir.path().join("data"));
    let all = meshlet::store::HistoryQuery::default();
    for (asset, events) in [("A-1", 2), ("A-2", 2)] {
        assert_eq!(
            store.history("asset", asset, &all).expect("history").len(),
            events,
            "{asset}: once for push-0001, once for push-0002"
        );
    }
}
