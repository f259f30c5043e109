//! Every way a grading request can fail, and the one place that maps them to HTTP.

use service_runtime::http::json_error;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::domain::{GradeId, InvalidField, InvalidId, StudentId};
use crate::store::StoreError;

/// What went wrong, in terms the caller can act on. Faults inside the service are logged with
/// their cause and shown only as `internal error`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field of the body breaks a rule; the message starts with the field's name.
    #[error("{0}")]
    Invalid(#[from] InvalidField),
    /// A query parameter that cannot be read; the message starts with its name.
    #[error("{0}")]
    BadQuery(String),
    /// A path id that no resource can have.
    #[error("{0}")]
    InvalidId(#[from] InvalidId),
    /// No such student.
    #[error("no student with id {0}")]
    NoStudent(StudentId),
    /// The student has no such grade.
    #[error("student {student} has no grade with id {grade}")]
    NoGrade {
        /// The student asked for.
        student: StudentId,
        /// The grade asked for.
        grade: GradeId,
    },
    /// The `Idempotency-Key` was used before for a different request.
    #[error("Idempotency-Key: already used for a different request")]
    KeyReused,
    /// No space left where the database lives; nothing of the request was stored.
    #[error("disk full: the change was not stored; try again once space is freed")]
    DiskFull,
    /// The database server cannot be reached or is restarting; nothing is known to be stored.
    /// Not a failed `/health`: every instance shares the server, and a clear 503 from grading
    /// says more than "no healthy instance" would.
    #[error("database unavailable: try again shortly")]
    DatabaseUnavailable,
    /// A fault of the service or its database, already logged.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) | ApiError::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadQuery(_) => StatusCode::BAD_REQUEST,
            ApiError::DiskFull => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::DatabaseUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InvalidId(_) | ApiError::NoStudent(_) | ApiError::NoGrade { .. } => {
                StatusCode::NOT_FOUND
            }
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NoStudent(id) => ApiError::NoStudent(id),
            StoreError::NoGrade { student, grade } => ApiError::NoGrade { student, grade },
            StoreError::KeyReused => ApiError::KeyReused,
            StoreError::DiskFull => {
                tracing::error!("grading storage failed: disk full");
                ApiError::DiskFull
            }
            StoreError::Unavailable(why) => {
                // The cause (it may name the server) goes to the log, never into the answer.
                tracing::warn!(%why, "grading database unavailable");
                ApiError::DatabaseUnavailable
            }
            fault => {
                tracing::error!(error = %fault, "grading storage failed");
                ApiError::Internal
            }
        }
    }
}

impl From<ApiError> for Response {
    fn from(err: ApiError) -> Response {
        json_error(err.status(), &err.to_string())
    }
}
