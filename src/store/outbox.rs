//! The outbox: what sync still owes each upstream, written in the same
//! sled transaction as the state change it describes, so a crash keeps
//! both or neither.
//!
//! The store does not know sync rules: an [`OutboxPlanner`] (installed by
//! `sync`) turns each applied record into [`OutboxItem`]s — already
//! filtered, projected and masked — and names the upstreams owed a
//! tombstone when an entity is erased. The planner runs inside the write
//! transaction, so it must be pure and cheap.
//!
//! # Trees and keys
//!
//! - `outbox`: `part(upstream) | lane | u64 BE seq` → [`OutboxEntry`]. The
//!   lane is `255 - priority`, so one prefix scan per upstream yields the
//!   highest priority first and sequence order inside a priority.
//! - `outbox_index`:
//!   - `S` → the next sequence number (u64 BE). Sequence numbers are per
//!     origin node, shared by all upstreams, never reused (the counter is
//!     written in the transaction that uses it, so it survives restarts).
//!   - `E | part(product) | part(entity) | entry key` → `()`: every pending
//!     entry of an entity, so erasure can delete them.
//!   - `L | part(upstream) | part(product) | part(entity)` → entry key: the
//!     pending *coalescing* entry of an entity (sync mode `latest`).
//!
//! `part(s)` is `u16 BE length | bytes`, so no name is a prefix of another.
//!
//! # Coalescing and holding
//!
//! An item with `coalesce` replaces the entity's pending coalescing entry
//! for the same upstream (new sequence number, so order per lane stays
//! ascending) and inherits its `hold_until`: a `min_interval` rule sends at
//! most one state per entity per interval, the latest one. An entry is not
//! read by a sender before its `hold_until`; a held entry stops its lane
//! (head of line), so what is sent per lane is always in ascending sequence
//! order — what receivers' high-water marks rely on. A reader may pass
//! over whole products (those an upstream refused for now,
//! [`Store::outbox_read_except`]): each other product's entries still go
//! in ascending order, and receivers keep a mark per product.
//!
//! # Budget
//!
//! [`Store::outbox_enforce_budget`] keeps an upstream's pending bytes under
//! a limit: first it coalesces non-coalescing (history) entries to the
//! newest per entity, then drops the lowest priority, oldest first.
//! Tombstones are never dropped. What was removed is reported by reason so
//! the caller counts and logs it.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::codec;
use super::hot::{HotTree, TxTree};
use super::keys_entity::{EntityKeys, FORMAT_ENTITY_SEALED};
use super::tx::{abort, TxResult};
use super::{Change, Store, StoreError};
use crate::record::{Fields, Record, Timestamp};

pub(crate) const OUTBOX_TREE: &str = "outbox";
pub(crate) const OUTBOX_INDEX_TREE: &str = "outbox_index";
const SEQ_KEY: &[u8] = b"S";
const TAG_ENTITY: u8 = b'E';
const TAG_LATEST: u8 = b'L';
/// Most entries of refused products one [`Store::outbox_read_except`]
/// passes over before it stops looking.
pub const MAX_PASSED_OVER: usize = 50_000;

/// Turns state changes into outbox items; installed once by `sync`.
pub trait OutboxPlanner: Send + Sync + 'static {
    /// The items one applied record produces (none when no rule matches).
    fn on_change(&self, product: &str, record: &Record, change: &Change) -> Vec<OutboxItem>;
    /// The tombstone items owed when an entity of `product` is erased.
    fn on_erase(&self, product: &str, entity: &str, at: Timestamp) -> Vec<OutboxItem>;
}

/// What a planner asks the outbox to hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxItem {
    pub upstream: String,
    /// Higher is sent first and dropped last.
    pub priority: u8,
    pub product: String,
    pub definition_version: u32,
    /// The local entity key (for erasure and coalescing).
    pub entity: String,
    /// The entity key as the upstream sees it (pseudonymised when masked).
    pub sent_entity: String,
    pub event_time: Timestamp,
    /// Projected and masked; empty for a tombstone.
    pub fields: Fields,
    pub tombstone: bool,
    /// Replace the entity's pending entry for this upstream (mode latest).
    pub coalesce: bool,
    /// Not sent before this time (`min_interval`).
    pub hold_until: Timestamp,
}

/// One pending outbox entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub seq: u64,
    pub enqueued_at: Timestamp,
    pub item: OutboxItem,
}

