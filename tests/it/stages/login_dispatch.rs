//! Stage 5, the gateway's own pages: everything under `/.otpgate/` is answered by the gateway,
//! never by the upstream, and each page takes only its methods and form posts
//! (docs/product.md#s4).

use super::*;

/// `app` is open to everyone, so any request that slipped past the reserved prefix would reach
/// the echo; `wiki` is a second origin for return targets.
fn apps() -> Stage {
    Stage::new(&config(
        "",
        "  - name: app
    hosts: [app.test]
    public_url: http://app.test
    upstream: builtin:echo
    policies: [ { name: open, action: bypass } ]
  - name: wiki
    hosts: [wiki.test]
    public_url: https://wiki.test
    upstream: builtin:echo
    policies: [ { name: all, action: allow, include: [ { everyone: true } ] } ]
",
    ))
}

fn form(
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &'static str,
) -> Request<&'static str> {
    let mut req = request(method, "app.test", path);
    if let Some(t) = content_type {
        req = req.header("content-type", t);
    }
    req.body(body).unwrap()
}

/// The `csrf` field of a page's form.
fn csrf_of(html: &str) -> String {
    let (_, rest) = html
        .split_once("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no csrf field in {html}"));
    rest.split('"').next().unwrap().to_owned()
}

/// docs/product.md#s4: every page sends no-store, no-referrer, DENY and a CSP.
#[tokio::test]
async fn the_login_page_shows_the_form_and_starts_a_login_transaction() {
    let stage = apps();
    for method in ["GET", "HEAD"] {
        let r = stage
            .send(
                request(method, "app.test", "/.otpgate/login?rd=%2Fdocs")
                    .body(())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, 200, "{method}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        for (name, want) in [
            ("cache-control", "no-store"),
            ("referrer-policy", "no-referrer"),
            ("x-frame-options", "DENY"),
        ] {
            assert_eq!(r.header(name), Some(want), "{method} {name}");
        }
        assert!(r.header("content-security-policy").is_some());
        let tx = r.set_cookies();
        assert_eq!(tx.len(), 1, "{tx:?}");
        assert!(
            tx[0].starts_with("otpgate-login=v1.") && tx[0].contains("HttpOnly"),
            "{}",
            tx[0]
        );
    }
    let r = stage
        .send(get("app.test", "/.otpgate/login").body(()).unwrap())
        .await;
    let html = r.text();
    assert!(
        html.contains("name=\"email\"") && html.contains("Send me a code"),
        "{html}"
    );
    assert!(!csrf_of(&html).is_empty());
    // On an https app the transaction cookie is host-only and Secure.
    let r = stage
        .send_on(
            get("wiki.test", "/.otpgate/login").body(()).unwrap(),
            &tls(None),
        )
        .await;
    let tx = r.set_cookies();
    assert!(
        tx[0].starts_with("__Host-otpgate-login=") && tx[0].contains("Secure"),
        "{}",
        tx[0]
    );
}

#[tokio::test]
async fn unknown_gateway_paths_are_404() {
    let stage = apps();
    for path in [
        "/.otpgate/x",
        "/.otpgate/",
        "/.otpgate",
        "/.otpgate/login/",
        "/.otpgate/login/x",
        "/%2eotpgate/x",
        "/.otpgate/%6Cogin2",
    ] {
        let r = stage.send(get("app.test", path).body(()).unwrap()).await;
        r.assert_gateway_page(404, "There is no such page");
    }
}

#[tokio::test]
async fn gateway_pages_refuse_other_methods_with_405() {
    let stage = apps();
    for (method, path) in [
        ("PUT", "/.otpgate/login"),
        ("DELETE", "/.otpgate/login"),
        ("PATCH", "/.otpgate/logout"),
        ("PUT", "/.otpgate/code"),
        ("OPTIONS", "/.otpgate/login"),
    ] {
        let r = stage
            .send(request(method, "app.test", path).body(()).unwrap())
            .await;
        r.assert_gateway_page(405, "does not accept that method");
    }
}

#[tokio::test]
async fn posts_without_a_url_encoded_form_are_400() {
    let stage = apps();
    for path in ["/.otpgate/login", "/.otpgate/logout", "/.otpgate/code"] {
        for content_type in [
            None,
            Some("application/json"),
            Some("text/plain"),
            Some("multipart/form-data; boundary=x"),
        ] {
            let r = stage
                .send(form("POST", path, content_type, "email=a%40corp.example"))
                .await;
            r.assert_gateway_page(400, "The form could not be read");
        }
    }
}

#[tokio::test]
async fn a_form_post_without_its_login_transaction_gets_a_fresh_form() {
    let stage = apps();
    let r = stage
        .send(form(
            "POST",
            "/.otpgate/login",
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            "email=a%40corp.example&csrf=forged",
        ))
        .await;
    r.assert_gateway_page(400, "Your sign-in form expired");
    assert!(r.set_cookies()[0].starts_with("otpgate-login=v1."));
}

