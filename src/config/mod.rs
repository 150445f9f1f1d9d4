//! Loading and checking the TOML config.
//!
//! Two stages, as in the rest of the program: the file is deserialized section by section
//! into the raw structs of [`raw`], then compiled into the typed [`Config`] that the rest
//! of the program uses. Every problem found on the way (syntax, unknown keys, wrong types,
//! missing or contradictory keys, bad values) is collected with its line and key, so an
//! operator fixes the whole file in one go instead of one error per attempt.
//!
//! Defaults live here and only here (the `DEFAULT_*` constants).

pub mod raw;
pub mod schedule;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::de::IntoDeserializer;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

pub use raw::{OnMissing, PhoneFormat, SourceKind};

use crate::config::schedule::CronSchedule;
use crate::fields::{self, Field};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_CONCURRENCY: usize = 8;
pub const DEFAULT_STATE_PATH: &str = "/var/lib/dialsync/state";
pub const DEFAULT_ON_MISSING: OnMissing = OnMissing::Lock;
pub const DEFAULT_OVERWRITE_DUPLICATES: bool = true;
pub const DEFAULT_PHONE_FORMAT: PhoneFormat = PhoneFormat::E164;
pub const DEFAULT_MAX_RETRIES: u32 = 5;
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_millis(500);
pub const DEFAULT_MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_REMOVALS_PERCENT: f64 = 10.0;
pub const DEFAULT_MAX_RESETS_PERCENT: f64 = 25.0;
pub const DEFAULT_MIN_ROWS_PERCENT: f64 = 75.0;
pub const DEFAULT_VERIFY_EVERY: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_SNAPSHOT_EVERY: Duration = Duration::from_secs(3600);

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for messages).
    pub file: PathBuf,
    pub dialler: DiallerConfig,
    pub state: StateConfig,
    pub jobs: Vec<JobConfig>,
    /// Things that are allowed but probably not what the operator wants.
    pub warnings: Vec<String>,
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
}

/// Where the bearer token comes from. Read when a client is built, not at load time, so
/// that a config can be checked for syntax on a machine without the secret.
#[derive(Clone)]
pub enum TokenSource {
    Inline(Secret),
    File(PathBuf),
    Env(String),
    /// A systemd credential (`LoadCredential=`), read from `$CREDENTIALS_DIRECTORY`.
    Credential(String),
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Inline(_) => f.write_str("Inline(<redacted>)"),
            TokenSource::File(p) => write!(f, "File({})", p.display()),
            TokenSource::Env(v) => write!(f, "Env({v})"),
            TokenSource::Credential(c) => write!(f, "Credential({c})"),
        }
    }
}

/// A secret string that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why the token could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("dialler.token_file {path}: cannot read the token file")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("dialler.token_file {0}: the file is empty")]
    EmptyFile(PathBuf),
    #[error("dialler.token_env: the environment variable `{0}` is not set or empty")]
    Env(String),
    #[error(
        "dialler.token_credential `{0}`: $CREDENTIALS_DIRECTORY is not set, so this command runs \
         outside the dialsync service. Start the service (`systemctl start dialsync`; a manual \
         `dialsync sync` is then handed to it), or give this command the token another way \
         (`token_file` or `token_env` in a copy of the config)"
    )]
    NoCredentials(String),
    #[error("dialler.token_credential `{name}`: cannot read {path}")]
    Credential {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl TokenSource {
    pub fn resolve(&self) -> Result<Secret, TokenError> {
        match self {
            TokenSource::Inline(s) => Ok(s.clone()),
            TokenSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| TokenError::File {
                    path: path.clone(),
                    source,
                })?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(TokenError::EmptyFile(path.clone()));
                }
                Ok(Secret::new(token))
            }
            TokenSource::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
                    .ok_or_else(|| TokenError::NoCredentials(name.clone()))?;
                let path = PathBuf::from(dir).join(name);
                let text =
                    std::fs::read_to_string(&path).map_err(|source| TokenError::Credential {
                        name: name.clone(),
                        path: path.clone(),
                        source,
                    })?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(TokenError::EmptyFile(path));
                }
                Ok(Secret::new(token))
            }
            TokenSource::Env(var) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
                _ => Err(TokenError::Env(var.clone())),
            },
        }
    }
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

#[derive(Debug, Clone)]
pub struct JobConfig {
    pub name: String,
    pub schedule: Option<CronSchedule>,
    /// The time zone of `schedule` (UTC unless set).
    pub timezone: chrono_tz::Tz,
    pub campaign: CampaignRef,
    pub on_missing: OnMissing,
    pub default_country: Option<phonenumber::country::Id>,
    pub phone_format: PhoneFormat,
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
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub kind: SourceKind,
    pub path: PathBuf,
    /// `None`: detected from the header line.
    pub delimiter: Option<u8>,
    /// `None`: UTF-8, with or without BOM.
    pub encoding: Option<&'static encoding_rs::Encoding>,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

/// A config that could not be loaded: every problem found, with file, line and key.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{} has {n} problem{}:",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {}", self.file.display())?;
            if let Some(line) = p.line {
                write!(f, ":{line}")?;
            }
            if p.key.is_empty() {
                write!(f, ": {}", p.message)?;
            } else {
                write!(f, ": {}: {}", p.key, p.message)?;
            }
        }
        Ok(())
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

    /// Checks config `text` as if read from `path`; relative paths in it are taken
    /// relative to the directory of `path`.
    pub fn from_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut ctx = Ctx {
            text,
            problems: Vec::new(),
            removed: Vec::new(),
        };
        let base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
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

