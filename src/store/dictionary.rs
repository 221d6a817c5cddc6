//! Per-product zstd dictionaries for history chunks: where they are kept,
//! and the in-memory cache the write and read paths use.
//!
//! # Why
//!
//! A chunk compresses its events together, but each chunk starts from
//! nothing: field names, MessagePack structure, column names and origins
//! are paid for again in every chunk. A dictionary trained on the
//! product's own chunks carries that shared part once. It matters for
//! small chunks (−38% at 16 events, −8% at 64) and not for large ones,
//! where it can even cost a few percent; so a chunk is compressed with and
//! without it and the smaller kept (`codec::encode_compressed_with`).
//! `benches/README.md` has the figures.
//!
//! # Storage
//!
//! Tree `{product}/dictionaries`, key `u32 BE` dictionary id (ascending
//! from 1, so the last key is the newest), value:
//!
//! ```text
//! [FORMAT_DICTIONARY] [u32 BE meta length] [meta: codec value] [raw zstd dictionary]
//! ```
//!
//! sealed like every other data value when the store is encrypted (the
//! dictionary is derived from data). New chunks use the newest dictionary;
//! a chunk names its dictionary id (codec format 5), so chunks of older
//! dictionaries and chunks sealed before any dictionary (format 2) stay
//! readable. Dictionaries are never deleted: finding out whether any chunk
//! still refers to one needs a scan of every chunk, and a dictionary is at
//! most `max_bytes` (32 KiB by default) per retraining, which happens
//! rarely (`retrain_chunks`). A chunk that refers to a dictionary the store
//! does not hold is a `Corrupt` error naming product and entity.
//!
//! # Cache
//!
//! Preparing a zstd dictionary (`EncoderDictionary`/`DecoderDictionary`)
//! costs about as much as compressing a chunk, so prepared ones are kept in
//! memory: the newest for compression (built at open and after each
//! training), older ones for decompression, loaded on first use.
//!
//! # Training and erasure
//!
//! See `dictionary_train.rs`: when, from which samples, and why a
//! dictionary never holds a value that could belong to an erased entity.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde::{Deserialize, Serialize};
use zstd::dict::{DecoderDictionary, EncoderDictionary};

use super::codec::{self, CodecError, Dictionaries, Encoder};
use super::config::DictionaryConfig;
use super::seal::{self, Seal};
use super::StoreError;
use crate::record::Timestamp;

/// Tree suffix of a product's dictionaries (and the sealing tree name).
pub(crate) const DICTIONARIES: &str = "dictionaries";

/// Format byte of a stored dictionary (see `codec.rs` for the others).
pub(crate) const FORMAT_DICTIONARY: u8 = 6;

/// What a stored dictionary was trained from, kept with it for operators
/// (`meshlet` logs it) and tests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DictionaryInfo {
    pub id: u32,
    pub trained_at: Timestamp,
    /// Why it was trained: `chunks` (enough new chunks), `erasure`
    /// (retrained after an erasure) or `manual`.
    pub reason: String,
    /// Sample chunks and their MessagePack bytes the dictionary was
    /// trained on.
    pub samples: u64,
    pub sample_bytes: u64,
    /// Distinct entities the samples came from.
    pub entities: u64,
    /// Size of the dictionary itself.
    pub bytes: u64,
    /// Wall time of the training, in milliseconds (sampling included).
    pub train_millis: u64,
}

