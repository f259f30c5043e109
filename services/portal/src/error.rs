//! Every way a portal request can fail, warp's own rejections and the upstream services'
//! failures included, and the one place that turns each into an HTML page with the right status.
//! A form that grading refused is not here: that is an answer, the form shown again (see
//! [`crate::upstream::Verdict`]).

use std::convert::Infallible;

use service_runtime::http::BodyTooLarge;
use warp::Rejection;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::csrf::CsrfRefusal;
use crate::pages::{self, ErrorPage, MAX_FORM_BYTES};
use crate::upstream::UpstreamError;

/// What went wrong, in terms a teacher (or the portal's operator, through the log) can act on.
/// Carries messages and statuses only, never a page: which page shows an error is decided once,
/// in `From<PortalError> for Response`.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    #[error("There is no student with id {0}.")]
    StudentNotFound(u64),
    #[error("Student {student} has no grade with id {grade}.")]
    GradeNotFound { student: u64, grade: u64 },
    #[error("The {service} service is unavailable right now. Please try again in a moment.")]
    Unavailable { service: &'static str },
    /// The dependency answered, but not as its contract says; `detail` is logged, not shown.
    #[error("{service}: {detail}")]
    Upstream {
        service: &'static str,
        detail: String,
    },
    #[error("There is no page at this address.")]
    NotFound,
    #[error("This page does not accept that method.")]
    MethodNotAllowed,
    #[error("The form is larger than the limit of {limit} bytes.")]
    BodyTooLarge { limit: u64 },
    #[error("Forms must be sent as application/x-www-form-urlencoded.")]
    UnsupportedMediaType,
    #[error("{0}")]
    BadRequest(String),
    /// A form post that failed the CSRF checks; the message says which.
    #[error("{0}")]
    Forbidden(#[from] CsrfRefusal),
    /// A bug in the portal; logged, never shown.
    #[error("{0}")]
    Internal(String),
}

/// The one mapping of an upstream failure to what the reader is told.
impl From<UpstreamError> for PortalError {
    fn from(err: UpstreamError) -> PortalError {
        match err {
            UpstreamError::Unavailable { service } => PortalError::Unavailable { service },
            UpstreamError::StudentNotFound(id) => PortalError::StudentNotFound(id),
            UpstreamError::GradeNotFound { student, grade } => {
                PortalError::GradeNotFound { student, grade }
            }
            UpstreamError::Broken { service, detail } => PortalError::Upstream { service, detail },
        }
    }
}

impl PortalError {
    fn status(&self) -> StatusCode {
        match self {
            PortalError::StudentNotFound(_)
            | PortalError::GradeNotFound { .. }
            | PortalError::NotFound => StatusCode::NOT_FOUND,
            PortalError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            PortalError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            PortalError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            PortalError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            PortalError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            PortalError::BadRequest(_) => StatusCode::BAD_REQUEST,
            PortalError::Forbidden(_) => StatusCode::FORBIDDEN,
            PortalError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the page says: the error itself, except where details are for the log only.
    fn public_message(&self) -> String {
        match self {
            PortalError::Upstream { service, .. } => {
                format!(
                    "The {service} service gave an answer the portal could not use. The problem has been logged."
                )
            }
            PortalError::Internal(_) => {
                "Something went wrong in the portal. The problem has been logged.".to_owned()
            }
            other => other.to_string(),
        }
    }
}

impl From<PortalError> for Response {
    fn from(err: PortalError) -> Response {
        let status = err.status();
        match &err {
            PortalError::Upstream { .. } | PortalError::Internal(_) => tracing::error!("{err}"),
            PortalError::Unavailable { .. } => tracing::warn!("{err}"),
            _ => {}
        }
        match err {
            PortalError::Unavailable { .. } => {
                let page = pages::render(status, &ErrorPage::new(status, err.public_message()));
                // Consul lists a returning instance within a second or so: worth retrying soon.
                warp::reply::with_header(page, "retry-after", "1").into_response()
            }
            PortalError::BodyTooLarge { .. } => {
                let mut page = pages::render(status, &ErrorPage::new(status, err.public_message()));
                // The rest of the body is never read: the connection cannot be reused.
                service_runtime::http::close_after(&mut page);
                page
            }
            other => pages::render(status, &ErrorPage::new(status, other.public_message())),
        }
    }
}

/// Maps warp's own rejections (unknown path, wrong method, oversized or malformed form) to HTML
/// pages. The portal's routes end with it, so discovery's JSON mapping never sees a rejection.
pub async fn handle_rejection(rejection: Rejection) -> Result<Response, Infallible> {
    let error = if rejection.is_not_found() {
        PortalError::NotFound
    } else if let Some(refusal) = rejection.find::<CsrfRefusal>() {
        PortalError::Forbidden(refusal.clone())
    } else if let Some(too_large) = rejection.find::<BodyTooLarge>() {
        PortalError::BodyTooLarge {
            limit: too_large.limit,
        }
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        PortalError::BodyTooLarge {
            limit: MAX_FORM_BYTES,
        }
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        PortalError::BadRequest("A Content-Length header is required.".to_owned())
    } else if let Some(err) = rejection.find::<warp::filters::body::BodyDeserializeError>() {
        PortalError::BadRequest(format!("The form could not be read: {err}"))
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        PortalError::BadRequest("The query string could not be read.".to_owned())
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        PortalError::UnsupportedMediaType
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        PortalError::MethodNotAllowed
    } else {
        PortalError::Internal(format!("unhandled rejection: {rejection:?}"))
    };
    Ok(error.into())
}
