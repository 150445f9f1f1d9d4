//! `[alerts]`: telling someone how runs go, without a monitoring stack.
//!
//! - `ping_url`, in the style of healthchecks.io (and Cronitor, Uptime Kuma's push
//!   monitors): `GET {url}/start` when a run starts, `GET {url}` when it succeeds,
//!   `GET {url}/fail` when it stops early or operations fail. A job's own `ping_url`
//!   overrides the section's.
//! - `webhook_url`: a JSON POST with the run's report when a run is not ok (partial or
//!   stopped), with an `Idempotency-Key` header (the run ID) for receivers that may see it
//!   twice.
//!
//! Neither ever blocks or fails a sync: each request runs on its own task with a timeout
//! and a few retries (no answer, 429, 5xx), and a request that still fails is logged as a
//! warning. A one-shot `sync` waits for them before it exits (bounded by the timeouts). The
//! URLs often hold a secret: they are read at each run (from the config, a file, a
//! variable or a credential) and never logged. The report holds no names or numbers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::{AlertsConfig, JobConfig, TokenSource};
use crate::engine::outcome::Exit;
use crate::engine::report::JobReport;

/// The alerts of one process (a `sync`) or one daemon run.
pub(crate) struct Alerts {
    /// Made when the first request goes (loading the system's CAs is work a run without
    /// alerts need not do).
    http: std::sync::OnceLock<reqwest::Client>,
    cfg: AlertsConfig,
    /// Requests still on their way.
    pending: Mutex<Vec<JoinHandle<()>>>,
    /// Per job, its start ping, which its end ping waits for (so they arrive in order).
    starts: Mutex<HashMap<String, JoinHandle<()>>>,
}

impl Alerts {
    pub(crate) fn new(cfg: &AlertsConfig) -> Alerts {
        Alerts {
            http: std::sync::OnceLock::new(),
            cfg: cfg.clone(),
            pending: Mutex::default(),
            starts: Mutex::default(),
        }
    }

    fn http(&self) -> reqwest::Client {
        self.http
            .get_or_init(|| {
                crate::tls::with_system_roots(reqwest::Client::builder())
                    .user_agent(concat!("dialsync/", env!("CARGO_PKG_VERSION")))
                    .timeout(self.cfg.timeout)
                    .redirect(reqwest::redirect::Policy::limited(3))
                    .build()
                    .unwrap_or_default()
            })
            .clone()
    }

    /// The ping URL of `job`, read now; `None` when it has none or it cannot be read (said
    /// in the log).
    fn ping_url(&self, job: &JobConfig) -> Option<String> {
        let (source, key) = match (&job.ping_url, &self.cfg.ping_url) {
            (Some(s), _) => (s, "job.ping_url"),
            (None, Some(s)) => (s, "alerts.ping_url"),
            (None, None) => return None,
        };
        read(source, key).map(|u| u.trim_end_matches('/').to_string())
    }

    /// A run of `job` starts.
    pub(crate) fn started(&self, job: &JobConfig) {
        let Some(url) = self.ping_url(job) else {
            return;
        };
        let task = tokio::spawn(send(
            self.http(),
            reqwest::Method::GET,
            format!("{url}/start"),
            None,
            self.cfg.retries,
            "the start ping",
        ));
        crate::locking::lock(&self.starts).insert(job.name.clone(), task);
    }

    /// A run of `job` ended with `report`.
    pub(crate) fn finished(&self, job: &JobConfig, report: &JobReport) {
        let start = crate::locking::lock(&self.starts).remove(&job.name);
        let failed = report.stopped.is_some() || report.failed > 0;
        if let Some(url) = self.ping_url(job) {
            let url = if failed { format!("{url}/fail") } else { url };
            let (http, retries) = (self.http(), self.cfg.retries);
            self.keep(tokio::spawn(async move {
                if let Some(start) = start {
                    let _ = start.await;
                }
                send(http, reqwest::Method::GET, url, None, retries, "the ping").await;
            }));
        }
        if report.exit() == Exit::Ok {
            return;
        }
        let Some(url) = self
            .cfg
            .webhook_url
            .as_ref()
            .and_then(|s| read(s, "alerts.webhook_url"))
        else {
            return;
        };
        let body = serde_json::json!({
            "event": "run_not_ok",
            "job": report.job,
            "run_id": report.run_id,
            "outcome": report.exit(),
            "report": report.to_value(),
        });
        let body = Body {
            json: serde_json::to_vec(&body).expect("JSON values serialize"),
            idempotency_key: report.run_id.clone(),
            headers: Vec::new(),
        };
        self.keep(tokio::spawn(send(
            self.http(),
            reqwest::Method::POST,
            url,
            Some(body),
            self.cfg.retries,
            "the webhook",
        )));
    }

