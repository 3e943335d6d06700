//! The chunked-parquet format of a large-file object, and the low-level code that writes it,
//! opens it (footer, page index, key-value metadata, hash column) and decodes one chunk.
//!
//! Layout: one row per chunk of [`CHUNK_SIZE`] bytes, columns `index` (int64, chunk number),
//! `hash` (binary, 32 bytes: see [`super::hash`]) and `data` (binary, the chunk bytes), all
//! non-nullable. Every row is its own data page, so with the offset index (page index) a reader
//! fetches and decodes exactly the chunks it touches. Row groups hold at most
//! [`MAX_ROW_GROUP_CHUNKS`] rows, which bounds the writer's buffered memory (16 MiB). `data` is
//! stored uncompressed and without statistics: content is often already compressed and CPU
//! matters more. File key-value metadata names the format, size, hashes and chunk size.
//!
//! File access goes through [`PreadFile`], positional reads only, so one open object can be read
//! from many threads at once (parquet's own `File` reader shares the seek position).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, BinaryArray, Int64Array, RecordBatch};
use arrow::buffer::{Buffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection, RowSelectionPolicy,
    RowSelector,
};
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::metadata::{KeyValue, PageIndexPolicy, ParquetMetaData};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::{ChunkReader, Length};
use parquet::schema::types::ColumnPath;

use super::error::StoreError;
use super::hash::{Blake3Hash, Sha256Digest, chunk_count};
use super::write_behind::WriteBehind;
use crate::config::CHUNK_SIZE;

/// Value of `pond.format` written by this version.
pub const FORMAT_VERSION: &str = "1";
/// Key-value metadata keys.
pub const KEY_FORMAT: &str = "pond.format";
pub const KEY_SIZE: &str = "pond.size";
pub const KEY_BLAKE3: &str = "pond.blake3";
pub const KEY_SHA256: &str = "pond.sha256";
pub const KEY_CHUNK_SIZE: &str = "pond.chunk_size";
/// Column positions (and names: `index`, `hash`, `data`).
pub const COL_INDEX: usize = 0;
pub const COL_HASH: usize = 1;
pub const COL_DATA: usize = 2;
const COLUMN_NAMES: [&str; 3] = ["index", "hash", "data"];
/// Rows (chunks) per row group: 256 × 64 KiB = 16 MiB buffered by the writer at most.
pub const MAX_ROW_GROUP_CHUNKS: usize = 256;

/// The arrow schema of an object file.
pub fn arrow_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(COLUMN_NAMES[COL_INDEX], DataType::Int64, false),
        Field::new(COLUMN_NAMES[COL_HASH], DataType::Binary, false),
        Field::new(COLUMN_NAMES[COL_DATA], DataType::Binary, false),
    ]))
}

/// Writer properties of an object file (see the module doc).
pub fn writer_properties() -> WriterProperties {
    let data = ColumnPath::from(COLUMN_NAMES[COL_DATA]);
    let hash = ColumnPath::from(COLUMN_NAMES[COL_HASH]);
    WriterProperties::builder()
        // One chunk per data page: the row limit is only checked between write batches.
        .set_data_page_row_count_limit(1)
        .set_write_batch_size(1)
        .set_max_row_group_row_count(Some(MAX_ROW_GROUP_CHUNKS))
        .set_dictionary_enabled(false)
        .set_compression(Compression::UNCOMPRESSED)
        // Chunk-level statistics only (no column index); none at all on hash/data.
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_column_statistics_enabled(data, EnabledStatistics::None)
        .set_column_statistics_enabled(hash, EnabledStatistics::None)
        .set_offset_index_disabled(false)
        .build()
}

/// The `pond.*` key-value metadata of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ObjectMeta {
    pub size: u64,
    pub blake3: Blake3Hash,
    pub sha256: Sha256Digest,
}

impl ObjectMeta {
    fn key_values(&self) -> [KeyValue; 5] {
        [
            KeyValue::new(KEY_FORMAT.to_string(), FORMAT_VERSION.to_string()),
            KeyValue::new(KEY_SIZE.to_string(), self.size.to_string()),
            KeyValue::new(KEY_BLAKE3.to_string(), self.blake3.to_hex()),
            KeyValue::new(KEY_SHA256.to_string(), self.sha256.to_hex()),
            KeyValue::new(KEY_CHUNK_SIZE.to_string(), CHUNK_SIZE.to_string()),
        ]
    }

