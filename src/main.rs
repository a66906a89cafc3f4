//! The `vttl-seclytics` command: everything happens in [`vttl_seclytics::cli::run`].
//!
//! The binary uses mimalloc as its allocator: enriching a large workbook allocates and frees many small
//! strings (cells, tokens, log lines), and the system allocator was about a quarter of the CPU profile
//! (BENCHMARKS.md). It is built with the `no_thp` feature: on Linux mimalloc otherwise asks for transparent huge
//! pages, and every first touch of one zeroes 2 MiB — with the churn of a large workbook that was 0.3–0.6 s of
//! system time per run (measured A/B in BENCHMARKS.md). The feature does nothing on other systems. Built without
//! the crate's `mimalloc` feature (on by default), the binary uses the system allocator.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    vttl_seclytics::cli::main()
}
