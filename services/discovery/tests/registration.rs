//! Registration against a real Consul agent: what the agent lists after a keeper stops.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use discovery::ConsulSettings;
use discovery::agent::{AgentClient, HttpCheck, Registration};
use discovery::registration::RegistrationKeeper;
use testkit::{ConsulAgent, eventually};
use tokio::sync::watch;
use warp::Filter;
use warp::http::Response;
use warp::hyper::body::Bytes;

const PATIENCE: Duration = Duration::from_secs(15);

/// What the link between keeper and agent does with registrations.
struct Link {
    /// While set, registrations are held until `released`.
    holding: AtomicBool,
    released: watch::Sender<bool>,
    /// Registrations taken and not yet answered by the agent.
    held: AtomicUsize,
    /// Deregistrations the agent has answered.
    deregistered: AtomicUsize,
}

/// An HTTP proxy in front of the real agent at `agent`, standing for a slow link or a busy agent:
/// while `link.holding`, it keeps each registration until `link.released`, and hands it over
/// even if the caller hung up meanwhile (the agent itself applies a registration whose caller
/// is gone). Everything else passes straight through.
async fn slow_link_to(agent: String, link: Arc<Link>) -> String {
    let upstream = reqwest::Client::builder().no_proxy().build().unwrap();
    let route = warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::body::bytes())
        .then(
            move |method: warp::http::Method,
                  path: warp::path::FullPath,
                  query: String,
                  body: Bytes| {
                let url = match query.is_empty() {
                    true => format!("{agent}{}", path.as_str()),
                    false => format!("{agent}{}?{query}", path.as_str()),
                };
                let method = reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap();
                let request = upstream.request(method, url).body(body);
                let link = link.clone();
                let path = path.as_str().to_owned();
                async move {
                    let hold =
                        path == "/v1/agent/service/register" && link.holding.load(Ordering::SeqCst);
                    if hold {
                        link.held.fetch_add(1, Ordering::SeqCst);
                    }
                    // Detached, so that a caller hanging up does not cancel it.
                    let forwarded = tokio::spawn(async move {
                        if hold {
                            let _ = link.released.subscribe().wait_for(|r| *r).await;
                        }
                        let answer = request.send().await;
                        if hold {
                            link.held.fetch_sub(1, Ordering::SeqCst);
                        }
                        if path.starts_with("/v1/agent/service/deregister/") {
                            link.deregistered.fetch_add(1, Ordering::SeqCst);
                        }
                        answer
                    });
                    match forwarded.await.unwrap() {
                        Ok(answer) => {
                            let mut response = Response::builder().status(answer.status().as_u16());
                            for (name, value) in answer.headers() {
                                if name.as_str().starts_with("x-consul") {
                                    response = response.header(name.as_str(), value.as_bytes());
                                }
                            }
                            response
                                .body(answer.bytes().await.unwrap_or_default())
                                .unwrap()
                        }
                        Err(_) => Response::builder().status(502).body(Bytes::new()).unwrap(),
                    }
                }
            },
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    format!("http://{addr}")
}

fn registration() -> Registration {
    Registration {
        id: "grading-127.0.0.1-1".into(),
        name: "grading".into(),
        tags: vec![],
        address: "127.0.0.1".into(),
        port: 1,
        meta: BTreeMap::new(),
        check: HttpCheck {
            name: "HTTP /health".into(),
            http: "http://127.0.0.1:1/health".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            deregister_critical_service_after: Duration::from_secs(60),
            status: "passing",
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_deregisters_during_a_re_registration_stays_deregistered() {
    let agent = ConsulAgent::start().await;
    let link = Arc::new(Link {
        holding: AtomicBool::new(false),
        released: watch::Sender::new(false),
        held: AtomicUsize::new(0),
        deregistered: AtomicUsize::new(0),
    });
    let through_link = slow_link_to(agent.http_addr(), link.clone()).await;
    let keeper = RegistrationKeeper::spawn(
        AgentClient::new(ConsulSettings::local(through_link)),
        registration(),
    );
    let id = keeper.service_id().to_owned();
    eventually("registered", PATIENCE, || async {
        agent.agent_services().await.contains_key(&id).then_some(())
    })
    .await;

    // The agent forgets the instance (as a restarted dev agent does); the keeper registers it
    // again, and that registration is still on its way when the instance shuts down.
    link.holding.store(true, Ordering::SeqCst);
    agent.deregister(&id).await;
    eventually("a re-registration on its way", PATIENCE, || async {
        (link.held.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    let shutting_down = tokio::spawn(keeper.deregister());

    // The registration arrives once the deregistration has been applied, or after a second if
    // the keeper waits for it before deregistering.
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        eventually("deregistered meanwhile", PATIENCE, || async {
            (link.deregistered.load(Ordering::SeqCst) > 0).then_some(())
        }),
    )
    .await;
    link.released.send_replace(true);
    shutting_down.await.unwrap();
    eventually("every registration answered", PATIENCE, || async {
        (link.held.load(Ordering::SeqCst) == 0).then_some(())
    })
    .await;

    let services = agent.agent_services().await;
    assert!(
        !services.contains_key(&id),
        "the agent lists the instance after it deregistered: {services:?}"
    );
}
