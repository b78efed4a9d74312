//! Stage 4: file structs → runtime [`Config`]. Collects every problem instead of stopping at the
//! first, reads secret and certificate files (so `check-config` finds a missing one), and
//! applies the bounds SECURITY.md puts on logins.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::file::{self, FileConfig, SelectorFile};
use super::{
    AdminConfig, AppConfig, AuditSink, CertPair, Config, DirectoryConfig, DirectoryGroups,
    DirectoryUsers, HostPattern, IdentityProviders, Limits, LinkProvider, Listen, LogConfig,
    MAX_SESSION, MailConfig, MailTransport, PinProvider, Problem, RateLimits, Secret,
    SessionConfig, SmtpTls, TlsConfig, TokenProvider, Upstream, UserConfig, VERSION, de_at,
    units::Rate,
};
use crate::email::{Email, is_dns_domain};
use crate::policy::{self, Action, LoginMethod, Policy, Selector};

const DAY: Duration = Duration::from_secs(86_400);
const MINUTE: Duration = Duration::from_secs(60);

struct Ctx<'a> {
    base: &'a Path,
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
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
    };

    if f.version != VERSION {
        c.err(
            "version",
            format!("this build reads version {VERSION}, found {}", f.version),
        );
    }

    let listen = listen(&mut c, f.listen);
    let admin = AdminConfig {
        token: c.secret(
            "admin",
            f.admin.token_file.as_deref(),
            f.admin.token.as_deref(),
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
    let tls = tls(&mut c, &f.tls, &listen);

    if f.portal_host.is_some() {
        c.err(
            "portal_host",
            "single sign-on through a portal host is not available in this version yet",
        );
    }
    let data_dir = c.resolve(f.data_dir.as_deref().unwrap_or("data"));
    match f.state.as_deref() {
        None | Some("memory") => {}
        Some(s) if s.starts_with("redis://") || s.starts_with("rediss://") => c.err(
            "state",
            "shared state in Redis is not available in this version yet; use memory",
        ),
        Some(s) => c.err(
            "state",
            format!("expected memory or redis://host:port/db, found {s:?}"),
        ),
    }
    match f.credentials.as_deref() {
        None | Some("embedded") => {}
        Some(s) if s.starts_with("postgres://") || s.starts_with("postgresql://") => c.err(
            "credentials",
            "credentials in PostgreSQL are not available in this version yet; use embedded",
        ),
        Some(_) => c.err("credentials", "expected embedded or postgres://..."),
    }

    let session_duration = c.positive("session.duration", f.session.duration, DAY);
    if session_duration > MAX_SESSION {
        c.err("session.duration", "must be at most 30d (SECURITY.md 30)");
    }
    // SECURITY.md 30: sessions also end after inactivity; on by default.
    let idle_timeout = f
        .session
        .idle_timeout
        .unwrap_or_else(|| session_duration.min(8 * 3600 * Duration::from_secs(1)));
    if idle_timeout.is_zero() || idle_timeout > session_duration {
        c.err(
            "session.idle_timeout",
            "must be above 0s and at most session.duration",
        );
    }
    let session = SessionConfig {
        duration: session_duration,
        idle_timeout,
        keys_file: f
            .session
            .keys_file
            .as_deref()
            .map_or_else(|| data_dir.join("keys.json"), |p| c.resolve(p)),
    };

    let mail = mail(&mut c, f.mail, &data_dir);
    let rate_limits = rate_limits(&mut c, &f.rate_limits);
    let audit = match f.audit {
        None => AuditSink::File(data_dir.join("audit.log")),
        Some(file::AuditFile::Stdout) => AuditSink::Stdout,
        Some(file::AuditFile::Path(p)) => AuditSink::File(c.resolve(&p)),
    };

    let mut trusted_proxies = Vec::new();
    for (i, p) in f.trusted_proxies.iter().enumerate() {
        match parse_net(p) {
            Some(n) => trusted_proxies.push(n),
            None => c.err(
                format!("trusted_proxies[{i}]"),
                format!("expected an address or CIDR, found {p:?}"),
            ),
        }
    }

    let templates_dir = f.templates_dir.as_deref().map(|d| c.resolve(d));
    if let Some(d) = &templates_dir
        && !d.is_dir()
    {
        c.err("templates_dir", format!("{} is not a folder", d.display()));
    }

    let identity_providers = identity_providers(&mut c, f.identity_providers);
    let temporary_authentication = match f.temporary_authentication.as_deref() {
        None => LoginMethod::OneTimeToken,
        Some(s) => match LoginMethod::parse(s) {
            Some(m @ (LoginMethod::OneTimeLink | LoginMethod::OneTimeToken)) => {
                if !identity_providers.enabled(m) {
                    c.err(
                        "temporary_authentication",
                        format!("{m} is not among identity_providers"),
                    );
                }
                m
            }
            _ => {
                c.err(
                    "temporary_authentication",
                    format!("expected onetimelink or onetimetoken, found {s:?}"),
                );
                LoginMethod::OneTimeToken
            }
        },
    };

    let users = users(&mut c, f.users);
    let directory = f.directory.and_then(|d| directory(&mut c, d));

    let limits = limits(&mut c, &f.limits);
    let apps = apps(&mut c, f.apps, &listen, &identity_providers, &limits);

    let log = LogConfig {
        format: f.log.format.unwrap_or_default(),
        level: f.log.level.unwrap_or_else(|| "info".into()),
        access: f.log.access.unwrap_or(true),
    };
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log.level) {
        c.err("log.level", format!("invalid filter {:?}: {e}", log.level));
    }

    let config = c.errors.is_empty().then(|| Config {
        file: file_path.to_path_buf(),
        listen,
        admin,
        tls,
        data_dir,
        session,
        mail,
        rate_limits,
        audit,
        trusted_proxies,
        templates_dir,
        identity_providers,
        temporary_authentication,
        users,
        directory,
        apps,
        limits,
        log,
    });
    (config, c.warnings, c.errors)
}

