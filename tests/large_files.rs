//! Tests of the large-file store (`pond::large_files`) and the hybrid writer
//! (`pond::fs::hybrid_writer`): chunk hashes, manifests over packs, storage that follows change,
//! dedup, corruption and tampering. Sizes are written relative to `LARGE_FILE_THRESHOLD` and
//! `CHUNK_SIZE`; byte comparisons report the first differing offset instead of dumping buffers.

use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, BinaryArray, Int32Array, Int64Array, RecordBatch, StringArray};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::KeyValue;
use pond::config::{CHUNK_SIZE, LARGE_FILE_THRESHOLD, Threshold};
use pond::fs::hybrid_writer::{Finished, HybridWriter};
use pond::large_files::StoreError as E;
use pond::large_files::format::{COL_DATA, PACK_ROW_GROUP_CHUNKS, chunk_schema, chunk_writer_properties};
use pond::large_files::*;
use pond::layout::{PondFile, STORE_TMP_DIR};
use proptest::prelude::{Just, ProptestConfig, Strategy, any, prop_oneof, proptest};

use crate::common::{assert_same_bytes, pattern};

const C: usize = CHUNK_SIZE as usize;
const T: usize = LARGE_FILE_THRESHOLD as usize;

fn b3(data: &[u8]) -> Blake3Hash {
    Blake3Hash::from(blake3::hash(data))
}

fn store() -> (tempfile::TempDir, LargeFileStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LargeFileStore::new(dir.path());
    store.create_dirs().expect("create_dirs");
    (dir, store)
}

fn writer(store: &LargeFileStore) -> HybridWriter {
    HybridWriter::new(Threshold::default(), store.clone())
}

/// Stores `data` and opens it.
fn put_open(store: &LargeFileStore, data: &[u8]) -> (PutOutcome, ObjectReader) {
    let out = store.put_bytes(data).expect("put");
    (out.clone(), store.open(&out.hash).expect("open"))
}

fn open_err(store: &LargeFileStore, hash: &Blake3Hash) -> StoreError {
    store.open(hash).expect_err("open must fail")
}

fn read_all(r: &ObjectReader) -> Vec<u8> {
    let mut out = vec![0u8; r.size() as usize];
    assert_eq!(r.read_at(0, &mut out).expect("read_at") as u64, r.size());
    out
}

fn writer_content(w: &mut HybridWriter) -> Vec<u8> {
    let mut out = vec![0u8; w.len() as usize];
    assert_eq!(w.read_at(0, &mut out).expect("read_at") as u64, w.len());
    out
}

fn tmp_entries(store: &LargeFileStore) -> usize {
    fs::read_dir(store.dir().join(STORE_TMP_DIR)).map(|d| d.count()).unwrap_or(0)
}

/// Bytes the store holds on disk (objects and packs).
fn stored_bytes(store: &LargeFileStore) -> u64 {
    store.list().expect("list").iter().map(|f| fs::metadata(store.path_of(f)).expect("stat").len()).sum()
}

fn packs(store: &LargeFileStore) -> Vec<PondFile> {
    store.list().expect("list").into_iter().filter(|f| matches!(f, PondFile::Pack(_))).collect()
}

/// Checks what `finish` produced against the expected content, and reads large objects back
/// through a fresh store (nothing cached).
fn check_finished(f: &Finished, want: &[u8], store: &LargeFileStore, what: &str) {
    let inline = Threshold::default().is_inline(want.len() as u64);
    match f {
        Finished::Inline { bytes, hash } => {
            assert!(inline, "{what}: inline but {} bytes", want.len());
            assert_same_bytes(bytes, want, what);
            assert_eq!(*hash, b3(want), "{what}: hash");
        }
        Finished::Large(out) => {
            assert!(!inline, "{what}: large but {} bytes", want.len());
            assert_eq!(out.hash, b3(want), "{what}");
            assert_eq!(out.size, want.len() as u64);
            store.make_durable().expect("make_durable");
            let fresh = LargeFileStore::new(store.dir().parent().expect("root"));
            let r = fresh.open(&out.hash).expect("open");
            assert_same_bytes(&read_all(&r), want, what);
            r.verify(None).expect("verify");
        }
    }
}

#[test]
fn chunk_hashes_merge_into_the_b3sum_for_many_sizes() {
    for size in [0, 1, 1023, 1024, 1025, C - 1, C, C + 1, 2 * C, 2 * C + 1, 3 * C + 7, 5 * C, 17 * C + 1] {
        let data = pattern(size, size as u64);
        let n = chunk_count(size as u64);
        let hashes: Vec<[u8; 32]> = (0..n)
            .map(|i| chunk_hash(i, n, &data[(i as usize * C).min(size)..((i as usize + 1) * C).min(size)]))
            .collect();
        assert_eq!(root_from_chunk_hashes(&hashes), Some(b3(&data)), "size {size}");
        if n > 1 {
            // A chunking value depends on the bytes and the place only, not on the length.
            assert_eq!(hashes[0], chunk_cv(0, &data[..C]), "size {size}");
        }
    }
    assert_eq!(root_from_chunk_hashes(&[]), None);
}

#[test]
fn hex_forms_match_b3sum() {
    let data = pattern(3 * C + 5, 42);
    let h = b3(&data);
    assert_eq!(h.to_string(), blake3::hash(&data).to_hex().as_str());
    assert_eq!(Blake3Hash::from_hex(&h.to_hex()), Some(h));
    assert_eq!(Blake3Hash::from_hex("xyz"), None);
    assert_eq!(Blake3Hash::from_hex(&h.to_hex()[..63]), None);
    // If b3sum is installed, it must agree with the object name.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    fs::write(&path, &data).expect("write");
    if let Ok(out) = std::process::Command::new("b3sum").arg("--no-names").arg(&path).output() {
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), h.to_string());
    }
}

