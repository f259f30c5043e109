//! The HTTP API: students (`/students`, `/students/{id}`) and their grades
//! (`/students/{id}/grades`, `/students/{id}/grades/{gradeId}`), as camelCase JSON.

use contracts::grading as wire;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use service_runtime::http::{Object, body_limit, json_content_type, respond};
use warp::http::{StatusCode, header};
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use crate::cache::JsonCache;
use crate::domain::{
    GradeId, InvalidField, Name, NewGrade, NewStudent, RequestKey, Score, StudentId, Title,
    parse_grade_type,
};
use crate::error::ApiError;
use crate::store::Store;

/// Largest request body accepted: far more than any student or grade needs.
pub const MAX_BODY_BYTES: u64 = 64 * 1024;

/// A `POST /students` body ([`wire::NewStudent`], the shape the portal sends), checked against
/// every rule; the error names the first field that breaks one.
pub fn validate_student(body: wire::NewStudent) -> Result<NewStudent, InvalidField> {
    Ok(NewStudent {
        first_name: Name::parse("firstName", &body.first_name)?,
        last_name: Name::parse("lastName", &body.last_name)?,
    })
}

/// A grade body ([`wire::NewGrade`]) checked against every rule; the error names the first
/// field that breaks one. Its type is text on the wire, so that an unknown type is a 422 naming
/// the allowed ones, not a 400 from the JSON parser.
pub fn validate_grade(body: wire::NewGrade) -> Result<NewGrade, InvalidField> {
    Ok(NewGrade {
        title: Title::parse(&body.title)?,
        grade_type: parse_grade_type(&body.kind)?,
        score: Score::parse(body.score)?,
    })
}

/// The routes below as `/metrics` counts them: by template, never by the ids in a path.
pub const ROUTE_TEMPLATES: &[&str] = &[
    "/students",
    "/students/{id}",
    "/students/{id}/grades",
    "/students/{id}/grades/{gradeId}",
];

/// All routes of the grading API. Each matches its path before its method, so an unknown path
/// is a 404 and a known path with the wrong method a 405.
///
/// The routes that write, and the grade routes, are boxed: warp nests every route's future in
/// one, as large as the largest, and moves it several times per request. Their body-reading and
/// store futures made the cached reads' futures kilobytes large, and copying them was the largest
/// cost of a `GET /students/1` beyond the ceiling's (callgrind); boxed, such a route costs one
/// allocation when it is tried, and the reads are tried first.
pub fn routes(store: Store) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    student_routes(store.clone())
        .or(grade_routes(store).boxed())
        .unify()
}

/// `GET /students`, `POST /students` (with an optional `Idempotency-Key`), `GET /students/{id}`.
///
/// The handlers capture the store and the cache themselves rather than take them from a
/// `warp::any().map(..)` filter: each such filter is one more level of warp's nested futures on
/// every request.
fn student_routes(store: Store) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let cache = JsonCache::default();
    let list = {
        let (store, cache) = (store.clone(), cache.clone());
        warp::path!("students")
            .and(warp::get())
            .and(warp::query::<ListQuery>())
            .then(move |query: ListQuery| {
                let (store, cache) = (store.clone(), cache.clone());
                async move { respond(list_students(query, store, cache).await) }
            })
    };
    let create = {
        let store = store.clone();
        warp::path!("students")
            .and(warp::post())
            .and(warp::header::optional::<String>(
                contracts::request_key::HEADER,
            ))
            .and(json_body())
            .then(move |key: Option<String>, body: wire::NewStudent| {
                let store = store.clone();
                async move { respond(create_student(key, body, store).await) }
            })
    };
    let one = warp::path!("students" / String)
        .and(warp::get())
        .then(move |id: String| {
            let (store, cache) = (store.clone(), cache.clone());
            async move { respond(get_student(id, store, cache).await) }
        });
    list.or(one).unify().or(create.boxed()).unify()
}

