//! Typed clients for the services the portal renders: `grading` (students and grades) and `log`
//! (recent records), speaking the shapes of the [`contracts`] crate. Every way a call can fail
//! becomes an [`UpstreamError`] here; the pages decide what a reader sees of it.

use std::sync::Arc;

use contracts::grading::{Grade, NewGrade, NewStudent, Student, StudentsPage};
use contracts::log::LogRecord;
use contracts::service_name::{self, GRADING, LOG};
use contracts::{ErrorBody, id::Id};
use discovery::{Provider, ProviderWatch};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use service_runtime::{Answer, Call, Junk, PoolError, ProviderPool};

/// How many log records the logs page shows.
pub const LOG_PAGE_RECORDS: usize = 100;

/// Why a call to grading or log gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Consul lists no healthy instance, or none answered.
    #[error("{service}: no instance is available")]
    Unavailable { service: &'static str },
    /// Grading knows no student with this id.
    #[error("grading: no student with id {0}")]
    StudentNotFound(u64),
    /// Grading knows the student, but not this grade of theirs.
    #[error("grading: student {student} has no grade with id {grade}")]
    GradeNotFound { student: u64, grade: u64 },
    /// The service answered, but not as its contract says; `detail` is for the log.
    #[error("{service}: {detail}")]
    Broken {
        service: &'static str,
        detail: String,
    },
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

/// One page of students, and whether more follow it.
#[derive(Debug, Clone, PartialEq)]
pub struct StudentPage {
    /// At most the page size asked for, in id order.
    pub students: Vec<ListedStudent>,
    /// Whether grading has students after the last of these.
    pub more: bool,
}

/// A student as the list of students shows one: grading's [`Student`] with its grades counted
/// rather than read. Decoding every grade's strings was most of the home page's cost.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedStudent {
    pub id: u64,
    pub first_name: String,
    pub last_name: String,
    /// Mean of the scores; `None` before the first grade.
    #[serde(default)]
    pub average: Option<f64>,
    /// How many grades grading listed.
    #[serde(default, rename = "grades", deserialize_with = "count_items")]
    pub grade_count: usize,
}

impl From<Student> for ListedStudent {
    fn from(student: Student) -> Self {
        ListedStudent {
            id: student.id,
            first_name: student.first_name,
            last_name: student.last_name,
            average: student.average,
            grade_count: student.grades.len(),
        }
    }
}

/// The length of a JSON array, its items skipped unread.
fn count_items<'de, D: serde::Deserializer<'de>>(items: D) -> Result<usize, D::Error> {
    struct Count;
    impl<'de> serde::de::Visitor<'de> for Count {
        type Value = usize;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
            let mut count = 0;
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                count += 1;
            }
            Ok(count)
        }
    }
    items.deserialize_seq(Count)
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
    /// A page of students with their grades and average: about 4.5 KB per student with 50
    /// grades, so 32 MiB holds some 7,000 of them, far more than a page of the home page.
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
type Judged<T> = Result<Result<T, UpstreamError>, Junk>;

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

    /// Up to `size` students after the one with id `after` (from the first when `None`), with
    /// grades and average, through grading's paged list: a page costs the same however many
    /// students there are.
    pub async fn students_page(
        &self,
        after: Option<u64>,
        size: usize,
    ) -> Result<StudentPage, UpstreamError> {
        // One more than shown, to know whether a next page exists.
        let page = StudentsPage {
            after: after.map(Id),
            limit: size + 1,
        };
        let path = page.path();
        let call = Call::get(&path, limits::STUDENT_LIST);
        let mut students: Vec<ListedStudent> = self
            .call(call, |answer| {
                decode(GRADING, &answer, || {
                    unexpected_status(GRADING, answer.status)
                })
            })
            .await?;
        // A grading instance older than paging answers every student: keep what the page
        // holds, so the pages stay right (if slower) while instances are upgraded one by one.
        if let Some(after) = after {
            students.retain(|student| student.id > after);
        }
        let more = students.len() > size;
        students.truncate(size);
        Ok(StudentPage { students, more })
    }

    /// One student; [`UpstreamError::StudentNotFound`] when grading does not know the id.
    pub async fn student(&self, id: u64) -> Result<Student, UpstreamError> {
        let path = format!("/students/{id}");
        let call = Call::get(&path, limits::STUDENT);
        self.call(call, |answer| {
            decode(GRADING, &answer, || UpstreamError::StudentNotFound(id))
        })
        .await
    }

    /// Adds a grade, at most once per `key` (grading's `Idempotency-Key`): a form sent twice,
    /// or a request retried on another instance after one failed mid-request, adds one grade.
    pub async fn add_grade(
        &self,
        id: u64,
        grade: &NewGrade,
        key: &str,
    ) -> Result<Verdict<()>, UpstreamError> {
        let path = format!("/students/{id}/grades");
        let call = Call::post_json_once(&path, grade, key, limits::CHANGE);
        self.call(call, |answer| {
            judge(&answer, || UpstreamError::StudentNotFound(id), grade_answer)
        })
        .await
    }

    /// Adds a student, at most once per `key`; done, it is the new student's id.
    pub async fn add_student(
        &self,
        student: &NewStudent,
        key: &str,
    ) -> Result<Verdict<u64>, UpstreamError> {
        let call = Call::post_json_once("/students", student, key, limits::CHANGE);
        let not_found = || UpstreamError::Broken {
            service: GRADING,
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
        grade: &NewGrade,
    ) -> Result<Verdict<()>, UpstreamError> {
        let path = format!("/students/{id}/grades/{grade_id}");
        let call = Call::put_json(&path, grade, limits::CHANGE);
        let not_found = || UpstreamError::GradeNotFound {
            student: id,
            grade: grade_id,
        };
        self.call(call, |answer| judge(&answer, not_found, grade_answer))
            .await
    }

    /// Deletes a grade. One already gone counts as deleted: a confirmation sent twice, or a
    /// retry after a lost answer, ends where the teacher wanted.
    pub async fn delete_grade(&self, id: u64, grade_id: u64) -> Result<(), UpstreamError> {
        let path = format!("/students/{id}/grades/{grade_id}");
        self.call(Call::delete(&path, limits::CHANGE), |answer| {
            Ok(match answer.status {
                status if status.is_success() || status == StatusCode::NOT_FOUND => Ok(()),
                status => Err(unexpected_status(GRADING, status)),
            })
        })
        .await
    }

    async fn call<T>(
        &self,
        call: Call<'_>,
        judge: impl Fn(Answer) -> Judged<T>,
    ) -> Result<T, UpstreamError> {
        self.pool
            .call(call, judge)
            .await
            .map_err(pool_failure(GRADING))?
    }
}

