//! The config file as written: serde structs that mirror the TOML, before any checking.
//!
//! Required keys are `Option`s here on purpose: the compile step reports every missing key
//! at once instead of serde stopping at the first. Unknown keys are collected by
//! `serde_ignored` in the loader (rather than `deny_unknown_fields`, which would also stop
//! at the first one).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Deserialize)]
pub(crate) struct RawDialler {
    pub base_url: Option<String>,
    pub client_id: Option<i64>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub token_credential: Option<String>,
    pub timeout: Option<HumanDuration>,
    pub connect_timeout: Option<HumanDuration>,
    pub max_concurrency: Option<i64>,
    pub ca_file: Option<PathBuf>,
    pub max_retries: Option<i64>,
    pub retry_delay: Option<HumanDuration>,
    pub max_retry_delay: Option<HumanDuration>,
    pub max_retries_per_run: Option<i64>,
    pub max_requests_per_second: Option<i64>,
    pub credential_check: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawState {
    pub path: Option<PathBuf>,
    pub snapshot_every: Option<HumanDuration>,
    pub history_runs: Option<i64>,
    pub cache_mb: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawMetrics {
    pub listen: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawAlerts {
    pub ping_url: Option<String>,
    pub ping_url_file: Option<PathBuf>,
    pub ping_url_env: Option<String>,
    pub ping_url_credential: Option<String>,
    pub webhook_url: Option<String>,
    pub webhook_url_file: Option<PathBuf>,
    pub webhook_url_env: Option<String>,
    pub webhook_url_credential: Option<String>,
    pub timeout: Option<HumanDuration>,
    pub retries: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawJob {
    pub name: Option<String>,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub campaign_id: Option<i64>,
    pub campaign_name: Option<String>,
    pub on_missing: Option<OnMissing>,
    pub default_country: Option<String>,
    pub phone_format: Option<PhoneFormat>,
    pub on_bad_phone: Option<OnBadPhone>,
    pub overwrite_duplicates: Option<bool>,
    pub reset_contact: Option<bool>,
    pub unlock_contact: Option<bool>,
    pub reset_when_changed: Option<Vec<String>>,
    pub max_removals: Option<i64>,
    pub max_removals_percent: Option<f64>,
    pub max_resets: Option<i64>,
    pub max_resets_percent: Option<f64>,
    pub min_rows_percent: Option<f64>,
    pub verify_every: Option<HumanDuration>,
    pub ping_url: Option<String>,
    pub ping_url_file: Option<PathBuf>,
    pub on_done: Option<OnDone>,
    pub outcomes: Option<RawOutcomes>,
    pub source: Option<RawSource>,
    /// Dialler field name -> CRM column name.
    pub fields: Option<BTreeMap<String, String>>,
}

/// `[job.outcomes]`.
#[derive(Debug, Deserialize)]
pub(crate) struct RawOutcomes {
    pub path: Option<PathBuf>,
    pub format: Option<OutcomeFormat>,
    pub delimiter: Option<String>,
    pub bom: Option<bool>,
    pub columns: Option<Vec<String>>,
    pub map: Option<BTreeMap<String, String>>,
    pub final_only: Option<bool>,
    pub webhook_url: Option<String>,
    pub webhook_url_file: Option<PathBuf>,
    pub webhook_url_env: Option<String>,
    pub webhook_url_credential: Option<String>,
    pub webhook_secret: Option<String>,
    pub webhook_secret_file: Option<PathBuf>,
    pub webhook_secret_env: Option<String>,
    pub webhook_secret_credential: Option<String>,
    pub batch_size: Option<i64>,
    pub retries: Option<i64>,
    pub timeout: Option<HumanDuration>,
}

/// The outcome file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutcomeFormat {
    /// One row per outcome, a header line first (the default).
    Csv,
    /// One JSON object per line.
    Ndjson,
}

/// What happens to a contact whose result is done or aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDone {
    /// Nothing: it stays as the export says (the default).
    Keep,
    /// It is locked, so the dialler stops calling it, even while the CRM exports it.
    Lock,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawSource {
    #[serde(rename = "type")]
    pub kind: Option<SourceType>,
    pub path: Option<PathBuf>,
    /// `type = "http"`: the export's address and how to ask for it.
    pub url: Option<String>,
    /// `type = "postgres"` or `"mysql"`: the URL (it holds a password) may come from a
    /// file, the environment or a credential instead, and `query` is what is run.
    pub url_file: Option<PathBuf>,
    pub url_env: Option<String>,
    pub url_credential: Option<String>,
    pub query: Option<String>,
    pub method: Option<HttpMethod>,
    pub body: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub format: Option<HttpFormat>,
    pub timeout: Option<HumanDuration>,
    pub connect_timeout: Option<HumanDuration>,
    pub max_bytes: Option<ByteSize>,
    pub ca_file: Option<PathBuf>,
    pub follow_redirects: Option<bool>,
    pub retries: Option<i64>,
    pub retry_delay: Option<HumanDuration>,
    pub auth: Option<RawAuth>,
    pub pagination: Option<RawPagination>,
    pub delimiter: Option<String>,
    pub encoding: Option<String>,
    pub record_path: Option<String>,
    pub skip_header_lines: Option<u64>,
    pub skip_footer_lines: Option<u64>,
    pub comment: Option<String>,
}

/// What happens to a contact whose record left the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMissing {
    /// Lock it: reversible, keeps its call history (the default).
    Lock,
    /// Delete it with its call history: irreversible.
    Delete,
    /// Leave it as it is.
    Keep,
}

/// How phone numbers are written in what dialsync sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhoneFormat {
    /// `+4989123456` (E.164, the default).
    E164,
    /// `4989123456`: country code first, no plus sign, as the dialler's own history shows.
    Digits,
}

/// What a row with a phone number the dialler cannot dial becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBadPhone {
    /// The number is left out of the contact and the row gets a warning, as long as
    /// another of its numbers is good (the default).
    SkipField,
    /// The row is rejected.
    RejectRow,
}

