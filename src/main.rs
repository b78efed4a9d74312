//! The `otpgate` command: parses the command line, loads the config, runs the gateway.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use otpgate::config::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "otpgate",
    version,
    about = "Identity-aware reverse proxy with one-time PIN, link and temporary-password login"
)]
struct Cli {
    /// The config file.
    #[arg(long, global = true, env = "OTPGATE_CONFIG", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Validate the config file and print every problem with its key path.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(&cli.config),
        Command::CheckConfig => Ok(check_config(&cli.config)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("otpgate: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn env() -> Vec<(String, String)> {
    std::env::vars().collect()
}

fn check_config(path: &Path) -> ExitCode {
    match config::load(path, env()) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: ok ({} app(s))",
                path.display(),
                loaded.config.apps.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            for w in &e.warnings {
                eprintln!("warning: {w}");
            }
            for p in &e.errors {
                eprintln!("error: {p}");
            }
            ExitCode::from(1)
        }
    }
}

fn serve(path: &Path) -> anyhow::Result<ExitCode> {
    let env = env();
    let loaded = match config::load(path, env.clone()) {
        Ok(l) => l,
        Err(e) => {
            for p in &e.errors {
                eprintln!("error: {p}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    let _log_guard = init_logging(loaded.config.log.format, &loaded.config.log.level);
    for w in &loaded.warnings {
        tracing::warn!("config: {w}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(run(loaded.config, env))?;
    Ok(ExitCode::SUCCESS)
}

async fn run(config: config::Config, env: Vec<(String, String)>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let apps: Vec<(String, String)> = config
        .apps
        .iter()
        .map(|a| (a.name.clone(), a.upstream.to_string()))
        .collect();
    let running = otpgate::start(
        config,
        otpgate::Options {
            env,
            ..Default::default()
        },
    )
    .await?;
    let addrs = running.addrs();
    let show =
        |a: Option<std::net::SocketAddr>| a.map_or_else(|| "-".to_owned(), |a| a.to_string());
    tracing::info!(
        http = %show(addrs.http), https = %show(addrs.https), admin = %show(addrs.admin),
        "otpgate {} is serving", env!("CARGO_PKG_VERSION")
    );
    for (app, runtime_app) in apps.iter().zip(running.gateway().runtime().apps.iter()) {
        tracing::info!(app = %app.0, upstream = %app.1, "open {}/", runtime_app.origin);
    }
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match running.reload() {
                Ok(warnings) => {
                    for w in warnings {
                        tracing::warn!("config: {w}");
                    }
                    tracing::info!("configuration reloaded");
                }
                Err(otpgate::ReloadError::Config(e)) => {
                    for p in &e.errors {
                        tracing::error!("config: {p}");
                    }
                    tracing::error!("reload refused; the previous configuration keeps serving");
                }
                Err(e) => tracing::error!(error = %e, "reload refused; the previous configuration keeps serving"),
            },
        }
    }
    tracing::info!("shutting down: finishing in-flight requests");
    running.shutdown();
    running.wait().await;
    tracing::info!("stopped");
    Ok(())
}

fn init_logging(format: LogFormat, level: &str) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
    guard
}