fn listen(c: &mut Ctx<'_>, l: Option<file::ListenFile>) -> Listen {
    let Some(l) = l else {
        return Listen {
            http: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            https: Some(SocketAddr::from(([127, 0, 0, 1], 8443))),
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
        };
    };
    let mut addr = |key: &str, v: Option<String>| -> Option<SocketAddr> {
        let v = v?;
        match SocketAddr::from_str(v.trim()) {
            Ok(a) => Some(a),
            Err(_) => {
                c.err(
                    format!("listen.{key}"),
                    format!("expected IP:PORT (like 127.0.0.1:8080), found {v:?}"),
                );
                None
            }
        }
    };
    let out = Listen {
        http: addr("http", l.http),
        https: addr("https", l.https),
        admin: addr("admin", l.admin),
    };
    if out.http.is_none()
        && out.https.is_none()
        && c.errors.iter().all(|p| !p.path.starts_with("listen."))
    {
        c.err(
            "listen",
            "neither listen.http nor listen.https is set: nothing would be served",
        );
    }
    let all = [
        ("http", out.http),
        ("https", out.https),
        ("admin", out.admin),
    ];
    for (i, (k1, a1)) in all.iter().enumerate() {
        for (k2, a2) in &all[i + 1..] {
            if a1.is_some() && a1 == a2 && a1.is_some_and(|a| a.port() != 0) {
                c.err(
                    format!("listen.{k2}"),
                    format!("same address as listen.{k1}"),
                );
            }
        }
    }
    out
}

fn tls(c: &mut Ctx<'_>, t: &file::TlsFile, listen: &Listen) -> TlsConfig {
    let mut certificates = Vec::new();
    for (i, pair) in t.certificates.iter().enumerate() {
        let at = format!("tls.certificates[{i}]");
        let cert_path = c.resolve(&pair.cert);
        let key_path = c.resolve(&pair.key);
        let chain: Result<Vec<CertificateDer<'static>>, _> =
            CertificateDer::pem_file_iter(&cert_path).and_then(Iterator::collect);
        let chain = match chain {
            Ok(ch) if !ch.is_empty() => Some(ch),
            Ok(_) => {
                c.err(
                    format!("{at}.cert"),
                    format!("no certificate in {}", cert_path.display()),
                );
                None
            }
            Err(e) => {
                c.err(
                    format!("{at}.cert"),
                    format!("cannot read {}: {}", cert_path.display(), pem_error(&e)),
                );
                None
            }
        };
        let key = match PrivateKeyDer::from_pem_file(&key_path) {
            Ok(k) => Some(k),
            Err(e) => {
                c.err(
                    format!("{at}.key"),
                    format!("cannot read {}: {}", key_path.display(), pem_error(&e)),
                );
                None
            }
        };
        if let (Some(chain), Some(key)) = (chain, key) {
            match rustls::crypto::ring::sign::any_supported_type(&key) {
                Ok(signer) => {
                    let ck = rustls::sign::CertifiedKey::new(chain.clone(), signer);
                    if ck.keys_match().is_err() {
                        c.err(
                            &at,
                            format!(
                                "{} is not the key of {}",
                                key_path.display(),
                                cert_path.display()
                            ),
                        );
                    }
                }
                Err(e) => c.err(
                    format!("{at}.key"),
                    format!("unsupported key in {}: {e}", key_path.display()),
                ),
            }
            certificates.push(CertPair {
                cert_path,
                key_path,
                chain,
                key: Arc::new(key),
            });
        }
    }
    let mut self_signed = Vec::new();
    for (i, name) in t.self_signed.iter().enumerate() {
        let n = name.trim().to_ascii_lowercase();
        if is_host_name(&n) || n.parse::<IpAddr>().is_ok() {
            self_signed.push(n);
        } else {
            c.err(
                format!("tls.self_signed[{i}]"),
                format!("not a host name or IP address: {name:?}"),
            );
        }
    }
    if listen.https.is_some() && t.certificates.is_empty() && self_signed.is_empty() {
        c.err(
            "tls",
            "listen.https needs tls.certificates (or tls.self_signed for development)",
        );
    }
    if !self_signed.is_empty() {
        c.warn(
            "tls.self_signed",
            "self-signed certificates are for development; browsers will warn",
        );
    }
    TlsConfig {
        certificates,
        self_signed,
        self_signed_dir: c.resolve(t.self_signed_dir.as_deref().unwrap_or("certs")),
    }
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("{other:?}"),
    }
}

