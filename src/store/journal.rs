//! The journal: every write of the hot trees as one compressed frame, the
//! unit of durable work; checkpoints that move the hot state into sled's
//! trees and drop the frames behind them; replay of the frames a crash
//! left.
//!
//! # Why (measured, `tests/it/store_write_amplification.rs`)
//!
//! Before the journal, 50,000 single-record jobs of 1,000 machines in
//! groups of 100 wrote **43–46 bytes to disk per raw JSON byte**
//! (`/proc/self/io` `write_bytes`), with a durability barrier per group or
//! with none at all: each record rewrote its instance (~0.8–1 KiB with the
//! open history tail) plus dedupe, history and audit keys, ~8× the raw
//! bytes handed to sled, and sled 0.34's log-structured pages multiplied
//! that by ~5 (a leaf of several instances is rewritten whole every ten
//! updates; its cleaner relocates live pages). So: write fewer and larger
//! things — one frame per write group, each dirty key once per checkpoint.
//!
//! The first version kept the frames in a sled tree. At a gateway's pace
//! (1,000 records/s, groups of 10, a barrier per group) it wrote **122×**:
//! sled's flush and page rewrites cost ~10× the frame at every barrier,
//! whatever the frame. In an append-only file, a barrier costs the frame
//! and the page it ends in: **10×** on the same run, and 5.5× unpaced.
//! sled stays the store; the journal is its write-ahead log.
//!
//! # Frames and segments
//!
//! A frame is the write set of one [`Store::hot_transaction`]: per hot tree
//! (by sled tree name), the keys written with their new values or their
//! removal — the records' instances, history and audit keys, dedupe,
//! quarantine, source offsets and outbox entries of a whole ingest group,
//! so everything a group did is in one frame or in none. Plain layout:
//! `u32` tree count, then per tree a `u16`-prefixed name, a `u32` entry
//! count, and per entry a `u32`-prefixed key, a presence byte and, when
//! present, a `u32`-prefixed value (byte 1) or delta (byte 2, see below).
//! The payload is a format byte (3), the plain length (`u32`) and the
//! frame's piece of its segment's zstd stream, sealed (as the value of
//! its sequence number in the `journal` tree) when encryption is on.
//!
//! # Record deltas
//!
//! A record rewrites its entity's instance, which carries the open
//! history tail: written whole, a frame held ~1,759 B per record (14× the
//! raw JSON) for the ~150 B that changed. So a value whose key the
//! overlay already holds (written by a frame since the last checkpoint)
//! goes as a byte delta against that value (`delta.rs`): the changed
//! fields, the event appended to the tail, copies for the rest. Replay
//! rebuilds the same base, because the overlay is exactly the frames
//! after the last checkpoint in order, and replay applies those frames in
//! order (a background checkpoint whose flush a crash cut short leaves
//! older frames to replay too: they come first, and no delta after the
//! checkpoint refers to them). A key's first
//! write after a checkpoint is whole, so a delta never depends on sled's
//! trees, whose flush may lag the journal's sync. A delta names its
//! base's length and CRC-32; one that does not fit is corruption.
//!
//! Why deltas of physical writes and not logical records: the effects
//! (dedupe, quarantine, source offsets, outbox entries) stay explicit
//! writes in the frame, so replay needs neither the outbox planner
//! (installed after open), nor the dictionaries, nor the configuration
//! of the write that made it; the delta only shrinks their bytes. Frames
//! of formats 1 and 2 (no deltas) still replay. Applying a frame twice
//! changes nothing.
//!
//! Each segment is **one zstd stream** (level 3, 4 MiB window), every
//! frame a flushed piece of it, so a frame is compressed against the
//! frames before it: an instance that comes back a little longer each
//! time costs what changed, not the whole instance again. Compressed one
//! by one (format 1, still replayed), frames were 1.1–1.7× the raw bytes
//! of their records; as a stream, see benches/README.md ("Writes to
//! disk"). Replay decodes a segment's frames in order from its start. A
//! failed append (its stream now ahead of its file) starts a new segment.
//!
//! Frames are appended, one `write` each, to segment files
//! `<store>/journal/<first sequence>.wal` as records: payload length
//! (`u32`), CRC-32 of sequence and payload, sequence (`u64`), payload. A
//! new segment starts at every checkpoint (its directory entry synced
//! before a frame in it can be acknowledged) and the older ones are
//! removed.
//!
//! # Durability
//!
//! The frame is appended before the write set joins the overlay; the group
//! commit's flusher (`durable.rs`) `fdatasync`s the segment (then flushes
//! sled, for what goes there directly), and acknowledgements wait for it
//! as before. A crash can leave the last record cut short; its sync never
//! completed, so it was never acknowledged, and replay ignores it (length
//! and CRC).
//!
//! # Checkpoints
//!
//! A checkpoint writes every dirty key of every hot tree and the newest
//! frame sequence (`meta/checkpoint_seq`) in **one** sled transaction,
//! drops the hot state (readers find the same values in sled's memory),
//! starts a new segment, flushes sled, and only then removes the older
//! segments: after a crash either the old trees and the frames are there
//! (replay applies them) or the new trees with a sequence that makes
//! replay skip those frames. The commit runs under the writer lock; the
//! background checkpointer (every `store.checkpoint_interval`) flushes
//! after releasing it, so ingest goes on into the new segment meanwhile
//! (an acknowledgement still waits for a flush of sled, which covers the
//! committed checkpoint too). The writer checkpoints itself (and flushes
//! under the lock) whenever the overlay passes `store.hot_bytes` or the
//! plain bytes of the frames since the last checkpoint pass
//! [`PENDING_PLAIN_FACTOR`] × `store.hot_bytes`; so does an erasure, and
//! the store when it closes.
//!
//! # Replay
//!
//! At open, the frames after `meta/checkpoint_seq` are applied like a
//! checkpoint (one transaction, then a flush) before anything reads the
//! store, and a new segment starts. Their total is bounded by what one
//! checkpoint interval, `hot_bytes` or the plain-bytes bound lets accumulate.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use sled::transaction::ConflictableTransactionError;
use sled::{IVec, Transactional};

