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
//! # Keys in `{product}/dedupe` (store format 2)
//!
//! - `G ++ u64 BE first_seq` → one write group's live registrations, in
//!   ascending sequence order (see [`encode_group`]). A group holds the
//!   sequence numbers from `first_seq` up to the next group's.
//! - `N` → [`StoredDedupeState`] (next sequence number, window length).
//! - `R ++ fingerprint` → the [`Receipt`] of an idempotent request (HTTP
//!   push with an `Idempotency-Key`) whose key is registered in the window
//!   under that fingerprint: written in the transaction that applies the
//!   request's records, removed in the one that evicts the key, so a
//!   resend after a crash is recognised exactly while its key is in the
//!   window (see [`add_receipts`]).
//!
//! Re-registering a fingerprint moves it to the newest sequence number;
//! eviction forgets the oldest. Both rewrite (or remove) the group that
//! held the old sequence number, so the tree holds exactly the window.
//!
//! # Why one key per write group, held in memory
//!
//! Format 1 kept two keys per fingerprint (`F ++ fingerprint` → seq, and
//! `S ++ seq` → fingerprint) and read the first from sled for every
//! record: one read and two writes per record, four more once the window
//! was full and evicting, next to the three a record itself needs. A
//! profile of QoS 1 ingest put 12% of the node's CPU in that planning.
//! Now the window is read once per product, on its first fingerprinted
//! batch, into memory ([`Window`], about 70 bytes per fingerprint: 4.5 MiB
//! for a full default window of 65,536), and a transaction writes one key
//! for the group's new registrations plus the one or two old groups its
//! evictions touched. Format 1 trees are converted when the store opens
//! ([`migrate_format_1`]).
//!
//! # Planning
//!
//! A batch's decisions are computed by [`plan`] (pure, over the in-memory
//! [`Window`]) before its transaction, under the writer lock, so nothing
//! changes between planning and commit. The transaction writes exactly the
//! planned keys together with the records, so a crash keeps both or
//! neither; the in-memory window takes the plan's [`WindowDelta`] only
//! after the commit succeeded ([`Window::apply`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use super::codec;
use super::stored::{StoredDedupeState, StoredFingerprint};
use super::types::{Fingerprint, Receipt};
use super::StoreError;

const TAG_GROUP: u8 = b'G';
const TAG_RECEIPT: u8 = b'R';
/// Layout version byte in front of every receipt value.
const RECEIPT_LAYOUT: u8 = 1;
pub(crate) const STATE_KEY: &[u8] = b"N";
/// Format 1's keys, read only by [`migrate_format_1`].
const LEGACY_TAG_FINGERPRINT: u8 = b'F';
const LEGACY_TAG_SEQ: u8 = b'S';
/// Registrations per group when format 1 trees are converted.
const MIGRATED_GROUP_LEN: usize = 256;
/// Layout version byte in front of every group value.
const GROUP_LAYOUT: u8 = 1;
/// Bytes per registration in a group value: u64 BE seq, then the fingerprint.
const ENTRY_LEN: usize = 8 + 16;

pub(crate) fn group_key(first_seq: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = TAG_GROUP;
    key[1..].copy_from_slice(&first_seq.to_be_bytes());
    key
}

fn parse_group_key(key: &[u8]) -> Option<u64> {
    match key {
        [TAG_GROUP, rest @ ..] => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// A group's value: a layout byte, then per registration its sequence
/// number (u64 BE) and fingerprint. Plain bytes, not MessagePack: the
/// fixed layout is half the size and needs no decoder on the load path.
pub(crate) fn encode_group<'a>(entries: impl Iterator<Item = (u64, &'a Fingerprint)>) -> Vec<u8> {
    let mut value = vec![GROUP_LAYOUT];
    for (seq, fp) in entries {
        value.extend_from_slice(&seq.to_be_bytes());
        value.extend_from_slice(fp);
    }
    value
}

fn decode_group(value: &[u8]) -> Result<Vec<(u64, Fingerprint)>, String> {
    let Some((&layout, entries)) = value.split_first() else {
        return Err("empty group value".into());
    };
    if layout != GROUP_LAYOUT {
        return Err(format!("unknown group layout {layout}"));
    }
    if entries.len() % ENTRY_LEN != 0 {
        return Err(format!("group value of {} bytes", value.len()));
    }
    Ok(entries
        .chunks_exact(ENTRY_LEN)
        .map(|entry| {
            let (seq, fp) = entry.split_at(8);
            let mut seq_bytes = [0u8; 8];
            seq_bytes.copy_from_slice(seq);
            let mut fingerprint = [0u8; 16];
            fingerprint.copy_from_slice(fp);
            (u64::from_be_bytes(seq_bytes), fingerprint)
        })
        .collect())
}

