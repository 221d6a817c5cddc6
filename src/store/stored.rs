//! On-disk forms of the store's values.
//!
//! Kept apart from the public types so the API can evolve without changing
//! the bytes on disk, and vice versa. New fields must be `#[serde(default)]`
//! so values written by an older meshlet still decode.

use serde::{Deserialize, Serialize};

use super::types::{AuditAction, AuditEntry, HistoryEvent, Instance, Tombstone};
use crate::record::{Fields, Origin, Timestamp};

/// Value of an `instances` key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredInstance {
    pub fields: Fields,
    pub version: u64,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    pub event_time: Timestamp,
    pub last_origin: Origin,
    /// Lowest version that may be in the open tail; every version from here
    /// to `version` was appended after the last seal (some may have been
    /// removed by retention). Sealing reads exactly these keys, so it never
    /// needs a range scan inside a transaction.
    #[serde(default)]
    pub tail_start: u64,
    /// Number of events currently in the open tail.
    #[serde(default)]
    pub tail_len: u64,
    /// Id of the newest audit line, the one a change may coalesce into.
    #[serde(default)]
    pub audit_tail: Option<u64>,
    /// Bumped by every retention rewrite, so a reader that sees the same
    /// instance bytes before and after reading history knows no write
    /// touched that history in between.
    #[serde(default)]
    pub history_rev: u64,
}

impl StoredInstance {
    pub fn to_instance(&self, entity: &str) -> Instance {
        Instance {
            entity: entity.to_string(),
            fields: self.fields.clone(),
            version: self.version,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            event_time: self.event_time,
            last_origin: self.last_origin.clone(),
        }
    }
}

/// One history event, in the tail (one key each) or inside a chunk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredEvent {
    pub version: u64,
    pub event_time: Timestamp,
    pub received_at: Timestamp,
    pub fields: Fields,
    pub origin: Origin,
}

impl From<StoredEvent> for HistoryEvent {
    fn from(e: StoredEvent) -> HistoryEvent {
        HistoryEvent {
            version: e.version,
            event_time: e.event_time,
            received_at: e.received_at,
            fields: e.fields,
            origin: e.origin,
        }
    }
}

/// Value of an `audit` key. Never holds field values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredAuditLine {
    pub first_at: Timestamp,
    pub last_at: Timestamp,
    pub action: AuditAction,
    pub from_version: u64,
    pub to_version: u64,
    pub count: u64,
    pub fields: Vec<String>,
    pub origin: Origin,
}

impl From<StoredAuditLine> for AuditEntry {
    fn from(l: StoredAuditLine) -> AuditEntry {
        AuditEntry {
            first_at: l.first_at,
            last_at: l.last_at,
            action: l.action,
            from_version: l.from_version,
            to_version: l.to_version,
            count: l.count,
            fields: l.fields,
            origin: l.origin,
        }
    }
}

/// Value of a `tombstones` key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredTombstone {
    pub erased_at: Timestamp,
    pub origin: Origin,
    pub last_version: u64,
}

impl From<StoredTombstone> for Tombstone {
    fn from(t: StoredTombstone) -> Tombstone {
        Tombstone {
            erased_at: t.erased_at,
            origin: t.origin,
            last_version: t.last_version,
        }
    }
}

/// Value of the `meta` tree's `format` key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredMeta {
    pub format_version: u32,
}
