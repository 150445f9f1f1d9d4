//! `validate`'s checks of the environment, before the first run: each job's export can be
//! read and has every mapped column, and the dialler takes the token and ClientsID and
//! has each job's campaign. Read-only: one call lists the tenant's campaigns (token,
//! ClientsID and every campaign at once), one more lists its users when a job maps an
//! agent field.

use serde_json::Value;

use crate::config::{CampaignRef, Config, JobConfig, Secret, SourceKind};
use crate::dialler::{Dialler, DiallerError};
use crate::engine::job::downloads_dir;
use crate::engine::outcome::{error_chain, Exit};
use crate::engine::report::count;
use crate::source::http::{self, Download, Fetched};
use crate::source::{self, Flow, SourceError};

/// One check and what it found.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The job it is about; `None`: the dialler as a whole.
    pub job: Option<String>,
    /// What passed, or the exit code and message of what did not.
    pub outcome: Result<String, (Exit, String)>,
}

impl Finding {
    fn job(job: &JobConfig, outcome: Result<String, (Exit, String)>) -> Finding {
        Finding {
            job: Some(job.name.clone()),
            outcome,
        }
    }
}

/// Checks every job's export and, with `token`, the dialler. Never stops at the first
/// failure: each gets its own finding.
pub async fn preflight(config: &Config, token: Option<&Secret>) -> Vec<Finding> {
    let mut found = Vec::new();
    for job in &config.jobs {
        let download = match &job.source.http {
            None => None,
            Some(_) => match first_page(config, job).await {
                Ok(d) => Some(d),
                Err(e) => {
                    found.push(Finding::job(job, Err((Exit::Export, error_chain(&e)))));
                    continue;
                }
            },
        };
        let checked = {
            let job = job.clone();
            tokio::task::spawn_blocking(move || check_export(&job, download)).await
        };
        found.push(Finding::job(
            job,
            checked.unwrap_or_else(|e| Err((Exit::Aborted, format!("the check crashed: {e}")))),
        ));
    }
    for job in &config.jobs {
        if let Some(checked) = check_outcomes(job) {
            found.push(Finding::job(job, checked));
        }
    }
    if let Some(token) = token {
        check_dialler(config, token, &mut found).await;
    }
    found
}

/// The outcome file's folder exists and takes a file (one is created and removed), and
/// the webhook's URL and secret can be read.
fn check_outcomes(job: &JobConfig) -> Option<Result<String, (Exit, String)>> {
    let cfg = job.outcomes.as_ref()?;
    let mut said = Vec::new();
    if let Some(path) = &cfg.path {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let probe = dir.join(format!(".dialsync-validate-{}", std::process::id()));
        match std::fs::File::create(&probe) {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe);
                said.push(format!("outcome files can be written in {}", dir.display()));
            }
            Err(e) => {
                return Some(Err((
                    Exit::Config,
                    format!(
                        "outcomes.path: cannot write in {} ({e}): create the folder, or give the service's user write access",
                        dir.display()
                    ),
                )))
            }
        }
    }
    if let Some(w) = &cfg.webhook {
        for (source, key) in [
            (&w.url, "job.outcomes.webhook_url"),
            (&w.secret, "job.outcomes.webhook_secret"),
        ] {
            if let Err(e) = source.resolve_as(key) {
                return Some(Err((Exit::Config, error_chain(&e))));
            }
        }
        said.push("the outcome webhook's URL and secret can be read".into());
    }
    Some(Ok(said.join("; ")))
}

/// An HTTP export as `validate` reads it: the first page of a paged one, an unpaged one
/// whole (only its records show its columns). Never conditional: the columns are checked.
async fn first_page(config: &Config, job: &JobConfig) -> Result<Download, SourceError> {
    let dir = downloads_dir(config);
    let fetched = http::download(
        &job.source,
        http::Request {
            dir: &dir,
            conditional: None,
            sample: true,
            stop: &|| false,
        },
    )
    .await?;
    match fetched {
        Fetched::Export(d) => Ok(*d),
        Fetched::Unchanged => unreachable!("an unconditional request is never answered 304"),
    }
}

