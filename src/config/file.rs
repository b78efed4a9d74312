//! The configuration file as written by operators: raw serde structs, strict (`deny_unknown_fields`).
//!
//! Nothing here is trusted or resolved; `validate` turns these into the runtime [`super::Config`].
//! Every field is optional unless the product cannot guess it; defaults live in `validate`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use super::units::{Rate, de_opt_duration, de_opt_rate, de_opt_size};

/// The whole file. `apps` and `users` are deserialised element by element (see `super::load`)
/// so that one bad entry does not hide the problems of the others.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub(crate) version: u32,
    pub(crate) listen: Option<ListenFile>,
    #[serde(default)]
    pub(crate) admin: AdminFile,
    #[serde(default)]
    pub(crate) tls: TlsFile,
    pub(crate) portal_host: Option<String>,
    /// The single sign-on portal's origin.
    pub(crate) portal_url: Option<String>,
    pub(crate) data_dir: Option<String>,
    pub(crate) state: Option<super::state::StateFile>,
    pub(crate) credentials: Option<super::credentials::CredentialsFile>,
    #[serde(default)]
    pub(crate) session: SessionFile,
    #[serde(default)]
    pub(crate) identity_assertion: IdentityAssertionFile,
    #[serde(default)]
    pub(crate) mail: MailFile,
    #[serde(default)]
    pub(crate) rate_limits: RateLimitsFile,
    pub(crate) audit: Option<AuditFile>,
    #[serde(default)]
    pub(crate) trusted_proxies: Vec<String>,
    #[serde(default)]
    pub(crate) strip_request_headers: Vec<String>,
    pub(crate) templates_dir: Option<String>,
    pub(crate) identity_providers: Option<Vec<IdentityProviderFile>>,
    pub(crate) temporary_authentication: Option<String>,
    /// Filled element by element by the loader.
    #[serde(skip)]
    pub(crate) users: Vec<Option<UserFile>>,
    pub(crate) directory: Option<DirectoryFile>,
    /// Filled element by element by the loader.
    #[serde(skip)]
    pub(crate) apps: Vec<Option<AppFile>>,
    #[serde(default)]
    pub(crate) limits: LimitsFile,
    #[serde(default)]
    pub(crate) log: LogFile,
    /// `service_tokens:` with nothing under it is no tokens.
    pub(crate) service_tokens: Option<Vec<ServiceTokenFile>>,
    pub(crate) service_token_key_file: Option<String>,
    #[serde(default)]
    pub(crate) service_token_headers: ServiceTokenHeadersFile,
}

/// One service token (docs/product.md#s4): its secret as a keyed hash (or a file holding the
/// secret itself), at most two valid during a rotation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceTokenFile {
    pub(crate) name: String,
    pub(crate) client_id: String,
    pub(crate) secret_hash: Option<OneOrMany>,
    pub(crate) previous_secret_hash: Option<String>,
    pub(crate) secret_file: Option<String>,
    /// RFC 3339 time; absent means no expiry.
    pub(crate) expires: Option<String>,
}

