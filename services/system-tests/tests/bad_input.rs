//! Bad input on every endpoint of every service, against the real binaries and a real Consul
//! agent: malformed, truncated and oversized bodies, wrong types, missing and unknown fields,
//! invalid UTF-8, control characters, impossible ids, HTML in names, unknown paths and methods,
//! and the same submission sent many times at once. Every case gets a 4xx naming the problem
//! (JSON from log and grading, an HTML page from the portal), nothing panics, and every service
//! is healthy afterwards.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use system_tests::{Gradebook, client};
use testkit::{FormToken, ServiceProcess, free_port};

/// One request and what its answer must be.
struct Case {
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    headers: Vec<(&'static str, reqwest::header::HeaderValue)>,
    status: u16,
    /// Must appear in the JSON `error` (log, grading) or in the page (portal).
    says: String,
}

fn case(method: &str, path: &str, status: u16, says: &str) -> Case {
    Case {
        method: method.parse().expect("a method"),
        path: path.to_owned(),
        content_type: None,
        body: Vec::new(),
        headers: Vec::new(),
        status,
        says: says.to_owned(),
    }
}

impl Case {
    fn body(mut self, content_type: &'static str, body: impl Into<Vec<u8>>) -> Case {
        self.content_type = Some(content_type);
        self.body = body.into();
        self
    }

    fn json(self, body: &str) -> Case {
        self.body("application/json", body)
    }

