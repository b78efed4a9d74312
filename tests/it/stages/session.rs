//! The session part of the policy stage: which cookies open a session, what a visitor without
//! one gets (docs/product.md#s4), and the cookie's life on the server (docs/security.md#29,
//! docs/security.md#30, docs/security.md#31).

use super::*;

/// `app` (plain http) and `wiki` (https), both for anyone with a session; sessions last 10
/// minutes and idle out after 2.
fn apps() -> Stage {
    Stage::new(&config(
        "session: { duration: 10m, idle_timeout: 2m }",
        "  - name: app
    hosts: [app.test]
    public_url: http://app.test
    upstream: builtin:echo
    policies: [ { name: all, action: allow, include: [ { everyone: true } ] } ]
  - name: wiki
    hosts: [wiki.test]
    public_url: https://wiki.test
    upstream: builtin:echo
    policies: [ { name: all, action: allow, include: [ { everyone: true } ] } ]
",
    ))
}

async fn with_cookie(stage: &Stage, cookie: &str) -> Reply {
    stage
        .send(
            get("app.test", "/")
                .header("cookie", cookie)
                .body(())
                .unwrap(),
        )
        .await
}

/// Asserts `r` asks for a login and deletes the plain-http session cookie.
fn assert_login_and_cleared(r: &Reply) {
    assert_eq!(r.status, 302, "{}", r.text());
    assert!(
        r.header("location")
            .unwrap()
            .starts_with("http://app.test/.otpgate/login?rd="),
        "{:?}",
        r.header("location")
    );
    let cookies = r.set_cookies();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert!(
        cookies[0].starts_with("otpgate=;") && cookies[0].contains("Max-Age=0"),
        "{}",
        cookies[0]
    );
}

/// docs/product.md#s4: a navigation goes to the login page with the original URL as `rd`.
#[tokio::test]
async fn browsers_without_a_cookie_are_sent_to_the_login_page() {
    let stage = apps();
    for sec_fetch in [None, Some("navigate")] {
        let mut req = get("app.test", "/docs/a?b=1&c=%2F").header(
            "accept",
            "text/html,application/xhtml+xml,application/json;q=0.9",
        );
        if let Some(mode) = sec_fetch {
            req = req.header("sec-fetch-mode", mode);
        }
        let r = stage.send(req.body(()).unwrap()).await;
        assert_eq!(r.status, 302, "{sec_fetch:?}");
        assert_eq!(
            r.header("location"),
            Some(
                "http://app.test/.otpgate/login?rd=http%3A%2F%2Fapp.test%2Fdocs%2Fa%3Fb%3D1%26c%3D%252F"
            )
        );
        assert!(r.set_cookies().is_empty(), "no cookie sent, none to clear");
    }
}