use super::delta;
use super::hot::{HotTree, HotTrees, TxTree, WriteSet};
use super::seal::{self, Seal};
use super::tx::TxResult;
use super::{tx_result, Inner, Store, StoreError};

/// The journal's directory inside the store's, and the tree name its
/// frames are sealed under.
pub(crate) const JOURNAL_TREE: &str = "journal";
/// `meta` key of the newest checkpointed frame sequence (`u64` BE).
const META_CHECKPOINT_KEY: &[u8] = b"checkpoint_seq";
/// Frame value format byte of a frame compressed on its own (written by
/// earlier builds; still replayed).
const FRAME_FORMAT_SINGLE: u8 = 1;
/// Frame value format byte of a frame that is the next piece of its
/// segment's zstd stream (see the module docs).
const FRAME_FORMAT_STREAM: u8 = 2;
/// Frame value format byte of a streamed frame whose values may be
/// deltas against the key's previous value (see the module docs, "Record
/// deltas"); formats 1 and 2 still replay.
const FRAME_FORMAT_DELTA: u8 = 3;
/// Largest plain frame accepted when decoding (a frame is one write
/// group's keys; far below this in practice).
const MAX_PLAIN_FRAME: usize = 1 << 30;
/// zstd level of a segment's stream. Measured with
/// `tests/it/store_write_amplification.rs` (see benches/README.md, "Writes
/// to disk"): what the stream gains comes from matches against earlier
/// frames (the same instances, a little longer each time), which level 3
/// finds well enough; frames are read only by replay.
const FRAME_ZSTD_LEVEL: i32 = 3;
/// zstd window of a segment's stream (log2 bytes: 4 MiB). The repeats
/// worth finding are an entity's previous instance, which at 1,000
/// machines reporting in turn lies ~1.8 MB of plain frames back (1,000
/// instances with their open tails): level 3's default window (2 MiB)
/// barely misses it. On a segment of 367 such frames (66 MB plain),
/// `zstd -3 --long=N`: 7.75 MB at 21, 5.51 MB at 22, 5.47 MB at 23 — so
/// 4 MiB, which is what the writer's compressor keeps in memory (and the
/// decompressor while replaying).
const FRAME_WINDOW_LOG: u32 = 22;
/// A checkpoint runs once the plain (uncompressed) bytes of the frames
/// since the last one pass this multiple of `store.hot_bytes`: replay
/// decodes plain bytes, so they bound it, whatever the compression.
pub(crate) const PENDING_PLAIN_FACTOR: usize = 8;

/// Counters of the journal, for `/metrics`.
#[derive(Default)]
pub struct JournalStats {
    pub frames_written: AtomicU64,
    /// Bytes of frames as stored (compressed, sealed).
    pub frame_bytes: AtomicU64,
    pub checkpoints: AtomicU64,
    /// Keys written or removed by checkpoints.
    pub checkpoint_keys: AtomicU64,
    pub checkpoint_micros: AtomicU64,
    /// Frames applied at open, after a crash.
    pub frames_replayed: AtomicU64,
}

/// The journal's files and sequence numbers (under its mutex).
struct Segments {
    /// The segment frames are appended to, shared with the flusher so it
    /// can sync without holding the lock.
    current: Arc<File>,
    current_path: PathBuf,
    /// Segments before the current one (kept only until a checkpoint's
    /// flush made their frames durable in the trees).
    older: Vec<PathBuf>,
    /// The oldest frame not yet checkpointed.
    first: u64,
    /// The sequence the next frame gets.
    next: u64,
    /// Bytes of the frames not yet checkpointed: what a replay would read.
    pending_bytes: u64,
    /// Their plain (uncompressed) bytes: what a replay would decode.
    pending_plain: u64,
    /// The current segment's zstd stream: every frame is the next piece
    /// of it, flushed (so it decodes given the pieces before it).
    encoder: zstd::stream::raw::Encoder<'static>,
}

/// What [`Journal::begin_checkpoint`] left for
/// [`Journal::finish_checkpoint`]: segments whose frames are all in the
/// committed (not yet flushed) checkpoint.
pub(crate) struct Truncation {
    segments: Vec<PathBuf>,
    frames: u64,
    keys: u64,
    started: Instant,
}

fn frame_encoder() -> std::io::Result<zstd::stream::raw::Encoder<'static>> {
    let mut encoder = zstd::stream::raw::Encoder::new(FRAME_ZSTD_LEVEL)?;
    encoder.set_parameter(zstd::stream::raw::CParameter::WindowLog(FRAME_WINDOW_LOG))?;
    Ok(encoder)
}

/// Compresses `plain` as the next piece of `encoder`'s stream into `out`
/// (appended), flushed: a decoder that saw the pieces before it decodes
/// all of `plain` from it.
fn compress_piece(
    encoder: &mut zstd::stream::raw::Encoder<'static>,
    plain: &[u8],
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
    let mut input = InBuffer::around(plain);
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(plain.len() / 4 + 4096);
        }
        let pos = out.len();
        let mut output = OutBuffer::around_pos(out, pos);
        if input.pos() < plain.len() {
            encoder.run(&mut input, &mut output)?;
        } else if encoder.flush(&mut output)? == 0 {
            return Ok(());
        }
    }
}

