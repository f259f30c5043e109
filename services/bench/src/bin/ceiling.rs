//! `ceiling`: the upper bound for the services' figures on this machine. A minimal warp server
//! (same warp, same tokio runtime, same loopback) that answers `GET /students/1` with a JSON
//! document of the same shape and size as grading's answer for the seeded student 1, kept in
//! memory as bytes: no routing beyond one path, no database, no serialization per request.
//!
//! `POST /log` is the ceiling of the log's durable append: it reads a text body (up to the log's
//! 1 MiB) and answers 201 with the log's answer to one stored record, and stores nothing.

use std::net::SocketAddr;

use clap::Parser;
use warp::Filter;

/// What grading answers for the seeded student 1, byte for byte.
const STUDENT: &str = r#"{"id":1,"firstName":"Tony","lastName":"Stark","average":89.5,"grades":[{"id":1,"title":"Quiz 1","type":"Quiz","score":85.0},{"id":2,"title":"Week 1 Homework","type":"Homework","score":94.0},{"id":3,"title":"Test 1","type":"Test","score":89.5}]}"#;

/// Serves a grading-shaped JSON document from memory at GET /students/1.
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let body = bytes::Bytes::from_static(STUDENT.as_bytes());
    let student = warp::path!("students" / "1").and(warp::get()).map(move || {
        warp::http::Response::builder()
            .header("content-type", "application/json")
            .body(body.clone())
            .expect("static response")
    });
    let log = warp::path!("log")
        .and(warp::post())
        .and(warp::body::content_length_limit(1024 * 1024))
        .and(warp::body::bytes())
        .map(|body: bytes::Bytes| {
            // Looked at, as the log looks at every body, so the read cannot be optimized away.
            let status = if body.is_empty() {
                warp::http::StatusCode::BAD_REQUEST
            } else {
                warp::http::StatusCode::CREATED
            };
            warp::http::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(bytes::Bytes::from_static(br#"{"stored":1}"#))
                .expect("static response")
        });
    eprintln!(
        "ceiling: serving {} bytes at http://{}/students/1, and POST /log",
        STUDENT.len(),
        args.listen
    );
    warp::serve(student.or(log)).run(args.listen).await;
}
