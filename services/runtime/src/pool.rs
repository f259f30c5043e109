//! Spreads requests over the passing providers of one dependency, and stops sending to the ones
//! that misbehave.
//!
//! Each request goes to the less busy of two randomly chosen providers ("power of two choices" on
//! requests in flight), which avoids both the herd effect of "least busy" and the blindness of
//! round robin.
//!
//! # Outlier detection
//! Consul's check only asks `/health`; an instance can pass it and still hang, answer 5xx or
//! junk, or stream an endless body. So each provider carries its own circuit breaker, fed by
//! every request: a refused or reset connection ejects it at once (it is gone);
//! [`FAILURES_TO_EJECT`] consecutive failures of any other kind (no answer within the call's
//! time limit, a 5xx, an answer larger than the call allows, an answer the caller cannot decode)
//! eject it too. An ejected provider gets no requests for [`FIRST_EJECTION`], doubled on each
//! ejection in a row up to [`EJECTION_LIMIT`]; then exactly one real request goes to it as a
//! probe ("half open"): success brings it back, failure ejects it again for longer. A new
//! answer from Consul that still lists it makes it due for a probe at once.
//!
//! When every listed provider is ejected and none is due for a probe, the pool fails at once
//! with [`PoolError::Ejected`] (services answer 503 naming the dependency) rather than send
//! users' requests to instances known to fail; the probes still go out as they fall due, so the
//! dependency comes back by itself. With no provider at all it fails at once with
//! [`PoolError::NoProvider`].
//!
//! # Retries, limits
//! A failed attempt moves to another provider when that is safe: a refused connection never
//! reached the server, so always; anything after sending only for idempotent methods, and for a
//! POST that carries an `Idempotency-Key` ([`Call::post_json_once`]), which the server applies at
//! most once whichever instance gets it. A [`Call`] carries its own [`CallLimits`]: a time limit
//! per attempt, covering the whole answer, and a cap on the answer's size, enforced while the
//! body streams in, so no more than the cap is ever held. [`ProviderPool::call`] reads the
//! answer and hands it to the caller's judge, whose verdict that an answer is junk counts as a
//! failure of that provider like any other.
//!
//! A read that only one instance can answer (each log instance keeps its own records) goes to
//! that instance by its Consul service ID ([`Call::to_instance`]), under the same rules except
//! failover.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::{Method, Response, StatusCode};
// tokio's clock for ejections, so that tests can run it paused.
use tokio::time::Instant;
use tracing::{info, warn};

use discovery::watch::{Provider, ProviderWatch};

/// How long a provider stays ejected the first time; each ejection in a row doubles it.
pub const FIRST_EJECTION: Duration = Duration::from_secs(1);
/// The longest a provider stays ejected before a probe is sent to it.
pub const EJECTION_LIMIT: Duration = Duration::from_secs(30);
/// Consecutive failures (other than a refused or reset connection, which ejects at once) that
/// eject a provider. More than one, so a single slow answer does not take an instance out.
pub const FAILURES_TO_EJECT: u32 = 3;
/// How many providers one request may try before giving up.
const MAX_ATTEMPTS: usize = 3;
/// How long one attempt of a request that may be sent again waits for its answer, when the
/// caller sends through the [`Response`] methods rather than a [`Call`] with its own limits.
/// Every call between the services answers in milliseconds; three attempts still fit in the
/// 10 s a caller waits in all.
pub const RETRYABLE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// The header naming one logical request, so that sending it again is safe.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A fresh key for [`Call::post_json_once`]: 128 random bits in hex. It names a request (it is
/// no secret), so a fast non-cryptographic generator will do.
pub fn new_idempotency_key() -> String {
    crate::trace::lower_hex(&fastrand::u128(..).to_be_bytes())
}

/// What one attempt of a call may take: its time until the whole answer is in, and the most
/// bytes the answer's body may have. Chosen per call by the caller, who knows what it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    pub timeout: Duration,
    pub max_answer_bytes: usize,
}

/// How one attempt at one provider failed.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    /// Refused, or reset before an answer: the provider is gone or going.
    #[error("connection failed: {0}")]
    Connection(#[source] reqwest::Error),
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("answer larger than the {0} bytes this call allows")]
    TooLarge(usize),
    /// The caller's judge could not use the answer.
    #[error("answered junk: {0}")]
    Junk(String),
    #[error("{0}")]
    Exchange(#[source] reqwest::Error),
}

