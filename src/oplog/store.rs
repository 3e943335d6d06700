//! The object store delta-rs reads and writes a pond's table through: object_store's local file
//! system with two duties added for the Delta log's checkpoints, which delta-rs writes and reads
//! itself (pond only asks for one).
//!
//! **Durable checkpoints.** `LocalFileSystem` writes a file to a staging name and renames it, but
//! never fsyncs: after a power cut, a checkpoint or `_last_checkpoint` written just before may be
//! empty or torn. So every checkpoint and `_last_checkpoint` put through here is fsynced, with its
//! directory, before the put returns; delta-rs writes the checkpoint before the hint that names
//! it, so the hint never reaches the disk before its checkpoint does.
//!
//! **Hidden checkpoints.** A checkpoint that does not read (one torn before this fix, or damaged
//! since) would make every open fail, read-only ones included, though it is derived data: the JSON
//! entries say the same. [`super::Oplog::open`] checks the checkpoints a reader would use and names
//! the damaged ones here; they are left out of listings and reads, so delta-rs takes the next older
//! checkpoint or replays the JSON log. `_last_checkpoint` is left out too while it does not parse
//! or names a checkpoint that is hidden or absent (delta-rs then lists the log). Nothing on disk
//! changes: read-only opens stay read-only, and `pond verify` still reports the damage.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, GetResult, ListResult, ObjectMeta, ObjectStore, PutOptions, PutPayload, PutResult};

use crate::layout::{LAST_CHECKPOINT, LOG_DIR, any_checkpoint_version, checkpoint_name, read_last_checkpoint};
use crate::store_delegate::{StoreFuture, delegate_object_store};

/// The store one pond's table is opened through (see the module doc).
#[derive(Debug)]
pub(crate) struct PondStore {
    inner: LocalFileSystem,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// The pond's root.
    root: PathBuf,
    /// Names in `_delta_log` to hide: checkpoint files that do not read.
    hidden: BTreeSet<String>,
}

impl PondStore {
    /// The store for the pond at `root`, hiding the checkpoint files named in `hidden`.
    pub(crate) fn new(root: &Path, hidden: BTreeSet<String>) -> PondStore {
        PondStore { inner: LocalFileSystem::new(), shared: Arc::new(Shared { root: root.to_path_buf(), hidden }) }
    }
}

impl std::fmt::Display for PondStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PondStore({})", self.shared.root.display())
    }
}

/// The name of `location` if it is a file in a `_delta_log` directory. The store serves one
/// table, whose data files are at its top level, so that is this table's log.
fn log_file_name(location: &StorePath) -> Option<String> {
    let parts: Vec<_> = location.parts().collect();
    match parts.as_slice() {
        [.., dir, name] if dir.as_ref() == LOG_DIR => Some(name.as_ref().to_string()),
        _ => None,
    }
}

impl Shared {
    fn hides(&self, location: &StorePath) -> bool {
        let Some(name) = log_file_name(location) else { return false };
        if name == LAST_CHECKPOINT {
            return hint_unusable(&self.root, &self.hidden);
        }
        self.hidden.contains(&name)
    }

    fn not_found(location: &StorePath) -> object_store::Error {
        object_store::Error::NotFound {
            path: location.to_string(),
            source: "a damaged checkpoint, or a hint naming one, left out: the JSON log is read instead".into(),
        }
    }

    /// After a checkpoint or `_last_checkpoint` landed at `location`: fsync it and `_delta_log`.
    fn make_durable(&self, location: &StorePath) -> object_store::Result<()> {
        let Some(name) = log_file_name(location) else { return Ok(()) };
        if name != LAST_CHECKPOINT && any_checkpoint_version(&name).is_none() {
            return Ok(()); // log entries are fsynced by the commit that writes them
        }
        let log = self.root.join(LOG_DIR);
        let sync = |p: &Path| std::fs::File::open(p).and_then(|f| f.sync_all());
        sync(&log.join(&name))
            .and_then(|()| sync(&log))
            .map_err(|e| object_store::Error::Generic { store: "pond", source: Box::new(e) })
    }
}

/// The pond at `root` has a `_last_checkpoint` that does not parse, or names a checkpoint that is
/// absent or in `hidden`.
pub(crate) fn hint_unusable(root: &Path, hidden: &BTreeSet<String>) -> bool {
    let log = root.join(LOG_DIR);
    match read_last_checkpoint(root) {
        None => log.join(LAST_CHECKPOINT).exists(),
        Some(v) => {
            let name = checkpoint_name(v);
            hidden.contains(&name) || !log.join(&name).exists()
        }
    }
}

// The trait is declared with #[async_trait]; these are its methods written out as that macro
// expands them (pond does not depend on async-trait itself).
impl ObjectStore for PondStore {
    fn put_opts<'life0, 'life1, 'async_trait>(
        &'life0 self,
        location: &'life1 StorePath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> StoreFuture<'async_trait, PutResult>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let put = self.inner.put_opts(location, payload, opts).await?;
            let (shared, location) = (self.shared.clone(), location.clone());
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => rt
                    .spawn_blocking(move || shared.make_durable(&location))
                    .await
                    .map_err(|e| object_store::Error::JoinError { source: e })??,
                // Driven outside tokio: fsync here, as LocalFileSystem writes here too.
                Err(_) => shared.make_durable(&location)?,
            }
            Ok(put)
        })
    }

    fn get_opts<'life0, 'life1, 'async_trait>(
        &'life0 self,
        location: &'life1 StorePath,
        options: GetOptions,
    ) -> StoreFuture<'async_trait, GetResult>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        if self.shared.hides(location) {
            let e = Shared::not_found(location);
            return Box::pin(async move { Err(e) });
        }
        self.inner.get_opts(location, options)
    }

    fn get_ranges<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        location: &'life1 StorePath,
        ranges: &'life2 [Range<u64>],
    ) -> StoreFuture<'async_trait, Vec<Bytes>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        if self.shared.hides(location) {
            let e = Shared::not_found(location);
            return Box::pin(async move { Err(e) });
        }
        self.inner.get_ranges(location, ranges)
    }

    fn list(&self, prefix: Option<&StorePath>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let shared = self.shared.clone();
        self.inner
            .list(prefix)
            .filter(move |m| std::future::ready(!m.as_ref().is_ok_and(|m| shared.hides(&m.location))))
            .boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&StorePath>,
        offset: &StorePath,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let shared = self.shared.clone();
        self.inner
            .list_with_offset(prefix, offset)
            .filter(move |m| std::future::ready(!m.as_ref().is_ok_and(|m| shared.hides(&m.location))))
            .boxed()
    }

    fn list_with_delimiter<'life0, 'life1, 'async_trait>(
        &'life0 self,
        prefix: Option<&'life1 StorePath>,
    ) -> StoreFuture<'async_trait, ListResult>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let mut listed = self.inner.list_with_delimiter(prefix).await?;
            listed.objects.retain(|m| !self.shared.hides(&m.location));
            Ok(listed)
        })
    }

    delegate_object_store!(inner: put_multipart_opts, delete_stream, copy_opts, rename_opts);
}
