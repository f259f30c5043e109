//! The grading service's settings: each a flag with an environment variable and a default that
//! runs on a laptop.

use std::net::SocketAddr;
use std::path::PathBuf;

use discovery::ConsulArgs;

/// Serves students and their grades as JSON from an embedded SQLite database; registers with
/// Consul as `grading` (tags `http`, `api`: `api.grading.service.consul` in DNS).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "grading-service", version, about, long_about = None, after_help = discovery::telemetry::ENV_HELP_SHIPPING)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "GRADEBOOK_LISTEN", default_value = "127.0.0.1:6100")]
    pub listen: SocketAddr,

    /// HOST:PORT that Consul and other services use to reach this instance [default: the listen address].
    #[arg(long, env = "GRADEBOOK_ADVERTISE")]
    pub advertise: Option<String>,

    /// Directory of the database (grading.sqlite3), created if missing; demo students are added
    /// when the database is new.
    #[arg(long, env = "GRADEBOOK_DATA_DIR", default_value = "./data/grading")]
    pub data_dir: PathBuf,

    /// Where the local Consul agent is and how to authenticate to it.
    #[command(flatten)]
    pub consul: ConsulArgs,
}
