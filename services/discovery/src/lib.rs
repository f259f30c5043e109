//! Service discovery through Consul: where the local agent is, how a service instance stays
//! registered in it, and how a caller keeps an up-to-date set of another service's passing
//! instances. Serving, calling and shipping logs live in `service-runtime`, built on this crate.
//!
//! # Layout
//! - [`consul`]: where the local agent is and how to authenticate to it (flags and `CONSUL_HTTP_*`).
//! - [`agent`]: a small typed client for the agent API (register, deregister, watch our own entry).
//! - [`registration`]: keeps one instance registered for as long as it serves, re-registering when
//!   the agent forgets it.
//! - [`watch`]: one blocking-query loop per dependency, publishing its set of passing providers.
//! - [`kv`]: the same discipline on a KV prefix, publishing the keys under it (live configuration).
//! - [`backoff`]: jittered, capped retry delays, shared by every loop that talks to Consul (and
//!   by the runtime's log shipper), so that many instances never retry in lockstep.

pub mod agent;
pub mod backoff;
pub mod consul;
pub mod kv;
pub mod registration;
pub mod watch;

pub use consul::{ConsulArgs, ConsulSettings};
pub use watch::{Provider, ProviderSet, ProviderWatch, WatchStatus};
