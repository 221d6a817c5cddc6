//! The writer's own copy of the instances it wrote last, decoded, so the
//! next record of a device that reports again needs neither a sled read
//! nor a MessagePack decode of its instance.
//!
//! Why: in a profile of QoS 1 ingest (`benches/README.md`), reading the
//! instance inside the transaction (sled's `view_for_key`) and decoding
//! it took about a fifth of the single writer's time, and the writer is
//! what limits ingest. Devices report again and again; their instances
//! are the writer's working set.
//!
//! # Why a state here is never stale
//!
//! Only code holding the store's writer lock touches it, and only the
//! writer's commit puts states in:
//!
//! - A transaction *takes* an entity's state out (it owns it from then
//!   on) and hands the new states back only after its commit succeeded
//!   ([`WriterStates::committed`]). A transaction that aborts or is
//!   retried has taken states out and put nothing back: the next read
//!   misses and reads sled, which still holds the committed state.
//! - Everything else that rewrites or removes an instance (erase, expiry,
//!   retention) forgets the entity under the writer lock
//!   (`ProductTrees::forget_instance`), and handing out the raw database
//!   clears it all.
//!
//! A miss is always correct (it reads sled); only a state that differs
//! from sled's would be wrong, and the rules above leave none.
//!
//! Bounded by entries (`StoreConfig::instance_cache_entries`, the lookup
//! cache's bound); when full, an arbitrary entry makes room.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::stored::StoredInstance;

/// States a transaction produced, by entity: the newest of each, handed
/// to [`WriterStates::committed`] once the transaction committed.
pub(crate) type PendingStates = HashMap<String, StoredInstance>;

/// One product's writer-side states; see the module docs.
pub(crate) struct WriterStates {
    states: Mutex<HashMap<String, StoredInstance>>,
    capacity: usize,
}

impl WriterStates {
    /// At most `capacity` entities (0: off, every read goes to sled).
    pub fn new(capacity: usize) -> WriterStates {
        WriterStates {
            states: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    // Each insert and removal is whole, so a map left by a thread that
    // panicked still holds only committed states.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, StoredInstance>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The committed state of `entity`, taken out (the caller's
    /// transaction now owns it), or `None` to read it from sled.
    pub fn take(&self, entity: &str) -> Option<StoredInstance> {
        if self.capacity == 0 {
            return None;
        }
        self.lock().remove(entity)
    }

    /// Puts in what a transaction wrote (call after its commit, under the
    /// writer lock).
    pub fn committed(&self, pending: PendingStates) {
        if self.capacity == 0 {
            return;
        }
        let mut states = self.lock();
        for (entity, state) in pending {
            if states.len() >= self.capacity && !states.contains_key(&entity) {
                if let Some(victim) = states.keys().next().cloned() {
                    states.remove(&victim);
                }
            }
            states.insert(entity, state);
        }
    }

    /// Drops `entity` (its instance is rewritten or removed outside
    /// ingest).
    pub fn forget(&self, entity: &str) {
        self.lock().remove(entity);
    }

    /// Drops everything (the raw database was handed out).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Entities held now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Origin, Timestamp};

    fn state(version: u64) -> StoredInstance {
        StoredInstance {
            version,
            ..StoredInstance::empty(Timestamp::now(), Timestamp::now(), Origin::new("test"))
        }
    }

    #[test]
    fn a_taken_state_is_gone_until_a_commit_puts_the_new_one_in() {
        let states = WriterStates::new(10);
        states.committed(PendingStates::from([("a".to_string(), state(1))]));
        assert_eq!(states.take("a").map(|s| s.version), Some(1));
        // An aborted transaction puts nothing back: the next read misses.
        assert!(states.take("a").is_none());
        states.committed(PendingStates::from([("a".to_string(), state(2))]));
        states.forget("a");
        assert!(states.take("a").is_none());
    }

    #[test]
    fn the_bound_holds_and_off_means_always_missing() {
        let states = WriterStates::new(3);
        for i in 0..10 {
            states.committed(PendingStates::from([(format!("e{i}"), state(i))]));
        }
        assert_eq!(states.len(), 3);
        let off = WriterStates::new(0);
        off.committed(PendingStates::from([("a".to_string(), state(1))]));
        assert!(off.take("a").is_none());
        assert_eq!(off.len(), 0);
    }
}
