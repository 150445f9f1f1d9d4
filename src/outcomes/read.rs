//! Reading outcomes: a campaign's result codes, and each listed contact's outcome compared
//! with the one last delivered, as the listing streams by.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::config::OutcomesConfig;
use crate::dialler::{record_campaign, record_id, Record};
use crate::key::{key_hash, record_key};
use crate::state::{DeliveredOutcomes, Entry, JobState, Outcome, StateError, StateView};

/// A result code of the campaign.
#[derive(Debug, Clone, Default)]
pub(crate) struct Code {
    pub export_key: Option<String>,
    pub content: Option<String>,
    pub done: bool,
    pub aborted: bool,
    pub delay: bool,
    pub appointment: bool,
}

/// The campaign's result codes by ID.
#[derive(Debug, Default)]
pub(crate) struct Codes(HashMap<i64, Code>);

impl Codes {
    /// From the records of `GET .../campaign/{ID}/resultCodes` (seed 003).
    pub(crate) fn from_records(records: &[Record]) -> Codes {
        let text = |r: &Record, k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
        let flag = |r: &Record, k: &str| match r.get(k) {
            Some(Value::Bool(b)) => *b,
            Some(Value::Number(n)) => n.as_i64() == Some(1),
            _ => false,
        };
        Codes(
            records
                .iter()
                .filter_map(|r| {
                    let id = record_id(r)?;
                    let code = Code {
                        export_key: text(r, "ExportKey"),
                        content: text(r, "Content"),
                        done: flag(r, "bDone"),
                        aborted: flag(r, "bAborted"),
                        delay: flag(r, "bDelay"),
                        appointment: flag(r, "bAppointment"),
                    };
                    Some((id, code))
                })
                .collect(),
        )
    }
}

/// The outcome the listed `record` (the contact `key`, `id`) holds now; `at` and `run`
/// say when it is seen.
pub(crate) fn outcome_of(
    record: &Record,
    key: String,
    id: i64,
    codes: &Codes,
    at: &str,
    run: &str,
) -> Outcome {
    let result_code_id = record
        .get("DiallerCampaignsResultCodesID")
        .and_then(Value::as_i64);
    let code = result_code_id
        .and_then(|c| codes.0.get(&c))
        .cloned()
        .unwrap_or_default();
    const TRIES: [&str; 6] = [
        "nTriesPhoneNumber1",
        "nTriesPhoneNumber2",
        "nTriesPhoneNumber3",
        "nTriesPhoneNumber4",
        "nTriesPhoneNumber5",
        "nTriesPhoneNumber6",
    ];
    let tries = TRIES
        .iter()
        .filter_map(|k| record.get(*k)?.as_u64())
        .sum::<u64>()
        .min(u64::from(u32::MAX)) as u32;
    let next_try = record
        .get("dtNextTry")
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string);
    Outcome {
        user_data: key,
        contact_id: id,
        result_code_id,
        export_key: code.export_key,
        content: code.content,
        done: code.done,
        aborted: code.aborted,
        delay: code.delay,
        appointment: code.appointment,
        tries,
        next_try,
        changed_at: at.to_string(),
        run_id: run.to_string(),
        ..Outcome::default()
    }
}

/// A contact's outcome found by the listing.
#[derive(Debug)]
pub(crate) struct Found {
    /// As the listing has it; unchanged, with the history fields and the first sighting
    /// of the one delivered.
    pub outcome: Outcome,
    /// It differs from the one last delivered (its history is read when asked for).
    pub changed: bool,
}

/// Which outcomes a job delivers (`final_only`; nothing without `[job.outcomes]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivers {
    Nothing,
    All,
    FinalOnly,
}

impl Delivers {
    pub(crate) fn of(cfg: Option<&OutcomesConfig>) -> Delivers {
        match cfg {
            None => Delivers::Nothing,
            Some(c) if c.final_only => Delivers::FinalOnly,
            Some(_) => Delivers::All,
        }
    }

    pub(crate) fn takes(self, o: &Outcome) -> bool {
        match self {
            Delivers::Nothing => false,
            Delivers::All => true,
            Delivers::FinalOnly => o.is_final(),
        }
    }
}

