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
//! | [`FORMAT_ZSTD_DICT_MSGPACK`] (5) | `u32 BE` dictionary id, then a zstd frame of MessagePack with named fields compressed with that dictionary of the product (see [`super::dictionary`]) |
//!
//! | `FORMAT_DICTIONARY` (6) | a stored dictionary, see [`super::dictionary`] |
//! | `FORMAT_ENTITY_SEALED` (9) | AES-256-GCM with the entity's own key, see [`super::keys_entity`] |
//!
//! Format 5 is only written for history chunk bodies; a value of format 2
//! and one of format 5 of an older dictionary stay readable forever, so
//! introducing or retraining a dictionary never rewrites stored data.
//!
//! Named fields (`rmp_serde::to_vec_named`) let stored structs gain
//! `#[serde(default)]` fields without a migration. Decoding never panics:
//! any failure is a [`CodecError`] that the caller turns into
//! `StoreError::Corrupt` naming product and entity.

use std::cell::RefCell;
use std::fmt;
use std::io::Read;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use zstd::dict::{DecoderDictionary, EncoderDictionary};

pub(crate) const FORMAT_MSGPACK: u8 = 1;
pub(crate) const FORMAT_ZSTD_MSGPACK: u8 = 2;
pub(crate) const FORMAT_CHUNK: u8 = 3;
pub(crate) const FORMAT_ZSTD_DICT_MSGPACK: u8 = 5;

/// A prepared dictionary ready to compress with, and its id.
pub(crate) type Encoder = (u32, Arc<EncoderDictionary<'static>>);

/// Where compressed values find their dictionaries: the newest one to
/// compress with and any older one by id to decompress with. Implemented
/// by the store's per-product cache (`dictionary.rs`) and by
/// [`NoDictionaries`].
pub(crate) trait Dictionaries {
    /// The dictionary new values are compressed with, if any.
    fn encoder(&self) -> Option<Encoder>;
    /// Dictionary `id`, prepared for decompression; an error (never a
    /// panic) if the store does not hold it.
    fn decoder(&self, id: u32) -> Result<Arc<DecoderDictionary<'static>>, CodecError>;
}

/// No dictionary: values are written as format 2; format 5 does not decode.
pub(crate) struct NoDictionaries;

impl Dictionaries for NoDictionaries {
    fn encoder(&self) -> Option<Encoder> {
        None
    }

    fn decoder(&self, id: u32) -> Result<Arc<DecoderDictionary<'static>>, CodecError> {
        Err(CodecError(format!(
            "value was compressed with dictionary {id}, and no dictionary is available"
        )))
    }
}

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
    encode_sized(value, ENCODE_CAPACITY)
}

/// `[1] ++ msgpack(value)` with structs as arrays (no field names), which
/// [`decode`] reads like the named form. For the instance's open-tail
/// events only: each write of the instance carries them, and the names
/// were about 40% of an event's bytes. Positional decoding still fills a
/// field added later at the end with `#[serde(default)]`.
pub(crate) fn encode_positional<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(ENCODE_CAPACITY);
    out.push(FORMAT_MSGPACK);
    rmp_serde::encode::write(&mut out, value)
        .map_err(|e| CodecError(format!("messagepack: {e}")))?;
    Ok(out)
}

/// Room reserved up front for an encoded value: most values (an event, an
/// audit line, an instance without tail) fit, so the buffer is not grown
/// (copied) several times on the writer's path.
const ENCODE_CAPACITY: usize = 256;

/// [`encode`] into a buffer of `capacity` bytes, for a value whose size is
/// known to be larger (an instance with its open tail).
pub(crate) fn encode_sized<T: Serialize>(
    value: &T,
    capacity: usize,
) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(capacity);
    out.push(FORMAT_MSGPACK);
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
    compress_into(&mut out, &plain, level, None)?;
    Ok(out)
}

thread_local! {
    /// One zstd compression and one decompression context per thread,
    /// reused by every call on it. Why: creating a context and its tables
    /// costs more than compressing a 16-event history block (measured,
    /// `codec/zstd_chunk32_*` in `benches/README.md`); the store's writer
    /// and readers call these on their own threads.
    static COMPRESSION: RefCell<Option<zstd::zstd_safe::CCtx<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSION: RefCell<Option<zstd::zstd_safe::DCtx<'static>>> = const { RefCell::new(None) };
}

