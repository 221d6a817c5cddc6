//! Ingest: everything one batch from one source produces for one product
//! — records, dedupe registrations, quarantine inserts, evictions and
//! resolutions, the source offset — written as one sled transaction, so a
//! crash keeps all of it or none. [`Store::upsert`] is this same path with
//! plain records only.
//!
//! Steps, all under the writer lock except encoding:
//! 1. check every entity key, encode quarantine entries and the offset
//!    (before the lock: compressing large payloads must not stall writers);
//! 2. plan the dedupe window and the quarantine (`dedupe.rs`,
//!    `quarantine.rs`): both need range scans, which transactions cannot
//!    do, and the lock guarantees that nothing changes before the commit;
//! 3. one transaction over the product's six trees and the offsets tree:
//!    merge the records that are not duplicates (`write.rs`), write the
//!    planned keys and the offset.

use sled::Transactional;

use super::dedupe::{self, DedupePlan, KeyWrite, TreeWindow};
use super::offsets::encode_offset;
use super::outbox::{OutboxDelta, OutboxTx};
use super::quarantine::{self, encode_entry, entry_key, TreeEntries};
use super::types::{
    Fingerprint, IngestBatch, IngestLimits, IngestOutcome, QuarantineItem, SourceOffset,
};
use super::write::{TxResult, UpsertTx};
use super::{codec, tx_result, Change, Store, StoreError, QUARANTINE};
use crate::record::{Record, Timestamp};

/// One record to apply, borrowed (so [`Store::upsert`] needs no copies).
pub(crate) struct RecordIn<'a> {
    pub record: &'a Record,
    pub fingerprint: Option<Fingerprint>,
    pub check_duplicate: bool,
}

impl<'a> RecordIn<'a> {
    /// A record without fingerprint: always applied.
    pub(crate) fn plain(record: &'a Record) -> Self {
        RecordIn {
            record,
            fingerprint: None,
            check_duplicate: false,
        }
    }
}

/// A borrowed [`IngestBatch`].
#[derive(Default)]
pub(crate) struct BatchIn<'a> {
    pub records: Vec<RecordIn<'a>>,
    pub quarantine: &'a [QuarantineItem],
    pub source_offset: Option<&'a SourceOffset>,
    pub resolve_quarantine: &'a [u64],
}

impl<'a> From<&'a IngestBatch> for BatchIn<'a> {
    fn from(batch: &'a IngestBatch) -> Self {
        BatchIn {
            records: batch
                .records
                .iter()
                .map(|r| RecordIn {
                    record: &r.record,
                    fingerprint: r.fingerprint,
                    check_duplicate: r.check_duplicate,
                })
                .collect(),
            quarantine: &batch.quarantine,
            source_offset: batch.source_offset.as_ref(),
            resolve_quarantine: &batch.resolve_quarantine,
        }
    }
}

impl Store {
    /// Writes one batch of one source for `product` as one atomic step:
    /// after a crash either all of it is there — records merged as by
    /// [`Store::upsert`], fingerprints registered, quarantine entries added,
    /// evicted and resolved, the source offset — or none of it.
    ///
    /// A record whose fingerprint is in the product's dedupe window (as
    /// left by earlier batches and earlier records of this one) and that
    /// asks for the check is skipped (`changes[i] = None`); every other
    /// record with a fingerprint registers it as the newest. The window
    /// keeps the last `limits.dedupe_capacity` registrations; the
    /// quarantine keeps the newest `limits.quarantine_max` entries.
    ///
    /// `received_at` is the arrival time (instance and history times,
    /// `quarantined_at`). Like every write, the batch is on disk once a
    /// later [`Store::durable`] returned. An invalid entity key in any
    /// record refuses the whole batch before anything is written.
    pub fn ingest(
        &self,
        product: &str,
        batch: &IngestBatch,
        limits: &IngestLimits,
        received_at: Timestamp,
    ) -> Result<IngestOutcome, StoreError> {
        self.commit(product, BatchIn::from(batch), limits, received_at)
    }

