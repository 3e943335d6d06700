//! [`SpanBuf`]: the memory a read-ahead request's body lands in — page-aligned, so that the disk
//! cache can write its whole pages with `O_DIRECT` (no copy into the page cache, no writeback to
//! wait for), and reused, so that a cold read does not fault fresh pages in for every request. A
//! request's body is cut into segments, a buffer each ([`SegmentedBuf`], [`SEGMENT`]).
//!
//! A buffer holds the bytes of a file from the page boundary at or before its segment's start:
//! file offset `x` lies at `x - page_floor(start)` in it, so every page of the file inside the
//! segment is a page of memory. Filled once ([`SpanBuf::fill`]), it becomes [`Bytes`] that slices
//! share; when the last slice goes, the buffer goes back to a small pool ([`POOL`]) for
//! the next request. Measured before (1 GiB cold read from the local S3 server): a quarter of the
//! daemon's CPU went to faulting in the pages of a new 8-12 MiB buffer per request.

use std::sync::Arc;

use bytes::Bytes;

use crate::aligned_buf::{AlignedBuf, HUGE_PAGE, Pool};

/// Memory pages, and the unit of an `O_DIRECT` write.
pub const PAGE: u64 = crate::aligned_buf::PAGE as u64;
/// The most bytes of a file one buffer holds: with the part of a page before them, a buffer is one
/// huge page (`aligned_buf`). A request's body lands in as many buffers as it needs
/// ([`SegmentedBuf`]), cut between chunks, so that each is freed as soon as its own chunks are read
/// and written to the disk cache, not when the whole request's are: counted whole against the
/// read-ahead memory bound, 12 MiB buffers freed that late held four readers at once to 470-723
/// MiB/s, against 1,044-1,086 when the bound undercounted them.
pub const SEGMENT: u64 = HUGE_PAGE as u64 - PAGE;
/// The pool of read-ahead buffers: 16 kept (32 MiB; enough for the requests that end while others
/// start), all of one size, so that any freed one serves the next segment.
static POOL: Pool = Pool::new(16, HUGE_PAGE);

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
    start: u64,
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
        SpanBuf { block: pool.take(head + want), pool, holds, start, head, want, got: 0 }
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
        Span { start: self.start, data: all.slice(head..), padded: all }
    }
}

/// A request's body on its way in, landing in one [`SpanBuf`] per segment (the bytes between
/// segments are let go).
pub struct SegmentedBuf {
    segments: Vec<SpanBuf>,
    /// The segment being filled.
    filling: usize,
    /// The file offset of the body's next byte.
    at: u64,
}

impl SegmentedBuf {
    /// Room for the bytes of `segments` (ranges of a file, ascending, apart or not), each in a
    /// buffer of its own holding its `Holds` until it and every slice of it are gone. The body
    /// to fill them with runs from the first one's start to the last one's end.
    pub fn new(segments: &[(std::ops::Range<u64>, Holds)]) -> SegmentedBuf {
        let at = segments.first().map_or(0, |(range, _)| range.start);
        let segments = segments
            .iter()
            .map(|(range, holds)| SpanBuf::new(range.start, (range.end - range.start) as usize, Some(holds.clone())))
            .collect();
        SegmentedBuf { segments, filling: 0, at }
    }

    /// Appends the next piece of the body; false (and the rest of it not kept) when it would run
    /// past the last segment.
    pub fn fill(&mut self, mut piece: &[u8]) -> bool {
        while !piece.is_empty() {
            let Some(segment) = self.segments.get_mut(self.filling) else { return false };
            let wanted_at = segment.start + segment.got as u64;
            let n = if self.at < wanted_at {
                // Bytes between two segments.
                (wanted_at - self.at).min(piece.len() as u64) as usize
            } else {
                let n = (segment.want - segment.got).min(piece.len());
                segment.fill(&piece[..n]);
                n
            };
            piece = &piece[n..];
            self.at += n as u64;
            if segment.is_full() {
                self.filling += 1;
            }
        }
        true
    }

    /// Reads the bytes from `file`, where the first segment's start lies at `start` (see
    /// [`SpanBuf::read_from`]); stops short at the file's end.
    pub fn read_from(&mut self, file: &std::fs::File, start: u64) -> std::io::Result<()> {
        let Some(first) = self.segments.first().map(|s| s.start) else { return Ok(()) };
        for segment in &mut self.segments {
            segment.read_from(file, start + (segment.start - first))?;
            if !segment.is_full() {
                break;
            }
        }
        Ok(())
    }

    /// True once every segment is full.
    pub fn is_full(&self) -> bool {
        self.segments.iter().all(SpanBuf::is_full)
    }

    /// The filled segments, in order.
    pub fn freeze(self) -> Vec<Span> {
        self.segments.into_iter().map(SpanBuf::freeze).collect()
    }
}

/// A request's bytes: `data` (what was asked for, from offset `start` of the file) inside `padded`,
/// which starts at a page boundary of the file and of memory.
#[derive(Clone)]
pub struct Span {
    pub start: u64,
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

    /// Bytes 100..300 and 350..400 of a file, each segment holding its own `Holds`.
    fn two_segments() -> ([Holds; 2], Vec<(std::ops::Range<u64>, Holds)>) {
        let holds: [Holds; 2] = [Arc::new(()), Arc::new(())];
        let plan = vec![(100..300, holds[0].clone()), (350..400, holds[1].clone())];
        (holds, plan)
    }

    fn byte_at(offset: u64) -> u8 {
        (offset % 251) as u8
    }

    #[test]
    fn a_segmented_body_lands_in_its_segments_and_the_bytes_between_are_let_go() {
        let (holds, plan) = two_segments();
        let mut buf = SegmentedBuf::new(&plan);
        drop(plan);
        let body: Vec<u8> = (100..400).map(byte_at).collect();
        for piece in body.chunks(70) {
            assert!(buf.fill(piece));
        }
        assert!(buf.is_full());
        assert!(!buf.fill(&[0]), "past the last segment");
        let spans = buf.freeze();
        let got: Vec<(u64, usize)> = spans.iter().map(|s| (s.start, s.data.len())).collect();
        assert_eq!(got, [(100, 200), (350, 50)]);
        assert!(spans[0].data.iter().zip(100..).all(|(&b, at)| b == byte_at(at)));
        assert!(spans[1].data.iter().zip(350..).all(|(&b, at)| b == byte_at(at)));
        let [first, second] = spans.try_into().ok().unwrap();
        drop(first);
        assert_eq!((Arc::strong_count(&holds[0]), Arc::strong_count(&holds[1])), (1, 2), "each segment holds its own");
        drop(second);
        assert_eq!(Arc::strong_count(&holds[1]), 1);
    }

    #[test]
    fn a_segmented_body_read_from_a_file_skips_the_bytes_between() {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &(0..1_000).map(byte_at).collect::<Vec<_>>()).unwrap();
        let (_holds, plan) = two_segments();
        let mut buf = SegmentedBuf::new(&plan);
        buf.read_from(&f, 100).unwrap();
        assert!(buf.is_full());
        let spans = buf.freeze();
        assert!(spans[1].data.iter().zip(350..).all(|(&b, at)| b == byte_at(at)));
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
