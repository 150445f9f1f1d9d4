//! One job's run, stage by stage: settle the imports an interrupted run left pending,
//! verify the state when due, read and plan the export (on a blocking thread), check
//! the guards, execute. Whatever stops it goes into the report.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::config::SourceKind;
use crate::config::{CampaignRef, Config, JobConfig};
use crate::dialler::{Dialler, DiallerError};
use crate::engine::evidence;
use crate::engine::execute::{campaign_id, execute, Target};
use crate::engine::guard::{self, Facts, Tripped};
use crate::engine::mapping::Mapper;
use crate::engine::outcome::{error_chain, Abort, Step};
use crate::engine::pipeline::{self, PlanError};
use crate::engine::plan::{Plan, Planner, Policy, RemovalKind};
use crate::engine::planners;
use crate::engine::progress::RunHandle;
use crate::engine::reconcile::{self, resolve_pending, ReconcileError};
use crate::engine::report::Fetch;
use crate::engine::report::{JobReport, LIST_LIMIT};
use crate::engine::run::{RunMode, Verify};
use crate::outcomes::{self, Delivers, Keep, OutcomesReport, PrepareError, Reading};
use crate::source::http::{self, Download, Fetched, Validators};
use crate::source::{self, FileSeen, Hashed, Pages, SourceError};
use crate::state::hashing::HashKey;
use crate::state::{blocking, Entry, JobState, StateError, StateView, Store, Verified};

/// Reads the export and plans it against `state` (empty when `None`); with an export
/// file, what was read of it.
pub(super) fn read_and_plan(
    job: &JobConfig,
    state: Option<&JobState>,
    users: Option<Arc<HashSet<String>>>,
    handle: &RunHandle,
    download: Option<&Download>,
    spool_dir: &Path,
    finals: Option<Finals>,
) -> Result<(Plan, Option<FileSeen>), PlanError> {
    // A dry run without a state compares with nothing: any key will do.
    let key = match state {
        Some(s) => Arc::clone(s.hash_key()),
        None => Arc::new(HashKey::generate().map_err(|source| StateError::Key {
            path: "/dev/urandom".into(),
            source,
        })?),
    };
    let export_hash = key.export();
    let mut mapper = Mapper::new(job, key);
    if let Some(users) = users {
        mapper = mapper.with_users(users);
    }
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
    let mut planner = match &digest {
        Some(d) => Planner::with_digest(view, policy, d),
        None => Planner::new(view, policy),
    }
    .in_flight(in_flight)
    .spool_in(Arc::from(spool_dir));
    if let Some((to_lock, final_locked)) = finals {
        planner = planner.on_done(to_lock, final_locked);
    }
    let no_pages = Pages::default();
    if job.source.kind == crate::config::SourceKind::Sql {
        // The rows of a query: no text to read again for evidence (see evidence.rs); the
        // whole result read without error is the evidence.
        let columns = job.columns();
        let mut plan = pipeline::plan_rows(
            |sink| source::sql::read(&job.source, &columns, source::sql::Read::Rows, sink),
            &no_pages,
            &columns,
            &mapper,
            planner,
            handle,
        )?;
        plan.lock_done()?;
        return Ok((plan, None));
    }
    let (cfg, file, pages) = match download {
        Some(d) => {
            let file = d
                .file
                .as_file()
                .try_clone()
                .map_err(|source| SourceError::Read {
                    path: job.source.path.clone(),
                    source,
                })?;
            (&d.read_as, file, &d.pages)
        }
        None => (&job.source, source::open(&job.source)?, &no_pages),
    };
    // The same file (not the path, which the CRM may have replaced meanwhile) is read
    // again for the evidence behind each removal.
    let again = file.try_clone().map_err(|source| SourceError::Read {
        path: job.source.path.clone(),
        source,
    })?;
    // An export file's bytes are hashed as they are read: the next run that finds the
    // same bytes need not read them (see `Conditional`). A download has its validators.
    let mut file = Hashed::new(file, download.is_none().then_some(export_hash));
    let mut plan = pipeline::read_and_plan(
        cfg,
        &mut file,
        pages,
        &job.columns(),
        &mapper,
        planner,
        handle,
    )?;
    evidence::require(cfg, again, &mut plan)?;
    plan.lock_done()?;
    Ok((plan, file.seen()))
}

