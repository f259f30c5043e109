//! What a scenario found, and the table of all of them printed at the end.

use std::fmt::Write as _;
use std::time::Duration;

/// The figures and verdict of one scenario.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub number: u8,
    pub name: &'static str,
    /// User requests sent, and how many of them failed.
    pub requests: u64,
    pub failed: u64,
    /// Writes (log records, grades) acknowledged, and how many of those were not found after.
    pub acked: u64,
    pub lost: u64,
    /// Other figures: timings, counts of retries, what was dropped and reported.
    pub figures: Vec<String>,
    /// Each way the scenario's claim did not hold; empty when it held.
    pub problems: Vec<String>,
    /// Why the scenario could not run here (it is then neither passed nor failed).
    pub skipped: Option<String>,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn new(number: u8, name: &'static str) -> Outcome {
        Outcome {
            number,
            name,
            ..Outcome::default()
        }
    }

    /// Adds a figure to the report.
    pub fn figure(&mut self, figure: impl Into<String>) {
        let figure = figure.into();
        eprintln!("faults: {}: {figure}", self.number);
        self.figures.push(figure);
    }

    /// Records that the claim does not hold unless `holds`.
    pub fn check(&mut self, holds: bool, problem: impl Into<String>) {
        if !holds {
            let problem = problem.into();
            eprintln!("faults: {}: CLAIM FAILED: {problem}", self.number);
            self.problems.push(problem);
        }
    }

    pub fn verdict(&self) -> &'static str {
        match (&self.skipped, self.problems.is_empty()) {
            (Some(_), _) => "skipped",
            (None, true) => "pass",
            (None, false) => "FAIL",
        }
    }
}

/// The table of every scenario as Markdown (it is pasted into RELIABILITY.md as it is).
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    out.push_str(
        "| # | scenario | requests sent | failed | records acked | records lost | time | verdict |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|---:|---|\n");
    for o in outcomes {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.0} s | {} |",
            o.number,
            o.name,
            o.requests,
            o.failed,
            o.acked,
            o.lost,
            o.elapsed.as_secs_f64(),
            o.verdict()
        );
    }
    out.push('\n');
    for o in outcomes {
        let _ = writeln!(out, "{}. **{}**", o.number, o.name);
        if let Some(reason) = &o.skipped {
            let _ = writeln!(out, "   - skipped: {reason}");
        }
        for figure in &o.figures {
            let _ = writeln!(out, "   - {figure}");
        }
        for problem in &o.problems {
            let _ = writeln!(out, "   - **claim failed**: {problem}");
        }
    }
    out
}
