//! Per-field summaries sealed into a chunk's frame (pure, no I/O).
//!
//! Why: `series` over a long window (30 days of a 1 Hz sensor into 5-minute
//! buckets: 2.6M events) must not decompress every event. When a chunk is
//! sealed, its events are cut into *blocks* of event time aligned to the
//! Unix epoch, and per block and field the store keeps what a bucket needs:
//! count/min/max/sum/first/last over the numbers, and for text states the
//! events and µs per value plus where the state started and ended. A
//! bucket then reads a block's summary instead of its events whenever the
//! block lies wholly inside the bucket and no other event of the window
//! falls into the block's time range (late events can make ranges
//! overlap; then the chunk is decoded — see `series_read.rs`).
//!
//! Why blocks and not one summary per chunk: chunks are cut by arrival
//! count (256 events), not by time, so a chunk of a 1 Hz stream spans
//! ~4.3 minutes and almost never lies inside one 5-minute bucket. Blocks
//! cut at epoch-aligned multiples of [`GRANULARITIES`] do: a bucket whose
//! width is a multiple of the block width holds whole blocks. The width is
//! the smallest that keeps a chunk at [`max_blocks`] blocks (at least
//! [`MIN_MAX_BLOCKS`], and one per [`EVENTS_PER_BLOCK`] events of a larger
//! chunk), so a slow stream (one event a minute) gets hour blocks instead
//! of one summary per event, and a block holds tens of events on average:
//! the summary stays a fraction of the chunk.
//!
//! The summary is schema-free (the store does not know field types): a
//! number is an `Int` or a finite `Float` (as `f64`); a text state is a
//! `String`, and any other carried value (null, bool, number) clears it —
//! exactly how `api/graphql/series.rs` turns an event into samples, so a
//! summary and the decoded events give the same buckets. A field with more
//! than [`MAX_TEXT_VALUES`] distinct strings in one block (free text, not a
//! state) gets no text summary; such a field is decoded when a bucket needs
//! its text statistics.
//!
//! Encoded in the binary layout of `summary_codec.rs` (format 2) behind a
//! format byte; chunks sealed earlier hold MessagePack (format 1), still
//! read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::codec::CodecError;
use super::stored::StoredEvent;
use super::summary_codec;
use crate::record::Value;

/// Block widths tried, smallest first, in µs: 1 minute, 5 minutes, 1
/// hour, 1 day. Buckets of `1m`, `5m`, `1h`, `1d` (what dashboards ask)
/// hold whole blocks of every width up to their own.
pub(crate) const GRANULARITIES: [i64; 4] = [60_000_000, 300_000_000, 3_600_000_000, 86_400_000_000];

/// Fewest blocks a chunk may be cut into before a wider block is tried
/// (a 256-event chunk of a 1 Hz stream, ~256 s: 1–2 blocks of 5 minutes).
pub(crate) const MIN_MAX_BLOCKS: usize = 4;

/// Events per block a large chunk is allowed on average: a chunk of 1,024
/// events of a 1 Hz stream (~17 minutes) may have 16 blocks, so it gets
/// 5-minute blocks (4–5), not hour blocks, and not 1-minute ones (18).
pub(crate) const EVENTS_PER_BLOCK: usize = 64;

/// Most blocks a chunk of `events` events is cut into.
pub(crate) fn max_blocks(events: usize) -> usize {
    (events / EVENTS_PER_BLOCK).max(MIN_MAX_BLOCKS)
}

/// Most distinct strings per field and block kept as a text summary.
pub(crate) const MAX_TEXT_VALUES: usize = 16;

/// Format 1: MessagePack (structs as arrays). Written until format 2
/// (`summary_codec.rs`); still read.
const SUMMARY_FORMAT_MSGPACK: u8 = 1;

/// Numbers of one field in one block, in event-time order.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct NumberSummary {
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub first: f64,
    pub last: f64,
}

/// A text state of one field in one block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct TextSummary {
    /// Per string value: events that carried it, and µs it was held
    /// between carriers *inside* the block (the last carrier's hold runs
    /// past the block and is the reader's to add).
    pub values: Vec<(String, u64, i64)>,
    /// Event time of the first event carrying the field (any value).
    pub first_carry: i64,
    /// Event time and value of the last event carrying the field; `None`:
    /// it carried a non-string (the state is cleared).
    pub last_carry: (i64, Option<String>),
}

