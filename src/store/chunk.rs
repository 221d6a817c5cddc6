//! Sealed history chunks (pure encode/decode).
//!
//! A chunk holds many consecutive history events of one entity compressed
//! together — compression per chunk, not per event, is what keeps edge
//! disks alive. Its frame:
//!
//! ```text
//! [FORMAT_CHUNK] [u32 BE header length] [header: codec value] [body: codec value]
//! ```
//!
//! The header ([`ChunkHeader`]: versions, count, event-time range) is a small
//! plain MessagePack value readable without decompressing the body, so
//! history queries skip chunks outside their range and retention drops whole
//! chunks without touching their events. The body is a codec value of its
//! own: `zstd(MessagePack)` (format 2), or, once the product has a trained
//! dictionary, `[5][dictionary id]zstd_dict(MessagePack)` (see
//! `dictionary.rs`). Both decode through the same frame, so chunks sealed
//! before a dictionary existed, or with an older one, stay readable. What
//! the MessagePack holds is told by the header's `layout`: the events as
//! rows (chunks written before layouts existed), or as columns
//! (`chunk_columns.rs`: deltas and decimal mantissas, ~3x smaller for
//! telemetry).

use serde::{Deserialize, Serialize};

use super::chunk_columns::{from_columns, to_columns, Columns};
use super::chunk_summary::{decode_summary, encode_summary, summarise, ChunkSummary};
use super::codec::{self, CodecError, Dictionaries, FORMAT_CHUNK};
use super::stored::StoredEvent;
use crate::record::Timestamp;

/// What a chunk holds, readable without decompressing it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ChunkHeader {
    pub first_version: u64,
    pub last_version: u64,
    /// Number of events (may be less than the version span after retention).
    pub count: u64,
    pub min_event_time: Timestamp,
    pub max_event_time: Timestamp,
    /// How the body lays the events out: [`LAYOUT_ROWS`] (chunks written
    /// before columns existed: the field is absent) or [`LAYOUT_COLUMNS`].
    #[serde(default)]
    pub layout: u8,
    /// Bytes of the per-field summary (`chunk_summary.rs`) between the
    /// header and the body; 0 (absent in chunks sealed before summaries
    /// existed, or with `history_summaries` off): none, a reader decodes
    /// the events instead.
    #[serde(default)]
    pub summary_len: u32,
}

/// Body = `Vec<StoredEvent>`, one named MessagePack map per event.
pub(crate) const LAYOUT_ROWS: u8 = 0;
/// Body = [`Columns`] (see `chunk_columns.rs`), what is written now.
pub(crate) const LAYOUT_COLUMNS: u8 = 1;

/// Encodes events (non-empty, ascending versions) into one chunk frame,
/// compressing the body with the newest of `dictionaries` if there is one,
/// with a summary.
pub(crate) fn encode_chunk(
    events: &[StoredEvent],
    zstd_level: i32,
    dictionaries: &dyn Dictionaries,
) -> Result<Vec<u8>, CodecError> {
    encode_chunk_with(events, zstd_level, dictionaries, true)
}

/// [`encode_chunk`], with the per-field summary only if `summaries`.
pub(crate) fn encode_chunk_with(
    events: &[StoredEvent],
    zstd_level: i32,
    dictionaries: &dyn Dictionaries,
    summaries: bool,
) -> Result<Vec<u8>, CodecError> {
    let (first, last) = match (events.first(), events.last()) {
        (Some(f), Some(l)) => (f, l),
        _ => return Err(CodecError("a chunk needs at least one event".to_string())),
    };
    let header = ChunkHeader {
        first_version: first.version,
        last_version: last.version,
        count: events.len() as u64,
        min_event_time: events
            .iter()
            .map(|e| e.event_time)
            .min()
            .unwrap_or(first.event_time),
        max_event_time: events
            .iter()
            .map(|e| e.event_time)
            .max()
            .unwrap_or(first.event_time),
        layout: LAYOUT_COLUMNS,
        summary_len: 0,
    };
    let summary = if summaries {
        encode_summary(&summarise(events))?
    } else {
        Vec::new()
    };
    let header = ChunkHeader {
        summary_len: u32::try_from(summary.len())
            .map_err(|_| CodecError("chunk summary too large".to_string()))?,
        ..header
    };
    let header_bytes = codec::encode(&header)?;
    let body = codec::encode_compressed_with(&to_columns(events), zstd_level, dictionaries)?;
    let header_len = u32::try_from(header_bytes.len())
        .map_err(|_| CodecError("chunk header too large".to_string()))?;
    let mut out = Vec::with_capacity(5 + header_bytes.len() + summary.len() + body.len());
    out.push(FORMAT_CHUNK);
    out.extend_from_slice(&header_len.to_be_bytes());
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(&summary);
    out.extend_from_slice(&body);
    Ok(out)
}

