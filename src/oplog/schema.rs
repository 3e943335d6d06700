//! The oplog row: what one Delta table row means, and its Arrow/Delta schema. This is the on-disk
//! contract that any Delta reader sees.
//!
//! Two kinds of rows share the table, told apart by `record`:
//! - `node`: one version of an inode (kind, POSIX attributes, xattrs, symlink target, content).
//!   `kind = null` is a tombstone: the inode is gone.
//! - `dirent`: one version of a directory entry `(ino = parent, name) -> child`. `child = null` is a
//!   tombstone: the name is gone. Directories are never rewritten as a whole, so adding one name to a
//!   directory of 100,000 costs one row.
//!
//! Every row carries `seq`, a pond-wide sequence number; for each key (node ino, or parent + name) the
//! row with the highest `seq` among the active data files is the current one.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, BooleanArray, BooleanBuilder, Int32Array, Int32Builder, Int64Array,
    Int64Builder, ListArray, ListBuilder, RecordBatch, StringArray, StringBuilder,
};
use arrow::datatypes::{DataType as ArrowType, Field, Schema, SchemaRef};
use bytes::Bytes;
use deltalake::kernel::{ArrayType, DataType, PrimitiveType, StructField};

use crate::large_files::hash::{Blake3Hash, Sha256Digest};

/// Column names, in schema order.
pub mod col {
    pub const RECORD: &str = "record";
    pub const SEQ: &str = "seq";
    pub const INO: &str = "ino";
    pub const NAME: &str = "name";
    pub const CHILD: &str = "child";
    pub const KIND: &str = "kind";
    pub const MODE: &str = "mode";
    pub const UID: &str = "uid";
    pub const GID: &str = "gid";
    pub const SIZE: &str = "size";
    pub const ATIME_NS: &str = "atime_ns";
    pub const MTIME_NS: &str = "mtime_ns";
    pub const CTIME_NS: &str = "ctime_ns";
    pub const NLINK: &str = "nlink";
    pub const RDEV: &str = "rdev";
    pub const SYMLINK: &str = "symlink";
    pub const XATTR_NAMES: &str = "xattr_names";
    pub const XATTR_VALUES: &str = "xattr_values";
    pub const CONTENT: &str = "content";
    pub const LARGE: &str = "large";
    pub const BLAKE3: &str = "blake3";
    pub const SHA256: &str = "sha256";
}

/// What kind of inode a node row describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl NodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::File => "file",
            NodeKind::Dir => "dir",
            NodeKind::Symlink => "symlink",
            NodeKind::Fifo => "fifo",
            NodeKind::Socket => "socket",
            NodeKind::CharDevice => "char",
            NodeKind::BlockDevice => "block",
        }
    }

    pub fn parse(s: &str) -> Option<NodeKind> {
        Some(match s {
            "file" => NodeKind::File,
            "dir" => NodeKind::Dir,
            "symlink" => NodeKind::Symlink,
            "fifo" => NodeKind::Fifo,
            "socket" => NodeKind::Socket,
            "char" => NodeKind::CharDevice,
            "block" => NodeKind::BlockDevice,
            _ => return None,
        })
    }
}

/// Where a row sits in the table: a data file (relative to the pond root) and a row index in it.
/// Used to fetch inline content lazily, so opening a pond never loads every file's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowLoc {
    pub file: Arc<str>,
    pub row: u64,
}

/// Where a regular file's bytes live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// In the oplog row itself. `bytes` is `None` when the row was read without its content column;
    /// then `loc` says where to fetch it.
    Inline { bytes: Option<Bytes>, loc: Option<RowLoc>, hash: Blake3Hash, sha256: Option<Sha256Digest> },
    /// In `_large_files/<hash>.parquet`.
    Large { hash: Blake3Hash, sha256: Option<Sha256Digest> },
}

impl Content {
    pub fn hash(&self) -> &Blake3Hash {
        match self {
            Content::Inline { hash, .. } | Content::Large { hash, .. } => hash,
        }
    }

    /// The SHA-256 that rows written before chunk-level storage record (newer rows leave it out:
    /// BLAKE3 names every byte, and a SHA-256 cannot follow a change of a few chunks of a large
    /// file without reading all of it again).
    pub fn sha256(&self) -> Option<&Sha256Digest> {
        match self {
            Content::Inline { sha256, .. } | Content::Large { sha256, .. } => sha256.as_ref(),
        }
    }
}

