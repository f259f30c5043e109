//! Everything a gradebook service needs to live in a Consul-managed system, so that each service
//! crate holds only its own domain.
//!
//! # Layout
//! - [`consul`]: where the local agent is and how to authenticate to it (flags and `CONSUL_HTTP_*`).
//! - [`agent`]: a small typed client for the agent API (register, deregister, watch our own entry).
//! - [`registration`]: keeps one instance registered for as long as it serves, re-registering when
//!   the agent forgets it.
//! - [`watch`]: one blocking-query loop per dependency, publishing its set of passing providers.
//! - [`pool`]: spreads requests over a watched set, ejects instances that fail or misbehave (with
//!   half-open probes), fails over where safe, caps every answer and times every call.
//! - [`runtime`]: bind, register, serve, and on a signal deregister, drain and return.
//! - [`server`]: the accept loop: header and idle timeouts, a connection cap that sheds but keeps
//!   `/health` answered, client errors counted, `HEAD` as `GET`.
//! - [`browser`]: the Host allow-list and the security headers on every answer.
//! - [`http`]: JSON error bodies and the mapping of warp's own rejections, shared by every API.
//! - [`telemetry`]: installs the `tracing` subscriber.

pub mod agent;
pub mod browser;
pub mod consul;
pub mod http;
pub mod pool;
pub mod registration;
pub mod runtime;
pub mod server;
pub mod telemetry;
pub mod watch;

mod backoff;

pub use browser::AllowedHostsArgs;
pub use consul::{ConsulArgs, ConsulSettings};
pub use pool::{Answer, Call, CallLimits, Junk, PoolError, ProviderPool};
pub use runtime::{Service, ServiceDefinition, StartError, shutdown_signal};
pub use server::{ConnectionArgs, ConnectionLimits, ConnectionStats};
pub use watch::{Provider, ProviderSet, ProviderWatch, WatchStatus};
