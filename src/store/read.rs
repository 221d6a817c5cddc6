//! Reads: instances, scans, history and audit. No locks: sled reads are
//! atomic per key; history reads are made consistent per entity (see
//! [`Store::history`]).

use std::ops::Bound;
use std::sync::Arc;

use super::chunk::{decode_chunk, decode_chunk_header, ChunkHeader};
use super::codec;
use super::keys::{chunk_key, entity_prefix, parse_history_key, TAG_CHUNK, TAG_TAIL};
use super::stored::{StoredAuditLine, StoredEvent, StoredInstance, StoredState, StoredTombstone};
use super::{
    AuditEntry, AuditQuery, HistoryEvent, HistoryQuery, Instance, Page, ProductTrees, Store,
    StoreError, Tombstone, AUDIT, HISTORY, INSTANCES, TOMBSTONES,
};

/// Optimistic reads of history and audit before falling back to the writer
/// lock.
const CONSISTENT_READ_ATTEMPTS: usize = 3;

impl Store {
    /// The current state of one entity, `None` if it does not exist.
    pub fn get(&self, product: &str, entity: &str) -> Result<Option<Instance>, StoreError> {
        self.check_entity(product, entity)?;
        let trees = self.product(product)?;
        let ticket = match trees.current.lookup(entity) {
            Ok(instance) => return Ok(Some(instance)),
            Err(ticket) => ticket,
        };
        let bytes = trees.instances.get(entity.as_bytes()).map_err(|e| {
            StoreError::sled(
                format!("product `{product}`, entity `{entity}`: reading instance"),
                e,
            )
        })?;
        match bytes {
            Some(bytes) => {
                let instance = decode_instance(&trees, entity, &bytes)?;
                trees.current.fill(ticket, &instance);
                Ok(Some(instance))
            }
            None => Ok(None),
        }
    }

    /// The state of `entity` if the lookup cache holds it (`current.rs`):
    /// answered without sled, so never waiting on the writer's
    /// transaction. `Ok(None)` means *not cached*, not absent: ask
    /// [`Store::get`], which may block while the writer commits. Shared,
    /// not copied: the caller clones only if it must change it.
    pub fn get_cached(
        &self,
        product: &str,
        entity: &str,
    ) -> Result<Option<Arc<Instance>>, StoreError> {
        self.check_entity(product, entity)?;
        Ok(self.product(product)?.current.lookup_shared(entity).ok())
    }

    /// One page of instances ordered by entity key bytes, starting after
    /// the exclusive cursor `after` (an entity key). At most `limit` entries
    /// are visited (a `limit` of 0 counts as 1); corrupt entries are skipped
    /// and reported in [`Page::errors`] and count towards the limit.
    /// `next_after` is `None` once the end is reached. Entities written
    /// during a scan may or may not be seen; none is seen twice.
    pub fn scan(
        &self,
        product: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let trees = self.product(product)?;
        let limit = limit.max(1);
        let mut range = match after {
            Some(after) => trees
                .instances
                .range::<&[u8], _>((Bound::Excluded(after.as_bytes()), Bound::Unbounded)),
            None => trees.instances.iter(),
        };
        let mut page = Page {
            instances: Vec::new(),
            errors: Vec::new(),
            next_after: None,
        };
        let mut visited = 0usize;
        let mut last_key = None;
        for item in range.by_ref() {
            let (key, value) = item.map_err(|e| {
                StoreError::sled(format!("product `{product}`: scanning instances"), e)
            })?;
            let entity = String::from_utf8_lossy(&key).into_owned();
            match decode_instance(&trees, &entity, &value) {
                Ok(instance) => page.instances.push(instance),
                Err(e) => {
                    tracing::warn!(product, entity, error = %e, "skipping corrupt instance in scan");
                    page.errors.push(e);
                }
            }
            last_key = Some(entity);
            visited += 1;
            if visited == limit {
                break;
            }
        }
        self.walked(visited as u64);
        if visited == limit {
            let more = range
                .next()
                .transpose()
                .map_err(|e| {
                    StoreError::sled(format!("product `{product}`: scanning instances"), e)
                })?
                .is_some();
            if more {
                page.next_after = last_key;
            }
        }
        Ok(page)
    }

