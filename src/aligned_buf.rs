//! [`AlignedBuf`]: a zero-initialised buffer that starts on a memory page, as `O_DIRECT` wants
//! the memory it writes from. Used where pond writes large runs of bytes without the page cache:
//! a pack being written (`large_files::direct_sink`) and a replica's read-ahead requests
//! (`remote_mount::span_buf`).

use std::alloc::Layout;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Mutex;

/// Memory pages, and the unit of an `O_DIRECT` write's offset and length.
pub(crate) const PAGE: usize = 4096;

/// A transparent huge page: buffers at least this large start on one and ask the kernel for them
/// (`MADV_HUGEPAGE`), so that filling a fresh buffer faults once per 2 MiB, not once per 4 KiB. A
/// cold read of 1 GiB from a replica fills about 120 MiB of new read-ahead buffers: with 4 KiB pages
/// that was 28,000-43,000 page faults in the daemon, 0.84-1.01 CPU-s and 710-843 MiB/s, against
/// 5,200-6,300, 0.72-0.88 CPU-s and 723-935 MiB/s with huge pages (scripts/s3_bench_server.py
/// behind scripts/s3_delay_proxy.py at 20 ms, `dd bs=1M`, faults from `/proc/PID/stat`; 6 rounds
/// alternated). A pack's 2 MiB write buffers (`large_files::direct_sink`) are one huge page each
/// too: 1 GiB of random bytes written through a local mount (`dd bs=1M conv=fsync`) went from
/// 1,573-1,688 to 1,947-1,977 MiB/s, the daemon's peak RSS from 52 to 54-55 MiB (3 rounds
/// alternated).
pub(crate) const HUGE_PAGE: usize = 2 << 20;

/// `capacity` bytes, page-aligned, all initialised (to zero when new).
pub(crate) struct AlignedBuf {
    /// The allocation (`capacity + PAGE` bytes, from `calloc`) and, inside it, the buffer.
    raw: NonNull<u8>,
    ptr: NonNull<u8>,
    capacity: usize,
}

// SAFETY: an AlignedBuf owns its allocation outright, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Zeroed through `calloc` with a page to spare, then aligned by hand: a large one comes from a
    /// fresh mapping that is zero already, so nothing is written and no page is resident until it
    /// is used. (The allocator's own aligned `alloc_zeroed` writes every byte: with read-ahead
    /// buffers rounded up to 4 MiB, that made the unused tails resident, 50 MiB more at peak.)
    pub(crate) fn new(capacity: usize) -> AlignedBuf {
        let capacity = capacity.max(1);
        let layout = Self::layout(capacity);
        // SAFETY: the layout has a non-zero size; its alignment is the allocator's plain one, so
        // this is `calloc`.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(raw) = NonNull::new(raw) else { std::alloc::handle_alloc_error(layout) };
        let skip = raw.as_ptr().align_offset(Self::alignment(capacity));
        // SAFETY: `skip` is less than the alignment, and the allocation has that many bytes past
        // `capacity`.
        let ptr = unsafe { NonNull::new_unchecked(raw.as_ptr().add(skip)) };
        if capacity >= HUGE_PAGE {
            // SAFETY: advice only, on memory this buffer owns (`ptr` is page-aligned).
            unsafe { libc::madvise(ptr.as_ptr().cast(), capacity, libc::MADV_HUGEPAGE) };
        }
        AlignedBuf { raw, ptr, capacity }
    }

    /// Where a buffer starts: on a huge page when it can fill one (a huge page is only ever
    /// mapped at an address that is a multiple of its size), on a page otherwise.
    fn alignment(capacity: usize) -> usize {
        if capacity >= HUGE_PAGE { HUGE_PAGE } else { PAGE }
    }

    fn layout(capacity: usize) -> Layout {
        Layout::from_size_align(capacity + Self::alignment(capacity), 16).expect("a buffer of a sane size")
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `capacity` initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.capacity) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `capacity` initialised bytes owned by self, borrowed mutably once.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.raw.as_ptr(), Self::layout(self.capacity)) };
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf").field("capacity", &self.capacity).finish()
    }
}

