//! The portal's pages, in-process: the real app on port 0 (see `helpers::spawn_app`) against a
//! real Consul agent. Grading is played by a small real HTTP server in the test that serves the
//! grading contract from memory and registers through the agent API with an HTTP check, as the
//! real one does, so the portal finds it only through Consul. Log instances are the real
//! binary, as one of them is killed.

mod helpers;
mod live_config;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use testkit::{
    ConsulAgent, FormToken, RunningApp, ServiceProcess, eventually, redirect_showing_client,
};

use helpers::spawn_app;
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

/// How long the portal may take to see a newly registered grading instance.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// The stand-in answers 200 with a body that breaks the contract for this student.
const BROKEN_STUDENT: u64 = 666;

type Students = Arc<Mutex<Vec<Value>>>;

fn demo_students() -> Vec<Value> {
    vec![
        json!({"id": 1, "firstName": "Tony", "lastName": "Stark", "average": 87.5,
               "grades": [{"id": 1, "title": "Quiz 1", "type": "Quiz", "score": 87.5}]}),
        json!({"id": 2, "firstName": "<script>alert(1)</script>", "lastName": "Banner",
               "average": null, "grades": []}),
    ]
}

fn json_reply(status: StatusCode, body: &Value) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// The grading contract, served from `students`.
fn grading_routes(
    students: Students,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let with_students = warp::any().map(move || students.clone());
    let health = warp::path!("health")
        .and(warp::get())
        .map(|| json_reply(StatusCode::OK, &json!({"status": "ok"})));
    let list = warp::path!("students")
        .and(warp::get())
        .and(with_students.clone())
        .map(|students: Students| {
            json_reply(
                StatusCode::OK,
                &Value::from(students.lock().unwrap().clone()),
            )
        });
    let one = warp::path!("students" / u64)
        .and(warp::get())
        .and(with_students.clone())
        .map(|id: u64, students: Students| {
            if id == BROKEN_STUDENT {
                return warp::reply::html("not the JSON of the contract").into_response();
            }
            match students.lock().unwrap().iter().find(|s| s["id"] == id) {
                Some(student) => json_reply(StatusCode::OK, student),
                None => json_reply(
                    StatusCode::NOT_FOUND,
                    &json!({"error": format!("no student with id {id}")}),
                ),
            }
        });
    let add = warp::path!("students" / u64 / "grades")
        .and(warp::post())
        .and(warp::body::json())
        .and(with_students)
        .map(|id: u64, grade: Value, students: Students| {
            let mut students = students.lock().unwrap();
            let Some(student) = students.iter_mut().find(|s| s["id"] == id) else {
                return json_reply(StatusCode::NOT_FOUND, &json!({"error": format!("no student with id {id}")}));
            };
            let score = grade["score"].as_f64().filter(|s| (0.0..=100.0).contains(s));
            let Some(score) = score else {
                return json_reply(StatusCode::UNPROCESSABLE_ENTITY, &json!({"error": "score: must be between 0 and 100"}));
            };
            let grades = student["grades"].as_array_mut().unwrap();
            let created = json!({"id": grades.len() + 10, "title": grade["title"], "type": grade["type"], "score": score});
            grades.push(created.clone());
            let average = grades.iter().filter_map(|g| g["score"].as_f64()).sum::<f64>() / grades.len() as f64;
            student["average"] = json!(average);
            json_reply(StatusCode::CREATED, &created)
        });
    health.or(list).unify().or(one).unify().or(add).unify()
}

/// Starts the grading stand-in on a free port and returns its address; it lives as long as the test.
pub(crate) async fn start_grading_stand_in() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let students = Arc::new(Mutex::new(demo_students()));
    tokio::spawn(
        warp::serve(grading_routes(students))
            .incoming(listener)
            .run(),
    );
    addr
}

/// Registers the stand-in as a `grading` instance with an HTTP check on its `/health`, as the real
/// service registers itself.
pub(crate) async fn register_grading(agent: &ConsulAgent, addr: SocketAddr) {
    agent
        .register(&json!({
            "Name": "grading",
            "ID": format!("grading-127.0.0.1-{}", addr.port()),
            "Address": "127.0.0.1",
            "Port": addr.port(),
            "Check": {"HTTP": format!("http://{addr}/health"), "Interval": "1s", "Status": "passing"},
        }))
        .await;
}