/// One version of an inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeData {
    pub kind: NodeKind,
    /// Permission bits (07777); the file type is `kind`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub nlink: u32,
    pub rdev: u64,
    pub symlink: Option<Vec<u8>>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Regular files only.
    pub content: Option<Content>,
}

impl NodeData {
    /// A new, empty directory (mode 0755, two links), owned by `uid`:`gid`, its times `time_ns`.
    pub fn empty_dir(uid: u32, gid: u32, time_ns: i64) -> NodeData {
        NodeData {
            kind: NodeKind::Dir,
            mode: 0o755,
            uid,
            gid,
            size: 0,
            atime_ns: time_ns,
            mtime_ns: time_ns,
            ctime_ns: time_ns,
            nlink: 2,
            rdev: 0,
            symlink: None,
            xattrs: Vec::new(),
            content: None,
        }
    }
}

/// A row of the oplog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OplogRow {
    Node { ino: u64, seq: u64, data: Option<NodeData> },
    Dirent { parent: u64, name: Vec<u8>, seq: u64, child: Option<u64> },
}

impl OplogRow {
    pub fn seq(&self) -> u64 {
        match self {
            OplogRow::Node { seq, .. } | OplogRow::Dirent { seq, .. } => *seq,
        }
    }

    pub fn key(&self) -> RowKey {
        match self {
            OplogRow::Node { ino, .. } => RowKey::Node(*ino),
            OplogRow::Dirent { parent, name, .. } => RowKey::Dirent(*parent, name.clone().into()),
        }
    }

    pub fn is_tombstone(&self) -> bool {
        match self {
            OplogRow::Node { data, .. } => data.is_none(),
            OplogRow::Dirent { child, .. } => child.is_none(),
        }
    }
}

/// The identity a row versions: later `seq` for the same key wins.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RowKey {
    Node(u64),
    Dirent(u64, Box<[u8]>),
}

fn list_field() -> Arc<Field> {
    Arc::new(Field::new("element", ArrowType::Binary, true))
}

/// The Arrow schema of the oplog's data files.
pub fn arrow_schema() -> SchemaRef {
    let list = ArrowType::List(list_field());
    Arc::new(Schema::new(vec![
        Field::new(col::RECORD, ArrowType::Utf8, false),
        Field::new(col::SEQ, ArrowType::Int64, false),
        Field::new(col::INO, ArrowType::Int64, false),
        Field::new(col::NAME, ArrowType::Binary, true),
        Field::new(col::CHILD, ArrowType::Int64, true),
        Field::new(col::KIND, ArrowType::Utf8, true),
        Field::new(col::MODE, ArrowType::Int32, true),
        Field::new(col::UID, ArrowType::Int64, true),
        Field::new(col::GID, ArrowType::Int64, true),
        Field::new(col::SIZE, ArrowType::Int64, true),
        Field::new(col::ATIME_NS, ArrowType::Int64, true),
        Field::new(col::MTIME_NS, ArrowType::Int64, true),
        Field::new(col::CTIME_NS, ArrowType::Int64, true),
        Field::new(col::NLINK, ArrowType::Int64, true),
        Field::new(col::RDEV, ArrowType::Int64, true),
        Field::new(col::SYMLINK, ArrowType::Binary, true),
        Field::new(col::XATTR_NAMES, list.clone(), true),
        Field::new(col::XATTR_VALUES, list, true),
        Field::new(col::CONTENT, ArrowType::Binary, true),
        Field::new(col::LARGE, ArrowType::Boolean, true),
        Field::new(col::BLAKE3, ArrowType::Utf8, true),
        Field::new(col::SHA256, ArrowType::Utf8, true),
    ]))
}

/// The same schema in Delta's terms, for `CreateBuilder`.
pub fn delta_columns() -> Vec<StructField> {
    let p = |t: PrimitiveType| DataType::Primitive(t);
    let list = || DataType::Array(Box::new(ArrayType::new(p(PrimitiveType::Binary), true)));
    arrow_schema()
        .fields()
        .iter()
        .map(|f| {
            let t = match f.data_type() {
                ArrowType::Utf8 => p(PrimitiveType::String),
                ArrowType::Int64 => p(PrimitiveType::Long),
                ArrowType::Int32 => p(PrimitiveType::Integer),
                ArrowType::Binary => p(PrimitiveType::Binary),
                ArrowType::Boolean => p(PrimitiveType::Boolean),
                _ => list(),
            };
            StructField::new(f.name().clone(), t, f.is_nullable())
        })
        .collect()
}

