//! The pages: askama templates (compiled in, HTML-escaped by construction) and the view data
//! they render. Everything here is plain data in, HTML out, so it is testable without services.

use std::time::Duration;

use askama::Template;
use contracts::grading::{Grade, GradeType, Student};
use contracts::log::LogRecord;
use discovery::{Provider, ProviderSet, WatchStatus};
use serde::Deserialize;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::csrf::{CsrfForm, CsrfToken};
use crate::logs::Cursor;
use crate::upstream::ListedStudent;

/// The largest form accepted; a real one is a few hundred bytes.
pub const MAX_FORM_BYTES: u64 = 16 * 1024;

/// A page of the list of students with their averages, and the form to add one (`GET /`, and a
/// refused student form).
#[derive(Template)]
#[template(path = "students.html")]
pub struct StudentsPage {
    /// At most the configured `students_per_page`, in id order.
    pub students: Vec<ListedStudent>,
    /// The address of the next page, when students follow these.
    pub next: Option<String>,
    /// Whether this page starts after the first student (so it links back to the first page).
    pub paged: bool,
    /// Averages below it are marked failing.
    pub passing_score: u32,
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
    /// An average below it is marked failing.
    pub passing_score: u32,
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
    /// The form's CSRF token (see [`crate::csrf`]).
    pub csrf: String,
}

/// The delete form as the browser sends it: only its CSRF token.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct DeleteForm {
    pub csrf: String,
}

impl CsrfForm for DeleteForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// The student form as the browser sends it; every field is text, missing ones are empty.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct StudentForm {
    pub first_name: String,
    pub last_name: String,
    /// A key the page hands out with the form, sent to grading as the `Idempotency-Key`.
    pub request: String,
    /// The CSRF token (hidden; see [`crate::csrf`]).
    pub csrf: String,
}

impl StudentForm {
    /// An empty form with a new request key.
    pub fn fresh() -> Self {
        StudentForm {
            request: service_runtime::pool::new_idempotency_key(),
            ..StudentForm::default()
        }
    }

    /// The same form carrying `token`.
    pub fn carrying(self, token: &CsrfToken) -> Self {
        StudentForm {
            csrf: token.as_str().to_owned(),
            ..self
        }
    }
}

impl CsrfForm for StudentForm {
    fn csrf(&self) -> &str {
        &self.csrf
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
    /// The CSRF token (hidden; see [`crate::csrf`]).
    pub csrf: String,
}

impl CsrfForm for GradeForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

impl GradeForm {
    /// The grade types the form offers, in the order grading documents them.
    pub const KINDS: [GradeType; 3] = GradeType::ALL;

    /// An empty form with a new request key.
    pub fn fresh() -> Self {
        GradeForm {
            request: service_runtime::pool::new_idempotency_key(),
            ..GradeForm::default()
        }
    }

    /// The form filled with a grade as it is, to change it.
    pub fn of(grade: &Grade) -> Self {
        GradeForm {
            title: grade.title.clone(),
            kind: grade.kind.as_str().to_owned(),
            score: grade.score.to_string(),
            request: String::new(),
            csrf: String::new(),
        }
    }

    /// The same form carrying `token`.
    pub fn carrying(self, token: &CsrfToken) -> Self {
        GradeForm {
            csrf: token.as_str().to_owned(),
            ..self
        }
    }

