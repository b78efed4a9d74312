//! The forward-auth endpoint, `/.otpgate/auth` (docs/product.md#s4): a trusted front proxy
//! describes the request it is about to forward — Traefik and Caddy with `X-Forwarded-Host` and
//! `X-Forwarded-Uri`, nginx with `X-Original-URL` — and gets `200` with the identity headers,
//! a way to the login page, `403`, or `400` for a description that cannot be trusted to mean
//! one thing (docs/security.md#34, docs/security.md#35).

use super::*;

/// The front proxy, inside `trusted_proxies`.
const FRONT: &str = "10.0.0.2:41000";

const LOGIN: &str = "http://wiki.test/.otpgate/login?rd=http%3A%2F%2Fwiki.test%2Fdocs%2Fa%3Fx%3D1";

/// `wiki` is served by its front proxy; `proxied` by the gateway itself.
fn apps() -> Stage {
    Stage::new(&config(
        "users:
  - { id: alice@corp.example, groups: [engineering, ops] }
trusted_proxies: [10.0.0.0/8]
session: { duration: 1h, idle_timeout: 30m }",
        "  - name: wiki
    hosts: [wiki.test]
    public_url: http://wiki.test
    mode: forward_auth
    policies:
      - { name: public, action: bypass, paths: [/public/] }
      - { name: office, action: bypass, paths: [/office/], include: [ { ip: 192.0.2.0/24 } ] }
      - { name: blocked, action: block, paths: [/admin], include: [ { everyone: true } ] }
      - name: staff
        action: allow
        include: [ { email_domain: corp.example } ]
        exclude: [ { email: mallory@corp.example } ]
  - name: proxied
    hosts: [proxied.test]
    public_url: http://proxied.test
    upstream: builtin:echo
    policies: [ { name: staff, action: allow, include: [ { email_domain: corp.example } ] } ]
",
    ))
}

/// An auth request as Traefik and Caddy send it: the endpoint on the gateway's own address, the
/// original request in `X-Forwarded-*`, the client's own headers copied along.
fn traefik(uri: &str) -> http::request::Builder {
    traefik_for("wiki.test", uri)
}

/// Like [`traefik`], for a request to `host`.
fn traefik_for(host: &str, uri: &str) -> http::request::Builder {
    described(get("127.0.0.1:8080", "/.otpgate/auth"), host, uri)
}

/// `b` with Traefik's description of a request for `host` and `uri`.
fn described(b: http::request::Builder, host: &str, uri: &str) -> http::request::Builder {
    b.header("x-forwarded-method", "GET")
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", host)
        .header("x-forwarded-uri", uri)
        .header("x-forwarded-for", "198.51.100.7")
}

/// An auth request as nginx's `auth_request` sends it (the README's configuration).
fn nginx(url: &str) -> http::request::Builder {
    get("otpgate", "/.otpgate/auth")
        .header("x-original-url", url)
        .header("x-original-method", "GET")
        .header("x-forwarded-for", "198.51.100.7")
}

fn with(b: http::request::Builder, cookie: Option<&str>) -> Request<()> {
    match cookie {
        Some(c) => b.header("cookie", c),
        None => b,
    }
    .body(())
    .unwrap()
}

/// Asserts a `200` carrying `email`'s identity headers and nothing for a body.
fn assert_allowed_as(r: &Reply, email: &str, groups: &str) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-otpgate-email"), Some(email));
    assert_eq!(r.header("x-otpgate-user"), Some(email));
    assert_eq!(r.header("x-otpgate-groups"), Some(groups));
    assert_eq!(r.header("cache-control"), Some("private, no-store"));
    assert!(r.body.is_empty(), "{}", r.text());
}

#[tokio::test]
async fn traefik_and_caddy_style_allowed_requests_get_200_with_the_identity_headers() {
    let stage = apps();
    let alice = stage.cookie_for("wiki", "alice@corp.example");
    let r = stage
        .send_on(with(traefik("/docs/a?x=1"), Some(&alice)), &conn(FRONT))
        .await;
    assert_allowed_as(&r, "alice@corp.example", "engineering,ops");
    // The method of the original request does not matter (policies do not depend on it), and
    // the endpoint answers whatever method the front proxy asks with.
    let post = request("POST", "127.0.0.1:8080", "/.otpgate/auth")
        .header("x-forwarded-method", "DELETE")
        .header("x-forwarded-host", "WIKI.test:443")
        .header("x-forwarded-uri", "/docs/a")
        .header("cookie", stage.cookie_for("wiki", "bob@corp.example"))
        .body(())
        .unwrap();
    assert_allowed_as(
        &stage.send_on(post, &conn(FRONT)).await,
        "bob@corp.example",
        "",
    );
}

