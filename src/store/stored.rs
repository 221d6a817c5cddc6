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
    /// First versions of the sealed *blocks* (small chunks of
    /// `history_block_events`) not yet merged into a full chunk, oldest
    /// first. Merging reads exactly these keys, like sealing reads the tail
    /// (no range scan inside a transaction). Empty when blocks are off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<u64>,
    /// Id of the newest audit line, the one a change may coalesce into.
    /// Since store format 2 that line is [`StoredInstance::audit_open`];
    /// an instance written before has it in the audit tree, and its next
    /// change moves it here.
    #[serde(default)]
    pub audit_tail: Option<u64>,
    /// The newest audit line, kept in the instance while changes coalesce
    /// into it and written to the audit tree under its id once a change
    /// starts a new line. Why: extending a line in the tree cost every
    /// record a read and a write of its own key; here it rides on the
    /// instance write the record makes anyway. Readers add it after the
    /// tree's lines (`Store::audit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_open: Option<OpenAuditLine>,
    /// The open tail's events, oldest first, in an instance written by
    /// store format 3 (`codec::encode_positional` of a [`StoredEvent`]).
    /// Since then every open-tail event has its own history key
    /// (`keys::tail_key`, `write.rs` says why); the next write or
    /// retention sweep of such an instance moves these out to their keys,
    /// and readers read both (these are newer than any tail key).
    /// `tail_len` counts the events in both places.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tail: Vec<TailEvent>,
    /// Bumped by every retention rewrite, so a reader that sees the same
    /// instance bytes before and after reading history knows no write
    /// touched that history in between.
    #[serde(default)]
    pub history_rev: u64,
}

impl StoredInstance {
    /// An entity's state before its first record is merged: no fields,
    /// version 0, seen first and last at `received_at`.
    pub fn empty(received_at: Timestamp, event_time: Timestamp, origin: Origin) -> StoredInstance {
        StoredInstance {
            fields: Fields::new(),
            version: 0,
            first_seen: received_at,
            last_seen: received_at,
            event_time,
            last_origin: origin,
            tail_start: 1,
            tail_len: 0,
            blocks: Vec::new(),
            audit_tail: None,
            audit_open: None,
            tail: Vec::new(),
            history_rev: 0,
        }
    }

    /// `codec::encode`, into a buffer sized for the open tail it carries.
    pub fn encode(&self) -> Result<Vec<u8>, super::codec::CodecError> {
        let tail: usize = self.tail.iter().map(|t| t.0.len() + 3).sum();
        super::codec::encode_sized(self, 256 + tail)
    }

    /// The state a reader sees, copied (the writer keeps this one).
    pub fn to_instance(&self, entity: &str) -> Instance {
        StoredState {
            fields: self.fields.clone(),
            version: self.version,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            event_time: self.event_time,
            last_origin: self.last_origin.clone(),
        }
        .into_instance(entity)
    }
}

/// The part of an `instances` value that readers return (the same
/// MessagePack map, other keys skipped).
#[derive(Deserialize)]
pub(crate) struct StoredState {
    pub fields: Fields,
    pub version: u64,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    pub event_time: Timestamp,
    pub last_origin: Origin,
}

impl StoredState {
    /// The one place a stored state becomes the API's [`Instance`].
    pub fn into_instance(self, entity: &str) -> Instance {
        Instance {
            entity: entity.to_string(),
            fields: self.fields,
            version: self.version,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            event_time: self.event_time,
            last_origin: self.last_origin,
        }
    }
}

/// One encoded open-tail event in [`StoredInstance::tail`]
/// (`codec::encode_positional` of a [`StoredEvent`], or a moved-in tail
/// key's named encoding), stored as a MessagePack binary, so writing the
/// instance copies it instead of encoding every tail event again.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TailEvent(pub Vec<u8>);

impl TailEvent {
    pub fn decode(&self) -> Result<StoredEvent, super::codec::CodecError> {
        super::codec::decode(&self.0)
    }
}

impl Serialize for TailEvent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for TailEvent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl<'de> serde::de::Visitor<'de> for Bytes {
            type Value = TailEvent;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an encoded history event")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<TailEvent, E> {
                Ok(TailEvent(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<TailEvent, E> {
                Ok(TailEvent(v))
            }
        }
        deserializer.deserialize_bytes(Bytes)
    }
}

/// One history event, in the tail or inside a chunk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredEvent {
    pub version: u64,
    pub event_time: Timestamp,
    pub received_at: Timestamp,
    pub fields: Fields,
    pub origin: Origin,
}

/// A [`StoredEvent`] to encode, borrowing the record's fields and origin:
/// the writer appends every record to history and need not copy it for
/// that. Encodes to the same bytes (same fields, same order).
#[derive(Serialize)]
pub(crate) struct StoredEventRef<'a> {
    pub version: u64,
    pub event_time: Timestamp,
    pub received_at: Timestamp,
    pub fields: &'a Fields,
    pub origin: &'a Origin,
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