/// Decodes one piece of a segment's stream (see [`compress_piece`]),
/// which must yield exactly `len` bytes and be consumed whole.
fn decompress_piece(
    decoder: &mut zstd::stream::raw::Decoder<'static>,
    piece: &[u8],
    len: usize,
) -> std::io::Result<Vec<u8>> {
    use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
    // One spare byte: a piece that decodes to more than `len` shows.
    let mut out: Vec<u8> = Vec::with_capacity(len + 1);
    let mut input = InBuffer::around(piece);
    loop {
        let (read, wrote) = (input.pos(), out.len());
        {
            let pos = out.len();
            let mut output = OutBuffer::around_pos(&mut out, pos);
            decoder.run(&mut input, &mut output)?;
        }
        if input.pos() == piece.len() && out.len() >= len {
            break;
        }
        if (read, wrote) == (input.pos(), out.len()) {
            break;
        }
    }
    if out.len() != len || input.pos() != piece.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "piece of {} B decoded to {} B ({} B read), {len} B expected",
                piece.len(),
                out.len(),
                input.pos()
            ),
        ));
    }
    Ok(out)
}

pub(crate) struct Journal {
    dir: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    seal: Seal,
    segments: Mutex<Segments>,
    pub stats: Arc<JournalStats>,
}

fn corrupt(seq: u64, detail: impl ToString) -> StoreError {
    StoreError::bookkeeping(format!("journal frame {seq}"), "journal frame", detail)
}

/// Record header: payload length (`u32`), CRC-32 of sequence and payload
/// (`u32`), sequence (`u64`), all big-endian.
const RECORD_HEADER: usize = 16;

fn segment_name(first: u64) -> String {
    format!("{first:020}.wal")
}

