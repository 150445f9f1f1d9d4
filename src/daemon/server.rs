//! The control socket: bound with mode 0600, its connections served, and the manual runs
//! and status requests that come over it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::{UnixListener, UnixStream};
use tracing::Instrument;

use super::{control, Daemon, DaemonError};
use crate::engine::outcome::error_chain;
use crate::engine::outcome::Exit;
use crate::engine::progress::RunHandle;
use crate::engine::report::{self, JobReport};
use crate::engine::run::{self as sync, RunMode};
use control::{Event, Request};

/// Binds the control socket, replacing a stale one, with mode 0600.
pub(super) fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| DaemonError::Socket {
        path: path.to_path_buf(),
        source,
    };
    // The state is locked by us, so no other daemon of this state is running: a socket
    // file left over is from one that was killed.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Serves `GET /metrics` (anything else: 404) until aborted.
pub(super) async fn serve_metrics(
    metrics: Arc<crate::metrics::Metrics>,
    listener: tokio::net::TcpListener,
) {
    use axum::http::header::CONTENT_TYPE;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = Arc::clone(&metrics);
            async move {
                (
                    [(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
                    metrics.encode(),
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the metrics server stopped");
    }
}

pub(super) async fn accept_loop(daemon: Arc<Daemon>, listener: UnixListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::error!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let daemon = Arc::clone(&daemon);
        tokio::spawn(
            async move {
                if let Err(e) = serve(&daemon, stream).await {
                    tracing::debug!(error = %e, "control connection ended");
                }
            }
            .instrument(tracing::info_span!("control")),
        );
    }
}

pub(super) async fn serve(daemon: &Daemon, mut stream: UnixStream) -> std::io::Result<()> {
    let request = {
        let mut reader = BufReader::new(&mut stream);
        control::read_request(&mut reader).await
    };
    match request {
        Ok(None) => Ok(()),
        Err(e) => {
            let event = Event::Error {
                exit: Exit::Config,
                message: format!("bad request: {e}"),
            };
            control::write_event(&mut stream, &event).await
        }
        Ok(Some(Request::Status)) => {
            let event = match daemon.status() {
                Ok(s) => Event::Status(s),
                Err(e) => Event::Error {
                    exit: Exit::Aborted,
                    message: error_chain(&e),
                },
            };
            control::write_event(&mut stream, &event).await
        }
        Ok(Some(Request::Outcomes(query))) => {
            let cfg = daemon.config.borrow().clone();
            let tenant = daemon.tenant(&cfg);
            let event = match crate::outcomes::query(&cfg, &daemon.store, &tenant, &query).await {
                Ok(outcomes) => Event::Outcomes { outcomes },
                Err(message) => Event::Error {
                    exit: Exit::Aborted,
                    message,
                },
            };
            control::write_event(&mut stream, &event).await
        }
        Ok(Some(Request::History(query))) => {
            let event = match crate::daemon::history::collect(&daemon.store, &query) {
                Ok(history) => Event::History { history },
                Err(e) => Event::Error {
                    exit: Exit::Aborted,
                    message: error_chain(&e),
                },
            };
            control::write_event(&mut stream, &event).await
        }
        Ok(Some(Request::Sync { job, mode })) => {
            tracing::info!(
                job = job.as_deref().unwrap_or("(all)"),
                mode = ?mode,
                "manual sync requested"
            );
            daemon.manual(job.as_deref(), mode, &mut stream).await
        }
    }
}

impl Daemon {
    pub(super) async fn manual(
        &self,
        job: Option<&str>,
        mode: RunMode,
        stream: &mut UnixStream,
    ) -> std::io::Result<()> {
        let cfg = self.current();
        let jobs = match sync::select_jobs(&cfg, job) {
            Ok(j) => j,
            Err(e) => {
                let event = Event::Error {
                    exit: e.exit(),
                    message: e.to_string(),
                };
                return control::write_event(stream, &event).await;
            }
        };
        let (read, mut write) = stream.split();
        let mut read = BufReader::new(read);
        let mut client_gone = false;
        let mut reports = Vec::new();
        for job in jobs {
            if *self.stop.borrow() {
                let event = Event::Error {
                    exit: Exit::Aborted,
                    message: "the daemon is shutting down; run the sync again once it is back"
                        .into(),
                };
                return control::write_event(&mut write, &event).await;
            }
            let slot = self.slot(&job.name);
            let guard = match slot.run_lock.try_lock() {
                Ok(g) => g,
                Err(_) => {
                    let event = Event::Waiting {
                        job: job.name.clone(),
                    };
                    control::write_event(&mut write, &event).await?;
                    slot.run_lock.lock().await
                }
            };
            // The config in force now, not the one of the request: a reload may have come
            // while the run waited for the job (a job it removed is reported as such).
            let now = self.current();
            let handle = Arc::new(RunHandle::new());
            let run = self.run_locked(&now, &job.name, mode, &handle);
            tokio::pin!(run);
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let mut buf = Vec::new();
            let report = loop {
                tokio::select! {
                    r = &mut run => break r,
                    _ = tick.tick(), if !client_gone => {
                        let event = Event::Progress(handle.snapshot());
                        if control::write_event(&mut write, &event).await.is_err() {
                            client_gone = true;
                        }
                    }
                    n = tokio::io::AsyncBufReadExt::read_until(&mut read, b'\n', &mut buf), if !client_gone => {
                        // The client sends nothing more; end of stream means it is gone.
                        if matches!(n, Ok(0) | Err(_)) {
                            client_gone = true;
                        }
                    }
                }
                if client_gone && !handle.stop_requested() {
                    tracing::warn!(job = %job.name, "the manual sync's terminal went away; stopping the run");
                    handle.request_stop();
                }
            };
            drop(guard);
            reports.push(report);
        }
        if client_gone {
            return Ok(());
        }
        let reports: Vec<JobReport> = reports.into_iter().map(Arc::unwrap_or_clone).collect();
        let human: String = reports.iter().map(JobReport::human).collect();
        let event = Event::Done {
            exit: report::exit_of(&reports),
            json: report::json(&reports),
            human,
        };
        control::write_event(&mut write, &event).await
    }
}