/// The newest audit line of an instance, with the id its audit key gets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct OpenAuditLine {
    pub id: u64,
    pub line: StoredAuditLine,
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
    /// Its link in the entity's audit hash chain (see `audit.rs`); `None`
    /// on lines written before the chain (store format 4 as it was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<AuditLink>,
}

/// An audit line's place in the hash chain, see `audit.rs`. Stored as one
/// MessagePack `bin` of [`AuditLink::BYTES`] (`prev ‖ events ‖ hash ‖
/// events_to ‖ replaced`, integers big-endian), not a map: the open line
/// rides in every instance write, and the names would add ~40 bytes.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct AuditLink {
    /// Hash of the line before (zero for the first of a chain; for an
    /// `Erased`/`Expired` line, the head of the lines it replaced).
    pub prev: [u8; 32],
    /// Digest of the history events from `from_version` to `events_to`.
    pub events: [u8; 32],
    pub events_to: u64,
    /// How many lines an `Erased`/`Expired` line replaced.
    pub replaced: u64,
    /// Hash of this line's content, `prev` and `events`.
    pub hash: [u8; 32],
}

impl AuditLink {
    pub const BYTES: usize = 3 * 32 + 2 * 8;
}

impl Serialize for AuditLink {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = [0u8; AuditLink::BYTES];
        out[..32].copy_from_slice(&self.prev);
        out[32..64].copy_from_slice(&self.events);
        out[64..96].copy_from_slice(&self.hash);
        out[96..104].copy_from_slice(&self.events_to.to_be_bytes());
        out[104..].copy_from_slice(&self.replaced.to_be_bytes());
        serializer.serialize_bytes(&out)
    }
}

impl<'de> Deserialize<'de> for AuditLink {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = deserializer.deserialize_byte_buf(bin::BytesVisitor)?;
        if bytes.len() != AuditLink::BYTES {
            return Err(serde::de::Error::invalid_length(
                bytes.len(),
                &"an audit link of 112 bytes",
            ));
        }
        let hash = |at: usize| {
            let mut h = [0u8; 32];
            h.copy_from_slice(&bytes[at..at + 32]);
            h
        };
        let int = |at: usize| {
            let mut n = [0u8; 8];
            n.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(n)
        };
        Ok(AuditLink {
            prev: hash(0),
            events: hash(32),
            hash: hash(64),
            events_to: int(96),
            replaced: int(104),
        })
    }
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
            hash: l.link.map(|link| super::audit::hex(&link.hash)),
        }
    }
}

/// Value of a `tombstones` key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredTombstone {
    pub erased_at: Timestamp,
    pub origin: Origin,
    pub last_version: u64,
    /// Hash of the `Erased` audit line, so a re-created entity's `Created`
    /// line links to it (see `audit.rs`); empty on older tombstones.
    #[serde(default, with = "bin", skip_serializing_if = "Vec::is_empty")]
    pub audit_head: Vec<u8>,
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

/// The dedupe window's bookkeeping, one per product (see `dedupe.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredDedupeState {
    /// Sequence number the next registered fingerprint gets.
    pub next_seq: u64,
    /// Fingerprints currently in the window.
    pub len: u64,
}

/// The quarantine's bookkeeping, one per product (see `quarantine.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredQuarantineState {
    /// Id the next quarantined item gets; ids are never reused, so this
    /// only grows (it starts at 1).
    pub next_id: u64,
    /// Entries currently held.
    pub len: u64,
}

/// Value of a quarantine entry key: everything needed to replay the item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredQuarantineEntry {
    pub quarantined_at: Timestamp,
    pub source: String,
    pub topic: Option<String>,
    pub captures: Vec<(String, String)>,
    /// MessagePack `bin`, not an array of integers: half the size or less.
    #[serde(with = "bin")]
    pub payload: Vec<u8>,
    pub reasons: Vec<String>,
    pub arrival: Timestamp,
    pub origin: Origin,
    pub index: Option<u32>,
    /// See [`QuarantineItem::entity`](super::types::QuarantineItem::entity).
    #[serde(default)]
    pub entity: Option<String>,
}

/// Value of a `source_offsets` key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredOffset {
    #[serde(with = "bin")]
    pub position: Vec<u8>,
    /// Arrival time of the batch that wrote it (for diagnostics).
    pub at: Timestamp,
}

/// A fingerprint as MessagePack `bin` (19 bytes with the format byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredFingerprint(#[serde(with = "bin16")] pub [u8; 16]);

/// `Vec<u8>` as MessagePack `bin` (what `serde_bytes` does, without the
/// dependency). Decoding also accepts an array of integers.
mod bin {
    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    pub(super) struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(byte) = seq.next_element()? {
                out.push(byte);
            }
            Ok(out)
        }
    }
}

