//! The single sign-on portal driven in process (docs/security.md#44–#47): the portal's login
//! page hands off at once with a portal session, each app redeems its code once, the target is
//! validated again at the callback, a refusal is a page and never a loop, and signing out at the
//! portal ends the whole family. The portal session is minted here (the login forms the portal
//! serves are the app's, tested in `login_dispatch.rs` and end to end in `tests/it/portal.rs`).

use super::*;
use base64::Engine as _;
use otpgate::store::{Revocation, RevocationKind};

pub const PORTAL_APPS: &str = "  - name: a
    hosts: [a.test]
    public_url: http://a.test
    upstream: builtin:echo
    policies: [ { name: staff, action: allow, include: [ { email_domain: corp.example } ] } ]
  - name: b
    hosts: [b.test]
    public_url: http://b.test
    upstream: builtin:echo
    policies: [ { name: staff, action: allow, include: [ { email_domain: corp.example } ] } ]
  - name: c
    hosts: [c.test]
    public_url: http://c.test
    upstream: builtin:echo
    policies: [ { name: ops, action: allow, include: [ { group: ops } ] } ]
  - name: hidden
    hosts: [hidden.test]
    public_url: http://hidden.test
    launcher: false
    upstream: builtin:echo
    policies: [ { name: staff, action: allow, include: [ { email_domain: corp.example } ] } ]
";

fn yaml(apps: &str) -> String {
    config(
        "portal_url: http://auth.test\nsession: { idle_timeout: 10m }\nusers:\n  - { id: alice@corp.example }\n  - { id: olga@corp.example, groups: [ops] }",
        apps,
    )
}

fn portal() -> Stage {
    Stage::new(&yaml(PORTAL_APPS))
}

/// A portal session for `email`, as a `Cookie` pair, and its claims.
fn portal_session(stage: &Stage, email: &str) -> (otpgate::session::Claims, String) {
    let (claims, value) = stage
        .gateway()
        .sessions()
        .issue(
            otpgate::session::TokenKind::Session,
            "otpgate:portal",
            otpgate::email::Email::parse(email).unwrap(),
            LoginMethod::OneTimePin,
            Duration::from_secs(3600),
            stage.gateway().clock().now_ms(),
        )
        .unwrap();
    (claims, format!("otpgate-portal={value}"))
}

async fn get_with(stage: &Stage, host: &str, path: &str, cookie: Option<&str>) -> Reply {
    let mut req = get(host, path);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    stage.send(req.body(()).unwrap()).await
}

/// A hand-off code on its way to an app: the callback URL, and the nonce cookie the app set
/// in the browser that started the login there.
struct Code {
    url: String,
    nonce: String,
}

/// The query parameter `name` of `url`.
fn query_param(url: &str, name: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no {name} in {url}"))
        .1
        .into_owned()
}

/// A login started at `app` (which leaves its nonce in the browser and sends it to the portal),
/// answered by the portal for the target `rd` (as sent, so the portal's own checks are what is
/// tested): the code on its way back.
async fn handoff(stage: &Stage, cookie: &str, app: &str, rd: &str) -> Code {
    let start = get_with(stage, &format!("{app}.test"), "/.otpgate/login", None).await;
    assert_eq!(start.status, 302, "{}", start.text());
    let state = query_param(start.header("location").unwrap(), "state");
    let nonce = start
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("otpgate-handoff="))
        .expect("the app leaves its nonce in the browser")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let rd: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
    let r = get_with(
        stage,
        "auth.test",
        &format!("/.otpgate/login?app={app}&state={state}&rd={rd}"),
        Some(cookie),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let url = r.header("location").unwrap().to_owned();
    assert!(
        url.starts_with(&format!("http://{app}.test/.otpgate/callback?code=")),
        "{url}"
    );
    Code { url, nonce }
}

/// Redeems a code on `host`, from the browser that holds its nonce: the reply.
async fn redeem(stage: &Stage, host: &str, code: &Code) -> Reply {
    let path = code.url.split_once(".test").unwrap().1;
    get_with(stage, host, path, Some(&code.nonce)).await
}