    /// History events of one entity in version order, filtered by `query`.
    ///
    /// Consistent per entity: the instance record is compared before and
    /// after the range scan (every write that touches history rewrites it);
    /// on a mismatch the read is retried, finally under the writer lock, so
    /// a concurrent seal or retention sweep never shows missing or doubled
    /// events. An entity that does not exist has no history.
    pub fn history(
        &self,
        product: &str,
        entity: &str,
        query: &HistoryQuery,
    ) -> Result<Vec<HistoryEvent>, StoreError> {
        self.check_entity(product, entity)?;
        let trees = self.product(product)?;
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        self.consistent_with_instance(&trees, entity, |instance| match instance {
            None => Ok(Vec::new()),
            Some(bytes) if query.newest_first => {
                // The open tail is the newest part: read it first, backwards.
                let state = decode_stored_instance(&trees, entity, bytes)?;
                let mut events = Vec::new();
                for event in state.tail.iter().rev() {
                    let event = event
                        .decode()
                        .map_err(|e| StoreError::corrupt(product, entity, "history event", e))?;
                    if event_wanted(&event, query) {
                        events.push(event.into());
                        if events.len() >= query.limit {
                            return Ok(events);
                        }
                    }
                }
                read_history_newest_first(&trees, entity, query, state.version, &mut events)?;
                Ok(events)
            }
            Some(bytes) => {
                let mut events = Vec::new();
                read_history(&trees, entity, query, &mut events)?;
                if events.len() < query.limit {
                    // The open tail, newer than every key's events.
                    let state = decode_stored_instance(&trees, entity, bytes)?;
                    for event in &state.tail {
                        let event = event.decode().map_err(|e| {
                            StoreError::corrupt(product, entity, "history event", e)
                        })?;
                        if event_wanted(&event, query) {
                            events.push(event.into());
                            if events.len() >= query.limit {
                                break;
                            }
                        }
                    }
                }
                Ok(events)
            }
        })
    }

    /// Audit lines of one entity, oldest first. A line matches if it
    /// overlaps the query window: `last_at >= since` and `first_at < until`.
    /// Lines survive erasure and expiry of the entity (only the final
    /// `Erased`/`Expired` line does).
    ///
    /// The newest line lives in the instance (`StoredInstance::audit_open`)
    /// and comes after the audit tree's lines. Consistent like
    /// [`Store::history`]: the instance is compared before and after the
    /// tree scan (every write that closes a line rewrites it), retried on
    /// a mismatch and finally read under the writer lock.
    pub fn audit(
        &self,
        product: &str,
        entity: &str,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.check_entity(product, entity)?;
        let trees = self.product(product)?;
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        self.consistent_with_instance(&trees, entity, |instance| {
            let mut lines = read_audit_tree(&trees, entity, query)?;
            if lines.len() < query.limit {
                if let Some(bytes) = instance {
                    let state: StoredInstance = trees
                        .open(INSTANCES, entity.as_bytes(), bytes)
                        .and_then(|plain| codec::decode(&plain))
                        .map_err(|e| StoreError::corrupt(product, entity, "instance", e))?;
                    if let Some(open) = state.audit_open {
                        if overlaps(&open.line, query) {
                            lines.push(open.line.into());
                        }
                    }
                }
            }
            Ok(lines)
        })
    }

