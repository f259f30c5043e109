//! The portal's pages as warp routes. Each route matches its path before its method (so an
//! unknown path is a 404, not a 405), and handlers are plain async functions taking typed input
//! and returning a page or a [`PortalError`].

use std::sync::Arc;
use std::time::Duration;

use discovery::ProviderPool;
use discovery::http::{body_limit, respond};
use serde::Deserialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::error::{PortalError, RejectedGrade, handle_rejection};
use crate::pages::{
    self, DependencyView, GradeForm, LogsPage, ShippingView, StatusPage, StudentPage, StudentsPage,
};
use crate::upstream::{
    GradeOutcome, Grading, LOG_PAGE_RECORDS, LogReader, NewGrade, is_service_name,
};

/// The largest grade form accepted; a real one is a few hundred bytes.
pub const MAX_FORM_BYTES: u64 = 16 * 1024;

/// What every handler works with: the dependencies and where the Consul UI is. Cheap to clone.
#[derive(Clone)]
pub struct Portal {
    grading: Grading,
    log: LogReader,
    consul_ui: Arc<str>,
}

impl Portal {
    /// A portal over pools of grading and log instances, linking to the Consul UI at `consul_ui`.
    pub fn new(grading: ProviderPool, log: ProviderPool, consul_ui: String) -> Self {
        Portal {
            grading: Grading::new(grading),
            log: LogReader::new(log),
            consul_ui: consul_ui.into(),
        }
    }

    /// Waits until Consul has answered about both dependencies, or `limit`.
    pub async fn ready(&self, limit: Duration) {
        tokio::join!(
            self.grading.watch().ready(limit),
            self.log.watch().ready(limit)
        );
    }
}

/// Query of `GET /logs`.
#[derive(Debug, Default, Deserialize)]
pub struct LogsQuery {
    /// Show only this service's records.
    pub service: Option<String>,
    /// Show only records older than this one (its `seq`): the "Older records" link.
    pub before: Option<String>,
}

/// All pages, answering every request themselves: warp's rejections become HTML pages here, so
/// the JSON mapping that `discovery::Service::run` adds never sees one.
pub fn routes(portal: Portal) -> BoxedFilter<(Response,)> {
    let with_portal = warp::any().map(move || portal.clone());
    let students = warp::path::end()
        .and(warp::get())
        .and(with_portal.clone())
        .then(list_students)
        .map(respond);
    let student = warp::path!("students" / u64)
        .and(warp::get())
        .and(with_portal.clone())
        .then(show_student)
        .map(respond);
    let new_grade = warp::path!("students" / u64 / "grades")
        .and(warp::post())
        .and(body_limit(MAX_FORM_BYTES))
        .and(warp::body::form::<GradeForm>())
        .and(with_portal.clone())
        .then(add_grade)
        .map(respond);
    let status = warp::path!("status")
        .and(warp::get())
        .and(with_portal.clone())
        .map(|portal: Portal| show_status(&portal));
    let logs = warp::path!("logs")
        .and(warp::get())
        .and(warp::query::<LogsQuery>())
        .and(with_portal)
        .then(show_logs)
        .map(respond);
    students
        .or(student)
        .unify()
        .or(new_grade)
        .unify()
        .or(status)
        .unify()
        .or(logs)
        .unify()
        .recover(handle_rejection)
        .unify()
        .boxed()
}

#[tracing::instrument(level = "debug", skip_all)]
async fn list_students(portal: Portal) -> Result<Response, PortalError> {
    let students = portal.grading.students().await?;
    Ok(pages::render(StatusCode::OK, &StudentsPage { students }))
}

#[tracing::instrument(level = "debug", skip(portal))]
async fn show_student(id: u64, portal: Portal) -> Result<Response, PortalError> {
    let student = portal.grading.student(id).await?;
    let page = StudentPage {
        student,
        form: GradeForm::fresh(),
        error: None,
    };
    Ok(pages::render(StatusCode::OK, &page))
}

