//! Typed clients for the services the portal renders: `grading` (students and grades) and `log`
//! (recent records). Every way a call can fail becomes a [`PortalError`] here, so handlers see
//! either data or a reason they can show.

use std::sync::Arc;

use discovery::{Provider, ProviderWatch};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use service_runtime::{Answer, Call, Junk, PoolError, ProviderPool};

use crate::error::PortalError;
use crate::{GRADING_SERVICE, LOG_SERVICE};

/// How many log records the logs page shows.
pub const LOG_PAGE_RECORDS: usize = 100;

/// A student as grading lists it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Student {
    pub id: u64,
    pub first_name: String,
    pub last_name: String,
    /// `None` until the student has a grade.
    #[serde(default)]
    pub average: Option<f64>,
    #[serde(default)]
    pub grades: Vec<Grade>,
}

/// One grade of a student.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Grade {
    pub id: u64,
    pub title: String,
    /// `Test`, `Quiz` or `Homework`.
    #[serde(rename = "type")]
    pub kind: String,
    pub score: f64,
}

/// A grade to add, as grading's `POST /students/{id}/grades` takes it.
#[derive(Debug, Serialize)]
pub struct NewGrade<'a> {
    pub title: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub score: f64,
}

/// A student to add, as grading's `POST /students` takes it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewStudent<'a> {
    pub first_name: &'a str,
    pub last_name: &'a str,
}

/// What grading made of a change; refusing it is an answer, not a failure.
#[derive(Debug, PartialEq)]
pub enum Verdict<T> {
    Done(T),
    /// Grading's own message, which names the field (e.g. `score: must be between 0 and 100`).
    Refused(String),
}

impl<T> Verdict<T> {
    /// The same verdict with what was done turned into `U`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Verdict<U> {
        match self {
            Verdict::Done(done) => Verdict::Done(f(done)),
            Verdict::Refused(message) => Verdict::Refused(message),
        }
    }
}

/// One record of the log service.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LogRecord {
    /// Its place in its instance's file, which pages back with `before` on that instance only.
    /// Required: a record the portal cannot page past is an answer it cannot use.
    pub seq: u64,
    pub time: String,
    pub service: String,
    pub level: String,
    pub message: String,
    #[serde(default)]
    pub trace_id: Option<String>,
}

/// The body of the services' error answers.
#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// Limits of one call to grading or log, chosen per call (see [`CallLimits`]): what the
/// portal waits for one instance before trying another, and the most it reads of its answer.
pub mod limits {
    use std::time::Duration;

    use service_runtime::CallLimits;

    const MIB: usize = 1024 * 1024;

    /// One student with their grades: even a thousand grades is a few hundred KB.
    pub const STUDENT: CallLimits = CallLimits {
        timeout: Duration::from_secs(3),
        max_answer_bytes: MIB,
    };
    /// Every student with their grades and average: about 4.5 KB per student with 50 grades,
    /// so 32 MiB holds some 7,000 of them.
    pub const STUDENT_LIST: CallLimits = CallLimits {
        timeout: Duration::from_secs(3),
        max_answer_bytes: 32 * MIB,
    };
    /// A change: grading commits it (an fsync, or a round trip to PostgreSQL) before it
    /// answers, with one student or an error.
    pub const CHANGE: CallLimits = CallLimits {
        timeout: Duration::from_secs(5),
        max_answer_bytes: MIB,
    };
    /// One log instance's page on the logs page, which waits for the slowest instance and
    /// shows a failing one as missing, so its wait is short. 100 records of messages up to
    /// 64 KiB each, with room for JSON escapes: 16 MiB.
    pub const LOG_PAGE: CallLimits = CallLimits {
        timeout: Duration::from_secs(2),
        max_answer_bytes: 16 * MIB,
    };
}

/// What a judge makes of an answer: a result for the handler (data, or a reason it can show),
/// or junk, which counts against the instance that sent it.
type Judged<T> = Result<Result<T, PortalError>, Junk>;

/// Calls to grading, spread over its healthy instances.
#[derive(Clone)]
pub struct Grading {
    pool: ProviderPool,
}

impl Grading {
    /// A client over `pool`, a pool of grading instances.
    pub fn new(pool: ProviderPool) -> Self {
        Grading { pool }
    }

    /// The watch on grading's instances, for the status page.
    pub fn watch(&self) -> &ProviderWatch {
        self.pool.watch()
    }

    /// Every student, with grades and average.
    pub async fn students(&self) -> Result<Vec<Student>, PortalError> {
        let call = Call::get("/students", limits::STUDENT_LIST);
        self.call(call, |answer| {
            decode(GRADING_SERVICE, &answer, || {
                unexpected_status(GRADING_SERVICE, answer.status)
            })
        })
        .await
    }

    /// One student; [`PortalError::StudentNotFound`] when grading does not know the id.
    pub async fn student(&self, id: u64) -> Result<Student, PortalError> {
        let path = format!("/students/{id}");
        let call = Call::get(&path, limits::STUDENT);
        self.call(call, |answer| {
            decode(GRADING_SERVICE, &answer, || {
                PortalError::StudentNotFound(id)
            })
        })
        .await
    }