/// `[u8; 16]` as MessagePack `bin`.
mod bin16 {
    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 16], D::Error> {
        let bytes = d.deserialize_byte_buf(super::bin::BytesVisitor)?;
        <[u8; 16]>::try_from(bytes.as_slice())
            .map_err(|_| de::Error::invalid_length(bytes.len(), &"16 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec;

    #[test]
    fn a_borrowed_event_encodes_as_the_owned_one() {
        let event = StoredEvent {
            version: 3,
            event_time: Timestamp(5),
            received_at: Timestamp(6),
            fields: Fields::from([("temp".to_string(), crate::record::Value::Float(1.5))]),
            origin: Origin::new("mqtt:a").with_actor("dev"),
        };
        let borrowed = StoredEventRef {
            version: event.version,
            event_time: event.event_time,
            received_at: event.received_at,
            fields: &event.fields,
            origin: &event.origin,
        };
        assert_eq!(
            codec::encode(&borrowed).unwrap(),
            codec::encode(&event).unwrap(),
        );
    }

    /// The tail rides as MessagePack binaries and round-trips; a reader's
    /// [`StoredState`] skips it and the open audit line and equals the
    /// full decode.
    #[test]
    fn an_instance_with_its_tail_round_trips_and_readers_skip_the_tail() {
        let event = StoredEvent {
            version: 7,
            event_time: Timestamp(5),
            received_at: Timestamp(6),
            fields: Fields::from([("temp".to_string(), crate::record::Value::Float(1.5))]),
            origin: Origin::new("mqtt:a"),
        };
        let tail = TailEvent(codec::encode(&event).unwrap());
        let state = StoredInstance {
            fields: event.fields.clone(),
            version: 7,
            first_seen: Timestamp(1),
            last_seen: Timestamp(6),
            event_time: Timestamp(5),
            last_origin: event.origin.clone(),
            tail_start: 7,
            tail_len: 1,
            blocks: vec![1],
            audit_tail: Some(3),
            audit_open: Some(OpenAuditLine {
                id: 3,
                line: StoredAuditLine {
                    first_at: Timestamp(1),
                    last_at: Timestamp(6),
                    action: AuditAction::Updated,
                    from_version: 2,
                    to_version: 7,
                    count: 6,
                    fields: vec!["temp".to_string()],
                    origin: event.origin.clone(),
                    link: None,
                },
            }),
            tail: vec![tail.clone()],
            history_rev: 0,
        };
        let bytes = codec::encode(&state).unwrap();
        // bin 8: 0xc4, then one byte of length.
        let window = [&[0xc4, tail.0.len() as u8][..], &tail.0].concat();
        assert!(
            bytes.windows(window.len()).any(|w| w == window.as_slice()),
            "the tail event is a binary holding the encoded event"
        );
        let positional = codec::encode_positional(&event).unwrap();
        assert!(positional.len() < tail.0.len(), "no field names");
        assert_eq!(TailEvent(positional).decode().unwrap(), event);
        let back: StoredInstance = codec::decode(&bytes).unwrap();
        assert_eq!(back, state);
        assert_eq!(back.tail[0].decode().unwrap(), event);
        let read: StoredState = codec::decode(&bytes).unwrap();
        assert_eq!(read.into_instance("m"), state.to_instance("m"));
    }

    #[test]
    fn payload_bytes_are_stored_as_bin_and_round_trip() {
        // Bytes ≥ 0x80 take two bytes each as a MessagePack integer array.
        let payload: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let entry = StoredQuarantineEntry {
            quarantined_at: Timestamp(1),
            source: "mqtt:0".into(),
            topic: Some("a/b".into()),
            captures: vec![("site".into(), "berlin".into())],
            payload: payload.clone(),
            reasons: vec!["bad".into()],
            arrival: Timestamp(2),
            origin: Origin::new("mqtt:a/b"),
            index: Some(3),
            entity: Some("b".into()),
        };
        let bytes = codec::encode(&entry).unwrap();
        assert!(
            bytes.len() < payload.len() + 256,
            "bin encoding, not an integer array: {} bytes",
            bytes.len()
        );
        assert_eq!(
            codec::decode::<StoredQuarantineEntry>(&bytes).unwrap(),
            entry
        );
        let fp = StoredFingerprint([7; 16]);
        let bytes = codec::encode(&fp).unwrap();
        assert_eq!(bytes.len(), 1 + 2 + 16);
        assert_eq!(codec::decode::<StoredFingerprint>(&bytes).unwrap(), fp);
        assert!(codec::decode::<StoredFingerprint>(
            &codec::encode(&StoredOffset {
                position: vec![1, 2],
                at: Timestamp(0)
            })
            .unwrap()
        )
        .is_err());
    }
}
