//! Hand-off codes (docs/security.md#44, #45): how an app gets its own cookie from a portal
//! session without the portal's cookie ever reaching it.
//!
//! The portal makes 256 random bits, files a record under a key derived from the app's name
//! and the code (so a code is looked up only on the app it was made for) with the SHA-256 of
//! the code as its digest, good for 60 s and one attempt, and redirects to the app's
//! `/.otpgate/callback?code=…`. The app consumes the record atomically (memory or Redis alike:
//! one use, also under concurrent requests), checks the browser's nonce (the app left it there
//! before sending the browser to the portal, and the portal filed it with the code), checks
//! that the portal session it names has not ended, re-validates the target, and answers with
//! its cookie and a 303 to the target, which also takes the code out of the address bar.

use base64::Engine as _;
use http::header::SET_COOKIE;
use http::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

use super::super::{Flow, LoginError, short_id};
use super::{CALLBACK_PATH, HANDOFF_TTL, PORTAL_AUDIENCE};
use crate::audit::Event;
use crate::body::Body;
use crate::email::Email;
use crate::http::redirect;
use crate::metrics::{LOGINS, PORTAL_HANDOFFS};
use crate::policy::LoginMethod;
use crate::return_to;
use crate::session::{self, Claims, SessionId, TokenKind};
use crate::state::{CodeRecord, Consume};

/// What is filed with a hand-off code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// The app it may be redeemed on.
    app: String,
    /// The portal session (the family), hex.
    family: String,
    /// When the portal session was issued and ends (Unix ms), for the revocation checks.
    issued_ms: u64,
    expires_ms: u64,
    email: String,
    method: String,
    /// The return target, validated when the code was made (and again when it is redeemed).
    rd: String,
    /// The nonce the app set in the browser that went to the portal; `None` when the login
    /// did not start at the app (a mailed link opened in another browser).
    state: Option<String>,
}

/// The state key of `code` on `app`.
fn key(app: &str, code: &str) -> String {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        &[b"otpgate/handoff/", app.as_bytes(), b"\0", code.as_bytes()].concat(),
    );
    format!("handoff:{}", crate::random::hex(d.as_ref()))
}

