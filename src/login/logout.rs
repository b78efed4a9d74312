//! Signing out (docs/security.md#31): the `GET /.otpgate/logout` page with its button, and
//! the post that ends the session.

use http::header::SET_COOKIE;
use http::{HeaderMap, Request, Response, StatusCode};
use minijinja::context;

use super::page::read_form;
use super::{Flow, LoginError, short_id, tx};
use crate::audit::Event;
use crate::body::{Body, RequestBody};
use crate::session::{self, SessionError};
use crate::store::RevocationKind;

impl Flow<'_> {
    /// `GET /.otpgate/logout`.
    pub(super) fn logout_page(&self, headers: &HeaderMap) -> Response<Body> {
        let idle = Some(self.site.config.session.idle_timeout);
        match self.svc.sessions.from_headers(
            headers,
            self.site.cookie_name,
            self.name(),
            self.now_ms(),
            idle,
        ) {
            Ok(c) => {
                let csrf =
                    tx::csrf_token(&self.svc.sessions.keys(), "logout", self.name(), &c.id.0);
                let email = c.email.to_string();
                self.site.pages.page(
                    StatusCode::OK,
                    "logout.html",
                    context! { app => self.name(), signed_in => true, email, csrf },
                )
            }
            Err(_) => self.site.pages.page(
                StatusCode::OK,
                "logout.html",
                context! { app => self.name(), signed_in => false },
            ),
        }
    }

    /// `POST /.otpgate/logout`: the session ends on the server (a copied cookie stops working,
    /// also after a restart) and the cookie is cleared.
    pub(super) async fn logout(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<Body>, LoginError> {
        let (parts, body) = req.into_parts();
        let form = read_form(&parts.headers, body).await?;
        let idle = Some(self.site.config.session.idle_timeout);
        let now = self.now_ms();
        match self.svc.sessions.from_headers(
            &parts.headers,
            self.site.cookie_name,
            self.name(),
            now,
            idle,
        ) {
            Ok(c) => {
                let token = form.get("csrf").map_or("", String::as_str);
                let keys = self.svc.sessions.keys();
                if !(tx::origin_ok(&parts.headers, &self.origin())
                    && tx::csrf_ok(&keys, "logout", self.name(), &c.id.0, token))
                {
                    return Ok(self.site.pages.error(
                        StatusCode::FORBIDDEN,
                        "Sign-out not confirmed",
                        "Please use the Sign out button on the sign-out page.",
                    ));
                }
                self.revoke(RevocationKind::Session, c.id.hex(), 0, c.expires_ms, now)
                    .await?;
                let request_id = self.request_id();
                self.audit(
                    Event::new("logout")
                        .email(c.email.as_str())
                        .request(&request_id)
                        .with("session", short_id(&c.id)),
                );
                self.audit(
                    Event::new("session.revoked")
                        .email(c.email.as_str())
                        .request(&request_id)
                        .with("scope", "one session")
                        .with("session", short_id(&c.id)),
                );
            }
            Err(SessionError::Missing | SessionError::Invalid(_) | SessionError::Revoked) => {}
        }
        let mut r = self.site.pages.page(
            StatusCode::OK,
            "signed_out.html",
            context! { app => self.name() },
        );
        if let Some(h) = session::clear_cookie(self.site.cookie_name, self.site.origin.https) {
            r.headers_mut().append(SET_COOKIE, h);
        }
        Ok(r)
    }
}
