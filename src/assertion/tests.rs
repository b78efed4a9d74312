use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

use super::*;
use crate::clock::{Clock as _, ManualClock};

const START: u64 = 1_900_000_000;

fn subject<'a>(groups: &'a [Arc<str>]) -> Subject<'a> {
    Subject {
        session: SessionId([9; 16]),
        session_expires_ms: (START + 86_400) * 1000,
        issuer: "https://app.example.org",
        audience: "otpgate:app:app",
        user: "alice",
        email: "alice@corp.example",
        groups,
        method: LoginMethod::OneTimePin,
    }
}

fn service() -> Assertions {
    let a = Assertions::default();
    a.replace_keys(SigningKeys::ephemeral("k1").unwrap());
    a
}

fn decode(part: &str) -> serde_json::Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// Verifies `token` against the published JWKS with ring's verifier; returns (header, claims).
fn verify(a: &Assertions, token: &HeaderValue) -> (serde_json::Value, serde_json::Value) {
    let token = token.to_str().unwrap();
    let (signed, sig) = token.rsplit_once('.').unwrap();
    let (header, claims) = signed.split_once('.').unwrap();
    let header = decode(header);
    let jwks: serde_json::Value = serde_json::from_slice(&a.jwks().unwrap()).unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .unwrap();
    assert_eq!(
        (&jwk["kty"], &jwk["crv"], &jwk["alg"], &jwk["use"]),
        (
            &"EC".into(),
            &"P-256".into(),
            &"ES256".into(),
            &"sig".into()
        )
    );
    let mut point = vec![4u8];
    point.extend(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap());
    point.extend(URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap());
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
        .verify(signed.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap())
        .expect("the signature verifies");
    (header, decode(claims))
}

#[test]
fn an_assertion_verifies_with_rings_verifier_and_carries_the_identity() {
    let a = service();
    let groups: Vec<Arc<str>> = vec!["engineering".into(), "ops".into()];
    let token = a
        .token(&subject(&groups), MAX_LIFETIME, START * 1000)
        .unwrap();
    let (header, claims) = verify(&a, &token);
    assert_eq!(
        header,
        serde_json::json!({ "alg": "ES256", "typ": "JWT", "kid": "k1" })
    );
    assert_eq!(
        claims,
        serde_json::json!({
            "iss": "https://app.example.org", "aud": "otpgate:app:app", "sub": "alice",
            "email": "alice@corp.example", "groups": ["engineering", "ops"],
            "amr": ["onetimepin"], "iat": START, "exp": START + 300,
        })
    );
    // Claims changed after signing do not verify.
    let text = token.to_str().unwrap();
    let (signed, sig) = text.rsplit_once('.').unwrap();
    let (head, body) = signed.split_once('.').unwrap();
    let body = String::from_utf8(URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
    let forged = format!(
        "{head}.{}",
        URL_SAFE_NO_PAD.encode(body.replace("alice", "mallo"))
    );
    assert_ne!(forged, signed);
    let jwks: serde_json::Value = serde_json::from_slice(&a.jwks().unwrap()).unwrap();
    let jwk = &jwks["keys"][0];
    let mut point = vec![4u8];
    point.extend(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap());
    point.extend(URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap());
    let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point);
    assert!(key.verify(forged.as_bytes(), &sig).is_err());
}

#[test]
fn an_assertion_expires_at_most_five_minutes_after_issue_and_never_after_its_session() {
    let a = service();
    let groups = [];
    let (_, claims) = verify(
        &a,
        &a.token(&subject(&groups), Duration::from_secs(3600), START * 1000)
            .unwrap(),
    );
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert!(exp > iat && exp <= iat + 300, "iat {iat}, exp {exp}");
    let mut ending = subject(&groups);
    ending.session = SessionId([1; 16]);
    ending.session_expires_ms = (START + 90) * 1000;
    let (_, claims) = verify(&a, &a.token(&ending, MAX_LIFETIME, START * 1000).unwrap());
    assert_eq!(claims["exp"], START + 90);
}

#[test]
fn the_cache_reuses_a_token_and_re_signs_it_when_less_than_a_minute_is_left() {
    let a = service();
    let clock = ManualClock::at(START);
    let groups: Vec<Arc<str>> = vec!["ops".into()];
    let s = subject(&groups);
    let first = a.token(&s, MAX_LIFETIME, clock.now_ms()).unwrap();
    clock.advance(Duration::from_secs(239));
    assert_eq!(a.token(&s, MAX_LIFETIME, clock.now_ms()).unwrap(), first);
    assert_eq!(a.cached(), 1);
    clock.advance(Duration::from_secs(2));
    let second = a.token(&s, MAX_LIFETIME, clock.now_ms()).unwrap();
    assert_ne!(second, first);
    let (_, claims) = verify(&a, &second);
    assert_eq!(claims["iat"], START + 241);
    assert_eq!(a.cached(), 1);
}

#[test]
fn a_changed_identity_audience_or_signing_key_is_signed_anew() {
    let a = service();
    let now = START * 1000;
    let ops: Vec<Arc<str>> = vec!["ops".into()];
    let first = a.token(&subject(&ops), MAX_LIFETIME, now).unwrap();
    let admins: Vec<Arc<str>> = vec!["ops".into(), "admins".into()];
    let regrouped = a.token(&subject(&admins), MAX_LIFETIME, now).unwrap();
    assert_ne!(regrouped, first);
    assert_eq!(
        verify(&a, &regrouped).1["groups"],
        serde_json::json!(["ops", "admins"])
    );
    let mut other = subject(&admins);
    other.audience = "otpgate:app:other";
    let elsewhere = a.token(&other, MAX_LIFETIME, now).unwrap();
    assert_eq!(verify(&a, &elsewhere).1["aud"], "otpgate:app:other");
    a.replace_keys(SigningKeys::ephemeral("k2").unwrap());
    let rekeyed = a.token(&other, MAX_LIFETIME, now).unwrap();
    assert_eq!(verify(&a, &rekeyed).0["kid"], "k2");
}

#[test]
fn without_keys_no_assertion_is_made() {
    let a = Assertions::default();
    assert!(matches!(
        a.token(&subject(&[]), MAX_LIFETIME, START * 1000),
        Err(AssertionError::NoKeys)
    ));
    assert!(a.jwks().is_none());
}
