//! The repository's own compose files on the real Docker engine: a [`Stack`] is one compose
//! project (docker-compose.yml, or docker-compose.cluster.yml), with every host port chosen free
//! so that stacks do not collide, run with the images `scripts/images.sh` built
//! (`up --no-build`). Everything the tests send from the host goes to the ports the stack
//! publishes on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use testkit::free_ports;

/// How long a stack may take to have every service passing in Consul, from `up`.
pub const STARTUP: Duration = Duration::from_secs(60);

/// The host ports docker-compose.yml publishes, by the variable that sets each.
const SINGLE_HOST_PORTS: [&str; 5] = [
    "GRADEBOOK_CONSUL_PORT",
    "GRADEBOOK_CONSUL_DNS_PORT",
    "GRADEBOOK_LOG_PORT",
    "GRADEBOOK_PORTAL_PORT",
    "GRADEBOOK_PROMETHEUS_PORT",
];

/// One compose project made from one of the compose files; taken down with its volumes when
/// dropped.
pub struct Stack {
    /// The compose program and its first arguments (`docker compose` or `docker-compose`).
    program: Vec<String>,
    file: &'static str,
    project: String,
    env: Vec<(&'static str, String)>,
}

/// The compose program: `$COMPOSE` if set (e.g. "docker compose"), else `docker compose` (v2)
/// where the Docker CLI has it, else `docker-compose` (v1).
fn compose_program() -> Vec<String> {
    if let Ok(program) = std::env::var("COMPOSE")
        && !program.trim().is_empty()
    {
        return program.split_whitespace().map(str::to_owned).collect();
    }
    let v2 = std::process::Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if v2 {
        vec!["docker".into(), "compose".into()]
    } else {
        vec!["docker-compose".into()]
    }
}

/// The repository root, where docker-compose.yml is.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where the README's pictures come from: `$GRADEBOOK_SCREENSHOTS`, else target/screenshots.
pub fn screenshot_path(name: &str) -> PathBuf {
    std::env::var_os("GRADEBOOK_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/screenshots"))
        .join(name)
}

/// Fails the test unless a Docker engine answers: these tests never skip silently.
pub fn require_engine() {
    let info = std::process::Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match info {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "no Docker engine answers `docker info`: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("no docker CLI: {e}"),
    }
}

/// Runs a command to completion; panics with its output when it fails.
async fn run(command: &mut tokio::process::Command, what: &str) -> String {
    let Output {
        status,
        stdout,
        stderr,
    } = command
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    assert!(
        status.success(),
        "{what} failed ({status}):\n{stdout}\n{}",
        String::from_utf8_lossy(&stderr)
    );
    stdout
}

/// `docker ARGS`, its standard output.
pub async fn docker(args: &[&str]) -> String {
    let mut command = tokio::process::Command::new("docker");
    command.args(args);
    run(&mut command, &format!("docker {}", args.join(" "))).await
}

impl Stack {
    /// `up -d --no-build` of docker-compose.yml as project `gradebook-test-NAME`, with `env`
    /// added to the compose variables (e.g. RUST_LOG); any leftover of a previous run of the same
    /// project is removed first.
    pub async fn up(name: &str, env: &[(&'static str, &str)]) -> Stack {
        Stack::up_file("docker-compose.yml", name, &SINGLE_HOST_PORTS, env).await
    }

    /// `up -d --no-build` of the compose file `file` as project `gradebook-test-NAME`, each of
    /// the host-port variables `ports` set to a free port, and `env` added to the compose
    /// variables.
    pub async fn up_file(
        file: &'static str,
        name: &str,
        ports: &[&'static str],
        env: &[(&'static str, &str)],
    ) -> Stack {
        require_engine();
        let mut stack = Stack {
            program: compose_program(),
            file,
            project: format!("gradebook-test-{name}"),
            env: env.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        };
        stack.env.extend(
            ports
                .iter()
                .zip(free_ports(ports.len()))
                .map(|(var, port)| (*var, port.to_string())),
        );
        stack.down_with_volumes_blocking();
        stack.compose(&["up", "-d", "--no-build"]).await;
        stack
    }

    /// The host port that the variable `var` set (a port variable given to [`Stack::up_file`]).
    pub fn port(&self, var: &str) -> u16 {
        self.env
            .iter()
            .find(|(k, _)| *k == var)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("{var} is not a port of this stack"))
    }

    /// The compose project's name (`gradebook-test-NAME`).
    pub fn project(&self) -> &str {
        &self.project
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.program[0]);
        command
            .args(&self.program[1..])
            .args(["-f", self.file, "-p", &self.project])
            .args(args)
            .current_dir(repo_root())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true);
        command
    }

    /// `compose -p PROJECT ARGS` in the repository root, its standard output.
    pub async fn compose(&self, args: &[&str]) -> String {
        let what = format!("compose -p {} {}", self.project, args.join(" "));
        run(&mut self.command(args), &what).await
    }

    /// The IDs of the containers of one compose service (running or stopped).
    pub async fn containers(&self, service: &str) -> Vec<String> {
        self.compose(&["ps", "-a", "-q", service])
            .await
            .lines()
            .map(str::to_owned)
            .filter(|id| !id.is_empty())
            .collect()
    }

    /// The address of a container on the project's network.
    pub async fn container_ip(&self, id: &str) -> String {
        docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            id,
        ])
        .await
        .trim()
        .to_owned()
    }

