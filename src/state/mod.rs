//! The sync state: what dialsync knows of each contact it synced, per job, keyed by
//! UserData. Everything sled-specific stays in this module.
//!
//! An entry holds the dialler contact ID, a hash of each mapped field as last confirmed by
//! the dialler (never the personal data itself), the reset-trigger hashes, whether we
//! locked the contact, and what the last run did to it. Entries are written only after the
//! dialler confirmed an operation. sled makes writes durable on `flush`, which the sync
//! calls at the end of each run.
//!
//! Beside the entries, per job: the *pending* imports (the journal: an import is recorded
//! here, durably, before it is sent, and cleared once its contact ID is stored; a run
//! records a window of them as one record (`window`); after a crash the next run
//! looks each one up on the dialler before planning), and how many runs
//! in a row each failing row has failed; and the job's [`digest::Digest`] (a compact copy of the
//! entries' key and row hashes, removed before the entries change and stored again at the
//! end of the run). Per store: the row count of each job's last run that was not aborted
//! (the truncated-export guard compares against it), and the run history
//! ([`history`]).

mod compact;
pub(crate) mod digest;
mod entry;
mod error;
mod files;
pub(crate) mod hashing;
mod history;
mod job;
mod outcomes;
mod repack;
pub(crate) mod snapshot;
mod store;
#[cfg(test)]
mod tests;
mod window;

use std::collections::BTreeMap;

pub use compact::Compacted;
pub use entry::Entry;
pub(crate) use entry::{in_doubt, LastOp, Pending};
pub(crate) use error::DbError;
pub use error::StateError;
pub use files::move_aside;
pub(crate) use files::{
    digest_file, digests_path, downloads_path, key_path, private_dir, private_file, replace_durably,
};
pub(crate) use job::{Change, JobState, Scratch};
pub(crate) use outcomes::DeliveredOutcomes;
pub use outcomes::Outcome;
pub use store::Store;
pub(crate) use store::{blocking, GuardTrip, Verified};

use error::{held_elsewhere, is_damage};
use files::{
    beside, load_or_create_key, make_private, refuse_as_root, remove_dir_if_there,
    remove_file_if_there, sync_folder_of,
};
use store::Flusher;

/// Read access to one job's state: what the planner needs.
pub trait StateView {
    fn get(&self, key: &str) -> Result<Option<Entry>, StateError>;
    /// Calls `f` for every entry, in key order.
    fn for_each(&self, f: &mut dyn FnMut(&str, Entry)) -> Result<(), StateError>;
}

impl StateView for BTreeMap<String, Entry> {
    fn get(&self, key: &str) -> Result<Option<Entry>, StateError> {
        Ok(BTreeMap::get(self, key).cloned())
    }
    fn for_each(&self, f: &mut dyn FnMut(&str, Entry)) -> Result<(), StateError> {
        for (k, v) in self {
            f(k, v.clone());
        }
        Ok(())
    }
}
