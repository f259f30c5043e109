//! The real `grading-service` binary against a real Consul dev agent.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::{ConsulAgent, Postgres, ServiceProcess, eventually, free_port, http_client};

const BINARY: &str = env!("CARGO_BIN_EXE_grading-service");

/// Where the instances of one test keep students and grades.
enum Database {
    /// `--data-dir` in a tempdir: the embedded default.
    Sqlite(tempfile::TempDir),
    /// `--database-url` of a PostgreSQL server of the test's own.
    Postgres(Postgres),
}

impl Database {
    fn sqlite() -> Database {
        Database::Sqlite(tempfile::tempdir().unwrap())
    }

    /// `None` when PostgreSQL is not installed and the test is skipped (testkit warns).
    async fn postgres() -> Option<Database> {
        Postgres::start().await.map(Database::Postgres)
    }

    /// The flag that points grading at this database.
    fn args(&self) -> [String; 2] {
        match self {
            Database::Sqlite(dir) => [
                "--data-dir".to_owned(),
                dir.path().join("grading").display().to_string(),
            ],
            Database::Postgres(server) => ["--database-url".to_owned(), server.url()],
        }
    }
}

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

/// Starts the service on `addr` using `db`, registered with `agent`.
async fn spawn_grading(agent: &ConsulAgent, addr: SocketAddr, db: &Database) -> ServiceProcess {
    let mut args = vec!["--listen".to_owned(), addr.to_string()];
    args.extend(db.args());
    ServiceProcess::spawn(
        Path::new(BINARY),
        addr,
        &args,
        &[("CONSUL_HTTP_ADDR", agent.http_addr())],
    )
    .await
}

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

async fn get_json(url: &str) -> Value {
    let response = http_client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), reqwest::StatusCode::OK, "GET {url}");
    response
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: bad JSON: {e}"))
}

/// POSTs `body` and returns the `Location` and the body of the 201 answer.
async fn post_created(url: &str, body: &Value) -> (String, Value) {
    let response = http_client()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    assert_eq!(
        response.status(),
        reqwest::StatusCode::CREATED,
        "POST {url}"
    );
    let location = response.headers()[reqwest::header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    (location, response.json().await.unwrap())
}

/// SIGTERMs the service and checks it exits 0 and leaves Consul's catalogue.
async fn stop(agent: &ConsulAgent, mut grading: ServiceProcess) {
    grading.sigterm();
    let status = grading.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "exit {status}\n{}", grading.output());
    assert!(agent.passing_instances("grading").await.is_empty());
    assert!(
        agent.agent_services().await.is_empty(),
        "still registered after SIGTERM"
    );
}

async fn students_survive_a_restart_and_the_demo_is_seeded_once(db: Database) {
    let agent = ConsulAgent::start().await;
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));

    let grading = spawn_grading(&agent, addr, &db).await;
    let instances = passing_grading(&agent, 1).await;
    assert_eq!(instances[0].address, addr.to_string());
    assert_eq!(instances[0].tags, ["http", "api"]);
    assert_eq!(
        instances[0].id,
        format!("grading-127.0.0.1-{}", addr.port())
    );

    // The `api` tag is what makes the DNS name work: SRV answers "priority weight port target".
    let srv = dig_srv(&agent, "api.grading.service.consul");
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

    let grading = spawn_grading(&agent, addr, &db).await;
    passing_grading(&agent, 1).await;
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
/// serves on the very next read, though SQLite instances keep answers cached.
async fn instances_sharing_a_database_read_each_others_writes_at_once(db: Database) {
    let agent = ConsulAgent::start().await;
    let one = spawn_grading(&agent, SocketAddr::from(([127, 0, 0, 1], free_port())), &db).await;
    let two = spawn_grading(&agent, SocketAddr::from(([127, 0, 0, 1], free_port())), &db).await;
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
    stop_both(&agent, one, two).await;
}

