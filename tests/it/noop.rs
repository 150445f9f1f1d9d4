//! The performance regression guard that needs no clock: a sync with nothing to do makes
//! no API call and writes nothing to the job's state, however large the export.

use crate::common;

use crate::common::{count, rows, Env};
use dialsync::Config;
use dialsync::Store;
use dialsync::{sync_with, SyncOptions};

#[test]
fn a_no_op_sync_of_10000_rows_makes_no_call_and_no_state_write() {
    let env = Env::new();
    let all = rows(10_000, "Köln");
    env.write_rows(&all);
    let config = Config::load(&env.path("dialsync.toml")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = Store::open(&config.state.path).unwrap();
    // As a daemon's scheduled run whose token was proven within `credential_check`.
    let scheduled = SyncOptions {
        mode: dialsync::RunMode {
            credentials_recent: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let run_with = |opts: &SyncOptions| {
        rt.block_on(sync_with(&config, opts, dialsync::Against::Store(&store)))
            .unwrap()
    };
    let run = || run_with(&scheduled);

    let first = run();
    assert_eq!(first[0].imported, 10_000);
    let calls = env.requests().len();
    let writes = store.job_writes();
    assert!(writes >= 10_000, "{writes} writes for 10,000 imports");

    let again = run();
    assert_eq!(again[0].unchanged, 10_000);
    assert_eq!(
        again[0].unchanged_by_hash, 10_000,
        "every row settled by its hash, none mapped"
    );
    assert_eq!(again[0].api_calls, 0);
    assert_eq!(
        env.requests().len(),
        calls,
        "no request reached the dialler"
    );
    assert_eq!(
        store.job_writes(),
        writes,
        "nothing was written to the job's state"
    );

    // A manual sync (or a scheduled one an hour after the token was last proven) makes
    // one read-only call with nothing to send, so a revoked token is noticed: whether it
    // reads the export (--force) or goes by the file's bytes, unchanged since the last
    // run, which had nothing to do.
    let forced = SyncOptions {
        mode: dialsync::RunMode {
            force: true,
            ..Default::default()
        },
        ..Default::default()
    };
    for (opts, unchanged, skipped) in [(&forced, 10_000, false), (&SyncOptions::default(), 0, true)]
    {
        let calls = env.requests().len();
        let manual = run_with(opts);
        assert_eq!(
            (
                manual[0].unchanged,
                manual[0].export_unchanged,
                manual[0].api_calls
            ),
            (unchanged, skipped, 1)
        );
        let sent = &env.requests()[calls..];
        assert!(
            sent.len() == 1 && sent[0].method == "GET" && sent[0].path.ends_with("/campaigns/538"),
            "{sent:?}"
        );
        assert_eq!(store.job_writes(), writes);
    }
}

/// A change of the mapping (here the phone format) makes the stored row hashes miss:
/// every row is mapped and compared again, and each contact gets its new number, once.
#[test]
fn a_changed_mapping_compares_every_row_again() {
    let env = Env::new();
    env.write_rows(&rows(50, "Bonn"));
    assert_eq!(env.sync(&[]).1, 0);
    let (again, _) = env.sync(&[]);
    assert_eq!(count(&again, "unchanged_by_hash"), 50);

    env.write_config(common::TOKEN, "phone_format = \"digits\"");
    let (report, code) = env.sync(&[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        (
            count(&report, "updated"),
            count(&report, "unchanged_by_hash")
        ),
        (50, 0)
    );
    assert_eq!(
        common::field(&env.contact("K7"), "PhoneNumber1"),
        "491711000007"
    );
    let (report, _) = env.sync(&[]);
    assert_eq!(
        (
            count(&report, "api_calls"),
            count(&report, "unchanged_by_hash")
        ),
        (1, 50)
    );
}

/// A change that is only partly carried out (the update went through, the reset was
/// refused) leaves no row hash behind: when the CRM then reverts the row, the next run
/// still sees that the dialler holds other values and sends them back.
#[test]
fn a_partly_applied_change_is_not_mistaken_for_unchanged_later() {
    let env = Env::new();
    let original = rows(3, "Bonn");
    env.write_rows(&original);
    assert_eq!(env.sync(&[]).1, 0);

    let mut changed = original.clone();
    changed[0] = changed[0].replace(";Bonn;1", ";Kiel;2"); // City and Round
    env.write_rows(&changed);
    env.emu.reject_next("/reset", 1);
    let (report, _) = env.sync(&[]);
    assert_eq!(
        (count(&report, "updated"), count(&report, "failed")),
        (1, 1),
        "{report}"
    );
    assert_eq!(common::field(&env.contact("K1"), "City"), "Kiel");

    env.write_rows(&original);
    let (report, code) = env.sync(&[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(count(&report, "updated"), 1, "{report}");
    assert_eq!(
        count(&report, "reset"),
        0,
        "the round is back to the one reset last"
    );
    env.assert_holds_exactly(&original);
    let (report, _) = env.sync(&[]);
    assert_eq!(count(&report, "api_calls"), 1, "the token check only");
}

/// An export file with the bytes a run read that had nothing to do or report, the state
/// as that run left it: the next run compares the file's length and hash and ends, with
/// the token's check as its one call. The same bytes written again (a new file, a new
/// time) are still the same; a value changed to one of the same length is not; a run
/// with --force reads the file whatever its bytes.
#[test]
fn an_export_file_unchanged_since_a_quiet_run_is_not_read_again() {
    let env = Env::new();
    let mut all = rows(200, "Köln");
    env.write_rows(&all);
    assert_eq!(count(&env.sync(&[]).0, "imported"), 200);
    // The import changed the dialler: the next run reads the export.
    let (report, code) = env.sync(&[]);
    assert_eq!((code, count(&report, "unchanged")), (0, 200), "{report}");
    assert!(report.get("export_unchanged").is_none(), "{report}");

    for rewrite in [false, true] {
        if rewrite {
            std::fs::remove_file(env.path("export.csv")).unwrap();
            env.write_rows(&all);
        }
        let before = env.requests().len();
        let (report, code) = env.sync(&[]);
        assert_eq!(code, 0, "{report}");
        assert_eq!(report["export_unchanged"], true, "{report}");
        assert_eq!(
            (count(&report, "rows"), count(&report, "unchanged")),
            (200, 0),
            "the last good count, nothing planned: {report}"
        );
        assert!(
            report["notes"][0]
                .as_str()
                .unwrap()
                .starts_with("the export file is unchanged since the last clean run"),
            "{report}"
        );
        let sent = env.requests_since(before);
        assert!(
            sent.len() == 1 && sent[0].method == "GET",
            "the token's check only: {sent:?}"
        );
    }
    let (report, _) = env.sync(&["--force"]);
    assert_eq!(count(&report, "unchanged"), 200, "{report}");

    // Köln -> Bonn: the same length in the file's encoding.
    all[41] = all[41].replace("Köln", "Bonn");
    let len = std::fs::metadata(env.path("export.csv")).unwrap().len();
    env.write_rows(&all);
    assert_eq!(
        std::fs::metadata(env.path("export.csv")).unwrap().len(),
        len
    );
    let (report, _) = env.sync(&[]);
    assert_eq!(
        (count(&report, "updated"), count(&report, "unchanged")),
        (1, 199),
        "{report}"
    );
    assert_eq!(common::field(&env.contact("K42"), "City"), "Bonn");
    // Read again after the change, then not.
    assert_eq!(count(&env.sync(&[]).0, "unchanged"), 200);
    assert_eq!(env.sync(&[]).0["export_unchanged"], true);
}

/// Whether the state is as the last quiet run left it is judged from the digest's seal in
/// the database, without reading the digest (17 MB for a million contacts): with the
/// digest file gone, an unchanged export is still not read; the next run that plans reads
/// the entries instead, sends exactly the one change, and stores the digest again.
#[test]
fn an_unchanged_export_is_judged_without_reading_the_digest() {
    let env = Env::new();
    let mut all = rows(200, "Köln");
    env.write_rows(&all);
    assert_eq!(count(&env.sync(&[]).0, "imported"), 200);
    assert_eq!(count(&env.sync(&[]).0, "unchanged"), 200);
    let digest = env.path("state.digests/leads.digest");
    std::fs::remove_file(&digest).unwrap();

    let (report, code) = env.sync(&[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["export_unchanged"], true, "{report}");
    assert!(!digest.exists(), "not read, not written: {report}");

    all[41] = all[41].replace("Köln", "Bonn");
    env.write_rows(&all);
    let (report, code) = env.sync(&[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        (count(&report, "updated"), count(&report, "unchanged")),
        (1, 199),
        "{report}"
    );
    assert!(digest.exists(), "stored again by the run that planned");
    assert_eq!(common::field(&env.contact("K42"), "City"), "Bonn");
    assert_eq!(count(&env.sync(&[]).0, "unchanged"), 200);
    assert_eq!(env.sync(&[]).0["export_unchanged"], true);
}

/// A run that has something to report (here a row without a phone number) reads the
/// export every time: a run spared would not report it.
#[test]
fn an_export_with_a_rejected_row_is_read_every_time() {
    let env = Env::new();
    let mut all = rows(20, "Köln");
    all.push("K21;Name21;First21;;Köln;1".into());
    env.write_rows(&all);
    for _ in 0..3 {
        let (report, code) = env.sync(&[]);
        assert_eq!((code, count(&report, "invalid")), (1, 1), "{report}");
        assert!(report.get("export_unchanged").is_none(), "{report}");
    }
}

/// A run killed after the dialler confirmed an update it had no time to store, then the
/// CRM's previous file back, byte for byte the one the last quiet run read: the call in
/// flight makes the next run read it and put the old value back on the dialler.
#[test]
fn a_file_reverted_after_a_killed_run_is_read_again() {
    let env = Env::new();
    let mut all = rows(20, "Köln");
    env.write_rows(&all);
    assert_eq!(env.sync(&[]).1, 0);
    assert_eq!(env.sync(&[]).1, 0); // a quiet run: the file's bytes are kept
    assert_eq!(env.sync(&[]).0["export_unchanged"], true);

    let before = all.clone();
    all[1] = all[1].replace("Köln", "Bonn");
    env.write_rows(&all);
    env.sync_killed_at("update-confirmed");
    assert_eq!(common::field(&env.contact("K2"), "City"), "Bonn");

    env.write_rows(&before);
    let (report, code) = env.sync(&[]);
    assert_eq!(code, 0, "{report}");
    assert!(report.get("export_unchanged").is_none(), "{report}");
    assert_eq!(count(&report, "rechecked"), 1, "{report}");
    env.assert_holds_exactly(&before);
}