    /// Whether `kind` is the one chosen, to keep the select on it.
    pub fn has_kind(&self, kind: &GradeType) -> bool {
        self.kind == kind.as_str()
    }
}

/// Each dependency as its watch sees it, with a link to the Consul UI (`GET /status`).
#[derive(Template)]
#[template(path = "status.html")]
pub struct StatusPage {
    pub dependencies: Vec<DependencyView>,
    pub consul_ui: String,
    /// Whether instances' addresses and ids and the Consul UI link are shown
    /// ([`StatusMode::Full`](crate::config::StatusMode::Full)) or only each dependency's state.
    pub full: bool,
    /// The portal's own log shipping, when installed (the binary installs it, tests may not).
    pub shipping: Option<ShippingView>,
    /// The portal's own connections, when the server's counters were handed in.
    pub connections: Option<service_runtime::server::ConnectionCounts>,
    /// Where the portal's settings come from (flags or Consul KV), and their values.
    pub config: std::sync::Arc<service_runtime::live_config::ConfigReport>,
}

/// Counters of this portal's log shipping: what the log service has, what waits, what was lost.
#[derive(Debug, Clone, Copy)]
pub struct ShippingView {
    pub delivered: u64,
    pub waiting: u64,
    pub dropped: u64,
}

impl From<&service_runtime::telemetry::ShippingStats> for ShippingView {
    fn from(stats: &service_runtime::telemetry::ShippingStats) -> Self {
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
    pub rows: Vec<LogRow>,
    /// The service filter, empty for all.
    pub service: String,
    /// The level filter (that level or more severe), empty for all.
    pub level: String,
    /// The trace filter (a W3C trace-id), empty for all.
    pub trace: String,
    /// The services the filter offers.
    pub services: Vec<String>,
    /// The zone the times are shown in.
    pub zone: String,
    /// The address of the next page back, when there may be older records.
    pub older: Option<String>,
    /// Whether this page starts below the newest records (so it links back to them).
    pub paged: bool,
    /// The log instances whose records this page should hold but does not, and why.
    pub missing: Vec<MissingLog>,
}

/// A log instance whose records are missing from the logs page.
#[derive(Debug, Clone, PartialEq)]
pub struct MissingLog {
    /// Its Consul service ID.
    pub instance: String,
    /// Where it was asked, when the watch still lists it.
    pub address: Option<String>,
    /// Why, as the end of a sentence: "it is not healthy".
    pub reason: &'static str,
}

impl LogsPage {
    /// The levels the filter offers, least severe first.
    pub const LEVELS: [&'static str; 5] = ["trace", "debug", "info", "warn", "error"];

    /// The choices of the service filter: the services that log (the gradebook's own and
    /// `anonymous`, curl's default), those on this page, and the one chosen.
    pub fn service_choices(rows: &[LogRow], chosen: &str) -> Vec<String> {
        let mut services: Vec<String> = ["anonymous", "grading", "portal"]
            .into_iter()
            .map(str::to_owned)
            .chain(rows.iter().map(|row| row.service.clone()))
            .chain((!chosen.is_empty()).then(|| chosen.to_owned()))
            .collect();
        services.sort();
        services.dedup();
        services
    }

    /// Whether `choice` is the service filtered on, to keep the select on it.
    pub fn is_service(&self, choice: &str) -> bool {
        self.service == choice
    }

    /// Whether `choice` is the level filtered on.
    pub fn is_level(&self, choice: &str) -> bool {
        self.level == choice
    }

    /// The address of the page of records older than `cursor`, with this page's filters.
    pub fn older_than(&self, cursor: &Cursor) -> String {
        self.address(Some(cursor))
    }

    /// The address of the newest records, with this page's filters.
    pub fn newest(&self) -> String {
        self.address(None)
    }

    /// `/logs` with this page's filters, and the positions of `cursor` when given, each value
    /// URL-encoded (an instance ID is Consul's and may hold any character).
    fn address(&self, cursor: Option<&Cursor>) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if !self.service.is_empty() {
            query.append_pair("service", &self.service);
        }
        if !self.level.is_empty() {
            query.append_pair("level", &self.level);
        }
        if !self.trace.is_empty() {
            query.append_pair("trace", &self.trace);
        }
        for position in cursor.into_iter().flat_map(Cursor::query_values) {
            query.append_pair("before", &position);
        }
        let query = query.finish();
        if query.is_empty() {
            "/logs".to_owned()
        } else {
            format!("/logs?{query}")
        }
    }

    /// "1 log instance", "2 log instances": how many are missing.
    pub fn missing_count(&self) -> String {
        match self.missing.len() {
            1 => "1 log instance".to_owned(),
            n => format!("{n} log instances"),
        }
    }
}

/// One record as the logs page shows it: the time in the portal's zone (the exact one on hover),
/// and the message apart from the `key=value` fields that tracing appended to it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRow {
    pub exact_time: String,
    pub local_time: String,
    pub service: String,
    pub level: String,
    pub message: String,
    pub fields: Vec<(String, String)>,
    pub trace_id: Option<String>,
    /// The address of the log instance that holds it.
    pub instance: String,
}

impl LogRow {
    /// The logs page of this record's trace, when it carries a valid trace id.
    pub fn trace_link(&self) -> Option<String> {
        self.trace_id
            .as_deref()
            .filter(|id| contracts::log::is_trace_id(id))
            .map(|id| format!("/logs?trace={id}"))
    }

