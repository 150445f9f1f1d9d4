use super::*;
use std::path::Path;

use serde::Serialize;

use crate::key::key_hash;
use crate::state::hashing::{HashKey, KEY_BYTES};
use crate::state::repack::Worn;

fn entry() -> Entry {
    Entry {
        id: 100_001,
        fields: vec![(4, 42), (20, 7)],
        triggers: vec![("Round".into(), 9)],
        locked: true,
        last_op: LastOp::Locked,
        last_run: 1_700_000_000,
        row: 0x1234_5678_9abc_def0,
        phones: 0x0fed_cba9_8765_4321,
        keyed: true,
    }
}

#[test]
fn entries_round_trip_and_stay_small() {
    let e = entry();
    let bytes = e.encode();
    assert_eq!(Entry::decode(&bytes), Some(e));
    assert!(bytes.len() < 48, "{} bytes", bytes.len());
    assert_eq!(Entry::decode(&[99, 1, 2]), None);
}

#[test]
fn second_open_is_a_clear_error_and_state_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    {
        let store = Store::open(&path).unwrap();
        store.job("a").unwrap().put("K1", &entry()).unwrap();
        let err = Store::open(&path).err().unwrap();
        assert!(matches!(err, StateError::Locked { .. }), "{err:?}");
        assert!(err
            .to_string()
            .contains("in use by another dialsync process"));
    }
    // sled's background threads may hold the dropped database (and its file lock) a
    // moment longer; within one process there is nothing to wait on but the lock.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let store = loop {
        match Store::open(&path) {
            Err(StateError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => break other.unwrap(),
        }
    };
    let job = store.job("a").unwrap();
    assert_eq!(job.get("K1").unwrap(), Some(entry()));
    assert!(store.job("b").unwrap().is_empty());
}

/// Promise: the state is private, whatever the umask, also one an older version
/// created world-readable.
#[test]
fn the_state_is_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    std::fs::create_dir(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(path.join("old-file"), b"x").unwrap();
    std::fs::set_permissions(
        path.join("old-file"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    // SAFETY: umask has no preconditions; Store::open narrows it again.
    #[allow(unsafe_code)]
    unsafe {
        libc::umask(0o022)
    };
    let store = Store::open(&path).unwrap();
    store.job("a").unwrap().put("K1", &entry()).unwrap();
    store.db.flush().unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o700);
    let mut files = 0;
    let mut stack = vec![path.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                assert_eq!(mode(&p), 0o700, "{}", p.display());
                stack.push(p);
            } else {
                assert_eq!(mode(&p), 0o600, "{}", p.display());
                files += 1;
            }
        }
    }
    assert!(files >= 3, "sled's files and the old one: {files}");

    // The digest beside the state, written with the umask widened again.
    #[allow(unsafe_code)]
    // SAFETY: as above.
    unsafe {
        libc::umask(0o022)
    };
    let job = store.job("a").unwrap();
    let saved = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(job.save_digest());
    #[allow(unsafe_code)]
    // SAFETY: as above.
    unsafe {
        libc::umask(0o077)
    };
    saved.unwrap();
    let digest = job.digest_file();
    assert_eq!(mode(digest.parent().unwrap()), 0o700);
    assert_eq!(mode(&digest), 0o600);
}

#[test]
fn root_does_not_open_a_state_owned_by_the_service_user() {
    // Only root can hand a directory to another user; as anyone else this test has
    // nothing to check (CI runs as root).
    #[allow(unsafe_code)]
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    std::fs::create_dir(&path).unwrap();
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    let err = Store::open(&path).err().expect("refused");
    let msg = err.to_string();
    assert!(matches!(err, StateError::ForeignOwner { .. }), "{msg}");
    assert!(msg.contains("sudo -u"), "{msg}");
    // Nothing was written into it.
    assert_eq!(std::fs::read_dir(&path).unwrap().count(), 0);
}

#[test]
fn version_1_entries_and_journal_still_decode() {
    let e = entry();
    #[derive(Serialize)]
    struct V1<'a>(i64, &'a [(u8, u64)], &'a [(String, u64)], bool, LastOp, i64);
    let mut bytes = vec![1u8];
    bytes.extend(
        postcard::to_stdvec(&V1(
            e.id,
            &e.fields,
            &e.triggers,
            e.locked,
            e.last_op,
            e.last_run,
        ))
        .unwrap(),
    );
    assert_eq!(
        Entry::decode(&bytes),
        Some(Entry {
            row: 0,
            phones: 0,
            keyed: false,
            ..e.clone()
        })
    );
    let mut bytes = vec![1u8];
    bytes.extend(postcard::to_stdvec(&(&e.fields, &e.triggers)).unwrap());
    assert_eq!(
        Pending::decode(&bytes),
        Some(Pending {
            fields: e.fields.clone(),
            triggers: e.triggers.clone(),
            row: 0,
            phones: 0,
            keyed: false,
        })
    );
}

/// Entries with unkeyed hashes (version 2) read as such and are written back as such
/// until the planner migrates them; keyed ones are version 4, and those of version 3 (no
/// phones hash) read with none.
#[test]
fn unkeyed_entries_keep_their_version_until_migrated() {
    let keyed = entry();
    let bytes = keyed.encode();
    assert_eq!(bytes[0], 4);
    assert_eq!(Entry::decode(&bytes), Some(keyed.clone()));
    // Version 3: the layout of 2 (which `encode` writes for unkeyed ones), keyed.
    let mut v3 = Entry {
        keyed: false,
        ..keyed.clone()
    }
    .encode();
    v3[0] = 3;
    assert_eq!(
        Entry::decode(&v3),
        Some(Entry {
            phones: 0,
            ..keyed.clone()
        })
    );
    let old = Entry {
        keyed: false,
        phones: 0,
        ..keyed
    };
    let bytes = old.encode();
    assert_eq!(bytes[0], 2);
    assert_eq!(Entry::decode(&bytes), Some(old));
}

/// The secret lives beside the database, 0600, and a store opened again uses it.
#[test]
fn the_key_is_kept_beside_the_database() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let first = Store::open(&path).unwrap().hash_key().bytes().to_owned();
    let key = key_path(&path);
    assert_eq!(key, dir.path().join("state.key"));
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(
        (meta.len(), meta.permissions().mode() & 0o777),
        (KEY_BYTES as u64, 0o600)
    );
    assert!(!path.join("state.key").exists());
    let again = HashKey::from_bytes(first);
    assert_eq!(load_or_create_key(&path).unwrap().check(), again.check());
}

