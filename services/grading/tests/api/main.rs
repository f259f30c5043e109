//! grading's API, in-process: the real app on port 0 (see `helpers::spawn_app`) against a real
//! Consul dev agent, on SQLite and on PostgreSQL. What needs a process of its own (SIGTERM,
//! exit codes, `--help`) is in `tests/process.rs`.

mod helpers;

use std::time::Duration;

use serde_json::{Value, json};
use testkit::{ConsulAgent, eventually, get_json, http_client, post_created};

use helpers::{Database, spawn_app, stop};

/// `on_each_backend!(a, b)` makes tests `sqlite::a`, `postgres::a`, ... out of
/// `async fn a(db: Database)`, so each test is written once and run on both databases.
macro_rules! on_each_backend {
    ($($test:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Database::sqlite()).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    if let Some(db) = super::Database::postgres().await {
                        super::$test(db).await;
                    }
                }
            )+
        }
    };
}

on_each_backend!(
    students_survive_a_restart_and_the_demo_is_seeded_once,
    instances_sharing_a_database_read_each_others_writes_at_once,
);

/// Waits until Consul offers exactly `count` passing grading instances, and returns them.
async fn passing_grading(agent: &ConsulAgent, count: usize) -> Vec<testkit::Instance> {
    eventually(
        &format!("{count} passing grading instance(s)"),
        Duration::from_secs(10),
        || async {
            let instances = agent.passing_instances("grading").await;
            (instances.len() == count).then_some(instances)
        },
    )
    .await
}

async fn students_survive_a_restart_and_the_demo_is_seeded_once(db: Database) {
    let agent = ConsulAgent::start().await;

    let grading = spawn_app(&agent, &db).await;
    let addr = grading.addr();
    let instances = passing_grading(&agent, 1).await;
    assert_eq!(instances[0].address, addr.to_string());
    assert_eq!(instances[0].tags, ["http", "api"]);
    assert_eq!(
        instances[0].id,
        format!("grading-127.0.0.1-{}", addr.port())
    );

    // The `api` tag is what makes the DNS name work: SRV answers "priority weight port target".
    let srv = agent.dig("api.grading.service.consul", "SRV");
    assert_eq!(
        srv.split_whitespace().nth(2),
        Some(addr.port().to_string().as_str()),
        "SRV: {srv:?}"
    );

    let base = grading.base_url();
    let demo_count = get_json(&format!("{base}/students"))
        .await
        .as_array()
        .unwrap()
        .len();
    assert!(demo_count >= 3, "expected demo students, got {demo_count}");
    testkit::assert_head_answers_as_get(&format!("{base}/students")).await;
    testkit::assert_head_answers_as_get(&format!("{base}/students/1")).await;

    let new_student = json!({"firstName": "Wanda", "lastName": "Maximoff <3"});
    let (student_url, student) = post_created(&format!("{base}/students"), &new_student).await;
    assert_eq!(student_url, format!("/students/{}", student["id"]));
    let new_grade = json!({"title": "Chaos Magic 101", "type": "Test", "score": 99.5});
    let (grade_url, grade) = post_created(&format!("{base}{student_url}/grades"), &new_grade).await;
    assert_eq!(get_json(&format!("{base}{grade_url}")).await, grade);
    stop(&agent, grading).await;

    let grading = spawn_app(&agent, &db).await;
    passing_grading(&agent, 1).await;
    let base = grading.base_url();
    let students = get_json(&format!("{base}/students")).await;
    assert_eq!(
        students.as_array().unwrap().len(),
        demo_count + 1,
        "demo seeded twice? {students}"
    );
    let reread = get_json(&format!("{base}{student_url}")).await;
    assert_eq!(reread["lastName"], "Maximoff <3");
    assert_eq!(reread["grades"], json!([grade]));
    assert_eq!(reread["average"], json!(99.5));
    stop(&agent, grading).await;
}

/// PUTs `body` and returns the answer's JSON, checking it is a 200.
async fn put_ok(url: &str, body: &Value) -> Value {
    let response = http_client().put(url).json(body).send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK, "PUT {url}");
    response.json().await.unwrap()
}

/// DELETEs `url`, checking it is a 204.
async fn delete_ok(url: &str) {
    let response = http_client().delete(url).send().await.unwrap();
    assert_eq!(
        response.status(),
        reqwest::StatusCode::NO_CONTENT,
        "DELETE {url}"
    );
}