/// Encodes a stored dictionary value (before sealing).
pub(crate) fn encode_dictionary(
    info: &DictionaryInfo,
    dictionary: &[u8],
) -> Result<Vec<u8>, CodecError> {
    let meta = codec::encode(info)?;
    let meta_len =
        u32::try_from(meta.len()).map_err(|_| CodecError("dictionary meta too large".into()))?;
    let mut out = Vec::with_capacity(5 + meta.len() + dictionary.len());
    out.push(FORMAT_DICTIONARY);
    out.extend_from_slice(&meta_len.to_be_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(dictionary);
    Ok(out)
}

/// Decodes a stored dictionary value (after opening).
pub(crate) fn decode_dictionary(bytes: &[u8]) -> Result<(DictionaryInfo, &[u8]), CodecError> {
    match bytes.first() {
        Some(&FORMAT_DICTIONARY) => {}
        Some(other) => {
            return Err(CodecError(format!(
                "not a dictionary (format byte {other})"
            )))
        }
        None => return Err(CodecError("empty dictionary value".into())),
    }
    let len_bytes: [u8; 4] = bytes
        .get(1..5)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| CodecError("truncated dictionary value".into()))?;
    let meta_len = u32::from_be_bytes(len_bytes) as usize;
    let meta = bytes
        .get(5..5usize.saturating_add(meta_len))
        .ok_or_else(|| CodecError("truncated dictionary meta".into()))?;
    let info: DictionaryInfo = codec::decode(meta)?;
    let raw = &bytes[5 + meta_len..];
    if raw.is_empty() {
        return Err(CodecError("dictionary without bytes".into()));
    }
    Ok((info, raw))
}

pub(crate) fn dictionary_key(id: u32) -> [u8; 4] {
    id.to_be_bytes()
}

#[derive(Default)]
struct Cache {
    newest: Option<Encoder>,
    decoders: HashMap<u32, Arc<DecoderDictionary<'static>>>,
}

/// One product's dictionaries: the tree, the prepared ones, and the
/// counter that decides when to train.
pub(crate) struct ProductDictionaries {
    product: String,
    tree: sled::Tree,
    seal: Seal,
    zstd_level: i32,
    config: DictionaryConfig,
    cache: RwLock<Cache>,
    /// Id of the newest stored dictionary (0: none).
    newest_id: AtomicU64,
    /// Events sealed since the newest dictionary was trained (or since
    /// the store was opened): the training trigger. An over-count from an
    /// aborted transaction only trains a little early.
    sealed: AtomicU64,
    /// A training request is queued or running: ask once.
    requested: AtomicBool,
    /// Requests to the store's trainer thread (`dictionary_train.rs`).
    trainer: Option<SyncSender<TrainRequest>>,
    /// One training at a time per product (ids are last + 1).
    training: Mutex<()>,
}

/// What the trainer thread is asked to do.
pub(crate) struct TrainRequest {
    pub product: String,
    pub reason: &'static str,
}

impl ProductDictionaries {
    /// Opens the product's dictionaries and prepares the newest one.
    pub(crate) fn open(
        product: &str,
        tree: sled::Tree,
        seal: Seal,
        zstd_level: i32,
        config: DictionaryConfig,
        trainer: Option<SyncSender<TrainRequest>>,
    ) -> Result<ProductDictionaries, StoreError> {
        let dictionaries = ProductDictionaries {
            product: product.to_string(),
            tree,
            seal,
            zstd_level,
            config,
            cache: RwLock::new(Cache::default()),
            newest_id: AtomicU64::new(0),
            sealed: AtomicU64::new(0),
            requested: AtomicBool::new(false),
            trainer,
            training: Mutex::new(()),
        };
        let last = dictionaries.tree.last().map_err(|e| {
            StoreError::sled(format!("product `{product}`: reading dictionaries"), e)
        })?;
        if let Some((key, _)) = last {
            let id = parse_key(&key).ok_or_else(|| {
                StoreError::bookkeeping(
                    format!("product `{product}`"),
                    "dictionary",
                    "malformed dictionary key",
                )
            })?;
            // A dictionary that does not load must not stop the product:
            // new chunks go without one (reads of chunks that need it
            // report `Corrupt`), and the next training replaces it.
            match dictionaries.load(id) {
                Ok((_, raw)) => dictionaries.publish(id, &raw),
                Err(e) => {
                    tracing::warn!(product, id, error = %e, "newest history dictionary does not load; writing chunks without one")
                }
            }
        }
        Ok(dictionaries)
    }

    pub(crate) fn config(&self) -> &DictionaryConfig {
        &self.config
    }

    /// Id of the dictionary new chunks use, `None` before the first one.
    pub(crate) fn newest_id(&self) -> Option<u32> {
        match self.newest_id.load(Ordering::Acquire) {
            0 => None,
            id => u32::try_from(id).ok(),
        }
    }

