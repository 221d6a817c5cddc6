//! The `meshlet` binary: parse the command line and hand over to the library.
#![deny(unsafe_code)]
#![deny(clippy::unwrap_used)]

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

fn main() -> std::process::ExitCode {
    #[cfg(target_os = "linux")]
    meshlet::memory::configure_allocator();
    meshlet::cli::main()
}