fn mail(c: &mut Ctx<'_>, m: file::MailFile, data_dir: &Path) -> MailConfig {
    let transport = match m.transport.as_deref() {
        None | Some("outbox") => MailTransport::Outbox(data_dir.join("outbox")),
        Some(url) => {
            smtp_transport(c, url).unwrap_or_else(|| MailTransport::Outbox(data_dir.join("outbox")))
        }
    };
    let from = match m.from {
        Some(f) => {
            if let Err(e) = check_mailbox(&f) {
                c.err("mail.from", e);
            }
            f
        }
        None => {
            if matches!(transport, MailTransport::Smtp { .. }) {
                c.err("mail.from", "required with an SMTP transport");
            }
            "otpgate <no-reply@otpgate.localhost>".into()
        }
    };
    let password = c.secret(
        "mail",
        m.password_file.as_deref(),
        m.password.as_deref(),
        "password_file",
        "password",
    );
    if password.is_some()
        && !matches!(
            &transport,
            MailTransport::Smtp {
                username: Some(_),
                ..
            }
        )
    {
        c.err(
            "mail.password_file",
            "a password needs an SMTP transport with a user name (smtp://USER@host)",
        );
    }
    let queue_size = m.queue_size.unwrap_or(10_000);
    if queue_size == 0 {
        c.err("mail.queue_size", "must be at least 1");
    }
    MailConfig {
        from,
        transport,
        password,
        queue_size,
    }
}

