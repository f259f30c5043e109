//! The log service's settings: each a flag with an environment variable and a default that runs
//! on a laptop.

use std::net::SocketAddr;
use std::path::PathBuf;

use discovery::ConsulArgs;

/// Receives log records over HTTP and stores them durably; registers with Consul as `log`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "log-service", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "GRADEBOOK_LISTEN", default_value = "127.0.0.1:4000")]
    pub listen: SocketAddr,

    /// HOST:PORT that Consul and other services use to reach this instance [default: the listen address].
    #[arg(long, env = "GRADEBOOK_ADVERTISE")]
    pub advertise: Option<String>,

    /// Directory of the records file (records.jsonl); one instance per directory.
    #[arg(long, env = "GRADEBOOK_DATA_DIR", default_value = "./data/log")]
    pub data_dir: PathBuf,

    #[command(flatten)]
    pub consul: ConsulArgs,
}
