//! Header hygiene between client and upstream.
//!
//! Requests: hop-by-hop headers go (the standard ones and every one the client names in
//! `Connection`), client-supplied identity headers go in every spelling (`X-Otpgate-Email`,
//! `x_otpgate_email`, ...), as do URL-override headers some frameworks route on
//! (`X-Original-URL`, `X-Rewrite-URL`), and forwarding headers from untrusted clients; then the
//! gateway's own `X-Forwarded-*`, `Forwarded` and `X-Real-IP` are set (SECURITY.md 34).

use std::fmt::Write as _;
use std::net::IpAddr;

use http::HeaderMap;
use http::header::{CONNECTION, EXPECT, HeaderName, HeaderValue, UPGRADE};

/// Prefix of the identity headers the gateway sets (compared after folding `_` to `-`).
pub const IDENTITY_PREFIX: &str = "x-otpgate-";

/// Hop-by-hop headers (RFC 9110 s7.6.1 plus the common non-standard ones).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers that some upstream frameworks use to override the request URL: never forwarded.
const URL_OVERRIDES: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-http-method-override",
];

/// Forwarding headers: believed (and extended) only from trusted proxies.
const FORWARDING: &[&str] = &["forwarded", "x-real-ip", "x-client-ip", "true-client-ip"];
const FORWARDING_PREFIX: &str = "x-forwarded-";

/// Compares a lower-case header name with `want`, treating `_` as `-`.
fn folded_eq(name: &str, want: &str) -> bool {
    name.len() == want.len()
        && name
            .bytes()
            .zip(want.bytes())
            .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
}

fn folded_starts_with(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len() && folded_eq(&name[..prefix.len()], prefix)
}

/// What the gateway knows about the client, for the forwarding headers.
#[derive(Debug, Clone, Copy)]
pub struct ForwardInfo<'a> {
    /// The resolved client address.
    pub client_ip: IpAddr,
    /// Whether the direct peer is a trusted proxy.
    pub peer_trusted: bool,
    /// The direct peer's address.
    pub peer_ip: IpAddr,
    /// The scheme the client used (`https` or `http`).
    pub proto: &'static str,
    /// The Host the client asked for (with port, as sent).
    pub host: &'a str,
}

