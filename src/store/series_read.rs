//! The read behind `series`: an entity's history in an event-time window
//! as chunk *block summaries* where they can stand in for the events, and
//! decoded events everywhere else.
//!
//! A block summary (`chunk_summary.rs`) stands in for its events only if
//! the buckets computed from it equal those computed from the events:
//!
//! - the block lies wholly inside `[since, until)` and inside one bucket
//!   (the caller's `usable` says so, and also whether the summary carries
//!   what the caller needs — a text state left out for too many values
//!   does not);
//! - no other event of the window (another chunk's block, a chunk without
//!   summary, the open tail) has an event time inside the block's closed
//!   range `[min, max]`: late events can make chunks overlap in time, and
//!   then first/last and the held time of a text state depend on how the
//!   events interleave.
//!
//! A chunk is either used wholly as summaries or decoded wholly (decoding
//! is what costs; once paid, its events are exact). Chunks sealed without
//! a summary (before summaries existed, or with `history_summaries` off)
//! are decoded: old data answers the same, only slower. Both passes run
//! inside [`Store::consistent_with_instance`], so a concurrent seal,
//! merge or retention rewrite retries the read instead of mixing states.

use super::chunk::{decode_chunk, decode_chunk_summary};
use super::chunk_summary::{BlockSummary, ChunkSummary};
use super::codec;
use super::keys::{entity_prefix, parse_history_key, TAG_CHUNK, TAG_TAIL};
use super::read::decode_stored_instance;
use super::stored::StoredEvent;
use super::{HistoryEvent, Store, StoreError, HISTORY};
use crate::record::Timestamp;

/// What [`Store::series_read`] found.
#[derive(Debug, Default)]
pub(crate) struct SeriesChunks {
    /// Events of the window not covered by a summary (any order).
    pub events: Vec<HistoryEvent>,
    /// Blocks standing in for their events, with their chunk's field names.
    pub blocks: Vec<(std::sync::Arc<Vec<String>>, BlockSummary)>,
    pub chunks_summarised: u64,
    pub chunks_decoded: u64,
    pub events_summarised: u64,
    /// Events decompressed (all of each decoded chunk, in window or not).
    pub events_decoded: u64,
}

/// Why the read stopped.
#[derive(Debug)]
pub(crate) enum SeriesReadError {
    Store(StoreError),
    /// More than the caller's bound of events plus blocks lie in the window.
    TooLarge(usize),
}

impl From<StoreError> for SeriesReadError {
    fn from(e: StoreError) -> Self {
        SeriesReadError::Store(e)
    }
}

/// One sealed chunk meeting the window, after the first pass.
struct Candidate {
    key: Vec<u8>,
    /// The header's event-time range (what a chunk without summary spans).
    range: (i64, i64),
    summary: Option<ChunkSummary>,
}