#[test]
fn stored_content_is_a_manifest_named_by_its_b3sum_over_a_pack() {
    let (_d, store) = store();
    let data = pattern(3 * C + 11, 1);
    let (out, r) = put_open(&store, &data);
    assert_eq!((out.hash, out.existed, out.size), (b3(&data), false, data.len() as u64));
    let name = store.object_path(&out.hash).file_name().map(|n| n.to_owned());
    assert_eq!(name, Some(format!("{}.parquet", out.hash).into()));
    assert_eq!(tmp_entries(&store), 0, "temp left behind");
    let files = store.list().expect("list");
    assert_eq!(files.len(), 2, "one object and one pack: {files:?}");
    assert!(files.contains(&PondFile::Object(out.hash)));
    assert_eq!(
        (r.hash(), r.format(), r.size(), r.sha256()),
        (out.hash, ObjectFormat::Manifest, data.len() as u64, None)
    );
    assert_eq!(r.data_files(), packs(&store), "its chunks are in the pack");
    assert_same_bytes(&read_all(&r), &data, "read back");
    r.verify(None).expect("verify");
    // Empty content is one empty chunk.
    let (empty, r) = put_open(&store, &[]);
    assert_eq!(empty.hash, b3(&[]));
    assert_eq!(r.read_at(0, &mut [0u8; 8]).expect("read"), 0);
    r.verify(None).expect("verify empty");
}

#[test]
fn identical_content_is_stored_once() {
    let (_d, store) = store();
    let data = pattern(2 * C + 3, 2);
    let first = store.put_bytes(&data).expect("put");
    let path = store.object_path(&first.hash);
    let mtime = || fs::metadata(&path).and_then(|m| m.modified()).expect("mtime");
    let before = (mtime(), store.list().expect("list"));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let second = store.put_bytes(&data).expect("put again");
    assert!(second.existed && second.hash == first.hash);
    assert_eq!((mtime(), store.list().expect("list")), before, "nothing rewritten, nothing added");
    // A store that has not seen it (another mount) finds it whole and stores nothing new either.
    let other = LargeFileStore::new(store.dir().parent().expect("root"));
    assert!(other.put_bytes(&data).expect("put from another store").existed);
    assert_eq!(store.list().expect("list"), before.1);
    assert_eq!(tmp_entries(&store), 0);
}

#[test]
fn hybrid_writer_stays_inline_up_to_the_threshold_then_goes_large() {
    let (_d, store) = store();
    let big = 5 * C + 123;
    for (size, inline) in [(T / 2, true), (T - 1, true), (T, true), (T + 1, false), (big, false)] {
        let what = format!("size T{:+}", size as i64 - T as i64);
        let data = pattern(size, size as u64);
        let mut w = writer(&store);
        for (k, part) in data.chunks(4096).enumerate() {
            w.write_at((k * 4096) as u64, part).expect("write");
        }
        assert_eq!(w.is_large(), !inline, "{what}: large");
        assert_same_bytes(&writer_content(&mut w), &data, &what);
        let f = w.finish().expect("finish");
        assert_eq!(matches!(f, Finished::Inline { .. }), inline, "{what}");
        check_finished(&f, &data, &store, &what);
    }
    assert_eq!(store.open(&b3(&pattern(big, big as u64))).expect("open").chunk_count(), 6);
}

#[test]
fn many_small_writes_and_a_snapshot_mid_stream() {
    let (_d, store) = store();
    let data = pattern(3 * C + T / 3, 6);
    let mut w = writer(&store);
    let mut pos = 0;
    for (k, size) in [1usize, 3, 100, 4095, 7, C, 13].iter().cycle().enumerate() {
        if pos == data.len() {
            break;
        }
        let end = (pos + size).min(data.len());
        w.write_at(pos as u64, &data[pos..end]).expect("append");
        pos = end;
        if k == 40 {
            // fsync-style snapshot mid-stream, then keep appending.
            let f = w.finish().expect("snapshot");
            check_finished(&f, &data[..pos], &store, "snapshot");
        }
    }
    check_finished(&w.finish().expect("finish"), &data, &store, "small writes");
    w.set_len(w.len()).expect("same-length truncate is a no-op");
    let extra = pattern(C / 2, 7);
    w.write_at(w.len(), &extra).expect("append after finish");
    check_finished(&w.finish().expect("finish"), &[data, extra].concat(), &store, "after finish");
}

#[test]
fn writes_at_offsets_truncate_extend_sparse() {
    let (_d, store) = store();
    let mut w = writer(&store);
    let mut model = pattern(T / 2, 9);
    w.write_at(0, &model).expect("write");
    // Sparse write far past the end: the gap reads as zeros.
    let (far, tail) = (3 * C + 17, pattern(100, 10));
    w.write_at(far as u64, &tail).expect("sparse write");
    model.resize(far, 0);
    model.extend_from_slice(&tail);
    // Overwrite across a chunk border in the middle.
    let (at, mid) = (C - C / 4, pattern(C / 2, 11));
    w.write_at(at as u64, &mid).expect("overwrite");
    model[at..at + mid.len()].copy_from_slice(&mid);
    assert_same_bytes(&writer_content(&mut w), &model, "after overwrite");
    w.set_len((2 * C + 1) as u64).expect("truncate");
    model.truncate(2 * C + 1);
    w.set_len((4 * C) as u64).expect("extend");
    model.resize(4 * C, 0);
    assert_same_bytes(&writer_content(&mut w), &model, "after truncate/extend");
    check_finished(&w.finish().expect("finish"), &model, &store, "edited");
    // Large, then truncated below the threshold: back in memory, finishes inline.
    w.set_len((T / 2) as u64).expect("truncate");
    assert!(!w.is_large());
    let f = w.finish().expect("finish");
    assert!(matches!(f, Finished::Inline { .. }));
    check_finished(&f, &model[..T / 2], &store, "truncated below threshold");
}

