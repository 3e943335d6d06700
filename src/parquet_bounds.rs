//! Bounds on what a parquet file may claim, checked before the parquet crate decodes anything of
//! it: every parquet file pond reads from a pond or a remote (oplog data files, checkpoints, large
//! objects) goes through [`check_parquet`] first, with the [`ParquetLimits`] of its kind.
//!
//! A parquet file describes itself, and the parquet crate believes it: the footer's length (the
//! last 8 bytes) is read whole; each page header claims its own compressed and uncompressed size
//! (up to 2 GiB each), and decoding allocates the uncompressed size and decompresses into it; a
//! column chunk names its codec; the page index's offset and length come from the footer. And the
//! schema, a flat list where each group element says how many children follow, is turned into a
//! tree by recursion — `schema_from_array_helper` in parquet's `schema/types.rs` calls itself once
//! per nesting level (as do `build_tree` and `count_leaves` after it, the Arrow schema conversion,
//! and the drop of the tree), and it reserves `num_children` slots before looking at them — so a
//! footer of a few megabytes nesting groups a million deep overflows the stack, and one group
//! claiming 2^31 children asks for 16 GiB. (parquet's thrift decoder itself is safe: it skips
//! unknown fields at most 64 structs deep and bounds a list's length by the bytes left.)
//!
//! So [`check_parquet`] reads the footer itself, walks its thrift encoding with a small decoder of
//! its own (bounded nesting, nothing allocated from a claimed length) to count the schema's
//! elements and measure its depth, and only then lets parquet decode the footer. Then every column
//! chunk must lie inside the file and use an allowed codec, its page index must lie inside the file
//! within bounds, and its pages are walked header by header (again with the decoder here): each
//! page's sizes within bounds, the pages filling the chunk exactly, and the offset index, when
//! there is one, naming exactly those pages (a reader that seeks by the index must land on a page
//! header this walk checked).
//!
//! A reader that opens a large file often and reads few of its pages (the large-file store) can
//! check the footer alone at open ([`check_footer`]) and each page before parquet reads it
//! ([`check_page`], at the offset the offset index gives), instead of walking every page at open.

use bytes::Bytes;
use parquet::file::reader::ChunkReader;

use parquet::basic::Compression;
use parquet::file::metadata::{ColumnChunkMetaData, PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};

/// Codecs a parquet file may be allowed to use (those pond's build of parquet decodes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Uncompressed,
    Snappy,
    Zstd,
}

impl Codec {
    fn of(c: Compression) -> Option<Codec> {
        match c {
            Compression::UNCOMPRESSED => Some(Codec::Uncompressed),
            Compression::SNAPPY => Some(Codec::Snappy),
            Compression::ZSTD(_) => Some(Codec::Zstd),
            _ => None,
        }
    }
}

/// What one kind of parquet file may claim.
#[derive(Clone, Copy, Debug)]
pub struct ParquetLimits {
    /// Bytes of the footer (the thrift `FileMetaData`).
    pub max_footer: u64,
    /// Groups nested in groups, the root not counted (a flat schema has depth 0, a list column 2).
    pub max_schema_depth: usize,
    /// Elements of the schema, the root and every group and leaf.
    pub max_schema_elements: usize,
    /// A page's size after decompression: what decoding it allocates.
    pub max_page_uncompressed: u64,
    /// A page's size as stored.
    pub max_page_compressed: u64,
    /// Bytes of one column chunk's column index or offset index.
    pub max_page_index: u64,
    /// The codecs a column chunk may use.
    pub codecs: &'static [Codec],
}

