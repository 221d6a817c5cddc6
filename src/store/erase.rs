//! Erasure: removing every value of one entity, leaving only who and when.
//!
//! Shared with retention expiry, which removes an entity the same way but
//! leaves an `Expired` line and no tombstone.

use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::chunk::decode_chunk_header;
use super::codec;
use super::keys::{audit_key, entity_prefix, parse_history_key, TAG_CHUNK};
use super::outbox::{ErasePlan, OutboxDelta, OutboxTx};
use super::read::decode_stored_instance;
use super::stored::{StoredAuditLine, StoredTombstone};
use super::{tx_result, AuditAction, ProductTrees, Store, StoreError};
use crate::record::{Origin, Timestamp};

/// What removing an entity took away.
pub(crate) struct Removed {
    pub history_events: u64,
}

impl Store {
    /// Erases one entity: its instance, its whole history (chunks and tail)
    /// and every earlier audit line go, in one transaction; one `Erased`
    /// audit line (origin and time, no values, no field names) and a
    /// tombstone stay. Returns whether the entity existed; erasing a missing
    /// entity writes nothing. Works on an entity whose stored state is
    /// corrupt (the tombstone's `last_version` is then 0).
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
        let Some(bytes) = trees.instances.get(entity.as_bytes()).map_err(|e| {
            StoreError::sled(
                format!("product `{product}`, entity `{entity}`: reading instance"),
                e,
            )
        })?
        else {
            return Ok(false);
        };
        let last_version = match decode_stored_instance(product, entity, &bytes) {
            Ok(state) => state.version,
            Err(e) => {
                tracing::warn!(error = %e, "erasing an entity whose state is corrupt");
                0
            }
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
        };
        let tombstone = StoredTombstone {
            erased_at: at,
            origin: origin.clone(),
            last_version,
        };
        let outbox = self.plan_outbox_erase(product, entity, at)?;
        let removed = remove_entity(self, &trees, entity, &line, Some((&tombstone, &outbox)))?;
        self.inner.group.wrote();
        tracing::info!(
            last_version,
            history_events = removed.history_events,
            "entity erased"
        );
        Ok(true)
    }
}

/// Removes instance, history and audit of `entity` and appends `line`
/// (and `tombstone`) in one transaction. The caller holds the writer lock,
/// so the key lists read here cannot change before the transaction.
pub(crate) fn remove_entity(
    store: &Store,
    trees: &ProductTrees,
    entity: &str,
    line: &StoredAuditLine,
    erasure: Option<(&StoredTombstone, &ErasePlan)>,
) -> Result<Removed, StoreError> {
    let tombstone = erasure.map(|(t, _)| t);
    let product = trees.name.as_str();
    let context = |what: &str| format!("product `{product}`, entity `{entity}`: {what}");
    let prefix = entity_prefix(entity);
    let mut history_keys = Vec::new();
    let mut history_events = 0u64;
    for item in trees.history.scan_prefix(&prefix) {
        let (key, value) = item.map_err(|e| StoreError::sled(context("listing history"), e))?;
        history_events += match parse_history_key(&key) {
            Some((TAG_CHUNK, _)) => decode_chunk_header(&value).map(|h| h.count).unwrap_or(0),
            _ => 1,
        };
        history_keys.push(key);
    }
    let mut audit_keys = Vec::new();
    for item in trees.audit.scan_prefix(&prefix) {
        let (key, _) = item.map_err(|e| StoreError::sled(context("listing audit"), e))?;
        audit_keys.push(key);
    }
    let line_bytes =
        codec::encode(line).map_err(|e| StoreError::encode(product, entity, "audit line", e))?;
    let tombstone_bytes = tombstone
        .map(codec::encode)
        .transpose()
        .map_err(|e| StoreError::encode(product, entity, "tombstone", e))?;

    let (outbox_tree, outbox_index) = store.outbox_trees();
    let result = (
        &trees.instances,
        &trees.history,
        &trees.audit,
        &trees.tombstones,
        outbox_tree,
        outbox_index,
    )
        .transaction(|(instances, history, audit, tombstones, entries, index)| {
            instances.remove(entity.as_bytes())?;
            for key in &history_keys {
                history.remove(key)?;
            }
            for key in &audit_keys {
                audit.remove(key)?;
            }
            let id = audit
                .generate_id()
                .map_err(ConflictableTransactionError::Storage)?;
            audit.insert(audit_key(entity, id), line_bytes.clone())?;
            if let Some(bytes) = &tombstone_bytes {
                tombstones.insert(entity.as_bytes(), bytes.clone())?;
            }
            let mut delta = OutboxDelta::default();
            if let Some((_, plan)) = erasure {
                let outbox = OutboxTx {
                    entries,
                    index,
                    now: line.last_at,
                };
                outbox.erase(&plan.pending, &plan.tombstones, &mut delta)?;
            }
            Ok::<_, ConflictableTransactionError<StoreError>>(delta)
        });
    let delta = tx_result(result, || context("removing the entity"))?;
    store.apply_outbox_delta(delta);
    Ok(Removed { history_events })
}
