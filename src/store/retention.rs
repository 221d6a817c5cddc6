//! Retention: trimming history and expiring idle entities, in bounded steps.
//!
//! Per entity, in this order:
//! 1. **Expiry**: if `expire_after` is set and the entity's `last_seen`
//!    (arrival time) is older than `now - expire_after`, the entity is
//!    removed entirely like an erasure, except that one `Expired` audit line
//!    (origin `meshlet:retention`) is left and no tombstone is written.
//! 2. **History**: an event is dropped if it is not among the newest
//!    `history_keep` events (by version), or if its `event_time` is older
//!    than `now - history_max_age`. Sealed chunks are judged by their header
//!    first: a chunk entirely dropped or entirely kept is never
//!    decompressed; only a boundary chunk is decoded and rewritten (under
//!    a key of its new first version). The instance's version is unchanged.
//!
//! Each entity is its own transaction under the writer lock, so a sweep
//! interleaves with ingest instead of stalling it, and a sweep cut short by a
//! crash resumes from any cursor without harm.

use std::ops::Bound;

use super::chunk::{decode_chunk, decode_chunk_header, encode_chunk, ChunkHeader};
use super::codec::{self, CodecError, Dictionaries};
use super::erase::remove_entity;
use super::keys::{chunk_key, entity_prefix, parse_history_key, tail_key, TAG_CHUNK, TAG_TAIL};
use super::read::decode_stored_instance;
use super::stored::{StoredAuditLine, StoredEvent, StoredInstance};
use super::tx::{abort, TxResult};
use super::{
    AuditAction, ProductTrees, RetentionSpec, Store, StoreError, SweepReport, HISTORY, INSTANCES,
};
use crate::record::{Origin, Timestamp};

/// The origin recorded on `Expired` audit lines.
pub const RETENTION_ORIGIN: &str = "meshlet:retention";

/// One stored history entry of an entity, as the planner sees it.
pub(crate) enum HistoryItem {
    Chunk {
        key: Vec<u8>,
        header: ChunkHeader,
        bytes: Vec<u8>,
    },
    /// An open-tail event: in the instance (`key: None`), or under its
    /// own key in an instance written before store format 3.
    Tail {
        key: Option<Vec<u8>>,
        event: StoredEvent,
        /// As `codec::encode` wrote it, to keep without encoding again.
        bytes: Vec<u8>,
    },
}

/// What to change in one entity's history.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct HistoryPlan {
    pub removes: Vec<Vec<u8>>,
    pub inserts: Vec<(Vec<u8>, Vec<u8>)>,
    pub events_removed: u64,
    pub chunks_rewritten: u64,
    /// Lowest version left in the tail, and the number of tail events
    /// left (each under its key; a format 3 instance's move out).
    pub tail_start: Option<u64>,
    pub tail_len: u64,
    /// Whether the instance's tail differs from before (events dropped,
    /// or moved out of the instance).
    pub tail_changed: bool,
    /// First versions of the chunks left afterwards, in order (kept or
    /// rewritten): the entity's list of blocks is rebuilt from it.
    pub chunk_firsts: Vec<u64>,
}

impl HistoryPlan {
    fn is_empty(&self) -> bool {
        self.removes.is_empty() && self.inserts.is_empty() && !self.tail_changed
    }
}

