//! Stage 7, the proxy stage's request headers: what the upstream learns about the person and
//! the client, and what the client cannot make it believe (docs/security.md#34,
//! docs/security.md#40).

use super::*;

/// `app` needs a session except under `/public/`; proxies in 10.0.0.0/8 are trusted.
fn app() -> Stage {
    Stage::new(&config(
        "trusted_proxies: [10.0.0.0/8, 'fd00::/8']
users:
  - { id: alice@corp.example, groups: [engineering, ops] }",
        "  - name: app
    hosts: [app.test]
    public_url: http://app.test
    upstream: builtin:echo
    policies:
      - { name: public, action: bypass, paths: [/public/] }
      - { name: all, action: allow, include: [ { everyone: true } ] }
",
    ))
}

/// Client-supplied identity headers in several spellings, and URL overrides.
const SPOOFS: [(&str, &str); 8] = [
    ("x-otpgate-email", "mallory@evil.example"),
    ("X-OTPGATE-USER", "mallory"),
    ("x_otpgate_groups", "admins"),
    ("x-otpgate_email", "mallory2@evil.example"),
    ("x-otpgate-anything", "1"),
    ("x-original-url", "/admin"),
    ("x_rewrite_url", "/admin"),
    ("x-http-method-override", "DELETE"),
];

fn spoofed(path: &str) -> http::request::Builder {
    SPOOFS
        .iter()
        .fold(get("app.test", path), |req, (k, v)| req.header(*k, *v))
}

/// Asserts no header the upstream got is one of the spoofs (in any spelling).
fn assert_no_spoof_arrived(r: &Reply, except_identity: bool) {
    let echo = r.echo();
    for (name, values) in echo["headers"].as_object().unwrap() {
        let folded = name.replace('_', "-");
        assert!(!name.contains('_'), "{name} reached the upstream");
        assert!(
            !folded.contains("original-url")
                && !folded.contains("rewrite-url")
                && !folded.contains("method-override"),
            "{name} reached the upstream"
        );
        if folded.starts_with("x-otpgate-") {
            assert!(except_identity, "{name} reached the upstream: {values}");
            assert!(
                !values.to_string().contains("mallory") && !values.to_string().contains("admins"),
                "{name}: {values}"
            );
        }
    }
}

/// docs/product.md#s4.
#[tokio::test]
async fn a_session_sends_the_identity_headers_upstream() {
    let stage = app();
    let r = stage
        .send(
            get("app.test", "/x")
                .header("cookie", stage.cookie_for("app", "Alice@Corp.example"))
                .body(())
                .unwrap(),
        )
        .await;
    assert_eq!(r.echoed("x-otpgate-email"), ["alice@corp.example"]);
    assert_eq!(r.echoed("x-otpgate-user"), ["alice@corp.example"]);
    assert_eq!(r.echoed("x-otpgate-groups"), ["engineering,ops"]);
    // Someone outside the user table: the address is the user, and there are no groups.
    let r = stage
        .send(
            get("app.test", "/x")
                .header("cookie", stage.cookie_for("app", "bob@corp.example"))
                .body(())
                .unwrap(),
        )
        .await;
    assert_eq!(r.echoed("x-otpgate-user"), ["bob@corp.example"]);
    assert_eq!(r.echoed("x-otpgate-groups"), [""]);
}

#[tokio::test]
async fn client_identity_headers_are_replaced_for_a_session() {
    let stage = app();
    let r = stage
        .send(
            spoofed("/x")
                .header("cookie", stage.cookie_for("app", "alice@corp.example"))
                .body(())
                .unwrap(),
        )
        .await;
    assert_no_spoof_arrived(&r, true);
    assert_eq!(r.echoed("x-otpgate-email"), ["alice@corp.example"]);
    assert_eq!(r.echoed("x-otpgate-groups"), ["engineering,ops"]);
    assert_eq!(r.echo()["method"], "GET");
}

#[tokio::test]
async fn client_identity_headers_are_stripped_on_a_bypass() {
    let stage = app();
    // Also with a valid session: a bypass never looks at it, so no identity is sent.
    let cookie = stage.cookie_for("app", "alice@corp.example");
    for with_cookie in [false, true] {
        let mut req = spoofed("/public/x");
        if with_cookie {
            req = req.header("cookie", &cookie);
        }
        let r = stage.send(req.body(()).unwrap()).await;
        assert_no_spoof_arrived(&r, false);
        assert_eq!(r.echo()["identity"], serde_json::json!({}));
    }
}

