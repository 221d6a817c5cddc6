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
//!   10,000,000 (`TS_LAST_EVENTS`); baseline: the newest 20 of an entity
//!   holding 1,000 (what it costs when history is short).
//! - `fleet aggregate`: 100,000 instances (`TS_FLEET`) grouped by a
//!   3-value field with min/max/avg of two numbers, from the in-memory
//!   projection of current instances (`store/projection.rs`; its first
//!   build is printed apart); baseline: the same aggregate over a scan of
//!   every instance (what a product over the projection's bound gets).
//!
//! Medians of `TS_RUNS` (default 15) runs after one warm-up. Without
//! `--bench` (as `cargo test --all-targets` runs it) sizes shrink 100×.

use std::time::{Duration, Instant};

use meshlet::record::{Fields, Origin, Record, Timestamp, Value};
use meshlet::store::{HistoryQuery, Store, StoreConfig};
use meshlet::timeseries::aggregate::Aggregator;
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

fn fill(store: &Store, entity: &str, events: usize) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut temp, mut state) = (60.0, 0);
    let mut batch = Vec::with_capacity(1_000);
    for i in 0..events as i64 {
        batch.push(reading(entity, i, &mut rng, &mut temp, &mut state));
        if batch.len() == 1_000 {
            store.upsert(P, &batch).expect("upsert");
            batch.clear();
        }
    }
    if !batch.is_empty() {
        store.upsert(P, &batch).expect("upsert");
    }
}

fn open(dir: &std::path::Path) -> Store {
    let mut config = StoreConfig::new(dir.join("db"));
    config.cache_capacity_bytes = 256 * 1024 * 1024;
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

fn last_twenty(quick: bool, runs: usize) {
    let events = env("TS_LAST_EVENTS", 10_000_000, quick);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    let start = Instant::now();
    fill(&store, "big", events);
    fill(&store, "small", 1_000);
    store.durable_blocking().expect("flush");
    let filled = start.elapsed();
    let query = HistoryQuery {
        newest_first: true,
        limit: 20,
        ..HistoryQuery::default()
    };
    let (big, got) = time(runs * 10, || {
        store.history(P, "big", &query).expect("history")
    });
    assert_eq!(got.len(), 20);
    assert_eq!(got[0].version, events as u64);
    let (small, got) = time(runs * 10, || {
        store.history(P, "small", &query).expect("history")
    });
    assert_eq!(got.len(), 20);
    println!(
        "last 20 of {events} events (filled in {:.1} s): {:.3} ms median; of 1,000 events: {:.3} ms ({:.2}x)",
        filled.as_secs_f64(),
        ms(big),
        ms(small),
        ms(big) / ms(small),
    );
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
        if batch.len() == 1_000 {
            store.upsert(P, &batch).expect("upsert");
            batch.clear();
        }
    }
    if !batch.is_empty() {
        store.upsert(P, &batch).expect("upsert");
    }
    store.durable_blocking().expect("flush");
    let aggregate_with = |instances: &mut dyn FnMut(Visit<'_>)| {
        let mut aggregator = Aggregator::new(
            vec!["site".to_string()],
            vec!["temperature_c".to_string(), "spindle_rpm".to_string()],
            1_000,
        );
        instances(&mut |fields| aggregator.add(fields).expect("three groups"));
        aggregator.finish()
    };
    let from_projection = || {
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
    let built = from_projection();
    let build = start.elapsed();
    let (fast, groups) = time(runs, from_projection);
    assert_eq!(groups, built);
    assert_eq!(groups.len(), 3);
    assert_eq!(
        groups.iter().map(|g| g.count).sum::<u64>(),
        instances as u64
    );
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
    println!(
        "fleet aggregate of {instances} instances by a 3-value field: projection {:.2} ms median (first call, building it: {:.0} ms); scan and aggregate {:.2} ms ({:.1}x)",
        ms(fast),
        ms(build),
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
