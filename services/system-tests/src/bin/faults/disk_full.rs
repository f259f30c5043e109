//! Scenario 5: the disk under the log service and grading fills up (a small tmpfs, filled with
//! a file), then space comes back. Claims: a write that does not fit gets a 5xx whose JSON
//! names the problem; no earlier record or grade is damaged; writes work again once space
//! returns, and both stores open cleanly after a restart. Also: a data directory on a
//! read-only filesystem stops a service at start with a clear message.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use system_tests::{Gradebook, client};
use testkit::{ServiceProcess, free_port, workspace_binary};

use crate::common::{self, Acked};
use crate::report::Outcome;

const TMPFS_SIZE: &str = "16m";
const MAX_TRIES: u64 = 5_000;

pub async fn run() -> Outcome {
    let mut outcome = Outcome::new(5, "disk full under log and grading");
    let disk = match Tmpfs::mount("faults-disk", &format!("size={TMPFS_SIZE}")) {
        Ok(disk) => disk,
        Err(reason) => {
            outcome.skipped = Some(reason);
            return outcome;
        }
    };
    let gradebook = Gradebook::new().await;
    let (log_dir, grading_dir) = (disk.path.join("log"), disk.path.join("grading"));
    let (log_port, grading_port) = (free_port(), free_port());
    let mut log = start(&gradebook, "log-service", log_port, &log_dir).await;
    let mut grading = start(&gradebook, "grading-service", grading_port, &grading_dir).await;
    let http = client();
    let (logged, graded) = (Acked::default(), Acked::default());
    for n in 0..200 {
        let message = format!("s5-before-{n}");
        outcome.requests += 1;
        if let Err(e) = common::instance_log_write(&http, &log.base_url(), &message, &logged).await
        {
            outcome.check(
                false,
                format!("a write before the disk filled up failed: {e}"),
            );
        }
    }
    for n in 0..50 {
        outcome.requests += 1;
        let title = format!("s5-before-{n}");
        if let Err(e) = common::instance_grade(&http, &grading.base_url(), &title, n, &graded).await
        {
            outcome.check(
                false,
                format!("a grade before the disk filled up failed: {e}"),
            );
        }
    }

    let filled = match fill(&disk.path.join("filler")) {
        Ok(bytes) => bytes,
        Err(err) => {
            outcome.check(false, format!("cannot fill the tmpfs: {err}"));
            return outcome;
        }
    };
    outcome.figure(format!(
        "tmpfs of {TMPFS_SIZE} filled with a {:.1} MiB file",
        filled as f64 / (1 << 20) as f64
    ));

    // Write until the disk refuses; the refusal must be a clear 5xx. Writes that still fit
    // (the last page of a file has room) are acknowledged like any other.
    let padding = "x".repeat(1_000);
    let log_refusal = write_until_refused(&mut outcome, "log", |n| {
        let (http, url, logged) = (http.clone(), log.base_url(), logged.clone());
        let message = format!("s5-full-{n}-{padding}");
        async move {
            let response = http
                .post(format!("{url}/log?service=faults"))
                .body(message.clone())
                .send()
                .await;
            let answer = answer(response).await?;
            if answer.0 == 201 {
                logged.push(message);
            }
            Ok(answer)
        }
    })
    .await;
    let grading_refusal = write_until_refused(&mut outcome, "grading", |n| {
        let (http, url, graded) = (http.clone(), grading.base_url(), graded.clone());
        let title = format!("s5-full-{n}");
        async move {
            let response = http
                .post(format!(
                    "{url}/students/{}/grades",
                    1 + n % common::STUDENTS
                ))
                .json(&json!({"title": title, "type": "Quiz", "score": 50}))
                .send()
                .await;
            let answer = answer(response).await?;
            if answer.0 == 201 {
                graded.push(title);
            }
            Ok(answer)
        }
    })
    .await;
    for (service, refusal) in [("log", &log_refusal), ("grading", &grading_refusal)] {
        match refusal {
            Some((status, body)) => {
                let error = body["error"].as_str().unwrap_or_default();
                outcome.figure(format!("{service} on a full disk: {status} {body}"));
                outcome.check(
                    (500..600).contains(status) && error.starts_with("disk full"),
                    format!("{service} answered a full disk with {status} {body}"),
                );
            }
            None => outcome.check(false, format!("{service} never refused a write")),
        }
    }
    check_healthy(&mut outcome, &[&log, &grading]).await;
    check_everything_there(&mut outcome, "while full", &log, &grading, &logged, &graded).await;

    // Space comes back: writes work again.
    if let Err(err) = std::fs::remove_file(disk.path.join("filler")) {
        outcome.check(false, format!("cannot remove the filler: {err}"));
    }
    let after = "s5-after-space-returned".to_owned();
    outcome.requests += 2;
    let wrote = common::instance_log_write(&http, &log.base_url(), &after, &logged).await;
    outcome.check(
        wrote.is_ok(),
        format!("log write after space returned: {wrote:?}"),
    );
    let added = common::instance_grade(&http, &grading.base_url(), &after, 0, &graded).await;
    outcome.check(
        added.is_ok(),
        format!("grade after space returned: {added:?}"),
    );

    // Both stores open cleanly and hold every acknowledged write.
    for process in [&mut log, &mut grading] {
        process.sigterm();
        process.wait_exit(Duration::from_secs(20)).await;
    }
    let log = start(&gradebook, "log-service", log_port, &log_dir).await;
    let grading = start(&gradebook, "grading-service", grading_port, &grading_dir).await;
    check_everything_there(
        &mut outcome,
        "after a restart",
        &log,
        &grading,
        &logged,
        &graded,
    )
    .await;
    outcome.acked = (logged.len() + graded.len()) as u64;
    drop((log, grading));

    unwritable_at_start(&mut outcome, &gradebook);
    outcome
}

