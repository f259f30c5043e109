//! The HTTP API: `POST /log` (a text/plain message, or a JSON batch) and `GET /log`.

use std::convert::Infallible;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use service_runtime::http::{Object, body_limit, respond};
use warp::Filter;
use warp::http::StatusCode;
use warp::http::header::{CONTENT_TYPE, HeaderValue};
use warp::reply::Response;

use crate::error::ApiError;
use crate::record::{Level, NewRecord, Record, is_trace_id};
use crate::store::{LogStore, Selection};

/// Largest request body accepted, text or JSON.
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;
/// Most records in one JSON batch.
pub const MAX_BATCH_RECORDS: usize = 1000;
/// `GET /log` answers with this many records unless `limit` says otherwise.
pub const DEFAULT_READ_LIMIT: usize = 100;
/// The most records one `GET /log` answers with; `before` pages further back.
pub const MAX_READ_LIMIT: usize = 10_000;
/// The longest `wait` of a `GET /log` (Consul's own default for blocking queries).
pub const MAX_WAIT: Duration = Duration::from_secs(5 * 60);
/// Longest `Idempotency-Key`, in characters (the rule grading applies to its keys).
pub const MAX_REQUEST_KEY_CHARS: usize = 100;

/// The JSON batch form, as the services' log shipping sends it.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// Each one a JSON object, as the batch itself is.
    #[serde(deserialize_with = "service_runtime::http::objects")]
    pub records: Vec<NewRecord>,
}

/// Query of the text form: who is logging, at which level.
#[derive(Debug, Default, PartialEq, Eq, Deserialize)]
struct TextQuery {
    service: Option<String>,
    level: Option<String>,
}

impl TextQuery {
    /// Reads a query with nothing to decode (no `%` or `+`) and no field given twice, as serde
    /// reads it: other names ignored, a name without `=` an empty value. Anything else is left
    /// to serde (`None`).
    fn parse_plain(query: &str) -> Option<TextQuery> {
        if query.bytes().any(|b| b == b'%' || b == b'+') {
            return None;
        }
        let mut parsed = TextQuery::default();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let field = match name {
                "service" => &mut parsed.service,
                "level" => &mut parsed.level,
                _ => continue,
            };
            if field.replace(value.to_owned()).is_some() {
                return None;
            }
        }
        Some(parsed)
    }
}

/// The text form's query: read in place when plain (the common case: serde's general path
/// cost a tenth of the log's own work per text record), else by `warp::query`, whose answer,
/// a refusal included, it is in every case.
fn text_query() -> impl Filter<Extract = (TextQuery,), Error = warp::Rejection> + Clone {
    let plain = warp::query::raw()
        // No query at all reads as an empty one.
        .or(warp::any().map(String::new))
        .unify()
        .and_then(|query: String| {
            std::future::ready(TextQuery::parse_plain(&query).ok_or_else(warp::reject))
        });
    plain.or(warp::query::<TextQuery>()).unify()
}

/// Query of `GET /log`.
#[derive(Debug, Deserialize)]
struct ReadQuery {
    service: Option<String>,
    /// Only records at this level or more severe.
    level: Option<String>,
    /// Only records of this W3C trace-id, among the newest (see [`crate::store::TRACE_HORIZON`]).
    trace: Option<String>,
    limit: Option<String>,
    /// Only records numbered below this: the `seq` of the oldest record of the previous page.
    before: Option<String>,
    /// Only records numbered above this, the oldest first: the `seq` of the newest record seen.
    after: Option<String>,
    /// With `after`: when nothing newer is stored yet, wait up to this long (`30s`, `5m`) for it.
    wait: Option<String>,
}

/// The answer to a successful POST.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stored {
    pub stored: usize,
}

/// What a POST's `Content-Type` makes of its body: a JSON batch for `application/json` (any
/// case, parameters allowed), otherwise one text message. Read from the header in place: the
/// header's text is not copied or lowercased for every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    JsonBatch,
    Text,
}

impl FromStr for BodyKind {
    type Err = Infallible;

