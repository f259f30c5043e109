//! Installs the `tracing` subscriber: human-readable lines on stderr, filtered by `RUST_LOG`
//! (default `info`), and optionally a copy of each event shipped to the log service, stamped
//! with the trace id of the request it happened in (see [`crate::trace`]).
//!
//! Shipping never slows the code that logs: an event is formatted and put in a bounded queue
//! with `try_send`, and one background task sends the queue in batches to a log instance found
//! through Consul. While no log instance is known (or every one fails) records wait in the
//! queue; what does not fit is counted, reported on stderr, and reported to the log service as
//! a record of its own once one is reachable again.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use discovery::backoff;
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::{Event, Instrument, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::pool::ProviderPool;

/// Records waiting for a log instance, at most. At ~200 bytes each, about 2 MB.
pub const SHIPPING_BUFFER: usize = 10_000;
/// Records in one POST, at most (the log service accepts up to 1000).
const BATCH: usize = 500;
/// Longest message shipped; the log service refuses longer ones.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Environment variable with the least severe level shipped (`info` unless set).
pub const SHIP_LEVEL_ENV: &str = "GRADEBOOK_SHIP_LEVEL";

/// The settings read from the environment only, for `--help` of a service that does not ship
/// its events (the log service).
pub const ENV_HELP: &str = "Environment only:
  RUST_LOG              what goes to stderr, in tracing's env-filter syntax [default: info]

Live configuration: keys in Consul KV under gradebook/config/common/ and
gradebook/config/SERVICE/ apply within a second, without a restart. Order, lowest
first: default < environment < flag < KV common < KV service; a deleted key falls
back. GET /status/config shows each value and where it came from.";

/// The same for the services that ship their events to the log service.
pub const ENV_HELP_SHIPPING: &str = "Environment only:
  RUST_LOG              what goes to stderr, in tracing's env-filter syntax [default: info]
  GRADEBOOK_SHIP_LEVEL  least severe level shipped to the log service: trace, debug, info,
                        warn, error or off [default: info; live: KV key ship_level]

Live configuration: keys in Consul KV under gradebook/config/common/ and
gradebook/config/SERVICE/ apply within a second, without a restart. Order, lowest
first: default < environment < flag < KV common < KV service; a deleted key falls
back. GET /status/config shows each value and where it came from.";

/// One record as the log service's batch form takes it.
#[derive(Debug, Clone, Serialize)]
pub struct ShippedRecord {
    pub time: String,
    pub service: &'static str,
    pub level: &'static str,
    pub message: String,
    /// The W3C trace-id of the request served when the event happened (see [`crate::trace`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

#[derive(Serialize)]
struct Batch<'a> {
    records: &'a [ShippedRecord],
}

/// Counters of the shipping queue, for the status page and for tests.
#[derive(Debug, Default)]
pub struct ShippingStats {
    /// Records accepted into the queue.
    pub queued: AtomicU64,
    /// Records the log service acknowledged.
    pub delivered: AtomicU64,
    /// Records lost because the queue was full (never queued).
    pub dropped: AtomicU64,
    /// Queued records the log service refused (a 4xx answer): never stored, never sent again.
    pub refused: AtomicU64,
}

/// The queue [`init_with_shipping`] fills, handed to the service that serves: the records
/// waiting, their counters and the Consul name of the service they go to. The runtime starts the
/// shipper with it ([`crate::Service::with_shipping`]) and flushes it at shutdown; it is a value,
/// so no part of the process reaches for it through a global.
pub struct Shipping {
    service: &'static str,
    destination: &'static str,
    stats: Arc<ShippingStats>,
    receiver: mpsc::Receiver<ShippedRecord>,
    level: ShipLevel,
}

impl Shipping {
    /// The counters of this queue, for a status page.
    pub fn stats(&self) -> Arc<ShippingStats> {
        self.stats.clone()
    }

    /// The handle on the least severe level shipped, for the live configuration to move.
    pub fn ship_level(&self) -> ShipLevel {
        self.level.clone()
    }

    /// The Consul name of the service the records are shipped to.
    pub fn destination(&self) -> &'static str {
        self.destination
    }

    /// Starts the task that sends the queued records to the instances of `log` (a pool over the
    /// destination's instances).
    pub(crate) fn start(self, log: ProviderPool) -> Shipper {
        tokio::spawn(
            ship(self.receiver, log, self.service, self.stats.clone()).instrument(shipper_span()),
        );
        Shipper { stats: self.stats }
    }
}

