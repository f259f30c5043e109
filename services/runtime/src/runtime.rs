//! The life of a service instance: bind, register once the listener is bound, serve with warp,
//! and on shutdown deregister first (so watchers stop sending new work), then drain in-flight
//! requests, then return so `main` can exit 0.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use discovery::agent::{AgentClient, HttpCheck, Registration};
use discovery::consul::{ConsulSettings, ConsulSettingsError};
use discovery::registration::RegistrationKeeper;
use discovery::watch::ProviderWatch;
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::{info, warn};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::browser::HostAllowList;
use crate::front::Front;
use crate::http::handle_rejection;
use crate::live_config::{ConfigStatus, ConfigSummary, Effective, LiveConfig, Origins, Settings};
use crate::metrics::{Exposition, Registry, Source};
use crate::pool::ProviderPool;
use crate::server::{ConnectionLimits, ConnectionStats};
use crate::telemetry::Shipping;

/// How often the agent probes `/health`, and how long a probe may take.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// Consul's minimum: an instance critical this long is removed from the catalogue.
const DEREGISTER_CRITICAL_AFTER: Duration = Duration::from_secs(60);
/// How long a deregistered instance keeps serving new requests as before: the time for
/// every watcher (callers' pools, a load balancer fed by Consul) to hear of the deregistration,
/// which takes milliseconds, before the listener closes. Without it a caller whose watch had not
/// moved yet, or whose keep-alive connection raced the close, saw a failed request in every
/// rolling restart.
pub const DEREGISTERED_LINGER: Duration = Duration::from_millis(500);
/// How long in-flight requests get to finish after deregistration.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// How long a stopping service waits for its last log records to reach the log service.
const SHIPPING_FLUSH_LIMIT: Duration = Duration::from_secs(2);
/// Timeout for calls to another service, so a hung instance never hangs its callers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a service is and where it listens: everything needed to start and register it.
#[derive(Debug, Clone)]
pub struct ServiceDefinition {
    /// Consul service name, e.g. `log`.
    pub name: &'static str,
    /// Published in the registration's meta as `version`.
    pub version: &'static str,
    /// Consul tags, usable in DNS as `TAG.NAME.service.consul`.
    pub tags: Vec<String>,
    /// Address to bind; port 0 picks a free one.
    pub listen: SocketAddr,
    /// `host:port` other parties (the Consul agent, other services) use to reach us; defaults to
    /// the bound address.
    pub advertise: Option<String>,
    pub consul: ConsulSettings,
    /// Host names served besides loopback names and the advertised host (see [`crate::browser`]).
    pub allowed_hosts: Vec<String>,
}

/// Why a service could not start: the one start-up error of every service, so that each `main`
/// reports a failure the same way ([`StartError::report`]).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The Consul flags are unusable or the token file cannot be read.
    #[error(transparent)]
    Consul(#[from] ConsulSettingsError),
    /// The service's own store (its database, its records file) cannot be opened.
    #[error("cannot open its store")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("--advertise {0:?} is not HOST:PORT with a port from 1 to 65535")]
    Advertise(String),
    #[error(
        "--listen {0} is a wildcard address: give --advertise HOST:PORT so Consul can reach this instance"
    )]
    AdvertiseRequired(SocketAddr),
}

impl StartError {
    /// A failure of the service's own store, with its cause kept for the report.
    pub fn store(source: impl std::error::Error + Send + Sync + 'static) -> StartError {
        StartError::Store(Box::new(source))
    }

    /// The error and its causes on one line, `what: why: why`, for `main` to log. A cause whose
    /// text is already in the line (errors that print their source in their own message) is not
    /// repeated.
    pub fn report(&self) -> String {
        let mut line = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(err) = cause {
            let text = err.to_string();
            if !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            cause = err.source();
        }
        line
    }
}

