//! The whole gradebook end to end: real binaries, a real Consul agent, real HTTP and DNS.

use std::time::Instant;

use serde_json::json;
use system_tests::{Gradebook, PATIENCE, client, requests_served};
use testkit::{FormToken, eventually, free_port};

async fn portal_home(portal: &testkit::ServiceProcess) -> (u16, String) {
    let response = client()
        .get(format!("{}/", portal.base_url()))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_started_before_grading_serves_a_503_page_then_the_real_page_by_itself() {
    let gradebook = Gradebook::new().await;
    let portal = gradebook.start_portal().await;

    let response = client()
        .get(format!("{}/", portal.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = response.text().await.unwrap();
    assert!(page.contains("grading service is unavailable"), "{page}");

    let _grading = gradebook.start_grading("grading", free_port()).await;
    let serving = Instant::now();
    let page = eventually("the portal shows the students", PATIENCE, || async {
        let (status, page) = portal_home(&portal).await;
        (status == 200).then_some(page)
    })
    .await;
    eprintln!(
        "real page {} ms after grading answered /health",
        serving.elapsed().as_millis()
    );
    assert!(page.contains("Tony Stark"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_grading_instances_share_the_portal_traffic_and_a_sigkill_fails_no_request() {
    let gradebook = Gradebook::new().await;
    let first = gradebook.start_grading("grading-1", free_port()).await;
    let mut second = gradebook.start_grading("grading-2", free_port()).await;
    let portal = gradebook.start_portal().await;
    eventually("both grading instances passing", PATIENCE, || async {
        (gradebook.consul.passing_instances("grading").await.len() == 2).then_some(())
    })
    .await;

    // The portal's watch is told in milliseconds; give its page a moment to see both.
    eventually("portal status lists both instances", PATIENCE, || async {
        let page = client()
            .get(format!("{}/status", portal.base_url()))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (page.contains(&first.addr().to_string()) && page.contains(&second.addr().to_string()))
            .then_some(())
    })
    .await;
    for _ in 0..100 {
        assert_eq!(portal_home(&portal).await.0, 200);
    }
    let (by_first, by_second) = (
        requests_served(&first, "/students"),
        requests_served(&second, "/students"),
    );
    eprintln!("100 portal pages served by grading as {by_first} + {by_second}");
    assert!(
        by_first > 0 && by_second > 0,
        "both instances get traffic: {by_first} + {by_second}"
    );

    // SIGKILL one while requests keep coming, in two concurrent streams.
    let load = |n: usize| {
        let url = format!("{}/", portal.base_url());
        tokio::spawn(async move {
            let client = client();
            let mut failed = Vec::new();
            for _ in 0..n {
                let status = client.get(&url).send().await.map(|r| r.status().as_u16());
                if status.as_ref().ok() != Some(&200) {
                    failed.push(format!("{status:?}"));
                }
            }
            failed
        })
    };
    let streams = [load(300), load(300)];
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    second.sigkill();
    let mut failed = Vec::new();
    for stream in streams {
        failed.extend(stream.await.unwrap());
    }
    eprintln!(
        "600 requests around a SIGKILL of one grading instance: {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "requests failed: {failed:?}");
    for _ in 0..50 {
        assert_eq!(portal_home(&portal).await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_reach_the_log_service_including_those_made_while_it_was_down() {
    let gradebook = Gradebook::new().await;
    let log_port = free_port();
    // Grading and the portal start before any log instance exists.
    let grading = gradebook.start_grading("grading", free_port()).await;
    let portal = gradebook.start_portal().await;
    let mut log = gradebook.start_log("log", log_port).await;

    let has = |service: &'static str, needle: &'static str| {
        let url = format!("http://127.0.0.1:{log_port}/log?service={service}&limit=10000");
        async move {
            let records: Vec<serde_json::Value> =
                client().get(&url).send().await.ok()?.json().await.ok()?;
            records
                .iter()
                .any(|r| r["message"].as_str().is_some_and(|m| m.contains(needle)))
                .then_some(())
        }
    };
    eventually("grading's start-up records in the log", PATIENCE, || {
        has("grading", "registered with Consul")
    })
    .await;
    eventually("the portal's start-up records in the log", PATIENCE, || {
        has("portal", "registered with Consul")
    })
    .await;

    // Kill the log service, make grading log something, then bring log back.
    log.sigkill();
    let response = client()
        .post(format!("{}/students", grading.base_url()))
        .json(&json!({"firstName": "Wanda", "lastName": "Maximoff"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    drop(portal);
    let _log = gradebook.start_log("log", log_port).await;
    eventually(
        "the record made while log was down arrives",
        PATIENCE,
        || has("grading", "student added"),
    )
    .await;
}

/// The number of the newest record a log instance holds (0 when it holds none).
async fn newest_record(log: &testkit::ServiceProcess) -> u64 {
    let records: Vec<serde_json::Value> = client()
        .get(format!("{}/log?limit=1", log.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    records.first().map_or(0, |r| r["seq"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_instance_shipping_at_debug_level_ships_only_its_own_events() {
    let gradebook = Gradebook::new().await;
    let log = gradebook.start_log("log", free_port()).await;
    let dir = gradebook.data_dir("grading").display().to_string();
    let _grading = gradebook
        .start_with(
            "grading-service",
            free_port(),
            &["--data-dir".to_owned(), dir],
            &[("GRADEBOOK_SHIP_LEVEL", "debug".to_owned())],
        )
        .await;
    let url = format!("{}/log?service=grading&limit=1000", log.base_url());
    eventually(
        "grading's start-up records in the log",
        PATIENCE,
        || async {
            let records: Vec<serde_json::Value> =
                client().get(&url).send().await.ok()?.json().await.ok()?;
            records
                .iter()
                .any(|r| {
                    r["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("registered with Consul"))
                })
                .then_some(())
        },
    )
    .await;

    // Idle, grading still does things worth a debug record: the agent's health check each
    // second is one request. Each shipment's own events (the HTTP client's "reuse idle
    // connection", ...) would be thousands a second, each shipped in the next shipment.
    let before = newest_record(&log).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let shipped = newest_record(&log).await - before;
    assert!(
        shipped <= 30,
        "an idle grading shipped {shipped} records in 3 s"
    );
    let records: Vec<serde_json::Value> = client()
        .get(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The watch reports the log instance it found; connections to it are the shipments'.
    let log_addr = log.addr().to_string();
    let about_shipping: Vec<_> = records
        .iter()
        .filter_map(|r| r["message"].as_str())
        .filter(|m| m.contains(&log_addr) && m.contains("connection"))
        .collect();
    assert!(
        about_shipping.is_empty(),
        "records about shipments were shipped: {about_shipping:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_student_named_with_html_is_shown_escaped() {
    let gradebook = Gradebook::new().await;
    let grading = gradebook.start_grading("grading", free_port()).await;
    let portal = gradebook.start_portal().await;
    let response = client()
        .post(format!("{}/students", grading.base_url()))
        .json(&json!({"firstName": "<script>alert(1)</script>", "lastName": "O'Brien & Sons"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();

    for path in ["/".to_owned(), location] {
        let page = eventually("the portal page", PATIENCE, || async {
            let response = client()
                .get(format!("{}{path}", portal.base_url()))
                .send()
                .await
                .ok()?;
            (response.status() == 200).then_some(response.text().await.ok()?)
        })
        .await;
        assert!(!page.contains("<script>alert"), "raw script on {path}");
        assert!(
            page.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
            "escaped name on {path}:\n{page}"
        );
        assert!(page.contains("O&#39;Brien &#38; Sons"), "{page}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_dns_answers_srv_queries_for_every_instance_and_by_tag() {
    let gradebook = Gradebook::new().await;
    let ports = [free_port(), free_port()];
    let _first = gradebook.start_grading("grading-1", ports[0]).await;
    let _second = gradebook.start_grading("grading-2", ports[1]).await;
    // The ports of the SRV answers ("priority weight port target"), sorted.
    let dig = |name: &str| {
        let mut ports: Vec<u16> = gradebook
            .consul
            .dig(name, "SRV")
            .lines()
            .filter_map(|line| line.split_whitespace().nth(2)?.parse().ok())
            .collect();
        ports.sort();
        ports
    };
    let mut expected = ports.to_vec();
    expected.sort();
    for name in ["grading.service.consul", "api.grading.service.consul"] {
        eventually(
            &format!("dig {name} SRV lists both ports"),
            PATIENCE,
            || async { (dig(name) == expected).then_some(()) },
        )
        .await;
    }
    assert!(
        dig("web.grading.service.consul").is_empty(),
        "only tagged instances answer a tag query"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logs_page_pages_back_to_the_oldest_record() {
    let gradebook = Gradebook::new().await;
    let log = gradebook.start_log("log", free_port()).await;
    let portal = gradebook.start_portal().await;
    let records: Vec<_> = (1..=150)
        .map(|i| json!({"service": "demo", "message": format!("demo record {i}")}))
        .collect();
    let response = client()
        .post(format!("{}/log", log.base_url()))
        .json(&json!({ "records": records }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    let page = |path: String| {
        let url = format!("{}{path}", portal.base_url());
        async move {
            let response = client().get(url).send().await.ok()?;
            (response.status() == 200).then_some(response.text().await.ok()?)
        }
    };
    let newest = eventually("the portal shows the log", PATIENCE, || {
        page("/logs?service=demo".to_owned())
    })
    .await;
    assert_eq!(newest.matches("demo record ").count(), 100, "{newest}");
    assert!(newest.contains("demo record 150<"), "{newest}");
    assert!(!newest.contains("demo record 50<"), "{newest}");
    // The link carries the filter; in HTML the & is written &amp; (askama escapes the href).
    let (_, rest) = newest
        .split_once(r#"<a href="/logs?service=demo&#38;before="#)
        .unwrap_or_else(|| panic!("no link to older records: {newest}"));
    // One position per log instance, in that instance's numbering (URL-encoded: `ID:SEQ`).
    let before = rest.split('"').next().unwrap();
    let (instance, seq) = before
        .rsplit_once("%3A")
        .unwrap_or_else(|| panic!("{before}"));
    assert!(instance.starts_with("log-"), "{before}");
    assert!(seq.parse::<u64>().is_ok_and(|seq| seq > 1), "{before}");

    let older = page(format!("/logs?service=demo&before={before}"))
        .await
        .unwrap();
    assert_eq!(older.matches("demo record ").count(), 50, "{older}");
    assert!(older.contains("demo record 1<"), "{older}");
    assert!(older.contains("demo record 50<"), "{older}");
    assert!(!older.contains("Older records"), "{older}");
    assert!(
        older.contains(r#"<a href="/logs?service=demo">Newest records</a>"#),
        "{older}"
    );
}

/// The `/students/N` links of a students page, in order.
fn student_links(page: &str) -> Vec<u64> {
    page.split(r#"<td><a href="/students/"#)
        .skip(1)
        .filter_map(|rest| rest.split('"').next()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_home_page_shows_students_a_page_at_a_time_and_refuses_a_bad_page() {
    let gradebook = Gradebook::new().await;
    let grading = gradebook.start_grading("grading", free_port()).await;
    let portal = gradebook.start_portal().await;
    // 4 demo students and 96 more: two full pages of 50, so the last page is full and must
    // still not link to a next one.
    for n in 5..=100 {
        let response = client()
            .post(format!("{}/students", grading.base_url()))
            .json(&json!({"firstName": "Student", "lastName": format!("Number {n}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let get = |path: &'static str| {
        let url = format!("{}{path}", portal.base_url());
        async move {
            let response = client().get(url).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };

    let (status, first) = get("/").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(student_links(&first), (1..=50).collect::<Vec<_>>());
    assert!(
        first.contains(r#"<a href="/?after=50" rel="next">Next students</a>"#),
        "{first}"
    );
    assert!(!first.contains("First students"), "{first}");

    let (status, last) = get("/?after=50").await;
    assert_eq!(status, 200, "{last}");
    assert_eq!(student_links(&last), (51..=100).collect::<Vec<_>>());
    assert!(last.contains("Number 100"), "{last}");
    assert!(last.contains(r#"<a href="/">First students</a>"#), "{last}");
    assert!(
        !last.contains("rel=\"next\""),
        "the last page links to no next: {last}"
    );
    // The form to add a student is on every page.
    assert!(last.contains(r#"action="/students""#), "{last}");

    let (status, past) = get("/?after=100").await;
    assert_eq!(status, 200, "{past}");
    assert!(student_links(&past).is_empty(), "{past}");
    assert!(past.contains("No more students."), "{past}");

    for bad in [
        "/?after=abc",
        "/?after=0",
        "/?after=-1",
        "/?after=07",
        "/?after=1e3",
    ] {
        let (status, page) = get(bad).await;
        assert_eq!(status, 400, "{bad}: {page}");
        assert!(
            page.contains("after: the id of the last student of the previous page"),
            "{bad}: {page}"
        );
    }
}

/// The records of the log instance at `log` that belong to `trace`.
async fn records_of_trace(log: &testkit::ServiceProcess, trace: &str) -> Vec<serde_json::Value> {
    client()
        .get(format!("{}/log?trace={trace}", log.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Whether `records` hold one of `service` whose message starts with `message`.
fn has_record(records: &[serde_json::Value], service: &str, message: &str) -> bool {
    records.iter().any(|r| {
        r["service"] == service
            && r["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_trace_runs_through_the_portal_and_grading_into_the_log_and_its_page() {
    let gradebook = Gradebook::new().await;
    let log = gradebook.start_log("log", free_port()).await;
    let grading = gradebook.start_grading("grading", free_port()).await;
    let portal = gradebook.start_portal().await;
    let http = client();
    let student_page = format!("{}/students/1", portal.base_url());
    eventually("the portal sees grading", PATIENCE, || async {
        let response = http.get(&student_page).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;

    // A grade recorded through the portal's form, by a caller with a trace of its own.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    let form = FormToken::fetch(&http, &student_page).await.unwrap();
    let sent = form
        .post(
            &http,
            &format!("{student_page}/grades"),
            "title=Traced+quiz&type=Quiz&score=88",
        )
        .header("traceparent", &traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 303);
    let answered = sent.headers()["traceparent"].to_str().unwrap();
    assert!(answered.starts_with(&format!("00-{trace}-")), "{answered}");
    assert_ne!(
        answered, traceparent,
        "the portal answers with a span of its own"
    );

    // The portal's record and grading's, each shipped on its own, carry the caller's trace id:
    // grading's only if the portal sent the trace on with its call.
    let records = eventually(
        "both services' records of the request",
        PATIENCE,
        || async {
            let records = records_of_trace(&log, trace).await;
            (has_record(&records, "portal", "grade recorded through the form")
                && has_record(&records, "grading", "grade added"))
            .then_some(records)
        },
    )
    .await;
    assert!(
        records.iter().all(|r| r["trace_id"] == trace),
        "{records:?}"
    );

    // The portal's logs page of that trace shows them, each linked to the trace, and nothing else.
    let page = http
        .get(format!("{}/logs?trace={trace}", portal.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("grade recorded through the form"), "{page}");
    assert!(page.contains(">grade added<"), "{page}");
    assert_eq!(
        page.matches(&format!(r#"<a href="/logs?trace={trace}">{trace}</a>"#))
            .count(),
        records.len(),
        "{page}"
    );
    assert!(!page.contains("registered with Consul"), "{page}");

    // Grading and log take a trace from a direct caller as well.
    let direct = "0af7651916cd43dd8448eb211c80319c";
    let response = http
        .post(format!("{}/students", grading.base_url()))
        .header("traceparent", format!("00-{direct}-b7ad6b7169203331-01"))
        .json(&json!({"firstName": "Direct", "lastName": "Caller"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert!(
        response.headers()["traceparent"]
            .to_str()
            .unwrap()
            .starts_with(&format!("00-{direct}-"))
    );
    let response = http
        .post(format!("{}/log?service=curl", log.base_url()))
        .header("traceparent", format!("00-{direct}-b7ad6b7169203332-01"))
        .body("hello from the same trace")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    eventually(
        "grading's and the caller's records of the direct trace",
        PATIENCE,
        || async {
            let records = records_of_trace(&log, direct).await;
            (has_record(&records, "grading", "student added")
                && has_record(&records, "curl", "hello from the same trace"))
            .then_some(())
        },
    )
    .await;
}
