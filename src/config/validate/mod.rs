//! Stage 4: file structs → runtime [`Config`]. Collects every problem instead of stopping at the
//! first, reads secret and certificate files (so `check-config` finds a missing one), and
//! applies the bounds docs/security.md puts on logins.
//!
//! One file per section of the config file; this one holds the shared [`Ctx`], the entry point
//! and the small top-level keys.

mod app_mode;
mod apps;
mod assertion;
mod directory;
mod headers;
mod limits;
mod listen;
mod mail;
pub(super) mod policies;
mod portal;
mod service_tokens;
mod state;
mod users;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::file::{self, FileConfig};
use super::{AdminConfig, AuditSink, Config, LogConfig, Problem, Secret, VERSION};

pub(crate) use policies::group_name;
pub use service_tokens::parse_hash as parse_service_token_hash;

const DAY: Duration = Duration::from_secs(86_400);
const MINUTE: Duration = Duration::from_secs(60);

struct Ctx<'a> {
    base: &'a Path,
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
    /// Names of the valid service tokens, for the `service_token` selector.
    token_names: std::collections::HashSet<String>,
}

impl Ctx<'_> {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }
    /// Reads a secret from `file_key` (preferred) or inline `inline_key`.
    fn secret(
        &mut self,
        section: &str,
        file_val: Option<&str>,
        inline_val: Option<&str>,
        file_key: &str,
        inline_key: &str,
    ) -> Option<Secret> {
        match (file_val, inline_val) {
            (Some(_), Some(_)) => {
                self.err(
                    format!("{section}.{inline_key}"),
                    format!("set either {file_key} or {inline_key}, not both"),
                );
                None
            }
            (Some(f), None) => {
                let path = self.resolve(f);
                match std::fs::read_to_string(&path) {
                    Ok(text) => {
                        let value = text.trim_end_matches(['\r', '\n']).to_owned();
                        if value.is_empty() {
                            self.err(
                                format!("{section}.{file_key}"),
                                format!("{} is empty", path.display()),
                            );
                            None
                        } else {
                            Some(Secret::new(value))
                        }
                    }
                    Err(e) => {
                        self.err(
                            format!("{section}.{file_key}"),
                            format!("cannot read {}: {e}", path.display()),
                        );
                        None
                    }
                }
            }
            (None, Some(v)) => {
                self.warn(
                    format!("{section}.{inline_key}"),
                    format!("an inline secret is meant for tests; use {file_key} in deployments"),
                );
                if v.is_empty() {
                    self.err(format!("{section}.{inline_key}"), "is empty");
                    None
                } else {
                    Some(Secret::new(v))
                }
            }
            (None, None) => None,
        }
    }
    fn positive(&mut self, path: &str, d: Option<Duration>, default: Duration) -> Duration {
        let d = d.unwrap_or(default);
        if d.is_zero() {
            self.err(path, "must be longer than 0s");
        }
        d
    }
    /// Reads the PEM certificates of a CA file (`upstream_ca`, `directory.ca_file`); an empty or
    /// unreadable file is an error at `at`.
    fn trust_anchors(&mut self, at: &str, file: &str) -> Vec<CertificateDer<'static>> {
        let path = self.resolve(file);
        match CertificateDer::pem_file_iter(&path).and_then(Iterator::collect::<Result<Vec<_>, _>>)
        {
            Ok(v) if !v.is_empty() => return v,
            Ok(_) => self.err(at, format!("no certificate in {}", path.display())),
            Err(e) => self.err(
                at,
                format!("cannot read {}: {}", path.display(), pem_error(&e)),
            ),
        }
        Vec::new()
    }
}

