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

use crate::config::OnMissing;
use crate::engine::mapping::{Contact, Outcome, Rejected};
use crate::fields::Field;
use crate::fields::FieldValue;
use crate::key::key_hash;
use crate::source::RowRef;
use crate::state::digest::{Digest, Probe};
use crate::state::hashing;
use crate::state::{in_doubt, Entry, LastOp, StateError, StateView};

/// The job settings the planner needs.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub on_missing: OnMissing,
}

/// Changes to a contact the dialler already has, applied in this order: update, reset,
/// unlock (so the dialler never dials a contact before its data and counters are right).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RemovalKind {
    Lock,
    Delete,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Removal {
    pub key: String,
    pub old: Entry,
    pub kind: RemovalKind,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub imports: Vec<Contact>,
    pub changes: Vec<Change>,
    pub removals: Vec<Removal>,
    /// State-only refreshes (no call): hashes recorded for a newly mapped field or trigger.
    pub baselines: Vec<(String, Entry)>,
    pub unchanged: u64,
    /// Of the unchanged rows, those settled by their hash (see [`Planner::unchanged`]).
    pub unchanged_by_hash: u64,
    pub rejected: Vec<Rejected>,
    /// Removals not planned for lack of evidence that their contact left the export.
    pub withheld_removals: u64,
    /// Why they were held back.
    pub doubts: Doubts,
    /// Contacts whose last operation was in flight when an earlier run stopped: planned
    /// from what the export says, not from the state.
    pub rechecked: u64,
    /// In-flight marks that need no call (the contact is kept, or has no entry): to clear.
    pub settled: Vec<String>,
    /// Rows read (valid and rejected).
    pub rows: u64,
    /// Contacts in the state before the run.
    pub known: u64,
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
    pub fn updates(&self) -> usize {
        self.changes.iter().filter(|c| !c.update.is_empty()).count()
    }
    pub fn resets(&self) -> usize {
        self.changes.iter().filter(|c| c.reset).count()
    }
    pub fn unlocks(&self) -> usize {
        self.changes.iter().filter(|c| c.unlock).count()
    }
    pub fn removals(&self, kind: RemovalKind) -> usize {
        self.removals.iter().filter(|r| r.kind == kind).count()
    }
    /// The API calls the plan needs.
    pub fn calls(&self) -> usize {
        self.imports.len() + self.updates() + self.resets() + self.unlocks() + self.removals.len()
    }
    pub fn is_empty(&self) -> bool {
        self.calls() == 0 && self.baselines.is_empty()
    }
}

/// Builds a plan incrementally, one row at a time, so the export is never held in memory.
///
/// With the state's [`Digest`], a row whose hash matches its entry's is settled by
/// [`Planner::unchanged`] without reading the entry or mapping the row; which entries
/// were seen is then marked in the digest's [`Probe`] table, and the other rows' UserData
/// kept in `seen`.
pub struct Planner<'s, S: StateView + ?Sized> {
    state: &'s S,
    policy: Policy,
    /// The digest of `state`, exactly (see [`crate::state::JobState::digest`]), as a
    /// lookup table with a mark per entry for the row that named it.
    probe: Option<Probe>,
    /// The UserData of every other row (mapped, or rejected with a readable key), with its
    /// first row.
    seen: HashMap<String, RowRef>,
    /// Contacts with an operation in flight when an earlier run stopped ([`in_doubt`]
    /// bits): what the dialler holds for them is unknown.
    doubts: HashMap<String, u8>,
    plan: Plan,
}

impl<'s, S: StateView + ?Sized> Planner<'s, S> {
    pub fn new(state: &'s S, policy: Policy) -> Self {
        Planner {
            state,
            policy,
            probe: None,
            seen: HashMap::new(),
            doubts: HashMap::new(),
            plan: Plan::default(),
        }
    }

    /// A planner that uses `digest`, which must describe `state` exactly.
    pub fn with_digest(state: &'s S, policy: Policy, digest: &Digest) -> Self {
        let mut p = Planner::new(state, policy);
        p.probe = Some(digest.probe());
        p
    }

    /// Plans the contacts of `marks` (UserData -> [`in_doubt`] bits, from
    /// [`crate::state::JobState::in_flight`]) from what the export says: a contact in the
    /// export is updated with every mapped field (a field emptied is sent as `null`) and
    /// unlocked if its lock state is in doubt; one missing is locked or deleted per
    /// `on_missing` even if the state says it is locked already.
    pub fn in_flight(mut self, marks: HashMap<String, u8>) -> Self {
        self.doubts = marks;
        self
    }

