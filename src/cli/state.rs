//! `dialsync state rebuild`: a job's state rebuilt from the dialler's contacts;
//! `dialsync state compact`: the state database written afresh.

use anyhow::Context;
use dialsync::select_jobs;
use dialsync::socket_path;
use dialsync::Config;
use dialsync::Dialler;
use dialsync::Exit;
use dialsync::{rebuild_state, ReconcileError};
use dialsync::{StateError, Store};

use super::{connect, Failure};

/// Refuses while the daemon runs on the state: it holds the database.
async fn daemon_stopped(cfg: &Config, what: &str) -> Result<(), Failure> {
    let path = &cfg.state.path;
    if connect(&socket_path(path)).await?.is_some() {
        return Err(Failure::new(
            Exit::Aborted,
            anyhow::anyhow!(
                "the daemon is running on this state ({}): stop it (`systemctl stop dialsync`), \
                 {what}, then start it again",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// `state compact`: the state database written afresh (see `dialsync::Store::compact`).
pub(super) async fn compact(cfg: &Config) -> Result<Exit, Failure> {
    daemon_stopped(cfg, "compact").await?;
    let path = &cfg.state.path;
    if !path.exists() {
        return Err(Failure::new(
            Exit::Aborted,
            anyhow::anyhow!("there is no state at {} to compact", path.display()),
        ));
    }
    let store =
        Store::open_sized(path, cfg.state.cache_mb).map_err(|e| Failure::new(Exit::Aborted, e))?;
    let cache_mb = cfg.state.cache_mb;
    let done = tokio::task::spawn_blocking(move || store.compact(cache_mb))
        .await
        .map_err(|e| Failure::new(Exit::Aborted, anyhow::anyhow!(e)))?
        .map_err(|e| Failure::new(Exit::Aborted, e))?;
    let mb = |b: u64| b as f64 / 1e6;
    outln!(
        "compacted the state {}: {} records in {} trees, {:.0} MB on disk before, {:.0} MB \
         after, {:.1} s",
        path.display(),
        done.records,
        done.trees,
        mb(done.bytes_before),
        mb(done.bytes_after),
        done.seconds
    );
    Ok(Exit::Ok)
}

/// `state rebuild`: each selected job's state from its campaign on the dialler.
pub(super) async fn rebuild(cfg: &Config, job: Option<&str>) -> Result<Exit, Failure> {
    let path = &cfg.state.path;
    daemon_stopped(cfg, "rebuild").await?;
    let jobs = select_jobs(cfg, job).map_err(|e| Failure::new(e.exit(), e))?;
    let token = cfg
        .dialler
        .token
        .resolve()
        .map_err(|e| Failure::new(Exit::Config, e))?;
    let dialler = Dialler::new(&cfg.dialler, &token).map_err(|e| Failure::new(Exit::Config, e))?;
    let store = match Store::open_sized(path, cfg.state.cache_mb) {
        Ok(s) => s,
        Err(e @ (StateError::Open { .. } | StateError::Restore { .. })) if path.exists() => {
            let source = e;
            let aside = dialsync::move_aside(path)
                .with_context(|| format!("cannot move {} aside", path.display()))
                .map_err(|e| Failure::new(Exit::Aborted, e))?;
            eprintln!(
                "the state database {} could not be opened ({source}); moved it to {} and \
                 starting a new one",
                path.display(),
                aside.display()
            );
            if job.is_some() && cfg.jobs.len() > 1 {
                eprintln!(
                    "note: it held the state of every job: rebuild the others too \
                     (`dialsync state rebuild` without --job rebuilds all)"
                );
            }
            Store::open_sized(path, cfg.state.cache_mb)
                .map_err(|e| Failure::new(Exit::Aborted, e))?
        }
        Err(e) => return Err(Failure::new(Exit::Aborted, e)),
    };
    for job in jobs {
        let state = store
            .job(&job.name)
            .map_err(|e| Failure::new(Exit::Aborted, e))?;
        let r = rebuild_state(&dialler, job, &state).await.map_err(|e| {
            let unauthorized = matches!(
                &e,
                ReconcileError::Dialler(d) if d.is_unauthorized()
            );
            let exit = if unauthorized {
                Exit::Unauthorized
            } else {
                Exit::Aborted
            };
            Failure::new(
                exit,
                anyhow::Error::from(e).context(format!("job {}", job.name)),
            )
        })?;
        if let Err(e) = store.set_verification(&job.name, &r.as_verified()) {
            tracing::warn!(error = %e, "could not record the rebuild as a verification");
        }
        outln!(
            "job {}: rebuilt from campaign {}: {} contacts",
            job.name,
            r.campaign,
            r.contacts
        );
        if r.without_user_data > 0 {
            outln!(
                "  {} contacts of the campaign have no UserData and were left out",
                r.without_user_data
            );
        }
        for (key, ids) in r.shared.iter().take(10) {
            outln!(
                "  UserData {} is on {} contacts (IDs {ids:?}); the first is kept, remove the \
                 others in the jtel portal",
                dialsync::printable(key),
                ids.len()
            );
        }
        outln!(
            "  the dialler does not show which contacts are locked: {} locks were kept from the \
             old state; for the other {} the next sync unlocks each one that is in the export and \
             locks (or deletes, per on_missing) each one that is not, one call each",
            r.locked_kept,
            r.lock_unknown
        );
    }
    outln!(
        "the next sync sends what differs between the export and the dialler; \
         `dialsync sync --dry-run` shows it first"
    );
    Ok(Exit::Ok)
}
