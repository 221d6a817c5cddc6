//! Start-up time and memory of the release node over a large store.
//!
//! - start→ready: spawn of the node to the first `/readyz` 200 (polled
//!   every millisecond), median of 3 starts, over a store with 100,000
//!   entities and 10 million history events (100 per entity); the node
//!   is stopped with SIGTERM between starts, as systemd would;
//! - idle RSS (VmRSS after ready and a settle) with an empty store and
//!   with that store;
//! - RSS with 1,000,000 entities after the node served a few queries
//!   (lookups, first pages), and after a `totalCount` that walks them all.
//!
//! The stores are written with the library (`Store::upsert`, 1,000
//! records a batch), not through MQTT, which would take far too long, and
//! kept under `target/bench-data/` for the next run: a store is reused
//! when its directory (size, block size, store format) has a `complete`
//! marker, and rebuilt otherwise, so a new store layout is measured as
//! the node now writes it.
//! Generation time is printed when a store is built.
//!
//! `cargo bench --bench startup` runs the full size; under `cargo test`
//! (no `--bench` argument) a small store in a temp dir proves it works.

mod harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::Node;
use meshlet::record::{Fields, Origin, Record, Timestamp, Value};
use meshlet::store::{Store, StoreConfig};

const PRODUCT: &str = r#"
product: meter
version: 1
domain: bench
owner: bench@example.com
key: device
fields:
  device: { type: string, required: true }
  site:   { type: string }
  seq:    { type: int }
  temp:   { type: float, min: -40, max: 150 }
sources:
  - http: { format: json }
history:
  keep: 1000
"#;

const SITES: [&str; 3] = ["berlin", "lyon", "brno"];
const BATCH: usize = 1_000;

/// A store to build: `entities` × `events_per_entity` records.
#[derive(Clone, Copy)]
struct Shape {
    entities: usize,
    events_per_entity: usize,
}

impl Shape {
    /// The cache key of the built store: the shape and the store layout
    /// it was written with (blocks of 16 events since the two-level
    /// history; a store cached before is rebuilt, not reused).
    fn name(self) -> String {
        format!(
            "meter-{}x{}-blocks{}-format{}",
            self.entities,
            self.events_per_entity,
            StoreConfig::DEFAULT_HISTORY_BLOCK_EVENTS,
            meshlet::store::STORE_FORMAT_VERSION
        )
    }
}

fn record(device: usize, seq: usize) -> Record {
    let entity = format!("dev{device:07}");
    let mut fields = Fields::new();
    fields.insert("device".into(), Value::String(entity.clone()));
    fields.insert("site".into(), Value::String(SITES[device % 3].into()));
    fields.insert("seq".into(), Value::Int(seq as i64));
    fields.insert(
        "temp".into(),
        Value::Float(20.0 + ((device + seq) % 100) as f64 / 10.0),
    );
    Record {
        entity,
        fields,
        event_time: Timestamp(1_700_000_000_000_000 + (seq * 1_000_000) as i64),
        origin: Origin::new("bench"),
    }
}

