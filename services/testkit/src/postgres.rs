//! A real PostgreSQL server per test, on a free port with its own data directory.

use crate::{POLL, exited_while_starting, free_port, log_file, log_tail, read_log};
use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a server may take to accept connections (initdb is separate and not counted).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a fast shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Starts tried when the port turns out to be taken.
const BIND_ATTEMPTS: u32 = 10;
/// What the server logs once it accepts connections, and when its port is taken.
const READY: &str = "database system is ready to accept connections";
const PORT_TAKEN: &str = "Address already in use";
/// The superuser initdb creates; connections from 127.0.0.1 are trusted, so no password.
const SUPERUSER: &str = "postgres";
/// The database `url` names, created empty by `start`.
const DATABASE: &str = "gradebook";
/// The system user that runs the server when tests run as root (PostgreSQL refuses root).
const SYSTEM_USER: &str = "postgres";

/// A real PostgreSQL server (`postgres` from `$PG_BIN` or `/usr/lib/postgresql/*/bin`) on a free
/// port of 127.0.0.1, with its data, socket and log in a tempdir; stopped when dropped.
#[derive(Debug)]
pub struct Postgres {
    child: Option<Child>,
    port: u16,
    bin: PathBuf,
    dir: TempDir,
    log: PathBuf,
    /// Uid and gid the server runs as when the tests run as root.
    run_as: Option<(u32, u32)>,
    databases: usize,
}

impl Postgres {
    /// Initialises a data directory, starts the server and creates the empty database that
    /// [`Postgres::url`] names. When PostgreSQL is not installed the test cannot run: under
    /// `CI=true` that fails it; otherwise this prints a loud warning and returns `None`, and the
    /// caller returns early (the test passes without having run).
    pub async fn start() -> Option<Postgres> {
        let bin = match postgres_bin_dir() {
            Ok(bin) => bin,
            Err(why) if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
                panic!("CI=true but PostgreSQL cannot run: {why}")
            }
            Err(why) => {
                eprintln!(
                    "\n*** WARNING: {why}: this PostgreSQL test did NOT run (it fails under CI=true) ***\n"
                );
                return None;
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("testkit-postgres-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a tempdir for PostgreSQL: {e}"));
        let run_as = system_user_if_root();
        if let Some((uid, gid)) = run_as {
            chown(dir.path(), uid, gid);
        }
        let mut server = Postgres {
            child: None,
            port: free_port(),
            log: dir.path().join("postgres.log"),
            bin,
            dir,
            run_as,
            databases: 0,
        };
        server.initdb();
        if let Err(e) = server.launch_retrying(true).await {
            panic!("PostgreSQL did not start: {e}");
        }
        server.create_database_named(DATABASE).await;
        Some(server)
    }

