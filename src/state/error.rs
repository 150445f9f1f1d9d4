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
        source: sled::Error,
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
        source: sled::Error,
    },
    #[error(
        "cannot write {path}, a scratch copy beside the state (check that the folder is \
         writable and the disk has room; the state was not changed)"
    )]
    Scratch {
        path: PathBuf,
        #[source]
        source: sled::Error,
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
         has room for a second copy of the state): the state is as it was, or, if the copy \
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
    Db(#[from] sled::Error),
    #[error("the state entry for UserData {key:?} is unreadable (written by a newer dialsync?)")]
    Corrupt { key: String },
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
