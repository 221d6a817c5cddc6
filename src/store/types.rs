//! The store's public value types: what callers put in and get back.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::record::{Fields, Origin, Record, Timestamp};

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
    /// The state after this record; shared with the store's state cache
    /// and the change feed, so a record's state is built once and never
    /// copied on its way to lookups and subscribers.
    pub instance: Arc<Instance>,
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
    /// Only events with `version < before_version` (a paging cursor).
    pub before_version: Option<u64>,
    /// Newest first (descending version): the `limit` newest events that
    /// match, read from the end of the entity's history, so the latest
    /// readings cost what they return, not the history's length.
    pub newest_first: bool,
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
            before_version: None,
            newest_first: false,
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
    /// Hex SHA-256 of the line in the entity's audit chain; `None` for a
    /// line written before the chain.
    pub hash: Option<String>,
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

/// A 128-bit digest of what makes a message unique (computed by ingest,
/// opaque to the store).
pub type Fingerprint = [u8; 16];

/// One record of an [`IngestBatch`], with its dedupe fingerprint.
#[derive(Clone, Debug, PartialEq)]
pub struct IngestRecord {
    pub record: Record,
    /// `None`: always applied, nothing registered.
    pub fingerprint: Option<Fingerprint>,
    /// Skip the record if `fingerprint` is in the product's dedupe window.
    /// `false` still registers the fingerprint (a source that cannot
    /// redeliver, whose records later redeliveries must be checked against).
    pub check_duplicate: bool,
}

/// A message (or one record of it) that failed validation, kept whole so
/// it can be inspected and replayed later.
#[derive(Clone, Debug, PartialEq)]
pub struct QuarantineItem {
    /// The source inside the product definition, e.g. `mqtt:0`, `http`,
    /// `file:0`.
    pub source: String,
    pub topic: Option<String>,
    /// Topic template captures, in template order.
    pub captures: Vec<(String, String)>,
    /// The raw bytes as received (may be invalid UTF-8).
    pub payload: Vec<u8>,
    /// Every reason, human-readable.
    pub reasons: Vec<String>,
    pub arrival: Timestamp,
    pub origin: Origin,
    /// Which record inside the payload was bad; `None` = the whole payload.
    pub index: Option<u32>,
    /// The entity the payload is about, when its key could be read: erasing
    /// that entity removes the entry. `None` for entries quarantined before
    /// this was recorded, or when no key could be read.
    pub entity: Option<String>,
}

/// How far a source has been consumed. The position is opaque to the
/// store (a file tail keeps inode and byte offset in it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceOffset {
    /// Globally unique source name, e.g. `machine_health/file:0`; offsets
    /// are one namespace for the whole node.
    pub source: String,
    pub position: Vec<u8>,
}

/// Everything one batch from one source produces for one product, written
/// by [`Store::ingest`](super::Store::ingest) as one atomic step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IngestBatch {
    /// Applied in order, like [`Store::upsert`](super::Store::upsert).
    pub records: Vec<IngestRecord>,
    /// Stored in order; ids ascend in that order.
    pub quarantine: Vec<QuarantineItem>,
    /// Stored (overwriting the previous one) with the batch.
    pub source_offset: Option<SourceOffset>,
    /// Quarantine ids removed with the batch (a replay writes the records
    /// and removes their entries in one step); missing ids are ignored.
    pub resolve_quarantine: Vec<u64>,
    /// The request's idempotency key (HTTP push `Idempotency-Key`): the
    /// batch is applied at most once per key within the product's dedupe
    /// window; a resend is answered with the first answer's [`Receipt`].
    pub idempotency: Option<Idempotency>,
}

/// An idempotent request, as the dedupe window remembers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Idempotency {
    /// The key's fingerprint: registered in the window like a record's.
    pub key: Fingerprint,
    /// A hash of what the request carried: the same key with another
    /// body is a client error, not a resend.
    pub request: u64,
}

/// What an idempotent request was answered the first time; kept beside
/// its key in the dedupe window, written in the same transaction as its
/// records, forgotten with the key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Receipt {
    pub request: u64,
    pub accepted: u64,
    pub duplicates: u64,
}

/// A batch whose idempotency key the window already held: nothing of it
/// was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resend {
    /// The same request again: here is the first answer.
    Replayed(Receipt),
    /// The key came with a different request.
    Conflict,
}

impl IngestBatch {
    /// Whether the batch would write nothing at all.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.quarantine.is_empty()
            && self.source_offset.is_none()
            && self.resolve_quarantine.is_empty()
            && self.idempotency.is_none()
    }
}

/// Per-product bounds of the ingest bookkeeping, passed with every batch
/// (they come from the product definition and may change on reload;
/// shrinking one evicts the surplus on the next batch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngestLimits {
    /// Quarantine entries kept; the oldest are evicted beyond it.
    pub quarantine_max: u64,
    /// Fingerprints in the dedupe window; the oldest registration is
    /// forgotten beyond it.
    pub dedupe_capacity: u64,
}

impl IngestLimits {
    pub const DEFAULT_QUARANTINE_MAX: u64 = 10_000;
    pub const DEFAULT_DEDUPE_CAPACITY: u64 = 65_536;
}

impl Default for IngestLimits {
    /// 10,000 quarantine entries (a few MiB typically; ~2.5 GiB in the
    /// worst case of incompressible 256 KiB payloads), 65,536 fingerprints
    /// (a few MiB).
    fn default() -> Self {
        IngestLimits {
            quarantine_max: Self::DEFAULT_QUARANTINE_MAX,
            dedupe_capacity: Self::DEFAULT_DEDUPE_CAPACITY,
        }
    }
}

/// What [`Store::ingest`](super::Store::ingest) did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IngestOutcome {
    /// One per record, in order; `None` = skipped as a duplicate.
    pub changes: Vec<Option<Change>>,
    /// Records skipped as duplicates.
    pub duplicates: usize,
    /// Items of this batch put into quarantine (= `batch.quarantine.len()`,
    /// including any evicted at once).
    pub quarantined: usize,
    /// The ids they got, in batch order (an id may already be evicted if
    /// the batch alone exceeds `quarantine_max`).
    pub quarantine_ids: Vec<u64>,
    /// Entries evicted to stay within `quarantine_max` (oldest first,
    /// items of this batch last).
    pub quarantine_evicted: usize,
    /// `resolve_quarantine` ids that existed and were removed.
    pub resolved: usize,
    /// Set when the batch's idempotency key was already known: the batch
    /// wrote nothing (`changes` all `None`).
    pub resend: Option<Resend>,
}

/// One quarantine entry as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct QuarantineEntry {
    /// Per product, ascending in quarantine order, never reused.
    pub id: u64,
    pub quarantined_at: Timestamp,
    pub item: QuarantineItem,
}
