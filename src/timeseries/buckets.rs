//! Downsampling one entity's events into windows of event time.
//!
//! Windows are aligned to multiples of `every` since the Unix epoch (UTC),
//! so `5m` buckets start at :00, :05, … whatever `since` is; the first
//! bucket is the one holding `since`, the last the one holding
//! `until - 1µs`. Only events with event time in `[since, until)` count,
//! and **event time decides the bucket**: a late event (arriving after
//! newer ones) lands where its time says. Order among events of one
//! instant is their version (arrival) order.
//!
//! Per numeric field: over the bucket's events that carry a number, the
//! count, min, max, sum, avg, and the first and last by event time.
//!
//! Per text field (a state such as `status`): a value is *held* from the
//! event that carried it until the next event that carries the field
//! (or `until`); an event without the field leaves the state unchanged,
//! one carrying null clears it. Per bucket: the time each value was held
//! inside it (within `[since, until)`), how many of the bucket's events
//! carried it, and the value held longest (ties: the smaller value).
//! Before the first event in `[since, until)` the state is unknown.
//!
//! Fill: `None` leaves out buckets without events; `Null` keeps them with
//! count 0 and no numeric statistics; `Previous` keeps them and gives each
//! numeric field the last value seen before (min = max = avg = first =
//! last = that value, count 0, no sum).

use std::collections::BTreeMap;

/// One value of a field in an event, as the bucketing sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Sample {
    Number(f64),
    Text(String),
    /// Sent as null (or, for a numeric field, not a number: a masked
    /// value): no statistic counts it; a text state is cleared.
    Clear,
}

/// One event: its event time (µs), version, and per field (in the
/// order of [`FieldKind`]s given) what it carried, `None` if absent.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub time: i64,
    pub version: u64,
    pub values: Vec<Option<Sample>>,
}

/// What a field is summarised as.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FieldKind {
    Numeric,
    Text,
}

/// What empty buckets become.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fill {
    None,
    Null,
    Previous,
}

/// The window and bucket width, all in µs; `every > 0`, `since < until`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub since: i64,
    pub until: i64,
    pub every: i64,
}

impl Window {
    /// The aligned start of the first bucket and the number of buckets.
    pub fn span(&self) -> (i64, u64) {
        let first = self.since.div_euclid(self.every).saturating_mul(self.every);
        let last = (self.until - 1).div_euclid(self.every);
        let count = last - self.since.div_euclid(self.every) + 1;
        (first, u64::try_from(count).unwrap_or(0))
    }
}

/// Numeric statistics of one field in one bucket.
#[derive(Clone, Debug, PartialEq)]
pub struct NumberStats {
    pub count: u64,
    pub min: f64,
    pub max: f64,
    /// `None` for a bucket filled from the previous value.
    pub sum: Option<f64>,
    pub avg: f64,
    pub first: f64,
    pub last: f64,
}

/// One text value's share of a bucket.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueShare {
    pub value: String,
    /// Events in the bucket that carried it.
    pub count: u64,
    /// µs it was held inside the bucket.
    pub held: i64,
}

/// Text statistics of one field in one bucket; `values` sorted by value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ValueStats {
    pub longest: Option<String>,
    pub values: Vec<ValueShare>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum FieldStats {
    Number(Option<NumberStats>),
    Text(ValueStats),
}

/// One bucket: `[start, end)`, its event count and per field statistics
/// (in the order of the [`FieldKind`]s given).
#[derive(Clone, Debug, PartialEq)]
pub struct Bucket {
    pub start: i64,
    pub end: i64,
    pub count: u64,
    pub fields: Vec<FieldStats>,
}

/// Running numeric statistics.
#[derive(Clone, Copy)]
struct Acc {
    count: u64,
    min: f64,
    max: f64,
    sum: f64,
    first: f64,
    last: f64,
}

impl Acc {
    fn new(x: f64) -> Acc {
        Acc {
            count: 1,
            min: x,
            max: x,
            sum: x,
            first: x,
            last: x,
        }
    }

