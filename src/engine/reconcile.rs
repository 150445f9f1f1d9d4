//! The state resolved against the dialler: the imports a stopped or crashed run left
//! pending (before each run plans), and a whole job's state rebuilt from its campaign
//! (`dialsync state rebuild`).
//!
//! Both read contacts back from the dialler and store, per mapped field, the hash of the
//! value the dialler holds, computed as the mapping computes it from the export. So the
//! next plan sends exactly the fields in which the dialler differs from the export, and
//! nothing when they agree.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::config::JobConfig;
use crate::dialler::{record_campaign, record_id, Dialler, DiallerError, Record};
use crate::engine::execute::campaign_id;
use crate::engine::guard::Tripped;
use crate::fields::FieldValue;
use crate::fields::{self, Field};
use crate::key::{key_hash, record_key};
use crate::keymap::KeyMap;
use crate::state::hashing::HashKey;
use crate::state::{blocking, Scratch};
use crate::state::{Change, Entry, JobState, LastOp, StateError, StateView, Verified};

/// Up to this many re-learned contacts are logged each as a warning; the rest at debug
/// level, with a count.
const LOG_EACH: u64 = 20;

/// Up to this many pending imports are looked up one by one; more, with one listing of
/// the campaign.
const LOOK_UP_ONE_BY_ONE: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Dialler(#[from] DiallerError),
    #[error(transparent)]
    State(#[from] StateError),
    /// Most stored IDs are unknown to the dialler (always
    /// the guard `DiallerForgot`): acting on them could hit other contacts, and importing
    /// could fill another server.
    #[error(transparent)]
    DiallerReset(Tripped),
}

/// The hash of `field` as `record` holds it, equal to the mapping's hash (with `key`) of
/// the same value.
pub(crate) fn dialler_hash(record: &Record, field: &Field, key: &HashKey) -> u64 {
    let value = match record.get(field.name) {
        Some(Value::String(s)) if !s.trim().is_empty() => FieldValue::Text(s.trim().to_string()),
        Some(Value::Number(n)) => n.as_f64().map_or(FieldValue::Null, FieldValue::Number),
        _ => FieldValue::Null,
    };
    key.value(&value)
}

/// The campaign's contacts by UserData, each list in ID order. Older servers ignore the
/// campaign filter and list the whole tenant: other campaigns' contacts are dropped.
async fn contacts_by_key(
    dialler: &Dialler,
    campaign: i64,
) -> Result<(HashMap<String, Vec<Record>>, u64), DiallerError> {
    let mut by_key: HashMap<String, Vec<Record>> = HashMap::new();
    let mut without_key = 0;
    for r in dialler.list_contacts(Some(campaign)).await? {
        if record_campaign(&r).is_some_and(|c| c != campaign) {
            continue;
        }
        match record_key(&r) {
            Some(k) => by_key.entry(k).or_default().push(r),
            None => without_key += 1,
        }
    }
    for list in by_key.values_mut() {
        list.sort_by_key(record_id);
    }
    Ok((by_key, without_key))
}

/// What resolving the pending imports found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// Imports that reached the dialler: their contact is now in the state.
    pub found: u64,
    /// Imports that never reached it: the plan imports them again.
    pub absent: u64,
}