/// What a browser gets back: status, headers and the page.
struct Page {
    status: u16,
    headers: reqwest::header::HeaderMap,
    html: String,
}

async fn read(response: reqwest::Response) -> Page {
    Page {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        html: response.text().await.unwrap(),
    }
}

async fn get(portal: &RunningApp, path: &str) -> Page {
    let url = format!("{}{path}", portal.base_url());
    read(redirect_showing_client().get(url).send().await.unwrap()).await
}

/// Posts `form` (already URL-encoded) as a browser posts the grade form: with the CSRF cookie
/// and token of a page of the portal.
async fn post_form(portal: &RunningApp, path: &str, form: &'static str) -> Page {
    let home = format!("{}/", portal.base_url());
    let token = FormToken::fetch(&redirect_showing_client(), &home)
        .await
        .unwrap();
    let request = token.post(
        &redirect_showing_client(),
        &format!("{}{path}", portal.base_url()),
        form,
    );
    read(request.send().await.unwrap()).await
}

/// The portal answers every unknown path with its own 404 page; the runtime's routes must still
/// reach their handlers, `/health` above all, or Consul's check fails and the agent drops the
/// instance a minute later.
#[tokio::test]
async fn consuls_check_passes_and_the_runtime_routes_answer_beside_the_portals_own_404() {
    let agent = ConsulAgent::start().await;
    let portal = spawn_app(&agent).await;
    let id = format!(
        "portal-{}",
        portal
            .base_url()
            .trim_start_matches("http://")
            .replace(':', "-")
    );
    // A check starts out passing (the registration says so): wait for the agent's own probe.
    let checks = format!("{}/v1/agent/checks", agent.http_addr());
    let output = eventually(
        "the agent has probed the portal",
        DISCOVERY_TIMEOUT,
        || async {
            let checks: Value = reqwest::get(&checks).await.ok()?.json().await.ok()?;
            let check = checks
                .as_object()?
                .values()
                .find(|c| c["ServiceID"] == id)?;
            let output = check["Output"].as_str().filter(|o| !o.is_empty())?;
            Some((check["Status"].clone(), output.to_owned()))
        },
    )
    .await;
    assert_eq!(output.0, "passing", "{}", output.1);

    let health = get(&portal, "/health").await;
    assert_eq!(health.status, 200, "{}", health.html);
    assert!(health.html.contains(r#""status":"ok""#), "{}", health.html);
    for path in ["/status/connections", "/status/config", "/metrics"] {
        let page = get(&portal, path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.html);
        assert!(
            !page.html.contains("<!doctype html>"),
            "{path}: {}",
            page.html
        );
    }
    assert_eq!(get(&portal, "/no-such-page").await.status, 404);
}

#[tokio::test]
async fn the_portal_says_grading_is_unavailable_until_an_instance_registers() {
    let agent = ConsulAgent::start().await;
    let portal = spawn_app(&agent).await;

    let page = get(&portal, "/").await;
    assert_eq!(page.status, 503, "{}", page.html);
    assert_eq!(page.headers["retry-after"], "1");
    assert!(
        page.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        page.html
            .contains("The grading service is unavailable right now"),
        "{}",
        page.html
    );
    let page = get(&portal, "/logs").await;
    assert_eq!(page.status, 503);
    assert!(
        page.html
            .contains("The log service is unavailable right now"),
        "{}",
        page.html
    );

    // No restart: the portal's watch sees the new instance through Consul.
    let grading = start_grading_stand_in().await;
    register_grading(&agent, grading).await;
    let html = eventually(
        "the portal lists the students",
        DISCOVERY_TIMEOUT,
        || async {
            let page = get(&portal, "/").await;
            (page.status == 200).then_some(page.html)
        },
    )
    .await;
    assert!(
        html.contains(r#"<a href="/students/1">Tony Stark</a>"#),
        "{html}"
    );
    assert!(html.contains("87.5"), "{html}");
    assert!(
        html.contains("&#60;script&#62;alert(1)&#60;/script&#62; Banner"),
        "{html}"
    );
    assert!(!html.contains("<script>"), "{html}");
    for path in ["/", "/students/1", "/status"] {
        testkit::assert_head_answers_as_get(&format!("{}{path}", portal.base_url())).await;
    }

    let page = get(&portal, "/status").await;
    assert_eq!(page.status, 200);
    assert!(page.html.contains(&grading.to_string()), "{}", page.html);
    assert!(
        page.html.contains(&format!("{}/ui/", agent.http_addr())),
        "{}",
        page.html
    );
    assert!(
        page.html
            .contains("<dt>Client connection errors (aborted, malformed)</dt><dd>0</dd>"),
        "{}",
        page.html
    );
}

#[tokio::test]
async fn the_grade_form_redirects_on_success_and_shows_what_is_wrong_otherwise() {
    let agent = ConsulAgent::start().await;
    let grading = start_grading_stand_in().await;
    register_grading(&agent, grading).await;
    let portal = spawn_app(&agent).await;

    let page = get(&portal, "/students/1").await;
    assert_eq!(page.status, 200, "{}", page.html);
    assert!(page.html.contains("Quiz 1"), "{}", page.html);
    assert!(
        page.html
            .contains(r#"method="post" action="/students/1/grades""#),
        "{}",
        page.html
    );

    // Not a number: the portal refuses it before calling grading, keeping what was typed.
    let page = post_form(
        &portal,
        "/students/1/grades",
        "title=Quiz+7&type=Homework&score=abc",
    )
    .await;
    assert_eq!(page.status, 422);
    for kept in [
        "score: must be a number",
        r#"value="Quiz 7""#,
        r#"value="abc""#,
        "<option selected>Homework",
    ] {
        assert!(
            page.html.contains(kept),
            "{kept} missing from {}",
            page.html
        );
    }

    // Out of range: grading refuses it, and the portal shows grading's own message.
    let page = post_form(
        &portal,
        "/students/1/grades",
        "title=Quiz+7&type=Quiz&score=150",
    )
    .await;
    assert_eq!(page.status, 422);
    assert!(
        page.html.contains("score: must be between 0 and 100"),
        "{}",
        page.html
    );

    let page = post_form(
        &portal,
        "/students/1/grades",
        "title=Quiz+7&type=Quiz&score=92.5",
    )
    .await;
    assert_eq!(page.status, 303);
    assert_eq!(page.headers["location"], "/students/1");
    let page = get(&portal, "/students/1").await;
    assert!(
        page.html.contains("Quiz 7") && page.html.contains("90.0"),
        "{}",
        page.html
    );

    let page = get(&portal, "/students/99").await;
    assert_eq!(page.status, 404);
    assert!(
        page.html.contains("There is no student with id 99."),
        "{}",
        page.html
    );
    let page = post_form(
        &portal,
        "/students/99/grades",
        "title=Quiz&type=Quiz&score=50",
    )
    .await;
    assert_eq!(page.status, 404);

    let page = get(&portal, &format!("/students/{BROKEN_STUDENT}")).await;
    assert_eq!(page.status, 502);
    assert!(
        page.html
            .contains("gave an answer the portal could not use"),
        "{}",
        page.html
    );
}

/// A log instance (the real binary, on a port of its choosing) with its own data directory,
/// registered by itself as `log`.
struct LogInstance {
    process: ServiceProcess,
    _data: tempfile::TempDir,
}

async fn spawn_log_instance(agent: &ConsulAgent) -> LogInstance {
    let data = tempfile::tempdir().unwrap();
    let args = ["--data-dir".to_owned(), data.path().display().to_string()];
    let envs = [("CONSUL_HTTP_ADDR", agent.http_addr())];
    let binary = testkit::workspace_binary("log-service");
    let process = ServiceProcess::spawn_on_any_port(&binary, &args, &envs).await;
    LogInstance {
        process,
        _data: data,
    }
}

/// The time of note `second`: one second apart from 08:00 on, so tests know the order.
fn note_time(second: usize) -> String {
    format!("2026-11-30T08:{:02}:{:02}.000Z", second / 60, second % 60)
}

/// Stores `notes` (message, second) in one log instance, straight through its own API.
async fn store_notes(instance: &LogInstance, notes: &[(String, usize)]) {
    let records: Vec<Value> = notes
        .iter()
        .map(|(message, second)| {
            json!({"time": note_time(*second), "service": "notes", "level": "info", "message": message})
        })
        .collect();
    let response = testkit::http_client()
        .post(format!("{}/log", instance.process.base_url()))
        .json(&json!({ "records": records }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

/// Each row of a logs page, top to bottom: the address of the instance holding it and its message.
fn rows(html: &str) -> Vec<(String, String)> {
    html.split(r#"<tr title="held by the log instance at "#)
        .skip(1)
        .map(|row| {
            let (address, rest) = row.split_once('"').unwrap();
            let (_, message) = rest.split_once(r#"<span class="text">"#).unwrap();
            let message = message.split('<').next().unwrap();
            (address.to_owned(), message.to_owned())
        })
        .collect()
}

/// The "Older records" link of a page, as a browser would follow it.
fn older_link(html: &str) -> Option<String> {
    let (before, _) = html.split_once(r#"" rel="next">Older records"#)?;
    let (_, href) = before.rsplit_once(r#"<a href=""#)?;
    Some(href.replace("&#38;", "&"))
}

#[tokio::test]
async fn the_logs_page_merges_every_log_instance_and_pages_back_through_each_once() {
    let agent = ConsulAgent::start().await;
    let first = spawn_log_instance(&agent).await;
    let mut second = spawn_log_instance(&agent).await;
    // Interleaved in time: the first instance holds the even seconds, the second the odd ones,
    // and more records than two pages hold.
    let notes = |name: &str, count: usize, parity: usize| -> Vec<(String, usize)> {
        (0..count)
            .map(|i| (format!("note {name} {i}"), 2 * i + parity))
            .collect()
    };
    let (first_notes, second_notes) = (notes("first", 130, 0), notes("second", 90, 1));
    store_notes(&first, &first_notes).await;
    store_notes(&second, &second_notes).await;
    let second_of = |message: &str| -> usize {
        first_notes
            .iter()
            .chain(&second_notes)
            .find(|(m, _)| m == message)
            .unwrap_or_else(|| panic!("{message} was never stored"))
            .1
    };
    let holder = |message: &str| {
        if message.starts_with("note first ") {
            first.process.addr().to_string()
        } else {
            second.process.addr().to_string()
        }
    };
    let portal = spawn_app(&agent).await;

    let newest = eventually(
        "the logs page shows both log instances' records",
        DISCOVERY_TIMEOUT,
        || async {
            let page = get(&portal, "/logs?service=notes").await;
            let rows = rows(&page.html);
            let both = rows.iter().any(|(_, m)| m.starts_with("note first "))
                && rows.iter().any(|(_, m)| m.starts_with("note second "));
            (page.status == 200 && both).then_some(page.html)
        },
    )
    .await;
    // The newest 100 of both, newest first: the first instance's last 40 stand alone, then the
    // two alternate.
    let shown = rows(&newest);
    assert_eq!(shown.len(), 100, "{newest}");
    assert_eq!(shown[0].1, "note first 129");
    assert_eq!(shown[40].1, "note second 89");
    assert_eq!(shown[41].1, "note first 89");
    assert!(!newest.contains("are missing"), "{newest}");

    let mut seen: Vec<String> = Vec::new();
    let mut page_html = newest;
    let mut older_pages = Vec::new();
    loop {
        let page_rows = rows(&page_html);
        let times: Vec<usize> = page_rows.iter().map(|(_, m)| second_of(m)).collect();
        assert!(
            times.windows(2).all(|w| w[0] > w[1]),
            "not newest first: {page_rows:?}"
        );
        for (address, message) in &page_rows {
            assert_eq!(*address, holder(message), "{message} shown as another's");
        }
        seen.extend(page_rows.into_iter().map(|(_, message)| message));
        let Some(older) = older_link(&page_html) else {
            break;
        };
        assert!(older_pages.len() < 10, "paging back does not end: {older}");
        let page = get(&portal, &older).await;
        assert_eq!(page.status, 200, "{older}: {}", page.html);
        assert!(
            page.html
                .contains(r#"<a href="/logs?service=notes">Newest records</a>"#),
            "{}",
            page.html
        );
        older_pages.push(older);
        page_html = page.html;
    }
    let stored = first_notes.len() + second_notes.len();
    assert_eq!(seen.len(), stored, "shown more than once or not at all");
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), stored, "a record was shown twice");
    assert_eq!(older_pages.len(), 2, "{older_pages:?}");

    // One instance stops: an older page that names it still shows the other's records and says
    // whose are missing (whether Consul has noticed yet or not).
    second.process.sigkill();
    let page = get(&portal, &older_pages[0]).await;
    assert_eq!(page.status, 200, "{}", page.html);
    assert!(
        page.html
            .contains("Records of 1 log instance are missing from this page:"),
        "{}",
        page.html
    );
    let second_id = format!("log-127.0.0.1-{}", second.process.addr().port());
    assert!(page.html.contains(&second_id), "{}", page.html);
    let page_rows = rows(&page.html);
    assert!(!page_rows.is_empty(), "{}", page.html);
    assert!(
        page_rows.iter().all(|(_, m)| m.starts_with("note first ")),
        "{page_rows:?}"
    );
    let page = get(&portal, "/logs?service=notes").await;
    assert_eq!(page.status, 200, "{}", page.html);
    assert_eq!(rows(&page.html)[0].1, "note first 129", "{}", page.html);
    assert!(
        rows(&page.html)
            .iter()
            .all(|(_, m)| m.starts_with("note first ")),
        "{}",
        page.html
    );
}

#[tokio::test]
async fn the_logs_page_refuses_a_position_it_cannot_read() {
    let agent = ConsulAgent::start().await;
    let portal = spawn_app(&agent).await;
    let too_many: String = (0..=portal::logs::MAX_CURSOR_INSTANCES)
        .map(|i| format!("&before=log-{i}%3A5"))
        .collect();
    let long = "x".repeat(portal::logs::MAX_INSTANCE_ID_BYTES + 1);
    for (query, message) in [
        (
            "before=57".to_owned(),
            "before: a record number of a log instance",
        ),
        (
            "before=log-1%3A0".to_owned(),
            "before: a record number of a log instance",
        ),
        (
            format!("before={long}%3A5"),
            "before: a record number of a log instance",
        ),
        ("before=a%3A1&before=a%3A2".to_owned(), "one is named twice"),
        (too_many, "at most 32 log instances"),
    ] {
        let page = get(&portal, &format!("/logs?{query}")).await;
        assert_eq!(page.status, 400, "{query}: {}", page.html);
        assert!(page.html.contains(message), "{query}: {}", page.html);
    }
}

#[tokio::test]
async fn metrics_show_each_dependency_pool_its_watch_and_the_shipping_queue() {
    let agent = ConsulAgent::start().await;
    let grading = start_grading_stand_in().await;
    register_grading(&agent, grading).await;
    let portal = helpers::spawn_app_shipping(&agent).await;
    eventually(
        "the portal lists the students",
        DISCOVERY_TIMEOUT,
        || async { (get(&portal, "/").await.status == 200).then_some(()) },
    )
    .await;
    for _ in 0..3 {
        assert_eq!(get(&portal, "/students/1").await.status, 200);
    }

    let scrape = testkit::Scrape::fetch(&portal.base_url()).await;
    let student = [
        ("route", "/students/{id}"),
        ("method", "GET"),
        ("status", "200"),
    ];
    assert_eq!(scrape.value("gradebook_http_requests_total", &student), 3.0);
    let grading = [("dependency", "grading")];
    let log = [("dependency", "log")];
    assert_eq!(
        scrape.value("gradebook_dependency_instances", &grading),
        1.0
    );
    assert_eq!(scrape.value("gradebook_dependency_instances", &log), 0.0);
    assert_eq!(
        scrape.value("gradebook_dependency_instances_ejected", &grading),
        0.0
    );
    assert_eq!(
        scrape.value("gradebook_dependency_requests_in_flight", &grading),
        0.0
    );
    assert_eq!(
        scrape.value(
            "gradebook_watch_state",
            &[("dependency", "grading"), ("state", "live")]
        ),
        1.0
    );
    assert_eq!(scrape.value("gradebook_watch_age_seconds", &grading), 0.0);
    assert_eq!(
        scrape.value("gradebook_shipping_queue_capacity", &[]),
        10_000.0
    );
    let queued = scrape.value("gradebook_shipping_queue_records", &[]);
    assert!((0.0..=10_000.0).contains(&queued), "{queued} queued");
    for outcome in ["delivered", "refused", "dropped"] {
        let value = scrape.value("gradebook_shipping_records_total", &[("outcome", outcome)]);
        assert!(value >= 0.0, "{outcome}: {value}");
    }
    assert_eq!(
        scrape.value(
            "gradebook_build_info",
            &[
                ("service", "portal"),
                ("version", env!("CARGO_PKG_VERSION"))
            ]
        ),
        1.0
    );
    portal.stop().await;
}
