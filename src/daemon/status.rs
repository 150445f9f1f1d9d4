//! `dialsync status`: per job the last run, the next scheduled run and the size of its
//! state. The daemon answers it over its control socket (it holds the state); without a
//! daemon the command reads the state itself.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::schedule::CronSchedule;
use crate::config::Config;
use crate::daemon::history::RunSummary;
use crate::engine::progress::Snapshot;
use crate::escape::printable;
use crate::state::{GuardTrip, StateError, Store, Verified};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The daemon, when one is running for this config's state.
    pub daemon: Option<DaemonInfo>,
    pub jobs: Vec<JobStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub pid: u32,
    pub since: DateTime<Utc>,
    /// The config file it runs.
    pub config: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    pub job: String,
    pub schedule: Option<String>,
    pub timezone: String,
    /// The next scheduled run (by the config, whether or not a daemon is running).
    pub next_run: Option<DateTime<Utc>>,
    /// Contacts in the job's state.
    pub contacts: u64,
    pub last_run: Option<RunSummary>,
    /// The last run that changed something on the dialler (it may be the last run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change: Option<RunSummary>,
    /// A scheduled job is overdue when no run has finished by then: the second scheduled
    /// time after the last run ended, plus as long as that run took (for a regular
    /// schedule, twice its interval after the last run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_by: Option<DateTime<Utc>>,
    /// The guard that has stopped every run since it first tripped, if one has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardTrip>,
    /// The last read-back verification of the state against the dialler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verified>,
    /// Set by the daemon: the run going on now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<Snapshot>,
    /// Set by the daemon: runs since it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<u64>,
    /// Set by the daemon: scheduled slots skipped since it started (a run was still going).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_slots: Option<u64>,
}

/// How many errors `status` shows of a run.
const FIRST_ERRORS: usize = 5;

/// The status of every job of `config` as `store` records it, at `now`.
pub fn collect(config: &Config, store: &Store, now: DateTime<Utc>) -> Result<Status, StateError> {
    let mut status = Status::without_state(config, now);
    for (j, job) in status.jobs.iter_mut().zip(&config.jobs) {
        let last_run = store
            .last_run(&job.name)?
            .and_then(|r| RunSummary::from_record(&r, FIRST_ERRORS));
        j.last_change = store
            .last_change(&job.name)?
            .and_then(|r| RunSummary::from_record(&r, 0));
        j.due_by = match (&job.schedule, &last_run) {
            (Some(schedule), Some(last)) => last
                .ended_at()
                .and_then(|ended| due_by(schedule, job.timezone, ended, last.duration_ms)),
            _ => None,
        };
        j.last_run = last_run;
        j.contacts = store.job(&job.name)?.len() as u64;
        j.guard = store.guard_trip(&job.name)?;
        j.verified = store.verification(&job.name)?;
    }
    Ok(status)
}

/// When a job on `schedule` whose last run ended at `ended` after `took_ms` becomes
/// overdue: the second scheduled time after `ended`, plus as long again as that run took.
/// For a regular schedule that is twice its interval; a schedule with gaps (weekdays
/// only) counts its scheduled times, not hours.
pub(crate) fn due_by(
    schedule: &CronSchedule,
    tz: chrono_tz::Tz,
    ended: DateTime<Utc>,
    took_ms: u64,
) -> Option<DateTime<Utc>> {
    let first = schedule.next_fire(ended, tz)?;
    let second = schedule.next_fire(first, tz)?;
    Some(second + chrono::Duration::milliseconds(took_ms as i64))
}

impl Status {
    /// The status of `config`'s jobs where no state exists yet (no daemon ran, no sync).
    pub fn without_state(config: &Config, now: DateTime<Utc>) -> Status {
        let jobs = config
            .jobs
            .iter()
            .map(|job| JobStatus {
                job: job.name.clone(),
                schedule: job.schedule.as_ref().map(|s| s.to_string()),
                timezone: job.timezone.name().to_string(),
                next_run: job
                    .schedule
                    .as_ref()
                    .and_then(|s| s.next_fire(now, job.timezone)),
                contacts: 0,
                last_run: None,
                last_change: None,
                due_by: None,
                guard: None,
                verified: None,
                running: None,
                runs: None,
                skipped_slots: None,
            })
            .collect();
        Status { daemon: None, jobs }
    }