/// A started [`Shipping`], kept by the runtime for the flush at shutdown.
pub(crate) struct Shipper {
    stats: Arc<ShippingStats>,
}

impl Shipper {
    /// Waits until every record queued so far has been delivered or refused, or `limit` has
    /// passed, and returns how many are still waiting. It waits even while no log instance is
    /// known, since one may appear within the limit; the limit keeps a stopping service's last
    /// words ("deregistered", "drained") from becoming a hang.
    pub(crate) async fn flush(&self, limit: Duration) -> u64 {
        let stats = &self.stats;
        let target = stats.queued.load(Ordering::Relaxed);
        // Drops are records that never entered the queue: counting them here would end the wait
        // while queued records are still on their way.
        let settled =
            || stats.delivered.load(Ordering::Relaxed) + stats.refused.load(Ordering::Relaxed);
        let _ = tokio::time::timeout(limit, async {
            while settled() < target {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        target.saturating_sub(settled())
    }
}

/// `RUST_LOG` (default `info`). Connection-level client errors (a client hanging up, junk on the
/// socket) are the serving layer's debug events (`service_runtime::server`), not errors.
fn stderr_filter(rust_log: Option<&str>) -> EnvFilter {
    let directives = rust_log.filter(|d| !d.trim().is_empty()).unwrap_or("info");
    EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("info"))
}

fn stderr_layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let filter = stderr_filter(std::env::var("RUST_LOG").ok().as_deref());
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .with_filter(filter)
}

/// Installs the stderr subscriber only (the log service itself, tools, tests). Later calls are
/// ignored.
pub fn init() {
    let _ = tracing_subscriber::registry()
        .with(stderr_layer())
        .try_init();
}

/// Installs the stderr subscriber plus a layer that queues `service`'s events for the log
/// service, whose Consul name is `destination`. The records wait in the returned queue until the
/// runtime starts shipping them ([`crate::Service::with_shipping`]). When a subscriber was
/// installed already, nothing is queued and the returned queue stays empty.
pub fn init_with_shipping(service: &'static str, destination: &'static str) -> Shipping {
    let level = ShipLevel::new(ship_level_from_env());
    let (sender, receiver) = mpsc::channel(SHIPPING_BUFFER);
    let stats = Arc::new(ShippingStats::default());
    let layer = ShippingLayer {
        service,
        sender,
        stats: stats.clone(),
    }
    .with_filter(level.clone());
    let _ = tracing_subscriber::registry()
        .with(stderr_layer())
        .with(layer)
        .try_init();
    Shipping {
        service,
        destination,
        stats,
        receiver,
        level,
    }
}

/// `GRADEBOOK_SHIP_LEVEL`, else `info` (an unparseable value too, as before it became live).
pub fn ship_level_from_env() -> LevelFilter {
    std::env::var(SHIP_LEVEL_ENV)
        .ok()
        .and_then(|l| parse_ship_level(&l).ok())
        .unwrap_or(LevelFilter::INFO)
}

/// A level name as `GRADEBOOK_SHIP_LEVEL` and the `ship_level` key take it.
pub fn parse_ship_level(text: &str) -> Result<LevelFilter, String> {
    text.trim()
        .parse::<LevelFilter>()
        .map_err(|_| format!("{text:?} is not a level: trace, debug, info, warn, error or off"))
}

/// The least severe level shipped, changeable while the process runs (live configuration).
/// The filter keeps tracing's per-callsite cache: a change rebuilds it, so a filtered-out event
/// still costs nothing on the hot path.
#[derive(Debug, Clone)]
pub struct ShipLevel(Arc<std::sync::atomic::AtomicU8>);

impl ShipLevel {
    fn new(level: LevelFilter) -> ShipLevel {
        ShipLevel(Arc::new(std::sync::atomic::AtomicU8::new(Self::encode(
            level,
        ))))
    }

