//! systemd notification: READY/RELOADING/STOPPING, the STATUS line with each job's last
//! and next run, and WATCHDOG pings while every job loop is alive.

use std::sync::Arc;

use super::Daemon;
use chrono::Utc;

/// Sends a notification to systemd; nothing without `$NOTIFY_SOCKET`.
pub(super) fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Pings systemd's watchdog while every job loop is alive.
pub(super) async fn watchdog(daemon: Arc<Daemon>) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut tick = tokio::time::interval(period / 2);
    loop {
        tick.tick().await;
        let cfg = daemon.current();
        let loops = crate::locking::lock(&daemon.loops);
        let dead: Vec<&str> = cfg
            .jobs
            .iter()
            .filter(|j| loops.get(&j.name).is_none_or(|h| h.is_finished()))
            .map(|j| j.name.as_str())
            .collect();
        drop(loops);
        if dead.is_empty() {
            notify(&[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::error!(jobs = ?dead, "a job's scheduler ended unexpectedly; no more watchdog pings, so systemd restarts the service");
        }
    }
}

impl Daemon {
    /// systemd's STATUS= line: per job the runs so far, the last outcome and the next run.
    pub(super) fn notify_status(&self) {
        let cfg = self.current();
        let now = Utc::now();
        let slots = crate::locking::lock(&self.slots);
        let parts: Vec<String> = slots
            .iter()
            .map(|(name, slot)| {
                let i = crate::locking::lock(&slot.info);
                let last = match &i.last {
                    Some(r) => format!("last {} at {}", r.exit(), r.started_at),
                    None => "no run yet".to_string(),
                };
                let next = cfg
                    .job(name)
                    .ok()
                    .and_then(|j| j.schedule.as_ref()?.next_fire(now, j.timezone));
                let next = match next {
                    Some(n) => format!("next {}", n.format("%Y-%m-%dT%H:%M:%SZ")),
                    None => "not scheduled".to_string(),
                };
                format!("{name}: {} runs, {last}, {next}", i.runs)
            })
            .collect();
        notify(&[sd_notify::NotifyState::Status(&parts.join("; "))]);
    }
}
