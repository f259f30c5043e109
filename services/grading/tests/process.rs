//! The real `grading-service` binary against a real Consul dev agent, for what needs a process
//! of its own: signals, exit codes, `--help`. The API is tested in-process in `tests/api/`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{ConsulAgent, ServiceProcess, eventually};

const BINARY: &str = env!("CARGO_BIN_EXE_grading-service");

/// Starts the binary on a port of its choosing with SQLite in `data_dir`, registered with
/// `agent` as an instance of host `host_id`.
async fn spawn_grading(agent: &ConsulAgent, data_dir: &Path, host_id: &str) -> ServiceProcess {
    let args = ["--data-dir".to_owned(), data_dir.display().to_string()];
    let env = [
        ("CONSUL_HTTP_ADDR", agent.http_addr()),
        ("GRADEBOOK_HOST_ID", host_id.to_owned()),
    ];
    ServiceProcess::spawn_on_any_port(Path::new(BINARY), &args, &env).await
}

/// What an orchestrator relies on: SIGTERM deregisters the instance, and it exits 0.
#[tokio::test]
async fn sigterm_deregisters_and_exits_0() {
    let agent = ConsulAgent::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut grading = spawn_grading(&agent, data.path(), "host-a").await;
    eventually(
        "a passing grading instance",
        Duration::from_secs(10),
        || async { (agent.passing_instances("grading").await.len() == 1).then_some(()) },
    )
    .await;

    grading.sigterm();
    let status = grading.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "exit {status}\n{}", grading.output());
    assert!(agent.passing_instances("grading").await.is_empty());
    assert!(
        agent.agent_services().await.is_empty(),
        "still registered after SIGTERM"
    );
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
    let mut child = Command::new(BINARY)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
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
    let host_a = spawn_grading(&agent, &data_dir, "host-a").await;
    let mut same_host = spawn_grading(&agent, &data_dir, "host-a").await;
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
