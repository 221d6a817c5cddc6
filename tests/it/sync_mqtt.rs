//! Upstream sync through a real Mosquitto: the edge publishes envelopes
//! (QoS 1, PUBACK = acknowledged), the aggregator subscribes with a
//! persistent session and applies them.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::*;
use meshlet::record::Value;
use meshlet::store::HistoryQuery;

const READING_EDGE: &str = r#"
product: reading
version: 1
domain: test
owner: test@example.com
key: meter
fields:
  meter: { type: string, required: true }
  n:     { type: int }
  owner: { type: string, classification: pii }
sources:
  - http: {}
sync:
  - to: central
    mode: history
    where: "n >= 0"
    mask: { owner: redact }
    when: { batch_age: 20ms, batch_size: 8 }
"#;

fn workdir(yaml: &str, config: &str) -> tempfile::TempDir {
    node_workdir(&[("reading", yaml)], config)
}

fn start_node(dir: &Path) -> NodeProcess {
    start_configured(dir)
}

fn start_aggregator(dir: &Path) -> NodeProcess {
    let mut node = start_node(dir);
    let subscribed = |l: &str| l.contains("aggregator subscribed to the sync topic");
    if node.seen_logs.iter().any(|l| subscribed(l)) {
        return node;
    }
    node.wait_for_log(Duration::from_secs(20), subscribed)
        .expect("the aggregator subscribes");
    node
}

fn ns(store: &meshlet::store::Store, meter: &str) -> Vec<i64> {
    store
        .history("reading", meter, &HistoryQuery::default())
        .expect("history")
        .iter()
        .filter_map(|e| match e.fields.get("n") {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        })
        .collect()
}

fn pending(node: &NodeProcess) -> f64 {
    metric(node, "meshlet_sync_pending{upstream=\"central\"}").unwrap_or(f64::NAN)
}

#[test]
fn edge_to_mosquitto_to_aggregator_exactly_once_across_an_aggregator_outage() {
    let broker = Mosquitto::start();
    let hq_dir = workdir(
        READING_EDGE.split("\nsync:").next().unwrap_or(READING_EDGE),
        &format!(
            "node_id = \"hq\"\n[aggregator]\ntopic_prefix = \"mesh/sync\"\n[aggregator.mqtt]\nurl = \"{}\"\n",
            broker.url()
        ),
    );
    let edge_dir = workdir(
        READING_EDGE,
        &format!(
            "node_id = \"edge-m\"\n[upstreams.central]\nurl = \"{}\"\ntopic_prefix = \"mesh/sync\"\n",
            broker.url()
        ),
    );
    let hq = start_aggregator(hq_dir.path());
    let edge = start_node(edge_dir.path());

    let batch = |from: i64, to: i64| {
        (from..to)
            .map(|i| format!("{{\"meter\":\"q\",\"n\":{i},\"owner\":\"bob\"}}\n"))
            .collect::<String>()
    };
    let (status, body) = http_post(
        &edge.url("/ingest/reading"),
        "application/x-ndjson",
        batch(0, 30).into_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        eventually(Duration::from_secs(20), || metric(
            &hq,
            "meshlet_sync_applied_records_total{origin=\"edge-m\"}"
        ) == Some(30.0)),
        "the aggregator applied the first 30 events"
    );

    // The aggregator goes away; the broker keeps its session's queue.
    stop_cleanly(hq);
    let (status, body) = http_post(
        &edge.url("/ingest/reading"),
        "application/x-ndjson",
        batch(30, 70).into_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        eventually(Duration::from_secs(20), || pending(&edge) == 0.0),
        "the broker acknowledged everything"
    );
    let hq = start_aggregator(hq_dir.path());
    assert!(
        eventually(Duration::from_secs(20), || metric(
            &hq,
            "meshlet_sync_applied_records_total{origin=\"edge-m\"}"
        ) == Some(40.0)),
        "the queued 40 arrive after the restart"
    );
    stop_cleanly(hq);
    stop_cleanly(edge);

    let store = open_store(&hq_dir.path().join("data"));
    assert_eq!(
        ns(&store, "q"),
        (0..70).collect::<Vec<_>>(),
        "each event once, in order"
    );
    let state = store.get("reading", "q").expect("read").expect("q arrived");
    assert_ne!(
        state.fields.get("owner"),
        Some(&Value::String("bob".into())),
        "the redacted field never left in clear"
    );
}

