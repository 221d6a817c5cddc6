//! The newest committed state of recently read or written entities, kept
//! decoded, so key lookups need neither sled nor a decode.
//!
//! Why: once a process has used a sled 0.34 transaction, every tree read
//! takes a process-wide lock whose write side a transaction holds from
//! before its closure runs until it has applied its writes
//! (`sled::concurrency_control`, `Transactional::transaction`). The writer
//! is inside such a transaction most of the time under ingest, so lookups
//! that read sled waited on it: in `benches/api_load.rs` the lookups under
//! ingest ran at a third of their rate with 0.4 of 2 cores idle.
//!
//! # Why a state never goes back
//!
//! Every reader must see an entity's versions in order, across requests:
//! a dashboard that saw version 8 must not see 7 next. sled alone gives
//! that. The cache keeps it with three rules:
//!
//! - The writer puts each committed state in right after its commit,
//!   under the store's writer lock, so the writer's puts come in commit
//!   order. During the commit the old state is still served: it is what
//!   a reader would have seen a moment earlier.
//! - A reader that missed reads sled and puts what it read back
//!   (*fills*) only if it is newer than what is cached, and only if
//!   nothing was removed from the cache since the miss (a *removal
//!   count* ticket). Without the first check, a reader that read sled
//!   before a commit could put back an older state over the writer's
//!   newer one, after another reader had already seen the newer one in
//!   sled. Without the second, a slow reader could put back an evicted
//!   entity's older state, or an erased entity's state. A refused fill
//!   still drops an *older* cached state of its entity: the writer may
//!   have put that in after the miss and before the commit the reader
//!   read, and the reader must not be shown it next.
//! - Erase, expiry and retention forget the entity (a removal) before
//!   and after their transaction, under the writer lock: a reader that
//!   read sled before the commit cannot fill after it.
//!
//! `lookups_never_go_back_a_version_while_the_writer_commits`
//! (tests/it/store_api.rs) is the test. It caught the first version of this
//! cache, which had none of these rules.
//!
//! The cache is bounded by entries (`StoreConfig::instance_cache_entries`).
//! When it is full, an arbitrary entry makes room: the map's hash order is
//! random. That is enough for the case it is for, a working set of devices
//! that report or are read often.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::Instance;

#[derive(Default)]
struct Entries {
    map: HashMap<String, Arc<Instance>>,
    /// Entries removed so far (evictions, forgets, clears).
    removals: u64,
}

impl Entries {
    /// Makes room for one more entry when full.
    fn make_room(&mut self, capacity: usize) {
        if self.map.len() >= capacity {
            if let Some(victim) = self.map.keys().next().cloned() {
                self.map.remove(&victim);
                self.removals += 1;
            }
        }
    }
}

/// States put in per hold of the write lock by [`CurrentCache::committed`]:
/// a few microseconds of work, so a lookup never waits for a whole group.
const COMMIT_STRIDE: usize = 64;

/// What a miss hands the reader: the removal count at the miss, so a fill
/// after a removal is refused.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FillTicket(u64);

/// One product's cache; see the module docs.
pub(crate) struct CurrentCache {
    entries: RwLock<Entries>,
    capacity: usize,
    /// Every current instance, for fleet aggregates (`projection.rs`):
    /// fed by the same hooks, off until the first aggregate builds it.
    pub projection: super::projection::Projection,
}

impl CurrentCache {
    /// A cache of at most `capacity` entities (0: off).
    pub fn new(capacity: usize) -> CurrentCache {
        CurrentCache {
            entries: RwLock::new(Entries::default()),
            capacity,
            projection: super::projection::Projection::new(),
        }
    }

    // A thread that panicked mid-update leaves a map that is still a valid
    // map of committed states (each insert is whole), so poison is ignored.
    fn read(&self) -> RwLockReadGuard<'_, Entries> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Entries> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached state of `entity`, or the ticket to fill it with what
    /// sled holds.
    pub fn lookup(&self, entity: &str) -> Result<Instance, FillTicket> {
        self.lookup_shared(entity)
            .map(|state| Instance::clone(&state))
    }

    /// [`CurrentCache::lookup`] without copying the state: readers that
    /// only read it (a key lookup serialized as is) skip the deep clone.
    pub fn lookup_shared(&self, entity: &str) -> Result<Arc<Instance>, FillTicket> {
        // With capacity 0 nothing is ever put in, so this always misses.
        let entries = self.read();
        match entries.map.get(entity) {
            Some(state) => Ok(Arc::clone(state)),
            None => Err(FillTicket(entries.removals)),
        }
    }