/// The stored digest always matches the entries: it goes (durably) before the first
/// entry write, comes back at the end of the run, and a handle that finds none
/// rebuilds it from the entries.
#[tokio::test]
async fn the_digest_follows_the_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let digest_of = |job: &JobState| -> Vec<(u64, u64, bool)> {
        let d = job.digest().unwrap().expect("a digest").probe();
        let mut items = Vec::new();
        job.for_each(&mut |k, e| {
            let i = d.find(key_hash(k)).expect("every entry is in the digest");
            assert_eq!((d.row(i), d.locked(i)), (e.row, e.locked));
            items.push((key_hash(k), e.row, e.locked));
        })
        .unwrap();
        assert_eq!(d.len(), items.len());
        items
    };

    let job = store.job("a").unwrap();
    assert_eq!(
        job.digest().unwrap().expect("a job without entries").len(),
        0,
        "empty before the first run"
    );
    job.put("K1", &entry()).unwrap();
    job.put(
        "K2",
        &Entry {
            locked: false,
            row: 7,
            ..entry()
        },
    )
    .unwrap();
    job.save_digest().await.unwrap();
    assert_eq!(digest_of(&job).len(), 2);
    assert_eq!(store.job("a").unwrap().len(), 2, "counted from the digest");

    // A new handle (the next run) reads it; its first write removes the stored copy.
    let next = store.job("a").unwrap();
    assert_eq!(digest_of(&next).len(), 2);
    next.remove("K1").unwrap();
    next.put("K3", &Entry { row: 9, ..entry() }).unwrap();
    assert!(
        store.job("a").unwrap().digest().unwrap().is_none(),
        "stored copy gone"
    );
    assert_eq!(
        digest_of(&next).len(),
        2,
        "K2 and K3, from the old one and the changes"
    );
    next.save_digest().await.unwrap();
    assert_eq!(digest_of(&store.job("a").unwrap()).len(), 2);

    // A run that writes every entry (a campaign-wide change), removes one and brings one
    // back: the digest is brought up to date in place, not read from the entries.
    let all = store.job("a").unwrap();
    all.put("K2", &Entry { row: 11, ..entry() }).unwrap();
    all.put(
        "K3",
        &Entry {
            row: 12,
            locked: false,
            ..entry()
        },
    )
    .unwrap();
    all.remove("K2").unwrap();
    all.put("K1", &Entry { row: 13, ..entry() }).unwrap();
    all.save_digest().await.unwrap();
    let items = digest_of(&store.job("a").unwrap());
    assert_eq!(items.len(), 2, "K1 and K3");
    assert!(items.contains(&(key_hash("K1"), 13, true)));
    all.put("K2", &Entry { row: 7, ..entry() }).unwrap();
    all.remove("K1").unwrap();
    all.save_digest().await.unwrap();
    assert_eq!(digest_of(&store.job("a").unwrap()).len(), 2, "K2 and K3");

    // A run that stopped before storing it: the next one builds it from the entries.
    let interrupted = store.job("a").unwrap();
    interrupted.put("K4", &entry()).unwrap();
    drop(interrupted);
    let after = store.job("a").unwrap();
    assert!(after.digest().unwrap().is_none());
    after.save_digest().await.unwrap();
    assert_eq!(digest_of(&store.job("a").unwrap()).len(), 3);

    // A stored digest that cannot be read (damaged, or another version's) is not
    // used, and the next run stores a good one even when it writes nothing else.
    store
        .db
        .open_tree("digest")
        .unwrap()
        .insert("a", &b"garbage"[..])
        .unwrap();
    let damaged = store.job("a").unwrap();
    assert!(damaged.digest().unwrap().is_none());
    assert_eq!(damaged.len(), 3, "counted without a digest");
    damaged.save_digest().await.unwrap();
    assert_eq!(digest_of(&store.job("a").unwrap()).len(), 3);

    // Emptied (state rebuild): an empty digest plus what is written after.
    let rebuilt = store.job("a").unwrap();
    rebuilt.clear().unwrap();
    rebuilt.put("K9", &entry()).unwrap();
    assert_eq!(digest_of(&rebuilt).len(), 1);
}

/// The digest's file is used only while it matches the seal in the database. A file
/// changed, missing, or from another copy of the state is not used; the seal goes before
/// the first entry write all the same, so a file put back after a crash is not taken for
/// the digest of entries it no longer describes.
#[tokio::test]
async fn a_digest_file_is_used_only_while_it_matches_its_seal() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let job = store.job("a").unwrap();
    job.put("K1", &entry()).unwrap();
    job.put("K2", &Entry { row: 7, ..entry() }).unwrap();
    job.save_digest().await.unwrap();
    let file = job.digest_file();
    let good = std::fs::read(&file).unwrap();
    assert_eq!(store.job("a").unwrap().digest().unwrap().unwrap().len(), 2);

    // Changed (a byte of a row hash): not used, and the end of the run stores a good one.
    let mut changed = good.clone();
    let last = changed.len() - 3;
    changed[last] ^= 1;
    std::fs::write(&file, &changed).unwrap();
    let run = store.job("a").unwrap();
    assert!(run.digest().unwrap().is_none());
    assert_eq!(run.len(), 2, "counted from the entries");
    run.save_digest().await.unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), good);
    assert_eq!(store.job("a").unwrap().digest().unwrap().unwrap().len(), 2);

    // Missing while a run writes an entry and is killed before it stores a new one; the
    // old file put back is not used.
    std::fs::rename(&file, dir.path().join("aside")).unwrap();
    let killed = store.job("a").unwrap();
    assert!(killed.digest().unwrap().is_none());
    killed.put("K3", &entry()).unwrap();
    drop(killed);
    std::fs::rename(dir.path().join("aside"), &file).unwrap();
    let next = store.job("a").unwrap();
    assert!(
        next.digest().unwrap().is_none(),
        "its seal went with the write"
    );
    next.save_digest().await.unwrap();
    assert_eq!(store.job("a").unwrap().digest().unwrap().unwrap().len(), 3);
}

/// The first job's digest file is read while the database opens. What was read is used
/// only if the opened database's seal is that file's: a digest stored by another process
/// between the read and the open (which waits for that process's lock) is read again
/// from its file, never taken from the stale bytes. (Read here from copies of the file,
/// so that what the thread reads does not depend on when it runs.)
#[tokio::test]
async fn a_digest_read_ahead_is_used_only_if_the_opened_state_seals_it() {
    use crate::state::digest::ReadAhead;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let keys = |job: &JobState| -> Option<Vec<u64>> {
        let d = job.digest().unwrap()?.probe();
        let mut found: Vec<u64> = ["K1", "K2", "K3"]
            .iter()
            .map(|k| key_hash(k))
            .filter(|&h| d.find(h).is_some())
            .collect();
        found.sort_unstable();
        Some(found)
    };
    let sorted = |keys: &[&str]| {
        let mut v: Vec<u64> = keys.iter().map(|k| key_hash(k)).collect();
        v.sort_unstable();
        Some(v)
    };
    {
        let store = Store::open(&path).unwrap();
        let job = store.job("a").unwrap();
        job.put("K1", &entry()).unwrap();
        job.put("K2", &Entry { row: 7, ..entry() }).unwrap();
        job.save_digest().await.unwrap();
    }
    assert!(Store::read_digest_ahead(&path, "a").is_some());
    assert!(Store::read_digest_ahead(&path, "b").is_none(), "no file");
    let file = crate::state::digest_file(&path, "a");
    let copy = dir.path().join("copy.digest");
    std::fs::copy(&file, &copy).unwrap();

    // Read ahead, and the file the state seals: used. The file itself is gone by the
    // time the digest is asked for, so nothing else could have given it.
    let ahead = ReadAhead::start("a", copy.clone());
    let store = Store::open(&path).unwrap().with_digest_read_ahead(ahead);
    // Another job's handle leaves it alone.
    assert_eq!(keys(&store.job("b").unwrap()), Some(vec![]));
    let aside = dir.path().join("aside");
    std::fs::rename(&file, &aside).unwrap();
    assert_eq!(keys(&store.job("a").unwrap()), sorted(&["K1", "K2"]));
    // Only the first handle on the job's state gets it: the next one reads the file.
    assert_eq!(keys(&store.job("a").unwrap()), None);
    std::fs::rename(&aside, &file).unwrap();
    drop(store);

    // Another process's run writes K3 and stores its digest after the read: the bytes
    // read are not used, the file the new seal names is.
    let stale = ReadAhead::start("a", copy);
    {
        let store = Store::open(&path).unwrap();
        let job = store.job("a").unwrap();
        job.put("K3", &entry()).unwrap();
        job.save_digest().await.unwrap();
    }
    let store = Store::open(&path).unwrap().with_digest_read_ahead(stale);
    let job = store.job("a").unwrap();
    assert_eq!(keys(&job), sorted(&["K1", "K2", "K3"]));
    assert!(!job.holds_read_ahead());
    drop((job, store));

    // A state begun anew beside an old digest file: the first run starts from the empty
    // digest, and lets go of the bytes read ahead at once (17 MB at a million) rather
    // than carry them through its imports.
    let fresh = dir.path().join("fresh");
    let store = Store::open(&fresh).unwrap();
    drop(store);
    let old = crate::state::digest_file(&fresh, "a");
    std::fs::create_dir_all(old.parent().unwrap()).unwrap();
    std::fs::copy(&file, &old).unwrap();
    let ahead = Store::read_digest_ahead(&fresh, "a");
    assert!(ahead.is_some());
    let store = Store::open(&fresh).unwrap().with_digest_read_ahead(ahead);
    let job = store.job("a").unwrap();
    assert!(job.holds_read_ahead());
    assert_eq!(keys(&job), Some(vec![]), "the empty digest of a first run");
    assert!(!job.holds_read_ahead(), "let go of at the first need");
}