/// Post, then redirect: a reload of the page that follows does not add the grade twice.
#[tracing::instrument(level = "debug", skip(form, portal))]
async fn add_grade(id: u64, mut form: GradeForm, portal: Portal) -> Result<Response, PortalError> {
    // Forms are decoded leniently, invalid UTF-8 becoming U+FFFD: refuse rather than store that.
    if [&form.title, &form.kind, &form.score, &form.request]
        .iter()
        .any(|field| field.contains(char::REPLACEMENT_CHARACTER))
    {
        return Err(PortalError::BadRequest(
            "The form is not valid UTF-8 text.".to_owned(),
        ));
    }
    // A form from a page of ours carries its key; one from elsewhere gets its own.
    if form.request.is_empty() {
        form.request = discovery::pool::new_idempotency_key();
    } else if !is_request_key(&form.request) {
        return Err(PortalError::BadRequest(
            "request: the form's request key is 1 to 100 letters, digits, '-', '_', '.' or ':'; reload the page.".to_owned(),
        ));
    }
    let outcome = match parse_score(&form.score) {
        Some(score) => {
            let grade = NewGrade {
                title: &form.title,
                kind: &form.kind,
                score,
            };
            portal.grading.add_grade(id, &grade, &form.request).await?
        }
        // Checked here because the form's text cannot become grading's JSON number otherwise.
        None => GradeOutcome::Rejected("score: must be a number".to_owned()),
    };
    match outcome {
        GradeOutcome::Added => {
            let see_other = warp::reply::with_status(warp::reply(), StatusCode::SEE_OTHER);
            Ok(
                warp::reply::with_header(see_other, "location", format!("/students/{id}"))
                    .into_response(),
            )
        }
        GradeOutcome::Rejected(message) => {
            let student = portal.grading.student(id).await?;
            Err(PortalError::InvalidGrade(Box::new(RejectedGrade {
                student,
                form,
                message,
            })))
        }
    }
}

/// Whether `key` is one grading takes as an `Idempotency-Key`.
fn is_request_key(key: &str) -> bool {
    (1..=100).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A score as typed: surrounding spaces are forgiven, anything but a finite number is not.
fn parse_score(text: &str) -> Option<f64> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|score| score.is_finite())
}

fn show_status(portal: &Portal) -> Response {
    let dependencies = [portal.grading.watch(), portal.log.watch()]
        .into_iter()
        .map(|watch| DependencyView::from(&watch.current()))
        .collect();
    let page = StatusPage {
        dependencies,
        consul_ui: portal.consul_ui.to_string(),
        shipping: discovery::telemetry::shipping_stats().map(|stats| ShippingView::from(&*stats)),
    };
    pages::render(StatusCode::OK, &page)
}

#[tracing::instrument(level = "debug", skip(portal))]
async fn show_logs(query: LogsQuery, portal: Portal) -> Result<Response, PortalError> {
    let service = query
        .service
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    if let Some(service) = &service
        && !is_service_name(service)
    {
        return Err(PortalError::BadRequest(
            "service: a service name is 1 to 100 letters, digits, '.', '_' or '-'.".to_owned(),
        ));
    }
    let before = match query.before.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(
            text.parse::<u64>()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| {
                    PortalError::BadRequest(
                        "before: a record number, a whole number from 1.".to_owned(),
                    )
                })?,
        ),
    };
    let mut records = portal.log.recent(service.as_deref(), before).await?;
    // A full page whose oldest record is not the first may have older ones behind it.
    let older = match records.first().and_then(|oldest| oldest.seq) {
        Some(oldest) if records.len() == LOG_PAGE_RECORDS && oldest > 1 => Some(match &service {
            Some(service) => format!("/logs?service={service}&before={oldest}"),
            None => format!("/logs?before={oldest}"),
        }),
        _ => None,
    };
    // The log service answers oldest first; a reader wants the latest at the top.
    records.reverse();
    let page = LogsPage {
        records,
        service: service.unwrap_or_default(),
        older,
        paged: before.is_some(),
    };
    Ok(pages::render(StatusCode::OK, &page))
}

