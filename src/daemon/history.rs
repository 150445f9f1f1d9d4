//! `dialsync history`: the runs each job's history keeps (see `state::history`), newest
//! first, and one run's rejected rows and failed operations. The daemon answers it over
//! its control socket; without a daemon the command reads the state itself.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::escape::printable;
use crate::state::{StateError, Store};

/// One finished run as `status` and `history` show it: its counts, less its lists.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RunSummary {
    pub run_id: String,
    pub job: String,
    /// What started it: `schedule`, `manual` or `reload` (empty in records from before there was a
    /// history).
    pub trigger: String,
    pub started_at: String,
    pub duration_ms: u64,
    pub outcome: String,
    pub rows: u64,
    pub new: u64,
    pub changed: u64,
    pub unchanged: u64,
    pub invalid: u64,
    /// Reports stored before duplicates were counted apart have them in `invalid`.
    pub duplicates: u64,
    pub blank: u64,
    /// Rows synced with warnings (0 in reports stored before there were any).
    pub warnings: u64,
    pub imported: u64,
    pub updated: u64,
    pub reset: u64,
    pub locked: u64,
    pub unlocked: u64,
    pub deleted: u64,
    pub failed: u64,
    pub withheld_removals: u64,
    pub api_calls: u64,
    pub retries: u64,
    /// It changed something on the dialler (false in records from before it was kept).
    pub made_changes: bool,
    /// Contacts in the job's state after it, when the run got to the state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contacts: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
    /// A guard overridden with `--force`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forced: Option<String>,
    /// The first few problems (rejected rows, failed operations), for `status`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub first_errors: Vec<String>,
}

/// A row a run rejected or an operation the dialler did not confirm: UserData, row and
/// reason, never a value of the row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowProblem {
    /// `invalid` (a rejected row) or `failed` (an operation).
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// The failed operation (import, update, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    pub reason: String,
}

/// One run with its rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub summary: RunSummary,
    /// The run's rejected rows and failed operations as its report lists them (the first
    /// 100 of each; the counts are complete).
    pub problems: Vec<RowProblem>,
    /// What its report noted besides: an unchanged export, a footer skipped, the state
    /// repacked or written afresh (or why it could not be).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What `history` asks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistoryQuery {
    /// Only this job's runs.
    pub job: Option<String>,
    /// At most this many runs.
    pub limit: usize,
    /// This run, with its rows.
    pub run: Option<String>,
}

/// What `history` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum History {
    Runs { runs: Vec<RunSummary> },
    Run { run: Box<RunDetail> },
}

impl RunSummary {
    /// From a stored record (the JSON of a `JobReport`), with its first `errors` problems.
    pub fn from_record(json: &[u8], errors: usize) -> Option<RunSummary> {
        if errors == 0 {
            return serde_json::from_slice(json).ok();
        }
        // Parsed once for both the counts and the lists.
        let record: serde_json::Value = serde_json::from_slice(json).ok()?;
        let mut summary = RunSummary::deserialize(&record).ok()?;
        summary.first_errors = problems(&record)
            .iter()
            .take(errors)
            .map(RowProblem::line)
            .collect();
        Some(summary)
    }

    /// Whether the run finished (ok or partial), rather than stopping early.
    pub fn finished(&self) -> bool {
        matches!(self.outcome.as_str(), "ok" | "partial")
    }

    /// When it ended.
    pub fn ended_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let start = chrono::DateTime::parse_from_rfc3339(&self.started_at).ok()?;
        Some(start.to_utc() + chrono::Duration::milliseconds(self.duration_ms as i64))
    }

    /// What it did, in one line: the counts that are not zero.
    pub fn counts_line(&self) -> String {
        let mut parts = vec![crate::engine::report::count(self.rows, "row")];
        for (n, what) in [
            (self.imported, "imported"),
            (self.updated, "updated"),
            (self.reset, "reset"),
            (self.unlocked, "unlocked"),
            (self.locked, "locked"),
            (self.deleted, "deleted"),
            (self.invalid, "invalid"),
            (self.duplicates, "duplicate"),
            (self.failed, "failed"),
            (self.withheld_removals, "removals withheld"),
        ] {
            if n > 0 {
                parts.push(if what == "duplicate" {
                    crate::engine::report::count(n, what)
                } else {
                    format!("{n} {what}")
                });
            }
        }
        if !self.made_changes && self.failed == 0 {
            parts.push("nothing to change".into());
        }
        parts.push(crate::engine::report::count(self.api_calls, "API call"));
        parts.join(", ")
    }
}

impl RowProblem {
    /// One line for a terminal.
    pub fn line(&self) -> String {
        let mut s = String::new();
        if let Some(row) = self.row {
            let _ = write!(s, "row {row}");
        }
        if let Some(k) = &self.user_data {
            if s.is_empty() {
                let _ = write!(s, "UserData {}", printable(k));
            } else {
                let _ = write!(s, " (UserData {})", printable(k));
            }
        }
        if let Some(op) = &self.operation {
            let _ = write!(s, ": {op} failed");
        }
        let _ = write!(s, ": {}", printable(&self.reason));
        s
    }
}

