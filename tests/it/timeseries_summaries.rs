//! `series` from sealed chunk summaries equals `series` from the raw
//! events: on a real store in a temp dir with random streams (late events,
//! retention holes, erasure and re-creation, chunks sealed before
//! summaries existed), and through the real binary over real MQTT, where
//! `/metrics` shows that summaries, not events, answered.

use std::time::Duration;

use meshlet::record::{Fields, Origin, Record, Timestamp, Value};
use meshlet::store::{HistoryQuery, RetentionSpec, Store, StoreConfig};
use meshlet::timeseries::buckets::{buckets_with, Bucket, Event, FieldKind, Fill, Sample, Window};
use meshlet::timeseries::read::entity_series;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

const P: &str = "probe";
const SECOND: i64 = 1_000_000;
/// 2023-11-14T22:13:20Z, a multiple of one hour.
const BASE: i64 = 1_699_999_200 * SECOND;

fn spec() -> Vec<(String, FieldKind)> {
    vec![
        ("temp".to_string(), FieldKind::Numeric),
        ("load".to_string(), FieldKind::Numeric),
        ("state".to_string(), FieldKind::Text),
    ]
}

fn open(dir: &std::path::Path, summaries: bool) -> Store {
    let mut config = StoreConfig::new(dir.join("db"));
    config.history_chunk_events = 32;
    config.history_block_events = 8;
    config.history_summaries = summaries;
    Store::open(config).expect("store opens")
}

/// One reading: values are multiples of 1/8 (sums exact in f64, so
/// summaries and events agree to the bit), some fields absent or null.
fn reading(rng: &mut rand::rngs::StdRng, entity: &str, time: i64) -> Record {
    let mut fields = Fields::new();
    if rng.random_bool(0.85) {
        fields.insert(
            "temp".into(),
            Value::Float(f64::from(rng.random_range(-400i32..1200)) / 8.0),
        );
    }
    match rng.random_range(0..10) {
        0 => {
            fields.insert("load".into(), Value::Null);
        }
        1..=6 => {
            fields.insert("load".into(), Value::Int(rng.random_range(0..100)));
        }
        _ => {}
    }
    match rng.random_range(0..10) {
        0 => {
            fields.insert("state".into(), Value::Null);
        }
        1..=5 => {
            let state = *["ok", "warn", "fault"].choose(rng).expect("a state");
            fields.insert("state".into(), Value::String(state.into()));
        }
        _ => {}
    }
    Record {
        entity: entity.to_string(),
        fields,
        event_time: Timestamp(time),
        origin: Origin::new("mqtt:probe/p1"),
    }
}

/// A stream of `n` readings from `from`, ~1 Hz with jitter and gaps, in
/// arrival order: every `late_every`-th reading is held back and arrives
/// a little later (late, overlapping newer chunks).
fn stream(rng: &mut rand::rngs::StdRng, entity: &str, from: i64, n: usize) -> Vec<Record> {
    let mut t = from;
    let mut out: Vec<Record> = Vec::with_capacity(n);
    let mut held: Vec<Record> = Vec::new();
    for _ in 0..n {
        t += SECOND + rng.random_range(-300_000..300_000);
        if rng.random_bool(0.01) {
            t += rng.random_range(60..1_800) * SECOND; // a hole
        }
        let r = reading(rng, entity, t);
        if rng.random_bool(0.03) {
            held.push(r);
        } else {
            out.push(r);
        }
        if !held.is_empty() && rng.random_bool(0.05) {
            out.append(&mut held);
        }
    }
    out.append(&mut held);
    out
}

fn write(store: &Store, records: &[Record]) {
    for batch in records.chunks(50) {
        store.upsert(P, batch).expect("upsert");
    }
}

