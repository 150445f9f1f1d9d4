//! A running sync seen from outside: counters a progress bar or the daemon's control
//! socket reads while the run goes on, and the request to stop it.
//!
//! Plain atomics: the run only adds to them, and readers poll a consistent-enough
//! snapshot a few times a second.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Where a job's run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Reading the export and planning.
    Reading,
    /// Sending the planned operations.
    Sending,
    Finished,
}

/// The counters of the current job's run.
#[derive(Debug, Default)]
pub struct RunHandle {
    job: Mutex<String>,
    phase: AtomicU8,
    rows: AtomicU64,
    planned: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub job: String,
    pub phase: Phase,
    /// Rows read from the export so far.
    pub rows: u64,
    /// Operations planned (known once reading is done).
    pub planned: u64,
    /// Operations finished, failed ones included.
    pub done: u64,
    pub failed: u64,
}

impl RunHandle {
    pub fn new() -> RunHandle {
        RunHandle::default()
    }

    /// Starts counting for `job`'s run.
    pub fn begin(&self, job: &str) {
        *crate::locking::lock(&self.job) = job.to_string();
        self.phase.store(Phase::Reading as u8, Ordering::Relaxed);
        for c in [&self.rows, &self.planned, &self.done, &self.failed] {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// `n` more rows read (counted by the batch: one atomic add per row would cost the
    /// reader of a 1M-row export a few ms).
    pub fn rows_read(&self, n: u64) {
        self.rows.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sending(&self, planned: u64) {
        self.planned.store(planned, Ordering::Relaxed);
        self.phase.store(Phase::Sending as u8, Ordering::Relaxed);
    }

    pub fn operation_done(&self, failed: bool) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn finish(&self) {
        self.phase.store(Phase::Finished as u8, Ordering::Relaxed);
    }

    /// Asks the run to stop: no new operation starts; those in flight finish.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            job: crate::locking::lock(&self.job).clone(),
            phase: match self.phase.load(Ordering::Relaxed) {
                x if x == Phase::Sending as u8 => Phase::Sending,
                x if x == Phase::Finished as u8 => Phase::Finished,
                _ => Phase::Reading,
            },
            rows: self.rows.load(Ordering::Relaxed),
            planned: self.planned.load(Ordering::Relaxed),
            done: self.done.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}
