//! The cache of opened cookies: hits, what is still checked on a hit, keys, tampering, the
//! bound.

use std::time::Duration;

use http::HeaderMap;
use http::header::{COOKIE, HeaderValue};

use super::*;
use crate::email::Email;
use crate::policy::LoginMethod;
use crate::session::cookie::{OpenError, SKEW_MS};
use crate::session::{COOKIE_PLAIN, Claims, SessionError, Sessions};
use crate::store::{Revocation, RevocationKind};

const NOW: u64 = 1_800_000_000_000;
const HOUR: u64 = 3_600_000;

fn ring(secrets: &[(&str, u8)]) -> KeyRing {
    let s: Vec<(&str, [u8; 32])> = secrets.iter().map(|(id, b)| (*id, [*b; 32])).collect();
    KeyRing::from_secrets(&s).unwrap()
}

fn sessions() -> Sessions {
    Sessions::new(ring(&[("k1", 1)]), crate::random::system())
}

/// A session for `wiki` issued at `NOW`, valid for an hour: its claims and cookie value.
fn issue(s: &Sessions, kind: TokenKind) -> (Claims, String) {
    s.issue(
        kind,
        "wiki",
        Email::parse("alice@corp.example").unwrap(),
        LoginMethod::OneTimePin,
        Duration::from_secs(3600),
        NOW,
    )
    .unwrap()
}

fn cookie(value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(COOKIE, format!("{COOKIE_PLAIN}={value}").parse().unwrap());
    h
}

fn at(s: &Sessions, value: &str, now: u64, idle: Option<u64>) -> Result<Claims, SessionError> {
    s.from_headers(
        &cookie(value),
        COOKIE_PLAIN,
        "wiki",
        now,
        idle.map(Duration::from_millis),
    )
}

#[test]
fn a_hit_returns_the_same_claims_without_opening_again() {
    let s = sessions();
    let (claims, v) = issue(&s, TokenKind::Session);
    assert_eq!(s.opened.len(), 0);
    let first = s
        .from_headers_shared(&cookie(&v), COOKIE_PLAIN, "wiki", NOW + 1, None)
        .unwrap();
    assert_eq!(*first.claims, claims);
    assert_eq!(s.opened.len(), 1);
    let second = s
        .from_headers_shared(&cookie(&v), COOKIE_PLAIN, "wiki", NOW + 2, None)
        .unwrap();
    assert!(
        Arc::ptr_eq(&first.claims, &second.claims),
        "the second request was a hit"
    );
    assert_eq!(at(&s, &v, NOW + 3, None), Ok(claims));
    assert_eq!(s.opened.len(), 1);
}

/// The email identity header is made once per opened cookie: on a miss and on every hit it
/// is the address the cookie carries, byte for byte, and nothing else (docs/product.md#s4).
#[test]
fn the_email_header_is_the_address_on_a_miss_and_on_a_hit() {
    let s = sessions();
    let (claims, v) = issue(&s, TokenKind::Session);
    let want = HeaderValue::from_str(claims.email.as_str()).unwrap();
    for now in [NOW + 1, NOW + 2, NOW + 3] {
        let got = s
            .from_headers_shared(&cookie(&v), COOKIE_PLAIN, "wiki", now, None)
            .unwrap();
        assert_eq!(got.email_header, want);
        assert_eq!(
            got.email_header.as_bytes(),
            claims.email.as_str().as_bytes()
        );
        assert!(!got.email_header.is_sensitive());
    }
    assert_eq!(s.opened.len(), 1);
}

#[test]
fn sec_30_a_cached_cookie_still_expires_and_idles_out() {
    let s = sessions();
    let (_, v) = issue(&s, TokenKind::Session);
    assert!(at(&s, &v, NOW, Some(HOUR)).is_ok());
    assert_eq!(s.opened.len(), 1);
    let expired = Err(SessionError::Invalid(OpenError::Expired));
    // Past the absolute expiry (one hour, plus the tolerated skew).
    assert_eq!(at(&s, &v, NOW + HOUR + SKEW_MS + 1, None), expired);
    // Idle too long, well before the expiry.
    let idle = 10 * 60_000;
    assert_eq!(at(&s, &v, NOW + idle + SKEW_MS + 1, Some(idle)), expired);
    // A clock far behind the issuer's.
    assert_eq!(
        at(&s, &v, NOW - SKEW_MS - 1, None),
        Err(SessionError::Invalid(OpenError::NotYetValid))
    );
    // The entry is still there and still serves while the time allows it.
    assert_eq!(s.opened.len(), 1);
    assert!(at(&s, &v, NOW + HOUR, Some(HOUR)).is_ok());
}

