//! docker-compose.yml on the real Docker engine, with the images `scripts/images.sh` builds: what
//! a user does with the stack, from the host, through the ports it publishes on 127.0.0.1.
//!
//! Ignored by a plain `cargo test`, since they need the engine and the images; scripts/test.sh
//! builds the images and runs them with `--ignored` whenever `docker info` answers, and fails
//! under CI=true when it does not. One stack at a time (`--test-threads=1`): each is four
//! containers on a 2-core machine.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use system_tests::compose::{STARTUP, Stack, docker, screenshot_path};
use system_tests::{PATIENCE, client};
use testkit::{Browser, FormToken, eventually};

/// Waits until log, grading (`gradings` instances) and portal all pass their checks in the stack's
/// Consul, and returns the passing grading addresses.
async fn all_passing(stack: &Stack, gradings: usize) -> Vec<String> {
    let what = format!("log, {gradings} grading and portal passing in Consul");
    eventually(&what, STARTUP, || async {
        let log = stack.passing("log").await?;
        let portal = stack.passing("portal").await?;
        let grading = stack.passing("grading").await?;
        (log.len() == 1 && portal.len() == 1 && grading.len() == gradings).then_some(grading)
    })
    .await
}

/// The status and body of a GET.
async fn get(url: &str) -> (u16, String) {
    let response = client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Requests the portal's home page in `streams` concurrent loops until `stop` is set; the
/// answers that were not 200, and how many were sent.
fn portal_load(
    stack: &Stack,
    streams: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(usize, Vec<String>)>> {
    (0..streams)
        .map(|_| {
            let url = format!("{}/", stack.portal_url());
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = client();
                let (mut sent, mut failed) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let status = client.get(&url).send().await.map(|r| r.status().as_u16());
                    sent += 1;
                    if status.as_ref().ok() != Some(&200) {
                        failed.push(format!("{status:?}"));
                    }
                }
                (sent, failed)
            })
        })
        .collect()
}

