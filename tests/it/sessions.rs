//! Sessions and policies on protected apps: minted cookies, identity headers, per-app audience,
//! tampering, revocation across restarts, idle expiry, key rotation, the login redirect.

use std::sync::Arc;
use std::time::Duration;

use otpgate::clock::{Clock, ManualClock};
use otpgate::policy::LoginMethod;

use crate::harness::*;

fn protected(up: &Upstream, extra: &str) -> String {
    format!(
        "version: 1
{LISTEN_ALL}
tls: {{ certificates: [ {{ cert: site.pem, key: site-key.pem }} ] }}
users:
  - {{ id: alice@corp.example, groups: [engineering, ops] }}
{extra}
apps:
  - name: app
    hosts: [app.test]
    upstream: {up}
    policies:
      - {{ name: public, action: bypass, paths: [/public/] }}
      - name: staff
        action: allow
        include: [ {{ email_domain: corp.example }} ]
        exclude: [ {{ email: mallory@corp.example }} ]
  - name: wiki
    hosts: [wiki.test]
    upstream: {up}
    policies:
      - {{ name: engineers, action: allow, include: [ {{ group: engineering }} ] }}
",
        up = up.url()
    )
}

const CERTS: &[(&str, &[&str])] = &[("site", &["app.test", "wiki.test"])];

async fn start(up: &Upstream, extra: &str) -> Gw {
    Gw::start_with(&protected(up, extra), CERTS).await
}

async fn get(gw: &Gw, host: &str, path: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut r = gw.client().get(gw.https_url(host, path));
    if let Some(c) = cookie {
        r = r.header("cookie", c);
    }
    r.send().await.unwrap()
}

