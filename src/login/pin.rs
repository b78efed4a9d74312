//! The one-time PIN: "Send me a code" files a PIN for every well-formed address and mails it
//! to allowed people only; `POST /.otpgate/code` checks it and logs in.
//!
//! PINs are decimal digits from the CSPRNG without modulo bias (docs/security.md#12), stored
//! only as a keyed digest bound to the login transaction and the address
//! (docs/security.md#15, docs/security.md#18).

use std::time::Duration;

use http::{Request, Response, StatusCode};
use minijinja::context;
use serde::{Deserialize, Serialize};

use super::device::Client;
use super::limits::{Suppressed, key_code, key_index, slow_down};
use super::page::read_form;
use super::tx::{self, LoginTx};
use super::{Flow, LoginError, NO_ACCESS, RESPONSE_FLOOR, one_line};
use crate::audit::Event;
use crate::body::{Body, RequestBody};
use crate::email::Email;
use crate::mailer::OutgoingMail;
use crate::metrics::{CODES, LOGINS};
use crate::policy::LoginMethod;
use crate::random::{Random, RandomError};
use crate::session::KeyRing;
use crate::session::keys::Key;
use crate::state::{CodeRecord, Consume};

impl Flow<'_> {
    /// "Send me a code".
    pub(super) async fn request_code(
        &self,
        tx: &LoginTx,
        email: &Email,
        started: tokio::time::Instant,
    ) -> Result<Response<Body>, LoginError> {
        let request_id = self.request_id();
        self.audit(
            Event::new("code.requested")
                .email(email.as_str())
                .request(&request_id)
                .with("login_method", "onetimepin"),
        );
        self.issue_code(tx, email, &request_id).await?;
        tokio::time::sleep_until(started + RESPONSE_FLOOR).await;
        Ok(self.code_page(tx, email.as_str(), None))
    }

    /// Makes and files a PIN for this transaction whatever the address, so every address
    /// costs the same work (docs/security.md#10); only allowed ones get it by mail, the others
    /// a decoy record no input can match.
    async fn issue_code(
        &self,
        tx: &LoginTx,
        email: &Email,
        request_id: &str,
    ) -> Result<(), LoginError> {
        let Some(idp) = self.site.config.identity_providers.pin.as_ref() else {
            return Err(LoginError::NotFound);
        };
        let client = self.client_for(email.as_str()).await?;
        let over = self.send_limits(email, client).await?;
        let reason = self
            .suppression(email, &tx.rd, LoginMethod::OneTimePin, over, client)
            .await?;
        self.spend(email, client, reason.is_none()).await?;
        let keys = self.svc.sessions.keys();
        let key = keys.current();
        let code = generate(self.svc.random.as_ref(), idp.length)?;
        let payload = Payload {
            email: email.to_string(),
            kid: key.id.clone(),
            decoy: reason.is_some(),
        };
        let record = CodeRecord {
            payload: payload.to_bytes(),
            digest: digest(key, &tx.id, email.as_str(), &code),
            attempts: idp.max_attempts,
        };
        match reason {
            None => {
                self.send_code(tx, (email, client), &code, record, idp.ttl, request_id)
                    .await
            }
            Some(reason) => {
                self.file_decoy(tx, email, record, idp.ttl, reason, request_id)
                    .await
            }
        }
    }

    /// Files the real code, retires this client's older one for the address (other clients'
    /// codes stay: docs/security.md#39) and queues the mail.
    async fn send_code(
        &self,
        tx: &LoginTx,
        (email, client): (&Email, Client),
        code: &str,
        record: CodeRecord,
        ttl: Duration,
        request_id: &str,
    ) -> Result<(), LoginError> {
        let state = self.svc.state;
        state
            .put_code(&key_code(&tx.hex()), record, ttl, true)
            .await?;
        if let Some(old) = state
            .swap(&key_index(email, client), tx.hex().as_bytes(), ttl)
            .await?
        {
            let old = String::from_utf8_lossy(&old).into_owned();
            if old != tx.hex() {
                state.delete(&key_code(&old)).await?;
            }
        }
        let queued = self.mail_pin(email, code, ttl);
        self.audit(
            Event::new("code.sent")
                .email(email.as_str())
                .request(request_id)
                .with("queued", queued),
        );
        ::metrics::counter!(CODES, "app" => self.name().to_owned(), "outcome" => "sent")
            .increment(1);
        Ok(())
    }

    /// Files a decoy for an address that gets no mail, and tells the operator why.
    async fn file_decoy(
        &self,
        tx: &LoginTx,
        email: &Email,
        record: CodeRecord,
        ttl: Duration,
        reason: Suppressed,
        request_id: &str,
    ) -> Result<(), LoginError> {
        // A decoy never replaces a pending real code of this browser.
        let code_key = key_code(&tx.hex());
        self.svc
            .state
            .put_code(&code_key, record, ttl, false)
            .await?;
        self.audit(
            Event::new("code.suppressed")
                .email(email.as_str())
                .request(request_id)
                .with("reason", reason.as_str()),
        );
        ::metrics::counter!(CODES, "app" => self.name().to_owned(), "outcome" => "suppressed", "reason" => reason.as_str())
            .increment(1);
        if self.svc.outbox {
            tracing::info!(app = self.name(), email = %email, reason = reason.as_str(), "no code mailed");
        } else {
            tracing::debug!(app = self.name(), email = %email, reason = reason.as_str(), "no code mailed");
        }
        Ok(())
    }

    /// Queues the PIN mail; the PIN stands alone on its own line of the text part.
    fn mail_pin(&self, email: &Email, code: &str, ttl: Duration) -> bool {
        let ctx = context! { app => self.name(), code, minutes => ttl.as_secs().div_ceil(60) };
        let rendered = (
            self.site.pages.render("pin_subject.txt", ctx.clone()),
            self.site.pages.render("pin.txt", ctx.clone()),
            self.site.pages.render("pin.html", ctx),
        );
        let (Ok(subject), Ok(text), html) = rendered else {
            tracing::error!(app = self.name(), "cannot render the PIN mail");
            return false;
        };
        self.svc.mailer.enqueue(OutgoingMail {
            to: email.clone(),
            subject: one_line(&subject),
            text,
            html: html.ok(),
            kind: "pin",
            app: self.name().to_owned(),
        })
    }

    fn code_page(&self, tx: &LoginTx, email: &str, error: Option<&str>) -> Response<Body> {
        let keys = self.svc.sessions.keys();
        let csrf = tx::csrf_token(&keys, "login", self.name(), &tx.id);
        let (minutes, length) = self
            .site
            .config
            .identity_providers
            .pin
            .as_ref()
            .map_or((10, 6), |p| (p.ttl.as_secs().div_ceil(60), p.length));
        self.site.pages.page(
            StatusCode::OK,
            "code.html",
            context! { app => self.name(), fq => self.form_query(), csrf, email, error, minutes, length, rd => tx.rd.as_str() },
        )
    }

    /// `POST /.otpgate/code`.
    pub(super) async fn verify_code(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<Body>, LoginError> {
        let (parts, body) = req.into_parts();
        let form = read_form(&parts.headers, body).await?;
        let Some(tx) = self.checked_tx(&parts.headers, &form) else {
            return self.expired_form();
        };
        let Some(idp) = self.site.config.identity_providers.pin.as_ref() else {
            return Err(LoginError::NotFound);
        };
        let state = self.svc.state;
        let request_id = self.request_id();
        let code_key = key_code(&tx.hex());
        let typed = form.get("code").map_or("", String::as_str);
        // The address the page was for, echoed on every failure page alike; the address that
        // counts is the one filed with the code.
        let shown = form
            .get("email")
            .and_then(|e| Email::parse(e).ok())
            .map(|e| e.to_string());
        let shown = shown.as_deref();

        // Every submission counts toward the client's limit (docs/security.md#41).
        if self.over_ip().await? {
            return Ok(self.failed(&tx, None, shown, "throttled", &request_id));
        }
        let Some(payload) = state
            .peek_code(&code_key)
            .await?
            .and_then(|b| Payload::from_bytes(&b))
        else {
            return Ok(self.failed(&tx, None, shown, "no_code", &request_id));
        };
        let email = payload.email.clone();
        let client = self.client_for(&email).await?;
        let failures = self.failures(&email).await?;
        if failures.locked && client.is_stranger() {
            self.record_failure(&email, failures, client, true, &request_id)
                .await?;
            return Ok(self.failed(&tx, Some(&email), Some(&email), "locked", &request_id));
        }
        slow_down(failures, client).await;
        let keys = self.svc.sessions.keys();
        let typed_digest = match (
            payload.decoy,
            clean(typed, idp.length),
            key_for(&keys, Some(&payload.kid)),
        ) {
            (false, Some(code), Some(key)) => digest(key, &tx.id, &email, &code),
            // Decoys and malformed input use an attempt like a wrong code.
            _ => crate::random::bytes::<32>(self.svc.random.as_ref())?,
        };
        let reason = match state.consume_code(&code_key, &typed_digest).await? {
            Consume::Accepted(_) => return self.logged_in(&tx, &email, client, &request_id).await,
            Consume::Rejected { left: 0 } => "wrong_code_burnt",
            Consume::Rejected { .. } => "wrong_code",
            // Used, expired or burnt meanwhile: still a failed login on this account.
            Consume::Missing => "no_code",
        };
        self.record_failure(&email, failures, client, false, &request_id)
            .await?;
        Ok(self.failed(&tx, Some(&email), Some(&email), reason, &request_id))
    }

    /// Every failure gets the same page and status (docs/security.md#11), echoing the address
    /// the page was for (`shown`); `email` is the account the failure is about, for the log.
    fn failed(
        &self,
        tx: &LoginTx,
        email: Option<&str>,
        shown: Option<&str>,
        reason: &str,
        request_id: &str,
    ) -> Response<Body> {
        let mut e = Event::new("login.failed")
            .request(request_id)
            .with("reason", reason)
            .with("login_method", "onetimepin");
        if let Some(email) = email {
            e = e.email(email);
        }
        self.audit(e);
        ::metrics::counter!(LOGINS, "app" => self.name().to_owned(), "method" => "onetimepin", "outcome" => "failure").increment(1);
        self.code_page(tx, shown.or(email).unwrap_or(""), Some(NO_ACCESS))
    }

    /// A correct code: a new session (docs/security.md#32) and a 303 to the re-validated
    /// target.
    async fn logged_in(
        &self,
        tx: &LoginTx,
        email: &str,
        client: Client,
        request_id: &str,
    ) -> Result<Response<Body>, LoginError> {
        let Ok(email) = Email::parse(email) else {
            return Ok(self.failed(tx, None, None, "invalid_record", request_id));
        };
        if !self.would_allow(&email, &tx.rd, LoginMethod::OneTimePin) {
            let e = Some(email.as_str());
            return Ok(self.failed(tx, e, e, "policy", request_id));
        }
        self.svc.store.reset_failures(email.as_str()).await?;
        self.svc.state.delete(&key_index(&email, client)).await?;
        self.start_session(&email, LoginMethod::OneTimePin, &tx.rd, request_id)
            .await
    }
}