/// What the collector does with the outcomes it finds.
pub(crate) enum Keep {
    /// A run: every changed outcome is staged in the state.
    Stage,
    /// A dry run: the changed outcomes the job delivers are counted, the first `limit`
    /// kept.
    First { limit: usize, delivers: Delivers },
    /// `outcomes --fetch`: every outcome, changed or delivered before, is kept.
    All,
}

/// What the collector gathered.
#[derive(Debug, Default)]
pub(crate) struct Gathered {
    /// Contacts of the campaign listed.
    pub listed: u64,
    /// Outcomes of the job's contacts changed since the last delivered one.
    pub changed: u64,
    /// A dry run: changed outcomes the job would deliver.
    pub wanted: u64,
    /// Outcomes kept (see [`Keep`]).
    pub kept: Vec<Found>,
    /// `on_done = "lock"`: contacts with a final result that are not locked.
    pub to_lock: Vec<(String, Entry)>,
    /// `on_done = "lock"`: key hashes of contacts with a final result, locked already.
    pub final_locked: HashSet<u64>,
    pub error: Option<StateError>,
}

/// Sees each listed record (in the listing's blocking thread) and stages or keeps each
/// outcome of the job's contacts that changed since the one last delivered.
pub(crate) struct Collector {
    pub(crate) state: JobState,
    /// What was delivered before (`None`: nothing yet).
    pub(crate) delivered: Option<DeliveredOutcomes>,
    pub(crate) codes: Codes,
    pub(crate) campaign: i64,
    pub(crate) keep: Keep,
    pub(crate) lock_done: bool,
    pub(crate) at: String,
    pub(crate) run: String,
    pub(crate) gathered: Gathered,
}

impl Collector {
    pub(crate) fn see(&mut self, r: &Record) {
        if record_campaign(r).is_some_and(|c| c != self.campaign) {
            return;
        }
        self.gathered.listed += 1;
        if self.gathered.error.is_some() {
            return;
        }
        if let Err(e) = self.try_see(r) {
            self.gathered.error = Some(e);
        }
    }

    fn try_see(&mut self, r: &Record) -> Result<(), StateError> {
        let (Some(id), Some(key)) = (record_id(r), record_key(r)) else {
            return Ok(());
        };
        let g = &mut self.gathered;
        // Only the job's own contacts, under the ID it knows (under another ID the
        // verification re-learns it, and a later run reads its outcome).
        let entry = match self.state.get(&key)? {
            Some(e) if e.id == id => e,
            _ => return Ok(()),
        };
        let mut outcome = outcome_of(r, key, id, &self.codes, &self.at, &self.run);
        if self.lock_done && outcome.is_final() {
            if entry.locked {
                g.final_locked.insert(key_hash(&outcome.user_data));
            } else {
                g.to_lock.push((outcome.user_data.clone(), entry));
            }
        }
        let delivered = match &self.delivered {
            Some(d) => d.get(&outcome.user_data)?,
            None => None,
        };
        let changed = match delivered.as_ref().and_then(|d| d.hash()) {
            Some(h) => h != outcome.hash(),
            // Nothing happened to it yet, and nothing was delivered: no news.
            None => !outcome.is_empty(),
        };
        g.changed += u64::from(changed);
        match self.keep {
            Keep::Stage if changed => self.state.stage_outcome(&outcome)?,
            Keep::First { limit, delivers } if changed && delivers.takes(&outcome) => {
                g.wanted += 1;
                if g.kept.len() < limit {
                    g.kept.push(Found { outcome, changed });
                }
            }
            Keep::All if changed => g.kept.push(Found { outcome, changed }),
            Keep::All => {
                if let Some(d) = delivered {
                    let stored = d.outcome(&outcome.user_data)?;
                    outcome.last_call_end = stored.last_call_end;
                    outcome.connected_calls = stored.connected_calls;
                    outcome.agent_id = stored.agent_id;
                    outcome.changed_at = stored.changed_at;
                    outcome.run_id = stored.run_id;
                    g.kept.push(Found { outcome, changed });
                }
            }
            _ => {}
        }
        Ok(())
    }
}
