//! The quarantine: messages that failed validation, kept whole (raw
//! payload, topic, captures, every reason) so they can be inspected and
//! replayed, bounded by `quarantine_max` per product.
//!
//! # Keys in `{product}/quarantine`
//!
//! - `E ++ u64 BE id` → [`StoredQuarantineEntry`] (codec; zstd-compressed
//!   when that is smaller, see [`encode_entry`]). Ids ascend in quarantine
//!   order, so the first key is the oldest entry and listing is a range
//!   scan.
//! - `N` → [`StoredQuarantineState`]: the next id and the entry count. The
//!   counter lives in the store and only grows, so an id is never reused,
//!   not after eviction, not after a restart; a replay that resolves an id
//!   can never remove a newer entry by mistake.
//!
//! # Bound
//!
//! Resolutions are applied first (a replay frees room), then the batch's
//! items get their ids, then the oldest entries are evicted while the count
//! exceeds `quarantine_max` — stored ones first, then the batch's own
//! oldest items if the batch alone is larger than the bound (those are
//! counted as evicted and never written). As with the dedupe window, the
//! plan is made before the transaction under the writer lock, because
//! finding the oldest entry is a range scan.

use std::collections::BTreeSet;
use std::ops::Bound;

use super::codec;
use super::stored::{StoredQuarantineEntry, StoredQuarantineState};
use super::types::{QuarantineEntry, QuarantineItem};
use super::{ProductTrees, Store, StoreError, QUARANTINE};
use crate::record::Timestamp;

const TAG_ENTRY: u8 = b'E';
pub(crate) const STATE_KEY: &[u8] = b"N";

/// Entries whose plain encoding is larger than this are also tried
/// compressed: raw JSON payloads shrink several times, and a full
/// quarantine of large payloads is the store's biggest disk risk.
const COMPRESS_ABOVE_BYTES: usize = 512;

pub(crate) fn entry_key(id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(TAG_ENTRY);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

fn parse_entry_key(key: &[u8]) -> Option<u64> {
    match key {
        [TAG_ENTRY, rest @ ..] => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// The stored quarantine as the planner sees it.
pub(crate) trait EntrySource {
    fn contains(&mut self, id: u64) -> Result<bool, StoreError>;
    /// Stored entry ids in ascending order, one per call.
    fn next_oldest(&mut self) -> Result<Option<u64>, StoreError>;
}

/// What a batch does to the quarantine.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct QuarantinePlan {
    /// Stored entries to remove (resolved or evicted).
    pub removes: Vec<u64>,
    /// Ids given to the batch's items, in order.
    pub new_ids: Vec<u64>,
    /// How many of the batch's first items are evicted at once (not written).
    pub new_evicted: usize,
    pub evicted: usize,
    pub resolved: usize,
    pub state: StoredQuarantineState,
}

/// Plans resolutions, `new_items` insertions and evictions (see the
/// module docs for the order).
pub(crate) fn plan(
    mut state: StoredQuarantineState,
    max: u64,
    resolve: &[u64],
    new_items: usize,
    source: &mut impl EntrySource,
) -> Result<QuarantinePlan, StoreError> {
    state.next_id = state.next_id.max(1);
    let mut removed = BTreeSet::new();
    let mut plan = QuarantinePlan::default();
    for &id in resolve {
        if id < state.next_id && !removed.contains(&id) && source.contains(id)? {
            removed.insert(id);
            state.len = state.len.saturating_sub(1);
            plan.resolved += 1;
        }
    }
    plan.new_ids = (state.next_id..).take(new_items).collect();
    state.next_id += new_items as u64;
    state.len += new_items as u64;
    let mut stored_exhausted = false;
    while state.len > max {
        if !stored_exhausted {
            match source.next_oldest()? {
                Some(id) if removed.contains(&id) => continue,
                Some(id) => {
                    removed.insert(id);
                    state.len -= 1;
                    plan.evicted += 1;
                    continue;
                }
                None => stored_exhausted = true,
            }
        }
        if plan.new_evicted < new_items {
            plan.new_evicted += 1;
            state.len -= 1;
            plan.evicted += 1;
        } else {
            // Nothing left to evict: the stored count overstated the
            // entries (it cannot, short of corruption).
            tracing::warn!(
                len = state.len,
                "quarantine shorter than recorded; resetting its count"
            );
            state.len = 0;
        }
    }
    plan.removes = removed.into_iter().collect();
    plan.state = state;
    Ok(plan)
}

/// An [`EntrySource`] over the product's stored `quarantine` tree.
pub(crate) struct TreeEntries<'t> {
    product: &'t str,
    tree: &'t super::hot::HotTree,
    oldest: Option<super::hot::MergeIter>,
}

impl<'t> TreeEntries<'t> {
    pub(crate) fn new(product: &'t str, tree: &'t super::hot::HotTree) -> Self {
        TreeEntries {
            product,
            tree,
            oldest: None,
        }
    }

    fn sled(&self, e: sled::Error) -> StoreError {
        StoreError::sled(
            format!("product `{}`: reading the quarantine", self.product),
            e,
        )
    }
}

impl EntrySource for TreeEntries<'_> {
    fn contains(&mut self, id: u64) -> Result<bool, StoreError> {
        self.tree
            .contains_key(entry_key(id))
            .map_err(|e| self.sled(e))
    }

    fn next_oldest(&mut self) -> Result<Option<u64>, StoreError> {
        let tree = self.tree;
        let iter = self
            .oldest
            .get_or_insert_with(|| tree.scan_prefix([TAG_ENTRY]));
        match iter.next() {
            Some(Ok((key, _))) => parse_entry_key(&key).map(Some).ok_or_else(|| {
                StoreError::bookkeeping(
                    format!("product `{}`", self.product),
                    "quarantine state",
                    "malformed entry key",
                )
            }),
            Some(Err(e)) => Err(self.sled(e)),
            None => Ok(None),
        }
    }
}

