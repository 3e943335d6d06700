//! The parquet files of the large-file store, and the low-level code that writes and opens them.
//!
//! Three kinds, told apart by the `pond.format` key of the file's metadata:
//!
//! - **Object, format 2** (`_large_files/<b3>.parquet`, what pond writes now): the *manifest* of one
//!   content. One row per chunk: `index` (int64), `hash` (binary, 32 bytes: the chunk's BLAKE3
//!   chaining value, see [`super::hash`]), and where the chunk's bytes are: `pack` (the layout name of
//!   the file holding them), `offset` and `len` (the byte range of the bytes in that file). No chunk
//!   data: a manifest is a few dozen bytes per 64 KiB chunk, so a version that changes one chunk of a
//!   1 GiB file costs one chunk and a ~0.5 MiB manifest. Its name is the `b3sum` of the content, and
//!   the chunk hashes merge into that name, so the name authenticates every chunk hash, and each
//!   chunk's bytes are checked against its hash before they are returned: the locations need no trust.
//! - **Object, format 1** (written by pond before chunk-level storage; still read): the content itself.
//!   Rows `index`, `hash`, `data` (the chunk's bytes). It names its own chunks' locations.
//! - **Pack, format `pack`** (`_large_files/packs/<id>.parquet`): chunk data that manifests point
//!   into. Rows `index` (the chunk's number in the content it was written for), `hash` (its chaining
//!   value at that position), `data`. A pack's name is a random 256-bit id in hex: its bytes are
//!   authenticated by the manifests that point into it, so it needs no content name, and a pack
//!   written again (the same content stored after a restart) never collides with an older one,
//!   damaged or not, that other versions' manifests point into.
//!
//! In format 1 and packs every row of `data` is its own data page, stored PLAIN and uncompressed
//! (content is often compressed already, and CPU matters more), without statistics. So a chunk's
//! bytes are the last `len` bytes of its page, and the page index (offset index) locates them: a
//! reader fetches exactly those bytes (one `pread`, or one ranged GET of a remote) and never decodes
//! the page. The 4 bytes before them are the PLAIN length prefix, checked as a sanity test.
//!
//! Pages of pond's own making are small, but a file from a remote is hostile until checked: before
//! any column is decoded, its footer and the pages parquet will decode are checked against
//! `STORE_LIMITS` (see [`crate::parquet_bounds`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, BinaryArray, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::ArrowSchemaConverter;
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::basic::{Compression, Encoding};
use parquet::column::page::{CompressedPage, Page, PageWriteSpec, PageWriter};
use parquet::errors::ParquetError;
use parquet::file::metadata::{
    ColumnChunkMetaData, FileMetaData, KeyValue, OffsetIndexBuilder, ParquetMetaData, ParquetMetaDataBuilder,
    ParquetMetaDataWriter, RowGroupMetaData,
};
use parquet::file::page_index::offset_index::OffsetIndexMetaData;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::writer::{SerializedPageWriter, TrackedWrite};
use parquet::schema::types::ColumnPath;
use parquet::schema::types::SchemaDescPtr;

use super::direct_sink::{DirectSink, MakeFile, SinkOutput};
use super::error::StoreError;
use super::hash::{Blake3Hash, Sha256Digest, chunk_count, chunk_len};
use crate::config::CHUNK_SIZE;
use crate::layout::PondFile;
use crate::parquet_bounds::{Codec, ParquetBoundsError, ParquetLimits, check_column_pages, check_footer};

/// `pond.format` of a self-contained object (written before chunk-level storage).
pub const FORMAT_FULL: &str = "1";
/// `pond.format` of a manifest object.
pub const FORMAT_MANIFEST: &str = "2";
/// `pond.format` of a pack.
pub const FORMAT_PACK: &str = "pack";
/// Key-value metadata keys.
pub const KEY_FORMAT: &str = "pond.format";
pub const KEY_SIZE: &str = "pond.size";
pub const KEY_BLAKE3: &str = "pond.blake3";
pub const KEY_SHA256: &str = "pond.sha256";
pub const KEY_CHUNK_SIZE: &str = "pond.chunk_size";
/// Column positions (and names) of format 1 objects and of packs.
pub const COL_INDEX: usize = 0;
pub const COL_HASH: usize = 1;
pub const COL_DATA: usize = 2;
const CHUNK_COLUMNS: [&str; 3] = ["index", "hash", "data"];
/// Column names of a manifest, in order.
const MANIFEST_COLUMNS: [&str; 5] = ["index", "hash", "pack", "offset", "len"];
/// Rows (chunks) per row group of a pack: 64 × 64 KiB = 4 MiB buffered by the writer at most.
pub const PACK_ROW_GROUP_CHUNKS: usize = 64;
/// Rows per row group of a manifest (2 MiB of hashes), so a manifest of a huge file never sits in
/// the writer's memory whole.
const MANIFEST_ROW_GROUP_ROWS: usize = 65_536;
/// The PLAIN encoding's length prefix before a chunk's bytes in its page.
const LEN_PREFIX: u64 = 4;

