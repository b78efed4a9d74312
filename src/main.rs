//! The `otpgate` command: parses the command line, loads the config, runs the gateway.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use otpgate::clock::SystemClock;
use otpgate::commands::{self, CommandError};
use otpgate::config::{self, LogFormat};
use otpgate::policy::LoginMethod;
use otpgate::random;

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
    /// Explain policy decisions.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Print a valid gateway cookie (`NAME=VALUE`) for scripts and load tests (audited).
    MintCookie {
        /// The app the cookie is for.
        #[arg(long)]
        app: String,
        /// The address the session belongs to.
        #[arg(long)]
        email: String,
        /// Lifetime (default: the app's session duration; at most 30d).
        #[arg(long, value_parser = duration)]
        ttl: Option<Duration>,
        /// The login method recorded in the session.
        #[arg(long, default_value = "onetimepin", value_parser = method)]
        method: LoginMethod,
    },
    /// "Send Authentication Email": mail a one-time link or a temporary password to users and
    /// the members of groups now; prints one line per user (`sent`, `skipped (sent within
    /// 24h)`, `no address`).
    SendAuthEmail {
        /// A user id (or an address); repeat for more.
        #[arg(long = "user", value_name = "ID", required_unless_present = "groups")]
        users: Vec<String>,
        /// Every member of a group; repeat for more.
        #[arg(long = "group", value_name = "NAME")]
        groups: Vec<String>,
        /// The app named in the mail (default: the first app offering the method).
        #[arg(long)]
        app: Option<String>,
        /// `link` or `token` (default: the config's `temporary_authentication`).
        #[arg(long, value_parser = auth_method)]
        method: Option<LoginMethod>,
        /// Send a temporary password even if one went out within `reissue_after` (audited).
        #[arg(long)]
        force: bool,
    },
    /// Session administration.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// User administration.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Cookie key administration.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Service tokens for scripts and load testers.
    ServiceToken {
        #[command(subcommand)]
        command: ServiceTokenCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ServiceTokenCommand {
    /// Print a new client id and secret (once) and the list item to paste under
    /// `service_tokens:` (holding only the secret's keyed hash).
    Create {
        /// The token's name (what policies' `service_token:` and the upstream see).
        name: String,
        /// Lifetime, like 90d (default: no expiry).
        #[arg(long, value_parser = duration)]
        expires: Option<Duration>,
    },
    /// Print a new secret (once) for an existing token's client id, and the entry listing the
    /// new and the old secret's hashes, both valid until the old one is removed.
    Rotate {
        /// The token's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Which policy decides a request, and why.
    Explain {
        /// The app.
        #[arg(long)]
        app: String,
        /// Who is asking.
        #[arg(
            long,
            required_unless_present = "service_token",
            conflicts_with = "service_token"
        )]
        email: Option<String>,
        /// Ask as the (valid) service token of this name instead of a person.
        #[arg(long, value_name = "NAME")]
        service_token: Option<String>,
        /// The request path.
        #[arg(long, default_value = "/")]
        path: String,
        /// The client address.
        #[arg(long, default_value = "127.0.0.1")]
        ip: IpAddr,
        /// The login method of the session.
        #[arg(long, default_value = "onetimepin", value_parser = method)]
        method: LoginMethod,
    },
}

#[derive(Debug, Subcommand)]
enum SessionsCommand {
    /// End every session of a user ("log out everywhere").
    Revoke {
        /// A user id or address.
        #[arg(long)]
        user: String,
    },
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// List users (config and directory): id, mail address for temporary authentication,
    /// groups, source, password, lock.
    List,
    /// Clear a user's failed-login count and lock.
    Unlock {
        /// A user id or address.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// List the cookie keys.
    List {
        /// The identity-assertion signing keys instead.
        #[arg(long)]
        jwt: bool,
    },
    /// Add a new current key; older keys stay valid.
    Rotate {
        /// Rotate the identity-assertion signing key instead (the previous one stays
        /// published for an hour).
        #[arg(long)]
        jwt: bool,
    },
    /// Remove a key that is not current; cookies sealed with it stop working.
    Retire {
        /// The key id.
        id: String,
    },
}

/// What an administrative command prints, or why it refused.
type CommandResult = Result<String, CommandError>;

fn duration(s: &str) -> Result<Duration, String> {
    config::units::parse_duration(s)
}

fn method(s: &str) -> Result<LoginMethod, String> {
    LoginMethod::parse(s).ok_or_else(|| {
        format!("unknown login method {s:?} (onetimepin, onetimelink or onetimetoken)")
    })
}

fn auth_method(s: &str) -> Result<LoginMethod, String> {
    match s {
        "link" | "onetimelink" => Ok(LoginMethod::OneTimeLink),
        "token" | "onetimetoken" => Ok(LoginMethod::OneTimeToken),
        _ => Err(format!("expected link or token, found {s:?}")),
    }
}

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
    let out = match command {
        Command::Policy { command } => policy(c, command),
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
        Command::Sessions { command } => sessions(c, command),
        Command::Users { command } => users(c, command),
        Command::Keys { command } => keys(c, command),
        Command::ServiceToken { command } => service_token(c, command),
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
            eprintln!("otpgate: error: {e}");
            ExitCode::from(1)
        }
    }
}

fn policy(c: &config::Config, command: PolicyCommand) -> CommandResult {
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
            (Some(email), None) => commands::policy_explain(c, &app, &email, &path, ip, method),
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

fn sessions(c: &config::Config, command: SessionsCommand) -> CommandResult {
    match command {
        SessionsCommand::Revoke { user } => block_on(commands::revoke_user(
            c,
            &user,
            &SystemClock,
            random::system().as_ref(),
        )),
    }
}

fn users(c: &config::Config, command: UsersCommand) -> CommandResult {
    match command {
        UsersCommand::List => block_on(commands::users_list(c, &SystemClock)),
        UsersCommand::Unlock { id } => block_on(commands::unlock_user(
            c,
            &id,
            &SystemClock,
            random::system().as_ref(),
        )),
    }
}

/// Runs a command that may talk to the shared state (Redis) on a runtime of its own.
fn block_on(f: impl std::future::Future<Output = CommandResult>) -> CommandResult {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => Err(commands::CommandError::Refused(format!(
            "cannot start the runtime: {e}"
        ))),
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
