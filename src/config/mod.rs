//! Loading and checking the TOML config.
//!
//! Two stages, as in the rest of the program: the file is deserialized section by section
//! into the raw structs of [`raw`], then compiled into the typed [`Config`] that the rest
//! of the program uses. Every problem found on the way (syntax, unknown keys, wrong types,
//! missing or contradictory keys, bad values) is collected with its line and key, so an
//! operator fixes the whole file in one go instead of one error per attempt.
//!
//! Defaults live here and only here (the `DEFAULT_*` constants).

mod compile;
mod dialler;
mod job;
mod outcomes;
mod problems;
pub(crate) mod raw;
pub(crate) mod schedule;
mod secret;
mod source;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::schedule::CronSchedule;
use crate::fields::Field;

pub(crate) use outcomes::{Column, OnDone, OutcomeFormat, OutcomesConfig};
pub use problems::ConfigError;
pub(crate) use problems::Problem;
pub(crate) use raw::{
    ClientAuth, HttpFormat, HttpMethod, OnBadPhone, OnMissing, PhoneFormat, SourceKind,
};
pub use secret::{Secret, TokenError, TokenSource};

use compile::{ca_file_problem, compile, compile_guards};
use dialler::compile_dialler;
use job::compile_job;
use problems::{key, Ctx, Seg};
use source::compile_source;
pub(crate) use source::{
    display_url, sql_display_url, HttpAuth, HttpSource, PageKind, Pagination, SqlDialect, SqlSource,
};

pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_CREDENTIAL_CHECK: Duration = Duration::from_secs(3600);
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_MAX_CONCURRENCY: usize = 8;
pub(crate) const DEFAULT_STATE_PATH: &str = "/var/lib/dialsync/state";
pub(crate) const DEFAULT_ON_MISSING: OnMissing = OnMissing::Lock;
pub(crate) const DEFAULT_OVERWRITE_DUPLICATES: bool = true;
pub(crate) const DEFAULT_PHONE_FORMAT: PhoneFormat = PhoneFormat::E164;
pub(crate) const DEFAULT_MAX_RETRIES: u32 = 5;
pub(crate) const DEFAULT_RETRY_DELAY: Duration = Duration::from_millis(500);
pub(crate) const DEFAULT_MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_MAX_REMOVALS_PERCENT: f64 = 10.0;
pub(crate) const DEFAULT_MAX_RESETS_PERCENT: f64 = 25.0;
pub(crate) const DEFAULT_MIN_ROWS_PERCENT: f64 = 75.0;
pub(crate) const DEFAULT_VERIFY_EVERY: Duration = Duration::from_secs(24 * 3600);
pub(crate) const DEFAULT_SNAPSHOT_EVERY: Duration = Duration::from_secs(3600);
pub(crate) const DEFAULT_ALERT_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_ALERT_RETRIES: u32 = 2;
/// How many finished runs each job's history keeps by default.
pub(crate) const DEFAULT_HISTORY_RUNS: usize = 200;
/// `[state] cache_mb`: what the state database keeps of its pages in memory, in MB.
pub(crate) const DEFAULT_STATE_CACHE_MB: u64 = 2;

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for messages).
    pub file: PathBuf,
    pub dialler: DiallerConfig,
    pub state: StateConfig,
    /// `[metrics]`: where the daemon serves `/metrics` (none without the section).
    pub metrics: Option<MetricsConfig>,
    /// `[alerts]`: pings and the webhook (nothing is sent without the section).
    pub alerts: AlertsConfig,
    pub jobs: Vec<JobConfig>,
    /// Things that are allowed but probably not what the operator wants.
    pub warnings: Vec<String>,
}

/// `[alerts]`: where runs are reported to. The URLs often hold a secret (a check's UUID,
/// a chat's webhook key), so they come like the token: inline, from a file, a variable or
/// a systemd credential, read at each run and never logged.
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    /// healthchecks.io style: `{url}/start` when a run starts, `{url}` when it succeeds,
    /// `{url}/fail` when it stops or operations fail. A job's own `ping_url` overrides it.
    pub ping_url: Option<TokenSource>,
    /// Receives a JSON POST with the run's report when a run is not ok.
    pub webhook_url: Option<TokenSource>,
    /// Per request.
    pub timeout: Duration,
    /// Requests sent again after a failure (no answer, 5xx, 429).
    pub retries: u32,
}

