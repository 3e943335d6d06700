//! `pond init`, `pond verify`, `pond gc`.

use std::path::Path;
use std::process::ExitCode;

use pond::audit::{gc::collect_garbage, verify_pond};
use pond::config::Threshold;
use pond::oplog::Oplog;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

pub fn init(pond: &Path, threshold: Option<u64>) -> anyhow::Result<ExitCode> {
    let threshold = threshold.map(Threshold).unwrap_or_default();
    let oplog = runtime()?.block_on(Oplog::create(pond, threshold))?;
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