    fn parse(kvs: Option<&Vec<KeyValue>>, path: &Path) -> Result<Self, StoreError> {
        let get = |key: &str| -> Result<&str, StoreError> {
            kvs.and_then(|kvs| kvs.iter().find(|kv| kv.key == key))
                .and_then(|kv| kv.value.as_deref())
                .ok_or_else(|| StoreError::malformed(path, format!("missing metadata {key}")))
        };
        let bad = |key: &str, v: &str| {
            let shown: String = v.chars().take(80).collect();
            StoreError::malformed(path, format!("bad metadata {key}={shown:?}"))
        };
        let format = get(KEY_FORMAT)?;
        if format != FORMAT_VERSION {
            return Err(bad(KEY_FORMAT, format));
        }
        let chunk_size = get(KEY_CHUNK_SIZE)?;
        if chunk_size.parse::<u64>().ok() != Some(CHUNK_SIZE) {
            return Err(bad(KEY_CHUNK_SIZE, chunk_size));
        }
        let size = get(KEY_SIZE)?;
        let size = size.parse::<u64>().map_err(|_| bad(KEY_SIZE, size))?;
        let b3 = get(KEY_BLAKE3)?;
        let blake3 = Blake3Hash::from_hex(b3).ok_or_else(|| bad(KEY_BLAKE3, b3))?;
        let sha = get(KEY_SHA256)?;
        let sha256 = Sha256Digest::from_hex(sha).ok_or_else(|| bad(KEY_SHA256, sha))?;
        Ok(ObjectMeta { size, blake3, sha256 })
    }
}

/// Writes the rows of one object file, chunk by chunk, with bounded memory.
pub(crate) struct ChunkWriter {
    writer: ArrowWriter<File>,
    schema: SchemaRef,
    next_index: u64,
    /// Hands the file's bytes to the disk as it grows (see [`WriteBehind`]).
    behind: WriteBehind,
}

impl ChunkWriter {
    /// Starts an object file on `file` (positioned at 0; `path` is for error messages).
    pub(crate) fn new(file: File, path: &Path) -> Result<Self, StoreError> {
        let schema = arrow_schema();
        // No embedded arrow schema: the parquet schema says it all, and the footer stays small.
        let options = ArrowWriterOptions::new().with_properties(writer_properties()).with_skip_arrow_metadata(true);
        let writer = ArrowWriter::try_new_with_options(file, schema.clone(), options)
            .map_err(|e| StoreError::parquet(path, e))?;
        Ok(ChunkWriter { writer, schema, next_index: 0, behind: WriteBehind::default() })
    }

    /// Appends the next chunk (its hash and bytes) as one row / one data page.
    pub(crate) fn write_chunk(&mut self, hash: &[u8; 32], data: Bytes, path: &Path) -> Result<(), StoreError> {
        let index = i64::try_from(self.next_index).map_err(|_| StoreError::InvalidInput("too many chunks".into()))?;
        let len = i32::try_from(data.len()).map_err(|_| StoreError::InvalidInput("chunk too large".into()))?;
        let offsets = OffsetBuffer::new(vec![0i32, len].into());
        let data = BinaryArray::try_new(offsets, Buffer::from(data), None).map_err(|e| StoreError::arrow(path, e))?;
        let batch = RecordBatch::try_new(
            self.schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![index])),
                Arc::new(BinaryArray::from_vec(vec![&hash[..]])),
                Arc::new(data),
            ],
        )
        .map_err(|e| StoreError::arrow(path, e))?;
        self.writer.write(&batch).map_err(|e| StoreError::parquet(path, e))?;
        self.next_index += 1;
        let written = self.writer.bytes_written() as u64;
        self.behind.advance(self.writer.inner(), written).map_err(|e| StoreError::io(path, e))
    }

    /// Writes the footer with the object's metadata and flushes everything to the file (no fsync).
    pub(crate) fn finish(mut self, meta: &ObjectMeta, path: &Path) -> Result<(), StoreError> {
        for kv in meta.key_values() {
            self.writer.append_key_value_metadata(kv);
        }
        self.writer.close().map_err(|e| StoreError::parquet(path, e))?;
        Ok(())
    }
}

/// A `ChunkReader` over a shared file using positional reads only (thread-safe, no shared seek
/// position); it refuses ranges past the end before allocating, and counts the bytes it reads.
#[derive(Clone)]
pub(crate) struct PreadFile {
    file: Arc<File>,
    len: u64,
    bytes_read: Arc<AtomicU64>,
}

impl PreadFile {
    pub(crate) fn new(file: File, len: u64) -> Self {
        PreadFile { file: Arc::new(file), len, bytes_read: Arc::new(AtomicU64::new(0)) }
    }

