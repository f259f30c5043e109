//! Test support for gradebook services: a real Consul dev agent (optionally enforcing ACLs, see
//! [`ConsulAgent::start_with_acl`]), a real PostgreSQL server ([`Postgres`]) and the real service
//! binaries, each on free ports with its
//! output captured in a log file, so integration tests exercise the same code paths as
//! production and fail with the evidence in the message.

#![warn(missing_docs)]

mod app;
mod browser;
mod consul;
pub mod metrics;
pub mod misbehaving;
mod portal_form;
mod postgres;
mod process;

pub use app::{RunningApp, Shutdown};
pub use browser::{Browser, Element};
pub use consul::{ConsulAgent, Instance};
pub use metrics::Scrape;
pub use misbehaving::{MisbehavingServer, Misbehaviour};
pub use portal_form::FormToken;
pub use postgres::Postgres;
pub use process::ServiceProcess;

use std::fs::File;
use std::future::Future;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// How often waiting loops look again: short, as everything under test runs on loopback.
const POLL: Duration = Duration::from_millis(10);
/// Lines of a log file quoted in a failure message.
const TAIL_LINES: usize = 60;

/// Path of a `consul` binary, so tests run against the real agent: `$CONSUL_BIN` if set, else
/// `consul` on `PATH`, else the one `scripts/install-consul.sh` unpacks into `tools/consul/`.
pub fn consul_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("CONSUL_BIN").filter(|bin| !bin.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "CONSUL_BIN={} is not a file; no consul binary: run scripts/install-consul.sh",
            bin.display()
        );
        return bin;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&path)
        .map(|dir| dir.join("consul"))
        .find(|c| c.is_file());
    let unpacked = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/consul/usr/bin/consul");
    on_path
        .or_else(|| unpacked.is_file().then_some(unpacked))
        .unwrap_or_else(|| panic!("no consul binary: run scripts/install-consul.sh"))
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a server the test is about to start
/// (another process may still take it in between).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct ports free for both TCP and UDP a moment ago: all are held while choosing, so
/// they differ, and UDP matters for Consul's DNS and gossip ports.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n * 20 {
        if held.len() == n {
            break;
        }
        let tcp = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("cannot bind a TCP port on 127.0.0.1: {e}"));
        let port = tcp
            .local_addr()
            .unwrap_or_else(|e| panic!("cannot read the port of a bound TCP socket: {e}"))
            .port();
        if let Ok(udp) = UdpSocket::bind(("127.0.0.1", port)) {
            held.push((port, tcp, udp));
        }
    }
    assert_eq!(
        held.len(),
        n,
        "found only {} of {n} ports free for both TCP and UDP",
        held.len()
    );
    held.into_iter().map(|(port, ..)| port).collect()
}

/// Path of a binary built from this workspace (e.g. `"log-service"`), found next to the running
/// test executable (`target/<profile>/deps/xxx`), so tests run exactly what cargo built.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe()
        .unwrap_or_else(|e| panic!("cannot locate the running test executable: {e}"));
    let mut dir = exe
        .parent()
        .unwrap_or_else(|| panic!("{} has no parent", exe.display()));
    if dir.file_name().is_some_and(|d| d == "deps") {
        dir = dir.parent().unwrap_or(dir);
    }
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "binary {name} not built: run `cargo build --workspace --bins` first (looked for {})",
        bin.display()
    );
    bin
}

/// Polls `check` every 10 ms until it returns `Some(value)`, for conditions that become true
/// asynchronously; panics naming `what` if `timeout` passes first. Prints how long it took.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        // A check that hangs must not outlive the timeout either.
        let left = timeout.saturating_sub(start.elapsed());
        if let Ok(Some(value)) = tokio::time::timeout(left, check()).await {
            eprintln!("{what}: after {} ms", start.elapsed().as_millis());
            return value;
        }
        if start.elapsed() >= timeout {
            panic!("{what}: still not so after {} ms", timeout.as_millis());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// An HTTP client for loopback agents and services: no proxy (one from the environment would
/// swallow requests to 127.0.0.1) and a timeout, so a hung server fails the test instead of hanging it.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_else(|e| panic!("cannot build an HTTP client: {e}"))
}