/// Rows to one Arrow batch (in the order given).
pub fn rows_to_batch(rows: &[OplogRow]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let n = rows.len();
    let mut record = StringBuilder::with_capacity(n, n * 5);
    let mut seq = Int64Builder::with_capacity(n);
    let mut ino = Int64Builder::with_capacity(n);
    let mut name = BinaryBuilder::new();
    let mut child = Int64Builder::with_capacity(n);
    let mut kind = StringBuilder::new();
    let mut mode = Int32Builder::with_capacity(n);
    let (mut uid, mut gid, mut size) = (Int64Builder::new(), Int64Builder::new(), Int64Builder::new());
    let (mut atime, mut mtime, mut ctime) = (Int64Builder::new(), Int64Builder::new(), Int64Builder::new());
    let (mut nlink, mut rdev) = (Int64Builder::new(), Int64Builder::new());
    let mut symlink = BinaryBuilder::new();
    let mut xnames = ListBuilder::new(BinaryBuilder::new()).with_field(list_field());
    let mut xvalues = ListBuilder::new(BinaryBuilder::new()).with_field(list_field());
    let mut content = BinaryBuilder::new();
    let mut large = BooleanBuilder::new();
    let (mut b3, mut sha) = (StringBuilder::new(), StringBuilder::new());

    for row in rows {
        match row {
            OplogRow::Dirent { parent, name: n, seq: s, child: c } => {
                record.append_value("dirent");
                seq.append_value(*s as i64);
                ino.append_value(*parent as i64);
                name.append_value(n);
                child.append_option(c.map(|c| c as i64));
                kind.append_null();
                mode.append_null();
                for b in [&mut uid, &mut gid, &mut size, &mut atime, &mut mtime, &mut ctime, &mut nlink, &mut rdev] {
                    b.append_null();
                }
                symlink.append_null();
                xnames.append_null();
                xvalues.append_null();
                content.append_null();
                large.append_null();
                b3.append_null();
                sha.append_null();
            }
            OplogRow::Node { ino: i, seq: s, data } => {
                record.append_value("node");
                seq.append_value(*s as i64);
                ino.append_value(*i as i64);
                name.append_null();
                child.append_null();
                let Some(d) = data else {
                    kind.append_null();
                    mode.append_null();
                    for b in [&mut uid, &mut gid, &mut size, &mut atime, &mut mtime, &mut ctime, &mut nlink, &mut rdev]
                    {
                        b.append_null();
                    }
                    symlink.append_null();
                    xnames.append_null();
                    xvalues.append_null();
                    content.append_null();
                    large.append_null();
                    b3.append_null();
                    sha.append_null();
                    continue;
                };
                kind.append_value(d.kind.as_str());
                mode.append_value(d.mode as i32);
                uid.append_value(d.uid as i64);
                gid.append_value(d.gid as i64);
                size.append_value(d.size as i64);
                atime.append_value(d.atime_ns);
                mtime.append_value(d.mtime_ns);
                ctime.append_value(d.ctime_ns);
                nlink.append_value(d.nlink as i64);
                rdev.append_value(d.rdev as i64);
                symlink.append_option(d.symlink.as_deref());
                for (k, v) in &d.xattrs {
                    xnames.values().append_value(k);
                    xvalues.values().append_value(v);
                }
                xnames.append(true);
                xvalues.append(true);
                match &d.content {
                    None => {
                        content.append_null();
                        large.append_null();
                        b3.append_null();
                        sha.append_null();
                    }
                    Some(Content::Inline { bytes, hash, sha256, .. }) => {
                        // A row written back (compaction) must carry its bytes; the caller loads them.
                        content.append_value(bytes.as_deref().unwrap_or_default());
                        large.append_value(false);
                        b3.append_value(hash.to_hex());
                        sha.append_option(sha256.map(|s| s.to_hex()));
                    }
                    Some(Content::Large { hash, sha256 }) => {
                        content.append_null();
                        large.append_value(true);
                        b3.append_value(hash.to_hex());
                        sha.append_option(sha256.map(|s| s.to_hex()));
                    }
                }
            }
        }
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(record.finish()),
        Arc::new(seq.finish()),
        Arc::new(ino.finish()),
        Arc::new(name.finish()),
        Arc::new(child.finish()),
        Arc::new(kind.finish()),
        Arc::new(mode.finish()),
        Arc::new(uid.finish()),
        Arc::new(gid.finish()),
        Arc::new(size.finish()),
        Arc::new(atime.finish()),
        Arc::new(mtime.finish()),
        Arc::new(ctime.finish()),
        Arc::new(nlink.finish()),
        Arc::new(rdev.finish()),
        Arc::new(symlink.finish()),
        Arc::new(xnames.finish()),
        Arc::new(xvalues.finish()),
        Arc::new(content.finish()),
        Arc::new(large.finish()),
        Arc::new(b3.finish()),
        Arc::new(sha.finish()),
    ];
    RecordBatch::try_new(arrow_schema(), cols)
}

