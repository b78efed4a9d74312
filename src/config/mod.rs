//! Configuration: the YAML file of docs/product.md#s3 turned into a validated runtime [`Config`].
//!
//! Loading has stages, each reporting problems with the key path they concern:
//! 1. the file is read and parsed as YAML into a value tree (serde-saphyr: pure Rust, with
//!    resource budgets, instead of the archived serde_yaml);
//! 2. `OTPGATE_SECTION__KEY` environment overrides are applied to that tree ([`env`]);
//! 3. the tree is deserialised into strict file structs ([`file`]), apps, policies and users one
//!    by one so one bad entry does not hide the others;
//! 4. [`validate`] checks every value, reads secret and certificate files, resolves relative
//!    paths against the config file's folder and builds the runtime types.

mod app;
mod assertion;
mod credentials;
mod directory;
mod env;
mod file;
mod mode;
mod origin;
mod secret;
mod service_token;
mod state;
pub mod units;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use app::{
    AppConfig, HeaderPattern, HostPattern, IdentityHeaders, Origin, Upstream, UpstreamProtocol,
};
pub use assertion::{AssertionConfig, DEFAULT_ASSERTION_HEADER, MAX_ASSERTION_LIFETIME};
pub use credentials::{CredentialsConfig, PgSslMode, PostgresConfig, postgres_config};
pub use directory::{DirectoryConfig, DirectoryGroups, DirectoryUsers};
pub use file::{LogFormat, ServeRuntime};
pub use mode::AppMode;
pub use origin::BoundAddrs;
pub use secret::Secret;
pub use service_token::{
    CLIENT_ID_HEADER, CLIENT_SECRET_HEADER, HASH_PREFIX, ServiceTokenConfig, ServiceTokenSettings,
    TokenSecret,
};
pub use state::{RedisConfig, RedisTarget, StateConfig};
pub use units::Rate;
pub(crate) use validate::group_name as validate_group_name;
pub use validate::parse_service_token_hash;

use crate::email::Email;
use crate::policy::LoginMethod;

/// The config file used when `--config` is not given.
pub const DEFAULT_PATH: &str = "config/otpgate.yaml";

/// The only config version this build reads.
pub const VERSION: u32 = 1;

/// Longest session, minted cookie or password-login grant: sessions expire absolutely after at
/// most 30 days. Defined once so the bound the config accepts and the bounds the commands and
/// logins enforce cannot drift apart.
pub const MAX_SESSION: Duration = Duration::from_secs(30 * 86_400);

/// The validated configuration the gateway runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    /// Listener addresses.
    pub listen: Listen,
    /// Admin API settings.
    pub admin: AdminConfig,
    /// Certificates for the HTTPS listener.
    pub tls: TlsConfig,
    /// Folder of the embedded store, generated keys and the dev outbox.
    pub data_dir: PathBuf,
    /// Where codes, limits and cooldowns live (`state`).
    pub state: StateConfig,
    /// Where passwords, links, revocations and failure counts live (`credentials`).
    pub credentials: CredentialsConfig,
    /// Gateway session (cookie) settings.
    pub session: SessionConfig,
    /// The signed identity assertion; `None` when switched off.
    pub identity_assertion: Option<AssertionConfig>,
    /// Outgoing mail.
    pub mail: MailConfig,
    /// Login rate limits.
    pub rate_limits: RateLimits,
    /// Where audit events go.
    pub audit: AuditSink,
    /// Peers whose `X-Forwarded-For` / `-Proto` are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Request headers stripped on every app besides the built-in list (docs/security.md#40).
    pub strip_request_headers: Vec<HeaderPattern>,
    /// Optional folder of templates overriding the built-in pages and mails.
    pub templates_dir: Option<PathBuf>,
    /// Login methods and their settings.
    pub identity_providers: IdentityProviders,
    /// What `send-auth-email` mails by default.
    pub temporary_authentication: LoginMethod,
    /// Users hosted in the config file.
    pub users: Vec<UserConfig>,
    /// LDAP / Active Directory sync, when configured.
    pub directory: Option<DirectoryConfig>,
    /// Protected apps, in file order.
    pub apps: Vec<AppConfig>,
    /// Connection and request limits.
    pub limits: Limits,
    /// Logging.
    pub log: LogConfig,
    /// Service tokens and their headers.
    pub service_tokens: ServiceTokenSettings,
    /// The single sign-on portal's origin (`portal_url`), when there is one.
    pub portal: Option<Origin>,
}

/// Listener addresses; a missing one is not started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Plain HTTP.
    pub http: Option<SocketAddr>,
    /// HTTPS (HTTP/1.1 and HTTP/2 via ALPN).
    pub https: Option<SocketAddr>,
    /// Health, readiness, metrics and the admin API.
    pub admin: Option<SocketAddr>,
}

