//! Command line: parsed by clap into raw arguments, then resolved with the ini file into a plan.

use std::process::ExitCode;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    ExitCode::SUCCESS
}