fn smtp_transport(c: &mut Ctx<'_>, text: &str) -> Option<MailTransport> {
    let url = match url::Url::parse(text) {
        Ok(u) => u,
        Err(e) => {
            c.err(
                "mail.transport",
                format!("expected outbox, smtp://... or smtps://...: {e}"),
            );
            return None;
        }
    };
    let implicit = match url.scheme() {
        "smtp" => false,
        "smtps" => true,
        other => {
            c.err(
                "mail.transport",
                format!("expected outbox, smtp://... or smtps://..., found scheme {other:?}"),
            );
            return None;
        }
    };
    if url.password().is_some() {
        c.err(
            "mail.transport",
            "do not put the password in the URL; use mail.password_file",
        );
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_ascii_lowercase(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        _ => {
            c.err("mail.transport", "missing relay host");
            return None;
        }
    };
    if !(url.path().is_empty() || url.path() == "/") || url.fragment().is_some() {
        c.err(
            "mail.transport",
            "expected smtp://[USER@]HOST[:PORT][?tls=...] without a path",
        );
    }
    let mut tls = if implicit {
        SmtpTls::Implicit
    } else {
        SmtpTls::StartTls
    };
    for (k, v) in url.query_pairs() {
        match (k.as_ref(), v.as_ref(), implicit) {
            ("tls", "required", false) => tls = SmtpTls::StartTls,
            ("tls", "opportunistic", false) => tls = SmtpTls::Opportunistic,
            ("tls", "none", false) => tls = SmtpTls::None,
            _ => c.err(
                "mail.transport",
                format!("unknown option {k}={v} (smtp:// takes tls=required|opportunistic|none)"),
            ),
        }
    }
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|a| a.is_loopback());
    if matches!(tls, SmtpTls::None | SmtpTls::Opportunistic) && !loopback {
        c.warn(
            "mail.transport",
            "mail to a remote relay without required TLS can be read or changed on the way",
        );
    }
    let username = if url.username().is_empty() {
        None
    } else {
        Some(percent_decode(url.username()))
    };
    Some(MailTransport::Smtp {
        host,
        port: url.port().unwrap_or(if implicit { 465 } else { 587 }),
        username,
        tls,
    })
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// `Name <addr@example.org>` or a bare address; the name may not carry header syntax.
fn check_mailbox(text: &str) -> Result<(), String> {
    let addr = match text.rsplit_once('<') {
        Some((name, rest)) => {
            let Some(addr) = rest.strip_suffix('>') else {
                return Err(format!("expected \"Name <address>\", found {text:?}"));
            };
            if name
                .chars()
                .any(|ch| ch.is_control() || matches!(ch, '<' | '>' | '"' | '\\'))
            {
                return Err("the display name may not contain control characters, quotes, backslashes or <>".into());
            }
            addr
        }
        None => text,
    };
    Email::parse(addr)
        .map(|_| ())
        .map_err(|e| format!("invalid sender address {addr:?}: {e}"))
}

fn rate_limits(c: &mut Ctx<'_>, r: &file::RateLimitsFile) -> RateLimits {
    let failed = r.failed_logins_per_account.unwrap_or(100);
    if !(1..=100).contains(&failed) {
        c.err(
            "rate_limits.failed_logins_per_account",
            "must be between 1 and 100 (SECURITY.md 16, 26)",
        );
    }
    RateLimits {
        code_sends_per_address: r.code_sends_per_address.unwrap_or(Rate {
            count: 3,
            per: 15 * MINUTE,
        }),
        code_resend_cooldown: r.code_resend_cooldown.unwrap_or(MINUTE),
        login_requests_per_ip: r.login_requests_per_ip.unwrap_or(Rate {
            count: 20,
            per: 15 * MINUTE,
        }),
        failed_logins_per_account: failed,
    }
}

fn identity_providers(
    c: &mut Ctx<'_>,
    list: Option<Vec<file::IdentityProviderFile>>,
) -> IdentityProviders {
    use file::IdentityProviderFile as F;
    let list = list.unwrap_or_else(|| {
        vec![F::Pin {
            name: None,
            config: file::PinConfigFile::default(),
        }]
    });
    if list.is_empty() {
        c.err("identity_providers", "at least one login method is needed");
    }
    let mut out = IdentityProviders {
        pin: None,
        link: None,
        token: None,
    };
    for (i, idp) in list.into_iter().enumerate() {
        let at = format!("identity_providers[{i}]");
        match idp {
            F::Pin { name, config } => {
                let length = config.length.unwrap_or(6);
                if !(6..=10).contains(&length) {
                    c.err(
                        format!("{at}.config.length"),
                        "must be between 6 and 10 digits (SECURITY.md 12)",
                    );
                }
                let ttl = c.positive(&format!("{at}.config.ttl"), config.ttl, 10 * MINUTE);
                if ttl > 10 * MINUTE {
                    c.err(
                        format!("{at}.config.ttl"),
                        "must be at most 10m (SECURITY.md 13)",
                    );
                }
                let max_attempts = config.max_attempts.unwrap_or(5);
                if !(1..=10).contains(&max_attempts) {
                    c.err(
                        format!("{at}.config.max_attempts"),
                        "must be between 1 and 10 (SECURITY.md 16)",
                    );
                }
                if out.pin.is_some() {
                    c.err(&at, "onetimepin is listed twice");
                }
                out.pin = Some(PinProvider {
                    name: name.unwrap_or_else(|| "Email code".into()),
                    length,
                    ttl,
                    max_attempts,
                });
            }
            F::Link { name, config } => {
                let ttl = c.positive(&format!("{at}.config.ttl"), config.ttl, DAY);
                if ttl > DAY {
                    c.err(
                        format!("{at}.config.ttl"),
                        "must be at most 24h (SECURITY.md 19)",
                    );
                }
                if out.link.is_some() {
                    c.err(&at, "onetimelink is listed twice");
                }
                out.link = Some(LinkProvider {
                    name: name.unwrap_or_else(|| "Email link".into()),
                    ttl,
                });
            }
            F::Token { name, config } => {
                let ttl = c.positive(&format!("{at}.config.ttl"), config.ttl, DAY);
                if ttl > DAY {
                    c.err(
                        format!("{at}.config.ttl"),
                        "must be at most 24h (SECURITY.md 22)",
                    );
                }
                let reissue_after = config.reissue_after.unwrap_or(DAY);
                if reissue_after < DAY {
                    c.err(
                        format!("{at}.config.reissue_after"),
                        "must be at least 24h (SECURITY.md 24)",
                    );
                }
                let min_password_length = config.min_password_length.unwrap_or(12);
                if !(8..=64).contains(&min_password_length) {
                    c.err(
                        format!("{at}.config.min_password_length"),
                        "must be between 8 and 64 (SECURITY.md 25)",
                    );
                }
                if out.token.is_some() {
                    c.err(&at, "onetimetoken is listed twice");
                }
                out.token = Some(TokenProvider {
                    name: name.unwrap_or_else(|| "Temporary password".into()),
                    ttl,
                    reissue_after,
                    min_password_length: usize::try_from(min_password_length).unwrap_or(12),
                });
            }
        }
    }
    out
}

fn users(c: &mut Ctx<'_>, list: Vec<Option<file::UserFile>>) -> Vec<UserConfig> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, u) in list.into_iter().enumerate() {
        let Some(u) = u else { continue };
        let at = format!("users[{i}]");
        let id = match Email::parse(&u.id) {
            Ok(e) => e.to_string(),
            Err(_) => {
                let id = u.id.trim().to_owned();
                if id.is_empty() || id.chars().any(|ch| ch.is_control() || ch.is_whitespace()) {
                    c.err(
                        format!("{at}.id"),
                        "must be an address or a name without spaces",
                    );
                }
                if u.temp_auth_email.is_none() {
                    c.warn(
                        format!("{at}.id"),
                        "not an address and no temp_auth_email: nothing can be mailed to this user",
                    );
                }
                id
            }
        };
        if !seen.insert(id.clone()) {
            c.err(format!("{at}.id"), format!("user {id:?} is listed twice"));
        }
        let temp_auth_email = u
            .temp_auth_email
            .as_deref()
            .and_then(|e| match Email::parse(e) {
                Ok(e) => Some(e),
                Err(err) => {
                    c.err(
                        format!("{at}.temp_auth_email"),
                        format!("invalid address {e:?}: {err}"),
                    );
                    None
                }
            });
        let mut groups = Vec::new();
        for (j, g) in u.groups.iter().enumerate() {
            match group_name(g) {
                Ok(g) => groups.push(g),
                Err(e) => c.err(format!("{at}.groups[{j}]"), e),
            }
        }
        out.push(UserConfig {
            id,
            temp_auth_email,
            groups,
        });
    }
    out
}

/// Default `directory.users.filter`.
pub(crate) const DEFAULT_USER_FILTER: &str = "(objectClass=inetOrgPerson)";
/// Default `directory.groups.filter`: OpenLDAP's `groupOfNames` and Active Directory's `group`.
pub(crate) const DEFAULT_GROUP_FILTER: &str = "(|(objectClass=groupOfNames)(objectClass=group))";