/// The app session cookie (`otpgate=…`) a callback set.
fn app_cookie(r: &Reply) -> String {
    let c = r
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("otpgate="))
        .unwrap_or_else(|| panic!("no session cookie: {:?} {}", r.set_cookies(), r.text()));
    c.split(';').next().unwrap().to_owned()
}

fn refused(r: &Reply) {
    r.assert_gateway_page(400, "Sign-in did not complete");
    assert!(r.header("location").is_none());
    assert!(!r.set_cookies().iter().any(|c| c.starts_with("otpgate=")));
}

#[tokio::test]
async fn an_apps_login_goes_to_the_portal_with_the_app_and_the_target() {
    let stage = portal();
    let r = get_with(&stage, "a.test", "/docs?x=1", None).await;
    assert_eq!(r.status, 302);
    let login = r.header("location").unwrap();
    assert!(
        login.starts_with("http://a.test/.otpgate/login?rd="),
        "{login}"
    );
    let r = get_with(&stage, "a.test", "/.otpgate/login?rd=%2Fdocs%3Fx%3D1", None).await;
    assert_eq!(r.status, 302);
    let to = r.header("location").unwrap();
    let state = query_param(to, "state");
    assert_eq!(
        to,
        format!(
            "http://auth.test/.otpgate/login?app=a&state={state}&rd=http%3A%2F%2Fa.test%2Fdocs%3Fx%3D1"
        )
    );
    assert!(
        r.set_cookies()
            .iter()
            .any(|c| c.starts_with(&format!("otpgate-handoff={state};")) && c.contains("HttpOnly")),
        "{:?}",
        r.set_cookies()
    );
    // Signed out, the portal shows the app's login form and remembers the app for the posts.
    let r = get_with(
        &stage,
        "auth.test",
        "/.otpgate/login?app=a&rd=http%3A%2F%2Fa.test%2Fdocs",
        None,
    )
    .await;
    r.assert_gateway_page(200, "Send me a code");
    // Its forms end in a redirect to the app, which the page's CSP must allow.
    let csp = r.header("content-security-policy").unwrap();
    assert!(
        csp.contains("form-action 'self' http://a.test http://b.test http://c.test"),
        "{csp}"
    );
    let cookies = r.set_cookies().join("\n");
    // One login transaction per app, and forms that name their app: a login for another app
    // in another tab ends neither.
    assert!(cookies.contains("otpgate-login-a=v1."), "{cookies}");
    assert!(cookies.contains("otpgate-portal-app=a;"), "{cookies}");
    assert!(
        r.text().contains("action=\"/.otpgate/login?app=a\""),
        "{}",
        r.text()
    );
    // Without an app there is nothing to sign in to: the launcher says where to start.
    let r = get_with(&stage, "auth.test", "/.otpgate/code", None).await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("http://auth.test/"));
    let r = get_with(&stage, "auth.test", "/", None).await;
    r.assert_gateway_page(200, "You are not signed in");
}

