//! The journal: every write of the hot trees as one compressed frame, the
//! unit of durable work; checkpoints that move the hot state into sled's
//! trees and drop the frames behind them; replay of the frames a crash
//! left.
//!
//! # Why (measured, `tests/store_write_amplification.rs`)
//!
//! Before the journal, 50,000 single-record jobs of 1,000 machines in
//! groups of 100 wrote **43–46 bytes to disk per raw JSON byte**, with a
//! durability barrier per group or with none at all (43.6×): the flushes
//! were not the cost. Each record rewrote its instance (~0.8–1 KiB with
//! the open history tail) plus dedupe, history and audit keys, ~8× the raw
//! bytes handed to sled; sled 0.34's log-structured page cache multiplied
//! that by ~5 (leaf pages of several instances consolidated and rewritten
//! whole, segments relocated by its cleaner). So the fix is writing fewer
//! and larger things: one frame per write group instead of one instance
//! rewrite per record, and each dirty key once per checkpoint.
//!
//! # Frames
//!
//! A frame is the write set of one [`Store::hot_transaction`]: per hot tree
//! (by sled tree name), the keys written with their new values or their
//! removal — the records' instances, history and audit keys, dedupe,
//! quarantine, source offsets and outbox entries of a whole ingest group,
//! so everything a group did is in one frame or in none. Plain layout
//! (version 1): `u32` tree count, then per tree a `u16`-prefixed name, a
//! `u32` entry count, and per entry a `u32`-prefixed key, a presence byte
//! and, when present, a `u32`-prefixed value. The frame value is a format
//! byte, the plain length (`u32`) and the zstd frame; sealed under the
//! `journal` tree and its key when encryption is on. Keys are the frame
//! sequence, `u64` big-endian.
//!
//! A frame is physical (what to write), not logical (what came in), so
//! replay needs neither the outbox planner (installed after open), nor the
//! dictionaries, nor the configuration of the write that made it: applying
//! the frames after the last checkpoint in order gives exactly the state
//! the acknowledged writes had.
//!
//! # Durability
//!
//! The frame is inserted before the write set joins the overlay; the group
//! commit's flush (`durable.rs`) makes it durable, and acknowledgements
//! still wait for that flush. sled recovers a single insert whole or not
//! at all.
//!
//! # Checkpoints
//!
//! A checkpoint writes every dirty key of every hot tree, removes the
//! frames up to the newest one and records that sequence in `meta`, all
//! in **one** sled transaction: after a crash either the old trees and all
//! frames are there (replay applies them) or the new trees and none of
//! those frames — never a frame applied twice over a newer state. It runs
//! under the writer lock, every `store.checkpoint_interval` (a background
//! thread), whenever the overlay passes `store.hot_bytes` (the writer,
//! right after its write), before every write that goes to sled directly,
//! and when the store closes.
//!
//! # Replay
//!
//! At open, the frames left are applied the same way as a checkpoint (one
//! transaction with their removal), before anything reads the store.
//! Their total is bounded by what one checkpoint interval or `hot_bytes`
//! lets accumulate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use sled::transaction::ConflictableTransactionError;
use sled::{IVec, Transactional};

use super::hot::{HotTree, HotTrees, TxTree, WriteSet};
use super::seal::{self, Seal};
use super::write::TxResult;
use super::{tx_result, Inner, Store, StoreError};

/// The journal's sled tree.
pub(crate) const JOURNAL_TREE: &str = "journal";
/// `meta` key of the newest checkpointed frame sequence (`u64` BE).
const META_CHECKPOINT_KEY: &[u8] = b"checkpoint_seq";
/// Frame value format byte.
const FRAME_FORMAT: u8 = 1;
/// Largest plain frame accepted when decoding (a frame is one write
/// group's keys; far below this in practice).
const MAX_PLAIN_FRAME: usize = 1 << 30;
/// zstd level of frames: frames are written once and read only by
/// replay, so speed matters more than the last percent of size.
const FRAME_ZSTD_LEVEL: i32 = 1;

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

#[derive(Clone, Copy, Debug, Default)]
struct Seqs {
    /// The oldest frame not yet checkpointed.
    first: u64,
    /// The sequence the next frame gets.
    next: u64,
}

