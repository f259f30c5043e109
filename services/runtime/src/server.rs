//! The accept loop every service serves through: HTTP/1.1 over hyper with the limits warp's own
//! loop lacks. A client that sends its request head slowly, or keeps a connection idle, is closed
//! after a timeout; at most `max_connections` are served, and connections beyond that are shed
//! with a 503 while `/health` is still answered, so the Consul check keeps passing under a flood.
//! A request body must arrive in full within its own timeout, so a client that sends a body one
//! byte a second cannot hold a connection (and a slot under the cap) for as long as it likes.
//! Client-side connection failures (aborted, malformed, timed out) are counted and logged at
//! debug: a script opening thousands of them must not become thousands of shipped ERROR records.
//! What each request passes through besides (the `Host` check, `HEAD` as `GET`, the trace, the
//! security headers, metrics) is `crate::front`'s.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, warn};
use warp::Filter;
use warp::http::Request;
use warp::reply::Reply;

use crate::front::{Admission, Front};

/// How long a client may take from the first byte of a request head to its end, and how long a
/// fresh connection may stay silent. Ten seconds is far beyond what any client on a working link
/// needs (heads are a few hundred bytes) and short enough that a slow-header client holds a
/// connection for seconds, not forever. hyper's own default is 30 s.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a keep-alive connection may wait for its next request. Longer than the 60 s our own
/// callers keep idle pooled connections (`runtime::http_client`), so the caller closes first and
/// never sends a request on a connection this side is closing.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// How long a client may take to send a request body, from the end of its head. The largest
/// bodies the services take (a log batch, 1 MiB) need 10 s at 100 KB/s; 30 s leaves room for a
/// slow link while a client sending a byte a second is closed after 30 bytes.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once. Each costs a file descriptor and a few kilobytes of buffers; 1024
/// is far above what the callers' pools open, and leaves room under the usual 4096+ descriptor
/// limit of containers (and a warning at start when the limit is lower, see `check_fd_limit`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Connections beyond the cap that are still read, one request each, to answer `/health` and a
/// 503 to the rest. Past these, new connections are closed at once.
const SHED_SLOTS: usize = 64;
/// A shed connection gets this long to send its request head; the Consul check sends at once.
const SHED_HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the loop pauses when accepting fails for lack of descriptors or memory, so it does
/// not spin; connections closing in the meantime free what the next accept needs.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Connections open at once above which a fall back to half is worth returning memory for.
const FLOOD_OPEN_CONNECTIONS: u64 = 256;
/// How often the open-connection count is looked at for that.
const MEMORY_CHECK_EVERY: Duration = Duration::from_secs(2);

/// The limits one server applies to its connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Longest time from a request's first byte to the end of its head.
    pub header_timeout: Duration,
    /// Longest wait for the next request on a keep-alive connection.
    pub idle_timeout: Duration,
    /// Longest time from the end of a request's head to the end of its body.
    pub body_timeout: Duration,
    /// Connections served at once; more are shed (see the module comment).
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Command-line flags (each with an environment variable) for the connection limits.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionArgs {
    /// Close a connection whose request head takes longer than this (slow-header clients).
    #[arg(long, env = "GRADEBOOK_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,

    /// Close a keep-alive connection idle this long between requests.
    #[arg(long, env = "GRADEBOOK_IDLE_TIMEOUT", default_value = "75s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Close a connection whose request body takes longer than this to arrive (slow-body clients).
    #[arg(long, env = "GRADEBOOK_BODY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,

    /// Connections served at once; more are answered 503 (except /health) and closed.
    #[arg(long, env = "GRADEBOOK_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,
}

impl ConnectionArgs {
    /// The limits these flags set.
    pub fn limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            body_timeout: self.body_timeout,
            max_connections: self.max_connections,
        }
    }
}

