//! Progress of long work on stderr: a live bar or spinner on a terminal (indicatif), plain
//! lines at most once a second otherwise (CI logs, pipes), so output stays readable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// One piece of long work, counted in `unit`s.
pub struct Progress {
    bar: Option<ProgressBar>,
    what: String,
    unit: &'static str,
    total: Option<u64>,
    last_line: Option<Instant>,
}

impl Progress {
    /// Starts showing `what`, of `total` `unit`s if known.
    pub fn new(what: impl Into<String>, unit: &'static str, total: Option<u64>) -> Self {
        let what = what.into();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total {
                Some(total) => ProgressBar::new(total).with_style(
                    ProgressStyle::with_template(
                        "{spinner} {msg} [{bar:30}] {pos}/{len} {unit} ({elapsed})",
                    )
                    .expect("a valid template")
                    .progress_chars("=> "),
                ),
                None => ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("{spinner} {msg}: {pos} {unit} ({elapsed})")
                        .expect("a valid template"),
                ),
            };
            let bar = bar.with_message(what.clone());
            bar.set_style(bar.style().clone().with_key(
                "unit",
                move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(unit);
                },
            ));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            bar,
            what,
            unit,
            total,
            last_line: None,
        }
    }

    /// `done` units are done.
    pub fn set(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        if self
            .last_line
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            match self.total {
                Some(total) => eprintln!("cadre: {}: {done}/{total} {}", self.what, self.unit),
                None => eprintln!("cadre: {}: {done} {}", self.what, self.unit),
            }
            self.last_line = Some(Instant::now());
        }
    }

    /// A new phase of the same work (`verifying`, `round 2/3: metrics`).
    pub fn phase(&mut self, what: impl Into<String>) {
        self.what = what.into();
        match &self.bar {
            Some(bar) => bar.set_message(self.what.clone()),
            None => {
                eprintln!("cadre: {}", self.what);
                self.last_line = Some(Instant::now());
            }
        }
    }

    /// Done: the bar is cleared (the command prints its result next).
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
