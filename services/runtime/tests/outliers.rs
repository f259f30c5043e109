//! Outlier detection in the provider pool, against a real Consul agent: a misbehaving double
//! (the one thing a real service cannot be made to do) is registered beside a healthy instance
//! on the real runtime, both found through the real watch. Each test states its bound: reads
//! never fail while a healthy instance exists (they move to it), and the misbehaving instance
//! gets at most [`FAILURES_TO_EJECT`] requests before it is ejected, plus one probe per
//! ejection that ends.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use discovery::{ConsulSettings, ProviderWatch};
use reqwest::StatusCode;
use service_runtime::pool::{FAILURES_TO_EJECT, FIRST_EJECTION};
use service_runtime::{Answer, Call, CallLimits, Junk, PoolError, ProviderPool};
use testkit::{ConsulAgent, MisbehavingServer as Double, Misbehaviour, eventually};
use tokio::sync::oneshot;
use warp::Filter;
use warp::reply::Reply;

const PATIENCE: Duration = Duration::from_secs(15);
/// The limits of the tests' reads: short, so a hang costs little test time.
const READ: CallLimits = CallLimits {
    timeout: Duration::from_millis(500),
    max_answer_bytes: 1024 * 1024,
};
/// What the huge-body double offers: far more than [`READ`] allows.
const HUGE_BODY_BYTES: usize = 256 * 1024 * 1024;

