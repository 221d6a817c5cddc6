//! The store: products' instances, history chunks, audit and tombstones,
//! and ingest's bookkeeping (dedupe window, quarantine, source offsets), in
//! one sled database.
//!
//! # Trees
//!
//! Per product (opened lazily by name; names are `[a-z][a-z0-9_]*`):
//! `{product}/instances`, `{product}/history`, `{product}/audit`,
//! `{product}/tombstones` (key layout in `keys.rs`), `{product}/dedupe`
//! (`dedupe.rs`), `{product}/quarantine` (`quarantine.rs`) and
//! `{product}/dictionaries` (history zstd dictionaries, `dictionary.rs`;
//! trained off the write path by `dictionary_train.rs`). Global:
//! `source_offsets` (`offsets.rs`), and `meta`, which holds the store
//! format version and the newest checkpointed journal frame (the journal
//! itself is segment files in `<store>/journal/`, `journal.rs`); a database written by a newer format is refused at open
//! with [`StoreError::NewerFormat`] instead of being misread.
//!
//! # Writes: journal first, trees at checkpoints (store format 4)
//!
//! Writers are serialized by one mutex. Every batch is one
//! [`Store::hot_transaction`]: its rules (merge, tail and seal, audit
//! coalescing, dedupe, quarantine, offsets, outbox) read and write the
//! product's trees through a write-back overlay, the **hot state**
//! (`hot.rs`); when it succeeds, its write set becomes one zstd-compressed
//! **journal frame** (appended to a segment file) and joins the hot state. The group
//! commit's flush makes the frame durable, and acknowledgements wait for
//! it as before. A **checkpoint** (`journal.rs`) moves the hot state into
//! the trees and drops the frames behind it in one sled transaction, every
//! `checkpoint_interval` (default 30 s), whenever the hot state or the
//! plain frames since the last checkpoint pass `hot_bytes` (default 8 MiB)
//! or 8× that, before writes that bypass it and on close;
//! opening the store replays the frames a crash left. So an entity that
//! reports every second has its instance written to its tree once per
//! interval, not once per record, and all writes of a group are one value.
//!
//! Why (measured, `tests/it/store_write_amplification.rs`): with a sled
//! transaction per group straight into the trees, 50,000 records of 1,000
//! machines wrote 43–46 bytes to disk per raw JSON byte, with or without a
//! flush per group. Each record rewrote its ~1 KiB instance (open history
//! tail included) and a few small keys, ~8× the raw bytes; sled 0.34's
//! log-structured pages multiplied that by ~5 (a leaf of several instances
//! is rewritten whole every ten updates, and its cleaner relocates live
//! pages). The journal path wrote 5.5× on the same run: the frames are
//! ~1.1× the raw bytes, and sled still multiplies what checkpoints give
//! it. The frames went into a sled tree first, and sled's cost per flush
//! made that 122× at 1,000 records/s in groups of 10; in segment files it
//! is 10× (`journal.rs`). The figures, and what is left, are in
//! `benches/README.md`.
//!
//! Every batch is all or nothing, also across a crash: a frame is one
//! checksummed record, a checkpoint one transaction. Readers take no lock.
//!
//! [`Store::ingest`] writes everything one batch from one source produces
//! for one product ([`IngestBatch`]): its records, the registration of their
//! dedupe fingerprints, quarantine inserts, evictions and resolutions, and
//! the source offset — so a restart neither loses nor repeats input, and a
//! redelivered message is recognised. [`Store::upsert`] is the same path
//! with plain records only (no fingerprint, no quarantine, no offset).
//!
//! **Dedupe** (`dedupe.rs`): per product, the last
//! [`IngestLimits::dedupe_capacity`] fingerprints registered, oldest
//! forgotten first. A record with a fingerprint that asks to be checked and
//! is in the window (including from an earlier record of the same batch) is
//! skipped and refreshes nothing; every other record with a fingerprint
//! registers it as the newest. Count-bounded, no time sweep: with
//! ack-after-durable, a redelivery is always of a recent message.
//!
//! **Quarantine** (`quarantine.rs`): per product, entries with ids that
//! ascend and are never reused (the counter is stored), at most
//! [`IngestLimits::quarantine_max`], oldest evicted first and counted;
//! [`Store::quarantine_list`] pages by id, [`Store::quarantine_count`] is
//! O(1). Resolving an id in a batch removes the entry with that batch.
//!
//! **Outbox** (`outbox.rs`): what sync owes each upstream. When an
//! [`OutboxPlanner`] is installed, every applied record's outbox items and
//! an erasure's tombstones (and the removal of the entity's pending
//! entries) are written in the same transaction as the change. With the
//! journal, the outbox trees are hot trees like the others, so an outbox
//! entry is in the same frame as its change — atomic by construction —
//! and sync reads it from the hot state at once. Chosen over a
//! per-upstream cursor over the journal because that would keep frames
//! alive for as long as an upstream is offline (days, at the edge) and
//! replace the outbox's priorities, coalescing and budget with a second
//! mechanism; in the frame, the journal stays one checkpoint long.
//!
//! **Source offsets** (`offsets.rs`): one opaque position per source name,
//! node-wide; [`Store::source_offset`] reads it back.
//!
//! Erasure removes the entity's quarantine entries (they record the entity
//! when its key could be read); retention leaves the quarantine alone, and
//! both leave the dedupe window (unkeyed digests, bounded by count).
//!
//! **Encryption at rest** (`seal.rs`, opt-in with a key): every value that
//! holds data is sealed with AES-256-GCM after compression, bound to its
//! tree and key; a canary file decides at open whether the key fits.
//!
//! **Merge** (see `merge.rs`): a record's fields overwrite the instance's,
//! absent fields stay, `Value::Null` clears. Every record — even one that
//! changes nothing — is one history event and bumps `version` by one, so
//! `version` is the number of the newest history event. A **late** record
//! (event time older than the instance's) goes to history in full but only
//! fills fields the instance does not have; its nulls are ignored; it never
//! moves the instance's `event_time` back. At equal event times, a record
//! synced from an edge (origin `sync:<node id>`) whose node id is smaller
//! than the instance's last synced origin counts as late too: conflicts
//! between edges are last-writer-wins by (event time, origin node id).
//! `last_seen` and `last_origin`
//! are arrival facts and follow every record, late or not.
//!
//! **History**: each event of the open tail has its own history key
//! (`keys::tail_key`), written once: in one journal frame and at one
//! checkpoint. Store format 3 kept the tail in the instance record, so
//! every checkpoint rewrote the whole tail of every dirty entity (and
//! every frame carried a delta of it); such an instance moves its tail out
//! on its next write or retention sweep, and readers read both.
//! Every `history_block_events` events (default 16, or when its version
//! span reaches twice that, which only happens after retention thinned it)
//! the tail is sealed, in the same transaction, into a *block*: a small
//! zstd chunk (with the product's newest dictionary once one is trained).
//! When the blocks and the tail make up a full chunk
//! (`history_chunk_events / history_block_events` seals), they are merged
//! into one full chunk instead. Every chunk has a header (event time range,
//! versions, count) readable without decompressing; readers do not tell
//! blocks from full chunks. The instance record carries the open tail's
//! first version and length and the list of blocks, so sealing and
//! merging read known keys; nothing range-scans inside the transaction.
//!
//! Why two levels: sled keeps a page-table entry per node of ~16 keys in
//! memory and rebuilds the table on every open, so both memory and start-up
//! time grow with the number of keys. One key per open-tail event made a
//! store of 100,000 entities × 100 events ten million keys; blocks make it
//! about ten keys per entity, while merged chunks keep the ratio of large
//! chunks (`benches/README.md`).
//!
//! **Audit** (see `audit.rs`): consecutive value changes from the same
//! origin coalesce into one `Updated` line; creation gets its own `Created`
//! line; a record that changes no value writes no audit line. Lines hold
//! field names, never values.
//!
//! # Erasure and expiry
//!
//! [`Store::erase`] removes the instance, its whole history and every earlier
//! audit line, and writes one `Erased` audit line (who, when, versions; no
//! field names, no values) and a tombstone, in one transaction. A later
//! upsert may re-create the entity: its versions start again at 1, it gets a
//! `Created` audit line after the `Erased` one, and the tombstone is removed
//! in the same transaction (a tombstone means "erased and not seen since").
//! The guarantee is logical: no tree holds an erased value afterwards; sled
//! may keep old bytes in its log segments until it reuses them. Journal
//! frames written before the erasure hold the entity's values until the
//! next checkpoint, so the erasure checkpoints right after its own write,
//! under the writer lock: when [`Store::erase`] returns, no frame holds the
//! entity (the window is the erasure call itself; a crash inside it
//! replays the frames, erasure included).
//!
//! Retention expiry ([`Store::sweep_retention`]) removes an entity whose
//! `last_seen` is older than `expire_after` the same way, but keeps one
//! `Expired` audit line (origin `meshlet:retention`) and writes no
//! tombstone: expiry is housekeeping, not an erasure request.
//!
//! # Reads
//!
//! Reads see the hot state first, then sled (`hot.rs`; range scans merge
//! both in key order), so an acknowledged write is visible at once. A
//! history read checks that the instance
//! record is byte-identical before and after the range scan (every write
//! that moves history rewrites it) and retries, finally under the writer
//! lock, so a concurrent seal or sweep never yields missing or doubled
//! events.
//!
//! # Corruption
//!
//! Every value starts with a format byte (see `codec.rs`). Bytes that do not
//! decode yield [`StoreError::Corrupt`] naming product, entity and what
//! (instance, history chunk, audit line...), never a panic; other entities
//! keep working, [`Store::scan`] skips and reports corrupt entries, writes
//! to a corrupt instance are refused (not silently overwritten) and
//! [`Store::erase`] still clears it.
//!
//! # Durability
//!
//! A write is on disk once [`Store::durable`] (or
//! [`Store::durable_blocking`]) called after it returned has returned Ok;
//! concurrent callers share one flush (see `durable.rs`), which makes the
//! write's journal frame durable. sled also flushes on its own every 500 ms.

