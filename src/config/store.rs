//! `[store]`: the store's settings — one type for the config file and for
//! opening a [`Store`](crate::store::Store), each default defined once.
//!
//! Before, `[store]` parsed into a `StoreSettings` of its own and was
//! copied field by field into the store's `StoreConfig`, with two sets of
//! defaults that had to agree. Now the file parses straight into
//! [`StoreConfig`]; what the file does not set (the path, which follows
//! `data_dir`; test-only switches) is `#[serde(skip)]`. It lives in the
//! config module (a leaf: it imports no concept of the node) and the store
//! re-exports it, so the store reads its settings where every other
//! concept reads its own.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How to open a store: the `[store]` section of the node config, plus
/// the path the node derives from `data_dir`. The encryption key itself is
/// never in it (this type is `Debug` and `Serialize`): the node reads
/// `encryption_key_file` and passes the key to `Store::open_with_key`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Directory of the sled database (created if missing); the node's is
    /// `<data_dir>/store`.
    #[serde(skip)]
    pub path: PathBuf,
    /// sled page cache size; `cache_capacity_mb` in the file. Default 16
    /// MiB: small enough for a Raspberry Pi class box, large enough to
    /// keep hot instances cached.
    #[serde(rename = "cache_capacity_mb", with = "mebibytes")]
    pub cache_capacity_bytes: u64,
    /// Events per sealed history chunk. Default 256: big enough for zstd to
    /// find the repetition between events, small enough that a boundary
    /// chunk rewrite during retention stays cheap. At least 2.
    pub history_chunk_events: usize,
    /// Events per *block*: the open tail is sealed into a small chunk every
    /// this many events, and `history_chunk_events / history_block_events`
    /// blocks are merged into one full chunk. Default 16. Why two levels:
    /// the open tail lives in the instance record, which every write of
    /// the entity rewrites, so it must stay short; sled's page table (its
    /// memory and its rebuild on every open) grows with the number of
    /// keys, so sealed history should be few keys; blocks give both,
    /// while the full chunks keep the compression of large chunks. Equal
    /// to (or above) `history_chunk_events`: one level, the tail seals
    /// straight into full chunks, and the instance record carries up to
    /// that many events. At least 2. A full chunk then holds
    /// `history_chunk_events` rounded down to a multiple of this.
    pub history_block_events: usize,
    /// Seal per-field summaries (count/min/max/sum/first/last, text
    /// states) into each history chunk (see `store/chunk_summary.rs`), so
    /// `series` reads summaries instead of decompressing events. Always
    /// on for a node; off writes chunks as before summaries existed (tests
    /// of old chunks). Not a file setting.
    #[serde(skip, default = "on")]
    pub history_summaries: bool,
    /// zstd level for chunks. Default 3 (zstd's own default: good ratio at
    /// low CPU cost on ARM).
    pub zstd_level: i32,
    /// Longest accepted entity key, in bytes. Default 512; at most 65,535
    /// (the history and audit keys carry the length as a `u16`). Not a
    /// file setting.
    #[serde(skip, default = "default_max_entity_key_bytes")]
    pub max_entity_key_bytes: usize,
    /// `[store.dictionary]`: per-product zstd dictionaries for history
    /// chunks (see `store/dictionary.rs` and `store/dictionary_train.rs`).
    pub dictionary: DictionaryConfig,
    /// Entities per product whose newest committed state is kept decoded
    /// for key lookups (see `store/current.rs`), so lookups do not wait on
    /// the writer's sled transactions. Default 10,000 (a few MiB with a
    /// handful of fields each). 0: off, every lookup reads sled.
    pub instance_cache_entries: usize,
    /// Bytes of hot state (keys written since the last checkpoint, see
    /// `store/hot.rs` and `store/journal.rs`), and of journal frames since
    /// the last checkpoint, before the writer checkpoints at once. Default
    /// 8 MiB: with ~1 KiB instances, a few thousand dirty entities; it
    /// bounds the memory and the replay after a crash (8 MiB of frames
    /// replayed in 0.76 s, debug build,
    /// `tests/it/store_write_amplification.rs`). At least 64 KiB.
    pub hot_bytes: usize,
    /// How often the hot state is checkpointed into the trees (sooner when
    /// `hot_bytes` is reached): each dirty key is written to its tree once
    /// per interval, however often it changed. Default 30 s: a checkpoint
    /// rewrites every dirty instance through sled, whose pages multiply it
    /// ~5×; at 1,000 records/s of 1,000 devices, 60 s of ingest wrote 20.1
    /// bytes per raw byte with 5 s and 6.3 with 30 s
    /// (`tests/it/store_write_amplification.rs`). The replay stays bounded
    /// by `hot_bytes`. At least 10 ms.
    #[serde(with = "super::humantime_serde_compat")]
    pub checkpoint_interval: Duration,
    /// How often the retention sweeper (src/retention.rs) wakes. Default
    /// 30 s.
    #[serde(with = "super::humantime_serde_compat")]
    pub retention_interval: Duration,
    /// Entities the sweeper visits per product per wake: bounded work, so a
    /// sweep never stalls ingest; the next wake resumes where it stopped.
    /// Default 1,000.
    pub retention_budget: usize,
    /// Encrypt stored values at rest with the key in this file (32 raw
    /// bytes, 64 hex digits or base64; `meshlet key generate` writes one).
    /// Set it before the first start: an existing unencrypted store is
    /// refused with a key, an encrypted one without it or with another key.
    pub encryption_key_file: Option<PathBuf>,
    /// Whether new audit lines are hash-chained (`store/audit.rs`). Always
    /// on; off only so `benches/micro.rs` can measure what the chain costs
    /// a record in the same run. Not a file setting.
    #[doc(hidden)]
    #[serde(skip, default = "on")]
    pub audit_chain: bool,
}

