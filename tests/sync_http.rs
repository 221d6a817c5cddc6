//! Upstream sync over HTTP between two real nodes: an edge and an
//! aggregator (`POST /sync/v1`). What the aggregator holds is read from its
//! store after it stopped.

mod common;

use std::path::Path;
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

/// The aggregator's definitions: the same products, no sync rules.
fn without_sync(yaml: &str) -> String {
    yaml.split("\nsync:").next().unwrap_or(yaml).to_string() + "\n"
}

fn workdir(products: &[(&str, String)], config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("products")).expect("products dir");
    for (name, yaml) in products {
        std::fs::write(dir.path().join(format!("products/{name}.yaml")), yaml).expect("write");
    }
    std::fs::write(
        dir.path().join("meshlet.toml"),
        format!("data_dir = \"data\"\nproducts = [\"products\"]\n{config}"),
    )
    .expect("write config");
    dir
}

fn start_node(dir: &Path, listen: Option<&str>) -> NodeProcess {
    let mut builder = NodeBuilder::new(dir)
        .arg("--config")
        .arg("meshlet.toml")
        .env("MESHLET_MQTT__EMBEDDED__ENABLED", "false");
    if let Some(addr) = listen {
        builder = builder.listen(addr);
    }
    builder.start().expect("node starts")
}

fn aggregator_dir() -> tempfile::TempDir {
    workdir(
        &[
            ("machine", without_sync(MACHINE_EDGE)),
            ("reading", without_sync(READING_EDGE)),
        ],
        "node_id = \"hq\"\n[aggregator]\nenabled = true\n",
    )
}

fn edge_dir(upstream: &str, extra: &str) -> tempfile::TempDir {
    workdir(
        &[
            ("machine", MACHINE_EDGE.to_string()),
            ("reading", READING_EDGE.to_string()),
        ],
        &format!(
            "node_id = \"edge-1\"\n[sync]\nretry_min = \"50ms\"\nretry_max = \"300ms\"\n{extra}[upstreams.central]\nurl = \"{upstream}\"\n"
        ),
    )
}

fn push(node: &NodeProcess, product: &str, ndjson: &str) {
    let (status, body) = http_post(
        &node.url(&format!("/ingest/{product}")),
        "application/x-ndjson",
        ndjson.as_bytes().to_vec(),
    );
    assert_eq!(status, 200, "{body}");
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
    let hq = start_node(hq_dir.path(), None);
    let edge_dir = edge_dir(&format!("http://{}", hq.http), "");
    let edge = start_node(edge_dir.path(), None);

    push(
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
        br#"{"query":"{ nodes { id lastSeen lag pending } machine(machine_id: \"m1\") { _meta { source } } }"}"#.to_vec(),
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["data"]["nodes"][0]["id"], "edge-1", "{body}");
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

    let _ = hq.stop();
    let _ = edge.stop();

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
    let edge = start_node(edge_dir.path(), None);
    let mut lines = String::new();
    for i in 0..60 {
        lines.push_str(&format!("{{\"meter\":\"r{}\",\"n\":{i}}}\n", i % 3));
    }
    push(&edge, "reading", &lines);
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
    let hq = start_node(hq_dir.path(), Some(&addr));
    wait_drained(&edge);
    let _ = hq.stop();
    let _ = edge.stop();

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
    let hq = start_node(hq_dir.path(), None);
    let edge_dir = edge_dir(&format!("http://{}", hq.http), "");
    let mut sent = 0i64;
    for _round in 0..4 {
        let mut edge = start_node(edge_dir.path(), None);
        let mut lines = String::new();
        for _ in 0..50 {
            lines.push_str(&format!("{{\"meter\":\"k\",\"n\":{sent}}}\n"));
            sent += 1;
        }
        push(&edge, "reading", &lines);
        // Killed while its sender is busy with the batch just accepted.
        edge.signal(libc::SIGKILL);
        let _ = edge.wait_exit(Duration::from_secs(10));
    }
    let edge = start_node(edge_dir.path(), None);
    wait_drained(&edge);
    let _ = edge.stop();
    let _ = hq.stop();

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
    let dir = workdir(
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
    let edge = start_node(dir.path(), None);
    let mut lines = String::new();
    for i in 0..200 {
        lines.push_str(&format!("{{\"meter\":\"b{}\",\"n\":{i}}}\n", i % 40));
    }
    push(&edge, "reading", &lines);
    push(
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
    let _ = edge.stop();
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
    let hq = start_node(hq_dir.path(), None);
    let edge_dir = edge_dir(&format!("http://{}", hq.http), "");
    let edge = start_node(edge_dir.path(), None);
    push(
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

    let edge = start_node(edge_dir.path(), None);
    wait_drained(&edge);
    assert!(
        eventually(Duration::from_secs(10), || graphql_data(&hq, lookup)
            ["machine"]
            .is_null()),
        "the aggregator still holds m1 after the edge's offline erase"
    );
    let _ = edge.stop();
    let _ = hq.stop();
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
    let hq_dir = workdir(
        &[(
            "alarm",
            without_sync(ALARM_EDGE).replace("max: 5", "max: 10"),
        )],
        "node_id = \"hq\"\n[aggregator]\nenabled = true\n",
    );
    let hq = start_node(hq_dir.path(), None);
    let edge_dir = workdir(
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

    let edge = start_node(edge_dir.path(), None);
    wait_drained(&edge);
    let lookup = "{ alarm(id: \"a1\") { id level } }";
    assert!(
        eventually(Duration::from_secs(10), || graphql_data(&hq, lookup)
            ["alarm"]["level"]
            == 9),
        "the replayed alarm never reached the aggregator: {}",
        graphql_data(&hq, lookup)
    );
    let _ = edge.stop();
    let _ = hq.stop();
}

/// An aggregator that does not know a product refuses its records, and
/// the refusal is no acknowledgement: all 100 wait in the edge's outbox
/// (counted, shown in `syncStatus`) while the products it knows still go
/// up, and once the aggregator hot-reloads a definition of the product —
/// its ingestion follows the reload — every one of them arrives, once,
/// without restarting either node.
#[test]
fn records_of_a_product_the_aggregator_lacks_wait_until_a_reload_brings_it() {
    let hq_dir = workdir(
        &[("machine", without_sync(MACHINE_EDGE))],
        "node_id = \"hq\"\n[aggregator]\nenabled = true\n",
    );
    let hq = start_node(hq_dir.path(), None);
    let edge_dir = edge_dir(&format!("http://{}", hq.http), "");
    let edge = start_node(edge_dir.path(), None);
    let mut lines = String::new();
    for i in 0..100 {
        lines.push_str(&format!("{{\"meter\":\"r{}\",\"n\":{i}}}\n", i % 10));
    }
    push(&edge, "reading", &lines);

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
    push(
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
    let _ = edge.stop();
    let _ = hq.stop();

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