/// The folder relative paths in the config file at `path` are taken from.
fn base_dir(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

impl AlertsConfig {
    /// No `[alerts]` section: nothing is sent.
    fn default_for_none() -> AlertsConfig {
        AlertsConfig {
            ping_url: None,
            webhook_url: None,
            timeout: DEFAULT_ALERT_TIMEOUT,
            retries: DEFAULT_ALERT_RETRIES,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// The address the daemon's `/metrics` listens on.
    pub listen: std::net::SocketAddr,
}

#[derive(Debug, Clone)]
pub struct DiallerConfig {
    /// Base URL without the ClientsID and without a trailing slash.
    pub base_url: String,
    pub client_id: u32,
    pub token: TokenSource,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_concurrency: usize,
    /// Calls per second at most (each attempt counts); `None`: no limit but concurrency.
    pub max_requests_per_second: Option<std::num::NonZeroU32>,
    /// How often a daemon's run with nothing to send still makes one read-only call to
    /// prove the token (zero: every run). A manual sync always does.
    pub credential_check: Duration,
    pub ca_file: Option<PathBuf>,
    pub retry: RetryConfig,
}

/// How calls that failed for a passing reason (connection, timeout, 429, 5xx) are retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    /// Retries of one call after its first attempt.
    pub max_retries: u32,
    /// The first backoff; it doubles per retry, with jitter, up to `max_delay`.
    pub delay: Duration,
    pub max_delay: Duration,
    /// Retries of one run, all calls together; `None`: 20% of the run's planned
    /// operations, at least 100.
    pub per_run: Option<u64>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: DEFAULT_MAX_RETRIES,
            delay: DEFAULT_RETRY_DELAY,
            max_delay: DEFAULT_MAX_RETRY_DELAY,
            per_run: None,
        }
    }
}

/// A job's limits on what one run may do before it stops and asks for `--force`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guards {
    /// Locks and deletes per run, as a count.
    pub max_removals: Option<u64>,
    /// Locks and deletes per run, as a percentage of the contacts in the state (100: off).
    pub max_removals_percent: f64,
    pub max_resets: Option<u64>,
    pub max_resets_percent: f64,
    /// Rows an export must have, as a percentage of the last good run's (0: off).
    pub min_rows_percent: f64,
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            max_removals: None,
            max_removals_percent: DEFAULT_MAX_REMOVALS_PERCENT,
            max_resets: None,
            max_resets_percent: DEFAULT_MAX_RESETS_PERCENT,
            min_rows_percent: DEFAULT_MIN_ROWS_PERCENT,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StateConfig {
    pub path: PathBuf,
    /// How old a job's snapshot (see `state::Store::write_snapshot`) may grow before a
    /// run that changed the state writes a new one (zero: after every such run).
    pub snapshot_every: Duration,
    /// How many finished runs each job's history keeps (`dialsync history`).
    pub history_runs: usize,
    /// The state database's page cache, in MB: the most of its memory that grows with
    /// the campaigns (more makes the outcomes and verification reads of a large campaign
    /// faster).
    pub cache_mb: u64,
}

/// Which campaign a job syncs into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CampaignRef {
    Id(i64),
    /// Resolved to an ID through the API (exact match) before the first write.
    Name(String),
}