pub(crate) struct Journal {
    tree: sled::Tree,
    meta: sled::Tree,
    seal: Seal,
    seqs: Mutex<Seqs>,
    pub stats: Arc<JournalStats>,
}

fn corrupt(seq: u64, detail: impl ToString) -> StoreError {
    StoreError::bookkeeping(format!("journal frame {seq}"), "journal frame", detail)
}

impl Journal {
    /// Opens the journal and replays the frames a crash left into the
    /// trees (see the module docs).
    pub fn open(
        db: &sled::Db,
        meta: sled::Tree,
        seal: Seal,
        hot: &HotTrees,
    ) -> Result<Journal, StoreError> {
        let tree = db
            .open_tree(JOURNAL_TREE)
            .map_err(|e| StoreError::sled(format!("opening tree `{JOURNAL_TREE}`"), e))?;
        let checkpointed = meta
            .get(META_CHECKPOINT_KEY)
            .map_err(|e| StoreError::sled("reading the checkpoint sequence", e))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let last = tree
            .last()
            .map_err(|e| StoreError::sled("reading the journal", e))?
            .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok())
            .map(u64::from_be_bytes);
        let next = last.map_or(checkpointed + 1, |l| l.max(checkpointed) + 1);
        let journal = Journal {
            tree,
            meta,
            seal,
            seqs: Mutex::new(Seqs { first: next, next }),
            stats: Arc::new(JournalStats::default()),
        };
        journal.replay(hot)?;
        Ok(journal)
    }

    fn seqs(&self) -> MutexGuard<'_, Seqs> {
        self.seqs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Frames not checkpointed yet.
    pub fn pending_frames(&self) -> u64 {
        let seqs = *self.seqs();
        seqs.next - seqs.first
    }

    /// Applies every frame in the journal to the trees, in order, and
    /// removes them, in one transaction.
    fn replay(&self, hot: &HotTrees) -> Result<(), StoreError> {
        let started = Instant::now();
        let mut sets: std::collections::BTreeMap<String, WriteSet> = Default::default();
        let mut frames = Vec::new();
        for item in self.tree.iter() {
            let (key, value) = item.map_err(|e| StoreError::sled("reading the journal", e))?;
            let seq = <[u8; 8]>::try_from(key.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| corrupt(0, "malformed frame key"))?;
            for (tree, writes) in self.decode(seq, &value)? {
                sets.entry(tree).or_default().extend(writes);
            }
            frames.push(key);
        }
        if frames.is_empty() {
            return Ok(());
        }
        let trees: Vec<HotTree> = sets
            .keys()
            .map(|name| {
                hot.open(name)
                    .map_err(|e| StoreError::sled(format!("opening tree `{name}`"), e))
            })
            .collect::<Result<_, _>>()?;
        let dirty: Vec<(HotTree, WriteSet)> = trees.into_iter().zip(sets.into_values()).collect();
        let last = frames
            .last()
            .and_then(|k| <[u8; 8]>::try_from(k.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let keys = self.commit(&dirty, &frames, last)?;
        let replayed = frames.len() as u64;
        self.stats
            .frames_replayed
            .fetch_add(replayed, Ordering::Relaxed);
        tracing::info!(
            frames = replayed,
            keys,
            millis = started.elapsed().as_millis() as u64,
            "journal replayed"
        );
        Ok(())
    }

    /// One transaction: the write sets into their trees, `frames` out of
    /// the journal, `last` as the checkpoint sequence. Returns the keys
    /// written.
    fn commit(
        &self,
        dirty: &[(HotTree, WriteSet)],
        frames: &[IVec],
        last: u64,
    ) -> Result<u64, StoreError> {
        let mut trees: Vec<&sled::Tree> = dirty.iter().map(|(t, _)| t.sled()).collect();
        trees.push(&self.tree);
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
            for key in frames {
                tx[n].remove(key)?;
            }
            tx[n + 1].overwrite(META_CHECKPOINT_KEY, last.to_be_bytes().as_slice());
            Ok::<_, ConflictableTransactionError<StoreError>>(keys)
        });
        tx_result(result, || "checkpoint: writing the hot state".to_string())
    }

    /// Appends the frame of one transaction's write sets; returns its size.
    /// Call under the writer lock.
    pub fn append(&self, sets: &[(&HotTree, &WriteSet)]) -> Result<usize, StoreError> {
        let plain = encode_frame(sets);
        let mut bytes = Vec::with_capacity(plain.len() / 4 + 8);
        bytes.push(FRAME_FORMAT);
        bytes.extend_from_slice(&(plain.len() as u32).to_be_bytes());
        let packed = zstd::bulk::compress(&plain, FRAME_ZSTD_LEVEL)
            .map_err(|e| StoreError::encode("(journal)", "(frame)", "journal frame", e))?;
        bytes.extend_from_slice(&packed);
        let mut seqs = self.seqs();
        let key = seqs.next.to_be_bytes();
        let bytes = seal::seal(&self.seal, JOURNAL_TREE, &key, bytes)
            .map_err(|e| StoreError::encode("(journal)", "(frame)", "journal frame", e))?;
        let len = bytes.len();
        self.tree
            .insert(key, bytes)
            .map_err(|e| StoreError::sled("writing a journal frame", e))?;
        seqs.next += 1;
        self.stats.frames_written.fetch_add(1, Ordering::Relaxed);
        self.stats
            .frame_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
        Ok(len)
    }

    fn decode(&self, seq: u64, value: &[u8]) -> Result<Vec<(String, WriteSet)>, StoreError> {
        let key = seq.to_be_bytes();
        let bytes =
            seal::open(&self.seal, JOURNAL_TREE, &key, value).map_err(|e| corrupt(seq, e))?;
        let (format, rest) = bytes.split_first().ok_or_else(|| corrupt(seq, "empty"))?;
        if *format != FRAME_FORMAT {
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
        let plain = zstd::bulk::decompress(&rest[4..], len).map_err(|e| corrupt(seq, e))?;
        decode_frame(&plain).ok_or_else(|| corrupt(seq, "malformed frame"))
    }

    /// Moves the hot state into sled and drops the frames behind it (see
    /// the module docs). Call under the writer lock.
    pub fn checkpoint(&self, hot: &HotTrees) -> Result<(), StoreError> {
        let seqs = *self.seqs();
        let dirty = hot.dirty();
        if dirty.is_empty() && seqs.first == seqs.next {
            return Ok(());
        }
        let started = Instant::now();
        failpoint("checkpoint-before", None);
        let frames: Vec<IVec> = (seqs.first..seqs.next)
            .map(|s| IVec::from(&s.to_be_bytes()[..]))
            .collect();
        let keys = self.commit(&dirty, &frames, seqs.next.saturating_sub(1))?;
        failpoint("checkpoint-after", Some(&self.tree));
        hot.clear();
        self.seqs().first = seqs.next;
        let micros = started.elapsed().as_micros() as u64;
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.stats
            .checkpoint_keys
            .fetch_add(keys, Ordering::Relaxed);
        self.stats
            .checkpoint_micros
            .fetch_add(micros, Ordering::Relaxed);
        tracing::debug!(frames = frames.len(), keys, micros, "checkpoint done");
        Ok(())
    }
}

