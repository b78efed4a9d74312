//! The restricted session of a temporary password (docs/security.md#23) and its one use:
//! `GET`/`POST /.otpgate/password`, choosing the account's password (docs/security.md#25).
//! The new password is committed before the answer, every other session of the account ends
//! and a notice is mailed (docs/security.md#27).

use std::time::Duration;

use http::header::SET_COOKIE;
use http::{HeaderMap, Request, Response, StatusCode};
use minijinja::context;
use subtle::ConstantTimeEq as _;

use super::page::read_form;
use super::tx::{self, LoginTx};
use super::{
    EXPIRED_FORM, Flow, LOGIN_PATH, LoginError, PASSWORD_PATH, one_line, secret, short_id,
};
use crate::audit::Event;
use crate::body::{Body, RequestBody};
use crate::email::Email;
use crate::http::redirect;
use crate::mailer::OutgoingMail;
use crate::policy::LoginMethod;
use crate::session::{self, KeyRing, SessionError, TokenKind};
use crate::store::RevocationKind;

/// How long the restricted session of a temporary password lasts.
const RESTRICTED_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// The restricted session's cookie name for an app.
fn restricted_cookie(https: bool) -> &'static str {
    if https {
        session::RESTRICTED_COOKIE_HOST
    } else {
        session::RESTRICTED_COOKIE_PLAIN
    }
}

impl Flow<'_> {
    /// A correct temporary password: the restricted session, then the password page.
    pub(super) fn restricted(
        &self,
        email: &Email,
        request_id: &str,
    ) -> Result<Response<Body>, LoginError> {
        let (claims, value) = self.svc.sessions.issue(
            TokenKind::Restricted,
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
                .with("session", short_id(&claims.id)),
        );
        let mut to = format!("{}{}", self.site.origin, PASSWORD_PATH);
        let fq = self.form_query();
        if !fq.is_empty() {
            to.push('?');
            to.push_str(&fq);
        }
        let mut r = redirect(StatusCode::SEE_OTHER, &to);
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
            TokenKind::Restricted,
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
                app => self.name(), fq => self.form_query(), csrf, email => c.email.as_str(), error,
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

    /// `POST /.otpgate/password`.
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
            return Ok(self.choose_page(&c, Some(EXPIRED_FORM), StatusCode::BAD_REQUEST));
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
        if self.same_as_temporary(&keys, &c.email, password).await? {
            let msg = secret::PasswordProblem::SameAsTemporary.to_string();
            return Ok(self.choose_page(&c, Some(&msg), StatusCode::OK));
        }
        let hash = secret::hash(password.to_owned()).await?;
        let now = self.now_ms();
        self.replace_password(&c.email, hash, now).await?;
        let request_id = self.request_id();
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
        let rd = LoginTx::from_headers(&parts.headers, &self.tx_cookie(), self.name(), &keys, now)
            .map_or_else(|| crate::return_to::root(self.rd_origin()), |t| t.rd);
        let mut r = self
            .start_session(&c.email, LoginMethod::OneTimeToken, &rd, &request_id)
            .await?;
        if let Some(h) = session::clear_cookie(
            restricted_cookie(self.site.origin.https),
            self.site.origin.https,
        ) {
            r.headers_mut().append(SET_COOKIE, h);
        }
        Ok(r)
    }

    /// Whether `password` is the temporary password it replaces.
    async fn same_as_temporary(
        &self,
        keys: &KeyRing,
        email: &Email,
        password: &str,
    ) -> Result<bool, LoginError> {
        let temp = self.svc.store.temp_password(email.as_str()).await?;
        Ok(temp.is_some_and(|t| {
            keys.get(&t.kid).is_some_and(|k| {
                bool::from(secret::temp_digest(k, email.as_str(), password).ct_eq(&t.digest))
            })
        }))
    }

    /// Stores the new password hash and ends every session of the account issued before now.
    async fn replace_password(
        &self,
        email: &Email,
        hash: String,
        now: u64,
    ) -> Result<(), LoginError> {
        let until = now
            .saturating_add(u64::try_from(crate::config::MAX_SESSION.as_millis()).unwrap_or(0))
            .saturating_add(session::cookie::SKEW_MS);
        let e = email.as_str();
        // One transaction would be neater, but the order is what matters: the password is
        // committed first (a crash after it keeps it), then the other sessions end.
        self.svc.store.set_password(e, &hash, now).await?;
        self.revoke(RevocationKind::User, e.to_owned(), now, until, now)
            .await
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
