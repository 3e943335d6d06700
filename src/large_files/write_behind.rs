//! Writeback by hand for files pond writes front to back through the page cache: queue a range
//! for writeback without waiting (`sync_file_range(WRITE)`), wait for a range queued before, and
//! drop it from the page cache (`posix_fadvise(DONTNEED)`). A file's bytes then reach the disk as
//! it grows, instead of all waiting, dirty, for the fsync at the end; and a stream of fresh pages
//! does not pile up where memory is expensive to touch for the first time (a VM's guest memory).
//! Used by a replica's chunk cache for what it writes through the page cache; packs are written
//! without the page cache (`direct_sink`).
//!
//! A failed wait is an error of the write (the disk refused the bytes: EIO, or ENOSPC with
//! delayed allocation): it is reported here, because the wait consumes the error the later fsync
//! would otherwise have seen.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

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
    fn written_back_and_dropped_ranges_keep_the_file_s_bytes() {
        let mut file = tempfile::tempfile().unwrap();
        let block = vec![7u8; 1 << 20];
        for _ in 0..3 {
            file.write_all(&block).unwrap();
        }
        queue_writeback(&file, 0, 0);
        wait_written(&file, 0, 2 << 20).unwrap();
        drop_cached(&file, 0, 2 << 20);
        let content = std::fs::read(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
        assert_eq!(content.len(), 3 << 20, "dropping pages from the cache must not change the file");
        assert!(content.iter().all(|&b| b == 7));
    }
}
