//! Record fingerprints: a 128-bit digest of what a record says, for
//! dropping redelivered duplicates (MQTT QoS 1 is at-least-once, HTTP
//! senders retry).
//!
//! The digest covers the product, the entity, the event time (only when it
//! came from the payload) and every field with its type, in a length-
//! prefixed, type-tagged encoding, so no two different records encode to
//! the same bytes (`"ab" + "c"` is not `"a" + "bc"`, `Int(1)` is not
//! `Float(1.0)` is not `String("1")`).
//!
//! **The arrival time is left out on purpose.** A redelivery arrives later
//! than the original; including its arrival time would make every
//! redelivery look new. The price is that two genuine readings with the
//! same values and no event time in the payload fingerprint alike, so a
//! caller must only treat an equal fingerprint of an arrival-stamped record
//! (`event_time_from_payload == false`) as a duplicate when the transport
//! flags the delivery as a redelivery (MQTT DUP flag, an HTTP retry with
//! the same idempotency key); otherwise a sensor that reports the same
//! value twice would lose its second reading.
//!
//! Origin is left out too: the same reading relayed by two paths is still
//! one reading.

use std::fmt;

use serde_json::Value as Json;
use xxhash_rust::xxh3::Xxh3Default;

use crate::record::{Record, Value};

/// xxh3-128 of a record's canonical encoding. Ordered and hashable so it
/// can key a dedupe window directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 16]);

impl fmt::Display for Fingerprint {
    /// 32 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Bumped whenever the encoding changes, so fingerprints of different
/// encodings never compare equal by accident.
const ENCODING_VERSION: u8 = 1;

/// The fingerprint of `record` of product `product`. `event_time_from_payload`
/// says whether `record.event_time` is part of what the sender said (then
/// it is hashed) or the arrival time (then it is not; see the module docs).
pub fn fingerprint(product: &str, record: &Record, event_time_from_payload: bool) -> Fingerprint {
    let mut out = Encoder::new();
    out.byte(ENCODING_VERSION);
    out.str(product);
    out.str(&record.entity);
    if event_time_from_payload {
        out.byte(1);
        out.i64(record.event_time.as_micros());
    } else {
        out.byte(0);
    }
    out.len(record.fields.len());
    for (name, value) in &record.fields {
        out.str(name);
        out.value(value);
    }
    Fingerprint(out.digest().to_be_bytes())
}

/// Bytes gathered on the stack before they go to the hasher: most records
/// encode to less, so most are hashed in one call.
const CHUNK: usize = 512;

/// The canonical encoding: fixed-width little-endian integers, lengths
/// before contents, a tag before every value. Streamed into xxh3 (the
/// same digest as hashing the whole encoding at once) instead of built in
/// a growing `Vec` per record.
struct Encoder {
    hasher: Xxh3Default,
    chunk: [u8; CHUNK],
    filled: usize,
}

impl Encoder {
    fn new() -> Encoder {
        Encoder {
            hasher: Xxh3Default::new(),
            chunk: [0; CHUNK],
            filled: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        if self.filled + bytes.len() > CHUNK {
            self.hasher.update(&self.chunk[..self.filled]);
            self.filled = 0;
        }
        if bytes.len() > CHUNK {
            self.hasher.update(bytes);
        } else {
            self.chunk[self.filled..self.filled + bytes.len()].copy_from_slice(bytes);
            self.filled += bytes.len();
        }
    }

    fn digest(mut self) -> u128 {
        self.hasher.update(&self.chunk[..self.filled]);
        self.filled = 0;
        self.hasher.digest128()
    }

    fn byte(&mut self, b: u8) {
        self.put(&[b]);
    }

    fn len(&mut self, n: usize) {
        self.put(&(n as u64).to_le_bytes());
    }

    fn i64(&mut self, i: i64) {
        self.put(&i.to_le_bytes());
    }

    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.put(s.as_bytes());
    }

    fn value(&mut self, value: &Value) {
        match value {
            Value::Null => self.byte(0),
            Value::Bool(b) => {
                self.byte(1);
                self.byte(u8::from(*b));
            }
            Value::Int(i) => {
                self.byte(2);
                self.i64(*i);
            }
            Value::Float(f) => {
                self.byte(3);
                self.put(&f.to_bits().to_le_bytes());
            }
            Value::String(s) => {
                self.byte(4);
                self.str(s);
            }
            Value::Timestamp(t) => {
                self.byte(5);
                self.i64(t.as_micros());
            }
            Value::Json(j) => {
                self.byte(6);
                self.json(j);
            }
        }
    }