/// A service whose listener is bound, ready to register and serve.
pub struct Service {
    definition: ServiceDefinition,
    listener: TcpListener,
    local_addr: SocketAddr,
    advertised_host: String,
    advertised_port: u16,
    http: reqwest::Client,
    /// One pool (so one watch) per dependency, however many parts of the service use it;
    /// shared with `/metrics`, which shows each.
    pools: Arc<Mutex<HashMap<String, ProviderPool>>>,
    connection_limits: ConnectionLimits,
    connection_stats: ConnectionStats,
    /// This instance's own log records, shipped while it serves (see [`Service::with_shipping`]).
    shipping: Option<Shipping>,
    /// Where the live settings come from, for `/health` and `/status/config`.
    config: ConfigStatus,
    /// The service's routes as `/metrics` names them (see [`Service::with_route_templates`]).
    route_templates: &'static [&'static str],
    /// What the service adds to `/metrics` (see [`Service::with_metrics`]).
    metric_sources: Vec<Source>,
}

/// The body of `GET /health`.
#[derive(Serialize)]
struct Health {
    status: &'static str,
    service: &'static str,
    version: &'static str,
    config: ConfigSummary,
}

impl Service {
    /// Binds the listener and works out the advertised address; nothing is registered yet.
    pub async fn bind(definition: ServiceDefinition) -> Result<Service, StartError> {
        let listener = TcpListener::bind(definition.listen)
            .await
            .map_err(|source| StartError::Bind {
                address: definition.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            address: definition.listen,
            source,
        })?;
        let (advertised_host, advertised_port) = match &definition.advertise {
            Some(advertise) => parse_host_port(advertise)?,
            None if local_addr.ip().is_unspecified() => {
                return Err(StartError::AdvertiseRequired(definition.listen));
            }
            None => (local_addr.ip().to_string(), local_addr.port()),
        };
        Ok(Service {
            definition,
            listener,
            local_addr,
            advertised_host,
            advertised_port,
            http: http_client(),
            pools: Arc::default(),
            connection_limits: ConnectionLimits::default(),
            connection_stats: ConnectionStats::default(),
            shipping: None,
            config: ConfigStatus::flags_only(),
            route_templates: &[],
            metric_sources: Vec::new(),
        })
    }

    /// Serve under these limits instead of the defaults (see [`crate::server`]).
    pub fn with_connection_limits(mut self, limits: ConnectionLimits) -> Service {
        self.connection_limits = limits;
        self
    }

    /// Ships the records queued in `shipping` to its destination service while serving, and
    /// waits briefly for the last of them at shutdown. Without it nothing is shipped.
    pub fn with_shipping(mut self, shipping: Shipping) -> Service {
        self.shipping = Some(shipping);
        self
    }

    /// Starts the live configuration of this service (see [`crate::live_config`]): `settings`
    /// and their `origins` from its flags, the common ones from the environment, under the keys
    /// in Consul KV. `/health` and `/status/config` report it from now on.
    pub fn live_config<S: Settings + std::fmt::Debug>(
        &mut self,
        settings: S,
        origins: Origins,
    ) -> LiveConfig<S> {
        let base = Effective {
            common: crate::live_config::CommonSettings::from_env(),
            service: settings,
        };
        let live = LiveConfig::spawn(&self.definition.consul, self.definition.name, base, origins);
        self.config = live.status();
        live
    }

