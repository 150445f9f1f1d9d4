//! A removal needs positive evidence that the record left the CRM export. Each test here
//! is a way real exports go wrong (a stray quote in a note, emptied keys, a BOM mid-file,
//! a NUL in a key, a key that still stands elsewhere in the file) and checks that no
//! contact still in the export is locked or deleted, and that the report says why.

use crate::common;

use crate::common::{count, rows, Env};
use serde_json::Value;

/// A job synced with `n` rows, removal guards off (so that nothing but the evidence
/// rules stands between a broken export and the removals).
fn synced(n: usize) -> (Env, Vec<String>) {
    let env = Env::new();
    env.write_config(
        common::TOKEN,
        "max_removals_percent = 100\nmin_rows_percent = 0",
    );
    let all = rows(n, "Köln");
    env.write_rows(&all);
    let (report, code) = env.sync(&[]);
    assert_eq!(
        (code, count(&report, "imported")),
        (0, n as u64),
        "{report}"
    );
    (env, all)
}

fn locked(env: &Env) -> Vec<String> {
    env.contacts()
        .iter()
        .filter(|c| c.locked)
        .map(|c| common::field(c, "UserData").to_string())
        .collect()
}

#[test]
fn a_stray_quote_that_swallows_rows_never_removes_their_contacts() {
    let (env, all) = synced(30);
    let mut next = all.clone();
    // A note opened with a quote on K5's row and closed six lines later: K6..K11 would
    // vanish into one value.
    next[4] = next[4].replace(";Köln;", ";\"Rueckruf ab 14 Uhr;");
    next[10] = next[10].replace(";Köln;", ";Köln\";");
    env.write_rows(&next);
    let (report, code) = env.sync(&[]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(count(&report, "locked"), 0, "{report}");
    assert!(locked(&env).is_empty());
    assert!(count(&report, "withheld_removals") >= 6, "{report}");
    assert_eq!(report["withheld"]["unreadable_rows"], 1, "{report}");
    let reason = report["problems"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("from line 6 to line 12") && reason.contains("stray quote"),
        "{reason}"
    );

    // Fixed in the CRM: nothing to do but the one change the broken row held back.
    env.write_rows(&all);
    let (report, code) = env.sync(&[]);
    assert_eq!((code, count(&report, "locked")), (0, 0), "{report}");
}

#[test]
fn a_key_that_still_stands_in_the_export_is_not_removed() {
    let (env, all) = synced(20);
    // K9 and K3 leave the export; "K9" still stands as a whole value in K10's row (a
    // reference to the old record), "K3" only inside a longer text.
    let mut next: Vec<String> = all
        .iter()
        .filter(|r| !r.starts_with("K9;") && !r.starts_with("K3;"))
        .cloned()
        .collect();
    let k10 = next.iter().position(|r| r.starts_with("K10;")).unwrap();
    next[k10] = next[k10].replace("First10", " K9 ");
    let k12 = next.iter().position(|r| r.starts_with("K12;")).unwrap();
    next[k12] = next[k12].replace("First12", "Haus K3 links");
    env.write_rows(&next);
    let (report, code) = env.sync(&[]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(locked(&env), vec!["K3".to_string()], "{report}");
    assert_eq!(count(&report, "withheld_removals"), 1);
    let found = &report["withheld"]["keys_in_export"];
    assert_eq!(found[0]["user_data"], "K9", "{report}");
    // The header is line 1, K10's row the ninth record (K3 and K9 are gone).
    assert_eq!(found[0]["line"], 9, "{report}");

    let out = env.dialsync(&["sync", "--config", "dialsync.toml"]);
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        human.contains("UserData K9 still stands in the export on line 9"),
        "{human}"
    );
}

#[test]
fn rows_without_a_usable_key_withhold_every_removal() {
    let (env, all) = synced(30);
    // Five keys emptied: those rows could be any contact.
    let mut next = all.clone();
    for r in next.iter_mut().take(5) {
        *r = r
            .split_once(';')
            .map(|(_, rest)| format!(";{rest}"))
            .unwrap();
    }
    next.pop(); // and K30 really left
    env.write_rows(&next);
    let (report, code) = env.sync(&[]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(count(&report, "locked"), 0, "{report}");
    assert!(locked(&env).is_empty());
    assert_eq!(count(&report, "withheld_removals"), 6, "{report}");
    assert_eq!(report["withheld"]["rows_without_key"], 5, "{report}");
    assert_eq!(count(&report, "invalid"), 5);

    // With the keys back, K30 is locked: the doubt is gone.
    let mut fixed = all.clone();
    fixed.pop();
    env.write_rows(&fixed);
    let (report, code) = env.sync(&[]);
    assert_eq!((code, count(&report, "locked")), (0, 1), "{report}");
}

#[test]
fn a_bom_or_nul_in_a_key_never_makes_a_second_contact_or_removes_the_first() {
    let (env, all) = synced(20);
    // UTF-8 from here on: a BOM cannot be written in Windows-1252.
    env.edit_config("encoding = \"windows-1252\"\n", "");
    let write = |rows: &[String]| {
        let mut text = format!("{}\r\n", common::HEADER);
        for r in rows {
            text.push_str(r);
            text.push_str("\r\n");
        }
        std::fs::write(env.path("export.csv"), text).unwrap();
    };
    // Two exports pasted together: the second one's BOM lands before K11; a NUL after K4.
    let mut next = all.clone();
    next[10] = format!("\u{feff}{}", next[10]);
    next[3] = next[3].replacen(';', "\0;", 1);
    write(&next);
    let (report, code) = env.sync(&[]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        (count(&report, "imported"), count(&report, "locked")),
        (0, 0),
        "{report}"
    );
    assert_eq!(env.contacts().len(), 20);
    assert_eq!(report["withheld"]["rows_without_key"], 1, "{report}");
    let reason = report["problems"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("control character"), "{reason}");

    // The BOM alone is no problem at all.
    next[3] = all[3].clone();
    write(&next);
    let (report, code) = env.sync(&[]);
    assert_eq!((code, count(&report, "api_calls")), (0, 1), "{report}");
}

#[test]
fn a_json_record_with_a_null_key_withholds_every_removal() {
    let (env, _) = synced(12);
    env.edit_config(
        "type = \"csv\"\npath = \"export.csv\"\nencoding = \"windows-1252\"",
        "type = \"json\"\npath = \"export.json\"",
    );
    let record = |key: Value, i: usize| {
        serde_json::json!({"CustomerNo": key, "LastName": format!("Name{i}"),
            "FirstName": format!("First{i}"), "Phone": format!("0171 {:07}", 1_000_000 + i),
            "City": "Köln", "Round": "1"})
    };
    // K1..K10 as before, K11 with a null key, K12 gone.
    let mut records: Vec<Value> = (1..=10)
        .map(|i| record(format!("K{i}").into(), i))
        .collect();
    records.push(record(Value::Null, 11));
    std::fs::write(
        env.path("export.json"),
        serde_json::to_vec(&records).unwrap(),
    )
    .unwrap();
    let (report, code) = env.sync(&[]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(count(&report, "locked"), 0, "{report}");
    assert_eq!(count(&report, "withheld_removals"), 2, "{report}");
}

#[test]
fn control_characters_in_values_and_dialler_messages_never_forge_a_log_line() {
    let (env, all) = synced(5);
    let mut next = all.clone();
    next[0] = next[0].replace("Name1", "Other1");
    // A key with a line break (quoted, so the CSV holds it): an invalid row.
    next.push("\"K9\r\nERROR forged by a key\";Name9;First9;0171 1000009;Köln;1".into());
    env.write_rows(&next);
    env.emu
        .reject_next_with("update", 1, "refused\nERROR forged by the dialler");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dialsync"))
        .args(["sync", "--config", "dialsync.toml"])
        .current_dir(env.dir.path())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("refused\\nERROR forged by the dialler"),
        "the message is logged, escaped: {stderr}"
    );
    assert!(
        stdout.contains("refused\\nERROR forged by the dialler"),
        "and reported, escaped: {stdout}"
    );
    for line in stdout.lines().chain(stderr.lines()) {
        assert!(
            !line.trim_start().starts_with("ERROR forged"),
            "a forged line: {line}"
        );
    }
}

/// The jtel portal, as a person working in it: direct calls on the emulator's API.
fn portal(env: &Env) -> (tokio::runtime::Runtime, dialsync::Dialler) {
    let cfg = dialsync::Config::load(&env.path("dialsync.toml")).unwrap();
    let d = dialsync::Dialler::new(&cfg.dialler, &dialsync::Secret::new(common::TOKEN)).unwrap();
    (tokio::runtime::Runtime::new().unwrap(), d)
}

fn by_key(env: &Env, key: &str) -> i64 {
    env.contact(key).id
}

/// Promise: IDs are checked, not trusted. After the dialler renumbered its contacts,
/// a delete by a stored ID would hit another contact: the ID is read first, nothing is
/// deleted, the ID is re-learned, and the next run deletes the right contact.
#[test]
fn a_delete_whose_id_now_holds_another_contact_deletes_nothing() {
    let env = Env::new();
    env.write_config(common::TOKEN, "on_missing = \"delete\"");
    let all = rows(20, "Köln");
    env.write_rows(&all);
    assert_eq!(env.sync(&[]).1, 0);
    assert_eq!(env.emu.renumber(), 20);
    let k7 = by_key(&env, "K7");

    let next: Vec<String> = all
        .iter()
        .filter(|r| !r.starts_with("K7;"))
        .cloned()
        .collect();
    env.write_rows(&next);
    let (report, code) = env.sync(&[]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        (count(&report, "deleted"), count(&report, "stale_ids")),
        (0, 1),
        "{report}"
    );
    assert_eq!(env.contacts().len(), 20, "nothing deleted");
    assert!(!env.requests().iter().any(|r| r.method == "DELETE"));

    let (report, code) = env.sync(&[]);
    assert_eq!((code, count(&report, "deleted")), (0, 1), "{report}");
    assert_eq!(env.contacts().len(), 19);
    assert!(
        env.contacts().iter().all(|c| c.id != k7),
        "K7 is the one deleted"
    );
    env.assert_holds_exactly(&next);
}

/// Promise: a dialler restored under new IDs is not acted on until confirmed: the
/// verification finds every contact under another ID, writes nothing and says so; with
/// --force it re-learns every ID, and the next run puts each contact's lock right. What
/// the verification found waits in a scratch database until it may be written (never
/// in memory), and nothing of it is left behind either way.
#[test]
fn a_renumbered_dialler_is_relearned_only_when_confirmed_and_nothing_stays_staged() {
    let (env, all) = synced(30);
    assert_eq!(env.emu.renumber(), 30);
    let staged = || {
        std::fs::read_dir(env.path("state.downloads"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with("verify-"))
                    .count()
            })
            .unwrap_or(0)
    };
    let verify = |extra: &[&str]| {
        let out = env.verify_at(extra, None);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), v)
    };

    let (code, v) = verify(&[]);
    assert_eq!(code, Some(5), "{v}");
    assert_eq!(staged(), 0);
    // Nothing was written: the same verification finds the same, and re-learns it now.
    let (code, v) = verify(&["--force"]);
    assert_eq!(code, Some(0), "{v}");
    let found = &v["jobs"][0]["verified"];
    assert_eq!(
        (&found["relearned"], &found["missing"], &found["confirmed"]),
        (&30.into(), &0.into(), &0.into()),
        "{v}"
    );
    assert_eq!(staged(), 0);

    let (report, code) = env.sync(&[]);
    assert_eq!((code, count(&report, "deleted")), (0, 0), "{report}");
    env.assert_holds_exactly(&all);
    let (code, v) = verify(&[]);
    assert_eq!(
        (code, &v["jobs"][0]["verified"]["confirmed"]),
        (Some(0), &30.into()),
        "{v}"
    );
}

