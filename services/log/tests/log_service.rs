//! The real `log-service` binary against a real Consul agent, for what needs a process of its
//! own: SIGTERM and SIGKILL, exit codes, and what the service prints. The API is tested
//! in-process in `tests/api/`.

use std::time::{Duration, Instant};

use discovery::{ConsulSettings, ProviderWatch};
use testkit::{ConsulAgent, ServiceProcess, eventually, get_json, get_json_list, http_client};

const PATIENCE: Duration = Duration::from_secs(15);

/// Starts the binary on a port of its choosing, with its records in `data_dir`.
async fn start_log_service(agent: &ConsulAgent, data_dir: &std::path::Path) -> ServiceProcess {
    start_log_service_logging(agent, data_dir, "info").await
}

async fn start_log_service_logging(
    agent: &ConsulAgent,
    data_dir: &std::path::Path,
    rust_log: &str,
) -> ServiceProcess {
    ServiceProcess::spawn_on_any_port(
        env!("CARGO_BIN_EXE_log-service").as_ref(),
        &["--data-dir".into(), data_dir.display().to_string()],
        &[
            ("CONSUL_HTTP_ADDR", agent.http_addr()),
            ("RUST_LOG", rust_log.into()),
        ],
    )
    .await
}

async fn messages(service: &ServiceProcess) -> Vec<String> {
    get_json_list(&format!("{}/log?limit=1000", service.base_url()))
        .await
        .iter()
        .map(|r| r["message"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_registers_with_a_passing_check_and_sigterm_deregisters_and_exits_0() {
    let agent = ConsulAgent::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut service = start_log_service(&agent, data.path()).await;
    let port = service.addr().port();
    let expected_id = format!("log-127.0.0.1-{port}");

    let instance = eventually("listed as passing", PATIENCE, || async {
        agent.passing_instances("log").await.into_iter().next()
    })
    .await;
    assert_eq!(instance.id, expected_id);
    assert_eq!(instance.address, format!("127.0.0.1:{port}"));
    assert_eq!(
        agent.check_status(&expected_id).await.as_deref(),
        Some("passing")
    );

    service.sigterm();
    let status = service.wait_exit(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "{}", service.output());
    assert!(
        !agent.agent_services().await.contains_key(&expected_id),
        "deregistered on SIGTERM"
    );
    assert!(service.output().contains("deregistered from Consul"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_the_check_goes_critical_and_watchers_drop_the_instance() {
    let agent = ConsulAgent::start().await;
    let data = tempfile::tempdir().unwrap();
    let watch = ProviderWatch::spawn(&ConsulSettings::local(agent.http_addr()), "log");
    let mut service = start_log_service(&agent, data.path()).await;
    let port = service.addr().port();
    eventually("watched", PATIENCE, || async {
        (watch.current().providers.len() == 1).then_some(())
    })
    .await;

    service.sigkill();
    let killed = Instant::now();
    eventually(
        "the watcher dropped the killed instance",
        PATIENCE,
        || async { watch.current().providers.is_empty().then_some(()) },
    )
    .await;
    eprintln!(
        "SIGKILL to dropped by the watcher: {} ms",
        killed.elapsed().as_millis()
    );
    assert_eq!(
        agent
            .check_status(&format!("log-127.0.0.1-{port}"))
            .await
            .as_deref(),
        Some("critical"),
        "still registered, its check critical, until DeregisterCriticalServiceAfter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_acknowledged_durably_and_survive_a_restart() {
    let agent = ConsulAgent::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut service = start_log_service(&agent, data.path()).await;
    let client = http_client();

    // As in the original course: curl -d 'hello' localhost:4000/log
    let response = client
        .post(format!("{}/log", service.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let batch = serde_json::json!({"records": [
        {"service": "grading", "level": "warn", "message": "two\nlines"},
        {"service": "portal", "message": "third"}
    ]});
    let response = client
        .post(format!("{}/log", service.base_url()))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["stored"],
        2
    );

    // Acknowledged means on disk: one line per record, whatever the message held.
    let file = std::fs::read_to_string(data.path().join("records.jsonl")).unwrap();
    assert_eq!(file.lines().count(), 3, "{file}");

    service.sigkill();
    let service = start_log_service(&agent, data.path()).await;
    assert_eq!(messages(&service).await, ["hello", "two\nlines", "third"]);

    let only_grading = get_json_list(&format!("{}/log?service=grading", service.base_url())).await;
    assert_eq!(only_grading.len(), 1);
    assert_eq!(only_grading[0]["level"], "warn");
    testkit::assert_head_answers_as_get(&format!("{}/log?limit=2", service.base_url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_and_malformed_connections_are_counted_not_logged_as_errors() {
    use tokio::io::AsyncWriteExt;
    let agent = ConsulAgent::start().await;
    let data = tempfile::tempdir().unwrap();
    let service = start_log_service(&agent, data.path()).await;
    let client_errors = || async {
        let counts = get_json(&format!("{}/status/connections", service.base_url())).await;
        counts["client_errors"].as_u64().unwrap()
    };
    let before = client_errors().await;
    let attempts: [&[u8]; 3] = [
        // A body cut short, a head cut short, and junk.
        b"POST /log HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100\r\n\r\nhalf",
        b"GET /log HTTP/1.1\r\nhost",
        b"\x16\x03\x01 not http at all\r\n\r\n",
    ];
    for attempt in attempts.iter().cycle().take(30) {
        let mut stream = tokio::net::TcpStream::connect(service.addr())
            .await
            .unwrap();
        stream.write_all(attempt).await.unwrap();
        // Give the server time to read what was sent before the client goes away.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counted = eventually("the client errors counted", PATIENCE, || async {
        let counted = client_errors().await - before;
        (counted >= 30).then_some(counted)
    })
    .await;
    assert_eq!(counted, 30);
    let output = service.output();
    assert!(!output.contains("ERROR"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_the_same_data_dir_refuses_to_start() {
    let agent = ConsulAgent::start().await;
    let data = tempfile::tempdir().unwrap();
    let _first = start_log_service(&agent, data.path()).await;
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_log-service"))
        .args(["--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data.path())
        .env("CONSUL_HTTP_ADDR", agent.http_addr())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_reader_gets_the_next_record_and_sigterm_ends_a_wait_at_once() {
    let agent = ConsulAgent::start().await;
    let data = tempfile::tempdir().unwrap();
    // At debug level the service says when a reader starts waiting.
    let mut service =
        start_log_service_logging(&agent, data.path(), "info,log_service=debug").await;
    let waiting_readers = |service: &ServiceProcess| {
        service
            .output()
            .matches("reader waiting for new records")
            .count()
    };
    let client = http_client();
    let base = service.base_url();
    let newest = get_json_list(&format!("{base}/log?limit=1")).await;
    let after = newest.last().map_or(0, |r| r["seq"].as_u64().unwrap());

    // Follow the log as a script would: wait for whatever comes after the newest record.
    let follow = |after: u64| {
        let request = client.get(format!("{base}/log?after={after}&wait=5m&service=demo"));
        tokio::spawn(async move { request.send().await.unwrap() })
    };
    let waiting = follow(after);
    let response = client
        .post(format!("{base}/log?service=demo"))
        .body("news")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let answer: Vec<serde_json::Value> = waiting.await.unwrap().json().await.unwrap();
    assert_eq!(answer.len(), 1, "{answer:?}");
    assert_eq!(answer[0]["message"], "news");

    // A reader still waiting when the service is stopped gets an empty answer, and the
    // service drains instead of giving up on the open connection.
    let seen = answer[0]["seq"].as_u64().unwrap();
    let waiting = follow(seen);
    eventually("the second reader waits", PATIENCE, || async {
        (waiting_readers(&service) == 2).then_some(())
    })
    .await;
    service.sigterm();
    let response = waiting.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "[]");
    let status = service.wait_exit(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "{}", service.output());
    let output = service.output();
    assert!(output.contains("drained; bye"), "{output}");
    assert!(!output.contains("connections still open"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_drops_a_long_poll_is_not_an_error_in_the_log() {
    let agent = ConsulAgent::start().await;
    let data = tempfile::tempdir().unwrap();
    let service = start_log_service(&agent, data.path()).await;
    // Three long polls the client gives up on after 200 ms, as `curl` stopped with Ctrl-C does.
    for _ in 0..3 {
        let poll = http_client()
            .get(format!("{}/log?after=0&wait=30s", service.base_url()))
            .timeout(Duration::from_millis(200))
            .send()
            .await;
        assert!(poll.is_err(), "the poll waits: nothing was stored");
    }
    // Something logged after the hang-ups, so their events (if any) are in the output by then.
    let stored = http_client()
        .post(format!("{}/log", service.base_url()))
        .body("after the hang-ups")
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201);
    let output = service.output();
    assert!(!output.contains("ERROR"), "{output}");
    assert!(!output.contains("IncompleteMessage"), "{output}");
}

/// POSTs `batch` with `Idempotency-Key: key`; the status and the answer's `stored`.
async fn post_keyed(service: &ServiceProcess, key: &str, batch: &serde_json::Value) -> (u16, u64) {
    let response = http_client()
        .post(format!("{}/log", service.base_url()))
        .header("idempotency-key", key)
        .json(batch)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let answer: serde_json::Value = response.json().await.unwrap();
    (status, answer["stored"].as_u64().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_again_with_its_key_is_stored_once_also_after_a_restart() {
    let agent = ConsulAgent::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut service = start_log_service(&agent, data.path()).await;
    let batch = serde_json::json!({"records": [
        {"service": "grading", "message": "first"},
        {"service": "grading", "message": "second"}
    ]});
    let key = "5f0c6e1d9a3b4c7e8f9a0b1c2d3e4f50";

    // The shipper's case: the answer was lost, the same batch comes again with its key.
    assert_eq!(post_keyed(&service, key, &batch).await, (201, 2));
    assert_eq!(post_keyed(&service, key, &batch).await, (201, 2));
    assert_eq!(messages(&service).await, ["first", "second"]);

    // After a restart on the same data the key is still known.
    service.sigkill();
    let service = start_log_service(&agent, data.path()).await;
    assert_eq!(post_keyed(&service, key, &batch).await, (201, 2));
    let file = std::fs::read_to_string(data.path().join("records.jsonl")).unwrap();
    assert_eq!(file.lines().count(), 2, "{file}");
    // The key is the store's business, not part of a record.
    let records = get_json_list(&format!("{}/log", service.base_url())).await;
    assert_eq!(
        records
            .iter()
            .map(|r| r["message"].clone())
            .collect::<Vec<_>>(),
        ["first", "second"]
    );
    assert!(
        records.iter().all(|r| r.get("batch_key").is_none()),
        "{records:?}"
    );

    // Another key is another batch; a key the rule refuses is a 400.
    assert_eq!(post_keyed(&service, "another-key", &batch).await, (201, 2));
    assert_eq!(messages(&service).await.len(), 4);
    assert_eq!(post_keyed(&service, "no spaces", &batch).await.0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_fails_answers_an_opaque_500_and_the_cause_is_logged() {
    let agent = ConsulAgent::start().await;
    let data = tempfile::tempdir().unwrap();
    let service = start_log_service(&agent, data.path()).await;
    let client = http_client();
    // More records than the service keeps in memory, so the oldest are read from the file.
    for batch in 0..11 {
        let records: Vec<_> = (0..1000)
            .map(|i| serde_json::json!({"service": "busy", "message": format!("record {batch} {i}")}))
            .collect();
        let response = client
            .post(format!("{}/log", service.base_url()))
            .json(&serde_json::json!({ "records": records }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    // Damage the fifth record in place, as a disk fault or a hand edit would.
    let path = data.path().join("records.jsonl");
    let mut bytes = std::fs::read(&path).unwrap();
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(
            bytes
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(at, _)| at + 1),
        )
        .collect();
    bytes[line_starts[4]..line_starts[5] - 1].fill(b'x');
    std::fs::write(&path, &bytes).unwrap();

    let response = client
        .get(format!("{}/log?before=10&limit=5", service.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let body = response.text().await.unwrap();
    assert_eq!(body, r#"{"error":"internal error"}"#);
    let output = service.output();
    assert!(
        output.contains("records.jsonl") && output.contains("record 5"),
        "the cause is logged: {output}"
    );
}