/// The arrow schema of format 1 objects and packs.
pub fn chunk_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(CHUNK_COLUMNS[COL_INDEX], DataType::Int64, false),
        Field::new(CHUNK_COLUMNS[COL_HASH], DataType::Binary, false),
        Field::new(CHUNK_COLUMNS[COL_DATA], DataType::Binary, false),
    ]))
}

fn manifest_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(MANIFEST_COLUMNS[0], DataType::Int64, false),
        Field::new(MANIFEST_COLUMNS[1], DataType::Binary, false),
        Field::new(MANIFEST_COLUMNS[2], DataType::Utf8, false),
        Field::new(MANIFEST_COLUMNS[3], DataType::Int64, false),
        Field::new(MANIFEST_COLUMNS[4], DataType::Int32, false),
    ]))
}

/// Writer properties of a pack (see the module doc): every chunk its own PLAIN, uncompressed page.
pub fn chunk_writer_properties() -> WriterProperties {
    let data = ColumnPath::from(CHUNK_COLUMNS[COL_DATA]);
    let hash = ColumnPath::from(CHUNK_COLUMNS[COL_HASH]);
    WriterProperties::builder()
        // One chunk per data page: the row limit is only checked between write batches.
        .set_data_page_row_count_limit(1)
        .set_write_batch_size(1)
        .set_max_row_group_row_count(Some(PACK_ROW_GROUP_CHUNKS))
        .set_dictionary_enabled(false)
        .set_compression(Compression::UNCOMPRESSED)
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_column_statistics_enabled(data, EnabledStatistics::None)
        .set_column_statistics_enabled(hash, EnabledStatistics::None)
        .set_offset_index_disabled(false)
        .build()
}

fn manifest_writer_properties() -> WriterProperties {
    let col = |i: usize| ColumnPath::from(MANIFEST_COLUMNS[i]);
    WriterProperties::builder()
        .set_max_row_group_row_count(Some(MANIFEST_ROW_GROUP_ROWS))
        .set_dictionary_enabled(false)
        // Index and offset grow by a constant step and len is constant but for the last chunk:
        // delta-packed, they cost almost nothing.
        .set_column_encoding(col(0), Encoding::DELTA_BINARY_PACKED)
        .set_column_encoding(col(3), Encoding::DELTA_BINARY_PACKED)
        .set_column_encoding(col(4), Encoding::DELTA_BINARY_PACKED)
        // A handful of packs per manifest: a dictionary makes each row's pack a few bits.
        .set_column_dictionary_enabled(col(2), true)
        // Nothing left is worth compressing (hashes are random), and a zstd codec made per column
        // of every manifest cost 5% of the daemon's CPU in `tar -x` of 200 KiB files. Manifests
        // written with zstd before are still read.
        .set_compression(Compression::UNCOMPRESSED)
        .set_statistics_enabled(EnabledStatistics::None)
        .build()
}

/// The `pond.*` key-value metadata of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ObjectMeta {
    pub format: ObjectFormat,
    pub size: u64,
    pub blake3: Blake3Hash,
    /// Recorded by format 1 only (format 2 leaves SHA-256 out: it cannot follow a change of a few
    /// chunks without reading the whole content again, and BLAKE3 already names every byte).
    pub sha256: Option<Sha256Digest>,
}

/// Which kind of object file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectFormat {
    /// Format 1: the chunks' bytes are in the object.
    Full,
    /// Format 2: the object lists where its chunks' bytes are.
    Manifest,
}

fn kv(key: &str, value: String) -> KeyValue {
    KeyValue::new(key.to_string(), value)
}

fn get_kv<'a>(kvs: Option<&'a Vec<KeyValue>>, key: &str, path: &Path) -> Result<&'a str, StoreError> {
    kvs.and_then(|kvs| kvs.iter().find(|kv| kv.key == key))
        .and_then(|kv| kv.value.as_deref())
        .ok_or_else(|| StoreError::malformed(path, format!("missing metadata {key}")))
}

fn bad_kv(key: &str, v: &str, path: &Path) -> StoreError {
    let shown: String = v.chars().take(80).collect();
    StoreError::malformed(path, format!("bad metadata {key}={shown:?}"))
}

fn check_chunk_size(kvs: Option<&Vec<KeyValue>>, path: &Path) -> Result<(), StoreError> {
    let chunk_size = get_kv(kvs, KEY_CHUNK_SIZE, path)?;
    if chunk_size.parse::<u64>().ok() != Some(CHUNK_SIZE) {
        return Err(bad_kv(KEY_CHUNK_SIZE, chunk_size, path));
    }
    Ok(())
}

