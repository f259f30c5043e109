//! `portal`: telemetry, flags, build, run until SIGINT/SIGTERM, exit 0 (or 1 if it cannot start).

use std::process::ExitCode;

use portal::config::Config;
use portal::{App, LOG_SERVICE, SERVICE_NAME};
use service_runtime::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    let shipping = telemetry::init_with_shipping(SERVICE_NAME, LOG_SERVICE);
    let (config, matches) = discovery::consul::parse_settings_and_matches();
    let config = Config::from_matches(config, &matches);
    let shutdown = service_runtime::shutdown_signal();
    match App::build(config).await {
        Ok(app) => {
            app.with_shipping(shipping).run(shutdown).await;
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!("portal cannot start: {}", err.report());
            ExitCode::FAILURE
        }
    }
}