/// `POST /students/{id}/grades` (with an optional `Idempotency-Key`), and
/// `GET`, `PUT` and `DELETE` of `/students/{id}/grades/{gradeId}`.
fn grade_routes(store: Store) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let add = {
        let store = store.clone();
        warp::path!("students" / String / "grades")
            .and(warp::post())
            .and(warp::header::optional::<String>(
                contracts::request_key::HEADER,
            ))
            .and(json_body())
            .then(
                move |id: String, key: Option<String>, body: wire::NewGrade| {
                    let store = store.clone();
                    async move { respond(add_grade(id, key, body, store).await) }
                },
            )
    };
    let one = {
        let store = store.clone();
        warp::path!("students" / String / "grades" / String)
            .and(warp::get())
            .then(move |id: String, grade: String| {
                let store = store.clone();
                async move { respond(get_grade(id, grade, store).await) }
            })
    };
    let replace = {
        let store = store.clone();
        warp::path!("students" / String / "grades" / String)
            .and(warp::put())
            .and(json_body())
            .then(move |id: String, grade: String, body: wire::NewGrade| {
                let store = store.clone();
                async move { respond(replace_grade(id, grade, body, store).await) }
            })
    };
    let delete = warp::path!("students" / String / "grades" / String)
        .and(warp::delete())
        .then(move |id: String, grade: String| {
            let store = store.clone();
            async move { respond(delete_grade(id, grade, store).await) }
        });
    add.or(one).unify().or(replace).unify().or(delete).unify()
}

/// The query of `GET /students`, not yet trusted: both parameters absent is the whole list, as
/// the API has always answered; either one asks for a page ([`wire::StudentsPage`]).
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    /// The most students to answer, 1 to [`wire::StudentsPage::MAX_LIMIT`].
    pub limit: Option<String>,
    /// The id of the last student of the previous page.
    pub after: Option<String>,
}

impl ListQuery {
    /// The page asked for, or `None` for the whole list; a parameter that is not what it should
    /// be is refused, named.
    pub fn page(&self) -> Result<Option<wire::StudentsPage>, ApiError> {
        if self.limit.is_none() && self.after.is_none() {
            return Ok(None);
        }
        let max = wire::StudentsPage::MAX_LIMIT;
        let limit = match self.limit.as_deref() {
            None => wire::StudentsPage::DEFAULT_LIMIT,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|limit| (1..=max).contains(limit))
                .ok_or_else(|| {
                    ApiError::BadQuery(format!("limit: must be a whole number from 1 to {max}"))
                })?,
        };
        let after = match self.after.as_deref() {
            None => None,
            Some(text) => Some(text.parse::<contracts::id::Id>().map_err(|_| {
                ApiError::BadQuery(
                    "after: must be a student id (the last one of the previous page)".to_owned(),
                )
            })?),
        };
        Ok(Some(wire::StudentsPage { after, limit }))
    }
}

#[tracing::instrument(level = "debug", skip_all)]
async fn list_students(
    query: ListQuery,
    store: Store,
    cache: JsonCache,
) -> Result<impl Reply, ApiError> {
    match query.page()? {
        None => Ok(json_bytes(cache.students(&store).await?)),
        Some(page) => Ok(json_bytes(cache.students_page(&store, page).await?)),
    }
}

#[tracing::instrument(level = "debug", skip(store, cache))]
async fn get_student(id: String, store: Store, cache: JsonCache) -> Result<impl Reply, ApiError> {
    let id = StudentId::parse(&id)?;
    Ok(json_bytes(cache.student(&store, id).await?))
}

