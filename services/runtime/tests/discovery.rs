//! The discovery layer against a real Consul agent: in-process services built on the real
//! runtime register, get watched, fail over and heal, exactly as the service binaries do.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use discovery::{ConsulSettings, ProviderWatch, WatchStatus};
use service_runtime::{PoolError, ProviderPool};
use testkit::{ConsulAgent, eventually};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use warp::Filter;
use warp::reply::Reply;

const PATIENCE: Duration = Duration::from_secs(15);

/// One instance of a service running the real runtime in this process; answers `/whoami` with
/// its own address so tests can see which instance served a request.
struct Instance {
    addr: SocketAddr,
    id: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Instance {
    async fn start(agent: &ConsulAgent, name: &'static str) -> Instance {
        let service = common::bind(agent, name, &["http", "test"]).await;
        let addr = service.local_addr();
        let id = service.instance_id();
        let whoami = warp::path("whoami").map(move || addr.to_string().into_response());
        // A request that takes a while, to show that shutdown lets it finish.
        let slow = warp::path("slow").then(|| async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            "done".into_response()
        });
        let routes = whoami.or(slow).unify();
        let (stop, task) = common::run_until_stopped(service, routes);
        Instance {
            addr,
            id,
            stop: Some(stop),
            task,
        }
    }

    /// The same path SIGTERM takes in a binary: deregister, drain, return.
    async fn shut_down(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("shutdown finishes")
            .expect("no panic");
    }

    /// Like a crash: the listener and every connection vanish, nothing is deregistered.
    fn crash(self) {
        self.task.abort();
    }
}

async fn passing_ids(agent: &ConsulAgent, service: &str) -> Vec<String> {
    let mut ids: Vec<String> = agent
        .passing_instances(service)
        .await
        .into_iter()
        .map(|i| i.id)
        .collect();
    ids.sort();
    ids
}

