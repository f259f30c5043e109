//! Where the local Consul agent is and how to authenticate to it.

use std::fmt;
use std::path::PathBuf;

use clap::ArgMatches;
use clap::parser::ValueSource;

/// The id clap gives [`ConsulArgs::token`] (its field name), to ask where its value came from.
const TOKEN_ARG: &str = "token";

/// The start-up warning for a token on the command line. It names the flag, never the token.
pub const TOKEN_FLAG_WARNING: &str = "the Consul ACL token was given with --consul-http-token: \
     every user of this host can read it in `ps`; give it in a file only this user can read \
     (CONSUL_HTTP_TOKEN_FILE) or in CONSUL_HTTP_TOKEN instead";

/// Command-line flags (each with Consul's own environment variable) that locate the agent.
#[derive(Clone, clap::Args)]
pub struct ConsulArgs {
    /// Address of the local Consul agent's HTTP API.
    #[arg(
        long = "consul-http-addr",
        env = "CONSUL_HTTP_ADDR",
        default_value = "http://127.0.0.1:8500"
    )]
    pub http_addr: String,

    /// ACL token sent to Consul as X-Consul-Token. Never logged. As a flag `ps` shows it to
    /// every local user: prefer the variable or a token file.
    #[arg(
        long = "consul-http-token",
        env = "CONSUL_HTTP_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// File holding the ACL token; used when no token is given directly.
    #[arg(long = "consul-http-token-file", env = "CONSUL_HTTP_TOKEN_FILE")]
    pub token_file: Option<String>,
}

impl fmt::Debug for ConsulArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulArgs")
            .field("http_addr", &self.http_addr)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .finish()
    }
}

/// Reads a service's settings from its command line and environment as `C::parse()` does (exiting
/// with clap's message on bad input), and warns when the Consul token came from the command line,
/// where any local user sees it. Call it after the telemetry is installed, so the warning shows.
pub fn parse_settings<C: clap::Parser>() -> C {
    parse_settings_and_matches().0
}

/// [`parse_settings`], also handing back clap's matches: they tell whether each value came from
/// a flag, the environment or the default (the live configuration shows it).
pub fn parse_settings_and_matches<C: clap::Parser>() -> (C, ArgMatches) {
    let matches = C::command().get_matches();
    if token_on_command_line(&matches) {
        tracing::warn!("{TOKEN_FLAG_WARNING}");
    }
    let settings = C::from_arg_matches_mut(&mut matches.clone())
        .unwrap_or_else(|e| e.format(&mut C::command()).exit());
    (settings, matches)
}

/// Whether a non-empty `--consul-http-token` was given as a flag rather than by its variable.
fn token_on_command_line(matches: &ArgMatches) -> bool {
    matches.value_source(TOKEN_ARG) == Some(ValueSource::CommandLine)
        && matches
            .get_one::<String>(TOKEN_ARG)
            .is_some_and(|token| !token.trim().is_empty())
}

