//! Training per-product history dictionaries: when, where, from what.
//!
//! # When and where
//!
//! Sealing a chunk (inside the ingest transaction) only counts it
//! (`ProductDictionaries::events_sealed`); once `dictionary.min_chunks`
//! chunks' worth of events were sealed without a dictionary (or `retrain_chunks` with the
//! newest one), the product is queued for the store's **trainer thread**.
//! Training reads chunks with plain sled reads, takes neither the writer
//! lock nor part in any transaction, and stores the result with one insert
//! into the product's `dictionaries` tree, so ingest never waits for it:
//! only new chunks sealed after it finished use it. A plain thread (like
//! the group-commit flusher) rather than a tokio task or a retention-sweep
//! step, because training is CPU-bound for up to a few hundred
//! milliseconds, must work wherever a `Store` is open (node, CLI, tests),
//! and the sweeper only runs for products with a retention policy.
//! [`Store::train_dictionary`] runs the same training on the caller's
//! thread.
//!
//! # Samples
//!
//! Events of sealed chunks, spread across entities: the newest chunk of
//! every entity, then the second newest, … until `sample_bytes` of
//! MessagePack are collected. Each chunk, sanitized, is one sample,
//! encoded exactly as a chunk body is (columns, `chunk_columns.rs`).
//!
//! # Erasure (why dictionaries are never rewritten)
//!
//! A dictionary is made of fragments of its samples, and erasure promises
//! that no tree holds a value of the erased entity. Dropping and
//! re-encoding every chunk of a tainted dictionary on each erasure would
//! turn a rare, small transaction into a rewrite of the product's whole
//! history. Instead samples are **sanitized before training**: every value
//! (field values, JSON leaves and object keys, origin source and actor,
//! versions) that events of fewer than `value_min_entities` distinct
//! entities hold in the sample set is replaced by a placeholder of its
//! type (`""`, `0`, `0.0`, `false`), and event and arrival times are all
//! set to one coarse constant (the training time rounded down to ~71
//! minutes). What is left are field names (the product's schema), value
//! types and values that several entities share (`"ok"`, a site name).
//! A value that survives sanitizing is held by other entities too, so it
//! stays in the store after the erasure anyway and does not point at the
//! erased entity; a value only the erased entity had cannot be in any
//! dictionary. So erasure does not touch dictionaries and stays one
//! transaction; it queues a retraining ("erasure" in the dictionary info),
//! so the next dictionary no longer counts the erased entity towards the
//! threshold of any value. Top-level field names are kept as they are: they
//! are the product's contract, not data.
//!
//! # Measured
//!
//! `tests/it/store_dictionaries.rs` prints the training time; it is reported
//! in the dictionary info (`train_millis`) and the log line.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Weak;
use std::time::Instant;

use super::chunk::decode_chunk;
use super::chunk_columns::to_columns;
use super::dictionary::{DictionaryInfo, TrainRequest};
use super::keys::{parse_history_key, TAG_CHUNK};
use super::stored::StoredEvent;
use super::{Inner, ProductTrees, Store, StoreError, HISTORY};
use crate::record::{Fields, Origin, Timestamp, Value};

/// Pending requests to the trainer thread; more are dropped and asked
/// again at the next trigger.
const QUEUE: usize = 64;

/// Rounding of the placeholder time: 2^32 µs, about 71 minutes.
const TIME_GRAIN: i64 = 1 << 32;

/// Fewest sample chunks worth training on.
const MIN_SAMPLES: usize = 8;

/// How many times training ran and failed, node-wide (for `/metrics`).
#[derive(Debug, Default)]
pub(crate) struct TrainingCounters {
    pub trained: AtomicU64,
    pub failed: AtomicU64,
    pub skipped: AtomicU64,
}

/// Starts the trainer thread of a store; it ends when the store is gone.
pub(crate) fn start_trainer(
    inner: Weak<Inner>,
) -> Result<SyncSender<TrainRequest>, std::io::Error> {
    let (sender, receiver) = std::sync::mpsc::sync_channel(QUEUE);
    std::thread::Builder::new()
        .name("meshlet-dict".into())
        .spawn(move || trainer(inner, receiver))?;
    Ok(sender)
}

