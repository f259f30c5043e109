//! Scenario 3: the Consul agent is stopped for 30 s, then started again with its state lost
//! (a dev agent keeps nothing). Claims: every service keeps serving on its last known
//! providers (no request fails, before, during or after); every instance is back in the
//! catalogue within 10 s of the agent's return; while the agent is down each watcher's retries
//! are capped, and are counted here.

use std::time::{Duration, Instant};

use system_tests::{Gradebook, client};
use testkit::{ServiceProcess, free_port};

use crate::common::{self, Acked};
use crate::report::Outcome;

const OUTAGE: Duration = Duration::from_secs(30);
const BACK_WITHIN: Duration = Duration::from_secs(10);
/// The watch's error backoff (discovery::watch): from 100 ms doubling to a 5 s cap, each
/// delay at least half its ceiling.
const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_CAP: Duration = Duration::from_secs(5);

pub async fn run() -> Outcome {
    let mut outcome = Outcome::new(3, "Consul agent down 30 s, back with its state lost");
    let mut gradebook = Gradebook::new().await;
    let log = gradebook.start_log("log", free_port()).await;
    let grading = [
        gradebook.start_grading("grading", free_port()).await,
        gradebook.start_grading("grading", free_port()).await,
    ];
    let portal = gradebook.start_portal().await;
    common::passing(&gradebook, "grading", 2).await;
    common::passing(&gradebook, "log", 1).await;
    let addresses: Vec<String> = grading.iter().map(|g| g.addr().to_string()).collect();
    common::portal_sees(&portal, &addresses).await;
    let pool = common::discovered(&gradebook, "grading", 2).await;
    let instance_ids: Vec<String> = [
        ("log", &log),
        ("grading", &grading[0]),
        ("grading", &grading[1]),
        ("portal", &portal),
    ]
    .iter()
    .map(|(name, p)| format!("{name}-127.0.0.1-{}", p.addr().port()))
    .collect();

    let graded = Acked::default();
    let loads = common::user_loads("s3", &portal, &pool, &graded, Duration::from_secs(90));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let down = Instant::now();
    gradebook.consul.stop().await;
    outcome.figure("agent stopped (SIGKILL) under load");
    tokio::time::sleep(OUTAGE).await;
    gradebook.consul.start_again().await;
    let back = Instant::now();
    let outage = back - down;
    outcome.figure(format!(
        "agent started again with empty state after {:.1} s",
        outage.as_secs_f64()
    ));

    // Every instance re-registers by itself.
    let mut all_back = None;
    while back.elapsed() < BACK_WITHIN * 2 {
        let services = gradebook.consul.agent_services().await;
        if instance_ids.iter().all(|id| services.contains_key(id)) {
            all_back = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match all_back {
        Some(after) => {
            outcome.figure(format!(
                "all {} instances back in the catalogue {:.2} s after the agent's return",
                instance_ids.len(),
                after.as_secs_f64()
            ));
            outcome.check(
                after <= BACK_WITHIN,
                format!("instances back only after {:.1} s", after.as_secs_f64()),
            );
        }
        None => outcome.check(
            false,
            format!(
                "not every instance was back in the catalogue {} s after the agent's return",
                (BACK_WITHIN * 2).as_secs()
            ),
        ),
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let tallies = crate::load::stop_all(loads).await;
    common::report_user_loads(&mut outcome, &tallies);
    let acked = graded.all();
    outcome.acked = acked.len() as u64;
    common::report_grades(&mut outcome, &grading[0].base_url(), &acked).await;

    // Retries while the agent was away, per watcher.
    let cap = max_failures(outage);
    let mut counts = Vec::new();
    match portal_failed_polls(&portal).await {
        Ok(polls) => counts.extend(polls.into_iter().map(|(s, n)| (format!("portal->{s}"), n))),
        Err(err) => outcome.check(false, err),
    }
    for (number, instance) in grading.iter().enumerate() {
        match recovered_after(instance) {
            Some(n) => counts.push((format!("grading-{}->log", number + 1), n)),
            None => outcome.check(
                false,
                format!(
                    "grading-{} never logged its log watch recovering",
                    number + 1
                ),
            ),
        }
    }
    counts.push((
        "runner->grading".to_owned(),
        pool.watch().current().failed_polls,
    ));
    let listed: Vec<String> = counts.iter().map(|(w, n)| format!("{w} {n}")).collect();
    outcome.figure(format!(
        "failed Consul calls per watcher during the {:.0} s outage: {} (cap for this outage: {cap})",
        outage.as_secs_f64(),
        listed.join(", ")
    ));
    for (watcher, n) in counts {
        outcome.check(
            n >= 1 && n <= cap,
            format!("{watcher}: {n} failed calls, outside 1..={cap}"),
        );
    }
    outcome
}

/// The most failed calls a watch can make in `outage`: each retry waits at least half of
/// `min(base * 2^(k-1), cap)`, plus the call that failed when the agent went.
fn max_failures(outage: Duration) -> u64 {
    let mut waited = Duration::ZERO;
    let mut failures = 1;
    loop {
        let ceiling = RETRY_BASE
            .saturating_mul(1 << (failures - 1).min(16))
            .min(RETRY_CAP);
        waited += ceiling / 2;
        if waited > outage {
            return failures;
        }
        failures += 1;
    }
}

/// "Failed Consul polls" of each dependency on the portal's status page, in page order.
async fn portal_failed_polls(portal: &ServiceProcess) -> Result<Vec<(String, u64)>, String> {
    let url = format!("{}/status", portal.base_url());
    let page = client()
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?
        .text()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let mut found = Vec::new();
    for section in page.split("<h2>").skip(1) {
        let service = section.split_whitespace().next().unwrap_or("?").to_owned();
        let Some(rest) = section.split("Failed Consul polls</dt><dd>").nth(1) else {
            continue;
        };
        let number: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(n) = number.parse() {
            found.push((service, n));
        }
    }
    if found.len() == 2 {
        Ok(found)
    } else {
        Err(format!(
            "the status page shows {} watch counts",
            found.len()
        ))
    }
}

/// The count a grading instance logged when its watch of `log` reached Consul again.
fn recovered_after(instance: &ServiceProcess) -> Option<u64> {
    instance
        .output()
        .lines()
        .filter(|line| line.contains("watching=\"log\"") || line.contains("watching=log"))
        .filter_map(|line| line.split("Consul reachable again after ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .next_back()
}