#[test]
fn sec_31_a_cached_cookie_of_a_revoked_session_or_user_is_refused() {
    let s = sessions();
    let (claims, v) = issue(&s, TokenKind::Session);
    assert!(at(&s, &v, NOW, None).is_ok());
    s.revocations().revoke_session(claims.id(), NOW + HOUR);
    assert_eq!(at(&s, &v, NOW + 1, None), Err(SessionError::Revoked));

    let s = sessions();
    let (_, v) = issue(&s, TokenKind::Session);
    assert!(at(&s, &v, NOW, None).is_ok());
    s.revocations().apply(&[Revocation {
        seq: 1,
        kind: RevocationKind::User,
        subject: "alice@corp.example".into(),
        not_before_ms: NOW + 1,
        expires_ms: NOW + HOUR,
    }]);
    assert_eq!(at(&s, &v, NOW + 2, None), Err(SessionError::Revoked));
}

#[test]
fn sec_29_cookies_that_do_not_open_or_are_refused_are_not_cached() {
    let s = sessions();
    let (claims, v) = issue(&s, TokenKind::Session);
    assert!(
        at(
            &s,
            "v1.k1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            NOW,
            None
        )
        .is_err()
    );
    assert!(at(&s, &v, NOW + 2 * HOUR, None).is_err(), "expired");
    s.revocations().revoke_session(claims.id(), NOW + HOUR);
    assert_eq!(at(&s, &v, NOW, None), Err(SessionError::Revoked));
    assert_eq!(s.opened.len(), 0);
}

#[test]
fn sec_29_a_key_change_clears_the_cache_and_retired_keys_end_cached_sessions() {
    let s = sessions();
    let (_, v) = issue(&s, TokenKind::Session);
    assert!(at(&s, &v, NOW, None).is_ok());
    assert_eq!(s.opened.len(), 1);
    // A rotation that keeps k1: cleared, and the cookie opens again the long way.
    s.replace_keys(ring(&[("k2", 2), ("k1", 1)]));
    assert_eq!(s.opened.len(), 0);
    assert!(at(&s, &v, NOW, None).is_ok());
    assert_eq!(s.opened.len(), 1);
    // k1 retired: the cached cookie stops opening at once.
    s.replace_keys(ring(&[("k2", 2)]));
    assert_eq!(s.opened.len(), 0);
    assert_eq!(
        at(&s, &v, NOW, None),
        Err(SessionError::Invalid(OpenError::UnknownKey))
    );
    // k1 back under the same id with another secret: still refused.
    s.replace_keys(ring(&[("k1", 9)]));
    assert_eq!(
        at(&s, &v, NOW, None),
        Err(SessionError::Invalid(OpenError::Forged))
    );
}

#[test]
fn sec_29_an_entry_serves_only_the_ring_that_opened_it() {
    let (old, new) = (Arc::new(ring(&[("k1", 1)])), Arc::new(ring(&[("k1", 1)])));
    let c = Accepted::new(Arc::new(issue(&sessions(), TokenKind::Session).0));
    let v = "v1.k1.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let opened = Opened::default();
    opened.insert(v, &old, &c);
    assert!(opened.get(v, TokenKind::Session, "wiki", &old).is_some());
    assert!(opened.get(v, TokenKind::Session, "wiki", &new).is_none());
    // The old ring's entry gives way to the new ring's before any other.
    opened.insert(v, &new, &c);
    assert_eq!(opened.len(), 1);
    assert!(opened.get(v, TokenKind::Session, "wiki", &new).is_some());
}

