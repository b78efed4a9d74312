//! Header hygiene between client and upstream.
//!
//! Requests: hop-by-hop headers go (the standard ones and every one the client names in
//! `Connection`), identity headers go in every spelling (`X-Otpgate-Email`, `x_otpgate_email`,
//! `Remote-User`, `X-Forwarded-User`, ...: the app's [`Strip`] list, docs/security.md#40), as
//! do URL-override headers some frameworks route on (`X-Original-URL`, `X-Rewrite-URL`), and
//! forwarding headers from untrusted clients; then the gateway's own `X-Forwarded-*`,
//! `Forwarded` and `X-Real-IP` are set (docs/security.md#34). The service-token headers
//! (`Otpgate-Client-Id`, `Otpgate-Client-Secret`) go in every spelling too: a credential for the
//! gateway is nothing the upstream should see.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::HeaderMap;
use http::header::{CONNECTION, HeaderName, HeaderValue, UPGRADE};

use super::plan::{Plan, Removals, valid_value};
use super::strip::{self, Strip};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Compares a lower-case header name with `want`, treating `_` as `-`.
fn folded_eq(name: &[u8], want: &str) -> bool {
    strip::folded_eq(name, want.as_bytes())
}

fn folded_starts_with(name: &[u8], prefix: &str) -> bool {
    name.len() >= prefix.len() && folded_eq(&name[..prefix.len()], prefix)
}

/// Whether a request header must not reach the upstream. Decided on the first byte so the
/// common headers (accept, cookie, user-agent, ...) cost one comparison.
///
/// Removed: hop-by-hop headers (RFC 9110 s7.6.1 and the usual non-standard ones),
/// URL-override headers some frameworks route on, `Expect` (the gateway answers
/// `100-continue` itself), and forwarding headers unless the peer is a trusted proxy
/// (underscore spellings of those always: no proxy of ours writes them). Identity headers are
/// the app's [`Strip`] list's to decide.
fn remove_from_request(name: &[u8], peer_trusted: bool, upgrade: bool) -> bool {
    let forwarding = |name: &[u8]| {
        folded_starts_with(name, "x-forwarded-")
            || folded_eq(name, "x-real-ip")
            || folded_eq(name, "x-client-ip")
            || folded_eq(name, "true-client-ip")
            || folded_eq(name, "forwarded")
    };
    let untrusted_forwarding =
        |name: &[u8]| forwarding(name) && (!peer_trusted || name.contains(&b'_'));
    match name.first() {
        Some(b'x') => {
            folded_eq(name, "x-original-url")
                || folded_eq(name, "x-original-uri")
                || folded_eq(name, "x-rewrite-url")
                || folded_eq(name, "x-http-method-override")
                || untrusted_forwarding(name)
        }
        Some(b'c') => name == b"connection",
        Some(b'k') => name == b"keep-alive",
        Some(b'p') => matches!(
            name,
            b"proxy-connection" | b"proxy-authenticate" | b"proxy-authorization"
        ),
        Some(b't') => {
            matches!(name, b"te" | b"trailer" | b"transfer-encoding") || untrusted_forwarding(name)
        }
        Some(b'u') => name == b"upgrade" && !upgrade,
        Some(b'e') => name == b"expect",
        Some(b'o') => {
            folded_eq(name, crate::config::CLIENT_ID_HEADER)
                || folded_eq(name, crate::config::CLIENT_SECRET_HEADER)
        }
        Some(b'f') => untrusted_forwarding(name),
        _ => false,
    }
}