/// How the reader parses an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Csv,
    Json,
    /// The rows of a SQL query (`SourceConfig::sql`), read from the database's stream.
    Sql,
}

/// `[job.source] type`: a file of either format, an HTTP(S) export or a SQL query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SourceType {
    Csv,
    Json,
    Http,
    #[serde(alias = "postgresql")]
    Postgres,
    #[serde(alias = "mariadb")]
    Mysql,
}

/// What an HTTP export's body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpFormat {
    Csv,
    /// One JSON document: an array of records, or a wrapper holding them at `record_path`.
    Json,
    /// One JSON object per line.
    Ndjson,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Post,
}

/// `[job.source.auth]`.
#[derive(Debug, Deserialize)]
pub(crate) struct RawAuth {
    #[serde(rename = "type")]
    pub kind: Option<AuthType>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub token_credential: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    pub password_credential: Option<String>,
    pub name: Option<String>,
    pub value: Option<String>,
    pub value_file: Option<PathBuf>,
    pub value_env: Option<String>,
    pub value_credential: Option<String>,
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    pub client_secret_env: Option<String>,
    pub client_secret_credential: Option<String>,
    pub scope: Option<String>,
    pub client_auth: Option<ClientAuth>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AuthType {
    Bearer,
    Basic,
    Header,
    #[serde(rename = "oauth2_client_credentials")]
    OAuth2ClientCredentials,
}

/// How an OAuth2 client sends its credentials to the token endpoint (RFC 6749 2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// HTTP Basic authentication (the default: every server must take it).
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Body,
}

/// `[job.source.pagination]`.
#[derive(Debug, Deserialize)]
pub(crate) struct RawPagination {
    #[serde(rename = "type")]
    pub kind: Option<PageType>,
    pub path: Option<String>,
    pub param: Option<String>,
    pub size_param: Option<String>,
    pub size: Option<i64>,
    pub start: Option<i64>,
    pub max_pages: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PageType {
    NextUrl,
    LinkHeader,
    Cursor,
    Offset,
    Page,
}

/// A size in bytes: a whole number, or text such as `"500 MB"` or `"1 GiB"`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ByteSize(pub u64);

impl ByteSize {
    pub(crate) fn parse(text: &str) -> Option<u64> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (n, unit) = t.split_at(split);
        let n: u64 = n.parse().ok()?;
        let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1000,
            "kib" => 1 << 10,
            "mb" => 1000 * 1000,
            "mib" => 1 << 20,
            "gb" => 1000 * 1000 * 1000,
            "gib" => 1 << 30,
            _ => return None,
        };
        n.checked_mul(factor)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#"a size such as "500 MB" or "1 GiB", or whole bytes"#)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                ByteSize::parse(v).map(ByteSize).ok_or_else(|| {
                    E::custom(format!(
                        "`{v}` is not a size: write e.g. \"500 MB\" or \"1 GiB\" (units B, kB, MB, GB, KiB, MiB, GiB)"
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration written as `"30s"`, `"2m 30s"`, `"500ms"`, or a whole number of seconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#"a duration such as "30s", "2m" or "500ms", or whole seconds"#)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(|s| HumanDuration(Duration::from_secs(s)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                humantime::parse_duration(v)
                    .map(HumanDuration)
                    .map_err(|e| {
                        E::custom(format!("`{v}` is not a duration ({e}); write e.g. \"30s\""))
                    })
            }
        }
        d.deserialize_any(V)
    }
}