    /// Reads and opens dictionary `id`: its info and raw bytes.
    pub(crate) fn load(&self, id: u32) -> Result<(DictionaryInfo, Vec<u8>), StoreError> {
        let product = self.product.as_str();
        let key = dictionary_key(id);
        let bytes = self
            .tree
            .get(key)
            .map_err(|e| StoreError::sled(format!("product `{product}`: reading dictionary"), e))?
            .ok_or_else(|| {
                StoreError::bookkeeping(
                    format!("product `{product}`"),
                    "dictionary",
                    format!("dictionary {id} is missing"),
                )
            })?;
        let plain = seal::open(&self.seal, &self.tree_name(), &key, &bytes).map_err(|e| {
            StoreError::bookkeeping(format!("product `{product}`"), "dictionary", e)
        })?;
        let (info, raw) = decode_dictionary(&plain).map_err(|e| {
            StoreError::bookkeeping(format!("product `{product}`"), "dictionary", e)
        })?;
        Ok((info, raw.to_vec()))
    }

    /// Every stored dictionary's info, oldest first.
    pub(crate) fn list(&self) -> Result<Vec<DictionaryInfo>, StoreError> {
        let mut out = Vec::new();
        for key in self.tree.iter().keys() {
            let key = key.map_err(|e| {
                StoreError::sled(
                    format!("product `{}`: listing dictionaries", self.product),
                    e,
                )
            })?;
            if let Some(id) = parse_key(&key) {
                out.push(self.load(id)?.0);
            }
        }
        Ok(out)
    }

    fn tree_name(&self) -> String {
        format!("{}/{DICTIONARIES}", self.product)
    }

    /// Stores a newly trained dictionary as the newest, durably, and only
    /// then lets new chunks use it: a chunk on disk never refers to a
    /// dictionary that is not. Returns its id.
    pub(crate) fn store_new(
        &self,
        mut info: DictionaryInfo,
        raw: &[u8],
        db: &sled::Db,
    ) -> Result<DictionaryInfo, StoreError> {
        let product = self.product.as_str();
        let id = match self.tree.last().map_err(|e| {
            StoreError::sled(format!("product `{product}`: reading dictionaries"), e)
        })? {
            Some((key, _)) => parse_key(&key).unwrap_or(0).saturating_add(1),
            None => 1,
        };
        info.id = id;
        let key = dictionary_key(id);
        let value = encode_dictionary(&info, raw)
            .and_then(|plain| seal::seal(&self.seal, &self.tree_name(), &key, plain))
            .map_err(|e| StoreError::encode(product, "(dictionary)", "dictionary", e))?;
        self.tree
            .insert(key, value)
            .map_err(|e| StoreError::sled(format!("product `{product}`: writing dictionary"), e))?;
        db.flush()
            .map_err(|e| StoreError::sled(format!("product `{product}`: writing dictionary"), e))?;
        self.publish(id, raw);
        self.sealed.store(0, Ordering::Release);
        Ok(info)
    }

    /// Prepares `raw` as the dictionary new chunks use.
    fn publish(&self, id: u32, raw: &[u8]) {
        let encoder = Arc::new(EncoderDictionary::copy(raw, self.zstd_level));
        let decoder = Arc::new(DecoderDictionary::copy(raw));
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        cache.newest = Some((id, encoder));
        cache.decoders.insert(id, decoder);
        self.newest_id.store(u64::from(id), Ordering::Release);
    }

    /// Counts `events` newly sealed (a block or a full chunk) and asks the
    /// trainer for a dictionary when enough have been sealed since the
    /// last one. Counted in events, measured in full chunks of
    /// `chunk_events` (`min_chunks`, `retrain_chunks`), so small blocks
    /// count for what they hold.
    pub(crate) fn events_sealed(&self, events: u64, chunk_events: u64) {
        if !self.config.enabled || events == 0 {
            return;
        }
        let sealed = self.sealed.fetch_add(events, Ordering::AcqRel) + events;
        let chunks = |n: u64| n.saturating_mul(chunk_events.max(1));
        let due = match self.newest_id() {
            None => sealed >= chunks(self.config.min_chunks),
            Some(_) => {
                self.config.retrain_chunks > 0 && sealed >= chunks(self.config.retrain_chunks)
            }
        };
        if due {
            self.request("chunks");
        }
    }

