//! `dialsync validate`: the config file and its token, without contacting the dialler.

use std::path::Path;

use dialsync::Exit;
use dialsync::TokenSource;

use super::{load, Failure};

pub(super) fn run(config: &Path) -> Result<Exit, Failure> {
    let cfg = load(config)?;
    let credential_elsewhere = matches!(cfg.dialler.token, TokenSource::Credential(_))
        && std::env::var_os("CREDENTIALS_DIRECTORY").is_none();
    if credential_elsewhere {
        // Outside the service the credential is not there to read; systemd runs
        // `validate` again before every start and reload, with it.
        eprintln!("note: the token (token_credential) is checked when the service starts");
    } else {
        cfg.dialler.token.resolve().map_err(|e| {
            Failure::new(
                Exit::Config,
                anyhow::Error::from(e).context(format!("{} is not usable", config.display())),
            )
        })?;
    }
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
    Ok(Exit::Ok)
}