impl Fault {
    /// `err` of an attempt limited to `limit`.
    fn from_reqwest(err: reqwest::Error, limit: Duration) -> Fault {
        if err.is_connect() || is_dropped_connection(&err) {
            Fault::Connection(err)
        } else if err.is_timeout() {
            // The client's own limit, when it is the shorter.
            Fault::Timeout(limit)
        } else {
            Fault::Exchange(err)
        }
    }

    /// The provider is certainly gone: eject it now rather than after a few more failures.
    fn is_hard(&self) -> bool {
        matches!(self, Fault::Connection(_))
    }

    /// The request certainly never reached the server, so any method may be sent again.
    fn never_sent(&self) -> bool {
        matches!(self, Fault::Connection(err) if err.is_connect())
    }

    /// The dependency is not there to answer, rather than answering wrong: callers answer 503.
    fn is_unavailability(&self) -> bool {
        matches!(self, Fault::Connection(_) | Fault::Timeout(_))
    }
}

/// Why a request through the pool failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Consul lists no passing instance of the dependency (or has not answered yet).
    #[error("no healthy {service} instance is available")]
    NoProvider { service: String },
    /// Every instance that could take the request is ejected after failing, and none is due for
    /// a probe yet.
    #[error("every {service} instance that could answer is ejected after failing")]
    Ejected { service: String },
    /// Every instance tried failed; `address` and `fault` are the last one's.
    #[error("every {service} instance tried failed; last, {address}: {fault}")]
    AllFailed {
        service: String,
        address: String,
        #[source]
        fault: Fault,
    },
    /// The instance took the request but the exchange failed (a timeout, say): not retried,
    /// because the request may have had its effect.
    #[error("request to {service} at {address} failed: {fault}")]
    Request {
        service: String,
        address: String,
        #[source]
        fault: Fault,
    },
    /// No passing provider has the Consul service ID asked for ([`Call::to_instance`]).
    #[error("no healthy {service} instance has the ID {id:?}")]
    NotListed { service: String, id: String },
}

impl PoolError {
    /// True when the dependency is unavailable rather than misbehaving: callers answer 503.
    pub fn is_unavailable(&self) -> bool {
        match self {
            PoolError::NoProvider { .. } | PoolError::Ejected { .. } => true,
            PoolError::NotListed { .. } => true,
            PoolError::AllFailed { fault, .. } => fault.is_unavailability(),
            PoolError::Request { .. } => false,
        }
    }
}

/// A body to send, kept as bytes so a failed-over request can be sent again.
#[derive(Debug, Clone)]
pub struct Payload {
    pub content_type: &'static str,
    pub bytes: Bytes,
}

impl Payload {
    /// `value` as a JSON body.
    fn json<T: serde::Serialize + ?Sized>(value: &T) -> Payload {
        let bytes =
            serde_json::to_vec(value).expect("serializing our own request types cannot fail");
        Payload {
            content_type: "application/json",
            bytes: bytes.into(),
        }
    }
}

/// One request to a dependency with the limits that fit it, for [`ProviderPool::call`].
#[derive(Debug, Clone)]
pub struct Call<'a> {
    method: Method,
    path_and_query: &'a str,
    payload: Option<Payload>,
    idempotency_key: Option<&'a str>,
    instance: Option<&'a str>,
    limits: CallLimits,
}

impl<'a> Call<'a> {
    /// A GET for `path_and_query` (starting with `/`).
    pub fn get(path_and_query: &'a str, limits: CallLimits) -> Self {
        Self::new(Method::GET, path_and_query, None, limits)
    }

    /// `value` as a JSON PUT body; a PUT is idempotent, so it fails over like a GET.
    pub fn put_json<T: serde::Serialize + ?Sized>(
        path_and_query: &'a str,
        value: &T,
        limits: CallLimits,
    ) -> Self {
        Self::new(
            Method::PUT,
            path_and_query,
            Some(Payload::json(value)),
            limits,
        )
    }

    /// A DELETE, idempotent like a GET.
    pub fn delete(path_and_query: &'a str, limits: CallLimits) -> Self {
        Self::new(Method::DELETE, path_and_query, None, limits)
    }

