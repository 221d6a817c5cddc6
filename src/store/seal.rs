//! Encryption at rest: values sealed with AES-256-GCM after compression.
//!
//! With a key configured, every value that holds data — instances, history
//! events and chunks, audit lines, tombstones, quarantine entries, the mask
//! secret — is stored as `[FORMAT_SEALED] ++ nonce (12) ++ ciphertext ++
//! tag (16)`, the plaintext being the value the codec wrote (already zstd
//! compressed where the codec compresses). The nonce is random per value;
//! the associated data is the tree name and the value's key, so a value
//! copied under another key or into another tree does not open.
//!
//! Not sealed, because they hold no data: the dedupe window (unkeyed
//! digests and sequence numbers), quarantine and dedupe counters, source
//! offsets (file positions), MQTT session filters, and the store format
//! record. Keys are never sealed (they order the trees); entity keys are
//! therefore visible on disk.
//!
//! Whether a store is encrypted is recorded in a canary file next to the
//! database (`<store>/encryption.canary`, a sealed constant), checked
//! before the database is opened, so a wrong or missing key stops the node
//! without touching the data.
//!
//! # Key hierarchy (issue 30 point 2)
//!
//! The configured key is the *store key*. It seals one thing: the store's
//! *data key*, kept wrapped in `<store>/encryption.datakey` (see
//! [`check_key`]). The data key seals everything that is not one entity's
//! values (the canary, the mask secret, dictionaries, journal frames as a
//! whole, audit lines, tombstones) and wraps the *entity keys*
//! (`keys_entity.rs`), which seal each entity's values. So:
//!
//! - `meshlet key rotate` re-wraps the data key under a new store key and
//!   rewrites nothing else ([`rotate`]). Whoever holds the old store key
//!   *and* a copy of the old `encryption.datakey` still reads the data: a
//!   rotation retires a key for what is written from now on, it does not
//!   re-encrypt what a stolen backup already holds.
//! - A store written before the data key existed (values sealed with the
//!   store key directly) gets `encryption.datakey` on its first open: its
//!   data key *is* its store key, so every old value still opens, and a
//!   rotation afterwards works the same way.
//! - The canary of a new store is sealed with the data key, so a build
//!   that predates the data key refuses the store ("wrong key") instead of
//!   writing values under the store key that this build would not read.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use super::codec::CodecError;

/// Format byte of a sealed value (see `codec.rs` for the others).
pub(crate) const FORMAT_SEALED: u8 = 4;

/// The canary's file name inside the store directory.
pub(crate) const CANARY_FILE: &str = "encryption.canary";
const CANARY_PLAINTEXT: &[u8] = b"meshlet store encryption canary v1";
/// The data key, sealed by the store key, inside the store directory.
pub(crate) const DATA_KEY_FILE: &str = "encryption.datakey";

/// A 256-bit store key. Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptionKey(Arc<[u8; 32]>);

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(..)")
    }
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the store key file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the store key file {} holds no 256-bit key: expected 32 raw bytes, 64 hex digits or base64 of 32 bytes (`meshlet key generate` writes one)", path.display())]
    Format { path: PathBuf },
    #[error("no system randomness for a new key: {0}")]
    Random(String),
}

impl EncryptionKey {
    /// Reads a key file: 32 raw bytes, or 64 hex digits, or standard base64
    /// of 32 bytes (surrounding whitespace ignored for the text forms).
    pub fn from_file(path: &Path) -> Result<EncryptionKey, KeyFileError> {
        let bytes = std::fs::read(path).map_err(|source| KeyFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        EncryptionKey::parse(&bytes).ok_or_else(|| KeyFileError::Format {
            path: path.to_path_buf(),
        })
    }

    fn parse(bytes: &[u8]) -> Option<EncryptionKey> {
        if let Ok(raw) = <[u8; 32]>::try_from(bytes) {
            return Some(EncryptionKey(Arc::new(raw)));
        }
        let text = std::str::from_utf8(bytes).ok()?.trim();
        let decoded = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
                .collect::<Option<Vec<u8>>>()?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()?
        };
        let raw = <[u8; 32]>::try_from(decoded.as_slice()).ok()?;
        Some(EncryptionKey(Arc::new(raw)))
    }