/// An older version kept the digest itself in the database: it is not used, and the
/// first run stores a file and its seal in its place.
#[tokio::test]
async fn an_older_versions_digest_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let job = store.job("a").unwrap();
    job.put("K1", &entry()).unwrap();
    let old = crate::state::digest::Digest::build(vec![(key_hash("K1"), 1, false)]).unwrap();
    store
        .db
        .open_tree("digest")
        .unwrap()
        .insert("a", old.as_bytes())
        .unwrap();
    let run = store.job("a").unwrap();
    assert!(run.digest().unwrap().is_none());
    run.save_digest().await.unwrap();
    assert!(run.digest_file().exists());
    assert_eq!(store.job("a").unwrap().digest().unwrap().unwrap().len(), 1);
}

/// The history keeps the newest `keep` runs, newest first; a run recorded again (its
/// flush failed) replaces its record; a smaller `keep` drops all that is beyond it; the
/// last change is kept apart from the history.
#[test]
fn the_history_keeps_the_newest_runs_and_the_last_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let rec = |id: &str, note: &str| format!(r#"{{"run_id":"{id}","note":"{note}"}}"#);
    let ids = |store: &Store| -> Vec<String> {
        store
            .history("j", 100)
            .unwrap()
            .iter()
            .map(|r| serde_json::from_slice::<serde_json::Value>(r).unwrap()["run_id"].to_string())
            .collect()
    };
    store
        .record_run("j", rec("r1", "").as_bytes(), true, 3)
        .unwrap();
    for i in 2..=5 {
        store
            .record_run("j", rec(&format!("r{i}"), "").as_bytes(), false, 3)
            .unwrap();
    }
    assert_eq!(ids(&store), [r#""r5""#, r#""r4""#, r#""r3""#]);
    store
        .record_run("j", rec("r5", "again").as_bytes(), false, 3)
        .unwrap();
    assert_eq!(ids(&store).len(), 3);
    assert!(String::from_utf8(store.history("j", 1).unwrap().remove(0))
        .unwrap()
        .contains("again"));
    store
        .record_run("j", rec("r6", "").as_bytes(), false, 1)
        .unwrap();
    assert_eq!(ids(&store), [r#""r6""#]);
    assert!(store.find_run("r6").unwrap().is_some());
    assert!(store.find_run("r1").unwrap().is_none());
    // The last change outlives its place in the history.
    let last = store.last_change("j").unwrap().unwrap();
    assert!(String::from_utf8(last).unwrap().contains("r1"));
    assert_eq!(store.history_jobs(), ["j"]);
    // The last run is the history's newest record; a state from before the history has
    // only the one record older versions kept.
    let last = store.last_run("j").unwrap().unwrap();
    assert!(String::from_utf8(last).unwrap().contains("r6"));
    store
        .db
        .open_tree("runs")
        .unwrap()
        .insert("old", rec("r0", "legacy").as_bytes())
        .unwrap();
    let legacy = store.last_run("old").unwrap().unwrap();
    assert!(String::from_utf8(legacy).unwrap().contains("legacy"));
    assert!(store.last_run("none").unwrap().is_none());
}

fn pending(row: u64) -> Pending {
    Pending {
        fields: vec![(4, row)],
        triggers: Vec::new(),
        row,
        phones: row,
        keyed: true,
    }
}

/// The journal's window records read as the per-contact records they stand for; a
/// closed window leaves only the contacts whose outcome is unknown, each with its own
/// record (a settled contact's own mark, as a rebuild leaves, goes with it); and a
/// window a crash left becomes records per contact, without the imports that were
/// stored.
#[test]
fn journal_windows_stand_for_their_contacts_until_closed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let job = store.job("a").unwrap();
    job.put_in_flight("M1", in_doubt::FIELDS).unwrap();
    job.put_window(
        1,
        &[("I1", pending(1)), ("I2", pending(2))],
        &[("M1", in_doubt::LOCK), ("M2", in_doubt::GONE)],
    )
    .unwrap();
    let keys =
        |p: Vec<(String, Pending)>| p.into_iter().map(|(k, p)| (k, p.row)).collect::<Vec<_>>();
    assert_eq!(
        keys(job.pending().unwrap()),
        [("I1".into(), 1), ("I2".into(), 2)]
    );
    let marks = job.in_flight().unwrap();
    assert_eq!(marks.get("M1"), Some(in_doubt::FIELDS | in_doubt::LOCK));
    assert_eq!(marks.get("M2"), Some(in_doubt::GONE));
    assert_eq!(marks.len(), 2);

    // Closed with I2's import and M2's delete of unknown outcome: they alone stay.
    job.put("I1", &entry()).unwrap();
    let open: std::collections::HashSet<String> = ["I2".into(), "M2".into()].into();
    job.close_window(1, &open).unwrap();
    assert_eq!(keys(job.pending().unwrap()), [("I2".into(), 2)]);
    let marks = job.in_flight().unwrap();
    assert_eq!(
        marks.get("M1"),
        None,
        "M1's own mark went with its settled call"
    );
    assert_eq!(marks.get("M2"), Some(in_doubt::GONE));
    assert_eq!(marks.len(), 1);
    assert_eq!(job.settle_windows().unwrap(), 0, "no window is left");

    // A window a crash left: per contact, less the import stored meanwhile.
    job.clear_pending("I2").unwrap();
    job.clear_in_flight("M2").unwrap();
    job.put_in_flight("M1", in_doubt::FIELDS).unwrap();
    job.put_window(
        2,
        &[("I1", pending(1)), ("I3", pending(3))],
        &[("M1", in_doubt::LOCK)],
    )
    .unwrap();
    assert_eq!(
        job.settle_windows().unwrap(),
        2,
        "its imports' record and its marks'"
    );
    assert_eq!(keys(job.pending().unwrap()), [("I3".into(), 3)]);
    assert_eq!(
        job.in_flight().unwrap().get("M1"),
        Some(in_doubt::FIELDS | in_doubt::LOCK)
    );
    // Now per contact: clearing a contact's record clears it.
    job.clear_pending("I3").unwrap();
    job.clear_in_flight("M1").unwrap();
    assert!(job.pending().unwrap().is_empty());
    assert!(job.in_flight().unwrap().is_empty());
    assert!(job.pending.iter().next().is_none() && job.in_flight.iter().next().is_none());
}

/// A rebuild's (and a verification's) scratch is a database of its own beside the state,
/// gone from disk as soon as it is dropped;
/// the scratch tree an older version kept in the state itself is dropped.
#[test]
fn a_rebuilds_scratch_is_outside_the_state_and_gone_when_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let store = Store::open(&path).unwrap();
    let old = store.db.open_tree("scratch/a").unwrap();
    old.insert("K1", "left by an older version").unwrap();
    let job = store.job("a").unwrap();
    let scratch = job.scratch().unwrap();
    let at = dir.path().join("state.downloads/rebuild-a");
    assert!(at.is_dir());
    scratch.insert("K1", "candidate").unwrap();
    assert!(!store
        .db
        .tree_names()
        .iter()
        .any(|n| n.as_ref() == b"scratch/a"));
    // A handle of its tree may outlive it (the rebuild's listing holds one): the
    // database is gone from disk all the same, at once.
    let tree = sled::Tree::clone(&scratch);
    drop(scratch);
    assert!(!at.exists(), "removed with the scratch");
    drop(tree);

    let verifying = job.verify_scratch().unwrap();
    let at = dir.path().join("state.downloads/verify-a");
    verifying
        .open_tree("elsewhere")
        .unwrap()
        .insert("K1", "candidate")
        .unwrap();
    assert!(at.is_dir());
    drop(verifying);
    assert!(!at.exists(), "removed with the scratch");
}

/// A run's staged outcomes are kept in a scratch database beside the state, not in it
/// (a million staged and removed left 50 MB of page records in every later open); the
/// commit moves them to the delivered ones and removes the scratch database. What a
/// crashed run left (its scratch folder, or the tree an older version staged in) is gone
/// at the next run's start.
#[test]
fn staged_outcomes_are_outside_the_state_and_gone_once_committed() {
    use crate::state::Outcome;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let store = Store::open(&path).unwrap();
    let old = store.db.open_tree("outstaged/a").unwrap();
    old.insert("K9", "left by an older version").unwrap();
    let at = dir.path().join("state.downloads/outcomes-a");
    std::fs::create_dir_all(at.join("left by a crashed run")).unwrap();
    let job = store.job("a").unwrap();
    job.clear_staged().unwrap();
    assert!(!at.exists(), "a crashed run's scratch folder is removed");
    let outcome = |key: &str, tries| Outcome {
        user_data: key.to_string(),
        contact_id: 7,
        tries,
        ..Outcome::default()
    };
    job.stage_outcome(&outcome("K2", 1)).unwrap();
    job.stage_outcome(&outcome("K1", 2)).unwrap();
    assert!(at.is_dir());
    let names = store.db.tree_names();
    assert!(!names.iter().any(|n| n.starts_with(b"outstaged")));
    let staged = job.staged_after(None, 10).unwrap();
    let keys: Vec<&str> = staged.iter().map(|o| o.user_data.as_str()).collect();
    assert_eq!(keys, ["K1", "K2"], "in UserData order");
    assert_eq!(job.staged_after(Some("K1"), 10).unwrap().len(), 1);
    assert!(
        job.delivered_outcomes().unwrap().is_none(),
        "not delivered before the commit"
    );
    job.commit_staged().unwrap();
    assert!(!at.exists(), "removed once committed");
    assert!(job.staged_after(None, 10).unwrap().is_empty());
    let delivered = job.delivered_outcomes().unwrap().unwrap();
    assert!(delivered.get("K3").unwrap().is_none());
    let delivered = delivered.get("K1").unwrap().unwrap();
    assert_eq!(delivered.outcome("K1").unwrap(), outcome("K1", 2));
    assert_eq!(delivered.hash(), Some(outcome("K1", 2).hash()));
}

/// A state at `<dir>/state` whose job `j` holds an entry for K1, closed.
fn state_holding_k1() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let store = Store::open(&path).unwrap();
    store.job("j").unwrap().put("K1", &entry()).unwrap();
    (dir, path)
}

#[test]
fn a_compaction_with_an_old_a_new_and_a_moved_database_is_left_to_the_operator() {
    let (dir, path) = state_holding_k1();
    // Not a state the compaction leaves: which database is the state is not known.
    for leftover in ["state.compact", "state.before-compact"] {
        std::fs::create_dir(dir.path().join(leftover)).unwrap();
    }
    std::fs::write(dir.path().join("state.compact-done"), "").unwrap();
    let e = Store::open(&path).err().expect("refused").to_string();
    assert!(e.contains("cannot open the state database"), "{e}");
    let source = format!("{:?}", Store::open(&path).err().unwrap());
    assert!(source.contains("move the one you do not want"), "{source}");
    // Nothing was moved.
    for kept in [
        "state",
        "state.compact",
        "state.before-compact",
        "state.compact-done",
    ] {
        assert!(dir.path().join(kept).exists(), "{kept}");
    }
    // Once the operator moved the copy away, the state opens as it was.
    std::fs::rename(
        dir.path().join("state.compact"),
        dir.path().join("elsewhere"),
    )
    .unwrap();
    let store = Store::open(&path).unwrap();
    assert!(store.job("j").unwrap().get("K1").unwrap().is_some());
}

#[test]
fn an_open_during_a_compaction_leaves_its_copy_alone() {
    let (dir, path) = state_holding_k1();
    // A compaction in progress (in another process, as far as flock can tell: another
    // open file description): its copy, not yet marked complete.
    let held = super::compact::hold(&path).unwrap().expect("free");
    std::fs::create_dir(dir.path().join("state.compact")).unwrap();
    assert!(matches!(
        Store::open(&path).err().expect("refused"),
        StateError::Locked { .. }
    ));
    assert!(
        dir.path().join("state.compact").exists(),
        "the copy being written is not taken for a crash's leftover"
    );
    drop(held);
    // Once it is over (here: as if killed before the copy was complete), the next open
    // discards the copy and the state is as it was.
    let store = Store::open(&path).unwrap();
    assert!(!dir.path().join("state.compact").exists());
    assert!(store.job("j").unwrap().get("K1").unwrap().is_some());
}

#[test]
fn a_state_moved_aside_without_a_complete_copy_is_moved_back() {
    let (dir, path) = state_holding_k1();
    std::fs::rename(&path, dir.path().join("state.before-compact")).unwrap();
    let store = Store::open(&path).unwrap();
    assert!(store.job("j").unwrap().get("K1").unwrap().is_some());
    assert!(!dir.path().join("state.before-compact").exists());
}

/// `n` entries K0.. whose `id` is `id + i`.
fn put_entries(job: &JobState, n: u64, id: i64) {
    for i in 0..n {
        let e = Entry {
            id: id + i as i64,
            ..entry()
        };
        job.put(&format!("K{i:05}"), &e).unwrap();
    }
}

fn all_entries(job: &JobState) -> Vec<(String, Entry)> {
    let mut all = Vec::new();
    job.for_each(&mut |k, e| all.push((k.to_string(), e)))
        .unwrap();
    all
}

/// The stored digest of job `job` against its entries: each entry in it as it is, and
/// nothing else. How many it holds.
fn digest_matches_entries(store: &Store, job: &str) -> usize {
    let job = store.job(job).unwrap();
    let d = job.digest().unwrap().expect("a stored digest");
    let p = d.probe();
    let mut n = 0;
    job.for_each(&mut |k, e| {
        let i = p.find(key_hash(k)).expect("every entry is in the digest");
        assert_eq!((p.row(i), p.locked(i)), (e.row, e.locked), "{k}");
        n += 1;
    })
    .unwrap();
    assert_eq!(d.len(), n);
    n
}

/// Rewriting the entries (a verification that changes most of them) leaves the tree as
/// `change` said, with fresh pages (no rewrite counted), and the stored digest matching
/// it. A rewrite that fails half-way changes no entry, and the digest stored after it
/// still matches the entries: the writes it had logged are not applied.
#[tokio::test]
async fn a_rewrite_of_the_entries_keeps_the_digest_and_a_failed_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let job = store.job("a").unwrap();
    put_entries(&job, 30, 1);
    job.save_digest().await.unwrap();

    let run = store.job("a").unwrap();
    drop(run.digest().unwrap());
    let held = run
        .rewrite_entries(&mut |key, e| {
            let i: i64 = key[1..].parse().unwrap();
            Ok(match i % 3 {
                0 => Change::Keep,
                1 => Change::Put(Entry {
                    id: e.id + 1000,
                    row: 7,
                    locked: false,
                    ..e
                }),
                _ => Change::Remove,
            })
        })
        .unwrap();
    assert_eq!(held, 20);
    let all = all_entries(&run);
    assert_eq!(all.len(), 20);
    for (key, e) in &all {
        let i: i64 = key[1..].parse().unwrap();
        match i % 3 {
            0 => assert_eq!((e.id, e.row, e.locked), (1 + i, entry().row, true), "{key}"),
            _ => assert_eq!((e.id, e.row, e.locked), (1001 + i, 7, false), "{key}"),
        }
    }
    run.save_digest().await.unwrap();
    assert_eq!(digest_matches_entries(&store, "a"), 20);
    assert_eq!(
        run.repack_worn().unwrap().len(),
        0,
        "nothing rewritten in place"
    );

    // Fails at the tenth entry, after logging changes for the nine before it.
    let run = store.job("a").unwrap();
    drop(run.digest().unwrap());
    let before = all_entries(&run);
    let mut seen = 0;
    let failed = run.rewrite_entries(&mut |key, e| {
        seen += 1;
        if seen == 10 {
            return Err(StateError::Corrupt { key: key.into() });
        }
        Ok(Change::Put(Entry { row: 99, ..e }))
    });
    assert!(
        matches!(failed, Err(StateError::Corrupt { .. })),
        "{failed:?}"
    );
    assert_eq!(all_entries(&run), before);
    run.save_digest().await.unwrap();
    assert_eq!(digest_matches_entries(&store, "a"), 20);
}