    /// `value` as a JSON POST body with `Idempotency-Key: key`. The server applies a request at
    /// most once per key, so unlike a plain POST this one moves to another instance when the
    /// first fails after sending: the one that did the work answers again with what it did.
    /// Use a new key per logical request ([`new_idempotency_key`]).
    pub fn post_json_once<T: serde::Serialize + ?Sized>(
        path_and_query: &'a str,
        value: &T,
        key: &'a str,
        limits: CallLimits,
    ) -> Self {
        let mut call = Self::new(
            Method::POST,
            path_and_query,
            Some(Payload::json(value)),
            limits,
        );
        call.idempotency_key = Some(key);
        call
    }

    /// The same call, sent only to the provider whose Consul service ID is `id`, for reads only
    /// that instance can answer: no failover, since another instance would answer about other
    /// data.
    pub fn to_instance(mut self, id: &'a str) -> Self {
        self.instance = Some(id);
        self
    }

    fn new(
        method: Method,
        path_and_query: &'a str,
        payload: Option<Payload>,
        limits: CallLimits,
    ) -> Self {
        Call {
            method,
            path_and_query,
            payload,
            idempotency_key: None,
            instance: None,
            limits,
        }
    }

    fn is_idempotent(&self) -> bool {
        self.idempotency_key.is_some()
            || matches!(
                self.method,
                Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
            )
    }
}

/// An answer read whole within its call's limits: a status below 500 and its body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// A judge's verdict that an answer is of no use: the provider is misbehaving, and this counts
/// as its failure.
#[derive(Debug)]
pub struct Junk(pub String);

/// A pool's state at one moment (see [`ProviderPool::gauges`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGauges {
    /// Instances in the watch's current set.
    pub known: usize,
    /// Of those, the ones ejected (or being probed) after failures.
    pub ejected: usize,
    /// Requests under way to any of them.
    pub in_flight: usize,
}

/// Requests to one dependency, spread over its passing providers. Cheap to clone.
#[derive(Clone)]
pub struct ProviderPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    watch: ProviderWatch,
    /// The dependency's name, for errors and log lines.
    service: Arc<str>,
    http: reqwest::Client,
    endpoints: RwLock<Endpoints>,
}

/// The endpoints of one generation of the watch's set. Every request reads them: one shared
/// list (one reference count to take) rather than a copy per request.
struct Endpoints {
    generation: u64,
    list: Arc<[Arc<Endpoint>]>,
}

struct Endpoint {
    provider: Provider,
    base_url: String,
    /// `base_url` parsed once: parsing it per request (the host above all) was an eighth of the
    /// portal's instructions per page. `None` if it does not parse; requests then fail as before.
    base: Option<reqwest::Url>,
    /// The `Host` header the client would write for `base`, made once: hyper formats it per
    /// request when it is missing (some 3,000 instructions a call).
    host: Option<reqwest::header::HeaderValue>,
    in_flight: AtomicUsize,
    breaker: Mutex<Breaker>,
    /// The breaker is serving with no failure counted: what it is nearly always, read without
    /// its lock on every request. Written under the lock whenever the breaker changes.
    clean: AtomicBool,
}

/// One provider's circuit breaker (see the module docs).
#[derive(Debug, Default)]
struct Breaker {
    state: BreakerState,
    /// Failures in a row while serving.
    failures: u32,
    /// Ejections in a row, which set the next ejection's length.
    ejections: u32,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum BreakerState {
    #[default]
    Serving,
    Ejected {
        until: Instant,
    },
    /// One request is out as a probe; no other is sent until it ends.
    Probing,
}

/// What an attempt may be: an ordinary request, or the one probe of an ejected provider.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Ordinary,
    Probe,
}

impl Endpoint {
    fn new(provider: &Provider) -> Endpoint {
        let base_url = format!("http://{}", provider.address);
        let base = reqwest::Url::parse(&base_url).ok();
        Endpoint {
            provider: provider.clone(),
            host: base.as_ref().and_then(host_header),
            base,
            base_url,
            in_flight: AtomicUsize::new(0),
            breaker: Mutex::new(Breaker::default()),
            clean: AtomicBool::new(true),
        }
    }