    fn from_str(content_type: &str) -> Result<BodyKind, Infallible> {
        const JSON: &[u8] = b"application/json";
        let value = content_type.trim_start().as_bytes();
        let is_json = value
            .get(..JSON.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(JSON));
        Ok(if is_json {
            BodyKind::JsonBatch
        } else {
            BodyKind::Text
        })
    }
}

/// The routes below as `/metrics` counts them.
pub const ROUTE_TEMPLATES: &[&str] = &["/log"];

/// All routes of the log API.
pub fn routes(
    store: LogStore,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let with_store = warp::any().map(move || store.clone());
    let post = warp::path("log")
        .and(warp::path::end())
        .and(warp::post())
        .and(body_limit(MAX_BODY_BYTES))
        .and(warp::header::optional::<BodyKind>("content-type"))
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(text_query())
        .and(warp::body::bytes())
        .and(with_store.clone())
        .then(
            |kind: Option<BodyKind>,
             key: Option<String>,
             query: TextQuery,
             body: Bytes,
             store: LogStore| async move {
                respond(post_log(kind, key, query, body, store).await)
            },
        );
    let get =
        warp::path("log")
            .and(warp::path::end())
            .and(warp::get())
            .and(warp::query::<ReadQuery>())
            .and(with_store)
            .then(|query: ReadQuery, store: LogStore| async move {
                respond(read_log(query, &store).await)
            });
    // Boxed: warp nests both routes' futures in one, as large as the larger, and moves it on
    // every request; the read's (a long poll) would make every POST's future as large.
    post.or(get.boxed()).unify()
}

/// Stores the body's records. With an `Idempotency-Key` (the services' shipping sends one per
/// batch), a batch sent again with the same key is stored once: the repeat gets the first
/// answer and stores nothing.
#[tracing::instrument(level = "debug", skip_all, fields(bytes = body.len()))]
async fn post_log(
    kind: Option<BodyKind>,
    key: Option<String>,
    query: TextQuery,
    body: Bytes,
    store: LogStore,
) -> Result<Response, ApiError> {
    if let Some(key) = &key {
        check_request_key(key)?;
    }
    let now = SystemTime::now();
    let records = match kind.unwrap_or(BodyKind::Text) {
        BodyKind::JsonBatch => parse_batch(&body, now)?,
        BodyKind::Text => vec![parse_text(query, &body, now)?],
    };
    let appended = store.append_once(records, key.as_deref()).await?;
    if appended.repeat {
        tracing::debug!(
            key = key.as_deref(),
            "a batch sent again: stored before, not again"
        );
    }
    Ok(stored_answer(appended.stored))
}

/// `201` with [`Stored`] as JSON, the bytes `warp::reply::json` writes for it. A text record's
/// answer is always the same, so it is not serialized again for each one.
fn stored_answer(stored: usize) -> Response {
    let body = match stored {
        1 => Bytes::from_static(br#"{"stored":1}"#),
        n => Bytes::from(format!(r#"{{"stored":{n}}}"#)),
    };
    let mut response = Response::new(body.into());
    *response.status_mut() = StatusCode::CREATED;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// An `Idempotency-Key` names one logical request: 1 to [`MAX_REQUEST_KEY_CHARS`] letters,
/// digits, `-`, `_`, `.` or `:` (UUIDs and random hex fit).
fn check_request_key(key: &str) -> Result<(), ApiError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    if key.is_empty() || key.len() > MAX_REQUEST_KEY_CHARS || !key.chars().all(allowed) {
        return Err(ApiError::RequestKey {
            max: MAX_REQUEST_KEY_CHARS,
        });
    }
    Ok(())
}

/// A batch is all or nothing: one invalid record rejects it, naming the record and the field.
fn parse_batch(body: &[u8], now: SystemTime) -> Result<Vec<Record>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::EmptyBody);
    }
    let Object(batch): Object<Batch> =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    if batch.records.is_empty() {
        return Err(ApiError::EmptyBatch);
    }
    if batch.records.len() > MAX_BATCH_RECORDS {
        return Err(ApiError::TooManyRecords {
            got: batch.records.len(),
            max: MAX_BATCH_RECORDS,
        });
    }
    batch
        .records
        .into_iter()
        .enumerate()
        .map(|(index, record)| {
            record
                .validate(now)
                .map_err(|source| ApiError::InvalidRecord { index, source })
        })
        .collect()
}