mod audit;
mod audit_verify;
mod chunk;
mod chunk_columns;
mod chunk_summary;
mod codec;
mod config;
mod current;
mod dedupe;
mod delta;
mod dictionary;
mod dictionary_train;
mod digest;
mod durable;
mod erase;
mod error;
mod hot;
mod ingest;
mod journal;
mod keys;
pub(crate) mod keys_entity;
mod merge;
mod offsets;
mod outbox;
mod projection;
mod quarantine;
mod read;
pub mod retained;
mod retention;
mod seal;
mod series_read;
mod sessions;
mod stored;
mod summary_codec;
mod tx;
mod types;
mod write;
pub mod writer;
mod writer_states;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

#[doc(hidden)]
pub use audit::BenchLine as AuditBenchLine;
pub use audit_verify::{AuditBreak, AuditVerdict};
pub(crate) use chunk_summary::BlockSummary;
pub use config::{DictionaryConfig, StoreConfig};
pub use dictionary::DictionaryInfo;
pub use digest::{BucketDigest, Leaf, Scope as DigestScope, BUCKETS as DIGEST_BUCKETS};
pub use error::StoreError;
pub use journal::JournalStats;
pub use keys_entity::BenchSeal as EntitySealBench;
pub use outbox::{BudgetReport, OutboxEntry, OutboxItem, OutboxPlanner, OutboxStats, PendingEntry};
pub(crate) use projection::encode_metrics as encode_projection_metrics;
pub use projection::{Cell, ColumnSnapshot, FleetColumns};
pub use retention::RETENTION_ORIGIN;
pub use seal::{rotate as rotate_key, EncryptionKey, KeyCheck, KeyFileError};
pub(crate) use series_read::SeriesReadError;
pub use types::{
    AuditAction, AuditEntry, AuditQuery, Change, Fingerprint, HistoryEvent, HistoryQuery,
    Idempotency, IngestBatch, IngestLimits, IngestOutcome, IngestRecord, Instance, Page,
    QuarantineEntry, QuarantineItem, Receipt, Resend, RetentionSpec, SourceOffset, SweepReport,
    Tombstone,
};
pub use write::SYNC_ORIGIN_PREFIX;
pub use writer::{
    ChangeEvent, PendingWrite, WriteError, WriteJob, Writer, WriterCounters, Written,
};