#[test]
fn a_small_large_file_is_held_until_make_durable_and_reads_the_same_before_and_after() {
    // What a close stores of a file of a few chunks (its pack and its manifest) is written by the
    // next commit's `make_durable`, not by the close; until then the store serves it from memory.
    let (d, store) = store();
    let data = pattern(3 * C + 5, 47);
    let mut w = writer(&store);
    w.write_at(0, &data).expect("write");
    let Finished::Large(out) = w.finish().expect("finish") else { panic!("3 chunks must be large") };
    assert!(store.list().expect("list").is_empty(), "a close wrote files: {:?}", store.list());
    assert_eq!(tmp_entries(&store), 0, "a close made temp files");
    assert!(store.contains(&out.hash) && store.contains_intact(&out.hash), "the held object is in the store");
    let r = store.open(&out.hash).expect("open the held object");
    r.verify(None).expect("verify the held object");
    let mut back = vec![0u8; data.len()];
    r.read_at(0, &mut back).expect("read the held object");
    assert_same_bytes(&back, &data, "held, before make_durable");
    assert!(!LargeFileStore::new(d.path()).contains(&out.hash), "another store sees what is on disk only");

    store.make_durable().expect("make_durable");
    assert_eq!(store.list().expect("list").len(), 2, "the manifest and its pack");
    assert_eq!(tmp_entries(&store), 0, "temp left behind");
    check_finished(&Finished::Large(out), &data, &store, "after make_durable");
}

#[test]
fn a_held_pack_of_content_stored_already_is_never_written() {
    let (d, first_store) = store();
    let data = pattern(2 * C + 9, 48);
    let first = first_store.put_bytes(&data).expect("put");
    // A store that does not know where the first copy's chunks are stores them again, in a pack
    // of its own, and finds the object there at finish.
    let store = LargeFileStore::new(d.path());
    let mut w = writer(&store);
    w.write_at(0, &data).expect("write");
    let Finished::Large(again) = w.finish().expect("finish") else { panic!("large") };
    assert_eq!((again.hash, again.existed), (first.hash, true));
    store.make_durable().expect("make_durable");
    assert_eq!(packs(&store).len(), 1, "the second copy's pack was dropped, not written");
}

#[test]
fn a_file_written_front_to_back_is_stored_as_it_comes_with_bounded_memory() {
    let (_d, store) = store();
    // Past the draft's chunks in memory, a pack gathers its first 2 MiB before it has a file.
    let data = pattern(64 * C + 7, 40);
    let mut w = writer(&store);
    for part in data.chunks(4096 + 17) {
        w.write_at(w.len(), part).expect("append");
    }
    assert_eq!(tmp_entries(&store), 1, "chunks past the memory budget went to a pack under way");
    check_finished(&w.finish().expect("finish"), &data, &store, "streamed");
    assert_eq!(tmp_entries(&store), 0, "the pack under way became a pack");
    assert_eq!(packs(&store).len(), 1, "one pack for one file written once");
    // The finished writer serves reads from what it stored, and an append goes on from there.
    assert_same_bytes(&writer_content(&mut w), &data, "read after finish");
    let more = pattern(C + 3, 41);
    w.write_at(w.len(), &more).expect("append after finish");
    check_finished(&w.finish().expect("finish"), &[data, more].concat(), &store, "appended again");
    // Exactly the threshold, then one byte more: the byte that crosses it makes the content large.
    let mut w = writer(&store);
    let edge = pattern(T + 1, 42);
    w.write_at(0, &edge[..T]).expect("up to T");
    assert!(!w.is_large(), "exactly T stays in memory");
    w.write_at(T as u64, &edge[T..]).expect("T + 1");
    assert!(w.is_large());
    check_finished(&w.finish().expect("finish"), &edge, &store, "T + 1");
}

/// A stored object of `chunks` chunks plus `extra` bytes, opened as a writer would start from it.
fn stored(store: &LargeFileStore, chunks: usize, extra: usize, seed: u64) -> (Vec<u8>, Arc<ObjectReader>) {
    let data = pattern(chunks * C + extra, seed);
    let out = store.put_bytes(&data).expect("put");
    let r = store.open(&out.hash).expect("open");
    store.remember(&r);
    (data, Arc::new(r))
}

/// The store's growth while `f` runs, with everything it wrote made durable.
fn growth(store: &LargeFileStore, f: impl FnOnce()) -> u64 {
    let before = stored_bytes(store);
    f();
    store.make_durable().expect("make_durable");
    stored_bytes(store) - before
}

/// What a manifest of `chunks` rows costs at most, plus parquet's footers.
fn manifest_allowance(chunks: usize) -> u64 {
    (chunks * 40 + 8192) as u64
}

#[test]
fn appending_to_a_stored_file_stores_only_the_new_chunks() {
    let (_d, store) = store();
    let (data, base) = stored(&store, 64, 1000, 50);
    let tail = pattern(3 * C + 5, 51);
    let before = base.bytes_read_from_disk();
    let grew = growth(&store, || {
        let mut w = HybridWriter::from_large(Threshold::default(), store.clone(), base.clone());
        w.write_at(w.len(), &tail).expect("append");
        check_finished(&w.finish().expect("finish"), &[data.clone(), tail.clone()].concat(), &store, "appended");
    });
    // The partial last chunk is stored again with its new bytes, the rest is referenced.
    let limit = (tail.len() + C) as u64 + manifest_allowance(68);
    assert!(grew <= limit, "an append of {} bytes grew the store by {grew} (limit {limit})", tail.len());
    let read = base.bytes_read_from_disk() - before;
    assert!(read <= 2 * CHUNK_SIZE, "opening to append read {read} bytes of the old content");
}