/// SIGTERMs two instances and checks both exit 0 and leave the catalogue.
async fn stop_both(agent: &ConsulAgent, mut one: ServiceProcess, two: ServiceProcess) {
    one.sigterm();
    let status = one.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "exit {status}\n{}", one.output());
    stop(agent, two).await;
}

/// The SRV answer of the agent's DNS for `name`, as `dig +short` prints it.
fn dig_srv(agent: &ConsulAgent, name: &str) -> String {
    let port = format!("-p{}", agent.dns_port());
    let output = std::process::Command::new("dig")
        .args([
            "@127.0.0.1",
            &port,
            "+short",
            "+time=2",
            "+tries=1",
            name,
            "SRV",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run dig (install dnsutils): {e}"));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn help_documents_every_flag_and_its_environment_variable() {
    let output = std::process::Command::new(BINARY)
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "--listen",
        "GRADEBOOK_LISTEN",
        "--advertise",
        "GRADEBOOK_ADVERTISE",
        "--data-dir",
        "GRADEBOOK_DATA_DIR",
        "--database-url",
        "GRADEBOOK_DATABASE_URL",
        "CONSUL_HTTP_ADDR",
        "CONSUL_HTTP_TOKEN",
        "--header-timeout",
        "GRADEBOOK_HEADER_TIMEOUT",
        "--idle-timeout",
        "GRADEBOOK_IDLE_TIMEOUT",
        "--max-connections",
        "GRADEBOOK_MAX_CONNECTIONS",
    ] {
        assert!(help.contains(expected), "--help lacks {expected}:\n{help}");
    }
}

/// Runs grading on `data_dir` as an instance of host `host_id` and returns its exit status and
/// output if it exits within 20 s; `None` (after killing it) if it was still running.
async fn run_on_host(
    agent: &ConsulAgent,
    data_dir: &Path,
    host_id: &str,
) -> Option<(bool, String)> {
    let output = tempfile::NamedTempFile::new().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut child = Command::new(BINARY)
        .args(["--listen", &addr.to_string(), "--data-dir"])
        .arg(data_dir)
        .env("CONSUL_HTTP_ADDR", agent.http_addr())
        .env("GRADEBOOK_HOST_ID", host_id)
        .stdin(Stdio::null())
        .stdout(output.reopen().unwrap())
        .stderr(output.reopen().unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Some(status) = child.try_wait().unwrap() {
            let text = std::fs::read_to_string(output.path()).unwrap_or_default();
            return Some((status.success(), text));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// SQLite's shared memory works only on one host: a second host on the same data directory is
/// refused at start with a message that says what to do, while instances of one host share it.
#[tokio::test]
async fn an_instance_on_another_host_refuses_a_sqlite_data_dir_in_use() {
    let agent = ConsulAgent::start().await;
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("grading");
    let first = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let args = [
        "--listen".to_owned(),
        first.to_string(),
        "--data-dir".to_owned(),
        data_dir.display().to_string(),
    ];
    let env = [
        ("CONSUL_HTTP_ADDR", agent.http_addr()),
        ("GRADEBOOK_HOST_ID", "host-a".to_owned()),
    ];
    let host_a = ServiceProcess::spawn(Path::new(BINARY), first, &args, &env).await;
    let second = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let args = [
        "--listen".to_owned(),
        second.to_string(),
        "--data-dir".to_owned(),
        data_dir.display().to_string(),
    ];
    let mut same_host = ServiceProcess::spawn(Path::new(BINARY), second, &args, &env).await;
    assert!(
        same_host.exited().is_none(),
        "a second instance of host-a must run"
    );

    let (started, output) = run_on_host(&agent, &data_dir, "host-b")
        .await
        .expect("an instance of host-b must refuse to start, not run");
    assert!(!started, "host-b must exit non-zero:\n{output}");
    for expected in [
        "another host",
        "host id host-a",
        "--database-url (PostgreSQL)",
    ] {
        assert!(output.contains(expected), "lacks {expected:?}:\n{output}");
    }
    drop((host_a, same_host));
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
    let grading = spawn_grading(&agent, SocketAddr::from(([127, 0, 0, 1], free_port())), &db).await;
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
