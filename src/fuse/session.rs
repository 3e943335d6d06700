//! Mounting and serving: the fuser [`Config`] for a pond mount, and [`serve`], which mounts, serves
//! until the filesystem is unmounted, and commits what was released before it returns.
//!
//! SIGTERM, SIGINT and SIGHUP unmount cleanly instead of killing the daemon (which would leave a
//! dead mount, "Transport endpoint is not connected", and changes released since the last commit
//! uncommitted). The core has threads of its own (committer, tokio) started before `serve`, so
//! blocking the signals and `sigwait`ing would not work: a signal the main thread blocks is still
//! delivered to any thread that does not, and kills the process. Instead a process-wide handler
//! writes the signal number to a pipe (`write(2)` is async-signal-safe), and a watcher thread reads
//! it and unmounts through fuser's [`SessionUnmounter`] (umount(2) as root, `fusermount -u -z`
//! otherwise). When the mount is busy (an open file, a shell's working directory) it is detached
//! lazily instead: it vanishes from the namespace at once and the session ends, and the pond is
//! committed, when the last user lets go. Once the kernel ends the session, fuser calls `destroy`
//! (which shuts the core down) and `serve` calls `shutdown` once more, then puts the previous signal
//! handlers back.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

use super::{KernelCache, PondFuse, read_ahead};
use crate::fs::PondFs;

/// Event-loop threads: a slow commit, fsync or long read must not stall `ls`.
const THREADS: usize = 4;

/// The signals that unmount the pond.
const SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// How a pond is mounted: what the kernel enforces and when changes are committed. Each field
/// is a mount option that takes effect (`pond mount -o`); none is accepted and dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountConfig {
    /// `ro`: the kernel refuses every change.
    pub read_only: bool,
    /// `allow_other`: other users may use the mount (the modes still apply).
    pub allow_other: bool,
    /// `noexec`: nothing on the mount can be executed.
    pub noexec: bool,
    /// `suid`: set-user-ID and set-group-ID bits take effect on exec (off by default, as on every
    /// FUSE mount).
    pub suid: bool,
    /// `dev`: device nodes on the mount can be opened (off by default, as on every FUSE mount).
    pub dev: bool,
    /// `sync` / `dirsync`: when a change is committed before the call returns.
    pub synchronous: Synchronous,
}

/// Which changes are committed before the call that makes them returns (`sync`, `dirsync`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// At close, fsync and unmount (the default).
    #[default]
    No,
    /// `dirsync`: also every change to a directory (create, mkdir, mknod, symlink, link, unlink,
    /// rmdir, rename).
    Directories,
    /// `sync`: also every write (the kernel sends an fsync after each one) and every change of
    /// attributes or xattrs.
    Everything,
}

/// The fuser configuration for a pond mount: `default_permissions` (the kernel enforces the mode
/// bits), and the kernel flags of `config`. [`serve`] adds the pond's path as the mount's source
/// (`fsname`) unless the config already names one.
pub fn mount_options(config: &MountConfig) -> Config {
    let mut cfg = Config::default();
    // `subtype=pond` as a plain option, not `MountOption::Subtype`: fuser gives Subtype only to
    // fusermount, so a mount made directly with mount(2) (as root) would show type `fuse`, and
    // umount(8) would never find its `umount.fuse.pond` helper. The kernel (and fusermount) take
    // `subtype=` and show the mount as `fuse.pond`.
    cfg.mount_options = vec![MountOption::CUSTOM("subtype=pond".into()), MountOption::DefaultPermissions];
    if config.read_only {
        cfg.mount_options.push(MountOption::RO);
    }
    if config.noexec {
        cfg.mount_options.push(MountOption::NoExec);
    }
    // fuser mounts nosuid and nodev unless told otherwise; fusermount (a mount by a user who is
    // not root) always does.
    if config.suid {
        cfg.mount_options.push(MountOption::Suid);
    }
    if config.dev {
        cfg.mount_options.push(MountOption::Dev);
    }
    match config.synchronous {
        Synchronous::No => {}
        // MS_DIRSYNC and MS_SYNCHRONOUS: shown in mountinfo, and the kernel fsyncs after each
        // write through the page cache under MS_SYNCHRONOUS. The adapter does the rest.
        Synchronous::Directories => cfg.mount_options.push(MountOption::DirSync),
        Synchronous::Everything => cfg.mount_options.push(MountOption::Sync),
    }
    if config.allow_other {
        cfg.acl = SessionACL::All;
    }
    cfg.n_threads = Some(THREADS);
    cfg
}