/// Promise: a dialler restored under new IDs, with a thousand contacts or more: `verify
/// --force` re-learns them by writing the entries afresh in one pass (not one by one in
/// place, which a repack at the end of the run would have to undo), and forgets those gone
/// from the dialler. Killed at any step of that rewrite, nothing is lost: the next open
/// finishes it or the next verification does it again. The next sync imports what was
/// forgotten, deletes nothing, and leaves the dialler holding exactly the export.
#[test]
fn a_renumbered_dialler_of_many_contacts_is_relearned_in_one_rewrite_even_when_killed() {
    // From 1000 changes the entries are rewritten.
    let n = 1200;
    for point in common::REPACK_STEPS {
        let (env, all) = synced(n);
        assert_eq!(env.emu.renumber(), n);
        for key in ["K3", "K700"] {
            assert!(env.emu.remove_contact(by_key(&env, key)));
        }
        let verify = |failpoint: Option<&str>| env.verify_at(&["--force"], failpoint);
        let what = format!("{point:?}");
        let v = match point {
            None => verify(None),
            Some(point) => {
                use std::os::unix::process::ExitStatusExt;
                let killed = verify(Some(point));
                assert_eq!(killed.status.signal(), Some(9), "{what}: {killed:?}");
                // Again: whatever the kill left undone, this one does.
                verify(None)
            }
        };
        assert_eq!(v.status.code(), Some(0), "{what}: {v:?}");
        let v: Value = serde_json::from_slice(&v.stdout).unwrap();
        let found = &v["jobs"][0]["verified"];
        let done = (
            found["relearned"].as_u64().unwrap(),
            found["missing"].as_u64().unwrap(),
            found["confirmed"].as_u64().unwrap(),
        );
        match point {
            // The kill came before the rewrite was marked: the entries are as they were.
            None | Some("repack-copied") => assert_eq!(done, (n as u64 - 2, 2, 0), "{what}: {v}"),
            // The open finished the rewrite before the verification read the entries.
            _ => assert_eq!(done, (0, 0, n as u64 - 2), "{what}: {v}"),
        }
        let notes = v["jobs"][0]["notes"].to_string();
        assert!(
            !notes.contains("repacked"),
            "{what}: written afresh, not repacked: {notes}"
        );
        env.assert_nothing_left_beside_the_state(&what);
        let left = env.scratch_files();
        assert!(
            !left.iter().any(|f| f.starts_with("verify-")),
            "{what}: {left:?}"
        );

        let (report, code) = env.sync(&[]);
        assert_eq!(code, 0, "{what}: {report}");
        assert_eq!(
            (
                count(&report, "imported"),
                count(&report, "deleted"),
                count(&report, "locked")
            ),
            (2, 0, 0),
            "{what}: {report}"
        );
        env.assert_holds_exactly(&all);
        assert_eq!(env.contacts().len(), n, "{what}: no duplicate");
    }
}

