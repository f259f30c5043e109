//! `GET /metrics` in the Prometheus text exposition format (version 0.0.4), on every service.
//!
//! Requests are counted by route template, method and status, with latency histograms. The
//! counting is on every request's path, so it is a few relaxed atomic additions into a table
//! allocated at start: no lock, no allocation, no formatting. The table is bounded: a path no
//! route template matches counts as `other`, each route and method has a fixed number of status
//! slots (a status beyond them counts as `other`), so no client can grow the number of series.
//! Everything else (dependency pools, watches, the shipping queue, connections, what a service
//! adds with [`crate::Service::with_metrics`]) is read when Prometheus scrapes.

use std::collections::HashMap;
use std::fmt::{Display, Write};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use discovery::watch::WatchStatus;
use warp::Filter;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use crate::pool::ProviderPool;
use crate::runtime::ServiceDefinition;
use crate::server::ConnectionStats;
use crate::telemetry::{SHIPPING_BUFFER, ShippingStats};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the request latency buckets, in microseconds: from the tens of microseconds a
/// cached grading `GET` takes to the seconds of a call that times out.
const LATENCY_BOUNDS_MICROS: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000,
];
const MICROS_PER_SECOND: u64 = 1_000_000;

/// The routes every service serves through the runtime, counted under their own names.
const RUNTIME_ROUTES: &[&str] = &["/health", "/status/connections", "/metrics"];
/// The route label of a path no template matches.
const OTHER_ROUTE: &str = "other";
/// Paths with more segments than this match no template (none has as many).
const MAX_SEGMENTS: usize = 8;

/// The method labels; any other method counts as `other`. `HEAD` is served as `GET` (see
/// `crate::front`) and counts as one.
const METHODS: [(Method, &str); 5] = [
    (Method::GET, "GET"),
    (Method::POST, "POST"),
    (Method::PUT, "PUT"),
    (Method::DELETE, "DELETE"),
    (Method::PATCH, "PATCH"),
];
const METHOD_LABELS: usize = METHODS.len() + 1;

/// Status slots per route and method: a route answers a handful of statuses; the last slot
/// takes any status beyond the others, as `other`.
const STATUS_SLOTS: usize = 8;
const EMPTY_SLOT: u16 = 0;
const OVERFLOW_SLOT: u16 = u16::MAX;

/// Counts of values in fixed buckets, with their sum: the cells of one Prometheus histogram,
/// updated with relaxed atomic additions. The buckets are kept per bucket and made cumulative
/// when rendered, so that a value costs one addition to its bucket and one to the sum.
#[derive(Debug)]
struct Cells {
    /// One per bound, and the last for values above every bound (`+Inf`).
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Cells {
    fn new(bounds: &[u64]) -> Cells {
        Cells {
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    fn record(&self, bounds: &[u64], value: u64) {
        let bucket = bounds.partition_point(|&bound| bound < value);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

/// A histogram of integer values (microseconds, records) for a part of a service to record into
/// and [`Exposition::histogram`] to render. Cheap to clone; clones share the counts.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [u64],
    /// Values per rendered unit: 1,000,000 for microseconds shown as seconds, 1 for counts.
    per_unit: u64,
    cells: Arc<Cells>,
}

impl Histogram {
    /// Buckets with upper bounds `bounds` (ascending), rendered divided by `per_unit`.
    pub fn new(bounds: &'static [u64], per_unit: u64) -> Histogram {
        Histogram {
            bounds,
            per_unit,
            cells: Arc::new(Cells::new(bounds)),
        }
    }

    /// Buckets of durations with upper bounds in microseconds, rendered in seconds.
    pub fn seconds(bounds_micros: &'static [u64]) -> Histogram {
        Histogram::new(bounds_micros, MICROS_PER_SECOND)
    }

    /// Counts one value.
    pub fn record(&self, value: u64) {
        self.cells.record(self.bounds, value);
    }

    /// Counts one duration (for a histogram made with [`Histogram::seconds`]).
    pub fn record_duration(&self, duration: Duration) {
        self.record(duration.as_micros().try_into().unwrap_or(u64::MAX));
    }

    /// How many values were counted.
    pub fn count(&self) -> u64 {
        self.cells.count()
    }
}

/// The text a scrape answers, written metric family by metric family.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a metric family: its `# HELP` and `# TYPE` lines. `kind` is `counter`, `gauge` or
    /// `histogram`.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample line, `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.text.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.text, " {value}");
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// The samples of one histogram with `labels` (its family started with [`Exposition::family`]).
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], histogram: &Histogram) {
        self.cells(
            name,
            labels,
            histogram.bounds,
            histogram.per_unit,
            &histogram.cells,
        );
    }

    fn cells(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        bounds: &[u64],
        per_unit: u64,
        cells: &Cells,
    ) {
        let mut cumulative = 0;
        for (i, bucket) in cells.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = match bounds.get(i) {
                Some(&bound) => Unit(bound, per_unit).to_string(),
                None => "+Inf".to_owned(),
            };
            let _ = write!(self.text, "{name}_bucket");
            self.labels(labels, Some(&le));
            let _ = writeln!(self.text, " {cumulative}");
        }
        let sum = Unit(cells.sum.load(Ordering::Relaxed), per_unit);
        let _ = write!(self.text, "{name}_sum");
        self.labels(labels, None);
        let _ = writeln!(self.text, " {sum}");
        let _ = write!(self.text, "{name}_count");
        self.labels(labels, None);
        let _ = writeln!(self.text, " {cumulative}");
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.text.push('{');
        let le = le.map(|le| ("le", le));
        for (i, (key, value)) in labels.iter().copied().chain(le).enumerate() {
            if i > 0 {
                self.text.push(',');
            }
            self.text.push_str(key);
            self.text.push_str("=\"");
            for c in value.chars() {
                match c {
                    '\\' => self.text.push_str("\\\\"),
                    '"' => self.text.push_str("\\\""),
                    '\n' => self.text.push_str("\\n"),
                    c => self.text.push(c),
                }
            }
            self.text.push('"');
        }
        self.text.push('}');
    }

