//! The runtime's connection limits against real clients on raw sockets, with the instance
//! registered in a real Consul agent whose HTTP check must keep passing.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use service_runtime::ConnectionLimits;
use testkit::{ConsulAgent, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use warp::Filter;
use warp::reply::Reply;

const PATIENCE: Duration = Duration::from_secs(15);

/// An instance serving `GET /hello` and `POST /echo` (answers the body's length once read),
/// registered in `agent`, under `limits`.
struct Instance {
    addr: SocketAddr,
    id: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Instance {
    async fn start(agent: &ConsulAgent, limits: ConnectionLimits) -> Instance {
        let service = common::bind(agent, "limited", &[])
            .await
            .with_connection_limits(limits);
        let addr = service.local_addr();
        let id = service.instance_id();
        let hello = warp::path("hello")
            .and(warp::get())
            .map(|| "hello, world\n".into_response());
        let echo = warp::path("echo")
            .and(warp::post())
            .and(warp::body::bytes())
            .map(|body: bytes::Bytes| format!("{} bytes\n", body.len()).into_response());
        let (stop, task) = common::run_until_stopped(service, hello.or(echo).unify());
        Instance {
            addr,
            id,
            stop,
            task,
        }
    }

    async fn shut_down(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("shutdown finishes")
            .expect("no panic");
    }
}

fn limits(header: u64, idle: u64, max: usize) -> ConnectionLimits {
    ConnectionLimits {
        header_timeout: Duration::from_secs(header),
        idle_timeout: Duration::from_secs(idle),
        body_timeout: Duration::from_secs(30),
        max_connections: max,
    }
}

/// Sends one request on `stream` (keeping it open) and reads the whole answer, which must say
/// how long its body is.
async fn request(stream: &mut TcpStream, method: &str, path: &str) -> String {
    let head = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    read_answer(stream, method == "HEAD").await
}

/// Reads one whole answer (its head only for a `HEAD`), which must say how long its body is.
async fn read_answer(stream: &mut TcpStream, head_only: bool) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .map_or(0, |l| l.trim().parse::<usize>().unwrap());
            let expected = if head_only { 0 } else { length };
            if body.len() >= expected {
                return text;
            }
        }
        assert!(n > 0, "closed before the answer was complete: {text:?}");
    }
}

