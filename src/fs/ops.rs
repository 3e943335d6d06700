//! The POSIX operations of [`PondFs`], one method each: namespace (lookup, create, mkdir, unlink,
//! rename, link, symlink), attributes and xattrs, file data (open, read, write, flush, fsync,
//! release) and directory listing.

use std::sync::Arc;

use super::handles::{Handle, Pinned};
use super::tree::{Inode, check_name};
use super::*;
use crate::oplog::now_ns;
use crate::oplog::schema::{NodeData, NodeKind};

const S_ISGID: u32 = 0o2000;
const S_ISUID: u32 = 0o4000;
/// File capabilities: dropped by any change of the file's content.
const SECURITY_CAPABILITY: &[u8] = b"security.capability";

/// The set-ID bits a change of content by `who` clears, as Linux decides it for ext4
/// (`setattr_should_drop_suidgid`): none for a caller with CAP_FSETID; otherwise set-user-ID, and
/// set-group-ID when the file is group-executable or the caller is not in the file's group.
pub fn setid_bits_to_clear(mode: u32, gid: u32, who: &dyn Credentials) -> u32 {
    let mut clear = mode & S_ISUID;
    if mode & S_ISGID != 0 && (mode & 0o010 != 0 || !who.in_group(gid)) {
        clear |= S_ISGID;
    }
    if clear != 0 && who.may_keep_setid() { 0 } else { clear }
}

impl PondFs {
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, FsError> {
        let mut t = self.lock_tree();
        let ino = t.lookup(parent, name)?;
        let attr = t.node(ino)?.attr(ino);
        self.remember(&mut t, ino);
        Ok(self.for_kernel(attr))
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        let attr = self.lock_tree().node(ino)?.attr(ino);
        Ok(self.for_kernel(attr))
    }

    /// `getattr` asked through open handle `fh` (the kernel does, to learn a file's size while
    /// reading it): a file opened before a view moved answers with the attributes of the version
    /// it reads, so the kernel never cuts its reads at another version's size.
    pub fn getattr_via(&self, ino: u64, fh: Option<u64>) -> Result<Attr, FsError> {
        if let Some(fh) = fh
            && let Ok((_, file, _)) = self.file_handle(fh)
            && let Some(pinned) = &file.lock().pinned
            && pinned.view != self.view.load(std::sync::atomic::Ordering::SeqCst)
        {
            return Ok(Attr { volatile: true, ..pinned.attr.clone() });
        }
        self.getattr(ino)
    }

    /// How read-only handle `fh` may use the kernel's page cache (see [`PageCache`]): always
    /// [`PageCache::Keep`] but in a view that moves.
    pub fn page_cache(&self, fh: u64) -> PageCache {
        match &self.pages {
            Some(pages) => pages.lock().unwrap_or_else(|p| p.into_inner()).decision(fh),
            None => PageCache::Keep,
        }
    }

    pub fn access(&self, ino: u64, _mask: i32) -> Result<(), FsError> {
        self.lock_tree().node(ino).map(|_| ())
    }