fn receipt_key(fp: &Fingerprint) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + fp.len());
    key.push(TAG_RECEIPT);
    key.extend_from_slice(fp);
    key
}

fn parse_receipt_key(key: &[u8]) -> Option<Fingerprint> {
    match key {
        [TAG_RECEIPT, rest @ ..] => rest.try_into().ok(),
        _ => None,
    }
}

/// A receipt's value: a layout byte, then request hash, accepted and
/// duplicates, each u64 BE.
fn encode_receipt(receipt: &Receipt) -> Vec<u8> {
    let mut value = Vec::with_capacity(25);
    value.push(RECEIPT_LAYOUT);
    for n in [receipt.request, receipt.accepted, receipt.duplicates] {
        value.extend_from_slice(&n.to_be_bytes());
    }
    value
}

fn decode_receipt(value: &[u8]) -> Result<Receipt, String> {
    let word = |i: usize| -> Result<u64, String> {
        value
            .get(1 + 8 * i..9 + 8 * i)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| format!("receipt value of {} bytes", value.len()))
    };
    match value.first() {
        Some(&RECEIPT_LAYOUT) if value.len() == 25 => Ok(Receipt {
            request: word(0)?,
            accepted: word(1)?,
            duplicates: word(2)?,
        }),
        Some(&RECEIPT_LAYOUT) => Err(format!("receipt value of {} bytes", value.len())),
        Some(layout) => Err(format!("unknown receipt layout {layout}")),
        None => Err("empty receipt value".into()),
    }
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
    /// What the in-memory window becomes once the writes are committed.
    pub delta: Option<WindowDelta>,
}

/// The changes of one plan, to apply to the [`Window`] after its commit.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct WindowDelta {
    state: StoredDedupeState,
    /// `Some(seq)`: registered at `seq`; `None`: forgotten.
    fps: HashMap<Fingerprint, Option<u64>>,
    /// `Some(fp)`: `seq` now holds `fp`; `None`: `seq` freed.
    seqs: BTreeMap<u64, Option<Fingerprint>>,
    new_group: Option<u64>,
    removed_groups: Vec<u64>,
    /// `Some`: a receipt written; `None`: one removed with its key.
    receipts: Vec<(Fingerprint, Option<Receipt>)>,
}

/// A product's window in memory: exactly what its tree holds, indexed by
/// fingerprint and by age.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Window {
    state: StoredDedupeState,
    by_fp: HashMap<Fingerprint, u64>,
    by_seq: BTreeMap<u64, Fingerprint>,
    /// The first sequence number of every stored group.
    groups: BTreeSet<u64>,
    /// Receipts of idempotent requests, by key fingerprint (each key is
    /// also in `by_fp`).
    receipts: HashMap<Fingerprint, Receipt>,
}

impl Window {
    /// Builds the window from a tree's `(key, value)` pairs in key order.
    fn from_entries(
        product: &str,
        entries: impl Iterator<Item = Result<(sled::IVec, sled::IVec), StoreError>>,
    ) -> Result<Window, StoreError> {
        let corrupt = |detail: String| {
            StoreError::bookkeeping(format!("product `{product}`"), "dedupe window", detail)
        };
        let mut window = Window::default();
        for entry in entries {
            let (key, value) = entry?;
            if key.as_ref() == STATE_KEY {
                window.state = codec::decode(&value).map_err(|e| corrupt(e.to_string()))?;
                continue;
            }
            if let Some(fp) = parse_receipt_key(&key) {
                window
                    .receipts
                    .insert(fp, decode_receipt(&value).map_err(corrupt)?);
                continue;
            }
            let Some(first) = parse_group_key(&key) else {
                return Err(corrupt(format!("unexpected key {:?}", key.as_ref())));
            };
            window.groups.insert(first);
            for (seq, fp) in decode_group(&value).map_err(corrupt)? {
                window.by_seq.insert(seq, fp);
                // Re-registration rewrites the old group, so a fingerprint
                // is in one place; should it not be, the newest counts.
                if let Some(old) = window.by_fp.insert(fp, seq) {
                    window.by_seq.remove(&old.min(seq));
                    window.by_fp.insert(fp, old.max(seq));
                }
            }
        }
        let held = window.by_fp.len() as u64;
        if window.state.len != held {
            tracing::warn!(
                product,
                recorded = window.state.len,
                held,
                "dedupe window length differs from its entries; using the entries"
            );
            window.state.len = held;
        }
        Ok(window)
    }