#[test]
fn a_patch_in_the_middle_stores_one_chunk_and_a_manifest() {
    let (_d, store) = store();
    let (mut model, base) = stored(&store, 256, 0, 52);
    let patch = pattern(4096, 53);
    let at = 128 * C + 1000;
    model[at..at + patch.len()].copy_from_slice(&patch);
    let before = base.bytes_read_from_disk();
    let grew = growth(&store, || {
        let mut w = HybridWriter::from_large(Threshold::default(), store.clone(), base.clone());
        w.write_at(at as u64, &patch).expect("patch");
        check_finished(&w.finish().expect("finish"), &model, &store, "patched");
    });
    let limit = CHUNK_SIZE + manifest_allowance(256);
    assert!(grew <= limit, "a 4 KiB patch grew the store by {grew} (limit {limit})");
    let read = base.bytes_read_from_disk() - before;
    assert!(read <= 2 * CHUNK_SIZE, "a patch read {read} bytes of the old content");
}

#[test]
fn truncating_a_stored_file_stores_only_its_new_last_chunk() {
    let (_d, store) = store();
    let (data, base) = stored(&store, 32, 0, 54);
    let cut = 20 * C + 333;
    let grew = growth(&store, || {
        let mut w = HybridWriter::from_large(Threshold::default(), store.clone(), base.clone());
        w.set_len(cut as u64).expect("truncate");
        check_finished(&w.finish().expect("finish"), &data[..cut], &store, "truncated");
    });
    let limit = CHUNK_SIZE + manifest_allowance(21);
    assert!(grew <= limit, "a truncate grew the store by {grew} (limit {limit})");
}

#[test]
fn a_chunk_shared_by_two_files_is_stored_once() {
    // rsync writes a changed file anew beside the old one: the new file shares the old one's
    // unchanged chunks, which are referenced, not stored again.
    let (_d, store) = store();
    let (old, _base) = stored(&store, 16, 77, 55);
    let mut new = old.clone();
    new[5 * C..5 * C + 10].copy_from_slice(b"CHANGED!!!");
    let grew = growth(&store, || {
        let mut w = writer(&store);
        for part in new.chunks(128 * 1024) {
            w.write_at(w.len(), part).expect("append");
        }
        check_finished(&w.finish().expect("finish"), &new, &store, "rewritten");
    });
    let limit = CHUNK_SIZE + manifest_allowance(17);
    assert!(grew <= limit, "a new file sharing 16 of 17 chunks grew the store by {grew} (limit {limit})");
    let a = store.open(&b3(&old)).expect("open old");
    let b = store.open(&b3(&new)).expect("open new");
    assert_eq!(a.chunk_locs()[0], b.chunk_locs()[0], "chunk 0 is the same bytes in the same place");
    assert_ne!(a.chunk_locs()[5], b.chunk_locs()[5], "the changed chunk is stored anew");
}

#[test]
fn from_large_then_modify() {
    let (_d, store) = store();
    let (data, r) = stored(&store, 4, 99, 12);
    let mut w = HybridWriter::from_large(Threshold::default(), store.clone(), r.clone());
    assert_eq!(w.len(), data.len() as u64);
    // Unmodified: finishing gives the same object back and stores nothing.
    let files = store.list().expect("list");
    match w.finish().expect("finish") {
        Finished::Large(o) => assert!(o.existed && o.hash == r.hash()),
        other => panic!("expected large, got {other:?}"),
    }
    assert_eq!(store.list().expect("list"), files);
    let mut model = data.clone();
    let patch = pattern(300, 13);
    w.write_at((2 * C - 150) as u64, &patch).expect("patch");
    model[2 * C - 150..2 * C + 150].copy_from_slice(&patch);
    w.set_len((3 * C + 1) as u64).expect("truncate");
    model.truncate(3 * C + 1);
    check_finished(&w.finish().expect("finish"), &model, &store, "modified");
    // And from inline bytes.
    let (small, more) = (pattern(T / 3, 14), pattern(T, 15));
    let mut w = HybridWriter::from_bytes(Threshold::default(), store.clone(), &small).expect("from");
    w.write_at(small.len() as u64, &more).expect("grow");
    check_finished(&w.finish().expect("finish"), &[small, more].concat(), &store, "grown");
    // Under a larger threshold (a mount's `threshold=`) an object that fits comes back inline.
    let roomy = Threshold(8 * C as u64);
    let mut w = HybridWriter::from_large(roomy, store.clone(), r);
    w.write_at(w.len(), b"tail").expect("append");
    match w.finish().expect("finish") {
        Finished::Inline { bytes, .. } => assert_same_bytes(&bytes, &[&data[..], b"tail"].concat(), "re-inlined"),
        other => panic!("expected inline content, got {other:?}"),
    }
}

#[test]
fn reads_spanning_chunk_borders() {
    let (_d, store) = store();
    let data = pattern(4 * C + 17, 16);
    let (_, r) = put_open(&store, &data);
    let size = data.len();
    let mut offsets = vec![0, 1, size - 1, size, size + 10];
    for b in (1..=4).map(|k| k * C) {
        offsets.extend([b - 1, b, b + 1]);
    }
    for &off in &offsets {
        for len in [1, 2, 4096, C - 1, C, C + 2, 2 * C + 1, 5 * C] {
            let mut buf = vec![0u8; len];
            let n = r.read_at(off as u64, &mut buf).expect("read_at");
            let want = &data[off.min(size)..(off + len).min(size)];
            assert_same_bytes(&buf[..n], want, &format!("read at {off}+{len}"));
        }
    }
    let past = r.read_chunk(5).expect_err("past the end");
    assert!(matches!(past, E::ChunkOutOfRange { chunk: 5, .. }), "{past}");
}

