//! The executor: carries out a plan against the dialler and commits the state of each
//! operation the dialler confirmed, and only then.
//!
//! Concurrency: each contact is one task whose calls run in order (update, reset, unlock;
//! or one import, lock or delete), and at most `max_concurrency` tasks are in flight
//! (a `FuturesUnordered` topped up as tasks finish), so two calls never race on one
//! contact while distinct contacts proceed in parallel. The first task runs alone, as a probe of token and base URL.
//! Tasks are created lazily, so after a fatal error (401, missing endpoint, a dialler that
//! stays down) no new task starts; those in flight finish. A task writes the state right
//! after each call the dialler confirmed, once per call, so a confirmed operation is
//! recorded even if the run stops afterwards.
//!
//! Memory: the plan's operations are read from its spools (see `plan::spool`) as the
//! journal's window needs them, so at most about two windows and the calls in flight are
//! in memory, whatever the size of the plan ([`JobReport::held_peak`] says how many).
//!
//! Crash safety: every operation but an import is safe to repeat (an update, reset, lock
//! or unlock sent again changes nothing more; a delete sent again finds the contact gone).
//! An import is not: its contact ID is only known from the answer. So imports are
//! journalled: a window of the operations ahead is recorded (its imports as pending, the
//! others as in flight, one record each: see `state::window`) and flushed to disk before
//! any of them is sent, and the record goes once each of them is done, after those whose
//! outcome is unknown got a record of their own. The next run resolves what is still
//! pending against the dialler before it plans (`reconcile`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use std::collections::VecDeque;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::OnceCell;

use crate::config::{CampaignRef, JobConfig};
use crate::dialler::{Dialler, DiallerError};
use crate::engine::mapping::Contact;
use crate::engine::outcome::{error_chain, Abort, Step};
use crate::engine::plan::{Change, Plan, Removal, RemovalKind};
use crate::engine::progress::RunHandle;
use crate::engine::report::{Failure, JobReport, LIST_LIMIT};
use crate::state::{in_doubt, JobState, Pending, StateError};

mod operations;

/// After this many runs in a row in which a row failed, its failure is logged as needing
/// attention (it is retried on every run regardless).
pub(crate) const FAILING_RUNS_WARN: u32 = 3;

/// One contact's work.
enum Task {
    Import(Contact),
    Change(Change),
    Remove(Removal),
}

impl Task {
    fn key(&self) -> &str {
        match self {
            Task::Import(c) => &c.key,
            Task::Change(c) => &c.key,
            Task::Remove(r) => &r.key,
        }
    }

    /// What the dialler may hold differently from the state while this task's calls are
    /// in flight ([`in_doubt`] bits); imports are journalled as pending instead.
    fn in_doubt(&self) -> u8 {
        match self {
            Task::Import(_) => 0,
            Task::Change(c) => {
                let mut bits = 0;
                if !c.update.is_empty() || c.reset {
                    bits |= in_doubt::FIELDS;
                }
                if c.unlock {
                    bits |= in_doubt::LOCK;
                }
                bits
            }
            Task::Remove(r) => match r.kind {
                RemovalKind::Lock => in_doubt::LOCK,
                RemovalKind::Delete => in_doubt::GONE,
            },
        }
    }
}

/// What a task did.
#[derive(Default)]
struct Done {
    key: String,
    imported: u64,
    updated: u64,
    reset: u64,
    unlocked: u64,
    locked: u64,
    deleted: u64,
    already_gone: u64,
    stale_ids: u64,
    failure: Option<Failure>,
}

/// One window of the journal (see `state::window`): its operations not done yet, and
/// those done whose outcome is still unknown (they keep a record of their own when the
/// window closes).
struct Window {
    id: u64,
    left: AtomicUsize,
    open: Mutex<HashSet<String>>,
}

/// A task, and the window of the journal that holds it (`None`: its journal was not
/// written, and it is not sent).
type Journalled = (Task, Option<Arc<Window>>);