    /// A fresh random key.
    pub fn generate() -> Result<EncryptionKey, KeyFileError> {
        let mut raw = [0u8; 32];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|e| KeyFileError::Random(e.to_string()))?;
        Ok(EncryptionKey(Arc::new(raw)))
    }

    /// Lowercase hex, the form `meshlet key generate` writes.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Seals and opens values with one key.
pub(crate) struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer(..)")
    }
}

/// The store's sealing mode: `None` for a plain store.
pub(crate) type Seal = Option<Arc<Sealer>>;

/// Associated data: tree name and key, length-prefixed so no two
/// (tree, key) pairs give the same bytes.
pub(crate) fn aad(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(8 + tree.len() + key.len());
    aad.extend_from_slice(&(tree.len() as u32).to_be_bytes());
    aad.extend_from_slice(tree.as_bytes());
    aad.extend_from_slice(key);
    aad
}

impl Sealer {
    pub(crate) fn new(key: &EncryptionKey) -> Result<Sealer, CodecError> {
        Sealer::from_raw(key.0.as_slice())
    }

    /// A sealer over raw key bytes (an entity key, `keys_entity.rs`).
    pub(crate) fn from_raw(raw: &[u8]) -> Result<Sealer, CodecError> {
        let unbound = UnboundKey::new(&AES_256_GCM, raw)
            .map_err(|_| CodecError("AES-256-GCM refused the key".into()))?;
        Ok(Sealer {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    /// Fresh random bytes (nonces, new keys).
    pub(crate) fn random(&self, out: &mut [u8]) -> Result<(), CodecError> {
        self.rng
            .fill(out)
            .map_err(|_| CodecError("no system randomness".into()))
    }

    /// Seals `plain` and appends `nonce ++ ciphertext ++ tag` to `out`
    /// (no format byte): the body of an entity-sealed value.
    pub(crate) fn seal_into(
        &self,
        aad_bytes: &[u8],
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random(&mut nonce)?;
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plain);
        let mut body = out.split_off(start);
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad_bytes),
                &mut body,
            )
            .map_err(|_| CodecError("sealing failed".into()))?;
        out.extend_from_slice(&body);
        Ok(())
    }

    /// Opens what [`Sealer::seal_into`] appended.
    pub(crate) fn open_body(&self, aad_bytes: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CodecError> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(CodecError("sealed value too short".into()));
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| CodecError("bad nonce".into()))?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad_bytes), &mut body)
            .map_err(|_| {
                CodecError("sealed value does not open (wrong key, or moved or altered)".into())
            })?;
        let len = plain.len();
        body.truncate(len);
        Ok(body)
    }

    pub(crate) fn seal(&self, tree: &str, key: &[u8], plain: &[u8]) -> Result<Vec<u8>, CodecError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| CodecError("no system randomness for a nonce".into()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plain.len() + 16);
        out.push(FORMAT_SEALED);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(tree, key)),
                &mut body,
            )
            .map_err(|_| CodecError("sealing failed".into()))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    pub(crate) fn open(
        &self,
        tree: &str,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, CodecError> {
        let rest = match sealed.split_first() {
            Some((&FORMAT_SEALED, rest)) if rest.len() >= NONCE_LEN + 16 => rest,
            Some((&FORMAT_SEALED, _)) => return Err(CodecError("sealed value too short".into())),
            _ => {
                return Err(CodecError(
                    "value is not sealed in an encrypted store".into(),
                ))
            }
        };
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| CodecError("bad nonce".into()))?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(tree, key)), &mut body)
            .map_err(|_| {
                CodecError("sealed value does not open (wrong key, or moved or altered)".into())
            })?;
        Ok(plain.to_vec())
    }
}

/// Seals `plain` as the value of `key` in `tree`, or passes it through
/// for a plain store.
pub(crate) fn seal(
    seal: &Seal,
    tree: &str,
    key: &[u8],
    plain: Vec<u8>,
) -> Result<Vec<u8>, CodecError> {
    match seal {
        Some(sealer) => sealer.seal(tree, key, &plain),
        None => Ok(plain),
    }
}

