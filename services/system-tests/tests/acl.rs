//! Who may register: on a real agent that enforces ACLs (default policy `deny`),
//! scripts/acl-bootstrap.sh installs the policies of consul/acl/ and writes one token per service;
//! each service works with its own token, and grading's token cannot pose as another service.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{Value, json};
use system_tests::compose::repo_root;
use system_tests::{Gradebook, PATIENCE, client};
use testkit::{ServiceProcess, eventually, free_port};

/// The agent's master token: what an operator gives the script as the management token.
const MASTER: &str = "7e1c2b9a-4f3d-4a8e-b6c5-0d9f8e7a6b51";
/// The service names, which are also the names of their token files.
const SERVICES: [&str; 3] = ["log", "grading", "portal"];

/// Runs scripts/acl-bootstrap.sh against `gradebook`'s agent with the master token in a file (as
/// the README says to), writing tokens into `token_dir`.
async fn bootstrap(gradebook: &Gradebook, token_dir: &Path, extra: &[&str]) -> Output {
    let secrets = tempfile::tempdir().unwrap();
    let management = secrets.path().join("management.token");
    std::fs::write(&management, format!("{MASTER}\n")).unwrap();
    run_script(gradebook, token_dir, Some(&management), extra).await
}

/// Runs scripts/acl-bootstrap.sh with the management token in `management`, or none at all
/// (whatever the test runner's environment holds); it must succeed.
async fn run_script(
    gradebook: &Gradebook,
    token_dir: &Path,
    management: Option<&Path>,
    extra: &[&str],
) -> Output {
    let output = tokio::process::Command::new(repo_root().join("scripts/acl-bootstrap.sh"))
        .arg("--token-dir")
        .arg(token_dir)
        .args(extra)
        .env("CONSUL_HTTP_ADDR", gradebook.consul.http_addr())
        .env(
            "CONSUL_HTTP_TOKEN_FILE",
            management.unwrap_or(Path::new("")),
        )
        .env("CONSUL_HTTP_TOKEN", "")
        .env("CONSUL_BIN", testkit::consul_binary())
        .output()
        .await
        .expect("scripts/acl-bootstrap.sh runs");
    assert!(output.status.success(), "{}", text(&output));
    output
}

/// Stdout then stderr, for assertions and failure messages.
fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn token_file(token_dir: &Path, service: &str) -> PathBuf {
    token_dir.join(format!("{service}.token"))
}

fn token(token_dir: &Path, service: &str) -> String {
    std::fs::read_to_string(token_file(token_dir, service))
        .unwrap()
        .trim()
        .to_owned()
}

/// Starts `binary` with its data in its own directory and only its own token file: no token in
/// the environment, whatever the test runner's holds.
async fn start(
    gradebook: &Gradebook,
    binary: &str,
    service: &str,
    token_dir: &Path,
) -> ServiceProcess {
    let mut args = Vec::new();
    if service != "portal" {
        let data = gradebook.data_dir(service).display().to_string();
        args.extend(["--data-dir".to_owned(), data]);
    }
    let token_file = token_file(token_dir, service).display().to_string();
    let envs = [
        ("CONSUL_HTTP_TOKEN", String::new()),
        ("CONSUL_HTTP_TOKEN_FILE", token_file),
    ];
    gradebook
        .start_with(binary, free_port(), &args, &envs)
        .await
}

/// A GET of the portal's `path`, expected to be a 200 page containing `text` before long.
async fn portal_page_shows(portal: &ServiceProcess, path: &str, text: &str) -> String {
    let url = format!("{}{path}", portal.base_url());
    eventually(&format!("GET {path} shows {text:?}"), PATIENCE, || async {
        let response = client().get(&url).send().await.ok()?;
        let status = response.status();
        let page = response.text().await.ok()?;
        (status == 200 && page.contains(text)).then_some(page)
    })
    .await
}

