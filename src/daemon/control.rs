//! The daemon's control socket: how `dialsync sync` and `dialsync status` reach a
//! running daemon, which holds the state database (sled lets one process open it).
//!
//! A Unix stream socket beside the state, `<state.path>.sock`, mode 0600 (only the
//! service's user and root can connect). One request per connection, as a JSON line;
//! the daemon answers with JSON lines: progress while a run goes on, then one final
//! event. A client that disconnects during a run asks the run to stop (no new operation
//! starts; the state stays consistent).

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::daemon::status::Status;
use crate::engine::outcome::Exit;
use crate::engine::progress::Snapshot;

/// The control socket of the daemon that uses the state at `state_path`.
pub fn socket_path(state_path: &Path) -> PathBuf {
    let mut s = state_path.as_os_str().to_owned();
    s.push(".sock");
    PathBuf::from(s)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Sync {
        job: Option<String>,
        #[serde(flatten)]
        mode: crate::engine::run::RunMode,
    },
    Status,
    History(crate::daemon::history::HistoryQuery),
    Outcomes(crate::outcomes::OutcomesQuery),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The job is running already (scheduled); this run starts when that one ends.
    Waiting {
        job: String,
    },
    Progress(Snapshot),
    /// The run is over: what `dialsync sync` prints and its exit code.
    Done {
        exit: Exit,
        json: String,
        human: String,
    },
    Status(Status),
    History {
        /// `None`: no such run in the history.
        history: Option<crate::daemon::history::History>,
    },
    /// The outcomes asked for (`dialsync outcomes`).
    Outcomes {
        outcomes: Vec<crate::state::Outcome>,
    },
    /// The request could not be carried out.
    Error {
        exit: Exit,
        message: String,
    },
}

/// A connection to the daemon.
pub struct Client {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    write: tokio::net::unix::OwnedWriteHalf,
}

impl Client {
    /// Connects to the daemon; `Ok(None)` when none is listening (no socket, or a stale
    /// one left by a daemon that was killed).
    pub async fn connect(socket: &Path) -> io::Result<Option<Client>> {
        match UnixStream::connect(socket).await {
            Ok(stream) => {
                let (read, write) = stream.into_split();
                Ok(Some(Client {
                    lines: BufReader::new(read).lines(),
                    write,
                }))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub async fn send(&mut self, request: &Request) -> io::Result<()> {
        write_line(&mut self.write, request).await
    }

    /// The next event; `None` when the daemon closed the connection.
    pub async fn next(&mut self) -> io::Result<Option<Event>> {
        match self.lines.next_line().await? {
            None => Ok(None),
            Some(line) => serde_json::from_str(&line)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}

/// Writes one event as a JSON line.
pub(crate) async fn write_event<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    event: &Event,
) -> io::Result<()> {
    write_line(w, event).await
}

async fn write_line<W: AsyncWriteExt + Unpin>(w: &mut W, v: &impl Serialize) -> io::Result<()> {
    let mut line = serde_json::to_vec(v).expect("protocol messages serialize");
    line.push(b'\n');
    w.write_all(&line).await
}

/// Reads one request line (at most 64 KiB).
pub(crate) async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> io::Result<Option<Request>> {
    use tokio::io::AsyncReadExt;
    let mut line = String::new();
    let n = r.take(64 * 1024).read_line(&mut line).await?;
    if n == 0 {
        return Ok(None);
    }
    serde_json::from_str(&line)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
