//! A real service binary started for a test.

use crate::{POLL, http_client, log_file, log_tail, read_log};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a service may take to answer `GET /health`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A service binary started for a test, with its output in a log file; killed when dropped so a
/// failing test leaves nothing running.
#[derive(Debug)]
pub struct ServiceProcess {
    child: Child,
    exit: Option<ExitStatus>,
    addr: SocketAddr,
    name: String,
    log: PathBuf,
    _dir: TempDir,
}

impl ServiceProcess {
    /// Runs `binary` with `args` verbatim and `envs` added to the environment, then waits (up to
    /// 20 s) until `GET http://<addr>/health` answers 200; panics with its output if it exits or
    /// the time passes first. `addr` is where the caller told it to listen.
    pub async fn spawn(
        binary: &Path,
        addr: SocketAddr,
        args: &[String],
        envs: &[(&str, String)],
    ) -> ServiceProcess {
        let mut process = ServiceProcess::start(binary, args, envs);
        process.addr = addr;
        process.wait_healthy().await;
        process
    }

    /// Like [`ServiceProcess::spawn`], but the service is told `--listen 127.0.0.1:0` and its
    /// address is read from the `serving … listen=ADDR` line it prints once bound, so no port
    /// is chosen before the service binds it (another process could take it in between). That
    /// line is at level info: `RUST_LOG` is `info` unless `envs` sets one that keeps it.
    pub async fn spawn_on_any_port(
        binary: &Path,
        args: &[String],
        envs: &[(&str, String)],
    ) -> ServiceProcess {
        let mut args = args.to_vec();
        args.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
        let mut envs = envs.to_vec();
        if !envs.iter().any(|(name, _)| *name == "RUST_LOG") {
            envs.push(("RUST_LOG", "info".to_owned()));
        }
        let mut process = ServiceProcess::start(binary, &args, &envs);
        let start = Instant::now();
        process.addr = loop {
            if let Some(addr) = bound_address(&process.output()) {
                break addr;
            }
            if let Some(status) = process.exited() {
                panic!(
                    "{} exited ({status}) before saying where it listens\n{}",
                    process.name,
                    process.tail()
                );
            }
            if start.elapsed() >= READY_TIMEOUT {
                panic!(
                    "{} did not say where it listens within {READY_TIMEOUT:?}\n{}",
                    process.name,
                    process.tail()
                );
            }
            tokio::time::sleep(POLL).await;
        };
        process.wait_healthy().await;
        process
    }

    /// Runs `binary` with its output in a fresh log file; its address is not known yet.
    fn start(binary: &Path, args: &[String], envs: &[(&str, String)]) -> ServiceProcess {
        let name = binary.file_name().unwrap_or(binary.as_os_str());
        let name = name.to_string_lossy().into_owned();
        let dir = tempfile::Builder::new()
            .prefix(&format!("testkit-{name}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a tempdir for {name}: {e}"));
        let (log, stdout, stderr) = log_file(dir.path(), "output.log");
        let child = Command::new(binary)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        ServiceProcess {
            child,
            exit: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            name,
            log,
            _dir: dir,
        }
    }

    /// Waits (up to 20 s) until `GET /health` answers 200; panics with the output if the
    /// process exits or the time passes first.
    async fn wait_healthy(&mut self) {
        let url = format!("{}/health", self.base_url());
        let client = http_client();
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                panic!(
                    "{} exited ({status}) before answering GET {url}\n{}",
                    self.name,
                    self.tail()
                );
            }
            let response = client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if response.is_ok_and(|r| r.status() == reqwest::StatusCode::OK) {
                eprintln!(
                    "{}: healthy after {} ms",
                    self.name,
                    start.elapsed().as_millis()
                );
                return;
            }
            if start.elapsed() >= READY_TIMEOUT {
                panic!(
                    "{} did not answer GET {url} with 200 within {READY_TIMEOUT:?}\n{}",
                    self.name,
                    self.tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The address the service listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `"http://127.0.0.1:<port>"`, the prefix for requests to the service.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process ID, e.g. to send it other signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the service to shut down gracefully (SIGTERM), as an orchestrator would; a no-op once
    /// it is known to have exited (its pid may belong to someone else by then).
    pub fn sigterm(&self) {
        if self.exit.is_some() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }

    /// Kills the service abruptly (SIGKILL), as a crash would, and waits for it to exit.
    pub fn sigkill(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }

    /// The exit status if the process has exited, without waiting: to check it is still running.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Waits up to `timeout` for the process to exit and returns its status, e.g. after
    /// `sigterm`; panics with its output if it is still running then.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            if start.elapsed() >= timeout {
                panic!(
                    "{} still running after {timeout:?}\n{}",
                    self.name,
                    self.tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The process's output so far (stdout and stderr interleaved), for assertions and messages.
    pub fn output(&self) -> String {
        read_log(&self.log)
    }

    /// The last lines of the output, for failure messages.
    fn tail(&self) -> String {
        log_tail(&self.log)
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The address in a service's `serving … listen=ADDR` line (the runtime logs it once bound).
fn bound_address(output: &str) -> Option<SocketAddr> {
    output
        .lines()
        .filter(|line| line.contains(" serving"))
        .find_map(|line| {
            let (_, rest) = line.split_once("listen=")?;
            rest.split_whitespace().next()?.parse().ok()
        })
}

#[cfg(test)]
mod tests {
    use super::bound_address;

    #[test]
    fn the_bound_address_is_read_from_the_serving_line() {
        let output = "2026-11-30T06:00:00Z  INFO discovery::runtime: serving service=\"log\" listen=127.0.0.1:41234\n";
        assert_eq!(bound_address(output), Some(([127, 0, 0, 1], 41234).into()));
        assert_eq!(bound_address("INFO starting listen=soon\n"), None);
    }
}
