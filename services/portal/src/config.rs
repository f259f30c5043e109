//! The portal's settings: each a flag with an environment variable and a default that runs on a
//! laptop.

use service_runtime::ServiceArgs;
use service_runtime::live_config::Origins;

use crate::settings::PortalSettingsArgs;

/// The teachers' web app: students, grades, logs and service status as HTML pages, over the
/// `grading` and `log` services found through Consul; registers with Consul as `portal`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "portal", version, about, long_about = None, after_help = service_runtime::telemetry::ENV_HELP_SHIPPING,
    mut_arg("listen", |arg| arg.default_value("127.0.0.1:5000").required(false)))]
pub struct Config {
    /// Where it listens and what it advertises, its Consul agent, the host names it answers
    /// to and its connection limits.
    #[command(flatten)]
    pub service: ServiceArgs,

    /// Consul UI link on the status page, as a browser reaches it [default: the agent address + /ui/].
    #[arg(long, env = "GRADEBOOK_CONSUL_UI_URL")]
    pub consul_ui_url: Option<String>,

    /// IANA time zone of the times on the logs page, e.g. Europe/Paris.
    #[arg(long, env = "GRADEBOOK_TIME_ZONE", default_value = "UTC", value_parser = parse_time_zone)]
    pub time_zone: jiff::tz::TimeZone,

    /// What GET /status shows: `full` (each dependency's instances with addresses and ids, and
    /// the Consul UI link), `summary` (each dependency's state and instance count only), or
    /// `off` (404). Public deployments: summary or off, so the page maps no internal addresses.
    #[arg(long, env = "GRADEBOOK_STATUS", value_enum, default_value_t = StatusMode::Full)]
    pub status: StatusMode,

    /// The settings Consul KV can change while the portal runs.
    #[command(flatten)]
    pub settings: PortalSettingsArgs,

    /// Whether each live setting came from a flag, the environment or its default (`main`
    /// reads it from clap's matches; unknown when the config was built otherwise).
    #[arg(skip)]
    pub origins: Origins,
}

/// How much the status page shows; see `Config::status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusMode {
    Full,
    Summary,
    Off,
}

/// A zone of the tz database by name, so a typo stops the start rather than showing UTC.
fn parse_time_zone(name: &str) -> Result<jiff::tz::TimeZone, String> {
    jiff::tz::TimeZone::get(name).map_err(|_| {
        format!("{name:?} is not a time zone of the tz database (e.g. UTC, Europe/Paris)")
    })
}

impl Config {
    /// The configuration and where its live settings came from, as `main` reads them.
    pub fn from_matches(config: Config, matches: &clap::ArgMatches) -> Config {
        use service_runtime::live_config::Settings;
        let origins = Origins::from_matches(matches, crate::settings::PortalSettings::KEYS);
        Config { origins, ..config }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn help_lists_the_settings_read_only_from_the_environment() {
        let help = super::Config::command().render_help().to_string();
        assert!(help.contains("RUST_LOG"), "{help}");
        assert!(
            help.contains("GRADEBOOK_SHIP_LEVEL"),
            "only a service that ships its events names the ship level: {help}"
        );
    }

    #[test]
    fn listens_on_its_own_port_by_default() {
        let config = <super::Config as clap::Parser>::try_parse_from(["portal"]).unwrap();
        assert_eq!(config.service.listen.to_string(), "127.0.0.1:5000");
    }
}
