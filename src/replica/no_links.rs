//! [`NoLinkStore`]: a directory remote as an object store that reads no file through a link.
//! object_store's `LocalFileSystem` opens `root/<path>` following every symlink on the way and
//! blocks on a FIFO, so a replica directory that someone else can write into could make a reader
//! (the remote mount, which reads byte ranges through the store) read files outside it. Every read
//! here opens the file as [`local_dir::open_file`] does (no link anywhere below the root, regular
//! files only) and serves the bytes from that descriptor; listing and writes go to
//! `LocalFileSystem` (what a listing names is only read through here).

use std::fmt;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::SystemTime;

use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{Attributes, GetOptions, GetResult, GetResultPayload, ObjectMeta, ObjectStore};

use super::local_dir;
use crate::store_delegate::{StoreFuture, delegate_object_store};

/// A directory remote's files, read without following links (see the module doc).
#[derive(Debug)]
pub struct NoLinkStore {
    root: PathBuf,
    inner: LocalFileSystem,
}

impl NoLinkStore {
    /// The store over `root`, an existing directory (its own path may hold links: it is the user's).
    pub fn new(root: PathBuf) -> object_store::Result<NoLinkStore> {
        let inner = LocalFileSystem::new_with_prefix(&root)?;
        Ok(NoLinkStore { root, inner })
    }

    /// Opens `location` as `local_dir::open_file` does and describes it as `LocalFileSystem` would
    /// (the same ETag, so a listing's and a read's agree).
    fn open(&self, location: &StorePath) -> object_store::Result<(std::fs::File, ObjectMeta)> {
        let file = local_dir::open_file(&self.root, location.as_ref()).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                object_store::Error::NotFound { path: location.to_string(), source: Box::new(e) }
            }
            _ => object_store::Error::PermissionDenied { path: location.to_string(), source: Box::new(e) },
        })?;
        let md = file
            .metadata()
            .map_err(|e| object_store::Error::Generic { store: "pond directory remote", source: Box::new(e) })?;
        Ok((file, describe(location, &md)))
    }
}

/// `LocalFileSystem`'s description of a file: its ETag is `<inode>-<mtime µs>-<size>` in hex.
fn describe(location: &StorePath, md: &std::fs::Metadata) -> ObjectMeta {
    let modified = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let micros = modified.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_micros();
    ObjectMeta {
        location: location.clone(),
        last_modified: modified.into(),
        size: md.len(),
        e_tag: Some(format!("{:x}-{:x}-{:x}", md.ino(), micros, md.len())),
        version: None,
    }
}

impl fmt::Display for NoLinkStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NoLinkStore({})", self.root.display())
    }
}

// Written out as #[async_trait] expands it (see store_delegate).
impl ObjectStore for NoLinkStore {
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
        Box::pin(async move {
            let (file, meta) = self.open(location)?;
            options.check_preconditions(&meta)?;
            let range: Range<u64> = match &options.range {
                Some(r) => r.as_range(meta.size).map_err(|e| object_store::Error::Generic {
                    store: "pond directory remote",
                    source: Box::new(e),
                })?,
                None => 0..meta.size,
            };
            let path = self.root.join(location.as_ref());
            Ok(GetResult {
                payload: GetResultPayload::File(file, path),
                meta,
                range,
                attributes: Attributes::default(),
            })
        })
    }

    delegate_object_store!(
        inner: put_opts,
        put_multipart_opts,
        delete_stream,
        list,
        list_with_offset,
        list_with_delimiter,
        copy_opts,
        rename_opts
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::{GetRange, ObjectStoreExt};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn a_file_reads_as_local_file_system_reads_it_with_the_same_description() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("_delta_log")).unwrap();
        std::fs::write(dir.path().join("_delta_log/00000000000000000000.json"), b"0123456789").unwrap();
        let store = NoLinkStore::new(dir.path().to_path_buf()).unwrap();
        let plain = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let loc = StorePath::from("_delta_log/00000000000000000000.json");
        rt().block_on(async {
            let listed: Vec<ObjectMeta> = store.list(None).try_collect().await.unwrap();
            let ours = store.get_opts(&loc, GetOptions::default()).await.unwrap();
            let theirs = plain.get_opts(&loc, GetOptions::default()).await.unwrap();
            assert_eq!(ours.meta, theirs.meta, "a read describes a file as LocalFileSystem does");
            assert_eq!(listed, vec![ours.meta.clone()], "and as its listing does");
            assert_eq!(ours.bytes().await.unwrap().as_ref(), b"0123456789");
            let opts = GetOptions { range: Some(GetRange::Bounded(2..5)), ..Default::default() };
            assert_eq!(store.get_opts(&loc, opts).await.unwrap().bytes().await.unwrap().as_ref(), b"234");
            let missing = store.get(&StorePath::from("_delta_log/x.json")).await.unwrap_err();
            assert!(matches!(missing, object_store::Error::NotFound { .. }), "{missing}");
        });
    }

    #[test]
    fn links_and_fifos_are_refused_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        std::fs::create_dir(outside.path().join("dir")).unwrap();
        std::fs::write(outside.path().join("dir/x.parquet"), b"secret").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("a.parquet")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("dir"), dir.path().join("_large_files")).unwrap();
        nix::unistd::mkfifo(&dir.path().join("f.parquet"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let store = NoLinkStore::new(dir.path().to_path_buf()).unwrap();
        rt().block_on(async {
            for name in ["a.parquet", "_large_files/x.parquet", "f.parquet"] {
                let err = store.get(&StorePath::from(name)).await.expect_err(name);
                assert!(matches!(err, object_store::Error::PermissionDenied { .. }), "{name}: {err}");
            }
        });
    }
}
