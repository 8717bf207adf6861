//! The `misiva` binary: parse the command line, load configuration, start
//! logging, and hand over to the library.

use clap::Parser;
use misiva::cli::{Cli, Command};
use misiva::config::{Config, LogFormat};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::ApnsSim(args) => {
            init_logs_from_env();
            misiva::sim::cli::run(*args).await
        }
        Command::Publish { file } => {
            init_logs_from_env();
            misiva::publish::run(cli.config, &file).await
        }
        Command::Run | Command::Topology => {
            let config = match Config::load(cli.config) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("misiva: configuration error: {e}");
                    return ExitCode::from(2);
                }
            };
            misiva::telemetry::init(&config.log, config.log_format);
            let result = match cli.command {
                Command::Topology => misiva::app::topology(&config).await,
                _ => misiva::app::run(config).await,
            };
            match result {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!(error = %e, "misiva stopped with an error");
                    e.exit_code()
                }
            }
        }
    };
    ExitCode::from(code as u8)
}

/// Commands that need no worker configuration still honour MISIVA_LOG.
fn init_logs_from_env() {
    let filter = std::env::var("MISIVA_LOG").unwrap_or_else(|_| "info".into());
    let format = match std::env::var("MISIVA_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        _ => LogFormat::Text,
    };
    misiva::telemetry::init(&filter, format);
}
