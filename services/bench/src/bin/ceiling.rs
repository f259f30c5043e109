//! `ceiling`: the upper bounds for the services' figures on this machine, one per shape of
//! request. Minimal warp servers (same warp, same tokio runtime, same loopback), with no routing
//! beyond their paths, no database and no serialization per request:
//! - `GET /students/1` answers a JSON document of the same shape and size as grading's answer for
//!   the seeded student 1, kept in memory as bytes (the shape of grading's reads);
//! - `GET /students` answers, the same way, the bytes of grading's whole seeded list (four
//!   students, four times as large: the shape of grading's list, whose body costs more to write);
//! - `POST /log` reads a text body and answers 201 (the shape of the log's text ingest, without
//!   storing anything);
//! - with `--two-hop-to URL`, the process instead answers `GET /students/1` by making one call
//!   to `URL/students/1` (another `ceiling`) over a pooled keep-alive client and answering with
//!   its body: the shape of a portal page, two HTTP exchanges, with no discovery, no JSON parse
//!   and no rendering.
//! - with `--page-from URL` (a grading instance), the same call, and then what a page does with
//!   the answer: decode it and render, with askama, the same HTML page as the portal's student
//!   page (same markup, same size); `GET /` likewise renders the portal's home page from one call
//!   for the list: the floors of a portal page, without the portal's discovery, routing, CSRF
//!   cookie, security headers, trace or metrics.
//! - with `--durable-dir DIR`, `POST /log` also appends its body as one line to `DIR/floor.log`
//!   and answers only once the line is fsync'd, through one writer thread that shares an fsync
//!   among the appends waiting for it (group commit): the floor of the log's durable ingest, with
//!   no parsing, no JSON, no index and no idempotency keys.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;
use warp::Filter;
use warp::http::{Response, StatusCode};

/// What grading answers for the seeded student 1, byte for byte.
const STUDENT: &str = r#"{"id":1,"firstName":"Tony","lastName":"Stark","average":89.5,"grades":[{"id":1,"title":"Quiz 1","type":"Quiz","score":85.0},{"id":2,"title":"Week 1 Homework","type":"Homework","score":94.0},{"id":3,"title":"Test 1","type":"Test","score":89.5}]}"#;

/// What grading answers for `GET /students` on its seeded database, byte for byte.
const STUDENTS: &str = r#"[{"id":1,"firstName":"Tony","lastName":"Stark","average":89.5,"grades":[{"id":1,"title":"Quiz 1","type":"Quiz","score":85.0},{"id":2,"title":"Week 1 Homework","type":"Homework","score":94.0},{"id":3,"title":"Test 1","type":"Test","score":89.5}]},{"id":2,"firstName":"Bruce","lastName":"Banner","average":96.33333333333333,"grades":[{"id":4,"title":"Quiz 1","type":"Quiz","score":97.0},{"id":5,"title":"Week 1 Homework","type":"Homework","score":100.0},{"id":6,"title":"Test 1","type":"Test","score":92.0}]},{"id":3,"firstName":"Natasha","lastName":"Romanoff","average":91.33333333333333,"grades":[{"id":7,"title":"Quiz 1","type":"Quiz","score":91.0},{"id":8,"title":"Week 1 Homework","type":"Homework","score":88.0},{"id":9,"title":"Test 1","type":"Test","score":95.0}]},{"id":4,"firstName":"Peter","lastName":"Parker","average":80.83333333333333,"grades":[{"id":10,"title":"Quiz 1","type":"Quiz","score":78.0},{"id":11,"title":"Week 1 Homework","type":"Homework","score":83.5},{"id":12,"title":"Test 1","type":"Test","score":81.0}]}]"#;

/// The largest text body the POST route reads, as the log service's own limit does.
const MAX_POST_BYTES: u64 = 64 * 1024;

/// Serves the ceilings of scripts/bench.sh (see the crate's `ceiling` binary docs).
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,

    /// Serve the two-hop ceiling instead: answer `GET /students/1` with the body of one call to
    /// this base URL's `/students/1` (e.g. `http://127.0.0.1:7000`).
    #[arg(long, value_name = "URL", conflicts_with = "page_from")]
    two_hop_to: Option<String>,

    /// Serve the page floors instead: answer `GET /students/1` by one call to this grading
    /// base URL's `/students/1`, and `GET /` by one to its `/students?limit=51`, each decoded and
    /// rendered as the portal renders that page.
    #[arg(long, value_name = "URL")]
    page_from: Option<String>,

    /// Make `POST /log` durable: append each body to DIR/floor.log and answer after its fsync.
    #[arg(long, value_name = "DIR")]
    durable_dir: Option<PathBuf>,
}