pub use durable::DurableBarrier;
use durable::GroupCommit;
use stored::StoredMeta;

/// The on-disk format this build writes and understands.
///
/// 2: the dedupe window keeps one key per write group (`dedupe.rs`);
/// format 1 stores are converted when opened.
///
/// 3: an instance holds its open history tail (`StoredInstance::tail`).
/// An instance of format 2 moves its tail keys in on its next write or
/// retention sweep, and readers read both, so opening converts nothing;
/// the number still changes because a format 2 build would not see the
/// tail events in the instance.
///
/// 4: writes go to the `journal` tree first and reach the other trees at
/// checkpoints (`journal.rs`). A format 3 store has no journal, so opening
/// converts nothing; the number changes because a format 3 build would
/// ignore the frames a crash left (and lose acknowledged writes).
/// Within format 4 the open tail moved from the instance back to one
/// history key per event (`write.rs`); the number stays because a build
/// from before reads and writes that shape correctly (it reads such keys
/// as format 2's, and its next write moves them into the instance).
pub const STORE_FORMAT_VERSION: u32 = 4;

const META_TREE: &str = "meta";
const META_FORMAT_KEY: &[u8] = b"format";
const META_MASK_SECRET_KEY: &[u8] = b"mask_secret";

/// Handle to the store; cheap to clone, all clones share one database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    config: StoreConfig,
    db: sled::Db,
    products: RwLock<HashMap<String, Arc<ProductTrees>>>,
    /// `source_offsets`: one position per source, node-wide.
    offsets: hot::HotTree,
    /// Serializes every write, so transactions never conflict.
    writer: Mutex<()>,
    group: GroupCommit,
    /// The sealer of an encrypted store.
    seal: seal::Seal,
    /// The entity keys of an encrypted store (`keys_entity.rs`).
    entity_keys: Option<Arc<keys_entity::EntityKeys>>,
    /// `outbox` and `outbox_index` (see `outbox.rs`), the planner that
    /// fills them, and the pending tally per upstream.
    outbox: hot::HotTree,
    outbox_index: hot::HotTree,
    planner: RwLock<Option<Arc<dyn OutboxPlanner>>>,
    /// Whether ingestion keeps the held sync digests (aggregator mode;
    /// `digest.rs`).
    held_digests: std::sync::atomic::AtomicBool,
    tally: Mutex<outbox::Tally>,
    /// Requests to the dictionary trainer thread (`None`: dictionaries
    /// off, or the thread could not start).
    trainer: Option<std::sync::mpsc::SyncSender<dictionary::TrainRequest>>,
    training: dictionary_train::TrainingCounters,
    /// Instances and keys walked by bulk reads since the heap was last
    /// trimmed (`crate::memory`).
    walked_since_trim: std::sync::atomic::AtomicU64,
    /// The hot state over the written trees (`hot.rs`) and the journal
    /// that makes it durable (`journal.rs`).
    hot: hot::HotTrees,
    journal: Arc<journal::Journal>,
    /// Stopped (and joined) first when the store is dropped.
    checkpointer: Mutex<Option<journal::Checkpointer>>,
    /// The change feed the writer publishes durable changes on
    /// (`writer.rs`); GraphQL and sync subscribe here.
    changes: tokio::sync::broadcast::Sender<Arc<writer::ChangeEvent>>,
}