/// A healthy instance on the real runtime, answering `/whoami` with its address.
struct Healthy {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn healthy(agent: &ConsulAgent) -> Healthy {
    let service = common::bind(agent, "grading", &["http"]).await;
    let addr = service.local_addr();
    let routes = warp::path("whoami").map(move || addr.to_string().into_response());
    let (stop, _) = common::run_until_stopped(service, routes);
    Healthy { addr, _stop: stop }
}

/// A pool over `grading` listing what `register` put there besides nothing else, once the
/// watch lists `expected` instances.
async fn pool_listing(agent: &ConsulAgent, expected: usize) -> ProviderPool {
    let pool = ProviderPool::new(
        ProviderWatch::spawn(&ConsulSettings::local(agent.http_addr()), "grading"),
        service_runtime::runtime::http_client(),
    );
    eventually("every instance watched", PATIENCE, || async {
        (pool.watch().current().providers.len() == expected).then_some(())
    })
    .await;
    pool
}

/// Registers `double` as a grading instance without a check, so that Consul lists it as
/// passing however it behaves.
async fn register(agent: &ConsulAgent, double: &Double) {
    agent
        .register(&serde_json::json!({
            "Name": "grading", "ID": format!("double-{}", double.addr().port()),
            "Address": "127.0.0.1", "Port": double.addr().port(),
        }))
        .await;
}

/// A healthy instance and a double misbehaving as told, both listed, and a pool over them.
async fn healthy_beside(
    misbehaviour: Misbehaviour,
) -> (ConsulAgent, ProviderPool, Healthy, Double) {
    let agent = ConsulAgent::start().await;
    let healthy = healthy(&agent).await;
    let double = Double::start(misbehaviour).await;
    register(&agent, &double).await;
    let pool = pool_listing(&agent, 2).await;
    (agent, pool, healthy, double)
}

/// The user's view of one read, as a caller's judge gives it: the address that answered, or
/// the status a user would see as an error page.
type UserRead = Result<String, StatusCode>;

/// How a caller judges `/whoami`: an address, or junk; a status other than 200 fails the user.
fn whoami(answer: Answer) -> Result<UserRead, Junk> {
    if answer.status != StatusCode::OK {
        return Ok(Err(answer.status));
    }
    let text = std::str::from_utf8(&answer.body).map_err(|_| Junk("not UTF-8".into()))?;
    text.parse::<SocketAddr>()
        .map_err(|_| Junk(format!("not an address: {text:.40}")))?;
    Ok(Ok(text.to_owned()))
}

/// `count` reads through `pool`, each required to be answered by `healthy`, and none to take
/// longer than two attempts' time limits plus a generous margin. Returns how long they took.
async fn reads_all_served_by(pool: &ProviderPool, healthy: &Healthy, count: usize) -> Duration {
    let started = Instant::now();
    for n in 0..count {
        let read = Instant::now();
        let served = pool.call(Call::get("/whoami", READ), whoami).await;
        let took = read.elapsed();
        match served {
            Ok(Ok(who)) => assert_eq!(who, healthy.addr.to_string(), "read {n}"),
            other => panic!("read {n} failed for the user: {other:?}"),
        }
        assert!(
            took < READ.timeout * 2 + Duration::from_secs(2),
            "read {n} took {took:?}"
        );
    }
    started.elapsed()
}

/// The most requests a misbehaving instance may get over `elapsed`: the failures that eject
/// it, then one probe per ejection that ends (the first lasts [`FIRST_EJECTION`], each next
/// twice as long; counting one per [`FIRST_EJECTION`] is generous).
fn most_requests_to_an_outlier(elapsed: Duration) -> usize {
    FAILURES_TO_EJECT as usize
        + 1
        + elapsed.as_millis() as usize / FIRST_EJECTION.as_millis() as usize
}

async fn a_misbehaving_instance_is_ejected_and_reads_never_fail(misbehaviour: Misbehaviour) {
    let (_agent, pool, healthy, double) = healthy_beside(misbehaviour).await;
    let elapsed = reads_all_served_by(&pool, &healthy, 40).await;
    let requests = double.requests();
    eprintln!(
        "{misbehaviour:?}: 40 reads in {elapsed:?}, all served; the double got {requests} of them"
    );
    assert!(requests >= 1, "the double was tried");
    assert!(
        requests <= most_requests_to_an_outlier(elapsed),
        "the {misbehaviour:?} instance kept getting requests: {requests} in {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_answering_5xx_is_ejected_and_reads_move_off_it() {
    a_misbehaving_instance_is_ejected_and_reads_never_fail(Misbehaviour::ServerError).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_answering_junk_is_ejected_and_reads_move_off_it() {
    a_misbehaving_instance_is_ejected_and_reads_never_fail(Misbehaviour::Junk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_hangs_mid_answer_is_ejected_and_reads_move_off_it_in_time() {
    a_misbehaving_instance_is_ejected_and_reads_never_fail(Misbehaviour::Hang).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_answer_is_never_read_past_the_cap() {
    let (_agent, pool, healthy, double) =
        healthy_beside(Misbehaviour::HugeBody(HUGE_BODY_BYTES)).await;
    reads_all_served_by(&pool, &healthy, 20).await;
    assert!(double.requests() >= 1, "the double was tried");
    // Give a double still writing time to notice the closed connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = double.bytes_sent();
    let requests = double.requests();
    eprintln!(
        "the double handed {sent} body bytes to the kernel over {requests} request(s), {} per request; the cap is {}",
        sent / requests,
        READ.max_answer_bytes
    );
    // Beyond the cap, only what loopback's socket buffers hold in flight (a few MiB each way).
    let bound = READ.max_answer_bytes + 16 * 1024 * 1024;
    assert!(
        sent / requests < bound,
        "{sent} bytes sent over {requests} requests: the caller read past its cap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_post_fails_at_most_until_the_failing_instance_is_ejected() {
    let (_agent, pool, healthy, double) = healthy_beside(Misbehaviour::ServerError).await;
    // A POST without a key is never sent twice: each one the 5xx instance gets fails for its
    // user, until the breaker ejects it.
    let started = Instant::now();
    let mut failed = 0;
    for _ in 0..40 {
        let payload = service_runtime::pool::Payload {
            content_type: "text/plain",
            bytes: "x".into(),
        };
        match pool
            .send(reqwest::Method::POST, "/whoami", Some(payload))
            .await
        {
            Ok(response) => {
                assert_eq!(response.text().await.unwrap(), healthy.addr.to_string())
            }
            Err(PoolError::Request { .. }) => failed += 1,
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    let elapsed = started.elapsed();
    eprintln!("40 plain POSTs in {elapsed:?}: {failed} failed");
    assert!(failed >= 1, "the double was tried");
    assert!(
        failed <= most_requests_to_an_outlier(elapsed),
        "{failed} POSTs failed in {elapsed:?}"
    );
    assert_eq!(failed, double.requests(), "each failure was the double's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_instance_is_brought_back_by_a_probe() {
    let (_agent, pool, healthy, double) = healthy_beside(Misbehaviour::ServerError).await;
    eventually("the double is ejected", PATIENCE, || async {
        reads_all_served_by(&pool, &healthy, 1).await;
        (double.requests() >= FAILURES_TO_EJECT as usize).then_some(())
    })
    .await;

    double.recover();
    let recovered = Instant::now();
    let back = eventually("a probe brings the double back", PATIENCE, || async {
        let served = pool.call(Call::get("/whoami", READ), whoami).await;
        match served {
            Ok(Ok(who)) if who == double.addr().to_string() => Some(recovered.elapsed()),
            Ok(Ok(_)) => None,
            other => panic!("a read failed for the user: {other:?}"),
        }
    })
    .await;
    eprintln!("the recovered instance served again {back:?} after it recovered");
    // Ejected once (or twice, if a probe came before the recovery): back within the longer.
    assert!(
        back <= FIRST_EJECTION * 2 + Duration::from_secs(2),
        "{back:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_instance_ejected_requests_fail_fast_until_a_probe_is_due() {
    let agent = ConsulAgent::start().await;
    let double = Double::start(Misbehaviour::ServerError).await;
    register(&agent, &double).await;
    let pool = pool_listing(&agent, 1).await;

    let read = || pool.call(Call::get("/whoami", READ), whoami);
    for _ in 0..FAILURES_TO_EJECT {
        let err = read().await.unwrap_err();
        assert!(matches!(err, PoolError::AllFailed { .. }), "{err}");
        assert!(!err.is_unavailable(), "a 5xx is misbehaviour (502): {err}");
    }
    // Ejected: answered at once, naming the dependency, without a request to the double.
    let ejected = Instant::now();
    let mut fast_failures = 0;
    while ejected.elapsed() < FIRST_EJECTION / 2 {
        let err = read().await.unwrap_err();
        assert!(matches!(err, PoolError::Ejected { .. }), "{err}");
        assert!(err.is_unavailable(), "answered 503");
        assert!(err.to_string().contains("grading"), "{err}");
        fast_failures += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(double.requests(), FAILURES_TO_EJECT as usize);
    eprintln!("{fast_failures} requests failed fast while the only instance was ejected");

    // Once the ejection ends, one request goes to it as the probe.
    eventually("a probe reaches the double", PATIENCE, || async {
        let _ = read().await;
        (double.requests() > FAILURES_TO_EJECT as usize).then_some(())
    })
    .await;
    assert_eq!(double.requests(), FAILURES_TO_EJECT as usize + 1);
}
