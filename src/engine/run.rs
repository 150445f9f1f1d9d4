//! One sync run: for each job, read the export, map and plan against the state (in a
//! blocking thread: it is CPU and file work), then execute the plan and report.
//!
//! A job's run never returns an error: whatever stops it is recorded in its report
//! (`aborted`), and the other jobs still run. Only what prevents any job from running
//! (no token, no state database) is an error of the whole sync.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use crate::config::{Config, JobConfig, TokenError};
use crate::dialler::{ClientError, Dialler};
use crate::engine::evidence;
use crate::engine::execute::{execute, Target};
use crate::engine::guard::{self, Facts, Tripped};
use crate::engine::mapping::Mapper;
use crate::engine::outcome::{error_chain, Abort, Exit, Step};
use crate::engine::pipeline::{self, PlanError};
use crate::engine::plan::{Plan, Planner, Policy, RemovalKind};
use crate::engine::progress::RunHandle;
use crate::engine::reconcile::{self, resolve_pending, ReconcileError};
use crate::engine::report::{JobReport, PreviewLine, LIST_LIMIT};
use crate::source::{self, SourceError};
use crate::state::hashing::HashKey;
use crate::state::{Entry, GuardTrip, JobState, StateError, StateView, Store, Verified};

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// Only this job (all jobs when `None`).
    pub job: Option<String>,
    /// Plan and report, but send no write and store nothing.
    pub dry_run: bool,
    /// Run even if a guard trips (an empty or truncated export, too many removals or
    /// resets).
    pub force: bool,
    /// When to read the campaign back and check the state against it.
    pub verify: Verify,
    /// Progress counters to update and the stop request to obey (a fresh one when `None`).
    pub handle: Option<Arc<RunHandle>>,
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
    select_jobs(config, opts.job.as_deref())?;
    // Check the token and client settings before touching the state: a mistake there is
    // a config error (exit 2), not a failed run.
    Dialler::new(&config.dialler, &config.dialler.token.resolve()?)?;
    // A dry run must not create a state database where there is none.
    let store = if opts.dry_run && !config.state.path.exists() {
        None
    } else {
        match Store::open(&config.state.path) {
            Ok(store) => Some(store),
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
                        ..JobReport::begin(&job.name, opts.dry_run)
                    })
                    .collect());
            }
        }
    };
    let against = match &store {
        Some(s) => Against::Store(s),
        None => Against::NothingDryRun,
    };
    sync_with(config, opts, against).await
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

/// How a job runs: for real or as a dry run, whether its guards apply, and when it
/// verifies its state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mode {
    pub dry_run: bool,
    pub force: bool,
    pub verify: Verify,
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
    let mut reports = Vec::with_capacity(jobs.len());
    for job in jobs {
        let mode = Mode {
            dry_run: opts.dry_run,
            force: opts.force,
            verify: opts.verify,
        };
        reports.push(run_one(config, job, against, mode, &handle).await);
    }
    Ok(reports)
}