/// Hop-by-hop response headers. `Trailer` is not one (RFC 9110 s6.6.2): it declares the
/// trailers that follow, and an HTTP/1.1 client gets trailers only when they are declared.
pub(super) fn hop_by_hop(name: &[u8]) -> bool {
    matches!(
        name,
        b"connection"
            | b"keep-alive"
            | b"proxy-connection"
            | b"proxy-authenticate"
            | b"proxy-authorization"
            | b"te"
            | b"transfer-encoding"
            | b"upgrade"
    )
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

/// Writes an address as `Display` does. IPv4, the common case, without the formatting
/// machinery (`Ipv4Addr`'s `Display` costs over a thousand instructions; this, a few dozen):
/// the digits go into a stack buffer, then into `out` in one copy.
fn push_ip(out: &mut String, ip: IpAddr) {
    let IpAddr::V4(v4) = ip else {
        // Writing into a String does not fail.
        let _ = write!(out, "{ip}");
        return;
    };
    let mut buf = [b'.'; 16];
    let mut len = 0;
    for octet in v4.octets() {
        if octet >= 100 {
            buf[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            buf[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        buf[len] = b'0' + octet % 10;
        // The dot after the octet is in `buf` already; the last one is left out below.
        len += 2;
    }
    // Digits and dots only: ASCII.
    if let Ok(text) = std::str::from_utf8(&buf[..len - 1]) {
        out.push_str(text);
    }
}

#[cfg(test)]
fn ip_text(ip: IpAddr) -> String {
    let mut out = String::new();
    push_ip(&mut out, ip);
    out
}

/// Cleans and completes the headers of a request going upstream: what `strip` lists goes
/// with the rest, on every request (docs/security.md#40). `upgrade` keeps the `Upgrade` header
/// (and sets `Connection: upgrade`) for protocol switches such as WebSocket.
pub fn prepare_request(
    headers: &mut HeaderMap,
    fwd: &ForwardInfo<'_>,
    strip: &Strip,
    upgrade: bool,
) {
    plan_request(headers, fwd, strip, upgrade).apply(headers);
}

/// What [`prepare_request`] does to `headers`, as a [`Plan`] (applied to the map, or written
/// straight into a request head by the direct HTTP/1.1 path).
pub fn plan_request<'a>(
    headers: &HeaderMap,
    fwd: &ForwardInfo<'_>,
    strip: &Strip,
    upgrade: bool,
) -> Plan<'a> {
    let mut plan = Plan::new(upgrade);
    collect_connection_tokens(headers, &mut plan.removals);
    for name in headers.keys() {
        let name_bytes = name.as_str().as_bytes();
        if remove_from_request(name_bytes, fwd.peer_trusted, upgrade) || strip.matches(name_bytes) {
            plan.remove(name.clone());
        }
    }
    let peer = fwd.peer_ip.to_canonical();
    // The forwarding headers' text goes into the plan's one buffer. The peer's address is
    // written once, inside Forwarded, and X-Real-IP and (but behind a trusted proxy) the
    // X-Forwarded-For are that same text; so is X-Forwarded-Host the Host inside Forwarded,
    // when it needed no quotes or backslashes dropped.
    let text = plan.text(128 + 2 * fwd.host.len());
    let forwarded_start = text.len();
    if fwd.peer_trusted && push_joined(text, headers, &FORWARDED) {
        text.push_str(", ");
    }
    match peer {
        IpAddr::V4(_) => text.push_str("for="),
        IpAddr::V6(_) => text.push_str("for=\"["),
    }
    let peer_start = text.len();
    push_ip(text, peer);
    let peer_range = peer_start..text.len();
    if peer.is_ipv6() {
        text.push_str("]\"");
    }
    text.push_str(";host=\"");
    let host_start = text.len();
    // Host syntax has no quotes or backslashes; drop any so the quoted-string stays intact.
    let filtered = fwd.host.bytes().any(|b| b == b'"' || b == b'\\');
    if filtered {
        text.extend(fwd.host.chars().filter(|c| *c != '"' && *c != '\\'));
    } else {
        text.push_str(fwd.host);
    }
    let mut host = host_start..text.len();
    text.push_str("\";proto=");
    text.push_str(fwd.proto);
    let forwarded = forwarded_start..text.len();
    if filtered {
        let start = text.len();
        text.push_str(fwd.host);
        host = start..text.len();
    }

    let mut xff = peer_range.clone();
    if fwd.peer_trusted {
        let start = text.len();
        if push_joined(text, headers, &X_FORWARDED_FOR) {
            text.push_str(", ");
            push_ip(text, peer);
            xff = start..text.len();
        }
    }

    let real_ip = if fwd.client_ip == peer {
        peer_range
    } else {
        let start = text.len();
        push_ip(text, fwd.client_ip);
        start..text.len()
    };

    plan.add_text(&X_FORWARDED_FOR, xff);
    if !(fwd.peer_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        plan.add_owned(&X_FORWARDED_PROTO, HeaderValue::from_static(fwd.proto));
    }
    // The Host is the only text from outside that is not a header value already (the prior
    // forwarding headers' text is, the addresses are digits and punctuation): as before the
    // buffer, a Host that is no header value leaves out the two headers that carry it.
    let host_ok = valid_value(fwd.host.as_bytes());
    if host_ok && !(fwd.peer_trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        plan.add_text(&X_FORWARDED_HOST, host);
    }
    plan.add_text(&X_REAL_IP, real_ip);
    if host_ok && valid_value(fwd.proto.as_bytes()) {
        plan.add_text(&FORWARDED, forwarded);
    }
    if upgrade {
        plan.add(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    plan
}

/// Cleans the headers of a response coming back from upstream.
pub fn clean_response(headers: &mut HeaderMap, upgrade: bool) {
    let mut removals = Removals::new();
    collect_connection_tokens(headers, &mut removals);
    for name in headers.keys() {
        if hop_by_hop(name.as_str().as_bytes()) {
            removals.push(std::borrow::Cow::Owned(name.clone()));
        }
    }
    removals.apply(headers, |n| upgrade && (n == UPGRADE || n == CONNECTION));
}

/// Whether `headers` has one called `name`. For the hop-by-hop names most requests lack, a
/// look at the few names costs less than a lookup by hash (a hundred-odd instructions).
pub(crate) fn has(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers.keys().any(|k| k == name)
}

/// Every header named in `Connection` (RFC 9110 s7.6.1).
fn collect_connection_tokens(headers: &HeaderMap, out: &mut Removals<'_>) {
    if !has(headers, &CONNECTION) {
        return;
    }
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
            if let Ok(name) = HeaderName::from_bytes(t.as_bytes()) {
                out.push(std::borrow::Cow::Owned(name));
            }
        }
    }
}

/// Whether a request asks to switch to WebSocket (HTTP/1.1 `Connection: upgrade` +
/// `Upgrade: websocket`). Other protocol switches (h2c, ...) are not passed through: their
/// `Upgrade` header is dropped like any hop-by-hop header.
pub fn wants_websocket(headers: &HeaderMap) -> bool {
    if !has(headers, &UPGRADE) {
        return false;
    }
    let has_token = |name: HeaderName, token: &[u8]| {
        headers
            .get_all(name)
            .iter()
            .any(|v| crate::http::lists_token(v.as_bytes(), token))
    };
    has_token(UPGRADE, b"websocket") && has_token(CONNECTION, b"upgrade")
}

/// Appends the values of `name` (those that are text), joined by `, `; false if there were none.
fn push_joined(out: &mut String, headers: &HeaderMap, name: &HeaderName) -> bool {
    let mut any = false;
    for v in headers.get_all(name) {
        let Ok(v) = v.to_str() else { continue };
        if any {
            out.push_str(", ");
        }
        out.push_str(v);
        any = true;
    }
    any
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A header map of `pairs`, in order (also for the plan's tests).
    pub(in crate::proxy) fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    /// The forwarding facts of a request from 198.51.100.7, behind a trusted proxy or not
    /// (also for the plan's tests).
    pub(in crate::proxy) fn info(trusted: bool) -> ForwardInfo<'static> {
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
        prepare_request(&mut h, &info(false), &Strip::default(), false);
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
    fn sec_34_service_token_headers_are_stripped_in_every_spelling() {
        let mut h = map(&[
            ("otpgate-client-id", "id"),
            ("otpgate-client-secret", "secret"),
            ("Otpgate_Client_Secret", "secret"),
            ("otpgate-client_id", "id"),
            ("accept", "text/html"),
        ]);
        prepare_request(&mut h, &info(false), &Strip::default(), false);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert!(!names.iter().any(|n| n.starts_with("otpgate")), "{names:?}");
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
        prepare_request(&mut h, &info(false), &Strip::default(), false);
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
        prepare_request(&mut h, &info(false), &Strip::default(), false);
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
        prepare_request(&mut h, &info(false), &Strip::default(), false);
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
        prepare_request(&mut h, &info(true), &Strip::default(), false);
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
    fn foreign_identity_headers_go_even_from_a_trusted_proxy() {
        let mut h = map(&[
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-user", "mallory"),
            ("x_forwarded_email", "mallory@evil.example"),
            ("remote-user", "mallory"),
            ("x-forwarded-prefix", "/app"),
        ]);
        prepare_request(&mut h, &info(true), &Strip::default(), false);
        for gone in ["x-forwarded-user", "x_forwarded_email", "remote-user"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert_eq!(h["x-forwarded-for"], "198.51.100.7, 10.0.0.2");
        assert_eq!(h["x-forwarded-prefix"], "/app");
    }

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "198.51.100.7",
            "2001:db8::1",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    /// A Host that is no header value (here with a DEL) leaves out X-Forwarded-Host and
    /// Forwarded, which would carry it, on both paths; the address headers stay.
    #[test]
    fn a_host_that_is_no_header_value_is_not_forwarded() {
        let mut i = info(false);
        i.host = "app\x7f.example";
        let h = map(&[("accept", "*/*")]);
        let mut written = Vec::new();
        plan_request(&h, &i, &Strip::default(), false).write(&h, &mut written);
        let mut applied = h.clone();
        prepare_request(&mut applied, &i, &Strip::default(), false);
        assert!(!applied.contains_key("x-forwarded-host"));
        assert!(!applied.contains_key("forwarded"));
        assert_eq!(applied["x-real-ip"], "198.51.100.7");
        let text = String::from_utf8_lossy(&written).to_ascii_lowercase();
        assert!(!text.contains("x-forwarded-host") && !text.contains("forwarded:"));
        assert!(text.contains("x-forwarded-for: 198.51.100.7\r\n"), "{text}");
    }

    #[test]
    fn ipv6_peers_are_quoted_in_forwarded() {
        let mut h = HeaderMap::new();
        let mut i = info(false);
        i.peer_ip = "2001:db8::1".parse().unwrap();
        prepare_request(&mut h, &i, &Strip::default(), false);
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
        assert!(wants_websocket(&h));
        prepare_request(&mut h, &info(false), &Strip::default(), true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "k");
        assert!(!wants_websocket(&map(&[("upgrade", "websocket")])));
        assert!(!wants_websocket(&map(&[
            ("connection", "upgrade"),
            ("upgrade", "h2c")
        ])));
        assert!(wants_websocket(&map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket")
        ])));
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
