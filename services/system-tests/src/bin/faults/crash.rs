//! Scenario 6: crash consistency. The log service and grading are SIGKILLed while clients
//! write to them as fast as they answer, three times; before the second and third restart a
//! torn last line (a record cut mid-write, as a power cut can leave it) is added to the log
//! file. Claims: after each restart both stores open cleanly (the service is healthy, SQLite's
//! integrity check passes), every acknowledged record and grade is there, and the torn line is
//! cut off, never taken for a record.

use std::io::Write as _;
use std::time::Duration;

use system_tests::{Gradebook, client};
use testkit::free_port;

use crate::common::{self, Acked, LogFiles};
use crate::load::{self, Load};
use crate::report::Outcome;

const ROUNDS: u64 = 3;

pub async fn run() -> Outcome {
    let mut outcome = Outcome::new(6, "SIGKILL during writes: crash consistency");
    let gradebook = Gradebook::new().await;
    let (log_port, grading_port) = (free_port(), free_port());
    let mut log = gradebook.start_log("log", log_port).await;
    let mut grading = gradebook.start_grading("grading", grading_port).await;
    let log_file = gradebook.data_dir("log").join("records.jsonl");
    let database = gradebook.data_dir("grading").join("grading.sqlite3");
    let (logged, graded) = (Acked::default(), Acked::default());
    let mut cut_short = 0;
    let mut torn_cut = 0;

    for round in 0..ROUNDS {
        let http = client();
        let loads = vec![
            {
                let (http, url, logged) = (http.clone(), log.base_url(), logged.clone());
                Load::start(
                    "log writes",
                    4,
                    0,
                    30_000,
                    Duration::from_secs(10),
                    move |n| {
                        let (http, url, logged) = (http.clone(), url.clone(), logged.clone());
                        let message = format!("s6-{round}-{n}");
                        async move { common::instance_log_write(&http, &url, &message, &logged).await }
                    },
                )
            },
            {
                let (http, url, graded) = (http.clone(), grading.base_url(), graded.clone());
                Load::start(
                    "grade writes",
                    4,
                    0,
                    10_000,
                    Duration::from_secs(10),
                    move |n| {
                        let (http, url, graded) = (http.clone(), url.clone(), graded.clone());
                        let title = format!("s6-{round}-{n}");
                        async move { common::instance_grade(&http, &url, &title, n, &graded).await }
                    },
                )
            },
        ];
        tokio::time::sleep(Duration::from_millis(fastrand::u64(800..1_600))).await;
        log.sigkill();
        grading.sigkill();
        let tallies = load::stop_all(loads).await;
        for t in &tallies {
            outcome.requests += t.sent;
            // Writes cut short by the kill were never acknowledged: not a failure of the claim.
            cut_short += t.failed;
        }

        // While both are down: the files as the crash left them.
        match LogFiles::read(&[&gradebook.data_dir("log")]) {
            Ok(files) => {
                if files.unterminated > 0 {
                    outcome.figure(format!(
                        "round {}: the kill left a torn last line",
                        round + 1
                    ));
                }
            }
            Err(err) => outcome.check(false, format!("round {}: {err}", round + 1)),
        }
        match integrity_check(&database) {
            Ok(verdict) => outcome.check(
                verdict == "ok",
                format!("round {}: SQLite integrity check: {verdict}", round + 1),
            ),
            Err(err) => outcome.check(false, format!("round {}: {err}", round + 1)),
        }
        if round > 0 {
            let torn = format!(
                "{{\"time\":\"2026-11-21T16:05:03.123Z\",\"service\":\"faults\",\"level\":\"info\",\"message\":\"s6-torn-{round}"
            );
            let appended = std::fs::OpenOptions::new()
                .append(true)
                .open(&log_file)
                .and_then(|mut f| f.write_all(torn.as_bytes()));
            outcome.check(
                appended.is_ok(),
                format!("cannot tear the log file: {appended:?}"),
            );
        }

        log = gradebook.start_log("log", log_port).await;
        grading = gradebook.start_grading("grading", grading_port).await;
        if round > 0 && log.output().contains("cutting off a torn last line") {
            torn_cut += 1;
        }

        match LogFiles::read(&[&gradebook.data_dir("log")]) {
            Ok(files) => {
                let found = files.messages();
                let lost = common::missing(&logged.all(), &found);
                let torn_taken = found.iter().filter(|m| m.starts_with("s6-torn")).count();
                outcome.check(
                    lost == 0,
                    format!("round {}: {lost} records lost", round + 1),
                );
                outcome.check(
                    files.unterminated == 0 && torn_taken == 0,
                    format!(
                        "round {}: torn line left ({} unterminated, {torn_taken} taken for records)",
                        round + 1,
                        files.unterminated
                    ),
                );
                outcome.lost += lost;
            }
            Err(err) => outcome.check(false, format!("round {}: {err}", round + 1)),
        }
        match common::check_grades(&grading.base_url(), &graded.all()).await {
            Ok((missing, duplicated)) => {
                outcome.check(
                    missing + duplicated == 0,
                    format!(
                        "round {}: grades missing {missing}, stored twice {duplicated}",
                        round + 1
                    ),
                );
                outcome.lost += missing;
            }
            Err(err) => outcome.check(false, format!("round {}: {err}", round + 1)),
        }
    }
    outcome.acked = (logged.len() + graded.len()) as u64;
    outcome.figure(format!(
        "{ROUNDS} rounds of SIGKILL during writes: {} log records and {} grades acknowledged, all found after each restart; {cut_short} writes refused or cut short by the kills (never acknowledged)",
        logged.len(),
        graded.len()
    ));
    outcome.figure(format!(
        "torn last line added before {} restarts, cut off at open {torn_cut} times, never served",
        ROUNDS - 1
    ));
    outcome.check(
        torn_cut == ROUNDS - 1,
        format!(
            "the store cut a torn line {torn_cut} of {} times",
            ROUNDS - 1
        ),
    );
    outcome
}

/// SQLite's own verdict on the database file (`ok` when sound).
fn integrity_check(path: &std::path::Path) -> Result<String, String> {
    let conn = rusqlite::Connection::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    conn.query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .map_err(|e| format!("{}: {e}", path.display()))
}