/// One field in one block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct FieldSummary {
    /// Index into [`ChunkSummary::names`].
    pub name: u32,
    pub numbers: Option<NumberSummary>,
    /// `None`: the field carried nothing in the block, or too many
    /// distinct strings (see `complete_text`).
    pub text: Option<TextSummary>,
    /// False when the text summary was left out for too many values.
    pub complete_text: bool,
}

/// The events of one chunk inside one block of event time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct BlockSummary {
    pub min_time: i64,
    pub max_time: i64,
    /// Smallest version in the block (orders blocks of one instant).
    pub min_version: u64,
    pub count: u64,
    /// Only fields present in some event of the block.
    pub fields: Vec<FieldSummary>,
}

/// A chunk's blocks, ascending and disjoint in event time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ChunkSummary {
    /// Block width in µs (one of [`GRANULARITIES`]), 0 for one block
    /// holding the whole chunk.
    pub granularity: i64,
    pub names: Vec<String>,
    pub blocks: Vec<BlockSummary>,
}

fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Int(i) => Some(*i as f64),
        Value::Float(x) if x.is_finite() => Some(*x),
        _ => None,
    }
}

/// The summary of `events` (any order).
pub(crate) fn summarise(events: &[StoredEvent]) -> ChunkSummary {
    let mut sorted: Vec<&StoredEvent> = events.iter().collect();
    sorted.sort_by_key(|e| (e.event_time.0, e.version));
    let (min, max) = match (sorted.first(), sorted.last()) {
        (Some(a), Some(b)) => (a.event_time.0, b.event_time.0),
        _ => {
            return ChunkSummary {
                granularity: 0,
                names: Vec::new(),
                blocks: Vec::new(),
            }
        }
    };
    let granularity = GRANULARITIES
        .iter()
        .copied()
        .find(|g| {
            let blocks = max.div_euclid(*g) - min.div_euclid(*g) + 1;
            blocks <= max_blocks(events.len()) as i64
        })
        .unwrap_or(0);
    let mut names: Vec<String> = events
        .iter()
        .flat_map(|e| e.fields.keys().cloned())
        .collect();
    names.sort();
    names.dedup();
    let mut blocks = Vec::new();
    let mut start = 0;
    while start < sorted.len() {
        let key = |e: &StoredEvent| {
            if granularity == 0 {
                0
            } else {
                e.event_time.0.div_euclid(granularity)
            }
        };
        let k = key(sorted[start]);
        let mut end = start;
        while end < sorted.len() && key(sorted[end]) == k {
            end += 1;
        }
        blocks.push(block(&names, &sorted[start..end]));
        start = end;
    }
    ChunkSummary {
        granularity,
        names,
        blocks,
    }
}

/// One block of events sorted by (event time, version).
fn block(names: &[String], events: &[&StoredEvent]) -> BlockSummary {
    let mut fields = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let mut numbers: Option<NumberSummary> = None;
        let mut values: BTreeMap<&str, (u64, i64)> = BTreeMap::new();
        let mut first_carry = None;
        let mut last_carry: Option<(i64, Option<&str>)> = None;
        for event in events {
            let Some(value) = event.fields.get(name) else {
                continue;
            };
            let time = event.event_time.0;
            if let Some(x) = number(value) {
                match &mut numbers {
                    Some(n) => {
                        n.count += 1;
                        n.min = n.min.min(x);
                        n.max = n.max.max(x);
                        n.sum += x;
                        n.last = x;
                    }
                    None => {
                        numbers = Some(NumberSummary {
                            count: 1,
                            min: x,
                            max: x,
                            sum: x,
                            first: x,
                            last: x,
                        })
                    }
                }
            }
            if let Some((from, Some(held))) = last_carry {
                values.entry(held).or_insert((0, 0)).1 += time - from;
            }
            let text = match value {
                Value::String(s) => {
                    values.entry(s.as_str()).or_insert((0, 0)).0 += 1;
                    Some(s.as_str())
                }
                _ => None,
            };
            first_carry.get_or_insert(time);
            last_carry = Some((time, text));
        }
        if first_carry.is_none() {
            continue;
        }
        let complete_text = values.len() <= MAX_TEXT_VALUES;
        let text = match (complete_text, first_carry, last_carry) {
            (true, Some(first_carry), Some((time, value))) => Some(TextSummary {
                values: values
                    .into_iter()
                    .map(|(v, (count, held))| (v.to_string(), count, held))
                    .collect(),
                first_carry,
                last_carry: (time, value.map(str::to_string)),
            }),
            _ => None,
        };
        fields.push(FieldSummary {
            name: index as u32,
            numbers,
            text,
            complete_text,
        });
    }
    BlockSummary {
        min_time: events.first().map_or(0, |e| e.event_time.0),
        max_time: events.last().map_or(0, |e| e.event_time.0),
        min_version: events.iter().map(|e| e.version).min().unwrap_or(0),
        count: events.len() as u64,
        fields,
    }
}

