//! `pond mount` and `pond umount`.
//!
//! Without `-f`, mount forks before any thread exists; the child becomes the daemon (new session,
//! stdio on /dev/null, logs to a file) and reports over a pipe: `ok` once the kernel shows the mount
//! live, or its error, which the parent prints before exiting non-zero. `umount` unmounts, then
//! waits for the daemon to release the pond's single-writer lock, which it does only after
//! committing everything released.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use pond::fs::{FsError, FsOptions, PondFs};
use pond::fuse::MountConfig;
use pond::layout::{WORK_DIR, WORK_LOG, WORK_MOUNTS_DIR};
use pond::private_fs::{FileAccess, PrivateDir, PrivateFsError, open_user_file};

use super::mount_options::{self, MountOptions};

/// Where the kernel shows `mountpoint` mounted with a FUSE type, return the mount's source (for a
/// pond, the pond's path).
pub fn fuse_mount_source(mountpoint: &Path) -> Option<String> {
    pond::fuse::mountinfo::fuse_mount_at(mountpoint).map(|m| m.source)
}

pub(super) fn check_mountpoint(mountpoint: &Path) -> anyhow::Result<PathBuf> {
    let canon = std::fs::canonicalize(mountpoint).with_context(|| format!("mountpoint {}", mountpoint.display()))?;
    if !canon.is_dir() {
        bail!("mountpoint {} is not a directory", mountpoint.display());
    }
    if fuse_mount_source(&canon).is_some() {
        bail!("mountpoint {} is busy: something is already mounted there", mountpoint.display());
    }
    Ok(canon)
}

pub(super) fn check_fuse_available() -> anyhow::Result<()> {
    if !Path::new("/dev/fuse").exists() {
        bail!("FUSE is not available: /dev/fuse is missing (load the fuse module, or install fuse3)");
    }
    Ok(())
}

pub fn mount(pond: &Path, mountpoint: &Path, foreground: bool, options: &[String]) -> anyhow::Result<ExitCode> {
    let opts = mount_options::parse(options).map_err(anyhow::Error::msg)?;
    pond::oplog::check_is_pond(pond)?;
    let pond = std::fs::canonicalize(pond)?;
    let mountpoint = check_mountpoint(mountpoint)?;
    check_fuse_available()?;
    if foreground {
        super::init_logging();
        return serve(&pond, &mountpoint, &opts, None).map(|_| ExitCode::SUCCESS);
    }
    // SAFETY: no thread has been started yet in this process (clap parsing only).
    unsafe { fork_daemon(|report| daemon(&pond, &mountpoint, &opts, report)) }
}

fn daemon(pond: &Path, mountpoint: &Path, opts: &MountOptions, report: OwnedFd) -> i32 {
    let _ = nix::unistd::setsid();
    let mut report = std::fs::File::from(report);
    let log = match open_log(pond, opts) {
        Ok(log) => log,
        Err(e) => {
            let _ = write!(report, "err {e:#}");
            return 2;
        }
    };
    // Leave the caller's working directory, so the daemon does not keep its filesystem busy
    // (pond and mountpoint are absolute already, and so is the log, opened above).
    let _ = std::env::set_current_dir("/");
    if let Some(log) = log {
        redirect_stdio(&log);
        // pond's own events (mounted, unmounted, signals) and everyone's warnings; the Delta crates
        // log kilobytes per commit at info, which would grow the log without bound. RUST_LOG overrides.
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,pond=info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(Arc::new(log))
            // On a full disk the log cannot be written: the event is dropped (the default
            // reports it on stderr, which here is that same file, and eprintln! panics).
            .log_internal_errors(false)
            .try_init();
    } else {
        redirect_stdio_to_null();
    }
    match serve(pond, mountpoint, opts, Some(&mut report)) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            let _ = write!(report, "err {e:#}");
            2
        }
    }
}

/// Forks the mount daemon, which runs `daemon` with the write end of a pipe to report on, and
/// waits for its report ([`daemon_report`]).
///
/// # Safety
/// No other thread may run in this process: the child goes on running Rust code after fork.
pub(super) unsafe fn fork_daemon(daemon: impl FnOnce(OwnedFd) -> i32) -> anyhow::Result<ExitCode> {
    let (read_end, write_end) = nix::unistd::pipe()?;
    // SAFETY: the caller promises a single-threaded process.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(write_end);
            // The daemon writes `ok` and keeps running (the pipe stays open), or writes its error
            // and exits (the pipe closes).
            daemon_report(read_end)
        }
        nix::unistd::ForkResult::Child => {
            drop(read_end);
            std::process::exit(daemon(write_end))
        }
    }
}

