//! The remote's lease (`_pond.lock` at its top level): one changer of a remote at a time. Each
//! pass of `pond replicate` and every `pond prune URL` takes it before it lists the remote and
//! gives it back when done, so a prune never removes a file that a replicate pass has just found
//! on the remote and is about to build on, and a pass never ships against a listing a prune is
//! changing. Readers (restore, verify, a remote mount) take no lock: prune only removes what no
//! kept version needs, and a reader that loses a file it listed tries again (see `restore`).
//!
//! The lease is created only if absent (a put-if-absent: `O_EXCL`-like on a directory, a
//! conditional put on S3), says who holds it and until when, and is renewed by its holder every
//! [`LEASE`] / 3 while the work goes on. One whose holder is gone is broken: it expired, or it was
//! taken on this machine (same boot) by a process that no longer exists (a `kill -9`), or by this
//! process and is no longer held (a release that failed). A taker
//! waits for a live holder as long as it renews; the stop flag (Ctrl-C) ends the wait.
//!
//! Breaking an expired lease is not atomic on every store (S3 has no conditional delete): two
//! takers breaking the same dead lease at once could both go on. It needs the holder to have died
//! and two changers to arrive within the same instant; pond does not guard against it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::error::ReplicaError;
use super::remote::Remote;
use crate::layout::PondFile;

/// How long a lease holds without renewal.
pub const LEASE: Duration = Duration::from_secs(120);
/// How often a waiting taker looks again.
const RETRY: Duration = Duration::from_millis(500);

/// What the lease file says.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Lease {
    /// A fresh id per taking: only its holder renews or releases it.
    owner: String,
    /// "replicate" or "prune".
    what: String,
    host: String,
    /// The kernel's boot id: a pid means something only within one boot of one machine.
    boot: String,
    pid: u32,
    since_ms: i64,
    expires_ms: i64,
}

impl Lease {
    fn describe(&self) -> String {
        format!("pond {} (pid {} on {})", self.what, self.pid, self.host)
    }

