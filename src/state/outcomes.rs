//! Per job, the dialling outcome last delivered for each contact (and its hash, so that
//! only changes go out), the outcomes of the run in progress (staged, in a scratch
//! database beside the state, until the outcome file is in place), and the webhook's
//! outbox: batches not yet accepted, kept for the next run.

use serde::{Deserialize, Serialize};

use super::{JobState, StateError};

/// One contact's dialling outcome as dialsync read it from the dialler.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub user_data: String,
    pub contact_id: i64,
    /// `DiallerCampaignsResultCodesID` (none: no result recorded yet).
    pub result_code_id: Option<i64>,
    /// The result code's `ExportKey`.
    pub export_key: Option<String>,
    /// The result code's text (`Content`).
    pub content: Option<String>,
    pub done: bool,
    pub aborted: bool,
    pub delay: bool,
    pub appointment: bool,
    /// `nTriesPhoneNumber1` to `6`, added up.
    pub tries: u32,
    /// `dtNextTry`, as the dialler writes it.
    pub next_try: Option<String>,
    /// From the history (when the job asks for it): the last call's `dtCallEnd`.
    pub last_call_end: Option<String>,
    /// From the history: calls that were connected.
    pub connected_calls: Option<u32>,
    /// From the history: the last call's `UsersID`.
    pub agent_id: Option<i64>,
    /// When dialsync saw this outcome first (RFC 3339, UTC).
    pub changed_at: String,
    /// The run that saw it first.
    pub run_id: String,
}

impl Outcome {
    /// The hash of what the dialler's listing says (the history follows from it: a call
    /// changes the tries).
    pub fn hash(&self) -> u64 {
        // Once per listed contact: fed to the hasher as it is, nothing allocated.
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&self.contact_id.to_le_bytes());
        h.update(&[u8::from(self.result_code_id.is_some())]);
        h.update(&self.result_code_id.unwrap_or(0).to_le_bytes());
        h.update(&self.tries.to_le_bytes());
        h.update(&[u8::from(self.next_try.is_some())]);
        h.update(self.next_try.as_deref().unwrap_or("").as_bytes());
        h.digest()
    }

    /// Whether the result is final: done or aborted.
    pub fn is_final(&self) -> bool {
        self.done || self.aborted
    }

    /// Whether anything happened to the contact yet.
    pub fn is_empty(&self) -> bool {
        self.result_code_id.is_none() && self.tries == 0 && self.next_try.is_none()
    }
}

/// The scratch database of a run's staged outcomes: `<state>.downloads/outcomes-<job>`.
/// In the state's own database, a million staged outcomes, removed once delivered, left
/// about 50 MB of page records that every later open of the state loaded.
const STAGING: &str = "outcomes";

fn encode(o: &Outcome) -> Vec<u8> {
    let mut v = o.hash().to_be_bytes().to_vec();
    v.extend(postcard::to_stdvec(o).expect("outcomes serialize"));
    v
}

/// The entries of `tree` after the key `after` (all without), in key order.
fn entries_after(tree: &sled::Tree, after: Option<&str>) -> sled::Iter {
    use std::ops::Bound;
    let from = after.map_or(Bound::Unbounded, |k| Bound::Excluded(k.as_bytes().to_vec()));
    tree.range::<Vec<u8>, _>((from, Bound::Unbounded))
}

fn decode(key: &[u8], v: &[u8]) -> Result<(u64, Outcome), StateError> {
    let corrupt = || StateError::Corrupt {
        key: format!("outcome {}", String::from_utf8_lossy(key)),
    };
    let (hash, rest) = v.split_first_chunk::<8>().ok_or_else(corrupt)?;
    let o = postcard::from_bytes(rest).map_err(|_| corrupt())?;
    Ok((u64::from_be_bytes(*hash), o))
}

/// An outcome as stored: its hash readable without decoding the rest.
pub(crate) struct Delivered(sled::IVec);

impl Delivered {
    pub(crate) fn hash(&self) -> Option<u64> {
        self.0.first_chunk::<8>().map(|h| u64::from_be_bytes(*h))
    }

