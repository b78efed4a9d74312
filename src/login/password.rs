//! Password logins (Zscaler's "One-Time Token"): signing in with a temporary password leads
//! to a restricted session whose only use is choosing a password (SECURITY.md 23); from then on
//! the login page's password form works with it.
//!
//! Every attempt costs the same whoever it names: an Argon2id check runs against the stored
//! hash or a dummy one, the temporary-password record is read and its digest computed, and the
//! failure accounting is per address whether or not anyone has it (SECURITY.md 26). Failures
//! are throttled per client IP, per account with growing delays and a hard cap (released by
//! `otpgate users unlock`), and Authelia-style: 3 failures within 2 minutes ban the address
//! silently for 5 minutes.

use std::time::Duration;

use http::header::SET_COOKIE;
use http::{HeaderMap, Request, Response, StatusCode};
use minijinja::context;
use subtle::ConstantTimeEq as _;

use super::tx::{self, LoginTx};
use super::{
    DELAY_AFTER, Flow, LOGIN_PATH, LoginError, MAX_DELAY, NO_ACCESS, View, key_ip, one_line,
    read_form, secret,
};
use crate::audit::Event;
use crate::body::{Body, RequestBody};
use crate::email::Email;
use crate::http::redirect;
use crate::mailer::OutgoingMail;
use crate::metrics::{LOGINS, RATE_LIMITED};
use crate::policy::LoginMethod;
use crate::session::{self, Kind, SessionError};
use crate::store::{Revocation, RevocationKind};

/// How long the restricted session of a temporary password lasts.
const RESTRICTED_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Failures within [`BAN_WINDOW`] that ban an address for [`BAN`].
const BAN_AFTER: u64 = 3;
const BAN_WINDOW: Duration = Duration::from_secs(2 * 60);
const BAN: Duration = Duration::from_secs(5 * 60);

fn key_pw_failures(email: &Email) -> String {
    format!("otpgate:pwfail:{email}")
}
fn key_pw_ban(email: &Email) -> String {
    format!("otpgate:pwban:{email}")
}

/// The restricted session's cookie name for an app.
fn restricted_cookie(https: bool) -> &'static str {
    if https {
        session::RESTRICTED_COOKIE_HOST
    } else {
        session::RESTRICTED_COOKIE_PLAIN
    }
}

/// What an attempt came to.
enum Verdict {
    /// The user's own password.
    Password,
    /// The unused temporary password, now used up.
    Temporary,
    /// Anything else, with the reason for the audit log.
    Failed(&'static str),
}

impl Flow<'_> {
    /// The password form of the login page.
    pub(super) async fn password_login(
        &self,
        tx: &LoginTx,
        email: &Email,
        typed: &str,
    ) -> Result<Response<Body>, LoginError> {
        let request_id = crate::random::request_id(self.svc.random.as_ref());
        let limits = &self.site.config.rate_limits;
        let state = self.svc.state;
        if state
            .hit(&key_ip(self.ip), limits.login_requests_per_ip.per)
            .await?
            > u64::from(limits.login_requests_per_ip.count)
        {
            ::metrics::counter!(RATE_LIMITED, "limit" => "ip").increment(1);
            return Ok(self.password_failed(tx, email, "throttled", &request_id));
        }
        let failures = self.failures(email.as_str()).await?;
        if failures.consecutive >= DELAY_AFTER {
            let n = (failures.consecutive - DELAY_AFTER).min(10);
            tokio::time::sleep((Duration::from_millis(250) * 2u32.pow(n)).min(MAX_DELAY)).await;
        }
        let banned = state.get(&key_pw_ban(email)).await?.is_some();
        let block = if failures.locked {
            Some("locked")
        } else if banned {
            Some("banned")
        } else if !self.would_allow(email, &tx.rd, LoginMethod::OneTimeToken) {
            Some("policy")
        } else {
            None
        };
        // The check runs in every case, so a blocked attempt takes as long as any other.
        let verdict = self.check_password(email, typed, block.is_none()).await?;
        let verdict = block.map_or(verdict, Verdict::Failed);
        match verdict {
            Verdict::Password => {
                let e = email.to_string();
                self.svc.store.run(move |s| s.reset_failures(&e)).await?;
                state.delete(&key_pw_failures(email)).await?;
                self.start_session(email, LoginMethod::OneTimeToken, &tx.rd, &request_id)
            }
            Verdict::Temporary => {
                let e = email.to_string();
                self.svc.store.run(move |s| s.reset_failures(&e)).await?;
                self.restricted(email, &request_id)
            }
            Verdict::Failed(reason) => {
                // Every failure is counted, whatever its reason: the durable write takes the
                // same time for everyone, so the answer's timing says nothing about whether
                // the address exists, may log in, or is banned.
                self.count_failure(email, &request_id, failures.locked)
                    .await?;
                Ok(self.password_failed(tx, email, reason, &request_id))
            }
        }
    }

