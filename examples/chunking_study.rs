//! The chunking study: what pond's fixed 64 KiB chunks store for the versions of a file, against
//! content-defined chunks, on the same version sequences. `scripts/chunking-study.sh` makes the
//! inputs that need real tools (SQLite, tar, git, mkfs.ext4), runs this and writes
//! `results/chunking-study.md`.
//!
//! Two simulated stores see each workload's versions in order:
//! - **fixed** (pond's rule): chunk i is bytes `[i * 64 KiB, (i + 1) * 64 KiB)`, keyed by its BLAKE3
//!   chaining value at its position ([`pond::large_files::chunk_cv`], what pond's dedup index keys
//!   by), so a chunk is stored once per distinct (position, bytes);
//! - **fastcdc**: boundaries from FastCDC 2020 (normalization level 1) with min 16 KiB, average
//!   64 KiB, max 256 KiB, keyed by the BLAKE3 of the bytes, so a chunk is stored once per distinct
//!   bytes wherever it sits.
//!
//! A store's cost is the bytes of the distinct chunks it holds (chunks are stored uncompressed, as
//! pond's packs store them), plus manifests counted apart at 40 bytes per chunk per version.
//!
//! ```text
//! cargo run --release --locked --example chunking_study -- --work DIR [--only 1,3a,...] [sizes]
//!     [--cpu FILE [--cpu-mib 1024]]
//! ```
//! Sizes (defaults): --append-base-mib 100 --appends 20 --append-mib 1 --big-mib 1024
//! --insert-mib 64 --csv-rows 100000 --csv-inserts 100 --vm-writes 1000 --vm-versions 3.
//! DIR holds the tool-made versions (`sqlite/`, `tar/`, `git/`, `vm/v0.img`, each with a `NOTE`);
//! a workload whose directory is missing is skipped. `--cpu FILE` (a path in tmpfs) also times one
//! pass over a file of `--cpu-mib` MiB each way, single thread, in CPU time of the thread (the
//! machine is shared, so wall time includes waiting for a core); the file is removed afterwards.
//! The report (markdown) goes to stdout, progress to stderr.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::hint::black_box;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fastcdc::v2020::FastCDC;
use pond::large_files::chunk_cv;

const CHUNK: usize = 64 * 1024;
const CDC_MIN: usize = 16 * 1024;
const CDC_AVG: usize = 64 * 1024;
const CDC_MAX: usize = 256 * 1024;
/// Manifest bytes per chunk per version (a 32-byte hash and a location).
const MANIFEST_ENTRY: u64 = 40;
const MIB: usize = 1 << 20;

/// Deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for piece in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            piece.copy_from_slice(&v[..piece.len()]);
        }
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// What one version cost each store.
#[derive(Clone, Copy, Default)]
struct Step {
    size: u64,
    fixed_new: u64,
    /// Of `fixed_new`, bytes of all-zero chunks (stored once per position).
    fixed_zero_new: u64,
    fixed_chunks: u64,
    cdc_new: u64,
    cdc_chunks: u64,
}

/// The two simulated stores.
#[derive(Clone, Default)]
struct Stores {
    fixed: HashSet<[u8; 32]>,
    cdc: HashSet<[u8; 32]>,
}

impl Stores {
    fn add_version(&mut self, data: &[u8]) -> Step {
        let mut step = Step { size: data.len() as u64, ..Step::default() };
        for (i, chunk) in data.chunks(CHUNK).enumerate() {
            step.fixed_chunks += 1;
            if self.fixed.insert(chunk_cv(i as u64, chunk)) {
                step.fixed_new += chunk.len() as u64;
                if chunk.iter().all(|&b| b == 0) {
                    step.fixed_zero_new += chunk.len() as u64;
                }
            }
        }
        for c in FastCDC::new(data, CDC_MIN, CDC_AVG, CDC_MAX) {
            step.cdc_chunks += 1;
            let bytes = &data[c.offset..c.offset + c.length];
            if self.cdc.insert(*blake3::hash(bytes).as_bytes()) {
                step.cdc_new += c.length as u64;
            }
        }
        step
    }
}

