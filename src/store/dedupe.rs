//! The dedupe window: the last `dedupe_capacity` fingerprints registered
//! per product, oldest forgotten first.
//!
//! Why a count-bounded window and no time sweep: a message is acknowledged
//! (MQTT PUBACK, HTTP 2xx) only after it is durable, so a duplicate only
//! arises when the node crashed between the durable write and the ack. The
//! sender then redelivers a message that is among the most recently
//! written, and a window of the newest registrations recognises it exactly,
//! on bounded disk, without a clock.
//!
//! # Keys in `{product}/dedupe`
//!
//! - `F ++ fingerprint` → sequence number (codec `u64`): membership, and
//!   where the fingerprint's age entry is.
//! - `S ++ u64 BE seq` → fingerprint (codec `bin`): age order, oldest first.
//! - `N` → [`StoredDedupeState`] (next sequence number, window length).
//!
//! Re-registering a fingerprint moves it to the newest sequence number and
//! leaves a hole at the old one; eviction walks `S` keys in order, so holes
//! cost nothing.
//!
//! # Planning
//!
//! A batch's decisions are computed by [`plan`] (pure, over a
//! [`WindowSource`]) before its transaction, under the writer lock, so the
//! trees cannot change between planning and commit. This is needed because
//! eviction asks for "the oldest registration", a range scan, which sled
//! transactions cannot do. The transaction then writes exactly the planned
//! keys together with the records, so a crash keeps both or neither.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::codec;
use super::stored::{StoredDedupeState, StoredFingerprint};
use super::types::Fingerprint;
use super::StoreError;

const TAG_FINGERPRINT: u8 = b'F';
const TAG_SEQ: u8 = b'S';
pub(crate) const STATE_KEY: &[u8] = b"N";

pub(crate) fn fingerprint_key(fp: &Fingerprint) -> Vec<u8> {
    let mut key = Vec::with_capacity(17);
    key.push(TAG_FINGERPRINT);
    key.extend_from_slice(fp);
    key
}

