//! The binary layout of a chunk summary (format 2; pure, no I/O).
//!
//! Why not MessagePack, as format 1 was: `series` over a month of a 1 Hz
//! sensor reads ~10,000 summaries, and `rmp_serde` spent ~6 µs on each —
//! a generic walk per value, and a `String` allocated per text value of
//! every block. This layout is read with a cursor and no lookahead:
//! varints for counts, versions and times (times zigzag, a block's
//! `max_time` as the step from its `min_time`), numbers as 8 little-endian
//! bytes, and every string (field names and text values) once per chunk
//! in a table the blocks index, so the blocks of a chunk allocate only
//! their vectors.
//!
//! ```text
//! [2] granularity:zz names:[len bytes]* strings:[len bytes]*
//!     blocks: n × { min_time:zz span:uv min_version:uv count:uv
//!                   fields: n × { name:uv flags:u8
//!                                 [numbers: count:uv min max sum first last: f64 LE]
//!                                 [text: n × {string:uv count:uv held:zz}
//!                                        first_carry:zz last_time:zz last:uv (0 = none, else string+1)] } }
//! ```
//! (`uv`: unsigned LEB128, `zz`: zigzag LEB128, `[...]*`: a `uv` count then
//! the items.)

use super::chunk_summary::{BlockSummary, ChunkSummary, FieldSummary, NumberSummary, TextSummary};
use super::codec::CodecError;

pub(crate) const FORMAT_BINARY: u8 = 2;

const HAS_NUMBERS: u8 = 1;
const HAS_TEXT: u8 = 2;
const COMPLETE_TEXT: u8 = 4;

fn put_uv(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_zz(out: &mut Vec<u8>, v: i64) {
    put_uv(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_uv(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Index of `s` in `table`, adding it if new.
fn intern(table: &mut Vec<String>, s: &str) -> u64 {
    match table.iter().position(|t| t == s) {
        Some(i) => i as u64,
        None => {
            table.push(s.to_string());
            (table.len() - 1) as u64
        }
    }
}

/// `summary` in format 2, behind its format byte.
pub(crate) fn encode(summary: &ChunkSummary) -> Vec<u8> {
    let mut strings: Vec<String> = Vec::new();
    let mut body = Vec::with_capacity(64 + summary.blocks.len() * 64);
    put_uv(&mut body, summary.blocks.len() as u64);
    for block in &summary.blocks {
        put_zz(&mut body, block.min_time);
        put_uv(
            &mut body,
            block.max_time.wrapping_sub(block.min_time) as u64,
        );
        put_uv(&mut body, block.min_version);
        put_uv(&mut body, block.count);
        put_uv(&mut body, block.fields.len() as u64);
        for field in &block.fields {
            put_uv(&mut body, u64::from(field.name));
            let flags = if field.numbers.is_some() {
                HAS_NUMBERS
            } else {
                0
            } | if field.text.is_some() { HAS_TEXT } else { 0 }
                | if field.complete_text {
                    COMPLETE_TEXT
                } else {
                    0
                };
            body.push(flags);
            if let Some(n) = &field.numbers {
                put_uv(&mut body, n.count);
                for x in [n.min, n.max, n.sum, n.first, n.last] {
                    body.extend_from_slice(&x.to_le_bytes());
                }
            }
            if let Some(text) = &field.text {
                put_uv(&mut body, text.values.len() as u64);
                for (value, count, held) in &text.values {
                    let index = intern(&mut strings, value);
                    put_uv(&mut body, index);
                    put_uv(&mut body, *count);
                    put_zz(&mut body, *held);
                }
                put_zz(&mut body, text.first_carry);
                put_zz(&mut body, text.last_carry.0);
                let last = match &text.last_carry.1 {
                    Some(s) => intern(&mut strings, s) + 1,
                    None => 0,
                };
                put_uv(&mut body, last);
            }
        }
    }
    let mut out = Vec::with_capacity(body.len() + 64);
    out.push(FORMAT_BINARY);
    put_zz(&mut out, summary.granularity);
    put_uv(&mut out, summary.names.len() as u64);
    for name in &summary.names {
        put_str(&mut out, name);
    }
    put_uv(&mut out, strings.len() as u64);
    for s in &strings {
        put_str(&mut out, s);
    }
    out.extend_from_slice(&body);
    out
}

/// A cursor over format 2 bytes (after the format byte).
struct Reader<'a> {
    bytes: &'a [u8],
}

fn short() -> CodecError {
    CodecError("chunk summary: truncated".to_string())
}

impl Reader<'_> {
    fn uv(&mut self) -> Result<u64, CodecError> {
        let mut value = 0u64;
        for (i, &byte) in self.bytes.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.bytes = &self.bytes[i + 1..];
                return Ok(value);
            }
        }
        Err(CodecError("chunk summary: bad varint".to_string()))
    }

    fn zz(&mut self) -> Result<i64, CodecError> {
        let v = self.uv()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    fn byte(&mut self) -> Result<u8, CodecError> {
        let (&b, rest) = self.bytes.split_first().ok_or_else(short)?;
        self.bytes = rest;
        Ok(b)
    }

    fn f64(&mut self) -> Result<f64, CodecError> {
        if self.bytes.len() < 8 {
            return Err(short());
        }
        let (head, rest) = self.bytes.split_at(8);
        self.bytes = rest;
        let mut raw = [0u8; 8];
        raw.copy_from_slice(head);
        Ok(f64::from_le_bytes(raw))
    }

    /// A count of items that each take at least `min_bytes`: refused if
    /// the bytes left cannot hold them (no allocation from a corrupt count).
    fn count(&mut self, min_bytes: usize) -> Result<usize, CodecError> {
        let n = self.uv()?;
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(min_bytes) <= self.bytes.len() => Ok(n),
            _ => Err(short()),
        }
    }

    fn string(&mut self) -> Result<String, CodecError> {
        let len = self.count(1)?;
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        String::from_utf8(head.to_vec())
            .map_err(|_| CodecError("chunk summary: string not UTF-8".to_string()))
    }
}