/// Over MQTT, an aggregator that does not know the product does not
/// acknowledge its envelopes: the broker's session keeps them and
/// redelivers them, and once a hot reload brings the definition every
/// record is applied, once — without restarting the aggregator.
#[test]
fn envelopes_of_an_unknown_product_wait_in_the_broker_until_a_reload() {
    let broker = Mosquitto::start();
    let other = READING_EDGE
        .split("\nsync:")
        .next()
        .unwrap_or(READING_EDGE)
        .replace("product: reading", "product: other");
    let hq_dir = workdir(
        &other,
        &format!(
            "node_id = \"hq\"\n[aggregator]\ntopic_prefix = \"mesh/sync\"\n[aggregator.mqtt]\nurl = \"{}\"\n",
            broker.url()
        ),
    );
    let edge_dir = workdir(
        READING_EDGE,
        &format!(
            "node_id = \"edge-m\"\n[upstreams.central]\nurl = \"{}\"\ntopic_prefix = \"mesh/sync\"\n",
            broker.url()
        ),
    );
    let hq = start_aggregator(hq_dir.path());
    let edge = start_node(edge_dir.path());
    let lines: String = (0..30)
        .map(|i| format!("{{\"meter\":\"q\",\"n\":{i}}}\n"))
        .collect();
    let (status, body) = http_post(
        &edge.url("/ingest/reading"),
        "application/x-ndjson",
        lines.into_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        eventually(Duration::from_secs(20), || metric(
            &hq,
            "meshlet_sync_refused_total{reason=\"unknown_product\"}"
        )
        .unwrap_or(0.0)
            >= 1.0),
        "the aggregator refused the unknown product"
    );
    assert_eq!(
        metric(&hq, "meshlet_sync_applied_records_total{origin=\"edge-m\"}").unwrap_or(0.0),
        0.0
    );

    // The definition arrives by a hot reload: the broker redelivers.
    std::fs::write(
        hq_dir.path().join("products/reading_def.yaml"),
        READING_EDGE.split("\nsync:").next().unwrap_or(READING_EDGE),
    )
    .expect("write definition");
    assert!(
        eventually(Duration::from_secs(60), || metric(
            &hq,
            "meshlet_sync_applied_records_total{origin=\"edge-m\"}"
        ) == Some(30.0)),
        "the refused envelopes never arrived after the reload"
    );
    stop_cleanly(hq);
    stop_cleanly(edge);
    let store = open_store(&hq_dir.path().join("data"));
    assert_eq!(
        ns(&store, "q"),
        (0..30).collect::<Vec<_>>(),
        "each event once, in order"
    );
}

#[test]
fn a_redelivered_envelope_is_applied_once() {
    let broker = Mosquitto::start();
    let hq_dir = workdir(
        READING_EDGE.split("\nsync:").next().unwrap_or(READING_EDGE),
        &format!(
            "node_id = \"hq\"\n[aggregator]\ntopic_prefix = \"mesh/sync\"\n[aggregator.mqtt]\nurl = \"{}\"\n",
            broker.url()
        ),
    );
    let hq = start_aggregator(hq_dir.path());
    let topic = "mesh/sync/edge-r/reading";
    let publish = |envelope: &[u8]| {
        let out = mosquitto_pub(broker.port, topic, envelope, 1, false);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    let applied = "meshlet_sync_applied_records_total{origin=\"edge-r\"}";
    let duplicates = "meshlet_sync_duplicate_records_total{origin=\"edge-r\"}";
    let envelopes = "meshlet_sync_received_envelopes_total{origin=\"edge-r\"}";

    // The same envelope twice (an edge whose PUBACK was lost resends it).
    let first = sync_envelope("edge-r", "r", 1..=5);
    publish(&first);
    publish(&first);
    assert!(
        eventually(Duration::from_secs(20), || metric(&hq, envelopes)
            == Some(2.0)),
        "both deliveries arrived"
    );
    assert_eq!(metric(&hq, applied), Some(5.0));
    assert_eq!(metric(&hq, duplicates), Some(5.0));

    // Redelivered from the broker's queue after the aggregator was away,
    // with an envelope that overlaps it.
    stop_cleanly(hq);
    publish(&first);
    publish(&sync_envelope("edge-r", "r", 4..=8));
    let hq = start_aggregator(hq_dir.path());
    assert!(
        eventually(Duration::from_secs(20), || metric(&hq, envelopes)
            == Some(2.0)),
        "the queued deliveries arrived after the restart"
    );
    assert_eq!(metric(&hq, applied), Some(3.0), "only 6..=8 are new");
    assert_eq!(metric(&hq, duplicates), Some(7.0), "1..=5, then 4 and 5");
    stop_cleanly(hq);

    let store = open_store(&hq_dir.path().join("data"));
    assert_eq!(
        ns(&store, "r"),
        (1..=8).collect::<Vec<_>>(),
        "each event applied once"
    );
}
