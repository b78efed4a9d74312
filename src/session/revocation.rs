//! The in-memory view of revocations that every request checks without I/O. It is filled from
//! the credentials store at start and kept current by polling it (so a `sessions revoke` from
//! the command line or another replica takes effect within the poll interval). With the state
//! on Redis every revocation is also published on [`CHANNEL`] and applied by every replica as
//! it arrives (typically within milliseconds); the poll, and a periodic full re-read, stay as
//! the fallback for a message lost to a disconnected subscriber.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use dashmap::DashMap;

use super::cookie::{Claims, SessionId};
use crate::state::State;
use crate::store::{Revocation, RevocationKind};

/// How often the store is polled for new revocations.
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
/// How often every live revocation is read again, whatever the poll saw: a row committed out
/// of sequence order, or a message lost, cannot keep a revoked session alive beyond this.
pub const RESYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
/// The channel revocations are pushed on (the state's Redis). A message is the record the
/// store holds, without its sequence number: a session id or an address, and two instants;
/// nothing that opens a session.
pub const CHANNEL: &str = "otpgate:revocations";

/// The message announcing `r` on [`CHANNEL`].
pub fn message(r: &Revocation) -> Vec<u8> {
    serde_json::json!({
        "kind": r.kind.as_str(),
        "subject": r.subject,
        "not_before_ms": r.not_before_ms,
        "expires_ms": r.expires_ms,
    })
    .to_string()
    .into_bytes()
}

/// The revocation a message announces, if it is one. Its sequence number is 0: a pushed
/// record does not move the poll's place in the store, which may not have it yet.
pub fn parse_message(bytes: &[u8]) -> Option<Revocation> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let kind = match v.get("kind")?.as_str()? {
        "session" => RevocationKind::Session,
        "user" => RevocationKind::User,
        "family" => RevocationKind::Family,
        _ => return None,
    };
    let subject = v.get("subject")?.as_str()?;
    if kind != RevocationKind::User && SessionId::from_hex(subject).is_none() {
        return None;
    }
    Some(Revocation {
        seq: 0,
        kind,
        subject: subject.to_owned(),
        not_before_ms: v.get("not_before_ms")?.as_u64()?,
        expires_ms: v.get("expires_ms")?.as_u64()?,
    })
}

/// Tells every replica sharing `state` about revocations just stored. A failure is logged and
/// otherwise ignored: the revocation is stored, and replicas read it from the store within
/// [`POLL_INTERVAL`] anyway.
pub async fn announce(state: &State, rows: &[Revocation]) {
    if !state.is_shared() {
        return;
    }
    for r in rows {
        let m = message(r);
        // Once more after a failure: the first call after Redis came back finds the old
        // connection dropped, and the retry the new one.
        let sent = match state.publish(CHANNEL, &m).await {
            Ok(_) => Ok(()),
            Err(_) => state.publish(CHANNEL, &m).await.map(drop),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e,
                "cannot push a revocation to the other replicas; those sharing the credentials store read it within {}s",
                POLL_INTERVAL.as_secs());
            return;
        }
    }
}

/// Revoked sessions and per-user cut-offs.
#[derive(Debug, Default)]
pub struct Revocations {
    sessions: DashMap<SessionId, u64>,
    /// Revoked portal sessions: they and every session handed off from them.
    families: DashMap<SessionId, u64>,
    users: DashMap<String, u64>,
    any: AtomicBool,
    seq: AtomicI64,
}

