//! The command line's shape: every command, its arguments and their parsers (clap derive).
//! What each command does is in `main.rs` and `otpgate::commands`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use otpgate::config;
use otpgate::policy::LoginMethod;

#[derive(Debug, Parser)]
#[command(
    name = "otpgate",
    version,
    about = "Identity-aware reverse proxy with one-time PIN, link and temporary-password login"
)]
pub(crate) struct Cli {
    /// The config file.
    #[arg(long, global = true, env = "OTPGATE_CONFIG", default_value = config::DEFAULT_PATH)]
    pub(crate) config: PathBuf,
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
    /// The credentials store (passwords, links, revocations, failure counts).
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// The protected apps.
    Apps {
        #[command(subcommand)]
        command: AppsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum StoreCommand {
    /// Copy every record from one store into another (`embedded` or a postgres:// URL); the
    /// target must be empty unless --force, which replaces its contents. Prints the counts.
    Copy {
        /// `embedded` or postgres://user@host/db?sslmode=...
        #[arg(long)]
        from: String,
        /// `embedded` or postgres://user@host/db?sslmode=...
        #[arg(long)]
        to: String,
        /// The embedded store's folder (default: the config's data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The password of the --from database (default: the config's credentials
        /// password_file when the URL is the config's).
        #[arg(long)]
        from_password_file: Option<PathBuf>,
        /// The password of the --to database (default as for --from-password-file).
        #[arg(long)]
        to_password_file: Option<PathBuf>,
        /// Replace the contents of a target that is not empty.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AppsCommand {
    /// Each app with its hosts, origin, assertion audience and launcher flag, and the portal.
    List,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ServiceTokenCommand {
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
pub(crate) enum PolicyCommand {
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
pub(crate) enum SessionsCommand {
    /// End every session of a user ("log out everywhere").
    Revoke {
        /// A user id or address.
        #[arg(long)]
        user: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum UsersCommand {
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
pub(crate) enum KeysCommand {
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
