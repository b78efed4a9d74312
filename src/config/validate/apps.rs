//! `apps`: each protected app's hosts, public origin, upstream, login methods and policies.

use std::collections::HashSet;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use super::super::{
    AppConfig, AppMode, HostPattern, IdentityProviders, Limits, Listen, MAX_SESSION, Origin,
    Upstream, UpstreamProtocol, de_at,
};
use super::app_mode;
use super::policies::{parse_host_pattern, parse_upstream, policy};
use super::{Ctx, file, is_local};
use crate::policy::{self, LoginMethod, Policy};

pub(super) fn apps(
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
        app_name(c, &at, &a.name, &mut names);
        let hosts = hosts(c, &at, &a.hosts, &mut hosts_seen);
        let public_url = public_url(c, &at, a.public_url.as_deref(), &hosts, listen);
        let mode = app_mode::mode(c, &at, &a);
        let (upstream, upstream_ca) = match a.upstream.as_deref() {
            Some(u) if mode == AppMode::Proxy => upstream(c, &at, u, a.upstream_ca.as_deref()),
            _ => (Upstream::Echo, Vec::new()),
        };
        let upstream_protocol =
            upstream_protocol(c, &at, a.upstream_protocol.as_deref(), &upstream);
        let timeout = c.positive(&format!("{at}.timeout"), a.timeout, Duration::from_secs(30));
        let login_methods = login_methods(c, &at, a.login_methods.as_deref(), idps);
        if let Some(d) = a.session_duration
            && (d.is_zero() || d > MAX_SESSION)
        {
            c.err(
                format!("{at}.session_duration"),
                "must be above 0s and at most 30d (docs/security.md#30)",
            );
        }
        let max_request_body = match a.max_request_body {
            None => limits.max_request_body,
            Some(0) => None,
            Some(n) => Some(n),
        };
        let identity_headers = super::headers::identity_headers(c, &at, a.identity_headers);
        let policies = policies(c, &at, a.policies, &a.name);
        let audience = audience(c, &at, a.audience, &a.name);
        out.push(AppConfig {
            name: a.name,
            hosts,
            public_url,
            audience,
            mode,
            upstream,
            upstream_ca,
            preserve_host: a.preserve_host,
            upstream_protocol,
            timeout,
            login_methods,
            session_duration: a.session_duration,
            max_request_body,
            policies,
            identity_headers,
            launcher: a.launcher.unwrap_or(true),
        });
    }
    out
}

/// The assertion audience: printable ASCII without spaces, so apps can compare it exactly.
fn audience(c: &mut Ctx<'_>, at: &str, audience: Option<String>, name: &str) -> String {
    let audience = audience.unwrap_or_else(|| format!("otpgate:app:{name}"));
    if audience.is_empty()
        || audience.len() > 256
        || !audience.bytes().all(|b| b.is_ascii_graphic())
    {
        c.err(
            format!("{at}.audience"),
            "must be 1 to 256 printable characters without spaces",
        );
    }
    audience
}

fn app_name(c: &mut Ctx<'_>, at: &str, name: &str, names: &mut HashSet<String>) {
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !name_ok {
        c.err(
            format!("{at}.name"),
            "must be 1 to 64 letters, digits, '-', '_' or '.'",
        );
    }
    if !names.insert(name.to_owned()) {
        c.err(
            format!("{at}.name"),
            format!("app {name:?} is defined twice"),
        );
    }
}

/// The app's hosts; a host may belong to one app only.
fn hosts(
    c: &mut Ctx<'_>,
    at: &str,
    list: &[String],
    seen: &mut HashSet<HostPattern>,
) -> Vec<HostPattern> {
    let mut hosts = Vec::new();
    if list.is_empty() {
        c.err(format!("{at}.hosts"), "at least one host is needed");
    }
    for (j, h) in list.iter().enumerate() {
        let hp = format!("{at}.hosts[{j}]");
        match parse_host_pattern(h) {
            Ok(p) => {
                if !seen.insert(p.clone()) {
                    c.err(&hp, format!("host {p} belongs to another app already"));
                }
                hosts.push(p);
            }
            Err(e) => c.err(&hp, e),
        }
    }
    hosts
}