/// A pending entry with the key the sender acknowledges it by.
#[derive(Clone, Debug)]
pub struct PendingEntry {
    pub key: Vec<u8>,
    pub entry: OutboxEntry,
}

/// An upstream's outbox figures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OutboxStats {
    pub pending: u64,
    pub bytes: u64,
    /// Enqueue time of the oldest pending entry.
    pub oldest: Option<Timestamp>,
}

/// What one budget enforcement removed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BudgetReport {
    /// History entries replaced by a newer entry of the same entity.
    pub coalesced: u64,
    /// Entries dropped, by priority.
    pub dropped: BTreeMap<u8, u64>,
    /// Bytes pending afterwards.
    pub bytes_after: u64,
}

/// The in-memory tally of pending entries per upstream (kept exact: every
/// outbox write happens under the store's writer lock).
#[derive(Default)]
pub(crate) struct Tally {
    per_upstream: HashMap<String, UpstreamTally>,
}

/// One upstream's pending figures, and where its reads start.
#[derive(Default)]
struct UpstreamTally {
    pending: u64,
    bytes: u64,
    /// Pending entries per lane: the lanes a read visits, in order.
    lanes: BTreeMap<u8, u64>,
    /// Per lane, a key no pending entry of that lane lies below: the
    /// first entry the last read found. Reads start here, not at the
    /// lane's start, so what was acknowledged since the last checkpoint
    /// (removals the hot overlay still holds, keys sled still holds) is
    /// not walked again by every read — which made the send rate fall
    /// with the backlog. A new entry always has the highest sequence
    /// number yet, so it lands above its lane's floor.
    floors: HashMap<u8, Vec<u8>>,
}

impl Tally {
    fn add(&mut self, upstream: &str, key: &[u8], bytes: u64) {
        let slot = self.per_upstream.entry(upstream.to_string()).or_default();
        slot.pending += 1;
        slot.bytes += bytes;
        let lane = lane_of(upstream, key);
        *slot.lanes.entry(lane).or_default() += 1;
        // Never above a pending entry (cannot happen, see `floors`; kept
        // so a wrong floor can only cost a longer walk, never an entry).
        if let Some(floor) = slot.floors.get_mut(&lane) {
            if key < floor.as_slice() {
                *floor = key.to_vec();
            }
        }
    }

    fn sub(&mut self, upstream: &str, key: &[u8], bytes: u64) {
        if let Some(slot) = self.per_upstream.get_mut(upstream) {
            slot.pending = slot.pending.saturating_sub(1);
            slot.bytes = slot.bytes.saturating_sub(bytes);
            let lane = lane_of(upstream, key);
            if let Some(count) = slot.lanes.get_mut(&lane) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    slot.lanes.remove(&lane);
                }
            }
        }
    }
}

/// What a transaction did to the outbox (upstream, entry key, bytes),
/// applied to the tally after commit.
#[derive(Default, Debug)]
pub(crate) struct OutboxDelta {
    added: Vec<(String, Vec<u8>, u64)>,
    removed: Vec<(String, Vec<u8>, u64)>,
}

fn part(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&bytes[..usize::from(len)]);
}

fn upstream_prefix(upstream: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(upstream.len() + 11);
    part(&mut key, upstream);
    key
}

