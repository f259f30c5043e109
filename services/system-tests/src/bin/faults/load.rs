//! A small load generator: a few paced workers sending requests in a loop on loopback, each
//! request counted on its own. Written here rather than taken from wrk because the scenarios
//! need to know which writes were acknowledged (to look for each one afterwards), not only
//! how many. Every load is bounded in count and in time and stops by itself.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// How many failure messages a tally keeps (with when they happened), for the report.
const KEPT_FAILURES: usize = 8;

/// What one load did.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub name: String,
    pub sent: u64,
    pub failed: u64,
    /// The first few failures, each with its time since the load started.
    pub failures: Vec<String>,
}

impl Tally {
    /// Adds up several loads under one name.
    pub fn sum(name: &str, tallies: &[Tally]) -> Tally {
        Tally {
            name: name.to_owned(),
            sent: tallies.iter().map(|t| t.sent).sum(),
            failed: tallies.iter().map(|t| t.failed).sum(),
            failures: tallies
                .iter()
                .flat_map(|t| t.failures.iter().map(|f| format!("{}: {f}", t.name)))
                .take(KEPT_FAILURES)
                .collect(),
        }
    }
}

struct Shared {
    next: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
    failures: Mutex<Vec<String>>,
    started: Instant,
}

/// A running load; [`Load::stop`] or [`Load::finish`] returns its [`Tally`].
pub struct Load {
    name: String,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts `workers` loops, each sending at most `per_second` requests a second (0: as fast
    /// as answers come), until `max_requests` in total were sent or `max_time` passed. `op(n)`
    /// sends request number `n` (unique across workers) and says whether it succeeded.
    pub fn start<F, Fut>(
        name: &str,
        workers: usize,
        per_second: u32,
        max_requests: u64,
        max_time: Duration,
        op: F,
    ) -> Load
    where
        F: Fn(u64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send,
    {
        let shared = Arc::new(Shared {
            next: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            failures: Mutex::new(Vec::new()),
            started: Instant::now(),
        });
        let op = Arc::new(op);
        let deadline = Instant::now() + max_time;
        let workers = (0..workers)
            .map(|_| {
                let shared = shared.clone();
                let op = op.clone();
                tokio::spawn(async move {
                    let mut pace = (per_second > 0).then(|| {
                        let mut interval =
                            tokio::time::interval(Duration::from_secs(1) / per_second);
                        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        interval
                    });
                    loop {
                        if let Some(pace) = &mut pace {
                            pace.tick().await;
                        }
                        if shared.stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                            return;
                        }
                        let n = shared.next.fetch_add(1, Ordering::Relaxed);
                        if n >= max_requests {
                            return;
                        }
                        shared.sent.fetch_add(1, Ordering::Relaxed);
                        if let Err(failure) = op(n).await {
                            shared.failed.fetch_add(1, Ordering::Relaxed);
                            let mut kept = shared.failures.lock().expect("not poisoned");
                            if kept.len() < KEPT_FAILURES {
                                let at = shared.started.elapsed().as_secs_f64();
                                kept.push(format!("at {at:.2} s: {failure}"));
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            name: name.to_owned(),
            shared,
            workers,
        }
    }

    /// Waits until the load has reached its bound in count or time.
    pub async fn finish(self) -> Tally {
        for worker in self.workers {
            if let Err(panic) = worker.await {
                self.shared.failed.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .failures
                    .lock()
                    .expect("not poisoned")
                    .push(format!("a worker panicked: {panic}"));
            }
        }
        Tally {
            name: self.name,
            sent: self.shared.sent.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
            failures: self.shared.failures.lock().expect("not poisoned").clone(),
        }
    }
}

/// Stops every load and returns their tallies in order.
pub async fn stop_all(loads: Vec<Load>) -> Vec<Tally> {
    for load in &loads {
        load.shared.stop.store(true, Ordering::Relaxed);
    }
    let mut tallies = Vec::with_capacity(loads.len());
    for load in loads {
        tallies.push(load.finish().await);
    }
    tallies
}