#[test]
fn sec_29_a_tampered_cookie_is_never_served_from_the_cache() {
    let s = sessions();
    let (_, v) = issue(&s, TokenKind::Session);
    assert!(at(&s, &v, NOW, None).is_ok());
    // Every single-character change, the tail (the set) kept or not, and the value cut short
    // or lengthened, with the genuine value cached.
    for i in "v1.k1.".len()..v.len() {
        let mut b = v.clone().into_bytes();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        let t = String::from_utf8(b).unwrap();
        assert!(at(&s, &t, NOW, None).is_err(), "flip at {i} accepted");
    }
    let tail = &v[v.len() - TAIL..];
    for t in [
        format!("x{v}"),
        format!("{}{tail}", &v[..v.len() - TAIL - 1]),
        format!("v1.k1.{tail}"),
        v[1..].to_owned(),
    ] {
        assert!(at(&s, &t, NOW, None).is_err(), "{t} accepted");
    }
    assert_eq!(s.opened.len(), 1, "only the genuine value is cached");
    assert!(at(&s, &v, NOW, None).is_ok());
}

#[test]
fn sec_33_a_cached_cookie_opens_only_its_own_app_and_kind() {
    let s = sessions();
    let (_, v) = issue(&s, TokenKind::Session);
    assert!(at(&s, &v, NOW, None).is_ok());
    let h = cookie(&v);
    assert_eq!(
        s.from_headers(&h, COOKIE_PLAIN, "other", NOW, None),
        Err(SessionError::Invalid(OpenError::Forged))
    );
    assert_eq!(
        s.of_kind(&h, TokenKind::Restricted, COOKIE_PLAIN, "wiki", NOW, None),
        Err(SessionError::Invalid(OpenError::Forged))
    );
    // And the other way round: a cached restricted session is no session.
    let (_, r) = issue(&s, TokenKind::Restricted);
    let h = cookie(&r);
    assert!(
        s.of_kind(&h, TokenKind::Restricted, COOKIE_PLAIN, "wiki", NOW, None)
            .is_ok()
    );
    assert_eq!(
        s.from_headers(&h, COOKIE_PLAIN, "wiki", NOW, None),
        Err(SessionError::Invalid(OpenError::Forged))
    );
}

fn value(i: usize, tail: &str) -> String {
    format!("v1.k1.{i:08}{tail}")
}

#[test]
fn the_bound_holds_and_a_full_set_evicts_in_turn() {
    let keys = Arc::new(ring(&[("k1", 1)]));
    let c = Accepted::new(Arc::new(issue(&sessions(), TokenKind::Session).0));
    let opened = Opened::default();
    // Distinct tails: spread over the sets, never more than the capacity.
    for i in 0..3 * SETS * WAYS {
        opened.insert(&value(i, &format!("{i:016x}")), &keys, &c);
    }
    assert!(opened.len() <= SETS * WAYS, "{}", opened.len());
    assert!(opened.len() > SETS * WAYS / 2, "{}", opened.len());
    // One tail: one set, which keeps the last WAYS values.
    let opened = Opened::default();
    let tail = "ABCDEFGHIJKLMNOP";
    for i in 0..WAYS + 2 {
        opened.insert(&value(i, tail), &keys, &c);
    }
    assert_eq!(opened.len(), WAYS);
    let hits: Vec<bool> = (0..WAYS + 2)
        .map(|i| {
            opened
                .get(&value(i, tail), TokenKind::Session, "wiki", &keys)
                .is_some()
        })
        .collect();
    assert_eq!(hits, [false, false, true, true, true, true]);
    // Inserting a value already held replaces it in place.
    opened.insert(&value(5, tail), &keys, &c);
    assert_eq!(opened.len(), WAYS);
    // Too short to be a sealed value: never held.
    opened.insert("v1.k1.abc", &keys, &c);
    assert!(
        opened
            .get("v1.k1.abc", TokenKind::Session, "wiki", &keys)
            .is_none()
    );
}

#[test]
fn concurrent_requests_share_the_cache() {
    let s = Arc::new(sessions());
    let values: Vec<String> = (0..8).map(|_| issue(&s, TokenKind::Session).1).collect();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (s, values) = (&s, &values);
            scope.spawn(move || {
                for i in 0..500 {
                    let v = &values[(i + t) % values.len()];
                    assert!(at(s, v, NOW + 1, None).is_ok());
                }
            });
        }
    });
    assert_eq!(s.opened.len(), values.len());
}

#[test]
fn same_compares_every_byte_and_the_length() {
    let a = b"v1.k1.0123456789abcdefghijklmnopqrstuvwxyz";
    assert!(same(a, a));
    for i in 0..a.len() {
        let mut b = *a;
        b[i] ^= 1;
        assert!(!same(a, &b), "difference at {i} missed");
    }
    assert!(!same(a, &a[..a.len() - 1]));
    assert!(same(b"", b""));
}
