//! The cluster scenarios of RELIABILITY.md: docker-compose.cluster.yml (three Consul servers,
//! three service hosts each with its own client agent, PostgreSQL) on the real Docker engine,
//! under load through the portals, while a fault takes away a server, a host, the quorum, every
//! service container in turn, or the database. Everything the runner sends goes to the ports the
//! cluster publishes on 127.0.0.1; container addresses are only read, to tell hosts apart.
//!
//! One cluster serves every scenario of a run: each starts by waiting until the cluster is
//! whole again, so a scenario that left it broken fails the next one's start, not silently.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use discovery::{ConsulSettings, ProviderWatch};
use serde_json::Value;
use system_tests::client;
use system_tests::compose::{Stack, docker, screenshot_path};
use testkit::Browser;

use crate::common::{Acked, portal_grade, portal_page, report_grades, report_user_loads};
use crate::load::{Load, stop_all};
use crate::report::Outcome;

/// The host ports docker-compose.cluster.yml publishes, by the variable that sets each.
const PORTS: [&str; 7] = [
    "GRADEBOOK_CONSUL_PORT",
    "GRADEBOOK_CONSUL_DNS_PORT",
    "GRADEBOOK_HOST1_DNS_PORT",
    "GRADEBOOK_LOG_PORT",
    "GRADEBOOK_GRADING_PORT",
    "GRADEBOOK_PORTAL_PORT",
    "GRADEBOOK_PORTAL2_PORT",
];

const SERVERS: [&str; 3] = ["consul-server-1", "consul-server-2", "consul-server-3"];

/// The instances of each service the cluster file runs, and the containers that run them.
const SERVICES: [(&str, &[&str]); 3] = [
    ("log", &["log-1", "log-2"]),
    ("grading", &["grading-1", "grading-2", "grading-3"]),
    ("portal", &["portal-1", "portal-2"]),
];

/// The containers of host-2, the host the host faults take away: it runs one instance of every
/// service, so each service loses one while the others keep serving.
const HOST_2: [&str; 4] = ["host-2", "log-2", "grading-2", "portal-2"];

/// How long the cluster may take to be whole: from `up`, or back from a fault.
const WHOLE: Duration = Duration::from_secs(90);

/// How long the runner waits for a new leader after the old one is killed: a guard against a
/// cluster that never elects one, not a bound on how fast (3 to 7 s here, printed), since
/// scripts/test.sh runs this scenario as a pass/fail check.
const NEW_LEADER_WITHIN: Duration = Duration::from_secs(30);
/// The bound this runner claims (RELIABILITY.md states it) for a host's instances to be out of
/// every healthy set after it is cut off or stopped (5 to 7 s here when cut off).
const HOST_LEAVES_WITHIN: Duration = Duration::from_secs(15);
/// How long a portal may take, once Consul is whole, to serve a page: three times its watch's
/// longest wait before retrying a failed query (5 s, discovery's `RETRY_CAP`).
const PORTAL_SERVES_WITHIN: Duration = Duration::from_secs(15);
/// After PostgreSQL is back, grading answers again within this, without being restarted.
const DATABASE_RECOVERY_WITHIN: Duration = Duration::from_secs(10);

/// The scenarios, numbered as `faults cluster N` takes them.
pub const SCENARIOS: &str = "\
  1  the Consul leader killed under load: a new leader, 0 failed requests
  2  host-2 cut off the network, then connected again
  3  host-2 stopped whole (agent and services), then started again
  4  2 of 3 Consul servers stopped (quorum lost) for 15 s
  5  a rolling upgrade of every service container under load
  6  PostgreSQL stopped for 8 s under load, then started again
";

/// The running cluster; taken down with its volumes when dropped.
pub struct Cluster {
    stack: Stack,
    network: String,
    /// The containers no scenario recreates (servers, agents, PostgreSQL), looked up once:
    /// `compose ps` takes most of a second, which would blur every timing polled through it.
    fixed: HashMap<&'static str, String>,
}

/// The compose services whose containers keep their IDs through every scenario (stopped and
/// started, never recreated).
const FIXED: [&str; 8] = [
    "consul-server-1",
    "consul-server-2",
    "consul-server-3",
    "consul-ui",
    "host-1",
    "host-2",
    "host-3",
    "postgres",
];

