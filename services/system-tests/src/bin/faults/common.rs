//! What several scenarios share: the user requests the loads send, the clients that find
//! grading and log through Consul as every service does, and the checks made afterwards
//! (every acknowledged grade and log record is there, exactly once).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use discovery::{ConsulSettings, ProviderWatch};
use reqwest::Method;
use serde_json::{Value, json};
use service_runtime::ProviderPool;
use service_runtime::pool::Payload;
use system_tests::{Gradebook, PATIENCE, client};
use testkit::{ServiceProcess, eventually};

/// The demo students every new grading database has: grades go to them.
pub const STUDENTS: u64 = 4;

/// Titles (unique per run) of grades whose creation was acknowledged, or log messages whose
/// record was: what must be found afterwards.
#[derive(Clone, Default)]
pub struct Acked(Arc<Mutex<Vec<String>>>);

impl Acked {
    pub fn push(&self, item: String) {
        self.0.lock().expect("not poisoned").push(item);
    }

    pub fn all(&self) -> Vec<String> {
        self.0.lock().expect("not poisoned").clone()
    }

    pub fn len(&self) -> usize {
        self.0.lock().expect("not poisoned").len()
    }
}

/// A client of grading or log that finds instances through Consul exactly as the services do
/// (a watch plus a pool that fails over), waiting until it sees `instances` of them.
pub async fn discovered(gradebook: &Gradebook, service: &str, instances: usize) -> ProviderPool {
    let settings = ConsulSettings::local(gradebook.consul.http_addr());
    let pool = ProviderPool::new(
        ProviderWatch::spawn(&settings, service),
        service_runtime::runtime::http_client(),
    );
    let what = format!("the runner's watch sees {instances} {service} instance(s)");
    eventually(&what, PATIENCE, || async {
        (pool.watch().current().providers.len() == instances).then_some(())
    })
    .await;
    pool
}

/// Waits until Consul lists `count` passing instances of `service`.
pub async fn passing(gradebook: &Gradebook, service: &str, count: usize) {
    let what = format!("{count} passing {service} instance(s) in Consul");
    eventually(&what, PATIENCE, || async {
        (gradebook.consul.passing_instances(service).await.len() == count).then_some(())
    })
    .await;
}

/// Waits until the portal's status page lists every address in `addresses`.
pub async fn portal_sees(portal: &ServiceProcess, addresses: &[String]) {
    let url = format!("{}/status", portal.base_url());
    eventually(
        "the portal's watches list every instance",
        PATIENCE,
        || async {
            let page = client().get(&url).send().await.ok()?.text().await.ok()?;
            addresses
                .iter()
                .all(|a| page.contains(a.as_str()))
                .then_some(())
        },
    )
    .await;
}

/// `GET` of a portal page, expecting 200.
pub async fn portal_page(http: &reqwest::Client, portal: &str, n: u64) -> Result<(), String> {
    let path = match n % (STUDENTS + 1) {
        0 => "/".to_owned(),
        k => format!("/students/{k}"),
    };
    expect(http.get(format!("{portal}{path}")).send().await, 200, &path).await
}

/// A grade added through the portal's form (fetched first, as a browser does), expecting the
/// redirect that follows a success.
pub async fn portal_grade(
    http: &reqwest::Client,
    portal: &str,
    title: &str,
    n: u64,
    acked: &Acked,
) -> Result<(), String> {
    let student = format!("/students/{}", 1 + n % STUDENTS);
    // As a browser does: the page first, for the form's CSRF cookie and token.
    let form = testkit::FormToken::fetch(http, &format!("{portal}{student}")).await?;
    let path = format!("{student}/grades");
    let response = form
        .post(
            http,
            &format!("{portal}{path}"),
            &format!("title={title}&type=Quiz&score=80"),
        )
        .send()
        .await;
    expect(response, 303, &path).await?;
    acked.push(title.to_owned());
    Ok(())
}

/// `GET /students/{k}` straight at grading through the runner's own discovery client.
pub async fn grading_read(grading: &ProviderPool, n: u64) -> Result<(), String> {
    let path = format!("/students/{}", 1 + n % STUDENTS);
    expect_pool(grading.get(&path).await, 200, &path).await
}

/// A grade added straight at grading through the runner's discovery client, with an
/// `Idempotency-Key` as the portal sends it, expecting 201.
pub async fn grading_grade(
    grading: &ProviderPool,
    title: &str,
    n: u64,
    acked: &Acked,
) -> Result<(), String> {
    let path = format!("/students/{}/grades", 1 + n % STUDENTS);
    let grade = json!({"title": title, "type": "Test", "score": 70});
    let key = service_runtime::pool::new_idempotency_key();
    let response = grading.post_json_once(&path, &grade, &key).await;
    expect_pool(response, 201, &path).await?;
    acked.push(title.to_owned());
    Ok(())
}