impl ObjectMeta {
    fn parse(kvs: Option<&Vec<KeyValue>>, path: &Path) -> Result<Self, StoreError> {
        let format = match get_kv(kvs, KEY_FORMAT, path)? {
            FORMAT_FULL => ObjectFormat::Full,
            FORMAT_MANIFEST => ObjectFormat::Manifest,
            other => return Err(bad_kv(KEY_FORMAT, other, path)),
        };
        check_chunk_size(kvs, path)?;
        let size = get_kv(kvs, KEY_SIZE, path)?;
        let size = size.parse::<u64>().map_err(|_| bad_kv(KEY_SIZE, size, path))?;
        let b3 = get_kv(kvs, KEY_BLAKE3, path)?;
        let blake3 = Blake3Hash::from_hex(b3).ok_or_else(|| bad_kv(KEY_BLAKE3, b3, path))?;
        let sha256 = match format {
            ObjectFormat::Full => {
                let sha = get_kv(kvs, KEY_SHA256, path)?;
                Some(Sha256Digest::from_hex(sha).ok_or_else(|| bad_kv(KEY_SHA256, sha, path))?)
            }
            ObjectFormat::Manifest => None,
        };
        Ok(ObjectMeta { format, size, blake3, sha256 })
    }
}

/// Where a chunk's bytes are: `len` bytes at `offset` of `file` (an object of format 1 or a pack).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChunkLoc {
    pub file: Arc<PondFile>,
    pub offset: u64,
    pub len: u32,
}

/// A chunk's bytes with room for the 4-byte PLAIN length prefix in front of them, so a pack page
/// is written straight from the buffer the chunk was assembled in (no copy on the write path).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkBuf(Vec<u8>);

impl ChunkBuf {
    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        ChunkBuf(vec![0u8; LEN_PREFIX as usize + len])
    }

    /// A copy of `data`.
    pub fn from_slice(data: &[u8]) -> Self {
        let mut v = Vec::with_capacity(LEN_PREFIX as usize + CHUNK_SIZE as usize);
        v.extend_from_slice(&[0u8; LEN_PREFIX as usize]);
        v.extend_from_slice(data);
        ChunkBuf(v)
    }

    /// The chunk's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0[LEN_PREFIX as usize..]
    }

    /// The chunk's bytes, to change in place.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0[LEN_PREFIX as usize..]
    }

    /// Truncates, or extends with zeros, to `len` bytes.
    pub fn set_len(&mut self, len: usize) {
        self.0.resize(LEN_PREFIX as usize + len, 0);
    }

    /// The PLAIN encoding of the chunk as one value: its length, then its bytes.
    fn into_plain(mut self) -> Result<Bytes, StoreError> {
        let len = u32::try_from(self.0.len() - LEN_PREFIX as usize)
            .map_err(|_| StoreError::InvalidInput("chunk too large".into()))?;
        self.0[..LEN_PREFIX as usize].copy_from_slice(&len.to_le_bytes());
        Ok(Bytes::from(self.0))
    }
}

/// A row group being written: the data pages are on disk, the index and hash pages follow.
#[derive(Default)]
struct OpenGroup {
    /// `(index, hash)` of each row.
    rows: Vec<(u64, [u8; 32])>,
    /// Where each data page is: offset, size with its header.
    pages: Vec<(u64, u64)>,
}

/// Writes a pack page by page: every chunk's page goes to the file the moment it is appended, from
/// the chunk's own buffer, so its place is known at once and nothing is buffered but the current
/// row group's `(index, hash)` pairs. A row group's index and hash columns are written after its
/// data pages (parquet lets a row group's column chunks lie in any order), then the page index and
/// footer at the end. The result reads like any parquet file of [`chunk_schema`]. The bytes go to
/// the file through a [`DirectSink`] (gathered, then written without the page cache).
pub(crate) struct PackWriter {
    sink: TrackedWrite<DirectSink>,
    /// The sink's handle kept to finish it once the footer is written.
    direct: DirectSink,
    schema: SchemaDescPtr,
    group: OpenGroup,
    groups: Vec<RowGroupMetaData>,
    offset_index: Vec<Vec<OffsetIndexMetaData>>,
    rows: usize,
    /// The pack's name: a new random id, known from the start so chunks get their place at once.
    name: Blake3Hash,
}

impl PackWriter {
    /// Starts a pack whose file `make` makes once it outgrows a buffer (see [`DirectSink`];
    /// `path` is for error messages).
    pub(crate) fn new(make: MakeFile, path: &Path) -> Result<Self, StoreError> {
        let schema =
            Arc::new(ArrowSchemaConverter::new().convert(&chunk_schema()).map_err(|e| StoreError::parquet(path, e))?);
        let direct = DirectSink::new(make, path.to_path_buf());
        let mut sink = TrackedWrite::new(direct.clone());
        sink.write_all(b"PAR1").map_err(|e| StoreError::io(path, e))?;
        Ok(PackWriter {
            sink,
            direct,
            schema,
            group: OpenGroup::default(),
            groups: Vec::new(),
            offset_index: Vec::new(),
            rows: 0,
            name: random_name(),
        })
    }

    /// The name the pack will have.
    pub(crate) fn name(&self) -> Blake3Hash {
        self.name
    }