    /// Asks for a retraining after an erasure (only if there is a
    /// dictionary to replace): see `dictionary_train.rs`.
    pub(crate) fn erased(&self) {
        if self.config.enabled && self.newest_id().is_some() {
            self.request("erasure");
        }
    }

    fn request(&self, reason: &'static str) {
        let Some(trainer) = &self.trainer else {
            return;
        };
        if self.requested.swap(true, Ordering::AcqRel) {
            return;
        }
        let sent = trainer.try_send(TrainRequest {
            product: self.product.clone(),
            reason,
        });
        if sent.is_err() {
            // Queue full or trainer gone: ask again at the next trigger.
            self.requested.store(false, Ordering::Release);
        }
    }

    /// Called by the trainer when a requested training is done (or failed).
    pub(crate) fn request_done(&self) {
        self.requested.store(false, Ordering::Release);
    }

    /// Serializes trainings of this product.
    pub(crate) fn training_lock(&self) -> MutexGuard<'_, ()> {
        self.training.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn parse_key(key: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(key.try_into().ok()?))
}

impl Dictionaries for ProductDictionaries {
    fn encoder(&self) -> Option<Encoder> {
        if !self.config.enabled {
            return None;
        }
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .newest
            .clone()
    }

    fn decoder(&self, id: u32) -> Result<Arc<DecoderDictionary<'static>>, CodecError> {
        if let Some(found) = self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .decoders
            .get(&id)
        {
            return Ok(Arc::clone(found));
        }
        let (_, raw) = self.load(id).map_err(|e| match e {
            StoreError::CorruptBookkeeping { detail, .. } => {
                CodecError(format!("dictionary {id}: {detail}"))
            }
            other => CodecError(format!("dictionary {id}: {other}")),
        })?;
        let decoder = Arc::new(DecoderDictionary::copy(&raw));
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .decoders
            .insert(id, Arc::clone(&decoder));
        Ok(decoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Fields, Origin, Record, Value};
    use crate::store::codec::FORMAT_ZSTD_DICT_MSGPACK;
    use crate::store::keys::{parse_history_key, TAG_CHUNK};
    use crate::store::seal::FORMAT_SEALED;
    use crate::store::{EncryptionKey, HistoryQuery, Store, StoreConfig, HISTORY};

    const P: &str = "machine_health";

    fn record(machine: usize, seq: i64) -> Record {
        let mut fields = Fields::new();
        fields.insert(
            "machine_id".into(),
            Value::String(format!("PR-{machine:04}")),
        );
        fields.insert("site".into(), Value::String("berlin".into()));
        fields.insert(
            "temperature_c".into(),
            Value::Float(20.0 + ((seq * 7 + machine as i64) % 300) as f64 / 10.0),
        );
        fields.insert("spindle_rpm".into(), Value::Int(1400 + (seq * 13) % 200));
        fields.insert("status".into(), Value::String("ok".into()));
        Record {
            entity: format!("PR-{machine:04}"),
            fields,
            event_time: Timestamp(1_764_000_000_000_000 + seq * 1_000_000),
            origin: Origin::new(format!("mqtt:plant/berlin/PR-{machine:04}/telemetry")),
        }
    }

    fn config(dir: &std::path::Path) -> StoreConfig {
        let mut config = StoreConfig::new(dir.join("db"));
        config.history_chunk_events = 16;
        // Trained by the tests themselves, not by the trainer thread.
        config.dictionary.min_chunks = u64::MAX;
        config
    }

    /// `rounds` events for each of `machines` machines, from `from`.
    fn ingest(store: &Store, machines: usize, from: i64, rounds: i64) {
        for seq in from..from + rounds {
            let batch: Vec<_> = (0..machines).map(|m| record(m, seq)).collect();
            store.upsert(P, &batch).expect("upsert");
        }
    }