/// Counters of one server's connections, shared with whatever shows them (`/status/connections`).
#[derive(Debug, Clone, Default)]
pub struct ConnectionStats(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicU64,
    shed: AtomicU64,
    refused: AtomicU64,
    header_timeouts: AtomicU64,
    body_timeouts: AtomicU64,
    idle_closed: AtomicU64,
    client_errors: AtomicU64,
    accept_errors: AtomicU64,
}

/// What `GET /status/connections` answers.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ConnectionCounts {
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections open now (served and shed).
    pub open: u64,
    /// Accepted over the cap and answered 503 (or `/health`).
    pub shed: u64,
    /// Closed at once, over the cap and every shed slot taken.
    pub refused: u64,
    /// Closed because the request head did not arrive in time.
    pub header_timeouts: u64,
    /// Closed because a request body did not arrive in time.
    pub body_timeouts: u64,
    /// Keep-alive connections closed after the idle timeout.
    pub idle_closed: u64,
    /// Connections that failed on the client's side: aborted mid-request, malformed requests.
    pub client_errors: u64,
    /// Failed accepts (out of descriptors, say).
    pub accept_errors: u64,
}

impl ConnectionStats {
    /// The counters as they are now.
    pub fn counts(&self) -> ConnectionCounts {
        let c = &self.0;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ConnectionCounts {
            accepted: get(&c.accepted),
            open: get(&c.open),
            shed: get(&c.shed),
            refused: get(&c.refused),
            header_timeouts: get(&c.header_timeouts),
            body_timeouts: get(&c.body_timeouts),
            idle_closed: get(&c.idle_closed),
            client_errors: get(&c.client_errors),
            accept_errors: get(&c.accept_errors),
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// `GET /status/connections`: the counters as JSON.
pub fn status_route(
    stats: ConnectionStats,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    warp::path!("status" / "connections")
        .and(warp::get())
        .map(move || warp::reply::json(&stats.counts()).into_response())
}

/// Serves `front` (and the routes behind it) on `listener` under `limits` until `shutdown` resolves; then stops accepting,
/// lets open connections finish their current request, and returns once all are closed.
pub(crate) async fn serve<S>(
    listener: TcpListener,
    front: Front<S>,
    limits: ConnectionLimits,
    stats: ConnectionStats,
    shutdown: impl Future<Output = ()>,
) where
    S: Routes,
{
    check_fd_limit(limits.max_connections);
    let front = Arc::new(front);
    let served = Arc::new(Semaphore::new(limits.max_connections));
    let shed = Arc::new(Semaphore::new(SHED_SLOTS));
    // One stop signal per connection; dropping a sender tells its connection to finish.
    let stops = Arc::new(Mutex::new(StopSignals::default()));
    // Every connection task holds a sender; when the last is gone, all connections are closed.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut accept_failing = false;
    let memory = tokio::spawn(release_memory_after_floods(stats.clone()));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match stream {
            Ok((stream, _)) => {
                accept_failing = false;
                stream
            }
            Err(err) => {
                ConnectionStats::bump(&stats.0.accept_errors);
                if !is_connection_error(&err) {
                    // Out of descriptors or memory: say so once per streak, pause, go on.
                    if !accept_failing {
                        warn!("accepting connections fails, pausing and retrying: {err}");
                    }
                    accept_failing = true;
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
                continue;
            }
        };
        ConnectionStats::bump(&stats.0.accepted);
        let (permit, mode) = match served.clone().try_acquire_owned() {
            Ok(permit) => (permit, Admission::Serve),
            Err(_) => match shed.clone().try_acquire_owned() {
                Ok(permit) => (permit, Admission::Shed),
                Err(_) => {
                    ConnectionStats::bump(&stats.0.refused);
                    continue; // dropping the stream closes it
                }
            },
        };
        let connection = Connection {
            front: front.clone(),
            limits,
            stats: stats.clone(),
            mode,
        };
        let (id, stop) = lock(&stops).add();
        let stops = stops.clone();
        let open = open.clone();
        tokio::spawn(async move {
            connection.run(stream, stop).await;
            lock(&stops).senders.remove(&id);
            drop(permit);
            drop(open);
        });
    }
    drop(listener);
    memory.abort();
    // Every open connection finishes its current request and closes.
    lock(&stops).senders.clear();
    drop(open);
    let _ = all_closed.recv().await;
}

/// The stop signal of each open connection, by a number of its own. A connection watches only
/// its own receiver: a single channel watched by all would have every connection lock its list
/// of waiters on every wake-up, from both worker threads.
#[derive(Default)]
struct StopSignals {
    next: u64,
    senders: HashMap<u64, oneshot::Sender<()>>,
}

impl StopSignals {
    /// A new connection's number and the receiver its sender's drop resolves.
    fn add(&mut self) -> (u64, oneshot::Receiver<()>) {
        let id = self.next;
        self.next += 1;
        let (sender, receiver) = oneshot::channel();
        self.senders.insert(id, sender);
        (id, receiver)
    }
}

fn lock(stops: &Mutex<StopSignals>) -> std::sync::MutexGuard<'_, StopSignals> {
    // Nothing panics while holding it; a poisoned map is still a valid map.
    stops
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// After a flood of connections has gone, hands the memory their buffers used back to the
/// system. glibc's allocator keeps freed memory inside its arenas (the flood's buffers are
/// scattered among live ones, so nothing can be trimmed from the top), and RSS would stay at the
/// flood's high-water mark for the life of the process; `malloc_trim` returns the free pages.
async fn release_memory_after_floods(stats: ConnectionStats) {
    let mut peak = 0;
    let mut every = tokio::time::interval(MEMORY_CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let open = stats.0.open.load(Ordering::Relaxed);
        peak = peak.max(open);
        if peak >= FLOOD_OPEN_CONNECTIONS && open <= peak / 2 {
            peak = open;
            // It walks the whole heap: not on an async worker.
            let _ = tokio::task::spawn_blocking(trim_heap).await;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory; it takes the allocator's own locks.
    let released = unsafe { libc::malloc_trim(0) };
    debug!(
        released = released == 1,
        "trimmed the heap after a connection flood"
    );
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

/// Errors from `accept` that concern one connection only, and need no pause.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Warns at start when the descriptor limit cannot hold the connection cap: past it, accepts fail
/// with EMFILE before the cap sheds anything. Read from /proc; elsewhere, no warning.
fn check_fd_limit(max_connections: usize) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let soft = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse::<usize>().ok());
    // Room for the shed slots, the database, log files and outgoing connections.
    let needed = max_connections + SHED_SLOTS + 256;
    if let Some(soft) = soft.filter(|soft| *soft < needed) {
        warn!(
            "open-file limit {soft} is below the {needed} that --max-connections {max_connections} \
             needs: raise it (ulimit -n) or lower --max-connections"
        );
    }
}

/// The routes (warp's service of a filter), as [`Front`] calls them.
pub(crate) trait Routes:
    tower_service::Service<
        Request<RequestBody>,
        Response = warp::reply::Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Routes for S where
    S: tower_service::Service<
            Request<RequestBody>,
            Response = warp::reply::Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// Where a connection is in its request cycle, for the timeouts.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for the first byte of a request, since then (fresh connections start here too,
    /// under the header timeout: a connection that never says anything is a slow header).
    Idle { since: Instant, fresh: bool },
    /// Reading a request head, since its first byte.
    ReadingHead { since: Instant },
    /// Reading a request body, since the end of its head.
    ReadingBody { since: Instant },
    /// A request is being answered; no timeout of ours applies.
    Busy,
}

/// The connection's [`Phase`], written by the socket, the request handler and the response body
/// on every request and read only when the connection's timer fires. One atomic word, so a
/// write wakes nobody: a channel here woke the connection task three times per request, and
/// each wake set up a new timer (grading's `GET` fell from 0.82x to 0.60x of the ceiling).
/// Every writer runs inside the connection's own task (hyper polls the handler and the bodies
/// there), so relaxed ordering suffices; the atomic is there to make the type `Sync`.
#[derive(Debug)]
struct Progress {
    /// The origin of the times in `word`.
    base: Instant,
    /// The phase's tag in the low three bits, above them when it began, in nanoseconds since
    /// `base` (61 bits: over 70 years).
    word: AtomicU64,
    /// Reading a request body failed (the client went away mid-body).
    body_failed: AtomicBool,
}

const FRESH: u64 = 0;
const IDLE: u64 = 1;
const READING_HEAD: u64 = 2;
const BUSY: u64 = 3;
const READING_BODY: u64 = 4;
const TAG: u64 = 7;
const TAG_BITS: u32 = 3;

impl Progress {
    /// A connection accepted now: idle and fresh.
    fn new() -> Progress {
        Progress {
            base: Instant::now(),
            word: AtomicU64::new(FRESH),
            body_failed: AtomicBool::new(false),
        }
    }

    fn enter(&self, tag: u64) {
        let nanos = self.base.elapsed().as_nanos() as u64;
        self.word.store(nanos << TAG_BITS | tag, Ordering::Relaxed);
    }

    /// A request head is complete: its body is awaited now, or, without one, it is being
    /// answered.
    fn head_complete(&self, body_follows: bool) {
        if body_follows {
            self.enter(READING_BODY);
        } else {
            self.word.store(BUSY, Ordering::Relaxed);
        }
    }

    /// The request body has arrived in full: no timeout of ours applies until the answer is
    /// written. (A phase past the body, when the answer went before the body was read, stays.)
    fn body_complete(&self) {
        if self.word.load(Ordering::Relaxed) & TAG == READING_BODY {
            self.word.store(BUSY, Ordering::Relaxed);
        }
    }

    /// The answer is written: waiting for the next request.
    fn idle(&self) {
        self.enter(IDLE);
    }

    /// Bytes arrived: if the connection was idle, a request head starts now.
    fn bytes_arrived(&self) {
        if self.word.load(Ordering::Relaxed) & TAG <= IDLE {
            self.enter(READING_HEAD);
        }
    }

    fn phase(&self) -> Phase {
        let word = self.word.load(Ordering::Relaxed);
        let since = self.base + Duration::from_nanos(word >> TAG_BITS);
        match word & TAG {
            FRESH => Phase::Idle { since, fresh: true },
            IDLE => Phase::Idle {
                since,
                fresh: false,
            },
            READING_HEAD => Phase::ReadingHead { since },
            READING_BODY => Phase::ReadingBody { since },
            _ => Phase::Busy,
        }
    }
}

struct Connection<S> {
    front: Arc<Front<S>>,
    limits: ConnectionLimits,
    stats: ConnectionStats,
    mode: Admission,
}

impl<S> Connection<S>
where
    S: Routes,
{
    async fn run(self, stream: TcpStream, stop: oneshot::Receiver<()>) {
        let counters = &self.stats.0;
        counters.open.fetch_add(1, Ordering::Relaxed);
        if self.mode == Admission::Shed {
            ConnectionStats::bump(&counters.shed);
        }
        let _ = stream.set_nodelay(true);
        let progress = Arc::new(Progress::new());
        let io = TokioIo::new(PhaseTracking {
            stream,
            progress: progress.clone(),
        });
        let mode = self.mode;
        let front = self.front.clone();
        let request_progress = progress.clone();
        let handler = hyper::service::service_fn(move |request: Request<Incoming>| {
            request_progress.head_complete(!request.body().is_end_stream());
            let request = request.map(|body| RequestBody {
                body,
                progress: request_progress.clone(),
            });
            let answer = front.answer(mode, request);
            let progress = request_progress.clone();
            async move {
                let response = answer.await;
                Ok::<_, std::convert::Infallible>(response.map(|body| PhaseBody {
                    body,
                    progress: Some(progress),
                }))
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.keep_alive(mode == Admission::Serve);
        let conn = builder.serve_connection(io, handler);
        let mut conn = std::pin::pin!(conn);
        let header_timeout = match mode {
            Admission::Serve => self.limits.header_timeout,
            Admission::Shed => SHED_HEADER_TIMEOUT.min(self.limits.header_timeout),
        };
        // The timer is not moved on each request. It wakes at the current phase's deadline or
        // `shortest` from now, whichever is sooner: any later phase begins after now and lasts
        // at least `shortest`, so no deadline is ever missed, and a busy connection's timer
        // fires about once per `shortest` (10 s by default) to find nothing due.
        let shortest = header_timeout
            .min(self.limits.idle_timeout)
            .min(self.limits.body_timeout);
        let timer = tokio::time::sleep(shortest);
        let mut timer = std::pin::pin!(timer);
        let mut stop = std::pin::pin!(stop);
        let mut draining = false;
        loop {
            tokio::select! {
                // Cheapest first, and the stop before the connection: one accepted while the
                // server was stopping closes without reading a request.
                biased;
                _ = &mut stop, if !draining => {
                    // Idle connections close now; one mid-request finishes it first.
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                result = conn.as_mut() => {
                    // The client's doing (reset, half a request, junk): counted, not shipped. A
                    // body cut short may still have been answered (a 4xx), so hyper saw no error.
                    if let Err(err) = result {
                        ConnectionStats::bump(&counters.client_errors);
                        debug!("client connection error: {err}");
                    } else if progress.body_failed.load(Ordering::Relaxed) {
                        ConnectionStats::bump(&counters.client_errors);
                        debug!("client connection error: request body cut short");
                    }
                    break;
                }
                () = timer.as_mut() => {
                    let now = Instant::now();
                    let current = progress.phase();
                    let deadline = match current {
                        Phase::Idle { since, fresh: true } | Phase::ReadingHead { since } => {
                            Some((since + header_timeout, &counters.header_timeouts))
                        }
                        Phase::Idle {
                            since,
                            fresh: false,
                        } => Some((since + self.limits.idle_timeout, &counters.idle_closed)),
                        Phase::ReadingBody { since } => {
                            Some((since + self.limits.body_timeout, &counters.body_timeouts))
                        }
                        Phase::Busy => None,
                    };
                    if let Some((deadline, counter)) = deadline
                        && deadline <= now
                    {
                        // Nothing is in flight, or a request whose body never came: dropping
                        // the connection loses no answer and stores nothing half-read.
                        ConnectionStats::bump(counter);
                        debug!(?current, "closing a connection past its timeout");
                        break;
                    }
                    let soonest = now + shortest;
                    let wake = deadline.map_or(soonest, |(deadline, _)| deadline.min(soonest));
                    timer.as_mut().reset(wake);
                }
            }
        }
        counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The socket, noting when a request's first byte arrives so the header timeout starts then.
struct PhaseTracking {
    stream: TcpStream,
    progress: Arc<Progress>,
}

impl AsyncRead for PhaseTracking {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.progress.bytes_arrived();
        }
        polled
    }
}

impl AsyncWrite for PhaseTracking {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// A request body that marks the connection busy once it has arrived in full (the body timeout
/// stops), and remembers whether reading it failed (the client went away mid-body).
pub(crate) struct RequestBody {
    body: Incoming,
    progress: Arc<Progress>,
}

impl Body for RequestBody {
    type Data = <Incoming as Body>::Data;
    type Error = <Incoming as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Err(_))) => self.progress.body_failed.store(true, Ordering::Relaxed),
            Poll::Ready(None) => self.progress.body_complete(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.progress.body_complete(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that marks the connection idle once hyper is done with it (written in full,
/// or dropped unread for a HEAD): the idle timeout runs from then.
struct PhaseBody<B> {
    body: B,
    progress: Option<Arc<Progress>>,
}

impl<B> Drop for PhaseBody<B> {
    fn drop(&mut self) {
        if let Some(progress) = self.progress.take() {
            progress.idle();
        }
    }
}

impl<B: Body + Unpin> Body for PhaseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