    /// Appends chunk `index` of some content with its hash (its chaining value at that index).
    /// Returns the place of the chunk's bytes in the pack.
    pub(crate) fn append(
        &mut self,
        index: u64,
        hash: &[u8; 32],
        data: ChunkBuf,
        path: &Path,
    ) -> Result<(u64, u32), StoreError> {
        let len = data.bytes().len() as u64;
        let plain = data.into_plain()?;
        let size = plain.len();
        let page = Page::DataPage {
            buf: plain,
            num_values: 1,
            encoding: Encoding::PLAIN,
            def_level_encoding: Encoding::RLE,
            rep_level_encoding: Encoding::RLE,
            statistics: None,
        };
        let spec = SerializedPageWriter::new(&mut self.sink)
            .write_page(CompressedPage::new(page, size))
            .map_err(|e| StoreError::parquet(path, e))?;
        self.group.rows.push((index, *hash));
        self.group.pages.push((spec.offset, spec.bytes_written));
        self.rows += 1;
        if self.group.rows.len() == PACK_ROW_GROUP_CHUNKS {
            self.close_group(path)?;
        }
        self.sink.flush().map_err(|e| StoreError::io(path, e))?;
        Ok((spec.offset + spec.bytes_written - len, len as u32))
    }

    /// Writes the open row group's index and hash columns and records its metadata.
    fn close_group(&mut self, path: &Path) -> Result<(), StoreError> {
        let group = std::mem::take(&mut self.group);
        if group.rows.is_empty() {
            return Ok(());
        }
        let pq = |e| StoreError::parquet(path, e);
        let n = group.rows.len();
        let mut index = Vec::with_capacity(n * 8);
        let mut hash = Vec::with_capacity(n * (LEN_PREFIX as usize + 32));
        for (i, h) in &group.rows {
            index.extend_from_slice(&(*i as i64).to_le_bytes());
            hash.extend_from_slice(&32u32.to_le_bytes());
            hash.extend_from_slice(h);
        }
        let mut write_plain = |buf: Vec<u8>| -> Result<PageWriteSpec, StoreError> {
            let size = buf.len();
            let page = Page::DataPage {
                buf: Bytes::from(buf),
                num_values: n as u32,
                encoding: Encoding::PLAIN,
                def_level_encoding: Encoding::RLE,
                rep_level_encoding: Encoding::RLE,
                statistics: None,
            };
            SerializedPageWriter::new(&mut self.sink).write_page(CompressedPage::new(page, size)).map_err(pq)
        };
        let index_page = write_plain(index)?;
        let hash_page = write_plain(hash)?;
        let one_page = |spec: &PageWriteSpec| {
            let mut b = OffsetIndexBuilder::new();
            b.append_row_count(n as i64);
            b.append_offset_and_size(spec.offset as i64, spec.bytes_written as i32);
            b.build()
        };
        let mut data_index = OffsetIndexBuilder::new();
        for (offset, size) in &group.pages {
            data_index.append_row_count(1);
            data_index.append_offset_and_size(*offset as i64, *size as i32);
        }
        let data_start = group.pages[0].0;
        let data_size: u64 = group.pages.iter().map(|(_, s)| s).sum();
        let column = |i: usize, start: u64, size: u64| {
            ColumnChunkMetaData::builder(self.schema.column(i))
                .set_encodings(vec![Encoding::PLAIN, Encoding::RLE])
                .set_compression(Compression::UNCOMPRESSED)
                .set_num_values(n as i64)
                .set_data_page_offset(start as i64)
                .set_total_compressed_size(size as i64)
                .set_total_uncompressed_size(size as i64)
                .build()
                .map_err(pq)
        };
        let columns = vec![
            column(COL_INDEX, index_page.offset, index_page.bytes_written)?,
            column(COL_HASH, hash_page.offset, hash_page.bytes_written)?,
            column(COL_DATA, data_start, data_size)?,
        ];
        let total: i64 = columns.iter().map(|c| c.compressed_size()).sum();
        let group_meta = RowGroupMetaData::builder(self.schema.clone())
            .set_num_rows(n as i64)
            .set_total_byte_size(total)
            .set_file_offset(data_start as i64)
            .set_ordinal(self.groups.len() as i16)
            .set_column_metadata(columns)
            .build()
            .map_err(pq)?;
        self.groups.push(group_meta);
        self.offset_index.push(vec![one_page(&index_page), one_page(&hash_page), data_index.build()]);
        Ok(())
    }

