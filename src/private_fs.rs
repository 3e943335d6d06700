//! Pond's own directories and files, opened without following links: `_pond/` and what it holds
//! (the writer lock, the mount locks, the daemon log, the temp directory older ponds spilled
//! into), the store's temp directory, and the pond's root when a writer opens it.
//!
//! Whoever can write into a pond directory could otherwise plant a symlink there and have the
//! pond's owner (root, for an fstab mount or `pond gc`) create, append to or delete files
//! elsewhere. So:
//! - a private directory is created 0700, or opened with `O_NOFOLLOW | O_DIRECTORY` and refused
//!   when it is a symlink or not a directory; an existing one loses its group and other bits;
//! - a private file is opened relative to its directory's descriptor with `O_NOFOLLOW`, created
//!   0600, and refused unless it is a regular file without other hard links (so is a file the
//!   user names, `log=FILE`, in a directory followed as given: [`open_user_file`]);
//! - emptying a directory never follows a symlink and never enters another filesystem (a mount
//!   point inside is left alone).
//!
//! Everything after the first directory works on descriptors (`openat`, `unlinkat`), so a name
//! swapped for a link after it was checked is still never followed.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;

/// What a private directory or file is made with, whatever the umask.
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;
/// Pond's temp directories hold files, never trees; deeper than this is not pond's, and is left.
const MAX_DEPTH: u32 = 16;

/// Why a private directory or file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PrivateFsError {
    #[error(
        "{} is a symlink: pond does not follow links in its own directories; remove it (pond makes it again)",
        .0.display()
    )]
    Symlink(PathBuf),
    #[error("{} is not a directory; remove it (pond makes it again)", .0.display())]
    NotDir(PathBuf),
    #[error(
        "{} is not a regular file (a FIFO, device or socket); remove it (pond makes it again)",
        .0.display()
    )]
    NotRegular(PathBuf),
    #[error("{} has other hard links: pond does not write to a file with other names; remove it", .0.display())]
    Linked(PathBuf),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl PrivateFsError {
    fn io(path: &Path, e: impl Into<io::Error>) -> Self {
        PrivateFsError::Io { path: path.to_path_buf(), source: e.into() }
    }
}

/// How [`PrivateDir::open_file`] opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileAccess {
    /// For writing, created if absent, never truncated: a lock file.
    Lock,
    /// For writing, only if it exists: a lock file someone else holds.
    ExistingLock,
    /// For appending, created if absent: a log.
    Append,
}

/// An open private directory (see the module docs); its descriptor anchors everything opened in it.
#[derive(Debug)]
pub struct PrivateDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl PrivateDir {
    /// `parent/name`, created 0700 if absent, else checked (never a link, always a directory) and
    /// made private. `parent` itself is followed as given: a pond's root reached through a link is
    /// the user's own path.
    pub fn ensure(parent: &Path, name: &str) -> Result<PrivateDir, PrivateFsError> {
        let fd = open_dir(parent)?;
        ensure_in(&fd, parent, name)
    }

    /// `parent/name` if it exists (checked like [`ensure`](Self::ensure)), `None` if it does not.
    pub fn open_existing(parent: &Path, name: &str) -> Result<Option<PrivateDir>, PrivateFsError> {
        let fd = open_dir(parent)?;
        open_in(&fd, parent, name)
    }

    /// The subdirectory `name`, created 0700 if absent.
    pub fn ensure_dir(&self, name: &str) -> Result<PrivateDir, PrivateFsError> {
        ensure_in(&self.fd, &self.path, name)
    }

    /// The subdirectory `name` if it exists.
    pub fn open_dir(&self, name: &str) -> Result<Option<PrivateDir>, PrivateFsError> {
        open_in(&self.fd, &self.path, name)
    }

    /// Where this directory was found (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path naming this very directory, whatever is later renamed or swapped in at
    /// [`path`](Self::path): `/proc/self/fd/N` while this `PrivateDir` lives (its own path where
    /// /proc is not mounted). For code that takes a directory path (the store's temp files).
    pub fn pinned_path(&self) -> PathBuf {
        let pinned = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        if pinned.is_dir() { pinned } else { self.path.clone() }
    }

