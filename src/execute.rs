//! The executor: carries out a plan against the dialler and commits the state of each
//! operation the dialler confirmed, and only then.
//!
//! Concurrency: each contact is one task whose calls run in order (update, reset, unlock;
//! or one import, lock or delete), and at most `max_concurrency` tasks are in flight
//! (`buffer_unordered`), so two calls never race on one contact while distinct contacts
//! proceed in parallel. The first task runs alone, as a probe of token and base URL.
//! Tasks are created lazily, so after a fatal error (401, missing endpoint, unreachable
//! server) no new task starts; those in flight finish. A task writes the state right
//! after each call the dialler confirmed, once per call, so a confirmed operation is
//! recorded even if the run stops afterwards.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use futures_util::stream::{self, StreamExt};
use serde_json::{Map, Value};

use crate::config::JobConfig;
use crate::dialler::{self, record_id, Dialler, DiallerError, ImportFlags};
use crate::mapping::Contact;
use crate::plan::{Change, Plan, Removal, RemovalKind};
use crate::progress::RunHandle;
use crate::report::{Failure, JobReport, LIST_LIMIT};
use crate::state::{Entry, JobState, LastOp, StateError};

/// One contact's work.
enum Task {
    Import(Contact),
    Change(Change),
    Remove(Removal),
}

/// What a task did.
#[derive(Default)]
struct Done {
    imported: u64,
    updated: u64,
    reset: u64,
    unlocked: u64,
    locked: u64,
    deleted: u64,
    already_gone: u64,
    failure: Option<Failure>,
}

/// Shared by the tasks of one run.
struct Run<'a> {
    dialler: &'a Dialler,
    state: &'a JobState,
    job: &'a JobConfig,
    /// The campaign imports go to; `None` when the plan has no import.
    campaign_id: Option<i64>,
    now: i64,
    handle: &'a RunHandle,
    stop: AtomicBool,
    /// The first fatal error, which ends the run, and whether it was a 401.
    fatal: Mutex<Option<(String, bool)>>,
}

/// Why a task could not finish.
enum TaskError {
    Dialler(&'static str, DiallerError),
    /// The state write after a confirmed call failed: stop, the state can't be trusted.
    State(StateError),
}

/// Where a plan is carried out.
pub struct Target<'a> {
    pub dialler: &'a Dialler,
    pub state: &'a JobState,
    pub job: &'a JobConfig,
    /// The campaign imports go to; `None` when the plan has no import.
    pub campaign_id: Option<i64>,
    /// Contacts in flight at most.
    pub concurrency: usize,
}

/// Executes `plan` with at most `concurrency` contacts in flight, adding counts and
/// failures to `report`. Stops starting operations when `handle` asks to.
pub async fn execute(plan: Plan, target: Target<'_>, handle: &RunHandle, report: &mut JobReport) {
    let Target {
        dialler,
        state,
        job,
        campaign_id,
        concurrency,
    } = target;
    let run = Run {
        dialler,
        state,
        job,
        campaign_id,
        now: chrono::Utc::now().timestamp(),
        handle,
        stop: AtomicBool::new(false),
        fatal: Mutex::new(None),
    };
    for (key, entry) in &plan.baselines {
        if let Err(e) = state.put(key, entry) {
            report.aborted = Some(error_chain(&e));
            return;
        }
    }
    let planned = plan.changes.len() + plan.imports.len() + plan.removals.len();
    handle.sending(planned as u64);
    let mut tasks = plan
        .changes
        .into_iter()
        .map(Task::Change)
        .chain(plan.imports.into_iter().map(Task::Import))
        .chain(plan.removals.into_iter().map(Task::Remove));
    // The first task runs alone: a wrong token, ClientsID or base URL then costs the
    // dialler one call, not one per slot of concurrency.
    let first = match tasks.next() {
        Some(t) => run.task(t).await,
        None => None,
    };
    let rest = stream::iter(tasks)
        .map(|t| run.task(t))
        .buffer_unordered(concurrency);
    let mut results = stream::iter([first]).chain(rest);
    let mut finished = 0usize;
    while let Some(done) = results.next().await {
        let Some(done) = done else { continue };
        finished += 1;
        report.imported += done.imported;
        report.updated += done.updated;
        report.reset += done.reset;
        report.unlocked += done.unlocked;
        report.locked += done.locked;
        report.deleted += done.deleted;
        report.already_gone += done.already_gone;
        if let Some(f) = done.failure {
            report.failed += 1;
            if report.failures.len() < LIST_LIMIT {
                report.failures.push(f);
            }
        }
    }
    drop(results);
    if let Some((why, unauthorized)) = run.fatal.into_inner().unwrap() {
        report.aborted = Some(why);
        report.unauthorized = unauthorized;
    } else if finished < planned {
        report.aborted = Some(format!(
            "stopped on request after {finished} of {planned} contacts; \
             the next run does the rest"
        ));
    }
}

