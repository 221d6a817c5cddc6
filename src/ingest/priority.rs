//! Where ingest work runs, and at which CPU priority.
//!
//! On a gateway with two cores, ingest and the API take turns on the same
//! cores. Under a burst of device traffic a lookup's latency is then mostly
//! the wait for a core (benches/README.md, "Where the p99 goes": a request
//! the node does no work for missed 5 ms as often as a lookup did). Ingest
//! can afford to wait where a person or an app waiting on a query cannot:
//! a device's QoS 1 acknowledgement comes later, the broker holds what is
//! not read yet, and nothing accepted is lost. So the ingest sources (the
//! embedded broker's sessions, the external broker client, file tails) and
//! the writer's store work can run on a runtime of their own whose threads
//! are `nice`r than the rest of the node: the kernel then gives the cores
//! to the API first and to ingest whatever is left, which under no query
//! load is all of it.
//!
//! The HTTP push handler stays with the API (its sender is a request
//! waiting on an answer like any other), but its records go through the
//! same lowered writer: under a query load that wants every core, a push
//! is answered later, as a device's PUBACK is.
//!
//! With `ingest.nice = 0` there is no second runtime: ingest shares the
//! node's, as before the option existed.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::runtime::{Handle, Runtime};
use tracing::{info, warn};

pub use crate::config::MAX_NICE;

/// Name of every thread of the ingest runtime (workers and the blocking
/// pool that runs the writer's store transactions). 14 bytes: Linux keeps
/// 15 of a thread's name, and operators find them with `top -H` or
/// `/proc/PID/task/*/comm`.
pub const INGEST_THREAD_NAME: &str = "meshlet-ingest";

