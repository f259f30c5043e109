//! What every API test of the portal starts from: the real app, built and run in this process
//! on port 0 against a real Consul agent.

use clap::{CommandFactory, FromArgMatches, Parser};
use portal::App;
use portal::config::Config;
use service_runtime::telemetry::Shipping;
use testkit::{ConsulAgent, RunningApp};

/// The portal's command line for a test: port 0, watching its dependencies through `agent`, then
/// `extra` flags.
fn args(agent: &ConsulAgent, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "portal".to_owned(),
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--consul-http-addr".to_owned(),
        agent.http_addr(),
    ];
    args.extend(extra.iter().map(|arg| arg.to_string()));
    args
}

/// Builds the app from `config` and runs it on a task, shipping its records when asked.
async fn run(config: Config, shipping: Option<Shipping>) -> RunningApp {
    let mut app = App::build(config)
        .await
        .unwrap_or_else(|e| panic!("the portal cannot start: {e}"));
    if let Some(shipping) = shipping {
        app = app.with_shipping(shipping);
    }
    let addr = app.local_addr();
    RunningApp::spawn(addr, move |shutdown| app.run(shutdown))
}

/// Builds the portal on 127.0.0.1:0, watching its dependencies through `agent`, and runs it on
/// a task: the only place the API tests build the app.
pub async fn spawn_app(agent: &ConsulAgent) -> RunningApp {
    let config = Config::try_parse_from(args(agent, &[])).unwrap_or_else(|e| panic!("{e}"));
    run(config, None).await
}

/// [`spawn_app`] with `extra` flags, read as `main` reads them: where each live setting came from
/// (flag, environment or default) is known.
pub async fn spawn_app_with(agent: &ConsulAgent, extra: &[&str]) -> RunningApp {
    let matches = Config::command()
        .try_get_matches_from(args(agent, extra))
        .unwrap_or_else(|e| panic!("{e}"));
    let config = Config::from_arg_matches(&matches).unwrap_or_else(|e| panic!("{e}"));
    run(Config::from_matches(config, &matches), None).await
}

/// [`spawn_app`] with its log records queued for shipping, as `main` runs it, so that its
/// shipping counters are there to see.
pub async fn spawn_app_shipping(agent: &ConsulAgent) -> RunningApp {
    let config = Config::try_parse_from(args(agent, &[])).unwrap_or_else(|e| panic!("{e}"));
    let shipping = service_runtime::telemetry::init_with_shipping("portal", "log");
    run(config, Some(shipping)).await
}
