//! The jtel dialler's REST API: every contact function of the vendor's documentation,
//! plus the campaign look-ups a sync needs, with errors typed by return code.
//!
//! One `reqwest::Client` is shared by all calls (keep-alive pool, connect and total
//! timeouts). The bearer header is set once and marked sensitive, so neither `Debug`
//! output nor any error message carries the token.
//!
//! Retries: a call that fails for a passing reason (no connection, timeout, dropped
//! connection, 429, 502, 503, 504; a 500 at most twice) is sent again after an exponential
//! backoff with jitter, and never sooner than the dialler's `Retry-After`. Each call has
//! `max_retries`, each run (one client) a shared budget; a call that runs out of either
//! fails with [`DiallerError::GaveUp`] or [`DiallerError::RetryBudget`], which end the
//! run. Every call but one is idempotent; the exception, an import with
//! `overwriteDuplicates=false`, first looks the contact up by UserData before it is sent
//! again, since a timed-out attempt may have created it.

mod contacts;
mod error;
mod listing;
pub(crate) mod pace;
#[cfg(test)]
mod tests;
mod transport;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use serde_json::{Map, Value};

use crate::config::{DiallerConfig, RetryConfig, Secret};
use crate::dialler::pace::Pacer;
use crate::metrics::ApiMetrics;

pub use error::DiallerError;

use error::{certificate_problem, error_text};
use transport::{first_record, records_of, target_path, Body, Req};

/// The longest `Retry-After` honoured; a longer one is waited for this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// The least retry budget of a run.
pub(crate) const MIN_RETRY_BUDGET: u64 = 100;
/// Retries of a call answered with HTTP 500 (which may be a bug on the dialler's side
/// that no retry mends, unlike 502/503/504).
const MAX_RETRIES_ON_500: u32 = 2;

/// A JSON record as the dialler returns it (a contact, campaign or history entry).
pub(crate) type Record = Map<String, Value>;

/// Which contact a by-ID or by-UserData function acts on. By-UserData functions act on
/// "the first one found" when several contacts share the UserData; a sync uses IDs.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Id(i64),
    UserData(&'a str),
}

/// The import flags. `None` leaves a flag out of the request (the server's old behaviour).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportFlags {
    pub overwrite_duplicates: bool,
    pub reset_contact: Option<bool>,
    pub unlock_contact: Option<bool>,
}

/// A client of one dialler tenant.
pub struct Dialler {
    pub(super) http: reqwest::Client,
    pub(super) base_url: String,
    /// `base_url/{ClientsID}`.
    pub(super) root: String,
    /// `root` parsed, once: each request's URL is a copy with its path and query set,
    /// which spares parsing the scheme and host again for every call (8.7% of the samples
    /// of the thread that sent an import's calls, perf 2026-12-08). `None` if it does not
    /// parse: then each request parses its URL, and the error says what is wrong.
    pub(super) root_url: Option<reqwest::Url>,
    pub(super) client_id: u32,
    /// `[dialler] ca_file`, for messages.
    pub(super) ca_file: Option<std::path::PathBuf>,
    pub(super) calls: AtomicU64,
    /// Answers that show the token accepted (see `token_accepted`).
    pub(super) accepted: AtomicU64,
    pub(super) retry: RetryConfig,
    /// The limits it shares with every other client of the tenant in this process.
    pub(super) tenant: Tenant,
    /// Retries sent so far.
    pub(super) retries: AtomicU64,
    /// Retries this client may still send.
    pub(super) retry_budget: AtomicU64,
}

impl std::fmt::Debug for Dialler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialler")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read the CA file {path}")]
    CaFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA file {path} holds no usable PEM certificate")]
    CaPem {
        path: std::path::PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("the token cannot be sent in an HTTP header (it contains control characters)")]
    BadToken,
    #[error("cannot set up the HTTP client")]
    Build(#[source] reqwest::Error),
}

/// What every client of one dialler tenant in a process shares, so that jobs running at
/// once stay within the tenant's limits together: `max_requests_per_second` (one pacer)
/// and `max_concurrency` (one count of calls in flight). Cheap to clone (a handle).
#[derive(Debug, Clone)]
pub struct Tenant {
    limits: (Option<u32>, usize),
    /// Calls spaced evenly, never more than the limit in any second.
    pacer: Option<Arc<Pacer>>,
    /// One permit per call in flight (from its send until its answer is read).
    slots: Arc<tokio::sync::Semaphore>,
    /// The requests' metrics (served by a daemon with `[metrics]`).
    pub(super) api: Arc<ApiMetrics>,
}

/// A call's place among the tenant's calls in flight, until it is dropped.
pub(crate) struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    api: Arc<ApiMetrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.api.in_flight().dec();
    }
}

impl Tenant {
    pub fn new(cfg: &DiallerConfig) -> Tenant {
        Tenant::with_metrics(cfg, Arc::default())
    }