#[test]
fn reader_is_send_sync_and_shared_across_threads() {
    fn assert_send_sync<X: Send + Sync>() {}
    assert_send_sync::<ObjectReader>();
    let (_d, store) = store();
    let data = Arc::new(pattern(6 * C + 5, 17));
    let r = Arc::new(put_open(&store, &data).1);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (r, data) = (Arc::clone(&r), Arc::clone(&data));
            std::thread::spawn(move || {
                for k in 0..40 {
                    let off = (k * 7919 + t * C / 3) % data.len();
                    let mut buf = vec![0u8; 4096 + k * 100];
                    let n = r.read_at(off as u64, &mut buf).expect("read");
                    assert_same_bytes(&buf[..n], &data[off..off + n], "threaded read");
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().expect("reader thread"));
}

#[test]
fn every_chunk_is_one_page_and_a_middle_read_fetches_one_chunk() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::file::serialized_reader::ReadOptionsBuilder;
    let (_d, store) = store();
    let n = PACK_ROW_GROUP_CHUNKS + 3;
    let data = pattern(n * C - 5, 18);
    let (_out, r) = put_open(&store, &data);
    let pack = &packs(&store)[0];
    let file = File::open(store.path_of(pack)).expect("open pack");
    let opts = ReadOptionsBuilder::new().with_page_index().build();
    let pq = SerializedFileReader::new_with_options(file, opts).expect("parquet");
    let meta = pq.metadata();
    assert_eq!(meta.num_row_groups(), 2);
    for (rg, cols) in meta.offset_index().expect("offset index").iter().enumerate() {
        let pages = cols[COL_DATA].page_locations();
        assert_eq!(pages.len() as i64, meta.row_group(rg).num_rows(), "rg {rg}");
        assert!(pages.iter().map(|p| p.first_row_index).eq(0..pages.len() as i64), "one page per chunk in rg {rg}");
    }
    let before = r.bytes_read_from_disk();
    let mid = (n / 2) * C;
    let mut buf = vec![0u8; 4096];
    r.read_at(mid as u64 + 100, &mut buf).expect("read middle");
    let read = r.bytes_read_from_disk() - before;
    assert_eq!(read, CHUNK_SIZE + 4, "a middle read fetches one chunk and its length prefix");
    assert_same_bytes(&buf, &data[mid + 100..][..4096], "middle read");
    // A second read in the same chunk is served from the cache.
    r.read_at(mid as u64 + 5000, &mut buf).expect("read again");
    assert_eq!(r.bytes_read_from_disk() - before, read, "cached chunk re-read");
}

/// Flips one byte of chunk `k`'s bytes where `r` says they are.
fn corrupt_chunk(store: &LargeFileStore, r: &ObjectReader, k: usize) {
    let loc = &r.chunk_locs()[k];
    let path = store.path_of(&loc.file);
    let mut file = fs::read(&path).expect("read");
    file[loc.offset as usize + 100] ^= 0x5a;
    fs::write(&path, &file).expect("write");
}

#[test]
fn a_corrupt_chunk_reads_as_an_error_naming_it_and_the_others_still_read() {
    let (_d, store) = store();
    let data = pattern(5 * C + 1, 19);
    let (out, r) = put_open(&store, &data);
    corrupt_chunk(&store, &r, 2);
    let r = store.open(&out.hash).expect("open still succeeds: hashes are intact");
    let err = r.read_at((2 * C + 10) as u64, &mut [0u8; 10]).expect_err("corrupt");
    assert!(matches!(&err, E::CorruptChunk { object, chunk: 2, .. } if *object == out.hash), "{err}");
    let msg = err.to_string();
    let pack = r.chunk_locs()[2].file.to_string();
    assert!(msg.contains(&out.hash.to_hex()) && msg.contains("chunk 2") && msg.contains(&pack), "{msg}");
    for k in [0, 1, 3, 4, 5] {
        let chunk = r.read_chunk(k as u64).expect("other chunk");
        assert_same_bytes(&chunk, &data[k * C..((k + 1) * C).min(data.len())], "chunk");
    }
    let errs = r.verify(None).expect_err("verify must fail");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(matches!(errs[0], E::CorruptChunk { chunk: 2, .. }));
}

/// Small reads (4 KiB at random places) verify the 4 KiB pieces they touch once an earlier small
/// read checked the chunk whole; a piece changed afterwards still reads as an error, never as
/// its new bytes, while the chunk's untouched pieces read.
#[test]
fn small_reads_verify_only_their_pieces_and_a_changed_piece_is_still_refused() {
    const P: usize = 4096;
    let (_d, store) = store();
    let data = pattern(4 * C, 23);
    let (out, r) = put_open(&store, &data);
    // First small read of chunk 1 (checks it whole, keeps its pieces' hashes), then others in it,
    // across a piece boundary too.
    for (i, (at, len)) in
        [(C + 5 * P, P), (C + 7 * P, P), (C + 3 * P - 100, 300), (C, 16), (2 * C - P, P)].into_iter().enumerate()
    {
        let before = r.bytes_read_from_disk();
        let got = r.read_to_vec(at as u64, len).expect("small read");
        assert_same_bytes(&got, &data[at..at + len], &format!("{len} bytes at {at}"));
        let read = r.bytes_read_from_disk() - before;
        let pieces = (at + len - 1) / P - at / P + 1;
        if i > 0 {
            assert_eq!(read, (pieces * P) as u64, "{len} bytes at {at}: only the pieces touched are read");
        } else {
            assert!(read >= C as u64, "the first small read of a chunk reads it whole ({read} bytes)");
        }
    }
    // Change a byte of piece 7 of chunk 1 on disk (the reader has its pieces' hashes).
    let loc = &r.chunk_locs()[1];
    let path = store.path_of(&loc.file);
    let mut file = fs::read(&path).expect("read");
    file[loc.offset as usize + 7 * P + 33] ^= 0x5a;
    fs::write(&path, &file).expect("write");
    let err = r.read_to_vec((C + 7 * P) as u64, P).expect_err("a changed piece must not read");
    assert!(matches!(&err, E::CorruptChunk { object, chunk: 1, .. } if *object == out.hash), "{err}");
    let err = r.read_to_vec((C + 7 * P + 40) as u64, 8).expect_err("nor any byte of it");
    assert!(matches!(&err, E::CorruptChunk { chunk: 1, .. }), "{err}");
    let got = r.read_to_vec((C + 2 * P) as u64, P).expect("an untouched piece of the chunk is still authentic");
    assert_same_bytes(&got, &data[C + 2 * P..C + 3 * P], "piece 2 of chunk 1");
    // A reader that never read the chunk checks it whole: the change is found there too.
    let fresh = store.open(&out.hash).expect("open");
    let err = fresh.read_to_vec((C + 2 * P) as u64, P).expect_err("the chunk no longer matches its hash");
    assert!(matches!(&err, E::CorruptChunk { chunk: 1, .. }), "{err}");
}

#[test]
fn a_corrupt_shared_chunk_fails_every_object_that_uses_it() {
    let (_d, store) = store();
    let (_data, a) = stored(&store, 6, 0, 56);
    let tail = pattern(2 * C, 57);
    let mut w = HybridWriter::from_large(Threshold::default(), store.clone(), a.clone());
    w.write_at(w.len(), &tail).expect("append");
    let Finished::Large(b) = w.finish().expect("finish") else { panic!("large") };
    store.make_durable().expect("durable");
    let b = store.open(&b.hash).expect("open b");
    assert_eq!(a.chunk_locs()[3], b.chunk_locs()[3], "chunk 3 is shared");
    corrupt_chunk(&store, &a, 3);
    for r in [store.open(&a.hash()).expect("a"), b] {
        let err = r.read_chunk(3).expect_err("the shared chunk is corrupt for both");
        assert!(matches!(err, E::CorruptChunk { object, chunk: 3, .. } if object == r.hash()), "{err}");
        assert!(r.read_chunk(2).is_ok());
    }
}

#[test]
fn storing_content_again_replaces_a_damaged_object_instead_of_deduplicating_against_it() {
    // Content stored with deferred durability can be torn by a crash before its sync; no commit
    // references it, but the same content written after a restart must not be deduplicated to it.
    let (d, store) = store();
    let data = pattern(3 * C + 9, 46);
    let (out, r) = put_open(&store, &data);
    corrupt_chunk(&store, &r, 1);
    let restarted = LargeFileStore::new(d.path());
    assert!(restarted.contains(&out.hash) && !restarted.contains_intact(&out.hash));
    let mut w = writer(&restarted);
    w.write_at(0, &data).expect("write");
    match w.finish().expect("finish") {
        Finished::Large(o) => assert!(!o.existed, "the damaged object was replaced, not reused"),
        other => panic!("expected a large object, got {other:?}"),
    }
    restarted.make_durable().expect("make_durable");
    assert!(restarted.contains_intact(&out.hash), "the object is whole again");
    LargeFileStore::new(d.path()).open(&out.hash).expect("open").verify(None).expect("verify");
}

/// A manifest's rows, editable: (index, hash, pack, offset, len).
type Rows = Vec<(i64, Vec<u8>, String, i64, i32)>;

/// Rewrites a manifest through `edit(rows, kv)`, keeping its format.
fn rewrite_manifest(path: &Path, edit: impl FnOnce(&mut Rows, &mut Vec<(String, String)>)) {
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).expect("open")).expect("parquet");
    let kvs = builder.metadata().file_metadata().key_value_metadata().cloned();
    let mut kv: Vec<(String, String)> = kvs
        .into_iter()
        .flatten()
        .filter(|k| k.key.starts_with("pond."))
        .map(|k| (k.key, k.value.unwrap_or_default()))
        .collect();
    let schema = builder.schema().clone();
    let mut rows: Rows = Vec::new();
    for batch in builder.build().expect("reader") {
        let b = batch.expect("batch");
        let col = |i: usize| b.column(i).clone();
        let (index, hash, pack, offset, len) = (col(0), col(1), col(2), col(3), col(4));
        let index = index.as_any().downcast_ref::<Int64Array>().expect("index");
        let hash = hash.as_any().downcast_ref::<BinaryArray>().expect("hash");
        let pack = pack.as_any().downcast_ref::<StringArray>().expect("pack");
        let offset = offset.as_any().downcast_ref::<Int64Array>().expect("offset");
        let len = len.as_any().downcast_ref::<Int32Array>().expect("len");
        for r in 0..b.num_rows() {
            rows.push((index.value(r), hash.value(r).to_vec(), pack.value(r).into(), offset.value(r), len.value(r)));
        }
    }
    edit(&mut rows, &mut kv);
    let mut w = ArrowWriter::try_new(File::create(path).expect("create"), schema.clone(), None).expect("writer");
    let cols: Vec<Arc<dyn Array>> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
        Arc::new(BinaryArray::from_iter_values(rows.iter().map(|r| r.1.clone()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2.clone()))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3))),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.4))),
    ];
    w.write(&RecordBatch::try_new(schema, cols).expect("batch")).expect("write");
    for (k, v) in kv {
        w.append_key_value_metadata(KeyValue::new(k, v));
    }
    w.close().expect("close");
}