/// What a mount daemon reports through the pipe `read_end`: `ok` once it serves (the pipe stays
/// open) or `err <message>` before it exits; nothing at all when it died first.
fn daemon_report(read_end: OwnedFd) -> anyhow::Result<ExitCode> {
    let mut pipe = std::fs::File::from(read_end);
    let (mut msg, mut buf) = (Vec::new(), [0u8; 4096]);
    loop {
        let n = pipe.read(&mut buf)?;
        msg.extend_from_slice(&buf[..n]);
        if msg.starts_with(b"ok") {
            return Ok(ExitCode::SUCCESS);
        }
        if n == 0 {
            break;
        }
    }
    let msg = String::from_utf8_lossy(&msg);
    if msg.is_empty() {
        bail!("the mount daemon exited without reporting; see its log");
    }
    bail!("{}", msg.trim_start_matches("err ").trim_end())
}

/// The daemon's log, 0600: `log=FILE` ([`open_log_file`]), or `POND/_pond/mount.log` opened
/// through the private `_pond/` by `private_fs`. A log that cannot be opened because the pond or the
/// directory is read-only is no reason not to mount (`None`: no log); what `open_log_file` refuses
/// is refused.
fn open_log(pond: &Path, opts: &MountOptions) -> anyhow::Result<Option<std::fs::File>> {
    let opened = match &opts.log {
        Some(path) => return open_log_file(path),
        None => PrivateDir::ensure(pond, WORK_DIR).and_then(|dir| dir.open_file(WORK_LOG, FileAccess::Append)),
    };
    match opened {
        Ok(file) => Ok(Some(file)),
        Err(PrivateFsError::Io { .. }) => Ok(None),
        Err(e) => Err(anyhow::Error::from(e).context("opening the daemon's log")),
    }
}

/// A daemon's `log=FILE` (a pond's or a replica's mount), opened to append: its directory
/// followed as given (and made if missing), the file itself opened by `private_fs` (never through
/// a symlink, a regular file with no other hard links, made 0600), so whoever can write into that
/// directory cannot make a root daemon append to a file elsewhere or block on a FIFO. A character
/// device (`/dev/null`, to keep no log) is opened as it is: only root makes device nodes. A file
/// that cannot be opened at all (a read-only directory) is no reason not to mount (`None`).
pub(super) fn open_log_file(path: &Path) -> anyhow::Result<Option<std::fs::File>> {
    use std::os::unix::fs::FileTypeExt;
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_char_device()) {
        return std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map(Some)
            .with_context(|| format!("opening the log device {}", path.display()));
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match open_user_file(&path, FileAccess::Append) {
        Ok(file) => Ok(Some(file)),
        Err(PrivateFsError::Symlink(p)) => bail!("log file {} is a symlink: give the file itself", p.display()),
        Err(PrivateFsError::NotRegular(p)) => {
            bail!("log file {} is not a regular file (a FIFO or a socket): give a regular file", p.display())
        }
        Err(PrivateFsError::Linked(p)) => bail!(
            "log file {} has other hard links: pond does not append to a file with other names; give another",
            p.display()
        ),
        Err(PrivateFsError::Io { .. }) => Ok(None),
        Err(e) => Err(anyhow::Error::from(e).context(format!("opening the log file {}", path.display()))),
    }
}

fn redirect_stdio(log: &std::fs::File) {
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        // SAFETY: dup2 onto the standard descriptors of this (single-threaded) process.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(log.as_raw_fd(), 1);
            libc::dup2(log.as_raw_fd(), 2);
        }
    }
}

fn redirect_stdio_to_null() {
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        // SAFETY: dup2 onto the standard descriptors of this (single-threaded) process.
        unsafe {
            for fd in 0..=2 {
                libc::dup2(null.as_raw_fd(), fd);
            }
        }
    }
}

