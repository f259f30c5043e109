//! A provider that misbehaves on purpose: the one thing a real service cannot be made to do.
//! Register it in a real Consul agent beside a healthy instance, so callers find it through
//! their real watch.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How a [`MisbehavingServer`] answers while misbehaving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Sends the head of a 200 announcing a body, then nothing, holding the connection open.
    Hang,
    /// Answers 500.
    ServerError,
    /// Answers 200 with a body no caller can decode.
    Junk,
    /// Answers 200 with a body of this many bytes, streamed without a length (until the
    /// connection closes), so only the reader can stop it.
    HugeBody(usize),
}

/// A hand-written HTTP/1.1 server misbehaving as told until [`MisbehavingServer::recover`],
/// then answering every request with 200 and its own address, like a healthy `/whoami`. It
/// counts the requests it got, when, and the body bytes it managed to hand to the kernel.
/// Stops when dropped.
pub struct MisbehavingServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Instant>>,
    bytes_sent: AtomicUsize,
    recovered: AtomicBool,
}

impl MisbehavingServer {
    /// Listens on a free loopback port.
    pub async fn start(misbehaviour: Misbehaviour) -> MisbehavingServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("bound");
        let shared = Arc::new(Shared::default());
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((socket, _)) = listener.accept().await {
                let shared = serving.clone();
                connections.spawn(async move {
                    let misbehaviour =
                        (!shared.recovered.load(Ordering::SeqCst)).then_some(misbehaviour);
                    serve(socket, addr, misbehaviour, &shared).await;
                });
            }
        });
        MisbehavingServer { addr, shared, task }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many requests it got.
    pub fn requests(&self) -> usize {
        self.shared.requests.lock().expect("not poisoned").len()
    }

    /// When it got each request, in order.
    pub fn request_times(&self) -> Vec<Instant> {
        self.shared.requests.lock().expect("not poisoned").clone()
    }

    /// Body bytes written to sockets so far (of [`Misbehaviour::HugeBody`]).
    pub fn bytes_sent(&self) -> usize {
        self.shared.bytes_sent.load(Ordering::SeqCst)
    }

    /// From now on, answers new connections like a healthy instance.
    pub fn recover(&self) {
        self.shared.recovered.store(true, Ordering::SeqCst);
    }
}

impl Drop for MisbehavingServer {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which ends every connection.
        self.task.abort();
    }
}

/// Answers one request on `socket`, then closes it (`connection: close`, so no request waits
/// behind a misbehaving answer on a kept-alive connection).
async fn serve(
    mut socket: TcpStream,
    addr: SocketAddr,
    misbehaviour: Option<Misbehaviour>,
    shared: &Shared,
) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    shared
        .requests
        .lock()
        .expect("not poisoned")
        .push(Instant::now());
    let answer = |status: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let _ = match misbehaviour {
        None => {
            let text = answer("200 OK", &addr.to_string());
            socket.write_all(text.as_bytes()).await
        }
        Some(Misbehaviour::ServerError) => {
            let text = answer("500 Internal Server Error", "");
            socket.write_all(text.as_bytes()).await
        }
        Some(Misbehaviour::Junk) => {
            let text = answer("200 OK", "<html>Whoops</html>");
            socket.write_all(text.as_bytes()).await
        }
        Some(Misbehaviour::Hang) => {
            let head = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n";
            let _ = socket.write_all(head.as_bytes()).await;
            std::future::pending::<()>().await;
            Ok(())
        }
        Some(Misbehaviour::HugeBody(total)) => {
            let head = "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n";
            let _ = socket.write_all(head.as_bytes()).await;
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < total {
                let end = chunk.len().min(total - sent);
                match socket.write(&chunk[..end]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        sent += n;
                        shared.bytes_sent.fetch_add(n, Ordering::SeqCst);
                    }
                }
            }
            Ok(())
        }
    };
}
