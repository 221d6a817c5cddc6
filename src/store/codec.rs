//! Value codec: a leading format byte, then the payload.
//!
//! Every value the store writes starts with one format byte so that new
//! encodings (a per-product zstd dictionary, encryption at rest) can be
//! added later and old values still decode without guessing:
//!
//! | byte | payload |
//! |---|---|
//! | [`FORMAT_MSGPACK`] (1) | MessagePack with named fields |
//! | [`FORMAT_ZSTD_MSGPACK`] (2) | zstd frame of MessagePack with named fields |
//! | [`FORMAT_CHUNK`] (3) | a history chunk frame, see [`super::chunk`] |
//! | `FORMAT_SEALED` (4) | AES-256-GCM over one of the above, see [`super::seal`] |
//!
//! Named fields (`rmp_serde::to_vec_named`) let stored structs gain
//! `#[serde(default)]` fields without a migration. Decoding never panics:
//! any failure is a [`CodecError`] that the caller turns into
//! `StoreError::Corrupt` naming product and entity.

use std::fmt;
use std::io::Read;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub(crate) const FORMAT_MSGPACK: u8 = 1;
pub(crate) const FORMAT_ZSTD_MSGPACK: u8 = 2;
pub(crate) const FORMAT_CHUNK: u8 = 3;

/// Upper bound on a decompressed payload. A chunk of a few hundred events
/// is far below it; the bound stops corrupt bytes from claiming gigabytes.
const MAX_DECOMPRESSED_BYTES: u64 = 256 * 1024 * 1024;

/// Why bytes could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CodecError(pub String);

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[1] ++ msgpack(value)`.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_MSGPACK];
    rmp_serde::encode::write_named(&mut out, value)
        .map_err(|e| CodecError(format!("messagepack: {e}")))?;
    Ok(out)
}

/// `[2] ++ zstd(msgpack(value))`.
pub(crate) fn encode_compressed<T: Serialize>(
    value: &T,
    level: i32,
) -> Result<Vec<u8>, CodecError> {
    let plain =
        rmp_serde::to_vec_named(value).map_err(|e| CodecError(format!("messagepack: {e}")))?;
    let mut out = vec![FORMAT_ZSTD_MSGPACK];
    let compressed =
        zstd::bulk::compress(&plain, level).map_err(|e| CodecError(format!("zstd: {e}")))?;
    out.extend_from_slice(&compressed);
    Ok(out)
}

/// Decodes a value written by [`encode`] or [`encode_compressed`].
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&format, payload) = bytes
        .split_first()
        .ok_or_else(|| CodecError("empty value".to_string()))?;
    match format {
        FORMAT_MSGPACK => decode_msgpack(payload),
        FORMAT_ZSTD_MSGPACK => {
            let plain = decompress(payload)?;
            decode_msgpack(&plain)
        }
        other => Err(CodecError(format!("unknown format byte {other}"))),
    }
}

fn decode_msgpack<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(payload));
    let value = T::deserialize(&mut de).map_err(|e| CodecError(format!("messagepack: {e}")))?;
    let consumed = usize::try_from(de.position()).unwrap_or(usize::MAX);
    if consumed != payload.len() {
        return Err(CodecError(format!(
            "messagepack: {} trailing bytes",
            payload.len().saturating_sub(consumed)
        )));
    }
    Ok(value)
}

/// Decompresses one zstd payload, bounded by [`MAX_DECOMPRESSED_BYTES`].
pub(crate) fn decompress(payload: &[u8]) -> Result<Vec<u8>, CodecError> {
    let decoder =
        zstd::stream::read::Decoder::new(payload).map_err(|e| CodecError(format!("zstd: {e}")))?;
    let mut out = Vec::new();
    decoder
        .take(MAX_DECOMPRESSED_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| CodecError(format!("zstd: {e}")))?;
    if out.len() as u64 > MAX_DECOMPRESSED_BYTES {
        return Err(CodecError(format!(
            "zstd: payload decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Fields, Value};
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct V1 {
        a: u64,
        fields: Fields,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct V2 {
        a: u64,
        fields: Fields,
        #[serde(default)]
        b: Option<String>,
    }

    fn sample() -> V1 {
        let mut fields = Fields::new();
        fields.insert("s".into(), Value::String("hello".into()));
        fields.insert("f".into(), Value::Float(1.5));
        fields.insert("j".into(), Value::Json(serde_json::json!({"x": [1, 2]})));
        fields.insert("n".into(), Value::Null);
        V1 { a: 7, fields }
    }

    #[test]
    fn plain_and_compressed_round_trip_with_their_format_byte() {
        let plain = encode(&sample()).unwrap();
        assert_eq!(plain[0], FORMAT_MSGPACK);
        assert_eq!(decode::<V1>(&plain).unwrap(), sample());
        let packed = encode_compressed(&sample(), 3).unwrap();
        assert_eq!(packed[0], FORMAT_ZSTD_MSGPACK);
        assert_eq!(decode::<V1>(&packed).unwrap(), sample());
    }

    #[test]
    fn structs_can_gain_defaulted_fields() {
        let old = encode(&sample()).unwrap();
        let new: V2 = decode(&old).unwrap();
        assert_eq!(new.a, 7);
        assert_eq!(new.b, None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode::<V1>(&[]).is_err());
        assert!(decode::<V1>(&[9, 1, 2]).is_err());
        assert!(decode::<V1>(&[FORMAT_MSGPACK, 0xc1]).is_err());
        assert!(decode::<V1>(&[FORMAT_ZSTD_MSGPACK, 1, 2, 3]).is_err());
        let mut good = encode(&sample()).unwrap();
        good.push(0);
        assert!(
            decode::<V1>(&good).is_err(),
            "trailing bytes are corruption"
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<V1>(&bytes);
        }

        #[test]
        fn truncation_is_always_detected(cut in 1usize..40) {
            let bytes = encode(&sample()).unwrap();
            let cut = cut.min(bytes.len() - 1);
            prop_assert!(decode::<V1>(&bytes[..bytes.len() - cut]).is_err());
        }
    }
}