fn set_kv(kv: &mut [(String, String)], key: &str, value: String) {
    kv.iter_mut().filter(|(k, _)| k == key).for_each(|(_, v)| *v = value.clone());
}

#[test]
fn consistent_tampering_breaks_the_hash_tree() {
    let (_d, store) = store();
    let data = pattern(4 * C + 3, 20);
    let (out, r) = put_open(&store, &data);
    let path = store.object_path(&out.hash);
    rewrite_manifest(&path, |_, _| {});
    store.open(&out.hash).expect("a faithful rewrite still opens");
    // A chunk's bytes changed in its pack and its hash changed to match: the name disagrees.
    corrupt_chunk(&store, &r, 1);
    let loc = r.chunk_locs()[1].clone();
    let tampered = fs::read(store.path_of(&loc.file)).expect("read pack");
    let bytes = &tampered[loc.offset as usize..][..loc.len as usize];
    let forged = chunk_hash(1, r.chunk_count(), bytes);
    rewrite_manifest(&path, |rows, _| rows[1].1 = forged.to_vec());
    let err = open_err(&store, &out.hash);
    assert!(matches!(err, E::HashTreeMismatch { object } if object == out.hash), "{err}");
    // Metadata naming another object, an absurd size, a chunk elsewhere, a row out of order:
    // malformed, not a panic and not wrong bytes.
    let other = store.put_bytes(&pattern(2 * C, 21)).expect("put").hash;
    let p2 = store.object_path(&other);
    let good = fs::read(&p2).expect("read");
    type Edit = Box<dyn FnOnce(&mut Rows, &mut Vec<(String, String)>)>;
    let edits: Vec<(&str, Edit)> = vec![
        ("another name", Box::new(move |_, kv| set_kv(kv, "pond.blake3", out.hash.to_hex()))),
        ("absurd size", Box::new(|_, kv| set_kv(kv, "pond.size", u64::MAX.to_string()))),
        ("chunk outside the store", Box::new(|rows, _| rows[0].2 = "../../etc/passwd".into())),
        ("chunk in a data file", Box::new(|rows, _| rows[0].2 = "part-1.parquet".into())),
        ("rows out of order", Box::new(|rows, _| rows.swap(0, 1))),
        ("wrong length", Box::new(|rows, _| rows[0].4 -= 1)),
        ("negative offset", Box::new(|rows, _| rows[0].3 = -5)),
    ];
    for (what, edit) in edits {
        fs::write(&p2, &good).expect("restore");
        rewrite_manifest(&p2, edit);
        let err = open_err(&store, &other);
        assert!(matches!(err, E::Malformed { .. } | E::HashTreeMismatch { .. }), "{what}: {err}");
    }
    // A location that points at other bytes of the pack reads as corrupt, never as those bytes.
    fs::write(&p2, &good).expect("restore");
    rewrite_manifest(&p2, |rows, _| rows[0].3 += 1);
    let r = store.open(&other).expect("locations are not authenticated, bytes are");
    assert!(matches!(r.read_chunk(0), Err(E::CorruptChunk { chunk: 0, .. })));
}