/// Appends one zstd frame of `plain` to `out` (at `level`, or with the
/// prepared `dictionary`), on this thread's reused context.
fn compress_into(
    out: &mut Vec<u8>,
    plain: &[u8],
    level: i32,
    dictionary: Option<(u32, &EncoderDictionary<'static>)>,
) -> Result<(), CodecError> {
    // Named only on error: this runs for every chunk the store seals.
    let which = || match dictionary {
        Some((id, _)) => format!("zstd dictionary {id}"),
        None => "zstd".to_string(),
    };
    COMPRESSION.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = zstd::zstd_safe::CCtx::try_create();
        }
        let cctx = cell
            .as_mut()
            .ok_or_else(|| CodecError(format!("{}: cannot allocate a context", which())))?;
        let mut frame = Vec::with_capacity(zstd::zstd_safe::compress_bound(plain.len()));
        let written = match dictionary {
            Some((_, dictionary)) => {
                cctx.compress_using_cdict(&mut frame, plain, dictionary.as_cdict())
            }
            None => cctx.compress(&mut frame, plain, level),
        };
        written.map_err(|code| {
            CodecError(format!(
                "{}: {}",
                which(),
                zstd::zstd_safe::get_error_name(code)
            ))
        })?;
        out.extend_from_slice(&frame);
        Ok(())
    })
}

/// Decompresses one zstd frame on this thread's reused context when the
/// frame states its size (every frame the store writes does); `None` when
/// it does not or the one-shot call fails, and the caller takes the
/// streaming path, which also gives the precise error for corrupt bytes.
fn decompress_one_shot(
    payload: &[u8],
    dictionary: Option<&DecoderDictionary<'static>>,
) -> Option<Vec<u8>> {
    let size = zstd::zstd_safe::get_frame_content_size(payload).ok()??;
    if size > MAX_DECOMPRESSED_BYTES {
        return None;
    }
    DECOMPRESSION.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = zstd::zstd_safe::DCtx::try_create();
        }
        let dctx = cell.as_mut()?;
        let mut out = Vec::with_capacity(usize::try_from(size).ok()?);
        let written = match dictionary {
            Some(dictionary) => {
                dctx.decompress_using_ddict(&mut out, payload, dictionary.as_ddict())
            }
            None => dctx.decompress(&mut out, payload),
        };
        match written {
            Ok(n) if n as u64 == size => Some(out),
            _ => None,
        }
    })
}

/// `[5] ++ u32 BE id ++ zstd_with_dictionary(msgpack(value))` when
/// `dictionaries` has an encoder and that is smaller, else
/// [`encode_compressed`]. Both are tried because a dictionary helps small
/// values and can cost a few percent on large ones (measured: 256-event
/// chunks, `benches/README.md`); the second compression costs about as
/// much as the first (~50 µs per 256-event chunk), once per sealed chunk.
pub(crate) fn encode_compressed_with<T: Serialize>(
    value: &T,
    level: i32,
    dictionaries: &dyn Dictionaries,
) -> Result<Vec<u8>, CodecError> {
    let Some((id, dictionary)) = dictionaries.encoder() else {
        return encode_compressed(value, level);
    };
    let plain =
        rmp_serde::to_vec_named(value).map_err(|e| CodecError(format!("messagepack: {e}")))?;
    let mut with = Vec::new();
    compress_into(&mut with, &plain, level, Some((id, &dictionary)))?;
    let mut without = Vec::new();
    compress_into(&mut without, &plain, level, None)?;
    if without.len() <= with.len() + 4 {
        let mut out = Vec::with_capacity(1 + without.len());
        out.push(FORMAT_ZSTD_MSGPACK);
        out.extend_from_slice(&without);
        return Ok(out);
    }
    let mut out = Vec::with_capacity(5 + with.len());
    out.push(FORMAT_ZSTD_DICT_MSGPACK);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&with);
    Ok(out)
}

/// Decodes a value written by [`encode`] or [`encode_compressed`].
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_with(bytes, &NoDictionaries)
}