fn directory(c: &mut Ctx<'_>, d: file::DirectoryFile) -> Option<DirectoryConfig> {
    let errors_before = c.errors.len();
    let url = directory_url(c, &d.url, d.starttls);
    let bind_dn = match d.bind_dn.as_deref().map(str::trim) {
        None => None,
        Some("") => {
            c.err(
                "directory.bind_dn",
                "must not be empty (leave it out to bind anonymously)",
            );
            None
        }
        Some(dn) => {
            if let Err(e) = crate::dn::parse(dn) {
                c.err("directory.bind_dn", format!("invalid DN {dn:?}: {e}"));
            }
            Some(dn.to_owned())
        }
    };
    let bind_password = c.secret(
        "directory",
        d.bind_password_file.as_deref(),
        d.bind_password.as_deref(),
        "bind_password_file",
        "bind_password",
    );
    match (&bind_dn, &bind_password) {
        (None, Some(_)) => c.err(
            "directory.bind_dn",
            "a bind password needs the DN to bind as",
        ),
        // A simple bind with an empty password is an unauthenticated bind (RFC 4513 5.1.2):
        // servers answer success and then treat the session as anonymous.
        (Some(_), None) if d.bind_password_file.is_none() && d.bind_password.is_none() => {
            c.err(
                "directory.bind_password_file",
                "required with bind_dn (leave bind_dn out to bind anonymously)",
            );
        }
        (None, None) => c.warn(
            "directory.bind_dn",
            "no bind_dn: the directory is read with an anonymous bind",
        ),
        _ => {}
    }
    let mut ca = Vec::new();
    if let Some(f) = &d.ca_file {
        let path = c.resolve(f);
        match CertificateDer::pem_file_iter(&path).and_then(Iterator::collect::<Result<Vec<_>, _>>)
        {
            Ok(v) if !v.is_empty() => ca = v,
            Ok(_) => c.err(
                "directory.ca_file",
                format!("no certificate in {}", path.display()),
            ),
            Err(e) => c.err(
                "directory.ca_file",
                format!("cannot read {}: {}", path.display(), pem_error(&e)),
            ),
        }
        if !d.starttls && url.as_deref().is_some_and(|u| u.starts_with("ldap://")) {
            c.warn(
                "directory.ca_file",
                "only used with ldaps:// or starttls: true",
            );
        }
    }

    let u = d.users;
    let users = DirectoryUsers {
        base: base_dn(c, "directory.users.base", &u.base),
        filter: ldap_filter(c, "directory.users.filter", u.filter, DEFAULT_USER_FILTER),
        id: attribute(c, "directory.users.id", u.id, "mail"),
        temp_auth_email: u
            .temp_auth_email
            .map(|a| attribute(c, "directory.users.temp_auth_email", Some(a), "")),
        member_of: u
            .member_of
            .map(|a| attribute(c, "directory.users.member_of", Some(a), "")),
    };
    let groups = d.groups.map(|g| DirectoryGroups {
        base: base_dn(c, "directory.groups.base", &g.base),
        filter: ldap_filter(c, "directory.groups.filter", g.filter, DEFAULT_GROUP_FILTER),
        name: attribute(c, "directory.groups.name", g.name, "cn"),
        member: attribute(c, "directory.groups.member", g.member, "member"),
    });
    let refresh = c.positive("directory.refresh", d.refresh, 5 * MINUTE);
    if refresh < Duration::from_secs(1) {
        c.err("directory.refresh", "must be at least 1s");
    }
    let timeout = c.positive("directory.timeout", d.timeout, Duration::from_secs(30));
    let page_size = d.page_size.unwrap_or(500);
    if !(1..=100_000).contains(&page_size) {
        c.err("directory.page_size", "must be between 1 and 100000");
    }
    let url = url?;
    (c.errors.len() == errors_before).then_some(DirectoryConfig {
        url,
        starttls: d.starttls,
        bind_dn,
        bind_password,
        ca,
        users,
        groups,
        refresh,
        timeout,
        page_size,
    })
}

