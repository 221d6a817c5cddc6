//! Audit coalescing and the audit hash chain (pure).
//!
//! An audit line says who changed an entity and which fields, never the
//! values. Consecutive `Updated` changes from the same origin (same source
//! and same actor) extend one line: `last_at`, `to_version` and `count`
//! grow and `fields` becomes the union of field names. Records that change
//! no value add nothing (they are still history events), so they neither
//! extend nor break a line. A different origin, or any other action
//! (`Created`, `Erased`, `Expired`), starts a new line: creation stays
//! visible on its own line even when the same device keeps updating.
//!
//! # The chain
//!
//! Why: a consumer must be able to tell that nobody edited or removed an
//! entity's audit lines after the fact. Each line carries an
//! [`AuditLink`]: the SHA-256 of the line before it (`prev`), a digest of
//! the history events it covers (`events`, every event from its
//! `from_version` to `events_to`, including records that changed no
//! value), and the SHA-256 of its own content (`hash`: action, times,
//! versions, count, field names, source and actor, `prev`, `events`;
//! never values). The newest line's hash is the entity's *head*
//! (`auditHead` in GraphQL): anyone who kept a head can later prove that
//! every line up to it is unchanged (`meshlet audit verify`,
//! `auditVerified`). A chain alone does not stop someone who rewrites every
//! line and hash after an edit; a head kept elsewhere does.
//!
//! Where a chain starts: at the first line that has a link. Lines written
//! before (store format 4 as it was, no `link`) still read and are reported
//! as unchained; a line without a link after a linked one is a break. The
//! first linked line links to zero, except an `Erased`/`Expired` line,
//! which links to the head of the lines it replaced and counts them
//! (`replaced`): erasure removes the lines but the chain stays verifiable,
//! and the line commits to what it replaced. An entity re-created after an
//! erasure links its `Created` line to the `Erased` line (its hash rides
//! in the tombstone); one re-created after expiry starts at zero again
//! right after the `Expired` line (expiry keeps no tombstone).

use ring::digest::{Context, SHA256};

use super::stored::{AuditLink, StoredAuditLine};
use super::types::AuditAction;
use crate::record::{Origin, Timestamp};

/// A SHA-256 digest.
pub(crate) type Hash = [u8; 32];

/// The `prev` of the first line of a chain.
pub(crate) const GENESIS: Hash = [0; 32];

/// Domain separation: a line hash is never a valid event digest.
const LINE_DOMAIN: &[u8] = b"meshlet audit line v1\0";
const EVENTS_DOMAIN: &[u8] = b"meshlet audit events v1\0";

/// One audit-worthy change.
pub(crate) struct AuditChange<'a> {
    pub action: AuditAction,
    pub version: u64,
    pub at: Timestamp,
    pub fields: &'a [String],
    pub origin: &'a Origin,
}

/// Extends `previous` with `change` if they coalesce; otherwise returns the
/// new line to append. `Ok` = the extended previous line, `Err` = a new line.
// `Err` is not an error here but the other outcome, moved once per change;
// the line grew past the lint's size with its chain link.
#[allow(clippy::result_large_err)]
pub(crate) fn coalesce(
    previous: Option<&StoredAuditLine>,
    change: &AuditChange<'_>,
) -> Result<StoredAuditLine, StoredAuditLine> {
    match previous {
        Some(prev)
            if prev.action == AuditAction::Updated
                && change.action == AuditAction::Updated
                && prev.origin == *change.origin =>
        {
            let mut line = prev.clone();
            line.last_at = line.last_at.max(change.at);
            line.to_version = change.version;
            line.count += 1;
            for name in change.fields {
                if let Err(pos) = line.fields.binary_search(name) {
                    line.fields.insert(pos, name.clone());
                }
            }
            Ok(line)
        }
        _ => {
            let mut fields = change.fields.to_vec();
            fields.sort();
            fields.dedup();
            Err(StoredAuditLine {
                first_at: change.at,
                last_at: change.at,
                action: change.action,
                from_version: change.version,
                to_version: change.version,
                count: 1,
                fields,
                origin: change.origin.clone(),
                link: None,
            })
        }
    }
}

/// Starts the chain of a new line after the line whose hash is `prev`
/// ([`GENESIS`] for the first), covering no event yet.
pub(crate) fn link_after(line: &mut StoredAuditLine, prev: Hash) {
    line.link = Some(AuditLink {
        prev,
        events: GENESIS,
        events_to: 0,
        replaced: 0,
        hash: GENESIS,
    });
    rehash(line);
}

/// Links an `Erased`/`Expired` line to the head of the `replaced` lines it
/// stands for (`head` is [`GENESIS`] when none of them was linked).
pub(crate) fn link_replacing(line: &mut StoredAuditLine, head: Hash, replaced: u64) {
    link_after(line, head);
    if let Some(link) = line.link.as_mut() {
        link.replaced = replaced;
    }
    rehash(line);
}

/// Folds one history event (its encoded bytes, as the writer appended
/// them) into a line's events digest; a line without a link is left as
/// it is (a line from before the chain stays unchained).
pub(crate) fn cover_event(line: &mut StoredAuditLine, version: u64, event: &[u8]) {
    let Some(link) = line.link.as_mut() else {
        return;
    };
    link.events = fold_event(&link.events, version, event);
    link.events_to = version;
    rehash(line);
}