impl Run<'_> {
    /// Runs one task; `None` if it was not started because the run is stopping.
    async fn task(&self, task: Task) -> Option<Done> {
        if self.stop.load(Ordering::Relaxed) || self.handle.stop_requested() {
            return None;
        }
        let mut done = Done::default();
        let (key, result) = match task {
            Task::Import(c) => {
                let key = c.key.clone();
                (key, self.import(c, &mut done).await)
            }
            Task::Change(c) => {
                let key = c.key.clone();
                (key, self.change(c, &mut done).await)
            }
            Task::Remove(r) => {
                let key = r.key.clone();
                (key, self.remove(r, &mut done).await)
            }
        };
        match result {
            Ok(()) => {}
            Err(TaskError::Dialler(op, e)) => {
                if e.is_fatal() {
                    self.halt(&e, matches!(e, DiallerError::Unauthorized { .. }));
                }
                let error = error_chain(&e);
                tracing::warn!(job = %self.job.name, user_data = %key, operation = op, %error, "operation failed");
                done.failure = Some(Failure {
                    user_data: key,
                    operation: op,
                    error,
                });
            }
            Err(TaskError::State(e)) => {
                self.halt(&e, false);
                done.failure = Some(Failure {
                    user_data: key,
                    operation: "state write",
                    error: error_chain(&e),
                });
            }
        }
        self.handle.operation_done(done.failure.is_some());
        Some(done)
    }

    fn halt(&self, e: &(dyn std::error::Error + 'static), unauthorized: bool) {
        self.stop.store(true, Ordering::Relaxed);
        self.fatal
            .lock()
            .unwrap()
            .get_or_insert_with(|| (error_chain(e), unauthorized));
    }

    async fn import(&self, c: Contact, done: &mut Done) -> Result<(), TaskError> {
        let campaign_id = self
            .campaign_id
            .expect("the caller resolves the campaign of a plan with imports");
        let mut body = Map::new();
        body.insert("DiallerCampaignsID".into(), Value::from(campaign_id));
        body.insert("UserData".into(), Value::from(c.key.clone()));
        for (f, v) in &c.fields {
            if !v.is_null() {
                body.insert(
                    f.name.into(),
                    serde_json::to_value(v).expect("values serialize"),
                );
            }
        }
        let flags = ImportFlags {
            overwrite_duplicates: self.job.overwrite_duplicates,
            reset_contact: self.job.reset_contact,
            unlock_contact: self.job.unlock_contact,
        };
        let record = self
            .dialler
            .import(&Value::Object(body), flags)
            .await
            .map_err(|e| match e {
                // The only object an import refers to is its campaign.
                e if e.is_not_found() => {
                    TaskError::Dialler("import", DiallerError::CampaignIdNotFound(campaign_id))
                }
                e => TaskError::Dialler("import", e),
            })?;
        let id = record_id(&record).ok_or_else(|| {
            TaskError::Dialler(
                "import",
                DiallerError::Decode("the imported contact has no ID".into()),
            )
        })?;
        let entry = Entry {
            id,
            fields: c.hashes,
            triggers: c.triggers,
            locked: false,
            last_op: LastOp::Imported,
            last_run: self.now,
        };
        self.state.put(&c.key, &entry).map_err(TaskError::State)?;
        done.imported += 1;
        Ok(())
    }

    /// Update, reset, unlock, in that order, storing after each confirmed call what it made
    /// true: after the update the new field hashes (and, unless a reset is still due, the
    /// trigger hashes, which then differ only by triggers newly added to the config);
    /// after the reset the trigger hashes; after the unlock the lock flag. A step that
    /// fails leaves its part of the entry as it was, so the next run does it again.
    async fn change(&self, c: Change, done: &mut Done) -> Result<(), TaskError> {
        let mut entry = c.old;
        entry.last_run = self.now;
        let target = dialler::Target::Id(entry.id);
        if !c.update.is_empty() {
            let mut body = Map::new();
            body.insert("ID".into(), Value::from(entry.id));
            for (f, v) in &c.update {
                body.insert(
                    f.name.into(),
                    serde_json::to_value(v).expect("values serialize"),
                );
            }
            self.dialler
                .update(&Value::Object(body))
                .await
                .map_err(|e| TaskError::Dialler("update", e))?;
            entry.fields.clone_from(&c.fields);
            if !c.reset {
                entry.triggers.clone_from(&c.triggers);
            }
            entry.last_op = LastOp::Updated;
            self.state.put(&c.key, &entry).map_err(TaskError::State)?;
            done.updated += 1;
        }
        // Without an update, the field hashes can still differ by fields newly added to
        // the config; they go with the next write.
        entry.fields = c.fields;
        if c.reset {
            self.dialler
                .reset(target)
                .await
                .map_err(|e| TaskError::Dialler("reset", e))?;
            entry.triggers.clone_from(&c.triggers);
            entry.last_op = LastOp::Reset;
            self.state.put(&c.key, &entry).map_err(TaskError::State)?;
            done.reset += 1;
        }
        if c.unlock {
            self.dialler
                .unlock(target)
                .await
                .map_err(|e| TaskError::Dialler("unlock", e))?;
            entry.triggers = c.triggers;
            entry.locked = false;
            entry.last_op = LastOp::Unlocked;
            self.state.put(&c.key, &entry).map_err(TaskError::State)?;
            done.unlocked += 1;
        }
        Ok(())
    }

    async fn remove(&self, r: Removal, done: &mut Done) -> Result<(), TaskError> {
        let target = dialler::Target::Id(r.old.id);
        let (op, result) = match r.kind {
            RemovalKind::Lock => ("lock", self.dialler.lock(target).await),
            RemovalKind::Delete => ("delete", self.dialler.delete(target).await),
        };
        match result {
            Ok(()) => match r.kind {
                RemovalKind::Lock => {
                    let mut entry = r.old;
                    entry.locked = true;
                    entry.last_op = LastOp::Locked;
                    entry.last_run = self.now;
                    self.state.put(&r.key, &entry).map_err(TaskError::State)?;
                    done.locked += 1;
                }
                RemovalKind::Delete => {
                    self.state.remove(&r.key).map_err(TaskError::State)?;
                    done.deleted += 1;
                }
            },
            // Already gone from the dialler: nothing left to lock or delete; forget it.
            Err(e) if e.is_not_found() => {
                self.state.remove(&r.key).map_err(TaskError::State)?;
                done.already_gone += 1;
            }
            Err(e) => return Err(TaskError::Dialler(op, e)),
        }
        Ok(())
    }
}

/// `e` and its causes, joined with ": ".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
