//! A real `consul agent -dev` per test, on its own free ports, optionally with ACLs enforced.

use crate::{
    POLL, exited_while_starting, free_ports, http_client, kill_and_reap, log_file, log_tail,
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long an agent may take to elect itself and list its own node.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Starts tried when a port turns out to be taken (new ports for `start`, a pause for `start_again`).
const BIND_ATTEMPTS: u32 = 10;
/// What a 1.8 agent logs when one of its ports is taken.
const PORT_TAKEN: &str = "address already in use";
/// Every port a 1.8 dev agent listens on, in the order of `ConsulAgent::ports`: all must be set
/// to run several agents side by side.
const PORT_NAMES: [&str; 6] = ["http", "dns", "serf_lan", "serf_wan", "server", "grpc"];
/// Makes node names unique among the agents of one test process.
static AGENTS: AtomicUsize = AtomicUsize::new(0);

/// A real `consul agent -dev` on its own free ports with its log in a tempdir, so tests can run
/// side by side; killed when dropped.
#[derive(Debug)]
pub struct ConsulAgent {
    child: Option<Child>,
    ports: Vec<u16>,
    node_name: String,
    dir: TempDir,
    log: PathBuf,
    client: reqwest::Client,
    /// The ACL master token when ACLs are enforced: the harness sends it on each of its calls.
    master_token: Option<String>,
    /// ACLs enforced without a master token, to be bootstrapped by the test (see
    /// `start_with_acl_to_bootstrap`).
    acl_to_bootstrap: bool,
    /// The token the harness sends instead of the master token, once the test gives one.
    harness_token: Option<String>,
}

/// One passing instance of a service as Consul's health endpoint reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// The service ID the instance registered with.
    pub id: String,
    /// `"host:port"`, the service's address (the node's when the service gave none).
    pub address: String,
    /// The registration's tags.
    pub tags: Vec<String>,
    /// The registration's metadata.
    pub meta: HashMap<String, String>,
}

impl Instance {
    /// Reads an entry of `/v1/health/service/<name>`.
    fn from_health_entry(entry: &Value) -> Instance {
        let service = &entry["Service"];
        let host = service["Address"].as_str().filter(|a| !a.is_empty());
        let host = host
            .or(entry["Node"]["Address"].as_str())
            .unwrap_or_default();
        Instance {
            id: service["ID"].as_str().unwrap_or_default().to_owned(),
            address: format!("{host}:{}", service["Port"]),
            tags: serde_json::from_value(service["Tags"].clone()).unwrap_or_default(),
            meta: serde_json::from_value(service["Meta"].clone()).unwrap_or_default(),
        }
    }
}

impl ConsulAgent {
    /// Starts an agent and waits (up to 30 s) until it has a leader and its node is in the
    /// catalogue, so service registrations succeed at once.
    pub async fn start() -> ConsulAgent {
        Self::start_with(None).await
    }

    /// Starts an agent that enforces ACLs with `default_policy` `deny`, waiting as `start` does.
    /// `master_token` is both the master and the agent token: anything without it (or with
    /// another token) is refused or sees an empty catalogue, while the harness's own calls
    /// (`passing_instances`, `agent_services`, `check_status`, `register`, ...) send it as
    /// `X-Consul-Token`. `start_again` keeps the ACLs and the token.
    pub async fn start_with_acl(master_token: &str) -> ConsulAgent {
        Self::start_with(Some(master_token.to_owned())).await
    }

    /// Starts an agent that enforces ACLs with `default_policy` `deny` but has no master token,
    /// as an operator's agent before `consul acl bootstrap`; waits only for a leader, since
    /// without a token nothing else can be read. The harness's calls carry no token until
    /// `use_token` gives one (e.g. the token bootstrapping returned). `start_again` starts it
    /// unbootstrapped again.
    pub async fn start_with_acl_to_bootstrap() -> ConsulAgent {
        Self::start_configured(None, true).await
    }

    /// Makes the harness's own calls (`passing_instances`, `agent_services`, ...) carry `token`.
    pub fn use_token(&mut self, token: &str) {
        self.harness_token = Some(token.to_owned());
    }

    async fn start_with(master_token: Option<String>) -> ConsulAgent {
        Self::start_configured(master_token, false).await
    }