fn entry_key(upstream: &str, priority: u8, seq: u64) -> Vec<u8> {
    let mut key = upstream_prefix(upstream);
    key.push(255 - priority);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The lane of an entry key of `upstream`.
fn lane_of(upstream: &str, key: &[u8]) -> u8 {
    let at = 2 + upstream.len().min(usize::from(u16::MAX));
    key.get(at).copied().unwrap_or(0)
}

/// The sequence number of an entry key (its last 8 bytes).
fn seq_of(key: &[u8]) -> u64 {
    key.len()
        .checked_sub(8)
        .and_then(|at| key[at..].try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

fn entity_index_prefix(product: &str, entity: &str) -> Vec<u8> {
    let mut key = vec![TAG_ENTITY];
    part(&mut key, product);
    part(&mut key, entity);
    key
}

fn entity_index_key(product: &str, entity: &str, entry: &[u8]) -> Vec<u8> {
    let mut key = entity_index_prefix(product, entity);
    key.extend_from_slice(entry);
    key
}

fn latest_key(upstream: &str, product: &str, entity: &str) -> Vec<u8> {
    let mut key = vec![TAG_LATEST];
    part(&mut key, upstream);
    part(&mut key, product);
    part(&mut key, entity);
    key
}

fn corrupt(what: &'static str, detail: impl ToString) -> StoreError {
    StoreError::bookkeeping("outbox".to_string(), what, detail)
}

/// Decodes an entry; one sealed with its entity's key (encrypted store)
/// is opened first.
fn decode_entry(
    keys: Option<&EntityKeys>,
    key: &[u8],
    bytes: &[u8],
) -> Result<OutboxEntry, StoreError> {
    match (keys, bytes.first()) {
        (Some(keys), Some(&FORMAT_ENTITY_SEALED)) => keys
            .open(OUTBOX_TREE, key, bytes)
            .and_then(|plain| codec::decode(&plain)),
        _ => codec::decode(bytes),
    }
    .map_err(|e| corrupt("outbox entry", e))
}

/// The outbox trees inside a write transaction.
pub(crate) struct OutboxTx<'a> {
    pub entries: &'a TxTree<'a>,
    pub index: &'a TxTree<'a>,
    pub now: Timestamp,
    /// An encrypted store's entity keys: entries with values are sealed
    /// with their entity's key (tombstones are not: they outlive it).
    pub keys: Option<&'a EntityKeys>,
}

impl OutboxTx<'_> {
    fn next_seq(&self) -> TxResult<u64> {
        let seq = match self.index.get(SEQ_KEY)? {
            Some(bytes) => {
                let raw: [u8; 8] = bytes
                    .as_ref()
                    .try_into()
                    .map_err(|_| abort(corrupt("outbox sequence", "not 8 bytes")))?;
                u64::from_be_bytes(raw)
            }
            None => 1,
        };
        self.index
            .overwrite(SEQ_KEY, (seq + 1).to_be_bytes().as_slice());
        Ok(seq)
    }

    /// Removes one entry and its index keys; returns its size when it was
    /// there.
    fn remove(&self, key: &[u8], delta: &mut OutboxDelta) -> TxResult<Option<OutboxEntry>> {
        let Some(bytes) = self.entries.remove(key)? else {
            return Ok(None);
        };
        let entry = decode_entry(self.keys, key, &bytes).map_err(abort)?;
        let item = &entry.item;
        self.index
            .remove(entity_index_key(&item.product, &item.entity, key))?;
        if item.coalesce {
            let latest = latest_key(&item.upstream, &item.product, &item.entity);
            if self.index.get(&latest)?.as_deref() == Some(key) {
                self.index.remove(latest)?;
            }
        }
        delta
            .removed
            .push((item.upstream.clone(), key.to_vec(), bytes.len() as u64));
        Ok(Some(entry))
    }

    /// Appends one item (replacing the pending coalescing entry it
    /// supersedes).
    pub(crate) fn push(&self, mut item: OutboxItem, delta: &mut OutboxDelta) -> TxResult<()> {
        let latest = latest_key(&item.upstream, &item.product, &item.entity);
        if item.coalesce {
            if let Some(old_key) = self.index.get(&latest)? {
                if let Some(old) = self.remove(&old_key, delta)? {
                    item.hold_until = item.hold_until.min(old.item.hold_until);
                }
            }
        }
        let seq = self.next_seq()?;
        let key = entry_key(&item.upstream, item.priority, seq);
        let entry = OutboxEntry {
            seq,
            enqueued_at: self.now,
            item,
        };
        let bytes = codec::encode(&entry)
            .and_then(|plain| match self.keys {
                Some(keys) if !entry.item.tombstone => keys.seal(
                    &entry.item.product,
                    &entry.item.entity,
                    OUTBOX_TREE,
                    &key,
                    &plain,
                ),
                _ => Ok(plain),
            })
            .map_err(|e| {
                abort(StoreError::encode(
                    &entry.item.product,
                    &entry.item.entity,
                    "outbox entry",
                    e,
                ))
            })?;
        let item = &entry.item;
        super::digest::DigestTx { index: self.index }.sent(item)?;
        self.index.overwrite(
            entity_index_key(&item.product, &item.entity, &key),
            &[] as &[u8],
        );
        if item.coalesce {
            self.index.overwrite(latest, key.as_slice());
        }
        delta
            .added
            .push((item.upstream.clone(), key.clone(), bytes.len() as u64));
        self.entries.overwrite(key, bytes);
        Ok(())
    }

    /// Erasure: removes every pending entry of the entity (listed before
    /// the transaction) and appends the tombstones.
    pub(crate) fn erase(
        &self,
        pending: &[Vec<u8>],
        tombstones: &[OutboxItem],
        delta: &mut OutboxDelta,
    ) -> TxResult<()> {
        for key in pending {
            self.remove(key, delta)?;
        }
        for item in tombstones {
            self.push(item.clone(), delta)?;
        }
        Ok(())
    }
}

/// Planned erasure work, listed under the writer lock before the
/// transaction (transactions cannot scan).
#[derive(Default)]
pub(crate) struct ErasePlan {
    pub pending: Vec<Vec<u8>>,
    pub tombstones: Vec<OutboxItem>,
}

/// One lane's entries in key (= sequence) order, from a floor up to a
/// sequence horizon, read in windows of sequence numbers: each window is
/// one bounded range of the hot tree, so a read costs what it returns
/// and not the lane's depth (a range copies the overlay's part of it up
/// front, and after a restart the overlay can hold the whole backlog).
/// Windows double while empty (other upstreams and lanes share the
/// sequence), and start again small once one holds something.
struct LaneScan<'a> {
    store: &'a Store,
    prefix: Vec<u8>,
    lane: u8,
    /// The next window starts here (inclusive)…
    next_seq: u64,
    /// …and nothing at or above this is read.
    horizon: u64,
    base: u64,
    width: u64,
    window: Option<super::hot::MergeIter>,
    /// The floor's key: entries below it in its first window are skipped
    /// by the range itself.
    start_key: Option<Vec<u8>>,
}