/// Reads the export of `job` (or what was downloaded of it) through, as a run would
/// (without planning).
fn check_export(job: &JobConfig, download: Option<Download>) -> Result<String, (Exit, String)> {
    let columns = job.columns();
    let mut each = |_: source::Item<'_>| Flow::Continue(());
    if job.source.kind == SourceKind::Sql {
        // The query prepared and run with LIMIT 0: its columns, tables and rights, no data.
        source::sql::read(&job.source, &columns, source::sql::Read::Columns, &mut each)
            .map_err(|e| (Exit::Export, error_chain(&e)))?;
        return Ok(format!(
            "export {}: the query runs (with LIMIT 0) and returns every mapped column",
            job.source.path.display()
        ));
    }
    let summary = match &download {
        None => source::read(&job.source, &columns, &mut each),
        Some(d) => source::read_from(
            &d.read_as,
            &job.source.path,
            d.file.as_file(),
            &columns,
            &mut each,
        ),
    }
    .map_err(|e| (Exit::Export, error_chain(&e)))?;
    let (rows, unreadable) = (summary.records + summary.bad, summary.bad);
    let what = match &download {
        Some(d) if d.partial => format!("{} of its first page", count(rows, "row")),
        _ => count(rows, "row"),
    };
    let mut line = format!(
        "export {}: {what}, every mapped column present",
        job.source.path.display(),
    );
    if summary.skipped.blank > 0 {
        line.push_str(&format!(" ({} blank)", summary.skipped.blank));
    }
    if unreadable > 0 {
        line.push_str(&format!(
            "; {unreadable} could not be read (a sync lists them by line)"
        ));
    }
    Ok(line)
}

async fn check_dialler(config: &Config, token: &Secret, found: &mut Vec<Finding>) {
    let whole = |outcome| Finding { job: None, outcome };
    let dialler = match Dialler::new(&config.dialler, token) {
        Ok(d) => d,
        Err(e) => {
            found.push(whole(Err((Exit::Config, error_chain(&e)))));
            return;
        }
    };
    let at = &config.dialler.base_url;
    let campaigns = match dialler.campaigns().await {
        Ok(c) => c,
        Err(e) => {
            found.push(whole(Err((
                dialler_exit(&e),
                format!("dialler {at}: {}", error_chain(&e)),
            ))));
            return;
        }
    };
    found.push(whole(Ok(format!(
        "dialler {at}: token and ClientsID {} accepted ({})",
        config.dialler.client_id,
        count(campaigns.len() as u64, "campaign")
    ))));
    let listed: Vec<(i64, String)> = campaigns
        .iter()
        .filter_map(|c| {
            Some((
                c.get("ID")?.as_i64()?,
                c.get("Name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            ))
        })
        .collect();
    for job in &config.jobs {
        found.push(Finding::job(job, check_campaign(&job.campaign, &listed)));
    }
    if let Some(first) = config.jobs.iter().find(|j| j.maps_agents()) {
        let outcome = match dialler.user_logins().await {
            Ok(users) => Ok(format!(
                "{} on the dialler, to check the agent fields against",
                count(users.len() as u64, "user")
            )),
            Err(e) => Err((
                dialler_exit(&e),
                format!("cannot read the dialler's users: {}", error_chain(&e)),
            )),
        };
        found.push(Finding::job(first, outcome));
    }
}

fn check_campaign(
    campaign: &CampaignRef,
    listed: &[(i64, String)],
) -> Result<String, (Exit, String)> {
    let hit = listed.iter().find(|(id, name)| match campaign {
        CampaignRef::Id(want) => id == want,
        CampaignRef::Name(want) => name == want,
    });
    if let Some((id, name)) = hit {
        return Ok(format!("campaign {id} {name:?} found"));
    }
    let some: Vec<String> = listed
        .iter()
        .take(10)
        .map(|(id, name)| format!("{id} {name:?}"))
        .collect();
    let more = if listed.len() > some.len() {
        ", ..."
    } else {
        ""
    };
    let setting = match campaign {
        CampaignRef::Id(_) => "campaign_id",
        CampaignRef::Name(_) => "campaign_name",
    };
    Err((
        Exit::Campaign,
        format!(
            "{campaign} is not on the dialler: check {setting}; the campaigns there are: {}{more}",
            if some.is_empty() {
                "none".to_string()
            } else {
                some.join(", ")
            }
        ),
    ))
}

fn dialler_exit(e: &DiallerError) -> Exit {
    if e.is_unauthorized() {
        Exit::Unauthorized
    } else {
        Exit::Aborted
    }
}