    /// The breaker, locked; [`Breaker::unlock`] keeps [`Endpoint::clean`] true to it.
    fn breaker(&self) -> BreakerGuard<'_> {
        BreakerGuard {
            breaker: self.breaker.lock().expect("not poisoned"),
            clean: &self.clean,
        }
    }

    /// Whether the breaker serves; without its lock while it is clean. Both workers ask this of
    /// every provider on every request, and a lock would bounce between them.
    fn is_serving(&self) -> bool {
        self.clean.load(Ordering::Relaxed) || self.breaker().state == BreakerState::Serving
    }

    /// Takes the probe of an ejected provider whose ejection is over; false if it is serving,
    /// still ejected, or already being probed.
    fn claim_probe(&self, now: Instant) -> bool {
        if self.clean.load(Ordering::Relaxed) {
            return false;
        }
        let mut breaker = self.breaker();
        match breaker.state {
            BreakerState::Ejected { until } if until <= now => {
                breaker.state = BreakerState::Probing;
                true
            }
            _ => false,
        }
    }

    /// Feeds one attempt's outcome to the breaker. An outcome of an ordinary request that
    /// started before an ejection is ignored: only the probe decides an ejected provider's fate.
    fn record(&self, role: Role, fault: Option<&Fault>, service: &str) {
        if fault.is_none() && role == Role::Ordinary && self.clean.load(Ordering::Relaxed) {
            // A success leaves a clean breaker as it is.
            return;
        }
        let mut breaker = self.breaker();
        let probing = match (role, breaker.state) {
            (Role::Probe, BreakerState::Probing) => true,
            (Role::Ordinary, BreakerState::Serving) => false,
            // A request that started before the ejection, or a probe overtaken by a new
            // answer from Consul: it says nothing about the provider now.
            _ => return,
        };
        let Some(fault) = fault else {
            if probing {
                info!(provider = %self.provider.address, "{service}: {} answered its probe: back in use", self.provider.address);
            }
            *breaker = Breaker::default();
            return;
        };
        breaker.failures += 1;
        if probing || fault.is_hard() || breaker.failures >= FAILURES_TO_EJECT {
            let length = ejection_length(breaker.ejections);
            warn!(
                provider = %self.provider.address,
                "{service}: ejecting {} for {length:?} after {} failure(s) in a row; last: {fault}",
                self.provider.address, breaker.failures
            );
            breaker.state = BreakerState::Ejected {
                until: Instant::now() + length,
            };
            breaker.ejections = breaker.ejections.saturating_add(1);
            breaker.failures = 0;
        }
    }

    /// A probe that ended without an outcome (its caller gave up): due for another at once.
    fn abandon_probe(&self) {
        let mut breaker = self.breaker();
        if breaker.state == BreakerState::Probing {
            breaker.state = BreakerState::Ejected {
                until: Instant::now(),
            };
        }
    }

    /// Consul listed the provider again in a new answer: if ejected, probe it now.
    fn relisted(&self) {
        let mut breaker = self.breaker();
        if let BreakerState::Ejected { .. } = breaker.state {
            breaker.state = BreakerState::Ejected {
                until: Instant::now(),
            };
        }
    }
}

/// The `Host` header for requests to `base`, as hyper writes it: the host, and the port unless
/// it is the scheme's default.
fn host_header(base: &reqwest::Url) -> Option<reqwest::header::HeaderValue> {
    let host = base.host_str()?;
    let value = match base.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    reqwest::header::HeaderValue::try_from(value).ok()
}

/// A locked breaker that, when released, records in [`Endpoint::clean`] whether it is clean.
struct BreakerGuard<'a> {
    breaker: std::sync::MutexGuard<'a, Breaker>,
    clean: &'a AtomicBool,
}

impl std::ops::Deref for BreakerGuard<'_> {
    type Target = Breaker;

    fn deref(&self) -> &Breaker {
        &self.breaker
    }
}

impl std::ops::DerefMut for BreakerGuard<'_> {
    fn deref_mut(&mut self) -> &mut Breaker {
        &mut self.breaker
    }
}

impl Drop for BreakerGuard<'_> {
    fn drop(&mut self) {
        let clean = self.breaker.state == BreakerState::Serving && self.breaker.failures == 0;
        self.clean.store(clean, Ordering::Relaxed);
    }
}