    /// JSON with object keys sorted, whatever order the map kept (serde_json
    /// keeps insertion order when its `preserve_order` feature is on
    /// anywhere in the build). Recursion is bounded: pipeline JSON values
    /// passed the decoder's depth limit.
    fn json(&mut self, json: &Json) {
        match json {
            Json::Null => self.byte(0),
            Json::Bool(b) => {
                self.byte(1);
                self.byte(u8::from(*b));
            }
            Json::Number(n) => {
                self.byte(2);
                self.str(&n.to_string());
            }
            Json::String(s) => {
                self.byte(3);
                self.str(s);
            }
            Json::Array(items) => {
                self.byte(4);
                self.len(items.len());
                for item in items {
                    self.json(item);
                }
            }
            Json::Object(map) => {
                self.byte(5);
                self.len(map.len());
                let mut entries: Vec<(&String, &Json)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                for (key, value) in entries {
                    self.str(key);
                    self.json(value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Fields, Origin, Timestamp};

    fn record(entity: &str, fields: &[(&str, Value)], at: i64) -> Record {
        Record {
            entity: entity.to_string(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<Fields>(),
            event_time: Timestamp::from_secs(at),
            origin: Origin::new("test"),
        }
    }

    #[test]
    fn encoding_is_unambiguous() {
        let base = fingerprint("p", &record("m1", &[("a", Value::Int(1))], 0), true);
        for other in [
            fingerprint("p", &record("m1", &[("a", Value::Float(1.0))], 0), true),
            fingerprint(
                "p",
                &record("m1", &[("a", Value::String("1".into()))], 0),
                true,
            ),
            fingerprint("p", &record("m1", &[("a", Value::Json(1.into()))], 0), true),
            fingerprint("p", &record("m1", &[("b", Value::Int(1))], 0), true),
            fingerprint("p", &record("m", &[("1a", Value::Int(1))], 0), true),
            fingerprint("pm", &record("1", &[("a", Value::Int(1))], 0), true),
            fingerprint("p", &record("m1", &[("a", Value::Int(1))], 1), true),
            fingerprint("p", &record("m1", &[("a", Value::Int(1))], 0), false),
            fingerprint("p", &record("m1", &[], 0), true),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn arrival_time_and_origin_are_not_hashed() {
        let mut a = record("m1", &[("a", Value::Null)], 10);
        let mut b = record("m1", &[("a", Value::Null)], 20);
        b.origin = Origin::new("http");
        assert_eq!(fingerprint("p", &a, false), fingerprint("p", &b, false));
        assert_ne!(fingerprint("p", &a, true), fingerprint("p", &b, true));
        a.event_time = b.event_time;
        assert_eq!(fingerprint("p", &a, true), fingerprint("p", &b, true));
    }

    /// Fingerprints are kept (the store's dedupe windows), so the digest of
    /// a record must never change by accident: this one was computed by the
    /// first encoding, one field of every type.
    #[test]
    fn digests_stay_what_they_were() {
        let json: Json =
            serde_json::from_str(r#"{"b":[1,2.5,"x",null],"a":{"c":true}}"#).expect("json");
        let record = record(
            "PR-0042",
            &[
                ("n", Value::Null),
                ("b", Value::Bool(true)),
                ("i", Value::Int(-7)),
                ("f", Value::Float(21.5)),
                ("s", Value::String("ok".into())),
                ("t", Value::Timestamp(Timestamp::from_secs(1_700_000_000))),
                ("j", Value::Json(json)),
            ],
            1_700_000_001,
        );
        assert_eq!(
            fingerprint("machine_health", &record, true).to_string(),
            "8aa6c1cc60878f35cc11b6f27ed6ab4e"
        );
        assert_eq!(
            fingerprint("machine_health", &record, false).to_string(),
            "f061c76114a29e9ed74a082008127fd4"
        );
    }

    /// Streaming gives the digest of the whole encoding at once, however
    /// the pieces fall across the stack chunk (short, exactly full, longer
    /// than a chunk, past xxh3's own 240-byte and 1 KiB boundaries).
    #[test]
    fn streamed_digest_is_the_one_shot_digest() {
        for sizes in [
            vec![0],
            vec![1, 7, 8],
            vec![240],
            vec![241],
            vec![CHUNK],
            vec![CHUNK - 1, 2],
            vec![CHUNK + 1],
            vec![100, 3000, 5, CHUNK, 17],
            vec![9; 400],
        ] {
            let mut encoder = Encoder::new();
            let mut whole = Vec::new();
            for (i, size) in sizes.iter().enumerate() {
                let piece: Vec<u8> = (0..*size).map(|b| (b * 31 + i) as u8).collect();
                encoder.put(&piece);
                whole.extend_from_slice(&piece);
            }
            assert_eq!(
                encoder.digest(),
                xxhash_rust::xxh3::xxh3_128(&whole),
                "{sizes:?}"
            );
        }
    }

    #[test]
    fn json_objects_hash_alike_in_any_key_order() {
        let one: Json = serde_json::from_str(r#"{"x":1,"y":[true,null]}"#).expect("json");
        let two: Json = serde_json::from_str(r#"{"y":[true,null],"x":1}"#).expect("json");
        let a = record("m1", &[("j", Value::Json(one))], 0);
        let b = record("m1", &[("j", Value::Json(two))], 0);
        assert_eq!(fingerprint("p", &a, true), fingerprint("p", &b, true));
        assert_eq!(fingerprint("p", &a, true).to_string().len(), 32);
    }
}
