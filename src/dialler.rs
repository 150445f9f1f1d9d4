//! The jtel dialler's REST API: every contact function of the vendor's documentation,
//! plus the campaign look-ups a sync needs, with errors typed by return code.
//!
//! One `reqwest::Client` is shared by all calls (keep-alive pool, connect and total
//! timeouts). The bearer header is set once and marked sensitive, so neither `Debug`
//! output nor any error message carries the token.

use std::sync::atomic::{AtomicU64, Ordering};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value};

use crate::config::{DiallerConfig, Secret};

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
    Server { status: u16, message: String },
    #[error("unexpected answer from the dialler (HTTP {status}): {message}")]
    Unexpected { status: u16, message: String },
    #[error(
        "cannot connect to the dialler at {base_url}: check base_url and that the server is up"
    )]
    Connect {
        base_url: String,
        #[source]
        source: reqwest::Error,
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
    /// Errors after which no further call can succeed in this run: stop at once.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            DiallerError::Unauthorized { .. }
                | DiallerError::EndpointMissing { .. }
                | DiallerError::Connect { .. }
                | DiallerError::CampaignNotFound { .. }
                | DiallerError::CampaignIdNotFound(_)
        )
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
    calls: AtomicU64,
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
            .pool_max_idle_per_host(cfg.max_concurrency);
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
            calls: AtomicU64::new(0),
        })
    }

    /// API calls sent so far (each attempt counts).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, DiallerError> {
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
        self.calls.fetch_add(1, Ordering::Relaxed);
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() {
                DiallerError::Connect {
                    base_url: self.base_url.clone(),
                    source: e.without_url(),
                }
            } else {
                DiallerError::Transport(e.without_url())
            }
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| DiallerError::Transport(e.without_url()))?;
        if status.is_success() {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(|e| DiallerError::Decode(e.to_string()));
        }
        Err(self.error(status, method, path, &bytes))
    }

    fn error(&self, status: StatusCode, method: Method, path: &str, body: &[u8]) -> DiallerError {
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
            s @ 500..=599 => DiallerError::Server { status: s, message },
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
        self.records(method, path, query, body)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| DiallerError::Decode("the answer holds no record".into()))
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
    pub async fn import(
        &self,
        contact: &Value,
        flags: ImportFlags,
    ) -> Result<Record, DiallerError> {
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
        self.one(Method::POST, "/dialler/contacts/import", &q, Some(contact))
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

/// The contact ID in a returned record.
pub fn record_id(r: &Record) -> Option<i64> {
    r.get("ID").and_then(Value::as_i64)
}
