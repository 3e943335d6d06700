//! `pond replicate`, `pond restore` and `pond verify URL`: open the remote (AWS settings from the
//! environment), draw progress on a terminal (indicatif, on stderr; nothing when stderr is not a
//! TTY), stop cleanly on SIGINT/SIGTERM (a second signal exits at once), and end with one summary
//! line on stdout.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use pond::replica::{self, Progress, Remote};

/// Exit status of a run ended by SIGINT/SIGTERM (without `--follow`, where that is the way to end).
const INTERRUPTED: u8 = 130;

/// True when `target` names a remote by URL (`s3://`, `file://`) rather than a local path.
pub fn is_url(target: &str) -> bool {
    target.contains("://")
}

/// The S3 settings of the environment: every `AWS_*` variable (credentials, region,
/// `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP` for S3-compatible servers).
fn aws_settings() -> Vec<(String, String)> {
    std::env::vars().filter(|(k, _)| k.starts_with("AWS_")).collect()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("pond-sync").enable_all().build()?)
}

/// The stop flag, set by SIGINT or SIGTERM; a second signal exits at once.
fn stop_on_signals(rt: &tokio::runtime::Runtime) -> anyhow::Result<Arc<AtomicBool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let stop = Arc::new(AtomicBool::new(false));
    let _guard = rt.enter();
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let flag = stop.clone();
    rt.spawn(async move {
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(INTERRUPTED.into());
            }
        }
    });
    Ok(stop)
}

/// Progress on stderr when it is a terminal: a bar of bytes with the file count and rate.
struct Bar {
    bar: ProgressBar,
    files: AtomicU64,
    total: AtomicU64,
    what: Mutex<String>,
}

impl Bar {
    fn new() -> Arc<Bar> {
        let bar = if std::io::stderr().is_terminal() { ProgressBar::new(0) } else { ProgressBar::hidden() };
        let style = ProgressStyle::with_template(
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        Arc::new(Bar { bar, files: AtomicU64::new(0), total: AtomicU64::new(0), what: Mutex::new(String::new()) })
    }

    fn show_files(&self) {
        let what = self.what.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (done, total) = (self.files.load(Ordering::Relaxed), self.total.load(Ordering::Relaxed));
        self.bar.set_message(format!("{what} {done}/{total} objects"));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Bar {
    fn begin(&self, what: &str, files: u64, bytes: u64) {
        *self.what.lock().unwrap_or_else(|p| p.into_inner()) = what.to_string();
        self.files.store(0, Ordering::Relaxed);
        self.total.store(files, Ordering::Relaxed);
        self.bar.reset();
        self.bar.set_length(bytes);
        if files == 0 {
            self.bar.set_message(what.to_string());
        } else {
            self.show_files();
        }
    }

    fn bytes(&self, n: u64) {
        self.bar.inc(n);
    }

    fn file_done(&self) {
        self.files.fetch_add(1, Ordering::Relaxed);
        self.show_files();
    }

    fn idle(&self, version: u64) {
        self.bar.set_message(format!("at version {version}, waiting for commits"));
    }

    fn waiting(&self, holder: &str) {
        self.bar.suspend(|| eprintln!("waiting for the remote's lock, held by {holder}"));
    }
}

/// `34.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn rate(bytes: u64, elapsed: Duration) -> String {
    format!("{}/s", human_bytes((bytes as f64 / elapsed.as_secs_f64().max(1e-3)) as u64))
}

pub fn replicate(pond: &Path, url: &str, follow: bool) -> anyhow::Result<ExitCode> {
    // Before the remote is opened: a local remote's directory is created then.
    pond::oplog::check_is_pond(pond)?;
    let rt = runtime()?;
    let stop = stop_on_signals(&rt)?;
    let remote = Remote::open(url, &aws_settings(), true)?;
    let bar = Bar::new();
    let started = Instant::now();
    let result = rt.block_on(replica::replicate(pond, &remote, bar.clone(), &stop, follow));
    bar.finish();
    let report = result?;
    let t = report.transfer;
    let version = report.version.map(|v| format!("version {v}")).unwrap_or_else(|| "no version yet".into());
    println!(
        "replicated to {url}: {}sent {} objects ({}), skipped {} objects ({}) already there, {version}, {}",
        if report.interrupted && !follow { "interrupted, " } else { "" },
        t.sent_files,
        human_bytes(t.sent_bytes),
        t.skipped_files,
        human_bytes(t.skipped_bytes),
        rate(t.sent_bytes, started.elapsed())
    );
    Ok(if report.interrupted && !follow { ExitCode::from(INTERRUPTED) } else { ExitCode::SUCCESS })
}

/// `pond prune URL`: prune a replica where it lies (see `replica::prune`).
pub fn prune(url: &str, rules: &pond::audit::prune::Rules, dry_run: bool) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let stop = stop_on_signals(&rt)?;
    let remote = Remote::open(url, &aws_settings(), false)?;
    let bar = Bar::new();
    let result = rt.block_on(replica::prune_remote(&remote, rules, dry_run, bar.clone(), &stop));
    bar.finish();
    let report = result.with_context(|| format!("pruning {url}"))?;
    super::maintain::print_prune(&report);
    Ok(ExitCode::SUCCESS)
}

pub fn restore(url: &str, pond: &Path, version: Option<u64>) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let stop = stop_on_signals(&rt)?;
    let remote = Remote::open(url, &aws_settings(), false)?;
    let bar = Bar::new();
    let started = Instant::now();
    let result = rt.block_on(replica::restore(&remote, pond, version, bar.clone(), &stop));
    bar.finish();
    let report = result.with_context(|| format!("restoring {url} to {}", pond.display()))?;
    println!(
        "restored {url} to {}: version {}, {} objects ({}), verified, {}",
        pond.display(),
        report.version,
        report.files,
        human_bytes(report.bytes),
        rate(report.bytes, started.elapsed())
    );
    Ok(ExitCode::SUCCESS)
}

/// `pond verify URL`: fetch into a temporary directory, verify, remove.
pub fn verify_remote(url: &str) -> anyhow::Result<pond::audit::VerifyReport> {
    let rt = runtime()?;
    let stop = stop_on_signals(&rt)?;
    let remote = Remote::open(url, &aws_settings(), false)?;
    let bar = Bar::new();
    let result = rt.block_on(replica::verify_remote(&remote, bar.clone(), &stop));
    bar.finish();
    result.with_context(|| format!("verifying {url}"))
}
