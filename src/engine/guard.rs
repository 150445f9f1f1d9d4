//! The guards a plan passes before anything is written: they catch a broken CRM export
//! (empty, or much shorter than the last good one) and a plan that would remove or reset
//! much of the campaign at once. A tripped guard stops the run before its first call
//! and says what it saw and how to go on (`--force` for one run, or a higher limit).

use crate::config::Guards;
use crate::state::{GuardTrip, StateError, Store};

/// Percentage limits do not stop a plan of this many operations or fewer (nor an export
/// this many rows shorter than the last good one), so that a small campaign can lose a
/// contact or two without an operator stepping in. Count limits (`max_removals`,
/// `max_resets`) apply from the first.
pub(crate) const PERCENT_FLOOR: u64 = 10;

/// What the guards look at.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Facts {
    /// Rows read, valid or not.
    pub rows: u64,
    /// Valid rows.
    pub valid: u64,
    /// Contacts in the state before the run.
    pub known: u64,
    /// Rows of the last run that was not aborted, if any.
    pub last_good_rows: Option<u64>,
    /// Locks and deletes planned.
    pub removals: u64,
    /// Resets planned.
    pub resets: u64,
}

/// A limit a plan or an export went over: the numbers, and (as its text) what to do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Tripped {
    #[error(
        "guard: the export has no usable rows ({rows} read, all invalid or none at all), but \
         the state holds {known} contacts. An empty export is taken for a failed CRM export; \
         nothing was changed. Check the export; if the campaign is really to be emptied, run \
         once with `dialsync sync --job {job} --force`"
    )]
    EmptyExport { job: String, rows: u64, known: u64 },
    #[error(
        "guard: the export has {rows} rows, fewer than {min_rows_percent}% of the last good \
         run's {last} (min_rows_percent); it is taken for a truncated export and nothing was \
         changed. Check the CRM export; if the drop is real, run once with \
         `dialsync sync --job {job} --force` or lower min_rows_percent in job {job}"
    )]
    Truncated {
        job: String,
        rows: u64,
        last: u64,
        min_rows_percent: f64,
    },
    #[error(
        "guard: the plan would {} {n} of the {known} contacts in the state ({:.1}%), over the \
         job's limit ({}); nothing was changed. Check that the export is complete; if \
         this is intended, run once with `dialsync sync --job {job} --force`, or raise {} / \
         {}_percent in job {job}",
        .what.verb(), share(*.n, *.known), .limit.words(*.what), .what.key(), .what.key()
    )]
    TooMany {
        job: String,
        what: Operation,
        n: u64,
        known: u64,
        limit: Limit,
    },
    /// Most stored IDs are unknown to the dialler (found by verification): acting on them
    /// could hit other contacts, and importing could fill another server.
    #[error(
        "the dialler knows only {confirmed} of the {checked} contacts in the state under their \
         IDs: it was probably reset or restored from a backup, or base_url now points at \
         another server. Nothing was changed. If the dialler is right, run once with \
         `dialsync sync --job {job} --force` (the IDs it still has are re-learned, the \
         contacts it lacks imported again), or start the state afresh from it with \
         `dialsync state rebuild --job {job}`"
    )]
    DiallerForgot {
        job: String,
        confirmed: u64,
        checked: u64,
    },
}

impl Tripped {
    /// The guard's name, for metrics: `empty_export`, `truncated_export`, `max_removals`,
    /// `max_resets` or `dialler_forgot`.
    pub fn name(&self) -> &'static str {
        match self {
            Tripped::EmptyExport { .. } => "empty_export",
            Tripped::Truncated { .. } => "truncated_export",
            Tripped::TooMany { what, .. } => what.key(),
            Tripped::DiallerForgot { .. } => "dialler_forgot",
        }
    }
}

/// What a plan would do too much of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Removals,
    Resets,
}

impl Operation {
    fn verb(self) -> &'static str {
        match self {
            Operation::Removals => "lock or delete",
            Operation::Resets => "reset",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Operation::Removals => "max_removals",
            Operation::Resets => "max_resets",
        }
    }
}

/// The limit that was passed: a count (`max_removals`) or a share of the contacts
/// (`max_removals_percent`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    Count(u64),
    Percent(f64),
}

impl Limit {
    /// The setting as the config file has it, for limits on `what`.
    fn words(self, what: Operation) -> String {
        match self {
            Limit::Count(max) => format!("{} = {max}", what.key()),
            Limit::Percent(max) => format!("{}_percent = {max}", what.key()),
        }
    }
}

fn share(n: u64, known: u64) -> f64 {
    if known == 0 {
        100.0
    } else {
        n as f64 * 100.0 / known as f64
    }
}

/// Whether the guards let a run with these facts go on; if not, which one stops it.
pub(crate) fn check(job: &str, g: &Guards, f: &Facts) -> Result<(), Tripped> {
    if f.valid == 0 && f.known > 0 {
        return Err(Tripped::EmptyExport {
            job: job.to_string(),
            rows: f.rows,
            known: f.known,
        });
    }
    if let Some(last) = f.last_good_rows {
        let least = last as f64 * g.min_rows_percent / 100.0;
        if (f.rows as f64) < least && last - f.rows > PERCENT_FLOOR {
            return Err(Tripped::Truncated {
                job: job.to_string(),
                rows: f.rows,
                last,
                min_rows_percent: g.min_rows_percent,
            });
        }
    }
    over(
        job,
        Operation::Removals,
        f.removals,
        g.max_removals,
        g.max_removals_percent,
        f.known,
    )?;
    over(
        job,
        Operation::Resets,
        f.resets,
        g.max_resets,
        g.max_resets_percent,
        f.known,
    )?;
    Ok(())
}