/// `ldap://host[:port]` or `ldaps://host[:port]`, nothing else (RFC 4516's DN, attributes and
/// filter parts of an LDAP URL have their own keys here).
fn directory_url(c: &mut Ctx<'_>, text: &str, starttls: bool) -> Option<String> {
    let at = "directory.url";
    let url = match url::Url::parse(text.trim()) {
        Ok(u) => u,
        Err(e) => {
            c.err(
                at,
                format!("expected ldap://host[:port] or ldaps://host[:port]: {e}"),
            );
            return None;
        }
    };
    let ldaps = match url.scheme() {
        "ldap" => false,
        "ldaps" => true,
        other => {
            c.err(
                at,
                format!("expected ldap:// or ldaps://, found scheme {other:?}"),
            );
            return None;
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        c.err(
            at,
            "must not contain a user name or password (use bind_dn and bind_password_file)",
        );
        return None;
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_ascii_lowercase(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        _ => {
            c.err(at, "missing host");
            return None;
        }
    };
    if !(url.path().is_empty() || url.path() == "/")
        || url.query().is_some()
        || url.fragment().is_some()
    {
        c.err(
            at,
            "expected ldap://host[:port] or ldaps://host[:port] without a DN, query or fragment (bases and filters have their own keys)",
        );
        return None;
    }
    if starttls && ldaps {
        c.err(
            "directory.starttls",
            "ldaps:// is TLS from the first byte already",
        );
    }
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|a| a.is_loopback());
    if !ldaps && !starttls && !loopback {
        c.warn(
            at,
            "ldap:// without starttls: the bind password and the directory's answers cross the network in cleartext",
        );
    }
    Some(text.trim().to_owned())
}

fn base_dn(c: &mut Ctx<'_>, at: &str, dn: &str) -> String {
    let dn = dn.trim();
    if dn.is_empty() {
        c.err(at, "must not be empty");
    } else if let Err(e) = crate::dn::parse(dn) {
        c.err(at, format!("invalid DN {dn:?}: {e}"));
    }
    dn.to_owned()
}

fn ldap_filter(c: &mut Ctx<'_>, at: &str, filter: Option<String>, default: &str) -> String {
    let f = filter.map_or_else(|| default.to_owned(), |f| f.trim().to_owned());
    if !(f.starts_with('(') && f.ends_with(')')) || ldap3::parse_filter(&f).is_err() {
        c.err(
            at,
            format!("invalid LDAP filter {f:?} (RFC 4515, like (objectClass=inetOrgPerson))"),
        );
    }
    f
}

/// An attribute description: a name (`mail`, `sAMAccountName`) or a numeric OID.
fn attribute(c: &mut Ctx<'_>, at: &str, name: Option<String>, default: &str) -> String {
    let n = name.map_or_else(|| default.to_owned(), |n| n.trim().to_owned());
    let b = n.as_bytes();
    let descr = b.first().is_some_and(u8::is_ascii_alphabetic)
        && b.iter().all(|ch| ch.is_ascii_alphanumeric() || *ch == b'-');
    let oid = !n.is_empty()
        && n.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|ch| ch.is_ascii_digit()));
    if !(descr || oid) {
        c.err(
            at,
            format!(
                "invalid attribute name {n:?} (letters, digits and '-', starting with a letter)"
            ),
        );
    }
    n
}

fn limits(c: &mut Ctx<'_>, l: &file::LimitsFile) -> Limits {
    let max_header_bytes = l.max_header_bytes.unwrap_or(64 * 1024);
    if !(8 * 1024..=1024 * 1024).contains(&max_header_bytes) {
        c.err("limits.max_header_bytes", "must be between 8KiB and 1MiB");
    }
    let max_connections = l.max_connections.unwrap_or(10_000);
    if max_connections == 0 {
        c.err("limits.max_connections", "must be at least 1");
    }
    Limits {
        header_read_timeout: c.positive(
            "limits.header_read_timeout",
            l.header_read_timeout,
            Duration::from_secs(30),
        ),
        idle_timeout: c.positive(
            "limits.idle_timeout",
            l.idle_timeout,
            Duration::from_secs(60),
        ),
        tls_handshake_timeout: c.positive(
            "limits.tls_handshake_timeout",
            l.tls_handshake_timeout,
            Duration::from_secs(10),
        ),
        max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
        max_request_body: match l.max_request_body {
            None => Some(100 << 20),
            Some(0) => None,
            Some(n) => Some(n),
        },
        max_connections,
        shutdown_grace: l.shutdown_grace.unwrap_or(Duration::from_secs(30)),
    }
}

