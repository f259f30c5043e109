//! The log service's API, in-process: the real app on port 0 (see `helpers::spawn_app`) against
//! a real Consul dev agent. What needs a process of its own (signals, SIGKILL, exit codes, what
//! the service prints) is in `tests/log_service.rs`.

mod helpers;

use testkit::{ConsulAgent, RunningApp, get_json_list, http_client};

use helpers::spawn_app;

/// Stores `count` records made by `record(i)` for i in 0..count, in batches of 1,000 (the most
/// one POST takes).
async fn post_records(
    service: &RunningApp,
    count: usize,
    record: impl Fn(usize) -> serde_json::Value,
) {
    let client = http_client();
    for start in (0..count).step_by(1000) {
        let records: Vec<_> = (start..(start + 1000).min(count)).map(&record).collect();
        let response = client
            .post(format!("{}/log", service.base_url()))
            .json(&serde_json::json!({ "records": records }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
}

/// Pages through `GET /log` with `before` from the newest record to the first.
async fn every_record_paging_back(service: &RunningApp) -> Vec<serde_json::Value> {
    let mut pages = Vec::new();
    let mut url = format!("{}/log?limit=4000", service.base_url());
    loop {
        let page = get_json_list(&url).await;
        let Some(oldest) = page.first() else { break };
        url = format!(
            "{}/log?limit=4000&before={}",
            service.base_url(),
            oldest["seq"]
        );
        pages.push(page);
    }
    pages.into_iter().rev().flatten().collect()
}

/// Follows `GET /log` with `after` from the first record to the newest, as a reader tailing the
/// log would.
async fn every_record_paging_forward(service: &RunningApp) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let url = format!("{}/log?limit=4000&after={after}", service.base_url());
        let page = get_json_list(&url).await;
        let Some(newest) = page.last() else { break };
        after = newest["seq"].as_u64().unwrap();
        all.extend(page);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_older_than_memory_holds_are_read_from_the_file() {
    let agent = ConsulAgent::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut service = spawn_app(&agent, data.path()).await;
    // 10,500 records, 500 more than the service keeps in memory; the first three from "early".
    post_records(&service, 10_500, |i| {
        let service = if i < 3 { "early" } else { "busy" };
        serde_json::json!({"service": service, "message": format!("record {i}")})
    })
    .await;

    for _run in ["before a restart", "after one"] {
        let early: Vec<String> =
            get_json_list(&format!("{}/log?service=early", service.base_url()))
                .await
                .iter()
                .map(|r| format!("{} {}", r["seq"], r["message"]))
                .collect();
        assert_eq!(
            early,
            [r#"1 "record 0""#, r#"2 "record 1""#, r#"3 "record 2""#]
        );

        for all in [
            every_record_paging_back(&service).await,
            every_record_paging_forward(&service).await,
        ] {
            assert_eq!(all.len(), 10_500);
            for (i, record) in all.iter().enumerate() {
                assert_eq!(record["seq"], i as u64 + 1);
                assert_eq!(record["message"], format!("record {i}"));
            }
        }

        service.stop().await;
        service = spawn_app(&agent, data.path()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_is_found_in_memory_and_in_the_file_and_a_caller_traceparent_joins_it() {
    let agent = ConsulAgent::start().await;
    let data = tempfile::tempdir().unwrap();
    let service = spawn_app(&agent, data.path()).await;
    let client = http_client();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    // 10,500 records, 500 more than memory holds: the first of the trace is read from the file.
    post_records(&service, 10_500, |i| {
        let mut record =
            serde_json::json!({"service": "grading", "message": format!("record {i}")});
        if i == 1 || i == 10_400 {
            record["trace_id"] = trace.into();
        }
        record
    })
    .await;
    // A caller's traceparent puts its text record in the trace, and the answer is in it too.
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    let response = client
        .post(format!("{}/log?service=curl", service.base_url()))
        .header("traceparent", &traceparent)
        .body("hello from a traced caller")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let answered = response.headers()["traceparent"].to_str().unwrap();
    assert!(answered.starts_with(&format!("00-{trace}-")), "{answered}");
    assert_ne!(answered, traceparent, "a span of its own");

    let found = get_json_list(&format!("{}/log?trace={trace}", service.base_url())).await;
    let messages: Vec<_> = found
        .iter()
        .map(|r| r["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        ["record 1", "record 10400", "hello from a traced caller"]
    );
    assert!(found.iter().all(|r| r["trace_id"] == trace), "{found:?}");

    for bad in [
        "4BF92F3577B34DA6A3CE929D0E0E4736",
        "00000000000000000000000000000000",
        "x",
    ] {
        let response = client
            .get(format!("{}/log?trace={bad}", service.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().starts_with("trace:"),
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_posts_and_every_stored_record_in_the_fsync_batches() {
    let agent = ConsulAgent::start().await;
    let data = tempfile::tempdir().unwrap();
    let service = spawn_app(&agent, data.path()).await;
    let base = service.base_url();
    let client = http_client();
    // Four posts at once, so some may share an fsync; then one batch of three records.
    let posts: Vec<_> = (0..4)
        .map(|i| {
            let post = client
                .post(format!("{base}/log?service=metrics"))
                .body(format!("note {i}"))
                .send();
            tokio::spawn(post)
        })
        .collect();
    for post in posts {
        assert_eq!(post.await.unwrap().unwrap().status(), 201);
    }
    let records: Vec<_> = (0..3)
        .map(|i| serde_json::json!({"service": "metrics", "message": format!("batched {i}")}))
        .collect();
    let batch = client
        .post(format!("{base}/log"))
        .json(&serde_json::json!({ "records": records }))
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), 201);

    let scrape = testkit::Scrape::fetch(&base).await;
    let posts = [("route", "/log"), ("method", "POST"), ("status", "201")];
    assert_eq!(scrape.value("gradebook_http_requests_total", &posts), 5.0);
    // Every record stored went through exactly one fsync'd group.
    assert_eq!(
        scrape.value("gradebook_log_fsync_batch_records_sum", &[]),
        7.0
    );
    let fsyncs = scrape.value("gradebook_log_fsync_duration_seconds_count", &[]);
    assert!((2.0..=5.0).contains(&fsyncs), "{fsyncs} fsyncs");
    assert_eq!(
        scrape.value("gradebook_log_fsync_batch_records_count", &[]),
        fsyncs
    );
    service.stop().await;
}