/// Makes the creation or removal of files in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Journal {
    fn io(&self, what: &str, e: std::io::Error) -> StoreError {
        StoreError::Journal {
            path: self.dir.clone(),
            detail: format!("{what}: {e}"),
        }
    }

    /// Opens the journal directory `dir` and replays the frames a crash
    /// left into the trees (see the module docs).
    pub fn open(
        dir: PathBuf,
        db: &sled::Db,
        meta: sled::Tree,
        seal: Seal,
        hot: &HotTrees,
    ) -> Result<Journal, StoreError> {
        let io = |what: &str, e: std::io::Error| StoreError::Journal {
            path: dir.clone(),
            detail: format!("{what}: {e}"),
        };
        std::fs::create_dir_all(&dir).map_err(|e| io("creating the directory", e))?;
        let checkpointed = meta
            .get(META_CHECKPOINT_KEY)
            .map_err(|e| StoreError::sled("reading the checkpoint sequence", e))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io("listing", e))? {
            let entry = entry.map_err(|e| io("listing", e))?;
            let name = entry.file_name();
            let Some(first) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".wal"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            found.push((first, entry.path()));
        }
        found.sort();
        // A placeholder until replay knows where the next frame starts.
        let placeholder = dir.join(".open");
        let current = Arc::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&placeholder)
                .map_err(|e| io("creating a segment", e))?,
        );
        let journal = Journal {
            dir: dir.clone(),
            db: db.clone(),
            meta,
            seal,
            segments: Mutex::new(Segments {
                current,
                current_path: placeholder.clone(),
                older: found.iter().map(|(_, p)| p.clone()).collect(),
                first: checkpointed + 1,
                next: checkpointed + 1,
                pending_bytes: 0,
                pending_plain: 0,
                encoder: frame_encoder().map_err(|e| io("creating the frame compressor", e))?,
            }),
            stats: Arc::new(JournalStats::default()),
        };
        let last = journal.replay(&found, checkpointed, hot)?;
        // Frames continue after everything seen, replayed or not.
        let next = last.max(checkpointed) + 1;
        {
            let mut segments = journal.segments();
            segments.first = next;
            segments.next = next;
        }
        // Every frame found is in the trees now (replayed and flushed, or
        // checkpointed before): their segments go.
        let replayed = journal.start_segment()?;
        journal.remove_segments(&replayed);
        let _ = std::fs::remove_file(&placeholder);
        Ok(journal)
    }

    fn segments(&self) -> MutexGuard<'_, Segments> {
        self.segments.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Frames not checkpointed yet.
    pub fn pending_frames(&self) -> u64 {
        let segments = self.segments();
        segments.next - segments.first
    }

    /// Bytes of the frames not checkpointed yet.
    pub fn pending_bytes(&self) -> u64 {
        self.segments().pending_bytes
    }

    /// Plain (uncompressed) bytes of the frames not checkpointed yet.
    pub fn pending_plain_bytes(&self) -> u64 {
        self.segments().pending_plain
    }

    /// Reads every frame of `found` (ascending), applies those after
    /// `checkpointed` to the trees and records the newest as checkpointed,
    /// in one transaction, then flushes. Returns the newest sequence seen.
    fn replay(
        &self,
        found: &[(u64, PathBuf)],
        checkpointed: u64,
        hot: &HotTrees,
    ) -> Result<u64, StoreError> {
        let started = Instant::now();
        let mut sets: std::collections::BTreeMap<String, WriteSet> = Default::default();
        let mut replayed = 0u64;
        let mut last = 0u64;
        for (_, path) in found {
            let bytes = std::fs::read(path).map_err(|e| self.io("reading a segment", e))?;
            // Each segment is one zstd stream: every frame in it is decoded
            // in order (also those already checkpointed), as the next piece.
            let mut stream: Option<zstd::stream::raw::Decoder<'static>> = None;
            let mut rest = bytes.as_slice();
            while !rest.is_empty() {
                let Some((seq, payload, tail)) = read_record(rest) else {
                    // A record cut short by the crash: it was never
                    // acknowledged (its sync did not complete), and nothing
                    // after it was written.
                    tracing::warn!(
                        segment = %path.display(),
                        bytes = rest.len(),
                        "journal ends in an incomplete record; ignored"
                    );
                    break;
                };
                rest = tail;
                last = last.max(seq);
                // A checkpointed frame is decoded for the stream only: its
                // deltas' bases are in the trees, not in `sets`.
                let applied = seq > checkpointed;
                let frame = self.decode(seq, payload, &mut stream, applied, |tree, key| {
                    sets.get(tree).and_then(|w| w.get(key)).cloned().flatten()
                })?;
                if !applied {
                    continue;
                }
                for (tree, writes) in frame {
                    sets.entry(tree).or_default().extend(writes);
                }
                replayed += 1;
            }
        }
        if replayed == 0 {
            return Ok(last);
        }
        let trees: Vec<HotTree> = sets
            .keys()
            .map(|name| {
                hot.open(name)
                    .map_err(|e| StoreError::sled(format!("opening tree `{name}`"), e))
            })
            .collect::<Result<_, _>>()?;
        let dirty: Vec<(HotTree, WriteSet)> = trees.into_iter().zip(sets.into_values()).collect();
        let keys = self.commit(&dirty, last)?;
        self.db
            .flush()
            .map_err(|e| StoreError::sled("flushing the replayed journal", e))?;
        self.stats
            .frames_replayed
            .fetch_add(replayed, Ordering::Relaxed);
        tracing::info!(
            frames = replayed,
            keys,
            millis = started.elapsed().as_millis() as u64,
            "journal replayed"
        );
        Ok(last)
    }

    /// One transaction: the write sets into their trees and `last` as the
    /// checkpointed sequence. Returns the keys written.
    fn commit(&self, dirty: &[(HotTree, WriteSet)], last: u64) -> Result<u64, StoreError> {
        let mut trees: Vec<&sled::Tree> = dirty.iter().map(|(t, _)| t.sled()).collect();
        trees.push(&self.meta);
        let n = dirty.len();
        let result = trees.as_slice().transaction(|tx| {
            let mut keys = 0u64;
            for ((_, writes), tree) in dirty.iter().zip(tx.iter()) {
                for (key, value) in writes {
                    match value {
                        Some(value) => tree.overwrite(key, value.clone()),
                        None => {
                            tree.remove(key)?;
                        }
                    }
                    keys += 1;
                }
            }
            tx[n].overwrite(META_CHECKPOINT_KEY, last.to_be_bytes().as_slice());
            Ok::<_, ConflictableTransactionError<StoreError>>(keys)
        });
        tx_result(result, || "checkpoint: writing the hot state".to_string())
    }

    /// Starts a new segment at the next sequence, with a new zstd stream.
    /// Returns the segments before it (`older` is emptied): their frames
    /// may go once a checkpoint covering them is flushed. Call under the
    /// writer lock.
    fn start_segment(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut segments = self.segments();
        let path = self.dir.join(segment_name(segments.next));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| self.io("creating a segment", e))?;
        // A segment of this name holds no complete frame (its frames would
        // have sequences from `next` on, and none was appended): at most
        // what a failed append left, which must not precede the new stream.
        file.set_len(0)
            .map_err(|e| self.io("emptying a segment", e))?;
        // The new segment's name must be durable before a frame in it is
        // acknowledged.
        sync_dir(&self.dir).map_err(|e| self.io("syncing the directory", e))?;
        use zstd::stream::raw::Operation as _;
        segments
            .encoder
            .reinit()
            .map_err(|e| self.io("resetting the frame compressor", e))?;
        let old = std::mem::replace(&mut segments.current_path, path.clone());
        segments.current = Arc::new(file);
        let mut older = std::mem::take(&mut segments.older);
        if old != path {
            older.push(old);
        }
        Ok(older)
    }

    /// Removes segments whose frames are all in flushed trees.
    fn remove_segments(&self, paths: &[PathBuf]) {
        let current = self.segments().current_path.clone();
        for old in paths.iter().filter(|p| **p != current) {
            if let Err(e) = std::fs::remove_file(old) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(segment = %old.display(), error = %e, "cannot remove a checkpointed journal segment");
                }
            }
        }
        // Not needed for correctness (replay skips checkpointed frames);
        // keeps removed segments from coming back after a crash.
        let _ = sync_dir(&self.dir);
    }

    /// Appends the frame of one transaction's write sets; returns its size.
    /// Call under the writer lock. Durable after the next [`Journal::sync`].
    pub fn append(&self, sets: &[(&HotTree, &WriteSet)]) -> Result<usize, StoreError> {
        let plain = encode_frame(sets, |tree, key| tree.overlay_value(key));
        let plain_len = u32::try_from(plain.len()).map_err(|_| {
            StoreError::encode("(journal)", "(frame)", "journal frame", "frame over 4 GiB")
        })?;
        let mut bytes = Vec::with_capacity(plain.len() / 4 + 8);
        bytes.push(FRAME_FORMAT_DELTA);
        bytes.extend_from_slice(&plain_len.to_be_bytes());
        let mut segments = self.segments();
        if let Err(e) = compress_piece(&mut segments.encoder, &plain, &mut bytes) {
            // The stream's state is unknown now: later frames go to a new
            // segment with a new stream.
            drop(segments);
            let _ = self
                .start_segment()
                .map(|older| self.segments().older = older);
            return Err(StoreError::encode(
                "(journal)",
                "(frame)",
                "journal frame",
                e,
            ));
        }
        let seq = segments.next;
        let payload = seal::seal(&self.seal, JOURNAL_TREE, &seq.to_be_bytes(), bytes)
            .map_err(|e| StoreError::encode("(journal)", "(frame)", "journal frame", e))?;
        let len = u32::try_from(payload.len()).map_err(|_| {
            StoreError::encode("(journal)", "(frame)", "journal frame", "frame over 4 GiB")
        })?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&seq.to_be_bytes());
        crc.update(&payload);
        let mut record = Vec::with_capacity(RECORD_HEADER + payload.len());
        record.extend_from_slice(&len.to_be_bytes());
        record.extend_from_slice(&crc.finalize().to_be_bytes());
        record.extend_from_slice(&seq.to_be_bytes());
        record.extend_from_slice(&payload);
        // One write per frame, appended: a crash leaves a prefix of it at
        // worst, which replay recognises and ignores.
        if let Err(e) = (&*segments.current).write_all(&record) {
            // The segment may end in part of this record, and its stream
            // holds a piece the file does not: later frames go to a new
            // segment (replay stops reading a segment at a broken record).
            drop(segments);
            let _ = self
                .start_segment()
                .map(|older| self.segments().older = older);
            return Err(self.io("appending a frame", e));
        }
        segments.next += 1;
        segments.pending_bytes += record.len() as u64;
        segments.pending_plain += plain.len() as u64;
        self.stats.frames_written.fetch_add(1, Ordering::Relaxed);
        self.stats
            .frame_bytes
            .fetch_add(record.len() as u64, Ordering::Relaxed);
        Ok(record.len())
    }

    /// Makes every frame appended so far durable (the group commit's
    /// flusher calls it before flushing sled). Does not hold the lock
    /// while syncing, so appends go on meanwhile.
    pub fn sync(&self) -> std::io::Result<()> {
        let current = Arc::clone(&self.segments().current);
        current.sync_data()
    }

    /// Decodes frame `seq`; `stream` is its segment's zstd stream (created
    /// at the segment's first streamed frame), `base` the value a key has
    /// before this frame (what its deltas apply to). Unless `apply`, the
    /// frame is only decompressed (its stream's state advanced) and
    /// nothing is returned.
    fn decode(
        &self,
        seq: u64,
        value: &[u8],
        stream: &mut Option<zstd::stream::raw::Decoder<'static>>,
        apply: bool,
        base: impl Fn(&str, &[u8]) -> Option<IVec>,
    ) -> Result<Vec<(String, WriteSet)>, StoreError> {
        let key = seq.to_be_bytes();
        let bytes =
            seal::open(&self.seal, JOURNAL_TREE, &key, value).map_err(|e| corrupt(seq, e))?;
        let (format, rest) = bytes.split_first().ok_or_else(|| corrupt(seq, "empty"))?;
        if ![FRAME_FORMAT_SINGLE, FRAME_FORMAT_STREAM, FRAME_FORMAT_DELTA].contains(format) {
            return Err(corrupt(seq, format!("unknown frame format {format}")));
        }
        let len = rest
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| corrupt(seq, "truncated"))? as usize;
        if len > MAX_PLAIN_FRAME {
            return Err(corrupt(seq, format!("plain length {len} too large")));
        }
        let plain = if *format == FRAME_FORMAT_SINGLE {
            zstd::bulk::decompress(&rest[4..], len).map_err(|e| corrupt(seq, e))?
        } else {
            let decoder = match stream {
                Some(decoder) => decoder,
                None => {
                    stream.insert(zstd::stream::raw::Decoder::new().map_err(|e| corrupt(seq, e))?)
                }
            };
            decompress_piece(decoder, &rest[4..], len).map_err(|e| corrupt(seq, e))?
        };
        if !apply {
            return Ok(Vec::new());
        }
        let base = (*format == FRAME_FORMAT_DELTA).then_some(&base as &Base<'_>);
        decode_frame(&plain, base).map_err(|e| corrupt(seq, e))
    }

    /// Moves the hot state into sled and drops the frames behind it (see
    /// the module docs). Call under the writer lock.
    pub fn checkpoint(&self, hot: &HotTrees) -> Result<(), StoreError> {
        match self.begin_checkpoint(hot)? {
            Some(mut truncation) => {
                // Under the writer lock from commit to flush, no other
                // checkpoint can start in between: every segment but the
                // new one holds only frames this one covers, including
                // those a background checkpoint still flushing has not
                // removed yet (an erasure must not leave them behind).
                if let Ok(files) = self.segment_files_but_current() {
                    truncation.segments = files;
                }
                self.finish_checkpoint(truncation)
            }
            None => Ok(()),
        }
    }

    /// Every segment file in the directory except the one appended to.
    fn segment_files_but_current(&self) -> std::io::Result<Vec<PathBuf>> {
        let current = self.segments().current_path.clone();
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path != current && path.extension().is_some_and(|x| x == "wal") {
                files.push(path);
            }
        }
        Ok(files)
    }

    /// The part of a checkpoint that needs the writer lock: the hot state
    /// committed to sled's trees (in memory, not flushed) in one
    /// transaction with the newest frame sequence, the hot state dropped
    /// (readers find the same values in sled), and a new segment started.
    /// `None` if there was nothing to do. Call under the writer lock, then
    /// [`Journal::finish_checkpoint`] with or without it.
    pub fn begin_checkpoint(&self, hot: &HotTrees) -> Result<Option<Truncation>, StoreError> {
        let (first, next) = {
            let segments = self.segments();
            (segments.first, segments.next)
        };
        let dirty = hot.dirty();
        if dirty.is_empty() && first == next {
            return Ok(None);
        }
        let started = Instant::now();
        failpoint("checkpoint-before", None);
        let keys = self.commit(&dirty, next.saturating_sub(1))?;
        drop(dirty);
        hot.clear();
        {
            let mut segments = self.segments();
            segments.first = next;
            segments.pending_bytes = 0;
            segments.pending_plain = 0;
        }
        // Frames from here on go to a new segment; the old ones stay until
        // the flush below made the trees durable.
        let segments = self.start_segment()?;
        failpoint("checkpoint-after", None);
        Ok(Some(Truncation {
            segments,
            frames: next - first,
            keys,
            started,
        }))
    }

    /// The rest of a checkpoint, which need not hold the writer lock (a
    /// flush of sled takes up to hundreds of milliseconds, during which
    /// ingest goes on into the new segment): flushes sled, then removes
    /// the segments the checkpoint covered. If the flush fails they stay,
    /// and the next checkpoint removes them.
    pub fn finish_checkpoint(&self, truncation: Truncation) -> Result<(), StoreError> {
        let Truncation {
            segments,
            frames,
            keys,
            started,
        } = truncation;
        // Durable before the frames go: until then they are the copy.
        if let Err(e) = self.db.flush() {
            self.segments().older.extend(segments);
            return Err(StoreError::sled("flushing a checkpoint", e));
        }
        failpoint("journal-truncate", None);
        self.remove_segments(&segments);
        let micros = started.elapsed().as_micros() as u64;
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.stats
            .checkpoint_keys
            .fetch_add(keys, Ordering::Relaxed);
        self.stats
            .checkpoint_micros
            .fetch_add(micros, Ordering::Relaxed);
        tracing::debug!(frames, keys, micros, "checkpoint done");
        Ok(())
    }
}

