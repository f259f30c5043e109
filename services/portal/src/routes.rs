//! The portal's pages as warp routes. Each route matches its path before its method (so an
//! unknown path is a 404, not a 405), and handlers are plain async functions taking typed input
//! and returning a page or a [`PortalError`].

use std::sync::Arc;
use std::time::Duration;

use contracts::grading::{Grade, NewGrade, NewStudent, Student};
use contracts::id::Id;
use contracts::{request_key, service_name};
use discovery::Provider;
use service_runtime::ProviderPool;
use service_runtime::http::{body_limit, respond};
use service_runtime::live_config::{CommonSettings, Effective, LiveConfig, Origins};
use service_runtime::telemetry::{ShipLevel, ShippingStats};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::http::header::{self, HeaderValue};
use warp::reply::{Reply, Response};

use crate::config::StatusMode;
use crate::csrf::{self, CsrfToken};
use crate::error::{PortalError, handle_rejection};
use crate::logs::{self, Cursor};
use crate::pages::{
    self, DeleteForm, DeleteGradePage, DependencyView, EditGradePage, Flash, GradeForm, LogRow,
    LogsPage, MAX_FORM_BYTES, MissingLog, ShippingView, StatusPage, StudentForm, StudentPage,
    StudentsPage,
};
use crate::settings::PortalSettings;
use crate::upstream::{Grading, LOG_PAGE_RECORDS, LogReader, UpstreamError, Verdict};

/// What every handler works with: the dependencies and where the Consul UI is. Cheap to clone.
#[derive(Clone)]
pub struct Portal {
    grading: Grading,
    log: LogReader,
    consul_ui: Arc<str>,
    /// The zone of the times on the logs page.
    time_zone: jiff::tz::TimeZone,
    /// The counters of the portal's own connections, for the status page.
    connections: Option<service_runtime::ConnectionStats>,
    /// The counters of the portal's own log shipping, for the status page.
    shipping: Option<Arc<ShippingStats>>,
    /// How much `/status` shows.
    status: StatusMode,
    /// Students per page and the passing score, changed live through Consul KV.
    settings: LiveConfig<PortalSettings>,
}

impl Portal {
    /// A portal over pools of grading and log instances, linking to the Consul UI at `consul_ui`,
    /// showing log times in UTC (see [`Portal::with_time_zone`]).
    pub fn new(grading: ProviderPool, log: ProviderPool, consul_ui: String) -> Self {
        Portal {
            grading: Grading::new(grading),
            log: LogReader::new(log),
            consul_ui: consul_ui.into(),
            time_zone: jiff::tz::TimeZone::UTC,
            connections: None,
            shipping: None,
            status: StatusMode::Full,
            settings: LiveConfig::fixed(
                Effective {
                    common: CommonSettings::from_env(),
                    service: PortalSettings::default(),
                },
                Origins::default(),
            ),
        }
    }

    /// The same portal reading its settings from `settings` (the live configuration).
    pub fn with_settings(mut self, settings: LiveConfig<PortalSettings>) -> Self {
        self.settings = settings;
        self
    }

    /// Keeps the level of the portal's shipped records at the configured `ship_level`.
    pub fn drive_ship_level(&self, level: ShipLevel) {
        self.settings.drive_ship_level(level);
    }

    /// Shows these connection counters (the portal's own server's) on the status page.
    pub fn with_connection_stats(mut self, stats: service_runtime::ConnectionStats) -> Self {
        self.connections = Some(stats);
        self
    }

    /// Shows these log shipping counters (the portal's own) on the status page.
    pub fn with_shipping_stats(mut self, stats: Arc<ShippingStats>) -> Self {
        self.shipping = Some(stats);
        self
    }

    /// The same portal with `/status` showing `mode`'s detail, or answering 404 for `Off`.
    pub fn with_status(mut self, mode: StatusMode) -> Self {
        self.status = mode;
        self
    }

    /// The same portal showing log times in `zone`.
    pub fn with_time_zone(mut self, zone: jiff::tz::TimeZone) -> Self {
        self.time_zone = zone;
        self
    }

    /// Waits until Consul has answered about both dependencies, or `limit`.
    pub async fn ready(&self, limit: Duration) {
        tokio::join!(
            self.grading.watch().ready(limit),
            self.log.watch().ready(limit)
        );
    }
}