/// Why a batch could not be read as oplog rows. Carries the column and row so the damage can be found.
#[derive(Debug, thiserror::Error)]
#[error("column `{column}` row {row}: {reason}")]
pub struct RowDecodeError {
    pub column: &'static str,
    pub row: usize,
    pub reason: String,
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &'static str) -> Result<Option<&'a T>, RowDecodeError> {
    match batch.column_by_name(name) {
        None => Ok(None),
        Some(c) => c.as_any().downcast_ref::<T>().map(Some).ok_or(RowDecodeError {
            column: name,
            row: 0,
            reason: format!("unexpected type {}", c.data_type()),
        }),
    }
}

fn required<'a, T: 'static>(batch: &'a RecordBatch, name: &'static str) -> Result<&'a T, RowDecodeError> {
    column(batch, name)?.ok_or(RowDecodeError { column: name, row: 0, reason: "missing column".into() })
}

fn list_values(list: Option<&ListArray>, row: usize) -> Result<Vec<Vec<u8>>, RowDecodeError> {
    let Some(list) = list else { return Ok(Vec::new()) };
    if list.is_null(row) {
        return Ok(Vec::new());
    }
    let values = list.value(row);
    let bin = values.as_any().downcast_ref::<BinaryArray>().ok_or(RowDecodeError {
        column: col::XATTR_NAMES,
        row,
        reason: "xattr list is not binary".into(),
    })?;
    Ok((0..bin.len()).map(|i| bin.value(i).to_vec()).collect())
}

