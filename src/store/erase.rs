//! Erasure: removing every value of one entity, leaving only who and when.
//!
//! [`Store::erase`] is the single entry point (the GraphQL mutation, the
//! `meshlet erase` command and, with sync, the outbox all go through it).
//! In one transaction it removes the instance, the whole history, every
//! earlier audit line and every quarantine entry recorded for the entity,
//! and writes an `Erased` audit line (origin and time, no values, no field
//! names) and a tombstone.
//!
//! Not removed: the dedupe window. It holds only unkeyed 128-bit digests of
//! recently received messages (no entity key, no values, no field names),
//! ages out by count, and keeping them stops a sender's redelivery of the
//! erased entity's last message from recreating it.
//!
//! Shared with retention expiry, which removes an entity the same way but
//! leaves an `Expired` line and no tombstone, and leaves the quarantine
//! alone (a per-entity quarantine scan is affordable for a rare erasure, not
//! for every expired entity of a sweep).

use sled::transaction::ConflictableTransactionError;

use super::audit::{self, Hash, GENESIS};
use super::chunk::decode_chunk_header;
use super::codec;
use super::keys::{audit_key, entity_prefix, parse_history_key, TAG_CHUNK};
use super::outbox::{ErasePlan, OutboxDelta, OutboxTx};
use super::quarantine::{self, EntityEntries};
use super::read::decode_stored_instance;
use super::stored::{StoredAuditLine, StoredTombstone};
use super::tx::{abort, TxResult};
use super::{AuditAction, ProductTrees, Store, StoreError, AUDIT, HISTORY, INSTANCES, TOMBSTONES};
use crate::record::{Origin, Timestamp};

/// What removing an entity took away.
pub(crate) struct Removed {
    pub history_events: u64,
    pub quarantine_entries: usize,
}

impl Store {
    /// Erases one entity: its instance, its whole history (chunks and tail),
    /// every earlier audit line and its quarantine entries go, in one
    /// transaction; one `Erased` audit line (origin and time, no values, no
    /// field names) and a tombstone stay. Returns whether there was anything
    /// of the entity (an instance, or only quarantined payloads); erasing an
    /// unknown entity writes nothing. Works on an entity whose stored state
    /// is corrupt (the tombstone's `last_version` is then 0).
    pub fn erase(&self, product: &str, entity: &str, origin: &Origin) -> Result<bool, StoreError> {
        self.erase_at(product, entity, origin, Timestamp::now())
    }

    /// [`Store::erase`] with an explicit erasure time.
    pub fn erase_at(
        &self,
        product: &str,
        entity: &str,
        origin: &Origin,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        self.check_entity(product, entity)?;
        let trees = self.product(product)?;
        let span = tracing::info_span!("store.erase", product, entity);
        let _enter = span.enter();
        let _writer = self.write_lock();
        let instance = trees.instances.get(entity.as_bytes()).map_err(|e| {
            StoreError::sled(
                format!("product `{product}`, entity `{entity}`: reading instance"),
                e,
            )
        })?;
        let quarantined = quarantine::entries_of(&trees, entity)?;
        // The open tail's events go with the instance that holds them.
        let (last_version, tail_events) = match &instance {
            None if quarantined.ids.is_empty() => return Ok(false),
            None => (0, 0),
            Some(bytes) => match decode_stored_instance(&trees, entity, bytes) {
                Ok(state) => (state.version, state.tail.len() as u64),
                Err(e) => {
                    tracing::warn!(error = %e, "erasing an entity whose state is corrupt");
                    (0, 0)
                }
            },
        };
        let line = StoredAuditLine {
            first_at: at,
            last_at: at,
            action: AuditAction::Erased,
            from_version: last_version,
            to_version: last_version,
            count: 1,
            fields: Vec::new(),
            origin: origin.clone(),
            link: None, // linked by `remove_entity`
        };
        let tombstone = StoredTombstone {
            erased_at: at,
            origin: origin.clone(),
            last_version,
            audit_head: Vec::new(), // set by `remove_entity`
        };
        let outbox = self.plan_outbox_erase(product, entity, at)?;
        let removed = remove_entity(
            self,
            &trees,
            entity,
            &line,
            Some((&tombstone, &outbox)),
            Some(&quarantined),
        )?;
        // No journal frame may keep the entity's values: the checkpoint
        // moves the erasure into the trees and drops every frame before
        // it (the window is the erasure call itself, under the lock).
        self.checkpoint_locked()?;
        self.inner.group.wrote();
        // Only now, with the erasure in the trees: every copy of the
        // entity's values left anywhere stops opening (`keys_entity.rs`).
        let shredded = trees.destroy_entity_key(entity).map_err(|e| StoreError::Meta {
            path: self.config().path.clone(),
            detail: format!("product `{product}`, entity `{entity}`: the erasure is done but its key was not destroyed: {e}"),
        })?;
        // Dictionaries hold no value of this entity alone (see
        // `dictionary_train.rs`); retrain so the next one does not even
        // count it.
        trees.dictionaries.erased();
        tracing::info!(
            last_version,
            history_events = removed.history_events + tail_events,
            quarantine_entries = removed.quarantine_entries,
            shredded,
            "entity erased"
        );
        Ok(true)
    }
}

