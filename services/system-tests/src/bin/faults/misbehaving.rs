//! Scenario 8: misbehaving providers. One real grading instance, and beside it in Consul a
//! "grading instance" that misbehaves (testkit's `MisbehavingServer`, registered without a
//! check, so Consul keeps listing it as passing): in turn it hangs mid-answer, answers 500,
//! answers junk, and streams an endless body. Pages and grade forms go through the portal
//! meanwhile. Claim: no user request fails; the misbehaving instance gets at most
//! `FAILURES_TO_EJECT` requests before it is ejected, then only probes; every acknowledged
//! grade is stored once; the portal's memory stays bounded while the huge body is offered.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use service_runtime::pool::{FAILURES_TO_EJECT, FIRST_EJECTION};
use system_tests::Gradebook;
use testkit::{MisbehavingServer, Misbehaviour, free_port};

use crate::common::{self, Acked};
use crate::load::{self, Load};
use crate::report::Outcome;

/// How long each misbehaviour is under load.
const LOAD_TIME: Duration = Duration::from_secs(10);
/// What the huge-body instance offers per answer: more than the portal could hold.
const HUGE_BODY_BYTES: usize = 4 * 1024 * 1024 * 1024;
/// The portal's peak resident memory allowed while the huge body is offered: its caps (32 MiB
/// for the student list) times a few answers at once, plus its own footprint.
const RSS_LIMIT_KIB: u64 = 256 * 1024;
/// Requests the loads have in flight at most: 4 page workers, 2 form workers.
const WORKERS: usize = 6;
/// How long a page read may wait for one grading instance (`portal::upstream::limits`).
const PAGE_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn run() -> Outcome {
    let mut outcome = Outcome::new(
        8,
        "misbehaving providers (a grading instance hangs, 5xx, junk, huge body)",
    );
    let gradebook = Gradebook::new().await;
    let _log = gradebook.start_log("log", free_port()).await;
    let grading = gradebook.start_grading("grading", free_port()).await;
    let portal = gradebook.start_portal().await;
    common::passing(&gradebook, "grading", 1).await;
    outcome.figure(format!(
        "portal resident memory before: {} KiB (peak {} KiB)",
        memory_kib(portal.pid(), "VmRSS").unwrap_or_default(),
        memory_kib(portal.pid(), "VmHWM").unwrap_or_default()
    ));

    let graded = Acked::default();
    let modes = [
        ("hangs mid-answer", Misbehaviour::Hang),
        ("answers 500", Misbehaviour::ServerError),
        ("answers junk", Misbehaviour::Junk),
        (
            "streams a huge body",
            Misbehaviour::HugeBody(HUGE_BODY_BYTES),
        ),
    ];
    for (index, (what, misbehaviour)) in modes.into_iter().enumerate() {
        let double = MisbehavingServer::start(misbehaviour).await;
        let id = format!("grading-misbehaving-{}", double.addr().port());
        gradebook
            .consul
            .register(&json!({
                "Name": "grading", "ID": id, "Address": "127.0.0.1",
                "Port": double.addr().port(),
            }))
            .await;
        common::portal_sees(
            &portal,
            &[grading.addr().to_string(), double.addr().to_string()],
        )
        .await;

        let started = Instant::now();
        let slowest = Arc::new(AtomicU64::new(0));
        let loads = portal_loads(&portal, &graded, &format!("s8-{index}"), &slowest);
        let mut peak_rss = 0;
        while started.elapsed() < LOAD_TIME {
            peak_rss = peak_rss.max(memory_kib(portal.pid(), "VmRSS").unwrap_or_default());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let tallies = load::stop_all(loads).await;
        let elapsed = started.elapsed();
        gradebook.consul.deregister(&id).await;

        let user = load::Tally::sum(what, &tallies);
        outcome.requests += user.sent;
        outcome.failed += user.failed;
        let times = double.request_times();
        let to_eject = times.get(FAILURES_TO_EJECT as usize - 1).map(|&last| {
            let answered = if misbehaviour == Misbehaviour::Hang {
                PAGE_TIMEOUT
            } else {
                Duration::ZERO
            };
            last - times[0] + answered
        });
        // The ejecting failures, requests already on their way to it then (one per other
        // worker at most), and one probe per ejection that ended.
        let most = FAILURES_TO_EJECT as usize + WORKERS - 1 + probes_within(elapsed);
        outcome.figure(format!(
            "grading instance that {what}: {} user requests, {} failed, the slowest {} ms; it got {} of them (bound {most}), ejected {} after its first",
            user.sent,
            user.failed,
            slowest.load(Ordering::Relaxed),
            times.len(),
            to_eject.map_or("never".to_owned(), |t| format!("{} ms", t.as_millis())),
        ));
        outcome.check(
            user.failed == 0,
            format!(
                "{what}: {} user requests failed: {:?}",
                user.failed, user.failures
            ),
        );
        outcome.check(
            times.len() <= most,
            format!(
                "{what}: the instance got {} requests in {elapsed:?}, more than {most}",
                times.len()
            ),
        );
        if let Misbehaviour::HugeBody(offered) = misbehaviour {
            let sent = double.bytes_sent();
            let answers = times.len().max(1);
            let hwm = memory_kib(portal.pid(), "VmHWM").unwrap_or_default();
            outcome.figure(format!(
                "huge body: offered {} MiB per answer, the portal read {} MiB over {} answers ({} MiB per answer on average, socket buffers included); portal resident memory peaked at {} MiB (sampled every 100 ms: {} MiB)",
                offered >> 20,
                sent >> 20,
                times.len(),
                (sent / answers) >> 20,
                hwm >> 10,
                peak_rss >> 10,
            ));
            outcome.check(
                hwm <= RSS_LIMIT_KIB,
                format!("the portal's memory peaked at {hwm} KiB"),
            );
        }
    }

    common::report_grades(&mut outcome, &grading.base_url(), &graded.all()).await;
    outcome.acked = graded.len() as u64;
    outcome
}

/// Pages (4 x 20/s) and grade forms (2 x 5/s) through the portal; grades titled
/// `{prefix}-{n}`. `slowest` keeps the longest a request took, in ms.
fn portal_loads(
    portal: &testkit::ServiceProcess,
    graded: &Acked,
    prefix: &str,
    slowest: &Arc<AtomicU64>,
) -> Vec<Load> {
    let http = system_tests::client();
    let portal_url = portal.base_url();
    let pages = {
        let (http, portal_url, slowest) = (http.clone(), portal_url.clone(), slowest.clone());
        Load::start(
            "portal pages",
            4,
            20,
            20 * 4 * LOAD_TIME.as_secs(),
            LOAD_TIME * 2,
            move |n| {
                let (http, portal_url) = (http.clone(), portal_url.clone());
                let page = async move { common::portal_page(&http, &portal_url, n).await };
                timed(slowest.clone(), page)
            },
        )
    };
    let forms = {
        let (graded, prefix, slowest) = (graded.clone(), prefix.to_owned(), slowest.clone());
        Load::start(
            "portal grade forms",
            2,
            5,
            5 * 2 * LOAD_TIME.as_secs(),
            LOAD_TIME * 2,
            move |n| {
                let (http, portal_url, graded) = (http.clone(), portal_url.clone(), graded.clone());
                let title = format!("{prefix}-{n}");
                let form = async move {
                    common::portal_grade(&http, &portal_url, &title, n, &graded).await
                };
                timed(slowest.clone(), form)
            },
        )
    };
    vec![pages, forms]
}

/// `request`, keeping in `slowest` the longest any took, in ms.
async fn timed(
    slowest: Arc<AtomicU64>,
    request: impl Future<Output = Result<(), String>>,
) -> Result<(), String> {
    let started = Instant::now();
    let result = request.await;
    slowest.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    result
}

/// The most probes an instance ejected all along can get in `elapsed`: one when each ejection
/// ends, the first after [`FIRST_EJECTION`], each next twice as long.
fn probes_within(elapsed: Duration) -> usize {
    let mut probes = 0;
    let mut at = Duration::ZERO;
    let mut ejection = FIRST_EJECTION;
    loop {
        at += ejection;
        if at > elapsed {
            return probes;
        }
        probes += 1;
        ejection *= 2;
    }
}

/// A line of `/proc/PID/status` in KiB (`VmRSS`: resident now; `VmHWM`: the peak).
fn memory_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
