//! Merging records into instances, history and audit inside a batch's
//! transaction (the transaction itself is run by `ingest.rs`), and
//! [`Store::upsert`], an ingest batch of plain records.

use sled::transaction::ConflictableTransactionError;

use super::hot::TxTree;

use super::audit::{self, coalesce, AuditChange, Hash, GENESIS};
use super::chunk::{decode_chunk, encode_chunk_with};
use super::codec;
use super::ingest::{BatchIn, RecordIn};
use super::keys::{audit_key, chunk_key, tail_key};
use super::merge::merge_fields;
use super::stored::{OpenAuditLine, StoredAuditLine, StoredEvent, StoredEventRef, StoredInstance};
use super::tx::{abort, TxResult};
use super::writer_states::PendingStates;
use super::{
    AuditAction, Change, IngestLimits, ProductTrees, Store, StoreError, AUDIT, HISTORY, INSTANCES,
    TOMBSTONES,
};
use crate::record::{Record, Timestamp};

/// The transactional view of one product's record trees during a batch.
pub(super) struct UpsertTx<'a> {
    pub product: &'a str,
    pub chunk_events: u64,
    /// Events per block (`StoreConfig::effective_block_events`); equal to
    /// `chunk_events` when blocks are off.
    pub block_events: u64,
    pub zstd_level: i32,
    /// `StoreConfig::audit_chain`: off only in a bench.
    pub audit_chain: bool,
    /// `StoreConfig::history_summaries`: per-field summaries in chunks.
    pub summaries: bool,
    pub received_at: Timestamp,
    pub instances: &'a TxTree<'a>,
    pub history: &'a TxTree<'a>,
    pub audit: &'a TxTree<'a>,
    pub tombstones: &'a TxTree<'a>,
    /// For sealing values of an encrypted store.
    pub trees: &'a ProductTrees,
}

impl Store {
    /// Applies `records` in order as one atomic step (a sled multi-tree
    /// transaction): after a crash either the whole batch is there or none
    /// of it. Returns one [`Change`] per record, in order; several records
    /// for the same entity see each other's effects.
    ///
    /// Arrival time is now; see [`Store::upsert_at`].
    pub fn upsert(&self, product: &str, records: &[Record]) -> Result<Vec<Change>, StoreError> {
        self.upsert_at(product, records, Timestamp::now())
    }

    /// [`Store::upsert`] with an explicit arrival time (`first_seen`,
    /// `last_seen`, history `received_at`, audit times), for callers that
    /// stamped arrival at ingest, and for tests.
    pub fn upsert_at(
        &self,
        product: &str,
        records: &[Record],
        received_at: Timestamp,
    ) -> Result<Vec<Change>, StoreError> {
        let span = tracing::debug_span!("store.upsert", product, records = records.len());
        let _enter = span.enter();
        let batch = BatchIn {
            records: records.iter().map(RecordIn::plain).collect(),
            ..BatchIn::default()
        };
        let outcome = self.commit(product, batch, &IngestLimits::default(), received_at)?;
        // Records without fingerprint are never skipped: one change each.
        Ok(outcome.changes.into_iter().flatten().collect())
    }
}