/// Decodes a value written by [`encode`], [`encode_compressed`] or
/// [`encode_compressed_with`], looking dictionaries up in `dictionaries`.
pub(crate) fn decode_with<T: DeserializeOwned>(
    bytes: &[u8],
    dictionaries: &dyn Dictionaries,
) -> Result<T, CodecError> {
    let (&format, payload) = bytes
        .split_first()
        .ok_or_else(|| CodecError("empty value".to_string()))?;
    match format {
        FORMAT_MSGPACK => decode_msgpack(payload),
        FORMAT_ZSTD_MSGPACK => {
            let plain = decompress(payload)?;
            decode_msgpack(&plain)
        }
        FORMAT_ZSTD_DICT_MSGPACK => {
            let id_bytes: [u8; 4] = payload
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| CodecError("truncated dictionary id".to_string()))?;
            let id = u32::from_be_bytes(id_bytes);
            let dictionary = dictionaries.decoder(id)?;
            let plain = decompress_with(&payload[4..], Some((id, &dictionary)))?;
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
    decompress_with(payload, None)
}

/// [`decompress`] with an optional prepared dictionary (and its id, for
/// the error message).
fn decompress_with(
    payload: &[u8],
    dictionary: Option<(u32, &DecoderDictionary<'static>)>,
) -> Result<Vec<u8>, CodecError> {
    if let Some(out) = decompress_one_shot(payload, dictionary.map(|(_, d)| d)) {
        return Ok(out);
    }
    let which = match dictionary {
        Some((id, _)) => format!("zstd dictionary {id}"),
        None => "zstd".to_string(),
    };
    let zstd_error = |e: std::io::Error| CodecError(format!("{which}: {e}"));
    let mut out = Vec::new();
    match dictionary {
        Some((_, dictionary)) => {
            zstd::stream::read::Decoder::with_prepared_dictionary(payload, dictionary)
                .map_err(zstd_error)?
                .take(MAX_DECOMPRESSED_BYTES + 1)
                .read_to_end(&mut out)
                .map_err(zstd_error)?;
        }
        None => {
            zstd::stream::read::Decoder::with_buffer(payload)
                .map_err(zstd_error)?
                .take(MAX_DECOMPRESSED_BYTES + 1)
                .read_to_end(&mut out)
                .map_err(zstd_error)?;
        }
    }
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

    /// One in-memory dictionary, as the store's cache holds them.
    struct OneDictionary(u32, Vec<u8>);

    impl Dictionaries for OneDictionary {
        fn encoder(&self) -> Option<Encoder> {
            Some((self.0, Arc::new(EncoderDictionary::copy(&self.1, 3))))
        }

        fn decoder(&self, id: u32) -> Result<Arc<DecoderDictionary<'static>>, CodecError> {
            if id == self.0 {
                Ok(Arc::new(DecoderDictionary::copy(&self.1)))
            } else {
                NoDictionaries.decoder(id)
            }
        }
    }

    fn trained() -> OneDictionary {
        static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let bytes = BYTES.get_or_init(train);
        OneDictionary(9, bytes.clone())
    }

    fn train() -> Vec<u8> {
        let samples: Vec<Vec<u8>> = (0..400)
            .map(|i| {
                let mut v = sample();
                v.a = i;
                v.fields
                    .insert("s".into(), Value::String(format!("hello {}", i % 7)));
                rmp_serde::to_vec_named(&v).unwrap()
            })
            .collect();
        zstd::dict::from_samples(&samples, 4096).unwrap()
    }

    #[test]
    fn dictionary_values_round_trip_and_name_their_dictionary() {
        let dictionary = trained();
        let packed = encode_compressed_with(&sample(), 3, &dictionary).unwrap();
        assert_eq!(packed[0], FORMAT_ZSTD_DICT_MSGPACK);
        assert_eq!(packed[1..5], 9u32.to_be_bytes());
        assert_eq!(decode_with::<V1>(&packed, &dictionary).unwrap(), sample());
        let plain = encode_compressed(&sample(), 3).unwrap();
        assert!(
            packed.len() < plain.len(),
            "{} vs {}",
            packed.len(),
            plain.len()
        );
        // Without a dictionary: the old format, readable either way.
        let old = encode_compressed_with(&sample(), 3, &NoDictionaries).unwrap();
        assert_eq!(old[0], FORMAT_ZSTD_MSGPACK);
        assert_eq!(decode_with::<V1>(&old, &dictionary).unwrap(), sample());
        // Its dictionary missing: an error saying which, not a panic.
        let err = decode::<V1>(&packed).unwrap_err();
        assert!(err.0.contains("dictionary 9"), "{err}");
        assert!(decode_with::<V1>(&packed[..3], &dictionary).is_err());
    }

    proptest! {
        #[test]
        fn decode_with_a_dictionary_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut framed = vec![FORMAT_ZSTD_DICT_MSGPACK, 0, 0, 0, 9];
            framed.extend_from_slice(&bytes);
            let _ = decode_with::<V1>(&framed, &trained());
        }

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
