//! `discovery-bench`: the discovery figures of `scripts/bench.sh`, measured against a real Consul
//! agent with the services' own discovery code.
//!
//! - `visibility`: real in-process instances (`service_runtime::Service`) register one at a time while
//!   several `ProviderWatch`es watch; the time from the start of registration to every watcher
//!   listing the instance, and from a graceful stop to every watcher dropping it.
//! - `kill`: two real `grading-service` processes behind a `ProviderPool` under a request loop;
//!   one is SIGKILLed, the time until every watcher drops it, and the requests that failed.
//! - `proxy`: a counting HTTP proxy in front of the agent, one listener per service, so the
//!   services' calls to Consul can be counted while nothing changes.
//! - `free-ports`: TCP+UDP ports free a moment ago, for the agent the script starts.
//!
//! Results are printed as `key value` lines on stdout for the script to tabulate.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bench::stats::{ms, percentile};
use clap::{Parser, Subcommand};
use discovery::{ConsulSettings, ProviderWatch};
use service_runtime::{ProviderPool, Service, ServiceDefinition};
use warp::Filter;
use warp::reply::Reply;

/// How long any single wait may take before the trial is reported as timed out.
const TRIAL_LIMIT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(about = "Discovery measurements against a real Consul agent (see scripts/bench.sh)")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Registration -> visible in every watcher, and graceful stop -> dropped by every watcher.
    Visibility {
        /// Consul agent HTTP address.
        #[arg(long)]
        consul: String,
        /// Instances registered, one at a time.
        #[arg(long, default_value_t = 60)]
        trials: usize,
        /// Independent watchers (each its own blocking query).
        #[arg(long, default_value_t = 4)]
        watchers: usize,
        /// Pause between trials, so the watches' poll rate limit is not what is measured.
        #[arg(long, default_value = "200ms", value_parser = humantime_ms)]
        pause: Duration,
    },
    /// SIGKILL of a grading instance under load -> dropped by every watcher; failed requests.
    Kill {
        #[arg(long)]
        consul: String,
        /// The grading-service binary to run.
        #[arg(long)]
        grading_bin: PathBuf,
        #[arg(long, default_value_t = 5)]
        trials: usize,
        #[arg(long, default_value_t = 4)]
        watchers: usize,
        /// Concurrent request loops through the pool.
        #[arg(long, default_value_t = 4)]
        clients: usize,
    },
    /// A counting proxy to the agent: one listener per NAME=ADDR; GET /_bench/counts on a
    /// listener answers that listener's counts.
    Proxy {
        /// The agent's HTTP address.
        #[arg(long)]
        upstream: String,
        /// NAME=HOST:PORT, repeated.
        #[arg(long = "listen", required = true)]
        listeners: Vec<String>,
    },
    /// Prints N ports free (TCP and UDP) a moment ago, space-separated.
    FreePorts { n: usize },
}

fn humantime_ms(text: &str) -> Result<Duration, String> {
    let millis = text.trim_end_matches("ms");
    millis
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|e| format!("{text:?}: {e} (give milliseconds, e.g. 200ms)"))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match args.command {
        Cmd::Visibility {
            consul,
            trials,
            watchers,
            pause,
        } => visibility(&consul, trials, watchers, pause).await,
        Cmd::Kill {
            consul,
            grading_bin,
            trials,
            watchers,
            clients,
        } => kill(&consul, &grading_bin, trials, watchers, clients).await,
        Cmd::Proxy {
            upstream,
            listeners,
        } => proxy(upstream, listeners).await,
        Cmd::FreePorts { n } => {
            let ports: Vec<String> = free_ports(n).iter().map(u16::to_string).collect();
            println!("{}", ports.join(" "));
        }
    }
}

