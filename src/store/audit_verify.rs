//! Verifying an entity's audit hash chain (see `audit.rs` for the chain).
//!
//! Why a module of its own: the writer only ever extends a chain; checking
//! one reads every line and the history the lines cover, for
//! `meshlet audit verify` (offline, every entity of a product) and for
//! GraphQL's `auditVerified` (one entity, on a running node). Both report
//! the first broken link and stop there: after a break nothing later can
//! be trusted to mean what it says.
//!
//! What is checked, oldest line first: each line decodes; a linked line's
//! hash matches its content; its `prev` is the hash of the linked line
//! before it (the first linked line links to zero, an `Erased`/`Expired`
//! line may link to the lines it replaced, a line right after an `Expired`
//! one may start afresh); no unlinked line follows a linked one; and, when
//! history still holds every event a line covers (retention may have
//! dropped some), the digest of those events matches the line's.

use std::collections::{BTreeMap, BTreeSet};

use super::audit::{content_hash, fold_event, hex, Hash, GENESIS};
use super::codec;
use super::keys::entity_prefix;
use super::read::decode_stored_instance;
use super::stored::{StoredAuditLine, StoredEventRef};
use super::{AuditAction, HistoryQuery, ProductTrees, Store, StoreError, AUDIT};

/// The outcome of verifying one entity's audit chain.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditVerdict {
    pub entity: String,
    /// Lines read (up to the first break).
    pub lines: u64,
    /// Lines whose hash and link were checked.
    pub linked: u64,
    /// Lines from before the chain (no hash), at its start.
    pub unlinked: u64,
    /// Linked lines whose history was gone (retention), so their events
    /// digest could not be compared.
    pub events_pruned: u64,
    /// Hex hash of the newest linked line, if any.
    pub head: Option<String>,
    /// The first broken link, if any.
    pub broken: Option<AuditBreak>,
}

/// Where and why an audit chain breaks.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditBreak {
    /// Position of the line, 1 for the oldest.
    pub line: u64,
    /// The line's audit id (its key in the audit tree, or the open line's).
    pub id: u64,
    pub from_version: u64,
    pub to_version: u64,
    pub reason: String,
}

/// One stored line as read: its id, and the line or why it did not decode.
type RawLine = (u64, Result<StoredAuditLine, String>);

impl Store {
    /// Verifies the audit chain of one entity (see the module docs). On a
    /// running node the read is consistent like [`Store::audit`]. An entity
    /// with no audit line verifies with zero lines.
    pub fn verify_audit(&self, product: &str, entity: &str) -> Result<AuditVerdict, StoreError> {
        self.check_entity(product, entity)?;
        let trees = self.product(product)?;
        let span = tracing::debug_span!("store.audit_verify", product, entity);
        let _enter = span.enter();
        let lines = self.consistent_with_instance(&trees, entity, |instance| {
            read_lines(&trees, entity, instance)
        })?;
        let mut history = BTreeMap::new();
        if lines
            .iter()
            .any(|(_, l)| l.as_ref().is_ok_and(|l| l.link.is_some()))
        {
            for event in self.history(product, entity, &HistoryQuery::default())? {
                let bytes = codec::encode_positional(&StoredEventRef {
                    version: event.version,
                    event_time: event.event_time,
                    received_at: event.received_at,
                    fields: &event.fields,
                    origin: &event.origin,
                })
                .map_err(|e| StoreError::encode(product, entity, "history event", e))?;
                history.insert(event.version, bytes);
            }
        }
        Ok(verify_lines(entity, &lines, &history))
    }

    /// Verifies every entity of `product` that has audit lines (in the
    /// tree or open in its instance), in key order.
    pub fn verify_audit_product(&self, product: &str) -> Result<Vec<AuditVerdict>, StoreError> {
        let trees = self.product(product)?;
        let context = |what: &str| format!("product `{product}`: {what}");
        let mut entities = BTreeSet::new();
        for key in trees.audit.iter().keys() {
            let key = key.map_err(|e| StoreError::sled(context("listing audit"), e))?;
            if let Some(entity) = entity_of_audit_key(&key) {
                entities.insert(entity);
            }
        }
        for key in trees.instances.iter().keys() {
            let key = key.map_err(|e| StoreError::sled(context("listing instances"), e))?;
            entities.insert(String::from_utf8_lossy(&key).into_owned());
        }
        entities
            .iter()
            .map(|entity| self.verify_audit(product, entity))
            .collect()
    }