/// What is wrong with the CA file at `path`, if anything: it must be readable and hold
/// at least one PEM certificate (what the dialler client loads; checked here so that
/// `validate` rejects what a run would).
fn ca_file_problem(path: &Path) -> Option<String> {
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        Err(e) => return Some(format!("cannot read {}: {e}", path.display())),
    };
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => None,
        _ => Some(format!(
            "{} holds no PEM certificate (a file with -----BEGIN CERTIFICATE----- blocks is expected)",
            path.display()
        )),
    }
}

/// The text being compiled and the problems found so far.
struct Ctx<'a> {
    text: &'a str,
    problems: Vec<Problem>,
    /// Keys taken out of a section because their value was invalid (already reported).
    removed: Vec<String>,
}

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

impl Ctx<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1
    }

    fn push(&mut self, line: Option<usize>, key: impl Into<String>, message: impl Into<String>) {
        let (key, message) = (key.into(), message.into());
        // A key removed for a bad value is then missing; that is the same problem again.
        if !self.removed.contains(&key) {
            self.problems.push(Problem { line, key, message });
        }
    }

    /// A required `key` missing from the section at `section` (reported at its header).
    fn missing(&mut self, root: &Spanned<DeTable<'_>>, section: &[Seg], key: &str, message: &str) {
        let line = locate(root, section).map(|off| self.line_of(off));
        let mut path = section.to_vec();
        path.push(Seg::Key(key.to_string()));
        self.push(line, display_path(&path), message);
    }

    /// A problem with the value (or key) at `path` inside `root`.
    fn at(&mut self, root: &Spanned<DeTable<'_>>, path: &[Seg], message: impl Into<String>) {
        let line = locate(root, path).map(|off| self.line_of(off));
        self.push(line, display_path(path), message);
    }

    /// Deserializes one section, recording unknown keys and every type error: after an
    /// error the offending key is taken out and the section deserialized again, so one bad
    /// value does not hide the next. Returns the section without its bad keys.
    fn section<T: DeserializeOwned>(
        &mut self,
        root: &Spanned<DeTable<'_>>,
        prefix: &[Seg],
        value: &Spanned<DeValue<'_>>,
    ) -> Option<T> {
        let mut value = value.clone();
        let mut reported_unknown = HashSet::new();
        // Each round removes one key, so this ends; the bound is a guard against a bug.
        for _ in 0..64 {
            let mut unknown: Vec<Vec<Seg>> = Vec::new();
            let result = {
                let mut on_unknown = |p: serde_ignored::Path<'_>| unknown.push(ignored_path(&p));
                let de = value.clone().into_deserializer();
                let de = serde_ignored::Deserializer::new(de, &mut on_unknown);
                serde_path_to_error::deserialize::<_, T>(de)
            };
            for rel in unknown {
                let path: Vec<Seg> = prefix.iter().cloned().chain(rel.iter().cloned()).collect();
                if reported_unknown.insert(display_path(&path)) {
                    self.at(
                        root,
                        &path,
                        "unknown key (check its spelling and the README's config reference)",
                    );
                }
            }
            let e = match result {
                Ok(v) => return Some(v),
                Err(e) => e,
            };
            let mut rel: Vec<Seg> = Vec::new();
            for seg in e.path().iter() {
                match seg {
                    serde_path_to_error::Segment::Seq { index } => rel.push(Seg::Index(*index)),
                    serde_path_to_error::Segment::Map { key } => rel.push(Seg::Key(key.clone())),
                    _ => {}
                }
            }
            // Remove the innermost key on the path (an array goes as a whole).
            while matches!(rel.last(), Some(Seg::Index(_))) {
                rel.pop();
            }
            let path: Vec<Seg> = prefix.iter().cloned().chain(rel.iter().cloned()).collect();
            let inner = e.into_inner();
            let line = inner
                .span()
                .map(|s| self.line_of(s.start))
                .or_else(|| locate(root, &path).map(|o| self.line_of(o)));
            self.push(line, display_path(&path), inner.message().to_string());
            if rel.is_empty() || !remove_key(&mut value, &rel) {
                return None;
            }
            self.removed.push(display_path(&path));
        }
        None
    }
}

/// Removes the key at `path` (keys only) from a table value; false if it is not there.
fn remove_key(value: &mut Spanned<DeValue<'_>>, path: &[Seg]) -> bool {
    let Some((Seg::Key(last), parents)) = path.split_last() else {
        return false;
    };
    let mut table = match value.get_mut() {
        DeValue::Table(t) => t,
        _ => return false,
    };
    for seg in parents {
        let Seg::Key(k) = seg else { return false };
        table = match table.get_mut(k.as_str()).map(|v| v.get_mut()) {
            Some(DeValue::Table(t)) => t,
            _ => return false,
        };
    }
    table.remove(last.as_str()).is_some()
}