/// The digest filed for `code`: the code itself is never stored.
fn digest(code: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, code.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Flow<'_> {
    /// On an app: sends the browser to the portal's login for this app and `rd`, with a fresh
    /// nonce that stays behind in this browser as a cookie: the code that comes back is bound
    /// to it, so only this browser can redeem it (login CSRF, RFC 9700 §4.7).
    pub(in crate::login) fn to_portal(&self, rd: &str) -> Result<Response<Body>, LoginError> {
        let Some(portal) = self.site.config.portal.as_ref() else {
            return Err(LoginError::NotFound);
        };
        let state = crate::random::hex(&crate::random::bytes::<16>(self.svc.random.as_ref())?);
        let mut to = format!(
            "{portal}{}?app={}&state={state}&rd=",
            super::super::LOGIN_PATH,
            self.name()
        );
        to.extend(url::form_urlencoded::byte_serialize(rd.as_bytes()));
        let mut r = redirect(StatusCode::FOUND, &to);
        let https = self.site.origin.https;
        if let Some(h) = session::set_cookie(
            super::handoff_cookie_name(https),
            &state,
            super::APP_COOKIE_LIFETIME,
            https,
        ) {
            r.headers_mut().append(SET_COOKIE, h);
        }
        Ok(r)
    }

    /// On the portal: a code for the app of this flow, bound to the portal session `portal`
    /// and the validated `target`, and the redirect that carries it to the app.
    pub(in crate::login) async fn handoff(
        &self,
        portal: &Claims,
        target: &str,
    ) -> Result<Response<Body>, LoginError> {
        let app_origin = self.rd_origin();
        let code =
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(crate::random::bytes::<32>(self.svc.random.as_ref())?);
        let record = Record {
            app: self.name().to_owned(),
            family: portal.id.hex(),
            issued_ms: portal.issued_ms,
            expires_ms: portal.expires_ms,
            email: portal.email.to_string(),
            method: portal.method.as_str().to_owned(),
            rd: target.to_owned(),
            state: self.handoff_state.clone(),
        };
        let record = CodeRecord {
            payload: serde_json::to_vec(&record).unwrap_or_default(),
            digest: digest(&code),
            attempts: 1,
        };
        self.svc
            .state
            .put_code(&key(self.name(), &code), record, HANDOFF_TTL, false)
            .await?;
        ::metrics::counter!(PORTAL_HANDOFFS, "app" => self.name().to_owned(), "outcome" => "issued").increment(1);
        self.audit(
            Event::new("portal.handoff")
                .email(portal.email.as_str())
                .with("session", short_id(&portal.id)),
        );
        Ok(redirect(
            StatusCode::SEE_OTHER,
            &format!("{app_origin}{CALLBACK_PATH}?code={code}"),
        ))
    }

    /// On the app: `GET /.otpgate/callback?code=…`.
    pub(in crate::login) async fn callback(
        &self,
        query: Option<&str>,
        headers: &http::HeaderMap,
    ) -> Result<Response<Body>, LoginError> {
        let code = query
            .and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "code")
                    .map(|(_, v)| v.into_owned())
            })
            .unwrap_or_default();
        let request_id = self.request_id();
        if code.len() != 43 || self.site.config.portal.is_none() {
            return Ok(self.handoff_failed(None, "malformed", &request_id));
        }
        let record = match self
            .svc
            .state
            .consume_code(&key(self.name(), &code), &digest(&code))
            .await?
        {
            Consume::Accepted(p) => serde_json::from_slice::<Record>(&p).ok(),
            Consume::Rejected { .. } | Consume::Missing => None,
        };
        let Some(r) = record.filter(|r| r.app == self.name()) else {
            return Ok(self.handoff_failed(None, "unknown_used_or_expired", &request_id));
        };
        let https = self.site.origin.https;
        let nonce = session::cookie_values(headers, super::handoff_cookie_name(https)).next();
        match (&r.state, nonce) {
            (Some(want), Some(have)) if bool::from(want.as_bytes().ct_eq(have.as_bytes())) => {}
            // A code made without this app's nonce (the login began elsewhere, such as a mailed
            // link opened in another browser) is spent but opens nothing: the browser goes
            // through the app's login, which hands off again, bound to this browser. Once, as
            // that code has a nonce: no loop.
            (None, _) => return self.to_portal(&r.rd),
            (Some(_), _) => {
                return Ok(self.handoff_failed(None, "other_browser", &request_id));
            }
        }
        let (Ok(email), Some(method), Some(family)) = (
            Email::parse(&r.email),
            LoginMethod::parse(&r.method),
            SessionId::from_hex(&r.family),
        ) else {
            return Ok(self.handoff_failed(None, "invalid_record", &request_id));
        };
        let now = self.now_ms();
        // The code is only as good as the portal session it came from: signed out there (on
        // any replica), revoked for the person, or over, and it opens nothing.
        let portal = Claims {
            kind: TokenKind::Session,
            id: family,
            app: PORTAL_AUDIENCE.to_owned(),
            email: email.clone(),
            method,
            issued_ms: r.issued_ms,
            expires_ms: r.expires_ms,
            refreshed_ms: r.issued_ms,
            family: None,
        };
        if self.svc.sessions.revocations().is_revoked(&portal) || now > r.expires_ms {
            return Ok(self.handoff_failed(Some(&email), "portal_session_ended", &request_id));
        }
        if !self.would_allow(&email, &r.rd, method) {
            return Ok(self.handoff_failed(Some(&email), "policy", &request_id));
        }
        // Validated at the portal, validated again here (docs/security.md#45).
        let target = return_to::validate(&r.rd, self.site.origin, self.site.origins)
            .map_or_else(|| return_to::root(self.site.origin), String::from);
        let (claims, value) = self.svc.sessions.issue_in(
            TokenKind::Session,
            self.name(),
            email.clone(),
            method,
            self.site.session_lifetime,
            now,
            Some(family),
        )?;
        let mut resp = redirect(StatusCode::SEE_OTHER, &target);
        for h in [
            session::set_cookie(
                self.site.cookie_name,
                &value,
                self.site.session_lifetime,
                https,
            ),
            session::clear_cookie(super::handoff_cookie_name(https), https),
        ]
        .into_iter()
        .flatten()
        {
            resp.headers_mut().append(SET_COOKIE, h);
        }
        self.audit(
            Event::new("session.issued")
                .email(email.as_str())
                .request(&request_id)
                .with("session", short_id(&claims.id))
                .with("family", short_id(&family))
                .with("via", "portal"),
        );
        ::metrics::counter!(LOGINS, "app" => self.name().to_owned(), "method" => method.as_str(), "outcome" => "success").increment(1);
        ::metrics::counter!(PORTAL_HANDOFFS, "app" => self.name().to_owned(), "outcome" => "redeemed").increment(1);
        Ok(resp)
    }

    /// Every refused hand-off gets the same page, never a redirect: a broken hand-off must not
    /// turn into a loop between the app and the portal (docs/security.md#46).
    fn handoff_failed(
        &self,
        email: Option<&Email>,
        reason: &str,
        request_id: &str,
    ) -> Response<Body> {
        let mut e = Event::new("login.failed")
            .request(request_id)
            .with("reason", reason)
            .with("via", "portal");
        if let Some(email) = email {
            e = e.email(email.as_str());
        }
        self.audit(e);
        ::metrics::counter!(PORTAL_HANDOFFS, "app" => self.name().to_owned(), "outcome" => "refused").increment(1);
        self.site.pages.error(
            StatusCode::BAD_REQUEST,
            "Sign-in did not complete",
            "This sign-in was already used, has expired or is not for this app. Open the app again to sign in.",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sec_44_codes_are_stored_hashed_under_a_key_bound_to_the_app() {
        let code = "A".repeat(43);
        assert_ne!(key("wiki", &code), key("crm", &code));
        assert!(!key("wiki", &code).contains(&code));
        assert_ne!(digest(&code), digest(&"B".repeat(43)));
        let id = SessionId([0xab; 16]);
        assert_eq!(SessionId::from_hex(&id.hex()), Some(id));
        assert_eq!(SessionId::from_hex("zz"), None);
    }
}
