//! From the raw TOML tables to the typed [`Config`]: the file as a whole, guards and
//! sources (the dialler and jobs have files of their own).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{
    compile_dialler, compile_job, key, raw, AlertsConfig, Config, Ctx, Guards, MetricsConfig,
    Secret, Seg, StateConfig, TokenSource, DEFAULT_ALERT_RETRIES, DEFAULT_ALERT_TIMEOUT,
    DEFAULT_HISTORY_RUNS, DEFAULT_MAX_REMOVALS_PERCENT, DEFAULT_MAX_RESETS_PERCENT,
    DEFAULT_MIN_ROWS_PERCENT, DEFAULT_SNAPSHOT_EVERY, DEFAULT_STATE_CACHE_MB, DEFAULT_STATE_PATH,
};

/// What is wrong with the CA file at `path`, if anything: it must be readable and hold
/// at least one PEM certificate (what the dialler client loads; checked here so that
/// `validate` rejects what a run would).
pub(super) fn ca_file_problem(path: &Path) -> Option<String> {
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

pub(super) fn compile(ctx: &mut Ctx<'_>, base_dir: &Path, file: &Path) -> Option<Config> {
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
    let mut metrics_raw = None;
    let mut alerts_raw = None;
    let mut jobs_raw: Vec<(usize, Option<raw::RawJob>)> = Vec::new();
    let mut saw_job = false;
    for (k, v) in root.get_ref().iter() {
        let name = k.get_ref().as_ref();
        match name {
            "dialler" => dialler_raw = ctx.section::<raw::RawDialler>(&root, &[key("dialler")], v),
            "state" => state_raw = ctx.section::<raw::RawState>(&root, &[key("state")], v),
            "alerts" => {
                alerts_raw = ctx.section::<raw::RawAlerts>(&root, &[key("alerts")], v);
            }
            "metrics" => {
                metrics_raw = Some(ctx.section::<raw::RawMetrics>(&root, &[key("metrics")], v))
            }
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
                    format!(
                        "unknown section; expected [dialler], [state], [metrics], [alerts] and [[job]]{hint}"
                    ),
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
    let (state_path, snapshot_every, history_runs, cache_mb) = match state_raw {
        Some(s) => (s.path, s.snapshot_every, s.history_runs, s.cache_mb),
        None => (None, None, None, None),
    };
    let cache_mb = ctx
        .ranged(
            &root,
            &[key("state"), key("cache_mb")],
            cache_mb,
            1..=65_536,
            "",
        )
        .map_or(DEFAULT_STATE_CACHE_MB, |n| n as u64);
    let history_runs = ctx
        .ranged(
            &root,
            &[key("state"), key("history_runs")],
            history_runs,
            1..=100_000,
            "",
        )
        .map_or(DEFAULT_HISTORY_RUNS, |n| n as usize);
    let state = StateConfig {
        path: state_path
            .map(resolve)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_PATH)),
        snapshot_every: snapshot_every.map_or(DEFAULT_SNAPSHOT_EVERY, |d| d.0),
        history_runs,
        cache_mb,
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
    let metrics = match metrics_raw {
        None => None,
        // Reported by `section` already.
        Some(None) => None,
        Some(Some(raw::RawMetrics { listen: None })) => {
            ctx.at(
                &root,
                &[key("metrics")],
                "missing `listen` (an address like \"127.0.0.1:9464\"); leave [metrics] out to serve none",
            );
            None
        }
        Some(Some(raw::RawMetrics { listen: Some(addr) })) => match addr.parse() {
            Ok(listen) => Some(MetricsConfig { listen }),
            Err(_) => {
                ctx.at(
                    &root,
                    &[key("metrics"), key("listen")],
                    format!("`{addr}` is not an address: write IP:PORT, like \"127.0.0.1:9464\" (loopback) or \"0.0.0.0:9464\" (every interface)"),
                );
                None
            }
        },
    };
    let alerts = alerts_raw.map_or_else(AlertsConfig::default_for_none, |a| {
        compile_alerts(ctx, &root, a, &resolve)
    });
    Some(Config {
        file: file.to_path_buf(),
        dialler: dialler?,
        state,
        metrics,
        alerts,
        jobs,
        warnings,
    })
}

/// The `[alerts]` section.
fn compile_alerts(
    ctx: &mut Ctx<'_>,
    root: &Spanned<DeTable<'_>>,
    a: raw::RawAlerts,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> AlertsConfig {
    let section = [key("alerts")];
    let ping_url = url_source(
        ctx,
        root,
        &section,
        "ping_url",
        [a.ping_url, a.ping_url_env, a.ping_url_credential],
        a.ping_url_file.map(resolve),
    );
    let webhook_url = url_source(
        ctx,
        root,
        &section,
        "webhook_url",
        [a.webhook_url, a.webhook_url_env, a.webhook_url_credential],
        a.webhook_url_file.map(resolve),
    );
    let retries = ctx
        .ranged(
            root,
            &[key("alerts"), key("retries")],
            a.retries,
            0..=10,
            "",
        )
        .map_or(DEFAULT_ALERT_RETRIES, |n| n as u32);
    AlertsConfig {
        ping_url,
        webhook_url,
        timeout: a.timeout.map_or(DEFAULT_ALERT_TIMEOUT, |d| d.0),
        retries,
    }
}

/// A URL that may hold a secret (see [`secret_source`]); an inline one must be http(s).
pub(super) fn url_source(
    ctx: &mut Ctx<'_>,
    root: &Spanned<DeTable<'_>>,
    section: &[Seg],
    name: &str,
    given: [Option<String>; 3],
    file: Option<PathBuf>,
) -> Option<TokenSource> {
    secret_source(ctx, root, section, name, given, file, |url| {
        let ok = reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
        (!ok).then_some("is not an http(s) URL, e.g. \"https://hc-ping.com/<uuid>\"")
    })
}

/// Where a secret (the token, an alert URL) comes from: `{name}` (inline, trimmed),
/// `{name}_env`, `{name}_credential` (`given` holds these three in this order) or
/// `{name}_file`. At most one of them; `None` when none is set or one is wrong (reported:
/// an inline value that `check` finds wrong, a credential name that is no name).
pub(super) fn secret_source(
    ctx: &mut Ctx<'_>,
    root: &Spanned<DeTable<'_>>,
    section: &[Seg],
    name: &str,
    [inline, env, credential]: [Option<String>; 3],
    file: Option<PathBuf>,
    check: impl Fn(&str) -> Option<&'static str>,
) -> Option<TokenSource> {
    let at = |k: &str| -> Vec<Seg> {
        let mut p = section.to_vec();
        p.push(key(k));
        p
    };
    let given = [
        inline.is_some(),
        file.is_some(),
        env.is_some(),
        credential.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        ctx.at(
            root,
            &at(name),
            format!(
                "set only one of `{name}`, `{name}_file`, `{name}_env` and `{name}_credential`"
            ),
        );
        return None;
    }
    if let Some(value) = inline {
        let value = value.trim();
        if let Some(wrong) = check(value) {
            ctx.at(root, &at(name), wrong);
            return None;
        }
        return Some(TokenSource::Inline(Secret::new(value)));
    }
    if let Some(c) = &credential {
        if c.is_empty() || c.contains('/') {
            ctx.at(
                root,
                &at(&format!("{name}_credential")),
                format!(
                    "names a credential of the unit's LoadCredential=, e.g. \"{}\"",
                    name.trim_end_matches("_url")
                ),
            );
            return None;
        }
    }
    file.map(TokenSource::File)
        .or(env.map(TokenSource::Env))
        .or(credential.map(TokenSource::Credential))
}

/// The guard keys of a job: counts are whole numbers from 0, percentages 0 to 100.
/// A percentage set to 100 (or `min_rows_percent = 0`) turns that guard off.
pub(super) fn compile_guards(
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

/// A CSV delimiter: one character (not a quote or line end), or `\t`/`tab`; `None`
/// reported at `path`.
pub(super) fn delimiter(
    ctx: &mut Ctx<'_>,
    root: &Spanned<DeTable<'_>>,
    path: &[Seg],
    d: &str,
) -> Option<u8> {
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
            path,
            format!("`{d}` is not a delimiter: use one character such as \",\", \";\" or \"\\t\""),
        );
    }
    byte
}