/// The buckets computed from every raw event the store returns.
fn from_raw_events(store: &Store, entity: &str, window: &Window, fill: Fill) -> Vec<Bucket> {
    let spec = spec();
    let events: Vec<Event> = store
        .history(P, entity, &HistoryQuery::default())
        .expect("history")
        .into_iter()
        .map(|e| Event {
            time: e.event_time.as_micros(),
            version: e.version,
            values: spec
                .iter()
                .map(|(name, kind)| {
                    e.fields.get(name).map(|v| match (kind, v) {
                        (FieldKind::Numeric, Value::Int(i)) => Sample::Number(*i as f64),
                        (FieldKind::Numeric, Value::Float(x)) => Sample::Number(*x),
                        (FieldKind::Text, Value::String(s)) => Sample::Text(s.clone()),
                        _ => Sample::Clear,
                    })
                })
                .collect(),
        })
        .collect();
    let kinds: Vec<FieldKind> = spec.iter().map(|s| s.1).collect();
    buckets_with(&kinds, events, Vec::new(), window, fill)
}

/// Totals over all windows checked: (chunks summarised, chunks decoded).
fn check(
    store: &Store,
    entity: &str,
    rng: &mut rand::rngs::StdRng,
    span: (i64, i64),
) -> (u64, u64) {
    let (mut summarised, mut decoded) = (0, 0);
    for _ in 0..8 {
        let every = [60, 300, 900, 3_600][rng.random_range(0..4)] * SECOND;
        // Aligned windows (as dashboards ask) and ragged ones.
        let (mut since, mut until) = (
            rng.random_range(span.0 - 600 * SECOND..span.1),
            rng.random_range(span.0..span.1 + 600 * SECOND),
        );
        if since > until {
            std::mem::swap(&mut since, &mut until);
        }
        if rng.random_bool(0.5) {
            since = since.div_euclid(every) * every;
            until = until.div_euclid(every) * every + every;
        }
        if since >= until {
            until = since + every;
        }
        let window = Window {
            since,
            until,
            every,
        };
        let fill = *[Fill::None, Fill::Null, Fill::Previous]
            .choose(rng)
            .expect("a fill");
        let want = from_raw_events(store, entity, &window, fill);
        let got = entity_series(
            store,
            P,
            entity,
            &spec(),
            &window,
            fill,
            true,
            usize::MAX,
            &|_| {},
        )
        .expect("series");
        assert_eq!(
            got.buckets, want,
            "entity {entity}, window {since}..{until} every {every}"
        );
        let decoding = entity_series(
            store,
            P,
            entity,
            &spec(),
            &window,
            fill,
            false,
            usize::MAX,
            &|_| {},
        )
        .expect("series");
        assert_eq!(decoding.buckets, want);
        assert_eq!(decoding.chunks_summarised, 0);
        summarised += got.chunks_summarised;
        decoded += got.chunks_decoded;
    }
    (summarised, decoded)
}