/// The rejected rows and failed operations of a stored report.
fn problems(v: &serde_json::Value) -> Vec<RowProblem> {
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let mut out = Vec::new();
    for p in v["problems"].as_array().into_iter().flatten() {
        out.push(RowProblem {
            kind: "invalid".into(),
            row: p["at"]["row"].as_u64(),
            user_data: text(&p["key"]),
            operation: None,
            reason: text(&p["reason"]).unwrap_or_default(),
        });
    }
    for f in v["failures"].as_array().into_iter().flatten() {
        out.push(RowProblem {
            kind: "failed".into(),
            row: None,
            user_data: text(&f["user_data"]),
            operation: text(&f["operation"]),
            reason: text(&f["error"]).unwrap_or_default(),
        });
    }
    out
}

/// Answers `query` from `store`.
pub fn collect(store: &Store, query: &HistoryQuery) -> Result<Option<History>, StateError> {
    if let Some(id) = &query.run {
        return Ok(store.find_run(id)?.and_then(|json| {
            let record: serde_json::Value = serde_json::from_slice(&json).ok()?;
            Some(History::Run {
                run: Box::new(RunDetail {
                    summary: RunSummary::deserialize(&record).ok()?,
                    problems: problems(&record),
                    notes: Vec::deserialize(&record["notes"]).unwrap_or_default(),
                }),
            })
        }));
    }
    let jobs = match &query.job {
        Some(j) => vec![j.clone()],
        None => store.history_jobs(),
    };
    let mut runs = Vec::new();
    for job in jobs {
        for json in store.history(&job, query.limit)? {
            runs.extend(RunSummary::from_record(&json, 0));
        }
    }
    // Newest first across jobs (RFC 3339 UTC times sort as text).
    runs.sort_by(|a, b| b.started_at.cmp(&a.started_at));
    runs.truncate(query.limit);
    Ok(Some(History::Runs { runs }))
}

impl History {
    /// For a terminal: a table of runs, or one run with its rows.
    pub fn human(&self) -> String {
        let mut s = String::new();
        match self {
            History::Runs { runs } if runs.is_empty() => {
                let _ = writeln!(s, "no runs recorded yet");
            }
            History::Runs { runs } => {
                let _ = writeln!(
                    s,
                    "{:<20}  {:<12}  {:<8}  {:<12}  {:>8}  WHAT",
                    "STARTED (UTC)", "JOB", "TRIGGER", "OUTCOME", "TIME"
                );
                for r in runs {
                    let _ = writeln!(
                        s,
                        "{:<20}  {:<12}  {:<8}  {:<12}  {:>8}  {}  [{}]",
                        r.started_at.replace('T', " ").trim_end_matches('Z'),
                        printable(&r.job),
                        r.trigger,
                        r.outcome,
                        format!("{:.1} s", r.duration_ms as f64 / 1000.0),
                        r.counts_line(),
                        r.run_id
                    );
                }
            }
            History::Run { run } => {
                let r = &run.summary;
                let _ = writeln!(s, "run {} of job {}", r.run_id, printable(&r.job));
                let _ = writeln!(
                    s,
                    "  started {} ({}), {:.1} s, outcome {}",
                    r.started_at,
                    r.trigger,
                    r.duration_ms as f64 / 1000.0,
                    r.outcome
                );
                let _ = writeln!(
                    s,
                    "  rows: {} read: {} new, {} changed, {} unchanged, {} invalid, {}, {} blank; {} with warnings",
                    r.rows,
                    r.new,
                    r.changed,
                    r.unchanged,
                    r.invalid,
                    crate::engine::report::count(r.duplicates, "duplicate"),
                    r.blank,
                    r.warnings
                );
                let _ = writeln!(
                    s,
                    "  contacts: {} imported, {} updated, {} reset, {} unlocked, {} locked, {} deleted; {} failed, {} removals withheld",
                    r.imported, r.updated, r.reset, r.unlocked, r.locked, r.deleted, r.failed, r.withheld_removals
                );
                let _ = writeln!(
                    s,
                    "  {}, {} of them retries",
                    crate::engine::report::count(r.api_calls, "API call"),
                    r.retries
                );
                if let Some(f) = &r.forced {
                    let _ = writeln!(s, "  forced past: {}", printable(f));
                }
                if let Some(a) = &r.aborted {
                    let _ = writeln!(s, "  STOPPED: {}", printable(a));
                }
                for n in &run.notes {
                    let _ = writeln!(s, "  note: {}", printable(n));
                }
                let listed = run.problems.len() as u64;
                let total = r.invalid + r.duplicates + r.failed;
                for p in &run.problems {
                    let _ = writeln!(s, "  {}", p.line());
                }
                if total > listed {
                    let _ = writeln!(
                        s,
                        "  ({} rows and operations in all; the history keeps the first 100 of each kind)",
                        total
                    );
                }
            }
        }
        s
    }
}