/// `secret_hash: H` or `secret_hash: [H1, H2]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The request headers that carry a service token.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceTokenHeadersFile {
    pub(crate) client_id: Option<String>,
    pub(crate) client_secret: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenFile {
    pub(crate) http: Option<String>,
    pub(crate) https: Option<String>,
    pub(crate) admin: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminFile {
    pub(crate) token_file: Option<String>,
    /// Inline token, for tests only; `token_file` is the production form.
    pub(crate) token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFile {
    #[serde(default)]
    pub(crate) certificates: Vec<CertFile>,
    #[serde(default)]
    pub(crate) self_signed: Vec<String>,
    /// Where generated development certificates are written (default `certs`).
    pub(crate) self_signed_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertFile {
    pub(crate) cert: String,
    pub(crate) key: String,
}

/// `identity_assertion`: the signed identity header (see `validate::assertion`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdentityAssertionFile {
    pub(crate) enabled: Option<bool>,
    pub(crate) header: Option<String>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub(crate) lifetime: Option<Duration>,
    pub(crate) keys_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionFile {
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub(crate) duration: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) keys_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MailFile {
    pub(crate) from: Option<String>,
    pub(crate) transport: Option<String>,
    pub(crate) password_file: Option<String>,
    /// Inline SMTP password, for tests only.
    pub(crate) password: Option<String>,
    pub(crate) queue_size: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitsFile {
    #[serde(default, deserialize_with = "de_opt_rate")]
    pub(crate) code_sends_per_address: Option<Rate>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub(crate) code_resend_cooldown: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_rate")]
    pub(crate) login_requests_per_ip: Option<Rate>,
    pub(crate) failed_logins_per_account: Option<u32>,
}

/// `audit: stdout` or `audit: { path: data/audit.log }`.
#[derive(Debug)]
pub(crate) enum AuditFile {
    Stdout,
    Path(String),
}

impl<'de> Deserialize<'de> for AuditFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct PathOnly {
            path: String,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Word(String),
            Map(PathOnly),
        }
        match Either::deserialize(d)
            .map_err(|_| de::Error::custom("expected `stdout` or `{ path: FILE }`"))?
        {
            Either::Word(w) if w == "stdout" => Ok(Self::Stdout),
            Either::Word(w) => Err(de::Error::custom(format!(
                "expected `stdout` or `{{ path: FILE }}`, found {w:?}"
            ))),
            Either::Map(m) => Ok(Self::Path(m.path)),
        }
    }
}

/// An identity provider in Cloudflare's API shape `{ type, name, config }`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub(crate) enum IdentityProviderFile {
    #[serde(rename = "onetimepin")]
    Pin {
        name: Option<String>,
        #[serde(default)]
        config: PinConfigFile,
    },
    #[serde(rename = "onetimelink")]
    Link {
        name: Option<String>,
        #[serde(default)]
        config: LinkConfigFile,
    },
    #[serde(rename = "onetimetoken")]
    Token {
        name: Option<String>,
        #[serde(default)]
        config: TokenConfigFile,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PinConfigFile {
    pub(crate) length: Option<u32>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub(crate) ttl: Option<Duration>,
    pub(crate) max_attempts: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LinkConfigFile {
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub(crate) ttl: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenConfigFile {
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub(crate) ttl: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub(crate) reissue_after: Option<Duration>,
    pub(crate) min_password_length: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserFile {
    pub(crate) id: String,
    pub(crate) temp_auth_email: Option<String>,
    #[serde(default)]
    pub(crate) groups: Vec<String>,
}

/// `directory`: LDAP / Active Directory sync.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DirectoryFile {
    pub(crate) url: String,
    #[serde(default)]
    pub(crate) starttls: bool,
    pub(crate) bind_dn: Option<String>,
    pub(crate) bind_password_file: Option<String>,
    /// Inline bind password, for tests only.
    pub(crate) bind_password: Option<String>,
    pub(crate) ca_file: Option<String>,
    pub(crate) users: DirectoryUsersFile,
    pub(crate) groups: Option<DirectoryGroupsFile>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub(crate) refresh: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub(crate) timeout: Option<Duration>,
    pub(crate) page_size: Option<u32>,
}

/// `directory.users`: where the user entries are and which attributes mean what.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DirectoryUsersFile {
    pub(crate) base: String,
    pub(crate) filter: Option<String>,
    pub(crate) id: Option<String>,
    pub(crate) temp_auth_email: Option<String>,
    pub(crate) member_of: Option<String>,
}

/// `directory.groups`: where the group entries are and how they list their members.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DirectoryGroupsFile {
    pub(crate) base: String,
    pub(crate) filter: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) member: Option<String>,
}

/// One protected app. `policies` are deserialised one by one by the loader.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppFile {
    pub(crate) name: String,
    pub(crate) hosts: Vec<String>,
    pub(crate) public_url: Option<String>,
    /// The `aud` of its identity assertions (default `otpgate:app:NAME`).
    pub(crate) audience: Option<String>,
    pub(crate) mode: Option<String>,
    pub(crate) upstream: Option<String>,
    pub(crate) upstream_ca: Option<String>,
    #[serde(default)]
    pub(crate) preserve_host: bool,
    pub(crate) upstream_protocol: Option<String>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub(crate) timeout: Option<Duration>,
    pub(crate) login_methods: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub(crate) session_duration: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_size")]
    pub(crate) max_request_body: Option<u64>,
    pub(crate) identity_headers: Option<IdentityHeadersFile>,
    #[serde(default)]
    pub(crate) policies: Vec<serde_json::Value>,
    /// Listed on the portal's app launcher (default true).
    pub(crate) launcher: Option<bool>,
}

/// `apps[].identity_headers`: the names the identity travels under; each one optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdentityHeadersFile {
    pub(crate) email: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) groups: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyFile {
    pub(crate) name: String,
    pub(crate) action: String,
    #[serde(default)]
    pub(crate) paths: Vec<String>,
    #[serde(default)]
    pub(crate) include: Vec<SelectorFile>,
    #[serde(default)]
    pub(crate) require: Vec<SelectorFile>,
    #[serde(default)]
    pub(crate) exclude: Vec<SelectorFile>,
}