/// A Consul ACL token. Its `Debug` and `Display` never show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The secret itself, for the one place that puts it in a header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Validated agent location and credentials.
#[derive(Debug, Clone)]
pub struct ConsulSettings {
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:8500`.
    pub address: String,
    /// ACL token, if any.
    pub token: Option<Token>,
}

/// Why the Consul settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConsulSettingsError {
    #[error(
        "CONSUL_HTTP_ADDR {0:?}: only http:// addresses are supported (no TLS client is built in)"
    )]
    UnsupportedScheme(String),
    #[error("CONSUL_HTTP_ADDR is empty")]
    EmptyAddress,
    #[error("cannot read CONSUL_HTTP_TOKEN_FILE {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ConsulSettings {
    /// Normalises the address the way Consul's own CLI does (a bare `host:port` means http) and
    /// reads the token file when no token was given directly.
    pub fn from_args(args: &ConsulArgs) -> Result<Self, ConsulSettingsError> {
        let raw = args.http_addr.trim().trim_end_matches('/');
        if raw.is_empty() {
            return Err(ConsulSettingsError::EmptyAddress);
        }
        let address = match raw.split_once("://") {
            None => format!("http://{raw}"),
            Some(("http", _)) => raw.to_owned(),
            Some(_) => return Err(ConsulSettingsError::UnsupportedScheme(raw.to_owned())),
        };
        let token = match (&args.token, &args.token_file) {
            (Some(token), _) if !token.trim().is_empty() => Some(Token(token.trim().to_owned())),
            // An empty variable means unset, as for Consul's own CLI.
            (_, Some(path)) if !path.trim().is_empty() => {
                let path = PathBuf::from(path);
                let text = std::fs::read_to_string(&path).map_err(|source| {
                    ConsulSettingsError::TokenFile {
                        path: path.clone(),
                        source,
                    }
                })?;
                Some(text.trim().to_owned())
                    .filter(|t| !t.is_empty())
                    .map(Token)
            }
            _ => None,
        };
        Ok(ConsulSettings { address, token })
    }

    /// Settings for an agent at `address` with no token, as tests and tools use them.
    pub fn local(address: impl Into<String>) -> Self {
        let args = ConsulArgs {
            http_addr: address.into(),
            token: None,
            token_file: None,
        };
        Self::from_args(&args).expect("an http address without a token file is always valid")
    }

    /// The configuration rs-consul needs for the same agent.
    pub(crate) fn rs_consul_config(&self) -> rs_consul::Config {
        rs_consul::Config {
            address: self.address.clone(),
            token: self.token.as_ref().map(|t| t.expose().to_owned()),
            ..Default::default()
        }
    }
}

/// The HTTP client of the agent API and the KV watches: its own pooled connections, never
/// through an HTTP proxy, Nagle off, a bounded connect.
pub(crate) fn agent_http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .connect_timeout(std::time::Duration::from_secs(2))
        .build()
        .expect("a plain HTTP client without TLS always builds")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn args(addr: &str) -> ConsulArgs {
        ConsulArgs {
            http_addr: addr.into(),
            token: None,
            token_file: None,
        }
    }

    #[test]
    fn a_bare_host_and_port_means_http() {
        let settings = ConsulSettings::from_args(&args("127.0.0.1:8500")).unwrap();
        assert_eq!(settings.address, "http://127.0.0.1:8500");
    }

    #[test]
    fn https_is_refused_with_a_clear_message() {
        let err = ConsulSettings::from_args(&args("https://consul:8501")).unwrap_err();
        assert!(err.to_string().contains("only http://"), "{err}");
    }

    #[test]
    fn the_token_file_is_read_and_trimmed_and_never_printed() {
        let dir = std::env::temp_dir().join(format!("token-test-{}", std::process::id()));
        std::fs::write(&dir, "s3cr3t\n").unwrap();
        let mut a = args("http://127.0.0.1:8500/");
        a.token_file = Some(dir.display().to_string());
        let settings = ConsulSettings::from_args(&a).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(settings.address, "http://127.0.0.1:8500");
        assert_eq!(settings.token.as_ref().unwrap().expose(), "s3cr3t");
        assert!(!format!("{settings:?}").contains("s3cr3t"));
    }

    #[test]
    fn an_empty_token_file_variable_means_unset_and_args_never_print_the_token() {
        let mut a = args("http://127.0.0.1:8500");
        a.token_file = Some(String::new());
        assert!(
            ConsulSettings::from_args(&a).unwrap().token.is_none(),
            "empty means unset"
        );
        a.token = Some("t0ken".into());
        assert!(!format!("{a:?}").contains("t0ken"));
    }

    /// A service's settings as the mains parse them: `ConsulArgs` flattened into its own.
    #[derive(clap::Parser)]
    struct ServiceSettings {
        #[command(flatten)]
        consul: ConsulArgs,
    }

    fn matches(argv: &[&str]) -> ArgMatches {
        ServiceSettings::command()
            .try_get_matches_from(argv)
            .expect("valid arguments")
    }

    #[test]
    fn a_token_is_on_the_command_line_only_when_given_as_a_non_empty_flag() {
        assert!(token_on_command_line(&matches(&[
            "svc",
            "--consul-http-token",
            "t0ken"
        ])));
        assert!(token_on_command_line(&matches(&[
            "svc",
            "--consul-http-token=t0ken"
        ])));
        assert!(!token_on_command_line(&matches(&[
            "svc",
            "--consul-http-token="
        ])));
        assert!(!token_on_command_line(&matches(&[
            "svc",
            "--consul-http-token-file",
            "/run/secrets/token"
        ])));
        assert!(!TOKEN_FLAG_WARNING.contains("t0ken"));
    }

    #[test]
    fn a_missing_token_file_is_an_error_naming_it() {
        let mut a = args("http://127.0.0.1:8500");
        a.token_file = Some("/nonexistent/token".into());
        let err = ConsulSettings::from_args(&a).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/token"), "{err}");
    }
}
