//! `pond mount URL MOUNTPOINT`: a replica mounted read-only, fetched lazily (see
//! `pond::remote_mount`), and `pond umount` of such a mount.
//!
//! As for a pond, without `-f` the command forks before any thread exists; the child becomes the
//! daemon and reports `ok` over a pipe once the mount is live, or its error. The daemon mirrors the
//! version to serve, opens the view, mounts, and with `refresh=` runs the refresher, which tells
//! the kernel what each move made stale. It holds a lock per mountpoint in the runtime directory
//! for its whole life, so `pond umount` returns only once it has exited.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use pond::remote_mount::refresh::Refresher;
use pond::remote_mount::{DEFAULT_CACHE_SIZE, DEFAULT_TIMEOUT, Replica, ReplicaConfig, cache_dir};

use super::mount::{check_fuse_available, check_mountpoint, fork_daemon, fuse_mount_source, open_log_file};
use super::replica_options::{self, ReplicaMountOptions, aws_settings, default_cache_root};

/// The replica configuration the options and environment give.
pub fn config(url: &str, opts: &ReplicaMountOptions) -> anyhow::Result<ReplicaConfig> {
    let aws = aws_settings(opts.credentials.as_deref()).map_err(anyhow::Error::msg)?;
    let cache_root = match &opts.cache {
        Some(dir) => std::path::absolute(dir).with_context(|| format!("cache directory {}", dir.display()))?,
        None => default_cache_root(),
    };
    Ok(ReplicaConfig {
        url: url.to_string(),
        aws,
        cache_root,
        cache_size: opts.cache_size.unwrap_or(DEFAULT_CACHE_SIZE),
        timeout: opts.timeout.unwrap_or(DEFAULT_TIMEOUT),
    })
}

pub fn mount(url: &str, mountpoint: &Path, foreground: bool, options: &[String]) -> anyhow::Result<ExitCode> {
    let opts = replica_options::parse(options).map_err(anyhow::Error::msg)?;
    let cfg = config(url, &opts)?;
    let mountpoint = check_mountpoint(mountpoint)?;
    check_fuse_available()?;
    if foreground {
        super::init_logging();
        return serve(&cfg, &mountpoint, &opts, None).map(|_| ExitCode::SUCCESS);
    }
    // SAFETY: no thread has been started yet in this process (clap and option parsing only).
    unsafe { fork_daemon(|report| daemon(&cfg, &mountpoint, &opts, report)) }
}

fn daemon(cfg: &ReplicaConfig, mountpoint: &Path, opts: &ReplicaMountOptions, report: OwnedFd) -> i32 {
    let _ = nix::unistd::setsid();
    let log_path = match &opts.log {
        Some(path) => std::path::absolute(path).unwrap_or_else(|_| path.clone()),
        None => cache_dir(&cfg.cache_root, &cfg.url).join("mount.log"),
    };
    let _ = std::env::set_current_dir("/");
    if let Some(dir) = log_path.parent() {
        let _ = private_dir(dir);
    }
    let mut report = std::fs::File::from(report);
    let log = match open_log_file(&log_path) {
        Ok(Some(log)) => Ok(log),
        Ok(None) => Err(()),
        Err(e) => {
            let _ = write!(report, "err {e:#}");
            return 2;
        }
    };
    if let (Ok(null), Ok(log)) = (std::fs::OpenOptions::new().read(true).write(true).open("/dev/null"), &log) {
        // SAFETY: dup2 onto the standard descriptors of this (single-threaded) process.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(log.as_raw_fd(), 1);
            libc::dup2(log.as_raw_fd(), 2);
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,pond=info"));
    if let Ok(log) = log {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(Arc::new(log))
            .log_internal_errors(false)
            .try_init();
    }
    match serve(cfg, mountpoint, opts, Some(&mut report)) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            let _ = write!(report, "err {e:#}");
            2
        }
    }
}

fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Mirror the version to serve, mount it, serve until unmounted; `report` gets `ok` once live.
fn serve(
    cfg: &ReplicaConfig,
    mountpoint: &Path,
    opts: &ReplicaMountOptions,
    report: Option<&mut std::fs::File>,
) -> anyhow::Result<()> {
    let _alive = DaemonLock::acquire(mountpoint);
    keep_large_buffers_unmapped();
    let url = cfg.url.as_str();
    let started = Instant::now();
    let replica = Arc::new(Replica::open(cfg)?);
    let version = replica.sync(opts.version).with_context(|| format!("reading the log of {url}"))?;
    let fs = Arc::new(replica.open_view(version)?);
    tracing::info!(
        url,
        version,
        cache = %replica.dir().display(),
        requests = replica.requests(),
        "mounting a replica, table mirrored in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    if let Some(report) = report {
        let mp = mountpoint.to_path_buf();
        let mut report = report.try_clone()?;
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if fuse_mount_source(&mp).is_some() {
                    let _ = report.write_all(b"ok");
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
    }
    // The URL is the mount's source (`serve` names it after its path argument).
    let mount = pond::fuse::MountConfig {
        read_only: true,
        allow_other: opts.allow_other,
        noexec: opts.noexec,
        ..Default::default()
    };
    let refresher: Mutex<Option<Refresher>> = Mutex::new(None);
    let served = pond::fuse::serve_notifying(fs.clone(), Path::new(url), mountpoint, &mount, |kernel| {
        let Some(period) = opts.refresh else { return };
        match Refresher::start(replica.clone(), fs.clone(), period, move |changes| kernel.invalidate(changes)) {
            Ok(r) => *refresher.lock().unwrap_or_else(|p| p.into_inner()) = Some(r),
            Err(e) => tracing::error!("could not start looking for new versions: {e}"),
        }
    });
    drop(refresher.lock().unwrap_or_else(|p| p.into_inner()).take());
    served.with_context(|| format!("serving {url} on {}", mountpoint.display()))
}

/// Read-ahead moves 16 MiB buffers through the allocator. glibc serves the first from mmap and,
/// once it is freed, raises its mmap threshold to that size: later ones then come from the heap
/// and stay there when freed, and the daemon's resident size drifts up by tens of MiB. A fixed
/// threshold keeps every large buffer mapped only while it lives. Fixing it also fixes the trim
/// threshold at glibc's 128 KiB, and then a chunk's 64 KiB buffer freed at the top of a thread's
/// heap gives its pages back (`madvise`) only for the next chunk to fault them in again: a sequential
/// read from the cache spent a fifth of its CPU so (1.0-1.25 GiB/s against 1.45-1.6 with 1 MiB or
/// more kept; `GLIBC_TUNABLES=glibc.malloc.trim_threshold=...`, 1 GiB file, page-cached cache). A
/// heap keeps up to 4 MiB free at its top instead. The threshold is 2 MiB, above a read's reply:
/// with the mount's 1 MiB read-ahead every sequential read asks for 1 MiB, and at a 1 MiB
/// threshold each reply's buffer was a fresh mapping, faulted in page by page (a read from the
/// cache ran at 987-1,117 MiB/s; at 2 MiB, 1,671-1,815).
fn keep_large_buffers_unmapped() {
    // SAFETY: mallopt only tunes the allocator; called before this process starts its threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 2 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20);
    }
}

/// After the kernel dropped a replica's mount at `mountpoint`: wait for its daemon to exit.
pub fn wait_for_daemon(mountpoint: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while DaemonLock::is_held(mountpoint) {
        if Instant::now() > deadline {
            bail!("the daemon of the replica mounted at {} has not exited after a minute", mountpoint.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// A lock per mountpoint in the runtime directory, flocked by a replica's daemon for its whole
/// life (a replica has no `_pond/` of its own to hold one, as a pond does).
struct DaemonLock {
    lock: Option<(nix::fcntl::Flock<std::fs::File>, PathBuf)>,
}

impl DaemonLock {
    fn path(mountpoint: &Path) -> PathBuf {
        let dir = if nix::unistd::geteuid().is_root() {
            PathBuf::from("/run/pond/mounts")
        } else if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
            PathBuf::from(run).join("pond/mounts")
        } else {
            std::env::temp_dir().join(format!("pond-{}/mounts", nix::unistd::geteuid()))
        };
        let hash = blake3::hash(mountpoint.as_os_str().as_encoded_bytes()).to_hex();
        dir.join(format!("replica-{}.lock", &hash[..16]))
    }

    fn acquire(mountpoint: &Path) -> DaemonLock {
        let path = Self::path(mountpoint);
        let lock = path
            .parent()
            .and_then(|d| private_dir(d).ok())
            .and_then(|_| std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).ok())
            .and_then(|f| nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).ok());
        DaemonLock { lock: lock.map(|l| (l, path)) }
    }

    fn is_held(mountpoint: &Path) -> bool {
        let Ok(f) = std::fs::OpenOptions::new().write(true).open(Self::path(mountpoint)) else { return false };
        matches!(
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock),
            Err((_, nix::errno::Errno::EWOULDBLOCK))
        )
    }
}

impl Drop for DaemonLock {
    /// The daemon is done: its lock file goes (one per mountpoint ever used would pile up), unless
    /// a new daemon of the same mountpoint has made a new one there already.
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if let Some((lock, path)) = self.lock.take() {
            let ours = lock.metadata().ok().map(|m| (m.dev(), m.ino()));
            if ours.is_some() && std::fs::metadata(&path).ok().map(|m| (m.dev(), m.ino())) == ours {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}
