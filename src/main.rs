//! The `pond` binary: parse the command line, run it, map the outcome to an exit status
//! (0 ok, 1 damage found by `verify`, 2 error).

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    process_defaults();
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pond: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// What every pond process starts with, before any file or thread exists.
///
/// - umask 077: a pond (and a restored pond, a directory replica, a daemon log) holds the bytes,
///   names, owners and xattrs of every file, which the mount shows only to whom its modes allow;
///   whatever the caller's umask, nothing pond or the Delta library creates is readable by others
///   (pond also creates its own directories 0700 and files 0600 explicitly, see `private_fs`).
///   Files created *through a mount* are not affected: the kernel applies the caller's umask.
/// - The soft limit on open files raised to the hard one: a commit opens every object written
///   since the last one, and 1,024 (the usual soft limit) is a few seconds of `cp -r` of large files.
fn process_defaults() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        // An unlimited hard limit still stops at the kernel's fs.nr_open (2^20 by default).
        let want = if hard == nix::sys::resource::RLIM_INFINITY { 1 << 20 } else { hard };
        if soft < want {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, want, hard);
        }
    }
}