fn ignored_path(p: &serde_ignored::Path<'_>) -> Vec<Seg> {
    use serde_ignored::Path as P;
    let mut out = match p {
        P::Root => return Vec::new(),
        P::Seq { parent, .. }
        | P::Map { parent, .. }
        | P::Some { parent }
        | P::NewtypeStruct { parent }
        | P::NewtypeVariant { parent } => ignored_path(parent),
    };
    match p {
        P::Seq { index, .. } => out.push(Seg::Index(*index)),
        P::Map { key, .. } => out.push(Seg::Key(key.clone())),
        _ => {}
    }
    out
}

fn display_path(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{}]", i + 1)),
        }
    }
    s
}

/// Byte offset of the key (or, for an index, the element) at `path`.
fn locate(root: &Spanned<DeTable<'_>>, path: &[Seg]) -> Option<usize> {
    let mut best = None;
    let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
    let mut array: Option<&[Spanned<DeValue<'_>>]> = None;
    for seg in path {
        let value = match seg {
            Seg::Key(k) => {
                let (key, value) = table?
                    .iter()
                    .find(|(key, _)| key.get_ref().as_ref() == k.as_str())?;
                best = Some(key.span().start);
                value
            }
            Seg::Index(i) => {
                let value = array?.get(*i)?;
                best = Some(value.span().start);
                value
            }
        };
        table = None;
        array = None;
        match value.get_ref() {
            DeValue::Table(t) => table = Some(t),
            DeValue::Array(a) => array = Some(a),
            _ => {}
        }
    }
    best
}

fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

fn compile(ctx: &mut Ctx<'_>, base_dir: &Path, file: &Path) -> Option<Config> {
    let root = match DeTable::parse(ctx.text) {
        Ok(t) => t,
        Err(e) => {
            let line = e.span().map(|s| ctx.line_of(s.start));
            ctx.push(line, "", format!("not valid TOML: {}", e.message()));
            return None;
        }
    };
    let mut warnings = Vec::new();
    let mut dialler_raw = None;
    let mut state_raw = None;
    let mut jobs_raw: Vec<(usize, Option<raw::RawJob>)> = Vec::new();
    let mut saw_job = false;
    for (k, v) in root.get_ref().iter() {
        let name = k.get_ref().as_ref();
        match name {
            "dialler" => dialler_raw = ctx.section::<raw::RawDialler>(&root, &[key("dialler")], v),
            "state" => state_raw = ctx.section::<raw::RawState>(&root, &[key("state")], v),
            "job" => {
                saw_job = true;
                match v.get_ref() {
                    DeValue::Array(items) => {
                        for (i, item) in items.iter().enumerate() {
                            let job = ctx.section::<raw::RawJob>(
                                &root,
                                &[key("job"), Seg::Index(i)],
                                item,
                            );
                            jobs_raw.push((i, job));
                        }
                    }
                    _ => ctx.at(&root, &[key("job")], "must be written as [[job]] sections"),
                }
            }
            other => {
                let hint = match other {
                    "jobs" => " (did you mean [[job]]?)",
                    "source" | "fields" => {
                        " (it belongs inside a job: [job.source] / [job.fields] after [[job]])"
                    }
                    _ => "",
                };
                ctx.at(
                    &root,
                    &[key(other)],
                    format!("unknown section; expected [dialler], [state] and [[job]]{hint}"),
                );
            }
        }
    }
    if !root
        .get_ref()
        .iter()
        .any(|(k, _)| k.get_ref().as_ref() == "dialler")
    {
        ctx.push(
            None,
            "dialler",
            "missing [dialler] section (base_url, client_id and a token)",
        );
    }
    if !saw_job {
        ctx.push(None, "job", "no [[job]] section: add at least one job");
    }

    let resolve = |p: PathBuf| if p.is_absolute() { p } else { base_dir.join(p) };

    let dialler = dialler_raw.and_then(|d| compile_dialler(ctx, &root, d, &resolve, &mut warnings));
    let (state_path, snapshot_every) = match state_raw {
        Some(s) => (s.path, s.snapshot_every),
        None => (None, None),
    };
    let state = StateConfig {
        path: state_path
            .map(resolve)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_PATH)),
        snapshot_every: snapshot_every.map_or(DEFAULT_SNAPSHOT_EVERY, |d| d.0),
    };

    let mut jobs = Vec::new();
    let mut names = HashSet::new();
    for (i, job) in jobs_raw {
        let Some(job) = job else { continue };
        let prefix = [key("job"), Seg::Index(i)];
        if let Some(job) = compile_job(ctx, &root, &prefix, job, &resolve, &mut warnings) {
            if !names.insert(job.name.clone()) {
                let mut p = prefix.to_vec();
                p.push(key("name"));
                ctx.at(
                    &root,
                    &p,
                    format!(
                        "job name `{}` is used twice; names must be unique",
                        job.name
                    ),
                );
            }
            jobs.push(job);
        }
    }
    Some(Config {
        file: file.to_path_buf(),
        dialler: dialler?,
        state,
        jobs,
        warnings,
    })
}