/// After a run of `job`: makes the state durable, then writes the job's snapshot if it
/// is due (see [`crate::state::snapshot`]). A run whose state cannot be made durable (a full
/// disk) still reports, as aborted: what it confirmed may be lost, and the in-flight
/// marks make the next run check it again.
async fn settle(config: &Config, store: &Store, job: &str, report: &mut JobReport) {
    if let Err(e) = store.flush().await {
        let why = Abort::state(Step::Flush, e);
        tracing::error!(job, error = %why.chain(), "the state could not be flushed");
        report.stop(why);
        return;
    }
    match store.snapshot_if_due(job, config.state.snapshot_every) {
        Ok(true) => tracing::debug!(job, "snapshot written"),
        Ok(false) => {}
        // The older snapshot stays, marked as older than the state.
        Err(e) => {
            tracing::warn!(job, error = %error_chain(&e), "could not write the job's snapshot")
        }
    }
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
/// runs beside it), makes its state durable, then records the finished run: as the job's
/// last run in the state, and in the log. The token is read now, so a rotated token file
/// takes effect; if it cannot be, the report says so.
pub async fn run_one(
    config: &Config,
    job: &JobConfig,
    against: Against<'_>,
    mode: Mode,
    handle: &Arc<RunHandle>,
) -> JobReport {
    let store = against.store();
    let mode = Mode {
        dry_run: mode.dry_run || store.is_none(),
        ..mode
    };
    let dry_run = mode.dry_run;
    let mut report = JobReport::begin(&job.name, dry_run);
    report.verify_only = mode.verify == Verify::Only;
    let span = tracing::info_span!("sync", job = %job.name, run = %report.run_id, dry_run);
    let started = Instant::now();
    handle.begin(&job.name);
    let client = match config.dialler.token.resolve() {
        Ok(token) => Dialler::new(&config.dialler, &token).map_err(Abort::Client),
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
            report.retries = dialler.retries();
        }
        Err(why) => report.stop(why),
    }
    if let (Some(store), false) = (store, dry_run) {
        settle(config, store, &job.name, &mut report)
            .instrument(span.clone())
            .await;
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    handle.finish();
    let _entered = span.enter(); // no await from here on
    record(store, &report);
    report
}

/// Records a finished run, from its report alone: as the job's last run in the state
/// (not for a dry run or a verification) and as the log's summary line.
fn record(store: Option<&Store>, report: &JobReport) {
    if let (Some(store), false, false) = (store, report.dry_run, report.verify_only) {
        let mut recorded = store.put_last_run(&report.job, &report.to_json());
        if report.stopped.is_none() {
            recorded = recorded.and_then(|()| store.set_good_rows(&report.job, report.rows));
        }
        if let Err(e) = recorded {
            tracing::error!(error = %error_chain(&e), "could not record the run");
        }
    }
    let outcome = report.exit();
    let aborted = report.stopped.as_deref().map(Abort::chain);
    let stopped = report.stopped.as_deref().map(Abort::kind);
    tracing::info!(
        %outcome,
        rows = report.rows,
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

/// Reads the export and plans it against `state` (empty when `None`).
fn read_and_plan(
    job: &JobConfig,
    state: Option<&JobState>,
    handle: &RunHandle,
) -> Result<Plan, PlanError> {
    // A dry run without a state compares with nothing: any key will do.
    let key = match state {
        Some(s) => Arc::clone(s.hash_key()),
        None => Arc::new(HashKey::generate().map_err(|source| StateError::Key {
            path: "/dev/urandom".into(),
            source,
        })?),
    };
    let mapper = Mapper::new(job, key);
    let empty: BTreeMap<String, Entry> = BTreeMap::new();
    let view: &(dyn StateView + Sync) = match state {
        Some(s) => s,
        None => &empty,
    };
    let policy = Policy {
        on_missing: job.on_missing,
    };
    let digest = state.map(JobState::digest).transpose()?.flatten();
    let in_flight = state
        .map(JobState::in_flight)
        .transpose()?
        .unwrap_or_default();
    let planner = match &digest {
        Some(d) => Planner::with_digest(view, policy, d),
        None => Planner::new(view, policy),
    }
    .in_flight(in_flight);
    let file = source::open(&job.source)?;
    // The same file (not the path, which the CRM may have replaced meanwhile) is read
    // again for the evidence behind each removal.
    let again = file.try_clone().map_err(|source| SourceError::Read {
        path: job.source.path.clone(),
        source,
    })?;
    let mut plan =
        pipeline::read_and_plan(&job.source, file, &job.columns(), &mapper, planner, handle)?;
    evidence::require(&job.source, again, &mut plan)?;
    Ok(plan)
}

/// Reads, plans and executes one job; every outcome, including an early stop, ends up
/// in `report`. Then stores the state's digest for the next run.
async fn run_job(
    config: &Config,
    job: &JobConfig,
    dialler: &Dialler,
    store: Option<&Store>,
    mode: Mode,
    handle: &Arc<RunHandle>,
    report: &mut JobReport,
) {
    let state = match store.map(|s| s.job(&job.name)).transpose() {
        Ok(s) => s,
        Err(e) => {
            report.stop(Abort::state(Step::ReadState, e));
            return;
        }
    };
    plan_and_execute(
        config,
        job,
        dialler,
        store,
        state.as_ref(),
        mode,
        handle,
        report,
    )
    .await;
    if let (Some(state), false) = (&state, mode.dry_run) {
        if let Err(e) = state.save_digest().await {
            // Only the next run's speed depends on it.
            tracing::warn!(error = %error_chain(&e), "could not store the state digest");
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn plan_and_execute(
    config: &Config,
    job: &JobConfig,
    dialler: &Dialler,
    store: Option<&Store>,
    state: Option<&JobState>,
    mode: Mode,
    handle: &Arc<RunHandle>,
    report: &mut JobReport,
) {
    let dry_run = mode.dry_run;

    let last_good_rows = match store.map(|s| s.good_rows(&job.name)).transpose() {
        Ok(n) => n.flatten(),
        Err(e) => {
            report.stop(Abort::state(Step::ReadState, e));
            return;
        }
    };
    // Imports an earlier run sent without storing their result: settle them first, or
    // the plan would import them again. (A dry run only reads, and plans them as imports.)
    if let (Some(state), false) = (state, dry_run) {
        match resolve_pending(dialler, job, state).await {
            Ok(r) => {
                report.recovered = r.found;
                if r.found + r.absent > 0 {
                    tracing::info!(
                        found = r.found,
                        not_sent = r.absent,
                        "resolved the imports an interrupted run left pending"
                    );
                }
            }
            Err(e) => {
                report.stop(Abort::reconcile(Step::Settle, e));
                return;
            }
        }
    }
    if let (Some(state), Some(store), false) = (state, store, dry_run) {
        if let Err(stop) = verify_if_due(dialler, job, store, state, mode, report).await {
            report.stop(stop);
            return;
        }
    }
    if mode.verify == Verify::Only {
        return;
    }
    let planning = Instant::now();
    let planned = {
        let job = job.clone();
        let state = state.cloned();
        let handle = Arc::clone(handle);
        tokio::task::spawn_blocking(move || read_and_plan(&job, state.as_ref(), &handle)).await
    };
    report.plan_ms = planning.elapsed().as_millis() as u64;
    let plan = match planned {
        Ok(Ok(plan)) => plan,
        Ok(Err(e)) => {
            let why = Abort::plan(e);
            if let Abort::Export(_) = why {
                tracing::error!(error = %why.chain(), "the export could not be used; nothing was changed");
            }
            report.stop(why);
            return;
        }
        Err(e) => {
            report.stop(Abort::Crashed(format!("reading the export: {e}")));
            return;
        }
    };

    report.rows = plan.rows;
    report.rechecked = plan.rechecked;
    if plan.rechecked > 0 {
        tracing::info!(
            contacts = plan.rechecked,
            "an earlier run stopped with calls in flight; those contacts are sent what the export says"
        );
    }
    report.invalid = plan.rejected.len() as u64;
    report.unchanged = plan.unchanged;
    report.unchanged_by_hash = plan.unchanged_by_hash;
    report.withheld_removals = plan.withheld_removals;
    report.withheld = plan.doubts.clone();
    report.problems = plan.rejected.iter().take(LIST_LIMIT).cloned().collect();
    for r in plan.rejected.iter().take(20) {
        tracing::warn!(row = r.at.row, user_data = r.key.as_deref().unwrap_or(""), reason = %r.reason, "row skipped");
    }
    if plan.withheld_removals > 0 {
        let d = &plan.doubts;
        tracing::warn!(
            withheld = plan.withheld_removals,
            unreadable_rows = d.unreadable_rows,
            rows_without_key = d.rows_without_key,
            keys_in_export = d.keys_in_export.len(),
            "locks and deletes held back: no proof that their records left the export"
        );
    }

    let facts = Facts {
        rows: plan.rows,
        valid: plan.rows - plan.rejected.len() as u64,
        known: plan.known,
        last_good_rows,
        removals: plan.removals.len() as u64,
        resets: plan.resets() as u64,
    };
    let tripped = guard::check(&job.name, &job.guards, &facts).err();
    match &tripped {
        Some(why) if mode.force => {
            tracing::warn!(guard = %why, "guard overridden by --force");
            report.forced = Some(why.to_string());
        }
        Some(why) if dry_run => tracing::warn!(guard = %why, "a guard would stop this run"),
        _ => {}
    }
    if let (Some(store), false) = (store, dry_run) {
        let stopping = tripped
            .as_ref()
            .filter(|_| !mode.force)
            .map(Tripped::to_string);
        if let Err(e) = note_guard(store, &job.name, stopping.as_deref(), &report.started_at) {
            tracing::warn!(error = %error_chain(&e), "could not record the guard's state");
        }
    }
    let stop = tripped.filter(|_| !mode.force);

    if dry_run {
        if let Some(why) = stop {
            report.stop(Abort::Guard(why));
        }
        report.imported = plan.imports.len() as u64;
        report.updated = plan.updates() as u64;
        report.reset = plan.resets() as u64;
        report.unlocked = plan.unlocks() as u64;
        report.locked = plan.removals(RemovalKind::Lock) as u64;
        report.deleted = plan.removals(RemovalKind::Delete) as u64;
        report.preview = preview(&plan);
        return;
    }

    if let Some(why) = stop {
        report.stop(Abort::Guard(why));
        return;
    }
    // Not a dry run, so `run_one` had a store (see `Against`), and `run_job` its state.
    let (Some(store), Some(state)) = (store, state) else {
        report.stop(Abort::Crashed(
            "a run that is not a dry run has no state database; nothing was sent".into(),
        ));
        return;
    };
    let look_first = match store.imports_unsure(&job.name) {
        Ok(unsure) => unsure,
        Err(e) => {
            report.stop(Abort::state(Step::ReadState, e));
            return;
        }
    };
    let target = Target {
        dialler,
        state,
        job,
        concurrency: config.dialler.max_concurrency,
        look_first,
    };
    execute(plan, target, handle, report).await;
    if let (true, None) = (look_first, &report.stopped) {
        if let Err(e) = store.clear_imports_unsure(&job.name) {
            tracing::warn!(error = %error_chain(&e), "could not record that the imports are settled");
        }
    }
}

/// Reads the campaign back and checks the state against it, when `mode` asks for it or
/// the job's `verify_every` has passed (an empty state has nothing to check: the clock
/// starts). What it found and fixed goes into `report`; a dialler that no longer knows
/// most IDs stops the run like a guard (`--force` goes on).
async fn verify_if_due(
    dialler: &Dialler,
    job: &JobConfig,
    store: &Store,
    state: &JobState,
    mode: Mode,
    report: &mut JobReport,
) -> Result<(), Abort> {
    let state_failed = |e| Abort::state(Step::Verify, e);
    let last = store.verification(&job.name).map_err(state_failed)?;
    let now = chrono::Utc::now();
    let due = match (mode.verify, &last) {
        (Verify::Now | Verify::Only, _) => true,
        (Verify::WhenDue, None) => true,
        (Verify::WhenDue, Some(v)) => {
            chrono::DateTime::parse_from_rfc3339(&v.at).map_or(true, |at| {
                (now - at.with_timezone(&chrono::Utc))
                    .to_std()
                    .map_or(true, |age| age >= job.verify_every)
            })
        }
    };
    if !due {
        return Ok(());
    }
    if state.is_empty() {
        let started = Verified {
            at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ..Verified::default()
        };
        return store
            .set_verification(&job.name, &started)
            .map_err(state_failed);
    }
    match reconcile::verify(dialler, job, state, mode.force).await {
        Ok(v) => {
            if v.relearned + v.missing + v.values_differ > 0 {
                tracing::warn!(
                    checked = v.checked,
                    relearned = v.relearned,
                    missing = v.missing,
                    values_differ = v.values_differ,
                    "the dialler did not hold what the state says: repaired, and sent what is missing"
                );
            } else {
                tracing::info!(checked = v.checked, "state verified against the dialler");
            }
            store
                .set_verification(&job.name, &v)
                .map_err(state_failed)?;
            report.verified = Some(v);
            Ok(())
        }
        Err(e) => {
            if let ReconcileError::DiallerReset(_) = e {
                tracing::error!(error = %e, "the dialler does not know the state's contacts");
            }
            Err(Abort::reconcile(Step::Verify, e))
        }
    }
}

/// Records whether a guard stops `job` now (`tripped`) and logs the change: an ERROR when
/// a guard starts to stop its runs, INFO while it goes on (a frequent schedule would
/// otherwise raise the same alarm every few minutes) and when it stops.
fn note_guard(
    store: &Store,
    job: &str,
    tripped: Option<&str>,
    now: &str,
) -> Result<(), StateError> {
    let before = store.guard_trip(job)?;
    match (tripped, &before) {
        (Some(why), None) => {
            tracing::error!(guard = %why, "guard tripped: runs of this job change nothing until it is resolved");
            store.set_guard_trip(
                job,
                Some(&GuardTrip {
                    since: now.to_string(),
                    guard: why.to_string(),
                }),
            )
        }
        (Some(why), Some(trip)) => {
            tracing::info!(guard = %why, since = %trip.since, "guard still tripped");
            store.set_guard_trip(
                job,
                Some(&GuardTrip {
                    since: trip.since.clone(),
                    guard: why.to_string(),
                }),
            )
        }
        (None, Some(trip)) => {
            tracing::info!(since = %trip.since, "the guard no longer stops this job's runs");
            store.set_guard_trip(job, None)
        }
        (None, None) => Ok(()),
    }
}

/// The planned operations, in the order a dry run lists them.
fn preview(plan: &Plan) -> Vec<PreviewLine> {
    let mut out = Vec::new();
    for c in &plan.imports {
        out.push(PreviewLine {
            operation: "import",
            user_data: c.key.clone(),
            fields: Vec::new(),
            row: Some(c.at.row),
        });
    }
    for c in &plan.changes {
        let row = Some(c.at.row);
        if !c.update.is_empty() {
            out.push(PreviewLine {
                operation: "update",
                user_data: c.key.clone(),
                fields: c.update.iter().map(|(f, _)| f.name).collect(),
                row,
            });
        }
        if c.reset {
            out.push(PreviewLine {
                operation: "reset",
                user_data: c.key.clone(),
                fields: Vec::new(),
                row,
            });
        }
        if c.unlock {
            out.push(PreviewLine {
                operation: "unlock",
                user_data: c.key.clone(),
                fields: Vec::new(),
                row,
            });
        }
    }
    for r in &plan.removals {
        out.push(PreviewLine {
            operation: match r.kind {
                RemovalKind::Lock => "lock",
                RemovalKind::Delete => "delete",
            },
            user_data: r.key.clone(),
            fields: Vec::new(),
            row: None,
        });
    }
    out.truncate(LIST_LIMIT * 5);
    out
}