    /// Total bytes read from the file through this reader (and its clones).
    pub(crate) fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    fn check_range(&self, start: u64, length: u64) -> Result<(), ParquetError> {
        match start.checked_add(length) {
            Some(end) if end <= self.len => Ok(()),
            _ => {
                Err(ParquetError::EOF(format!("range {start}+{length} past the end of the file ({} bytes)", self.len)))
            }
        }
    }
}

impl Length for PreadFile {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for PreadFile {
    type T = PreadReader;

    fn get_read(&self, start: u64) -> Result<PreadReader, ParquetError> {
        self.check_range(start, 0)?;
        Ok(PreadReader { src: self.clone(), pos: start })
    }

    fn get_bytes(&self, start: u64, length: usize) -> Result<Bytes, ParquetError> {
        self.check_range(start, length as u64)?;
        let mut buf = vec![0u8; length];
        self.file.read_exact_at(&mut buf, start)?;
        self.bytes_read.fetch_add(length as u64, Ordering::Relaxed);
        Ok(Bytes::from(buf))
    }
}

/// Sequential reader over a [`PreadFile`] with its own position.
pub(crate) struct PreadReader {
    src: PreadFile,
    pos: u64,
}

impl Read for PreadReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.src.len.saturating_sub(self.pos);
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.src.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        self.src.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Everything loaded when an object is opened.
pub(crate) struct OpenedObject {
    pub meta: ArrowReaderMetadata,
    pub kv: ObjectMeta,
    pub chunk_hashes: Vec<[u8; 32]>,
    /// First chunk number of each row group, plus the total at the end.
    pub rg_starts: Vec<u64>,
}

/// Runs parquet code that might panic on hostile bytes, turning a panic into an error.
fn guarded<T>(path: &Path, what: &str, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(StoreError::malformed(path, format!("parquet panicked while {what}"))))
}

/// Loads and checks the footer, page index, metadata and hash column of an object file.
/// Does not check the hashes against the name (the caller does).
pub(crate) fn open_object(file: &PreadFile, path: &Path) -> Result<OpenedObject, StoreError> {
    guarded(path, "opening", || open_object_inner(file, path))
}

fn open_object_inner(file: &PreadFile, path: &Path) -> Result<OpenedObject, StoreError> {
    // An embedded arrow schema is ignored (its flatbuffer decoder is not hardened).
    let options =
        ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required).with_skip_arrow_metadata(true);
    let meta = ArrowReaderMetadata::load(file, options).map_err(|e| StoreError::parquet(path, e))?;
    check_schema(&meta, path)?;
    let pq = meta.metadata();
    let kv = ObjectMeta::parse(pq.file_metadata().key_value_metadata(), path)?;

    // Row counts: every row group positive, summing to the chunk count the size implies.
    let expected = chunk_count(kv.size);
    let mut rg_starts = Vec::with_capacity(pq.num_row_groups() + 1);
    let mut total: u64 = 0;
    for rg in pq.row_groups() {
        let rows = u64::try_from(rg.num_rows())
            .ok()
            .filter(|&r| r > 0)
            .ok_or_else(|| StoreError::malformed(path, "row group with no rows"))?;
        rg_starts.push(total);
        total = total.saturating_add(rows);
    }
    rg_starts.push(total);
    if total != expected {
        return Err(StoreError::malformed(path, format!("{total} chunks but size {} needs {expected}", kv.size)));
    }
    check_layout(pq, file.len()).map_err(|reason| StoreError::malformed(path, reason))?;
    let chunk_hashes = read_hash_column(file, &meta, path, expected)?;
    Ok(OpenedObject { meta, kv, chunk_hashes, rg_starts })
}

/// Checks that every column chunk and every page of the offset index lies within the file
/// (parquet asserts on negative offsets rather than returning an error).
fn check_layout(pq: &ParquetMetaData, file_len: u64) -> Result<(), String> {
    let within = |start: i64, len: i64| {
        u64::try_from(start)
            .is_ok_and(|s| u64::try_from(len).is_ok_and(|l| s.checked_add(l).is_some_and(|e| e <= file_len)))
    };
    let offset_index = pq.offset_index().ok_or("no offset index")?;
    if offset_index.len() != pq.num_row_groups() {
        return Err("offset index does not cover every row group".into());
    }
    for (rg, (group, index)) in pq.row_groups().iter().zip(offset_index).enumerate() {
        if index.len() != group.num_columns() {
            return Err(format!("row group {rg}: offset index misses columns"));
        }
        for (col, pages) in group.columns().iter().zip(index) {
            let start = col.dictionary_page_offset().unwrap_or(col.data_page_offset());
            let pages_ok = pages.page_locations().iter().all(|p| within(p.offset, p.compressed_page_size.into()));
            if !within(start, col.compressed_size()) || !pages_ok {
                return Err(format!("row group {rg}: {} outside the file", col.column_path()));
            }
        }
    }
    Ok(())
}