fn apps(
    c: &mut Ctx<'_>,
    list: Vec<Option<file::AppFile>>,
    listen: &Listen,
    idps: &IdentityProviders,
    limits: &Limits,
) -> Vec<AppConfig> {
    let mut names = HashSet::new();
    let mut hosts_seen: HashSet<HostPattern> = HashSet::new();
    let mut out = Vec::new();
    if list.is_empty() {
        c.warn("apps", "no apps: every request will get 404");
    }
    for (i, a) in list.into_iter().enumerate() {
        let Some(a) = a else { continue };
        let at = format!("apps[{i}]");
        let name_ok = !a.name.is_empty()
            && a.name.len() <= 64
            && a.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            c.err(
                format!("{at}.name"),
                "must be 1 to 64 letters, digits, '-', '_' or '.'",
            );
        }
        if !names.insert(a.name.clone()) {
            c.err(
                format!("{at}.name"),
                format!("app {:?} is defined twice", a.name),
            );
        }

        let mut hosts = Vec::new();
        if a.hosts.is_empty() {
            c.err(format!("{at}.hosts"), "at least one host is needed");
        }
        for (j, h) in a.hosts.iter().enumerate() {
            let hp = format!("{at}.hosts[{j}]");
            match parse_host_pattern(h) {
                Ok(p) => {
                    if !hosts_seen.insert(p.clone()) {
                        c.err(&hp, format!("host {p} belongs to another app already"));
                    }
                    hosts.push(p);
                }
                Err(e) => c.err(&hp, e),
            }
        }

        let public_url = a
            .public_url
            .as_deref()
            .and_then(|u| match super::Origin::parse(u) {
                Ok(o) => Some(o),
                Err(e) => {
                    c.err(format!("{at}.public_url"), e);
                    None
                }
            });
        if public_url.is_none() && matches!(hosts.first(), Some(HostPattern::Wildcard(_))) {
            c.err(
                format!("{at}.public_url"),
                "required when the first host is a wildcard",
            );
        }
        // SECURITY.md 28: plain http is for local development only.
        let effective_https = public_url
            .as_ref()
            .map_or(listen.https.is_some(), |o| o.https);
        let first_host =
            public_url
                .as_ref()
                .map(|o| o.host.clone())
                .or_else(|| match hosts.first() {
                    Some(HostPattern::Exact(h)) => Some(h.clone()),
                    _ => None,
                });
        if !effective_https && first_host.as_deref().is_some_and(|h| !is_local(h)) {
            c.warn(
                format!("{at}.public_url"),
                "plain http outside localhost: the gateway cookie cannot be Secure (SECURITY.md 28)",
            );
        }

        let upstream = match parse_upstream(&a.upstream) {
            Ok(u) => u,
            Err(e) => {
                c.err(format!("{at}.upstream"), e);
                Upstream::Echo
            }
        };
        let mut upstream_ca = Vec::new();
        if let Some(ca) = &a.upstream_ca {
            let path = c.resolve(ca);
            match CertificateDer::pem_file_iter(&path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            {
                Ok(v) if !v.is_empty() => upstream_ca = v,
                Ok(_) => c.err(
                    format!("{at}.upstream_ca"),
                    format!("no certificate in {}", path.display()),
                ),
                Err(e) => c.err(
                    format!("{at}.upstream_ca"),
                    format!("cannot read {}: {}", path.display(), pem_error(&e)),
                ),
            }
            if !matches!(upstream, Upstream::Http { https: true, .. }) {
                c.warn(
                    format!("{at}.upstream_ca"),
                    "only used with an https:// upstream",
                );
            }
        }

        let timeout = c.positive(&format!("{at}.timeout"), a.timeout, Duration::from_secs(30));
        let login_methods = match &a.login_methods {
            None => vec![LoginMethod::OneTimePin],
            Some(list) => {
                let mut v = Vec::new();
                for (j, m) in list.iter().enumerate() {
                    match LoginMethod::parse(m) {
                        Some(m) if idps.enabled(m) => v.push(m),
                        Some(m) => c.err(format!("{at}.login_methods[{j}]"), format!("{m} is not among identity_providers")),
                        None => c.err(
                            format!("{at}.login_methods[{j}]"),
                            format!("unknown login method {m:?} (onetimepin, onetimelink or onetimetoken)"),
                        ),
                    }
                }
                if list.is_empty() {
                    c.err(
                        format!("{at}.login_methods"),
                        "at least one login method is needed",
                    );
                }
                v
            }
        };
        if a.login_methods.is_none() && !idps.enabled(LoginMethod::OneTimePin) {
            c.err(
                format!("{at}.login_methods"),
                "defaults to onetimepin, which is not among identity_providers",
            );
        }
        if let Some(d) = a.session_duration
            && (d.is_zero() || d > MAX_SESSION)
        {
            c.err(
                format!("{at}.session_duration"),
                "must be above 0s and at most 30d (SECURITY.md 30)",
            );
        }
        let max_request_body = match a.max_request_body {
            None => limits.max_request_body,
            Some(0) => None,
            Some(n) => Some(n),
        };

        let mut policies = Vec::new();
        let mut policy_names = HashSet::new();
        for (j, v) in a.policies.into_iter().enumerate() {
            let pat = format!("{at}.policies[{j}]");
            let Some(pf) = de_at::<file::PolicyFile>(v, &pat, &mut c.errors) else {
                continue;
            };
            if !policy_names.insert(pf.name.clone()) {
                c.err(
                    format!("{pat}.name"),
                    format!("policy {:?} is defined twice in this app", pf.name),
                );
            }
            if let Some(p) = policy(c, pf, &pat) {
                policies.push(p);
            }
        }
        if policies.is_empty() {
            c.warn(
                format!("{at}.policies"),
                format!("app {:?} has no policies: every request is denied", a.name),
            );
        } else if !policy::can_allow_anyone(&policies) {
            c.warn(
                format!("{at}.policies"),
                format!("no policy of app {:?} can ever allow anyone", a.name),
            );
        }

        out.push(AppConfig {
            name: a.name,
            hosts,
            public_url,
            upstream,
            upstream_ca,
            preserve_host: a.preserve_host,
            timeout,
            login_methods,
            session_duration: a.session_duration,
            max_request_body,
            policies,
        });
    }
    out
}