    /// The regular file `name` in this directory, opened as `access` says without following a
    /// link; a file it creates is 0600, an existing one loses its group and other bits. Refused
    /// when it is not a regular file, or (for writing) has other hard links.
    pub fn open_file(&self, name: &str, access: FileAccess) -> Result<File, PrivateFsError> {
        open_file_in(&self.fd, &self.path, OsStr::new(name), access)
    }

    /// A Unix socket listening at `name` in this directory, 0600. A socket left there (by a daemon
    /// that died) is replaced; anything else there is refused. Bound through
    /// [`pinned_path`](Self::pinned_path), which also keeps the address short whatever the
    /// directory's path (a socket address holds 107 bytes).
    pub fn bind_socket(&self, name: &str) -> Result<UnixListener, PrivateFsError> {
        let path = self.path.join(name);
        match nix::sys::stat::fstatat(&self.fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if file_type(&st) == SFlag::S_IFSOCK => self.remove_file(name)?,
            Ok(st) if file_type(&st) == SFlag::S_IFLNK => return Err(PrivateFsError::Symlink(path)),
            Ok(_) => {
                let taken = io::Error::new(io::ErrorKind::AlreadyExists, "something other than a socket is there");
                return Err(PrivateFsError::io(&path, taken));
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(PrivateFsError::io(&path, e)),
        }
        let listener = UnixListener::bind(self.pinned_path().join(name)).map_err(|e| PrivateFsError::io(&path, e))?;
        nix::sys::stat::fchmodat(
            &self.fd,
            name,
            Mode::from_bits_truncate(FILE_MODE),
            nix::sys::stat::FchmodatFlags::NoFollowSymlink,
        )
        .map_err(|e| PrivateFsError::io(&path, e))?;
        Ok(listener)
    }

    /// Remove the file (not a directory) `name` from this directory, if it is there; a link is
    /// removed, never followed.
    pub fn remove_file(&self, name: &str) -> Result<(), PrivateFsError> {
        match nix::unistd::unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(PrivateFsError::io(&self.path.join(name), e)),
        }
    }

    /// Remove everything in this directory, never following a symlink and never entering another
    /// filesystem (what is mounted inside is left, with a warning). Returns how many entries went.
    pub fn empty(&self) -> Result<usize, PrivateFsError> {
        let st = nix::sys::stat::fstat(&self.fd).map_err(|e| PrivateFsError::io(&self.path, e))?;
        empty_at(&self.fd, &self.path, st.st_dev, 0)
    }
}

/// Make the pond's root (or any directory the user named as one) readable by its owner only,
/// keeping the owner's bits. Returns the mode it had when that changed anything.
pub fn make_root_private(root: &Path) -> Result<Option<u32>, PrivateFsError> {
    let fd = open_dir(root)?;
    let st = nix::sys::stat::fstat(&fd).map_err(|e| PrivateFsError::io(root, e))?;
    let mode = st.st_mode & 0o7777;
    if mode & !DIR_MODE == 0 {
        return Ok(None);
    }
    nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode & DIR_MODE)).map_err(|e| PrivateFsError::io(root, e))?;
    Ok(Some(mode))
}

/// The regular file at `path`, a path the user gave (`log=FILE`), opened as
/// [`PrivateDir::open_file`] opens one: its directory is followed as given, its last component
/// never (refused when it is a symlink, not a regular file, or has other hard links).
pub fn open_user_file(path: &Path, access: FileAccess) -> Result<File, PrivateFsError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(PrivateFsError::NotRegular(path.to_path_buf()));
    };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    open_file_in(&open_dir(dir)?, dir, name, access)
}

