//! Prometheus metrics: what the daemon serves on `[metrics] listen` at `/metrics`.
//!
//! With `prometheus-client`, the Prometheus project's own Rust client: an explicit
//! registry (no global state, so tests and several daemons in one process do not mix),
//! typed label sets, and the OpenMetrics text format that Prometheus scrapes (counters
//! end in `_total`, `# EOF` closes the page).
//!
//! Labels never hold personal data: a job's name, an outcome, an operation kind, a
//! guard's name, an endpoint with its IDs replaced by `{id}` (UserData travels in the
//! query, which is left out), an HTTP status.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::daemon::history::RunSummary;
use crate::engine::outcome::Abort;
use crate::engine::report::JobReport;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    job: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    job: String,
    kind: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuardLabels {
    job: String,
    guard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

type Seconds = Gauge<f64, AtomicU64>;

fn duration_histogram() -> Histogram {
    // 5 ms to about 20 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

/// The dialler API's metrics, shared by every client of the tenant (see
/// `dialler::Tenant`).
#[derive(Debug)]
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    retries: Counter,
    durations: Family<EndpointLabel, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics {
            requests: Family::default(),
            retries: Counter::default(),
            durations: Family::new_with_constructor(duration_histogram),
            in_flight: Gauge::default(),
        }
    }
}

impl ApiMetrics {
    /// One request answered with `status` (`None`: no answer: no connection, a timeout)
    /// after `took`. `path` is below the ClientsID; its numbers become `{id}`.
    pub(crate) fn request(&self, path: &str, status: Option<u16>, took: Duration) {
        let endpoint = endpoint(path);
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.clone(),
                status: status.map_or_else(|| "none".to_string(), |s| s.to_string()),
            })
            .inc();
        self.durations
            .get_or_create(&EndpointLabel { endpoint })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn retry(&self) {
        self.retries.inc();
    }

    pub(crate) fn in_flight(&self) -> &Gauge {
        &self.in_flight
    }
}

/// An RFC 3339 time as Unix seconds (0 for a time that cannot be read).
fn unix(time: &str) -> f64 {
    chrono::DateTime::parse_from_rfc3339(time).map_or(0.0, |t| t.timestamp() as f64)
}

