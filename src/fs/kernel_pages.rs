//! What the kernel's page cache may hold of each file of a view that moves to new versions
//! ([`super::PondFs::advance_to`]), and so how each read-only open may use it.
//!
//! The kernel caches a file's pages per inode, not per open file, while pond keeps each open file
//! at the version it was opened at. An inode number names the same file in every version, so once
//! its content changes, the pages of two contents could meet in one cache. The rule that keeps them
//! apart: the handles that use the page cache of an inode all read the same content, and an open
//! learns whether the pages already there are of its content:
//! - no cached handle reads another content, and the pages are of this one: [`PageCache::Keep`];
//! - no cached handle reads another content, but the pages may be of another: [`PageCache::Refill`]
//!   (the kernel drops the inode's pages at such an open);
//! - a handle opened before the switch still reads the old content through the cache:
//!   [`PageCache::Bypass`] (this open reads around the cache, as direct I/O).
//!
//! A view that never moves keeps every page ([`PageCache::Keep`]) and tracks nothing.

use std::collections::HashMap;

use crate::large_files::Blake3Hash;

/// How one read-only open may use the kernel's page cache of its inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageCache {
    /// The cached pages are this open's content: keep them across opens.
    Keep,
    /// Drop the inode's cached pages at this open, then cache this content.
    Refill,
    /// Read around the page cache: another content is being read through it.
    Bypass,
}

/// The content a handle reads: the hash and the size (together, one version of a file's bytes).
pub(super) type ContentId = (Blake3Hash, u64);

/// One inode's page cache as far as pond knows it.
#[derive(Debug)]
struct Pages {
    /// The content whose pages the kernel may hold.
    content: ContentId,
    /// Open handles that read through the cache (and so hold `content` there).
    cached: u32,
    /// The view moved past `content` while `cached` handles read it: the kernel's attributes
    /// (its idea of the size, which caps cached reads) go stale for one version or the other.
    superseded: bool,
}

/// Per-inode page-cache state and each handle's decision, for a view that moves.
#[derive(Debug, Default)]
pub(super) struct KernelPages {
    inodes: HashMap<u64, Pages>,
    /// Open handles: inode and whether the handle counts in its inode's `cached`.
    handles: HashMap<u64, (u64, PageCache)>,
}

impl KernelPages {
    /// Decide for handle `fh`, just opened on `ino` reading `content`.
    pub fn open(&mut self, fh: u64, ino: u64, content: ContentId) -> PageCache {
        let decision = match self.inodes.get_mut(&ino) {
            None => {
                self.inodes.insert(ino, Pages { content, cached: 1, superseded: false });
                PageCache::Keep
            }
            Some(p) if p.content == content => {
                p.cached += 1;
                PageCache::Keep
            }
            Some(p) if p.cached > 0 => PageCache::Bypass,
            Some(p) => {
                *p = Pages { content, cached: 1, superseded: false };
                PageCache::Refill
            }
        };
        self.handles.insert(fh, (ino, decision));
        decision
    }

    /// The decision made for `fh` (`Keep` for a handle not tracked).
    pub fn decision(&self, fh: u64) -> PageCache {
        self.handles.get(&fh).map_or(PageCache::Keep, |(_, d)| *d)
    }

    /// Handle `fh` was released.
    pub fn release(&mut self, fh: u64) {
        if let Some((ino, decision)) = self.handles.remove(&fh)
            && decision != PageCache::Bypass
            && let Some(p) = self.inodes.get_mut(&ino)
        {
            p.cached = p.cached.saturating_sub(1);
            if p.cached == 0 {
                p.superseded = false;
            }
        }
    }

    /// True while files of `ino` are open, through the cache, at a version the view moved past:
    /// its attributes must not be cached by the kernel, so that each reader's reads past the
    /// other version's size ask again, through its handle (see `PondFs::getattr_via`).
    pub fn superseded(&self, ino: u64) -> bool {
        self.inodes.get(&ino).is_some_and(|p| p.superseded)
    }

    /// The view moved and `ino`'s content changed: true when its cached pages can be dropped now
    /// (no handle reads them; the state is forgotten, since the kernel will hold nothing), false
    /// when handles of the old content still read through the cache (the next opens bypass it).
    pub fn content_changed(&mut self, ino: u64) -> bool {
        match self.inodes.get_mut(&ino) {
            Some(p) if p.cached > 0 => {
                p.superseded = true;
                false
            }
            _ => {
                self.inodes.remove(&ino);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ContentId {
        (Blake3Hash([n; 32]), u64::from(n))
    }

    #[test]
    fn two_contents_never_share_the_page_cache() {
        let mut k = KernelPages::default();
        assert_eq!(k.open(1, 7, id(1)), PageCache::Keep);
        assert_eq!(k.open(2, 7, id(1)), PageCache::Keep, "the same content keeps the pages");
        // The view moved while handles 1 and 2 read the old content through the cache.
        assert!(!k.content_changed(7));
        assert!(k.superseded(7), "the kernel may not cache the attributes while both versions are read");
        assert_eq!(k.open(3, 7, id(2)), PageCache::Bypass, "the new content reads around the old pages");
        k.release(1);
        assert_eq!(k.open(4, 7, id(2)), PageCache::Bypass);
        k.release(2);
        assert!(!k.superseded(7));
        assert_eq!(k.open(5, 7, id(2)), PageCache::Refill, "the old content's last cached handle is gone");
        assert_eq!(k.open(6, 7, id(2)), PageCache::Keep);
        assert_eq!(k.decision(5), PageCache::Refill);
        assert_eq!(k.decision(99), PageCache::Keep);
    }

    #[test]
    fn a_change_with_no_cached_reader_drops_the_pages_at_once() {
        let mut k = KernelPages::default();
        assert_eq!(k.open(1, 7, id(1)), PageCache::Keep);
        k.release(1);
        assert!(k.content_changed(7));
        assert_eq!(k.open(2, 7, id(2)), PageCache::Keep, "nothing of the old content is cached any more");
    }
}