/// Decides which history events go (pure: items in, plan out).
/// `items` are in key order (chunks by version, then the tail).
pub(crate) fn plan_history(
    entity: &str,
    items: Vec<HistoryItem>,
    keep: Option<u64>,
    cutoff: Option<Timestamp>,
    zstd_level: i32,
    dictionaries: &dyn Dictionaries,
) -> Result<HistoryPlan, (&'static str, CodecError)> {
    let total: u64 = items
        .iter()
        .map(|item| match item {
            HistoryItem::Chunk { header, .. } => header.count,
            HistoryItem::Tail { .. } => 1,
        })
        .sum();
    let mut drop_front = keep.map_or(0, |keep| total.saturating_sub(keep));
    let too_old = |t: Timestamp| cutoff.is_some_and(|cutoff| t < cutoff);
    let mut plan = HistoryPlan::default();
    for item in items {
        match item {
            HistoryItem::Chunk { key, header, bytes } => {
                let count = header.count;
                if drop_front >= count {
                    drop_front -= count;
                    plan.removes.push(key);
                    plan.events_removed += count;
                    continue;
                }
                if drop_front == 0 && !too_old(header.min_event_time) {
                    if let Some((_, first)) = parse_history_key(&key) {
                        plan.chunk_firsts.push(first);
                    }
                    continue;
                }
                if drop_front == 0 && too_old(header.max_event_time) {
                    plan.removes.push(key);
                    plan.events_removed += count;
                    continue;
                }
                let (_, events) =
                    decode_chunk(&bytes, dictionaries).map_err(|e| ("history chunk", e))?;
                let skip = usize::try_from(drop_front).unwrap_or(usize::MAX);
                drop_front = 0;
                let kept: Vec<StoredEvent> = events
                    .into_iter()
                    .skip(skip)
                    .filter(|e| !too_old(e.event_time))
                    .collect();
                plan.events_removed += count - kept.len() as u64;
                plan.removes.push(key);
                if let Some(first) = kept.first() {
                    let bytes = encode_chunk(&kept, zstd_level, dictionaries)
                        .map_err(|e| ("history chunk", e))?;
                    plan.inserts.push((chunk_key(entity, first.version), bytes));
                    plan.chunk_firsts.push(first.version);
                    plan.chunks_rewritten += 1;
                }
            }
            HistoryItem::Tail { key, event, bytes } => {
                if drop_front > 0 || too_old(event.event_time) {
                    drop_front = drop_front.saturating_sub(1);
                    plan.events_removed += 1;
                    plan.tail_changed = true;
                    if let Some(key) = key {
                        plan.removes.push(key);
                    }
                } else {
                    plan.tail_start = Some(
                        plan.tail_start
                            .map_or(event.version, |v| v.min(event.version)),
                    );
                    plan.tail_len += 1;
                    if key.is_none() {
                        // A format 3 tail, in the instance: out to its key.
                        plan.inserts.push((tail_key(entity, event.version), bytes));
                        plan.tail_changed = true;
                    }
                }
            }
        }
    }
    Ok(plan)
}

impl Store {
    /// Applies `policy` to at most `budget` entities (0 counts as 1) of
    /// `product`, in entity key order, starting after `cursor`. Returns
    /// where to resume; `next_cursor` is `None` once the end is reached.
    /// Entities whose stored data is corrupt are skipped and reported in
    /// [`SweepReport::errors`].
    pub fn sweep_retention(
        &self,
        product: &str,
        policy: &RetentionSpec,
        now: Timestamp,
        cursor: Option<&str>,
        budget: usize,
    ) -> Result<SweepReport, StoreError> {
        let trees = self.product(product)?;
        let budget = budget.max(1);
        let span = tracing::debug_span!("store.sweep", product, cursor, budget);
        let _enter = span.enter();
        let mut keys = match cursor {
            Some(cursor) => trees
                .instances
                .range::<&[u8], _>((Bound::Excluded(cursor.as_bytes()), Bound::Unbounded)),
            None => trees.instances.iter(),
        }
        .keys();
        let mut report = SweepReport::default();
        let mut last = None;
        for key in keys.by_ref() {
            let key = key.map_err(|e| {
                StoreError::sled(
                    format!("product `{product}`: listing instances for retention"),
                    e,
                )
            })?;
            let entity = String::from_utf8_lossy(&key).into_owned();
            report.entities_visited += 1;
            if let Err(e) = self.sweep_entity(&trees, &entity, policy, now, &mut report) {
                if e.is_corrupt() {
                    tracing::warn!(entity, error = %e, "retention skipped a corrupt entity");
                    report.errors.push(e);
                } else {
                    return Err(e);
                }
            }
            last = Some(entity);
            if report.entities_visited as usize >= budget {
                break;
            }
        }
        if report.entities_visited as usize >= budget {
            let more = keys
                .next()
                .transpose()
                .map_err(|e| {
                    StoreError::sled(
                        format!("product `{product}`: listing instances for retention"),
                        e,
                    )
                })?
                .is_some();
            if more {
                report.next_cursor = last;
            }
        }
        tracing::debug!(
            visited = report.entities_visited,
            events_removed = report.events_removed,
            chunks_rewritten = report.chunks_rewritten,
            expired = report.entities_expired,
            "retention sweep step done"
        );
        Ok(report)
    }