/// A grade added at one grading instance by address, expecting 201.
pub async fn instance_grade(
    http: &reqwest::Client,
    base_url: &str,
    title: &str,
    n: u64,
    acked: &Acked,
) -> Result<(), String> {
    let path = format!("/students/{}/grades", 1 + n % STUDENTS);
    let grade = json!({"title": title, "type": "Homework", "score": 90});
    let response = http
        .post(format!("{base_url}{path}"))
        .json(&grade)
        .send()
        .await;
    expect(response, 201, &path).await?;
    acked.push(title.to_owned());
    Ok(())
}

/// A text record written to log through the runner's discovery client the way the services'
/// shipping writes (at least once: a write whose answer was lost is sent again, up to 5 times),
/// expecting 201. `retried` counts the writes sent again.
pub async fn log_write(
    log: &ProviderPool,
    message: &str,
    acked: &Acked,
    retried: &std::sync::atomic::AtomicU64,
) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..5 {
        if attempt > 0 {
            retried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
        }
        let payload = Payload {
            content_type: "text/plain",
            bytes: message.to_owned().into(),
        };
        let sent = log
            .send(Method::POST, "/log?service=faults", Some(payload))
            .await;
        match sent {
            Ok(response) if response.status() == 201 => {
                acked.push(message.to_owned());
                return Ok(());
            }
            Ok(response) => last = format!("POST /log: {}", response.status()),
            Err(err) => last = format!("POST /log: {err}"),
        }
    }
    Err(last)
}

/// A text record written to one log instance by address, expecting 201.
pub async fn instance_log_write(
    http: &reqwest::Client,
    base_url: &str,
    message: &str,
    acked: &Acked,
) -> Result<(), String> {
    let response = http
        .post(format!("{base_url}/log?service=faults"))
        .body(message.to_owned())
        .send()
        .await;
    expect(response, 201, "/log").await?;
    acked.push(message.to_owned());
    Ok(())
}

async fn expect(
    response: Result<reqwest::Response, reqwest::Error>,
    status: u16,
    what: &str,
) -> Result<(), String> {
    match response {
        Ok(response) if response.status().as_u16() == status => {
            // Read the body: a response cut short is a failure too.
            response
                .bytes()
                .await
                .map(|_| ())
                .map_err(|e| format!("{what}: body: {e}"))
        }
        Ok(response) => {
            let got = response.status();
            let body = response.text().await.unwrap_or_default();
            Err(format!("{what}: {got}: {}", first_line(&body)))
        }
        Err(err) => Err(format!("{what}: {err}")),
    }
}

async fn expect_pool(
    response: Result<reqwest::Response, service_runtime::PoolError>,
    status: u16,
    what: &str,
) -> Result<(), String> {
    match response {
        Ok(response) => expect(Ok(response), status, what).await,
        Err(err) => Err(format!("{what}: {err}")),
    }
}

fn first_line(text: &str) -> String {
    let text = text.trim();
    let start = text.find("<p").or_else(|| text.find("error")).unwrap_or(0);
    text[start..].chars().take(160).collect()
}

/// Every grade a grading instance lists, as title -> (student id, grade id) for each copy.
pub async fn grades_by_title(base_url: &str) -> Result<HashMap<String, Vec<(u64, u64)>>, String> {
    let url = format!("{base_url}/students");
    let students: Vec<Value> = client()
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?
        .json()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let mut by_title: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    for student in &students {
        let id = student["id"].as_u64().unwrap_or_default();
        for grade in student["grades"].as_array().into_iter().flatten() {
            let title = grade["title"].as_str().unwrap_or_default().to_owned();
            let grade_id = grade["id"].as_u64().unwrap_or_default();
            by_title.entry(title).or_default().push((id, grade_id));
        }
    }
    Ok(by_title)
}

/// How acknowledged grades fared: (missing, duplicated), looked up on one grading instance.
pub async fn check_grades(base_url: &str, acked: &[String]) -> Result<(u64, u64), String> {
    let by_title = grades_by_title(base_url).await?;
    let missing = acked.iter().filter(|t| !by_title.contains_key(*t)).count();
    let duplicated = acked
        .iter()
        .filter(|t| by_title.get(*t).is_some_and(|copies| copies.len() > 1))
        .count();
    Ok((missing as u64, duplicated as u64))
}

/// The records of log data directories, read from their files as the store keeps them. A
/// complete line that does not parse is an error; an unterminated last line (a write in
/// progress, or torn) is counted apart, not taken for a record.
pub struct LogFiles {
    pub records: Vec<Value>,
    pub unterminated: usize,
}

