//! Compiling a `[[job]]` table: campaign, schedule, field mapping, reset triggers,
//! removals and guards.

use std::path::PathBuf;

use toml::de::DeTable;
use toml::Spanned;

use super::{
    compile_guards, compile_source, key, raw, CampaignRef, Ctx, JobConfig, OnBadPhone, Seg,
    DEFAULT_ON_MISSING, DEFAULT_OVERWRITE_DUPLICATES, DEFAULT_PHONE_FORMAT, DEFAULT_VERIFY_EVERY,
};
use crate::config::schedule::CronSchedule;
use crate::fields::{self, Field};

pub(super) fn compile_job(
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

    if let Some(s) = &schedule {
        let now = chrono::Utc::now();
        let six_fields = s.to_string().split_whitespace().count() == 6;
        // One fire time tells whether it fires at all; a 6-field one shows three.
        let next = next_fires(s, timezone, now, if six_fields { 3 } else { 1 });
        if next.is_empty() {
            ctx.at(
                root,
                &at(&["schedule"]),
                format!(
                    "`{s}` never fires (a day that does not exist, such as the 31st of \
                     February): fix the day or the month"
                ),
            );
        } else if six_fields {
            // Some crons read a 6th field as the year; here the first is the seconds.
            warnings.push(format!(
                "job {name}: schedule `{s}` has 6 fields, read as seconds minute hour day month \
                 weekday (not with a year at the end): it fires next at {} ({timezone})",
                next.join(", ")
            ));
        }
    }

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

    let outcomes = j
        .outcomes
        .and_then(|o| super::outcomes::compile_outcomes(ctx, root, &at(&["outcomes"]), o, resolve));

    if ctx.problems.len() > start {
        return None;
    }
    let ping_url = super::compile::url_source(
        ctx,
        root,
        prefix,
        "ping_url",
        [j.ping_url, None, None],
        j.ping_url_file.map(resolve),
    );
    Some(JobConfig {
        name,
        ping_url,
        schedule,
        timezone,
        campaign: campaign?,
        on_missing: j.on_missing.unwrap_or(DEFAULT_ON_MISSING),
        default_country,
        phone_format: j.phone_format.unwrap_or(DEFAULT_PHONE_FORMAT),
        on_bad_phone: j.on_bad_phone.unwrap_or(OnBadPhone::SkipField),
        overwrite_duplicates,
        reset_contact: j.reset_contact,
        unlock_contact: j.unlock_contact,
        reset_when_changed,
        guards,
        source: source?,
        key_column: key_column?,
        fields,
        verify_every: j.verify_every.map_or(DEFAULT_VERIFY_EVERY, |d| d.0),
        outcomes,
        on_done: j.on_done.unwrap_or(super::OnDone::Keep),
    })
}

/// The next `n` fire times of `schedule` after `now`, as wall-clock times in `tz`.
pub(crate) fn next_fires(
    schedule: &CronSchedule,
    tz: chrono_tz::Tz,
    now: chrono::DateTime<chrono::Utc>,
    n: usize,
) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    let mut t = now;
    while out.len() < n {
        let Some(next) = schedule.next_fire(t, tz) else {
            break;
        };
        out.push(
            next.with_timezone(&tz)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string(),
        );
        t = next;
    }
    out
}