pub(crate) fn seq_key(seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(TAG_SEQ);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The prefix of every age-order key.
pub(crate) fn seq_prefix() -> [u8; 1] {
    [TAG_SEQ]
}

/// The sequence number of an age-order key.
pub(crate) fn parse_seq_key(key: &[u8]) -> Option<u64> {
    match key {
        [TAG_SEQ, rest @ ..] => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// The stored window as the planner sees it.
pub(crate) trait WindowSource {
    /// Where `fp` is in the stored window, if it is.
    fn seq_of(&mut self, fp: &Fingerprint) -> Result<Option<u64>, StoreError>;
    /// The stored registrations in ascending sequence order, one per call.
    fn next_oldest(&mut self) -> Result<Option<(u64, Fingerprint)>, StoreError>;
}

/// One key to write in the transaction: `Some` inserts, `None` removes.
pub(crate) type KeyWrite = (Vec<u8>, Option<Vec<u8>>);

/// What a batch does to the window.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct DedupePlan {
    /// Per record: skip it as a duplicate.
    pub skip: Vec<bool>,
    pub duplicates: usize,
    /// Registrations forgotten to stay within capacity.
    pub evicted: u64,
    /// Keys to write (empty when no record carries a fingerprint).
    pub writes: Vec<KeyWrite>,
}

/// Decides, record by record, what is a duplicate and what the window
/// becomes. `records` yields each record's `(fingerprint, check_duplicate)`
/// or `None` for a record without fingerprint. A record is a duplicate if
/// it asks to be checked and its fingerprint is in the window as left by
/// everything before it (earlier batches and earlier records of this one);
/// a duplicate neither registers nor refreshes. The window is a sliding one
/// over registrations: eviction happens after each registration, so what is
/// recognised does not depend on batch boundaries.
pub(crate) fn plan(
    product: &str,
    state: StoredDedupeState,
    capacity: u64,
    records: impl ExactSizeIterator<Item = Option<(Fingerprint, bool)>>,
    source: &mut impl WindowSource,
) -> Result<DedupePlan, StoreError> {
    let mut window = Window {
        product,
        state,
        stored_next: state.next_seq,
        stored_exhausted: false,
        fps: HashMap::new(),
        seqs: BTreeMap::new(),
        fresh: VecDeque::new(),
        evicted: 0,
        source,
    };
    let mut plan = DedupePlan {
        skip: Vec::with_capacity(records.len()),
        ..DedupePlan::default()
    };
    let mut any = false;
    for record in records {
        let Some((fp, check)) = record else {
            plan.skip.push(false);
            continue;
        };
        if !any {
            any = true;
            // A capacity lowered since the last batch takes effect before
            // anything is judged against the window.
            window.trim(capacity)?;
        }
        let current = window.seq_of(&fp)?;
        if check && current.is_some() {
            plan.skip.push(true);
            plan.duplicates += 1;
            continue;
        }
        plan.skip.push(false);
        window.register(fp, current);
        window.trim(capacity)?;
    }
    if any {
        plan.evicted = window.evicted;
        plan.writes = window.writes()?;
    }
    Ok(plan)
}

/// The window during planning: the stored window plus this batch's
/// changes as overlays.
struct Window<'s, S> {
    product: &'s str,
    state: StoredDedupeState,
    /// Sequence numbers below this are (or were) stored.
    stored_next: u64,
    stored_exhausted: bool,
    /// `Some(seq)`: registered at `seq`; `None`: forgotten in this batch.
    fps: HashMap<Fingerprint, Option<u64>>,
    /// `Some(fp)`: `seq` now holds `fp`; `None`: `seq` freed in this batch.
    seqs: BTreeMap<u64, Option<Fingerprint>>,
    /// This batch's registrations, oldest first (some since moved or evicted).
    fresh: VecDeque<(u64, Fingerprint)>,
    evicted: u64,
    source: &'s mut S,
}

impl<S: WindowSource> Window<'_, S> {
    fn seq_of(&mut self, fp: &Fingerprint) -> Result<Option<u64>, StoreError> {
        match self.fps.get(fp) {
            Some(seq) => Ok(*seq),
            None => self.source.seq_of(fp),
        }
    }

    fn register(&mut self, fp: Fingerprint, current: Option<u64>) {
        match current {
            Some(old) => {
                self.seqs.insert(old, None);
            }
            None => self.state.len += 1,
        }
        let seq = self.state.next_seq;
        self.state.next_seq += 1;
        self.fps.insert(fp, Some(seq));
        self.seqs.insert(seq, Some(fp));
        self.fresh.push_back((seq, fp));
    }

    fn trim(&mut self, capacity: u64) -> Result<(), StoreError> {
        while self.state.len > capacity {
            if !self.evict_oldest()? {
                // Every registration is gone: the stored length overstated
                // the window (it cannot, short of corruption); start over.
                tracing::warn!(
                    len = self.state.len,
                    "dedupe window shorter than recorded; resetting its length"
                );
                self.state.len = 0;
            }
        }
        Ok(())
    }

    /// Forgets the oldest live registration; `false` if there is none.
    fn evict_oldest(&mut self) -> Result<bool, StoreError> {
        while !self.stored_exhausted {
            match self.source.next_oldest()? {
                Some((seq, fp)) => {
                    if matches!(self.seqs.get(&seq), Some(None)) {
                        continue; // moved to a newer seq by this batch
                    }
                    self.forget(seq, fp);
                    return Ok(true);
                }
                None => self.stored_exhausted = true,
            }
        }
        while let Some((seq, fp)) = self.fresh.pop_front() {
            if self.seqs.get(&seq) == Some(&Some(fp)) {
                self.forget(seq, fp);
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn forget(&mut self, seq: u64, fp: Fingerprint) {
        self.seqs.insert(seq, None);
        self.fps.insert(fp, None);
        self.state.len -= 1;
        self.evicted += 1;
    }

    /// The keys to write: final fingerprint and age entries, then the state.
    fn writes(self) -> Result<Vec<KeyWrite>, StoreError> {
        let product = self.product;
        let encode_err = |e| StoreError::encode(product, "(dedupe window)", "dedupe entry", e);
        let mut writes = Vec::with_capacity(self.fps.len() + self.seqs.len() + 1);
        for (fp, seq) in &self.fps {
            let value = seq
                .map(|seq| codec::encode(&seq).map_err(encode_err))
                .transpose()?;
            writes.push((fingerprint_key(fp), value));
        }
        for (seq, fp) in &self.seqs {
            match fp {
                Some(fp) => writes.push((
                    seq_key(*seq),
                    Some(codec::encode(&StoredFingerprint(*fp)).map_err(encode_err)?),
                )),
                // A seq of this batch that is gone again was never stored.
                None if *seq < self.stored_next => writes.push((seq_key(*seq), None)),
                None => {}
            }
        }
        writes.push((
            STATE_KEY.to_vec(),
            Some(codec::encode(&self.state).map_err(encode_err)?),
        ));
        Ok(writes)
    }
}

/// A [`WindowSource`] over the product's stored `dedupe` tree.
pub(crate) struct TreeWindow<'t> {
    product: &'t str,
    tree: &'t sled::Tree,
    oldest: Option<sled::Iter>,
}

impl<'t> TreeWindow<'t> {
    pub(crate) fn new(product: &'t str, tree: &'t sled::Tree) -> Self {
        TreeWindow {
            product,
            tree,
            oldest: None,
        }
    }

    fn corrupt(&self, detail: impl ToString) -> StoreError {
        StoreError::bookkeeping(
            format!("product `{}`", self.product),
            "dedupe entry",
            detail,
        )
    }

    fn sled(&self, e: sled::Error) -> StoreError {
        StoreError::sled(
            format!("product `{}`: reading the dedupe window", self.product),
            e,
        )
    }
}

impl WindowSource for TreeWindow<'_> {
    fn seq_of(&mut self, fp: &Fingerprint) -> Result<Option<u64>, StoreError> {
        match self
            .tree
            .get(fingerprint_key(fp))
            .map_err(|e| self.sled(e))?
        {
            Some(bytes) => codec::decode::<u64>(&bytes)
                .map(Some)
                .map_err(|e| self.corrupt(e)),
            None => Ok(None),
        }
    }

    fn next_oldest(&mut self) -> Result<Option<(u64, Fingerprint)>, StoreError> {
        let tree = self.tree;
        let iter = self
            .oldest
            .get_or_insert_with(|| tree.scan_prefix(seq_prefix()));
        let Some(item) = iter.next() else {
            return Ok(None);
        };
        let (key, value) = item.map_err(|e| self.sled(e))?;
        let seq = parse_seq_key(&key).ok_or_else(|| self.corrupt("malformed age key"))?;
        let fp = codec::decode::<StoredFingerprint>(&value).map_err(|e| self.corrupt(e))?;
        Ok(Some((seq, fp.0)))
    }
}

/// The stored window state; an empty window if there is none yet.
pub(crate) fn load_state(
    product: &str,
    tree: &sled::Tree,
) -> Result<StoredDedupeState, StoreError> {
    let bytes = tree.get(STATE_KEY).map_err(|e| {
        StoreError::sled(
            format!("product `{product}`: reading the dedupe window state"),
            e,
        )
    })?;
    match bytes {
        Some(bytes) => codec::decode(&bytes).map_err(|e| {
            StoreError::bookkeeping(format!("product `{product}`"), "dedupe window", e)
        }),
        None => Ok(StoredDedupeState::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory stored window.
    #[derive(Default)]
    struct Mem {
        fps: HashMap<Fingerprint, u64>,
        seqs: BTreeMap<u64, Fingerprint>,
        state: StoredDedupeState,
        cursor: Option<u64>,
    }

    impl WindowSource for Mem {
        fn seq_of(&mut self, fp: &Fingerprint) -> Result<Option<u64>, StoreError> {
            Ok(self.fps.get(fp).copied())
        }
        fn next_oldest(&mut self) -> Result<Option<(u64, Fingerprint)>, StoreError> {
            let from = self.cursor.map_or(0, |c| c + 1);
            let next = self.seqs.range(from..).next().map(|(s, f)| (*s, *f));
            if let Some((seq, _)) = next {
                self.cursor = Some(seq);
            }
            Ok(next)
        }
    }

    impl Mem {
        /// Runs one batch and applies its writes, like a commit would.
        fn batch(&mut self, capacity: u64, records: &[Option<(u8, bool)>]) -> DedupePlan {
            self.cursor = None;
            let items = records
                .iter()
                .map(|r| r.map(|(b, check)| ([b; 16], check)))
                .collect::<Vec<_>>();
            let plan = plan("p", self.state, capacity, items.into_iter(), self).unwrap();
            for (key, value) in &plan.writes {
                match (key[0], value) {
                    (TAG_FINGERPRINT, Some(v)) => {
                        self.fps
                            .insert(key[1..].try_into().unwrap(), codec::decode(v).unwrap());
                    }
                    (TAG_FINGERPRINT, None) => {
                        self.fps.remove(&key[1..]);
                    }
                    (TAG_SEQ, Some(v)) => {
                        let fp: StoredFingerprint = codec::decode(v).unwrap();
                        self.seqs.insert(parse_seq_key(key).unwrap(), fp.0);
                    }
                    (TAG_SEQ, None) => {
                        self.seqs.remove(&parse_seq_key(key).unwrap());
                    }
                    _ => self.state = codec::decode(value.as_ref().unwrap()).unwrap(),
                }
            }
            assert_eq!(
                self.fps.len() as u64,
                self.state.len,
                "length tracks entries"
            );
            assert_eq!(
                self.seqs.len(),
                self.fps.len(),
                "one age entry per fingerprint"
            );
            plan
        }

        fn window(&self) -> Vec<u8> {
            self.seqs.values().map(|fp| fp[0]).collect()
        }
    }

    fn check(b: u8) -> Option<(u8, bool)> {
        Some((b, true))
    }

    #[test]
    fn duplicates_are_found_within_and_across_batches() {
        let mut mem = Mem::default();
        let plan = mem.batch(10, &[check(1), None, check(2), check(1)]);
        assert_eq!(plan.skip, vec![false, false, false, true]);
        assert_eq!(plan.duplicates, 1);
        let plan = mem.batch(10, &[check(2), Some((3, false)), Some((3, false))]);
        assert_eq!(plan.skip, vec![true, false, false]);
        assert_eq!(mem.window(), vec![1, 2, 3]);
    }

    #[test]
    fn unchecked_registration_moves_a_fingerprint_to_newest() {
        let mut mem = Mem::default();
        mem.batch(3, &[check(1), check(2), check(3)]);
        mem.batch(3, &[Some((1, false))]);
        assert_eq!(mem.window(), vec![2, 3, 1]);
        let plan = mem.batch(3, &[check(4)]);
        assert_eq!(plan.evicted, 1);
        assert_eq!(mem.window(), vec![3, 1, 4], "2 was the oldest, not 1");
    }

    #[test]
    fn a_duplicate_does_not_refresh() {
        let mut mem = Mem::default();
        mem.batch(2, &[check(1), check(2)]);
        mem.batch(2, &[check(1)]);
        mem.batch(2, &[check(3)]);
        assert_eq!(mem.window(), vec![2, 3]);
    }

    #[test]
    fn the_window_slides_inside_one_batch() {
        let mut mem = Mem::default();
        let plan = mem.batch(2, &[check(1), check(2), check(3), check(1)]);
        assert_eq!(plan.skip, vec![false; 4], "1 was forgotten when 3 came");
        assert_eq!(plan.evicted, 2);
        assert_eq!(mem.window(), vec![3, 1]);
    }

    #[test]
    fn a_lowered_capacity_applies_before_judging() {
        let mut mem = Mem::default();
        mem.batch(5, &[check(1), check(2), check(3), check(4)]);
        let plan = mem.batch(2, &[check(2)]);
        assert_eq!(plan.skip, vec![false], "2 is beyond the new capacity");
        assert_eq!(mem.window(), vec![4, 2]);
    }

    #[test]
    fn zero_capacity_remembers_nothing_and_no_fingerprint_writes_nothing() {
        let mut mem = Mem::default();
        let plan = mem.batch(0, &[check(1), check(1)]);
        assert_eq!(plan.skip, vec![false, false]);
        assert!(mem.window().is_empty());
        let plan = mem.batch(10, &[None, None]);
        assert!(plan.writes.is_empty());
        assert_eq!(plan.skip, vec![false, false]);
    }
}