/// The stored quarantine state; an empty quarantine if there is none yet.
pub(crate) fn load_state(
    product: &str,
    tree: &super::hot::HotTree,
) -> Result<StoredQuarantineState, StoreError> {
    let bytes = tree.get(STATE_KEY).map_err(|e| {
        StoreError::sled(
            format!("product `{product}`: reading the quarantine state"),
            e,
        )
    })?;
    match bytes {
        Some(bytes) => codec::decode(&bytes).map_err(|e| {
            StoreError::bookkeeping(format!("product `{product}`"), "quarantine state", e)
        }),
        None => Ok(StoredQuarantineState::default()),
    }
}

/// Encodes one entry, compressed when that is smaller.
pub(crate) fn encode_entry(
    product: &str,
    item: &QuarantineItem,
    quarantined_at: Timestamp,
    zstd_level: i32,
) -> Result<Vec<u8>, StoreError> {
    let stored = StoredQuarantineEntry {
        quarantined_at,
        source: item.source.clone(),
        topic: item.topic.clone(),
        captures: item.captures.clone(),
        payload: item.payload.clone(),
        reasons: item.reasons.clone(),
        arrival: item.arrival,
        origin: item.origin.clone(),
        index: item.index,
        entity: item.entity.clone(),
    };
    let err = |e| StoreError::encode(product, &item.source, "quarantine entry", e);
    let plain = codec::encode(&stored).map_err(err)?;
    if plain.len() <= COMPRESS_ABOVE_BYTES {
        return Ok(plain);
    }
    let packed = codec::encode_compressed(&stored, zstd_level).map_err(err)?;
    Ok(if packed.len() < plain.len() {
        packed
    } else {
        plain
    })
}

fn decode_entry(
    trees: &ProductTrees,
    id: u64,
    bytes: &[u8],
) -> Result<QuarantineEntry, StoreError> {
    let stored: StoredQuarantineEntry = trees
        .open(QUARANTINE, &entry_key(id), bytes)
        .and_then(|plain| codec::decode(&plain))
        .map_err(|e| StoreError::CorruptQuarantine {
            product: trees.name.clone(),
            id,
            detail: e.to_string(),
        })?;
    Ok(QuarantineEntry {
        id,
        quarantined_at: stored.quarantined_at,
        item: QuarantineItem {
            source: stored.source,
            topic: stored.topic,
            captures: stored.captures,
            payload: stored.payload,
            reasons: stored.reasons,
            arrival: stored.arrival,
            origin: stored.origin,
            index: stored.index,
            entity: stored.entity,
        },
    })
}

/// What erasing one entity removes from the quarantine: its entries and
/// the state with the count lowered to match.
#[derive(Debug, Default)]
pub(crate) struct EntityEntries {
    pub ids: Vec<u64>,
    pub state: StoredQuarantineState,
}

/// The ids of every entry recorded for `entity`. A full scan: the
/// quarantine is bounded by `quarantine_max` and erasure is rare, so an
/// index kept on every quarantine write would cost more than it saves.
/// An entry that does not decode cannot be attributed and is left (it is
/// reported, and listing the quarantine names it).
pub(crate) fn entries_of(trees: &ProductTrees, entity: &str) -> Result<EntityEntries, StoreError> {
    let product = trees.name.as_str();
    let tree = &trees.quarantine;
    let mut found = EntityEntries {
        ids: Vec::new(),
        state: load_state(product, tree)?,
    };
    for item in tree.scan_prefix([TAG_ENTRY]) {
        let (key, value) = item.map_err(|e| {
            StoreError::sled(format!("product `{product}`: scanning the quarantine"), e)
        })?;
        let Some(id) = parse_entry_key(&key) else {
            continue;
        };
        match decode_entry(trees, id, &value) {
            Ok(entry) if entry.item.entity.as_deref() == Some(entity) => found.ids.push(id),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "erasure cannot check a corrupt quarantine entry"),
        }
    }
    found.state.len = found.state.len.saturating_sub(found.ids.len() as u64);
    Ok(found)
}