    fn header(mut self, name: &'static str, value: &[u8]) -> Case {
        let value = reqwest::header::HeaderValue::from_bytes(value).expect("a header value");
        self.headers.push((name, value));
        self
    }
}

/// Sends each case to `service`; returns one line per case whose answer was not as it must be.
/// `html` services answer with pages, the others with `{"error": "..."}`.
/// The portal's posts carry the CSRF cookie and token of its home page, as a browser's would,
/// so that each case reaches the check it is about.
async fn check(service: &ServiceProcess, html: bool, cases: Vec<Case>) -> Vec<String> {
    let http = client();
    let token = match html {
        true => Some(
            FormToken::fetch(&http, &format!("{}/", service.base_url()))
                .await
                .expect("the portal's home page sets the CSRF cookie"),
        ),
        false => None,
    };
    let mut wrong = Vec::new();
    for mut case in cases {
        let mut request = http.request(
            case.method.clone(),
            format!("{}{}", service.base_url(), case.path),
        );
        if let Some(token) = &token
            && case.method == Method::POST
        {
            request = request.header("cookie", format!("gradebook_csrf={}", token.as_str()));
            // An empty body stays empty: those cases are about the body's length.
            if case.content_type == Some("application/x-www-form-urlencoded")
                && !case.body.is_empty()
            {
                case.body
                    .extend_from_slice(format!("&csrf={}", token.as_str()).as_bytes());
            }
        }
        if let Some(content_type) = case.content_type {
            request = request.header("content-type", content_type);
        }
        for (name, value) in &case.headers {
            request = request.header(*name, value.clone());
        }
        let what = format!(
            "{} {} {:?}",
            case.method,
            case.path,
            String::from_utf8_lossy(&case.body[..case.body.len().min(80)])
        );
        let response = match request.body(case.body).send().await {
            Ok(response) => response,
            Err(err) => {
                wrong.push(format!("{what}: no answer: {err}"));
                continue;
            }
        };
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = response.text().await.unwrap_or_default();
        let message = if html {
            if content_type.starts_with("text/html") {
                text.clone()
            } else {
                format!("(not HTML but {content_type}) {text}")
            }
        } else {
            match serde_json::from_str::<Value>(&text) {
                Ok(body) => body["error"]
                    .as_str()
                    .unwrap_or("(no error field)")
                    .to_owned(),
                Err(_) => format!("(not JSON) {text}"),
            }
        };
        if status != case.status || !message.contains(&case.says) {
            let shown: String = message.chars().take(300).collect();
            wrong.push(format!(
                "{what}: want {} {:?}, got {status} {shown}",
                case.status, case.says
            ));
        }
    }
    wrong
}

fn log_cases() -> Vec<Case> {
    let json = "application/json";
    let text = "text/plain";
    let record = |fields: &str| format!(r#"{{"records": [{{{fields}}}]}}"#);
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"service": "a", "message": i.to_string()}))
        .collect();
    let mut invalid_utf8_json = br#"{"records": [{"service": "a", "message": "bad "#.to_vec();
    invalid_utf8_json.extend_from_slice(b"\xff\xfe\"}]}");
    vec![
        case("POST", "/log", 411, "a Content-Length header is required").body(text, ""),
        case("POST", "/log", 400, "empty body")
            .body(text, "")
            .header("content-length", b"0"),
        case("POST", "/log", 400, "empty body").body(text, "\n"),
        case("POST", "/log", 400, "not valid UTF-8").body(text, b"caf\xe9".to_vec()),
        case("POST", "/log", 413, "limit of 1048576 bytes").body(text, "x".repeat(1024 * 1024 + 1)),
        case("POST", "/log", 422, "message: longer than 65536 bytes")
            .body(text, "x".repeat(65_537)),
        case(
            "POST",
            "/log?service=%3Cscript%3E",
            422,
            "service: only letters",
        )
        .body(text, "hello"),
        case("POST", "/log?level=loud", 422, "level: unknown level").body(text, "hello"),
        case("POST", "/log", 400, "invalid JSON body").json(r#"{"records": ["#),
        case("POST", "/log", 400, "EOF while parsing")
            .json(r#"{"records": [{"service": "a", "message": "trunc"#),
        case("POST", "/log", 400, "invalid JSON body").json("not json at all"),
        case("POST", "/log", 400, "invalid type").json(&record(r#""service": 7, "message": "x""#)),
        case("POST", "/log", 400, "invalid type").json(r#"{"records": {"service": "a"}}"#),
        case(
            "POST",
            "/log",
            400,
            "invalid type: sequence, expected a JSON object",
        )
        .json(r#"[[{"service": "a", "message": "x"}]]"#),
        case(
            "POST",
            "/log",
            400,
            "invalid type: sequence, expected a JSON object",
        )
        .json(r#"{"records": [[null, "a", null, "x", null]]}"#),
        case("POST", "/log", 400, "missing field `message`").json(&record(r#""service": "a""#)),
        case("POST", "/log", 400, "missing field `records`").json("{}"),
        case("POST", "/log", 400, "unknown field `mesage`")
            .json(&record(r#""service": "a", "message": "x", "mesage": "y""#)),
        case("POST", "/log", 400, "unknown field `extra`")
            .json(r#"{"records": [{"service": "a", "message": "x"}], "extra": 1}"#),
        case("POST", "/log", 400, "invalid JSON body").body(json, invalid_utf8_json),
        case("POST", "/log", 400, "at least one record").json(r#"{"records": []}"#),
        case("POST", "/log", 413, "at most 1000 records")
            .json(&json!({ "records": too_many }).to_string()),
        case("POST", "/log", 422, "records[0].service").json(&record(
            r#""service": "<script>alert(1)</script>", "message": "x""#,
        )),
        case("POST", "/log", 422, "records[0].message: must not be empty")
            .json(&record(r#""service": "a", "message": """#)),
        case("POST", "/log", 422, "records[0].level").json(&record(
            r#""service": "a", "message": "x", "level": 3"#.replace("3", "\"3\"").as_str(),
        )),
        case("POST", "/log", 422, "records[0].time").json(&record(
            r#""service": "a", "message": "x", "time": "yesterday""#,
        )),
        case("POST", "/log", 422, "records[0].trace_id").json(&record(&format!(
            r#""service": "a", "message": "x", "trace_id": "{}""#,
            "t".repeat(101)
        ))),
        case("POST", "/log", 422, "W3C trace-context trace-id").json(&record(
            r#""service": "a", "message": "x", "trace_id": "request-42""#,
        )),
        case("GET", "/log?limit=-1", 400, "limit: must be a whole number"),
        case(
            "GET",
            "/log?limit=abc",
            400,
            "limit: must be a whole number",
        ),
        case(
            "GET",
            "/log?limit=99999999999999999999",
            400,
            "limit: must be a whole number",
        ),
        case("GET", "/log?limit=0", 400, "limit: must be a whole number"),
        case(
            "GET",
            "/log?before=0",
            400,
            "before: must be a record number",
        ),
        case(
            "GET",
            "/log?after=-1",
            400,
            "after: must be a record number",
        ),
        case("GET", "/log?wait=1s", 400, "wait: only with after"),
        case(
            "GET",
            "/log?after=1&wait=1h",
            400,
            "wait: must be a duration",
        ),
        case(
            "GET",
            "/log?before=18446744073709551616",
            400,
            "before: must be a record number",
        ),
        case("GET", "/logs", 404, "no such resource"),
        case("GET", "/log/1", 404, "no such resource"),
        case("DELETE", "/log", 405, "method not allowed"),
        case("PUT", "/log", 405, "method not allowed").body(text, "x"),
        case("POST", "/health", 405, "method not allowed"),
    ]
}

fn grading_cases() -> Vec<Case> {
    let form = "application/x-www-form-urlencoded";
    let grade = r#"{"title": "Quiz", "type": "Quiz", "score": 50}"#;
    let mut invalid_utf8 = br#"{"firstName": "Ren"#.to_vec();
    invalid_utf8.extend_from_slice(b"\xe9\", \"lastName\": \"X\"}");
    let huge = json!({"firstName": "a".repeat(70_000), "lastName": "b"}).to_string();
    let mut cases = Vec::new();
    for id in [
        "-1",
        "0",
        "+1",
        "01",
        "99999999999999999999",
        "abc",
        "1.5",
        "%20",
        "0x1",
    ] {
        cases.push(case(
            "GET",
            &format!("/students/{id}"),
            404,
            "no student with id",
        ));
        cases.push(
            case(
                "POST",
                &format!("/students/{id}/grades"),
                404,
                "no student with id",
            )
            .json(grade),
        );
        cases.push(case(
            "GET",
            &format!("/students/1/grades/{id}"),
            404,
            "no grade with id",
        ));
    }
    cases.extend([
        case("GET", "/students/999999", 404, "no student with id 999999"),
        case(
            "GET",
            "/students/1/grades/999999",
            404,
            "student 1 has no grade with id 999999",
        ),
        case("POST", "/students", 400, "EOF while parsing").json(r#"{"firstName": "A""#),
        case("POST", "/students", 400, "invalid JSON body").json("{firstName: A}"),
        case(
            "POST",
            "/students",
            411,
            "a Content-Length header is required",
        )
        .json(""),
        case("POST", "/students", 400, "invalid JSON body: EOF")
            .json("")
            .header("content-length", b"0"),
        case(
            "POST",
            "/students",
            400,
            "invalid type: integer `1`, expected a string",
        )
        .json(r#"{"firstName": 1, "lastName": "B"}"#),
        case(
            "POST",
            "/students",
            400,
            "invalid type: sequence, expected a JSON object",
        )
        .json(r#"["A", "B"]"#),
        case("POST", "/students", 400, "missing field `lastName`").json(r#"{"firstName": "A"}"#),
        case("POST", "/students", 400, "unknown field `age`")
            .json(r#"{"firstName": "A", "lastName": "B", "age": 3}"#),
        case("POST", "/students", 400, "invalid JSON body").body("application/json", invalid_utf8),
        case("POST", "/students", 413, "limit of 65536 bytes").json(&huge),
        case(
            "POST",
            "/students",
            415,
            "Content-Type must be application/json",
        )
        .body("text/plain", r#"{"firstName": "A", "lastName": "B"}"#),
        case(
            "POST",
            "/students",
            415,
            "Content-Type must be application/json",
        )
        .body(form, "firstName=A"),
        // JSON without a type: what a page on another site can send without a preflight.
        Case {
            body: br#"{"title": "T", "type": "Quiz", "score": 1}"#.to_vec(),
            ..case("POST", "/students/1/grades", 415, "application/json")
        },
        Case {
            body: br#"{"title": "T", "type": "Quiz", "score": 1}"#.to_vec(),
            ..case("PUT", "/students/1/grades/1", 415, "application/json")
        },
        case("POST", "/students", 422, "firstName: must not be empty")
            .json(r#"{"firstName": "  ", "lastName": "B"}"#),
        case(
            "POST",
            "/students",
            422,
            "firstName: must contain at least one visible",
        )
        .json(r#"{"firstName": "\u200b\u2060", "lastName": "B"}"#),
        case(
            "POST",
            "/students",
            422,
            "lastName: must not contain bidirectional",
        )
        .json(r#"{"firstName": "A", "lastName": "B\u202e"}"#),
        case(
            "POST",
            "/students/1/grades",
            422,
            "title: must not contain bidirectional",
        )
        .json(r#"{"title": "\u2067Quiz", "type": "Quiz", "score": 1}"#),
        case(
            "POST",
            "/students",
            422,
            "lastName: must not contain control characters",
        )
        .json(r#"{"firstName": "A", "lastName": "B\nC"}"#),
        case(
            "POST",
            "/students",
            422,
            "firstName: must not contain control characters",
        )
        .json(r#"{"firstName": "A\u0000", "lastName": "B"}"#),
        case(
            "POST",
            "/students",
            422,
            "lastName: must be at most 100 characters",
        )
        .json(&json!({"firstName": "A", "lastName": "é".repeat(101)}).to_string()),
        case(
            "POST",
            "/students/1/grades",
            400,
            "invalid type: string \"high\"",
        )
        .json(r#"{"title": "T", "type": "Test", "score": "high"}"#),
        case("POST", "/students/1/grades", 400, "number out of range")
            .json(r#"{"title": "T", "type": "Test", "score": 1e999}"#),
        case("POST", "/students/1/grades", 400, "invalid type: null")
            .json(r#"{"title": "T", "type": "Test", "score": null}"#),
        case("POST", "/students/1/grades", 400, "missing field `score`")
            .json(r#"{"title": "T", "type": "Test"}"#),
        case("POST", "/students/1/grades", 400, "unknown field `weight`")
            .json(r#"{"title": "T", "type": "Test", "score": 1, "weight": 2}"#),
        case("POST", "/students/1/grades", 400, "EOF while parsing").json(r#"{"title": "T", "ty"#),
        case(
            "POST",
            "/students/1/grades",
            422,
            "score: must be between 0 and 100",
        )
        .json(r#"{"title": "T", "type": "Test", "score": 100.5}"#),
        case(
            "POST",
            "/students/1/grades",
            422,
            "score: must be between 0 and 100",
        )
        .json(r#"{"title": "T", "type": "Test", "score": -1}"#),
        case(
            "POST",
            "/students/1/grades",
            422,
            "type: \"Exam\" is not a grade type",
        )
        .json(r#"{"title": "T", "type": "Exam", "score": 1}"#),
        case(
            "POST",
            "/students/1/grades",
            422,
            "title: must not contain control characters",
        )
        .json(r#"{"title": "a\u001b[31mred", "type": "Test", "score": 1}"#),
        case(
            "POST",
            "/students/1/grades",
            422,
            "title: must be at most 200 characters",
        )
        .json(&json!({"title": "t".repeat(201), "type": "Test", "score": 1}).to_string()),
        case(
            "POST",
            "/students/1/grades",
            422,
            "Idempotency-Key: must be 1 to 100",
        )
        .json(grade)
        .header("idempotency-key", b"not a key"),
        case("POST", "/students/1/grades", 400, "idempotency-key")
            .json(grade)
            .header("idempotency-key", b"caf\xe9"),
        case("GET", "/teachers", 404, "no such resource"),
        case("GET", "/students/1/grades", 405, "method not allowed"),
        case("DELETE", "/students/1", 405, "method not allowed"),
        case("PATCH", "/students", 405, "method not allowed").json("{}"),
        case("PATCH", "/students/1/grades/1", 405, "method not allowed").json(grade),
        case(
            "PUT",
            "/students/1/grades/1",
            422,
            "score: must be between 0 and 100",
        )
        .json(r#"{"title": "Quiz", "type": "Quiz", "score": 101}"#),
        case("PUT", "/students/1/grades/1", 400, "invalid JSON body").json("{"),
        case(
            "PUT",
            "/students/1/grades/99",
            404,
            "student 1 has no grade with id 99",
        )
        .json(grade),
        case("DELETE", "/students/1/grades/x", 404, "grade"),
        case(
            "DELETE",
            "/students/1/grades/99",
            404,
            "student 1 has no grade with id 99",
        ),
    ]);
    cases
}

fn portal_cases() -> Vec<Case> {
    let form = "application/x-www-form-urlencoded";
    let grade =
        |body: &str| case("POST", "/students/1/grades", 422, "").body(form, body.to_owned());
    let refused = |body: &str, says: &str| Case {
        says: says.to_owned(),
        ..grade(body)
    };
    let mut cases = Vec::new();
    for id in [
        "-1",
        "+1",
        "01",
        "abc",
        "99999999999999999999",
        "1.5",
        "0x1",
    ] {
        cases.push(case(
            "GET",
            &format!("/students/{id}"),
            404,
            "There is no page at this address.",
        ));
        cases.push(
            case(
                "POST",
                &format!("/students/{id}/grades"),
                404,
                "There is no page at this address.",
            )
            .body(form, "title=T&type=Test&score=1"),
        );
    }
    cases.extend([
        case(
            "GET",
            "/students/999999",
            404,
            "There is no student with id 999999.",
        ),
        case(
            "POST",
            "/students/999999/grades",
            404,
            "There is no student with id 999999.",
        )
        .body(form, "title=T&type=Test&score=1"),
        refused("title=T&type=Test&score=abc", "score: must be a number"),
        refused("title=T&type=Test&score=", "score: must be a number"),
        refused("title=T&type=Test&score=NaN", "score: must be a number"),
        refused(
            "title=T&type=Test&score=101",
            "score: must be between 0 and 100",
        ),
        refused("title=&type=Test&score=1", "title: must not be empty"),
        refused(
            "title=a%0Ab&type=Test&score=1",
            "title: must not contain control characters",
        ),
        refused("title=T&type=Exam&score=1", "is not a grade type"),
        // An empty form has no CSRF token either.
        Case {
            status: 403,
            ..refused("", "security token").header("content-length", b"0")
        },
        case(
            "POST",
            "/students/1/grades",
            400,
            "A Content-Length header is required.",
        )
        .body(form, ""),
        case(
            "POST",
            "/students/1/grades",
            400,
            "The form is not valid UTF-8 text.",
        )
        .body(form, "title=%FF%FE&type=Test&score=1"),
        case(
            "POST",
            "/students/1/grades",
            400,
            "The form is not valid UTF-8 text.",
        )
        .body(form, b"title=caf\xe9&type=Test&score=1".to_vec()),
        case(
            "POST",
            "/students/1/grades",
            400,
            "The form could not be read",
        )
        .body(form, "title=T&type=Test&score=1&title=again"),
        case(
            "POST",
            "/students/1/grades",
            400,
            "request: the form&#39;s request key",
        )
        .body(form, "title=T&type=Test&score=1&request=not%20a%20key"),
        case(
            "POST",
            "/students/1/grades",
            413,
            "larger than the limit of 16384 bytes",
        )
        .body(form, format!("title={}", "x".repeat(20_000))),
        case(
            "POST",
            "/students/1/grades",
            415,
            "application/x-www-form-urlencoded",
        )
        .body("application/json", r#"{"title": "T"}"#),
        case(
            "GET",
            "/logs?service=%3Cscript%3E",
            400,
            "service: a service name is",
        ),
        case(
            "GET",
            "/logs?service=a%26limit%3D1",
            400,
            "service: a service name is",
        ),
        case("GET", "/logs?before=0", 400, "before: a record number"),
        case("GET", "/logs?level=loud", 400, "level: one of trace"),
        case("POST", "/students", 422, "firstName: must not be empty")
            .body(form, "first_name=&last_name=X"),
        case(
            "POST",
            "/students",
            422,
            "lastName: must not contain bidirectional",
        )
        .body(form, "first_name=A&last_name=B%E2%80%AE"),
        case(
            "POST",
            "/students/1/grades/1",
            422,
            "score: must be a number",
        )
        .body(form, "title=T&type=Test&score=abc"),
        case(
            "POST",
            "/students/1/grades/99",
            404,
            "Student 1 has no grade with id 99.",
        )
        .body(form, "title=T&type=Test&score=50"),
        case(
            "GET",
            "/students/1/grades/99/edit",
            404,
            "Student 1 has no grade with id 99.",
        ),
        case(
            "GET",
            "/students/1/grades/99/delete",
            404,
            "Student 1 has no grade with id 99.",
        ),
        case(
            "GET",
            "/logs?before=1%26limit%3D1",
            400,
            "before: a record number",
        ),
        case("GET", "/nope", 404, "There is no page at this address."),
        case(
            "DELETE",
            "/students/1/grades",
            405,
            "This page does not accept that method.",
        ),
        case("DELETE", "/", 405, "This page does not accept that method."),
        case(
            "PUT",
            "/status",
            405,
            "This page does not accept that method.",
        ),
    ]);
    cases
}

/// What the services answer a valid request with, as status and JSON.
async fn send_json(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("an answer");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn grades_titled(grading: &ServiceProcess, title: &str) -> usize {
    let (_, students) = send_json(client().get(format!("{}/students", grading.base_url()))).await;
    students
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["grades"].as_array().cloned().unwrap_or_default())
        .filter(|g| g["title"] == title)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_bad_input_with_a_4xx_naming_the_problem() {
    let gradebook = Gradebook::new().await;
    let log = gradebook.start_log("log", free_port()).await;
    let grading = gradebook.start_grading("grading", free_port()).await;
    let portal = gradebook.start_portal().await;
    testkit::eventually(
        "the portal sees grading",
        system_tests::PATIENCE,
        || async {
            let page = client()
                .get(format!("{}/students/1", portal.base_url()))
                .send()
                .await
                .ok()?;
            (page.status() == 200).then_some(())
        },
    )
    .await;

    let (log_cases, grading_cases, portal_cases) = (log_cases(), grading_cases(), portal_cases());
    eprintln!(
        "bad input: {} cases for log, {} for grading, {} for the portal",
        log_cases.len(),
        grading_cases.len(),
        portal_cases.len()
    );
    let mut wrong = check(&log, false, log_cases).await;
    wrong.extend(check(&grading, false, grading_cases).await);
    wrong.extend(check(&portal, true, portal_cases).await);
    assert!(
        wrong.is_empty(),
        "{} answers were not as they must be:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    let http = client();
    // Newlines and control characters in a log message: one record stays one line.
    let nasty = "line one\nline two\r\n\u{1b}[31mred\u{0}nul\u{2028}sep\t<script>x</script>";
    let (status, _) = send_json(
        http.post(format!("{}/log?service=faults", log.base_url()))
            .body(nasty),
    )
    .await;
    assert_eq!(status, 201);
    let file = std::fs::read_to_string(gradebook.data_dir("log").join("records.jsonl")).unwrap();
    let lines: Vec<&str> = file.lines().collect();
    assert!(file.ends_with('\n'));
    let stored: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("every line is one record"))
        .collect();
    let nasty_records: Vec<&Value> = stored.iter().filter(|r| r["service"] == "faults").collect();
    assert_eq!(nasty_records.len(), 1, "one record, on one line: {file}");
    assert_eq!(nasty_records[0]["message"], nasty, "read back as sent");

    // HTML in names and titles is stored as sent and shown escaped.
    let script = "<script>alert('x')</script>";
    let (status, student) = send_json(
        http.post(format!("{}/students", grading.base_url()))
            .json(&json!({"firstName": script, "lastName": "<b>Bold</b>"})),
    )
    .await;
    assert_eq!(status, 201, "{student}");
    assert_eq!(student["firstName"], script);
    let id = student["id"].as_u64().unwrap();
    let (status, _) = send_json(
        http.post(format!("{}/students/{id}/grades", grading.base_url()))
            .json(&json!({"title": "<img src=x onerror=alert(1)>", "type": "Quiz", "score": 1})),
    )
    .await;
    assert_eq!(status, 201);
    let page = http
        .get(format!("{}/students/{id}", portal.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("<script>alert") && !page.contains("<img src=x"),
        "{page}"
    );
    assert!(
        page.contains("&#60;script&#62;alert(&#39;x&#39;)&#60;/script&#62;"),
        "{page}"
    );
    assert!(
        page.contains("&#60;img src=x onerror=alert(1)&#62;"),
        "{page}"
    );

    // The same submission sent ten times at once is applied once when it carries its key...
    let same_key = (0..10).map(|_| {
        send_json(
            http.post(format!("{}/students/3/grades", grading.base_url()))
                .header("idempotency-key", "dup-1")
                .json(&json!({"title": "dup-keyed", "type": "Test", "score": 60})),
        )
    });
    let answers = futures_join(same_key).await;
    assert!(answers.iter().all(|(s, _)| *s == 201), "{answers:?}");
    assert!(
        answers.iter().all(|(_, g)| g["id"] == answers[0].1["id"]),
        "{answers:?}"
    );
    assert_eq!(grades_titled(&grading, "dup-keyed").await, 1);
    // ...through the portal's form too (a double click sends the page's request key twice)...
    let form = "title=dup-form&type=Quiz&score=70&request=form-key-1";
    let url = format!("{}/students/3/grades", portal.base_url());
    let token = FormToken::fetch(&http, &format!("{}/", portal.base_url()))
        .await
        .unwrap();
    let portal_posts = (0..10).map(|_| {
        let request = token.post(&http, &url, form);
        async move { request.send().await.unwrap().status().as_u16() }
    });
    let statuses = futures_join(portal_posts).await;
    assert!(statuses.iter().all(|s| *s == 303), "{statuses:?}");
    assert_eq!(grades_titled(&grading, "dup-form").await, 1);
    // ...and ten separate submissions (no key) are ten grades.
    let unkeyed = (0..10).map(|_| {
        send_json(
            http.post(format!("{}/students/3/grades", grading.base_url()))
                .json(&json!({"title": "dup-unkeyed", "type": "Test", "score": 60})),
        )
    });
    let answers = futures_join(unkeyed).await;
    assert!(answers.iter().all(|(s, _)| *s == 201), "{answers:?}");
    assert_eq!(grades_titled(&grading, "dup-unkeyed").await, 10);

    // Nothing panicked, and every service is still healthy.
    for service in [&log, &grading, &portal] {
        let response = http
            .get(format!("{}/health", service.base_url()))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let output = service.output();
        assert!(!output.contains("panicked"), "{output}");
    }
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(tasks.len());
    for task in tasks {
        outputs.push(task.await.expect("no panic"));
    }
    outputs
}