fn compile_dialler(
    ctx: &mut Ctx<'_>,
    root: &Spanned<DeTable<'_>>,
    d: raw::RawDialler,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
    warnings: &mut Vec<String>,
) -> Option<DiallerConfig> {
    let start = ctx.problems.len();
    let at = |k: &str| [key("dialler"), key(k)];
    let fail = |ctx: &mut Ctx<'_>, k: &str, msg: String| ctx.at(root, &at(k), msg);

    let base_url = match d.base_url {
        None => {
            ctx.missing(
                root,
                &[key("dialler")],
                "base_url",
                "missing key `base_url`, e.g. \"https://dialler.example.com/rest/v1.0\"",
            );
            String::new()
        }
        Some(u) => {
            let trimmed = u.trim().trim_end_matches('/').to_string();
            match reqwest::Url::parse(&trimmed) {
                Ok(url) if url.scheme() == "http" || url.scheme() == "https" => {
                    if !trimmed.ends_with("/rest/v1.0") {
                        warnings.push(format!(
                            "dialler.base_url `{trimmed}` does not end in /rest/v1.0, the API's documented base path"
                        ));
                    }
                    trimmed
                }
                Ok(url) => {
                    fail(ctx, "base_url", format!("scheme `{}` is not supported; use https:// (or http:// for a local emulator)", url.scheme()));
                    String::new()
                }
                Err(e) => {
                    fail(ctx, "base_url", format!("not a URL ({e})"));
                    String::new()
                }
            }
        }
    };
    let client_id = match d.client_id {
        None => {
            ctx.missing(
                root,
                &[key("dialler")],
                "client_id",
                "missing key `client_id` (the ClientsID of your dialler tenant)",
            );
            0
        }
        Some(id) => match u32::try_from(id) {
            Ok(id) if id > 0 => {
                if base_url.ends_with(&format!("/{id}")) {
                    fail(ctx, "base_url", format!("ends with the ClientsID /{id}; leave it out, dialsync appends client_id itself"));
                }
                id
            }
            _ => {
                fail(
                    ctx,
                    "client_id",
                    format!("{id} is not a valid ClientsID (a positive whole number)"),
                );
                0
            }
        },
    };
    let sources = [
        d.token.is_some(),
        d.token_file.is_some(),
        d.token_env.is_some(),
        d.token_credential.is_some(),
    ];
    let token = match sources.iter().filter(|s| **s).count() {
        0 => {
            ctx.missing(
                root,
                &[key("dialler")],
                "token",
                "missing token: set exactly one of `token`, `token_file`, `token_env` or `token_credential`",
            );
            None
        }
        1 => {
            if let Some(t) = d.token {
                if t.trim().is_empty() {
                    fail(ctx, "token", "is empty".into());
                }
                Some(TokenSource::Inline(Secret::new(t.trim())))
            } else if let Some(f) = d.token_file {
                Some(TokenSource::File(resolve(f)))
            } else if let Some(c) = d.token_credential {
                if c.is_empty() || c.contains('/') {
                    fail(
                        ctx,
                        "token_credential",
                        "names a credential of the unit's LoadCredential=, e.g. \"token\"".into(),
                    );
                }
                Some(TokenSource::Credential(c))
            } else {
                d.token_env.map(TokenSource::Env)
            }
        }
        _ => {
            let k = if d.token.is_some() {
                "token"
            } else if d.token_file.is_some() {
                "token_file"
            } else {
                "token_env"
            };
            fail(
                ctx,
                k,
                "set only one of `token`, `token_file`, `token_env` and `token_credential`".into(),
            );
            None
        }
    };
    // An integer key with a range: `None` when absent, or out of range (reported).
    let ranged = |ctx: &mut Ctx<'_>,
                  k: &str,
                  v: Option<i64>,
                  range: std::ops::RangeInclusive<i64>,
                  otherwise: &str| match v {
        Some(n) if range.contains(&n) => Some(n),
        Some(n) => {
            let (lo, hi) = range.into_inner();
            fail(
                ctx,
                k,
                format!("{n} is out of range: use {lo} to {hi}{otherwise}"),
            );
            None
        }
        None => None,
    };
    let max_concurrency = ranged(ctx, "max_concurrency", d.max_concurrency, 1..=256, "")
        .map_or(DEFAULT_MAX_CONCURRENCY, |n| n as usize);
    let timeout = d.timeout.map(|t| t.0).unwrap_or(DEFAULT_TIMEOUT);
    let connect_timeout = d
        .connect_timeout
        .map(|t| t.0)
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    for (k, v) in [("timeout", timeout), ("connect_timeout", connect_timeout)] {
        if v.is_zero() {
            fail(ctx, k, "must be more than zero".into());
        }
    }
    let ca_file = d.ca_file.map(resolve);
    if let Some(why) = ca_file.as_deref().and_then(ca_file_problem) {
        fail(ctx, "ca_file", why);
    }
    let max_retries = ranged(ctx, "max_retries", d.max_retries, 0..=20, "")
        .map_or(DEFAULT_MAX_RETRIES, |n| n as u32);
    let retry_delay = d.retry_delay.map(|t| t.0).unwrap_or(DEFAULT_RETRY_DELAY);
    let max_retry_delay = d
        .max_retry_delay
        .map(|t| t.0)
        .unwrap_or(DEFAULT_MAX_RETRY_DELAY);
    if max_retry_delay < retry_delay {
        fail(
            ctx,
            "max_retry_delay",
            format!(
                "is shorter than retry_delay ({})",
                humantime::format_duration(retry_delay)
            ),
        );
    }
    let per_run = match d.max_retries_per_run {
        None => None,
        Some(n) if n >= 0 => Some(n as u64),
        Some(n) => {
            fail(
                ctx,
                "max_retries_per_run",
                format!("{n} cannot be negative"),
            );
            None
        }
    };
    let max_requests_per_second = ranged(
        ctx,
        "max_requests_per_second",
        d.max_requests_per_second,
        1..=100_000,
        ", or leave it out for no limit",
    )
    .and_then(|n| std::num::NonZeroU32::new(n as u32));
    if ctx.problems.len() > start {
        return None;
    }
    Some(DiallerConfig {
        base_url,
        client_id,
        token: token?,
        timeout,
        connect_timeout,
        max_concurrency,
        max_requests_per_second,
        ca_file,
        retry: RetryConfig {
            max_retries,
            delay: retry_delay,
            max_delay: max_retry_delay,
            per_run,
        },
    })
}