#[test]
fn series_from_summaries_equals_series_from_raw_events() {
    let (mut summarised, mut decoded) = (0, 0);
    for seed in [1u64, 2, 3, 4, 5, 6] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().expect("temp dir");
        let entity = format!("p{seed}");
        let n = rng.random_range(400..1_500);
        let records = stream(&mut rng, &entity, BASE, n);
        let old = records.len() / 3;
        // The first third sealed without summaries (as before they
        // existed), the rest with.
        {
            let store = open(dir.path(), false);
            write(&store, &records[..old]);
        }
        let store = open(dir.path(), true);
        write(&store, &records[old..]);
        let last = records.iter().map(|r| r.event_time.0).max().unwrap_or(BASE);
        let span = (BASE, last);
        let (s, d) = check(&store, &entity, &mut rng, span);
        summarised += s;
        decoded += d;

        // Retention: keep the newest events only (boundary chunks are
        // rewritten with fewer events, and their summaries with them),
        // then a max age that cuts by event time (holes where late events
        // were).
        let policy = RetentionSpec {
            history_keep: Some(n as u64 * 2 / 3),
            ..RetentionSpec::default()
        };
        store
            .sweep_retention(P, &policy, Timestamp(last), None, 10)
            .expect("sweep");
        check(&store, &entity, &mut rng, span);
        let policy = RetentionSpec {
            history_max_age: Some(Duration::from_micros(((last - BASE) / 2) as u64)),
            ..RetentionSpec::default()
        };
        store
            .sweep_retention(P, &policy, Timestamp(last), None, 10)
            .expect("sweep");
        check(&store, &entity, &mut rng, span);

        // Erasure: the entity's history is gone; re-created, only the new
        // events count.
        assert!(store
            .erase(P, &entity, &Origin::new("test"))
            .expect("erase"));
        let empty = entity_series(
            &store,
            P,
            &entity,
            &spec(),
            &Window {
                since: span.0,
                until: span.1 + SECOND,
                every: 3_600 * SECOND,
            },
            Fill::None,
            true,
            usize::MAX,
            &|_| {},
        )
        .expect("series");
        assert!(empty.buckets.is_empty(), "{:?}", empty.buckets);
        let again = stream(&mut rng, &entity, last, 300);
        write(&store, &again);
        let end = again.iter().map(|r| r.event_time.0).max().unwrap_or(last);
        check(&store, &entity, &mut rng, (span.0, end));
    }
    // Late events, old chunks and 1-minute buckets decode many chunks
    // here (the in-order test below shows the common case); what matters
    // is that summaries took part in the equalities above.
    assert!(
        summarised > 100,
        "summaries answered {summarised} chunks, {decoded} were decoded"
    );
}

#[test]
fn old_chunks_without_summaries_still_answer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let records = stream(&mut rng, "old", BASE, 600);
    {
        let store = open(dir.path(), false);
        write(&store, &records);
    }
    let store = open(dir.path(), true);
    let window = Window {
        since: BASE,
        until: BASE + 3 * 3_600 * SECOND,
        every: 300 * SECOND,
    };
    let want = from_raw_events(&store, "old", &window, Fill::Null);
    let got = entity_series(
        &store,
        P,
        "old",
        &spec(),
        &window,
        Fill::Null,
        true,
        usize::MAX,
        &|_| {},
    )
    .expect("series");
    assert_eq!(got.buckets, want);
    assert_eq!(
        got.chunks_summarised, 0,
        "nothing was sealed with summaries"
    );
    assert!(got.chunks_decoded > 0);
    assert!(want.iter().map(|b| b.count).sum::<u64>() > 500);
}

#[test]
fn an_in_order_stream_is_read_from_summaries_with_few_events_decoded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), true);
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let records: Vec<Record> = (0..4_000)
        .map(|i| reading(&mut rng, "fast", BASE + i * SECOND))
        .collect();
    write(&store, &records);
    let window = Window {
        since: BASE,
        until: BASE + 4_000 * SECOND,
        every: 300 * SECOND,
    };
    let got = entity_series(
        &store,
        P,
        "fast",
        &spec(),
        &window,
        Fill::None,
        true,
        usize::MAX,
        &|_| {},
    )
    .expect("series");
    assert_eq!(
        got.buckets,
        from_raw_events(&store, "fast", &window, Fill::None)
    );
    assert_eq!(got.buckets.iter().map(|b| b.count).sum::<u64>(), 4_000);
    // Only the open tail (fewer than a block) and what the tail's range
    // overlaps is read as events.
    assert!(
        got.events_decoded * 50 < 4_000,
        "{} events decoded, {} summarised",
        got.events_decoded,
        got.events_summarised
    );
}

