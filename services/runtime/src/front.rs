//! What every request passes through on its way in and out, whatever its route: the `Host` check
//! (see [`crate::browser`]), the choice between the runtime's routes and the service's, the trace
//! context (see [`crate::trace`]), the security headers, and the count and latency at `/metrics`.
//!
//! Plain code around the routes rather than warp filters wrapped around them: each filter level
//! nests the routes' future once more and is polled through on every request. As filters (a
//! `Host` filter and a `recover`, a `map` for the headers, warp's `log` for the metrics, a path
//! peek before the runtime's routes) they cost grading's `GET /students/1` about 1,800
//! instructions more than they do here, 8 % of the whole request (callgrind).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tower_service::Service;
use tracing::level_filters::LevelFilter;
use warp::http::header::{self, HeaderValue};
use warp::http::{Method, Request, StatusCode, Uri};
use warp::reply::Response;

use crate::browser::{HostAllowList, add_security_headers};
use crate::http::json_error;
use crate::metrics::{RequestMetrics, RequestRow};
use crate::trace::TraceContext;

/// The target of the one debug line per request: where it has always been logged from, so that
/// `RUST_LOG=info,service_runtime::runtime=debug` (the system tests count requests by it) still
/// shows it.
const REQUEST_LOG_TARGET: &str = "service_runtime::runtime";

/// The first path segments of the runtime's own routes (`/health`, `/status/...`, `/metrics`).
const RUNTIME_SEGMENTS: [&str; 3] = ["health", "status", "metrics"];

/// The per-request policy of one server, shared by all its connections.
pub(crate) struct Front<S> {
    /// The runtime's routes, then the service's (a service may answer under those first segments
    /// too: the portal's `/status` page): for paths that begin with one of [`RUNTIME_SEGMENTS`].
    runtime: S,
    /// The service's routes alone, for every other path: most requests never try the runtime's.
    app: S,
    allowed: HostAllowList,
    requests: Arc<RequestMetrics>,
}

/// Whether a request's connection is under the server's cap (see `crate::server`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Under the cap: every request is served by the routes (if its `Host` is ours), on a
    /// keep-alive connection.
    Serve,
    /// Over the cap: one request, `/health` served and anything else answered 503.
    Shed,
}

impl<S> Front<S> {
    pub(crate) fn new(
        runtime: S,
        app: S,
        allowed: HostAllowList,
        requests: Arc<RequestMetrics>,
    ) -> Front<S> {
        Front {
            runtime,
            app,
            allowed,
            requests,
        }
    }

    /// The answer to one request: HEAD as GET (hyper sends the headers without the body), a 421
    /// without the routes seeing it when its `Host` is not ours, and on a shed connection a 503
    /// for anything but `/health`.
    pub(crate) fn answer<B>(
        &self,
        admission: Admission,
        mut request: Request<B>,
    ) -> Answer<S::Future>
    where
        S: Service<Request<B>, Response = Response, Error = Infallible> + Clone,
    {
        let started = Instant::now();
        if request.method() == Method::HEAD {
            *request.method_mut() = Method::GET;
        }
        let path = request.uri().path();
        let row = self.requests.row(request.method(), path);
        let trace = TraceContext::for_request(request.headers());
        // Not `tracing::enabled!`: with per-layer filters (stderr's and shipping's) it leaves a
        // layer's "disabled" mark behind when no event follows, and the next event on this
        // thread (the handler's "grade added") was then not shipped (tracing issue 2519).
        let logged = (LevelFilter::current() >= LevelFilter::DEBUG)
            .then(|| Box::new((request.method().clone(), request.uri().clone())));
        let routed = if admission == Admission::Shed && path != "/health" {
            Routed::Ready(Some(Box::new(shed())))
        } else if !self.allows(&request) {
            Routed::Ready(Some(Box::new(json_error(
                StatusCode::MISDIRECTED_REQUEST,
                "this server does not answer for that Host; see --allowed-host",
            ))))
        } else {
            let routes = match RUNTIME_SEGMENTS.contains(&first_segment(path)) {
                true => &self.runtime,
                false => &self.app,
            };
            // `call` takes `&mut self`; the routes are boxed, so the clone is a reference count.
            // Their future is boxed too: it is warp's nest of every route's, moved into hyper's
            // dispatcher and polled through two more layers, and one allocation costs less than
            // the copies (callgrind). The call runs outside the trace: it only builds warp's
            // futures (and matches the first route's path); handlers run when polled, in it.
            let mut routes = routes.clone();
            Routed::Routes(Box::pin(routes.call(request)))
        };
        Answer {
            trace,
            routed,
            started,
            row,
            requests: self.requests.clone(),
            logged,
        }
    }

