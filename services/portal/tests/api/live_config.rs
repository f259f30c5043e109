//! The portal's settings in Consul KV: put, refused and deleted while it runs, seen by polling
//! its pages and `/status/config` as an operator would.

use std::time::Duration;

use serde_json::Value;
use testkit::{ConsulAgent, RunningApp, eventually, get_json, redirect_showing_client};

use crate::helpers::spawn_app_with;
use crate::{register_grading, start_grading_stand_in};

/// Generous: a change is seen within a second; this only bounds a broken test.
const APPLIED: Duration = Duration::from_secs(10);
const PASSING: &str = "gradebook/config/portal/passing_score";
const PER_PAGE: &str = "gradebook/config/portal/students_per_page";

async fn html(portal: &RunningApp, path: &str) -> String {
    let url = format!("{}{path}", portal.base_url());
    let response = redirect_showing_client().get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

async fn config(portal: &RunningApp) -> Value {
    get_json(&format!("{}/status/config", portal.base_url())).await
}

/// Waits until `/status/config` satisfies `until`, and returns it.
async fn config_where(portal: &RunningApp, what: &str, until: impl Fn(&Value) -> bool) -> Value {
    eventually(what, APPLIED, || async {
        let config = config(portal).await;
        until(&config).then_some(config)
    })
    .await
}

#[tokio::test]
async fn a_setting_put_in_consul_applies_live_a_bad_one_is_refused_and_a_deleted_one_falls_back() {
    let agent = ConsulAgent::start().await;
    let grading = start_grading_stand_in().await;
    register_grading(&agent, grading).await;
    let portal = spawn_app_with(&agent, &["--passing-score", "60"]).await;

    // No key: the flag decides, and /health says so.
    let health = get_json(&format!("{}/health", portal.base_url())).await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["config"]["source"], "flags", "{health}");
    let status = config(&portal).await;
    assert_eq!(
        status["settings"]["passing_score"]["value"], "60",
        "{status}"
    );
    assert_eq!(
        status["settings"]["passing_score"]["from"], "flag",
        "{status}"
    );
    assert_eq!(status["settings"]["students_per_page"]["from"], "default");
    assert!(
        !html(&portal, "/students/1")
            .await
            .contains("below the passing score")
    );

    // Tony Stark's 87.5 is below a passing score of 90, as soon as it is put.
    agent.kv_put(PASSING, "90").await;
    eventually("the new passing score shows", APPLIED, || async {
        html(&portal, "/students/1")
            .await
            .contains("below the passing score of 90")
            .then_some(())
    })
    .await;
    let health = get_json(&format!("{}/health", portal.base_url())).await;
    assert_eq!(health["config"]["source"], "consul-kv", "{health}");
    assert!(health["config"]["index"].as_u64().unwrap() > 0, "{health}");
    let status = config(&portal).await;
    assert_eq!(status["settings"]["passing_score"]["from"], "kv-service");
    assert!(
        html(&portal, "/status").await.contains("consul-kv"),
        "the status page shows the source"
    );

    // One student per page: the second is on the next page.
    agent.kv_put(PER_PAGE, "1").await;
    eventually("one student per page", APPLIED, || async {
        let page = html(&portal, "/").await;
        (page.contains("Stark") && !page.contains("Banner") && page.contains("Next students"))
            .then_some(())
    })
    .await;

    // Out of range: refused with its reason, the last good value kept.
    agent.kv_put(PASSING, "101").await;
    let status = config_where(&portal, "the refusal shows", |c| {
        c["last_refused"]["key"] == PASSING
    })
    .await;
    let reason = status["last_refused"]["reason"].as_str().unwrap();
    assert!(reason.contains("out of range"), "{reason}");
    assert!(reason.contains("last good value is kept"), "{reason}");
    assert_eq!(
        status["settings"]["passing_score"]["value"], "90",
        "{status}"
    );
    assert!(
        html(&portal, "/students/1")
            .await
            .contains("below the passing score of 90")
    );

    // A huge value under a known key, and an unknown key: refused too, the rest unchanged.
    agent.kv_put(PER_PAGE, "7".repeat(100_000)).await;
    let status = config_where(&portal, "the huge value is refused", |c| {
        c["last_refused"]["key"] == PER_PAGE
    })
    .await;
    let reason = status["last_refused"]["reason"].as_str().unwrap();
    assert!(reason.contains("100000 bytes"), "{reason}");
    assert_eq!(status["settings"]["students_per_page"]["value"], "1");
    agent.kv_put("gradebook/config/portal/colour", "red").await;
    config_where(&portal, "the unknown key is refused", |c| {
        c["last_refused"]["key"] == "gradebook/config/portal/colour"
    })
    .await;

    // Deleted: back to the flag's value.
    agent.kv_delete(PASSING).await;
    let status = config_where(&portal, "the flag decides again", |c| {
        c["settings"]["passing_score"]["value"] == "60"
    })
    .await;
    assert_eq!(
        status["settings"]["passing_score"]["from"], "flag",
        "{status}"
    );
    assert!(
        !html(&portal, "/students/1")
            .await
            .contains("below the passing score")
    );
    portal.stop().await;
}