/// Resolves every pending import of `state` against the dialler: a contact found by
/// UserData in the campaign is stored with its ID and the hashes of what the dialler
/// holds; one not found is forgotten, so the plan imports it. Nothing is sent but reads.
pub(crate) async fn resolve_pending(
    dialler: &Dialler,
    job: &JobConfig,
    state: &JobState,
) -> Result<Resolved, ReconcileError> {
    let pending = state.pending()?;
    let mut out = Resolved::default();
    if pending.is_empty() {
        return Ok(out);
    }
    let campaign = campaign_id(dialler, &job.campaign).await?;
    let found: HashMap<String, Vec<Record>> = if pending.len() > LOOK_UP_ONE_BY_ONE {
        contacts_by_key(dialler, campaign).await?.0
    } else {
        let mut m = HashMap::new();
        for (key, _) in &pending {
            let mut list: Vec<Record> = dialler
                .contacts_by_user_data(key)
                .await?
                .into_iter()
                .filter(|r| record_campaign(r).is_none_or(|c| c == campaign))
                .collect();
            list.sort_by_key(record_id);
            m.insert(key.clone(), list);
        }
        m
    };
    let now = chrono::Utc::now().timestamp();
    for (key, p) in pending {
        // Stored already: the run stopped between storing the contact and clearing this.
        if state.get(&key)?.is_some() {
            state.clear_pending(&key)?;
            continue;
        }
        let Some((first, others)) = found.get(&key).and_then(|l| l.split_first()) else {
            state.clear_pending(&key)?;
            out.absent += 1;
            continue;
        };
        let Some(id) = record_id(first) else {
            return Err(DiallerError::Decode(format!(
                "the contact with UserData {key:?} has no ID"
            ))
            .into());
        };
        if !others.is_empty() {
            tracing::warn!(job = %job.name, user_data = %key, kept = id,
                others = ?others.iter().filter_map(record_id).collect::<Vec<_>>(),
                "several contacts share this UserData on the dialler; dialsync keeps the oldest, remove the others in the jtel portal");
        }
        let hash_key = state.hash_key();
        let entry = Entry {
            id,
            fields: p
                .fields
                .iter()
                .map(|&(code, h)| {
                    (
                        code,
                        fields::by_code(code).map_or(h, |f| dialler_hash(first, f, hash_key)),
                    )
                })
                .collect(),
            // Unkeyed (journalled by an older version): unknown, recorded afresh by the
            // next run without a reset.
            triggers: if p.keyed { p.triggers } else { Vec::new() },
            locked: false,
            last_op: LastOp::Imported,
            last_run: now,
            // The dialler's values, not the row's: the next run compares them in full.
            row: 0,
            phones: 0,
            keyed: true,
        };
        state.put(&key, &entry)?;
        state.clear_pending(&key)?;
        out.found += 1;
    }
    state.flush().await?;
    Ok(out)
}

/// What the verification's pass over the listing gathers. Per contact, only the
/// confirmed ones' key hashes are held; what is to be written (other values, another
/// ID) waits in the scratch database (see [`Found`]), so that a dialler restored from a
/// backup (a million contacts holding other values) costs no more memory than one that
/// agrees.
#[derive(Default)]
struct Gathered {
    listed: u64,
    /// Key hashes of the entries found under their stored ID (sorted once the listing
    /// is read: 8 bytes an entry, where a hash set took 19 to 28).
    confirmed: Vec<u64>,
    /// Entries found under their ID with other values (each in [`Found::differ`]).
    differ: u64,
    error: Option<StateError>,
}

/// The verification's findings that change the state, in its scratch database, keyed
/// by UserData, until the check that the dialler was not reset allows writing them.
struct Found {
    /// The scratch database (removed when this goes).
    _db: Scratch,
    /// Found under its ID with other values: the entry to store instead.
    differ: sled::Tree,
    /// Found under another ID than the stored one: the lowest such ID and the field
    /// hashes of what it holds ([`Candidate`]).
    elsewhere: sled::Tree,
    /// Not found at all: to be forgotten.
    missing: sled::Tree,
}

impl Found {
    fn new(state: &JobState) -> Result<Found, StateError> {
        let db = state.verify_scratch()?;
        let tree = |name: &str| db.open_tree(name).map_err(StateError::from);
        Ok(Found {
            differ: tree("differ")?,
            elsewhere: tree("elsewhere")?,
            missing: tree("missing")?,
            _db: db,
        })
    }

    /// Each (UserData, value) of `tree`, in key order.
    fn each(
        tree: &sled::Tree,
        mut f: impl FnMut(String, &[u8]) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        for kv in tree.iter() {
            let (k, v) = kv?;
            f(String::from_utf8_lossy(&k).into_owned(), &v)?;
        }
        Ok(())
    }
}

