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

pub mod pace;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::config::{DiallerConfig, RetryConfig, Secret};
use crate::dialler::pace::Pacer;

/// The longest `Retry-After` honoured; a longer one is waited for this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// The least retry budget of a run.
pub const MIN_RETRY_BUDGET: u64 = 100;
/// Retries of a call answered with HTTP 500 (which may be a bug on the dialler's side
/// that no retry mends, unlike 502/503/504).
const MAX_RETRIES_ON_500: u32 = 2;

/// A JSON record as the dialler returns it (a contact, campaign or history entry).
pub type Record = Map<String, Value>;

#[derive(Debug, thiserror::Error)]
pub enum DiallerError {
    #[error(
        "the dialler rejected the credentials (HTTP 401): check the token ([dialler] token, \
         token_file or token_env) and client_id = {client_id} (the ClientsID); a token \
         regenerated or removed in the jtel portal stops working at once"
    )]
    Unauthorized { client_id: u32 },
    #[error(
        "the dialler has no endpoint {method} {path} (HTTP 404 with an empty body): check that \
         [dialler] base_url ({base_url}) is right and ends in /rest/v1.0, or the server release \
         is too old for this function"
    )]
    EndpointMissing {
        method: Method,
        path: String,
        base_url: String,
    },
    #[error("not found (HTTP 404): {message}")]
    NotFound { message: String },
    #[error("the dialler refused the request (HTTP 400): {message}")]
    BadRequest { message: String },
    #[error("the dialler reports a conflict (HTTP 409): {message}")]
    Conflict { message: String },
    #[error("the dialler failed (HTTP {status}): {message}")]
    Server {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("the dialler asks to slow down (HTTP 429)")]
    Throttled { retry_after: Option<Duration> },
    #[error("the dialler kept failing; gave up after {attempts} attempts")]
    GaveUp {
        attempts: u32,
        #[source]
        last: Box<DiallerError>,
    },
    #[error(
        "the dialler failed too often in this run: {retries} retries, the run's bound \
         ([dialler] max_retries_per_run); stopping, the next run carries on"
    )]
    RetryBudget {
        retries: u64,
        #[source]
        last: Box<DiallerError>,
    },
    #[error("unexpected answer from the dialler (HTTP {status}): {message}")]
    Unexpected { status: u16, message: String },
    /// The dialler API never redirects: a 3xx comes from something else behind
    /// `base_url` (a proxy, a login page, another host). It is not followed: a redirected
    /// request would carry personal data elsewhere, and another server's answer is no
    /// confirmation.
    #[error(
        "the server at {base_url} answered HTTP {status} (a redirect to {location}); the jtel \
         API does not redirect, so dialsync does not follow it and sent nothing there: check \
         [dialler] base_url (scheme, host, port and the /rest/v1.0 path)"
    )]
    Redirect {
        status: u16,
        base_url: String,
        location: String,
    },
    #[error(
        "cannot connect to the dialler at {base_url}: check base_url and that the server is up"
    )]
    Connect {
        base_url: String,
        #[source]
        source: reqwest::Error,
    },
    /// Not a passing failure: no retry makes an untrusted certificate trusted.
    #[error(
        "the TLS certificate of {base_url} is not trusted ({detail}): this is a certificate \
         problem, not a network one. If the dialler uses a certificate of your own CA, set \
         [dialler] ca_file to that CA's PEM file{}; check also that base_url names the host \
         the certificate is for",
        .ca_file.as_ref().map(|p| format!(" (now: {}, which does not vouch for it)", p.display())).unwrap_or_default()
    )]
    Certificate {
        base_url: String,
        detail: String,
        ca_file: Option<std::path::PathBuf>,
    },
    #[error("the call to the dialler failed or timed out")]
    Transport(#[source] reqwest::Error),
    #[error("the dialler's answer could not be read: {0}")]
    Decode(String),
    #[error("no campaign named {name:?} on the dialler{}", hint(.similar))]
    CampaignNotFound { name: String, similar: Vec<String> },
    #[error("campaign {0} does not exist on the dialler (HTTP 404): check campaign_id")]
    CampaignIdNotFound(i64),
}

