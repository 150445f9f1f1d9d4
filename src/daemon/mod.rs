//! `dialsync run`: the daemon. Each job with a `schedule` gets a loop that sleeps until its
//! next fire time and runs it; manual runs arrive over the control socket ([`control`]).
//!
//! - A job never runs twice at once: each job has a run lock. A scheduled slot that finds
//!   the job running (a manual run, or its own run overran) is skipped with a warning.
//! - Jobs are independent: each loop is its own task, with its own dialler client.
//! - Fire times come from the wall clock, re-read at least every 10 s while sleeping, so
//!   suspend/resume and clock changes do not shift the schedule.
//! - Stop requests ([`Signal::Stop`]; the binary sends one per SIGTERM or SIGINT): no
//!   new run or operation starts, runs in progress finish their calls in flight (bounded
//!   by the HTTP timeout), the state is flushed, and [`run`] returns. A second stop
//!   returns at once after flushing the state (every confirmed call is already written,
//!   so the state is consistent); the binary exits 0 either way.
//! - Reload requests ([`Signal::Reload`], SIGHUP): the config file is loaded and checked
//!   again; a bad one is logged and the running config stays in force.
//! - systemd: READY/RELOADING/STOPPING, STATUS with the last and next runs, and WATCHDOG
//!   pings while every job loop is alive.

pub mod control;
pub mod status;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::io::BufReader;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::Config;
use crate::engine::outcome::Exit;
use crate::engine::outcome::{error_chain, Abort};
use crate::engine::progress::RunHandle;
use crate::engine::report::{self, JobReport};
use crate::engine::run::{self as sync, Mode};
use crate::state::{StateError, Store};
use control::{Event, Request};
use status::{DaemonInfo, Status};

/// Where the time comes from: the wall clock in production, tokio's (pausable) clock in
/// tests.
pub trait Clock: Clone + Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
    /// Completes at (or soon after) wall-clock time `t`.
    fn sleep_until(&self, t: DateTime<Utc>) -> impl Future<Output = ()> + Send;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct WallClock;

/// How long the scheduler sleeps at most before it looks at the wall clock again.
const RECHECK: Duration = Duration::from_secs(10);

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
pub struct Slot {
    /// Held while the job runs.
    run_lock: tokio::sync::Mutex<()>,
    info: Mutex<SlotInfo>,
}

#[derive(Default, Clone)]
struct SlotInfo {
    running: Option<Arc<RunHandle>>,
    runs: u64,
    skipped: u64,
    /// The last run's record, for the systemd STATUS line.
    last: Option<Arc<JobReport>>,
}

impl Slot {
    pub fn skipped(&self) -> u64 {
        crate::locking::lock(&self.info).skipped
    }
    fn update(&self, f: impl FnOnce(&mut SlotInfo)) {
        f(&mut crate::locking::lock(&self.info));
    }
}

/// Runs job `name` on its schedule until `stop` turns true, calling `run` for each slot.
/// Re-reads the job's schedule whenever `config` changes, and ends when the job is no
/// longer in the config.
pub async fn job_loop<C, F, Fut>(
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
            tracing::warn!(job = %name, slot = %next, "the job is still running (a manual run); this scheduled run is skipped");
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

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Token(#[from] crate::config::TokenError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot listen on the control socket {path}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DaemonError {
    pub fn exit(&self) -> Exit {
        match self {
            DaemonError::Config(_) | DaemonError::Token(_) => Exit::Config,
            DaemonError::State(_) | DaemonError::Socket { .. } => Exit::Aborted,
        }
    }
}

/// The running daemon, shared by its tasks.
struct Daemon {
    config_path: PathBuf,
    store: Store,
    config: watch::Sender<Arc<Config>>,
    stop: watch::Sender<bool>,
    slots: Mutex<BTreeMap<String, Arc<Slot>>>,
    loops: Mutex<BTreeMap<String, JoinHandle<()>>>,
    since: DateTime<Utc>,
}

/// What the daemon is told from outside. The binary feeds these from real signals
/// (SIGTERM and SIGINT: [`Signal::Stop`], SIGHUP: [`Signal::Reload`]); a test sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Stop: no new run or operation starts, runs in progress finish their calls in
    /// flight. A second one quits at once.
    Stop,
    /// Load the config file again.
    Reload,
}

