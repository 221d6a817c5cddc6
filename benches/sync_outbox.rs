//! The outbox's drain rate against its depth: an edge back from days
//! offline must send its backlog at a steady rate, not one that falls as
//! the backlog grows. Two real sled stores with the sync planner, one
//! holding `SYNC_OUTBOX_SMALL` (default 2,000) pending entries, the other
//! `SYNC_OUTBOX_DEEP` (default 50,000), each closed and opened again (an
//! edge restarting with its backlog); then what one sender does per
//! envelope — read 100 entries from the head, acknowledge them — timed
//! over the first `SYNC_OUTBOX_DRAIN` (default 2,000) entries of each, in
//! the same run. The ratio deep/small should be ≈ 1. With
//! `SYNC_OUTBOX_REOPEN=0` the stores are not reopened: the backlog's tail
//! is still in the hot overlay, as after a restart that replayed it.
//!
//! ```sh
//! cargo bench --profile dev --bench sync_outbox
//! ```
//!
//! Under `cargo test --all-targets` it runs once small (500 / 2,000) as a
//! smoke test that drains both completely.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshlet::record::{Fields, Origin, Record, Timestamp, Value};
use meshlet::store::{Store, StoreConfig};

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
    mode: history
"#;

const ENVELOPE: usize = 100;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Reading `i` of machine `i % 1000` (history mode: every reading is owed).
fn record(i: usize, origin: &Origin) -> Record {
    let machine = format!("m{:04}", i % 1000);
    let mut fields = Fields::new();
    fields.insert("machine_id".into(), Value::String(machine.clone()));
    fields.insert("site".into(), Value::String(format!("site-{}", i % 50)));
    fields.insert("temp".into(), Value::Float(20.0 + i as f64 / 100.0));
    Record {
        entity: machine,
        fields,
        event_time: Timestamp(1_700_000_000_000_000 + i as i64),
        origin: origin.clone(),
    }
}

/// A store with `depth` pending entries for `central`, reopened.
fn filled(dir: &Path, products: &Arc<meshlet::product::ProductSet>, depth: usize) -> Store {
    let path = dir.join(format!("edge-{depth}"));
    {
        let store = Store::open(StoreConfig::new(&path)).expect("store opens");
        meshlet::sync::install_planner(&store, products).expect("planner");
        let origin = Origin::new("http");
        for start in (0..depth).step_by(1000) {
            let batch: Vec<Record> = (start..(start + 1000).min(depth))
                .map(|i| record(i, &origin))
                .collect();
            store.upsert("machine", &batch).expect("write");
        }
        if std::env::var("SYNC_OUTBOX_REOPEN").as_deref() == Ok("0") {
            return store;
        }
    }
    let store = Store::open(StoreConfig::new(&path)).expect("store reopens");
    meshlet::sync::install_planner(&store, products).expect("planner");
    let pending = store.outbox_stats("central").expect("stats").pending;
    assert_eq!(pending as usize, depth, "every record waits in the outbox");
    store
}

/// Reads and acknowledges envelopes of 100 until `records` are gone;
/// checks they come in sequence order. Returns the time taken.
fn drain(store: &Store, records: usize) -> Duration {
    let start = Instant::now();
    let mut done = 0;
    let mut last_seq = 0;
    while done < records {
        let batch = store
            .outbox_read("central", ENVELOPE, Timestamp::now())
            .expect("read");
        assert!(!batch.is_empty(), "entries left after {done}");
        for e in &batch {
            assert!(e.entry.seq > last_seq, "sequence order");
            last_seq = e.entry.seq;
        }
        let _ = store.outbox_stats("central").expect("stats");
        let keys: Vec<Vec<u8>> = batch.into_iter().map(|e| e.key).collect();
        done += keys.len();
        store.outbox_ack(&keys).expect("ack");
    }
    start.elapsed()
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let (small, deep, measured) = if benching {
        (
            setting("SYNC_OUTBOX_SMALL", 2_000),
            setting("SYNC_OUTBOX_DEEP", 50_000),
            setting("SYNC_OUTBOX_DRAIN", 2_000),
        )
    } else {
        (500, 2_000, 500)
    };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("machine.yaml"), PRODUCT).expect("write");
    let ctx =
        meshlet::product::LoadContext::with_upstreams(BTreeSet::from(["central".to_string()]));
    let products = Arc::new(meshlet::product::load_path(dir.path(), &ctx).expect("loads"));
    let setup = Instant::now();
    let small_store = filled(dir.path(), &products, small);
    let deep_store = filled(dir.path(), &products, deep);
    let setup = setup.elapsed();
    let t_small = drain(&small_store, measured.min(small));
    let t_deep = drain(&deep_store, measured.min(deep));
    let rate = |d: Duration| (measured as f64 / ENVELOPE as f64) / d.as_secs_f64();
    println!(
        "sync_outbox: envelopes of {ENVELOPE}, first {measured} entries drained (setup {:.1}s)",
        setup.as_secs_f64()
    );
    println!("  {small:>6} queued: {:>9.1} envelopes/s", rate(t_small));
    println!("  {deep:>6} queued: {:>9.1} envelopes/s", rate(t_deep));
    println!("  deep / small rate = {:.2}", rate(t_deep) / rate(t_small));
    if !benching {
        // The smoke run drains both completely.
        drain(&small_store, small - measured);
        drain(&deep_store, deep - measured);
        assert_eq!(
            small_store.outbox_stats("central").expect("stats").pending,
            0
        );
        assert_eq!(
            deep_store.outbox_stats("central").expect("stats").pending,
            0
        );
    }
}