struct Row {
    id: &'static str,
    label: String,
    note: String,
    steps: Vec<Step>,
}

impl Row {
    fn new(id: &'static str, label: impl Into<String>) -> Self {
        eprintln!("chunking_study: workload {id}");
        Row { id, label: label.into(), note: String::new(), steps: Vec::new() }
    }

    fn sum(&self, f: impl Fn(&Step) -> u64) -> u64 {
        self.steps.iter().map(f).sum()
    }

    fn later(&self, f: impl Fn(&Step) -> u64) -> u64 {
        self.steps.iter().skip(1).map(f).sum()
    }
}

struct Sizes {
    append_base_mib: usize,
    appends: usize,
    append_mib: usize,
    big_mib: usize,
    insert_mib: usize,
    csv_rows: usize,
    csv_inserts: usize,
    vm_writes: usize,
    vm_versions: usize,
    cpu_mib: usize,
}

// ----- content -----

/// `days` since 1970-01-01 as (year, month, day) (H. Hinnant's civil_from_days).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn timestamp(out: &mut Vec<u8>, ms: u64) {
    let secs = ms / 1000;
    let (y, mo, d) = civil((secs / 86_400) as i64);
    let s = secs % 86_400;
    let _ = write!(out, "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", s / 3600, s / 60 % 60, s % 60, ms % 1000);
}

/// A sensor series as CSV: one row per reading, 16 sensors, 100 ms apart.
struct Sensors {
    rng: Rng,
    ms: u64,
}

impl Sensors {
    /// Appends whole rows to `out` until it has grown by at least `bytes`.
    fn rows(&mut self, out: &mut Vec<u8>, bytes: usize) {
        let goal = out.len() + bytes;
        while out.len() < goal {
            self.ms += 100;
            timestamp(out, self.ms);
            let r = self.rng.next();
            let _ = writeln!(
                out,
                ",sensor-{:02},{:.3},{:.1},{:.1},{}",
                r % 16,
                15.0 + (r >> 8) as f64 % 10_000.0 / 1000.0,
                990.0 + (r >> 24) as f64 % 400.0 / 10.0,
                30.0 + (r >> 40) as f64 % 500.0 / 10.0,
                if r >> 60 == 0 { "WARN" } else { "OK" }
            );
        }
    }
}

const CITIES: &[&str] = &["Lisbon", "Oslo", "Zurich", "Lyon", "Porto", "Gdansk", "Turin", "Leeds", "Bergen", "Graz"];
const PRODUCTS: &[&str] = &["widget", "gadget", "sprocket", "bracket", "flange", "gasket", "hinge", "spindle"];
const WORDS: &[&str] = &[
    "fast", "delivery", "please", "call", "before", "arrival", "gift", "wrap", "second", "floor", "leave", "at",
    "door", "fragile", "urgent", "invoice", "attached", "thanks", "again", "new", "customer", "repeat", "order",
];

/// One order as a CSV row (~100 bytes).
fn order_row(rng: &mut Rng, id: u64, out: &mut Vec<u8>) {
    let _ = write!(out, "{id},");
    timestamp(out, 1_700_000_000_000 + id * 61_000);
    let _ = write!(
        out,
        ",cust-{:06},{},{},{},{}.{:02},\"",
        rng.below(1_000_000),
        rng.pick(CITIES),
        rng.pick(PRODUCTS),
        1 + rng.below(20),
        rng.below(500),
        rng.below(100)
    );
    for k in 0..3 + rng.below(6) {
        if k > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(rng.pick(WORDS).as_bytes());
    }
    out.extend_from_slice(b"\"\n");
}

fn orders(rng: &mut Rng, bytes: usize) -> Vec<u8> {
    let mut out = b"id,time,customer,city,product,qty,price,comment\n".to_vec();
    let mut id = 0;
    while out.len() < bytes {
        id += 1;
        order_row(rng, id, &mut out);
    }
    out
}

