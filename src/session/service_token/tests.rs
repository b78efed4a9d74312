use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::*;
use crate::config::{
    CLIENT_ID_HEADER, CLIENT_SECRET_HEADER, Secret, ServiceTokenConfig, ServiceTokenSettings,
};

const KEY_B64: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="; // 32 × 0x07
const ID: &str = "0123456789abcdef0123456789abcdef";
const NEW: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const OLD: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const NOW_MS: u64 = 1_900_000_000_000;

fn key() -> hmac::Key {
    mac_key(KEY_B64).unwrap()
}

fn settings(secrets: Vec<TokenSecret>, expires: Option<Duration>) -> ServiceTokenSettings {
    ServiceTokenSettings {
        key_file: "unused".into(),
        key: Some(Secret::new(KEY_B64)),
        client_id_header: HeaderName::from_static(CLIENT_ID_HEADER),
        client_secret_header: HeaderName::from_static(CLIENT_SECRET_HEADER),
        tokens: vec![ServiceTokenConfig {
            name: "loadtest".into(),
            client_id: ID.into(),
            secrets,
            expires,
        }],
    }
}

fn presenting(id: &str, secret: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CLIENT_ID_HEADER, HeaderValue::from_str(id).unwrap());
    h.insert(CLIENT_SECRET_HEADER, HeaderValue::from_str(secret).unwrap());
    h
}

fn hashed(secret: &str) -> TokenSecret {
    TokenSecret::Hash(hash(&key(), ID, secret.as_bytes()))
}

#[test]
fn the_right_secret_is_accepted_and_names_the_service() {
    let t = ServiceTokens::build(&settings(vec![hashed(NEW)], None));
    let s = t.check(&presenting(ID, NEW), NOW_MS).unwrap();
    assert_eq!(s.name(), "loadtest");
    assert_eq!(s.user_header(), "service:loadtest");
}

#[test]
fn sec_29_a_wrong_secret_or_unknown_id_or_lone_header_is_refused() {
    let t = ServiceTokens::build(&settings(vec![hashed(NEW)], None));
    let fail = |h: &HeaderMap| t.check(h, NOW_MS).unwrap_err().failure;
    assert_eq!(fail(&presenting(ID, OLD)), Failure::WrongSecret);
    // One character off, and the same secret under another client id.
    assert_eq!(
        fail(&presenting(ID, &format!("{}0", &NEW[..63]))),
        Failure::WrongSecret
    );
    assert_eq!(fail(&presenting("ffffffffffffffff", NEW)), Failure::Unknown);
    let mut lone = HeaderMap::new();
    lone.insert(CLIENT_ID_HEADER, HeaderValue::from_static(ID));
    assert!(t.presented(&lone));
    assert_eq!(fail(&lone), Failure::Malformed);
    let mut twice = presenting(ID, NEW);
    twice.append(CLIENT_SECRET_HEADER, HeaderValue::from_static(NEW));
    assert_eq!(fail(&twice), Failure::Malformed);
    assert!(!t.presented(&HeaderMap::new()));
}

#[test]
fn sec_29_a_hash_copied_to_another_client_id_does_not_work_there() {
    // The client id is part of the hashed message.
    assert_ne!(
        hash(&key(), ID, NEW.as_bytes()),
        hash(&key(), "another-client-id", NEW.as_bytes())
    );
}

#[test]
fn sec_29_both_secrets_work_during_a_rotation_and_only_those() {
    let t = ServiceTokens::build(&settings(vec![hashed(NEW), hashed(OLD)], None));
    assert!(t.check(&presenting(ID, NEW), NOW_MS).is_ok());
    assert!(t.check(&presenting(ID, OLD), NOW_MS).is_ok());
    let third = "3333333333333333333333333333333333333333333333333333333333333333";
    assert_eq!(
        t.check(&presenting(ID, third), NOW_MS).unwrap_err().failure,
        Failure::WrongSecret
    );
}

#[test]
fn a_secret_file_is_hashed_once_at_build_and_checked_alike() {
    let t = ServiceTokens::build(&settings(vec![TokenSecret::Plain(Secret::new(NEW))], None));
    assert!(t.check(&presenting(ID, NEW), NOW_MS).is_ok());
    assert!(t.check(&presenting(ID, OLD), NOW_MS).is_err());
}

