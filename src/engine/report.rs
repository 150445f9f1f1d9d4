//! What a run did, for people (a summary per job) and scripts (`--output json`), and the
//! exit code that sums it up.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::engine::mapping::Rejected;
use crate::engine::outcome::{Abort, Exit};
use crate::engine::plan::Doubts;
use crate::engine::plan::{Plan, RemovalKind, RowWarning, SpoolError};
use crate::engine::run::Trigger;
use crate::escape::printable;
use crate::state::Verified;

/// How many rejected rows and failures a report lists (the counts are always complete).
pub(crate) const LIST_LIMIT: usize = 100;
/// How many of each kind the human summary shows.
const SHOW: usize = 10;

/// The result of one job's run. In a dry run the counts are what the run would do.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobReport {
    pub job: String,
    /// Unique per run; log lines of the run carry it as `run`.
    pub run_id: String,
    /// When the run started (RFC 3339, UTC).
    pub started_at: String,
    pub dry_run: bool,
    /// What started the run.
    pub trigger: Trigger,
    pub imported: u64,
    pub updated: u64,
    pub reset: u64,
    pub locked: u64,
    pub unlocked: u64,
    pub deleted: u64,
    /// Rows of contacts new to the dialler (to import).
    pub new: u64,
    /// Rows of known contacts with something to send (an update, reset or unlock).
    pub changed: u64,
    /// Rows whose contact is as the export says.
    pub unchanged: u64,
    /// Of those, rows recognised as unchanged by their hash alone, without being mapped
    /// (see the state digest).
    pub unchanged_by_hash: u64,
    /// Rows rejected (see `problems`), duplicates aside.
    pub invalid: u64,
    /// Rows whose UserData an earlier row had: only the first is synced.
    pub duplicates: u64,
    /// Contacts in the job's state after the run (none when the run did not get to it,
    /// or changed nothing as a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contacts: Option<u64>,
    /// Contacts absent from the export that stay as they are (locked already, or
    /// `on_missing = "keep"`). Not rows.
    pub absent_kept: u64,
    pub failed: u64,
    /// Of those, how many of each operation (`import`, `update`, ...).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub failed_by_operation: std::collections::BTreeMap<&'static str, u64>,
    pub api_calls: u64,
    /// Calls sent again after a passing failure (included in `api_calls`).
    pub retries: u64,
    /// Rows read from the export: `new + changed + unchanged + invalid + duplicates +
    /// blank`.
    pub rows: u64,
    /// Of those, blank lines and rows of empty fields, skipped.
    pub blank: u64,
    /// What was skipped that is no problem but worth knowing (a report's footer).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Contacts to lock or delete that were gone from the dialler already.
    pub already_gone: u64,
    /// Deletes not done because the stored ID held another contact (the dialler was
    /// restored or renumbered): the ID was re-learned, the next run deletes after checking.
    pub stale_ids: u64,
    /// Removals held back for lack of evidence that their record left the export.
    pub withheld_removals: u64,
    /// Why they were held back.
    #[serde(skip_serializing_if = "Doubts::is_empty")]
    pub withheld: Doubts,
    pub duration_ms: u64,
    /// Of that, reading the export and planning (no network).
    pub plan_ms: u64,
    /// Of that, repacking what runs rewrote in the state (see `state::repack`), at the
    /// run's end; absent when nothing was repacked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repack_ms: Option<u64>,
    /// The job's entries were due to be repacked and are left to the compaction of the
    /// whole state after the runs of a manual sync (see `engine::run::sync`).
    #[serde(skip)]
    pub compaction_due: bool,
    /// Why the run stopped early, if it did (shown as `aborted`, its cause chain). Nothing
    /// after this point was sent.
    #[serde(skip)]
    pub stopped: Option<Arc<Abort>>,
    /// A guard that tripped but was overridden with `--force`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forced: Option<String>,
    /// Imports of an interrupted earlier run found on the dialler and stored.
    pub recovered: u64,
    /// Contacts whose last call was in flight when an earlier run stopped: their state was
    /// not trusted, and they were planned from what the export says.
    pub rechecked: u64,
    /// What reading the campaign back found and fixed, when the run verified its state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verified>,
    /// The run only verified the state (`dialsync verify`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub verify_only: bool,
    /// The first rejected rows (row number, UserData if readable, reason).
    pub problems: Vec<Rejected>,
    /// Rows synced with warnings: a value left out (a bad second phone number, an agent
    /// the dialler does not know) or sent otherwise than written (an extension left off).
    pub warnings: u64,
    /// The first of them (row number, UserData, what).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub row_warnings: Vec<RowWarning>,
    /// The first failed operations.
    pub failures: Vec<Failure>,
    /// The dialler answered a call of this run without refusing the token.
    #[serde(skip)]
    pub token_accepted: bool,
    /// What the run read and delivered of the dialling outcomes (`[job.outcomes]`,
    /// `on_done`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcomes: Option<crate::outcomes::OutcomesReport>,
    /// Of the locks, those of contacts whose result is done or aborted (`on_done`).
    #[serde(skip_serializing_if = "is_zero")]
    pub done_locks: u64,
    /// The most operations read from the plan's spools and not yet done at any one time
    /// (the executor's window: the plan is never in memory whole).
    #[serde(skip)]
    pub held_peak: u64,
    /// The export is as the last clean run read it (an HTTP export answered 304 Not
    /// Modified, or an export file holds the same bytes): nothing was read or planned.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub export_unchanged: bool,
    /// Whether the run downloaded its export, with what (for the next run's conditional
    /// request).
    #[serde(skip)]
    pub(crate) fetch: Fetch,
    /// In a dry run: samples of what would be done.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub preview: Vec<PreviewLine>,
}

