//! Service tokens in the policy and proxy stages: a valid token is let in as the service by a
//! `service_auth` policy, without a login; a bad one gets 401 JSON and never the cookie's
//! decision; neither header reaches the upstream (docs/security.md#29, #33, #34).

use std::path::Path;

use otpgate::random::SystemRandom;
use otpgate::session::service_token::{self, Created};

use super::*;

/// A stage whose `ci` and `old` tokens (and their key) live in `dir`; `old` expires a minute
/// after the stage's start. `extra` is more top-level config.
struct Tokens {
    stage: Stage,
    ci: Created,
    old: Created,
    audit: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn tokens(extra: &str) -> Tokens {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("service-token.key");
    let ci = service_token::create(&key, &SystemRandom::default()).unwrap();
    let old = service_token::create(&key, &SystemRandom::default()).unwrap();
    let audit = dir.path().join("audit.log");
    let expires = otpgate_time(START_SECS + 60);
    let head = format!(
        "service_token_key_file: {key}
audit: {{ path: {audit} }}
users:
  - {{ id: alice@corp.example }}
service_tokens:
  - {{ name: ci, client_id: {ci_id}, secret_hash: \"{ci_hash}\" }}
  - {{ name: old, client_id: {old_id}, secret_hash: \"{old_hash}\", expires: \"{expires}\" }}
{extra}",
        key = key.display(),
        audit = audit.display(),
        ci_id = ci.client_id,
        ci_hash = ci.secret_hash,
        old_id = old.client_id,
        old_hash = old.secret_hash,
    );
    let stage = Stage::new(&config(
        &head,
        "  - name: app
    hosts: [app.test]
    public_url: http://app.test
    upstream: builtin:echo
    policies:
      - { name: ci-only, action: service_auth, paths: [/ci/], include: [ { service_token: ci } ] }
      - { name: machines, action: service_auth, paths: [/api/], include: [ { any_service_token: true } ] }
      - { name: people, action: allow, paths: [/wiki], include: [ { email_domain: corp.example } ] }
",
    ));
    Tokens {
        stage,
        ci,
        old,
        audit,
        _dir: dir,
    }
}

/// RFC 3339 for a Unix time (UTC, whole seconds).
fn otpgate_time(secs: u64) -> String {
    let days = secs / 86_400;
    // 2030-03-17 is START_SECS's day: count whole days from there (tests stay within a day).
    assert_eq!(days, START_SECS / 86_400);
    let s = secs % 86_400;
    format!(
        "2030-03-17T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// `path` on app.test presenting `id` and `secret` in the default headers.
fn with_token(path: &str, id: &str, secret: &str) -> http::request::Builder {
    get("app.test", path)
        .header("Otpgate-Client-Id", id)
        .header("Otpgate-Client-Secret", secret)
}

fn assert_invalid_token(r: &Reply) {
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({ "error": "invalid_service_token" })
    );
    assert!(r.header("location").is_none(), "never a login page");
    assert!(r.set_cookies().is_empty());
}

fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn sec_34_a_valid_token_reaches_the_upstream_as_the_service_and_neither_header_follows() {
    let t = tokens("");
    let secret = t.ci.secret.expose();
    let r = t
        .stage
        .send(
            with_token("/ci/run", &t.ci.client_id, secret)
                // Other spellings of the credential headers go too.
                .header("otpgate_client_secret", secret)
                .header("x-otpgate-email", "mallory@evil.example")
                .body(())
                .unwrap(),
        )
        .await;
    assert_eq!(r.echoed("x-otpgate-user"), ["service:ci"]);
    assert!(
        r.echoed("x-otpgate-email").is_empty(),
        "a service has no address"
    );
    assert!(r.echoed("x-otpgate-groups").is_empty());
    // The assertion names a person who logged in: a service gets none (docs/product.md#s4).
    assert!(r.echoed("otpgate-jwt-assertion").is_empty());
    let echo = r.echo().to_string();
    assert!(
        !echo.to_ascii_lowercase().contains("otpgate-client"),
        "{echo}"
    );
    assert!(
        !echo.to_ascii_lowercase().contains("otpgate_client"),
        "{echo}"
    );
    assert!(
        !echo.contains(secret),
        "the secret reached the upstream: {echo}"
    );
    assert!(!echo.contains(&t.ci.client_id), "{echo}");
}

#[tokio::test]
async fn sec_29_a_wrong_secret_an_unknown_id_or_one_header_alone_gets_401_json() {
    let t = tokens("");
    let wrong = "0".repeat(64);
    let cases = [
        with_token("/ci/run", &t.ci.client_id, &wrong),
        with_token("/ci/run", &t.ci.client_id, t.old.secret.expose()),
        with_token(
            "/ci/run",
            "00000000000000000000000000000000",
            t.ci.secret.expose(),
        ),
        get("app.test", "/ci/run").header("otpgate-client-id", &t.ci.client_id),
        get("app.test", "/ci/run").header("otpgate-client-secret", t.ci.secret.expose()),
    ];
    for req in cases {
        assert_invalid_token(&t.stage.send(req.body(()).unwrap()).await);
    }
}

#[tokio::test]
async fn sec_29_a_bad_token_never_falls_back_to_the_cookie_sent_with_it() {
    let t = tokens("");
    let cookie = t.stage.cookie_for("app", "alice@corp.example");
    let ok = t
        .stage
        .send(
            get("app.test", "/wiki")
                .header("cookie", &cookie)
                .body(())
                .unwrap(),
        )
        .await;
    assert_eq!(ok.echoed("x-otpgate-email"), ["alice@corp.example"]);
    let r = t
        .stage
        .send(
            with_token("/wiki", &t.ci.client_id, &"0".repeat(64))
                .header("cookie", &cookie)
                .body(())
                .unwrap(),
        )
        .await;
    assert_invalid_token(&r);
}

#[tokio::test]
async fn sec_29_an_expired_token_gets_401_json_from_its_expiry_on() {
    let t = tokens("");
    let req = || with_token("/api/x", &t.old.client_id, t.old.secret.expose());
    assert_eq!(
        t.stage
            .send(req().body(()).unwrap())
            .await
            .echoed("x-otpgate-user"),
        ["service:old"]
    );
    t.stage.advance(Duration::from_secs(60));
    assert_invalid_token(&t.stage.send(req().body(()).unwrap()).await);
}

#[tokio::test]
async fn sec_33_a_persons_cookie_on_a_service_auth_path_is_refused_without_a_login_page() {
    let t = tokens("");
    let cookie = t.stage.cookie_for("app", "alice@corp.example");
    for path in ["/ci/run", "/api/x"] {
        let r = t
            .stage
            .send(
                get("app.test", path)
                    .header("cookie", &cookie)
                    .body(())
                    .unwrap(),
            )
            .await;
        r.assert_gateway_page(403, "Access denied");
        let anonymous = t.stage.send(get("app.test", path).body(()).unwrap()).await;
        anonymous.assert_gateway_page(403, "Access denied");
    }
}

#[tokio::test]
async fn sec_33_any_service_token_admits_every_valid_token_and_a_named_one_only_its_own() {
    let t = tokens("");
    let ci = t
        .stage
        .send(
            with_token("/api/x", &t.ci.client_id, t.ci.secret.expose())
                .body(())
                .unwrap(),
        )
        .await;
    assert_eq!(ci.echoed("x-otpgate-user"), ["service:ci"]);
    let old = t
        .stage
        .send(
            with_token("/api/x", &t.old.client_id, t.old.secret.expose())
                .body(())
                .unwrap(),
        )
        .await;
    assert_eq!(old.echoed("x-otpgate-user"), ["service:old"]);
    let not_its_path = t
        .stage
        .send(
            with_token("/ci/run", &t.old.client_id, t.old.secret.expose())
                .body(())
                .unwrap(),
        )
        .await;
    not_its_path.assert_gateway_page(403, "Access denied");
    // Allow policies are for people: a valid token is not let in by `people`.
    let people_path = t
        .stage
        .send(
            with_token("/wiki", &t.ci.client_id, t.ci.secret.expose())
                .body(())
                .unwrap(),
        )
        .await;
    people_path.assert_gateway_page(403, "Access denied");
}

#[tokio::test]
async fn sec_38_token_use_is_audited_once_a_minute_and_never_with_the_secret() {
    let t = tokens("");
    let secret = t.ci.secret.expose();
    for _ in 0..3 {
        let r = t
            .stage
            .send(
                with_token("/ci/run", &t.ci.client_id, secret)
                    .body(())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    for _ in 0..3 {
        let r = t
            .stage
            .send(
                with_token("/ci/run", &t.ci.client_id, &"1".repeat(64))
                    .body(())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, 401);
    }
    t.stage.advance(Duration::from_secs(61));
    let r = t
        .stage
        .send(
            with_token("/ci/run", &t.ci.client_id, secret)
                .body(())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    let lines = audit_lines(&t.audit);
    let used: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "service_token.used")
        .collect();
    let refused: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "service_token.refused")
        .collect();
    assert_eq!(used.len(), 2, "{lines:?}");
    assert_eq!(refused.len(), 1, "{lines:?}");
    assert_eq!(used[0]["token"], "ci");
    assert_eq!(used[0]["app"], "app");
    assert_eq!(refused[0]["reason"], "wrong_secret");
    let text = std::fs::read_to_string(&t.audit).unwrap();
    assert!(!text.contains(secret), "the secret is in the audit log");
}

#[tokio::test]
async fn sec_34_configured_header_names_are_used_and_stripped() {
    let t = tokens("service_token_headers: { client_id: X-Svc-Id, client_secret: X-Svc-Secret }");
    let r = t
        .stage
        .send(
            get("app.test", "/ci/run")
                .header("X-Svc-Id", &t.ci.client_id)
                .header("X-Svc-Secret", t.ci.secret.expose())
                .body(())
                .unwrap(),
        )
        .await;
    assert_eq!(r.echoed("x-otpgate-user"), ["service:ci"]);
    let echo = r.echo().to_string();
    assert!(!echo.contains(t.ci.secret.expose()), "{echo}");
    assert!(!echo.contains("x-svc-"), "{echo}");
    // The default names mean nothing now, and still never travel on.
    let r = t
        .stage
        .send(
            with_token("/ci/run", &t.ci.client_id, t.ci.secret.expose())
                .body(())
                .unwrap(),
        )
        .await;
    r.assert_gateway_page(403, "Access denied");
}