/// A run's entry writes go to a file for the digest, which is not kept in memory while
/// the run sends (17 MB a million entries) and is read again when the new one is stored;
/// if its file changed meanwhile, the new one is made from the entries. Either way it
/// matches the entries, and no log is left.
#[tokio::test]
async fn a_runs_writes_keep_the_digest_out_of_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let logs = || {
        std::fs::read_dir(dir.path().join("state.downloads"))
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with("digest-writes-")
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    let first = store.job("a").unwrap();
    for i in 0..100u64 {
        first
            .put(&format!("K{i:03}"), &Entry { row: i, ..entry() })
            .unwrap();
    }
    first.save_digest().await.unwrap();
    assert!(!first.holds_digest(), "not kept once stored");
    assert_eq!(first.len(), 100);
    assert_eq!(digest_matches_entries(&store, "a"), 100);

    let run = store.job("a").unwrap();
    let planned = run.digest().unwrap().expect("read for the plan");
    assert!(run.holds_digest());
    drop(planned);
    run.put(
        "K000",
        &Entry {
            row: 1000,
            ..entry()
        },
    )
    .unwrap();
    run.remove("K001").unwrap();
    run.put(
        "K100",
        &Entry {
            row: 1001,
            ..entry()
        },
    )
    .unwrap();
    assert!(!run.holds_digest(), "let go of at the first write");
    assert_eq!(logs(), 1);
    run.save_digest().await.unwrap();
    assert_eq!(logs(), 0);
    assert_eq!(digest_matches_entries(&store, "a"), 100);

    // The digest's file replaced while a run writes: made from the entries.
    let run = store.job("a").unwrap();
    drop(run.digest().unwrap());
    run.put(
        "K002",
        &Entry {
            row: 2000,
            ..entry()
        },
    )
    .unwrap();
    run.remove("K003").unwrap();
    std::fs::write(run.digest_file(), b"something else").unwrap();
    run.save_digest().await.unwrap();
    assert_eq!(logs(), 0);
    assert_eq!(digest_matches_entries(&store, "a"), 99);

    // A run that writes without planning (a rebuild, a verification) does not read the
    // digest to write: its file, gone while the run writes, is read only when the new
    // one is stored, and the writes are applied to it.
    let run = store.job("a").unwrap();
    let file = run.digest_file();
    let aside = file.with_extension("aside");
    std::fs::rename(&file, &aside).unwrap();
    run.put(
        "K004",
        &Entry {
            row: 3000,
            ..entry()
        },
    )
    .unwrap();
    assert!(!run.holds_digest());
    assert_eq!(
        logs(),
        1,
        "logged for the stored digest, which was not read"
    );
    std::fs::rename(&aside, &file).unwrap();
    run.save_digest().await.unwrap();
    assert_eq!(logs(), 0);
    assert_eq!(digest_matches_entries(&store, "a"), 99);
}