fn split_frame(bytes: &[u8]) -> Result<(&[u8], &[u8]), CodecError> {
    match bytes.first() {
        Some(&FORMAT_CHUNK) => {}
        Some(other) => {
            return Err(CodecError(format!(
                "not a chunk frame (format byte {other})"
            )))
        }
        None => return Err(CodecError("empty chunk".to_string())),
    }
    let len_bytes: [u8; 4] = bytes
        .get(1..5)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| CodecError("truncated chunk frame".to_string()))?;
    let header_len = u32::from_be_bytes(len_bytes) as usize;
    let header = bytes
        .get(5..5usize.saturating_add(header_len))
        .ok_or_else(|| CodecError("truncated chunk header".to_string()))?;
    Ok((header, &bytes[5 + header_len..]))
}

/// Reads only the header.
pub(crate) fn decode_chunk_header(bytes: &[u8]) -> Result<ChunkHeader, CodecError> {
    let (header, _) = split_frame(bytes)?;
    codec::decode(header)
}

/// The header, and the body after the summary the header announces.
fn split_body<'a>(
    header: &ChunkHeader,
    rest: &'a [u8],
) -> Result<(&'a [u8], &'a [u8]), CodecError> {
    let len = header.summary_len as usize;
    if rest.len() < len {
        return Err(CodecError("truncated chunk summary".to_string()));
    }
    Ok(rest.split_at(len))
}

/// Reads the header and the summary (`None`: a chunk sealed without one),
/// without decompressing the body.
pub(crate) fn decode_chunk_summary(
    bytes: &[u8],
) -> Result<(ChunkHeader, Option<ChunkSummary>), CodecError> {
    let (header_bytes, rest) = split_frame(bytes)?;
    let header: ChunkHeader = codec::decode(header_bytes)?;
    let (summary, _) = split_body(&header, rest)?;
    let summary = if summary.is_empty() {
        None
    } else {
        Some(decode_summary(summary)?)
    };
    Ok((header, summary))
}

