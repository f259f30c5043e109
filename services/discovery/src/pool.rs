//! Spreads requests over the passing providers of one dependency.
//!
//! Each request goes to the less busy of two randomly chosen providers ("power of two choices" on
//! requests in flight), which avoids both the herd effect of "least busy" and the blindness of
//! round robin. A provider that refuses or resets a connection is ejected locally at once and the
//! request moves to another: a connection that was refused never reached the server, so that
//! retry is safe for any method; a reset after sending is retried only for idempotent methods,
//! and for a POST that carries an `Idempotency-Key` ([`ProviderPool::post_json_once`]), which the
//! server applies at most once whichever instance gets it. Such requests also get their own
//! shorter time limit per attempt ([`RETRYABLE_ATTEMPT_TIMEOUT`]): an instance that stops
//! answering (a host cut off the network keeps its connections open but silent) is ejected and
//! the request moves on, rather than failing after the client's whole timeout.
//! An ejected provider returns when Consul lists it again in a new answer, or after
//! [`EJECTION_LIMIT`] at most. With no provider at all the pool fails at once with
//! [`PoolError::NoProvider`], which services answer with a 503.
//!
//! A read that only one instance can answer (each log instance keeps its own records) goes to
//! that instance by its Consul service ID ([`ProviderPool::get_from`]), under the same rules
//! except failover.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::{Method, Response};
use tracing::warn;

use crate::watch::{Provider, ProviderWatch};

/// The longest a provider stays ejected without Consul saying anything new about it.
pub const EJECTION_LIMIT: Duration = Duration::from_secs(30);
/// How many providers one request may try before giving up.
const MAX_ATTEMPTS: usize = 3;
/// How long one attempt of a request that may be sent again waits for its answer. Every call
/// between the services answers in milliseconds; three attempts still fit in the 10 s a caller
/// waits in all.
pub const RETRYABLE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// The header naming one logical request, so that sending it again is safe.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A fresh key for [`ProviderPool::post_json_once`]: 128 random bits in hex. It names a request
/// (it is no secret), so a fast non-cryptographic generator will do.
pub fn new_idempotency_key() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// Why a request through the pool failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Consul lists no passing instance of the dependency (or has not answered yet).
    #[error("no healthy {service} instance is available")]
    NoProvider { service: String },
    /// Every instance tried refused or dropped the connection.
    #[error("every {service} instance tried failed; last error: {source}")]
    AllFailed {
        service: String,
        source: reqwest::Error,
    },
    /// The instance took the request but the exchange failed (a timeout, say): not retried,
    /// because the request may have had its effect.
    #[error("request to {service} at {address} failed: {source}")]
    Request {
        service: String,
        address: String,
        source: reqwest::Error,
    },
    /// No passing provider has the Consul service ID asked for ([`ProviderPool::get_from`]).
    #[error("no healthy {service} instance has the ID {id:?}")]
    NotListed { service: String, id: String },
}

/// How one attempt failed: the provider is ejected and another may be tried, or the exchange
/// failed after the provider took the request.
enum Failure {
    Ejected {
        source: reqwest::Error,
    },
    Exchange {
        address: String,
        source: reqwest::Error,
    },
}

impl Failure {
    fn into_error(self, service: String) -> PoolError {
        match self {
            Failure::Ejected { source } => PoolError::AllFailed { service, source },
            Failure::Exchange { address, source } => PoolError::Request {
                service,
                address,
                source,
            },
        }
    }
}

impl PoolError {
    /// True when the dependency is unavailable rather than misbehaving: callers answer 503.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            PoolError::NoProvider { .. }
                | PoolError::AllFailed { .. }
                | PoolError::NotListed { .. }
        )
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

/// Requests to one dependency, spread over its passing providers. Cheap to clone.
#[derive(Clone)]
pub struct ProviderPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    watch: ProviderWatch,
    http: reqwest::Client,
    endpoints: RwLock<Endpoints>,
}

#[derive(Default)]
struct Endpoints {
    generation: u64,
    list: Vec<Arc<Endpoint>>,
}

struct Endpoint {
    provider: Provider,
    base_url: String,
    in_flight: AtomicUsize,
    ejected_until: Mutex<Option<Instant>>,
}

