//! Tests of the large-file store (`pond::large_files`) and the hybrid writer
//! (`pond::fs::hybrid_writer`). Sizes are written relative to `LARGE_FILE_THRESHOLD` and
//! `CHUNK_SIZE`; byte comparisons report the first differing offset instead of dumping buffers.

use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, BinaryArray, Int64Array, RecordBatch};
use parquet::arrow::ArrowWriter;
use pond::config::{CHUNK_SIZE, LARGE_FILE_THRESHOLD, Threshold};
use pond::fs::hybrid_writer::{Finished, HybridWriter};
use pond::large_files::StoreError as E;
use pond::large_files::chunked::{COL_DATA, arrow_schema, writer_properties};
use pond::large_files::*;
use pond::layout::STORE_TMP_DIR;
use proptest::prelude::{Just, ProptestConfig, Strategy, any, prop_oneof, proptest};

const C: usize = CHUNK_SIZE as usize;
const T: usize = LARGE_FILE_THRESHOLD as usize;

/// Panics naming the first differing offset (never printing the buffers).
fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if let Some(i) = got.iter().zip(want).position(|(g, w)| g != w) {
        let (g, w) = (got[i], want[i]);
        panic!("{what}: first difference at offset {i}: got {g:#04x}, want {w:#04x}");
    }
    let (g, w) = (got.len(), want.len());
    assert_eq!(g, w, "{what}: equal up to offset {} but lengths differ", g.min(w));
}

/// Deterministic pseudo-random bytes (xorshift), different per seed.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 24) as u8
    };
    (0..len).map(|_| next()).collect()
}

fn b3(data: &[u8]) -> Blake3Hash {
    Blake3Hash::from(blake3::hash(data))
}

fn sha256(data: &[u8]) -> Sha256Digest {
    use sha2::Digest;
    Sha256Digest(sha2::Sha256::digest(data).into())
}

fn store() -> (tempfile::TempDir, LargeFileStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LargeFileStore::new(dir.path());
    store.create_dirs().expect("create_dirs");
    (dir, store)
}

fn writer(dir: &Path, store: &LargeFileStore) -> HybridWriter {
    HybridWriter::new(Threshold::default(), dir.to_path_buf(), store.clone())
}

/// Stores `data` and opens it.
fn put_open(store: &LargeFileStore, data: &[u8]) -> (PutOutcome, LargeFileReader) {
    let out = store.put_bytes(data).expect("put");
    (out.clone(), store.open(&out.hash).expect("open"))
}

fn open_err(store: &LargeFileStore, hash: &Blake3Hash) -> StoreError {
    store.open(hash).expect_err("open must fail")
}

fn read_all(r: &LargeFileReader) -> Vec<u8> {
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
    let tmp = store.dir().join(STORE_TMP_DIR);
    fs::read_dir(tmp).map(|d| d.count()).unwrap_or(0)
}

/// Checks what `finish` produced against the expected content, and reads large objects back.
fn check_finished(f: &Finished, want: &[u8], store: &LargeFileStore, what: &str) {
    let inline = Threshold::default().is_inline(want.len() as u64);
    match f {
        Finished::Inline { bytes, hash, sha256: s } => {
            assert!(inline, "{what}: inline but {} bytes", want.len());
            assert_same_bytes(bytes, want, what);
            assert_eq!((*hash, *s), (b3(want), sha256(want)), "{what}: hashes");
        }
        Finished::Large(out) => {
            assert!(!inline, "{what}: large but {} bytes", want.len());
            assert_eq!((out.hash, out.sha256), (b3(want), sha256(want)), "{what}");
            assert_eq!(out.size, want.len() as u64);
            let r = store.open(&out.hash).expect("open");
            assert_same_bytes(&read_all(&r), want, what);
        }
    }
}

