//! The `otpgate` command: parses the command line, loads the config, runs the gateway.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use otpgate::clock::SystemClock;
use otpgate::commands::{self, CommandError};
use otpgate::config::{self, LogFormat};
use otpgate::policy::LoginMethod;
use otpgate::random;

mod cli;

use cli::{
    AppsCommand, Cli, Command, KeysCommand, PolicyCommand, ServiceTokenCommand, SessionsCommand,
    StoreCommand, UsersCommand,
};

/// What an administrative command prints, or why it refused.
type CommandResult = Result<String, CommandError>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(&cli.config),
        Command::CheckConfig => Ok(check_config(&cli.config)),
        other => admin(&cli.config, other),
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
            let assertion = loaded.config.identity_assertion.as_ref();
            if let Some(a) = assertion {
                println!(
                    "identity assertion: header {}, lifetime {}s, keys {}",
                    a.header,
                    a.lifetime.as_secs(),
                    a.keys_file.display()
                );
            }
            if let Some(p) = &loaded.config.portal {
                println!("portal: {p} (single sign-on; the launcher is at {p}/)");
            }
            for a in &loaded.config.apps {
                match assertion {
                    Some(_) => println!("  {}: {}, audience {}", a.name, a.served(), a.audience),
                    None => println!("  {}: {}", a.name, a.served()),
                }
            }
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

/// The config, or `None` once its problems are printed.
fn load_or_report(path: &Path, env: Vec<(String, String)>) -> Option<config::Loaded> {
    match config::load(path, env) {
        Ok(l) => Some(l),
        Err(e) => {
            for p in &e.errors {
                eprintln!("error: {p}");
            }
            None
        }
    }
}

/// The administrative commands: load the config, run, print one result.
fn admin(path: &Path, command: Command) -> anyhow::Result<ExitCode> {
    let Some(loaded) = load_or_report(path, env()) else {
        return Ok(ExitCode::from(1));
    };
    let c = &loaded.config;
    // The store may be PostgreSQL, whose client is asynchronous.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let out = match command {
        Command::Policy { command } => runtime.block_on(policy(c, command)),
        Command::MintCookie {
            app,
            email,
            ttl,
            method,
        } => commands::mint_cookie(
            c,
            &app,
            &email,
            ttl,
            method,
            &SystemClock,
            &random::system(),
        ),
        Command::Sessions { command } => runtime.block_on(sessions(c, command)),
        Command::Users { command } => runtime.block_on(users(c, command)),
        Command::Store {
            command:
                StoreCommand::Copy {
                    from,
                    to,
                    data_dir,
                    from_password_file,
                    to_password_file,
                    force,
                },
        } => runtime.block_on(commands::store_copy(
            c,
            commands::Side {
                store: &from,
                password_file: from_password_file.as_deref(),
            },
            commands::Side {
                store: &to,
                password_file: to_password_file.as_deref(),
            },
            data_dir.as_deref(),
            force,
        )),
        Command::Keys { command } => keys(c, command),
        Command::ServiceToken { command } => service_token(c, command),
        Command::Apps {
            command: AppsCommand::List,
        } => commands::apps_list(c),
        Command::SendAuthEmail {
            users,
            groups,
            app,
            method,
            force,
        } => return send_auth_email(c, &users, &groups, app.as_deref(), method, force),
        Command::Serve | Command::CheckConfig => return Ok(ExitCode::from(2)),
    };
    Ok(print_result(out))
}

fn print_result(out: CommandResult) -> ExitCode {
    match out {
        Ok(text) => {
            println!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("otpgate: error: {}", chain(&e));
            ExitCode::from(1)
        }
    }
}

/// An error and its causes, `a: b: c`, each cause once (some messages include their cause).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

async fn policy(c: &config::Config, command: PolicyCommand) -> CommandResult {
    match command {
        PolicyCommand::Explain {
            app,
            email,
            service_token,
            path,
            ip,
            method,
        } => match (email, service_token) {
            (_, Some(token)) => commands::policy_explain_service(c, &app, &token, &path, ip),
            (Some(email), None) => {
                commands::policy_explain(c, &app, &email, &path, ip, method).await
            }
            (None, None) => Err(CommandError::Refused(
                "give --email or --service-token".into(),
            )),
        },
    }
}

fn service_token(c: &config::Config, command: ServiceTokenCommand) -> CommandResult {
    let random = random::system();
    match command {
        ServiceTokenCommand::Create { name, expires } => {
            commands::service_token_create(c, &name, expires, &SystemClock, random.as_ref())
        }
        ServiceTokenCommand::Rotate { name } => {
            commands::service_token_rotate(c, &name, &SystemClock, random.as_ref())
        }
    }
}

async fn sessions(c: &config::Config, command: SessionsCommand) -> CommandResult {
    match command {
        SessionsCommand::Revoke { user } => {
            commands::revoke_user(c, &user, &SystemClock, random::system().as_ref()).await
        }
    }
}

async fn users(c: &config::Config, command: UsersCommand) -> CommandResult {
    match command {
        UsersCommand::List => commands::users_list(c, &SystemClock).await,
        UsersCommand::Unlock { id } => {
            commands::unlock_user(c, &id, &SystemClock, random::system().as_ref()).await
        }
    }
}

fn keys(c: &config::Config, command: KeysCommand) -> CommandResult {
    match command {
        KeysCommand::List { jwt: false } => {
            commands::keys_list(c, &SystemClock, random::system().as_ref())
        }
        KeysCommand::List { jwt: true } => {
            commands::keys_list_jwt(c, &SystemClock, random::system().as_ref())
        }
        KeysCommand::Rotate { jwt: false } => {
            commands::keys_rotate(c, &SystemClock, random::system().as_ref())
        }
        KeysCommand::Rotate { jwt: true } => {
            commands::keys_rotate_jwt(c, &SystemClock, random::system().as_ref())
        }
        KeysCommand::Retire { id } => commands::keys_retire(c, &id),
    }
}

/// Mails now, so it needs a runtime; prints one line per user and exits 1 unless every user
/// was mailed.
fn send_auth_email(
    c: &config::Config,
    users: &[String],
    groups: &[String],
    app: Option<&str>,
    method: Option<LoginMethod>,
    force: bool,
) -> anyhow::Result<ExitCode> {
    // Delivery problems are logged by the mailer: show them on stderr, beside the
    // per-user lines on stdout.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let sent = runtime.block_on(commands::send_auth_email(
        c,
        users,
        groups,
        app,
        method,
        force,
        &SystemClock,
        &random::system(),
    ));
    Ok(match sent {
        Ok((lines, all_ok)) => {
            print!("{lines}");
            if all_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("otpgate: error: {e}");
            ExitCode::from(1)
        }
    })
}

fn serve(path: &Path) -> anyhow::Result<ExitCode> {
    let env = env();
    let Some(loaded) = load_or_report(path, env.clone()) else {
        return Ok(ExitCode::from(1));
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
        .map(|a| (a.name.clone(), a.served()))
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
        tracing::info!(app = %app.0, served = %app.1, "open {}/", runtime_app.origin);
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
    // Colours only on a terminal; a file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
    guard
}