/// Why a parquet file was refused before it was decoded.
#[derive(Debug, thiserror::Error)]
pub enum ParquetBoundsError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a parquet file: {0}")]
    NotParquet(&'static str),
    #[error("its footer claims {len} bytes, more than the {max} this kind of file may have")]
    FooterTooLarge { len: u64, max: u64 },
    #[error("its footer does not decode: {0}")]
    BadFooter(String),
    #[error("its schema nests groups {depth} deep, more than the {max} this kind of file may have")]
    SchemaTooDeep { depth: usize, max: usize },
    #[error("its schema has {elements} elements, more than the {max} this kind of file may have")]
    SchemaTooWide { elements: u64, max: usize },
    #[error("its schema is not a tree: {0}")]
    BadSchema(&'static str),
    #[error("row group {group}, column {column}: {reason}")]
    Chunk { group: usize, column: String, reason: String },
    #[error("page at byte {offset}: {reason}")]
    Page { offset: u64, reason: String },
}

/// Most bytes a page header may take (pond's are tens of bytes; page statistics, which pond does
/// not write, could make one longer).
const MAX_PAGE_HEADER: u64 = 256 << 10;
/// First read of a page header: enough for any header without statistics.
const HEADER_PROBE: u64 = 256;
/// Structs and containers nested in a footer or page header: parquet's deepest is about 8.
const MAX_THRIFT_DEPTH: usize = 32;
const MAGIC: &[u8; 4] = b"PAR1";

/// Check the parquet file `file` against `limits` (see the module doc) and return its metadata,
/// decoded once it is known to be safe to decode, with the page index when the file has one.
pub fn check_parquet<R: ChunkReader>(file: &R, limits: &ParquetLimits) -> Result<ParquetMetaData, ParquetBoundsError> {
    check(file, limits, Pages::Walk)
}

/// [`check_parquet`] without the walk of every page header: for a reader that opens a large file
/// often and reads few of its pages, and checks each with [`check_page`] before parquet reads it.
/// The offset index is then not compared with the pages (nothing has walked them).
pub fn check_footer<R: ChunkReader>(file: &R, limits: &ParquetLimits) -> Result<ParquetMetaData, ParquetBoundsError> {
    check(file, limits, Pages::Skip)
}

/// Check the header of the page at `offset` of a file whose footer [`check_footer`] passed: its
/// sizes within `limits`, the page ending by `chunk_end` (the end of its column chunk). Returns
/// the page's size, header included (what the offset index records for it).
pub fn check_page<R: ChunkReader>(
    file: &R,
    offset: u64,
    chunk_end: u64,
    limits: &ParquetLimits,
) -> Result<u64, ParquetBoundsError> {
    let page = |reason| ParquetBoundsError::Page { offset, reason };
    if offset >= chunk_end {
        return Err(page("it starts past the end of its column chunk".into()));
    }
    let (header, header_len) = read_page_header(file, offset, chunk_end).map_err(page)?;
    page_size(&header, offset, header_len, chunk_end, limits).map_err(page)
}

/// Check every page header of the column chunk `column` of a file whose footer [`check_footer`]
/// passed (the chunk is known to lie inside the file): for a column the reader is about to decode
/// whole.
pub fn check_column_pages<R: ChunkReader>(
    file: &R,
    column: &ColumnChunkMetaData,
    limits: &ParquetLimits,
) -> Result<(), ParquetBoundsError> {
    let start = column.dictionary_page_offset().unwrap_or(column.data_page_offset());
    let (Ok(start), Ok(size)) = (u64::try_from(start), u64::try_from(column.compressed_size())) else {
        return Err(ParquetBoundsError::Page { offset: 0, reason: "a negative column chunk offset or size".into() });
    };
    if start.checked_add(size).is_none_or(|end| end > file.len()) {
        return Err(ParquetBoundsError::Page {
            offset: start,
            reason: "its column chunk lies outside the file".into(),
        });
    }
    walk_pages(file, start, size, limits).map(drop).map_err(|reason| ParquetBoundsError::Page { offset: start, reason })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pages {
    Walk,
    Skip,
}

fn check<R: ChunkReader>(
    file: &R,
    limits: &ParquetLimits,
    pages: Pages,
) -> Result<ParquetMetaData, ParquetBoundsError> {
    let len = file.len();
    if len < 12 {
        return Err(ParquetBoundsError::NotParquet("shorter than a parquet file's magic and footer length"));
    }
    let head = read(file, 0, 4)?;
    let tail = read(file, len - 8, 8)?;
    if head[..] != MAGIC[..] || tail[4..] != MAGIC[..] {
        return Err(ParquetBoundsError::NotParquet("no PAR1 magic at both ends (or an encrypted footer)"));
    }
    let footer_len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if footer_len > limits.max_footer {
        return Err(ParquetBoundsError::FooterTooLarge { len: footer_len, max: limits.max_footer });
    }
    let Some(footer_start) = len.checked_sub(8 + footer_len).filter(|s| *s >= 4) else {
        return Err(ParquetBoundsError::NotParquet("its footer claims more bytes than the file holds"));
    };
    let footer = read(file, footer_start, footer_len)?;
    check_schema_shape(&footer, limits)?;
    let md =
        ParquetMetaDataReader::decode_metadata(&footer).map_err(|e| ParquetBoundsError::BadFooter(e.to_string()))?;

    let mut has_index = false;
    let mut data_pages: Vec<Vec<Vec<(u64, u64)>>> = Vec::with_capacity(md.num_row_groups());
    for (g, rg) in md.row_groups().iter().enumerate() {
        let mut group_pages = Vec::with_capacity(rg.num_columns());
        for c in rg.columns() {
            let bad = |reason: String| ParquetBoundsError::Chunk { group: g, column: c.column_path().string(), reason };
            if rg.num_rows() < 0 {
                return Err(bad(format!("the row group claims {} rows", rg.num_rows())));
            }
            if !Codec::of(c.compression()).is_some_and(|codec| limits.codecs.contains(&codec)) {
                return Err(bad(format!("codec {} is not one this kind of file may use", c.compression())));
            }
            let start = c.dictionary_page_offset().unwrap_or(c.data_page_offset());
            let (Ok(start), Ok(size)) = (u64::try_from(start), u64::try_from(c.compressed_size())) else {
                return Err(bad("a negative offset or size".into()));
            };
            if start < 4 || start.checked_add(size).is_none_or(|end| end > footer_start) {
                return Err(bad(format!("its {size} bytes at {start} lie outside the file's data")));
            }
            for (what, offset, length) in [
                ("column index", c.column_index_offset(), c.column_index_length()),
                ("offset index", c.offset_index_offset(), c.offset_index_length()),
            ] {
                let (Some(offset), Some(length)) = (offset, length) else { continue };
                let (Ok(offset), Ok(length)) = (u64::try_from(offset), u64::try_from(length)) else {
                    return Err(bad(format!("its {what} has a negative offset or length")));
                };
                if length > limits.max_page_index {
                    return Err(bad(format!(
                        "its {what} claims {length} bytes, more than the {} this kind of file may have",
                        limits.max_page_index
                    )));
                }
                if offset.checked_add(length).is_none_or(|end| end > footer_start) {
                    return Err(bad(format!("its {what} lies outside the file")));
                }
                has_index = true;
            }
            if pages == Pages::Walk {
                group_pages.push(walk_pages(file, start, size, limits).map_err(bad)?);
            }
        }
        data_pages.push(group_pages);
    }
    if !has_index {
        return Ok(md);
    }
    let mut reader = ParquetMetaDataReader::new_with_metadata(md).with_page_index_policy(PageIndexPolicy::Optional);
    reader.read_page_indexes(file).map_err(|e| ParquetBoundsError::BadFooter(format!("page index: {e}")))?;
    let md = reader.finish().map_err(|e| ParquetBoundsError::BadFooter(format!("page index: {e}")))?;
    if let Some(index) = md.offset_index().filter(|_| pages == Pages::Walk) {
        for (g, (indexed, walked)) in index.iter().zip(&data_pages).enumerate() {
            for (c, (indexed, walked)) in indexed.iter().zip(walked).enumerate() {
                let named: Vec<(u64, u64)> = indexed
                    .page_locations()
                    .iter()
                    .map(|p| (p.offset.max(0) as u64, i64::from(p.compressed_page_size).max(0) as u64))
                    .collect();
                if !named.is_empty() && named != *walked {
                    let column = md.row_group(g).column(c).column_path().string();
                    let reason = "its offset index names other pages than its page headers chain to".to_string();
                    return Err(ParquetBoundsError::Chunk { group: g, column, reason });
                }
            }
        }
    }
    Ok(md)
}

/// `len` bytes of `file` at `pos` (a length this module chose or bounded, never one a file claims
/// unchecked), all of them.
fn read<R: ChunkReader>(file: &R, pos: u64, len: u64) -> Result<Bytes, ParquetBoundsError> {
    let bytes = file.get_bytes(pos, len as usize).map_err(|e| match e {
        parquet::errors::ParquetError::External(e) => match e.downcast::<std::io::Error>() {
            Ok(io) => ParquetBoundsError::Io(*io),
            Err(e) => ParquetBoundsError::Io(std::io::Error::other(e)),
        },
        e => ParquetBoundsError::Io(std::io::Error::other(e)),
    })?;
    if (bytes.len() as u64) < len {
        return Err(ParquetBoundsError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(bytes)
}

/// Walk the page headers of the column chunk at `start` (`size` bytes): each page within the
/// limits, the pages filling the chunk exactly. Returns the data pages' (offset, size with header),
/// which an offset index must name.
fn walk_pages<R: ChunkReader>(
    file: &R,
    start: u64,
    size: u64,
    limits: &ParquetLimits,
) -> Result<Vec<(u64, u64)>, String> {
    let end = start + size;
    let mut pos = start;
    let mut data_pages = Vec::new();
    while pos < end {
        let (header, header_len) = read_page_header(file, pos, end)?;
        let page = page_size(&header, pos, header_len, end, limits)?;
        if header.is_data {
            data_pages.push((pos, page));
        }
        pos += page;
    }
    Ok(data_pages)
}

/// Read and parse the page header at `pos` (reading no further than `end`), with its length.
fn read_page_header<R: ChunkReader>(file: &R, pos: u64, end: u64) -> Result<(PageHeader, u64), String> {
    let mut want = HEADER_PROBE.min(end - pos);
    loop {
        let buf = read(file, pos, want).map_err(|e| e.to_string())?;
        let mut t = Thrift::new(&buf);
        match page_header(&mut t) {
            Ok(h) => return Ok((h, t.pos as u64)),
            Err(Malformed::Short) if want < MAX_PAGE_HEADER.min(end - pos) => {
                want = (want * 4).min(MAX_PAGE_HEADER).min(end - pos);
            }
            Err(Malformed::Short) => return Err(format!("the page header at byte {pos} does not end")),
            Err(Malformed::Bad(why)) => return Err(format!("the page header at byte {pos} is damaged: {why}")),
        }
    }
}

/// The size (header included) of the page at `pos` whose header is `header`, checked against
/// `limits` and against the end of its column chunk.
fn page_size(header: &PageHeader, pos: u64, header_len: u64, end: u64, limits: &ParquetLimits) -> Result<u64, String> {
    let (Ok(compressed), Ok(uncompressed)) = (u64::try_from(header.compressed), u64::try_from(header.uncompressed))
    else {
        return Err(format!("the page at byte {pos} claims a negative size"));
    };
    if uncompressed > limits.max_page_uncompressed || compressed > limits.max_page_compressed {
        return Err(format!(
            "the page at byte {pos} claims {compressed} bytes stored and {uncompressed} decoded, more than \
             the {} and {} this kind of file may have",
            limits.max_page_compressed, limits.max_page_uncompressed
        ));
    }
    if pos + header_len + compressed > end {
        return Err(format!("the page at byte {pos} runs past the end of its column chunk"));
    }
    Ok(header_len + compressed)
}

/// Walk the footer's thrift `FileMetaData` far enough to measure its schema (field 2, a list of
/// `SchemaElement`s in pre-order whose field 5 is `num_children`) without building anything.
fn check_schema_shape(footer: &[u8], limits: &ParquetLimits) -> Result<(), ParquetBoundsError> {
    let bad = |m: Malformed| ParquetBoundsError::BadFooter(m.to_string());
    let mut t = Thrift::new(footer);
    let mut last = 0;
    let mut seen = false;
    while let Some((id, ty)) = t.field(&mut last).map_err(bad)? {
        if id != 2 || ty != T_LIST {
            t.skip(ty, false, 1).map_err(bad)?;
            continue;
        }
        seen = true;
        let (n, element) = t.list_header().map_err(bad)?;
        if element != T_STRUCT && n > 0 {
            return Err(ParquetBoundsError::BadSchema("its elements are not structs"));
        }
        if n > limits.max_schema_elements as u64 {
            return Err(ParquetBoundsError::SchemaTooWide { elements: n, max: limits.max_schema_elements });
        }
        // The children each open group still expects, innermost last.
        let mut open: Vec<u64> = Vec::new();
        for i in 0..n {
            let children = schema_element_children(&mut t).map_err(bad)?;
            if i > 0 {
                match open.last_mut() {
                    Some(left) => *left -= 1,
                    None => return Err(ParquetBoundsError::BadSchema("more than one root")),
                }
            }
            match children {
                Some(k) if k < 0 => return Err(ParquetBoundsError::BadSchema("a group with a negative child count")),
                Some(k) if k > 0 => {
                    if k as u64 > n - i - 1 {
                        return Err(ParquetBoundsError::BadSchema("a group claims more children than follow it"));
                    }
                    open.push(k as u64);
                    // The root's children are at depth 0: count the groups below the root.
                    let depth = open.len() - 1;
                    if depth > limits.max_schema_depth {
                        return Err(ParquetBoundsError::SchemaTooDeep { depth, max: limits.max_schema_depth });
                    }
                }
                _ => {}
            }
            while open.last() == Some(&0) {
                open.pop();
            }
        }
        if !open.is_empty() {
            return Err(ParquetBoundsError::BadSchema("the schema ends inside a group"));
        }
    }
    if !seen {
        return Err(ParquetBoundsError::BadSchema("the footer has no schema"));
    }
    Ok(())
}

/// `num_children` of the `SchemaElement` struct at `t`, the rest skipped.
fn schema_element_children(t: &mut Thrift) -> Result<Option<i64>, Malformed> {
    let mut last = 0;
    let mut children = None;
    while let Some((id, ty)) = t.field(&mut last)? {
        if id == 5 && ty == T_I32 {
            children = Some(t.zigzag()?);
        } else {
            t.skip(ty, false, 2)?;
        }
    }
    Ok(children)
}

/// What the walk needs of a `PageHeader`.
struct PageHeader {
    uncompressed: i64,
    compressed: i64,
    /// A data page (v1 or v2), which an offset index lists; not a dictionary or index page.
    is_data: bool,
}

/// Parse a thrift `PageHeader`: 1 type, 2 uncompressed_page_size, 3 compressed_page_size.
fn page_header(t: &mut Thrift) -> Result<PageHeader, Malformed> {
    let mut last = 0;
    let (mut kind, mut uncompressed, mut compressed) = (None, None, None);
    while let Some((id, ty)) = t.field(&mut last)? {
        match (id, ty) {
            (1, T_I32) => kind = Some(t.zigzag()?),
            (2, T_I32) => uncompressed = Some(t.zigzag()?),
            (3, T_I32) => compressed = Some(t.zigzag()?),
            _ => t.skip(ty, false, 1)?,
        }
    }
    match (kind, uncompressed, compressed) {
        (Some(kind), Some(uncompressed), Some(compressed)) => {
            // PageType: 0 DATA_PAGE, 1 INDEX_PAGE, 2 DICTIONARY_PAGE, 3 DATA_PAGE_V2.
            Ok(PageHeader { uncompressed, compressed, is_data: kind == 0 || kind == 3 })
        }
        _ => Err(Malformed::Bad("a page header without its type or sizes")),
    }
}

// Thrift compact protocol type codes.
const T_BOOL_TRUE: u8 = 1;
const T_BOOL_FALSE: u8 = 2;
const T_BYTE: u8 = 3;
const T_I16: u8 = 4;
const T_I32: u8 = 5;
const T_I64: u8 = 6;
const T_DOUBLE: u8 = 7;
const T_BINARY: u8 = 8;
const T_LIST: u8 = 9;
const T_SET: u8 = 10;
const T_MAP: u8 = 11;
const T_STRUCT: u8 = 12;

/// Why thrift bytes did not parse.
#[derive(Debug)]
enum Malformed {
    /// They end before the value does (for a page header: read more and try again).
    Short,
    Bad(&'static str),
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Malformed::Short => f.write_str("it ends inside a value"),
            Malformed::Bad(why) => f.write_str(why),
        }
    }
}

/// A reader of the thrift compact protocol over a byte slice that allocates nothing: lengths are
/// checked against the bytes left, and nesting is bounded by [`MAX_THRIFT_DEPTH`].
struct Thrift<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Thrift<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Thrift { buf, pos: 0 }
    }

    fn left(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn byte(&mut self) -> Result<u8, Malformed> {
        let b = *self.buf.get(self.pos).ok_or(Malformed::Short)?;
        self.pos += 1;
        Ok(b)
    }

    fn advance(&mut self, n: u64) -> Result<(), Malformed> {
        if n > self.left() {
            return Err(Malformed::Short);
        }
        self.pos += n as usize;
        Ok(())
    }

    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Malformed::Bad("a varint longer than ten bytes"))
    }

    fn zigzag(&mut self) -> Result<i64, Malformed> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    /// The next field of a struct as (id, type), or None at its end.
    fn field(&mut self, last: &mut i64) -> Result<Option<(i64, u8)>, Malformed> {
        let b = self.byte()?;
        if b == 0 {
            return Ok(None);
        }
        let delta = i64::from(b >> 4);
        let id = if delta == 0 { self.zigzag()? } else { *last + delta };
        *last = id;
        Ok(Some((id, b & 0x0f)))
    }

    /// A list's or set's (length, element type); the length is checked against the bytes left
    /// (every element takes at least one byte).
    fn list_header(&mut self) -> Result<(u64, u8), Malformed> {
        let b = self.byte()?;
        let n = match u64::from(b >> 4) {
            15 => self.varint()?,
            n => n,
        };
        if n > self.left() {
            return Err(Malformed::Short);
        }
        Ok((n, b & 0x0f))
    }

    /// Skip a value of type `ty`; `in_container`: a bool is then a byte of its own (in a struct
    /// field it is in the type).
    fn skip(&mut self, ty: u8, in_container: bool, depth: usize) -> Result<(), Malformed> {
        if depth > MAX_THRIFT_DEPTH {
            return Err(Malformed::Bad("values nested too deep"));
        }
        match ty {
            T_BOOL_TRUE | T_BOOL_FALSE if in_container => self.advance(1),
            T_BOOL_TRUE | T_BOOL_FALSE => Ok(()),
            T_BYTE => self.advance(1),
            T_I16 | T_I32 | T_I64 => self.varint().map(drop),
            T_DOUBLE => self.advance(8),
            T_BINARY => {
                let n = self.varint()?;
                self.advance(n)
            }
            T_LIST | T_SET => {
                let (n, element) = self.list_header()?;
                for _ in 0..n {
                    self.skip(element, true, depth + 1)?;
                }
                Ok(())
            }
            T_MAP => {
                let n = self.varint()?;
                if n == 0 {
                    return Ok(());
                }
                if n > self.left() {
                    return Err(Malformed::Short);
                }
                let kinds = self.byte()?;
                for _ in 0..n {
                    self.skip(kinds >> 4, true, depth + 1)?;
                    self.skip(kinds & 0x0f, true, depth + 1)?;
                }
                Ok(())
            }
            T_STRUCT => {
                let mut last = 0;
                while let Some((_, field)) = self.field(&mut last)? {
                    self.skip(field, false, depth + 1)?;
                }
                Ok(())
            }
            _ => Err(Malformed::Bad("an unknown thrift type")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;
    use crate::oplog::datafile::{DATA_FILE_LIMITS, write_data_file};
    use crate::oplog::schema::OplogRow;

    /// A data file as pond writes it: 300 dirents (one page per column) and what `check_parquet` says.
    fn checked_with(limits: &ParquetLimits) -> Result<ParquetMetaData, ParquetBoundsError> {
        let dir = tempfile::tempdir().expect("dir");
        let rows: Vec<OplogRow> = (0..300)
            .map(|i| OplogRow::Dirent { parent: 1, name: format!("name-{i}").into_bytes(), seq: i, child: Some(i + 2) })
            .collect();
        write_data_file(dir.path(), "part-1.parquet", &rows).expect("write");
        check_parquet(&File::open(dir.path().join("part-1.parquet")).expect("open"), limits)
    }

    #[test]
    fn a_data_file_as_pond_writes_it_passes_with_its_page_index() {
        let md = checked_with(&DATA_FILE_LIMITS).expect("pond's own data file passes");
        assert!(md.offset_index().is_some(), "the page index was checked and kept");
    }

    #[test]
    fn pages_codecs_and_footers_past_the_limits_are_refused_with_what_they_claim() {
        let err = checked_with(&ParquetLimits { max_page_uncompressed: 100, ..DATA_FILE_LIMITS }).unwrap_err();
        assert!(err.to_string().contains("decoded, more than the"), "{err}");
        let err = checked_with(&ParquetLimits { codecs: &[Codec::Snappy], ..DATA_FILE_LIMITS }).unwrap_err();
        assert!(err.to_string().contains("codec UNCOMPRESSED"), "{err}");
        let err = checked_with(&ParquetLimits { max_footer: 100, ..DATA_FILE_LIMITS }).unwrap_err();
        assert!(matches!(err, ParquetBoundsError::FooterTooLarge { max: 100, .. }), "{err}");
        let err = checked_with(&ParquetLimits { max_schema_depth: 1, ..DATA_FILE_LIMITS }).unwrap_err();
        assert!(matches!(err, ParquetBoundsError::SchemaTooDeep { depth: 2, max: 1 }), "{err}");
        let err = checked_with(&ParquetLimits { max_schema_elements: 10, ..DATA_FILE_LIMITS }).unwrap_err();
        assert!(matches!(err, ParquetBoundsError::SchemaTooWide { max: 10, .. }), "{err}");
    }

    #[test]
    fn a_reader_checking_pages_as_it_reads_them_gets_each_page_s_size_or_its_refusal() {
        let dir = tempfile::tempdir().expect("dir");
        let rows: Vec<OplogRow> =
            (0..10).map(|i| OplogRow::Dirent { parent: 1, name: vec![b'n'; 10], seq: i, child: Some(i + 2) }).collect();
        write_data_file(dir.path(), "part-1.parquet", &rows).expect("write");
        let file = File::open(dir.path().join("part-1.parquet")).expect("open");
        let md = check_footer(&file, &DATA_FILE_LIMITS).expect("the footer passes");
        let index = md.offset_index().expect("pond writes an offset index");
        let chunk = md.row_group(0).column(0);
        let end = (chunk.dictionary_page_offset().unwrap_or(chunk.data_page_offset()) + chunk.compressed_size()) as u64;
        let page = &index[0][0].page_locations()[0];
        let size = check_page(&file, page.offset as u64, end, &DATA_FILE_LIMITS).expect("the page passes");
        assert_eq!(size, page.compressed_page_size as u64, "the size the offset index records");
        let tight = ParquetLimits { max_page_uncompressed: 1, ..DATA_FILE_LIMITS };
        assert!(matches!(check_page(&file, page.offset as u64, end, &tight), Err(ParquetBoundsError::Page { .. })));
        assert!(check_page(&file, end, end, &DATA_FILE_LIMITS).is_err(), "past its chunk");
    }

    #[test]
    fn thrift_values_nested_past_the_bound_are_refused_without_recursing_further() {
        // A struct in a struct in ... 1000 deep: field 1 of type struct each time.
        let mut bytes = vec![0x1c; 1000];
        bytes.extend(std::iter::repeat_n(0, 1001));
        let mut t = Thrift::new(&bytes);
        assert!(matches!(t.skip(T_STRUCT, false, 1), Err(Malformed::Bad("values nested too deep"))));
        // A list claiming more elements than bytes left.
        let mut t = Thrift::new(&[0xf5, 0xff, 0xff, 0xff, 0xff, 0x07]);
        assert!(matches!(t.skip(T_LIST, false, 1), Err(Malformed::Short)));
    }
}
