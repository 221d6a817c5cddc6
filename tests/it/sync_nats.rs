//! Upstream sync through a real NATS JetStream: edges publish envelopes
//! into a replicated stream (the publish ack is the acknowledgement),
//! aggregators consume with durable pull consumers and ack only what is
//! durable in their store.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::nats::NatsCluster;
use common::*;
use meshlet::store::HistoryQuery;

const READING: &str = r#"
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
"#;

const ALARM: &str = r#"
product: alarm
version: 1
domain: safety
owner: test@example.com
key: id
fields:
  id:    { type: string, required: true }
  level: { type: int }
sources:
  - http: {}
"#;

/// What an edge adds to a product: every event goes to `central`.
const SYNC: &str = r#"
sync:
  - to: central
    mode: history
    when: { batch_age: 20ms, batch_size: 8 }
"#;

fn workdir(products: &[(&str, String)], config: &str) -> tempfile::TempDir {
    node_workdir(products, config)
}

fn start_node(dir: &Path) -> NodeProcess {
    start_configured(dir)
}

fn edge(id: &str, nats: &NatsCluster, replicas: usize) -> (tempfile::TempDir, NodeProcess) {
    let dir = workdir(
        &[
            ("reading", format!("{READING}{SYNC}")),
            ("alarm", format!("{ALARM}{SYNC}")),
        ],
        &format!(
            "node_id = \"{id}\"\n[sync]\nretry_min = \"100ms\"\nretry_max = \"1s\"\nsend_timeout = \"5s\"\n[upstreams.central]\nurl = \"{}\"\nstream_replicas = {replicas}\n",
            nats.url()
        ),
    );
    let node = start_node(dir.path());
    (dir, node)
}

fn aggregator(
    id: &str,
    nats: &NatsCluster,
    durable: &str,
    filter: &str,
) -> (tempfile::TempDir, NodeProcess) {
    let dir = workdir(
        &[("reading", READING.to_string()), ("alarm", ALARM.to_string())],
        &format!(
            "node_id = \"{id}\"\n[aggregator.nats]\nurl = \"{}\"\ndurable = \"{durable}\"\nfilter_subject = \"{filter}\"\nack_wait = \"2s\"\nretry_delay = \"200ms\"\nbatch = 16\n",
            nats.url()
        ),
    );
    let mut node = start_node(dir.path());
    let consuming = |l: &str| l.contains("aggregator consuming from JetStream");
    if !node.seen_logs.iter().any(|l| consuming(l)) {
        node.wait_for_log(Duration::from_secs(30), consuming)
            .expect("the aggregator binds its durable consumer");
    }
    (dir, node)
}

fn post(node: &NodeProcess, product: &str, lines: String) {
    let (status, body) = http_post(
        &node.url(&format!("/ingest/{product}")),
        "application/x-ndjson",
        lines.into_bytes(),
    );
    assert_eq!(status, 200, "{body}");
}

/// `count` readings of `edge`, one entity each (`<edge>-<i>`), from `from`.
fn readings(edge: &str, from: usize, count: usize) -> String {
    (from..from + count)
        .map(|i| format!("{{\"meter\":\"{edge}-{i}\",\"n\":{i}}}\n"))
        .collect()
}

fn pending(node: &NodeProcess) -> f64 {
    metric(node, "meshlet_sync_pending{upstream=\"central\"}").unwrap_or(f64::NAN)
}

/// How many events of `entity` a (stopped or killed) node's store holds.
fn events(store: &meshlet::store::Store, product: &str, entity: &str) -> usize {
    store
        .history(product, entity, &HistoryQuery::default())
        .expect("history")
        .len()
}

/// Records of one durable consumer this node applied (all origins).
fn applied(node: &NodeProcess, origins: &[&str]) -> f64 {
    origins
        .iter()
        .map(|o| {
            metric(
                node,
                &format!("meshlet_sync_applied_records_total{{origin=\"{o}\"}}"),
            )
            .unwrap_or(0.0)
        })
        .sum()
}