/// Removes instance, history (the tree's: the open tail in the instance is
/// the caller's to count) and audit of `entity` (and the `quarantined`
/// entries, updating the quarantine count) and appends `line` (and
/// `tombstone`) in one transaction. `line` is linked to the head of the
/// audit lines it replaces, and the tombstone carries its hash (see
/// `audit.rs`). The caller holds the writer lock, so
/// the key lists read before the transaction cannot change.
pub(crate) fn remove_entity(
    store: &Store,
    trees: &ProductTrees,
    entity: &str,
    line: &StoredAuditLine,
    erasure: Option<(&StoredTombstone, &ErasePlan)>,
    quarantined: Option<&EntityEntries>,
) -> Result<Removed, StoreError> {
    // Erase and expiry both come here, under the writer lock. The entity
    // is forgotten before the transaction and again after it: a reader
    // that read the old state from sled either fills before the second
    // forget or is refused after it (`current.rs`).
    trees.forget_instance(entity);
    let tombstone = erasure.map(|(t, _)| t);
    let product = trees.name.as_str();
    let context = |what: &str| format!("product `{product}`, entity `{entity}`: {what}");
    let prefix = entity_prefix(entity);
    let mut history_keys = Vec::new();
    let mut history_events = 0u64;
    for item in trees.history.scan_prefix(&prefix) {
        let (key, value) = item.map_err(|e| StoreError::sled(context("listing history"), e))?;
        history_events += match parse_history_key(&key) {
            Some((TAG_CHUNK, _)) => trees
                .open(HISTORY, &key, &value)
                .and_then(|plain| decode_chunk_header(&plain))
                .map(|h| h.count)
                .unwrap_or(0),
            _ => 1,
        };
        history_keys.push(key);
    }
    let mut audit_keys = Vec::new();
    let mut tree_head = None;
    for item in trees.audit.scan_prefix(&prefix) {
        let (key, value) = item.map_err(|e| StoreError::sled(context("listing audit"), e))?;
        tree_head = Some((key.clone(), value));
        audit_keys.push(key);
    }
    let (head, replaced) = replaced_head(trees, entity, tree_head, audit_keys.len() as u64)?;
    let mut line = line.clone();
    audit::link_replacing(&mut line, head, replaced);
    let line = &line;
    let tombstone = tombstone.map(|t| StoredTombstone {
        audit_head: line
            .link
            .as_ref()
            .map(|l| l.hash.to_vec())
            .unwrap_or_default(),
        ..t.clone()
    });
    let tombstone = tombstone.as_ref();
    let line_bytes =
        codec::encode(line).map_err(|e| StoreError::encode(product, entity, "audit line", e))?;
    let tombstone_bytes = tombstone
        .map(|t| {
            codec::encode(t).and_then(|plain| trees.seal(TOMBSTONES, entity.as_bytes(), plain))
        })
        .transpose()
        .map_err(|e| StoreError::encode(product, entity, "tombstone", e))?;
    let quarantine_keys: Vec<Vec<u8>> = quarantined
        .map(|q| q.ids.iter().map(|&id| quarantine::entry_key(id)).collect())
        .unwrap_or_default();
    let quarantine_state = quarantined
        .filter(|q| !q.ids.is_empty())
        .map(|q| codec::encode(&q.state))
        .transpose()
        .map_err(|e| StoreError::encode(product, entity, "quarantine state", e))?;

    let (outbox_tree, outbox_index) = store.outbox_trees();
    let delta = store.hot_transaction(
        &[
            &trees.instances,
            &trees.history,
            &trees.audit,
            &trees.tombstones,
            &trees.quarantine,
            outbox_tree,
            outbox_index,
        ],
        |views| {
            let [instances, history, audit, tombstones, quarantine_tree, entries, index] = views
            else {
                return Err(abort(StoreError::encode(
                    product,
                    entity,
                    "erasure",
                    "seven trees expected",
                )));
            };
            instances.remove(entity.as_bytes())?;
            super::digest::DigestTx { index }.removed(product, entity)?;
            for key in &history_keys {
                history.remove(key)?;
            }
            for key in &audit_keys {
                audit.remove(key)?;
            }
            let id = audit
                .generate_id()
                .map_err(ConflictableTransactionError::Storage)?;
            let key = audit_key(entity, id);
            let sealed = trees
                .seal(AUDIT, &key, line_bytes.clone())
                .map_err(|e| abort(StoreError::encode(product, entity, "audit line", e)))?;
            audit.insert(key, sealed)?;
            if let Some(bytes) = &tombstone_bytes {
                tombstones.insert(entity.as_bytes(), bytes.clone())?;
            }
            for key in &quarantine_keys {
                quarantine_tree.remove(key.as_slice())?;
            }
            if let Some(state) = &quarantine_state {
                quarantine_tree.insert(quarantine::STATE_KEY, state.clone())?;
            }
            let mut delta = OutboxDelta::default();
            if let Some((_, plan)) = erasure {
                let outbox = OutboxTx {
                    entries,
                    index,
                    now: line.last_at,
                    keys: store.entity_keys(),
                };
                outbox.erase(&plan.pending, &plan.tombstones, &mut delta)?;
            }
            TxResult::Ok(delta)
        },
        || context("removing the entity"),
    )?;
    trees.forget_instance(entity);
    store.apply_outbox_delta(delta);
    Ok(Removed {
        history_events,
        quarantine_entries: quarantine_keys.len(),
    })
}