fn trainer(inner: Weak<Inner>, requests: Receiver<TrainRequest>) {
    // Every sender lives in the store; when it is dropped, recv fails.
    while let Ok(request) = requests.recv() {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let store = Store { inner };
        let span = tracing::info_span!("store.dictionary.train", product = %request.product, reason = request.reason);
        let _enter = span.enter();
        let trees = match store.product(&request.product) {
            Ok(trees) => trees,
            Err(e) => {
                tracing::warn!(error = %e, "dictionary training: cannot open the product");
                continue;
            }
        };
        let result = store.train_with(&trees, request.reason);
        trees.dictionaries.request_done();
        match result {
            Ok(Some(info)) => tracing::info!(
                id = info.id,
                samples = info.samples,
                sample_bytes = info.sample_bytes,
                entities = info.entities,
                bytes = info.bytes,
                train_millis = info.train_millis,
                "history dictionary trained"
            ),
            Ok(None) => tracing::debug!("too few samples for a dictionary yet"),
            Err(e) => tracing::warn!(error = %e, "dictionary training failed"),
        }
    }
}

impl Store {
    /// Trains a new history dictionary for `product` from its stored
    /// chunks now, on this thread, and makes it the one new chunks use.
    /// `None` if there are too few samples yet. Normally the store's
    /// trainer thread does this on its own (see `dictionary_train.rs`).
    pub fn train_dictionary(&self, product: &str) -> Result<Option<DictionaryInfo>, StoreError> {
        let trees = self.product(product)?;
        self.train_with(&trees, "manual")
    }

    /// Every stored history dictionary of `product`, oldest first.
    pub fn dictionaries(&self, product: &str) -> Result<Vec<DictionaryInfo>, StoreError> {
        self.product(product)?.dictionaries.list()
    }

    /// The raw bytes of every stored dictionary of `product`, for tests
    /// that scan the database (a dictionary-compressed frame only opens
    /// with its dictionary). Not part of the API.
    #[doc(hidden)]
    pub fn raw_dictionaries(&self, product: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let trees = self.product(product)?;
        let mut out = Vec::new();
        for info in trees.dictionaries.list()? {
            out.push(trees.dictionaries.load(info.id)?.1);
        }
        Ok(out)
    }

    /// Dictionary trainings that produced / failed / had too few samples.
    pub fn dictionary_counts(&self) -> (u64, u64, u64) {
        let c = &self.inner.training;
        (
            c.trained.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
            c.skipped.load(Ordering::Relaxed),
        )
    }

    /// The trainer's counters for `/metrics`: failed trainings are the bad
    /// input here (samples zstd cannot train on), and are logged with the
    /// reason.
    pub fn encode_dictionary_metrics(
        &self,
        enc: &mut crate::telemetry::expose::Encoder<'_>,
    ) -> crate::telemetry::expose::Encoded {
        let (trained, failed, skipped) = self.dictionary_counts();
        let mut f = crate::telemetry::expose::counter_family(
            enc,
            "meshlet_store_dictionary_trainings_total",
            "History dictionary trainings by outcome (trained; skipped: too few samples yet; failed: see the log).",
        )?;
        for (outcome, n) in [
            ("trained", trained),
            ("skipped", skipped),
            ("failed", failed),
        ] {
            f.sample(&[("outcome", outcome)], n)?;
        }
        Ok(())
    }

