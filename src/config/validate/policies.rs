//! Policies and what they are made of: selectors, group names, host patterns and upstream URLs.

use std::net::IpAddr;
use std::str::FromStr;

use super::super::{HostPattern, Upstream};
use super::file::{self, SelectorFile};
use super::{Ctx, is_host_name, parse_net};
use crate::email::{Email, is_dns_domain};
use crate::policy::{Action, LoginMethod, Policy, Selector};

pub(super) fn policy(c: &mut Ctx<'_>, p: file::PolicyFile, at: &str) -> Option<Policy> {
    let errors_before = c.errors.len();
    if p.name.trim().is_empty() {
        c.err(format!("{at}.name"), "must not be empty");
    }
    let action = match Action::parse(&p.action) {
        Some(a) => a,
        None => {
            c.err(
                format!("{at}.action"),
                format!(
                    "unknown action {:?} (allow, block, bypass or service_auth)",
                    p.action
                ),
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
                fits(c, action, key, &sel, &sp);
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

/// Refuses selectors that can never match under this action: a bypass knows nobody, a
/// `service_auth` policy sees services only, an `allow` policy people only.
fn fits(c: &mut Ctx<'_>, action: Action, key: &str, sel: &Selector, at: &str) {
    let person = !sel.is_anonymous() && !sel.is_service();
    match action {
        Action::Bypass if !sel.is_anonymous() => c.err(
            at,
            "bypass policies apply without a login: only everyone and ip selectors can decide them (service tokens: use service_auth)",
        ),
        Action::ServiceAuth if person => c.err(
            at,
            "service_auth policies match service tokens, never people: use service_token, any_service_token, ip or everyone",
        ),
        Action::Allow if sel.is_service() && key != "exclude" => c.err(
            at,
            "allow policies decide people; service tokens are let in by service_auth policies",
        ),
        _ => {}
    }
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
        SelectorFile::ServiceToken(n) if c.token_names.contains(n) => {
            Ok(Selector::ServiceToken(n.clone()))
        }
        SelectorFile::ServiceToken(n) => {
            Err(format!("no service token named {n:?} under service_tokens"))
        }
        SelectorFile::AnyServiceToken(true) => Ok(Selector::AnyServiceToken),
        SelectorFile::AnyServiceToken(false) => {
            Err("any_service_token: false matches nothing; remove the selector".to_owned())
        }
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

pub(super) fn parse_upstream(text: &str) -> Result<Upstream, String> {
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