/// `events' = SHA-256(domain ‖ events ‖ version ‖ event bytes)`.
pub(crate) fn fold_event(events: &Hash, version: u64, event: &[u8]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(EVENTS_DOMAIN);
    ctx.update(events);
    ctx.update(&version.to_be_bytes());
    ctx.update(event);
    digest(ctx)
}

/// Recomputes the line's own hash after a change to it.
pub(crate) fn rehash(line: &mut StoredAuditLine) {
    if let Some(hash) = content_hash(line) {
        if let Some(link) = line.link.as_mut() {
            link.hash = hash;
        }
    }
}

/// The hash a linked line must carry: SHA-256 over a fixed,
/// length-prefixed layout of its content (never values), `prev`,
/// `events`, `events_to` and `replaced`. `None` for an unlinked line.
pub(crate) fn content_hash(line: &StoredAuditLine) -> Option<Hash> {
    let link = line.link.as_ref()?;
    let mut ctx = Context::new(&SHA256);
    ctx.update(LINE_DOMAIN);
    ctx.update(&link.prev);
    ctx.update(&[match line.action {
        AuditAction::Created => 1,
        AuditAction::Updated => 2,
        AuditAction::Erased => 3,
        AuditAction::Expired => 4,
    }]);
    ctx.update(&line.first_at.0.to_be_bytes());
    ctx.update(&line.last_at.0.to_be_bytes());
    ctx.update(&line.from_version.to_be_bytes());
    ctx.update(&line.to_version.to_be_bytes());
    ctx.update(&line.count.to_be_bytes());
    ctx.update(&(line.fields.len() as u64).to_be_bytes());
    for name in &line.fields {
        put_str(&mut ctx, name);
    }
    put_str(&mut ctx, &line.origin.source);
    match &line.origin.actor {
        Some(actor) => {
            ctx.update(&[1]);
            put_str(&mut ctx, actor);
        }
        None => ctx.update(&[0]),
    }
    ctx.update(&link.events);
    ctx.update(&link.events_to.to_be_bytes());
    ctx.update(&link.replaced.to_be_bytes());
    Some(digest(ctx))
}

fn put_str(ctx: &mut Context, s: &str) {
    ctx.update(&(s.len() as u64).to_be_bytes());
    ctx.update(s.as_bytes());
}

fn digest(ctx: Context) -> Hash {
    let mut out = GENESIS;
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// An open `Updated` line, for `benches/micro.rs` to time exactly what
/// the chain adds to the writer's work for one record: [`cover_event`]
/// (fold the encoded event into the digest, rehash the line).
#[doc(hidden)]
pub struct BenchLine(StoredAuditLine);

impl BenchLine {
    pub fn new(fields: &[String], origin: &Origin) -> BenchLine {
        let mut line = StoredAuditLine {
            first_at: Timestamp(1),
            last_at: Timestamp(2),
            action: AuditAction::Updated,
            from_version: 1,
            to_version: 1,
            count: 1,
            fields: fields.to_vec(),
            origin: origin.clone(),
            link: None,
        };
        link_after(&mut line, GENESIS);
        BenchLine(line)
    }

    /// One record's chain work; the new hash.
    pub fn step(&mut self, version: u64, event: &[u8]) -> Hash {
        cover_event(&mut self.0, version, event);
        self.0.link.as_ref().map_or(GENESIS, |l| l.hash)
    }
}

/// Lower-case hex of a hash, as the CLI and GraphQL show it.
pub fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change<'a>(
        action: AuditAction,
        version: u64,
        fields: &'a [String],
        origin: &'a Origin,
    ) -> AuditChange<'a> {
        AuditChange {
            action,
            version,
            at: Timestamp(version as i64 * 10),
            fields,
            origin,
        }
    }

    #[test]
    fn same_origin_updates_coalesce_with_union_of_fields() {
        let dev = Origin::new("mqtt:a").with_actor("dev1");
        let f_a = vec!["a".to_string()];
        let f_b = vec!["b".to_string(), "a".to_string()];
        let line = coalesce(None, &change(AuditAction::Updated, 2, &f_a, &dev)).unwrap_err();
        let line = coalesce(Some(&line), &change(AuditAction::Updated, 5, &f_b, &dev)).unwrap();
        assert_eq!((line.from_version, line.to_version, line.count), (2, 5, 2));
        assert_eq!(
            (line.first_at, line.last_at),
            (Timestamp(20), Timestamp(50))
        );
        assert_eq!(line.fields, vec!["a", "b"]);
    }

    #[test]
    fn other_origin_actor_or_action_starts_a_new_line() {
        let dev = Origin::new("mqtt:a").with_actor("dev1");
        let other_actor = Origin::new("mqtt:a").with_actor("dev2");
        let fields = vec!["a".to_string()];
        let created = coalesce(None, &change(AuditAction::Created, 1, &fields, &dev)).unwrap_err();
        let upd = coalesce(
            Some(&created),
            &change(AuditAction::Updated, 2, &fields, &dev),
        );
        let upd = upd.expect_err("an update does not fold into the Created line");
        assert!(coalesce(
            Some(&upd),
            &change(AuditAction::Updated, 3, &fields, &other_actor)
        )
        .is_err());
        assert!(coalesce(Some(&upd), &change(AuditAction::Erased, 3, &[], &dev)).is_err());
    }
}