    /// Compares the typed password with the user's password and temporary password, doing the
    /// same work whether either exists; uses the temporary password up when it matches and
    /// `use_temporary` is set.
    async fn check_password(
        &self,
        email: &Email,
        typed: &str,
        use_temporary: bool,
    ) -> Result<Verdict, LoginError> {
        if typed.is_empty() || typed.chars().count() > secret::MAX_PASSWORD_CHARS {
            return Ok(Verdict::Failed("wrong_password"));
        }
        let e = email.to_string();
        let (hash, temp) = self
            .svc
            .store
            .run(move |s| Ok((s.password_hash(&e)?, s.temp_password(&e)?)))
            .await?;
        let own = secret::verify(typed.to_owned(), hash).await;
        let keys = self.svc.sessions.keys();
        let now = self.now_ms();
        let kid = temp
            .as_ref()
            .map_or(keys.current().id.as_str(), |t| t.kid.as_str());
        let key = keys.get(kid).unwrap_or_else(|| keys.current());
        let digest = secret::temp_digest(key, email.as_str(), typed);
        let temp_ok = temp.as_ref().is_some_and(|t| {
            let same: bool = t.digest.ct_eq(&digest).into();
            same && !t.used && now < t.expires_ms
        });
        if own {
            return Ok(Verdict::Password);
        }
        if !temp_ok {
            return Ok(Verdict::Failed("wrong_password"));
        }
        if !use_temporary {
            return Ok(Verdict::Temporary);
        }
        let e = email.to_string();
        let used = self
            .svc
            .store
            .run(move |s| s.use_temp_password(&e, &digest, now))
            .await?;
        Ok(if used {
            Verdict::Temporary
        } else {
            Verdict::Failed("temporary_password_used")
        })
    }

    async fn count_failure(
        &self,
        email: &Email,
        request_id: &str,
        was_locked: bool,
    ) -> Result<(), LoginError> {
        let limits = &self.site.config.rate_limits;
        let (e, now, cap) = (
            email.to_string(),
            self.now_ms(),
            limits.failed_logins_per_account,
        );
        let after = self
            .svc
            .store
            .run(move |s| s.record_failure(&e, now, cap))
            .await?;
        if after.locked && !was_locked {
            self.audit(
                Event::new("login.locked")
                    .email(email.as_str())
                    .request(request_id)
                    .with("failures", after.consecutive),
            );
        }
        let state = self.svc.state;
        if state.hit(&key_pw_failures(email), BAN_WINDOW).await? >= BAN_AFTER {
            state.put_new(&key_pw_ban(email), b"1", BAN).await?;
            state.delete(&key_pw_failures(email)).await?;
            ::metrics::counter!(RATE_LIMITED, "limit" => "password_ban").increment(1);
        }
        Ok(())
    }

    /// Every failed password login gets the same page (SECURITY.md 11).
    fn password_failed(
        &self,
        tx: &LoginTx,
        email: &Email,
        reason: &str,
        request_id: &str,
    ) -> Response<Body> {
        self.audit(
            Event::new("login.failed")
                .email(email.as_str())
                .request(request_id)
                .with("reason", reason)
                .with("login_method", "onetimetoken"),
        );
        ::metrics::counter!(LOGINS, "app" => self.name().to_owned(), "method" => "onetimetoken", "outcome" => "failure").increment(1);
        let view = View {
            pw_email: email.as_str(),
            pw_error: Some(NO_ACCESS),
            ..View::default()
        };
        self.email_page(tx, &view, StatusCode::OK, false)
    }

    /// A correct temporary password: the restricted session, then the password page.
    fn restricted(&self, email: &Email, request_id: &str) -> Result<Response<Body>, LoginError> {
        let (claims, value) = self.svc.sessions.issue(
            Kind::Restricted,
            self.name(),
            email.clone(),
            LoginMethod::OneTimeToken,
            RESTRICTED_LIFETIME,
            self.now_ms(),
        )?;
        self.audit(
            Event::new("login.temporary_password")
                .email(email.as_str())
                .request(request_id)
                .with("session", super::short_id(&claims.id)),
        );
        let mut r = redirect(
            StatusCode::SEE_OTHER,
            &format!("{}{}", self.site.origin, super::PASSWORD_PATH),
        );
        let https = self.site.origin.https;
        if let Some(h) =
            session::set_cookie(restricted_cookie(https), &value, RESTRICTED_LIFETIME, https)
        {
            r.headers_mut().append(SET_COOKIE, h);
        }
        Ok(r)
    }

    fn restricted_session(&self, headers: &HeaderMap) -> Result<session::Claims, SessionError> {
        self.svc.sessions.of_kind(
            headers,
            Kind::Restricted,
            restricted_cookie(self.site.origin.https),
            self.name(),
            self.now_ms(),
            None,
        )
    }

    fn min_password_length(&self) -> usize {
        self.site
            .config
            .identity_providers
            .token
            .as_ref()
            .map_or(12, |t| t.min_password_length)
    }

    fn choose_page(
        &self,
        c: &session::Claims,
        error: Option<&str>,
        status: StatusCode,
    ) -> Response<Body> {
        let csrf = tx::csrf_token(&self.svc.sessions.keys(), "password", self.name(), &c.id.0);
        self.site.pages.page(
            status,
            "password.html",
            context! {
                app => self.name(), csrf, email => c.email.as_str(), error,
                min_length => self.min_password_length(),
            },
        )
    }

