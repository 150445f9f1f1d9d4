//! The planner: from the export's rows, the stored state and the job's policy to the list
//! of dialler operations that makes the campaign match the export. No I/O beyond reading
//! the state view; this is where the sync semantics live.
//!
//! The rules (the behaviour contract in the README):
//! - a new UserData is imported;
//! - a known one whose mapped fields changed is updated with only the changed fields;
//! - a known one whose reset-trigger column changed is reset (a trigger added to the config
//!   records its first value and fires on the next change);
//! - a contact we locked that is back in the export is unlocked;
//! - a stored contact missing from the export is locked, deleted or kept per `on_missing`;
//! - a rejected row with a readable UserData keeps its contact from counting as missing;
//!   a row that could not be read at all, or one without a usable UserData, withholds
//!   every removal of the run, since it might be any contact (and the export's raw text is
//!   searched for the key of each removal still planned: see `evidence`);
//! - a UserData seen twice: the first row wins, later ones are rejected;
//! - anything else is unchanged and costs no call.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::OnMissing;
use crate::engine::mapping::{Contact, Known, Outcome, Rejected};
use crate::engine::pipeline::PlanError;
use crate::engine::report::LIST_LIMIT;
use crate::fields::Field;
use crate::fields::FieldValue;
use crate::key::key_hash;
use crate::source::RowRef;
use crate::state::digest::{Digest, Probe};
use crate::state::hashing;
use crate::state::{in_doubt, Entry, LastOp, StateView};

pub(crate) mod spool;

use crate::keymap::{At, KeyMap};
pub(crate) use spool::{Spool, SpoolError};

/// The job settings the planner needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub on_missing: OnMissing,
}