    fn load(product: &str, tree: &super::hot::HotTree) -> Result<Window, StoreError> {
        let span = tracing::debug_span!("store.dedupe.load", product);
        let _enter = span.enter();
        let window = Window::from_entries(
            product,
            tree.iter().map(|item| {
                item.map_err(|e| {
                    StoreError::sled(format!("product `{product}`: reading the dedupe window"), e)
                })
            }),
        )?;
        tracing::debug!(
            fingerprints = window.by_fp.len(),
            groups = window.groups.len(),
            "dedupe window loaded"
        );
        Ok(window)
    }

    /// Takes a committed plan's changes.
    pub(crate) fn apply(&mut self, delta: WindowDelta) {
        for (fp, seq) in delta.fps {
            match seq {
                Some(seq) => self.by_fp.insert(fp, seq),
                None => self.by_fp.remove(&fp),
            };
        }
        for (seq, fp) in delta.seqs {
            match fp {
                Some(fp) => self.by_seq.insert(seq, fp),
                None => self.by_seq.remove(&seq),
            };
        }
        for first in delta.removed_groups {
            self.groups.remove(&first);
        }
        if let Some(first) = delta.new_group {
            self.groups.insert(first);
        }
        for (fp, receipt) in delta.receipts {
            match receipt {
                Some(receipt) => self.receipts.insert(fp, receipt),
                None => self.receipts.remove(&fp),
            };
        }
        self.state = delta.state;
    }

    /// The receipt of the idempotent request registered under `key`.
    pub(crate) fn receipt(&self, key: &Fingerprint) -> Option<Receipt> {
        self.receipts.get(key).copied()
    }

    /// The stored group holding `seq`.
    fn group_of(&self, seq: u64) -> Option<u64> {
        self.groups.range(..=seq).next_back().copied()
    }

    /// The first sequence number after group `first`'s.
    fn group_end(&self, first: u64) -> u64 {
        self.groups
            .range((Bound::Excluded(first), Bound::Unbounded))
            .next()
            .copied()
            .unwrap_or(u64::MAX)
    }
}

/// The per-product slot of the in-memory window: empty until the first
/// fingerprinted batch loads it, emptied when the tree is written behind
/// its back ([`DedupeIndex::clear`]).
#[derive(Default)]
pub(crate) struct DedupeIndex {
    window: Mutex<Option<Window>>,
}

impl DedupeIndex {
    /// The loaded window, held for the caller's plan and commit (callers
    /// hold the store's writer lock, so this never waits).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Option<Window>> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the loaded window; the next batch reads the tree again.
    pub(crate) fn clear(&self) {
        *self.lock() = None;
    }
}

/// The window in `slot`, loaded from `tree` first if it is not yet.
pub(crate) fn loaded<'a>(
    slot: &'a mut Option<Window>,
    product: &str,
    tree: &super::hot::HotTree,
) -> Result<&'a mut Window, StoreError> {
    if slot.is_none() {
        *slot = Some(Window::load(product, tree)?);
    }
    slot.as_mut().ok_or_else(|| {
        StoreError::bookkeeping(
            format!("product `{product}`"),
            "dedupe window",
            "not loaded",
        )
    })
}