/// [`FIRST_EJECTION`] doubled per earlier ejection in a row, at most [`EJECTION_LIMIT`].
fn ejection_length(earlier: u32) -> Duration {
    FIRST_EJECTION
        .saturating_mul(1 << earlier.min(16))
        .min(EJECTION_LIMIT)
}

/// Counts a request in flight for as long as it lives, and hands its outcome to the breaker; a
/// probe dropped before its outcome (the caller gave up) leaves the provider due for another.
struct Attempt {
    endpoint: Arc<Endpoint>,
    role: Role,
    recorded: bool,
}

impl Attempt {
    fn start(endpoint: Arc<Endpoint>, role: Role) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Attempt {
            endpoint,
            role,
            recorded: false,
        }
    }

    fn finish(mut self, fault: Option<&Fault>, service: &str) {
        self.endpoint.record(self.role, fault, service);
        self.recorded = true;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !self.recorded && self.role == Role::Probe {
            self.endpoint.abandon_probe();
        }
    }
}

impl ProviderPool {
    /// A pool over `watch`, sending through `http` (one shared client keeps connections pooled).
    pub fn new(watch: ProviderWatch, http: reqwest::Client) -> Self {
        let service = watch.current().service;
        ProviderPool {
            inner: Arc::new(PoolInner {
                watch,
                service,
                http,
                endpoints: RwLock::new(Endpoints {
                    generation: 0,
                    list: Arc::from([]),
                }),
            }),
        }
    }

    /// The watch behind this pool, e.g. to show its providers on a status page.
    pub fn watch(&self) -> &ProviderWatch {
        &self.inner.watch
    }

    /// How many instances the pool knows, how many of them it has ejected, and how many
    /// requests are under way: read at each scrape of `/metrics`.
    pub fn gauges(&self) -> PoolGauges {
        let endpoints = self.endpoints();
        PoolGauges {
            known: endpoints.len(),
            ejected: endpoints.iter().filter(|e| !e.is_serving()).count(),
            in_flight: endpoints
                .iter()
                .map(|e| e.in_flight.load(Ordering::Relaxed))
                .sum(),
        }
    }

    /// Sends `call`, reads the answer within the call's limits and gives it to `judge`. A 5xx,
    /// an answer over the size cap, no whole answer in time, or the judge's [`Junk`] count as
    /// the provider's failure and, where safe, move the call to another provider. Whatever the
    /// judge accepts (a 404 it turns into "not found", say) is the call's result.
    pub async fn call<T>(
        &self,
        call: Call<'_>,
        judge: impl Fn(Answer) -> Result<T, Junk>,
    ) -> Result<T, PoolError> {
        let limits = call.limits;
        let judge = &judge;
        self.run(&call, move |response| async move {
            let status = response.status();
            let body = read_capped(response, limits).await?;
            judge(Answer { status, body }).map_err(|Junk(why)| Fault::Junk(why))
        })
        .await
    }

    /// Sends a GET for `path_and_query` (starting with `/`). The [`Response`] methods leave the
    /// body to the caller, unread and uncapped: for small answers of our own services only
    /// (log shipping); prefer [`ProviderPool::call`].
    pub async fn get(&self, path_and_query: &str) -> Result<Response, PoolError> {
        self.send(Method::GET, path_and_query, None).await
    }

    /// Sends `value` as a JSON POST body.
    pub async fn post_json<T: serde::Serialize + ?Sized>(
        &self,
        path_and_query: &str,
        value: &T,
    ) -> Result<Response, PoolError> {
        self.send(Method::POST, path_and_query, Some(Payload::json(value)))
            .await
    }

    /// Sends `value` as a JSON POST body with `Idempotency-Key: key`, failing over like a GET
    /// (see [`Call::post_json_once`]).
    pub async fn post_json_once<T: serde::Serialize + ?Sized>(
        &self,
        path_and_query: &str,
        value: &T,
        key: &str,
    ) -> Result<Response, PoolError> {
        let call = Call::post_json_once(path_and_query, value, key, RESPONSE_LIMITS);
        self.run(&call, |response| async move { Ok(response) })
            .await
    }

