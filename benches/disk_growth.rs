//! Whether the data dir stays bounded under steady ingest.
//!
//! A gateway writes the same devices for days, and every record rewrites
//! its entity's instance (with the open history tail inside it, store
//! format 3), so sled's log fills with superseded values that only its
//! segment cleaner reclaims. With retention keeping a fixed number of
//! history events per entity, what is held stops growing once every
//! entity has that many; the data dir must stop growing too, or an SD
//! card fills over days. This bench writes that workload through the
//! library: `ENTITIES` entities, one record each per round (one
//! transaction per round, as the node's writer groups them), a retention
//! sweep over all entities every 10 rounds (the node's sweeper runs on a
//! timer), and prints the data dir's size (sled's own count and the
//! allocated blocks) at 20 points.
//!
//! `cargo bench --bench disk_growth` runs the full size (1,000 entities,
//! keep 200, 3,000 rounds: 3 million records, 15× what is held); under
//! `cargo test` a small size proves the harness works.

use std::path::Path;
use std::time::Instant;

use meshlet::record::{Fields, Origin, Record, Timestamp, Value};
use meshlet::store::{RetentionSpec, Store, StoreConfig};

const PRODUCT: &str = "meter";
const SITES: [&str; 3] = ["berlin", "lyon", "brno"];

struct Size {
    entities: usize,
    keep: u64,
    rounds: usize,
}

fn record(device: usize, round: usize) -> Record {
    let entity = format!("dev{device:05}");
    let mut fields = Fields::new();
    fields.insert("device".into(), Value::String(entity.clone()));
    fields.insert("site".into(), Value::String(SITES[device % 3].into()));
    fields.insert("seq".into(), Value::Int(round as i64));
    fields.insert(
        "temp".into(),
        Value::Float(20.0 + ((device * 7 + round) % 150) as f64 / 10.0),
    );
    fields.insert("status".into(), Value::String("ok".into()));
    Record {
        entity,
        fields,
        event_time: Timestamp(1_700_000_000_000_000 + round as i64 * 1_000_000),
        origin: Origin::new("mqtt:meter/telemetry"),
    }
}

/// Bytes the files under `dir` occupy on disk (allocated blocks, as `du`).
fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let size = if full {
        Size {
            entities: 1_000,
            keep: 200,
            rounds: 3_000,
        }
    } else {
        Size {
            entities: 50,
            keep: 20,
            rounds: 100,
        }
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(StoreConfig::new(dir.path().join("store"))).expect("store opens");
    let policy = RetentionSpec {
        history_keep: Some(size.keep),
        ..RetentionSpec::default()
    };
    let raw_per_record = serde_json::to_vec(&serde_json::json!({
        "device": "dev00000", "site": "berlin", "seq": 1234, "temp": 21.5,
        "status": "ok", "ts": "2026-11-27T07:00:00Z"
    }))
    .expect("json")
    .len() as u64;

    println!(
        "disk growth: {} entities, history keep {}, {} rounds ({} records), retention swept every 10 rounds",
        size.entities,
        size.keep,
        size.rounds,
        size.entities * size.rounds
    );
    println!("| records written | events held | sled size MiB | allocated MiB | allocated / raw JSON of the held events | records/s so far |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let started = Instant::now();
    // A multiple of the sweep interval, so every report follows a sweep.
    let report_every = (size.rounds / 20).max(10) / 10 * 10;
    for round in 1..=size.rounds {
        let batch: Vec<Record> = (0..size.entities).map(|d| record(d, round)).collect();
        store.upsert(PRODUCT, &batch).expect("upsert");
        if round % 10 == 0 {
            let mut cursor: Option<String> = None;
            loop {
                let report = store
                    .sweep_retention(
                        PRODUCT,
                        &policy,
                        Timestamp::now(),
                        cursor.as_deref(),
                        size.entities,
                    )
                    .expect("sweep");
                assert!(report.errors.is_empty(), "{:?}", report.errors);
                match report.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
        }
        if round % report_every == 0 {
            store.durable_blocking().expect("flush");
            let written = round * size.entities;
            // Reports fall on sweep rounds (every 10th), so each entity
            // holds exactly `keep` events once it has written that many.
            let held = (round as u64).min(size.keep) * size.entities as u64;
            let sled_bytes = store.size_on_disk().expect("size");
            let allocated = allocated_bytes(dir.path());
            println!(
                "| {written} | {held} | {:.1} | {:.1} | {:.2} | {:.0} |",
                sled_bytes as f64 / (1 << 20) as f64,
                allocated as f64 / (1 << 20) as f64,
                allocated as f64 / (held * raw_per_record) as f64,
                written as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let history = store
        .history(PRODUCT, "dev00000", &Default::default())
        .expect("history reads");
    assert!(
        history.len() as u64 <= size.keep + 10,
        "retention keeps at most keep (+ the events since the last sweep): {}",
        history.len()
    );
}