/// An app that is open to everyone still cannot answer for the gateway (docs/security.md#36).
#[tokio::test]
async fn reserved_paths_never_reach_the_upstream() {
    let stage = apps();
    let cookie = stage.cookie_for("app", "alice@corp.example");
    for path in [
        "/.otpgate/anything",
        "/.otpgate/login",
        "/.otpgate/logout",
        "/.otpgate",
    ] {
        for method in ["GET", "POST"] {
            let r = stage
                .send(
                    request(method, "app.test", path)
                        .header("cookie", &cookie)
                        .header("accept", "application/json")
                        .body(())
                        .unwrap(),
                )
                .await;
            // The echo answers JSON naming its app; no gateway page does.
            assert_ne!(
                r.header("content-type"),
                Some("application/json"),
                "{method} {path}: {}",
                r.text()
            );
            assert!(!r.text().contains("\"app\":\"app\""), "{method} {path}");
        }
    }
    // The pages a mail leads to send plain visits back to the login page.
    for path in ["/.otpgate/code", "/.otpgate/password"] {
        let r = stage.send(get("app.test", path).body(()).unwrap()).await;
        assert_eq!(r.status, 303, "{path}");
        assert_eq!(r.header("location"), Some("http://app.test/.otpgate/login"));
    }
}

#[tokio::test]
async fn the_logout_page_offers_a_sign_out_button_to_a_session_only() {
    let stage = apps();
    let cookie = stage.cookie_for("app", "alice@corp.example");
    let r = stage
        .send(
            get("app.test", "/.otpgate/logout")
                .header("cookie", &cookie)
                .body(())
                .unwrap(),
        )
        .await;
    r.assert_gateway_page(200, "alice@corp.example");
    assert!(r.text().contains("Sign out</button>"));
    assert!(!csrf_of(&r.text()).is_empty());
    let r = stage
        .send(get("app.test", "/.otpgate/logout").body(()).unwrap())
        .await;
    r.assert_gateway_page(200, "You are not signed in");
    assert!(!r.text().contains("name=\"csrf\""));
}

/// docs/security.md#31 and docs/security.md#37.
#[tokio::test]
async fn signing_out_ends_the_session_and_clears_the_cookie() {
    let stage = apps();
    let cookie = stage.cookie_for("wiki", "alice@corp.example");
    let on_wiki = |req: http::request::Builder| req.header("cookie", &cookie);
    let page = stage
        .send_on(
            on_wiki(get("wiki.test", "/.otpgate/logout"))
                .body(())
                .unwrap(),
            &tls(None),
        )
        .await;
    let body = format!("csrf={}", csrf_of(&page.text()));
    // Without the page's token nothing ends.
    let forged = on_wiki(request("POST", "wiki.test", "/.otpgate/logout"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf=forged")
        .unwrap();
    let r = stage.send_on(forged, &tls(None)).await;
    r.assert_gateway_page(403, "Sign-out not confirmed");
    let app = stage
        .send_on(on_wiki(get("wiki.test", "/")).body(()).unwrap(), &tls(None))
        .await;
    assert_eq!(app.status, 200);
    // With it, from the app's own origin.
    let post = on_wiki(request("POST", "wiki.test", "/.otpgate/logout"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "https://wiki.test")
        .body(body)
        .unwrap();
    let r = stage.send_on(post, &tls(None)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let cleared = r.set_cookies();
    assert!(
        cleared[0].starts_with("__Host-otpgate=;") && cleared[0].contains("Max-Age=0"),
        "{cleared:?}"
    );
    // The copied cookie is dead on the server (docs/security.md#31).
    let app = stage
        .send_on(on_wiki(get("wiki.test", "/")).body(()).unwrap(), &tls(None))
        .await;
    assert_eq!(app.status, 302);
}

/// docs/security.md#1 and docs/security.md#3; docs/product.md#s4.
#[tokio::test]
async fn signed_in_visitors_of_the_login_page_go_on_to_a_validated_target() {
    let stage = apps();
    let cookie = stage.cookie_for("app", "alice@corp.example");
    for (query, want) in [
        ("?rd=%2Fdocs%3Fa%3D1", "http://app.test/docs?a=1"),
        ("?rd=http%3A%2F%2Fapp.test%2Fx", "http://app.test/x"),
        (
            "?rd=https%3A%2F%2Fwiki.test%2Fpage",
            "https://wiki.test/page",
        ),
        ("?rd=https%3A%2F%2Fevil.example%2F", "http://app.test/"),
        ("?rd=%2F%2Fevil.example", "http://app.test/"),
        ("", "http://app.test/"),
    ] {
        let r = stage
            .send(
                get("app.test", &format!("/.otpgate/login{query}"))
                    .header("cookie", &cookie)
                    .body(())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, 302, "{query}");
        assert_eq!(r.header("location"), Some(want), "{query}");
        assert!(r.set_cookies().is_empty(), "no new login transaction");
    }
    // A session of another app does not count as signed in here.
    let wiki = stage.cookie_for("wiki", "alice@corp.example");
    let value = wiki.split_once('=').unwrap().1;
    let r = stage
        .send(
            get("app.test", "/.otpgate/login")
                .header("cookie", format!("otpgate={value}"))
                .body(())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
}