    /// A tenant whose requests are counted in `api` (a daemon's registered metrics).
    pub fn with_metrics(cfg: &DiallerConfig, api: Arc<ApiMetrics>) -> Tenant {
        let per_second = cfg.max_requests_per_second.map(|n| n.get());
        Tenant {
            limits: (per_second, cfg.max_concurrency),
            pacer: per_second.map(|n| Arc::new(Pacer::new(n))),
            slots: Arc::new(tokio::sync::Semaphore::new(cfg.max_concurrency)),
            api,
        }
    }

    /// Whether its limits are `cfg`'s (a reload that changes them needs a new tenant).
    pub fn fits(&self, cfg: &DiallerConfig) -> bool {
        self.limits
            == (
                cfg.max_requests_per_second.map(|n| n.get()),
                cfg.max_concurrency,
            )
    }

    /// Calls in flight now, of every client of the tenant: the metrics' gauge.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.api.in_flight().get() as usize
    }

    /// Waits for a free slot and then for the call's turn under the rate limit; the slot
    /// is the call's until the permit is dropped.
    pub(super) async fn admit(&self) -> Slot {
        let permit = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .expect("the tenant's semaphore is never closed");
        if let Some(pacer) = &self.pacer {
            pacer.wait().await;
        }
        self.api.in_flight().inc();
        Slot {
            _permit: permit,
            api: Arc::clone(&self.api),
        }
    }
}

/// Whether a client for the dialler at `base_url` needs the system's certificate
/// authorities: not over plain HTTP, since redirects are never followed. Reading them (140
/// certificates parsed, 5-10 ms) is most of a no-op sync's start beside opening the state.
fn needs_system_roots(base_url: &str) -> bool {
    !reqwest::Url::parse(base_url).is_ok_and(|u| u.scheme() == "http")
}

impl Dialler {
    /// A client with limits of its own (a process that runs one job at a time).
    pub fn new(cfg: &DiallerConfig, token: &Secret) -> Result<Dialler, ClientError> {
        Dialler::for_tenant(cfg, token, &Tenant::new(cfg))
    }

    /// A client that shares `tenant`'s limits with the other clients made for it.
    pub fn for_tenant(
        cfg: &DiallerConfig,
        token: &Secret,
        tenant: &Tenant,
    ) -> Result<Dialler, ClientError> {
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| ClientError::BadToken)?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        let builder = if needs_system_roots(&cfg.base_url) {
            crate::tls::with_system_roots(reqwest::Client::builder())
        } else {
            reqwest::Client::builder().tls_built_in_root_certs(false)
        };
        let mut builder = builder
            .default_headers(headers)
            .user_agent(concat!("dialsync/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.timeout)
            // Also between two reads of an answer: what bounds a streamed listing.
            .read_timeout(cfg.timeout)
            .pool_max_idle_per_host(cfg.max_concurrency)
            // Never follow a redirect (see `DiallerError::Redirect`).
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path).map_err(|source| ClientError::CaFile {
                path: path.clone(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                ClientError::CaPem {
                    path: path.clone(),
                    source,
                }
            })?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let root = format!("{}/{}", cfg.base_url, cfg.client_id);
        Ok(Dialler {
            http: builder.build().map_err(ClientError::Build)?,
            base_url: cfg.base_url.clone(),
            root_url: transport::root_url(&root),
            root,
            client_id: cfg.client_id,
            ca_file: cfg.ca_file.clone(),
            calls: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            retry: cfg.retry,
            tenant: tenant.clone(),
            retries: AtomicU64::new(0),
            retry_budget: AtomicU64::new(cfg.retry.per_run.unwrap_or(MIN_RETRY_BUDGET)),
        })
    }

    /// API calls sent so far (each attempt counts).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Whether an answer so far showed the token accepted: a success, or a 400, 404 or 409
    /// (the API refusing the request itself, past its token check).
    pub fn token_accepted(&self) -> bool {
        self.accepted.load(Ordering::Relaxed) > 0
    }

    /// Retries sent so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Sets the run's retry budget for a run of `planned` operations: the configured
    /// `max_retries_per_run`, else 20% of `planned`, at least `MIN_RETRY_BUDGET`. The
    /// retries the run has sent already (settling pending imports, a campaign look-up)
    /// count against it.
    pub fn budget_retries_for(&self, planned: u64) {
        let budget = self
            .retry
            .per_run
            .unwrap_or((planned / 5).max(MIN_RETRY_BUDGET));
        self.retry_budget
            .store(budget.saturating_sub(self.retries()), Ordering::Relaxed);
    }
}

/// The campaign of a returned contact.
pub(crate) fn record_campaign(r: &Record) -> Option<i64> {
    r.get("DiallerCampaignsID").and_then(Value::as_i64)
}

/// The contact ID in a returned record.
pub fn record_id(r: &Record) -> Option<i64> {
    r.get("ID").and_then(Value::as_i64)
}
