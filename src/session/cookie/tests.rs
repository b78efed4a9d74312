//! The cookie format's unit tests: round trips, tampering, keys, kinds, expiry, families.

use super::*;
use crate::random::SystemRandom;

const HOUR: u64 = 3_600_000;
const NOW: u64 = 1_800_000_000_000;

fn ring(id: &str, byte: u8) -> KeyRing {
    KeyRing::from_secrets(&[(id, [byte; 32])]).unwrap()
}

fn claims() -> Claims {
    Claims {
        kind: TokenKind::Session,
        id: SessionId([7; 16]),
        app: "wiki".into(),
        email: Email::parse("alice@corp.example").unwrap(),
        method: LoginMethod::OneTimePin,
        issued_ms: NOW,
        expires_ms: NOW + 24 * HOUR,
        refreshed_ms: NOW,
        family: None,
    }
}

#[test]
fn the_family_travels_sealed_and_old_values_still_open() {
    let keys = ring("k1", 1);
    let mut c = claims();
    c.family = Some(SessionId([9; 16]));
    let v = seal(&c, &keys, &SystemRandom::default()).unwrap();
    assert_eq!(
        open(&v, TokenKind::Session, "wiki", &keys, NOW, None),
        Ok(c)
    );
    // A value of the layout before families (no section after the address) opens as one
    // without a family.
    let old = sealed(&keys);
    assert_eq!(
        open(&old, TokenKind::Session, "wiki", &keys, NOW, None).map(|c| c.family),
        Ok(None)
    );
    // A section of the wrong length or tag is refused, not read.
    let mut body = Vec::new();
    body.push(TokenKind::Session as u8);
    body.extend_from_slice(&[7; 16]);
    for t in [NOW, NOW + HOUR, NOW] {
        body.extend_from_slice(&t.to_be_bytes());
    }
    body.extend_from_slice(&[1, 4]);
    body.extend_from_slice(b"wiki");
    body.push(11);
    body.extend_from_slice(b"a@b.example");
    let good = {
        let mut b = body.clone();
        b.push(FAMILY_TAG);
        b.extend_from_slice(&[3; 16]);
        b
    };
    let v = seal_bytes(
        TokenKind::Session,
        "wiki",
        &good,
        &keys,
        &SystemRandom::default(),
    )
    .unwrap();
    assert!(open(&v, TokenKind::Session, "wiki", &keys, NOW, None).is_ok());
    body.extend_from_slice(&[FAMILY_TAG, 1, 2]);
    let bad = seal_bytes(
        TokenKind::Session,
        "wiki",
        &body,
        &keys,
        &SystemRandom::default(),
    )
    .unwrap();
    assert_eq!(
        open(&bad, TokenKind::Session, "wiki", &keys, NOW, None),
        Err(OpenError::Forged)
    );
}

fn sealed(keys: &KeyRing) -> String {
    seal(&claims(), keys, &SystemRandom::default()).unwrap()
}

#[test]
fn round_trip() {
    let keys = ring("k1", 1);
    let v = sealed(&keys);
    assert!(v.starts_with("v1.k1."));
    assert_eq!(
        open(&v, TokenKind::Session, "wiki", &keys, NOW + HOUR, None),
        Ok(claims())
    );
}

#[test]
fn sec_28_value_carries_no_cleartext_identity_and_is_small() {
    let keys = ring("k1", 1);
    let mut c = claims();
    c.email = Email::parse(&format!("{}@{}.example", "a".repeat(64), "b".repeat(60))).unwrap();
    let v = seal(&c, &keys, &SystemRandom::default()).unwrap();
    assert!(!v.contains("alice") && !v.contains("corp") && !v.contains("wiki"));
    assert!(v.len() < 600, "{}", v.len());
    // Same claims, different nonce: values never repeat.
    assert_ne!(sealed(&keys), sealed(&keys));
}

#[test]
fn sec_29_tampering_anywhere_is_refused() {
    let keys = ring("k1", 1);
    let v = sealed(&keys);
    let data_start = "v1.k1.".len();
    for i in data_start..v.len() {
        let mut b = v.clone().into_bytes();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        let t = String::from_utf8(b).unwrap();
        assert!(
            open(&t, TokenKind::Session, "wiki", &keys, NOW, None).is_err(),
            "flip at {i} accepted"
        );
    }
}