    /// A container's exit code and whether it still runs.
    pub async fn state(&self, id: &str) -> (bool, i64) {
        let out = docker(&[
            "inspect",
            "-f",
            "{{.State.Running}} {{.State.ExitCode}}",
            id,
        ])
        .await;
        let mut parts = out.split_whitespace();
        let running = parts.next() == Some("true");
        let code = parts.next().and_then(|c| c.parse().ok()).unwrap_or(-1);
        (running, code)
    }

    /// A container's output so far.
    pub async fn logs(&self, id: &str) -> String {
        let out = tokio::process::Command::new("docker")
            .args(["logs", id])
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run docker logs: {e}"));
        // The services write to stderr; docker logs hands both streams back separately.
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The Consul server's HTTP API and UI, as published on the host.
    pub fn consul_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port("GRADEBOOK_CONSUL_PORT"))
    }

    /// The host port of the Consul server's DNS interface (TCP and UDP).
    pub fn dns_port(&self) -> u16 {
        self.port("GRADEBOOK_CONSUL_DNS_PORT")
    }

    /// The log service, as published on the host.
    pub fn log_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port("GRADEBOOK_LOG_PORT"))
    }

    /// The portal, as published on the host.
    pub fn portal_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port("GRADEBOOK_PORTAL_PORT"))
    }

    /// Prometheus's UI and API, as published on the host.
    pub fn prometheus_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.port("GRADEBOOK_PROMETHEUS_PORT")
        )
    }

    /// Grading instance `index` (from 1), through the host port Docker chose for it.
    pub async fn grading_url(&self, index: usize) -> String {
        let index = format!("--index={index}");
        let published = self.compose(&["port", &index, "grading", "6100"]).await;
        format!("http://{}", published.trim())
    }

    /// The instances of `service` passing their checks, as `address:port`, from the Consul
    /// server's health API; `None` while it does not answer.
    pub async fn passing(&self, service: &str) -> Option<Vec<String>> {
        let entries = self
            .consul_list(&format!("/v1/health/service/{service}?passing"))
            .await?;
        let mut addresses: Vec<String> = entries
            .iter()
            .map(|e| {
                let address = e["Service"]["Address"].as_str().unwrap_or("?");
                format!("{address}:{}", e["Service"]["Port"])
            })
            .collect();
        addresses.sort();
        Some(addresses)
    }

    /// The instances of `service` in the catalogue, passing or not.
    pub async fn registered(&self, service: &str) -> Option<usize> {
        let entries = self
            .consul_list(&format!("/v1/catalog/service/{service}"))
            .await?;
        Some(entries.len())
    }

    /// A JSON list from the Consul server's API; `None` while it does not answer.
    pub async fn consul_list(&self, path: &str) -> Option<Vec<Value>> {
        testkit::http_client()
            .get(format!("{}{path}", self.consul_url()))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    /// `down -v`: containers, network and volumes, whatever state they are in. Blocking, so that
    /// `Drop` can use it too.
    fn down_with_volumes_blocking(&self) {
        let _ = std::process::Command::new(&self.program[0])
            .args(&self.program[1..])
            .args([
                "-f",
                self.file,
                "-p",
                &self.project,
                "down",
                "-v",
                "--remove-orphans",
                "-t",
                "5",
            ])
            .current_dir(repo_root())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.down_with_volumes_blocking();
    }
}