#[tokio::test]
async fn sec_44_a_hand_off_code_works_once_and_only_on_its_app() {
    let stage = portal();
    let (_, portal) = portal_session(&stage, "alice@corp.example");
    let to = handoff(&stage, &portal, "a", "http://a.test/docs?x=1").await;
    assert_eq!(
        query_param(&to.url, "code").len(),
        43,
        "256 bits, base64url"
    );
    // Another browser (without the app's nonce) cannot redeem it: login CSRF.
    let path = to.url.split_once(".test").unwrap().1;
    refused(&get_with(&stage, "a.test", path, None).await);
    refused(
        &get_with(
            &stage,
            "a.test",
            path,
            Some("otpgate-handoff=00000000000000000000000000000000"),
        )
        .await,
    );
    let to = handoff(&stage, &portal, "a", "http://a.test/docs?x=1").await;
    // Another app cannot redeem it (and trying does not use it up).
    refused(&redeem(&stage, "b.test", &to).await);
    let r = redeem(&stage, "a.test", &to).await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), Some("http://a.test/docs?x=1"));
    assert!(
        r.set_cookies()
            .iter()
            .any(|c| c.starts_with("otpgate-handoff=;")),
        "the nonce is spent"
    );
    let cookie = app_cookie(&r);
    assert!(r.set_cookies().iter().any(|c| c.contains("HttpOnly")));
    let echo = get_with(&stage, "a.test", "/docs", Some(&cookie)).await;
    assert_eq!(echo.echoed("x-otpgate-email"), ["alice@corp.example"]);
    // Replayed: refused, with a page and no redirect.
    refused(&redeem(&stage, "a.test", &to).await);
    // Garbage and missing codes alike.
    refused(&get_with(&stage, "a.test", "/.otpgate/callback?code=x", None).await);
    refused(&get_with(&stage, "a.test", "/.otpgate/callback", None).await);
    let forged = format!("/.otpgate/callback?code={}", "A".repeat(43));
    refused(&get_with(&stage, "a.test", &forged, None).await);
    // A code made without the app's nonce (a login that began on the portal itself) opens
    // nothing: the browser goes through the app's login once more, which binds a new one.
    let r = get_with(
        &stage,
        "auth.test",
        "/.otpgate/login?app=a&rd=%2Fx",
        Some(&portal),
    )
    .await;
    assert_eq!(r.status, 303);
    let path = r
        .header("location")
        .unwrap()
        .split_once(".test")
        .unwrap()
        .1
        .to_owned();
    let r = get_with(&stage, "a.test", &path, None).await;
    assert_eq!(r.status, 302);
    let again = r.header("location").unwrap();
    assert!(
        again.starts_with("http://auth.test/.otpgate/login?app=a&state="),
        "{again}"
    );
    assert!(!r.set_cookies().iter().any(|c| c.starts_with("otpgate=")));
    // A second app needs no second login: the portal hands off at once.
    let to_b = handoff(&stage, &portal, "b", "http://b.test/").await;
    let r = redeem(&stage, "b.test", &to_b).await;
    assert_eq!(r.header("location"), Some("http://b.test/"));
}

#[tokio::test]
async fn sec_44_a_hand_off_code_expires_after_60_seconds() {
    let stage = portal();
    let (_, portal) = portal_session(&stage, "alice@corp.example");
    let late = handoff(&stage, &portal, "a", "/").await;
    let in_time = handoff(&stage, &portal, "a", "/").await;
    stage.advance(Duration::from_secs(59));
    assert_eq!(redeem(&stage, "a.test", &in_time).await.status, 303);
    stage.advance(Duration::from_secs(2));
    refused(&redeem(&stage, "a.test", &late).await);
}

#[tokio::test]
async fn sec_44_a_code_without_its_portal_session_is_refused() {
    let stage = portal();
    let (claims, portal) = portal_session(&stage, "alice@corp.example");
    let to = handoff(&stage, &portal, "a", "/").await;
    // Signed out at the portal between the code and its use.
    stage
        .gateway()
        .sessions()
        .revocations()
        .revoke_family(claims.id(), u64::MAX / 2);
    refused(&redeem(&stage, "a.test", &to).await);
    // And a portal session that no longer opens gets the login form, not a code.
    let r = get_with(&stage, "auth.test", "/.otpgate/login?app=a", Some(&portal)).await;
    r.assert_gateway_page(200, "Send me a code");
}

#[tokio::test]
async fn sec_45_return_targets_are_validated_again_at_the_callback() {
    let stage = portal();
    let (_, portal) = portal_session(&stage, "alice@corp.example");
    // The open-redirect cases of docs/security.md#1–#5, through the portal.
    for rd in [
        "https://evil.example/",
        "//evil.example/x",
        "/\\evil.example",
        "/./\\\\evil.example",
        "http://a.test@evil.example/",
        "javascript:alert(1)",
        "http://auth.test/",
        "data:text/html,x",
        "http://evil.example\r\nx",
    ] {
        let to = handoff(&stage, &portal, "a", rd).await;
        let r = redeem(&stage, "a.test", &to).await;
        assert_eq!(r.header("location"), Some("http://a.test/"), "{rd:?}");
    }
    // A target that was valid at the portal and is not any more when the code is redeemed
    // (app b left the config meanwhile) is not followed.
    let to = handoff(&stage, &portal, "a", "http://b.test/x").await;
    let without_b = PORTAL_APPS.replace(
        "  - name: b\n    hosts: [b.test]\n    public_url: http://b.test\n",
        "  - name: b\n    hosts: [b2.test]\n    public_url: http://b2.test\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = otpgate::config::load_str(
        &yaml(&without_b),
        &dir.path().join("otpgate.yaml"),
        Vec::<(String, String)>::new(),
    )
    .unwrap()
    .config;
    stage.gateway().swap(
        otpgate::gateway::Runtime::build(cfg, &otpgate::config::BoundAddrs::default(), None)
            .unwrap(),
    );
    let r = redeem(&stage, "a.test", &to).await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("http://a.test/"));
}