/// The origin users see, and a warning when it leaves the cookie without `Secure`.
fn public_url(
    c: &mut Ctx<'_>,
    at: &str,
    url: Option<&str>,
    hosts: &[HostPattern],
    listen: &Listen,
) -> Option<Origin> {
    let public_url = url.and_then(|u| match Origin::parse(u) {
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
    // docs/security.md#28: plain http is for local development only.
    let effective_https = public_url
        .as_ref()
        .map_or(listen.https.is_some(), |o| o.https);
    let first_host = public_url
        .as_ref()
        .map(|o| o.host.clone())
        .or_else(|| match hosts.first() {
            Some(HostPattern::Exact(h)) => Some(h.clone()),
            _ => None,
        });
    if !effective_https && first_host.as_deref().is_some_and(|h| !is_local(h)) {
        c.warn(
            format!("{at}.public_url"),
            "plain http outside localhost: the gateway cookie cannot be Secure (docs/security.md#28)",
        );
    }
    public_url
}

/// Where requests go, and the extra trust anchors for an HTTPS upstream.
fn upstream(
    c: &mut Ctx<'_>,
    at: &str,
    text: &str,
    ca: Option<&str>,
) -> (Upstream, Vec<CertificateDer<'static>>) {
    let upstream = match parse_upstream(text) {
        Ok(u) => u,
        Err(e) => {
            c.err(format!("{at}.upstream"), e);
            Upstream::Echo
        }
    };
    let mut upstream_ca = Vec::new();
    if let Some(ca) = ca {
        upstream_ca = c.trust_anchors(&format!("{at}.upstream_ca"), ca);
        if !matches!(upstream, Upstream::Http { https: true, .. }) {
            c.warn(
                format!("{at}.upstream_ca"),
                "only used with an https:// upstream",
            );
        }
    }
    (upstream, upstream_ca)
}

/// `http1` (the default), `http2` or `auto`; only an HTTP(S) upstream has one.
fn upstream_protocol(
    c: &mut Ctx<'_>,
    at: &str,
    text: Option<&str>,
    upstream: &Upstream,
) -> UpstreamProtocol {
    let Some(text) = text else {
        return UpstreamProtocol::default();
    };
    let Some(p) = UpstreamProtocol::parse(text) else {
        c.err(
            format!("{at}.upstream_protocol"),
            format!("unknown protocol {text:?} (http1, http2 or auto)"),
        );
        return UpstreamProtocol::default();
    };
    match upstream {
        Upstream::Echo => c.warn(
            format!("{at}.upstream_protocol"),
            "only used with an http:// or https:// upstream",
        ),
        Upstream::Http { https: false, .. } if p == UpstreamProtocol::Auto => c.warn(
            format!("{at}.upstream_protocol"),
            "auto speaks HTTP/1.1 to an http:// upstream (no ALPN without TLS); http2 for h2c",
        ),
        Upstream::Http { .. } => {}
    }
    p
}

/// The login methods offered; each must be among `identity_providers`.
fn login_methods(
    c: &mut Ctx<'_>,
    at: &str,
    list: Option<&[String]>,
    idps: &IdentityProviders,
) -> Vec<LoginMethod> {
    let Some(list) = list else {
        if !idps.enabled(LoginMethod::OneTimePin) {
            c.err(
                format!("{at}.login_methods"),
                "defaults to onetimepin, which is not among identity_providers",
            );
        }
        return vec![LoginMethod::OneTimePin];
    };
    let mut v = Vec::new();
    for (j, m) in list.iter().enumerate() {
        match LoginMethod::parse(m) {
            Some(m) if idps.enabled(m) => v.push(m),
            Some(m) => c.err(
                format!("{at}.login_methods[{j}]"),
                format!("{m} is not among identity_providers"),
            ),
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

/// The app's ordered policies, each deserialised on its own so one bad entry does not hide
/// the problems of the others.
fn policies(c: &mut Ctx<'_>, at: &str, list: Vec<serde_json::Value>, app: &str) -> Vec<Policy> {
    let mut policies = Vec::new();
    let mut policy_names = HashSet::new();
    for (j, v) in list.into_iter().enumerate() {
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
            format!("app {app:?} has no policies: every request is denied"),
        );
    } else if !policy::can_allow_anyone(&policies) {
        c.warn(
            format!("{at}.policies"),
            format!("no policy of app {app:?} can ever allow anyone"),
        );
    }
    policies
}