    /// Ships `level` and more severe from now on.
    pub fn set(&self, level: LevelFilter) {
        if self.0.swap(Self::encode(level), Ordering::Relaxed) != Self::encode(level) {
            tracing::callsite::rebuild_interest_cache();
        }
    }

    /// The level shipped now.
    pub fn get(&self) -> LevelFilter {
        match self.0.load(Ordering::Relaxed) {
            0 => LevelFilter::OFF,
            1 => LevelFilter::ERROR,
            2 => LevelFilter::WARN,
            3 => LevelFilter::INFO,
            4 => LevelFilter::DEBUG,
            _ => LevelFilter::TRACE,
        }
    }

    fn encode(level: LevelFilter) -> u8 {
        match level.into_level() {
            None => 0,
            Some(Level::ERROR) => 1,
            Some(Level::WARN) => 2,
            Some(Level::INFO) => 3,
            Some(Level::DEBUG) => 4,
            Some(Level::TRACE) => 5,
        }
    }
}

impl<S> tracing_subscriber::layer::Filter<S> for ShipLevel {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: &Context<'_, S>) -> bool {
        *metadata.level() <= self.get()
    }

    fn callsite_enabled(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        match *metadata.level() <= self.get() {
            true => tracing::subscriber::Interest::always(),
            false => tracing::subscriber::Interest::never(),
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.get())
    }
}

/// The span the shipper task runs in. Whatever happens inside it (the pool's and the HTTP
/// client's events about each shipment) is caused by shipping, and shipping it would cause
/// another shipment: at debug level an idle instance shipped about 1,500 such records a second.
/// ERROR, so that every level filter lets the layer see it.
fn shipper_span() -> tracing::Span {
    tracing::error_span!(target: SHIPPER_TARGET, SHIPPER_SPAN)
}
const SHIPPER_TARGET: &str = module_path!();
const SHIPPER_SPAN: &str = "shipping";

/// The subscriber layer: formats each event into a record and queues it without waiting.
struct ShippingLayer {
    service: &'static str,
    sender: mpsc::Sender<ShippedRecord>,
    stats: Arc<ShippingStats>,
}

impl<S> Layer<S> for ShippingLayer
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // The shipper's own reports about the log service must not feed back into it.
        if event.metadata().target().starts_with(module_path!()) {
            return;
        }
        let caused_by_shipping = ctx.event_scope(event).is_some_and(|mut scope| {
            scope.any(|span| {
                span.name() == SHIPPER_SPAN && span.metadata().target() == SHIPPER_TARGET
            })
        });
        if caused_by_shipping {
            return;
        }
        let mut message = MessageVisitor::default();
        event.record(&mut message);
        let record = ShippedRecord {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            service: self.service,
            level: level_name(*event.metadata().level()),
            message: message.finish(),
            trace_id: crate::trace::current().map(|trace| trace.trace_id()),
        };
        match self.sender.try_send(record) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

/// Builds `message key=value key=value`, as the stderr lines read.
#[derive(Default)]
struct MessageVisitor {
    message: String,
    fields: String,
}

impl Visit for MessageVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

impl MessageVisitor {
    fn finish(mut self) -> String {
        self.message.push_str(&self.fields);
        if self.message.is_empty() {
            self.message.push_str("(empty event)");
        }
        if self.message.len() > MAX_MESSAGE_BYTES {
            let mut cut = MAX_MESSAGE_BYTES - 3;
            while !self.message.is_char_boundary(cut) {
                cut -= 1;
            }
            self.message.truncate(cut);
            self.message.push_str("...");
        }
        self.message
    }
}