/// Reads the campaign's contacts back (one streamed listing, which `also` sees too) and
/// checks the state of `job` against them. An entry found under its ID is confirmed (and if the dialler holds
/// other values than the state says were sent, those fields are marked to be sent
/// again); one whose UserData is found under another ID has its ID re-learned, with its
/// lock state unknown; one not found at all is forgotten, so that the plan imports it
/// again if it is in the export. When most entries are not found under their ID, the
/// dialler was probably reset or replaced: nothing is changed and
/// [`ReconcileError::DiallerReset`] says so, unless `force`.
pub(crate) async fn verify(
    dialler: &Dialler,
    job: &JobConfig,
    state: &JobState,
    force: bool,
    also: Option<crate::outcomes::Reading>,
) -> Result<Verified, ReconcileError> {
    // The digest read ahead for the plan describes the entries as they were: not kept
    // through the listing (17 MB for a million contacts), which may change them.
    state.forget_read_ahead();
    let campaign = campaign_id(dialler, &job.campaign).await?;
    let found = Found::new(state)?;
    let gathered = Arc::new(Mutex::new(Gathered::default()));
    let each = {
        let gathered = Arc::clone(&gathered);
        let state = state.clone();
        let (differ, elsewhere) = (found.differ.clone(), found.elsewhere.clone());
        move |r: Record| {
            if let Some(also) = &also {
                also.feed(&r);
            }
            if record_campaign(&r).is_some_and(|c| c != campaign) {
                return;
            }
            let mut g = crate::locking::lock(&gathered);
            g.listed += 1;
            let (Some(id), Some(key)) = (record_id(&r), record_key(&r)) else {
                return;
            };
            let hash_key = state.hash_key();
            let held = |fields: &[(u8, u64)]| -> Vec<(u8, u64)> {
                fields
                    .iter()
                    .map(|&(code, h)| {
                        let now =
                            fields::by_code(code).map_or(h, |f| dialler_hash(&r, f, hash_key));
                        (code, now)
                    })
                    .collect()
            };
            let seen: Result<(), StateError> = match state.get(&key) {
                Ok(Some(e)) if e.id == id => {
                    g.confirmed.push(key_hash(&key));
                    let now = held(&e.fields);
                    // Unkeyed hashes (an older state) cannot be compared here.
                    if e.keyed && now != e.fields {
                        let fixed = Entry {
                            fields: now,
                            row: 0,
                            phones: 0,
                            ..e
                        };
                        g.differ += 1;
                        differ.insert(key.as_bytes(), fixed.encode()).map(drop)
                    } else {
                        Ok(())
                    }
                    .map_err(StateError::from)
                }
                Ok(Some(e)) => Candidate::keep_lowest(&elsewhere, &key, id, &held(&e.fields))
                    .map_err(StateError::from),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = seen {
                g.error.get_or_insert(e);
            }
        }
    };
    drop(dialler.stream_contacts(campaign, each).await?);
    let mut g = std::mem::take(&mut *crate::locking::lock(&gathered));
    if let Some(e) = g.error.take() {
        return Err(e.into());
    }
    // The rest reads and writes only the state, a million entries in tens of seconds:
    // on a thread for blocking work, not on one of the runtime's (in the daemon, other
    // jobs' runs and the status socket share those).
    let (s, name) = (state.clone(), job.name.clone());
    let out = blocking(move || Ok(settle(&s, &name, force, found, g))).await??;
    state.flush().await?;
    Ok(out)
}

/// The verification's findings once the listing is read whole (`g`, staged in `found`):
/// every entry checked, the dialler-reset guard, then the state changed (rewritten afresh
/// when most entries change). Blocking: the state's I/O.
fn settle(
    state: &JobState,
    job: &str,
    force: bool,
    found: Found,
    mut g: Gathered,
) -> Result<Verified, ReconcileError> {
    let mut out = Verified {
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        listed: g.listed,
        values_differ: g.differ,
        ..Verified::default()
    };
    g.confirmed.sort_unstable();
    let mut failed: Option<StateError> = None;
    state.for_each(&mut |key, _| {
        out.checked += 1;
        if failed.is_some() {
            return;
        }
        if g.confirmed.binary_search(&key_hash(key)).is_ok() {
            out.confirmed += 1;
            return;
        }
        let staged = match found.elsewhere.contains_key(key.as_bytes()) {
            Ok(true) => {
                out.relearned += 1;
                Ok(())
            }
            Ok(false) => {
                out.missing += 1;
                found.missing.insert(key.as_bytes(), &[]).map(drop)
            }
            Err(e) => Err(e),
        };
        failed = staged.err().map(StateError::from);
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    let unknown = out.checked - out.confirmed;
    if unknown * 2 > out.checked && !force {
        return Err(ReconcileError::DiallerReset(Tripped::DiallerForgot {
            job: job.to_string(),
            confirmed: out.confirmed,
            checked: out.checked,
        }));
    }
    let mut log = Relearning { job, n: 0 };
    let changes = out.relearned + out.missing + g.differ;
    if changes >= REWRITE_FROM && changes.saturating_mul(2) >= out.checked {
        // Most entries change (a dialler restored under new IDs): written afresh, not
        // each in place (see `JobState::rewrite_entries`).
        rewrite(state, &found, &g.confirmed, &mut log)?;
        Found::each(&found.missing, |key, _| state.clear_in_flight(&key))?;
    } else {
        // The entries found under another ID (and not also under their own), in key
        // order.
        Found::each(&found.elsewhere, |key, v| {
            if g.confirmed.binary_search(&key_hash(&key)).is_ok() {
                return Ok(());
            }
            let Some(e) = state.get(&key)? else {
                return Err(StateError::Corrupt { key });
            };
            let now = relearned(&key, e, v)?;
            state.put(&key, &now)?;
            log.one(&key, now.id);
            Ok(())
        })?;
        Found::each(&found.missing, |key, _| {
            state.remove(&key)?;
            state.clear_in_flight(&key)
        })?;
        Found::each(&found.differ, |key, v| match Entry::decode(v) {
            Some(entry) => state.put(&key, &entry),
            None => Err(StateError::Corrupt { key }),
        })?;
    }
    log.close();
    drop(found);
    Ok(out)
}

/// From this many changes to the entries, and half of them, a verification writes the
/// entries afresh instead of each change in place (the repack's floor: fewer page records
/// cost little).
const REWRITE_FROM: u64 = 1000;

/// The entry of `key` (`e` now) under the ID found for it elsewhere: `candidate`, the
/// lowest such ID and the field hashes of what it holds ([`Candidate`]).
fn relearned(key: &str, e: Entry, candidate: &[u8]) -> Result<Entry, StateError> {
    let Some((id, fields)) = Candidate::decode(candidate) else {
        return Err(StateError::Corrupt { key: key.into() });
    };
    Ok(Entry {
        id,
        fields,
        row: 0,
        phones: 0,
        locked: false,
        // Whether the contact under its new ID is locked, nobody knows: the next run
        // unlocks or locks it (see `LastOp::Rebuilt`).
        last_op: LastOp::Rebuilt,
        ..e
    })
}

/// Each contact re-learned is logged; after the first few (a dialler restored under new
/// IDs re-learns every contact), at debug level, and a count closes the list.
struct Relearning<'a> {
    job: &'a str,
    n: u64,
}

impl Relearning<'_> {
    fn one(&mut self, key: &str, id: i64) {
        self.n += 1;
        if self.n <= LOG_EACH {
            tracing::warn!(job = %self.job, user_data = %key, id, "the contact is on the dialler under another ID: re-learned");
        } else {
            tracing::debug!(job = %self.job, user_data = %key, id, "the contact is on the dialler under another ID: re-learned");
        }
    }

    fn close(&self) {
        if self.n > LOG_EACH {
            tracing::warn!(job = %self.job, more = self.n - LOG_EACH, "more contacts are on the dialler under another ID and were re-learned (each one at debug level)");
        }
    }
}

/// The verification's findings written by rewriting the entries: each entry as the
/// scratch trees say, read in key order beside them.
fn rewrite(
    state: &JobState,
    found: &Found,
    confirmed: &[u64],
    log: &mut Relearning<'_>,
) -> Result<(), StateError> {
    let mut differ = Cursor::new(&found.differ);
    let mut elsewhere = Cursor::new(&found.elsewhere);
    let mut missing = Cursor::new(&found.missing);
    state.rewrite_entries(&mut |key, e| {
        let (differs, moved, gone) = (differ.take(key)?, elsewhere.take(key)?, missing.take(key)?);
        if let Some(v) = differs {
            return match Entry::decode(&v) {
                Some(now) => Ok(Change::Put(now)),
                None => Err(StateError::Corrupt { key: key.into() }),
            };
        }
        if let Some(v) = moved.filter(|_| confirmed.binary_search(&key_hash(key)).is_err()) {
            let now = relearned(key, e, &v)?;
            log.one(key, now.id);
            return Ok(Change::Put(now));
        }
        Ok(if gone.is_some() {
            Change::Remove
        } else {
            Change::Keep
        })
    })?;
    Ok(())
}

/// A scratch tree read in key order beside the entries.
struct Cursor {
    iter: sled::Iter,
    head: Option<(sled::IVec, sled::IVec)>,
}

impl Cursor {
    fn new(tree: &sled::Tree) -> Cursor {
        Cursor {
            iter: tree.iter(),
            head: None,
        }
    }

    /// The value of `key` if the tree holds it. The keys asked for must ascend.
    fn take(&mut self, key: &str) -> Result<Option<sled::IVec>, StateError> {
        loop {
            let (k, _) = match &self.head {
                Some(head) => head,
                None => match self.iter.next() {
                    Some(kv) => self.head.insert(kv?),
                    None => return Ok(None),
                },
            };
            match k.as_ref().cmp(key.as_bytes()) {
                // A key the entries do not hold (none: each was staged from one).
                std::cmp::Ordering::Less => self.head = None,
                std::cmp::Ordering::Equal => return Ok(self.head.take().map(|(_, v)| v)),
                std::cmp::Ordering::Greater => return Ok(None),
            }
        }
    }
}

/// What `state rebuild` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    pub campaign: i64,
    /// Contacts now in the state.
    pub contacts: u64,
    /// Contacts of the campaign without UserData (not dialsync's; left out).
    pub without_user_data: u64,
    /// UserData values held by several contacts: (UserData, IDs), the first kept.
    pub shared: Vec<(String, Vec<i64>)>,
    /// Contacts the old state said dialsync had locked, kept as locked.
    pub locked_kept: u64,
    /// Contacts whose lock state is unknown: the next run unlocks or locks each one.
    pub lock_unknown: u64,
}