#[cfg(test)]
mod tests {
    use super::*;
    use discovery::{ConsulSettings, ProviderWatch};
    use warp::http::HeaderMap;
    use warp::test::RequestBuilder;

    /// Sends `request` to a portal whose Consul agent is unreachable, so no dependency has an
    /// instance: pages that need one must say so rather than fail or hang. Every answer is HTML.
    async fn send(request: RequestBuilder) -> (u16, HeaderMap, String) {
        let consul = ConsulSettings::local("http://127.0.0.1:1");
        let http = discovery::runtime::http_client();
        let pool = |name| ProviderPool::new(ProviderWatch::spawn(&consul, name), http.clone());
        let portal = Portal::new(
            pool("grading"),
            pool("log"),
            "http://127.0.0.1:1/ui/".into(),
        );
        let response = request.reply(&routes(portal)).await;
        let html = String::from_utf8_lossy(response.body()).into_owned();
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/html"),
            "{content_type}: {html}"
        );
        (response.status().as_u16(), response.headers().clone(), html)
    }

    fn get(path: &str) -> RequestBuilder {
        warp::test::request().path(path)
    }

    fn post(path: &str, content_type: &str, body: String) -> RequestBuilder {
        let request = warp::test::request().method("POST").path(path);
        request.header("content-type", content_type).body(body)
    }

    #[tokio::test]
    async fn every_failure_is_an_html_page_with_its_status() {
        let form = "application/x-www-form-urlencoded";
        let huge = format!("title={}", "x".repeat(MAX_FORM_BYTES as usize));
        let cases = [
            (
                get("/"),
                503,
                "The grading service is unavailable right now",
            ),
            (
                get("/students/1"),
                503,
                "The grading service is unavailable right now",
            ),
            (
                get("/logs"),
                503,
                "The log service is unavailable right now",
            ),
            (get("/nope"), 404, "There is no page at this address."),
            (get("/students/abc"), 404, "404 Not Found"),
            (
                get("/students/1").method("DELETE"),
                405,
                "does not accept that method",
            ),
            (post("/students/1/grades", form, huge), 413, "16384 bytes"),
            (
                post("/students/1/grades", "application/json", "{}".into()),
                415,
                form,
            ),
            (
                get("/logs?service=a%26limit%3D1"),
                400,
                "service: a service name is",
            ),
        ];
        for (request, status, text) in cases {
            let (got, _, html) = send(request).await;
            assert_eq!(got, status, "{html}");
            assert!(html.contains(text), "{text:?} missing from {html}");
        }
    }

    #[tokio::test]
    async fn an_unavailable_dependency_says_when_to_retry() {
        let (status, headers, _) = send(get("/")).await;
        assert_eq!(status, 503);
        assert_eq!(headers["retry-after"], "1");
    }

    #[tokio::test]
    async fn the_status_page_shows_each_dependency_and_links_the_consul_ui() {
        let (status, _, html) = send(get("/status")).await;
        assert_eq!(status, 200);
        assert!(
            html.contains(r#"<a href="http://127.0.0.1:1/ui/">"#),
            "{html}"
        );
        assert!(
            html.contains("<h2>grading ") && html.contains("<h2>log "),
            "{html}"
        );
        assert!(
            html.contains("No healthy instance is registered."),
            "{html}"
        );
    }

    #[test]
    fn scores_must_be_finite_numbers() {
        assert_eq!(parse_score(" 88.5 "), Some(88.5));
        assert_eq!(parse_score("100"), Some(100.0));
        for not_a_score in ["abc", "", "NaN", "inf"] {
            assert_eq!(parse_score(not_a_score), None, "{not_a_score}");
        }
    }
}