    /// A few lines per job for a terminal.
    pub fn human(&self) -> String {
        let mut s = String::new();
        match &self.daemon {
            Some(d) => {
                let _ = writeln!(
                    s,
                    "daemon: running (pid {}, since {}, config {})",
                    d.pid,
                    d.since.format("%Y-%m-%d %H:%M:%S UTC"),
                    d.config
                );
            }
            None => {
                let _ = writeln!(s, "daemon: not running (next runs are what it would do)");
            }
        }
        for j in &self.jobs {
            let _ = writeln!(s, "job {}", j.job);
            match (&j.schedule, j.next_run) {
                (Some(sched), Some(next)) => {
                    let local = next.with_timezone(
                        &j.timezone
                            .parse::<chrono_tz::Tz>()
                            .unwrap_or(chrono_tz::UTC),
                    );
                    let _ = writeln!(
                        s,
                        "  schedule: {sched} ({}); next run {}",
                        j.timezone,
                        local.format("%Y-%m-%d %H:%M:%S %Z")
                    );
                }
                (Some(sched), None) => {
                    let _ = writeln!(s, "  schedule: {sched} ({}); never fires again", j.timezone);
                }
                (None, _) => {
                    let _ = writeln!(s, "  schedule: none (manual runs only)");
                }
            }
            let _ = writeln!(s, "  contacts in state: {}", j.contacts);
            match &j.last_run {
                None => {
                    let _ = writeln!(s, "  last run: none yet");
                }
                Some(r) => {
                    let _ = writeln!(
                        s,
                        "  last run: {} ({}, {}), {} in {:.1} s",
                        r.started_at,
                        r.run_id,
                        r.trigger,
                        r.outcome,
                        r.duration_ms as f64 / 1000.0
                    );
                    let _ = writeln!(
                        s,
                        "    {} rows; {} imported, {} updated, {} reset, {} unlocked, {} locked, \
                         {} deleted, {} unchanged; {} invalid, {}, {} with warnings, \
                         {} failed; {} API calls",
                        r.rows,
                        r.imported,
                        r.updated,
                        r.reset,
                        r.unlocked,
                        r.locked,
                        r.deleted,
                        r.unchanged,
                        r.invalid,
                        crate::engine::report::count(r.duplicates, "duplicate"),
                        r.warnings,
                        r.failed,
                        r.api_calls
                    );
                    if let Some(a) = &r.aborted {
                        let _ = writeln!(s, "    stopped: {}", printable(a));
                    }
                    for e in &r.first_errors {
                        let _ = writeln!(s, "    {}", printable(e));
                    }
                }
            }
            match (&j.last_change, &j.last_run) {
                (Some(c), Some(r)) if c.run_id == r.run_id => {
                    let _ = writeln!(s, "  last change: the last run");
                }
                (Some(c), _) => {
                    let _ = writeln!(
                        s,
                        "  last change: {} ({}, {}): {}",
                        c.started_at,
                        c.run_id,
                        c.trigger,
                        c.counts_line()
                    );
                }
                (None, Some(_)) => {
                    let _ = writeln!(s, "  last change: none recorded");
                }
                (None, None) => {}
            }
            match &j.verified {
                Some(v) if v.checked > 0 => {
                    let _ = writeln!(
                        s,
                        "  last verified: {}: {} of {} contacts confirmed, {} re-learned, {} missing, {} with other values",
                        v.at, v.confirmed, v.checked, v.relearned, v.missing, v.values_differ
                    );
                }
                Some(v) => {
                    let _ = writeln!(s, "  last verified: {} (nothing to check yet)", v.at);
                }
                None => {
                    let _ = writeln!(s, "  last verified: never");
                }
            }
            if let Some(g) = &j.guard {
                let _ = writeln!(
                    s,
                    "  GUARD: every run since {} was stopped: {}",
                    g.since,
                    printable(&g.guard)
                );
            }
            if let Some(p) = &j.running {
                let _ = writeln!(
                    s,
                    "  running now: {} rows read, {}/{} contacts done, {} failed",
                    p.rows, p.done, p.planned, p.failed
                );
            }
            if let (Some(runs), Some(skipped)) = (j.runs, j.skipped_slots) {
                let _ = writeln!(
                    s,
                    "  since the daemon started: {runs} runs, {skipped} slots skipped"
                );
            }
        }
        s
    }
}

