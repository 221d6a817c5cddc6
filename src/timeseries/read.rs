//! One entity's `series` from the store: chunk block summaries where they
//! stand in for the events (`store/series_read.rs` decides which), decoded
//! events everywhere else, bucketed by [`buckets_with`].
//!
//! Summaries hold the values as stored, so they are used only when the
//! caller's role sees every summarised field unmasked (`summaries`); with
//! a mask on any of them every chunk is decoded and `mask` applied per
//! event, so a `round` mask aggregates rounded values. A row filter hides
//! the whole entity (the caller checks it before), so it never needs the
//! events.

use std::sync::atomic::{AtomicU64, Ordering};

use super::buckets::{
    buckets_with, Block, BlockField, BlockNumbers, Bucket, Event, FieldKind, Fill, Sample, Window,
};
use crate::record::{Fields, Timestamp, Value};
use crate::store::{Store, StoreError};

static CHUNKS_SUMMARISED: AtomicU64 = AtomicU64::new(0);
static CHUNKS_DECODED: AtomicU64 = AtomicU64::new(0);
static EVENTS_SUMMARISED: AtomicU64 = AtomicU64::new(0);
static EVENTS_DECODED: AtomicU64 = AtomicU64::new(0);

/// What one call computed and what it cost.
#[derive(Debug)]
pub struct SeriesOutcome {
    pub buckets: Vec<Bucket>,
    /// Chunks read as summaries (header only, body not decompressed).
    pub chunks_summarised: u64,
    /// Chunks decompressed and decoded.
    pub chunks_decoded: u64,
    /// Events covered by summaries.
    pub events_summarised: u64,
    /// Events decompressed (every event of each decoded chunk).
    pub events_decoded: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SeriesError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// More than the bound of events (plus summary blocks) in the window.
    #[error("more than {0} events lie in the window")]
    TooLarge(usize),
}

/// A history event's fields as the bucketing sees them (already masked).
pub(crate) fn event_of(
    time: i64,
    version: u64,
    fields: &Fields,
    spec: &[(String, FieldKind)],
) -> Event {
    let values = spec
        .iter()
        .map(|(name, kind)| {
            fields.get(name).map(|value| match (kind, value) {
                (FieldKind::Numeric, Value::Int(i)) => Sample::Number(*i as f64),
                (FieldKind::Numeric, Value::Float(x)) => Sample::Number(*x),
                (FieldKind::Text, Value::String(s)) => Sample::Text(s.clone()),
                _ => Sample::Clear,
            })
        })
        .collect();
    Event {
        time,
        version,
        values,
    }
}