    /// Adds a grade, at most once per `key` (grading's `Idempotency-Key`): a form sent twice,
    /// or a request retried on another instance after one failed mid-request, adds one grade.
    pub async fn add_grade(
        &self,
        id: u64,
        grade: &NewGrade<'_>,
        key: &str,
    ) -> Result<Verdict<()>, PortalError> {
        let path = format!("/students/{id}/grades");
        let call = Call::post_json_once(&path, grade, key, limits::CHANGE);
        self.call(call, |answer| {
            judge(&answer, || PortalError::StudentNotFound(id), grade_answer)
        })
        .await
    }

    /// Adds a student, at most once per `key`; done, it is the new student's id.
    pub async fn add_student(
        &self,
        student: &NewStudent<'_>,
        key: &str,
    ) -> Result<Verdict<u64>, PortalError> {
        let call = Call::post_json_once("/students", student, key, limits::CHANGE);
        let not_found = || PortalError::Upstream {
            service: GRADING_SERVICE,
            detail: "POST /students answered 404".to_owned(),
        };
        self.call(call, |answer| {
            judge(&answer, not_found, |body| {
                let added: Student = serde_json::from_slice(body).map_err(junk)?;
                Ok(added.id)
            })
        })
        .await
    }

    /// Replaces a grade's title, type and score (a PUT: safe to retry on another instance).
    pub async fn change_grade(
        &self,
        id: u64,
        grade_id: u64,
        grade: &NewGrade<'_>,
    ) -> Result<Verdict<()>, PortalError> {
        let path = format!("/students/{id}/grades/{grade_id}");
        let call = Call::put_json(&path, grade, limits::CHANGE);
        let not_found = || PortalError::GradeNotFound {
            student: id,
            grade: grade_id,
        };
        self.call(call, |answer| judge(&answer, not_found, grade_answer))
            .await
    }

    /// Deletes a grade. One already gone counts as deleted: a confirmation sent twice, or a
    /// retry after a lost answer, ends where the teacher wanted.
    pub async fn delete_grade(&self, id: u64, grade_id: u64) -> Result<(), PortalError> {
        let path = format!("/students/{id}/grades/{grade_id}");
        self.call(Call::delete(&path, limits::CHANGE), |answer| {
            Ok(match answer.status {
                status if status.is_success() || status == StatusCode::NOT_FOUND => Ok(()),
                status => Err(unexpected_status(GRADING_SERVICE, status)),
            })
        })
        .await
    }

    async fn call<T>(
        &self,
        call: Call<'_>,
        judge: impl Fn(Answer) -> Judged<T>,
    ) -> Result<T, PortalError> {
        self.pool
            .call(call, judge)
            .await
            .map_err(pool_failure(GRADING_SERVICE))?
    }
}

/// Sorts grading's answer to a change: done (what `done` reads of the body), its verdict on the
/// input (a 400 or 422, with its message), `not_found` for a 404, or grading breaking its
/// contract.
fn judge<T>(
    answer: &Answer,
    not_found: impl Fn() -> PortalError,
    done: impl Fn(&[u8]) -> Result<T, Junk>,
) -> Judged<Verdict<T>> {
    Ok(match answer.status {
        status if status.is_success() => Ok(Verdict::Done(done(&answer.body)?)),
        StatusCode::NOT_FOUND => Err(not_found()),
        status @ (StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY) => {
            let body: Result<ErrorBody, _> = serde_json::from_slice(&answer.body);
            let message = body.map(|b| b.error).unwrap_or_else(|_| {
                format!("grading refused the change ({status}) without saying why")
            });
            Ok(Verdict::Refused(message))
        }
        status => Err(unexpected_status(GRADING_SERVICE, status)),
    })
}

/// Grading's answer to a grade added or changed: the grade as stored. Checked rather than
/// ignored, so that a 2xx with junk from a broken instance is not taken for a stored grade.
fn grade_answer(body: &[u8]) -> Result<(), Junk> {
    serde_json::from_slice::<Grade>(body)
        .map(drop)
        .map_err(junk)
}

/// Reads from the log service's instances, one at a time: each keeps its own records.
#[derive(Clone)]
pub struct LogReader {
    pool: ProviderPool,
}

impl LogReader {
    /// A client over `pool`, a pool of log instances.
    pub fn new(pool: ProviderPool) -> Self {
        LogReader { pool }
    }

    /// The watch on log's instances, for the status page.
    pub fn watch(&self) -> &ProviderWatch {
        self.pool.watch()
    }

    /// The log instances healthy now, as the watch lists them, each with its own records.
    pub fn instances(&self) -> Arc<[Provider]> {
        self.watch().current().providers
    }

