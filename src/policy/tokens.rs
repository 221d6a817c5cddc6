//! API tokens: created by the operator (`meshlet token create`), shown
//! once, kept only as a hash in a small JSON file beside the data
//! (`<data_dir>/tokens.json`, or `security.tokens_file`).
//!
//! Why a file and not sled: the running node holds sled's lock, and
//! operators create and revoke tokens while it runs. The file is written
//! atomically (temp file, fsync, rename, mode 0600), so a reader sees the
//! old set or the new one, never half of either; the node re-reads it when
//! its modification time or size changes (checked at most once a second,
//! on authentication) and on SIGHUP.
//!
//! Two `meshlet token` commands run at the very same moment may lose one
//! of their changes (read, change, rename; no lock across processes):
//! `meshlet token list` shows what stuck.
//!
//! A token reads `mlt_<id>_<secret>`: `id` is 12 hex characters (public,
//! it names the token in lists and logs and finds its entry), `secret` 64
//! hex characters (256 random bits from ring's `SystemRandom`).
//!
//! Why SHA-256 and not a password hash (argon2, bcrypt): those slow down a
//! guesser of a *low-entropy* secret. A 256-bit random secret cannot be
//! guessed however fast the hash is, so a plain cryptographic hash keeps a
//! stolen file useless while costing nothing per request. The stored hash
//! is compared in constant time all the same, so response timing says
//! nothing about how much of a guess was right.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::record::Timestamp;

/// What every token starts with, so a leaked one is recognisable (secret
/// scanners) and a wrong kind of credential is refused at once.
pub const PREFIX: &str = "mlt_";
const ID_HEX: usize = 12;
const SECRET_HEX: usize = 64;
/// The length of a well-formed token.
pub const TOKEN_LEN: usize = PREFIX.len() + ID_HEX + 1 + SECRET_HEX;
/// How often, at most, authentication looks at the file's metadata.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(1);
const FILE_VERSION: u32 = 1;

/// One token as stored: never the secret, only its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub id: String,
    /// Who holds it: the audit's "who" for what it writes.
    pub name: String,
    pub role: String,
    pub created_at: String,
    /// SHA-256 of the whole token text, lowercase hex.
    pub sha256: String,
    /// When it was revoked; a revoked token is refused (kept so lists and
    /// failure counters can tell "revoked" from "unknown").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    version: u32,
    tokens: Vec<TokenEntry>,
}

/// Why the token file could not be read, written or changed.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read the token file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token file {} is not valid: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("cannot write the token file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot draw random bytes for a token")]
    Random,
    #[error("a token named `{0}` already exists (names must be unique; revoke it first)")]
    DuplicateName(String),
    #[error("invalid token name `{0}`: 1 to 64 letters, digits, `_`, `-`, `.` or `@`")]
    BadName(String),
    #[error("no token with id or name `{0}`")]
    NotFound(String),
}

/// Why a presented token was refused; `reason()` labels the failure
/// counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("malformed token")]
    Malformed,
    #[error("unknown token")]
    Unknown,
    #[error("revoked token")]
    Revoked,
}