/// A PIN of `digits` decimal digits (6 to 10), uniformly distributed.
pub(crate) fn generate(random: &dyn Random, digits: u32) -> Result<String, RandomError> {
    let space = 10u64.pow(digits.clamp(1, 19));
    // Rejection sampling: values above the largest multiple of `space` would bias low digits.
    let limit = u64::MAX - (u64::MAX % space);
    loop {
        let v = u64::from_be_bytes(crate::random::bytes::<8>(random)?);
        if v < limit {
            return Ok(format!("{:0width$}", v % space, width = digits as usize));
        }
    }
}

/// The digest stored for a PIN: HMAC under the key, over the transaction, address and PIN.
pub(crate) fn digest(key: &Key, tx: &[u8; 16], email: &str, pin: &str) -> [u8; 32] {
    key.mac("pin", &[tx, email.as_bytes(), pin.as_bytes()])
}

/// What is filed with a PIN's digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Payload {
    /// The address the PIN went to (the identity it proves).
    pub email: String,
    /// The key that made the digest.
    pub kid: String,
    /// Nothing was mailed (blocked, unknown, throttled or locked): no input can succeed.
    pub decoy: bool,
}

impl Payload {
    /// As stored.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// From storage.
    pub(crate) fn from_bytes(b: &[u8]) -> Option<Self> {
        serde_json::from_slice(b).ok()
    }
}