/// What the last clean run (no stop, no failed operation) read of the export: the
/// validators an HTTP export came with (for a conditional request: has it changed
/// since?), or an export file's length and hash; and the state as that run left it
/// (`fingerprint`). Only an export unchanged since, with the state unchanged since, makes
/// an unchanged plan: any write to the state (a verification's repair, a `state
/// rebuild`, a settled import), or another config, changes the fingerprint, and calls an
/// interrupted run left in flight are planned first (see `left_in_flight`).
#[derive(serde::Serialize, serde::Deserialize)]
struct Conditional {
    fingerprint: u64,
    #[serde(flatten)]
    validators: Validators,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<FileSeen>,
}

/// What the state and the config of `job` are now, as one number (`None`: the state has
/// no sealed digest, so no fingerprint).
fn fingerprint(job: &JobConfig, state: &JobState) -> Result<Option<u64>, StateError> {
    let Some(entries) = state.identity()? else {
        return Ok(None);
    };
    let what = JobConfig {
        schedule: None,
        timezone: chrono_tz::UTC,
        ping_url: None,
        ..job.clone()
    };
    let config = xxhash_rust::xxh3::xxh3_64(format!("{what:?}").as_bytes());
    Ok(Some(config ^ entries.rotate_left(1)))
}

/// Whether an interrupted run left calls in flight or imports pending in `state`. Until
/// a run has planned them, an export as the last clean run read it does not make an
/// unchanged plan: a killed run may have changed the dialler, and the export reverted.
fn left_in_flight(state: &JobState) -> Result<bool, StateError> {
    state.left_in_doubt()
}

/// What the last clean run read of the export, if the state is still as it left it.
fn conditional(
    store: &Store,
    job: &JobConfig,
    state: &JobState,
) -> Result<Option<Conditional>, StateError> {
    let Some(bytes) = store.conditional(&job.name)? else {
        return Ok(None);
    };
    let Ok(stored) = serde_json::from_slice::<Conditional>(&bytes) else {
        return Ok(None);
    };
    Ok((fingerprint(job, state)? == Some(stored.fingerprint)).then_some(stored))
}

/// After a run: keeps what a clean run read of the export (the validators of a download;
/// the length and hash of a file, if the run had nothing to do or report), forgets it
/// after any other run that read the export.
fn remember(
    store: &Store,
    job: &JobConfig,
    state: &JobState,
    report: &JobReport,
) -> Result<(), StateError> {
    let clean = report.stopped.is_none() && report.failed == 0;
    let read = match &report.fetch {
        Fetch::Nothing => return Ok(()),
        Fetch::Downloaded(Some(v)) if clean => Some((v.clone(), None)),
        // Only a run that found nothing to do or report: the run it spares would say the same.
        Fetch::Read(seen) if clean && report.quiet_no_op() => {
            Some((Validators::default(), Some(seen.clone())))
        }
        Fetch::Downloaded(_) | Fetch::Read(_) => None,
    };
    let record = match read {
        Some((validators, file)) => fingerprint(job, state)?.map(|fingerprint| {
            serde_json::to_vec(&Conditional {
                fingerprint,
                validators,
                file,
            })
            .expect("serializes")
        }),
        None => None,
    };
    store.set_conditional(&job.name, record.as_deref())
}

/// Downloads the export of `job` (an HTTP source) into `dir` (the downloads folder
/// beside the state), and what the report says of it.
async fn fetch(
    dir: &Path,
    job: &JobConfig,
    conditional: Option<&Validators>,
    handle: &RunHandle,
) -> Result<(Fetched, String), SourceError> {
    let started = Instant::now();
    let stop = || handle.stop_requested();
    let fetched = http::download(
        &job.source,
        http::Request {
            dir,
            conditional,
            sample: false,
            stop: &stop,
        },
    )
    .await?;
    let note = match &fetched {
        Fetched::Export(d) => d.note(&job.source.path.display().to_string(), started.elapsed()),
        Fetched::Unchanged => String::new(),
    };
    Ok((fetched, note))
}

