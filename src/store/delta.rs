//! Byte deltas of a value against its previous value, for journal frames
//! (see `journal.rs`, "Record deltas").
//!
//! A record rewrites its entity's instance: the changed current fields,
//! version and timestamps near the front, one more event at the end of the
//! open tail, the rest (field names, the tail's earlier events, the audit
//! line) as before. A frame that carried the whole instance carried
//! ~1.7 KiB per record for ~150 B of news; a delta carries the news and a
//! few copy instructions.
//!
//! The encoding is a greedy LZ77 against the base (8-byte matches found
//! through a hash of the base's every position, extended both ways), so
//! it finds what moved as well as what stayed, whatever the value's
//! layout: no knowledge of MessagePack or of the instance's fields, which
//! keeps replay independent of the code that made the value.
//!
//! Layout: target length (varint), base length (varint), CRC-32 of the
//! base (`u32` BE), then operations until the target is complete, each a
//! varint `len << 1 | kind`: kind 0 is a literal of `len` bytes that
//! follow; kind 1 copies `len` bytes of the base from the offset (varint)
//! that follows. [`apply`] refuses a delta whose base differs (length or
//! checksum) or whose operations overrun either side: a wrong base is
//! corruption, never a silently different value.

/// Shortest match worth a copy (a copy costs 2–5 bytes of operation).
const MIN_MATCH: usize = 8;
/// Values shorter than this are written whole: a delta saves little.
pub(crate) const MIN_DELTA_INPUT: usize = 64;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

fn hash8(bytes: &[u8], bits: u32) -> usize {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    (u64::from_le_bytes(word).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
}

fn push_literal(out: &mut Vec<u8>, literal: &[u8]) {
    if !literal.is_empty() {
        put_varint(out, (literal.len() as u64) << 1);
        out.extend_from_slice(literal);
    }
}

/// Appends the delta that turns `base` into `target` to `out`. The caller
/// keeps whichever of delta and whole value is shorter.
pub(crate) fn encode(base: &[u8], target: &[u8], out: &mut Vec<u8>) {
    put_varint(out, target.len() as u64);
    put_varint(out, base.len() as u64);
    out.extend_from_slice(&crc32fast::hash(base).to_be_bytes());
    // Table of base positions (+1; 0 is empty) by the hash of the 8 bytes
    // there, every `STEP`th position: a match of `MIN_MATCH + STEP - 1`
    // bytes or more covers one, and extending it backwards finds its
    // start. A quarter of the hashing, for the few bytes of shorter
    // matches lost.
    const STEP: usize = 4;
    let bits = ((base.len() / STEP)
        .max(64)
        .next_power_of_two()
        .trailing_zeros()
        + 1)
    .min(20);
    let mut table = vec![0u32; 1 << bits];
    if base.len() >= MIN_MATCH {
        for pos in (0..=base.len() - MIN_MATCH).step_by(STEP) {
            table[hash8(&base[pos..], bits)] = pos as u32 + 1;
        }
    }
    let mut literal_start = 0usize;
    let mut i = 0usize;
    while i + MIN_MATCH <= target.len() {
        let candidate = table[hash8(&target[i..], bits)] as usize;
        if candidate == 0
            || base[candidate - 1..candidate - 1 + MIN_MATCH] != target[i..i + MIN_MATCH]
        {
            i += 1;
            continue;
        }
        let (mut from, mut at) = (candidate - 1, i);
        // Backwards into the pending literal, then forwards.
        while at > literal_start && from > 0 && base[from - 1] == target[at - 1] {
            from -= 1;
            at -= 1;
        }
        let mut end = i + MIN_MATCH;
        let mut base_end = candidate - 1 + MIN_MATCH;
        while end < target.len() && base_end < base.len() && base[base_end] == target[end] {
            end += 1;
            base_end += 1;
        }
        push_literal(out, &target[literal_start..at]);
        put_varint(out, ((end - at) as u64) << 1 | 1);
        put_varint(out, from as u64);
        literal_start = end;
        i = end;
    }
    push_literal(out, &target[literal_start..]);
}

/// Rebuilds the target from `base` and a delta made by [`encode`]; `None`
/// if the delta is malformed or was made against another base.
pub(crate) fn apply(base: &[u8], mut delta: &[u8]) -> Option<Vec<u8>> {
    let len = usize::try_from(get_varint(&mut delta)?).ok()?;
    let base_len = usize::try_from(get_varint(&mut delta)?).ok()?;
    let crc = u32::from_be_bytes(delta.get(..4)?.try_into().ok()?);
    delta = delta.get(4..)?;
    if base_len != base.len() || crc != crc32fast::hash(base) {
        return None;
    }
    // Bounded by the delta itself: no output larger than what the
    // operations could make (a literal byte each, a copy at most the base).
    if len > delta.len().saturating_mul(base.len().max(1)) {
        return None;
    }
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let op = get_varint(&mut delta)?;
        let n = usize::try_from(op >> 1).ok()?;
        if n == 0 || out.len() + n > len {
            return None;
        }
        if op & 1 == 0 {
            out.extend_from_slice(delta.get(..n)?);
            delta = delta.get(n..)?;
        } else {
            let from = usize::try_from(get_varint(&mut delta)?).ok()?;
            out.extend_from_slice(base.get(from..from.checked_add(n)?)?);
        }
    }
    delta.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(base: &[u8], target: &[u8]) -> usize {
        let mut delta = Vec::new();
        encode(base, target, &mut delta);
        assert_eq!(apply(base, &delta).as_deref(), Some(target));
        for cut in 0..delta.len() {
            assert!(apply(base, &delta[..cut]).is_none(), "cut at {cut}");
        }
        delta.len()
    }

    #[test]
    fn an_appended_event_and_changed_fields_cost_what_changed() {
        let mut base = b"\x8d\xa6fields\x86\xa4temp\xcb@D\x00\x00\x00\x00\x00\x00".to_vec();
        base.extend((0..40u8).flat_map(|i| {
            let mut event = b"\xc4\x20event-".to_vec();
            event.extend(std::iter::repeat_n(i, 26));
            event
        }));
        base.extend_from_slice(b"\xabhistory_rev\x00");
        let mut target = base.clone();
        target[15] = b'E';
        let at = target.len() - 13;
        target.splice(
            at..at,
            b"\xc4\x20event-new-one-with-its-own-bytes".iter().copied(),
        );
        let size = round_trip(&base, &target);
        assert!(size < 70, "{size} B for a {} B target", target.len());
    }

    #[test]
    fn any_pair_round_trips_and_a_wrong_base_is_refused() {
        let mut seed = 0x1234_5678_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let base: Vec<u8> = (0..next() % 400).map(|_| (next() % 4) as u8).collect();
            let mut target = base.clone();
            for _ in 0..next() % 6 {
                let at = (next() as usize) % (target.len() + 1);
                match next() % 3 {
                    0 => target.insert(at, next() as u8),
                    1 if at < target.len() => {
                        target.remove(at);
                    }
                    _ => target
                        .splice(at..at, base.iter().take(30).copied())
                        .for_each(drop),
                }
            }
            round_trip(&base, &target);
            let mut delta = Vec::new();
            encode(&base, &target, &mut delta);
            let mut other = base.clone();
            other.push(1);
            assert!(apply(&other, &delta).is_none());
            other.pop();
            if let Some(first) = other.first_mut() {
                *first ^= 0xff;
                assert!(apply(&other, &delta).is_none());
            }
        }
        round_trip(b"", b"");
        round_trip(b"", b"only literal bytes here");
        round_trip(b"a base that is not used at all", b"");
    }
}