/// A one-key map such as `{ email: a@b.example }`. Hand-written so that a typo reads
/// `unknown selector "emial"` rather than serde's generic enum message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SelectorFile {
    Everyone(bool),
    Email(String),
    EmailDomain(String),
    Group(String),
    Ip(String),
    LoginMethod(String),
    ServiceToken(String),
    AnyServiceToken(bool),
}

pub(crate) const SELECTOR_NAMES: &[&str] = &[
    "everyone",
    "email",
    "email_domain",
    "group",
    "ip",
    "login_method",
    "service_token",
    "any_service_token",
];

impl<'de> Deserialize<'de> for SelectorFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, serde_json::Value>::deserialize(d).map_err(|_| {
            de::Error::custom("a selector is a one-key map, like { email: a@b.example }")
        })?;
        let mut it = map.into_iter();
        let (Some((key, value)), None) = (it.next(), it.next()) else {
            return Err(de::Error::custom(
                "a selector is a one-key map, like { email: a@b.example }",
            ));
        };
        let text = |v: serde_json::Value| match v {
            serde_json::Value::String(s) => Ok(s),
            other => Err(de::Error::custom(format!(
                "selector {key:?} takes a string, found {other}"
            ))),
        };
        let flag = |v: serde_json::Value| match v {
            serde_json::Value::Bool(b) => Ok(b),
            other => Err(de::Error::custom(format!(
                "selector {key:?} takes true, found {other}"
            ))),
        };
        Ok(match key.as_str() {
            "everyone" => Self::Everyone(flag(value)?),
            "any_service_token" => Self::AnyServiceToken(flag(value)?),
            "service_token" => Self::ServiceToken(text(value)?),
            "email" => Self::Email(text(value)?),
            "email_domain" => Self::EmailDomain(text(value)?),
            "group" => Self::Group(text(value)?),
            "ip" => Self::Ip(text(value)?),
            "login_method" => Self::LoginMethod(text(value)?),
            _ => {
                return Err(de::Error::custom(format!(
                    "unknown selector {key:?} (known: {})",
                    SELECTOR_NAMES.join(", ")
                )));
            }
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsFile {
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub(crate) header_read_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub(crate) idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub(crate) tls_handshake_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_size")]
    pub(crate) max_header_bytes: Option<u64>,
    #[serde(default, deserialize_with = "de_opt_size")]
    pub(crate) max_request_body: Option<u64>,
    pub(crate) max_connections: Option<usize>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub(crate) shutdown_grace: Option<Duration>,
    pub(crate) runtime: Option<ServeRuntime>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogFile {
    pub(crate) format: Option<LogFormat>,
    pub(crate) level: Option<String>,
    pub(crate) access: Option<bool>,
}

/// How client connections on the app listeners are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServeRuntime {
    /// One work-stealing runtime with a worker per core, one listener.
    #[default]
    MultiThread,
    /// A single-threaded runtime per core, each accepting on its own `SO_REUSEPORT` listener:
    /// a connection's tasks never leave their thread.
    PerCore,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Human => "human",
            Self::Json => "json",
        })
    }
}