/// Query of `GET /`: where the page of students starts.
#[derive(Debug, Default, PartialEq)]
pub struct StudentsQuery {
    /// The id of the last student of the previous page; the first page when `None`.
    pub after: Option<u64>,
}

impl StudentsQuery {
    /// The query of `raw` (the part after `?`); an empty `after` is the first page, unknown
    /// parameters are ignored, and an `after` that is not an id is refused, naming it.
    pub fn parse(raw: &str) -> Result<StudentsQuery, PortalError> {
        let mut query = StudentsQuery::default();
        for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
            if key == "after" {
                let value = value.trim();
                query.after = match value {
                    "" => None,
                    id => Some(id.parse::<Id>().map_err(|_| {
                        PortalError::BadRequest(
                            "after: the id of the last student of the previous page, a whole number from 1, as the \"Next students\" link writes it.".to_owned(),
                        )
                    })?.0),
                };
            }
        }
        Ok(query)
    }
}

/// Query of `GET /logs`.
#[derive(Debug, Default, PartialEq)]
pub struct LogsQuery {
    /// Show only this service's records.
    pub service: Option<String>,
    /// Show only records at this level or more severe.
    pub level: Option<String>,
    /// Show only the records of this trace (a W3C trace-id).
    pub trace: Option<String>,
    /// The "Older records" link's position in each log instance, `INSTANCE:SEQ` each (see
    /// [`Cursor`]); a parameter given once per instance.
    pub before: Vec<String>,
}

impl LogsQuery {
    /// The query of `raw` (the part after `?`). serde's query forms take a parameter once, so
    /// this one reads them itself; a parameter given twice, other than `before`, counts once
    /// (the last), and unknown ones are ignored, as a form's extras are.
    pub fn parse(raw: &str) -> LogsQuery {
        let mut query = LogsQuery::default();
        for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
            match &*key {
                "service" => query.service = Some(value.into_owned()),
                "level" => query.level = Some(value.into_owned()),
                "trace" => query.trace = Some(value.into_owned()),
                "before" => query.before.push(value.into_owned()),
                _ => {}
            }
        }
        query
    }
}

/// The pages below as `/metrics` counts them: by template, never by the ids in a path.
pub const ROUTE_TEMPLATES: &[&str] = &[
    "/",
    "/students",
    "/students/{id}",
    "/students/{id}/grades",
    "/students/{id}/grades/{gradeId}",
    "/students/{id}/grades/{gradeId}/edit",
    "/students/{id}/grades/{gradeId}/delete",
    "/status",
    "/static/gradebook.css",
    "/logs",
];

