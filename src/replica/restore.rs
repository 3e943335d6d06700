//! Bringing a replica back: [`restore`] makes a new pond from a remote, and [`verify_remote`]
//! checks a remote the same way without keeping the copy.
//!
//! Restore fetches into a staging directory beside the target (`POND.restore-tmp-<pid>`, same
//! filesystem, so the last step is one rename) the history a Delta reader of version `N` reads: the
//! run of versions `N` belongs to (from version 0, or from the checkpoint where a pruned pond's
//! history resumes) up to `N` — its log entries and checkpoints, the data files the base
//! checkpoint lists and the entries add, the large objects those reference and the packs those
//! point into — and `_last_checkpoint` if it names a checkpoint fetched. Every listed log entry
//! must be readable (see [`Listing::readable`]) before anything is fetched. Every name comes from the remote, so each is parsed as a [`PondFile`] before
//! anything is written (a log entry naming `../x` or `/x` is refused). Then the staged pond goes
//! through [`verify_pond`] — every chunk re-hashed, each object checked against its name and the
//! size and SHA-256 its row records, inline content against its hashes, every data file's size
//! against its log entry, every reference resolved, checkpoints against the JSON log — is synced
//! (syncfs) and only then renamed into place. On any failure, interruption included, the staging
//! directory is removed (a `Drop` guard), so no half-restored pond is ever left; one left by a
//! killed restore is removed by the next restore to the same target once its process is gone.
//!
//! `verify_remote` fetches the same way, every run of the remote, into a temporary directory (under `$TMPDIR`, so it needs
//! the replica's size in free space there), but collects what is wrong instead of stopping at the
//! first problem, runs the same verification, and removes the copy. Simplest correct choice: one
//! code path checks a remote exactly as restore would; streaming verification would save the disk
//! space but duplicate `verify_pond`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;

use crate::audit::{VerifyReport, verify_pond};
use crate::oplog::log::{self, Base, describe_readable};
use crate::oplog::{datafile, history};

use super::local_dir;
use super::remote::{Listing, OnBytes, Remote, sync_filesystem};
use super::{FILES_IN_FLIGHT, Progress, ReplicaError, blocking};
use crate::layout::{LARGE_FILES_DIR, LOG_DIR, PACKS_DIR, PondFile, parse_last_checkpoint};

/// The outcome of [`restore`].
#[derive(Clone, Debug)]
pub struct RestoreReport {
    /// The restored pond's latest version.
    pub version: u64,
    pub files: u64,
    pub bytes: u64,
}