/// `/dialler/contacts/contact/123/lock` -> `/dialler/contacts/contact/{id}/lock`.
fn endpoint(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
                "{id}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Every metric the daemon serves.
pub struct Metrics {
    registry: Registry,
    runs: Family<RunLabels, Counter>,
    operations: Family<OperationLabels, Counter>,
    invalid_rows: Family<JobLabel, Counter>,
    last_run_start: Family<JobLabel, Seconds>,
    last_run_duration: Family<JobLabel, Seconds>,
    last_success: Family<JobLabel, Seconds>,
    guard_trips: Family<GuardLabels, Counter>,
    export_rows: Family<JobLabel, Gauge>,
    state_contacts: Family<JobLabel, Gauge>,
    api: Arc<ApiMetrics>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("dialsync"),
            runs: Family::default(),
            operations: Family::default(),
            invalid_rows: Family::default(),
            last_run_start: Family::default(),
            last_run_duration: Family::default(),
            last_success: Family::default(),
            guard_trips: Family::default(),
            export_rows: Family::default(),
            state_contacts: Family::default(),
            api: Arc::default(),
        };
        let r = &mut m.registry;
        r.register("runs", "Finished runs, by job and outcome", m.runs.clone());
        r.register(
            "operations",
            "Contact operations sent, by job, kind (import, update, reset, unlock, lock, delete) and result (ok, failed)",
            m.operations.clone(),
        );
        r.register(
            "invalid_rows",
            "Export rows rejected (invalid or duplicate UserData), by job",
            m.invalid_rows.clone(),
        );
        r.register(
            "last_run_start_timestamp_seconds",
            "When the job's last run started (Unix time)",
            m.last_run_start.clone(),
        );
        r.register(
            "last_run_duration_seconds",
            "How long the job's last run took",
            m.last_run_duration.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "When the job's last run that finished (ok or partial, not stopped) started (Unix time)",
            m.last_success.clone(),
        );
        r.register(
            "guard_trips",
            "Runs stopped by a guard, by job and guard",
            m.guard_trips.clone(),
        );
        r.register(
            "export_rows",
            "Rows in the job's export at its last run",
            m.export_rows.clone(),
        );
        r.register(
            "state_contacts",
            "Contacts in the job's state",
            m.state_contacts.clone(),
        );
        let api = &m.api;
        r.register(
            "api_requests",
            "Dialler API requests, by endpoint and HTTP status (none: no answer)",
            api.requests.clone(),
        );
        r.register(
            "api_retries",
            "Dialler API requests sent again after a passing failure",
            api.retries.clone(),
        );
        r.register(
            "api_request_duration_seconds",
            "Time from sending a dialler API request to its answer's headers, by endpoint",
            api.durations.clone(),
        );
        r.register(
            "api_in_flight",
            "Dialler API requests in flight now",
            api.in_flight.clone(),
        );
        m
    }

    /// The API metrics, for the tenant's clients.
    pub fn api(&self) -> Arc<ApiMetrics> {
        Arc::clone(&self.api)
    }

    /// Counts a finished run of a sync (not a dry run, which changes nothing, nor a
    /// verification, which is no sync: it must not pass for a successful run).
    pub fn record_run(&self, report: &JobReport) {
        if !report.is_sync_run() {
            return;
        }
        let job = || JobLabel {
            job: report.job.clone(),
        };
        self.runs
            .get_or_create(&RunLabels {
                job: report.job.clone(),
                outcome: report.exit().word().to_string(),
            })
            .inc();
        let mut failed = report.failed_by_operation.clone();
        let done = [
            ("import", report.imported),
            ("update", report.updated),
            ("reset", report.reset),
            ("unlock", report.unlocked),
            ("lock", report.locked),
            ("delete", report.deleted),
        ];
        let mut counts: Vec<(&str, &str, u64)> = Vec::new();
        for (kind, ok) in done {
            counts.push((kind, "ok", ok));
            counts.push((kind, "failed", failed.remove(kind).unwrap_or(0)));
        }
        // Failures of anything else (writing the state) under their own kind.
        counts.extend(failed.iter().map(|(kind, n)| (*kind, "failed", *n)));
        for (kind, result, n) in counts {
            self.operations
                .get_or_create(&OperationLabels {
                    job: report.job.clone(),
                    kind: kind.to_string(),
                    result: result.to_string(),
                })
                .inc_by(n);
        }
        self.invalid_rows
            .get_or_create(&job())
            .inc_by(report.invalid + report.duplicates);
        if let Some(Abort::Guard(t)) = report.stopped.as_deref() {
            self.guard_trips
                .get_or_create(&GuardLabels {
                    job: report.job.clone(),
                    guard: t.name().to_string(),
                })
                .inc();
        }
        if let Some(n) = report.contacts {
            self.state_contacts.get_or_create(&job()).set(n as i64);
        }
        self.last_run(
            &job(),
            &report.started_at,
            report.duration_ms,
            report.rows.saturating_sub(report.blank),
        );
        if report.stopped.is_none() {
            self.last_success(&job(), &report.started_at);
        }
    }

    /// Sets a job's gauges from its stored records (at the daemon's start): the contacts
    /// in its state, the last run, and the start of the last run that finished.
    pub fn restore_job(
        &self,
        job: &str,
        contacts: u64,
        last: Option<&RunSummary>,
        last_finished: Option<&RunSummary>,
    ) {
        let label = JobLabel {
            job: job.to_string(),
        };
        self.state_contacts
            .get_or_create(&label)
            .set(contacts as i64);
        if let Some(r) = last {
            self.last_run(
                &label,
                &r.started_at,
                r.duration_ms,
                r.rows.saturating_sub(r.blank),
            );
        }
        if let Some(r) = last_finished {
            self.last_success(&label, &r.started_at);
        }
    }

    /// The last run's gauges: its start (RFC 3339), duration, and rows (blank ones left
    /// out).
    fn last_run(&self, label: &JobLabel, started_at: &str, duration_ms: u64, rows: u64) {
        self.last_run_start
            .get_or_create(label)
            .set(unix(started_at));
        self.last_run_duration
            .get_or_create(label)
            .set(duration_ms as f64 / 1000.0);
        self.export_rows.get_or_create(label).set(rows as i64);
    }

    fn last_success(&self, label: &JobLabel, started_at: &str) {
        self.last_success.get_or_create(label).set(unix(started_at));
    }

    /// The page `/metrics` serves (OpenMetrics text).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The content type of [`Metrics::encode`]'s page.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_lose_their_ids() {
        assert_eq!(
            endpoint("/dialler/contacts/contact/123/lock"),
            "/dialler/contacts/contact/{id}/lock"
        );
        assert_eq!(
            endpoint("/dialler/contacts/import"),
            "/dialler/contacts/import"
        );
        assert_eq!(
            endpoint("/dialler/campaigns/campaign/538"),
            "/dialler/campaigns/campaign/{id}"
        );
    }

    #[test]
    fn a_run_is_counted_by_outcome_kind_and_result() {
        let m = Metrics::new();
        let mut r = JobReport::begin("leads", false);
        r.imported = 3;
        r.locked = 1;
        r.failed = 2;
        r.failed_by_operation.insert("update", 2);
        r.invalid = 1;
        r.duplicates = 1;
        r.rows = 8;
        r.blank = 1;
        r.duration_ms = 1500;
        r.contacts = Some(4);
        m.record_run(&r);
        // A verification is no sync run: not counted.
        let mut v = JobReport::begin("leads", false);
        v.verify_only = true;
        v.contacts = Some(9);
        m.record_run(&v);
        m.api().request(
            "/dialler/contacts/contact/5",
            Some(200),
            Duration::from_millis(7),
        );
        m.api().request(
            "/dialler/contacts/contact/6",
            None,
            Duration::from_millis(7),
        );
        m.api().retry();
        let page = m.encode();
        for line in [
            "dialsync_runs_total{job=\"leads\",outcome=\"partial\"} 1",
            "dialsync_operations_total{job=\"leads\",kind=\"import\",result=\"ok\"} 3",
            "dialsync_operations_total{job=\"leads\",kind=\"update\",result=\"failed\"} 2",
            "dialsync_operations_total{job=\"leads\",kind=\"lock\",result=\"ok\"} 1",
            "dialsync_invalid_rows_total{job=\"leads\"} 2",
            "dialsync_export_rows{job=\"leads\"} 7",
            "dialsync_state_contacts{job=\"leads\"} 4",
            "dialsync_last_run_duration_seconds{job=\"leads\"} 1.5",
            "dialsync_api_requests_total{endpoint=\"/dialler/contacts/contact/{id}\",status=\"200\"} 1",
            "dialsync_api_requests_total{endpoint=\"/dialler/contacts/contact/{id}\",status=\"none\"} 1",
            "dialsync_api_retries_total 1",
            "dialsync_api_request_duration_seconds_count{endpoint=\"/dialler/contacts/contact/{id}\"} 2",
            "dialsync_api_in_flight 0",
            "# EOF",
        ] {
            assert!(page.lines().any(|l| l == line), "{line} not in:\n{page}");
        }
        assert!(page.contains("dialsync_last_success_timestamp_seconds{job=\"leads\"} "));
        assert!(
            !page.contains("outcome=\"ok\""),
            "the verification was counted:\n{page}"
        );
    }
}
