//! What two gradebook services must agree on, in one place: the JSON shapes that cross the wire
//! and the small rules both sides apply. The service that owns a resource validates it; this
//! crate holds only the shapes and the shared rules, so that a change to either is made once and
//! every service that sends or reads it stops compiling until it follows.
//!
//! # Layout
//! - [`grading`]: students and grades as grading answers and takes them, grade types, and the
//!   opt-in paging of the student list.
//! - [`log`]: a log record as the log service answers `GET /log`, and what a trace id is.
//! - [`request_key`]: the `Idempotency-Key` header and what a key may be.
//! - [`service_name`]: the Consul names of the services, and what a service name may be.
//! - [`id`]: how an id is written in a path.
//! - [`ErrorBody`]: the JSON body of every service's error answers.

pub mod grading;
pub mod id;
pub mod log;
pub mod request_key;
pub mod service_name;

use serde::{Deserialize, Serialize};

/// The body of an error answer of any gradebook JSON API: `{"error": "..."}`, the message naming
/// the field or the problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for the caller.
    pub error: String,
}