/// Decode a batch read from data file `file`; `first_row` is the index of the batch's first row in it.
/// Works with or without the `content` column (projection), never panics on bad values.
pub fn batch_to_rows(batch: &RecordBatch, file: &Arc<str>, first_row: u64) -> Result<Vec<OplogRow>, RowDecodeError> {
    let record: &StringArray = required(batch, col::RECORD)?;
    let seq: &Int64Array = required(batch, col::SEQ)?;
    let ino: &Int64Array = required(batch, col::INO)?;
    let name: Option<&BinaryArray> = column(batch, col::NAME)?;
    let child: Option<&Int64Array> = column(batch, col::CHILD)?;
    let kind: Option<&StringArray> = column(batch, col::KIND)?;
    let mode: Option<&Int32Array> = column(batch, col::MODE)?;
    let i64s = |n| column::<Int64Array>(batch, n);
    let (uid, gid, size) = (i64s(col::UID)?, i64s(col::GID)?, i64s(col::SIZE)?);
    let (atime, mtime, ctime) = (i64s(col::ATIME_NS)?, i64s(col::MTIME_NS)?, i64s(col::CTIME_NS)?);
    let (nlink, rdev) = (i64s(col::NLINK)?, i64s(col::RDEV)?);
    let symlink: Option<&BinaryArray> = column(batch, col::SYMLINK)?;
    let xnames: Option<&ListArray> = column(batch, col::XATTR_NAMES)?;
    let xvalues: Option<&ListArray> = column(batch, col::XATTR_VALUES)?;
    let content: Option<&BinaryArray> = column(batch, col::CONTENT)?;
    let large: Option<&BooleanArray> = column(batch, col::LARGE)?;
    let b3: Option<&StringArray> = column(batch, col::BLAKE3)?;
    let sha: Option<&StringArray> = column(batch, col::SHA256)?;

    let err =
        |column: &'static str, row: usize, reason: &str| RowDecodeError { column, row, reason: reason.to_string() };
    let opt_i64 = |a: Option<&Int64Array>, r: usize| a.filter(|a| !a.is_null(r)).map(|a| a.value(r));
    let nonneg = |a: Option<&Int64Array>, c: &'static str, r: usize| -> Result<u64, RowDecodeError> {
        let v = opt_i64(a, r).ok_or_else(|| err(c, r, "missing value"))?;
        u64::try_from(v).map_err(|_| err(c, r, "negative value"))
    };

    let mut rows = Vec::with_capacity(batch.num_rows());
    for r in 0..batch.num_rows() {
        let s = u64::try_from(seq.value(r)).map_err(|_| err(col::SEQ, r, "negative"))?;
        let i = u64::try_from(ino.value(r)).map_err(|_| err(col::INO, r, "negative"))?;
        match record.value(r) {
            "dirent" => {
                let n = name.filter(|a| !a.is_null(r)).ok_or_else(|| err(col::NAME, r, "dirent without name"))?;
                let c = match opt_i64(child, r) {
                    None => None,
                    Some(c) => Some(u64::try_from(c).map_err(|_| err(col::CHILD, r, "negative"))?),
                };
                rows.push(OplogRow::Dirent { parent: i, name: n.value(r).to_vec(), seq: s, child: c });
            }
            "node" => {
                let k = kind.filter(|a| !a.is_null(r)).map(|a| a.value(r));
                let data = match k {
                    None => None,
                    Some(k) => {
                        let kind = NodeKind::parse(k).ok_or_else(|| err(col::KIND, r, "unknown kind"))?;
                        let m = mode.filter(|a| !a.is_null(r)).ok_or_else(|| err(col::MODE, r, "missing"))?.value(r);
                        let names = list_values(xnames, r)?;
                        let values = list_values(xvalues, r)?;
                        if names.len() != values.len() {
                            return Err(err(col::XATTR_VALUES, r, "xattr names and values differ in count"));
                        }
                        let content = if kind == NodeKind::File {
                            let hash = b3
                                .filter(|a| !a.is_null(r))
                                .and_then(|a| Blake3Hash::from_hex(a.value(r)))
                                .ok_or_else(|| err(col::BLAKE3, r, "file without a valid blake3"))?;
                            let sha256 = match sha.filter(|a| !a.is_null(r)) {
                                None => None,
                                Some(a) => Some(
                                    Sha256Digest::from_hex(a.value(r))
                                        .ok_or_else(|| err(col::SHA256, r, "not a valid sha256"))?,
                                ),
                            };
                            let is_large = large.filter(|a| !a.is_null(r)).map(|a| a.value(r)).unwrap_or(false);
                            Some(if is_large {
                                Content::Large { hash, sha256 }
                            } else {
                                let bytes = match content {
                                    Some(c) if c.is_null(r) => {
                                        return Err(err(col::CONTENT, r, "inline file without content"));
                                    }
                                    Some(c) => Some(Bytes::copy_from_slice(c.value(r))),
                                    None => None,
                                };
                                let loc = Some(RowLoc { file: file.clone(), row: first_row + r as u64 });
                                Content::Inline { bytes, loc, hash, sha256 }
                            })
                        } else {
                            None
                        };
                        Some(NodeData {
                            kind,
                            mode: (m as u32) & 0o7777,
                            uid: nonneg(uid, col::UID, r)? as u32,
                            gid: nonneg(gid, col::GID, r)? as u32,
                            size: nonneg(size, col::SIZE, r)?,
                            atime_ns: opt_i64(atime, r).unwrap_or(0),
                            mtime_ns: opt_i64(mtime, r).unwrap_or(0),
                            ctime_ns: opt_i64(ctime, r).unwrap_or(0),
                            nlink: nonneg(nlink, col::NLINK, r)?.min(u32::MAX as u64) as u32,
                            rdev: opt_i64(rdev, r).unwrap_or(0) as u64,
                            symlink: symlink.filter(|a| !a.is_null(r)).map(|a| a.value(r).to_vec()),
                            xattrs: names.into_iter().zip(values).collect(),
                            content,
                        })
                    }
                };
                rows.push(OplogRow::Node { ino: i, seq: s, data });
            }
            other => return Err(err(col::RECORD, r, &format!("unknown record type {other:?}"))),
        }
    }
    Ok(rows)
}
