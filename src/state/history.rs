//! The run history: per job, the records of its last `[state] history_runs` finished runs
//! (the report as JSON, with its trigger), oldest first under a sequence number, and the
//! record of the last run that changed something on the dialler, kept apart so that a
//! stretch of no-op runs does not push it out.
//!
//! A record holds counts, UserData, row numbers and reasons, never a name or a number
//! (reports never hold them).

use super::{StateError, Store};

/// The prefix of each job's history tree (`history/<job>`).
const HISTORY: &str = "history/";
/// The tree of the last run of each job that changed something.
const LAST_CHANGE: &str = "last_change";

impl Store {
    /// Adds a finished run of `job` to its history and drops the oldest beyond `keep`; a
    /// record of the same run as the newest (recorded again after its flush failed)
    /// replaces it. `changed`: the run changed something on the dialler (it also becomes
    /// the job's last change).
    pub fn record_run(
        &self,
        job: &str,
        record: &[u8],
        changed: bool,
        keep: usize,
    ) -> Result<(), StateError> {
        let tree = self.db.open_tree(format!("{HISTORY}{job}"))?;
        let id = run_id(record);
        let next = match tree.last()? {
            Some((k, v)) if id.is_some() && run_id(&v) == id => seq(&k).unwrap_or(0),
            Some((k, _)) => seq(&k).map_or(0, |n| n + 1),
            None => 0,
        };
        tree.insert(next.to_be_bytes(), record)?;
        // Sequence numbers are consecutive: everything below the `keep` newest goes (no
        // count of the tree, which sled does by reading it whole).
        if let Some(first_kept) = (next + 1).checked_sub(keep.max(1) as u64) {
            for key in tree.range(..first_kept.to_be_bytes()).keys() {
                tree.remove(key?)?;
            }
        }
        if changed {
            self.db.open_tree(LAST_CHANGE)?.insert(job, record)?;
        }
        Ok(())
    }

    /// The newest `limit` runs of `job`, newest first.
    pub fn history(&self, job: &str, limit: usize) -> Result<Vec<Vec<u8>>, StateError> {
        let tree = self.db.open_tree(format!("{HISTORY}{job}"))?;
        let mut out = Vec::new();
        for kv in tree.iter().rev().take(limit) {
            out.push(kv?.1.to_vec());
        }
        Ok(out)
    }

    /// The jobs with a history, by name (jobs since removed from the config included).
    pub fn history_jobs(&self) -> Vec<String> {
        let mut jobs: Vec<String> = self
            .db
            .tree_names()
            .iter()
            .filter_map(|n| std::str::from_utf8(n).ok()?.strip_prefix(HISTORY))
            .map(str::to_string)
            .collect();
        jobs.sort();
        jobs
    }

    /// The record of run `run_id` of any job, if the history still holds it.
    pub fn find_run(&self, id: &str) -> Result<Option<Vec<u8>>, StateError> {
        for job in self.history_jobs() {
            let tree = self.db.open_tree(format!("{HISTORY}{job}"))?;
            for kv in tree.iter().rev() {
                let (_, v) = kv?;
                if run_id(&v).as_deref() == Some(id) {
                    return Ok(Some(v.to_vec()));
                }
            }
        }
        Ok(None)
    }

    /// The record of `job`'s last run that changed something on the dialler.
    pub fn last_change(&self, job: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self
            .db
            .open_tree(LAST_CHANGE)?
            .get(job)?
            .map(|v| v.to_vec()))
    }
}

/// The `run_id` of a record.
fn run_id(record: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        run_id: String,
    }
    serde_json::from_slice::<Id>(record).ok().map(|r| r.run_id)
}

fn seq(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}