/// [`PrivateDir::open_file`] in the directory `dir` (found at `dir_path`).
fn open_file_in(dir: &OwnedFd, dir_path: &Path, name: &OsStr, access: FileAccess) -> Result<File, PrivateFsError> {
    let path = dir_path.join(name);
    // O_NONBLOCK: opening a FIFO planted here must not hang; it is refused below.
    let mut flags = OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    match access {
        FileAccess::Lock => flags |= OFlag::O_CREAT,
        FileAccess::ExistingLock => {}
        FileAccess::Append => flags |= OFlag::O_CREAT | OFlag::O_APPEND,
    }
    let fd = match nix::fcntl::openat(dir, name, flags, Mode::from_bits_truncate(FILE_MODE)) {
        Ok(fd) => fd,
        // A FIFO nobody reads, or a socket.
        Err(Errno::ENXIO) => return Err(PrivateFsError::NotRegular(path)),
        Err(e) => return Err(link_or_io(e, &path)),
    };
    let st = nix::sys::stat::fstat(&fd).map_err(|e| PrivateFsError::io(&path, e))?;
    if file_type(&st) != SFlag::S_IFREG {
        return Err(PrivateFsError::NotRegular(path));
    }
    if st.st_nlink > 1 {
        return Err(PrivateFsError::Linked(path));
    }
    make_private(&fd, &st, FILE_MODE);
    // Back to blocking I/O for the regular file it is.
    let fl = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL).map_err(|e| PrivateFsError::io(&path, e))?;
    let fl = OFlag::from_bits_truncate(fl) & !OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(fl)).map_err(|e| PrivateFsError::io(&path, e))?;
    Ok(File::from(fd))
}

/// Open `path` as a directory, following links (a path the user gave).
fn open_dir(path: &Path) -> Result<OwnedFd, PrivateFsError> {
    nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| PrivateFsError::io(path, e))
}

fn ensure_in(parent: &OwnedFd, parent_path: &Path, name: &str) -> Result<PrivateDir, PrivateFsError> {
    match nix::sys::stat::mkdirat(parent, name, Mode::from_bits_truncate(DIR_MODE)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(PrivateFsError::io(&parent_path.join(name), e)),
    }
    open_in(parent, parent_path, name)?
        .ok_or_else(|| PrivateFsError::io(&parent_path.join(name), io::Error::from(io::ErrorKind::NotFound)))
}

fn open_in(parent: &OwnedFd, parent_path: &Path, name: &str) -> Result<Option<PrivateDir>, PrivateFsError> {
    let path = parent_path.join(name);
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = match nix::fcntl::openat(parent, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ENOTDIR) => {
            // A symlink (to a directory or not) or another kind of file.
            let st = nix::sys::stat::fstatat(parent, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW);
            return Err(match st {
                Ok(st) if file_type(&st) == SFlag::S_IFLNK => PrivateFsError::Symlink(path),
                _ => PrivateFsError::NotDir(path),
            });
        }
        Err(e) => return Err(link_or_io(e, &path)),
    };
    let st = nix::sys::stat::fstat(&fd).map_err(|e| PrivateFsError::io(&path, e))?;
    make_private(&fd, &st, DIR_MODE);
    Ok(Some(PrivateDir { fd, path }))
}

/// ELOOP from an `O_NOFOLLOW` open is a symlink at that name.
fn link_or_io(e: Errno, path: &Path) -> PrivateFsError {
    if e == Errno::ELOOP { PrivateFsError::Symlink(path.to_path_buf()) } else { PrivateFsError::io(path, e) }
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// Drop group and other bits (one made by an older pond, or under another umask). Best effort:
/// a file owned by someone else keeps its mode (the directory above is private anyway).
fn make_private(fd: &OwnedFd, st: &FileStat, private: u32) {
    let mode = st.st_mode & 0o7777;
    if mode & !private != 0 {
        let _ = nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(mode & private));
    }
}

/// The names in the directory `fd` (without `.` and `..`).
fn names(fd: &OwnedFd, path: &Path) -> Result<Vec<OsString>, PrivateFsError> {
    let dup = fd.try_clone().map_err(|e| PrivateFsError::io(path, e))?;
    let mut dir = nix::dir::Dir::from_fd(dup).map_err(|e| PrivateFsError::io(path, e))?;
    let mut out = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(|e| PrivateFsError::io(path, e))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(out)
}

