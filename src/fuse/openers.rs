//! [`Openers`]: which thread opened each file handle, so the adapter can tell the writer's own
//! close from the close of a copy of its descriptor in another process.
//!
//! A child forked while a file is open (any `fork`+`exec` of a process that has files open: a
//! build tool, a shell, a test harness) closes its inherited copy at exec or exit, and the kernel
//! sends a FLUSH for it while the writer is still writing. Taken as the writer's close, that flush
//! would make a version of a half-written file. The kernel names the closing thread; a flush from
//! a thread of another process is not finalized (the writer's own close, its fsync and the last
//! release still are).

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct Openers(Mutex<HashMap<u64, u32>>);

impl Openers {
    /// Handle `fh` was opened by thread `tid` (as the kernel reports it; 0 when unknown).
    pub fn record(&self, fh: u64, tid: u32) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(fh, tid);
    }

    pub fn forget(&self, fh: u64) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&fh);
    }

    /// True unless a flush of `fh` by thread `tid` surely comes from another process than the
    /// one that opened it: when either thread is unknown or gone, it counts as the opener's.
    pub fn is_openers_process(&self, fh: u64, tid: u32) -> bool {
        let Some(opener) = self.0.lock().unwrap_or_else(|p| p.into_inner()).get(&fh).copied() else { return true };
        if opener == tid || opener == 0 || tid == 0 {
            return true;
        }
        match (thread_group(opener), thread_group(tid)) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }
}

/// The process (thread group) of thread `tid`, from `/proc/<tid>/status`.
fn thread_group(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_of_one_process_count_as_the_opener_and_unknown_handles_too() {
        let o = Openers::default();
        let me = nix::unistd::gettid().as_raw() as u32;
        o.record(7, me);
        let other_thread = std::thread::spawn(|| nix::unistd::gettid().as_raw() as u32);
        // A finished thread's tid is gone: it counts as the opener's (the safe side).
        assert!(o.is_openers_process(7, other_thread.join().unwrap()));
        assert!(o.is_openers_process(7, me));
        assert!(o.is_openers_process(8, 12345), "a handle not recorded");
        // PID 1 is another process than this test.
        assert!(!o.is_openers_process(7, 1));
        o.forget(7);
        assert!(o.is_openers_process(7, 1));
    }
}