/// Splits one record off `bytes`: its sequence, payload and the rest, or
/// `None` when the record is incomplete or its checksum fails.
fn read_record(bytes: &[u8]) -> Option<(u64, &[u8], &[u8])> {
    let header = bytes.get(..RECORD_HEADER)?;
    let len = u32::from_be_bytes(header.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(header.get(4..8)?.try_into().ok()?);
    let seq_bytes = header.get(8..16)?;
    let seq = u64::from_be_bytes(seq_bytes.try_into().ok()?);
    let payload = bytes.get(RECORD_HEADER..RECORD_HEADER.checked_add(len)?)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(seq_bytes);
    hasher.update(payload);
    if hasher.finalize() != crc {
        return None;
    }
    Some((seq, payload, bytes.get(RECORD_HEADER + len..)?))
}

/// A crash injected at a named point, for the crash tests: in debug builds
/// only, when `FAILPOINT_MESHLET_STORE` names the point (the process aborts, as
/// a SIGKILL would stop it; after a flush, so what was written is on disk
/// and the next open sees a half-finished step if there is one).
pub(crate) fn failpoint(name: &str, flush: Option<&sled::Db>) {
    #[cfg(debug_assertions)]
    if std::env::var("FAILPOINT_MESHLET_STORE").is_ok_and(|v| v == name) {
        if let Some(db) = flush {
            let _ = db.flush();
        }
        eprintln!("meshlet: failpoint {name}: aborting");
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = (name, flush);
}

/// Where a frame's deltas find their bases: the value a key of a tree
/// (by name) has before the frame, as replay has rebuilt it.
type Base<'a> = dyn Fn(&str, &[u8]) -> Option<IVec> + 'a;

/// The plain frame of `sets`. A value whose key has a `base` (the value
/// an earlier frame since the last checkpoint wrote) is written as a
/// delta against it when that is shorter (presence byte 2).
fn encode_frame(
    sets: &[(&HotTree, &WriteSet)],
    base: impl Fn(&HotTree, &[u8]) -> Option<IVec>,
) -> Vec<u8> {
    let size: usize = sets
        .iter()
        .map(|(t, w)| {
            6 + t.name().len()
                + w.iter()
                    .map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, |v| v.len()))
                    .sum::<usize>()
        })
        .sum();
    let mut out = Vec::with_capacity(size / 4 + 4);
    let mut scratch = Vec::new();
    out.extend_from_slice(&(sets.len() as u32).to_be_bytes());
    for (tree, writes) in sets {
        let name = tree.name().as_bytes();
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&(writes.len() as u32).to_be_bytes());
        for (key, value) in writes.iter() {
            out.extend_from_slice(&(key.len() as u32).to_be_bytes());
            out.extend_from_slice(key);
            let base = value
                .as_ref()
                .filter(|v| v.len() >= delta::MIN_DELTA_INPUT)
                .and_then(|_| base(tree, key))
                .filter(|b| b.len() >= delta::MIN_DELTA_INPUT);
            if let (Some(value), Some(base)) = (value, base) {
                scratch.clear();
                delta::encode(&base, value, &mut scratch);
                if scratch.len() < value.len() {
                    out.push(2);
                    out.extend_from_slice(&(scratch.len() as u32).to_be_bytes());
                    out.extend_from_slice(&scratch);
                    continue;
                }
            }
            match value {
                Some(value) => {
                    out.push(1);
                    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
                    out.extend_from_slice(value);
                }
                None => out.push(0),
            }
        }
    }
    out
}