impl<'a> LaneScan<'a> {
    fn new(
        store: &'a Store,
        upstream: &str,
        lane: u8,
        floor: Option<&[u8]>,
        horizon: u64,
        wanted: usize,
    ) -> LaneScan<'a> {
        let base = (wanted as u64).saturating_mul(2).clamp(64, 1 << 16);
        LaneScan {
            store,
            prefix: upstream_prefix(upstream),
            lane,
            next_seq: floor.map_or(0, seq_of),
            horizon,
            base,
            width: base,
            window: None,
            start_key: floor.map(<[u8]>::to_vec),
        }
    }

    fn key(&self, seq: u64) -> Vec<u8> {
        let mut key = self.prefix.clone();
        key.push(self.lane);
        key.extend_from_slice(&seq.to_be_bytes());
        key
    }

    fn next_entry(&mut self) -> Result<Option<(sled::IVec, sled::IVec)>, StoreError> {
        loop {
            if let Some(window) = self.window.as_mut() {
                match window.next() {
                    Some(Ok(kv)) => {
                        self.width = self.base;
                        return Ok(Some(kv));
                    }
                    Some(Err(e)) => return Err(StoreError::sled("reading the outbox", e)),
                    None => {
                        self.window = None;
                        self.width = self.width.saturating_mul(2);
                    }
                }
            }
            if self.next_seq >= self.horizon {
                return Ok(None);
            }
            let end_seq = self.next_seq.saturating_add(self.width).min(self.horizon);
            let start = match self.start_key.take() {
                Some(key) => key,
                None => self.key(self.next_seq),
            };
            let end = self.key(end_seq);
            self.next_seq = end_seq;
            self.window = Some(self.store.inner.outbox.range(start..end));
        }
    }
}

impl Store {
    /// Installs the planner every later write consults. Replaces any
    /// earlier one.
    pub fn set_outbox_planner(&self, planner: std::sync::Arc<dyn OutboxPlanner>) {
        *self
            .inner
            .planner
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(planner);
    }