/// A state in the monitoring-plugin convention (Nagios, Icinga, Sensu): exit code 0, 1, 2
/// or 3. Ordered by how urgent it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Check {
    Ok,
    /// The last run was partial (invalid rows, failed operations, removals withheld).
    Warning,
    /// Nothing to judge by: the state cannot be read, or a scheduled job never ran.
    Unknown,
    /// The last run stopped early or a guard stops the job's runs, or it is overdue.
    Critical,
}

impl Check {
    /// The plugin's exit code.
    pub fn code(self) -> u8 {
        match self {
            Check::Ok => 0,
            Check::Warning => 1,
            Check::Critical => 2,
            Check::Unknown => 3,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Check::Ok => "OK",
            Check::Warning => "WARNING",
            Check::Critical => "CRITICAL",
            Check::Unknown => "UNKNOWN",
        }
    }
}

/// One job's verdict for `status --check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCheck {
    pub check: Check,
    /// `OK job crm: ...`, one line.
    pub line: String,
}

impl Status {
    /// `status --check`: every job's verdict at `now`, the most urgent first (a plugin's
    /// first line is what the monitoring shows), and the worst of them.
    pub fn check(&self, now: DateTime<Utc>) -> (Check, Vec<JobCheck>) {
        let mut checks: Vec<JobCheck> = self.jobs.iter().map(|j| j.check(now)).collect();
        checks.sort_by_key(|c| std::cmp::Reverse(c.check));
        let worst = checks.first().map_or(Check::Ok, |c| c.check);
        (worst, checks)
    }
}

impl JobStatus {
    fn check(&self, now: DateTime<Utc>) -> JobCheck {
        // What was found, each with the state it calls for.
        let mut found: Vec<(Check, String)> = Vec::new();
        match &self.last_run {
            None if self.schedule.is_some() => {
                found.push((Check::Unknown, "no run recorded yet".into()))
            }
            None => found.push((Check::Ok, "no run yet (manual runs only)".into())),
            Some(r) => {
                let check = match r.outcome.as_str() {
                    "ok" => Check::Ok,
                    "partial" => Check::Warning,
                    _ => Check::Critical,
                };
                let what = format!(
                    "last run {} {}: {}",
                    r.started_at,
                    r.outcome,
                    r.counts_line()
                );
                found.push((check, what));
                if let Some(a) = &r.aborted {
                    found.push((Check::Ok, format!("stopped: {}", printable(a))));
                }
            }
        }
        if let Some(g) = &self.guard {
            let what = format!(
                "a guard stops every run since {}: {}",
                g.since,
                printable(&g.guard)
            );
            found.push((Check::Critical, what));
        }
        if let Some(due) = self.due_by.filter(|d| now > *d) {
            let time = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let ended = self.last_run.as_ref().and_then(RunSummary::ended_at);
            let running = if self.running.is_some() {
                " (a run is going on)"
            } else {
                ""
            };
            found.push((
                Check::Critical,
                format!(
                    "overdue: no run has finished since {}, and two scheduled runs were due by {}{running}",
                    ended.map_or_else(String::new, time),
                    time(due)
                ),
            ));
        }
        let check = found.iter().map(|(c, _)| *c).max().unwrap_or(Check::Ok);
        let why: Vec<String> = found.into_iter().map(|(_, w)| w).collect();
        JobCheck {
            check,
            line: format!(
                "{} job {}: {}",
                check.label(),
                printable(&self.job),
                why.join("; ")
            ),
        }
    }
}
