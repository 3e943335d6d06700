//! The command line: clap definitions and dispatch. Only `cli/` and `main.rs` print, read the
//! environment or use anyhow.

mod inspect;
mod maintain;
mod mount;
pub mod mount_options;
mod mount_remote;
mod replica_options;
mod sync;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// pond: a filesystem kept in a Delta Lake table. Mount it like any directory; every release of a
/// written file is a transaction, history can be read back, and a pond replicates by copying its
/// parquet files as they are.
///
/// Exit status: 0 success, 1 `verify` found damage, 2 error.
#[derive(Parser, Debug)]
#[command(name = "pond", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new, empty pond (a directory that must be absent or empty).
    Init {
        pond: PathBuf,
        /// Content of at most this many bytes is stored inline in the table (default 65536).
        #[arg(long)]
        threshold: Option<u64>,
    },
    /// Serve a pond through FUSE, or a replica (by URL) read-only, fetched as it is read. Without
    /// -f, returns once the mount is live.
    Mount {
        /// A pond directory, or a replica's URL (s3://bucket/prefix, file:///path).
        #[arg(value_name = "POND|URL")]
        pond: PathBuf,
        mountpoint: PathBuf,
        /// Stay in the foreground (logs to stderr).
        #[arg(short = 'f', long)]
        foreground: bool,
        /// Comma-separated options. A pond: ro, rw, allow_other, threshold=BYTES, version=N,
        /// log=FILE; noexec, nosuid, nodev, their opposites, sync, async and dirsync (they take
        /// effect). A replica: ro, allow_other, noexec, cache=DIR, cache_size=BYTES,
        /// refresh=SECONDS, version=N, timeout=SECONDS, credentials=FILE, log=FILE. Both: mount(8)'s
        /// generic ones (ignored).
        #[arg(short = 'o', value_name = "OPTS")]
        options: Vec<String>,
    },
    /// Unmount, returning only when everything released is committed.
    Umount { mountpoint: PathBuf },
    /// List a directory (or show one entry) without mounting; a replica's URL is read lazily.
    Ls {
        #[arg(value_name = "POND|URL")]
        pond: PathBuf,
        path: Option<String>,
        #[arg(long)]
        version: Option<u64>,
    },
    /// Print a file without mounting; a replica's URL is read lazily.
    Cat {
        #[arg(value_name = "POND|URL")]
        pond: PathBuf,
        path: String,
        #[arg(long)]
        version: Option<u64>,
    },
    /// The history: one line per Delta version (version, time, files changed, bytes, operation).
    Log {
        #[arg(value_name = "POND|URL")]
        pond: PathBuf,
    },
    /// Check every hash and reference of a pond, or of a replica given by URL (file:// or s3://,
    /// fetched into a temporary directory under $TMPDIR). Exit 1 with a list when anything is damaged.
    Verify {
        /// A pond directory, or a replica's URL.
        #[arg(value_name = "POND|URL")]
        pond: String,
    },
    /// Remove large-file objects and data files that nothing references.
    Gc {
        pond: PathBuf,
        #[arg(long)]
        dry_run: bool,
    },
    /// Push the committed pond to a remote, sending only what it lacks; run it again to resume.
    ///
    /// URL: a path, file:///path or s3://bucket/prefix (credentials, AWS_REGION, AWS_ENDPOINT_URL and
    /// AWS_ALLOW_HTTP from the environment). Ends with one summary line.
    Replicate {
        pond: PathBuf,
        url: String,
        /// Keep shipping new versions as they commit, until SIGINT/SIGTERM.
        #[arg(long)]
        follow: bool,
    },
    /// Drop old versions and give their space back: the log entries, checkpoints, data files,
    /// objects and chunks that only the dropped versions need. The latest version is always kept.
    ///
    /// Safe beside a live read-write mount (its daemon does the pruning between two commits) and
    /// beside replicate and restore. Prints what it removes and the bytes freed.
    ///
    /// Given a replica's URL (s3://bucket/prefix or file:///path), prunes the replica where it
    /// lies, holding the remote's lock so no replicate pass runs meanwhile; it does not compact
    /// first (a new version on the replica would be one the pond does not have).
    Prune {
        /// A pond directory, or a replica's URL (s3://bucket/prefix, file:///path).
        #[arg(value_name = "POND|URL")]
        pond: String,
        /// Keep the newest N versions.
        #[arg(long, value_name = "N")]
        keep_last: Option<u64>,
        /// Keep the versions committed within DURATION before now (e.g. 90m, 12h, 30d, 2w, 1y).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        keep_within: Option<std::time::Duration>,
        /// Keep version V (repeat for more).
        #[arg(long = "keep-version", value_name = "V")]
        keep_versions: Vec<u64>,
        /// Print what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Make a new pond from a remote replica, verified before it appears. POND must be absent or empty.
    Restore {
        url: String,
        pond: PathBuf,
        /// Restore this version (the restored pond's latest version is N).
        #[arg(long, value_name = "N")]
        version: Option<u64>,
    },
}

/// The default log filter: warnings of pond's own; delta-kernel logs at ERROR for conditions pond
/// reports itself (a missing version, no table yet), so it is silenced unless RUST_LOG asks.
pub const QUIET: &str = "warn,buoyant_kernel=off,deltalake_core=off";

/// Quiet by default; `RUST_LOG` shows more.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(QUIET));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        // Mount forks before anything starts a thread, and sets up its own logging.
        Command::Mount { pond, mountpoint, foreground, options } => match pond.to_str().filter(|p| sync::is_url(p)) {
            Some(url) => mount_remote::mount(url, &mountpoint, foreground, &options),
            None => mount::mount(&pond, &mountpoint, foreground, &options),
        },
        command => {
            init_logging();
            match command {
                Command::Init { pond, threshold } => maintain::init(&pond, threshold),
                Command::Umount { mountpoint } => mount::umount(&mountpoint),
                Command::Ls { pond, path, version } => inspect::ls(&pond, path.as_deref(), version),
                Command::Cat { pond, path, version } => inspect::cat(&pond, &path, version),
                Command::Log { pond } => inspect::log(&pond),
                Command::Verify { pond } => maintain::verify(&pond),
                Command::Gc { pond, dry_run } => maintain::gc(&pond, dry_run),
                Command::Replicate { pond, url, follow } => sync::replicate(&pond, &url, follow),
                Command::Restore { url, pond, version } => sync::restore(&url, &pond, version),
                Command::Prune { pond, keep_last, keep_within, keep_versions, dry_run } => {
                    let rules = pond::audit::prune::Rules { keep_last, keep_within, keep_versions };
                    maintain::prune(&pond, &rules, dry_run)
                }
                Command::Mount { .. } => unreachable!("handled above"),
            }
        }
    }
}

/// A duration like `90m`, `12h`, `30d`, `2w`, `1y` or `1d12h` (units s, m, h, d, w, y).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            'y' => 365 * 86_400,
            _ => return Err(format!("{s:?}: unknown unit {c:?} (use s, m, h, d, w or y, as in 30d)")),
        };
        let n: u64 = digits.parse().map_err(|_| format!("{s:?}: a number must come before {c:?}"))?;
        total = n.checked_mul(unit).and_then(|x| total.checked_add(x)).ok_or_else(|| format!("{s:?} is too long"))?;
        digits.clear();
    }
    if !digits.is_empty() || s.trim().is_empty() {
        return Err(format!("{s:?}: give a unit (s, m, h, d, w or y), as in 30d"));
    }
    Ok(std::time::Duration::from_secs(total))
}

/// `2026-11-25 09:21:23` (UTC) from nanoseconds since the epoch.
pub fn format_time(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}