/// Two instances on one database, as a teacher would run them behind Consul: whatever one of
/// them acknowledged (a new student, a new grade, a changed grade, a deleted grade), the other
/// serves on the very next read, though SQLite instances keep answers cached. Each instance
/// has its own store, cache and WAL-index map, as in its own process.
async fn instances_sharing_a_database_read_each_others_writes_at_once(db: Database) {
    let agent = ConsulAgent::start().await;
    let one = spawn_app(&agent, &db).await;
    let two = spawn_app(&agent, &db).await;
    passing_grading(&agent, 2).await;
    let instances = [one.base_url(), two.base_url()];

    for round in 0..20 {
        let (writer, reader) = (&instances[round % 2], &instances[(round + 1) % 2]);
        // Read first, so the reader has the student and the list cached before each write.
        let listed = get_json(&format!("{reader}/students")).await;
        let student = json!({"firstName": format!("Round {round}"), "lastName": "Student"});
        let (student_url, added) = post_created(&format!("{writer}/students"), &student).await;
        assert_eq!(
            get_json(&format!("{reader}{student_url}")).await,
            added,
            "round {round}: {reader} did not serve the student {writer} acknowledged"
        );
        let relisted = get_json(&format!("{reader}/students")).await;
        assert_eq!(
            relisted.as_array().map(Vec::len),
            listed.as_array().map(|l| l.len() + 1),
            "round {round}: {reader} served a stale list"
        );

        let before = get_json(&format!("{reader}/students/1")).await;
        let grade = json!({"title": format!("Round {round}"), "type": "Quiz", "score": round});
        let (grade_url, added) = post_created(&format!("{writer}/students/1/grades"), &grade).await;
        let after = get_json(&format!("{reader}/students/1")).await;
        let grades = after["grades"].as_array().unwrap();
        assert_eq!(
            grades.len(),
            before["grades"].as_array().unwrap().len() + 1,
            "round {round}: {reader} did not serve the grade {writer} acknowledged"
        );
        assert_eq!(grades.last(), Some(&added), "round {round}");

        let retake =
            json!({"title": format!("Round {round} retake"), "type": "Quiz", "score": 100});
        let changed = put_ok(&format!("{writer}{grade_url}"), &retake).await;
        let after = get_json(&format!("{reader}/students/1")).await;
        assert_eq!(
            after["grades"].as_array().unwrap().last(),
            Some(&changed),
            "round {round}: {reader} served the grade as it was before the PUT"
        );

        delete_ok(&format!("{writer}{grade_url}")).await;
        let after = get_json(&format!("{reader}/students/1")).await;
        assert_eq!(
            after["grades"], before["grades"],
            "round {round}: {reader} still served the deleted grade"
        );
    }
    one.stop().await;
    stop(&agent, two).await;
}

/// PostgreSQL restarted under a running instance: meanwhile a clear 503 (and a passing health
/// check, since every instance shares the server), then service again without restarting
/// grading, with every grade acknowledged before the restart.
#[tokio::test]
async fn grading_answers_503_while_postgres_restarts_and_recovers_by_itself() {
    let Some(mut db) = Database::postgres().await else {
        return;
    };
    let agent = ConsulAgent::start().await;
    let grading = spawn_app(&agent, &db).await;
    let base = grading.base_url();
    let mut acknowledged = Vec::new();
    for round in 0..3 {
        let grade = json!({"title": format!("Before {round}"), "type": "Test", "score": 90});
        acknowledged.push(
            post_created(&format!("{base}/students/3/grades"), &grade)
                .await
                .1,
        );
    }
    let Database::Postgres(server) = &mut db else {
        unreachable!("a PostgreSQL database")
    };

    server.stop().await;
    let response = http_client()
        .get(format!("{base}/students/3"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let error: Value = response.json().await.unwrap();
    assert_eq!(
        error,
        json!({"error": "database unavailable: try again shortly"})
    );
    let health = http_client()
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        health.status(),
        reqwest::StatusCode::OK,
        "/health is about the process"
    );

    server.start_again().await;
    let natasha = get_json(&format!("{base}/students/3")).await;
    let grades = natasha["grades"].as_array().unwrap();
    assert_eq!(grades[grades.len() - 3..], acknowledged[..]);
    let grade = json!({"title": "After", "type": "Quiz", "score": 75});
    post_created(&format!("{base}/students/3/grades"), &grade).await;
    stop(&agent, grading).await;
}

/// The common ship level in Consul KV reaches grading, its own key overrides it, and a key
/// grading does not know is refused and named in `/status/config`.
#[tokio::test]
async fn the_ship_level_follows_the_common_key_and_its_own_key_overrides_it() {
    let agent = ConsulAgent::start().await;
    let db = Database::sqlite();
    let grading = spawn_app(&agent, &db).await;
    let status_url = format!("{}/status/config", grading.base_url());
    let config_where = |what: &'static str, until: fn(&Value) -> bool| {
        let url = status_url.clone();
        eventually(what, Duration::from_secs(10), move || {
            let url = url.clone();
            async move {
                let config = get_json(&url).await;
                until(&config).then_some(config)
            }
        })
    };

    agent
        .kv_put("gradebook/config/common/ship_level", "debug")
        .await;
    let config = config_where("the common level applies", |c| {
        c["settings"]["ship_level"]["value"] == "debug"
    })
    .await;
    assert_eq!(config["settings"]["ship_level"]["from"], "kv-common");
    assert_eq!(config["source"], "consul-kv");

    agent
        .kv_put("gradebook/config/grading/ship_level", "warn")
        .await;
    agent
        .kv_put("gradebook/config/grading/students_per_page", "5")
        .await;
    let config = config_where("grading's own level wins", |c| {
        c["settings"]["ship_level"]["value"] == "warn"
            && c["last_refused"]["key"] == "gradebook/config/grading/students_per_page"
    })
    .await;
    assert_eq!(config["settings"]["ship_level"]["from"], "kv-service");
    let health = get_json(&format!("{}/health", grading.base_url())).await;
    assert_eq!(health["config"]["source"], "consul-kv", "{health}");
    assert_eq!(health["config"]["index"], config["index"], "{health}");

    agent.kv_delete("gradebook/config/grading/ship_level").await;
    config_where("back to the common level", |c| {
        c["settings"]["ship_level"]["value"] == "debug"
    })
    .await;
    stop(&agent, grading).await;
}

