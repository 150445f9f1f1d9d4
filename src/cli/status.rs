//! `dialsync status`: from the daemon when one runs, else from the state.

use std::path::Path;

use dialsync::collect_status;
use dialsync::Exit;
use dialsync::Store;
use dialsync::{socket_path, Event, Request};

use super::{connect, load, Failure, Output};

pub(super) async fn run(config: &Path, output: Output) -> Result<Exit, Failure> {
    let cfg = load(config)?;
    let socket = socket_path(&cfg.state.path);
    let status = match connect(&socket).await? {
        Some(mut client) => {
            client
                .send(&Request::Status)
                .await
                .map_err(|e| Failure::new(Exit::Aborted, e))?;
            match client.next().await {
                Ok(Some(Event::Status(s))) => s,
                Ok(Some(Event::Error { exit, message })) => {
                    return Err(Failure::new(exit, anyhow::anyhow!(message)))
                }
                other => {
                    return Err(Failure::new(
                        Exit::Aborted,
                        anyhow::anyhow!("the daemon gave no status ({other:?})"),
                    ))
                }
            }
        }
        None => {
            let store = Store::open(&cfg.state.path).map_err(|e| Failure::new(Exit::Aborted, e))?;
            collect_status(&cfg, &store, chrono::Utc::now())
                .map_err(|e| Failure::new(Exit::Aborted, e))?
        }
    };
    match output {
        Output::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&status).expect("status serializes")
        ),
        Output::Human => out!("{}", status.human()),
    }
    Ok(Exit::Ok)
}