/// Opens a value [`seal`]ed as the value of `key` in `tree`.
pub(crate) fn open<'a>(
    seal: &Seal,
    tree: &str,
    key: &[u8],
    bytes: &'a [u8],
) -> Result<Cow<'a, [u8]>, CodecError> {
    match seal {
        Some(sealer) => sealer.open(tree, key, bytes).map(Cow::Owned),
        None => Ok(Cow::Borrowed(bytes)),
    }
}

/// Why the store and the configured key do not go together.
#[derive(Clone, Debug, thiserror::Error)]
pub enum KeyCheck {
    #[error("the store in {} is encrypted but no key is configured: set store.encryption_key_file", path.display())]
    Missing { path: PathBuf },
    #[error("the configured key does not open the store in {} (wrong key file?); nothing was read or written", path.display())]
    Wrong { path: PathBuf },
    #[error("the store in {} holds unencrypted data and a key is configured: encryption cannot be switched on for existing data; start with an empty data directory (or leave the key out)", path.display())]
    Unencrypted { path: PathBuf },
    #[error("the store in {} is not encrypted: there is no key to rotate", path.display())]
    NotEncrypted { path: PathBuf },
    #[error("cannot read or write {}: {detail}", path.display())]
    Io { path: PathBuf, detail: String },
    #[error("the store key: {0}")]
    Key(String),
}

/// Decides the sealing mode of the store at `store_path` before the
/// database is opened: the sealer of the store's data key (see the module
/// docs). Writes only for a new encrypted store (data key and canary) and
/// for an encrypted store without a data key file yet (that file).
pub(crate) fn check_key(store_path: &Path, key: Option<&EncryptionKey>) -> Result<Seal, KeyCheck> {
    let canary_path = store_path.join(CANARY_FILE);
    let data_key_path = store_path.join(DATA_KEY_FILE);
    let canary = read_optional(&canary_path)?;
    let path = store_path.to_path_buf();
    match (canary, key) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(KeyCheck::Missing { path }),
        (Some(canary), Some(key)) => {
            let store_sealer = Sealer::new(key).map_err(|e| KeyCheck::Key(e.0))?;
            let data_sealer = match read_optional(&data_key_path)? {
                Some(wrapped) => {
                    let raw = store_sealer
                        .open(DATA_KEY_FILE, &[], &wrapped)
                        .map_err(|_| KeyCheck::Wrong { path: path.clone() })?;
                    Sealer::from_raw(&raw).map_err(|e| KeyCheck::Key(e.0))?
                }
                None => {
                    // A store from before the data key: its data key is
                    // its store key (checked by the canary below).
                    let plain = store_sealer.open(CANARY_FILE, &[], &canary);
                    if plain.as_deref().ok() != Some(CANARY_PLAINTEXT) {
                        return Err(KeyCheck::Wrong { path });
                    }
                    write_data_key(&store_sealer, &data_key_path, key.0.as_slice())?;
                    tracing::info!(path = %store_path.display(), "encrypted store given a data key file (its data key is its store key)");
                    store_sealer
                }
            };
            match data_sealer.open(CANARY_FILE, &[], &canary) {
                Ok(plain) if plain == CANARY_PLAINTEXT => Ok(Some(Arc::new(data_sealer))),
                _ => Err(KeyCheck::Wrong { path }),
            }
        }
        (None, Some(key)) => {
            let has_data = std::fs::read_dir(store_path)
                .map(|entries| {
                    entries
                        .flatten()
                        .any(|e| e.file_name() != std::ffi::OsStr::new(DATA_KEY_FILE))
                })
                .unwrap_or(false);
            if has_data {
                return Err(KeyCheck::Unencrypted { path });
            }
            let store_sealer = Sealer::new(key).map_err(|e| KeyCheck::Key(e.0))?;
            let mut raw = [0u8; 32];
            store_sealer
                .random(&mut raw)
                .map_err(|e| KeyCheck::Key(e.0))?;
            let data_sealer = Sealer::from_raw(&raw).map_err(|e| KeyCheck::Key(e.0))?;
            let canary = data_sealer
                .seal(CANARY_FILE, &[], CANARY_PLAINTEXT)
                .map_err(|e| KeyCheck::Key(e.0))?;
            std::fs::create_dir_all(store_path).map_err(|e| io_error(&canary_path, e))?;
            // The data key first: the canary is what makes the directory
            // an encrypted store, and a data key file alone is no data.
            write_data_key(&store_sealer, &data_key_path, &raw)?;
            crate::atomic_file::replace(&canary_path, &canary, None)
                .map_err(|e| io_error(&canary_path, e))?;
            Ok(Some(Arc::new(data_sealer)))
        }
    }
}