    fn add(&mut self, x: f64) {
        self.count += 1;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        self.sum += x;
        self.last = x;
    }

    fn of(n: &BlockNumbers) -> Acc {
        Acc {
            count: n.count,
            min: n.min,
            max: n.max,
            sum: n.sum,
            first: n.first,
            last: n.last,
        }
    }

    fn merge(&mut self, n: &BlockNumbers) {
        self.count += n.count;
        self.min = self.min.min(n.min);
        self.max = self.max.max(n.max);
        self.sum += n.sum;
        self.last = n.last;
    }

    fn stats(&self) -> NumberStats {
        NumberStats {
            count: self.count,
            min: self.min,
            max: self.max,
            sum: Some(self.sum),
            avg: self.sum / self.count as f64,
            first: self.first,
            last: self.last,
        }
    }
}

/// Adds to the (events, µs held) entry of `value`, allocating its key only the
/// first time (a month of 5-minute buckets meets each state thousands of
/// times).
fn bump(map: &mut BTreeMap<String, (u64, i64)>, value: &str, events: u64, held: i64) {
    match map.get_mut(value) {
        Some(share) => {
            share.0 += events;
            share.1 += held;
        }
        None => {
            map.insert(value.to_string(), (events, held));
        }
    }
}

/// Per bucket while it is being built.
#[derive(Default)]
struct Building {
    count: u64,
    numbers: Vec<Option<Acc>>,
    /// Per text field: value → (events, µs held).
    texts: Vec<BTreeMap<String, (u64, i64)>>,
}

/// Numbers of one field over a [`Block`]'s events, in event-time order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockNumbers {
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub first: f64,
    pub last: f64,
}

/// One field of a [`Block`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BlockField {
    /// Numeric fields: the finite numbers carried.
    pub numbers: Option<BlockNumbers>,
    /// Text fields: per value, events that carried it and µs it was held
    /// between carriers inside the block.
    pub values: Vec<(String, u64, i64)>,
    /// Text fields: event time of the first carrier, and time and sample
    /// of the last (its hold runs on to the next carrier after the block).
    pub carry: Option<(i64, i64, Sample)>,
}

/// A run of events summarised (a sealed chunk's block summary) standing in
/// for the events themselves. The caller guarantees what makes the result
/// equal to bucketing the events: every event of the block lies in one
/// bucket and in `[since, until)`, and no other event given has an event
/// time in `[min_time, max_time]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub min_time: i64,
    pub max_time: i64,
    /// Smallest version (orders a block among items of one instant).
    pub version: u64,
    pub count: u64,
    /// Per field, in the order of the [`FieldKind`]s given.
    pub fields: Vec<BlockField>,
}

/// Buckets of `events` (any order) over `window`. `kinds` says how each
/// position of [`Event::values`] is summarised. At most
/// `window.span().1` buckets come back; callers bound that first.
pub fn buckets(
    kinds: &[FieldKind],
    events: Vec<Event>,
    window: &Window,
    fill: Fill,
) -> Vec<Bucket> {
    buckets_with(kinds, events, Vec::new(), window, fill)
}

/// One thing the bucketing walks, in (event time, version) order.
enum Item<'a> {
    Event(&'a Event),
    Block(&'a Block),
}

impl Item<'_> {
    fn key(&self) -> (i64, u64) {
        match self {
            Item::Event(e) => (e.time, e.version),
            Item::Block(b) => (b.min_time, b.version),
        }
    }
}