/// Two edges → a stream with 3 replicas on a 3-server cluster → two
/// aggregators sharing one durable. Mid-stream one NATS server and one
/// aggregator are SIGKILLed: the stream keeps its quorum, the edges
/// resend what was not acknowledged (JetStream drops the copies by
/// message id), and what the dead aggregator had been delivered and not
/// acknowledged is redelivered to the survivor — after later envelopes of
/// the same edge were applied there, so its high-water mark is already
/// above them. Every record is then applied, once on each store; across
/// the two stores at most the one envelope the dead aggregator had made
/// durable but not yet acknowledged is applied twice (two stores, no
/// shared transaction).
#[test]
fn two_edges_a_replicated_stream_and_two_aggregators_on_one_durable_survive_kills() {
    const PER_EDGE: usize = 240;
    const EDGE_BATCH: usize = 8;
    let mut nats = NatsCluster::start(3);
    let (_e1_dir, e1) = edge("edge-1", &nats, 3);
    let (_e2_dir, e2) = edge("edge-2", &nats, 3);
    // The edges create the stream (replicas 3) with their first envelopes.
    post(&e1, "reading", readings("edge-1", 0, 40));
    post(&e2, "reading", readings("edge-2", 0, 40));
    assert!(
        eventually(Duration::from_secs(60), || pending(&e1) == 0.0
            && pending(&e2) == 0.0),
        "the stream acknowledged the first envelopes"
    );
    let (a_dir, a) = aggregator("agg-a", &nats, "plant", "meshlet.sync.>");
    let (b_dir, b) = aggregator("agg-b", &nats, "plant", "meshlet.sync.>");
    let origins = ["edge-1", "edge-2"];

    // Mid-stream: both aggregators busy, more on the way.
    for step in 0..4 {
        let from = 40 + step * 50;
        post(&e1, "reading", readings("edge-1", from, 50));
        post(&e2, "reading", readings("edge-2", from, 50));
        if step == 1 {
            assert!(
                eventually(Duration::from_secs(30), || applied(&a, &origins) > 0.0
                    && applied(&b, &origins) > 0.0),
                "both aggregators take part of the durable's load"
            );
            nats.kill(1);
            a.signal(libc::SIGKILL);
        }
    }
    let mut a = a;
    a.wait_exit(Duration::from_secs(10)).expect("agg-a died");
    let a_store = open_store(&a_dir.path().join("data"));
    let on_a: usize = origins
        .iter()
        .flat_map(|o| (0..PER_EDGE).map(move |i| format!("{o}-{i}")))
        .map(|entity| events(&a_store, "reading", &entity))
        .sum();
    drop(a_store);

    assert!(
        eventually(Duration::from_secs(60), || pending(&e1) == 0.0
            && pending(&e2) == 0.0),
        "the stream acknowledged every envelope despite the dead server"
    );
    let total = (2 * PER_EDGE) as f64;
    assert!(
        eventually(Duration::from_secs(60), || {
            applied(&b, &origins) + on_a as f64 >= total
                && metric(&b, "meshlet_sync_jetstream_pending{durable=\"plant\"}") == Some(0.0)
                && metric(&b, "meshlet_sync_jetstream_ack_pending{durable=\"plant\"}") == Some(0.0)
        }),
        "agg-b took over what agg-a left (applied {} + {on_a} on agg-a, of {total})",
        applied(&b, &origins)
    );
    stop_cleanly(b);

    let a_store = open_store(&a_dir.path().join("data"));
    let b_store = open_store(&b_dir.path().join("data"));
    let mut twice = Vec::new();
    for origin in origins {
        for i in 0..PER_EDGE {
            let entity = format!("{origin}-{i}");
            let (on_a, on_b) = (
                events(&a_store, "reading", &entity),
                events(&b_store, "reading", &entity),
            );
            assert!(
                on_a <= 1 && on_b <= 1,
                "{entity}: applied {on_a} times on agg-a, {on_b} on agg-b"
            );
            assert!(on_a + on_b >= 1, "{entity} was lost");
            if on_a + on_b == 2 {
                twice.push(entity);
            }
        }
    }
    assert!(
        twice.len() <= EDGE_BATCH,
        "more than the one envelope agg-a made durable but did not acknowledge is on both stores: {twice:?}"
    );
    eprintln!(
        "records on both stores (agg-a died between its write and its ack): {}",
        twice.len()
    );
    stop_cleanly(e1);
    stop_cleanly(e2);
}