/// Sorts grading's answer to a change: done (what `done` reads of the body), its verdict on the
/// input (a 400 or 422, with its message), `not_found` for a 404, or grading breaking its
/// contract.
fn judge<T>(
    answer: &Answer,
    not_found: impl Fn() -> UpstreamError,
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
        status => Err(unexpected_status(GRADING, status)),
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
    /// `service` must be a valid service name (see [`service_name::is_valid`]).
    /// `level` (that level or more severe) must be a level name as the log service takes it.
    pub async fn recent_from(
        &self,
        instance: &str,
        service: Option<&str>,
        level: Option<&str>,
        trace: Option<&str>,
        before: Option<u64>,
    ) -> Result<Vec<LogRecord>, UpstreamError> {
        debug_assert!(service.is_none_or(service_name::is_valid));
        debug_assert!(trace.is_none_or(contracts::log::is_trace_id));
        let path = log_path(service, level, trace, before);
        let call = Call::get(&path, limits::LOG_PAGE).to_instance(instance);
        self.pool
            .call(call, |answer| {
                decode(LOG, &answer, || unexpected_status(LOG, answer.status))
            })
            .await
            .map_err(pool_failure(LOG))?
    }
}

/// `GET /log`'s path and query for a page of records.
fn log_path(
    service: Option<&str>,
    level: Option<&str>,
    trace: Option<&str>,
    before: Option<u64>,
) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("limit", &LOG_PAGE_RECORDS.to_string());
    if let Some(service) = service {
        query.append_pair("service", service);
    }
    if let Some(level) = level {
        query.append_pair("level", level);
    }
    if let Some(trace) = trace {
        query.append_pair("trace", trace);
    }
    if let Some(before) = before {
        query.append_pair("before", &before.to_string());
    }
    format!("/log?{}", query.finish())
}

/// No healthy instance is "unavailable" (503); anything else is a failed dependency (502).
fn pool_failure(service: &'static str) -> impl FnOnce(PoolError) -> UpstreamError {
    move |err| {
        if err.is_unavailable() {
            UpstreamError::Unavailable { service }
        } else {
            UpstreamError::Broken {
                service,
                detail: err.to_string(),
            }
        }
    }
}

fn unexpected_status(service: &'static str, status: StatusCode) -> UpstreamError {
    UpstreamError::Broken {
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
    not_found: impl FnOnce() -> UpstreamError,
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
    fn the_runtimes_request_keys_follow_the_contract() {
        // The pool sends the key under its own header name, and the portal hands out its keys.
        assert!(
            service_runtime::pool::IDEMPOTENCY_KEY
                .eq_ignore_ascii_case(contracts::request_key::HEADER)
        );
        assert!(contracts::request_key::is_valid(
            &service_runtime::pool::new_idempotency_key()
        ));
    }

    #[test]
    fn a_success_without_the_stored_grade_is_junk_not_a_stored_grade() {
        let answer = |status: StatusCode, body: &'static str| Answer {
            status,
            body: body.into(),
        };
        let not_found = || UpstreamError::StudentNotFound(1);
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
}