/// The shipper task: waits for a log instance, sends what is queued in batches, and keeps a
/// batch until some instance acknowledges it.
async fn ship(
    mut queue: mpsc::Receiver<ShippedRecord>,
    log: ProviderPool,
    service: &'static str,
    stats: Arc<ShippingStats>,
) {
    let mut providers = log.watch().subscribe();
    let mut batch: Vec<ShippedRecord> = Vec::with_capacity(BATCH);
    let mut reported_drops = 0;
    let mut failures: u32 = 0;
    // One key per batch, the same on every retry of it: the log stores a batch sent again (an
    // answer lost to a timeout) once.
    let mut key = crate::pool::new_idempotency_key();
    loop {
        if batch.is_empty() && queue.recv_many(&mut batch, BATCH).await == 0 {
            return; // every sender is gone: the process is ending
        }
        // Hold on to the batch (and let the queue fill, bounded) while no log instance is known.
        if providers
            .wait_for(|set| !set.providers.is_empty())
            .await
            .is_err()
        {
            return;
        }
        let dropped = stats.dropped.load(Ordering::Relaxed);
        let report_drops = dropped > reported_drops;
        if report_drops {
            tracing::warn!(
                "{} log records were dropped: the shipping buffer of {SHIPPING_BUFFER} was full",
                dropped - reported_drops
            );
            batch.push(ShippedRecord {
                time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                service,
                level: "warn",
                message: format!(
                    "{} log records were dropped while no log instance could take them (buffer of {SHIPPING_BUFFER})",
                    dropped - reported_drops
                ),
                trace_id: None,
            });
        }
        match log
            .post_json_once("/log", &Batch { records: &batch }, &key)
            .await
        {
            Ok(response) if response.status().is_success() => {
                key = crate::pool::new_idempotency_key();
                let shipped = batch.len() as u64 - u64::from(report_drops);
                stats.delivered.fetch_add(shipped, Ordering::Relaxed);
                if report_drops {
                    reported_drops = dropped;
                }
                batch.clear();
                failures = 0;
            }
            Ok(response) if response.status().is_client_error() => {
                // The log service will never take this batch; keeping it would block the rest.
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                tracing::error!(%status, "the log service refused {} records: {body}", batch.len());
                // Counted apart from drops, which the next batch reports as a full buffer.
                stats.refused.fetch_add(
                    batch.len() as u64 - u64::from(report_drops),
                    Ordering::Relaxed,
                );
                batch.clear();
                key = crate::pool::new_idempotency_key();
            }
            outcome => {
                failures += 1;
                if report_drops {
                    batch.pop();
                }
                let reason = match outcome {
                    Ok(response) => response.status().to_string(),
                    Err(err) => err.to_string(),
                };
                if failures == 1 {
                    tracing::warn!(
                        "could not ship {} log records, will retry: {reason}",
                        batch.len()
                    );
                }
                tokio::time::sleep(backoff::delay(
                    failures,
                    Duration::from_millis(100),
                    Duration::from_secs(2),
                ))
                .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    #[test]
    fn the_ship_level_moves_and_parses_as_the_variable_does() {
        let level = ShipLevel::new(LevelFilter::INFO);
        assert_eq!(level.get(), LevelFilter::INFO);
        for wanted in [
            LevelFilter::OFF,
            LevelFilter::ERROR,
            LevelFilter::WARN,
            LevelFilter::DEBUG,
            LevelFilter::TRACE,
        ] {
            level.set(wanted);
            assert_eq!(level.get(), wanted);
        }
        assert_eq!(parse_ship_level(" Debug "), Ok(LevelFilter::DEBUG));
        assert!(
            parse_ship_level("loud")
                .unwrap_err()
                .contains("trace, debug")
        );
    }

    use super::*;

    #[test]
    fn events_become_one_line_with_their_fields() {
        let mut visitor = MessageVisitor::default();
        visitor.message.push_str("registered with Consul");
        visitor.fields.push_str(" port=6000");
        assert_eq!(visitor.finish(), "registered with Consul port=6000");
    }

    /// A log instance that refuses any batch holding a message "refuse me" (422) and stores the
    /// others' messages, registered in `agent` without a check.
    async fn picky_log(agent: &testkit::ConsulAgent) -> Arc<Mutex<Vec<String>>> {
        use warp::Filter;
        let stored = Arc::new(Mutex::new(Vec::new()));
        let kept = stored.clone();
        let route = warp::post()
            .and(warp::path("log"))
            .and(warp::body::json())
            .map(move |batch: serde_json::Value| {
                let messages: Vec<String> = batch["records"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| r["message"].as_str().unwrap_or_default().to_owned())
                    .collect();
                if messages.iter().any(|m| m == "refuse me") {
                    return warp::http::StatusCode::UNPROCESSABLE_ENTITY;
                }
                kept.lock().unwrap().extend(messages);
                warp::http::StatusCode::CREATED
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        agent
            .register(&serde_json::json!({"Name": "log", "ID": "picky", "Address": "127.0.0.1", "Port": port}))
            .await;
        stored
    }

    /// grading's shipper, sending to whatever `log` instances `agent` lists: the queue's sender
    /// and its counters.
    fn start_shipper(
        agent: &testkit::ConsulAgent,
    ) -> (mpsc::Sender<ShippedRecord>, Arc<ShippingStats>) {
        let pool = ProviderPool::new(
            discovery::ProviderWatch::spawn(
                &discovery::ConsulSettings::local(agent.http_addr()),
                "log",
            ),
            crate::runtime::http_client(),
        );
        let (sender, receiver) = mpsc::channel(16);
        let stats = Arc::new(ShippingStats::default());
        tokio::spawn(ship(receiver, pool, "grading", stats.clone()));
        (sender, stats)
    }

    fn record(message: &str) -> ShippedRecord {
        ShippedRecord {
            time: "2026-11-30T00:00:00.000Z".into(),
            service: "grading",
            level: "info",
            message: message.into(),
            trace_id: None,
        }
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        let started = std::time::Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(15), "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_batch_is_counted_as_refused_not_as_a_full_buffer() {
        let agent = testkit::ConsulAgent::start().await;
        let stored = picky_log(&agent).await;
        let (sender, stats) = start_shipper(&agent);

        sender.send(record("refuse me")).await.unwrap();
        until("the batch is refused", || {
            stats.refused.load(Ordering::Relaxed) == 1
        })
        .await;
        sender.send(record("keep me")).await.unwrap();
        until("the record is delivered", || {
            stats.delivered.load(Ordering::Relaxed) == 1
        })
        .await;
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
        // No "records were dropped: the shipping buffer was full" report came with it.
        assert_eq!(*stored.lock().unwrap(), ["keep me"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flush_waits_for_queued_records_while_no_log_instance_is_known_yet() {
        let agent = testkit::ConsulAgent::start().await;
        let watch = discovery::ProviderWatch::spawn(
            &discovery::ConsulSettings::local(agent.http_addr()),
            "log",
        );
        let pool = ProviderPool::new(watch, crate::runtime::http_client());
        let (sender, receiver) = mpsc::channel(16);
        let stats = Arc::new(ShippingStats::default());
        let shipping = Shipping {
            service: "grading",
            destination: "log",
            stats: stats.clone(),
            receiver,
            level: ShipLevel::new(LevelFilter::INFO),
        };
        let shipper = shipping.start(pool);
        // What the layer does for each event it queues.
        sender.send(record("drained; bye")).await.unwrap();
        stats.queued.fetch_add(1, Ordering::Relaxed);

        let mut flush = std::pin::pin!(shipper.flush(Duration::from_secs(30)));
        let first_poll =
            std::future::poll_fn(|cx| std::task::Poll::Ready(flush.as_mut().poll(cx))).await;
        assert!(
            first_poll.is_pending(),
            "flush returned while a record was still waiting for a log instance"
        );
        let stored = picky_log(&agent).await;
        assert_eq!(flush.await, 0, "records left undelivered");
        assert_eq!(*stored.lock().unwrap(), ["drained; bye"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_sent_again_after_a_timeout_carries_the_same_key() {
        use warp::Filter;
        let agent = testkit::ConsulAgent::start().await;
        // A log stand-in that answers its first request only after the shipper has given up on
        // it, and notes every request's key and messages.
        let seen = Arc::new(Mutex::new(Vec::<(Option<String>, serde_json::Value)>::new()));
        let noted = seen.clone();
        let route = warp::post()
            .and(warp::path("log"))
            .and(warp::header::optional::<String>("idempotency-key"))
            .and(warp::body::json())
            .then(move |key: Option<String>, batch: serde_json::Value| {
                let noted = noted.clone();
                async move {
                    let first = {
                        let mut noted = noted.lock().unwrap();
                        noted.push((key, batch["records"].clone()));
                        noted.len() == 1
                    };
                    if first {
                        let late = crate::pool::RETRYABLE_ATTEMPT_TIMEOUT + Duration::from_secs(1);
                        tokio::time::sleep(late).await;
                    }
                    warp::http::StatusCode::CREATED
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        agent
            .register(&serde_json::json!({"Name": "log", "ID": "slow", "Address": "127.0.0.1", "Port": port}))
            .await;
        let (sender, stats) = start_shipper(&agent);

        sender.send(record("sent twice")).await.unwrap();
        until("the batch is delivered", || {
            stats.delivered.load(Ordering::Relaxed) == 1
        })
        .await;
        let seen = seen.lock().unwrap().clone();
        assert!(seen.len() >= 2, "the batch was sent once: {seen:?}");
        let (first_key, first_batch) = &seen[0];
        let first_key = first_key.as_deref().expect("the batch carries a key");
        assert_eq!(first_key.len(), 32, "{first_key}");
        for (key, batch) in &seen[1..] {
            assert_eq!(key.as_deref(), Some(first_key));
            assert_eq!(batch, first_batch);
        }
    }

    /// grading's shipping layer over a queue of `capacity` records, the queue's other end, and
    /// the counters.
    fn grading_layer(
        capacity: usize,
    ) -> (
        ShippingLayer,
        mpsc::Receiver<ShippedRecord>,
        Arc<ShippingStats>,
    ) {
        let (sender, receiver) = mpsc::channel(capacity);
        let stats = Arc::new(ShippingStats::default());
        let layer = ShippingLayer {
            service: "grading",
            sender,
            stats: stats.clone(),
        };
        (layer, receiver, stats)
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (layer, mut receiver, stats) = grading_layer(2);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            for n in 0..5 {
                tracing::info!(target: "grading_service::api", n, "event");
            }
        });
        assert_eq!(stats.queued.load(Ordering::Relaxed), 2);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 3);
        let first = receiver.try_recv().unwrap();
        assert_eq!(
            (first.service, first.level, first.message.as_str()),
            ("grading", "info", "event n=0")
        );
    }

    #[tokio::test]
    async fn an_event_of_a_traced_request_carries_its_trace_id_and_others_none() {
        let (layer, mut receiver, _) = grading_layer(8);
        let subscriber = Arc::new(tracing_subscriber::registry().with(layer));
        let trace = crate::trace::TraceContext::new_trace();
        crate::trace::scope(trace, async {
            tracing::subscriber::with_default(subscriber.clone(), || {
                tracing::info!(target: "grading_service::api", "student added");
            });
        })
        .await;
        tracing::subscriber::with_default(
            subscriber,
            || tracing::info!(target: "service_runtime::runtime", "serving"),
        );
        let traced = receiver.try_recv().unwrap();
        assert_eq!(traced.trace_id, Some(trace.trace_id()));
        let untraced = receiver.try_recv().unwrap();
        assert_eq!(
            (untraced.message.as_str(), untraced.trace_id),
            ("serving", None)
        );
    }

    #[test]
    fn the_shippers_own_events_are_not_shipped() {
        let (layer, mut receiver, _) = grading_layer(8);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            tracing::warn!("could not ship 3 log records, will retry");
        });
        assert!(receiver.try_recv().is_err());
    }

    #[test]
    fn what_happens_while_shipping_is_not_shipped_at_any_level() {
        let (layer, mut receiver, _) = grading_layer(8);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            shipper_span().in_scope(|| {
                let inner = tracing::trace_span!(target: "reqwest::connect", "connect");
                inner.in_scope(|| {
                    tracing::debug!(target: "hyper_util::client::legacy::pool", "reuse idle connection");
                    tracing::error!(target: "service_runtime::pool", "ejected an instance");
                });
            });
            tracing::debug!(target: "hyper_util::client::legacy::pool", "a request of the app's own");
        });
        let shipped = receiver.try_recv().unwrap();
        assert_eq!(shipped.message, "a request of the app's own");
        assert!(receiver.try_recv().is_err());
    }

    #[test]
    fn huge_messages_are_cut_on_a_character_boundary() {
        let visitor = MessageVisitor {
            message: "é".repeat(MAX_MESSAGE_BYTES),
            ..MessageVisitor::default()
        };
        let message = visitor.finish();
        assert!(message.len() <= MAX_MESSAGE_BYTES);
        assert!(message.ends_with("..."));
    }
}