/// `n` bytes of text.
fn text(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 16);
    while out.len() < n {
        out.extend_from_slice(rng.pick(WORDS).as_bytes());
        out.push(b' ');
    }
    out.truncate(n);
    out
}

// ----- workloads -----

fn w1_append(z: &Sizes) -> Row {
    let mut row = Row::new(
        "1",
        format!("{} MiB sensor CSV + {} appends of ~{} MiB (whole rows)", z.append_base_mib, z.appends, z.append_mib),
    );
    let mut s = Sensors { rng: Rng(1), ms: 1_735_689_600_000 };
    let mut data = Vec::with_capacity((z.append_base_mib + z.appends * z.append_mib + 1) * MIB);
    // Appends are whole rows, and their sizes vary by up to ±32 KiB around the mean, so the file's
    // end falls anywhere in a 64 KiB chunk (exact MiB appends would keep it chunk-aligned, which
    // real appends are not).
    let mut jitter = Rng(11);
    let mut more = |mib: usize| mib * MIB - CHUNK / 2 + jitter.below(CHUNK as u64) as usize;
    s.rows(&mut data, more(z.append_base_mib));
    let mut stores = Stores::default();
    row.steps.push(stores.add_version(&data));
    for _ in 0..z.appends {
        s.rows(&mut data, more(z.append_mib));
        row.steps.push(stores.add_version(&data));
    }
    row.note = "rows ~55 bytes; each append is whole rows, its size uniform in ±32 KiB around the mean, so an \
                append also re-stores the old partial last chunk under both rules"
        .into();
    row
}

/// Versions from files in `dir` (sorted by name), one in memory at a time.
fn from_dir(id: &'static str, label: &str, dir: &Path, ext: &str) -> Result<Option<Row>> {
    if !dir.is_dir() {
        eprintln!("chunking_study: {} missing, workload {id} skipped", dir.display());
        return Ok(None);
    }
    let mut row = Row::new(id, label);
    row.note = fs::read_to_string(dir.join("NOTE")).unwrap_or_default().trim().to_string();
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == ext) {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("no *.{ext} in {}", dir.display());
    }
    let mut stores = Stores::default();
    for f in &files {
        let data = fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        row.steps.push(stores.add_version(&data));
    }
    Ok(Some(row))
}

/// Overwrites 4 KiB at each of `offsets` with random bytes; returns the old bytes.
fn overwrite(data: &mut [u8], offsets: &[usize], rng: &mut Rng) -> Vec<(usize, Vec<u8>)> {
    let mut saved = Vec::new();
    for &off in offsets {
        saved.push((off, data[off..off + 4096].to_vec()));
        rng.fill(&mut data[off..off + 4096]);
    }
    saved
}

fn restore(data: &mut [u8], saved: Vec<(usize, Vec<u8>)>) {
    for (off, bytes) in saved.into_iter().rev() {
        data[off..off + bytes.len()].copy_from_slice(&bytes);
    }
}

fn w3_overwrites(z: &Sizes) -> Vec<Row> {
    let size = z.big_mib * MIB;
    let label = fmt_bytes(size as u64);
    eprintln!("chunking_study: workload 3 (base, {label} of random bytes)");
    let mut rng = Rng(3);
    let mut data = vec![0u8; size];
    rng.fill(&mut data);
    let mut base = Stores::default();
    let first = base.add_version(&data);

    let mut a = Row::new("3a", format!("{label} binary file, 4 KiB overwritten in the middle"));
    let mut stores = base.clone();
    let saved = overwrite(&mut data, &[size / 2 / 4096 * 4096], &mut rng);
    a.steps = vec![first, stores.add_version(&data)];
    restore(&mut data, saved);
    a.note = "content: random bytes (compressed or encrypted data); the 4 KiB write is 4 KiB-aligned. One \
              write is one sample: FastCDC's figure is the size of the chunk(s) it hit, anywhere from 16 \
              to 256 KiB (3b and 8 average over more writes)"
        .into();

    let mut b = Row::new("3b", format!("{label} binary file, 10 scattered 4 KiB overwrites"));
    let mut stores = base;
    let mut offsets: Vec<usize> = (0..10).map(|_| rng.below((size / 4096) as u64) as usize * 4096).collect();
    offsets.sort_unstable();
    offsets.dedup();
    overwrite(&mut data, &offsets, &mut rng);
    b.steps = vec![first, stores.add_version(&data)];
    b.note = "the 10 writes at random 4 KiB-aligned offsets, in one new version".into();
    vec![a, b]
}