    pub(crate) fn planner(&self) -> Option<std::sync::Arc<dyn OutboxPlanner>> {
        self.inner
            .planner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn outbox_trees(&self) -> (&HotTree, &HotTree) {
        (&self.inner.outbox, &self.inner.outbox_index)
    }

    pub(crate) fn apply_outbox_delta(&self, delta: OutboxDelta) {
        if delta.added.is_empty() && delta.removed.is_empty() {
            return;
        }
        let mut tally = self.inner.tally.lock().unwrap_or_else(|p| p.into_inner());
        for (upstream, key, bytes) in &delta.added {
            tally.add(upstream, key, *bytes);
        }
        for (upstream, key, bytes) in &delta.removed {
            tally.sub(upstream, key, *bytes);
        }
    }

    /// Whether any outbox entry of the entity is still pending (sync
    /// verification leaves such entities alone: they are on their way).
    pub fn outbox_has_pending(&self, product: &str, entity: &str) -> Result<bool, StoreError> {
        let prefix = entity_index_prefix(product, entity);
        match self.inner.outbox_index.scan_prefix(&prefix).next() {
            Some(Err(e)) => Err(StoreError::sled("listing outbox entries", e)),
            found => Ok(found.is_some()),
        }
    }

    /// Lists the erasure work for one entity (caller holds the writer lock).
    pub(crate) fn plan_outbox_erase(
        &self,
        product: &str,
        entity: &str,
        at: Timestamp,
    ) -> Result<ErasePlan, StoreError> {
        let Some(planner) = self.planner() else {
            return Ok(ErasePlan::default());
        };
        let prefix = entity_index_prefix(product, entity);
        let mut pending = Vec::new();
        for item in self.inner.outbox_index.scan_prefix(&prefix) {
            let (key, _) = item.map_err(|e| StoreError::sled("listing outbox entries", e))?;
            pending.push(key[prefix.len()..].to_vec());
        }
        Ok(ErasePlan {
            pending,
            tombstones: planner.on_erase(product, entity, at),
        })
    }

    /// Up to `max` entries owed to `upstream`, highest priority first and
    /// in sequence order, all from one priority lane; stops at the first
    /// entry held beyond `now` (a lane whose head is held is skipped).
    pub fn outbox_read(
        &self,
        upstream: &str,
        max: usize,
        now: Timestamp,
    ) -> Result<Vec<PendingEntry>, StoreError> {
        self.outbox_read_except(upstream, max, now, &HashSet::new())
    }

    /// [`Store::outbox_read`] passing over the entries of the products in
    /// `except` (those the upstream refused for now): they stay, in order,
    /// and the entries of other products behind them are read. Receivers
    /// keep their marks per product, so each product's entries still
    /// arrive in ascending order. At most [`MAX_PASSED_OVER`] entries are
    /// passed over per read, so a long backlog of a refused product costs a
    /// bounded scan (what lies beyond waits for a later read).
    pub fn outbox_read_except(
        &self,
        upstream: &str,
        max: usize,
        now: Timestamp,
        except: &HashSet<String>,
    ) -> Result<Vec<PendingEntry>, StoreError> {
        // Only entries below the sequence counter as it is now: they were
        // all committed before this scan began (the counter moves in the
        // same transaction as the entry), so the scan cannot see a later
        // entry while missing an earlier one of the same lane — which the
        // receiver's high-water mark would then skip forever.
        let horizon = match self
            .inner
            .outbox_index
            .get(SEQ_KEY)
            .map_err(|e| StoreError::sled("reading the outbox sequence", e))?
        {
            Some(bytes) => u64::from_be_bytes(
                bytes
                    .as_ref()
                    .try_into()
                    .map_err(|_| corrupt("outbox sequence", "not 8 bytes"))?,
            ),
            None => return Ok(Vec::new()),
        };
        let mut out: Vec<PendingEntry> = Vec::new();
        let mut passed_over = 0usize;
        'lanes: for (lane, floor) in self.outbox_lanes(upstream) {
            let mut scan = LaneScan::new(self, upstream, lane, floor.as_deref(), horizon, max);
            let mut first = true;
            while let Some((key, bytes)) = scan.next_entry()? {
                if first {
                    self.raise_floor(upstream, lane, &key);
                    first = false;
                }
                let entry = decode_entry(self.entity_keys(), &key, &bytes)?;
                if except.contains(&entry.item.product) {
                    passed_over += 1;
                    if passed_over >= MAX_PASSED_OVER {
                        break 'lanes;
                    }
                    continue;
                }
                if entry.item.hold_until > now {
                    // A held head skips its lane; a held entry behind
                    // what was read ends the read (head of line).
                    if out.is_empty() {
                        continue 'lanes;
                    }
                    break 'lanes;
                }
                out.push(PendingEntry {
                    key: key.to_vec(),
                    entry,
                });
                if out.len() >= max {
                    break 'lanes;
                }
            }
            if !out.is_empty() {
                break;
            }
        }
        Ok(out)
    }