/// `GET url`, checking it answers 200, and its body as JSON; panics naming the URL otherwise.
pub async fn get_json(url: &str) -> serde_json::Value {
    let response = http_client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), reqwest::StatusCode::OK, "GET {url}");
    response
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: bad JSON: {e}"))
}

/// `GET url`, checking it answers 200 with a JSON array, and its items.
pub async fn get_json_list(url: &str) -> Vec<serde_json::Value> {
    match get_json(url).await {
        serde_json::Value::Array(items) => items,
        other => panic!("GET {url}: not a JSON array: {other}"),
    }
}

/// POSTs `body` as JSON, checking it answers 201, and returns the `Location` and the body.
pub async fn post_created(url: &str, body: &serde_json::Value) -> (String, serde_json::Value) {
    let response = http_client()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    assert_eq!(
        response.status(),
        reqwest::StatusCode::CREATED,
        "POST {url}"
    );
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .unwrap_or_else(|| panic!("POST {url}: 201 without a Location"))
        .to_owned();
    let body = response
        .json()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: bad JSON: {e}"));
    (location, body)
}

/// An HTTP client like [`http_client`] that shows redirects instead of following them, as
/// tests of a web app check its 303s; its timeout is longer, for pages over several services.
pub fn redirect_showing_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|e| panic!("cannot build an HTTP client: {e}"))
}

/// Asserts that `HEAD url` answers as `GET url` does: same status and headers (but the date,
/// and the values that are fresh per answer: a cookie's, the portal's CSRF token, and the ids
/// of `traceparent`, a new trace per request), and no body.
pub async fn assert_head_answers_as_get(url: &str) {
    let client = http_client();
    let get = client.get(url).send().await.unwrap();
    let head = client.head(url).send().await.unwrap();
    let headers = |response: &reqwest::Response| -> Vec<(String, String)> {
        let mut headers: Vec<_> = response
            .headers()
            .iter()
            .filter(|(name, _)| *name != "date")
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                let value = match name.as_str() {
                    // `name=value; attributes`: the name and the attributes must match.
                    "set-cookie" => match value.split_once(';') {
                        Some((pair, attributes)) => {
                            let name = pair.split('=').next().unwrap_or_default();
                            format!("{name}=…;{attributes}")
                        }
                        None => value,
                    },
                    // Only its version: the ids are new on every request without one.
                    "traceparent" => format!("{}-…", value.split('-').next().unwrap_or_default()),
                    _ => value,
                };
                (name.to_string(), value)
            })
            .collect();
        headers.sort();
        headers
    };
    assert_eq!(head.status(), get.status(), "HEAD {url}");
    assert_eq!(headers(&head), headers(&get), "HEAD {url}");
    assert!(
        !get.bytes().await.unwrap().is_empty(),
        "GET {url} has a body"
    );
    assert!(
        head.bytes().await.unwrap().is_empty(),
        "HEAD {url} has none"
    );
}

/// Creates (truncating) the log file `dir/name` and returns its path with handles for a child's
/// stdout and stderr, so output lands in the file and not in the test's own output.
fn log_file(dir: &Path, name: &str) -> (PathBuf, Stdio, Stdio) {
    let path = dir.join(name);
    let file = File::create(&path)
        .unwrap_or_else(|e| panic!("cannot create log file {}: {e}", path.display()));
    let second = file
        .try_clone()
        .unwrap_or_else(|e| panic!("cannot duplicate log file {}: {e}", path.display()));
    (path, Stdio::from(file), Stdio::from(second))
}

/// The whole log file as text (empty if unreadable), for assertions on a process's output.
fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last lines of a log file, quoted in failure messages.
fn log_tail(path: &Path) -> String {
    let text = read_log(path);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    format!(
        "--- last lines of {} ---\n{tail}\n--- end ---",
        path.display()
    )
}

/// If the server started in `child` has already exited, why (with its log's last lines); the
/// child is then forgotten. For the start-up loops of the servers the tests run.
fn exited_while_starting(child: &mut Option<Child>, log: &Path) -> Option<String> {
    let status = child.as_mut().and_then(|c| c.try_wait().ok().flatten())?;
    *child = None;
    Some(format!(
        "it exited ({status}) while starting\n{}",
        log_tail(log)
    ))
}

/// Kills a child (SIGKILL) and reaps it without blocking the runtime.
async fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    while let Ok(None) = child.try_wait() {
        tokio::time::sleep(POLL).await;
    }
}
