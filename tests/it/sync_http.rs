//! Upstream sync over HTTP between two real nodes: an edge and an
//! aggregator (`POST /sync/v1`). What the aggregator holds is read from its
//! store after it stopped.

use crate::common;

use std::time::Duration;

use common::*;
use meshlet::record::Value;
use meshlet::store::HistoryQuery;

/// The edge's product: latest state of machines, a row filter, a field
/// left out and a hashed field.
const MACHINE_EDGE: &str = r#"
product: machine
version: 1
domain: test
owner: test@example.com
key: machine_id
fields:
  machine_id: { type: string, required: true }
  site:       { type: string }
  temp:       { type: float }
  operator:   { type: string, classification: pii }
  note:       { type: string }
sources:
  - http: {}
sync:
  - to: central
    fields: [machine_id, site, temp, operator]
    where: "site != 'hidden'"
    mask: { operator: hash }
    when: { batch_age: 50ms, batch_size: 7 }
"#;

/// Every event goes up (mode history).
const READING_EDGE: &str = r#"
product: reading
version: 1
domain: test
owner: test@example.com
key: meter
fields:
  meter: { type: string, required: true }
  n:     { type: int }
sources:
  - http: {}
sync:
  - to: central
    mode: history
    when: { batch_age: 20ms, batch_size: 16 }
"#;

fn aggregator_dir() -> tempfile::TempDir {
    node_workdir(
        &[
            ("machine", without_sync(MACHINE_EDGE)),
            ("reading", without_sync(READING_EDGE)),
        ],
        "node_id = \"hq\"\n[aggregator]\nenabled = true\n",
    )
}

fn edge_dir(upstream: &str, extra: &str) -> tempfile::TempDir {
    node_workdir(
        &[
            ("machine", MACHINE_EDGE.to_string()),
            ("reading", READING_EDGE.to_string()),
        ],
        &format!(
            "node_id = \"edge-1\"\n[sync]\nretry_min = \"50ms\"\nretry_max = \"300ms\"\n{extra}[upstreams.central]\nurl = \"{upstream}\"\n"
        ),
    )
}

fn pending(node: &NodeProcess) -> f64 {
    metric(node, "meshlet_sync_pending{upstream=\"central\"}").unwrap_or(f64::NAN)
}

fn wait_drained(node: &NodeProcess) {
    assert!(
        eventually(Duration::from_secs(30), || pending(node) == 0.0),
        "the edge's outbox did not drain: pending {}",
        pending(node)
    );
}