#[tokio::test]
async fn nginx_style_allowed_requests_get_200_with_the_identity_headers() {
    let stage = apps();
    let alice = stage.cookie_for("wiki", "alice@corp.example");
    for url in ["http://wiki.test:8080/docs/a?x=1", "https://WIKI.TEST/docs"] {
        let r = stage
            .send_on(with(nginx(url), Some(&alice)), &conn(FRONT))
            .await;
        assert_allowed_as(&r, "alice@corp.example", "engineering,ops");
    }
    // A path with the host in X-Forwarded-Host, as other nginx setups send it.
    let r = stage
        .send_on(
            with(
                nginx("/docs/a").header("x-forwarded-host", "wiki.test"),
                Some(&alice),
            ),
            &conn(FRONT),
        )
        .await;
    assert_allowed_as(&r, "alice@corp.example", "engineering,ops");
}

#[tokio::test]
async fn a_bypass_answers_200_without_identity_and_ip_policies_see_the_client_behind_the_proxy() {
    let stage = apps();
    let r = stage
        .send_on(with(traefik("/public/logo.png"), None), &conn(FRONT))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-otpgate-email"), None);
    // The office policy sees the client the front proxy reports...
    let office = traefik("/office/x").header("x-forwarded-for", "192.0.2.7");
    assert_eq!(
        stage.send_on(with(office, None), &conn(FRONT)).await.status,
        200
    );
    // ...and not the proxy itself, nor a client elsewhere.
    let r = stage
        .send_on(with(traefik("/office/x"), None), &conn("192.0.2.1:4000"))
        .await;
    assert_ne!(
        r.status, 200,
        "an untrusted peer is never answered by the endpoint"
    );
    let r = stage
        .send_on(with(traefik("/office/x"), None), &conn(FRONT))
        .await;
    assert_eq!(r.status, 302);
}

#[tokio::test]
async fn without_a_session_nginx_gets_401_with_the_login_page_in_location() {
    let stage = apps();
    let r = stage
        .send_on(
            with(nginx("http://wiki.test/docs/a?x=1"), None),
            &conn(FRONT),
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("location"), Some(LOGIN));
    assert_eq!(r.json()["error"], "login_required");
    assert_eq!(r.json()["login_url"], LOGIN);
    assert!(r.set_cookies().is_empty());
    // A cookie that does not open is deleted, as in proxy mode.
    let r = stage
        .send_on(
            with(
                nginx("http://wiki.test/docs/a?x=1"),
                Some("otpgate=v1.k1.AAAA"),
            ),
            &conn(FRONT),
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(
        r.set_cookies()[0].starts_with("otpgate=;"),
        "{:?}",
        r.set_cookies()
    );
    // API calls and subresources name no login page: nginx keeps their 401.
    for (k, v) in [
        ("accept", "application/json"),
        ("sec-fetch-mode", "no-cors"),
    ] {
        let api = nginx("http://wiki.test/docs/a?x=1").header(k, v);
        let r = stage.send_on(with(api, None), &conn(FRONT)).await;
        assert_eq!(
            (r.status.as_u16(), r.header("location")),
            (401, None),
            "{k}"
        );
        assert_eq!(r.json()["login_url"], LOGIN);
    }
}

#[tokio::test]
async fn without_a_session_traefik_and_caddy_get_302_with_rd_and_api_calls_401_json() {
    let stage = apps();
    let r = stage
        .send_on(with(traefik("/docs/a?x=1"), None), &conn(FRONT))
        .await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some(LOGIN));
    let api = traefik("/docs/a?x=1").header("accept", "application/json");
    let r = stage.send_on(with(api, None), &conn(FRONT)).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["login_url"], LOGIN);
    assert_eq!(r.header("location"), None);
}

#[tokio::test]
async fn the_mode_parameter_chooses_the_answer_to_a_missing_session() {
    let stage = apps();
    let nginx_redirect = nginx("http://wiki.test/docs/a?x=1").uri("/.otpgate/auth?mode=redirect");
    let r = stage
        .send_on(with(nginx_redirect, None), &conn(FRONT))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.header("location")),
        (302, Some(LOGIN))
    );
    let traefik_status = traefik("/docs/a?x=1").uri("/.otpgate/auth?mode=status");
    let r = stage
        .send_on(with(traefik_status, None), &conn(FRONT))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.header("location")),
        (401, Some(LOGIN))
    );
    let typo = traefik("/docs/a").uri("/.otpgate/auth?mode=redirct");
    assert_eq!(
        stage.send_on(with(typo, None), &conn(FRONT)).await.status,
        400
    );
}

