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

/// Bodies over the limit but under this size are read and thrown away before the 413 goes out.
/// Closing a connection with unread data in it makes the kernel send a reset, which can destroy
/// the 413 before the client reads it; draining first ("lingering close") lets an ordinary
/// client, `curl -d @big-file` say, see the answer. Anything larger is cut off at once.
const DRAIN_LIMIT: u64 = 8 * 1024 * 1024;

/// Limits the body to `limit` bytes, rejecting with [`BodyTooLarge`] so the answer can say what
/// the limit is (warp's own rejection does not carry it).
pub fn body_limit(limit: u64) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    let drain_then_refuse = warp::header::<u64>("content-length")
        .and_then(move |length: u64| async move {
            if length > limit && length <= DRAIN_LIMIT {
                Ok(())
            } else {
                Err(warp::reject::custom(BodyTooLarge { limit }))
            }
        })
        .untuple_one()
        .and(warp::body::stream())
        .and_then(move |body| drain_and_refuse(body, limit))
        .untuple_one();
    warp::body::content_length_limit(limit)
        .or(drain_then_refuse)
        .unify()
        .or_else(move |rejection: Rejection| async move {
            if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
                Err(warp::reject::custom(BodyTooLarge { limit }))
            } else {
                Err(rejection)
            }
        })
}

/// A JSON body sent without `Content-Type: application/json`; answered 415.
#[derive(Debug)]
pub struct NotJson;

impl warp::reject::Reject for NotJson {}

/// Passes only requests that say their body is JSON (`application/json`, parameters such as
/// `charset` allowed). warp's own JSON filter also takes a body with no `Content-Type` at all,
/// which is what a page on any site can send with a plain `fetch` or form, without the CORS
/// preflight a JSON type would trigger: requiring the type puts every JSON write behind that
/// preflight, which no other origin passes.
pub fn json_content_type() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and_then(|content_type: Option<String>| async move {
            let essence = content_type
                .as_deref()
                .and_then(|value| value.split(';').next())
                .map(str::trim);
            match essence {
                Some(essence) if essence.eq_ignore_ascii_case("application/json") => Ok(()),
                _ => Err(warp::reject::custom(NotJson)),
            }
        })
        .untuple_one()
}

/// Reads a refused body to its end (Content-Length bounds it), keeping nothing.
async fn drain_and_refuse<S: futures_util::Stream>(body: S, limit: u64) -> Result<(), Rejection> {
    use futures_util::StreamExt;
    body.for_each(|_chunk| async {}).await;
    Err(warp::reject::custom(BodyTooLarge { limit }))
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
    } else if rejection.find::<NotJson>().is_some() {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json".to_owned(),
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
    let mut response = json_error(status, &message);
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        close_after(&mut response);
    }
    Ok(response)
}

/// Marks an answer given before reading the request's body (a body over the limit) as the last
/// on its connection. The server will not read the rest of the body, so it must close the
/// connection; without saying so, a client that reuses it has its next request fail.
pub fn close_after(response: &mut Response) {
    response.headers_mut().insert(
        warp::http::header::CONNECTION,
        warp::http::HeaderValue::from_static("close"),
    );
}

/// A `T` read only from a JSON object. serde's derive also reads a struct from an array of its
/// fields in order (`["Ada", "Lovelace"]`), which no client means and which bypasses
/// `deny_unknown_fields`; wrapping the target in `Object` turns that into "invalid type:
/// sequence, expected a JSON object". Errors inside the object keep serde_json's position.
#[derive(Debug)]
pub struct Object<T>(pub T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for ObjectVisitor<T> {
            type Value = Object<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Object<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }

        deserializer.deserialize_map(ObjectVisitor(std::marker::PhantomData))
    }
}

/// For `#[serde(deserialize_with = "service_runtime::http::objects")]` on a `Vec<T>`: each element
/// must be a JSON object (see [`Object`]).
pub fn objects<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    let wrapped: Vec<Object<T>> = serde::Deserialize::deserialize(deserializer)?;
    Ok(wrapped.into_iter().map(|Object(t)| t).collect())
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
            .and(json_content_type())
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

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Pair {
        a: String,
        #[allow(dead_code)]
        b: u8,
    }

    #[test]
    fn objects_are_read_from_json_objects_only() {
        let Object(pair) = serde_json::from_str::<Object<Pair>>(r#"{"a": "x", "b": 1}"#).unwrap();
        assert_eq!(pair.a, "x");
        let array = serde_json::from_str::<Object<Pair>>(r#"["x", 1]"#).unwrap_err();
        assert!(
            array
                .to_string()
                .starts_with("invalid type: sequence, expected a JSON object"),
            "{array}"
        );
        let inner = serde_json::from_str::<Object<Pair>>(r#"{"a": "x", "b": "one"}"#).unwrap_err();
        assert!(inner.to_string().contains("line 1 column"), "{inner}");
        let unknown = serde_json::from_str::<Object<Pair>>(r#"{"a": "x", "b": 1, "c": 2}"#);
        assert!(
            unknown
                .unwrap_err()
                .to_string()
                .contains("unknown field `c`")
        );

        #[derive(Debug, serde::Deserialize)]
        struct List {
            #[serde(deserialize_with = "objects")]
            items: Vec<Pair>,
        }
        let list = serde_json::from_str::<List>(r#"{"items": [{"a": "x", "b": 1}]}"#).unwrap();
        assert_eq!(list.items[0].a, "x");
        assert!(serde_json::from_str::<List>(r#"{"items": [["x", 1]]}"#).is_err());
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
            .header("content-type", "application/json")
            .body("[1,2,3,4,5,6,7,8,9,10,11]")
            .reply(&api())
            .await;
        assert_eq!(huge.headers()["connection"], "close");
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

        // What a page on another site can send without a CORS preflight.
        for content_type in [None, Some("text/plain"), Some("application/jsonx")] {
            let mut request = warp::test::request().method("POST").path("/things");
            if let Some(content_type) = content_type {
                request = request.header("content-type", content_type);
            }
            let (status, message) = error_of(request.body("{}").reply(&api()).await).await;
            assert_eq!(
                status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{content_type:?}"
            );
            assert!(message.contains("application/json"), "{message}");
        }
        let with_charset = warp::test::request()
            .method("POST")
            .path("/things")
            .header("content-type", "Application/JSON; charset=utf-8")
            .body("{}")
            .reply(&api())
            .await;
        assert_eq!(with_charset.status(), StatusCode::OK);
    }
}