/// Make a new pond at `target` (absent or an empty directory) from the replica at `remote`, at its
/// latest version or at `version`, verified before it appears.
pub async fn restore(
    remote: &Remote,
    target: &Path,
    version: Option<u64>,
    progress: Arc<dyn Progress>,
    stop: &AtomicBool,
) -> Result<RestoreReport, ReplicaError> {
    check_target(target)?;
    let mut attempt = 1;
    loop {
        match restore_once(remote, target, version, progress.clone(), stop).await {
            // A prune of the remote (it takes no lock from readers) removed a file this restore
            // had listed: list again and start over, the version asked may still be there.
            Err(ReplicaError::Missing(name)) if attempt < RESTORE_ATTEMPTS => {
                tracing::info!("{name} went from the remote while restoring (a prune?); starting again");
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Restores that met a file gone from the remote, before restore gives up.
const RESTORE_ATTEMPTS: u32 = 3;

async fn restore_once(
    remote: &Remote,
    target: &Path,
    version: Option<u64>,
    progress: Arc<dyn Progress>,
    stop: &AtomicBool,
) -> Result<RestoreReport, ReplicaError> {
    let staging = Staging::create(target)?;
    let fetched = fetch(remote, staging.path(), Scope::Version(version), true, &progress, stop).await?;
    progress.begin("verifying", 0, 0);
    let report = verify(staging.path(), remote).await?;
    if !report.is_clean() {
        return Err(ReplicaError::Damaged(report.damage));
    }
    if stop.load(Ordering::SeqCst) {
        return Err(ReplicaError::Interrupted);
    }
    sync_filesystem(staging.path()).await?;
    staging.commit(target)?;
    Ok(RestoreReport { version: fetched.version, files: fetched.files, bytes: fetched.bytes })
}

/// Check the replica at `remote` as [`restore`] would, without keeping it. Damage is in the
/// report; `Err` only when the remote cannot be read at all.
pub async fn verify_remote(
    remote: &Remote,
    progress: Arc<dyn Progress>,
    stop: &AtomicBool,
) -> Result<VerifyReport, ReplicaError> {
    let tmp = tempfile::Builder::new()
        .prefix("pond-verify-")
        .tempdir()
        .map_err(|e| ReplicaError::io(std::env::temp_dir(), e))?;
    let fetched = fetch(remote, tmp.path(), Scope::Everything, false, &progress, stop).await?;
    progress.begin("verifying", 0, 0);
    let mut report = verify(tmp.path(), remote).await?;
    report.damage.splice(0..0, fetched.damage);
    Ok(report)
}

/// Verify the fetched copy at `root`; damage is reported with the remote's names, not the copy's.
async fn verify(root: &Path, remote: &Remote) -> Result<VerifyReport, ReplicaError> {
    let copy = root.to_path_buf();
    let mut report = blocking(move || Ok(verify_pond(&copy)?)).await?;
    let url = remote.url().trim_end_matches('/');
    let local = root.to_string_lossy();
    for d in &mut report.damage {
        *d = d.replace(&format!("file://{local}"), url).replace(&*local, url);
    }
    Ok(report)
}

/// Restore makes a new pond: the target must be absent or an empty directory.
fn check_target(target: &Path) -> Result<(), ReplicaError> {
    match std::fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ReplicaError::io(target, e)),
        Ok(m) if m.is_dir() => {
            let mut entries = std::fs::read_dir(target).map_err(|e| ReplicaError::io(target, e))?;
            if entries.next().is_none() { Ok(()) } else { Err(ReplicaError::TargetNotEmpty(target.to_path_buf())) }
        }
        Ok(_) => Err(ReplicaError::TargetNotEmpty(target.to_path_buf())),
    }
}

/// The staging directory beside the target; removed on drop unless committed.
struct Staging {
    path: PathBuf,
    committed: bool,
}

impl Staging {
    fn create(target: &Path) -> Result<Staging, ReplicaError> {
        let invalid = || {
            ReplicaError::io(
                target,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "restore needs a new directory's name"),
            )
        };
        let name = target.file_name().and_then(|n| n.to_str()).ok_or_else(invalid)?;
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| ReplicaError::io(&parent, e))?;
        let prefix = format!("{name}.restore-tmp-");
        remove_stale(&parent, &prefix);
        let path = parent.join(format!("{prefix}{}", std::process::id()));
        // Private whatever the umask; it replaces the target, so the restored pond is too.
        local_dir::create_private_dir(&path).map_err(|e| ReplicaError::io(&path, e))?;
        Ok(Staging { path, committed: false })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Rename into place (atomic; fails if the target gained entries meanwhile) and make it durable.
    fn commit(mut self, target: &Path) -> Result<(), ReplicaError> {
        if let Err(e) = std::fs::rename(&self.path, target) {
            return Err(match e.raw_os_error() {
                Some(libc::ENOTEMPTY | libc::EEXIST | libc::ENOTDIR) => {
                    ReplicaError::TargetNotEmpty(target.to_path_buf())
                }
                _ => ReplicaError::io(target, e),
            });
        }
        self.committed = true;
        let parent = self.path.parent().unwrap_or(Path::new("."));
        datafile::sync_dir(parent)?;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Remove staging directories of restores to the same target whose process is gone (killed).
fn remove_stale(parent: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix)).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A download failure that is the remote's damage (noted and passed over when not strict), not a
/// failure to reach it.
fn is_damage(e: &ReplicaError) -> bool {
    matches!(e, ReplicaError::Missing(_) | ReplicaError::TooLarge { .. } | ReplicaError::Tampered { .. })
}

/// What [`fetch`] brought.
struct Fetched {
    version: u64,
    files: u64,
    bytes: u64,
    /// Problems found while fetching (only when not strict: strict stops at the first).
    damage: Vec<String>,
}

struct Fetcher<'a> {
    remote: &'a Remote,
    dest: &'a Path,
    listing: Listing,
    strict: bool,
    progress: &'a Arc<dyn Progress>,
    fetched: Fetched,
}

/// Download `files` of `remote` (as `listing` lists them) into `dest`, stopping at the first
/// problem: what `pond prune URL` fetches of a remote to plan with.
pub(super) async fn download(
    remote: &Remote,
    dest: &Path,
    listing: &Listing,
    what: &str,
    files: Vec<PondFile>,
    progress: &Arc<dyn Progress>,
    stop: &AtomicBool,
) -> Result<(), ReplicaError> {
    let mut f = Fetcher {
        remote,
        dest,
        listing: listing.clone(),
        strict: true,
        progress,
        fetched: Fetched { version: 0, files: 0, bytes: 0, damage: Vec::new() },
    };
    f.get_all(what, files, stop).await
}

/// Which versions of a replica [`fetch`] brings.
#[derive(Clone, Copy, Debug)]
enum Scope {
    /// The run of this version (its latest when None), from the run's base up to it: the history a
    /// Delta reader of that version reads (from version 0, or from the checkpoint a prune left).
    Version(Option<u64>),
    /// Every readable version: to check a whole replica.
    Everything,
}

/// Copy the replica at `remote` (the versions `scope` names) into the empty directory `dest`.
/// `strict`: stop at the first problem; otherwise note it and go on.
async fn fetch(
    remote: &Remote,
    dest: &Path,
    scope: Scope,
    strict: bool,
    progress: &Arc<dyn Progress>,
    stop: &AtomicBool,
) -> Result<Fetched, ReplicaError> {
    let listing = remote.list().await?;
    // Versions are fetched (and files named) one by one from here: first, check every listed entry
    // is readable, so a remote listing versions 0 and 10^10 is refused before anything is
    // allocated, and take the versions from the listing.
    let readable = listing.readable()?;
    let Some(&(latest, _)) = readable.last() else { return Err(ReplicaError::Empty) };
    let wanted: Vec<(u64, Base)> = match scope {
        Scope::Everything => readable.clone(),
        Scope::Version(asked) => {
            let version = asked.unwrap_or(latest);
            let Some(&(_, base)) = readable.iter().find(|(v, _)| *v == version) else {
                return Err(ReplicaError::NoSuchVersion { asked: version, holds: describe_readable(&readable) });
            };
            readable.iter().filter(|(v, b)| *b == base && *v <= version).copied().collect()
        }
    };
    let version = wanted.last().map_or(latest, |(v, _)| *v);
    for dir in [LOG_DIR.to_string(), LARGE_FILES_DIR.to_string(), format!("{LARGE_FILES_DIR}/{PACKS_DIR}")] {
        let d = dest.join(dir);
        local_dir::create_private_dirs(&d).map_err(|e| ReplicaError::io(&d, e))?;
    }
    let mut f = Fetcher {
        remote,
        dest,
        listing,
        strict,
        progress,
        fetched: Fetched { version, files: 0, bytes: 0, damage: Vec::new() },
    };
    for name in std::mem::take(&mut f.listing.foreign) {
        f.problem(ReplicaError::PathEscape(name))?;
    }

    // The log: the wanted versions' entries (a run from a checkpoint may lack its base's entry)
    // and checkpoints, each run's base checkpoint among them.
    let versions: BTreeSet<u64> = wanted.iter().map(|(v, _)| *v).collect();
    let bases: BTreeSet<u64> =
        wanted.iter().filter_map(|(_, b)| if let Base::Checkpoint(c) = b { Some(*c) } else { None }).collect();
    let mut log = Vec::new();
    for file in f.listing.files.keys() {
        match file {
            PondFile::Log(v) | PondFile::Checkpoint(v) if versions.contains(v) => log.push(file.clone()),
            _ => {}
        }
    }
    f.get_all("fetching log", log, stop).await?;
    let data = f.data_files(&versions, &bases)?;
    let mut wanted = Vec::new();
    for (name, logged) in data {
        let file = PondFile::Data(name.clone());
        match f.listing.files.get(&file) {
            Some(&size) if size != logged => {
                let (expected, got) = (format!("{logged} bytes, as the log records"), format!("{size} bytes"));
                f.problem(ReplicaError::Tampered { path: name, expected, got })?;
                wanted.push(file); // not strict: fetch it anyway, verification says more
            }
            _ => wanted.push(file),
        }
    }
    let data_files: Vec<PondFile> = wanted.clone();
    f.get_all("fetching data files", wanted, stop).await?;

    let objects = f.objects(&data_files).await?;
    f.get_all("fetching objects", objects.iter().copied().map(PondFile::Object).collect(), stop).await?;
    let packs = f.packs(&objects).await?;
    f.get_all("fetching packs", packs, stop).await?;
    f.hint(version).await?;
    Ok(f.fetched)
}

impl Fetcher<'_> {
    /// Strict: fail with `e`. Otherwise: note it and go on.
    fn problem(&mut self, e: ReplicaError) -> Result<(), ReplicaError> {
        if self.strict {
            return Err(e);
        }
        self.fetched.damage.push(e.to_string());
        Ok(())
    }

    /// Download `files` into `dest`, a few at a time.
    async fn get_all(&mut self, what: &str, files: Vec<PondFile>, stop: &AtomicBool) -> Result<(), ReplicaError> {
        let total: u64 = files.iter().filter_map(|f| self.listing.files.get(f)).sum();
        self.progress.begin(what, files.len() as u64, total);
        let progress = self.progress.clone();
        let on_bytes: OnBytes = Arc::new(move |n| progress.bytes(n));
        let (remote, dest, listing) = (self.remote, self.dest, &self.listing);
        let mut results = futures::stream::iter(files)
            .map(|file| {
                let on_bytes = on_bytes.clone();
                async move {
                    if stop.load(Ordering::SeqCst) {
                        return Err(ReplicaError::Interrupted);
                    }
                    let Some(&listed) = listing.files.get(&file) else {
                        return Err(ReplicaError::Missing(file.name()));
                    };
                    remote.get_to_file(&file, listed, &file.local_path(dest), &on_bytes).await
                }
            })
            .buffer_unordered(FILES_IN_FLIGHT);
        let mut problems = Vec::new();
        while let Some(result) = results.next().await {
            match result {
                Ok(n) => {
                    self.progress.file_done();
                    self.fetched.files += 1;
                    self.fetched.bytes += n;
                }
                Err(e) if is_damage(&e) => problems.push(e),
                Err(e) => return Err(e),
            }
        }
        drop(results);
        for e in problems {
            self.problem(e)?;
        }
        Ok(())
    }

    /// The data files the fetched log names for `versions`: those their entries add and those
    /// the checkpoints of `bases` list as active, with their logged sizes; every name must be a
    /// top-level data file's.
    fn data_files(
        &mut self,
        versions: &BTreeSet<u64>,
        bases: &BTreeSet<u64>,
    ) -> Result<BTreeMap<String, u64>, ReplicaError> {
        let mut data = BTreeMap::new();
        for &c in bases {
            let path = PondFile::Checkpoint(c).local_path(self.dest);
            if !path.exists() {
                continue; // missing: already noted
            }
            match log::checkpoint_adds(&path) {
                Ok(adds) => data.extend(adds),
                Err(e) => self.problem(e.into())?,
            }
        }
        for &v in versions {
            let path = PondFile::Log(v).local_path(self.dest);
            let Ok(text) = std::fs::read_to_string(&path) else { continue }; // missing: already noted
            let actions = match history::parse_log_entry(&text, &path) {
                Ok(a) => a,
                Err(e) => {
                    self.problem(e.into())?;
                    continue;
                }
            };
            for name in actions.removed {
                if let Err(e) = PondFile::data(&name) {
                    self.problem(e.into())?;
                }
            }
            for (name, size) in actions.added {
                match PondFile::data(&name) {
                    Ok(_) => {
                        data.insert(name, size);
                    }
                    Err(e) => self.problem(e.into())?,
                }
            }
        }
        Ok(data)
    }

    /// The large objects the fetched data files reference, each checked against the listing. A data
    /// file that does not read is left to verification, which names it as the remote has it.
    async fn objects(&mut self, data: &[PondFile]) -> Result<Vec<crate::large_files::Blake3Hash>, ReplicaError> {
        let (dest, names) = (self.dest.to_path_buf(), data.iter().map(|f| f.name()).collect::<Vec<_>>());
        let hashes = blocking(move || {
            let mut out = std::collections::BTreeSet::new();
            for name in names {
                if let Ok(objects) = datafile::large_objects(&dest, &Arc::from(name.as_str())) {
                    out.extend(objects.into_iter().map(|(h, _, _)| h));
                }
            }
            Ok(out)
        })
        .await?;
        let mut wanted = Vec::new();
        for h in hashes {
            if self.listing.files.contains_key(&PondFile::Object(h)) {
                wanted.push(h);
            } else {
                self.problem(ReplicaError::Missing(PondFile::Object(h).name()))?;
            }
        }
        Ok(wanted)
    }

    /// The packs (and format 1 objects) the fetched objects point into, each checked against the
    /// listing. An object that does not open is left to verification, which names it.
    async fn packs(&mut self, objects: &[crate::large_files::Blake3Hash]) -> Result<Vec<PondFile>, ReplicaError> {
        let (dest, objects) = (self.dest.to_path_buf(), objects.to_vec());
        let files = blocking(move || {
            let store = crate::large_files::LargeFileStore::new(&dest);
            // Each file with the first object found pointing into it (named if it is missing).
            let mut out = std::collections::BTreeMap::new();
            for h in objects {
                if let Ok(reader) = store.open(&h) {
                    for f in reader.data_files().into_iter().filter(|f| *f != PondFile::Object(h)) {
                        out.entry(f).or_insert(h);
                    }
                }
            }
            Ok(out)
        })
        .await?;
        let mut wanted = Vec::new();
        for (file, user) in files {
            if self.listing.files.contains_key(&file) {
                if !file.local_path(self.dest).exists() {
                    wanted.push(file);
                }
            } else {
                let what = format!("{} (object {user} points into it)", file.name());
                self.problem(ReplicaError::Missing(what))?;
            }
        }
        Ok(wanted)
    }

    /// Copy `_last_checkpoint` if it names a checkpoint that was fetched; otherwise leave it out
    /// (it is a hint: readers then find the newest checkpoint by listing the log).
    async fn hint(&mut self, version: u64) -> Result<(), ReplicaError> {
        let file = PondFile::LastCheckpoint;
        let Some(&size) = self.listing.files.get(&file) else { return Ok(()) };
        // Read whole into memory: at most the size listed, and refused if that is more than a
        // hint ever holds.
        let bytes = match self.remote.get_bytes(&file, size).await {
            Ok(bytes) => bytes,
            Err(e) if is_damage(&e) => return self.problem(e),
            Err(e) => return Err(e),
        };
        let named = parse_last_checkpoint(&bytes);
        let Some(c) = named else {
            let (expected, got) =
                ("a checkpoint hint naming a version".to_string(), format!("{} unreadable bytes", bytes.len()));
            return self.problem(ReplicaError::Tampered { path: file.name(), expected, got });
        };
        if c <= version && PondFile::Checkpoint(c).local_path(self.dest).exists() {
            let path = file.local_path(self.dest);
            local_dir::create_private_file(&path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
                .map_err(|e| ReplicaError::io(&path, e))?;
            self.fetched.files += 1;
            self.fetched.bytes += bytes.len() as u64;
        }
        Ok(())
    }
}