#[test]
fn truncated_garbage_and_foreign_files_are_errors_not_panics() {
    let (_d, store) = store();
    let data = pattern(3 * C + 1, 22);
    let (out, _r) = put_open(&store, &data);
    let (path, hash) = (store.object_path(&out.hash), out.hash);
    let good = fs::read(&path).expect("read");
    let len = good.len();
    for cut in (0..len).step_by(97).chain([len - 9, len - 1]) {
        fs::write(&path, &good[..cut]).expect("write");
        assert!(store.open(&hash).is_err(), "truncated to {cut} bytes opened");
    }
    let mut absurd = good.clone();
    absurd[len - 8..len - 4].copy_from_slice(&u32::MAX.to_le_bytes());
    for bytes in [absurd, pattern(C, 23), b"PAR1PAR1".to_vec(), Vec::new()] {
        fs::write(&path, &bytes).expect("write");
        assert!(store.open(&hash).is_err(), "garbage opened");
    }
    // Single-byte flips anywhere in the manifest: open and reads never panic, and what opens
    // returns verified bytes.
    for i in 0..len {
        let mut bad = good.clone();
        bad[i] ^= 0xff;
        fs::write(&path, &bad).expect("write");
        let Ok(r) = store.open(&hash) else { continue };
        for k in 0..r.chunk_count() as usize {
            if let Ok(chunk) = r.read_chunk(k as u64) {
                assert_same_bytes(
                    &chunk,
                    &data[k * C..((k + 1) * C).min(data.len())],
                    &format!("flip at {i}, chunk {k}"),
                );
            }
        }
    }
    fs::write(&path, &good).expect("restore");
    // A parquet file with some other schema.
    let ints: Arc<dyn Array> = Arc::new(Int64Array::from(vec![1i64]));
    let foreign = RecordBatch::try_from_iter([("x", ints)]).expect("batch");
    let mut w = ArrowWriter::try_new(File::create(&path).expect("create"), foreign.schema(), None).expect("writer");
    w.write(&foreign).expect("write");
    w.close().expect("close");
    assert!(matches!(open_err(&store, &hash), E::Malformed { .. }));
    assert!(matches!(open_err(&store, &b3(b"absent")), E::NotFound(_)));
}

/// Writes `data` as a self-contained object of format 1, the way pond wrote large files before
/// chunk-level storage (rows index, hash, data; SHA-256 in the metadata).
fn write_format_1(store: &LargeFileStore, data: &[u8]) -> Blake3Hash {
    use sha2::Digest;
    let hash = b3(data);
    let n = chunk_count(data.len() as u64);
    let mut w = ArrowWriter::try_new(
        File::create(store.object_path(&hash)).expect("create"),
        chunk_schema(),
        Some(chunk_writer_properties()),
    )
    .expect("writer");
    for i in 0..n as usize {
        let chunk = &data[(i * C).min(data.len())..((i + 1) * C).min(data.len())];
        let cols: Vec<Arc<dyn Array>> = vec![
            Arc::new(Int64Array::from(vec![i as i64])),
            Arc::new(BinaryArray::from_vec(vec![&chunk_hash(i as u64, n, chunk)[..]])),
            Arc::new(BinaryArray::from_vec(vec![chunk])),
        ];
        w.write(&RecordBatch::try_new(chunk_schema(), cols).expect("batch")).expect("write");
    }
    let sha = hex::encode(sha2::Sha256::digest(data));
    for (k, v) in [
        ("pond.format", "1".to_string()),
        ("pond.size", data.len().to_string()),
        ("pond.blake3", hash.to_hex()),
        ("pond.sha256", sha),
        ("pond.chunk_size", C.to_string()),
    ] {
        w.append_key_value_metadata(KeyValue::new(k.into(), v));
    }
    w.close().expect("close");
    hash
}