    pub(crate) fn train_with(
        &self,
        trees: &ProductTrees,
        reason: &str,
    ) -> Result<Option<DictionaryInfo>, StoreError> {
        let result = self.train_inner(trees, reason);
        let counters = &self.inner.training;
        let counter = match &result {
            Ok(Some(_)) => &counters.trained,
            Ok(None) => &counters.skipped,
            Err(_) => &counters.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    fn train_inner(
        &self,
        trees: &ProductTrees,
        reason: &str,
    ) -> Result<Option<DictionaryInfo>, StoreError> {
        let dictionaries = &trees.dictionaries;
        let _one_at_a_time = dictionaries.training_lock();
        let started = Instant::now();
        let config = dictionaries.config().clone();
        let sampled = collect_samples(trees, config.sample_bytes)?;
        let entities = sampled.entities;
        let now = Timestamp::now();
        let events = sanitize(sampled.events, config.value_min_entities, now);
        // One sample per chunk, laid out as a chunk body is.
        let mut samples: Vec<Vec<StoredEvent>> = Vec::new();
        let mut last = None;
        for (event, chunk) in events.into_iter().zip(sampled.chunks) {
            match samples.last_mut() {
                Some(group) if last == Some(chunk) => group.push(event),
                _ => samples.push(vec![event]),
            }
            last = Some(chunk);
        }
        if samples.len() < MIN_SAMPLES {
            return Ok(None);
        }
        let encoded = samples
            .iter()
            .map(|events| rmp_serde::to_vec_named(&to_columns(events)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Dictionary {
                product: trees.name.clone(),
                detail: format!("encoding samples: {e}"),
            })?;
        let sample_bytes: usize = encoded.iter().map(Vec::len).sum();
        let raw = zstd::dict::from_samples(&encoded, config.max_bytes).map_err(|e| {
            StoreError::Dictionary {
                product: trees.name.clone(),
                detail: format!(
                    "zstd training on {} samples ({sample_bytes} bytes): {e}",
                    encoded.len()
                ),
            }
        })?;
        let info = DictionaryInfo {
            id: 0,
            trained_at: now,
            reason: reason.to_string(),
            samples: encoded.len() as u64,
            sample_bytes: sample_bytes as u64,
            entities: entities as u64,
            bytes: raw.len() as u64,
            train_millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        dictionaries.store_new(info, &raw, &self.inner.db).map(Some)
    }
}

struct Sampled {
    /// (entity index, event), grouped by entity.
    events: Vec<(usize, StoredEvent)>,
    /// The chunk each event came from (parallel to `events`).
    chunks: Vec<usize>,
    entities: usize,
}

/// The newest chunk of every entity, then the second newest, … until
/// `target` bytes of (unsanitized) MessagePack are collected or there are
/// no more chunks. Plain reads: a chunk sealed or removed meanwhile is
/// simply seen or not.
fn collect_samples(trees: &ProductTrees, target: usize) -> Result<Sampled, StoreError> {
    let product = trees.name.as_str();
    let mut taken: Vec<(Vec<u8>, usize, StoredEvent)> = Vec::new();
    let mut chunk_no = 0usize;
    let mut bytes = 0usize;
    let mut pass = 0usize;
    'passes: loop {
        let mut took_any = false;
        let mut current: Option<Vec<u8>> = None;
        let mut chunks: Vec<(sled::IVec, sled::IVec)> = Vec::new();
        let mut items = trees.history.iter();
        loop {
            let item = items.next().transpose().map_err(|e| {
                StoreError::sled(format!("product `{product}`: sampling history"), e)
            })?;
            let entity = item
                .as_ref()
                .and_then(|(key, _)| entity_of(key).map(<[u8]>::to_vec));
            if item.is_none() || entity != current {
                // The previous entity is complete: take its pass-th newest chunk.
                if let (Some(prefix), Some(index)) =
                    (current.take(), chunks.len().checked_sub(pass + 1))
                {
                    let (key, value) = &chunks[index];
                    for event in decode_sample(trees, &prefix, key, value) {
                        bytes += rmp_serde::to_vec_named(&event).map_or(0, |b| b.len());
                        taken.push((prefix.clone(), chunk_no, event));
                    }
                    chunk_no += 1;
                    took_any = true;
                    if bytes >= target {
                        break 'passes;
                    }
                }
                chunks.clear();
                current = entity;
            }
            let Some((key, value)) = item else { break };
            if matches!(parse_history_key(&key), Some((TAG_CHUNK, _))) {
                chunks.push((key, value));
            }
        }
        pass += 1;
        if !took_any {
            break;
        }
    }
    taken.sort_by(|a, b| a.0.cmp(&b.0));
    let mut index = 0usize;
    let mut last: Option<Vec<u8>> = None;
    let mut events = Vec::with_capacity(taken.len());
    let mut chunks = Vec::with_capacity(taken.len());
    for (prefix, chunk, event) in taken {
        if last.as_ref() != Some(&prefix) {
            if last.is_some() {
                index += 1;
            }
            last = Some(prefix);
        }
        events.push((index, event));
        chunks.push(chunk);
    }
    let entities = if events.is_empty() { 0 } else { index + 1 };
    Ok(Sampled {
        events,
        chunks,
        entities,
    })
}

/// The length-prefixed entity part of a history key.
fn entity_of(key: &[u8]) -> Option<&[u8]> {
    let len = usize::from(u16::from_be_bytes([*key.first()?, *key.get(1)?]));
    key.get(..2 + len)
}

/// A chunk's events, or none if it does not decode (it is reported by
/// reads; training just goes without it).
fn decode_sample(
    trees: &ProductTrees,
    prefix: &[u8],
    key: &[u8],
    value: &[u8],
) -> Vec<StoredEvent> {
    let decoded = trees
        .open(HISTORY, key, value)
        .and_then(|plain| decode_chunk(&plain, &trees.dictionaries));
    match decoded {
        Ok((_, events)) => events,
        Err(e) => {
            let entity = String::from_utf8_lossy(prefix.get(2..).unwrap_or_default());
            tracing::warn!(product = %trees.name, %entity, error = %e, "dictionary training skips a chunk that does not decode");
            Vec::new()
        }
    }
}

/// One thing a sample holds that could identify an entity.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Atom {
    Version(u64),
    Value(Vec<u8>),
    Text(String),
}

/// Distinct entities holding each atom (counted up to what matters).
#[derive(Default)]
struct Holders {
    counts: HashMap<Atom, (usize, usize)>,
}

impl Holders {
    fn add(&mut self, atom: Atom, entity: usize) {
        let slot = self.counts.entry(atom).or_insert((usize::MAX, 0));
        if slot.0 != entity {
            *slot = (entity, slot.1 + 1);
        }
    }

    fn shared(&self, atom: &Atom, min: usize) -> bool {
        self.counts.get(atom).is_some_and(|&(_, n)| n >= min)
    }
}

fn value_atom(value: &Value) -> Atom {
    Atom::Value(rmp_serde::to_vec(value).unwrap_or_default())
}

fn visit_json(json: &serde_json::Value, f: &mut impl FnMut(Atom)) {
    match json {
        serde_json::Value::Array(items) => items.iter().for_each(|v| visit_json(v, f)),
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                f(Atom::Text(key.clone()));
                visit_json(v, f);
            }
        }
        leaf => f(Atom::Text(leaf.to_string())),
    }
}