/// docs/security.md#33: a block answers 403 whoever asks; so does a policy that excludes.
#[tokio::test]
async fn blocked_requests_and_people_get_403() {
    let stage = apps();
    let alice = stage.cookie_for("wiki", "alice@corp.example");
    let mallory = stage.cookie_for("wiki", "mallory@corp.example");
    for (uri, cookie) in [
        ("/admin", None),
        ("/admin/users", Some(alice.as_str())),
        ("/docs", Some(mallory.as_str())),
    ] {
        let r = stage
            .send_on(with(traefik(uri), cookie), &conn(FRONT))
            .await;
        r.assert_gateway_page(403, "Access denied");
        assert_eq!(r.header("x-otpgate-email"), None);
        let r = stage
            .send_on(
                with(nginx(&format!("http://wiki.test{uri}")), cookie),
                &conn(FRONT),
            )
            .await;
        assert_eq!(r.status, 403);
    }
    // A session for another app opens nothing here.
    let other = stage.cookie_for("proxied", "alice@corp.example");
    let r = stage
        .send_on(with(traefik("/docs"), Some(&other)), &conn(FRONT))
        .await;
    assert_eq!(r.status, 302);
}

/// docs/security.md#35: the described path is normalised as proxy mode does; what could mean two
/// things is refused, so the front proxy cannot forward a path the policies did not see.
#[tokio::test]
async fn sec_35_ambiguous_forwarded_paths_get_400() {
    let stage = apps();
    let alice = stage.cookie_for("wiki", "alice@corp.example");
    for path in [
        "/public/..%2fadmin",
        "/public/%2e%2e/admin",
        "/public/../admin",
        "/public//admin",
        "/public%2fadmin",
        "/public/%5c/admin",
        "/;/admin",
        "/docs/%00",
        "/docs/%2561",
    ] {
        for req in [traefik(path), nginx(&format!("http://wiki.test{path}"))] {
            let r = stage.send_on(with(req, Some(&alice)), &conn(FRONT)).await;
            r.assert_gateway_page(400, "ambiguous");
            assert_eq!(r.header("x-otpgate-email"), None, "{path}");
        }
    }
    // Decoded spellings of the same path are one path: the block on /admin still applies.
    let r = stage
        .send_on(with(traefik("/%61dmin"), Some(&alice)), &conn(FRONT))
        .await;
    assert_eq!(r.status, 403);
}

/// docs/security.md#34: a trusted proxy that names no host, or whose description contradicts
/// itself (a client may add headers of the other style; proxies copy them along), gets 400.
#[tokio::test]
async fn sec_34_missing_or_contradictory_descriptions_get_400() {
    let stage = apps();
    let alice = stage.cookie_for("wiki", "alice@corp.example");
    let no_host = get("127.0.0.1:8080", "/.otpgate/auth").header("x-forwarded-uri", "/docs");
    let nginx_path_only = nginx("/docs");
    let two_styles = traefik("/public/x").header("x-original-url", "http://wiki.test/admin");
    let nginx_with_spoof = nginx("http://wiki.test/admin").header("x-forwarded-uri", "/public/x");
    let two_hosts = nginx("http://wiki.test/docs").header("x-forwarded-host", "proxied.test");
    let repeated = traefik("/public/x").header("x-forwarded-uri", "/admin");
    let no_uri = get("127.0.0.1:8080", "/.otpgate/auth").header("x-forwarded-host", "wiki.test");
    for (what, req) in [
        ("no host", no_host),
        ("a path without a host", nginx_path_only),
        ("both styles", two_styles),
        ("a client's X-Forwarded-Uri behind nginx", nginx_with_spoof),
        ("two hosts", two_hosts),
        ("a repeated URI", repeated),
        ("no URI", no_uri),
    ] {
        let r = stage.send_on(with(req, Some(&alice)), &conn(FRONT)).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert_eq!(r.header("x-otpgate-email"), None, "{what}");
    }
    // A host that is not served, and one the gateway proxies itself, are not the endpoint's.
    for host in ["unknown.test", "proxied.test"] {
        let req = with(traefik_for(host, "/docs"), Some(&alice));
        assert_eq!(stage.send_on(req, &conn(FRONT)).await.status, 404, "{host}");
    }
}

/// docs/security.md#34: from anyone but a trusted proxy, `/.otpgate/auth` is an ordinary
/// request, judged on its own Host and path: the forwarding headers describe nothing.
#[tokio::test]
async fn sec_34_an_untrusted_peers_forwarding_headers_are_ignored() {
    let stage = apps();
    let alice = stage.cookie_for("wiki", "alice@corp.example");
    for req in [traefik("/docs"), nginx("http://wiki.test/docs")] {
        // On the gateway's own address: no app has that host.
        let r = stage.send_on(with(req, Some(&alice)), &conn(CLIENT)).await;
        r.assert_gateway_page(404, "does not serve that host");
    }
    // On the app's host: a gateway page that does not exist.
    let req = described(get("wiki.test", "/.otpgate/auth"), "wiki.test", "/docs");
    let r = stage.send_on(with(req, Some(&alice)), &conn(CLIENT)).await;
    r.assert_gateway_page(404, "There is no such page");
    assert_eq!(r.header("x-otpgate-email"), None);
}

