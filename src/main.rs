//! The `meshlet` binary: parse the command line and hand over to the library.

/// mimalloc on every Linux build. musl's allocator serialises threads on
/// one lock, which cost the static edge builds a large share of their
/// throughput; on glibc, malloc and free were ~25% of the node's CPU under
/// ingest and lookups, and with mimalloc ingest rose on every path
/// (benches/README.md, "The allocator"). Its idle RSS matches glibc's once
/// sled's unused metrics histograms are not allocated (src/vendor/sled) and
/// its arenas get no transparent huge pages (the `no_thp` feature). It is
/// small and builds with zig's C compiler.
#[cfg(target_os = "linux")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (the Rust
/// bindings name only the older options).
#[cfg(target_os = "linux")]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // Free pages go back to the kernel 100 ms after they empty (the
    // memory keeper makes sure of it on a quiet node), unless the
    // operator set MIMALLOC_PURGE_DELAY, which mimalloc reads itself.
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's options; it has no preconditions.
        unsafe {
            libmimalloc_sys::mi_option_set(
                MI_OPTION_PURGE_DELAY,
                meshlet::memory::ALLOCATOR_PURGE_DELAY_MS,
            );
        }
    }
    meshlet::cli::main()
}