    /// Counts requests at `/metrics` under these route templates, e.g. `/students/{id}` (a
    /// `{...}` segment stands for any one segment); every other path counts as `other`, so that
    /// no client can make up new series. `/health`, `/status/connections` and `/metrics` are
    /// named already.
    pub fn with_route_templates(mut self, templates: &'static [&'static str]) -> Service {
        self.route_templates = templates;
        self
    }

    /// Adds what `source` writes to every answer of `/metrics`.
    pub fn with_metrics(
        mut self,
        source: impl Fn(&mut Exposition) + Send + Sync + 'static,
    ) -> Service {
        self.metric_sources.push(Arc::new(source));
        self
    }

    /// The counters of this instance's connections, also served at `/status/connections`.
    pub fn connection_stats(&self) -> ConnectionStats {
        self.connection_stats.clone()
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Unique per instance and stable across its restarts: name, advertised host and port.
    pub fn instance_id(&self) -> String {
        format!(
            "{}-{}-{}",
            self.definition.name, self.advertised_host, self.advertised_port
        )
    }

    /// A watch on another service's passing instances, through the same agent.
    pub fn watch(&self, service: &str) -> ProviderWatch {
        ProviderWatch::spawn(&self.definition.consul, service)
    }

    /// The pool of connections to another service, over a watch of its instances. Asking twice
    /// for the same service gives the same pool; all pools share one HTTP client, so keep-alive
    /// connections are reused across requests.
    pub fn pool(&self, service: &str) -> ProviderPool {
        let mut pools = self.pools.lock().expect("not poisoned");
        pools
            .entry(service.to_owned())
            .or_insert_with(|| ProviderPool::new(self.watch(service), self.http.clone()))
            .clone()
    }

    /// The registration this instance sends to the agent.
    fn registration(&self) -> Registration {
        let address = match self.advertised_host.contains(':') {
            true => format!("[{}]:{}", self.advertised_host, self.advertised_port),
            false => format!("{}:{}", self.advertised_host, self.advertised_port),
        };
        Registration {
            id: self.instance_id(),
            name: self.definition.name.to_owned(),
            tags: self.definition.tags.clone(),
            address: self.advertised_host.clone(),
            port: self.advertised_port,
            meta: BTreeMap::from([("version".to_owned(), self.definition.version.to_owned())]),
            check: HttpCheck {
                name: format!("{} HTTP /health", self.definition.name),
                http: format!("http://{address}/health"),
                interval: CHECK_INTERVAL,
                timeout: CHECK_TIMEOUT,
                deregister_critical_service_after: DEREGISTER_CRITICAL_AFTER,
                status: "passing",
            },
        }
    }

    /// Registers, serves `routes` (plus `GET /health`, `GET /status/connections`,
    /// `GET /status/config`, `GET /metrics` and the shared
    /// error mapping) until `shutdown` resolves, then deregisters and drains. Consul being away never stops serving.
    pub async fn run<F>(mut self, routes: F, shutdown: impl Future<Output = ()> + Send)
    where
        F: Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static,
    {
        let name = self.definition.name;
        let version = self.definition.version;
        let config = self.config.clone();
        let health = warp::path("health")
            .and(warp::path::end())
            .and(warp::get())
            .map(move || {
                let body = Health {
                    status: "ok",
                    service: name,
                    version,
                    config: config.summary(),
                };
                let json = serde_json::to_vec(&body).expect("serializable");
                warp::http::Response::builder()
                    .header("content-type", "application/json")
                    .body(warp::hyper::body::Bytes::from(json).into())
                    .expect("static response")
            });
        let metrics = Arc::new(Registry::new(
            &self.definition,
            self.route_templates,
            self.pools.clone(),
            self.connection_stats.clone(),
            self.shipping.as_ref().map(Shipping::stats),
            std::mem::take(&mut self.metric_sources),
        ));
        let requests = metrics.requests();
        let allowed = HostAllowList::advertised(
            &self.advertised_host,
            self.advertised_port,
            &self.definition.allowed_hosts,
        );
        // The runtime's routes before the service's: a service may answer every other path
        // itself (the portal renders its own 404 page), and /health must reach Consul's check.
        // The front sends only paths under the runtime's first segments this way; the others go
        // to the service's routes alone.
        let runtime_routes = health
            .or(crate::server::status_route(self.connection_stats.clone()))
            .unify()
            .or(crate::live_config::status_route(self.config.clone()))
            .unify()
            .or(crate::metrics::route(metrics))
            .unify();
        // The front clones the routes' service for every request (warp's `call` takes
        // `&mut self`), and with it every handle the routes captured; boxed, that is one
        // reference count, and both services are of one type.
        let front = Front::new(
            warp::service(with_errors(runtime_routes.or(routes.clone()).unify())),
            warp::service(with_errors(routes)),
            allowed,
            requests,
        );
        let shipper = self.shipping.take().map(|shipping| {
            let destination = self.pool(shipping.destination());
            shipping.start(destination)
        });
        let keeper = RegistrationKeeper::spawn(
            AgentClient::new(self.definition.consul.clone()),
            self.registration(),
        );

        let (drain, drained) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::server::serve(
            self.listener,
            front,
            self.connection_limits,
            self.connection_stats.clone(),
            async {
                let _ = drained.await;
            },
        ));
        info!(service = name, listen = %self.local_addr, "serving");

        shutdown.await;
        info!(
            service = name,
            "shutting down: deregistering, serving {DEREGISTERED_LINGER:?} more while watchers \
             move away, then draining in-flight requests"
        );
        keeper.deregister().await;
        tokio::time::sleep(DEREGISTERED_LINGER).await;
        let _ = drain.send(());
        match tokio::time::timeout(DRAIN_LIMIT, server).await {
            Ok(_) => info!(service = name, "drained; bye"),
            Err(_) => warn!(
                service = name,
                "connections still open after {DRAIN_LIMIT:?}; closing them"
            ),
        }
        if let Some(shipper) = &shipper {
            let waiting = shipper.flush(SHIPPING_FLUSH_LIMIT).await;
            if waiting > 0 {
                warn!(
                    service = name,
                    "{waiting} log records not delivered within {SHIPPING_FLUSH_LIMIT:?}"
                );
            }
        }
    }
}