/// All pages, answering every request themselves: warp's rejections become HTML pages here, so
/// the JSON mapping that `service_runtime::Service::run` adds never sees one. A form's address also
/// answers GET with a redirect to the page it belongs to, so reloading it from the address bar
/// after a refused form lands somewhere useful instead of on a 405.
///
/// Each handler's future is boxed: warp nests every route's future into one as large as the
/// largest, and moves that nest once per `or` on every request (a tenth of a page's
/// instructions were `memcpy`); boxed, only the route taken allocates its handler's state.
pub fn routes(portal: Portal) -> BoxedFilter<(Response,)> {
    // One reference count per request rather than one per handle the portal holds.
    let portal = Arc::new(portal);
    let with_portal = warp::any().map(move || Arc::clone(&portal));
    let flash = warp::cookie::optional::<String>(FLASH_COOKIE)
        .map(|code: Option<String>| code.as_deref().and_then(Flash::from_code));

    let students = warp::path::end()
        .and(warp::get())
        .and(raw_query())
        .and(flash)
        .and(csrf::page_token())
        .and(with_portal.clone())
        .then(
            |query: String, flash: Option<Flash>, token: CsrfToken, portal: Arc<Portal>| {
                Box::pin(list_students(query, flash, token, portal))
            },
        )
        .map(respond);
    let new_student = warp::path!("students")
        .and(warp::post())
        .and(csrf::checked(form_body::<StudentForm>()))
        .and(with_portal.clone())
        .then(|form: StudentForm, portal: Arc<Portal>| Box::pin(add_student(form, portal)))
        .map(respond);
    let students_again = warp::path!("students")
        .and(warp::get())
        .map(|| see_other("/".to_owned(), None));
    let student = warp::path!("students" / Id)
        .and(warp::get())
        .and(flash)
        .and(csrf::page_token())
        .and(with_portal.clone())
        .then(
            |id: Id, flash: Option<Flash>, token: CsrfToken, portal: Arc<Portal>| {
                Box::pin(show_student(id, flash, token, portal))
            },
        )
        .map(respond);
    let new_grade = warp::path!("students" / Id / "grades")
        .and(warp::post())
        .and(csrf::checked(form_body::<GradeForm>()))
        .and(with_portal.clone())
        .then(|id: Id, form: GradeForm, portal: Arc<Portal>| Box::pin(add_grade(id, form, portal)))
        .map(respond);
    let grades_again = warp::path!("students" / Id / "grades")
        .and(warp::get())
        .map(|Id(id)| see_other(format!("/students/{id}"), None));
    let edit_form = warp::path!("students" / Id / "grades" / Id / "edit")
        .and(warp::get())
        .and(csrf::page_token())
        .and(with_portal.clone())
        .then(|id: Id, grade: Id, token: CsrfToken, portal: Arc<Portal>| {
            Box::pin(show_grade_form(id, grade, token, portal))
        })
        .map(respond);
    let change_grade = warp::path!("students" / Id / "grades" / Id)
        .and(warp::post())
        .and(csrf::checked(form_body::<GradeForm>()))
        .and(with_portal.clone())
        .then(|id: Id, grade: Id, form: GradeForm, portal: Arc<Portal>| {
            Box::pin(change_grade(id, grade, form, portal))
        })
        .map(respond);
    let grade_again = warp::path!("students" / Id / "grades" / Id)
        .and(warp::get())
        .map(|Id(id), Id(grade)| see_other(format!("/students/{id}/grades/{grade}/edit"), None));
    let delete_question = warp::path!("students" / Id / "grades" / Id / "delete")
        .and(warp::get())
        .and(csrf::page_token())
        .and(with_portal.clone())
        .then(|id: Id, grade: Id, token: CsrfToken, portal: Arc<Portal>| {
            Box::pin(confirm_delete(id, grade, token, portal))
        })
        .map(respond);
    let delete_grade = warp::path!("students" / Id / "grades" / Id / "delete")
        .and(warp::post())
        .and(csrf::checked(form_body::<DeleteForm>()))
        .and(with_portal.clone())
        .then(|id: Id, grade: Id, form: DeleteForm, portal: Arc<Portal>| {
            Box::pin(delete_grade(id, grade, form, portal))
        })
        .map(respond);
    let status = warp::path!("status")
        .and(warp::get())
        .and(with_portal.clone())
        .map(|portal: Arc<Portal>| show_status(&portal));
    let stylesheet = warp::path!("static" / "gradebook.css")
        .and(warp::get())
        .map(stylesheet);
    let logs = warp::path!("logs")
        .and(warp::get())
        .and(raw_query().map(|raw: String| LogsQuery::parse(&raw)))
        .and(with_portal)
        .then(|query: LogsQuery, portal: Arc<Portal>| Box::pin(show_logs(query, portal)))
        .map(respond);
    // The two pages opened most come first, and every other route behind one boxed filter:
    // each `or` a request passes clones the filter behind it and nests its future one level
    // deeper, so a page view passes two levels rather than twelve, and the rare routes' filters
    // are cloned as one `Arc` (the paths are disjoint, so the order changes nothing else).
    let others = new_student
        .or(students_again)
        .unify()
        .or(new_grade)
        .unify()
        .or(grades_again)
        .unify()
        .or(edit_form)
        .unify()
        .or(change_grade)
        .unify()
        .or(grade_again)
        .unify()
        .or(delete_question)
        .unify()
        .or(delete_grade)
        .unify()
        .or(status)
        .unify()
        .or(logs)
        .unify()
        .or(stylesheet)
        .unify()
        .boxed();
    student
        .or(students)
        .unify()
        .or(others)
        .unify()
        .recover(handle_rejection)
        .unify()
        .boxed()
}

/// The query string (the part after `?`), empty when there is none.
fn raw_query() -> impl Filter<Extract = (String,), Error = std::convert::Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// A urlencoded form of at most [`MAX_FORM_BYTES`].
fn form_body<T: serde::de::DeserializeOwned + Send>()
-> impl Filter<Extract = (T,), Error = warp::Rejection> + Clone {
    body_limit(MAX_FORM_BYTES).and(warp::body::form())
}

/// The cookie that carries a [`Flash`] across the redirect after a change.
const FLASH_COOKIE: &str = "flash";