impl LogFiles {
    pub fn read(dirs: &[&Path]) -> Result<LogFiles, String> {
        let mut files = LogFiles {
            records: Vec::new(),
            unterminated: 0,
        };
        for dir in dirs {
            let path = dir.join("records.jsonl");
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
            // After the last newline: empty, or a line not finished (yet).
            if !lines.pop().unwrap_or_default().is_empty() {
                files.unterminated += 1;
            }
            for (number, line) in lines.iter().enumerate() {
                let record: Value = serde_json::from_slice(line).map_err(|e| {
                    format!("{} line {}: not a record: {e}", path.display(), number + 1)
                })?;
                files.records.push(record);
            }
        }
        Ok(files)
    }

    /// The messages of every record.
    pub fn messages(&self) -> HashSet<String> {
        self.records
            .iter()
            .filter_map(|r| r["message"].as_str().map(str::to_owned))
            .collect()
    }
}

/// How many of `wanted` are missing from `found`.
pub fn missing(wanted: &[String], found: &HashSet<String>) -> u64 {
    wanted.iter().filter(|m| !found.contains(*m)).count() as u64
}

/// The message grading ships when it adds a grade.
pub fn grade_record(student: u64, grade: u64) -> String {
    format!("grade added student={student} grade={grade}")
}

/// The steady user load of the scenarios, each part bounded by its rate times `time`: portal
/// pages (2 x 40/s), grades through the portal's form (4 x 25/s), reads straight at grading
/// (2 x 40/s) and grades straight at grading (4 x 25/s), through the runner's discovery client.
/// Acknowledged grades are titled `{prefix}-portal-{n}` and `{prefix}-direct-{n}`.
pub fn user_loads(
    prefix: &str,
    portal: &ServiceProcess,
    grading: &ProviderPool,
    graded: &Acked,
    time: Duration,
) -> Vec<crate::load::Load> {
    use crate::load::Load;
    let bound = |per_second: u64, workers: u64| per_second * workers * time.as_secs().max(1);
    let http = client();
    let portal_url = portal.base_url();
    let prefix = prefix.to_owned();
    vec![
        {
            let (http, portal_url) = (http.clone(), portal_url.clone());
            Load::start("portal pages", 2, 40, bound(40, 2), time, move |n| {
                let (http, portal_url) = (http.clone(), portal_url.clone());
                async move { portal_page(&http, &portal_url, n).await }
            })
        },
        {
            let (http, portal_url, graded) = (http.clone(), portal_url.clone(), graded.clone());
            let prefix = prefix.clone();
            Load::start("portal grade forms", 4, 25, bound(25, 4), time, move |n| {
                let (http, portal_url, graded) = (http.clone(), portal_url.clone(), graded.clone());
                let title = format!("{prefix}-portal-{n}");
                async move { portal_grade(&http, &portal_url, &title, n, &graded).await }
            })
        },
        {
            let grading = grading.clone();
            Load::start("grading reads", 2, 40, bound(40, 2), time, move |n| {
                let grading = grading.clone();
                async move { grading_read(&grading, n).await }
            })
        },
        {
            let (grading, graded) = (grading.clone(), graded.clone());
            Load::start("grading grades", 4, 25, bound(25, 4), time, move |n| {
                let (grading, graded) = (grading.clone(), graded.clone());
                let title = format!("{prefix}-direct-{n}");
                async move { grading_grade(&grading, &title, n, &graded).await }
            })
        },
    ]
}

/// Adds the user loads' tallies to `outcome`: the figures of each, and the claim that none
/// failed.
pub fn report_user_loads(outcome: &mut crate::report::Outcome, tallies: &[crate::load::Tally]) {
    let user = crate::load::Tally::sum("user requests", tallies);
    outcome.requests += user.sent;
    outcome.failed += user.failed;
    for t in tallies {
        outcome.figure(format!("{}: {} sent, {} failed", t.name, t.sent, t.failed));
    }
    outcome.check(
        user.failed == 0,
        format!("{} user requests failed: {:?}", user.failed, user.failures),
    );
}

/// Checks that every acknowledged grade is stored exactly once; adds the missing ones to
/// `outcome.lost`.
pub async fn report_grades(
    outcome: &mut crate::report::Outcome,
    grading_url: &str,
    acked: &[String],
) {
    match check_grades(grading_url, acked).await {
        Ok((missing, duplicated)) => {
            outcome.figure(format!(
                "grades acknowledged: {}, missing {missing}, stored twice {duplicated}",
                acked.len()
            ));
            outcome.check(
                missing == 0,
                format!("{missing} acknowledged grades missing"),
            );
            outcome.check(duplicated == 0, format!("{duplicated} grades stored twice"));
            outcome.lost += missing;
        }
        Err(err) => outcome.check(false, err),
    }
}