/// Domain ownership: two aggregators with different durables and subject
/// filters each take only their own product, every record of it; an
/// envelope of a product an aggregator does not know is nak'ed (counted),
/// not acknowledged, and applied once a reload brings the definition.
#[test]
fn aggregators_on_different_filters_take_their_own_products() {
    let nats = NatsCluster::start(1);
    let (_edge_dir, e) = edge("edge-1", &nats, 1);
    post(&e, "reading", readings("edge-1", 0, 30));
    assert!(
        eventually(Duration::from_secs(30), || pending(&e) == 0.0),
        "the stream acknowledged the readings"
    );
    let (r_dir, r) = aggregator("agg-r", &nats, "readings", "meshlet.sync.*.reading");
    // agg-l owns alarms but does not know the product yet.
    let l_dir = workdir(
        &[("reading", READING.to_string())],
        &format!(
            "node_id = \"agg-l\"\n[aggregator.nats]\nurl = \"{}\"\ndurable = \"alarms\"\nfilter_subject = \"meshlet.sync.*.alarm\"\nack_wait = \"2s\"\nretry_delay = \"200ms\"\n",
            nats.url()
        ),
    );
    let l = start_node(l_dir.path());
    let alarms: String = (0..20)
        .map(|i| format!("{{\"id\":\"a{i}\",\"level\":{i}}}\n"))
        .collect();
    post(&e, "alarm", alarms);
    assert!(
        eventually(Duration::from_secs(30), || metric(
            &l,
            "meshlet_sync_jetstream_naks_total{durable=\"alarms\",reason=\"unknown_product\"}"
        )
        .unwrap_or(0.0)
            >= 1.0),
        "agg-l nak'ed the alarms it does not know"
    );
    assert_eq!(
        metric(&l, "meshlet_sync_applied_records_total{origin=\"edge-1\"}").unwrap_or(0.0),
        0.0
    );
    // The definition arrives; the reload makes the nak'ed envelopes apply.
    std::fs::write(l_dir.path().join("products/alarm.yaml"), ALARM).expect("write");
    assert!(
        eventually(Duration::from_secs(30), || metric(
            &l,
            "meshlet_sync_applied_records_total{origin=\"edge-1\"}"
        ) == Some(20.0)),
        "agg-l applied the 20 alarms after the reload"
    );
    assert!(
        eventually(Duration::from_secs(30), || metric(
            &r,
            "meshlet_sync_applied_records_total{origin=\"edge-1\"}"
        ) == Some(30.0)),
        "agg-r applied the 30 readings"
    );
    // syncConsumers shows the durable's lag: nothing left, the naks counted.
    let lag_of = |node: &NodeProcess| {
        let body = serde_json::json!({
            "query": "{ syncConsumers { durable filterSubject pending ackPending redelivered naks } }"
        })
        .to_string();
        let (status, text) =
            http_post(&node.url("/graphql"), "application/json", body.into_bytes());
        assert_eq!(status, 200, "{text}");
        let answer: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        answer["data"]["syncConsumers"][0].clone()
    };
    assert!(
        eventually(Duration::from_secs(30), || {
            let lag = lag_of(&l);
            lag["pending"] == 0 && lag["ackPending"] == 0
        }),
        "agg-l's consumer caught up: {}",
        lag_of(&l)
    );
    let lag = lag_of(&l);
    assert_eq!(lag["durable"], "alarms", "{lag}");
    assert_eq!(lag["filterSubject"], "meshlet.sync.*.alarm", "{lag}");
    assert!(lag["naks"].as_u64().unwrap_or(0) >= 1, "{lag}");
    assert_eq!(
        metric(
            &r,
            "meshlet_sync_jetstream_naks_total{durable=\"readings\",reason=\"unknown_product\"}"
        ),
        None,
        "agg-r knows readings: nothing nak'ed"
    );
    stop_cleanly(r);
    stop_cleanly(l);
    stop_cleanly(e);
    let r_store = open_store(&r_dir.path().join("data"));
    let l_store = open_store(&l_dir.path().join("data"));
    for i in 0..30 {
        let meter = format!("edge-1-{i}");
        assert_eq!(events(&r_store, "reading", &meter), 1, "{meter} on agg-r");
        assert_eq!(events(&l_store, "reading", &meter), 0, "{meter} on agg-l");
    }
    for i in 0..20 {
        let id = format!("a{i}");
        assert_eq!(events(&l_store, "alarm", &id), 1, "{id} on agg-l");
        assert_eq!(events(&r_store, "alarm", &id), 0, "{id} on agg-r");
    }
}