#[tokio::test]
async fn sec_46_a_refusal_at_the_portal_is_a_page_never_a_loop() {
    let stage = portal();
    let (_, portal) = portal_session(&stage, "alice@corp.example");
    let r = get_with(
        &stage,
        "auth.test",
        "/.otpgate/login?app=c&rd=http%3A%2F%2Fc.test%2Fops",
        Some(&portal),
    )
    .await;
    r.assert_gateway_page(403, "That account does not have access.");
    assert!(r.header("location").is_none());
    let html = r.text();
    assert!(html.contains("Use a different account"), "{html}");
    // The button ends the portal session and starts the app's login again, on the portal.
    let csrf = html
        .split_once("name=\"csrf\" value=\"")
        .unwrap()
        .1
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let body = format!("csrf={csrf}&app=c&rd=http%3A%2F%2Fc.test%2Fops");
    let r = stage
        .send(
            request("POST", "auth.test", "/.otpgate/logout")
                .header("cookie", &portal)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some("http://auth.test/.otpgate/login?app=c&rd=http%3A%2F%2Fc.test%2Fops")
    );
    assert!(
        r.set_cookies()
            .iter()
            .any(|c| c.starts_with("otpgate-portal=;"))
    );
    let r = get_with(
        &stage,
        "auth.test",
        "/.otpgate/login?app=c&rd=http%3A%2F%2Fc.test%2Fops",
        Some(&portal),
    )
    .await;
    r.assert_gateway_page(200, "Send me a code");
}

#[tokio::test]
async fn sec_47_signing_out_at_the_portal_ends_every_handed_off_session() {
    let stage = portal();
    let (_, portal) = portal_session(&stage, "alice@corp.example");
    let mut cookies = Vec::new();
    for app in ["a", "b"] {
        let to = handoff(&stage, &portal, app, "/").await;
        let r = redeem(&stage, &format!("{app}.test"), &to).await;
        cookies.push((app, app_cookie(&r)));
    }
    // A session of a login on the app itself is not of the family.
    let own = stage.cookie_for("a", "alice@corp.example");
    for (app, c) in &cookies {
        assert_eq!(
            get_with(&stage, &format!("{app}.test"), "/", Some(c))
                .await
                .status,
            200
        );
    }
    let page = get_with(&stage, "auth.test", "/.otpgate/logout", Some(&portal)).await;
    page.assert_gateway_page(200, "Sign out of every app");
    let csrf = page
        .text()
        .split_once("name=\"csrf\" value=\"")
        .unwrap()
        .1
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let r = stage
        .send(
            request("POST", "auth.test", "/.otpgate/logout")
                .header("cookie", &portal)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("csrf={csrf}"))
                .unwrap(),
        )
        .await;
    r.assert_gateway_page(200, "You are signed out");
    for (app, c) in &cookies {
        let r = get_with(&stage, &format!("{app}.test"), "/", Some(c)).await;
        assert_eq!(r.status, 302, "{app} still open");
    }
    assert_eq!(
        get_with(&stage, "a.test", "/", Some(&own)).await.status,
        200
    );
    let r = get_with(&stage, "auth.test", "/", Some(&portal)).await;
    r.assert_gateway_page(200, "You are not signed in");
    // One family revocation in the store: other replicas take it from there.
    let rows = stage.gateway().store().revocations_since(0).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].kind, RevocationKind::Family);
}