/// What a run downloaded (an HTTP source) or read (an export file).
#[derive(Debug, Clone, Default)]
pub(crate) enum Fetch {
    #[default]
    Nothing,
    /// A download (or an attempt), with the validators of a whole unpaged one.
    Downloaded(Option<crate::source::http::Validators>),
    /// An export file read and planned: what was read of it.
    Read(crate::source::FileSeen),
}

/// One operation the dialler did not confirm.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub user_data: String,
    pub operation: &'static str,
    pub error: String,
    /// Runs in a row in which this contact failed, this one included.
    pub runs: u32,
}

/// One planned operation, for the dry-run listing.
#[derive(Debug, Clone, Serialize)]
pub struct PreviewLine {
    pub operation: &'static str,
    pub user_data: String,
    /// The fields an update would send (names only, never values).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row: Option<u64>,
}

/// A report as scripts and `status` read it: its fields and its `outcome`, which is
/// derived, not stored.
#[derive(Serialize)]
struct Published<'a> {
    #[serde(flatten)]
    report: &'a JobReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    aborted: Option<String>,
    outcome: Exit,
    /// Whether it changed anything on the dialler (see `changed_anything`).
    made_changes: bool,
}

impl JobReport {
    fn published(&self) -> Published<'_> {
        Published {
            report: self,
            aborted: self.stopped.as_deref().map(Abort::chain),
            outcome: self.exit(),
            made_changes: self.changed_anything(),
        }
    }

    /// The report as one JSON object (what the state keeps as the job's last run).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.published()).expect("reports serialize")
    }

    /// The same object as a JSON value (to embed in another).
    pub(crate) fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self.published()).expect("reports serialize")
    }

    /// The report of a run of `job` starting now, with a fresh run id: its start to the
    /// millisecond, the job, a number counting the process's runs and a random part (the
    /// history holds runs of many processes: manual syncs, daemons).
    pub fn begin(job: &str, dry_run: bool) -> JobReport {
        static SEQ: AtomicU64 = AtomicU64::new(1);
        let now = chrono::Utc::now();
        JobReport {
            job: job.to_string(),
            run_id: format!(
                "{}-{job}-{}{:04x}",
                now.format("%Y%m%dT%H%M%S%.3fZ"),
                SEQ.fetch_add(1, Ordering::Relaxed),
                fastrand::u16(..)
            ),
            started_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            dry_run,
            ..JobReport::default()
        }
    }

    /// Records why the run stopped; the first reason stands (what came after it is a
    /// consequence).
    pub fn stop(&mut self, why: Abort) {
        if self.stopped.is_none() {
            self.stopped = Some(Arc::new(why));
        }
    }

    /// Whether the run is one of a sync: not a dry run (which changes nothing) nor a
    /// verification (which syncs nothing). Only these are recorded in the history,
    /// counted in the metrics and reported to the alerts.
    pub fn is_sync_run(&self) -> bool {
        !self.dry_run && !self.verify_only
    }

    /// Whether the run changed anything on the dialler (a dry run never does).
    pub fn changed_anything(&self) -> bool {
        !self.dry_run
            && self.imported
                + self.updated
                + self.reset
                + self.locked
                + self.unlocked
                + self.deleted
                + self.recovered
                > 0
    }

    /// Whether the run read the export and found nothing to do and nothing to report: no
    /// operation, no rejected, doubtful or absent row, no warning, no note. The same export
    /// file against the same state makes such a run again, so the next run may go by the
    /// file's length and hash instead (see `engine::job::Conditional`).
    pub(crate) fn quiet_no_op(&self) -> bool {
        self.exit() == Exit::Ok
            && !self.dry_run
            && !self.changed_anything()
            && self.new + self.changed + self.failed == 0
            && self.invalid + self.duplicates + self.warnings == 0
            && self.withheld_removals + self.stale_ids + self.already_gone == 0
            && self.absent_kept + self.rechecked + self.done_locks == 0
            && self.withheld == Doubts::default()
            && self.notes.is_empty()
    }

    /// How the run ended.
    pub fn exit(&self) -> Exit {
        match &self.stopped {
            Some(why) => why.exit(),
            None if self.invalid > 0
                || self.duplicates > 0
                || self.failed > 0
                || self.withheld_removals > 0
                || self.stale_ids > 0
                || self.outcomes.as_ref().is_some_and(|o| o.undelivered()) =>
            {
                Exit::Partial
            }
            None => Exit::Ok,
        }
    }

    /// A few lines for a terminal.
    pub fn human(&self) -> String {
        let mut s = String::new();
        if self.verify_only {
            let _ = writeln!(s, "job {}: verified against the dialler", self.job);
            if let Some(why) = &self.stopped {
                let _ = writeln!(s, "  STOPPED: {}", printable(&why.chain()));
            }
            if let Some(v) = &self.verified {
                verification_lines(&mut s, v);
            }
            return s;
        }
        let verb =
            |done: &'static str, would: &'static str| if self.dry_run { would } else { done };
        let _ = writeln!(
            s,
            "job {}{}: {} read",
            self.job,
            if self.dry_run {
                " (dry run: nothing was changed)"
            } else {
                ""
            },
            count(self.rows, "row"),
        );
        // The rows, each counted once; then what was (or would be) done.
        let mut rows = vec![
            format!("{} new", self.new),
            format!("{} changed", self.changed),
            format!("{} unchanged", self.unchanged),
            format!("{} invalid", self.invalid),
        ];
        if self.duplicates > 0 {
            rows.push(count(self.duplicates, "duplicate"));
        }
        if self.blank > 0 {
            rows.push(format!("{} blank (skipped)", self.blank));
        }
        let _ = writeln!(s, "  rows: {}", rows.join(", "));
        let counts = [
            (verb("imported", "would import"), self.imported),
            (verb("updated", "would update"), self.updated),
            (verb("reset", "would reset"), self.reset),
            (verb("unlocked", "would unlock"), self.unlocked),
            (verb("locked", "would lock"), self.locked),
            (verb("deleted", "would delete"), self.deleted),
        ];
        let line = counts
            .iter()
            .map(|(w, n)| format!("{n} {w}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(s, "  contacts: {line}");
        let _ = writeln!(
            s,
            "  {}, {}",
            count(self.failed, "failed operation"),
            count(self.api_calls, "API call")
        );
        if self.absent_kept > 0 {
            let _ =
                writeln!(
                s,
                "  {} not in the export and left as {} (locked already, or on_missing = \"keep\")",
                count(self.absent_kept, "contact"),
                if self.absent_kept == 1 { "it is" } else { "they are" }
            );
        }
        for note in &self.notes {
            let _ = writeln!(s, "  note: {note}");
        }
        if let Some(v) = &self.verified {
            verification_lines(&mut s, v);
        }
        if let Some(o) = &self.outcomes {
            self.outcome_lines(&mut s, o);
        }
        if self.rechecked > 0 {
            let _ = writeln!(
                s,
                "  {} re-sent from the export: an earlier run stopped while their calls were in flight",
                count(self.rechecked, "contact")
            );
        }
        if self.stale_ids > 0 {
            let _ = writeln!(
                s,
                "  {} deletes not done: the stored ID held another contact (was the dialler restored?); the IDs were re-learned, the next sync checks and deletes",
                self.stale_ids
            );
        }
        if self.already_gone > 0 {
            let _ = writeln!(
                s,
                "  {} already gone from the dialler; forgotten",
                count(self.already_gone, "contact")
            );
        }
        if self.withheld_removals > 0 {
            let _ = writeln!(
                s,
                "  {} locks/deletes held back: there is no proof that their records left the export",
                self.withheld_removals
            );
            let d = &self.withheld;
            if d.unreadable_rows > 0 {
                let _ = writeln!(
                    s,
                    "    {} could not be read, and any of them could be one of these contacts: fix the rows below and sync again",
                    count(d.unreadable_rows, "row")
                );
            }
            if d.rows_without_key > 0 {
                let _ = writeln!(
                    s,
                    "    {} without a usable UserData, and any of them could be one of these contacts: fix them in the CRM",
                    count(d.rows_without_key, "row")
                );
            }
            for k in d.keys_in_export.iter().take(SHOW) {
                let _ = writeln!(
                    s,
                    "    UserData {} still stands in the export on line {}, though no row has it as its key: check the quoting around that line",
                    printable(&k.user_data),
                    k.line
                );
            }
        }
        if let Some(why) = &self.stopped {
            let _ = writeln!(s, "  STOPPED: {}", printable(&why.chain()));
        }
        if !self.preview.is_empty() {
            let _ = writeln!(s, "  planned:");
            let mut shown: Vec<(&str, usize)> = Vec::new();
            for p in &self.preview {
                let n = match shown.iter_mut().find(|(op, _)| *op == p.operation) {
                    Some((_, n)) => {
                        *n += 1;
                        *n
                    }
                    None => {
                        shown.push((p.operation, 1));
                        1
                    }
                };
                if n <= SHOW {
                    let fields = if p.fields.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", p.fields.join(", "))
                    };
                    let row = p.row.map(|r| format!(" [row {r}]")).unwrap_or_default();
                    let _ = writeln!(
                        s,
                        "    {:<7} {}{fields}{row}",
                        p.operation,
                        printable(&p.user_data)
                    );
                }
            }
        }
        list_first(
            &mut s,
            &self.problems,
            self.invalid + self.duplicates,
            "more rejected row",
            |p| {
                let key = p
                    .key
                    .as_deref()
                    .map(|k| format!(" (UserData {})", printable(k)))
                    .unwrap_or_default();
                format!("invalid {}{key}: {}", p.at, printable(&p.reason))
            },
        );
        list_first(
            &mut s,
            &self.row_warnings,
            self.warnings,
            "more row warning",
            |w| {
                format!(
                    "warning {} (UserData {}): {}",
                    w.at,
                    printable(&w.user_data),
                    printable(&w.warning)
                )
            },
        );
        list_first(
            &mut s,
            &self.failures,
            self.failed,
            "more failed operation",
            |f| {
                format!(
                    "failed {} of UserData {}: {}",
                    f.operation,
                    printable(&f.user_data),
                    printable(&f.error)
                )
            },
        );
        s
    }
}