impl Drop for Inner {
    /// A clean close leaves no frame to replay: the hot state goes into
    /// the trees (the flusher's drop then flushes them).
    fn drop(&mut self) {
        drop(
            self.checkpointer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.journal.checkpoint(&self.hot) {
            tracing::warn!(error = %e, "checkpoint on close failed; the journal keeps the writes");
        }
    }
}

/// The trees of one product.
pub(crate) struct ProductTrees {
    pub name: String,
    pub instances: hot::HotTree,
    pub history: hot::HotTree,
    pub audit: hot::HotTree,
    pub tombstones: hot::HotTree,
    pub dedupe: hot::HotTree,
    pub quarantine: hot::HotTree,
    /// History dictionaries (`dictionary.rs`).
    pub dictionaries: dictionary::ProductDictionaries,
    /// The newest committed states, for lookups (`current.rs`).
    pub current: current::CurrentCache,
    /// The dedupe window in memory, loaded on first use (`dedupe.rs`).
    pub dedupe_window: dedupe::DedupeIndex,
    /// The writer's decoded copy of the instances it wrote last
    /// (`writer_states.rs`).
    pub writer_states: writer_states::WriterStates,
    seal: seal::Seal,
    entity_keys: Option<Arc<keys_entity::EntityKeys>>,
}

/// Tree suffixes, for the associated data of sealed values.
pub(crate) const INSTANCES: &str = "instances";
pub(crate) const HISTORY: &str = "history";
pub(crate) const AUDIT: &str = "audit";
pub(crate) const TOMBSTONES: &str = "tombstones";
pub(crate) const QUARANTINE: &str = "quarantine";

impl ProductTrees {
    /// Drops `entity` from the lookup cache and the writer's states
    /// (`current.rs`, `writer_states.rs`): its instance is about to be
    /// rewritten or removed outside ingest. Call under the writer lock,
    /// before the transaction and again after it.
    pub(crate) fn forget_instance(&self, entity: &str) {
        self.current.forget(entity);
        self.writer_states.forget(entity);
    }

    /// Seals the encoded value of `key` in the product's tree `tree` (one
    /// of the suffix constants); a no-op for a plain store.
    pub(crate) fn seal(
        &self,
        tree: &str,
        key: &[u8],
        plain: Vec<u8>,
    ) -> Result<Vec<u8>, codec::CodecError> {
        if self.seal.is_none() {
            return Ok(plain);
        }
        seal::seal(&self.seal, &format!("{}/{tree}", self.name), key, plain)
    }

    /// Seals the encoded value of `key` in the product's tree `tree` with
    /// the key of `entity` (`keys_entity.rs`): for values that hold the
    /// entity's data and go with its erasure. A no-op for a plain store.
    pub(crate) fn seal_entity(
        &self,
        tree: &str,
        entity: &str,
        key: &[u8],
        plain: Vec<u8>,
    ) -> Result<Vec<u8>, codec::CodecError> {
        match &self.entity_keys {
            None => self.seal(tree, key, plain),
            Some(keys) => keys.seal(
                &self.name,
                entity,
                &format!("{}/{tree}", self.name),
                key,
                &plain,
            ),
        }
    }

