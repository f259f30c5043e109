//! The fault scenarios of RELIABILITY.md, run against the real binaries and a real Consul agent
//! on loopback: SIGKILL under load, a rolling restart, a Consul outage with lost state, a log
//! outage, a full disk, crashes during writes, misbehaving providers and hostile connections.
//! Each prints its figures; at the end one table of all of them, and the exit code says
//! whether every claim held.
//!
//! Run it with `scripts/faults.sh` (which builds everything first); the bad-input scenario is
//! part of `cargo test` (`services/system-tests/tests/bad_input.rs`). `faults cluster` runs the
//! cluster scenarios instead, on docker-compose.cluster.yml (`scripts/cluster-faults.sh`).

mod cluster;
mod common;
mod connections;
mod consul_outage;
mod crash;
mod disk_full;
mod load;
mod log_outage;
mod misbehaving;
mod report;
mod rolling;
mod sigkill;

use std::process::ExitCode;
use std::time::Instant;

use report::Outcome;

const USAGE: &str = "\
Usage: faults [--markdown FILE] [SCENARIO...]

Runs the fault scenarios (all, or those numbered) against the real binaries built next to
this one and a real Consul agent (CONSUL_BIN, or consul on PATH, or tools/consul), prints a
table of figures, and exits 1 if any scenario's claim failed.

  1  SIGKILL under load: one grading instance, later one log instance
  2  rolling restart of every grading instance under load
  3  Consul agent stopped for 30 s, started again with its state lost
  4  log service down for 30 s while grading and the portal produce records
  5  disk full under the log service and grading (a small tmpfs; needs root)
  6  SIGKILL of log and grading during writes; a torn last line
  8  misbehaving providers: a grading instance that hangs, answers 500 or junk,
     or streams a huge body, beside a healthy one, under load through the portal
  9  connections: slow headers, thousands idle, over the cap, thousands aborted

  --markdown FILE  also write the table as Markdown to FILE

Usage: faults cluster [--smoke] [--markdown FILE] [SCENARIO...]

Starts docker-compose.cluster.yml (images from scripts/images.sh) as project
gradebook-test-cluster on free ports, checks its shape, and runs the cluster
scenarios (all, or those numbered) on it, then takes it down:

{CLUSTER}
  --smoke          the shape and scenario 1 only (what scripts/test.sh runs)
";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let usage = USAGE.replace("{CLUSTER}", cluster::SCENARIOS.trim_end());
    let mut markdown = None;
    let mut chosen: Vec<u8> = Vec::new();
    let mut on_cluster = false;
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("cluster") {
        on_cluster = true;
        args.next();
    }
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{usage}");
                return ExitCode::SUCCESS;
            }
            "--markdown" => markdown = args.next(),
            "--smoke" if on_cluster => chosen.push(1),
            number => match number.parse::<u8>() {
                Ok(n @ (1..=6 | 8 | 9)) => chosen.push(n),
                _ => {
                    eprint!("faults: unknown argument {number:?}\n\n{usage}");
                    return ExitCode::from(2);
                }
            },
        }
    }
    if chosen.is_empty() {
        chosen = (1..=6).chain([8, 9]).collect();
    }
    chosen.dedup();

    let outcomes = if on_cluster {
        cluster::run(&chosen).await
    } else {
        run_local(chosen).await
    };
    let table = report::table(&outcomes);
    println!("\n{table}");
    if let Some(path) = markdown
        && let Err(err) = std::fs::write(&path, &table)
    {
        eprintln!("faults: cannot write {path}: {err}");
    }
    let failed = outcomes.iter().filter(|o| o.verdict() == "FAIL").count();
    let passed = outcomes.iter().filter(|o| o.verdict() == "pass").count();
    println!("faults: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The scenarios on loopback processes, each in its own task.
async fn run_local(chosen: Vec<u8>) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for number in chosen {
        eprintln!("faults: === scenario {number} ===");
        let started = Instant::now();
        // Each scenario runs in its own task so a panic (a service that does not start, say)
        // fails that scenario only; its processes are killed as their handles drop.
        let mut outcome = match tokio::spawn(run(number)).await {
            Ok(outcome) => outcome,
            Err(panic) => {
                let mut failed = Outcome::new(number, "(panicked)");
                failed.check(false, panic_message(panic));
                failed
            }
        };
        outcome.elapsed = started.elapsed();
        eprintln!(
            "faults: === scenario {number}: {} in {:.0} s ===",
            outcome.verdict(),
            outcome.elapsed.as_secs_f64()
        );
        outcomes.push(outcome);
    }
    outcomes
}

async fn run(number: u8) -> Outcome {
    match number {
        1 => sigkill::run().await,
        2 => rolling::run().await,
        3 => consul_outage::run().await,
        4 => log_outage::run().await,
        5 => disk_full::run().await,
        8 => misbehaving::run().await,
        9 => connections::run().await,
        _ => crash::run().await,
    }
}

fn panic_message(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panicked".to_owned()),
        Err(error) => error.to_string(),
    }
}
