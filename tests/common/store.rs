//! Reaching into a pond's large-file store from tests: which file holds a chunk, damaging it, and
//! counting objects. Goes through `pond::large_files`, so tests never guess the on-disk format.

use std::path::{Path, PathBuf};

use pond::large_files::{Blake3Hash, LargeFileStore};
use pond::layout::PondFile;

/// The file (under `root`) that holds chunk `chunk` of the stored content `data`, and where the
/// chunk's bytes start in it.
pub fn chunk_place(root: &Path, data: &[u8], chunk: usize) -> (PathBuf, u64) {
    let store = LargeFileStore::new(root);
    let reader = store.open(&Blake3Hash::from(blake3::hash(data))).expect("the content is stored");
    let loc = reader.chunk_locs()[chunk].clone();
    (store.path_of(&loc.file), loc.offset)
}

/// Flips one byte inside chunk `chunk` of the stored content `data` (where its object says the
/// chunk's bytes are); returns the file changed.
pub fn corrupt_stored_chunk(root: &Path, data: &[u8], chunk: usize) -> PathBuf {
    let (path, offset) = chunk_place(root, data, chunk);
    let mut bytes = std::fs::read(&path).expect("read the file holding the chunk");
    bytes[offset as usize + 10] ^= 0x55;
    std::fs::write(&path, bytes).expect("write it back");
    path
}

/// The objects (one per stored content; packs not counted) in the store under `root`.
pub fn objects(root: &Path) -> Vec<Blake3Hash> {
    LargeFileStore::new(root).list_objects().expect("list objects")
}

/// Every object and pack in the store under `root`.
pub fn store_files(root: &Path) -> Vec<PondFile> {
    LargeFileStore::new(root).list().expect("list the store")
}

/// Bytes in the files under `root`'s `_large_files/` (objects, packs and anything else the store
/// left there), its `.tmp/` of files being written aside: what the store takes on disk.
pub fn large_files_bytes(root: &Path) -> u64 {
    fn walk(dir: &Path) -> u64 {
        let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
        entries
            .flatten()
            .filter(|e| e.file_name() != pond::layout::STORE_TMP_DIR)
            .map(|e| {
                let m = e.metadata().expect("stat a store file");
                if m.is_dir() { walk(&e.path()) } else { m.len() }
            })
            .sum()
    }
    walk(&root.join(pond::layout::LARGE_FILES_DIR))
}