/// Shared by the tasks of one run.
struct Run<'a> {
    /// The number of the next window of the journal.
    next_window: AtomicU64,
    dialler: &'a Dialler,
    state: &'a JobState,
    job: &'a JobConfig,
    /// The campaign imports go to, looked up at the first import.
    campaign: OnceCell<i64>,
    now: i64,
    look_first: bool,
    handle: &'a RunHandle,
    stop: AtomicBool,
    /// The first fatal error, which ends the run.
    fatal: Mutex<Option<Abort>>,
}

/// Why a task could not finish.
enum TaskError {
    Dialler(&'static str, DiallerError),
    /// The state write after a confirmed call failed: stop, the state can't be trusted.
    State(StateError),
}

impl From<StateError> for TaskError {
    fn from(e: StateError) -> Self {
        TaskError::State(e)
    }
}

/// Where a plan is carried out.
pub(crate) struct Target<'a> {
    pub dialler: &'a Dialler,
    pub state: &'a JobState,
    pub job: &'a JobConfig,
    /// Contacts in flight at most.
    pub concurrency: usize,
    /// Imports look the contact up first (see [`Dialler::import_json`]).
    pub look_first: bool,
}

/// The ID of the campaign `campaign` names (a call only for a name).
pub(crate) async fn campaign_id(
    dialler: &Dialler,
    campaign: &CampaignRef,
) -> Result<i64, DiallerError> {
    match campaign {
        CampaignRef::Id(id) => Ok(*id),
        CampaignRef::Name(name) => dialler.resolve_campaign(name).await,
    }
}

/// How many tasks the journal runs ahead of those started, so at most about this many
/// imports are pending after a crash. It is written while the calls in flight go on.
fn ahead(concurrency: usize) -> usize {
    (concurrency * 4).max(64)
}

/// More operations than the executor ever holds at once with `concurrency` calls in
/// flight: the window being journalled, less than a window ready, and those in flight.
pub fn window(concurrency: usize) -> usize {
    2 * ahead(concurrency) + concurrency
}