/// Mount `fs` (the pond at `pond`) on `mountpoint` and serve it until it is unmounted, by
/// `umount`/`fusermount -u` or by SIGTERM/SIGINT/SIGHUP. Returns after the core has committed
/// everything released; the error, if any, is the session's or else the final commit's.
pub fn serve(fs: Arc<PondFs>, pond: &Path, mountpoint: &Path, config: &MountConfig) -> io::Result<()> {
    serve_notifying(fs, pond, mountpoint, config, |_| {})
}

/// [`serve`], handing `on_mounted` the session's [`KernelCache`] once mounted, for a view that
/// moves to new versions while mounted (a replica's): it tells the kernel what went stale.
pub fn serve_notifying(
    fs: Arc<PondFs>,
    pond: &Path,
    mountpoint: &Path,
    config: &MountConfig,
    on_mounted: impl FnOnce(KernelCache),
) -> io::Result<()> {
    let mut cfg = mount_options(config);
    cfg.mount_options.push(MountOption::FSName(pond.display().to_string()));
    let mountpoint = mountpoint.canonicalize()?;
    // Handlers before the mount, so a signal that arrives while mounting is not lost.
    let signals = SignalHandlers::install()?;
    let adapter = PondFuse::new(fs.clone(), config.synchronous);
    let unmounter_slot = adapter.unmounter_slot();
    let mut session = Session::new(adapter, &mountpoint, &cfg)?;
    *unmounter_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(session.unmount_callable());
    let watcher = signals.as_ref().map(|s| s.watch(session.unmount_callable(), mountpoint.clone())).transpose()?;
    on_mounted(KernelCache::new(session.notifier()));
    read_ahead::raise_when_served(mountpoint.clone());
    tracing::info!(pond = %pond.display(), mountpoint = %mountpoint.display(), "mounted");
    let served = session.run();
    if let Some(w) = watcher {
        w.stop();
    }
    // `destroy` already shut the core down when the session ended normally; this covers a session
    // that failed before reaching it. Idempotent.
    let committed = fs.shutdown();
    drop(signals);
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
    served?;
    committed.map_err(|e| io::Error::other(format!("final commit failed: {e}")))
}

/// The self-pipe: created once per process and never closed, so the handler can never write to a
/// descriptor that has since been closed and reused.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

static PIPE: OnceLock<Pipe> = OnceLock::new();
/// The pipe's write end for the handler (-1 until the pipe exists).
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// One `serve` at a time owns the signals; a second concurrent one serves without them.
static IN_USE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = WAKE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = sig as u8;
        // SAFETY: write(2) is async-signal-safe, `fd` stays open for the life of the process, and
        // errno is saved and restored around it so the interrupted code never sees it change.
        unsafe {
            let errno = *libc::__errno_location();
            libc::write(fd, (&raw const byte).cast(), 1);
            *libc::__errno_location() = errno;
        }
    }
}

/// Our handlers for [`SIGNALS`] while installed; dropping puts the previous ones back.
struct SignalHandlers {
    previous: Vec<(Signal, SigAction)>,
}

impl SignalHandlers {
    /// `None` when another `serve` in this process already owns the signals.
    fn install() -> io::Result<Option<SignalHandlers>> {
        if IN_USE.swap(true, Ordering::AcqRel) {
            tracing::warn!("another mount in this process handles SIGTERM/SIGINT; this one unmounts only by umount");
            return Ok(None);
        }
        let pipe = match PIPE.get() {
            Some(p) => p,
            None => {
                let made = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK);
                let (read, write) = made.inspect_err(|_| IN_USE.store(false, Ordering::Release))?;
                let pipe = PIPE.get_or_init(|| Pipe { read, write });
                WAKE_FD.store(pipe.write.as_raw_fd(), Ordering::Release);
                pipe
            }
        };
        // Signals from an earlier session that arrived after it ended are not for this one.
        let mut buf = [0u8; 64];
        while matches!(nix::unistd::read(pipe.read.as_fd(), &mut buf), Ok(n) if n > 0) {}
        let mut handlers = SignalHandlers { previous: Vec::new() };
        // SA_RESTART: other threads' system calls resume after the handler instead of failing EINTR.
        let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
        for sig in SIGNALS {
            // SAFETY: `on_signal` only loads an atomic and calls write(2), both async-signal-safe.
            let previous = unsafe { sigaction(sig, &action) }?;
            handlers.previous.push((sig, previous));
        }
        Ok(Some(handlers))
    }

    /// Start the thread that unmounts when a signal arrives.
    fn watch(&self, unmounter: SessionUnmounter, mountpoint: PathBuf) -> io::Result<Watcher> {
        let thread = std::thread::Builder::new()
            .name("pond-signals".into())
            .spawn(move || watch_signals(unmounter, &mountpoint))?;
        Ok(Watcher { thread })
    }
}

