//! The FUSE adapter: [`PondFuse`] turns each kernel request into one [`PondFs`] call and its result
//! into a reply. No filesystem policy lives here: names, flags and modes go to the core as the kernel
//! sent them, and every [`FsError`] becomes an errno through the one table in [`errno`].
//!
//! Decisions taken at this boundary:
//! - **Capabilities** (`init`): fuser's defaults (async read, big writes, max pages) plus, where the
//!   kernel offers them, `FUSE_ATOMIC_O_TRUNC` (the core truncates in `open`, so `open(O_TRUNC)` is
//!   one request instead of a setattr(size 0) followed by open, and no empty intermediate version of
//!   the file is ever marked for commit), `FUSE_PARALLEL_DIROPS` (the core is thread-safe; lookups
//!   and readdirs of one directory need not queue behind a slow create in it) and
//!   `FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO` (`ls -l` gets attributes with the listing).
//!   Not `FUSE_POSIX_LOCKS`/`FUSE_FLOCK_LOCKS`: the kernel then keeps record and flock locks itself,
//!   which is right for a filesystem with a single daemon. Not `FUSE_WRITEBACK_CACHE`: writes go
//!   to the core as they happen (it handles `O_APPEND` and owns mtime).
//! - **Caching**: entry and attribute TTL of 1 s (the daemon is the only writer, so the kernel's
//!   copy only goes stale through this mount, which updates it), for missing names too (a negative
//!   entry: `rsync` and editors look a name up several times before they make it). Files opened
//!   read-only get `FOPEN_KEEP_CACHE`: the page cache stays valid across opens because every change
//!   to the content comes through this mount's page cache (writes, truncates) and a read-only mount
//!   serves a fixed snapshot; re-reading a large file then costs no decode or hash. Write-only
//!   opens (cp, tar, rsync, dd, editors saving) get `FOPEN_DIRECT_IO` when the kernel's direct
//!   writes drop the cached pages of the range they write (protocol 7.39, Linux 6.6, on): the bytes
//!   go straight to the core instead of also into a page-cache copy that the handle can neither
//!   read nor map, so a large copy touches half the memory. So do read-write creates of a new
//!   file (`O_CREAT | O_EXCL`: `mkstemp`, as rsync, git and editors' temporary files are made)
//!   when the kernel offers `FUSE_DIRECT_IO_ALLOW_MMAP`, which keeps shared mappings of them
//!   working: through the page cache each of their writes cost a `getxattr(security.capability)`
//!   round trip too (FUSE never marks an inode as having no security xattrs), where a direct
//!   write carries `FUSE_WRITE_KILL_SUIDGID` instead. Other read-write opens get no flag, so the
//!   kernel drops the inode's cached pages on such opens (the conservative default). A mounted
//!   replica's view moves to new versions while files opened before keep theirs: the core says per
//!   open whether the pages cached are of its version ([`PageCache`]), and [`KernelCache`] drops
//!   what a move made stale; `getattr` through an open handle answers for the handle's version.
//! - **Read-ahead**: the mount's read-ahead is raised to 1 MiB, FUSE's largest read, where the
//!   daemon may (root): a sequential reader then costs an eighth of the requests ([`read_ahead`]).
//! - **Whose close is a close**: a flush finalizes the file's content only when it comes from the
//!   process that opened the handle; a forked child closing its inherited copy at exec or exit
//!   does not make a version of a half-written file ([`openers`]).
//! - **fsync off the event loop**: `fsync` and `fsyncdir` finalize on one of a few pool threads
//!   and are answered by the committer once their commit is done, so writers fsyncing at once
//!   never hold every loop thread while `ls` or a `stat` waits behind them, and 10,000 concurrent
//!   fsyncs are 10,000 entries in a list, not 10,000 threads.
//! - **What the kernel leaves to the filesystem** (ext4's behaviour is the reference):
//!   a write or truncation clears set-ID bits and `security.capability` ([`PondFs::remove_privs`];
//!   the kernel does it for page-cache writes and truncate(2), not for direct writes, which it
//!   flags with `FUSE_WRITE_KILL_SUIDGID`, nor for open(O_TRUNC) under `FUSE_ATOMIC_O_TRUNC`);
//!   `listxattr` hides `trusted.*` names from callers without CAP_SYS_ADMIN (the VFS refuses
//!   them get and set, but passes a filesystem's list as it is). Who the caller is comes from
//!   [`creds`].
//! - **`sync`, `dirsync` and O_SYNC**: under `sync` no open gets direct writes, so the kernel
//!   fsyncs after every write (MS_SYNCHRONOUS); directory changes (and, under `sync`, attribute and
//!   xattr changes) are committed before their reply. An O_SYNC or O_DSYNC open never gets direct
//!   writes either: through the page cache the kernel fsyncs after each write, where a direct
//!   write would only pass the flag along.
//! - **Inode lifetimes**: the core counts every entry it gives the kernel and `forget` drops the
//!   count ([`PondFs::count_kernel_lookups`]), so an inode unlinked or renamed over stays usable while
//!   the kernel may still send requests for it; `readdirplus` forgets the entries that did not fit.
//! - **Modes**: the kernel applies the umask before `mknod`/`mkdir`/`create` (no `FUSE_DONT_MASK`),
//!   so the mode's permission bits go to the core as they are; permissions are enforced by the
//!   kernel (`default_permissions`).

