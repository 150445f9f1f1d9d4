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
    // one read-only call with nothing to send, so a revoked token is noticed.
    let manual = run_with(&SyncOptions::default());
    assert_eq!((manual[0].unchanged, manual[0].api_calls), (10_000, 1));
    let sent = &env.requests()[calls..];
    assert!(
        sent.len() == 1 && sent[0].method == "GET" && sent[0].path.ends_with("/campaigns/538"),
        "{sent:?}"
    );
    assert_eq!(store.job_writes(), writes);
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
