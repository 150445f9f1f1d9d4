//! `[job.outcomes]`: where the dialling outcomes of a job's contacts go (a file, a
//! webhook), in which columns, and `on_done`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use toml::de::DeTable;
use toml::Spanned;

use super::compile::{secret_source, url_source};
use super::{key, raw, Ctx, Seg, TokenSource};
pub(crate) use raw::{OnDone, OutcomeFormat};

pub(crate) const DEFAULT_OUTCOME_BATCH: usize = 500;
pub(crate) const DEFAULT_OUTCOME_RETRIES: u32 = 3;
pub(crate) const DEFAULT_OUTCOME_TIMEOUT: Duration = Duration::from_secs(30);

/// A column of the outcome file (and a key of each NDJSON line and webhook object).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Column {
    UserData,
    ContactID,
    /// The result code's `ExportKey`.
    ResultCode,
    /// The result code's text (`Content`).
    Result,
    /// `map`'s CRM status for the result code.
    Status,
    Done,
    Aborted,
    Delay,
    Appointment,
    /// Dialling attempts, all numbers together.
    Tries,
    NextTry,
    /// From the history: when the last call ended.
    LastCallEnd,
    /// From the history: calls that were answered.
    ConnectedCalls,
    /// From the history: the `UsersID` of the last call's agent.
    AgentID,
    /// When dialsync saw the outcome change (RFC 3339, UTC).
    ChangedAt,
}

impl Column {
    /// Every column, in the order the defaults keep.
    pub const ALL: [Column; 15] = [
        Column::UserData,
        Column::ContactID,
        Column::ResultCode,
        Column::Result,
        Column::Status,
        Column::Done,
        Column::Aborted,
        Column::Delay,
        Column::Appointment,
        Column::Tries,
        Column::NextTry,
        Column::LastCallEnd,
        Column::ConnectedCalls,
        Column::AgentID,
        Column::ChangedAt,
    ];

    /// The columns written when `columns` is not set: all but the history's call count
    /// and agent, and `Status` only `with_status` (a `map`).
    pub fn defaults(with_status: bool) -> Vec<Column> {
        Column::ALL
            .into_iter()
            .filter(|c| match c {
                Column::ConnectedCalls | Column::AgentID => false,
                Column::Status => with_status,
                _ => true,
            })
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Column::UserData => "UserData",
            Column::ContactID => "ContactID",
            Column::ResultCode => "ResultCode",
            Column::Result => "Result",
            Column::Status => "Status",
            Column::Done => "Done",
            Column::Aborted => "Aborted",
            Column::Delay => "Delay",
            Column::Appointment => "Appointment",
            Column::Tries => "Tries",
            Column::NextTry => "NextTry",
            Column::LastCallEnd => "LastCallEnd",
            Column::ConnectedCalls => "ConnectedCalls",
            Column::AgentID => "AgentID",
            Column::ChangedAt => "ChangedAt",
        }
    }

    /// Whether the column comes from the contact's history (one call per changed contact).
    pub fn is_history(self) -> bool {
        matches!(
            self,
            Column::LastCallEnd | Column::ConnectedCalls | Column::AgentID
        )
    }
}

/// `[job.outcomes]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomesConfig {
    /// The file written after each run that found changed outcomes; `{run}` and `{time}`
    /// in it make one file per run.
    pub path: Option<PathBuf>,
    pub format: OutcomeFormat,
    /// CSV: the field delimiter (`;` unless set).
    pub delimiter: u8,
    /// CSV: a UTF-8 byte order mark first (for Excel), unless `bom = false`.
    pub bom: bool,
    pub columns: Vec<Column>,
    /// Result code `ExportKey` -> CRM status, in the `Status` column.
    pub map: BTreeMap<String, String>,
    /// Only outcomes whose result is done or aborted are delivered.
    pub final_only: bool,
    pub webhook: Option<OutcomeWebhook>,
}

/// Where outcomes are POSTed, signed.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeWebhook {
    pub url: TokenSource,
    /// The HMAC-SHA256 key of the `X-Dialsync-Signature` header.
    pub secret: TokenSource,
    /// Outcomes per request.
    pub batch_size: usize,
    /// Attempts after the first, with backoff, before the batch is kept for the next run.
    pub retries: u32,
    pub timeout: Duration,
}

impl Default for OutcomesConfig {
    /// Nothing delivered; the documented columns, `;`-separated.
    fn default() -> Self {
        OutcomesConfig {
            path: None,
            format: OutcomeFormat::Csv,
            delimiter: b';',
            bom: true,
            columns: Column::defaults(false),
            map: BTreeMap::new(),
            final_only: false,
            webhook: None,
        }
    }
}

impl OutcomesConfig {
    /// Whether delivering needs the contacts' history (a call per changed contact).
    pub fn needs_history(&self) -> bool {
        self.columns.iter().any(|c| c.is_history())
    }
}

