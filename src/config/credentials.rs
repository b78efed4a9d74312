//! Where the durable data lives (`credentials:`): the embedded SQLite store in `data_dir`, or
//! PostgreSQL shared by every replica. The URL is parsed here so `check-config` can explain a
//! bad one and the store receives a target it only has to connect to.
//!
//! ```text
//! postgres://user@host[:5432][/db][?sslmode=disable|require|verify-full][&sslrootcert=FILE]
//! ```
//!
//! A password never goes in the URL (it would end up in logs and `ps` listings): the map form
//! `{ url, password_file }` carries it. `sslmode` defaults to `verify-full`.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;

use super::Secret;

/// `credentials:` as written: `embedded`, a URL, or `{ url, password_file }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum CredentialsFile {
    /// `embedded` or a URL.
    Word(String),
    /// A URL and the file holding the password.
    Map(CredentialsMapFile),
}

/// `{ url, password_file }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CredentialsMapFile {
    pub(crate) url: String,
    pub(crate) password_file: Option<String>,
}

/// The durable store's backend.
#[derive(Debug, Clone, Default)]
pub enum CredentialsConfig {
    /// SQLite in `data_dir` (one replica).
    #[default]
    Embedded,
    /// PostgreSQL, shared by every replica.
    Postgres(PostgresConfig),
}

impl CredentialsConfig {
    /// `embedded` or the URL as written (no secret in either).
    pub fn url(&self) -> &str {
        match self {
            Self::Embedded => "embedded",
            Self::Postgres(p) => &p.url,
        }
    }
}

/// How the connection to PostgreSQL is protected (`sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgSslMode {
    /// Plain TCP (loopback or a private network only).
    Disable,
    /// TLS without checking the server's certificate (protects against passive listeners only).
    Require,
    /// TLS, the certificate checked against the trust anchors and the host name.
    VerifyFull,
}

/// A PostgreSQL database and how to log in to it.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// The URL as written (no password in it), for messages.
    pub url: String,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Role to log in as.
    pub user: String,
    /// Database.
    pub dbname: String,
    /// The role's password, from `password_file`.
    pub password: Option<Secret>,
    /// TLS mode.
    pub ssl_mode: PgSslMode,
    /// Extra trust anchors (`sslrootcert`) for `verify-full`, beside the Mozilla and system roots.
    pub root_certs: Vec<CertificateDer<'static>>,
}

/// The parts of a credentials URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedPgUrl {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) dbname: String,
    pub(crate) ssl_mode: PgSslMode,
    /// `sslrootcert` as written (resolved by the caller).
    pub(crate) root_cert: Option<String>,
}

/// Parses a `postgres://` or `postgresql://` URL.
pub(crate) fn parse_postgres_url(text: &str) -> Result<ParsedPgUrl, String> {
    if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
        return Err(format!(
            "expected embedded or postgres://user@host/db, found {text:?}"
        ));
    }
    let url = url::Url::parse(text).map_err(|e| format!("not a valid URL: {e}"))?;
    if url.password().is_some() {
        return Err(
            "do not put a password in the URL: use { url: ..., password_file: FILE }".into(),
        );
    }
    let user = decode(url.username())?;
    if user.is_empty() {
        return Err("name the role to log in as: postgres://user@host/db".into());
    }
    let host = match url.host() {
        Some(url::Host::Ipv6(a)) => a.to_string(),
        Some(h) => h.to_string(),
        None => return Err("name the host: postgres://user@host/db".into()),
    };
    let port = url.port().unwrap_or(5432);
    if port == 0 {
        return Err("expected a port number, found 0".into());
    }
    let path = url.path().trim_start_matches('/');
    if path.contains('/') {
        return Err(format!("unexpected path in {text:?}"));
    }
    let dbname = if path.is_empty() {
        user.clone()
    } else {
        decode(path)?
    };
    if url.fragment().is_some() {
        return Err("a fragment (#...) has no meaning here".into());
    }
    let mut ssl_mode = PgSslMode::VerifyFull;
    let mut root_cert = None;
    for (k, v) in url.query_pairs() {
        match &*k {
            "sslmode" => {
                ssl_mode = match &*v {
                    "disable" => PgSslMode::Disable,
                    "require" => PgSslMode::Require,
                    "verify-full" => PgSslMode::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode must be disable, require or verify-full, found {other:?}"
                        ));
                    }
                };
            }
            "sslrootcert" => root_cert = Some(v.into_owned()),
            "password" => {
                return Err(
                    "do not put a password in the URL: use { url: ..., password_file: FILE }"
                        .into(),
                );
            }
            other => {
                return Err(format!(
                    "unsupported parameter {other:?} (sslmode and sslrootcert are)"
                ));
            }
        }
    }
    if root_cert.is_some() && ssl_mode != PgSslMode::VerifyFull {
        return Err("sslrootcert is used by sslmode=verify-full only".into());
    }
    Ok(ParsedPgUrl {
        host,
        port,
        user,
        dbname,
        ssl_mode,
        root_cert,
    })
}

/// A [`PostgresConfig`] from a URL given outside the config file (`store copy --to URL`):
/// `sslrootcert` is resolved against `base`.
pub fn postgres_config(
    url: &str,
    password: Option<Secret>,
    base: &std::path::Path,
) -> Result<PostgresConfig, String> {
    let p = parse_postgres_url(url)?;
    let root_certs = match &p.root_cert {
        None => Vec::new(),
        Some(file) => {
            let path = base.join(file);
            CertificateDer::pem_file_iter(&path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        }
    };
    Ok(PostgresConfig {
        url: url.to_owned(),
        host: p.host,
        port: p.port,
        user: p.user,
        dbname: p.dbname,
        password,
        ssl_mode: p.ssl_mode,
        root_certs,
    })
}

/// Percent-decodes a URL's user name or path.
fn decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let p =
            parse_postgres_url("postgres://otpgate@db.internal:6543/gate?sslmode=require").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.user.as_str(), p.dbname.as_str()),
            ("db.internal", 6543, "otpgate", "gate")
        );
        assert_eq!(p.ssl_mode, PgSslMode::Require);
        let p = parse_postgres_url("postgresql://gw@[::1]").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.dbname.as_str()),
            ("::1", 5432, "gw")
        );
        assert_eq!(p.ssl_mode, PgSslMode::VerifyFull, "the default verifies");
        let p = parse_postgres_url("postgres://a%40b@h/d?sslrootcert=ca.pem").unwrap();
        assert_eq!(p.user, "a@b");
        assert_eq!(p.root_cert.as_deref(), Some("ca.pem"));
    }

    #[test]
    fn bad_urls_are_explained() {
        for (url, says) in [
            ("postgres://u:pw@db/x", "password_file"),
            ("postgres://u@db/x?password=pw", "password_file"),
            ("postgres://db/x", "role"),
            ("postgres://u@db/x/y", "path"),
            ("postgres://u@db/x?sslmode=prefer", "sslmode"),
            ("postgres://u@db/x?connect_timeout=3", "unsupported"),
            (
                "postgres://u@db/x?sslmode=require&sslrootcert=c",
                "verify-full",
            ),
            ("mysql://u@db/x", "expected embedded"),
        ] {
            let e = parse_postgres_url(url).unwrap_err();
            assert!(e.contains(says), "{url}: {e}");
        }
    }
}
