//! The real `log-service` binary against a real Consul agent that enforces ACLs (default policy
//! `deny`): it registers only with its token, from the environment or from a file, and the token
//! never shows in its output or its `--help`.

use std::path::Path;
use std::time::Duration;

use discovery::{ConsulArgs, ConsulSettings, ProviderWatch, WatchStatus};
use testkit::{ConsulAgent, ServiceProcess, eventually, http_client};

const PATIENCE: Duration = Duration::from_secs(15);
/// The master token: distinctive, so any trace of it in the output is found.
const TOKEN: &str = "b1946ac9-2f0a-4c1b-9e1d-5e3a7e6f0c01";
/// A well-formed token the agent does not know: refused, and just as secret.
const UNKNOWN_TOKEN: &str = "0c7f3e2a-9d41-4b6e-8f05-7a1d2c3b4e5f";
/// The most verbose logging, so that whatever the service (or a library under it) might print
/// about its requests is printed and checked for the token.
const LOG_LEVEL: &str = "trace";

/// The way a token is given.
enum TokenFrom<'a> {
    /// Environment variables (`CONSUL_HTTP_TOKEN`, `CONSUL_HTTP_TOKEN_FILE`), or none if empty.
    Env(&'a [(&'a str, String)]),
    /// `--consul-http-token TOKEN` on the command line.
    Flag(&'a str),
}

/// Starts the log service on a port of its choosing with `CONSUL_HTTP_ADDR` pointing at `agent`
/// and the token given as `token` says. `CONSUL_HTTP_TOKEN` defaults to empty (no token,
/// whatever the test runner's environment holds) unless set there.
async fn start_log_service(
    agent: &ConsulAgent,
    data_dir: &Path,
    token: TokenFrom<'_>,
) -> ServiceProcess {
    let mut all = vec![
        ("CONSUL_HTTP_ADDR", agent.http_addr()),
        ("RUST_LOG", LOG_LEVEL.to_owned()),
        ("CONSUL_HTTP_TOKEN", String::new()),
    ];
    let mut args = vec!["--data-dir".to_owned(), data_dir.display().to_string()];
    match token {
        TokenFrom::Env(envs) => all.extend(envs.iter().cloned()),
        TokenFrom::Flag(token) => args.extend(["--consul-http-token".to_owned(), token.into()]),
    }
    ServiceProcess::spawn_on_any_port(env!("CARGO_BIN_EXE_log-service").as_ref(), &args, &all).await
}

fn instance_id(service: &ServiceProcess) -> String {
    format!("log-127.0.0.1-{}", service.addr().port())
}

fn assert_no_token(service: &ServiceProcess) {
    let output = service.output();
    for token in [TOKEN, UNKNOWN_TOKEN] {
        assert!(
            !output.contains(token),
            "token {token} is in the output:\n{output}"
        );
    }
}

/// With the token given as `token` says, the instance shows as passing, and SIGTERM deregisters
/// it and exits 0; the token appears nowhere in the output. Returns the output.
async fn registers_and_deregisters_with(token: TokenFrom<'_>) -> String {
    let agent = ConsulAgent::start_with_acl(TOKEN).await;
    let data = tempfile::tempdir().unwrap();
    let mut service = start_log_service(&agent, data.path(), token).await;
    let id = instance_id(&service);

    let instance = eventually("listed as passing", PATIENCE, || async {
        agent.passing_instances("log").await.into_iter().next()
    })
    .await;
    assert_eq!(instance.id, id);
    assert_eq!(instance.address, service.addr().to_string());
    assert_eq!(agent.check_status(&id).await.as_deref(), Some("passing"));

    service.sigterm();
    let status = service.wait_exit(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "{}", service.output());
    assert!(
        !agent.agent_services().await.contains_key(&id),
        "still registered after SIGTERM\n{}",
        service.output()
    );
    let output = service.output();
    assert!(output.contains("registered with Consul"), "{output}");
    assert!(output.contains("deregistered from Consul"), "{output}");
    assert!(!output.contains("Consul refused"), "{output}");
    assert_no_token(&service);
    output
}