impl TokenRefusal {
    pub fn reason(self) -> &'static str {
        match self {
            TokenRefusal::Malformed => "malformed",
            TokenRefusal::Unknown => "unknown",
            TokenRefusal::Revoked => "revoked",
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

fn sha256_hex(text: &str) -> String {
    hex(digest::digest(&digest::SHA256, text.as_bytes()).as_ref())
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Equality whose time depends only on the lengths (both are 64 hex
/// characters here), not on where the first difference is. ring's
/// `verify_slices_are_equal` does the same but is deprecated as internal.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The id of a well-formed token, or `None`: checks only the shape, so
/// anything else is refused before any lookup.
pub fn token_id(token: &str) -> Option<&str> {
    if token.len() != TOKEN_LEN || !token.is_ascii() {
        return None;
    }
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_at(ID_HEX);
    let secret = secret.strip_prefix('_')?;
    (is_lower_hex(id) && is_lower_hex(secret) && secret.len() == SECRET_HEX).then_some(id)
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'))
}

/// A token just created: the only moment its text exists outside the
/// holder's hands.
#[derive(Debug)]
pub struct NewToken {
    pub token: String,
    pub entry: TokenEntry,
}

/// The token file at `path`, read and changed by the CLI.
pub struct TokenFileStore {
    path: PathBuf,
}

impl TokenFileStore {
    pub fn new(path: impl Into<PathBuf>) -> TokenFileStore {
        TokenFileStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every entry, revoked ones included; no file means no tokens.
    pub fn list(&self) -> Result<Vec<TokenEntry>, TokenFileError> {
        Ok(read_file(&self.path)?.tokens)
    }

    /// Creates a token for `role`, named `name` (default: its id).
    pub fn create(&self, role: &str, name: Option<&str>) -> Result<NewToken, TokenFileError> {
        let rng = SystemRandom::new();
        let mut id = [0u8; ID_HEX / 2];
        let mut secret = [0u8; SECRET_HEX / 2];
        rng.fill(&mut id).map_err(|_| TokenFileError::Random)?;
        rng.fill(&mut secret).map_err(|_| TokenFileError::Random)?;
        let id = hex(&id);
        let token = format!("{PREFIX}{id}_{}", hex(&secret));
        let name = name.map_or_else(|| format!("token-{id}"), str::to_string);
        if !valid_name(&name) {
            return Err(TokenFileError::BadName(name));
        }
        let mut file = read_file(&self.path)?;
        if file
            .tokens
            .iter()
            .any(|t| t.name == name && t.revoked_at.is_none())
        {
            return Err(TokenFileError::DuplicateName(name));
        }
        let entry = TokenEntry {
            id,
            name,
            role: role.to_string(),
            created_at: Timestamp::now().to_string(),
            sha256: sha256_hex(&token),
            revoked_at: None,
        };
        file.tokens.push(entry.clone());
        write_file(&self.path, &file)?;
        Ok(NewToken { token, entry })
    }

    /// Revokes the token with this id, or the live token with this name.
    pub fn revoke(&self, id_or_name: &str) -> Result<TokenEntry, TokenFileError> {
        let mut file = read_file(&self.path)?;
        let entry = file
            .tokens
            .iter_mut()
            .find(|t| t.revoked_at.is_none() && (t.id == id_or_name || t.name == id_or_name))
            .ok_or_else(|| TokenFileError::NotFound(id_or_name.to_string()))?;
        entry.revoked_at = Some(Timestamp::now().to_string());
        let revoked = entry.clone();
        write_file(&self.path, &file)?;
        Ok(revoked)
    }
}

fn read_file(path: &Path) -> Result<TokenFile, TokenFileError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok(TokenFile {
                version: FILE_VERSION,
                tokens: Vec::new(),
            })
        }
        Err(source) => {
            return Err(TokenFileError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let file: TokenFile = serde_json::from_str(&text).map_err(|e| TokenFileError::Invalid {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if file.version != FILE_VERSION {
        return Err(TokenFileError::Invalid {
            path: path.to_path_buf(),
            message: format!(
                "version {} (this build reads version {FILE_VERSION})",
                file.version
            ),
        });
    }
    Ok(file)
}

/// Through the one atomic-write helper (temp file, fsync, rename, fsync
/// of the directory), owner-only: a crash leaves the old file or the new
/// one.
fn write_file(path: &Path, file: &TokenFile) -> Result<(), TokenFileError> {
    let err = |source| TokenFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let text = serde_json::to_vec_pretty(file).map_err(|e| err(std::io::Error::other(e)))?;
    crate::atomic_file::replace(path, &text, Some(0o600)).map_err(err)
}

/// What authentication learns from a valid token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenHolder {
    pub id: String,
    pub name: String,
    pub role: String,
}

#[derive(Default)]
struct Loaded {
    /// id → entry.
    tokens: BTreeMap<String, TokenEntry>,
    stamp: Option<(SystemTime, u64)>,
    checked: Option<Instant>,
}

/// The node's view of the token file: verifies presented tokens, and
/// re-reads the file when it changes.
pub struct TokenVerifier {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl TokenVerifier {
    /// Reads the file now; an unreadable or invalid file is an error (the
    /// node refuses to start rather than run with no tokens).
    pub fn open(path: impl Into<PathBuf>) -> Result<TokenVerifier, TokenFileError> {
        let verifier = TokenVerifier {
            path: path.into(),
            loaded: Mutex::new(Loaded::default()),
        };
        let mut loaded = verifier.lock();
        verifier.reload_locked(&mut loaded)?;
        drop(loaded);
        Ok(verifier)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stamp(&self) -> Option<(SystemTime, u64)> {
        let meta = fs::metadata(&self.path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    }

    fn reload_locked(&self, loaded: &mut Loaded) -> Result<(), TokenFileError> {
        let stamp = self.stamp();
        loaded.checked = Some(Instant::now());
        // Fail closed: a file that cannot be read leaves no token valid.
        loaded.tokens.clear();
        loaded.stamp = stamp;
        let file = read_file(&self.path)?;
        loaded.tokens = file.tokens.into_iter().map(|t| (t.id.clone(), t)).collect();
        Ok(())
    }

    /// Re-reads the file now (SIGHUP).
    pub fn reload(&self) -> Result<(), TokenFileError> {
        let mut loaded = self.lock();
        self.reload_locked(&mut loaded)
    }

    /// Re-reads the file if its mtime or size changed, at most once per
    /// [`RECHECK_INTERVAL`].
    fn refresh(&self, loaded: &mut Loaded) {
        if loaded
            .checked
            .is_some_and(|at| at.elapsed() < RECHECK_INTERVAL)
        {
            return;
        }
        loaded.checked = Some(Instant::now());
        if self.stamp() == loaded.stamp {
            return;
        }
        match self.reload_locked(loaded) {
            Ok(()) => {
                tracing::info!(path = %self.path.display(), tokens = loaded.tokens.len(), "token file re-read")
            }
            Err(err) => {
                tracing::error!(error = %err, "token file unreadable: every token is refused until it is fixed")
            }
        }
    }

    /// The holder of `token`, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<TokenHolder, TokenRefusal> {
        let id = token_id(token).ok_or(TokenRefusal::Malformed)?;
        let hash = sha256_hex(token);
        let mut loaded = self.lock();
        self.refresh(&mut loaded);
        if !loaded.tokens.contains_key(id) && self.stamp() != loaded.stamp {
            // A token created a moment ago works at once: an id not known
            // yet costs one stat(2), and a re-read only when the file
            // really changed.
            loaded.checked = None;
            self.refresh(&mut loaded);
        }
        let entry = loaded.tokens.get(id).ok_or(TokenRefusal::Unknown)?;
        if !constant_time_eq(hash.as_bytes(), entry.sha256.as_bytes()) {
            return Err(TokenRefusal::Unknown);
        }
        if entry.revoked_at.is_some() {
            return Err(TokenRefusal::Revoked);
        }
        Ok(TokenHolder {
            id: entry.id.clone(),
            name: entry.name.clone(),
            role: entry.role.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_verify_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let store = TokenFileStore::new(&path);
        let created = store.create("operator", Some("alice")).unwrap();
        assert_eq!(created.token.len(), TOKEN_LEN);
        assert_eq!(token_id(&created.token), Some(created.entry.id.as_str()));
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&created.token[PREFIX.len() + ID_HEX + 1..]));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let verifier = TokenVerifier::open(&path).unwrap();
        let holder = verifier.verify(&created.token).unwrap();
        assert_eq!(
            (holder.name.as_str(), holder.role.as_str()),
            ("alice", "operator")
        );
        // Same id, another secret.
        let mut forged = created.token.clone();
        forged.replace_range(TOKEN_LEN - 4.., "0000");
        if forged != created.token {
            assert_eq!(verifier.verify(&forged), Err(TokenRefusal::Unknown));
        }
        assert!(matches!(
            store.create("operator", Some("alice")),
            Err(TokenFileError::DuplicateName(_))
        ));
        store.revoke("alice").unwrap();
        verifier.reload().unwrap();
        assert_eq!(verifier.verify(&created.token), Err(TokenRefusal::Revoked));
        assert!(matches!(
            store.revoke("alice"),
            Err(TokenFileError::NotFound(_))
        ));
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn malformed_tokens_are_refused_by_shape() {
        let dir = tempfile::tempdir().unwrap();
        let verifier = TokenVerifier::open(dir.path().join("none.json")).unwrap();
        let good_shape = format!("{PREFIX}{}_{}", "a".repeat(ID_HEX), "b".repeat(SECRET_HEX));
        assert_eq!(verifier.verify(&good_shape), Err(TokenRefusal::Unknown));
        for bad in [
            "",
            "mlt_",
            "xyz_aaaaaaaaaaaa_bbbb",
            &good_shape[..TOKEN_LEN - 1],
            &format!("{good_shape}0"),
            &good_shape.replace("mlt_", "mlx_"),
            &good_shape.to_uppercase(),
            &format!(
                "{PREFIX}{}_{}é",
                "a".repeat(ID_HEX),
                "b".repeat(SECRET_HEX - 2)
            ),
        ] {
            assert_eq!(verifier.verify(bad), Err(TokenRefusal::Malformed), "{bad}");
        }
    }

    #[test]
    fn an_invalid_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        fs::write(&path, "{not json").unwrap();
        assert!(matches!(
            TokenVerifier::open(&path),
            Err(TokenFileError::Invalid { .. })
        ));
        assert!(matches!(
            TokenFileStore::new(&path).create("x", None),
            Err(TokenFileError::Invalid { .. })
        ));
    }
}