/// Status and body of a PUT to the agent with `token`.
async fn put_with_token(
    gradebook: &Gradebook,
    token: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, String) {
    let request = client()
        .put(format!("{}{path}", gradebook.consul.http_addr()))
        .header("X-Consul-Token", token);
    let request = match body {
        Some(body) => request.json(body),
        None => request,
    };
    let response = request.send().await.expect("the agent answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// A registration of `process` posing as `name` under `id`.
fn impostor(name: &str, id: &str, process: &ServiceProcess) -> Value {
    let port = process.addr().port();
    json!({
        "Name": name,
        "ID": id,
        "Address": "127.0.0.1",
        "Port": port,
        "Check": {
            "HTTP": format!("http://127.0.0.1:{port}/health"),
            "Interval": "1s",
            "Status": "passing",
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_works_with_its_own_token_and_grading_cannot_pose_as_another() {
    let gradebook = Gradebook::with_acl(MASTER).await;
    let tokens = tempfile::tempdir().unwrap();
    let token_dir = tokens.path().join("tokens");

    // The script writes one token per service, readable by its owner only, and prints no secret.
    let first = text(&bootstrap(&gradebook, &token_dir, &[]).await);
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&token_dir), 0o700, "{first}");
    for service in SERVICES {
        assert!(
            first.contains(&format!("token for {service}: created")),
            "{first}"
        );
        assert_eq!(mode(&token_file(&token_dir, service)), 0o600, "{first}");
        assert!(!first.contains(&token(&token_dir, service)), "{first}");
    }
    assert!(!first.contains(MASTER), "{first}");
    let tokens_before: Vec<String> = SERVICES.map(|s| token(&token_dir, s)).to_vec();

    // Run again, it keeps the tokens it made.
    let second = text(&bootstrap(&gradebook, &token_dir, &[]).await);
    for service in SERVICES {
        assert!(
            second.contains(&format!("token for {service}: kept")),
            "{second}"
        );
    }
    assert_eq!(
        SERVICES.map(|s| token(&token_dir, s)).to_vec(),
        tokens_before
    );

    // Each service registers with its own token, and finds its dependencies with it.
    let log = start(&gradebook, "log-service", "log", &token_dir).await;
    let grading = start(&gradebook, "grading-service", "grading", &token_dir).await;
    let portal = start(&gradebook, "portal", "portal", &token_dir).await;
    for (service, process) in [("log", &log), ("grading", &grading), ("portal", &portal)] {
        eventually(&format!("{service} passing"), PATIENCE, || async {
            let passing = gradebook.consul.passing_instances(service).await;
            (passing.len() == 1).then_some(())
        })
        .await;
        assert!(
            process.output().contains("registered with Consul"),
            "{}",
            process.output()
        );
    }
    // The portal reads grading (the students) and log (grading's records, shipped with grading's
    // token reading where log is), and shows both on its status page.
    portal_page_shows(&portal, "/", "Tony Stark").await;
    portal_page_shows(&portal, "/logs?service=grading", "registered with Consul").await;
    let status = portal_page_shows(&portal, "/status", &grading.addr().to_string()).await;
    assert!(status.contains(&log.addr().to_string()), "{status}");

    // With grading's token, registering as log or portal, taking over log's instance ID, or
    // deregistering log's instance is refused by the agent.
    let grading_token = token(&token_dir, "grading");
    let log_id = format!("log-127.0.0.1-{}", log.addr().port());
    let attempts = [
        impostor("log", "log-impostor", &grading),
        impostor("portal", "portal-impostor", &grading),
        impostor("grading", &log_id, &grading),
    ];
    for registration in &attempts {
        let (status, body) = put_with_token(
            &gradebook,
            &grading_token,
            "/v1/agent/service/register",
            Some(registration),
        )
        .await;
        assert_eq!(status, 403, "{registration}: {body}");
        assert!(body.contains("Permission denied"), "{registration}: {body}");
    }
    let deregister = format!("/v1/agent/service/deregister/{log_id}");
    let (status, body) = put_with_token(&gradebook, &grading_token, &deregister, None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("Missing service:write on log"), "{body}");

    let services = gradebook.consul.agent_services().await;
    assert!(!services.contains_key("log-impostor"), "{services:?}");
    assert!(!services.contains_key("portal-impostor"), "{services:?}");
    assert_eq!(services[&log_id]["Service"], "log", "{services:?}");
    let passing_log = gradebook.consul.passing_instances("log").await;
    assert_eq!(
        passing_log.iter().map(|i| &i.id).collect::<Vec<_>>(),
        [&log_id]
    );
}

/// DNS answers with the anonymous token: under `deny` it finds nothing, until
/// `--dns-anonymous` gives that token read access to the three services, and no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_finds_the_services_only_once_the_anonymous_token_may_read_them() {
    let gradebook = Gradebook::with_acl(MASTER).await;
    let tokens = tempfile::tempdir().unwrap();
    let output = text(&bootstrap(&gradebook, tokens.path(), &[]).await);
    assert!(output.contains("anonymous token: unchanged"), "{output}");
    let log = start(&gradebook, "log-service", "log", tokens.path()).await;
    eventually("log passing", PATIENCE, || async {
        let passing = gradebook.consul.passing_instances("log").await;
        (passing.len() == 1).then_some(())
    })
    .await;
    assert_eq!(gradebook.consul.dig("log.service.consul", "A"), "");

    let output = text(&bootstrap(&gradebook, tokens.path(), &["--dns-anonymous"]).await);
    assert!(
        output.contains("anonymous token: has gradebook-dns"),
        "{output}"
    );
    eventually("dig finds log", PATIENCE, || async {
        (gradebook.consul.dig("log.service.consul", "A") == "127.0.0.1").then_some(())
    })
    .await;
    // Reading is all it grants: a request without a token still cannot register.
    let registration = impostor("log", "log-anonymous", &log);
    let response = client()
        .put(format!(
            "{}/v1/agent/service/register",
            gradebook.consul.http_addr()
        ))
        .json(&registration)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}

/// Given no management token, the script bootstraps the agent's ACLs and keeps the management
/// token in a 0600 file; run again it uses that token, and after the (dev) agent forgot
/// everything it bootstraps again and replaces the tokens the agent no longer knows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_bootstraps_an_agent_and_reuses_the_management_token_it_kept() {
    let mut gradebook = Gradebook::with_acl_to_bootstrap().await;
    let tokens = tempfile::tempdir().unwrap();
    let management_file = tokens.path().join("management.token");

    let first = text(&run_script(&gradebook, tokens.path(), None, &[]).await);
    assert!(first.contains("bootstrapped ACLs on"), "{first}");
    let management = token(tokens.path(), "management");
    assert!(!first.contains(&management), "{first}");
    let mode = std::fs::metadata(&management_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    gradebook.consul.use_token(&management);
    let log = start(&gradebook, "log-service", "log", tokens.path()).await;
    eventually("log passing", PATIENCE, || async {
        let passing = gradebook.consul.passing_instances("log").await;
        (passing.len() == 1).then_some(())
    })
    .await;

    let second = text(&run_script(&gradebook, tokens.path(), None, &[]).await);
    assert!(
        second.contains("management token: ") && second.contains("bootstrapped by an earlier run"),
        "{second}"
    );
    assert!(second.contains("token for log: kept"), "{second}");
    assert_eq!(token(tokens.path(), "management"), management);
    drop(log);

    gradebook.consul.start_again().await;
    let third = text(&run_script(&gradebook, tokens.path(), None, &[]).await);
    assert!(third.contains("bootstrapped ACLs on"), "{third}");
    assert!(third.contains("token for log: created"), "{third}");
    assert_ne!(token(tokens.path(), "management"), management);
}
