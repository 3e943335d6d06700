//! A directory remote's files, reached without following links and made private.
//!
//! object_store's `LocalFileSystem` follows symbolic links: a replica directory holding
//! `_large_files/<hash>.parquet -> /etc/shadow`, or `_delta_log -> /elsewhere`, would be read (and
//! written) outside the remote. So a directory remote is listed here ([`walk`]), entry by entry
//! without following anything, and a link or any other file that is neither a regular file nor a
//! directory is refused by name; files are opened component by component with `O_NOFOLLOW`
//! ([`open_file`], [`open_dir`]), so one swapped for a link after the listing is refused too.
//!
//! What pond creates in a directory remote (and in a restored pond: see `restore`) is private
//! whatever the umask: directories 0700, files 0600, as restic makes its repository.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, fchmod, fstat, mkdirat};

/// Mode of every directory pond creates in a remote or a restored pond.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file pond creates in a remote or a restored pond.
pub const FILE_MODE: u32 = 0o600;
/// Directories below a remote's root that a walk descends into: deeper than any layout name.
const MAX_WALK_DEPTH: usize = 8;

/// What [`walk`] found under a directory.
#[derive(Debug, Default)]
pub struct Walked {
    /// Regular files: `/`-separated name relative to the root (lossy if not UTF-8), and size.
    pub files: Vec<(String, u64)>,
    /// Entries that are neither regular files nor directories (or too deep): name and what it is.
    pub refused: Vec<(String, &'static str)>,
}

/// Every regular file under `root` with its size, never following a link. Staging files of uploads
/// under way or cut short (`<name>#<digits>`, object_store's convention) are not listed.
pub fn walk(root: &Path) -> io::Result<Walked> {
    let mut out = Walked::default();
    let mut dirs = vec![(String::new(), 0usize)];
    while let Some((rel, depth)) = dirs.pop() {
        for entry in std::fs::read_dir(root.join(&rel))? {
            let entry = entry?;
            let name = entry.file_name();
            let name = String::from_utf8_lossy(name.as_bytes());
            let path = if rel.is_empty() { name.to_string() } else { format!("{rel}/{name}") };
            let kind = entry.file_type()?;
            if kind.is_dir() && depth < MAX_WALK_DEPTH {
                dirs.push((path, depth + 1));
            } else if kind.is_file() {
                if !is_staging(&name) {
                    out.files.push((path, entry.metadata()?.len()));
                }
            } else {
                out.refused.push((path, describe(&kind)));
            }
        }
    }
    out.files.sort();
    Ok(out)
}

fn describe(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_dir() {
        "a directory nested deeper than any pond file"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// `<name>#<digits>`: a staging file of object_store's (and pond's) uploads into a directory.
fn is_staging(name: &str) -> bool {
    name.rsplit_once('#').is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The error for a path component that is a link (or not what it must be): ELOOP with the name.
fn not_followed(rel: &str, e: nix::Error) -> io::Error {
    match e {
        nix::Error::ELOOP | nix::Error::ENOTDIR => io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a symbolic link or reached through one (or through a non-directory) at {rel}"),
        ),
        e => io::Error::from(e),
    }
}

/// Open directory `rel` (`/`-separated, relative to `root`) without following a link in it;
/// with `create`, missing directories are made 0700.
pub fn open_dir(root: &Path, rel: &str, create: bool) -> io::Result<OwnedFd> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
    let mut dir: OwnedFd = File::open(root)?.into();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        let part = OsStr::new(part);
        let next = match openat(dir.as_fd(), part, flags, Mode::empty()) {
            Err(nix::Error::ENOENT) if create => {
                match mkdirat(dir.as_fd(), part, Mode::from_bits_truncate(DIR_MODE)) {
                    Ok(()) | Err(nix::Error::EEXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                let made = openat(dir.as_fd(), part, flags, Mode::empty()).map_err(|e| not_followed(rel, e))?;
                // mkdir applied the umask: set the mode itself.
                fchmod(made.as_fd(), Mode::from_bits_truncate(DIR_MODE))?;
                made
            }
            Err(e) => return Err(not_followed(rel, e)),
            Ok(d) => d,
        };
        dir = next;
    }
    Ok(dir)
}

/// Open the regular file `rel` under `root` for reading without following a link anywhere below
/// `root`; anything else (a FIFO would block, a device never end) is refused.
pub fn open_file(root: &Path, rel: &str) -> io::Result<File> {
    let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let dir = open_dir(root, dir, false)?;
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = openat(dir.as_fd(), OsStr::new(name), flags, Mode::empty()).map_err(|e| not_followed(rel, e))?;
    let st = fstat(fd.as_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a regular file"));
    }
    Ok(File::from(fd))
}

/// Remove the file `rel` under `root`, reaching it as [`open_file`] does.
pub fn remove_file(root: &Path, rel: &str) -> io::Result<()> {
    let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let dir = open_dir(root, dir, false)?;
    nix::unistd::unlinkat(&dir, OsStr::new(name), nix::unistd::UnlinkatFlags::NoRemoveDir)?;
    Ok(())
}

/// Create the new file `name` in the directory `dir` (opened by [`open_dir`]), mode 0600 whatever
/// the umask; it must not exist.
pub fn create_file_in(dir: &OwnedFd, name: &str) -> io::Result<File> {
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(dir.as_fd(), OsStr::new(name), flags, Mode::from_bits_truncate(FILE_MODE))?;
    fchmod(fd.as_fd(), Mode::from_bits_truncate(FILE_MODE))?;
    Ok(File::from(fd))
}

/// Create the new directory `path` (its parent exists), mode 0700 whatever the umask.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().mode(DIR_MODE).create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(DIR_MODE))
}

/// Create directory `path` and any missing parents; those created are 0700 whatever the umask.
pub fn create_private_dirs(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dirs(parent)?;
    }
    match create_private_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        other => other,
    }
}

/// Create the new file `path`, mode 0600 whatever the umask; it must not exist.
pub fn create_private_file(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_are_told_from_layout_names() {
        assert!(is_staging("00000000000000000001.json#123000004"));
        assert!(!is_staging("00000000000000000001.json"));
        assert!(!is_staging("x#"));
        assert!(!is_staging("x#1a"));
    }

    #[test]
    fn links_are_refused_by_the_walk_and_by_every_open() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("remote");
        std::fs::create_dir_all(root.join("_delta_log")).unwrap();
        std::fs::write(dir.path().join("secret"), b"outside").unwrap();
        std::fs::write(root.join("_delta_log/00000000000000000000.json"), b"{}").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("_delta_log/00000000000000000001.json"))
            .unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("_large_files")).unwrap();
        let walked = walk(&root).unwrap();
        assert_eq!(walked.files, vec![("_delta_log/00000000000000000000.json".to_string(), 2)]);
        let mut refused = walked.refused.clone();
        refused.sort();
        assert_eq!(
            refused,
            vec![
                ("_delta_log/00000000000000000001.json".to_string(), "a symbolic link"),
                ("_large_files".to_string(), "a symbolic link")
            ]
        );
        assert!(open_file(&root, "_delta_log/00000000000000000000.json").is_ok());
        assert!(open_file(&root, "_delta_log/00000000000000000001.json").is_err(), "a linked file");
        assert!(open_file(&root, "_large_files/secret").is_err(), "a file under a linked directory");
        assert!(open_dir(&root, "_large_files/packs", true).is_err(), "nothing created through a link");
        assert!(!dir.path().join("packs").exists());
    }
}