    /// Hex hash of the entity's newest audit line (its open line), `None`
    /// when it has none or it is from before the chain.
    pub fn audit_head(&self, product: &str, entity: &str) -> Result<Option<String>, StoreError> {
        self.check_entity(product, entity)?;
        let trees = self.product(product)?;
        let Some(bytes) = trees.instances.get(entity.as_bytes()).map_err(|e| {
            StoreError::sled(
                format!("product `{product}`, entity `{entity}`: reading instance"),
                e,
            )
        })?
        else {
            return Ok(None);
        };
        let state = decode_stored_instance(&trees, entity, &bytes)?;
        Ok(state
            .audit_open
            .and_then(|open| open.line.link)
            .map(|link| hex(&link.hash)))
    }
}

/// The entity of an audit key (`u16 BE length | entity | u64 BE id`).
fn entity_of_audit_key(key: &[u8]) -> Option<String> {
    let len = usize::from(u16::from_be_bytes([*key.first()?, *key.get(1)?]));
    let entity = key.get(2..2 + len)?;
    (key.len() == 2 + len + 8).then(|| String::from_utf8_lossy(entity).into_owned())
}

/// The entity's lines, oldest first: the tree's, then the instance's open
/// line. A line that does not open or decode is kept as its error.
fn read_lines(
    trees: &ProductTrees,
    entity: &str,
    instance: Option<&[u8]>,
) -> Result<Vec<RawLine>, StoreError> {
    let product = trees.name.as_str();
    let mut lines = Vec::new();
    for item in trees.audit.scan_prefix(entity_prefix(entity)) {
        let (key, value) = item.map_err(|e| {
            StoreError::sled(
                format!("product `{product}`, entity `{entity}`: reading audit"),
                e,
            )
        })?;
        let id = key
            .len()
            .checked_sub(8)
            .and_then(|at| key.get(at..))
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_be_bytes);
        let line = trees
            .open(AUDIT, &key, &value)
            .and_then(|plain| codec::decode::<StoredAuditLine>(&plain))
            .map_err(|e| format!("cannot be read: {e}"));
        lines.push((id, line));
    }
    if let Some(bytes) = instance {
        let state = decode_stored_instance(trees, entity, bytes)?;
        if let Some(open) = state.audit_open {
            lines.push((open.id, Ok(open.line)));
        }
    }
    Ok(lines)
}