#[test]
fn sec_29_truncation_and_garbage_are_refused() {
    let keys = ring("k1", 1);
    let v = sealed(&keys);
    for n in 0..v.len() {
        assert!(
            open(&v[..n], TokenKind::Session, "wiki", &keys, NOW, None).is_err(),
            "prefix {n} accepted"
        );
    }
    for bad in [
        "",
        "v1.",
        "v1.k1.",
        "v1.k1.!!!",
        "v2.k1.AAAA",
        "v1.k1",
        "garbage",
        "v1.k1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        assert!(
            open(bad, TokenKind::Session, "wiki", &keys, NOW, None).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn sec_29_oversized_input_is_refused_before_decoding() {
    let keys = ring("k1", 1);
    let huge = format!("v1.k1.{}", "A".repeat(MAX_VALUE_LEN));
    assert_eq!(
        open(&huge, TokenKind::Session, "wiki", &keys, NOW, None),
        Err(OpenError::TooLong)
    );
    // Not even valid base64 past the limit: the length check comes first.
    let junk = format!("v1.k1.{}", "!".repeat(MAX_VALUE_LEN));
    assert_eq!(
        open(&junk, TokenKind::Session, "wiki", &keys, NOW, None),
        Err(OpenError::TooLong)
    );
}

#[test]
fn sec_29_wrong_key_id_and_other_key_are_refused() {
    let keys = ring("k1", 1);
    let v = sealed(&keys);
    assert_eq!(
        open(&v, TokenKind::Session, "wiki", &ring("k2", 1), NOW, None),
        Err(OpenError::UnknownKey)
    );
    // Same id, different secret.
    assert_eq!(
        open(&v, TokenKind::Session, "wiki", &ring("k1", 2), NOW, None),
        Err(OpenError::Forged)
    );
    // A value relabelled with another id of the ring.
    let both = KeyRing::from_secrets(&[("k1", [1; 32]), ("k2", [2; 32])]).unwrap();
    let relabelled = v.replacen("v1.k1.", "v1.k2.", 1);
    assert_eq!(
        open(&relabelled, TokenKind::Session, "wiki", &both, NOW, None),
        Err(OpenError::Forged)
    );
}

#[test]
fn rotation_keeps_old_values_valid() {
    let old = ring("k1", 1);
    let v = sealed(&old);
    let rotated = KeyRing::from_secrets(&[("k2", [2; 32]), ("k1", [1; 32])]).unwrap();
    assert!(open(&v, TokenKind::Session, "wiki", &rotated, NOW, None).is_ok());
    assert!(sealed(&rotated).starts_with("v1.k2."));
}

#[test]
fn sec_33_a_session_for_one_app_is_worthless_on_another() {
    let keys = ring("k1", 1);
    let v = sealed(&keys);
    assert_eq!(
        open(&v, TokenKind::Session, "app", &keys, NOW, None),
        Err(OpenError::Forged)
    );
}

#[test]
fn sec_29_other_token_types_are_not_sessions() {
    let keys = ring("k1", 1);
    let mut c = claims();
    c.kind = TokenKind::Restricted;
    let v = seal(&c, &keys, &SystemRandom::default()).unwrap();
    assert_eq!(
        open(&v, TokenKind::Session, "wiki", &keys, NOW, None),
        Err(OpenError::Forged)
    );
    assert!(open(&v, TokenKind::Restricted, "wiki", &keys, NOW, None).is_ok());
}

#[test]
fn sec_30_expiry_idle_and_skew_are_enforced_with_an_injected_clock() {
    let keys = ring("k1", 1);
    let v = sealed(&keys);
    let exp = NOW + 24 * HOUR;
    assert!(open(&v, TokenKind::Session, "wiki", &keys, exp, None).is_ok());
    assert!(open(&v, TokenKind::Session, "wiki", &keys, exp + SKEW_MS, None).is_ok());
    assert_eq!(
        open(
            &v,
            TokenKind::Session,
            "wiki",
            &keys,
            exp + SKEW_MS + 1,
            None
        ),
        Err(OpenError::Expired)
    );
    // Idle: refreshed at NOW, idle limit 1 h.
    assert!(
        open(
            &v,
            TokenKind::Session,
            "wiki",
            &keys,
            NOW + HOUR,
            Some(HOUR)
        )
        .is_ok()
    );
    assert_eq!(
        open(
            &v,
            TokenKind::Session,
            "wiki",
            &keys,
            NOW + HOUR + SKEW_MS + 1,
            Some(HOUR)
        ),
        Err(OpenError::Expired)
    );
    // A clock far behind the issuer's: refused beyond the tolerated skew.
    assert_eq!(
        open(
            &v,
            TokenKind::Session,
            "wiki",
            &keys,
            NOW - SKEW_MS - 1,
            None
        ),
        Err(OpenError::NotYetValid)
    );
    const { assert!(SKEW_MS <= 60_000) };
}