fn set_cookie(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_are_sent_to_login_and_api_calls_get_401() {
    let up = Upstream::start().await;
    let gw = start(&up, "").await;
    let port = gw.https().port();
    let r = get(&gw, "app.test", "/docs/a?b=1", None).await;
    assert_eq!(r.status(), 302);
    let login = format!(
        "https://app.test:{port}/.otpgate/login?rd=https%3A%2F%2Fapp.test%3A{port}%2Fdocs%2Fa%3Fb%3D1"
    );
    assert_eq!(r.headers()["location"], login.as_str());
    assert_eq!(set_cookie(&r), None, "no cookie sent, nothing to clear");
    for (name, value) in [
        ("accept", "application/json"),
        ("x-requested-with", "XMLHttpRequest"),
        ("sec-fetch-mode", "cors"),
    ] {
        let r = gw
            .client()
            .get(gw.https_url("app.test", "/docs/a?b=1"))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{name}: {value}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            v,
            serde_json::json!({ "error": "login_required", "login_url": login })
        );
    }
    // A navigation (Sec-Fetch-Mode: navigate) still gets the redirect.
    let r = gw
        .client()
        .get(gw.https_url("app.test", "/"))
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_34_allowed_requests_carry_the_gateways_identity_headers_only() {
    let up = Upstream::start().await;
    let gw = start(&up, "").await;
    let alice = gw.mint("app", "Alice@Corp.example");
    assert!(alice.starts_with("__Host-otpgate=v1."));
    let r = gw
        .client()
        .get(gw.https_url("app.test", "/x"))
        .header("cookie", format!("theme=dark; {alice}; lang=en"))
        .header("x-otpgate-email", "mallory@corp.example")
        .header("x_otpgate_groups", "admins")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    let h = &v["headers"];
    assert_eq!(
        h["x-otpgate-email"],
        serde_json::json!(["alice@corp.example"])
    );
    assert_eq!(
        h["x-otpgate-user"],
        serde_json::json!(["alice@corp.example"])
    );
    assert_eq!(
        h["x-otpgate-groups"],
        serde_json::json!(["engineering,ops"])
    );
    assert!(h.get("x_otpgate_groups").is_none());
    // The session cookie never reaches the upstream; other cookies do.
    assert_eq!(h["cookie"], serde_json::json!(["theme=dark; lang=en"]));
    // Someone not in the user table: their address is the user, no groups.
    let bob = gw.mint("app", "bob@corp.example");
    let v: serde_json::Value = get(&gw, "app.test", "/", Some(&bob))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["headers"]["x-otpgate-user"],
        serde_json::json!(["bob@corp.example"])
    );
    assert_eq!(v["headers"]["x-otpgate-groups"], serde_json::json!([""]));
    // Bypass paths never carry identity, even with a session.
    let v: serde_json::Value = get(&gw, "app.test", "/public/x", Some(&alice))
        .await
        .json()
        .await
        .unwrap();
    assert!(v["headers"].get("x-otpgate-email").is_none());
    assert!(v["headers"].get("cookie").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_33_a_session_opens_only_its_own_app_and_policy_still_decides() {
    let up = Upstream::start().await;
    let gw = start(&up, "").await;
    let mallory = gw.mint("app", "mallory@corp.example");
    assert_eq!(
        get(&gw, "app.test", "/", Some(&mallory)).await.status(),
        403
    );
    let outsider = gw.mint("app", "eve@elsewhere.example");
    assert_eq!(
        get(&gw, "app.test", "/", Some(&outsider)).await.status(),
        403
    );

    // Alice's session for app does nothing on wiki, although she may use wiki.
    let alice_app = gw.mint("app", "alice@corp.example");
    let r = get(&gw, "wiki.test", "/", Some(&alice_app)).await;
    assert_eq!(r.status(), 302);
    assert!(
        set_cookie(&r).unwrap().contains("Max-Age=0"),
        "the useless cookie is cleared"
    );
    let alice_wiki = gw.mint("wiki", "alice@corp.example");
    assert_eq!(
        get(&gw, "wiki.test", "/", Some(&alice_wiki)).await.status(),
        200
    );
    // Bob may use app but not wiki (not in engineering).
    let bob_wiki = gw.mint("wiki", "bob@corp.example");
    assert_eq!(
        get(&gw, "wiki.test", "/", Some(&bob_wiki)).await.status(),
        403
    );
    assert_eq!(up.hits(), 1);
    let m = gw.metrics().await;
    assert!(
        m.contains("otpgate_sessions_rejected_total{app=\"wiki\",reason=\"invalid\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("otpgate_policy_decisions_total{app=\"app\",decision=\"no_match\"} 2"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_29_tampered_and_foreign_cookies_are_refused_and_cleared() {
    let up = Upstream::start().await;
    let gw = start(&up, "").await;
    let good = gw.mint("app", "alice@corp.example");
    let (name, value) = good.split_once('=').unwrap();
    let mut tampered = value.to_owned().into_bytes();
    let last = tampered.len() - 5;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{name}={}", String::from_utf8(tampered).unwrap());
    let r = get(&gw, "app.test", "/", Some(&tampered)).await;
    assert_eq!(r.status(), 302);
    let clear = set_cookie(&r).unwrap();
    assert!(
        clear.starts_with("__Host-otpgate=;")
            && clear.contains("Max-Age=0")
            && clear.contains("Secure"),
        "{clear}"
    );
    // Sealed by another gateway (other keys): refused.
    let other = start(&up, "").await;
    let foreign = other.mint("app", "alice@corp.example");
    assert_eq!(
        get(&gw, "app.test", "/", Some(&foreign)).await.status(),
        302
    );
    // Oversized and garbage values.
    let huge = format!("__Host-otpgate=v1.x.{}", "A".repeat(3000));
    assert_eq!(get(&gw, "app.test", "/", Some(&huge)).await.status(), 302);
    assert_eq!(
        get(&gw, "app.test", "/", Some("__Host-otpgate=garbage"))
            .await
            .status(),
        302
    );
    // A good cookie beside a bad one of the same name still works.
    let both = format!("__Host-otpgate=garbage; {good}");
    assert_eq!(get(&gw, "app.test", "/", Some(&both)).await.status(), 200);
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_31_revoked_sessions_stay_dead_after_a_restart() {
    let up = Upstream::start().await;
    let gw = start(&up, "").await;
    let alice = gw.mint("app", "alice@corp.example");
    let bob = gw.mint("app", "bob@corp.example");
    assert_eq!(get(&gw, "app.test", "/", Some(&alice)).await.status(), 200);
    let out = otpgate::commands::revoke_user(
        &gw.config(),
        "alice@corp.example",
        &otpgate::clock::SystemClock,
        otpgate::random::system().as_ref(),
    )
    .await
    .unwrap();
    assert!(
        out.starts_with("revoked every session of alice@corp.example"),
        "{out}"
    );
    // The running gateway learns about it from the store within the poll interval.
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    loop {
        let s = get(&gw, "app.test", "/", Some(&alice)).await.status();
        if s == 302 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "revocation not applied in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        get(&gw, "app.test", "/", Some(&bob)).await.status(),
        200,
        "only alice is logged out"
    );
    // A copied cookie stays dead after a restart on the same data folder.
    let gw = gw.restart().await;
    assert_eq!(get(&gw, "app.test", "/", Some(&alice)).await.status(), 302);
    assert_eq!(get(&gw, "app.test", "/", Some(&bob)).await.status(), 200);
    // A session issued after the revocation works.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let fresh = gw.mint("app", "alice@corp.example");
    assert_eq!(get(&gw, "app.test", "/", Some(&fresh)).await.status(), 200);
    // The audit log recorded the minting and the revocation.
    let audit = std::fs::read_to_string(gw.config().data_dir.join("audit.log")).unwrap();
    assert!(
        audit.lines().any(
            |l| l.contains("\"event\":\"session.revoked\"") && l.contains("alice@corp.example")
        )
    );
    assert_eq!(
        audit
            .lines()
            .filter(|l| l.contains("\"event\":\"cookie.minted\""))
            .count(),
        3
    );
    assert!(!audit.contains("v1."), "no cookie value in the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_30_idle_sessions_expire_and_active_ones_are_refreshed() {
    let up = Upstream::start().await;
    let clock = ManualClock::at(1_900_000_000);
    let options = otpgate::Options {
        clock: Arc::new(clock.clone()),
        ..Default::default()
    };
    let gw = Gw::start_full(
        &protected(&up, "session: { duration: 5m, idle_timeout: 1m }"),
        CERTS,
        options,
    )
    .await;
    let first = otpgate::commands::mint_cookie(
        &gw.config(),
        "app",
        "alice@corp.example",
        None,
        LoginMethod::OneTimePin,
        &clock,
        &otpgate::random::system(),
    )
    .unwrap();
    // Refreshed when used (activity time moves on), same session.
    clock.advance(Duration::from_secs(30));
    let r = get(&gw, "app.test", "/", Some(&first)).await;
    assert_eq!(r.status(), 200);
    let header = set_cookie(&r).expect("an active session is refreshed");
    assert!(
        header.starts_with("__Host-otpgate=v1.")
            && header.contains("HttpOnly")
            && header.contains("Secure")
    );
    let mut latest = header.split(';').next().unwrap().to_owned();
    // 91 s after its last activity the first value is idle beyond 1 min (+30 s skew leeway).
    clock.advance(Duration::from_secs(61));
    assert_eq!(get(&gw, "app.test", "/", Some(&first)).await.status(), 302);
    // The refreshed value was active 61 s ago: fine. Keep it active every 50 s.
    for _ in 0..5 {
        let r = get(&gw, "app.test", "/", Some(&latest)).await;
        assert_eq!(
            r.status(),
            200,
            "at +{}s",
            clock.unix_secs() - 1_900_000_000
        );
        if let Some(h) = set_cookie(&r) {
            latest = h.split(';').next().unwrap().to_owned();
        }
        clock.advance(Duration::from_secs(50));
    }
    // +341 s: past the absolute 5 min (+30 s leeway), however active the session was.
    assert_eq!(clock.unix_secs() - 1_900_000_000, 341);
    assert_eq!(get(&gw, "app.test", "/", Some(&latest)).await.status(), 302);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_3_logged_in_visitors_of_the_login_page_go_to_the_validated_target() {
    let up = Upstream::start().await;
    let gw = start(&up, "").await;
    let port = gw.https().port();
    let alice = gw.mint("app", "alice@corp.example");
    let value = alice.split_once('=').unwrap().1.to_owned();
    let cases = [
        (
            "rd=%2Fdocs%3Fa%3D1",
            format!("https://app.test:{port}/docs?a=1"),
        ),
        (
            "rd=https%3A%2F%2Fevil.example%2F",
            format!("https://app.test:{port}/"),
        ),
        ("rd=%2F%2Fevil.example", format!("https://app.test:{port}/")),
        ("rd=%2F%5Cevil.example", format!("https://app.test:{port}/")),
        (
            &format!("rd=https%3A%2F%2Fwiki.test%3A{port}%2Fpage"),
            format!("https://wiki.test:{port}/page"),
        ),
        (
            "rd=%2Ffirst&rd=https%3A%2F%2Fevil.example",
            format!("https://app.test:{port}/first"),
        ),
        ("", format!("https://app.test:{port}/")),
    ];
    for (query, want) in cases {
        let r = get(
            &gw,
            "app.test",
            &format!("/.otpgate/login?{query}"),
            Some(&alice),
        )
        .await;
        assert_eq!(r.status(), 302, "{query}");
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        assert_eq!(location, want, "{query}");
        // docs/security.md#4: no credential in a URL we redirect to.
        assert!(!location.contains(&value) && !location.contains("otpgate="));
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_28_cookie_names_follow_the_public_url_scheme() {
    let up = Upstream::start().await;
    let yaml = format!(
        "version: 1
{LISTEN_ALL}
tls: {{ self_signed: [localhost] }}
apps:
  - name: plain
    hosts: [plain.localhost]
    public_url: http://plain.localhost
    upstream: {}
    policies: [ {{ name: all, action: allow, include: [ {{ everyone: true }} ] }} ]
",
        up.url()
    );
    let gw = Gw::start(&yaml).await;
    let cookie = gw.mint("plain", "a@b.example");
    assert!(cookie.starts_with("otpgate=v1."), "{cookie}");
    let r = gw
        .client()
        .get(gw.http_url("plain.localhost", "/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = gw
        .client()
        .get(gw.http_url("plain.localhost", "/"))
        .header("cookie", "otpgate=bad")
        .send()
        .await
        .unwrap();
    let clear = set_cookie(&r).unwrap();
    assert!(
        clear.starts_with("otpgate=;") && !clear.contains("Secure") && clear.contains("HttpOnly"),
        "{clear}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_keeps_sessions_and_retired_keys_end_them() {
    let up = Upstream::start().await;
    let gw = start(&up, "").await;
    let old = gw.mint("app", "alice@corp.example");
    let clock = otpgate::clock::SystemClock;
    let random = otpgate::random::system();
    let out = otpgate::commands::keys_rotate(&gw.config(), &clock, random.as_ref()).unwrap();
    assert!(out.starts_with("new current key k"), "{out}");
    gw.running.reload().unwrap();
    let new = gw.mint("app", "alice@corp.example");
    assert_ne!(
        old.split('.').nth(1),
        new.split('.').nth(1),
        "sealed with the new key"
    );
    assert_eq!(get(&gw, "app.test", "/", Some(&old)).await.status(), 200);
    assert_eq!(get(&gw, "app.test", "/", Some(&new)).await.status(), 200);
    let old_id = old.split('.').nth(1).unwrap();
    otpgate::commands::keys_retire(&gw.config(), old_id).unwrap();
    gw.running.reload().unwrap();
    assert_eq!(get(&gw, "app.test", "/", Some(&old)).await.status(), 302);
    assert_eq!(get(&gw, "app.test", "/", Some(&new)).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_4_redirects_never_carry_credentials() {
    let up = Upstream::start().await;
    let gw = start(&up, "").await;
    let alice = gw.mint("app", "alice@corp.example");
    let value = alice.split_once('=').unwrap().1.to_owned();
    // The redirect to the login page carries the original URL only, even when a (wrong-app or
    // stale) session cookie came with the request.
    let wiki_cookie = alice.clone();
    for cookie in [None, Some(wiki_cookie.as_str())] {
        let r = get(&gw, "wiki.test", "/page?token=abc", cookie).await;
        assert_eq!(r.status(), 302);
        let location = r.headers()["location"].to_str().unwrap();
        let (_, query) = location.split_once('?').unwrap();
        let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(params.len(), 1, "{location}");
        assert_eq!(params[0].0, "rd");
        assert!(
            !location.contains(&value) && !location.contains("otpgate="),
            "{location}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_31_websocket_tunnels_end_when_the_session_is_revoked() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let up = Upstream::start().await;
    let yaml = protected(&up, "").replace(
        "listen: { http: 127.0.0.1:0, https: 127.0.0.1:0, admin: 127.0.0.1:0 }",
        "listen: { http: 127.0.0.1:0, admin: 127.0.0.1:0 }",
    );
    let yaml = yaml
        .replace(
            "tls: { certificates: [ { cert: site.pem, key: site-key.pem } ] }\n",
            "",
        )
        .replace(
            "hosts: [app.test]",
            "hosts: [app.test]\n    public_url: http://app.test",
        );
    let gw = Gw::start(&yaml).await;
    let alice = gw.mint("app", "alice@corp.example");
    let url = format!("ws://app.test:{}/ws", gw.http().port());
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .unwrap();
    req.headers_mut().insert("cookie", alice.parse().unwrap());
    // Without the cookie: no tunnel.
    let anon = tokio_tungstenite::client_async(
        url.as_str(),
        tokio::net::TcpStream::connect(gw.http()).await.unwrap(),
    )
    .await;
    assert!(anon.is_err());
    let (mut ws, _) = tokio_tungstenite::client_async(
        req,
        tokio::net::TcpStream::connect(gw.http()).await.unwrap(),
    )
    .await
    .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        ws.next()
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        "hello"
    );
    otpgate::commands::revoke_user(
        &gw.config(),
        "alice@corp.example",
        &otpgate::clock::SystemClock,
        otpgate::random::system().as_ref(),
    )
    .await
    .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(m)) if m.is_close() => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the tunnel outlived the session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_33_websocket_tunnels_opened_with_a_service_token_end_when_it_expires() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("service-token.key");
    let token =
        otpgate::session::service_token::create(&key, &otpgate::random::SystemRandom::default())
            .unwrap();
    // Expires on a whole second 3-4 s from now (the config takes RFC 3339 seconds).
    let at = otpgate::clock::SystemClock.unix_secs() + 4;
    let expires = time::OffsetDateTime::from_unix_timestamp(i64::try_from(at).unwrap())
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let yaml = format!(
        "version: 1
listen: {{ http: 127.0.0.1:0, admin: 127.0.0.1:0 }}
service_token_key_file: {key}
service_tokens:
  - {{ name: ci, client_id: {id}, secret_hash: \"{hash}\", expires: \"{expires}\" }}
apps:
  - name: app
    hosts: [app.test]
    public_url: http://app.test
    upstream: {up}
    policies:
      - {{ name: machines, action: service_auth, include: [ {{ service_token: ci }} ] }}
",
        key = key.display(),
        id = token.client_id,
        hash = token.secret_hash,
        up = up.url(),
    );
    let gw = Gw::start(&yaml).await;
    let url = format!("ws://app.test:{}/ws", gw.http().port());
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .unwrap();
    req.headers_mut()
        .insert("otpgate-client-id", token.client_id.parse().unwrap());
    req.headers_mut().insert(
        "otpgate-client-secret",
        token.secret.expose().parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(
        req,
        tokio::net::TcpStream::connect(gw.http()).await.unwrap(),
    )
    .await
    .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        ws.next()
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        "hello"
    );
    // The tunnel is busy the whole time (no idle end): only the token's expiry can close it.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if ws.send(Message::text("ping")).await.is_err() {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                Ok(None | Some(Err(_))) => return,
                Ok(Some(Ok(m))) if m.is_close() => return,
                _ => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the tunnel outlived the service token");
    let ended = otpgate::clock::SystemClock.unix_secs();
    assert!(
        ended >= at,
        "the tunnel ended before the token expired ({ended} < {at})"
    );
}
