//! [`Pool`]: a fixed number of threads for request work that must not run on the event loop (an
//! fsync's finalize, which may write out a large object). However many requests come at once, the
//! threads stay this many: jobs wait in a queue behind them. A pool none of whose threads could
//! start runs each job on the caller's thread.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

pub struct Pool {
    /// `None` when no thread started.
    queue: Option<Sender<Job>>,
}

impl Pool {
    /// Start up to `threads` threads named `name`; they end when the pool is dropped.
    pub fn new(name: &str, threads: usize) -> Pool {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for i in 0..threads {
            let rx = rx.clone();
            match std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || work(&rx)) {
                Ok(_) => started += 1,
                Err(e) => tracing::warn!("could not start a {name} thread ({e}); going on with {started}"),
            }
        }
        Pool { queue: (started > 0).then_some(tx) }
    }

    /// Run `job` on a pool thread, or here when the pool has none.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) {
        let job: Job = Box::new(job);
        let Some(queue) = &self.queue else { return job() };
        // Sending fails only when every thread has ended (each one ends only by a panicking job).
        if let Err(returned) = queue.send(job) {
            (returned.0)()
        }
    }
}

fn work(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return, // the pool is gone
        };
        job();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_jobs_run_on_few_threads() {
        let pool = Pool::new("test-pool", 2);
        let (tx, rx) = channel();
        for i in 0..100 {
            let tx = tx.clone();
            pool.run(move || tx.send((i, std::thread::current().name().map(String::from))).unwrap());
        }
        let mut names = std::collections::BTreeSet::new();
        for _ in 0..100 {
            let (_, name) = rx.recv().unwrap();
            names.insert(name.unwrap());
        }
        assert!(names.len() <= 2 && names.iter().all(|n| n.starts_with("test-pool-")), "{names:?}");
    }
}
