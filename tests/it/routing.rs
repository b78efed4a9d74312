//! Routing by Host, path normalisation, the reserved prefix, and failing closed on apps that
//! need a login.

use crate::harness::*;

fn two_apps(up: &Upstream) -> String {
    format!(
        "version: 1
listen: {{ http: 127.0.0.1:0 }}
apps:
  - name: open
    hosts: [open.test, '*.wild.test']
    public_url: http://open.test
    upstream: {up}
    policies:
      - {{ name: open, action: bypass }}
  - name: private
    hosts: [private.test]
    public_url: http://private.test
    upstream: {up}
    policies:
      - {{ name: public, action: bypass, paths: [/public/] }}
      - {{ name: blocked, action: block, paths: [/admin], include: [ {{ everyone: true }} ] }}
      - {{ name: staff, action: allow, include: [ {{ email_domain: corp.example }} ] }}
",
        up = up.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_gets_404_and_is_never_proxied() {
    let up = Upstream::start().await;
    let gw = Gw::start(&two_apps(&up)).await;
    for host in [
        "unknown.test",
        "open.test.evil.example",
        "wild.test",
        "127.0.0.1",
    ] {
        let r = raw(gw.http(), &format!("GET / HTTP/1.1\nHost: {host}"), b"").await;
        assert_eq!(r.status, 404, "{host}");
        assert!(String::from_utf8_lossy(&r.body).contains("does not serve that host"));
    }
    // Missing or malformed Host: 400.
    let r = raw(gw.http(), "GET / HTTP/1.0", b"").await;
    assert_eq!(r.status, 400);
    let r = raw(gw.http(), "GET / HTTP/1.1\nHost: a b", b"").await;
    assert_eq!(r.status, 400);
    let r = raw(
        gw.http(),
        "GET / HTTP/1.1\nHost: open.test\nHost: private.test",
        b"",
    )
    .await;
    assert_eq!(r.status, 400);
    // Absolute-form with a different authority than Host.
    let r = raw(
        gw.http(),
        "GET http://private.test/ HTTP/1.1\nHost: open.test",
        b"",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_match_case_insensitively_with_any_port_and_wildcards() {
    let up = Upstream::start().await;
    let gw = Gw::start(&two_apps(&up)).await;
    for host in [
        "OPEN.test",
        "open.test:1234",
        "open.test.",
        "a.wild.test",
        "x.y.wild.test:80",
    ] {
        let r = raw(gw.http(), &format!("GET /p HTTP/1.1\nHost: {host}"), b"").await;
        assert_eq!(r.status, 200, "{host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_35_ambiguous_paths_get_400_and_are_never_proxied() {
    let up = Upstream::start().await;
    let gw = Gw::start(&two_apps(&up)).await;
    for path in [
        "/public/..%2fadmin",
        "/public/%2e%2e/admin",
        "/public/../admin",
        "/public/./x",
        "/public/..;/admin",
        "/public%2fx",
        "/public%5cx",
        "/public%00x",
        "//public/x",
        "/public/%zz",
        "*",
    ] {
        for host in ["open.test", "private.test"] {
            let r = raw(
                gw.http(),
                &format!("GET {path} HTTP/1.1\nHost: {host}"),
                b"",
            )
            .await;
            assert_eq!(r.status, 400, "{host}{path}");
        }
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_35_the_normalised_path_is_checked_and_forwarded() {
    let up = Upstream::start().await;
    let gw = Gw::start(&two_apps(&up)).await;
    // /%70ublic/ is /public/: decided by the bypass, forwarded decoded.
    let r = raw(
        gw.http(),
        "GET /%70ublic/%41%2dz?x=%2f HTTP/1.1\nHost: private.test",
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/public/A-z");
    assert_eq!(r.json()["query"], "x=%2f");
    // The query never decides: /admin?/public/ is /admin.
    let r = raw(
        gw.http(),
        "GET /admin?/public/ HTTP/1.1\nHost: private.test",
        b"",
    )
    .await;
    assert_eq!(r.status, 403);
    // Encoded /admin is still /admin.
    let r = raw(gw.http(), "GET /%61dmin HTTP/1.1\nHost: private.test", b"").await;
    assert_eq!(r.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_36_protected_paths_without_a_session_are_never_proxied() {
    let up = Upstream::start().await;
    let gw = Gw::start(&two_apps(&up)).await;
    for (method, path) in [
        ("GET", "/"),
        ("POST", "/"),
        ("get", "/"),
        ("DELETE", "/x"),
        ("OPTIONS", "/x"),
    ] {
        let r = raw(
            gw.http(),
            &format!("{method} {path} HTTP/1.1\nHost: private.test\nContent-Length: 0"),
            b"",
        )
        .await;
        assert_eq!(r.status, 302, "{method} {path}");
        let want = format!(
            "http://private.test/.otpgate/login?rd=http%3A%2F%2Fprivate.test{}",
            path.replace('/', "%2F")
        );
        assert_eq!(r.header("location"), Some(want.as_str()), "{method} {path}");
    }
    // Blocked for everyone: refused without asking for a login.
    let r = raw(gw.http(), "GET /admin HTTP/1.1\nHost: private.test", b"").await;
    assert_eq!(r.status, 403);
    assert!(String::from_utf8_lossy(&r.body).contains("Access denied"));
    assert_eq!(up.hits(), 0);
    // The bypass path still works, for any method.
    for method in ["GET", "POST", "put"] {
        let r = raw(
            gw.http(),
            &format!("{method} /public/a HTTP/1.1\nHost: private.test\nContent-Length: 0"),
            b"",
        )
        .await;
        assert_eq!(r.status, 200, "{method}");
        assert_eq!(r.json()["method"], method);
    }
    // Segment-aware prefixes: /publicity is not under /public/.
    let r = raw(
        gw.http(),
        "GET /publicity HTTP/1.1\nHost: private.test",
        b"",
    )
    .await;
    assert_eq!(r.status, 302);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reserved_prefix_is_never_proxied() {
    let up = Upstream::start().await;
    let gw = Gw::start(&two_apps(&up)).await;
    for path in [
        "/.otpgate/",
        "/.otpgate/anything",
        "/.otpgate",
        "/%2eotpgate/x",
    ] {
        let r = raw(
            gw.http(),
            &format!("GET {path} HTTP/1.1\nHost: open.test"),
            b"",
        )
        .await;
        assert_eq!(r.status, 404, "{path}");
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_redirects_to_an_https_public_url() {
    let up = Upstream::start().await;
    let yaml = format!(
        "version: 1
{LISTEN_ALL}
tls: {{ self_signed: [app.test] }}
apps:
  - name: app
    hosts: [app.test]
    upstream: {}
    policies: [ {{ name: open, action: bypass }} ]
",
        up.url()
    );
    let gw = Gw::start(&yaml).await;
    let r = raw(
        gw.http(),
        "POST /a/%62?x=1 HTTP/1.1\nHost: app.test\nContent-Length: 0",
        b"",
    )
    .await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://app.test:{}/a/b?x=1", gw.https().port()).as_str())
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_35_path_parameters_and_alternative_spellings_cannot_dodge_policies() {
    let up = Upstream::start().await;
    let gw = Gw::start(&two_apps(&up)).await;
    // Servlet containers drop ";params" from every segment: /;/admin would be /admin.
    for path in [
        "/;/admin",
        "/admin;x/users",
        "/public;x/../admin",
        "/a%3Bx/admin",
        "/%2561dmin",
    ] {
        let r = raw(
            gw.http(),
            &format!("GET {path} HTTP/1.1\nHost: private.test"),
            b"",
        )
        .await;
        assert_eq!(r.status, 400, "{path}");
    }
    assert_eq!(up.hits(), 0);
    // One spelling per path: decoded sub-delimiters, escaped non-ASCII, upper-case escapes.
    let r = raw(
        gw.http(),
        "GET /public/%40me/caf\u{e9}/%7e/%3d HTTP/1.1\nHost: private.test",
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/public/@me/caf%C3%A9/~/=");
    // The last segment may carry parameters; policies still see the segment.
    let r = raw(
        gw.http(),
        "GET /admin;jsessionid=1 HTTP/1.1\nHost: private.test",
        b"",
    )
    .await;
    assert_eq!(r.status, 403);
}