/// Walks `lines` (see the module docs); `history` maps version to the
/// event's positional encoding.
fn verify_lines(entity: &str, lines: &[RawLine], history: &BTreeMap<u64, Vec<u8>>) -> AuditVerdict {
    let mut verdict = AuditVerdict {
        entity: entity.to_string(),
        lines: 0,
        linked: 0,
        unlinked: 0,
        events_pruned: 0,
        head: None,
        broken: None,
    };
    // The previous linked line's hash and action, once the chain began.
    let mut before: Option<(Hash, AuditAction)> = None;
    for (index, (id, line)) in lines.iter().enumerate() {
        verdict.lines += 1;
        let position = index as u64 + 1;
        let broken = |reason: String, line: Option<&StoredAuditLine>| AuditBreak {
            line: position,
            id: *id,
            from_version: line.map_or(0, |l| l.from_version),
            to_version: line.map_or(0, |l| l.to_version),
            reason,
        };
        let line = match line {
            Ok(line) => line,
            Err(reason) => {
                verdict.broken = Some(broken(reason.clone(), None));
                return verdict;
            }
        };
        let Some(link) = &line.link else {
            if before.is_some() {
                verdict.broken = Some(broken(
                    "has no hash, after the chain began (a hash was removed)".into(),
                    Some(line),
                ));
                return verdict;
            }
            verdict.unlinked += 1;
            continue;
        };
        if content_hash(line) != Some(link.hash) {
            verdict.broken = Some(broken(
                "its content does not match its hash (the line was edited)".into(),
                Some(line),
            ));
            return verdict;
        }
        let replaces =
            matches!(line.action, AuditAction::Erased | AuditAction::Expired) && link.replaced > 0;
        let links = match before {
            None => link.prev == GENESIS || replaces,
            Some((hash, action)) => {
                link.prev == hash || (link.prev == GENESIS && action == AuditAction::Expired)
            }
        };
        if !links {
            let reason = match before {
                None => "links to a line that is not there (lines before it were removed)",
                Some(_) => "does not link to the line before it (a line was removed or replaced)",
            };
            verdict.broken = Some(broken(reason.into(), Some(line)));
            return verdict;
        }
        if !replaces && link.events_to >= line.from_version && line.from_version > 0 {
            let mut events = GENESIS;
            let mut complete = true;
            for version in line.from_version..=link.events_to {
                match history.get(&version) {
                    Some(bytes) => events = fold_event(&events, version, bytes),
                    None => {
                        complete = false;
                        break;
                    }
                }
            }
            if !complete {
                verdict.events_pruned += 1;
            } else if events != link.events {
                verdict.broken = Some(broken(
                    format!(
                        "the history events {}..={} do not match its digest (history was edited)",
                        line.from_version, link.events_to
                    ),
                    Some(line),
                ));
                return verdict;
            }
        }
        verdict.linked += 1;
        verdict.head = Some(hex(&link.hash));
        before = Some((link.hash, line.action));
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Fields, Origin, Record, Timestamp, Value};
    use crate::store::keys::audit_key;
    use crate::store::StoreConfig;

    fn record(entity: &str, t: i64, source: &str, fields: &[(&str, Value)]) -> Record {
        Record {
            entity: entity.into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<Fields>(),
            event_time: Timestamp::from_secs(t),
            origin: Origin::new(source).with_actor("dev"),
        }
    }

    fn store(dir: &std::path::Path) -> Store {
        let mut config = StoreConfig::new(dir.join("s"));
        config.history_chunk_events = 4;
        config.history_block_events = 2;
        Store::open(config).expect("open")
    }

    /// Changes, no-change records, other origins, JSON values, sealed
    /// chunks: every line links and every events digest matches history.
    fn fill(store: &Store, entity: &str) {
        for t in 1..=12 {
            let source = if t % 5 == 0 { "http" } else { "mqtt:a" };
            let json = Value::Json(serde_json::json!({"n": t, "neg": -t, "f": 1.5, "s": [1, "x"]}));
            store
                .upsert(
                    "p",
                    &[record(
                        entity,
                        t,
                        source,
                        &[("temp", Value::Float((t / 3) as f64)), ("j", json)],
                    )],
                )
                .expect("upsert");
        }
    }

    #[test]
    fn an_untouched_chain_verifies_and_its_head_is_the_newest_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        fill(&store, "m");
        let verdict = store.verify_audit("p", "m").expect("verify");
        assert_eq!(verdict.broken, None, "{verdict:?}");
        assert!(verdict.linked >= 4, "{verdict:?}");
        assert_eq!((verdict.unlinked, verdict.events_pruned), (0, 0));
        let head = store.audit_head("p", "m").expect("head");
        assert_eq!(head, verdict.head);
        let lines = store
            .audit("p", "m", &crate::store::AuditQuery::default())
            .expect("audit");
        assert_eq!(lines.last().and_then(|l| l.hash.clone()), head);

        store.checkpoint().expect("checkpoint");
        let verdicts = store.verify_audit_product("p").expect("verify all");
        assert_eq!(verdicts.len(), 1);
        assert_eq!(verdicts[0], verdict);
    }

    #[test]
    fn erasure_and_re_creation_keep_the_chain_verifiable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        fill(&store, "m");
        let head = store.audit_head("p", "m").expect("head").expect("a head");
        assert!(store.erase("p", "m", &Origin::new("cli")).expect("erase"));
        let verdict = store.verify_audit("p", "m").expect("verify");
        assert_eq!((verdict.lines, verdict.linked), (1, 1), "{verdict:?}");
        assert_eq!(verdict.broken, None);
        // The Erased line commits to the head it replaced.
        let trees = store.product("p").expect("trees");
        let (_, line) = read_lines(&trees, "m", None).expect("lines").remove(0);
        let link = line.expect("decodes").link.expect("linked");
        assert_eq!(hex(&link.prev), head);
        assert!(link.replaced >= 4);

        fill(&store, "m");
        let verdict = store.verify_audit("p", "m").expect("verify");
        assert_eq!(verdict.broken, None, "{verdict:?}");
        assert!(verdict.linked >= 5);
    }

    #[test]
    fn an_edited_or_removed_line_or_edited_history_is_the_first_break() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        fill(&store, "m");
        store.checkpoint().expect("checkpoint");
        let trees = store.product("p").expect("trees");
        let lines = read_lines(&trees, "m", None).expect("lines");
        assert!(lines.len() >= 3);
        let (id, line) = &lines[1];
        let original = line.clone().expect("decodes");

        // Edited content: the second line names another actor.
        let mut edited = original.clone();
        edited.origin.actor = Some("someone else".into());
        let raw = trees.audit.sled();
        raw.insert(audit_key("m", *id), codec::encode(&edited).unwrap())
            .unwrap();
        store.raw_db();
        let broken = store
            .verify_audit("p", "m")
            .unwrap()
            .broken
            .expect("a break");
        assert_eq!((broken.line, broken.id), (2, *id));
        assert!(
            broken.reason.contains("does not match its hash"),
            "{broken:?}"
        );

        // Removed: the third line no longer links.
        raw.remove(audit_key("m", *id)).unwrap();
        store.raw_db();
        let broken = store
            .verify_audit("p", "m")
            .unwrap()
            .broken
            .expect("a break");
        assert_eq!(broken.line, 2);
        assert!(broken.reason.contains("does not link"), "{broken:?}");

        // Restored, it verifies again; then the hash stripped.
        let mut stripped = original.clone();
        stripped.link = None;
        raw.insert(audit_key("m", *id), codec::encode(&stripped).unwrap())
            .unwrap();
        store.raw_db();
        let broken = store
            .verify_audit("p", "m")
            .unwrap()
            .broken
            .expect("a break");
        assert!(broken.reason.contains("no hash"), "{broken:?}");
        raw.insert(audit_key("m", *id), codec::encode(&original).unwrap())
            .unwrap();
        store.raw_db();
        assert_eq!(store.verify_audit("p", "m").unwrap().broken, None);

        // Edited history: the newest event (in the open tail, its own key)
        // says another temperature; the line that covers it breaks.
        store
            .upsert(
                "p",
                &[record("m", 13, "mqtt:a", &[("temp", Value::Float(7.0))])],
            )
            .expect("upsert");
        store.checkpoint().expect("checkpoint");
        let bytes = trees.instances.sled().get("m").unwrap().unwrap();
        let state: crate::store::stored::StoredInstance = codec::decode(&bytes).unwrap();
        assert!(state.tail_len > 0, "an open tail");
        let key = crate::store::keys::tail_key("m", state.version);
        let history = trees.history.sled();
        let bytes = history.get(&key).unwrap().expect("the newest event's key");
        let mut event: crate::store::stored::StoredEvent = codec::decode(&bytes).unwrap();
        event.fields.insert("temp".into(), Value::Float(-40.0));
        history
            .insert(key, codec::encode_positional(&event).unwrap())
            .unwrap();
        store.raw_db();
        let broken = store
            .verify_audit("p", "m")
            .unwrap()
            .broken
            .expect("a break");
        assert!(broken.reason.contains("history events"), "{broken:?}");
        assert!(broken.to_version >= event.version || broken.from_version <= event.version);
    }

    #[test]
    fn lines_from_before_the_chain_read_and_count_as_unlinked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        fill(&store, "m");
        store.checkpoint().expect("checkpoint");
        let trees = store.product("p").expect("trees");
        // Strip every link, as store format 4 wrote lines.
        let raw = trees.audit.sled();
        for (id, line) in read_lines(&trees, "m", None).expect("lines") {
            let mut line = line.expect("decodes");
            line.link = None;
            raw.insert(audit_key("m", id), codec::encode(&line).unwrap())
                .unwrap();
        }
        let instances = trees.instances.sled();
        let bytes = instances.get("m").unwrap().unwrap();
        let mut state: crate::store::stored::StoredInstance = codec::decode(&bytes).unwrap();
        if let Some(open) = state.audit_open.as_mut() {
            open.line.link = None;
        }
        instances
            .insert("m", codec::encode(&state).unwrap())
            .unwrap();
        store.raw_db();
        let before = store.verify_audit("p", "m").expect("verify");
        assert_eq!(before.linked, 0);
        assert_eq!(before.broken, None);
        assert_eq!(store.audit_head("p", "m").unwrap(), None);
        // New lines start the chain after them.
        store
            .upsert(
                "p",
                &[record("m", 20, "other", &[("temp", Value::Float(99.0))])],
            )
            .expect("upsert");
        let after = store.verify_audit("p", "m").expect("verify");
        assert_eq!(after.broken, None, "{after:?}");
        assert_eq!((after.unlinked, after.linked), (before.lines, 1));
    }
}
