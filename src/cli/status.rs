//! `dialsync status` and `dialsync history`: from the daemon when one runs, else from the
//! state, which they only read.
//!
//! They find the state (and the daemon's socket beside it) through `--state`, else the
//! config file; a config that no longer passes its checks still names it (read
//! leniently), so a running daemon is reached after its config was broken on disk.
//! Without a daemon: a state that does not exist is not created; root reads a state that
//! belongs to the service's user as that user (it would otherwise leave files there the
//! service cannot open).

use std::path::{Path, PathBuf};

use dialsync::{collect_history, collect_status, Check, History, HistoryQuery};
use dialsync::{socket_path, Event, Request};
use dialsync::{Config, Exit, Status, Store};

use super::{connect, Failure, Output};

/// Prints `value` as JSON, or as `human` makes it.
fn show<T: serde::Serialize>(output: Output, value: &T, human: impl FnOnce(&T) -> String) {
    match output {
        Output::Json => outln!(
            "{}",
            serde_json::to_string_pretty(value).expect("answers serialize")
        ),
        Output::Human => out!("{}", human(value)),
    }
}

/// Where the state is: `--state`, else what the config file names.
fn state_path(config: &Path, state: Option<PathBuf>) -> PathBuf {
    state.unwrap_or_else(|| Config::state_path_of(config))
}

/// Asks the daemon listening beside the state at `state`, if one does.
async fn ask_daemon(state: &Path, request: Request) -> Result<Option<Event>, Failure> {
    let Some(mut client) = connect(&socket_path(state)).await? else {
        return Ok(None);
    };
    client
        .send(&request)
        .await
        .map_err(|e| Failure::new(Exit::Aborted, e))?;
    match client.next().await {
        Ok(Some(Event::Error { exit, message })) => {
            Err(Failure::new(exit, anyhow::anyhow!(message)))
        }
        Ok(Some(event)) => Ok(Some(event)),
        other => Err(Failure::new(
            Exit::Aborted,
            anyhow::anyhow!("the daemon gave no answer ({other:?})"),
        )),
    }
}

/// Opens the state at `path` to read it; `None` when there is none (nothing is created).
fn open_for_reading(path: &Path) -> Result<Option<Store>, Failure> {
    if !path.exists() {
        return Ok(None);
    }
    become_owner_of(path)?;
    Store::open(path)
        .map(Some)
        .map_err(|e| Failure::new(Exit::Aborted, e))
}

/// Run as root on a state that belongs to another user (the service's): go on as that
/// user, so that whatever opening the database writes stays theirs. A read-only command
/// needs nothing of root's.
fn become_owner_of(path: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| Failure::new(Exit::Aborted, e))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    if euid != 0 || meta.uid() == 0 {
        return Ok(());
    }
    let (uid, gid) = (meta.uid(), meta.gid());
    // SAFETY: setgroups with a null list and count 0 clears the supplementary groups;
    // setgid and setuid take plain IDs. Each result is checked.
    #[allow(unsafe_code)]
    let failed = unsafe {
        libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
    };
    if failed {
        return Err(Failure::new(
            Exit::Aborted,
            anyhow::Error::from(std::io::Error::last_os_error()).context(format!(
                "cannot read the state {} as its owner (uid {uid})",
                path.display()
            )),
        ));
    }
    Ok(())
}

/// The status of every job: the daemon's, else from the state and the config.
async fn collect(config: &Path, state: Option<PathBuf>) -> Result<Status, Failure> {
    let state = state_path(config, state);
    if let Some(event) = ask_daemon(&state, Request::Status).await? {
        return match event {
            Event::Status(s) => Ok(s),
            other => Err(Failure::new(
                Exit::Aborted,
                anyhow::anyhow!("the daemon gave no status ({other:?})"),
            )),
        };
    }
    let mut cfg = super::load(config)?;
    cfg.state.path = state;
    let now = chrono::Utc::now();
    match open_for_reading(&cfg.state.path)? {
        Some(store) => collect_status(&cfg, &store, now),
        None => Ok(Status::without_state(&cfg, now)),
    }
    .map_err(|e| Failure::new(Exit::Aborted, e))
}