#[tokio::test]
async fn the_gateway_cookies_never_reach_the_upstream_but_others_do() {
    let stage = app();
    let cookie = stage.cookie_for("app", "alice@corp.example");
    let r = stage
        .send(
            get("app.test", "/x")
                .header("cookie", format!("theme=dark; {cookie}; lang=en"))
                .header(
                    "cookie",
                    "otpgate-login=v1.tx; otpgate-pw=v1.pw; __Host-otpgate=v1.x; n=1; \
                     __Host-otpgate-device=v1.d; otpgate-device=v1.d",
                )
                .body(())
                .unwrap(),
        )
        .await;
    assert_eq!(r.echoed("cookie"), ["theme=dark; lang=en; n=1"]);
    // Only gateway cookies: no Cookie header at all.
    let r = stage
        .send(
            get("app.test", "/x")
                .header("cookie", &cookie)
                .body(())
                .unwrap(),
        )
        .await;
    assert!(r.echoed("cookie").is_empty());
    // Names that merely contain the word are the app's.
    let r = stage
        .send(
            get("app.test", "/public/x")
                .header("cookie", "nototpgate=1; otpgate-theme=2")
                .body(())
                .unwrap(),
        )
        .await;
    assert_eq!(r.echoed("cookie"), ["nototpgate=1; otpgate-theme=2"]);
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed() {
    let stage = app();
    let r = stage
        .send(
            get("app.test", "/public/x")
                .header("connection", "keep-alive, X-Foo, x-bar")
                .header("keep-alive", "timeout=9")
                .header("x-foo", "secret")
                .header("x-bar", "secret")
                .header("te", "trailers")
                .header("trailer", "x-checksum")
                .header("proxy-authorization", "Basic Zm9vOmJhcg==")
                .header("proxy-connection", "keep-alive")
                .header("upgrade", "h2c")
                .header("expect", "100-continue")
                .header("x-baz", "kept")
                .body(())
                .unwrap(),
        )
        .await;
    let h = r.echo()["headers"].clone();
    for gone in [
        "connection",
        "keep-alive",
        "x-foo",
        "x-bar",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
        "expect",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream: {h}");
    }
    assert_eq!(r.echoed("x-baz"), ["kept"]);
}

#[tokio::test]
async fn forwarding_headers_describe_the_peer_when_it_is_not_a_trusted_proxy() {
    let stage = app();
    let r = stage
        .send(
            get("app.test:8080", "/public/x")
                .header("x-forwarded-for", "6.6.6.6")
                .header("x-forwarded-proto", "https")
                .header("x-forwarded-host", "evil.example")
                .header("x-real-ip", "6.6.6.6")
                .header("forwarded", "for=6.6.6.6;proto=https")
                .header("true-client-ip", "6.6.6.6")
                .body(())
                .unwrap(),
        )
        .await;
    assert_eq!(r.echoed("x-forwarded-for"), ["203.0.113.9"]);
    assert_eq!(r.echoed("x-forwarded-proto"), ["http"]);
    assert_eq!(r.echoed("x-forwarded-host"), ["app.test:8080"]);
    assert_eq!(r.echoed("x-real-ip"), ["203.0.113.9"]);
    assert_eq!(
        r.echoed("forwarded"),
        ["for=203.0.113.9;host=\"app.test:8080\";proto=http"]
    );
    assert!(r.echoed("true-client-ip").is_empty());
    // Over TLS the scheme is https, from the connection itself.
    let r = stage
        .send_on(get("app.test", "/public/x").body(()).unwrap(), &tls(None))
        .await;
    assert_eq!(r.echoed("x-forwarded-proto"), ["https"]);
}

#[tokio::test]
async fn forwarding_headers_of_a_trusted_proxy_are_kept_and_extended() {
    let stage = app();
    let r = stage
        .send_on(
            get("app.test", "/public/x")
                .header("x-forwarded-for", "198.51.100.7")
                .header("x-forwarded-proto", "https")
                .header("x-forwarded-host", "public.example")
                .header("forwarded", "for=198.51.100.7")
                .header("x_forwarded_for", "6.6.6.6")
                .body(())
                .unwrap(),
            &conn("10.0.0.2:3000"),
        )
        .await;
    assert_eq!(r.echoed("x-forwarded-for"), ["198.51.100.7, 10.0.0.2"]);
    assert_eq!(r.echoed("x-forwarded-proto"), ["https"]);
    assert_eq!(r.echoed("x-forwarded-host"), ["public.example"]);
    assert_eq!(r.echoed("x-real-ip"), ["198.51.100.7"]);
    assert_eq!(
        r.echoed("forwarded"),
        ["for=198.51.100.7, for=10.0.0.2;host=\"app.test\";proto=https"]
    );
    // No proxy of ours writes underscore spellings: never believed.
    assert!(r.echo()["headers"].get("x_forwarded_for").is_none());
}

#[tokio::test]
async fn an_ipv6_peer_is_quoted_in_forwarded() {
    let stage = app();
    let r = stage
        .send_on(
            get("app.test", "/public/x").body(()).unwrap(),
            &conn("[2001:db8::5]:443"),
        )
        .await;
    assert_eq!(r.echoed("x-forwarded-for"), ["2001:db8::5"]);
    assert_eq!(
        r.echoed("forwarded"),
        ["for=\"[2001:db8::5]\";host=\"app.test\";proto=http"]
    );
    // A v4 client on a dual-stack socket is reported as v4.
    let r = stage
        .send_on(
            get("app.test", "/public/x").body(()).unwrap(),
            &conn("[::ffff:192.0.2.1]:443"),
        )
        .await;
    assert_eq!(r.echoed("x-forwarded-for"), ["192.0.2.1"]);
}

/// Identity headers other gateways and web servers set (docs/security.md#40), as clients
/// spell them; the prefix entries of the list by some of their members.
const FOREIGN: [&str; 26] = [
    "Remote-User",
    "Remote-Email",
    "Remote-Groups",
    "Remote-Name",
    "X-Remote-User",
    "X-Remote-Email",
    "X-Remote-Groups",
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Preferred-Username",
    "X-Forwarded-Groups",
    "X-Forwarded-Access-Token",
    "X-Auth-Request-User",
    "X-Auth-Request-Email",
    "X-Auth-Request-Groups",
    "X-Auth-Request-Access-Token",
    "X-WEBAUTH-USER",
    "X-Webauth-Groups",
    "Cf-Access-Authenticated-User-Email",
    "Cf-Access-Jwt-Assertion",
    "X-Pomerium-Jwt-Assertion",
    "X-Pomerium-Claim-Email",
    "Otpgate-User",
    "X-Otpgate-Email",
    "X-OTPGATE-Groups",
    "x-otpgate-user",
];

/// `req` with every name of `names` twice: as written, and with each `-` written `_`; each
/// value is `mallory` and the name, so any that arrives is recognised.
fn with_spoofs(mut req: http::request::Builder, names: &[&str]) -> http::request::Builder {
    for name in names {
        req = req
            .header(*name, format!("mallory {name}"))
            .header(name.replace('-', "_"), format!("mallory {name}"));
    }
    req
}

/// Asserts nothing the client sent under `names` reached the upstream, in any spelling.
fn assert_none_arrived(r: &Reply, names: &[&str]) {
    let echo = r.echo();
    for (name, values) in echo["headers"].as_object().unwrap() {
        let folded = name.replace('_', "-");
        assert!(
            !names.iter().any(|n| n.eq_ignore_ascii_case(&folded)),
            "{name} reached the upstream: {values}"
        );
        assert!(!values.to_string().contains("mallory"), "{name}: {values}");
    }
}

#[tokio::test]
async fn sec_40_foreign_identity_headers_never_reach_the_upstream() {
    let stage = app();
    let cookie = stage.cookie_for("app", "alice@corp.example");
    // Bypass and session, from a client and from a trusted proxy.
    for (path, session) in [("/public/x", false), ("/x", true)] {
        for peer in [CLIENT, "10.0.0.2:3000"] {
            let mut req = with_spoofs(get("app.test", path), &FOREIGN);
            if session {
                req = req.header("cookie", &cookie);
            }
            let r = stage.send_on(req.body(()).unwrap(), &conn(peer)).await;
            // With a session the gateway's own names arrive, with its values (any spoof value
            // fails `assert_none_arrived`); every other name must be absent.
            let own = |n: &&str| session && n.to_ascii_lowercase().starts_with("x-otpgate-");
            let absent: Vec<&str> = FOREIGN.into_iter().filter(|n| !own(n)).collect();
            assert_none_arrived(&r, &absent);
            if session {
                assert_eq!(r.echoed("x-otpgate-email"), ["alice@corp.example"]);
                assert_eq!(r.echoed("x-otpgate-user"), ["alice@corp.example"]);
                assert_eq!(r.echoed("x-otpgate-groups"), ["engineering,ops"]);
            } else {
                assert_eq!(r.echo()["identity"], serde_json::json!({}));
            }
            // Hygiene did not cost the rest: a trusted proxy's chain is still extended.
            if peer != CLIENT {
                assert_eq!(r.echoed("x-forwarded-for"), ["10.0.0.2"]);
            }
        }
    }
}

/// `strip_request_headers`, and two apps with their own identity header names: Grafana's auth
/// proxy headers, and one renamed header outside the built-in list.
fn renamed() -> Stage {
    Stage::new(&config(
        "strip_request_headers: [X-Employee-Id, X-Legacy-*]
users:
  - { id: alice@corp.example, groups: [engineering, ops] }",
        "  - name: grafana
    hosts: [grafana.test]
    public_url: http://grafana.test
    upstream: builtin:echo
    identity_headers: { email: X-WEBAUTH-USER, user: X-WEBAUTH-NAME, groups: X-WEBAUTH-GROUPS }
    policies:
      - { name: public, action: bypass, paths: [/public/] }
      - { name: all, action: allow, include: [ { everyone: true } ] }
  - name: hr
    hosts: [hr.test]
    public_url: http://hr.test
    upstream: builtin:echo
    identity_headers: { email: X-Employee-Email }
    policies:
      - { name: public, action: bypass, paths: [/public/] }
      - { name: all, action: allow, include: [ { everyone: true } ] }
",
    ))
}

#[tokio::test]
async fn the_operators_strip_list_applies_to_names_and_prefixes() {
    let stage = renamed();
    let req = with_spoofs(
        get("hr.test", "/public/x"),
        &[
            "X-Employee-Id",
            "X-Legacy-Role",
            "X-LEGACY-",
            "x-legacy-user-name",
        ],
    )
    .header("x-employee-idx", "kept")
    .header("x-legacy", "kept");
    let r = stage.send(req.body(()).unwrap()).await;
    assert_eq!(r.echoed("x-employee-idx"), ["kept"]);
    assert_eq!(r.echoed("x-legacy"), ["kept"]);
    let h = r.echo()["headers"].clone();
    assert!(!h.to_string().contains("mallory"), "{h}");
}

#[tokio::test]
async fn renamed_identity_headers_carry_the_identity_and_replace_spoofs() {
    let stage = renamed();
    for (host, app) in [("grafana.test", "grafana"), ("hr.test", "hr")] {
        let spoofs: &[&str] = if app == "grafana" {
            &[
                "X-WEBAUTH-USER",
                "X-Webauth-Name",
                "X-Webauth-Groups",
                "X-Otpgate-Email",
            ]
        } else {
            &["X-Employee-Email", "X-Otpgate-Email", "X-Webauth-User"]
        };
        let cookie = stage.cookie_for(app, "alice@corp.example");
        let req = with_spoofs(get(host, "/x"), spoofs).header("cookie", &cookie);
        let r = stage.send(req.body(()).unwrap()).await;
        assert_none_arrived(&r, &["x-otpgate-email"]);
        // The default names of the renamed parts are absent; the others stay.
        assert!(r.echoed("x-otpgate-email").is_empty());
        assert_eq!(r.echo()["identity"]["email"], "alice@corp.example");
        if app == "grafana" {
            assert_eq!(r.echoed("x-webauth-user"), ["alice@corp.example"]);
            assert_eq!(r.echoed("x-webauth-name"), ["alice@corp.example"]);
            assert_eq!(r.echoed("x-webauth-groups"), ["engineering,ops"]);
            assert!(r.echoed("x-otpgate-user").is_empty());
            assert!(r.echoed("x-otpgate-groups").is_empty());
            assert!(r.echoed("x-employee-email").is_empty());
        } else {
            assert_eq!(r.echoed("x-employee-email"), ["alice@corp.example"]);
            assert_eq!(r.echoed("x-otpgate-user"), ["alice@corp.example"]);
            assert_eq!(r.echoed("x-otpgate-groups"), ["engineering,ops"]);
            assert!(r.echoed("x-webauth-user").is_empty());
        }
        // Without a session (bypass) a client can supply none of them either.
        let r = stage
            .send(
                with_spoofs(get(host, "/public/x"), spoofs)
                    .body(())
                    .unwrap(),
            )
            .await;
        assert_none_arrived(&r, spoofs);
        assert_eq!(r.echo()["identity"], serde_json::json!({}));
    }
}