/// Waits until every watcher's set satisfies `has`, returning the time since `start` at which
/// the last one did, or `None` after [`TRIAL_LIMIT`].
async fn all_watchers(
    watchers: &[ProviderWatch],
    start: Instant,
    has: impl Fn(&discovery::ProviderSet) -> bool + Clone + Send + Sync + 'static,
) -> Option<Duration> {
    let waits: Vec<_> = watchers
        .iter()
        .map(|watch| {
            let mut receiver = watch.subscribe();
            let has = has.clone();
            tokio::spawn(async move {
                let seen = tokio::time::timeout(TRIAL_LIMIT, receiver.wait_for(|set| has(set)));
                matches!(seen.await, Ok(Ok(_))).then(Instant::now)
            })
        })
        .collect();
    let mut last = start;
    for wait in waits {
        last = last.max(wait.await.ok()??);
    }
    Some(last - start)
}

async fn visibility(consul: &str, trials: usize, watcher_count: usize, pause: Duration) {
    const NAME: &str = "bench-trial";
    let settings = ConsulSettings::local(consul);
    let watchers: Vec<ProviderWatch> = (0..watcher_count)
        .map(|_| ProviderWatch::spawn(&settings, NAME))
        .collect();
    for watch in &watchers {
        watch.ready(TRIAL_LIMIT).await;
    }
    let mut appear = Vec::with_capacity(trials);
    let mut disappear = Vec::with_capacity(trials);
    let mut timeouts = 0;
    for _ in 0..trials {
        let service = Service::bind(ServiceDefinition {
            name: NAME,
            version: env!("CARGO_PKG_VERSION"),
            tags: vec!["bench".to_owned()],
            listen: ([127, 0, 0, 1], 0).into(),
            advertise: None,
            consul: settings.clone(),
            allowed_hosts: Vec::new(),
        })
        .await
        .expect("binding a loopback port");
        let id = service.instance_id();
        let routes = warp::path("nothing").map(|| warp::reply().into_response());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();

        let has = {
            let id = id.clone();
            move |set: &discovery::ProviderSet| set.providers.iter().any(|p| p.id == id)
        };
        let start = Instant::now();
        let seen = all_watchers(&watchers, start, has.clone());
        // Registration starts as the instance starts running: the clock is already going.
        let running = tokio::spawn(service.run(routes, async {
            let _ = stopped.await;
        }));
        match seen.await {
            Some(took) => appear.push(took),
            None => timeouts += 1,
        }

        let start = Instant::now();
        let gone = all_watchers(&watchers, start, move |set| !has(set));
        let _ = stop.send(());
        match gone.await {
            Some(took) => disappear.push(took),
            None => timeouts += 1,
        }
        // The instance drains its connections in the background; the next one does not wait.
        drop(running);
        tokio::time::sleep(pause).await;
    }
    report("visible", &appear);
    report("dropped_graceful", &disappear);
    println!("visibility_timeouts {timeouts}");
    println!("visibility_watchers {watcher_count}");
}

fn report(what: &str, samples: &[Duration]) {
    println!("{what}_trials {}", samples.len());
    for (name, p) in [("p50", 50.0), ("p99", 99.0), ("max", 100.0)] {
        if let Some(d) = percentile(samples, p) {
            println!("{what}_{name}_ms {}", ms(d));
        }
    }
}

/// A grading-service process with its own data directory, killed on drop.
struct Grading {
    child: Child,
    addr: SocketAddr,
}

impl Grading {
    fn start(bin: &Path, consul: &str, addr: SocketAddr, data: &Path) -> Grading {
        let log = std::fs::File::create(data.join(format!("grading-{}.log", addr.port())))
            .expect("creating a log file");
        let child = Command::new(bin)
            .args(["--listen", &addr.to_string(), "--data-dir"])
            .arg(data.join(addr.port().to_string()))
            .env("CONSUL_HTTP_ADDR", consul)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        Grading { child, addr }
    }

    fn id(&self) -> String {
        format!("grading-{}-{}", self.addr.ip(), self.addr.port())
    }