fn compile_job(
    ctx: &mut Ctx<'_>,
    root: &Spanned<DeTable<'_>>,
    prefix: &[Seg],
    j: raw::RawJob,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
    warnings: &mut Vec<String>,
) -> Option<JobConfig> {
    let start = ctx.problems.len();
    let at = |k: &[&str]| -> Vec<Seg> {
        prefix
            .iter()
            .cloned()
            .chain(k.iter().map(|s| key(s)))
            .collect()
    };

    let name = match j.name {
        Some(n)
            if !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
        {
            n
        }
        Some(n) => {
            ctx.at(
                root,
                &at(&["name"]),
                format!("`{n}` is not a valid job name: use letters, digits, `-` and `_`"),
            );
            n
        }
        None => {
            ctx.missing(root, prefix, "name", "missing key `name`");
            String::new()
        }
    };

    let schedule = j
        .schedule
        .as_deref()
        .and_then(|s| match CronSchedule::parse(s) {
            Ok(c) => Some(c),
            Err(e) => {
                ctx.at(root, &at(&["schedule"]), e.to_string());
                None
            }
        });

    let timezone = match j.timezone.as_deref() {
        None => chrono_tz::Tz::UTC,
        Some(tz) => match tz.parse::<chrono_tz::Tz>() {
            Ok(tz) => tz,
            Err(_) => {
                ctx.at(
                    root,
                    &at(&["timezone"]),
                    format!("`{tz}` is not a time zone: use an IANA name such as \"Europe/Berlin\" or \"UTC\""),
                );
                chrono_tz::Tz::UTC
            }
        },
    };

    let guards = compile_guards(
        ctx,
        root,
        prefix,
        [j.max_removals, j.max_resets],
        [
            j.max_removals_percent,
            j.max_resets_percent,
            j.min_rows_percent,
        ],
    );
    let campaign = match (j.campaign_id, j.campaign_name) {
        (Some(id), None) if id > 0 => Some(CampaignRef::Id(id)),
        (Some(id), None) => {
            ctx.at(
                root,
                &at(&["campaign_id"]),
                format!("{id} is not a campaign ID (a positive whole number)"),
            );
            None
        }
        (None, Some(n)) if !n.trim().is_empty() => Some(CampaignRef::Name(n)),
        (None, Some(_)) => {
            ctx.at(root, &at(&["campaign_name"]), "is empty");
            None
        }
        (Some(_), Some(_)) => {
            ctx.at(
                root,
                &at(&["campaign_name"]),
                "set either campaign_id or campaign_name, not both",
            );
            None
        }
        (None, None) => {
            ctx.missing(
                root,
                prefix,
                "campaign_id",
                "missing campaign: set `campaign_id` or `campaign_name`",
            );
            None
        }
    };

    let default_country = j.default_country.as_deref().and_then(|c| {
        match c
            .trim()
            .to_ascii_uppercase()
            .parse::<phonenumber::country::Id>()
        {
            Ok(id) => Some(id),
            Err(_) => {
                ctx.at(
                    root,
                    &at(&["default_country"]),
                    format!("`{c}` is not an ISO 3166 country code (e.g. \"DE\", \"AT\", \"CH\")"),
                );
                None
            }
        }
    });

    let overwrite_duplicates = j
        .overwrite_duplicates
        .unwrap_or(DEFAULT_OVERWRITE_DUPLICATES);
    if !overwrite_duplicates {
        warnings.push(format!(
            "job {name}: overwrite_duplicates = false makes the dialler create a second contact whenever \
             a contact it already has is imported again (for example after the state was lost)"
        ));
    }

    let source = match j.source {
        None => {
            ctx.missing(
                root,
                prefix,
                "source",
                "missing [job.source] section (type and path of the CRM export)",
            );
            None
        }
        Some(s) => compile_source(ctx, root, &at(&["source"]), s, resolve),
    };

    let mut key_column = None;
    let mut fields: Vec<(&'static Field, String)> = Vec::new();
    match j.fields {
        None => ctx.missing(
            root,
            prefix,
            "fields",
            "missing [job.fields] section (dialler field = CRM column)",
        ),
        Some(map) => {
            for (field, column) in map {
                let path = at(&["fields", &field]);
                if column.trim().is_empty() {
                    ctx.at(root, &path, "names an empty CRM column");
                    continue;
                }
                match fields::by_name(&field) {
                    Some(f) if f.code == fields::user_data().code => key_column = Some(column),
                    Some(f) => fields.push((f, column)),
                    None => ctx.at(root, &path, fields::why_not(&field)),
                }
            }
            fields.sort_by_key(|(f, _)| f.code);
            if key_column.is_none() {
                ctx.at(root, &at(&["fields"]), "missing `UserData = \"<CRM key column>\"`: the key that ties a CRM record to its dialler contact");
            }
            if !fields.iter().any(|(f, _)| f.name == "Name") {
                ctx.at(
                    root,
                    &at(&["fields"]),
                    "missing `Name = \"<column>\"`: the dialler requires a Name on every contact",
                );
            }
            if !fields.iter().any(|(f, _)| f.kind == fields::Kind::Phone) {
                ctx.at(
                    root,
                    &at(&["fields"]),
                    "no phone number mapped: map at least PhoneNumber1",
                );
            }
            if default_country.is_none()
                && fields.iter().any(|(f, _)| f.kind == fields::Kind::Phone)
            {
                warnings.push(format!(
                    "job {name}: no default_country, so every phone number in the export must be international (+49..., 0049...)"
                ));
            }
        }
    }

    let reset_when_changed = j.reset_when_changed.unwrap_or_default();
    for (i, c) in reset_when_changed.iter().enumerate() {
        if c.trim().is_empty() {
            let mut p = at(&["reset_when_changed"]);
            p.push(Seg::Index(i));
            ctx.at(root, &p, "names an empty CRM column");
        }
    }

    if ctx.problems.len() > start {
        return None;
    }
    Some(JobConfig {
        name,
        schedule,
        timezone,
        campaign: campaign?,
        on_missing: j.on_missing.unwrap_or(DEFAULT_ON_MISSING),
        default_country,
        phone_format: j.phone_format.unwrap_or(DEFAULT_PHONE_FORMAT),
        overwrite_duplicates,
        reset_contact: j.reset_contact,
        unlock_contact: j.unlock_contact,
        reset_when_changed,
        guards,
        source: source?,
        key_column: key_column?,
        fields,
        verify_every: j.verify_every.map_or(DEFAULT_VERIFY_EVERY, |d| d.0),
    })
}

/// The guard keys of a job: counts are whole numbers from 0, percentages 0 to 100.
/// A percentage set to 100 (or `min_rows_percent = 0`) turns that guard off.
fn compile_guards(
    ctx: &mut Ctx<'_>,
    root: &Spanned<DeTable<'_>>,
    prefix: &[Seg],
    [max_removals, max_resets]: [Option<i64>; 2],
    [removals_percent, resets_percent, rows_percent]: [Option<f64>; 3],
) -> Guards {
    let mut bad = |k: &str, msg: String| {
        let path: Vec<Seg> = prefix.iter().cloned().chain([key(k)]).collect();
        ctx.at(root, &path, msg);
    };
    let mut count = |k: &str, v: Option<i64>| match v {
        Some(n) if n < 0 => {
            bad(k, format!("{n} cannot be negative"));
            None
        }
        v => v.map(|n| n as u64),
    };
    let max_removals = count("max_removals", max_removals);
    let max_resets = count("max_resets", max_resets);
    let mut percent = |k: &str, v: Option<f64>, default: f64| match v {
        None => default,
        Some(p) if (0.0..=100.0).contains(&p) => p,
        Some(p) => {
            bad(k, format!("{p} is not a percentage from 0 to 100"));
            default
        }
    };
    Guards {
        max_removals,
        max_removals_percent: percent(
            "max_removals_percent",
            removals_percent,
            DEFAULT_MAX_REMOVALS_PERCENT,
        ),
        max_resets,
        max_resets_percent: percent(
            "max_resets_percent",
            resets_percent,
            DEFAULT_MAX_RESETS_PERCENT,
        ),
        min_rows_percent: percent("min_rows_percent", rows_percent, DEFAULT_MIN_ROWS_PERCENT),
    }
}

fn compile_source(
    ctx: &mut Ctx<'_>,
    root: &Spanned<DeTable<'_>>,
    prefix: &[Seg],
    s: raw::RawSource,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Option<SourceConfig> {
    let at = |k: &str| -> Vec<Seg> { prefix.iter().cloned().chain([key(k)]).collect() };
    let start = ctx.problems.len();
    if s.kind.is_none() {
        ctx.missing(
            root,
            prefix,
            "type",
            "missing key `type` (\"csv\" or \"json\")",
        );
    }
    if s.path.is_none() {
        ctx.missing(
            root,
            prefix,
            "path",
            "missing key `path` (where the CRM export is)",
        );
    }
    let delimiter = s.delimiter.as_deref().and_then(|d| {
        let byte = match d {
            "\\t" | "tab" | "\t" => Some(b'\t'),
            d if d.len() == 1 && d.is_ascii() && !matches!(d, "\"" | "\n" | "\r") => {
                Some(d.as_bytes()[0])
            }
            _ => None,
        };
        if byte.is_none() {
            ctx.at(
                root,
                &at("delimiter"),
                format!(
                    "`{d}` is not a delimiter: use one character such as \",\", \";\" or \"\\t\""
                ),
            );
        }
        byte
    });
    if delimiter.is_some() && s.kind == Some(SourceKind::Json) {
        ctx.at(root, &at("delimiter"), "only applies to CSV sources");
    }
    let encoding = s.encoding.as_deref().and_then(|e| {
        match encoding_rs::Encoding::for_label(e.trim().as_bytes()) {
            Some(enc) if enc == encoding_rs::UTF_8 => None,
            Some(enc) if enc.output_encoding() == enc => Some(enc),
            _ => {
                ctx.at(
                    root,
                    &at("encoding"),
                    format!("`{e}` is not a supported encoding: use \"utf-8\", \"windows-1252\" or \"iso-8859-1\" (any WHATWG label works)"),
                );
                None
            }
        }
    });
    if ctx.problems.len() > start {
        return None;
    }
    Some(SourceConfig {
        kind: s.kind?,
        path: resolve(s.path?),
        delimiter,
        encoding,
    })
}

/// The config problems of `text` as (line, key) pairs; used by tests.
#[cfg(test)]
fn problems(text: &str) -> Vec<(Option<usize>, String, String)> {
    match Config::from_str(text, Path::new("test.toml")) {
        Ok(_) => Vec::new(),
        Err(e) => e
            .problems
            .into_iter()
            .map(|p| (p.line, p.key, p.message))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[dialler]
base_url = "https://dialler.example.com/rest/v1.0/"
client_id = 7
token = "secret-token"
timeout = "20s"

[state]
path = "state"

[[job]]
name = "leads"
schedule = "*/15 * * * *"
campaign_id = 538
default_country = "DE"
reset_when_changed = ["Round"]

[job.source]
type = "csv"
path = "leads.csv"
delimiter = ";"
encoding = "windows-1252"

[job.fields]
UserData = "CustomerNo"
Name = "LastName"
PhoneNumber1 = "Phone"
"#;

    #[test]
    fn good_config_compiles_with_defaults() {
        let c = Config::from_str(GOOD, Path::new("/etc/dialsync/dialsync.toml")).unwrap();
        assert_eq!(c.dialler.base_url, "https://dialler.example.com/rest/v1.0");
        assert_eq!(c.dialler.timeout, Duration::from_secs(20));
        assert_eq!(c.dialler.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(c.dialler.max_concurrency, DEFAULT_MAX_CONCURRENCY);
        assert_eq!(c.state.path, PathBuf::from("/etc/dialsync/state"));
        let j = &c.jobs[0];
        assert_eq!(j.on_missing, OnMissing::Lock);
        assert!(j.overwrite_duplicates);
        assert_eq!(j.reset_contact, None);
        assert_eq!(j.source.path, PathBuf::from("/etc/dialsync/leads.csv"));
        assert_eq!(j.source.delimiter, Some(b';'));
        assert_eq!(j.source.encoding, Some(encoding_rs::WINDOWS_1252));
        assert_eq!(j.key_column, "CustomerNo");
        assert_eq!(
            j.columns(),
            vec!["CustomerNo", "LastName", "Phone", "Round"]
        );
        assert!(format!("{:?}", c.dialler.token).contains("redacted"));
        assert!(!format!("{c:?}").contains("secret-token"));
    }

    #[test]
    fn every_problem_is_reported_at_once_with_line_and_key() {
        let text = GOOD
            .replace("timeout = \"20s\"", "timeout = \"20 parsecs\"\ntimout = 5")
            .replace("delimiter = \";\"", "delimiter = \";\"\npth = \"x\"")
            .replace(
                "PhoneNumber1 = \"Phone\"",
                "PhoneNumbr1 = \"Phone\"\nRegion = \"R\"",
            );
        let p = problems(&text);
        let keys: Vec<_> = p
            .iter()
            .map(|(l, k, _)| (l.unwrap_or(0), k.as_str()))
            .collect();
        assert!(keys.contains(&(6, "dialler.timeout")), "{p:#?}");
        assert!(keys.contains(&(7, "dialler.timout")), "{p:#?}");
        assert!(keys.contains(&(23, "job[1].source.pth")), "{p:#?}");
        assert!(keys.contains(&(29, "job[1].fields.PhoneNumbr1")), "{p:#?}");
        assert!(keys.contains(&(30, "job[1].fields.Region")), "{p:#?}");
        assert_eq!(p.len(), 6, "{p:#?}");
        let msg = |k: &str| p.iter().find(|(_, key, _)| key == k).unwrap().2.clone();
        assert!(msg("job[1].fields.PhoneNumbr1").contains("did you mean `PhoneNumber1`"));
        assert!(msg("job[1].fields").contains("PhoneNumber1"), "{p:#?}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let text = GOOD
            .replace("client_id = 7", "client_id = \"seven\"")
            .replace(
                "campaign_id = 538",
                "campaign_id = 538\ncampaign_name = \"X\"\non_missing = \"purge\"",
            )
            .replace("default_country = \"DE\"", "default_country = \"Germany\"")
            .replace("*/15 * * * *", "*/15 * * *");
        let p = problems(&text);
        let has = |k: &str, m: &str| p.iter().any(|(_, key, msg)| key == k && msg.contains(m));
        assert!(has("dialler.client_id", "invalid type"), "{p:#?}");
        assert!(has("job[1].on_missing", "purge"), "{p:#?}");
        // A bad value does not hide the problems after it in the same section.
        assert!(has("job[1].schedule", "4 fields"), "{p:#?}");
        assert!(has("job[1].default_country", "Germany"), "{p:#?}");
        assert!(has("job[1].campaign_name", "not both"), "{p:#?}");
        // ...and is not reported a second time as missing.
        assert!(
            !p.iter()
                .any(|(_, _, m)| m.contains("missing key `client_id`")),
            "{p:#?}"
        );
        assert_eq!(p.len(), 5, "{p:#?}");
    }

    #[test]
    fn numbers_out_of_range_name_key_line_and_range() {
        let text = GOOD.replace(
            "timeout = \"20s\"",
            "timeout = \"20s\"\nmax_concurrency = 0\nmax_retries = 21\nmax_requests_per_second = 100001",
        );
        let p = problems(&text);
        let got: Vec<_> = p
            .iter()
            .map(|(l, k, m)| (l.unwrap_or(0), k.as_str(), m.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    7,
                    "dialler.max_concurrency",
                    "0 is out of range: use 1 to 256"
                ),
                (8, "dialler.max_retries", "21 is out of range: use 0 to 20"),
                (
                    9,
                    "dialler.max_requests_per_second",
                    "100001 is out of range: use 1 to 100000, or leave it out for no limit"
                ),
            ]
        );
        let ok = GOOD.replace(
            "timeout = \"20s\"",
            "timeout = \"20s\"\nmax_concurrency = 256\nmax_retries = 0\nmax_requests_per_second = 1",
        );
        let d = Config::from_str(&ok, Path::new("t.toml")).unwrap().dialler;
        assert_eq!(
            (
                d.max_concurrency,
                d.retry.max_retries,
                d.max_requests_per_second.map(|n| n.get())
            ),
            (256, 0, Some(1))
        );
    }

    #[test]
    fn token_sources_are_exclusive_and_required() {
        let both = GOOD.replace(
            "token = \"secret-token\"",
            "token = \"a\"\ntoken_env = \"B\"",
        );
        assert!(problems(&both)
            .iter()
            .any(|(_, k, m)| k == "dialler.token" && m.contains("only one")));
        let none = GOOD.replace("token = \"secret-token\"", "");
        assert!(problems(&none)
            .iter()
            .any(|(_, _, m)| m.contains("missing token")));
        // The token never shows in a problem.
        let bad = GOOD.replace("client_id = 7", "client_id = -1");
        assert!(!format!("{:?}", problems(&bad)).contains("secret-token"));
    }

    #[test]
    fn timezone_is_an_iana_name_and_defaults_to_utc() {
        let c = Config::from_str(GOOD, Path::new("/etc/dialsync/dialsync.toml")).unwrap();
        assert_eq!(c.jobs[0].timezone, chrono_tz::UTC);
        let berlin = GOOD.replace(
            "*/15 * * * *\"",
            "*/15 * * * *\"\ntimezone = \"Europe/Berlin\"",
        );
        let c = Config::from_str(&berlin, Path::new("/etc/dialsync/dialsync.toml")).unwrap();
        assert_eq!(c.jobs[0].timezone, chrono_tz::Europe::Berlin);
        let bad = berlin.replace("Europe/Berlin", "CET+1");
        let p = problems(&bad);
        assert!(
            p.iter().any(|(line, k, m)| k == "job[1].timezone"
                && line.is_some()
                && m.contains("Europe/Berlin")),
            "{p:#?}"
        );
    }

    #[test]
    fn token_credential_reads_the_systemd_credentials_directory() {
        let text = GOOD.replace("token = \"secret-token\"", "token_credential = \"token\"");
        let c = Config::from_str(&text, Path::new("/etc/dialsync/dialsync.toml")).unwrap();
        let TokenSource::Credential(name) = &c.dialler.token else {
            panic!("{:?}", c.dialler.token)
        };
        assert_eq!(name, "token");
        let bad = GOOD.replace(
            "token = \"secret-token\"",
            "token_credential = \"/etc/dialsync/token\"",
        );
        assert!(problems(&bad)
            .iter()
            .any(|(_, k, m)| k == "dialler.token_credential" && m.contains("LoadCredential")));
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let p = problems("[dialler]\nbase_url = \"x\nclient_id = 7\n");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, Some(2), "{p:?}");
    }

    #[test]
    fn duplicate_job_names_and_unknown_sections() {
        let two = format!("{GOOD}\n{}", &GOOD[GOOD.find("[[job]]").unwrap()..]);
        assert!(problems(&two)
            .iter()
            .any(|(_, _, m)| m.contains("used twice")));
        let extra = format!("[jobs]\nx = 1\n{GOOD}");
        assert!(problems(&extra)
            .iter()
            .any(|(l, k, m)| *l == Some(1) && k == "jobs" && m.contains("[[job]]")));
    }

    #[test]
    fn base_url_with_client_id_is_refused() {
        let text = GOOD.replace("rest/v1.0/\"", "rest/v1.0/7\"");
        assert!(problems(&text)
            .iter()
            .any(|(_, k, m)| k == "dialler.base_url" && m.contains("ClientsID")));
    }
}
