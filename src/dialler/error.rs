//! What a dialler call can fail with, typed by return code, and what each failure means
//! for the run (fatal, passing, carried out or not).

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum DiallerError {
    #[error(
        "the dialler rejected the credentials (HTTP 401): check the token ([dialler] token, \
         token_file, token_env or token_credential) and client_id = {client_id} (the \
         ClientsID); a token regenerated or removed in the jtel portal stops working at once"
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

pub(super) fn hint(similar: &[String]) -> String {
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

    pub(super) fn retry_after(&self) -> Option<Duration> {
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

/// The TLS library's complaint about the server's certificate, if that is why `e`
/// failed. The rustls error sits in the chain of causes, directly or inside an
/// `io::Error` (whose `source()` skips it, so each one is opened).
pub(super) fn certificate_problem(e: &reqwest::Error) -> Option<String> {
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

/// The dialler's error text: the `error` (or `message`) field of a JSON body, else the
/// start of the body.
pub(super) fn error_text(body: &[u8]) -> String {
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