/// `routes` with warp's rejections mapped to the shared error answers, boxed once: each box is
/// an allocation and a copy of the routes' future on every request.
fn with_errors<F>(routes: F) -> BoxedFilter<(Response,)>
where
    F: Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static,
{
    routes.recover(handle_rejection).unify().boxed()
}

/// The client every outgoing call uses: pooled keep-alive connections, no proxy, bounded time.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(1))
        .timeout(REQUEST_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .expect("a plain HTTP client without TLS always builds")
}

fn parse_host_port(text: &str) -> Result<(String, u16), StartError> {
    let invalid = || StartError::Advertise(text.to_owned());
    let (host, port) = text.rsplit_once(':').ok_or_else(invalid)?;
    let port: u16 = port.parse().map_err(|_| invalid())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(invalid());
    }
    Ok((host.to_owned(), port))
}

/// A future that resolves on SIGINT or SIGTERM: the shutdown `main` passes to [`Service::run`].
/// The handlers are installed at the call, not at the first poll, so call it first thing in
/// `main`: a signal that arrives while the service is still starting then leads to a clean
/// shutdown (exit 0) instead of the default of dying on the spot.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    async move {
        tokio::select! {
            _ = interrupt.recv() => info!("SIGINT received"),
            _ = terminate.recv() => info!("SIGTERM received"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_report_names_every_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot open the grading database /data: {source}")]
        struct Open {
            source: std::io::Error,
        }
        let full = std::io::Error::other("No space left on device");
        let err = StartError::store(Open { source: full });
        assert_eq!(
            err.report(),
            "cannot open its store: cannot open the grading database /data: No space left on device"
        );
    }

    #[test]
    fn advertise_takes_host_and_port() {
        assert_eq!(
            parse_host_port("grading:6000").unwrap(),
            ("grading".into(), 6000)
        );
        assert_eq!(parse_host_port("[::1]:6000").unwrap(), ("::1".into(), 6000));
        assert!(parse_host_port("grading").is_err());
        assert!(parse_host_port("grading:0").is_err());
        assert!(parse_host_port(":6000").is_err());
        assert!(parse_host_port("grading:99999").is_err());
    }
}