/// Replaces the state of `job` with the contacts of its campaign on the dialler: ID and
/// field hashes by UserData. The dialler does not say which contacts are locked; a lock
/// recorded in the old state for the same contact ID is kept, and every other contact's
/// lock state is marked unknown in its entry (`LastOp::Rebuilt`, planned as if a lock or
/// unlock had been in flight), so the next run unlocks it if it is in the export and locks
/// it if not (under `on_missing = "keep"` it stays in doubt until it comes back, then is
/// unlocked). Reset triggers start
/// afresh (their first value is recorded by the next run, without a reset).
///
/// The campaign is streamed (never held in memory): each contact's ID and field hashes go
/// to the job's scratch tree as they arrive (the lowest ID of a UserData stands), and the
/// state is replaced from there once the listing has been read whole; a listing that
/// breaks off leaves the state as it was.
pub async fn rebuild(
    dialler: &Dialler,
    job: &JobConfig,
    state: &JobState,
) -> Result<Rebuilt, ReconcileError> {
    let _trimming = crate::trim::while_running();
    let campaign = campaign_id(dialler, &job.campaign).await?;
    let scratch_db = state.scratch()?;
    let scratch: sled::Tree = sled::Tree::clone(&scratch_db);
    let fields: Vec<&'static Field> = job.fields.iter().map(|(f, _)| *f).collect();
    let gathered = Arc::new(Mutex::new(Listed::default()));
    {
        let (scratch, hash_key) = (scratch.clone(), Arc::clone(state.hash_key()));
        let g = Arc::clone(&gathered);
        let each = move |r: Record| {
            crate::locking::lock(&g).see(&r, campaign, &fields, &hash_key, &scratch);
        };
        drop(dialler.stream_contacts(campaign, each).await?);
    }
    let gathered = std::mem::take(&mut *crate::locking::lock(&gathered));
    let Listed {
        without_key: without_user_data,
        mut shared,
        error,
    } = gathered;
    if let Some(e) = error {
        return Err(StateError::from(e).into());
    }
    // The state replaced from the scratch tree, a million writes for a campaign of a
    // million contacts: on a thread for blocking work, not on the runtime's.
    let mut out = Rebuilt {
        campaign,
        without_user_data,
        ..Rebuilt::default()
    };
    let s = state.clone();
    let out = blocking(move || {
        replace_entries(&s, &scratch, &mut shared, &mut out)?;
        drop((scratch, scratch_db));
        Ok(out)
    })
    .await?;
    state.save_digest().await?;
    state.flush().await?;
    Ok(out)
}