    /// Sends a request to one provider, failing over as described in the module docs. A 5xx
    /// counts as a failure; any other status is the caller's to interpret.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        payload: Option<Payload>,
    ) -> Result<Response, PoolError> {
        let mut call = Call::new(method, path_and_query, payload, RESPONSE_LIMITS);
        if !call.is_idempotent() {
            // What the client waits in all: a request that is not sent again gets all of it.
            call.limits.timeout = Duration::from_secs(10);
        }
        self.run(&call, |response| async move { Ok(response) })
            .await
    }

    /// Sends `call` to one provider after another until one gives what `finish` accepts, as
    /// described in the module docs.
    async fn run<T, Finish, Finished>(
        &self,
        call: &Call<'_>,
        finish: Finish,
    ) -> Result<T, PoolError>
    where
        Finish: Fn(Response) -> Finished,
        Finished: Future<Output = Result<T, Fault>>,
    {
        let idempotent = call.is_idempotent();
        let attempts = if call.instance.is_some() {
            1
        } else {
            MAX_ATTEMPTS
        };
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        let mut last_failure = None;
        while tried.len() < attempts {
            let (endpoint, role) = match self.choose(call.instance, &tried)? {
                Some(chosen) => chosen,
                None => break,
            };
            let attempt = Attempt::start(endpoint.clone(), role);
            let outcome = tokio::time::timeout(call.limits.timeout, async {
                let response = self
                    .request(&endpoint, call)
                    .send()
                    .await
                    .map_err(|err| Fault::from_reqwest(err, call.limits.timeout))?;
                if response.status().is_server_error() {
                    return Err(Fault::Status(response.status()));
                }
                finish(response).await
            })
            .await
            .unwrap_or(Err(Fault::Timeout(call.limits.timeout)));
            let fault = match outcome {
                Ok(done) => {
                    attempt.finish(None, &self.inner.service);
                    return Ok(done);
                }
                Err(fault) => fault,
            };
            attempt.finish(Some(&fault), &self.inner.service);
            let address = endpoint.provider.address.clone();
            if !idempotent && !fault.never_sent() {
                return Err(PoolError::Request {
                    service: self.service(),
                    address,
                    fault,
                });
            }
            tried.push(endpoint);
            last_failure = Some((address, fault));
        }
        Err(match last_failure {
            Some((address, fault)) => PoolError::AllFailed {
                service: self.service(),
                address,
                fault,
            },
            None => PoolError::NoProvider {
                service: self.service(),
            },
        })
    }

    fn request(&self, endpoint: &Endpoint, call: &Call<'_>) -> reqwest::RequestBuilder {
        let mut request = match &endpoint.base {
            Some(base) => {
                // Only the path and query are new; the scheme and host stay parsed.
                let mut url = base.clone();
                let (path, query) = match call.path_and_query.split_once('?') {
                    Some((path, query)) => (path, Some(query)),
                    None => (call.path_and_query, None),
                };
                url.set_path(path);
                url.set_query(query);
                let request = self.inner.http.request(call.method.clone(), url);
                match &endpoint.host {
                    Some(host) => request.header(reqwest::header::HOST, host.clone()),
                    None => request,
                }
            }
            None => {
                let url = format!("{}{}", endpoint.base_url, call.path_and_query);
                self.inner.http.request(call.method.clone(), url)
            }
        };
        if let Some(payload) = &call.payload {
            request = request
                .header(reqwest::header::CONTENT_TYPE, payload.content_type)
                .body(payload.bytes.clone());
        }
        if let Some(key) = call.idempotency_key {
            request = request.header(IDEMPOTENCY_KEY, key);
        }
        // The request being served goes on in the called service, as a new span of its trace.
        if let Some(trace) = crate::trace::current() {
            request = request.header(crate::trace::TRACEPARENT, trace.child().header_value());
        }
        request
    }

    fn service(&self) -> String {
        self.inner.service.to_string()
    }

    /// The provider for the next attempt, not among `tried` (only the one named `instance`,
    /// when given): first an ejected one due for its probe, so that a recovered instance comes
    /// back; else the less busy of two random serving ones. `None` when every provider was
    /// tried; an error when there is none to try at all, or all left are ejected.
    fn choose(
        &self,
        instance: Option<&str>,
        tried: &[Arc<Endpoint>],
    ) -> Result<Option<(Arc<Endpoint>, Role)>, PoolError> {
        let endpoints = self.endpoints();
        let now = Instant::now();
        let untried: Vec<&Arc<Endpoint>> = endpoints
            .iter()
            .filter(|e| instance.is_none_or(|id| e.provider.id == id))
            .filter(|e| !tried.iter().any(|t| Arc::ptr_eq(t, e)))
            .collect();
        if untried.is_empty() {
            return match (instance, tried.is_empty()) {
                (_, false) => Ok(None),
                (Some(id), true) => Err(PoolError::NotListed {
                    service: self.service(),
                    id: id.to_owned(),
                }),
                (None, true) => Err(PoolError::NoProvider {
                    service: self.service(),
                }),
            };
        }
        if let Some(due) = untried.iter().find(|e| e.claim_probe(now)) {
            return Ok(Some(((*due).clone(), Role::Probe)));
        }
        let serving: Vec<&Arc<Endpoint>> = untried.into_iter().filter(|e| e.is_serving()).collect();
        let chosen = match serving.len() {
            0 if tried.is_empty() => {
                return Err(PoolError::Ejected {
                    service: self.service(),
                });
            }
            0 => return Ok(None),
            1 => serving[0].clone(),
            n => {
                let first = fastrand::usize(..n);
                let second = (first + 1 + fastrand::usize(..n - 1)) % n;
                let (a, b) = (serving[first], serving[second]);
                let busy = |e: &Endpoint| e.in_flight.load(Ordering::Relaxed);
                if busy(b) < busy(a) {
                    b.clone()
                } else {
                    a.clone()
                }
            }
        };
        Ok(Some((chosen, Role::Ordinary)))
    }

    /// The endpoints for the watch's current set, rebuilt only when the set changed. Endpoints
    /// that stay keep their in-flight count and breaker; being listed in a new answer from
    /// Consul makes an ejected one due for its probe.
    fn endpoints(&self) -> Arc<[Arc<Endpoint>]> {
        let generation = self.inner.watch.generation();
        {
            let endpoints = self.inner.endpoints.read().expect("not poisoned");
            if endpoints.generation == generation {
                return endpoints.list.clone();
            }
        }
        let set = self.inner.watch.current();
        let mut endpoints = self.inner.endpoints.write().expect("not poisoned");
        if endpoints.generation != set.generation {
            let mut old: HashMap<&Provider, &Arc<Endpoint>> =
                endpoints.list.iter().map(|e| (&e.provider, e)).collect();
            let list = set
                .providers
                .iter()
                .map(|provider| match old.remove(provider) {
                    Some(kept) => {
                        kept.relisted();
                        kept.clone()
                    }
                    None => Arc::new(Endpoint::new(provider)),
                })
                .collect();
            *endpoints = Endpoints {
                generation: set.generation,
                list,
            };
        }
        endpoints.list.clone()
    }
}