/// `[format][MessagePack arrays]`.
pub(crate) fn encode_summary(summary: &ChunkSummary) -> Result<Vec<u8>, CodecError> {
    Ok(summary_codec::encode(summary))
}

/// Format 1 (MessagePack, what chunks sealed before format 2 hold), kept
/// for its test: old chunks must still decode.
#[cfg(test)]
pub(crate) fn encode_summary_v1(summary: &ChunkSummary) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![SUMMARY_FORMAT_MSGPACK];
    rmp_serde::encode::write(&mut out, summary)
        .map_err(|e| CodecError(format!("chunk summary: {e}")))?;
    Ok(out)
}

pub(crate) fn decode_summary(bytes: &[u8]) -> Result<ChunkSummary, CodecError> {
    match bytes.split_first() {
        Some((&summary_codec::FORMAT_BINARY, rest)) => summary_codec::decode(rest),
        Some((&SUMMARY_FORMAT_MSGPACK, rest)) => {
            rmp_serde::from_slice(rest).map_err(|e| CodecError(format!("chunk summary: {e}")))
        }
        Some((other, _)) => Err(CodecError(format!("unknown chunk summary format {other}"))),
        None => Err(CodecError("empty chunk summary".to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Fields, Origin, Timestamp};

    fn event(version: u64, time: i64, temp: Value, status: Option<&str>) -> StoredEvent {
        let mut fields = Fields::new();
        fields.insert("temp".into(), temp);
        if let Some(s) = status {
            fields.insert("status".into(), Value::String(s.into()));
        }
        StoredEvent {
            version,
            event_time: Timestamp(time),
            received_at: Timestamp(time),
            fields,
            origin: Origin::new("o"),
        }
    }

    #[test]
    fn one_hertz_chunks_get_five_minute_blocks_in_time_order() {
        // 256 s of 1 Hz starting 10 s before a 5-minute boundary, arriving
        // with one late event.
        let base = 300_000_000 * 1000 - 10_000_000;
        let mut events: Vec<StoredEvent> = (0..256)
            .map(|i| {
                event(
                    i + 1,
                    base + i as i64 * 1_000_000,
                    Value::Float(i as f64),
                    Some(if i < 5 { "ok" } else { "fault" }),
                )
            })
            .collect();
        events.swap(3, 7);
        let summary = summarise(&events);
        assert_eq!(summary.granularity, 300_000_000);
        assert_eq!(summary.blocks.len(), 2);
        let [a, b] = &summary.blocks[..] else {
            panic!("two blocks")
        };
        assert_eq!((a.count, b.count), (10, 246));
        assert!(a.max_time < b.min_time);
        let temp = summary.names.iter().position(|n| n == "temp").unwrap() as u32;
        let numbers = a
            .fields
            .iter()
            .find(|f| f.name == temp)
            .and_then(|f| f.numbers)
            .unwrap();
        assert_eq!((numbers.first, numbers.last, numbers.sum), (0.0, 9.0, 45.0));
        let status = summary.names.iter().position(|n| n == "status").unwrap() as u32;
        let text = a
            .fields
            .iter()
            .find(|f| f.name == status)
            .and_then(|f| f.text.clone())
            .unwrap();
        // ok held 0→5 s, fault 5→9 s inside the block; the last carrier's
        // hold (from 9 s on) is the reader's.
        assert_eq!(
            text.values,
            vec![("fault".into(), 5, 4_000_000), ("ok".into(), 5, 5_000_000)]
        );
        assert_eq!(text.last_carry, (base + 9_000_000, Some("fault".into())));
        let back = decode_summary(&encode_summary(&summary).unwrap()).unwrap();
        assert_eq!(back, summary);
    }

    #[test]
    fn format_one_summaries_still_decode_and_format_two_is_smaller() {
        let events: Vec<StoredEvent> = (0..256)
            .map(|i| {
                let status = ["ok", "idle", "fault"][(i / 40) % 3];
                event(
                    i as u64 + 1,
                    i as i64 * 1_000_000,
                    Value::Float(20.5 + i as f64 / 10.0),
                    Some(status),
                )
            })
            .collect();
        let summary = summarise(&events);
        let v1 = encode_summary_v1(&summary).unwrap();
        let v2 = encode_summary(&summary).unwrap();
        assert_eq!(v2[0], summary_codec::FORMAT_BINARY);
        assert_eq!(decode_summary(&v1).unwrap(), summary);
        assert_eq!(decode_summary(&v2).unwrap(), summary);
        assert!(
            v2.len() < v1.len(),
            "format 2 {} vs 1 {}",
            v2.len(),
            v1.len()
        );
    }

    #[test]
    fn corrupt_format_two_is_refused_not_a_panic() {
        let events: Vec<StoredEvent> = (0..64)
            .map(|i| {
                event(
                    i + 1,
                    i as i64 * 1_000_000,
                    Value::Int(i as i64),
                    Some("ok"),
                )
            })
            .collect();
        let bytes = encode_summary(&summarise(&events)).unwrap();
        for cut in 1..bytes.len() {
            assert!(decode_summary(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_summary(&longer).is_err());
        // A count far beyond the bytes left allocates nothing.
        assert!(
            decode_summary(&[summary_codec::FORMAT_BINARY, 0, 0xff, 0xff, 0xff, 0x7f]).is_err()
        );
    }

    #[test]
    fn a_large_chunk_of_a_one_hertz_stream_keeps_five_minute_blocks() {
        let base = 300_000_000 * 1000;
        let events: Vec<StoredEvent> = (0..1024)
            .map(|i| {
                event(
                    i + 1,
                    base + i as i64 * 1_000_000,
                    Value::Int(i as i64),
                    None,
                )
            })
            .collect();
        let summary = summarise(&events);
        assert_eq!(summary.granularity, 300_000_000);
        assert_eq!(summary.blocks.len(), 4);
        assert_eq!(max_blocks(256), 4);
        assert_eq!(max_blocks(4096), 64);
    }

    #[test]
    fn slow_streams_get_wide_blocks_and_free_text_no_text_summary() {
        let events: Vec<StoredEvent> = (0..256)
            .map(|i| {
                event(
                    i + 1,
                    i as i64 * 60_000_000,
                    Value::Int(i as i64),
                    Some(&format!("message {i}")),
                )
            })
            .collect();
        let summary = summarise(&events);
        assert_eq!(summary.granularity, 86_400_000_000);
        assert_eq!(summary.blocks.len(), 1);
        let status = summary.names.iter().position(|n| n == "status").unwrap() as u32;
        let field = summary.blocks[0]
            .fields
            .iter()
            .find(|f| f.name == status)
            .unwrap();
        assert!(!field.complete_text && field.text.is_none());
        assert!(decode_summary(&[9, 0]).is_err());
        assert!(decode_summary(&[]).is_err());
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;
    use crate::record::{Fields, Origin, Timestamp};
    use proptest::prelude::*;

    proptest! {
        /// Format 2 gives back exactly the summary it was given, whatever
        /// the events (numbers, cleared states, many strings, negative
        /// times, wide spans).
        #[test]
        fn format_two_round_trips(raw in proptest::collection::vec(
            (-5_000_000_000i64..5_000_000_000, 0u8..6, -1e9f64..1e9, 0u8..20), 1..300)) {
            let events: Vec<StoredEvent> = raw
                .iter()
                .enumerate()
                .map(|(i, (time, kind, x, s))| {
                    let mut fields = Fields::new();
                    match kind {
                        0 => { fields.insert("a".into(), Value::Int(*x as i64)); }
                        1 => { fields.insert("a".into(), Value::Float(*x)); }
                        2 => { fields.insert("b".into(), Value::String(format!("s{s}"))); }
                        3 => { fields.insert("b".into(), Value::Null); }
                        4 => { fields.insert("c".into(), Value::Bool(true)); }
                        _ => {
                            fields.insert("a".into(), Value::Float(*x));
                            fields.insert("b".into(), Value::String("é".repeat(*s as usize)));
                        }
                    }
                    StoredEvent {
                        version: i as u64 + 1,
                        event_time: Timestamp(*time),
                        received_at: Timestamp(*time),
                        fields,
                        origin: Origin::new("o"),
                    }
                })
                .collect();
            let summary = summarise(&events);
            let back = decode_summary(&encode_summary(&summary).unwrap()).unwrap();
            prop_assert_eq!(back, summary);
        }
    }
}
