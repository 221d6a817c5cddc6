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
fn aad(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(8 + tree.len() + key.len());
    aad.extend_from_slice(&(tree.len() as u32).to_be_bytes());
    aad.extend_from_slice(tree.as_bytes());
    aad.extend_from_slice(key);
    aad
}

impl Sealer {
    pub(crate) fn new(key: &EncryptionKey) -> Result<Sealer, CodecError> {
        let unbound = UnboundKey::new(&AES_256_GCM, key.0.as_slice())
            .map_err(|_| CodecError("AES-256-GCM refused the key".into()))?;
        Ok(Sealer {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
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
    #[error("cannot read or write {}: {detail}", path.display())]
    Io { path: PathBuf, detail: String },
    #[error("the store key: {0}")]
    Key(String),
}

/// Decides the sealing mode of the store at `store_path` before the
/// database is opened. Writes only for a new, encrypted store (the canary).
pub(crate) fn check_key(store_path: &Path, key: Option<&EncryptionKey>) -> Result<Seal, KeyCheck> {
    let canary_path = store_path.join(CANARY_FILE);
    let io = |source: std::io::Error| KeyCheck::Io {
        path: canary_path.clone(),
        detail: source.to_string(),
    };
    let canary = match std::fs::read(&canary_path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    let path = store_path.to_path_buf();
    match (canary, key) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(KeyCheck::Missing { path }),
        (Some(canary), Some(key)) => {
            let sealer = Sealer::new(key).map_err(|e| KeyCheck::Key(e.0))?;
            match sealer.open(CANARY_FILE, &[], &canary) {
                Ok(plain) if plain == CANARY_PLAINTEXT => Ok(Some(Arc::new(sealer))),
                _ => Err(KeyCheck::Wrong { path }),
            }
        }
        (None, Some(key)) => {
            let has_data = std::fs::read_dir(store_path)
                .map(|mut entries| entries.next().is_some())
                .unwrap_or(false);
            if has_data {
                return Err(KeyCheck::Unencrypted { path });
            }
            let sealer = Sealer::new(key).map_err(|e| KeyCheck::Key(e.0))?;
            let canary = sealer
                .seal(CANARY_FILE, &[], CANARY_PLAINTEXT)
                .map_err(|e| KeyCheck::Key(e.0))?;
            std::fs::create_dir_all(store_path).map_err(io)?;
            crate::atomic_file::replace(&canary_path, &canary, None).map_err(io)?;
            Ok(Some(Arc::new(sealer)))
        }
    }
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
}
