//! Entity keys: crypto-shredding for an encrypted store (issue 30 point 2).
//!
//! With encryption at rest on, each entity's values — its instance (with
//! the open history tail), history chunks and events, quarantined payloads
//! recorded for it and its outbox entries — are sealed with a random
//! 256-bit key of that entity alone. [`Store::erase`](super::Store::erase)
//! destroys the key, so whatever copies of those values outlive the
//! erasure (sled's log segments not yet reused, a backup of the data
//! directory without this file, a journal segment's freed blocks) no
//! longer open, whoever holds the store key.
//!
//! # Why a file of its own, not a `{product}/keys` tree
//!
//! sled is log-structured: a removed key's old value stays in the log
//! segments until the segment is reused, exactly like the data it would
//! protect. An entity key kept in a tree would therefore survive its
//! erasure next to the values it seals, and shredding would be void. The
//! keys live instead in `<store>/entity.keys`, a file this module writes
//! itself: new keys are appended; an erased key's wrapped bytes are
//! overwritten **in place** with zeros and synced. On a filesystem that
//! overwrites in place (ext4, xfs — not copy-on-write btrfs/zfs, and not
//! an SSD's remapped blocks below them) the key is then gone from the
//! device. A backup that is to honour erasures must keep this file out of
//! (or rotate it out of) long-lived copies; a backup of the rest is
//! useless without it for every entity erased since.
//!
//! # Records
//!
//! `u32 BE body length | u32 BE CRC-32 of the body | body`, body =
//! `u16 BE product length | product | u16 BE entity length | entity |
//! wrapped key` where the wrapped key is the entity key sealed by the
//! store's data key (`seal.rs`: format byte, nonce, ciphertext, tag; 61
//! bytes) with the product and entity as associated data. An erased record
//! has an all-zero wrapped key (its CRC then fails, which is expected). A
//! record cut short by a crash at the end is dropped (its key sealed
//! nothing that was acknowledged, see below). When more than half the
//! records are erased, opening rewrites the file with the live ones.
//!
//! # Ordering with the data (no acknowledged value without its key)
//!
//! Ingest creates the keys of a batch's new entities and syncs this file
//! **before** the batch's transaction (and so before its journal frame),
//! with one `fdatasync` per batch that has new entities. A crash in
//! between leaves a key that sealed nothing, which is harmless. A value of
//! an entity without a key (written by a path other than ingest) creates
//! and syncs one on the spot. Erasure destroys the key only after the
//! erasure's transaction and checkpoint: a crash in between leaves the
//! key of an already erased entity on disk (logged; the values are
//! logically gone). The key outlives nothing else.
//!
//! # Journal frames
//!
//! A frame holds the values as the trees will hold them (`journal.rs`:
//! frames are physical), that is, already sealed with their entity keys,
//! and the whole frame is sealed again with the data key. So no frame
//! needs rewriting at erasure: the frames of an erased entity (the
//! erasure's checkpoint drops them anyway) hold nothing that opens.
//!
//! # Sealed values
//!
//! Format byte [`FORMAT_ENTITY_SEALED`], then `u16 BE product length |
//! product | u16 BE entity length | entity`, then nonce, ciphertext and
//! tag. The names in the clear say which key opens the value (entity keys
//! are visible on disk anyway: they order the trees); the associated data
//! is the tree and key as for every sealed value. Values of the older
//! format byte (`seal::FORMAT_SEALED`) are sealed with the data key and
//! still open: a store written before entity keys reads as it did, and an
//! entity's values move to its key as they are rewritten.
//!
//! Not sealed with the entity key, because they must outlive its erasure
//! and hold no values: audit lines (the `Erased` line's chain must still
//! verify), tombstones, outbox tombstones. Quarantined payloads that name
//! no entity are sealed with the data key (nothing to attribute them to).
//!
//! # Cost
//!
//! Every entity key is held in memory (about 100 bytes per entity with
//! its name) and an AES-GCM key schedule is built per value sealed or
//! opened (`benches/micro.rs`, `store/entity_seal`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::codec::CodecError;
use super::seal::{self, Sealer};

/// The file of entity keys inside the store directory.
pub(crate) const ENTITY_KEYS_FILE: &str = "entity.keys";
/// Format byte of a value sealed with its entity's key.
pub(crate) const FORMAT_ENTITY_SEALED: u8 = 9;
/// Bytes of a wrapped key (format byte, nonce, 32 key bytes, tag).
const WRAPPED_LEN: usize = 1 + 12 + 32 + 16;
const HEADER: usize = 8;

