//! The real portal binary against a real Consul agent. Grading is played by a small real HTTP
//! server in the test that serves the grading contract from memory and registers through the
//! agent API with an HTTP check, as the real one does, so the portal finds it only through Consul.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use testkit::{ConsulAgent, ServiceProcess, eventually, free_port};
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
async fn start_grading_stand_in() -> SocketAddr {
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
async fn register_grading(agent: &ConsulAgent, addr: SocketAddr) {
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

async fn spawn_portal(agent: &ConsulAgent) -> ServiceProcess {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let args = ["--listen".to_owned(), addr.to_string()];
    let envs = [
        ("CONSUL_HTTP_ADDR", agent.http_addr()),
        ("RUST_LOG", "info".to_owned()),
    ];
    ServiceProcess::spawn(Path::new(env!("CARGO_BIN_EXE_portal")), addr, &args, &envs).await
}

/// A browser that shows redirects instead of following them, so the test can check them.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
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

async fn get(portal: &ServiceProcess, path: &str) -> Page {
    let url = format!("{}{path}", portal.base_url());
    read(browser().get(url).send().await.unwrap()).await
}

/// Posts `form` (already URL-encoded) as a browser posts the grade form.
async fn post_form(portal: &ServiceProcess, path: &str, form: &'static str) -> Page {
    let request = browser()
        .post(format!("{}{path}", portal.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form);
    read(request.send().await.unwrap()).await
}

#[tokio::test]
async fn the_portal_says_grading_is_unavailable_until_an_instance_registers() {
    let agent = ConsulAgent::start().await;
    let portal = spawn_portal(&agent).await;

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

    let page = get(&portal, "/status").await;
    assert_eq!(page.status, 200);
    assert!(page.html.contains(&grading.to_string()), "{}", page.html);
    assert!(
        page.html.contains(&format!("{}/ui/", agent.http_addr())),
        "{}",
        page.html
    );
}

#[tokio::test]
async fn the_grade_form_redirects_on_success_and_shows_what_is_wrong_otherwise() {
    let agent = ConsulAgent::start().await;
    let grading = start_grading_stand_in().await;
    register_grading(&agent, grading).await;
    let portal = spawn_portal(&agent).await;

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