/// A body to append, and where to say it is durable.
type Append = (bytes::Bytes, tokio::sync::oneshot::Sender<bool>);

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match (args.two_hop_to, args.page_from) {
        (Some(upstream), _) => serve_two_hop(args.listen, upstream, Hop::Forward).await,
        (None, Some(upstream)) => serve_two_hop(args.listen, upstream, Hop::Render).await,
        (None, None) => serve_one_hop(args.listen, args.durable_dir).await,
    }
}

/// The writer thread of `--durable-dir`: takes every append waiting, writes them with one
/// write and one fsync, then answers them all.
fn spawn_group_writer(dir: PathBuf) -> mpsc::Sender<Append> {
    std::fs::create_dir_all(&dir).expect("creating --durable-dir");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("floor.log"))
        .expect("opening floor.log");
    let (appends, queue) = mpsc::channel::<Append>();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut replies = Vec::new();
        while let Ok(first) = queue.recv() {
            for (body, reply) in std::iter::once(first).chain(queue.try_iter()) {
                lines.extend_from_slice(&body);
                lines.push(b'\n');
                replies.push(reply);
            }
            let durable = file
                .write_all(&lines)
                .and_then(|()| file.sync_data())
                .is_ok();
            for reply in replies.drain(..) {
                let _ = reply.send(durable);
            }
            lines.clear();
        }
    });
    appends
}

/// `GET /students/1` and `GET /students` from memory, and `POST /log` of a text body answered
/// 201.
async fn serve_one_hop(listen: SocketAddr, durable_dir: Option<PathBuf>) {
    let json = |body: &'static str| {
        Response::builder()
            .header("content-type", "application/json")
            .body(bytes::Bytes::from_static(body.as_bytes()))
            .expect("static response")
    };
    let student = warp::path!("students" / "1")
        .and(warp::get())
        .map(move || json(STUDENT));
    let students = warp::path!("students")
        .and(warp::get())
        .map(move || json(STUDENTS));
    // The body is read in full (as the log reads a record's); with --durable-dir it is also
    // stored, otherwise thrown away.
    let writer = durable_dir.map(spawn_group_writer);
    let post = warp::path("log")
        .and(warp::path::end())
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_POST_BYTES))
        .and(warp::body::bytes())
        .and_then(move |text: bytes::Bytes| {
            let writer = writer.clone();
            async move {
                // Looked at, as the log looks at every body, so the read cannot be optimized
                // away; the answer is the log's own to one stored record.
                let mut status = if text.is_empty() {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::CREATED
                };
                if let (Some(writer), StatusCode::CREATED) = (writer, status) {
                    let (reply, durable) = tokio::sync::oneshot::channel();
                    let stored = writer.send((text, reply)).is_ok() && durable.await == Ok(true);
                    if !stored {
                        status = StatusCode::SERVICE_UNAVAILABLE;
                    }
                }
                Ok::<_, std::convert::Infallible>(
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(bytes::Bytes::from_static(br#"{"stored":1}"#))
                        .expect("static response"),
                )
            }
        });
    eprintln!(
        "ceiling: serving {} bytes at http://{listen}/students/1 and {} at /students, \
         POST /log answers 201",
        STUDENT.len(),
        STUDENTS.len(),
    );
    warp::serve(student.or(students).or(post)).run(listen).await;
}

/// What the two-hop servers do with the upstream's answer.
#[derive(Clone, Copy)]
enum Hop {
    /// Answer with its bytes.
    Forward,
    /// Decode it and render it as a page.
    Render,
}

/// A student's page: the markup of the portal's student page (its layout, the grades table and
/// the add-grade form with its two hidden tokens), so that both write the same bytes, written by
/// the least code that can: no flash, no refused form, no failing mark.
#[derive(askama::Template)]
#[template(path = "floor_student.html")]
struct StudentPage {
    student: contracts::grading::Student,
    /// The form's two hidden tokens (the portal's request key and CSRF token): random per page.
    request: String,
    csrf: String,
}

/// The home page: the markup of the portal's list of students, in the same way.
#[derive(askama::Template)]
#[template(path = "floor_students.html")]
struct StudentsPage {
    students: Vec<ListedStudent>,
    request: String,
    csrf: String,
}

/// A student as the list shows it: the grades are counted, not kept.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListedStudent {
    id: u64,
    first_name: String,
    last_name: String,
    average: Option<f64>,
    grades: Vec<serde::de::IgnoredAny>,
}