impl UpsertTx<'_> {
    /// Merges one record (see the module docs of `store` for the rules).
    ///
    /// `pending` holds the states this transaction wrote so far; the
    /// record's new state joins it, for `WriterStates::committed` after the
    /// commit.
    pub(super) fn apply(&self, record: &Record, pending: &mut PendingStates) -> TxResult<Change> {
        let entity = record.entity.as_str();
        let current = self.current_state(entity, pending)?;
        let created = current.is_none();
        let mut state = current.unwrap_or_else(|| {
            StoredInstance::empty(self.received_at, record.event_time, record.origin.clone())
        });

        let late =
            !created && (record.event_time < state.event_time || loses_sync_tie(record, &state));
        let changed = merge_fields(&mut state.fields, &record.fields, late);
        let applied_to_state = !late || !changed.is_empty();
        state.version += 1;
        if !late {
            state.event_time = record.event_time;
        }
        state.last_seen = self.received_at;
        state.last_origin = record.origin.clone();

        // Re-created after an erase: the tombstone no longer holds; its
        // chain head is where the new `Created` line links.
        let erased_head = if created {
            self.take_tombstone_head(entity)?
        } else {
            GENESIS
        };
        let event = self.append_history(entity, &mut state, record)?;
        if created || !changed.is_empty() {
            let action = if created {
                AuditAction::Created
            } else {
                AuditAction::Updated
            };
            self.append_audit(entity, &mut state, action, &changed, record, erased_head)?;
        }
        // Every event, changing or not, is covered by the open line.
        if let (Some(open), Some(event)) = (state.audit_open.as_mut(), &event) {
            audit::cover_event(&mut open.line, state.version, event);
        }

        let bytes = state
            .encode()
            .and_then(|plain| {
                self.trees
                    .seal_entity(INSTANCES, entity, entity.as_bytes(), plain)
            })
            .map_err(|e| abort(StoreError::encode(self.product, entity, "instance", e)))?;
        self.instances.overwrite(entity.as_bytes(), bytes);
        let change = Change {
            entity: entity.to_string(),
            version: state.version,
            created,
            changed,
            applied_to_state,
            instance: std::sync::Arc::new(state.to_instance(entity)),
        };
        pending.insert(change.entity.clone(), state);
        Ok(change)
    }

    /// The entity's state as this transaction sees it: what an earlier
    /// record of it wrote, else the writer's decoded copy of the committed
    /// state (`writer_states.rs`), else sled's.
    fn current_state(
        &self,
        entity: &str,
        pending: &mut PendingStates,
    ) -> TxResult<Option<StoredInstance>> {
        if let Some(state) = pending.remove(entity) {
            return Ok(Some(state));
        }
        if let Some(state) = self.trees.writer_states.take(entity) {
            return Ok(Some(state));
        }
        match self.instances.get(entity.as_bytes())? {
            Some(bytes) => Ok(Some(
                self.trees
                    .open(INSTANCES, entity.as_bytes(), &bytes)
                    .and_then(|plain| codec::decode::<StoredInstance>(&plain))
                    .map_err(|e| abort(StoreError::corrupt(self.product, entity, "instance", e)))?,
            )),
            None => Ok(None),
        }
    }

    /// Removes the entity's tombstone; the hash of its `Erased` audit line
    /// ([`GENESIS`] if there is none or it does not read).
    fn take_tombstone_head(&self, entity: &str) -> TxResult<Hash> {
        let Some(bytes) = self.tombstones.remove(entity.as_bytes())? else {
            return Ok(GENESIS);
        };
        let tombstone = self
            .trees
            .open(TOMBSTONES, entity.as_bytes(), &bytes)
            .and_then(|plain| codec::decode::<super::stored::StoredTombstone>(&plain));
        match tombstone {
            Ok(t) => Ok(Hash::try_from(t.audit_head.as_slice()).unwrap_or(GENESIS)),
            Err(e) => {
                tracing::warn!(product = self.product, entity, error = %e, "corrupt tombstone; the new audit chain starts afresh");
                Ok(GENESIS)
            }
        }
    }

    /// Appends the record to the open tail, one history key per event
    /// (`tail_key`), sealing the tail when full. Returns the event's
    /// encoded bytes, which the open audit line's digest covers (`None`
    /// with the chain off).
    ///
    /// Why a key per event and not the instance (store format 3 kept the
    /// tail in the instance): with the journal, a key written between two
    /// checkpoints reaches sled once, so the instance carrying its tail
    /// made every checkpoint rewrite the whole tail of every dirty entity,
    /// and every journal frame carry a delta of it. Under its own key an
    /// event is written once, in one frame and at one checkpoint; the
    /// seal's reads come from the hot state (or sled, for events an
    /// earlier checkpoint moved) and its removes of keys that never
    /// reached sled cost sled nothing.
    fn append_history(
        &self,
        entity: &str,
        state: &mut StoredInstance,
        record: &Record,
    ) -> TxResult<Option<Vec<u8>>> {
        if !state.tail.is_empty() {
            self.move_tail_out(entity, state)?;
        }
        let version = state.version;
        let event = StoredEventRef {
            version,
            event_time: record.event_time,
            received_at: self.received_at,
            fields: &record.fields,
            origin: &record.origin,
        };
        let bytes = codec::encode_positional(&event)
            .map_err(|e| abort(StoreError::encode(self.product, entity, "history event", e)))?;
        if state.tail_len == 0 {
            state.tail_start = version;
        }
        let covered = self.audit_chain.then(|| bytes.clone());
        state.tail_len += 1;
        let span = version.saturating_sub(state.tail_start) + 1;
        if state.tail_len >= self.block_events || span >= 2 * self.block_events {
            // The newest event goes straight into the chunk, its key never
            // written.
            self.seal(entity, state, Some(&bytes))?;
        } else {
            self.write_tail_event(entity, version, bytes)?;
        }
        Ok(covered)
    }

    /// Writes one open-tail event under its key.
    fn write_tail_event(&self, entity: &str, version: u64, plain: Vec<u8>) -> TxResult<()> {
        let key = tail_key(entity, version);
        let sealed = self
            .trees
            .seal_entity(HISTORY, entity, &key, plain)
            .map_err(|e| abort(StoreError::encode(self.product, entity, "history event", e)))?;
        self.history.overwrite(key, sealed);
        Ok(())
    }

    /// An instance written by store format 3 holds its open tail itself:
    /// those events move out to their keys (after any format 2 keys of
    /// the same tail, which stay where they are).
    fn move_tail_out(&self, entity: &str, state: &mut StoredInstance) -> TxResult<()> {
        let in_keys = state.tail_len.saturating_sub(state.tail.len() as u64);
        let moved = state.tail.len() as u64;
        for event in std::mem::take(&mut state.tail) {
            let version = event
                .decode()
                .map_err(|e| {
                    abort(StoreError::corrupt(
                        self.product,
                        entity,
                        "history event",
                        e,
                    ))
                })?
                .version;
            self.write_tail_event(entity, version, event.0)?;
        }
        state.tail_len = in_keys + moved;
        Ok(())
    }

    /// Reads and removes the open tail's keys (exactly `tail_start..`
    /// up to the newest version, no range scan), oldest first.
    fn take_tail_events(&self, entity: &str, state: &StoredInstance) -> TxResult<Vec<StoredEvent>> {
        let mut events = Vec::with_capacity(state.tail_len as usize + 1);
        let corrupt = |e| {
            abort(StoreError::corrupt(
                self.product,
                entity,
                "history event",
                e,
            ))
        };
        for version in state.tail_start..=state.version {
            let key = tail_key(entity, version);
            if let Some(bytes) = self.history.take(&key)? {
                let plain = self.trees.open(HISTORY, &key, &bytes).map_err(corrupt)?;
                events.push(codec::decode::<StoredEvent>(&plain).map_err(corrupt)?);
            }
        }
        Ok(events)
    }

    /// Whether the tail seals into blocks that are merged later (two
    /// levels), or straight into full chunks.
    fn blocks_on(&self) -> bool {
        self.block_events < self.chunk_events
    }

    /// Moves the open tail into one compressed chunk (with the product's
    /// newest dictionary, if it has one, see `dictionary.rs`): a block
    /// when blocks are on, merged into a full chunk once enough blocks are
    /// there. `newest` is the encoded event of `state.version` when it has
    /// no key yet. Reads exactly the tail's keys (and, for a merge, the
    /// listed blocks). Counts the sealed events towards the next
    /// dictionary training, which runs outside the transaction.
    fn seal(
        &self,
        entity: &str,
        state: &mut StoredInstance,
        newest: Option<&[u8]>,
    ) -> TxResult<()> {
        let mut events = self.take_tail_events(entity, state)?;
        if let Some(bytes) = newest {
            events.push(codec::decode::<StoredEvent>(bytes).map_err(|e| {
                abort(StoreError::corrupt(
                    self.product,
                    entity,
                    "history event",
                    e,
                ))
            })?);
        }
        state.tail_start = state.version + 1;
        state.tail_len = 0;
        let sealed = events.len() as u64;
        let blocks_full = state.blocks.len() as u64 + 1 >= self.chunk_events / self.block_events;
        if self.blocks_on() && !blocks_full {
            if let Some(first) = self.write_chunk(entity, &events, "history block")? {
                state.blocks.push(first);
            }
        } else {
            // The last block is never written: its events go straight into
            // the full chunk with the blocks before it. Blocks thinned by
            // retention hold fewer events; merging by count keeps the
            // number of keys per entity bounded anyway.
            let mut all = self.take_blocks(entity, state)?;
            all.extend(events);
            self.write_chunk(entity, &all, "history chunk")?;
        }
        self.trees
            .dictionaries
            .events_sealed(sealed, self.chunk_events);
        Ok(())
    }

    /// Reads and removes the entity's blocks (exactly the keys listed in
    /// `state.blocks`), for merging into one full chunk: one zstd frame
    /// over all their events compresses far better than many small ones.
    fn take_blocks(&self, entity: &str, state: &mut StoredInstance) -> TxResult<Vec<StoredEvent>> {
        let mut events = Vec::with_capacity(self.chunk_events as usize);
        for first in std::mem::take(&mut state.blocks) {
            let key = chunk_key(entity, first);
            let Some(bytes) = self.history.get(&key)? else {
                continue;
            };
            let corrupt = |e| {
                abort(StoreError::corrupt(
                    self.product,
                    entity,
                    "history block",
                    e,
                ))
            };
            let plain = self.trees.open(HISTORY, &key, &bytes).map_err(corrupt)?;
            let (_, block) = decode_chunk(&plain, &self.trees.dictionaries).map_err(corrupt)?;
            events.extend(block);
            self.history.remove(key)?;
        }
        Ok(events)
    }

    /// Writes `events` as one chunk keyed by its first version; that
    /// version, or `None` when there is nothing to write.
    fn write_chunk(
        &self,
        entity: &str,
        events: &[StoredEvent],
        what: &'static str,
    ) -> TxResult<Option<u64>> {
        let Some(first) = events.first() else {
            return Ok(None);
        };
        let key = chunk_key(entity, first.version);
        let bytes = encode_chunk_with(
            events,
            self.zstd_level,
            &self.trees.dictionaries,
            self.summaries,
        )
        .and_then(|plain| self.trees.seal_entity(HISTORY, entity, &key, plain))
        .map_err(|e| abort(StoreError::encode(self.product, entity, what, e)))?;
        tracing::debug!(
            product = self.product,
            entity,
            first_version = first.version,
            events = events.len(),
            bytes = bytes.len(),
            what,
            "history sealed"
        );
        self.history.overwrite(key, bytes);
        Ok(Some(first.version))
    }

    /// Extends the instance's open audit line or starts a new one, writing
    /// the line it closes to the audit tree. A new line links to the one it
    /// closes, or to `erased_head` when there is none (see `audit.rs`).
    fn append_audit(
        &self,
        entity: &str,
        state: &mut StoredInstance,
        action: AuditAction,
        changed: &[String],
        record: &Record,
        erased_head: Hash,
    ) -> TxResult<()> {
        if state.audit_open.is_none() {
            state.audit_open = self.take_tree_tail(entity, state)?;
        }
        let change = AuditChange {
            action,
            version: state.version,
            at: self.received_at,
            fields: changed,
            origin: &record.origin,
        };
        match coalesce(state.audit_open.as_ref().map(|open| &open.line), &change) {
            Ok(extended) => {
                // Its hash is recomputed when the record's event is
                // folded in (`apply`), right after.
                if let Some(open) = state.audit_open.as_mut() {
                    open.line = extended;
                }
            }
            Err(mut new_line) => {
                let mut prev = erased_head;
                if let Some(closed) = state.audit_open.take() {
                    // A line from before the chain: the chain starts here.
                    prev = closed.line.link.as_ref().map_or(GENESIS, |l| l.hash);
                    self.write_audit_line(entity, closed.id, &closed.line)?;
                }
                if self.audit_chain {
                    audit::link_after(&mut new_line, prev);
                }
                let id = self
                    .audit
                    .generate_id()
                    .map_err(ConflictableTransactionError::Storage)?;
                state.audit_open = Some(OpenAuditLine { id, line: new_line });
            }
        }
        state.audit_tail = state.audit_open.as_ref().map(|open| open.id);
        Ok(())
    }

    /// An instance from before store format 2 keeps its newest audit line
    /// in the tree: it becomes the open line (and leaves the tree), so
    /// changes go on coalescing into it.
    fn take_tree_tail(
        &self,
        entity: &str,
        state: &StoredInstance,
    ) -> TxResult<Option<OpenAuditLine>> {
        let Some(id) = state.audit_tail else {
            return Ok(None);
        };
        let key = audit_key(entity, id);
        let Some(bytes) = self.audit.get(&key)? else {
            return Ok(None);
        };
        match self
            .trees
            .open(AUDIT, &key, &bytes)
            .and_then(|plain| codec::decode::<StoredAuditLine>(&plain))
        {
            Ok(line) => {
                self.audit.remove(key)?;
                Ok(Some(OpenAuditLine { id, line }))
            }
            Err(e) => {
                // Never extend what we cannot read; leave it, start afresh.
                tracing::warn!(product = self.product, entity, error = %e, "corrupt audit line; starting a new one");
                Ok(None)
            }
        }
    }

    fn write_audit_line(&self, entity: &str, id: u64, line: &StoredAuditLine) -> TxResult<()> {
        let key = audit_key(entity, id);
        let bytes = codec::encode(line)
            .and_then(|plain| self.trees.seal(AUDIT, &key, plain))
            .map_err(|e| abort(StoreError::encode(self.product, entity, "audit line", e)))?;
        self.audit.overwrite(key, bytes);
        Ok(())
    }
}

