//! Verifiable sync: an edge and an aggregator compare digests of what the
//! aggregator holds of the edge and send again only what differs
//! (`meshlet sync verify`, `sync.verify_interval`, `GET
//! /sync/v1/digest/...`). The aggregator's store is damaged behind its
//! back (stopped, sled edited, restarted): it rebuilds its digests at
//! start, and the edge repairs exactly the damaged records. A property
//! test drives both stores' digests with random operations.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use meshlet::record::{Fields, Origin, Record, Timestamp, Value};
use meshlet::store::{DigestScope, Store, StoreConfig};
use meshlet::sync::digest::{differing_buckets, differing_leaves};
use proptest::prelude::*;

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
sources:
  - http: {}
sync:
  - to: central
    fields: [machine_id, site, temp, operator]
    where: "site != 'hidden'"
    mask: { operator: hash }
    when: { batch_age: 20ms, batch_size: 100 }
"#;

fn workdir(product: &str, config: &str) -> tempfile::TempDir {
    node_workdir(&[("machine", product)], config)
}

fn start_node(dir: &Path, listen: &str) -> NodeProcess {
    start_configured_on(dir, Some(listen))
}

fn push(node: &NodeProcess, ndjson: &str) {
    push_ndjson(node, "machine", ndjson)
}

fn machines(n: usize, temp: f64) -> String {
    (0..n)
        .map(|i| {
            let site = if i % 20 == 19 { "hidden" } else { "berlin" };
            format!("{{\"machine_id\":\"m{i:03}\",\"site\":\"{site}\",\"temp\":{temp},\"operator\":\"op{i}@example.com\"}}\n")
        })
        .collect()
}

fn wait_drained(node: &NodeProcess) {
    let pending = || metric(node, "meshlet_sync_pending{upstream=\"central\"}").unwrap_or(f64::NAN);
    assert!(
        eventually(Duration::from_secs(30), || pending() == 0.0),
        "the edge's outbox did not drain: pending {}",
        pending()
    );
}

fn applied(hq: &NodeProcess) -> f64 {
    metric(hq, "meshlet_sync_applied_records_total{origin=\"edge-1\"}").unwrap_or(0.0)
}

/// The aggregator's digest of edge-1's machines: (buckets, keys held).
fn hq_digest(hq: &NodeProcess) -> (usize, u64) {
    let (status, body) = http_get(&hq.url("/sync/v1/digest/edge-1/machine"));
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let buckets = answer["buckets"].as_array().expect("buckets");
    (
        buckets.len(),
        buckets
            .iter()
            .map(|b| b["count"].as_u64().unwrap_or(0))
            .sum(),
    )
}

