//! The pages: askama templates (compiled in, HTML-escaped by construction) and the view data
//! they render. Everything here is plain data in, HTML out, so it is testable without services.

use std::time::Duration;

use askama::Template;
use discovery::{Provider, ProviderSet, WatchStatus};
use serde::Deserialize;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::upstream::{Grade, LogRecord, Student};

/// The list of students with their averages and the form to add one (`GET /`, and a refused
/// student form).
#[derive(Template)]
#[template(path = "students.html")]
pub struct StudentsPage {
    pub students: Vec<Student>,
    /// Pre-fills the form: empty at first, what was typed after a refusal.
    pub form: StudentForm,
    /// Why the form was refused, shown above it.
    pub error: Option<String>,
    /// What the last change did, shown once after its redirect.
    pub flash: Option<Flash>,
}

/// One student's grades and the form to add one (`GET /students/{id}`, and a refused form).
#[derive(Template)]
#[template(path = "student.html")]
pub struct StudentPage {
    pub student: Student,
    /// Pre-fills the form: empty at first, what was typed after a refusal.
    pub form: GradeForm,
    /// Why the form was refused, shown above it.
    pub error: Option<String>,
    /// What the last change did, shown once after its redirect.
    pub flash: Option<Flash>,
}

/// The form to change one grade (`GET /students/{id}/grades/{gradeId}/edit`, and a refused one).
#[derive(Template)]
#[template(path = "edit_grade.html")]
pub struct EditGradePage {
    pub student: Student,
    pub grade_id: u64,
    pub form: GradeForm,
    pub error: Option<String>,
}

/// The question before a grade is deleted (`GET /students/{id}/grades/{gradeId}/delete`).
#[derive(Template)]
#[template(path = "delete_grade.html")]
pub struct DeleteGradePage {
    pub student: Student,
    pub grade: Grade,
}

/// The student form as the browser sends it; every field is text, missing ones are empty.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct StudentForm {
    pub first_name: String,
    pub last_name: String,
    /// A key the page hands out with the form, sent to grading as the `Idempotency-Key`.
    pub request: String,
}

impl StudentForm {
    /// An empty form with a new request key.
    pub fn fresh() -> Self {
        StudentForm {
            request: discovery::pool::new_idempotency_key(),
            ..StudentForm::default()
        }
    }
}

/// The message a page shows once after a change and its redirect ("post, redirect, get"). It
/// travels as a short code in a cookie, so the message itself is always the portal's own text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flash {
    StudentAdded,
    GradeAdded,
    GradeChanged,
    GradeDeleted,
}

impl Flash {
    const ALL: [Flash; 4] = [
        Flash::StudentAdded,
        Flash::GradeAdded,
        Flash::GradeChanged,
        Flash::GradeDeleted,
    ];

    /// The cookie value.
    pub fn code(self) -> &'static str {
        match self {
            Flash::StudentAdded => "student-added",
            Flash::GradeAdded => "grade-added",
            Flash::GradeChanged => "grade-changed",
            Flash::GradeDeleted => "grade-deleted",
        }
    }

    /// The flash a cookie value names; anything else is ignored.
    pub fn from_code(code: &str) -> Option<Flash> {
        Flash::ALL.into_iter().find(|flash| flash.code() == code)
    }

    /// What the page says.
    pub fn message(self) -> &'static str {
        match self {
            Flash::StudentAdded => "Student added.",
            Flash::GradeAdded => "Grade added.",
            Flash::GradeChanged => "Grade changed.",
            Flash::GradeDeleted => "Grade deleted.",
        }
    }
}

/// The grade form as the browser sends it. Every field is text, and missing ones are empty, so
/// whatever was typed can be shown again and validation can name the field.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct GradeForm {
    pub title: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub score: String,
    /// A key the page hands out with the form (hidden), sent to grading as the
    /// `Idempotency-Key`: the same form sent twice adds one grade.
    pub request: String,
}

impl GradeForm {
    /// The grade types the form offers, in the order grading documents them.
    pub const KINDS: [&'static str; 3] = ["Test", "Quiz", "Homework"];

    /// An empty form with a new request key.
    pub fn fresh() -> Self {
        GradeForm {
            request: discovery::pool::new_idempotency_key(),
            ..GradeForm::default()
        }
    }

    /// The form filled with a grade as it is, to change it.
    pub fn of(grade: &Grade) -> Self {
        GradeForm {
            title: grade.title.clone(),
            kind: grade.kind.clone(),
            score: grade.score.to_string(),
            request: String::new(),
        }
    }

    /// Whether `kind` is the one chosen, to keep the select on it.
    pub fn has_kind(&self, kind: &str) -> bool {
        self.kind == kind
    }
}

/// Each dependency as its watch sees it, with a link to the Consul UI (`GET /status`).
#[derive(Template)]
#[template(path = "status.html")]
pub struct StatusPage {
    pub dependencies: Vec<DependencyView>,
    pub consul_ui: String,
    /// The portal's own log shipping, when installed (the binary installs it, tests may not).
    pub shipping: Option<ShippingView>,
}

/// Counters of this portal's log shipping: what the log service has, what waits, what was lost.
#[derive(Debug, Clone, Copy)]
pub struct ShippingView {
    pub delivered: u64,
    pub waiting: u64,
    pub dropped: u64,
}

impl From<&discovery::telemetry::ShippingStats> for ShippingView {
    fn from(stats: &discovery::telemetry::ShippingStats) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let delivered = stats.delivered.load(Relaxed);
        let queued = stats.queued.load(Relaxed);
        ShippingView {
            delivered,
            waiting: queued.saturating_sub(delivered),
            dropped: stats.dropped.load(Relaxed),
        }
    }
}

