//! `dialsync sync` and `dialsync verify`: handed to the daemon when one runs for the
//! state, else run here with progress bars and Ctrl-C; then the reports.

use std::sync::Arc;
use std::time::Duration;

use dialsync::Config;
use dialsync::Exit;
use dialsync::RunHandle;
use dialsync::{exit_of, reports_json, JobReport};
use dialsync::{socket_path, Client, Event, Request};
use dialsync::{sync, SyncOptions};

use super::bars::Bars;
use super::{connect, Failure, Output};

/// `sync` and `verify`: handed to the daemon when one runs for this state, else run here
/// with progress bars and Ctrl-C.
pub(super) async fn run(
    config: &Config,
    opts: SyncOptions,
    output: Output,
) -> Result<Exit, Failure> {
    let socket = socket_path(&config.state.path);
    if let Some(client) = connect(&socket).await? {
        let request = Request::Sync {
            job: opts.job,
            mode: opts.mode,
        };
        return sync_in_daemon(client, request, output).await;
    }
    let handle = Arc::new(RunHandle::new());
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let progress = tokio::spawn(show_progress(Arc::clone(&handle), done_rx));
    let ctrl_c = tokio::spawn(stop_on_ctrl_c(Arc::clone(&handle)));
    let result = sync(
        config,
        &SyncOptions {
            handle: Some(handle),
            ..opts
        },
    )
    .await;
    ctrl_c.abort();
    let _ = done_tx.send(());
    let _ = progress.await;
    let reports = result.map_err(|e| match e {
        dialsync::SyncError::State(dialsync::StateError::Locked { path }) => Failure::new(
            Exit::Aborted,
            anyhow::anyhow!(
                "the state database {} is in use by another dialsync process, and no \
                     daemon answers on {}: another manual sync, `status` or `state` \
                     command is probably running. Wait for it to end and run this again",
                path.display(),
                socket.display()
            ),
        ),
        e => Failure::new(e.exit(), e),
    })?;
    print_reports(&reports, output);
    Ok(exit_of(&reports))
}

/// A manual sync carried out by the running daemon: its progress on the terminal, its
/// report on stdout, its exit code.
async fn sync_in_daemon(
    mut client: Client,
    request: Request,
    output: Output,
) -> Result<Exit, Failure> {
    let lost = |e: std::io::Error| {
        Failure::new(
            Exit::Aborted,
            anyhow::Error::from(e).context("lost the connection to the daemon"),
        )
    };
    let mut bars = Bars::new();
    bars.note(
        "dialsync: the daemon is running; this sync runs in it, with the config it loaded \
         (Ctrl-C stops it after the calls in flight)",
    );
    client.send(&request).await.map_err(lost)?;
    loop {
        match client.next().await.map_err(lost)? {
            Some(Event::Progress(s)) => bars.update(&s),
            Some(Event::Waiting { job }) => bars.note(&format!(
                "dialsync: job {job} is running on its schedule; this run starts when that one ends"
            )),
            Some(Event::Done { exit, json, human }) => {
                bars.finish();
                match output {
                    Output::Json => outln!("{json}"),
                    Output::Human => out!("{human}"),
                }
                return Ok(exit);
            }
            Some(Event::Error { exit, message }) => {
                bars.finish();
                return Err(Failure::new(exit, anyhow::anyhow!(message)));
            }
            Some(Event::Status(_) | Event::History { .. } | Event::Outcomes { .. }) => {}
            None => {
                bars.finish();
                return Err(Failure::new(
                    Exit::Aborted,
                    anyhow::anyhow!(
                        "the daemon closed the connection before the run ended (was it stopped?); \
                         `dialsync status` shows what the run did"
                    ),
                ));
            }
        }
    }
}

/// Draws the progress of a local run until `done`.
async fn show_progress(handle: Arc<RunHandle>, mut done: tokio::sync::oneshot::Receiver<()>) {
    let mut bars = Bars::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => bars.update(&handle.snapshot()),
            _ = &mut done => break,
        }
    }
    bars.finish();
}

/// Ctrl-C stops the run after the calls in flight (each bounded by the HTTP timeout), so
/// that every confirmed call is in the state.
async fn stop_on_ctrl_c(handle: Arc<RunHandle>) {
    let mut first = true;
    while tokio::signal::ctrl_c().await.is_ok() {
        handle.request_stop();
        if first {
            eprintln!("\ndialsync: stopping after the calls in flight; no new call starts");
        } else {
            eprintln!(
                "dialsync: still waiting for the calls in flight (at most the dialler timeout)"
            );
        }
        first = false;
    }
}

fn print_reports(reports: &[JobReport], output: Output) {
    match output {
        Output::Json => outln!("{}", reports_json(reports)),
        Output::Human => {
            for r in reports {
                out!("{}", r.human());
            }
        }
    }
}