    /// Writes the last row group, the page index and the footer, and everything still buffered
    /// (no fsync). Returns the pack: its file, or its bytes when it never outgrew a buffer.
    pub(crate) fn finish(mut self, path: &Path) -> Result<SinkOutput, StoreError> {
        self.close_group(path)?;
        let kvs = vec![kv(KEY_FORMAT, FORMAT_PACK.into()), kv(KEY_CHUNK_SIZE, CHUNK_SIZE.to_string())];
        let file_meta =
            FileMetaData::new(1, self.rows as i64, Some(CREATED_BY.into()), Some(kvs), self.schema.clone(), None);
        let meta = ParquetMetaDataBuilder::new(file_meta)
            .set_row_groups(self.groups)
            .set_offset_index(Some(self.offset_index))
            .build();
        ParquetMetaDataWriter::new_with_tracked(self.sink, &meta).finish().map_err(|e| StoreError::parquet(path, e))?;
        self.direct.finish().map_err(|e| StoreError::io(path, e))
    }
}

/// A new random 256-bit name for a pack.
fn random_name() -> Blake3Hash {
    let mut id = [0u8; 32];
    id[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    id[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    Blake3Hash(id)
}

/// The `created_by` of the files pond writes itself.
const CREATED_BY: &str = concat!("pond version ", env!("CARGO_PKG_VERSION"));

/// The value offset of each row of a file whose `data` column has one page per row, given each
/// row's value length: the last `len` bytes of the row's page.
fn value_offsets(meta: &ParquetMetaData, lens: &[u64]) -> Result<Vec<u64>, String> {
    let index = meta.offset_index().ok_or("no offset index")?;
    if index.len() != meta.num_row_groups() {
        return Err("the offset index does not cover every row group".into());
    }
    let mut out = Vec::with_capacity(lens.len());
    for (rg, (group, columns)) in meta.row_groups().iter().zip(index).enumerate() {
        let pages = columns.get(COL_DATA).ok_or_else(|| format!("row group {rg}: no data column index"))?;
        let rows = u64::try_from(group.num_rows()).map_err(|_| format!("row group {rg}: negative rows"))?;
        let data = group.columns().get(COL_DATA).ok_or_else(|| format!("row group {rg}: no data column"))?;
        let chunk_start = u64::try_from(data.dictionary_page_offset().unwrap_or(data.data_page_offset()))
            .map_err(|_| format!("row group {rg}: data column at a negative offset"))?;
        let chunk_end = u64::try_from(data.compressed_size())
            .ok()
            .and_then(|size| chunk_start.checked_add(size))
            .ok_or_else(|| format!("row group {rg}: data column size"))?;
        if pages.page_locations().len() as u64 != rows {
            return Err(format!("row group {rg}: {} data pages for {rows} chunks", pages.page_locations().len()));
        }
        for (k, page) in pages.page_locations().iter().enumerate() {
            if page.first_row_index != k as i64 {
                return Err(format!("row group {rg}: page {k} does not hold exactly one chunk"));
            }
            let len = *lens.get(out.len()).ok_or("more rows than chunks")?;
            let start =
                u64::try_from(page.offset).map_err(|_| format!("row group {rg}: page {k} at a negative offset"))?;
            let size =
                u64::try_from(page.compressed_page_size).map_err(|_| format!("row group {rg}: page {k} size"))?;
            let end = start.checked_add(size).ok_or("page past u64")?;
            if start < chunk_start || end > chunk_end {
                return Err(format!("row group {rg}: page {k} lies outside its column chunk"));
            }
            if size < len + LEN_PREFIX {
                return Err(format!("row group {rg}: page {k} ({size} bytes) cannot hold a {len}-byte chunk"));
            }
            out.push(end - len);
        }
    }
    if out.len() != lens.len() {
        return Err(format!("{} data pages for {} chunks", out.len(), lens.len()));
    }
    Ok(out)
}

/// Writes a manifest object: one row per chunk of the content, with where its bytes are.
pub(crate) fn write_manifest<W: std::io::Write + Send>(
    file: W,
    path: &Path,
    size: u64,
    blake3: &Blake3Hash,
    hashes: &[[u8; 32]],
    locs: &[ChunkLoc],
) -> Result<(), StoreError> {
    if hashes.len() != locs.len() || hashes.len() as u64 != chunk_count(size) {
        return Err(StoreError::InvalidInput(format!(
            "a manifest of {size} bytes needs {} chunks, got {} hashes and {} locations",
            chunk_count(size),
            hashes.len(),
            locs.len()
        )));
    }
    let schema = manifest_schema();
    let options =
        ArrowWriterOptions::new().with_properties(manifest_writer_properties()).with_skip_arrow_metadata(true);
    let mut writer =
        ArrowWriter::try_new_with_options(file, schema.clone(), options).map_err(|e| StoreError::parquet(path, e))?;
    let mut names: HashMap<&PondFile, String> = HashMap::new();
    for (start, (hashes, locs)) in
        hashes.chunks(MANIFEST_ROW_GROUP_ROWS).zip(locs.chunks(MANIFEST_ROW_GROUP_ROWS)).enumerate()
    {
        let first = (start * MANIFEST_ROW_GROUP_ROWS) as i64;
        let index = Int64Array::from_iter_values(first..first + hashes.len() as i64);
        let hash = BinaryArray::from_iter_values(hashes.iter());
        let pack = StringArray::from_iter_values(
            locs.iter().map(|l| names.entry(&*l.file).or_insert_with(|| l.file.name()).clone()),
        );
        let offset = Int64Array::from_iter_values(locs.iter().map(|l| l.offset as i64));
        let len = Int32Array::from_iter_values(locs.iter().map(|l| l.len as i32));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(index), Arc::new(hash), Arc::new(pack), Arc::new(offset), Arc::new(len)],
        )
        .map_err(|e| StoreError::arrow(path, e))?;
        writer.write(&batch).map_err(|e| StoreError::parquet(path, e))?;
        writer.flush().map_err(|e| StoreError::parquet(path, e))?;
    }
    for kv_pair in [
        kv(KEY_FORMAT, FORMAT_MANIFEST.into()),
        kv(KEY_SIZE, size.to_string()),
        kv(KEY_BLAKE3, blake3.to_hex()),
        kv(KEY_CHUNK_SIZE, CHUNK_SIZE.to_string()),
    ] {
        writer.append_key_value_metadata(kv_pair);
    }
    writer.close().map_err(|e| StoreError::parquet(path, e))?;
    Ok(())
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

    /// `len` bytes at `offset` (an error, not a short read, past the end).
    pub(crate) fn read_range(&self, offset: u64, len: u64) -> io::Result<Bytes> {
        self.check_range(offset, len).map_err(|e| io::Error::new(io::ErrorKind::UnexpectedEof, e.to_string()))?;
        let buf = pread_exact(&self.file, offset, len as usize)?;
        self.bytes_read.fetch_add(len, Ordering::Relaxed);
        Ok(Bytes::from(buf))
    }
}

