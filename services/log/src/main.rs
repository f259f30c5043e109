use std::process::ExitCode;

use log_service::App;
use log_service::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    service_runtime::telemetry::init();
    let config: Config = discovery::consul::parse_settings();
    let shutdown = service_runtime::shutdown_signal();
    match App::build(config).await {
        Ok(app) => {
            app.run(shutdown).await;
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!("log-service cannot start: {}", err.report());
            ExitCode::FAILURE
        }
    }
}
