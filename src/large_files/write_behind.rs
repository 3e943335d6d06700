//! [`WriteBehind`]: how an object file being written hands its bytes to the disk as it grows,
//! instead of leaving them all dirty in the page cache for the fsync at the end.
//!
//! Every [`WINDOW`] bytes the new range is queued for writeback (`sync_file_range(WRITE)`, no
//! wait). The range queued the time before has had a whole window of encoding to reach the disk:
//! it is waited for and then dropped from the page cache (`posix_fadvise(DONTNEED)`). An object is
//! written once and read back rarely (and through the mount's own cache when it is), so keeping
//! its pages buys little, while a stream that keeps taking fresh pages is slow where memory is
//! expensive to touch for the first time (a VM's guest memory: a page the host has never backed
//! costs far more than one just freed). Measured in the benchmark: see README "Benchmark".
//! At most two windows of the object stay in the page cache; the fsync at commit finds them.
//!
//! A failed wait is an error of the write (the disk refused the bytes: EIO, or ENOSPC with
//! delayed allocation): it is reported here, because the wait consumes the error the later fsync
//! would otherwise have seen.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Bytes of an object between two writeback steps.
pub const WINDOW: u64 = 8 << 20;

/// Writeback progress of one file written front to back (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct WriteBehind {
    /// End of the range last queued for writeback.
    queued: u64,
    /// End of the range already written back and dropped from the page cache.
    dropped: u64,
}

impl WriteBehind {
    /// Called as `file` grows to `len` bytes: queues and retires whole windows.
    pub(crate) fn advance(&mut self, file: &File, len: u64) -> io::Result<()> {
        if len < self.queued + WINDOW {
            return Ok(());
        }
        if self.queued > self.dropped {
            let (start, end) = (self.dropped, self.queued);
            wait_written(file, start, end - start)?;
            drop_cached(file, start, end - start);
            self.dropped = end;
        }
        queue_writeback(file, self.queued, len - self.queued);
        self.queued = len;
        Ok(())
    }
}

/// Asks the kernel to start writing `file`'s dirty pages in the range back, without waiting for it
/// (a length of 0 means to the end of the file).
pub(crate) fn queue_writeback(file: &File, offset: u64, len: u64) {
    let Ok((offset, len)) = off_t_range(offset, len) else { return };
    // SAFETY: a valid open fd; WRITE only starts I/O on the range.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "sync_file_range failed; the final fsync does it all");
    }
}

/// Writes the range's dirty pages back and waits until they are on the disk.
pub(crate) fn wait_written(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (offset, len) = off_t_range(offset, len)?;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a valid open fd and an in-range offset and length.
    if unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) } != 0 {
        let e = io::Error::last_os_error();
        // Filesystems without it (some FUSE and network ones): the fsync at commit does the work.
        if e.raw_os_error() == Some(libc::ENOSYS) || e.raw_os_error() == Some(libc::EINVAL) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// Drops the range's clean pages from the page cache (advice only: failure changes nothing).
pub(crate) fn drop_cached(file: &File, offset: u64, len: u64) {
    let Ok((offset, len)) = off_t_range(offset, len) else { return };
    // SAFETY: a valid open fd; advice never changes the file's content.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED) };
}

/// A byte range as the `off_t` pair the system calls take.
fn off_t_range(offset: u64, len: u64) -> io::Result<(i64, i64)> {
    match (i64::try_from(offset), i64::try_from(len)) {
        (Ok(offset), Ok(len)) => Ok((offset, len)),
        _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "range past i64")),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn windows_are_queued_then_retired_one_behind() {
        let mut file = tempfile::tempfile().unwrap();
        let mut wb = WriteBehind::default();
        let block = vec![7u8; (WINDOW / 2) as usize];
        let mut len = 0;
        let mut seen = Vec::new();
        for _ in 0..7 {
            file.write_all(&block).unwrap();
            len += block.len() as u64;
            wb.advance(&file, len).unwrap();
            seen.push((wb.queued / WINDOW * 2, wb.dropped / WINDOW * 2));
        }
        // In half windows: queued after every second block, the previous queue retired then.
        assert_eq!(seen, [(0, 0), (2, 0), (2, 0), (4, 2), (4, 2), (6, 4), (6, 4)]);
        let content = std::fs::read(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
        assert_eq!(content.len() as u64, len, "dropping pages from the cache must not change the file");
        assert!(content.iter().all(|&b| b == 7));
    }
}