    /// The text so far.
    pub fn into_text(self) -> String {
        self.text
    }
}

/// An integer divided by `per_unit`, printed without float noise (`0.00005`, not
/// `4.9999999999999996e-5`).
struct Unit(u64, u64);

impl Display for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Unit(value, per_unit) = *self;
        if per_unit == 1 {
            return write!(f, "{value}");
        }
        write!(f, "{}", value as f64 / per_unit as f64)
    }
}

/// Route templates such as `/students/{id}/grades`: a `{...}` segment matches any one non-empty
/// segment, any other segment only itself.
#[derive(Debug)]
struct RouteTemplates {
    names: Vec<&'static str>,
    segments: Vec<Vec<Option<&'static str>>>,
}

impl RouteTemplates {
    fn new(templates: &[&'static str]) -> RouteTemplates {
        let names: Vec<&'static str> = RUNTIME_ROUTES.iter().chain(templates).copied().collect();
        let segments = names
            .iter()
            .map(|template| {
                template
                    .split('/')
                    .skip(1)
                    .map(|segment| (!segment.starts_with('{')).then_some(segment))
                    .collect()
            })
            .collect();
        RouteTemplates { names, segments }
    }

    /// The index of the first template `path` matches; [`RouteTemplates::other`] if none does.
    fn classify(&self, path: &str) -> usize {
        let Some(parts) = Segments::of(path) else {
            return self.other();
        };
        let parts = parts.as_slice();
        self.segments
            .iter()
            .position(|template| {
                template.len() == parts.len()
                    && template.iter().zip(parts).all(|(want, part)| match want {
                        Some(literal) => literal == part,
                        None => !part.is_empty(),
                    })
            })
            .unwrap_or(self.other())
    }

    fn other(&self) -> usize {
        self.names.len()
    }

    fn name(&self, index: usize) -> &'static str {
        self.names.get(index).copied().unwrap_or(OTHER_ROUTE)
    }
}

/// A path's segments, as `path.split('/').skip(1)` gives them, found by one walk over its bytes
/// (the split iterator cost three times as much, on every request).
struct Segments<'a> {
    parts: [&'a str; MAX_SEGMENTS],
    count: usize,
}

