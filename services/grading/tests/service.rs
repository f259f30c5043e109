//! The real `grading-service` binary against a real Consul dev agent.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use testkit::{ConsulAgent, ServiceProcess, eventually, free_port, http_client};

const BINARY: &str = env!("CARGO_BIN_EXE_grading-service");

/// Starts the service on `addr` with its database in `data_dir`, registered with `agent`.
async fn spawn_grading(agent: &ConsulAgent, addr: SocketAddr, data_dir: &Path) -> ServiceProcess {
    let args = [
        "--listen".to_owned(),
        addr.to_string(),
        "--data-dir".to_owned(),
        data_dir.display().to_string(),
    ];
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

#[tokio::test]
async fn students_survive_a_restart_and_the_demo_is_seeded_once() {
    let agent = ConsulAgent::start().await;
    let data = tempfile::tempdir().unwrap();
    let data_dir: PathBuf = data.path().join("grading");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));

    let grading = spawn_grading(&agent, addr, &data_dir).await;
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

    let new_student = json!({"firstName": "Wanda", "lastName": "Maximoff <3"});
    let (student_url, student) = post_created(&format!("{base}/students"), &new_student).await;
    assert_eq!(student_url, format!("/students/{}", student["id"]));
    let new_grade = json!({"title": "Chaos Magic 101", "type": "Test", "score": 99.5});
    let (grade_url, grade) = post_created(&format!("{base}{student_url}/grades"), &new_grade).await;
    assert_eq!(get_json(&format!("{base}{grade_url}")).await, grade);
    stop(&agent, grading).await;

    let grading = spawn_grading(&agent, addr, &data_dir).await;
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

/// Two instances on one database file, as a teacher would run them behind Consul: whatever one
/// of them acknowledged, the other serves at once, though both keep answers cached.
#[tokio::test]
async fn instances_sharing_a_database_read_each_others_writes_at_once() {
    let agent = ConsulAgent::start().await;
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("grading");
    let one = spawn_grading(
        &agent,
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        &data_dir,
    )
    .await;
    let two = spawn_grading(
        &agent,
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        &data_dir,
    )
    .await;
    passing_grading(&agent, 2).await;
    let instances = [one.base_url(), two.base_url()];

    for round in 0..40 {
        let (writer, reader) = (&instances[round % 2], &instances[(round + 1) % 2]);
        // Read first, so the reader has the student and the list cached before the write.
        let before = get_json(&format!("{reader}/students/1")).await;
        let listed = get_json(&format!("{reader}/students")).await;
        let grade = json!({"title": format!("Round {round}"), "type": "Quiz", "score": round});
        let (_, added) = post_created(&format!("{writer}/students/1/grades"), &grade).await;

        let after = get_json(&format!("{reader}/students/1")).await;
        let grades = after["grades"].as_array().unwrap();
        assert_eq!(
            grades.len(),
            before["grades"].as_array().unwrap().len() + 1,
            "round {round}: {reader} did not serve the grade {writer} acknowledged"
        );
        assert_eq!(grades.last(), Some(&added), "round {round}");
        let relisted = get_json(&format!("{reader}/students")).await;
        assert_ne!(
            relisted, listed,
            "round {round}: {reader} served a stale list"
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
        "CONSUL_HTTP_ADDR",
        "CONSUL_HTTP_TOKEN",
    ] {
        assert!(help.contains(expected), "--help lacks {expected}:\n{help}");
    }
}