/// A repack whose change drops some values and writes others anew, all over a tree of
/// 1,000 (emptied and written again in runs of 64 keys in unit tests: about 16): the
/// dropped ones are gone, the rewritten ones have their new value, the others are as they
/// were, nothing else is there and the copy is gone.
#[test]
fn a_repack_with_a_change_drops_and_rewrites_values_all_over_the_tree() {
    use crate::state::repack::Rewrite;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let job = store.job("a").unwrap();
    put_entries(&job, 1000, 0);
    let number = |k: &[u8]| -> i64 { std::str::from_utf8(&k[1..]).unwrap().parse().unwrap() };
    let values = job
        .repack_with(Worn::Entries, &mut |k, v| {
            let e = Entry::decode(v).unwrap();
            Ok(match number(k) % 7 {
                0 => Rewrite::Drop,
                1 => Rewrite::Put(
                    Entry {
                        id: e.id + 50_000,
                        ..e
                    }
                    .encode(),
                ),
                _ => Rewrite::Keep,
            })
        })
        .unwrap();
    let all = all_entries(&store.job("a").unwrap());
    assert_eq!(values, all.len() as u64);
    let expected: Vec<(String, i64)> = (0..1000)
        .filter(|i| i % 7 != 0)
        .map(|i| (format!("K{i:05}"), if i % 7 == 1 { i + 50_000 } else { i }))
        .collect();
    let got: Vec<(String, i64)> = all.into_iter().map(|(k, e)| (k, e.id)).collect();
    assert_eq!(got, expected);
    assert!(!dir.path().join("state.downloads/repack-entries-a").exists());
}