/// The rebuild's last step: job `state`'s entries replaced with the contacts in the
/// `scratch` tree, in key order (a lock the old state recorded for the same contact ID
/// kept), counted in `out`; `shared` gives the IDs of each UserData found more than once.
fn replace_entries(
    state: &JobState,
    scratch: &sled::Tree,
    shared: &mut HashMap<String, Vec<i64>>,
    out: &mut Rebuilt,
) -> Result<(), StateError> {
    let mut locked: KeyMap<i64> = KeyMap::default();
    // An unreadable old state is what a rebuild is for: its lock flags are lost.
    let _ = state.for_each(&mut |key, e| {
        if e.locked {
            locked.insert(key, e.id);
        }
    });
    state.clear()?;
    let now = chrono::Utc::now().timestamp();
    // In key order, as the scratch tree keeps them.
    for kv in scratch.iter() {
        let (k, v) = kv.map_err(StateError::from)?;
        let key = String::from_utf8_lossy(&k).into_owned();
        let Some((id, fields)) = Candidate::decode(&v) else {
            return Err(StateError::Corrupt { key });
        };
        if let Some(mut ids) = shared.remove(&key) {
            ids.sort_unstable();
            out.shared.push((key.clone(), ids));
        }
        let was_locked = locked.get(&key) == Some(id);
        out.locked_kept += u64::from(was_locked);
        let entry = Entry {
            id,
            fields,
            triggers: Vec::new(),
            locked: was_locked,
            // Unless kept as locked, its lock state is unknown (see `LastOp::Rebuilt`).
            last_op: if was_locked {
                LastOp::Baseline
            } else {
                LastOp::Rebuilt
            },
            last_run: now,
            row: 0,
            phones: 0,
            keyed: true,
        };
        state.put(&key, &entry)?;
        out.lock_unknown += u64::from(!was_locked);
        out.contacts += 1;
    }
    Ok(())
}