    /// Dictionary id of every chunk of `entity` (`None`: no dictionary).
    fn chunk_dictionaries(store: &Store, entity: &str) -> Vec<Option<u32>> {
        let trees = store.product(P).expect("trees");
        let mut out = Vec::new();
        for item in trees
            .history
            .scan_prefix(crate::store::keys::entity_prefix(entity))
        {
            let (key, value) = item.expect("item");
            if parse_history_key(&key).map(|k| k.0) != Some(TAG_CHUNK) {
                continue;
            }
            let plain = trees.open(HISTORY, &key, &value).expect("opens");
            let header_len = u32::from_be_bytes(plain[1..5].try_into().unwrap()) as usize;
            // The per-field summary sits between header and body.
            let summary = crate::store::chunk::decode_chunk_header(&plain)
                .unwrap()
                .summary_len as usize;
            let body = &plain[5 + header_len + summary..];
            out.push(match body[0] {
                FORMAT_ZSTD_DICT_MSGPACK => {
                    Some(u32::from_be_bytes(body[1..5].try_into().unwrap()))
                }
                _ => None,
            });
        }
        out
    }

    fn versions(store: &Store, entity: &str) -> Vec<u64> {
        store
            .history(P, entity, &HistoryQuery::default())
            .expect("history reads")
            .iter()
            .map(|e| e.version)
            .collect()
    }

    #[test]
    fn chunks_before_and_after_trainings_all_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(config(dir.path())).expect("open");
        ingest(&store, 8, 0, 64);
        assert_eq!(chunk_dictionaries(&store, "PR-0003"), vec![None; 4]);
        let first = store
            .train_dictionary(P)
            .expect("trains")
            .expect("a dictionary");
        assert_eq!(
            (first.id, first.reason.as_str(), first.entities),
            (1, "manual", 8)
        );
        ingest(&store, 8, 64, 32);
        let second = store
            .train_dictionary(P)
            .expect("trains")
            .expect("a dictionary");
        assert_eq!(second.id, 2);
        ingest(&store, 8, 96, 32);
        let expected = [vec![None; 4], vec![Some(1); 2], vec![Some(2); 2]].concat();
        assert_eq!(chunk_dictionaries(&store, "PR-0003"), expected);
        assert_eq!(versions(&store, "PR-0003"), (1..=128).collect::<Vec<_>>());
        let events = store
            .history(P, "PR-0005", &HistoryQuery::default())
            .expect("history");
        for (event, seq) in events.iter().zip(0..) {
            assert_eq!(event.fields, record(5, seq).fields, "seq {seq}");
        }

        // After a restart the dictionaries come from the store.
        drop(store);
        let store = Store::open(config(dir.path())).expect("reopen");
        assert_eq!(versions(&store, "PR-0003"), (1..=128).collect::<Vec<_>>());
        ingest(&store, 8, 128, 16);
        assert_eq!(chunk_dictionaries(&store, "PR-0003").last(), Some(&Some(2)));
        let infos = store.dictionaries(P).expect("list");
        assert_eq!(infos.iter().map(|i| i.id).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn a_chunk_whose_dictionary_is_missing_is_a_corrupt_error_naming_the_entity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(config(dir.path())).expect("open");
        ingest(&store, 4, 0, 32);
        store
            .train_dictionary(P)
            .expect("trains")
            .expect("a dictionary");
        ingest(&store, 4, 32, 16);
        store
            .raw_db()
            .open_tree(format!("{P}/{DICTIONARIES}"))
            .expect("tree")
            .remove(dictionary_key(1))
            .expect("remove");
        drop(store);
        let store = Store::open(config(dir.path())).expect("reopen");
        let err = store
            .history(P, "PR-0002", &HistoryQuery::default())
            .expect_err("refused");
        assert!(err.is_corrupt(), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("PR-0002")
                && text.contains("history chunk")
                && text.contains("dictionary 1"),
            "{text}"
        );
        // Only that history is affected: the state still reads, and ingest
        // goes on, without a dictionary.
        assert!(store.get(P, "PR-0002").expect("get").is_some());
        ingest(&store, 4, 48, 16);
        assert_eq!(chunk_dictionaries(&store, "PR-0001").last(), Some(&None));
    }

