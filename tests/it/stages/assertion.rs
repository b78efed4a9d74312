//! Stage 7, the identity assertion (docs/security.md#34): the upstream gets the gateway's own
//! signed `Otpgate-Jwt-Assertion` with a session, nothing without one, and never one a client
//! sent, whatever the spelling or the configured name.

use super::*;
use base64::Engine as _;
use otpgate::assertion::SigningKeys;

/// Two apps behind `builtin:echo`: `app` (public under `/public/`) and `other`, with the
/// assertion in the configured header `X-App-Identity`.
fn stage(header: Option<&str>) -> Stage {
    let head = match header {
        Some(h) => format!("identity_assertion: {{ header: {h}, lifetime: 2m }}"),
        None => String::new(),
    };
    let stage = Stage::new(&config(
        &format!("{head}\nusers:\n  - {{ id: alice@corp.example, groups: [ops] }}"),
        "  - name: app
    hosts: [app.test]
    public_url: http://app.test
    upstream: builtin:echo
    policies:
      - { name: public, action: bypass, paths: [/public/] }
      - { name: all, action: allow, include: [ { everyone: true } ] }
  - name: other
    hosts: [other.test]
    public_url: http://other.test
    audience: urn:example:other
    upstream: builtin:echo
    policies:
      - { name: all, action: allow, include: [ { everyone: true } ] }
",
    ));
    stage
        .gateway()
        .assertions()
        .replace_keys(SigningKeys::ephemeral("stage").unwrap());
    stage
}

fn claims(token: &str) -> serde_json::Value {
    let part = token.split('.').nth(1).unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&json).unwrap()
}

/// Every header the echo upstream got whose name folds to `name`.
fn arrived(r: &Reply, name: &str) -> Vec<String> {
    let echo = r.echo();
    echo["headers"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.replace('_', "-") == name)
        .flat_map(|(_, v)| v.as_array().unwrap().clone())
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_upstream_gets_a_signed_assertion_only_with_a_session() {
    let stage = stage(None);
    let cookie = stage.cookie_for("app", "alice@corp.example");
    let r = stage
        .send(
            get("app.test", "/x")
                .header("cookie", &cookie)
                .body(())
                .unwrap(),
        )
        .await;
    let tokens = arrived(&r, "otpgate-jwt-assertion");
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    let c = claims(&tokens[0]);
    assert_eq!(c["iss"], "http://app.test");
    assert_eq!(c["aud"], "otpgate:app:app");
    assert_eq!(c["sub"], "alice@corp.example");
    assert_eq!(r.echoed("x-otpgate-user"), [c["sub"].as_str().unwrap()]);
    assert_eq!(c["email"], "alice@corp.example");
    assert_eq!(c["groups"], serde_json::json!(["ops"]));
    assert_eq!(c["amr"], serde_json::json!(["onetimepin"]));
    assert_eq!(c["exp"].as_u64().unwrap(), START_SECS + 300);

    // The next request of the same session reuses the cached token.
    let again = stage
        .send(
            get("app.test", "/y")
                .header("cookie", &cookie)
                .body(())
                .unwrap(),
        )
        .await;
    assert_eq!(arrived(&again, "otpgate-jwt-assertion"), tokens);

    // The other app's audience is its own.
    let r = stage
        .send(
            get("other.test", "/")
                .header("cookie", stage.cookie_for("other", "bob@corp.example"))
                .body(())
                .unwrap(),
        )
        .await;
    let c = claims(&arrived(&r, "otpgate-jwt-assertion")[0]);
    assert_eq!(
        (&c["aud"], &c["sub"]),
        (&"urn:example:other".into(), &"bob@corp.example".into())
    );

    // A bypassed request has no session, so no assertion.
    let r = stage
        .send(get("app.test", "/public/a").body(()).unwrap())
        .await;
    assert!(arrived(&r, "otpgate-jwt-assertion").is_empty());
}

#[tokio::test]
async fn a_client_sent_assertion_never_reaches_the_upstream() {
    let stage = stage(Some("X-App-Identity"));
    let forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5In0.";
    let spoofed = |path: &str| {
        get("app.test", path)
            .header("otpgate-jwt-assertion", forged)
            .header("Otpgate_Jwt_Assertion", forged)
            .header("x-app-identity", forged)
            .header("X_App_Identity", forged)
    };
    // Bypassed: every spelling is removed, nothing is added.
    let r = stage.send(spoofed("/public/a").body(()).unwrap()).await;
    assert!(!r.text().contains(forged), "{}", r.text());
    // With a session: only the gateway's own token, under the configured name.
    let cookie = stage.cookie_for("app", "alice@corp.example");
    let r = stage
        .send(spoofed("/x").header("cookie", cookie).body(()).unwrap())
        .await;
    assert!(!r.text().contains(forged), "{}", r.text());
    assert!(arrived(&r, "otpgate-jwt-assertion").is_empty());
    let own = arrived(&r, "x-app-identity");
    assert_eq!(own.len(), 1);
    let c = claims(&own[0]);
    assert_eq!(c["sub"], "alice@corp.example");
    assert_eq!(c["exp"].as_u64().unwrap(), START_SECS + 120);
}

#[tokio::test]
async fn switched_off_there_is_no_assertion_and_no_jwks() {
    let stage = Stage::new(&config(
        "identity_assertion: { enabled: false }",
        "  - name: app
    hosts: [app.test]
    public_url: http://app.test
    upstream: builtin:echo
    policies:
      - { name: all, action: allow, include: [ { everyone: true } ] }
",
    ));
    let r = stage
        .send(
            get("app.test", "/x")
                .header("cookie", stage.cookie_for("app", "alice@corp.example"))
                .header("otpgate-jwt-assertion", "forged")
                .body(())
                .unwrap(),
        )
        .await;
    assert!(arrived(&r, "otpgate-jwt-assertion").is_empty());
    let r = stage
        .send(get("app.test", "/.otpgate/certs").body(()).unwrap())
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn the_jwks_is_served_on_every_app_host_without_a_session() {
    let stage = stage(None);
    for host in ["app.test", "other.test"] {
        let r = stage
            .send(get(host, "/.otpgate/certs").body(()).unwrap())
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("cache-control"), Some("public, max-age=300"));
        let keys = r.json()["keys"].as_array().unwrap().clone();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0]["kid"], "stage");
        assert_eq!(keys[0]["kty"], "EC");
        assert_eq!(keys[0]["crv"], "P-256");
        assert_eq!(keys[0]["alg"], "ES256");
        assert_eq!(keys[0]["use"], "sig");
        assert!(keys[0].get("d").is_none(), "a private part is published");
    }
    let r = stage
        .send(
            request("POST", "app.test", "/.otpgate/certs")
                .body(())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 405);
}
