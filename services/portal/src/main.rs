use std::process::ExitCode;

use portal::App;
use portal::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    service_runtime::telemetry::init_with_shipping(portal::SERVICE_NAME);
    let config: Config = discovery::consul::parse_settings();
    let shutdown = service_runtime::shutdown_signal();
    match App::build(config).await {
        Ok(app) => {
            app.run(shutdown).await;
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!("portal cannot start: {err}");
            ExitCode::FAILURE
        }
    }
}