/// A 303 to `location`: the answer to a change that worked, so that reloading the page that
/// follows does not make the change again. With a flash, the next page says what was done.
fn see_other(location: String, flash: Option<Flash>) -> Response {
    let mut response =
        warp::reply::with_status(warp::reply(), StatusCode::SEE_OTHER).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("our own paths are valid header values"),
    );
    if let Some(flash) = flash {
        let cookie = format!(
            "{FLASH_COOKIE}={}; Path=/; Max-Age=60; HttpOnly; SameSite=Strict",
            flash.code()
        );
        headers.insert(
            header::SET_COOKIE,
            HeaderValue::from_str(&cookie).expect("flash codes are plain words"),
        );
    }
    response
}

/// A page that showed a flash clears its cookie, so the message is shown once.
fn shown_once(mut page: Response, flash: Option<Flash>) -> Response {
    if flash.is_some() {
        page.headers_mut().insert(
            header::SET_COOKIE,
            HeaderValue::from_static("flash=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"),
        );
    }
    page
}

/// Forms are decoded leniently, invalid UTF-8 becoming U+FFFD: refuse rather than store that.
fn refuse_mangled(fields: &[&str]) -> Result<(), PortalError> {
    if fields
        .iter()
        .any(|field| field.contains(char::REPLACEMENT_CHARACTER))
    {
        return Err(PortalError::BadRequest(
            "The form is not valid UTF-8 text.".to_owned(),
        ));
    }
    Ok(())
}

/// A form from a page of ours carries its request key; one from elsewhere gets its own.
fn request_key(sent: &mut String) -> Result<(), PortalError> {
    if sent.is_empty() {
        *sent = service_runtime::pool::new_idempotency_key();
    } else if !request_key::is_valid(sent) {
        return Err(PortalError::BadRequest(
            "request: the form's request key is 1 to 100 letters, digits, '-', '_', '.' or ':'; reload the page.".to_owned(),
        ));
    }
    Ok(())
}

/// A page of the student list: the students grading gave for it, and the links on from it.
async fn students_page(
    portal: &Portal,
    after: Option<u64>,
    form: StudentForm,
    error: Option<String>,
    flash: Option<Flash>,
) -> Result<StudentsPage, PortalError> {
    let settings = portal.settings.current();
    let page = portal
        .grading
        .students_page(after, settings.service.students_per_page)
        .await?;
    let next = match page.students.last() {
        Some(last) if page.more => Some(StudentsPage::after(last.id)),
        _ => None,
    };
    Ok(StudentsPage {
        students: page.students,
        next,
        paged: after.is_some(),
        passing_score: settings.service.passing_score,
        form,
        error,
        flash,
    })
}

#[tracing::instrument(level = "debug", skip_all)]
async fn list_students(
    query: String,
    flash: Option<Flash>,
    token: CsrfToken,
    portal: Arc<Portal>,
) -> Result<Response, PortalError> {
    let query = StudentsQuery::parse(&query)?;
    let form = StudentForm::fresh().carrying(&token);
    let page = students_page(&portal, query.after, form, None, flash).await?;
    let page = shown_once(pages::render(StatusCode::OK, &page), flash);
    Ok(token.set_on(page))
}

/// Post, then redirect to the new student's page.
#[tracing::instrument(level = "debug", skip(form, portal))]
async fn add_student(mut form: StudentForm, portal: Arc<Portal>) -> Result<Response, PortalError> {
    refuse_mangled(&[&form.first_name, &form.last_name, &form.request])?;
    request_key(&mut form.request)?;
    let student = NewStudent {
        first_name: form.first_name.clone(),
        last_name: form.last_name.clone(),
    };
    match portal.grading.add_student(&student, &form.request).await? {
        Verdict::Done(id) => {
            // What a user did, for the log: one record per change, none per page view.
            tracing::info!(student = id, "student added through the form");
            Ok(see_other(
                format!("/students/{id}"),
                Some(Flash::StudentAdded),
            ))
        }
        // Refused: the first page again, with the form as typed and grading's reason.
        Verdict::Refused(message) => {
            let page = students_page(&portal, None, form, Some(message), None).await?;
            Ok(pages::render(StatusCode::UNPROCESSABLE_ENTITY, &page))
        }
    }
}