impl Store {
    /// Quarantine entries of `product` with `id > after`, ascending by id,
    /// at most `limit` (a `limit` of 0 counts as 1, as in
    /// [`Store::scan`]). Pass the last id as `after` for the next page.
    /// Entries written or removed meanwhile may or may not be seen; none is
    /// seen twice. An entry that does not decode fails the call with
    /// [`StoreError::CorruptQuarantine`] naming its id (resolve it to
    /// remove it).
    pub fn quarantine_list(
        &self,
        product: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<QuarantineEntry>, StoreError> {
        let trees = self.product(product)?;
        let start = match after {
            Some(u64::MAX) => return Ok(Vec::new()),
            Some(after) => after + 1,
            None => 0,
        };
        let end = Bound::Excluded(vec![TAG_ENTRY + 1]);
        let mut out = Vec::new();
        for item in trees
            .quarantine
            .range((Bound::Included(entry_key(start)), end))
            .take(limit.max(1))
        {
            let (key, value) = item.map_err(|e| {
                StoreError::sled(format!("product `{product}`: listing the quarantine"), e)
            })?;
            let id = parse_entry_key(&key).ok_or_else(|| {
                StoreError::bookkeeping(
                    format!("product `{product}`"),
                    "quarantine state",
                    "malformed entry key",
                )
            })?;
            out.push(decode_entry(&trees, id, &value)?);
        }
        Ok(out)
    }

    /// Number of quarantine entries of `product` (O(1): a stored count).
    pub fn quarantine_count(&self, product: &str) -> Result<u64, StoreError> {
        let trees = self.product(product)?;
        Ok(load_state(product, &trees.quarantine)?.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem {
        ids: BTreeSet<u64>,
        cursor: Option<u64>,
    }

    impl EntrySource for Mem {
        fn contains(&mut self, id: u64) -> Result<bool, StoreError> {
            Ok(self.ids.contains(&id))
        }
        fn next_oldest(&mut self) -> Result<Option<u64>, StoreError> {
            let from = self.cursor.map_or(0, |c| c + 1);
            let next = self.ids.range(from..).next().copied();
            self.cursor = next.or(self.cursor);
            Ok(next)
        }
    }

    fn mem(ids: impl IntoIterator<Item = u64>) -> Mem {
        Mem {
            ids: ids.into_iter().collect(),
            cursor: None,
        }
    }

    fn state(next_id: u64, len: u64) -> StoredQuarantineState {
        StoredQuarantineState { next_id, len }
    }

    #[test]
    fn ids_start_at_one_and_continue_from_the_counter() {
        let p = plan(state(0, 0), 10, &[], 2, &mut mem([])).unwrap();
        assert_eq!(p.new_ids, vec![1, 2]);
        assert_eq!(p.state, state(3, 2));
        let p = plan(state(9, 1), 10, &[], 1, &mut mem([4])).unwrap();
        assert_eq!(p.new_ids, vec![9]);
    }

    #[test]
    fn oldest_are_evicted_and_resolutions_free_room_first() {
        let p = plan(state(6, 3), 3, &[], 2, &mut mem([2, 4, 5])).unwrap();
        assert_eq!(
            (p.removes.clone(), p.evicted, p.new_evicted),
            (vec![2, 4], 2, 0)
        );
        assert_eq!(p.state, state(8, 3));

        let p = plan(state(6, 3), 3, &[4, 4, 99, 1], 1, &mut mem([2, 4, 5])).unwrap();
        assert_eq!((p.removes, p.resolved, p.evicted), (vec![4], 1, 0));
        assert_eq!(p.state, state(7, 3));
    }

    #[test]
    fn a_batch_larger_than_the_bound_evicts_its_own_oldest() {
        let p = plan(state(3, 2), 2, &[], 5, &mut mem([1, 2])).unwrap();
        assert_eq!(p.removes, vec![1, 2]);
        assert_eq!(p.new_ids, vec![3, 4, 5, 6, 7]);
        assert_eq!((p.new_evicted, p.evicted), (3, 5));
        assert_eq!(p.state, state(8, 2));
        let p = plan(state(1, 0), 0, &[], 2, &mut mem([])).unwrap();
        assert_eq!((p.new_evicted, p.state.len), (2, 0));
    }

    #[test]
    fn keys_order_by_id() {
        assert!(entry_key(255) < entry_key(256));
        assert_eq!(parse_entry_key(&entry_key(42)), Some(42));
        assert_eq!(parse_entry_key(STATE_KEY), None);
        assert!(entry_key(u64::MAX) < STATE_KEY.to_vec());
    }
}