/// `<state>.downloads`, private to the service (made if missing), or the system's
/// temporary folder if it cannot be made (a dry run by another user). What a killed run
/// left there is removed: a download in progress is read through its open file, never by
/// its name, so removing the name of another run's file takes nothing from it.
pub(crate) fn downloads_dir(config: &Config) -> std::path::PathBuf {
    let dir = crate::state::downloads_path(&config.state.path);
    let made = crate::state::private_dir(&dir);
    match made {
        Ok(()) if tempfile::tempfile_in(&dir).is_ok() => {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".dialsync-")
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
            dir
        }
        _ => {
            tracing::debug!(dir = %dir.display(), "cannot write there; the download goes to the temporary folder");
            std::env::temp_dir()
        }
    }
}

/// Reads, plans and executes one job; every outcome, including an early stop, ends up
/// in `report`. Then stores the state's digest for the next run.
pub(super) async fn run_job(
    config: &Config,
    job: &JobConfig,
    dialler: &Dialler,
    store: Option<&Store>,
    mode: RunMode,
    handle: &Arc<RunHandle>,
    report: &mut JobReport,
) {
    let _trimming = crate::trim::while_running();
    let state = match store.map(|s| s.job(&job.name)).transpose() {
        Ok(s) => s,
        Err(e) => {
            report.stop(Abort::state(Step::ReadState, e));
            return;
        }
    };
    if let Some(s) = state.clone() {
        // A repack that stopped halfway in this process (see `state::repack`) is finished
        // before anything reads the entries; only the job's own run does so.
        if let Err(e) = blocking(move || s.finish_repacks()).await {
            report.stop(Abort::state(Step::ReadState, e));
            return;
        }
    }
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
        repack(state, report).await;
        if let Some(store) = store {
            if let Err(e) = remember(store, job, state, report) {
                tracing::warn!(error = %error_chain(&e), "could not store the export's validators (the next run downloads it whole)");
            }
        }
        // From the digest just stored (or counted, without one).
        report.contacts = Some(state.len() as u64);
    }
}