impl Store {
    /// The window `[since, until)` of one entity's history, as block
    /// summaries (only if `summaries`) and decoded events. `usable(names,
    /// block)` decides whether a block may stand in for its events (one
    /// bucket, and the statistics the caller needs are complete). At most
    /// `max_items` decoded events plus blocks, else
    /// [`SeriesReadError::TooLarge`].
    pub(crate) fn series_read(
        &self,
        product: &str,
        entity: &str,
        (since, until): (Timestamp, Timestamp),
        summaries: bool,
        usable: &dyn Fn(&[String], &BlockSummary) -> bool,
        max_items: usize,
    ) -> Result<SeriesChunks, SeriesReadError> {
        self.check_entity(product, entity)?;
        let trees = self.product(product)?;
        let in_window = |t: i64| t >= since.0 && t < until.0;
        let outcome = self.consistent_with_instance(&trees, entity, |instance| {
            let Some(instance) = instance else {
                return Ok(Ok(SeriesChunks::default()));
            };
            let corrupt = |what: &'static str, e: codec::CodecError| {
                StoreError::corrupt(product, entity, what, e)
            };
            let mut out = SeriesChunks::default();
            let mut candidates: Vec<Candidate> = Vec::new();
            let mut loose: Vec<StoredEvent> = Vec::new();
            for item in trees.history.scan_prefix(entity_prefix(entity)) {
                let (key, value) = item.map_err(|e| {
                    StoreError::sled(
                        format!("product `{product}`, entity `{entity}`: reading history"),
                        e,
                    )
                })?;
                let (tag, _) = parse_history_key(&key).ok_or_else(|| {
                    StoreError::corrupt(product, entity, "history key", "malformed key")
                })?;
                let plain = trees
                    .open(HISTORY, &key, &value)
                    .map_err(|e| corrupt("history entry", e))?;
                match tag {
                    TAG_CHUNK => {
                        let (header, summary) = decode_chunk_summary(&plain)
                            .map_err(|e| corrupt("history chunk", e))?;
                        if header.max_event_time < since || header.min_event_time >= until {
                            continue;
                        }
                        candidates.push(Candidate {
                            key: key.to_vec(),
                            range: (header.min_event_time.0, header.max_event_time.0),
                            summary: if summaries { summary } else { None },
                        });
                    }
                    TAG_TAIL => {
                        let event: StoredEvent =
                            codec::decode(&plain).map_err(|e| corrupt("history event", e))?;
                        if in_window(event.event_time.0) {
                            loose.push(event);
                        }
                    }
                    other => {
                        return Err(StoreError::corrupt(
                            product,
                            entity,
                            "history key",
                            format!("unknown tag {other}"),
                        ))
                    }
                }
            }
            let state = decode_stored_instance(&trees, entity, instance)?;
            for event in &state.tail {
                let event = event.decode().map_err(|e| corrupt("history event", e))?;
                if in_window(event.event_time.0) {
                    loose.push(event);
                }
            }

            // Closed event-time ranges of everything in the window; which
            // candidate (if any) each belongs to.
            let mut ranges: Vec<(i64, i64, Option<usize>)> = Vec::new();
            for (i, candidate) in candidates.iter().enumerate() {
                match &candidate.summary {
                    Some(summary) => ranges.extend(
                        summary
                            .blocks
                            .iter()
                            .filter(|b| b.max_time >= since.0 && b.min_time < until.0)
                            .map(|b| (b.min_time, b.max_time, Some(i))),
                    ),
                    None => ranges.push((candidate.range.0, candidate.range.1, Some(i))),
                }
            }
            ranges.extend(loose.iter().map(|e| (e.event_time.0, e.event_time.0, None)));
            ranges.sort_unstable_by_key(|r| (r.0, r.1));
            let mut overlapping = vec![false; candidates.len()];
            let mut reach = i64::MIN;
            for (j, &(min, max, owner)) in ranges.iter().enumerate() {
                let before = j > 0 && reach >= min;
                let after = ranges.get(j + 1).is_some_and(|next| next.0 <= max);
                if before || after {
                    if let Some(i) = owner {
                        overlapping[i] = true;
                    }
                }
                reach = reach.max(max);
            }

            let mut decode: Vec<usize> = Vec::new();
            for (i, candidate) in candidates.iter_mut().enumerate() {
                let Some(summary) = candidate.summary.take() else {
                    decode.push(i);
                    continue;
                };
                let meets = |b: &BlockSummary| b.max_time >= since.0 && b.min_time < until.0;
                let stands_in = !overlapping[i]
                    && summary.blocks.iter().filter(|b| meets(b)).all(|b| {
                        in_window(b.min_time) && in_window(b.max_time) && usable(&summary.names, b)
                    });
                if !stands_in {
                    decode.push(i);
                    continue;
                }
                // Moved, not cloned: one `Arc` of names per chunk, the
                // blocks themselves (this loop ran ~10,000 times for a
                // month of a 1 Hz sensor; clones were a third of it).
                let ChunkSummary { names, blocks, .. } = summary;
                let names = std::sync::Arc::new(names);
                out.chunks_summarised += 1;
                for block in blocks.into_iter().filter(|b| meets(b)) {
                    out.events_summarised += block.count;
                    out.blocks.push((names.clone(), block));
                }
                if out.blocks.len() > max_items {
                    return Ok(Err(out.blocks.len()));
                }
            }
            for i in decode {
                let key = &candidates[i].key;
                let Some(value) = trees.history.get(key).map_err(|e| {
                    StoreError::sled(
                        format!("product `{product}`, entity `{entity}`: reading history"),
                        e,
                    )
                })?
                else {
                    // Gone since the first pass: the instance changed too,
                    // and the consistency check retries the read.
                    continue;
                };
                let plain = trees
                    .open(HISTORY, key, &value)
                    .map_err(|e| corrupt("history entry", e))?;
                let (_, events) = decode_chunk(&plain, &trees.dictionaries)
                    .map_err(|e| corrupt("history chunk", e))?;
                out.chunks_decoded += 1;
                out.events_decoded += events.len() as u64;
                out.events.extend(
                    events
                        .into_iter()
                        .filter(|e| in_window(e.event_time.0))
                        .map(HistoryEvent::from),
                );
                if out.events.len() + out.blocks.len() > max_items {
                    return Ok(Err(out.events.len() + out.blocks.len()));
                }
            }
            out.events.extend(loose.into_iter().map(HistoryEvent::from));
            if out.events.len() + out.blocks.len() > max_items {
                return Ok(Err(out.events.len() + out.blocks.len()));
            }
            Ok(Ok(out))
        })?;
        outcome.map_err(SeriesReadError::TooLarge)
    }
}
