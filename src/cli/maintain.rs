//! `pond init`, `pond verify`, `pond gc`.

use std::path::Path;
use std::process::ExitCode;

use pond::audit::prune::{PruneReport, Rules, prune_pond};
use pond::audit::{gc::collect_garbage, verify_pond};
use pond::config::Threshold;
use pond::oplog::Oplog;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

pub fn init(pond: &Path, threshold: Option<u64>) -> anyhow::Result<ExitCode> {
    let threshold = threshold.map(Threshold).unwrap_or_default();
    let oplog = runtime()?.block_on(Oplog::create(pond, threshold))?;
    // Whatever mode a directory that was there had: a pond is its owner's alone.
    pond::private_fs::make_root_private(pond)?;
    println!("created pond {} (version {}, threshold {} bytes)", pond.display(), oplog.version(), threshold.0);
    Ok(ExitCode::SUCCESS)
}

pub fn verify(target: &str) -> anyhow::Result<ExitCode> {
    let report =
        if super::sync::is_url(target) { super::sync::verify_remote(target)? } else { verify_pond(Path::new(target))? };
    for d in &report.damage {
        println!("DAMAGED {d}");
    }
    for f in &report.unreferenced {
        println!("unreferenced {f} (pond gc removes it)");
    }
    println!(
        "{}: {} versions, {} data files, {} rows, {} inline files, {} objects ({} bytes) in {} packs, {} damaged",
        if report.is_clean() { "clean" } else { "DAMAGED" },
        report.versions,
        report.data_files,
        report.rows,
        report.inline_files,
        report.objects,
        report.object_bytes,
        report.packs,
        report.damage.len()
    );
    Ok(if report.is_clean() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub fn prune(target: &str, rules: &Rules, dry_run: bool) -> anyhow::Result<ExitCode> {
    if super::sync::is_url(target) {
        return super::sync::prune(target, rules, dry_run);
    }
    let report = prune_pond(Path::new(target), rules, dry_run)?;
    print_prune(&report);
    Ok(ExitCode::SUCCESS)
}

/// What prune removed (or would), one line per file, then a summary.
pub(super) fn print_prune(r: &PruneReport) {
    let (verb, freed) = if r.dry_run { ("would remove", "would free") } else { ("removed", "freed") };
    match r.compacted {
        Some(v) => println!("compacted the latest version into one data file (version {v})"),
        None if r.would_compact => {
            println!("would compact the latest version into one data file first (a new version)")
        }
        None => {}
    }
    for v in &r.checkpoints_written {
        println!("wrote a checkpoint at version {v}, so it opens without the versions before it");
    }
    for (name, size) in &r.removed {
        println!("{verb} {name} ({size} bytes)");
    }
    for name in &r.in_use {
        println!("kept {name}: an open file on the mount still reads it");
    }
    println!(
        "pruned: {} versions dropped ({}), {} kept ({}); {verb} {} files; {freed} {}",
        r.dropped.len(),
        ranges(&r.dropped),
        r.kept.len(),
        ranges(&r.kept),
        r.removed.len(),
        human_bytes(r.bytes)
    );
}

/// `1-4, 7, 9-12` from a sorted list.
fn ranges(vs: &[u64]) -> String {
    if vs.is_empty() {
        return "none".into();
    }
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < vs.len() {
        let mut j = i;
        while j + 1 < vs.len() && vs[j + 1] == vs[j] + 1 {
            j += 1;
        }
        out.push(if i == j { vs[i].to_string() } else { format!("{}-{}", vs[i], vs[j]) });
        i = j + 1;
    }
    out.join(", ")
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} bytes") } else { format!("{v:.1} {} ({n} bytes)", UNITS[u]) }
}

pub fn gc(pond: &Path, dry_run: bool) -> anyhow::Result<ExitCode> {
    let report = collect_garbage(pond, dry_run)?;
    let verb = if dry_run { "would remove" } else { "removed" };
    for (file, size) in &report.objects {
        println!("{verb} {file} ({size} bytes)");
    }
    for (name, size) in &report.data_files {
        println!("{verb} unreferenced data file {name} ({size} bytes)");
    }
    println!(
        "{verb} {} objects and packs, {} data files, {} bytes; {} temp files",
        report.objects.len(),
        report.data_files.len(),
        report.bytes,
        report.temp_files
    );
    Ok(ExitCode::SUCCESS)
}