    /// Puts back what a reader read from sled after `ticket`'s miss: only
    /// if nothing was removed since and it is newer than what is cached.
    pub fn fill(&self, ticket: FillTicket, state: &Instance) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.write();
        if entries.removals != ticket.0 {
            // Not put back, but an older cached state of this entity must
            // not outlive what this reader saw: the writer may have put it
            // in after the miss, before the commit this reader read.
            let older = entries
                .map
                .get(&state.entity)
                .is_some_and(|cached| cached.version < state.version);
            if older {
                entries.map.remove(&state.entity);
                entries.removals += 1;
            }
            return;
        }
        match entries.map.get(&state.entity) {
            Some(cached) if cached.version >= state.version => {}
            Some(_) => {
                entries
                    .map
                    .insert(state.entity.clone(), Arc::new(state.clone()));
            }
            None => {
                entries.make_room(self.capacity);
                entries
                    .map
                    .insert(state.entity.clone(), Arc::new(state.clone()));
            }
        }
    }

    /// Records what was just committed (call under the store's writer
    /// lock, after the transaction succeeded), in commit order: an entity
    /// a group wrote several times ends with its last state.
    pub fn committed<'a>(&self, states: impl IntoIterator<Item = &'a Arc<Instance>>) {
        let states: Vec<&Arc<Instance>> = states.into_iter().collect();
        self.projection.committed(states.iter().copied());
        if self.capacity == 0 {
            return;
        }
        // The states replaced here are dropped after the lock is given
        // back: freeing an instance's fields is the slowest part of the
        // update (perf: most of this function's time under ingest), and
        // every lookup waits while the lock is held.
        //
        // The lock is taken per `COMMIT_STRIDE` states, not for the whole
        // group (up to `batch_max_records`): the writer runs at a lower CPU
        // priority than the lookups (`ingest.nice`), and a writer the
        // kernel preempts while it holds the lock would make every lookup
        // wait until it gets a core back. The order of the puts, and so
        // each entity's last state, is the same.
        let mut states = states.into_iter().peekable();
        let mut replaced = Vec::new();
        while states.peek().is_some() {
            {
                let mut entries = self.write();
                for state in states.by_ref().take(COMMIT_STRIDE) {
                    match entries.map.get_mut(state.entity.as_str()) {
                        Some(entry) => replaced.push(std::mem::replace(entry, Arc::clone(state))),
                        None => {
                            entries.make_room(self.capacity);
                            entries.map.insert(state.entity.clone(), Arc::clone(state));
                        }
                    }
                }
            }
            replaced.clear();
        }
    }

    /// Drops `entity` (before a commit that removes or rewrites it outside
    /// ingest).
    pub fn forget(&self, entity: &str) {
        self.projection.forget(entity);
        let mut entries = self.write();
        entries.map.remove(entity);
        // Counted even when absent: a reader's sled read may be older.
        entries.removals += 1;
    }

    /// Drops everything (the raw database was handed out).
    pub fn clear(&self) {
        self.projection.clear();
        let mut entries = self.write();
        entries.map.clear();
        entries.removals += 1;
    }

    /// Entities cached now.
    pub fn len(&self) -> usize {
        self.read().map.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::CurrentCache;
    use crate::record::{Fields, Origin, Timestamp};
    use crate::store::Instance;

    fn state(entity: &str, version: u64) -> Arc<Instance> {
        Arc::new(Instance {
            entity: entity.to_string(),
            fields: Fields::new(),
            version,
            first_seen: Timestamp(0),
            last_seen: Timestamp(0),
            event_time: Timestamp(0),
            last_origin: Origin::new("test"),
        })
    }

    #[test]
    fn a_group_longer_than_one_lock_hold_still_ends_with_each_last_state() {
        let cache = CurrentCache::new(10_000);
        // `a` first, 200 others (three strides), then `a` again.
        let mut group = vec![state("a", 1)];
        group.extend((0..200).map(|i| state(&format!("e{i}"), 1)));
        group.push(state("a", 2));
        group.push(state("e3", 2));
        cache.committed(group.iter());
        assert_eq!(cache.len(), 201);
        assert_eq!(cache.lookup("a").map(|i| i.version).ok(), Some(2));
        assert_eq!(cache.lookup("e3").map(|i| i.version).ok(), Some(2));
        assert_eq!(cache.lookup("e199").map(|i| i.version).ok(), Some(1));
    }

    #[test]
    fn a_group_that_writes_an_entity_twice_leaves_its_last_state() {
        // Room for two: the second write of `a` replaces, it does not evict.
        let cache = CurrentCache::new(2);
        let group = [state("a", 1), state("b", 1), state("a", 2)];
        cache.committed(group.iter());
        assert_eq!(cache.lookup("a").map(|i| i.version).ok(), Some(2));
        assert_eq!(cache.lookup("b").map(|i| i.version).ok(), Some(1));
        // A third entity makes room by evicting one of them.
        cache.committed([state("c", 1)].iter());
        assert_eq!(cache.len(), 2);
        assert!(cache.lookup("c").is_ok());
    }
}
