//! The store's error type.
//!
//! Every variant that concerns one entity names its product and entity, so
//! an operator reading a log line or an API error knows exactly which
//! instance is affected without a debugger.

use std::path::PathBuf;

/// Everything that can go wrong in the store.
///
/// `Clone` so that a [`Page`](super::Page) can carry per-entity errors and a
/// failed group flush can be reported to every caller that waited on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The configured encryption key and the store do not go together
    /// (wrong key, missing key, key for an unencrypted store). Found before
    /// the database is opened: nothing was read or written.
    #[error(transparent)]
    Encryption(#[from] super::KeyCheck),

    /// Bytes on disk could not be decoded. Only the named entity is
    /// affected; the store keeps serving every other entity.
    #[error("product `{product}`, entity `{entity}`: corrupt {what}: {detail}")]
    Corrupt {
        product: String,
        entity: String,
        /// What was being decoded: `instance`, `history event`,
        /// `history chunk`, `audit line`, `tombstone`.
        what: &'static str,
        detail: String,
    },

    /// A quarantine entry could not be decoded. Only that entry is lost:
    /// resolving its id (`IngestBatch::resolve_quarantine`) removes it
    /// without decoding it.
    #[error("product `{product}`: corrupt quarantine entry {id}: {detail}")]
    CorruptQuarantine {
        product: String,
        id: u64,
        detail: String,
    },

    /// Ingest bookkeeping could not be decoded: a dedupe window or
    /// quarantine state record (`owner` names the product) or a source
    /// offset (`owner` names the source). Writes that need it are refused
    /// rather than guessing.
    #[error("{owner}: corrupt {what}: {detail}")]
    CorruptBookkeeping {
        owner: String,
        /// `dedupe window`, `dedupe entry`, `quarantine state`, `source offset`.
        what: &'static str,
        detail: String,
    },

    /// The entity key is longer than `StoreConfig::max_entity_key_bytes`.
    #[error("product `{product}`, entity `{entity_prefix}…`: entity key is {len} bytes, the limit is {max}")]
    KeyTooLong {
        product: String,
        /// The first 64 bytes (at a char boundary) of the offending key.
        entity_prefix: String,
        len: usize,
        max: usize,
    },

    /// An empty entity key: every instance needs a key.
    #[error("product `{product}`: empty entity key")]
    EmptyEntityKey { product: String },

    /// A product name outside `[a-z][a-z0-9_]*`.
    #[error("`{product}` is not a valid product name (expected [a-z][a-z0-9_]*)")]
    InvalidProductName { product: String },

    /// A value could not be encoded (should not happen for well-formed
    /// records; reported rather than panicking).
    #[error("product `{product}`, entity `{entity}`: cannot encode {what}: {detail}")]
    Encode {
        product: String,
        entity: String,
        what: &'static str,
        detail: String,
    },

    /// The database was written by a newer meshlet whose format this
    /// binary does not know.
    #[error("store at {path}: format version {found} is newer than this meshlet supports ({supported}); upgrade meshlet or point it at another directory")]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    /// The store's own metadata is unreadable.
    #[error("store at {path}: unreadable metadata: {detail}")]
    Meta { path: PathBuf, detail: String },

    /// A history dictionary could not be trained (too few or unsuitable
    /// samples for zstd, or no thread to train on). Chunks are written
    /// without a dictionary meanwhile.
    #[error("product `{product}`: history dictionary: {detail}")]
    Dictionary { product: String, detail: String },

    /// A `StoreConfig` value that cannot work.
    #[error("store config: {0}")]
    InvalidConfig(String),

    /// sled reported an error; `context` says what was being done, with
    /// product and entity where there is one.
    #[error("store: {context}: {source}")]
    Sled {
        context: String,
        #[source]
        source: sled::Error,
    },

    /// The journal (`journal.rs`) could not be written, synced or read.
    #[error("store journal at {}: {detail}", path.display())]
    Journal { path: PathBuf, detail: String },

    /// A group flush failed: writes since the last successful flush may
    /// not be durable.
    #[error("store: flush to disk failed: {detail}")]
    Flush { detail: String },
}

impl StoreError {
    /// Wraps a sled error with what was being done.
    pub(crate) fn sled(context: impl Into<String>, source: sled::Error) -> StoreError {
        StoreError::Sled {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        product: &str,
        entity: &str,
        what: &'static str,
        detail: impl ToString,
    ) -> StoreError {
        StoreError::Corrupt {
            product: product.to_string(),
            entity: entity.to_string(),
            what,
            detail: detail.to_string(),
        }
    }

    pub(crate) fn encode(
        product: &str,
        entity: &str,
        what: &'static str,
        detail: impl ToString,
    ) -> StoreError {
        StoreError::Encode {
            product: product.to_string(),
            entity: entity.to_string(),
            what,
            detail: detail.to_string(),
        }
    }

    pub(crate) fn bookkeeping(
        owner: String,
        what: &'static str,
        detail: impl ToString,
    ) -> StoreError {
        StoreError::CorruptBookkeeping {
            owner,
            what,
            detail: detail.to_string(),
        }
    }

    /// Whether this is a decode failure of stored bytes.
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt { .. }
                | StoreError::CorruptQuarantine { .. }
                | StoreError::CorruptBookkeeping { .. }
        )
    }
}