/// The limits of the [`Response`] methods, which do not read the body: only the time to the
/// answer's head counts.
const RESPONSE_LIMITS: CallLimits = CallLimits {
    timeout: RETRYABLE_ATTEMPT_TIMEOUT,
    max_answer_bytes: usize::MAX,
};

/// The body of `response`, failing as soon as it would pass `max` bytes: an announced length
/// over the cap is refused before reading, and a streamed body is never held beyond the cap.
/// Dropping the response then closes the connection, so the rest is never read.
async fn read_capped(mut response: Response, limits: CallLimits) -> Result<Bytes, Fault> {
    let max = limits.max_answer_bytes;
    if response
        .content_length()
        .is_some_and(|length| length > max as u64)
    {
        return Err(Fault::TooLarge(max));
    }
    // Most answers come in one chunk: kept as it is, and copied only when a second follows.
    let mut first = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| Fault::from_reqwest(err, limits.timeout))?
    {
        let held = joined.as_ref().map_or(first.len(), BytesMut::len);
        if held + chunk.len() > max {
            return Err(Fault::TooLarge(max));
        }
        match &mut joined {
            Some(body) => body.extend_from_slice(&chunk),
            None if first.is_empty() => first = chunk,
            None => {
                let mut body = BytesMut::with_capacity(first.len() + chunk.len());
                body.extend_from_slice(&first);
                body.extend_from_slice(&chunk);
                joined = Some(body);
            }
        }
    }
    Ok(joined.map_or(first, BytesMut::freeze))
}

