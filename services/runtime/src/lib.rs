//! Everything a gradebook service needs to live in a Consul-managed system besides discovery
//! itself (the `discovery` crate), so that each service crate holds only its own domain.
//!
//! # Layout
//! - [`runtime`]: bind, register, serve, and on a signal deregister, drain and return; the one
//!   start-up error of every service.
//! - [`args`]: the flags every service takes (listen, advertise, Consul, allowed hosts,
//!   connection limits), flattened once into each binary's configuration.
//! - [`server`]: the accept loop: header and idle timeouts, a connection cap that sheds but keeps
//!   `/health` answered, client errors counted.
//! - [`pool`]: spreads requests over a watched set, ejects instances that fail or misbehave (with
//!   half-open probes), fails over where safe, caps every answer and times every call.
//! - [`browser`]: the Host allow-list and the security headers on every answer.
//! - `front`: what every request passes through, whatever its route: the Host check, `HEAD` as
//!   `GET`, the trace, the security headers, the count at `/metrics`.
//! - [`live_config`]: settings that change while a service runs, from Consul KV over its flags,
//!   with `GET /status/config`.
//! - [`metrics`]: `GET /metrics` in the Prometheus text format: requests by route template and
//!   status (lock-free on the request path), pools, watches, shipping, connections.
//! - [`http`]: JSON error bodies and the mapping of warp's own rejections, shared by every API.
//! - [`telemetry`]: installs the `tracing` subscriber; for the services that ship their events to
//!   the log service, hands back the queue ([`telemetry::Shipping`]) that the runtime ships.
//! - [`trace`]: W3C `traceparent` read on every request, answered, sent on by the pools and
//!   stamped on shipped records.

pub mod args;
pub mod browser;
mod front;
pub mod http;
pub mod live_config;
pub mod metrics;
pub mod pool;
pub mod runtime;
pub mod server;
pub mod telemetry;
pub mod trace;

pub use args::ServiceArgs;
pub use browser::AllowedHostsArgs;
pub use pool::{Answer, Call, CallLimits, Junk, PoolError, PoolGauges, ProviderPool};
pub use runtime::{Service, ServiceDefinition, StartError, shutdown_signal};
pub use server::{ConnectionArgs, ConnectionLimits, ConnectionStats};