fn w4_insert_delete(z: &Sizes) -> Vec<Row> {
    let mut rng = Rng(4);
    let data = orders(&mut rng, z.insert_mib * MIB);
    let mut base = Stores::default();
    eprintln!("chunking_study: workload 4 (base)");
    let first = base.add_version(&data);
    let label = fmt_bytes(data.len() as u64);

    let mut a = Row::new("4a", format!("{label} orders CSV, 100 bytes inserted at offset 1000"));
    let mut v = Vec::with_capacity(data.len() + 100);
    v.extend_from_slice(&data[..1000]);
    v.extend_from_slice(&text(&mut rng, 100));
    v.extend_from_slice(&data[1000..]);
    let mut stores = base.clone();
    a.steps = vec![first, stores.add_version(&v)];
    a.note = "every byte after offset 1000 moves by 100".into();

    let mut b = Row::new("4b", format!("{label} orders CSV, 100 bytes deleted at offset 1000"));
    v.clear();
    v.extend_from_slice(&data[..1000]);
    v.extend_from_slice(&data[1100..]);
    let mut stores = base;
    b.steps = vec![first, stores.add_version(&v)];
    b.note = "every byte after offset 1100 moves by -100".into();
    vec![a, b]
}

fn w5_csv_rows(z: &Sizes) -> Row {
    let mut row =
        Row::new("5", format!("CSV of {} rows, {} rows inserted at random places", z.csv_rows, z.csv_inserts));
    let mut rng = Rng(5);
    let mut rows: Vec<Vec<u8>> = Vec::with_capacity(z.csv_rows + z.csv_inserts);
    for id in 1..=z.csv_rows as u64 {
        let mut r = Vec::with_capacity(128);
        order_row(&mut rng, id, &mut r);
        rows.push(r);
    }
    let mut stores = Stores::default();
    row.steps.push(stores.add_version(&rows.concat()));
    let mut first_at = usize::MAX;
    for k in 0..z.csv_inserts {
        let at = rng.below(rows.len() as u64 + 1) as usize;
        first_at = first_at.min(at);
        let mut r = Vec::with_capacity(128);
        order_row(&mut rng, (z.csv_rows + 1 + k) as u64, &mut r);
        rows.insert(at, r);
    }
    let v1 = rows.concat();
    row.steps.push(stores.add_version(&v1));
    let before: usize = rows[..first_at].iter().map(Vec::len).sum();
    row.note = format!(
        "rows ~100 bytes; all inserts in one new version; the first insert is at byte {before} ({:.1}% of the file)",
        100.0 * before as f64 / v1.len() as f64
    );
    row
}

fn w8_vm(z: &Sizes, dir: &Path) -> Result<Option<Row>> {
    let img = dir.join("v0.img");
    if !img.is_file() {
        eprintln!("chunking_study: {} missing, workload 8 skipped", img.display());
        return Ok(None);
    }
    let mut data = fs::read(&img).with_context(|| format!("reading {}", img.display()))?;
    let mut row = Row::new(
        "8",
        format!(
            "{} VM image (ext4, raw), {} versions of {} random 4 KiB writes",
            fmt_bytes(data.len() as u64),
            z.vm_versions,
            z.vm_writes
        ),
    );
    row.note = fs::read_to_string(dir.join("NOTE")).unwrap_or_default().trim().to_string();
    let mut rng = Rng(8);
    let mut stores = Stores::default();
    row.steps.push(stores.add_version(&data));
    let blocks = (data.len() / 4096) as u64;
    for _ in 0..z.vm_versions {
        let offsets: Vec<usize> = (0..z.vm_writes).map(|_| rng.below(blocks) as usize * 4096).collect();
        overwrite(&mut data, &offsets, &mut rng);
        row.steps.push(stores.add_version(&data));
    }
    Ok(Some(row))
}