    /// `record`, held by the log instance at `instance`, with its time shown in `zone`; a time
    /// that does not parse is shown as it is.
    pub fn new(record: LogRecord, instance: &str, zone: &jiff::tz::TimeZone) -> LogRow {
        let local_time = record
            .time
            .parse::<jiff::Timestamp>()
            .map(|time| {
                time.to_zoned_datetime(zone.clone())
                    .strftime("%Y-%m-%d %H:%M:%S")
                    .to_string()
            })
            .unwrap_or_else(|_| record.time.clone());
        let (message, fields) = split_fields(&record.message);
        LogRow {
            local_time,
            service: record.service,
            level: record.level,
            message: message.to_owned(),
            fields: fields
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value))
                .collect(),
            trace_id: record.trace_id,
            exact_time: record.time,
            instance: instance.to_owned(),
        }
    }
}

/// Splits the ` key=value` fields that tracing appends to an event's message (values as Rust
/// writes them: a quoted string with escapes, or a run without spaces) from the message before
/// them. Reads from the end, each character once, so a hostile message costs linear time.
fn split_fields(message: &str) -> (&str, Vec<(&str, String)>) {
    let mut end = message.len();
    let mut fields = Vec::new();
    while let Some((start, key, value)) = last_field(&message[..end]) {
        fields.push((key, value));
        end = start;
    }
    fields.reverse();
    (&message[..end], fields)
}

/// A string as Rust's `Debug` escaped it, back as it was; an escape it does not know stays.
fn unescape(escaped: &str) -> String {
    let mut text = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            text.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => text.push('\n'),
            Some('r') => text.push('\r'),
            Some('t') => text.push('\t'),
            Some('0') => text.push('\0'),
            Some(other @ ('"' | '\'' | '\\')) => text.push(other),
            Some(other) => {
                text.push('\\');
                text.push(other);
            }
            None => text.push('\\'),
        }
    }
    text
}