/// How the daemon ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Every run ended (or the grace period passed) and the state was flushed.
    Stopped,
    /// A second stop came: the state was flushed, runs still in flight were abandoned
    /// (their calls are checked again by the next run). The caller exits without waiting
    /// for them.
    QuitNow,
}

/// Runs the daemon for the config at `path` until `signals` asks it to stop (or ends,
/// which counts as a stop). `ready` is called once it serves (the control socket is
/// bound, the job loops run), when systemd is told READY.
pub async fn run(
    path: &Path,
    mut signals: tokio::sync::mpsc::Receiver<Signal>,
    ready: impl FnOnce(),
) -> Result<Ended, DaemonError> {
    let config = Config::load(path)?;
    for w in &config.warnings {
        tracing::warn!(config = %path.display(), "{w}");
    }
    config.dialler.token.resolve()?;
    let store = Store::open(&config.state.path)?;
    let socket = control::socket_path(&config.state.path);
    let listener = bind(&socket)?;

    let (config_tx, _) = watch::channel(Arc::new(config));
    let (stop_tx, _) = watch::channel(false);
    let daemon = Arc::new(Daemon {
        config_path: path.to_path_buf(),
        store,
        config: config_tx,
        stop: stop_tx,
        slots: Mutex::new(BTreeMap::new()),
        loops: Mutex::new(BTreeMap::new()),
        since: Utc::now(),
    });
    daemon.start_loops();
    let accept = tokio::spawn(accept_loop(Arc::clone(&daemon), listener));
    let watchdog = tokio::spawn(watchdog(Arc::clone(&daemon)));
    {
        let cfg = daemon.config.borrow().clone();
        let scheduled: Vec<&str> = cfg
            .jobs
            .iter()
            .filter(|j| j.schedule.is_some())
            .map(|j| j.name.as_str())
            .collect();
        if scheduled.is_empty() {
            tracing::warn!("no job has a schedule: the daemon only serves manual runs");
        }
        tracing::info!(config = %path.display(), jobs = cfg.jobs.len(), scheduled = ?scheduled, socket = %socket.display(), "daemon started");
    }
    notify(&[sd_notify::NotifyState::Ready]);
    daemon.notify_status();
    ready();

    // Until a stop (or the end of the requests, which counts as one).
    while let Some(Signal::Reload) = signals.recv().await {
        daemon.reload();
    }

    tracing::info!("stopping: no new run starts; runs in progress finish their calls in flight");
    notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping"),
    ]);
    daemon.stop.send_replace(true);
    for slot in crate::locking::lock(&daemon.slots).values() {
        if let Some(h) = &crate::locking::lock(&slot.info).running {
            h.request_stop();
        }
    }
    // Runs stop at their next operation; those in flight end within the HTTP timeout.
    let grace = {
        let cfg = daemon.config.borrow().clone();
        cfg.dialler.timeout + cfg.dialler.connect_timeout + Duration::from_secs(5)
    };
    let slots: Vec<Arc<Slot>> = crate::locking::lock(&daemon.slots)
        .values()
        .cloned()
        .collect();
    let all_idle = async {
        for slot in &slots {
            let _ = slot.run_lock.lock().await;
        }
    };
    // A second stop: quit now. Every confirmed call is already in the state. (Reloads
    // no longer matter; a closed channel is no second stop.)
    let second = async {
        loop {
            match signals.recv().await {
                Some(Signal::Stop) => return,
                Some(Signal::Reload) => {}
                None => std::future::pending::<()>().await,
            }
        }
    };
    let ended = tokio::select! {
        idle = tokio::time::timeout(grace, all_idle) => {
            if idle.is_err() {
                tracing::warn!(
                    grace_s = grace.as_secs(),
                    "runs did not end in time; quitting with calls in flight"
                );
            }
            Ended::Stopped
        }
        () = second => {
            tracing::warn!("second signal: quitting now; calls in flight are abandoned and checked again by the next run");
            Ended::QuitNow
        }
    };
    accept.abort();
    watchdog.abort();
    daemon.store.flush().await?;
    let _ = std::fs::remove_file(&socket);
    tracing::info!("stopped");
    Ok(ended)
}

