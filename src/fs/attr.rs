//! The attribute and request types the filesystem core speaks (no fuser types here).

pub use crate::oplog::schema::NodeKind;

/// What `stat` shows for an inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: NodeKind,
    /// Permission bits (07777).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub nlink: u32,
    pub rdev: u64,
    /// The kernel must not cache these attributes: a replica's view moved while the file stays
    /// open at the version before, and the two may differ in size (see `PondFs::advance_to`).
    pub volatile: bool,
}

impl Attr {
    /// 512-byte blocks, as `st_blocks` counts them.
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(512)
    }
}

/// Who is asking (from the FUSE request header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// What Linux's rule for set-ID bits needs to know about whoever changes a file's content (a
/// write, a truncation); see [`PondFs::remove_privs`](super::PondFs::remove_privs). Asked only
/// when the file has a set-ID bit.
pub trait Credentials {
    /// The caller holds CAP_FSETID: it keeps a file's set-ID bits while changing it.
    fn may_keep_setid(&self) -> bool;
    /// The caller's filesystem GID or one of its supplementary groups is `gid`.
    fn in_group(&self, gid: u32) -> bool;
}

/// A timestamp to set (utimens): the current time, or a given one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    At(i64),
}

/// A setattr request: each `Some` field changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    /// The open handle the request came through, if any (ftruncate).
    pub fh: Option<u64>,
}

/// How an open file will be used (from the open flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenMode {
    pub write: bool,
    pub truncate: bool,
    pub append: bool,
}

impl OpenMode {
    /// From `open(2)` flags.
    pub fn from_flags(flags: i32) -> OpenMode {
        let acc = flags & libc::O_ACCMODE;
        OpenMode {
            write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
            truncate: flags & libc::O_TRUNC != 0,
            append: flags & libc::O_APPEND != 0,
        }
    }
}

/// What rename does when the target exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameMode {
    Replace,
    NoReplace,
    Exchange,
}

/// setxattr's create/replace flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrSet {
    Any,
    Create,
    Replace,
}

/// One directory entry from `readdir`; `offset` is the cookie of the entry after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: NodeKind,
    pub name: Vec<u8>,
    pub offset: i64,
}

/// Filesystem statistics for statfs: the underlying disk's space, the pond's inode count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// How to open a pond's filesystem.
#[derive(Clone, Debug, Default)]
pub struct FsOptions {
    /// Refuse every change (EROFS).
    pub read_only: bool,
    /// Serve this Delta version, read-only.
    pub version: Option<u64>,
    /// Override the pond's inline/large threshold for this mount.
    pub threshold: Option<u64>,
}