/// Newest-first pages (`last`/`before` in GraphQL) of one entity, `page`
/// at a time, following the `before_version` cursor to the start.
fn newest_first_pages(store: &Store, entity: &str, page: usize, base: &HistoryQuery) -> Vec<u64> {
    let mut versions: Vec<u64> = Vec::new();
    loop {
        let query = HistoryQuery {
            newest_first: true,
            limit: page,
            before_version: versions.last().copied().or(base.before_version),
            ..base.clone()
        };
        let got = store.history(P, entity, &query).expect("history");
        assert!(got.len() <= page);
        assert!(
            got.windows(2).all(|w| w[0].version > w[1].version),
            "a page is newest first"
        );
        let done = got.len() < page;
        versions.extend(got.iter().map(|e| e.version));
        if done {
            return versions;
        }
    }
}

/// Newest first reads the history from its end (in key windows of growing
/// version spans, so the cost does not grow with the history): every page
/// across chunk and block boundaries, late events and windows of several
/// thousand versions equals the oldest-first history reversed — also with
/// an event-time range, an `after_version` bound, after retention left a
/// hole at the start, and after erasure and re-creation.
#[test]
fn newest_first_pages_equal_the_history_reversed() {
    for seed in [11u64, 12, 13] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open(dir.path(), true);
        let entity = format!("n{seed}");
        let records = stream(&mut rng, &entity, BASE, 2_600 + seed as usize * 700);
        write(&store, &records);
        let check = |store: &Store, rng: &mut rand::rngs::StdRng| {
            let all = store
                .history(P, &entity, &HistoryQuery::default())
                .expect("history");
            let times: Vec<i64> = all.iter().map(|e| e.event_time.0).collect();
            let (lo, hi) = (
                times.iter().copied().min().unwrap_or(BASE),
                times.iter().copied().max().unwrap_or(BASE),
            );
            for _ in 0..4 {
                let page = rng.random_range(1..90);
                let since = rng.random_range(lo..=hi);
                let until = rng.random_range(since..=hi + SECOND);
                let after = all
                    .get(rng.random_range(0..all.len().max(1)))
                    .map(|e| e.version);
                for base in [
                    HistoryQuery::default(),
                    HistoryQuery {
                        since: Some(Timestamp(since)),
                        until: Some(Timestamp(until)),
                        ..HistoryQuery::default()
                    },
                    HistoryQuery {
                        after_version: after,
                        ..HistoryQuery::default()
                    },
                ] {
                    let mut expected: Vec<u64> = store
                        .history(P, &entity, &base)
                        .expect("history")
                        .iter()
                        .map(|e| e.version)
                        .collect();
                    expected.reverse();
                    assert_eq!(
                        newest_first_pages(store, &entity, page, &base),
                        expected,
                        "seed {seed}, page {page}, {base:?}"
                    );
                }
            }
            // The events themselves, not only their versions.
            let newest = store
                .history(
                    P,
                    &entity,
                    &HistoryQuery {
                        newest_first: true,
                        limit: 20,
                        ..HistoryQuery::default()
                    },
                )
                .expect("history");
            let tail: Vec<_> = all.iter().rev().take(20).cloned().collect();
            assert_eq!(newest, tail);
        };
        check(&store, &mut rng);
        let last = records.iter().map(|r| r.event_time.0).max().unwrap_or(BASE);
        let policy = RetentionSpec {
            history_keep: Some(900),
            ..RetentionSpec::default()
        };
        store
            .sweep_retention(P, &policy, Timestamp(last), None, 10)
            .expect("sweep");
        check(&store, &mut rng);
        assert!(store
            .erase(P, &entity, &Origin::new("test"))
            .expect("erase"));
        write(&store, &stream(&mut rng, &entity, last, 150));
        check(&store, &mut rng);
    }
}

/// Every instance of the product through a full scan, by entity.
fn scanned(store: &Store) -> Vec<meshlet::store::Instance> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.scan(P, after.as_deref(), 97).expect("scan");
        out.extend(page.instances);
        match page.next_after {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
}