/// Decodes format 2 (`bytes` after the format byte).
pub(crate) fn decode(bytes: &[u8]) -> Result<ChunkSummary, CodecError> {
    let mut r = Reader { bytes };
    let granularity = r.zz()?;
    let n = r.count(1)?;
    let names = (0..n).map(|_| r.string()).collect::<Result<Vec<_>, _>>()?;
    let n = r.count(1)?;
    let strings = (0..n).map(|_| r.string()).collect::<Result<Vec<_>, _>>()?;
    let string = |i: u64| {
        usize::try_from(i)
            .ok()
            .and_then(|i| strings.get(i))
            .cloned()
            .ok_or_else(|| CodecError(format!("chunk summary: no string {i}")))
    };
    let n_blocks = r.count(5)?;
    let mut blocks = Vec::with_capacity(n_blocks);
    for _ in 0..n_blocks {
        let min_time = r.zz()?;
        let max_time = min_time.wrapping_add(r.uv()? as i64);
        let min_version = r.uv()?;
        let count = r.uv()?;
        let n_fields = r.count(2)?;
        let mut fields = Vec::with_capacity(n_fields);
        for _ in 0..n_fields {
            let name = u32::try_from(r.uv()?)
                .map_err(|_| CodecError("chunk summary: field index".to_string()))?;
            if name as usize >= names.len() {
                return Err(CodecError(format!("chunk summary: no field name {name}")));
            }
            let flags = r.byte()?;
            let numbers = if flags & HAS_NUMBERS != 0 {
                Some(NumberSummary {
                    count: r.uv()?,
                    min: r.f64()?,
                    max: r.f64()?,
                    sum: r.f64()?,
                    first: r.f64()?,
                    last: r.f64()?,
                })
            } else {
                None
            };
            let text = if flags & HAS_TEXT != 0 {
                let n = r.count(3)?;
                let mut values = Vec::with_capacity(n);
                for _ in 0..n {
                    values.push((string(r.uv()?)?, r.uv()?, r.zz()?));
                }
                let first_carry = r.zz()?;
                let last_time = r.zz()?;
                let last = match r.uv()? {
                    0 => None,
                    i => Some(string(i - 1)?),
                };
                Some(TextSummary {
                    values,
                    first_carry,
                    last_carry: (last_time, last),
                })
            } else {
                None
            };
            fields.push(FieldSummary {
                name,
                numbers,
                text,
                complete_text: flags & COMPLETE_TEXT != 0,
            });
        }
        blocks.push(BlockSummary {
            min_time,
            max_time,
            min_version,
            count,
            fields,
        });
    }
    if !r.bytes.is_empty() {
        return Err(CodecError(
            "chunk summary: trailing bytes after the last block".to_string(),
        ));
    }
    Ok(ChunkSummary {
        granularity,
        names,
        blocks,
    })
}