/// The last ` key=value` of `text`: where its space starts, the key and the value (unquoted).
fn last_field(text: &str) -> Option<(usize, &str, String)> {
    let (value_start, value) = if text.ends_with('"') && text.len() >= 2 {
        // The opening quote is the nearest one before the end not escaped by a backslash.
        let bytes = text.as_bytes();
        let mut i = text.len() - 1;
        loop {
            i = text[..i].rfind('"')?;
            let backslashes = bytes[..i].iter().rev().take_while(|&&b| b == b'\\').count();
            if backslashes % 2 == 0 {
                break;
            }
        }
        let quoted = &text[i + 1..text.len() - 1];
        (i, unescape(quoted))
    } else {
        let start = text.rfind(' ').map_or(0, |space| space + 1);
        let token = &text[start..];
        let equals = token.find('=')?;
        (start + equals + 1, token[equals + 1..].to_owned())
    };
    let before_value = text[..value_start].strip_suffix('=')?;
    let key_start = before_value.rfind(' ')?;
    let key = &before_value[key_start + 1..];
    let is_key = !key.is_empty()
        && key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    is_key.then_some((key_start, key, value))
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

impl StudentsPage {
    /// The address of the page of students after the one with id `last`.
    pub fn after(last: u64) -> String {
        format!("/?after={last}")
    }
}

/// A student as the pages write them.
pub trait StudentText {
    /// The average with one decimal, or a dash before the first grade.
    fn average_text(&self) -> String;
    /// Whether there is an average and it is below `passing_score`.
    fn failing(&self, passing_score: &u32) -> bool;
}

impl StudentText for Student {
    fn average_text(&self) -> String {
        average_text(self.average)
    }

    fn failing(&self, passing_score: &u32) -> bool {
        failing(self.average, *passing_score)
    }
}

impl StudentText for ListedStudent {
    fn average_text(&self) -> String {
        average_text(self.average)
    }

    fn failing(&self, passing_score: &u32) -> bool {
        failing(self.average, *passing_score)
    }
}

fn average_text(average: Option<f64>) -> String {
    match average {
        Some(average) => one_decimal(average).unwrap_or_else(|| format!("{average:.1}")),
        None => "—".to_owned(),
    }
}

/// What `format!("{value:.1}")` writes, for a value from 0.0005 to 10^15 (every average):
/// the exact binary value rounded to tenths, ties to even, in integers. The formatter's exact
/// mode falls back to its slowest algorithm for such values, over 2,000 instructions each, four
/// times on the home page. `None` outside that range.
fn one_decimal(value: f64) -> Option<String> {
    if !(value.is_finite() && value.is_sign_positive() && value < 1e15) {
        return None;
    }
    let bits = value.to_bits();
    let biased_exponent = i32::try_from((bits >> 52) & 0x7ff).ok()?;
    let fraction = bits & ((1 << 52) - 1);
    let (mantissa, exponent) = match biased_exponent {
        0 => (fraction, -1074),
        _ => (fraction | 1 << 52, biased_exponent - 1075),
    };
    // value = mantissa * 2^exponent, so value * 10 = mantissa * 10 * 2^exponent (below 2^57).
    let scaled = mantissa * 10;
    let tenths = if exponent >= 0 {
        scaled << exponent
    } else {
        let shift = exponent.unsigned_abs();
        if shift >= 64 {
            return None;
        }
        let quotient = scaled >> shift;
        let remainder = scaled & ((1 << shift) - 1);
        let half = 1 << (shift - 1);
        let round_up = remainder > half || (remainder == half && quotient % 2 == 1);
        quotient + u64::from(round_up)
    };
    let mut text = (tenths / 10).to_string();
    text.push('.');
    text.push(char::from(b'0' + (tenths % 10) as u8));
    Some(text)
}

fn failing(average: Option<f64>, passing_score: u32) -> bool {
    average.is_some_and(|average| average < f64::from(passing_score))
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
        Ok(html) => {
            let mut response = Response::new(warp::hyper::body::Bytes::from(html).into());
            *response.status_mut() = status;
            let headers = response.headers_mut();
            // Room for what a page's answer gets on its way out (its type, a CSRF and a flash
            // cookie, the four security headers, `traceparent`), so the map grows only once.
            headers.reserve(8);
            headers.insert(
                warp::http::header::CONTENT_TYPE,
                warp::http::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            response
        }
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

    fn student(first_name: &str, average: Option<f64>) -> Student {
        Student {
            id: 7,
            first_name: first_name.into(),
            last_name: "Stark".into(),
            average,
            grades: vec![Grade {
                id: 1,
                title: "Quiz <1>".into(),
                kind: GradeType::Quiz,
                score: 92.5,
            }],
        }
    }

    #[test]
    fn names_and_titles_are_escaped() {
        let page = StudentsPage {
            passing_score: 50,
            students: vec![student("<script>alert(1)</script>", None).into()],
            next: None,
            paged: false,
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
            passing_score: 50,
            student: student("Tony", None),
            form: GradeForm::default(),
            error: None,
            flash: None,
        };
        assert!(page.render().unwrap().contains("Quiz &#60;1&#62;"));
    }

    #[test]
    fn one_decimal_writes_what_the_formatter_writes() {
        let mut values: Vec<f64> = (0..=200_000).map(|i| f64::from(i) / 2000.0).collect();
        values.extend((0..=3000).map(|i| f64::from(i) / 3.0));
        values.extend((1..=100).map(|i| f64::from(i) / 7.0 + f64::from(i) / 11.0));
        values.extend([
            0.25,
            0.75,
            0.35,
            0.05,
            0.15,
            89.45,
            99.95,
            2.5,
            96.33333333333333,
        ]);
        values.extend([
            0.0005,
            0.000_49,
            1e-300,
            2f64.powi(53),
            999_999_999_999_999.9,
        ]);
        for value in values {
            if let Some(text) = one_decimal(value) {
                assert_eq!(text, format!("{value:.1}"), "{value:e}");
            }
        }
        assert_eq!(one_decimal(89.5).as_deref(), Some("89.5"));
        assert_eq!(one_decimal(-0.04), None);
        assert_eq!(one_decimal(f64::NAN), None);
    }

    #[test]
    fn averages_have_one_decimal_or_a_dash() {
        assert_eq!(student("Tony", Some(87.25)).average_text(), "87.2");
        assert_eq!(student("Tony", Some(90.0)).average_text(), "90.0");
        assert_eq!(student("Tony", None).average_text(), "—");
        let html = StudentsPage {
            passing_score: 50,
            students: vec![student("Tony", Some(87.46)).into()],
            next: None,
            paged: false,
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
            passing_score: 50,
            student: student("Tony", Some(92.5)),
            form: GradeForm {
                title: "Essay \"one\"".into(),
                kind: "Homework".into(),
                score: "abc".into(),
                request: "k-7".into(),
                csrf: "c".repeat(32),
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
    fn tracing_fields_are_split_from_the_message() {
        let (message, fields) = split_fields(
            r#"registered with Consul service_id="grading-127.0.0.1-6100" port=6100 reason="the agent was \"away\"""#,
        );
        assert_eq!(message, "registered with Consul");
        assert_eq!(
            fields,
            [
                ("service_id", "grading-127.0.0.1-6100".to_owned()),
                ("port", "6100".to_owned()),
                ("reason", r#"the agent was "away""#.to_owned()),
            ]
        );
        // A value with spaces and an equals sign inside its quotes is one value.
        let (message, fields) = split_fields(r#"grade added note="a b=c" student=5"#);
        assert_eq!(message, "grade added");
        assert_eq!(fields[0], ("note", "a b=c".to_owned()));
        // Plain messages are left whole, quotes and equals signs included.
        for plain in [
            "hello from the host",
            r#"He said "hi""#,
            "x=1",
            "2+2=4 is true",
            "",
            "ends with a backslash \\",
            r#"a "=" b"#,
        ] {
            assert_eq!(split_fields(plain), (plain, vec![]), "{plain:?}");
        }
        assert_eq!(unescape(r#"line\nnext \\ \q"#), "line\nnext \\ \\q");
    }

    #[test]
    fn log_times_are_shown_in_the_portals_zone_with_the_exact_one_kept() {
        let record = LogRecord {
            seq: 7,
            time: "2026-11-29T21:47:06.219Z".into(),
            service: "grading".into(),
            level: "info".into(),
            message: "grade added student=5".into(),
            trace_id: None,
        };
        let paris = jiff::tz::TimeZone::get("Europe/Paris").unwrap();
        let row = LogRow::new(record.clone(), "127.0.0.1:4000", &paris);
        assert_eq!(row.local_time, "2026-11-29 22:47:06");
        assert_eq!(row.exact_time, "2026-11-29T21:47:06.219Z");
        assert_eq!(row.fields, [("student".to_owned(), "5".to_owned())]);
        let utc = LogRow::new(record.clone(), "127.0.0.1:4000", &jiff::tz::TimeZone::UTC);
        assert_eq!(utc.local_time, "2026-11-29 21:47:06");
        let odd = LogRow::new(
            LogRecord {
                time: "yesterday".into(),
                ..record
            },
            "127.0.0.1:4000",
            &paris,
        );
        assert_eq!(odd.local_time, "yesterday");

        let page = LogsPage {
            services: LogsPage::service_choices(std::slice::from_ref(&row), "grading"),
            rows: vec![row],
            service: "grading".into(),
            level: "warn".into(),
            trace: String::new(),
            zone: "Europe/Paris".into(),
            older: None,
            paged: true,
            missing: vec![],
        };
        let html = page.render().unwrap();
        assert!(html.contains("Time (Europe/Paris)"), "{html}");
        assert!(
            html.contains(r#"title="2026-11-29T21:47:06.219Z">2026-11-29 22:47:06</time>"#),
            "{html}"
        );
        assert!(html.contains("<option selected>grading</option>"), "{html}");
        assert!(
            html.contains(r#"<option value="warn" selected>warn and above</option>"#),
            "{html}"
        );
        assert!(html.contains("<dt>student</dt><dd>5</dd>"), "{html}");
        assert!(
            html.contains(r#"href="/logs?service=grading&#38;level=warn">Newest records"#),
            "{html}"
        );
        assert!(
            html.contains(r#"<tr title="held by the log instance at 127.0.0.1:4000">"#),
            "{html}"
        );
        assert!(!html.contains("are missing"), "{html}");
    }

    #[test]
    fn a_records_trace_links_to_its_page_and_a_forged_one_is_shown_escaped_without_a_link() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let row = |trace_id: &str| {
            let record = LogRecord {
                seq: 1,
                time: "2026-11-29T21:47:06.219Z".into(),
                service: "grading".into(),
                level: "info".into(),
                message: "grade added".into(),
                trace_id: Some(trace_id.into()),
            };
            LogRow::new(record, "127.0.0.1:4000", &jiff::tz::TimeZone::UTC)
        };
        let page = LogsPage {
            services: vec![],
            rows: vec![row(trace), row("<b>x</b>\"><a")],
            service: String::new(),
            level: String::new(),
            trace: trace.into(),
            zone: "UTC".into(),
            older: None,
            paged: false,
            missing: vec![],
        };
        let html = page.render().unwrap();
        assert!(
            html.contains(&format!(
                r#"trace <a href="/logs?trace={trace}">{trace}</a>"#
            )),
            "{html}"
        );
        assert!(
            html.contains(&format!(r#"name="trace" value="{trace}""#)),
            "{html}"
        );
        assert!(
            html.contains("trace &#60;b&#62;x&#60;/b&#62;&#34;&#62;&#60;a</small>"),
            "{html}"
        );
        assert!(!html.contains("<b>x"), "{html}");
    }

    #[test]
    fn the_older_link_carries_one_encoded_position_per_log_instance() {
        let mut page = LogsPage {
            services: vec![],
            rows: vec![],
            service: "grading".into(),
            level: String::new(),
            trace: String::new(),
            zone: "UTC".into(),
            older: None,
            paged: true,
            missing: vec![],
        };
        let cursor = Cursor::parse(["log-127.0.0.1-4000:57", "a&b=c d:3"]).unwrap();
        let older = page.older_than(&cursor);
        assert_eq!(
            older,
            "/logs?service=grading&before=a%26b%3Dc+d%3A3&before=log-127.0.0.1-4000%3A57"
        );
        let query = older.split_once('?').unwrap().1;
        let read: Vec<String> = form_urlencoded::parse(query.as_bytes())
            .filter(|(key, _)| key == "before")
            .map(|(_, value)| value.into_owned())
            .collect();
        assert_eq!(
            Cursor::parse(read.iter().map(String::as_str)).unwrap(),
            cursor
        );

        page.older = Some(older);
        page.missing = vec![MissingLog {
            instance: "log-<b>-4001".into(),
            address: None,
            reason: "it is not healthy",
        }];
        let html = page.render().unwrap();
        assert!(
            html.contains("Records of 1 log instance are missing from this page:"),
            "{html}"
        );
        assert!(
            html.contains("<li>log-&#60;b&#62;-4001: it is not healthy.</li>"),
            "{html}"
        );
        assert!(
            html.contains(r#"href="/logs?service=grading&#38;before=a%26b%3Dc+d%3A3&#38;before=log-127.0.0.1-4000%3A57" rel="next">Older records"#),
            "{html}"
        );
    }

    #[test]
    fn a_dependency_that_consul_lists_with_no_instance_is_shown_as_down() {
        let set = |status, providers: Vec<Provider>| ProviderSet {
            service: "grading".into(),
            providers: providers.into(),
            generation: 1,
            status,
            changed_at: std::time::Instant::now(),
            failed_polls: 0,
        };
        let one = Provider {
            address: "127.0.0.1:6100".into(),
            id: "grading-127.0.0.1-6100".into(),
        };
        assert_eq!(
            DependencyView::from(&set(WatchStatus::Live, vec![one])).status,
            "live"
        );
        assert_eq!(
            DependencyView::from(&set(WatchStatus::Live, vec![])).status,
            "down"
        );
        let stale = WatchStatus::Stale {
            since: std::time::Instant::now(),
        };
        assert_eq!(DependencyView::from(&set(stale, vec![])).status, "down");
        assert_eq!(
            DependencyView::from(&set(WatchStatus::Starting, vec![])).status,
            "starting"
        );
        let page = StatusPage {
            config: service_runtime::live_config::ConfigStatus::flags_only().report(),
            full: true,
            dependencies: vec![DependencyView::from(&set(WatchStatus::Live, vec![]))],
            consul_ui: "http://127.0.0.1:8500/ui/".into(),
            shipping: None,
            connections: None,
        };
        let html = page.render().unwrap();
        assert!(
            html.contains(r#"<span class="badge down">no healthy instance</span>"#),
            "{html}"
        );
    }

    #[test]
    fn a_flash_is_the_portals_own_text_named_by_a_code() {
        for flash in Flash::ALL {
            assert_eq!(Flash::from_code(flash.code()), Some(flash));
        }
        assert_eq!(Flash::from_code("<script>"), None);
        let page = StudentPage {
            passing_score: 50,
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
            passing_score: 50,
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
            csrf: "c".repeat(32),
        }
        .render()
        .unwrap();
        assert!(question.contains("Delete this grade?"), "{question}");
        assert!(
            question.contains(&format!(r#"name="csrf" value="{}""#, "c".repeat(32))),
            "the delete form carries its CSRF token: {question}"
        );
        assert!(
            question.contains(r#"action="/students/7/grades/1/delete""#),
            "{question}"
        );
    }

    #[test]
    fn the_status_page_shows_providers_and_links_the_consul_ui() {
        let page = StatusPage {
            config: service_runtime::live_config::ConfigStatus::flags_only().report(),
            full: true,
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
            connections: None,
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
