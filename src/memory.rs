//! Handing freed heap memory back to the operating system.
//!
//! (Written for glibc's allocator, which the Linux builds used until they
//! moved to mimalloc; see the last paragraph.) glibc's allocator keeps what a thread freed in that thread's arena for
//! the next allocation, and returns it to the kernel only when the free
//! space sits at the top of a heap. A bulk read (a `totalCount` or a
//! filtered page over a million instances, a history export) decodes and
//! drops a lot of small values in sled's cache and our own; what it freed
//! then stays in the process's RSS, scattered between live allocations,
//! long after the request is gone. Measured on the 1,000,000-instance
//! store (`benches/startup.rs`): 114 MiB after start, 175 MiB after one
//! count, 146 MiB once `malloc_trim` ran.
//!
//! `malloc_trim(0)` releases every whole free page of every arena
//! (`madvise(MADV_DONTNEED)`), live data untouched. It walks the free
//! lists under each arena's lock, so it is not called per request: the
//! [`keeper`] runs it once after start-up (opening the store leaves the
//! page-table rebuild's garbage behind) and then whenever the store says
//! enough instances were walked since the last time. Two glibc arenas
//! would bound the same growth without trimming, but cost ingest 35–40%
//! CPU (lock contention; see benches/README.md).
//!
//! The Linux binaries allocate with mimalloc (`src/main.rs`), which
//! purges whole free pages itself, [`ALLOCATOR_PURGE_DELAY_MS`] after
//! they emptied, but only from inside its own calls: on a node gone quiet
//! they would stay. So the keeper lets due purges run every tick
//! ([`purge_due_free_pages`]), and after a bulk read calls
//! `mi_collect(true)`, which frees and purges every empty page at once.
//! `malloc_trim` still runs on glibc for what C code allocates through
//! `malloc`, and for builds on the system allocator (the library's own
//! tests).

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, Instrument};

use crate::store::Store;

/// How long mimalloc keeps a page that became free before it hands it
/// back to the kernel, in milliseconds (its `purge_delay`; the Linux
/// binary sets it in [`configure_allocator`]).
///
/// Why 100: at 0 (what the node used before) every page a write group
/// freed went back at once and was faulted in again, zeroed, by the next
/// group: page faults and `madvise` were ~18% of the node's CPU under
/// QoS 1 ingest (perf). Interleaved `ingest_load` runs (60,000 messages,
/// medians), node CPU per message at QoS 1 (external) and its peak RSS:
/// 0 ms 47 µs / 127 MiB, 10 ms 41 µs / 133 MiB, 100 ms 39 µs / 142 MiB,
/// 1000 ms (mimalloc's own default) 35 µs / 165 MiB. 100 ms takes most
/// of the gain for 40% of the memory 1000 ms adds;
/// `MIMALLOC_PURGE_DELAY` overrides it. What a burst freed is purged once
/// the delay passed: the keeper calls [`purge_due_free_pages`] every
/// tick, so a node that went quiet does not keep it. It still settles
/// ~10 MiB higher than at 0 (`ingest_load`'s "node RSS 3 s after";
/// forcing a full purge every tick did not lower it, so it is not free
/// pages waiting).
pub const ALLOCATOR_PURGE_DELAY_MS: std::os::raw::c_long = 100;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (the Rust
/// bindings name only the older options).
#[cfg(target_os = "linux")]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The purge delay in effect, once the binary configured its allocator
/// (the library's own tests run on the system allocator: nothing to say).
static CONFIGURED_PURGE_DELAY_MS: std::sync::OnceLock<i64> = std::sync::OnceLock::new();

/// Sets mimalloc's purge delay to [`ALLOCATOR_PURGE_DELAY_MS`] unless the
/// operator set `MIMALLOC_PURGE_DELAY` (which mimalloc reads itself), and
/// remembers the value in effect for `/metrics`. Called first thing in
/// `main`, by the binary whose global allocator mimalloc is.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // mimalloc's options: C API only
pub fn configure_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's options; it has no preconditions.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS);
        }
    }
    // SAFETY: reads one of mimalloc's options; no preconditions.
    let in_effect = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
    // c_long is i64 here but i32 on 32-bit ARM builds.
    #[allow(clippy::useless_conversion)]
    let _ = CONFIGURED_PURGE_DELAY_MS.set(i64::from(in_effect));
}

/// The allocator's purge delay in milliseconds, if this process set up
/// its allocator ([`configure_allocator`]).
pub fn allocator_purge_delay_ms() -> Option<i64> {
    CONFIGURED_PURGE_DELAY_MS.get().copied()
}

/// How often the keeper looks at the store's walk counter.
pub const KEEPER_PERIOD: Duration = Duration::from_secs(1);

/// Instances (or keys) walked by reads since the last trim that make the
/// next one worth its cost: a 100-row page walks a few hundred, a full
/// count of a large product hundreds of thousands.
pub const WALKED_BEFORE_TRIM: u64 = 50_000;

/// Gives the allocators' free pages back to the kernel. Returns whether
/// this build can (Linux); blocking, takes a few milliseconds on a heap of
/// a few hundred MiB.
#[allow(unsafe_code)] // mi_collect, malloc_trim: C API only
pub fn release_free_heap() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: mi_collect only frees and purges mimalloc's own empty
        // pages; it has no preconditions, and with another global
        // allocator there is nothing of mimalloc's to collect.
        unsafe {
            libmimalloc_sys::mi_collect(true);
        }
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks and releases the allocator's own
        // free lists under its locks; it has no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
    }
    cfg!(target_os = "linux")
}

/// Lets the allocator hand back the free pages whose purge delay
/// ([`ALLOCATOR_PURGE_DELAY_MS`]) has passed. mimalloc purges only from
/// inside its own calls, so a node gone quiet after a burst of ingest
/// would keep what the burst freed until it next allocated; the keeper
/// calls this every tick. When nothing is due it is a clock read and a
/// walk of the keeper thread's own few pages.
#[allow(unsafe_code)] // mi_collect: C API only
pub fn purge_due_free_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: mi_collect only frees and purges mimalloc's own empty pages;
    // it has no preconditions.
    unsafe {
        libmimalloc_sys::mi_collect(false);
    }
}

/// Trims once now, then after every bulk read (see the module docs), until
/// `shutdown`.
pub async fn keeper(store: Store, shutdown: CancellationToken) {
    trim("start-up").await;
    let mut ticks = tokio::time::interval(KEEPER_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        purge_due_free_pages();
        if store.walked_since_trim() >= WALKED_BEFORE_TRIM {
            store.take_walked_since_trim();
            trim("bulk read").await;
        }
    }
}

async fn trim(reason: &'static str) {
    let span = info_span!("heap_trim", reason);
    async move {
        let started = Instant::now();
        match tokio::task::spawn_blocking(release_free_heap).await {
            Ok(true) => debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "heap trimmed"
            ),
            Ok(false) => {}
            Err(e) => debug!(error = %e, "heap trim task failed"),
        }
    }
    .instrument(span)
    .await
}