pub mod attr;
mod creds;
pub mod errno;
pub mod kernel_cache;
pub mod mountinfo;
mod openers;
mod pool;
mod read_ahead;
pub mod session;

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, PollEvents, PollFlags, PollNotifier, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl,
    ReplyLseek, ReplyOpen, ReplyPoll, ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionUnmounter, TimeOrNow,
    WriteFlags,
};

use crate::fs::commit_queue::Done;
use crate::fs::{Caller, FsError, PageCache, PondFs, RenameMode, SetAttr, XattrSet};
use attr::{file_attr, file_type, mknod_kind, time_set};
use creds::RequestCreds;
pub use kernel_cache::KernelCache;
pub use session::{MountConfig, Synchronous, mount_options, serve, serve_notifying};

/// How long the kernel may cache entries and attributes.
pub const TTL: Duration = Duration::from_secs(1);
/// How long the kernel may cache `a`: [`TTL`], or not at all when the core says so (a file of a
/// replica's view open at two versions, see `Attr::volatile`).
fn ttl(a: &crate::fs::Attr) -> Duration {
    if a.volatile { Duration::ZERO } else { TTL }
}

/// Inode numbers are never reused while mounted, so every generation is 0.
const GENERATION: Generation = Generation(0);

/// Threads that finalize fsyncs (see [`PondFuse::off_the_loop`]).
const FSYNC_THREADS: usize = 4;

/// The `fuser::Filesystem` over a [`PondFs`].
pub struct PondFuse {
    fs: Arc<PondFs>,
    openers: openers::Openers,
    /// Which opens bypass the page cache (see the module docs); decided in `init`.
    direct_writes: DirectWrites,
    /// Which changes are committed before their reply (`sync`, `dirsync`).
    synchronous: Synchronous,
    fsyncs: pool::Pool,
    /// Set by `serve` once the session exists: `destroy` unmounts through it.
    unmounter: Arc<Mutex<Option<SessionUnmounter>>>,
}

/// What a change touches, for [`PondFuse::committed`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    Directory,
    Attributes,
}

impl PondFuse {
    pub fn new(fs: Arc<PondFs>, synchronous: Synchronous) -> PondFuse {
        fs.count_kernel_lookups();
        PondFuse {
            fs,
            openers: openers::Openers::default(),
            direct_writes: DirectWrites::default(),
            synchronous,
            fsyncs: pool::Pool::new("pond-fsync", FSYNC_THREADS),
            unmounter: Arc::default(),
        }
    }

    /// Where `serve` puts the session's unmounter (see `destroy`).
    pub fn unmounter_slot(&self) -> Arc<Mutex<Option<SessionUnmounter>>> {
        self.unmounter.clone()
    }