    /// Settles a row that is unchanged since its contact was last synced: its UserData
    /// (`key`, trimmed, hashing to `key_hash`) has an entry whose row hash is `row`, not
    /// locked, and no earlier row named it. True if so (the row is counted); false: the
    /// row is to be mapped and [`Planner::push`]ed.
    pub fn unchanged(&mut self, key: &str, key_hash: u64, row: u64, at: RowRef) -> bool {
        let Some(probe) = &mut self.probe else {
            return false;
        };
        let Some(i) = probe.find(key_hash) else {
            return false;
        };
        if probe.row(i) != row || probe.locked(i) || probe.seen_at(i) != 0 {
            return false;
        }
        if !self.seen.is_empty() && self.seen.contains_key(key) {
            return false;
        }
        if !self.doubts.is_empty() && self.doubts.contains_key(key) {
            return false;
        }
        probe.set_seen_at(i, at.row);
        self.plan.rows += 1;
        self.plan.unchanged += 1;
        self.plan.unchanged_by_hash += 1;
        true
    }

    /// Prefetches the digest slot of a row to be looked up soon.
    pub fn prefetch(&self, key_hash: u64) {
        if let Some(p) = &self.probe {
            p.prefetch(key_hash);
        }
    }

    /// Marks the entry of `key` (which the state has) as seen at `at`; the row that saw it
    /// first if it was already.
    fn mark_seen(&mut self, key: &str, at: RowRef) -> Option<u64> {
        let probe = self.probe.as_mut()?;
        let i = probe.find(key_hash(key))?;
        match probe.seen_at(i) {
            0 => {
                probe.set_seen_at(i, at.row);
                None
            }
            first => Some(first),
        }
    }

