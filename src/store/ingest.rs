//! Ingest: everything one batch from one source produces for one product
//! — records, dedupe registrations, quarantine inserts, evictions and
//! resolutions, the source offset — written as one hot transaction (one
//! journal frame, see `journal.rs`), so a crash keeps all of it or none. [`Store::upsert`] is this same path with
//! plain records only.
//!
//! Steps, all under the writer lock except encoding:
//! 1. check every entity key, encode quarantine entries and the offset
//!    (before the lock: compressing large payloads must not stall writers);
//! 2. plan the dedupe window (`dedupe.rs`, over its in-memory copy) and
//!    the quarantine (`quarantine.rs`, which needs range scans that
//!    transactions cannot do); the lock guarantees that nothing changes
//!    before the commit, and the dedupe copy takes the plan only after it;
//! 3. one hot transaction over the product's six trees, the offsets tree
//!    and the outbox trees:
//!    merge the records that are not duplicates (`write.rs`), write the
//!    planned keys and the offset.

use super::dedupe::{self, DedupePlan, KeyWrite};
use super::hot::TxTree;
use super::offsets::encode_offset;
use super::outbox::{OutboxDelta, OutboxTx};
use super::quarantine::{self, encode_entry, entry_key, QuarantinePlan, TreeEntries};
use super::tx::{abort, TxResult};
use super::types::{
    Change, Fingerprint, Idempotency, IngestBatch, IngestLimits, IngestOutcome, QuarantineItem,
    Receipt, Resend, SourceOffset,
};
use super::write::UpsertTx;
use super::writer_states::PendingStates;
use super::{codec, Store, StoreError, QUARANTINE};
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
    pub idempotency: Option<Idempotency>,
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
            idempotency: batch.idempotency,
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

    /// Writes several batches of one product — a writer's group of jobs —
    /// in one sled transaction, as if each had been passed to
    /// [`Store::ingest`] in order: later batches see the records, dedupe
    /// registrations and quarantine entries of earlier ones. Returns one
    /// result per batch, in order.
    ///
    /// Why: sled's cost per transaction (its write set, the commit's log
    /// reservation, one writer-lock round) is paid once per group instead
    /// of once per message, which is most of the small-message ingest path.
    ///
    /// A batch that fails its own checks (an invalid entity key) gets its
    /// error and is left out; the others are still written. If the shared
    /// transaction itself fails, every batch is retried in a transaction
    /// of its own, so one bad batch cannot take its neighbours down. A
    /// batch that resolves quarantine entries or carries an idempotency
    /// key is written on its own.
    /// Quarantine evictions of batches written together are reported on
    /// the last of them (the total is the same as one by one).
    pub fn ingest_group(
        &self,
        product: &str,
        batches: &[(&IngestBatch, Timestamp)],
        limits: &IngestLimits,
    ) -> Vec<Result<IngestOutcome, StoreError>> {
        let mut results: Vec<Option<Result<IngestOutcome, StoreError>>> =
            batches.iter().map(|_| None).collect();
        let mut run = Vec::with_capacity(batches.len());
        for (index, (batch, received_at)) in batches.iter().enumerate() {
            if let Err(e) = batch
                .records
                .iter()
                .try_for_each(|r| self.check_entity(product, &r.record.entity))
            {
                results[index] = Some(Err(e));
            } else if batch.resolve_quarantine.is_empty() && batch.idempotency.is_none() {
                run.push(index);
            } else {
                // Resolutions refer to entries by id, possibly entries an
                // earlier batch of this group created: such a batch goes
                // on its own, after everything before it.
                self.commit_run(product, batches, &run, limits, &mut results);
                run.clear();
                results[index] = Some(self.ingest(product, batch, limits, *received_at));
            }
        }
        self.commit_run(product, batches, &run, limits, &mut results);
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(StoreError::encode(
                        product,
                        "(group)",
                        "ingest group",
                        "a batch was left unwritten",
                    ))
                })
            })
            .collect()
    }

    /// Commits the batches `run` of a group together; if that fails, one
    /// by one (before any later batch of the group, to keep their order).
    fn commit_run(
        &self,
        product: &str,
        batches: &[(&IngestBatch, Timestamp)],
        run: &[usize],
        limits: &IngestLimits,
        results: &mut [Option<Result<IngestOutcome, StoreError>>],
    ) {
        if run.len() > 1 {
            let group: Vec<(BatchIn<'_>, Timestamp)> = run
                .iter()
                .map(|&i| (BatchIn::from(batches[i].0), batches[i].1))
                .collect();
            match self.commit_many(product, group, limits) {
                Ok(outcomes) => {
                    for (&i, outcome) in run.iter().zip(outcomes) {
                        results[i] = Some(Ok(outcome));
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(product, batches = run.len(), error = %e,
                        "group transaction failed; writing its batches one by one");
                }
            }
        }
        for &i in run {
            let (batch, received_at) = batches[i];
            results[i] = Some(self.ingest(product, batch, limits, received_at));
        }
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
            && batch.idempotency.is_none()
        {
            return Ok(IngestOutcome::default());
        }
        for r in &batch.records {
            self.check_entity(product, &r.record.entity)?;
        }
        let mut outcomes = self.commit_many(product, vec![(batch, received_at)], limits)?;
        Ok(outcomes.pop().unwrap_or_default())
    }

    /// Commits `batches` (each with its arrival time) in one transaction;
    /// one outcome per batch, in order. The callers have checked every
    /// entity key (`commit`, `ingest_group`), so it is not done twice.
    fn commit_many(
        &self,
        product: &str,
        batches: Vec<(BatchIn<'_>, Timestamp)>,
        limits: &IngestLimits,
    ) -> Result<Vec<IngestOutcome>, StoreError> {
        let trees = self.product(product)?;
        let records_total: usize = batches.iter().map(|(b, _)| b.records.len()).sum();
        let quarantine_total: usize = batches.iter().map(|(b, _)| b.quarantine.len()).sum();
        let span = tracing::debug_span!(
            "store.ingest",
            product,
            batches = batches.len(),
            records = records_total,
            quarantine = quarantine_total,
        );
        let _enter = span.enter();
        let config = self.config();
        let mut offsets = Vec::new();
        let mut entries = Vec::with_capacity(quarantine_total);
        for (batch, received_at) in &batches {
            if let Some(o) = batch.source_offset {
                let bytes = encode_offset(product, &o.source, &o.position, *received_at)?;
                offsets.push((o.source.as_bytes(), bytes));
            }
            for item in batch.quarantine {
                entries.push((
                    item.entity.clone(),
                    encode_entry(product, item, *received_at, config.zstd_level)?,
                ));
            }
        }
        let resolve: Vec<u64> = batches
            .iter()
            .flat_map(|(b, _)| b.resolve_quarantine.iter().copied())
            .collect();

        let _writer = self.write_lock();
        let any_idempotent = batches.iter().any(|(b, _)| b.idempotency.is_some());
        let any_fingerprint = any_idempotent
            || batches
                .iter()
                .any(|(b, _)| b.records.iter().any(|r| r.fingerprint.is_some()));
        // Held to the commit, which hands the plan's delta back to it.
        let mut dedupe_slot = trees.dedupe_window.lock();
        // Per batch: the key was known, nothing of the batch is written.
        let mut resends: Vec<Option<Resend>> = vec![None; batches.len()];
        let mut dedupe = if any_idempotent {
            plan_idempotent(
                product,
                dedupe::loaded(&mut dedupe_slot, product, &trees.dedupe)?,
                limits.dedupe_capacity,
                &batches,
                records_total,
                &mut resends,
            )?
        } else if any_fingerprint {
            dedupe::plan(
                product,
                dedupe::loaded(&mut dedupe_slot, product, &trees.dedupe)?,
                limits.dedupe_capacity,
                ExactLen {
                    inner: batches.iter().flat_map(|(b, _)| {
                        b.records
                            .iter()
                            .map(|r| r.fingerprint.map(|fp| (fp, r.check_duplicate)))
                    }),
                    len: records_total,
                },
            )?
        } else {
            DedupePlan {
                skip: vec![false; records_total],
                ..DedupePlan::default()
            }
        };
        let quarantine = if quarantine_total == 0 && resolve.is_empty() {
            None
        } else {
            Some(quarantine::plan(
                quarantine::load_state(product, &trees.quarantine)?,
                limits.quarantine_max,
                &resolve,
                quarantine_total,
                &mut TreeEntries::new(product, &trees.quarantine),
            )?)
        };
        let mut quarantine_writes: Vec<KeyWrite> = Vec::new();
        if let Some(plan) = &quarantine {
            for &id in &plan.removes {
                quarantine_writes.push((entry_key(id), None));
            }
            for (id, (entity, bytes)) in plan.new_ids.iter().zip(entries).skip(plan.new_evicted) {
                let key = entry_key(*id);
                let sealed = match &entity {
                    Some(entity) => trees.seal_entity(QUARANTINE, entity, &key, bytes),
                    None => trees.seal(QUARANTINE, &key, bytes),
                };
                let bytes = sealed.map_err(|e| {
                    StoreError::encode(product, "(quarantine)", "quarantine entry", e)
                })?;
                quarantine_writes.push((key, Some(bytes)));
            }
            let state = codec::encode(&plan.state)
                .map_err(|e| StoreError::encode(product, "(quarantine)", "quarantine state", e))?;
            quarantine_writes.push((quarantine::STATE_KEY.to_vec(), Some(state)));
        }

        // Entity keys of new entities exist and are durable before the
        // frame that holds their first values (`keys_entity.rs`).
        trees
            .ensure_entity_keys(
                batches
                    .iter()
                    .flat_map(|(b, _)| b.records.iter().map(|r| r.record.entity.as_str())),
            )
            .map_err(|e| StoreError::encode(product, "(batch)", "entity keys", e))?;
        let planner = self.planner();
        let held_digests = self.held_digests();
        let (outbox_tree, outbox_index) = self.outbox_trees();
        let result = self.hot_transaction(
            &[
                &trees.instances,
                &trees.history,
                &trees.audit,
                &trees.tombstones,
                &trees.dedupe,
                &trees.quarantine,
                &self.inner.offsets,
                outbox_tree,
                outbox_index,
            ],
            |views| {
                    let [instances, history, audit, tombstones, dedupe_tree, quarantine_tree, offsets_tree, outbox_entries, outbox_index] =
                        views
                    else {
                        return Err(abort(StoreError::encode(
                            product,
                            "(group)",
                            "ingest group",
                            "nine trees expected",
                        )));
                    };
                    let mut delta = OutboxDelta::default();
                    let mut pending = PendingStates::new();
                    let mut changes_per_batch = Vec::with_capacity(batches.len());
                    let mut skips = dedupe.skip.iter();
                    for ((batch, received_at), resend) in batches.iter().zip(&resends) {
                        if resend.is_some() {
                            // A resend writes nothing: its records are
                            // skipped (planned so), its other parts left.
                            let changes: Vec<Option<Change>> =
                                batch.records.iter().map(|_| None).collect();
                            for _ in &batch.records {
                                skips.next();
                            }
                            changes_per_batch.push(changes);
                            continue;
                        }
                        let tx = UpsertTx {
                            product,
                            chunk_events: config.history_chunk_events as u64,
                            block_events: config.effective_block_events() as u64,
                            zstd_level: config.zstd_level,
                            audit_chain: config.audit_chain,
                            summaries: config.history_summaries,
                            received_at: *received_at,
                            instances,
                            history,
                            audit,
                            tombstones,
                            trees: &trees,
                        };
                        let outbox = OutboxTx {
                            entries: outbox_entries,
                            index: outbox_index,
                            now: *received_at,
                            keys: self.entity_keys(),
                        };
                        let mut changes = Vec::with_capacity(batch.records.len());
                        for r in &batch.records {
                            if skips.next().copied().unwrap_or(false) {
                                changes.push(None);
                                continue;
                            }
                            let change = tx.apply(r.record, &mut pending)?;
                            if held_digests {
                                super::digest::DigestTx { index: outbox_index }.held(product, &change)?;
                            }
                            if let Some(planner) = &planner {
                                for item in planner.on_change(product, r.record, &change) {
                                    outbox.push(item, &mut delta)?;
                                }
                            }
                            changes.push(Some(change));
                        }
                        changes_per_batch.push(changes);
                    }
                    write_keys(dedupe_tree, &dedupe.writes)?;
                    write_keys(quarantine_tree, &quarantine_writes)?;
                    for (key, value) in &offsets {
                        offsets_tree.overwrite(*key, value.as_slice());
                    }
                    Ok((changes_per_batch, delta, pending))
            },
            || {
                format!(
                    "product `{product}`: writing {} batches with {records_total} records, \
                     {quarantine_total} quarantine items",
                    batches.len(),
                )
            },
        );
        let (changes_per_batch, delta, pending) = result?;
        self.apply_outbox_delta(delta);
        if let (Some(window), Some(changes)) = (dedupe_slot.as_mut(), dedupe.delta.take()) {
            window.apply(changes);
        }
        drop(dedupe_slot);
        trees.writer_states.committed(pending);
        self.inner.group.wrote();
        // Still under the writer lock: the cache changes in commit order.
        trees.current.committed(
            changes_per_batch
                .iter()
                .flatten()
                .flatten()
                .map(|change| &change.instance),
        );

        let mut new_ids = quarantine
            .as_ref()
            .map(|p| p.new_ids.clone())
            .unwrap_or_default()
            .into_iter();
        let last = batches.len().saturating_sub(1);
        let outcomes: Vec<IngestOutcome> = batches
            .iter()
            .zip(changes_per_batch)
            .zip(resends)
            .enumerate()
            .map(|(i, (((batch, _), changes), resend))| {
                let on_last = |f: fn(&QuarantinePlan) -> usize| {
                    if i == last {
                        quarantine.as_ref().map_or(0, f)
                    } else {
                        0
                    }
                };
                IngestOutcome {
                    // A refused resend's records are not duplicates.
                    duplicates: match resend {
                        Some(Resend::Conflict) => 0,
                        _ => changes.iter().filter(|c| c.is_none()).count(),
                    },
                    changes,
                    quarantined: batch.quarantine.len(),
                    quarantine_ids: new_ids.by_ref().take(batch.quarantine.len()).collect(),
                    quarantine_evicted: on_last(|p| p.evicted),
                    resolved: on_last(|p| p.resolved),
                    resend,
                }
            })
            .collect();
        tracing::debug!(
            batches = outcomes.len(),
            applied = outcomes
                .iter()
                .map(|o| o.changes.iter().flatten().count())
                .sum::<usize>(),
            duplicates = dedupe.duplicates,
            fingerprints_evicted = dedupe.evicted,
            quarantined = quarantine_total,
            quarantine_evicted = quarantine.as_ref().map_or(0, |p| p.evicted),
            resolved = quarantine.as_ref().map_or(0, |p| p.resolved),
            "ingest batches committed"
        );
        Ok(outcomes)
    }
}

/// The dedupe plan of a run with idempotent batches. A batch whose key
/// the window holds is a resend: its records are skipped without being
/// judged or registered, and `resends` gets the stored [`Receipt`] (or
/// [`Resend::Conflict`] when the key came with another request). Every
/// other batch is planned as usual, and each new key is registered after
/// all records with the receipt its batch will have answered.
fn plan_idempotent(
    product: &str,
    window: &dedupe::Window,
    capacity: u64,
    batches: &[(BatchIn<'_>, Timestamp)],
    records_total: usize,
    resends: &mut [Option<Resend>],
) -> Result<DedupePlan, StoreError> {
    let mut entries: Vec<Option<(Fingerprint, bool)>> =
        Vec::with_capacity(records_total + batches.len());
    let mut keys = Vec::new();
    for (index, (batch, _)) in batches.iter().enumerate() {
        let Some(idempotency) = batch.idempotency else {
            entries.extend(
                batch
                    .records
                    .iter()
                    .map(|r| r.fingerprint.map(|fp| (fp, r.check_duplicate))),
            );
            continue;
        };
        if !batch.quarantine.is_empty()
            || batch.source_offset.is_some()
            || !batch.resolve_quarantine.is_empty()
        {
            return Err(StoreError::encode(
                product,
                "(batch)",
                "idempotent batch",
                "an idempotent batch carries records only",
            ));
        }
        match window.receipt(&idempotency.key) {
            Some(receipt) => {
                resends[index] = Some(if receipt.request == idempotency.request {
                    Resend::Replayed(receipt)
                } else {
                    Resend::Conflict
                });
                entries.extend(batch.records.iter().map(|_| None));
            }
            None => {
                let first = entries.len();
                entries.extend(
                    batch
                        .records
                        .iter()
                        .map(|r| r.fingerprint.map(|fp| (fp, r.check_duplicate))),
                );
                keys.push((index, first, idempotency));
            }
        }
    }
    entries.extend(keys.iter().map(|(_, _, idem)| Some((idem.key, true))));
    let mut plan = dedupe::plan(product, window, capacity, entries.into_iter())?;
    plan.skip.truncate(records_total);
    let mut offset = 0;
    for ((batch, _), resend) in batches.iter().zip(resends.iter()) {
        let len = batch.records.len();
        if resend.is_some() {
            if let Some(skips) = plan.skip.get_mut(offset..offset + len) {
                skips.fill(true);
            }
        }
        offset += len;
    }
    let receipts: Vec<(Fingerprint, Receipt)> = keys
        .iter()
        .map(|(index, first, idem)| {
            let len = batches[*index].0.records.len();
            let skipped = plan
                .skip
                .get(*first..*first + len)
                .map_or(0, |s| s.iter().filter(|skip| **skip).count());
            (
                idem.key,
                Receipt {
                    request: idem.request,
                    accepted: (len - skipped) as u64,
                    duplicates: skipped as u64,
                },
            )
        })
        .collect();
    dedupe::add_receipts(&mut plan, &receipts);
    Ok(plan)
}

/// An iterator with a known length (`flat_map` does not report one, and
/// the dedupe planner sizes its plan from it).
struct ExactLen<I> {
    inner: I,
    len: usize,
}

impl<I: Iterator> Iterator for ExactLen<I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        let item = self.inner.next();
        if item.is_some() {
            self.len = self.len.saturating_sub(1);
        }
        item
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.len, Some(self.len))
    }
}

impl<I: Iterator> ExactSizeIterator for ExactLen<I> {}

/// Applies planned inserts and removals inside the transaction.
fn write_keys(tree: &TxTree<'_>, writes: &[KeyWrite]) -> TxResult<()> {
    for (key, value) in writes {
        match value {
            Some(value) => tree.overwrite(key.as_slice(), value.as_slice()),
            None => {
                tree.remove(key.as_slice())?;
            }
        }
    }
    Ok(())
}