impl Drop for SignalHandlers {
    fn drop(&mut self) {
        for (sig, previous) in self.previous.drain(..).rev() {
            // SAFETY: puts back the handler that was installed before ours.
            if let Err(e) = unsafe { sigaction(sig, &previous) } {
                tracing::warn!("could not restore the {sig} handler: {e}");
            }
        }
        IN_USE.store(false, Ordering::Release);
    }
}

/// The signal-watching thread; [`Watcher::stop`] ends it once the session is over.
struct Watcher {
    thread: JoinHandle<()>,
}

impl Watcher {
    fn stop(self) {
        // Byte 0 is no signal: it tells the watcher the session is over.
        if let Some(fd) = PIPE.get().map(|p| p.write.as_fd()) {
            let _ = nix::unistd::write(fd, &[0]);
        }
        if self.thread.join().is_err() {
            tracing::error!("the signal-watching thread panicked");
        }
    }
}

/// Wait for the next byte on the self-pipe.
fn next_byte() -> io::Result<u8> {
    let Some(pipe) = PIPE.get() else { return Err(io::Error::other("no signal pipe")) };
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(pipe.read.as_fd(), &mut byte) {
            Ok(1) => return Ok(byte[0]),
            Ok(_) => return Err(io::Error::other("signal pipe closed")),
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let mut fds = [PollFd::new(pipe.read.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn watch_signals(mut unmounter: SessionUnmounter, mountpoint: &Path) {
    let mut unmounting = false;
    loop {
        let sig = match next_byte() {
            Ok(0) => return,
            Ok(sig) => Signal::try_from(i32::from(sig)).map(|s| s.as_str()).unwrap_or("signal"),
            Err(e) => {
                tracing::error!("signal handling stopped ({e}); unmount with `umount {}`", mountpoint.display());
                return;
            }
        };
        if unmounting {
            tracing::info!("{sig}: already unmounting; waiting for the last open file to close");
            continue;
        }
        unmounting = true;
        tracing::info!("{sig}: unmounting {}", mountpoint.display());
        if let Err(e) = unmounter.unmount() {
            tracing::warn!(
                "unmount of {} failed ({e}); detaching it: it disappears now, and the pond is committed when the \
                 last open file there closes",
                mountpoint.display()
            );
            if let Err(e) = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH) {
                tracing::error!("could not detach {} either ({e}); unmount it by hand", mountpoint.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_follows_the_flags() {
        let rw = mount_options(&MountConfig::default());
        assert!(rw.mount_options.contains(&MountOption::DefaultPermissions));
        assert!(rw.mount_options.contains(&MountOption::CUSTOM("subtype=pond".into())));
        for absent in [MountOption::RO, MountOption::NoExec, MountOption::Suid, MountOption::Dev, MountOption::Sync] {
            assert!(!rw.mount_options.contains(&absent), "{absent:?}");
        }
        assert_eq!(rw.acl, SessionACL::Owner);
        assert_eq!(rw.n_threads, Some(THREADS));
        let all = MountConfig {
            read_only: true,
            allow_other: true,
            noexec: true,
            suid: true,
            dev: true,
            synchronous: Synchronous::Everything,
        };
        let cfg = mount_options(&all);
        for present in [MountOption::RO, MountOption::NoExec, MountOption::Suid, MountOption::Dev, MountOption::Sync] {
            assert!(cfg.mount_options.contains(&present), "{present:?}");
        }
        assert_eq!(cfg.acl, SessionACL::All);
        let dirsync = mount_options(&MountConfig { synchronous: Synchronous::Directories, ..Default::default() });
        assert!(dirsync.mount_options.contains(&MountOption::DirSync));
    }
}