/// Why the entity keys cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EntityKeyError {
    #[error("entity keys file {}: {detail}", path.display())]
    Io { path: PathBuf, detail: String },
    #[error("entity key: {0}")]
    Seal(String),
}

impl From<EntityKeyError> for CodecError {
    fn from(e: EntityKeyError) -> CodecError {
        CodecError(e.to_string())
    }
}

struct Slot {
    raw: [u8; 32],
    /// File offset of the wrapped key (what erasure zeroes).
    at: u64,
}

struct KeyFile {
    file: File,
    len: u64,
    /// Appended since the last sync.
    dirty: bool,
}

/// Counters for `/metrics` and tests.
#[derive(Default)]
pub struct EntityKeyStats {
    pub created: AtomicU64,
    pub destroyed: AtomicU64,
    pub syncs: AtomicU64,
}

/// The entity keys of one store, all in memory, with their file.
pub(crate) struct EntityKeys {
    path: PathBuf,
    data: Arc<Sealer>,
    /// product → entity → key.
    map: RwLock<HashMap<String, HashMap<String, Slot>>>,
    file: Mutex<KeyFile>,
    pub stats: EntityKeyStats,
}

impl std::fmt::Debug for EntityKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EntityKeys(..)")
    }
}

fn names(product: &str, entity: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + product.len() + entity.len());
    for s in [product, entity] {
        let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
    }
    out
}

/// `(product, entity, rest)` of a names prefix.
fn parse_names(bytes: &[u8]) -> Option<(&str, &str, &[u8])> {
    let mut rest = bytes;
    let mut take = || -> Option<&str> {
        let len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
        let s = std::str::from_utf8(rest.get(2..2 + len)?).ok()?;
        rest = &rest[2 + len..];
        Some(s)
    };
    let product = take()?;
    let entity = take()?;
    Some((product, entity, rest))
}

impl EntityKeys {
    /// Opens (or creates) `<store>/entity.keys`; `data` is the store's data
    /// key sealer.
    pub(crate) fn load(store_path: &Path, data: Arc<Sealer>) -> Result<EntityKeys, EntityKeyError> {
        let path = store_path.join(ENTITY_KEYS_FILE);
        let io = |what: &str, e: std::io::Error| EntityKeyError::Io {
            path: path.clone(),
            detail: format!("{what}: {e}"),
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("opening", e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| io("reading", e))?;
        let mut map: HashMap<String, HashMap<String, Slot>> = HashMap::new();
        let (mut live, mut dead) = (0u64, 0u64);
        let mut at = 0usize;
        while at < bytes.len() {
            let Some(header) = bytes.get(at..at + HEADER) else {
                break;
            };
            let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
            let Some(body) = bytes.get(at + HEADER..at + HEADER + len) else {
                break;
            };
            let next = at + HEADER + len;
            let Some((product, entity, wrapped)) = parse_names(body) else {
                if next >= bytes.len() {
                    break;
                }
                return Err(io(
                    "reading",
                    std::io::Error::other(format!("malformed record at byte {at}")),
                ));
            };
            if wrapped.iter().all(|&b| b == 0) {
                dead += 1;
            } else if crc32fast::hash(body) != crc {
                if next >= bytes.len() {
                    break; // a torn append
                }
                // Only an interrupted erasure (a partly zeroed key) gets here.
                tracing::warn!(
                    product,
                    entity,
                    "entity key record damaged (an interrupted erasure?); its values do not open"
                );
                dead += 1;
            } else {
                let raw = data
                    .open(ENTITY_KEYS_FILE, &names(product, entity), wrapped)
                    .map_err(|e| EntityKeyError::Seal(format!("{product}/{entity}: {e}")))?;
                let raw = <[u8; 32]>::try_from(raw.as_slice()).map_err(|_| {
                    EntityKeyError::Seal(format!("{product}/{entity}: not 32 bytes"))
                })?;
                let slot = Slot {
                    raw,
                    at: (at + HEADER + (body.len() - wrapped.len())) as u64,
                };
                // A later record of the same entity (re-created after an
                // erasure whose zeroing was lost) wins.
                if map
                    .entry(product.to_string())
                    .or_default()
                    .insert(entity.to_string(), slot)
                    .is_some()
                {
                    dead += 1;
                } else {
                    live += 1;
                }
            }
            at = next;
        }
        if at < bytes.len() {
            tracing::warn!(path = %path.display(), dropped = bytes.len() - at, "dropping a torn entity key record");
            file.set_len(at as u64).map_err(|e| io("truncating", e))?;
            file.sync_data().map_err(|e| io("syncing", e))?;
        }
        let keys = EntityKeys {
            path: path.clone(),
            data,
            map: RwLock::new(map),
            file: Mutex::new(KeyFile {
                file,
                len: at as u64,
                dirty: false,
            }),
            stats: EntityKeyStats::default(),
        };
        if dead > 1024 && dead > live {
            keys.compact().map_err(|e| io("compacting", e))?;
        }
        tracing::debug!(live, dead, "entity keys loaded");
        Ok(keys)
    }

    /// Rewrites the file with the live keys only (erased ones are zeros
    /// already, so the old file holds no key that was erased).
    fn compact(&self) -> std::io::Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (product, entities) in map.iter_mut() {
            for (entity, slot) in entities.iter_mut() {
                let record = self
                    .record(product, entity, &slot.raw)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                slot.at = (out.len() + record.len() - WRAPPED_LEN) as u64;
                out.extend_from_slice(&record);
            }
        }
        crate::atomic_file::replace(&self.path, &out, Some(0o600))?;
        let reopened = OpenOptions::new().read(true).write(true).open(&self.path)?;
        *file = KeyFile {
            file: reopened,
            len: out.len() as u64,
            dirty: false,
        };
        Ok(())
    }