/// Repacks the job's trees that runs rewrote in place (see `state::repack`): seconds for a
/// million values, after which opening the state costs what a fresh one does. Said in the
/// report's notes, since the run takes that much longer. Entries due may be left to the
/// compaction after a manual sync's runs instead (see `Store::compacting_after_runs`).
async fn repack(state: &JobState, report: &mut JobReport) {
    let s = state.clone();
    match blocking(move || s.repack_or_leave_worn()).await {
        Ok(done) => {
            if let Some(values) = done.entries_left {
                tracing::debug!(
                    values,
                    "the job's entries are due to be repacked: left to the compaction of the state after the runs"
                );
                report.compaction_due = true;
            }
            for r in done.repacked {
                let tree = r.tree.label();
                let seconds = format!("{:.1}", r.took.as_secs_f64());
                let ms = u64::try_from(r.took.as_millis()).unwrap_or(u64::MAX);
                *report.repack_ms.get_or_insert(0) += ms;
                tracing::info!(
                    values = r.values,
                    seconds,
                    "repacked the job's {tree} in the state (rewritten in place, they made every \
                     open of the state load more page records)"
                );
                report.notes.push(format!(
                    "the state's {tree} were repacked ({} in {seconds} s): runs had rewritten \
                     half of them, which made every open of the state take more memory",
                    r.values
                ));
            }
        }
        // The state is as it was, or the repack is finished before the job's next run
        // reads it: only the next runs' memory depends on it.
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "could not repack the state");
            report.notes.push(format!(
                "the state could not be repacked ({}); the next run tries again, or finishes it",
                error_chain(&e)
            ));
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
    mode: RunMode,
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
    // What an interrupted run left (calls in flight, imports pending): the dialler may
    // hold what no clean run confirmed, so this run plans the export whatever its
    // validators say (see `conditional`).
    let interrupted = match state.filter(|_| job.source.kind != SourceKind::Sql) {
        Some(state) => match left_in_flight(state) {
            Ok(left) => left,
            Err(e) => {
                report.stop(Abort::state(Step::ReadState, e));
                return;
            }
        },
        None => false,
    };
    // Imports an earlier run sent without storing their result: settle them first, or
    // the plan would import them again. (A dry run only reads, and plans them as imports.)
    if let (Some(state), false) = (state, dry_run) {
        // The journal's windows a stopped run left: per contact first, so that what
        // settles a contact's pending import or mark clears it.
        match state.settle_windows() {
            Ok(0) => {}
            Ok(n) => tracing::debug!(
                records = n,
                "the journal's window records of an interrupted run, now per contact"
            ),
            Err(e) => {
                report.stop(Abort::state(Step::Settle, e));
                return;
            }
        }
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
    let due = match (state, store, dry_run) {
        (Some(state), Some(store), false) => match verification_due(job, store, state, mode) {
            Ok(due) => due,
            Err(stop) => {
                report.stop(stop);
                return;
            }
        },
        _ => false,
    };
    let reads_outcomes = job.reads_outcomes() && !mode.offline && mode.verify != Verify::Only;
    let mut finals = None;
    match (state, reads_outcomes) {
        (Some(state), true) => {
            let concurrency = config.dialler.max_concurrency;
            // The delivered outcomes' database is open from the read to the commit, and
            // closed before the contacts are planned: what opening it took goes back
            // (see `state::outcomes`).
            let held = match state.hold_outcomes() {
                Ok(h) => h,
                Err(e) => {
                    report.stop(Abort::state(Step::ReadState, e));
                    return;
                }
            };
            let read = read_outcomes(dialler, job, store, state, mode, due, concurrency, report);
            let read = read.await;
            if let Some(held) = held {
                if let Err(e) = blocking(move || held.end()).await {
                    report.stop(Abort::state(Step::Flush, e));
                    return;
                }
            }
            match read {
                Ok(f) => finals = Some(f),
                Err(stop) => {
                    report.stop(stop);
                    return;
                }
            }
        }
        _ if due => {
            if let (Some(state), Some(store)) = (state, store) {
                if let Err(stop) = verify_now(dialler, job, store, state, mode, None, report).await
                {
                    report.stop(stop);
                    return;
                }
            }
        }
        _ => {}
    }
    if mode.verify == Verify::Only {
        return;
    }
    // A dry run makes one read-only call, so that a wrong token, ClientsID or campaign,
    // or a dialler out of reach, fails it as it would fail the real run.
    // (Reading the outcomes made read-only calls already.)
    if dry_run && !mode.offline && finals.is_none() {
        if let Err(e) = check_campaign(dialler, &job.campaign).await {
            tracing::error!(error = %error_chain(&e), "the dry run's check of the dialler failed");
            report.stop(Abort::dialler(Step::Check, e));
            return;
        }
    }
    // The agents a job maps are checked against the dialler's users: one call per run.
    let users = if job.maps_agents() && !mode.offline {
        match dialler.user_logins().await {
            Ok(u) => Some(Arc::new(u.into_iter().collect::<HashSet<_>>())),
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "could not read the dialler's users");
                report.stop(Abort::dialler(Step::Users, e));
                return;
            }
        }
    } else {
        None
    };
    // An HTTP export is downloaded whole first; unchanged since the last clean run
    // (304), the run ends here.
    // The download and the plan's spools go beside the state (made once per run: it also
    // clears what a killed run left there).
    let scratch = downloads_dir(config);
    // What the last clean run read of the export, if this run may go by it: no outcome
    // to lock, nothing an interrupted run left, no --force, no agents (whose logins the
    // dialler may have changed), the state and the config as that run left them.
    let quiet = finals
        .as_ref()
        .is_none_or(|(to_lock, _)| to_lock.is_empty());
    let last_read = match (store, state) {
        (Some(store), Some(state))
            if job.source.kind != SourceKind::Sql
                && quiet
                && !interrupted
                && !mode.force
                && !job.maps_agents() =>
        {
            match conditional(store, job, state) {
                Ok(c) => c,
                Err(e) => {
                    report.stop(Abort::state(Step::ReadState, e));
                    return;
                }
            }
        }
        _ => None,
    };
    // An export file with the bytes the last clean run read: the run ends here.
    if let (Some(seen), Some(state), None) = (
        last_read.as_ref().and_then(|c| c.file.as_ref()),
        state,
        &job.source.http,
    ) {
        // Reading the file (up to its length) is no work for the async runtime's threads.
        let (path, stored, hasher) = (
            job.source.path.clone(),
            seen.clone(),
            state.hash_key().export(),
        );
        let compared =
            tokio::task::spawn_blocking(move || source::file_unchanged(&path, &stored, hasher))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match compared {
            Ok(true) => {
                let note = format!(
                    "the export file is unchanged since the last clean run read it (the same {} bytes): nothing was planned or sent",
                    seen.bytes
                );
                end_unchanged(note, last_good_rows, dialler, job, mode, report).await;
                return;
            }
            Ok(false) => {}
            // The plan reads it, and says what is wrong.
            Err(e) => tracing::debug!(error = %e, "could not compare the export file"),
        }
    }
    let download = match &job.source.http {
        None => None,
        Some(_) => {
            let asked = last_read.map(|c| c.validators);
            match fetch(&scratch, job, asked.as_ref(), handle).await {
                Ok((Fetched::Unchanged, _)) => {
                    let note = "the export is unchanged since the last clean run (the CRM answered 304 Not Modified): nothing was downloaded, planned or sent";
                    end_unchanged(note.into(), last_good_rows, dialler, job, mode, report).await;
                    return;
                }
                Ok((Fetched::Export(d), note)) => {
                    tracing::info!(
                        bytes = d.bytes,
                        pages = d.pages.count(),
                        "export downloaded"
                    );
                    report.fetch = Fetch::Downloaded(d.validators.clone());
                    report.notes.push(note);
                    Some(d)
                }
                Err(SourceError::Stopped) => {
                    report.stop(Abort::plan(PlanError::Stopped));
                    return;
                }
                Err(e) => {
                    report.fetch = Fetch::Downloaded(None);
                    let why = Abort::plan(PlanError::Source(e));
                    tracing::error!(error = %why.chain(), "the export could not be downloaded; nothing was changed");
                    report.stop(why);
                    return;
                }
            }
        }
    };
    let planned = {
        let job = job.clone();
        let state = state.cloned();
        let handle = Arc::clone(handle);
        // The wait for a planning thread (another job's plan) is not counted.
        planners::plan_on(move || {
            let planning = Instant::now();
            // The download's temporary file goes once the plan is made.
            let plan = read_and_plan(
                &job,
                state.as_ref(),
                users,
                &handle,
                download.as_deref(),
                &scratch,
                finals,
            );
            (plan, planning.elapsed())
        })
        .await
    };
    if let Ok((_, took)) = &planned {
        report.plan_ms = took.as_millis() as u64;
    }
    let plan = match planned.map(|(plan, _)| plan) {
        Ok(Ok((plan, seen))) => {
            if let Some(seen) = seen {
                report.fetch = Fetch::Read(seen);
            }
            plan
        }
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

    report.done_locks = plan.done_locks;
    report.rows = plan.rows + plan.blank;
    report.blank = plan.blank;
    report.notes.extend(plan.notes.iter().cloned());
    for note in &plan.notes {
        tracing::info!(%note, "export");
    }
    report.rechecked = plan.rechecked;
    if plan.rechecked > 0 {
        tracing::info!(
            contacts = plan.rechecked,
            "an earlier run stopped with calls in flight; those contacts are sent what the export says"
        );
    }
    report.invalid = plan.rejects - plan.duplicates;
    report.duplicates = plan.duplicates;
    report.new = plan.imports.len() as u64;
    report.changed = plan.changes.len() as u64;
    report.absent_kept = plan.absent_kept;
    report.unchanged = plan.unchanged;
    report.unchanged_by_hash = plan.unchanged_by_hash;
    report.withheld_removals = plan.withheld_removals;
    report.withheld = plan.doubts.clone();
    report.problems = plan.rejected.iter().take(LIST_LIMIT).cloned().collect();
    report.warnings = plan.warned;
    report.row_warnings = plan.warnings.iter().take(LIST_LIMIT).cloned().collect();
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
        // Blank rows are no data: an export padded with them is no longer for it.
        rows: plan.rows,
        valid: plan.rows - plan.rejects,
        known: plan.known,
        last_good_rows,
        // Locks of finished contacts are no removals: no export caused them.
        removals: plan.removals.len() as u64 - report.done_locks,
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
        if let Err(e) = guard::note_guard(store, &job.name, stopping.as_deref(), &report.started_at)
        {
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
        match crate::engine::report::preview(&plan) {
            Ok(lines) => report.preview = lines,
            Err(e) => report.stop(Abort::plan(e.into())),
        }
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
    if plan.calls() == 0 && !prove_token(dialler, job, mode, report).await {
        return;
    }
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

/// Whether the run reads the campaign back to check the state against it: when `mode`
/// asks for it or the job's `verify_every` has passed. An empty state has nothing to
/// check: the clock starts.
fn verification_due(
    job: &JobConfig,
    store: &Store,
    state: &JobState,
    mode: RunMode,
) -> Result<bool, Abort> {
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
    if due && state.is_empty() {
        let started = Verified {
            at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ..Verified::default()
        };
        store
            .set_verification(&job.name, &started)
            .map_err(state_failed)?;
        return Ok(false);
    }
    Ok(due)
}

/// Reads the campaign back and checks the state against it (feeding each listed contact
/// to the outcomes' collector too, when they are read). What it found and fixed goes
/// into `report`; a dialler that no longer knows most IDs stops the run like a guard
/// (`--force` goes on).
async fn verify_now(
    dialler: &Dialler,
    job: &JobConfig,
    store: &Store,
    state: &JobState,
    mode: RunMode,
    also: Option<&Reading>,
    report: &mut JobReport,
) -> Result<(), Abort> {
    let state_failed = |e| Abort::state(Step::Verify, e);
    match reconcile::verify(dialler, job, state, mode.force, also.cloned()).await {
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

/// What the outcomes said for `on_done = "lock"`: the final contacts not locked, and the
/// key hashes of those locked.
type Finals = (Vec<(String, Entry)>, HashSet<u64>);

/// Reads the job's outcomes with one listing of the campaign (the verification's, when it
/// is due) and the campaign's result codes, and delivers those that changed (a dry run
/// only shows them). Reading failures stop the run; delivery failures are in the report
/// (the next run delivers again), and the sync goes on.
#[allow(clippy::too_many_arguments)]
async fn read_outcomes(
    dialler: &Dialler,
    job: &JobConfig,
    store: Option<&Store>,
    state: &JobState,
    mode: RunMode,
    due: bool,
    concurrency: usize,
    report: &mut JobReport,
) -> Result<Finals, Abort> {
    let cfg = job.outcomes.as_ref();
    let keep = if mode.dry_run {
        Keep::First {
            limit: LIST_LIMIT,
            delivers: Delivers::of(cfg),
        }
    } else {
        Keep::Stage
    };
    let reading = Reading::start(dialler, job, state, &report.run_id, keep)
        .await
        .map_err(|e| match e {
            PrepareError::Dialler(e) => Abort::dialler(Step::Outcomes, e),
            PrepareError::State(e) => Abort::state(Step::Outcomes, e),
        })?;
    let listed = match (due, store) {
        (true, Some(store)) => {
            verify_now(dialler, job, store, state, mode, Some(&reading), report).await
        }
        _ => reading
            .list(dialler)
            .await
            .map_err(|e| Abort::dialler(Step::Outcomes, e)),
    };
    let g = reading.finish();
    listed?;
    if let Some(e) = g.error {
        return Err(Abort::state(Step::Outcomes, e));
    }
    let mut out = OutcomesReport {
        listed: g.listed,
        changed: g.changed,
        ..OutcomesReport::default()
    };
    let started = chrono::DateTime::parse_from_rfc3339(&report.started_at)
        .map_or_else(|_| chrono::Utc::now(), |t| t.with_timezone(&chrono::Utc));
    let path = cfg
        .and_then(|c| c.path.as_deref())
        .map(|p| outcomes::deliver::file_path(p, &report.run_id, &started));
    if mode.dry_run {
        out.delivered = g.wanted;
        if let Some(cfg) = cfg {
            match outcomes::with_history(dialler, g.kept, cfg.needs_history(), concurrency).await {
                Ok((shown, calls)) => {
                    out.history_calls = calls;
                    out.preview = shown
                        .iter()
                        .map(|o| outcomes::deliver::object(o, cfg))
                        .collect();
                }
                Err(e) => {
                    out.error = Some(format!("reading a contact's history: {}", error_chain(&e)))
                }
            }
        }
        if out.delivered > 0 {
            out.file = path.map(|p| p.display().to_string());
        }
        out.batches_waiting = state.outbox_len() as u64;
    } else {
        if out.changed > 0 {
            let run_id = &report.run_id;
            let delivered =
                outcomes::deliver(dialler, state, job, path, run_id, concurrency, &mut out);
            if let Err(e) = delivered.await {
                out.error = Some(e);
            }
        }
        outcomes::send_outbox(state, job, &mut out).await;
    }
    if let Some(e) = &out.error {
        tracing::warn!(error = %e, "the outcomes were not all delivered; the next run delivers them again");
    }
    tracing::info!(
        listed = out.listed,
        changed = out.changed,
        delivered = out.delivered,
        history_calls = out.history_calls,
        file = out.file.as_deref().unwrap_or(""),
        batches_sent = out.batches_sent,
        batches_waiting = out.batches_waiting,
        "outcomes read"
    );
    report.outcomes = Some(out);
    Ok((g.to_lock, g.final_locked))
}

/// Ends a run whose export is as the last clean run read it (`note` says how it is
/// known): nothing is planned, the last good row count stands, and the token is proven.
async fn end_unchanged(
    note: String,
    last_good_rows: Option<u64>,
    dialler: &Dialler,
    job: &JobConfig,
    mode: RunMode,
    report: &mut JobReport,
) {
    tracing::info!(%note, "export");
    report.export_unchanged = true;
    report.rows = last_good_rows.unwrap_or(0);
    report.notes.push(note);
    prove_token(dialler, job, mode, report).await;
}

/// With nothing to send and no call made yet: one read-only call proves the token still
/// works, so a token revoked in the portal is reported without waiting for a change.
/// False if the dialler refused it (the report says so).
async fn prove_token(
    dialler: &Dialler,
    job: &JobConfig,
    mode: RunMode,
    report: &mut JobReport,
) -> bool {
    if mode.dry_run || dialler.token_accepted() || mode.credentials_recent {
        return true;
    }
    match check_campaign(dialler, &job.campaign).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %error_chain(&e), "the dialler refused the run's check of the token");
            report.stop(Abort::dialler(Step::Credentials, e));
            false
        }
    }
}

/// Checks `campaign` on the dialler with one read-only call (a name is looked up anyway).
async fn check_campaign(dialler: &Dialler, campaign: &CampaignRef) -> Result<(), DiallerError> {
    let id = campaign_id(dialler, campaign).await?;
    if let CampaignRef::Id(_) = campaign {
        dialler
            .campaign(id)
            .await?
            .ok_or(DiallerError::CampaignIdNotFound(id))?;
    }
    Ok(())
}