/// A connection that broke before a response came: reset, closed early, or an incomplete
/// message. Distinguished from a timeout, where the server may still be working.
fn is_dropped_connection(err: &reqwest::Error) -> bool {
    !err.is_timeout() && (err.is_request() || err.is_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Arc<Endpoint> {
        Arc::new(Endpoint::new(&Provider {
            address: "127.0.0.1:6001".into(),
            id: "grading-127.0.0.1-6001".into(),
        }))
    }

    /// What the pool may send `endpoint` now, as [`ProviderPool::choose`] asks: its one probe
    /// when an ejection is over, ordinary requests while it serves, nothing while it is ejected
    /// or its probe is out.
    fn offered(endpoint: &Endpoint) -> Option<Role> {
        if endpoint.claim_probe(Instant::now()) {
            Some(Role::Probe)
        } else if endpoint.is_serving() {
            Some(Role::Ordinary)
        } else {
            None
        }
    }

    fn answered(endpoint: &Endpoint, role: Role, status: StatusCode) {
        let fault = (!status.is_success()).then_some(Fault::Status(status));
        endpoint.record(role, fault.as_ref(), "grading");
    }

    /// Waits until the pool offers `endpoint` something, and says how long that took (to 10 ms,
    /// paused time); nothing may be offered before.
    async fn time_to_probe(endpoint: &Endpoint) -> Duration {
        let start = Instant::now();
        loop {
            match offered(endpoint) {
                None => tokio::time::sleep(Duration::from_millis(10)).await,
                Some(Role::Probe) => return start.elapsed(),
                Some(Role::Ordinary) => panic!("served again without a probe"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_provider_gets_nothing_for_a_second_then_exactly_one_probe() {
        let provider = endpoint();
        for _ in 0..FAILURES_TO_EJECT - 1 {
            answered(&provider, Role::Ordinary, StatusCode::BAD_GATEWAY);
            assert_eq!(
                offered(&provider),
                Some(Role::Ordinary),
                "one 5xx ejects nobody"
            );
        }
        answered(&provider, Role::Ordinary, StatusCode::BAD_GATEWAY);

        assert_eq!(time_to_probe(&provider).await, FIRST_EJECTION);
        assert_eq!(
            offered(&provider),
            None,
            "one probe at a time, nothing beside it"
        );
        // A request that started before the ejection and ends now decides nothing.
        answered(&provider, Role::Ordinary, StatusCode::OK);
        assert_eq!(offered(&provider), None);

        answered(&provider, Role::Probe, StatusCode::BAD_GATEWAY);
        assert_eq!(
            time_to_probe(&provider).await,
            FIRST_EJECTION * 2,
            "the second ejection"
        );
        answered(&provider, Role::Probe, StatusCode::OK);
        assert_eq!(
            offered(&provider),
            Some(Role::Ordinary),
            "a good probe brings it back"
        );

        // Back in full: the next ejection is the first one again.
        for _ in 0..FAILURES_TO_EJECT {
            answered(&provider, Role::Ordinary, StatusCode::BAD_GATEWAY);
        }
        assert_eq!(time_to_probe(&provider).await, FIRST_EJECTION);
    }

    #[tokio::test(start_paused = true)]
    async fn ejections_in_a_row_double_up_to_the_limit() {
        let provider = endpoint();
        for _ in 0..FAILURES_TO_EJECT {
            answered(&provider, Role::Ordinary, StatusCode::BAD_GATEWAY);
        }
        let mut lengths = Vec::new();
        for _ in 0..7 {
            lengths.push(time_to_probe(&provider).await.as_secs());
            answered(&provider, Role::Probe, StatusCode::SERVICE_UNAVAILABLE);
        }
        assert_eq!(lengths, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(EJECTION_LIMIT, Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_its_caller_gave_up_on_leaves_the_provider_due_for_another_at_once() {
        let provider = endpoint();
        for _ in 0..FAILURES_TO_EJECT {
            answered(&provider, Role::Ordinary, StatusCode::BAD_GATEWAY);
        }
        time_to_probe(&provider).await;
        let probe = Attempt::start(provider.clone(), Role::Probe);
        assert_eq!(offered(&provider), None);
        drop(probe);
        assert_eq!(offered(&provider), Some(Role::Probe));
    }
}