    fn record(
        &self,
        product: &str,
        entity: &str,
        raw: &[u8; 32],
    ) -> Result<Vec<u8>, EntityKeyError> {
        let names = names(product, entity);
        let wrapped = self
            .data
            .seal(ENTITY_KEYS_FILE, &names, raw)
            .map_err(|e| EntityKeyError::Seal(e.0))?;
        debug_assert_eq!(wrapped.len(), WRAPPED_LEN);
        let mut body = names;
        body.extend_from_slice(&wrapped);
        let mut record = Vec::with_capacity(HEADER + body.len());
        record.extend_from_slice(&(body.len() as u32).to_be_bytes());
        record.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        record.extend_from_slice(&body);
        Ok(record)
    }

    fn get(&self, product: &str, entity: &str) -> Option<[u8; 32]> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(product)
            .and_then(|m| m.get(entity))
            .map(|slot| slot.raw)
    }

    /// Whether `entity` of `product` has a key.
    pub(crate) fn has(&self, product: &str, entity: &str) -> bool {
        self.get(product, entity).is_some()
    }

    /// Creates the keys the entities lack and makes them durable (one sync
    /// for all). Returns how many it created.
    pub(crate) fn ensure<'e>(
        &self,
        product: &str,
        entities: impl IntoIterator<Item = &'e str>,
    ) -> Result<usize, EntityKeyError> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let mut created = 0;
        for entity in entities {
            if self.has(product, entity) {
                continue;
            }
            self.append(&mut file, product, entity)?;
            created += 1;
        }
        self.sync_locked(&mut file)?;
        Ok(created)
    }

    fn append(
        &self,
        file: &mut KeyFile,
        product: &str,
        entity: &str,
    ) -> Result<[u8; 32], EntityKeyError> {
        let mut raw = [0u8; 32];
        self.data
            .random(&mut raw)
            .map_err(|e| EntityKeyError::Seal(e.0))?;
        let record = self.record(product, entity, &raw)?;
        let at = file.len + (record.len() - WRAPPED_LEN) as u64;
        (&file.file)
            .write_all(&record)
            .map_err(|e| EntityKeyError::Io {
                path: self.path.clone(),
                detail: format!("appending a key: {e}"),
            })?;
        file.len += record.len() as u64;
        file.dirty = true;
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(product.to_string())
            .or_default()
            .insert(entity.to_string(), Slot { raw, at });
        self.stats.created.fetch_add(1, Ordering::Relaxed);
        Ok(raw)
    }

    fn sync_locked(&self, file: &mut KeyFile) -> Result<(), EntityKeyError> {
        if !file.dirty {
            return Ok(());
        }
        file.file.sync_data().map_err(|e| EntityKeyError::Io {
            path: self.path.clone(),
            detail: format!("syncing: {e}"),
        })?;
        file.dirty = false;
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The entity's key, created (and synced) if it has none.
    fn key_for(&self, product: &str, entity: &str) -> Result<[u8; 32], EntityKeyError> {
        if let Some(raw) = self.get(product, entity) {
            return Ok(raw);
        }
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(raw) = self.get(product, entity) {
            return Ok(raw);
        }
        let raw = self.append(&mut file, product, entity)?;
        self.sync_locked(&mut file)?;
        Ok(raw)
    }

    /// Destroys the entity's key: zeroes its wrapped bytes in the file and
    /// syncs. Returns whether it had one. Every value sealed with it stops
    /// opening, here and in every copy.
    pub(crate) fn destroy(&self, product: &str, entity: &str) -> Result<bool, EntityKeyError> {
        let file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let slot = self
            .map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(product)
            .and_then(|m| m.remove(entity));
        let Some(mut slot) = slot else {
            return Ok(false);
        };
        slot.raw = [0; 32];
        let io = |e: std::io::Error| EntityKeyError::Io {
            path: self.path.clone(),
            detail: format!("destroying a key: {e}"),
        };
        file.file
            .write_all_at(&[0u8; WRAPPED_LEN], slot.at)
            .map_err(io)?;
        file.file.sync_data().map_err(io)?;
        self.stats.destroyed.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Seals `plain` (the value of `key` in tree `tree`) with the entity's
    /// key, creating the key if the entity has none.
    pub(crate) fn seal(
        &self,
        product: &str,
        entity: &str,
        tree: &str,
        key: &[u8],
        plain: &[u8],
    ) -> Result<Vec<u8>, CodecError> {
        let raw = self.key_for(product, entity)?;
        seal_with(&raw, product, entity, tree, key, plain)
    }

    /// `(product, entity)` of an entity-sealed value whose key is gone.
    pub(crate) fn shredded(&self, sealed: &[u8]) -> Option<(String, String)> {
        let (product, entity, _) = sealed
            .split_first()
            .filter(|(f, _)| **f == FORMAT_ENTITY_SEALED)
            .and_then(|(_, rest)| parse_names(rest))?;
        (!self.has(product, entity)).then(|| (product.to_string(), entity.to_string()))
    }

    /// Opens a value [`EntityKeys::seal`]ed under the same tree and key.
    pub(crate) fn open(
        &self,
        tree: &str,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, CodecError> {
        let (product, entity, body) = sealed
            .split_first()
            .filter(|(f, _)| **f == FORMAT_ENTITY_SEALED)
            .and_then(|(_, rest)| parse_names(rest))
            .ok_or_else(|| CodecError("malformed entity-sealed value".into()))?;
        let raw = self.get(product, entity).ok_or_else(|| {
            CodecError(format!(
                "the key of {product} entity `{entity}` was destroyed (erased); the value does not open"
            ))
        })?;
        open_with(&raw, tree, key, body)
    }
}

/// Seals with raw entity key bytes (also the bench's entry point).
pub(crate) fn seal_with(
    raw: &[u8; 32],
    product: &str,
    entity: &str,
    tree: &str,
    key: &[u8],
    plain: &[u8],
) -> Result<Vec<u8>, CodecError> {
    let sealer = Sealer::from_raw(raw)?;
    let mut out = Vec::with_capacity(1 + 4 + product.len() + entity.len() + 28 + plain.len());
    out.push(FORMAT_ENTITY_SEALED);
    out.extend_from_slice(&names(product, entity));
    sealer.seal_into(&seal::aad(tree, key), plain, &mut out)?;
    Ok(out)
}

fn open_with(raw: &[u8; 32], tree: &str, key: &[u8], body: &[u8]) -> Result<Vec<u8>, CodecError> {
    Sealer::from_raw(raw)?.open_body(&seal::aad(tree, key), body)
}

/// Micro bench (`benches/micro.rs`, `store/entity_seal_*`): one value
/// sealed and opened through the entity keys (lookup, key schedule,
/// AES-GCM), against the same with the data key's ready sealer — the
/// per-value cost of shredding.
#[doc(hidden)]
pub struct BenchSeal {
    dir: PathBuf,
    keys: EntityKeys,
    data: Arc<Sealer>,
}

impl Drop for BenchSeal {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[doc(hidden)]
impl BenchSeal {
    /// A key file of `entities` entities in a temporary directory.
    pub fn new(entities: usize) -> BenchSeal {
        let dir = std::env::temp_dir().join(format!(
            "meshlet-bench-keys-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let data = Arc::new(Sealer::from_raw(&[3u8; 32]).expect("sealer"));
        let keys = EntityKeys::load(&dir, Arc::clone(&data)).expect("keys");
        let names: Vec<String> = (0..entities).map(|i| format!("machine-{i:05}")).collect();
        keys.ensure("bench", names.iter().map(String::as_str))
            .expect("ensure");
        BenchSeal { dir, keys, data }
    }

    /// Seal and open `plain` as entity `i`'s instance with its key.
    pub fn entity_round(&self, i: usize, plain: &[u8]) -> usize {
        let entity = format!("machine-{i:05}");
        let sealed = self
            .keys
            .seal(
                "bench",
                &entity,
                "bench/instances",
                entity.as_bytes(),
                plain,
            )
            .expect("seal");
        self.keys
            .open("bench/instances", entity.as_bytes(), &sealed)
            .expect("open")
            .len()
    }

    /// The same with the data key (what every value cost before).
    pub fn data_round(&self, i: usize, plain: &[u8]) -> usize {
        let entity = format!("machine-{i:05}");
        let sealed = self
            .data
            .seal("bench/instances", entity.as_bytes(), plain)
            .expect("seal");
        self.data
            .open("bench/instances", entity.as_bytes(), &sealed)
            .expect("open")
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> Arc<Sealer> {
        Arc::new(Sealer::from_raw(&[9u8; 32]).unwrap())
    }

    #[test]
    fn keys_survive_reopen_and_erased_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let keys = EntityKeys::load(dir.path(), data()).unwrap();
        assert_eq!(keys.ensure("p", ["a", "b", "a"]).unwrap(), 2);
        let sealed = keys
            .seal("p", "a", "p/instances", b"a", b"MARKERa")
            .unwrap();
        let sealed_b = keys
            .seal("p", "b", "p/instances", b"b", b"MARKERb")
            .unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"MARKER"));
        assert_eq!(keys.open("p/instances", b"a", &sealed).unwrap(), b"MARKERa");
        assert!(
            keys.open("p/instances", b"b", &sealed).is_err(),
            "other key"
        );
        assert!(keys.destroy("p", "a").unwrap());
        assert!(!keys.destroy("p", "a").unwrap());
        assert!(keys.open("p/instances", b"a", &sealed).is_err());
        drop(keys);

        let reopened = EntityKeys::load(dir.path(), data()).unwrap();
        assert!(
            reopened.open("p/instances", b"a", &sealed).is_err(),
            "erased stays erased"
        );
        assert_eq!(
            reopened.open("p/instances", b"b", &sealed_b).unwrap(),
            b"MARKERb"
        );
        // Re-created after erasure: a new key, old values still do not open.
        let again = reopened
            .seal("p", "a", "p/instances", b"a", b"new")
            .unwrap();
        assert!(reopened.open("p/instances", b"a", &sealed).is_err());
        assert_eq!(reopened.open("p/instances", b"a", &again).unwrap(), b"new");
        drop(reopened);
        let third = EntityKeys::load(dir.path(), data()).unwrap();
        assert_eq!(third.open("p/instances", b"a", &again).unwrap(), b"new");
        // Another data key does not unwrap the keys.
        assert!(
            EntityKeys::load(dir.path(), Arc::new(Sealer::from_raw(&[8u8; 32]).unwrap())).is_err()
        );
    }

    #[test]
    fn a_torn_append_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let keys = EntityKeys::load(dir.path(), data()).unwrap();
        keys.ensure("p", ["a", "b"]).unwrap();
        let sealed = keys.seal("p", "a", "t", b"k", b"v").unwrap();
        drop(keys);
        let path = dir.path().join(ENTITY_KEYS_FILE);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 10).unwrap();
        let keys = EntityKeys::load(dir.path(), data()).unwrap();
        assert_eq!(keys.open("t", b"k", &sealed).unwrap(), b"v");
        assert!(!keys.has("p", "b"));
        assert!(std::fs::metadata(&path).unwrap().len() < len - 10);
    }

    #[test]
    fn many_erasures_compact_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let keys = EntityKeys::load(dir.path(), data()).unwrap();
        let names: Vec<String> = (0..1100).map(|i| format!("e{i}")).collect();
        keys.ensure("p", names.iter().map(String::as_str)).unwrap();
        let kept = keys.seal("p", "keep", "t", b"k", b"kept").unwrap();
        for n in &names {
            keys.destroy("p", n).unwrap();
        }
        drop(keys);
        let path = dir.path().join(ENTITY_KEYS_FILE);
        let before = std::fs::metadata(&path).unwrap().len();
        let keys = EntityKeys::load(dir.path(), data()).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() < before / 100);
        assert_eq!(keys.open("t", b"k", &kept).unwrap(), b"kept");
        assert!(
            keys.destroy("p", "keep").unwrap(),
            "offsets valid after compaction"
        );
        drop(keys);
        let keys = EntityKeys::load(dir.path(), data()).unwrap();
        assert!(!keys.has("p", "keep"));
    }
}
