//! How a run ends: its exit code ([`Exit`]) and, for a run that stopped before it was
//! done, the typed reason ([`Abort`]) with its cause kept as the error's source. Exit
//! codes, the words of reports and logs, and the ranking of several jobs' outcomes are
//! all derived here.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::TokenError;
use crate::dialler::{ClientError, DiallerError};
use crate::engine::guard::Tripped;
use crate::engine::pipeline::PlanError;
use crate::engine::plan::SpoolError;
use crate::engine::reconcile::ReconcileError;
use crate::state::StateError;

/// Exit codes, as documented in the README. In JSON (a report's `outcome`, the control
/// socket) and in log fields they are the same words: `ok`, `partial`, `config`,
/// `aborted`, `unauthorized`, `guard`; `export` and `campaign` are `validate`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// Everything in the export is on the dialler.
    Ok = 0,
    /// The run finished, but rows were rejected, operations failed or removals were held back.
    Partial = 1,
    /// The config (or the command line) is wrong; nothing was done.
    Config = 2,
    /// The run stopped early: the export, the state or the dialler failed.
    Aborted = 3,
    /// The dialler rejected the token or ClientsID (HTTP 401).
    Unauthorized = 4,
    /// A guard stopped the run before any change (empty or truncated export, too many
    /// removals or resets): check, then `--force` once or raise the limit.
    Guard = 5,
    /// `validate`: an export is missing or unreadable, or lacks a mapped column.
    Export = 6,
    /// `validate`: a job's campaign is not on the dialler.
    Campaign = 7,
}

impl Exit {
    /// How bad an outcome is, for the exit code of several jobs (the worst wins). Not the
    /// code's number: a 401 (every job fails until the token is fixed) outranks a
    /// failure of one run, which outranks a guard's deliberate stop.
    pub fn severity(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Partial => 1,
            Exit::Guard => 2,
            Exit::Campaign => 3,
            Exit::Export => 4,
            Exit::Aborted => 5,
            Exit::Unauthorized => 6,
            Exit::Config => 7,
        }
    }

    /// The word for this outcome, as in JSON.
    pub fn word(self) -> &'static str {
        match self {
            Exit::Ok => "ok",
            Exit::Partial => "partial",
            Exit::Config => "config",
            Exit::Aborted => "aborted",
            Exit::Unauthorized => "unauthorized",
            Exit::Guard => "guard",
            Exit::Export => "export",
            Exit::Campaign => "campaign",
        }
    }

    /// The worst of `outcomes` (`Ok` for none).
    pub fn worst(outcomes: impl IntoIterator<Item = Exit>) -> Exit {
        outcomes
            .into_iter()
            .max_by_key(|e| e.severity())
            .unwrap_or(Exit::Ok)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// What a run was doing when it stopped, as the start of the report's sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Opening the state database.
    OpenState,
    /// Reading the job's state before planning.
    ReadState,
    /// A dry run's read-only check of the dialler (token, ClientsID, campaign).
    Check,
    /// Reading the dialler's users, to check the agents a job maps.
    Users,
    /// A run with nothing to send checking that the token still works.
    Credentials,
    /// Settling the imports an interrupted run left pending.
    Settle,
    /// Reading the campaign back to verify the state.
    Verify,
    /// Reading the campaign's dialling outcomes (`[job.outcomes]`, `on_done`).
    Outcomes,
    /// Keeping the plan on disk until it is sent.
    Plan,
    /// Sending the plan.
    Send,
    /// Making the run's state durable at its end.
    Flush,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::OpenState => "the state could not be opened, so nothing was done",
            Step::ReadState => "the state could not be read, so nothing was changed",
            Step::Check => {
                "the dry run's check of the dialler (token, ClientsID, campaign) failed, so \
                 nothing was planned (--offline plans without it)"
            }
            Step::Users => {
                "could not read the dialler's users (to check the agent fields), so nothing \
                 was changed"
            }
            Step::Credentials => {
                "the check of the token with nothing to send failed (it runs at most every \
                 credential_check)"
            }
            Step::Settle => {
                "could not settle the imports an interrupted run left pending, so nothing \
                 was changed"
            }
            Step::Verify => {
                "could not verify the state against the dialler; nothing was sent to the \
                 dialler"
            }
            Step::Outcomes => {
                "could not read the campaign's dialling outcomes (its contacts and result \
                 codes), so nothing was changed"
            }
            Step::Plan => "the plan could not be kept on disk, so nothing was changed",
            Step::Send => "the run stopped; nothing after this call was sent",
            Step::Flush => {
                "the state could not be written to disk (is it full?); the next run checks \
                 this run's operations again"
            }
        })
    }
}