/// Open the subdirectory `name` of `dir` without following a link or crossing a mount point
/// (`openat2` with `RESOLVE_NO_XDEV`, which catches bind mounts too; on kernels without it, a
/// different device number). `None`: not a directory of this filesystem (any more).
fn open_subdir(dir: &OwnedFd, name: &OsStr, dev: u64) -> Result<Option<OwnedFd>, Errno> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let how = OpenHow::new().flags(flags).resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV);
    let fd = match nix::fcntl::openat2(dir, name, how) {
        Ok(fd) => fd,
        Err(Errno::ENOSYS | Errno::E2BIG) => nix::fcntl::openat(dir, name, flags, Mode::empty())?,
        Err(e) => return Err(e),
    };
    let st = nix::sys::stat::fstat(&fd)?;
    Ok((st.st_dev == dev).then_some(fd))
}

fn empty_at(dir: &OwnedFd, path: &Path, dev: u64, depth: u32) -> Result<usize, PrivateFsError> {
    let mut removed = 0;
    for name in names(dir, path)? {
        let child = path.join(&name);
        let st = match nix::sys::stat::fstatat(dir, name.as_os_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(PrivateFsError::io(&child, e)),
        };
        if file_type(&st) == SFlag::S_IFDIR {
            if depth >= MAX_DEPTH {
                tracing::warn!("{}: deeper than pond ever writes; left alone", child.display());
                continue;
            }
            match open_subdir(dir, &name, dev) {
                Ok(Some(sub)) => removed += empty_at(&sub, &child, dev, depth + 1)?,
                Ok(None) | Err(Errno::EXDEV) => {
                    tracing::warn!("{}: another filesystem is mounted there; left alone", child.display());
                    continue;
                }
                // Swapped for something else since the stat: removed as what it is now, below.
                Err(Errno::ENOENT) => continue,
                Err(Errno::ELOOP | Errno::ENOTDIR) => {}
                Err(e) => return Err(PrivateFsError::io(&child, e)),
            }
        }
        let how = if file_type(&st) == SFlag::S_IFDIR { UnlinkatFlags::RemoveDir } else { UnlinkatFlags::NoRemoveDir };
        match nix::unistd::unlinkat(dir.as_fd(), name.as_os_str(), how) {
            Ok(()) => removed += 1,
            Err(Errno::ENOENT) => {}
            // Swapped between the stat and the unlink: take it as what it is now.
            Err(Errno::EISDIR | Errno::ENOTDIR) => {}
            Err(e) => return Err(PrivateFsError::io(&child, e)),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn private_dirs_and_files_are_0700_and_0600_whatever_the_umask_and_the_old_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let old = tmp.path().join("old");
        std::fs::create_dir(&old).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(old.join("log"), b"x").unwrap();
        std::fs::set_permissions(old.join("log"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let dir = PrivateDir::ensure(tmp.path(), "old").unwrap();
        assert_eq!(mode(&old), 0o700);
        dir.open_file("log", FileAccess::Append).unwrap();
        assert_eq!(mode(&old.join("log")), 0o600);
        let sub = dir.ensure_dir("new").unwrap();
        assert_eq!(mode(&old.join("new")), 0o700);
        sub.open_file("lock", FileAccess::Lock).unwrap();
        assert_eq!(mode(&old.join("new/lock")), 0o600);
        assert!(matches!(sub.open_file("absent", FileAccess::ExistingLock), Err(PrivateFsError::Io { .. })));
    }

    #[test]
    fn links_fifos_and_hard_links_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::os::unix::fs::symlink(&victim, tmp.path().join("linkdir")).unwrap();
        assert!(matches!(PrivateDir::ensure(tmp.path(), "linkdir"), Err(PrivateFsError::Symlink(_))));
        assert!(matches!(PrivateDir::open_existing(tmp.path(), "linkdir"), Err(PrivateFsError::Symlink(_))));
        std::fs::write(tmp.path().join("file"), b"").unwrap();
        assert!(matches!(PrivateDir::ensure(tmp.path(), "file"), Err(PrivateFsError::NotDir(_))));

        let dir = PrivateDir::ensure(tmp.path(), "d").unwrap();
        std::os::unix::fs::symlink(victim.join("appended"), tmp.path().join("d/log")).unwrap();
        assert!(matches!(dir.open_file("log", FileAccess::Append), Err(PrivateFsError::Symlink(_))));
        assert!(!victim.join("appended").exists(), "a link's target must not be created");
        nix::unistd::mkfifo(&tmp.path().join("d/fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(dir.open_file("fifo", FileAccess::Lock), Err(PrivateFsError::NotRegular(_))));
        std::fs::write(victim.join("shadow"), b"secret").unwrap();
        std::fs::hard_link(victim.join("shadow"), tmp.path().join("d/linked")).unwrap();
        assert!(matches!(dir.open_file("linked", FileAccess::Append), Err(PrivateFsError::Linked(_))));
        assert_eq!(std::fs::read(victim.join("shadow")).unwrap(), b"secret");
    }

    #[test]
    fn emptying_never_follows_a_link_or_leaves_the_filesystem() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::create_dir_all(victim.join("sub")).unwrap();
        std::fs::write(victim.join("keep"), b"keep").unwrap();
        std::fs::write(victim.join("sub/keep"), b"keep").unwrap();
        let dir = PrivateDir::ensure(tmp.path(), "tmp").unwrap();
        std::fs::create_dir_all(tmp.path().join("tmp/a/b")).unwrap();
        std::fs::write(tmp.path().join("tmp/a/b/f"), b"x").unwrap();
        std::fs::write(tmp.path().join("tmp/f"), b"x").unwrap();
        std::os::unix::fs::symlink(&victim, tmp.path().join("tmp/to-victim")).unwrap();
        std::os::unix::fs::symlink(&victim, tmp.path().join("tmp/a/to-victim")).unwrap();
        assert_eq!(dir.empty().unwrap(), 6);
        assert_eq!(std::fs::read_dir(tmp.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(std::fs::read(victim.join("keep")).unwrap(), b"keep");
        assert_eq!(std::fs::read(victim.join("sub/keep")).unwrap(), b"keep");
    }

    #[test]
    fn a_pinned_path_names_the_directory_even_after_a_link_is_swapped_in() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        let dir = PrivateDir::ensure(tmp.path(), "tmp").unwrap();
        let pinned = dir.pinned_path();
        std::fs::rename(tmp.path().join("tmp"), tmp.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&victim, tmp.path().join("tmp")).unwrap();
        std::fs::write(pinned.join("f"), b"x").unwrap();
        assert!(tmp.path().join("moved/f").exists());
        assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
    }

    #[test]
    fn a_socket_replaces_a_dead_ones_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = PrivateDir::ensure(tmp.path(), "d").unwrap();
        drop(dir.bind_socket("s").unwrap());
        let listener = dir.bind_socket("s").unwrap();
        assert_eq!(mode(&tmp.path().join("d/s")), 0o600);
        std::os::unix::net::UnixStream::connect(tmp.path().join("d/s")).unwrap();
        drop(listener);
        dir.remove_file("s").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", tmp.path().join("d/link")).unwrap();
        assert!(matches!(dir.bind_socket("link"), Err(PrivateFsError::Symlink(_))));
        std::fs::write(tmp.path().join("d/file"), b"keep").unwrap();
        assert!(dir.bind_socket("file").is_err());
        assert_eq!(std::fs::read(tmp.path().join("d/file")).unwrap(), b"keep");
    }

    #[test]
    fn a_pond_root_loses_group_and_other_bits_and_keeps_the_owners() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o2755)).unwrap();
        assert_eq!(make_root_private(tmp.path()).unwrap(), Some(0o2755));
        assert_eq!(mode(tmp.path()), 0o700);
        assert_eq!(make_root_private(tmp.path()).unwrap(), None);
    }
}
