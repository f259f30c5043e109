//! The log service's settings: each a flag with an environment variable and a default that runs
//! on a laptop.

use std::net::SocketAddr;
use std::path::PathBuf;

use discovery::ConsulArgs;
use service_runtime::{AllowedHostsArgs, ConnectionArgs};

/// Receives log records over HTTP and stores them durably; registers with Consul as `log`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "log-service", version, about, long_about = None, after_help = service_runtime::telemetry::ENV_HELP)]
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

    #[command(flatten)]
    pub connections: ConnectionArgs,

    #[command(flatten)]
    pub hosts: AllowedHostsArgs,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn help_lists_the_settings_read_only_from_the_environment() {
        let help = super::Config::command().render_help().to_string();
        assert!(help.contains("RUST_LOG"), "{help}");
        assert!(
            !help.contains("GRADEBOOK_SHIP_LEVEL"),
            "only a service that ships its events names the ship level: {help}"
        );
    }
}
