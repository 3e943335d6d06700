//! The `pond` binary: parse the command line, run it, map the outcome to an exit status
//! (0 ok, 1 damage found by `verify`, 2 error).

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pond: {e:#}");
            ExitCode::from(2)
        }
    }
}