    /// Whether the request's `Host` names this service. A request without one is refused like a
    /// foreign one. 421 Misdirected Request (RFC 9110, 15.5.20) says exactly this: the request
    /// reached a server that does not answer for that name; a 400 would say the request itself
    /// was malformed, which a rebinding page's request is not.
    fn allows<B>(&self, request: &Request<B>) -> bool {
        request
            .headers()
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .is_some_and(|host| self.allowed.allows(host))
    }
}

/// `health` of `/health` and of `/health/x`.
fn first_segment(path: &str) -> &str {
    let rest = path.strip_prefix('/').unwrap_or(path);
    rest.split_once('/').map_or(rest, |(first, _)| first)
}

fn shed() -> Response {
    let mut response = json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many connections; try again shortly",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Boxed either way: the answer is moved several times on its way through hyper, and a
/// response in place would more than double its size.
enum Routed<F> {
    /// The routes' answer, on its way.
    Routes(Pin<Box<F>>),
    /// Answered without the routes (taken when returned).
    Ready(Option<Box<Response>>),
}

/// One request's answer: the routes' (polled in the request's trace context) or the front's
/// own, with the security headers and a `traceparent` (so the caller, a curl user too, learns
/// the trace id and the span it was served in), counted at `/metrics` once it is ready.
pub(crate) struct Answer<F> {
    trace: TraceContext,
    routed: Routed<F>,
    started: Instant,
    row: RequestRow,
    requests: Arc<RequestMetrics>,
    /// The method and path for the debug line, kept only when that line is wanted.
    logged: Option<Box<(Method, Uri)>>,
}

impl<F> Future for Answer<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Response;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        // Every field is Unpin: the routes' future is boxed.
        let this = self.get_mut();
        let trace = this.trace;
        let mut response = match &mut this.routed {
            Routed::Routes(routed) => {
                match crate::trace::sync_scope(trace, || routed.as_mut().poll(cx)) {
                    Poll::Ready(Ok(response)) => response,
                    Poll::Ready(Err(never)) => match never {},
                    Poll::Pending => return Poll::Pending,
                }
            }
            Routed::Ready(response) => *response
                .take()
                .expect("an answer is polled to the end once"),
        };
        let headers = response.headers_mut();
        add_security_headers(headers);
        headers.insert(crate::trace::TRACEPARENT, trace.header_value());
        let elapsed = this.started.elapsed();
        this.requests.record(this.row, response.status(), elapsed);
        if let Some(logged) = &this.logged {
            let (method, uri) = &**logged;
            tracing::debug!(
                target: REQUEST_LOG_TARGET,
                %method,
                path = uri.path(),
                status = response.status().as_u16(),
                micros = elapsed.as_micros() as u64,
                "request"
            );
        }
        Poll::Ready(response)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use warp::{Filter, Reply};

    use super::*;

    /// A front whose runtime routes answer `/health`, and whose service answers `/status` (a
    /// path under a runtime segment, as the portal's page is) and everything else with its path,
    /// counting the requests its routes see.
    fn front(
        seen: Arc<AtomicUsize>,
    ) -> Front<impl Service<Request<String>, Response = Response, Error = Infallible> + Clone> {
        let health = warp::path!("health").map(|| StatusCode::NO_CONTENT.into_response());
        let app = warp::path::full()
            .map(move |path: warp::path::FullPath| {
                seen.fetch_add(1, Ordering::Relaxed);
                warp::reply::with_header("app", "x-seen-path", path.as_str()).into_response()
            })
            .boxed();
        Front::new(
            warp::service(health.or(app.clone()).unify().boxed()),
            warp::service(app),
            HostAllowList::new("10.0.0.7", &["gradebook.example".to_owned()]),
            Arc::new(RequestMetrics::new(&[])),
        )
    }

    fn request(host: &str, path: &str) -> Request<String> {
        Request::builder()
            .uri(path)
            .header("host", host)
            .body(String::new())
            .unwrap()
    }

    fn seen_path(response: &Response) -> Option<&str> {
        let path = response.headers().get("x-seen-path")?;
        Some(path.to_str().unwrap())
    }

    fn assert_answer_headers(response: &Response, what: &str) {
        let headers = response.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
        assert_eq!(headers["referrer-policy"], "same-origin", "{what}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
        assert!(headers.contains_key("traceparent"), "{what}");
    }

    #[tokio::test]
    async fn a_foreign_host_gets_421_without_the_routes_and_every_answer_carries_the_headers() {
        let seen = Arc::new(AtomicUsize::new(0));
        let front = front(seen.clone());
        let served = front
            .answer(Admission::Serve, request("localhost:5000", "/students/1"))
            .await;
        assert_eq!(served.status(), StatusCode::OK);
        assert_answer_headers(&served, "served");
        assert_eq!(seen_path(&served), Some("/students/1"));
        assert_eq!(seen.load(Ordering::Relaxed), 1);

        for host in ["rebound.evil.example:5000", ""] {
            let refused = front
                .answer(Admission::Serve, request(host, "/students/1"))
                .await;
            assert_eq!(
                refused.status(),
                StatusCode::MISDIRECTED_REQUEST,
                "{host:?}"
            );
            assert_answer_headers(&refused, "refused");
        }
        assert_eq!(
            seen.load(Ordering::Relaxed),
            1,
            "the routes never saw a refused request"
        );
    }

    #[tokio::test]
    async fn runtime_segments_try_the_runtime_routes_then_the_service_ones() {
        let front = front(Arc::new(AtomicUsize::new(0)));
        let health = front
            .answer(Admission::Serve, request("gradebook.example", "/health"))
            .await;
        assert_eq!(health.status(), StatusCode::NO_CONTENT);
        let status = front
            .answer(Admission::Serve, request("10.0.0.7:6000", "/status"))
            .await;
        assert_eq!(seen_path(&status), Some("/status"));
        let head = Request::builder()
            .method(Method::HEAD)
            .uri("/health")
            .header("host", "localhost")
            .body(String::new())
            .unwrap();
        let head = front.answer(Admission::Serve, head).await;
        assert_eq!(
            head.status(),
            StatusCode::NO_CONTENT,
            "HEAD is served as GET"
        );
    }

    #[tokio::test]
    async fn a_shed_connection_gets_503_but_health_is_answered() {
        let seen = Arc::new(AtomicUsize::new(0));
        let front = front(seen.clone());
        let refused = front
            .answer(Admission::Shed, request("localhost", "/students/1"))
            .await;
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()["retry-after"], "1");
        assert_answer_headers(&refused, "shed");
        assert_eq!(seen.load(Ordering::Relaxed), 0);
        let health = front
            .answer(Admission::Shed, request("localhost", "/health"))
            .await;
        assert_eq!(health.status(), StatusCode::NO_CONTENT);
    }

    #[tokio::test]
    async fn every_answer_is_counted_under_its_route_and_status() {
        let front = front(Arc::new(AtomicUsize::new(0)));
        front
            .answer(Admission::Serve, request("localhost", "/health"))
            .await;
        front
            .answer(Admission::Serve, request("evil.example", "/health"))
            .await;
        front
            .answer(Admission::Shed, request("localhost", "/x"))
            .await;
        let mut out = crate::metrics::Exposition::default();
        front.requests.render(&mut out);
        let text = out.into_text();
        for line in [
            r#"gradebook_http_requests_total{route="/health",method="GET",status="204"} 1"#,
            r#"gradebook_http_requests_total{route="/health",method="GET",status="421"} 1"#,
            r#"gradebook_http_requests_total{route="other",method="GET",status="503"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
