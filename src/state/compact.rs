//! `dialsync state compact`: the state database written afresh, with the same records.
//!
//! sled 0.34 keeps, for every page of the database, a list of the fragments that make it
//! up on disk, and loads that list for every page whenever the database is opened. A
//! write to a record that exists already adds a fragment to its page (a page is rewritten
//! whole only at its tenth), and a removed page stays listed as free. So after runs that
//! rewrite most entries (a campaign changed in full, the first sync after a `state
//! rebuild`, mass removals) a state of a million contacts takes 100-150 MB to open, where
//! the same records written once in key order take about 35 MB. Compaction writes every
//! record of every tree into a new database beside the state, in key order, and puts it
//! in the state's place. The records go through files first (`<state>.compact-dump`, one
//! per tree), and the state is closed before the new database is written from them, so
//! that the memory of the two databases is never held at once (1M contacts after a
//! million updates: a peak of 149 MB with both open, see BENCHMARKS.md).
//!
//! The counts of values rewritten since their last repack (see `state::repack`) are left
//! out of the copy for the trees it writes afresh (all of the state's, not the delivered
//! outcomes' in their own database). A manual sync compacts the state this way, instead
//! of repacking the entries in place, once a run left them due (see
//! [`Store::compacting_after_runs`]).
//!
//! The swap survives a crash at any point: the files of records and an unmarked copy are
//! discarded by the next open; the copy is made durable and then marked
//! complete (`<state>.compact-done`) before the state is touched; the old database is
//! renamed to `<state>.before-compact`, the copy to `<state>`, and the two leftovers are
//! removed. [`finish_interrupted`], called before every open, completes a marked swap
//! and discards an unmarked copy, so a state is always either the old database or the
//! complete copy.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::repack::{read_copy, write_copy, Rewrite};
use super::{
    beside, private_dir, private_file, remove_dir_if_there, remove_file_if_there, sync_folder_of,
    StateError, Store,
};

/// What a compaction did.
#[derive(Debug, Clone, Default)]
pub struct Compacted {
    /// Trees copied (the jobs' entries, journals, history and the per-store
    /// records).
    pub trees: usize,
    /// Records copied.
    pub records: u64,
    /// The database's files on disk before and after, in bytes.
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub seconds: f64,
}

/// `<state>.compact`: where the copy is written.
fn copy_path(state: &Path) -> PathBuf {
    beside(state, "compact")
}

/// `<state>.compact-dump`: the trees' records in files (one per tree), from which the copy
/// is written once the state is closed.
fn dump_path(state: &Path) -> PathBuf {
    beside(state, "compact-dump")
}

/// `<state>.compact-done`: the copy is complete and durable.
fn done_marker(state: &Path) -> PathBuf {
    beside(state, "compact-done")
}

/// `<state>.before-compact`: the old database while the two change places.
fn old_path(state: &Path) -> PathBuf {
    beside(state, "before-compact")
}

