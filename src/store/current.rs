//! The newest committed state of recently written entities, kept decoded,
//! so key lookups need neither sled nor a decode.
//!
//! Why: once a process has used a sled 0.34 transaction, every tree read
//! takes a process-wide lock whose write side a transaction holds from
//! before its closure runs until it has applied its writes
//! (`sled::concurrency_control`, `Transactional::transaction`). The writer
//! is inside such a transaction most of the time under ingest, so lookups
//! that read sled waited on it: in `benches/api_load.rs` the lookups under
//! ingest ran at a third of their rate with 0.4 of 2 cores idle.
//!
//! The invariant: a cached state is the one sled holds. Writers (under the
//! store's writer lock) forget the entities they are about to write before
//! their transaction and put the committed states back after it, so while
//! sled moves ahead the entity reads from sled. Without the forget, a
//! reader that missed, read sled's new state, and then hit the old cached
//! one saw its entity go back a version (the test
//! `lookups_never_go_back_a_version_while_the_writer_commits` caught it).
//! Readers only look; a miss reads sled, which stays the truth. Paths that
//! write or remove an instance outside ingest (erase, retention) only
//! forget.
//!
//! Bounded by entries (`StoreConfig::instance_cache_entries`). When full,
//! an arbitrary entry makes room (the map's hash order is random), which
//! is enough for the case it is for: a working set of devices that report
//! often.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::Instance;

/// One product's cache; see the module docs.
pub(crate) struct CurrentCache {
    entries: RwLock<HashMap<String, Arc<Instance>>>,
    capacity: usize,
}

impl CurrentCache {
    /// A cache of at most `capacity` entities (0: off).
    pub fn new(capacity: usize) -> CurrentCache {
        CurrentCache {
            entries: RwLock::new(HashMap::new()),
            capacity,
        }
    }

    // A writer that panicked mid-update leaves a map that is still a valid
    // map of committed states (each insert is whole), so poison is ignored.
    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Arc<Instance>>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, Arc<Instance>>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached state of `entity`, if the writer put one.
    pub fn get(&self, entity: &str) -> Option<Instance> {
        if self.capacity == 0 {
            return None;
        }
        self.read().get(entity).map(|i| Instance::clone(i))
    }

    /// Records what was just committed (call under the store's writer
    /// lock, after the transaction succeeded; the entities were forgotten
    /// before it).
    pub fn committed<'a>(&self, states: impl IntoIterator<Item = &'a Instance>) {
        if self.capacity == 0 {
            return;
        }
        // A group writes an entity several times; only its last state is
        // kept, so only that one is copied.
        let mut newest: HashMap<&str, &Instance> = HashMap::new();
        for state in states {
            newest.insert(state.entity.as_str(), state);
        }
        let mut entries = self.write();
        for (entity, state) in newest {
            match entries.get_mut(entity) {
                Some(entry) => *entry = Arc::new(state.clone()),
                None => {
                    if entries.len() >= self.capacity {
                        if let Some(victim) = entries.keys().next().cloned() {
                            entries.remove(&victim);
                        }
                    }
                    entries.insert(entity.to_string(), Arc::new(state.clone()));
                }
            }
        }
    }

    /// Drops `entity` (before a commit that changes it).
    pub fn forget(&self, entity: &str) {
        if self.capacity == 0 {
            return;
        }
        self.write().remove(entity);
    }

    /// Drops every entity of `entities` (before a commit that writes them).
    pub fn forget_many<'a>(&self, entities: impl IntoIterator<Item = &'a str>) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.write();
        if entries.is_empty() {
            return;
        }
        for entity in entities {
            entries.remove(entity);
        }
    }

    /// Drops everything (the raw database was handed out).
    pub fn clear(&self) {
        self.write().clear();
    }

    /// Entities cached now.
    pub fn len(&self) -> usize {
        self.read().len()
    }
}