/// The projection's columns (what `<product>Aggregate` reads) hold each
/// scanned instance's fields cell by cell, a column nobody holds is all
/// absent, and grouping the columns gives what grouping the scanned field
/// maps gives (by each field, and by none).
fn columns_equal_the_scan(store: &Store, scan: &[meshlet::store::Instance], at: &str) {
    use meshlet::store::Cell;
    use meshlet::timeseries::aggregate::{aggregate_columns, Aggregator};
    let wanted: Vec<String> = ["state", "load", "temp", "nobody"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let fleet = store
        .fleet_columns(P, &wanted, true)
        .expect("columns")
        .expect("within the bound");
    let rows = fleet.rows.as_ref().expect("rows asked for");
    let mut seen: Vec<&meshlet::store::Instance> = Vec::new();
    for (slot, live) in fleet.live.iter().enumerate() {
        assert_eq!(*live, rows[slot].is_some(), "{at}: slot {slot}");
        let Some(row) = rows[slot].as_deref() else {
            continue;
        };
        seen.push(row);
        for (name, column) in wanted.iter().zip(&fleet.columns) {
            let cell = column.cells[slot];
            match row.fields.get(name) {
                None => assert_eq!(cell, Cell::Absent, "{at}: {} {name}", row.entity),
                Some(value) => assert_eq!(
                    column.value(cell).as_ref(),
                    Some(value),
                    "{at}: {} {name}",
                    row.entity
                ),
            }
        }
    }
    seen.sort_by(|a, b| a.entity.cmp(&b.entity));
    assert_eq!(seen.len(), scan.len(), "{at}: live rows");
    assert!(seen.iter().zip(scan).all(|(a, b)| *a == b), "{at}: rows");
    let without_rows = store
        .fleet_columns(P, &wanted, false)
        .expect("columns")
        .expect("within the bound");
    assert!(without_rows.rows.is_none(), "{at}: no JSON, no rows");
    assert_eq!(without_rows.columns, fleet.columns, "{at}");
    let numeric = vec!["temp".to_string(), "load".to_string()];
    for group_by in [
        vec![],
        vec!["state".to_string()],
        vec!["load".to_string(), "state".to_string()],
    ] {
        let mut wanted = group_by.clone();
        wanted.extend(numeric.iter().cloned());
        let fleet = store
            .fleet_columns(P, &wanted, false)
            .expect("columns")
            .expect("bound");
        let masks = vec![None; wanted.len()];
        let got = aggregate_columns(&fleet, &group_by, &numeric, &masks, None, 1_000)
            .expect("few groups");
        let mut want = Aggregator::new(group_by.clone(), numeric.clone(), 1_000);
        for instance in scan {
            want.add(&instance.fields).expect("few groups");
        }
        let want = want.finish();
        assert_eq!(got.len(), want.len(), "{at}: by {group_by:?}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(
                (&g.key, g.count),
                (&w.key, w.count),
                "{at}: by {group_by:?}"
            );
            for (m, n) in g.numbers.iter().zip(&w.numbers) {
                match (m, n) {
                    (Some(m), Some(n)) => {
                        assert_eq!((m.count, m.min, m.max), (n.count, n.min, n.max), "{at}");
                        assert!((m.sum - n.sum).abs() <= 1e-9 * n.sum.abs().max(1.0), "{at}");
                    }
                    (m, n) => assert_eq!(m, n, "{at}: by {group_by:?}"),
                }
            }
        }
    }
}

