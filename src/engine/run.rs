//! One sync run: for each job, read the export, map and plan against the state (in a
//! blocking thread: it is CPU and file work), then execute the plan and report.
//!
//! A job's run never returns an error: whatever stops it is recorded in its report
//! (`aborted`), and the other jobs still run. Only what prevents any job from running
//! (no token, no state database) is an error of the whole sync.

use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use crate::alerts::Alerts;
use crate::config::{Config, JobConfig, TokenError};
use crate::dialler::{ClientError, Dialler, Tenant};
use crate::engine::job::run_job;
use crate::engine::outcome::{error_chain, Abort, Exit, Step};
use crate::engine::progress::RunHandle;
use crate::engine::report::JobReport;
use crate::state::{StateError, Store};

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// Only this job (all jobs when `None`).
    pub job: Option<String>,
    /// How each job runs.
    pub mode: RunMode,
    /// Progress counters to update and the stop request to obey (a fresh one when `None`).
    pub handle: Option<Arc<RunHandle>>,
}

/// How a job runs: for real or as a dry run, whether its guards apply, and when it
/// verifies its state. The control socket carries it as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RunMode {
    /// Plan and report, but send no write and store nothing.
    pub dry_run: bool,
    /// A dry run without its read-only check of the dialler.
    pub offline: bool,
    /// Run even if a guard trips (an empty or truncated export, too many removals or
    /// resets).
    pub force: bool,
    /// When to read the campaign back and check the state against it.
    pub verify: Verify,
    /// The token was proven within `[dialler] credential_check` (a daemon's scheduled
    /// runs): a run with nothing to send makes no call to check it. Otherwise (always for
    /// a manual sync) such a run makes one read-only call, so a revoked token is noticed.
    pub credentials_recent: bool,
    /// What started the run (kept in its history record).
    pub trigger: Trigger,
}

/// What started a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The job's schedule, in the daemon.
    Schedule,
    /// `dialsync sync` (run by the daemon or on its own) or `dialsync verify`.
    #[default]
    Manual,
    /// A reload of the daemon's config that added the job or changed what its runs do.
    Reload,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
            Trigger::Reload => "reload",
        })
    }
}

/// When a run verifies its state against the dialler (`reconcile::verify`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verify {
    /// When the job's `verify_every` has passed since the last verification.
    #[default]
    WhenDue,
    /// In this run, before planning.
    Now,
    /// Only verify (and repair the state): no plan, no other call.
    Only,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    NoSuchJob(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    State(#[from] StateError),
}

impl SyncError {
    pub fn exit(&self) -> Exit {
        match self {
            SyncError::NoSuchJob(_) | SyncError::Token(_) | SyncError::Client(_) => Exit::Config,
            SyncError::State(_) => Exit::Aborted,
        }
    }
}

/// Runs the selected jobs one after the other, opening the state for the run.
pub async fn sync(config: &Config, opts: &SyncOptions) -> Result<Vec<JobReport>, SyncError> {
    let jobs = select_jobs(config, opts.job.as_deref())?;
    // Check the token and client settings before touching the state: a mistake there is
    // a config error (exit 2), not a failed run.
    Dialler::new(&config.dialler, &config.dialler.token.resolve()?)?;
    // A dry run must not create a state database where there is none.
    let store = if opts.mode.dry_run && !config.state.path.exists() {
        None
    } else {
        // The first job's digest is read while the database opens, if its run plans
        // from it first: not a verification alone or first, not after the outcomes
        // (their listing comes before the plan). A verification that turns out due
        // lets go of it (see `reconcile::verify`).
        let ahead = jobs
            .first()
            .filter(|job| opts.mode.verify == Verify::WhenDue && !job.reads_outcomes())
            .and_then(|job| Store::read_digest_ahead(&config.state.path, &job.name));
        match Store::open_sized(&config.state.path, config.state.cache_mb) {
            // This process holds the state alone: entries due to be repacked are left to
            // a compaction after the runs (see `compact_after_runs`).
            Ok(store) => Some(store.with_digest_read_ahead(ahead).compacting_after_runs()),
            // Another process or user: what to do differs, the caller says it.
            Err(e @ (StateError::Locked { .. } | StateError::ForeignOwner { .. })) => {
                return Err(e.into())
            }
            // Every job's report says why (a full disk, a damaged database), so that a
            // script reading `--output json` learns it too.
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "the state database could not be opened");
                let why = Arc::new(Abort::state(Step::OpenState, e));
                return Ok(select_jobs(config, opts.job.as_deref())?
                    .into_iter()
                    .map(|job| JobReport {
                        stopped: Some(Arc::clone(&why)),
                        ..JobReport::begin(&job.name, opts.mode.dry_run)
                    })
                    .collect());
            }
        }
    };
    let against = match &store {
        Some(s) => Against::Store(s),
        None => Against::NothingDryRun,
    };
    let mut reports = sync_with(config, opts, against).await?;
    let stopping = opts.handle.as_ref().is_some_and(|h| h.stop_requested());
    if let (Some(store), false) = (store, stopping) {
        if compact_after_runs(store, config.state.cache_mb, &mut reports).await {
            record_compaction(config, &reports).await;
        }
    }
    Ok(reports)
}