/// Every route label in a scrape of grading's `/metrics`.
fn route_labels(scrape: &testkit::Scrape) -> std::collections::BTreeSet<String> {
    scrape
        .find("gradebook_http_requests_total", &[])
        .map(|s| s.labels["route"].clone())
        .collect()
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_made_up_paths_add_no_series() {
    let agent = ConsulAgent::start().await;
    let db = Database::sqlite();
    let grading = spawn_app(&agent, &db).await;
    let base = grading.base_url();
    let client = http_client();
    let status_of = |path: String| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };

    for id in [1, 2, 3, 1, 2] {
        assert_eq!(status_of(format!("/students/{id}")).await, 200);
    }
    for _ in 0..2 {
        assert_eq!(status_of("/students/9999".to_owned()).await, 404);
    }
    let scrape = testkit::Scrape::fetch(&base).await;
    let one_student = |status| {
        [
            ("route", "/students/{id}"),
            ("method", "GET"),
            ("status", status),
        ]
    };
    assert_eq!(
        scrape.value("gradebook_http_requests_total", &one_student("200")),
        5.0
    );
    assert_eq!(
        scrape.value("gradebook_http_requests_total", &one_student("404")),
        2.0
    );
    assert_eq!(
        scrape.value(
            "gradebook_http_request_duration_seconds_count",
            &one_student("200")
        ),
        5.0
    );
    let mut all_buckets = one_student("200").to_vec();
    all_buckets.push(("le", "+Inf"));
    assert_eq!(
        scrape.value(
            "gradebook_http_request_duration_seconds_bucket",
            &all_buckets
        ),
        5.0
    );
    assert!(
        scrape.value(
            "gradebook_http_request_duration_seconds_sum",
            &one_student("200")
        ) > 0.0
    );

    // Consul's checks of /health make a series of their own: there before the floods.
    eventually("Consul's check counted", Duration::from_secs(5), || async {
        let scrape = testkit::Scrape::fetch(&base).await;
        route_labels(&scrape).contains("/health").then_some(())
    })
    .await;

    // A client making up paths: each flood counts under `other`, and the second flood, all new
    // paths again, adds not one series.
    for i in 0..100 {
        status_of(format!("/made-up-{i}")).await;
        status_of(format!("/students/{i}/grades/{i}/x{i}")).await;
    }
    let after_first = testkit::Scrape::fetch(&base).await;
    for i in 100..300 {
        status_of(format!("/another/{i}/path")).await;
        status_of(format!("/students/{i}/{i}")).await;
    }
    let after_second = testkit::Scrape::fetch(&base).await;
    assert_eq!(
        after_second.series(),
        after_first.series(),
        "400 new paths added series"
    );
    assert_eq!(
        after_second.value(
            "gradebook_http_requests_total",
            &[("route", "other"), ("method", "GET"), ("status", "404")]
        ),
        600.0
    );
    let known: std::collections::BTreeSet<String> = [
        "/health",
        "/status/connections",
        "/metrics",
        "/students",
        "/students/{id}",
        "/students/{id}/grades",
        "/students/{id}/grades/{gradeId}",
        "other",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let labels = route_labels(&after_second);
    assert!(labels.is_subset(&known), "route labels {labels:?}");

    stop(&agent, grading).await;
}