/// Promise: a dialler restored from an older backup holds other values for most contacts
/// under their IDs: the verification (which writes them afresh, a thousand or more) marks
/// each to be sent again, and the next sync puts back what the export says, one update
/// per contact.
#[test]
fn values_the_dialler_lost_for_most_contacts_are_sent_again_after_the_rewrite() {
    let n = 1200;
    let (env, all) = synced(n);
    let (rt, d) = portal(&env);
    let changed = 1100;
    for i in 1..=changed {
        let id = by_key(&env, &format!("K{i}"));
        rt.block_on(d.update(&serde_json::json!({"ID": id, "City": "Bonn"})))
            .unwrap();
    }
    let out = env.verify_at(&[], None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let found = &v["jobs"][0]["verified"];
    assert_eq!(
        (
            &found["values_differ"],
            &found["confirmed"],
            &found["relearned"]
        ),
        (&changed.into(), &n.into(), &0.into()),
        "{v}"
    );
    let notes = v["jobs"][0]["notes"].to_string();
    assert!(!notes.contains("repacked"), "written afresh: {notes}");

    let before = env.requests().len();
    let (report, code) = env.sync(&[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        (count(&report, "updated"), count(&report, "imported")),
        (changed as u64, 0),
        "{report}"
    );
    assert_eq!(
        env.requests_since(before)
            .iter()
            .filter(|r| r.method != "GET")
            .count(),
        changed,
        "one call per contact put back"
    );
    env.assert_holds_exactly(&all);
}

/// Promise: what a verification or a rebuild killed before its end left staged takes no
/// disk space for long and is never applied: the next command that opens the state
/// removes it.
#[test]
fn a_verification_or_rebuild_killed_before_its_end_leaves_nothing_after_the_next_open() {
    let (env, all) = synced(10);
    let downloads = env.path("state.downloads");
    let left = ["verify-leads", "rebuild-leads"].map(|name| downloads.join(name));
    for dir in &left {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("db"), b"what a killed pass staged").unwrap();
    }
    let (report, code) = env.sync(&[]);
    assert_eq!((code, count(&report, "api_calls")), (0, 1), "{report}");
    for dir in &left {
        assert!(!dir.exists(), "{} is left", dir.display());
    }
    env.assert_holds_exactly(&all);
}

/// Promise: a dialler that lost its data (restored empty, wiped, another server behind
/// the same URL) stops the run with a clear message instead of acting on IDs it no
/// longer knows; confirmed with --force, the contacts come back.
#[test]
fn a_dialler_restored_empty_stops_the_run_until_confirmed() {
    let (env, all) = synced(30);
    env.emu.reset();
    let n = env.requests().len();
    let out = env.dialsync(&["verify", "--config", "dialsync.toml"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "{stdout}");
    assert!(
        stdout.contains("knows only 0 of the 30") && stdout.contains("restored from a backup"),
        "{stdout}"
    );
    let sent = env.requests_since(n);
    assert_eq!(sent.len(), 1, "one listing: {sent:?}");
    assert_eq!(sent[0].method, "GET");

    // A sync that verifies stops the same way; without --force nothing is sent.
    let (report, code) = env.sync(&["--verify"]);
    assert_eq!(code, 5, "{report}");
    assert!(env.contacts().is_empty());

    let (report, code) = env.sync(&["--verify", "--force"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["verified"]["missing"], 30, "{report}");
    assert_eq!(count(&report, "imported"), 30);
    env.assert_holds_exactly(&all);
    let (report, _) = env.sync(&[]);
    assert_eq!(
        count(&report, "api_calls"),
        1,
        "the token check only: {report}"
    );

    let status = env.dialsync(&["status", "--config", "dialsync.toml"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("last verified:"), "{status}");
}

/// Promise: the state is read back and repaired every `verify_every`: a contact deleted
/// in the portal is imported again, one re-created under a new ID is re-learned (and a
/// later lock hits it, not whatever holds its old ID), a value changed behind dialsync's
/// back is sent again.
#[test]
fn verification_relearns_ids_restores_lost_contacts_and_values() {
    let env = Env::new();
    env.write_config(
        common::TOKEN,
        "verify_every = \"0s\"\nmax_removals_percent = 100",
    );
    let all = rows(30, "Köln");
    env.write_rows(&all);
    assert_eq!(env.sync(&[]).1, 0);

    let (rt, d) = portal(&env);
    for k in ["K3", "K4", "K10"] {
        assert!(env.emu.remove_contact(by_key(&env, k)));
    }
    let k10 = &all[9];
    let cols: Vec<&str> = k10.split(';').collect();
    rt.block_on(d.import(
        &serde_json::json!({"DiallerCampaignsID": 538, "UserData": "K10", "Name": cols[1],
            "FirstName": cols[2], "PhoneNumber1": "+491711000010", "City": cols[4]}),
        dialsync::ImportFlags {
            overwrite_duplicates: true,
            reset_contact: None,
            unlock_contact: None,
        },
    ))
    .unwrap();
    rt.block_on(d.update(&serde_json::json!({"ID": by_key(&env, "K12"), "City": "Bonn"})))
        .unwrap();
    let n = env.requests().len();

    let (report, code) = env.sync(&[]);
    assert_eq!(code, 0, "{report}");
    let v = &report["verified"];
    assert_eq!(
        (
            &v["relearned"],
            &v["missing"],
            &v["values_differ"],
            &v["confirmed"]
        ),
        (&1.into(), &2.into(), &1.into(), &27.into()),
        "{report}"
    );
    // One listing, two imports, the City of K12, and K10 unlocked (its lock unknown).
    assert_eq!(
        (
            count(&report, "imported"),
            count(&report, "updated"),
            count(&report, "unlocked"),
            count(&report, "api_calls")
        ),
        (2, 1, 1, 5),
        "{report}"
    );
    assert_eq!(env.requests().len() - n, 5);
    env.assert_holds_exactly(&all);

    // K10 leaves: the lock goes to its new ID.
    env.leave_and_lock(&all, "K10", "K10 leaves");
}

/// A dialler restored empty within `verify_every`: every changed contact finds itself
/// gone and is imported again (each re-import flushes its journal entry, many at once:
/// sled's concurrent `flush_async` used to hang here), and a verification then finds
/// them all.
#[test]
fn changed_contacts_found_gone_are_imported_again_all_at_once() {
    let env = Env::new();
    env.edit_config("token = ", "max_concurrency = 16\ntoken = ");
    let all = rows(300, "Köln");
    env.write_rows(&all);
    assert_eq!(env.sync(&[]).1, 0);
    env.emu.reset();
    let moved = rows(300, "Bonn");
    env.write_rows(&moved);
    let (report, code) = env.sync(&[]);
    assert_eq!((code, count(&report, "imported")), (0, 300), "{report}");
    env.assert_holds_exactly(&moved);
    let out = env.verify_at(&[], None);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["jobs"][0]["verified"]["confirmed"], 300, "{v}");
}