/// Changes to a contact the dialler already has, applied in this order: update, reset,
/// unlock (so the dialler never dials a contact before its data and counters are right).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Change {
    pub at: RowRef,
    pub key: String,
    pub old: Entry,
    /// The changed fields only; `Null` clears a field.
    pub update: Vec<(&'static Field, FieldValue)>,
    /// Every mapped field (to import the contact again should it be gone).
    pub values: Vec<(&'static Field, FieldValue)>,
    pub reset: bool,
    pub unlock: bool,
    /// The field and trigger hashes to store once the change is confirmed.
    pub fields: Vec<(u8, u64)>,
    pub triggers: Vec<(String, u64)>,
    /// The row hash to store once every part of the change is confirmed.
    pub row: u64,
    /// The phones hash to store with the field hashes ([`Entry::phones`]).
    pub phones: u64,
    /// The phone numbers not normalised (see [`Contact::kept`]): not in `values`, which
    /// [`crate::engine::mapping::with_kept`] completes should the contact be imported
    /// again.
    pub kept: Vec<(&'static Field, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RemovalKind {
    Lock,
    Delete,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Removal {
    pub key: String,
    pub old: Entry,
    pub kind: RemovalKind,
}

/// The plan of one run. Its operations are in [`Spool`]s, read back a window at a time
/// when sent, so that no run holds its whole plan in memory; their counts are here.
#[derive(Debug, Default)]
#[cfg_attr(test, derive(PartialEq))]
pub(crate) struct Plan {
    pub imports: Spool<Contact>,
    pub changes: Spool<Change>,
    pub removals: Spool<Removal>,
    /// State-only refreshes (no call): hashes recorded for a newly mapped field or trigger.
    pub baselines: Spool<(String, Entry)>,
    /// Of the changes, those with an update, a reset, an unlock; of the removals, the
    /// deletes (the others are locks).
    pub counts: Counts,
    /// Rows whose contact is as the export says: no call.
    pub unchanged: u64,
    /// Of the unchanged rows, those settled by their hash (see [`Planner::unchanged`]).
    pub unchanged_by_hash: u64,
    /// The first [`LIST_LIMIT`] rejected rows (the report lists no more).
    pub rejected: Vec<Rejected>,
    /// Rejected rows, all of them.
    pub rejects: u64,
    /// Of the rejected rows, those whose UserData an earlier row had.
    pub duplicates: u64,
    /// Contacts absent from the export that stay as they are: locked already, or kept
    /// (`on_missing = "keep"`). Not rows.
    pub absent_kept: u64,
    /// The first [`LIST_LIMIT`] rows synced with warnings (a value left out or changed on
    /// the way).
    pub warnings: Vec<RowWarning>,
    /// Rows synced with warnings, all of them.
    pub warned: u64,
    /// Removals not planned for lack of evidence that their contact left the export.
    pub withheld_removals: u64,
    /// Why they were held back.
    pub doubts: Doubts,
    /// Contacts whose last operation was in flight when an earlier run stopped: planned
    /// from what the export says, not from the state.
    pub rechecked: u64,
    /// In-flight marks that need no call (the contact is kept, or has no entry): to clear.
    pub settled: Vec<String>,
    /// Rows read (valid and rejected): `imports + changes + unchanged + rejected`.
    pub rows: u64,
    /// Besides those, blank lines and rows of empty fields: skipped, never doubted.
    pub blank: u64,
    /// What the reader skipped that an operator should know of (a report footer).
    pub notes: Vec<String>,
    /// Contacts in the state before the run.
    pub known: u64,
    /// `on_done = "lock"`: final contacts to lock, unless a change or removal of this run
    /// is planned for them (see [`Planner::on_done`]); moved to `removals` by
    /// [`Plan::lock_done`].
    done: HashMap<String, Entry>,
    /// Of the removals, those [`Plan::lock_done`] added.
    pub done_locks: u64,
}

/// How many of each call a plan's changes and removals make.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub updates: u64,
    pub resets: u64,
    pub unlocks: u64,
    pub deletes: u64,
}

impl Counts {
    pub(crate) fn add_change(&mut self, c: &Change) {
        self.updates += u64::from(!c.update.is_empty());
        self.resets += u64::from(c.reset);
        self.unlocks += u64::from(c.unlock);
    }
}

/// A row that is synced, with what the operator should know about it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RowWarning {
    pub at: RowRef,
    #[serde(rename = "key")]
    pub user_data: String,
    pub warning: String,
}

/// What kept removals back: a removal needs positive evidence that its record is gone
/// from the CRM export, and each of these is doubt.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Doubts {
    /// Rows that could not be read as records (broken quoting, a wrong field count, bad
    /// encoding): any of them could be any contact, so no removal is planned.
    pub unreadable_rows: u64,
    /// Rows read without a usable UserData (empty, `null`, control characters): likewise.
    pub rows_without_key: u64,
    /// Contacts to remove whose UserData still stands in the export's text as a whole
    /// value, though no row had it as its key (the first few, with the line).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys_in_export: Vec<KeyInExport>,
}

/// A UserData found in the export's text (see `evidence`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyInExport {
    pub user_data: String,
    /// The line of the file (1-based) where it stands.
    pub line: u64,
}

impl Doubts {
    /// Whether every removal of the run is withheld.
    pub fn withhold_all(&self) -> bool {
        self.unreadable_rows > 0 || self.rows_without_key > 0
    }

    pub fn is_empty(&self) -> bool {
        !self.withhold_all() && self.keys_in_export.is_empty()
    }
}

impl Plan {
    /// A plan whose spools' files go into `dir`.
    fn in_dir(dir: Arc<Path>) -> Plan {
        Plan {
            imports: Spool::new(Arc::clone(&dir)),
            changes: Spool::new(Arc::clone(&dir)),
            removals: Spool::new(Arc::clone(&dir)),
            baselines: Spool::new(dir),
            ..Plan::default()
        }
    }

    pub(crate) fn updates(&self) -> usize {
        self.counts.updates as usize
    }
    pub(crate) fn resets(&self) -> usize {
        self.counts.resets as usize
    }
    pub(crate) fn unlocks(&self) -> usize {
        self.counts.unlocks as usize
    }
    pub(crate) fn removals(&self, kind: RemovalKind) -> usize {
        let deletes = self.counts.deletes as usize;
        match kind {
            RemovalKind::Delete => deletes,
            RemovalKind::Lock => self.removals.len() - deletes,
        }
    }
    /// The API calls the plan needs.
    pub(crate) fn calls(&self) -> usize {
        self.imports.len() + self.updates() + self.resets() + self.unlocks() + self.removals.len()
    }