    fn keep(&self, task: JoinHandle<()>) {
        let mut pending = crate::locking::lock(&self.pending);
        pending.retain(|t| !t.is_finished());
        pending.push(task);
    }

    /// Waits for the requests still on their way (each bounded by its timeout and
    /// retries): before a one-shot `sync` exits.
    pub(crate) async fn settle(&self) {
        let starts: Vec<_> = crate::locking::lock(&self.starts)
            .drain()
            .map(|(_, t)| t)
            .collect();
        let pending: Vec<_> = std::mem::take(&mut *crate::locking::lock(&self.pending));
        for t in starts.into_iter().chain(pending) {
            let _ = t.await;
        }
    }
}

/// A secret URL from `source`, or `None` with a warning (never the URL itself).
fn read(source: &TokenSource, key: &'static str) -> Option<String> {
    match source.resolve_as(key) {
        Ok(s) => Some(s.expose().to_string()),
        Err(e) => {
            tracing::warn!(error = %crate::engine::outcome::error_chain(&e), "an alert URL could not be read; nothing is sent there");
            None
        }
    }
}

pub(crate) struct Body {
    pub json: Vec<u8>,
    pub idempotency_key: String,
    /// More headers (a signature).
    pub headers: Vec<(&'static str, String)>,
}

/// Why a request was not delivered.
#[derive(Debug)]
pub(crate) enum Undelivered {
    /// The receiver answered with this status (not 429 or 5xx): sending it again now
    /// would change nothing.
    Refused(u16),
    /// No answer, 429 or 5xx, on every attempt.
    Failed { attempts: u32, error: String },
}

impl std::fmt::Display for Undelivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Undelivered::Refused(status) => write!(f, "refused with HTTP {status}"),
            Undelivered::Failed { attempts, error } => {
                write!(f, "failed {attempts} times, last with {error}")
            }
        }
    }
}

/// Sends one request, logging what could not be delivered. `what` names it in the log
/// (never its URL).
async fn send(
    http: reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Body>,
    retries: u32,
    what: &'static str,
) {
    match deliver(&http, method, &url, body.as_ref(), retries).await {
        Ok(()) => {}
        Err(Undelivered::Refused(status)) => {
            tracing::warn!(status, "{what} was refused; it is not sent again");
        }
        Err(Undelivered::Failed { attempts, error }) => {
            tracing::warn!(attempts, error = %error, "{what} could not be delivered");
        }
    }
}

/// Sends one request, retried after no answer, a 429 or a 5xx (1 s, 2 s, 4 s, ...).
/// Errors never hold the URL (it may hold a secret).
pub(crate) async fn deliver(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<&Body>,
    retries: u32,
) -> Result<(), Undelivered> {
    let mut attempt = 0;
    loop {
        let mut req = http.request(method.clone(), url);
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", &b.idempotency_key)
                .body(b.json.clone());
            for (name, value) in &b.headers {
                req = req.header(*name, value);
            }
        }
        let problem = match req.send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => {
                let status = r.status();
                if !(status.is_server_error() || status.as_u16() == 429) {
                    return Err(Undelivered::Refused(status.as_u16()));
                }
                format!("HTTP {status}")
            }
            Err(e) => crate::engine::outcome::error_chain(&e.without_url()),
        };
        if attempt >= retries {
            return Err(Undelivered::Failed {
                attempts: attempt + 1,
                error: problem,
            });
        }
        tokio::time::sleep(Duration::from_secs(1 << attempt.min(5))).await;
        attempt += 1;
    }
}