impl Revocations {
    /// Whether a session is revoked.
    pub fn is_revoked(&self, c: &Claims) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        self.sessions.contains_key(&c.id)
            || self.families.contains_key(&c.id)
            || c.family.is_some_and(|f| self.families.contains_key(&f))
            || self
                .users
                .get(c.email.as_str())
                .is_some_and(|cut| c.issued_ms < *cut)
    }

    /// Takes in revocations read from the store.
    pub fn apply(&self, rows: &[Revocation]) {
        for r in rows {
            match r.kind {
                RevocationKind::Session => {
                    if let Some(id) = SessionId::from_hex(&r.subject) {
                        self.sessions.insert(id, r.expires_ms);
                    }
                }
                RevocationKind::Family => {
                    if let Some(id) = SessionId::from_hex(&r.subject) {
                        self.families.insert(id, r.expires_ms);
                    }
                }
                RevocationKind::User => {
                    let mut cut = self.users.entry(r.subject.clone()).or_insert(0);
                    *cut = (*cut).max(r.not_before_ms);
                }
            }
            self.seq.fetch_max(r.seq, Ordering::AcqRel);
        }
        if !rows.is_empty() {
            self.any.store(true, Ordering::Release);
        }
    }

    /// Records a revocation made by this process (visible at once, before the next poll).
    pub fn revoke_session(&self, id: SessionId, expires_ms: u64) {
        self.sessions.insert(id, expires_ms);
        self.any.store(true, Ordering::Release);
    }

    /// Records a family revocation made by this process (visible at once).
    pub fn revoke_family(&self, id: SessionId, expires_ms: u64) {
        self.families.insert(id, expires_ms);
        self.any.store(true, Ordering::Release);
    }

    /// Whether the family of the portal session `id` has been revoked.
    pub fn is_family_revoked(&self, id: &SessionId) -> bool {
        self.any.load(Ordering::Acquire) && self.families.contains_key(id)
    }

    /// The last store sequence number seen.
    pub fn last_seq(&self) -> i64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Forgets entries that can no longer match a live session.
    pub fn prune(&self, now_ms: u64, max_session_ms: u64) {
        self.sessions
            .retain(|_, exp| *exp + super::cookie::SKEW_MS >= now_ms);
        self.families
            .retain(|_, exp| *exp + super::cookie::SKEW_MS >= now_ms);
        self.users.retain(|_, cut| {
            cut.saturating_add(max_session_ms)
                .saturating_add(super::cookie::SKEW_MS)
                >= now_ms
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::email::Email;
    use crate::policy::LoginMethod;
    use crate::session::cookie::TokenKind;

    fn claims(id: u8, email: &str, issued_ms: u64) -> Claims {
        Claims {
            kind: TokenKind::Session,
            id: SessionId([id; 16]),
            app: "a".into(),
            email: Email::parse(email).unwrap(),
            method: LoginMethod::OneTimePin,
            issued_ms,
            expires_ms: issued_ms + 1_000_000,
            refreshed_ms: issued_ms,
            family: None,
        }
    }

    #[test]
    fn sec_47_a_family_revocation_ends_the_portal_session_and_its_hand_offs() {
        let r = Revocations::default();
        let portal = claims(1, "a@x.example", 1_000);
        let mut handed = claims(2, "a@x.example", 2_000);
        handed.family = Some(portal.id);
        let mut other = claims(3, "a@x.example", 2_000);
        other.family = Some(SessionId([9; 16]));
        let alone = claims(4, "a@x.example", 2_000);
        r.apply(&[Revocation {
            seq: 7,
            kind: RevocationKind::Family,
            subject: portal.id.hex(),
            not_before_ms: 0,
            expires_ms: 2_000_000,
        }]);
        assert!(r.is_revoked(&portal));
        assert!(r.is_revoked(&handed));
        assert!(r.is_family_revoked(&portal.id));
        assert!(!r.is_revoked(&other), "another family lives on");
        assert!(
            !r.is_revoked(&alone),
            "a session of a login on the app lives on"
        );
    }

    #[test]
    fn session_and_user_revocations() {
        let r = Revocations::default();
        let c1 = claims(1, "a@x.example", 1_000);
        let c2 = claims(2, "a@x.example", 5_000);
        let c3 = claims(3, "b@x.example", 1_000);
        assert!(!r.is_revoked(&c1));
        r.apply(&[
            Revocation {
                seq: 1,
                kind: RevocationKind::Session,
                subject: c3.id.hex(),
                not_before_ms: 0,
                expires_ms: 2_000_000,
            },
            Revocation {
                seq: 2,
                kind: RevocationKind::User,
                subject: "a@x.example".into(),
                not_before_ms: 3_000,
                expires_ms: 9_000_000,
            },
        ]);
        assert!(r.is_revoked(&c1), "issued before the cut-off");
        assert!(
            !r.is_revoked(&c2),
            "issued after the cut-off: a fresh login works"
        );
        assert!(r.is_revoked(&c3));
        assert_eq!(r.last_seq(), 2);
        r.prune(10_000_000_000, 1_000);
        assert!(!r.is_revoked(&c1));
    }

    #[test]
    fn messages_carry_the_record_without_its_place_in_the_store() {
        let rows = [
            Revocation {
                seq: 7,
                kind: RevocationKind::Session,
                subject: SessionId([9; 16]).hex(),
                not_before_ms: 0,
                expires_ms: 2_000_000,
            },
            Revocation {
                seq: 8,
                kind: RevocationKind::User,
                subject: "a@x.example".into(),
                not_before_ms: 3_000,
                expires_ms: 9_000_000,
            },
            Revocation {
                seq: 9,
                kind: RevocationKind::Family,
                subject: SessionId([4; 16]).hex(),
                not_before_ms: 0,
                expires_ms: 2_000_000,
            },
        ];
        for r in &rows {
            let back = parse_message(&message(r)).unwrap();
            assert_eq!(
                back,
                Revocation {
                    seq: 0,
                    ..r.clone()
                }
            );
        }
        let cache = Revocations::default();
        cache.apply(&[parse_message(&message(&rows[0])).unwrap()]);
        assert!(cache.is_revoked(&claims(9, "b@x.example", 1_000)));
        assert_eq!(
            cache.last_seq(),
            0,
            "the poll still reads from where it was"
        );
        for bad in [
            &b"not json"[..],
            br#"{"kind":"session","subject":"zz","not_before_ms":0,"expires_ms":1}"#,
            br#"{"kind":"family","subject":"a@x.example","not_before_ms":0,"expires_ms":1}"#,
            br#"{"kind":"other","subject":"a@x.example","not_before_ms":0,"expires_ms":1}"#,
            br#"{"kind":"user","subject":"a@x.example","expires_ms":1}"#,
        ] {
            assert_eq!(parse_message(bad), None);
        }
    }
}