    /// Adds the removal `r`.
    pub(crate) fn remove(&mut self, r: &Removal) -> Result<(), SpoolError> {
        self.removals.push(r)?;
        self.counts.deletes += u64::from(r.kind == RemovalKind::Delete);
        Ok(())
    }

    /// `on_done = "lock"`: adds the locks of the final contacts no change or removal of
    /// this run is for (after the evidence pass: those contacts are in the export, and
    /// stay locked there). How many.
    pub(crate) fn lock_done(&mut self) -> Result<(), SpoolError> {
        let mut done: Vec<_> = std::mem::take(&mut self.done).into_iter().collect();
        done.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (key, old) in done {
            self.remove(&Removal {
                key,
                old,
                kind: RemovalKind::Lock,
            })?;
            self.done_locks += 1;
        }
        Ok(())
    }

    /// Keeps the removals for which `keep` is true.
    pub(crate) fn retain_removals(
        &mut self,
        mut keep: impl FnMut(&Removal) -> bool,
    ) -> Result<(), SpoolError> {
        let empty = self.removals.emptied();
        let old = std::mem::replace(&mut self.removals, empty);
        self.counts.deletes = 0;
        for r in old.iter() {
            let r = r?;
            if keep(&r) {
                self.remove(&r)?;
            }
        }
        Ok(())
    }

    fn reject(&mut self, r: Rejected) {
        self.rejects += 1;
        if self.rejected.len() < LIST_LIMIT {
            self.rejected.push(r);
        }
    }
    /// Asserts that the counts the guards and the report take from the plan are those of
    /// its operations.
    #[cfg(test)]
    pub(crate) fn check_counts(&self) {
        let changes = self.changes.to_vec();
        let removals = self.removals.to_vec();
        let count = |f: &dyn Fn(&Change) -> bool| changes.iter().filter(|c| f(c)).count();
        assert_eq!(self.updates(), count(&|c| !c.update.is_empty()), "updates");
        assert_eq!(self.resets(), count(&|c| c.reset), "resets");
        assert_eq!(self.unlocks(), count(&|c| c.unlock), "unlocks");
        let deletes = removals
            .iter()
            .filter(|r| r.kind == RemovalKind::Delete)
            .count();
        assert_eq!(self.removals(RemovalKind::Delete), deletes, "deletes");
        assert_eq!(
            self.removals(RemovalKind::Lock),
            removals.len() - deletes,
            "locks"
        );
        assert_eq!(self.imports.to_vec().len(), self.imports.len(), "imports");
        assert!(
            self.rejects >= self.rejected.len() as u64 && self.warned >= self.warnings.len() as u64
        );
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.calls() == 0 && self.baselines.is_empty()
    }
}

/// Builds a plan incrementally, one row at a time, so the export is never held in memory.
///
/// With the state's [`Digest`], a row whose hash matches its entry's is settled by
/// [`Planner::unchanged`] without reading the entry or mapping the row; which entries
/// were seen is then marked in the digest's [`Probe`] table, and the other rows' UserData
/// kept in `seen`.
pub(crate) struct Planner<'s, S: StateView + ?Sized> {
    state: &'s S,
    policy: Policy,
    /// The digest of `state`, exactly (see [`crate::state::JobState::digest`]), as a
    /// lookup table with a mark per entry for the row that named it.
    probe: Option<Probe>,
    /// The UserData of every other row (mapped, or rejected with a readable key), with its
    /// first row.
    seen: KeyMap<At>,
    /// Contacts with an operation in flight when an earlier run stopped ([`in_doubt`]
    /// bits): what the dialler holds for them is unknown.
    doubts: KeyMap<u8>,
    /// `on_done = "lock"`: the key hashes of final contacts locked (see [`Planner::on_done`]).
    final_locked: std::collections::HashSet<u64>,
    /// The entry [`Planner::known`] read (UserData, entry), for the push of its row.
    fetched: Option<(String, Option<Entry>)>,
    plan: Plan,
}