fn hint(similar: &[String]) -> String {
    if similar.is_empty() {
        String::new()
    } else {
        format!("; names that contain it: {}", similar.join(", "))
    }
}

impl DiallerError {
    /// Errors after which no further call can succeed in this run: stop at once. A
    /// passing failure that outlasted its retries counts, as the dialler is then down or
    /// overloaded, and the next run carries on where this one stopped; except a repeated
    /// HTTP 500, which is more likely this one request's problem: that contact fails,
    /// the run goes on.
    pub fn is_fatal(&self) -> bool {
        match self {
            DiallerError::Server { status: 500, .. } => false,
            DiallerError::GaveUp { last, .. } => last.is_fatal(),
            e if e.is_transient() => true,
            _ => matches!(
                self,
                DiallerError::Unauthorized { .. }
                    | DiallerError::EndpointMissing { .. }
                    | DiallerError::CampaignNotFound { .. }
                    | DiallerError::CampaignIdNotFound(_)
                    | DiallerError::RetryBudget { .. }
                    | DiallerError::Redirect { .. }
                    | DiallerError::Certificate { .. }
            ),
        }
    }

    /// A passing failure: the same call may succeed if sent again.
    pub fn is_transient(&self) -> bool {
        match self {
            DiallerError::Connect { .. }
            | DiallerError::Transport(_)
            | DiallerError::Throttled { .. } => true,
            DiallerError::Server { status, .. } => matches!(status, 500 | 502 | 503 | 504),
            _ => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            DiallerError::Server { retry_after, .. } | DiallerError::Throttled { retry_after } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// Whether the call was certainly not carried out: the dialler (or whatever answered
    /// in its place) refused it. A timeout, a dropped connection, a 5xx or an answer that
    /// could not be read may come after the dialler did the work.
    pub fn not_carried_out(&self) -> bool {
        matches!(
            self,
            DiallerError::Unauthorized { .. }
                | DiallerError::EndpointMissing { .. }
                | DiallerError::NotFound { .. }
                | DiallerError::BadRequest { .. }
                | DiallerError::Conflict { .. }
                | DiallerError::Redirect { .. }
                | DiallerError::Certificate { .. }
                | DiallerError::CampaignNotFound { .. }
                | DiallerError::CampaignIdNotFound(_)
        )
    }

    /// Whether the dialler is unauthorized (401): the run ends with its own exit code.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, DiallerError::Unauthorized { .. })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, DiallerError::NotFound { .. })
    }
}

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
    http: reqwest::Client,
    base_url: String,
    /// `base_url/{ClientsID}`.
    root: String,
    client_id: u32,
    /// `[dialler] ca_file`, for messages.
    ca_file: Option<std::path::PathBuf>,
    calls: AtomicU64,
    retry: RetryConfig,
    /// `max_requests_per_second`: calls spaced evenly, never more than the limit in any
    /// second.
    pacer: Option<Pacer>,
    /// Retries sent so far.
    retries: AtomicU64,
    /// Retries this client may still send.
    retry_budget: AtomicU64,
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

impl Dialler {
    pub fn new(cfg: &DiallerConfig, token: &Secret) -> Result<Dialler, ClientError> {
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| ClientError::BadToken)?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("dialsync/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.timeout)
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
        Ok(Dialler {
            http: builder.build().map_err(ClientError::Build)?,
            base_url: cfg.base_url.clone(),
            root: format!("{}/{}", cfg.base_url, cfg.client_id),
            client_id: cfg.client_id,
            ca_file: cfg.ca_file.clone(),
            calls: AtomicU64::new(0),
            retry: cfg.retry,
            pacer: cfg.max_requests_per_second.map(|n| Pacer::new(n.get())),
            retries: AtomicU64::new(0),
            retry_budget: AtomicU64::new(cfg.retry.per_run.unwrap_or(MIN_RETRY_BUDGET)),
        })
    }

