//! Tools behind `scripts/bench.sh`. Benchmarks are not tests: nothing here asserts a number.
//!
//! # Layout
//! - `ceiling` (binary): the fastest answer this stack can give, a minimal warp server serving
//!   from memory a JSON document shaped like grading's `GET /students/1`.
//! - `discovery-bench` (binary): discovery latency trials against a real Consul agent, the
//!   SIGKILL trial with a request loop, and a counting proxy for each service's calls to Consul.
//! - [`stats`]: percentiles over measured durations.

pub mod stats;
