//! Time-series query targets (issue 27), in process with the store library
//! on a real sled store in a temp dir, each against a baseline measured in
//! the same run:
//!
//! ```sh
//! cargo bench --bench timeseries
//! # quick: TS_SERIES_EVENTS=200000 TS_LAST_EVENTS=500000 TS_FLEET=10000 cargo bench --bench timeseries
//! ```
//!
//! - `series 30d/5m`: 30 days of 1 Hz history of one entity (2,592,000
//!   events; `TS_SERIES_EVENTS`) into 5-minute buckets, read from sealed
//!   chunk summaries; baseline: the same buckets with every chunk decoded
//!   (what a role with a mask gets, and what `series` did before
//!   summaries). Also printed: the share of events decompressed.
//! - `last 20 of 10M`: the newest 20 events of an entity holding
//!   10,000,000 (`TS_LAST_EVENTS`), measured on the way at 100k, 1M, 3M
//!   (`TS_LAST_SIZES`) and stopping early after `TS_FILL_SECS` of
//!   filling; baseline: the newest 20 of an entity holding 1,000 in the
//!   same store (what it costs when history is short).
//! - `fleet aggregate`: 100,000 instances (`TS_FLEET`) grouped by a
//!   3-value field with min/max/avg of two numbers, from the in-memory
//!   projection of current instances read as columns (what
//!   `<product>Aggregate` does; the first call, which builds the
//!   projection, is printed apart); baselines: the projection's rows one
//!   field map at a time, and a scan of every instance (what a product
//!   over the projection's bound gets).
//!
//! The stores are filled `TS_FILL_BATCH` (10,000) records per upsert, with
//! the store's default history layout unless `TS_CHUNK_EVENTS` /
//! `TS_BLOCK_EVENTS` set events per chunk / block (to compare layouts).
//!
//! Medians of `TS_RUNS` (default 15) runs after one warm-up. Without
//! `--bench` (as `cargo test --all-targets` runs it) sizes shrink 100×.

use std::time::{Duration, Instant};

/// The node's allocator (src/main.rs), so the figures are the node's: with
/// glibc's malloc the same series read spent half its time consolidating
/// free lists, and varied 3x from one process to the next.
#[cfg(target_os = "linux")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use meshlet::record::{Fields, Origin, Record, Timestamp, Value};
use meshlet::store::{HistoryQuery, Store, StoreConfig};
use meshlet::timeseries::aggregate::{aggregate_columns, Aggregator};
use meshlet::timeseries::buckets::{FieldKind, Fill, Window};
use meshlet::timeseries::read::entity_series;

const P: &str = "machine";
const SECOND: i64 = 1_000_000;
/// 2025-11-24T00:00:00Z.
const BASE: i64 = 1_763_942_400 * SECOND;

fn env(name: &str, default: usize, quick: bool) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick {
            (default / 100).max(10)
        } else {
            default
        })
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut last = f();
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        last = f();
        samples.push(start.elapsed());
    }
    (median(samples), last)
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const STATES: [&str; 3] = ["ok", "warn", "fault"];

/// A 1 Hz reading: random-walk temperature (one decimal, as JSON senders
/// send), an rpm, and a state that changes now and then.
fn reading(entity: &str, i: i64, rng: &mut Rng, temp: &mut f64, state: &mut usize) -> Record {
    *temp = (*temp + (rng.next() % 7) as f64 / 10.0 - 0.3).clamp(40.0, 95.0);
    if rng.next() % 600 == 0 {
        *state = (rng.next() % 3) as usize;
    }
    let mut fields = Fields::new();
    fields.insert(
        "temperature_c".into(),
        Value::Float((*temp * 10.0).round() / 10.0),
    );
    fields.insert(
        "spindle_rpm".into(),
        Value::Int(1400 + (rng.next() % 50) as i64),
    );
    fields.insert("status".into(), Value::String(STATES[*state].into()));
    Record {
        entity: entity.to_string(),
        fields,
        event_time: Timestamp(BASE + i * SECOND),
        origin: Origin::new("mqtt:plant/m1"),
    }
}

/// Records per `upsert` while filling (`TS_FILL_BATCH`): one store
/// transaction each, so larger groups fill faster (the store's per-commit
/// costs are paid per group, as the writer pays them under load).
fn fill_batch() -> usize {
    env("TS_FILL_BATCH", 10_000, false).max(1)
}

/// Writes events `from..to` of the 1 Hz stream of `entity` (the stream is
/// the same whatever the split: the generator is re-run from the start).
fn fill_range(store: &Store, entity: &str, from: usize, to: usize, gen: &mut Generator) {
    let size = fill_batch();
    let mut batch = Vec::with_capacity(size);
    for i in from as i64..to as i64 {
        batch.push(gen.reading(entity, i));
        if batch.len() == size {
            store.upsert(P, &batch).expect("upsert");
            batch.clear();
        }
    }
    if !batch.is_empty() {
        store.upsert(P, &batch).expect("upsert");
    }
}

