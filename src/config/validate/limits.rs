//! `session`, `rate_limits`, `identity_providers`, `temporary_authentication` and `limits`: how
//! long sessions last, how logins are bounded and throttled, and the connection limits.

use std::path::Path;
use std::time::Duration;

use super::super::{
    IdentityProviders, Limits, LinkProvider, MAX_SESSION, PinProvider, RateLimits, SessionConfig,
    TokenProvider, units::Rate,
};
use super::{Ctx, DAY, MINUTE, file};
use crate::policy::LoginMethod;

pub(super) fn session(c: &mut Ctx<'_>, s: &file::SessionFile, data_dir: &Path) -> SessionConfig {
    let session_duration = c.positive("session.duration", s.duration, DAY);
    if session_duration > MAX_SESSION {
        c.err(
            "session.duration",
            "must be at most 30d (docs/security.md#30)",
        );
    }
    // docs/security.md#30: sessions also end after inactivity; on by default.
    let idle_timeout = s
        .idle_timeout
        .unwrap_or_else(|| session_duration.min(8 * 3600 * Duration::from_secs(1)));
    if idle_timeout.is_zero() || idle_timeout > session_duration {
        c.err(
            "session.idle_timeout",
            "must be above 0s and at most session.duration",
        );
    }
    SessionConfig {
        duration: session_duration,
        idle_timeout,
        keys_file: s
            .keys_file
            .as_deref()
            .map_or_else(|| data_dir.join("keys.json"), |p| c.resolve(p)),
    }
}

pub(super) fn rate_limits(c: &mut Ctx<'_>, r: &file::RateLimitsFile) -> RateLimits {
    // The first (expiring) lock; the hard cap of 100 stays whatever this says.
    let failed = r.failed_logins_per_account.unwrap_or(10);
    if !(1..=100).contains(&failed) {
        c.err(
            "rate_limits.failed_logins_per_account",
            "must be between 1 and 100 (docs/security.md#16, #26)",
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

pub(super) fn identity_providers(
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
                let p = pin(c, &at, name, &config);
                if out.pin.is_some() {
                    c.err(&at, "onetimepin is listed twice");
                }
                out.pin = Some(p);
            }
            F::Link { name, config } => {
                let l = link(c, &at, name, &config);
                if out.link.is_some() {
                    c.err(&at, "onetimelink is listed twice");
                }
                out.link = Some(l);
            }
            F::Token { name, config } => {
                let t = token(c, &at, name, &config);
                if out.token.is_some() {
                    c.err(&at, "onetimetoken is listed twice");
                }
                out.token = Some(t);
            }
        }
    }
    out
}

fn pin(
    c: &mut Ctx<'_>,
    at: &str,
    name: Option<String>,
    config: &file::PinConfigFile,
) -> PinProvider {
    let length = config.length.unwrap_or(6);
    if !(6..=10).contains(&length) {
        c.err(
            format!("{at}.config.length"),
            "must be between 6 and 10 digits (docs/security.md#12)",
        );
    }
    let ttl = c.positive(&format!("{at}.config.ttl"), config.ttl, 10 * MINUTE);
    if ttl > 10 * MINUTE {
        c.err(
            format!("{at}.config.ttl"),
            "must be at most 10m (docs/security.md#13)",
        );
    }
    let max_attempts = config.max_attempts.unwrap_or(5);
    if !(1..=10).contains(&max_attempts) {
        c.err(
            format!("{at}.config.max_attempts"),
            "must be between 1 and 10 (docs/security.md#16)",
        );
    }
    PinProvider {
        name: name.unwrap_or_else(|| "Email code".into()),
        length,
        ttl,
        max_attempts,
    }
}

fn link(
    c: &mut Ctx<'_>,
    at: &str,
    name: Option<String>,
    config: &file::LinkConfigFile,
) -> LinkProvider {
    let ttl = c.positive(&format!("{at}.config.ttl"), config.ttl, DAY);
    if ttl > DAY {
        c.err(
            format!("{at}.config.ttl"),
            "must be at most 24h (docs/security.md#19)",
        );
    }
    LinkProvider {
        name: name.unwrap_or_else(|| "Email link".into()),
        ttl,
    }
}

fn token(
    c: &mut Ctx<'_>,
    at: &str,
    name: Option<String>,
    config: &file::TokenConfigFile,
) -> TokenProvider {
    let ttl = c.positive(&format!("{at}.config.ttl"), config.ttl, DAY);
    if ttl > DAY {
        c.err(
            format!("{at}.config.ttl"),
            "must be at most 24h (docs/security.md#22)",
        );
    }
    let reissue_after = config.reissue_after.unwrap_or(DAY);
    if reissue_after < DAY {
        c.err(
            format!("{at}.config.reissue_after"),
            "must be at least 24h (docs/security.md#24)",
        );
    }
    let min_password_length = config.min_password_length.unwrap_or(12);
    if !(8..=64).contains(&min_password_length) {
        c.err(
            format!("{at}.config.min_password_length"),
            "must be between 8 and 64 (docs/security.md#25)",
        );
    }
    TokenProvider {
        name: name.unwrap_or_else(|| "Temporary password".into()),
        ttl,
        reissue_after,
        min_password_length: usize::try_from(min_password_length).unwrap_or(12),
    }
}

/// What `send-auth-email` mails by default: a one-time link or a temporary password.
pub(super) fn temporary_authentication(
    c: &mut Ctx<'_>,
    method: Option<&str>,
    idps: &IdentityProviders,
) -> LoginMethod {
    match method {
        None => LoginMethod::OneTimeToken,
        Some(s) => match LoginMethod::parse(s) {
            Some(m @ (LoginMethod::OneTimeLink | LoginMethod::OneTimeToken)) => {
                if !idps.enabled(m) {
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
    }
}

pub(super) fn limits(c: &mut Ctx<'_>, l: &file::LimitsFile) -> Limits {
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
        runtime: l.runtime.unwrap_or_default(),
    }
}