/// Why a run stopped before it was done. Nothing after the point it names was sent.
#[derive(Debug, thiserror::Error)]
pub enum Abort {
    /// A guard stopped the run before any change.
    #[error(transparent)]
    Guard(#[from] Tripped),
    /// The dialler rejected the token or ClientsID (HTTP 401).
    #[error("{during}")]
    Unauthorized {
        during: Step,
        #[source]
        source: DiallerError,
    },
    /// The dialler could not be reached, or refused what every call needs (a missing
    /// campaign or endpoint).
    #[error("{during}")]
    Dialler {
        during: Step,
        #[source]
        source: DiallerError,
    },
    /// The state database failed.
    #[error("{during}")]
    State {
        during: Step,
        #[source]
        source: StateError,
    },
    /// The plan's temporary file failed (a full disk).
    #[error("{during}")]
    Spool {
        during: Step,
        #[source]
        source: SpoolError,
    },
    /// The export could not be read (or its file could not be opened).
    #[error("the export could not be used, so nothing was changed")]
    Export(#[source] PlanError),
    /// A stop was requested (Ctrl-C, SIGTERM, the control socket).
    #[error("{}", stopped_words(*.done, *.planned))]
    Stopped { done: u64, planned: u64 },
    /// The token could not be read when the run started.
    #[error("the dialler token could not be read, so nothing was done")]
    Token(#[source] TokenError),
    /// The dialler client could not be built (a CA file that went away, say).
    #[error("the dialler client could not be set up, so nothing was done")]
    Client(#[source] ClientError),
    /// The job was removed by a config reload before its run's turn came.
    #[error("job {0} is no longer in the config (it was removed by a reload); nothing was done")]
    JobRemoved(String),
    /// A bug: a task of the run panicked.
    #[error("the run failed unexpectedly (a bug; please report it): {0}")]
    Crashed(String),
}

fn stopped_words(done: u64, planned: u64) -> String {
    if planned == 0 {
        "stopped on request before anything was sent".to_string()
    } else {
        format!("stopped on request after {done} of {planned} contacts; the next run does the rest")
    }
}

impl Abort {
    /// A dialler error at `during`: a 401 is [`Abort::Unauthorized`].
    pub fn dialler(during: Step, source: DiallerError) -> Abort {
        if source.is_unauthorized() {
            Abort::Unauthorized { during, source }
        } else {
            Abort::Dialler { during, source }
        }
    }

    /// A state error at `during`.
    pub fn state(during: Step, source: StateError) -> Abort {
        Abort::State { during, source }
    }

    /// What settling pending imports or verifying (`during`) failed with.
    pub fn reconcile(during: Step, e: ReconcileError) -> Abort {
        match e {
            ReconcileError::Dialler(d) => Abort::dialler(during, d),
            ReconcileError::State(s) => Abort::state(during, s),
            ReconcileError::DiallerReset(t) => Abort::Guard(t),
        }
    }

    /// Why reading and planning the export failed.
    pub fn plan(e: PlanError) -> Abort {
        match e {
            PlanError::State(s) => Abort::state(Step::ReadState, s),
            PlanError::Spool(source) => Abort::Spool {
                during: Step::Plan,
                source,
            },
            PlanError::Stopped => Abort::Stopped {
                done: 0,
                planned: 0,
            },
            e @ PlanError::Source(_) => Abort::Export(e),
        }
    }

    /// The exit code this stop gives.
    pub fn exit(&self) -> Exit {
        match self {
            Abort::Guard(_) => Exit::Guard,
            Abort::Unauthorized { .. } => Exit::Unauthorized,
            Abort::Dialler { .. }
            | Abort::State { .. }
            | Abort::Spool { .. }
            | Abort::Export(_)
            | Abort::Stopped { .. }
            | Abort::Token(_)
            | Abort::Client(_)
            | Abort::JobRemoved(_)
            | Abort::Crashed(_) => Exit::Aborted,
        }
    }

    /// One word for the kind of stop, for log fields (`stopped = "export"`).
    pub fn kind(&self) -> &'static str {
        match self {
            Abort::Guard(_) => "guard",
            Abort::Unauthorized { .. } => "unauthorized",
            Abort::Dialler { .. } => "dialler",
            Abort::State { .. } => "state",
            Abort::Spool { .. } => "disk",
            Abort::Export(_) => "export",
            Abort::Stopped { .. } => "stopped",
            Abort::Token(_) => "token",
            Abort::Client(_) => "client",
            Abort::JobRemoved(_) => "job_removed",
            Abort::Crashed(_) => "crashed",
        }
    }

    /// The stop and its causes in one line, as reports show it.
    pub fn chain(&self) -> String {
        error_chain(self)
    }
}

/// An error and its sources, `: `-separated.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_jobs_end_with_the_worst_outcome_by_severity_not_by_number() {
        use Exit::*;
        assert_eq!(Exit::worst([]), Ok);
        assert_eq!(Exit::worst([Ok, Partial]), Partial);
        // The numbers would pick 5 (guard); a 401 is worse: no job can run until it is
        // fixed.
        assert_eq!(Exit::worst([Guard, Unauthorized]), Unauthorized);
        assert_eq!(Exit::worst([Guard, Aborted, Partial]), Aborted);
        assert_eq!(Exit::worst([Partial, Guard]), Guard);
        assert_eq!(Exit::worst([Unauthorized, Aborted]), Unauthorized);
    }

    #[test]
    fn outcomes_are_the_same_words_in_json_and_in_logs() {
        use Exit::*;
        for e in [Ok, Partial, Config, Aborted, Unauthorized, Guard] {
            assert_eq!(serde_json::to_value(e).unwrap(), e.to_string());
        }
    }

    #[test]
    fn a_stop_keeps_its_cause_and_gives_its_exit_code() {
        let cause = StateError::Corrupt { key: "K1".into() };
        let a = Abort::state(Step::Flush, cause);
        assert_eq!(a.exit(), Exit::Aborted);
        assert!(std::error::Error::source(&a).is_some());
        let chain = a.chain();
        assert!(
            chain.starts_with("the state could not be written to disk"),
            "{chain}"
        );
        assert!(chain.contains("UserData \"K1\" is unreadable"), "{chain}");
        let stopped = Abort::Stopped {
            done: 3,
            planned: 10,
        };
        assert_eq!(
            stopped.to_string(),
            "stopped on request after 3 of 10 contacts; the next run does the rest"
        );
    }
}