/// Reads a plain frame; an error if it is malformed (never panics). Its
/// deltas are applied to what `base` says (`None`: a frame format
/// without deltas, where presence byte 2 is malformed).
fn decode_frame(
    bytes: &[u8],
    base: Option<&Base<'_>>,
) -> Result<Vec<(String, WriteSet)>, &'static str> {
    decode_frame_entries(bytes, base)?.ok_or("malformed frame")
}

fn decode_frame_entries(
    mut bytes: &[u8],
    base: Option<&Base<'_>>,
) -> Result<Option<Vec<(String, WriteSet)>>, &'static str> {
    // `?` on these is `return Ok(None)`: malformed.
    macro_rules! some {
        ($e:expr) => {
            match $e {
                Some(v) => v,
                None => return Ok(None),
            }
        };
    }
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (bytes.get(..n)?, bytes.get(n..)?);
        *bytes = rest;
        Some(head)
    }
    fn u32_at(bytes: &mut &[u8]) -> Option<usize> {
        Some(u32::from_be_bytes(take(bytes, 4)?.try_into().ok()?) as usize)
    }
    let trees = some!(u32_at(&mut bytes));
    let mut out = Vec::with_capacity(trees.min(1024));
    for _ in 0..trees {
        let name_len = some!(take(&mut bytes, 2).and_then(|b| <[u8; 2]>::try_from(b).ok()));
        let name_len = u16::from_be_bytes(name_len) as usize;
        let name =
            some!(take(&mut bytes, name_len).and_then(|n| std::str::from_utf8(n).ok())).to_string();
        let entries = some!(u32_at(&mut bytes));
        let mut writes = WriteSet::new();
        for _ in 0..entries {
            let key_len = some!(u32_at(&mut bytes));
            let key = IVec::from(some!(take(&mut bytes, key_len)));
            let value = match some!(take(&mut bytes, 1).and_then(|b| b.first())) {
                0 => None,
                1 => {
                    let len = some!(u32_at(&mut bytes));
                    Some(IVec::from(some!(take(&mut bytes, len))))
                }
                2 => {
                    let Some(base) = base else {
                        return Ok(None);
                    };
                    let len = some!(u32_at(&mut bytes));
                    let patch = some!(take(&mut bytes, len));
                    let old = base(&name, &key).ok_or("a delta without a base value")?;
                    let new =
                        delta::apply(&old, patch).ok_or("a delta made against another value")?;
                    Some(IVec::from(new))
                }
                _ => return Ok(None),
            };
            writes.insert(key, value);
        }
        out.push((name, writes));
    }
    Ok(bytes.is_empty().then_some(out))
}