impl Endpoint {
    fn is_ejected(&self, now: Instant) -> bool {
        matches!(*self.ejected_until.lock().expect("not poisoned"), Some(until) if until > now)
    }

    fn eject(&self) {
        *self.ejected_until.lock().expect("not poisoned") = Some(Instant::now() + EJECTION_LIMIT);
    }
}

/// Counts a request in flight for as long as it lives.
struct InFlight(Arc<Endpoint>);

impl InFlight {
    fn start(endpoint: Arc<Endpoint>) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(endpoint)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ProviderPool {
    /// A pool over `watch`, sending through `http` (one shared client keeps connections pooled).
    pub fn new(watch: ProviderWatch, http: reqwest::Client) -> Self {
        ProviderPool {
            inner: Arc::new(PoolInner {
                watch,
                http,
                endpoints: RwLock::new(Endpoints::default()),
            }),
        }
    }

    /// The watch behind this pool, e.g. to show its providers on a status page.
    pub fn watch(&self) -> &ProviderWatch {
        &self.inner.watch
    }

    /// Sends a GET for `path_and_query` (starting with `/`).
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

    /// Sends `value` as a JSON PUT body; a PUT is idempotent, so it fails over like a GET.
    pub async fn put_json<T: serde::Serialize + ?Sized>(
        &self,
        path_and_query: &str,
        value: &T,
    ) -> Result<Response, PoolError> {
        self.send(Method::PUT, path_and_query, Some(Payload::json(value)))
            .await
    }

    /// Sends `value` as a JSON POST body with `Idempotency-Key: key`. The server applies a
    /// request at most once per key, so unlike a plain POST this one moves to another instance
    /// when the connection drops after sending (an instance killed mid-request, say): the one
    /// that did the work answers again with what it did. Use a new key per logical request
    /// ([`new_idempotency_key`]).
    pub async fn post_json_once<T: serde::Serialize + ?Sized>(
        &self,
        path_and_query: &str,
        value: &T,
        key: &str,
    ) -> Result<Response, PoolError> {
        let payload = Payload::json(value);
        self.send_keyed(Method::POST, path_and_query, Some(payload), Some(key))
            .await
    }

    /// Sends a request to one provider, failing over as described in the module docs. Any
    /// HTTP status is a success here: it is the caller's to interpret.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        payload: Option<Payload>,
    ) -> Result<Response, PoolError> {
        self.send_keyed(method, path_and_query, payload, None).await
    }

    /// Sends a GET for `path_and_query` to the provider whose Consul service ID is `id`, for
    /// reads that only that instance can answer (each log instance keeps its own records). It
    /// follows the pool's rules except failover, since another instance would answer about
    /// other data: a refused or dropped connection ejects the provider and fails the request.
    /// [`PoolError::NotListed`] when no passing provider has that ID.
    pub async fn get_from(&self, id: &str, path_and_query: &str) -> Result<Response, PoolError> {
        let endpoint = self
            .endpoints()
            .into_iter()
            .find(|endpoint| endpoint.provider.id == id)
            .ok_or_else(|| PoolError::NotListed {
                service: self.service(),
                id: id.to_owned(),
            })?;
        self.attempt(&endpoint, &Method::GET, path_and_query, None, None)
            .await
            .map_err(|failure| failure.into_error(self.service()))
    }

    async fn send_keyed(
        &self,
        method: Method,
        path_and_query: &str,
        payload: Option<Payload>,
        idempotency_key: Option<&str>,
    ) -> Result<Response, PoolError> {
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        let mut last_failure = None;
        while tried.len() < MAX_ATTEMPTS {
            let Some(endpoint) = self.choose(&tried) else {
                break;
            };
            match self
                .attempt(
                    &endpoint,
                    &method,
                    path_and_query,
                    payload.as_ref(),
                    idempotency_key,
                )
                .await
            {
                Ok(response) => return Ok(response),
                Err(failure @ Failure::Ejected { .. }) => {
                    tried.push(endpoint);
                    last_failure = Some(failure);
                }
                Err(failure) => return Err(failure.into_error(self.service())),
            }
        }
        Err(match last_failure {
            Some(failure) => failure.into_error(self.service()),
            None => PoolError::NoProvider {
                service: self.service(),
            },
        })
    }

