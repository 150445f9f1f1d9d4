//! One sync run: for each job, read the export, map and plan against the state (in a
//! blocking thread: it is CPU and file work), then execute the plan and report.
//!
//! A job's run never returns an error: whatever stops it is recorded in its report
//! (`aborted`), and the other jobs still run. Only what prevents any job from running
//! (no token, no state database) is an error of the whole sync.

use std::collections::BTreeMap;
use std::time::Instant;

use tracing::Instrument;

use crate::config::{CampaignRef, Config, JobConfig, TokenError};
use crate::dialler::{ClientError, Dialler};
use crate::execute::{error_chain, execute};
use crate::mapping::Mapper;
use crate::plan::{Plan, Planner, Policy, RemovalKind};
use crate::report::{Exit, JobReport, PreviewLine, LIST_LIMIT};
use crate::source::{self, SourceError};
use crate::state::{Entry, JobState, StateError, StateView, Store};

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// Only this job (all jobs when `None`).
    pub job: Option<String>,
    /// Plan and report, but send no write and store nothing.
    pub dry_run: bool,
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

/// Runs the selected jobs one after the other.
pub async fn sync(config: &Config, opts: &SyncOptions) -> Result<Vec<JobReport>, SyncError> {
    let jobs: Vec<&JobConfig> = match &opts.job {
        Some(name) => vec![config.job(name).map_err(SyncError::NoSuchJob)?],
        None => config.jobs.iter().collect(),
    };
    let token = config.dialler.token.resolve()?;
    let dialler = Dialler::new(&config.dialler, &token)?;
    // A dry run must not create a state database where there is none.
    let store = if opts.dry_run && !config.state.path.exists() {
        None
    } else {
        Some(Store::open(&config.state.path)?)
    };
    let mut reports = Vec::with_capacity(jobs.len());
    for job in jobs {
        reports.push(run_job(config, job, &dialler, store.as_ref(), opts.dry_run).await);
    }
    if let Some(store) = &store {
        store.flush().await?;
    }
    Ok(reports)
}

/// Why reading and planning stopped.
#[derive(Debug, thiserror::Error)]
enum PlanError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Reads the export and plans it against `state` (empty when `None`).
fn read_and_plan(job: &JobConfig, state: Option<&JobState>) -> Result<Plan, PlanError> {
    let mapper = Mapper::new(job);
    let empty: BTreeMap<String, Entry> = BTreeMap::new();
    let view: &dyn StateView = match state {
        Some(s) => s,
        None => &empty,
    };
    let mut planner = Planner::new(
        view,
        Policy {
            on_missing: job.on_missing,
        },
    );
    let mut failed: Option<StateError> = None;
    source::read(&job.source, &job.columns(), &mut |item| {
        if failed.is_none() {
            if let Err(e) = planner.push(mapper.map(item)) {
                failed = Some(e);
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    Ok(planner.finish()?)
}

/// Runs one job; every outcome, including an early stop, ends up in the report. Its
/// log events carry a `sync` span with the job name.
pub async fn run_job(
    config: &Config,
    job: &JobConfig,
    dialler: &Dialler,
    store: Option<&Store>,
    dry_run: bool,
) -> JobReport {
    // `instrument`, not `span.enter()`: an entered guard held across `.await` would tag
    // whatever else runs on the thread meanwhile.
    let span = tracing::info_span!("sync", job = %job.name, dry_run);
    run_job_in_span(config, job, dialler, store, dry_run)
        .instrument(span)
        .await
}

async fn run_job_in_span(
    config: &Config,
    job: &JobConfig,
    dialler: &Dialler,
    store: Option<&Store>,
    dry_run: bool,
) -> JobReport {
    let started = Instant::now();
    let calls_before = dialler.calls();
    let mut report = JobReport {
        job: job.name.clone(),
        dry_run,
        ..JobReport::default()
    };

    let state = match store.map(|s| s.job(&job.name)).transpose() {
        Ok(s) => s,
        Err(e) => {
            report.aborted = Some(error_chain(&e));
            return report;
        }
    };
    let planned = {
        let job = job.clone();
        let state = state.clone();
        tokio::task::spawn_blocking(move || read_and_plan(&job, state.as_ref())).await
    };
    let plan = match planned {
        Ok(Ok(plan)) => plan,
        Ok(Err(e)) => {
            tracing::error!(error = %error_chain(&e), "the export could not be used; nothing was changed");
            report.aborted = Some(error_chain(&e));
            return report;
        }
        Err(e) => {
            report.aborted = Some(format!("reading the export failed unexpectedly: {e}"));
            return report;
        }
    };

    report.rows = plan.rows;
    report.invalid = plan.rejected.len() as u64;
    report.unchanged = plan.unchanged;
    report.withheld_removals = plan.withheld_removals;
    report.problems = plan.rejected.iter().take(LIST_LIMIT).cloned().collect();
    for r in plan.rejected.iter().take(20) {
        tracing::warn!(row = r.at.row, user_data = r.key.as_deref().unwrap_or(""), reason = %r.reason, "row skipped");
    }
    if plan.withheld_removals > 0 {
        tracing::warn!(
            withheld = plan.withheld_removals,
            "locks and deletes held back because some rows could not be read"
        );
    }

    if dry_run {
        report.imported = plan.imports.len() as u64;
        report.updated = plan.updates() as u64;
        report.reset = plan.resets() as u64;
        report.unlocked = plan.unlocks() as u64;
        report.locked = plan.removals(RemovalKind::Lock) as u64;
        report.deleted = plan.removals(RemovalKind::Delete) as u64;
        report.preview = preview(&plan);
        report.duration_ms = started.elapsed().as_millis() as u64;
        return report;
    }

    // Only imports name the campaign: no look-up (and no call) for a plan without any.
    let campaign_id = match (&job.campaign, plan.imports.is_empty()) {
        (_, true) => Ok(None),
        (CampaignRef::Id(id), false) => Ok(Some(*id)),
        (CampaignRef::Name(name), false) => dialler.resolve_campaign(name).await.map(Some),
    };
    match campaign_id {
        Ok(campaign_id) => {
            let state = state
                .as_ref()
                .expect("a run that is not a dry run has a state");
            execute(
                plan,
                dialler,
                state,
                job,
                campaign_id,
                config.dialler.max_concurrency,
                &mut report,
            )
            .await;
        }
        Err(e) => {
            report.unauthorized = matches!(e, crate::dialler::DiallerError::Unauthorized { .. });
            report.aborted = Some(error_chain(&e));
        }
    }
    report.api_calls = dialler.calls() - calls_before;
    report.duration_ms = started.elapsed().as_millis() as u64;
    if let Some(store) = store {
        let summary = serde_json::to_vec(&report).expect("reports serialize");
        if let Err(e) = store.put_last_run(&job.name, &summary) {
            tracing::error!(error = %error_chain(&e), "could not record the run");
        }
    }
    tracing::info!(
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
        duration_ms = report.duration_ms,
        aborted = report.aborted.is_some(),
        "sync finished"
    );
    report
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