/// docs/product.md#s4: a script cannot follow a redirect to a form, so it gets the URL.
#[tokio::test]
async fn api_calls_without_a_cookie_get_401_json() {
    let stage = apps();
    let want = serde_json::json!({
        "error": "login_required",
        "login_url": "http://app.test/.otpgate/login?rd=http%3A%2F%2Fapp.test%2Fapi%2Fitems",
    });
    for (name, value) in [
        ("accept", "application/json"),
        ("sec-fetch-mode", "cors"),
        ("sec-fetch-mode", "no-cors"),
        ("x-requested-with", "XMLHttpRequest"),
    ] {
        let r = stage
            .send(
                get("app.test", "/api/items")
                    .header(name, value)
                    .body(())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, 401, "{name}: {value}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json(), want, "{name}: {value}");
    }
}

#[tokio::test]
async fn a_minted_session_opens_the_app() {
    let stage = apps();
    let cookie = stage.cookie_for("app", "alice@corp.example");
    assert!(cookie.starts_with("otpgate=v1."), "{cookie}");
    let r = with_cookie(&stage, &cookie).await;
    assert_eq!(r.echo()["identity"]["email"], "alice@corp.example");
    // Fresh: no refresh is due yet, so nothing is set.
    assert!(r.set_cookies().is_empty());
}

/// docs/security.md#29 and docs/security.md#36: what does not open leads to the login, never
/// upstream.
#[tokio::test]
async fn tampered_and_garbage_cookies_need_a_login_and_are_cleared() {
    let stage = apps();
    let good = stage.cookie_for("app", "alice@corp.example");
    let (name, value) = good.split_once('=').unwrap();
    let mut bytes = value.as_bytes().to_vec();
    let at = bytes.len() - 5;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{name}={}", String::from_utf8(bytes).unwrap());
    let oversized = format!("otpgate=v1.k1.{}", "A".repeat(3000));
    for cookie in [
        tampered.as_str(),
        "otpgate=garbage",
        "otpgate=v1.k1.AAAA",
        "otpgate=",
        oversized.as_str(),
    ] {
        assert_login_and_cleared(&with_cookie(&stage, cookie).await);
    }
    // A good value beside a bad one of the same name still opens the session.
    let r = with_cookie(&stage, &format!("otpgate=garbage; {good}")).await;
    assert_eq!(r.echo()["identity"]["email"], "alice@corp.example");
}

/// docs/security.md#30: the absolute lifetime holds however active the session is.
#[tokio::test]
async fn expired_sessions_need_a_login_and_are_cleared() {
    let stage = apps();
    let cookie = stage.cookie_for("app", "alice@corp.example");
    // Kept active every 90 s (within the idle limit) until the absolute 10 minutes are over.
    let mut latest = cookie.clone();
    for _ in 0..6 {
        stage.advance(Duration::from_secs(90));
        let r = with_cookie(&stage, &latest).await;
        assert_eq!(r.status, 200, "{}", r.text());
        if let Some(c) = r.set_cookies().first() {
            latest = c.split(';').next().unwrap().to_owned();
        }
    }
    // +9 min; +10 min 31 s is past the lifetime and its 30 s of leeway.
    stage.advance(Duration::from_secs(91));
    assert_login_and_cleared(&with_cookie(&stage, &latest).await);
}

/// docs/security.md#31.
#[tokio::test]
async fn revoked_sessions_need_a_login_and_are_cleared() {
    let stage = apps();
    let (claims, revoked) = stage.session_for("app", "alice@corp.example");
    let other = stage.cookie_for("app", "alice@corp.example");
    assert_eq!(with_cookie(&stage, &revoked).await.status, 200);
    stage
        .gateway()
        .sessions()
        .revocations()
        .revoke_session(claims.id(), claims.expires_ms());
    assert_login_and_cleared(&with_cookie(&stage, &revoked).await);
    // One session ended, not the person's others.
    assert_eq!(with_cookie(&stage, &other).await.status, 200);
}

#[tokio::test]
async fn a_session_of_another_app_needs_a_login_and_is_cleared() {
    let stage = apps();
    // A wiki session under app's cookie name: the audience sealed inside decides, not the name
    // (docs/security.md#33).
    let wiki = stage.cookie_for("wiki", "alice@corp.example");
    let value = wiki.split_once('=').unwrap().1;
    assert_login_and_cleared(&with_cookie(&stage, &format!("otpgate={value}")).await);
    // On its own app it works.
    let r = stage
        .send_on(
            get("wiki.test", "/")
                .header("cookie", &wiki)
                .body(())
                .unwrap(),
            &tls(Some("wiki.test")),
        )
        .await;
    assert_eq!(r.echo()["app"], "wiki");
}

/// docs/security.md#28: the scheme of `public_url` decides the name and `Secure`.
#[tokio::test]
async fn an_https_app_clears_its_host_prefixed_secure_cookie() {
    let stage = apps();
    let wiki = stage.cookie_for("wiki", "alice@corp.example");
    assert!(wiki.starts_with("__Host-otpgate=v1."), "{wiki}");
    let r = stage
        .send_on(
            get("wiki.test", "/")
                .header("cookie", "__Host-otpgate=garbage")
                .body(())
                .unwrap(),
            &tls(None),
        )
        .await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("https://wiki.test/.otpgate/login?rd=https%3A%2F%2Fwiki.test%2F")
    );
    let cleared = r.set_cookies();
    assert_eq!(cleared.len(), 1);
    assert!(
        cleared[0].starts_with("__Host-otpgate=;")
            && cleared[0].contains("Max-Age=0")
            && cleared[0].contains("Secure"),
        "{}",
        cleared[0]
    );
    // The plain-http name means nothing on an https app: not a session, nothing to clear.
    let plain = stage.cookie_for("app", "alice@corp.example");
    let r = stage
        .send_on(
            get("wiki.test", "/")
                .header("cookie", &plain)
                .body(())
                .unwrap(),
            &tls(None),
        )
        .await;
    assert_eq!(r.status, 302);
    assert!(r.set_cookies().is_empty());
}

/// docs/security.md#30: idle expiry, with its 30 s of leeway.
#[tokio::test]
async fn idle_sessions_end() {
    let stage = apps();
    let cookie = stage.cookie_for("app", "alice@corp.example");
    // 2 min idle plus 30 s of leeway: still fine at +2:29...
    stage.advance(Duration::from_secs(149));
    let r = with_cookie(&stage, &cookie).await;
    assert_eq!(r.status, 200);
    // ...and that use refreshed it, but this value still carries its old activity time.
    assert_eq!(r.set_cookies().len(), 1);
    stage.advance(Duration::from_secs(2));
    assert_login_and_cleared(&with_cookie(&stage, &cookie).await);
}

/// docs/security.md#30: activity moves the idle limit; a shared cache must never replay a
/// response that sets a session.
#[tokio::test]
async fn active_sessions_get_a_refreshed_cookie_that_no_cache_keeps() {
    let stage = apps();
    let cookie = stage.cookie_for("app", "alice@corp.example");
    // With a 2 min idle limit a refresh is due 12 s after the last one; not before.
    stage.advance(Duration::from_secs(11));
    let r = with_cookie(&stage, &cookie).await;
    assert!(r.set_cookies().is_empty());
    assert_eq!(
        r.header("cache-control"),
        Some("no-store"),
        "the echo's own"
    );
    stage.advance(Duration::from_secs(2));
    let r = with_cookie(&stage, &cookie).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control"), Some("private, no-store"));
    let refreshed = r.set_cookies();
    assert_eq!(refreshed.len(), 1);
    let header = refreshed[0];
    assert!(header.starts_with("otpgate=v1."), "{header}");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=587"] {
        assert!(header.contains(attr), "{attr} missing: {header}");
    }
    assert!(!header.contains("Secure"), "plain-http app: {header}");
    // The refreshed value outlives the first one's idle limit.
    let latest = header.split(';').next().unwrap().to_owned();
    assert_ne!(latest, cookie);
    stage.advance(Duration::from_secs(140));
    assert_login_and_cleared(&with_cookie(&stage, &cookie).await);
    assert_eq!(with_cookie(&stage, &latest).await.status, 200);
}