fn visit(event: &StoredEvent, f: &mut impl FnMut(Atom)) {
    f(Atom::Version(event.version));
    for value in event.fields.values() {
        match value {
            Value::Json(json) => visit_json(json, f),
            other => f(value_atom(other)),
        }
    }
    f(Atom::Text(event.origin.source.clone()));
    if let Some(actor) = &event.origin.actor {
        f(Atom::Text(actor.clone()));
    }
}

/// Replaces every value that fewer than `min` entities hold (see the
/// module docs). `events` are grouped by entity index.
fn sanitize(events: Vec<(usize, StoredEvent)>, min: usize, now: Timestamp) -> Vec<StoredEvent> {
    let mut holders = Holders::default();
    for (entity, event) in &events {
        visit(event, &mut |atom| holders.add(atom, *entity));
    }
    let time = Timestamp(now.0.div_euclid(TIME_GRAIN) * TIME_GRAIN);
    let text = |s: &str| {
        if holders.shared(&Atom::Text(s.to_string()), min) {
            s.to_string()
        } else {
            String::new()
        }
    };
    events
        .into_iter()
        .map(|(_, event)| {
            let fields: Fields = event
                .fields
                .into_iter()
                .map(|(name, value)| {
                    let value = match value {
                        Value::Json(json) => Value::Json(sanitize_json(json, &holders, min)),
                        other if holders.shared(&value_atom(&other), min) => other,
                        other => placeholder(&other, time),
                    };
                    (name, value)
                })
                .collect();
            StoredEvent {
                version: if holders.shared(&Atom::Version(event.version), min) {
                    event.version
                } else {
                    0
                },
                event_time: time,
                received_at: time,
                fields,
                origin: Origin {
                    source: text(&event.origin.source),
                    actor: event.origin.actor.as_deref().map(text),
                },
            }
        })
        .collect()
}

