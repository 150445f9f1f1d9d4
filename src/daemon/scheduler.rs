//! The job loops: each sleeps until its job's next fire time (on a [`Clock`] that tests
//! can pause), runs the job if it is not running already, and counts the slots it skipped.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::config::Config;
use crate::engine::progress::RunHandle;
use crate::engine::report::JobReport;

/// Where the time comes from: the wall clock in production, tokio's (pausable) clock in
/// tests.
pub(crate) trait Clock: Clone + Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
    /// Completes at (or soon after) wall-clock time `t`.
    fn sleep_until(&self, t: DateTime<Utc>) -> impl Future<Output = ()> + Send;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WallClock;

/// How long the scheduler sleeps at most before it looks at the wall clock again.
pub(super) const RECHECK: Duration = Duration::from_secs(10);

impl Clock for WallClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    async fn sleep_until(&self, t: DateTime<Utc>) {
        // The monotonic clock tokio sleeps on stops during suspend and ignores clock
        // changes; waking up every few seconds to compare with the wall clock does not.
        loop {
            let left = (t - Utc::now()).to_std().unwrap_or_default();
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(RECHECK)).await;
        }
    }
}

/// What the daemon knows of one job beyond its config.
#[derive(Default)]
pub(crate) struct Slot {
    /// Held while the job runs.
    pub(super) run_lock: tokio::sync::Mutex<()>,
    pub(super) info: Mutex<SlotInfo>,
}

#[derive(Default, Clone)]
pub(super) struct SlotInfo {
    pub(super) running: Option<Arc<RunHandle>>,
    pub(super) runs: u64,
    pub(super) skipped: u64,
    /// The last run's record, for the systemd STATUS line.
    pub(super) last: Option<Arc<JobReport>>,
}

impl Slot {
    #[cfg(test)]
    pub(crate) fn skipped(&self) -> u64 {
        crate::locking::lock(&self.info).skipped
    }
    pub(super) fn update(&self, f: impl FnOnce(&mut SlotInfo)) {
        f(&mut crate::locking::lock(&self.info));
    }
}

/// Runs job `name` on its schedule until `stop` turns true, calling `run` for each slot.
/// Re-reads the job's schedule whenever `config` changes, and ends when the job is no
/// longer in the config.
pub(crate) async fn job_loop<C, F, Fut>(
    clock: C,
    name: String,
    slot: Arc<Slot>,
    mut config: watch::Receiver<Arc<Config>>,
    mut stop: watch::Receiver<bool>,
    run: F,
) where
    C: Clock,
    F: Fn(Arc<Config>) -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        if *stop.borrow() {
            return;
        }
        let cfg = config.borrow_and_update().clone();
        let Ok(job) = cfg.job(&name) else {
            tracing::info!(job = %name, "the job is no longer in the config; its schedule ends");
            return;
        };
        let schedule = job.schedule.clone();
        let tz = job.timezone;
        let Some(next) = schedule.as_ref().and_then(|s| s.next_fire(clock.now(), tz)) else {
            // No schedule (or one that never fires again): manual runs only.
            tokio::select! {
                r = config.changed() => if r.is_err() { return },
                _ = stop.changed() => return,
            }
            continue;
        };
        tracing::debug!(job = %name, next = %next, "next run");
        tokio::select! {
            _ = clock.sleep_until(next) => {}
            r = config.changed() => {
                if r.is_err() { return }
                continue;
            }
            _ = stop.changed() => return,
        }
        let Ok(guard) = slot.run_lock.try_lock() else {
            slot.update(|i| i.skipped += 1);
            tracing::warn!(job = %name, slot = %next, "the job is still running (a manual run, or one after a reload); this scheduled run is skipped");
            continue;
        };
        run(cfg.clone()).await;
        drop(guard);
        // Slots that passed while the run went on are skipped, not made up for.
        let now = clock.now();
        let mut missed = 0u64;
        let mut t = next;
        while let Some(n) = schedule.as_ref().and_then(|s| s.next_fire(t, tz)) {
            if n > now || missed >= 1_000_000 {
                break;
            }
            missed += 1;
            t = n;
        }
        if missed > 0 {
            slot.update(|i| i.skipped += missed);
            tracing::warn!(job = %name, skipped = missed, "the run lasted past its next scheduled time; those slots were skipped");
        }
    }
}