impl<'a> Segments<'a> {
    /// `None` for a path that does not begin with `/` or has more than [`MAX_SEGMENTS`].
    fn of(path: &'a str) -> Option<Segments<'a>> {
        let mut segments = Segments {
            parts: [""; MAX_SEGMENTS],
            count: 0,
        };
        let rest = path.strip_prefix('/')?;
        let mut start = 0;
        for (at, byte) in rest.bytes().enumerate() {
            if byte == b'/' {
                segments.push(&rest[start..at])?;
                start = at + 1;
            }
        }
        segments.push(&rest[start..])?;
        Some(segments)
    }

    fn push(&mut self, part: &'a str) -> Option<()> {
        *self.parts.get_mut(self.count)? = part;
        self.count += 1;
        Some(())
    }

    fn as_slice(&self) -> &[&'a str] {
        &self.parts[..self.count]
    }
}

/// One status of one route and method: which status (or none yet) and its latencies.
#[derive(Debug)]
struct StatusSlot {
    status: AtomicU16,
    latency: Cells,
}

/// The row of [`RequestMetrics`] one request counts in (see [`RequestMetrics::row`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestRow(usize);

/// Requests by route template, method and status, with their latencies.
#[derive(Debug)]
pub struct RequestMetrics {
    routes: RouteTemplates,
    /// `STATUS_SLOTS` slots for each method label of each route (and `other`).
    slots: Box<[StatusSlot]>,
}

impl RequestMetrics {
    /// Counts requests to the runtime's own routes, to `templates`, and to anything else as
    /// `other`.
    pub fn new(templates: &[&'static str]) -> RequestMetrics {
        let routes = RouteTemplates::new(templates);
        let rows = (routes.other() + 1) * METHOD_LABELS;
        let slots = (0..rows * STATUS_SLOTS)
            .map(|i| StatusSlot {
                status: AtomicU16::new(match i % STATUS_SLOTS == STATUS_SLOTS - 1 {
                    true => OVERFLOW_SLOT,
                    false => EMPTY_SLOT,
                }),
                latency: Cells::new(LATENCY_BOUNDS_MICROS),
            })
            .collect();
        RequestMetrics { routes, slots }
    }

    /// Where a request with this method and path is counted: looked up when it arrives, so
    /// that nothing of the request need be kept until its answer is counted.
    pub(crate) fn row(&self, method: &Method, path: &str) -> RequestRow {
        let route = self.routes.classify(path);
        let method = METHODS
            .iter()
            .position(|(known, _)| known == method)
            .unwrap_or(METHODS.len());
        RequestRow((route * METHOD_LABELS + method) * STATUS_SLOTS)
    }

    /// Counts one answered request. Lock-free and allocation-free: it runs on every request.
    pub(crate) fn record(&self, row: RequestRow, status: StatusCode, elapsed: Duration) {
        let RequestRow(row) = row;
        let slot = Self::slot(&self.slots[row..row + STATUS_SLOTS], status.as_u16());
        let micros = elapsed.as_micros().try_into().unwrap_or(u64::MAX);
        slot.latency.record(LATENCY_BOUNDS_MICROS, micros);
    }

    /// The slot of `status` in a row: the one holding it, else the first empty one (claimed for
    /// it), else the overflow slot.
    fn slot(row: &[StatusSlot], status: u16) -> &StatusSlot {
        let (overflow, slots) = row.split_last().expect("rows are never empty");
        for slot in slots {
            let mut held = slot.status.load(Ordering::Relaxed);
            if held == EMPTY_SLOT {
                held = match slot.status.compare_exchange(
                    EMPTY_SLOT,
                    status,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return slot,
                    Err(other) => other,
                };
            }
            if held == status {
                return slot;
            }
        }
        overflow
    }

    pub(crate) fn render(&self, out: &mut Exposition) {
        const COUNTER: &str = "gradebook_http_requests_total";
        const LATENCY: &str = "gradebook_http_request_duration_seconds";
        let used: Vec<(usize, &StatusSlot)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.status.load(Ordering::Relaxed) != EMPTY_SLOT)
            .filter(|(_, slot)| slot.latency.count() > 0)
            .collect();
        let labelled = |i: usize, slot: &StatusSlot| {
            let row = i / STATUS_SLOTS;
            let route = self.routes.name(row / METHOD_LABELS);
            let method = METHODS.get(row % METHOD_LABELS).map_or("other", |m| m.1);
            let status = match slot.status.load(Ordering::Relaxed) {
                OVERFLOW_SLOT => "other".to_owned(),
                status => status.to_string(),
            };
            (route, method, status)
        };
        out.family(
            COUNTER,
            "counter",
            "Requests answered, by route template, method and status.",
        );
        for &(i, slot) in &used {
            let (route, method, status) = labelled(i, slot);
            let labels = [("route", route), ("method", method), ("status", &status)];
            out.sample(COUNTER, &labels, slot.latency.count());
        }
        out.family(
            LATENCY,
            "histogram",
            "Time from a request's head to its answer's head, by route template, method and status.",
        );
        for &(i, slot) in &used {
            let (route, method, status) = labelled(i, slot);
            let labels = [("route", route), ("method", method), ("status", &status)];
            out.cells(
                LATENCY,
                &labels,
                LATENCY_BOUNDS_MICROS,
                MICROS_PER_SECOND,
                &slot.latency,
            );
        }
    }
}

/// Something a service adds to its `/metrics` (the log store's fsyncs, say), rendered at scrape.
pub type Source = Arc<dyn Fn(&mut Exposition) + Send + Sync>;

/// What one service instance exposes at `/metrics`: its requests, and, read at scrape time, its
/// dependencies' pools and watches, its shipping queue, its connections and its own sources.
pub struct Registry {
    service: &'static str,
    version: &'static str,
    requests: Arc<RequestMetrics>,
    pools: Arc<Mutex<HashMap<String, ProviderPool>>>,
    connections: ConnectionStats,
    shipping: Option<Arc<ShippingStats>>,
    sources: Vec<Source>,
}

impl Registry {
    /// The metrics of service `service`, counting requests by `templates` and showing the pools
    /// in `pools` as they are at each scrape.
    pub(crate) fn new(
        definition: &ServiceDefinition,
        templates: &[&'static str],
        pools: Arc<Mutex<HashMap<String, ProviderPool>>>,
        connections: ConnectionStats,
        shipping: Option<Arc<ShippingStats>>,
        sources: Vec<Source>,
    ) -> Registry {
        Registry {
            service: definition.name,
            version: definition.version,
            requests: Arc::new(RequestMetrics::new(templates)),
            pools,
            connections,
            shipping,
            sources,
        }
    }

    /// The counter the serving layer records every request into.
    pub(crate) fn requests(&self) -> Arc<RequestMetrics> {
        self.requests.clone()
    }

    /// The whole exposition, as a scrape answers it.
    pub fn render(&self) -> String {
        let mut out = Exposition::default();
        out.family(
            "gradebook_build_info",
            "gauge",
            "Always 1: the service and version of this instance.",
        );
        out.sample(
            "gradebook_build_info",
            &[("service", self.service), ("version", self.version)],
            1,
        );
        self.requests.render(&mut out);
        self.render_connections(&mut out);
        self.render_pools(&mut out);
        self.render_shipping(&mut out);
        for source in &self.sources {
            source(&mut out);
        }
        out.into_text()
    }

    fn render_connections(&self, out: &mut Exposition) {
        let c = self.connections.counts();
        out.single(
            "gradebook_connections_open",
            "gauge",
            "Client connections open now.",
            c.open,
        );
        let counters = [
            ("accepted", c.accepted),
            ("shed", c.shed),
            ("refused", c.refused),
            ("header_timeouts", c.header_timeouts),
            ("body_timeouts", c.body_timeouts),
            ("idle_closed", c.idle_closed),
            ("client_errors", c.client_errors),
            ("accept_errors", c.accept_errors),
        ];
        const NAME: &str = "gradebook_connections_total";
        out.family(
            NAME,
            "counter",
            "Client connections by what happened to them (see /status/connections).",
        );
        for (outcome, value) in counters {
            out.sample(NAME, &[("outcome", outcome)], value);
        }
    }

    fn render_pools(&self, out: &mut Exposition) {
        let mut pools: Vec<(String, ProviderPool)> = self
            .pools
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|(name, pool)| (name.clone(), pool.clone()))
            .collect();
        pools.sort_by(|a, b| a.0.cmp(&b.0));
        let gauges: Vec<_> = pools.iter().map(|(_, pool)| pool.gauges()).collect();
        let sets: Vec<_> = pools
            .iter()
            .map(|(_, pool)| pool.watch().current())
            .collect();
        let each = |out: &mut Exposition,
                    name: &str,
                    kind: &str,
                    help: &str,
                    value: &dyn Fn(usize) -> f64| {
            out.family(name, kind, help);
            for (i, (dependency, _)) in pools.iter().enumerate() {
                out.sample(name, &[("dependency", dependency)], value(i));
            }
        };
        each(
            out,
            "gradebook_dependency_instances",
            "gauge",
            "Instances of the dependency its pool knows (Consul's passing ones).",
            &|i| gauges[i].known as f64,
        );
        each(
            out,
            "gradebook_dependency_instances_ejected",
            "gauge",
            "Instances the pool has ejected after failures, until a probe succeeds.",
            &|i| gauges[i].ejected as f64,
        );
        each(
            out,
            "gradebook_dependency_requests_in_flight",
            "gauge",
            "Requests to the dependency under way.",
            &|i| gauges[i].in_flight as f64,
        );
        each(
            out,
            "gradebook_watch_age_seconds",
            "gauge",
            "How stale the dependency's watched set is: 0 while Consul answers, else the time since it last did.",
            &|i| sets[i].age().as_secs_f64(),
        );
        each(
            out,
            "gradebook_watch_failed_polls_total",
            "counter",
            "Consul queries of the dependency's watch that failed.",
            &|i| sets[i].failed_polls as f64,
        );
        const STATE: &str = "gradebook_watch_state";
        out.family(
            STATE,
            "gauge",
            "1 for the state the dependency's watch is in: starting, live, or stale (Consul away).",
        );
        for ((dependency, _), set) in pools.iter().zip(&sets) {
            let current = match set.status {
                WatchStatus::Starting => "starting",
                WatchStatus::Live => "live",
                WatchStatus::Stale { .. } => "stale",
            };
            for state in ["starting", "live", "stale"] {
                let labels = [("dependency", dependency.as_str()), ("state", state)];
                out.sample(STATE, &labels, u8::from(state == current));
            }
        }
    }

