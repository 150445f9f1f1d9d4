//! The progress bar of a manual `sync` on a terminal: one bar per job (rows read while
//! reading, then contacts done of planned, and failures). Nothing at all when stderr is
//! not a terminal, so logs, pipes and cron mails stay clean.

use std::io::IsTerminal;
use std::time::Duration;

use dialsync::{Phase, Snapshot};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub(super) struct Bars {
    enabled: bool,
    current: Option<(String, ProgressBar, Phase)>,
}

impl Bars {
    pub(super) fn new() -> Bars {
        Bars {
            enabled: std::io::stderr().is_terminal(),
            current: None,
        }
    }

    /// Shows `s`: a new bar when the job changes, a new style when the phase does.
    pub(super) fn update(&mut self, s: &Snapshot) {
        if !self.enabled || s.job.is_empty() {
            return;
        }
        if self
            .current
            .as_ref()
            .is_some_and(|(job, _, _)| *job != s.job)
        {
            self.finish();
        }
        let (_, bar, phase) = self.current.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(reading_style());
            bar.set_prefix(format!("job {}", s.job));
            bar.enable_steady_tick(Duration::from_millis(120));
            (s.job.clone(), bar, Phase::Reading)
        });
        if *phase != s.phase && s.phase == Phase::Sending {
            bar.set_style(sending_style());
            bar.set_length(s.planned);
        }
        *phase = s.phase;
        match s.phase {
            Phase::Reading => bar.set_message(format!("{} rows read", s.rows)),
            Phase::Sending | Phase::Finished => {
                bar.set_position(s.done);
                bar.set_message(format!("{} failed", s.failed));
            }
        }
        if s.phase == Phase::Finished {
            self.finish();
        }
    }

    /// A line above the bars.
    pub(super) fn note(&self, line: &str) {
        match &self.current {
            Some((_, bar, _)) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Removes the current bar (the summary printed afterwards says the rest).
    pub(super) fn finish(&mut self) {
        if let Some((_, bar, _)) = self.current.take() {
            bar.finish_and_clear();
        }
    }
}

fn reading_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix}: reading the export, {msg}")
        .expect("valid template")
}

fn sending_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner} {prefix}: [{bar:30}] {pos}/{len} contacts, {msg}, {elapsed}",
    )
    .expect("valid template")
    .progress_chars("=> ")
}