impl Store {
    /// Runs `work` over views of `trees` (reads see its own writes, then
    /// the hot state, then sled) and, if it returned Ok, makes its writes
    /// one journal frame and merges them into the hot state: all or
    /// nothing, also across a crash. Call under the writer lock. `work`
    /// runs once (nothing conflicts under the lock).
    pub(crate) fn hot_transaction<R>(
        &self,
        trees: &[&HotTree],
        work: impl FnOnce(&[TxTree<'_>]) -> TxResult<R>,
        context: impl FnOnce() -> String,
    ) -> Result<R, StoreError> {
        let views: Vec<TxTree<'_>> = trees.iter().map(|t| TxTree::new(t)).collect();
        let value = match work(&views) {
            Ok(value) => value,
            Err(ConflictableTransactionError::Abort(e)) => return Err(e),
            Err(ConflictableTransactionError::Storage(e)) => {
                return Err(StoreError::sled(context(), e))
            }
            Err(ConflictableTransactionError::Conflict) => {
                return Err(StoreError::sled(
                    context(),
                    sled::Error::ReportableBug("a hot transaction conflicted".into()),
                ))
            }
        };
        let writes: Vec<(&HotTree, WriteSet)> = views
            .into_iter()
            .map(|v| (v.tree(), v.into_writes()))
            .filter(|(_, w)| !w.is_empty())
            .collect();
        if writes.is_empty() {
            return Ok(value);
        }
        let sets: Vec<(&HotTree, &WriteSet)> = writes.iter().map(|(t, w)| (*t, w)).collect();
        self.inner.journal.append(&sets)?;
        for (tree, set) in writes {
            tree.merge(set);
        }
        // Both bound a replay: the hot state is what it writes, the
        // frames what it reads (each frame holds whole instances, so they
        // grow faster than the hot state when entities report often).
        let bound = self.inner.config.hot_bytes;
        let plain_bound = bound.saturating_mul(PENDING_PLAIN_FACTOR) as u64;
        if self.inner.hot.bytes() > bound || self.inner.journal.pending_plain_bytes() > plain_bound
        {
            self.inner.journal.checkpoint(&self.inner.hot)?;
        }
        Ok(value)
    }

    /// Moves the hot state into the trees now (see `journal.rs`); takes the
    /// writer lock. The background checkpointer calls it every
    /// `checkpoint_interval`.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let truncation = {
            let _writer = self.write_lock();
            self.inner.journal.begin_checkpoint(&self.inner.hot)?
        };
        // The flush runs without the writer lock: ingest appends to the new
        // segment meanwhile (this removed a ~200 ms stall per checkpoint).
        match truncation {
            Some(truncation) => self.inner.journal.finish_checkpoint(truncation),
            None => Ok(()),
        }
    }

    /// [`Store::checkpoint`] for a caller holding the writer lock: before
    /// a write that goes to sled directly.
    pub(crate) fn checkpoint_locked(&self) -> Result<(), StoreError> {
        self.inner.journal.checkpoint(&self.inner.hot)
    }

    /// Journal frames written since the last checkpoint.
    pub fn journal_pending_frames(&self) -> u64 {
        self.inner.journal.pending_frames()
    }

    /// Bytes of journal frames written since the last checkpoint: what a
    /// replay after a crash would read now.
    pub fn journal_pending_bytes(&self) -> u64 {
        self.inner.journal.pending_bytes()
    }

    /// Plain (uncompressed) bytes of the journal frames written since the
    /// last checkpoint: what a replay would decode now.
    pub fn journal_pending_plain_bytes(&self) -> u64 {
        self.inner.journal.pending_plain_bytes()
    }

    /// Bytes the hot state holds now.
    pub fn hot_bytes(&self) -> usize {
        self.inner.hot.bytes()
    }

    /// The journal's counters.
    pub fn journal_stats(&self) -> Arc<JournalStats> {
        Arc::clone(&self.inner.journal.stats)
    }