/// [`buckets`] of `events` plus `blocks` (see [`Block`] for what the
/// caller guarantees). Sums over blocks add per-block sums, so a sum may
/// differ from the event-by-event sum in the last bits of an `f64`.
pub fn buckets_with(
    kinds: &[FieldKind],
    mut events: Vec<Event>,
    mut blocks: Vec<Block>,
    window: &Window,
    fill: Fill,
) -> Vec<Bucket> {
    let (first_start, n) = window.span();
    let n = usize::try_from(n).unwrap_or(0);
    let every = window.every;
    events.retain(|e| e.time >= window.since && e.time < window.until);
    blocks.retain(|b| b.min_time >= window.since && b.max_time < window.until);
    let mut items: Vec<Item> = events
        .iter()
        .map(Item::Event)
        .chain(blocks.iter().map(Item::Block))
        .collect();
    items.sort_by_key(Item::key);
    let mut building: Vec<Building> = (0..n)
        .map(|_| Building {
            count: 0,
            numbers: vec![None; kinds.len()],
            texts: vec![BTreeMap::new(); kinds.len()],
        })
        .collect();
    let index = |t: i64| usize::try_from((t - first_start).div_euclid(every)).unwrap_or(0);

    for item in &items {
        match item {
            Item::Event(event) => {
                let Some(bucket) = building.get_mut(index(event.time)) else {
                    continue;
                };
                bucket.count += 1;
                for (i, (kind, value)) in kinds.iter().zip(&event.values).enumerate() {
                    match (kind, value) {
                        (FieldKind::Numeric, Some(Sample::Number(x))) if x.is_finite() => {
                            if let Some(slot) = bucket.numbers.get_mut(i) {
                                match slot {
                                    Some(acc) => acc.add(*x),
                                    None => *slot = Some(Acc::new(*x)),
                                }
                            }
                        }
                        (FieldKind::Text, Some(Sample::Text(v))) => {
                            if let Some(map) = bucket.texts.get_mut(i) {
                                bump(map, v, 1, 0);
                            }
                        }
                        _ => {}
                    }
                }
            }
            Item::Block(block) => {
                let Some(bucket) = building.get_mut(index(block.min_time)) else {
                    continue;
                };
                bucket.count += block.count;
                for (i, (kind, field)) in kinds.iter().zip(&block.fields).enumerate() {
                    match kind {
                        FieldKind::Numeric => {
                            if let (Some(n), Some(slot)) =
                                (field.numbers, bucket.numbers.get_mut(i))
                            {
                                match slot {
                                    Some(acc) => acc.merge(&n),
                                    None => *slot = Some(Acc::of(&n)),
                                }
                            }
                        }
                        FieldKind::Text => {
                            if let Some(map) = bucket.texts.get_mut(i) {
                                for (value, count, held) in &field.values {
                                    bump(map, value, *count, *held);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    // Held time per text field: each carried value until the next item
    // that carries the field (or `until`), split over the buckets. A block
    // carries from its first carrier; its own holds are already counted,
    // only its last carrier's runs on.
    for (i, kind) in kinds.iter().enumerate() {
        if *kind != FieldKind::Text {
            continue;
        }
        let carried: Vec<(i64, i64, &Sample)> = items
            .iter()
            .filter_map(|item| match item {
                Item::Event(e) => e
                    .values
                    .get(i)
                    .and_then(Option::as_ref)
                    .map(|s| (e.time, e.time, s)),
                Item::Block(b) => b
                    .fields
                    .get(i)
                    .and_then(|f| f.carry.as_ref())
                    .map(|(first, last, s)| (*first, *last, s)),
            })
            .collect();
        for (j, (_, from, sample)) in carried.iter().enumerate() {
            let Sample::Text(value) = sample else {
                continue;
            };
            let to = carried.get(j + 1).map_or(window.until, |next| next.0);
            let mut t = *from;
            while t < to {
                let b = index(t);
                let bucket_end = first_start + (b as i64 + 1) * every;
                let end = to.min(bucket_end);
                if let Some(map) = building.get_mut(b).and_then(|x| x.texts.get_mut(i)) {
                    bump(map, value, 0, end - t);
                }
                t = end;
            }
        }
    }

    let mut previous: Vec<Option<f64>> = vec![None; kinds.len()];
    let mut out = Vec::new();
    for (b, bucket) in building.into_iter().enumerate() {
        let start = first_start + b as i64 * every;
        if bucket.count == 0 && fill == Fill::None {
            continue;
        }
        let mut fields = Vec::with_capacity(kinds.len());
        for (i, kind) in kinds.iter().enumerate() {
            match kind {
                FieldKind::Numeric => {
                    let acc = bucket.numbers.get(i).copied().flatten();
                    let stats = match (acc, fill, previous.get(i).copied().flatten()) {
                        (Some(acc), _, _) => Some(acc.stats()),
                        (None, Fill::Previous, Some(x)) => Some(NumberStats {
                            count: 0,
                            min: x,
                            max: x,
                            sum: None,
                            avg: x,
                            first: x,
                            last: x,
                        }),
                        _ => None,
                    };
                    if let (Some(acc), Some(slot)) = (acc, previous.get_mut(i)) {
                        *slot = Some(acc.last);
                    }
                    fields.push(FieldStats::Number(stats));
                }
                FieldKind::Text => {
                    let map = bucket.texts.get(i).cloned().unwrap_or_default();
                    let longest = map
                        .iter()
                        .filter(|(_, (_, held))| *held > 0)
                        .max_by(|a, b| a.1 .1.cmp(&b.1 .1).then(b.0.cmp(a.0)))
                        .map(|(v, _)| v.clone());
                    let values = map
                        .into_iter()
                        .map(|(value, (count, held))| ValueShare { value, count, held })
                        .collect();
                    fields.push(FieldStats::Text(ValueStats { longest, values }));
                }
            }
        }
        out.push(Bucket {
            start,
            end: start + every,
            count: bucket.count,
            fields,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KINDS: [FieldKind; 2] = [FieldKind::Numeric, FieldKind::Text];

    /// The buckets computed the slow, obvious way: for each bucket, every
    /// event is looked at again; held time is the overlap of each carried
    /// value's interval with the bucket.
    fn brute_force(events: &[Event], window: &Window, fill: Fill) -> Vec<Bucket> {
        let mut sorted: Vec<&Event> = events
            .iter()
            .filter(|e| e.time >= window.since && e.time < window.until)
            .collect();
        sorted.sort_by_key(|e| (e.time, e.version));
        let carried: Vec<(i64, &Sample)> = sorted
            .iter()
            .filter_map(|e| e.values[1].as_ref().map(|s| (e.time, s)))
            .collect();
        let mut out = Vec::new();
        let mut start = window.since.div_euclid(window.every) * window.every;
        let mut previous: Option<f64> = None;
        while start < window.until {
            let end = start + window.every;
            let inside: Vec<&&Event> = sorted
                .iter()
                .filter(|e| e.time >= start && e.time < end)
                .collect();
            let numbers: Vec<f64> = inside
                .iter()
                .filter_map(|e| match &e.values[0] {
                    Some(Sample::Number(x)) => Some(*x),
                    _ => None,
                })
                .collect();
            let number = if numbers.is_empty() {
                match (fill, previous) {
                    (Fill::Previous, Some(x)) => Some(NumberStats {
                        count: 0,
                        min: x,
                        max: x,
                        sum: None,
                        avg: x,
                        first: x,
                        last: x,
                    }),
                    _ => None,
                }
            } else {
                let sum: f64 = numbers.iter().sum();
                previous = numbers.last().copied();
                Some(NumberStats {
                    count: numbers.len() as u64,
                    min: numbers.iter().copied().fold(f64::INFINITY, f64::min),
                    max: numbers.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    sum: Some(sum),
                    avg: sum / numbers.len() as f64,
                    first: numbers[0],
                    last: numbers[numbers.len() - 1],
                })
            };
            let mut shares: BTreeMap<String, (u64, i64)> = BTreeMap::new();
            for e in &inside {
                if let Some(Sample::Text(v)) = &e.values[1] {
                    shares.entry(v.clone()).or_default().0 += 1;
                }
            }
            for (j, (from, sample)) in carried.iter().enumerate() {
                if let Sample::Text(v) = sample {
                    let to = carried.get(j + 1).map_or(window.until, |n| n.0);
                    let overlap = to.min(end) - (*from).max(start);
                    if overlap > 0 {
                        shares.entry(v.clone()).or_default().1 += overlap;
                    }
                }
            }
            let longest = shares
                .iter()
                .filter(|(_, (_, held))| *held > 0)
                .max_by(|a, b| a.1 .1.cmp(&b.1 .1).then(b.0.cmp(a.0)))
                .map(|(v, _)| v.clone());
            if !inside.is_empty() || fill != Fill::None {
                out.push(Bucket {
                    start,
                    end,
                    count: inside.len() as u64,
                    fields: vec![
                        FieldStats::Number(number),
                        FieldStats::Text(ValueStats {
                            longest,
                            values: shares
                                .into_iter()
                                .map(|(value, (count, held))| ValueShare { value, count, held })
                                .collect(),
                        }),
                    ],
                });
            }
            start = end;
        }
        out
    }

    fn sample_number() -> impl Strategy<Value = Option<Sample>> {
        prop_oneof![
            Just(None),
            Just(Some(Sample::Clear)),
            (-1000i32..1000).prop_map(|x| Some(Sample::Number(f64::from(x) / 4.0))),
        ]
    }

    fn sample_text() -> impl Strategy<Value = Option<Sample>> {
        prop_oneof![
            Just(None),
            Just(Some(Sample::Clear)),
            prop::sample::select(vec!["ok", "warn", "fault"])
                .prop_map(|s| Some(Sample::Text(s.to_string()))),
        ]
    }

    /// A stream in arrival (version) order whose event times jump around:
    /// late events, duplicates of one instant, gaps (retention holes).
    fn stream() -> impl Strategy<Value = Vec<Event>> {
        prop::collection::vec((0i64..10_000, sample_number(), sample_text()), 0..120).prop_map(
            |rows| {
                rows.into_iter()
                    .enumerate()
                    .map(|(i, (time, n, t))| Event {
                        time,
                        version: i as u64 + 1,
                        values: vec![n, t],
                    })
                    .collect()
            },
        )
    }

    fn fill() -> impl Strategy<Value = Fill> {
        prop::sample::select(vec![Fill::None, Fill::Null, Fill::Previous])
    }

    proptest! {
        #[test]
        fn buckets_equal_a_brute_force_computation(
            events in stream(),
            since in -500i64..5_000,
            len in 1i64..12_000,
            every in 1i64..3_000,
            fill in fill(),
        ) {
            let window = Window { since, until: since + len, every };
            let got = buckets(&KINDS, events.clone(), &window, fill);
            let want = brute_force(&events, &window, fill);
            prop_assert_eq!(got, want);
        }
    }

    /// A block summarising `events` (sorted by time, version) the obvious
    /// way: the oracle for [`Block`] semantics.
    fn block_of(events: &[&Event]) -> Block {
        let mut fields = Vec::new();
        for (i, kind) in KINDS.iter().enumerate() {
            let mut field = BlockField::default();
            let carried: Vec<(i64, &Sample)> = events
                .iter()
                .filter_map(|e| e.values[i].as_ref().map(|s| (e.time, s)))
                .collect();
            match kind {
                FieldKind::Numeric => {
                    let xs: Vec<f64> = carried
                        .iter()
                        .filter_map(|(_, s)| match s {
                            Sample::Number(x) => Some(*x),
                            _ => None,
                        })
                        .collect();
                    if !xs.is_empty() {
                        field.numbers = Some(BlockNumbers {
                            count: xs.len() as u64,
                            min: xs.iter().copied().fold(f64::INFINITY, f64::min),
                            max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                            sum: xs.iter().sum(),
                            first: xs[0],
                            last: xs[xs.len() - 1],
                        });
                    }
                }
                FieldKind::Text => {
                    let mut shares: BTreeMap<String, (u64, i64)> = BTreeMap::new();
                    for (j, (t, s)) in carried.iter().enumerate() {
                        if let Sample::Text(v) = s {
                            let share = shares.entry(v.clone()).or_default();
                            share.0 += 1;
                            if let Some(next) = carried.get(j + 1) {
                                share.1 += next.0 - t;
                            }
                        }
                    }
                    field.values = shares.into_iter().map(|(v, (c, h))| (v, c, h)).collect();
                    if let (Some(first), Some(last)) = (carried.first(), carried.last()) {
                        field.carry = Some((first.0, last.0, last.1.clone()));
                    }
                }
            }
            fields.push(field);
        }
        Block {
            min_time: events[0].time,
            max_time: events[events.len() - 1].time,
            version: events.iter().map(|e| e.version).min().unwrap_or(0),
            count: events.len() as u64,
            fields,
        }
    }

    proptest! {
        /// Any run of events inside one bucket and time-disjoint from the
        /// rest may be replaced by its block: the buckets do not change.
        #[test]
        fn blocks_stand_in_for_their_events(
            events in stream(),
            since in -500i64..5_000,
            len in 1i64..12_000,
            every in 1i64..3_000,
            fill in fill(),
            cuts in prop::collection::vec(any::<bool>(), 120),
            summarise in prop::collection::vec(any::<bool>(), 120),
        ) {
            let window = Window { since, until: since + len, every };
            let want = buckets(&KINDS, events.clone(), &window, fill);
            let mut sorted: Vec<&Event> = events
                .iter()
                .filter(|e| e.time >= window.since && e.time < window.until)
                .collect();
            sorted.sort_by_key(|e| (e.time, e.version));
            // Runs: a new run where the bucket changes, or (randomly) where
            // time strictly increases; equal times never split.
            let bucket = |t: i64| t.div_euclid(every);
            let mut runs: Vec<Vec<&Event>> = Vec::new();
            for (j, e) in sorted.iter().enumerate() {
                let split = match j.checked_sub(1).map(|p| sorted[p]) {
                    None => true,
                    Some(prev) => bucket(prev.time) != bucket(e.time)
                        || (prev.time < e.time && cuts[j % cuts.len()]),
                };
                if split {
                    runs.push(Vec::new());
                }
                if let Some(run) = runs.last_mut() {
                    run.push(*e);
                }
            }
            let mut loose = Vec::new();
            let mut blocks = Vec::new();
            for (j, run) in runs.iter().enumerate() {
                if summarise[j % summarise.len()] {
                    blocks.push(block_of(run));
                } else {
                    loose.extend(run.iter().map(|e| (*e).clone()));
                }
            }
            let got = buckets_with(&KINDS, loose, blocks, &window, fill);
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn windows_align_to_the_epoch_and_late_events_land_by_event_time() {
        let e = |time, version, x: f64, s: &str| Event {
            time,
            version,
            values: vec![Some(Sample::Number(x)), Some(Sample::Text(s.to_string()))],
        };
        // Arrival order 1..4; the third arrives late for the first bucket.
        let events = vec![
            e(10, 1, 1.0, "ok"),
            e(25, 2, 5.0, "fault"),
            e(15, 3, 3.0, "ok"),
            e(38, 4, 2.0, "ok"),
        ];
        let window = Window {
            since: 5,
            until: 40,
            every: 10,
        };
        assert_eq!(window.span(), (0, 4));
        let got = buckets(&KINDS, events, &window, Fill::None);
        let starts: Vec<i64> = got.iter().map(|b| b.start).collect();
        assert_eq!(starts, [10, 20, 30], "bucket [0, 10) is empty, left out");
        let FieldStats::Number(Some(first)) = &got[0].fields[0] else {
            panic!("stats")
        };
        assert_eq!(
            (first.count, first.first, first.last, first.avg),
            (2, 1.0, 3.0, 2.0)
        );
        // `fault` is held from 25 to 38: 5 µs in [20, 30), 8 in [30, 40).
        let FieldStats::Text(third) = &got[2].fields[1] else {
            panic!("text")
        };
        assert_eq!(third.longest.as_deref(), Some("fault"));
        assert_eq!(
            third.values[0],
            ValueShare {
                value: "fault".into(),
                count: 0,
                held: 8
            }
        );
        assert_eq!(
            third.values[1],
            ValueShare {
                value: "ok".into(),
                count: 1,
                held: 2
            }
        );
    }
}
