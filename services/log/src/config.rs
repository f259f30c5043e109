//! The log service's settings: each a flag with an environment variable and a default that runs
//! on a laptop.

use std::path::PathBuf;

use service_runtime::ServiceArgs;

/// Receives log records over HTTP and stores them durably; registers with Consul as `log`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "log-service", version, about, long_about = None, after_help = service_runtime::telemetry::ENV_HELP,
    mut_arg("listen", |arg| arg.default_value("127.0.0.1:4000").required(false)))]
pub struct Config {
    /// Where it listens and what it advertises, its Consul agent, the host names it answers
    /// to and its connection limits.
    #[command(flatten)]
    pub service: ServiceArgs,

    /// Directory of the records file (records.jsonl); one instance per directory.
    #[arg(long, env = "GRADEBOOK_DATA_DIR", default_value = "./data/log")]
    pub data_dir: PathBuf,
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

    #[test]
    fn listens_on_its_own_port_by_default() {
        let config = <super::Config as clap::Parser>::try_parse_from(["log-service"]).unwrap();
        assert_eq!(config.service.listen.to_string(), "127.0.0.1:4000");
    }
}
