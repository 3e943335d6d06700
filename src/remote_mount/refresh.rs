//! [`Refresher`]: `-o refresh=SECONDS`. A thread that looks for a newer complete version every
//! period, mirrors it, and moves the mounted view to it between two requests
//! ([`PondFs::advance_to`]); then hands what changed to the caller (who tells the kernel). A file
//! open before keeps reading the version it opened. A failed look (the remote away) is logged
//! once per kind of failure and tried again next period.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::Replica;
use crate::fs::{Changes, PondFs};

/// The refresh thread; stopped (and joined) when dropped.
pub struct Refresher {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Refresher {
    /// Every `period`, move `fs` (a view of `replica`) to the newest complete version, if newer,
    /// and call `on_change` with what changed.
    pub fn start(
        replica: Arc<Replica>,
        fs: Arc<PondFs>,
        period: Duration,
        on_change: impl Fn(&Changes) + Send + 'static,
    ) -> std::io::Result<Refresher> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new().name("pond-refresh".into()).spawn(move || {
            let mut last_error = String::new();
            while !wait(&stopping, period) {
                match step(&replica, &fs) {
                    Ok(Some(changes)) => {
                        tracing::info!(
                            url = %replica.url(),
                            from = changes.from,
                            to = changes.to,
                            inodes = changes.inodes.len(),
                            "now serving a newer version"
                        );
                        on_change(&changes);
                        last_error.clear();
                    }
                    Ok(None) => last_error.clear(),
                    Err(e) => {
                        if e != last_error {
                            tracing::warn!(url = %replica.url(), "looking for a newer version failed (will retry): {e}");
                            last_error = e;
                        }
                    }
                }
            }
        })?;
        Ok(Refresher { stop, thread: Some(thread) })
    }
}

/// One look: the changes when the view moved.
fn step(replica: &Replica, fs: &PondFs) -> Result<Option<Changes>, String> {
    let current = fs.opened_version();
    let Some(newer) = replica.sync_newer(current).map_err(|e| e.to_string())? else { return Ok(None) };
    fs.advance_to(newer).map(Some).map_err(|e| format!("moving to version {newer}: {e}"))
}

/// Waits `period` or until stopped; true when stopped.
fn wait(stop: &(Mutex<bool>, Condvar), period: Duration) -> bool {
    let (flag, cv) = stop;
    let guard = flag.lock().unwrap_or_else(|p| p.into_inner());
    let (guard, _) = cv.wait_timeout_while(guard, period, |stopped| !*stopped).unwrap_or_else(|p| p.into_inner());
    *guard
}

impl Drop for Refresher {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the refresh thread panicked");
        }
    }
}