fn fill(store: &Store, entity: &str, events: usize) {
    fill_range(store, entity, 0, events, &mut Generator::new());
}

/// The 1 Hz stream's state between calls.
struct Generator {
    rng: Rng,
    temp: f64,
    state: usize,
}

impl Generator {
    fn new() -> Generator {
        Generator {
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            temp: 60.0,
            state: 0,
        }
    }

    fn reading(&mut self, entity: &str, i: i64) -> Record {
        reading(entity, i, &mut self.rng, &mut self.temp, &mut self.state)
    }
}

fn open(dir: &std::path::Path) -> Store {
    let mut config = StoreConfig::new(dir.join("db"));
    config.cache_capacity_bytes = 256 * 1024 * 1024;
    // The history layout to measure (the node's defaults unless set).
    if let Some(n) = std::env::var("TS_CHUNK_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.history_chunk_events = n;
    }
    if let Some(n) = std::env::var("TS_BLOCK_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.history_block_events = n;
    }
    Store::open(config).expect("store opens")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn series(quick: bool, runs: usize) {
    let events = env("TS_SERIES_EVENTS", 2_592_000, quick);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    let start = Instant::now();
    fill(&store, "m1", events);
    store.durable_blocking().expect("flush");
    let filled = start.elapsed();
    let spec = vec![
        ("temperature_c".to_string(), FieldKind::Numeric),
        ("spindle_rpm".to_string(), FieldKind::Numeric),
        ("status".to_string(), FieldKind::Text),
    ];
    let every = 300 * SECOND;
    let window = Window {
        since: BASE,
        until: (BASE + events as i64 * SECOND).div_euclid(every) * every + every,
        every,
    };
    let run = |summaries: bool| {
        entity_series(
            &store,
            P,
            "m1",
            &spec,
            &window,
            Fill::None,
            summaries,
            usize::MAX,
            &|_| {},
        )
        .expect("series")
    };
    let (fast, outcome) = time(runs, || run(true));
    let (slow, baseline) = time(runs.min(5), || run(false));
    assert_eq!(outcome.buckets.len(), baseline.buckets.len());
    assert_eq!(
        outcome.buckets.iter().map(|b| b.count).sum::<u64>(),
        events as u64
    );
    let decompressed = outcome.events_decoded as f64 / events as f64 * 100.0;
    println!(
        "series {events} events (1 Hz, filled in {:.1} s) into {} 5-minute buckets: summaries {:.2} ms median, decode-all {:.2} ms ({:.1}x); {} chunks summarised, {} decoded, {:.3}% of events decompressed",
        filled.as_secs_f64(),
        outcome.buckets.len(),
        ms(fast),
        ms(slow),
        ms(slow) / ms(fast),
        outcome.chunks_summarised,
        outcome.chunks_decoded,
        decompressed,
    );
}

/// The last 20 of an entity measured as its history grows: at every
/// size of `TS_LAST_SIZES` (default 100k, 1M, 3M, 10M; the last is
/// `TS_LAST_EVENTS`) up to what fills within `TS_FILL_SECS` (default
/// 1,200 s), each against an entity of 1,000 in the same store and run.
/// Flat in history length is the property that carries to any size.
fn last_twenty(quick: bool, runs: usize) {
    let events = env("TS_LAST_EVENTS", 10_000_000, quick);
    let budget = Duration::from_secs(env("TS_FILL_SECS", 1_200, false) as u64);
    let mut sizes: Vec<usize> = std::env::var("TS_LAST_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100_000, 1_000_000, 3_000_000]);
    sizes.retain(|s| *s < events);
    sizes.push(events);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    fill(&store, "small", 1_000);
    let query = HistoryQuery {
        newest_first: true,
        limit: 20,
        ..HistoryQuery::default()
    };
    let start = Instant::now();
    let mut gen = Generator::new();
    let mut filled = 0;
    for size in sizes {
        fill_range(&store, "big", filled, size, &mut gen);
        filled = size;
        store.durable_blocking().expect("flush");
        let (big, got) = time(runs * 10, || {
            store.history(P, "big", &query).expect("history")
        });
        assert_eq!(got.len(), 20);
        assert_eq!(got[0].version, size as u64);
        let (small, got) = time(runs * 10, || {
            store.history(P, "small", &query).expect("history")
        });
        assert_eq!(got.len(), 20);
        println!(
            "last 20 of {size} events (filled to here in {:.1} s): {:.3} ms median; of 1,000 events: {:.3} ms ({:.2}x)",
            start.elapsed().as_secs_f64(),
            ms(big),
            ms(small),
            ms(big) / ms(small),
        );
        if start.elapsed() > budget && size < events {
            println!(
                "last 20: stopped filling at {size} events (TS_FILL_SECS = {} s passed)",
                budget.as_secs()
            );
            break;
        }
    }
}

/// What a fleet source calls with each instance's fields.
type Visit<'a> = &'a mut dyn FnMut(&Fields);

/// Every instance of the product, a page of 1,000 at a time.
fn scan(store: &Store, visit: &mut dyn FnMut(&Fields)) {
    let mut after: Option<String> = None;
    loop {
        let page = store.scan(P, after.as_deref(), 1_000).expect("scan");
        for instance in &page.instances {
            visit(&instance.fields);
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
}

fn fleet(quick: bool, runs: usize) {
    let instances = env("TS_FLEET", 100_000, quick);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    let mut rng = Rng(42);
    let mut batch = Vec::with_capacity(1_000);
    for i in 0..instances {
        let mut fields = Fields::new();
        fields.insert(
            "site".into(),
            Value::String(["berlin", "lyon", "brno"][i % 3].into()),
        );
        fields.insert(
            "temperature_c".into(),
            Value::Float(40.0 + (rng.next() % 550) as f64 / 10.0),
        );
        fields.insert(
            "spindle_rpm".into(),
            Value::Int(800 + (rng.next() % 2000) as i64),
        );
        fields.insert(
            "status".into(),
            Value::String(STATES[(rng.next() % 3) as usize].into()),
        );
        batch.push(Record {
            entity: format!("M-{i:06}"),
            fields,
            event_time: Timestamp(BASE),
            origin: Origin::new("mqtt:plant"),
        });
        if batch.len() == fill_batch() {
            store.upsert(P, &batch).expect("upsert");
            batch.clear();
        }
    }
    if !batch.is_empty() {
        store.upsert(P, &batch).expect("upsert");
    }
    store.durable_blocking().expect("flush");
    let group_by = vec!["site".to_string()];
    let numeric = vec!["temperature_c".to_string(), "spindle_rpm".to_string()];
    let aggregate_with = |instances: &mut dyn FnMut(Visit<'_>)| {
        let mut aggregator = Aggregator::new(group_by.clone(), numeric.clone(), 1_000);
        instances(&mut |fields| aggregator.add(fields).expect("three groups"));
        aggregator.finish()
    };
    // What `<product>Aggregate` does: the wanted columns, grouped.
    let wanted: Vec<String> = group_by.iter().chain(&numeric).cloned().collect();
    let from_columns = || {
        let fleet = store
            .fleet_columns(P, &wanted, false)
            .expect("projection")
            .expect("within its bound");
        aggregate_columns(
            &fleet,
            &group_by,
            &numeric,
            &[None, None, None],
            None,
            1_000,
        )
        .expect("three groups")
    };
    // The projection's rows, one field map at a time (before the columns).
    let from_rows = || {
        aggregate_with(&mut |visit| {
            let instances = store
                .current_instances(P)
                .expect("projection")
                .expect("within its bound");
            for instance in &instances {
                visit(&instance.fields);
            }
        })
    };
    let start = Instant::now();
    let built = from_columns();
    let build = start.elapsed();
    let (fast, groups) = time(runs, from_columns);
    assert_eq!(groups, built);
    assert_eq!(groups.len(), 3);
    assert_eq!(
        groups.iter().map(|g| g.count).sum::<u64>(),
        instances as u64
    );
    let (rows, by_rows) = time(runs, from_rows);
    let (scanned, baseline) = time(runs.min(5), || {
        aggregate_with(&mut |visit| scan(&store, visit))
    });
    // Equal but for the order floats were summed in (key order in the
    // scan, hash order in the projection).
    let same = |a: &[meshlet::timeseries::aggregate::Group],
                b: &[meshlet::timeseries::aggregate::Group]| {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.key == y.key
                    && x.count == y.count
                    && x.numbers.iter().zip(&y.numbers).all(|(m, n)| match (m, n) {
                        (Some(m), Some(n)) => {
                            m.count == n.count
                                && m.min == n.min
                                && m.max == n.max
                                && (m.sum - n.sum).abs() <= 1e-9 * m.sum.abs().max(1.0)
                        }
                        (m, n) => m.is_none() && n.is_none(),
                    })
            })
    };
    assert!(same(&baseline, &groups), "{baseline:?} vs {groups:?}");
    assert!(same(&by_rows, &groups), "{by_rows:?} vs {groups:?}");
    println!(
        "fleet aggregate of {instances} instances by a 3-value field: columns {:.2} ms median ({:.3} us/instance; first call, building the projection: {:.0} ms); projection rows one by one {:.2} ms ({:.1}x); scan and aggregate {:.2} ms ({:.1}x)",
        ms(fast),
        ms(fast) * 1e3 / instances as f64,
        ms(build),
        ms(rows),
        ms(rows) / ms(fast),
        ms(scanned),
        ms(scanned) / ms(fast),
    );
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let runs = env("TS_RUNS", 15, false);
    let only = std::env::var("TS_ONLY").unwrap_or_default();
    if only.is_empty() || only == "series" {
        series(quick, runs);
    }
    if only.is_empty() || only == "last" {
        last_twenty(quick, runs);
    }
    if only.is_empty() || only == "fleet" {
        fleet(quick, runs);
    }
}