impl<'s, S: StateView + ?Sized> Planner<'s, S> {
    pub(crate) fn new(state: &'s S, policy: Policy) -> Self {
        Planner {
            state,
            policy,
            probe: None,
            seen: KeyMap::default(),
            doubts: KeyMap::default(),
            final_locked: Default::default(),
            fetched: None,
            plan: Plan::default(),
        }
    }

    /// The plan's files (beyond its first few MB) go into `dir`: the state's private
    /// folder, not one other users can see. Before the first row.
    pub(crate) fn spool_in(mut self, dir: Arc<Path>) -> Self {
        self.plan = Plan::in_dir(dir);
        self
    }

    /// `on_done = "lock"`: what the outcomes said. A contact whose result is done or
    /// aborted is locked, and stays locked while the export has it, unless a reset
    /// trigger fires for it (the reset opens it again: the dialler deletes its result).
    /// `to_lock`: the final contacts not locked, each locked unless this run changes or
    /// removes it (it is locked by the next); `final_locked`: the key hashes of those
    /// locked, which a change does not unlock.
    pub(crate) fn on_done(
        mut self,
        to_lock: Vec<(String, Entry)>,
        final_locked: std::collections::HashSet<u64>,
    ) -> Self {
        self.plan.done = to_lock.into_iter().collect();
        self.final_locked = final_locked;
        self
    }

    /// A planner that uses `digest`, which must describe `state` exactly.
    pub(crate) fn with_digest(state: &'s S, policy: Policy, digest: &Arc<Digest>) -> Self {
        let mut p = Planner::new(state, policy);
        p.probe = Some(digest.probe());
        p
    }

    /// Plans the contacts of `marks` (UserData -> [`in_doubt`] bits, from
    /// [`crate::state::JobState::in_flight`]) from what the export says: a contact in the
    /// export is updated with every mapped field (a field emptied is sent as `null`) and
    /// unlocked if its lock state is in doubt; one missing is locked or deleted per
    /// `on_missing` even if the state says it is locked already.
    pub(crate) fn in_flight(mut self, marks: KeyMap<u8>) -> Self {
        self.doubts = marks;
        self
    }

    /// Settles a row that is unchanged since its contact was last synced: its UserData
    /// (`key`, trimmed, hashing to `key_hash`) has an entry whose row hash is `row`, not
    /// locked, and no earlier row named it. True if so (the row is counted); false: the
    /// row is to be mapped and [`Planner::push`]ed.
    pub(crate) fn unchanged(&mut self, key: &str, key_hash: u64, row: u64, at: RowRef) -> bool {
        let Some(probe) = &mut self.probe else {
            return false;
        };
        let Some(i) = probe.find(key_hash) else {
            return false;
        };
        if probe.row(i) != row || probe.locked(i) || probe.seen_at(i) != 0 {
            return false;
        }
        if self.seen.contains(key) {
            return false;
        }
        if self.doubts.contains(key) {
            return false;
        }
        probe.set_seen_at(i, at.pack());
        self.plan.rows += 1;
        self.plan.unchanged += 1;
        self.plan.unchanged_by_hash += 1;
        true
    }

