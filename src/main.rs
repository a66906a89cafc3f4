//! The `vttl-seclytics` command: everything happens in [`vttl_seclytics::cli::run`].

fn main() -> std::process::ExitCode {
    vttl_seclytics::cli::main()
}
