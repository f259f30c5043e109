//! `grading-service`: telemetry, flags, build, run until SIGINT/SIGTERM, exit 0 (or 1 if it cannot start).

use std::process::ExitCode;

use grading_service::App;
use grading_service::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    service_runtime::telemetry::init_with_shipping(grading_service::SERVICE_NAME);
    let config: Config = discovery::consul::parse_settings();
    let shutdown = service_runtime::shutdown_signal();
    match App::build(config).await {
        Ok(app) => {
            app.run(shutdown).await;
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!("grading-service cannot start: {err}");
            ExitCode::FAILURE
        }
    }
}