/// `len` bytes at `offset` of `file`, read straight into a new buffer (a chunk read is on every
/// read's path: zero-filling the buffer first cost 4% of a sequential read's CPU).
pub(crate) fn pread_exact(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    let mut done = 0;
    while done < len {
        let at = i64::try_from(offset + done as u64).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the fd is open for the call; pread writes at most `len - done` bytes into the
        // vector's spare capacity starting at `done`, which the allocation above holds.
        let n = unsafe { libc::pread(file.as_raw_fd(), buf.as_mut_ptr().add(done).cast(), len - done, at) };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file is shorter than it was")),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    // SAFETY: pread initialised the first `len` bytes above.
    unsafe { buf.set_len(len) };
    Ok(buf)
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
        Ok(self.read_range(start, length as u64)?)
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

/// What opening an object finds: its metadata, and every chunk's hash and location.
pub(crate) struct OpenedObject {
    pub meta: ObjectMeta,
    pub hashes: Vec<[u8; 32]>,
    pub locs: Vec<ChunkLoc>,
}

/// Runs parquet code that might panic on hostile bytes, turning a panic into an error.
fn guarded<T>(path: &Path, what: &str, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(StoreError::malformed(path, format!("parquet panicked while {what}"))))
}

/// What a store file (object of either format, or pack) may claim before parquet decodes any of
/// it (see [`crate::parquet_bounds`]). A flat schema of at most 5 columns; pages of `index` and
/// `hash` of packs and format 1 hold one value, a manifest's pages are cut at parquet's default 1 MiB
/// (8 MiB leaves room for other writers' settings); a pack's or format 1's row group (256 chunks at
/// most) has a small page index. A format 1 footer is about 1 KB per 256 chunks: 64 MiB is an
/// object of over 4 TiB. Chunk data pages are never decoded by parquet (see the module doc), so
/// their headers are not walked.
const STORE_LIMITS: ParquetLimits = ParquetLimits {
    max_footer: 64 << 20,
    max_schema_depth: 0,
    max_schema_elements: 1 + MANIFEST_COLUMNS.len(),
    max_page_uncompressed: 8 << 20,
    max_page_compressed: 8 << 20,
    max_page_index: 1 << 20,
    codecs: &[Codec::Uncompressed, Codec::Zstd],
};

/// Checks a store file's footer and the pages of every column parquet will decode (all but a
/// chunk `data` column) against [`STORE_LIMITS`], then hands the checked metadata to arrow.
fn load_metadata<R: ChunkReader + 'static>(file: &R, path: &Path) -> Result<ArrowReaderMetadata, StoreError> {
    let bounds = |e: ParquetBoundsError| StoreError::malformed(path, e.to_string());
    let md = check_footer(file, &STORE_LIMITS).map_err(bounds)?;
    for group in md.row_groups() {
        for column in group.columns() {
            if column.column_path().string() != CHUNK_COLUMNS[COL_DATA] {
                check_column_pages(file, column, &STORE_LIMITS).map_err(bounds)?;
            }
        }
    }
    if md.offset_index().is_none() && md.num_row_groups() > 0 {
        return Err(StoreError::malformed(path, "no page index"));
    }
    // An embedded arrow schema is ignored (its flatbuffer decoder is not hardened).
    let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
    ArrowReaderMetadata::try_new(Arc::new(md), options).map_err(|e| StoreError::parquet(path, e))
}

