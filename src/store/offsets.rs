//! Source offsets: how far each source has been consumed, written in the
//! same transaction as what was read up to there, so a restart neither
//! loses nor repeats input (a file tail resumes exactly after the last
//! line it stored).
//!
//! One global tree, [`OFFSETS_TREE`], key = the source name's bytes, value
//! = [`StoredOffset`] (the opaque position and when it was written). The
//! tree name has no `/`, so it can never collide with a product's trees.

use super::codec;
use super::stored::StoredOffset;
use super::{Store, StoreError};
use crate::record::Timestamp;

pub(crate) const OFFSETS_TREE: &str = "source_offsets";

pub(crate) fn encode_offset(
    product: &str,
    source: &str,
    position: &[u8],
    at: Timestamp,
) -> Result<Vec<u8>, StoreError> {
    codec::encode(&StoredOffset {
        position: position.to_vec(),
        at,
    })
    .map_err(|e| StoreError::encode(product, source, "source offset", e))
}

impl Store {
    /// The position last stored for `source` by [`Store::ingest`], `None`
    /// if there is none. Source names are one namespace for the whole node.
    pub fn source_offset(&self, source: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let bytes =
            self.inner.offsets.get(source.as_bytes()).map_err(|e| {
                StoreError::sled(format!("source `{source}`: reading its offset"), e)
            })?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let stored: StoredOffset = codec::decode(&bytes).map_err(|e| {
            StoreError::bookkeeping(format!("source `{source}`"), "source offset", e)
        })?;
        Ok(Some(stored.position))
    }
}