/// `tls://` with a client certificate and a token: envelopes go up and are
/// applied; an edge that does not trust the server's certificate sends
/// nothing, counts its failures and keeps its outbox.
#[test]
fn tls_with_client_certificates_and_a_token() {
    let pki = tempfile::tempdir().expect("tempdir");
    common::pki::make_pki(pki.path());
    let nats = NatsCluster::start_tls(pki.path(), "s3cret");
    let p = pki.path().display();
    let tls = |ca: &str| {
        format!(
            "token = \"s3cret\"\nca_file = \"{p}/{ca}.pem\"\nclient_cert_file = \"{p}/client.pem\"\nclient_key_file = \"{p}/client.key\"\n"
        )
    };
    let edge_with = |id: &str, ca: &str| {
        let dir = workdir(
            &[("reading", format!("{READING}{SYNC}"))],
            &format!(
                "node_id = \"{id}\"\n[sync]\nretry_min = \"100ms\"\nretry_max = \"1s\"\n[upstreams.central]\nurl = \"{}\"\n{}",
                nats.url(),
                tls(ca)
            ),
        );
        let node = start_node(dir.path());
        (dir, node)
    };
    let (_good_dir, good) = edge_with("edge-t", "ca");
    let (_bad_dir, bad) = edge_with("edge-x", "other-ca");
    post(&good, "reading", readings("edge-t", 0, 12));
    post(&bad, "reading", readings("edge-x", 0, 12));
    assert!(
        eventually(Duration::from_secs(30), || pending(&good) == 0.0),
        "the TLS upstream acknowledged the envelopes"
    );
    let hq_dir = workdir(
        &[("reading", READING.to_string())],
        &format!(
            "node_id = \"hq\"\n[aggregator.nats]\nurl = \"{}\"\n{}",
            nats.url(),
            tls("ca")
        ),
    );
    let hq = start_node(hq_dir.path());
    assert!(
        eventually(Duration::from_secs(30), || metric(
            &hq,
            "meshlet_sync_applied_records_total{origin=\"edge-t\"}"
        ) == Some(12.0)),
        "the aggregator applied them over TLS"
    );
    assert!(
        eventually(Duration::from_secs(30), || metric(
            &bad,
            "meshlet_sync_errors_total{upstream=\"central\"}"
        )
        .unwrap_or(0.0)
            >= 2.0),
        "the edge that does not trust the server counts its failures"
    );
    assert_eq!(pending(&bad), 12.0, "and keeps every entry");
    assert_eq!(
        metric(&hq, "meshlet_sync_applied_records_total{origin=\"edge-x\"}"),
        None
    );
    stop_cleanly(hq);
    stop_cleanly(good);
    stop_cleanly(bad);
}

/// A server that takes at most 2 KiB per message: the client refuses the
/// 8-record envelopes before sending anything, and the edge sends the
/// same records again, fewer at a time (counted), until they fit — every
/// record arrives, once.
#[test]
fn envelopes_over_the_servers_max_payload_go_in_smaller_pieces() {
    const BLOB: &str = "product: blob\nversion: 1\ndomain: test\nowner: test@example.com\nkey: id\nfields:\n  id: { type: string, required: true }\n  note: { type: string }\nsources:\n  - http: {}\n";
    let nats = NatsCluster::start_with(1, "max_payload: 2048\n", "nats");
    let dir = workdir(
        &[("blob", format!("{BLOB}{SYNC}"))],
        &format!(
            "node_id = \"edge-b\"\n[sync]\nretry_min = \"100ms\"\nretry_max = \"1s\"\n[upstreams.central]\nurl = \"{}\"\n",
            nats.url()
        ),
    );
    let e = start_node(dir.path());
    // 1000 hex digits of a simple generator each: zstd cannot shrink them
    // much, so 8 records are ~4 KiB on the wire.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let lines: String = (0..24)
        .map(|i| {
            let note: String = (0..1000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from_digit((x % 16) as u32, 16).unwrap_or('0')
                })
                .collect();
            format!("{{\"id\":\"b{i}\",\"note\":\"{note}\"}}\n")
        })
        .collect();
    post(&e, "blob", lines);
    assert!(
        eventually(Duration::from_secs(30), || pending(&e) == 0.0),
        "every record went up in envelopes that fit (pending {})",
        pending(&e)
    );
    assert!(
        metric(
            &e,
            "meshlet_sync_split_envelopes_total{upstream=\"central\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "the refusals were counted"
    );
    let hq_dir = workdir(
        &[("blob", BLOB.to_string())],
        &format!(
            "node_id = \"hq\"\n[aggregator.nats]\nurl = \"{}\"\n",
            nats.url()
        ),
    );
    let hq = start_node(hq_dir.path());
    assert!(
        eventually(Duration::from_secs(30), || metric(
            &hq,
            "meshlet_sync_applied_records_total{origin=\"edge-b\"}"
        ) == Some(24.0)),
        "the aggregator applied all 24"
    );
    stop_cleanly(hq);
    stop_cleanly(e);
    let store = open_store(&hq_dir.path().join("data"));
    for i in 0..24 {
        assert_eq!(events(&store, "blob", &format!("b{i}")), 1, "b{i}");
    }
}