fn on() -> bool {
    true
}

fn default_max_entity_key_bytes() -> usize {
    StoreConfig::DEFAULT_MAX_ENTITY_KEY_BYTES
}

/// When and how per-product history dictionaries are trained; the
/// `[store.dictionary]` section of the node config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DictionaryConfig {
    /// Train and use dictionaries. Default on. Off: new chunks are written
    /// without one; chunks of existing dictionaries stay readable.
    pub enabled: bool,
    /// Chunks sealed (since open) before a product's first dictionary is
    /// trained. Default 32: with 256-event chunks that is 8,192 events,
    /// enough samples for a 32 KiB dictionary.
    pub min_chunks: u64,
    /// Chunks sealed with the newest dictionary before it is retrained
    /// (0: never). Default 100,000: data drifts slowly, and every
    /// dictionary is kept forever (see `store/dictionary.rs`).
    pub retrain_chunks: u64,
    /// Largest dictionary, in bytes. Default 32 KiB.
    pub max_bytes: usize,
    /// MessagePack bytes of sample events to train on. Default 1 MiB
    /// (zstd wants about 10-100 times the dictionary size).
    pub sample_bytes: usize,
    /// A value goes into the training samples only if events of at least
    /// this many distinct entities hold it; any other value is replaced by
    /// a placeholder. Default 3. This is what keeps an erased entity's
    /// values out of every dictionary (see `store/dictionary_train.rs`).
    pub value_min_entities: usize,
}

impl Default for DictionaryConfig {
    fn default() -> Self {
        DictionaryConfig {
            enabled: true,
            min_chunks: 32,
            retrain_chunks: 100_000,
            max_bytes: 32 * 1024,
            sample_bytes: 1024 * 1024,
            value_min_entities: 3,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::new(PathBuf::new())
    }
}

impl StoreConfig {
    pub const DEFAULT_CACHE_CAPACITY_BYTES: u64 = 16 * 1024 * 1024;
    pub const DEFAULT_HISTORY_CHUNK_EVENTS: usize = 256;
    pub const DEFAULT_HISTORY_BLOCK_EVENTS: usize = 16;
    pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
    pub const DEFAULT_MAX_ENTITY_KEY_BYTES: usize = 512;
    pub const DEFAULT_INSTANCE_CACHE_ENTRIES: usize = 10_000;
    pub const DEFAULT_HOT_BYTES: usize = 8 * 1024 * 1024;
    pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(30);
    pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(30);
    pub const DEFAULT_RETENTION_BUDGET: usize = 1_000;