/// The page `page` makes of the answer `json` and the form's two tokens, or why there is none.
fn render<T: serde::de::DeserializeOwned, P: askama::Template>(
    json: &[u8],
    page: fn(T, String, String) -> P,
) -> Result<Response<bytes::Bytes>, String> {
    let answer = serde_json::from_slice(json).map_err(|err| err.to_string())?;
    let token = || service_runtime::trace::lower_hex(&fastrand::u128(..).to_be_bytes());
    let html = page(answer, token(), token())
        .render()
        .map_err(|err| err.to_string())?;
    Ok(Response::builder()
        .header("content-type", "text/html; charset=utf-8")
        .body(bytes::Bytes::from(html))
        .expect("static response"))
}

fn student_page(json: bytes::Bytes) -> Result<Response<bytes::Bytes>, String> {
    render(&json, |student, request, csrf| StudentPage {
        student,
        request,
        csrf,
    })
}

fn students_page(json: bytes::Bytes) -> Result<Response<bytes::Bytes>, String> {
    render(&json, |students, request, csrf| StudentsPage {
        students,
        request,
        csrf,
    })
}

/// `GET /students/1` answered from one pooled call to `upstream`: its body as it is, or rendered
/// as the student's page; rendering, `GET /` is also the home page from one call for the list.
async fn serve_two_hop(listen: SocketAddr, upstream: String, hop: Hop) {
    // The services' client settings (discovery's `runtime::http_client`): pooled keep-alive
    // connections, no proxy, Nagle off.
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .expect("a plain HTTP client without TLS always builds");
    let upstream = upstream.trim_end_matches('/').to_owned();
    // Parsed once, as the portal's pool keeps each instance's base URL parsed: a string URL
    // would be parsed again on every request (`url` and `idna`: 6,300 instructions a page).
    let parse = |url: String| {
        reqwest::Url::parse(&url).unwrap_or_else(|err| {
            eprintln!("ceiling: not a URL: {url}: {err}");
            std::process::exit(2)
        })
    };
    let student_url = parse(format!("{upstream}/students/1"));
    let make_student: Make = match hop {
        Hop::Forward => forward,
        Hop::Render => student_page,
    };
    let student_client = client.clone();
    let student = warp::path!("students" / "1")
        .and(warp::get())
        .and_then(move || answer(student_client.get(student_url.clone()).send(), make_student));
    // What the portal asks for with its default page size (50): one more, to know of a next page.
    let list_url = parse(format!("{upstream}/students?limit=51"));
    let home = warp::path::end()
        .and(warp::get())
        .and_then(move || answer(client.get(list_url.clone()).send(), students_page));
    match hop {
        Hop::Forward => {
            eprintln!("ceiling: two hops at http://{listen}/students/1 through {upstream}");
            warp::serve(student).run(listen).await;
        }
        Hop::Render => {
            eprintln!(
                "ceiling: rendered pages at http://{listen}/students/1 and http://{listen}/ through {upstream}"
            );
            warp::serve(student.or(home)).run(listen).await;
        }
    }
}

/// What a two-hop server makes of the upstream's answer.
type Make = fn(bytes::Bytes) -> Result<Response<bytes::Bytes>, String>;

fn forward(body: bytes::Bytes) -> Result<Response<bytes::Bytes>, String> {
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(body)
        .expect("static response"))
}

/// The answer `make` gives for the body of `call`; 502 when the call or `make` fails.
async fn answer(
    call: impl std::future::Future<Output = reqwest::Result<reqwest::Response>>,
    make: Make,
) -> Result<Response<bytes::Bytes>, std::convert::Infallible> {
    let body = match call.await {
        Ok(response) => response.bytes().await.map_err(|err| err.to_string()),
        Err(err) => Err(err.to_string()),
    };
    Ok(body.and_then(make).unwrap_or_else(|err| {
        Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(bytes::Bytes::from(err))
            .expect("static response")
    }))
}