    /// Run an fsync or fsyncdir off the event loop: `op` (finalizing the content, which may write
    /// out a large object) runs on one of [`FSYNC_THREADS`] pool threads, and the reply is sent by
    /// whoever learns the commit's outcome, holding no thread while it waits. With every loop
    /// thread parked in an fsync, a `stat` would wait behind commits; with a thread per fsync,
    /// 10,000 concurrent fsyncs were 10,000 threads.
    fn off_the_loop(&self, what: &'static str, reply: ReplyEmpty, op: impl FnOnce(&PondFs, Done) + Send + 'static) {
        let fs = self.fs.clone();
        self.fsyncs.run(move || op(&fs, Box::new(move |result| reply_empty(what, result, reply))));
    }

    /// Under `dirsync` (directory changes) or `sync` (those and attribute changes), wait until the
    /// change `result` reports is committed.
    fn committed<T>(&self, change: Change, result: Result<T, FsError>) -> Result<T, FsError> {
        let wait = match self.synchronous {
            Synchronous::No => false,
            Synchronous::Directories => change == Change::Directory,
            Synchronous::Everything => true,
        };
        match result {
            Ok(v) if wait => self.fs.sync_all().map(|()| v),
            other => other,
        }
    }
}

/// The errno for a failed operation, logged at debug (errors are normal traffic: ENOENT on lookup).
fn fail(op: &'static str, e: FsError) -> Errno {
    let errno = errno::errno(&e);
    tracing::debug!(op, errno = errno.code(), "{e}");
    errno
}

fn caller(req: &Request) -> Caller {
    Caller { uid: req.uid(), gid: req.gid() }
}

/// The first FUSE protocol minor (Linux 6.6) whose direct writes invalidate the inode's cached
/// pages in the range they write, which keeping other handles' page cache relies on.
const DIRECT_WRITES_INVALIDATE: u32 = 39;

/// Which opens bypass the page cache (`FOPEN_DIRECT_IO`), as far as the kernel allows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct DirectWrites {
    /// Write-only opens: the kernel's direct writes drop the cached pages of the range they write
    /// ([`DIRECT_WRITES_INVALIDATE`]), and not under `sync`.
    write_only: bool,
    /// Also read-write creates of a new file: [`DirectWrites::write_only`], and the kernel lets
    /// such a handle be mapped shared (`FUSE_DIRECT_IO_ALLOW_MMAP`).
    new_read_write: bool,
}

/// Read-only opens keep the page cache; write-only opens, and read-write creates of a new file
/// (`O_CREAT | O_EXCL`), bypass it as far as `direct` allows, unless O_SYNC or O_DSYNC; other
/// read-write opens use it as the kernel does by default.
fn fopen_flags(flags: i32, direct: DirectWrites) -> FopenFlags {
    // O_SYNC is O_DSYNC plus a bit of its own.
    let synchronous = flags & libc::O_DSYNC != 0;
    let new_file = flags & (libc::O_CREAT | libc::O_EXCL) == libc::O_CREAT | libc::O_EXCL;
    match flags & libc::O_ACCMODE {
        libc::O_RDONLY => FopenFlags::FOPEN_KEEP_CACHE,
        libc::O_WRONLY if direct.write_only && !synchronous => FopenFlags::FOPEN_DIRECT_IO,
        libc::O_RDWR if direct.new_read_write && new_file && !synchronous => FopenFlags::FOPEN_DIRECT_IO,
        _ => FopenFlags::empty(),
    }
}

/// The names of a `listxattr` answer the caller may see: `trusted.*` only with CAP_SYS_ADMIN
/// (asked only when there is such a name), as ext4 lists them.
fn visible_xattrs(names: Vec<u8>, may_see_trusted: impl FnOnce() -> bool) -> Vec<u8> {
    let is_trusted = |name: &[u8]| name.starts_with(b"trusted.");
    if !names.split(|b| *b == 0).any(is_trusted) || may_see_trusted() {
        return names;
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty() && !is_trusted(n)) {
        out.extend_from_slice(name);
        out.push(0);
    }
    out
}

/// The caller of a request, for the rules the kernel leaves to the filesystem.
fn creds(req: &Request) -> RequestCreds {
    RequestCreds::new(req.pid(), req.gid())
}