/// The bytes of the files in `dir` and its folders.
fn size_of(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => size_of(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Whether the file system of the state at `state` has room for a compaction: twice the
/// space the database takes now, for the files of its records and the copy written from
/// them (each smaller than the database: they leave out its free space and the records of
/// rewrites).
pub(super) fn room_to_compact(state: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(state.as_os_str().as_bytes()) else {
        return false;
    };
    let mut fs = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `fs` a buffer statvfs fills.
    #[allow(unsafe_code)]
    let fs = unsafe {
        if libc::statvfs(path.as_ptr(), fs.as_mut_ptr()) != 0 {
            return false;
        }
        fs.assume_init()
    };
    // Both are narrower than u64 on some targets.
    #[allow(clippy::useless_conversion)]
    let free = u64::from(fs.f_bavail).saturating_mul(u64::from(fs.f_frsize));
    free > size_of(state).saturating_mul(2)
}

/// `<state>.lock`: held by a compaction from start to end, and by every open of the
/// state while it looks for a compaction's leftovers (sled's own lock covers the database
/// only while it is open, not while the copy and the state change places).
fn lock_path(state: &Path) -> PathBuf {
    beside(state, "lock")
}

/// An exclusive hold of `<state>.lock`, let go when dropped (or when the process ends,
/// even by `kill -9`). Without a file (`None`): this user cannot make one beside the state
/// (the folder is not theirs), so no compaction of theirs can be running either.
pub(super) struct Hold(#[allow(dead_code)] Option<std::fs::File>);

/// Takes the hold of the state at `state`; `None` if another process has it.
pub(super) fn hold(state: &Path) -> std::io::Result<Option<Hold>> {
    use std::io::ErrorKind::PermissionDenied;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let path = lock_path(state);
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
    {
        Err(e) if e.kind() == PermissionDenied => match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if matches!(e.kind(), PermissionDenied | std::io::ErrorKind::NotFound) => {
                return Ok(Some(Hold(None)))
            }
            Err(e) => return Err(e),
        },
        other => other?,
    };
    // SAFETY: flock on a descriptor this function owns has no other precondition.
    #[allow(unsafe_code)]
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if taken == 0 {
        return Ok(Some(Hold(Some(file))));
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        Ok(None)
    } else {
        Err(e)
    }
}

/// Completes a compaction that a crash interrupted, or discards its copy: before the
/// state at `state` is opened. Without a compaction's leftovers, it looks at three paths
/// and does nothing. The caller holds [`hold`]: a compaction in progress is not
/// interrupted.
pub(super) fn finish_interrupted(state: &Path, held: &Hold) -> std::io::Result<()> {
    let (copy, done, old) = (copy_path(state), done_marker(state), old_path(state));
    let dump = dump_path(state);
    if !(done.exists() || copy.exists() || old.exists() || dump.exists()) {
        return Ok(());
    }
    if held.0.is_none() {
        return Err(std::io::Error::other(format!(
            "a compaction of the state was interrupted, and this user cannot make {} to \
             finish it: run dialsync as the state's owner",
            lock_path(state).display()
        )));
    }
    // The records the copy was being written from: the state or a complete copy holds them.
    remove_dir_if_there(&dump)?;
    if !done.exists() {
        // The copy was not complete: the old database is the state.
        if copy.exists() {
            tracing::warn!(
                copy = %copy.display(),
                "a compaction of the state was interrupted before its copy was complete: \
                 the copy is removed, the state is as it was"
            );
        }
        remove_dir_if_there(&copy)?;
        if old.exists() && !state.exists() {
            // Not a state the swap leaves (the mark goes only after the copy took the
            // state's place), but the old database is whole: it is the state again.
            std::fs::rename(&old, state)?;
            sync_folder_of(state)?;
            tracing::warn!(
                state = %state.display(),
                "the state was found at {} without a complete compaction: moved back",
                old.display()
            );
        }
        return remove_dir_if_there(&old);
    }
    if copy.exists() {
        // Complete: the copy takes the state's place (the state moved aside first,
        // unless that happened before the crash).
        if state.exists() && old.exists() {
            return Err(std::io::Error::other(format!(
                "a compaction was interrupted and {}, {} and {} all exist; move the one you \
                 do not want out of the way and start again",
                state.display(),
                copy.display(),
                old.display()
            )));
        }
        if state.exists() {
            std::fs::rename(state, &old)?;
            sync_folder_of(state)?;
        }
        std::fs::rename(&copy, state)?;
        sync_folder_of(state)?;
        tracing::warn!(
            state = %state.display(),
            "a compaction of the state was interrupted after its copy was complete: the \
             copy is now the state"
        );
    }
    std::fs::remove_file(&done)?;
    sync_folder_of(state)?;
    remove_dir_if_there(&old)
}

impl Store {
    /// Writes every record into a new database and puts it in this one's place (see the
    /// module's text). Takes the store: the database must be closed for the swap. No
    /// other handle of it may be alive (the CLI's `state compact` holds the only one, as
    /// does a manual sync once its runs are done).
    pub fn compact(self, cache_mb: u64) -> Result<Compacted, StateError> {
        let _trimming = crate::trim::while_running();
        let started = Instant::now();
        let state = self.path.clone();
        let copy = copy_path(&state);
        let io = |source: std::io::Error| StateError::Compact {
            path: copy.clone(),
            source,
        };
        let _held = hold(&state)
            .map_err(io)?
            .ok_or_else(|| StateError::Locked {
                path: state.clone(),
            })?;
        let db_err = |e: sled::Error| io(std::io::Error::other(super::DbError(e)));
        let bytes_before = size_of(&state);
        remove_dir_if_there(&copy).map_err(io)?;
        private_dir(&copy).map_err(io)?;
        let mut out = Compacted {
            bytes_before,
            ..Compacted::default()
        };
        // Each tree to a file of its own, then the database closed before the copy is
        // written from the files: the two databases' page tables are never in memory at
        // once (after a million rewrites in place the old one's takes 35 MB more than a
        // fresh one's, and the copy's grows to 55 MB).
        let dump = dump_path(&state);
        let dumped = (|| -> Result<Vec<(sled::IVec, PathBuf, u64)>, StateError> {
            remove_dir_if_there(&dump).map_err(io)?;
            private_dir(&dump).map_err(io)?;
            let mut trees = Vec::new();
            for (i, name) in self.db.tree_names().into_iter().enumerate() {
                let meta = name == "meta";
                // Every tree is written afresh: what runs rewrote since the last repack
                // no longer counts.
                let mut keep = |k: &[u8], _: &[u8]| {
                    Ok(if meta && super::repack::counts_rewrites_in_state(k) {
                        Rewrite::Drop
                    } else {
                        Rewrite::Keep
                    })
                };
                let from = self.db.open_tree(&name)?;
                let file = dump.join(i.to_string());
                let values = write_copy(&from, &file, &mut keep, false).map_err(|e| {
                    match e.downcast::<StateError>() {
                        Ok(state) => state,
                        Err(e) => io(e),
                    }
                })?;
                trees.push((name, file, values));
                crate::failpoint::hit("compact-copying");
            }
            Ok(trees)
        })();
        // Nothing was written to the old database: closed as it is.
        drop(self);
        let copied = dumped.and_then(|trees| {
            let fresh = super::store::sled_config(&copy, cache_mb)
                .open()
                .map_err(db_err)?;
            for (name, file, values) in trees {
                let to = fresh.open_tree(&name).map_err(db_err)?;
                let mut put = |k: &[u8], v: &[u8]| {
                    to.insert(k, v).map_err(db_err)?;
                    Ok(())
                };
                if let Err(why) = read_copy(&file, values, &mut put)? {
                    let tree = String::from_utf8_lossy(&name);
                    let e = format!("the copy of tree {tree} in {} {why}", file.display());
                    return Err(io(std::io::Error::other(e)));
                }
                std::fs::remove_file(&file).map_err(io)?;
                out.records += values;
                out.trees += 1;
                crate::failpoint::hit("compact-filling");
                crate::failpoint::fail("compact-filling").map_err(io)?;
            }
            fresh.flush().map_err(db_err)?;
            Ok(())
        });
        let _ = remove_dir_if_there(&dump);
        if let Err(e) = copied {
            // A full disk, as a rule: the copy goes, the state was not touched.
            let _ = remove_dir_if_there(&copy);
            return Err(e);
        }
        // The copy is durable (sled's flush syncs its files); its folder entries too.
        std::fs::File::open(&copy)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        let done = done_marker(&state);
        private_file(&done)
            .and_then(|f| f.sync_all())
            .and_then(|()| sync_folder_of(&done))
            .map_err(io)?;
        crate::failpoint::hit("compact-copied");
        let old = old_path(&state);
        std::fs::rename(&state, &old)
            .and_then(|()| sync_folder_of(&state))
            .map_err(io)?;
        crate::failpoint::hit("compact-moved-aside");
        std::fs::rename(&copy, &state)
            .and_then(|()| sync_folder_of(&state))
            .map_err(io)?;
        crate::failpoint::hit("compact-swapped");
        remove_file_if_there(&done)
            .and_then(|()| sync_folder_of(&done))
            .and_then(|()| remove_dir_if_there(&old))
            .map_err(io)?;
        out.bytes_after = size_of(&state);
        out.seconds = started.elapsed().as_secs_f64();
        Ok(out)
    }
}