#[tracing::instrument(level = "debug", skip(portal))]
async fn show_student(
    Id(id): Id,
    flash: Option<Flash>,
    token: CsrfToken,
    portal: Arc<Portal>,
) -> Result<Response, PortalError> {
    let student = portal.grading.student(id).await?;
    let page = StudentPage {
        student,
        passing_score: portal.settings.current().service.passing_score,
        form: GradeForm::fresh().carrying(&token),
        error: None,
        flash,
    };
    let page = shown_once(pages::render(StatusCode::OK, &page), flash);
    Ok(token.set_on(page))
}

/// Post, then redirect: a reload of the page that follows does not add the grade twice.
#[tracing::instrument(level = "debug", skip(form, portal))]
async fn add_grade(
    Id(id): Id,
    mut form: GradeForm,
    portal: Arc<Portal>,
) -> Result<Response, PortalError> {
    refuse_mangled(&[&form.title, &form.kind, &form.score, &form.request])?;
    request_key(&mut form.request)?;
    let verdict = match grade_of(&form) {
        Ok(grade) => portal.grading.add_grade(id, &grade, &form.request).await?,
        Err(message) => Verdict::Refused(message),
    };
    match verdict {
        Verdict::Done(()) => {
            tracing::info!(student = id, "grade recorded through the form");
            Ok(see_other(
                format!("/students/{id}"),
                Some(Flash::GradeAdded),
            ))
        }
        Verdict::Refused(message) => {
            let page = StudentPage {
                student: portal.grading.student(id).await?,
                passing_score: portal.settings.current().service.passing_score,
                form,
                error: Some(message),
                flash: None,
            };
            Ok(pages::render(StatusCode::UNPROCESSABLE_ENTITY, &page))
        }
    }
}

/// The student and one of their grades, for the pages that change or delete it.
async fn student_and_grade(
    portal: &Portal,
    id: u64,
    grade_id: u64,
) -> Result<(Student, Grade), PortalError> {
    let student = portal.grading.student(id).await?;
    let grade = student
        .grades
        .iter()
        .find(|grade| grade.id == grade_id)
        .cloned()
        .ok_or(PortalError::GradeNotFound {
            student: id,
            grade: grade_id,
        })?;
    Ok((student, grade))
}

#[tracing::instrument(level = "debug", skip(portal))]
async fn show_grade_form(
    Id(id): Id,
    Id(grade_id): Id,
    token: CsrfToken,
    portal: Arc<Portal>,
) -> Result<Response, PortalError> {
    let (student, grade) = student_and_grade(&portal, id, grade_id).await?;
    let page = EditGradePage {
        student,
        grade_id,
        form: GradeForm::of(&grade).carrying(&token),
        error: None,
    };
    Ok(token.set_on(pages::render(StatusCode::OK, &page)))
}

/// Post, then redirect; the change is a PUT to grading, so a retry applies it once.
#[tracing::instrument(level = "debug", skip(form, portal))]
async fn change_grade(
    Id(id): Id,
    Id(grade_id): Id,
    form: GradeForm,
    portal: Arc<Portal>,
) -> Result<Response, PortalError> {
    refuse_mangled(&[&form.title, &form.kind, &form.score])?;
    let verdict = match grade_of(&form) {
        Ok(grade) => portal.grading.change_grade(id, grade_id, &grade).await?,
        Err(message) => Verdict::Refused(message),
    };
    match verdict {
        Verdict::Done(()) => {
            tracing::info!(
                student = id,
                grade = grade_id,
                "grade changed through the form"
            );
            Ok(see_other(
                format!("/students/{id}"),
                Some(Flash::GradeChanged),
            ))
        }
        Verdict::Refused(message) => {
            let page = EditGradePage {
                student: portal.grading.student(id).await?,
                grade_id,
                form,
                error: Some(message),
            };
            Ok(pages::render(StatusCode::UNPROCESSABLE_ENTITY, &page))
        }
    }
}

#[tracing::instrument(level = "debug", skip(portal))]
async fn confirm_delete(
    Id(id): Id,
    Id(grade_id): Id,
    token: CsrfToken,
    portal: Arc<Portal>,
) -> Result<Response, PortalError> {
    let (student, grade) = student_and_grade(&portal, id, grade_id).await?;
    let page = DeleteGradePage {
        student,
        grade,
        csrf: token.as_str().to_owned(),
    };
    Ok(token.set_on(pages::render(StatusCode::OK, &page)))
}

