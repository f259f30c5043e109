//! The portal: the teachers' web app. It renders HTML pages over the `grading` service (students
//! and grades) and the `log` service (recent records), both found through Consul by name only.
//!
//! # Layout
//! - [`upstream`]: typed clients for grading and log over the [`contracts`] shapes; every way they
//!   fail becomes an [`upstream::UpstreamError`], and a change grading refused a
//!   [`upstream::Verdict`], an answer.
//! - [`logs`]: what a reader of several log instances sees: the merge, and paging per instance.
//! - [`pages`]: the askama templates (in `templates/`) and the view data they render.
//! - [`routes`]: the pages as warp routes; handlers are plain async functions.
//! - [`csrf`]: the checks every form post passes: same origin, and the token of the page's cookie.
//! - [`error`]: every failure, upstream ones and warp's own rejections, mapped to an HTML page in
//!   one place.
//!
//! The modules form no cycle: `routes` uses the others; `error` uses `pages`, `csrf` and
//! `upstream`; `pages` uses `csrf`, `logs` and `upstream` (the listed student); `upstream`,
//! `logs` and `csrf` use no other.
//! - [`config`]: flags and environment variables.
//! - [`settings`]: the settings Consul KV changes live (students per page, passing score).
//! - [`App`]: build (bind, watch the dependencies) then run (register, serve, deregister, drain).

pub mod config;
pub mod csrf;
pub mod error;
pub mod logs;
pub mod pages;
pub mod routes;
pub mod settings;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use service_runtime::telemetry::Shipping;
use service_runtime::{Service, StartError};

use crate::config::Config;
pub use crate::error::PortalError;
use crate::routes::Portal;
use crate::settings::PortalSettings;

/// Consul service name.
pub const SERVICE_NAME: &str = contracts::service_name::PORTAL;
/// Consul name of the students-and-grades service the portal renders.
pub const GRADING_SERVICE: &str = contracts::service_name::GRADING;
/// Consul name of the service whose records the logs page shows.
pub const LOG_SERVICE: &str = contracts::service_name::LOG;
/// How long a starting portal waits for Consul's first answer about each dependency, so its first
/// requests do not fail with a spurious "unavailable" while Consul would have listed instances.
const FIRST_ANSWER_LIMIT: Duration = Duration::from_secs(2);

/// A portal with its listener bound and its dependencies watched.
pub struct App {
    service: Service,
    portal: Portal,
}

impl App {
    /// Binds the listener, starts watching grading and log, and waits (up to 2 s each, together)
    /// for Consul's first answer about them; a Consul that is away only delays the start.
    pub async fn build(config: Config) -> Result<App, StartError> {
        let definition =
            config
                .service
                .definition(SERVICE_NAME, env!("CARGO_PKG_VERSION"), &["http", "web"])?;
        // Inside a container network the agent's address is not the browser's (compose sets it).
        let consul_ui = config
            .consul_ui_url
            .clone()
            .unwrap_or_else(|| format!("{}/ui/", definition.consul.address));
        let mut service = Service::bind(definition)
            .await?
            .with_connection_limits(config.service.connections.limits())
            .with_route_templates(routes::ROUTE_TEMPLATES);
        let settings = service.live_config(
            PortalSettings::from(&config.settings),
            config.origins.clone(),
        );
        let portal = Portal::new(
            service.pool(GRADING_SERVICE),
            service.pool(LOG_SERVICE),
            consul_ui,
        )
        .with_settings(settings)
        .with_time_zone(config.time_zone)
        .with_connection_stats(service.connection_stats())
        .with_status(config.status);
        portal.ready(FIRST_ANSWER_LIMIT).await;
        Ok(App { service, portal })
    }

    /// Ships the portal's log records, queued by the subscriber that made `shipping`, while it
    /// serves, and shows their counters on the status page.
    pub fn with_shipping(mut self, shipping: Shipping) -> App {
        self.portal = self.portal.with_shipping_stats(shipping.stats());
        self.portal.drive_ship_level(shipping.ship_level());
        self.service = self.service.with_shipping(shipping);
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.service.local_addr()
    }

    /// Serves until `shutdown` resolves, then deregisters and drains.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        self.service
            .run(routes::routes(self.portal), shutdown)
            .await;
    }
}