async fn start(gradebook: &Gradebook, binary: &str, port: u16, dir: &Path) -> ServiceProcess {
    let args = ["--data-dir".to_owned(), dir.display().to_string()];
    gradebook.start_with(binary, port, &args, &[]).await
}

/// Status and JSON body of an answer.
async fn answer(
    response: Result<reqwest::Response, reqwest::Error>,
) -> Result<(u16, Value), String> {
    let response = response.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

/// Sends writes until one is not a 201; returns that answer.
async fn write_until_refused<F, Fut>(
    outcome: &mut Outcome,
    service: &str,
    write: F,
) -> Option<(u16, Value)>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<(u16, Value), String>>,
{
    for n in 0..MAX_TRIES {
        outcome.requests += 1;
        match write(n).await {
            Ok((201, _)) => continue,
            Ok(refusal) => {
                outcome.figure(format!(
                    "{service}: {n} more writes fitted before the first refusal"
                ));
                return Some(refusal);
            }
            Err(err) => {
                outcome.failed += 1;
                outcome.check(false, format!("{service}: a write failed outright: {err}"));
                return None;
            }
        }
    }
    None
}

async fn check_healthy(outcome: &mut Outcome, processes: &[&ServiceProcess]) {
    for process in processes {
        let url = format!("{}/health", process.base_url());
        let status = client().get(&url).send().await.map(|r| r.status().as_u16());
        outcome.check(
            matches!(status, Ok(200)),
            format!("GET {url} on a full disk: {status:?}"),
        );
    }
}

/// Every acknowledged record and grade is served, and nothing else of ours.
async fn check_everything_there(
    outcome: &mut Outcome,
    when: &str,
    log: &ServiceProcess,
    grading: &ServiceProcess,
    logged: &Acked,
    graded: &Acked,
) {
    let url = format!("{}/log?service=faults&limit=10000", log.base_url());
    let records: Result<Vec<Value>, String> = async {
        let response = client().get(&url).send().await.map_err(|e| e.to_string())?;
        response.json().await.map_err(|e| e.to_string())
    }
    .await;
    match records {
        Ok(records) => {
            let served: std::collections::HashSet<String> = records
                .iter()
                .filter_map(|r| r["message"].as_str().map(str::to_owned))
                .collect();
            let lost = common::missing(&logged.all(), &served);
            let extra = served.len() as u64 - (logged.len() as u64 - lost);
            outcome.figure(format!(
                "{when}: log serves {} records of the {} acknowledged, {extra} others",
                served.len(),
                logged.len()
            ));
            outcome.check(
                lost == 0,
                format!("{when}: {lost} acknowledged records lost"),
            );
            outcome.check(
                extra == 0,
                format!("{when}: {extra} records never acknowledged"),
            );
            outcome.lost = outcome.lost.max(lost);
        }
        Err(err) => outcome.check(false, format!("{when}: GET {url}: {err}")),
    }
    match common::check_grades(&grading.base_url(), &graded.all()).await {
        Ok((missing, duplicated)) => {
            outcome.figure(format!(
                "{when}: {} acknowledged grades, missing {missing}, stored twice {duplicated}",
                graded.len()
            ));
            outcome.check(missing + duplicated == 0, format!("{when}: grades damaged"));
        }
        Err(err) => outcome.check(false, format!("{when}: {err}")),
    }
}

/// A data directory on a read-only filesystem: each service must refuse to start, saying so.
fn unwritable_at_start(outcome: &mut Outcome, gradebook: &Gradebook) {
    let readonly = match Tmpfs::mount("faults-readonly", "size=1m,ro") {
        Ok(readonly) => readonly,
        Err(reason) => {
            outcome.figure(format!("read-only data directory not tried: {reason}"));
            return;
        }
    };
    for binary in ["log-service", "grading-service"] {
        let output = Command::new(workspace_binary(binary))
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--data-dir")
            .arg(readonly.path.join("data"))
            .env("CONSUL_HTTP_ADDR", gradebook.consul.http_addr())
            .output();
        match output {
            Ok(output) => {
                let text = String::from_utf8_lossy(&output.stderr);
                let line = text
                    .lines()
                    .find(|l| l.contains("cannot start"))
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                let clear = !output.status.success() && line.contains("Read-only file system");
                outcome.figure(format!(
                    "{binary} with its data directory on a read-only filesystem: {}, \"{}\"",
                    output.status,
                    line.split("ERROR").last().unwrap_or_default().trim()
                ));
                outcome.check(clear, format!("{binary} on a read-only disk: {text}"));
            }
            Err(err) => outcome.check(false, format!("cannot run {binary}: {err}")),
        }
    }
}

/// Fills the filesystem of `path` with one file until it refuses; returns the bytes written.
fn fill(path: &Path) -> std::io::Result<u64> {
    let mut file = std::fs::File::create(path)?;
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => return Ok(written),
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => return Ok(written),
            Err(e) => return Err(e),
        }
    }
}

/// A tmpfs mounted for the scenario (root only), unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(name: &str, options: &str) -> Result<Tmpfs, String> {
        let path = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            let _ = std::fs::remove_dir(&path);
            return Err(format!(
                "cannot mount a tmpfs (this needs root): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Tmpfs { path })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process still holding a file there must not keep the mount alive for ever.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}
