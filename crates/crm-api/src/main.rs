//! The `crm-api` binary: parse configuration, set up logging, serve (or migrate, or
//! adopt the Node.js service's data).

use clap::Parser;
use crm_api::config::{Cli, Command, LogFormat};
use crm_api::{startup, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut cli = Cli::parse();
    let log_format = cli.log_format;
    telemetry::init(log_format);
    let command = cli.command.take().unwrap_or(Command::Serve);
    let outcome = async {
        let settings = cli.into_settings(std::env::var("DATABASE_URL").ok())?;
        match command {
            Command::Serve => {
                startup::Application::build(settings)
                    .await?
                    .run_until_stopped()
                    .await?
            }
            Command::Migrate => startup::migrate(&settings).await?,
            Command::Adopt { check } => println!("{}", startup::adopt(&settings, check).await?),
            Command::Backup { to } => println!("{}", startup::backup(&settings, to).await?),
        }
        anyhow::Ok(())
    };
    if let Err(error) = outcome.await {
        // One line naming the problem and every cause, in the format of the other lines.
        match log_format {
            LogFormat::Text => eprintln!("crm-api: {error:#}"),
            LogFormat::Json => tracing::error!(error = %format!("{error:#}"), "crm-api stopped"),
        }
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
