use super::*;
use crate::fields;
use crate::state::hashing::HashKey;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn at(row: u64) -> RowRef {
    RowRef::at(row)
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
        phones: 0,
        kept: Vec::new(),
        warnings: Vec::new(),
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

/// The change `plan` has for `key`.
fn change_of(plan: &Plan, key: &str) -> Change {
    plan.changes
        .to_vec()
        .into_iter()
        .find(|c| c.key == key)
        .unwrap_or_else(|| panic!("a change for {key}"))
}

/// The state after the dialler confirmed every operation of `plan`.
fn apply(state: &mut BTreeMap<String, Entry>, plan: &Plan) {
    for c in plan.imports.to_vec() {
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
                phones: c.phones,
                keyed: true,
            },
        );
    }
    for c in plan.changes.to_vec() {
        let e = state.get_mut(&c.key).unwrap();
        e.fields = c.fields.clone();
        e.triggers = c.triggers.clone();
        e.locked = false;
        e.row = c.row;
        e.phones = c.phones;
    }
    for r in plan.removals.to_vec() {
        match r.kind {
            RemovalKind::Lock => state.get_mut(&r.key).unwrap().locked = true,
            RemovalKind::Delete => {
                state.remove(&r.key);
            }
        }
    }
    for (k, e) in plan.baselines.to_vec() {
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

    // The exports of this scenario: A changed and C new beside B, then without B.
    let with_b = || {
        [
            contact("A", "a", "9", "1"),
            contact("B", "b", "2", "2"),
            contact("C", "c", "3", "1"),
        ]
    };
    let without_b = || [contact("A", "a", "9", "1"), contact("C", "c", "3", "1")];

    // A's phone changes, B's round changes, C is new.
    let p = plan(with_b(), &state, LOCK).unwrap();
    assert_eq!(p.imports.len(), 1);
    let a = change_of(&p, "A");
    assert_eq!(a.update.len(), 1);
    assert_eq!(a.update[0].0.name, "PhoneNumber1");
    assert!(!a.reset && !a.unlock);
    let b = change_of(&p, "B");
    assert!(b.update.is_empty() && b.reset);
    assert_eq!(p.calls(), 3);
    apply(&mut state, &p);

    // B leaves: locked once, then nothing; back: unlocked.
    let p = plan(without_b(), &state, LOCK).unwrap();
    assert_eq!(p.removals.len(), 1);
    assert_eq!(
        (
            p.removals.to_vec()[0].key.as_str(),
            p.removals.to_vec()[0].kind
        ),
        ("B", RemovalKind::Lock)
    );
    apply(&mut state, &p);
    let p = plan(without_b(), &state, LOCK).unwrap();
    assert!(p.is_empty());
    // Two rows unchanged; B, locked already, is no row.
    assert_eq!((p.rows, p.unchanged, p.absent_kept), (2, 2, 1));
    let p = plan(with_b(), &state, LOCK).unwrap();
    assert_eq!(p.changes.len(), 1);
    assert!(
        p.changes.to_vec()[0].unlock
            && p.changes.to_vec()[0].update.is_empty()
            && !p.changes.to_vec()[0].reset
    );
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
        plan([], &state, del).unwrap().removals.to_vec()[0].kind,
        RemovalKind::Delete
    );
    let p = plan([], &state, keep).unwrap();
    assert!(p.is_empty());
    // Kept, but no row: the counts of rows do not include it.
    assert_eq!((p.unchanged, p.absent_kept), (0, 1));
}