    /// The lanes of `upstream` holding entries, in order, each with its
    /// floor (where its reads start).
    fn outbox_lanes(&self, upstream: &str) -> Vec<(u8, Option<Vec<u8>>)> {
        let tally = self.inner.tally.lock().unwrap_or_else(|p| p.into_inner());
        let Some(slot) = tally.per_upstream.get(upstream) else {
            return Vec::new();
        };
        slot.lanes
            .keys()
            .map(|lane| (*lane, slot.floors.get(lane).cloned()))
            .collect()
    }

    /// A read found `key` first in its lane, starting at the lane's
    /// floor: nothing of the lane is pending below it.
    fn raise_floor(&self, upstream: &str, lane: u8, key: &[u8]) {
        let mut tally = self.inner.tally.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = tally.per_upstream.get_mut(upstream) {
            let floor = slot.floors.entry(lane).or_default();
            if key > floor.as_slice() {
                *floor = key.to_vec();
            }
        }
    }

    /// Deletes entries the upstream acknowledged. Keys already gone (an
    /// entry coalesced away while in flight) are ignored.
    pub fn outbox_ack(&self, keys: &[Vec<u8>]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let _writer = self.write_lock();
        let delta = self.outbox_transaction(|tx, delta| {
            for key in keys {
                tx.remove(key, delta)?;
            }
            Ok(())
        })?;
        self.apply_outbox_delta(delta);
        self.inner.group.wrote();
        Ok(())
    }