// ----- CPU -----

const READ_BUF: usize = 16 * MIB;
/// Passes of each kind, alternated (the machine is shared: the median is the figure).
const CPU_ROUNDS: usize = 5;

/// Reads `path` in `READ_BUF` pieces (the buffer keeps `keep` bytes the callback left at its start)
/// and calls `f(buffer, at_eof)`, which returns how many bytes of the buffer's start it consumed.
fn stream(path: &Path, mut f: impl FnMut(&[u8], bool) -> usize) -> Result<()> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; READ_BUF + CDC_MAX];
    let mut have = 0;
    loop {
        let mut eof = false;
        while have < buf.len() {
            let n = file.read(&mut buf[have..])?;
            if n == 0 {
                eof = true;
                break;
            }
            have += n;
        }
        let used = f(&buf[..have], eof);
        buf.copy_within(used..have, 0);
        have -= used;
        if eof && have == 0 {
            return Ok(());
        }
    }
}

/// FastCDC cut points over `data`; unless `eof`, the last chunk (which may end only because the
/// buffer does) is left for the next call. Calls `f` per chunk; returns the bytes consumed.
fn cdc_pieces(data: &[u8], eof: bool, mut f: impl FnMut(&[u8])) -> usize {
    let mut used = 0;
    for c in FastCDC::new(data, CDC_MIN, CDC_AVG, CDC_MAX) {
        if !eof && c.offset + c.length == data.len() {
            break;
        }
        f(&data[c.offset..c.offset + c.length]);
        used = c.offset + c.length;
    }
    used
}

fn cpu(path: &Path, mib: usize) -> Result<String> {
    eprintln!("chunking_study: writing {mib} MiB to {}", path.display());
    {
        let mut rng = Rng(9);
        let mut out = File::create(path)?;
        let mut buf = vec![0u8; MIB];
        for _ in 0..mib {
            rng.fill(&mut buf);
            out.write_all(&buf)?;
        }
    }
    type Pass = fn(&Path) -> Result<u64>;
    let passes: [(&str, Pass); 4] = [
        ("read only", |p| {
            let mut n = 0u64;
            stream(p, |d, _| {
                n += d.len() as u64;
                d.len()
            })?;
            Ok(n)
        }),
        ("fixed: read + BLAKE3 chaining value of each 64 KiB chunk (pond)", |p| {
            let (mut idx, mut acc) = (0u64, 0u64);
            stream(p, |d, eof| {
                let whole = if eof { d.len() } else { d.len() / CHUNK * CHUNK };
                for c in d[..whole].chunks(CHUNK) {
                    acc ^= u64::from(chunk_cv(idx, c)[0]);
                    idx += 1;
                }
                whole
            })?;
            Ok(acc)
        }),
        ("fastcdc: read + FastCDC boundaries only", |p| {
            let mut acc = 0u64;
            stream(p, |d, eof| cdc_pieces(d, eof, |c| acc += c.len() as u64))?;
            Ok(acc)
        }),
        ("fastcdc: read + FastCDC boundaries + BLAKE3 of each chunk", |p| {
            let mut acc = 0u64;
            stream(p, |d, eof| cdc_pieces(d, eof, |c| acc ^= u64::from(blake3::hash(c).as_bytes()[0])))?;
            Ok(acc)
        }),
    ];
    // (CPU time of this thread, wall time) per pass kind.
    let mut times: BTreeMap<usize, (Vec<Duration>, Vec<Duration>)> = BTreeMap::new();
    for round in 0..CPU_ROUNDS {
        for (k, (name, pass)) in passes.iter().enumerate() {
            let (c, t) = (thread_cpu()?, Instant::now());
            black_box(pass(path)?);
            let (cpu, wall) = (thread_cpu()? - c, t.elapsed());
            eprintln!("chunking_study: cpu round {round}: {name}: cpu {cpu:.2?}, wall {wall:.2?}");
            let e = times.entry(k).or_default();
            e.0.push(cpu);
            e.1.push(wall);
        }
    }
    fs::remove_file(path)?;
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| one pass over {mib} MiB in tmpfs, single thread | CPU time (median of {CPU_ROUNDS}) | MiB per CPU second \
         | wall time (median) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for (k, (name, _)) in passes.iter().enumerate() {
        let (cpu, wall) = times.get_mut(&k).expect("timed");
        let (cpu, wall) = (median(cpu), median(wall));
        let _ = writeln!(
            out,
            "| {name} | {:.2} s | {:.0} | {:.2} s |",
            cpu.as_secs_f64(),
            mib as f64 / cpu.as_secs_f64(),
            wall.as_secs_f64()
        );
    }
    Ok(out)
}