    /// The latest [`LOG_PAGE_RECORDS`] records of the instance whose Consul service ID is
    /// `instance`, numbered below `before` in its numbering (all, when `None`), oldest first, of
    /// one service or of all.
    /// `service` must be a valid service name (see [`is_service_name`]).
    /// `level` (that level or more severe) must be a level name as the log service takes it.
    pub async fn recent_from(
        &self,
        instance: &str,
        service: Option<&str>,
        level: Option<&str>,
        before: Option<u64>,
    ) -> Result<Vec<LogRecord>, PortalError> {
        debug_assert!(service.is_none_or(is_service_name));
        let path = log_path(service, level, before);
        let call = Call::get(&path, limits::LOG_PAGE).to_instance(instance);
        self.pool
            .call(call, |answer| {
                decode(LOG_SERVICE, &answer, || {
                    unexpected_status(LOG_SERVICE, answer.status)
                })
            })
            .await
            .map_err(pool_failure(LOG_SERVICE))?
    }
}

/// `GET /log`'s path and query for a page of records.
fn log_path(service: Option<&str>, level: Option<&str>, before: Option<u64>) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("limit", &LOG_PAGE_RECORDS.to_string());
    if let Some(service) = service {
        query.append_pair("service", service);
    }
    if let Some(level) = level {
        query.append_pair("level", level);
    }
    if let Some(before) = before {
        query.append_pair("before", &before.to_string());
    }
    format!("/log?{}", query.finish())
}

/// Whether `name` is a service name as the log service accepts them: 1 to 100 characters of
/// `[A-Za-z0-9._-]`, which also makes it safe in a query string without encoding.
pub fn is_service_name(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// No healthy instance is "unavailable" (503); anything else is a failed dependency (502).
fn pool_failure(service: &'static str) -> impl FnOnce(PoolError) -> PortalError {
    move |err| {
        if err.is_unavailable() {
            PortalError::Unavailable { service }
        } else {
            PortalError::Upstream {
                service,
                detail: err.to_string(),
            }
        }
    }
}

fn unexpected_status(service: &'static str, status: StatusCode) -> PortalError {
    PortalError::Upstream {
        service,
        detail: format!("unexpected answer {status}"),
    }
}

/// A read's answer as `T`. A success whose body is not a `T` is junk: that instance is
/// misbehaving, and another may answer. A 404 is `not_found`; another status breaks the
/// service's contract.
fn decode<T: DeserializeOwned>(
    service: &'static str,
    answer: &Answer,
    not_found: impl FnOnce() -> PortalError,
) -> Judged<T> {
    match answer.status {
        status if status.is_success() => {
            Ok(Ok(serde_json::from_slice(&answer.body).map_err(junk)?))
        }
        StatusCode::NOT_FOUND => Ok(Err(not_found())),
        status => Ok(Err(unexpected_status(service, status))),
    }
}

/// An answer that does not decode, for the pool to count against its instance.
fn junk(err: serde_json::Error) -> Junk {
    Junk(format!("JSON the portal cannot read: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_student_reads_as_the_grading_contract_writes_it() {
        let json = r#"{"id":1,"firstName":"Tony","lastName":"Stark","average":null,
            "grades":[{"id":3,"title":"Quiz 1","type":"Quiz","score":92.5}]}"#;
        let student: Student = serde_json::from_str(json).unwrap();
        assert_eq!(student.first_name, "Tony");
        assert_eq!(student.average, None);
        assert_eq!(student.grades[0].kind, "Quiz");
        assert_eq!(student.grades[0].score, 92.5);
    }

    #[test]
    fn a_new_grade_is_sent_with_the_contract_field_names() {
        let grade = NewGrade {
            title: "Quiz 2",
            kind: "Quiz",
            score: 88.0,
        };
        let json = serde_json::to_value(&grade).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"title": "Quiz 2", "type": "Quiz", "score": 88.0})
        );
    }

    #[test]
    fn a_success_without_the_stored_grade_is_junk_not_a_stored_grade() {
        let answer = |status: StatusCode, body: &'static str| Answer {
            status,
            body: body.into(),
        };
        let not_found = || PortalError::StudentNotFound(1);
        let junk = judge(
            &answer(StatusCode::OK, "<html>Whoops</html>"),
            not_found,
            grade_answer,
        );
        assert!(
            junk.is_err(),
            "a 200 with junk must count against the instance"
        );
        let stored = r#"{"id":13,"title":"Quiz 2","type":"Quiz","score":92.5}"#;
        let done = judge(
            &answer(StatusCode::CREATED, stored),
            not_found,
            grade_answer,
        );
        assert!(matches!(done, Ok(Ok(Verdict::Done(())))));
        let refused = r#"{"error":"score: must be between 0 and 100"}"#;
        let refused = judge(
            &answer(StatusCode::UNPROCESSABLE_ENTITY, refused),
            not_found,
            grade_answer,
        );
        assert!(
            matches!(refused, Ok(Ok(Verdict::Refused(ref m))) if m.starts_with("score:")),
            "{refused:?}"
        );
    }

    #[test]
    fn service_filters_are_plain_names() {
        assert!(is_service_name("grading"));
        assert!(is_service_name("my-service_1.2"));
        assert!(!is_service_name(""));
        assert!(!is_service_name("a&limit=1"));
        assert!(!is_service_name(&"x".repeat(101)));
    }
}
