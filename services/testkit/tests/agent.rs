//! Runs real Consul dev agents through `testkit`, so every service's tests can rely on it.

use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use testkit::{ConsulAgent, ServiceProcess, eventually, free_port, http_client};

/// The leader an agent reports: a non-empty "host:port" once it is usable.
async fn leader(agent: &ConsulAgent) -> String {
    let url = format!("{}/v1/status/leader", agent.http_addr());
    let response = http_client().get(&url).send().await;
    let response = response.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    response
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: bad JSON: {e}"))
}

/// The registration the tests use: one "demo" instance without checks.
fn demo() -> serde_json::Value {
    json!({"Name": "demo", "ID": "demo-1", "Port": 1234, "Address": "127.0.0.1", "Tags": ["v1"]})
}

#[tokio::test]
async fn two_agents_run_side_by_side() {
    let (a, b) = tokio::join!(ConsulAgent::start(), ConsulAgent::start());
    assert_ne!(a.http_addr(), b.http_addr());
    assert_ne!(a.dns_port(), b.dns_port());
    assert_ne!(a.node_name(), b.node_name());
    for agent in [&a, &b] {
        let leader = leader(agent).await;
        assert!(!leader.is_empty(), "{} has no leader", agent.http_addr());
    }

    // They are separate clusters: a registration on one is unknown to the other.
    a.register(&demo()).await;
    assert_eq!(a.passing_instances("demo").await.len(), 1);
    assert!(b.passing_instances("demo").await.is_empty());
}

#[tokio::test]
async fn registration_shows_as_passing_instance() {
    let agent = ConsulAgent::start().await;
    agent.register(&demo()).await;

    let instances = agent.passing_instances("demo").await;
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(instances[0].id, "demo-1");
    assert_eq!(instances[0].address, "127.0.0.1:1234");
    assert_eq!(instances[0].tags, ["v1"]);
    assert!(instances[0].meta.is_empty());

    assert!(agent.agent_services().await.contains_key("demo-1"));
    assert_eq!(
        agent.check_status("demo-1").await,
        None,
        "demo-1 registered no check"
    );
    assert!(agent.passing_instances("nothing").await.is_empty());
}

#[tokio::test]
async fn check_status_reports_the_worst_check() {
    let agent = ConsulAgent::start().await;
    let mut registration = demo();
    registration["Checks"] = json!([
        {"Name": "ok", "TTL": "1m", "Status": "passing"},
        {"Name": "bad", "TTL": "1m", "Status": "critical"},
    ]);
    agent.register(&registration).await;

    assert_eq!(
        agent.check_status("demo-1").await.as_deref(),
        Some("critical")
    );
    assert!(agent.passing_instances("demo").await.is_empty());
}

#[tokio::test]
async fn restart_forgets_registrations_and_works_again() {
    let mut agent = ConsulAgent::start().await;
    let addr = agent.http_addr();
    agent.register(&demo()).await;
    assert_eq!(agent.passing_instances("demo").await.len(), 1);

    agent.stop().await;
    let url = format!("{addr}/v1/status/leader");
    assert!(
        http_client().get(&url).send().await.is_err(),
        "stopped agent still answers {url}"
    );

    agent.start_again().await;
    assert_eq!(agent.http_addr(), addr, "ports change across a restart");
    assert!(!leader(&agent).await.is_empty());
    assert!(
        agent.passing_instances("demo").await.is_empty(),
        "registration survived a restart"
    );
    assert!(agent.agent_services().await.is_empty());

    agent.register(&demo()).await;
    let ids = eventually("demo registered again", Duration::from_secs(5), || async {
        let instances = agent.passing_instances("demo").await;
        (!instances.is_empty()).then_some(instances)
    })
    .await;
    assert_eq!(ids[0].id, "demo-1");
}

#[tokio::test]
async fn service_that_exits_early_fails_with_its_output() {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let args = ["-c".to_owned(), "echo about to fail; exit 3".to_owned()];
    let spawned =
        tokio::spawn(
            async move { ServiceProcess::spawn(Path::new("/bin/sh"), addr, &args, &[]).await },
        );
    assert_failed_with_its_output(spawned).await;
}

#[tokio::test]
async fn a_service_on_any_port_that_exits_before_binding_fails_with_its_output() {
    let args = ["-c".to_owned(), "echo about to fail; exit 3".to_owned()];
    let spawned = tokio::spawn(async move {
        ServiceProcess::spawn_on_any_port(Path::new("/bin/sh"), &args, &[]).await
    });
    assert_failed_with_its_output(spawned).await;
}

#[tokio::test]
async fn start_again_retries_while_a_port_is_taken() {
    let mut agent = ConsulAgent::start().await;
    agent.stop().await;
    let port = agent.http_port();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("cannot take the stopped agent's port {port}: {e}"));
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        drop(squatter);
    });

    agent.start_again().await;
    release
        .await
        .unwrap_or_else(|e| panic!("releasing the port failed: {e}"));
    assert!(!leader(&agent).await.is_empty());
}

/// `spawned` panicked saying the process exited, with the tail of what it printed.
async fn assert_failed_with_its_output<T: std::fmt::Debug>(spawned: tokio::task::JoinHandle<T>) {
    let panic = spawned
        .await
        .expect_err("spawn should fail for a process that exits")
        .into_panic();
    let message = panic
        .downcast_ref::<String>()
        .unwrap_or_else(|| panic!("spawn's panic message is not a String"));
    assert!(message.contains("exited"), "{message}");
    assert!(
        message.contains("about to fail"),
        "log tail missing: {message}"
    );
}
