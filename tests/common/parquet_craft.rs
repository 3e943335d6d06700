//! Parquet files written byte by byte, to say what no honest writer says: a schema nested a million
//! groups deep, a group claiming 2^31 children, a page claiming 2 GiB, a zstd page that inflates to
//! 2 GiB from a few kilobytes. The thrift compact protocol is written here directly (parquet's own
//! writer refuses to write any of these).

/// What to write: one INT32 column `v` (REQUIRED, PLAIN) under `depth` nested groups, and one page
/// of it holding `values` values.
#[derive(Clone, Debug)]
pub struct Crafted {
    /// Groups between the root and the column.
    pub depth: usize,
    /// `num_children` of the root when set (the truth otherwise: 1).
    pub root_children: Option<i32>,
    pub values: i32,
    /// The page's claimed decoded size (the truth when None).
    pub claim_uncompressed: Option<i32>,
    /// Compress the page as a zstd bomb: `values` INT32 zeros followed by zeros up to the claim,
    /// so decoding really produces that many bytes.
    pub zstd_bomb: bool,
    /// No row group (a footer with only the schema, for the schema cases).
    pub no_row_group: bool,
}

impl Default for Crafted {
    fn default() -> Self {
        Crafted {
            depth: 0,
            root_children: None,
            values: 3,
            claim_uncompressed: None,
            zstd_bomb: false,
            no_row_group: false,
        }
    }
}

/// A thrift compact-protocol writer.
#[derive(Default)]
struct W {
    buf: Vec<u8>,
    last: Vec<i16>,
}

const I32: u8 = 5;
const I64: u8 = 6;
const BINARY: u8 = 8;
const LIST: u8 = 9;
const STRUCT: u8 = 12;

impl W {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }
    fn zigzag(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }
    fn begin(&mut self) {
        self.last.push(0);
    }
    fn end(&mut self) {
        self.buf.push(0);
        self.last.pop();
    }
    fn field(&mut self, id: i16, ty: u8) {
        let last = self.last.last_mut().expect("inside a struct");
        let delta = id - *last;
        assert!((1..=15).contains(&delta), "fields in order, close together");
        *last = id;
        self.buf.push(((delta as u8) << 4) | ty);
    }
    fn i32(&mut self, id: i16, v: i32) {
        self.field(id, I32);
        self.zigzag(v.into());
    }
    fn i64(&mut self, id: i16, v: i64) {
        self.field(id, I64);
        self.zigzag(v);
    }
    fn binary(&mut self, id: i16, v: &[u8]) {
        self.field(id, BINARY);
        self.varint(v.len() as u64);
        self.buf.extend_from_slice(v);
    }
    fn list(&mut self, id: i16, ty: u8, n: usize) {
        self.field(id, LIST);
        if n < 15 {
            self.buf.push(((n as u8) << 4) | ty);
        } else {
            self.buf.push(0xf0 | ty);
            self.varint(n as u64);
        }
    }
    fn strukt(&mut self, id: i16) {
        self.field(id, STRUCT);
        self.begin();
    }
}

/// A zstd frame of `len` zero bytes made of RLE blocks: four bytes per 128 KiB.
pub fn zstd_zeros(len: u64) -> Vec<u8> {
    let mut out = vec![0x28, 0xb5, 0x2f, 0xfd];
    // Frame header: single segment, an 8-byte content size, no checksum, no dictionary.
    out.push(0b1110_0000);
    out.extend_from_slice(&len.to_le_bytes());
    let mut left = len;
    loop {
        let n = left.min(128 << 10);
        left -= n;
        let last = u32::from(left == 0);
        let header = last | (1 << 1) | ((n as u32) << 3);
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.push(0);
        if left == 0 {
            return out;
        }
    }
}

/// The bytes of the parquet file `c` describes.
pub fn parquet_file(c: &Crafted) -> Vec<u8> {
    let mut file = b"PAR1".to_vec();
    let plain: Vec<u8> = (0..c.values).flat_map(|v| v.to_le_bytes()).collect();
    let (stored, codec, uncompressed) = if c.zstd_bomb {
        let claim = c.claim_uncompressed.expect("a bomb claims its size");
        (zstd_zeros(claim as u64), 6, claim)
    } else {
        (plain.clone(), 0, c.claim_uncompressed.unwrap_or(plain.len() as i32))
    };
    let page_offset = file.len() as i64;
    let mut page = W::default();
    page.begin();
    page.i32(1, 0); // DATA_PAGE
    page.i32(2, uncompressed);
    page.i32(3, stored.len() as i32);
    page.strukt(5);
    page.i32(1, c.values);
    page.i32(2, 0); // PLAIN
    page.i32(3, 3); // RLE
    page.i32(4, 3);
    page.end();
    page.end();
    file.extend_from_slice(&page.buf);
    file.extend_from_slice(&stored);
    let chunk_len = file.len() as i64 - page_offset;

    let mut names: Vec<Vec<u8>> = (0..c.depth).map(|i| format!("g{i}").into_bytes()).collect();
    names.push(b"v".to_vec());
    let mut m = W::default();
    m.begin();
    m.i32(1, 2);
    m.list(2, STRUCT, c.depth + 2);
    // The root, then each group, then the column.
    m.begin();
    m.binary(4, b"schema");
    m.i32(5, c.root_children.unwrap_or(1));
    m.end();
    for name in &names[..c.depth] {
        m.begin();
        m.i32(3, 0); // REQUIRED
        m.binary(4, name);
        m.i32(5, 1);
        m.end();
    }
    m.begin();
    m.i32(1, 1); // INT32
    m.i32(3, 0);
    m.binary(4, b"v");
    m.end();
    let rows = if c.no_row_group { 0 } else { i64::from(c.values) };
    m.i64(3, rows);
    m.list(4, STRUCT, usize::from(!c.no_row_group));
    if !c.no_row_group {
        m.begin();
        m.list(1, STRUCT, 1);
        m.begin();
        m.i64(2, page_offset);
        m.strukt(3);
        m.i32(1, 1);
        m.list(2, I32, 1);
        m.zigzag(0);
        m.list(3, BINARY, names.len());
        for n in &names {
            m.varint(n.len() as u64);
            m.buf.extend_from_slice(n);
        }
        m.i32(4, codec);
        m.i64(5, c.values.into());
        m.i64(6, i64::from(uncompressed) + (chunk_len - stored.len() as i64));
        m.i64(7, chunk_len);
        m.i64(9, page_offset);
        m.end();
        m.end();
        m.i64(2, chunk_len);
        m.i64(3, rows);
        m.end();
    }
    m.end();
    file.extend_from_slice(&m.buf);
    file.extend_from_slice(&(m.buf.len() as u32).to_le_bytes());
    file.extend_from_slice(b"PAR1");
    file
}