/// Stops a load and adds up what it sent and what failed.
async fn finish_load(
    stop: Arc<AtomicBool>,
    streams: Vec<tokio::task::JoinHandle<(usize, Vec<String>)>>,
) -> (usize, Vec<String>) {
    stop.store(true, Ordering::Relaxed);
    let (mut sent, mut failed) = (0, Vec::new());
    for stream in streams {
        let (n, f) = stream.await.unwrap();
        sent += n;
        failed.extend(f);
    }
    (sent, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine and scripts/images.sh; scripts/test.sh runs it"]
async fn compose_up_serves_the_walkthrough_with_the_consul_ui_dns_and_the_portal() {
    let started = Instant::now();
    let stack = Stack::up("walkthrough", &[]).await;
    let grading = all_passing(&stack, 1).await;
    eprintln!(
        "compose up to every service passing: {} ms",
        started.elapsed().as_millis()
    );

    // Each service registered its own container's address, which Consul's check reaches.
    for service in ["log", "grading", "portal"] {
        let ids = stack.containers(service).await;
        assert_eq!(ids.len(), 1, "{service}: {ids:?}");
        let ip = stack.container_ip(&ids[0]).await;
        let passing = stack.passing(service).await.unwrap();
        assert!(
            passing[0].starts_with(&format!("{ip}:")),
            "{service} registered {passing:?}, its container is {ip}"
        );
    }

    // Consul DNS on the host answers with grading's container address and port.
    let dig = tokio::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &stack.dns_port().to_string()])
        .args([
            "grading.service.consul",
            "SRV",
            "+noall",
            "+answer",
            "+additional",
        ])
        .output()
        .await
        .expect("dig is installed (scripts/test.sh installs dnsutils)");
    let answer = String::from_utf8_lossy(&dig.stdout);
    let records: Vec<Vec<&str>> = answer
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let srv_ports: Vec<&str> = records
        .iter()
        .filter(|r| r.get(3) == Some(&"SRV"))
        .filter_map(|r| r.get(6).copied())
        .collect();
    let addresses: Vec<&str> = records
        .iter()
        .filter(|r| r.get(3) == Some(&"A"))
        .filter_map(|r| r.get(4).copied())
        .collect();
    let (ip, port) = grading[0].split_once(':').unwrap();
    assert_eq!(srv_ports, [port], "dig's SRV answer:\n{answer}");
    assert_eq!(
        addresses,
        [ip],
        "dig's A record for the SRV target:\n{answer}"
    );

    // The walkthrough's requests, through the published ports.
    let stored = client()
        .post(format!("{}/log?service=walkthrough", stack.log_url()))
        .body("hello from the host")
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201);
    let (status, records) = get(&format!("{}/log?service=walkthrough", stack.log_url())).await;
    assert_eq!(status, 200);
    assert!(records.contains("hello from the host"), "{records}");

    let (status, students) = get(&format!("{}/students", stack.grading_url(1).await)).await;
    assert_eq!(status, 200);
    assert!(students.contains("Bruce"), "{students}");

    let form = FormToken::fetch(&client(), &format!("{}/students/2", stack.portal_url()))
        .await
        .unwrap();
    let posted = form
        .post(
            &client(),
            &format!("{}/students/2/grades", stack.portal_url()),
            "title=Compose+quiz&type=Quiz&score=88",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 303);
    assert_eq!(posted.headers()["location"], "/students/2");
    let (status, page) = get(&format!("{}/students/2", stack.portal_url())).await;
    assert_eq!(status, 200);
    assert!(page.contains("Compose quiz"), "{page}");

    // The Consul UI, as a user opens it from the portal's status page, lists the three.
    let browser = Browser::start().await;
    browser
        .goto(&format!("{}/status", stack.portal_url()))
        .await;
    let ui_link = browser
        .page_source()
        .await
        .contains(&format!("href=\"{}/ui/\"", stack.consul_url()));
    assert!(ui_link, "the status page links to the published Consul UI");
    browser
        .goto(&format!("{}/ui/dc1/services", stack.consul_url()))
        .await;
    let listed = eventually(
        "the Consul UI lists log, grading and portal as passing",
        PATIENCE,
        || async {
            // Consul 1.8's UI: one list item a service, its health as a `dl` with the state's class.
            let names = browser
                .texts("li:has(dl.passing) a[href*='/services/']")
                .await;
            let all = ["log", "grading", "portal"]
                .iter()
                .all(|s| names.iter().any(|n| n == s));
            all.then_some(names)
        },
    )
    .await;
    eprintln!("the Consul UI lists {listed:?}");
    browser
        .screenshot(&screenshot_path("compose-consul-ui.png"))
        .await;
    browser
        .goto(&format!("{}/students/2", stack.portal_url()))
        .await;
    assert!(browser.page_source().await.contains("Compose quiz"));
    browser
        .screenshot(&screenshot_path("compose-portal-student.png"))
        .await;
    browser.quit().await;
    eprintln!(
        "walkthrough in containers: {} ms",
        started.elapsed().as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine and scripts/images.sh; scripts/test.sh runs it"]
async fn three_scaled_grading_instances_share_the_load_and_a_docker_kill_fails_no_request() {
    let started = Instant::now();
    // Grading logs each request it serves at debug, so its output shows which instance served.
    let stack = Stack::up(
        "scale",
        &[("RUST_LOG", "info,service_runtime::runtime=debug")],
    )
    .await;
    stack
        .compose(&["up", "-d", "--no-build", "--scale", "grading=3"])
        .await;
    let grading = all_passing(&stack, 3).await;

    let status_url = format!("{}/status", stack.portal_url());
    eventually(
        "the portal's status lists 3 grading instances",
        PATIENCE,
        || async {
            let (_, page) = get(&status_url).await;
            grading.iter().all(|a| page.contains(a)).then_some(())
        },
    )
    .await;

    let browser = Browser::start().await;
    browser.goto(&status_url).await;
    browser
        .screenshot(&screenshot_path("compose-portal-status.png"))
        .await;
    browser.quit().await;

    for _ in 0..150 {
        assert_eq!(get(&format!("{}/", stack.portal_url())).await.0, 200);
    }
    let ids = stack.containers("grading").await;
    let mut served = Vec::new();
    for id in &ids {
        let logs = stack.logs(id).await;
        served.push(
            logs.lines()
                .filter(|l| l.contains("request") && l.contains("path=\"/students\""))
                .count(),
        );
    }
    eprintln!("150 portal pages served by the 3 grading instances as {served:?}");
    assert!(
        served.iter().all(|&n| n > 0),
        "all 3 get traffic: {served:?}"
    );

    // docker kill (SIGKILL) one instance while two streams of requests go through the portal.
    let killed_ip = stack.container_ip(&ids[1]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = portal_load(&stack, 2, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    docker(&["kill", &ids[1]]).await;
    eventually(
        "the killed instance leaves the passing set",
        PATIENCE,
        || async {
            let passing = stack.passing("grading").await?;
            (passing.len() == 2
                && !passing
                    .iter()
                    .any(|a| a.starts_with(&format!("{killed_ip}:"))))
            .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (sent, failed) = finish_load(stop, load).await;
    eprintln!(
        "{sent} portal requests around a docker kill of one grading: {} failed",
        failed.len()
    );
    assert!(sent > 100, "the load ran: {sent} requests");
    assert!(failed.is_empty(), "requests failed: {failed:?}");
    eprintln!(
        "scale and kill in containers: {} ms",
        started.elapsed().as_millis()
    );
}

/// Prometheus's active targets as `(job, instance)` with their health, from its targets API;
/// `None` while it does not answer.
async fn prometheus_targets(stack: &Stack) -> Option<BTreeMap<(String, String), String>> {
    let url = format!("{}/api/v1/targets?state=active", stack.prometheus_url());
    let body: serde_json::Value = client().get(&url).send().await.ok()?.json().await.ok()?;
    let targets = body["data"]["activeTargets"].as_array()?;
    let label = |target: &serde_json::Value, name: &str| {
        target["labels"][name].as_str().unwrap_or("?").to_owned()
    };
    Some(
        targets
            .iter()
            .map(|t| {
                let health = t["health"].as_str().unwrap_or("?").to_owned();
                ((label(t, "job"), label(t, "instance")), health)
            })
            .collect(),
    )
}

/// The passing instances of log, grading and portal in the stack's Consul, as `(service,
/// address:port)`: what Prometheus should be scraping.
async fn consul_catalogue(stack: &Stack) -> Option<BTreeSet<(String, String)>> {
    let mut instances = BTreeSet::new();
    for service in ["log", "grading", "portal"] {
        for address in stack.passing(service).await? {
            instances.insert((service.to_owned(), address));
        }
    }
    Some(instances)
}

/// Waits until Prometheus scrapes exactly the instances Consul lists as passing (`expected` of
/// them), every one healthy ("up"), and returns them.
async fn prometheus_scrapes_the_catalogue(
    stack: &Stack,
    expected: usize,
) -> BTreeSet<(String, String)> {
    let what = format!("Prometheus scraping the {expected} instances Consul lists, all up");
    let mut last = None;
    let found = tokio::time::timeout(STARTUP, async {
        loop {
            if let (Some(catalogue), Some(targets)) = (
                consul_catalogue(stack).await,
                prometheus_targets(stack).await,
            ) {
                let listed: BTreeSet<(String, String)> = targets.keys().cloned().collect();
                let all_up = targets.values().all(|health| health == "up");
                if catalogue.len() == expected && listed == catalogue && all_up {
                    return catalogue;
                }
                last = Some((catalogue, targets));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("{what}: not within {STARTUP:?}; last seen {last:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine and scripts/images.sh; scripts/test.sh runs it"]
async fn prometheus_finds_every_instance_through_consul_including_those_added_by_scale() {
    let started = Instant::now();
    let stack = Stack::up("prometheus", &[]).await;
    all_passing(&stack, 1).await;
    let first = prometheus_scrapes_the_catalogue(&stack, 3).await;
    eprintln!(
        "Prometheus scraping {first:?}: {} ms after up",
        started.elapsed().as_millis()
    );

    // Two more grading instances, and nothing edited: Prometheus hears of them from Consul.
    let scaled = Instant::now();
    stack
        .compose(&["up", "-d", "--no-build", "--scale", "grading=3"])
        .await;
    all_passing(&stack, 3).await;
    let targets = prometheus_scrapes_the_catalogue(&stack, 5).await;
    eprintln!(
        "Prometheus scraping all 3 grading instances {} ms after the scale",
        scaled.elapsed().as_millis()
    );
    let gradings = targets.iter().filter(|(job, _)| job == "grading").count();
    assert_eq!(gradings, 3, "{targets:?}");

    // What it scraped is each service's own /metrics: one build_info series per instance.
    let query = format!(
        "{}/api/v1/query?query=gradebook_build_info",
        stack.prometheus_url()
    );
    let series: Vec<(String, String)> = eventually(
        "Prometheus has gradebook_build_info of every instance",
        PATIENCE,
        || async {
            let body: serde_json::Value =
                client().get(&query).send().await.ok()?.json().await.ok()?;
            let result = body["data"]["result"].as_array()?;
            let series: Vec<(String, String)> = result
                .iter()
                .map(|r| {
                    let metric = &r["metric"];
                    let text = |k: &str| metric[k].as_str().unwrap_or("?").to_owned();
                    (text("job"), text("service"))
                })
                .collect();
            (series.len() == 5).then_some(series)
        },
    )
    .await;
    assert!(
        series.iter().all(|(job, service)| job == service),
        "the job is the Consul service name: {series:?}"
    );
    eprintln!(
        "prometheus through consul in containers: {} ms",
        started.elapsed().as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine and scripts/images.sh; scripts/test.sh runs it"]
async fn a_restarted_consul_server_has_every_instance_back_within_10_s_while_the_portal_serves() {
    let started = Instant::now();
    let stack = Stack::up("consul-restart", &[]).await;
    all_passing(&stack, 1).await;

    // A key in Consul's KV store marks the server's state: a dev server keeps nothing, so the
    // key is gone after the restart, and so is every registration.
    let marker = format!("{}/v1/kv/gradebook-test/marker", stack.consul_url());
    let put = testkit::http_client()
        .put(&marker)
        .body("before")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);

    let stop = Arc::new(AtomicBool::new(false));
    let load = portal_load(&stack, 2, stop.clone());
    let restart_started = Instant::now();
    stack.compose(&["restart", "consul"]).await;
    let back = Instant::now();
    eventually(
        "every instance back in the catalogue",
        Duration::from_secs(10),
        || async {
            let services = ["log", "grading", "portal"];
            for service in services {
                if stack.passing(service).await?.len() != 1 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    eprintln!(
        "every instance passing again {} ms after the restarted server answered",
        back.elapsed().as_millis()
    );
    let get_marker = testkit::http_client().get(&marker).send().await.unwrap();
    assert_eq!(
        get_marker.status(),
        404,
        "the restarted server lost its state"
    );
    // Serving throughout: past the 10 s for which a caller distrusts an empty list after an
    // outage, the portal must still be using the right instances.
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(restart_started.elapsed())).await;
    let (sent, failed) = finish_load(stop, load).await;
    eprintln!(
        "{sent} portal requests across the Consul restart: {} failed",
        failed.len()
    );
    assert!(sent > 50, "the load ran: {sent} requests");
    assert!(failed.is_empty(), "requests failed: {failed:?}");
    eprintln!(
        "consul restart in containers: {} ms",
        started.elapsed().as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Docker engine and scripts/images.sh; scripts/test.sh runs it"]
async fn stop_deregisters_and_exits_0_and_the_data_outlives_down_and_up() {
    let started = Instant::now();
    let stack = Stack::up("volumes", &[]).await;
    all_passing(&stack, 1).await;
    let stored = client()
        .post(format!("{}/log?service=keepme", stack.log_url()))
        .body("a record that outlives its container")
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201);
    let form = FormToken::fetch(&client(), &format!("{}/students/3", stack.portal_url()))
        .await
        .unwrap();
    let posted = form
        .post(
            &client(),
            &format!("{}/students/3/grades", stack.portal_url()),
            "title=Kept+across+down&type=Test&score=71",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 303);

    // Stop the services with Consul still up, so the catalogue shows whether they deregistered.
    let ids: Vec<(&str, String)> = {
        let mut ids = Vec::new();
        for service in ["portal", "grading", "log"] {
            ids.push((service, stack.containers(service).await.remove(0)));
        }
        ids
    };
    stack.compose(&["stop", "portal", "grading", "log"]).await;
    for (service, id) in &ids {
        assert_eq!(stack.state(id).await, (false, 0), "{service} exits 0");
        assert_eq!(
            stack.registered(service).await,
            Some(0),
            "{service} left the catalogue"
        );
        let logs = stack.logs(id).await;
        assert!(
            logs.contains("deregistered from Consul"),
            "{service}:\n{logs}"
        );
    }

    stack.compose(&["down"]).await;
    stack.compose(&["up", "-d", "--no-build"]).await;
    all_passing(&stack, 1).await;
    let (_, records) = get(&format!("{}/log?service=keepme", stack.log_url())).await;
    assert!(
        records.contains("a record that outlives its container"),
        "{records}"
    );
    let (status, page) = get(&format!("{}/students/3", stack.portal_url())).await;
    assert_eq!(status, 200);
    assert!(page.contains("Kept across down"), "{page}");
    eprintln!(
        "stop, down and up in containers: {} ms",
        started.elapsed().as_millis()
    );
}
