//! `strip_request_headers` and `apps[].identity_headers`: the header names the gateway strips
//! from requests and the ones it sends a session's identity under (docs/security.md#40).

use std::collections::HashMap;

use http::HeaderName;

use super::super::{HeaderPattern, IdentityHeaders};
use super::{Ctx, file};

/// Headers an identity header may not be named after, and why: HTTP needs them for framing,
/// routing or the connection, or the gateway writes them itself (docs/security.md#34).
const RESERVED: &[(&str, &str)] = &[
    ("connection", "a hop-by-hop header"),
    ("keep-alive", "a hop-by-hop header"),
    ("proxy-connection", "a hop-by-hop header"),
    ("proxy-authenticate", "a hop-by-hop header"),
    ("proxy-authorization", "a hop-by-hop header"),
    ("te", "a hop-by-hop header"),
    ("trailer", "a hop-by-hop header"),
    ("transfer-encoding", "a hop-by-hop header"),
    ("upgrade", "a hop-by-hop header"),
    ("host", "what requests are routed by"),
    ("cookie", "where the sessions travel"),
    ("content-length", "part of the message framing"),
    ("expect", "answered by the gateway"),
    ("x-forwarded-for", "a forwarding header the gateway sets"),
    ("x-forwarded-proto", "a forwarding header the gateway sets"),
    ("x-forwarded-host", "a forwarding header the gateway sets"),
    ("x-real-ip", "a forwarding header the gateway sets"),
    ("forwarded", "a forwarding header the gateway sets"),
];

/// Headers the gateway routes on or sets itself after stripping: `trusted_proxies` decides
/// whose values are kept, so the strip list may not cover them.
const GATEWAY_OWN: &[&str] = &[
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "forwarded",
];

/// The top-level `strip_request_headers`.
pub(super) fn strip_request_headers(c: &mut Ctx<'_>, list: &[String]) -> Vec<HeaderPattern> {
    let mut out: Vec<HeaderPattern> = Vec::new();
    for (i, text) in list.iter().enumerate() {
        let at = format!("strip_request_headers[{i}]");
        let Some(p) = HeaderPattern::parse(text) else {
            c.err(
                at,
                format!(
                    "expected a header name, optionally ending in * for a prefix, found {text:?}"
                ),
            );
            continue;
        };
        if let Some(own) = GATEWAY_OWN.iter().find(|n| p.matches(n)) {
            c.err(
                at,
                format!("{text:?} covers {own}, which the gateway routes on or sets itself"),
            );
            continue;
        }
        if out.contains(&p) {
            c.warn(at, format!("{text:?} is listed twice"));
            continue;
        }
        out.push(p);
    }
    out
}

/// `apps[i].identity_headers`; unset keys keep the `X-Otpgate-*` defaults.
pub(super) fn identity_headers(
    c: &mut Ctx<'_>,
    at: &str,
    f: Option<file::IdentityHeadersFile>,
) -> IdentityHeaders {
    let defaults = IdentityHeaders::default();
    let Some(f) = f else { return defaults };
    let at = format!("{at}.identity_headers");
    let mut name = |key: &str, text: Option<String>, default: HeaderName| {
        text.and_then(|t| identity_name(c, &format!("{at}.{key}"), &t))
            .unwrap_or(default)
    };
    let names = IdentityHeaders {
        email: name("email", f.email, defaults.email),
        user: name("user", f.user, defaults.user),
        groups: name("groups", f.groups, defaults.groups),
    };
    let mut seen: HashMap<HeaderPattern, &str> = HashMap::new();
    for (key, n) in [
        ("email", &names.email),
        ("user", &names.user),
        ("groups", &names.groups),
    ] {
        // `X-User` and `x_user` are one header to servers that treat `_` as `-`.
        if let Some(first) = seen.insert(HeaderPattern::from(n), key) {
            c.err(
                format!("{at}.{key}"),
                format!("{n} is also the {first} header"),
            );
        }
    }
    names
}

fn identity_name(c: &mut Ctx<'_>, at: &str, text: &str) -> Option<HeaderName> {
    let Ok(name) = HeaderName::from_bytes(text.as_bytes()) else {
        c.err(at, format!("{text:?} is not a header name"));
        return None;
    };
    let folded = HeaderPattern::from(&name);
    if let Some((reserved, why)) = RESERVED.iter().find(|(r, _)| folded.matches(r)) {
        c.err(at, format!("{text:?} is {reserved}, {why}"));
        return None;
    }
    Some(name)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{HeaderPattern, load_str};

    fn load(head: &str, app_extra: &str) -> Result<crate::config::Loaded, Vec<String>> {
        let text = format!(
            "version: 1
listen: {{ http: 127.0.0.1:8080 }}
{head}
apps:
  - name: app
    hosts: [app.localhost]
    upstream: builtin:echo
{app_extra}
    policies:
      - {{ name: all, action: allow, include: [ {{ everyone: true }} ] }}
"
        );
        load_str(&text, Path::new("/etc/otpgate/otpgate.yaml"), Vec::new())
            .map_err(|e| e.errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn strip_list_and_identity_names_load_folded() {
        let l = load(
            "strip_request_headers: [X-Employee-Id, X_Legacy_*]",
            "    identity_headers: { email: X-WEBAUTH-USER, groups: X_Webauth_Groups }",
        )
        .unwrap();
        let c = &l.config;
        assert_eq!(
            c.strip_request_headers,
            [
                HeaderPattern {
                    folded: "x-employee-id".into(),
                    prefix: false
                },
                HeaderPattern {
                    folded: "x-legacy-".into(),
                    prefix: true
                },
            ]
        );
        let names = &c.apps[0].identity_headers;
        assert_eq!(names.email, "x-webauth-user");
        assert_eq!(names.user, "x-otpgate-user");
        assert_eq!(names.groups, "x_webauth_groups");
    }

    #[test]
    fn bad_header_names_are_refused_with_their_key_paths() {
        let errs = load(
            "strip_request_headers: ['X Bad', '*', 'X-*-Y*', '', X-Forwarded-*, Host, ok-*]",
            "    identity_headers: { email: 'X Webauth', user: Transfer_Encoding, groups: Cookie }",
        )
        .unwrap_err();
        let at = |p: &str| errs.iter().filter(|e| e.starts_with(p)).count();
        for i in 0..6 {
            assert_eq!(
                at(&format!("strip_request_headers[{i}]:")),
                1,
                "{i}: {errs:?}"
            );
        }
        assert_eq!(at("strip_request_headers[6]"), 0, "{errs:?}");
        assert!(
            errs.iter().any(|e| e.contains("covers x-forwarded-for")),
            "{errs:?}"
        );
        for key in ["email", "user", "groups"] {
            assert_eq!(
                at(&format!("apps[0].identity_headers.{key}:")),
                1,
                "{errs:?}"
            );
        }
        assert_eq!(errs.len(), 9, "{errs:?}");

        let errs = load(
            "",
            "    identity_headers: { email: X-User, user: x_user, groups: Content-Length }",
        )
        .unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("apps[0].identity_headers.groups: \"Content-Length\""));
        assert!(
            errs[1].starts_with("apps[0].identity_headers.user: x_user is also the email header")
        );

        // A name used for another part by default counts too.
        let errs = load("", "    identity_headers: { email: X-Otpgate-User }").unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        let errs = load("", "    identity_headers: { mail: X-User }").unwrap_err();
        assert!(errs[0].starts_with("apps[0].identity_headers"), "{errs:?}");
    }
}