    /// Runs `read` (given the entity's stored instance bytes, if any) so
    /// that no write to the entity falls inside it: the instance is read
    /// before and after, and every write that touches history or closes
    /// an audit line rewrites it. On a mismatch `read` runs again, finally
    /// under the writer lock.
    pub(super) fn consistent_with_instance<T>(
        &self,
        trees: &ProductTrees,
        entity: &str,
        read: impl Fn(Option<&[u8]>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let read_instance = || {
            trees.instances.get(entity.as_bytes()).map_err(|e| {
                StoreError::sled(
                    format!(
                        "product `{}`, entity `{entity}`: reading instance",
                        trees.name
                    ),
                    e,
                )
            })
        };
        for _ in 0..CONSISTENT_READ_ATTEMPTS {
            let before = read_instance()?;
            let value = read(before.as_deref())?;
            if read_instance()? == before {
                return Ok(value);
            }
        }
        let _writer = self.write_lock();
        read(read_instance()?.as_deref())
    }

    /// The tombstone of an erased entity; `None` if it was never erased or
    /// has been re-created since.
    pub fn tombstone(&self, product: &str, entity: &str) -> Result<Option<Tombstone>, StoreError> {
        self.check_entity(product, entity)?;
        let trees = self.product(product)?;
        let bytes = trees.tombstones.get(entity.as_bytes()).map_err(|e| {
            StoreError::sled(
                format!("product `{product}`, entity `{entity}`: reading tombstone"),
                e,
            )
        })?;
        match bytes {
            Some(bytes) => trees
                .open(TOMBSTONES, entity.as_bytes(), &bytes)
                .and_then(|plain| codec::decode::<StoredTombstone>(&plain))
                .map(|t| Some(t.into()))
                .map_err(|e| StoreError::corrupt(product, entity, "tombstone", e)),
            None => Ok(None),
        }
    }
}

/// Opens and decodes the state a reader returns: the open tail and the
/// open audit line in the same value are skipped, not decoded (lookups
/// and pages need neither), and the fields are moved, not copied.
pub(crate) fn decode_instance(
    trees: &ProductTrees,
    entity: &str,
    bytes: &[u8],
) -> Result<Instance, StoreError> {
    trees
        .open(INSTANCES, entity.as_bytes(), bytes)
        .and_then(|plain| codec::decode::<StoredState>(&plain))
        .map(|state| state.into_instance(entity))
        .map_err(|e| StoreError::corrupt(&trees.name, entity, "instance", e))
}

/// Opens (in an encrypted store) and decodes one instance value.
pub(crate) fn decode_stored_instance(
    trees: &ProductTrees,
    entity: &str,
    bytes: &[u8],
) -> Result<StoredInstance, StoreError> {
    trees
        .open(INSTANCES, entity.as_bytes(), bytes)
        .and_then(|plain| codec::decode(&plain))
        .map_err(|e| StoreError::corrupt(&trees.name, entity, "instance", e))
}

/// Whether a chunk can hold no event the query wants (header only).
fn chunk_outside(header: &ChunkHeader, query: &HistoryQuery) -> bool {
    query
        .after_version
        .is_some_and(|v| header.last_version <= v)
        || query
            .before_version
            .is_some_and(|v| header.first_version >= v)
        || query
            .since
            .is_some_and(|since| header.max_event_time < since)
        || query
            .until
            .is_some_and(|until| header.min_event_time >= until)
}

fn event_wanted(event: &StoredEvent, query: &HistoryQuery) -> bool {
    !(query.after_version.is_some_and(|v| event.version <= v)
        || query.before_version.is_some_and(|v| event.version >= v)
        || query.since.is_some_and(|since| event.event_time < since)
        || query.until.is_some_and(|until| event.event_time >= until))
}

/// Versions the first backward window of a newest-first read spans; each
/// further window doubles it. Small enough that the newest few chunks
/// (256 events each by default) are all the first window touches.
const NEWEST_FIRST_SPAN: u64 = 1_024;

/// What the walk over history entries does next.
enum Walk {
    /// Keep reading entries in this direction.
    More,
    /// `out` holds `query.limit` events, or nothing further back can match.
    Done,
}

/// One range scan over the entity's chunks, then the open-tail keys an
/// instance written before store format 3 may still have. Appends to
/// `out` until it holds `query.limit` events.
fn read_history(
    trees: &ProductTrees,
    entity: &str,
    query: &HistoryQuery,
    out: &mut Vec<HistoryEvent>,
) -> Result<(), StoreError> {
    if out.len() >= query.limit {
        return Ok(());
    }
    for item in trees.history.scan_prefix(entity_prefix(entity)) {
        if let Walk::Done = visit_history_entry(trees, entity, query, item, out)? {
            break;
        }
    }
    Ok(())
}

/// The newest-first read after the instance's open tail: the open-tail
/// keys of an instance written before store format 3 (backwards), then
/// the sealed chunks backwards in key windows of growing version spans
/// below `newest` (or `before_version`), each chunk's events newest first.
///
/// Why windows and not one backward scan of the entity's prefix: a range
/// over the store's hot trees gathers every not-yet-checkpointed key of
/// the range before yielding the first (sealed and merged blocks leave
/// one per block until the next checkpoint), so a prefix-wide range cost
/// the latest readings as much as the entity's recent history; a window
/// of [`NEWEST_FIRST_SPAN`] versions costs what the newest chunks hold.
/// Chunks are keyed by their first version and never overlap in
/// versions, so windows read in descending key order yield the events in
/// descending version order, and the walk stops at the first chunk wholly
/// at or below `after_version`.
fn read_history_newest_first(
    trees: &ProductTrees,
    entity: &str,
    query: &HistoryQuery,
    newest: u64,
    out: &mut Vec<HistoryEvent>,
) -> Result<(), StoreError> {
    if out.len() >= query.limit {
        return Ok(());
    }
    let prefix = entity_prefix(entity);
    let mut tail_start = prefix.clone();
    tail_start.push(TAG_TAIL);
    let mut tail_end = prefix;
    tail_end.push(TAG_TAIL + 1);
    for item in trees
        .history
        .range::<&[u8], _>(tail_start.as_slice()..tail_end.as_slice())
        .rev()
    {
        if let Walk::Done = visit_history_entry(trees, entity, query, item, out)? {
            return Ok(());
        }
    }
    // Chunks whose first version is below `hi` are what is left to read.
    let mut hi = newest
        .saturating_add(1)
        .min(query.before_version.unwrap_or(u64::MAX));
    let mut span = NEWEST_FIRST_SPAN;
    while hi > 0 {
        let lo = hi.saturating_sub(span);
        let (start, end) = (chunk_key(entity, lo), chunk_key(entity, hi));
        for item in trees
            .history
            .range::<&[u8], _>(start.as_slice()..end.as_slice())
            .rev()
        {
            if let Walk::Done = visit_history_entry(trees, entity, query, item, out)? {
                return Ok(());
            }
        }
        hi = lo;
        span = span.saturating_mul(2);
    }
    Ok(())
}

/// Reads one history entry (a sealed chunk or a pre-format-3 tail key)
/// into `out`, events in the query's direction.
fn visit_history_entry(
    trees: &ProductTrees,
    entity: &str,
    query: &HistoryQuery,
    item: sled::Result<(sled::IVec, sled::IVec)>,
    out: &mut Vec<HistoryEvent>,
) -> Result<Walk, StoreError> {
    let product = trees.name.as_str();
    let take = |event: StoredEvent, out: &mut Vec<HistoryEvent>| {
        if event_wanted(&event, query) {
            out.push(event.into());
        }
        out.len() >= query.limit
    };
    let (key, value) = item.map_err(|e| {
        StoreError::sled(
            format!("product `{product}`, entity `{entity}`: reading history"),
            e,
        )
    })?;
    let (tag, version) = parse_history_key(&key)
        .ok_or_else(|| StoreError::corrupt(product, entity, "history key", "malformed key"))?;
    let value = trees
        .open(HISTORY, &key, &value)
        .map_err(|e| StoreError::corrupt(product, entity, "history entry", e))?;
    match tag {
        TAG_CHUNK => {
            let header = decode_chunk_header(&value)
                .map_err(|e| StoreError::corrupt(product, entity, "history chunk", e))?;
            if query.newest_first
                && query
                    .after_version
                    .is_some_and(|v| header.last_version <= v)
            {
                // Every older chunk lies below the cursor too.
                return Ok(Walk::Done);
            }
            if chunk_outside(&header, query) {
                return Ok(Walk::More);
            }
            let (_, mut events) = decode_chunk(&value, &trees.dictionaries)
                .map_err(|e| StoreError::corrupt(product, entity, "history chunk", e))?;
            if query.newest_first {
                events.reverse();
            }
            for event in events {
                if take(event, out) {
                    return Ok(Walk::Done);
                }
            }
        }
        TAG_TAIL => {
            if query.after_version.is_some_and(|v| version <= v)
                || query.before_version.is_some_and(|v| version >= v)
            {
                return Ok(Walk::More);
            }
            let event: StoredEvent = codec::decode(&value)
                .map_err(|e| StoreError::corrupt(product, entity, "history event", e))?;
            if take(event, out) {
                return Ok(Walk::Done);
            }
        }
        other => {
            return Err(StoreError::corrupt(
                product,
                entity,
                "history key",
                format!("unknown tag {other}"),
            ))
        }
    }
    Ok(Walk::More)
}

/// Whether an audit line overlaps the query window.
fn overlaps(line: &StoredAuditLine, query: &AuditQuery) -> bool {
    !(query.since.is_some_and(|since| line.last_at < since)
        || query.until.is_some_and(|until| line.first_at >= until))
}

/// The audit tree's lines of `entity` in the query window, oldest first,
/// at most `query.limit`.
fn read_audit_tree(
    trees: &ProductTrees,
    entity: &str,
    query: &AuditQuery,
) -> Result<Vec<AuditEntry>, StoreError> {
    let product = trees.name.as_str();
    let mut entries = Vec::new();
    for item in trees.audit.scan_prefix(entity_prefix(entity)) {
        let (key, value) = item.map_err(|e| {
            StoreError::sled(
                format!("product `{product}`, entity `{entity}`: reading audit"),
                e,
            )
        })?;
        let line: StoredAuditLine = trees
            .open(AUDIT, &key, &value)
            .and_then(|plain| codec::decode(&plain))
            .map_err(|e| StoreError::corrupt(product, entity, "audit line", e))?;
        if !overlaps(&line, query) {
            continue;
        }
        entries.push(line.into());
        if entries.len() >= query.limit {
            break;
        }
    }
    Ok(entries)
}