impl Cluster {
    /// `up` of docker-compose.cluster.yml as project `gradebook-test-NAME` on free ports.
    pub async fn up(name: &str) -> Cluster {
        let stack = Stack::up_file("docker-compose.cluster.yml", name, &PORTS, &[]).await;
        let mut fixed = HashMap::new();
        for service in FIXED {
            if let Some(id) = stack.containers(service).await.into_iter().next() {
                fixed.insert(service, id);
            }
        }
        // The network's name is the compose program's to choose (v1 and v2 differ): ask a host.
        let host = fixed.get("host-1").expect("host-1 was created");
        let network = docker(&[
            "inspect",
            "-f",
            "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}",
            host,
        ])
        .await
        .trim()
        .to_owned();
        Cluster {
            stack,
            network,
            fixed,
        }
    }

    fn consul(&self, path: &str) -> String {
        format!("{}{path}", self.stack.consul_url())
    }

    /// The Consul API's answer as JSON, and its status; `None` when it does not answer.
    async fn consul_get(&self, path: &str) -> Option<(u16, Value)> {
        let response = client().get(self.consul(path)).send().await.ok()?;
        let status = response.status().as_u16();
        let text = response.text().await.ok()?;
        Some((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// The compose service of the current Raft leader, as the consul-ui agent's servers say:
    /// what a client of the cluster sees.
    pub async fn leader(&self) -> Option<String> {
        let (status, leader) = self.consul_get("/v1/status/leader").await?;
        let address = leader.as_str().filter(|a| status == 200 && !a.is_empty())?;
        self.server_at(address).await
    }

    /// The leader as one server sees it (`consul info` in its container): what Raft decided,
    /// with no agent in between that may still be sending its calls to a dead server.
    async fn leader_seen_by(&self, server: &str) -> Option<String> {
        let id = self.container(server).await;
        let output = tokio::process::Command::new("docker")
            .args(["exec", &id, "consul", "info"])
            .output()
            .await
            .ok()?;
        let info = String::from_utf8_lossy(&output.stdout);
        let address = info
            .lines()
            .find_map(|line| line.trim().strip_prefix("leader_addr = "))?;
        self.server_at(address).await
    }

    /// The server whose Raft address (`IP:8300`) is `address`: one `docker inspect` of the
    /// three.
    async fn server_at(&self, address: &str) -> Option<String> {
        let ip = address.split(':').next().filter(|ip| !ip.is_empty())?;
        let mut args = vec![
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        ];
        args.extend(
            SERVERS
                .iter()
                .filter_map(|s| self.fixed.get(s).map(String::as_str)),
        );
        let ips = docker(&args).await;
        SERVERS
            .iter()
            .zip(ips.lines())
            .find(|(_, server_ip)| server_ip.trim() == ip)
            .map(|(server, _)| (*server).to_owned())
    }

    /// A compose service's (first) container.
    pub async fn container(&self, service: &str) -> String {
        if let Some(id) = self.fixed.get(service) {
            return id.clone();
        }
        self.stack
            .containers(service)
            .await
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no container for {service}"))
    }

    /// A compose service's address on the cluster network ("" while it is stopped).
    pub async fn ip_of(&self, service: &str) -> String {
        let id = self.container(service).await;
        self.stack.container_ip(&id).await
    }

    /// The addresses (without port) of the passing instances of `service`.
    async fn passing_hosts(&self, service: &str) -> Option<Vec<String>> {
        let passing = self.stack.passing(service).await?;
        Some(
            passing
                .iter()
                .map(|a| a.rsplit_once(':').map_or(a.clone(), |(h, _)| h.to_owned()))
                .collect(),
        )
    }

    /// Whether the cluster is whole: a leader, every agent alive, every instance passing.
    async fn is_whole(&self) -> bool {
        if self.leader().await.is_none() {
            return false;
        }
        let Some((200, members)) = self.consul_get("/v1/agent/members").await else {
            return false;
        };
        // Serf status 1 is "alive"; 3 servers, the UI agent and 3 hosts.
        let alive = members
            .as_array()
            .map_or(0, |m| m.iter().filter(|m| m["Status"] == 1).count());
        if alive != 7 {
            return false;
        }
        for (service, containers) in SERVICES {
            if self.stack.passing(service).await.map(|p| p.len()) != Some(containers.len()) {
                return false;
            }
        }
        true
    }

    /// Waits until the cluster is whole; how long that took.
    pub async fn whole(&self) -> Result<Duration, String> {
        let started = Instant::now();
        while started.elapsed() < WHOLE {
            if self.is_whole().await {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "the cluster was not whole (a leader, 7 agents alive, 2 log, 3 grading, 2 portal \
             passing) within {} s",
            WHOLE.as_secs()
        ))
    }

    /// Polls every 50 ms until `done` holds; the time it took, or `None` past `limit`.
    async fn time_until<F, Fut>(&self, limit: Duration, mut done: F) -> Option<Duration>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let started = Instant::now();
        while started.elapsed() < limit {
            if done().await {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Whether no passing instance of any service is at `ip`.
    async fn none_passing_at(&self, ip: &str) -> bool {
        for (service, _) in SERVICES {
            match self.passing_hosts(service).await {
                Some(hosts) if !hosts.iter().any(|h| h == ip) => {}
                _ => return false,
            }
        }
        true
    }

    fn portal_urls(&self) -> Vec<String> {
        ["GRADEBOOK_PORTAL_PORT", "GRADEBOOK_PORTAL2_PORT"]
            .iter()
            .map(|var| format!("http://127.0.0.1:{}", self.stack.port(var)))
            .collect()
    }

    fn grading_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.stack.port("GRADEBOOK_GRADING_PORT")
        )
    }

    /// Picks a portal for each request as a load balancer that follows Consul would: among the
    /// portals Consul lists as passing (through the UI agent), in turn.
    async fn balancer(&self) -> Balancer {
        let mut by_ip = HashMap::new();
        // A portal has no address of its own: it is in its host's network namespace.
        for (index, url) in self.portal_urls().into_iter().enumerate() {
            by_ip.insert(self.ip_of(&format!("host-{}", index + 1)).await, url);
        }
        let watch = ProviderWatch::spawn(&ConsulSettings::local(self.stack.consul_url()), "portal");
        watch.ready(Duration::from_secs(10)).await;
        Balancer {
            by_ip: Arc::new(by_ip),
            watch,
        }
    }
}

/// Portals chosen the way a load balancer fed by Consul chooses them.
#[derive(Clone)]
struct Balancer {
    by_ip: Arc<HashMap<String, String>>,
    watch: ProviderWatch,
}

impl Balancer {
    fn pick(&self, n: u64) -> Option<String> {
        let set = self.watch.current();
        let urls: Vec<&String> = set
            .providers
            .iter()
            .filter_map(|p| {
                let ip = p.address.rsplit_once(':').map_or(&*p.address, |(h, _)| h);
                self.by_ip.get(ip)
            })
            .collect();
        (!urls.is_empty()).then(|| urls[n as usize % urls.len()].clone())
    }
}

/// Where the user load goes: one fixed portal, or the portals Consul lists.
#[derive(Clone)]
enum Door {
    Portal(String),
    Balanced(Balancer),
}

impl Door {
    fn pick(&self, n: u64) -> Result<String, String> {
        match self {
            Door::Portal(url) => Ok(url.clone()),
            Door::Balanced(balancer) => balancer
                .pick(n)
                .ok_or_else(|| "no passing portal to send to".to_owned()),
        }
    }
}

/// The users: portal pages (2 x 40/s) and grades through the portal's form (2 x 20/s) for at
/// most `time`, through `door`. Acknowledged grades are titled `{prefix}-{n}`.
fn user_loads(prefix: &str, door: Door, graded: &Acked, time: Duration) -> Vec<Load> {
    let http = client();
    let bound = |per_second: u64, workers: u64| per_second * workers * time.as_secs().max(1);
    let pages = {
        let (http, door) = (http.clone(), door.clone());
        Load::start("portal pages", 2, 40, bound(40, 2), time, move |n| {
            let (http, door) = (http.clone(), door.clone());
            async move { portal_page(&http, &door.pick(n)?, n).await }
        })
    };
    let grades = {
        let (graded, prefix) = (graded.clone(), prefix.to_owned());
        Load::start("portal grade forms", 2, 20, bound(20, 2), time, move |n| {
            let (http, door, graded) = (http.clone(), door.clone(), graded.clone());
            let title = format!("{prefix}-{n}");
            async move { portal_grade(&http, &door.pick(n)?, &title, n, &graded).await }
        })
    };
    vec![pages, grades]
}

/// Runs the chosen cluster scenarios (all when `chosen` is empty) on one cluster.
pub async fn run(chosen: &[u8]) -> Vec<Outcome> {
    let started = Instant::now();
    let cluster = Cluster::up("cluster").await;
    let mut outcomes = Vec::new();
    let mut up = Outcome::new(0, "cluster up: 3 servers, 3 hosts, PostgreSQL");
    match cluster.whole().await {
        Ok(_) => {
            up.elapsed = started.elapsed();
            up.figure(format!(
                "whole {:.1} s after `up -d` began (containers created in it)",
                up.elapsed.as_secs_f64()
            ));
            check_shape(&cluster, &mut up).await;
        }
        Err(err) => up.check(false, err),
    }
    let started = up.problems.is_empty();
    outcomes.push(up);
    if !started {
        return outcomes;
    }
    let all: Vec<u8> = (1..=6).collect();
    for &number in if chosen.is_empty() { &all } else { chosen } {
        eprintln!("faults: === cluster scenario {number} ===");
        let started = Instant::now();
        let mut outcome = match number {
            1 => leader_killed(&cluster).await,
            2 => host_away(&cluster, HostFault::CutOff).await,
            3 => host_away(&cluster, HostFault::Stopped).await,
            4 => quorum_lost(&cluster).await,
            5 => rolling_upgrade(&cluster).await,
            _ => database_restarted(&cluster).await,
        };
        outcome.elapsed = started.elapsed();
        eprintln!(
            "faults: === cluster scenario {number}: {} ===",
            outcome.verdict()
        );
        outcomes.push(outcome);
    }
    outcomes
}

/// How long the DNS of an agent may trail the catalogue the cluster's readiness was read from.
const DNS_SETTLE: Duration = Duration::from_secs(5);

/// What a user of the cluster checks first: every server and host in the cluster, DNS from two
/// different agents, both portals serving, and a grade added through one portal seen through the
/// other (one PostgreSQL database behind every grading instance).
async fn check_shape(cluster: &Cluster, outcome: &mut Outcome) {
    let peers = cluster
        .consul_get("/v1/status/peers")
        .await
        .and_then(|(_, v)| v.as_array().map(Vec::len));
    outcome.check(peers == Some(3), format!("Raft peers: {peers:?}, not 3"));
    for (port_var, agent) in [
        ("GRADEBOOK_CONSUL_DNS_PORT", "consul-ui"),
        ("GRADEBOOK_HOST1_DNS_PORT", "host-1"),
    ] {
        let port = cluster.stack.port(port_var).to_string();
        let dig = || async {
            let answer = tokio::process::Command::new("dig")
                .args([
                    "@127.0.0.1",
                    "-p",
                    &port,
                    "+short",
                    "grading.service.consul",
                    "SRV",
                ])
                .output()
                .await
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let records = answer.lines().filter(|l| l.contains("6100")).count();
            (answer, records)
        };
        // Consul's DNS answers from any server by default (stale reads allowed), and a follower
        // may trail the leader the cluster's readiness was read from by a moment: ask again for
        // a few seconds before calling the answer short.
        let asked = Instant::now();
        let (mut answer, mut records) = dig().await;
        while records != 3 && asked.elapsed() < DNS_SETTLE {
            tokio::time::sleep(Duration::from_millis(100)).await;
            (answer, records) = dig().await;
        }
        outcome.check(
            records == 3,
            format!("{agent}'s DNS gave {records} grading SRV records, not 3: {answer:?}"),
        );
        outcome.figure(format!("{agent}'s DNS: {records} grading SRV records"));
    }
    // The Consul UI, as an operator opens it from the machine: every server and host alive.
    let browser = Browser::start().await;
    browser
        .goto(&format!("{}/ui/dc1/nodes", cluster.stack.consul_url()))
        .await;
    let nodes = [
        SERVERS.as_slice(),
        &["consul-ui", "host-1", "host-2", "host-3"],
    ]
    .concat();
    // Consul 1.8's UI: a card a node, a link whose text starts with the node's name, under
    // "Healthy Nodes" (and "Unhealthy Nodes" when any is not).
    let names_of = |cards: &[String]| -> Vec<String> {
        cards
            .iter()
            .filter_map(|card| card.split_whitespace().next().map(str::to_owned))
            .collect()
    };
    let mut listed = Vec::new();
    let mut all_listed = false;
    for _ in 0..100 {
        listed = names_of(&browser.texts("a[href*='/nodes/']").await);
        let page = browser.page_source().await;
        all_listed = nodes.iter().all(|n| listed.iter().any(|l| l == n))
            && page.contains("Healthy Nodes")
            && !page.contains("Unhealthy Nodes");
        if all_listed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    outcome.check(
        all_listed,
        format!("the Consul UI's nodes page lists {listed:?}, not all of {nodes:?} as healthy"),
    );
    if all_listed {
        outcome.figure("the Consul UI lists the 3 servers and 4 agents as healthy");
    }
    browser
        .screenshot(&screenshot_path("cluster-consul-nodes.png"))
        .await;
    // Ends the session, so Chromium exits too: dropping the browser stops only ChromeDriver,
    // and each run left a Chromium behind.
    browser.quit().await;

    let portals = cluster.portal_urls();
    let title = format!("shape-{}", fastrand::u32(..));
    let http = client();
    // Consul whole is not yet every portal's watch current: one whose first queries met no
    // leader retries after its backoff, and answers 503 until then (seen once in CI: the grade
    // below failed with a 503). The wait is a figure, and bounded.
    let page_1 = format!("{}/students/1", portals[0]);
    let serving = cluster
        .time_until(PORTAL_SERVES_WITHIN, || async {
            let status = http.get(&page_1).send().await.map(|r| r.status().as_u16());
            status.is_ok_and(|status| status == 200)
        })
        .await;
    outcome.check(
        serving.is_some(),
        format!(
            "portal-1 did not serve {page_1} within {} s after the checks above",
            PORTAL_SERVES_WITHIN.as_secs()
        ),
    );
    if let Some(serving) = serving {
        outcome.figure(format!(
            "portal-1 serves a student page (waited {} for it after the checks above)",
            seconds(serving)
        ));
    }
    let added = portal_grade(&http, &portals[0], &title, 0, &Acked::default()).await;
    outcome.check(
        added.is_ok(),
        format!("a grade through portal-1: {added:?}"),
    );
    let page = http
        .get(format!("{}/students/1", portals[1]))
        .send()
        .await
        .map_err(|e| e.to_string());
    let seen = match page {
        Ok(response) => response.text().await.unwrap_or_default().contains(&title),
        Err(_) => false,
    };
    outcome.check(
        seen,
        "a grade added through portal-1 is not on portal-2's page",
    );
    if seen {
        outcome.figure("a grade added through portal-1 is on portal-2's page at once");
    }
}

/// Starts the scenario: the cluster whole, then a load for `time` through `door`.
async fn begin(
    cluster: &Cluster,
    outcome: &mut Outcome,
    prefix: &str,
    door: Door,
    time: Duration,
) -> Option<(Vec<Load>, Acked)> {
    if let Err(err) = cluster.whole().await {
        outcome.check(false, err);
        return None;
    }
    let graded = Acked::default();
    let loads = user_loads(prefix, door, &graded, time);
    Some((loads, graded))
}

/// Ends the scenario: the loads' tallies, and every acknowledged grade stored exactly once.
async fn end(cluster: &Cluster, outcome: &mut Outcome, loads: Vec<Load>, graded: &Acked) {
    let mut tallies = Vec::new();
    for load in loads {
        tallies.push(load.finish().await);
    }
    report_user_loads(outcome, &tallies);
    outcome.acked += graded.len() as u64;
    report_grades(outcome, &cluster.grading_url(), &graded.all()).await;
}

fn seconds(took: Duration) -> String {
    format!("{:.2} s", took.as_secs_f64())
}

async fn leader_killed(cluster: &Cluster) -> Outcome {
    let mut outcome = Outcome::new(1, "cluster: Consul leader killed");
    let door = Door::Balanced(cluster.balancer().await);
    let Some((loads, graded)) = begin(
        cluster,
        &mut outcome,
        "leader",
        door,
        Duration::from_secs(15),
    )
    .await
    else {
        return outcome;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let old = cluster.leader().await.unwrap_or_default();
    docker(&["kill", &cluster.container(&old).await]).await;
    let survivors: Vec<&str> = SERVERS.iter().copied().filter(|s| *s != old).collect();
    let elected = cluster
        .time_until(NEW_LEADER_WITHIN, || async {
            for server in &survivors {
                if cluster
                    .leader_seen_by(server)
                    .await
                    .is_some_and(|l| l != old)
                {
                    return true;
                }
            }
            false
        })
        .await;
    match elected {
        Some(took) => outcome.figure(format!(
            "{old} killed: a new leader after {}, as the servers see it",
            seconds(took)
        )),
        None => outcome.check(
            false,
            format!("no new leader within {} s", NEW_LEADER_WITHIN.as_secs()),
        ),
    }
    // A client agent can take longer: its calls may still go to the dead server until they
    // time out.
    let agent_view = cluster
        .time_until(Duration::from_secs(30), || async {
            cluster.leader().await.is_some_and(|l| l != old)
        })
        .await;
    outcome.figure(format!(
        "the UI agent answers with the new leader after {} more",
        agent_view.map_or("(more than 30 s)".to_owned(), seconds)
    ));
    cluster.stack.compose(&["start", &old]).await;
    end(cluster, &mut outcome, loads, &graded).await;
    match cluster.whole().await {
        Ok(took) => outcome.figure(format!("{old} back in the cluster after {}", seconds(took))),
        Err(err) => outcome.check(false, err),
    }
    outcome
}

/// How long until host-2's instances left every healthy set, and the check that they did in
/// time. `what` says what happened to the host.
async fn host_leaves(cluster: &Cluster, outcome: &mut Outcome, ip: &str, what: &str) {
    let left = cluster
        .time_until(HOST_LEAVES_WITHIN, || cluster.none_passing_at(ip))
        .await;
    match left {
        Some(took) => outcome.figure(format!(
            "host-2 {what}: its instances out of every healthy set after {}",
            seconds(took)
        )),
        None => outcome.check(
            false,
            format!(
                "host-2 {what}: its instances still passing after {} s",
                HOST_LEAVES_WITHIN.as_secs()
            ),
        ),
    }
}

/// How host-2 is taken away in scenarios 2 and 3.
#[derive(Clone, Copy)]
enum HostFault {
    /// `docker network disconnect` of its agent, whose network namespace its services share.
    CutOff,
    /// One `docker stop` of its agent and its services, as a machine that shuts down.
    Stopped,
}

impl HostFault {
    /// What happened to the host, and how it is back, as the figures say it.
    fn words(self) -> (&'static str, &'static str) {
        match self {
            HostFault::CutOff => ("cut off", "connected again"),
            HostFault::Stopped => ("stopped", "started again"),
        }
    }

    /// Takes host-2 away; returns once its instances are out of every healthy set (or the
    /// bound has passed), which `outcome` records.
    async fn take_away(self, cluster: &Cluster, outcome: &mut Outcome, ip: &str) {
        let what = self.words().0;
        match self {
            HostFault::CutOff => {
                let host = cluster.container("host-2").await;
                docker(&["network", "disconnect", &cluster.network, &host]).await;
                host_leaves(cluster, outcome, ip, what).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            HostFault::Stopped => {
                // They get SIGTERM together, as the processes of a machine that shuts down do.
                let mut ids = Vec::new();
                for service in HOST_2 {
                    ids.push(cluster.container(service).await);
                }
                let stop = tokio::spawn(async move {
                    let mut args = vec!["stop", "-t", "30"];
                    args.extend(ids.iter().map(String::as_str));
                    docker(&args).await;
                });
                host_leaves(cluster, outcome, ip, what).await;
                let _ = stop.await;
            }
        }
    }

    /// Brings host-2 back as it was.
    async fn bring_back(self, cluster: &Cluster, ip: &str) {
        match self {
            HostFault::CutOff => {
                // Back at the same address: the one its services advertised.
                let host = cluster.container("host-2").await;
                docker(&["network", "connect", "--ip", ip, &cluster.network, &host]).await;
            }
            HostFault::Stopped => {
                // The agent first: the services join its network namespace.
                for service in HOST_2 {
                    docker(&["start", &cluster.container(service).await]).await;
                }
            }
        }
    }
}

/// Scenarios 2 and 3: host-2 taken away under load through host-1's portal, then back.
async fn host_away(cluster: &Cluster, fault: HostFault) -> Outcome {
    let (mut outcome, prefix, time) = match fault {
        HostFault::CutOff => (
            Outcome::new(2, "cluster: host-2 cut off the network"),
            "cut",
            Duration::from_secs(40),
        ),
        HostFault::Stopped => (
            Outcome::new(3, "cluster: host-2 stopped whole"),
            "stop",
            Duration::from_secs(30),
        ),
    };
    let portal_1 = Door::Portal(cluster.portal_urls()[0].clone());
    let Some((loads, graded)) = begin(cluster, &mut outcome, prefix, portal_1, time).await else {
        return outcome;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ip = cluster.ip_of("host-2").await;
    fault.take_away(cluster, &mut outcome, &ip).await;
    let back = Instant::now();
    fault.bring_back(cluster, &ip).await;
    match cluster.whole().await {
        Ok(_) => outcome.figure(format!(
            "{}: every instance of host-2 passing after {}",
            fault.words().1,
            seconds(back.elapsed())
        )),
        Err(err) => outcome.check(false, err),
    }
    end(cluster, &mut outcome, loads, &graded).await;
    outcome
}

async fn quorum_lost(cluster: &Cluster) -> Outcome {
    let mut outcome = Outcome::new(4, "cluster: quorum lost (2 of 3 servers)");
    let door = Door::Balanced(cluster.balancer().await);
    let Some((loads, graded)) = begin(
        cluster,
        &mut outcome,
        "quorum",
        door,
        Duration::from_secs(30),
    )
    .await
    else {
        return outcome;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopped = ["consul-server-1", "consul-server-2"];
    let mut ids = Vec::new();
    for server in stopped {
        ids.push(cluster.container(server).await);
    }
    docker(&["stop", &ids[0], &ids[1]]).await;
    let lost = cluster
        .time_until(Duration::from_secs(15), || async {
            cluster.leader().await.is_none()
        })
        .await;
    outcome.figure(format!(
        "2 servers stopped: no leader after {}",
        lost.map_or("(still one)".to_owned(), seconds)
    ));
    // What still works without a leader, as an operator would try it.
    let consistent = cluster
        .consul_get("/v1/health/service/grading?passing")
        .await
        .map(|(s, _)| s);
    let stale = cluster
        .consul_get("/v1/health/service/grading?passing&stale")
        .await
        .map(|(status, v)| (status, v.as_array().map_or(0, Vec::len)));
    let kv_write = client()
        .put(cluster.consul("/v1/kv/gradebook-quorum-check"))
        .body("x")
        .send()
        .await
        .map(|r| r.status().as_u16());
    outcome.figure(format!(
        "without a leader: health query {consistent:?}, the same with ?stale {stale:?} \
         (status, instances), a KV write {kv_write:?}"
    ));
    tokio::time::sleep(Duration::from_secs(12)).await;
    let restarted = Instant::now();
    docker(&["start", &ids[0], &ids[1]]).await;
    match cluster
        .time_until(Duration::from_secs(30), || async {
            cluster.leader().await.is_some()
        })
        .await
    {
        Some(took) => outcome.figure(format!("servers started: a leader after {}", seconds(took))),
        None => outcome.check(false, "no leader 30 s after the servers started again"),
    }
    end(cluster, &mut outcome, loads, &graded).await;
    match cluster.whole().await {
        Ok(_) => outcome.figure(format!(
            "whole again {} after the servers started",
            seconds(restarted.elapsed())
        )),
        Err(err) => outcome.check(false, err),
    }
    outcome
}

async fn rolling_upgrade(cluster: &Cluster) -> Outcome {
    let mut outcome = Outcome::new(5, "cluster: rolling upgrade of every service");
    let door = Door::Balanced(cluster.balancer().await);
    let Some((loads, graded)) = begin(
        cluster,
        &mut outcome,
        "rolling",
        door,
        Duration::from_secs(180),
    )
    .await
    else {
        return outcome;
    };
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for (_, containers) in SERVICES {
        for container in containers.iter().copied() {
            let step = Instant::now();
            cluster
                .stack
                .compose(&[
                    "up",
                    "-d",
                    "--no-deps",
                    "--no-build",
                    "--force-recreate",
                    container,
                ])
                .await;
            if let Err(err) = cluster.whole().await {
                outcome.check(false, format!("after recreating {container}: {err}"));
                break;
            }
            slowest = slowest.max(step.elapsed());
        }
    }
    let tallies = stop_all(loads).await;
    outcome.figure(format!(
        "7 containers recreated one by one in {} (slowest step {})",
        seconds(started.elapsed()),
        seconds(slowest)
    ));
    report_user_loads(&mut outcome, &tallies);
    outcome.acked += graded.len() as u64;
    report_grades(&mut outcome, &cluster.grading_url(), &graded.all()).await;
    outcome
}

/// PostgreSQL away: grading must say so (503, a JSON error that names no host), come back by
/// itself, and lose no acknowledged grade. The portal's answers are counted, not judged: a page
/// needs grading, so it fails while the database is away.
async fn database_restarted(cluster: &Cluster) -> Outcome {
    let mut outcome = Outcome::new(6, "cluster: PostgreSQL stopped and started");
    if let Err(err) = cluster.whole().await {
        outcome.check(false, err);
        return outcome;
    }
    let graded = Acked::default();
    let http = client();
    let portal = cluster.portal_urls()[0].clone();
    for n in 0..20 {
        let title = format!("database-before-{n}");
        if let Err(err) = portal_grade(&http, &portal, &title, n, &graded).await {
            outcome.check(false, format!("before the stop: {err}"));
        }
    }
    let postgres = cluster.container("postgres").await;
    docker(&["stop", &postgres]).await;
    let stopped = Instant::now();
    let mut answers: HashMap<String, u64> = HashMap::new();
    let url = format!("{}/students/1", cluster.grading_url());
    while stopped.elapsed() < Duration::from_secs(8) {
        let answer = match http.get(&url).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                let json =
                    serde_json::from_str::<Value>(&body).is_ok_and(|v| v["error"].is_string());
                let leaks = body.contains("postgres") || body.contains("5432");
                format!(
                    "{status}{}{}",
                    if json { " json" } else { "" },
                    if leaks { " LEAKS" } else { "" }
                )
            }
            Err(err) => format!("no answer: {err}"),
        };
        *answers.entry(answer).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    outcome.figure(format!(
        "grading's answers while PostgreSQL was down: {answers:?}"
    ));
    outcome.check(
        answers.keys().all(|a| a == "503 json"),
        "while PostgreSQL was down, grading answered other than 503 with a JSON error",
    );
    docker(&["start", &postgres]).await;
    let restarted = Instant::now();
    let recovered = cluster
        .time_until(DATABASE_RECOVERY_WITHIN, || async {
            http.get(&url).send().await.is_ok_and(|r| r.status() == 200)
        })
        .await;
    match recovered {
        Some(took) => outcome.figure(format!(
            "grading answered 200 again {} after PostgreSQL started (down {})",
            seconds(took),
            seconds(restarted - stopped)
        )),
        None => outcome.check(
            false,
            format!(
                "grading not back {} s after PostgreSQL started",
                DATABASE_RECOVERY_WITHIN.as_secs()
            ),
        ),
    }
    for n in 0..20 {
        let title = format!("database-after-{n}");
        if let Err(err) = portal_grade(&http, &portal, &title, n, &graded).await {
            outcome.check(false, format!("after the restart: {err}"));
        }
    }
    outcome.acked += graded.len() as u64;
    report_grades(&mut outcome, &cluster.grading_url(), &graded.all()).await;
    outcome
}