/// One dependency's provider set, with times already turned into text.
#[derive(Debug, Clone)]
pub struct DependencyView {
    pub service: String,
    pub providers: Vec<Provider>,
    /// `starting`, `live`, `stale` or `down` (Consul answers, but with no healthy instance);
    /// also the CSS class of the badge.
    pub status: &'static str,
    pub age: String,
    pub changed: String,
    pub failed_polls: u64,
}

impl From<&ProviderSet> for DependencyView {
    fn from(set: &ProviderSet) -> Self {
        DependencyView {
            service: set.service.to_string(),
            providers: set.providers.to_vec(),
            // No instance is what a reader must see first, however fresh the view of it is.
            status: match set.status {
                WatchStatus::Starting => "starting",
                _ if set.providers.is_empty() => "down",
                WatchStatus::Live => "live",
                WatchStatus::Stale { .. } => "stale",
            },
            age: format_duration(set.age()),
            changed: format_duration(set.changed_at.elapsed()),
            failed_polls: set.failed_polls,
        }
    }
}

/// Recent log records, newest first (`GET /logs`).
#[derive(Template)]
#[template(path = "logs.html")]
pub struct LogsPage {
    pub records: Vec<LogRecord>,
    /// The service filter, empty for all.
    pub service: String,
    /// The address of the next page back, when there may be older records.
    pub older: Option<String>,
    /// Whether this page starts below the newest records (so it links back to them).
    pub paged: bool,
}

/// Any failure, as a page with its status and a message meant for the reader.
#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub status: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ErrorPage {
    /// A page for `status` saying `message`.
    pub fn new(status: StatusCode, message: String) -> Self {
        ErrorPage {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("Error"),
            message,
        }
    }
}

impl Student {
    /// First and last name, as the pages show it.
    pub fn full_name(&self) -> String {
        format!("{} {}", self.first_name, self.last_name)
    }

    /// The average with one decimal, or a dash before the first grade.
    pub fn average_text(&self) -> String {
        match self.average {
            Some(average) => format!("{average:.1}"),
            None => "—".to_owned(),
        }
    }
}

/// `0.4 s` under a minute, `3m 12s` above: precise where it matters, short where it does not.
fn format_duration(duration: Duration) -> String {
    if duration < Duration::from_secs(60) {
        format!("{:.1} s", duration.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(duration.as_secs())).to_string()
    }
}