#[test]
fn hashes_match_blake3_and_sha256_for_many_sizes() {
    let small = [0, 1, 1023, 1024, 1025, C - 1, C, C + 1, 2 * C];
    let large = [2 * C + 1, 3 * C + 7, 4 * C, 5 * C, 8 * C + 1, 17 * C + 1];
    for size in small.into_iter().chain(large) {
        let data = pattern(size, size as u64);
        let s = hash::summarize(&data);
        assert_eq!((s.root, s.sha256), (b3(&data), sha256(&data)), "size {size}");
        assert_eq!(s.size, size as u64);
        let n = chunk_count(size as u64);
        assert_eq!(s.chunk_hashes.len() as u64, n);
        assert_eq!(root_from_chunk_hashes(&s.chunk_hashes), Some(s.root));
        for (i, h) in s.chunk_hashes.iter().enumerate() {
            let chunk = &data[(i * C).min(size)..((i + 1) * C).min(size)];
            assert_eq!(chunk_hash(i as u64, n, chunk), *h, "chunk {i}, size {size}");
        }
        // Any slicing of the input gives the same summary, and summary() does not consume.
        for piece in [1, 7, 1000, 4096, C + 3] {
            let mut h = StreamHasher::new();
            for (k, part) in data.chunks(piece).enumerate() {
                h.update(part);
                if k == 3 {
                    let fed = &data[..(4 * piece).min(size)];
                    assert_eq!(h.summary().root, b3(fed), "snapshot");
                }
            }
            assert_eq!(h.summary(), s, "size {size} fed in pieces of {piece}");
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
    let s = sha256(&data);
    assert_eq!(Sha256Digest::from_hex(&s.to_string()), Some(s));
    // If b3sum is installed, it must agree with the object name.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    fs::write(&path, &data).expect("write");
    let b3sum = std::process::Command::new("b3sum").arg("--no-names").arg(&path).output();
    if let Ok(out) = b3sum {
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), h.to_string());
    }
}

#[test]
fn put_names_object_by_blake3_and_leaves_no_temp() {
    let (_d, store) = store();
    let data = pattern(3 * C + 11, 1);
    let (out, r) = put_open(&store, &data);
    assert_eq!((out.hash, out.sha256, out.existed), (b3(&data), sha256(&data), false));
    let name = store.object_path(&out.hash).file_name().map(|n| n.to_owned());
    assert_eq!(name, Some(format!("{}.parquet", out.hash).into()));
    assert_eq!(tmp_entries(&store), 0, "temp left behind");
    assert_eq!(store.list().expect("list"), vec![out.hash]);
    assert_eq!((r.hash(), r.sha256(), r.size()), (out.hash, out.sha256, data.len() as u64));
    assert_same_bytes(&read_all(&r), &data, "read back");
    r.verify().expect("verify");
    // Empty content is one empty chunk.
    let (empty, r) = put_open(&store, &[]);
    assert_eq!(empty.hash, b3(&[]));
    assert_eq!(r.read_at(0, &mut [0u8; 8]).expect("read"), 0);
    r.verify().expect("verify empty");
}

#[test]
fn dedup_same_content_is_stored_once() {
    let (d, store) = store();
    let data = pattern(2 * C + 3, 2);
    let first = store.put_bytes(&data).expect("put");
    let path = store.object_path(&first.hash);
    let mtime = || fs::metadata(&path).and_then(|m| m.modified()).expect("mtime");
    let before = mtime();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let second = store.put_bytes(&data).expect("put again");
    assert!(second.existed && second.hash == first.hash);
    // With known hashes nothing is read: a write-only source would fail any read.
    let wo = File::create(d.path().join("write-only")).expect("create");
    let known = hash::summarize(&data);
    let third = store.put_file(&wo, data.len() as u64, Some(&known));
    assert!(third.expect("put known").existed);
    assert_eq!(store.list().expect("list"), vec![first.hash]);
    assert_eq!(mtime(), before, "existing object rewritten");
    assert_eq!(tmp_entries(&store), 0);
}