#[test]
fn sec_29_an_expired_token_is_refused_from_its_expiry_on() {
    let at = Duration::from_millis(NOW_MS + 1_000);
    let t = ServiceTokens::build(&settings(vec![hashed(NEW)], Some(at)));
    assert!(t.check(&presenting(ID, NEW), NOW_MS + 999).is_ok());
    let r = t.check(&presenting(ID, NEW), NOW_MS + 1_000).unwrap_err();
    assert_eq!(r.failure, Failure::Expired);
    assert_eq!(r.name(), Some("loadtest"));
    // A wrong secret on an expired token says wrong secret: expiry is not revealed.
    assert_eq!(
        t.check(&presenting(ID, OLD), NOW_MS + 5_000)
            .unwrap_err()
            .failure,
        Failure::WrongSecret
    );
}

#[test]
fn without_a_key_every_token_is_refused() {
    let mut s = settings(vec![hashed(NEW)], None);
    s.key = None;
    let t = ServiceTokens::build(&s);
    assert!(t.check(&presenting(ID, NEW), NOW_MS).is_err());
}

#[test]
fn sec_29_the_check_compares_both_slots_in_constant_time() {
    // One secret fills both slots, so the work is the same with one secret or two.
    let t = ServiceTokens::build(&settings(vec![hashed(NEW)], None));
    let token = t.by_id.get(ID).unwrap();
    assert_eq!(token.hashes[0], token.hashes[1]);
    assert!(token.matches(&hash(&key(), ID, NEW.as_bytes())));
    assert!(!token.matches(&[0; 32]));
}

#[test]
fn use_is_audited_at_most_once_a_minute_per_token() {
    let t = ServiceTokens::build(&settings(vec![hashed(NEW)], None));
    let s = t.check(&presenting(ID, NEW), NOW_MS).unwrap();
    assert!(s.audit_due(NOW_MS));
    assert!(!s.audit_due(NOW_MS + 1));
    assert!(!s.audit_due(NOW_MS + AUDIT_EVERY_MS - 1));
    assert!(s.audit_due(NOW_MS + AUDIT_EVERY_MS));
    let r = t.check(&presenting(ID, OLD), NOW_MS).unwrap_err();
    assert!(r.audit_due(NOW_MS), "refusals have their own slot");
    assert!(!r.audit_due(NOW_MS + 10));
    let stranger = t
        .check(&presenting("ffffffffffffffff", NEW), NOW_MS)
        .unwrap_err();
    assert!(stranger.audit_due(NOW_MS));
    assert!(!stranger.audit_due(NOW_MS + 10));
}

#[test]
fn create_prints_credentials_that_the_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys/service-token.key");
    let random = crate::random::SystemRandom::default();
    let c = create(&path, &random).unwrap();
    assert_eq!(c.client_id.len(), 32);
    assert_eq!(c.secret.expose().len(), 64, "256 bits as hex");
    assert!(!c.secret_hash.contains(c.secret.expose()));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut s = settings(
        vec![TokenSecret::Hash(
            crate::config::parse_service_token_hash(&c.secret_hash).unwrap(),
        )],
        None,
    );
    s.key = Some(Secret::new(text.trim()));
    s.tokens[0].client_id = c.client_id.clone();
    let t = ServiceTokens::build(&s);
    assert!(
        t.check(&presenting(&c.client_id, c.secret.expose()), NOW_MS)
            .is_ok()
    );
    // A second token reuses the key file.
    let again = create(&path, &random).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    assert_ne!(again.secret.expose(), c.secret.expose());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key file is private");
    }
}

#[test]
fn sec_29_rotate_keeps_the_client_id_and_lists_the_old_secret_beside_the_new() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("service-token.key");
    let random = crate::random::SystemRandom::default();
    let first = create(&path, &random).unwrap();
    let old = TokenSecret::Plain(Secret::new(first.secret.expose()));
    let (next, old_hash) = rotate(&path, &first.client_id, &old, &random).unwrap();
    assert_eq!(next.client_id, first.client_id);
    assert_eq!(
        old_hash, first.secret_hash,
        "a secret file's old secret becomes its hash"
    );
    let parse = |h: &str| TokenSecret::Hash(crate::config::parse_service_token_hash(h).unwrap());
    let mut s = settings(vec![parse(&next.secret_hash), parse(&old_hash)], None);
    s.key = Some(Secret::new(std::fs::read_to_string(&path).unwrap().trim()));
    s.tokens[0].client_id = first.client_id.clone();
    let t = ServiceTokens::build(&s);
    assert!(
        t.check(&presenting(&first.client_id, next.secret.expose()), NOW_MS)
            .is_ok()
    );
    assert!(
        t.check(&presenting(&first.client_id, first.secret.expose()), NOW_MS)
            .is_ok()
    );
}