fn string(value: Option<&Value>) -> Option<&str> {
    match value {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

#[test]
fn edge_to_aggregator_over_http_with_rules_masks_and_erasure() {
    let hq_dir = aggregator_dir();
    let hq = start_configured_on(hq_dir.path(), None);
    let edge_dir = edge_dir(&format!("http://{}", hq.http), "");
    let edge = start_configured_on(edge_dir.path(), None);

    push_ndjson(
        &edge,
        "machine",
        "{\"machine_id\":\"m1\",\"site\":\"berlin\",\"temp\":20.5,\"operator\":\"alice@example.com\",\"note\":\"local only\"}\n\
         {\"machine_id\":\"m2\",\"site\":\"hidden\",\"temp\":1}\n\
         {\"machine_id\":\"m3\",\"site\":\"paris\",\"temp\":30}\n\
         {\"machine_id\":\"m1\",\"temp\":21.5}\n",
    );
    wait_drained(&edge);
    assert!(
        metric(&edge, "meshlet_sync_batches_total{upstream=\"central\"}").unwrap_or(0.0) >= 1.0
    );

    // Erase m3 at the edge: the tombstone goes up.
    let (status, body) = http_post(
        &edge.url("/graphql"),
        "application/json",
        br#"{"query":"mutation { eraseMachine(machine_id: \"m3\") }"}"#.to_vec(),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("true"), "{body}");
    wait_drained(&edge);
    assert!(
        eventually(Duration::from_secs(10), || metric(
            &hq,
            "meshlet_sync_applied_records_total{origin=\"edge-1\"}"
        )
        .unwrap_or(0.0)
            >= 3.0),
        "the aggregator applied the changes and the tombstone"
    );
    let (status, body) = http_get(&hq.url("/sync/v1/nodes"));
    assert_eq!(status, 200, "{body}");
    let nodes: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(nodes["nodes"][0]["id"], "edge-1", "{body}");
    assert_eq!(nodes["nodes"][0]["pending"], 0, "{body}");

    let (status, body) = http_post(
        &hq.url("/graphql"),
        "application/json",
        br#"{"query":"{ syncNodes { id lastSeen lag pending } edgeNodes { id } machine(machine_id: \"m1\") { _meta { source } } }"}"#.to_vec(),
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["data"]["syncNodes"][0]["id"], "edge-1", "{body}");
    // The deprecated alias answers the same for one release.
    assert_eq!(answer["data"]["edgeNodes"][0]["id"], "edge-1", "{body}");
    assert_eq!(
        answer["data"]["machine"]["_meta"]["source"], "sync:edge-1",
        "{body}"
    );
    let (status, body) = http_post(
        &edge.url("/graphql"),
        "application/json",
        br#"{"query":"{ syncStatus { name pending errors lastAck } }"}"#.to_vec(),
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["data"]["syncStatus"][0]["name"], "central", "{body}");
    assert_eq!(answer["data"]["syncStatus"][0]["pending"], 0, "{body}");
    assert!(
        answer["data"]["syncStatus"][0]["lastAck"].is_string(),
        "{body}"
    );

    // Bad input gets a clear answer and a counter; an edge is no aggregator.
    let (status, body) = http_post(
        &hq.url("/sync/v1"),
        "application/octet-stream",
        b"garbage".to_vec(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("zstd"), "{body}");
    assert_eq!(
        metric(&hq, "meshlet_sync_refused_total{reason=\"bad_envelope\"}"),
        Some(1.0)
    );
    let (status, _) = http_post(
        &edge.url("/sync/v1"),
        "application/octet-stream",
        b"x".to_vec(),
    );
    assert_eq!(status, 404);

    stop_cleanly(hq);
    stop_cleanly(edge);

    let store = open_store(&hq_dir.path().join("data"));
    let m1 = store
        .get("machine", "m1")
        .expect("read")
        .expect("m1 arrived");
    assert_eq!(
        m1.fields.get("temp"),
        Some(&Value::Float(21.5)),
        "latest state"
    );
    assert_eq!(string(m1.fields.get("site")), Some("berlin"));
    assert!(
        !m1.fields.contains_key("note"),
        "a field outside the rule stayed home"
    );
    let operator = string(m1.fields.get("operator")).expect("operator sent, masked");
    assert_ne!(operator, "alice@example.com", "the clear value never left");
    assert!(!operator.contains("alice"));
    assert_eq!(
        m1.last_origin.source, "sync:edge-1",
        "stored with its origin node"
    );
    assert!(
        store.get("machine", "m2").expect("read").is_none(),
        "the row filter held"
    );
    assert!(
        store.get("machine", "m3").expect("read").is_none(),
        "erased upstream too"
    );
    let history = store
        .history("machine", "m1", &HistoryQuery::default())
        .expect("history");
    assert!(!history.is_empty());
    assert!(
        history
            .iter()
            .all(|e| !format!("{:?}", e.fields).contains("alice")),
        "no event the aggregator holds has the clear value"
    );
}

#[test]
fn upstream_away_then_back_delivers_every_event_once_in_order() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let edge_dir = edge_dir(&format!("http://{addr}"), "");
    let edge = start_configured_on(edge_dir.path(), None);
    let mut lines = String::new();
    for i in 0..60 {
        lines.push_str(&format!("{{\"meter\":\"r{}\",\"n\":{i}}}\n", i % 3));
    }
    push_ndjson(&edge, "reading", &lines);
    assert!(
        eventually(Duration::from_secs(10), || metric(
            &edge,
            "meshlet_sync_errors_total{upstream=\"central\"}"
        )
        .unwrap_or(0.0)
            >= 2.0),
        "the sender keeps retrying while the upstream is away"
    );
    assert_eq!(pending(&edge), 60.0, "everything waits in the outbox");

    let hq_dir = aggregator_dir();
    let hq = start_configured_on(hq_dir.path(), Some(&addr));
    wait_drained(&edge);
    stop_cleanly(hq);
    stop_cleanly(edge);

    let store = open_store(&hq_dir.path().join("data"));
    for meter in 0..3 {
        let entity = format!("r{meter}");
        let events = store
            .history("reading", &entity, &HistoryQuery::default())
            .expect("history");
        let ns: Vec<i64> = events
            .iter()
            .filter_map(|e| match e.fields.get("n") {
                Some(Value::Int(n)) => Some(*n),
                _ => None,
            })
            .collect();
        let expected: Vec<i64> = (0..60).filter(|i| i % 3 == meter).collect();
        assert_eq!(ns, expected, "{entity}: every event once, in order");
    }
}

#[test]
fn sigkill_mid_send_neither_loses_nor_doubles() {
    let hq_dir = aggregator_dir();
    let hq = start_configured_on(hq_dir.path(), None);
    let edge_dir = edge_dir(&format!("http://{}", hq.http), "");
    let mut sent = 0i64;
    for _round in 0..4 {
        let mut edge = start_configured_on(edge_dir.path(), None);
        let mut lines = String::new();
        for _ in 0..50 {
            lines.push_str(&format!("{{\"meter\":\"k\",\"n\":{sent}}}\n"));
            sent += 1;
        }
        push_ndjson(&edge, "reading", &lines);
        // Killed while its sender is busy with the batch just accepted.
        edge.signal(libc::SIGKILL);
        let _ = edge.wait_exit(Duration::from_secs(10));
    }
    let edge = start_configured_on(edge_dir.path(), None);
    wait_drained(&edge);
    stop_cleanly(edge);
    stop_cleanly(hq);

    let store = open_store(&hq_dir.path().join("data"));
    let ns: Vec<i64> = store
        .history("reading", "k", &HistoryQuery::default())
        .expect("history")
        .iter()
        .filter_map(|e| match e.fields.get("n") {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(
        ns,
        (0..sent).collect::<Vec<_>>(),
        "each event exactly once, in order"
    );
}

#[test]
fn disk_budget_coalesces_first_then_drops_lowest_priority() {
    // A parked upstream (no url) with a tiny budget; `reading` is low
    // priority history, `machine` normal priority latest state.
    let dir = node_workdir(
        &[
            ("machine", MACHINE_EDGE.to_string()),
            (
                "reading",
                READING_EDGE.replace(
                    "    mode: history\n",
                    "    mode: history\n    priority: low\n",
                ),
            ),
        ],
        "node_id = \"edge-b\"\n[sync]\nmax_outbox_bytes = 3000\n",
    );
    let edge = start_configured_on(dir.path(), None);
    let mut lines = String::new();
    for i in 0..200 {
        lines.push_str(&format!("{{\"meter\":\"b{}\",\"n\":{i}}}\n", i % 40));
    }
    push_ndjson(&edge, "reading", &lines);
    push_ndjson(
        &edge,
        "machine",
        "{\"machine_id\":\"h1\",\"site\":\"berlin\",\"temp\":1}\n{\"machine_id\":\"h2\",\"site\":\"berlin\",\"temp\":2}\n",
    );
    let coalesced = "meshlet_sync_dropped_total{upstream=\"central\",reason=\"coalesced\"}";
    let dropped_low = "meshlet_sync_dropped_total{upstream=\"central\",reason=\"budget_low\"}";
    assert!(
        eventually(Duration::from_secs(10), || {
            metric(&edge, "meshlet_sync_pending_bytes{upstream=\"central\"}").unwrap_or(f64::MAX)
                <= 3000.0
        }),
        "the outbox is brought back under its budget"
    );
    let coalesced = metric(&edge, coalesced).unwrap_or(0.0);
    let dropped = metric(&edge, dropped_low).unwrap_or(0.0);
    assert!(
        coalesced >= 100.0,
        "history events coalesce to the latest per meter first: {coalesced}"
    );
    assert!(
        dropped > 0.0,
        "then low priority entries are dropped, counted"
    );
    assert!(
        metric(
            &edge,
            "meshlet_sync_dropped_total{upstream=\"central\",reason=\"budget_normal\"}"
        )
        .is_none(),
        "nothing of a higher priority was dropped"
    );
    let remaining = metric(&edge, "meshlet_sync_pending{upstream=\"central\"}").unwrap_or(0.0);
    assert_eq!(
        remaining,
        200.0 + 2.0 - coalesced - dropped,
        "every removal is counted"
    );
    stop_cleanly(edge);
    let store = open_store(&dir.path().join("data"));
    let left = store
        .outbox_read("central", 10_000, meshlet::record::Timestamp::now())
        .expect("outbox");
    let machines = left
        .iter()
        .filter(|e| e.entry.item.product == "machine")
        .count();
    assert_eq!(
        machines, 2,
        "the normal priority entries are all still pending"
    );
}

/// A lookup on `node` over GraphQL: the `data` member of the answer.
fn graphql_data(node: &NodeProcess, query: &str) -> serde_json::Value {
    let body = serde_json::json!({ "query": query }).to_string();
    let (status, text) = http_post(&node.url("/graphql"), "application/json", body.into_bytes());
    assert_eq!(status, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert!(answer["errors"].is_null(), "{text}");
    answer["data"].clone()
}

/// `meshlet erase` with the edge stopped enqueues the tombstone like the
/// `eraseMachine` mutation does: the next start sends it, and the entity
/// is gone from the aggregator too.
#[test]
fn offline_erase_sends_its_tombstone_at_the_next_start() {
    let hq_dir = aggregator_dir();
    let hq = start_configured_on(hq_dir.path(), None);
    let edge_dir = edge_dir(&format!("http://{}", hq.http), "");
    let edge = start_configured_on(edge_dir.path(), None);
    push_ndjson(
        &edge,
        "machine",
        "{\"machine_id\":\"m1\",\"site\":\"berlin\",\"temp\":20.5}\n",
    );
    wait_drained(&edge);
    let lookup = "{ machine(machine_id: \"m1\") { machine_id } }";
    assert_eq!(graphql_data(&hq, lookup)["machine"]["machine_id"], "m1");
    let (status, _) = edge.stop();
    assert!(status.success());

    let out = run(
        edge_dir.path(),
        &["-c", "meshlet.toml", "erase", "machine", "m1"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "erased machine `m1`\n");

    let edge = start_configured_on(edge_dir.path(), None);
    wait_drained(&edge);
    assert!(
        eventually(Duration::from_secs(10), || graphql_data(&hq, lookup)
            ["machine"]
            .is_null()),
        "the aggregator still holds m1 after the edge's offline erase"
    );
    stop_cleanly(edge);
    stop_cleanly(hq);
}

/// An MQTT product whose invalid payloads go to quarantine, synced.
const ALARM_EDGE: &str = r#"
product: alarm
version: 1
domain: test
owner: test@example.com
key: id
fields:
  id:    { type: string, required: true }
  level: { type: int, max: 5 }
sources:
  - mqtt: { topic: "alarms/{id}", format: json }
quality: { on_invalid: quarantine }
sync:
  - to: central
    mode: history
    when: { batch_age: 20ms }
"#;

/// `meshlet quarantine replay` with the edge stopped writes the outbox
/// entries of what it replays, as the HTTP replay of a running node does:
/// the next start syncs the replayed record.
#[test]
fn offline_quarantine_replay_syncs_what_it_replayed() {
    let hq_dir = node_workdir(
        &[(
            "alarm",
            without_sync(ALARM_EDGE).replace("max: 5", "max: 10"),
        )],
        "node_id = \"hq\"\n[aggregator]\nenabled = true\n",
    );
    let hq = start_configured_on(hq_dir.path(), None);
    let edge_dir = node_workdir(
        &[("alarm", ALARM_EDGE.to_string())],
        &format!(
            "node_id = \"edge-1\"\n[sync]\nretry_min = \"50ms\"\nretry_max = \"300ms\"\n[upstreams.central]\nurl = \"http://{}\"\n",
            hq.http
        ),
    );
    let edge = NodeBuilder::new(edge_dir.path())
        .arg("--config")
        .arg("meshlet.toml")
        .start()
        .expect("edge starts");
    let port = edge.mqtt.expect("embedded broker").port();
    let out = mosquitto_pub(port, "alarms/a1", br#"{"level": 9}"#, 1, false);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        eventually(Duration::from_secs(10), || {
            metric(
            &edge,
            "meshlet_ingest_records_total{product=\"alarm\",source=\"mqtt:0\",outcome=\"quarantined\"}"
        )
        .unwrap_or(0.0)
            >= 1.0
        }),
        "the alarm was quarantined"
    );
    let (status, _) = edge.stop();
    assert!(status.success());

    let fixed = ALARM_EDGE.replace("max: 5", "max: 10");
    std::fs::write(edge_dir.path().join("products/alarm.yaml"), fixed).expect("fix definition");
    let out = run(
        edge_dir.path(),
        &["-c", "meshlet.toml", "quarantine", "replay", "alarm"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("replayed 1 of 1"), "{}", stdout(&out));

    let edge = start_configured_on(edge_dir.path(), None);
    wait_drained(&edge);
    let lookup = "{ alarm(id: \"a1\") { id level } }";
    assert!(
        eventually(Duration::from_secs(10), || graphql_data(&hq, lookup)
            ["alarm"]["level"]
            == 9),
        "the replayed alarm never reached the aggregator: {}",
        graphql_data(&hq, lookup)
    );
    stop_cleanly(edge);
    stop_cleanly(hq);
}

/// An aggregator that does not know a product refuses its records, and
/// the refusal is no acknowledgement: all 100 wait in the edge's outbox
/// (counted, shown in `syncStatus`) while the products it knows still go
/// up, and once the aggregator hot-reloads a definition of the product —
/// its ingestion follows the reload — every one of them arrives, once,
/// without restarting either node.
#[test]
fn records_of_a_product_the_aggregator_lacks_wait_until_a_reload_brings_it() {
    let hq_dir = node_workdir(
        &[("machine", without_sync(MACHINE_EDGE))],
        "node_id = \"hq\"\n[aggregator]\nenabled = true\n",
    );
    let hq = start_configured_on(hq_dir.path(), None);
    let edge_dir = edge_dir(&format!("http://{}", hq.http), "");
    let edge = start_configured_on(edge_dir.path(), None);
    let mut lines = String::new();
    for i in 0..100 {
        lines.push_str(&format!("{{\"meter\":\"r{}\",\"n\":{i}}}\n", i % 10));
    }
    push_ndjson(&edge, "reading", &lines);

    assert!(
        eventually(Duration::from_secs(15), || metric(
            &hq,
            "meshlet_sync_refused_total{reason=\"unknown_product\"}"
        )
        .unwrap_or(0.0)
            >= 2.0),
        "the aggregator never refused the unknown product"
    );
    assert_eq!(pending(&edge), 100.0, "a refusal acknowledged nothing");
    // The refused product waits; the products the aggregator knows go on.
    push_ndjson(
        &edge,
        "machine",
        "{\"machine_id\":\"m1\",\"site\":\"berlin\",\"temp\":20.5}\n",
    );
    let lookup = "{ machine(machine_id: \"m1\") { temp } }";
    assert!(
        eventually(Duration::from_secs(15), || graphql_data(&hq, lookup)
            ["machine"]["temp"]
            == 20.5),
        "a known product was held up behind the refused one"
    );
    assert!(
        eventually(Duration::from_secs(10), || pending(&edge) == 100.0),
        "only the refused product's records wait: {}",
        pending(&edge)
    );
    let refusals = "meshlet_sync_refusals_total{upstream=\"central\",reason=\"unknown_product\"}";
    assert!(
        eventually(Duration::from_secs(10), || metric(&edge, refusals)
            .unwrap_or(0.0)
            >= 1.0),
        "the edge does not count the refusals"
    );
    let status = graphql_data(&edge, "{ syncStatus { name pending refusals waiting } }");
    let central = &status["syncStatus"][0];
    assert_eq!(central["pending"], 100, "{status}");
    assert!(central["refusals"].as_i64().unwrap_or(0) >= 1, "{status}");
    let waiting = central["waiting"].as_str().unwrap_or_default();
    assert!(waiting.contains("product `reading`"), "{status}");

    // The aggregator learns the product by a hot reload: no restart.
    std::fs::write(
        hq_dir.path().join("products/reading.yaml"),
        without_sync(READING_EDGE),
    )
    .expect("write definition");
    wait_drained(&edge);
    let status = graphql_data(&edge, "{ syncStatus { pending waiting } }");
    assert!(status["syncStatus"][0]["waiting"].is_null(), "{status}");
    stop_cleanly(edge);
    stop_cleanly(hq);

    let store = open_store(&hq_dir.path().join("data"));
    let mut arrived = Vec::new();
    for meter in 0..10 {
        for event in store
            .history("reading", &format!("r{meter}"), &HistoryQuery::default())
            .expect("history")
        {
            if let Some(Value::Int(n)) = event.fields.get("n") {
                arrived.push(*n);
            }
        }
    }
    arrived.sort_unstable();
    assert_eq!(arrived, (0..100).collect::<Vec<i64>>(), "every record once");
}

/// `POST /sync/v1` with a real client, as an edge with `token` (or none).
fn post_envelope(node: &NodeProcess, body: Vec<u8>, token: Option<&str>) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut request = reqwest::Client::new()
            .post(node.url("/sync/v1"))
            .header("content-type", meshlet::sync::envelope::CONTENT_TYPE)
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("HTTP request");
        let status = response.status().as_u16();
        (status, response.text().await.expect("HTTP body"))
    })
}

/// The `n` of every history event of `meter` the aggregator serves, oldest
/// first, read over GraphQL while it runs.
fn served_history(node: &NodeProcess, meter: &str) -> Vec<i64> {
    let query = format!(
        r#"{{"query":"{{ reading(meter: \"{meter}\") {{ history(first: 1000) {{ nodes {{ values {{ n }} }} }} }} }}"}}"#
    );
    let (status, body) = http_post(
        &node.url("/graphql"),
        "application/json",
        query.into_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert!(answer["errors"].is_null(), "{body}");
    answer["data"]["reading"]["history"]["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|node| node["values"]["n"].as_i64())
                .collect()
        })
        .unwrap_or_default()
}

/// `applied` and `duplicates` of an aggregator's answer.
fn applied(answer: &str) -> (u64, u64) {
    let answer: serde_json::Value = serde_json::from_str(answer).expect("JSON answer");
    let count = |key: &str| answer[key].as_u64().unwrap_or(u64::MAX);
    (count("applied"), count("duplicates"))
}

#[test]
fn the_same_envelope_posted_twice_is_applied_once() {
    let hq_dir = aggregator_dir();
    let hq = start_configured_on(hq_dir.path(), None);
    let first = sync_envelope("edge-dup", "d", 1..=5);

    let (status, body) = post_envelope(&hq, first.clone(), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(applied(&body), (5, 0), "{body}");
    assert_eq!(served_history(&hq, "d"), vec![1, 2, 3, 4, 5]);

    // The edge did not hear the answer and sends the same bytes again.
    let (status, body) = post_envelope(&hq, first, None);
    assert_eq!(status, 200, "a redelivery is acknowledged: {body}");
    assert_eq!(applied(&body), (0, 5), "{body}");
    let duplicates = "meshlet_sync_duplicate_records_total{origin=\"edge-dup\"}";
    let applied_total = "meshlet_sync_applied_records_total{origin=\"edge-dup\"}";
    assert_eq!(metric(&hq, duplicates), Some(5.0));
    assert_eq!(metric(&hq, applied_total), Some(5.0));
    assert_eq!(
        served_history(&hq, "d"),
        vec![1, 2, 3, 4, 5],
        "history unchanged by the redelivery"
    );

    // A resend that grew (4-5 again, 6-7 new), then a gap (8-9 were
    // dropped by the edge's budget): only what is new is applied.
    let (status, body) = post_envelope(&hq, sync_envelope("edge-dup", "d", 4..=7), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(applied(&body), (2, 2), "{body}");
    let (status, body) = post_envelope(&hq, sync_envelope("edge-dup", "d", 10..=10), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(applied(&body), (1, 0), "{body}");
    assert_eq!(metric(&hq, duplicates), Some(7.0));
    assert_eq!(metric(&hq, applied_total), Some(8.0));
    assert_eq!(served_history(&hq, "d"), vec![1, 2, 3, 4, 5, 6, 7, 10]);

    // Another edge's sequence numbers are its own.
    let (status, body) = post_envelope(&hq, sync_envelope("edge-two", "e", 1..=2), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(applied(&body), (2, 0), "{body}");

    stop_cleanly(hq);
    let store = open_store(&hq_dir.path().join("data"));
    let ns: Vec<i64> = store
        .history("reading", "d", &HistoryQuery::default())
        .expect("history")
        .iter()
        .filter_map(|e| match e.fields.get("n") {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(ns, vec![1, 2, 3, 4, 5, 6, 7, 10], "stored once each");
}

#[test]
fn a_secured_aggregator_takes_envelopes_from_edge_tokens_only() {
    let hq_dir = aggregator_dir();
    let edge_token = create_token(hq_dir.path(), "edge", "edge-1");
    let reader_token = create_token(hq_dir.path(), "reader", "dashboard");
    let admin_token = create_token(hq_dir.path(), "admin", "ops");
    let hq = NodeBuilder::new(hq_dir.path())
        .secured()
        .arg("--config")
        .arg("meshlet.toml")
        .env("MESHLET_MQTT__EMBEDDED__ENABLED", "false")
        .start()
        .expect("the secured aggregator starts");
    let applied_from = |origin: &str| {
        metric(
            &hq,
            &format!("meshlet_sync_applied_records_total{{origin=\"{origin}\"}}"),
        )
    };

    // Refused: no credentials (401), a wrong token (401), a reader (403).
    let (status, body) = post_envelope(&hq, sync_envelope("intruder", "x", 1..=3), None);
    assert_eq!(status, 401, "anonymous: {body}");
    let (status, body) = post_envelope(
        &hq,
        sync_envelope("intruder", "x", 1..=3),
        Some("mlt_not_a_token"),
    );
    assert_eq!(status, 401, "unknown token: {body}");
    let (status, body) = post_envelope(
        &hq,
        sync_envelope("intruder", "x", 1..=3),
        Some(&reader_token),
    );
    assert_eq!(status, 403, "reader: {body}");
    assert!(body.contains("edge"), "the refusal says who may: {body}");
    assert_eq!(applied_from("intruder"), None, "nothing applied");

    // An edge configured with the reader's token is refused too, and keeps
    // its record: a refusal is not an acknowledgement.
    let wrong_dir = node_workdir(
        &[("reading", READING_EDGE.to_string())],
        &format!(
            "node_id = \"edge-r\"\n[sync]\nretry_min = \"50ms\"\nretry_max = \"300ms\"\n[upstreams.central]\nurl = \"http://{}\"\ntoken = \"{reader_token}\"\n",
            hq.http
        ),
    );
    let wrong = start_configured_on(wrong_dir.path(), None);
    push_ndjson(&wrong, "reading", "{\"meter\":\"w\",\"n\":1}\n");
    assert!(
        eventually(Duration::from_secs(10), || metric(
            &wrong,
            "meshlet_sync_errors_total{upstream=\"central\"}"
        )
        .unwrap_or(0.0)
            >= 2.0),
        "the refused edge keeps retrying"
    );
    assert_eq!(pending(&wrong), 1.0, "the refused record waits at the edge");
    assert_eq!(applied_from("edge-r"), None);

    // The edge with its edge token gets through.
    let good_dir = node_workdir(
        &[("reading", READING_EDGE.to_string())],
        &format!(
            "node_id = \"edge-g\"\n[sync]\nretry_min = \"50ms\"\nretry_max = \"300ms\"\n[upstreams.central]\nurl = \"http://{}\"\ntoken = \"{edge_token}\"\n",
            hq.http
        ),
    );
    let good = start_configured_on(good_dir.path(), None);
    push_ndjson(&good, "reading", "{\"meter\":\"g\",\"n\":7}\n");
    wait_drained(&good);
    assert_eq!(applied_from("edge-g"), Some(1.0));
    // An admin may push as well.
    let (status, body) = post_envelope(
        &hq,
        sync_envelope("ops-push", "o", 1..=1),
        Some(&admin_token),
    );
    assert_eq!(status, 200, "admin: {body}");
    assert_eq!(applied(&body), (1, 0), "{body}");

    stop_cleanly(good);
    stop_cleanly(wrong);
    stop_cleanly(hq);
    let store = open_store(&hq_dir.path().join("data"));
    assert!(store.get("reading", "g").expect("read").is_some());
    assert!(store.get("reading", "o").expect("read").is_some());
    for refused in ["x", "w"] {
        assert!(
            store.get("reading", refused).expect("read").is_none(),
            "nothing from a refused sender is stored ({refused})"
        );
    }
}

#[test]
fn an_erasure_at_the_edge_erases_the_entity_on_the_aggregator() {
    let hq_dir = aggregator_dir();
    let hq = start_configured_on(hq_dir.path(), None);
    let edge_dir = edge_dir(&format!("http://{}", hq.http), "");
    let edge = start_configured_on(edge_dir.path(), None);
    let query = |node: &NodeProcess, q: &str| {
        let body = serde_json::json!({ "query": q }).to_string().into_bytes();
        let (status, body) = http_post(&node.url("/graphql"), "application/json", body);
        assert_eq!(status, 200, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert!(answer["errors"].is_null(), "{body}");
        answer
    };
    let applied_total = "meshlet_sync_applied_records_total{origin=\"edge-1\"}";

    push_ndjson(
        &edge,
        "machine",
        "{\"machine_id\":\"m3\",\"site\":\"paris\",\"temp\":30}\n",
    );
    wait_drained(&edge);
    assert!(
        eventually(Duration::from_secs(10), || metric(&hq, applied_total)
            == Some(1.0)),
        "the record reached the aggregator"
    );
    let before = query(&hq, r#"{ machine(machine_id: "m3") { temp site } }"#);
    assert_eq!(
        (
            before["data"]["machine"]["temp"].as_f64(),
            before["data"]["machine"]["site"].as_str()
        ),
        (Some(30.0), Some("paris")),
        "m3 is on the aggregator before the erase: {before}"
    );

    let erased = query(&edge, r#"mutation { eraseMachine(machine_id: "m3") }"#);
    assert_eq!(erased["data"]["eraseMachine"], true);
    wait_drained(&edge);
    assert!(
        eventually(Duration::from_secs(10), || metric(&hq, applied_total)
            == Some(2.0)),
        "the tombstone is applied and counted: {:?}",
        metric(&hq, applied_total)
    );
    let after = query(&hq, r#"{ machine(machine_id: "m3") { temp } }"#);
    assert!(
        after["data"]["machine"].is_null(),
        "m3 is gone from the aggregator: {after}"
    );

    stop_cleanly(edge);
    stop_cleanly(hq);
    let store = open_store(&hq_dir.path().join("data"));
    assert!(store.get("machine", "m3").expect("read").is_none());
    let tombstone = store
        .tombstone("machine", "m3")
        .expect("read")
        .expect("the aggregator keeps the tombstone");
    assert_eq!(tombstone.origin.source, "sync:edge-1", "{tombstone:?}");
    assert!(
        store
            .history("machine", "m3", &HistoryQuery::default())
            .expect("history")
            .is_empty(),
        "no history of m3 is left"
    );
}