/// Converts every format 1 dedupe tree of `db` (two keys per fingerprint)
/// into groups, each tree in one atomic batch, keeping its registrations,
/// their order and its state. Idempotent: a converted tree has no format
/// 1 keys left, so a conversion cut short by a crash is finished by the
/// next open.
pub(crate) fn migrate_format_1(db: &sled::Db) -> Result<(), StoreError> {
    for name in db.tree_names() {
        if !name.ends_with(b"/dedupe") {
            continue;
        }
        let label = String::from_utf8_lossy(&name).into_owned();
        let sled_err = |e| StoreError::sled(format!("converting `{label}` to store format 2"), e);
        let tree = db.open_tree(&name).map_err(sled_err)?;
        let mut batch = sled::Batch::default();
        let mut legacy_keys = 0usize;
        let mut registrations: Vec<(u64, Fingerprint)> = Vec::new();
        for item in tree.scan_prefix([LEGACY_TAG_FINGERPRINT]) {
            let (key, _) = item.map_err(sled_err)?;
            batch.remove(key);
            legacy_keys += 1;
        }
        for item in tree.scan_prefix([LEGACY_TAG_SEQ]) {
            let (key, value) = item.map_err(sled_err)?;
            let corrupt = |detail: String| {
                StoreError::bookkeeping(label.clone(), "format 1 dedupe entry", detail)
            };
            let seq = match key.as_ref() {
                [LEGACY_TAG_SEQ, rest @ ..] => rest
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| corrupt("malformed age key".into()))?,
                _ => return Err(corrupt("malformed age key".into())),
            };
            let fp =
                codec::decode::<StoredFingerprint>(&value).map_err(|e| corrupt(e.to_string()))?;
            registrations.push((seq, fp.0));
            batch.remove(key);
            legacy_keys += 1;
        }
        if legacy_keys == 0 {
            continue;
        }
        for group in registrations.chunks(MIGRATED_GROUP_LEN) {
            if let Some((first, _)) = group.first() {
                batch.insert(
                    &group_key(*first),
                    encode_group(group.iter().map(|(seq, fp)| (*seq, fp))),
                );
            }
        }
        tree.apply_batch(batch).map_err(sled_err)?;
        tracing::info!(
            tree = %label,
            fingerprints = registrations.len(),
            "dedupe window converted to store format 2"
        );
    }
    Ok(())
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
    window: &Window,
    capacity: u64,
    records: impl ExactSizeIterator<Item = Option<(Fingerprint, bool)>>,
) -> Result<DedupePlan, StoreError> {
    let mut overlay = Overlay {
        window,
        state: window.state,
        stored_next: window.state.next_seq,
        oldest_cursor: None,
        stored_exhausted: false,
        fps: HashMap::new(),
        seqs: BTreeMap::new(),
        fresh: VecDeque::new(),
        evicted: 0,
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
            overlay.trim(capacity);
        }
        let current = overlay.seq_of(&fp);
        if check && current.is_some() {
            plan.skip.push(true);
            plan.duplicates += 1;
            continue;
        }
        plan.skip.push(false);
        overlay.register(fp, current);
        overlay.trim(capacity);
    }
    if any {
        plan.evicted = overlay.evicted;
        let (writes, delta) = overlay.finish(product)?;
        plan.writes = writes;
        plan.delta = Some(delta);
    }
    Ok(plan)
}

/// Adds to `plan` the receipts of the idempotent requests it registered
/// (`fresh`: key fingerprint and receipt). With the removal of every
/// stored receipt whose key a plan evicts (in [`plan`]), the tree never
/// holds a receipt without its key, nor a request's key without its
/// receipt. A key the plan itself already evicted (a window smaller than
/// one request) gets no receipt.
pub(crate) fn add_receipts(plan: &mut DedupePlan, fresh: &[(Fingerprint, Receipt)]) {
    let Some(delta) = plan.delta.as_mut() else {
        return;
    };
    for (fp, receipt) in fresh {
        if matches!(delta.fps.get(fp), Some(Some(_))) {
            plan.writes
                .push((receipt_key(fp), Some(encode_receipt(receipt))));
            delta.receipts.push((*fp, Some(*receipt)));
        }
    }
}

/// The window during planning: the stored window plus this batch's
/// changes as overlays.
struct Overlay<'w> {
    window: &'w Window,
    state: StoredDedupeState,
    /// Sequence numbers below this are (or were) stored.
    stored_next: u64,
    /// The last stored registration eviction looked at.
    oldest_cursor: Option<u64>,
    stored_exhausted: bool,
    /// `Some(seq)`: registered at `seq`; `None`: forgotten in this batch.
    fps: HashMap<Fingerprint, Option<u64>>,
    /// `Some(fp)`: `seq` now holds `fp`; `None`: `seq` freed in this batch.
    seqs: BTreeMap<u64, Option<Fingerprint>>,
    /// This batch's registrations, oldest first (some since moved or evicted).
    fresh: VecDeque<(u64, Fingerprint)>,
    evicted: u64,
}

