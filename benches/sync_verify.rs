//! Cost of verifying sync over N entities (default 100,000): the digest
//! comparison `meshlet sync verify` does (256 buckets per side, then the
//! leaves of the buckets that differ) against comparing everything (a full
//! scan of both stores' instances, as without digests), in the same run,
//! on two real sled stores (an edge with the sync planner, an aggregator
//! holding the edge's records) that differ in 10 entities. Also what an
//! aggregator's start-up rebuild of its digests costs (a full scan).
//! No network: both sides are in-process, so the baseline is a lower
//! bound (a real full compare also ships every record).
//!
//! ```sh
//! cargo bench --bench sync_verify              # N = 100000
//! SYNC_VERIFY_N=20000 cargo bench --bench sync_verify
//! ```
//!
//! Under `cargo test --all-targets` it runs once with N = 2,000 as a
//! smoke test.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshlet::record::{Fields, Origin, Record, Timestamp, Value};
use meshlet::store::{DigestScope, Store, StoreConfig};
use meshlet::sync::digest::{differing_buckets, differing_leaves};

const PRODUCT: &str = r#"
product: machine
version: 1
domain: test
owner: test@example.com
key: machine_id
fields:
  machine_id: { type: string, required: true }
  site:       { type: string }
  temp:       { type: float }
sources:
  - http: {}
sync:
  - to: central
"#;

fn record(i: usize, temp: f64, origin: &Origin) -> Record {
    let mut fields = Fields::new();
    fields.insert("machine_id".into(), Value::String(format!("m{i:06}")));
    fields.insert("site".into(), Value::String(format!("site-{}", i % 50)));
    fields.insert("temp".into(), Value::Float(temp));
    Record {
        entity: format!("m{i:06}"),
        fields,
        event_time: Timestamp(1_700_000_000_000_000 + i as i64),
        origin: origin.clone(),
    }
}

/// The digest comparison: the differing keys.
fn digest_compare(edge: &Store, hq: &Store) -> BTreeSet<String> {
    let (here, there) = (DigestScope::Sent("central"), DigestScope::Held("edge-1"));
    let buckets = differing_buckets(
        &edge.digest_buckets(here, "machine").expect("edge digest"),
        &hq.digest_buckets(there, "machine").expect("hq digest"),
    );
    let mut keys = BTreeSet::new();
    for b in buckets {
        let mine = edge.digest_leaves(here, "machine", b).expect("leaves");
        let theirs = hq.digest_leaves(there, "machine", b).expect("leaves");
        let (changed, only_there) = differing_leaves(&mine, &theirs);
        keys.extend(changed.into_iter().map(|l| l.entity.clone()));
        keys.extend(only_there);
    }
    keys
}

/// The baseline: every instance of both stores read and compared.
fn full_compare(edge: &Store, hq: &Store) -> BTreeSet<String> {
    let all = |s: &Store| {
        let mut out: BTreeMap<String, (Fields, Timestamp)> = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let page = s.scan("machine", after.as_deref(), 1024).expect("scan");
            for i in page.instances {
                out.insert(i.entity, (i.fields, i.event_time));
            }
            match page.next_after {
                Some(next) => after = Some(next),
                None => return out,
            }
        }
    };
    let (here, there) = (all(edge), all(hq));
    let keys: BTreeSet<&String> = here.keys().chain(there.keys()).collect();
    keys.into_iter()
        .filter(|k| here.get(*k) != there.get(*k))
        .cloned()
        .collect()
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let start = Instant::now();
        last = Some(f());
        times.push(start.elapsed());
    }
    (median(times), last.expect("one run"))
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let n: usize = if benching {
        std::env::var("SYNC_VERIFY_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000)
    } else {
        2_000
    };
    let runs = if benching { 5 } else { 1 };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("machine.yaml"), PRODUCT).expect("write");
    let ctx =
        meshlet::product::LoadContext::with_upstreams(BTreeSet::from(["central".to_string()]));
    let products = Arc::new(meshlet::product::load_path(dir.path(), &ctx).expect("loads"));
    let edge = Store::open(StoreConfig::new(dir.path().join("edge"))).expect("edge store");
    meshlet::sync::install_planner(&edge, &products).expect("planner");
    meshlet::sync::prepare_sent_digests(&edge, &products).expect("sent digests");
    let hq = Store::open(StoreConfig::new(dir.path().join("hq"))).expect("hq store");
    meshlet::sync::prepare_held_digests(&hq, &products, true).expect("held digests");

    let (local, synced) = (Origin::new("http"), Origin::new("sync:edge-1"));
    let setup = Instant::now();
    for start in (0..n).step_by(1000) {
        let end = (start + 1000).min(n);
        let edge_batch: Vec<Record> = (start..end).map(|i| record(i, 20.0, &local)).collect();
        let hq_batch: Vec<Record> = (start..end).map(|i| record(i, 20.0, &synced)).collect();
        edge.upsert("machine", &edge_batch).expect("edge write");
        hq.upsert("machine", &hq_batch).expect("hq write");
    }
    // Ten differ: five lost on the aggregator, five stale there.
    for i in 0..5 {
        hq.erase("machine", &format!("m{:06}", i * (n / 10)), &local)
            .expect("erase");
        edge.upsert("machine", &[record(i * (n / 10) + 1, 21.0, &local)])
            .expect("change");
    }
    let setup = setup.elapsed();

    let (digest, found) = time(runs, || digest_compare(&edge, &hq));
    assert_eq!(found.len(), 10, "the digest finds the ten: {found:?}");
    let (full, found_full) = time(runs, || full_compare(&edge, &hq));
    assert_eq!(found, found_full, "both find the same keys");
    let names = vec!["machine".to_string()];
    let (rebuild, changed) = time(runs, || hq.rebuild_held_digests(&names).expect("rebuild"));
    assert_eq!(changed, 0, "the kept digest is the rebuilt one");

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "sync_verify: {n} entities per side, 10 differing (setup {:.1}s)",
        setup.as_secs_f64()
    );
    println!(
        "  digest compare (buckets + differing leaves): {:>9.3} ms",
        ms(digest)
    );
    println!(
        "  full scan compare (baseline):                {:>9.3} ms",
        ms(full)
    );
    println!(
        "  held digest rebuild (aggregator start):      {:>9.3} ms",
        ms(rebuild)
    );
    println!(
        "  digest / full = {:.4}  (full is {:.0}x the digest)",
        digest.as_secs_f64() / full.as_secs_f64(),
        full.as_secs_f64() / digest.as_secs_f64()
    );
}
