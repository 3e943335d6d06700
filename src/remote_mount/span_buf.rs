//! [`SpanBuf`]: the memory a read-ahead request's body lands in — page-aligned, so that the disk
//! cache can write its whole pages with `O_DIRECT` (no copy into the page cache, no writeback to
//! wait for), and reused, so that a cold read does not fault fresh pages in for every request.
//!
//! A buffer holds the bytes of a file from the page boundary at or before the request's start:
//! file offset `x` lies at `x - page_floor(start)` in it, so every page of the file inside the
//! request is a page of memory. Filled once ([`SpanBuf::fill`]), it becomes [`Bytes`] that slices
//! share; when the last slice goes, the buffer goes back to a small pool ([`POOL`]) for
//! the next request. Measured before (1 GiB cold read from the local S3 server): a quarter of the
//! daemon's CPU went to faulting in the pages of a new 8-12 MiB buffer per request.

use std::sync::Arc;

use bytes::Bytes;

use crate::aligned_buf::{AlignedBuf, Pool};

/// Memory pages, and the unit of an `O_DIRECT` write.
pub const PAGE: u64 = crate::aligned_buf::PAGE as u64;
/// The pool of read-ahead buffers: three kept (enough for the requests that end while others
/// start), allocated in multiples of 4 MiB so that one freed serves the next request of a similar
/// size (pages never written are not resident).
static POOL: Pool = Pool::new(3, 4 << 20);

/// What a buffer keeps alive for as long as it lives (read-ahead's claim on its memory bound).
pub type Holds = Arc<dyn Send + Sync>;

/// The owner behind a filled buffer's [`Bytes`]: gives the block back to the pool when the last
/// slice of it is dropped (and lets go of what it holds).
struct Filled {
    block: Option<AlignedBuf>,
    len: usize,
    pool: &'static Pool,
    _holds: Option<Holds>,
}

impl AsRef<[u8]> for Filled {
    fn as_ref(&self) -> &[u8] {
        self.block.as_ref().map_or(&[], |b| &b.as_slice()[..self.len])
    }
}

impl Drop for Filled {
    fn drop(&mut self) {
        if let Some(block) = self.block.take() {
            self.pool.give_back(block);
        }
    }
}

/// A request's body on its way in: the bytes of `[start, start + want)` of a file.
pub struct SpanBuf {
    block: AlignedBuf,
    pool: &'static Pool,
    holds: Option<Holds>,
    /// Where `start` lies in the block (`start % PAGE`).
    head: usize,
    want: usize,
    got: usize,
}

impl SpanBuf {
    /// Room for `want` bytes of a file from offset `start`, holding `holds` until the buffer and
    /// every slice of it are gone.
    pub fn new(start: u64, want: usize, holds: Option<Holds>) -> SpanBuf {
        SpanBuf::from_pool(&POOL, start, want, holds)
    }

    fn from_pool(pool: &'static Pool, start: u64, want: usize, holds: Option<Holds>) -> SpanBuf {
        let head = (start % PAGE) as usize;
        SpanBuf { block: pool.take(head + want), pool, holds, head, want, got: 0 }
    }

    /// Appends the next piece of the body; false (and nothing kept) when it would run past `want`.
    pub fn fill(&mut self, piece: &[u8]) -> bool {
        if piece.len() > self.want - self.got {
            return false;
        }
        let at = self.head + self.got;
        self.block.as_mut_slice()[at..at + piece.len()].copy_from_slice(piece);
        self.got += piece.len();
        true
    }