    /// The shared write path of [`Store::ingest`] and [`Store::upsert`].
    pub(crate) fn commit(
        &self,
        product: &str,
        batch: BatchIn<'_>,
        limits: &IngestLimits,
        received_at: Timestamp,
    ) -> Result<IngestOutcome, StoreError> {
        if batch.records.is_empty()
            && batch.quarantine.is_empty()
            && batch.source_offset.is_none()
            && batch.resolve_quarantine.is_empty()
        {
            return Ok(IngestOutcome::default());
        }
        for r in &batch.records {
            self.check_entity(product, &r.record.entity)?;
        }
        let trees = self.product(product)?;
        let span = tracing::debug_span!(
            "store.ingest",
            product,
            records = batch.records.len(),
            quarantine = batch.quarantine.len(),
            resolve = batch.resolve_quarantine.len(),
            source = batch.source_offset.map(|o| o.source.as_str()),
        );
        let _enter = span.enter();
        let config = self.config();
        let offset = batch
            .source_offset
            .map(|o| {
                encode_offset(product, &o.source, &o.position, received_at)
                    .map(|bytes| (o.source.as_bytes(), bytes))
            })
            .transpose()?;
        let entries = batch
            .quarantine
            .iter()
            .map(|item| encode_entry(product, item, received_at, config.zstd_level))
            .collect::<Result<Vec<_>, _>>()?;

        let _writer = self.write_lock();
        let dedupe = if batch.records.iter().any(|r| r.fingerprint.is_some()) {
            dedupe::plan(
                product,
                dedupe::load_state(product, &trees.dedupe)?,
                limits.dedupe_capacity,
                batch
                    .records
                    .iter()
                    .map(|r| r.fingerprint.map(|fp| (fp, r.check_duplicate))),
                &mut TreeWindow::new(product, &trees.dedupe),
            )?
        } else {
            DedupePlan {
                skip: vec![false; batch.records.len()],
                ..DedupePlan::default()
            }
        };
        let quarantine = if batch.quarantine.is_empty() && batch.resolve_quarantine.is_empty() {
            None
        } else {
            Some(quarantine::plan(
                quarantine::load_state(product, &trees.quarantine)?,
                limits.quarantine_max,
                batch.resolve_quarantine,
                batch.quarantine.len(),
                &mut TreeEntries::new(product, &trees.quarantine),
            )?)
        };
        let mut quarantine_writes: Vec<KeyWrite> = Vec::new();
        if let Some(plan) = &quarantine {
            for &id in &plan.removes {
                quarantine_writes.push((entry_key(id), None));
            }
            for (id, bytes) in plan.new_ids.iter().zip(entries).skip(plan.new_evicted) {
                let key = entry_key(*id);
                let bytes = trees.seal(QUARANTINE, &key, bytes).map_err(|e| {
                    StoreError::encode(product, "(quarantine)", "quarantine entry", e)
                })?;
                quarantine_writes.push((key, Some(bytes)));
            }
            let state = codec::encode(&plan.state)
                .map_err(|e| StoreError::encode(product, "(quarantine)", "quarantine state", e))?;
            quarantine_writes.push((quarantine::STATE_KEY.to_vec(), Some(state)));
        }

        let planner = self.planner();
        let (outbox_tree, outbox_index) = self.outbox_trees();
        let result = (
            &trees.instances,
            &trees.history,
            &trees.audit,
            &trees.tombstones,
            &trees.dedupe,
            &trees.quarantine,
            &self.inner.offsets,
            outbox_tree,
            outbox_index,
        )
            .transaction(
                |(
                    instances,
                    history,
                    audit,
                    tombstones,
                    dedupe_tree,
                    quarantine_tree,
                    offsets,
                    outbox_entries,
                    outbox_index,
                )| {
                    let tx = UpsertTx {
                        product,
                        chunk_events: config.history_chunk_events as u64,
                        zstd_level: config.zstd_level,
                        received_at,
                        instances,
                        history,
                        audit,
                        tombstones,
                        trees: &trees,
                    };
                    let outbox = OutboxTx {
                        entries: outbox_entries,
                        index: outbox_index,
                        now: received_at,
                    };
                    let mut delta = OutboxDelta::default();
                    let changes = batch
                        .records
                        .iter()
                        .zip(&dedupe.skip)
                        .map(|(r, &skip)| {
                            if skip {
                                return Ok(None);
                            }
                            let change = tx.apply(r.record)?;
                            if let Some(planner) = &planner {
                                for item in planner.on_change(product, r.record, &change) {
                                    outbox.push(item, &mut delta)?;
                                }
                            }
                            Ok(Some(change))
                        })
                        .collect::<TxResult<Vec<Option<Change>>>>()?;
                    write_keys(dedupe_tree, &dedupe.writes)?;
                    write_keys(quarantine_tree, &quarantine_writes)?;
                    if let Some((key, value)) = &offset {
                        offsets.insert(*key, value.as_slice())?;
                    }
                    Ok((changes, delta))
                },
            );
        let (changes, delta) = tx_result(result, || {
            format!(
                "product `{product}`: writing a batch of {} records, {} quarantine items",
                batch.records.len(),
                batch.quarantine.len()
            )
        })?;
        self.apply_outbox_delta(delta);
        self.inner.group.wrote();

        let outcome = IngestOutcome {
            changes,
            duplicates: dedupe.duplicates,
            quarantined: batch.quarantine.len(),
            quarantine_ids: quarantine
                .as_ref()
                .map(|p| p.new_ids.clone())
                .unwrap_or_default(),
            quarantine_evicted: quarantine.as_ref().map_or(0, |p| p.evicted),
            resolved: quarantine.as_ref().map_or(0, |p| p.resolved),
        };
        tracing::debug!(
            applied = outcome.changes.iter().flatten().count(),
            created = outcome
                .changes
                .iter()
                .flatten()
                .filter(|c| c.created)
                .count(),
            duplicates = outcome.duplicates,
            fingerprints_evicted = dedupe.evicted,
            quarantined = outcome.quarantined,
            quarantine_evicted = outcome.quarantine_evicted,
            resolved = outcome.resolved,
            "ingest batch committed"
        );
        Ok(outcome)
    }
}

/// Applies planned inserts and removals inside the transaction.
fn write_keys(tree: &sled::transaction::TransactionalTree, writes: &[KeyWrite]) -> TxResult<()> {
    for (key, value) in writes {
        match value {
            Some(value) => tree.insert(key.as_slice(), value.as_slice())?,
            None => tree.remove(key.as_slice())?,
        };
    }
    Ok(())
}