    pub fn push(&mut self, outcome: Outcome) -> Result<(), StateError> {
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
                    if self.probe.is_some() && self.state.get(k)?.is_some() {
                        if let Some(row) = self.mark_seen(k, r.at) {
                            first = RowRef { row, line: None };
                        }
                    }
                    self.seen.entry(k.clone()).or_insert(first);
                }
                self.plan.rejected.push(r);
            }
            Outcome::Contact(c) => {
                if let Some(first) = self.seen.get(&c.key).copied() {
                    self.plan.rejected.push(again(c, first));
                    return Ok(());
                }
                self.seen.insert(c.key.clone(), c.at);
                self.plan_contact(c)?;
            }
        }
        Ok(())
    }

    fn plan_contact(&mut self, c: Contact) -> Result<(), StateError> {
        let doubt = self.doubts.get(&c.key).copied().unwrap_or(0);
        let Some(old) = self.state.get(&c.key)? else {
            if doubt != 0 {
                // Nothing stored to doubt: a pending import is the journal's business.
                self.plan.settled.push(c.key.clone());
            }
            self.plan.imports.push(c);
            return Ok(());
        };
        if doubt != 0 {
            self.plan.rechecked += 1;
        }
        let old = migrate(old, &c);
        // Fields (and, after a delete, the contact itself) unknown: send every field; a
        // contact found gone is imported again.
        let fields_unknown = doubt & (in_doubt::FIELDS | in_doubt::GONE) != 0;
        // The state has it, so the digest has it (at its key hash's position).
        if let Some(row) = self.mark_seen(&c.key, c.at) {
            self.plan
                .rejected
                .push(again(c, RowRef { row, line: None }));
            return Ok(());
        }
        let stored = |code: u8| old.fields.iter().find(|(c, _)| *c == code).map(|(_, h)| *h);
        let update: Vec<_> = c
            .fields
            .iter()
            .zip(&c.hashes)
            .filter(|((_, value), (code, hash))| match stored(*code) {
                _ if fields_unknown => true,
                Some(h) => h != *hash,
                // Newly mapped: send it unless there is nothing to send.
                None => !value.is_null(),
            })
            .map(|(fv, _)| fv.clone())
            .collect();
        let reset = c.triggers.iter().any(|(col, hash)| {
            old.triggers
                .iter()
                .find(|(c, _)| c == col)
                .is_some_and(|(_, h)| h != hash)
        });
        let unlock = old.locked || doubt & in_doubt::LOCK != 0;
        if update.is_empty() && !reset && !unlock {
            if old.fields != c.hashes || old.triggers != c.triggers || old.row != c.row {
                let mut entry = old;
                entry.fields = c.hashes;
                entry.triggers = c.triggers;
                entry.row = c.row;
                entry.last_op = LastOp::Baseline;
                self.plan.baselines.push((c.key, entry));
            }
            self.plan.unchanged += 1;
            return Ok(());
        }
        self.plan.changes.push(Change {
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
        });
        Ok(())
    }

    /// Adds the removals of contacts missing from the export and returns the plan.
    pub fn finish(mut self) -> Result<Plan, StateError> {
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
                self.plan.unchanged += p.unseen().count() as u64;
                self.plan.known = p.len() as u64;
                return Ok(self.plan);
            }
        }
        let mut removals = Vec::new();
        let mut already = 0u64;
        let (seen, probe, doubts) = (&self.seen, &self.probe, &self.doubts);
        let mut known = 0u64;
        let mut rechecked = 0u64;
        let mut settled = Vec::new();
        self.state.for_each(&mut |key, entry| {
            known += 1;
            let named = seen.contains_key(key)
                || probe
                    .as_ref()
                    .is_some_and(|p| p.find(key_hash(key)).is_some_and(|i| p.seen_at(i) != 0));
            if named {
                return;
            }
            let doubt = doubts.get(key).copied().unwrap_or(0);
            rechecked += u64::from(doubt != 0);
            // A lock or delete in flight: the lock flag stored may not be the dialler's.
            let locked = entry.locked && doubt & (in_doubt::LOCK | in_doubt::GONE) == 0;
            match kind_for(locked) {
                Some(kind) => removals.push(Removal {
                    key: key.to_string(),
                    old: entry,
                    kind,
                }),
                None => {
                    already += 1;
                    if doubt != 0 {
                        settled.push(key.to_string());
                    }
                }
            }
        })?;
        self.plan.rechecked += rechecked;
        self.plan.settled.extend(settled);
        // Marks of contacts the state no longer has (a delete confirmed, its mark not yet
        // cleared) and that no row named: nothing in doubt.
        for key in self.doubts.keys() {
            if !seen.contains_key(key) && self.state.get(key)?.is_none() {
                self.plan.settled.push(key.clone());
            }
        }
        self.plan.unchanged += already;
        self.plan.known = known;
        if self.plan.doubts.withhold_all() {
            self.plan.withheld_removals = removals.len() as u64;
        } else {
            self.plan.removals = removals;
        }
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
            let now = c
                .fields
                .iter()
                .zip(&c.hashes)
                .find(|((f, _), _)| f.code == code);
            match now {
                Some(((_, v), &(_, keyed))) if hashing::legacy_value(v) == h => (code, keyed),
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

/// Plans a whole export at once: the pure form of [`Planner`], for tests and tools.
pub fn plan(
    rows: impl IntoIterator<Item = Outcome>,
    state: &(impl StateView + ?Sized),
    policy: Policy,
) -> Result<Plan, StateError> {
    let mut planner = Planner::new(state, policy);
    for r in rows {
        planner.push(r)?;
    }
    planner.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields;
    use crate::state::hashing::HashKey;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn at(row: u64) -> RowRef {
        RowRef { row, line: None }
    }

    fn contact(key: &str, name: &str, phone: &str, round: &str) -> Outcome {
        let fields = vec![
            (
                fields::by_name("Name").unwrap(),
                FieldValue::Text(name.into()),
            ),
            (
                fields::by_name("PhoneNumber1").unwrap(),
                FieldValue::Text(phone.into()),
            ),
        ];
        let k = HashKey::for_tests();
        let hashes = fields.iter().map(|(f, v)| (f.code, k.value(v))).collect();
        Outcome::Contact(Contact {
            at: at(2),
            key: key.into(),
            fields,
            hashes,
            triggers: vec![("Round".into(), k.trigger(Some(round)))],
            legacy_triggers: vec![hashing::legacy_trigger(Some(round))],
            row: k.row(format!("{key}\0{name}\0{phone}\0{round}").as_bytes()),
        })
    }

    fn rejected(key: Option<&str>, unreadable: bool) -> Outcome {
        Outcome::Rejected(Rejected {
            at: at(9),
            key: key.map(str::to_string),
            reason: "bad".into(),
            unreadable,
        })
    }

    /// The state after the dialler confirmed every operation of `plan`.
    fn apply(state: &mut BTreeMap<String, Entry>, plan: &Plan) {
        for c in &plan.imports {
            state.insert(
                c.key.clone(),
                Entry {
                    id: state.len() as i64 + 1000,
                    fields: c.hashes.clone(),
                    triggers: c.triggers.clone(),
                    locked: false,
                    last_op: LastOp::Imported,
                    last_run: 0,
                    row: c.row,
                    keyed: true,
                },
            );
        }
        for c in &plan.changes {
            let e = state.get_mut(&c.key).unwrap();
            e.fields = c.fields.clone();
            e.triggers = c.triggers.clone();
            e.locked = false;
            e.row = c.row;
        }
        for r in &plan.removals {
            match r.kind {
                RemovalKind::Lock => state.get_mut(&r.key).unwrap().locked = true,
                RemovalKind::Delete => {
                    state.remove(&r.key);
                }
            }
        }
        for (k, e) in &plan.baselines {
            state.insert(k.clone(), e.clone());
        }
    }

    /// The state after a first run on `rows`.
    fn synced<const N: usize>(rows: [Outcome; N]) -> BTreeMap<String, Entry> {
        let mut state = BTreeMap::new();
        let p = plan(rows, &state, LOCK).unwrap();
        apply(&mut state, &p);
        state
    }

    const LOCK: Policy = Policy {
        on_missing: OnMissing::Lock,
    };

    #[test]
    fn full_cycle() {
        let mut state = BTreeMap::new();
        let p = plan(
            [contact("A", "a", "1", "1"), contact("B", "b", "2", "1")],
            &state,
            LOCK,
        )
        .unwrap();
        assert_eq!((p.imports.len(), p.calls()), (2, 2));
        apply(&mut state, &p);

        let p = plan(
            [contact("A", "a", "1", "1"), contact("B", "b", "2", "1")],
            &state,
            LOCK,
        )
        .unwrap();
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(p.unchanged, 2);

        // A's phone changes, B's round changes, C is new.
        let p = plan(
            [
                contact("A", "a", "9", "1"),
                contact("B", "b", "2", "2"),
                contact("C", "c", "3", "1"),
            ],
            &state,
            LOCK,
        )
        .unwrap();
        assert_eq!(p.imports.len(), 1);
        let a = p.changes.iter().find(|c| c.key == "A").unwrap();
        assert_eq!(a.update.len(), 1);
        assert_eq!(a.update[0].0.name, "PhoneNumber1");
        assert!(!a.reset && !a.unlock);
        let b = p.changes.iter().find(|c| c.key == "B").unwrap();
        assert!(b.update.is_empty() && b.reset);
        assert_eq!(p.calls(), 3);
        apply(&mut state, &p);

        // B leaves: locked once, then nothing; back: unlocked.
        let p = plan(
            [contact("A", "a", "9", "1"), contact("C", "c", "3", "1")],
            &state,
            LOCK,
        )
        .unwrap();
        assert_eq!(p.removals.len(), 1);
        assert_eq!(
            (p.removals[0].key.as_str(), p.removals[0].kind),
            ("B", RemovalKind::Lock)
        );
        apply(&mut state, &p);
        let p = plan(
            [contact("A", "a", "9", "1"), contact("C", "c", "3", "1")],
            &state,
            LOCK,
        )
        .unwrap();
        assert!(p.is_empty());
        let p = plan(
            [
                contact("A", "a", "9", "1"),
                contact("B", "b", "2", "2"),
                contact("C", "c", "3", "1"),
            ],
            &state,
            LOCK,
        )
        .unwrap();
        assert_eq!(p.changes.len(), 1);
        assert!(p.changes[0].unlock && p.changes[0].update.is_empty() && !p.changes[0].reset);
    }

    #[test]
    fn missing_policy() {
        let mut state = BTreeMap::new();
        let p = plan([contact("A", "a", "1", "1")], &state, LOCK).unwrap();
        apply(&mut state, &p);
        let del = Policy {
            on_missing: OnMissing::Delete,
        };
        let keep = Policy {
            on_missing: OnMissing::Keep,
        };
        assert_eq!(
            plan([], &state, del).unwrap().removals[0].kind,
            RemovalKind::Delete
        );
        let p = plan([], &state, keep).unwrap();
        assert!(p.is_empty());
        assert_eq!(p.unchanged, 1);
    }

    #[test]
    fn rejected_rows_protect_their_contact() {
        let state = synced([contact("A", "a", "1", "1"), contact("B", "b", "1", "1")]);
        // A's row is invalid but readable: A is not missing; B is.
        let p = plan([rejected(Some("A"), false)], &state, LOCK).unwrap();
        assert_eq!(
            p.removals
                .iter()
                .map(|r| r.key.as_str())
                .collect::<Vec<_>>(),
            vec!["B"]
        );
        // An unreadable row might be anyone: no removal at all.
        let p = plan(
            [rejected(None, true), contact("A", "a", "1", "1")],
            &state,
            LOCK,
        )
        .unwrap();
        assert!(p.removals.is_empty());
        assert_eq!(p.withheld_removals, 1);
        assert_eq!(p.doubts.unreadable_rows, 1);
    }

    /// Promise 6: a row without a usable UserData could be any contact, like an unreadable
    /// one: it withholds every removal of the run, and the plan says why.
    #[test]
    fn a_row_without_a_key_withholds_every_removal() {
        let state = synced([contact("A", "a", "1", "1"), contact("B", "b", "1", "1")]);
        let p = plan(
            [rejected(None, false), contact("A", "a", "1", "1")],
            &state,
            LOCK,
        )
        .unwrap();
        assert!(p.removals.is_empty(), "{p:?}");
        assert_eq!(p.withheld_removals, 1);
        assert_eq!(
            (p.doubts.rows_without_key, p.doubts.unreadable_rows),
            (1, 0)
        );
    }

    #[test]
    fn duplicate_keys_first_row_wins() {
        let state = BTreeMap::new();
        let p = plan(
            [contact("A", "a", "1", "1"), contact("A", "z", "2", "1")],
            &state,
            LOCK,
        )
        .unwrap();
        assert_eq!(p.imports.len(), 1);
        assert_eq!(p.rejected.len(), 1);
        assert!(p.rejected[0].reason.contains("appears again"));
    }

    #[test]
    fn new_trigger_and_new_field_are_baselined_without_a_call() {
        let mut state = BTreeMap::new();
        let p = plan([contact("A", "a", "1", "1")], &state, LOCK).unwrap();
        apply(&mut state, &p);
        state.get_mut("A").unwrap().triggers.clear();
        let p = plan([contact("A", "a", "1", "5")], &state, LOCK).unwrap();
        assert_eq!(p.calls(), 0);
        assert_eq!(p.baselines.len(), 1);
        apply(&mut state, &p);
        let p = plan([contact("A", "a", "1", "6")], &state, LOCK).unwrap();
        assert!(p.changes[0].reset);
    }

    /// Promise 8: a contact whose last call was in flight when a run stopped is planned
    /// from the export alone: every field sent, the lock made what the export requires,
    /// whatever the state says.
    #[test]
    fn in_flight_contacts_are_planned_from_the_export_not_the_state() {
        let mut state = synced([
            contact("A", "a", "1", "1"),
            contact("B", "b", "2", "1"),
            contact("C", "c", "3", "1"),
            contact("D", "d", "4", "1"),
        ]);
        // The state says C is locked (a lock confirmed, then an unlock in flight).
        state.get_mut("C").unwrap().locked = true;
        let marks: HashMap<String, u8> = [
            ("A".to_string(), in_doubt::FIELDS),
            ("B".to_string(), in_doubt::LOCK),
            ("C".to_string(), in_doubt::LOCK),
            ("D".to_string(), in_doubt::LOCK),
            ("Z".to_string(), in_doubt::GONE),
        ]
        .into();
        let rows = [contact("A", "a", "1", "1"), contact("B", "b", "2", "1")];
        for digest in [false, true] {
            let d = Digest::of(state.iter());
            let mut planner = match digest {
                true => Planner::with_digest(&state, LOCK, &d),
                false => Planner::new(&state, LOCK),
            }
            .in_flight(marks.clone());
            for r in rows.clone() {
                if let Outcome::Contact(c) = &r {
                    assert!(!planner.unchanged(&c.key, key_hash(&c.key), c.row, c.at));
                }
                planner.push(r).unwrap();
            }
            let p = planner.finish().unwrap();
            let a = p.changes.iter().find(|c| c.key == "A").expect("A updated");
            assert_eq!(a.update.len(), 2, "every field of A: {a:?}");
            assert!(!a.unlock && !a.reset);
            let b = p.changes.iter().find(|c| c.key == "B").expect("B unlocked");
            assert!(b.unlock && b.update.is_empty(), "{b:?}");
            // C and D left the export: both locked, though the state has C locked.
            let mut removed: Vec<_> = p.removals.iter().map(|r| r.key.as_str()).collect();
            removed.sort();
            assert_eq!(removed, ["C", "D"]);
            assert_eq!(p.rechecked, 4);
            assert_eq!(p.settled, ["Z"], "Z has no entry: nothing in doubt");
        }
        // With on_missing = keep, the doubt of a missing contact needs no call.
        let keep = Policy {
            on_missing: OnMissing::Keep,
        };
        let p = plan(rows.clone(), &state, keep).unwrap();
        assert!(p.removals.is_empty());
        let mut planner = Planner::new(&state, keep).in_flight(marks);
        for r in rows {
            planner.push(r).unwrap();
        }
        let mut settled = planner.finish().unwrap().settled;
        settled.sort();
        assert_eq!(settled, ["C", "D", "Z"]);
    }

    /// Promise: a state written with unkeyed hashes (before keyed hashing) migrates on
    /// the next run without a call: unchanged contacts get keyed hashes stored, a changed
    /// one sends only what changed, a changed trigger still resets.
    #[test]
    fn unkeyed_entries_migrate_without_a_call() {
        let keyed = synced([
            contact("A", "a", "1", "1"),
            contact("B", "b", "2", "1"),
            contact("C", "c", "3", "1"),
        ]);
        // The same state as an older version wrote it: unkeyed hashes, no row hash.
        let legacy_of = |o: Outcome| match o {
            Outcome::Contact(c) => c,
            _ => unreachable!(),
        };
        let mut old = BTreeMap::new();
        for (k, n, p) in [("A", "a", "1"), ("B", "b", "2"), ("C", "c", "3")] {
            let c = legacy_of(contact(k, n, p, "1"));
            let mut e = keyed[k].clone();
            e.fields = c
                .fields
                .iter()
                .map(|(f, v)| (f.code, hashing::legacy_value(v)))
                .collect();
            e.triggers = vec![("Round".into(), hashing::legacy_trigger(Some("1")))];
            e.row = 0;
            e.keyed = false;
            old.insert(k.to_string(), e);
        }
        let p = plan(
            [
                contact("A", "a", "1", "1"),
                contact("B", "b", "9", "1"),
                contact("C", "c", "3", "2"),
            ],
            &old,
            LOCK,
        )
        .unwrap();
        assert_eq!(p.calls(), 2, "{p:?}");
        let b = p.changes.iter().find(|c| c.key == "B").unwrap();
        assert_eq!(b.update.len(), 1);
        assert_eq!(b.update[0].0.name, "PhoneNumber1");
        assert!(b.old.keyed && !b.reset);
        let c = p.changes.iter().find(|c| c.key == "C").unwrap();
        assert!(c.reset && c.update.is_empty());
        assert_eq!(p.baselines.len(), 1);
        let (k, e) = &p.baselines[0];
        assert_eq!((k.as_str(), e.keyed), ("A", true));
        assert_eq!(e.fields, keyed["A"].fields);
        assert_eq!(e.triggers, keyed["A"].triggers);
        let mut state = old;
        apply(&mut state, &p);
        let again = plan(
            [
                contact("A", "a", "1", "1"),
                contact("B", "b", "9", "1"),
                contact("C", "c", "3", "2"),
            ],
            &state,
            LOCK,
        )
        .unwrap();
        assert!(again.is_empty(), "{again:?}");
    }

    fn arb_rows() -> impl Strategy<Value = Vec<(u8, u8, u8, u8)>> {
        // (key, name, round, kind): kind 0-5 valid, 6 invalid with key, 7 unreadable.
        prop::collection::vec((0u8..20, 0u8..3, 0u8..3, 0u8..8), 0..30)
    }

    fn rows(spec: &[(u8, u8, u8, u8)]) -> Vec<Outcome> {
        spec.iter()
            .map(|(k, n, r, kind)| match kind {
                6 => rejected(Some(&format!("K{k}")), false),
                7 => rejected(None, true),
                _ => contact(&format!("K{k}"), &format!("n{n}"), "1", &r.to_string()),
            })
            .collect()
    }

    proptest! {
        /// Applying a plan and planning again has nothing left to do.
        #[test]
        fn planning_is_idempotent(history in prop::collection::vec(arb_rows(), 1..4), policy in 0u8..3) {
            let policy = Policy { on_missing: [OnMissing::Lock, OnMissing::Delete, OnMissing::Keep][policy as usize] };
            let mut state = BTreeMap::new();
            for spec in &history {
                let p = plan(rows(spec), &state, policy).unwrap();
                apply(&mut state, &p);
                let again = plan(rows(spec), &state, policy).unwrap();
                prop_assert!(again.is_empty() || again.withheld_removals > 0 && again.calls() == 0, "{again:?}");
            }
        }

        /// A contact whose row is present but invalid is never locked or deleted.
        #[test]
        fn invalid_rows_never_remove(first in arb_rows(), second in arb_rows(), policy in 0u8..2) {
            let policy = Policy { on_missing: [OnMissing::Lock, OnMissing::Delete][policy as usize] };
            let mut state = BTreeMap::new();
            let p = plan(rows(&first), &state, policy).unwrap();
            apply(&mut state, &p);
            let p = plan(rows(&second), &state, policy).unwrap();
            for (k, _, _, kind) in &second {
                if *kind == 6 {
                    let key = format!("K{k}");
                    prop_assert!(!p.removals.iter().any(|r| r.key == key));
                }
            }
            if second.iter().any(|s| s.3 == 7) {
                prop_assert!(p.removals.is_empty());
            }
        }

        /// With the state's digest, the plan is exactly the plan without it: the digest
        /// only saves reading entries and mapping rows. Entries with an unknown row hash
        /// (0) or a stale one, and locked ones, take the long way.
        #[test]
        fn the_digest_changes_nothing_but_speed(
            history in prop::collection::vec(arb_rows(), 1..3),
            next in arb_rows(),
            forget in prop::collection::vec(any::<bool>(), 20),
            policy in 0u8..3,
        ) {
            let policy = Policy { on_missing: [OnMissing::Lock, OnMissing::Delete, OnMissing::Keep][policy as usize] };
            let mut state = BTreeMap::new();
            for spec in &history {
                let p = plan(rows(spec), &state, policy).unwrap();
                apply(&mut state, &p);
            }
            for (e, forget) in state.values_mut().zip(&forget) {
                if *forget {
                    e.row = 0;
                }
            }
            let slow = plan(rows(&next), &state, policy).unwrap();
            let mut fast = plan_with_digest(rows(&next), &state, policy);
            prop_assert!(fast.unchanged_by_hash <= fast.unchanged);
            fast.unchanged_by_hash = 0;
            prop_assert_eq!(fast, slow);
        }
    }

    fn plan_with_digest(
        rows: Vec<Outcome>,
        state: &BTreeMap<String, Entry>,
        policy: Policy,
    ) -> Plan {
        let digest = Digest::of(state.iter());
        let mut planner = Planner::with_digest(state, policy, &digest);
        for r in rows {
            if let Outcome::Contact(c) = &r {
                if planner.unchanged(&c.key, key_hash(&c.key), c.row, c.at) {
                    continue;
                }
            }
            planner.push(r).unwrap();
        }
        planner.finish().unwrap()
    }

    #[test]
    fn the_digest_settles_unchanged_rows_and_still_finds_duplicates() {
        let state = synced([contact("A", "a", "1", "1"), contact("B", "b", "2", "1")]);
        // A twice, the first time unchanged (settled by the digest), then changed.
        let p = plan_with_digest(
            vec![contact("A", "a", "1", "1"), contact("A", "x", "1", "1")],
            &state,
            LOCK,
        );
        assert_eq!(p.unchanged, 1);
        assert!(p.changes.is_empty());
        assert_eq!(p.rejected.len(), 1, "{p:?}");
        assert!(p.rejected[0]
            .reason
            .contains("appears again (first at row 2)"));
        // B left: locked, found without the digest's help.
        assert_eq!(p.removals.len(), 1);
        assert_eq!(p.removals[0].key, "B");
    }
}