/// Admin API settings.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Bearer token for the admin API; without it the API answers 403.
    pub token: Option<Secret>,
}

/// Certificates of the HTTPS listener.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Loaded certificates; chosen by SNI, the first is the default.
    pub certificates: Vec<CertPair>,
    /// Names to cover with a generated self-signed certificate (development).
    pub self_signed: Vec<String>,
    /// Where the self-signed certificate is written.
    pub self_signed_dir: PathBuf,
}

/// A certificate chain and its key, read and parsed at load time.
#[derive(Clone)]
pub struct CertPair {
    /// The chain file.
    pub cert_path: PathBuf,
    /// The key file.
    pub key_path: PathBuf,
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl fmt::Debug for CertPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertPair")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish()
    }
}

/// Gateway session settings.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Absolute lifetime of a session (at most 30 days).
    pub duration: Duration,
    /// Inactivity limit (default 8 hours, at most the session duration).
    pub idle_timeout: Duration,
    /// The cookie keys file.
    pub keys_file: PathBuf,
}

/// Outgoing mail settings.
#[derive(Debug, Clone)]
pub struct MailConfig {
    /// The `From:` header.
    pub from: String,
    /// How mail leaves.
    pub transport: MailTransport,
    /// SMTP password.
    pub password: Option<Secret>,
    /// Capacity of the outgoing queue.
    pub queue_size: usize,
}

/// How mail leaves the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailTransport {
    /// Files in this folder (development).
    Outbox(PathBuf),
    /// An SMTP relay.
    Smtp {
        /// Relay host.
        host: String,
        /// Relay port.
        port: u16,
        /// Login name, if the relay wants one.
        username: Option<String>,
        /// Transport security.
        tls: SmtpTls,
    },
}

/// SMTP transport security.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// `smtp://`: STARTTLS, required.
    StartTls,
    /// `smtps://`: TLS from the first byte.
    Implicit,
    /// `smtp://...?tls=opportunistic`: STARTTLS when offered.
    Opportunistic,
    /// `smtp://...?tls=none`: cleartext, for a relay on the same host only.
    None,
}

/// Login rate limits (docs/security.md#16–#17, #26).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    /// PINs, links and temporary passwords mailed to one address.
    pub code_sends_per_address: Rate,
    /// Minimum time between two codes to one address.
    pub code_resend_cooldown: Duration,
    /// Email submissions and code or password attempts from one client address.
    pub login_requests_per_ip: Rate,
    /// Consecutive failures (from clients without the account's device cookie) after which an
    /// account is locked, for five minutes, doubling with each further lock up to an hour; at
    /// 100 until `users unlock`.
    pub failed_logins_per_account: u32,
}

/// Where audit events are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    /// Standard output, one JSON object per line.
    Stdout,
    /// A file, appended to, one JSON object per line.
    File(PathBuf),
}

/// The enabled login methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityProviders {
    /// One-time PIN.
    pub pin: Option<PinProvider>,
    /// One-time link.
    pub link: Option<LinkProvider>,
    /// Temporary password.
    pub token: Option<TokenProvider>,
}

impl IdentityProviders {
    /// Whether a method is enabled.
    pub fn enabled(&self, m: LoginMethod) -> bool {
        match m {
            LoginMethod::OneTimePin => self.pin.is_some(),
            LoginMethod::OneTimeLink => self.link.is_some(),
            LoginMethod::OneTimeToken => self.token.is_some(),
        }
    }
}

/// One-time PIN settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinProvider {
    /// Display name.
    pub name: String,
    /// Digits (6 to 10).
    pub length: u32,
    /// Lifetime (at most 10 minutes).
    pub ttl: Duration,
    /// Wrong guesses that burn a PIN (1 to 10).
    pub max_attempts: u32,
}

/// One-time link settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkProvider {
    /// Display name.
    pub name: String,
    /// Lifetime (at most 24 hours).
    pub ttl: Duration,
}

/// Temporary password settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenProvider {
    /// Display name.
    pub name: String,
    /// Lifetime (at most 24 hours).
    pub ttl: Duration,
    /// Minimum time between two temporary passwords for one user (at least 24 hours).
    pub reissue_after: Duration,
    /// Shortest password users may choose (8 to 64 characters; 12 by default).
    pub min_password_length: usize,
}

/// A user hosted in the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserConfig {
    /// The user id (an address, or a name when `temp_auth_email` is set).
    pub id: String,
    /// Where one-time links and temporary passwords go.
    pub temp_auth_email: Option<Email>,
    /// Group memberships.
    pub groups: Vec<String>,
}