pub(super) fn compile_outcomes(
    ctx: &mut Ctx<'_>,
    root: &Spanned<DeTable<'_>>,
    prefix: &[Seg],
    o: raw::RawOutcomes,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Option<OutcomesConfig> {
    let at = |k: &str| -> Vec<Seg> { prefix.iter().cloned().chain([key(k)]).collect() };
    let start = ctx.problems.len();
    let format = o.format.unwrap_or(OutcomeFormat::Csv);
    if let Some(p) = &o.path {
        let text = p.to_string_lossy();
        let mut rest = text.as_ref();
        while let Some(open) = rest.find('{') {
            let after = &rest[open..];
            let Some(close) = after.find('}') else {
                ctx.at(
                    root,
                    &at("path"),
                    "has a `{` without `}`: only {run} and {time} can stand in a path",
                );
                break;
            };
            let name = &after[..=close];
            if name != "{run}" && name != "{time}" {
                ctx.at(
                    root,
                    &at("path"),
                    format!("`{name}` is not a placeholder: use {{run}} (the run's ID) or {{time}} (its start, UTC)"),
                );
            }
            rest = &after[close + 1..];
        }
        if text.ends_with('/') || text.is_empty() {
            ctx.at(
                root,
                &at("path"),
                "names a folder: name the file, e.g. \"/var/spool/crm/outcomes-{run}.csv\"",
            );
        }
    }
    let delimiter = o
        .delimiter
        .as_deref()
        .and_then(|d| super::compile::delimiter(ctx, root, &at("delimiter"), d))
        .unwrap_or(b';');
    if format == OutcomeFormat::Ndjson {
        for (k, set) in [
            ("delimiter", o.delimiter.is_some()),
            ("bom", o.bom.is_some()),
        ] {
            if set {
                ctx.at(root, &at(k), "only applies to format = \"csv\"");
            }
        }
    }
    let map = o.map.unwrap_or_default();
    let columns = match o.columns {
        None => Column::defaults(!map.is_empty()),
        Some(names) => {
            let mut out = Vec::new();
            for (i, n) in names.iter().enumerate() {
                let mut p = at("columns");
                p.push(Seg::Index(i));
                match Column::ALL.iter().find(|c| c.name() == n.as_str()) {
                    Some(c) if out.contains(c) => {
                        ctx.at(root, &p, format!("`{n}` is listed twice"))
                    }
                    Some(c) => out.push(*c),
                    None => ctx.at(
                        root,
                        &p,
                        format!(
                            "`{n}` is not an outcome column; they are: {}",
                            Column::ALL.map(Column::name).join(", ")
                        ),
                    ),
                }
            }
            if names.is_empty() {
                ctx.at(root, &at("columns"), "is empty: list at least UserData");
            }
            if out.contains(&Column::Status) && map.is_empty() {
                ctx.at(
                    root,
                    &at("columns"),
                    "`Status` needs `map` (ExportKey = \"CRM status\")",
                );
            }
            out
        }
    };
    for (k, v) in &map {
        if v.trim().is_empty() {
            ctx.at(root, &at("map"), format!("`{k}` maps to an empty status"));
        }
    }
    let url = url_source(
        ctx,
        root,
        prefix,
        "webhook_url",
        [o.webhook_url, o.webhook_url_env, o.webhook_url_credential],
        o.webhook_url_file.map(resolve),
    );
    let secret_given = [
        o.webhook_secret.is_some(),
        o.webhook_secret_file.is_some(),
        o.webhook_secret_env.is_some(),
        o.webhook_secret_credential.is_some(),
    ]
    .contains(&true);
    let secret = secret_source(
        ctx,
        root,
        prefix,
        "webhook_secret",
        [
            o.webhook_secret,
            o.webhook_secret_env,
            o.webhook_secret_credential,
        ],
        o.webhook_secret_file.map(resolve),
        |s| {
            (s.len() < 16).then_some(
                "is too short: use at least 16 characters, e.g. from `openssl rand -hex 32`",
            )
        },
    );
    let batch_size = ctx
        .ranged(root, &at("batch_size"), o.batch_size, 1..=10_000, "")
        .map_or(DEFAULT_OUTCOME_BATCH, |n| n as usize);
    let retries = ctx
        .ranged(root, &at("retries"), o.retries, 0..=10, "")
        .map_or(DEFAULT_OUTCOME_RETRIES, |n| n as u32);
    let webhook = match (url, secret) {
        (Some(url), Some(secret)) => Some(OutcomeWebhook {
            url,
            secret,
            batch_size,
            retries,
            timeout: o.timeout.map_or(DEFAULT_OUTCOME_TIMEOUT, |d| d.0),
        }),
        (Some(_), None) if !secret_given => {
            ctx.missing(
                root,
                prefix,
                "webhook_secret",
                "missing `webhook_secret` (or _file, _env, _credential): the webhook's requests are signed with it, so the CRM can tell them from forged ones",
            );
            None
        }
        (None, Some(_)) => {
            ctx.at(root, &at("webhook_secret"), "is set without `webhook_url`");
            None
        }
        _ => None,
    };
    if ctx.problems.len() > start {
        return None;
    }
    Some(OutcomesConfig {
        path: o.path.map(resolve),
        format,
        delimiter,
        bom: o.bom.unwrap_or(true),
        columns,
        map,
        final_only: o.final_only.unwrap_or(false),
        webhook,
    })
}
