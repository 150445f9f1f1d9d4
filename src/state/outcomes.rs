//! Per job, the dialling outcome last delivered for each contact (and its hash, so that
//! only changes go out), the outcomes of the run in progress (staged, in a scratch
//! database beside the state, until the outcome file is in place), and the webhook's
//! outbox: batches not yet accepted, kept for the next run.
//!
//! The delivered outcomes are kept in a database of their own, `<state>.outcomes` (one
//! tree per job), opened when a run first needs them and closed once it is done with
//! them. sled loads a record of every page of a database whenever it is opened, and a
//! million outcomes make some 80,000 pages: in the state's own database they added about
//! 30 MB to every run of every job (a no-op sync of 1M rows went from 83 to 113 MB, a
//! `state rebuild` from 130 to 163 MB), whether it read outcomes or not. Now only a run
//! that reads outcomes loads them, and only while it reads and delivers them: the
//! contacts' changes are planned and sent after the database is closed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{JobState, StateError};

/// `<state>.outcomes`: the delivered outcomes' database.
pub(crate) fn db_path(state: &Path) -> PathBuf {
    super::beside(state, "outcomes")
}

/// The tree of job `job`'s delivered outcomes (in [`db_path`]; older versions kept it,
/// under the same name, in the state's own database).
pub(super) fn tree_name(job: &str) -> String {
    format!("outcomes/{job}")
}

/// Where the state's `meta` tree notes that job `job` has delivered outcomes: a job
/// without them never opens their database (not even for its snapshot).
pub(super) fn marker(job: &str) -> String {
    format!("delivered/{job}")
}

/// The delivered outcomes' database, shared by every handle of a store: open while any
/// [`InUse`] of it lives, flushed and closed when the last one ends (see the module's
/// text). The daemon runs its jobs at once, so one job's end of use must not close it
/// under another's.
#[derive(Clone)]
pub(super) struct DeliveredDb {
    path: PathBuf,
    cache_mb: u64,
    slot: Arc<Mutex<Slot>>,
    /// The store's flush gate (see `Flusher`): the last use flushes through it.
    gate: Arc<Mutex<()>>,
}

#[derive(Default)]
struct Slot {
    db: Option<sled::Db>,
    uses: usize,
}

/// One use of the delivered outcomes' database, which stays open while it lives. Trees
/// taken from it must not outlive it.
pub(crate) struct InUse {
    db: sled::Db,
    owner: DeliveredDb,
    /// [`InUse::end`] released it already.
    ended: bool,
}

impl InUse {
    /// Job `job`'s tree.
    pub(super) fn tree(&self, job: &str) -> Result<sled::Tree, StateError> {
        Ok(self.db.open_tree(tree_name(job))?)
    }

    /// Ends the use: the last one flushes the database and closes it. What a flush
    /// failed to make durable is an error here (dropped, it is only logged).
    pub(crate) fn end(mut self) -> Result<(), StateError> {
        self.ended = true;
        self.release()
    }

    fn release(&mut self) -> Result<(), StateError> {
        let last = {
            let mut slot = crate::locking::lock(&self.owner.slot);
            slot.uses -= 1;
            if slot.uses == 0 {
                slot.db.take()
            } else {
                None
            }
        };
        // The slot is let go first: `Flusher::now` takes the gate, then the slot.
        if let Some(db) = last {
            let _one = crate::locking::lock(&self.owner.gate);
            db.flush()?;
        }
        Ok(())
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        if let Err(e) = self.release() {
            tracing::warn!(error = %e, "could not flush the delivered outcomes' database when closing it");
        }
    }
}

impl DeliveredDb {
    pub(super) fn new(state: &Path, cache_mb: u64, gate: Arc<Mutex<()>>) -> DeliveredDb {
        DeliveredDb {
            path: db_path(state),
            cache_mb,
            slot: Arc::default(),
            gate,
        }
    }

    /// A use of the database, opened now if no other use has it open.
    pub(super) fn begin(&self) -> Result<InUse, StateError> {
        let mut slot = crate::locking::lock(&self.slot);
        let db = match &slot.db {
            Some(db) => db.clone(),
            None => slot.db.insert(self.open()?).clone(),
        };
        slot.uses += 1;
        Ok(InUse {
            db,
            owner: self.clone(),
            ended: false,
        })
    }