/// The getxattr/listxattr size protocol: size 0 asks for the length, a buffer too small is ERANGE.
fn reply_xattr(op: &'static str, size: u32, result: Result<Vec<u8>, FsError>, reply: ReplyXattr) {
    match result {
        Ok(v) => match u32::try_from(v.len()) {
            Ok(len) if size == 0 => reply.size(len),
            Ok(len) if len <= size => reply.data(&v),
            _ => reply.error(Errno::ERANGE),
        },
        Err(e) => reply.error(fail(op, e)),
    }
}

fn reply_entry(op: &'static str, result: Result<crate::fs::Attr, FsError>, reply: ReplyEntry) {
    match result {
        Ok(a) => reply.entry(&ttl(&a), &file_attr(&a), GENERATION),
        Err(e) => reply.error(fail(op, e)),
    }
}

fn reply_empty(op: &'static str, result: Result<(), FsError>, reply: ReplyEmpty) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(fail(op, e)),
    }
}

impl Filesystem for PondFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        for wanted in [
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO,
        ] {
            if let Err(missing) = config.add_capabilities(wanted) {
                tracing::debug!("kernel lacks FUSE capability {missing:?}; going without it");
            }
        }
        // Under `sync`, every write goes through the page cache, where the kernel fsyncs it.
        let write_only =
            config.kernel_abi().1 >= DIRECT_WRITES_INVALIDATE && self.synchronous != Synchronous::Everything;
        let new_read_write = write_only && config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP).is_ok();
        self.direct_writes = DirectWrites { write_only, new_read_write };
        tracing::debug!(
            read_only = self.fs.is_read_only(),
            abi = ?config.kernel_abi(),
            direct_writes = ?self.direct_writes,
            "FUSE session initialized"
        );
        Ok(())
    }

    fn destroy(&mut self) {
        tracing::debug!("FUSE session ending, committing what was released");
        if let Err(e) = self.fs.shutdown() {
            tracing::error!("final commit at unmount failed: {e}");
        }
        // fuser unmounts once the session has ended, after checking whether the kernel did so
        // already; that check (fuser 0.18, `is_mounted`) takes the ended connection for a live
        // one, so every clean unmount ended in a failed umount(2) and a warning in the daemon's
        // log. Unmounting here, first, leaves fuser nothing to do: EINVAL is the usual answer (the
        // kernel has unmounted it: that is what ended the session); a connection aborted through
        // /sys/fs/fuse/connections leaves the mount in place, and this removes it.
        let unmounter = self.unmounter.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut unmounter) = unmounter {
            match unmounter.unmount() {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => tracing::warn!("unmounting after the session ended: {e}"),
            }
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        tracing::debug!(parent = parent.0, ?name, "lookup");
        match self.fs.lookup(parent.0, name.as_bytes()) {
            // A missing name, cached by the kernel for the TTL like a present one: a name made
            // through the kernel replaces it at once, and a view that moves invalidates the names
            // it adds.
            Err(FsError::NotFound) => reply.entry(&TTL, &attr::absent(), GENERATION),
            result => reply_entry("lookup", result, reply),
        }
    }

    /// The kernel dropped references to `ino` (fuser's `batch_forget` comes here too).
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        tracing::debug!(ino = ino.0, nlookup, "forget");
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        tracing::debug!(ino = ino.0, fh = fh.map(|f| f.0), "getattr");
        match self.fs.getattr_via(ino.0, fh.map(|f| f.0)) {
            Ok(a) => reply.attr(&ttl(&a), &file_attr(&a)),
            Err(e) => reply.error(fail("getattr", e)),
        }
    }

    fn setattr(
        &self,
        request: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        tracing::debug!(ino = ino.0, fh = fh.map(|f| f.0), ?mode, ?uid, ?gid, ?size, ?atime, ?mtime, "setattr");
        let req = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            fh: fh.map(|f| f.0),
        };
        let truncate = req.size.is_some();
        let mut result = self.fs.setattr(ino.0, req);
        if truncate && result.is_ok() {
            // After the kernel's own mode change (which keeps set-group-ID without group-exec).
            result = self.fs.remove_privs(ino.0, &creds(request)).and_then(|()| self.fs.getattr(ino.0));
        }
        match self.committed(Change::Attributes, result) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(fail("setattr", e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        tracing::debug!(ino = ino.0, "readlink");
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(fail("readlink", e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        tracing::debug!(parent = parent.0, ?name, mode = format_args!("{mode:o}"), rdev, "mknod");
        let Some(kind) = mknod_kind(mode) else { return reply.error(Errno::EINVAL) };
        let made = self.fs.mknod(parent.0, name.as_bytes(), kind, mode & 0o7777, attr::dev_t(rdev), caller(req));
        reply_entry("mknod", self.committed(Change::Directory, made), reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        tracing::debug!(parent = parent.0, ?name, mode = format_args!("{mode:o}"), "mkdir");
        let made = self.fs.mkdir(parent.0, name.as_bytes(), mode & 0o7777, caller(req));
        reply_entry("mkdir", self.committed(Change::Directory, made), reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        tracing::debug!(parent = parent.0, ?name, "unlink");
        reply_empty("unlink", self.committed(Change::Directory, self.fs.unlink(parent.0, name.as_bytes())), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        tracing::debug!(parent = parent.0, ?name, "rmdir");
        reply_empty("rmdir", self.committed(Change::Directory, self.fs.rmdir(parent.0, name.as_bytes())), reply);
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        tracing::debug!(parent = parent.0, ?link_name, ?target, "symlink");
        let made = self.fs.symlink(parent.0, link_name.as_bytes(), target.as_os_str().as_bytes(), caller(req));
        reply_entry("symlink", self.committed(Change::Directory, made), reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        tracing::debug!(parent = parent.0, ?name, newparent = newparent.0, ?newname, flags = flags.bits(), "rename");
        let mode = if flags.is_empty() {
            RenameMode::Replace
        } else if flags == RenameFlags::RENAME_NOREPLACE {
            RenameMode::NoReplace
        } else if flags == RenameFlags::RENAME_EXCHANGE {
            RenameMode::Exchange
        } else {
            return reply.error(Errno::EINVAL);
        };
        let renamed = self.fs.rename(parent.0, name.as_bytes(), newparent.0, newname.as_bytes(), mode);
        reply_empty("rename", self.committed(Change::Directory, renamed), reply);
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        tracing::debug!(ino = ino.0, newparent = newparent.0, ?newname, "link");
        reply_entry(
            "link",
            self.committed(Change::Directory, self.fs.link(ino.0, newparent.0, newname.as_bytes())),
            reply,
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        tracing::debug!(ino = ino.0, flags = format_args!("{:#o}", flags.0), "open");
        // FUSE_ATOMIC_O_TRUNC: the truncation is ours (O_RDONLY | O_TRUNC truncates too), and so
        // is what it clears.
        if flags.0 & libc::O_TRUNC != 0
            && let Err(e) = self.fs.remove_privs(ino.0, &creds(req))
        {
            return reply.error(fail("open", e));
        }
        match self.fs.open_file(ino.0, flags.0) {
            Ok(fh) => {
                self.openers.record(fh, req.pid());
                let flags = match self.fs.page_cache(fh) {
                    // A replica's view moved and another version of the file is read through
                    // the page cache, or the pages there are of another version (see `PageCache`).
                    PageCache::Bypass => FopenFlags::FOPEN_DIRECT_IO,
                    PageCache::Refill => FopenFlags::empty(),
                    PageCache::Keep => fopen_flags(flags.0, self.direct_writes),
                };
                reply.opened(FileHandle(fh), flags)
            }
            Err(e) => reply.error(fail("open", e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        tracing::debug!(ino = ino.0, fh = fh.0, offset, size, "read");
        match self.fs.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(fail("read", e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        tracing::debug!(ino = ino.0, fh = fh.0, offset, len = data.len(), "write");
        let mut who = creds(req);
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            who = who.without_fsetid();
        }
        if let Err(e) = self.fs.remove_privs(ino.0, &who) {
            return reply.error(fail("write", e));
        }
        match self.fs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(fail("write", e)),
        }
    }

    fn flush(&self, req: &Request, ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        tracing::debug!(ino = ino.0, fh = fh.0, pid = req.pid(), "flush");
        if !self.openers.is_openers_process(fh.0, req.pid()) {
            // Another process closing its inherited copy (see `openers`): not the writer's close.
            reply.ok();
            return;
        }
        reply_empty("flush", self.fs.flush(fh.0), reply);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        tracing::debug!(ino = ino.0, fh = fh.0, "release");
        self.openers.forget(fh.0);
        reply_empty("release", self.fs.release(fh.0), reply);
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        tracing::debug!(ino = ino.0, fh = fh.0, datasync, "fsync");
        self.off_the_loop("fsync", reply, move |fs, done| fs.fsync_then(fh.0, datasync, done));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        tracing::debug!(ino = ino.0, "opendir");
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(fail("opendir", e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        tracing::debug!(ino = ino.0, fh = fh.0, offset, "readdir");
        match self.fs.readdir(fh.0, offset as i64) {
            Ok(entries) => {
                for e in entries {
                    if reply.add(INodeNo(e.ino), e.offset as u64, file_type(e.kind), OsStr::from_bytes(&e.name)) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(fail("readdir", e)),
        }
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        tracing::debug!(ino = ino.0, fh = fh.0, offset, "readdirplus");
        match self.fs.readdirplus(fh.0, offset as i64) {
            Ok(entries) => {
                let mut full = false;
                for (e, a) in entries {
                    let name = OsStr::from_bytes(&e.name);
                    full =
                        full || reply.add(INodeNo(e.ino), e.offset as u64, name, &ttl(&a), &file_attr(&a), GENERATION);
                    if full && e.name != b"." && e.name != b".." {
                        self.fs.forget(e.ino, 1); // counted by the core, never reached the kernel
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(fail("readdirplus", e)),
        }
    }

    fn releasedir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        tracing::debug!(ino = ino.0, fh = fh.0, "releasedir");
        reply_empty("releasedir", self.fs.releasedir(fh.0), reply);
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        tracing::debug!(ino = ino.0, fh = fh.0, "fsyncdir");
        self.off_the_loop("fsyncdir", reply, move |fs, done| fs.fsyncdir_then(ino.0, done));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        tracing::debug!("statfs");
        match self.fs.statfs() {
            Ok(s) => reply.statfs(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize),
            Err(e) => reply.error(fail("statfs", e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        tracing::debug!(ino = ino.0, ?name, len = value.len(), flags, "setxattr");
        let how = match flags {
            0 => XattrSet::Any,
            libc::XATTR_CREATE => XattrSet::Create,
            libc::XATTR_REPLACE => XattrSet::Replace,
            _ => return reply.error(Errno::EINVAL),
        };
        if position != 0 {
            return reply.error(Errno::EINVAL);
        }
        let set = self.fs.setxattr(ino.0, name.as_bytes(), value, how);
        reply_empty("setxattr", self.committed(Change::Attributes, set), reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        tracing::debug!(ino = ino.0, ?name, size, "getxattr");
        reply_xattr("getxattr", size, self.fs.getxattr(ino.0, name.as_bytes()), reply);
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        tracing::debug!(ino = ino.0, size, "listxattr");
        let may_see_trusted = || creds(req).has_capability(creds::CAP_SYS_ADMIN);
        let listed = self.fs.listxattr(ino.0).map(|names| visible_xattrs(names, may_see_trusted));
        reply_xattr("listxattr", size, listed, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        tracing::debug!(ino = ino.0, ?name, "removexattr");
        reply_empty(
            "removexattr",
            self.committed(Change::Attributes, self.fs.removexattr(ino.0, name.as_bytes())),
            reply,
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        tracing::debug!(ino = ino.0, mask = mask.bits(), "access");
        reply_empty("access", self.fs.access(ino.0, mask.bits()), reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        tracing::debug!(
            parent = parent.0,
            ?name,
            mode = format_args!("{mode:o}"),
            flags = format_args!("{flags:#o}"),
            "create"
        );
        let created = self.fs.create(parent.0, name.as_bytes(), mode & 0o7777, flags, caller(req));
        match self.committed(Change::Directory, created) {
            Ok((a, fh)) => {
                self.openers.record(fh, req.pid());
                reply.created(&TTL, &file_attr(&a), GENERATION, FileHandle(fh), fopen_flags(flags, self.direct_writes))
            }
            Err(e) => reply.error(fail("create", e)),
        }
    }

    // Operations pond does not offer. fuser's defaults answer these too, but log a warning each
    // time; these answer quietly. ENOSYS makes the kernel remember and fall back to its generic
    // code (lseek, copy_file_range through read/write, fallocate → EOPNOTSUPP, default poll mask).

    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        tracing::debug!(ino = ino.0, cmd, "ioctl (not supported)");
        reply.error(Errno::ENOTTY);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        tracing::debug!(ino = ino.0, "fallocate (not supported)");
        reply.error(Errno::ENOSYS);
    }

    fn lseek(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _offset: i64, _whence: i32, reply: ReplyLseek) {
        tracing::debug!(ino = ino.0, "lseek (kernel's generic lseek)");
        reply.error(Errno::ENOSYS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        tracing::debug!(ino_in = ino_in.0, ino_out = ino_out.0, "copy_file_range (kernel copies)");
        reply.error(Errno::ENOSYS);
    }

    fn poll(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _ph: PollNotifier,
        _events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        tracing::debug!(ino = ino.0, "poll (default mask)");
        reply.error(Errno::ENOSYS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: DirectWrites = DirectWrites { write_only: false, new_read_write: false };
    const WRITE_ONLY: DirectWrites = DirectWrites { write_only: true, new_read_write: false };
    const ALL: DirectWrites = DirectWrites { write_only: true, new_read_write: true };

    #[test]
    fn only_read_only_opens_keep_the_page_cache_and_only_writing_opens_bypass_it() {
        for direct in [NONE, WRITE_ONLY, ALL] {
            assert_eq!(fopen_flags(libc::O_RDONLY, direct), FopenFlags::FOPEN_KEEP_CACHE);
            assert_eq!(fopen_flags(libc::O_RDONLY | libc::O_NOFOLLOW, direct), FopenFlags::FOPEN_KEEP_CACHE);
            assert_eq!(fopen_flags(libc::O_RDWR, direct), FopenFlags::empty());
            assert_eq!(fopen_flags(libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC, direct), FopenFlags::empty());
        }
        for direct in [WRITE_ONLY, ALL] {
            assert_eq!(fopen_flags(libc::O_WRONLY | libc::O_TRUNC, direct), FopenFlags::FOPEN_DIRECT_IO);
        }
        assert_eq!(fopen_flags(libc::O_WRONLY | libc::O_TRUNC, NONE), FopenFlags::empty());
    }

    #[test]
    fn a_read_write_create_of_a_new_file_bypasses_the_page_cache_only_where_it_can_be_mapped_shared() {
        let mkstemp = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
        assert_eq!(fopen_flags(mkstemp, ALL), FopenFlags::FOPEN_DIRECT_IO);
        assert_eq!(fopen_flags(mkstemp, WRITE_ONLY), FopenFlags::empty());
        assert_eq!(fopen_flags(mkstemp, NONE), FopenFlags::empty());
    }

    #[test]
    fn synchronous_opens_write_through_the_page_cache_where_the_kernel_fsyncs_each_write() {
        for flags in [
            libc::O_WRONLY | libc::O_SYNC,
            libc::O_WRONLY | libc::O_DSYNC,
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_DSYNC,
        ] {
            assert_eq!(fopen_flags(flags, ALL), FopenFlags::empty());
        }
    }

    #[test]
    fn trusted_names_are_listed_only_to_who_may_see_them() {
        let names = b"user.a\0trusted.b\0security.c\0".to_vec();
        assert_eq!(visible_xattrs(names.clone(), || false), b"user.a\0security.c\0");
        assert_eq!(visible_xattrs(names.clone(), || true), names);
        let untrusted = b"user.a\0".to_vec();
        assert_eq!(visible_xattrs(untrusted.clone(), || panic!("not asked without trusted names")), untrusted);
    }
}