/// The app's own pages are reached through the front proxy at its `/.otpgate/` path, and never
/// reach the app; anything else for a forward-auth app is never proxied by the gateway, session
/// or not.
#[tokio::test]
async fn forward_auth_apps_get_the_login_pages_and_are_never_proxied() {
    let stage = apps();
    let r = stage
        .send_on(
            get("wiki.test", "/.otpgate/login?rd=%2Fdocs")
                .body(())
                .unwrap(),
            &conn(FRONT),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("Send me a code"), "{}", r.text());
    let alice = stage.cookie_for("wiki", "alice@corp.example");
    // Nor is the endpoint ever told to let a request for them through, however spelt.
    for path in ["/.otpgate/login", "/%2Eotpgate/logout", "/.otpgate"] {
        let r = stage
            .send_on(with(traefik(path), Some(&alice)), &conn(FRONT))
            .await;
        r.assert_gateway_page(404, "There is no such page");
    }
    for peer in [FRONT, CLIENT] {
        for path in ["/docs", "/public/x", "/"] {
            let r = stage
                .send_on(
                    get("wiki.test", path)
                        .header("cookie", &alice)
                        .body(())
                        .unwrap(),
                    &conn(peer),
                )
                .await;
            r.assert_gateway_page(404, "does not serve that host");
        }
    }
}

/// docs/security.md#30: an active session's cookie is refreshed through the answer, at most once
/// a minute, for the front proxy to pass back to the browser.
#[tokio::test]
async fn a_refreshed_cookie_rides_on_the_200() {
    let stage = apps();
    let alice = stage.cookie_for("wiki", "alice@corp.example");
    let r = stage
        .send_on(with(traefik("/docs"), Some(&alice)), &conn(FRONT))
        .await;
    assert!(r.set_cookies().is_empty(), "fresh: nothing to refresh");
    stage.advance(Duration::from_secs(61));
    let r = stage
        .send_on(with(traefik("/docs"), Some(&alice)), &conn(FRONT))
        .await;
    assert_eq!(r.status, 200);
    let cookies = r.set_cookies();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert!(cookies[0].starts_with("otpgate=v1."), "{}", cookies[0]);
}

/// An app that takes its identity under its own names (`identity_headers`) gets them under
/// those names from the endpoint too, for the front proxy to copy as they are.
#[tokio::test]
async fn the_answer_uses_the_apps_identity_header_names() {
    let stage = Stage::new(&config(
        "trusted_proxies: [10.0.0.0/8]",
        "  - name: wiki
    hosts: [wiki.test]
    public_url: http://wiki.test
    mode: forward_auth
    identity_headers: { email: X-Webauth-Email, groups: X-Webauth-Groups }
    policies: [ { name: staff, action: allow, include: [ { email_domain: corp.example } ] } ]
",
    ));
    let alice = stage.cookie_for("wiki", "alice@corp.example");
    let r = stage
        .send_on(with(traefik("/docs"), Some(&alice)), &conn(FRONT))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-webauth-email"), Some("alice@corp.example"));
    assert_eq!(r.header("x-webauth-groups"), Some(""));
    assert_eq!(r.header("x-otpgate-user"), Some("alice@corp.example"));
    assert_eq!(r.header("x-otpgate-email"), None);
}

/// The payload of a signed assertion (its signature is checked in `tests/it/assertion.rs`).
fn assertion_claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let part = token.split('.').nth(1).unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&json).unwrap()
}

#[tokio::test]
async fn the_200_carries_the_signed_assertion_for_the_front_proxy_to_copy() {
    let stage = apps();
    let alice = stage.cookie_for("wiki", "alice@corp.example");
    let r = stage
        .send_on(with(traefik("/docs/a?x=1"), Some(&alice)), &conn(FRONT))
        .await;
    assert_allowed_as(&r, "alice@corp.example", "engineering,ops");
    let c = assertion_claims(r.header("otpgate-jwt-assertion").unwrap());
    assert_eq!(c["iss"], "http://wiki.test");
    assert_eq!(c["aud"], "otpgate:app:wiki");
    assert_eq!(c["sub"], "alice@corp.example");
    assert_eq!(c["email"], "alice@corp.example");
    assert_eq!(c["groups"], serde_json::json!(["engineering", "ops"]));

    // A bypass has no session, so no assertion either.
    let r = stage
        .send_on(with(traefik("/public/x"), None), &conn(FRONT))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("otpgate-jwt-assertion"), None);
}