/// Freed buffers kept for the next user.
pub(crate) struct Pool {
    free: Mutex<Vec<AlignedBuf>>,
    /// Buffers kept at most.
    keep: usize,
    /// New buffers are allocated in multiples of this.
    round: usize,
}

impl Pool {
    pub(crate) const fn new(keep: usize, round: usize) -> Pool {
        Pool { free: Mutex::new(Vec::new()), keep, round }
    }

    /// A buffer of at least `capacity` bytes: a kept one when one is big enough (its bytes are
    /// whatever its last user left).
    pub(crate) fn take(&self, capacity: usize) -> AlignedBuf {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        match free.iter().position(|b| b.capacity() >= capacity) {
            Some(i) => free.swap_remove(i),
            None => {
                drop(free);
                AlignedBuf::new(capacity.div_ceil(self.round) * self.round)
            }
        }
    }

    /// Keeps `buf` for reuse; when `keep` are kept already, the smallest goes (small ones kept
    /// would otherwise turn every larger request away).
    pub(crate) fn give_back(&self, buf: AlignedBuf) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        free.push(buf);
        if free.len() > self.keep
            && let Some(smallest) = (0..free.len()).min_by_key(|&i| free[i].capacity())
        {
            let gone = free.swap_remove(smallest);
            drop(free);
            drop(gone);
        }
    }

    #[cfg(test)]
    pub(crate) fn kept(&self) -> Vec<usize> {
        self.free.lock().unwrap().iter().map(AlignedBuf::capacity).collect()
    }
}

/// `path`, a file that exists, opened for writing with `O_DIRECT` (never through a link). EINVAL
/// where the filesystem refuses it: callers then write through the page cache.
pub(crate) fn open_direct(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT | libc::O_NOFOLLOW | libc::O_CLOEXEC).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_starts_on_a_page_and_is_zeroed() {
        let mut buf = AlignedBuf::new(3 * PAGE + 5);
        assert_eq!(buf.as_slice().as_ptr() as usize % PAGE, 0);
        assert_eq!(buf.capacity(), 3 * PAGE + 5);
        assert!(buf.as_slice().iter().all(|&b| b == 0));
        buf.as_mut_slice()[3 * PAGE + 4] = 7;
        assert_eq!(buf.as_slice()[3 * PAGE + 4], 7);
    }

    /// The `smaps` entry of the mapping holding `at`.
    fn smaps_of(at: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut entry = String::new();
        let mut inside = false;
        for line in smaps.lines() {
            // A mapping's first line starts with its range, `from-to` in hex; the rest with a key.
            let range = line.split_whitespace().next().and_then(|r| r.split_once('-'));
            if let Some((Ok(from), Ok(to))) =
                range.map(|(f, t)| (usize::from_str_radix(f, 16), usize::from_str_radix(t, 16)))
            {
                inside = (from..to).contains(&at);
            }
            if inside {
                entry.push_str(line);
                entry.push('\n');
            }
        }
        entry
    }

    #[test]
    fn a_large_buffer_asks_for_huge_pages_and_a_small_one_does_not() {
        let large = AlignedBuf::new(4 * HUGE_PAGE);
        let small = AlignedBuf::new(64 << 10);
        assert_eq!(large.as_slice().as_ptr() as usize % HUGE_PAGE, 0, "a large buffer starts on a huge page");
        let large_map = smaps_of(large.as_slice().as_ptr() as usize);
        assert!(large_map.contains("VmFlags:") && large_map.contains(" hg"), "no MADV_HUGEPAGE on:\n{large_map}");
        let small_map = smaps_of(small.as_slice().as_ptr() as usize);
        assert!(small_map.contains("VmFlags:") && !small_map.contains(" hg"), "MADV_HUGEPAGE on:\n{small_map}");
    }
}