    pub fn setattr(&self, ino: u64, req: SetAttr) -> Result<Attr, FsError> {
        self.writable()?;
        if let Some(size) = req.size {
            let kind = self.lock_tree().node(ino)?.data.kind;
            match kind {
                NodeKind::File => {}
                NodeKind::Dir => return Err(FsError::IsDir),
                _ => return Err(FsError::Invalid("truncate of a special file")),
            }
            let handle_file = match req.fh.map(|fh| self.handles.get(fh)) {
                Some(Ok(h)) => match &*h {
                    Handle::File { file, .. } => Some(file.clone()),
                    Handle::Dir { .. } => None,
                },
                _ => None,
            };
            let open_file = handle_file.or_else(|| self.lock_tree().node(ino).ok().and_then(|n| n.open.clone()));
            let truncate = |fs: &Self, s: &mut Session| -> Result<(), FsError> {
                let w = fs.ensure_writer(ino, s)?;
                w.set_len(size)?;
                let len = w.len();
                s.dirty = true;
                fs.set_live(ino, len);
                Ok(())
            };
            match open_file {
                Some(file) => truncate(self, &mut file.lock())?,
                None => self.with_transient_session(ino, truncate)?,
            }
        }
        let now = now_ns();
        let mut t = self.lock_tree();
        let node = t.node_mut(ino)?;
        let d = &mut node.data;
        if let Some(mode) = req.mode {
            d.mode = mode & 0o7777;
        }
        if req.uid.is_some() || req.gid.is_some() {
            if let Some(uid) = req.uid {
                d.uid = uid;
            }
            if let Some(gid) = req.gid {
                d.gid = gid;
            }
            // chown clears set-user-ID and (for group-executable files) set-group-ID, as on Linux.
            if d.kind != NodeKind::Dir && req.mode.is_none() {
                d.mode &= !S_ISUID;
                if d.mode & 0o010 != 0 {
                    d.mode &= !S_ISGID;
                }
            }
        }
        let resolve = |ts: TimeSet| match ts {
            TimeSet::Now => now,
            TimeSet::At(ns) => ns,
        };
        if let Some(a) = req.atime {
            d.atime_ns = resolve(a);
        }
        if let Some(m) = req.mtime {
            d.mtime_ns = resolve(m);
            if let Some(live) = node.live.as_mut() {
                live.mtime_ns = d.mtime_ns;
            }
        }
        d.ctime_ns = now;
        if let Some(live) = node.live.as_mut() {
            live.ctime_ns = now;
        }
        let attr = node.attr(ino);
        t.touch_node(ino);
        drop(t);
        self.changed();
        Ok(attr)
    }

    /// Create a node named `name` in `parent`; `make` fills in its data given the parent's inode.
    fn make_node(
        &self,
        parent: u64,
        name: &[u8],
        make: impl FnOnce(&Inode) -> NodeData,
    ) -> Result<(u64, Attr), FsError> {
        self.writable()?;
        check_name(name)?;
        let now = now_ns();
        let mut t = self.lock_tree();
        let p = t.node(parent)?;
        let dir = p.dir.as_ref().ok_or(FsError::NotDir)?;
        if p.data.nlink == 0 {
            return Err(FsError::NotFound); // parent was removed
        }
        if dir.entries.contains_key(name) {
            return Err(FsError::Exists);
        }
        let mut data = make(p);
        data.atime_ns = now;
        data.mtime_ns = now;
        data.ctime_ns = now;
        let dir = (data.kind == NodeKind::Dir).then(tree::Dir::default);
        let ino = t.alloc_ino();
        t.nodes.insert(ino, Inode { data, dir, open: None, open_count: 0, live: None, lookups: 0 });
        self.remember(&mut t, ino);
        // A new node counts as a changed file in the commit summary.
        t.touch_content(ino);
        t.add_entry(parent, name, ino, now)?;
        let attr = t.node(ino)?.attr(ino);
        drop(t);
        self.changed();
        Ok((ino, attr))
    }

