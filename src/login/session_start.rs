//! The end of every successful login, whatever the method: a fresh session
//! (docs/security.md#32), the login transaction cleared, and a 303 to the target validated
//! once more (docs/security.md#3). On the single sign-on portal the fresh session is the
//! portal's, and the browser goes on through a hand-off to the app (`portal::handoff`).

use std::time::Duration;

use http::header::SET_COOKIE;
use http::{Response, StatusCode};

use super::{Flow, LoginError, short_id};
use crate::audit::Event;
use crate::body::Body;
use crate::email::Email;
use crate::http::redirect;
use crate::metrics::LOGINS;
use crate::policy::LoginMethod;
use crate::return_to;
use crate::session::{self, TokenKind};

impl Flow<'_> {
    /// Logs `email` in with `method` and sends the browser on to `rd`.
    pub(super) async fn start_session(
        &self,
        email: &Email,
        method: LoginMethod,
        rd: &str,
        request_id: &str,
    ) -> Result<Response<Body>, LoginError> {
        let now = self.now_ms();
        let audience = match self.site.portal_for {
            Some(_) => super::portal::PORTAL_AUDIENCE,
            None => self.name(),
        };
        let (claims, value) = self.svc.sessions.issue(
            TokenKind::Session,
            audience,
            email.clone(),
            method,
            self.site.session_lifetime,
            now,
        )?;
        let target = return_to::validate(rd, self.rd_origin(), self.site.origins)
            .map_or_else(|| return_to::root(self.rd_origin()), String::from);
        let mut r = match self.site.portal_for {
            Some(_) => self.handoff(&claims, &target).await?,
            None => redirect(StatusCode::SEE_OTHER, &target),
        };
        let https = self.site.origin.https;
        for h in [
            session::set_cookie(
                self.site.cookie_name,
                &value,
                self.site.session_lifetime,
                https,
            ),
            session::clear_cookie(&self.tx_cookie(), https),
            // This browser is now a known device for the address (docs/security.md#39).
            self.device_cookie(email, method),
        ]
        .into_iter()
        .flatten()
        {
            r.headers_mut().append(SET_COOKIE, h);
        }
        self.audit(
            Event::new("login.succeeded")
                .email(email.as_str())
                .request(request_id)
                .with("login_method", method.as_str()),
        );
        self.audit(
            Event::new("session.issued")
                .email(email.as_str())
                .request(request_id)
                .with("session", short_id(&claims.id))
                .with(
                    "expires",
                    crate::audit::rfc3339(Duration::from_millis(claims.expires_ms)),
                ),
        );
        ::metrics::counter!(LOGINS, "app" => self.name().to_owned(), "method" => method.as_str(), "outcome" => "success").increment(1);
        Ok(r)
    }
}