#[tracing::instrument(level = "debug", skip(portal))]
async fn delete_grade(
    Id(id): Id,
    Id(grade_id): Id,
    _form: DeleteForm,
    portal: Arc<Portal>,
) -> Result<Response, PortalError> {
    portal.grading.delete_grade(id, grade_id).await?;
    tracing::info!(
        student = id,
        grade = grade_id,
        "grade deleted through the form"
    );
    Ok(see_other(
        format!("/students/{id}"),
        Some(Flash::GradeDeleted),
    ))
}

/// The grade a form describes, for grading to judge; a score that is not a number is refused
/// here, since the form's text cannot become grading's JSON number otherwise.
fn grade_of(form: &GradeForm) -> Result<NewGrade, String> {
    let score = parse_score(&form.score).ok_or("score: must be a number")?;
    Ok(NewGrade {
        title: form.title.clone(),
        kind: form.kind.clone(),
        score,
    })
}

/// A score as typed: surrounding spaces are forgiven, anything but a finite number is not.
fn parse_score(text: &str) -> Option<f64> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|score| score.is_finite())
}

/// The style sheet every page links: a file, since the Content-Security-Policy allows no inline
/// style. Compiled in, like the templates.
fn stylesheet() -> Response {
    let css = include_str!("../static/gradebook.css");
    let mut response =
        warp::reply::with_header(css, header::CONTENT_TYPE, "text/css; charset=utf-8")
            .into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

fn show_status(portal: &Portal) -> Response {
    if portal.status == StatusMode::Off {
        return PortalError::NotFound.into();
    }
    let dependencies = [portal.grading.watch(), portal.log.watch()]
        .into_iter()
        .map(|watch| DependencyView::from(&watch.current()))
        .collect();
    let page = StatusPage {
        dependencies,
        consul_ui: portal.consul_ui.to_string(),
        full: portal.status == StatusMode::Full,
        shipping: portal.shipping.as_deref().map(ShippingView::from),
        connections: portal.connections.as_ref().map(|stats| stats.counts()),
        config: portal.settings.status().report(),
    };
    pages::render(StatusCode::OK, &page)
}

#[tracing::instrument(level = "debug", skip(portal))]
async fn show_logs(query: LogsQuery, portal: Arc<Portal>) -> Result<Response, PortalError> {
    let service = query
        .service
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    if let Some(service) = &service
        && !service_name::is_valid(service)
    {
        return Err(PortalError::BadRequest(
            "service: a service name is 1 to 100 letters, digits, '.', '_' or '-'.".to_owned(),
        ));
    }
    let cursor = Cursor::parse(query.before.iter().map(String::as_str))
        .map_err(|err| PortalError::BadRequest(err.to_string()))?;
    let level = query
        .level
        .map(|l| l.trim().to_ascii_lowercase())
        .filter(|l| !l.is_empty());
    if let Some(level) = &level
        && !LogsPage::LEVELS.contains(&level.as_str())
    {
        return Err(PortalError::BadRequest(
            "level: one of trace, debug, info, warn or error.".to_owned(),
        ));
    }
    let trace = query
        .trace
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    if let Some(trace) = &trace
        && !contracts::log::is_trace_id(trace)
    {
        return Err(PortalError::BadRequest(
            "trace: a trace id is 32 lowercase hex digits, not all zero.".to_owned(),
        ));
    }
    let filters = LogFilters {
        service: service.as_deref(),
        level: level.as_deref(),
        trace: trace.as_deref(),
    };
    let (answers, missing) = read_log_instances(&portal.log, filters, &cursor).await?;
    let merged = logs::merge(answers, &cursor, LOG_PAGE_RECORDS);
    // Newest first: a reader wants the latest at the top.
    let rows: Vec<LogRow> = merged
        .records
        .into_iter()
        .map(|(instance, record)| LogRow::new(record, &instance.address, &portal.time_zone))
        .collect();
    let service = service.unwrap_or_default();
    let mut page = LogsPage {
        services: LogsPage::service_choices(&rows, &service),
        rows,
        service,
        level: level.unwrap_or_default(),
        trace: trace.unwrap_or_default(),
        zone: portal.time_zone.iana_name().unwrap_or("UTC").to_owned(),
        older: None,
        paged: !cursor.is_empty(),
        missing,
    };
    // A link that would not move would lead to this same page again.
    if !merged.next.is_empty() && merged.next != cursor {
        page.older = Some(page.older_than(&merged.next));
    }
    Ok(pages::render(StatusCode::OK, &page))
}

/// The logs page's filters, checked: each `None` or a value `GET /log` takes.
#[derive(Debug, Clone, Copy)]
struct LogFilters<'a> {
    service: Option<&'a str>,
    level: Option<&'a str>,
    trace: Option<&'a str>,
}