/// Open the pond and serve it until unmounted; `report` gets `ok` once the mount is live.
fn serve(
    pond: &Path,
    mountpoint: &Path,
    opts: &MountOptions,
    report: Option<&mut std::fs::File>,
) -> anyhow::Result<()> {
    // Held until this process exits, i.e. after the final commit: `pond umount` waits on it.
    let _alive = MountLock::acquire(pond, mountpoint);
    let fs_opts = FsOptions { read_only: opts.mount.read_only, version: opts.version, threshold: opts.threshold };
    let fs = match PondFs::open(pond, fs_opts) {
        Ok(fs) => Arc::new(fs),
        Err(FsError::Busy(lock)) => bail!(
            "{} is already mounted read-write by another process (lock {lock} is held); \
             mount it with -o ro, or unmount the other one first",
            pond.display()
        ),
        Err(e) => return Err(anyhow::Error::from(e).context(format!("opening pond {}", pond.display()))),
    };
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
                std::thread::sleep(Duration::from_millis(10));
            }
        });
    }
    // The writer answers `pond prune` on its control socket while it holds the pond.
    let control = if fs.is_read_only() {
        None
    } else {
        Some(pond::control::ControlServer::start(fs.clone()).context("starting the control socket")?)
    };
    let config = MountConfig { read_only: fs.is_read_only(), ..opts.mount.clone() };
    let served = pond::fuse::serve(fs.clone(), pond, mountpoint, &config);
    drop(control);
    let shut = fs.shutdown();
    served.with_context(|| format!("serving {} on {}", pond.display(), mountpoint.display()))?;
    shut.context("committing at unmount")?;
    Ok(())
}

/// How long `pond umount` tries again while the mount is busy.
const UMOUNT_BUSY_WAIT: Duration = Duration::from_secs(2);

pub fn umount(mountpoint: &Path) -> anyhow::Result<ExitCode> {
    let canon = std::fs::canonicalize(mountpoint).with_context(|| format!("mountpoint {}", mountpoint.display()))?;
    let Some(source) = fuse_mount_source(&canon) else {
        bail!("{} is not a mounted pond", mountpoint.display());
    };
    let pond = PathBuf::from(&source);
    let c = std::ffi::CString::new(canon.as_os_str().as_encoded_bytes())?;
    // A file closed just now can keep the mount busy for a moment more (a copy of its descriptor
    // in a process another thread forked and has not yet exec'd, a process exiting): EBUSY is
    // tried again for a little while before it is the answer.
    let busy_until = Instant::now() + UMOUNT_BUSY_WAIT;
    loop {
        // SAFETY: plain syscall on a NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EBUSY) && Instant::now() < busy_until {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let status = std::process::Command::new("fusermount3").arg("-u").arg(&canon).status();
        if !status.map(|s| s.success()).unwrap_or(false) {
            bail!("unmounting {}: {err}", mountpoint.display());
        }
        break;
    }
    if super::sync::is_url(&source) {
        // A replica's daemon has nothing to commit; wait for it to be gone all the same.
        super::mount_remote::wait_for_daemon(&canon)?;
        return Ok(ExitCode::SUCCESS);
    }
    // The daemon holds its mount lock until it has committed everything and is exiting.
    let deadline = Instant::now() + Duration::from_secs(600);
    while MountLock::is_held(&pond, &canon) {
        if Instant::now() > deadline {
            bail!("the pond daemon is still committing after 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(ExitCode::SUCCESS)
}

/// A lock file per mount (`_pond/mounts/<mountpoint, escaped>.lock`), flocked by the daemon for its
/// whole life, so `pond umount` can wait for exactly that daemon (a pond may have a read-write and
/// several read-only mounts at once). Best effort: a pond directory the daemon cannot write gets no
/// lock, and umount then returns once the kernel has dropped the mount.
struct MountLock {
    _lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

impl MountLock {
    /// The lock's file name in `_pond/mounts/`.
    fn name(mountpoint: &Path) -> String {
        let escaped: String = mountpoint
            .to_string_lossy()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' })
            .collect();
        let hash = blake3::hash(mountpoint.as_os_str().as_encoded_bytes()).to_hex();
        format!("{escaped}-{}.lock", &hash[..16])
    }

    /// `_pond/mounts/`, never through a link; created when `create`.
    fn dir(pond: &Path, create: bool) -> Option<PrivateDir> {
        if create {
            PrivateDir::ensure(pond, WORK_DIR).and_then(|work| work.ensure_dir(WORK_MOUNTS_DIR)).ok()
        } else {
            PrivateDir::open_existing(pond, WORK_DIR).ok()??.open_dir(WORK_MOUNTS_DIR).ok()?
        }
    }

    fn acquire(pond: &Path, mountpoint: &Path) -> MountLock {
        let lock = Self::dir(pond, true)
            .and_then(|dir| dir.open_file(&Self::name(mountpoint), FileAccess::Lock).ok())
            .and_then(|f| nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).ok());
        MountLock { _lock: lock }
    }

    fn is_held(pond: &Path, mountpoint: &Path) -> bool {
        let Some(dir) = Self::dir(pond, false) else { return false };
        let Ok(f) = dir.open_file(&Self::name(mountpoint), FileAccess::ExistingLock) else { return false };
        matches!(
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock),
            Err((_, nix::errno::Errno::EWOULDBLOCK))
        )
    }
}
