//! dialsync keeps a jtel ACD dialler campaign in step with a CRM export.
//!
//! The folders follow a sync run's data flow:
//!
//! - `config`: the TOML, loaded, checked and compiled (file:line:key problems, the
//!   token, schedules);
//! - `source`: CRM export records (CSV, JSON), streamed;
//! - `engine`: one job's run: map, plan against the state, check the evidence for
//!   removals, guard, execute, reconcile; its outcome and its report;
//! - `state`: the only sled code: what the dialler holds, per job and UserData;
//! - `dialler`: the jtel REST client (typed errors, retries, pacing);
//! - `daemon`: the scheduler, the control socket, systemd notification, `status`;
//! - `emulator`: an in-memory dialler for the demo, tests and benchmarks.
//!
//! Shared by all: `fields` (the dialler's contact fields and values), `key` (UserData,
//! cleaned and hashed), `escape` (text made safe for logs and terminals) and `locking`
//! (one mutex poisoning policy). The binary's `cli` has one file per subcommand.
//!
//! What the binary, the tests and the benchmarks use is re-exported here; everything else
//! is private to the crate.

mod alerts;
mod config;
mod daemon;
mod dialler;
mod emulator;
mod engine;
mod escape;
mod failpoint;
mod fields;
mod key;
mod keymap;
mod locking;
mod metrics;
mod outcomes;
mod source;
mod state;
mod tls;
mod trim;

// Loading the config.
pub use config::{Config, ConfigError, Secret, TokenError, TokenSource};
// One sync, its outcome and its report.
pub use engine::outcome::{Abort, Exit};
pub use engine::preflight::{preflight, Finding};
pub use engine::progress::{Phase, RunHandle, Snapshot};
pub use engine::reconcile::{rebuild as rebuild_state, Rebuilt, ReconcileError};
pub use engine::report::{exit_of, json as reports_json, JobReport};
pub use engine::run::{
    select_jobs, sync, sync_with, Against, RunMode, SyncError, SyncOptions, Trigger, Verify,
};
// The daemon, its control socket and `status`.
pub use daemon::control::{socket_path, Client, Event, Request};
pub use daemon::history::{
    collect as collect_history, History, HistoryQuery, RowProblem, RunDetail, RunSummary,
};
pub use daemon::status::{collect as collect_status, Check, JobCheck, Status};
pub use daemon::{run as run_daemon, DaemonError, Ended, Signal};
// The dialler client and the emulator.
pub use dialler::{record_id, Dialler, DiallerError, ImportFlags, Target, Tenant};
pub use emulator::{
    default_result_codes, Call, CallError, CallRecord, EmuContact, Emulator, EmulatorConfig,
    Faults, RequestLog, ResultCode, ResultKind, KEEP_REQUESTS,
};
// Dialling outcomes back to the CRM.
pub use outcomes::{
    query as query_outcomes, render as render_outcomes, OutcomesQuery, OutcomesReport,
};
pub use state::Outcome;
// The state database.
pub use state::{move_aside, Compacted, StateError, Store};
// Text made safe for a terminal or a log line.
pub use escape::printable;
pub use metrics::{ApiMetrics, Metrics};

/// What the integration tests look into: the state's entries and the hashes an older
/// version stored. Not an API.
#[doc(hidden)]
pub mod internals {
    pub use crate::engine::execute::window;
    pub use crate::fields::{by_code, FieldValue};
    pub use crate::state::hashing::{legacy_trigger, legacy_value};
    pub use crate::state::{Entry, StateView};
}
