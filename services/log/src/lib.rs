//! The log service: accepts log records from the other gradebook services (and from anyone with
//! `curl`) and keeps them durably in an append-only JSON-lines file.
//!
//! # Layout
//! - [`record`]: the record type and the validation applied to what clients send.
//! - [`store`]: the durable, group-committing file store; [`history`] reads its older records.
//! - [`api`]: the HTTP routes; [`error`] maps every failure to a status in one place.
//! - [`config`]: flags and environment variables.
//! - [`App`]: build (open the store, bind) then run (register, serve, deregister, drain).

pub mod api;
pub mod config;
pub mod error;
pub mod history;
pub mod record;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;

use service_runtime::{Service, StartError};

use crate::config::Config;
use crate::store::LogStore;

/// Consul service name.
pub const SERVICE_NAME: &str = "log";
/// How many recent records `GET /log` serves from memory; older ones are read from the file.
const RECENT_CAPACITY: usize = api::MAX_READ_LIMIT;

/// A log service with its store open and its listener bound.
pub struct App {
    service: Service,
    store: LogStore,
}

impl App {
    /// Opens the store (off the async workers: it reads the whole file) and binds the listener.
    pub async fn build(config: Config) -> Result<App, StartError> {
        let definition = config.service.definition(
            SERVICE_NAME,
            env!("CARGO_PKG_VERSION"),
            &["http", "store"],
        )?;
        let data_dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || LogStore::open(&data_dir, RECENT_CAPACITY))
            .await
            .expect("opening the store does not panic")
            .map_err(StartError::store)?;
        tracing::info!(data_dir = %config.data_dir.display(), records = store.count(), "log store open");
        let store_metrics = store.metrics();
        let mut service = Service::bind(definition)
            .await?
            .with_connection_limits(config.service.connections.limits())
            .with_route_templates(api::ROUTE_TEMPLATES)
            .with_metrics(move |out| store_metrics.render(out));
        // The log service ships nothing, so the common ship level has no effect here; the
        // configuration is still read so `/health` and `/status/config` report it like the others.
        let _settings = service.live_config((), service_runtime::live_config::Origins::default());
        Ok(App { service, store })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.service.local_addr()
    }

    /// Serves until `shutdown` resolves, then deregisters and drains. Readers waiting for new
    /// records (`GET /log?after=…&wait=…`) get their answer at once, so they do not hold up the
    /// drain.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let store = self.store.clone();
        let shutdown = async move {
            shutdown.await;
            store.close_readers();
        };
        self.service.run(api::routes(self.store), shutdown).await;
    }
}