    /// What the state has of the contact of `key` that spares mapping part of its row
    /// ([`Known`]): nothing if it has no entry, or one whose numbers are not known to be
    /// the dialler's (in doubt, or its phones hash unknown). The entry read is kept for
    /// the push of the row, which comes next.
    pub(crate) fn known(&mut self, key: &str) -> Result<Option<Known<'_>>, PlanError> {
        let doubt = self.doubts.get(key).unwrap_or(0);
        let entry = self.state.get(key)?;
        let (_, entry) = self.fetched.insert((key.to_string(), entry));
        Ok(entry.as_ref().and_then(|e| {
            let fields_unknown = in_doubt::fields_unknown(doubt | e.doubt());
            (e.keyed && e.phones != 0 && !fields_unknown).then_some(Known {
                phones: e.phones,
                fields: &e.fields,
            })
        }))
    }

    /// The entry of `key` (the one [`Planner::known`] read, if it was for `key`).
    fn entry(&mut self, key: &str) -> Result<Option<Entry>, crate::state::StateError> {
        match self.fetched.take() {
            Some((k, entry)) if k == key => Ok(entry),
            _ => self.state.get(key),
        }
    }

    /// The first step of prefetching the digest entry of a row to be looked up soon
    /// (see [`Probe::prefetch`]).
    pub(crate) fn prefetch(&self, key_hash: u64) {
        if let Some(p) = &self.probe {
            p.prefetch(key_hash);
        }
    }

    /// The second step, some rows after the first (see [`Probe::prefetch_entry`]).
    pub(crate) fn prefetch_entry(&self, key_hash: u64) {
        if let Some(p) = &self.probe {
            p.prefetch_entry(key_hash);
        }
    }

    /// Marks the entry of `key` (which the state has) as seen at `at`; the row that saw it
    /// first if it was already.
    fn mark_seen(&mut self, key: &str, at: RowRef) -> Option<u64> {
        let probe = self.probe.as_mut()?;
        let i = probe.find(key_hash(key))?;
        match probe.seen_at(i) {
            0 => {
                probe.set_seen_at(i, at.pack());
                None
            }
            first => Some(first),
        }
    }

    pub(crate) fn push(&mut self, outcome: Outcome) -> Result<(), PlanError> {
        self.plan.rows += 1;
        match outcome {
            Outcome::Rejected(r) => {
                if r.unreadable {
                    self.plan.doubts.unreadable_rows += 1;
                } else if r.key.is_none() {
                    self.plan.doubts.rows_without_key += 1;
                }
                if let Some(k) = &r.key {
                    let mut first = r.at;
                    if self.probe.is_some() && self.entry(k)?.is_some() {
                        if let Some(row) = self.mark_seen(k, r.at) {
                            first = RowRef::unpack(row);
                        }
                    }
                    self.seen.insert(k, first.into());
                }
                self.plan.reject(r);
            }
            Outcome::Contact(mut c) => {
                if let Some(first) = self.seen.get(&c.key) {
                    self.plan.duplicates += 1;
                    self.plan.reject(again(c, first.into()));
                    return Ok(());
                }
                let (at, key) = (c.at, c.key.clone());
                let mut warnings = std::mem::take(&mut c.warnings);
                // A row rejected after all (a duplicate) is not synced: no warnings.
                if self.plan_contact(c, &mut warnings)? && !warnings.is_empty() {
                    self.plan.warned += 1;
                    if self.plan.warnings.len() < LIST_LIMIT {
                        self.plan.warnings.push(RowWarning {
                            at,
                            user_data: key,
                            warning: warnings.join("; "),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Plans the row `c`, adding to `warnings` what of it cannot be sent. False: the row
    /// was rejected instead (its UserData was seen before).
    fn plan_contact(&mut self, c: Contact, warnings: &mut Vec<String>) -> Result<bool, PlanError> {
        let doubt = self.doubts.get(&c.key).unwrap_or(0);
        let Some(old) = self.entry(&c.key)? else {
            self.seen.insert(&c.key, c.at.into());
            if doubt != 0 {
                // Nothing stored to doubt: a pending import is the journal's business.
                self.plan.settled.push(c.key.clone());
            }
            self.plan.imports.push(&c)?;
            return Ok(true);
        };
        // A key the state has is marked in the probe (below), if there is one.
        if self.probe.is_none() {
            self.seen.insert(&c.key, c.at.into());
        }
        let doubt = doubt | old.doubt();
        if doubt != 0 {
            self.plan.rechecked += 1;
        }
        let old = migrate(old, &c);
        // Fields (and, after a delete, the contact itself) unknown: send every field; a
        // contact found gone is imported again.
        let fields_unknown = in_doubt::fields_unknown(doubt);
        // The state has it, so the digest has it (at its key hash's position).
        if let Some(row) = self.mark_seen(&c.key, c.at) {
            self.plan.duplicates += 1;
            self.plan.reject(again(c, RowRef::unpack(row)));
            return Ok(false);
        }
        let stored = |code: u8| old.fields.iter().find(|(c, _)| *c == code).map(|(_, h)| *h);
        // Each value with its hash (`hashes` also has those of numbers `kept`, which are
        // the stored ones).
        let hashed = || {
            c.fields.iter().map(|fv| {
                let code = fv.0.code;
                let hash = c
                    .hashes
                    .iter()
                    .find(|(k, _)| *k == code)
                    .map_or(0, |(_, h)| *h);
                (fv, code, hash)
            })
        };
        for ((field, _), code, hash) in hashed() {
            if field.import_only() && stored(code).is_some_and(|h| h != hash) && !fields_unknown {
                warnings.push(format!(
                    "{} changed, and the dialler takes it on import only: change it in the jtel portal",
                    field.name
                ));
            }
        }
        let update: Vec<_> = hashed()
            .filter(|((field, _), _, _)| !field.import_only())
            .filter(|((_, value), code, hash)| match stored(*code) {
                _ if fields_unknown => true,
                Some(h) => h != *hash,
                // Newly mapped: send it unless there is nothing to send.
                None => !value.is_null(),
            })
            .map(|(fv, _, _)| fv.clone())
            .collect();
        let reset = c.triggers.iter().any(|(col, hash)| {
            old.triggers
                .iter()
                .find(|(c, _)| c == col)
                .is_some_and(|(_, h)| h != hash)
        });
        let mut unlock = old.locked || doubt & in_doubt::LOCK != 0;
        // A final contact locked by `on_done` stays locked, unless a reset opens it.
        let done_locked = unlock && !reset && self.final_locked.contains(&key_hash(&c.key));
        if done_locked {
            unlock = false;
            if update.is_empty() {
                self.plan.unchanged += 1;
                return Ok(true);
            }
        }
        if update.is_empty() && !reset && !unlock {
            // (Not for the phones hash alone: it spares work, and goes with the next
            // write.)
            if old.fields != c.hashes || old.triggers != c.triggers || old.row != c.row {
                let mut entry = old;
                entry.fields = c.hashes;
                entry.triggers = c.triggers;
                entry.row = c.row;
                entry.phones = c.phones;
                entry.last_op = LastOp::Baseline;
                self.plan.baselines.push(&(c.key, entry))?;
            }
            self.plan.unchanged += 1;
            return Ok(true);
        }
        // This run sends it something: `on_done` locks it on the next.
        if !self.plan.done.is_empty() {
            self.plan.done.remove(&c.key);
        }
        let change = Change {
            at: c.at,
            key: c.key,
            old,
            update,
            values: c.fields,
            reset,
            unlock,
            fields: c.hashes,
            triggers: c.triggers,
            row: c.row,
            phones: c.phones,
            kept: c.kept,
        };
        self.plan.counts.add_change(&change);
        self.plan.changes.push(&change)?;
        Ok(true)
    }

    /// Adds the removals of contacts missing from the export and returns the plan.
    pub(crate) fn finish(mut self) -> Result<Plan, PlanError> {
        let on_missing = self.policy.on_missing;
        let kind_for = |locked: bool| match on_missing {
            OnMissing::Keep => None,
            OnMissing::Lock if locked => None,
            OnMissing::Lock => Some(RemovalKind::Lock),
            OnMissing::Delete => Some(RemovalKind::Delete),
        };
        if let (Some(p), true) = (&self.probe, self.doubts.is_empty()) {
            // Every entry a row named is marked: if none of the others is to be removed,
            // the entries need not be read.
            if p.unseen().all(|locked| kind_for(locked).is_none()) {
                self.plan.absent_kept += p.unseen().count() as u64;
                self.plan.known = p.len() as u64;
                return Ok(self.plan);
            }
        }
        let mut already = 0u64;
        let (seen, probe, doubts) = (&self.seen, &self.probe, &self.doubts);
        let withhold = self.plan.doubts.withhold_all();
        let plan = &mut self.plan;
        let mut known = 0u64;
        let mut rechecked = 0u64;
        let mut settled = Vec::new();
        let mut failed = None;
        self.state.for_each(&mut |key, entry| {
            known += 1;
            let named = seen.contains(key)
                || probe
                    .as_ref()
                    .is_some_and(|p| p.find(key_hash(key)).is_some_and(|i| p.seen_at(i) != 0));
            if named {
                return;
            }
            let marked = doubts.get(key).unwrap_or(0);
            let doubt = marked | entry.doubt();
            // A lock or delete in flight: the lock flag stored may not be the dialler's.
            let locked = entry.locked && doubt & (in_doubt::LOCK | in_doubt::GONE) == 0;
            let kind = kind_for(locked);
            rechecked += u64::from(marked != 0 || (doubt != 0 && kind.is_some()));
            match kind {
                Some(_) if withhold => plan.withheld_removals += 1,
                Some(_) if failed.is_some() => {}
                Some(kind) => {
                    let removal = Removal {
                        key: key.to_string(),
                        old: entry,
                        kind,
                    };
                    if let Err(e) = plan.remove(&removal) {
                        failed = Some(e);
                    }
                    if !plan.done.is_empty() {
                        plan.done.remove(key);
                    }
                }
                None => {
                    already += 1;
                    // A rebuilt entry's doubt stays until a call settles it: should
                    // the contact come back, it is unlocked.
                    if marked != 0 {
                        settled.push(key.to_string());
                    }
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        self.plan.rechecked += rechecked;
        self.plan.settled.extend(settled);
        // Marks of contacts the state no longer has (a delete confirmed, its mark not yet
        // cleared) and that no row named: nothing in doubt.
        for (key, _) in self.doubts.iter() {
            if !seen.contains(key) && self.state.get(key)?.is_none() {
                self.plan.settled.push(key.to_string());
            }
        }
        self.plan.absent_kept += already;
        self.plan.known = known;
        Ok(self.plan)
    }
}

/// `old` with keyed hashes ([`crate::state::hashing`]), if it was stored with unkeyed ones by an
/// earlier version: each hash that matches the unkeyed hash of the row's value becomes
/// that value's keyed hash, any other stays as it is (so it still differs). The plan then
/// compares as usual: an unchanged contact costs no call, only a state write (a
/// baseline), and a changed one sends exactly what changed.
fn migrate(old: Entry, c: &Contact) -> Entry {
    if old.keyed {
        return old;
    }
    let fields = old
        .fields
        .iter()
        .map(|&(code, h)| {
            let value = c.fields.iter().find(|(f, _)| f.code == code);
            let keyed = c.hashes.iter().find(|(k, _)| *k == code);
            match (value, keyed) {
                (Some((_, v)), Some(&(_, keyed))) if hashing::legacy_value(v) == h => (code, keyed),
                _ => (code, h),
            }
        })
        .collect();
    let triggers = old
        .triggers
        .iter()
        .map(|(col, h)| {
            let i = c.triggers.iter().position(|(c, _)| c == col);
            match i {
                Some(i) if c.legacy_triggers.get(i) == Some(h) => (col.clone(), c.triggers[i].1),
                _ => (col.clone(), *h),
            }
        })
        .collect();
    Entry {
        fields,
        triggers,
        keyed: true,
        ..old
    }
}

/// The rejection of a row whose UserData an earlier row (`first`) had.
fn again(c: Contact, first: RowRef) -> Rejected {
    Rejected {
        at: c.at,
        reason: format!(
            "UserData {:?} appears again (first at {first}); only the first row is synced",
            c.key
        ),
        key: Some(c.key),
        unreadable: false,
    }
}

/// Plans a whole export at once: the pure form of [`Planner`], for tests.
#[cfg(test)]
pub(crate) fn plan(
    rows: impl IntoIterator<Item = Outcome>,
    state: &(impl StateView + ?Sized),
    policy: Policy,
) -> Result<Plan, PlanError> {
    let mut planner = Planner::new(state, policy);
    for r in rows {
        planner.push(r)?;
    }
    let plan = planner.finish()?;
    plan.check_counts();
    Ok(plan)
}

#[cfg(test)]
mod tests;