/// Promise: once the entries rewritten in place since the last repack reach half of the
/// job's (counted across runs), the run's end writes the tree afresh and nothing changes
/// in it; new entries are not rewrites, and no mark or copy is left.
#[test]
fn runs_that_rewrote_half_the_entries_repack_them_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let store = Store::open(&path).unwrap();
    let run = || store.job("a").unwrap();
    let first = run();
    put_entries(&first, 3000, 0);
    assert!(
        first.repack_worn().unwrap().is_empty(),
        "new entries are no rewrites"
    );
    let meta = store.db.open_tree("meta").unwrap();
    assert_eq!(
        meta.scan_prefix("worn/").count(),
        0,
        "nothing counted, nothing written"
    );
    // 1000 of 3000 rewritten: not yet half.
    let second = run();
    put_entries(&second, 1000, 10_000);
    assert!(second.repack_worn().unwrap().is_empty());
    // 1000 more (in a run of its own: the count is kept in the state), and one removal.
    let third = run();
    put_entries(&third, 1000, 20_000);
    third.remove("K02999").unwrap();
    let expected = all_entries(&third);
    assert_eq!(expected.len(), 2999);
    let done = third.repack_worn().unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!((done[0].tree, done[0].values), (Worn::Entries, 2999));
    assert_eq!(all_entries(&run()), expected);
    assert_eq!(meta.scan_prefix("repacking/").count(), 0, "no mark left");
    assert_eq!(
        meta.scan_prefix("worn/job/a").count(),
        0,
        "the count starts anew"
    );
    assert!(!dir.path().join("state.downloads/repack-entries-a").exists());
    // Counted anew: one more rewrite is far from half.
    let fourth = run();
    put_entries(&fourth, 1, 30_000);
    assert!(fourth.repack_worn().unwrap().is_empty());
}

/// Promise: counting a tree walks all of it (and opens the delivered outcomes'
/// database), so a run that found no repack due keeps the length it counted, and the
/// runs after it do not count again while the tree cannot have come down to twice the
/// rewrites; removals since the count bring that nearer (each is a rewrite), and a tree
/// that came down to it is repacked.
#[test]
fn a_tree_counted_once_is_not_walked_again_by_every_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let store = Store::open(&path).unwrap();
    let run = || store.job("a").unwrap();
    let meta = store.db.open_tree("meta").unwrap();
    let counted = |name: &str| {
        meta.get(format!("worn-len/{name}"))
            .unwrap()
            .map(|v| v.to_vec())
    };
    let deliver = |from: u32, n: u32, tries: u32| {
        let job = run();
        for i in from..from + n {
            job.stage_outcome(&outcome(&format!("K{i:05}"), tries))
                .unwrap();
        }
        job.commit_staged().unwrap();
        job.repack_worn().unwrap()
    };
    // 3000 outcomes, then 1000 of them again: counted once, not due.
    assert!(deliver(0, 3000, 1).is_empty());
    assert!(deliver(0, 1000, 2).is_empty());
    let outcomes = [3000u64.to_le_bytes(), 1000u64.to_le_bytes()].concat();
    assert_eq!(counted("outcomes/a"), Some(outcomes.clone()));
    // Another process holds the outcomes' database: a run that must open it fails. One
    // that rewrote nothing does not count the tree again, so it never opens it.
    let other = super::outcomes::DeliveredDb::new(&path, 1, std::sync::Arc::default());
    let held = other.begin().unwrap();
    assert!(run().repack_worn().unwrap().is_empty());
    held.end().unwrap();
    drop(other);
    assert_eq!(counted("outcomes/a"), Some(outcomes));
    // 500 more rewrites: 1500 of at most 3000, half: repacked, and counted anew.
    let done = deliver(1000, 500, 2);
    assert_eq!(done.len(), 1);
    assert_eq!((done[0].tree, done[0].values), (Worn::Outcomes, 3000));
    assert_eq!(counted("outcomes/a"), None);
    assert_eq!(delivered_keys(&store, "a").len(), 3000);

    // Entries: 10000, 1000 rewritten (counted, not due), then 3000 removed: 4000
    // rewrites of the 7000 left is more than half, though not of the 10000 counted.
    let first = run();
    put_entries(&first, 10_000, 0);
    assert!(first.repack_worn().unwrap().is_empty());
    let second = run();
    put_entries(&second, 1000, 20_000);
    assert!(second.repack_worn().unwrap().is_empty());
    assert_eq!(
        counted("job/a"),
        Some([10_000u64.to_le_bytes(), 1000u64.to_le_bytes()].concat())
    );
    let third = run();
    for i in 7000..10_000 {
        third.remove(&format!("K{i:05}")).unwrap();
    }
    let expected = all_entries(&third);
    let done = third.repack_worn().unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!((done[0].tree, done[0].values), (Worn::Entries, 7000));
    assert_eq!(all_entries(&run()), expected);
    assert_eq!(counted("job/a"), None);
}

/// Promise: a run that stored its digest at its end knows how many entries the job has,
/// so its repack check does not walk a million entries rewritten in place (4 s: sled
/// reads every page's records from disk, and the copy reads them again), and decides as
/// a walk would. A handle that stored no digest still counts them.
#[tokio::test]
async fn a_run_that_stored_its_digest_repacks_without_walking_the_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let meta = store.db.open_tree("meta").unwrap();
    let first = store.job("a").unwrap();
    put_entries(&first, 3000, 0);
    first.save_digest().await.unwrap();
    assert!(first.repack_worn().unwrap().is_empty());
    // 1000 of 3000 rewritten: not due, and the length kept is the digest's.
    let second = store.job("a").unwrap();
    put_entries(&second, 1000, 10_000);
    second.save_digest().await.unwrap();
    assert!(second.repack_worn().unwrap().is_empty());
    assert_eq!(second.rewrites.walks(), 0, "counted from the digest");
    assert_eq!(
        meta.get("worn-len/job/a").unwrap().map(|v| v.to_vec()),
        Some([3000u64.to_le_bytes(), 1000u64.to_le_bytes()].concat())
    );
    // 2000 more, one removed: due, repacked whole, still without a walk.
    let third = store.job("a").unwrap();
    put_entries(&third, 2000, 20_000);
    third.remove("K00000").unwrap();
    let expected = all_entries(&third);
    third.save_digest().await.unwrap();
    let done = third.repack_worn().unwrap();
    assert_eq!(third.rewrites.walks(), 0);
    assert_eq!(done.len(), 1);
    assert_eq!((done[0].tree, done[0].values), (Worn::Entries, 2999));
    assert_eq!(all_entries(&store.job("a").unwrap()), expected);
    // Without a digest stored by the handle, the entries are counted by a walk.
    meta.remove("worn-len/job/a").unwrap();
    let fourth = store.job("a").unwrap();
    put_entries(&fourth, 2000, 30_000);
    assert_eq!(fourth.repack_worn().unwrap().len(), 1);
    assert_eq!(fourth.rewrites.walks(), 1);
}

