//! The integration tests, one binary (it links once instead of once per file): each
//! module runs the `dialsync` binary or the library against the built-in emulator.
//!
//! - [`cli`]: validate, demo, the emulator as a process, credentials;
//! - [`sync`]: the behaviour contract, run by run;
//! - [`noop`]: unchanged exports cost no call and no state write;
//! - [`outcome`]: the report, the log line and the stored last run agree;
//! - [`removals`]: a removal needs evidence; IDs are checked; verification;
//! - [`reliability`]: a struggling dialler, guards, state rebuild and restore, full disk,
//!   private state;
//! - [`crash`]: SIGKILL at seeded moments, with and without a reverted export;
//! - [`daemon`]: the daemon as a process, synchronised on its sd_notify messages;
//! - [`dialler_api`]: every dialler function of the client against the emulator;
//! - [`exports`]: exports as CRMs and spreadsheets write them (`tests/fixtures/`);
//! - [`monitoring`]: the run history, `status` and `status --check`;
//! - [`memory`]: a large plan is never held whole.
//!
//! `cargo test --test it MODULE::` runs one module.

mod common;
mod dbserver;

mod cli;
mod crash;
mod daemon;
mod dialler_api;
mod exports;
mod http;
mod memory;
mod monitoring;
mod noop;
mod outcome;
mod outcomes;
mod reliability;
mod removals;
mod sql;
mod sync;