    fn new_node(kind: NodeKind, perm: u32, caller: Caller, parent: &Inode) -> NodeData {
        let mut mode = perm & 0o7777;
        let mut gid = caller.gid;
        if parent.data.mode & S_ISGID != 0 {
            // BSD group semantics under a set-group-ID directory, as Linux does.
            gid = parent.data.gid;
            if kind == NodeKind::Dir {
                mode |= S_ISGID;
            }
        }
        NodeData {
            kind,
            mode,
            uid: caller.uid,
            gid,
            size: 0,
            atime_ns: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            nlink: if kind == NodeKind::Dir { 2 } else { 1 },
            rdev: 0,
            symlink: None,
            xattrs: Vec::new(),
            content: (kind == NodeKind::File).then(empty_content),
        }
    }

    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        kind: NodeKind,
        perm: u32,
        rdev: u64,
        caller: Caller,
    ) -> Result<Attr, FsError> {
        if kind == NodeKind::Dir || kind == NodeKind::Symlink {
            return Err(FsError::Invalid("mknod of a directory or symlink"));
        }
        self.make_node(parent, name, |p| NodeData { rdev, ..Self::new_node(kind, perm, caller, p) }).map(|(_, a)| a)
    }

    pub fn mkdir(&self, parent: u64, name: &[u8], perm: u32, caller: Caller) -> Result<Attr, FsError> {
        self.make_node(parent, name, |p| Self::new_node(NodeKind::Dir, perm, caller, p)).map(|(_, a)| a)
    }

    pub fn symlink(&self, parent: u64, name: &[u8], target: &[u8], caller: Caller) -> Result<Attr, FsError> {
        if target.is_empty() || target.len() > 4096 || target.contains(&0) {
            return Err(if target.len() > 4096 {
                FsError::NameTooLong
            } else {
                FsError::Invalid("bad symlink target")
            });
        }
        self.make_node(parent, name, |p| NodeData {
            size: target.len() as u64,
            symlink: Some(target.to_vec()),
            ..Self::new_node(NodeKind::Symlink, 0o777, caller, p)
        })
        .map(|(_, a)| a)
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let t = self.lock_tree();
        let node = t.node(ino)?;
        node.data.symlink.clone().ok_or(FsError::Invalid("not a symlink"))
    }

    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        perm: u32,
        flags: i32,
        caller: Caller,
    ) -> Result<(Attr, u64), FsError> {
        match self.make_node(parent, name, |p| Self::new_node(NodeKind::File, perm, caller, p)) {
            Ok((ino, attr)) => match self.open_file(ino, flags & !libc::O_TRUNC) {
                Ok(fh) => Ok((attr, fh)),
                Err(e) => {
                    self.forget(ino, 1); // the kernel gets no entry
                    Err(e)
                }
            },
            Err(FsError::Exists) if flags & libc::O_EXCL == 0 => {
                let ino = self.lock_tree().lookup(parent, name)?;
                let fh = self.open_file(ino, flags)?;
                let mut t = self.lock_tree();
                let attr = t.node(ino)?.attr(ino);
                self.remember(&mut t, ino);
                Ok((attr, fh))
            }
            Err(e) => Err(e),
        }
    }

    pub fn open_file(&self, ino: u64, flags: i32) -> Result<u64, FsError> {
        let mode = OpenMode::from_flags(flags);
        if mode.write || mode.truncate {
            self.writable()?;
        }
        let (file, pinned, large) = {
            let mut t = self.lock_tree();
            let node = t.node(ino)?;
            match node.data.kind {
                NodeKind::Dir => return Err(FsError::IsDir),
                NodeKind::File => {}
                _ => return Err(FsError::NotSupported("open of a special file")),
            }
            let large = matches!(node.data.content, Some(Content::Large { .. }));
            // Read-only: the file is read as it is now, whatever version the view moves to.
            let pinned = match (&self.committer, &node.data.content) {
                (None, Some(content)) => Some(Pinned {
                    content: content.clone(),
                    attr: node.attr(ino),
                    view: self.view.load(std::sync::atomic::Ordering::SeqCst),
                }),
                _ => None,
            };
            (self.attach(&mut t, ino)?, pinned, large)
        };
        // A writable session learns where a large file's committed chunks are when the file is
        // opened, not only once it is read: a tool that rebuilds a file beside its old version
        // (rsync opens the old one as its basis, writes a temp file and renames it over) then
        // finds the chunks it repeats already stored, in a session that never read the old file.
        // The reader is the one the first read would open; one that fails is left to that read.
        if large && self.committer.is_some() && !mode.truncate {
            let mut s = file.lock();
            if s.writer.is_none() && s.reader.is_none() {
                match self.content_reader(ino) {
                    Ok(r) => s.reader = Some(r),
                    Err(e) => tracing::debug!(ino, "open could not read the committed content yet: {e}"),
                }
            }
        }
        let content_id = pinned.as_ref().map(|p| (*p.content.hash(), p.attr.size));
        if let Some(pinned) = pinned {
            file.lock().pinned.get_or_insert(pinned);
        }
        let fh = self.handles.insert(Handle::File { ino, file: file.clone(), mode });
        if let (Some(pages), Some(id)) = (&self.pages, content_id) {
            pages.lock().unwrap_or_else(|p| p.into_inner()).open(fh, ino, id);
        }
        if mode.truncate {
            let mut s = file.lock();
            let truncated = self.ensure_writer(ino, &mut s).and_then(|w| Ok(w.set_len(0)?));
            if let Err(e) = truncated {
                drop(s);
                let _ = self.release(fh);
                return Err(e);
            }
            s.dirty = true;
            drop(s);
            self.set_live(ino, 0);
        }
        Ok(fh)
    }

    fn file_handle(&self, fh: u64) -> Result<(u64, Arc<OpenFile>, OpenMode), FsError> {
        match &*self.handles.get(fh)? {
            Handle::File { ino, file, mode } => Ok((*ino, file.clone(), *mode)),
            Handle::Dir { .. } => Err(FsError::IsDir),
        }
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let (ino, file, _) = self.file_handle(fh)?;
        let mut s = file.lock();
        if let Some(w) = s.writer.as_mut() {
            let len = (size as u64).min(w.len().saturating_sub(offset)) as usize;
            let mut buf = vec![0u8; len];
            let mut done = 0;
            while done < len {
                let n = w.read_at(offset + done as u64, &mut buf[done..])?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            buf.truncate(done);
            return Ok(buf);
        }
        let reader = match (&s.reader, &s.pinned) {
            (Some(r), _) => r.clone(),
            (None, Some(pinned)) => {
                let r = self.reader_of(ino, pinned.content.clone(), pinned.attr.size)?;
                s.reader = Some(r.clone());
                r
            }
            (None, None) => {
                let r = self.content_reader(ino)?;
                s.reader = Some(r.clone());
                r
            }
        };
        // Committed content does not change under a reader: concurrent reads of one file (fio
        // jobs, parallel readahead) verify their chunks in parallel, not one at a time.
        drop(s);
        reader.read_at(offset, size)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        self.writable()?;
        let (ino, file, mode) = self.file_handle(fh)?;
        if !mode.write {
            return Err(FsError::BadHandle);
        }
        let mut s = file.lock();
        let w = self.ensure_writer(ino, &mut s)?;
        let at = if mode.append { w.len() } else { offset };
        w.write_at(at, data)?;
        let len = w.len();
        s.dirty = true;
        self.set_live(ino, len);
        Ok(data.len() as u32)
    }

    pub fn flush(&self, fh: u64) -> Result<(), FsError> {
        let (ino, file, _) = self.file_handle(fh)?;
        let mut s = file.lock();
        self.finalize(ino, &mut s)
    }

    pub fn fsync(&self, fh: u64, _datasync: bool) -> Result<(), FsError> {
        let (ino, file, _) = self.file_handle(fh)?;
        {
            let mut s = file.lock();
            self.finalize(ino, &mut s)?;
        }
        self.sync_all()
    }

    /// [`fsync`](Self::fsync) that does not hold the calling thread while the commit runs: the
    /// content becomes the node's version here, then `done` gets the commit's outcome (from the
    /// committer's thread, so it must not block).
    pub fn fsync_then(&self, fh: u64, _datasync: bool, done: commit_queue::Done) {
        let finalized = self.file_handle(fh).and_then(|(ino, file, _)| self.finalize(ino, &mut file.lock()));
        match finalized {
            Ok(()) => self.when_synced(done),
            Err(e) => done(Err(e)),
        }
    }

    /// [`fsyncdir`](Self::fsyncdir) without holding the calling thread, like [`fsync_then`](Self::fsync_then).
    pub fn fsyncdir_then(&self, ino: u64, done: commit_queue::Done) {
        match self.lock_tree().dir(ino) {
            Ok(_) => {}
            Err(e) => return done(Err(e)),
        }
        self.when_synced(done)
    }

    /// Before `who` writes or truncates `ino`, what Linux's `file_remove_privs` does: clear the
    /// set-ID bits [`setid_bits_to_clear`] names, and remove `security.capability` (file
    /// capabilities go with any change of content, whoever makes it). The kernel does this itself
    /// for writes through the page cache and for truncate(2) and ftruncate(2), except that FUSE
    /// keeps set-group-ID on a file that is not group-executable; it leaves direct writes
    /// (`FUSE_WRITE_KILL_SUIDGID`) and open(O_TRUNC) with `FUSE_ATOMIC_O_TRUNC` to the
    /// filesystem. Calling this for every write and truncation gives ext4's outcome on every path.
    pub fn remove_privs(&self, ino: u64, who: &dyn Credentials) -> Result<(), FsError> {
        let (mode, gid) = {
            let t = self.lock_tree();
            let d = &t.node(ino)?.data;
            let capability = d.xattrs.iter().any(|(k, _)| k == SECURITY_CAPABILITY);
            if d.kind != NodeKind::File || (d.mode & (S_ISUID | S_ISGID) == 0 && !capability) {
                return Ok(());
            }
            (d.mode, d.gid)
        };
        // `who` may read /proc: not under the tree lock.
        let clear = if mode & (S_ISUID | S_ISGID) != 0 { setid_bits_to_clear(mode, gid, who) } else { 0 };
        self.writable()?;
        let now = now_ns();
        let mut t = self.lock_tree();
        let node = t.node_mut(ino)?;
        let d = &mut node.data;
        let xattrs = d.xattrs.len();
        d.xattrs.retain(|(k, _)| k != SECURITY_CAPABILITY);
        if d.mode & clear == 0 && d.xattrs.len() == xattrs {
            return Ok(());
        }
        d.mode &= !clear;
        d.ctime_ns = now;
        if let Some(live) = node.live.as_mut() {
            live.ctime_ns = now;
        }
        t.touch_node(ino);
        drop(t);
        self.changed();
        Ok(())
    }

    pub fn release(&self, fh: u64) -> Result<(), FsError> {
        let handle = self.handles.remove(fh)?;
        let Handle::File { ino, file, .. } = &*handle else { return Ok(()) };
        let result = {
            let mut s = file.lock();
            self.finalize(*ino, &mut s)
        };
        if let Err(e) = &result {
            tracing::error!(ino, "release could not save the file's last changes: {e}");
        }
        if let Some(pages) = &self.pages {
            pages.lock().unwrap_or_else(|p| p.into_inner()).release(fh);
        }
        self.detach(*ino, file);
        result
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> Result<(), FsError> {
        self.writable()?;
        let now = now_ns();
        let mut t = self.lock_tree();
        let ino = t.lookup(parent, name)?;
        if t.node(ino)?.dir.is_some() {
            return Err(FsError::IsDir);
        }
        t.remove_entry(parent, name, now)?;
        t.drop_link(ino, now)?;
        drop(t);
        self.changed();
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> Result<(), FsError> {
        self.writable()?;
        if name == b"." {
            return Err(FsError::Invalid("rmdir of ."));
        }
        let now = now_ns();
        let mut t = self.lock_tree();
        let ino = t.lookup(parent, name)?;
        if name == b".." || ino == crate::oplog::ROOT_INO {
            return Err(FsError::NotEmpty);
        }
        if !t.dir(ino)?.entries.is_empty() {
            return Err(FsError::NotEmpty);
        }
        t.remove_entry(parent, name, now)?;
        t.drop_link(ino, now)?;
        drop(t);
        self.changed();
        Ok(())
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        mode: RenameMode,
    ) -> Result<(), FsError> {
        self.writable()?;
        check_name(new_name)?;
        let now = now_ns();
        let mut t = self.lock_tree();
        if name == b"." || name == b".." {
            return Err(FsError::Invalid("rename of . or .."));
        }
        let src = t.lookup(parent, name)?;
        t.dir(new_parent)?;
        if t.node(new_parent)?.data.nlink == 0 {
            return Err(FsError::NotFound); // a removed directory the kernel still holds
        }
        let src_is_dir = t.node(src)?.dir.is_some();
        let dst = t.dir(new_parent)?.entries.get(new_name).copied();
        // A directory cannot move into itself or below itself.
        if src_is_dir && t.is_ancestor(src, new_parent) {
            return Err(FsError::Invalid("cannot move a directory into itself"));
        }
        match (mode, dst) {
            (RenameMode::NoReplace, Some(_)) => return Err(FsError::Exists),
            (RenameMode::Exchange, None) => return Err(FsError::NotFound),
            (RenameMode::Exchange, Some(dst)) => {
                if t.node(dst)?.dir.is_some() && t.is_ancestor(dst, parent) {
                    return Err(FsError::Invalid("cannot move a directory into itself"));
                }
                if src == dst {
                    return Ok(());
                }
                t.remove_entry(parent, name, now)?;
                t.remove_entry(new_parent, new_name, now)?;
                t.add_entry(new_parent, new_name, src, now)?;
                t.add_entry(parent, name, dst, now)?;
                for ino in [src, dst] {
                    t.node_mut(ino)?.data.ctime_ns = now;
                    t.touch_node(ino);
                }
                drop(t);
                self.changed();
                return Ok(());
            }
            (_, Some(dst)) => {
                if dst == src {
                    return Ok(()); // two names of one inode: POSIX says do nothing
                }
                let dst_is_dir = t.node(dst)?.dir.is_some();
                match (src_is_dir, dst_is_dir) {
                    (true, false) => return Err(FsError::NotDir),
                    (false, true) => return Err(FsError::IsDir),
                    (true, true) if !t.dir(dst)?.entries.is_empty() => return Err(FsError::NotEmpty),
                    _ => {}
                }
                t.remove_entry(new_parent, new_name, now)?;
                t.drop_link(dst, now)?;
            }
            (_, None) => {}
        }
        t.remove_entry(parent, name, now)?;
        t.add_entry(new_parent, new_name, src, now)?;
        t.node_mut(src)?.data.ctime_ns = now;
        t.touch_node(src);
        drop(t);
        self.changed();
        Ok(())
    }

    pub fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> Result<Attr, FsError> {
        self.writable()?;
        check_name(new_name)?;
        let now = now_ns();
        let mut t = self.lock_tree();
        let node = t.node(ino)?;
        if node.dir.is_some() {
            return Err(FsError::NotPermitted);
        }
        if node.data.nlink == 0 {
            return Err(FsError::NotFound);
        }
        if node.data.nlink >= 65_000 {
            return Err(FsError::TooManyLinks);
        }
        if t.dir(new_parent)?.entries.contains_key(new_name) {
            return Err(FsError::Exists);
        }
        if t.node(new_parent)?.data.nlink == 0 {
            return Err(FsError::NotFound); // a removed directory the kernel still holds
        }
        let node = t.node_mut(ino)?;
        node.data.nlink += 1;
        node.data.ctime_ns = now;
        t.touch_node(ino);
        t.add_entry(new_parent, new_name, ino, now)?;
        let attr = t.node(ino)?.attr(ino);
        self.remember(&mut t, ino);
        drop(t);
        self.changed();
        Ok(attr)
    }

    pub fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let t = self.lock_tree();
        let dir = t.dir(ino)?;
        let mut entries = Vec::with_capacity(dir.entries.len() + 2);
        entries.push(DirEntry { ino, kind: NodeKind::Dir, name: b".".to_vec(), offset: 1 });
        entries.push(DirEntry { ino: dir.parent, kind: NodeKind::Dir, name: b"..".to_vec(), offset: 2 });
        for (name, &child) in &dir.entries {
            let kind = t.nodes.get(&child).map(|n| n.data.kind).unwrap_or(NodeKind::File);
            let offset = entries.len() as i64 + 1;
            entries.push(DirEntry { ino: child, kind, name: name.clone(), offset });
        }
        drop(t);
        Ok(self.handles.insert(Handle::Dir { ino, entries: Arc::new(entries) }))
    }

    /// The listed directory and its snapshot.
    fn dir_entries(&self, fh: u64) -> Result<(u64, Arc<Vec<DirEntry>>), FsError> {
        match &*self.handles.get(fh)? {
            Handle::Dir { ino, entries } => Ok((*ino, entries.clone())),
            Handle::File { .. } => Err(FsError::NotDir),
        }
    }

    pub fn readdir(&self, fh: u64, offset: i64) -> Result<Vec<DirEntry>, FsError> {
        let (_, entries) = self.dir_entries(fh)?;
        let start = usize::try_from(offset).unwrap_or(0).min(entries.len());
        Ok(entries[start..].to_vec())
    }

    /// The snapshot's entries from `offset`, each with the attributes of what its name holds *now*.
    /// The kernel makes a dentry of every entry given with attributes, so a name renamed away or
    /// removed since opendir is left out, and a name that now holds another inode gives that one: a
    /// stale entry would leave a dentry by which `open(O_CREAT)` of the old name reaches — and
    /// truncates — the file it was renamed onto (`ls` racing a save-by-rename). Each entry but `.`
    /// and `..` counts as a kernel reference: the caller [`forget`](PondFs::forget)s those it could
    /// not pass on.
    pub fn readdirplus(&self, fh: u64, offset: i64) -> Result<Vec<(DirEntry, Attr)>, FsError> {
        let (dir, _) = self.dir_entries(fh)?;
        let entries = self.readdir(fh, offset)?;
        let mut t = self.lock_tree();
        let mut out = Vec::with_capacity(entries.len());
        for mut e in entries {
            let dots = e.name == b"." || e.name == b"..";
            if !dots {
                match t.dir(dir).ok().and_then(|d| d.entries.get(&e.name)) {
                    Some(&now) => e.ino = now,
                    None => continue,
                }
            }
            let Some(attr) = t.nodes.get(&e.ino).map(|n| self.for_kernel(n.attr(e.ino))) else { continue };
            if !dots {
                self.remember(&mut t, e.ino);
            }
            e.kind = attr.kind;
            out.push((e, attr));
        }
        Ok(out)
    }

    pub fn releasedir(&self, fh: u64) -> Result<(), FsError> {
        self.handles.remove(fh).map(|_| ())
    }

    pub fn fsyncdir(&self, ino: u64) -> Result<(), FsError> {
        self.lock_tree().dir(ino)?;
        self.sync_all()
    }

    pub fn statfs(&self) -> Result<StatFs, FsError> {
        let v = nix::sys::statvfs::statvfs(self.root()).map_err(|e| FsError::Io(e.to_string()))?;
        let files = self.lock_tree().node_count();
        Ok(StatFs {
            blocks: v.blocks() as u64,
            bfree: v.blocks_free() as u64,
            bavail: v.blocks_available() as u64,
            files,
            ffree: (v.files_available() as u64).max(1 << 20),
            bsize: v.block_size() as u32,
            namelen: tree::NAME_MAX as u32,
            frsize: v.fragment_size() as u32,
        })
    }

    fn check_xattr_name(name: &[u8]) -> Result<(), FsError> {
        if name.is_empty() || name.len() > 255 {
            return Err(if name.is_empty() { FsError::Invalid("empty xattr name") } else { FsError::Range(255) });
        }
        // POSIX ACLs live in system.* attributes; without kernel ACL support for this mount they
        // would be stored but not enforced, so refuse them and let tools fall back to the mode bits.
        if name.starts_with(b"system.") {
            return Err(FsError::NotSupported("system.* attributes (POSIX ACLs)"));
        }
        Ok(())
    }

    /// An attribute's value. POSIX ACLs (`system.*`) are not supported, so asking for one says so
    /// (EOPNOTSUPP, as setting one does); so does asking for an SELinux label that was never set,
    /// as on a filesystem without labels. Tools take that answer for the whole mount — `ls -l`
    /// stops asking after the first file — where "no such attribute" (ENODATA) cost two round
    /// trips to the daemon for every file listed.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, FsError> {
        let t = self.lock_tree();
        let node = t.node(ino)?;
        if name.starts_with(b"system.") {
            return Err(FsError::NotSupported("system.* attributes (POSIX ACLs)"));
        }
        match node.data.xattrs.iter().find(|(k, _)| k == name) {
            Some((_, v)) => Ok(v.clone()),
            None if name == b"security.selinux" => Err(FsError::NotSupported("SELinux labels")),
            None => Err(FsError::NoXattr),
        }
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let t = self.lock_tree();
        let mut out = Vec::new();
        for (k, _) in &t.node(ino)?.data.xattrs {
            out.extend_from_slice(k);
            out.push(0);
        }
        Ok(out)
    }

    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], how: XattrSet) -> Result<(), FsError> {
        self.writable()?;
        Self::check_xattr_name(name)?;
        if value.len() > 64 * 1024 {
            return Err(FsError::Range(64 * 1024));
        }
        let mut t = self.lock_tree();
        let d = &mut t.node_mut(ino)?.data;
        match (d.xattrs.iter_mut().find(|(k, _)| k == name), how) {
            (Some(_), XattrSet::Create) => return Err(FsError::Exists),
            (None, XattrSet::Replace) => return Err(FsError::NoXattr),
            (Some((_, v)), _) => *v = value.to_vec(),
            (None, _) => d.xattrs.push((name.to_vec(), value.to_vec())),
        }
        d.ctime_ns = now_ns();
        t.touch_node(ino);
        drop(t);
        self.changed();
        Ok(())
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> Result<(), FsError> {
        self.writable()?;
        let mut t = self.lock_tree();
        let d = &mut t.node_mut(ino)?.data;
        let before = d.xattrs.len();
        d.xattrs.retain(|(k, _)| k != name);
        if d.xattrs.len() == before {
            return Err(FsError::NoXattr);
        }
        d.ctime_ns = now_ns();
        t.touch_node(ino);
        drop(t);
        self.changed();
        Ok(())
    }
}