/// Connection and request limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Time a client has to send a complete request head.
    pub header_read_timeout: Duration,
    /// Time an idle keep-alive connection is kept.
    pub idle_timeout: Duration,
    /// Time a client has to complete the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Largest request body forwarded (`None`: unlimited); apps may override.
    pub max_request_body: Option<u64>,
    /// Open client connections at most, per listener.
    pub max_connections: usize,
    /// Time in-flight requests get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// How the app listeners serve connections (read at start; a reload keeps it).
    pub runtime: ServeRuntime,
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Line format.
    pub format: LogFormat,
    /// Default filter (`RUST_LOG` wins when set).
    pub level: String,
    /// One line per proxied request.
    pub access: bool,
}

/// One problem found in the config, with the key path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path (`apps[1].policies[0].include[2]`) or, for overrides, the variable.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A config that could not be loaded: every error found, and the warnings seen on the way.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} problem(s) in the configuration: {}", .errors.len(), .errors.first().map(ToString::to_string).unwrap_or_default())]
pub struct ConfigError {
    /// Problems that make the file unusable.
    pub errors: Vec<Problem>,
    /// Things worth fixing that do not stop the gateway.
    pub warnings: Vec<Problem>,
}

/// A loaded config and its warnings.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The config.
    pub config: Config,
    /// Things worth fixing that do not stop the gateway.
    pub warnings: Vec<Problem>,
}

/// Loads and validates the config file at `path`, with `env` as the process environment
/// (only `OTPGATE_*` variables are looked at).
pub fn load(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        errors: vec![Problem {
            path: String::new(),
            message: format!("cannot read {}: {e}", path.display()),
        }],
        warnings: vec![],
    })?;
    load_str(&text, path, env)
}

/// Like [`load`], with the file's text given; `path` still decides how relative paths resolve.
pub fn load_str(
    text: &str,
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    let fail = |errors: Vec<Problem>| ConfigError {
        errors,
        warnings: vec![],
    };
    let mut doc: Value = serde_saphyr::from_str(text).map_err(|e| {
        fail(vec![Problem {
            path: String::new(),
            message: format!("{}: {e}", path.display()),
        }])
    })?;
    if !doc.is_object() {
        return Err(fail(vec![Problem {
            path: String::new(),
            message: format!(
                "{}: expected a mapping with `version: 1` at the top",
                path.display()
            ),
        }]));
    }
    let (applied, env_problems) = env::apply(&mut doc, env);
    let mut errors: Vec<Problem> = env_problems
        .into_iter()
        .map(|(var, message)| Problem { path: var, message })
        .collect();

    let file = typed(doc, &mut errors);
    let base = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let base = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    };
    let (config, warnings, more) = match file {
        Some(f) => validate::validate(f, path, &base),
        None => (None, vec![], vec![]),
    };
    errors.extend(more);
    // Name the variable when a problem sits on an overridden key.
    for p in &mut errors {
        if let Some(a) = applied
            .iter()
            .find(|a| p.path == a.path || p.path.starts_with(&format!("{}.", a.path)))
        {
            p.message.push_str(&format!(" (set by {})", a.var));
        }
    }
    match config {
        Some(config) if errors.is_empty() => Ok(Loaded { config, warnings }),
        _ => Err(ConfigError { errors, warnings }),
    }
}

/// Deserialises `value` as `T`, recording an error at `at` + the inner key path.
fn de_at<T: DeserializeOwned>(value: Value, at: &str, errors: &mut Vec<Problem>) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let path = match (at.is_empty(), inner.as_str()) {
                (_, ".") => at.to_owned(),
                (true, _) => inner,
                (false, i) if i.starts_with('[') => format!("{at}{i}"),
                (false, i) => format!("{at}.{i}"),
            };
            errors.push(Problem {
                path,
                message: e.into_inner().to_string(),
            });
            None
        }
    }
}

/// Stage 3: the value tree into file structs, list entries one by one.
fn typed(mut doc: Value, errors: &mut Vec<Problem>) -> Option<file::FileConfig> {
    let mut take_list = |key: &str, errors: &mut Vec<Problem>| -> Vec<Value> {
        match doc.as_object_mut().and_then(|m| m.remove(key)) {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(items)) => items,
            Some(other) => {
                errors.push(Problem {
                    path: key.into(),
                    message: format!("expected a list, found {}", kind(&other)),
                });
                vec![]
            }
        }
    };
    let apps = take_list("apps", errors);
    let users = take_list("users", errors);
    let mut file: file::FileConfig = de_at(doc, "", errors)?;
    file.users = users
        .into_iter()
        .enumerate()
        .map(|(i, v)| de_at(v, &format!("users[{i}]"), errors))
        .collect();
    file.apps = apps
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let at = format!("apps[{i}]");
            let app: Option<file::AppFile> = de_at(v, &at, errors);
            app
        })
        .collect();
    Some(file)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod directory_tests;
#[cfg(test)]
mod tests;