    /// A config for `path` with every other setting at its default.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StoreConfig {
            path: path.into(),
            cache_capacity_bytes: Self::DEFAULT_CACHE_CAPACITY_BYTES,
            history_chunk_events: Self::DEFAULT_HISTORY_CHUNK_EVENTS,
            history_block_events: Self::DEFAULT_HISTORY_BLOCK_EVENTS,
            history_summaries: true,
            zstd_level: Self::DEFAULT_ZSTD_LEVEL,
            max_entity_key_bytes: Self::DEFAULT_MAX_ENTITY_KEY_BYTES,
            dictionary: DictionaryConfig::default(),
            instance_cache_entries: Self::DEFAULT_INSTANCE_CACHE_ENTRIES,
            hot_bytes: Self::DEFAULT_HOT_BYTES,
            checkpoint_interval: Self::DEFAULT_CHECKPOINT_INTERVAL,
            retention_interval: Self::DEFAULT_RETENTION_INTERVAL,
            retention_budget: Self::DEFAULT_RETENTION_BUDGET,
            encryption_key_file: None,
            audit_chain: true,
        }
    }

    /// These settings at `path` (the node's `<data_dir>/store`).
    pub fn at(&self, path: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            path: path.into(),
            ..self.clone()
        }
    }

    /// Every problem that would stop the store from opening, all at once
    /// so one edit fixes the config (`Store::open` refuses with them,
    /// `HubConfig::validate` reports them).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.history_chunk_events < 2 {
            problems.push(format!(
                "history_chunk_events must be at least 2, got {}",
                self.history_chunk_events
            ));
        }
        if self.history_block_events < 2 {
            problems.push(format!(
                "history_block_events must be at least 2, got {}",
                self.history_block_events
            ));
        }
        if self.max_entity_key_bytes == 0 || self.max_entity_key_bytes > usize::from(u16::MAX) {
            problems.push(format!(
                "max_entity_key_bytes must be 1..=65535, got {}",
                self.max_entity_key_bytes
            ));
        }
        let levels = zstd::compression_level_range();
        if !levels.contains(&self.zstd_level) {
            problems.push(format!(
                "zstd_level must be in {}..={}, got {}",
                levels.start(),
                levels.end(),
                self.zstd_level
            ));
        }
        if self.hot_bytes < 64 * 1024 {
            problems.push(format!(
                "hot_bytes must be at least 65536, got {}",
                self.hot_bytes
            ));
        }
        if self.checkpoint_interval < Duration::from_millis(10) {
            problems.push(format!(
                "checkpoint_interval must be at least 10ms, got {:?}",
                self.checkpoint_interval
            ));
        }
        let dictionary = &self.dictionary;
        if dictionary.min_chunks == 0 {
            problems.push("dictionary.min_chunks must be at least 1".to_string());
        }
        if !(1024..=1024 * 1024).contains(&dictionary.max_bytes) {
            problems.push(format!(
                "dictionary.max_bytes must be 1024..=1048576, got {}",
                dictionary.max_bytes
            ));
        }
        if dictionary.sample_bytes < dictionary.max_bytes {
            problems.push(format!(
                "dictionary.sample_bytes ({}) must be at least dictionary.max_bytes ({})",
                dictionary.sample_bytes, dictionary.max_bytes
            ));
        }
        if dictionary.value_min_entities < 2 {
            problems.push(format!(
                "dictionary.value_min_entities must be at least 2 (1 would let one entity's values into a dictionary), got {}",
                dictionary.value_min_entities
            ));
        }
        problems
    }
}

/// `cache_capacity_mb` in the file, bytes in the program.
mod mebibytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(bytes >> 20)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        Ok(u64::deserialize(deserializer)?.saturating_mul(1 << 20))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_all_reported() {
        assert!(StoreConfig::new("/tmp/x").problems().is_empty());
        let mut bad = StoreConfig::new("/tmp/x");
        bad.history_chunk_events = 1;
        bad.history_block_events = 0;
        bad.max_entity_key_bytes = 70_000;
        bad.zstd_level = 99;
        let msg = bad.problems().join("; ");
        assert!(
            msg.contains("history_chunk_events")
                && msg.contains("history_block_events")
                && msg.contains("max_entity_key_bytes")
                && msg.contains("zstd_level"),
            "{msg}"
        );
    }

    /// The file's `[store]` reads into the one type: what it sets changes,
    /// what it does not set (the path, test-only switches) keeps the one
    /// default, and it writes back the same way.
    #[test]
    fn the_store_section_parses_into_the_store_config() {
        let parsed: StoreConfig = toml::from_str(
            "cache_capacity_mb = 4\nzstd_level = 5\ncheckpoint_interval = \"2s\"\n[dictionary]\nenabled = false\n",
        )
        .expect("parses");
        let want = StoreConfig {
            cache_capacity_bytes: 4 << 20,
            zstd_level: 5,
            checkpoint_interval: Duration::from_secs(2),
            dictionary: DictionaryConfig {
                enabled: false,
                ..DictionaryConfig::default()
            },
            ..StoreConfig::default()
        };
        assert_eq!(parsed, want);
        assert!(parsed.history_summaries && parsed.audit_chain);
        assert_eq!(parsed.max_entity_key_bytes, 512);
        let text = toml::to_string(&parsed).expect("writes");
        assert_eq!(
            toml::from_str::<StoreConfig>(&text).expect("reads back"),
            parsed
        );
        for key in [
            "path",
            "history_summaries",
            "audit_chain",
            "max_entity_key_bytes",
        ] {
            assert!(
                toml::from_str::<StoreConfig>(&format!("{key} = 1")).is_err(),
                "`{key}` is not a file setting"
            );
        }
    }
}
