//! Stage 1, routing: the Host (or `:authority`) picks the app, checked against the TLS name.

use super::*;

/// Three open apps: two exact hosts and a wildcard with a more specific exact sibling.
fn apps() -> Stage {
    Stage::new(&config(
        "",
        "  - name: alpha
    hosts: [alpha.test]
    public_url: http://alpha.test
    upstream: builtin:echo
    policies: [ { name: open, action: bypass } ]
  - name: beta
    hosts: [beta.test]
    public_url: http://beta.test
    upstream: builtin:echo
    policies: [ { name: open, action: bypass } ]
  - name: wild
    hosts: ['*.wild.test']
    public_url: http://www.wild.test
    upstream: builtin:echo
    policies: [ { name: open, action: bypass } ]
  - name: special
    hosts: [special.wild.test]
    public_url: http://special.wild.test
    upstream: builtin:echo
    policies: [ { name: open, action: bypass } ]
",
    ))
}

/// The app whose echo answered a request for `host`.
async fn app_for(stage: &Stage, host: &str) -> String {
    let r = stage.send(get(host, "/").body(()).unwrap()).await;
    r.echo()["app"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_host_header_picks_the_app() {
    let stage = apps();
    assert_eq!(app_for(&stage, "alpha.test").await, "alpha");
    assert_eq!(app_for(&stage, "beta.test").await, "beta");
}

/// A host no app claims is never guessed at (docs/security.md#36).
#[tokio::test]
async fn unknown_hosts_get_404_from_the_gateway() {
    let stage = apps();
    // A suffix of a configured name, a configured name inside another, the wildcard's own
    // parent and a bare address are all different hosts.
    for host in [
        "unknown.test",
        "alpha.test.evil.example",
        "xalpha.test",
        "wild.test",
        "127.0.0.1",
    ] {
        let r = stage.send(get(host, "/").body(()).unwrap()).await;
        r.assert_gateway_page(404, "does not serve that host");
    }
}

#[tokio::test]
async fn a_request_without_a_host_is_400() {
    let stage = apps();
    let r = stage.send(Request::get("/").body(()).unwrap()).await;
    r.assert_gateway_page(400, "did not name a valid host");
}

#[tokio::test]
async fn a_repeated_host_header_is_400_even_when_both_agree() {
    let stage = apps();
    for second in ["beta.test", "alpha.test"] {
        let r = stage
            .send(
                get("alpha.test", "/")
                    .header("host", second)
                    .body(())
                    .unwrap(),
            )
            .await;
        r.assert_gateway_page(400, "did not name a valid host");
    }
}

#[tokio::test]
async fn malformed_hosts_are_400() {
    let stage = apps();
    for host in [
        "a b",
        "alpha.test/x",
        "user@alpha.test",
        "alpha.test:http",
        "alpha.test:80:90",
        ":80",
        "[::1",
        "[zz]",
        "alpha.test:123456",
    ] {
        let r = stage.send(get(host, "/").body(()).unwrap()).await;
        assert_eq!(r.status, 400, "{host}: {}", r.text());
    }
}

#[tokio::test]
async fn authority_and_host_must_name_the_same_host() {
    let stage = apps();
    // HTTP/2 (or an absolute-form HTTP/1.1 target) names the host in the URI.
    let r = stage
        .send(
            Request::get("http://beta.test/x")
                .header("host", "alpha.test")
                .body(())
                .unwrap(),
        )
        .await;
    r.assert_gateway_page(400, "did not name a valid host");
    // The same host spelt differently (case, port) agrees.
    let r = stage
        .send(
            Request::get("http://BETA.test:8080/x")
                .header("host", "beta.test")
                .body(())
                .unwrap(),
        )
        .await;
    assert_eq!(r.echo()["app"], "beta");
    // An authority alone is enough: HTTP/2 clients need not send Host.
    let r = stage
        .send(Request::get("https://beta.test/x").body(()).unwrap())
        .await;
    assert_eq!(r.echo()["app"], "beta");
}

/// A connection set up for one app cannot carry requests for another (a certificate
/// covering both would otherwise let a client mix them).
#[tokio::test]
async fn a_tls_name_of_another_app_is_421() {
    let stage = apps();
    let req = || get("alpha.test", "/").body(()).unwrap();
    // The connection was set up for beta: alpha must not be served on it.
    for sni in ["beta.test", "BETA.TEST", "x.wild.test"] {
        let r = stage.send_on(req(), &tls(Some(sni))).await;
        r.assert_gateway_page(421, "set up for a different site");
    }
    // Its own name, no SNI at all, or a name no app serves (a default certificate) are fine.
    for sni in [Some("alpha.test"), None, Some("elsewhere.example")] {
        let r = stage.send_on(req(), &tls(sni)).await;
        assert_eq!(r.echo()["app"], "alpha", "{sni:?}");
    }
}

#[tokio::test]
async fn wildcards_cover_subdomains_at_any_depth_and_exact_names_win() {
    let stage = apps();
    assert_eq!(app_for(&stage, "a.wild.test").await, "wild");
    assert_eq!(app_for(&stage, "a.b.c.wild.test").await, "wild");
    assert_eq!(app_for(&stage, "special.wild.test").await, "special");
    assert_eq!(app_for(&stage, "x.special.wild.test").await, "wild");
}

#[tokio::test]
async fn port_case_and_a_trailing_dot_do_not_change_the_app() {
    let stage = apps();
    for host in [
        "alpha.test:8443",
        "ALPHA.Test",
        "alpha.test.",
        "alpha.test.:1",
    ] {
        assert_eq!(app_for(&stage, host).await, "alpha", "{host}");
    }
    // The port never selects an app either.
    assert_eq!(app_for(&stage, "beta.test:8443").await, "beta");
}
