//! `dialsync validate`: the config file and its token; then, unless `--offline`, each
//! job's export and the dialler (token, ClientsID, campaigns), read-only.

use std::path::Path;

use dialsync::{preflight, Exit, TokenSource};

use super::{load, Failure};

pub(super) async fn run(config: &Path, offline: bool) -> Result<Exit, Failure> {
    let cfg = load(config)?;
    for w in &cfg.warnings {
        eprintln!("warning: {w}");
    }
    let credential_elsewhere = matches!(cfg.dialler.token, TokenSource::Credential(_))
        && std::env::var_os("CREDENTIALS_DIRECTORY").is_none();
    let token = if credential_elsewhere {
        // Outside the service the credential is not there to read; systemd runs
        // `validate` again before every start and reload, with it.
        eprintln!(
            "note: the token (token_credential) is checked when the service starts{}",
            if offline {
                ""
            } else {
                "; the dialler is not checked from here"
            }
        );
        None
    } else {
        Some(cfg.dialler.token.resolve().map_err(|e| {
            Failure::new(
                Exit::Config,
                anyhow::Error::from(e).context(format!("{} is not usable", config.display())),
            )
        })?)
    };
    let names: Vec<&str> = cfg.jobs.iter().map(|j| j.name.as_str()).collect();
    outln!(
        "{}: OK ({} job{}: {})",
        config.display(),
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        names.join(", ")
    );
    for job in &cfg.jobs {
        let next = job.next_runs(3);
        if !next.is_empty() {
            outln!(
                "  job {}: next runs {} ({})",
                job.name,
                next.join(", "),
                job.timezone
            );
        }
    }
    if offline {
        return Ok(Exit::Ok);
    }
    let found = preflight(&cfg, token.as_ref()).await;
    let mut worst = Exit::Ok;
    let mut failed = 0;
    for f in &found {
        let about = f
            .job
            .as_deref()
            .map(|j| format!("job {j}: "))
            .unwrap_or_default();
        match &f.outcome {
            Ok(what) => outln!("  ok      {about}{}", dialsync::printable(what)),
            Err((exit, why)) => {
                failed += 1;
                worst = Exit::worst([worst, *exit]);
                outln!(
                    "  FAILED  {about}{} (exit code {})",
                    dialsync::printable(why),
                    *exit as i32
                );
            }
        }
    }
    if failed > 0 {
        eprintln!(
            "{}: {failed} of {} checks failed (`validate --offline` checks the config alone)",
            config.display(),
            found.len()
        );
    }
    Ok(worst)
}