/// Binds the control socket, replacing a stale one, with mode 0600.
fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| DaemonError::Socket {
        path: path.to_path_buf(),
        source,
    };
    // The state is locked by us, so no other daemon of this state is running: a socket
    // file left over is from one that was killed.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Sends a notification to systemd; nothing without `$NOTIFY_SOCKET`.
fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

impl Daemon {
    fn slot(&self, job: &str) -> Arc<Slot> {
        Arc::clone(
            crate::locking::lock(&self.slots)
                .entry(job.to_string())
                .or_default(),
        )
    }

    fn current(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// Starts a loop for every job that has none (at start and after a reload).
    fn start_loops(self: &Arc<Self>) {
        let cfg = self.current();
        let mut loops = crate::locking::lock(&self.loops);
        loops.retain(|_, h| !h.is_finished());
        for job in &cfg.jobs {
            if loops.contains_key(&job.name) {
                continue;
            }
            let slot = self.slot(&job.name);
            let daemon = Arc::clone(self);
            let name = job.name.clone();
            let task = job_loop(
                WallClock,
                name.clone(),
                Arc::clone(&slot),
                self.config.subscribe(),
                self.stop.subscribe(),
                move |cfg| {
                    let daemon = Arc::clone(&daemon);
                    let name = name.clone();
                    async move { daemon.run_scheduled(&cfg, &name).await }
                },
            );
            loops.insert(job.name.clone(), tokio::spawn(task));
        }
    }

    /// One scheduled run of `job` (the caller holds its run lock).
    async fn run_scheduled(&self, cfg: &Config, job: &str) {
        let handle = Arc::new(RunHandle::new());
        let report = self.run_locked(cfg, job, Mode::default(), &handle).await;
        if let Some(why) = &report.stopped {
            tracing::error!(job, run = %report.run_id, outcome = %report.exit(), stopped = why.kind(), error = %why.chain(), "scheduled run stopped early");
        }
    }

    /// Runs `job` with its run lock held by the caller; records it in the slot.
    async fn run_locked(
        &self,
        cfg: &Config,
        job: &str,
        mode: Mode,
        handle: &Arc<RunHandle>,
    ) -> Arc<JobReport> {
        let dry_run = mode.dry_run;
        let slot = self.slot(job);
        slot.update(|i| i.running = Some(Arc::clone(handle)));
        if *self.stop.borrow() {
            handle.request_stop();
        }
        let report = match cfg.job(job) {
            // Removed by a reload between the request and its turn.
            Err(_) => {
                let mut r = JobReport::begin(job, dry_run);
                r.stop(Abort::JobRemoved(job.to_string()));
                r
            }
            Ok(j) => sync::run_one(cfg, j, sync::Against::Store(&self.store), mode, handle).await,
        };
        if dry_run {
            if let Err(e) = self.store.flush().await {
                tracing::error!(job, error = %error_chain(&e), "the state could not be flushed");
            }
        }
        let report = Arc::new(report);
        slot.update(|i| {
            i.running = None;
            if !dry_run {
                i.runs += 1;
                i.last = Some(Arc::clone(&report));
            }
        });
        self.notify_status();
        report
    }

    /// Loads the config file again; keeps the running config if the new one is bad.
    fn reload(self: &Arc<Self>) {
        notify(&[sd_notify::NotifyState::Reloading]);
        let path = &self.config_path;
        let result = Config::load(path).map_err(|e| e.to_string()).and_then(|c| {
            c.dialler
                .token
                .resolve()
                .map_err(|e| error_chain(&e))
                .map(|_| c)
        });
        match result {
            Err(problems) => {
                tracing::error!(config = %path.display(), %problems, "the changed config was rejected; the running config stays in force");
            }
            Ok(mut new) => {
                let old = self.current();
                if new.state.path != old.state.path {
                    tracing::warn!(
                        old = %old.state.path.display(),
                        new = %new.state.path.display(),
                        "state.path changes take effect at the next restart; the daemon keeps the current one"
                    );
                    new.state.path.clone_from(&old.state.path);
                }
                for w in &new.warnings {
                    tracing::warn!(config = %path.display(), "{w}");
                }
                let jobs: Vec<String> = new.jobs.iter().map(|j| j.name.clone()).collect();
                self.config.send_replace(Arc::new(new));
                self.start_loops();
                tracing::info!(config = %path.display(), jobs = ?jobs, "config reloaded");
            }
        }
        notify(&[sd_notify::NotifyState::Ready]);
        self.notify_status();
    }

    fn status(&self) -> Result<Status, StateError> {
        let cfg = self.current();
        let mut status = status::collect(&cfg, &self.store, Utc::now())?;
        status.daemon = Some(DaemonInfo {
            pid: std::process::id(),
            since: self.since,
            config: self.config_path.display().to_string(),
        });
        for j in &mut status.jobs {
            let info = crate::locking::lock(&self.slot(&j.job).info).clone();
            j.running = info.running.map(|h| h.snapshot());
            j.runs = Some(info.runs);
            j.skipped_slots = Some(info.skipped);
        }
        Ok(status)
    }

    /// systemd's STATUS= line: per job the runs so far, the last outcome and the next run.
    fn notify_status(&self) {
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

    /// A manual run (or dry run) asked for over the control socket.
    async fn manual(
        &self,
        job: Option<&str>,
        mode: Mode,
        stream: &mut UnixStream,
    ) -> std::io::Result<()> {
        let cfg = self.current();
        let jobs = match sync::select_jobs(&cfg, job) {
            Ok(j) => j,
            Err(e) => {
                let event = Event::Error {
                    exit: e.exit(),
                    message: e.to_string(),
                };
                return control::write_event(stream, &event).await;
            }
        };
        let (read, mut write) = stream.split();
        let mut read = BufReader::new(read);
        let mut client_gone = false;
        let mut reports = Vec::new();
        for job in jobs {
            if *self.stop.borrow() {
                let event = Event::Error {
                    exit: Exit::Aborted,
                    message: "the daemon is shutting down; run the sync again once it is back"
                        .into(),
                };
                return control::write_event(&mut write, &event).await;
            }
            let slot = self.slot(&job.name);
            let guard = match slot.run_lock.try_lock() {
                Ok(g) => g,
                Err(_) => {
                    let event = Event::Waiting {
                        job: job.name.clone(),
                    };
                    control::write_event(&mut write, &event).await?;
                    slot.run_lock.lock().await
                }
            };
            // The config in force now, not the one of the request: a reload may have come
            // while the run waited for the job (a job it removed is reported as such).
            let now = self.current();
            let handle = Arc::new(RunHandle::new());
            let run = self.run_locked(&now, &job.name, mode, &handle);
            tokio::pin!(run);
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let mut buf = Vec::new();
            let report = loop {
                tokio::select! {
                    r = &mut run => break r,
                    _ = tick.tick(), if !client_gone => {
                        let event = Event::Progress(handle.snapshot());
                        if control::write_event(&mut write, &event).await.is_err() {
                            client_gone = true;
                        }
                    }
                    n = tokio::io::AsyncBufReadExt::read_until(&mut read, b'\n', &mut buf), if !client_gone => {
                        // The client sends nothing more; end of stream means it is gone.
                        if matches!(n, Ok(0) | Err(_)) {
                            client_gone = true;
                        }
                    }
                }
                if client_gone && !handle.stop_requested() {
                    tracing::warn!(job = %job.name, "the manual sync's terminal went away; stopping the run");
                    handle.request_stop();
                }
            };
            drop(guard);
            reports.push(report);
        }
        if client_gone {
            return Ok(());
        }
        let reports: Vec<JobReport> = reports.into_iter().map(Arc::unwrap_or_clone).collect();
        let human: String = reports.iter().map(JobReport::human).collect();
        let event = Event::Done {
            exit: report::exit_of(&reports),
            json: report::json(&reports),
            human,
        };
        control::write_event(&mut write, &event).await
    }
}

async fn accept_loop(daemon: Arc<Daemon>, listener: UnixListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::error!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let daemon = Arc::clone(&daemon);
        tokio::spawn(
            async move {
                if let Err(e) = serve(&daemon, stream).await {
                    tracing::debug!(error = %e, "control connection ended");
                }
            }
            .instrument(tracing::info_span!("control")),
        );
    }
}

async fn serve(daemon: &Daemon, mut stream: UnixStream) -> std::io::Result<()> {
    let request = {
        let mut reader = BufReader::new(&mut stream);
        control::read_request(&mut reader).await
    };
    match request {
        Ok(None) => Ok(()),
        Err(e) => {
            let event = Event::Error {
                exit: Exit::Config,
                message: format!("bad request: {e}"),
            };
            control::write_event(&mut stream, &event).await
        }
        Ok(Some(Request::Status)) => {
            let event = match daemon.status() {
                Ok(s) => Event::Status(s),
                Err(e) => Event::Error {
                    exit: Exit::Aborted,
                    message: error_chain(&e),
                },
            };
            control::write_event(&mut stream, &event).await
        }
        Ok(Some(Request::Sync {
            job,
            dry_run,
            force,
            verify,
        })) => {
            tracing::info!(
                job = job.as_deref().unwrap_or("(all)"),
                dry_run,
                force,
                verify = ?verify,
                "manual sync requested"
            );
            let mode = Mode {
                dry_run,
                force,
                verify,
            };
            daemon.manual(job.as_deref(), mode, &mut stream).await
        }
    }
}

/// Pings systemd's watchdog while every job loop is alive.
async fn watchdog(daemon: Arc<Daemon>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// Wall time that moves with tokio's clock, so paused time drives the scheduler.
    #[derive(Clone)]
    struct TestClock {
        wall: DateTime<Utc>,
        start: tokio::time::Instant,
    }

    impl TestClock {
        fn at(wall: DateTime<Utc>) -> TestClock {
            TestClock {
                wall,
                start: tokio::time::Instant::now(),
            }
        }
    }

    impl Clock for TestClock {
        fn now(&self) -> DateTime<Utc> {
            self.wall + (tokio::time::Instant::now() - self.start)
        }
        async fn sleep_until(&self, t: DateTime<Utc>) {
            let left = (t - self.now()).to_std().unwrap_or_default();
            tokio::time::sleep(left).await;
        }
    }

    fn config(schedule: &str) -> Arc<Config> {
        let text = format!(
            r#"
[dialler]
base_url = "http://127.0.0.1:9/rest/v1.0"
client_id = 7
token = "t"
[state]
path = "/nonexistent/state"
[[job]]
name = "j"
campaign_id = 538
schedule = "{schedule}"
timezone = "Europe/Berlin"
[job.source]
type = "csv"
path = "x.csv"
[job.fields]
UserData = "id"
Name = "name"
PhoneNumber1 = "phone"
"#
        );
        Arc::new(Config::from_str(&text, Path::new("/etc/dialsync/t.toml")).unwrap())
    }

    /// Job `j` of `schedule` on its loop from wall time `start`; each run takes `run_time`
    /// and records when it fired.
    struct Sim {
        config: watch::Sender<Arc<Config>>,
        stop: watch::Sender<bool>,
        slot: Arc<Slot>,
        fired: Arc<Mutex<Vec<DateTime<Utc>>>>,
        task: JoinHandle<()>,
    }

    impl Sim {
        fn start(schedule: &str, start: DateTime<Utc>, run_time: Duration) -> Sim {
            let clock = TestClock::at(start);
            let (config, cfg_rx) = watch::channel(self::config(schedule));
            let (stop, stop_rx) = watch::channel(false);
            let slot = Arc::new(Slot::default());
            let fired = Arc::new(Mutex::new(Vec::new()));
            let f = Arc::clone(&fired);
            let task = tokio::spawn(job_loop(
                clock.clone(),
                "j".into(),
                Arc::clone(&slot),
                cfg_rx,
                stop_rx,
                move |_| {
                    crate::locking::lock(&f).push(clock.now());
                    tokio::time::sleep(run_time)
                },
            ));
            Sim {
                config,
                stop,
                slot,
                fired,
                task,
            }
        }

        /// Stops the loop (a run in progress finishes) and returns the fire times.
        async fn end(self) -> (Vec<DateTime<Utc>>, Arc<Slot>) {
            self.stop.send(true).unwrap();
            self.task.await.unwrap();
            let fired = crate::locking::lock(&self.fired).clone();
            (fired, self.slot)
        }
    }

    /// Runs job `j` of `schedule` from `start` for `span` of simulated time; each run
    /// takes `run_time`. Returns the fire times (wall clock) and the slot.
    async fn simulate(
        schedule: &str,
        start: DateTime<Utc>,
        span: chrono::Duration,
        run_time: Duration,
    ) -> (Vec<DateTime<Utc>>, Arc<Slot>) {
        let sim = Sim::start(schedule, start, run_time);
        tokio::time::sleep(span.to_std().unwrap()).await;
        sim.end().await
    }

    fn berlin(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        chrono_tz::Europe::Berlin
            .with_ymd_and_hms(y, mo, d, h, mi, 0)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn local(ts: &[DateTime<Utc>]) -> Vec<String> {
        ts.iter()
            .map(|t| {
                t.with_timezone(&chrono_tz::Europe::Berlin)
                    .format("%a %d %H:%M:%S")
                    .to_string()
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn every_quarter_hour_fires_on_the_quarters() {
        let (fired, slot) = simulate(
            "*/15 * * * *",
            berlin(2026, 11, 23, 9, 58),
            chrono::Duration::minutes(64),
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(
            local(&fired),
            [
                "Mon 23 10:00:00",
                "Mon 23 10:15:00",
                "Mon 23 10:30:00",
                "Mon 23 10:45:00",
                "Mon 23 11:00:00"
            ]
        );
        assert_eq!(slot.skipped(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn sunday_as_zero_fires_on_sundays() {
        // Friday 2026-11-20 to Tuesday 2026-12-01.
        let (fired, _) = simulate(
            "0 9 * * 0",
            berlin(2026, 11, 20, 0, 0),
            chrono::Duration::days(11),
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(local(&fired), ["Sun 22 09:00:00", "Sun 29 09:00:00"]);
    }

    #[tokio::test(start_paused = true)]
    async fn day_of_month_or_weekday_as_in_crontab() {
        // The 1st of the month or any Monday, from Sunday 2026-11-22 for ten days.
        let (fired, _) = simulate(
            "0 6 1 * MON",
            berlin(2026, 11, 22, 0, 0),
            chrono::Duration::days(10),
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(
            local(&fired),
            ["Mon 23 06:00:00", "Mon 30 06:00:00", "Tue 01 06:00:00"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_that_overruns_skips_the_slots_it_covered() {
        // Each run takes 20 minutes: the :15 and :45 slots fall inside a run.
        let (fired, slot) = simulate(
            "*/15 * * * *",
            berlin(2026, 11, 23, 9, 58),
            chrono::Duration::minutes(64),
            Duration::from_secs(20 * 60),
        )
        .await;
        assert_eq!(
            local(&fired),
            ["Mon 23 10:00:00", "Mon 23 10:30:00", "Mon 23 11:00:00"]
        );
        // 10:15, 10:45, and 11:15 (the 11:00 run is let finish after the stop, to 11:20).
        assert_eq!(slot.skipped(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_that_finds_a_manual_run_going_is_skipped() {
        let sim = Sim::start("*/15 * * * *", berlin(2026, 11, 23, 9, 58), Duration::ZERO);
        let manual = sim.slot.run_lock.try_lock().unwrap();
        tokio::time::sleep(Duration::from_secs(5 * 60)).await; // past 10:00
        drop(manual);
        tokio::time::sleep(Duration::from_secs(15 * 60)).await; // past 10:15
        let (fired, slot) = sim.end().await;
        assert_eq!(local(&fired), ["Mon 23 10:15:00"]);
        assert_eq!(slot.skipped(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_schedule_takes_effect_at_once() {
        let sim = Sim::start("0 12 * * *", berlin(2026, 11, 23, 9, 58), Duration::ZERO);
        tokio::time::sleep(Duration::from_secs(60)).await;
        sim.config.send(config("*/15 * * * *")).unwrap();
        tokio::time::sleep(Duration::from_secs(3 * 60)).await;
        let (fired, _) = sim.end().await;
        assert_eq!(local(&fired), ["Mon 23 10:00:00"]);
    }
}