/// Reads header and events, checking that they agree; a dictionary body
/// looks its dictionary up in `dictionaries`.
pub(crate) fn decode_chunk(
    bytes: &[u8],
    dictionaries: &dyn Dictionaries,
) -> Result<(ChunkHeader, Vec<StoredEvent>), CodecError> {
    let (header_bytes, rest) = split_frame(bytes)?;
    let header: ChunkHeader = codec::decode(header_bytes)?;
    let (_, body) = split_body(&header, rest)?;
    let events: Vec<StoredEvent> = match header.layout {
        LAYOUT_ROWS => codec::decode_with(body, dictionaries)?,
        LAYOUT_COLUMNS => from_columns(codec::decode_with::<Columns>(body, dictionaries)?)?,
        other => return Err(CodecError(format!("unknown chunk layout {other}"))),
    };
    let consistent = events.len() as u64 == header.count
        && events.first().map(|e| e.version) == Some(header.first_version)
        && events.last().map(|e| e.version) == Some(header.last_version)
        && events.windows(2).all(|w| w[0].version < w[1].version);
    if !consistent {
        return Err(CodecError(format!(
            "chunk header (versions {}..={}, {} events) does not match its {} events",
            header.first_version,
            header.last_version,
            header.count,
            events.len()
        )));
    }
    Ok((header, events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Fields, Origin, Value};
    use crate::store::codec::NoDictionaries;

    pub(crate) fn event(version: u64, event_time: i64) -> StoredEvent {
        let mut fields = Fields::new();
        fields.insert("temp".into(), Value::Float(20.0 + version as f64));
        fields.insert("status".into(), Value::String("ok".into()));
        StoredEvent {
            version,
            event_time: Timestamp(event_time),
            received_at: Timestamp(event_time + 5),
            fields,
            origin: Origin::new("mqtt:plant/m1"),
        }
    }

    #[test]
    fn chunk_round_trips_and_header_reads_alone() {
        let events: Vec<_> = (10..=20).map(|v| event(v, 1000 - v as i64)).collect();
        let bytes = encode_chunk(&events, 3, &NoDictionaries).unwrap();
        let header = decode_chunk_header(&bytes).unwrap();
        assert_eq!(
            header,
            ChunkHeader {
                first_version: 10,
                last_version: 20,
                count: 11,
                min_event_time: Timestamp(980),
                max_event_time: Timestamp(990),
                layout: LAYOUT_COLUMNS,
                summary_len: header.summary_len,
            }
        );
        assert!(header.summary_len > 0);
        let (_, summary) = decode_chunk_summary(&bytes).unwrap();
        assert_eq!(summary.unwrap().blocks[0].count, 11);
        let bare = encode_chunk_with(&events, 3, &NoDictionaries, false).unwrap();
        let (h3, none) = decode_chunk_summary(&bare).unwrap();
        assert_eq!((h3.summary_len, none), (0, None));
        assert_eq!(decode_chunk(&bare, &NoDictionaries).unwrap().1, events);
        let (h2, back) = decode_chunk(&bytes, &NoDictionaries).unwrap();
        assert_eq!(h2, header);
        assert_eq!(back, events);
    }

    #[test]
    fn header_survives_a_corrupt_body_but_full_decode_fails() {
        let events: Vec<_> = (1..=50).map(|v| event(v, v as i64)).collect();
        let mut bytes = encode_chunk(&events, 3, &NoDictionaries).unwrap();
        let n = bytes.len();
        bytes[n - 10..].fill(0xAA);
        assert!(decode_chunk_header(&bytes).is_ok());
        assert!(decode_chunk(&bytes, &NoDictionaries).is_err());
    }

    #[test]
    fn repeated_events_compress_well() {
        let events: Vec<_> = (1..=256).map(|v| event(v, v as i64 * 1_000_000)).collect();
        let plain: usize = events.iter().map(|e| codec::encode(e).unwrap().len()).sum();
        let chunk = encode_chunk(&events, 3, &NoDictionaries).unwrap().len();
        assert!(
            chunk * 3 < plain,
            "chunk {chunk} bytes vs {plain} bytes as single events"
        );
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert!(decode_chunk_header(&[]).is_err());
        assert!(decode_chunk_header(&[FORMAT_CHUNK, 0, 0]).is_err());
        assert!(decode_chunk_header(&[FORMAT_CHUNK, 0xff, 0xff, 0xff, 0xff, 1]).is_err());
        assert!(decode_chunk(&[1, 0x90], &NoDictionaries).is_err());
        assert!(encode_chunk(&[], 3, &NoDictionaries).is_err());
    }
}

#[cfg(test)]
mod row_layout_tests {
    use super::tests::event;
    use super::*;
    use crate::store::codec::NoDictionaries;

    /// A chunk as written before layouts existed: no `layout` in the
    /// header, the body a row per event.
    fn old_chunk(events: &[StoredEvent]) -> Vec<u8> {
        #[derive(Serialize)]
        struct OldHeader {
            first_version: u64,
            last_version: u64,
            count: u64,
            min_event_time: Timestamp,
            max_event_time: Timestamp,
        }
        let header = codec::encode(&OldHeader {
            first_version: events[0].version,
            last_version: events[events.len() - 1].version,
            count: events.len() as u64,
            min_event_time: events[0].event_time,
            max_event_time: events[events.len() - 1].event_time,
        })
        .unwrap();
        let body = codec::encode_compressed(&events, 3).unwrap();
        let mut out = vec![FORMAT_CHUNK];
        out.extend_from_slice(&(header.len() as u32).to_be_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn row_chunks_written_before_columns_still_read() {
        let events: Vec<_> = (1..=20).map(|v| event(v, v as i64 * 10)).collect();
        let bytes = old_chunk(&events);
        assert_eq!(decode_chunk_header(&bytes).unwrap().layout, LAYOUT_ROWS);
        assert_eq!(decode_chunk_summary(&bytes).unwrap().1, None);
        let (_, back) = decode_chunk(&bytes, &NoDictionaries).unwrap();
        assert_eq!(back, events);
    }

    #[test]
    fn columns_are_much_smaller_than_rows_for_telemetry() {
        let events: Vec<_> = (1..=256).map(|v| event(v, v as i64 * 1_000_000)).collect();
        let rows = old_chunk(&events).len();
        let columns = encode_chunk(&events, 3, &NoDictionaries).unwrap().len();
        assert!(
            columns * 2 < rows,
            "columns {columns} bytes, rows {rows} bytes"
        );
    }
}