/// Reads the log instances that `cursor` says the page holds, all at once: every healthy one on
/// the newest page, the healthy ones it names on an older page. An instance that is named but
/// not healthy, or that fails, is missing from the page, which says so; the page fails only when
/// no instance answered.
async fn read_log_instances(
    log: &LogReader,
    filters: LogFilters<'_>,
    cursor: &Cursor,
) -> Result<(Vec<logs::Answer>, Vec<MissingLog>), PortalError> {
    let healthy = log.instances();
    let mut missing = Vec::new();
    let to_read: Vec<(Provider, Option<u64>)> = if cursor.is_empty() {
        healthy
            .iter()
            .map(|instance| (instance.clone(), None))
            .collect()
    } else {
        cursor
            .positions()
            .filter_map(
                |(id, before)| match healthy.iter().find(|instance| instance.id == id) {
                    Some(instance) => Some((instance.clone(), Some(before))),
                    None => {
                        missing.push(MissingLog {
                            instance: id.to_owned(),
                            address: None,
                            reason: "it is not healthy",
                        });
                        None
                    }
                },
            )
            .collect()
    };
    let reads = to_read.iter().map(|(instance, before)| {
        let LogFilters {
            service,
            level,
            trace,
        } = filters;
        log.recent_from(&instance.id, service, level, trace, *before)
    });
    let results = futures_util::future::join_all(reads).await;
    let mut answers = Vec::new();
    let mut first_failure = None;
    for ((instance, _), result) in to_read.into_iter().zip(results) {
        match result {
            Ok(records) => answers.push(logs::Answer { instance, records }),
            Err(err) => {
                tracing::warn!(instance = %instance.id, "a log instance's records are missing from the logs page: {err}");
                missing.push(MissingLog {
                    reason: match err {
                        UpstreamError::Unavailable { .. } => "it did not answer",
                        _ => "its answer could not be used",
                    },
                    instance: instance.id,
                    address: Some(instance.address),
                });
                first_failure.get_or_insert(err);
            }
        }
    }
    if answers.is_empty() {
        return Err(first_failure
            .unwrap_or(UpstreamError::Unavailable {
                service: service_name::LOG,
            })
            .into());
    }
    Ok((answers, missing))
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
        let response = request.reply(&test_routes()).await;
        let html = String::from_utf8_lossy(response.body()).into_owned();
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/html"),
            "{content_type}: {html}"
        );
        (response.status().as_u16(), response.headers().clone(), html)
    }

    /// The portal's routes over a Consul agent that is not there.
    fn test_routes() -> BoxedFilter<(Response,)> {
        routes(test_portal())
    }

    fn test_portal() -> Portal {
        let consul = ConsulSettings::local("http://127.0.0.1:1");
        let http = service_runtime::runtime::http_client();
        let pool = |name| ProviderPool::new(ProviderWatch::spawn(&consul, name), http.clone());
        Portal::new(
            pool("grading"),
            pool("log"),
            "http://127.0.0.1:1/ui/".into(),
        )
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
            // Not ids to grading either: the portal must not call /students/1 for them.
            (get("/students/+1"), 404, "404 Not Found"),
            (get("/students/01"), 404, "404 Not Found"),
            (get("/students/1/grades/+2/edit"), 404, "404 Not Found"),
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
            (
                get("/logs?before=57"),
                400,
                "before: a record number of a log instance",
            ),
            (
                get("/logs?trace=%3Cb%3E"),
                400,
                "trace: a trace id is 32 lowercase hex digits",
            ),
        ];
        for (request, status, text) in cases {
            let (got, _, html) = send(request).await;
            assert_eq!(got, status, "{html}");
            assert!(html.contains(text), "{text:?} missing from {html}");
        }
    }

    #[tokio::test]
    async fn a_form_post_without_the_cookies_token_or_from_another_site_is_refused_with_403() {
        let token = crate::csrf::CsrfToken::generate();
        let token = token.as_str();
        let other = crate::csrf::CsrfToken::generate();
        let grade = |csrf: &str| format!("title=T&type=Quiz&score=80&csrf={csrf}");
        let form = "application/x-www-form-urlencoded";
        let from_here = |path: &str, body: String| {
            post(path, form, body)
                .header("host", "localhost:5000")
                .header("cookie", format!("gradebook_csrf={token}"))
        };
        let refused = [
            (
                post("/students/1/grades", form, grade(token)),
                "security token",
            ),
            (from_here("/students/1/grades", grade("")), "security token"),
            (
                from_here("/students/1/grades", grade(other.as_str())),
                "security token",
            ),
            (
                from_here(
                    "/students",
                    format!(
                        "first_name=A&last_name=B&csrf={other}",
                        other = other.as_str()
                    ),
                ),
                "security token",
            ),
            (
                from_here("/students/1/grades/2", grade("")),
                "security token",
            ),
            (
                from_here("/students/1/grades/2/delete", String::new()),
                "security token",
            ),
            (
                from_here("/students/1/grades", grade(token))
                    .header("origin", "http://evil.example"),
                "from another site (Origin: http://evil.example)",
            ),
            (
                from_here("/students/1/grades", grade(token))
                    .header("sec-fetch-site", "cross-site"),
                "from another site (Sec-Fetch-Site: cross-site)",
            ),
        ];
        for (request, why) in refused {
            let (status, _, html) = send(request).await;
            assert_eq!(status, 403, "{html}");
            assert!(html.contains(why), "{why:?} missing from {html}");
        }
        // Past both checks, the grade goes to grading, which is not there.
        let accepted = from_here("/students/1/grades", grade(token))
            .header("origin", "http://localhost:5000")
            .header("sec-fetch-site", "same-origin");
        assert_eq!(send(accepted).await.0, 503);
        let delete = from_here("/students/1/grades/2/delete", format!("csrf={token}"));
        assert_eq!(send(delete).await.0, 503);
    }

    #[tokio::test]
    async fn the_status_page_can_be_summarised_or_turned_off() {
        let summary = routes(test_portal().with_status(StatusMode::Summary));
        let response = get("/status").reply(&summary).await;
        let html = String::from_utf8_lossy(response.body());
        assert_eq!(response.status(), 200);
        assert!(html.contains("<h2>grading "), "{html}");
        assert!(
            !html.contains("127.0.0.1:1"),
            "no address in a summary: {html}"
        );
        assert!(
            !html.contains("No healthy instance is registered."),
            "{html}"
        );

        let off = routes(test_portal().with_status(StatusMode::Off));
        let response = get("/status").reply(&off).await;
        assert_eq!(response.status(), 404);
        assert!(!String::from_utf8_lossy(response.body()).contains("grading"));
    }

    #[tokio::test]
    async fn the_style_sheet_is_a_file_and_no_page_has_inline_style() {
        let response = get("/static/gradebook.css").reply(&test_routes()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/css; charset=utf-8"
        );
        assert!(String::from_utf8_lossy(response.body()).contains(":root"));
        let (_, _, html) = send(get("/status")).await;
        assert!(
            html.contains(r#"<link rel="stylesheet" href="/static/gradebook.css">"#),
            "{html}"
        );
        assert!(
            !html.contains("<style") && !html.contains("<script"),
            "{html}"
        );
    }

    #[tokio::test]
    async fn a_form_address_opened_with_get_leads_back_to_its_page() {
        let cases = [
            ("/students", "/"),
            ("/students/2/grades", "/students/2"),
            ("/students/2/grades/5", "/students/2/grades/5/edit"),
        ];
        for (path, location) in cases {
            let response = get(path).reply(&test_routes()).await;
            assert_eq!(response.status(), 303, "{path}");
            assert_eq!(response.headers()["location"], location, "{path}");
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
    fn the_logs_query_keeps_one_position_per_instance_as_sent() {
        let query = LogsQuery::parse(
            "service=demo&before=log-a%3A5&x=1&before=b%26c%3A7&level=&trace=4bf92f3577b34da6a3ce929d0e0e4736",
        );
        assert_eq!(
            query,
            LogsQuery {
                service: Some("demo".into()),
                level: Some(String::new()),
                trace: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
                before: vec!["log-a:5".into(), "b&c:7".into()],
            }
        );
        assert_eq!(LogsQuery::parse(""), LogsQuery::default());
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