impl Overlay<'_> {
    fn seq_of(&self, fp: &Fingerprint) -> Option<u64> {
        match self.fps.get(fp) {
            Some(seq) => *seq,
            None => self.window.by_fp.get(fp).copied(),
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

    fn trim(&mut self, capacity: u64) {
        while self.state.len > capacity {
            if !self.evict_oldest() {
                // Every registration is gone: the length overstated the
                // window (it cannot, short of a bug); start over.
                tracing::warn!(
                    len = self.state.len,
                    "dedupe window shorter than recorded; resetting its length"
                );
                self.state.len = 0;
            }
        }
    }

    /// The next stored registration in age order, oldest first.
    fn next_stored(&mut self) -> Option<(u64, Fingerprint)> {
        let from = match self.oldest_cursor {
            Some(seq) => Bound::Excluded(seq),
            None => Bound::Unbounded,
        };
        let (seq, fp) = self.window.by_seq.range((from, Bound::Unbounded)).next()?;
        self.oldest_cursor = Some(*seq);
        Some((*seq, *fp))
    }

    /// Forgets the oldest live registration; `false` if there is none.
    fn evict_oldest(&mut self) -> bool {
        while !self.stored_exhausted {
            match self.next_stored() {
                Some((seq, fp)) => {
                    if matches!(self.seqs.get(&seq), Some(None)) {
                        continue; // moved to a newer seq by this batch
                    }
                    self.forget(seq, fp);
                    return true;
                }
                None => self.stored_exhausted = true,
            }
        }
        while let Some((seq, fp)) = self.fresh.pop_front() {
            if self.seqs.get(&seq) == Some(&Some(fp)) {
                self.forget(seq, fp);
                return true;
            }
        }
        false
    }

    fn forget(&mut self, seq: u64, fp: Fingerprint) {
        self.seqs.insert(seq, None);
        self.fps.insert(fp, None);
        self.state.len -= 1;
        self.evicted += 1;
    }

    /// The keys to write — this batch's group, every older group that lost
    /// a registration, the state — and the delta for the in-memory window.
    fn finish(self, product: &str) -> Result<(Vec<KeyWrite>, WindowDelta), StoreError> {
        let window = self.window;
        let mut writes = Vec::new();
        let fresh_live: Vec<(u64, &Fingerprint)> = self
            .seqs
            .range(self.stored_next..)
            .filter_map(|(seq, fp)| fp.as_ref().map(|fp| (*seq, fp)))
            .collect();
        let new_group = if fresh_live.is_empty() {
            None
        } else {
            writes.push((
                group_key(self.stored_next).to_vec(),
                Some(encode_group(fresh_live.into_iter())),
            ));
            Some(self.stored_next)
        };
        let touched: BTreeSet<u64> = self
            .seqs
            .range(..self.stored_next)
            .filter_map(|(seq, _)| window.group_of(*seq))
            .collect();
        let mut removed_groups = Vec::new();
        for first in touched {
            let end = window.group_end(first);
            let mut live = window
                .by_seq
                .range(first..end)
                .filter(|(seq, _)| !matches!(self.seqs.get(seq), Some(None)))
                .map(|(seq, fp)| (*seq, fp))
                .peekable();
            let key = group_key(first).to_vec();
            if live.peek().is_some() {
                writes.push((key, Some(encode_group(live))));
            } else {
                writes.push((key, None));
                removed_groups.push(first);
            }
        }
        let state = codec::encode(&self.state).map_err(|e| {
            StoreError::encode(product, "(dedupe window)", "dedupe window state", e)
        })?;
        writes.push((STATE_KEY.to_vec(), Some(state)));
        // An evicted idempotency key takes its receipt along.
        let mut receipts = Vec::new();
        if !window.receipts.is_empty() {
            for (fp, seq) in &self.fps {
                if seq.is_none() && window.receipts.contains_key(fp) {
                    writes.push((receipt_key(fp), None));
                    receipts.push((*fp, None));
                }
            }
        }
        let delta = WindowDelta {
            state: self.state,
            fps: self.fps,
            seqs: self.seqs,
            new_group,
            removed_groups,
            receipts,
        };
        Ok((writes, delta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window with its tree as a map: every batch's writes go to the
    /// map and its delta to the window, and the map must load back into
    /// the same window.
    #[derive(Default)]
    struct Mem {
        window: Window,
        tree: BTreeMap<Vec<u8>, Vec<u8>>,
    }

    impl Mem {
        fn batch(&mut self, capacity: u64, records: &[Option<(u8, bool)>]) -> DedupePlan {
            let items = records
                .iter()
                .map(|r| r.map(|(b, check)| ([b; 16], check)))
                .collect::<Vec<_>>();
            let mut plan = plan("p", &self.window, capacity, items.into_iter()).unwrap();
            for (key, value) in &plan.writes {
                match value {
                    Some(v) => self.tree.insert(key.clone(), v.clone()),
                    None => self.tree.remove(key),
                };
            }
            if let Some(delta) = plan.delta.take() {
                self.window.apply(delta);
            }
            assert_eq!(
                self.window.by_fp.len() as u64,
                self.window.state.len,
                "length tracks entries"
            );
            assert_eq!(self.window.by_seq.len(), self.window.by_fp.len());
            assert_eq!(self.reloaded(), self.window, "the tree holds the window");
            plan
        }

        fn reloaded(&self) -> Window {
            Window::from_entries(
                "p",
                self.tree.iter().map(|(k, v)| {
                    Ok((
                        sled::IVec::from(k.as_slice()),
                        sled::IVec::from(v.as_slice()),
                    ))
                }),
            )
            .unwrap()
        }

        fn window(&self) -> Vec<u8> {
            self.window.by_seq.values().map(|fp| fp[0]).collect()
        }

        fn group_keys(&self) -> usize {
            self.tree.keys().filter(|k| k[0] == TAG_GROUP).count()
        }
    }

    fn check(b: u8) -> Option<(u8, bool)> {
        Some((b, true))
    }

    #[test]
    fn receipts_round_trip_and_refuse_what_they_cannot_read() {
        let receipt = Receipt {
            request: u64::MAX,
            accepted: 7,
            duplicates: 2,
        };
        let value = encode_receipt(&receipt);
        assert_eq!(decode_receipt(&value), Ok(receipt));
        assert!(decode_receipt(&value[..24]).is_err());
        assert!(decode_receipt(&[]).is_err());
        let mut other = value.clone();
        other[0] = 9;
        assert!(decode_receipt(&other).is_err());
        let fp = [7u8; 16];
        assert_eq!(parse_receipt_key(&receipt_key(&fp)), Some(fp));
        assert_eq!(parse_receipt_key(&group_key(3)), None);
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

    #[test]
    fn a_batch_writes_one_group_and_rewrites_only_the_groups_it_evicted_from() {
        let mut mem = Mem::default();
        let batch = |from: u8| (from..from + 10).map(check).collect::<Vec<_>>();
        for round in 0..5u8 {
            let plan = mem.batch(30, &batch(round * 10));
            // One group key, the state, and at most the one old group
            // whose registrations slid out.
            assert!(plan.writes.len() <= 3, "{:?}", plan.writes.len());
        }
        assert_eq!(mem.window.state.len, 30);
        assert_eq!(mem.group_keys(), 3, "groups wholly evicted are removed");
        assert_eq!(mem.window(), (20..50).collect::<Vec<u8>>());
    }

    #[test]
    fn random_batches_keep_tree_and_memory_equal_to_a_plain_sliding_window() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut mem = Mem::default();
        // The reference: registrations oldest first, no fingerprint twice.
        let mut reference: VecDeque<u8> = VecDeque::new();
        for _ in 0..300 {
            let capacity = rng.random_range(0..12u64);
            let records: Vec<Option<(u8, bool)>> = (0..rng.random_range(1..8))
                .map(|_| {
                    rng.random_bool(0.9)
                        .then(|| (rng.random_range(0..20u8), rng.random_bool(0.7)))
                })
                .collect();
            let mut expected_skip = Vec::new();
            let trim = |reference: &mut VecDeque<u8>| {
                while reference.len() as u64 > capacity {
                    reference.pop_front();
                }
            };
            // A lowered capacity applies with the first fingerprint.
            if records.iter().any(Option::is_some) {
                trim(&mut reference);
            }
            for record in &records {
                match record {
                    None => expected_skip.push(false),
                    Some((b, check)) => {
                        let known = reference.contains(b);
                        if *check && known {
                            expected_skip.push(true);
                            continue;
                        }
                        expected_skip.push(false);
                        reference.retain(|x| x != b);
                        reference.push_back(*b);
                        trim(&mut reference);
                    }
                }
            }
            let plan = mem.batch(capacity, &records);
            assert_eq!(plan.skip, expected_skip);
            assert_eq!(mem.window(), Vec::from(reference.clone()));
        }
    }

    #[test]
    fn group_values_round_trip_and_refuse_bad_bytes() {
        let entries = [(7u64, [1u8; 16]), (9, [2; 16])];
        let value = encode_group(entries.iter().map(|(s, f)| (*s, f)));
        assert_eq!(value.len(), 1 + 2 * ENTRY_LEN);
        assert_eq!(decode_group(&value).unwrap(), entries.to_vec());
        assert!(decode_group(&value[..value.len() - 1]).is_err());
        assert!(decode_group(&[]).is_err());
        assert!(decode_group(&[9]).is_err());
    }
}
