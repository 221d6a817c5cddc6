//! Start-up time and memory of the release node over a large store.
//!
//! - start→ready: spawn of the node to the first `/readyz` 200 (polled
//!   every millisecond), over a store with 100,000 entities and 10
//!   million history events (100 per entity), **cold and warm**, three
//!   of each, alternating. Cold is the budget's case (a gateway that
//!   boots, or a node restarted after hours of other work): before each
//!   cold start every file of the data dir and the node binary are
//!   written back and evicted from the page cache
//!   (`posix_fadvise(POSIX_FADV_DONTNEED)`, no root needed, only these
//!   files: `echo 3 > /proc/sys/vm/drop_caches` would also empty the
//!   cache of everything else on a shared machine), and `mincore`
//!   confirms how much of them was still resident (printed). Warm is
//!   the start right after, on the files the cold start just read. On a
//!   VM the host may still cache the disk: cold here means the guest's
//!   page cache, not the device. The node is stopped with SIGTERM
//!   between starts, as systemd would;
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
//! `STARTUP_EVENTS_PER_ENTITY=10` builds a tenth of the start-up store
//! (a quicker first figure), `STARTUP_MILLION=0` leaves out the
//! 1,000,000-entity store and its RSS rows.

#[path = "../tests/common/mod.rs"]
mod common;
use common::bench;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bench::Node;
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

/// Evicting files from the page cache, and checking that it worked.
mod page_cache {
    use std::os::fd::AsRawFd;
    use std::path::{Path, PathBuf};

    /// Every regular file under `dir`, recursively.
    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => files(&path, out),
                Ok(kind) if kind.is_file() => out.push(path),
                _ => {}
            }
        }
    }

    /// Bytes of `path` resident in the page cache (`mincore` over a
    /// read-only mapping), and its length.
    fn resident(path: &Path) -> (u64, u64) {
        let Ok(file) = std::fs::File::open(path) else {
            return (0, 0);
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len == 0 {
            return (0, 0);
        }
        // SAFETY: a private read-only mapping of a file we opened, only
        // passed to mincore and unmapped before returning; its bytes are
        // never read.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE).max(1) as u64;
            let map = libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            if map == libc::MAP_FAILED {
                return (0, len);
            }
            let mut pages = vec![0u8; len.div_ceil(page) as usize];
            let ok = libc::mincore(map, len as usize, pages.as_mut_ptr()) == 0;
            libc::munmap(map, len as usize);
            if !ok {
                return (0, len);
            }
            let count = pages.iter().filter(|p| **p & 1 == 1).count() as u64;
            ((count * page).min(len), len)
        }
    }

    /// Writes back and evicts every file under `dirs` and each of
    /// `single` from the page cache. Returns (resident bytes left, total
    /// bytes): what `mincore` still finds right after the eviction.
    pub fn evict(dirs: &[&Path], single: &[&Path]) -> (u64, u64) {
        let mut all = Vec::new();
        for dir in dirs {
            files(dir, &mut all);
        }
        all.extend(single.iter().map(|p| p.to_path_buf()));
        for path in &all {
            let Ok(file) = std::fs::File::open(path) else {
                continue;
            };
            // Dirty pages are not dropped: write them back first.
            let _ = file.sync_all();
            // SAFETY: fadvise on a descriptor we own; offset 0, length 0
            // means the whole file.
            unsafe {
                libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
            }
        }
        all.iter()
            .map(|p| resident(p))
            .fold((0, 0), |(r, t), (pr, pt)| (r + pr, t + pt))
    }
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
    let node = bench::start_node(
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
    bench::rss_mib(node.pid)
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
    let (status, text) = bench::http_request(&node.http, "POST", "/graphql", &body);
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
    let binary = bench::node_binary();
    // Cold, then warm, three times: each cold start after the data dir
    // and the binary were evicted from the page cache, each warm start
    // right after the cold one, on the files it just read.
    let (mut cold, mut ready, mut rss, mut left) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    let mut evicted = (0.0, 0.0);
    for _ in 0..3 {
        let (data_resident, data_total) = page_cache::evict(&[&data], &[]);
        let (binary_resident, binary_total) = page_cache::evict(&[], &[&binary]);
        evicted = (mib(data_total), mib(binary_total));
        left.push(
            (data_resident + binary_resident) as f64 * 100.0
                / (data_total + binary_total).max(1) as f64,
        );
        let (_dir, node) = start(&data);
        cold.push(node.start_to_ready.as_secs_f64() * 1000.0);
        stop(node);
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

    // `STARTUP_MILLION=0`: only the start→ready rows (and the idle RSS
    // beside them), without building or starting the 1M-entity store.
    let with_million = std::env::var("STARTUP_MILLION").map_or(true, |v| v != "0");
    let data = if with_million {
        data_dir(&root, million)
    } else {
        PathBuf::new()
    };
    let (mut million_ready, mut after_queries, mut after_count) = (vec![], vec![], vec![]);
    for _ in 0..(if with_million { 3 } else { 0 }) {
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
    let (cold_median, warm_median) = (bench::median(cold.clone()), bench::median(ready.clone()));
    println!(
        "| start→ready, {} entities + {} events, **cold** (data dir, {:.0} MiB, and binary, {:.0} MiB, evicted from the page cache; still resident after eviction: {} %) | {cold_median:.0} ms (median) | {} |",
        history.entities,
        history.entities * history.events_per_entity,
        evicted.0,
        evicted.1,
        runs(&left, 1),
        runs(&cold, 0)
    );
    println!(
        "| start→ready, {} entities + {} events, warm (right after each cold start) | {warm_median:.0} ms (median) | {} |",
        history.entities,
        history.entities * history.events_per_entity,
        runs(&ready, 0)
    );
    println!(
        "| cold / warm | {:.1}× | {} |",
        cold_median / warm_median.max(0.001),
        cold.iter()
            .zip(&ready)
            .map(|(c, w)| format!("{:.1}", c / w.max(0.001)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| floor: `sled::open` of that store alone | {:.0} ms (median) | {} |",
        bench::median(sled_open.clone()),
        runs(&sled_open, 0)
    );
    println!(
        "| floor: `Store::open` of that store | {:.0} ms (median) | {} |",
        bench::median(store_open.clone()),
        runs(&store_open, 0)
    );
    println!("| idle RSS, empty store | {empty_rss:.1} MiB | 1 |");
    println!(
        "| idle RSS, {} entities + {} events | {:.1} MiB (median) | {} |",
        history.entities,
        history.entities * history.events_per_entity,
        bench::median(rss.clone()),
        rss.iter()
            .map(|r| format!("{r:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !with_million {
        return;
    }
    println!(
        "| start→ready, {} entities | {:.0} ms (median) | {} |",
        million.entities,
        bench::median(million_ready.clone()),
        runs(&million_ready, 0)
    );
    println!(
        "| RSS, {} entities, after 100 lookups + 3 pages | {:.1} MiB (median) | {} |",
        million.entities,
        bench::median(after_queries.clone()),
        runs(&after_queries, 1)
    );
    println!(
        "| RSS, {} entities, after a `totalCount` over all | {:.1} MiB (median) | {} |",
        million.entities,
        bench::median(after_count.clone()),
        runs(&after_count, 1)
    );
}