/// The in-memory projection fleet aggregates read (`store/projection.rs`)
/// equals a full scan of the store after any mix of writes (fields set,
/// changed and cleared with null), erasures, retention that expires
/// instances, the raw database handed out, and a reopen.
#[test]
fn the_aggregate_projection_equals_a_scan_under_writes_erasures_and_expiry() {
    for seed in [21u64, 22, 23, 24] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = open(dir.path(), true);
        let mut now = BASE;
        let mut compared = 0;
        for step in 0..400 {
            match rng.random_range(0..20) {
                0..=11 => {
                    let batch: Vec<Record> = (0..rng.random_range(1..30))
                        .map(|_| {
                            now += SECOND;
                            let entity = format!("m{:03}", rng.random_range(0..150));
                            let mut record = reading(&mut rng, &entity, now);
                            if rng.random_bool(0.2) {
                                // Late: goes to history, may not change the state.
                                record.event_time = Timestamp(now - 600 * SECOND);
                            }
                            record
                        })
                        .collect();
                    store.upsert(P, &batch).expect("upsert");
                }
                12..=13 => {
                    let entity = format!("m{:03}", rng.random_range(0..150));
                    store
                        .erase(P, &entity, &Origin::new("test"))
                        .expect("erase");
                }
                14 => {
                    let policy = RetentionSpec {
                        expire_after: Some(Duration::from_secs(rng.random_range(5..200))),
                        ..RetentionSpec::default()
                    };
                    store
                        .sweep_retention(P, &policy, Timestamp(now), None, 1_000)
                        .expect("sweep");
                }
                15 => {
                    let _ = store.raw_db();
                }
                16 if step % 3 == 0 => {
                    drop(store);
                    store = open(dir.path(), true);
                }
                _ => {
                    let Some(projected) = store.current_instances(P).expect("projection") else {
                        panic!("the projection is far below its bound here");
                    };
                    let mut projected: Vec<meshlet::store::Instance> =
                        projected.iter().map(|i| (**i).clone()).collect();
                    projected.sort_by(|a, b| a.entity.cmp(&b.entity));
                    let scan = scanned(&store);
                    assert_eq!(projected, scan, "seed {seed}, step {step}");
                    columns_equal_the_scan(&store, &scan, &format!("seed {seed}, step {step}"));
                    compared += 1;
                }
            }
        }
        assert!(compared > 30, "compared {compared} times");
    }
}

/// The projection's first build scans without the store's writer lock:
/// commits, erasures and clears (the raw database handed out) that land
/// while it scans must leave it equal to a scan of the store once the
/// writes stop, rows and columns.
#[test]
fn the_projection_built_while_writes_go_on_equals_a_scan() {
    for seed in [31u64, 32, 33] {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open(dir.path(), true);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // Several scan pages (1,024 instances each) for writes to fall between.
        let first: Vec<Record> = (0..3_000)
            .map(|i| reading(&mut rng, &format!("m{i:05}"), BASE + i * SECOND))
            .collect();
        store.upsert(P, &first).expect("upsert");
        std::thread::scope(|s| {
            let writer = s.spawn(|| {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed + 100);
                let mut now = BASE + 10_000 * SECOND;
                for step in 0..300 {
                    let batch: Vec<Record> = (0..20)
                        .map(|_| {
                            now += SECOND;
                            let entity = format!("m{:05}", rng.random_range(0..3_500));
                            reading(&mut rng, &entity, now)
                        })
                        .collect();
                    store.upsert(P, &batch).expect("upsert");
                    if step % 7 == 0 {
                        let entity = format!("m{:05}", rng.random_range(0..3_500));
                        store
                            .erase(P, &entity, &Origin::new("test"))
                            .expect("erase");
                    }
                    if step % 97 == 0 {
                        let _ = store.raw_db();
                    }
                }
            });
            while !writer.is_finished() {
                store
                    .current_instances(P)
                    .expect("projection")
                    .expect("within its bound");
            }
        });
        let projected = store
            .current_instances(P)
            .expect("projection")
            .expect("within its bound");
        let mut projected: Vec<meshlet::store::Instance> =
            projected.iter().map(|i| (**i).clone()).collect();
        projected.sort_by(|a, b| a.entity.cmp(&b.entity));
        let scan = scanned(&store);
        assert_eq!(projected.len(), scan.len(), "seed {seed}");
        assert_eq!(projected, scan, "seed {seed}");
        columns_equal_the_scan(&store, &scan, &format!("seed {seed}, after the writes"));
    }
}
