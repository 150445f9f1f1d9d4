//! One job's run, in data-flow order: [`pipeline`] reads the export ([`crate::source`])
//! and [`mapping`] turns each record into a contact ([`phone`] normalises numbers);
//! [`plan`] diffs the contacts against the [`crate::state`]; [`evidence`] checks each
//! removal against the export's raw text; [`guard`] stops a run that looks wrong;
//! [`execute`] sends the plan to the [`crate::dialler`] and commits each answer;
//! [`reconcile`] settles interrupted imports and verifies the state against the dialler.
//! [`run`] drives them; [`planners`] are the threads plans run on; [`preflight`] is `validate`'s check of the export and dialler; [`progress`] is a run's live counters, [`report`] what it did.

pub(crate) mod evidence;
pub(crate) mod execute;
pub(crate) mod guard;
mod job;
pub(crate) mod mapping;
pub(crate) mod outcome;
pub(crate) mod phone;
pub(crate) mod pipeline;
pub(crate) mod plan;
mod planners;
pub(crate) mod preflight;
pub(crate) mod progress;
pub(crate) mod reconcile;
pub(crate) mod report;
pub(crate) mod run;