    /// Its holder is gone: the lease expired, or it was taken on this machine by a process that
    /// no longer runs, or by this process and is held no more (a run whose release failed).
    fn holder_gone(&self, now_ms: i64) -> bool {
        if self.expires_ms < now_ms {
            return true;
        }
        if self.boot != boot_id() {
            return false;
        }
        if self.pid == std::process::id() {
            return !held_here().contains(&self.owner);
        }
        !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

/// The leases this process holds now (by owner id).
fn held_here() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<String>> {
    static HELD: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    HELD.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> i64 {
    crate::oplog::now_ns() / 1_000_000
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into())
}

/// A held lease; renewed in the background until [`RemoteLock::release`].
pub struct RemoteLock {
    remote: Remote,
    lease: Lease,
    /// Set by the renewer when the lease was found taken by another (it had expired meanwhile).
    lost: Arc<AtomicBool>,
    renewer: tokio::task::JoinHandle<()>,
}

impl RemoteLock {
    /// Take `remote`'s lease for `what`, waiting while a live holder has it (`waiting` is told
    /// once who that is). Fails with [`ReplicaError::Interrupted`] when `stop` is set meanwhile.
    pub async fn acquire(
        remote: &Remote,
        what: &str,
        stop: &AtomicBool,
        waiting: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<RemoteLock, ReplicaError> {
        let mut told = false;
        loop {
            let now = now_ms();
            let lease = Lease {
                owner: uuid::Uuid::new_v4().to_string(),
                what: what.to_string(),
                host: host_name(),
                boot: boot_id(),
                pid: std::process::id(),
                since_ms: now,
                expires_ms: now + LEASE.as_millis() as i64,
            };
            let created = match remote.put_if_absent(&PondFile::RemoteLock, encode(&lease)).await {
                Ok(created) => created,
                // The store may have kept a put whose answer was lost: then the lease is ours.
                Err(e) => match read(remote).await {
                    Ok(Some(Ok(held))) if held.owner == lease.owner => true,
                    _ => return Err(e),
                },
            };
            if created {
                held_here().insert(lease.owner.clone());
                let lost = Arc::new(AtomicBool::new(false));
                let renewer = tokio::spawn(renew(remote.clone(), lease.clone(), lost.clone()));
                return Ok(RemoteLock { remote: remote.clone(), lease, lost, renewer });
            }
            match read(remote).await? {
                None => continue, // released meanwhile
                Some(Err(_)) => {
                    // Not a lease pond wrote: nothing renews it.
                    tracing::warn!("removing the remote's unreadable lock file");
                    remote.remove(&PondFile::RemoteLock).await?;
                    continue;
                }
                Some(Ok(held)) if held.holder_gone(now_ms()) => {
                    tracing::warn!("breaking the remote's lock held by {}, which is gone", held.describe());
                    remote.remove(&PondFile::RemoteLock).await?;
                    continue;
                }
                Some(Ok(held)) => {
                    if !told {
                        waiting(&held.describe());
                        told = true;
                    }
                }
            }
            for _ in 0..(RETRY.as_millis() / 50) {
                if stop.load(Ordering::SeqCst) {
                    return Err(ReplicaError::Interrupted);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Fails when the lease was lost (it expired while this holder could not renew it and
    /// another took it): whoever holds a lock checks before each change it makes.
    pub fn check(&self) -> Result<(), ReplicaError> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(ReplicaError::LockLost { url: self.remote.url().to_string() });
        }
        Ok(())
    }

    /// Give the lease back (only if it is still ours).
    pub async fn release(self) -> Result<(), ReplicaError> {
        self.renewer.abort();
        held_here().remove(&self.lease.owner);
        if let Some(Ok(held)) = read(&self.remote).await?
            && held.owner == self.lease.owner
        {
            self.remote.remove(&PondFile::RemoteLock).await?;
        }
        Ok(())
    }
}

impl Drop for RemoteLock {
    fn drop(&mut self) {
        // Not released (an error path): the lease is broken by the next taker, as held by no
        // one in this process or by a process that is gone, or else once it expires.
        self.renewer.abort();
        held_here().remove(&self.lease.owner);
    }
}

fn encode(lease: &Lease) -> Bytes {
    Bytes::from(serde_json::to_vec(lease).unwrap_or_default())
}

/// The lease on the remote: None when there is none, `Err` when the file is not one.
async fn read(remote: &Remote) -> Result<Option<Result<Lease, ()>>, ReplicaError> {
    let listed = match remote.size_of(&PondFile::RemoteLock).await? {
        Some(size) => size,
        None => return Ok(None),
    };
    match remote.get_bytes(&PondFile::RemoteLock, listed).await {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(drop))),
        Err(ReplicaError::Missing(_)) => Ok(None),
        Err(ReplicaError::TooLarge { .. }) => Ok(Some(Err(()))),
        Err(e) => Err(e),
    }
}

/// Renew `lease` every third of [`LEASE`] while it is ours; mark it lost when another holds it.
async fn renew(remote: Remote, mut lease: Lease, lost: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(LEASE / 3).await;
        match read(&remote).await {
            Ok(Some(Ok(held))) if held.owner == lease.owner => {}
            Ok(_) => {
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => {
                tracing::warn!("could not read the remote's lock to renew it: {e}");
                continue;
            }
        }
        lease.expires_ms = now_ms() + LEASE.as_millis() as i64;
        if let Err(e) = remote.put_bytes(&PondFile::RemoteLock, encode(&lease)).await {
            tracing::warn!("could not renew the remote's lock: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(expires_ms: i64, boot: String, pid: u32) -> Lease {
        Lease { owner: "o".into(), what: "replicate".into(), host: "h".into(), boot, pid, since_ms: 0, expires_ms }
    }

    #[test]
    fn a_lease_is_broken_when_it_expired_or_its_process_on_this_boot_is_gone() {
        let now = now_ms();
        let parent = std::os::unix::process::parent_id();
        assert!(!lease(now + 60_000, boot_id(), parent).holder_gone(now), "a live process's");
        assert!(lease(now - 1, boot_id(), parent).holder_gone(now), "expired");
        let mine = lease(now + 60_000, boot_id(), std::process::id());
        assert!(mine.holder_gone(now), "this process's, held no more");
        held_here().insert(mine.owner.clone());
        assert!(!mine.holder_gone(now), "this process's, held");
        held_here().remove(&mine.owner);
        assert!(lease(now + 60_000, boot_id(), u32::MAX - 1).holder_gone(now), "a dead pid on this boot");
        assert!(!lease(now + 60_000, "another-boot".into(), u32::MAX - 1).holder_gone(now), "another machine's");
    }
}
