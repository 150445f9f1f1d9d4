//! dialsync keeps a jtel ACD dialler campaign in step with a CRM export.
//!
//! The modules follow the data flow of a sync run:
//! [`source`] (CRM export rows) -> [`mapping`] (dialler contacts) -> [`plan`] (diff against
//! [`state`], whose [`digest`] spots unchanged rows) -> [`execute`] (dialler API calls via [`dialler`], state commits) -> [`report`].
//! [`sync`] drives one run; [`config`] loads and checks the TOML; [`emulator`] is an
//! in-memory dialler for the demo, tests and benchmarks.

pub mod config;
pub mod control;
pub mod daemon;
pub mod dialler;
pub mod digest;
pub mod emulator;
pub mod escape;
pub mod evidence;
pub mod execute;
pub mod fields;
pub mod guard;
pub mod hashing;
mod locking;
pub mod mapping;
pub mod pace;
pub mod phone;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod reconcile;
pub mod report;
pub mod schedule;
pub mod snapshot;
pub mod source;
pub mod state;
pub mod status;
pub mod sync;
