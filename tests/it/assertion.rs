//! The identity assertion checked by an independent verifier (docs/security.md#34): PyJWT, as
//! an app would use it, fetches the JWKS from the running gateway's `/.otpgate/certs` and
//! verifies the token the real upstream received. Without python3 + PyJWT the test is skipped
//! loudly, except under `CI=true`, where it fails (`.ci/run` installs them).

use std::io::Write as _;
use std::process::Stdio;
use std::sync::OnceLock;

use crate::harness::{Gw, Upstream};

/// The PyPI packages the verifier needs.
const PYJWT: &str = "pyjwt cryptography";

fn pyjwt_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::process::Command::new("python3")
            .args(["-c", "import jwt, cryptography"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn usable() -> bool {
    if pyjwt_available() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("python3 with PyJWT is required under CI (python3 -m pip install {PYJWT})");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: PyJWT not installed (pip install {PYJWT}); the verifier test returns early"
    );
    false
}

/// Two apps in front of one real upstream, on the plain-http listener.
fn config(upstream: &Upstream) -> String {
    format!(
        "version: 1
listen: {{ http: 127.0.0.1:0 }}
users:
  - {{ id: alice@corp.example, groups: [ops, engineering] }}
apps:
  - name: wiki
    hosts: [wiki.test]
    upstream: {url}
    policies:
      - {{ name: all, action: allow, include: [ {{ everyone: true }} ] }}
  - name: ci
    hosts: [ci.test]
    audience: urn:example:ci
    upstream: {url}
    policies:
      - {{ name: all, action: allow, include: [ {{ everyone: true }} ] }}
",
        url = upstream.url()
    )
}

/// The assertion the upstream received for a request to `host` with `cookie`.
async fn received(gw: &Gw, host: &str, cookie: &str) -> String {
    let r = gw
        .client()
        .get(gw.http_url(host, "/whoami"))
        .header("cookie", cookie)
        .header("otpgate-jwt-assertion", "forged.by.client")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: serde_json::Value = r.json().await.unwrap();
    let tokens = echo["headers"]["otpgate-jwt-assertion"].as_array().unwrap();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    tokens[0].as_str().unwrap().to_owned()
}

/// Runs tests/support/verify_assertion.py against the gateway's JWKS as `host` serves it.
async fn verify(
    gw: &Gw,
    host: &str,
    audience: &str,
    other: &str,
    token: &str,
) -> serde_json::Value {
    let out = tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/verify_assertion.py"
        ))
        .arg(format!("http://{}/.otpgate/certs", gw.http()))
        .arg(format!("{host}:{}", gw.http().port()))
        .args([audience, other, token])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "the verifier failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn pyjwt_verifies_the_assertion_the_upstream_received_for_its_audience_only() {
    if !usable() {
        return;
    }
    let upstream = Upstream::start().await;
    let gw = Gw::start(&config(&upstream)).await;
    let token = received(&gw, "wiki.test", &gw.mint("wiki", "alice@corp.example")).await;
    let v = verify(
        &gw,
        "wiki.test",
        "otpgate:app:wiki",
        "urn:example:ci",
        &token,
    )
    .await;
    let c = &v["claims"];
    assert_eq!(c["iss"], format!("http://wiki.test:{}", gw.http().port()));
    assert_eq!(c["aud"], "otpgate:app:wiki");
    assert_eq!(c["sub"], "alice@corp.example");
    assert_eq!(c["email"], "alice@corp.example");
    assert_eq!(c["groups"], serde_json::json!(["ops", "engineering"]));
    assert_eq!(c["amr"], serde_json::json!(["onetimepin"]));
    let (iat, exp) = (c["iat"].as_u64().unwrap(), c["exp"].as_u64().unwrap());
    assert!(exp > iat && exp <= iat + 300, "iat {iat}, exp {exp}");
    assert_eq!(v["other_audience"], "refused");
    assert_eq!(v["forged"], "refused");
    assert_eq!(v["after_exp"], "refused");

    // The other app's token verifies for its own audience and is refused for the wiki's.
    let token = received(&gw, "ci.test", &gw.mint("ci", "bob@corp.example")).await;
    let v = verify(&gw, "ci.test", "urn:example:ci", "otpgate:app:wiki", &token).await;
    assert_eq!(v["claims"]["sub"], "bob@corp.example");
    assert_eq!(v["other_audience"], "refused");
}

#[tokio::test]
async fn after_keys_rotate_jwt_and_a_reload_old_assertions_still_verify() {
    if !usable() {
        return;
    }
    let upstream = Upstream::start().await;
    let gw = Gw::start(&config(&upstream)).await;
    let cookie = gw.mint("wiki", "alice@corp.example");
    let old = received(&gw, "wiki.test", &cookie).await;
    let before = verify(&gw, "wiki.test", "otpgate:app:wiki", "x", &old).await;

    let said = otpgate::commands::keys_rotate_jwt(
        &gw.config(),
        &otpgate::clock::SystemClock,
        otpgate::random::system().as_ref(),
    )
    .unwrap();
    assert!(said.contains("new current signing key"), "{said}");
    gw.running.reload().unwrap();

    // The same session now gets a token signed with the new key.
    let new = received(&gw, "wiki.test", &cookie).await;
    assert_ne!(new, old);
    let after = verify(&gw, "wiki.test", "otpgate:app:wiki", "x", &new).await;
    assert_ne!(after["kid"], before["kid"]);
    // The token signed before the rotation still verifies against the served JWKS.
    let again = verify(&gw, "wiki.test", "otpgate:app:wiki", "x", &old).await;
    assert_eq!(again["kid"], before["kid"]);
    assert_eq!(again["claims"]["sub"], "alice@corp.example");
    assert_eq!(again["after_exp"], "refused");
    let listed = otpgate::commands::keys_list_jwt(
        &gw.config(),
        &otpgate::clock::SystemClock,
        otpgate::random::system().as_ref(),
    )
    .unwrap();
    assert_eq!(listed.lines().count(), 2, "{listed}");
}
