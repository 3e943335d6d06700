//! [`RequestCreds`]: what the kernel would decide about the caller of a request, for the rules
//! FUSE leaves to the filesystem: whether it holds a capability (CAP_FSETID keeps set-ID bits
//! through a write or truncation, CAP_SYS_ADMIN sees `trusted.*` xattrs) and which groups it is in.
//!
//! The request names the calling thread; its `/proc/<tid>/status` says the rest. It is read only
//! when a rule needs it (a file with set-ID bits, a node with `trusted.*` names), once per request.
//! A thread that is gone or unreadable, or one outside the initial user namespace (where the
//! kernel's `capable()` asks), counts as unprivileged: the side that clears bits and hides names.

use std::cell::OnceCell;
use std::os::unix::fs::MetadataExt;

use crate::fs::Credentials;

/// `CAP_FSETID`: keep set-ID bits when changing a file.
pub const CAP_FSETID: u32 = 4;
/// `CAP_SYS_ADMIN`: among much else, see and set `trusted.*` xattrs.
pub const CAP_SYS_ADMIN: u32 = 21;
/// The inode number of the initial user namespace (`PROC_USER_INIT_INO`, fixed by the kernel).
const INIT_USER_NS: u64 = 0xEFFF_FFFD;

/// The caller of one request.
pub struct RequestCreds {
    tid: u32,
    fsgid: u32,
    /// The kernel said the caller lacks CAP_FSETID (`FUSE_WRITE_KILL_SUIDGID` on a write).
    kernel_says_no_fsetid: bool,
    status: OnceCell<Option<Status>>,
}

/// What `/proc/<tid>/status` says about a thread.
struct Status {
    effective_caps: u64,
    groups: Vec<u32>,
    in_initial_user_ns: bool,
}

impl RequestCreds {
    /// The caller as the request header names it (thread id and filesystem GID).
    pub fn new(tid: u32, fsgid: u32) -> RequestCreds {
        RequestCreds { tid, fsgid, kernel_says_no_fsetid: false, status: OnceCell::new() }
    }

    /// A write the kernel flagged with `FUSE_WRITE_KILL_SUIDGID`: its caller lacks CAP_FSETID.
    pub fn without_fsetid(mut self) -> RequestCreds {
        self.kernel_says_no_fsetid = true;
        self
    }

    /// The caller holds capability `cap` in the initial user namespace.
    pub fn has_capability(&self, cap: u32) -> bool {
        self.status().is_some_and(|s| s.in_initial_user_ns && s.effective_caps & (1 << cap) != 0)
    }

    fn status(&self) -> Option<&Status> {
        self.status.get_or_init(|| read_status(self.tid)).as_ref()
    }
}

impl Credentials for RequestCreds {
    fn may_keep_setid(&self) -> bool {
        !self.kernel_says_no_fsetid && self.has_capability(CAP_FSETID)
    }

    fn in_group(&self, gid: u32) -> bool {
        gid == self.fsgid || self.status().is_some_and(|s| s.groups.contains(&gid))
    }
}

fn read_status(tid: u32) -> Option<Status> {
    if tid == 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    let effective_caps = u64::from_str_radix(field("CapEff:")?, 16).ok()?;
    let groups = field("Groups:")?.split_whitespace().filter_map(|g| g.parse().ok()).collect();
    let ns = std::fs::metadata(format!("/proc/{tid}/ns/user")).ok()?;
    Some(Status { effective_caps, groups, in_initial_user_ns: ns.ino() == INIT_USER_NS })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> RequestCreds {
        RequestCreds::new(nix::unistd::gettid().as_raw() as u32, nix::unistd::getegid().as_raw())
    }

    #[test]
    fn this_thread_is_read_from_proc() {
        let root = nix::unistd::geteuid().is_root();
        // Tests run as root with the usual capabilities (CAP_FSETID is never dropped in practice).
        assert_eq!(me().may_keep_setid(), root);
        assert!(me().in_group(nix::unistd::getegid().as_raw()));
        assert!(!me().without_fsetid().may_keep_setid(), "the kernel's word wins");
    }

    #[test]
    fn a_caller_that_is_gone_is_unprivileged() {
        let gone = RequestCreds::new(0, 1000);
        assert!(!gone.may_keep_setid() && !gone.has_capability(CAP_SYS_ADMIN));
        assert!(gone.in_group(1000) && !gone.in_group(0));
    }
}