fn io_error(path: &Path, e: std::io::Error) -> KeyCheck {
    KeyCheck::Io {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, KeyCheck> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path, e)),
    }
}

fn write_data_key(store_sealer: &Sealer, path: &Path, raw: &[u8]) -> Result<(), KeyCheck> {
    let wrapped = store_sealer
        .seal(DATA_KEY_FILE, &[], raw)
        .map_err(|e| KeyCheck::Key(e.0))?;
    crate::atomic_file::replace(path, &wrapped, Some(0o600)).map_err(|e| io_error(path, e))
}

/// `meshlet key rotate`: re-wraps the data key of the encrypted store at
/// `store_path` under `new` (checked with `old` first, which must open it
/// and the canary). Rewrites `encryption.datakey` atomically and nothing
/// else, so it is safe while a node runs on the store (the node read the
/// data key when it opened); the node needs `new` from its next start.
pub fn rotate(store_path: &Path, old: &EncryptionKey, new: &EncryptionKey) -> Result<(), KeyCheck> {
    if read_optional(&store_path.join(CANARY_FILE))?.is_none() {
        return Err(KeyCheck::NotEncrypted {
            path: store_path.to_path_buf(),
        });
    }
    // Opens (and migrates a store without a data key file) with the old key.
    let _ = check_key(store_path, Some(old))?;
    let data_key_path = store_path.join(DATA_KEY_FILE);
    let wrapped = read_optional(&data_key_path)?.ok_or_else(|| KeyCheck::Io {
        path: data_key_path.clone(),
        detail: "missing after the check".into(),
    })?;
    let raw = Sealer::new(old)
        .and_then(|s| s.open(DATA_KEY_FILE, &[], &wrapped))
        .map_err(|_| KeyCheck::Wrong {
            path: store_path.to_path_buf(),
        })?;
    let new_sealer = Sealer::new(new).map_err(|e| KeyCheck::Key(e.0))?;
    write_data_key(&new_sealer, &data_key_path, &raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> EncryptionKey {
        EncryptionKey(Arc::new([byte; 32]))
    }

    #[test]
    fn key_files_take_raw_hex_and_base64() {
        let k = key(0xab);
        assert_eq!(EncryptionKey::parse(&[0xab; 32]), Some(k.clone()));
        assert_eq!(
            EncryptionKey::parse(format!("{}\n", k.to_hex()).as_bytes()),
            Some(k.clone())
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode([0xab; 32]);
        assert_eq!(EncryptionKey::parse(b64.as_bytes()), Some(k));
        assert_eq!(EncryptionKey::parse(b"short"), None);
        assert_eq!(EncryptionKey::parse(&[1; 31]), None);
        assert!(!format!("{:?}", key(7)).contains('7'));
    }

    #[test]
    fn values_open_only_under_their_tree_key_and_store_key() {
        let sealer = Sealer::new(&key(1)).unwrap();
        let sealed = sealer.seal("p/instances", b"e1", b"secret value").unwrap();
        assert_eq!(sealed[0], FORMAT_SEALED);
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            sealer.open("p/instances", b"e1", &sealed).unwrap(),
            b"secret value"
        );
        assert!(
            sealer.open("p/instances", b"e2", &sealed).is_err(),
            "other key"
        );
        assert!(
            sealer.open("p/history", b"e1", &sealed).is_err(),
            "other tree"
        );
        let other = Sealer::new(&key(2)).unwrap();
        assert!(
            other.open("p/instances", b"e1", &sealed).is_err(),
            "other store key"
        );
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(
            sealer.open("p/instances", b"e1", &flipped).is_err(),
            "altered"
        );
        assert!(
            sealer.open("p/instances", b"e1", &[1, 2, 3]).is_err(),
            "unsealed"
        );
        assert_ne!(
            sealed,
            sealer.seal("p/instances", b"e1", b"secret value").unwrap(),
            "fresh nonce"
        );
    }

    proptest::proptest! {
        #[test]
        fn opening_garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128)) {
            let sealer = Sealer::new(&key(3)).unwrap();
            proptest::prop_assert!(sealer.open("t", b"k", &bytes).is_err());
            let _ = EncryptionKey::parse(&bytes);
        }
    }

    #[test]
    fn the_canary_decides_and_refuses_mismatches() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        assert!(check_key(&plain, None).unwrap().is_none());
        std::fs::create_dir_all(&plain).unwrap();
        std::fs::write(plain.join("db"), b"x").unwrap();
        assert!(matches!(
            check_key(&plain, Some(&key(1))),
            Err(KeyCheck::Unencrypted { .. })
        ));

        let sealed = dir.path().join("sealed");
        assert!(check_key(&sealed, Some(&key(1))).unwrap().is_some());
        assert!(
            check_key(&sealed, Some(&key(1))).unwrap().is_some(),
            "reopens"
        );
        assert!(matches!(
            check_key(&sealed, Some(&key(2))),
            Err(KeyCheck::Wrong { .. })
        ));
        assert!(matches!(
            check_key(&sealed, None),
            Err(KeyCheck::Missing { .. })
        ));
    }

    #[test]
    fn a_store_without_a_data_key_gets_one_and_rotation_rewraps_only_it() {
        let dir = tempfile::tempdir().unwrap();
        // The older layout: canary and values sealed with the store key.
        let legacy = dir.path().join("legacy");
        std::fs::create_dir_all(&legacy).unwrap();
        let old = Sealer::new(&key(1)).unwrap();
        std::fs::write(
            legacy.join(CANARY_FILE),
            old.seal(CANARY_FILE, &[], CANARY_PLAINTEXT).unwrap(),
        )
        .unwrap();
        let value = old.seal("p/instances", b"e", b"old value").unwrap();
        assert!(matches!(
            check_key(&legacy, Some(&key(2))),
            Err(KeyCheck::Wrong { .. })
        ));
        assert!(
            !legacy.join(DATA_KEY_FILE).exists(),
            "a wrong key writes nothing"
        );
        let data = check_key(&legacy, Some(&key(1))).unwrap().unwrap();
        assert!(legacy.join(DATA_KEY_FILE).exists());
        assert_eq!(
            data.open("p/instances", b"e", &value).unwrap(),
            b"old value"
        );

        rotate(&legacy, &key(1), &key(2)).unwrap();
        assert!(matches!(
            check_key(&legacy, Some(&key(1))),
            Err(KeyCheck::Wrong { .. })
        ));
        let data = check_key(&legacy, Some(&key(2))).unwrap().unwrap();
        assert_eq!(
            data.open("p/instances", b"e", &value).unwrap(),
            b"old value"
        );
        assert!(matches!(
            rotate(&legacy, &key(1), &key(3)),
            Err(KeyCheck::Wrong { .. })
        ));

        // A new store's data key is not its store key.
        let fresh = dir.path().join("fresh");
        let data = check_key(&fresh, Some(&key(1))).unwrap().unwrap();
        let sealed = data.seal("t", b"k", b"v").unwrap();
        assert!(Sealer::new(&key(1))
            .unwrap()
            .open("t", b"k", &sealed)
            .is_err());
        rotate(&fresh, &key(1), &key(4)).unwrap();
        let data = check_key(&fresh, Some(&key(4))).unwrap().unwrap();
        assert_eq!(data.open("t", b"k", &sealed).unwrap(), b"v");

        let plain = dir.path().join("plain");
        std::fs::create_dir_all(&plain).unwrap();
        assert!(matches!(
            rotate(&plain, &key(1), &key(2)),
            Err(KeyCheck::NotEncrypted { .. })
        ));
    }
}