/// The head of the audit chain an erasure or expiry replaces, and how many
/// lines it replaces: the instance's open line if there is one, else the
/// newest line of the tree (`tree_head`, key and value). An unreadable or
/// unlinked head gives [`GENESIS`]: the new line then starts a chain.
fn replaced_head(
    trees: &ProductTrees,
    entity: &str,
    tree_head: Option<(sled::IVec, sled::IVec)>,
    tree_lines: u64,
) -> Result<(Hash, u64), StoreError> {
    let product = trees.name.as_str();
    let instance = trees.instances.get(entity.as_bytes()).map_err(|e| {
        StoreError::sled(
            format!("product `{product}`, entity `{entity}`: reading instance"),
            e,
        )
    })?;
    let open = instance.and_then(|bytes| {
        trees
            .open(INSTANCES, entity.as_bytes(), &bytes)
            .and_then(|plain| codec::decode::<super::stored::StoredInstance>(&plain))
            .ok()
            .and_then(|state| state.audit_open)
    });
    if let Some(open) = open {
        let head = open.line.link.map_or(GENESIS, |l| l.hash);
        return Ok((head, tree_lines + 1));
    }
    let head = tree_head
        .and_then(|(key, value)| {
            trees
                .open(AUDIT, &key, &value)
                .and_then(|plain| codec::decode::<StoredAuditLine>(&plain))
                .ok()
        })
        .and_then(|line| line.link)
        .map_or(GENESIS, |l| l.hash);
    Ok((head, tree_lines))
}