/// The data dir holding a store of `shape` under `root`, built unless a
/// complete one is there. Each round updates every entity once, so
/// history grows evenly.
fn data_dir(root: &Path, shape: Shape) -> PathBuf {
    let dir = root.join(shape.name());
    let marker = dir.join("complete");
    if marker.exists() {
        return dir.join("data");
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).expect("data dir");
    let store =
        Store::open(StoreConfig::new(dir.join("data/store"))).expect("the bench store opens");
    let started = Instant::now();
    let mut last_report = Instant::now();
    let total = shape.entities * shape.events_per_entity;
    let mut done = 0usize;
    for seq in 0..shape.events_per_entity {
        for first in (0..shape.entities).step_by(BATCH) {
            let batch: Vec<Record> = (first..(first + BATCH).min(shape.entities))
                .map(|device| record(device, seq))
                .collect();
            store.upsert("meter", &batch).expect("upsert");
            done += batch.len();
            if last_report.elapsed() > Duration::from_secs(30) {
                last_report = Instant::now();
                eprintln!(
                    "{}: {done}/{total} records, {:.0}/s",
                    shape.name(),
                    done as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
    }
    store.durable_blocking().expect("flush");
    let bytes = store.size_on_disk().unwrap_or(0);
    drop(store);
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "built {}: {total} records in {seconds:.0} s ({:.0} records/s), {:.0} MiB on disk",
        shape.name(),
        total as f64 / seconds,
        bytes as f64 / (1 << 20) as f64
    );
    std::fs::write(&marker, format!("{total} records\n")).expect("marker");
    dir.join("data")
}

/// Stops the node with SIGTERM and waits for it (the store flushed).
fn stop(mut node: Node) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(node.pid as i32, libc::SIGTERM);
    }
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if let Ok(Some(_)) = node.child.0.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("node did not stop in 30 s; killing it");
}

fn start(data: &Path) -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = harness::start_node(
        dir.path(),
        data,
        &[("meter.yaml", PRODUCT)],
        "[mqtt.embedded]\nenabled = false\n",
    );
    (dir, node)
}

/// Idle RSS in MiB: after ready and `settle`.
fn idle_rss(node: &Node, settle: Duration) -> f64 {
    std::thread::sleep(settle);
    harness::rss_mib(node.pid)
}

/// The node's default `[store] cache_capacity_mb` (16), in bytes.
const NODE_CACHE_BYTES: u64 = 16 << 20;

/// Milliseconds `open` takes (closing not counted); the database is
/// closed, and its lock given back, before the next measurement.
fn open_ms<T>(open: impl FnOnce() -> T) -> f64 {
    let started = Instant::now();
    let opened = open();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    drop(opened);
    // sled gives its file lock back from a thread `drop` does not join.
    std::thread::sleep(Duration::from_millis(200));
    ms
}

fn graphql(node: &Node, query: &str) -> String {
    let body = serde_json::to_vec(&serde_json::json!({ "query": query })).expect("json");
    let (status, text) = harness::http_request(&node.http, "POST", "/graphql", &body);
    assert_eq!(status, 200, "{text}");
    assert!(!text.contains("\"errors\""), "{text}");
    text
}

/// A few queries a dashboard would send: lookups and first pages.
fn a_few_queries(node: &Node, entities: usize) {
    for i in 0..100 {
        let device = (i * 7919) % entities;
        let text = graphql(
            node,
            &format!("{{ meter(device: \"dev{device:07}\") {{ device site seq temp }} }}"),
        );
        assert!(text.contains(&format!("dev{device:07}")), "{text}");
    }
    for site in SITES {
        graphql(
            node,
            &format!("{{ meterConnection(first: 100, filter: {{site: {{eq: \"{site}\"}}}}) {{ edges {{ node {{ device temp }} }} }} }}"),
        );
    }
    graphql(node, "{ products { name } }");
}

