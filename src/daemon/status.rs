//! `dialsync status`: per job the last run, the next scheduled run and the size of its
//! state. The daemon answers it over its control socket (it holds the state); without a
//! daemon the command reads the state itself.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::Config;
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
    pub last_run: Option<LastRun>,
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

/// What `status` shows of the last run: the stored report, less its lists.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LastRun {
    pub run_id: String,
    pub started_at: String,
    pub duration_ms: u64,
    pub outcome: String,
    pub rows: u64,
    pub imported: u64,
    pub updated: u64,
    pub reset: u64,
    pub locked: u64,
    pub unlocked: u64,
    pub deleted: u64,
    pub unchanged: u64,
    pub invalid: u64,
    /// Reports stored before duplicates were counted apart have them in `invalid`.
    #[serde(default)]
    pub duplicates: u64,
    /// Rows synced with warnings (0 in reports stored before there were any).
    #[serde(default)]
    pub warnings: u64,
    pub failed: u64,
    pub api_calls: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
    /// The first few problems: rejected rows and failed operations.
    pub first_errors: Vec<String>,
}

/// How many errors `status` shows of a run.
const FIRST_ERRORS: usize = 5;

impl LastRun {
    /// From a stored report (the JSON of a `JobReport`).
    pub fn from_report(json: &[u8]) -> Option<LastRun> {
        let v: serde_json::Value = serde_json::from_slice(json).ok()?;
        let mut last: LastRun = serde_json::from_value(v.clone()).ok()?;
        let mut errors = Vec::new();
        for p in v["problems"].as_array().into_iter().flatten() {
            errors.push(format!(
                "row {}: {}",
                p["at"]["row"],
                p["reason"].as_str().unwrap_or("")
            ));
        }
        for f in v["failures"].as_array().into_iter().flatten() {
            errors.push(format!(
                "UserData {}: {}: {}",
                f["user_data"].as_str().unwrap_or(""),
                f["operation"].as_str().unwrap_or(""),
                f["error"].as_str().unwrap_or("")
            ));
        }
        errors.truncate(FIRST_ERRORS);
        last.first_errors = errors;
        Some(last)
    }
}

/// The status of every job of `config` as `store` records it, at `now`.
pub fn collect(config: &Config, store: &Store, now: DateTime<Utc>) -> Result<Status, StateError> {
    let mut jobs = Vec::with_capacity(config.jobs.len());
    for job in &config.jobs {
        jobs.push(JobStatus {
            job: job.name.clone(),
            schedule: job.schedule.as_ref().map(|s| s.to_string()),
            timezone: job.timezone.name().to_string(),
            next_run: job
                .schedule
                .as_ref()
                .and_then(|s| s.next_fire(now, job.timezone)),
            contacts: store.job(&job.name)?.len() as u64,
            last_run: store
                .last_run(&job.name)?
                .and_then(|r| LastRun::from_report(&r)),
            guard: store.guard_trip(&job.name)?,
            verified: store.verification(&job.name)?,
            running: None,
            runs: None,
            skipped_slots: None,
        });
    }
    Ok(Status { daemon: None, jobs })
}

impl Status {
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
                        "  last run: {} ({}), {} in {:.1} s",
                        r.started_at,
                        r.run_id,
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