#[test]
fn rejected_rows_protect_their_contact() {
    let state = synced([contact("A", "a", "1", "1"), contact("B", "b", "1", "1")]);
    // A's row is invalid but readable: A is not missing; B is.
    let p = plan([rejected(Some("A"), false)], &state, LOCK).unwrap();
    assert_eq!(
        p.removals
            .to_vec()
            .into_iter()
            .map(|r| r.key)
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
    assert!(p.changes.to_vec()[0].reset);
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
        .in_flight(marks.clone().into_iter().collect());
        for r in rows.clone() {
            if let Outcome::Contact(c) = &r {
                assert!(!planner.unchanged(&c.key, key_hash(&c.key), c.row, c.at));
            }
            planner.push(r).unwrap();
        }
        let p = planner.finish().unwrap();
        let a = change_of(&p, "A");
        assert_eq!(a.update.len(), 2, "every field of A: {a:?}");
        assert!(!a.unlock && !a.reset);
        let b = change_of(&p, "B");
        assert!(b.unlock && b.update.is_empty(), "{b:?}");
        // C and D left the export: both locked, though the state has C locked.
        let mut removed: Vec<_> = p.removals.to_vec().into_iter().map(|r| r.key).collect();
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
    let mut planner = Planner::new(&state, keep).in_flight(marks.into_iter().collect());
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
    // B's phone and C's round changed in the CRM since.
    let export = || {
        [
            contact("A", "a", "1", "1"),
            contact("B", "b", "9", "1"),
            contact("C", "c", "3", "2"),
        ]
    };
    let p = plan(export(), &old, LOCK).unwrap();
    assert_eq!(p.calls(), 2, "{p:?}");
    let b = change_of(&p, "B");
    assert_eq!(b.update.len(), 1);
    assert_eq!(b.update[0].0.name, "PhoneNumber1");
    assert!(b.old.keyed && !b.reset);
    let c = change_of(&p, "C");
    assert!(c.reset && c.update.is_empty());
    assert_eq!(p.baselines.len(), 1);
    let (k, e) = p.baselines.to_vec().remove(0);
    assert_eq!((k.as_str(), e.keyed), ("A", true));
    assert_eq!(e.fields, keyed["A"].fields);
    assert_eq!(e.triggers, keyed["A"].triggers);
    let mut state = old;
    apply(&mut state, &p);
    let again = plan(export(), &state, LOCK).unwrap();
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
                prop_assert!(!p.removals.to_vec().into_iter().any(|r| r.key == key));
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
        // Every row is counted once.
        prop_assert_eq!(
            slow.rows,
            (slow.imports.len() + slow.changes.len() + slow.rejected.len()) as u64 + slow.unchanged
        );
        prop_assert!(slow.duplicates <= slow.rejected.len() as u64);
        let mut fast = plan_with_digest(rows(&next), &state, policy);
        prop_assert!(fast.unchanged_by_hash <= fast.unchanged);
        fast.unchanged_by_hash = 0;
        prop_assert_eq!(fast, slow);
    }
}

fn plan_with_digest(rows: Vec<Outcome>, state: &BTreeMap<String, Entry>, policy: Policy) -> Plan {
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
    assert_eq!(p.duplicates, 1);
    assert!(p.rejected[0]
        .reason
        .contains("appears again (first at row 2)"));
    // B left: locked, found without the digest's help.
    assert_eq!(p.removals.len(), 1);
    assert_eq!(p.removals.to_vec()[0].key, "B");
}

/// `contact(key, name, phone, "1")` with an agent in `ReservedUsersUID`.
fn with_agent(key: &str, name: &str, agent: &str) -> Outcome {
    let Outcome::Contact(mut c) = contact(key, name, "1", "1") else {
        unreachable!()
    };
    let field = fields::by_name("ReservedUsersUID").unwrap();
    let value = FieldValue::Text(agent.into());
    c.hashes
        .push((field.code, HashKey::for_tests().value(&value)));
    c.fields.push((field, value));
    Outcome::Contact(c)
}

#[test]
fn an_agent_changed_later_is_reported_not_sent() {
    let mut state = BTreeMap::new();
    let p = plan([with_agent("A", "a", "agent1")], &state, LOCK).unwrap();
    assert_eq!(
        p.imports.to_vec()[0].fields.len(),
        3,
        "the import sends the agent"
    );
    apply(&mut state, &p);

    // The agent changes with the name: the update sends the name only.
    let p = plan([with_agent("A", "b", "agent2")], &state, LOCK).unwrap();
    let names: Vec<_> = p.changes.to_vec()[0]
        .update
        .iter()
        .map(|(f, _)| f.name)
        .collect();
    assert_eq!(names, ["Name"]);
    assert_eq!(p.warnings.len(), 1);
    assert_eq!(
        p.warnings[0].warning,
        "ReservedUsersUID changed, and the dialler takes it on import only: change it in the jtel portal"
    );
    apply(&mut state, &p);
    // Said once: the new value is stored.
    let p = plan([with_agent("A", "b", "agent2")], &state, LOCK).unwrap();
    assert!(p.is_empty() && p.warnings.is_empty(), "{p:?}");

    // The agent alone changes: no call, a warning, and the new hash stored.
    let p = plan([with_agent("A", "b", "agent1")], &state, LOCK).unwrap();
    assert_eq!((p.calls(), p.warnings.len(), p.baselines.len()), (0, 1, 1));
    assert_eq!(p.unchanged, 1);
}

/// A row with warnings that turns out to be a duplicate is rejected, not synced: its
/// warnings are not listed (its rejection is), with or without the digest.
#[test]
fn a_duplicate_row_has_no_warnings_of_its_own() {
    let state = synced([contact("A", "a", "1", "1")]);
    let warned = || {
        let Outcome::Contact(mut c) = contact("A", "a", "1", "1") else {
            unreachable!()
        };
        c.warnings
            .push("PhoneNumber2 (column `Mobil`) ...: left out".into());
        c.row = 0;
        Outcome::Contact(c)
    };
    for p in [
        plan([contact("A", "a", "1", "1"), warned()], &state, LOCK).unwrap(),
        plan_with_digest(vec![contact("A", "a", "1", "1"), warned()], &state, LOCK),
    ] {
        assert_eq!((p.duplicates, p.rejected.len()), (1, 1), "{p:?}");
        assert!(p.warnings.is_empty(), "{p:?}");
    }
}