    fn sigkill(&mut self) {
        // std's kill() is SIGKILL on Unix: no deregistration, no drain, as in a crash.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Grading {
    fn drop(&mut self) {
        self.sigkill();
    }
}

async fn kill(consul: &str, bin: &Path, trials: usize, watcher_count: usize, clients: usize) {
    let settings = ConsulSettings::local(consul);
    let data = tempfile::tempdir().expect("a temporary directory");
    let ports = free_ports(2);
    let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let mut victim = Grading::start(bin, consul, addr(ports[0]), data.path());
    let survivor = Grading::start(bin, consul, addr(ports[1]), data.path());

    // The pool's own watch is one of the watchers.
    let pool = ProviderPool::new(
        ProviderWatch::spawn(&settings, "grading"),
        service_runtime::runtime::http_client(),
    );
    let mut watchers = vec![pool.watch().clone()];
    watchers.extend((1..watcher_count).map(|_| ProviderWatch::spawn(&settings, "grading")));
    let both = {
        let ids = [victim.id(), survivor.id()];
        move |set: &discovery::ProviderSet| {
            ids.iter()
                .all(|id| set.providers.iter().any(|p| &p.id == id))
        }
    };
    all_watchers(&watchers, Instant::now(), both.clone())
        .await
        .expect("both grading instances visible");

    let running = Arc::new(AtomicBool::new(true));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let loops: Vec<_> = (0..clients)
        .map(|_| {
            let (pool, running, ok, failed) =
                (pool.clone(), running.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while running.load(Ordering::Relaxed) {
                    let answer = match pool.get("/students/1").await {
                        Ok(response) if response.status().is_success() => {
                            response.bytes().await.is_ok()
                        }
                        Ok(_) | Err(_) => false,
                    };
                    let counter = if answer { &ok } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                    // Paced, so the load shares the two cores with Consul's checks.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();

    let mut dropped = Vec::with_capacity(trials);
    let mut timeouts = 0;
    for trial in 0..trials {
        if trial > 0 {
            victim = Grading::start(bin, consul, victim.addr, data.path());
            if all_watchers(&watchers, Instant::now(), both.clone())
                .await
                .is_none()
            {
                timeouts += 1;
                continue;
            }
        }
        // Let the load reach both instances, then crash at a random point of the 1 s check
        // interval: the time to be dropped depends on it, so every phase must be sampled.
        let phase = Duration::from_millis(fastrand::u64(0..1000));
        tokio::time::sleep(Duration::from_millis(500) + phase).await;
        let id = victim.id();
        let start = Instant::now();
        victim.sigkill();
        let gone = move |set: &discovery::ProviderSet| !set.providers.iter().any(|p| p.id == id);
        match all_watchers(&watchers, start, gone).await {
            Some(took) => dropped.push(took),
            None => timeouts += 1,
        }
    }
    running.store(false, Ordering::Relaxed);
    for request_loop in loops {
        let _ = request_loop.await;
    }
    drop(survivor);
    report("dropped_sigkill", &dropped);
    println!("sigkill_timeouts {timeouts}");
    println!("sigkill_requests_ok {}", ok.load(Ordering::Relaxed));
    println!("sigkill_requests_failed {}", failed.load(Ordering::Relaxed));
}

/// Counts of one proxy listener, by the kind of Consul call.
#[derive(Default)]
struct Counts {
    by_kind: std::sync::Mutex<BTreeMap<&'static str, u64>>,
}

impl Counts {
    fn add(&self, path: &str) {
        let kind = if path.starts_with("/v1/health/service/") {
            "watch"
        } else if path.starts_with("/v1/agent/service/register") {
            "register"
        } else if path.starts_with("/v1/agent/service/deregister") {
            "deregister"
        } else if path.starts_with("/v1/agent/service/") {
            "own_entry"
        } else {
            "other"
        };
        *self
            .by_kind
            .lock()
            .expect("not poisoned")
            .entry(kind)
            .or_default() += 1;
    }

    fn render(&self) -> String {
        let by_kind = self.by_kind.lock().expect("not poisoned");
        let total: u64 = by_kind.values().sum();
        let mut text = format!("total={total}");
        for kind in ["watch", "own_entry", "register", "deregister", "other"] {
            text.push_str(&format!(" {kind}={}", by_kind.get(kind).unwrap_or(&0)));
        }
        text.push('\n');
        text
    }
}

async fn proxy(upstream: String, listeners: Vec<String>) {
    // No timeout: blocking queries are held for minutes by design.
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a plain HTTP client");
    let upstream: Arc<str> = upstream.trim_end_matches('/').into();
    let mut servers = Vec::new();
    for spec in listeners {
        let (name, addr) = spec
            .split_once('=')
            .unwrap_or_else(|| panic!("--listen {spec:?}: expected NAME=HOST:PORT"));
        let addr: SocketAddr = addr
            .parse()
            .unwrap_or_else(|e| panic!("--listen {spec:?}: {e}"));
        let counts = Arc::new(Counts::default());
        let report = {
            let counts = counts.clone();
            warp::path!("_bench" / "counts").map(move || counts.render().into_response())
        };
        let (client, target) = (client.clone(), upstream.clone());
        let forward = warp::method()
            .and(warp::path::full())
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .then(
                move |method: warp::http::Method,
                      path: warp::path::FullPath,
                      query: String,
                      headers: warp::http::HeaderMap,
                      body: bytes::Bytes| {
                    counts.add(path.as_str());
                    let (client, target) = (client.clone(), target.clone());
                    async move {
                        forward(
                            &client,
                            &target,
                            method,
                            path.as_str(),
                            &query,
                            headers,
                            body,
                        )
                        .await
                    }
                },
            );
        eprintln!("proxy: {name} on {addr} -> {upstream}");
        servers.push(tokio::spawn(warp::serve(report.or(forward)).run(addr)));
    }
    for server in servers {
        let _ = server.await;
    }
}

async fn forward(
    client: &reqwest::Client,
    upstream: &str,
    method: warp::http::Method,
    path: &str,
    query: &str,
    mut headers: warp::http::HeaderMap,
    body: bytes::Bytes,
) -> warp::reply::Response {
    let mut url = format!("{upstream}{path}");
    if !query.is_empty() {
        url.push('?');
        url.push_str(query);
    }
    headers.remove(warp::http::header::HOST);
    headers.remove(warp::http::header::CONTENT_LENGTH);
    let answer = client
        .request(method, url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(err) => {
            return warp::reply::with_status(
                format!("proxy: upstream failed: {err}"),
                warp::http::StatusCode::BAD_GATEWAY,
            )
            .into_response();
        }
    };
    let mut builder = warp::http::Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name != warp::http::header::CONTENT_LENGTH
            && name != warp::http::header::TRANSFER_ENCODING
        {
            builder = builder.header(name, value);
        }
    }
    let body = answer.bytes().await.unwrap_or_default();
    builder
        .body(body)
        .map(Reply::into_response)
        .unwrap_or_else(|e| {
            warp::reply::with_status(
                format!("proxy: bad answer: {e}"),
                warp::http::StatusCode::BAD_GATEWAY,
            )
            .into_response()
        })
}

/// `n` distinct ports free for both TCP and UDP a moment ago (Consul's DNS and gossip use UDP).
fn free_ports(n: usize) -> Vec<u16> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n * 20 {
        if held.len() == n {
            break;
        }
        let tcp = TcpListener::bind("127.0.0.1:0").expect("binding a TCP port");
        let port = tcp.local_addr().expect("a bound address").port();
        if let Ok(udp) = UdpSocket::bind(("127.0.0.1", port)) {
            held.push((port, tcp, udp));
        }
    }
    assert_eq!(held.len(), n, "not enough free ports");
    held.into_iter().map(|(port, ..)| port).collect()
}
