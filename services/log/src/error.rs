//! Every way a log request can fail, and the one place that maps them to HTTP.

use service_runtime::http::json_error;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::record::InvalidRecord;
use crate::store::StoreError;

/// What went wrong, in terms the caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("empty body: send the log message as the request body")]
    EmptyBody,
    #[error("the body is not valid UTF-8")]
    NotUtf8,
    #[error("invalid JSON body: {0}")]
    InvalidJson(String),
    #[error("records[{index}].{source}")]
    InvalidRecord { index: usize, source: InvalidRecord },
    #[error("{0}")]
    InvalidText(InvalidRecord),
    #[error("records: a batch must hold at least one record")]
    EmptyBatch,
    #[error("records: a batch holds at most {max} records, this one has {got}")]
    TooManyRecords { got: usize, max: usize },
    #[error("limit: must be a whole number from 1 to {max}")]
    Limit { max: usize },
    #[error("before: must be a record number (seq), a whole number from 1")]
    Before,
    #[error("after: must be a record number (seq), a whole number from 0")]
    After,
    #[error("wait: must be a duration such as 30s or 5m, at most 5m")]
    Wait,
    #[error("level: must be trace, debug, info, warn or error")]
    LevelFilter,
    #[error("trace: must be a W3C trace-id, 32 lowercase hex digits, not all zero")]
    TraceFilter,
    #[error("wait: only with after=SEQ (the newest record already seen)")]
    WaitWithoutAfter,
    #[error("Idempotency-Key: must be 1 to {max} letters, digits, '-', '_', '.' or ':'")]
    RequestKey { max: usize },
    #[error("disk full: the records were not stored")]
    DiskFull,
    /// The store cannot take records now (a write failed, the store is closed); the cause is in
    /// the service's log, never in the answer.
    #[error("storage unavailable: the records were not stored")]
    Storage,
    /// Anything else that is the service's fault. One opaque answer: the cause (a file path, an
    /// OS error) is in the service's log, never in the answer.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::EmptyBody
            | ApiError::NotUtf8
            | ApiError::InvalidJson(_)
            | ApiError::EmptyBatch
            | ApiError::Limit { .. }
            | ApiError::Before
            | ApiError::After
            | ApiError::Wait
            | ApiError::LevelFilter
            | ApiError::TraceFilter
            | ApiError::WaitWithoutAfter
            | ApiError::RequestKey { .. } => StatusCode::BAD_REQUEST,
            ApiError::InvalidRecord { .. } | ApiError::InvalidText(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::TooManyRecords { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::DiskFull => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Storage => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        tracing::error!("{err}");
        match err {
            StoreError::Write(io) if io.raw_os_error() == Some(28) => ApiError::DiskFull,
            // The full error (with the file's path) is in the log line above; a client learns
            // only that the store is away, never where it lives or why.
            StoreError::Write(_)
            | StoreError::Closed
            | StoreError::Open { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Locked { .. } => ApiError::Storage,
            StoreError::Read(_) => ApiError::Internal,
        }
    }
}

impl From<ApiError> for Response {
    fn from(err: ApiError) -> Response {
        json_error(err.status(), &err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn a_store_error_tells_the_client_no_path() {
        let errors = [
            StoreError::Open {
                path: PathBuf::from("/srv/secret-place/records.jsonl"),
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            },
            StoreError::Corrupt {
                path: PathBuf::from("/srv/secret-place/records.jsonl"),
                line: 7,
            },
            StoreError::Locked {
                path: PathBuf::from("/srv/secret-place/records.jsonl"),
            },
            StoreError::Read(std::io::Error::other("/srv/secret-place/records.jsonl")),
        ];
        for error in errors {
            // The answer's body is this text (`From<ApiError> for Response`).
            let answer = ApiError::from(error);
            let (status, text) = (answer.status(), answer.to_string());
            assert!(status.is_server_error(), "{status}");
            assert!(!text.contains("secret-place"), "{status} {text}");
        }
    }
}
