//! The `crm-api` binary: parse configuration, set up logging, serve.

use clap::Parser;
use crm_api::config::Cli;
use crm_api::startup::Application;
use crm_api::telemetry;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let served = async {
        let settings = cli.into_settings(std::env::var("DATABASE_URL").ok())?;
        let application = Application::build(settings).await?;
        application.run_until_stopped().await?;
        anyhow::Ok(())
    };
    match served.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // One line, naming the problem and every cause.
            eprintln!("crm-api: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