/// A stream the edge created with `stream_max_bytes` refuses new messages
/// once full instead of dropping old ones: the refused envelopes are not
/// acknowledged, so they stay in the outbox (and the failures are counted).
#[test]
fn a_full_stream_refuses_and_the_edge_keeps_its_entries() {
    let nats = NatsCluster::start(1);
    let dir = workdir(
        &[("reading", format!("{READING}{SYNC}"))],
        &format!(
            "node_id = \"edge-f\"\n[sync]\nretry_min = \"100ms\"\nretry_max = \"500ms\"\n[upstreams.central]\nurl = \"{}\"\nstream_max_bytes = 2048\n",
            nats.url()
        ),
    );
    let e = start_node(dir.path());
    post(&e, "reading", readings("edge-f", 0, 200));
    assert!(
        eventually(Duration::from_secs(30), || metric(
            &e,
            "meshlet_sync_errors_total{upstream=\"central\"}"
        )
        .unwrap_or(0.0)
            >= 3.0),
        "the full stream's refusals are counted"
    );
    let left = pending(&e);
    assert!(
        left > 0.0 && left < 200.0,
        "some envelopes fit, the rest stay in the outbox: {left}"
    );
    let sent = metric(&e, "meshlet_sync_sent_records_total{upstream=\"central\"}").unwrap_or(0.0);
    assert_eq!(
        sent + left,
        200.0,
        "each entry is either acknowledged or kept"
    );
    stop_cleanly(e);
}

/// The only NATS server crashes and comes back on its store: the edge
/// keeps what it could not publish and sends it after, the aggregator
/// binds its durable again and goes on where its acks stopped — every
/// record applied once.
#[test]
fn a_server_crash_and_restart_loses_nothing() {
    let mut nats = NatsCluster::start(1);
    let (_edge_dir, e) = edge("edge-r", &nats, 1);
    post(&e, "reading", readings("edge-r", 0, 30));
    assert!(
        eventually(Duration::from_secs(30), || pending(&e) == 0.0),
        "the stream acknowledged the first readings"
    );
    let (hq_dir, hq) = aggregator("hq", &nats, "plant", "meshlet.sync.>");
    let applied_now =
        || metric(&hq, "meshlet_sync_applied_records_total{origin=\"edge-r\"}").unwrap_or(0.0);
    assert!(
        eventually(Duration::from_secs(30), || applied_now() == 30.0),
        "the first 30 applied"
    );
    nats.kill(0);
    post(&e, "reading", readings("edge-r", 30, 30));
    assert!(
        eventually(Duration::from_secs(30), || metric(
            &e,
            "meshlet_sync_errors_total{upstream=\"central\"}"
        )
        .unwrap_or(0.0)
            >= 1.0),
        "the edge counts its failed sends while the server is down"
    );
    assert!(pending(&e) > 0.0, "and keeps the entries");
    nats.restart(0);
    assert!(
        eventually(Duration::from_secs(60), || pending(&e) == 0.0
            && applied_now() == 60.0),
        "after the restart everything went up and was applied (applied {}, pending {})",
        applied_now(),
        pending(&e)
    );
    stop_cleanly(hq);
    stop_cleanly(e);
    let store = open_store(&hq_dir.path().join("data"));
    for i in 0..60 {
        let meter = format!("edge-r-{i}");
        assert_eq!(events(&store, "reading", &meter), 1, "{meter}");
    }
}
