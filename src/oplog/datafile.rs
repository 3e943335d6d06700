//! The oplog's parquet data files: writing one durably, reading its rows (without the bulky content
//! column when only metadata is wanted), and fetching one row's inline content on demand.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use super::error::OplogError;
use super::guard::quietly;
use super::schema::{self, Content, OplogRow, RowLoc, col};
use crate::large_files::hash::{Blake3Hash, Sha256Digest};
use crate::parquet_bounds::{Codec, ParquetLimits, check_parquet};

/// What an oplog data file may claim before it is decoded (see [`crate::parquet_bounds`]). Pond
/// writes a flat schema with two list columns (depth 2, 27 elements), inline content compressed with
/// zstd and the rest uncompressed (older ponds: all zstd). A page
/// holds at least one value and is cut once past its size limit (64 KiB for content, 1 MiB for
/// the rest), so the largest is an inline content of the largest threshold plus one page limit.
/// Footers are about 10 KB per 8192-row group: 64 MiB is a data file of over 50 million rows.
pub const DATA_FILE_LIMITS: ParquetLimits = ParquetLimits {
    max_footer: 64 << 20,
    max_schema_depth: 4,
    max_schema_elements: 256,
    max_page_uncompressed: super::MAX_THRESHOLD + (1 << 20),
    max_page_compressed: super::MAX_THRESHOLD + (1 << 20),
    max_page_index: 16 << 20,
    codecs: &[Codec::Zstd, Codec::Uncompressed],
};

/// What a checkpoint may claim before it is decoded. delta-rs writes them uncompressed with
/// default pages (1 MiB) and a schema 4 groups deep of about 100 elements; other Delta writers use
/// snappy or zstd and may add columns (`stats_parsed` has one per table column).
pub const CHECKPOINT_LIMITS: ParquetLimits = ParquetLimits {
    max_footer: 16 << 20,
    max_schema_depth: 16,
    max_schema_elements: 4096,
    max_page_uncompressed: 64 << 20,
    max_page_compressed: 64 << 20,
    max_page_index: 16 << 20,
    codecs: &[Codec::Uncompressed, Codec::Snappy, Codec::Zstd],
};

/// Open `path` and check it against `limits`, returning the file and its (checked) metadata.
fn open_checked(path: &Path, limits: &ParquetLimits) -> Result<(File, ParquetMetaData), OplogError> {
    let file = File::open(path).map_err(|e| OplogError::Io { path: path.to_path_buf(), source: e })?;
    let md = check_parquet(&file, limits).map_err(|e| OplogError::bounds(path, e))?;
    Ok((file, md))
}

/// Rows per row group: small enough that fetching one file's content decodes little, large enough
/// that a 100,000-row compacted file has few groups.
const ROWS_PER_GROUP: usize = 8192;

/// Write `rows` as a new parquet data file at `root/name`, fsynced (file and directory) before return.
/// Returns the file size in bytes.
pub fn write_data_file(root: &Path, name: &str, rows: &[OplogRow]) -> Result<u64, OplogError> {
    let path = root.join(name);
    let batch = schema::rows_to_batch(rows).map_err(|e| OplogError::Encode(e.to_string()))?;
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(ROWS_PER_GROUP))
        // Only inline content is worth compressing: the other columns are a few bytes a row, and
        // a zstd context per column chunk (made again for every file written and read) cost more
        // CPU than a small commit's whole data file.
        .set_compression(Compression::UNCOMPRESSED)
        .set_column_compression(
            ColumnPath::from(col::CONTENT),
            Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()),
        )
        // Content is fetched row by row: small pages keep one fetch from decoding its neighbours.
        .set_column_data_page_size_limit(ColumnPath::from(col::CONTENT), 64 * 1024)
        .set_column_dictionary_enabled(ColumnPath::from(col::CONTENT), false)
        .set_column_statistics_enabled(
            ColumnPath::from(col::CONTENT),
            parquet::file::properties::EnabledStatistics::None,
        )
        .build();
    let written = (|| {
        let io = |e: std::io::Error| OplogError::Io { path: path.clone(), source: e };
        // A new name, never a link followed, readable by the pond's owner only (as the pond's root).
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io)?;
        let mut w =
            ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(|e| OplogError::parquet(&path, e))?;
        w.write(&batch).map_err(|e| OplogError::parquet(&path, e))?;
        let mut file = w.into_inner().map_err(|e| OplogError::parquet(&path, e))?;
        file.flush().map_err(io)?;
        file.sync_all().map_err(io)?;
        sync_dir(root)?;
        Ok(file.metadata().map_err(io)?.len())
    })();
    if written.is_err() {
        // A partial file (the disk filled up, say) is worth nothing and holds space.
        let _ = std::fs::remove_file(&path);
    }
    written
}

