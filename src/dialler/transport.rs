//! Sending one call: retries with backoff and jitter within the call's and the run's
//! budgets, one attempt, and the answer turned into records or a typed error.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{
    certificate_problem, error_text, Dialler, DiallerError, Record, Target, MAX_RETRIES_ON_500,
    MAX_RETRY_AFTER,
};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// One API request.
#[derive(Clone)]
pub(super) struct Req<'a> {
    pub(super) method: Method,
    /// Below the base URL and ClientsID, e.g. `/dialler/contacts`.
    pub(super) path: &'a str,
    pub(super) query: &'a [(&'a str, String)],
    /// Sent as JSON.
    pub(super) body: Option<Body<'a>>,
    /// A whole campaign's listing, read as it streams in: bounded by `timeout` between
    /// reads, not as a whole (a million contacts take longer than one call may).
    pub(super) streamed: bool,
}

/// A request's JSON body: a value, or its text serialized already (an import's, without
/// building a map of its fields first).
#[derive(Clone, Copy)]
pub(super) enum Body<'a> {
    Value(&'a Value),
    Json(&'a [u8]),
}

/// The most a streamed listing may take as a whole (it must not stall for `timeout`).
const STREAMED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

impl<'a> Req<'a> {
    pub(super) fn get(path: &'a str, query: &'a [(&'a str, String)]) -> Req<'a> {
        Req {
            method: Method::GET,
            path,
            query,
            body: None,
            streamed: false,
        }
    }

    /// A listing read as it streams in (see `streamed`).
    pub(super) fn listing(path: &'a str, query: &'a [(&'a str, String)]) -> Req<'a> {
        Req {
            streamed: true,
            ..Req::get(path, query)
        }
    }

    pub(super) fn post(path: &'a str, query: &'a [(&'a str, String)], body: &'a Value) -> Req<'a> {
        Req::post_body(path, query, Body::Value(body))
    }

    pub(super) fn post_body(
        path: &'a str,
        query: &'a [(&'a str, String)],
        body: Body<'a>,
    ) -> Req<'a> {
        Req {
            method: Method::POST,
            path,
            query,
            body: Some(body),
            streamed: false,
        }
    }

    pub(super) fn bodiless(
        method: Method,
        path: &'a str,
        query: &'a [(&'a str, String)],
    ) -> Req<'a> {
        Req {
            method,
            path,
            query,
            body: None,
            streamed: false,
        }
    }
}

impl Dialler {
    /// Takes one retry from the run's budget; false when it is used up.
    pub(super) fn take_retry(&self) -> bool {
        let ok = self
            .retry_budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
            .is_ok();
        if ok {
            self.retries.fetch_add(1, Ordering::Relaxed);
            self.tenant.api.retry();
        }
        ok
    }

    /// The wait before retry `n` (0-based): `delay * 2^n` capped at `max_delay`, of which
    /// a random half ("equal jitter", so that many clients failing at once spread out),
    /// and never less than the dialler's `Retry-After`.
    pub(super) fn backoff(&self, n: u32, retry_after: Option<Duration>) -> Duration {
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
    pub(super) async fn retrying<T, F, Fut>(&self, mut attempt: F) -> Result<T, DiallerError>
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

    /// Sends `req`, retried as [`Dialler::retrying`] says; its JSON answer.
    pub(super) async fn call(&self, req: Req<'_>) -> Result<Value, DiallerError> {
        self.retrying(|_| self.call_once(req.clone())).await
    }

    /// Sends `req` once; the ID of the first record it answers with, read without
    /// building the records (an import's answer holds the whole contact).
    pub(super) async fn first_id_once(&self, req: Req<'_>) -> Result<Option<i64>, DiallerError> {
        /// The part of an answer read: `records[].ID`, the rest skipped.
        #[derive(serde::Deserialize)]
        struct Answer {
            records: Option<Vec<IdOnly>>,
        }
        #[derive(serde::Deserialize)]
        struct IdOnly {
            #[serde(rename = "ID")]
            id: Option<Value>,
        }
        let Some(bytes) = self.answer_once(req).await? else {
            return Err(DiallerError::Decode(
                "expected a JSON object with `records`".into(),
            ));
        };
        let answer: Answer =
            serde_json::from_slice(&bytes).map_err(|e| DiallerError::Decode(e.to_string()))?;
        match answer.records.unwrap_or_default().into_iter().next() {
            Some(r) => Ok(r.id.as_ref().and_then(Value::as_i64)),
            None => Err(DiallerError::Decode("the answer holds no record".into())),
        }
    }

    /// Sends `req` once; its JSON answer.
    pub(super) async fn call_once(&self, req: Req<'_>) -> Result<Value, DiallerError> {
        match self.answer_once(req).await? {
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| DiallerError::Decode(e.to_string()))
            }
            None => Ok(Value::Null),
        }
    }

    /// Sends `req` once; its answer's body, `None` if it is empty (or only white space).
    async fn answer_once(&self, req: Req<'_>) -> Result<Option<bytes::Bytes>, DiallerError> {
        // The call is in flight until its answer is read.
        let (resp, _slot) = self.respond_once(req).await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| DiallerError::Transport(e.without_url()))?;
        Ok(Some(bytes).filter(|b| !b.iter().all(u8::is_ascii_whitespace)))
    }

    /// Sends one request, once the tenant admits it (a free slot, its turn under the rate
    /// limit); a successful answer whose body is still to be read, with the slot to hold
    /// until it is, or the error its status (or the lack of one) means.
    pub(super) async fn respond_once(
        &self,
        Req {
            method,
            path,
            query,
            body,
            streamed,
        }: Req<'_>,
    ) -> Result<(reqwest::Response, super::Slot), DiallerError> {
        let mut req = match &self.root_url {
            Some(root) => self
                .http
                .request(method.clone(), request_url(root, path, query)),
            None => {
                let req = self
                    .http
                    .request(method.clone(), format!("{}{}", self.root, path));
                if query.is_empty() {
                    req
                } else {
                    req.query(query)
                }
            }
        };
        if streamed {
            req = req.timeout(STREAMED_TIMEOUT);
        }
        if let Some(b) = body {
            req = req.header(CONTENT_TYPE, "application/json").body(match b {
                Body::Value(v) => serde_json::to_vec(v).expect("JSON values serialize"),
                Body::Json(text) => text.to_vec(),
            });
        }
        let slot = self.tenant.admit().await;
        self.calls.fetch_add(1, Ordering::Relaxed);
        let sent = std::time::Instant::now();
        let resp = req.send().await;
        self.tenant.api.request(
            path,
            resp.as_ref().ok().map(|r| r.status().as_u16()),
            sent.elapsed(),
        );
        let resp = resp.map_err(|e| {
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
        // An answer of the API itself past its token check: a success, or a refusal of
        // the request (a redirect, a proxy's 5xx or a 429 may come before the check).
        if status.is_success() || matches!(status.as_u16(), 400 | 404 | 409) {
            self.accepted.fetch_add(1, Ordering::Relaxed);
        }
        if status.is_success() {
            return Ok((resp, slot));
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

    pub(super) fn error(
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

    /// The records `req` answers with.
    pub(super) async fn records(&self, req: Req<'_>) -> Result<Vec<Record>, DiallerError> {
        records_of(self.call(req).await?)
    }

    /// The one record `req` answers with.
    pub(super) async fn one(&self, req: Req<'_>) -> Result<Record, DiallerError> {
        first_record(self.call(req).await?)
    }

    /// Treats a JSON 404 ("no such contact/campaign") as an empty result.
    pub(super) async fn records_or_none(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Vec<Record>, DiallerError> {
        match self.records(Req::get(path, query)).await {
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            other => other,
        }
    }

    /// The one object at `path`, `None` on a JSON 404.
    pub(super) async fn one_or_none(&self, path: &str) -> Result<Option<Record>, DiallerError> {
        Ok(self.records_or_none(path, &[]).await?.into_iter().next())
    }
}

/// The first record of an answer.
pub(super) fn first_record(v: Value) -> Result<Record, DiallerError> {
    records_of(v)?
        .into_iter()
        .next()
        .ok_or_else(|| DiallerError::Decode("the answer holds no record".into()))
}

/// `root` parsed, if a request's URL can be built from it by [`request_url`]: not when
/// it has a query or a fragment (then each request parses its URL).
pub(super) fn root_url(root: &str) -> Option<reqwest::Url> {
    reqwest::Url::parse(root)
        .ok()
        .filter(|u| u.query().is_none() && u.fragment().is_none())
}

/// The URL of `path` with `query` below `root` (the parsed root URL): what parsing
/// `root` and `path` written together, and adding the query as reqwest does, gives.
pub(super) fn request_url(
    root: &reqwest::Url,
    path: &str,
    query: &[(&str, String)],
) -> reqwest::Url {
    let mut url = root.clone();
    let mut full = String::with_capacity(root.path().len() + path.len());
    full.push_str(root.path());
    full.push_str(path);
    url.set_path(&full);
    if !query.is_empty() {
        url.query_pairs_mut()
            .extend_pairs(query.iter().map(|(k, v)| (k, v.as_str())));
    }
    url
}

pub(super) fn target_path(
    target: Target<'_>,
    action: Option<&str>,
) -> (String, Vec<(&'static str, String)>) {
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
pub(super) fn records_of(v: Value) -> Result<Vec<Record>, DiallerError> {
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