#[test]
fn format_1_objects_still_read_and_new_versions_point_into_them() {
    let (_d, store) = store();
    let data = pattern(PACK_ROW_GROUP_CHUNKS * 2 * C + 5, 60);
    let hash = write_format_1(&store, &data);
    let r = store.open(&hash).expect("open format 1");
    assert_eq!((r.format(), r.size()), (ObjectFormat::Full, data.len() as u64));
    assert!(r.sha256().is_some(), "format 1 records a SHA-256");
    assert_same_bytes(&read_all(&r), &data, "format 1 read");
    r.verify(None).expect("verify format 1");
    // A patch of it is a manifest whose other chunks are in the old object.
    let r = Arc::new(r);
    store.remember(&r);
    let mut model = data.clone();
    let grew = growth(&store, || {
        let mut w = HybridWriter::from_large(Threshold::default(), store.clone(), r.clone());
        w.write_at(3 * C as u64 + 7, b"new bytes").expect("patch");
        model[3 * C + 7..3 * C + 16].copy_from_slice(b"new bytes");
        check_finished(&w.finish().expect("finish"), &model, &store, "patched format 1");
    });
    assert!(grew <= CHUNK_SIZE + manifest_allowance(2 * PACK_ROW_GROUP_CHUNKS + 1), "grew {grew}");
    let patched = store.open(&b3(&model)).expect("open patched");
    assert_eq!(patched.format(), ObjectFormat::Manifest);
    assert_eq!(*patched.chunk_locs()[0].file, PondFile::Object(hash), "unchanged chunks stay in the old object");
    // Tampering a format 1 chunk is caught as before.
    corrupt_chunk(&store, &patched, 0);
    assert!(matches!(store.open(&hash).expect("open").verify(None), Err(errs) if errs.len() == 1));
}

#[test]
fn list_remove_and_clear_tmp() {
    let (_d, store) = store();
    let a = store.put_bytes(&pattern(C + 1, 24)).expect("put a").hash;
    let b = store.put_bytes(&pattern(2 * C + 1, 25)).expect("put b").hash;
    let dir = store.dir();
    fs::write(dir.join(STORE_TMP_DIR).join("pack-crashed.tmp"), b"x").expect("leftover");
    fs::write(dir.join("notes.txt"), b"x").expect("junk");
    fs::write(dir.join(format!("{}.parquet", a.to_hex().to_uppercase())), b"x").expect("junk");
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(store.list_objects().expect("list"), want);
    assert_eq!(packs(&store).len(), 2);
    assert_eq!(store.clear_tmp().expect("clear_tmp"), 1);
    assert_eq!(tmp_entries(&store), 0);
    store.remove(&PondFile::Object(a)).expect("remove");
    assert!(!store.contains(&a));
    assert!(matches!(store.remove(&PondFile::Object(a)), Err(E::Missing(PondFile::Object(h))) if h == a));
    assert_eq!(store.list_objects().expect("list"), vec![b]);
}

#[test]
fn io_errors_come_back_from_the_writer_and_the_store() {
    let d = tempfile::tempdir().expect("tempdir");
    fs::write(d.path().join("file-not-dir"), b"x").expect("write");
    let blocked = LargeFileStore::new(&d.path().join("file-not-dir"));
    let mut w = HybridWriter::new(Threshold::default(), blocked.clone());
    w.write_at(0, &pattern(T / 2, 26)).expect("in memory: no store needed");
    // Past the memory budget and a pack's first buffer the draft must write chunks, and cannot.
    let big = pattern(64 * C, 27);
    let err = w.write_at((T / 2) as u64, &big).expect_err("storing must fail");
    assert!(err.io_error().is_some(), "{err}");
    assert!(w.is_lost(), "a failed store loses the unsaved changes");
    let source = std::io::Error::from_raw_os_error(libc::ENOSPC);
    let enospc = E::Io { path: "x".into(), source };
    assert!(pond::os_error::is_out_of_space(&enospc) && enospc.raw_os_error() == Some(libc::ENOSPC));
    assert!(!pond::os_error::is_out_of_space(&E::NotFound(b3(b""))));
    let err = blocked.put_bytes(b"abc").expect_err("must fail");
    assert!(err.io_error().is_some(), "{err}");
}

#[derive(Clone, Debug)]
enum Op {
    Append(usize, u64),
    Write(usize, usize, u64),
    SetLen(usize),
    Finish,
}

fn op() -> impl Strategy<Value = Op> {
    let span = 2 * T + 24 * C;
    prop_oneof![
        3 => (0..2 * C + 100, any::<u64>()).prop_map(|(l, s)| Op::Append(l, s)),
        3 => (0..span, 0..C + 100, any::<u64>()).prop_map(|(o, l, s)| Op::Write(o, l, s)),
        1 => (0..span).prop_map(Op::SetLen),
        1 => Just(Op::Finish),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn hybrid_writer_matches_a_vec_model(ops in proptest::collection::vec(op(), 1..24)) {
        let (_d, store) = store();
        let mut w = writer(&store);
        let mut model: Vec<u8> = Vec::new();
        for op in ops {
            match op {
                Op::Append(len, seed) => {
                    let data = pattern(len, seed);
                    w.write_at(model.len() as u64, &data).expect("append");
                    model.extend_from_slice(&data);
                }
                Op::Write(off, len, seed) => {
                    let data = pattern(len, seed);
                    w.write_at(off as u64, &data).expect("write");
                    if len > 0 {
                        model.resize(model.len().max(off + len), 0);
                        model[off..off + len].copy_from_slice(&data);
                    }
                }
                Op::SetLen(len) => {
                    w.set_len(len as u64).expect("set_len");
                    model.resize(len, 0);
                }
                Op::Finish => check_finished(&w.finish().expect("finish"), &model, &store, "mid"),
            }
            assert_eq!(w.len(), model.len() as u64);
        }
        assert_same_bytes(&writer_content(&mut w), &model, "model content");
        check_finished(&w.finish().expect("finish"), &model, &store, "final");
    }
}