    /// API calls sent so far (each attempt counts).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Retries sent so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Sets the run's retry budget for a run of `planned` operations: the configured
    /// `max_retries_per_run`, else 20% of `planned`, at least [`MIN_RETRY_BUDGET`]. The
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

    /// Takes one retry from the run's budget; false when it is used up.
    fn take_retry(&self) -> bool {
        let ok = self
            .retry_budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
            .is_ok();
        if ok {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// The wait before retry `n` (0-based): `delay * 2^n` capped at `max_delay`, of which
    /// a random half ("equal jitter", so that many clients failing at once spread out),
    /// and never less than the dialler's `Retry-After`.
    fn backoff(&self, n: u32, retry_after: Option<Duration>) -> Duration {
        let full = self
            .retry
            .delay
            .saturating_mul(1u32.checked_shl(n).unwrap_or(u32::MAX))
            .min(self.retry.max_delay);
        let jittered = full / 2 + full.mul_f64(fastrand::f64() / 2.0);
        jittered.max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER))
    }

    /// Runs `attempt(n)` for n = 0, 1, ... until it succeeds, fails for good, or its
    /// retries or the run's are used up.
    async fn retrying<T, F, Fut>(&self, mut attempt: F) -> Result<T, DiallerError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, DiallerError>>,
    {
        let mut n = 0;
        loop {
            let e = match attempt(n).await {
                Err(e) if e.is_transient() => e,
                other => return other,
            };
            let bound = match e {
                DiallerError::Server { status: 500, .. } => {
                    self.retry.max_retries.min(MAX_RETRIES_ON_500)
                }
                _ => self.retry.max_retries,
            };
            if n >= bound {
                return Err(if n == 0 {
                    e
                } else {
                    DiallerError::GaveUp {
                        attempts: n + 1,
                        last: Box::new(e),
                    }
                });
            }
            if !self.take_retry() {
                return Err(DiallerError::RetryBudget {
                    retries: self.retries(),
                    last: Box::new(e),
                });
            }
            let wait = self.backoff(n, e.retry_after());
            tracing::debug!(retry = n + 1, wait_ms = wait.as_millis() as u64, error = %e, "retrying a call");
            tokio::time::sleep(wait).await;
            n += 1;
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, DiallerError> {
        self.retrying(|_| self.call_once(method.clone(), path, query, body))
            .await
    }

    async fn call_once(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, DiallerError> {
        let resp = self.respond_once(method, path, query, body).await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| DiallerError::Transport(e.without_url()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| DiallerError::Decode(e.to_string()))
    }

    /// Sends one request; a successful answer whose body is still to be read, or the
    /// error its status (or the lack of one) means.
    async fn respond_once(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<reqwest::Response, DiallerError> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{}", self.root, path));
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(b) = body {
            req = req
                .header(CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(b).expect("JSON values serialize"));
        }
        if let Some(pacer) = &self.pacer {
            pacer.wait().await;
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        let resp = req.send().await.map_err(|e| {
            if let Some(detail) = certificate_problem(&e) {
                DiallerError::Certificate {
                    base_url: self.base_url.clone(),
                    detail,
                    ca_file: self.ca_file.clone(),
                }
            } else if e.is_connect() {
                DiallerError::Connect {
                    base_url: self.base_url.clone(),
                    source: e.without_url(),
                }
            } else {
                DiallerError::Transport(e.without_url())
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status.is_redirection() {
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map_or_else(
                    || "no Location".to_string(),
                    |l| crate::escape::printable_max(l, 200),
                );
            return Err(DiallerError::Redirect {
                status: status.as_u16(),
                base_url: self.base_url.clone(),
                location,
            });
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| DiallerError::Transport(e.without_url()))?;
        Err(self.error(status, method, path, &bytes, retry_after))
    }

    fn error(
        &self,
        status: StatusCode,
        method: Method,
        path: &str,
        body: &[u8],
        retry_after: Option<Duration>,
    ) -> DiallerError {
        let empty = body.iter().all(u8::is_ascii_whitespace);
        let message = error_text(body);
        match status.as_u16() {
            401 => DiallerError::Unauthorized {
                client_id: self.client_id,
            },
            404 if empty => DiallerError::EndpointMissing {
                method,
                path: path.to_string(),
                base_url: self.base_url.clone(),
            },
            404 => DiallerError::NotFound { message },
            400 => DiallerError::BadRequest { message },
            409 => DiallerError::Conflict { message },
            429 => DiallerError::Throttled { retry_after },
            s @ 500..=599 => DiallerError::Server {
                status: s,
                message,
                retry_after,
            },
            s => DiallerError::Unexpected { status: s, message },
        }
    }

    async fn records(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Vec<Record>, DiallerError> {
        let v = self.call(method, path, query, body).await?;
        records_of(v)
    }

    async fn one(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Record, DiallerError> {
        first_record(self.call(method, path, query, body).await?)
    }

    /// Treats a JSON 404 ("no such contact/campaign") as an empty result.
    async fn records_or_none(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Vec<Record>, DiallerError> {
        match self.records(Method::GET, path, query, None).await {
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            other => other,
        }
    }

    /// The one object at `path`, `None` on a JSON 404.
    async fn one_or_none(&self, path: &str) -> Result<Option<Record>, DiallerError> {
        Ok(self.records_or_none(path, &[]).await?.into_iter().next())
    }

    // ---- contacts ----

    /// Every contact of a campaign (or of the tenant). The API has no paging.
    pub async fn list_contacts(
        &self,
        campaign_id: Option<i64>,
    ) -> Result<Vec<Record>, DiallerError> {
        let q: Vec<_> = campaign_id
            .map(|c| ("diallerCampaignsID", c.to_string()))
            .into_iter()
            .collect();
        self.records(Method::GET, "/dialler/contacts", &q, None)
            .await
    }

    /// Every contact of a campaign, streamed: `each` sees one record at a time as the
    /// answer is parsed (on a blocking thread), so a campaign of millions is never held in
    /// memory, and is handed back at the end with whatever it gathered. One request,
    /// retried like any other until its answer starts; a break in the middle of the
    /// answer is an error. Older servers ignore the campaign and list the whole tenant:
    /// `each` sees those records too (each has its `DiallerCampaignsID`).
    pub async fn stream_contacts<F>(&self, campaign_id: i64, each: F) -> Result<F, DiallerError>
    where
        F: FnMut(Record) + Send + 'static,
    {
        let q = [("diallerCampaignsID", campaign_id.to_string())];
        let mut resp = self
            .retrying(|_| self.respond_once(Method::GET, "/dialler/contacts", &q, None))
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
        let parse = tokio::task::spawn_blocking(move || {
            let mut each = each;
            let reader = ChannelReader {
                rx,
                chunk: bytes::Bytes::new(),
            };
            let mut de = serde_json::Deserializer::from_reader(reader);
            Listing { each: &mut each }
                .deserialize(&mut de)
                .and_then(|()| de.end())
                .map_err(|e| {
                    DiallerError::Decode(format!("the list of contacts could not be read: {e}"))
                })?;
            Ok(each)
        });
        let pump = async move {
            loop {
                let chunk = match resp.chunk().await {
                    Ok(Some(c)) => Ok(c),
                    Ok(None) => break,
                    Err(e) => Err(std::io::Error::other(e.without_url())),
                };
                let failed = chunk.is_err();
                // The parser may have stopped (malformed answer): nothing more to hand over.
                if tx.send(chunk).await.is_err() || failed {
                    break;
                }
            }
        };
        let ((), parsed) = tokio::join!(pump, parse);
        parsed.map_err(|e| {
            DiallerError::Decode(format!("reading the list of contacts failed: {e}"))
        })?
    }

    pub async fn get_contact(&self, id: i64) -> Result<Option<Record>, DiallerError> {
        self.one_or_none(&format!("/dialler/contacts/{id}")).await
    }

    pub async fn contacts_by_user_data(
        &self,
        user_data: &str,
    ) -> Result<Vec<Record>, DiallerError> {
        self.records_or_none(
            "/dialler/contacts/contact",
            &[("userData", user_data.to_string())],
        )
        .await
    }

    /// Imports one contact; returns the imported (or overwritten) contact.
    ///
    /// Without `overwrite_duplicates`, an import sent twice makes two contacts; so before
    /// a retry, the contact is looked up by UserData in its campaign, and if the failed
    /// attempt did create it, that contact is the result.
    pub async fn import(
        &self,
        contact: &Value,
        flags: ImportFlags,
    ) -> Result<Record, DiallerError> {
        self.import_with(contact, flags, false).await
    }

    /// [`Dialler::import`]; with `look_first`, an import without `overwrite_duplicates`
    /// looks the contact up before its first attempt too (after a restore from an older
    /// snapshot, an earlier import of it may have reached the dialler unrecorded).
    pub async fn import_with(
        &self,
        contact: &Value,
        flags: ImportFlags,
        look_first: bool,
    ) -> Result<Record, DiallerError> {
        let q = import_query(flags);
        if flags.overwrite_duplicates {
            return self
                .one(Method::POST, "/dialler/contacts/import", &q, Some(contact))
                .await;
        }
        let user_data = contact.get("UserData").and_then(Value::as_str);
        let campaign = contact.get("DiallerCampaignsID").and_then(Value::as_i64);
        let q = &q;
        self.retrying(|n| async move {
            if let (true, Some(user_data)) = (n > 0 || look_first, user_data) {
                let found = self
                    .call_once(
                        Method::GET,
                        "/dialler/contacts/contact",
                        &[("userData", user_data.to_string())],
                        None,
                    )
                    .await;
                let found = match found {
                    Err(e) if e.is_not_found() => Vec::new(),
                    other => records_of(other?)?,
                };
                if let Some(r) = found
                    .into_iter()
                    .filter(|r| campaign.is_none() || record_campaign(r) == campaign)
                    .min_by_key(record_id)
                {
                    return Ok(r);
                }
            }
            let v = self
                .call_once(Method::POST, "/dialler/contacts/import", q, Some(contact))
                .await?;
            first_record(v)
        })
        .await
    }

    /// Updates the fields present in `contact`, which must hold `ID` or `UserData`.
    pub async fn update(&self, contact: &Value) -> Result<Record, DiallerError> {
        self.one(Method::POST, "/dialler/contacts/update", &[], Some(contact))
            .await
    }

    pub async fn delete(&self, target: Target<'_>) -> Result<(), DiallerError> {
        let (path, q) = target_path(target, None);
        self.call(Method::DELETE, &path, &q, None).await.map(drop)
    }

    pub async fn lock(&self, target: Target<'_>) -> Result<(), DiallerError> {
        self.patch(target, "lock").await
    }

    pub async fn unlock(&self, target: Target<'_>) -> Result<(), DiallerError> {
        self.patch(target, "unlock").await
    }

    pub async fn reset(&self, target: Target<'_>) -> Result<(), DiallerError> {
        self.patch(target, "reset").await
    }

    /// The PATCH functions: lock, unlock, reset.
    async fn patch(&self, target: Target<'_>, action: &str) -> Result<(), DiallerError> {
        let (path, q) = target_path(target, Some(action));
        self.call(Method::PATCH, &path, &q, None).await.map(drop)
    }

    pub async fn history(&self, target: Target<'_>) -> Result<Vec<Record>, DiallerError> {
        let (path, q) = target_path(target, Some("history"));
        self.records(Method::GET, &path, &q, None).await
    }

    // ---- campaigns ----

    pub async fn campaigns(&self) -> Result<Vec<Record>, DiallerError> {
        self.records(Method::GET, "/dialler/campaigns", &[], None)
            .await
    }

    pub async fn campaign(&self, id: i64) -> Result<Option<Record>, DiallerError> {
        self.one_or_none(&format!("/dialler/campaigns/{id}")).await
    }

    /// Campaigns whose name contains `name` (the API matches partially).
    pub async fn campaigns_by_name(&self, name: &str) -> Result<Vec<Record>, DiallerError> {
        self.records_or_none("/dialler/campaigns/campaign", &[("name", name.to_string())])
            .await
    }

    /// The ID of the campaign named exactly `name`.
    pub async fn resolve_campaign(&self, name: &str) -> Result<i64, DiallerError> {
        let found = self.campaigns_by_name(name).await?;
        let exact: Vec<i64> = found
            .iter()
            .filter(|c| c.get("Name").and_then(Value::as_str) == Some(name))
            .filter_map(|c| c.get("ID").and_then(Value::as_i64))
            .collect();
        match exact.as_slice() {
            [id] => Ok(*id),
            [] => Err(DiallerError::CampaignNotFound {
                name: name.to_string(),
                similar: found
                    .iter()
                    .filter_map(|c| c.get("Name").and_then(Value::as_str))
                    .map(|s| format!("{s:?}"))
                    .collect(),
            }),
            // Several campaigns with the very same name: the name cannot pick one.
            ids => Err(DiallerError::Conflict {
                message: format!(
                    "{} campaigns are named {name:?} (IDs {ids:?}); use campaign_id",
                    ids.len()
                ),
            }),
        }
    }
}

/// The query of an import: `overwriteDuplicates` always, the other flags if set.
fn import_query(flags: ImportFlags) -> Vec<(&'static str, String)> {
    let mut q = vec![(
        "overwriteDuplicates",
        flags.overwrite_duplicates.to_string(),
    )];
    if let Some(r) = flags.reset_contact {
        q.push(("resetContact", r.to_string()));
    }
    if let Some(u) = flags.unlock_contact {
        q.push(("unlockContact", u.to_string()));
    }
    q
}

/// The body of an answer, chunk by chunk from the async side, as a blocking `Read`.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    chunk: bytes::Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(c)) => self.chunk = c,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// A listing answer (`{"records": [...], "count": ..., ...}`), each record handed to
/// `each` as it is parsed, the other keys skipped.
struct Listing<'f, F> {
    each: &'f mut F,
}

impl<'de, F: FnMut(Record)> DeserializeSeed<'de> for Listing<'_, F> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, F: FnMut(Record)> Visitor<'de> for Listing<'_, F> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object with `records`")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "records" {
                map.next_value_seed(Records {
                    each: &mut *self.each,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// The `records` array of a listing (or `null`).
struct Records<'f, F> {
    each: &'f mut F,
}

impl<'de, F: FnMut(Record)> DeserializeSeed<'de> for Records<'_, F> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, F: FnMut(Record)> Visitor<'de> for Records<'_, F> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of contacts")
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(r) = seq.next_element::<Record>()? {
            (self.each)(r);
        }
        Ok(())
    }
}

/// The TLS library's complaint about the server's certificate, if that is why `e`
/// failed. The rustls error sits in the chain of causes, directly or inside an
/// `io::Error` (whose `source()` skips it, so each one is opened).
fn certificate_problem(e: &reqwest::Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        // io::Errors may nest (hyper wraps the TLS stream's): open each.
        let mut inner = err;
        while let Some(next) = inner
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            inner = next;
        }
        if let Some(
            t @ (rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented),
        ) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(t.to_string());
        }
        cur = err.source();
    }
    None
}

/// The first record of an answer.
fn first_record(v: Value) -> Result<Record, DiallerError> {
    records_of(v)?
        .into_iter()
        .next()
        .ok_or_else(|| DiallerError::Decode("the answer holds no record".into()))
}

fn target_path(target: Target<'_>, action: Option<&str>) -> (String, Vec<(&'static str, String)>) {
    match (target, action) {
        (Target::Id(id), None) => (format!("/dialler/contacts/contact/{id}"), vec![]),
        (Target::Id(id), Some(a)) => (format!("/dialler/contacts/contact/{id}/{a}"), vec![]),
        (Target::UserData(u), None) => (
            "/dialler/contacts/contact".into(),
            vec![("userData", u.to_string())],
        ),
        (Target::UserData(u), Some(a)) => (
            format!("/dialler/contacts/contact/{a}"),
            vec![("userData", u.to_string())],
        ),
    }
}

/// The `records` array of an answer.
fn records_of(v: Value) -> Result<Vec<Record>, DiallerError> {
    let Value::Object(mut o) = v else {
        return Err(DiallerError::Decode(
            "expected a JSON object with `records`".into(),
        ));
    };
    match o.remove("records") {
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|i| match i {
                Value::Object(r) => Ok(r),
                _ => Err(DiallerError::Decode("a record is not a JSON object".into())),
            })
            .collect(),
        Some(Value::Null) | None => Ok(Vec::new()),
        Some(_) => Err(DiallerError::Decode("`records` is not an array".into())),
    }
}

/// The dialler's error text: the `error` (or `message`) field of a JSON body, else the
/// start of the body.
fn error_text(body: &[u8]) -> String {
    if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(body) {
        for k in ["error", "message", "Error", "Message"] {
            if let Some(Value::String(s)) = o.get(k) {
                return s.clone();
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(no details)".into();
    }
    text.chars().take(300).collect()
}

/// The campaign of a returned contact.
pub fn record_campaign(r: &Record) -> Option<i64> {
    r.get("DiallerCampaignsID").and_then(Value::as_i64)
}

/// The contact ID in a returned record.
pub fn record_id(r: &Record) -> Option<i64> {
    r.get("ID").and_then(Value::as_i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(settings: &str) -> Dialler {
        let text = format!(
            "[dialler]\nbase_url = \"http://127.0.0.1:9/rest/v1.0\"\nclient_id = 7\ntoken = \"x\"\n{settings}\n\
             [[job]]\nname = \"j\"\ncampaign_id = 538\n[job.source]\ntype = \"csv\"\npath = \"x\"\n\
             [job.fields]\nUserData = \"a\"\nName = \"b\"\nPhoneNumber1 = \"c\"\n"
        );
        let cfg = crate::config::Config::from_str(&text, std::path::Path::new("t.toml")).unwrap();
        Dialler::new(&cfg.dialler, &Secret::new("x")).unwrap()
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_honours_retry_after() {
        let d = client("retry_delay = \"100ms\"\nmax_retry_delay = \"1s\"");
        for _ in 0..50 {
            for (n, full) in [
                (0, 100),
                (1, 200),
                (2, 400),
                (3, 800),
                (4, 1000),
                (30, 1000),
            ] {
                let w = d.backoff(n, None).as_millis() as u64;
                assert!((full / 2..=full).contains(&w), "retry {n}: {w} ms");
            }
            assert!(d.backoff(0, Some(Duration::from_secs(7))) >= Duration::from_secs(7));
            assert_eq!(
                d.backoff(0, Some(Duration::from_secs(86_400))),
                MAX_RETRY_AFTER
            );
        }
    }

    #[test]
    fn the_run_budget_is_planned_from_the_run_or_configured() {
        let d = client("");
        d.budget_retries_for(10);
        assert_eq!(d.retry_budget.load(Ordering::Relaxed), MIN_RETRY_BUDGET);
        d.budget_retries_for(10_000);
        assert_eq!(d.retry_budget.load(Ordering::Relaxed), 2_000);
        let d = client("max_retries_per_run = 7");
        d.budget_retries_for(10_000);
        assert_eq!(d.retry_budget.load(Ordering::Relaxed), 7);
        // Retries before the plan's budget is set count against it: 7 in all, not 9.
        let d = client("max_retries_per_run = 7");
        assert!(d.take_retry() && d.take_retry());
        d.budget_retries_for(10_000);
        let mut more = 0;
        while d.take_retry() {
            more += 1;
        }
        assert_eq!((more, d.retries()), (5, 7));
    }
}