impl fmt::Display for CampaignRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CampaignRef::Id(id) => write!(f, "campaign {id}"),
            CampaignRef::Name(n) => write!(f, "campaign \"{n}\""),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobConfig {
    pub name: String,
    /// This job's `ping_url` (else `[alerts] ping_url`).
    pub ping_url: Option<TokenSource>,
    pub schedule: Option<CronSchedule>,
    /// The time zone of `schedule` (UTC unless set).
    pub timezone: chrono_tz::Tz,
    pub campaign: CampaignRef,
    pub on_missing: OnMissing,
    pub default_country: Option<phonenumber::country::Id>,
    pub phone_format: PhoneFormat,
    pub on_bad_phone: OnBadPhone,
    pub overwrite_duplicates: bool,
    /// `None`: the flag is not sent.
    pub reset_contact: Option<bool>,
    /// `None`: the flag is not sent.
    pub unlock_contact: Option<bool>,
    /// CRM columns whose change triggers a reset.
    pub reset_when_changed: Vec<String>,
    pub guards: Guards,
    pub source: SourceConfig,
    /// The CRM column holding UserData.
    pub key_column: String,
    /// Every mapped field except UserData, with its CRM column, in field order.
    pub fields: Vec<(&'static Field, String)>,
    /// How often a run reads the campaign back to check the state against it (zero:
    /// every run).
    pub verify_every: Duration,
    /// `[job.outcomes]`: where the contacts' dialling outcomes go.
    pub outcomes: Option<OutcomesConfig>,
    /// Whether a contact whose result is done or aborted is locked.
    pub on_done: OnDone,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub kind: SourceKind,
    pub path: PathBuf,
    /// `None`: detected from the header line.
    pub delimiter: Option<u8>,
    /// `None`: UTF-8, with or without BOM.
    pub encoding: Option<&'static encoding_rs::Encoding>,
    /// JSON: where the array of records is inside a wrapper object (`results`,
    /// `data.items`), split at the dots.
    pub record_path: Vec<String>,
    /// CSV: lines before the header (a report's title), skipped.
    pub skip_header_lines: u64,
    /// CSV: lines at the end (a report's footer, trailing blank lines aside), skipped.
    pub skip_footer_lines: u64,
    /// CSV: lines starting with this character are skipped.
    pub comment: Option<u8>,
    /// `type = "http"`: the export is downloaded from here first (`path` is then its URL
    /// as messages show it).
    pub http: Option<Box<HttpSource>>,
    /// `type = "postgres"` or `"mysql"`: the rows of a query (`kind` is then `Sql`, and
    /// `path` names the database as messages show it).
    pub sql: Option<Box<SqlSource>>,
}

#[cfg(test)]
impl SourceConfig {
    /// A source of `kind` at `path` with every other setting left at its default.
    pub(crate) fn for_tests(kind: SourceKind, path: &str) -> SourceConfig {
        SourceConfig {
            kind,
            path: path.into(),
            delimiter: None,
            encoding: None,
            record_path: Vec::new(),
            skip_header_lines: 0,
            skip_footer_lines: 0,
            comment: None,
            http: None,
            sql: None,
        }
    }
}

impl Config {
    /// Reads and checks the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            problems: vec![Problem {
                line: None,
                key: String::new(),
                message: format!("cannot read the config file: {e}"),
            }],
        })?;
        Config::from_str(&text, path)
    }

    /// The state path the config file at `path` names, read leniently: for commands that
    /// only read (`status`, `history`) when the file no longer passes its checks, so that
    /// they still find the state and the running daemon's socket. The default path when
    /// the file cannot even be parsed or names none.
    pub fn state_path_of(path: &Path) -> PathBuf {
        let named = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| toml::from_str::<toml::Table>(&text).ok())
            .and_then(|t| {
                let p = t.get("state")?.get("path")?.as_str()?;
                Some(PathBuf::from(p))
            });
        match named {
            Some(p) if p.is_absolute() => p,
            Some(p) => base_dir(path).join(p),
            None => PathBuf::from(DEFAULT_STATE_PATH),
        }
    }

    /// Checks config `text` as if read from `path`; relative paths in it are taken
    /// relative to the directory of `path`.
    pub fn from_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut ctx = Ctx {
            text,
            problems: Vec::new(),
            removed: Vec::new(),
        };
        let base_dir = base_dir(path);
        let config = compile(&mut ctx, &base_dir, path);
        match config {
            Some(c) if ctx.problems.is_empty() => Ok(c),
            _ => {
                let mut problems = ctx.problems;
                problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
                Err(ConfigError {
                    file: path.to_path_buf(),
                    problems,
                })
            }
        }
    }

    /// The job called `name`, or an error listing the jobs there are.
    pub fn job(&self, name: &str) -> Result<&JobConfig, String> {
        self.jobs.iter().find(|j| j.name == name).ok_or_else(|| {
            format!(
                "no job named `{name}` in {}; its jobs are: {}",
                self.file.display(),
                self.jobs
                    .iter()
                    .map(|j| j.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }
}

impl JobConfig {
    /// Whether a run of `other` does what a run of this job does: everything but when it
    /// runs (`schedule`, `timezone`) and whom it tells (`ping_url`) is alike. A reload
    /// that changes more runs the job at once.
    pub fn runs_like(&self, other: &JobConfig) -> bool {
        let what = |j: &JobConfig| JobConfig {
            schedule: None,
            timezone: chrono_tz::UTC,
            ping_url: None,
            ..j.clone()
        };
        what(self) == what(other)
    }

    /// Whether a run reads the campaign's outcomes (for `[job.outcomes]` or `on_done`).
    pub fn reads_outcomes(&self) -> bool {
        self.outcomes.is_some() || self.on_done == OnDone::Lock
    }

    /// Whether the job maps an agent field (`ReservedUsersUID`, `FollowUpUsersUID`), whose
    /// values are checked against the dialler's users.
    pub(crate) fn maps_agents(&self) -> bool {
        self.fields
            .iter()
            .any(|(f, _)| f.kind == crate::fields::Kind::User)
    }

    /// The next `n` scheduled runs from now, as wall-clock times in the job's time zone
    /// (none without a schedule).
    pub fn next_runs(&self, n: usize) -> Vec<String> {
        self.schedule.as_ref().map_or_else(Vec::new, |s| {
            job::next_fires(s, self.timezone, chrono::Utc::now(), n)
        })
    }

    /// Every CRM column the job reads: the key first, then mapped and trigger columns,
    /// each once.
    pub fn columns(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let all = std::iter::once(&self.key_column)
            .chain(self.fields.iter().map(|(_, c)| c))
            .chain(self.reset_when_changed.iter());
        for c in all {
            if seen.insert(c.clone()) {
                out.push(c.clone());
            }
        }
        out
    }
}
