//! The envelope: what one sync batch carries on the wire, and its codec
//! (MessagePack with field names, zstd-compressed). Pure: bytes in, typed
//! envelope out, with a bound on the decompressed size.
//!
//! An envelope holds consecutive outbox entries of one priority lane of
//! one upstream link of one origin node, in ascending sequence order.
//! Receivers keep one high-water mark per (origin, link, lane) and skip
//! records at or below it.

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::record::{Fields, Timestamp};
use crate::store::PendingEntry;

/// The envelope format this build writes and reads.
pub const ENVELOPE_FORMAT: u32 = 1;
/// The content type of `POST /sync/v1` bodies.
pub const CONTENT_TYPE: &str = "application/vnd.meshlet.sync+zstd";
/// Largest decompressed envelope accepted (zip bombs stop here).
pub const MAX_DECODED_BYTES: u64 = 64 << 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub format: u32,
    /// The origin node's id.
    pub origin: String,
    /// The origin's name for this upstream link: an edge with two
    /// upstreams that reach the same aggregator has two independent
    /// sequences of envelopes.
    pub link: String,
    /// The priority lane (sequence numbers ascend within it).
    pub lane: u8,
    /// Entries the origin still holds for this link after this envelope
    /// (for the aggregator's `nodes` status).
    #[serde(default)]
    pub pending: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: Vec<EnvelopeRecord>,
}

/// One outbox entry as sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnvelopeRecord {
    pub seq: u64,
    pub product: String,
    /// The product definition's `version` at the origin.
    pub definition_version: u32,
    /// The entity key as the upstream sees it (pseudonymised if masked).
    pub entity: String,
    pub event_time: Timestamp,
    /// Projected and masked fields; empty for a tombstone.
    pub fields: Fields,
    /// The entity was erased at the origin: erase it here too.
    pub tombstone: bool,
}

/// Why bytes are not an envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is not zstd data: {0}")]
    Compression(String),
    #[error("envelope is larger than {MAX_DECODED_BYTES} bytes decompressed")]
    TooLarge,
    #[error("envelope does not decode: {0}")]
    Decode(String),
    #[error("envelope format {0} is not supported (this node reads {ENVELOPE_FORMAT})")]
    Format(u32),
    #[error("envelope is inconsistent: {0}")]
    Invalid(&'static str),
    #[error("envelope does not encode: {0}")]
    Encode(String),
}

impl Envelope {
    /// The envelope for a batch read from one lane of the outbox.
    pub fn from_entries(
        origin: &str,
        link: &str,
        pending: u64,
        entries: &[PendingEntry],
    ) -> Option<Envelope> {
        let first = entries.first()?;
        let last = entries.last()?;
        Some(Envelope {
            format: ENVELOPE_FORMAT,
            origin: origin.to_string(),
            link: link.to_string(),
            lane: first.entry.item.priority,
            pending,
            first_seq: first.entry.seq,
            last_seq: last.entry.seq,
            records: entries
                .iter()
                .map(|p| EnvelopeRecord {
                    seq: p.entry.seq,
                    product: p.entry.item.product.clone(),
                    definition_version: p.entry.item.definition_version,
                    entity: p.entry.item.sent_entity.clone(),
                    event_time: p.entry.item.event_time,
                    fields: p.entry.item.fields.clone(),
                    tombstone: p.entry.item.tombstone,
                })
                .collect(),
        })
    }

    pub fn encode(&self, zstd_level: i32) -> Result<Vec<u8>, EnvelopeError> {
        let plain =
            rmp_serde::to_vec_named(self).map_err(|e| EnvelopeError::Encode(e.to_string()))?;
        zstd::encode_all(plain.as_slice(), zstd_level)
            .map_err(|e| EnvelopeError::Encode(e.to_string()))
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let decoder =
            zstd::Decoder::new(bytes).map_err(|e| EnvelopeError::Compression(e.to_string()))?;
        let mut plain = Vec::new();
        decoder
            .take(MAX_DECODED_BYTES + 1)
            .read_to_end(&mut plain)
            .map_err(|e| EnvelopeError::Compression(e.to_string()))?;
        if plain.len() as u64 > MAX_DECODED_BYTES {
            return Err(EnvelopeError::TooLarge);
        }
        let envelope: Envelope =
            rmp_serde::from_slice(&plain).map_err(|e| EnvelopeError::Decode(e.to_string()))?;
        envelope.check()?;
        Ok(envelope)
    }

