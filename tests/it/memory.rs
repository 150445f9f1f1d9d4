//! Memory guards that need no clock: however large the plan, a run holds only a window of
//! it. The planner writes its operations to the plan's spool (memory up to a few MB, then
//! an unnamed temporary file), and the executor reads them back a window at a time,
//! journalling each window with one record, not one per contact.

use crate::common::{rows, Env};
use dialsync::internals::window;
use dialsync::{sync_with, Config, JobReport, Store, SyncOptions};

/// A sync, and how many writes it made to the job's state.
fn sync(config: &Config) -> (JobReport, u64) {
    let store = Store::open(&config.state.path).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut reports = rt
        .block_on(sync_with(
            config,
            &SyncOptions::default(),
            dialsync::Against::Store(&store),
        ))
        .unwrap();
    (reports.remove(0), store.job_writes())
}

/// A first import of 100,000 rows: at no moment does the executor hold more than its
/// window of planned-but-unsent contacts (a plan held whole would be 100,000 of them),
/// and every contact arrives, once.
#[test]
fn a_100000_row_first_import_never_holds_the_plan_whole() {
    let env = Env::new();
    let n = 100_000;
    env.write_rows(&rows(n, "Köln"));
    let config = Config::load(&env.path("dialsync.toml")).unwrap();
    let window = window(config.dialler.max_concurrency) as u64;
    assert!(
        window * 100 < n as u64,
        "the window ({window}) is far below the plan"
    );

    let (first, writes) = sync(&config);
    assert_eq!((first.imported, first.failed), (n as u64, 0), "{first:?}");
    // One write per contact (its entry) and the journal's two per window of at least 64
    // (the window's record and its removal), not a pending import put and cleared per
    // contact (3 writes per contact).
    assert!(
        writes >= n as u64 && writes <= n as u64 + n as u64 / 16,
        "{writes} state writes for {n} imports"
    );
    assert!(
        first.held_peak > 0 && first.held_peak <= window,
        "at most {} planned contacts held at once, window {window}",
        first.held_peak
    );

    env.assert_holds_exactly(&rows(n, "Köln"));
}