    /// Sends one request to `endpoint`, counted in flight while it lasts. A refused connection,
    /// or one dropped or timed out under a request that is safe to send again, ejects the
    /// endpoint locally.
    async fn attempt(
        &self,
        endpoint: &Arc<Endpoint>,
        method: &Method,
        path_and_query: &str,
        payload: Option<&Payload>,
        idempotency_key: Option<&str>,
    ) -> Result<Response, Failure> {
        let idempotent = idempotency_key.is_some()
            || matches!(
                *method,
                Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
            );
        let guard = InFlight::start(endpoint.clone());
        let mut request = self.inner.http.request(
            method.clone(),
            format!("{}{path_and_query}", endpoint.base_url),
        );
        if let Some(payload) = payload {
            request = request
                .header(reqwest::header::CONTENT_TYPE, payload.content_type)
                .body(payload.bytes.clone());
        }
        if let Some(key) = idempotency_key {
            request = request.header(IDEMPOTENCY_KEY, key);
        }
        if idempotent {
            request = request.timeout(RETRYABLE_ATTEMPT_TIMEOUT);
        }
        let result = request.send().await;
        drop(guard);
        result.map_err(|err| {
            if err.is_connect() || (idempotent && (is_dropped_connection(&err) || err.is_timeout()))
            {
                warn!(
                    provider = %endpoint.provider.address,
                    "{}: ejecting {} locally until Consul lists it again: {err}",
                    self.service(),
                    endpoint.provider.address
                );
                endpoint.eject();
                Failure::Ejected { source: err }
            } else {
                Failure::Exchange {
                    address: endpoint.provider.address.clone(),
                    source: err,
                }
            }
        })
    }

    fn service(&self) -> String {
        self.inner.watch.current().service.to_string()
    }

    /// Picks the less busy of two random providers not yet tried, preferring ones not ejected;
    /// when all are ejected, still tries one (a refused connection costs little, a 503 more).
    fn choose(&self, tried: &[Arc<Endpoint>]) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints();
        let now = Instant::now();
        let untried = |e: &&Arc<Endpoint>| !tried.iter().any(|t| Arc::ptr_eq(t, e));
        let mut candidates: Vec<&Arc<Endpoint>> = endpoints
            .iter()
            .filter(untried)
            .filter(|e| !e.is_ejected(now))
            .collect();
        if candidates.is_empty() {
            candidates = endpoints.iter().filter(untried).collect();
        }
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0].clone()),
            n => {
                let first = fastrand::usize(..n);
                let second = (first + 1 + fastrand::usize(..n - 1)) % n;
                let (a, b) = (candidates[first], candidates[second]);
                let busy = |e: &Endpoint| e.in_flight.load(Ordering::Relaxed);
                Some(if busy(b) < busy(a) {
                    b.clone()
                } else {
                    a.clone()
                })
            }
        }
    }

    /// The endpoints for the watch's current set, rebuilt only when the set changed. Endpoints
    /// that stay keep their in-flight count; being listed in a new answer from Consul lifts an
    /// ejection.
    fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        let set = self.inner.watch.current();
        {
            let endpoints = self.inner.endpoints.read().expect("not poisoned");
            if endpoints.generation == set.generation {
                return endpoints.list.clone();
            }
        }
        let mut endpoints = self.inner.endpoints.write().expect("not poisoned");
        if endpoints.generation != set.generation {
            let mut old: HashMap<&Provider, &Arc<Endpoint>> =
                endpoints.list.iter().map(|e| (&e.provider, e)).collect();
            let list = set
                .providers
                .iter()
                .map(|provider| match old.remove(provider) {
                    Some(kept) => {
                        *kept.ejected_until.lock().expect("not poisoned") = None;
                        kept.clone()
                    }
                    None => Arc::new(Endpoint {
                        provider: provider.clone(),
                        base_url: format!("http://{}", provider.address),
                        in_flight: AtomicUsize::new(0),
                        ejected_until: Mutex::new(None),
                    }),
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

/// A connection that broke before a response came: reset, closed early, or an incomplete
/// message. Distinguished from a timeout, where the server may still be working.
fn is_dropped_connection(err: &reqwest::Error) -> bool {
    !err.is_timeout() && (err.is_request() || err.is_body())
}
