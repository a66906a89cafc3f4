//! The `vttl-seclytics` command: everything happens in [`vttl_seclytics::cli::run`].
//!
//! The binary uses mimalloc as its allocator: enriching a large workbook allocates and frees many small
//! strings (cells, tokens, log lines), and the system allocator was about a quarter of the CPU profile
//! (BENCHMARKS.md).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    vttl_seclytics::cli::main()
}
