//! Stage 2, the path: ambiguous spellings are refused before any policy or upstream sees them,
//! and the one spelling left is both what the policies judge and what is forwarded
//! (docs/security.md#35).

use super::*;

fn app() -> Stage {
    Stage::new(&config(
        "",
        "  - name: app
    hosts: [app.test]
    public_url: http://app.test
    upstream: builtin:echo
    policies:
      - { name: public, action: bypass, paths: [/public/] }
      - { name: blocked, action: block, paths: [/admin], include: [ { everyone: true } ] }
      - { name: staff, action: allow, include: [ { email_domain: corp.example } ] }
",
    ))
}

/// Asserts that every path gets the gateway's 400 page, both anonymously and with a session
/// that would otherwise be let in: refusal comes before the policy stage and the upstream.
async fn refused(stage: &Stage, paths: &[&str]) {
    let cookie = stage.cookie_for("app", "alice@corp.example");
    for path in paths {
        for with_cookie in [false, true] {
            let mut req = get("app.test", path);
            if with_cookie {
                req = req.header("cookie", &cookie);
            }
            let r = stage.send(req.body(()).unwrap()).await;
            assert_eq!(r.status, 400, "{path}: {}", r.text());
            r.assert_gateway_page(400, "ambiguous");
        }
    }
}

#[tokio::test]
async fn encoded_slashes_and_backslashes_are_400() {
    let stage = app();
    refused(
        &stage,
        &[
            "/public%2fx",
            "/public%2Fx",
            "/public/..%2fadmin",
            "/public%5cx",
            "/public%5Cx",
            "/public\\x",
            "/public/\\..\\admin",
        ],
    )
    .await;
}

#[tokio::test]
async fn dot_segments_in_any_spelling_are_400() {
    let stage = app();
    refused(
        &stage,
        &[
            "/public/../admin",
            "/public/./x",
            "/public/%2e%2e/admin",
            "/public/%2E%2E/admin",
            "/public/.%2e/admin",
            "/public/%2e/x",
            "/public/..;/admin",
            "/public/..",
        ],
    )
    .await;
}

#[tokio::test]
async fn encoded_control_characters_are_400() {
    let stage = app();
    refused(
        &stage,
        &[
            "/public%00x",
            "/public/%00",
            "/public%0ax",
            "/public%0D%0Ax",
            "/public%09x",
            "/public%1fx",
            "/public%7fx",
        ],
    )
    .await;
}

#[tokio::test]
async fn empty_segments_broken_and_double_escapes_are_400() {
    let stage = app();
    refused(
        &stage,
        &[
            "//public/x",
            "/public//x",
            "/public/%zz",
            "/public/%2",
            "/public/%",
            "/%2561dmin",
            "/public/%252fx",
        ],
    )
    .await;
}

#[tokio::test]
async fn path_parameters_before_the_last_segment_are_400() {
    let stage = app();
    refused(
        &stage,
        &[
            "/;/admin",
            "/admin;x/users",
            "/public;x/../admin",
            "/a%3Bx/admin",
        ],
    )
    .await;
}

#[tokio::test]
async fn the_normalised_path_is_what_is_forwarded() {
    let stage = app();
    // Unreserved escapes decoded, other escapes upper-cased; the query is passed as sent.
    let r = stage
        .send(
            get(
                "app.test",
                "/%70ublic/%41%2dz/caf%c3%a9/%40me/%7e?x=%2f&y=%41",
            )
            .body(())
            .unwrap(),
        )
        .await;
    let v = r.echo();
    assert_eq!(v["path"], "/public/A-z/caf%C3%A9/@me/~");
    assert_eq!(v["query"], "x=%2f&y=%41");
    // A path already in its one spelling goes through untouched.
    let r = stage
        .send(get("app.test", "/public/a%20b?q").body(()).unwrap())
        .await;
    assert_eq!(r.echo()["path"], "/public/a%20b");
    assert_eq!(r.echo()["query"], "q");
}

#[tokio::test]
async fn policies_judge_the_normalised_path() {
    let stage = app();
    let alice = stage.cookie_for("app", "alice@corp.example");
    // `/%61dmin` is `/admin`: blocked for everyone, the staff session included.
    for path in ["/%61dmin", "/%61%64%6D%69%6E", "/admin;jsessionid=1"] {
        let r = stage
            .send(
                get("app.test", path)
                    .header("cookie", &alice)
                    .body(())
                    .unwrap(),
            )
            .await;
        r.assert_gateway_page(403, "Access denied");
    }
    // `/%70ublic/x` is `/public/x`: the bypass applies without a session.
    let r = stage
        .send(get("app.test", "/%70ublic/x").body(()).unwrap())
        .await;
    assert_eq!(r.echo()["path"], "/public/x");
}

#[tokio::test]
async fn the_query_never_takes_part_in_the_decision() {
    let stage = app();
    let r = stage
        .send(get("app.test", "/admin?/public/").body(()).unwrap())
        .await;
    r.assert_gateway_page(403, "Access denied");
    // Nor does a query that looks like a bypass path open a protected one.
    let r = stage
        .send(get("app.test", "/private?x=/public/").body(()).unwrap())
        .await;
    assert_eq!(r.status, 302);
}
