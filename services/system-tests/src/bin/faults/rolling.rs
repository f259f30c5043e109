//! Scenario 2: a rolling restart of every grading instance under load: SIGTERM one, wait for it
//! to exit, start its replacement on the same address, wait until Consul lists it, then the
//! next. Claim: no request fails, and every acknowledged grade is stored once.

use std::time::{Duration, Instant};

use system_tests::Gradebook;
use testkit::free_port;

use crate::common::{self, Acked};
use crate::report::Outcome;

const INSTANCES: usize = 2;
/// Load before the first restart and after the last one.
const SETTLE: Duration = Duration::from_secs(3);

pub async fn run() -> Outcome {
    let mut outcome = Outcome::new(2, "rolling restart of every grading instance");
    let gradebook = Gradebook::new().await;
    let _log = gradebook.start_log("log", free_port()).await;
    let mut instances = Vec::new();
    for _ in 0..INSTANCES {
        instances.push(gradebook.start_grading("grading", free_port()).await);
    }
    let portal = gradebook.start_portal().await;
    common::passing(&gradebook, "grading", INSTANCES).await;
    let addresses: Vec<String> = instances.iter().map(|i| i.addr().to_string()).collect();
    common::portal_sees(&portal, &addresses).await;
    let grading = common::discovered(&gradebook, "grading", INSTANCES).await;

    let graded = Acked::default();
    // Bounded by time: the restarts take a few seconds each; the loads are stopped after them.
    let loads = common::user_loads("s2", &portal, &grading, &graded, Duration::from_secs(60));
    let started = Instant::now();
    tokio::time::sleep(SETTLE).await;
    for (number, instance) in instances.iter_mut().enumerate() {
        let port = instance.addr().port();
        let stopping = Instant::now();
        instance.sigterm();
        let status = instance.wait_exit(Duration::from_secs(20)).await;
        let stopped_in = stopping.elapsed();
        outcome.check(
            status.success(),
            format!("grading-{} exited with {status} on SIGTERM", number + 1),
        );
        // A replacement takes a moment to be deployed: the others carry the load meanwhile.
        tokio::time::sleep(Duration::from_secs(1)).await;
        *instance = gradebook.start_grading("grading", port).await;
        common::passing(&gradebook, "grading", INSTANCES).await;
        outcome.figure(format!(
            "grading-{}: SIGTERM at {:.1} s, exited ({status}) after {:.2} s, replacement started 1 s later, passing in Consul {:.2} s after the SIGTERM",
            number + 1,
            (stopping - started).as_secs_f64(),
            stopped_in.as_secs_f64(),
            stopping.elapsed().as_secs_f64()
        ));
        // Let the watches take the replacement in before the next one goes.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(SETTLE).await;
    let tallies = crate::load::stop_all(loads).await;
    common::report_user_loads(&mut outcome, &tallies);
    let acked = graded.all();
    outcome.acked = acked.len() as u64;
    common::report_grades(&mut outcome, &instances[0].base_url(), &acked).await;
    outcome
}
