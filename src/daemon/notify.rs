//! systemd notification: READY/RELOADING/STOPPING, the STATUS line with each job's last
//! and next run, and WATCHDOG pings while every job loop is alive.

use std::sync::Arc;

use super::Daemon;
use chrono::Utc;

/// A notification for systemd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Note {
    Ready,
    Reloading,
    Stopping,
    Status(String),
    Watchdog,
}

/// Notifications waiting for the sender thread; more are dropped (systemd is not reading).
const QUEUED: usize = 64;

/// What the sender thread is handed: notifications to send, or a request to say when
/// it has sent everything handed to it before.
enum Queued {
    Notes(Vec<Note>),
    Flushed(std::sync::mpsc::Sender<()>),
}

/// The sender thread's queue (`None`: no `$NOTIFY_SOCKET`, or no thread).
fn queue() -> Option<&'static std::sync::mpsc::SyncSender<Queued>> {
    static SENDER: std::sync::OnceLock<Option<std::sync::mpsc::SyncSender<Queued>>> =
        std::sync::OnceLock::new();
    SENDER
        .get_or_init(|| {
            std::env::var_os("NOTIFY_SOCKET")?;
            let (tx, rx) = std::sync::mpsc::sync_channel::<Queued>(QUEUED);
            let spawned = std::thread::Builder::new()
                .name("sd-notify".into())
                .spawn(move || {
                    for queued in rx {
                        match queued {
                            Queued::Notes(notes) => send(&notes),
                            Queued::Flushed(done) => {
                                let _ = done.send(());
                            }
                        }
                    }
                });
            match spawned {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the systemd notification thread; systemd is not notified");
                    None
                }
            }
        })
        .as_ref()
}

/// Sends a notification to systemd (nothing without `$NOTIFY_SOCKET`), without ever
/// blocking the caller: the socket's send blocks while its queue is full (a receiver that
/// stopped reading; Linux queues 10 datagrams), and a blocked tokio worker can stall the
/// whole daemon, shutdown included. So one thread sends them, in order; while it is
/// stuck, further notifications are dropped, which systemd tolerates (a later STATUS
/// replaces an earlier one; a missed watchdog ping is what a stuck daemon deserves).
pub(super) fn notify(notes: &[Note]) {
    if let Some(tx) = queue() {
        if tx.try_send(Queued::Notes(notes.to_vec())).is_err() {
            tracing::debug!(notes = ?notes, "systemd is not reading its notifications; dropped");
        }
    }
}

/// Before the process exits: waits (up to `patience`) until the notifications handed
/// over so far are sent, so that the last of them (STOPPING) is not lost with the
/// process. A sender stuck on a systemd that stopped reading is not waited for longer.
pub(super) fn flush(patience: std::time::Duration) {
    let Some(tx) = queue() else {
        return;
    };
    let (done, sent) = std::sync::mpsc::channel();
    if tx.try_send(Queued::Flushed(done)).is_ok() && sent.recv_timeout(patience).is_err() {
        tracing::debug!("systemd's notifications were not all sent before the exit");
    }
}

fn send(notes: &[Note]) {
    use sd_notify::NotifyState;
    let states: Vec<NotifyState<'_>> = notes
        .iter()
        .map(|n| match n {
            Note::Ready => NotifyState::Ready,
            Note::Reloading => NotifyState::Reloading,
            Note::Stopping => NotifyState::Stopping,
            Note::Status(s) => NotifyState::Status(s),
            Note::Watchdog => NotifyState::Watchdog,
        })
        .collect();
    if let Err(e) = sd_notify::notify(&states) {
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
            notify(&[Note::Watchdog]);
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
        notify(&[Note::Status(parts.join("; "))]);
    }
}
