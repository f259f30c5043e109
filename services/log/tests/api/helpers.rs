//! What every API test of the log service starts from: the real app, built and run in this
//! process on port 0 against a real Consul agent.

use std::path::Path;

use clap::Parser;
use log_service::App;
use log_service::config::Config;
use testkit::{ConsulAgent, RunningApp};

/// Builds the log service on 127.0.0.1:0 with its records in `data_dir`, registered with
/// `agent`, and runs it on a task: the only place the API tests build the app.
pub async fn spawn_app(agent: &ConsulAgent, data_dir: &Path) -> RunningApp {
    let args = [
        "log-service".to_owned(),
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--consul-http-addr".to_owned(),
        agent.http_addr(),
        "--data-dir".to_owned(),
        data_dir.display().to_string(),
    ];
    let config = Config::try_parse_from(args).unwrap_or_else(|e| panic!("{e}"));
    let app = App::build(config)
        .await
        .unwrap_or_else(|e| panic!("the log service cannot start: {e}"));
    let addr = app.local_addr();
    RunningApp::spawn(addr, move |shutdown| app.run(shutdown))
}