/// Executes `plan` with at most `concurrency` contacts in flight, adding counts and
/// failures to `report`. Stops starting operations when `handle` asks to.
pub(crate) async fn execute(
    plan: Plan,
    target: Target<'_>,
    handle: &RunHandle,
    report: &mut JobReport,
) {
    let Target {
        dialler,
        state,
        job,
        concurrency,
        look_first,
    } = target;
    let run = Run {
        // Unique across runs: a window's records outlive a crashed run.
        next_window: AtomicU64::new(
            chrono::Utc::now()
                .timestamp_nanos_opt()
                .map_or(0, |n| n as u64),
        ),
        dialler,
        state,
        job,
        campaign: OnceCell::new(),
        now: chrono::Utc::now().timestamp(),
        look_first,
        handle,
        stop: AtomicBool::new(false),
        fatal: Mutex::new(None),
    };
    let spool_failed = |source| Abort::Spool {
        during: Step::Send,
        source,
    };
    for baseline in plan.baselines.iter() {
        let (key, entry) = match baseline {
            Ok(b) => b,
            Err(e) => return report.stop(spool_failed(e)),
        };
        if let Err(e) = state.put(&key, &entry) {
            return report.stop(Abort::state(Step::Send, e));
        }
    }
    for key in &plan.settled {
        if let Err(e) = state.clear_in_flight(key) {
            return report.stop(Abort::state(Step::Send, e));
        }
    }
    let mut failing = match state.failure_counts() {
        Ok(f) => f,
        Err(e) => return report.stop(Abort::state(Step::ReadState, e)),
    };
    let planned = plan.changes.len() + plan.imports.len() + plan.removals.len();
    // Operations read from the spools and not yet done, and the most there were.
    let held = AtomicUsize::new(0);
    let mut peak = 0usize;
    handle.sending(planned as u64);
    dialler.budget_retries_for(planned as u64);
    // The operations, read back from the plan's spools; one that does not read back
    // stops the run (nothing after it is sent).
    let mut tasks = plan
        .changes
        .iter()
        .map(|c| c.map(Task::Change))
        .chain(plan.imports.iter().map(|c| c.map(Task::Import)))
        .chain(plan.removals.iter().map(|r| r.map(Task::Remove)))
        .map_while(|t| t.map_err(|e| run.halt(spool_failed(e))).ok())
        .inspect(|_| {
            held.fetch_add(1, Ordering::Relaxed);
        });
    // The first task runs alone: a wrong token, ClientsID or base URL then costs the
    // dialler one call, not one per slot of concurrency.
    let mut finished = 0usize;
    let mut absorb = |done: Option<Done>| {
        held.fetch_sub(1, Ordering::Relaxed);
        let Some(done) = done else { return };
        finished += 1;
        report.imported += done.imported;
        report.updated += done.updated;
        report.reset += done.reset;
        report.unlocked += done.unlocked;
        report.locked += done.locked;
        report.deleted += done.deleted;
        report.already_gone += done.already_gone;
        report.stale_ids += done.stale_ids;
        let counted = match done.failure {
            Some(mut f) => {
                report.failed += 1;
                *report.failed_by_operation.entry(f.operation).or_default() += 1;
                let runs = failing.get(&done.key).copied().unwrap_or(0) + 1;
                f.runs = runs;
                if runs >= FAILING_RUNS_WARN {
                    tracing::warn!(job = %job.name, user_data = %done.key, runs, error = %f.error,
                        "this contact has failed in every one of its last runs; fix the record in the CRM or on the dialler");
                }
                if report.failures.len() < LIST_LIMIT {
                    report.failures.push(f);
                }
                failing.insert(done.key.clone(), runs);
                state.set_failures(&done.key, runs)
            }
            None if failing.remove(&done.key).is_some() => state.clear_failures(&done.key),
            None => Ok(()),
        };
        if let Err(e) = counted {
            run.halt(Abort::state(Step::Send, e));
        }
    };
    if let Some(t) = tasks.next() {
        peak = held.load(Ordering::Relaxed);
        let window = run.journal(std::slice::from_ref(&t)).await;
        absorb(run.task((t, window)).await);
    }
    let ahead = ahead(concurrency);
    let mut ready: VecDeque<Journalled> = VecDeque::new();
    let mut in_flight = FuturesUnordered::new();
    let mut exhausted = false;
    loop {
        while in_flight.len() < concurrency {
            match ready.pop_front() {
                Some(t) => in_flight.push(run.task(t)),
                None => break,
            }
        }
        // The next window is journalled while at least a window's worth is ready, so the
        // slots never wait for the journal's flush.
        if ready.len() < ahead && !exhausted {
            let chunk: Vec<Task> = tasks.by_ref().take(ahead).collect();
            peak = peak.max(held.load(Ordering::Relaxed));
            if chunk.is_empty() || run.stopping() {
                exhausted = true;
                // Not journalled and never to be started: counted as not finished.
                held.fetch_sub(chunk.len(), Ordering::Relaxed);
                drop(chunk);
            } else {
                let mut journal = std::pin::pin!(run.journalled(chunk));
                let chunk = loop {
                    tokio::select! {
                        chunk = &mut journal => break chunk,
                        Some(done) = in_flight.next() => {
                            absorb(done);
                            // Keep the slots busy with what is journalled already.
                            if let Some(t) = ready.pop_front() {
                                in_flight.push(run.task(t));
                            }
                        }
                    }
                };
                ready.extend(chunk);
                continue;
            }
        }
        match in_flight.next().await {
            Some(done) => absorb(done),
            None if ready.is_empty() => break,
            None => {}
        }
    }
    report.held_peak = peak as u64;
    let fatal = crate::locking::lock(&run.fatal).take();
    if let Some(why) = fatal {
        report.stop(why);
    } else if finished < planned {
        report.stop(Abort::Stopped {
            done: finished as u64,
            planned: planned as u64,
        });
    }
}

