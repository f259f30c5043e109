//! The grading service's settings: each a flag with an environment variable and a default that
//! runs on a laptop.

use std::path::PathBuf;

use service_runtime::ServiceArgs;

/// Serves students and their grades as JSON from an embedded SQLite database (or PostgreSQL,
/// with --database-url); registers with
/// Consul as `grading` (tags `http`, `api`: `api.grading.service.consul` in DNS).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "grading-service", version, about, long_about = None, after_help = service_runtime::telemetry::ENV_HELP_SHIPPING,
    mut_arg("listen", |arg| arg.default_value("127.0.0.1:6100").required(false)))]
pub struct Config {
    /// Where it listens and what it advertises, its Consul agent, the host names it answers
    /// to and its connection limits.
    #[command(flatten)]
    pub service: ServiceArgs,

    /// Directory of the SQLite database (grading.sqlite3), created if missing; demo students are
    /// added when the database is new. Instances sharing it must run on one host.
    #[arg(long, env = "GRADEBOOK_DATA_DIR", default_value = "./data/grading")]
    pub data_dir: PathBuf,

    /// PostgreSQL server to use instead of SQLite, as postgres://USER:PASSWORD@HOST:PORT/DB: for
    /// instances on several hosts. The schema is created at start, demo students added when the
    /// database is new. Plain TCP, no TLS: keep it on a trusted network.
    #[arg(long, env = "GRADEBOOK_DATABASE_URL", value_name = "URL", value_parser = parse_database_url)]
    pub database_url: Option<tokio_postgres::Config>,

    /// What tells this instance's host from others sharing a SQLite data directory [default:
    /// the kernel's boot id]. Hidden: it exists so that tests can play instances on two hosts on
    /// one machine; set on a real deployment it can only defeat the guard.
    #[arg(long, env = "GRADEBOOK_HOST_ID", hide = true)]
    pub host_id: Option<String>,
}

/// Parses a PostgreSQL URL without echoing it: it may hold a password.
fn parse_database_url(url: &str) -> Result<tokio_postgres::Config, String> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|_| "not a PostgreSQL URL (postgres://USER:PASSWORD@HOST:PORT/DB)".to_owned())?;
    if config.get_hosts().is_empty() {
        return Err("the URL names no host".to_owned());
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    #[test]
    fn listens_on_its_own_port_by_default() {
        let config = <super::Config as clap::Parser>::try_parse_from(["grading-service"]).unwrap();
        assert_eq!(config.service.listen.to_string(), "127.0.0.1:6100");
    }
}