    async fn start_configured(master_token: Option<String>, acl_to_bootstrap: bool) -> ConsulAgent {
        let dir = tempfile::Builder::new()
            .prefix("testkit-consul-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a tempdir for a consul agent: {e}"));
        let n = AGENTS.fetch_add(1, Ordering::Relaxed);
        let mut agent = ConsulAgent {
            child: None,
            ports: free_ports(PORT_NAMES.len()),
            node_name: format!("testkit-{}-{n}", std::process::id()),
            log: dir.path().join("consul.log"),
            dir,
            client: http_client(),
            master_token,
            acl_to_bootstrap,
            harness_token: None,
        };
        if let Err(e) = agent.launch_retrying(true).await {
            panic!("consul agent {} did not start: {e}", agent.node_name);
        }
        agent
    }

    /// `"http://127.0.0.1:<http port>"`: what services get as `CONSUL_HTTP_ADDR`.
    pub fn http_addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[0])
    }

    /// The agent's HTTP port, e.g. to occupy it while the agent is stopped.
    pub fn http_port(&self) -> u16 {
        self.ports[0]
    }

    /// The agent's DNS port (UDP and TCP on 127.0.0.1), for tests of DNS discovery.
    pub fn dns_port(&self) -> u16 {
        self.ports[1]
    }

    /// What `dig +short` prints for `name`'s `record_type` records (`"SRV"`, `"A"`) on the
    /// agent's DNS, one answer per line: what a user of Consul's DNS interface sees. Needs
    /// `dig` (dnsutils); one try, two seconds at most.
    pub fn dig(&self, name: &str, record_type: &str) -> String {
        let port = format!("-p{}", self.dns_port());
        let output = std::process::Command::new("dig")
            .args(["@127.0.0.1", &port, "+short", "+time=2", "+tries=1"])
            .args([name, record_type])
            .output()
            .unwrap_or_else(|e| panic!("cannot run dig (install dnsutils): {e}"));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The master token if the agent enforces ACLs (see `start_with_acl`), else `None`.
    pub fn master_token(&self) -> Option<&str> {
        self.master_token.as_deref()
    }

    /// The agent's node name, unique per agent, as it appears in the catalogue.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The agent's output so far (its current run), for failure messages.
    pub fn log(&self) -> String {
        crate::read_log(&self.log)
    }

    /// Kills the agent (SIGKILL) and waits for it to exit: an outage for services using it.
    /// The dev agent keeps nothing on disk, so all registrations are lost.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child).await;
        }
    }

    /// Starts the agent again on the same ports with a fresh empty state, waiting as `start`
    /// does; retries a few times while the OS still holds one of the ports.
    pub async fn start_again(&mut self) {
        self.stop().await;
        if self.acl_to_bootstrap {
            // A dev agent forgets its ACLs with the rest: a token bootstrapped before is unknown.
            self.harness_token = None;
        }
        if let Err(e) = self.launch_retrying(false).await {
            panic!("consul agent {} did not start again: {e}", self.node_name);
        }
    }

    /// The instances of `service` whose checks all pass (`/v1/health/service/<service>?passing`):
    /// what a client doing discovery would be offered.
    pub async fn passing_instances(&self, service: &str) -> Vec<Instance> {
        let entries: Vec<Value> = self
            .get(&format!("/v1/health/service/{service}?passing"))
            .await;
        entries.iter().map(Instance::from_health_entry).collect()
    }

    /// The agent's registered services (`/v1/agent/services`) keyed by service ID, to check what
    /// a service registered about itself.
    pub async fn agent_services(&self) -> Map<String, Value> {
        self.get("/v1/agent/services").await
    }

    /// The status of the checks of service `service_id` (`/v1/agent/checks`): `"passing"`,
    /// `"warning"` or `"critical"`, the worst one if several; `None` if it has no check.
    pub async fn check_status(&self, service_id: &str) -> Option<String> {
        let checks: Map<String, Value> = self.get("/v1/agent/checks").await;
        let severity = |status: &str| {
            ["passing", "warning", "critical"]
                .iter()
                .position(|s| *s == status)
        };
        checks
            .values()
            .filter(|check| check["ServiceID"] == service_id)
            .filter_map(|check| check["Status"].as_str())
            .max_by_key(|status| severity(status).unwrap_or(usize::MAX))
            .map(str::to_owned)
    }

    /// Registers a service with the agent (`PUT /v1/agent/service/register`), e.g. a fake peer
    /// instance for the service under test to discover.
    pub async fn register(&self, registration: &Value) {
        let url = format!("{}/v1/agent/service/register", self.http_addr());
        let request = self.with_token(self.client.put(&url).json(registration));
        let response = request.send().await;
        match response.map(|r| r.error_for_status()) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) | Err(e) => panic!("PUT {url} {registration}: {e}"),
        }
    }

    /// Deregisters the service instance `id` (`PUT /v1/agent/service/deregister/ID`).
    pub async fn deregister(&self, id: &str) {
        let url = format!("{}/v1/agent/service/deregister/{id}", self.http_addr());
        let response = self.with_token(self.client.put(&url)).send().await;
        match response.map(|r| r.error_for_status()) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) | Err(e) => panic!("PUT {url}: {e}"),
        }
    }

    /// Stores `value` under `key` in the KV store (`PUT /v1/kv/KEY`), as `consul kv put` does.
    pub async fn kv_put(&self, key: &str, value: impl Into<reqwest::Body>) {
        let url = format!("{}/v1/kv/{key}", self.http_addr());
        let response = self
            .with_token(self.client.put(&url).body(value))
            .send()
            .await;
        match response.map(|r| r.error_for_status()) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) | Err(e) => panic!("PUT {url}: {e}"),
        }
    }

    /// Deletes `key` from the KV store (`DELETE /v1/kv/KEY`), as `consul kv delete` does.
    pub async fn kv_delete(&self, key: &str) {
        let url = format!("{}/v1/kv/{key}", self.http_addr());
        let response = self.with_token(self.client.delete(&url)).send().await;
        match response.map(|r| r.error_for_status()) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) | Err(e) => panic!("DELETE {url}: {e}"),
        }
    }

    /// GETs `path` from the agent as JSON; a failure fails the test.
    async fn get<T: DeserializeOwned>(&self, path: &str) -> T {
        self.try_get(path)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", log_tail(&self.log)))
    }

    /// GETs `path` from the agent as JSON, for polling where failures are expected.
    async fn try_get<T: DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        let url = format!("{}{path}", self.http_addr());
        let response = self
            .with_token(self.client.get(&url))
            .send()
            .await
            .and_then(|r| r.error_for_status());
        let response = response.map_err(|e| format!("GET {url}: {e}"))?;
        response
            .json()
            .await
            .map_err(|e| format!("GET {url}: bad JSON: {e}"))
    }

    /// Adds `X-Consul-Token` with the token given to `use_token`, else the master token.
    fn with_token(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.harness_token.as_ref().or(self.master_token.as_ref()) {
            Some(token) => request.header("X-Consul-Token", token),
            None => request,
        }
    }

    /// Launches the agent, trying again while a port is taken: on new ports if `new_ports`,
    /// else on the same ones after a pause. The error tells why and quotes the log.
    async fn launch_retrying(&mut self, new_ports: bool) -> Result<(), String> {
        let mut attempt = 1;
        loop {
            match self.launch().await {
                Err(e) if e.contains(PORT_TAKEN) && attempt < BIND_ATTEMPTS => {
                    eprintln!("consul agent {}: a port is taken, retrying", self.node_name);
                    if new_ports {
                        self.ports = free_ports(PORT_NAMES.len());
                    } else {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// Writes the config, spawns the agent and waits until it is usable.
    async fn launch(&mut self) -> Result<(), String> {
        let ports: Map<String, Value> = PORT_NAMES
            .iter()
            .zip(&self.ports)
            .map(|(name, port)| (name.to_string(), json!(port)))
            .collect();
        let mut config = json!({
            "node_name": self.node_name,
            "client_addr": "127.0.0.1",
            "bind_addr": "127.0.0.1",
            "disable_update_check": true,
            "log_level": "warn",
            "dns_config": { "allow_stale": true },
            "ports": ports,
        });
        if let Some(token) = &self.master_token {
            // Consul 1.8 names the bootstrap tokens "master" and "agent" (later versions:
            // "initial_management"). The agent token lets the agent register its own node.
            config["acl"] = json!({
                "enabled": true,
                "default_policy": "deny",
                "down_policy": "extend-cache",
                "enable_token_persistence": false,
                "tokens": { "master": token, "agent": token },
            });
        } else if self.acl_to_bootstrap {
            config["acl"] = json!({
                "enabled": true,
                "default_policy": "deny",
                "down_policy": "extend-cache",
                "enable_token_persistence": false,
            });
        }
        let config_path = self.dir.path().join("agent.json");
        std::fs::write(&config_path, config.to_string())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config_path.display()));
        let (log, stdout, stderr) = log_file(self.dir.path(), "consul.log");
        self.log = log;
        let binary = crate::consul_binary();
        let child = Command::new(&binary)
            .args(["agent", "-dev", "-config-file"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        self.child = Some(child);

        let start = Instant::now();
        loop {
            if let Some(why) = exited_while_starting(&mut self.child, &self.log) {
                return Err(why);
            }
            if self.is_ready().await {
                let ms = start.elapsed().as_millis();
                eprintln!("consul agent {}: ready after {ms} ms", self.node_name);
                return Ok(());
            }
            if start.elapsed() >= READY_TIMEOUT {
                self.stop().await;
                return Err(format!(
                    "not usable after {READY_TIMEOUT:?}\n{}",
                    log_tail(&self.log)
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether the agent has a leader and lists its own node, i.e. accepts registrations. With
    /// ACLs the node lookup carries the master token: anonymously it is `null` under `deny`. An
    /// agent still to bootstrap needs only its leader: nothing else can be read yet.
    async fn is_ready(&self) -> bool {
        let leader: Result<String, _> = self.try_get("/v1/status/leader").await;
        if !leader.is_ok_and(|l| !l.is_empty()) {
            return false;
        }
        if self.acl_to_bootstrap && self.harness_token.is_none() {
            return true;
        }
        let node: Result<Value, _> = self
            .try_get(&format!("/v1/catalog/node/{}", self.node_name))
            .await;
        node.is_ok_and(|n| !n.is_null())
    }
}

impl Drop for ConsulAgent {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "5d2a8f0e-7c3b-4e61-9a0d-2b8c4f6e1a37";

    /// `demo-1`, an instance without checks.
    fn demo() -> Value {
        json!({"Name": "demo", "ID": "demo-1", "Port": 1234, "Address": "127.0.0.1"})
    }

    /// Status and body of an anonymous call (no `X-Consul-Token`).
    async fn anonymous(request: reqwest::RequestBuilder) -> (u16, String) {
        let response = request.send().await.expect("the agent answers");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// Anonymous registration is refused, and anonymous reads see nothing of what exists. (Right
    /// after the leader creates the master token, the anonymous token may not exist yet: the
    /// agent then answers 403 "ACL not found" instead of "Permission denied" and `null`.)
    async fn assert_enforced(agent: &ConsulAgent) {
        let client = http_client();
        let url = format!("{}/v1/agent/service/register", agent.http_addr());
        let (status, body) = anonymous(client.put(&url).json(&demo())).await;
        assert_eq!(status, 403, "anonymous registration: {body}");

        let url = format!(
            "{}/v1/catalog/node/{}",
            agent.http_addr(),
            agent.node_name()
        );
        let (status, body) = anonymous(client.get(&url)).await;
        assert!(
            (status, body.trim()) == (200, "null") || status == 403,
            "anonymous node lookup: {status} {body}"
        );
    }

    #[tokio::test]
    async fn an_acl_agent_refuses_anonymous_calls_but_not_the_harness_even_after_a_restart() {
        let mut agent = ConsulAgent::start_with_acl(TOKEN).await;
        assert_eq!(agent.master_token(), Some(TOKEN));
        assert_enforced(&agent).await;

        agent.register(&demo()).await;
        assert_eq!(agent.passing_instances("demo").await.len(), 1);
        assert!(agent.agent_services().await.contains_key("demo-1"));
        let url = format!("{}/v1/health/service/demo?passing", agent.http_addr());
        let (status, body) = anonymous(http_client().get(&url)).await;
        assert_eq!(status, 200, "{body}");
        let anonymous_view: Vec<Value> = serde_json::from_str(&body).expect("a JSON list");
        assert!(anonymous_view.is_empty(), "deny hides demo: {body}");

        agent.start_again().await;
        assert_enforced(&agent).await;
        assert!(agent.agent_services().await.is_empty());
        agent.register(&demo()).await;
        assert_eq!(agent.passing_instances("demo").await.len(), 1);
    }

    #[tokio::test]
    async fn an_agent_to_bootstrap_refuses_anonymous_calls_and_serves_the_harness_once_bootstrapped()
     {
        let mut agent = ConsulAgent::start_with_acl_to_bootstrap().await;
        assert_eq!(agent.master_token(), None);
        let url = format!("{}/v1/agent/service/register", agent.http_addr());
        let (status, body) = anonymous(http_client().put(&url).json(&demo())).await;
        assert_eq!(status, 403, "anonymous registration: {body}");

        let url = format!("{}/v1/acl/bootstrap", agent.http_addr());
        let (status, body) = anonymous(http_client().put(&url)).await;
        assert_eq!(status, 200, "{body}");
        let bootstrapped: Value = serde_json::from_str(&body).expect("a JSON token");
        agent.use_token(bootstrapped["SecretID"].as_str().expect("a SecretID"));
        agent.register(&demo()).await;
        assert_eq!(agent.passing_instances("demo").await.len(), 1);

        agent.start_again().await;
        let (status, body) = anonymous(http_client().put(&url)).await;
        assert_eq!(status, 200, "bootstrapped again after a restart: {body}");
    }

    #[tokio::test]
    async fn a_plain_agent_has_no_token_and_no_acls() {
        let agent = ConsulAgent::start().await;
        assert_eq!(agent.master_token(), None);
        let url = format!("{}/v1/agent/service/register", agent.http_addr());
        let (status, body) = anonymous(http_client().put(&url).json(&demo())).await;
        assert_eq!(status, 200, "{body}");
    }
}