    /// The journal's and the hot state's series for `/metrics`.
    pub fn encode_journal_metrics(
        &self,
        enc: &mut crate::telemetry::expose::Encoder<'_>,
    ) -> crate::telemetry::expose::Encoded {
        let stats = &self.inner.journal.stats;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counters: [(&str, &str, &AtomicU64); 5] = [
            (
                "meshlet_store_journal_frames_total",
                "Journal frames written (one per write group).",
                &stats.frames_written,
            ),
            (
                "meshlet_store_journal_frame_bytes_total",
                "Bytes of journal frames as stored (compressed, sealed).",
                &stats.frame_bytes,
            ),
            (
                "meshlet_store_journal_frames_replayed_total",
                "Journal frames applied at open, after a crash.",
                &stats.frames_replayed,
            ),
            (
                "meshlet_store_checkpoints_total",
                "Checkpoints of the hot state into the trees.",
                &stats.checkpoints,
            ),
            (
                "meshlet_store_checkpoint_keys_total",
                "Keys written or removed by checkpoints.",
                &stats.checkpoint_keys,
            ),
        ];
        for (name, help, value) in counters {
            crate::telemetry::expose::counter(enc, name, help, load(value))?;
        }
        crate::telemetry::expose::counter(
            enc,
            "meshlet_store_checkpoint_seconds_total",
            "Time spent in checkpoints (the writer waits for the commit, not the flush).",
            load(&stats.checkpoint_micros) as f64 / 1e6,
        )?;
        crate::telemetry::expose::gauge(
            enc,
            "meshlet_store_hot_bytes",
            "Bytes of hot state not yet checkpointed (bounded by store.hot_bytes).",
            self.inner.hot.bytes() as u64,
        )?;
        crate::telemetry::expose::gauge(
            enc,
            "meshlet_store_journal_pending_frames",
            "Journal frames not yet checkpointed.",
            self.inner.journal.pending_frames(),
        )
    }
}

/// The background checkpointer: one thread per store, checkpointing every
/// interval until the store is dropped.
pub(crate) struct Checkpointer {
    shared: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    pub fn start(store: Weak<Inner>, interval: Duration) -> std::io::Result<Checkpointer> {
        let shared = Arc::new((Mutex::new(false), Condvar::new()));
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("meshlet-checkpoint".to_string())
            .spawn(move || {
                let (stop, cond) = &*theirs;
                let mut stopped = stop.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    let deadline = Instant::now() + interval;
                    while !*stopped {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        stopped = cond
                            .wait_timeout(stopped, left)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                    if *stopped {
                        return;
                    }
                    drop(stopped);
                    let Some(inner) = store.upgrade() else {
                        return;
                    };
                    let store = Store { inner };
                    if let Err(e) = store.checkpoint() {
                        tracing::error!(error = %e, "checkpoint failed; the journal keeps the writes");
                    }
                    // Dropped here, not while holding `stop`: if this was
                    // the last handle, the store's drop stops this thread.
                    drop(store);
                    stopped = stop.lock().unwrap_or_else(|p| p.into_inner());
                }
            })?;
        Ok(Checkpointer {
            shared,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (stop, cond) = &*self.shared;
        *stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cond.notify_all();
        if let Some(thread) = self.thread.take() {
            // The thread itself may hold the last handle to the store.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_garbage_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path().join("db")).expect("open");
        let hot = HotTrees::new(db);
        let a = hot.open("p/instances").expect("tree");
        let b = hot.open("outbox").expect("tree");
        let wa = WriteSet::from([
            (IVec::from(&b"k1"[..]), Some(IVec::from(&b"v1"[..]))),
            (IVec::from(&b"k2"[..]), None),
        ]);
        let wb = WriteSet::from([(IVec::from(&b""[..]), Some(IVec::from(&b""[..])))]);
        let plain = encode_frame(&[(&a, &wa), (&b, &wb)], |_, _| None);
        let back = decode_frame(&plain, None).expect("decodes");
        assert_eq!(
            back,
            vec![("p/instances".to_string(), wa), ("outbox".to_string(), wb)]
        );
        for cut in 0..plain.len() {
            assert!(decode_frame(&plain[..cut], None).is_err(), "cut at {cut}");
        }
    }

    /// A value rewritten since the last checkpoint goes as a delta against
    /// the overlay's value; replay rebuilds it from the value it rebuilt
    /// before, and refuses one made against something else.
    #[test]
    fn a_rewritten_value_is_a_delta_that_needs_its_base() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path().join("db")).expect("open");
        let hot = HotTrees::new(db);
        let tree = hot.open("p/instances").expect("tree");
        let old: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
        let mut new = old.clone();
        new[10] = 0xff;
        new.extend_from_slice(b"one more event at the end of the open tail");
        tree.merge(WriteSet::from([(
            IVec::from(&b"m-1"[..]),
            Some(IVec::from(old.clone())),
        )]));
        let writes = WriteSet::from([
            (IVec::from(&b"m-1"[..]), Some(IVec::from(new.clone()))),
            (IVec::from(&b"m-2"[..]), Some(IVec::from(old.clone()))),
        ]);
        let plain = encode_frame(&[(&tree, &writes)], |t, k| t.overlay_value(k));
        assert!(
            plain.len() < old.len() + new.len() / 10,
            "{} B: m-2 whole, m-1 a delta",
            plain.len()
        );
        let base = |name: &str, key: &[u8]| {
            (name == "p/instances" && key == b"m-1").then(|| IVec::from(old.clone()))
        };
        let back = decode_frame(&plain, Some(&base)).expect("decodes");
        assert_eq!(back, vec![("p/instances".to_string(), writes)]);
        assert!(
            decode_frame(&plain, None).is_err(),
            "format 2 has no deltas"
        );
        let none = |_: &str, _: &[u8]| None;
        assert_eq!(
            decode_frame(&plain, Some(&none)),
            Err("a delta without a base value")
        );
        let other = |_: &str, _: &[u8]| Some(IVec::from(new.clone()));
        assert_eq!(
            decode_frame(&plain, Some(&other)),
            Err("a delta made against another value")
        );
    }
}