/// The page as an HTML response with `status`. Rendering fails only on a bug in a template's
/// Rust code; then the answer is a bare 500, logged.
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => warp::reply::with_status(warp::reply::html(html), status).into_response(),
        Err(err) => {
            tracing::error!("rendering a page failed: {err}");
            warp::reply::with_status("internal error", StatusCode::INTERNAL_SERVER_ERROR)
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Grade;

    fn student(first_name: &str, average: Option<f64>) -> Student {
        Student {
            id: 7,
            first_name: first_name.into(),
            last_name: "Stark".into(),
            average,
            grades: vec![Grade {
                id: 1,
                title: "Quiz <1>".into(),
                kind: "Quiz".into(),
                score: 92.5,
            }],
        }
    }

    #[test]
    fn names_and_titles_are_escaped() {
        let page = StudentsPage {
            students: vec![student("<script>alert(1)</script>", None)],
            form: StudentForm {
                first_name: "<b>Wanda</b>".into(),
                ..StudentForm::default()
            },
            error: None,
            flash: None,
        };
        let html = page.render().unwrap();
        assert!(!html.contains("<script>alert(1)</script>"), "{html}");
        assert!(
            html.contains("&#60;script&#62;alert(1)&#60;/script&#62; Stark"),
            "{html}"
        );
        assert!(
            html.contains(r#"value="&#60;b&#62;Wanda&#60;/b&#62;""#),
            "{html}"
        );

        let page = StudentPage {
            student: student("Tony", None),
            form: GradeForm::default(),
            error: None,
            flash: None,
        };
        assert!(page.render().unwrap().contains("Quiz &#60;1&#62;"));
    }

    #[test]
    fn averages_have_one_decimal_or_a_dash() {
        assert_eq!(student("Tony", Some(87.25)).average_text(), "87.2");
        assert_eq!(student("Tony", Some(90.0)).average_text(), "90.0");
        assert_eq!(student("Tony", None).average_text(), "—");
        let html = StudentsPage {
            students: vec![student("Tony", Some(87.46))],
            form: StudentForm::fresh(),
            error: None,
            flash: None,
        }
        .render()
        .unwrap();
        assert!(
            html.contains(r#"<a href="/students/7">Tony Stark</a>"#),
            "{html}"
        );
        assert!(html.contains("87.5"), "{html}");
    }

    #[test]
    fn a_refused_form_shows_the_message_and_keeps_what_was_typed() {
        let page = StudentPage {
            student: student("Tony", Some(92.5)),
            form: GradeForm {
                title: "Essay \"one\"".into(),
                kind: "Homework".into(),
                score: "abc".into(),
                request: "k-7".into(),
            },
            error: Some("score: must be a number".into()),
            flash: None,
        };
        let html = page.render().unwrap();
        assert!(html.contains("score: must be a number"), "{html}");
        assert!(
            html.contains(r#"<input type="hidden" name="request" value="k-7">"#),
            "the same request key goes with the form again: {html}"
        );
        assert!(html.contains(r#"value="Essay &#34;one&#34;""#), "{html}");
        assert!(html.contains(r#"value="abc""#), "{html}");
        assert!(
            html.contains("<option selected>Homework</option>"),
            "{html}"
        );
        assert!(html.contains("<option>Quiz</option>"), "{html}");
        assert!(html.contains(r#"action="/students/7/grades""#), "{html}");
    }

    #[test]
    fn a_flash_is_the_portals_own_text_named_by_a_code() {
        for flash in Flash::ALL {
            assert_eq!(Flash::from_code(flash.code()), Some(flash));
        }
        assert_eq!(Flash::from_code("<script>"), None);
        let page = StudentPage {
            student: student("Tony", None),
            form: GradeForm::fresh(),
            error: None,
            flash: Some(Flash::GradeDeleted),
        };
        let html = page.render().unwrap();
        assert!(
            html.contains(r#"<p class="flash" role="status">Grade deleted.</p>"#),
            "{html}"
        );
    }

    #[test]
    fn each_grade_links_to_its_edit_form_and_its_delete_question() {
        let tony = student("Tony", Some(92.5));
        let html = StudentPage {
            student: tony.clone(),
            form: GradeForm::fresh(),
            error: None,
            flash: None,
        }
        .render()
        .unwrap();
        assert!(
            html.contains(r#"href="/students/7/grades/1/edit""#),
            "{html}"
        );
        assert!(
            html.contains(r#"href="/students/7/grades/1/delete""#),
            "{html}"
        );

        let grade = tony.grades[0].clone();
        let edit = EditGradePage {
            student: tony.clone(),
            grade_id: 1,
            form: GradeForm::of(&grade),
            error: None,
        }
        .render()
        .unwrap();
        assert!(edit.contains(r#"action="/students/7/grades/1""#), "{edit}");
        assert!(edit.contains(r#"value="Quiz &#60;1&#62;""#), "{edit}");
        assert!(edit.contains(r#"value="92.5""#), "{edit}");
        assert!(edit.contains("<option selected>Quiz</option>"), "{edit}");

        let question = DeleteGradePage {
            student: tony,
            grade,
        }
        .render()
        .unwrap();
        assert!(question.contains("Delete this grade?"), "{question}");
        assert!(
            question.contains(r#"action="/students/7/grades/1/delete""#),
            "{question}"
        );
    }

    #[test]
    fn the_status_page_shows_providers_and_links_the_consul_ui() {
        let page = StatusPage {
            dependencies: vec![DependencyView {
                service: "grading".into(),
                providers: vec![Provider {
                    address: "127.0.0.1:6000".into(),
                    id: "grading-127.0.0.1-6000".into(),
                }],
                status: "stale",
                age: format_duration(Duration::from_millis(2500)),
                changed: format_duration(Duration::from_secs(192)),
                failed_polls: 3,
            }],
            consul_ui: "http://127.0.0.1:8500/ui/".into(),
            shipping: Some(ShippingView {
                delivered: 41,
                waiting: 7,
                dropped: 0,
            }),
        };
        let html = page.render().unwrap();
        for expected in [
            "<dt>Delivered</dt><dd>41</dd>",
            "<dt>Waiting for a log instance</dt><dd>7</dd>",
            "127.0.0.1:6000",
            "grading-127.0.0.1-6000",
            "stale",
            "2.5 s",
            "3m 12s",
            "http://127.0.0.1:8500/ui/",
        ] {
            assert!(html.contains(expected), "{expected} missing from {html}");
        }
    }
}