/// The UserData of job `job`'s delivered outcomes, in order.
fn delivered_keys(store: &Store, job: &str) -> Vec<String> {
    let mut read = Vec::new();
    store
        .job(job)
        .unwrap()
        .for_each_outcome(None, &mut |o| read.push(o.user_data))
        .unwrap();
    read
}

fn outcome(key: &str, tries: u32) -> crate::state::Outcome {
    crate::state::Outcome {
        user_data: key.to_string(),
        contact_id: 7,
        tries,
        ..crate::state::Outcome::default()
    }
}

/// Delivered outcomes live in a database of their own, `<state>.outcomes`: opening the
/// state does not open it, a job without outcomes never does, and it is open exactly
/// while something uses it. Uses overlap (the daemon runs its jobs at once): the first
/// to end leaves it open for the other, the last closes it for good.
#[test]
fn delivered_outcomes_are_kept_apart_and_opened_only_when_needed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let apart = dir.path().join("state.outcomes");
    let store = Store::open(&path).unwrap();
    let job = store.job("a").unwrap();
    assert!(job.delivered_outcomes().unwrap().is_none());
    assert!(job.hold_outcomes().unwrap().is_none());
    let mut n = 0;
    job.for_each_outcome(None, &mut |_| n += 1).unwrap();
    assert_eq!(n, 0);
    assert!(!apart.exists(), "not made for a job without outcomes");

    job.stage_outcome(&outcome("K1", 1)).unwrap();
    job.stage_outcome(&outcome("K2", 3)).unwrap();
    job.commit_staged().unwrap();
    assert!(
        store.delivered.if_open().is_none(),
        "closed when the commit ended"
    );
    assert!(apart.join("db").exists());
    assert!(
        !store
            .db
            .tree_names()
            .iter()
            .any(|n| n.starts_with(b"outcomes/")),
        "none in the state's database"
    );
    // Closed for good: another open of the folder fails while any handle of the first
    // is alive.
    let other = super::outcomes::DeliveredDb::new(&path, 1, std::sync::Arc::default());
    other.begin().unwrap().end().unwrap();

    let held = job.hold_outcomes().unwrap().expect("it has outcomes now");
    let d = store
        .job("a")
        .unwrap()
        .delivered_outcomes()
        .unwrap()
        .unwrap();
    held.end().unwrap();
    assert!(store.delivered.if_open().is_some(), "still in use");
    assert_eq!(
        d.get("K2").unwrap().unwrap().outcome("K2").unwrap(),
        outcome("K2", 3)
    );
    drop(d);
    assert!(
        store.delivered.if_open().is_none(),
        "the last use closed it"
    );
    other.begin().unwrap().end().unwrap();
    // Another job of the same state has none.
    assert!(store
        .job("b")
        .unwrap()
        .delivered_outcomes()
        .unwrap()
        .is_none());
    drop((job, store));
    let store = Store::open(&path).unwrap();
    assert!(
        store.delivered.if_open().is_none(),
        "opening the state leaves it closed"
    );
    assert_eq!(delivered_keys(&store, "a"), ["K1", "K2"]);
    assert!(store.delivered.if_open().is_none(), "closed after the read");
}

/// A state whose delivered outcomes an older version kept in its own database has them
/// moved into theirs when it is opened, none lost, and the old trees dropped.
#[test]
fn outcomes_an_older_version_kept_in_the_state_are_moved_out_when_it_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    {
        let store = Store::open(&path).unwrap();
        let old = store.db.open_tree("outcomes/a").unwrap();
        for i in 0..50 {
            let o = outcome(&format!("K{i:02}"), i);
            old.insert(o.user_data.as_bytes(), super::outcomes::encode(&o))
                .unwrap();
        }
        // Every job got an empty tree from older versions.
        store.db.open_tree("outcomes/b").unwrap();
        store.db.flush().unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert!(!store
        .db
        .tree_names()
        .iter()
        .any(|n| n.starts_with(b"outcomes/")));
    assert!(store.delivered.if_open().is_none());
    let job = store.job("a").unwrap();
    let mut read = Vec::new();
    job.for_each_outcome(None, &mut |o| read.push((o.user_data, o.tries)))
        .unwrap();
    assert_eq!(read.len(), 50);
    assert_eq!(read[49], ("K49".to_string(), 49));
    assert!(store
        .job("b")
        .unwrap()
        .delivered_outcomes()
        .unwrap()
        .is_none());
}

/// An outcomes database that cannot be opened for a reason other than damage (here: a
/// file where its folder should be) stops the open with its own error, which `state
/// rebuild` does not take for a damaged state (it would move the state aside), and the
/// outcomes an older version kept in the state stay where they were.
#[test]
fn an_outcomes_database_that_cannot_be_opened_is_not_taken_for_a_damaged_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    {
        let store = Store::open(&path).unwrap();
        let o = outcome("K1", 1);
        store
            .db
            .open_tree("outcomes/a")
            .unwrap()
            .insert("K1", super::outcomes::encode(&o))
            .unwrap();
        store.db.flush().unwrap();
    }
    std::fs::write(dir.path().join("state.outcomes"), b"not a folder").unwrap();
    let e = Store::open(&path).err().expect("refused");
    assert!(
        matches!(&e, StateError::OutcomesOpen { path, .. } if path.ends_with("state.outcomes")),
        "{e:?}"
    );
    assert!(e.to_string().contains("outcomes already delivered"), "{e}");
    std::fs::remove_file(dir.path().join("state.outcomes")).unwrap();
    let store = Store::open(&path).unwrap();
    assert_eq!(delivered_keys(&store, "a"), ["K1"]);
}

/// Promise: delivered outcomes rewritten by a run (every contact called again) are
/// repacked too, and read back the same.
#[test]
fn delivered_outcomes_rewritten_in_place_are_repacked() {
    use crate::state::Outcome;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let deliver = |tries| {
        let job = store.job("a").unwrap();
        for i in 0..1200 {
            job.stage_outcome(&Outcome {
                user_data: format!("K{i:05}"),
                tries,
                ..Outcome::default()
            })
            .unwrap();
        }
        job.commit_staged().unwrap();
        job.repack_worn().unwrap()
    };
    assert!(deliver(1).is_empty());
    let done = deliver(2);
    assert_eq!(done.len(), 1);
    assert_eq!((done[0].tree, done[0].values), (Worn::Outcomes, 1200));
    let job = store.job("a").unwrap();
    let mut read = Vec::new();
    job.for_each_outcome(None, &mut |o| read.push((o.user_data, o.tries)))
        .unwrap();
    assert_eq!(read.len(), 1200);
    assert!(read.iter().all(|(_, tries)| *tries == 2));
}

