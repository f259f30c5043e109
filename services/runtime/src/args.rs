//! The flags every service takes, flattened once into each binary's configuration: where it
//! listens and what it advertises, its Consul agent, the host names it answers to and its
//! connection limits.

use std::net::SocketAddr;

use discovery::consul::ConsulSettingsError;
use discovery::{ConsulArgs, ConsulSettings};

use crate::browser::AllowedHostsArgs;
use crate::runtime::ServiceDefinition;
use crate::server::ConnectionArgs;

/// The settings of a [`crate::Service`], each a flag with an environment variable.
///
/// `--listen` has no default here: each binary sets its own port, and one that forgets gets a
/// required flag rather than another service's port. The binary's `Config` does it with
/// `mut_arg("listen", |arg| arg.default_value("127.0.0.1:PORT").required(false))` in its
/// `#[command(...)]` (a default alone leaves the flag marked required).
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "GRADEBOOK_LISTEN")]
    pub listen: SocketAddr,

    /// HOST:PORT that Consul, other services and browsers use to reach this instance [default:
    /// the listen address].
    #[arg(long, env = "GRADEBOOK_ADVERTISE")]
    pub advertise: Option<String>,

    /// Where the local Consul agent is and how to authenticate to it.
    #[command(flatten)]
    pub consul: ConsulArgs,

    #[command(flatten)]
    pub connections: ConnectionArgs,

    #[command(flatten)]
    pub hosts: AllowedHostsArgs,
}

impl ServiceArgs {
    /// The definition of the service `name` these settings describe. Reads the Consul token file
    /// if one is named, so an unreadable one stops the start.
    pub fn definition(
        &self,
        name: &'static str,
        version: &'static str,
        tags: &[&str],
    ) -> Result<ServiceDefinition, ConsulSettingsError> {
        Ok(ServiceDefinition {
            name,
            version,
            tags: tags.iter().map(|tag| tag.to_string()).collect(),
            listen: self.listen,
            advertise: self.advertise.clone(),
            consul: ConsulSettings::from_args(&self.consul)?,
            allowed_hosts: self.hosts.allowed_hosts.clone(),
        })
    }
}
