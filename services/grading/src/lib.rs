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

use discovery::{ConsulSettings, Service, ServiceDefinition};

use crate::config::Config;
use crate::store::Store;

/// Consul service name.
pub const SERVICE_NAME: &str = contracts::service_name::GRADING;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The Consul flags or token file are unusable.
    #[error(transparent)]
    Consul(#[from] discovery::consul::ConsulSettingsError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The listener could not be bound or the advertised address is invalid.
    #[error(transparent)]
    Service(#[from] discovery::StartError),
}

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
}

impl App {
    /// Opens the database (on a blocking thread) and binds the listener; nothing is registered yet.
    pub async fn build(config: Config) -> Result<App, StartError> {
        let consul = ConsulSettings::from_args(&config.consul)?;
        let store = open_store(&config).await?;
        let service = Service::bind(ServiceDefinition {
            name: SERVICE_NAME,
            version: env!("CARGO_PKG_VERSION"),
            // `api` makes `api.grading.service.consul` resolve in Consul's DNS.
            tags: vec!["http".to_owned(), "api".to_owned()],
            listen: config.listen,
            advertise: config.advertise,
            consul,
            allowed_hosts: config.hosts.allowed_hosts.clone(),
        })
        .await?
        .with_connection_limits(config.connections.limits());
        Ok(App { service, store })
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