/// Waits for the server to close `stream`; returns how long that took, or `None` if it stayed
/// open for `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    while start.elapsed() < limit {
        match tokio::time::timeout(limit - start.elapsed(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
    None
}

/// Writes `bytes` over and over on `stream`, one every 100 ms, until the server closes it.
fn dribble(mut stream: TcpStream, bytes: &'static [u8]) -> JoinHandle<TcpStream> {
    tokio::spawn(async move {
        for byte in bytes.iter().cycle() {
            if stream.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stream
    })
}

/// Waits up to `patience` for the server to close the connection `dribble` writes on.
async fn assert_closed_by_the_server(dribble: JoinHandle<TcpStream>, patience: Duration) {
    let mut slow = tokio::time::timeout(patience, dribble)
        .await
        .expect("the server closes the slow connection, so writing to it fails")
        .unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(1))
            .await
            .is_some(),
        "the slow client's connection is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_header_client_is_disconnected_while_another_is_served() {
    let agent = ConsulAgent::start().await;
    let instance = Instance::start(&agent, limits(1, 30, 100)).await;

    let slow = TcpStream::connect(instance.addr).await.unwrap();
    // The head never ends.
    let dribble = dribble(slow, b"GET /hello HTTP/1.1\r\nx-slow: ");
    let mut other = TcpStream::connect(instance.addr).await.unwrap();
    let answer = request(&mut other, "GET", "/hello").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    assert_closed_by_the_server(dribble, Duration::from_secs(5)).await;
    // Writes fail a little after the close; the claim is the close is within twice the timeout.
    let answer = request(&mut other, "GET", "/hello").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    instance.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_client_is_disconnected_while_whole_bodies_are_answered() {
    let agent = ConsulAgent::start().await;
    let body_timeout = ConnectionLimits {
        body_timeout: Duration::from_secs(1),
        ..limits(30, 30, 100)
    };
    let instance = Instance::start(&agent, body_timeout).await;

    let mut slow = TcpStream::connect(instance.addr).await.unwrap();
    let head = "POST /echo HTTP/1.1\r\nhost: localhost\r\ncontent-length: 1000000\r\n\r\n";
    slow.write_all(head.as_bytes()).await.unwrap();
    // A whole head at once, then a body that never ends.
    let dribble = dribble(slow, b"x");
    // Another client's whole body, sent at once, is read and answered meanwhile.
    let mut other = TcpStream::connect(instance.addr).await.unwrap();
    let post = "POST /echo HTTP/1.1\r\nhost: localhost\r\ncontent-length: 5\r\n\r\nhello";
    other.write_all(post.as_bytes()).await.unwrap();
    let answer = read_answer(&mut other, false).await;
    assert!(answer.ends_with("\r\n\r\n5 bytes\n"), "{answer}");

    assert_closed_by_the_server(dribble, Duration::from_secs(10)).await;
    let counts = testkit::get_json(&format!("http://{}/status/connections", instance.addr)).await;
    assert_eq!(counts["body_timeouts"], 1, "{counts}");
    // The connection that sent a whole body is still served, past the body timeout.
    let answer = request(&mut other, "GET", "/hello").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    instance.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let agent = ConsulAgent::start().await;
    // The idle timeout is shorter than the header timeout here, so only it can close.
    let instance = Instance::start(&agent, limits(30, 1, 100)).await;
    let mut stream = TcpStream::connect(instance.addr).await.unwrap();
    let answer = request(&mut stream, "GET", "/hello").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let closed = closed_within(&mut stream, Duration::from_secs(5)).await;
    let closed = closed.expect("the idle connection is closed");
    assert!(closed < Duration::from_secs(3), "closed after {closed:?}");
    let counts = testkit::get_json(&format!("http://{}/status/connections", instance.addr)).await;
    assert_eq!(counts["idle_closed"], 1, "{counts}");
    instance.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cap_reached_extra_connections_are_shed_but_health_and_the_check_pass() {
    let agent = ConsulAgent::start().await;
    let instance = Instance::start(&agent, limits(30, 60, 4)).await;
    eventually("instance passing", PATIENCE, || async {
        (agent.check_status(&instance.id).await.as_deref() == Some("passing")).then_some(())
    })
    .await;
    // Four keep-alive connections take every slot and stay open.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(instance.addr).await.unwrap();
        let answer = request(&mut stream, "GET", "/hello").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        held.push(stream);
    }

    let mut extra = TcpStream::connect(instance.addr).await.unwrap();
    let answer = request(&mut extra, "GET", "/hello").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let lowercase = answer.to_ascii_lowercase();
    assert!(lowercase.contains("retry-after: 1"), "{answer}");
    assert!(lowercase.contains("x-frame-options: deny"), "{answer}");
    assert!(
        closed_within(&mut extra, Duration::from_secs(5))
            .await
            .is_some(),
        "a shed connection is closed after its answer"
    );
    let mut checker = TcpStream::connect(instance.addr).await.unwrap();
    let answer = request(&mut checker, "GET", "/health").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The agent checks every second: three checks later, still passing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        agent.check_status(&instance.id).await.as_deref(),
        Some("passing")
    );
    // The held connections are still served, and the shed answer was counted.
    let answer = request(&mut held[0], "GET", "/hello").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let metrics = request(&mut held[1], "GET", "/metrics").await;
    assert!(
        metrics.contains(
            r#"gradebook_http_requests_total{route="other",method="GET",status="503"} 1"#
        ),
        "{metrics}"
    );
    drop(held);
    instance.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_answered_wherever_get_is_with_the_same_headers_and_no_body() {
    let agent = ConsulAgent::start().await;
    let instance = Instance::start(&agent, ConnectionLimits::default()).await;
    let mut stream = TcpStream::connect(instance.addr).await.unwrap();
    for path in ["/hello", "/health"] {
        let get = request(&mut stream, "GET", path).await;
        let head = request(&mut stream, "HEAD", path).await;
        let (get_head, get_body) = get.split_once("\r\n\r\n").unwrap();
        let (head_head, head_body) = head.split_once("\r\n\r\n").unwrap();
        // The date, and the ids of a trace started for each request, differ between the two.
        let without_date = |h: &str| -> Vec<String> {
            h.lines()
                .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
                .map(|l| match l.split_once("traceparent: 00-") {
                    Some((name, _)) => format!("{name}traceparent: 00-…"),
                    None => l.to_owned(),
                })
                .collect()
        };
        assert!(head_head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head_head.contains("traceparent: 00-"), "{head}");
        assert_eq!(without_date(head_head), without_date(get_head), "{path}");
        assert_eq!(head_body, "", "{path}");
        assert!(!get_body.is_empty(), "{path}");
    }
    instance.shut_down().await;
}
