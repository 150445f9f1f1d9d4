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

pub(crate) mod control;
pub(crate) mod history;
mod notify;
mod scheduler;
mod server;
pub(crate) mod status;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::alerts::Alerts;
use crate::config::Config;
use crate::dialler::Tenant;
use crate::engine::outcome::Exit;
use crate::engine::outcome::{error_chain, Abort};
use crate::engine::progress::RunHandle;
use crate::engine::report::JobReport;
use crate::engine::run::{self as sync, RunMode};
use crate::metrics::Metrics;
use crate::state::{StateError, Store};
use status::{DaemonInfo, Status};

#[cfg(test)]
pub(crate) use scheduler::Clock;
pub(crate) use scheduler::{job_loop, Slot, WallClock};

use notify::{notify, watchdog, Note};
use server::{accept_loop, bind};

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
    #[error(
        "cannot serve metrics on {addr} ([metrics] listen): is another process using the port?"
    )]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl DaemonError {
    pub fn exit(&self) -> Exit {
        match self {
            DaemonError::Config(_) | DaemonError::Token(_) => Exit::Config,
            DaemonError::State(_) | DaemonError::Socket { .. } | DaemonError::Metrics { .. } => {
                Exit::Aborted
            }
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
    /// When a run last got an answer from the dialler that proved the token: scheduled
    /// runs with nothing to send check it at most every `credential_check`.
    token_proven: Mutex<Option<std::time::Instant>>,
    /// The dialler's limits, shared by every run (replaced when a reload changes them).
    tenant: Mutex<Tenant>,
    /// What `[metrics]` serves.
    metrics: Arc<Metrics>,
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
    let store = Store::open_sized(&config.state.path, config.state.cache_mb)?;
    let socket = control::socket_path(&config.state.path);
    let listener = bind(&socket)?;
    let metrics = Arc::new(Metrics::new());
    let metrics_listener = match &config.metrics {
        Some(m) => Some(
            tokio::net::TcpListener::bind(m.listen)
                .await
                .map_err(|source| DaemonError::Metrics {
                    addr: m.listen,
                    source,
                })?,
        ),
        None => None,
    };

    let dialler = config.dialler.clone();
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
        token_proven: Mutex::new(None),
        tenant: Mutex::new(Tenant::with_metrics(&dialler, metrics.api())),
        metrics,
    });
    daemon.restore_metrics()?;
    let serve_metrics = metrics_listener.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(url = %format!("http://{addr}/metrics"), "serving metrics");
        }
        tokio::spawn(server::serve_metrics(Arc::clone(&daemon.metrics), listener))
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
    notify(&[Note::Ready]);
    daemon.notify_status();
    ready();

    // Until a stop (or the end of the requests, which counts as one).
    while let Some(Signal::Reload) = signals.recv().await {
        daemon.reload();
    }

    tracing::info!("stopping: no new run starts; runs in progress finish their calls in flight");
    notify(&[Note::Stopping, Note::Status("stopping".into())]);
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
    if let Some(m) = serve_metrics {
        m.abort();
    }
    daemon.store.flush().await?;
    let _ = std::fs::remove_file(&socket);
    tracing::info!("stopped");
    // STOPPING=1 and the last STATUS, sent before the process ends.
    tokio::task::spawn_blocking(|| notify::flush(Duration::from_secs(1)))
        .await
        .ok();
    Ok(ended)
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
                    async move {
                        daemon
                            .run_unattended(&cfg, &name, sync::Trigger::Schedule)
                            .await
                    }
                },
            );
            loops.insert(job.name.clone(), tokio::spawn(task));
        }
    }

    /// One run of `job` that the daemon started itself, on the job's schedule or after a
    /// reload (the caller holds its run lock).
    async fn run_unattended(&self, cfg: &Config, job: &str, trigger: sync::Trigger) {
        let handle = Arc::new(RunHandle::new());
        let proven = *crate::locking::lock(&self.token_proven);
        let mode = RunMode {
            credentials_recent: proven.is_some_and(|t| t.elapsed() < cfg.dialler.credential_check),
            trigger,
            ..RunMode::default()
        };
        let report = self.run_locked(cfg, job, mode, &handle).await;
        if let Some(why) = &report.stopped {
            tracing::error!(job, run = %report.run_id, %trigger, outcome = %report.exit(), stopped = why.kind(), error = %why.chain(), "the run stopped early");
        }
    }

    /// Runs `job` once now, as the reload that changed it asks: after a run in progress
    /// (it keeps the config it started with), under the config in force then.
    fn spawn_reload_run(self: &Arc<Self>, job: String) {
        let daemon = Arc::clone(self);
        tokio::spawn(async move {
            let slot = daemon.slot(&job);
            let _running = slot.run_lock.lock().await;
            let cfg = daemon.current();
            // Stopping, or removed by a later reload while this one waited.
            if *daemon.stop.borrow() || cfg.job(&job).is_err() {
                return;
            }
            daemon
                .run_unattended(&cfg, &job, sync::Trigger::Reload)
                .await;
        });
    }

    /// Runs `job` with its run lock held by the caller; records it in the slot.
    async fn run_locked(
        &self,
        cfg: &Config,
        job: &str,
        mode: RunMode,
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
            Ok(j) => {
                let tenant = self.tenant(cfg);
                // The run's pings and webhook go on after it without being waited for.
                let alerts = Alerts::new(&cfg.alerts);
                let against = sync::Against::Store(&self.store);
                sync::run_one(cfg, j, against, mode, handle, &tenant, &alerts).await
            }
        };
        if dry_run {
            if let Err(e) = self.store.flush().await {
                tracing::error!(job, error = %error_chain(&e), "the state could not be flushed");
            }
        }
        self.metrics.record_run(&report);
        // A manual run's answers prove the token as well as a scheduled run's.
        if report.token_accepted {
            *crate::locking::lock(&self.token_proven) = Some(std::time::Instant::now());
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
        crate::trim::release_free_memory();
        report
    }

    /// The tenant's limits for a run under `cfg`: the shared ones, new ones when a reload
    /// changed them (runs still going keep the old ones until they end).
    fn tenant(&self, cfg: &Config) -> Tenant {
        let mut tenant = crate::locking::lock(&self.tenant);
        if !tenant.fits(&cfg.dialler) {
            *tenant = Tenant::with_metrics(&cfg.dialler, self.metrics.api());
        }
        tenant.clone()
    }

    /// Loads the config file again; keeps the running config if the new one is bad.
    fn reload(self: &Arc<Self>) {
        notify(&[Note::Reloading]);
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
                if new.metrics != old.metrics {
                    tracing::warn!(
                        "[metrics] changes take effect at the next restart; the daemon keeps serving as before"
                    );
                    new.metrics.clone_from(&old.metrics);
                }
                for w in &new.warnings {
                    tracing::warn!(config = %path.display(), "{w}");
                }
                let jobs: Vec<String> = new.jobs.iter().map(|j| j.name.clone()).collect();
                // A scheduled job the reload added, or whose runs it changed (export,
                // mapping, campaign, limits), runs at once: the operator who reloaded sees
                // the new config at work (or its error) now, not at the next slot. A change
                // of the schedule alone waits for it; manual-only jobs wait to be asked.
                let rerun: Vec<String> = new
                    .jobs
                    .iter()
                    .filter(|j| j.schedule.is_some())
                    .filter(|j| old.job(&j.name).map_or(true, |o| !o.runs_like(j)))
                    .map(|j| j.name.clone())
                    .collect();
                self.config.send_replace(Arc::new(new));
                self.start_loops();
                tracing::info!(config = %path.display(), jobs = ?jobs, rerun = ?rerun, "config reloaded");
                for job in rerun {
                    self.spawn_reload_run(job);
                }
            }
        }
        notify(&[Note::Ready]);
        self.notify_status();
    }

    /// Sets each job's gauges from the state, so that a restarted daemon serves the last
    /// run's figures before its first run.
    fn restore_metrics(&self) -> Result<(), StateError> {
        use history::RunSummary;
        let cfg = self.current();
        for job in &cfg.jobs {
            let records = self.store.history(&job.name, cfg.state.history_runs)?;
            // Newest first, read only as far as the last run that finished.
            let mut runs = records.iter().filter_map(|r| RunSummary::from_record(r, 0));
            let last = runs.next();
            let finished = if last.as_ref().is_some_and(RunSummary::finished) {
                last.clone()
            } else {
                runs.find(RunSummary::finished)
            };
            self.metrics.restore_job(
                &job.name,
                self.store.job(&job.name)?.len() as u64,
                last.as_ref(),
                finished.as_ref(),
            );
        }
        Ok(())
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
}