/// Opens the object file `file` (named `self_name` in the layout), checking its format and metadata
/// and reading its chunk hashes and locations. Does not check the hashes against the name (the
/// caller does).
pub(crate) fn open_object<R: ChunkReader + Clone + 'static>(
    file: &R,
    path: &Path,
    self_name: &PondFile,
) -> Result<OpenedObject, StoreError> {
    guarded(path, "opening", || {
        let meta = load_metadata(file, path)?;
        let kv = ObjectMeta::parse(meta.metadata().file_metadata().key_value_metadata(), path)?;
        let expected = chunk_count(kv.size);
        let rows = total_rows(meta.metadata(), path)?;
        if rows != expected {
            return Err(StoreError::malformed(path, format!("{rows} chunks but size {} needs {expected}", kv.size)));
        }
        match kv.format {
            ObjectFormat::Full => {
                check_schema(&meta, &chunk_schema(), path)?;
                let hashes = read_hashes(file, &meta, path, expected)?;
                let lens: Vec<u64> = (0..expected).map(|i| chunk_len(kv.size, i)).collect();
                let offsets =
                    value_offsets(meta.metadata(), &lens).map_err(|reason| StoreError::malformed(path, reason))?;
                let me = Arc::new(self_name.clone());
                let locs = offsets
                    .into_iter()
                    .zip(&lens)
                    .map(|(offset, len)| ChunkLoc { file: me.clone(), offset, len: *len as u32 })
                    .collect();
                Ok(OpenedObject { meta: kv, hashes, locs })
            }
            ObjectFormat::Manifest => {
                check_schema(&meta, &manifest_schema(), path)?;
                let (hashes, locs) = read_manifest_rows(file, &meta, path, &kv)?;
                Ok(OpenedObject { meta: kv, hashes, locs })
            }
        }
    })
}

/// Opens a pack: checks its format and reads its `(index, hash)` rows (not its data).
pub(crate) fn open_pack<R: ChunkReader + Clone + 'static>(
    file: &R,
    path: &Path,
) -> Result<Vec<(u64, [u8; 32])>, StoreError> {
    guarded(path, "opening", || {
        let meta = load_metadata(file, path)?;
        let kvs = meta.metadata().file_metadata().key_value_metadata();
        let format = get_kv(kvs, KEY_FORMAT, path)?;
        if format != FORMAT_PACK {
            return Err(bad_kv(KEY_FORMAT, format, path));
        }
        check_chunk_size(kvs, path)?;
        check_schema(&meta, &chunk_schema(), path)?;
        let rows = total_rows(meta.metadata(), path)?;
        let hashes = read_hashes(file, &meta, path, rows)?;
        let mask = ProjectionMask::leaves(meta.parquet_schema(), [COL_INDEX]);
        let mut indexes = Vec::new();
        for batch in projected(file, &meta, mask, path)? {
            let batch = batch.map_err(|e| StoreError::arrow(path, e))?;
            let col = int64_column(&batch, 0, path)?;
            for v in col.values() {
                indexes.push(u64::try_from(*v).map_err(|_| StoreError::malformed(path, "negative chunk index"))?);
            }
        }
        if indexes.len() != hashes.len() {
            return Err(StoreError::malformed(path, "index and hash columns differ in length"));
        }
        Ok(indexes.into_iter().zip(hashes).collect())
    })
}

fn total_rows(pq: &ParquetMetaData, path: &Path) -> Result<u64, StoreError> {
    let mut total: u64 = 0;
    for rg in pq.row_groups() {
        let rows =
            u64::try_from(rg.num_rows()).map_err(|_| StoreError::malformed(path, "row group with negative rows"))?;
        total = total.saturating_add(rows);
    }
    Ok(total)
}

