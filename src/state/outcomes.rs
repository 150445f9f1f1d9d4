//! Per job, the dialling outcome last delivered for each contact (and its hash, so that
//! only changes go out), the outcomes of the run in progress (staged until the outcome
//! file is in place), and the webhook's outbox: batches not yet accepted, kept for the
//! next run.

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
        let listed = (
            self.contact_id,
            self.result_code_id,
            self.tries,
            self.next_try.as_deref(),
        );
        xxhash_rust::xxh3::xxh3_64(&postcard::to_stdvec(&listed).expect("tuples serialize"))
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

fn encode(o: &Outcome) -> Vec<u8> {
    let mut v = o.hash().to_be_bytes().to_vec();
    v.extend(postcard::to_stdvec(o).expect("outcomes serialize"));
    v
}

fn decode(key: &[u8], v: &[u8]) -> Result<(u64, Outcome), StateError> {
    let corrupt = || StateError::Corrupt {
        key: format!("outcome {}", String::from_utf8_lossy(key)),
    };
    let (hash, rest) = v.split_first_chunk::<8>().ok_or_else(corrupt)?;
    let o = postcard::from_bytes(rest).map_err(|_| corrupt())?;
    Ok((u64::from_be_bytes(*hash), o))
}

impl JobState {
    /// The hash of the outcome last delivered for `key`.
    pub(crate) fn outcome_hash(&self, key: &str) -> Result<Option<u64>, StateError> {
        Ok(self
            .outcomes
            .get(key)?
            .and_then(|v| v.first_chunk::<8>().map(|h| u64::from_be_bytes(*h))))
    }

    /// The outcome last delivered for `key`.
    pub(crate) fn outcome(&self, key: &str) -> Result<Option<Outcome>, StateError> {
        self.outcomes
            .get(key)?
            .map(|v| decode(key.as_bytes(), &v).map(|(_, o)| o))
            .transpose()
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

    /// Stages a changed outcome of the run in progress.
    pub(crate) fn stage_outcome(&self, o: &Outcome) -> Result<(), StateError> {
        self.staged.insert(o.user_data.as_bytes(), encode(o))?;
        Ok(())
    }

    /// Up to `n` staged outcomes after `after` (from the first without), in UserData order.
    pub(crate) fn staged_after(
        &self,
        after: Option<&str>,
        n: usize,
    ) -> Result<Vec<Outcome>, StateError> {
        use std::ops::Bound;
        let from = match after {
            Some(k) => Bound::Excluded(k.as_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for kv in self
            .staged
            .range::<Vec<u8>, _>((from, Bound::Unbounded))
            .take(n)
        {
            let (k, v) = kv?;
            out.push(decode(&k, &v)?.1);
        }
        Ok(out)
    }

    /// Forgets what an earlier run staged and did not commit (it is read again).
    pub(crate) fn clear_staged(&self) -> Result<(), StateError> {
        self.staged.clear()?;
        Ok(())
    }

    /// The staged outcomes become the delivered ones (durable at the next flush).
    pub(crate) fn commit_staged(&self) -> Result<u64, StateError> {
        let mut n = 0;
        for kv in self.staged.iter() {
            let (k, v) = kv?;
            self.outcomes.insert(k, v)?;
            n += 1;
        }
        self.staged.clear()?;
        Ok(n)
    }

    /// Keeps a webhook batch (its idempotency key, its body) until it is accepted.
    pub(crate) fn outbox_put(&self, id: &str, body: &[u8]) -> Result<(), StateError> {
        self.outbox.insert(id, body)?;
        Ok(())
    }

    /// The batches waiting, oldest first.
    pub(crate) fn outbox(&self) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let mut out = Vec::new();
        for kv in self.outbox.iter() {
            let (k, v) = kv?;
            out.push((String::from_utf8_lossy(&k).into_owned(), v.to_vec()));
        }
        Ok(out)
    }

    /// How many batches wait.
    pub(crate) fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    pub(crate) fn outbox_remove(&self, id: &str) -> Result<(), StateError> {
        self.outbox.remove(id)?;
        Ok(())
    }
}
