//! Scenario 1: SIGKILL under load. Two instances each of grading (one database) and log, a
//! portal, and steady load through the portal and straight at grading; one grading instance
//! is killed, later one log instance. Claim: no user request fails and no acknowledged log
//! record is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use system_tests::Gradebook;
use testkit::free_port;

use crate::common::{self, Acked, LogFiles};
use crate::load::Load;
use crate::report::Outcome;

const LOAD_TIME: Duration = Duration::from_secs(15);
const KILL_GRADING_AT: Duration = Duration::from_secs(5);
const KILL_LOG_AT: Duration = Duration::from_secs(10);

pub async fn run() -> Outcome {
    let mut outcome = Outcome::new(1, "SIGKILL under load (grading, then log)");
    let gradebook = Gradebook::new().await;
    let _log_1 = gradebook.start_log("log-1", free_port()).await;
    let mut log_2 = gradebook.start_log("log-2", free_port()).await;
    // Both grading instances share one database, as replicas of one service would.
    let grading_1 = gradebook.start_grading("grading", free_port()).await;
    let mut grading_2 = gradebook.start_grading("grading", free_port()).await;
    let portal = gradebook.start_portal().await;
    common::passing(&gradebook, "grading", 2).await;
    common::passing(&gradebook, "log", 2).await;
    common::portal_sees(
        &portal,
        &[grading_1.addr().to_string(), grading_2.addr().to_string()],
    )
    .await;
    let grading = common::discovered(&gradebook, "grading", 2).await;
    let log = common::discovered(&gradebook, "log", 2).await;

    let graded = Acked::default();
    let logged = Acked::default();
    let retried = Arc::new(AtomicU64::new(0));
    let loads = common::user_loads("s1", &portal, &grading, &graded, LOAD_TIME);
    let log_load = {
        let (log, logged, retried) = (log.clone(), logged.clone(), retried.clone());
        Load::start("log records", 2, 50, 1_500, LOAD_TIME, move |n| {
            let (log, logged, retried) = (log.clone(), logged.clone(), retried.clone());
            async move {
                let message = format!("s1-record-{n}");
                common::log_write(&log, &message, &logged, &retried).await
            }
        })
    };

    let started = Instant::now();
    tokio::time::sleep(KILL_GRADING_AT).await;
    grading_2.sigkill();
    // Grades acknowledged from here on were added by grading-1 (an answer from grading-2 read
    // just before the kill is counted well within this pause).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let grades_before_kill = graded.len();
    outcome.figure(format!(
        "grading-2 SIGKILLed at {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    tokio::time::sleep(KILL_LOG_AT.saturating_sub(started.elapsed())).await;
    log_2.sigkill();
    outcome.figure(format!(
        "log-2 SIGKILLed at {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    let mut tallies = Vec::new();
    for load in loads {
        tallies.push(load.finish().await);
    }
    let records = log_load.finish().await;
    common::report_user_loads(&mut outcome, &tallies);
    outcome.figure(format!(
        "log records written straight at log: {} sent, {} acknowledged, {} sent again after a lost answer, {} never acknowledged",
        records.sent,
        logged.len(),
        retried.load(Ordering::Relaxed),
        records.failed
    ));
    outcome.check(
        records.failed == 0,
        format!("log writes never acknowledged: {:?}", records.failures),
    );

    // Grades: each acknowledged one is in the shared database exactly once.
    let acked_grades = graded.all();
    common::report_grades(&mut outcome, &grading_1.base_url(), &acked_grades).await;

    // Log records: each acknowledged one is in one of the two files (the killed instance's
    // file included); so is grading's record of each grade added after grading-2 died (those
    // before may have died in its memory, never acknowledged by log).
    let by_title = common::grades_by_title(&grading_1.base_url())
        .await
        .unwrap_or_default();
    let shipped: Vec<String> = acked_grades[grades_before_kill..]
        .iter()
        .filter(|t| t.starts_with("s1-direct-"))
        .filter_map(|t| by_title.get(t)?.first())
        .map(|&(student, grade)| common::grade_record(student, grade))
        .collect();
    let dirs = [gradebook.data_dir("log-1"), gradebook.data_dir("log-2")];
    let dirs: Vec<&std::path::Path> = dirs.iter().map(|d| d.as_path()).collect();
    let acked_records = logged.all();
    let wait = Instant::now();
    let mut result = LogFiles::read(&dirs);
    // Shipping is asynchronous: give it time to deliver what grading-1 queued.
    while let Ok(files) = &result {
        let found = files.messages();
        if common::missing(&shipped, &found) == 0 || wait.elapsed() > Duration::from_secs(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        result = LogFiles::read(&dirs);
    }
    match result {
        Ok(files) => {
            let found = files.messages();
            let lost_records = common::missing(&acked_records, &found);
            let lost_shipped = common::missing(&shipped, &found);
            outcome.acked = (acked_records.len() + shipped.len() + acked_grades.len()) as u64;
            outcome.lost += lost_records + lost_shipped;
            outcome.figure(format!(
                "log records acknowledged: {} written straight at log, lost {lost_records}; {} shipped by grading after the kill, lost {lost_shipped} (all there {:.1} s after the load)",
                acked_records.len(),
                shipped.len(),
                wait.elapsed().as_secs_f64()
            ));
            outcome.check(
                lost_records == 0,
                format!("{lost_records} acknowledged records lost"),
            );
            outcome.check(
                lost_shipped == 0,
                format!("{lost_shipped} shipped grade records lost"),
            );
        }
        Err(err) => outcome.check(false, format!("the log files do not read back: {err}")),
    }

    // The killed log instance opens its store cleanly and serves again.
    let log_2 = gradebook.start_log("log-2", log_2.addr().port()).await;
    drop(log_2);
    outcome
}