fn verify(edge_dir: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "--config",
        "meshlet.toml",
        "sync",
        "verify",
        "central",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = run(edge_dir, &args);
    assert!(out.status.success(), "verify failed: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("a JSON report")
}

fn instances_tree(store: &Store) -> sled::Tree {
    store
        .raw_db()
        .open_tree("machine/instances")
        .expect("the instances tree")
}

/// Stops the aggregator, lets `edit` change its sled trees, and starts it
/// again on the same address.
fn damage(
    hq: NodeProcess,
    dir: &Path,
    listen: &str,
    edit: impl FnOnce(&sled::Tree),
) -> NodeProcess {
    stop_cleanly(hq);
    {
        let store = open_store(&dir.join("data"));
        edit(&instances_tree(&store));
        store.raw_db().flush().expect("flush");
    }
    start_node(dir, listen)
}

#[test]
fn verify_repairs_deleted_and_stale_records_on_the_aggregator_without_a_full_resync() {
    let listen = format!("127.0.0.1:{}", free_port());
    let hq_dir = workdir(
        &without_sync(MACHINE_EDGE),
        "node_id = \"hq\"\n[aggregator]\nenabled = true\ndigest_rebuild_on_start = true\n",
    );
    let mut hq = start_node(hq_dir.path(), &listen);
    let edge_dir = workdir(
        MACHINE_EDGE,
        &format!("node_id = \"edge-1\"\n[sync]\nretry_min = \"50ms\"\nretry_max = \"300ms\"\n[upstreams.central]\nurl = \"http://{listen}\"\n"),
    );
    let edge_listen = format!("127.0.0.1:{}", free_port());
    let edge = start_node(edge_dir.path(), &edge_listen);

    // Round 1: 200 machines (10 hidden by the `where`), temp 1.
    push(&edge, &machines(200, 1.0));
    wait_drained(&edge);
    assert!(eventually(Duration::from_secs(10), || applied(&hq) >= 190.0));
    // Keep five instances as they are now (stale after round 2).
    let mut stale: Vec<(String, Vec<u8>)> = Vec::new();
    hq = damage(hq, hq_dir.path(), &listen, |tree| {
        for i in 0..5 {
            let key = format!("m{i:03}");
            let bytes = tree.get(key.as_bytes()).expect("read").expect("synced");
            stale.push((key, bytes.to_vec()));
        }
    });

    // Round 2: every machine changes (temp 2).
    push(&edge, &machines(200, 2.0));
    wait_drained(&edge);
    assert!(eventually(Duration::from_secs(10), || applied(&hq) >= 190.0));
    assert_eq!(hq_digest(&hq).1, 190);

    // Damage: five records roll back to round 1, five disappear.
    let hq = damage(hq, hq_dir.path(), &listen, |tree| {
        for (key, bytes) in &stale {
            tree.insert(key.as_bytes(), bytes.clone()).expect("write");
        }
        for i in 5..10 {
            tree.remove(format!("m{i:03}").as_bytes()).expect("remove");
        }
    });
    // Rebuilt at start: five keys fewer.
    assert_eq!(hq_digest(&hq).1, 185);

    // The edge (stopped) compares and enqueues only the ten.
    stop_cleanly(edge);
    let dry = verify(edge_dir.path(), &["--dry-run"]);
    assert_eq!(dry["differing"], 10, "{dry}");
    assert_eq!(dry["resent"], 0, "{dry}");
    let mut sample: Vec<String> = dry["products"][0]["sample"]
        .as_array()
        .expect("sample")
        .iter()
        .map(|k| k.as_str().unwrap_or_default().to_string())
        .collect();
    sample.sort();
    let expected: Vec<String> = (0..10).map(|i| format!("m{i:03}")).collect();
    assert_eq!(sample, expected, "{dry}");
    let mismatched = dry["mismatched_buckets"].as_u64().expect("buckets");
    assert!((1..=10).contains(&mismatched), "{dry}");

    let report = verify(edge_dir.path(), &[]);
    assert_eq!(report["differing"], 10, "{report}");
    assert_eq!(report["resent"], 10, "{report}");
    assert_eq!(report["tombstones"], 0, "{report}");
    // Enqueued and not yet sent: a second look sees them in flight.
    let again = verify(edge_dir.path(), &["--dry-run"]);
    assert_eq!(again["in_flight"], 10, "{again}");

    // The next start sends exactly those ten.
    let edge = start_node(edge_dir.path(), &edge_listen);
    wait_drained(&edge);
    assert!(eventually(Duration::from_secs(10), || applied(&hq) >= 10.0));
    assert_eq!(
        metric(
            &edge,
            "meshlet_sync_sent_records_total{upstream=\"central\"}"
        ),
        Some(10.0),
        "only the differing entities were sent again"
    );
    assert_eq!(applied(&hq), 10.0);
    assert_eq!(hq_digest(&hq).1, 190);
    stop_cleanly(edge);
    let clean = verify(edge_dir.path(), &["--dry-run"]);
    assert_eq!(clean["differing"], 0, "{clean}");
    assert_eq!(clean["mismatched_buckets"], 0, "{clean}");

    stop_cleanly(hq);
    let store = open_store(&hq_dir.path().join("data"));
    for i in 0..10 {
        let instance = store
            .get("machine", &format!("m{i:03}"))
            .expect("read")
            .expect("repaired");
        assert_eq!(
            instance.fields.get("temp"),
            Some(&Value::Float(2.0)),
            "m{i:03}"
        );
    }
}

#[test]
fn periodic_verify_repairs_a_restarted_aggregator_and_reports_metrics() {
    let listen = format!("127.0.0.1:{}", free_port());
    let hq_dir = workdir(
        &without_sync(MACHINE_EDGE),
        "node_id = \"hq\"\n[aggregator]\nenabled = true\ndigest_rebuild_on_start = true\n",
    );
    let hq = start_node(hq_dir.path(), &listen);
    let edge_dir = workdir(
        MACHINE_EDGE,
        &format!("node_id = \"edge-1\"\n[sync]\nretry_min = \"50ms\"\nretry_max = \"300ms\"\nverify_interval = \"500ms\"\n[upstreams.central]\nurl = \"http://{listen}\"\n"),
    );
    let edge = start_node(edge_dir.path(), &format!("127.0.0.1:{}", free_port()));
    push(&edge, &machines(50, 1.0));
    wait_drained(&edge);
    let runs = |result: &str| {
        metric(
            &edge,
            &format!("meshlet_sync_verify_runs_total{{upstream=\"central\",result=\"{result}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(
        eventually(Duration::from_secs(10), || runs("ok") >= 1.0),
        "a clean comparison"
    );
    assert!(metric(
        &edge,
        "meshlet_sync_verify_last_run_timestamp_seconds{upstream=\"central\"}"
    )
    .is_some());

    let hq = damage(hq, hq_dir.path(), &listen, |tree| {
        for key in ["m001", "m002", "m003"] {
            tree.remove(key.as_bytes()).expect("remove");
        }
    });
    assert_eq!(hq_digest(&hq).1, 45);
    assert!(
        eventually(Duration::from_secs(15), || metric(
            &edge,
            "meshlet_sync_verify_repaired_total{upstream=\"central\"}"
        ) == Some(3.0)
            && hq_digest(&hq).1 == 48),
        "the periodic check repaired the three: {:?}",
        metric(
            &edge,
            "meshlet_sync_verify_repaired_total{upstream=\"central\"}"
        )
    );
    assert!(
        eventually(Duration::from_secs(10), || metric(
            &edge,
            "meshlet_sync_verify_mismatched_buckets{upstream=\"central\"}"
        ) == Some(0.0)),
        "agreement again after the repair"
    );
    assert!(runs("repaired") >= 1.0);
    assert_eq!(
        metric(
            &edge,
            "meshlet_sync_verify_repaired_total{upstream=\"central\"}"
        ),
        Some(3.0),
        "nothing more was sent again"
    );
    stop_cleanly(edge);
    stop_cleanly(hq);
}

#[test]
fn verify_needs_an_http_api_for_a_nats_upstream() {
    let dir = workdir(
        MACHINE_EDGE,
        "node_id = \"edge-1\"\n[upstreams.central]\nurl = \"nats://127.0.0.1:4222\"\n",
    );
    let out = run(
        dir.path(),
        &["--config", "meshlet.toml", "sync", "verify", "central"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("verify_url"), "{}", stderr(&out));
    let out = run(
        dir.path(),
        &["--config", "meshlet.toml", "sync", "verify", "nowhere"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no upstream named `nowhere`"),
        "{}",
        stderr(&out)
    );
}

// ---- property test: random operations on both sides --------------------

const PLAIN: &str = r#"
product: machine
version: 1
domain: test
owner: test@example.com
key: machine_id
fields:
  machine_id: { type: string, required: true }
  temp:       { type: int }
sources:
  - http: {}
sync:
  - to: central
"#;

#[derive(Clone, Debug)]
enum Op {
    /// A change at the edge, delivered to the aggregator or not.
    Edge {
        key: u8,
        temp: i64,
        delivered: bool,
    },
    /// An erasure at the edge, its tombstone delivered or not.
    EdgeErase {
        key: u8,
        delivered: bool,
    },
    /// The aggregator alone: a different value, a loss, a stray key.
    HqChange {
        key: u8,
        temp: i64,
    },
    HqLoss {
        key: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..40, 0i64..5, prop::bool::weighted(0.85))
            .prop_map(|(key, temp, delivered)| Op::Edge { key, temp, delivered }),
        1 => (0u8..40, prop::bool::ANY).prop_map(|(key, delivered)| Op::EdgeErase { key, delivered }),
        1 => (0u8..50, 0i64..5).prop_map(|(key, temp)| Op::HqChange { key, temp }),
        1 => (0u8..40).prop_map(|key| Op::HqLoss { key }),
    ]
}

fn record(key: u8, temp: i64, at: i64, origin: &Origin) -> Record {
    let mut fields = Fields::new();
    fields.insert("machine_id".into(), Value::String(format!("k{key:02}")));
    fields.insert("temp".into(), Value::Int(temp));
    Record {
        entity: format!("k{key:02}"),
        fields,
        event_time: Timestamp(at),
        origin: origin.clone(),
    }
}

/// The keys a digest comparison finds, as `meshlet sync verify` narrows
/// them: differing buckets, then their leaves.
fn found(edge: &Store, hq: &Store) -> BTreeSet<String> {
    let here_scope = DigestScope::Sent("central");
    let there_scope = DigestScope::Held("edge-1");
    let buckets = differing_buckets(
        &edge
            .digest_buckets(here_scope, "machine")
            .expect("edge digest"),
        &hq.digest_buckets(there_scope, "machine")
            .expect("hq digest"),
    );
    let mut keys = BTreeSet::new();
    for b in buckets {
        let here = edge
            .digest_leaves(here_scope, "machine", b)
            .expect("leaves");
        let there = hq.digest_leaves(there_scope, "machine", b).expect("leaves");
        let (changed, only_there) = differing_leaves(&here, &there);
        keys.extend(changed.into_iter().map(|l| l.entity.clone()));
        keys.extend(only_there);
    }
    keys
}

/// Ground truth: the keys whose state (fields and event time) differs
/// between the edge and what the aggregator holds of it.
fn truth(edge: &Store, hq: &Store) -> BTreeSet<String> {
    let all = |s: &Store| -> BTreeMap<String, (Fields, Timestamp, String)> {
        s.scan("machine", None, 10_000)
            .expect("scan")
            .instances
            .into_iter()
            .map(|i| {
                (
                    i.entity.clone(),
                    (i.fields, i.event_time, i.last_origin.source),
                )
            })
            .collect()
    };
    let here = all(edge);
    let there: BTreeMap<_, _> = all(hq)
        .into_iter()
        .filter(|(_, (_, _, origin))| origin == "sync:edge-1")
        .collect();
    let keys: BTreeSet<&String> = here.keys().chain(there.keys()).collect();
    keys.into_iter()
        .filter(|k| here.get(*k).map(|(f, t, _)| (f, t)) != there.get(*k).map(|(f, t, _)| (f, t)))
        .cloned()
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn digests_find_exactly_the_differing_keys(ops in prop::collection::vec(op(), 1..80)) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("machine.yaml"), PLAIN).expect("write");
        let ctx = meshlet::product::LoadContext::with_upstreams(BTreeSet::from(["central".to_string()]));
        let products = Arc::new(meshlet::product::load_path(dir.path(), &ctx).expect("loads"));
        let edge = Store::open(StoreConfig::new(dir.path().join("edge"))).expect("edge store");
        meshlet::sync::install_planner(&edge, &products).expect("planner");
        meshlet::sync::prepare_sent_digests(&edge, &products).expect("sent digests");
        let hq = Store::open(StoreConfig::new(dir.path().join("hq"))).expect("hq store");
        meshlet::sync::prepare_held_digests(&hq, &products, true).expect("held digests");

        let local = Origin::new("http");
        let synced = Origin::new("sync:edge-1");
        let mut clock = 1_000_000i64;
        for op in &ops {
            clock += 1_000;
            match *op {
                Op::Edge { key, temp, delivered } => {
                    let changes = edge.upsert("machine", &[record(key, temp, clock, &local)]).expect("edge write");
                    if delivered {
                        let state = &changes[0].instance;
                        let sent = Record {
                            entity: state.entity.clone(),
                            fields: state.fields.clone(),
                            event_time: state.event_time,
                            origin: synced.clone(),
                        };
                        hq.upsert("machine", &[sent]).expect("hq write");
                    }
                }
                Op::EdgeErase { key, delivered } => {
                    let entity = format!("k{key:02}");
                    edge.erase("machine", &entity, &local).expect("edge erase");
                    if delivered {
                        hq.erase("machine", &entity, &synced).expect("hq erase");
                    }
                }
                Op::HqChange { key, temp } => {
                    hq.upsert("machine", &[record(key, temp + 10, clock, &synced)]).expect("hq write");
                }
                Op::HqLoss { key } => {
                    hq.erase("machine", &format!("k{key:02}"), &local).expect("hq erase");
                }
            }
        }
        prop_assert_eq!(found(&edge, &hq), truth(&edge, &hq));
        // What was kept incrementally is what a rebuild computes.
        let names = vec!["machine".to_string()];
        prop_assert_eq!(edge.rebuild_sent_digests(&names).expect("rebuild"), 0);
        prop_assert_eq!(hq.rebuild_held_digests(&names).expect("rebuild"), 0);
    }
}

/// A field cleared with `null` at the edge is cleared at the aggregator:
/// a `latest` state names the fields it lacks as nulls, so the
/// aggregator's merge drops them, and the held digest equals the sent one
/// (before, the aggregator kept the old value and verify found the entity
/// different at every run, resending it forever).
#[test]
fn a_field_cleared_with_null_at_the_edge_is_cleared_at_the_aggregator() {
    let listen = format!("127.0.0.1:{}", free_port());
    let hq_dir = workdir(
        &without_sync(MACHINE_EDGE),
        "node_id = \"hq\"\n[aggregator]\nenabled = true\n",
    );
    let hq = start_node(hq_dir.path(), &listen);
    let edge_dir = workdir(
        MACHINE_EDGE,
        &format!("node_id = \"edge-1\"\n[sync]\nretry_min = \"50ms\"\nretry_max = \"300ms\"\n[upstreams.central]\nurl = \"http://{listen}\"\n"),
    );
    let edge = start_node(edge_dir.path(), &format!("127.0.0.1:{}", free_port()));
    push(
        &edge,
        "{\"machine_id\":\"m001\",\"site\":\"berlin\",\"temp\":1.5,\"operator\":\"a@example.com\"}\n",
    );
    wait_drained(&edge);
    assert!(eventually(Duration::from_secs(10), || applied(&hq) >= 1.0));
    push(
        &edge,
        "{\"machine_id\":\"m001\",\"site\":\"berlin\",\"temp\":null}\n",
    );
    wait_drained(&edge);
    assert!(eventually(Duration::from_secs(10), || applied(&hq) >= 2.0));
    stop_cleanly(edge);
    let report = verify(edge_dir.path(), &["--dry-run"]);
    assert_eq!(report["differing"], 0, "{report}");
    assert_eq!(report["mismatched_buckets"], 0, "{report}");
    stop_cleanly(hq);
    let store = open_store(&hq_dir.path().join("data"));
    let instance = store.get("machine", "m001").expect("read").expect("synced");
    assert_eq!(instance.fields.get("temp"), None, "{:?}", instance.fields);
    assert_eq!(
        instance.fields.get("site"),
        Some(&Value::String("berlin".into()))
    );
    assert!(
        instance.fields.contains_key("operator"),
        "a field the record did not carry stays: {:?}",
        instance.fields
    );
}