    /// `GET /.otpgate/password`.
    pub(super) fn password_page(&self, headers: &HeaderMap) -> Response<Body> {
        match self.restricted_session(headers) {
            Ok(c) => self.choose_page(&c, None, StatusCode::OK),
            Err(_) => redirect(
                StatusCode::SEE_OTHER,
                &format!("{}{LOGIN_PATH}", self.site.origin),
            ),
        }
    }

    /// `POST /.otpgate/password`: checks and stores the new password (committed before the
    /// answer), ends every other session of the account, logs in and mails a notice
    /// (SECURITY.md 25, 27).
    pub(super) async fn choose_password(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<Body>, LoginError> {
        let (parts, body) = req.into_parts();
        let form = read_form(&parts.headers, body).await?;
        let Ok(c) = self.restricted_session(&parts.headers) else {
            return Ok(redirect(
                StatusCode::SEE_OTHER,
                &format!("{}{LOGIN_PATH}", self.site.origin),
            ));
        };
        let keys = self.svc.sessions.keys();
        let token = form.get("csrf").map_or("", String::as_str);
        if !(tx::origin_ok(&parts.headers, &self.origin())
            && tx::csrf_ok(&keys, "password", self.name(), &c.id.0, token))
        {
            return Ok(self.choose_page(&c, Some(super::EXPIRED_FORM), StatusCode::BAD_REQUEST));
        }
        let password = form.get("password").map_or("", String::as_str);
        let confirm = form.get("confirm").map_or("", String::as_str);
        if let Err(p) = secret::check_new_password(
            password,
            confirm,
            c.email.as_str(),
            self.min_password_length(),
        ) {
            return Ok(self.choose_page(&c, Some(&p.to_string()), StatusCode::OK));
        }
        let e = c.email.to_string();
        let temp = self.svc.store.run(move |s| s.temp_password(&e)).await?;
        let same = temp.is_some_and(|t| {
            keys.get(&t.kid).is_some_and(|k| {
                bool::from(secret::temp_digest(k, c.email.as_str(), password).ct_eq(&t.digest))
            })
        });
        if same {
            let msg = secret::PasswordProblem::SameAsTemporary.to_string();
            return Ok(self.choose_page(&c, Some(&msg), StatusCode::OK));
        }
        let hash = secret::hash(password.to_owned()).await?;
        let now = self.now_ms();
        let until = now
            .saturating_add(u64::try_from(crate::config::MAX_SESSION.as_millis()).unwrap_or(0))
            .saturating_add(session::cookie::SKEW_MS);
        let e = c.email.to_string();
        // One transaction would be neater, but the order is what matters: the password is
        // committed first (a crash after it keeps it), then the other sessions end.
        self.svc
            .store
            .run(move |s| {
                s.set_password(&e, &hash, now)?;
                s.revoke(RevocationKind::User, &e, now, until, now)
            })
            .await?;
        self.svc.sessions.revocations().apply(&[Revocation {
            seq: 0,
            kind: RevocationKind::User,
            subject: c.email.to_string(),
            not_before_ms: now,
            expires_ms: until,
        }]);
        let request_id = crate::random::request_id(self.svc.random.as_ref());
        self.audit(
            Event::new("password.changed")
                .email(c.email.as_str())
                .request(&request_id),
        );
        self.audit(
            Event::new("session.revoked")
                .email(c.email.as_str())
                .request(&request_id)
                .with("scope", "all sessions")
                .with("via", "password change"),
        );
        self.mail_password_changed(&c.email);
        let rd = LoginTx::from_headers(&parts.headers, self.tx_cookie(), self.name(), &keys, now)
            .map_or_else(|| crate::return_to::root(self.site.origin), |t| t.rd);
        let mut r = self.start_session(&c.email, LoginMethod::OneTimeToken, &rd, &request_id)?;
        if let Some(h) = session::clear_cookie(
            restricted_cookie(self.site.origin.https),
            self.site.origin.https,
        ) {
            r.headers_mut().append(SET_COOKIE, h);
        }
        Ok(r)
    }

    fn mail_password_changed(&self, email: &Email) {
        let to = self
            .user(email)
            .and_then(|u| u.temp_auth_email.clone())
            .unwrap_or_else(|| email.clone());
        let when = crate::audit::rfc3339(self.svc.clock.now());
        let ctx = context! { app => self.name(), email => email.as_str(), when };
        let (Ok(subject), Ok(text)) = (
            self.site
                .pages
                .render("password_changed_subject.txt", ctx.clone()),
            self.site.pages.render("password_changed.txt", ctx),
        ) else {
            tracing::error!(app = self.name(), "cannot render the password-changed mail");
            return;
        };
        self.svc.mailer.enqueue(OutgoingMail {
            to,
            subject: one_line(&subject),
            text,
            html: None,
            kind: "password_changed",
            app: self.name().to_owned(),
        });
    }
}