impl Run<'_> {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.handle.stop_requested()
    }

    /// Records the imports among `tasks` as pending and every other task as in flight,
    /// as one window of the journal (one record for the imports, one for the marks), and
    /// makes that durable with one flush, before any of them is sent. On failure the run
    /// stops (and so none of them is sent); `None` then.
    async fn journal(&self, tasks: &[Task]) -> Option<Arc<Window>> {
        if self.stopping() || tasks.is_empty() {
            return None;
        }
        let mut imports = Vec::new();
        let mut marks = Vec::new();
        for t in tasks {
            match t {
                Task::Import(c) => imports.push((
                    c.key.as_str(),
                    Pending {
                        fields: c.hashes.clone(),
                        triggers: c.triggers.clone(),
                        row: c.row,
                        phones: c.phones,
                        keyed: true,
                    },
                )),
                t => marks.push((t.key(), t.in_doubt())),
            }
        }
        let id = self.next_window.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.state.put_window(id, &imports, &marks) {
            self.halt(Abort::state(Step::Send, e));
            return None;
        }
        if let Err(e) = self.state.flush().await {
            self.halt(Abort::state(Step::Send, e));
            return None;
        }
        Some(Arc::new(Window {
            id,
            left: AtomicUsize::new(tasks.len()),
            open: Mutex::default(),
        }))
    }

    /// `tasks`, once they are journalled.
    async fn journalled(&self, tasks: Vec<Task>) -> Vec<Journalled> {
        let window = self.journal(&tasks).await;
        tasks.into_iter().map(|t| (t, window.clone())).collect()
    }

    /// One task of `window` is done; `open`: its outcome is unknown (an import sent but
    /// not stored, a call that may have been carried out), so it keeps a record of its
    /// own. The last one closes the window.
    fn finished(&self, window: Option<&Arc<Window>>, key: &str, open: bool) {
        let Some(w) = window else { return };
        if open {
            crate::locking::lock(&w.open).insert(key.to_string());
        }
        if w.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let open = std::mem::take(&mut *crate::locking::lock(&w.open));
            if let Err(e) = self.state.close_window(w.id, &open) {
                self.halt(Abort::state(Step::Send, e));
            }
        }
    }

    /// Runs one task; `None` if it was not started because the run is stopping.
    async fn task(&self, (task, window): Journalled) -> Option<Done> {
        if self.stopping() || window.is_none() {
            // Never sent: no longer pending or in flight once its window closes.
            self.finished(window.as_ref(), task.key(), false);
            return None;
        }
        let mut done = Done {
            key: task.key().to_string(),
            ..Done::default()
        };
        let import = matches!(task, Task::Import(_));
        let result = match task {
            Task::Import(c) => self.import(c, &mut done).await,
            Task::Change(c) => self.change(c, &mut done).await,
            Task::Remove(r) => self.remove(r, &mut done).await,
        };
        // The mark goes once the outcome is known: confirmed and stored, or refused. A
        // call that timed out or kept failing may still have been carried out, so its
        // mark stays, and the next run sends what the export then says. An import stays
        // pending unless its contact was stored: the next run looks it up.
        let settled = match &result {
            Ok(()) => true,
            Err(_) if import => false,
            Err(TaskError::Dialler(_, e)) => e.not_carried_out(),
            Err(TaskError::State(_)) => false,
        };
        self.finished(window.as_ref(), &done.key, !settled);
        match result {
            Ok(()) => {}
            Err(TaskError::Dialler(op, e)) => {
                let error = error_chain(&e);
                tracing::warn!(job = %self.job.name, user_data = %done.key, operation = op, %error, "operation failed");
                if e.is_fatal() {
                    self.halt(Abort::dialler(Step::Send, e));
                }
                done.failure = Some(Failure {
                    user_data: done.key.clone(),
                    operation: op,
                    error,
                    runs: 1,
                });
            }
            Err(TaskError::State(e)) => {
                done.failure = Some(Failure {
                    user_data: done.key.clone(),
                    operation: "state write",
                    error: error_chain(&e),
                    runs: 1,
                });
                self.halt(Abort::state(Step::Send, e));
            }
        }
        self.handle.operation_done(done.failure.is_some());
        Some(done)
    }

    /// Stops the run for `why` (the first reason stands).
    fn halt(&self, why: Abort) {
        self.stop.store(true, Ordering::Relaxed);
        crate::locking::lock(&self.fatal).get_or_insert(why);
    }

    async fn campaign_id(&self) -> Result<i64, DiallerError> {
        if let Some(id) = self.campaign.get() {
            return Ok(*id);
        }
        let id = campaign_id(self.dialler, &self.job.campaign).await?;
        let _ = self.campaign.set(id);
        Ok(id)
    }
}