/// What a rebuild gathered while the campaign was listed (the contacts themselves are in
/// the scratch tree).
#[derive(Default)]
struct Listed {
    without_key: u64,
    /// UserData values held by several contacts: every ID seen with each.
    shared: HashMap<String, Vec<i64>>,
    error: Option<sled::Error>,
}

/// A contact found for a UserData: its ID and the hashes of what it holds.
struct Candidate;

impl Candidate {
    fn encode(id: i64, fields: &[(u8, u64)]) -> Vec<u8> {
        let mut out = id.to_le_bytes().to_vec();
        for (code, h) in fields {
            out.push(*code);
            out.extend_from_slice(&h.to_le_bytes());
        }
        out
    }

    /// Stores (`id`, `fields`) as the candidate for `key` in `tree`, unless one with a
    /// lower ID is there: the lowest ID found for a UserData stands.
    fn keep_lowest(
        tree: &sled::Tree,
        key: &str,
        id: i64,
        fields: &[(u8, u64)],
    ) -> Result<(), sled::Error> {
        if let Some(v) = tree.get(key)? {
            if Candidate::decode(&v).is_some_and(|(other, _)| other < id) {
                return Ok(());
            }
        }
        tree.insert(key, Candidate::encode(id, fields)).map(drop)
    }

    fn decode(bytes: &[u8]) -> Option<(i64, Vec<(u8, u64)>)> {
        let (id, mut rest) = bytes.split_first_chunk::<8>()?;
        let mut fields = Vec::new();
        while let Some((&code, more)) = rest.split_first() {
            let (h, more) = more.split_first_chunk::<8>()?;
            fields.push((code, u64::from_le_bytes(*h)));
            rest = more;
        }
        Some((i64::from_le_bytes(*id), fields))
    }
}