    #[test]
    fn a_corrupt_newest_dictionary_does_not_stop_the_product() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(config(dir.path())).expect("open");
        ingest(&store, 4, 0, 32);
        store
            .train_dictionary(P)
            .expect("trains")
            .expect("a dictionary");
        ingest(&store, 4, 32, 16);
        store
            .raw_db()
            .open_tree(format!("{P}/{DICTIONARIES}"))
            .expect("tree")
            .insert(dictionary_key(1), &[FORMAT_DICTIONARY, 0xff][..])
            .expect("insert");
        drop(store);
        let store = Store::open(config(dir.path())).expect("reopens");
        ingest(&store, 4, 48, 16);
        assert_eq!(
            chunk_dictionaries(&store, "PR-0003"),
            vec![None, None, Some(1), None]
        );
        let err = store
            .history(P, "PR-0003", &HistoryQuery::default())
            .expect_err("the chunk of the broken dictionary");
        assert!(
            err.is_corrupt() && err.to_string().contains("dictionary 1"),
            "{err}"
        );
        let next = store
            .train_dictionary(P)
            .expect("trains")
            .expect("a dictionary");
        assert_eq!(next.id, 2, "a new dictionary replaces it for new chunks");
    }

    #[test]
    fn dictionaries_of_an_encrypted_store_are_sealed_and_work_after_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = EncryptionKey::generate().expect("key");
        let open = || Store::open_with_key(config(dir.path()), Some(key.clone()));
        let store = open().expect("open");
        ingest(&store, 6, 0, 32);
        store
            .train_dictionary(P)
            .expect("trains")
            .expect("a dictionary");
        ingest(&store, 6, 32, 32);
        let raw = store
            .raw_db()
            .open_tree(format!("{P}/{DICTIONARIES}"))
            .expect("tree")
            .get(dictionary_key(1))
            .expect("get")
            .expect("stored");
        assert_eq!(raw[0], FORMAT_SEALED);
        assert!(
            !raw.windows(6).any(|w| w == b"berlin"),
            "shared values are inside, sealed"
        );
        assert_eq!(
            chunk_dictionaries(&store, "PR-0001")[2..],
            [Some(1), Some(1)]
        );
        drop(store);
        let store = open().expect("reopen");
        assert_eq!(versions(&store, "PR-0001"), (1..=64).collect::<Vec<_>>());
        assert!(
            store.raw_dictionaries(P).expect("raw")[0]
                .windows(6)
                .any(|w| w == b"berlin"),
            "the opened dictionary holds the shared site name"
        );
    }

    #[test]
    fn retention_rewrites_a_boundary_chunk_with_the_newest_dictionary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(config(dir.path())).expect("open");
        ingest(&store, 4, 0, 48);
        store
            .train_dictionary(P)
            .expect("trains")
            .expect("a dictionary");
        let spec = crate::store::RetentionSpec {
            history_keep: Some(40),
            history_max_age: None,
            expire_after: None,
        };
        store
            .sweep_retention(P, &spec, Timestamp::now(), None, 100)
            .expect("sweeps");
        assert_eq!(versions(&store, "PR-0000"), (9..=48).collect::<Vec<_>>());
        assert_eq!(
            chunk_dictionaries(&store, "PR-0000"),
            vec![Some(1), None, None]
        );
    }

    #[test]
    fn the_trainer_thread_trains_once_enough_chunks_were_sealed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config(dir.path());
        config.dictionary.min_chunks = 16;
        let store = Store::open(config).expect("open");
        ingest(&store, 8, 0, 32);
        // 16 chunks sealed: the trainer was asked. Wait for it (no timing
        // is asserted; the deadline only stops a hung test).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while store.dictionary_counts().0 == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no dictionary trained"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let infos = store.dictionaries(P).expect("list");
        assert_eq!(infos[0].reason, "chunks");
        assert_eq!(store.dictionary_counts().0, 1);
        let scraped = store.clone();
        let metrics =
            crate::telemetry::expose::render_fn(move |enc| scraped.encode_dictionary_metrics(enc));
        assert!(
            metrics.contains("meshlet_store_dictionary_trainings_total{outcome=\"trained\"} 1"),
            "{metrics}"
        );
        ingest(&store, 8, 32, 16);
        assert_eq!(chunk_dictionaries(&store, "PR-0007").last(), Some(&Some(1)));
    }
}