    fn render_shipping(&self, out: &mut Exposition) {
        let Some(stats) = &self.shipping else {
            return;
        };
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let (queued, delivered, refused) = (
            get(&stats.queued),
            get(&stats.delivered),
            get(&stats.refused),
        );
        out.single(
            "gradebook_shipping_queue_records",
            "gauge",
            "Log records queued for the log service and not yet delivered or refused.",
            queued.saturating_sub(delivered + refused),
        );
        out.single(
            "gradebook_shipping_queue_capacity",
            "gauge",
            "Log records the shipping queue holds; more are dropped.",
            SHIPPING_BUFFER,
        );
        const NAME: &str = "gradebook_shipping_records_total";
        out.family(
            NAME,
            "counter",
            "Log records by fate: delivered to the log service, refused by it, or dropped because the queue was full.",
        );
        for (outcome, value) in [
            ("delivered", delivered),
            ("refused", refused),
            ("dropped", get(&stats.dropped)),
        ] {
            out.sample(NAME, &[("outcome", outcome)], value);
        }
    }
}

/// `GET /metrics`: the registry rendered at each scrape.
pub(crate) fn route(
    registry: Arc<Registry>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path("metrics")
        .and(warp::path::end())
        .and(warp::get())
        .map(move || {
            warp::http::Response::builder()
                .header("content-type", CONTENT_TYPE)
                .body(registry.render().into())
                .expect("static headers")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(templates: &[&'static str]) -> RequestMetrics {
        RequestMetrics::new(templates)
    }

    #[test]
    fn paths_count_under_their_template_and_unknown_ones_as_other() {
        let routes =
            RouteTemplates::new(&["/", "/students", "/students/{id}", "/students/{id}/grades"]);
        let name = |path| routes.name(routes.classify(path));
        assert_eq!(name("/"), "/");
        assert_eq!(name("/health"), "/health");
        assert_eq!(name("/students"), "/students");
        assert_eq!(name("/students/7"), "/students/{id}");
        assert_eq!(name("/students/x%2Fy"), "/students/{id}");
        assert_eq!(name("/students/7/grades"), "/students/{id}/grades");
        assert_eq!(name("/students/"), "other");
        assert_eq!(name("/students/7/grades/8/edit/a/b/c/d"), "other");
        assert_eq!(name("/nope"), "other");
        assert_eq!(name(""), "other");
    }

    #[test]
    fn a_status_beyond_the_slots_counts_as_other() {
        let metrics = requests(&["/a"]);
        for status in 200..200 + STATUS_SLOTS as u16 + 3 {
            let status = StatusCode::from_u16(status).unwrap();
            let row = metrics.row(&Method::GET, "/a");
            metrics.record(row, status, Duration::from_micros(70));
        }
        let mut out = Exposition::default();
        metrics.render(&mut out);
        let text = out.into_text();
        let counted: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("gradebook_http_requests_total{"))
            .collect();
        assert_eq!(counted.len(), STATUS_SLOTS, "{text}");
        assert!(
            text.contains(
                "gradebook_http_requests_total{route=\"/a\",method=\"GET\",status=\"other\"} 4"
            ),
            "{text}"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_their_sum_in_seconds() {
        let histogram = Histogram::seconds(&[100, 1_000]);
        for micros in [50, 100, 500, 5_000] {
            histogram.record(micros);
        }
        let mut out = Exposition::default();
        out.histogram("h", &[("a", "x\"y")], &histogram);
        assert_eq!(
            out.into_text(),
            "h_bucket{a=\"x\\\"y\",le=\"0.0001\"} 2\n\
             h_bucket{a=\"x\\\"y\",le=\"0.001\"} 3\n\
             h_bucket{a=\"x\\\"y\",le=\"+Inf\"} 4\n\
             h_sum{a=\"x\\\"y\"} 0.00565\n\
             h_count{a=\"x\\\"y\"} 4\n"
        );
    }
}