fn placeholder(value: &Value, time: Timestamp) -> Value {
    match value {
        Value::Null => Value::Null,
        Value::Bool(_) => Value::Bool(false),
        Value::Int(_) => Value::Int(0),
        Value::Float(_) => Value::Float(0.0),
        Value::String(_) => Value::String(String::new()),
        Value::Timestamp(_) => Value::Timestamp(time),
        Value::Json(_) => Value::Json(serde_json::Value::Null),
    }
}

fn sanitize_json(json: serde_json::Value, holders: &Holders, min: usize) -> serde_json::Value {
    use serde_json::Value as J;
    match json {
        J::Array(items) => J::Array(
            items
                .into_iter()
                .map(|v| sanitize_json(v, holders, min))
                .collect(),
        ),
        J::Object(map) => J::Object(
            map.into_iter()
                .filter(|(key, _)| holders.shared(&Atom::Text(key.clone()), min))
                .map(|(key, v)| (key, sanitize_json(v, holders, min)))
                .collect(),
        ),
        leaf if holders.shared(&Atom::Text(leaf.to_string()), min) => leaf,
        J::Bool(_) => J::Bool(false),
        J::Number(_) => J::from(0),
        J::String(_) => J::String(String::new()),
        J::Null => J::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(version: u64, source: &str, fields: &[(&str, Value)]) -> StoredEvent {
        StoredEvent {
            version,
            event_time: Timestamp(1_700_000_000_000_000 + version as i64),
            received_at: Timestamp(1_700_000_000_000_100 + version as i64),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            origin: Origin::new(source),
        }
    }

    #[test]
    fn sanitizing_keeps_only_values_several_entities_share() {
        let mut events = Vec::new();
        for entity in 0..4usize {
            let secret = format!("SECRET-{entity}");
            let source = if entity == 0 {
                "mqtt:a/SECRET"
            } else {
                "mqtt:shared"
            };
            events.push((
                entity,
                event(
                    1,
                    source,
                    &[
                        ("status", Value::String("ok".into())),
                        ("name", Value::String(secret)),
                        ("temp", Value::Float(20.5 + entity as f64)),
                        (
                            "j",
                            Value::Json(serde_json::json!({"unit": "C", format!("k{entity}"): "SECRET", "n": 7})),
                        ),
                    ],
                ),
            ));
        }
        let clean = sanitize(events, 3, Timestamp(5 * TIME_GRAIN + 17));
        let bytes: Vec<u8> = clean
            .iter()
            .flat_map(|e| rmp_serde::to_vec_named(e).unwrap())
            .collect();
        assert!(
            !bytes.windows(6).any(|w| w == b"SECRET"),
            "no value of fewer than 3 entities survives"
        );
        let first = &clean[0];
        assert_eq!(first.fields["status"], Value::String("ok".into()));
        assert_eq!(first.fields["name"], Value::String(String::new()));
        assert_eq!(first.fields["temp"], Value::Float(0.0));
        assert_eq!(
            first.fields["j"],
            Value::Json(serde_json::json!({"unit": "C", "n": 7}))
        );
        assert_eq!(first.origin.source, "");
        assert_eq!(clean[1].origin.source, "mqtt:shared");
        assert_eq!(first.version, 1, "versions are shared");
        assert_eq!(first.event_time, Timestamp(5 * TIME_GRAIN));
    }

    #[test]
    fn one_entity_repeating_a_value_does_not_make_it_shared() {
        let events: Vec<_> = (1..=50)
            .map(|v| {
                (
                    0usize,
                    event(v, "s", &[("name", Value::String("ALONE".into()))]),
                )
            })
            .chain((1..=50).map(|v| {
                (
                    1usize,
                    event(v, "s", &[("name", Value::String("PAIR".into()))]),
                )
            }))
            .chain((1..=50).map(|v| {
                (
                    2usize,
                    event(v, "s", &[("name", Value::String("PAIR".into()))]),
                )
            }))
            .collect();
        let clean = sanitize(events, 2, Timestamp(0));
        assert_eq!(clean[0].fields["name"], Value::String(String::new()));
        assert_eq!(clean[60].fields["name"], Value::String("PAIR".into()));
    }
}