/// Origin source prefix of records applied from an upstream envelope
/// (`sync:<origin node id>`).
pub const SYNC_ORIGIN_PREFIX: &str = "sync:";

/// Last-writer-wins between edges is decided by (event time, origin node
/// id): at equal event times, a synced record from a smaller origin id
/// than the instance's last synced origin is treated as late. Local
/// sources keep arrival order at equal times.
fn loses_sync_tie(record: &Record, state: &StoredInstance) -> bool {
    record.event_time == state.event_time
        && record.origin.source.starts_with(SYNC_ORIGIN_PREFIX)
        && state.last_origin.source.starts_with(SYNC_ORIGIN_PREFIX)
        && record.origin.source < state.last_origin.source
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Fields, Origin, Value};
    use crate::store::stored::TailEvent;
    use crate::store::{AuditQuery, StoreConfig};

    fn synced(from: &str, t: i64, temp: f64) -> Record {
        Record {
            entity: "m".into(),
            fields: Fields::from([("temp".to_string(), Value::Float(temp))]),
            event_time: Timestamp::from_secs(t),
            origin: Origin::new(format!("{SYNC_ORIGIN_PREFIX}{from}")),
        }
    }

    fn device(t: i64, temp: f64) -> Record {
        Record {
            entity: "m".into(),
            fields: Fields::from([("temp".to_string(), Value::Float(temp))]),
            event_time: Timestamp::from_secs(t),
            origin: Origin::new("mqtt:0"),
        }
    }

    fn audit_tree_keys(store: &Store) -> usize {
        store.product("p").unwrap().audit.len()
    }

    #[test]
    fn coalescing_changes_write_the_instance_only_and_a_format_1_tail_line_is_taken_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(StoreConfig::new(dir.path().join("s"))).expect("open");
        for t in 1..=10 {
            store.upsert("p", &[device(t, t as f64)]).expect("upsert");
        }
        assert_eq!(
            audit_tree_keys(&store),
            1,
            "only the closed Created line is in the tree; the updates coalesce in the instance"
        );
        let lines = store
            .audit("p", "m", &AuditQuery::default())
            .expect("audit");
        assert_eq!(lines.len(), 2);
        assert_eq!((lines[1].from_version, lines[1].to_version), (2, 10));

        // Format 1 kept the newest line in the tree: put it back there.
        store.checkpoint().expect("checkpoint");
        let trees = store.product("p").unwrap();
        let bytes = trees.instances.get("m").unwrap().unwrap();
        let mut state: StoredInstance = codec::decode(&bytes).unwrap();
        let open = state.audit_open.take().expect("an open line");
        assert_eq!(state.audit_tail, Some(open.id));
        trees
            .audit
            .sled()
            .insert(audit_key("m", open.id), codec::encode(&open.line).unwrap())
            .unwrap();
        trees
            .instances
            .sled()
            .insert("m", codec::encode(&state).unwrap())
            .unwrap();
        store.raw_db(); // the lookup caches no longer hold what is stored
        assert_eq!(audit_tree_keys(&store), 2);
        assert_eq!(
            store.audit("p", "m", &AuditQuery::default()).unwrap(),
            lines,
            "a format 1 instance reads the same"
        );

        store.upsert("p", &[device(11, 11.0)]).expect("upsert");
        let lines = store
            .audit("p", "m", &AuditQuery::default())
            .expect("audit");
        assert_eq!(
            lines.len(),
            2,
            "the change coalesced into the tree's tail line"
        );
        assert_eq!((lines[1].from_version, lines[1].to_version), (2, 11));
        assert_eq!(lines[1].count, 10);
        assert_eq!(
            audit_tree_keys(&store),
            1,
            "the tail line moved into the instance"
        );
    }

    /// Store format 3 kept the open tail in the instance. Such an instance
    /// reads the same (both directions); its next write moves the tail out
    /// to one history key per event, and so does a retention sweep.
    #[test]
    fn a_format_3_tail_in_the_instance_reads_the_same_and_moves_out_to_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = StoreConfig::new(dir.path().join("s"));
        config.history_chunk_events = 16;
        config.history_block_events = 4;
        let store = Store::open(config).expect("open");
        let of = |entity: &str, t: i64| Record {
            entity: entity.into(),
            ..device(t, t as f64)
        };
        for t in 1..=6 {
            store
                .upsert("p", &[of("m", t), of("n", t)])
                .expect("upsert");
        }
        let trees = store.product("p").unwrap();
        let tail_keys = |entity: &str| {
            trees
                .history
                .scan_prefix(super::super::keys::entity_prefix(entity))
                .keys()
                .filter(|k| {
                    k.as_ref().is_ok_and(|k| {
                        super::super::keys::parse_history_key(k)
                            .is_some_and(|(tag, _)| tag == super::super::keys::TAG_TAIL)
                    })
                })
                .count()
        };
        let state_of = |entity: &str| -> StoredInstance {
            codec::decode(&trees.instances.get(entity).unwrap().unwrap()).unwrap()
        };
        let history = |entity: &str, newest_first: bool| -> Vec<u64> {
            let query = crate::store::HistoryQuery {
                newest_first,
                ..Default::default()
            };
            store
                .history("p", entity, &query)
                .expect("history")
                .iter()
                .map(|e| e.version)
                .collect()
        };
        assert_eq!(history("m", false), (1..=6).collect::<Vec<_>>());
        store.checkpoint().expect("checkpoint");
        for entity in ["m", "n"] {
            assert_eq!(tail_keys(entity), 2, "the tail 5..=6 is under its keys");
            let mut state = state_of(entity);
            assert!(state.tail.is_empty(), "not in the instance");
            assert_eq!((state.tail_start, state.tail_len), (5, 2));
            // Put the tail into the instance, as format 3 wrote it.
            for version in 5..=6 {
                let key = tail_key(entity, version);
                let bytes = trees.history.sled().remove(&key).unwrap().unwrap();
                state.tail.push(TailEvent(bytes.to_vec()));
            }
            trees
                .instances
                .sled()
                .insert(entity, codec::encode(&state).unwrap())
                .unwrap();
            assert_eq!(tail_keys(entity), 0);
        }
        store.raw_db(); // the caches no longer hold what is stored
        assert_eq!(
            history("m", false),
            (1..=6).collect::<Vec<_>>(),
            "reads the same"
        );
        assert_eq!(history("m", true), (1..=6).rev().collect::<Vec<_>>());

        store.upsert("p", &[of("m", 7)]).expect("upsert");
        assert_eq!(tail_keys("m"), 3, "moved out, and the new event");
        assert!(state_of("m").tail.is_empty());
        assert_eq!(history("m", false), (1..=7).collect::<Vec<_>>());
        assert_eq!(history("m", true), (1..=7).rev().collect::<Vec<_>>());
        store.upsert("p", &[of("m", 8)]).expect("upsert");
        assert_eq!(tail_keys("m"), 0, "sealed");
        assert_eq!(
            history("m", false),
            (1..=8).collect::<Vec<_>>(),
            "and sealed"
        );

        let keep_all = crate::store::RetentionSpec {
            history_keep: Some(100),
            ..Default::default()
        };
        let report = store
            .sweep_retention("p", &keep_all, Timestamp::now(), None, 10)
            .expect("sweep");
        assert_eq!(report.events_removed, 0);
        assert_eq!(tail_keys("n"), 2, "retention moved them out too");
        assert!(state_of("n").tail.is_empty());
        assert_eq!(history("n", false), (1..=6).collect::<Vec<_>>());
        store
            .upsert("p", &[of("n", 7), of("n", 8)])
            .expect("upsert");
        assert_eq!(history("n", false), (1..=8).collect::<Vec<_>>());
        assert_eq!(tail_keys("n"), 0, "sealed");
    }

    /// The writer writes every key with the vendored sled's `overwrite`,
    /// which skips `insert`'s read of the old value: a later read in the
    /// same transaction still sees the new value, and the commit keeps it.
    #[test]
    fn an_overwrite_is_read_back_in_its_transaction_and_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path().join("db")).expect("open");
        let tree = db.open_tree("t").expect("tree");
        tree.insert("k", "old").expect("insert");
        let seen = tree
            .transaction(|tx| {
                tx.overwrite("k", "new");
                tx.overwrite("fresh", "1");
                Ok::<_, ConflictableTransactionError<()>>((tx.get("k")?, tx.get("fresh")?))
            })
            .expect("transaction");
        assert_eq!(seen, (Some("new".into()), Some("1".into())));
        assert_eq!(tree.get("k").expect("get"), Some("new".into()));
        assert_eq!(tree.get("fresh").expect("get"), Some("1".into()));
    }

    #[test]
    fn edges_conflict_last_writer_wins_by_event_time_then_origin_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(StoreConfig::new(dir.path().join("s"))).expect("open");
        let temp =
            |store: &Store| store.get("p", "m").expect("get").expect("m").fields["temp"].clone();
        store
            .upsert("p", &[synced("edge-b", 10, 1.0)])
            .expect("upsert");
        store
            .upsert("p", &[synced("edge-a", 10, 2.0)])
            .expect("upsert");
        assert_eq!(
            temp(&store),
            Value::Float(1.0),
            "equal time: the larger origin id wins"
        );
        store
            .upsert("p", &[synced("edge-c", 10, 3.0)])
            .expect("upsert");
        assert_eq!(temp(&store), Value::Float(3.0));
        store
            .upsert("p", &[synced("edge-z", 9, 4.0)])
            .expect("upsert");
        assert_eq!(temp(&store), Value::Float(3.0), "an older event never wins");
        store
            .upsert("p", &[synced("edge-a", 11, 5.0)])
            .expect("upsert");
        assert_eq!(temp(&store), Value::Float(5.0), "a newer event always wins");
    }
}