    /// `postgres://postgres@127.0.0.1:<port>/gradebook`: the database created at start.
    pub fn url(&self) -> String {
        self.url_of(DATABASE)
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates another empty database on this server and returns its URL, for a test that
    /// needs several.
    pub async fn create_database(&mut self) -> String {
        self.databases += 1;
        let name = format!("{DATABASE}_{}", self.databases);
        self.create_database_named(&name).await;
        self.url_of(&name)
    }

    /// The server's output so far (its current run), for failure messages.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Stops the server as `pg_ctl stop -m fast` does (SIGINT: connections are closed, the
    /// data kept) and waits for it to exit: an outage for services using it.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        let start = Instant::now();
        while let Ok(None) = child.try_wait() {
            if start.elapsed() >= STOP_TIMEOUT {
                eprintln!(
                    "PostgreSQL on port {}: no fast shutdown, killing it",
                    self.port
                );
                crate::kill_and_reap(&mut child).await;
                break;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Starts the server again on the same port and data (every committed row is still there),
    /// waiting until it accepts connections; retries while the OS still holds the port.
    pub async fn start_again(&mut self) {
        self.stop().await;
        if let Err(e) = self.launch_retrying(false).await {
            panic!("PostgreSQL did not start again: {e}");
        }
    }

    /// Stops the server and starts it again, as an operator restarting it would.
    pub async fn restart(&mut self) {
        self.start_again().await;
    }

    fn url_of(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command for one of the server's programs, run as the system user when we are root.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.current_dir(self.dir.path()).stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Creates the data directory: trusted local connections, no fsync (a test's data need not
    /// survive a power cut; the server's own fsync stays on).
    fn initdb(&self) {
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run initdb in {}: {e}", self.bin.display()));
        assert!(
            output.status.success(),
            "initdb failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    async fn create_database_named(&self, name: &str) {
        let mut command = self.command("createdb");
        command.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            SUPERUSER,
            name,
        ]);
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap_or_else(|e| panic!("createdb task failed: {e}"))
            .unwrap_or_else(|e| panic!("cannot run createdb: {e}"));
        assert!(
            output.status.success(),
            "createdb {name} failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            log_tail(&self.log)
        );
    }

    /// Launches the server, trying again while the port is taken: on a new port if
    /// `new_port`, else on the same one after a pause.
    async fn launch_retrying(&mut self, new_port: bool) -> Result<(), String> {
        let mut attempt = 1;
        loop {
            match self.launch().await {
                Err(e) if e.contains(PORT_TAKEN) && attempt < BIND_ATTEMPTS => {
                    eprintln!("PostgreSQL: port {} is taken, retrying", self.port);
                    if new_port {
                        self.port = free_port();
                    } else {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// Spawns the server and waits until its log says it accepts connections.
    async fn launch(&mut self) -> Result<(), String> {
        let (log, stdout, stderr) = log_file(self.dir.path(), "postgres.log");
        self.log = log;
        let mut command = self.command("postgres");
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(["-c", "shared_buffers=16MB", "-c", "fsync=on"])
            .stdout(stdout)
            .stderr(stderr);
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of ours. If the test
        // process dies without dropping us (SIGKILL), the server gets SIGQUIT (immediate
        // shutdown) instead of running on.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run postgres in {}: {e}", self.bin.display()));
        self.child = Some(child);

        let start = Instant::now();
        loop {
            if let Some(why) = exited_while_starting(&mut self.child, &self.log) {
                return Err(why);
            }
            if read_log(&self.log).contains(READY) {
                let ms = start.elapsed().as_millis();
                eprintln!("PostgreSQL on port {}: ready after {ms} ms", self.port);
                return Ok(());
            }
            if start.elapsed() >= READY_TIMEOUT {
                self.stop().await;
                return Err(format!(
                    "not ready after {READY_TIMEOUT:?}\n{}",
                    log_tail(&self.log)
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // Immediate shutdown: the data directory is deleted right after anyway.
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill(2) has no memory-safety preconditions; the pid is our unreaped child.
                unsafe { libc::kill(pid, libc::SIGQUIT) };
            }
            let _ = child.wait();
        }
    }
}

/// The directory of PostgreSQL's server programs: `$PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian keeps them off `PATH`).
fn postgres_bin_dir() -> Result<PathBuf, String> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("PG_BIN").filter(|dir| !dir.is_empty()) {
        let dir = PathBuf::from(dir);
        return if has_server(&dir) {
            Ok(dir)
        } else {
            Err(format!(
                "PG_BIN={} has no initdb and postgres",
                dir.display()
            ))
        };
    }
    let versions = std::fs::read_dir("/usr/lib/postgresql").map_err(|_| {
        "PostgreSQL is not installed (no /usr/lib/postgresql; apt-get install postgresql, or set PG_BIN)"
            .to_owned()
    })?;
    versions
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
        .ok_or_else(|| "no /usr/lib/postgresql/*/bin has initdb and postgres (apt-get install postgresql, or set PG_BIN)".to_owned())
}

/// The uid and gid of the `postgres` system user when this process is root (initdb and
/// postgres refuse to run as root), else `None`.
fn system_user_if_root() -> Option<(u32, u32)> {
    // SAFETY: getuid(2) has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return None;
    }
    let name = CString::new(SYSTEM_USER).expect("a constant without NUL");
    // SAFETY: getpwnam returns NULL or a pointer to a static record, read at once and not kept.
    let record = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !record.is_null(),
        "running as root, and PostgreSQL refuses root, but there is no {SYSTEM_USER} user to run it as \
         (Debian's postgresql package creates it)"
    );
    // SAFETY: checked non-NULL above.
    let record = unsafe { &*record };
    Some((record.pw_uid, record.pw_gid))
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("cannot give {} to {SYSTEM_USER}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// psql's run of a query on the test database, as a user of the server would make it.
    fn run_psql(server: &Postgres, sql: &str) -> std::process::Output {
        server
            .command("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &server.port.to_string(),
                "-U",
                SUPERUSER,
            ])
            .args(["-d", DATABASE, "-At", "-c", sql])
            .output()
            .expect("psql runs")
    }

    /// Rows of a query, through psql, as a user of the server would check.
    fn psql(server: &Postgres, sql: &str) -> String {
        let output = run_psql(server, sql);
        assert!(
            output.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    #[tokio::test]
    async fn a_server_keeps_its_data_across_a_restart_and_makes_fresh_databases() {
        let Some(mut server) = Postgres::start().await else {
            return;
        };
        assert!(
            server
                .url()
                .ends_with(&format!(":{}/gradebook", server.port()))
        );
        psql(
            &server,
            "CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)",
        );

        server.stop().await;
        let refused = run_psql(&server, "SELECT 1");
        assert!(!refused.status.success(), "a stopped server answered");
        server.start_again().await;
        assert_eq!(psql(&server, "SELECT n FROM kept"), "42");

        let other = server.create_database().await;
        assert!(other.ends_with("/gradebook_1"), "{other}");
        assert_ne!(server.create_database().await, other);
    }
}