/// Why the ingest runtime could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the ingest runtime: {0}")]
pub struct IngestRuntimeError(#[from] std::io::Error);

/// The runtime ingest work is spawned on. Holds a runtime of its own when
/// ingest runs at a lower priority; otherwise a handle to the node's.
pub struct IngestRuntime {
    handle: Handle,
    own: Option<Runtime>,
    nice: u8,
}

/// Ingest threads whose priority could not be lowered (a seccomp filter,
/// a platform without per-thread nice); they run at the node's priority.
/// Process-wide, like what makes it fail.
static PRIORITY_FAILURES: AtomicU64 = AtomicU64::new(0);

/// How many ingest threads kept the node's priority because lowering it
/// failed (`meshlet_ingest_priority_failures_total`).
pub fn priority_failures() -> u64 {
    PRIORITY_FAILURES.load(Ordering::Relaxed)
}

impl IngestRuntime {
    /// Starts the ingest runtime `nice` levels below the calling thread's
    /// priority. Must be called from within the node's runtime (its handle
    /// is what `nice = 0` hands out).
    pub fn start(nice: u8) -> Result<IngestRuntime, IngestRuntimeError> {
        let nice = nice.min(MAX_NICE);
        if nice == 0 {
            return Ok(IngestRuntime {
                handle: Handle::current(),
                own: None,
                nice,
            });
        }
        // Absolute, from the starting thread's priority: a thread inherits
        // its creator's nice value, and the runtime's blocking threads are
        // created by its (already lowered) workers.
        let target = (this_thread_nice() + i32::from(nice)).min(i32::from(MAX_NICE));
        // As many workers as the node's runtime: the embedded broker runs
        // one task per device session, and at a lower priority idle
        // workers cost the API nothing.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name(INGEST_THREAD_NAME)
            .on_thread_start(move || {
                if let Err(err) = set_this_thread_nice(target) {
                    // Once per thread, at start: a handful per node.
                    warn!(error = %err, nice, "cannot lower an ingest thread's CPU priority; it runs at the node's");
                    PRIORITY_FAILURES.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build()?;
        info!(
            nice,
            "ingest runs on its own runtime at a lower CPU priority"
        );
        Ok(IngestRuntime {
            handle: runtime.handle().clone(),
            own: Some(runtime),
            nice,
        })
    }

    /// Where ingest tasks are spawned (`TaskTracker::spawn_on`).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The configured nice increment (0: ingest shares the node's runtime).
    pub fn nice(&self) -> u8 {
        self.nice
    }

    /// Stops the ingest runtime without waiting for its threads: call it
    /// once the node's task tracker drained, so nothing is left on it but
    /// tasks the grace period gave up on. Safe inside async code, where
    /// dropping a runtime would panic.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for IngestRuntime {
    /// A node whose start-up failed half way drops its ingest runtime
    /// inside the node's async code; a plain drop of a `Runtime` there
    /// panics.
    fn drop(&mut self) {
        if let Some(runtime) = self.own.take() {
            runtime.shutdown_background();
        }
    }
}

/// The calling thread's nice value. Linux keeps it per thread: with
/// `PRIO_PROCESS` and who = 0, get/setpriority act on the calling thread.
#[cfg(unix)]
#[allow(unsafe_code)] // getpriority: libc, no safe wrapper in std
fn this_thread_nice() -> i32 {
    // SAFETY: no pointers are passed. It fails only for an unknown `which`
    // or a `who` that does not exist, neither possible for the calling
    // thread, so -1 is the nice value -1 and not an error.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

/// Sets the calling thread's nice value, leaving the rest of the process
/// alone. Raising it (a lower priority) needs no privilege.
#[cfg(unix)]
#[allow(unsafe_code)] // setpriority: libc, no safe wrapper in std
fn set_this_thread_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: no pointers are passed; acts on the calling thread only.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(unix))]
fn this_thread_nice() -> i32 {
    0
}

#[cfg(not(unix))]
fn set_this_thread_nice(_nice: i32) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "per-thread CPU priority is not supported on this platform",
    ))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The nice value of one thread of this process, from /proc.
    fn thread_nice(tid: i32) -> i64 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        // Field 19, counted after the parenthesised command name.
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        after_comm.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[allow(unsafe_code)] // gettid: libc
    fn this_thread_id() -> i32 {
        // SAFETY: gettid takes no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_gettid) as i32 }
    }

    #[test]
    fn ingest_threads_run_nicer_and_the_node_does_not() {
        let node = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        // Relative to this process's own priority (a test run may itself be
        // niced).
        let base = thread_nice(this_thread_id());
        let lowered = (base + 7).min(i64::from(MAX_NICE));
        let (node_tid, ingest_tid, blocking_tid, failures) = node.block_on(async {
            let ingest = IngestRuntime::start(7).unwrap();
            let ingest_tid = ingest
                .handle()
                .spawn(async { this_thread_id() })
                .await
                .unwrap();
            let blocking_tid = ingest
                .handle()
                .spawn(async { tokio::task::spawn_blocking(this_thread_id).await.unwrap() })
                .await
                .unwrap();
            let failures = priority_failures();
            let node_tid = tokio::spawn(async { this_thread_id() }).await.unwrap();
            let niced = (thread_nice(ingest_tid), thread_nice(blocking_tid));
            ingest.stop();
            (thread_nice(node_tid), niced.0, niced.1, failures)
        });
        assert_eq!(failures, 0);
        assert_eq!(node_tid, base, "the node's own threads keep their priority");
        assert_eq!(ingest_tid, lowered, "an ingest worker runs 7 levels lower");
        assert_eq!(blocking_tid, lowered, "the writer's blocking threads too");
    }

    #[test]
    fn nice_zero_shares_the_node_runtime() {
        let node = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        node.block_on(async {
            let ingest = IngestRuntime::start(0).unwrap();
            let here = this_thread_id();
            let ran_on = ingest
                .handle()
                .spawn(async { this_thread_id() })
                .await
                .unwrap();
            assert_eq!(ran_on, here, "a current-thread runtime runs its tasks here");
            assert!(ingest.own.is_none());
        });
    }

    #[test]
    fn dropped_inside_async_code_it_does_not_panic() {
        let node = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        node.block_on(async {
            let ingest = IngestRuntime::start(3).unwrap();
            ingest.handle().spawn(std::future::pending::<()>());
            drop(ingest);
        });
    }
}
