//! HTTP plumbing every API shares: JSON error bodies and one mapping of warp's own rejections
//! (unknown path, wrong method, oversized or malformed body) to clear 4xx answers.

use std::convert::Infallible;

use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

/// The body of every error answer: `{"error": "..."}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: &'a str,
}

/// An error answer with a JSON body naming the problem.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    warp::reply::with_status(warp::reply::json(&ErrorBody { error: message }), status)
        .into_response()
}

/// A request body over the limit; answered 413 with the limit in the message.
#[derive(Debug)]
pub struct BodyTooLarge {
    pub limit: u64,
}

impl warp::reject::Reject for BodyTooLarge {}

/// Limits the body to `limit` bytes, rejecting with [`BodyTooLarge`] so the answer can say what
/// the limit is (warp's own rejection does not carry it).
pub fn body_limit(limit: u64) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::body::content_length_limit(limit).or_else(move |rejection: Rejection| async move {
        if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
            Err(warp::reject::custom(BodyTooLarge { limit }))
        } else {
            Err(rejection)
        }
    })
}

/// Turns a handler's result into a response: `Ok` as it is, `Err` through its own mapping.
/// Handlers use it so that each service maps its errors to HTTP in exactly one place.
pub fn respond<T: Reply, E: Into<Response>>(result: Result<T, E>) -> Response {
    match result {
        Ok(reply) => reply.into_response(),
        Err(err) => err.into(),
    }
}

/// Maps the rejections warp produces itself. Handlers never reject (they answer through
/// [`respond`]), so anything reaching here is about routing or the shape of the request.
/// Routes must match the path before the method: warp ranks "method not allowed" above "not
/// found", so a method filter first would answer 405 for every unknown path.
pub async fn handle_rejection(rejection: Rejection) -> Result<Response, Infallible> {
    let (status, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "no such resource".to_owned())
    } else if let Some(too_large) = rejection.find::<BodyTooLarge>() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body larger than the limit of {} bytes",
                too_large.limit
            ),
        )
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large".to_owned(),
        )
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "a Content-Length header is required".to_owned(),
        )
    } else if let Some(err) = rejection.find::<warp::filters::body::BodyDeserializeError>() {
        (
            StatusCode::BAD_REQUEST,
            format!("invalid JSON body: {}", source_text(err)),
        )
    } else if let Some(err) = rejection.find::<warp::reject::InvalidQuery>() {
        (
            StatusCode::BAD_REQUEST,
            format!("invalid query string: {err}"),
        )
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported Content-Type".to_owned(),
        )
    } else if let Some(err) = rejection.find::<warp::reject::InvalidHeader>() {
        (StatusCode::BAD_REQUEST, err.to_string())
    } else if let Some(err) = rejection.find::<warp::reject::MissingHeader>() {
        (StatusCode::BAD_REQUEST, err.to_string())
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed for this resource".to_owned(),
        )
    } else {
        tracing::error!(?rejection, "unhandled rejection");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error".to_owned(),
        )
    };
    Ok(json_error(status, &message))
}

/// The innermost cause, which for serde names the field and position.
fn source_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
        let create = warp::path("things")
            .and(warp::path::end())
            .and(warp::post())
            .and(body_limit(16))
            .and(warp::body::json())
            .map(|v: serde_json::Value| warp::reply::json(&v).into_response());
        let list = warp::path("things")
            .and(warp::path::end())
            .and(warp::get())
            .map(|| warp::reply::json(&Vec::<u8>::new()).into_response());
        create.or(list).unify().recover(handle_rejection).unify()
    }

    async fn error_of(response: warp::http::Response<bytes::Bytes>) -> (StatusCode, String) {
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        (
            response.status(),
            body["error"].as_str().unwrap().to_owned(),
        )
    }

    #[tokio::test]
    async fn rejections_become_json_errors_naming_the_problem() {
        let unknown = warp::test::request().path("/nope").reply(&api()).await;
        assert_eq!(error_of(unknown).await.0, StatusCode::NOT_FOUND);

        let wrong_method = warp::test::request()
            .method("DELETE")
            .path("/things")
            .reply(&api())
            .await;
        assert_eq!(
            error_of(wrong_method).await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );

        let huge = warp::test::request()
            .method("POST")
            .path("/things")
            .body("[1,2,3,4,5,6,7,8,9,10,11]")
            .reply(&api())
            .await;
        let (status, message) = error_of(huge).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(message.contains("16 bytes"), "{message}");

        let malformed = warp::test::request()
            .method("POST")
            .path("/things")
            .header("content-type", "application/json")
            .body("{\"a\":")
            .reply(&api())
            .await;
        let (status, message) = error_of(malformed).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message.starts_with("invalid JSON body"), "{message}");
    }
}