    /// Sequence numbers ascend and match the declared range; the origin is
    /// a usable name.
    fn check(&self) -> Result<(), EnvelopeError> {
        if self.format != ENVELOPE_FORMAT {
            return Err(EnvelopeError::Format(self.format));
        }
        let origin_ok = !self.origin.is_empty()
            && self.origin.len() <= 128
            && self
                .origin
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !origin_ok {
            return Err(EnvelopeError::Invalid(
                "origin must be 1-128 characters of [A-Za-z0-9._-]",
            ));
        }
        if self.link.is_empty() || self.link.len() > 128 {
            return Err(EnvelopeError::Invalid("link must be 1-128 bytes"));
        }
        if self.records.is_empty() {
            return Err(EnvelopeError::Invalid("no records"));
        }
        if !self.records.windows(2).all(|w| w[0].seq < w[1].seq) {
            return Err(EnvelopeError::Invalid("sequence numbers do not ascend"));
        }
        let first = self.records.first().map(|r| r.seq);
        let last = self.records.last().map(|r| r.seq);
        if first != Some(self.first_seq) || last != Some(self.last_seq) {
            return Err(EnvelopeError::Invalid(
                "sequence range does not match the records",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Value;

    fn sample() -> Envelope {
        Envelope {
            format: ENVELOPE_FORMAT,
            origin: "edge-1".into(),
            link: "central".into(),
            lane: 1,
            pending: 4,
            first_seq: 3,
            last_seq: 9,
            records: vec![
                EnvelopeRecord {
                    seq: 3,
                    product: "p".into(),
                    definition_version: 2,
                    entity: "m1".into(),
                    event_time: Timestamp::from_secs(10),
                    fields: Fields::from([("t".to_string(), Value::Float(1.5))]),
                    tombstone: false,
                },
                EnvelopeRecord {
                    seq: 9,
                    product: "p".into(),
                    definition_version: 2,
                    entity: "m2".into(),
                    event_time: Timestamp::from_secs(11),
                    fields: Fields::new(),
                    tombstone: true,
                },
            ],
        }
    }

    #[test]
    fn round_trips() {
        let e = sample();
        let bytes = e.encode(3).expect("encodes");
        assert_eq!(Envelope::decode(&bytes).expect("decodes"), e);
    }

    #[test]
    fn refuses_garbage_bad_order_and_bad_origin() {
        assert!(matches!(
            Envelope::decode(b"not zstd"),
            Err(EnvelopeError::Compression(_))
        ));
        let mut e = sample();
        e.records.swap(0, 1);
        let bytes = e.encode(3).expect("encodes");
        assert!(matches!(
            Envelope::decode(&bytes),
            Err(EnvelopeError::Invalid(_))
        ));
        let mut e = sample();
        e.origin = "a/b".into();
        let bytes = e.encode(3).expect("encodes");
        assert!(matches!(
            Envelope::decode(&bytes),
            Err(EnvelopeError::Invalid(_))
        ));
    }

    proptest::proptest! {
        /// Untrusted bytes: any input is an envelope or a typed error.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = Envelope::decode(&bytes);
            if let Ok(compressed) = zstd::encode_all(bytes.as_slice(), 1) {
                let _ = Envelope::decode(&compressed);
            }
        }
    }

    #[test]
    fn refuses_a_zip_bomb() {
        let zeros = vec![0u8; (MAX_DECODED_BYTES + 10) as usize];
        let bytes = zstd::encode_all(zeros.as_slice(), 3).expect("compresses");
        assert!(matches!(
            Envelope::decode(&bytes),
            Err(EnvelopeError::TooLarge)
        ));
    }
}