    /// The outcome itself (`key` names it if it is damaged).
    pub(crate) fn outcome(&self, key: &str) -> Result<Outcome, StateError> {
        decode(key.as_bytes(), &self.0).map(|(_, o)| o)
    }
}

impl JobState {
    /// The outcome last delivered for `key`.
    pub(crate) fn delivered(&self, key: &str) -> Result<Option<Delivered>, StateError> {
        Ok(self.outcomes.get(key)?.map(Delivered))
    }

    /// Every delivered outcome first seen by a run after `since` (all without), in
    /// UserData order.
    pub(crate) fn for_each_outcome(
        &self,
        since: Option<&str>,
        f: &mut dyn FnMut(Outcome),
    ) -> Result<(), StateError> {
        for kv in self.outcomes.iter() {
            let (k, v) = kv?;
            let (_, o) = decode(&k, &v)?;
            if since.is_none_or(|s| o.run_id.as_str() > s) {
                f(o);
            }
        }
        Ok(())
    }

    /// Stages a changed outcome of the run in progress (the scratch database is made at
    /// the run's first).
    pub(crate) fn stage_outcome(&self, o: &Outcome) -> Result<(), StateError> {
        let db = {
            let mut staged = crate::locking::lock(&self.staged);
            match &*staged {
                Some(db) => db.clone(),
                None => staged.insert(self.scratch_db(STAGING)?).clone(),
            }
        };
        db.insert(o.user_data.as_bytes(), encode(o))?;
        Ok(())
    }

    /// Up to `n` staged outcomes after `after` (from the first without), in UserData order.
    pub(crate) fn staged_after(
        &self,
        after: Option<&str>,
        n: usize,
    ) -> Result<Vec<Outcome>, StateError> {
        let mut out = Vec::new();
        let Some(db) = crate::locking::lock(&self.staged).clone() else {
            return Ok(out);
        };
        for kv in entries_after(&db, after).take(n) {
            let (k, v) = kv?;
            out.push(decode(&k, &v)?.1);
        }
        Ok(out)
    }

    /// Forgets what an earlier run staged and did not commit (it is read again): its
    /// scratch database, and the tree in the state where earlier versions staged them.
    pub(crate) fn clear_staged(&self) -> Result<(), StateError> {
        crate::locking::lock(&self.staged).take();
        let old = format!("outstaged/{}", self.name);
        let db = &self.flusher.db;
        if db.tree_names().iter().any(|n| n == old.as_bytes()) {
            db.drop_tree(old)?;
        }
        self.remove_scratch(STAGING)
    }

    /// The staged outcomes become the delivered ones (durable at the next flush), and
    /// their scratch database is removed.
    pub(crate) fn commit_staged(&self) -> Result<(), StateError> {
        let Some(db) = crate::locking::lock(&self.staged).take() else {
            return Ok(());
        };
        for kv in db.iter() {
            let (k, v) = kv?;
            if self.outcomes.insert(k, v)?.is_some() {
                self.rewrites.add(super::repack::Worn::Outcomes);
            }
        }
        Ok(())
    }

    /// Keeps a webhook batch (its idempotency key, its body) until it is accepted.
    pub(crate) fn outbox_put(&self, id: &str, body: &[u8]) -> Result<(), StateError> {
        self.outbox.insert(id, body)?;
        Ok(())
    }

    /// The oldest batch waiting after `after` (from the first without): one at a time, so
    /// that a long outage's batches are never all in memory.
    pub(crate) fn outbox_after(
        &self,
        after: Option<&str>,
    ) -> Result<Option<(String, Vec<u8>)>, StateError> {
        let next = entries_after(&self.outbox, after).next().transpose()?;
        Ok(next.map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v.to_vec())))
    }

    /// How many batches wait (sled counts them by reading the tree: once per run).
    pub(crate) fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    pub(crate) fn outbox_remove(&self, id: &str) -> Result<(), StateError> {
        self.outbox.remove(id)?;
        Ok(())
    }
}
