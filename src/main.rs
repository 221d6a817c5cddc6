//! The `meshlet` binary: parse the command line and hand over to the library.

/// musl's allocator serialises threads on one lock; under the runtime's
/// worker threads that costs a large share of throughput on the static
/// edge builds. mimalloc is small and builds with zig's C compiler.
#[cfg(target_env = "musl")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    meshlet::cli::main()
}
