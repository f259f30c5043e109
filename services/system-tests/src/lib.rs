//! Starting the whole gradebook for end-to-end tests: the real binaries (built by
//! `cargo build --workspace --bins`, which `scripts/test.sh` does first) against a real Consul
//! agent, each on a free port, with data in a temporary directory.

pub mod compose;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use testkit::{ConsulAgent, ServiceProcess, free_port, workspace_binary};

/// How long the tests wait for something that should take milliseconds to a few seconds.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The services a test starts share one agent and one data directory.
pub struct Gradebook {
    pub consul: ConsulAgent,
    data: tempfile::TempDir,
}

impl Gradebook {
    /// A fresh agent and an empty data directory; no service is running yet.
    pub async fn new() -> Gradebook {
        Gradebook {
            consul: ConsulAgent::start().await,
            data: tempfile::tempdir().expect("a temporary data directory"),
        }
    }

    /// Like `new`, on an agent that enforces ACLs with `default_policy` `deny` and `master_token`
    /// (see `ConsulAgent::start_with_acl`); services then need their own tokens.
    pub async fn with_acl(master_token: &str) -> Gradebook {
        Gradebook {
            consul: ConsulAgent::start_with_acl(master_token).await,
            data: tempfile::tempdir().expect("a temporary data directory"),
        }
    }

    /// Like `with_acl`, on an agent with no master token, still to bootstrap (see
    /// `ConsulAgent::start_with_acl_to_bootstrap`).
    pub async fn with_acl_to_bootstrap() -> Gradebook {
        Gradebook {
            consul: ConsulAgent::start_with_acl_to_bootstrap().await,
            data: tempfile::tempdir().expect("a temporary data directory"),
        }
    }

    /// A data directory for one instance, kept across its restarts.
    pub fn data_dir(&self, instance: &str) -> PathBuf {
        self.data.path().join(instance)
    }

    async fn spawn(
        &self,
        binary: &str,
        port: u16,
        extra: &[String],
        rust_log: &str,
    ) -> ServiceProcess {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut args = vec!["--listen".to_owned(), addr.to_string()];
        args.extend_from_slice(extra);
        ServiceProcess::spawn(
            &workspace_binary(binary),
            addr,
            &args,
            &[
                ("CONSUL_HTTP_ADDR", self.consul.http_addr()),
                ("RUST_LOG", rust_log.to_owned()),
            ],
        )
        .await
    }

    /// A log instance on `port` keeping its records under `data_dir(instance)`.
    pub async fn start_log(&self, instance: &str, port: u16) -> ServiceProcess {
        let dir = data_arg(&self.data_dir(instance));
        self.spawn("log-service", port, &dir, "info").await
    }

    /// A grading instance on `port` keeping its database under `data_dir(instance)`; it logs
    /// each request it serves (at debug), so tests can see which instance got traffic.
    pub async fn start_grading(&self, instance: &str, port: u16) -> ServiceProcess {
        let dir = data_arg(&self.data_dir(instance));
        self.spawn(
            "grading-service",
            port,
            &dir,
            "info,service_runtime::runtime=debug",
        )
        .await
    }

    /// A portal on a free port.
    pub async fn start_portal(&self) -> ServiceProcess {
        self.spawn("portal", free_port(), &[], "info").await
    }

    /// Any of the binaries on `port` with `args` after `--listen`, and `envs` added to the
    /// agent address and `RUST_LOG=info`, for runs that need other data directories or settings
    /// (e.g. `GRADEBOOK_SHIP_LEVEL`).
    pub async fn start_with(
        &self,
        binary: &str,
        port: u16,
        args: &[String],
        envs: &[(&str, String)],
    ) -> ServiceProcess {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut all_args = vec!["--listen".to_owned(), addr.to_string()];
        all_args.extend_from_slice(args);
        let mut all_envs = vec![
            ("CONSUL_HTTP_ADDR", self.consul.http_addr()),
            ("RUST_LOG", "info".to_owned()),
        ];
        all_envs.extend(envs.iter().cloned());
        ServiceProcess::spawn(&workspace_binary(binary), addr, &all_args, &all_envs).await
    }
}

fn data_arg(dir: &Path) -> Vec<String> {
    vec!["--data-dir".to_owned(), dir.display().to_string()]
}

/// An HTTP client that does not follow redirects, so tests see the portal's 303s.
pub use testkit::redirect_showing_client as client;

/// How many requests for `path` (exactly) a grading instance has logged serving.
pub fn requests_served(grading: &ServiceProcess, path: &str) -> usize {
    let needle = format!("path=\"{path}\"");
    grading
        .output()
        .lines()
        .filter(|line| line.contains("request") && line.contains(&needle))
        .count()
}
