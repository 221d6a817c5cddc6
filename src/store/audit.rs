//! Audit coalescing (pure).
//!
//! An audit line says who changed an entity and which fields, never the
//! values. Consecutive `Updated` changes from the same origin (same source
//! and same actor) extend one line: `last_at`, `to_version` and `count`
//! grow and `fields` becomes the union of field names. Records that change
//! no value add nothing (they are still history events), so they neither
//! extend nor break a line. A different origin, or any other action
//! (`Created`, `Erased`, `Expired`), starts a new line: creation stays
//! visible on its own line even when the same device keeps updating.

use super::stored::StoredAuditLine;
use super::types::AuditAction;
use crate::record::{Origin, Timestamp};

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
            })
        }
    }
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
