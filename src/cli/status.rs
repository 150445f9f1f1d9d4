//! `dialsync status`: from the daemon when one runs, else from the state.

use std::path::Path;

use dialsync::daemon::control::{self, Event, Request};
use dialsync::daemon::status;
use dialsync::engine::outcome::Exit;
use dialsync::state::Store;

use super::{connect, load, Failure, Output};

pub async fn run(config: &Path, output: Output) -> Result<Exit, Failure> {
    let cfg = load(config)?;
    let socket = control::socket_path(&cfg.state.path);
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
            status::collect(&cfg, &store, chrono::Utc::now())
                .map_err(|e| Failure::new(Exit::Aborted, e))?
        }
    };
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&status).expect("status serializes")
        ),
        Output::Human => print!("{}", status.human()),
    }
    Ok(Exit::Ok)
}
