//! Scenario 4: the log service is down for 30 s while grading and the portal produce records.
//! Claims: every record produced meanwhile is delivered once log is back, as long as it fits
//! the shipping buffer; what does not fit is counted and reported, never lost silently.
//!
//! Three producers: a grading instance that ships at `info` (one "grade added" record per grade
//! the load adds), the portal shipping at `debug` (one record per page request, each page a
//! unique 404 so each record can be looked for), and a second grading instance shipping at
//! `debug` that is flooded with more requests than its buffer holds.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use service_runtime::telemetry::SHIPPING_BUFFER;
use system_tests::{Gradebook, PATIENCE, client};
use testkit::{eventually, free_port};

use crate::common::{self, Acked, LogFiles};
use crate::load::Load;
use crate::report::Outcome;

const OUTAGE: Duration = Duration::from_secs(30);
/// Records the shipper holds in hand besides its queue: one batch.
const BATCH: u64 = 500;
/// Flood requests: well over the buffer.
const FLOOD: u64 = SHIPPING_BUFFER as u64 + 2_000;

pub async fn run() -> Outcome {
    let mut outcome = Outcome::new(4, "log service down 30 s while records are produced");
    let gradebook = Gradebook::new().await;
    let log_port = free_port();
    let mut log = gradebook.start_log("log", log_port).await;
    let grading = gradebook.start_grading("grading", free_port()).await;
    let debug = [("GRADEBOOK_SHIP_LEVEL", "debug".to_owned())];
    let data = vec![
        "--data-dir".to_owned(),
        gradebook.data_dir("grading").display().to_string(),
    ];
    let flooded = gradebook
        .start_with("grading-service", free_port(), &data, &debug)
        .await;
    let portal = gradebook
        .start_with("portal", free_port(), &[], &debug)
        .await;
    common::passing(&gradebook, "grading", 2).await;
    let log_url = format!("http://127.0.0.1:{log_port}/log?limit=10000");
    eventually(
        "the producers' first records reach log",
        PATIENCE,
        || async {
            let records: Vec<serde_json::Value> = client()
                .get(&log_url)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let from = |service: &str| records.iter().any(|r| r["service"] == service);
            (from("grading") && from("portal")).then_some(())
        },
    )
    .await;

    log.sigkill();
    let down = Instant::now();
    outcome.figure("log SIGKILLed; the producers keep working");
    let graded = Acked::default();
    let http = client();
    let loads = vec![
        {
            let (http, url, graded) = (http.clone(), grading.base_url(), graded.clone());
            Load::start(
                "grades at grading",
                2,
                20,
                1_000,
                OUTAGE - Duration::from_secs(5),
                move |n| {
                    let (http, url, graded) = (http.clone(), url.clone(), graded.clone());
                    async move {
                        let title = format!("s4-{n}");
                        common::instance_grade(&http, &url, &title, n, &graded).await
                    }
                },
            )
        },
        {
            let (http, url) = (http.clone(), portal.base_url());
            Load::start(
                "portal pages",
                2,
                25,
                1_250,
                OUTAGE - Duration::from_secs(5),
                move |n| {
                    let (http, url) = (http.clone(), url.clone());
                    async move { expect_404(&http, &format!("{url}/s4/portal/{n}")).await }
                },
            )
        },
        {
            let (http, url) = (http.clone(), flooded.base_url());
            Load::start(
                "flood at grading",
                4,
                0,
                FLOOD,
                OUTAGE - Duration::from_secs(5),
                move |n| {
                    let (http, url) = (http.clone(), url.clone());
                    async move { expect_404(&http, &format!("{url}/s4/flood/{n}")).await }
                },
            )
        },
    ];
    let mut tallies = Vec::new();
    for load in loads {
        tallies.push(load.finish().await);
    }
    tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;
    let _log = gradebook.start_log("log", log_port).await;
    let back = Instant::now();
    outcome.figure(format!(
        "log started again after {:.1} s",
        down.elapsed().as_secs_f64()
    ));
    let flood_sent = tallies[2].sent;
    common::report_user_loads(&mut outcome, &tallies[..2]);
    outcome.requests += flood_sent;
    outcome.failed += tallies[2].failed;
    outcome.check(
        tallies[2].failed == 0,
        format!("flood requests failed: {:?}", tallies[2].failures),
    );

    // What must arrive: a record per grade, a record per portal page.
    let acked = graded.all();
    let by_title = common::grades_by_title(&grading.base_url())
        .await
        .unwrap_or_default();
    let grade_records: Vec<String> = acked
        .iter()
        .filter_map(|t| by_title.get(t)?.first())
        .map(|&(student, grade)| common::grade_record(student, grade))
        .collect();
    let portal_paths: Vec<String> = (0..tallies[1].sent)
        .map(|n| path_field(&format!("/s4/portal/{n}")))
        .collect();
    let flood_paths: Vec<String> = (0..flood_sent)
        .map(|n| path_field(&format!("/s4/flood/{n}")))
        .collect();
    let dirs = [gradebook.data_dir("log")];
    let dirs: Vec<&std::path::Path> = dirs.iter().map(|d| d.as_path()).collect();
    let mut files = None;
    while back.elapsed() < Duration::from_secs(30) {
        match LogFiles::read(&dirs) {
            Ok(read) => {
                let messages = read.messages();
                let paths = paths_in(&messages);
                let flood_delivered = flood_paths.len() - missing_in(&flood_paths, &paths);
                let dropped: u64 = dropped_reports(&read).iter().sum();
                // Done once every record is delivered or reported dropped.
                let done = common::missing(&grade_records, &messages) == 0
                    && missing_in(&portal_paths, &paths) == 0
                    && flood_delivered as u64 + dropped >= flood_sent;
                files = Some(read);
                if done {
                    break;
                }
            }
            Err(err) => {
                outcome.check(false, err);
                return outcome;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let delivered_in = back.elapsed();
    let Some(files) = files else {
        outcome.check(false, "the log file could not be read");
        return outcome;
    };
    let messages = files.messages();
    let paths = paths_in(&messages);
    let lost_grades = common::missing(&grade_records, &messages);
    let lost_pages = missing_in(&portal_paths, &paths) as u64;
    outcome.acked = (grade_records.len() + portal_paths.len()) as u64;
    outcome.lost = lost_grades + lost_pages;
    outcome.figure(format!(
        "records made while log was down: {} grade records (lost {lost_grades}), {} portal page records (lost {lost_pages}); every record delivered or reported dropped {:.1} s after log's return",
        grade_records.len(),
        portal_paths.len(),
        delivered_in.as_secs_f64()
    ));
    outcome.check(
        lost_grades + lost_pages == 0,
        format!("{} records lost", lost_grades + lost_pages),
    );

    // The flooded instance: what fit was delivered, the rest was counted and reported.
    let flood_delivered = (flood_paths.len() - missing_in(&flood_paths, &paths)) as u64;
    let reports = dropped_reports(&files);
    let dropped: u64 = reports.iter().sum();
    outcome.figure(format!(
        "flooded grading instance: {flood_sent} records made while log was down, {flood_delivered} delivered, {dropped} reported dropped (buffer {SHIPPING_BUFFER} + one batch of {BATCH} in hand; {} drop report(s) in the log)",
        reports.len()
    ));
    outcome.check(
        flood_delivered <= SHIPPING_BUFFER as u64 + BATCH,
        format!("{flood_delivered} flood records delivered, more than the buffer holds"),
    );
    outcome.check(
        dropped > 0 && flood_delivered + dropped >= flood_sent,
        format!(
            "{} flood records neither delivered nor reported dropped",
            flood_sent.saturating_sub(flood_delivered + dropped)
        ),
    );
    outcome
}

async fn expect_404(http: &reqwest::Client, url: &str) -> Result<(), String> {
    match http.get(url).send().await {
        Ok(response) if response.status() == 404 => response
            .bytes()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Ok(response) => Err(format!("{url}: {}", response.status())),
        Err(err) => Err(format!("{url}: {err}")),
    }
}

/// How a request's path appears in the record of its request log line.
fn path_field(path: &str) -> String {
    format!("path=\"{path}\"")
}

/// The `path="..."` fields of request records ("request method=GET path=\"/x\" status=404
/// micros=...").
fn paths_in(messages: &HashSet<String>) -> HashSet<&str> {
    messages
        .iter()
        .filter_map(|m| {
            let start = m.find("path=\"")?;
            let end = m[start + 6..].find('"')? + start + 7;
            Some(&m[start..end])
        })
        .collect()
}

/// How many of `fields` are not among `paths`.
fn missing_in(fields: &[String], paths: &HashSet<&str>) -> usize {
    fields
        .iter()
        .filter(|f| !paths.contains(f.as_str()))
        .count()
}

/// The counts in grading's "N log records were dropped ..." records.
fn dropped_reports(files: &LogFiles) -> Vec<u64> {
    files
        .records
        .iter()
        .filter(|r| r["service"] == "grading")
        .filter_map(|r| r["message"].as_str())
        .filter(|m| m.contains("log records were dropped"))
        .filter_map(|m| m.split_whitespace().next()?.parse().ok())
        .collect()
}