fn policy(c: &mut Ctx<'_>, p: file::PolicyFile, at: &str) -> Option<Policy> {
    let errors_before = c.errors.len();
    if p.name.trim().is_empty() {
        c.err(format!("{at}.name"), "must not be empty");
    }
    let action = match Action::parse(&p.action) {
        Some(a) => a,
        None if p.action == "service_auth" => {
            c.err(
                format!("{at}.action"),
                "service_auth is not available in this version yet",
            );
            Action::Block
        }
        None => {
            c.err(
                format!("{at}.action"),
                format!("unknown action {:?} (allow, block or bypass)", p.action),
            );
            Action::Block
        }
    };
    let mut paths = Vec::new();
    for (k, raw) in p.paths.iter().enumerate() {
        match crate::path::normalise(raw) {
            Ok(n) if n == raw.as_str() => {
                // A block on "/admin/" leaves "/admin" itself open (S3 of the review).
                if action == Action::Block && raw.len() > 1 && raw.ends_with('/') {
                    c.warn(
                        format!("{at}.paths[{k}]"),
                        format!("{raw:?} covers what is below it but not {:?} itself; write {:?} to cover both", &raw[..raw.len() - 1], &raw[..raw.len() - 1]),
                    );
                }
                paths.push(raw.clone());
            }
            Ok(n) => c.err(
                format!("{at}.paths[{k}]"),
                format!("write the normalised form {n:?}"),
            ),
            Err(e) => c.err(format!("{at}.paths[{k}]"), format!("{e}: {raw:?}")),
        }
    }
    if p.include.is_empty() && action != Action::Bypass {
        c.err(
            format!("{at}.include"),
            format!("required on {} policies", action.as_str()),
        );
    }
    let mut list = |key: &str, items: &[SelectorFile]| -> Vec<Selector> {
        let mut v = Vec::new();
        for (k, s) in items.iter().enumerate() {
            let sp = format!("{at}.{key}[{k}]");
            if let Some(sel) = selector(c, s, &sp) {
                if action == Action::Bypass && !sel.is_anonymous() {
                    c.err(&sp, "bypass policies apply without a login: only everyone and ip selectors can decide them");
                }
                v.push(sel);
            }
        }
        v
    };
    let include = list("include", &p.include);
    let require = list("require", &p.require);
    let exclude = list("exclude", &p.exclude);
    (c.errors.len() == errors_before).then_some(Policy {
        name: p.name,
        action,
        paths,
        include,
        require,
        exclude,
    })
}

fn selector(c: &mut Ctx<'_>, s: &SelectorFile, at: &str) -> Option<Selector> {
    let r = match s {
        SelectorFile::Everyone(true) => Ok(Selector::Everyone),
        SelectorFile::Everyone(false) => {
            Err("everyone: false matches nobody; remove the selector".to_owned())
        }
        SelectorFile::Email(e) => Email::parse(e)
            .map(Selector::Email)
            .map_err(|err| format!("invalid address {e:?}: {err}")),
        SelectorFile::EmailDomain(d) => {
            let d2 = d.trim().to_ascii_lowercase();
            if is_dns_domain(&d2) {
                Ok(Selector::EmailDomain(d2))
            } else {
                Err(format!(
                    "invalid domain {d:?} (write the domain only, like corp.example)"
                ))
            }
        }
        SelectorFile::Group(g) => group_name(g).map(Selector::Group),
        SelectorFile::Ip(n) => parse_net(n)
            .map(Selector::Ip)
            .ok_or_else(|| format!("expected an address or CIDR, found {n:?}")),
        SelectorFile::LoginMethod(m) => LoginMethod::parse(m)
            .map(Selector::LoginMethod)
            .ok_or_else(|| {
                format!("unknown login method {m:?} (onetimepin, onetimelink or onetimetoken)")
            }),
    };
    r.map_err(|e| c.err(at, e)).ok()
}

/// Group names travel comma-separated in `X-Otpgate-Groups`: no commas, no control characters.
pub(crate) fn group_name(g: &str) -> Result<String, String> {
    let g = g.trim();
    if g.is_empty() || g.len() > 256 || g.chars().any(|ch| ch == ',' || ch.is_control()) {
        Err(format!(
            "invalid group name {g:?} (1 to 256 characters, no commas or control characters)"
        ))
    } else {
        Ok(g.to_owned())
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

/// Parses a configured host: `app.example`, `127.0.0.1`, `::1` or `*.example.org`.
pub(crate) fn parse_host_pattern(h: &str) -> Result<HostPattern, String> {
    let lower = h.trim().to_ascii_lowercase();
    if let Some(suffix) = lower.strip_prefix("*.") {
        return if is_host_name(suffix) && suffix.contains('.') {
            Ok(HostPattern::Wildcard(suffix.to_owned()))
        } else {
            Err(format!("invalid wildcard {h:?} (write *.example.org)"))
        };
    }
    let bare = lower.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(HostPattern::Exact(ip.to_string()));
    }
    if lower.contains(':') || lower.contains('/') {
        return Err(format!(
            "{h:?}: write the host name only (no scheme, port or path; ports are ignored when matching)"
        ));
    }
    if is_host_name(&lower) {
        Ok(HostPattern::Exact(lower))
    } else {
        Err(format!("invalid host name {h:?}"))
    }
}

fn parse_upstream(text: &str) -> Result<Upstream, String> {
    if text == "builtin:echo" {
        return Ok(Upstream::Echo);
    }
    let url = url::Url::parse(text).map_err(|e| {
        format!("expected http://host:port, https://host:port or builtin:echo: {e}")
    })?;
    let https = match url.scheme() {
        "http" => false,
        "https" => true,
        s => {
            return Err(format!(
                "expected http://, https:// or builtin:echo, found scheme {s:?}"
            ));
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain a user name or password".into());
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(
            "must be scheme://host[:port] without a path (paths are forwarded as requested)".into(),
        );
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_owned(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => format!("[{a}]"),
        None => return Err("missing host".into()),
    };
    let port = url
        .port_or_known_default()
        .unwrap_or(if https { 443 } else { 80 });
    let authority =
        http::uri::Authority::from_str(&format!("{host}:{port}")).map_err(|e| e.to_string())?;
    Ok(Upstream::Http { https, authority })
}
