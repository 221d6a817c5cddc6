//! The store's public value types: what callers put in and get back.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::record::{Fields, Origin, Timestamp};

/// The current state of one entity of one product.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    /// The entity key.
    pub entity: String,
    /// Merged fields; a field cleared by `Value::Null` is absent.
    pub fields: Fields,
    /// Number of records applied since the entity was (re)created; equals
    /// the version of the newest history event.
    pub version: u64,
    /// Arrival time of the first record.
    pub first_seen: Timestamp,
    /// Arrival time of the latest record (late or not).
    pub last_seen: Timestamp,
    /// The newest event time applied to the state.
    pub event_time: Timestamp,
    /// Origin of the latest record (late or not).
    pub last_origin: Origin,
}

/// What one record did to its instance.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub entity: String,
    /// The instance version after this record (= this record's history version).
    pub version: u64,
    /// The record created the instance (first record, or first after an
    /// erase or expiry).
    pub created: bool,
    /// Names of fields whose value actually changed, in name order.
    pub changed: Vec<String>,
    /// `false` for a late event that changed nothing in the state and only
    /// went to history.
    pub applied_to_state: bool,
    /// The state after this record.
    pub instance: Instance,
}

/// One page of a [`Store::scan`](super::Store::scan).
#[derive(Clone, Debug)]
pub struct Page {
    /// Decodable instances, in entity key byte order.
    pub instances: Vec<Instance>,
    /// One `StoreError::Corrupt` per entry that could not be decoded.
    pub errors: Vec<StoreError>,
    /// Pass as `after` to get the next page; `None` when the scan reached
    /// the end.
    pub next_after: Option<String>,
}

/// Which history events to return, in version order.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryQuery {
    /// Only events with `event_time >= since`.
    pub since: Option<Timestamp>,
    /// Only events with `event_time < until`.
    pub until: Option<Timestamp>,
    /// Only events with `version > after_version` (a paging cursor).
    pub after_version: Option<u64>,
    /// At most this many events.
    pub limit: usize,
}

impl Default for HistoryQuery {
    /// No bounds and no limit.
    fn default() -> Self {
        HistoryQuery {
            since: None,
            until: None,
            after_version: None,
            limit: usize::MAX,
        }
    }
}

/// One history event: a record as it was observed (not merged).
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryEvent {
    pub version: u64,
    pub event_time: Timestamp,
    pub received_at: Timestamp,
    /// The record's fields exactly as received, `Value::Null` included.
    pub fields: Fields,
    pub origin: Origin,
}

/// Which audit lines to return, oldest first.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditQuery {
    /// Only lines with `last_at >= since`.
    pub since: Option<Timestamp>,
    /// Only lines with `first_at < until`.
    pub until: Option<Timestamp>,
    /// At most this many lines.
    pub limit: usize,
}

impl Default for AuditQuery {
    /// No bounds and no limit.
    fn default() -> Self {
        AuditQuery {
            since: None,
            until: None,
            limit: usize::MAX,
        }
    }
}

/// What an audit line records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditAction {
    Created,
    Updated,
    Erased,
    Expired,
}

/// Who or what changed an entity, when: never the values.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEntry {
    /// Arrival time of the first change on this line.
    pub first_at: Timestamp,
    /// Arrival time of the last change on this line.
    pub last_at: Timestamp,
    pub action: AuditAction,
    pub from_version: u64,
    pub to_version: u64,
    /// Number of changes coalesced into this line.
    pub count: u64,
    /// Names of the fields changed (union over the line), never values.
    pub fields: Vec<String>,
    pub origin: Origin,
}

/// Left behind by [`Store::erase`](super::Store::erase).
#[derive(Clone, Debug, PartialEq)]
pub struct Tombstone {
    pub erased_at: Timestamp,
    pub origin: Origin,
    /// The version the entity had when erased (0 if its state was corrupt).
    pub last_version: u64,
}

/// A product's retention rules, applied by
/// [`Store::sweep_retention`](super::Store::sweep_retention).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RetentionSpec {
    /// Keep at most the newest N history events per entity.
    pub history_keep: Option<u64>,
    /// Drop history events with `event_time < now - history_max_age`.
    pub history_max_age: Option<Duration>,
    /// Remove entities with `last_seen < now - expire_after`.
    pub expire_after: Option<Duration>,
}

/// What one sweep call did.
#[derive(Clone, Debug, Default)]
pub struct SweepReport {
    pub entities_visited: u64,
    /// History events removed (by keep, max age or expiry).
    pub events_removed: u64,
    /// Boundary chunks decompressed and rewritten with fewer events.
    pub chunks_rewritten: u64,
    pub entities_expired: u64,
    /// Pass as `cursor` to continue; `None` when the sweep reached the end
    /// of the product (start again with `None` for the next round).
    pub next_cursor: Option<String>,
    /// Entities skipped because their stored data is corrupt.
    pub errors: Vec<StoreError>,
}