fn check_schema(meta: &ArrowReaderMetadata, path: &Path) -> Result<(), StoreError> {
    let want = arrow_schema();
    let got = meta.schema();
    let same = got.fields().len() == want.fields().len()
        && got
            .fields()
            .iter()
            .zip(want.fields())
            .all(|(g, w)| g.name() == w.name() && g.data_type() == w.data_type() && !g.is_nullable())
        && meta.parquet_schema().num_columns() == want.fields().len();
    if same { Ok(()) } else { Err(StoreError::malformed(path, format!("unexpected schema {:?}", got.fields()))) }
}

fn read_hash_column(
    file: &PreadFile,
    meta: &ArrowReaderMetadata,
    path: &Path,
    expected: u64,
) -> Result<Vec<[u8; 32]>, StoreError> {
    let mask = ProjectionMask::leaves(meta.parquet_schema(), [COL_HASH]);
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file.clone(), meta.clone())
        .with_projection(mask)
        .with_batch_size(4096)
        .build()
        .map_err(|e| StoreError::parquet(path, e))?;
    // Grown as decoded (never sized from metadata numbers alone).
    let mut hashes = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| StoreError::arrow(path, e))?;
        let col = binary_column(&batch, path)?;
        for v in col.iter().flatten() {
            let h: [u8; 32] = v.try_into().map_err(|_| {
                StoreError::malformed(path, format!("chunk {} hash is {} bytes", hashes.len(), v.len()))
            })?;
            hashes.push(h);
        }
        if hashes.len() as u64 > expected {
            break;
        }
    }
    if hashes.len() as u64 != expected {
        return Err(StoreError::malformed(path, format!("{} chunk hashes, expected {expected}", hashes.len())));
    }
    Ok(hashes)
}

/// The single projected column of `batch`, which must be binary without nulls.
fn binary_column<'a>(batch: &'a RecordBatch, path: &Path) -> Result<&'a BinaryArray, StoreError> {
    batch
        .column(0)
        .as_any()
        .downcast_ref::<BinaryArray>()
        .filter(|col| col.null_count() == 0)
        .ok_or_else(|| StoreError::malformed(path, "column is not binary without nulls"))
}

/// Decodes row `row` of row group `rg` (the `data` column only), fetching just that row's page.
/// Any error other than [`StoreError::Io`] means the chunk's bytes on disk are bad.
pub(crate) fn decode_chunk(
    file: &PreadFile,
    meta: &ArrowReaderMetadata,
    rg: usize,
    row: u64,
    rg_rows: u64,
    path: &Path,
) -> Result<Bytes, StoreError> {
    guarded(path, "decoding a chunk", || {
        let to_usize = |n: u64| usize::try_from(n).map_err(|_| StoreError::malformed(path, "row out of range"));
        let mut selectors = Vec::with_capacity(3);
        if row > 0 {
            selectors.push(RowSelector::skip(to_usize(row)?));
        }
        selectors.push(RowSelector::select(1));
        let after = rg_rows.saturating_sub(row + 1);
        if after > 0 {
            selectors.push(RowSelector::skip(to_usize(after)?));
        }
        let mask = ProjectionMask::leaves(meta.parquet_schema(), [COL_DATA]);
        let mut reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file.clone(), meta.clone())
            .with_projection(mask)
            .with_row_groups(vec![rg])
            .with_row_selection(RowSelection::from(selectors))
            // Always skip pages through the offset index, never decode-then-mask.
            .with_row_selection_policy(RowSelectionPolicy::Selectors)
            .with_batch_size(1)
            .build()
            .map_err(|e| StoreError::parquet(path, e))?;
        let batch = reader
            .next()
            .ok_or_else(|| StoreError::malformed(path, "chunk row missing"))?
            .map_err(|e| StoreError::arrow(path, e))?;
        let col = binary_column(&batch, path)?;
        if col.len() != 1 {
            return Err(StoreError::malformed(path, "not exactly one chunk row"));
        }
        Ok(Bytes::copy_from_slice(col.value(0)))
    })
}