/// CPU time (user + system) this thread has used: on a shared machine, what a pass costs, without
/// the time it waited for a core.
fn thread_cpu() -> Result<Duration> {
    use nix::sys::resource::{UsageWho, getrusage};
    use nix::sys::time::TimeValLike;
    let u = getrusage(UsageWho::RUSAGE_THREAD)?;
    let micros = u.user_time().num_microseconds() + u.system_time().num_microseconds();
    Ok(Duration::from_micros(u64::try_from(micros)?))
}

// ----- report -----

fn fmt_bytes(n: u64) -> String {
    let n = n as f64;
    if n < 1024.0 {
        format!("{n} B")
    } else if n < 1024.0 * 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else if n < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} MiB", n / 1024.0 / 1024.0)
    } else {
        format!("{:.2} GiB", n / 1024.0 / 1024.0 / 1024.0)
    }
}

fn ratio(a: u64, b: u64) -> String {
    match (a, b) {
        (0, 0) => "=".into(),
        (_, 0) => "∞".into(),
        _ => format!("{:.2}", a as f64 / b as f64),
    }
}

fn report(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| # | workload | versions | native: all versions | native: last | fixed: stored | FastCDC: stored \
         | fixed / FastCDC | fixed: per new version | FastCDC: per new version | fixed / FastCDC, new versions \
         | manifests: fixed | manifests: FastCDC |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let new_versions = (r.steps.len() - 1).max(1) as u64;
        let (fixed, cdc) = (r.sum(|s| s.fixed_new), r.sum(|s| s.cdc_new));
        let (fixed_later, cdc_later) = (r.later(|s| s.fixed_new), r.later(|s| s.cdc_new));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.id,
            r.label,
            r.steps.len(),
            fmt_bytes(r.sum(|s| s.size)),
            fmt_bytes(r.steps.last().map_or(0, |s| s.size)),
            fmt_bytes(fixed),
            fmt_bytes(cdc),
            ratio(fixed, cdc),
            fmt_bytes(fixed_later / new_versions),
            fmt_bytes(cdc_later / new_versions),
            ratio(fixed_later, cdc_later),
            fmt_bytes(r.sum(|s| s.fixed_chunks) * MANIFEST_ENTRY),
            fmt_bytes(r.sum(|s| s.cdc_chunks) * MANIFEST_ENTRY),
        );
    }
    let _ = writeln!(out, "\nWorkloads:\n");
    for r in rows {
        let cdc_chunks = r.sum(|s| s.cdc_chunks);
        let mean = r.sum(|s| s.size).checked_div(cdc_chunks).unwrap_or(0);
        let per = |f: fn(&Step) -> u64| {
            let v: Vec<u64> = r.steps.iter().skip(1).map(f).collect();
            let lo = fmt_bytes(v.iter().min().copied().unwrap_or(0));
            let hi = fmt_bytes(v.iter().max().copied().unwrap_or(0));
            if lo == hi { lo } else { format!("{lo}–{hi}") }
        };
        let mut line = format!(
            "- **{}** {}. First version: fixed {}, FastCDC {}; each new version: fixed {}, FastCDC {}. \
             FastCDC's mean chunk: {}.",
            r.id,
            r.note.trim_end_matches('.'),
            fmt_bytes(r.steps[0].fixed_new),
            fmt_bytes(r.steps[0].cdc_new),
            per(|s| s.fixed_new),
            per(|s| s.cdc_new),
            fmt_bytes(mean),
        );
        let zeros = r.sum(|s| s.fixed_zero_new);
        if zeros > 0 {
            let _ =
                write!(line, " Of fixed's bytes, {} are all-zero chunks (stored once per position).", fmt_bytes(zeros));
        }
        let _ = writeln!(out, "{line}");
    }
    out
}

