//! dialsync keeps a jtel ACD dialler campaign in step with a CRM export.
//!
//! The folders follow a sync run's data flow:
//!
//! - [`config`]: the TOML, loaded, checked and compiled (schedules, secrets);
//! - [`source`]: CRM export records (CSV, JSON), streamed;
//! - [`engine`]: one job's run: map, plan against the state, guard, execute, reconcile,
//!   report;
//! - [`state`]: the only sled code: what the dialler holds, per job and UserData;
//! - [`dialler`]: the jtel REST client (errors, retries, pacing);
//! - [`daemon`]: the scheduler, the control socket, systemd notification, `status`;
//! - [`emulator`]: an in-memory dialler for the demo, tests and benchmarks.
//!
//! Shared by all: [`fields`] (the dialler's contact fields and values), [`key`] (UserData, cleaned and hashed), [`escape`] (text made safe
//! for logs and terminals) and `locking` (one mutex poisoning policy).

pub mod config;
pub mod daemon;
pub mod dialler;
pub mod emulator;
pub mod engine;
pub mod escape;
pub mod fields;
pub mod key;
mod locking;
pub mod source;
pub mod state;