/// The first few of `items` (a line each, made by `line`), then how many more of `total`
/// there are (`more`: the noun, e.g. "more failed operation").
fn list_first<T>(s: &mut String, items: &[T], total: u64, more: &str, line: impl Fn(&T) -> String) {
    let shown = items.len().min(SHOW);
    for item in &items[..shown] {
        let _ = writeln!(s, "  {}", line(item));
    }
    if total > shown as u64 {
        let _ = writeln!(
            s,
            "  ... and {} (see --output json)",
            count(total - shown as u64, more)
        );
    }
}

/// `n` and the noun, plural unless `n` is 1: "1 row", "2 rows".
pub(crate) fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

impl JobReport {
    /// What was read and delivered of the outcomes.
    fn outcome_lines(&self, s: &mut String, o: &crate::outcomes::OutcomesReport) {
        let mut line = format!(
            "  outcomes: {} changed of {} listed",
            o.changed,
            count(o.listed, "contact")
        );
        let verb = if self.dry_run { "would write" } else { "wrote" };
        match &o.file {
            Some(f) => {
                let _ = write!(
                    line,
                    "; {verb} {} to {}",
                    count(o.delivered, "row"),
                    printable(f)
                );
            }
            None if o.delivered > 0 => {
                let what = if self.dry_run {
                    "to deliver"
                } else {
                    "delivered"
                };
                let _ = write!(line, "; {} {what}", o.delivered);
            }
            None => {}
        }
        if o.history_calls > 0 {
            let _ = write!(line, " ({})", count(o.history_calls, "history call"));
        }
        let _ = writeln!(s, "{line}");
        if self.done_locks > 0 {
            let _ = writeln!(
                s,
                "  {} {} because {} result is done or aborted (on_done = \"lock\")",
                count(self.done_locks, "contact"),
                if self.dry_run {
                    "would be locked"
                } else {
                    "locked"
                },
                if self.done_locks == 1 { "its" } else { "their" }
            );
        }
        if o.batches_sent + o.batches_waiting > 0 {
            let batches = if o.batches_sent == 1 {
                "batch"
            } else {
                "batches"
            };
            let _ = writeln!(
                s,
                "  outcome webhook: {} {batches} sent, {} waiting for the next run",
                o.batches_sent, o.batches_waiting
            );
        }
        if let Some(e) = &o.error {
            let _ = writeln!(
                s,
                "  OUTCOMES NOT DELIVERED: {}; the next run delivers them again",
                printable(e)
            );
        }
        for row in o.preview.iter().take(SHOW) {
            let cells: Vec<String> = row
                .0
                .iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(t) => format!("{k}={}", printable(t)),
                    serde_json::Value::Null => format!("{k}="),
                    other => format!("{k}={other}"),
                })
                .collect();
            let _ = writeln!(s, "    {}", cells.join("  "));
        }
        if o.delivered > SHOW as u64 && !o.preview.is_empty() {
            let _ = writeln!(s, "    ... and {} more", o.delivered - SHOW as u64);
        }
    }
}