fn main() -> Result<()> {
    let mut z = Sizes {
        append_base_mib: 100,
        appends: 20,
        append_mib: 1,
        big_mib: 1024,
        insert_mib: 64,
        csv_rows: 100_000,
        csv_inserts: 100,
        vm_writes: 1000,
        vm_versions: 3,
        cpu_mib: 1024,
    };
    let (mut work, mut cpu_file, mut only) = (None::<PathBuf>, None::<PathBuf>, None::<Vec<String>>);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        let n = || value.parse::<usize>().with_context(|| format!("{flag} {value}: not a number"));
        match flag.as_str() {
            "--work" => work = Some(value.into()),
            "--cpu" => cpu_file = Some(value.into()),
            "--only" => only = Some(value.split(',').map(str::to_string).collect()),
            "--append-base-mib" => z.append_base_mib = n()?,
            "--appends" => z.appends = n()?,
            "--append-mib" => z.append_mib = n()?,
            "--big-mib" => z.big_mib = n()?,
            "--insert-mib" => z.insert_mib = n()?,
            "--csv-rows" => z.csv_rows = n()?,
            "--csv-inserts" => z.csv_inserts = n()?,
            "--vm-writes" => z.vm_writes = n()?,
            "--vm-versions" => z.vm_versions = n()?,
            "--cpu-mib" => z.cpu_mib = n()?,
            _ => bail!("unknown argument {flag} (see the doc comment of examples/chunking_study.rs)"),
        }
    }
    let wanted =
        |id: &str| only.as_ref().is_none_or(|o| o.iter().any(|w| id.starts_with(w.as_str()) || w.starts_with(id)));
    let mut rows = Vec::new();
    if let Some(work) = &work {
        if wanted("1") {
            rows.push(w1_append(&z));
        }
        if wanted("2") {
            let label = "SQLite database, single-row transactions, db file after each commit";
            rows.extend(from_dir("2", label, &work.join("sqlite"), "db")?);
        }
        if wanted("3") {
            rows.extend(w3_overwrites(&z));
        }
        if wanted("4") {
            rows.extend(w4_insert_delete(&z));
        }
        if wanted("5") {
            rows.push(w5_csv_rows(&z));
        }
        if wanted("6") {
            let label = "tar of a source tree, re-made after editing 5 files (one +200 bytes)";
            rows.extend(from_dir("6", label, &work.join("tar"), "tar")?);
        }
        if wanted("7") {
            rows.extend(from_dir("7", "git gc pack, before and after 20 commits", &work.join("git"), "pack")?);
        }
        if wanted("8") {
            rows.extend(w8_vm(&z, &work.join("vm"))?);
        }
    }
    let mut out = String::new();
    if !rows.is_empty() {
        out.push_str(&report(&rows));
    }
    if let Some(path) = &cpu_file {
        out.push('\n');
        out.push_str(&cpu(path, z.cpu_mib)?);
    }
    if work.is_none() && cpu_file.is_none() {
        bail!("nothing to do: give --work DIR and/or --cpu FILE");
    }
    print!("{out}");
    Ok(())
}
