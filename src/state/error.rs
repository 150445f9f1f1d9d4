//! What can go wrong with the state, and how sled's errors are told apart (held by
//! another process, damaged).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "the state database {path} is in use by another dialsync process; \
         if the daemon is running, stop it or let it run the sync"
    )]
    Locked { path: PathBuf },
    #[error(
        "the state database {path} belongs to user {owner}; run this command as that user \
         (`sudo -u {owner} dialsync ...`), or start the service, which takes manual syncs over \
         its control socket. Run as root it would write files the service cannot open"
    )]
    ForeignOwner { path: PathBuf, owner: String },
    #[error(
        "cannot open the state database {path}; if it is damaged, `dialsync state rebuild` \
         moves it aside and rebuilds it from the dialler"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: DbError,
    },
    /// The delivered outcomes' own database (see `state::outcomes`): not the state's, so
    /// `state rebuild` never takes it for a damaged state.
    #[error(
        "cannot open {path}, the database of the outcomes already delivered (check that it \
         and its folder belong to the user dialsync runs as and the disk is readable; a \
         damaged one is moved aside by itself, and if you move it aside by hand, each \
         outcome is delivered once more)"
    )]
    OutcomesOpen {
        path: PathBuf,
        #[source]
        source: DbError,
    },
    #[error(
        "cannot write {path}, a scratch copy beside the state (check that the folder is \
         writable and the disk has room; the state was not changed)"
    )]
    Scratch {
        path: PathBuf,
        #[source]
        source: DbError,
    },
    #[error(
        "cannot open the state database {path} ({broken}), nor restore it from its snapshots; \
         `dialsync state rebuild` moves it aside and rebuilds it from the dialler"
    )]
    Restore {
        path: PathBuf,
        broken: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot compact the state into {path} (check that the folder is writable and the disk \
         has room for two more copies of the state): the state is as it was, or, if the copy \
         was complete, the next command that opens it puts the copy in its place"
    )]
    Compact {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "job {job}'s state was being repacked when dialsync stopped, and the copy that \
         finishes it, {path}, cannot be used ({why}); put the copy back, or run `dialsync state \
         rebuild` to rebuild the job's state from the dialler"
    )]
    Repack {
        path: PathBuf,
        job: String,
        why: String,
    },
    /// A repack, or a verification's rewrite of the entries, failed while it wrote the
    /// tree again: the tree is half written, and its copy and the state's mark stay, so
    /// that it is finished before anything reads it.
    #[error(
        "rewriting job {job}'s {what} in the state stopped halfway; they are finished from \
         their copy {path} before anything reads them (when the state is next opened, or at \
         the job's next run), so leave the copy where it is"
    )]
    Unfinished {
        job: String,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Box<StateError>,
    },
    #[error("cannot write the state's snapshot in {path}")]
    Snapshot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot write the state digest {path} (check that the folder is writable and the disk \
         has room; the next run reads the entries instead)"
    )]
    Digest {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read or create the state's key file {path}")]
    Key {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the state database failed")]
    Db(#[source] DbError),
    #[error("the state entry for UserData {key:?} is unreadable (written by a newer dialsync?)")]
    Corrupt { key: String },
}

impl From<sled::Error> for StateError {
    fn from(e: sled::Error) -> StateError {
        StateError::Db(DbError(e))
    }
}

/// A failure of sled, said plainly. sled keeps an I/O error of its background writes (a
/// full disk) and hands out copies of it, which it makes from the error's debug form:
/// `IO error: Os { code: 28, kind: StorageFull, message: "No space left on device" }`.
/// This says what the system said (`No space left on device (os error 28)`), and a
/// damaged database without sled's backtrace.
#[derive(Debug)]
pub struct DbError(pub(crate) sled::Error);

impl DbError {
    /// An I/O error met around sled (a folder or file of the state).
    pub(crate) fn io(e: std::io::Error) -> DbError {
        DbError(sled::Error::Io(e))
    }
}

impl From<sled::Error> for DbError {
    fn from(e: sled::Error) -> DbError {
        DbError(e)
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            sled::Error::Io(e) if e.raw_os_error().is_some() => write!(f, "{e}"),
            sled::Error::Io(e) => f.write_str(&plain_io(&e.to_string())),
            sled::Error::Corruption { at: Some(at), .. } => {
                write!(f, "the database's data at {at:?} is damaged")
            }
            sled::Error::Corruption { at: None, .. } => {
                f.write_str("the database's data is damaged")
            }
            other => write!(f, "{other}"),
        }
    }
}

/// Its message already says it all.
impl std::error::Error for DbError {}

/// An I/O error's message, from the debug form a copy of it carries
/// (`Os { code: 28, kind: StorageFull, message: "No space left on device" }`; a copy of a
/// copy wraps that in `Custom { kind: .., error: ".." }`): as the system's error reads
/// (`No space left on device (os error 28)`). Anything else is shown as it is.
fn plain_io(text: &str) -> String {
    let os = || -> Option<String> {
        let rest = text.strip_prefix("Os { code: ")?;
        let (code, rest) = rest.split_once(',')?;
        let (_, message) = rest.split_once("message: \"")?;
        let message = message.strip_suffix("\" }")?;
        Some(format!("{message} (os error {code})"))
    };
    let custom = || -> Option<String> {
        let rest = text.strip_prefix("Custom { kind: ")?;
        let (_, error) = rest.split_once("error: \"")?;
        let error = error.strip_suffix("\" }")?;
        Some(error.replace("\\\"", "\"").replace("\\\\", "\\"))
    };
    os().or_else(|| custom().map(|inner| plain_io(&inner)))
        .unwrap_or_else(|| text.to_string())
}

/// Whether sled could not open the database because another process holds it. sled says
/// so only in its message; this is the one place that reads it, and
/// `tests::second_open_is_a_clear_error_and_state_persists` fails if sled's wording
/// changes.
pub(super) fn held_elsewhere(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// Whether sled's failure to open a database means the database is damaged (restore it),
/// not that the disk is full or the files cannot be reached (try again later, move
/// nothing).
pub(super) fn is_damage(e: &sled::Error) -> bool {
    use std::io::ErrorKind;
    match e {
        sled::Error::Corruption { .. }
        | sled::Error::Unsupported(_)
        | sled::Error::ReportableBug(_) => true,
        sled::Error::Io(io) => {
            matches!(io.kind(), ErrorKind::InvalidData | ErrorKind::UnexpectedEof)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full disk met by sled's flusher reaches the caller as a copy of the error, which
    /// sled makes from its debug form (twice over, when a copy is copied again).
    #[test]
    fn a_full_disk_reads_as_the_system_says_it() {
        let full = || sled::Error::Io(std::io::Error::from_raw_os_error(28));
        let said = "No space left on device (os error 28)";
        assert_eq!(DbError(full()).to_string(), said);
        assert!(
            full().clone().to_string().contains("StorageFull"),
            "sled's own form"
        );
        assert_eq!(DbError(full().clone()).to_string(), said);
        assert_eq!(DbError(full().clone().clone()).to_string(), said);
        let chain = crate::engine::outcome::error_chain(&StateError::from(full().clone()));
        assert_eq!(chain, format!("the state database failed: {said}"));
        // Anything else as it is.
        let other = sled::Error::Io(std::io::Error::other("could not acquire lock"));
        assert_eq!(DbError(other).to_string(), "could not acquire lock");
        let bug = sled::Error::Unsupported("a \"quoted\" word".into());
        assert_eq!(DbError(bug).to_string(), "Unsupported: a \"quoted\" word");
    }
}