/// The buckets of `entity` over `window`: `spec` names the fields (in the
/// order of the bucket's statistics), `summaries` whether chunk summaries
/// may be used (false: decode everything, as for a masked role; the
/// baseline of `benches/timeseries.rs`), `mask` what is applied to each
/// decoded event's fields, `max_items` the bound on decoded events plus
/// summary blocks held at once.
#[allow(clippy::too_many_arguments)]
pub fn entity_series(
    store: &Store,
    product: &str,
    entity: &str,
    spec: &[(String, FieldKind)],
    window: &Window,
    fill: Fill,
    summaries: bool,
    max_items: usize,
    mask: &dyn Fn(&mut Fields),
) -> Result<SeriesOutcome, SeriesError> {
    let _span = tracing::debug_span!("series", product, entity, summaries).entered();
    let every = window.every;
    let texts: Vec<&str> = spec
        .iter()
        .filter(|(_, kind)| *kind == FieldKind::Text)
        .map(|(name, _)| name.as_str())
        .collect();
    let usable = |names: &[String], block: &crate::store::BlockSummary| {
        block.min_time.div_euclid(every) == block.max_time.div_euclid(every)
            && block.fields.iter().all(|field| {
                field.text.is_some()
                    || !names
                        .get(field.name as usize)
                        .is_some_and(|n| texts.contains(&n.as_str()))
            })
    };
    let read = store
        .series_read(
            product,
            entity,
            (Timestamp(window.since), Timestamp(window.until)),
            summaries,
            &usable,
            max_items,
        )
        .map_err(|e| match e {
            crate::store::SeriesReadError::Store(e) => SeriesError::Store(e),
            crate::store::SeriesReadError::TooLarge(n) => SeriesError::TooLarge(n),
        })?;
    CHUNKS_SUMMARISED.fetch_add(read.chunks_summarised, Ordering::Relaxed);
    CHUNKS_DECODED.fetch_add(read.chunks_decoded, Ordering::Relaxed);
    EVENTS_SUMMARISED.fetch_add(read.events_summarised, Ordering::Relaxed);
    EVENTS_DECODED.fetch_add(read.events_decoded, Ordering::Relaxed);
    let events: Vec<Event> = read
        .events
        .into_iter()
        .map(|mut e| {
            mask(&mut e.fields);
            event_of(e.event_time.as_micros(), e.version, &e.fields, spec)
        })
        .collect();
    // Which position of `spec` each of a chunk's field names feeds, worked
    // out once per chunk (its blocks share one `Arc` of names), not by a
    // string search per block and field.
    let mut positions: Vec<Option<usize>> = Vec::new();
    let mut names_seen: *const Vec<String> = std::ptr::null();
    let mut blocks: Vec<Block> = Vec::with_capacity(read.blocks.len());
    for (names, block) in read.blocks {
        if !std::ptr::eq(std::sync::Arc::as_ptr(&names), names_seen) {
            names_seen = std::sync::Arc::as_ptr(&names);
            positions = names
                .iter()
                .map(|name| spec.iter().position(|(n, _)| n == name))
                .collect();
        }
        let mut fields = vec![BlockField::default(); spec.len()];
        for field in block.fields {
            let Some(i) = positions.get(field.name as usize).copied().flatten() else {
                continue;
            };
            let (Some(slot), Some((_, kind))) = (fields.get_mut(i), spec.get(i)) else {
                continue;
            };
            match kind {
                FieldKind::Numeric => {
                    slot.numbers = field.numbers.map(|n| BlockNumbers {
                        count: n.count,
                        min: n.min,
                        max: n.max,
                        sum: n.sum,
                        first: n.first,
                        last: n.last,
                    });
                }
                FieldKind::Text => {
                    if let Some(text) = field.text {
                        slot.values = text.values;
                        slot.carry = Some((
                            text.first_carry,
                            text.last_carry.0,
                            match text.last_carry.1 {
                                Some(s) => Sample::Text(s),
                                None => Sample::Clear,
                            },
                        ));
                    }
                }
            }
        }
        blocks.push(Block {
            min_time: block.min_time,
            max_time: block.max_time,
            version: block.min_version,
            count: block.count,
            fields,
        });
    }
    let kinds: Vec<FieldKind> = spec.iter().map(|(_, kind)| *kind).collect();
    Ok(SeriesOutcome {
        buckets: buckets_with(&kinds, events, blocks, window, fill),
        chunks_summarised: read.chunks_summarised,
        chunks_decoded: read.chunks_decoded,
        events_summarised: read.events_summarised,
        events_decoded: read.events_decoded,
    })
}

/// The `series` read counters for `/metrics`.
pub(crate) fn encode_metrics(
    enc: &mut crate::telemetry::expose::Encoder<'_>,
) -> crate::telemetry::expose::Encoded {
    let mut f = crate::telemetry::expose::counter_family(
        enc,
        "meshlet_series_chunks_total",
        "History chunks `series` read: as their sealed summaries (body not decompressed) or decoded (no summary, a mask on a summarised field, a block across buckets or overlapping late events).",
    )?;
    f.sample(
        &[("read", "summary")],
        CHUNKS_SUMMARISED.load(Ordering::Relaxed),
    )?;
    f.sample(
        &[("read", "decoded")],
        CHUNKS_DECODED.load(Ordering::Relaxed),
    )?;
    let mut f = crate::telemetry::expose::counter_family(
        enc,
        "meshlet_series_events_total",
        "History events `series` covered: by chunk summaries, or decompressed.",
    )?;
    f.sample(
        &[("read", "summary")],
        EVENTS_SUMMARISED.load(Ordering::Relaxed),
    )?;
    f.sample(
        &[("read", "decoded")],
        EVENTS_DECODED.load(Ordering::Relaxed),
    )?;
    crate::store::encode_projection_metrics(enc)
}