/// Stores again the records of the runs that asked for the compaction, now with its note
/// and time (each replaces the record its run stored), in the state as it was written
/// afresh: one more open of it, a fraction of the compaction's time. If that fails, the
/// records stay as the runs stored them, and the printed report has both.
async fn record_compaction(config: &Config, reports: &[JobReport]) {
    let (path, cache_mb) = (config.state.path.clone(), config.state.cache_mb);
    let opened = tokio::task::spawn_blocking(move || {
        crate::failpoint::fail("record-compaction").map_err(|e| StateError::Open {
            path: path.clone(),
            source: crate::state::DbError::io(e),
        })?;
        Store::open_sized(&path, cache_mb)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let stored = match opened {
        Ok(store) => {
            for report in reports.iter().filter(|r| r.compaction_due) {
                store_record(config, &store, report);
            }
            store.flush().await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = stored {
        tracing::warn!(
            error = %error_chain(&e),
            "could not add the compaction's note to the stored records of the runs"
        );
    }
}

/// After the runs of a manual sync: if one of them left its job's entries due to be
/// repacked (see `state::repack`), writes the whole state afresh (`Store::compact`)
/// instead, in about half the time of a repack of the entries within the database (7.7-9.7 s
/// against 14.9-17.1 s after a million updates), and without the free space the repack leaves
/// in the database's file, which sled writes over at every open (180 MB each time after a
/// million updates). Said in the notes of the reports that asked for it; its time counts
/// in the last one's `repack_ms` and `duration_ms`. If it fails, the state is as it was,
/// and the next run repacks or compacts.
async fn compact_after_runs(store: Store, cache_mb: u64, reports: &mut [JobReport]) -> bool {
    let Some(last) = reports.iter().rposition(|r| r.compaction_due) else {
        return false;
    };
    let started = Instant::now();
    let compacted = tokio::task::spawn_blocking(move || store.compact(cache_mb))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let note = match &compacted {
        Ok(c) => {
            let seconds = format!("{:.1}", c.seconds);
            tracing::info!(
                records = c.records,
                seconds,
                mb_before = c.bytes_before >> 20,
                mb_after = c.bytes_after >> 20,
                "wrote the state afresh (compacted), as runs had rewritten half of a job's entries in place"
            );
            format!(
                "the state was written afresh ({} records in {seconds} s): runs had rewritten \
                 half of the job's entries, which made every open of the state take more memory",
                c.records
            )
        }
        Err(e) => {
            tracing::warn!(error = %error_chain(e), "could not write the state afresh (compact it)");
            format!(
                "the state could not be written afresh ({}); it is as it was, and the next run \
                 tries again (or repacks the job's entries in place)",
                error_chain(e)
            )
        }
    };
    for (i, report) in reports.iter_mut().enumerate() {
        if report.compaction_due {
            report.notes.push(note.clone());
        }
        if i == last {
            *report.repack_ms.get_or_insert(0) += ms;
            report.duration_ms += ms;
        }
    }
    true
}

/// What a run compares with and writes to. Without a state database there is nothing
/// to write to, so that variant can only be a dry run (against an empty state): a real
/// run without a store cannot even be asked for.
#[derive(Clone, Copy)]
pub enum Against<'a> {
    Store(&'a Store),
    /// A dry run where no state database exists yet (it is not created).
    NothingDryRun,
}

impl<'a> Against<'a> {
    fn store(self) -> Option<&'a Store> {
        match self {
            Against::Store(s) => Some(s),
            Against::NothingDryRun => None,
        }
    }
}

/// Runs the selected jobs one after the other on an open state (`None`: a dry run
/// against an empty state). For a process that syncs more than once: sled keeps a closed
/// database locked for a moment, so open it once.
pub async fn sync_with(
    config: &Config,
    opts: &SyncOptions,
    against: Against<'_>,
) -> Result<Vec<JobReport>, SyncError> {
    let jobs = select_jobs(config, opts.job.as_deref())?;
    let handle: Arc<RunHandle> = opts.handle.clone().unwrap_or_default();
    // One set of limits for all the jobs of the tenant.
    let tenant = Tenant::new(&config.dialler);
    let alerts = Alerts::new(&config.alerts);
    let mut reports = Vec::with_capacity(jobs.len());
    for job in jobs {
        reports.push(run_one(config, job, against, opts.mode, &handle, &tenant, &alerts).await);
    }
    // The pings and webhooks still on their way, before the process may exit.
    alerts.settle().await;
    Ok(reports)
}

/// After a run of `job`: makes the state durable (false if it could not), then writes the
/// job's snapshot if it is due (see the `snapshot` module). A run whose state cannot be
/// made durable (a full disk) still reports, as aborted: what it confirmed may be lost,
/// and the in-flight marks make the next run check it again.
async fn settle(config: &Config, store: &Store, job: &str, report: &mut JobReport) -> bool {
    if let Err(e) = store.flush().await {
        let why = Abort::state(Step::Flush, e);
        tracing::error!(job, error = %why.chain(), "the state could not be flushed");
        report.stop(why);
        return false;
    }
    match store.snapshot_if_due(job, config.state.snapshot_every) {
        Ok(true) => tracing::debug!(job, "snapshot written"),
        Ok(false) => {}
        // The older snapshot stays, marked as older than the state.
        Err(e) => {
            tracing::warn!(job, error = %error_chain(&e), "could not write the job's snapshot")
        }
    }
    true
}

/// The jobs a run covers: the named one, or all.
pub fn select_jobs<'c>(
    config: &'c Config,
    job: Option<&str>,
) -> Result<Vec<&'c JobConfig>, SyncError> {
    Ok(match job {
        Some(name) => vec![config.job(name).map_err(SyncError::NoSuchJob)?],
        None => config.jobs.iter().collect(),
    })
}

/// Runs one job with a client of its own (so its call count is its own, whatever else
/// runs beside it) within the limits of `tenant` (which it shares with the jobs running
/// beside it), makes its state durable, then records the finished run: as the job's
/// last run in the state, and in the log. The token is read now, so a rotated token file
/// takes effect; if it cannot be, the report says so.
pub(crate) async fn run_one(
    config: &Config,
    job: &JobConfig,
    against: Against<'_>,
    mode: RunMode,
    handle: &Arc<RunHandle>,
    tenant: &Tenant,
    alerts: &Alerts,
) -> JobReport {
    let store = against.store();
    let mode = RunMode {
        dry_run: mode.dry_run || store.is_none(),
        ..mode
    };
    let dry_run = mode.dry_run;
    let mut report = JobReport::begin(&job.name, dry_run);
    report.verify_only = mode.verify == Verify::Only;
    report.trigger = mode.trigger;
    let span = tracing::info_span!("sync", job = %job.name, run = %report.run_id, dry_run);
    let started = Instant::now();
    handle.begin(&job.name);
    if report.is_sync_run() {
        alerts.started(job);
    }
    let client = match config.dialler.token.resolve() {
        Ok(token) => Dialler::for_tenant(&config.dialler, &token, tenant).map_err(Abort::Client),
        Err(e) => Err(Abort::Token(e)),
    };
    match client {
        Ok(dialler) => {
            // `instrument`, not `span.enter()`: an entered guard held across `.await` would
            // tag whatever else runs on the thread meanwhile.
            run_job(config, job, &dialler, store, mode, handle, &mut report)
                .instrument(span.clone())
                .await;
            // The client is this run's own: its count is the run's.
            report.api_calls = dialler.calls();
            report.token_accepted = dialler.token_accepted();
            report.retries = dialler.retries();
        }
        Err(why) => report.stop(why),
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    if let (Some(store), false) = (store, dry_run) {
        // Stored before the flush, which makes the record durable with the run's state.
        store_record(config, store, &report);
        let flushed = settle(config, store, &job.name, &mut report)
            .instrument(span.clone())
            .await;
        if !flushed {
            // The run now reports the failed flush; so does its stored record.
            store_record(config, store, &report);
        }
    }
    handle.finish();
    if report.is_sync_run() {
        alerts.finished(job, &report);
    }
    let _entered = span.enter(); // no await from here on
    log_record(&report);
    report
}

/// Stores a finished run's report as the job's last run and in its history (a sync
/// run's only), and its row count as the last good one if it was not stopped. A run
/// recorded again (its flush failed) replaces its first record.
fn store_record(config: &Config, store: &Store, report: &JobReport) {
    if !report.is_sync_run() {
        return;
    }
    let json = report.to_json();
    let mut recorded = store.record_run(
        &report.job,
        &json,
        report.changed_anything(),
        config.state.history_runs,
    );
    // An unchanged export (304) read no rows: the last good count stands.
    if report.stopped.is_none() && !report.export_unchanged {
        let rows = report.rows - report.blank;
        recorded = recorded.and_then(|()| store.set_good_rows(&report.job, rows));
    }
    if let Err(e) = recorded {
        tracing::error!(error = %error_chain(&e), "could not record the run");
    }
}

/// The log's summary line of a finished run, from its report alone.
fn log_record(report: &JobReport) {
    let outcome = report.exit();
    let aborted = report.stopped.as_deref().map(Abort::chain);
    let stopped = report.stopped.as_deref().map(Abort::kind);
    tracing::info!(
        %outcome,
        trigger = %report.trigger,
        rows = report.rows,
        new = report.new,
        changed = report.changed,
        blank = report.blank,
        duplicates = report.duplicates,
        warnings = report.warnings,
        imported = report.imported,
        updated = report.updated,
        reset = report.reset,
        locked = report.locked,
        unlocked = report.unlocked,
        deleted = report.deleted,
        unchanged = report.unchanged,
        invalid = report.invalid,
        failed = report.failed,
        api_calls = report.api_calls,
        retries = report.retries,
        recovered = report.recovered,
        rechecked = report.rechecked,
        withheld_removals = report.withheld_removals,
        stale_ids = report.stale_ids,
        already_gone = report.already_gone,
        duration_ms = report.duration_ms,
        plan_ms = report.plan_ms,
        stopped = stopped.unwrap_or(""),
        aborted = aborted.as_deref().unwrap_or(""),
        "sync finished"
    );
}
