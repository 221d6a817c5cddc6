//! Group commit: many callers waiting for durability share one flush.
//!
//! Every successful write bumps the *write generation* after it committed.
//! A caller of `durable()` notes the current generation `g` and waits until
//! a flush that *started* after generation `g` was reached has completed:
//! such a flush covers every write that returned before the call. One
//! flusher thread runs the flushes; callers that arrive while a flush is in
//! progress are served together by the next one, so N concurrent callers
//! cost at most two `db.flush()` calls, not N.
//!
//! The flusher is a plain thread (not a task) so both async callers (tokio
//! `watch`) and blocking callers (a condvar) can wait on it, with or without
//! a runtime. It holds a handle to the sled database and is stopped and
//! joined when the store is dropped, so the database closes and can be
//! reopened.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::watch;

use super::StoreError;

/// What the flusher has achieved so far, published to waiters.
#[derive(Clone, Debug, Default)]
struct FlushStatus {
    /// Every write with a generation ≤ this is on disk.
    flushed_gen: u64,
    /// Number of flush rounds started / completed.
    rounds_started: u64,
    rounds_completed: u64,
    /// The error of the latest completed round, if it failed.
    last_error: Option<String>,
}

#[derive(Default)]
struct FlushState {
    status: FlushStatus,
    /// A caller waits for a round that has not started yet.
    requested: bool,
    shutdown: bool,
}

struct Shared {
    write_gen: AtomicU64,
    state: Mutex<FlushState>,
    /// Wakes the flusher (request, shutdown) and blocking waiters (round done).
    cond: Condvar,
    watch: watch::Sender<FlushStatus>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, FlushState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The group-commit flusher of one store.
pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What a waiter needs to see before it may return.
#[derive(Clone, Copy)]
struct Ticket {
    target_gen: u64,
    /// Rounds started when the request was made; a later round started
    /// after the request, so it covers `target_gen`.
    round_at_request: u64,
}

enum Verdict {
    Done(Result<(), StoreError>),
    Wait,
}

fn verdict(status: &FlushStatus, ticket: Ticket) -> Verdict {
    if status.flushed_gen >= ticket.target_gen {
        return Verdict::Done(Ok(()));
    }
    if status.rounds_completed > ticket.round_at_request {
        // A round that started after our request completed and still did
        // not reach our generation: it failed.
        let detail = status
            .last_error
            .clone()
            .unwrap_or_else(|| "flush did not complete".to_string());
        return Verdict::Done(Err(StoreError::Flush { detail }));
    }
    Verdict::Wait
}

impl GroupCommit {
    pub(crate) fn start(
        db: sled::Db,
        journal: Arc<super::journal::Journal>,
    ) -> Result<GroupCommit, StoreError> {
        let (watch, _) = watch::channel(FlushStatus::default());
        let shared = Arc::new(Shared {
            write_gen: AtomicU64::new(0),
            state: Mutex::new(FlushState::default()),
            cond: Condvar::new(),
            watch,
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("meshlet-store-flush".to_string())
            .spawn(move || flusher(db, journal, thread_shared))
            .map_err(|e| StoreError::Flush {
                detail: format!("cannot start the flusher thread: {e}"),
            })?;
        Ok(GroupCommit {
            shared,
            thread: Some(thread),
        })
    }

    /// Called after every committed write.
    pub(crate) fn wrote(&self) {
        self.shared.write_gen.fetch_add(1, Ordering::SeqCst);
    }

    /// Registers interest in the current generation; `None` if it is
    /// already durable.
    fn request(&self) -> Option<Ticket> {
        let target_gen = self.shared.write_gen.load(Ordering::SeqCst);
        let mut state = self.shared.lock();
        if state.status.flushed_gen >= target_gen {
            return None;
        }
        state.requested = true;
        let ticket = Ticket {
            target_gen,
            round_at_request: state.status.rounds_started,
        };
        drop(state);
        self.shared.cond.notify_all();
        Some(ticket)
    }

    pub(crate) async fn durable(&self) -> Result<(), StoreError> {
        self.barrier().wait().await
    }

    /// A durability barrier over every write committed so far, with its
    /// flush requested now; wait for it later with [`DurableBarrier::wait`].
    pub(crate) fn barrier(&self) -> DurableBarrier {
        let rx = self.shared.watch.subscribe();
        DurableBarrier {
            ticket: self.request(),
            rx,
        }
    }
}

/// Writes committed before [`crate::store::Store::durable_barrier`] was
/// called, on their way to disk. Waiting does not include later writes, so
/// a writer can go on committing while earlier writes are flushed.
pub struct DurableBarrier {
    /// `None`: already durable when taken.
    ticket: Option<Ticket>,
    rx: watch::Receiver<FlushStatus>,
}

impl DurableBarrier {
    /// Returns once those writes are on disk, or the flush that should
    /// have put them there failed.
    pub async fn wait(mut self) -> Result<(), StoreError> {
        let Some(ticket) = self.ticket else {
            return Ok(());
        };
        let mut outcome = Ok(());
        let waited = self
            .rx
            .wait_for(|status| match verdict(status, ticket) {
                Verdict::Done(result) => {
                    outcome = result;
                    true
                }
                Verdict::Wait => false,
            })
            .await;
        match waited {
            Ok(_) => outcome,
            Err(_) => Err(StoreError::Flush {
                detail: "the store's flusher stopped".to_string(),
            }),
        }
    }
}

impl GroupCommit {
    pub(crate) fn durable_blocking(&self) -> Result<(), StoreError> {
        let Some(ticket) = self.request() else {
            return Ok(());
        };
        let mut state = self.shared.lock();
        loop {
            if let Verdict::Done(result) = verdict(&state.status, ticket) {
                return result;
            }
            if state.shutdown {
                return Err(StoreError::Flush {
                    detail: "the store's flusher stopped".to_string(),
                });
            }
            state = self
                .shared
                .cond
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.cond.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn flusher(db: sled::Db, journal: Arc<super::journal::Journal>, shared: Arc<Shared>) {
    loop {
        let mut state = shared.lock();
        while !state.requested && !state.shutdown {
            state = shared.cond.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if state.shutdown {
            break;
        }
        state.requested = false;
        state.status.rounds_started += 1;
        drop(state);

        // Loaded after the round started: every write with a generation up
        // to here has committed, so this flush covers it.
        let gen = shared.write_gen.load(Ordering::SeqCst);
        let span = tracing::debug_span!("store.flush", gen);
        // The journal holds the writes of ingest; sled, what went to it
        // directly (checkpoints flush themselves).
        let result = span.in_scope(|| {
            journal.sync().map_err(|e| format!("journal: {e}"))?;
            db.flush().map_err(|e| e.to_string())
        });

        let mut state = shared.lock();
        state.status.rounds_completed += 1;
        match result {
            Ok(bytes) => {
                tracing::trace!(gen, bytes, "store flush done");
                state.status.flushed_gen = state.status.flushed_gen.max(gen);
                state.status.last_error = None;
            }
            Err(e) => {
                tracing::error!(gen, error = %e, "store flush failed");
                state.status.last_error = Some(e);
            }
        }
        let status = state.status.clone();
        drop(state);
        shared.cond.notify_all();
        shared.watch.send_replace(status);
    }
    // Best effort on close; a caller that needed durability asked for it.
    if let Err(e) = db.flush() {
        tracing::warn!(error = %e, "store flush on close failed");
    }
}
