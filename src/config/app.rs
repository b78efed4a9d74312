//! The runtime types of the `apps` section: an app, the hosts it answers to, the origin users
//! see and where its requests go. Re-exported from [`super`], so users name them
//! `crate::config::AppConfig` and so on.

use std::fmt;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use super::AppMode;
use crate::policy::{LoginMethod, Policy};

/// A protected app.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Unique name; metric label and cookie audience.
    pub name: String,
    /// Host names it answers to.
    pub hosts: Vec<HostPattern>,
    /// The origin users see; `None` means the listener's own (scheme, first host, port).
    pub public_url: Option<Origin>,
    /// The `aud` claim of its identity assertions (default `otpgate:app:NAME`).
    pub audience: String,
    /// Proxied by the gateway, or behind a front proxy that asks `/.otpgate/auth`.
    pub mode: AppMode,
    /// Where requests go. With [`AppMode::ForwardAuth`] there is none to configure and this is
    /// `Echo`, never used: the pipeline does not proxy such apps.
    pub upstream: Upstream,
    /// Extra trust anchors for an HTTPS upstream.
    pub upstream_ca: Vec<CertificateDer<'static>>,
    /// Send the client's `Host` upstream instead of the upstream's authority.
    pub preserve_host: bool,
    /// The HTTP version spoken to the upstream.
    pub upstream_protocol: UpstreamProtocol,
    /// Time allowed for the upstream's response head.
    pub timeout: Duration,
    /// Login methods offered.
    pub login_methods: Vec<LoginMethod>,
    /// Session lifetime override.
    pub session_duration: Option<Duration>,
    /// Largest request body forwarded (`None`: unlimited).
    pub max_request_body: Option<u64>,
    /// Ordered access policies.
    pub policies: Vec<Policy>,
    /// The names the identity of a session travels under to the upstream.
    pub identity_headers: IdentityHeaders,
    /// Listed on the portal's app launcher.
    pub launcher: bool,
}

/// The HTTP version spoken to an app's upstream (`apps[].upstream_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 only, like nginx's `proxy_pass` (the default).
    #[default]
    Http1,
    /// HTTP/2 only: prior knowledge (h2c) for `http://`, ALPN `h2` for `https://`. Needed for
    /// gRPC.
    Http2,
    /// `https://`: HTTP/2 when the upstream offers it in ALPN, else HTTP/1.1; `http://`: HTTP/1.1.
    Auto,
}

impl UpstreamProtocol {
    /// `http1`, `http2` or `auto`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "http1" => Some(Self::Http1),
            "http2" => Some(Self::Http2),
            "auto" => Some(Self::Auto),
            _ => None,
        }
    }
}

/// The request headers carrying a session's identity upstream (`apps[].identity_headers`),
/// parsed at load time so no request builds a header name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeaders {
    /// The normalised address (default `X-Otpgate-Email`).
    pub email: http::HeaderName,
    /// The user id (default `X-Otpgate-User`).
    pub user: http::HeaderName,
    /// Comma-separated group names (default `X-Otpgate-Groups`).
    pub groups: http::HeaderName,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        Self {
            email: http::HeaderName::from_static("x-otpgate-email"),
            user: http::HeaderName::from_static("x-otpgate-user"),
            groups: http::HeaderName::from_static("x-otpgate-groups"),
        }
    }
}

/// A request header name to strip (`strip_request_headers`), compared ASCII
/// case-insensitively with `_` and `-` alike, as some servers treat them alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeaderPattern {
    /// The name (or prefix) in lower case, with `_` written as `-`; never empty.
    pub folded: String,
    /// Whether every name starting with `folded` matches (written with a trailing `*`).
    pub prefix: bool,
}

impl HeaderPattern {
    /// Parses `Name` or `Prefix-*`; `None` when it is not a header name (or a prefix of one).
    pub fn parse(text: &str) -> Option<Self> {
        let (name, prefix) = match text.strip_suffix('*') {
            Some(p) => (p, true),
            None => (text, false),
        };
        // `*` is a valid name character, but anywhere but last it would read as a wildcard.
        if name.contains('*') {
            return None;
        }
        http::HeaderName::from_bytes(name.as_bytes()).ok()?;
        Some(Self {
            folded: fold(name),
            prefix,
        })
    }

    /// Whether `name` (any case and `_`/`-` spelling) matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = fold(name);
        if self.prefix {
            name.starts_with(&self.folded)
        } else {
            name == self.folded
        }
    }
}

impl From<&http::HeaderName> for HeaderPattern {
    fn from(name: &http::HeaderName) -> Self {
        Self {
            folded: fold(name.as_str()),
            prefix: false,
        }
    }
}

impl fmt::Display for HeaderPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.folded)?;
        if self.prefix {
            f.write_str("*")?;
        }
        Ok(())
    }
}

/// A header name in the form names are compared in: lower case, `_` as `-`.
fn fold(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'_' => '-',
            b => char::from(b.to_ascii_lowercase()),
        })
        .collect()
}

/// A configured host name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Exactly this lower-case name or IP address.
    Exact(String),
    /// Any name ending in `.` + this suffix (written `*.suffix`).
    Wildcard(String),
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(h) => f.write_str(h),
            Self::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// A web origin: scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// `https` (else `http`).
    pub https: bool,
    /// Lower-case host; IPv6 literals without brackets.
    pub host: String,
    /// Port, explicit even when it is the scheme's default.
    pub port: u16,
}

impl Origin {
    /// The scheme's name.
    pub fn scheme(&self) -> &'static str {
        if self.https { "https" } else { "http" }
    }

    /// Whether the port is the scheme's default.
    pub fn default_port(&self) -> bool {
        self.port == if self.https { 443 } else { 80 }
    }

    /// `host[:port]` as it appears in a URL (port omitted when default).
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// Parses `scheme://host[:port][/]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text).map_err(|e| format!("invalid URL {text:?}: {e}"))?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(format!("scheme must be http or https, not {other:?}")),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not contain a user name or password".into());
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(
                "must be an origin only (scheme://host[:port]), without path, query or fragment"
                    .into(),
            );
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => return Err("missing host".into()),
        };
        let port = url
            .port_or_known_default()
            .unwrap_or(if https { 443 } else { 80 });
        Ok(Self { https, host, port })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme(), self.authority())
    }
}

/// Where an app's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// An HTTP or HTTPS server.
    Http {
        /// `https://` (else `http://`).
        https: bool,
        /// `host:port` for the request URI.
        authority: http::uri::Authority,
    },
    /// The built-in echo app, which shows the request (and identity headers) it received.
    Echo,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http { https, authority } => {
                write!(f, "{}://{authority}", if *https { "https" } else { "http" })
            }
            Self::Echo => f.write_str("builtin:echo"),
        }
    }
}