    /// Creates (and syncs, once) the keys these entities lack; a no-op
    /// for a plain store. Quarantined entries and other writers create
    /// keys one at a time in [`ProductTrees::seal_entity`].
    pub(crate) fn ensure_entity_keys<'e>(
        &self,
        entities: impl IntoIterator<Item = &'e str>,
    ) -> Result<(), keys_entity::EntityKeyError> {
        match &self.entity_keys {
            Some(keys) => keys.ensure(&self.name, entities).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Destroys the key of `entity` (erasure); whether it had one.
    pub(crate) fn destroy_entity_key(
        &self,
        entity: &str,
    ) -> Result<bool, keys_entity::EntityKeyError> {
        match &self.entity_keys {
            Some(keys) => keys.destroy(&self.name, entity),
            None => Ok(false),
        }
    }

    /// Opens a value [`ProductTrees::seal`]ed or
    /// [`ProductTrees::seal_entity`]ed under the same tree and key.
    pub(crate) fn open<'a>(
        &self,
        tree: &str,
        key: &[u8],
        bytes: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, [u8]>, codec::CodecError> {
        if self.seal.is_none() {
            return Ok(std::borrow::Cow::Borrowed(bytes));
        }
        if let (Some(keys), Some(&keys_entity::FORMAT_ENTITY_SEALED)) =
            (&self.entity_keys, bytes.first())
        {
            return keys
                .open(&format!("{}/{tree}", self.name), key, bytes)
                .map(std::borrow::Cow::Owned);
        }
        seal::open(&self.seal, &format!("{}/{tree}", self.name), key, bytes)
    }
}

/// How long [`Store::open`] waits for the database lock to come free.
///
/// sled 0.34 releases its `flock` from a background thread that `Db::drop`
/// does not join (spacejam/sled#1234, #1289), so reopening right after a
/// drop (an in-process restart, a test) can see the lock held for a few
/// milliseconds. A second live node holds it for its whole life, far beyond
/// this budget, so a real conflict still fails, just not instantly.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn open_waiting_for_lock(config: &StoreConfig) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        let opened = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_capacity_bytes)
            .open();
        match opened {
            Err(sled::Error::Io(e))
                if is_lock_contention(&e) && std::time::Instant::now() < deadline =>
            {
                tracing::debug!(error = %e, "database lock busy; waiting");
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// sled reports a busy lock as an `Other` error wrapping the `flock`
/// `WouldBlock`; match both shapes, and nothing else.
fn is_lock_contention(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

impl Store {
    /// Opens (or creates) the store at `config.path`.
    ///
    /// Fails with [`StoreError::NewerFormat`] if a newer meshlet wrote the
    /// database, and with [`StoreError::Sled`] if another process holds it.
    pub fn open(config: StoreConfig) -> Result<Store, StoreError> {
        Store::open_with_key(config, None)
    }

    /// [`Store::open`] sealed by `key` (the store key, see `seal.rs`): a
    /// store created with a key only opens with the same key; one created
    /// without only opens without. The key is an argument, not a setting,
    /// so it never sits in a `Debug`/`Serialize` config.
    pub fn open_with_key(
        config: StoreConfig,
        key: Option<EncryptionKey>,
    ) -> Result<Store, StoreError> {
        config.validate()?;
        let span = tracing::info_span!("store.open", path = %config.path.display());
        let _enter = span.enter();
        // Before sled touches anything: a wrong or missing key stops here.
        let seal = seal::check_key(&config.path, key.as_ref())?;
        let entity_keys = match &seal {
            Some(data) => Some(Arc::new(
                keys_entity::EntityKeys::load(&config.path, Arc::clone(data)).map_err(|e| {
                    StoreError::Meta {
                        path: config.path.clone(),
                        detail: e.to_string(),
                    }
                })?,
            )),
            None => None,
        };
        let db = open_waiting_for_lock(&config)
            .map_err(|e| StoreError::sled(format!("opening {}", config.path.display()), e))?;
        check_format(&db, &config)?;
        let meta = db
            .open_tree(META_TREE)
            .map_err(|e| StoreError::sled("opening tree `meta`", e))?;
        let hot = hot::HotTrees::new(db.clone());
        // Before anything reads a tree: frames a crash left go in first.
        let journal = Arc::new(journal::Journal::open(
            config.path.join(journal::JOURNAL_TREE),
            &db,
            meta,
            seal.clone(),
            &hot,
        )?);
        let open_tree = |name: &str| {
            hot.open(name)
                .map_err(|e| StoreError::sled(format!("opening tree `{name}`"), e))
        };
        let offsets = open_tree(offsets::OFFSETS_TREE)?;
        let outbox = open_tree(outbox::OUTBOX_TREE)?;
        let outbox_index = open_tree(outbox::OUTBOX_INDEX_TREE)?;
        let group = GroupCommit::start(db.clone(), Arc::clone(&journal))?;
        let dictionaries_on = config.dictionary.enabled;
        let checkpoint_interval = config.checkpoint_interval;
        let store = Store {
            inner: Arc::new_cyclic(|weak| {
                Inner {
                config,
                db,
                products: RwLock::new(HashMap::new()),
                offsets,
                writer: Mutex::new(()),
                group,
                seal,
                entity_keys,
                outbox,
                outbox_index,
                planner: RwLock::new(None),
                held_digests: Default::default(),
                tally: Mutex::new(outbox::Tally::default()),
                trainer: if dictionaries_on {
                    dictionary_train::start_trainer(weak.clone())
                        .map_err(|e| {
                            tracing::warn!(error = %e, "no dictionary trainer thread; history chunks are written without dictionaries");
                        })
                        .ok()
                } else {
                    None
                },
                training: dictionary_train::TrainingCounters::default(),
                walked_since_trim: std::sync::atomic::AtomicU64::new(0),
                hot,
                journal,
                changes: tokio::sync::broadcast::channel(writer::CHANGE_FEED_CAPACITY).0,
                checkpointer: Mutex::new(
                    journal::Checkpointer::start(weak.clone(), checkpoint_interval)
                        .map_err(|e| {
                            tracing::warn!(error = %e, "no checkpoint thread; the hot state is checkpointed when it passes hot_bytes");
                        })
                        .ok(),
                ),
            }
            }),
        };
        store.outbox_recount()?;
        tracing::debug!("store opened");
        Ok(store)
    }

    /// The feed of durable changes the writer publishes, from now on
    /// (a slow subscriber gets `RecvError::Lagged` and can re-read the
    /// store).
    pub fn subscribe_changes(&self) -> tokio::sync::broadcast::Receiver<Arc<writer::ChangeEvent>> {
        self.inner.changes.subscribe()
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Returns only when every write that returned before this call is on
    /// disk. Concurrent callers share one flush.
    pub async fn durable(&self) -> Result<(), StoreError> {
        self.inner.group.durable().await
    }

    /// A barrier over every write committed so far, its flush already
    /// requested: [`DurableBarrier::wait`] returns once they are on disk.
    /// Unlike [`Store::durable`], writes committed after this call do not
    /// lengthen the wait, so the ingest writer takes one per group and
    /// goes on writing the next group while it is flushed.
    pub fn durable_barrier(&self) -> DurableBarrier {
        self.inner.group.barrier()
    }

    /// [`Store::durable`] for threads outside an async runtime (it blocks
    /// the calling thread; inside tokio use `durable().await`).
    pub fn durable_blocking(&self) -> Result<(), StoreError> {
        self.inner.group.durable_blocking()
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.inner
            .db
            .size_on_disk()
            .map_err(|e| StoreError::sled("measuring size on disk", e))
    }

    /// Number of instances of `product`. Walks the product's keys: O(n).
    pub fn count(&self, product: &str) -> Result<u64, StoreError> {
        let trees = self.product(product)?;
        let count = trees.instances.len() as u64;
        self.walked(count);
        Ok(count)
    }

    /// Counts instances a bulk read walked, for the heap keeper.
    pub(crate) fn walked(&self, instances: u64) {
        self.inner
            .walked_since_trim
            .fetch_add(instances, std::sync::atomic::Ordering::Relaxed);
    }

    /// Instances and keys bulk reads (scans, counts) walked since the last
    /// [`Store::take_walked_since_trim`]: what `crate::memory` trims after.
    pub fn walked_since_trim(&self) -> u64 {
        self.inner
            .walked_since_trim
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resets [`Store::walked_since_trim`] and returns what it was.
    pub fn take_walked_since_trim(&self) -> u64 {
        self.inner
            .walked_since_trim
            .swap(0, std::sync::atomic::Ordering::Relaxed)
    }

    /// The stored bytes of the node secret that keys `hash` masks, created
    /// by `fresh` on first use and kept with the data: pseudonyms stay
    /// stable across restarts as long as the data does, and go with it when
    /// the data is wiped. The store keeps the bytes; what they mean is
    /// policy's (`policy::masking::MaskSecret::of_store`).
    pub fn mask_secret_bytes(
        &self,
        fresh: impl FnOnce() -> Result<Vec<u8>, String>,
    ) -> Result<Vec<u8>, StoreError> {
        let meta = self
            .inner
            .db
            .open_tree(META_TREE)
            .map_err(|e| StoreError::sled("opening tree `meta`", e))?;
        let invalid = |detail: String| StoreError::Meta {
            path: self.inner.config.path.clone(),
            detail: format!("mask secret: {detail}"),
        };
        let opened = |bytes: &[u8]| {
            seal::open(&self.inner.seal, META_TREE, META_MASK_SECRET_KEY, bytes)
                .map(|b| b.into_owned())
                .map_err(|e| invalid(e.to_string()))
        };
        if let Some(bytes) = meta
            .get(META_MASK_SECRET_KEY)
            .map_err(|e| StoreError::sled("reading the mask secret", e))?
        {
            return opened(&bytes);
        }
        let fresh = seal::seal(
            &self.inner.seal,
            META_TREE,
            META_MASK_SECRET_KEY,
            fresh().map_err(invalid)?,
        )
        .map_err(|e| invalid(e.to_string()))?;
        // Two first callers race: compare-and-swap keeps exactly one secret.
        let _ = meta
            .compare_and_swap(
                META_MASK_SECRET_KEY,
                None as Option<&[u8]>,
                Some(&fresh[..]),
            )
            .map_err(|e| StoreError::sled("writing the mask secret", e))?;
        meta.flush()
            .map_err(|e| StoreError::sled("writing the mask secret", e))?;
        let stored = meta
            .get(META_MASK_SECRET_KEY)
            .map_err(|e| StoreError::sled("reading the mask secret", e))?
            .ok_or_else(|| StoreError::Meta {
                path: self.inner.config.path.clone(),
                detail: "mask secret vanished after it was written".into(),
            })?;
        opened(&stored)
    }

    /// Seals the encoded value of `key` in the (global) tree `tree` for an
    /// encrypted store; passes it through for a plain one. For store
    /// modules outside the product trees (the outbox): every value that
    /// holds data goes through this or [`ProductTrees::seal`].
    #[allow(dead_code)] // the outbox (sync) is its first user
    pub(crate) fn seal_value(
        &self,
        tree: &str,
        key: &[u8],
        plain: Vec<u8>,
    ) -> Result<Vec<u8>, codec::CodecError> {
        seal::seal(&self.inner.seal, tree, key, plain)
    }

    /// The entity keys of an encrypted store (`keys_entity.rs`).
    pub(crate) fn entity_keys(&self) -> Option<&keys_entity::EntityKeys> {
        self.inner.entity_keys.as_deref()
    }

    /// Opens a value [`Store::seal_value`] sealed under the same tree and key.
    #[allow(dead_code)] // the outbox (sync) is its first user
    pub(crate) fn open_value<'a>(
        &self,
        tree: &str,
        key: &[u8],
        bytes: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, [u8]>, codec::CodecError> {
        seal::open(&self.inner.seal, tree, key, bytes)
    }

    /// The raw sled database, for tests that need to look under the hood
    /// (erasure checks, corruption injection). Not part of the API.
    #[doc(hidden)]
    pub fn raw_db(&self) -> &sled::Db {
        // What is looked at must be in the trees, not only in the journal
        // and the hot state.
        if let Err(e) = self.checkpoint() {
            tracing::warn!(error = %e, "checkpoint before handing out the raw database failed");
        }
        // Whatever is written through it bypasses the lookup caches.
        for trees in self
            .inner
            .products
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            trees.current.clear();
            trees.dedupe_window.clear();
            trees.writer_states.clear();
        }
        &self.inner.db
    }

    /// Entities of `product` whose state lookups answer without sled
    /// (`current.rs`).
    pub fn cached_instances(&self, product: &str) -> Result<usize, StoreError> {
        Ok(self.product(product)?.current.len())
    }

    /// The trees of `product`, opened on first use.
    pub(crate) fn product(&self, product: &str) -> Result<Arc<ProductTrees>, StoreError> {
        if let Some(trees) = self
            .inner
            .products
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(product)
        {
            return Ok(Arc::clone(trees));
        }
        validate_product_name(product)?;
        let mut products = self
            .inner
            .products
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(trees) = products.get(product) {
            return Ok(Arc::clone(trees));
        }
        let open = |suffix: &str| {
            let name = format!("{product}/{suffix}");
            self.inner
                .hot
                .open(&name)
                .map_err(|e| StoreError::sled(format!("opening tree `{name}`"), e))
        };
        let open_cold = |suffix: &str| {
            let name = format!("{product}/{suffix}");
            self.inner
                .db
                .open_tree(&name)
                .map_err(|e| StoreError::sled(format!("opening tree `{name}`"), e))
        };
        let trees = Arc::new(ProductTrees {
            name: product.to_string(),
            instances: open("instances")?,
            history: open("history")?,
            audit: open("audit")?,
            tombstones: open("tombstones")?,
            dedupe: open("dedupe")?,
            quarantine: open("quarantine")?,
            dictionaries: dictionary::ProductDictionaries::open(
                product,
                open_cold(dictionary::DICTIONARIES)?,
                self.inner.seal.clone(),
                self.inner.config.zstd_level,
                self.inner.config.dictionary.clone(),
                self.inner.trainer.clone(),
            )?,
            current: current::CurrentCache::new(self.inner.config.instance_cache_entries),
            dedupe_window: dedupe::DedupeIndex::default(),
            writer_states: writer_states::WriterStates::new(
                self.inner.config.instance_cache_entries,
            ),
            seal: self.inner.seal.clone(),
            entity_keys: self.inner.entity_keys.clone(),
        });
        products.insert(product.to_string(), Arc::clone(&trees));
        tracing::debug!(product, "product trees opened");
        Ok(trees)
    }

    /// Takes the writer lock (a poisoned lock is fine: the data lives in
    /// sled, whose transactions are all-or-nothing).
    pub(crate) fn write_lock(&self) -> MutexGuard<'_, ()> {
        self.inner.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rejects empty and over-long entity keys.
    pub(crate) fn check_entity(&self, product: &str, entity: &str) -> Result<(), StoreError> {
        if entity.is_empty() {
            return Err(StoreError::EmptyEntityKey {
                product: product.to_string(),
            });
        }
        let max = self.inner.config.max_entity_key_bytes;
        if entity.len() > max {
            let mut cut = 64.min(entity.len());
            while !entity.is_char_boundary(cut) {
                cut -= 1;
            }
            return Err(StoreError::KeyTooLong {
                product: product.to_string(),
                entity_prefix: entity[..cut].to_string(),
                len: entity.len(),
                max,
            });
        }
        Ok(())
    }
}

/// Product names become tree names, so they are kept to a safe alphabet.
fn validate_product_name(product: &str) -> Result<(), StoreError> {
    let mut chars = product.chars();
    let valid = matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'));
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidProductName {
            product: product.to_string(),
        })
    }
}

/// Writes the format version into a new database, refuses a newer one,
/// and converts an older one (then stamps it with this build's version,
/// so a build that only knows the older format refuses it).
fn check_format(db: &sled::Db, config: &StoreConfig) -> Result<(), StoreError> {
    let path = &config.path;
    let meta = db
        .open_tree(META_TREE)
        .map_err(|e| StoreError::sled("opening tree `meta`", e))?;
    let stored = meta
        .get(META_FORMAT_KEY)
        .map_err(|e| StoreError::sled("reading the store format", e))?;
    match stored {
        Some(bytes) => {
            let stored: StoredMeta = codec::decode(&bytes).map_err(|e| StoreError::Meta {
                path: path.clone(),
                detail: format!("format record: {e}"),
            })?;
            if stored.format_version > STORE_FORMAT_VERSION {
                return Err(StoreError::NewerFormat {
                    path: path.clone(),
                    found: stored.format_version,
                    supported: STORE_FORMAT_VERSION,
                });
            }
            if stored.format_version < STORE_FORMAT_VERSION {
                dedupe::migrate_format_1(db)?;
                // A crash here (converted, not stamped) is finished by the
                // next open: both steps are idempotent (tests/it/store_upgrade.rs).
                journal::failpoint("store-migration", Some(db));
                stamp_format(&meta, config)?;
                tracing::info!(
                    from = stored.format_version,
                    to = STORE_FORMAT_VERSION,
                    "store format converted"
                );
            }
        }
        None => stamp_format(&meta, config)?,
    }
    Ok(())
}

/// Writes this build's format version and flushes it.
fn stamp_format(meta: &sled::Tree, config: &StoreConfig) -> Result<(), StoreError> {
    let bytes = codec::encode(&StoredMeta {
        format_version: STORE_FORMAT_VERSION,
    })
    .map_err(|e| StoreError::Meta {
        path: config.path.clone(),
        detail: e.to_string(),
    })?;
    meta.insert(META_FORMAT_KEY, bytes)
        .map_err(|e| StoreError::sled("writing the store format", e))?;
    // sled flushes the whole database: a conversion before is durable too.
    meta.flush()
        .map_err(|e| StoreError::sled("writing the store format", e))?;
    Ok(())
}

/// Maps a transaction result: an abort carries our own error.
pub(crate) fn tx_result<T>(
    result: sled::transaction::TransactionResult<T, StoreError>,
    context: impl FnOnce() -> String,
) -> Result<T, StoreError> {
    match result {
        Ok(value) => Ok(value),
        Err(sled::transaction::TransactionError::Abort(e)) => Err(e),
        Err(sled::transaction::TransactionError::Storage(e)) => Err(StoreError::sled(context(), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_names_are_checked() {
        for ok in ["machine_health", "a", "p2"] {
            assert!(validate_product_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Machine", "2x", "a/b", "a-b", "meta/x", "_a"] {
            assert!(validate_product_name(bad).is_err(), "{bad}");
        }
    }
}