#[test]
fn put_file_reads_source_and_checks_known_hashes() {
    let (d, store) = store();
    let data = pattern(4 * C + 9, 3);
    let size = data.len() as u64;
    fs::write(d.path().join("src"), &data).expect("write src");
    let src = File::open(d.path().join("src")).expect("open src");
    let mut wrong = hash::summarize(&data);
    wrong.chunk_hashes[2][0] ^= 1;
    let changed = store.put_file(&src, size, Some(&wrong)).expect_err("changed");
    assert!(matches!(changed, E::ContentMismatch { .. }), "{changed}");
    let short = store.put_file(&src, size + 1, None).expect_err("short");
    assert!(matches!(short, E::ReadSource { .. }), "{short}");
    assert_eq!(tmp_entries(&store), 0, "failed puts leave no temp");
    let out = store.put_file(&src, size, Some(&hash::summarize(&data)));
    let r = store.open(&out.expect("put").hash).expect("open");
    assert_same_bytes(&read_all(&r), &data, "put_file");
}

#[test]
fn hybrid_writer_stays_inline_up_to_the_threshold_then_spills() {
    let (d, store) = store();
    let big = 5 * C + 123;
    let sizes = [(T / 2, true), (T - 1, true), (T, true), (T + 1, false), (big, false)];
    for (size, inline) in sizes {
        let what = format!("size T{:+}", size as i64 - T as i64);
        let data = pattern(size, size as u64);
        let mut w = writer(d.path(), &store);
        for (k, part) in data.chunks(4096).enumerate() {
            w.write_at((k * 4096) as u64, part).expect("write");
        }
        assert_eq!(w.is_spilled(), !inline, "{what}: spilled");
        assert_same_bytes(&writer_content(&mut w), &data, &what);
        let f = w.finish().expect("finish");
        assert_eq!(matches!(f, Finished::Inline { .. }), inline, "{what}");
        check_finished(&f, &data, &store, &what);
    }
    let r = store.open(&b3(&pattern(big, big as u64))).expect("open");
    assert_eq!(r.chunk_count(), 6);
    r.verify().expect("verify");
}