fn watched_addresses(watch: &ProviderWatch) -> Vec<String> {
    watch
        .current()
        .providers
        .iter()
        .map(|p| p.address.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_is_registered_once_bound_with_tags_version_and_a_passing_http_check() {
    let agent = ConsulAgent::start().await;
    let instance = Instance::start(&agent, "grading").await;

    let registered = eventually("instance listed as passing", PATIENCE, || async {
        agent.passing_instances("grading").await.into_iter().next()
    })
    .await;
    assert_eq!(
        registered.id,
        format!("grading-127.0.0.1-{}", instance.addr.port())
    );
    assert_eq!(registered.address, instance.addr.to_string());
    assert!(
        registered.tags.contains(&"http".to_owned()),
        "{:?}",
        registered.tags
    );
    assert_eq!(
        registered.meta.get("version").map(String::as_str),
        Some("9.9.9-test")
    );

    // The check is a real HTTP check that the agent runs against /health.
    let checks: serde_json::Value = testkit::http_client()
        .get(format!("{}/v1/agent/checks", agent.http_addr()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let check = checks
        .as_object()
        .unwrap()
        .values()
        .find(|c| c["ServiceID"] == registered.id.as_str())
        .expect("a check for the instance");
    assert_eq!(check["Type"], "http");
    assert_eq!(check["Status"], "passing");
    instance.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_a_second_instance_come_and_go() {
    let agent = ConsulAgent::start().await;
    let settings = ConsulSettings::local(agent.http_addr());
    let watch = ProviderWatch::spawn(&settings, "grading");
    let first = Instance::start(&agent, "grading").await;
    eventually("the watcher has the first instance", PATIENCE, || async {
        (watched_addresses(&watch) == [first.addr.to_string()]).then_some(())
    })
    .await;

    let second = Instance::start(&agent, "grading").await;
    let started = Instant::now();
    eventually("the watcher has both instances", PATIENCE, || async {
        (watched_addresses(&watch).len() == 2).then_some(())
    })
    .await;
    eprintln!(
        "second instance seen by the watcher {} ms after it started serving",
        started.elapsed().as_millis()
    );

    let second_addr = second.addr.to_string();
    second.shut_down().await;
    let stopped = Instant::now();
    eventually(
        "the watcher dropped the stopped instance",
        PATIENCE,
        || async { (!watched_addresses(&watch).contains(&second_addr)).then_some(()) },
    )
    .await;
    eprintln!(
        "stopped instance dropped {} ms after its shutdown",
        stopped.elapsed().as_millis()
    );
    assert_eq!(watched_addresses(&watch), [first.addr.to_string()]);
    assert_eq!(watch.current().status, WatchStatus::Live);
    first.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_deregisters_the_instance() {
    let agent = ConsulAgent::start().await;
    let instance = Instance::start(&agent, "log").await;
    let id = instance.id.clone();
    eventually("registered", PATIENCE, || async {
        agent.agent_services().await.contains_key(&id).then_some(())
    })
    .await;
    instance.shut_down().await;
    // Deregistration happens before shutdown returns: no waiting for the check to fail.
    assert!(!agent.agent_services().await.contains_key(&id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_instance_still_answers_a_new_request_once_watchers_see_it_gone() {
    let agent = ConsulAgent::start().await;
    let watch = ProviderWatch::spawn(&ConsulSettings::local(agent.http_addr()), "grading");
    let instance = Instance::start(&agent, "grading").await;
    let addr = instance.addr.to_string();
    eventually("watched", PATIENCE, || async {
        watched_addresses(&watch).contains(&addr).then_some(())
    })
    .await;
    let mut changes = watch.subscribe();
    let stopping = tokio::spawn(instance.shut_down());
    // The moment a watcher hears of the deregistration, a caller that was about to pick this
    // instance may still send it one request: it must be served, not refused.
    tokio::time::timeout(
        PATIENCE,
        changes.wait_for(|set| !set.providers.iter().any(|p| p.address == addr)),
    )
    .await
    .expect("the watcher sees the instance leave")
    .expect("the watch runs");
    // A watcher on another host, through another agent, hears of it a little later.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let response = testkit::http_client()
        .get(format!("http://{addr}/whoami"))
        .send()
        .await
        .expect("a request sent as the watcher moves away is still served");
    assert_eq!(response.status(), 200);
    stopping.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish() {
    let agent = ConsulAgent::start().await;
    let instance = Instance::start(&agent, "grading").await;
    let url = format!("http://{}/slow", instance.addr);
    let in_flight = tokio::spawn(async move { testkit::http_client().get(url).send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    instance.shut_down().await;
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request was answered");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_instance_leaves_the_watched_set_when_its_check_fails() {
    let agent = ConsulAgent::start().await;
    let watch = ProviderWatch::spawn(&ConsulSettings::local(agent.http_addr()), "grading");
    let survivor = Instance::start(&agent, "grading").await;
    let victim = Instance::start(&agent, "grading").await;
    eventually("both watched", PATIENCE, || async {
        (watched_addresses(&watch).len() == 2).then_some(())
    })
    .await;
    let victim_addr = victim.addr.to_string();
    victim.crash();
    eventually(
        "the crashed instance dropped by the watcher",
        PATIENCE,
        || async { (watched_addresses(&watch) == [survivor.addr.to_string()]).then_some(()) },
    )
    .await;
    // Still in the catalogue (critical), only gone from the passing view.
    assert!(agent.agent_services().await.values().any(|s| {
        s["Port"]
            == victim_addr
                .rsplit(':')
                .next()
                .unwrap()
                .parse::<u16>()
                .unwrap()
    }));
    survivor.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_lost_its_state_gets_the_instance_back_by_itself() {
    let mut agent = ConsulAgent::start().await;
    let instance = Instance::start(&agent, "grading").await;
    eventually("registered", PATIENCE, || async {
        (passing_ids(&agent, "grading").await == [instance.id.clone()]).then_some(())
    })
    .await;

    // A bystander registered by hand shows that the restart really loses the agent's state.
    agent
        .register(&serde_json::json!({"Name": "bystander", "ID": "bystander-1", "Port": 1}))
        .await;

    agent.stop().await;
    agent.start_again().await;
    let restarted = Instant::now();
    eventually(
        "registered again without any help",
        Duration::from_secs(5),
        || async { (passing_ids(&agent, "grading").await == [instance.id.clone()]).then_some(()) },
    )
    .await;
    assert!(
        !agent.agent_services().await.contains_key("bystander-1"),
        "the agent lost its state"
    );
    eprintln!(
        "re-registered {} ms after the agent came back",
        restarted.elapsed().as_millis()
    );
    instance.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_keeps_its_last_known_set_while_the_agent_is_down() {
    let mut agent = ConsulAgent::start().await;
    let watch = ProviderWatch::spawn(&ConsulSettings::local(agent.http_addr()), "grading");
    let instance = Instance::start(&agent, "grading").await;
    eventually("watched", PATIENCE, || async {
        (watched_addresses(&watch) == [instance.addr.to_string()]).then_some(())
    })
    .await;

    agent.stop().await;
    let stale_since = eventually("the watch reports its set as stale", PATIENCE, || async {
        match watch.current().status {
            WatchStatus::Stale { since } => Some(since),
            _ => None,
        }
    })
    .await;
    // Retries fail on (their pace is tested on paused time in `watch.rs`): the set stays.
    let set = eventually("the watch retried", PATIENCE, || async {
        let set = watch.current();
        (set.failed_polls >= 3).then_some(set)
    })
    .await;
    assert_eq!(
        watched_addresses(&watch),
        [instance.addr.to_string()],
        "the last known set is kept"
    );
    assert!(set.age() > Duration::ZERO, "age grows while stale");
    assert_eq!(set.status, WatchStatus::Stale { since: stale_since });

    // A pool over the stale set still reaches the instance: Consul being away stops nothing.
    let pool = ProviderPool::new(watch.clone(), service_runtime::runtime::http_client());
    let body = pool.get("/whoami").await.unwrap().text().await.unwrap();
    assert_eq!(body, instance.addr.to_string());

    agent.start_again().await;
    eventually(
        "the watch is live again with the re-registered instance",
        PATIENCE,
        || async {
            let set = watch.current();
            (set.status == WatchStatus::Live
                && watched_addresses(&watch) == [instance.addr.to_string()])
            .then_some(())
        },
    )
    .await;
    instance.shut_down().await;
}

/// The real agent's side of the rejoin grace: back without its state, it lists nobody, and the
/// watch keeps what it knew. When the grace ends (and what else it keeps) is timed on paused
/// time in `watch.rs`'s unit tests, against an agent scripted as this one behaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_back_without_its_state_lists_nobody_and_the_watch_keeps_its_last_set() {
    let mut agent = ConsulAgent::start().await;
    let watch = ProviderWatch::spawn(&ConsulSettings::local(agent.http_addr()), "grading");
    // Registered by the harness, not by a running instance: after the restart nobody registers
    // it again, so only the grace period keeps it published.
    agent
        .register(&serde_json::json!({"Name": "grading", "ID": "g-1", "Address": "127.0.0.1", "Port": 6001}))
        .await;
    eventually("watched", PATIENCE, || async {
        (watched_addresses(&watch) == ["127.0.0.1:6001"]).then_some(())
    })
    .await;

    agent.start_again().await;
    eventually("the watch is live again", PATIENCE, || async {
        (watch.current().status == WatchStatus::Live).then_some(())
    })
    .await;
    assert!(
        agent.passing_instances("grading").await.is_empty(),
        "the agent came back without its state"
    );
    assert_eq!(
        watched_addresses(&watch),
        ["127.0.0.1:6001"],
        "the last known provider is kept after the agent's return"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_spreads_requests_and_moves_off_a_crashed_instance_at_once() {
    let agent = ConsulAgent::start().await;
    let pool = ProviderPool::new(
        ProviderWatch::spawn(&ConsulSettings::local(agent.http_addr()), "grading"),
        service_runtime::runtime::http_client(),
    );
    let a = Instance::start(&agent, "grading").await;
    let b = Instance::start(&agent, "grading").await;
    eventually("both watched", PATIENCE, || async {
        (pool.watch().current().providers.len() == 2).then_some(())
    })
    .await;

    let mut served: HashMap<String, usize> = HashMap::new();
    for _ in 0..200 {
        let who = pool.get("/whoami").await.unwrap().text().await.unwrap();
        *served.entry(who).or_default() += 1;
    }
    eprintln!("200 requests spread as {served:?}");
    assert!(served.get(&a.addr.to_string()).copied().unwrap_or(0) > 0);
    assert!(served.get(&b.addr.to_string()).copied().unwrap_or(0) > 0);

    // Crash one while Consul still lists it: every request must still succeed.
    let b_addr = b.addr.to_string();
    b.crash();
    let mut failures = 0;
    for _ in 0..200 {
        match pool.get("/whoami").await {
            Ok(response) => assert_eq!(response.text().await.unwrap(), a.addr.to_string()),
            Err(err) => {
                eprintln!("failed: {err}");
                failures += 1;
            }
        }
    }
    assert_eq!(
        failures, 0,
        "requests failed after a crash while another instance was healthy"
    );
    eventually(
        "Consul drops the crashed instance too",
        PATIENCE,
        || async {
            (!pool
                .watch()
                .current()
                .providers
                .iter()
                .any(|p| p.address == b_addr))
            .then_some(())
        },
    )
    .await;
    a.shut_down().await;
}

/// A listener that reads each request and hangs up without answering: the request reached a
/// server, which may have acted on it. Returns its port and a count of requests it swallowed.
async fn hang_up_server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let swallowed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = swallowed.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buffer = [0u8; 4096];
            if socket.read(&mut buffer).await.unwrap_or(0) > 0 {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            drop(socket);
        }
    });
    (port, swallowed)
}

/// A pool over `grading` listing a healthy instance and a hang-up server, the latter registered
/// without a check so that Consul lists it as passing however it behaves.
async fn healthy_and_hang_up(
    agent: &ConsulAgent,
) -> (
    ProviderPool,
    Instance,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let (port, swallowed) = hang_up_server().await;
    let (pool, healthy) = healthy_and_misbehaving(agent, "hang-up", port).await;
    (pool, healthy, swallowed)
}

/// A pool over `grading` listing a healthy instance and the server on `port`, registered as
/// `id` without a check, so that Consul lists it as passing however it behaves.
async fn healthy_and_misbehaving(
    agent: &ConsulAgent,
    id: &str,
    port: u16,
) -> (ProviderPool, Instance) {
    let pool = ProviderPool::new(
        ProviderWatch::spawn(&ConsulSettings::local(agent.http_addr()), "grading"),
        service_runtime::runtime::http_client(),
    );
    let healthy = Instance::start(agent, "grading").await;
    agent
        .register(
            &serde_json::json!({"Name": "grading", "ID": id, "Address": "127.0.0.1", "Port": port}),
        )
        .await;
    eventually("both watched", PATIENCE, || async {
        (pool.watch().current().providers.len() == 2).then_some(())
    })
    .await;
    (pool, healthy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_safe_requests_are_retried_after_the_server_got_them() {
    let agent = ConsulAgent::start().await;
    let (pool, healthy, swallowed) = healthy_and_hang_up(&agent).await;

    // GET is idempotent: a hang-up moves it to the healthy instance.
    for _ in 0..20 {
        let response = pool.get("/whoami").await.expect("GETs fail over");
        assert_eq!(response.text().await.unwrap(), healthy.addr.to_string());
    }
    assert!(
        swallowed.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the hang-up server was tried"
    );

    // POST is not: once the hang-up server is chosen the error goes to the caller, never a
    // second instance. Each try uses a fresh pool over the same watch, so the ejection the GETs
    // caused does not hide the hang-up server; each pick is then a coin toss between the two.
    let before = swallowed.load(std::sync::atomic::Ordering::SeqCst);
    let mut failed = 0;
    let mut tries = 0;
    while failed == 0 && tries < 200 {
        tries += 1;
        let fresh = ProviderPool::new(
            pool.watch().clone(),
            service_runtime::runtime::http_client(),
        );
        let payload = service_runtime::pool::Payload {
            content_type: "text/plain",
            bytes: "x".into(),
        };
        match fresh
            .send(reqwest::Method::POST, "/whoami", Some(payload))
            .await
        {
            Err(PoolError::Request { .. }) => failed += 1,
            Err(other) => panic!("unexpected error: {other}"),
            Ok(_) => {}
        }
    }
    assert_eq!(
        failed, 1,
        "within 200 POSTs one reached the hang-up server and was reported, not retried"
    );
    assert_eq!(
        swallowed.load(std::sync::atomic::Ordering::SeqCst),
        before + 1,
        "sent exactly once"
    );
    healthy.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_with_an_idempotency_key_is_retried_after_a_hang_up() {
    let agent = ConsulAgent::start().await;
    let (pool, healthy, swallowed) = healthy_and_hang_up(&agent).await;

    // The server applies a keyed request at most once, so the pool may send it again: every
    // one of these ends at the healthy instance, whichever instance was tried first.
    for _ in 0..20 {
        let key = service_runtime::pool::new_idempotency_key();
        let response = pool
            .post_json_once("/whoami", &serde_json::json!({"n": 1}), &key)
            .await
            .expect("a keyed POST fails over");
        assert_eq!(response.text().await.unwrap(), healthy.addr.to_string());
    }
    assert!(
        swallowed.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the hang-up server was tried"
    );
    healthy.shut_down().await;
}

/// A listener that reads each request and never answers, holding the connection open: what a
/// client sees of an instance whose host was cut off the network, or of a hung process.
async fn silent_server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = received.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                while socket.read(&mut buffer).await.unwrap_or(0) > 0 {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    (port, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_and_a_keyed_post_move_off_an_instance_that_never_answers() {
    let agent = ConsulAgent::start().await;
    let (port, received) = silent_server().await;
    let (pool, healthy) = healthy_and_misbehaving(&agent, "silent", port).await;

    // Until the silent instance has had a request, every request is a coin toss between the
    // two; each one must end at the healthy instance.
    let mut sent = 0;
    while received.load(std::sync::atomic::Ordering::SeqCst) == 0 && sent < 50 {
        sent += 1;
        let response = if sent % 2 == 0 {
            pool.get("/whoami").await
        } else {
            let key = service_runtime::pool::new_idempotency_key();
            pool.post_json_once("/whoami", &serde_json::json!({"n": sent}), &key)
                .await
        };
        let response = response.expect("a retryable request moves to an instance that answers");
        assert_eq!(response.text().await.unwrap(), healthy.addr.to_string());
    }
    assert!(
        received.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "within 50 requests one went to the silent instance"
    );
    healthy.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_with_no_provider_fails_at_once_with_a_typed_error() {
    let agent = ConsulAgent::start().await;
    let watch = ProviderWatch::spawn(&ConsulSettings::local(agent.http_addr()), "nobody");
    watch.ready(PATIENCE).await;
    let pool = ProviderPool::new(watch, service_runtime::runtime::http_client());
    let started = Instant::now();
    let result = tokio::time::timeout(PATIENCE, pool.get("/"))
        .await
        .expect("never hangs");
    eprintln!("no-provider answer in {} µs", started.elapsed().as_micros());
    let err = result.unwrap_err();
    assert!(matches!(err, PoolError::NoProvider { .. }), "{err}");
    assert!(err.is_unavailable());
    assert_eq!(err.to_string(), "no healthy nobody instance is available");
}
