//! What a browser on a hostile page can do to the real binaries, registered in a real Consul
//! agent: reach them under its own name (DNS rebinding), post a form from its own site, read a
//! page in a frame. Each is refused, while Consul's health checks and the services' calls to
//! each other, which use the advertised address as `Host`, keep working.

use std::net::{IpAddr, UdpSocket};

use system_tests::{Gradebook, PATIENCE, client};
use testkit::{FormToken, ServiceProcess, eventually, free_port, workspace_binary};

/// This machine's address on its first non-loopback interface, found without sending anything.
fn non_loopback_address() -> Option<IpAddr> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("10.255.255.255:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// Status and headers of `GET url/health` sent with `host` as the `Host` header.
async fn health_as(service: &ServiceProcess, host: &str) -> reqwest::Response {
    client()
        .get(format!("{}/health", service.base_url()))
        .header("host", host)
        .send()
        .await
        .expect("an answer")
}

fn assert_security_headers(response: &reqwest::Response, what: &str) {
    let headers = response.headers();
    let csp = headers
        .get("content-security-policy")
        .unwrap_or_else(|| panic!("{what}: no CSP"))
        .to_str()
        .unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"),
        "{what}: {csp}"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(headers["referrer-policy"], "same-origin", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebound_host_is_refused_by_every_service_while_consul_and_the_services_get_through() {
    let gradebook = Gradebook::new().await;
    let log = gradebook
        .start_with(
            "log-service",
            free_port(),
            &[
                "--data-dir".into(),
                gradebook.data_dir("log").display().to_string(),
            ],
            &[(
                "GRADEBOOK_ALLOWED_HOSTS",
                "logs.example,other.example".into(),
            )],
        )
        .await;
    // grading listens everywhere and advertises a non-loopback address when the machine has
    // one: Consul's check and the portal's calls then come with that address as Host.
    let grading_port = free_port();
    let advertised = non_loopback_address().map(|ip| format!("{ip}:{grading_port}"));
    let listen = match advertised {
        Some(_) => format!("0.0.0.0:{grading_port}"),
        None => format!("127.0.0.1:{grading_port}"),
    };
    let mut grading_args = vec![
        "--listen".into(),
        listen,
        "--data-dir".into(),
        gradebook.data_dir("grading").display().to_string(),
    ];
    if let Some(advertised) = &advertised {
        grading_args.extend(["--advertise".into(), advertised.clone()]);
    }
    let grading = ServiceProcess::spawn(
        &workspace_binary("grading-service"),
        ([127, 0, 0, 1], grading_port).into(),
        &grading_args,
        &[
            ("CONSUL_HTTP_ADDR", gradebook.consul.http_addr()),
            ("RUST_LOG", "info".to_owned()),
        ],
    )
    .await;
    let portal = gradebook
        .start_with(
            "portal",
            free_port(),
            &["--allowed-host".into(), "grades.example".into()],
            &[],
        )
        .await;
    eprintln!("grading advertised at {advertised:?}");

    // Consul's check reaches grading at its advertised address, and so does the portal.
    eventually("grading passing in Consul", PATIENCE, || async {
        let passing = gradebook.consul.passing_instances("grading").await;
        (passing.len() == 1).then_some(())
    })
    .await;
    let page = eventually("the portal shows a student", PATIENCE, || async {
        let response = client()
            .get(format!("{}/students/1", portal.base_url()))
            .send()
            .await
            .ok()?;
        (response.status() == 200).then_some(response)
    })
    .await;
    assert_security_headers(&page, "a portal page");

    for (service, name, allowed) in [
        (&log, "log", "logs.example:4000"),
        (&log, "log", "other.example"),
        (&grading, "grading", "localhost"),
        (&portal, "portal", "grades.example:5000"),
    ] {
        let served = health_as(service, allowed).await;
        assert_eq!(served.status(), 200, "{name} as {allowed}");
        assert_security_headers(&served, name);
    }
    for (service, name) in [(&log, "log"), (&grading, "grading"), (&portal, "portal")] {
        let refused = health_as(service, "rebound.attacker.example:80").await;
        assert_eq!(refused.status(), 421, "{name}");
        assert_security_headers(&refused, name);
        let body = refused.text().await.unwrap();
        assert!(
            body.contains("does not answer for that Host"),
            "{name}: {body}"
        );
    }
    // A write under a rebound name never reaches grading's store.
    let write = client()
        .post(format!("{}/students", grading.base_url()))
        .header("host", "rebound.attacker.example")
        .json(&serde_json::json!({"firstName": "Mallory", "lastName": "Rebound"}))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 421);
    let students = client()
        .get(format!("{}/students", grading.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!students.contains("Mallory"), "{students}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_from_another_site_is_refused_and_one_from_any_portal_instance_is_accepted() {
    let gradebook = Gradebook::new().await;
    let _log = gradebook.start_log("log", free_port()).await;
    let grading = gradebook.start_grading("grading", free_port()).await;
    let first = gradebook.start_portal().await;
    let second = gradebook
        .start_with(
            "portal",
            free_port(),
            &[],
            &[("GRADEBOOK_STATUS", "off".into())],
        )
        .await;
    let http = client();
    for portal in [&first, &second] {
        eventually("the portal sees grading", PATIENCE, || async {
            let response = http
                .get(format!("{}/students/2", portal.base_url()))
                .send()
                .await
                .ok()?;
            (response.status() == 200).then_some(())
        })
        .await;
    }
    let form = FormToken::fetch(&http, &format!("{}/students/2", first.base_url()))
        .await
        .unwrap();
    let page = http
        .get(format!("{}/students/2", first.base_url()))
        .header("cookie", format!("gradebook_csrf={}", form.as_str()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!(r#"name="csrf" value="{}""#, form.as_str())),
        "the page's form carries the cookie's token: {page}"
    );
    let grades = format!("{}/students/2/grades", second.base_url());

    // What a hostile page's auto-submitting form makes the browser send: no cookie
    // (SameSite=Strict), and its own Origin.
    let forged = http
        .post(&grades)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "http://attacker.example")
        .header("sec-fetch-site", "cross-site")
        .body("title=Forged&type=Test&score=0")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let why = forged.text().await.unwrap();
    assert!(why.contains("sent from another site"), "{why}");
    // Without the page's token, even with a cookie of its own choosing.
    let guessed = http
        .post(&grades)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", format!("gradebook_csrf={}", form.as_str()))
        .body("title=Forged&type=Test&score=0")
        .send()
        .await
        .unwrap();
    assert_eq!(guessed.status(), 403);
    assert!(guessed.text().await.unwrap().contains("security token"));

    // A form rendered by the first portal, sent to the second: accepted.
    let sent = form
        .post(
            &http,
            &grades,
            "title=From+another+instance&type=Quiz&score=77",
        )
        .header("origin", second.base_url())
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 303, "{}", sent.text().await.unwrap());
    let student = http
        .get(format!("{}/students/2", grading.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(student.contains("From another instance"), "{student}");
    assert!(!student.contains("Forged"), "{student}");

    // GRADEBOOK_STATUS=off: the second portal has no status page; the first still has one.
    let status = |portal: &ServiceProcess| http.get(format!("{}/status", portal.base_url())).send();
    assert_eq!(status(&second).await.unwrap().status(), 404);
    assert_eq!(status(&first).await.unwrap().status(), 200);
}