/// Cleans and completes the headers of a request going upstream. `upgrade` keeps the
/// `Upgrade` header (and sets `Connection: upgrade`) for protocol switches such as WebSocket.
pub fn prepare_request(headers: &mut HeaderMap, fwd: &ForwardInfo<'_>, upgrade: bool) {
    let mut drop: Vec<HeaderName> = Vec::new();
    collect_connection_tokens(headers, &mut drop);
    for name in headers.keys() {
        let n = name.as_str();
        let hop = HOP_BY_HOP.contains(&n) && !(upgrade && name == UPGRADE);
        let spoofable = folded_starts_with(n, IDENTITY_PREFIX)
            || URL_OVERRIDES.iter().any(|u| folded_eq(n, u))
            || (!fwd.peer_trusted
                && (folded_starts_with(n, FORWARDING_PREFIX) || FORWARDING.iter().any(|f| folded_eq(n, f))))
            // Underscore spellings of forwarding headers are never ours to pass on.
            || (n.contains('_') && (folded_starts_with(n, FORWARDING_PREFIX) || FORWARDING.iter().any(|f| folded_eq(n, f))));
        if hop || spoofable || name == EXPECT {
            drop.push(name.clone());
        }
    }
    let (prior_xff, prior_fwd) = if fwd.peer_trusted {
        (
            joined(headers, "x-forwarded-for"),
            joined(headers, "forwarded"),
        )
    } else {
        (None, None)
    };
    for name in &drop {
        if !(upgrade && name == UPGRADE) {
            headers.remove(name);
        }
    }

    let peer = fwd.peer_ip.to_canonical();
    let xff = match prior_xff {
        Some(prior) => format!("{prior}, {peer}"),
        None => peer.to_string(),
    };
    insert(headers, "x-forwarded-for", &xff);
    if !(fwd.peer_trusted && headers.contains_key("x-forwarded-proto")) {
        insert(headers, "x-forwarded-proto", fwd.proto);
    }
    if !(fwd.peer_trusted && headers.contains_key("x-forwarded-host")) {
        insert(headers, "x-forwarded-host", fwd.host);
    }
    insert(headers, "x-real-ip", &fwd.client_ip.to_string());
    let mut forwarded = String::with_capacity(64);
    if let Some(prior) = prior_fwd {
        forwarded.push_str(&prior);
        forwarded.push_str(", ");
    }
    match peer {
        IpAddr::V4(a) => {
            let _ = write!(forwarded, "for={a}");
        }
        IpAddr::V6(a) => {
            let _ = write!(forwarded, "for=\"[{a}]\"");
        }
    }
    let _ = write!(
        forwarded,
        ";host=\"{}\";proto={}",
        fwd.host.replace(['"', '\\'], ""),
        fwd.proto
    );
    insert(headers, "forwarded", &forwarded);
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Cleans the headers of a response coming back from upstream.
pub fn clean_response(headers: &mut HeaderMap, upgrade: bool) {
    let mut drop: Vec<HeaderName> = Vec::new();
    collect_connection_tokens(headers, &mut drop);
    for name in headers.keys() {
        if HOP_BY_HOP.contains(&name.as_str()) {
            drop.push(name.clone());
        }
    }
    for name in &drop {
        if !(upgrade && (name == UPGRADE || name == CONNECTION)) {
            headers.remove(name);
        }
    }
}

/// Every header named in `Connection` (RFC 9110 s7.6.1).
fn collect_connection_tokens(headers: &HeaderMap, out: &mut Vec<HeaderName>) {
    for v in headers.get_all(CONNECTION) {
        let Ok(v) = v.to_str() else { continue };
        for token in v.split(',') {
            let t = token.trim();
            if t.is_empty()
                || t.eq_ignore_ascii_case("close")
                || t.eq_ignore_ascii_case("keep-alive")
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(t.to_ascii_lowercase().as_bytes()) {
                out.push(name);
            }
        }
    }
}

/// Whether a request asks for a protocol switch (HTTP/1.1 `Connection: upgrade` + `Upgrade`).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers.get_all(CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

fn joined(headers: &HeaderMap, name: &str) -> Option<String> {
    let parts: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    fn info(trusted: bool) -> ForwardInfo<'static> {
        ForwardInfo {
            client_ip: "198.51.100.7".parse().unwrap(),
            peer_trusted: trusted,
            peer_ip: if trusted {
                "10.0.0.2".parse().unwrap()
            } else {
                "198.51.100.7".parse().unwrap()
            },
            proto: "https",
            host: "app.example:8443",
        }
    }

    #[test]
    fn strips_identity_headers_in_every_spelling() {
        let mut h = map(&[
            ("x-otpgate-email", "evil@x.example"),
            ("x_otpgate_user", "evil"),
            ("X-OTPGATE-GROUPS", "admins"),
            ("x-otpgate_email", "evil"),
            ("x-original-url", "/admin"),
            ("x_rewrite_url", "/admin"),
            ("accept", "text/html"),
        ]);
        prepare_request(&mut h, &info(false), false);
        for k in h.keys() {
            assert!(
                !k.as_str().replace('_', "-").starts_with("x-otpgate-"),
                "{k}"
            );
            assert!(
                !k.as_str().contains("original") && !k.as_str().contains("rewrite"),
                "{k}"
            );
        }
        assert_eq!(h["accept"], "text/html");
    }

    #[test]
    fn removes_hop_by_hop_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Foo, x-bar"),
            ("keep-alive", "timeout=5"),
            ("x-foo", "1"),
            ("x-bar", "2"),
            ("x-baz", "3"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("upgrade", "websocket"),
            ("expect", "100-continue"),
        ]);
        prepare_request(&mut h, &info(false), false);
        for gone in [
            "connection",
            "keep-alive",
            "x-foo",
            "x-bar",
            "te",
            "transfer-encoding",
            "proxy-authorization",
            "upgrade",
            "expect",
        ] {
            assert!(!h.contains_key(gone), "{gone} should be removed");
        }
        assert_eq!(h["x-baz"], "3");
    }

    #[test]
    fn connection_cannot_remove_the_gateways_own_headers() {
        let mut h = map(&[("connection", "X-Forwarded-For, X-Real-IP, Forwarded")]);
        prepare_request(&mut h, &info(false), false);
        assert_eq!(h["x-forwarded-for"], "198.51.100.7");
        assert_eq!(h["x-real-ip"], "198.51.100.7");
        assert!(h.contains_key("forwarded"));
    }

    #[test]
    fn untrusted_forwarding_headers_are_replaced() {
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-prefix", "/evil"),
            ("x_forwarded_for", "5.6.7.8"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
        ]);
        prepare_request(&mut h, &info(false), false);
        assert_eq!(h["x-forwarded-for"], "198.51.100.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "app.example:8443");
        assert!(!h.contains_key("x-forwarded-prefix"));
        assert!(!h.contains_key("x_forwarded_for"));
        assert_eq!(
            h["forwarded"],
            "for=198.51.100.7;host=\"app.example:8443\";proto=https"
        );
        assert_eq!(h["x-real-ip"], "198.51.100.7");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn trusted_forwarding_headers_are_extended() {
        let mut h = map(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "public.example"),
            ("x-forwarded-prefix", "/app"),
            ("forwarded", "for=198.51.100.7"),
        ]);
        prepare_request(&mut h, &info(true), false);
        assert_eq!(h["x-forwarded-for"], "198.51.100.7, 10.0.0.2");
        assert_eq!(h["x-forwarded-host"], "public.example");
        assert_eq!(h["x-forwarded-prefix"], "/app");
        assert_eq!(
            h["forwarded"],
            "for=198.51.100.7, for=10.0.0.2;host=\"app.example:8443\";proto=https"
        );
        assert_eq!(h["x-real-ip"], "198.51.100.7");
    }

    #[test]
    fn ipv6_peers_are_quoted_in_forwarded() {
        let mut h = HeaderMap::new();
        let mut i = info(false);
        i.peer_ip = "2001:db8::1".parse().unwrap();
        prepare_request(&mut h, &i, false);
        assert!(
            h["forwarded"]
                .to_str()
                .unwrap()
                .starts_with("for=\"[2001:db8::1]\"")
        );
    }

    #[test]
    fn upgrades_keep_upgrade() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(wants_upgrade(&h));
        prepare_request(&mut h, &info(false), true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "k");
        assert!(!wants_upgrade(&map(&[("upgrade", "websocket")])));
    }

    #[test]
    fn response_hop_by_hop_is_removed() {
        let mut h = map(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "t"),
            ("content-type", "text/plain"),
        ]);
        clean_response(&mut h, false);
        assert_eq!(h.len(), 1);
        assert_eq!(h["content-type"], "text/plain");
    }
}