/// fsync a directory so a rename or create in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), OplogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| OplogError::Io { path: dir.to_path_buf(), source: e })
}

/// How pond opens its data files. The Arrow schema is derived from the parquet schema rather than
/// decoded from the file's embedded `ARROW:schema` (an IPC flatbuffer whose decoder panics on
/// damaged bytes); pond's column types come out the same either way.
fn reader_options() -> ArrowReaderOptions {
    ArrowReaderOptions::new().with_skip_arrow_metadata(true)
}

/// Read the parquet file at `path` whole, every column, as the Delta library is about to (it reads
/// checkpoints with the same crate and the same options): a file that does not read is refused here
/// with an error naming it, so the library never meets the damage (parquet panics on some of it).
pub fn check_parquet_file(path: &Path) -> Result<(), OplogError> {
    let (file, md) = open_checked(path, &CHECKPOINT_LIMITS)?;
    guarded(path, || {
        let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, arrow_metadata(md, path)?);
        for batch in builder.build().map_err(|e| OplogError::parquet(path, e))? {
            batch.map_err(|e| OplogError::arrow(path, e))?;
        }
        Ok(())
    })
}

/// Run parquet code on the file at `path` inside [`quietly`]: its panic is this file's damage.
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T, OplogError>) -> Result<T, OplogError> {
    quietly(f).unwrap_or_else(|panic| {
        Err(OplogError::Corrupt { path: path.to_path_buf(), reason: format!("parquet cannot decode it: {panic}") })
    })
}

/// Arrow's view of metadata [`check_parquet`] returned, for a reader built on it.
fn arrow_metadata(md: ParquetMetaData, path: &Path) -> Result<ArrowReaderMetadata, OplogError> {
    ArrowReaderMetadata::try_new(Arc::new(md), reader_options()).map_err(|e| OplogError::parquet(path, e))
}

/// Read every row of data file `rel` (relative to `root`). With `with_content = false` the inline
/// content column is skipped and rows carry a [`RowLoc`] instead.
pub fn read_rows(root: &Path, rel: &Arc<str>, with_content: bool) -> Result<Vec<OplogRow>, OplogError> {
    let mut rows = Vec::new();
    for_each_batch(root, rel, with_content, |batch| {
        rows.extend(batch);
        Ok(())
    })?;
    Ok(rows)
}

/// Stream the rows of data file `rel` in batches, so a large compacted file never sits in memory whole.
pub fn for_each_batch(
    root: &Path,
    rel: &Arc<str>,
    with_content: bool,
    mut f: impl FnMut(Vec<OplogRow>) -> Result<(), OplogError>,
) -> Result<(), OplogError> {
    let path = root.join(&**rel);
    let (file, md) = open_checked(&path, &DATA_FILE_LIMITS)?;
    let mut reader = guarded(&path, || {
        let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, arrow_metadata(md, &path)?);
        let parquet_schema = builder.parquet_schema();
        let leaves: Vec<usize> = (0..parquet_schema.num_columns())
            .filter(|&i| with_content || parquet_schema.column(i).path().parts()[0] != col::CONTENT)
            .collect();
        let mask = ProjectionMask::leaves(parquet_schema, leaves);
        let batch_size = if with_content { 256 } else { 8192 };
        builder.with_projection(mask).with_batch_size(batch_size).build().map_err(|e| OplogError::parquet(&path, e))
    })?;
    let mut first = 0u64;
    while let Some(batch) = guarded(&path, || Ok(reader.next()))? {
        let batch = batch.map_err(|e| OplogError::arrow(&path, e))?;
        let decoded = schema::batch_to_rows(&batch, rel, first)
            .map_err(|e| OplogError::BadRow { path: path.clone(), source: e })?;
        first += batch.num_rows() as u64;
        f(decoded)?;
    }
    Ok(())
}