    fn outbox_transaction(
        &self,
        work: impl Fn(&OutboxTx<'_>, &mut OutboxDelta) -> TxResult<()>,
    ) -> Result<OutboxDelta, StoreError> {
        self.hot_transaction(
            &[&self.inner.outbox, &self.inner.outbox_index],
            |views| {
                let [entries, index] = views else {
                    return Err(abort(corrupt("outbox", "two trees expected")));
                };
                let tx = OutboxTx {
                    entries,
                    index,
                    now: Timestamp::now(),
                    keys: self.entity_keys(),
                };
                let mut delta = OutboxDelta::default();
                work(&tx, &mut delta)?;
                Ok(delta)
            },
            || "updating the outbox".to_string(),
        )
    }

    /// Removes entries in transactions of bounded size (caller holds the
    /// writer lock); returns how many were there.
    fn outbox_remove_keys(&self, keys: &[&[u8]]) -> Result<u64, StoreError> {
        let mut removed = 0;
        for chunk in keys.chunks(1_000) {
            let delta = self.outbox_transaction(|tx, delta| {
                for key in chunk {
                    tx.remove(key, delta)?;
                }
                Ok(())
            })?;
            removed += delta.removed.len() as u64;
            self.apply_outbox_delta(delta);
        }
        Ok(removed)
    }

    /// Pending count, bytes and oldest enqueue time of `upstream`.
    pub fn outbox_stats(&self, upstream: &str) -> Result<OutboxStats, StoreError> {
        let (pending, bytes) = self
            .inner
            .tally
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .per_upstream
            .get(upstream)
            .map_or((0, 0), |slot| (slot.pending, slot.bytes));
        // The oldest entry is the head of one of the (at most 256) lanes.
        let mut oldest: Option<Timestamp> = None;
        for (lane, floor) in self.outbox_lanes(upstream) {
            let mut scan = LaneScan::new(self, upstream, lane, floor.as_deref(), u64::MAX, 1);
            if let Some((key, value)) = scan.next_entry()? {
                let entry = decode_entry(self.entity_keys(), &key, &value)?;
                oldest = Some(oldest.map_or(entry.enqueued_at, |o| o.min(entry.enqueued_at)));
            }
        }
        Ok(OutboxStats {
            pending,
            bytes,
            oldest,
        })
    }

    /// Recounts the tally from disk (at open), first dropping the entries
    /// of erased entities whose keys are gone (`keys_entity.rs`): an
    /// erasure removes them before it destroys the key, so only a restored
    /// backup or a crash between the two leaves any, and nothing could
    /// ever send them.
    pub(crate) fn outbox_recount(&self) -> Result<(), StoreError> {
        let mut tally = Tally::default();
        let mut shredded: Vec<(sled::IVec, String, String)> = Vec::new();
        for item in self.inner.outbox.iter() {
            let (key, value) = item.map_err(|e| StoreError::sled("counting the outbox", e))?;
            if let Some((product, entity)) = self.entity_keys().and_then(|k| k.shredded(&value)) {
                shredded.push((key, product, entity));
                continue;
            }
            let entry = decode_entry(self.entity_keys(), &key, &value)?;
            tally.add(&entry.item.upstream, &key, value.len() as u64);
        }
        if !shredded.is_empty() {
            let _writer = self.write_lock();
            self.hot_transaction(
                &[&self.inner.outbox, &self.inner.outbox_index],
                |views| {
                    let [entries, index] = views else {
                        return Err(abort(corrupt("outbox", "two trees expected")));
                    };
                    for (key, product, entity) in &shredded {
                        entries.remove(key.as_ref())?;
                        index.remove(entity_index_key(product, entity, key))?;
                    }
                    Ok(())
                },
                || "dropping the outbox entries of erased entities".to_string(),
            )?;
            tracing::warn!(
                entries = shredded.len(),
                "dropped outbox entries of erased entities (their keys are destroyed)"
            );
        }
        *self.inner.tally.lock().unwrap_or_else(|p| p.into_inner()) = tally;
        Ok(())
    }

    /// Keeps `upstream`'s pending bytes at or under `max_bytes`: coalesces
    /// history entries to the newest per entity first, then drops the
    /// lowest priority, oldest first. Tombstones always stay.
    pub fn outbox_enforce_budget(
        &self,
        upstream: &str,
        max_bytes: u64,
    ) -> Result<BudgetReport, StoreError> {
        let mut report = BudgetReport::default();
        let over = |store: &Store| store.outbox_stats(upstream).map(|s| s.bytes > max_bytes);
        if !over(self)? {
            report.bytes_after = self.outbox_stats(upstream)?.bytes;
            return Ok(report);
        }
        let _writer = self.write_lock();
        // Only what the rule needs is kept per entry (no field values):
        // a full outbox is read once, in bounded memory per entry.
        struct Slot {
            key: Vec<u8>,
            seq: u64,
            priority: u8,
            tombstone: bool,
            size: u64,
            entity: u128,
        }
        let prefix = upstream_prefix(upstream);
        let mut slots: Vec<Slot> = Vec::new();
        for item in self.inner.outbox.scan_prefix(&prefix) {
            let (key, value) = item.map_err(|e| StoreError::sled("reading the outbox", e))?;
            let entry = decode_entry(self.entity_keys(), &key, &value)?;
            let mut id = Vec::new();
            part(&mut id, &entry.item.product);
            part(&mut id, &entry.item.entity);
            slots.push(Slot {
                key: key.to_vec(),
                seq: entry.seq,
                priority: entry.item.priority,
                tombstone: entry.item.tombstone,
                size: value.len() as u64,
                entity: xxhash_rust::xxh3::xxh3_128(&id),
            });
        }
        // Step 1: coalesce. Newest first, so the first entry seen of an
        // entity is the one kept; whatever came before an erasure goes.
        slots.sort_by_key(|s| std::cmp::Reverse(s.seq));
        let mut seen: HashSet<u128> = HashSet::new();
        let mut superseded = vec![false; slots.len()];
        for (i, slot) in slots.iter().enumerate() {
            if !seen.insert(slot.entity) && !slot.tombstone {
                superseded[i] = true;
            }
        }
        let coalesce: Vec<&[u8]> = slots
            .iter()
            .zip(&superseded)
            .filter(|(_, &gone)| gone)
            .map(|(s, _)| s.key.as_slice())
            .collect();
        report.coalesced = self.outbox_remove_keys(&coalesce)?;
        // Step 2: drop lowest priority, oldest first; never a tombstone.
        let mut bytes = self.outbox_stats(upstream)?.bytes;
        let mut candidates: Vec<&Slot> = slots
            .iter()
            .zip(&superseded)
            .filter(|(s, &gone)| !gone && !s.tombstone)
            .map(|(s, _)| s)
            .collect();
        candidates.sort_by_key(|s| (s.priority, s.seq));
        let mut drop: Vec<&Slot> = Vec::new();
        for slot in candidates {
            if bytes <= max_bytes {
                break;
            }
            bytes = bytes.saturating_sub(slot.size);
            drop.push(slot);
        }
        let keys: Vec<&[u8]> = drop.iter().map(|s| s.key.as_slice()).collect();
        self.outbox_remove_keys(&keys)?;
        for slot in &drop {
            *report.dropped.entry(slot.priority).or_default() += 1;
        }
        self.inner.group.wrote();
        bytes = self.outbox_stats(upstream)?.bytes;
        report.bytes_after = bytes;
        Ok(report)
    }
}
