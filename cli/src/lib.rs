//! casebook-cli: the `casebook` command line.
pub mod demo;

/// Entry point of the `casebook` binary.
pub fn main() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