    fn sweep_entity(
        &self,
        trees: &ProductTrees,
        entity: &str,
        policy: &RetentionSpec,
        now: Timestamp,
        report: &mut SweepReport,
    ) -> Result<(), StoreError> {
        let product = trees.name.as_str();
        let context = |what: &str| format!("product `{product}`, entity `{entity}`: {what}");
        let _writer = self.write_lock();
        let Some(bytes) = trees
            .instances
            .get(entity.as_bytes())
            .map_err(|e| StoreError::sled(context("reading instance"), e))?
        else {
            return Ok(()); // erased since it was listed
        };
        let mut state = decode_stored_instance(trees, entity, &bytes)?;

        if policy
            .expire_after
            .is_some_and(|after| state.last_seen < now.saturating_sub(after))
        {
            let line = StoredAuditLine {
                first_at: now,
                last_at: now,
                action: AuditAction::Expired,
                from_version: state.version,
                to_version: state.version,
                count: 1,
                fields: Vec::new(),
                origin: Origin::new(RETENTION_ORIGIN),
                link: None, // linked by `remove_entity`
            };
            let removed = remove_entity(self, trees, entity, &line, None, None)?;
            self.inner.group.wrote();
            report.entities_expired += 1;
            report.events_removed += removed.history_events + state.tail.len() as u64;
            tracing::debug!(entity, last_seen = %state.last_seen, "entity expired");
            return Ok(());
        }
        if policy.history_keep.is_none() && policy.history_max_age.is_none() {
            return Ok(());
        }

        let items = self.history_items(trees, entity, &state)?;
        let cutoff = policy.history_max_age.map(|age| now.saturating_sub(age));
        let plan = plan_history(
            entity,
            items,
            policy.history_keep,
            cutoff,
            self.config().zstd_level,
            &trees.dictionaries,
        )
        .map_err(|(what, e)| StoreError::corrupt(product, entity, what, e))?;
        if plan.is_empty() {
            return Ok(());
        }
        state.tail_len = plan.tail_len;
        state.tail_start = plan.tail_start.unwrap_or(state.version + 1);
        // The tail left is under its keys (`write.rs`; the plan moved a
        // format 3 tail out of the instance).
        state.tail.clear();
        // Blocks are the newest chunks, from the first block on; a trimmed
        // or rewritten block keeps a first version at or above it, a
        // trimmed full chunk stays below it.
        if let Some(&blocks_from) = state.blocks.first() {
            state.blocks = plan
                .chunk_firsts
                .iter()
                .copied()
                .filter(|&first| first >= blocks_from)
                .collect();
        }
        state.history_rev = state.history_rev.wrapping_add(1);
        let instance_bytes = state
            .encode()
            .and_then(|plain| trees.seal_entity(INSTANCES, entity, entity.as_bytes(), plain))
            .map_err(|e| StoreError::encode(product, entity, "instance", e))?;
        let inserts = plan
            .inserts
            .iter()
            .map(|(key, plain)| {
                trees
                    .seal_entity(HISTORY, entity, key, plain.clone())
                    .map(|sealed| (key.clone(), sealed))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::encode(product, entity, "history chunk", e))?;
        trees.forget_instance(entity);
        let result = self.hot_transaction(
            &[&trees.instances, &trees.history],
            |views| {
                let [instances, history] = views else {
                    return Err(abort(StoreError::encode(
                        product,
                        entity,
                        "retention",
                        "two trees expected",
                    )));
                };
                for key in &plan.removes {
                    history.remove(key.as_slice())?;
                }
                for (key, value) in &inserts {
                    history.insert(key.as_slice(), value.as_slice())?;
                }
                instances.insert(entity.as_bytes(), instance_bytes.as_slice())?;
                TxResult::Ok(())
            },
            || context("trimming history"),
        );
        result?;
        trees.forget_instance(entity);
        self.inner.group.wrote();
        report.events_removed += plan.events_removed;
        report.chunks_rewritten += plan.chunks_rewritten;
        tracing::debug!(
            entity,
            events_removed = plan.events_removed,
            chunks_rewritten = plan.chunks_rewritten,
            "history trimmed"
        );
        Ok(())
    }

    /// The entity's history entries, chunk headers decoded, tail events
    /// decoded (the instance's after the tree's). Called under the writer
    /// lock.
    fn history_items(
        &self,
        trees: &ProductTrees,
        entity: &str,
        state: &StoredInstance,
    ) -> Result<Vec<HistoryItem>, StoreError> {
        let product = trees.name.as_str();
        let mut items = Vec::new();
        for item in trees.history.scan_prefix(entity_prefix(entity)) {
            let (key, value) = item.map_err(|e| {
                StoreError::sled(
                    format!("product `{product}`, entity `{entity}`: reading history"),
                    e,
                )
            })?;
            let value = trees
                .open(HISTORY, &key, &value)
                .map_err(|e| StoreError::corrupt(product, entity, "history entry", e))?;
            match parse_history_key(&key) {
                Some((TAG_CHUNK, _)) => {
                    let header = decode_chunk_header(&value)
                        .map_err(|e| StoreError::corrupt(product, entity, "history chunk", e))?;
                    items.push(HistoryItem::Chunk {
                        key: key.to_vec(),
                        header,
                        bytes: value.to_vec(),
                    });
                }
                Some((TAG_TAIL, _)) => {
                    let event: StoredEvent = codec::decode(&value)
                        .map_err(|e| StoreError::corrupt(product, entity, "history event", e))?;
                    items.push(HistoryItem::Tail {
                        key: Some(key.to_vec()),
                        event,
                        bytes: value.into_owned(),
                    });
                }
                _ => {
                    return Err(StoreError::corrupt(
                        product,
                        entity,
                        "history key",
                        "malformed key",
                    ))
                }
            }
        }
        for tail in &state.tail {
            let event = tail
                .decode()
                .map_err(|e| StoreError::corrupt(product, entity, "history event", e))?;
            items.push(HistoryItem::Tail {
                key: None,
                event,
                bytes: tail.0.clone(),
            });
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Fields, Value};
    use crate::store::codec::NoDictionaries;
    use crate::store::keys::tail_key;

    fn event(version: u64, event_time: i64) -> StoredEvent {
        let mut fields = Fields::new();
        fields.insert("v".into(), Value::Int(version as i64));
        StoredEvent {
            version,
            event_time: Timestamp(event_time),
            received_at: Timestamp(event_time),
            fields,
            origin: Origin::new("test"),
        }
    }

    fn chunk(events: Vec<StoredEvent>) -> HistoryItem {
        let bytes = encode_chunk(&events, 1, &NoDictionaries).unwrap();
        HistoryItem::Chunk {
            key: chunk_key("e", events[0].version),
            header: decode_chunk_header(&bytes).unwrap(),
            bytes,
        }
    }

    /// A tail event under its own key (`write.rs`).
    fn tail(version: u64, t: i64) -> HistoryItem {
        let event = event(version, t);
        HistoryItem::Tail {
            key: Some(tail_key("e", version)),
            bytes: codec::encode(&event).unwrap(),
            event,
        }
    }

    /// A tail event in the instance (store format 3).
    fn tail_in_instance(version: u64, t: i64) -> HistoryItem {
        match tail(version, t) {
            HistoryItem::Tail { event, bytes, .. } => HistoryItem::Tail {
                key: None,
                event,
                bytes,
            },
            chunk => chunk,
        }
    }

    /// Chunks 1..=4, 5..=8, tail 9, 10; event time = version * 10.
    fn items() -> Vec<HistoryItem> {
        vec![
            chunk((1..=4).map(|v| event(v, v as i64 * 10)).collect()),
            chunk((5..=8).map(|v| event(v, v as i64 * 10)).collect()),
            tail(9, 90),
            tail(10, 100),
        ]
    }

    #[test]
    fn keep_drops_whole_chunks_and_rewrites_the_boundary() {
        let plan = plan_history("e", items(), Some(5), None, 1, &NoDictionaries).unwrap();
        assert_eq!(plan.events_removed, 5);
        assert_eq!(plan.chunks_rewritten, 1);
        assert_eq!(plan.removes, vec![chunk_key("e", 1), chunk_key("e", 5)]);
        assert_eq!(plan.inserts.len(), 1);
        assert_eq!(plan.inserts[0].0, chunk_key("e", 6));
        let (header, events) = decode_chunk(&plan.inserts[0].1, &NoDictionaries).unwrap();
        assert_eq!((header.first_version, header.count), (6, 3));
        assert_eq!(
            events.iter().map(|e| e.version).collect::<Vec<_>>(),
            vec![6, 7, 8]
        );
        assert_eq!((plan.tail_start, plan.tail_len), (Some(9), 2));
    }

    #[test]
    fn keep_reaching_into_the_tail() {
        let plan = plan_history("e", items(), Some(1), None, 1, &NoDictionaries).unwrap();
        assert_eq!(plan.events_removed, 9);
        assert_eq!(plan.chunks_rewritten, 0);
        assert!(plan.inserts.is_empty());
        assert_eq!((plan.tail_start, plan.tail_len), (Some(10), 1));
    }

    #[test]
    fn max_age_uses_headers_before_decompressing() {
        // Cutoff 45: chunk 1..=4 (10..40) goes whole, chunk 5..=8 (50..80) stays whole.
        let plan =
            plan_history("e", items(), None, Some(Timestamp(45)), 1, &NoDictionaries).unwrap();
        assert_eq!(plan.removes, vec![chunk_key("e", 1)]);
        assert_eq!((plan.events_removed, plan.chunks_rewritten), (4, 0));
        // Cutoff 65 splits chunk 5..=8.
        let plan =
            plan_history("e", items(), None, Some(Timestamp(65)), 1, &NoDictionaries).unwrap();
        assert_eq!((plan.events_removed, plan.chunks_rewritten), (6, 1));
        assert_eq!(plan.inserts[0].0, chunk_key("e", 7));
    }

    #[test]
    fn nothing_to_do_is_an_empty_plan() {
        let plan = plan_history(
            "e",
            items(),
            Some(100),
            Some(Timestamp(0)),
            1,
            &NoDictionaries,
        )
        .unwrap();
        assert!(plan.is_empty());
        assert_eq!((plan.tail_start, plan.tail_len), (Some(9), 2));
    }

    /// A format 3 tail (in the instance) moves out to its keys, also when
    /// nothing is dropped; dropped events of a tail under keys lose them.
    #[test]
    fn an_instance_tail_moves_out_to_keys_even_when_nothing_is_dropped() {
        let mut items = items();
        items[2] = tail_in_instance(9, 90);
        items[3] = tail_in_instance(10, 100);
        let plan = plan_history("e", items, Some(100), None, 1, &NoDictionaries).unwrap();
        assert!(!plan.is_empty(), "the events move");
        assert_eq!(plan.events_removed, 0);
        assert!(plan.removes.is_empty());
        let moved: Vec<(Vec<u8>, u64)> = plan
            .inserts
            .iter()
            .map(|(k, v)| (k.clone(), codec::decode::<StoredEvent>(v).unwrap().version))
            .collect();
        assert_eq!(moved, vec![(tail_key("e", 9), 9), (tail_key("e", 10), 10)]);
        assert_eq!((plan.tail_start, plan.tail_len), (Some(9), 2));

        let plan = plan_history("e", self::items(), Some(1), None, 1, &NoDictionaries).unwrap();
        assert_eq!(plan.events_removed, 9);
        assert_eq!(
            plan.removes,
            vec![chunk_key("e", 1), chunk_key("e", 5), tail_key("e", 9)]
        );
        assert!(plan.inserts.is_empty());
        assert_eq!((plan.tail_start, plan.tail_len), (Some(10), 1));
    }

    #[test]
    fn corrupt_boundary_chunk_is_reported() {
        let mut items = items();
        if let HistoryItem::Chunk { bytes, .. } = &mut items[1] {
            let n = bytes.len();
            bytes[n - 8..].fill(0);
        }
        let err = plan_history("e", items, Some(5), None, 1, &NoDictionaries).unwrap_err();
        assert_eq!(err.0, "history chunk");
    }
}