/// What a verification found, for a terminal.
fn verification_lines(s: &mut String, v: &Verified) {
    let _ = writeln!(
        s,
        "  state checked against the dialler's {} contacts: {} of {} confirmed under their ID",
        v.listed, v.confirmed, v.checked
    );
    if v.relearned > 0 {
        let _ = writeln!(
            s,
            "    {} found under another ID: re-learned (their lock state is set as the export says)",
            v.relearned
        );
    }
    if v.missing > 0 {
        let _ = writeln!(
            s,
            "    {} missing on the dialler: imported again if they are in the export",
            v.missing
        );
    }
    if v.values_differ > 0 {
        let _ = writeln!(
            s,
            "    {} hold other values than were sent: those fields are sent again",
            v.values_differ
        );
    }
}

/// The exit code of a run over several jobs: the worst of them.
pub fn exit_of(reports: &[JobReport]) -> Exit {
    Exit::worst(reports.iter().map(JobReport::exit))
}

/// The `--output json` document.
pub fn json(reports: &[JobReport]) -> String {
    let jobs: Vec<Published> = reports.iter().map(JobReport::published).collect();
    serde_json::to_string_pretty(&serde_json::json!({ "jobs": jobs })).expect("reports serialize")
}

/// The planned operations, in the order a dry run lists them.
pub(crate) fn preview(plan: &Plan) -> Result<Vec<PreviewLine>, SpoolError> {
    let most = LIST_LIMIT * 5;
    let mut out = Vec::new();
    for c in plan.imports.first(most)? {
        out.push(PreviewLine {
            operation: "import",
            user_data: c.key.clone(),
            fields: Vec::new(),
            row: Some(c.at.row),
        });
    }
    for c in plan.changes.first(most)? {
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
    for r in plan.removals.first(most)? {
        out.push(PreviewLine {
            operation: match r.kind {
                RemovalKind::Lock => "lock",
                RemovalKind::Delete => "delete",
            },
            user_data: r.key,
            fields: Vec::new(),
            row: None,
        });
    }
    out.truncate(most);
    Ok(out)
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::RowRef;

    /// The outcome lines: what was written where, the webhook's batches (plural
    /// right), an undelivered outcome's reason, and the done locks.
    #[test]
    fn outcome_lines_say_what_was_delivered_and_what_waits() {
        let mut r = JobReport::begin("leads", false);
        r.done_locks = 1;
        r.outcomes = Some(crate::outcomes::OutcomesReport {
            listed: 10,
            changed: 3,
            delivered: 3,
            file: Some("/srv/o.csv".into()),
            history_calls: 3,
            batches_sent: 2,
            batches_waiting: 1,
            error: Some("the outcome webhook refused with HTTP 400".into()),
            ..Default::default()
        });
        let text = r.human();
        for line in [
            "  outcomes: 3 changed of 10 contacts listed; wrote 3 rows to /srv/o.csv (3 history calls)\n",
            "  1 contact locked because its result is done or aborted (on_done = \"lock\")\n",
            "  outcome webhook: 2 batches sent, 1 waiting for the next run\n",
            "  OUTCOMES NOT DELIVERED: the outcome webhook refused with HTTP 400; the next run delivers them again\n",
        ] {
            assert!(text.contains(line), "{line:?} not in:\n{text}");
        }
        assert_eq!(
            r.exit(),
            Exit::Partial,
            "undelivered outcomes make the run partial"
        );
    }

    /// Each list shows its first few, then how many more there are, counted from the
    /// report's complete counts (the lists hold at most [`LIST_LIMIT`]).
    #[test]
    fn lists_show_the_first_few_and_count_the_rest() {
        let rejected = |row| Rejected {
            at: RowRef::at(row),
            key: Some(format!("K{row}")),
            reason: "bad".into(),
            unreadable: false,
        };
        let report = JobReport {
            invalid: 150,
            duplicates: 1,
            problems: (2..2 + LIST_LIMIT as u64).map(rejected).collect(),
            warnings: 11,
            row_warnings: (2..13)
                .map(|row| RowWarning {
                    at: RowRef::at(row),
                    user_data: format!("K{row}"),
                    warning: "left out".into(),
                })
                .collect(),
            failed: 1,
            failures: vec![Failure {
                user_data: "K9".into(),
                operation: "update",
                error: "HTTP 400".into(),
                runs: 1,
            }],
            ..JobReport::default()
        };
        let text = report.human();
        assert_eq!(text.matches("  invalid row").count(), SHOW, "{text}");
        assert!(
            text.contains("  invalid row 2 (UserData K2): bad\n"),
            "{text}"
        );
        assert!(
            text.contains("  ... and 141 more rejected rows (see --output json)"),
            "{text}"
        );
        assert_eq!(text.matches("  warning row").count(), SHOW, "{text}");
        assert!(
            text.contains("  ... and 1 more row warning (see --output json)"),
            "{text}"
        );
        assert!(
            text.contains("  failed update of UserData K9: HTTP 400\n"),
            "{text}"
        );
        assert!(!text.contains("more failed"), "{text}");
        assert!(text.contains("  1 failed operation, 0 API calls"), "{text}");
    }
}