/// A 200 with an already serialized JSON body, exactly as `warp::reply::json` answers.
fn json_bytes(body: bytes::Bytes) -> Response {
    let mut response = Response::new(body.into());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A request sent again with the same `Idempotency-Key` gets the student the first one added.
#[tracing::instrument(level = "debug", skip_all)]
async fn create_student(
    key: Option<String>,
    body: wire::NewStudent,
    store: Store,
) -> Result<impl Reply, ApiError> {
    let key = key.as_deref().map(RequestKey::parse).transpose()?;
    let student = store.add_student(validate_student(body)?, key).await?;
    tracing::info!(student = %student.id, "student added");
    Ok(created(
        format!("/students/{}", student.id),
        &wire::Student::from(student),
    ))
}

/// A request sent again with the same `Idempotency-Key` gets the answer the first one got.
#[tracing::instrument(level = "debug", skip(body, store))]
async fn add_grade(
    id: String,
    key: Option<String>,
    body: wire::NewGrade,
    store: Store,
) -> Result<impl Reply, ApiError> {
    let id = StudentId::parse(&id)?;
    let key = key.as_deref().map(RequestKey::parse).transpose()?;
    let grade = store.add_grade(id, validate_grade(body)?, key).await?;
    tracing::info!(student = %id, grade = %grade.id, "grade added");
    Ok(created(
        format!("/students/{id}/grades/{}", grade.id),
        &wire::Grade::from(grade),
    ))
}

#[tracing::instrument(level = "debug", skip(store))]
async fn get_grade(id: String, grade_id: String, store: Store) -> Result<impl Reply, ApiError> {
    let id = StudentId::parse(&id)?;
    let grade_id = GradeId::parse(&grade_id)?;
    let grade = store.grade(id, grade_id).await?;
    Ok(warp::reply::json(&wire::Grade::from(grade)))
}

/// PUT replaces the whole grade, so sending it twice leaves the same grade.
#[tracing::instrument(level = "debug", skip(body, store))]
async fn replace_grade(
    id: String,
    grade_id: String,
    body: wire::NewGrade,
    store: Store,
) -> Result<impl Reply, ApiError> {
    let id = StudentId::parse(&id)?;
    let grade_id = GradeId::parse(&grade_id)?;
    let grade = store
        .update_grade(id, grade_id, validate_grade(body)?)
        .await?;
    tracing::info!(student = %id, grade = %grade.id, "grade changed");
    Ok(warp::reply::json(&wire::Grade::from(grade)))
}

/// 204 once the grade is gone; a grade already deleted is a 404, like one that never was.
#[tracing::instrument(level = "debug", skip(store))]
async fn delete_grade(id: String, grade_id: String, store: Store) -> Result<impl Reply, ApiError> {
    let id = StudentId::parse(&id)?;
    let grade_id = GradeId::parse(&grade_id)?;
    store.delete_grade(id, grade_id).await?;
    tracing::info!(student = %id, grade = %grade_id, "grade deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A JSON object of at most [`MAX_BODY_BYTES`]; malformed JSON, wrong types (an array for an
/// object included) and unknown fields are rejected with serde's message, which names the field
/// and position.
fn json_body<T: DeserializeOwned + Send>() -> impl Filter<Extract = (T,), Error = Rejection> + Clone
{
    body_limit(MAX_BODY_BYTES)
        .and(json_content_type())
        .and(warp::body::json())
        .map(|Object(body)| body)
}

/// 201 with the new resource as the body and its URL in `Location`.
fn created(location: String, body: &impl Serialize) -> Response {
    let reply = warp::reply::with_status(warp::reply::json(body), StatusCode::CREATED);
    warp::reply::with_header(reply, header::LOCATION, location).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{TestDatabase, on_each_backend};
    use serde_json::{Value, json};
    use warp::filters::BoxedFilter;

    type Api = BoxedFilter<(Response,)>;

    on_each_backend!(
        students_are_listed_in_id_order_with_grades_and_averages,
        a_created_student_and_grade_are_found_at_their_location,
        unknown_and_impossible_ids_are_404_with_a_json_error,
        invalid_values_are_422_naming_the_field,
        malformed_bodies_are_400_naming_the_problem,
        huge_bodies_and_wrong_methods_are_refused,
        a_grade_is_replaced_with_put_and_removed_with_delete,
        a_student_sent_again_with_its_idempotency_key_is_added_once,
        a_grade_sent_again_with_its_idempotency_key_is_added_once,
        storage_faults_are_an_opaque_500,
        concurrent_students_with_one_idempotency_key_are_added_once,
        a_page_of_students_is_asked_for_with_limit_and_after,
    );

    /// The API as served, over `db`; keep `db` alive as long as the API.
    async fn api(db: &TestDatabase) -> Api {
        routes(db.open().await)
            .recover(service_runtime::http::handle_rejection)
            .unify()
            .boxed()
    }

    /// Status, `Location` and JSON body of one request.
    async fn call(
        api: &Api,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (StatusCode, Option<String>, Value) {
        let mut request = warp::test::request().method(method).path(path);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        answer(request.reply(api).await)
    }

    /// Status, `Location` and JSON body of an answer.
    fn answer(response: warp::http::Response<bytes::Bytes>) -> (StatusCode, Option<String>, Value) {
        let location = response
            .headers()
            .get(header::LOCATION)
            .map(|l| l.to_str().unwrap().to_owned());
        let body = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
        (response.status(), location, body)
    }

    async fn students_are_listed_in_id_order_with_grades_and_averages(db: TestDatabase) {
        let api = api(&db).await;
        let (status, _, body) = call(&api, "GET", "/students", None).await;
        assert_eq!(status, StatusCode::OK);
        let students = body.as_array().unwrap();
        assert_eq!(students.len(), 4);
        let ids: Vec<i64> = students.iter().map(|s| s["id"].as_i64().unwrap()).collect();
        assert!(ids.is_sorted(), "{ids:?}");
        let tony = &students[0];
        assert_eq!(
            (tony["firstName"].as_str(), tony["lastName"].as_str()),
            (Some("Tony"), Some("Stark"))
        );
        assert_eq!(
            tony["grades"][0],
            json!({"id": 1, "title": "Quiz 1", "type": "Quiz", "score": 85.0})
        );
        assert_eq!(tony["average"], json!((85.0 + 94.0 + 89.5) / 3.0));

        let (status, _, one) = call(&api, "GET", "/students/1", None).await;
        assert_eq!((status, &one), (StatusCode::OK, tony));
    }

    async fn a_created_student_and_grade_are_found_at_their_location(db: TestDatabase) {
        let api = api(&db).await;
        let html = "<script>alert(1)</script>";
        let body = json!({"firstName": " Wanda ", "lastName": html}).to_string();
        let (status, location, student) = call(&api, "POST", "/students", Some(&body)).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(
            student,
            json!({"id": 5, "firstName": "Wanda", "lastName": html, "average": null, "grades": []})
        );
        let location = location.unwrap();
        assert_eq!(location, "/students/5");

        let grade = json!({"title": "Quiz 2", "type": "quiz", "score": 92.5}).to_string();
        let (status, grade_location, grade) =
            call(&api, "POST", "/students/5/grades", Some(&grade)).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(
            grade,
            json!({"id": 13, "title": "Quiz 2", "type": "Quiz", "score": 92.5})
        );
        let grade_location = grade_location.unwrap();
        assert_eq!(grade_location, "/students/5/grades/13");

        assert_eq!(call(&api, "GET", &grade_location, None).await.2, grade);
        let (_, _, student) = call(&api, "GET", &location, None).await;
        assert_eq!(
            (student["average"].as_f64(), &student["grades"][0]),
            (Some(92.5), &grade)
        );
    }

    /// Sends each case and checks the status and the start of the JSON error message.
    async fn assert_errors(
        api: &Api,
        status: StatusCode,
        cases: &[(&str, &str, Option<&str>, &str)],
    ) {
        for &(method, path, body, message) in cases {
            let (got, _, error) = call(api, method, path, body).await;
            let error = error["error"].as_str().unwrap_or_default().to_owned();
            assert_eq!(got, status, "{method} {path} {body:?}: {error}");
            assert!(
                error.starts_with(message),
                "{method} {path} {body:?}: {error}"
            );
        }
    }

    async fn unknown_and_impossible_ids_are_404_with_a_json_error(db: TestDatabase) {
        let api = api(&db).await;
        let grade = Some(r#"{"title": "t", "type": "Test", "score": 1}"#);
        #[rustfmt::skip]
        assert_errors(&api, StatusCode::NOT_FOUND, &[
            ("GET", "/students/7", None, "no student with id 7"),
            ("GET", "/students/-1", None, "no student with id \"-1\": ids are whole numbers from 1 to 9223372036854775807"),
            ("GET", "/students/99999999999999999999", None, "no student with id \"99999999999999999999\""),
            ("GET", "/students/abc", None, "no student with id \"abc\""),
            ("POST", "/students/7/grades", grade, "no student with id 7"),
            ("GET", "/students/7/grades/1", None, "no student with id 7"),
            ("GET", "/students/1/grades/4", None, "student 1 has no grade with id 4"),
            ("GET", "/students/1/grades/x", None, "no grade with id \"x\""),
            ("GET", "/nope", None, "no such resource"),
        ]).await;
    }

    async fn invalid_values_are_422_naming_the_field(db: TestDatabase) {
        let api = api(&db).await;
        let grade = |title: &str, kind: &str, score: f64| {
            json!({"title": title, "type": kind, "score": score}).to_string()
        };
        let student =
            |first: &str, last: &str| json!({"firstName": first, "lastName": last}).to_string();
        let bodies = [
            grade("Quiz", "Quiz", 100.5),
            grade("Quiz", "Quiz", -1.0),
            grade("  ", "Quiz", 50.0),
            grade(&"é".repeat(201), "Quiz", 50.0),
            grade("Final", "Exam", 50.0),
            student("", "X"),
            student("X", &"a".repeat(101)),
            student("X\u{1b}[31m", "Y"),
        ];
        let body = |i: usize| Some(bodies[i].as_str());
        #[rustfmt::skip]
        assert_errors(&api, StatusCode::UNPROCESSABLE_ENTITY, &[
            ("POST", "/students/1/grades", body(0), "score: must be between 0 and 100"),
            ("POST", "/students/1/grades", body(1), "score: must be between 0 and 100"),
            ("POST", "/students/1/grades", body(2), "title: must not be empty"),
            ("POST", "/students/1/grades", body(3), "title: must be at most 200 characters, got 201"),
            ("POST", "/students/1/grades", body(4), "type: \"Exam\" is not a grade type: use Test, Quiz or Homework"),
            ("POST", "/students", body(5), "firstName: must not be empty"),
            ("POST", "/students", body(6), "lastName: must be at most 100 characters, got 101"),
            ("POST", "/students", body(7), "firstName: must not contain control characters"),
        ]).await;
        let (_, _, tony) = call(&api, "GET", "/students/1", None).await;
        assert_eq!(
            tony["grades"].as_array().map(Vec::len),
            Some(3),
            "nothing invalid was stored"
        );
    }

    async fn malformed_bodies_are_400_naming_the_problem(db: TestDatabase) {
        let api = api(&db).await;
        #[rustfmt::skip]
        assert_errors(&api, StatusCode::BAD_REQUEST, &[
            ("POST", "/students", Some(r#"{"firstName": "A""#), "invalid JSON body: EOF while parsing"),
            ("POST", "/students", Some(r#"{"firstName": "A"}"#), "invalid JSON body: missing field `lastName`"),
            ("POST", "/students", Some(r#"{"firstName": "A", "lastName": "B", "age": 3}"#), "invalid JSON body: unknown field `age`"),
            ("POST", "/students", Some(r#"{"firstName": 1, "lastName": "B"}"#), "invalid JSON body: invalid type: integer `1`, expected a string"),
            ("POST", "/students/1/grades", Some(r#"{"title": "T", "type": "Test", "score": "high"}"#), "invalid JSON body: invalid type: string \"high\""),
            ("POST", "/students/1/grades", Some(r#"{"title": "T", "type": "Test", "score": 1e999}"#), "invalid JSON body: number out of range"),
            ("POST", "/students/1/grades", Some(r#"{"title": "T", "type": "Test", "score": null}"#), "invalid JSON body: invalid type: null"),
        ]).await;
    }

    async fn huge_bodies_and_wrong_methods_are_refused(db: TestDatabase) {
        let api = api(&db).await;
        let huge = json!({"firstName": "a".repeat(70_000), "lastName": "b"}).to_string();
        let (status, _, error) = call(&api, "POST", "/students", Some(&huge)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            error["error"].as_str().unwrap().contains("65536 bytes"),
            "{error}"
        );

        let (status, _, error) = call(&api, "DELETE", "/students/1", None).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{error}");
        assert_eq!(
            call(&api, "PUT", "/students", Some("{}")).await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    async fn a_grade_is_replaced_with_put_and_removed_with_delete(db: TestDatabase) {
        let api = api(&db).await;
        let changed = r#"{"title": "Quiz 1 (retake)", "type": "Quiz", "score": 99}"#;
        let (status, _, grade) = call(&api, "PUT", "/students/2/grades/4", Some(changed)).await;
        assert_eq!(status, StatusCode::OK, "{grade}");
        let expected = json!({"id": 4, "title": "Quiz 1 (retake)", "type": "Quiz", "score": 99.0});
        assert_eq!(grade, expected);
        // PUT again: the same grade, not a second change.
        assert_eq!(
            call(&api, "PUT", "/students/2/grades/4", Some(changed))
                .await
                .2,
            expected
        );
        assert_eq!(
            call(&api, "GET", "/students/2/grades/4", None).await.2,
            expected
        );

        let (status, _, body) = call(&api, "DELETE", "/students/2/grades/4", None).await;
        assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
        let (_, _, bruce) = call(&api, "GET", "/students/2", None).await;
        let ids: Vec<i64> = bruce["grades"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, [5, 6]);
        assert_eq!(bruce["average"], json!(96.0));
        // Gone: a second delete and a change of it are 404s, as is a grade of another student.
        assert_eq!(
            call(&api, "DELETE", "/students/2/grades/4", None).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(&api, "PUT", "/students/2/grades/4", Some(changed))
                .await
                .0,
            StatusCode::NOT_FOUND
        );
        let (status, _, error) = call(&api, "DELETE", "/students/1/grades/5", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(error["error"], "student 1 has no grade with id 5");
        let (status, _, error) = call(&api, "DELETE", "/students/99/grades/5", None).await;
        assert_eq!(
            (status, error["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("no student with id 99"))
        );

        // A change is validated like a new grade.
        let bad = r#"{"title": "x", "type": "Exam", "score": 50}"#;
        let (status, _, error) = call(&api, "PUT", "/students/2/grades/5", Some(bad)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            error["error"].as_str().unwrap().starts_with("type:"),
            "{error}"
        );
        assert_eq!(
            call(&api, "GET", "/students/2/grades/5", None).await.2["type"],
            "Homework"
        );
    }

    async fn a_student_sent_again_with_its_idempotency_key_is_added_once(db: TestDatabase) {
        let api = api(&db).await;
        let post = |key: &'static str, body: &'static str| {
            let request = warp::test::request()
                .method("POST")
                .path("/students")
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(body);
            let api = api.clone();
            async move { answer(request.reply(&api).await) }
        };
        let wanda = r#"{"firstName": "Wanda", "lastName": "Maximoff"}"#;
        let first = post("s-1", wanda).await;
        assert_eq!(first.0, StatusCode::CREATED);
        assert_eq!(first.1.as_deref(), Some("/students/5"));
        assert_eq!(post("s-1", wanda).await, first, "the same answer again");
        let (status, _, error) = post("s-1", r#"{"firstName": "Vision", "lastName": "X"}"#).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            error["error"],
            "Idempotency-Key: already used for a different request"
        );
        let (_, _, all) = call(&api, "GET", "/students", None).await;
        assert_eq!(all.as_array().map(Vec::len), Some(5));
    }

    /// A keyed POST, as a client sends it again after losing the answer.
    async fn post_keyed(api: &Api, key: &str, body: &str) -> (StatusCode, Option<String>, Value) {
        let response = warp::test::request()
            .method("POST")
            .path("/students/2/grades")
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body)
            .reply(api)
            .await;
        answer(response)
    }

    async fn a_grade_sent_again_with_its_idempotency_key_is_added_once(db: TestDatabase) {
        let api = api(&db).await;
        let grade = r#"{"title": "Quiz 5", "type": "Quiz", "score": 75}"#;
        let first = post_keyed(&api, "k-1", grade).await;
        assert_eq!(first.0, StatusCode::CREATED);
        assert_eq!(
            post_keyed(&api, "k-1", grade).await,
            first,
            "the same answer again"
        );
        let (_, _, bruce) = call(&api, "GET", "/students/2", None).await;
        assert_eq!(bruce["grades"].as_array().map(Vec::len), Some(4));

        let other = r#"{"title": "Quiz 6", "type": "Quiz", "score": 75}"#;
        let (status, _, error) = post_keyed(&api, "k-1", other).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            error["error"],
            "Idempotency-Key: already used for a different request"
        );
        let (status, _, error) = post_keyed(&api, "not a key!", grade).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            error["error"]
                .as_str()
                .unwrap()
                .starts_with("Idempotency-Key: must be 1 to 100"),
            "{error}"
        );
        let (_, _, bruce) = call(&api, "GET", "/students/2", None).await;
        assert_eq!(bruce["grades"].as_array().map(Vec::len), Some(4));
    }

    async fn storage_faults_are_an_opaque_500(db: TestDatabase) {
        let api = api(&db).await;
        db.execute("DROP TABLE grade_requests; DROP TABLE grades")
            .await;
        let (status, _, error) = call(&api, "GET", "/students", None).await;
        assert_eq!(
            (status, error),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": "internal error"})
            )
        );
    }

    async fn concurrent_students_with_one_idempotency_key_are_added_once(db: TestDatabase) {
        let api = api(&db).await;
        let post = || {
            warp::test::request()
                .method("POST")
                .path("/students")
                .header("content-type", "application/json")
                .header("idempotency-key", "same-form")
                .body(r#"{"firstName": "Wanda", "lastName": "Maximoff"}"#)
                .reply(&api)
        };
        let (one, two) = tokio::join!(post(), post());
        let (one, two) = (answer(one), answer(two));
        assert_eq!(one.0, StatusCode::CREATED, "{one:?}");
        assert_eq!(one, two, "both requests get the one student");
        let (_, _, all) = call(&api, "GET", "/students", None).await;
        assert_eq!(all.as_array().map(Vec::len), Some(5));
    }

    async fn a_page_of_students_is_asked_for_with_limit_and_after(db: TestDatabase) {
        let api = api(&db).await;
        let ids = |body: &Value| -> Vec<i64> {
            body.as_array()
                .unwrap()
                .iter()
                .map(|s| s["id"].as_i64().unwrap())
                .collect()
        };
        let (status, _, all) = call(&api, "GET", "/students", None).await;
        assert_eq!((status, ids(&all)), (StatusCode::OK, vec![1, 2, 3, 4]));
        let (status, _, first) = call(&api, "GET", "/students?limit=2", None).await;
        assert_eq!((status, ids(&first)), (StatusCode::OK, vec![1, 2]));
        // A page is the same JSON as the whole list, grades and averages included.
        assert_eq!(first[0], all[0]);
        let (_, _, next) = call(&api, "GET", "/students?limit=2&after=2", None).await;
        assert_eq!(ids(&next), [3, 4]);
        let (_, _, past) = call(&api, "GET", "/students?limit=2&after=4", None).await;
        assert_eq!(ids(&past), [0i64; 0]);
        // `after` alone pages with the default size; an id between students is fine.
        let (_, _, rest) = call(&api, "GET", "/students?after=1", None).await;
        assert_eq!(ids(&rest), [2, 3, 4]);
        // A page read again after a change shows it.
        let natasha = || async { call(&api, "GET", "/students?limit=1&after=2", None).await.2 };
        assert_eq!(
            natasha().await[0]["grades"].as_array().map(Vec::len),
            Some(3)
        );
        call(&api, "DELETE", "/students/3/grades/7", None).await;
        assert_eq!(
            natasha().await[0]["grades"].as_array().map(Vec::len),
            Some(2)
        );

        #[rustfmt::skip]
        assert_errors(&api, StatusCode::BAD_REQUEST, &[
            ("GET", "/students?limit=0", None, "limit: must be a whole number from 1 to 1000"),
            ("GET", "/students?limit=1001", None, "limit: must be a whole number from 1 to 1000"),
            ("GET", "/students?limit=x", None, "limit: must be a whole number"),
            ("GET", "/students?limit=-1", None, "limit: must be a whole number"),
            ("GET", "/students?after=0", None, "after: must be a student id"),
            ("GET", "/students?limit=2&after=07", None, "after: must be a student id"),
            ("GET", "/students?after=abc", None, "after: must be a student id"),
        ]).await;
    }

    /// PostgreSQL restarting under the service: a clear 503 meanwhile, then service again
    /// without restarting grading, with every acknowledged grade kept.
    #[tokio::test(flavor = "multi_thread")]
    async fn postgres_down_is_a_503_and_its_return_is_noticed_by_itself() {
        let Some(mut db) = TestDatabase::postgres().await else {
            return;
        };
        let api = api(&db).await;
        let grade = r#"{"title": "Before the outage", "type": "Test", "score": 88}"#;
        let (status, _, before) = call(&api, "POST", "/students/2/grades", Some(grade)).await;
        assert_eq!(status, StatusCode::CREATED);
        let server = db.postgres_server().expect("a PostgreSQL database");

        server.stop().await;
        for (method, path, body) in [
            ("GET", "/students", None),
            ("GET", "/students/2", None),
            ("POST", "/students/2/grades", Some(grade)),
        ] {
            let (status, _, error) = call(&api, method, path, body).await;
            assert_eq!(
                (status, &error),
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"error": "database unavailable: try again shortly"})
                ),
                "{method} {path} while PostgreSQL is down"
            );
        }

        server.start_again().await;
        let (status, _, bruce) = call(&api, "GET", "/students/2", None).await;
        assert_eq!(status, StatusCode::OK, "{bruce}");
        assert_eq!(bruce["grades"].as_array().unwrap().last(), Some(&before));
        let (status, _, _) = call(&api, "POST", "/students/2/grades", Some(grade)).await;
        assert_eq!(status, StatusCode::CREATED);
    }
}