fn over(
    job: &str,
    what: Operation,
    n: u64,
    count: Option<u64>,
    percent: f64,
    known: u64,
) -> Result<(), Tripped> {
    let limit = match count {
        Some(max) if n > max => Limit::Count(max),
        _ if n > PERCENT_FLOOR && share(n, known) > percent => Limit::Percent(percent),
        _ => return Ok(()),
    };
    Err(Tripped::TooMany {
        job: job.to_string(),
        what,
        n,
        known,
        limit,
    })
}

/// Records whether a guard stops `job` now (`tripped`) and logs the change: an ERROR when
/// a guard starts to stop its runs, INFO while it goes on (a frequent schedule would
/// otherwise raise the same alarm every few minutes) and when it stops.
pub(crate) fn note_guard(
    store: &Store,
    job: &str,
    tripped: Option<&str>,
    now: &str,
) -> Result<(), StateError> {
    let before = store.guard_trip(job)?;
    match (tripped, &before) {
        (Some(why), None) => {
            tracing::error!(guard = %why, "guard tripped: runs of this job change nothing until it is resolved");
            store.set_guard_trip(
                job,
                Some(&GuardTrip {
                    since: now.to_string(),
                    guard: why.to_string(),
                }),
            )
        }
        (Some(why), Some(trip)) => {
            tracing::info!(guard = %why, since = %trip.since, "guard still tripped");
            store.set_guard_trip(
                job,
                Some(&GuardTrip {
                    since: trip.since.clone(),
                    guard: why.to_string(),
                }),
            )
        }
        (None, Some(trip)) => {
            tracing::info!(since = %trip.since, "the guard no longer stops this job's runs");
            store.set_guard_trip(job, None)
        }
        (None, None) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            rows: 1000,
            valid: 990,
            known: 1000,
            last_good_rows: Some(1000),
            removals: 10,
            resets: 0,
        }
    }

    #[test]
    fn a_normal_run_passes() {
        assert_eq!(check("j", &Guards::default(), &facts()), Ok(()));
        // A first run: nothing known, nothing to compare with.
        let first = Facts {
            known: 0,
            last_good_rows: None,
            removals: 0,
            ..facts()
        };
        assert_eq!(check("j", &Guards::default(), &first), Ok(()));
        // Empty export with an empty state: nothing to protect.
        let empty = Facts {
            rows: 0,
            valid: 0,
            known: 0,
            last_good_rows: None,
            removals: 0,
            resets: 0,
        };
        assert_eq!(check("j", &Guards::default(), &empty), Ok(()));
    }

    #[test]
    fn empty_and_truncated_exports_trip() {
        let g = Guards::default();
        let e = check(
            "j",
            &g,
            &Facts {
                rows: 3,
                valid: 0,
                ..facts()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no usable rows") && e.contains("--force"), "{e}");
        let e = check(
            "j",
            &g,
            &Facts {
                rows: 500,
                valid: 500,
                ..facts()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("500 rows") && e.contains("1000") && e.contains("min_rows_percent"),
            "{e}"
        );
        // 75% of 1000 is allowed, 749 is not.
        assert!(check(
            "j",
            &g,
            &Facts {
                rows: 750,
                valid: 750,
                removals: 0,
                ..facts()
            }
        )
        .is_ok());
        assert!(check(
            "j",
            &g,
            &Facts {
                rows: 749,
                valid: 749,
                removals: 0,
                ..facts()
            }
        )
        .is_err());
        // A small export may shrink by a few rows.
        let small = Facts {
            rows: 2,
            valid: 2,
            known: 3,
            last_good_rows: Some(3),
            removals: 1,
            resets: 0,
        };
        assert!(check("j", &g, &small).is_ok());
        let off = Guards {
            min_rows_percent: 0.0,
            ..g
        };
        assert!(check(
            "j",
            &off,
            &Facts {
                rows: 1,
                valid: 1,
                removals: 0,
                ..facts()
            }
        )
        .is_ok());
    }

    #[test]
    fn removal_and_reset_limits_by_count_and_percent() {
        let g = Guards::default();
        // 10% of 1000 is the default limit.
        assert!(check(
            "j",
            &g,
            &Facts {
                removals: 100,
                ..facts()
            }
        )
        .is_ok());
        let e = check(
            "j",
            &g,
            &Facts {
                removals: 101,
                ..facts()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("lock or delete 101 of the 1000") && e.contains("max_removals_percent = 10"),
            "{e}"
        );
        // A small campaign may lose a few without a guard.
        assert!(check(
            "j",
            &g,
            &Facts {
                known: 12,
                removals: 10,
                rows: 2,
                valid: 2,
                last_good_rows: None,
                ..facts()
            }
        )
        .is_ok());
        // A count limit applies from the first.
        let counted = Guards {
            max_removals: Some(5),
            ..g
        };
        let e = check(
            "j",
            &counted,
            &Facts {
                removals: 6,
                ..facts()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("max_removals = 5"), "{e}");
        let e = check(
            "j",
            &g,
            &Facts {
                resets: 251,
                ..facts()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("reset 251") && e.contains("max_resets_percent = 25"),
            "{e}"
        );
        let off = Guards {
            max_removals_percent: 100.0,
            ..g
        };
        assert!(check(
            "j",
            &off,
            &Facts {
                removals: 1000,
                ..facts()
            }
        )
        .is_ok());
    }
}