    /// The database if a use has it open (for the store's flush).
    pub(super) fn if_open(&self) -> Option<sled::Db> {
        crate::locking::lock(&self.slot).db.clone()
    }

    /// Opens the database. One that cannot be read is moved aside and begun anew: what
    /// was delivered is then delivered again, once (delivery is at least once anyway).
    fn open(&self) -> Result<sled::Db, StateError> {
        let failed = |source: sled::Error| StateError::OutcomesOpen {
            path: self.path.clone(),
            source: source.into(),
        };
        let io = |e: std::io::Error| failed(sled::Error::Io(e));
        super::private_dir(&self.path).map_err(io)?;
        // Only this process opens it (it holds the state's database); see `open_waiting`.
        match super::store::open_waiting(&self.path, self.cache_mb) {
            Ok(db) => Ok(db),
            Err(broken) if super::is_damage(&broken) => {
                let aside = super::move_aside(&self.path).map_err(io)?;
                tracing::warn!(
                    broken = %broken,
                    moved_to = %aside.display(),
                    "the database of the delivered outcomes could not be opened: moved aside \
                     and begun anew; each job that reads outcomes delivers every contact's \
                     outcome again, once"
                );
                super::private_dir(&self.path).map_err(io)?;
                super::store::sled_config(&self.path, self.cache_mb)
                    .open()
                    .map_err(failed)
            }
            Err(source) => Err(failed(source)),
        }
    }
}

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

pub(super) fn encode(o: &Outcome) -> Vec<u8> {
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

/// A job's delivered outcomes, see [`JobState::delivered_outcomes`].
pub(crate) struct DeliveredOutcomes {
    /// Dropped before the use that keeps it open (fields drop in this order).
    tree: sled::Tree,
    _held: InUse,
}

impl DeliveredOutcomes {
    /// The outcome last delivered for `key`.
    pub(crate) fn get(&self, key: &str) -> Result<Option<Delivered>, StateError> {
        Ok(self.tree.get(key)?.map(Delivered))
    }
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
    /// The job's delivered outcomes, for one read of the campaign (`None`: it has none
    /// yet). Their database stays open while this is held.
    pub(crate) fn delivered_outcomes(&self) -> Result<Option<DeliveredOutcomes>, StateError> {
        let Some(held) = self.hold_outcomes()? else {
            return Ok(None);
        };
        Ok(Some(DeliveredOutcomes {
            tree: held.tree(&self.name)?,
            _held: held,
        }))
    }

    /// Keeps the delivered outcomes' database open while the result lives, if the job
    /// has any (`None`: nothing to keep open, and nothing is made). A run holds it from
    /// the outcomes read to their commit, so that it is opened once; when the last hold
    /// or use ends, it is closed, and what opening it took goes back before the contacts
    /// are planned.
    pub(crate) fn hold_outcomes(&self) -> Result<Option<InUse>, StateError> {
        if !self.has_delivered()? {
            return Ok(None);
        }
        self.delivered.begin().map(Some)
    }

    /// Whether the job has delivered outcomes (without opening their database).
    pub(crate) fn has_delivered(&self) -> Result<bool, StateError> {
        Ok(self.meta()?.contains_key(marker(&self.name))?)
    }

    /// Every delivered outcome first seen by a run after `since` (all without), in
    /// UserData order.
    pub(crate) fn for_each_outcome(
        &self,
        since: Option<&str>,
        f: &mut dyn FnMut(Outcome),
    ) -> Result<(), StateError> {
        let Some(held) = self.hold_outcomes()? else {
            return Ok(());
        };
        for kv in held.tree(&self.name)?.iter() {
            let (k, v) = kv?;
            let (_, o) = decode(&k, &v)?;
            if since.is_none_or(|s| o.run_id.as_str() > s) {
                f(o);
            }
        }
        held.end()
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
        if !self.has_delivered()? {
            self.meta()?.insert(marker(&self.name), &[])?;
        }
        let held = self.delivered.begin()?;
        let delivered = held.tree(&self.name)?;
        for kv in db.iter() {
            let (k, v) = kv?;
            if delivered.insert(k, v)?.is_some() {
                self.rewrites.add(super::repack::Worn::Outcomes);
            }
        }
        drop(delivered);
        // sled removes a temporary database when its last handle goes, which can be its
        // flusher thread's, a moment later: removed here, so that it is gone on return.
        drop(db);
        self.remove_scratch(STAGING)?;
        held.end()
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