/// The course's form: the whole body is one message (`curl -d 'hello' localhost:4000/log`).
fn parse_text(query: TextQuery, body: &[u8], now: SystemTime) -> Result<Record, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| ApiError::NotUtf8)?;
    // A trailing newline is how files and shells end text, not part of the message.
    let message = text.strip_suffix('\n').unwrap_or(text);
    let message = message.strip_suffix('\r').unwrap_or(message);
    if message.is_empty() {
        return Err(ApiError::EmptyBody);
    }
    NewRecord {
        time: None,
        service: query.service.unwrap_or_else(|| "anonymous".to_owned()),
        level: query.level,
        message: message.to_owned(),
        // A caller's `traceparent` (read by the serving layer) puts its record in the trace.
        trace_id: service_runtime::trace::current().map(|trace| trace.trace_id()),
    }
    .validate(now)
    .map_err(ApiError::InvalidText)
}

async fn read_log(query: ReadQuery, store: &LogStore) -> Result<impl warp::Reply, ApiError> {
    let limit = match query.limit.as_deref() {
        None => DEFAULT_READ_LIMIT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_READ_LIMIT).contains(n))
            .ok_or(ApiError::Limit {
                max: MAX_READ_LIMIT,
            })?,
    };
    let seq = |text: Option<&str>, error: ApiError| match text {
        None => Ok(None),
        Some(text) => text.parse::<u64>().map(Some).map_err(|_| error),
    };
    let before = seq(query.before.as_deref(), ApiError::Before)?;
    if before == Some(0) {
        return Err(ApiError::Before);
    }
    let after = seq(query.after.as_deref(), ApiError::After)?;
    let wait = match query.wait.as_deref() {
        None => None,
        Some(_) if after.is_none() => return Err(ApiError::WaitWithoutAfter),
        Some(text) => Some(
            humantime::parse_duration(text)
                .ok()
                .filter(|wait| *wait <= MAX_WAIT)
                .ok_or(ApiError::Wait)?,
        ),
    };
    let level = query
        .level
        .as_deref()
        .filter(|l| !l.is_empty())
        .map(str::parse::<Level>)
        .transpose()
        .map_err(|_| ApiError::LevelFilter)?;
    let trace = query.trace.as_deref().filter(|t| !t.is_empty());
    if trace.is_some_and(|t| !is_trace_id(t)) {
        return Err(ApiError::TraceFilter);
    }
    let selection = Selection {
        service: query.service.as_deref().filter(|s| !s.is_empty()),
        level,
        trace,
        after,
        before,
        limit,
    };
    let Some(wait) = wait else {
        return Ok(warp::reply::json(&store.read(selection).await?));
    };
    // A long poll, like Consul's blocking queries: answer as soon as a selected record exists.
    let deadline = tokio::time::Instant::now() + wait;
    let mut news = store.news();
    let mut selection = selection;
    tracing::debug!(after, ?wait, "reader waiting for new records");
    loop {
        let (count, closing) = {
            let seen = news.borrow_and_update();
            (seen.count, seen.closing)
        };
        let records = store.read(selection).await?;
        if !records.is_empty() || closing {
            return Ok(warp::reply::json(&records));
        }
        // Nothing up to `count` was selected, so the next read starts after it: a waiting
        // reader looks at each new record once, not at the whole log on every append.
        selection.after = selection.after.max(Some(count));
        match tokio::time::timeout_at(deadline, news.changed()).await {
            Ok(Ok(())) => continue,
            // Timed out (or the store is gone): nothing new, which is an answer too.
            Ok(Err(_)) | Err(_) => return Ok(warp::reply::json(&records)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use service_runtime::http::handle_rejection;

    async fn post(store: &LogStore, content_type: &str, body: &[u8]) -> (u16, serde_json::Value) {
        let api = routes(store.clone()).recover(handle_rejection);
        let response = warp::test::request()
            .method("POST")
            .path("/log?service=tests")
            .header("content-type", content_type)
            .body(body)
            .reply(&api)
            .await;
        let body = serde_json::from_slice(response.body()).unwrap_or(serde_json::Value::Null);
        (response.status().as_u16(), body)
    }

    fn store() -> (tempfile::TempDir, LogStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path(), 100).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn bad_bodies_get_a_4xx_naming_the_problem_and_store_nothing() {
        let (_dir, store) = store();
        let json = "application/json";
        let cases: &[(&str, &[u8], u16, &str)] = &[
            ("text/plain", b"", 400, "empty body"),
            ("text/plain", b"\n", 400, "empty body"),
            ("text/plain", b"\xff\xfe", 400, "UTF-8"),
            (json, b"{\"records\": [", 400, "invalid JSON"),
            (
                json,
                b"{\"records\": [{\"service\": 7, \"message\": \"x\"}]}",
                400,
                "invalid JSON",
            ),
            (
                json,
                b"{\"records\": [{\"service\": \"a\"}]}",
                400,
                "missing field `message`",
            ),
            (
                json,
                b"{\"records\": [{\"service\": \"a\", \"message\": \"x\", \"mesage\": 1}]}",
                400,
                "unknown field",
            ),
            (json, b"{\"records\": []}", 400, "at least one record"),
            (
                json,
                b"{\"records\": [{\"service\": \"a b\", \"message\": \"x\"}]}",
                422,
                "records[0].service",
            ),
            (
                json,
                b"{\"records\": [{\"service\": \"a\", \"message\": \"x\", \"level\": \"loud\"}]}",
                422,
                "level",
            ),
        ];
        for (content_type, body, status, needle) in cases {
            let (got, answer) = post(&store, content_type, body).await;
            let message = answer["error"].as_str().unwrap_or_default();
            assert_eq!(got, *status, "{body:?} -> {answer}");
            assert!(message.contains(needle), "{body:?} -> {message}");
        }
        assert_eq!(store.count(), 0);
    }

    #[tokio::test]
    async fn the_stored_answer_is_warps_json_of_stored() {
        for stored in [1, 2, 1000] {
            let ours = warp::any().map(move || stored_answer(stored));
            let warps = warp::any().map(move || {
                warp::reply::with_status(warp::reply::json(&Stored { stored }), StatusCode::CREATED)
            });
            let ours = warp::test::request().reply(&ours).await;
            let warps = warp::test::request().reply(&warps).await;
            assert_eq!(ours.status(), warps.status());
            assert_eq!(ours.headers(), warps.headers());
            assert_eq!(ours.body(), warps.body(), "stored={stored}");
        }
    }

    #[tokio::test]
    async fn the_text_query_reads_as_warps_query_filter_reads_it() {
        for query in [
            "",
            "service=bench",
            "service=bench&level=warn",
            "&&level=&service&other=1&",
            "service=a+b&level=%77arn",
            "serv%69ce=x%zz%E2%82%AC%ff",
            "service=a&service=b",
            "level=a&other=1&level=a",
            "service=a&serv%69ce=b",
            "=x&service==y",
        ] {
            let read = |filter| async move {
                warp::test::request()
                    .path(&format!("/log?{query}"))
                    .filter(&filter)
                    .await
                    .ok()
            };
            let ours = read(text_query().boxed()).await;
            let warps = read(warp::query::<TextQuery>().boxed()).await;
            assert_eq!(ours, warps, "{query:?}");
            if let Some(plain) = TextQuery::parse_plain(query) {
                assert_eq!(Some(plain), warps, "{query:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_text_post_without_a_query_is_anonymous_and_a_doubled_field_is_refused() {
        let (_dir, store) = store();
        let api = routes(store.clone()).recover(handle_rejection);
        let post = |path: &'static str| {
            warp::test::request()
                .method("POST")
                .path(path)
                .body("hello")
                .reply(&api)
        };
        assert_eq!(post("/log").await.status(), 201);
        assert_eq!(store.recent(None, 1)[0].service, "anonymous");
        let refused = post("/log?service=a&service=b").await;
        assert_eq!(refused.status(), 400);
        assert!(
            String::from_utf8_lossy(refused.body()).contains("invalid query string"),
            "{refused:?}"
        );
        assert_eq!(store.count(), 1);
    }

    #[test]
    fn a_content_type_of_json_in_any_case_makes_a_batch() {
        for json in ["application/json", " Application/JSON; charset=utf-8"] {
            assert_eq!(json.parse(), Ok(BodyKind::JsonBatch), "{json:?}");
        }
        for text in [
            "text/plain",
            "",
            "application/jso",
            "text/plain; application/json",
        ] {
            assert_eq!(text.parse(), Ok(BodyKind::Text), "{text:?}");
        }
    }

    #[tokio::test]
    async fn a_batch_over_the_record_limit_is_refused_whole() {
        let (_dir, store) = store();
        let records: Vec<_> = (0..=MAX_BATCH_RECORDS)
            .map(|i| serde_json::json!({"service": "a", "message": i.to_string()}))
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({ "records": records })).unwrap();
        let (status, answer) = post(&store, "application/json", &body).await;
        assert_eq!(status, 413, "{answer}");
        assert_eq!(store.count(), 0);
    }

    #[tokio::test]
    async fn a_text_message_keeps_its_inner_newlines_and_loses_the_trailing_one() {
        let (_dir, store) = store();
        let (status, _) = post(&store, "text/plain", b"first\nsecond\n").await;
        assert_eq!(status, 201);
        let stored = store.recent(None, 10);
        assert_eq!(stored[0].message, "first\nsecond");
        assert_eq!(stored[0].service, "tests");
    }

    #[tokio::test]
    async fn reads_are_newest_last_filtered_and_limited() {
        let (_dir, store) = store();
        for i in 0..5 {
            post(&store, "text/plain", format!("m{i}").as_bytes()).await;
        }
        let api = routes(store.clone()).recover(handle_rejection);
        let response = warp::test::request().path("/log?limit=2").reply(&api).await;
        let records: Vec<Record> = serde_json::from_slice(response.body()).unwrap();
        let messages: Vec<_> = records.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(messages, ["m3", "m4"]);

        let response = warp::test::request()
            .path("/log?service=nobody")
            .reply(&api)
            .await;
        assert_eq!(response.body().as_ref(), b"[]");

        let warning =
            br#"{"records":[{"service":"tests","level":"warn","message":"disk almost full"}]}"#;
        assert_eq!(post(&store, "application/json", warning).await.0, 201);
        let api = routes(store.clone()).recover(handle_rejection);
        for (level, expected) in [("WARNING", 1), ("info", 2), ("error", 0)] {
            let response = warp::test::request()
                .path(&format!("/log?limit=2&level={level}"))
                .reply(&api)
                .await;
            let records: Vec<Record> = serde_json::from_slice(response.body()).unwrap();
            assert_eq!(records.len(), expected, "level={level}");
        }
        let response = warp::test::request()
            .path("/log?level=loud")
            .reply(&api)
            .await;
        assert_eq!(response.status(), 400);

        for bad in ["0", "-1", "10001", "x"] {
            let response = warp::test::request()
                .path(&format!("/log?limit={bad}"))
                .reply(&api)
                .await;
            assert_eq!(response.status(), 400, "limit={bad}");
        }
    }

    #[tokio::test]
    async fn records_carry_their_number_and_before_and_after_page() {
        let (_dir, store) = store();
        for i in 1..=5 {
            post(&store, "text/plain", format!("m{i}").as_bytes()).await;
        }
        let api = routes(store.clone()).recover(handle_rejection);
        let page = |query: &'static str| {
            let api = api.clone();
            async move {
                let response = warp::test::request().path(query).reply(&api).await;
                let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
                (response.status().as_u16(), body)
            }
        };
        let (status, newest) = page("/log?limit=2").await;
        assert_eq!(status, 200);
        assert_eq!(newest[0]["seq"], 4);
        assert_eq!(newest[0]["message"], "m4");
        let seqs = |query: &'static str| async move {
            let (_, records) = page(query).await;
            let records = records.as_array().unwrap().clone();
            records
                .iter()
                .map(|r| r["seq"].as_u64().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs("/log?limit=2&before=4").await, [2, 3]);
        assert_eq!(seqs("/log?before=1").await, [0u64; 0]);
        assert_eq!(seqs("/log?limit=2&after=2").await, [3, 4]);
        assert_eq!(seqs("/log?after=1&before=4").await, [2, 3]);
        assert_eq!(seqs("/log?after=5").await, [0u64; 0]);
        assert_eq!(seqs("/log?after=18446744073709551615").await, [0u64; 0]);
        assert_eq!(seqs("/log?after=3&before=2").await, [0u64; 0]);

        for (bad, named) in [
            ("/log?before=0", "before"),
            ("/log?before=-1", "before"),
            ("/log?before=x", "before"),
            ("/log?before=", "before"),
            ("/log?after=-1", "after"),
            ("/log?after=1.5", "after"),
            ("/log?after=", "after"),
            ("/log?wait=10s", "wait: only with after"),
            ("/log?after=1&wait=6m", "wait: must be a duration"),
            ("/log?after=1&wait=soon", "wait: must be a duration"),
        ] {
            let (status, body) = page(bad).await;
            assert_eq!(status, 400, "{bad}");
            assert!(body["error"].as_str().unwrap().starts_with(named), "{body}");
        }
    }

    /// Bounds a wait that must end by itself, so a broken long poll fails instead of hanging.
    async fn within_a_minute<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(60), future)
            .await
            .unwrap_or_else(|_| panic!("{what} did not end"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_read_answers_with_the_first_new_record_of_its_service() {
        let (_dir, store) = store();
        post(&store, "text/plain", b"before the wait").await;
        let api = routes(store.clone()).recover(handle_rejection);
        let waiting = tokio::spawn({
            let api = api.clone();
            async move {
                let response = warp::test::request()
                    .path("/log?after=1&wait=5m&service=wanted")
                    .reply(&api)
                    .await;
                serde_json::from_slice::<serde_json::Value>(response.body()).unwrap()
            }
        });
        // Appends of another service wake the reader, which keeps waiting.
        post(&store, "text/plain", b"not this one").await;
        let wanted = warp::test::request()
            .method("POST")
            .path("/log?service=wanted")
            .body("this one")
            .reply(&api)
            .await;
        assert_eq!(wanted.status(), 201);

        let answer = within_a_minute("the waiting read", waiting).await.unwrap();
        assert_eq!(answer[0]["message"], "this one", "{answer}");
        assert_eq!(answer[0]["seq"], 3, "{answer}");
        assert_eq!(answer.as_array().unwrap().len(), 1, "{answer}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wait_ends_empty_at_its_deadline_or_when_readers_are_closed() {
        let (_dir, store) = store();
        let api = routes(store.clone()).recover(handle_rejection);
        let response = warp::test::request()
            .path("/log?after=0&wait=50ms")
            .reply(&api)
            .await;
        assert_eq!(
            (response.status().as_u16(), response.body().as_ref()),
            (200, &b"[]"[..])
        );

        let waiting = tokio::spawn({
            let api = api.clone();
            async move {
                warp::test::request()
                    .path("/log?after=0&wait=5m")
                    .reply(&api)
                    .await
            }
        });
        // The reader is waiting once it holds a subscription; then shut down.
        while store.subscribed_readers() == 0 {
            tokio::task::yield_now().await;
        }
        store.close_readers();
        let response = within_a_minute("the closed wait", waiting).await.unwrap();
        assert_eq!(
            (response.status().as_u16(), response.body().as_ref()),
            (200, &b"[]"[..])
        );

        // Later waits do not wait at all.
        let response = within_a_minute(
            "a wait after closing",
            warp::test::request()
                .path("/log?after=0&wait=5m")
                .reply(&api),
        )
        .await;
        assert_eq!(response.body().as_ref(), b"[]");
    }
}