/// The large objects that the rows of data file `rel` reference: (object name, content size the row
/// records, its SHA-256), one entry per row, read without the inline content column.
pub fn large_objects(root: &Path, rel: &Arc<str>) -> Result<Vec<(Blake3Hash, u64, Option<Sha256Digest>)>, OplogError> {
    let mut out = Vec::new();
    for_each_batch(root, rel, false, |rows| {
        for row in rows {
            if let OplogRow::Node { data: Some(d), .. } = row
                && let Some(Content::Large { hash, sha256 }) = d.content
            {
                out.push((hash, d.size, sha256));
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// Fetches inline content by [`RowLoc`], caching each data file's footer (files are immutable).
#[derive(Debug)]
pub struct InlineReader {
    root: PathBuf,
    meta: Mutex<HashMap<Arc<str>, ArrowReaderMetadata>>,
}

impl InlineReader {
    pub fn new(root: &Path) -> Self {
        InlineReader { root: root.to_path_buf(), meta: Mutex::new(HashMap::new()) }
    }

    fn metadata(&self, rel: &Arc<str>, file: &File, path: &Path) -> Result<ArrowReaderMetadata, OplogError> {
        let mut cache = self.meta.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = cache.get(rel) {
            return Ok(m.clone());
        }
        // The checked metadata carries the page index when the file has one.
        let md = check_parquet(file, &DATA_FILE_LIMITS).map_err(|e| OplogError::bounds(path, e))?;
        let m = guarded(path, || arrow_metadata(md, path))?;
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(rel.clone(), m.clone());
        Ok(m)
    }

    /// The content bytes of the row at `loc`, checked against the BLAKE3 the row records: a damaged
    /// data file reads as an error, never as wrong bytes.
    pub fn read(&self, loc: &RowLoc) -> Result<Bytes, OplogError> {
        let path = self.root.join(&*loc.file);
        let file = File::open(&path).map_err(|e| OplogError::Io { path: path.clone(), source: e })?;
        let meta = self.metadata(&loc.file, &file, &path)?;
        let md = meta.metadata();
        let mut start = 0u64;
        let mut group = None;
        for (i, rg) in md.row_groups().iter().enumerate() {
            let n = rg.num_rows().max(0) as u64;
            if loc.row < start + n {
                group = Some((i, loc.row - start));
                break;
            }
            start += n;
        }
        let bad = |reason: &str| OplogError::Corrupt { path: path.clone(), reason: reason.to_string() };
        let (rg, offset) = group.ok_or_else(|| bad("row index past the end of the data file"))?;
        let offset = usize::try_from(offset).map_err(|_| bad("row index out of range"))?;
        let schema_descr = md.file_metadata().schema_descr();
        let leaf =
            |name: &str| (0..schema_descr.num_columns()).find(|&i| schema_descr.column(i).path().parts()[0] == name);
        let content_leaf = leaf(col::CONTENT).ok_or_else(|| bad("no content column"))?;
        let hash_leaf = leaf(col::BLAKE3).ok_or_else(|| bad("no blake3 column"))?;
        let mut reader = guarded(&path, || {
            ParquetRecordBatchReaderBuilder::new_with_metadata(file, meta.clone())
                .with_row_groups(vec![rg])
                .with_row_selection(RowSelection::from(vec![RowSelector::skip(offset), RowSelector::select(1)]))
                .with_projection(ProjectionMask::leaves(schema_descr, [content_leaf, hash_leaf]))
                .with_batch_size(1)
                .build()
                .map_err(|e| OplogError::parquet(&path, e))
        })?;
        while let Some(batch) = guarded(&path, || Ok(reader.next()))? {
            let batch = batch.map_err(|e| OplogError::arrow(&path, e))?;
            if batch.num_rows() == 0 {
                continue;
            }
            use arrow::array::Array;
            let content = batch
                .column_by_name(col::CONTENT)
                .and_then(|c| c.as_any().downcast_ref::<arrow::array::BinaryArray>())
                .ok_or_else(|| bad("content column is not binary"))?;
            let hash = batch
                .column_by_name(col::BLAKE3)
                .and_then(|c| c.as_any().downcast_ref::<arrow::array::StringArray>())
                .ok_or_else(|| bad("blake3 column is not a string"))?;
            if content.is_null(0) {
                return Err(bad("inline file row has no content"));
            }
            let bytes = content.value(0);
            let recorded = (!hash.is_null(0)).then(|| Blake3Hash::from_hex(hash.value(0))).flatten();
            if recorded != Some(Blake3Hash(*blake3::hash(bytes).as_bytes())) {
                return Err(bad(&format!("row {}: inline content does not match its recorded BLAKE3", loc.row)));
            }
            return Ok(Bytes::copy_from_slice(bytes));
        }
        Err(bad("row not found"))
    }
}