impl Listed {
    /// One listed record: kept in `scratch` unless a contact with the same UserData and a
    /// lower ID is there already. Older servers list the whole tenant: other campaigns'
    /// contacts are left out.
    fn see(
        &mut self,
        r: &Record,
        campaign: i64,
        fields: &[&'static Field],
        key: &HashKey,
        scratch: &sled::Tree,
    ) {
        if self.error.is_some() || record_campaign(r).is_some_and(|c| c != campaign) {
            return;
        }
        let Some(user_data) = record_key(r) else {
            self.without_key += 1;
            return;
        };
        let Some(id) = record_id(r) else { return };
        let found = match scratch.get(&user_data) {
            Ok(found) => found.and_then(|v| Candidate::decode(&v)),
            Err(e) => {
                self.error = Some(e);
                return;
            }
        };
        if let Some((other, _)) = found {
            let ids = self
                .shared
                .entry(user_data.clone())
                .or_insert_with(|| vec![other]);
            ids.push(id);
            if other < id {
                return;
            }
        }
        let hashes: Vec<(u8, u64)> = fields
            .iter()
            .map(|f| (f.code, dialler_hash(r, f, key)))
            .collect();
        if let Err(e) = scratch.insert(user_data.as_bytes(), Candidate::encode(id, &hashes)) {
            self.error = Some(e);
        }
    }
}

impl Rebuilt {
    /// A rebuild reads the whole campaign: it is a verification too (the state now holds
    /// exactly what the dialler has), so the next run need not read it again.
    pub fn as_verified(&self) -> Verified {
        Verified {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            listed: self.contacts + self.without_user_data,
            checked: self.contacts,
            confirmed: self.contacts,
            ..Verified::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A verification lets go of the digest read ahead for the plan (17 MB for a million
    /// contacts): it does not plan from it, its listing takes tens of seconds, and the
    /// entries it changes make the bytes stale anyway.
    #[tokio::test]
    async fn a_verification_lets_go_of_the_digest_read_ahead() {
        use crate::state::{Entry, Store};
        let emu = crate::emulator::Emulator::new(crate::emulator::EmulatorConfig::default());
        let addr = emu.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let text = format!(
            "[dialler]\nbase_url = \"http://{addr}/rest/v1.0\"\nclient_id = 7\n\
             token = \"emulator-token\"\n\
             [[job]]\nname = \"j\"\ncampaign_id = 538\n[job.source]\ntype = \"csv\"\n\
             path = \"x\"\n[job.fields]\nUserData = \"a\"\nName = \"b\"\nPhoneNumber1 = \"c\"\n"
        );
        let cfg = crate::config::Config::from_str(&text, std::path::Path::new("t.toml")).unwrap();
        let dialler = Dialler::new(&cfg.dialler, &cfg.dialler.token.resolve().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        {
            let store = Store::open(&path).unwrap();
            let job = store.job("j").unwrap();
            let entry = Entry {
                id: 1,
                fields: Vec::new(),
                triggers: Vec::new(),
                locked: false,
                last_op: LastOp::Baseline,
                last_run: 0,
                row: 1,
                phones: 0,
                keyed: true,
            };
            job.put("K1", &entry).unwrap();
            job.save_digest().await.unwrap();
        }
        let ahead = Store::read_digest_ahead(&path, "j");
        assert!(ahead.is_some());
        let store = Store::open(&path).unwrap().with_digest_read_ahead(ahead);
        let state = store.job("j").unwrap();
        assert!(state.holds_read_ahead());
        // The dialler holds none of the state's contacts: forced, K1 is forgotten.
        let v = verify(&dialler, &cfg.jobs[0], &state, true, None)
            .await
            .unwrap();
        assert_eq!(v.missing, 1);
        assert!(!state.holds_read_ahead());
    }

    /// A verification's contact found under other IDs: the lowest ID stands, with what
    /// it holds, whatever order the listing gives them in.
    #[test]
    fn a_verification_keeps_the_lowest_id_found_elsewhere() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let elsewhere = db.open_tree("elsewhere").unwrap();
        for id in [7, 5, 9] {
            Candidate::keep_lowest(&elsewhere, "K1", id, &[(1, id as u64)]).unwrap();
        }
        let v = elsewhere.get("K1").unwrap().unwrap();
        assert_eq!(Candidate::decode(&v), Some((5, vec![(1, 5)])));
    }

    /// A rebuild's listing: the lowest ID of a UserData stands, every ID of a shared
    /// one is named, other campaigns' contacts and those without UserData stay out.
    #[test]
    fn a_listed_campaign_keeps_the_lowest_id_of_each_user_data() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let scratch = db.open_tree("scratch").unwrap();
        let key = HashKey::for_tests();
        let name = fields::by_name("Name").unwrap();
        let record = |id: i64, user_data: Option<&str>, campaign: i64, n: &str| {
            let mut r = Record::new();
            r.insert("ID".into(), Value::from(id));
            r.insert("DiallerCampaignsID".into(), Value::from(campaign));
            if let Some(u) = user_data {
                r.insert("UserData".into(), Value::from(u));
            }
            r.insert("Name".into(), Value::from(n));
            r
        };
        let mut g = Listed::default();
        for r in [
            record(5, Some("A"), 538, "five"),
            record(3, Some("A"), 538, "three"),
            record(7, Some("A"), 538, "seven"),
            record(4, Some("B"), 538, "b"),
            record(1, Some("C"), 999, "elsewhere"),
            record(2, None, 538, "no key"),
        ] {
            g.see(&r, 538, &[name], &key, &scratch);
        }
        assert!(g.error.is_none());
        assert_eq!(g.without_key, 1);
        let mut ids = g.shared.remove("A").unwrap();
        ids.sort_unstable();
        assert_eq!(ids, [3, 5, 7]);
        assert!(g.shared.is_empty());
        type Kept = (String, i64, Vec<(u8, u64)>);
        let got: Vec<Kept> = scratch
            .iter()
            .map(|kv| {
                let (k, v) = kv.unwrap();
                let (id, f) = Candidate::decode(&v).unwrap();
                (String::from_utf8(k.to_vec()).unwrap(), id, f)
            })
            .collect();
        let hash = |n: &str| vec![(name.code, key.value(&FieldValue::Text(n.into())))];
        assert_eq!(
            got,
            [
                ("A".to_string(), 3, hash("three")),
                ("B".to_string(), 4, hash("b")),
            ]
        );
    }

    #[test]
    fn dialler_values_hash_as_the_mapping_hashes_them() {
        let key = HashKey::for_tests();
        let name = fields::by_name("Name").unwrap();
        let amount = fields::by_name("Amount").unwrap();
        let mut r = Record::new();
        r.insert("Name".into(), Value::from("Müller"));
        r.insert("Amount".into(), serde_json::json!(12.5));
        assert_eq!(
            dialler_hash(&r, name, &key),
            key.value(&FieldValue::Text("Müller".into()))
        );
        assert_eq!(
            dialler_hash(&r, amount, &key),
            key.value(&FieldValue::Number(12.5))
        );
        r.insert("Name".into(), Value::from(""));
        assert_eq!(dialler_hash(&r, name, &key), key.value(&FieldValue::Null));
        r.remove("Name");
        assert_eq!(dialler_hash(&r, name, &key), key.value(&FieldValue::Null));
    }
}
