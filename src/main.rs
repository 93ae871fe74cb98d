//! The `brobygger` binary: a thin shell around the library's command line.

/// jemalloc rather than glibc's malloc: see its entry in Cargo.toml and BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    brobygger::cli::run()
}
