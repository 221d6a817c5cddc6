//! The store's settings: one type, [`StoreConfig`], defined with its
//! defaults in the config module (`src/config/store.rs`: the `[store]`
//! section parses straight into it). Here: what only the store does with
//! it.

pub use crate::config::{DictionaryConfig, StoreConfig};

use super::StoreError;

impl StoreConfig {
    /// Events per block as the write path uses it: never more than a chunk
    /// (then blocks are off and the tail seals into full chunks).
    pub(crate) fn effective_block_events(&self) -> usize {
        self.history_block_events.min(self.history_chunk_events)
    }

    /// Every problem at once ([`StoreConfig::problems`]), as the store's
    /// error.
    pub fn validate(&self) -> Result<(), StoreError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(StoreError::InvalidConfig(problems.join("; ")))
        }
    }
}
