//! Key layout of the per-product trees.
//!
//! - `instances`: the entity key's bytes, so a scan is ordered by entity key.
//! - `tombstones`: the entity key's bytes.
//! - `history`: `u16 BE key length | entity bytes | tag | u64 BE version`,
//!   tag [`TAG_CHUNK`] (0) for a sealed chunk keyed by its first version,
//!   [`TAG_TAIL`] (1) for one open-tail event. The length prefix makes one
//!   entity's keys a contiguous range that no other entity's keys share
//!   (`ab` and `abc` differ in the prefix), and the tag sorts every sealed
//!   chunk before the tail, so a prefix scan yields history in version order.
//! - `audit`: `u16 BE key length | entity bytes | u64 BE line id`, ids from
//!   sled's monotonic id generator, so lines are in chronological order and
//!   never collide across erase and re-creation.

pub(crate) const TAG_CHUNK: u8 = 0;
pub(crate) const TAG_TAIL: u8 = 1;

/// The length-prefixed entity key shared by the history and audit keys.
/// Callers have checked that the key fits in a `u16`.
pub(crate) fn entity_prefix(entity: &str) -> Vec<u8> {
    let bytes = entity.as_bytes();
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    let mut key = Vec::with_capacity(2 + bytes.len() + 9);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(&bytes[..usize::from(len)]);
    key
}

pub(crate) fn history_key(entity: &str, tag: u8, version: u64) -> Vec<u8> {
    let mut key = entity_prefix(entity);
    key.push(tag);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

pub(crate) fn chunk_key(entity: &str, first_version: u64) -> Vec<u8> {
    history_key(entity, TAG_CHUNK, first_version)
}

pub(crate) fn tail_key(entity: &str, version: u64) -> Vec<u8> {
    history_key(entity, TAG_TAIL, version)
}

pub(crate) fn audit_key(entity: &str, id: u64) -> Vec<u8> {
    let mut key = entity_prefix(entity);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// `(tag, version)` of a history key, `None` if it is malformed.
pub(crate) fn parse_history_key(key: &[u8]) -> Option<(u8, u64)> {
    let len = usize::from(u16::from_be_bytes([*key.first()?, *key.get(1)?]));
    let rest = key.get(2 + len..)?;
    if rest.len() != 9 {
        return None;
    }
    let version = u64::from_be_bytes(rest[1..9].try_into().ok()?);
    Some((rest[0], version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keys_sort_chunks_before_tail_and_by_version() {
        let mut keys = vec![
            tail_key("m1", 3),
            chunk_key("m1", 300),
            tail_key("m1", 2),
            chunk_key("m1", 1),
            tail_key("m1", 256),
        ];
        keys.sort();
        assert_eq!(
            keys,
            vec![
                chunk_key("m1", 1),
                chunk_key("m1", 300),
                tail_key("m1", 2),
                tail_key("m1", 3),
                tail_key("m1", 256),
            ]
        );
    }

    #[test]
    fn one_entity_prefix_never_covers_another_entity() {
        let p = entity_prefix("ab");
        assert!(!history_key("abc", TAG_TAIL, 1).starts_with(&p));
        assert!(!audit_key("ab\u{0}", 1).starts_with(&p));
        assert!(history_key("ab", TAG_TAIL, u64::MAX).starts_with(&p));
        assert!(audit_key("ab", 9).starts_with(&p));
    }

    #[test]
    fn keys_parse_back() {
        assert_eq!(
            parse_history_key(&tail_key("é/x", 42)),
            Some((TAG_TAIL, 42))
        );
        assert_eq!(parse_history_key(&chunk_key("", 7)), Some((TAG_CHUNK, 7)));
        assert_eq!(parse_history_key(&[0, 5, b'a']), None);
        assert_eq!(parse_history_key(&[]), None);
    }
}
