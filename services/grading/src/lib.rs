//! The grading service: students and their grades as JSON, kept in an embedded SQLite database
//! (or in PostgreSQL when instances span hosts) and seeded with demo students the first time it
//! starts.
//!
//! # Layout
//! - [`domain`]: ids, names, titles, scores and grade types that validate themselves, and the
//!   students and grades the API returns (as the [`contracts`] crate's wire shapes).
//! - [`store`]: SQLite storage, off the async workers, with a small connection pool; or
//!   PostgreSQL through a small bounded pool.
//! - [`cache`]: the JSON of student reads, kept until SQLite says the database changed (always
//!   read through on PostgreSQL).
//! - [`api`]: the HTTP routes; [`error`] maps every failure to a status in one place.
//! - [`config`]: flags and environment variables.
//! - [`App`]: build (open the database, bind) then run (register, serve, deregister, drain).

pub mod api;
pub mod cache;
pub mod config;
pub mod domain;
pub mod error;
pub mod store;
pub mod wal_index;

use std::future::Future;
use std::net::SocketAddr;

use service_runtime::live_config::{LiveConfig, Origins};
use service_runtime::telemetry::Shipping;
use service_runtime::{Service, StartError};

use crate::config::Config;
use crate::store::Store;

/// Consul service name.
pub const SERVICE_NAME: &str = contracts::service_name::GRADING;
/// Consul name of the service grading ships its log records to.
pub const LOG_SERVICE: &str = contracts::service_name::LOG;

/// The database `config` names: PostgreSQL with `--database-url`, else SQLite in `--data-dir`.
async fn open_store(config: &Config) -> Result<Store, store::StoreError> {
    if let Some(database) = &config.database_url {
        let store = Store::connect_postgres(database).await?;
        // Never the URL itself: it may hold a password.
        tracing::info!(
            hosts = ?database.get_hosts(),
            ports = ?database.get_ports(),
            dbname = database.get_dbname().unwrap_or_default(),
            "grading database open (PostgreSQL)"
        );
        return Ok(store);
    }
    let host = match &config.host_id {
        Some(id) => store::HostId::named(id),
        None => store::HostId::of_this_host(),
    };
    let store = Store::open_sqlite(&config.data_dir, host).await?;
    tracing::info!(data_dir = %config.data_dir.display(), "grading database open (SQLite)");
    Ok(store)
}

/// A grading service with its database open and its listener bound.
pub struct App {
    service: Service,
    store: Store,
    settings: LiveConfig<()>,
}

impl App {
    /// Opens the database (on a blocking thread) and binds the listener; nothing is registered yet.
    pub async fn build(config: Config) -> Result<App, StartError> {
        // `api` makes `api.grading.service.consul` resolve in Consul's DNS.
        let definition =
            config
                .service
                .definition(SERVICE_NAME, env!("CARGO_PKG_VERSION"), &["http", "api"])?;
        let store = open_store(&config).await.map_err(StartError::store)?;
        let mut service = Service::bind(definition)
            .await?
            .with_connection_limits(config.service.connections.limits())
            .with_route_templates(api::ROUTE_TEMPLATES);
        // Only the common settings (the ship level) so far; `/health` reports their source.
        let settings = service.live_config((), Origins::default());
        Ok(App {
            service,
            store,
            settings,
        })
    }

    /// Ships this instance's log records, queued by the subscriber that made `shipping`, while
    /// it serves.
    pub fn with_shipping(mut self, shipping: Shipping) -> App {
        self.settings.drive_ship_level(shipping.ship_level());
        self.service = self.service.with_shipping(shipping);
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.service.local_addr()
    }

    /// Serves until `shutdown` resolves, then deregisters and drains.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        self.service.run(api::routes(self.store), shutdown).await;
    }
}
