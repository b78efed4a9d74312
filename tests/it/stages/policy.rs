//! The policy stage: the first matching policy decides, no match means no, and a bypass needs
//! no session (docs/security.md#33, docs/security.md#36); plus the HTTPS redirect before it.

use super::*;

const USERS: &str = "users:
  - { id: alice@corp.example, groups: [engineering] }
  - { id: bob@corp.example, groups: [sales] }
trusted_proxies: [10.0.0.0/8]";

fn app() -> Stage {
    Stage::new(&config(
        USERS,
        "  - name: app
    hosts: [app.test]
    public_url: http://app.test
    upstream: builtin:echo
    policies:
      - { name: public, action: bypass, paths: [/public/] }
      - { name: office, action: bypass, paths: [/office/], include: [ { ip: 192.0.2.0/24 } ] }
      - { name: blocked, action: block, paths: [/admin], include: [ { everyone: true } ] }
      - { name: engineers, action: allow, paths: [/eng/], include: [ { group: engineering } ] }
      - { name: guest, action: allow, paths: [/guest/], include: [ { email: guest@partner.example } ] }
      - name: staff
        action: allow
        include: [ { email_domain: corp.example } ]
        exclude: [ { email: mallory@corp.example } ]
  - name: narrow
    hosts: [narrow.test]
    public_url: http://narrow.test
    upstream: builtin:echo
    policies:
      - { name: docs, action: allow, paths: [/docs/], include: [ { everyone: true } ] }
  - name: secure
    hosts: [secure.test]
    public_url: https://secure.test
    upstream: builtin:echo
    policies: [ { name: open, action: bypass } ]
",
    ))
}

/// `path` on app.test as `email` (anonymous with `None`).
async fn visit(stage: &Stage, path: &str, email: Option<&str>) -> Reply {
    let mut req = get("app.test", path);
    if let Some(e) = email {
        req = req.header("cookie", stage.cookie_for("app", e));
    }
    stage.send(req.body(()).unwrap()).await
}

#[tokio::test]
async fn a_bypass_lets_anyone_in_without_a_session_or_identity() {
    let stage = app();
    for method in ["GET", "POST", "DELETE", "get"] {
        let r = stage
            .send(request(method, "app.test", "/public/x").body(()).unwrap())
            .await;
        let v = r.echo();
        assert_eq!(v["method"], method);
        assert_eq!(v["identity"], serde_json::json!({}));
    }
    // Segment-aware: /publicity is not under /public/.
    assert_eq!(visit(&stage, "/publicity", None).await.status, 302);
}

/// docs/security.md#33.
#[tokio::test]
async fn a_block_is_403_with_or_without_a_session() {
    let stage = app();
    for who in [None, Some("alice@corp.example")] {
        for path in ["/admin", "/admin/users"] {
            visit(&stage, path, who)
                .await
                .assert_gateway_page(403, "Access denied");
        }
    }
    // Blocking happens before anyone is asked to log in: no redirect, no cookie.
    assert!(visit(&stage, "/admin", None).await.set_cookies().is_empty());
}

#[tokio::test]
async fn allow_by_email_domain() {
    let stage = app();
    let r = visit(&stage, "/docs/a", Some("bob@corp.example")).await;
    assert_eq!(r.echo()["identity"]["email"], "bob@corp.example");
    for outsider in ["bob@corp.example.evil", "eve@elsewhere.example"] {
        visit(&stage, "/docs/a", Some(outsider))
            .await
            .assert_gateway_page(403, "Access denied");
    }
}

#[tokio::test]
async fn allow_by_exact_email() {
    let stage = app();
    let r = visit(&stage, "/guest/x", Some("Guest@Partner.example")).await;
    assert_eq!(r.echo()["identity"]["email"], "guest@partner.example");
    visit(&stage, "/guest/x", Some("other@partner.example"))
        .await
        .assert_gateway_page(403, "Access denied");
}

#[tokio::test]
async fn allow_by_group_of_the_user_table() {
    let stage = app();
    let r = visit(&stage, "/eng/x", Some("alice@corp.example")).await;
    assert_eq!(r.echo()["identity"]["groups"], "engineering");
    // Bob is staff but not an engineer; staff covers /eng/ too, so the first match (engineers)
    // does not decide for him: the next one does.
    let r = visit(&stage, "/eng/x", Some("bob@corp.example")).await;
    assert_eq!(r.echo()["identity"]["groups"], "sales");
    // An outsider who is in no group and no domain is refused.
    visit(&stage, "/eng/x", Some("eve@elsewhere.example"))
        .await
        .assert_gateway_page(403, "Access denied");
}

#[tokio::test]
async fn an_exclude_overrides_an_include() {
    let stage = app();
    visit(&stage, "/docs/a", Some("mallory@corp.example"))
        .await
        .assert_gateway_page(403, "Access denied");
}

/// docs/security.md#36: deny by default.
#[tokio::test]
async fn no_matching_policy_is_403() {
    let stage = app();
    let narrow = |path: &str, cookie: Option<String>| {
        let mut req = get("narrow.test", path);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.body(()).unwrap()
    };
    let cookie = stage.cookie_for("narrow", "alice@corp.example");
    let r = stage.send(narrow("/docs/x", Some(cookie.clone()))).await;
    assert_eq!(r.echo()["app"], "narrow");
    // Outside every policy's paths: refused outright, with or without a session.
    for c in [Some(cookie), None] {
        stage
            .send(narrow("/other", c))
            .await
            .assert_gateway_page(403, "Access denied");
    }
}

/// docs/security.md#34: forwarding headers decide nothing unless a trusted proxy wrote them.
#[tokio::test]
async fn an_ip_policy_sees_the_client_behind_a_trusted_proxy_only() {
    let stage = app();
    let office = || {
        get("app.test", "/office/x")
            .header("x-forwarded-for", "192.0.2.7")
            .body(())
            .unwrap()
    };
    // Directly from the office network.
    let r = stage.send_on(office(), &conn("192.0.2.7:4000")).await;
    assert_eq!(r.echo()["path"], "/office/x");
    // Through a trusted proxy that reports an office client.
    let r = stage.send_on(office(), &conn("10.0.0.2:4000")).await;
    assert_eq!(r.echo()["path"], "/office/x");
    // The same claim from an untrusted peer is not believed: the staff policy applies.
    let r = stage.send_on(office(), &conn(CLIENT)).await;
    assert_eq!(r.status, 302);
}

#[tokio::test]
async fn https_apps_reached_over_plain_http_are_redirected_with_308() {
    let stage = app();
    let post = || {
        request("POST", "secure.test", "/a/%62?x=1")
            .body("payload")
            .unwrap()
    };
    let r = stage.send(post()).await;
    assert_eq!(r.status, 308);
    // The normalised path, the query as sent.
    assert_eq!(r.header("location"), Some("https://secure.test/a/b?x=1"));
    // A claim of https from an untrusted peer changes nothing...
    let spoofed = request("GET", "secure.test", "/")
        .header("x-forwarded-proto", "https")
        .body(())
        .unwrap();
    assert_eq!(stage.send(spoofed).await.status, 308);
    // ...from a trusted proxy that ended TLS it does, as does TLS on the connection itself.
    let behind_lb = request("POST", "secure.test", "/a")
        .header("x-forwarded-proto", "https")
        .body("payload")
        .unwrap();
    let r = stage.send_on(behind_lb, &conn("10.0.0.2:4000")).await;
    assert_eq!(r.echo()["body_bytes"], 7);
    let r = stage.send_on(post(), &tls(Some("secure.test"))).await;
    assert_eq!(r.echo()["path"], "/a/b");
}