pub(super) async fn run(
    config: &Path,
    state: Option<PathBuf>,
    output: Output,
) -> Result<u8, Failure> {
    let status = collect(config, state).await?;
    show(output, &status, Status::human);
    Ok(Exit::Ok as u8)
}

/// `status --check`: one line per job, the most urgent first, and the monitoring-plugin
/// exit code of the worst (0 ok, 1 partial, 2 stopped, guard or overdue, 3 unknown).
pub(super) async fn check(config: &Path, state: Option<PathBuf>) -> u8 {
    match collect(config, state).await {
        Ok(status) => {
            let (worst, lines) = status.check(chrono::Utc::now());
            if lines.is_empty() {
                outln!("UNKNOWN no job in the config");
                return Check::Unknown.code();
            }
            for l in lines {
                outln!("{}", l.line);
            }
            worst.code()
        }
        Err(f) => {
            outln!("UNKNOWN cannot read the state: {:#}", f.error);
            Check::Unknown.code()
        }
    }
}

/// `dialsync history`.
pub(super) async fn history(
    config: &Path,
    state: Option<PathBuf>,
    query: HistoryQuery,
    output: Output,
) -> Result<u8, Failure> {
    let state = state_path(config, state);
    let answer = match ask_daemon(&state, Request::History(query.clone())).await? {
        Some(Event::History { history }) => history,
        Some(other) => {
            return Err(Failure::new(
                Exit::Aborted,
                anyhow::anyhow!("the daemon gave no history ({other:?})"),
            ))
        }
        None => match open_for_reading(&state)? {
            Some(store) => {
                collect_history(&store, &query).map_err(|e| Failure::new(Exit::Aborted, e))?
            }
            // No state, no runs: a run asked for by its ID is not there either.
            None => query
                .run
                .is_none()
                .then(|| History::Runs { runs: Vec::new() }),
        },
    };
    let Some(answer) = answer else {
        return Err(Failure::new(
            Exit::Config,
            anyhow::anyhow!(
                "no run {} in the history (it keeps the last [state] history_runs runs of each job; `dialsync history` lists them)",
                query.run.as_deref().unwrap_or("")
            ),
        ));
    };
    show(output, &answer, History::human);
    Ok(Exit::Ok as u8)
}

/// `dialsync outcomes`: the daemon's answer when one runs (it holds the state), else the
/// state's (and with `--fetch` the dialler's) read here.
pub(super) async fn outcomes(
    config: &Path,
    state: Option<PathBuf>,
    query: dialsync::OutcomesQuery,
    json: bool,
) -> Result<u8, Failure> {
    let cfg = super::load(config)?;
    let job = cfg
        .job(&query.job)
        .map_err(|e| Failure::new(Exit::Config, anyhow::anyhow!(e)))?;
    let state = state_path(config, state);
    let outcomes = match ask_daemon(&state, Request::Outcomes(query.clone())).await? {
        Some(Event::Outcomes { outcomes }) => outcomes,
        Some(other) => {
            return Err(Failure::new(
                Exit::Aborted,
                anyhow::anyhow!("the daemon gave no outcomes ({other:?})"),
            ))
        }
        None => match open_for_reading(&state)? {
            Some(store) => {
                let tenant = dialsync::Tenant::new(&cfg.dialler);
                dialsync::query_outcomes(&cfg, &store, &tenant, &query)
                    .await
                    .map_err(|e| Failure::new(Exit::Aborted, anyhow::anyhow!(e)))?
            }
            // No state: no contact of the job is known, so none has an outcome.
            None => Vec::new(),
        },
    };
    out!(
        "{}",
        String::from_utf8_lossy(&dialsync::render_outcomes(job, &outcomes, json))
    );
    Ok(Exit::Ok as u8)
}
