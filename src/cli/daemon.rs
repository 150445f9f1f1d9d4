//! `dialsync run`: the daemon, fed its stop and reload requests from real signals.

use std::path::PathBuf;

use anyhow::Context;
use dialsync::Exit;

use super::Failure;

/// Runs the daemon until SIGTERM or SIGINT.
pub(super) async fn run(config: PathBuf) -> Result<Exit, Failure> {
    let path = std::path::absolute(&config).unwrap_or(config);
    let signals = daemon_signals().map_err(|e| Failure::new(Exit::Aborted, e))?;
    // Either way the daemon ends with exit 0: after a second stop it quit with
    // calls in flight, which `main` does not wait for.
    dialsync::run_daemon(&path, signals, || {})
        .await
        .map_err(|e| Failure::new(e.exit(), e))?;
    Ok(Exit::Ok)
}

/// The daemon's requests from real signals: SIGTERM and SIGINT stop it, SIGHUP reloads
/// its config.
fn daemon_signals() -> anyhow::Result<tokio::sync::mpsc::Receiver<dialsync::Signal>> {
    use dialsync::Signal;
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    for (kind, name, request) in [
        (SignalKind::terminate(), "SIGTERM", Signal::Stop),
        (SignalKind::interrupt(), "SIGINT", Signal::Stop),
        (SignalKind::hangup(), "SIGHUP", Signal::Reload),
    ] {
        let mut stream =
            signal(kind).with_context(|| format!("cannot install the {name} handler"))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(request).await.is_err() {
                    return;
                }
            }
        });
    }
    Ok(rx)
}