/// History events per entity of the start-up store: 100 (10 million in
/// all) unless `STARTUP_EVENTS_PER_ENTITY` says otherwise, for a quicker
/// first figure on a busy machine (the table names the size it used).
fn events_per_entity() -> usize {
    std::env::var("STARTUP_EVENTS_PER_ENTITY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let temp = tempfile::tempdir().expect("tempdir");
    let (root, history, million, settle) = if full {
        (
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data"),
            Shape {
                entities: 100_000,
                events_per_entity: events_per_entity(),
            },
            Shape {
                entities: 1_000_000,
                events_per_entity: 1,
            },
            Duration::from_secs(3),
        )
    } else {
        (
            temp.path().to_path_buf(),
            Shape {
                entities: 1_000,
                events_per_entity: 10,
            },
            Shape {
                entities: 2_000,
                events_per_entity: 1,
            },
            Duration::from_millis(200),
        )
    };

    // An empty store: the floor.
    let empty = temp.path().join("empty");
    let (_dir, node) = start(&empty);
    let empty_ready = node.start_to_ready;
    let empty_rss = idle_rss(&node, settle);
    stop(node);

    let data = data_dir(&root, history);
    let mut ready = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..3 {
        let (_dir, node) = start(&data);
        ready.push(node.start_to_ready.as_secs_f64() * 1000.0);
        rss.push(idle_rss(&node, settle));
        stop(node);
    }
    // The floor under start→ready, in the same run on the same (now
    // cached) files: sled's own open with the node's cache setting, and
    // the store's open (sled, its trees, the outbox recount).
    let (mut sled_open, mut store_open) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        sled_open.push(open_ms(|| {
            sled::Config::new()
                .path(data.join("store"))
                .cache_capacity(NODE_CACHE_BYTES)
                .open()
                .expect("sled opens the bench store")
        }));
        store_open.push(open_ms(|| {
            let mut config = StoreConfig::new(data.join("store"));
            config.cache_capacity_bytes = NODE_CACHE_BYTES;
            Store::open(config).expect("the bench store opens")
        }));
    }

    let data = data_dir(&root, million);
    let (mut million_ready, mut after_queries, mut after_count) = (vec![], vec![], vec![]);
    for _ in 0..3 {
        let (_dir, node) = start(&data);
        million_ready.push(node.start_to_ready.as_secs_f64() * 1000.0);
        a_few_queries(&node, million.entities);
        after_queries.push(idle_rss(&node, settle));
        let count = graphql(&node, "{ meterConnection(first: 1) { totalCount } }");
        assert!(
            count.contains(&format!("\"totalCount\":{}", million.entities)),
            "{count}"
        );
        after_count.push(idle_rss(&node, settle));
        stop(node);
    }
    let runs = |values: &[f64], digits: usize| {
        values
            .iter()
            .map(|v| format!("{v:.digits$}"))
            .collect::<Vec<_>>()
            .join(", ")
    };

    println!(
        "startup: {} entities + {} events; {} entities for the RSS rows",
        history.entities,
        history.entities * history.events_per_entity,
        million.entities
    );
    println!("| measurement | value | runs |");
    println!("|---|---:|---|");
    println!(
        "| start→ready, empty store | {:.0} ms | 1 |",
        empty_ready.as_secs_f64() * 1000.0
    );
    println!(
        "| start→ready, {} entities + {} events | {:.0} ms (median) | {} |",
        history.entities,
        history.entities * history.events_per_entity,
        harness::median(&mut ready.clone()),
        ready
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| floor: `sled::open` of that store alone | {:.0} ms (median) | {} |",
        harness::median(&mut sled_open.clone()),
        runs(&sled_open, 0)
    );
    println!(
        "| floor: `Store::open` of that store | {:.0} ms (median) | {} |",
        harness::median(&mut store_open.clone()),
        runs(&store_open, 0)
    );
    println!("| idle RSS, empty store | {empty_rss:.1} MiB | 1 |");
    println!(
        "| idle RSS, {} entities + {} events | {:.1} MiB (median) | {} |",
        history.entities,
        history.entities * history.events_per_entity,
        harness::median(&mut rss.clone()),
        rss.iter()
            .map(|r| format!("{r:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| start→ready, {} entities | {:.0} ms (median) | {} |",
        million.entities,
        harness::median(&mut million_ready.clone()),
        runs(&million_ready, 0)
    );
    println!(
        "| RSS, {} entities, after 100 lookups + 3 pages | {:.1} MiB (median) | {} |",
        million.entities,
        harness::median(&mut after_queries.clone()),
        runs(&after_queries, 1)
    );
    println!(
        "| RSS, {} entities, after a `totalCount` over all | {:.1} MiB (median) | {} |",
        million.entities,
        harness::median(&mut after_count.clone()),
        runs(&after_count, 1)
    );
}