/// Job `a` of `store` with 2000 entries, and the copy a repack of them would make, as a
/// crash would leave it: with the mark in the state or (`marked` false) without, and the
/// tree emptied and filled again halfway (`half`) or untouched. Its entries before.
fn cut_short_in(store: &Store, marked: bool, half: bool) -> Vec<(String, Entry)> {
    let job = store.job("a").unwrap();
    put_entries(&job, 2000, 0);
    let all = all_entries(&job);
    assert_eq!(job.copy(Worn::Entries).unwrap(), 2000);
    if marked {
        let meta = store.db.open_tree("meta").unwrap();
        meta.insert("repacking/job/a", &2000u64.to_le_bytes())
            .unwrap();
    }
    if half {
        job.tree.clear().unwrap();
        for (k, e) in all.iter().take(1000) {
            job.tree.insert(k, e.encode()).unwrap();
        }
    }
    store.db.flush().unwrap();
    all
}

/// [`cut_short_in`] a state at `<dir>/state`, closed.
fn repack_cut_short(marked: bool, half: bool) -> (tempfile::TempDir, Vec<(String, Entry)>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let all = cut_short_in(&store, marked, half);
    (dir, all)
}

/// Reopens the state at `<dir>/state` once sled has let go of it.
fn reopen(dir: &Path) -> Result<Store, StateError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(&dir.join("state")) {
            Err(StateError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Promise: a repack cut short loses nothing. With its mark in the state the next open
/// fills the tree again from the copy before anything reads it; without the mark the tree
/// was never touched, and the copy is removed.
#[test]
fn a_repack_cut_short_is_finished_or_forgotten_at_the_next_open() {
    for (marked, half) in [(false, false), (true, false), (true, true)] {
        let (dir, all) = repack_cut_short(marked, half);
        let store = reopen(dir.path()).unwrap();
        let job = store.job("a").unwrap();
        assert_eq!(all_entries(&job), all, "marked {marked}, half {half}");
        let meta = store.db.open_tree("meta").unwrap();
        assert_eq!(meta.scan_prefix("repacking/").count(), 0);
        assert!(!dir.path().join("state.downloads/repack-entries-a").exists());
    }
}

/// Promise: entries half written again (a repack or a verification's rewrite whose write
/// failed after its mark, in a process that goes on, such as the daemon) are never taken
/// for the whole tree: no digest is stored from them, and the next repack or rewrite
/// finishes the refill from the copy before it copies anything (a copy of the half tree
/// would replace the copy that holds the rest).
#[tokio::test]
async fn a_half_written_tree_gets_no_digest_and_no_new_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let all = cut_short_in(&store, true, true);
    let job = store.job("a").unwrap();
    assert!(job.refill_pending(Worn::Entries).unwrap());
    job.save_digest().await.unwrap();
    assert_eq!(
        job.identity().unwrap(),
        None,
        "no digest of 1000 of 2000 entries"
    );

    let rewritten = job.rewrite_entries(&mut |_, _| Ok(Change::Keep)).unwrap();
    assert_eq!(rewritten, 2000);
    assert_eq!(all_entries(&job), all);
    assert!(!job.refill_pending(Worn::Entries).unwrap());
    job.save_digest().await.unwrap();
    assert_eq!(digest_matches_entries(&store, "a"), 2000);
}

/// Promise: a mark whose copy is gone stops the open with an error that names the copy
/// and what to do; the tree is not emptied.
#[test]
fn a_repack_mark_without_its_copy_is_an_error_not_an_empty_job() {
    let (dir, _) = repack_cut_short(true, false);
    let copy = dir.path().join("state.downloads/repack-entries-a");
    let whole = std::fs::read(&copy).unwrap();
    std::fs::remove_file(&copy).unwrap();
    let e = reopen(dir.path()).err().expect("refused");
    let text = e.to_string();
    assert!(matches!(e, StateError::Repack { .. }), "{e:?}");
    assert!(text.contains(&copy.display().to_string()), "{text}");
    assert!(text.contains("state rebuild"), "{text}");
    // Cut short, or one byte changed: refused too, and the tree is left as it is.
    std::fs::write(&copy, &whole[..whole.len() / 2]).unwrap();
    let e = reopen(dir.path())
        .err()
        .expect("a copy cut short is refused");
    assert!(e.to_string().contains("it is cut short"), "{e}");
    let mut damaged = whole.clone();
    damaged[whole.len() / 2] ^= 1;
    std::fs::write(&copy, &damaged).unwrap();
    let e = reopen(dir.path()).err().expect("a damaged copy is refused");
    assert!(matches!(e, StateError::Repack { .. }), "{e:?}");
    let db = sled::open(dir.path().join("state")).unwrap();
    assert_eq!(
        db.open_tree("job/a").unwrap().len(),
        2000,
        "the tree is as it was"
    );
    drop(db);
    // The whole copy put back: the repack is finished.
    std::fs::write(&copy, &whole).unwrap();
    let store = reopen(dir.path()).unwrap();
    assert_eq!(store.job("a").unwrap().tree.len(), 2000);
    assert!(!copy.exists());
}

/// Promise: a repack whose copy cannot be written (here: something else in its place;
/// a full disk fails the same way) changes nothing: the error names the path, the tree
/// and the count are as they were, and the next run's end tries again.
#[test]
fn a_repack_that_cannot_write_its_copy_leaves_the_tree_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let job = store.job("a").unwrap();
    put_entries(&job, 1500, 0);
    put_entries(&job, 1500, 10_000);
    let expected = all_entries(&job);
    let copy = dir.path().join("state.downloads/repack-entries-a");
    std::fs::create_dir_all(copy.join("in the way")).unwrap();
    let e = job.repack_worn().expect_err("the copy cannot be written");
    assert!(e.to_string().contains(&copy.display().to_string()), "{e}");
    assert!(e.to_string().contains("the state was not changed"), "{e}");
    assert_eq!(all_entries(&job), expected);
    let meta = store.db.open_tree("meta").unwrap();
    assert_eq!(meta.scan_prefix("repacking/").count(), 0, "no mark");
    std::fs::remove_dir_all(&copy).unwrap();
    let next = store.job("a").unwrap();
    put_entries(&next, 1, 20_000);
    let done = next.repack_worn().unwrap();
    assert_eq!(
        done.len(),
        1,
        "the count was kept: the next run's end repacks"
    );
    assert_eq!(all_entries(&next).len(), 1500);
}

/// Promise: a repack that stopped halfway while the state stays open (a daemon: a write
/// failed while the tree was written again) is finished by the job's next run before it
/// reads the entries.
#[test]
fn a_repack_stopped_halfway_in_a_running_process_is_finished_before_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let all = cut_short_in(&store, true, true);
    let meta = store.db.open_tree("meta").unwrap();
    let next = store.job("a").unwrap();
    next.finish_repacks().unwrap();
    assert_eq!(all_entries(&next), all);
    assert_eq!(meta.scan_prefix("repacking/").count(), 0);
    assert!(!dir.path().join("state.downloads/repack-entries-a").exists());
    // Nothing to finish: nothing happens.
    next.finish_repacks().unwrap();
    assert_eq!(all_entries(&next), all);
}