/// A crash injected at a named point, for the crash tests: in debug builds
/// only, when `FAILPOINT_MESHLET_STORE` names the point (the process aborts, as
/// a SIGKILL would stop it; after a flush, so what was written is on disk
/// and the next open sees a half-finished step if there is one).
fn failpoint(name: &str, flush: Option<&sled::Tree>) {
    #[cfg(debug_assertions)]
    if std::env::var("FAILPOINT_MESHLET_STORE").is_ok_and(|v| v == name) {
        if let Some(tree) = flush {
            let _ = tree.flush();
        }
        eprintln!("meshlet: failpoint {name}: aborting");
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = (name, flush);
}

fn encode_frame(sets: &[(&HotTree, &WriteSet)]) -> Vec<u8> {
    let size: usize = sets
        .iter()
        .map(|(t, w)| {
            6 + t.name().len()
                + w.iter()
                    .map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, |v| v.len()))
                    .sum::<usize>()
        })
        .sum();
    let mut out = Vec::with_capacity(size + 4);
    out.extend_from_slice(&(sets.len() as u32).to_be_bytes());
    for (tree, writes) in sets {
        let name = tree.name().as_bytes();
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&(writes.len() as u32).to_be_bytes());
        for (key, value) in writes.iter() {
            out.extend_from_slice(&(key.len() as u32).to_be_bytes());
            out.extend_from_slice(key);
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

/// Reads a plain frame; `None` if it is malformed (never panics).
fn decode_frame(mut bytes: &[u8]) -> Option<Vec<(String, WriteSet)>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (bytes.get(..n)?, bytes.get(n..)?);
        *bytes = rest;
        Some(head)
    }
    fn u32_at(bytes: &mut &[u8]) -> Option<usize> {
        Some(u32::from_be_bytes(take(bytes, 4)?.try_into().ok()?) as usize)
    }
    let trees = u32_at(&mut bytes)?;
    let mut out = Vec::with_capacity(trees.min(1024));
    for _ in 0..trees {
        let name_len = u16::from_be_bytes(take(&mut bytes, 2)?.try_into().ok()?) as usize;
        let name = std::str::from_utf8(take(&mut bytes, name_len)?)
            .ok()?
            .to_string();
        let entries = u32_at(&mut bytes)?;
        let mut writes = WriteSet::new();
        for _ in 0..entries {
            let key_len = u32_at(&mut bytes)?;
            let key = IVec::from(take(&mut bytes, key_len)?);
            let value = match take(&mut bytes, 1)?.first()? {
                0 => None,
                1 => {
                    let len = u32_at(&mut bytes)?;
                    Some(IVec::from(take(&mut bytes, len)?))
                }
                _ => return None,
            };
            writes.insert(key, value);
        }
        out.push((name, writes));
    }
    bytes.is_empty().then_some(out)
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
        if self.inner.hot.bytes() > self.inner.config.hot_bytes {
            self.inner.journal.checkpoint(&self.inner.hot)?;
        }
        Ok(value)
    }

    /// Moves the hot state into the trees now (see `journal.rs`); takes the
    /// writer lock. The background checkpointer calls it every
    /// `checkpoint_interval`.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let _writer = self.write_lock();
        self.checkpoint_locked()
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

    /// Bytes the hot state holds now.
    pub fn hot_bytes(&self) -> usize {
        self.inner.hot.bytes()
    }

    /// The journal's counters.
    pub fn journal_stats(&self) -> Arc<JournalStats> {
        Arc::clone(&self.inner.journal.stats)
    }

    /// The journal's and the hot state's series, Prometheus text format.
    pub fn render_journal_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let stats = &self.inner.journal.stats;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let families: [(&str, &str, &str, String); 8] = [
            (
                "meshlet_store_journal_frames_total",
                "counter",
                "Journal frames written (one per write group).",
                load(&stats.frames_written).to_string(),
            ),
            (
                "meshlet_store_journal_frame_bytes_total",
                "counter",
                "Bytes of journal frames as stored (compressed, sealed).",
                load(&stats.frame_bytes).to_string(),
            ),
            (
                "meshlet_store_journal_frames_replayed_total",
                "counter",
                "Journal frames applied at open, after a crash.",
                load(&stats.frames_replayed).to_string(),
            ),
            (
                "meshlet_store_checkpoints_total",
                "counter",
                "Checkpoints of the hot state into the trees.",
                load(&stats.checkpoints).to_string(),
            ),
            (
                "meshlet_store_checkpoint_keys_total",
                "counter",
                "Keys written or removed by checkpoints.",
                load(&stats.checkpoint_keys).to_string(),
            ),
            (
                "meshlet_store_checkpoint_seconds_total",
                "counter",
                "Time spent in checkpoints (the writer waits meanwhile).",
                format!("{}", load(&stats.checkpoint_micros) as f64 / 1e6),
            ),
            (
                "meshlet_store_hot_bytes",
                "gauge",
                "Bytes of hot state not yet checkpointed (bounded by store.hot_bytes).",
                self.inner.hot.bytes().to_string(),
            ),
            (
                "meshlet_store_journal_pending_frames",
                "gauge",
                "Journal frames not yet checkpointed.",
                self.inner.journal.pending_frames().to_string(),
            ),
        ];
        for (name, kind, help, value) in families {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
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
        let plain = encode_frame(&[(&a, &wa), (&b, &wb)]);
        let back = decode_frame(&plain).expect("decodes");
        assert_eq!(
            back,
            vec![("p/instances".to_string(), wa), ("outbox".to_string(), wb)]
        );
        for cut in 0..plain.len() {
            assert!(decode_frame(&plain[..cut]).is_none(), "cut at {cut}");
        }
    }
}