fn check_schema(meta: &ArrowReaderMetadata, want: &SchemaRef, path: &Path) -> Result<(), StoreError> {
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

fn projected<R: ChunkReader + Clone + 'static>(
    file: &R,
    meta: &ArrowReaderMetadata,
    mask: ProjectionMask,
    path: &Path,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader, StoreError> {
    ParquetRecordBatchReaderBuilder::new_with_metadata(file.clone(), meta.clone())
        .with_projection(mask)
        .with_batch_size(8192)
        .build()
        .map_err(|e| StoreError::parquet(path, e))
}

fn read_hashes<R: ChunkReader + Clone + 'static>(
    file: &R,
    meta: &ArrowReaderMetadata,
    path: &Path,
    expected: u64,
) -> Result<Vec<[u8; 32]>, StoreError> {
    let mask = ProjectionMask::leaves(meta.parquet_schema(), [COL_HASH]);
    // Grown as decoded (never sized from metadata numbers alone).
    let mut hashes = Vec::new();
    for batch in projected(file, meta, mask, path)? {
        let batch = batch.map_err(|e| StoreError::arrow(path, e))?;
        let col = binary_column(&batch, 0, path)?;
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

/// The rows of a manifest: hashes and locations, each row's index its position and each location a
/// name of the layout with the length the content's size implies.
fn read_manifest_rows<R: ChunkReader + Clone + 'static>(
    file: &R,
    meta: &ArrowReaderMetadata,
    path: &Path,
    kv: &ObjectMeta,
) -> Result<(Vec<[u8; 32]>, Vec<ChunkLoc>), StoreError> {
    let expected = chunk_count(kv.size);
    let mask = ProjectionMask::leaves(meta.parquet_schema(), 0..MANIFEST_COLUMNS.len());
    let mut hashes = Vec::new();
    let mut locs = Vec::new();
    let mut files: HashMap<String, Arc<PondFile>> = HashMap::new();
    for batch in projected(file, meta, mask, path)? {
        let batch = batch.map_err(|e| StoreError::arrow(path, e))?;
        let index = int64_column(&batch, 0, path)?;
        let hash = binary_column(&batch, 1, path)?;
        let pack = batch
            .column(2)
            .as_any()
            .downcast_ref::<StringArray>()
            .filter(|c| c.null_count() == 0)
            .ok_or_else(|| StoreError::malformed(path, "pack column is not utf8 without nulls"))?;
        let offset = int64_column(&batch, 3, path)?;
        let len = batch
            .column(4)
            .as_any()
            .downcast_ref::<Int32Array>()
            .filter(|c| c.null_count() == 0)
            .ok_or_else(|| StoreError::malformed(path, "len column is not int32 without nulls"))?;
        for r in 0..batch.num_rows() {
            let i = hashes.len() as u64;
            if i >= expected {
                return Err(StoreError::malformed(path, format!("more than the {expected} chunks its size needs")));
            }
            if index.value(r) != i as i64 {
                return Err(StoreError::malformed(path, format!("row {i} names chunk {}", index.value(r))));
            }
            let h: [u8; 32] = hash
                .value(r)
                .try_into()
                .map_err(|_| StoreError::malformed(path, format!("chunk {i} hash is {} bytes", hash.value(r).len())))?;
            let name = pack.value(r);
            let file = match files.get(name) {
                Some(f) => f.clone(),
                None => {
                    let parsed = match PondFile::parse(name) {
                        Ok(f @ (PondFile::Pack(_) | PondFile::Object(_))) => f,
                        _ => {
                            let shown: String = name.chars().take(120).collect();
                            return Err(StoreError::malformed(path, format!("chunk {i} is in {shown:?}, not a pack")));
                        }
                    };
                    let f = Arc::new(parsed);
                    files.insert(name.to_string(), f.clone());
                    f
                }
            };
            let want_len = chunk_len(kv.size, i);
            let off = u64::try_from(offset.value(r))
                .ok()
                .filter(|o| *o >= LEN_PREFIX + 4)
                .ok_or_else(|| StoreError::malformed(path, format!("chunk {i} at offset {}", offset.value(r))))?;
            if i64::from(len.value(r)) != want_len as i64 {
                return Err(StoreError::malformed(
                    path,
                    format!("chunk {i} is {} bytes, the size implies {want_len}", len.value(r)),
                ));
            }
            hashes.push(h);
            locs.push(ChunkLoc { file, offset: off, len: want_len as u32 });
        }
    }
    if hashes.len() as u64 != expected {
        return Err(StoreError::malformed(path, format!("{} chunks, expected {expected}", hashes.len())));
    }
    Ok((hashes, locs))
}

fn binary_column<'a>(batch: &'a RecordBatch, i: usize, path: &Path) -> Result<&'a BinaryArray, StoreError> {
    batch
        .column(i)
        .as_any()
        .downcast_ref::<BinaryArray>()
        .filter(|col| col.null_count() == 0)
        .ok_or_else(|| StoreError::malformed(path, "column is not binary without nulls"))
}

fn int64_column<'a>(batch: &'a RecordBatch, i: usize, path: &Path) -> Result<&'a Int64Array, StoreError> {
    batch
        .column(i)
        .as_any()
        .downcast_ref::<Int64Array>()
        .filter(|col| col.null_count() == 0)
        .ok_or_else(|| StoreError::malformed(path, "column is not int64 without nulls"))
}

/// Checks the bytes read for a chunk: the PLAIN length prefix, then returns the chunk's bytes.
/// `raw` is `len + 4` bytes read at `offset - 4`.
pub(crate) fn strip_len_prefix(raw: Bytes, len: u32) -> Option<Bytes> {
    if raw.len() != len as usize + LEN_PREFIX as usize || raw[..4] != len.to_le_bytes() {
        return None;
    }
    Some(raw.slice(LEN_PREFIX as usize..))
}

/// Where the bytes to read for a chunk at `loc` begin (its length prefix) and how many there are.
pub(crate) fn raw_range(loc: &ChunkLoc) -> (u64, u64) {
    (loc.offset.saturating_sub(LEN_PREFIX), u64::from(loc.len) + LEN_PREFIX)
}