    /// Reads the rest of the bytes from `file`, where the request's start lies at `start` (a
    /// replica directory's objects are read so, not through a stream of small pieces). Stops
    /// short at the file's end ([`SpanBuf::is_full`] then says so).
    pub fn read_from(&mut self, file: &std::fs::File, start: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        while self.got < self.want {
            let (from, to) = (self.head + self.got, self.head + self.want);
            match file.read_at(&mut self.block.as_mut_slice()[from..to], start + self.got as u64) {
                Ok(0) => break,
                Ok(n) => self.got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// True once all `want` bytes are in.
    pub fn is_full(&self) -> bool {
        self.got == self.want
    }

    /// The filled buffer as [`Span`]: the bytes asked for, and the page-aligned bytes around them.
    pub fn freeze(self) -> Span {
        let (head, got) = (self.head, self.got);
        let all =
            Bytes::from_owner(Filled { block: Some(self.block), len: head + got, pool: self.pool, _holds: self.holds });
        Span { data: all.slice(head..), padded: all }
    }
}

/// A request's bytes: `data` (what was asked for) inside `padded`, which starts at a page boundary
/// of the file and of memory.
#[derive(Clone)]
pub struct Span {
    pub data: Bytes,
    pub padded: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_keeps_its_bytes_where_their_pages_are_and_refuses_too_many() {
        let start = 3 * PAGE + 100;
        let mut buf = SpanBuf::new(start, 10_000, None);
        assert!(buf.fill(&[7u8; 6_000]));
        assert!(!buf.is_full());
        assert!(!buf.fill(&[8u8; 4_001]), "past what was asked for");
        assert!(buf.fill(&[9u8; 4_000]));
        assert!(buf.is_full());
        let span = buf.freeze();
        assert_eq!(span.data.len(), 10_000);
        assert_eq!((span.data[0], span.data[5_999], span.data[6_000], span.data[9_999]), (7, 7, 9, 9));
        assert_eq!(span.padded.len(), 100 + 10_000);
        assert_eq!(span.padded.as_ptr() as usize % PAGE as usize, 0, "the file's page boundary is memory's");
        assert_eq!(span.data.as_ptr() as usize - span.padded.as_ptr() as usize, 100);
    }

    #[test]
    fn a_buffer_holds_what_it_was_given_until_its_last_slice_goes() {
        let holds: Holds = Arc::new(());
        let mut buf = SpanBuf::new(0, 100, Some(holds.clone()));
        assert!(buf.fill(&[1; 100]));
        let span = buf.freeze();
        let slice = span.data.slice(10..20);
        drop(span);
        assert_eq!(Arc::strong_count(&holds), 2, "a slice left keeps the buffer, and what it holds");
        drop(slice);
        assert_eq!(Arc::strong_count(&holds), 1);
        drop(SpanBuf::new(0, 100, Some(holds.clone())));
        assert_eq!(Arc::strong_count(&holds), 1, "a buffer never filled lets go too");
    }

    #[test]
    fn a_span_read_from_a_file_stops_at_its_end() {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &(0..=255u8).cycle().take(10_000).collect::<Vec<_>>()).unwrap();
        let mut buf = SpanBuf::new(5_000, 3_000, None);
        buf.read_from(&f, 5_000).unwrap();
        assert!(buf.is_full());
        assert_eq!(buf.freeze().data[..3], [(5_000 % 256) as u8, (5_001 % 256) as u8, (5_002 % 256) as u8]);
        let mut past = SpanBuf::new(9_000, 3_000, None);
        past.read_from(&f, 9_000).unwrap();
        assert!(!past.is_full(), "only 1,000 bytes are there");
    }

    #[test]
    fn a_buffer_whose_slices_are_gone_is_reused_and_the_pool_stays_small() {
        const KEEP: usize = 3;
        const ROUND: usize = 4 << 20;
        let pool: &'static Pool = Box::leak(Box::new(Pool::new(KEEP, ROUND)));
        let filled = |start: u64, n: usize| {
            let mut buf = SpanBuf::from_pool(pool, start, n, None);
            assert!(buf.fill(&vec![1u8; n]));
            buf.freeze()
        };
        let span = filled(0, 3 * PAGE as usize);
        let at = span.padded.as_ptr() as usize;
        let slice = span.data.slice(10..20);
        drop(span);
        assert!(pool.kept().is_empty(), "a slice keeps its buffer");
        assert_eq!(slice[..], [1u8; 10]);
        drop(slice);
        assert_eq!(pool.kept().len(), 1);
        let again = filled(PAGE + 5, 2 * PAGE as usize);
        assert_eq!(again.padded.as_ptr() as usize, at, "the freed buffer serves the next request");
        let many: Vec<Span> = (0..KEEP + 2).map(|i| filled(i as u64, 100)).collect();
        drop((again, many));
        assert_eq!(pool.kept().len(), KEEP, "at most {KEEP} are kept");
        let big = filled(0, ROUND + 1);
        drop(big);
        let sizes = pool.kept();
        assert!(sizes.contains(&(2 * ROUND)), "a larger one freed replaces a smaller one kept: {sizes:?}");
    }
}