/// What the service says at start when its token is on its command line.
const VISIBLE_IN_PS: &str = "every user of this host can read it in `ps`";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_token_in_consul_http_token_it_registers_and_sigterm_deregisters() {
    let envs = [("CONSUL_HTTP_TOKEN", TOKEN.to_owned())];
    let output = registers_and_deregisters_with(TokenFrom::Env(&envs)).await;
    assert!(!output.contains(VISIBLE_IN_PS), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_token_in_a_file_it_registers_and_sigterm_deregisters() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("consul-token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let envs = [("CONSUL_HTTP_TOKEN_FILE", file.display().to_string())];
    let output = registers_and_deregisters_with(TokenFrom::Env(&envs)).await;
    assert!(!output.contains(VISIBLE_IN_PS), "{output}");
}

/// A token on the command line works, but `ps` shows it to every local user: the service says so
/// once at start, names the safer ways, and still never prints the token itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_token_as_a_flag_it_registers_but_warns_that_ps_shows_it() {
    let output = registers_and_deregisters_with(TokenFrom::Flag(TOKEN)).await;
    let warnings: Vec<&str> = output
        .lines()
        .filter(|line| line.contains(VISIBLE_IN_PS))
        .collect();
    assert_eq!(warnings.len(), 1, "{output}");
    assert!(warnings[0].contains("WARN"), "{output}");
    assert!(warnings[0].contains("--consul-http-token"), "{output}");
    assert!(warnings[0].contains("CONSUL_HTTP_TOKEN_FILE"), "{output}");
}

/// Without a usable token the service still serves, is never registered, keeps retrying (each
/// refusal quoted in its output) and still exits 0 on SIGTERM.
async fn serves_unregistered_with(envs: &[(&str, String)], refusal: &str) {
    let agent = ConsulAgent::start_with_acl(TOKEN).await;
    let data = tempfile::tempdir().unwrap();
    let mut service = start_log_service(&agent, data.path(), TokenFrom::Env(envs)).await;
    let id = instance_id(&service);

    // The first refusal is a warning naming the token and quoting the agent; the retries after
    // it are debug lines (RUST_LOG=trace here).
    eventually("refused, and retrying", PATIENCE, || async {
        let output = service.output();
        (output.contains(refusal)
            && output
                .matches(
                    "Consul refused this instance (check CONSUL_HTTP_TOKEN), will keep retrying",
                )
                .count()
                >= 4)
            .then_some(())
    })
    .await;
    assert!(
        !agent.agent_services().await.contains_key(&id),
        "registered without a usable token\n{}",
        service.output()
    );
    assert!(agent.passing_instances("log").await.is_empty());

    // It serves all the same.
    let client = http_client();
    let health = client
        .get(format!("{}/health", service.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let posted = client
        .post(format!("{}/log", service.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("kept without Consul")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 201);
    let records: Vec<serde_json::Value> = client
        .get(format!("{}/log", service.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["message"], "kept without Consul");

    service.sigterm();
    let status = service.wait_exit(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "{}", service.output());
    let output = service.output();
    assert!(output.contains("could not deregister"), "{output}");
    assert!(!output.contains("registered with Consul"), "{output}");
    assert_no_token(&service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_it_serves_unregistered_and_keeps_retrying() {
    serves_unregistered_with(
        &[],
        "Consul agent answered 403 Forbidden: Permission denied: Missing service:write on log",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_unknown_token_it_serves_unregistered_and_never_prints_it() {
    let envs = [("CONSUL_HTTP_TOKEN", UNKNOWN_TOKEN.to_owned())];
    serves_unregistered_with(&envs, "Consul agent answered 403 Forbidden: ACL not found").await;
}

/// A watch through the agent, as the other services keep on their dependencies.
fn watch(agent: &ConsulAgent, token: Option<&str>) -> ProviderWatch {
    let args = ConsulArgs {
        http_addr: agent.http_addr(),
        token: token.map(str::to_owned),
        token_file: None,
    };
    ProviderWatch::spawn(&ConsulSettings::from_args(&args).unwrap(), "log")
}

/// The watches of the other services (rs-consul's blocking queries) send the token too: with it
/// the instance is seen; without it the agent filters it out silently, so the watch is live but
/// empty (not failing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_the_instance_with_the_token_and_an_empty_set_without() {
    let agent = ConsulAgent::start_with_acl(TOKEN).await;
    let data = tempfile::tempdir().unwrap();
    let with_token = watch(&agent, Some(TOKEN));
    let anonymous = watch(&agent, None);
    let envs = [("CONSUL_HTTP_TOKEN", TOKEN.to_owned())];
    let service = start_log_service(&agent, data.path(), TokenFrom::Env(&envs)).await;

    let seen = eventually("the watch with the token sees it", PATIENCE, || async {
        let set = with_token.current();
        (set.providers.len() == 1).then_some(set)
    })
    .await;
    assert_eq!(seen.providers[0].id, instance_id(&service));
    assert_eq!(seen.status, WatchStatus::Live);

    anonymous.ready(PATIENCE).await;
    let set = anonymous.current();
    assert_eq!(set.status, WatchStatus::Live, "{set:?}");
    assert!(set.providers.is_empty(), "{set:?}");
    assert_eq!(set.failed_polls, 0, "{set:?}");
}

#[test]
fn help_never_shows_the_token() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_log-service"))
        .arg("--help")
        .env("CONSUL_HTTP_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(help.status.success(), "{help:?}");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("CONSUL_HTTP_TOKEN"), "{text}");
    assert!(!text.contains(TOKEN), "{text}");
    assert!(!String::from_utf8_lossy(&help.stderr).contains(TOKEN));
}