#[test]
fn incremental_hash_over_many_small_writes() {
    let (d, store) = store();
    let data = pattern(3 * C + T / 3, 6);
    let mut w = writer(d.path(), &store);
    let mut pos = 0;
    let sizes = [1usize, 3, 100, 4095, 7, C, 13];
    for (k, size) in sizes.iter().cycle().enumerate() {
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
    let all = [data, extra].concat();
    check_finished(&w.finish().expect("finish"), &all, &store, "after finish");
}

#[test]
fn writes_at_offsets_truncate_extend_sparse() {
    let (d, store) = store();
    let mut w = writer(d.path(), &store);
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
    // Spilled, then truncated below the threshold: finishes inline.
    w.set_len((T / 2) as u64).expect("truncate");
    assert!(w.is_spilled());
    let f = w.finish().expect("finish");
    assert!(matches!(f, Finished::Inline { .. }));
    check_finished(&f, &model[..T / 2], &store, "truncated below threshold");
}

/// Entries in a directory (spill dir, or the store's temp dir).
fn entries(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn a_file_written_front_to_back_streams_into_its_object_with_no_spill_file() {
    let (d, store) = store();
    let spill = d.path().join("spill");
    fs::create_dir(&spill).expect("spill dir");
    // Past the size where SHA-256 moves to its own thread, ending mid-chunk.
    let size = stream::SHA_THREAD_AFTER as usize + 3 * C + 7;
    let data = pattern(size, 40);
    let mut w = HybridWriter::new(Threshold::default(), spill.clone(), store.clone());
    for part in data.chunks(4096 + 17) {
        w.write_at(w.len(), part).expect("append");
    }
    assert!(w.is_streaming(), "appends past the threshold stream");
    assert_eq!(entries(&spill), 0, "nothing spilled");
    assert_eq!(tmp_entries(&store), 1, "one temp object under way");
    check_finished(&w.finish().expect("finish"), &data, &store, "streamed");
    assert_eq!(tmp_entries(&store), 0, "the temp object became the object");
    // The finished writer serves reads from the object, and an append streams a new one.
    assert_same_bytes(&writer_content(&mut w), &data, "read after finish");
    let more = pattern(C + 3, 41);
    w.write_at(w.len(), &more).expect("append after finish");
    assert!(w.is_streaming());
    check_finished(&w.finish().expect("finish"), &[data, more].concat(), &store, "streamed again");
    // Exactly the threshold, then one byte more: the byte that crosses it starts the stream.
    let mut w = HybridWriter::new(Threshold::default(), spill.clone(), store.clone());
    let edge = pattern(T + 1, 42);
    w.write_at(0, &edge[..T]).expect("up to T");
    assert!(!w.is_spilled(), "exactly T stays in memory");
    w.write_at(T as u64, &edge[T..]).expect("T + 1");
    assert!(w.is_streaming());
    check_finished(&w.finish().expect("finish"), &edge, &store, "T + 1 streamed");
}

#[test]
fn reading_or_patching_a_streaming_file_moves_it_to_the_spill_file() {
    let (d, store) = store();
    let spill = d.path().join("spill");
    fs::create_dir(&spill).expect("spill dir");
    let mut model = pattern(4 * C + 5, 43);
    let mut w = HybridWriter::new(Threshold::default(), spill.clone(), store.clone());
    w.write_at(0, &model).expect("write");
    assert!(w.is_streaming());
    let mut head = vec![0u8; 100];
    assert_eq!(w.read_at(C as u64 - 50, &mut head).expect("read"), 100);
    assert_same_bytes(&head, &model[C - 50..C + 50], "read of streamed content");
    assert!(!w.is_streaming() && w.is_spilled(), "a read moves the stream to the spill file");
    assert_eq!(tmp_entries(&store), 0, "the unfinished object is gone");
    let patch = pattern(300, 44);
    w.write_at(2 * C as u64 - 150, &patch).expect("patch");
    model[2 * C - 150..2 * C + 150].copy_from_slice(&patch);
    check_finished(&w.finish().expect("finish"), &model, &store, "patched after streaming");
    // A write before the end moves a stream too.
    let mut w = HybridWriter::new(Threshold::default(), spill, store.clone());
    let mut model = pattern(3 * C, 45);
    w.write_at(0, &model).expect("write");
    w.write_at(10, b"patched").expect("patch");
    model[10..17].copy_from_slice(b"patched");
    assert!(!w.is_streaming());
    check_finished(&w.finish().expect("finish"), &model, &store, "overwritten while streaming");
}

#[test]
fn from_large_then_modify() {
    let (d, store) = store();
    let data = pattern(4 * C + 99, 12);
    let (out, r) = put_open(&store, &data);
    let dir = d.path().to_path_buf();
    let mut w = HybridWriter::from_large(
        Threshold::default(),
        dir.clone(),
        store.clone(),
        Arc::new(store.open(&out.hash).expect("open")),
    );
    assert_eq!(w.len(), data.len() as u64);
    // Unmodified: finishing gives the same object back (dedup).
    match w.finish().expect("finish") {
        Finished::Large(o) => assert!(o.existed && o.hash == out.hash),
        other => panic!("expected large, got {other:?}"),
    }
    let mut model = data.clone();
    let patch = pattern(300, 13);
    w.write_at((2 * C - 150) as u64, &patch).expect("patch");
    model[2 * C - 150..2 * C + 150].copy_from_slice(&patch);
    w.set_len((3 * C + 1) as u64).expect("truncate");
    model.truncate(3 * C + 1);
    check_finished(&w.finish().expect("finish"), &model, &store, "modified");
    // And from inline bytes.
    let (small, more) = (pattern(T / 3, 14), pattern(T, 15));
    let mut w = HybridWriter::from_bytes(Threshold::default(), dir, store.clone(), &small).expect("from");
    w.write_at(small.len() as u64, &more).expect("grow");
    let model = [small, more].concat();
    check_finished(&w.finish().expect("finish"), &model, &store, "grown");
    // An append to a stored object streams a copy of it, then the new bytes.
    let mut w = HybridWriter::from_large(Threshold::default(), d.path().to_path_buf(), store.clone(), Arc::new(r));
    let tail = pattern(C / 3, 16);
    w.write_at(w.len(), &tail).expect("append");
    assert!(w.is_streaming());
    check_finished(&w.finish().expect("finish"), &[data.clone(), tail].concat(), &store, "appended to stored");
    // Under a larger threshold (a mount's `threshold=`) an object that fits comes back inline.
    let roomy = Threshold(8 * C as u64);
    let r = Arc::new(store.open(&out.hash).expect("open"));
    let mut w = HybridWriter::from_large(roomy, d.path().to_path_buf(), store.clone(), r);
    w.write_at(w.len(), b"tail").expect("append");
    assert!(!w.is_spilled(), "fits the threshold: back in memory");
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
    assert_send_sync::<LargeFileReader>();
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
fn every_chunk_is_one_page_and_middle_read_skips_pages() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::file::serialized_reader::ReadOptionsBuilder;
    let (_d, store) = store();
    let n = chunked::MAX_ROW_GROUP_CHUNKS + 3;
    let data = pattern(n * C - 5, 18);
    let (out, r) = put_open(&store, &data);
    let file = File::open(store.object_path(&out.hash)).expect("open file");
    let opts = ReadOptionsBuilder::new().with_page_index().build();
    let pq = SerializedFileReader::new_with_options(file, opts).expect("parquet");
    let meta = pq.metadata();
    assert_eq!(meta.num_row_groups(), 2);
    for (rg, cols) in meta.offset_index().expect("offset index").iter().enumerate() {
        let pages = cols[COL_DATA].page_locations();
        assert_eq!(pages.len() as i64, meta.row_group(rg).num_rows(), "rg {rg}");
        let first_rows = pages.iter().map(|p| p.first_row_index);
        assert!(first_rows.eq(0..pages.len() as i64), "one page per chunk in rg {rg}");
    }
    let before = r.bytes_read_from_disk();
    let mid = (n / 2) * C;
    let mut buf = vec![0u8; 4096];
    r.read_at(mid as u64 + 100, &mut buf).expect("read middle");
    let read = r.bytes_read_from_disk() - before;
    assert!(read < CHUNK_SIZE + 4096, "one middle chunk read {read} bytes from disk");
    assert_same_bytes(&buf, &data[mid + 100..][..4096], "middle read");
    // A second read in the same chunk is served from the cache.
    r.read_at(mid as u64 + 5000, &mut buf).expect("read again");
    assert_eq!(r.bytes_read_from_disk() - before, read, "cached chunk re-read");
}

/// Where chunk `k`'s bytes start inside the object file.
fn chunk_offset_in_file(file: &[u8], data: &[u8], k: usize) -> usize {
    let needle = &data[k * C..k * C + 64];
    file.windows(needle.len()).position(|w| w == needle).expect("chunk bytes on disk")
}

#[test]
fn corrupt_chunk_is_reported_and_other_chunks_still_read() {
    let (_d, store) = store();
    let data = pattern(5 * C + 1, 19);
    let out = store.put_bytes(&data).expect("put");
    let path = store.object_path(&out.hash);
    let mut file = fs::read(&path).expect("read object");
    let at = chunk_offset_in_file(&file, &data, 2) + 100;
    file[at] ^= 0x5a;
    fs::write(&path, &file).expect("write object");
    let r = store.open(&out.hash).expect("open still succeeds: hashes are intact");
    let err = r.read_at((2 * C + 10) as u64, &mut [0u8; 10]).expect_err("corrupt");
    assert!(matches!(err, E::CorruptChunk { object, chunk: 2 } if object == out.hash));
    let msg = err.to_string();
    assert!(msg.contains(&out.hash.to_hex()) && msg.contains("chunk 2"), "{msg}");
    for k in [0, 1, 3, 4, 5] {
        let chunk = r.read_chunk(k as u64).expect("other chunk");
        assert_same_bytes(&chunk, &data[k * C..((k + 1) * C).min(data.len())], "chunk");
    }
    let errs = r.verify().expect_err("verify must fail");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(matches!(errs[0], E::CorruptChunk { chunk: 2, .. }));
}

#[test]
fn storing_content_again_replaces_a_damaged_object_instead_of_deduplicating_against_it() {
    // An object streamed with deferred durability can be torn by a crash before its sync; no
    // commit references it, but the same content written later must not be deduplicated to it.
    let (d, store) = store();
    let data = pattern(3 * C + 9, 46);
    let out = store.put_bytes(&data).expect("put");
    let path = store.object_path(&out.hash);
    let mut file = fs::read(&path).expect("read object");
    let at = chunk_offset_in_file(&file, &data, 1) + 7;
    file[at] ^= 0x01;
    fs::write(&path, &file).expect("write object");
    assert!(store.contains(&out.hash) && !store.contains_intact(&out.hash));
    let mut w = HybridWriter::new(Threshold::default(), d.path().to_path_buf(), store.clone());
    w.write_at(0, &data).expect("write");
    assert!(w.is_streaming());
    match w.finish().expect("finish") {
        Finished::Large(o) => assert!(!o.existed, "the damaged object was replaced, not reused"),
        other => panic!("expected a large object, got {other:?}"),
    }
    assert!(store.contains_intact(&out.hash), "the object is whole again");
    store.make_durable().expect("make_durable");
    // And through put_bytes too.
    let mut file = fs::read(&path).expect("read object");
    file[at] ^= 0x01;
    fs::write(&path, &file).expect("write object");
    assert!(!store.put_bytes(&data).expect("put again").existed);
    store.open(&out.hash).expect("open").verify().expect("verify");
}

type Kv = Vec<(String, String)>;

/// Rewrites an object file through `edit(chunk_data, chunk_hashes, kv)`, keeping the format.
fn rewrite_object(path: &Path, edit: impl FnOnce(&mut [Vec<u8>], &mut [Vec<u8>], &mut Kv)) {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder as Builder;
    let builder = Builder::try_new(File::open(path).expect("open")).expect("parquet");
    let kvs = builder.metadata().file_metadata().key_value_metadata().cloned();
    let pond_kv = kvs.into_iter().flatten().filter(|kv| kv.key.starts_with("pond."));
    let mut kv: Kv = pond_kv.map(|kv| (kv.key, kv.value.unwrap_or_default())).collect();
    let (mut datas, mut hashes) = (Vec::new(), Vec::new());
    for batch in builder.build().expect("reader") {
        let batch = batch.expect("batch");
        let col = |i: usize| batch.column(i).as_any().downcast_ref::<BinaryArray>().cloned();
        let (h, d) = (col(1).expect("hash"), col(2).expect("data"));
        hashes.extend(h.iter().flatten().map(<[u8]>::to_vec));
        datas.extend(d.iter().flatten().map(<[u8]>::to_vec));
    }
    edit(&mut datas, &mut hashes, &mut kv);
    let file = File::create(path).expect("create");
    let mut w = ArrowWriter::try_new(file, arrow_schema(), Some(writer_properties())).expect("w");
    for (i, (h, d)) in hashes.iter().zip(&datas).enumerate() {
        let cols: Vec<Arc<dyn Array>> = vec![
            Arc::new(Int64Array::from(vec![i as i64])),
            Arc::new(BinaryArray::from_vec(vec![h.as_slice()])),
            Arc::new(BinaryArray::from_vec(vec![d.as_slice()])),
        ];
        w.write(&RecordBatch::try_new(arrow_schema(), cols).expect("batch")).expect("write");
    }
    for (k, v) in kv {
        w.append_key_value_metadata(parquet::file::metadata::KeyValue::new(k, v));
    }
    w.close().expect("close");
}

fn set_kv(kv: &mut Kv, key: &str, value: String) {
    kv.iter_mut().filter(|(k, _)| k == key).for_each(|(_, v)| *v = value.clone());
}

#[test]
fn consistent_tampering_breaks_the_hash_tree() {
    let (_d, store) = store();
    let out = store.put_bytes(&pattern(4 * C + 3, 20)).expect("put");
    let path = store.object_path(&out.hash);
    rewrite_object(&path, |_, _, _| {});
    store.open(&out.hash).expect("a faithful rewrite still opens");
    rewrite_object(&path, |datas, hashes, _| {
        datas[1][7] ^= 1;
        hashes[1] = chunk_hash(1, datas.len() as u64, &datas[1]).to_vec();
    });
    let err = open_err(&store, &out.hash);
    assert!(matches!(err, E::HashTreeMismatch { object } if object == out.hash), "{err}");
    // Metadata naming another object, or an absurd size, is malformed.
    let other = store.put_bytes(&pattern(2 * C, 21)).expect("put").hash;
    let p2 = store.object_path(&other);
    rewrite_object(&p2, |_, _, kv| set_kv(kv, "pond.blake3", out.hash.to_hex()));
    assert!(matches!(open_err(&store, &other), E::Malformed { .. }));
    rewrite_object(&p2, |_, _, kv| set_kv(kv, "pond.size", u64::MAX.to_string()));
    assert!(matches!(open_err(&store, &other), E::Malformed { .. }));
}

#[test]
fn truncated_garbage_and_foreign_files_are_errors_not_panics() {
    let (_d, store) = store();
    let data = pattern(3 * C + 1, 22);
    let out = store.put_bytes(&data).expect("put");
    let (path, hash) = (store.object_path(&out.hash), out.hash);
    let good = fs::read(&path).expect("read");
    let len = good.len();
    let footer_len = u32::from_le_bytes([0, 1, 2, 3].map(|i| good[len - 8 + i])) as usize;
    let footer_start = len - 8 - footer_len;
    let mut cuts = vec![0, 1, 4, 8, 12, len / 2, footer_start, len - 9, len - 1];
    cuts.extend((0..len).step_by(C / 3));
    for cut in cuts {
        fs::write(&path, &good[..cut]).expect("write");
        assert!(store.open(&hash).is_err(), "truncated to {cut} bytes opened");
    }
    // Absurd footer length, then pure garbage.
    let mut absurd = good.clone();
    absurd[len - 8..len - 4].copy_from_slice(&u32::MAX.to_le_bytes());
    for bytes in [absurd, pattern(C, 23), b"PAR1PAR1".to_vec(), Vec::new()] {
        fs::write(&path, &bytes).expect("write");
        assert!(store.open(&hash).is_err(), "garbage opened");
    }
    // Single-byte flips in every metadata byte (hash/index pages, page headers before each
    // chunk, page index, footer): open/read never panic, and what opens returns verified bytes.
    let chunk_pos: Vec<usize> = (0..3).map(|k| chunk_offset_in_file(&good, &data, k)).collect();
    let mut flip_at: Vec<usize> = (4..chunk_pos[0]).collect();
    chunk_pos.iter().for_each(|&p| flip_at.extend(p.saturating_sub(40)..p));
    flip_at.extend(chunk_pos[2] + C..len); // last chunk's page, page index, footer
    for i in flip_at {
        let mut bad = good.clone();
        bad[i] ^= 0xff;
        fs::write(&path, &bad).expect("write");
        let Ok(r) = store.open(&hash) else { continue };
        for k in 0..r.chunk_count() as usize {
            if let Ok(chunk) = r.read_chunk(k as u64) {
                let want = &data[k * C..((k + 1) * C).min(data.len())];
                assert_same_bytes(&chunk, want, &format!("flip at {i}, chunk {k}"));
            }
        }
    }
    // A parquet file with some other schema.
    let ints: Arc<dyn Array> = Arc::new(Int64Array::from(vec![1i64]));
    let foreign = RecordBatch::try_from_iter([("x", ints)]).expect("batch");
    let file = File::create(&path).expect("create");
    let mut w = ArrowWriter::try_new(file, foreign.schema(), None).expect("writer");
    w.write(&foreign).expect("write");
    w.close().expect("close");
    assert!(matches!(open_err(&store, &hash), E::Malformed { .. }));
    assert!(matches!(open_err(&store, &b3(b"absent")), E::NotFound(_)));
}

#[test]
fn list_remove_and_clear_tmp() {
    let (_d, store) = store();
    let a = store.put_bytes(&pattern(C + 1, 24)).expect("put a").hash;
    let b = store.put_bytes(&pattern(2 * C + 1, 25)).expect("put b").hash;
    let dir = store.dir();
    fs::write(dir.join(STORE_TMP_DIR).join("put-crashed.parquet.tmp"), b"x").expect("leftover");
    fs::write(dir.join("notes.txt"), b"x").expect("junk");
    let upper = format!("{}.parquet", a.to_hex().to_uppercase());
    fs::write(dir.join(upper), b"x").expect("junk");
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(store.list().expect("list"), want);
    assert_eq!(store.clear_tmp().expect("clear_tmp"), 1);
    assert_eq!(tmp_entries(&store), 0);
    store.remove(&a).expect("remove");
    assert!(!store.contains(&a));
    assert!(matches!(store.remove(&a), Err(E::NotFound(h)) if h == a));
    assert_eq!(store.list().expect("list"), vec![b]);
}

#[test]
fn io_errors_come_back_from_the_writer_and_the_store() {
    let d = tempfile::tempdir().expect("tempdir");
    fs::write(d.path().join("file-not-dir"), b"x").expect("write");
    let blocked = LargeFileStore::new(&d.path().join("file-not-dir"));
    let mut w = HybridWriter::new(Threshold::default(), d.path().join("no-such-dir"), blocked.clone());
    w.write_at(0, &pattern(T / 2, 26)).expect("in memory: no spill needed");
    assert!(w.write_at((T / 2) as u64, &pattern(T, 27)).is_err(), "streaming must fail");
    assert!(w.write_at(T as u64, &pattern(T, 27)).is_err(), "spill must fail");
    assert!(w.set_len(2 * LARGE_FILE_THRESHOLD).is_err());
    assert_same_bytes(&writer_content(&mut w), &pattern(T / 2, 26), "a failed move leaves memory content as it was");
    let source = std::io::Error::from_raw_os_error(libc::ENOSPC);
    let enospc = E::Io { path: "x".into(), source };
    assert!(enospc.is_enospc() && enospc.raw_os_error() == Some(libc::ENOSPC));
    assert!(!E::NotFound(b3(b"")).is_enospc());
    // A store whose directory cannot be created reports an Io error.
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
    let span = 2 * T + 2 * C;
    prop_oneof![
        3 => (0..C + 100, any::<u64>()).prop_map(|(l, s)| Op::Append(l, s)),
        3 => (0..span, 0..C + 100, any::<u64>()).prop_map(|(o, l, s)| Op::Write(o, l, s)),
        1 => (0..span).prop_map(Op::SetLen),
        1 => Just(Op::Finish),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn hybrid_writer_matches_a_vec_model(ops in proptest::collection::vec(op(), 1..12)) {
        let (d, store) = store();
        let mut w = writer(d.path(), &store);
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
                Op::Finish => {
                    check_finished(&w.finish().expect("finish"), &model, &store, "mid")
                }
            }
            assert_eq!(w.len(), model.len() as u64);
        }
        assert_same_bytes(&writer_content(&mut w), &model, "model content");
        check_finished(&w.finish().expect("finish"), &model, &store, "final");
    }
}
