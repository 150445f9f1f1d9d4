//! The performance regression guard that needs no clock: a sync with nothing to do makes
//! no API call and writes nothing to the job's state, however large the export.

mod common;

use common::{rows, Env};
use dialsync::config::Config;
use dialsync::state::Store;
use dialsync::sync::{sync_with, SyncOptions};

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
    let opts = SyncOptions::default();
    let run = || {
        rt.block_on(sync_with(&config, &opts, Some(&store)))
            .unwrap()
    };

    let first = run();
    assert_eq!(first[0].imported, 10_000);
    let calls = env.requests().len();
    let writes = store.job_writes();
    assert!(writes >= 10_000, "{writes} writes for 10,000 imports");

    let again = run();
    assert_eq!(again[0].unchanged, 10_000);
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
}
