//! Compiling the `[dialler]` table: URL, ClientsID, token, TLS, timeouts, pacing and
//! retries.

use std::path::PathBuf;

use toml::de::DeTable;
use toml::Spanned;

use super::compile::secret_source;
use super::{
    ca_file_problem, key, raw, Ctx, DiallerConfig, RetryConfig, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_CREDENTIAL_CHECK, DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_RETRY_DELAY, DEFAULT_RETRY_DELAY, DEFAULT_TIMEOUT,
};

pub(super) fn compile_dialler(
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
    let token = if d.token.is_none()
        && d.token_file.is_none()
        && d.token_env.is_none()
        && d.token_credential.is_none()
    {
        ctx.missing(
            root,
            &[key("dialler")],
            "token",
            "missing token: set exactly one of `token`, `token_file`, `token_env` or `token_credential`",
        );
        None
    } else {
        secret_source(
            ctx,
            root,
            &[key("dialler")],
            "token",
            [d.token, d.token_env, d.token_credential],
            d.token_file.map(resolve),
            |t| t.is_empty().then_some("is empty"),
        )
    };
    let ranged = |ctx: &mut Ctx<'_>,
                  k: &str,
                  v: Option<i64>,
                  range: std::ops::RangeInclusive<i64>,
                  otherwise: &str| ctx.ranged(root, &at(k), v, range, otherwise);
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
        credential_check: d.credential_check.map_or(DEFAULT_CREDENTIAL_CHECK, |d| d.0),
        ca_file,
        retry: RetryConfig {
            max_retries,
            delay: retry_delay,
            max_delay: max_retry_delay,
            per_run,
        },
    })
}