/// A typed code, cleaned of the spaces people paste; `None` if it cannot be a PIN.
pub(crate) fn clean(input: &str, digits: u32) -> Option<String> {
    let c: String = input
        .chars()
        .filter(|ch| !ch.is_whitespace() && *ch != '-')
        .collect();
    (c.len() == digits as usize && c.bytes().all(|b| b.is_ascii_digit())).then_some(c)
}

/// The key a digest was made with (still in the ring), or the current one for a new digest.
pub(crate) fn key_for<'k>(keys: &'k KeyRing, kid: Option<&str>) -> Option<&'k Key> {
    match kid {
        Some(id) => keys.get(id),
        None => Some(keys.current()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SystemRandom;

    #[test]
    fn sec_12_pins_are_the_configured_number_of_csprng_digits() {
        let r = SystemRandom::default();
        for digits in [6, 8, 10] {
            for _ in 0..200 {
                let p = generate(&r, digits).unwrap();
                assert_eq!(p.len(), digits as usize);
                assert!(p.bytes().all(|b| b.is_ascii_digit()));
            }
        }
    }

    #[test]
    fn pins_are_roughly_uniform() {
        // Leading-digit histogram over 20 000 draws: each digit near 2 000 (no bias towards 0).
        let r = SystemRandom::default();
        let mut counts = [0u32; 10];
        for _ in 0..20_000 {
            let p = generate(&r, 6).unwrap();
            counts[usize::from(p.as_bytes()[0] - b'0')] += 1;
        }
        for c in counts {
            assert!((1_700..2_300).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn sec_15_digests_bind_transaction_address_and_key() {
        let keys = KeyRing::from_secrets(&[("k1", [1; 32]), ("k2", [2; 32])]).unwrap();
        let k1 = keys.get("k1").unwrap();
        let base = digest(k1, &[1; 16], "a@b.example", "123456");
        assert_ne!(
            base,
            digest(k1, &[2; 16], "a@b.example", "123456"),
            "other browser"
        );
        assert_ne!(
            base,
            digest(k1, &[1; 16], "c@b.example", "123456"),
            "other address"
        );
        assert_ne!(
            base,
            digest(k1, &[1; 16], "a@b.example", "123457"),
            "other PIN"
        );
        assert_ne!(
            base,
            digest(keys.get("k2").unwrap(), &[1; 16], "a@b.example", "123456"),
            "other key"
        );
    }

    #[test]
    fn cleaning_typed_codes() {
        assert_eq!(clean(" 123 456 ", 6).as_deref(), Some("123456"));
        assert_eq!(clean("123-456", 6).as_deref(), Some("123456"));
        assert_eq!(clean("12345", 6), None);
        assert_eq!(clean("12345a", 6), None);
        assert_eq!(clean("１２３４５６", 6), None);
    }

    #[test]
    fn payload_round_trip() {
        let p = Payload {
            email: "a@b.example".into(),
            kid: "k1".into(),
            decoy: false,
        };
        assert_eq!(Payload::from_bytes(&p.to_bytes()), Some(p));
        assert_eq!(Payload::from_bytes(b"junk"), None);
    }
}