#[tokio::test]
async fn sec_47_an_apps_own_sign_out_ends_that_app_only_and_revoke_user_ends_all() {
    let stage = portal();
    let (claims, portal) = portal_session(&stage, "alice@corp.example");
    let a = app_cookie(&redeem(&stage, "a.test", &handoff(&stage, &portal, "a", "/").await).await);
    let b = app_cookie(&redeem(&stage, "b.test", &handoff(&stage, &portal, "b", "/").await).await);
    let page = get_with(&stage, "a.test", "/.otpgate/logout", Some(&a)).await;
    let csrf = page
        .text()
        .split_once("name=\"csrf\" value=\"")
        .unwrap()
        .1
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let r = stage
        .send(
            request("POST", "a.test", "/.otpgate/logout")
                .header("cookie", &a)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("csrf={csrf}"))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(get_with(&stage, "a.test", "/", Some(&a)).await.status, 302);
    assert_eq!(get_with(&stage, "b.test", "/", Some(&b)).await.status, 200);
    // `sessions revoke --user`: a cut-off for the address ends the portal session and the rest.
    stage.advance(Duration::from_secs(1));
    stage
        .gateway()
        .sessions()
        .revocations()
        .apply(&[Revocation {
            seq: 1,
            kind: RevocationKind::User,
            subject: claims.email().to_string(),
            not_before_ms: stage.gateway().clock().now_ms(),
            expires_ms: u64::MAX / 2,
        }]);
    assert_eq!(get_with(&stage, "b.test", "/", Some(&b)).await.status, 302);
    let r = get_with(&stage, "auth.test", "/", Some(&portal)).await;
    r.assert_gateway_page(200, "You are not signed in");
}

#[tokio::test]
async fn the_launcher_lists_the_apps_the_person_may_open() {
    let stage = portal();
    let (_, alice) = portal_session(&stage, "alice@corp.example");
    let r = get_with(&stage, "auth.test", "/", Some(&alice)).await;
    r.assert_gateway_page(200, "Your apps");
    let html = r.text();
    // (minijinja writes `/` as `&#x2f;` in attributes; browsers read it back as `/`.)
    assert!(html.contains("a.test&#x2f;\">a</a>"), "{html}");
    assert!(html.contains("b.test&#x2f;\">b</a>"), "{html}");
    assert!(!html.contains("c.test"), "c refuses alice: {html}");
    assert!(!html.contains("hidden.test"), "launcher: false: {html}");
    let (_, olga) = portal_session(&stage, "olga@corp.example");
    let html = get_with(&stage, "auth.test", "/", Some(&olga)).await.text();
    assert!(html.contains("c.test&#x2f;\">c</a>"), "{html}");
    // The assertions' keys are published at the issuer, the portal.
    let r = get_with(&stage, "auth.test", "/.otpgate/certs", None).await;
    assert_eq!(r.status, 200);
    assert!(r.json()["keys"].is_array(), "{}", r.text());
    // The portal is never proxied, and unknown portal pages are the gateway's 404.
    let r = get_with(&stage, "auth.test", "/.otpgate/nothing?app=a", None).await;
    r.assert_gateway_page(404, "There is no such page");
}

#[tokio::test]
async fn assertions_are_issued_by_the_portal() {
    let stage = portal();
    let (_, portal) = portal_session(&stage, "alice@corp.example");
    let a = app_cookie(&redeem(&stage, "a.test", &handoff(&stage, &portal, "a", "/").await).await);
    let r = get_with(&stage, "a.test", "/", Some(&a)).await;
    let token = r
        .echoed("otpgate-jwt-assertion")
        .pop()
        .expect("an assertion");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.split('.').nth(1).unwrap())
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(claims["iss"], "http://auth.test");
    assert_eq!(claims["aud"], "otpgate:app:a");
}

#[tokio::test]
async fn a_hand_off_is_activity_on_the_portal_session() {
    let stage = portal();
    let (_, first) = portal_session(&stage, "alice@corp.example");
    stage.advance(Duration::from_secs(9 * 60));
    let r = get_with(&stage, "auth.test", "/.otpgate/login?app=a", Some(&first)).await;
    assert_eq!(r.status, 303);
    let refreshed = r
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("otpgate-portal="))
        .expect("the portal cookie, refreshed")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    stage.advance(Duration::from_secs(9 * 60));
    // 18 minutes after the login and 9 after the hand-off: idle for 9 minutes only.
    let r = get_with(
        &stage,
        "auth.test",
        "/.otpgate/login?app=b",
        Some(&refreshed),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let r = get_with(&stage, "auth.test", "/.otpgate/login?app=b", Some(&first)).await;
    r.assert_gateway_page(200, "Send me a code");
}