/// Validates a parsed file. Returns the config (when there are no errors), warnings and errors.
pub(super) fn validate(
    f: FileConfig,
    file_path: &Path,
    base: &Path,
) -> (Option<Config>, Vec<Problem>, Vec<Problem>) {
    let mut c = Ctx {
        base,
        errors: vec![],
        warnings: vec![],
        token_names: std::collections::HashSet::new(),
    };

    refused_keys(&mut c, &f);
    let listen = listen::listen(&mut c, f.listen);
    let admin = admin(&mut c, &f.admin);
    let tls = listen::tls(&mut c, &f.tls, &listen);
    let data_dir = c.resolve(f.data_dir.as_deref().unwrap_or("data"));
    let state = state::state(&mut c, f.state);
    let credentials = state::credentials(&mut c, f.credentials);

    let session = limits::session(&mut c, &f.session, &data_dir);
    let identity_assertion =
        assertion::identity_assertion(&mut c, &f.identity_assertion, &session.keys_file);
    let mail = mail::mail(&mut c, f.mail, &data_dir);
    let rate_limits = limits::rate_limits(&mut c, &f.rate_limits);
    let audit = audit(&mut c, f.audit, &data_dir);
    let trusted_proxies = trusted_proxies(&mut c, &f.trusted_proxies);
    let strip_request_headers = headers::strip_request_headers(&mut c, &f.strip_request_headers);
    let templates_dir = templates_dir(&mut c, f.templates_dir.as_deref());

    let identity_providers = limits::identity_providers(&mut c, f.identity_providers);
    let temporary_authentication = limits::temporary_authentication(
        &mut c,
        f.temporary_authentication.as_deref(),
        &identity_providers,
    );

    let users = users::users(&mut c, f.users);
    let directory = f.directory.and_then(|d| directory::directory(&mut c, d));

    let service_tokens = service_tokens::service_tokens(
        &mut c,
        f.service_tokens.unwrap_or_default(),
        f.service_token_key_file.as_deref(),
        &f.service_token_headers,
        &data_dir,
    );
    // Policies may name only the tokens that exist.
    c.token_names = service_tokens
        .tokens
        .iter()
        .map(|t| t.name.clone())
        .collect();
    let limits = limits::limits(&mut c, &f.limits);
    let apps = apps::apps(&mut c, f.apps, &listen, &identity_providers, &limits);
    app_mode::front_proxies_trusted(&mut c, &apps, trusted_proxies.len());
    let log = log(&mut c, f.log);
    let portal = portal::portal(
        &mut c,
        f.portal_url.as_deref(),
        &listen,
        &trusted_proxies,
        &apps,
    );

    let config = c.errors.is_empty().then(|| Config {
        file: file_path.to_path_buf(),
        listen,
        admin,
        tls,
        data_dir,
        state,
        credentials,
        session,
        identity_assertion,
        mail,
        rate_limits,
        audit,
        trusted_proxies,
        strip_request_headers,
        templates_dir,
        identity_providers,
        temporary_authentication,
        users,
        directory,
        apps,
        limits,
        log,
        service_tokens,
        portal,
    });
    (config, c.warnings, c.errors)
}

/// Keys this version reads but refuses: a wrong version, and settings of features to come.
fn refused_keys(c: &mut Ctx<'_>, f: &FileConfig) {
    if f.version != VERSION {
        c.err(
            "version",
            format!("this build reads version {VERSION}, found {}", f.version),
        );
    }
    if f.portal_host.is_some() {
        c.err(
            "portal_host",
            "not available: the single sign-on portal is configured with portal_url (an origin)",
        );
    }
}

/// Where audit events go: `audit.log` in `data_dir` unless said otherwise.
fn audit(c: &mut Ctx<'_>, a: Option<file::AuditFile>, data_dir: &Path) -> AuditSink {
    match a {
        None => AuditSink::File(data_dir.join("audit.log")),
        Some(file::AuditFile::Stdout) => AuditSink::Stdout,
        Some(file::AuditFile::Path(p)) => AuditSink::File(c.resolve(&p)),
    }
}

fn admin(c: &mut Ctx<'_>, a: &file::AdminFile) -> AdminConfig {
    let admin = AdminConfig {
        token: c.secret(
            "admin",
            a.token_file.as_deref(),
            a.token.as_deref(),
            "token_file",
            "token",
        ),
    };
    if admin.token.as_ref().is_some_and(|t| t.expose().len() < 16) {
        c.err(
            "admin.token_file",
            "the admin token must be at least 16 characters",
        );
    }
    admin
}

fn trusted_proxies(c: &mut Ctx<'_>, list: &[String]) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        match parse_net(p) {
            Some(n) => out.push(n),
            None => c.err(
                format!("trusted_proxies[{i}]"),
                format!("expected an address or CIDR, found {p:?}"),
            ),
        }
    }
    out
}

fn templates_dir(c: &mut Ctx<'_>, dir: Option<&str>) -> Option<PathBuf> {
    let templates_dir = dir.map(|d| c.resolve(d));
    if let Some(d) = &templates_dir
        && !d.is_dir()
    {
        c.err("templates_dir", format!("{} is not a folder", d.display()));
    }
    templates_dir
}

fn log(c: &mut Ctx<'_>, l: file::LogFile) -> LogConfig {
    let log = LogConfig {
        format: l.format.unwrap_or_default(),
        level: l.level.unwrap_or_else(|| "info".into()),
        access: l.access.unwrap_or(true),
    };
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log.level) {
        c.err("log.level", format!("invalid filter {:?}: {e}", log.level));
    }
    log
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("{other:?}"),
    }
}

fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

/// A host name as DNS spells it: one or more LDH labels (so `localhost` is fine).
fn is_host_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

fn is_local(h: &str) -> bool {
    h == "localhost"
        || h.ends_with(".localhost")
        || h.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}
