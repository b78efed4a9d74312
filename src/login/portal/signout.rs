//! Signing out at the portal (docs/security.md#47): the portal session and every app session
//! handed off from it end together, as one family revocation in the store, pushed to the
//! other replicas (and read by them at their next poll anyway), so copied cookies stop working
//! everywhere.

use http::header::SET_COOKIE;
use http::{HeaderMap, Request, Response, StatusCode};
use minijinja::context;

use super::super::page::read_form;
use super::super::{Flow, LOGIN_PATH, LoginError, short_id, tx};
use super::PORTAL_AUDIENCE;
use crate::audit::Event;
use crate::body::{Body, RequestBody};
use crate::http::redirect;
use crate::return_to;
use crate::session;
use crate::store::RevocationKind;

/// The form purpose of the portal's sign-out.
const PURPOSE: &str = "portal-logout";

impl Flow<'_> {
    /// `GET /.otpgate/logout` on the portal.
    pub(super) fn portal_logout_page(&self, headers: &HeaderMap) -> Response<Body> {
        match self.portal_session(headers) {
            Ok(c) => {
                let csrf =
                    tx::csrf_token(&self.svc.sessions.keys(), PURPOSE, PORTAL_AUDIENCE, &c.id.0);
                self.site.pages.page(
                    StatusCode::OK,
                    "logout.html",
                    context! { app => "every app", signed_in => true, email => c.email.as_str(), csrf },
                )
            }
            Err(_) => self.site.pages.page(
                StatusCode::OK,
                "logout.html",
                context! { app => "every app", signed_in => false },
            ),
        }
    }

    /// `POST /.otpgate/logout` on the portal. With `app` and `rd` fields (the "use a different
    /// account" button) the browser goes on to that app's login on the portal.
    pub(super) async fn portal_logout(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<Body>, LoginError> {
        let (parts, body) = req.into_parts();
        let form = read_form(&parts.headers, body).await?;
        let now = self.now_ms();
        if let Ok(c) = self.portal_session(&parts.headers) {
            let token = form.get("csrf").map_or("", String::as_str);
            let keys = self.svc.sessions.keys();
            if !(tx::origin_ok(&parts.headers, &self.origin())
                && tx::csrf_ok(&keys, PURPOSE, PORTAL_AUDIENCE, &c.id.0, token))
            {
                return Ok(self.site.pages.error(
                    StatusCode::FORBIDDEN,
                    "Sign-out not confirmed",
                    "Please use the Sign out button on the sign-out page.",
                ));
            }
            // App sessions of the family may outlive the portal session: the entry lasts as
            // long as the longest session could.
            let until = now
                .saturating_add(u64::try_from(crate::config::MAX_SESSION.as_millis()).unwrap_or(0))
                .saturating_add(session::cookie::SKEW_MS);
            self.revoke(RevocationKind::Family, c.id.hex(), 0, until, now)
                .await?;
            let request_id = self.request_id();
            self.audit(
                Event::new("logout")
                    .email(c.email.as_str())
                    .request(&request_id)
                    .with("session", short_id(&c.id))
                    .with("via", "portal"),
            );
            self.audit(
                Event::new("session.revoked")
                    .email(c.email.as_str())
                    .request(&request_id)
                    .with("scope", "session family")
                    .with("session", short_id(&c.id)),
            );
        }
        // Apps and origins are in the same (config) order.
        let next = form.get("app").and_then(|app| {
            let i = self.site.config.apps.iter().position(|x| &x.name == app)?;
            let origin = self.site.origins.get(i)?;
            let mut to = format!("{}{LOGIN_PATH}?app={app}", self.site.origin);
            if let Some(rd) = form
                .get("rd")
                .and_then(|rd| return_to::validate(rd, origin, self.site.origins))
            {
                to.push('&');
                to.push_str(&super::entry::rd_query(rd.as_str()));
            }
            Some(to)
        });
        let mut r = match next {
            Some(to) => redirect(StatusCode::SEE_OTHER, &to),
            None => self.site.pages.page(
                StatusCode::OK,
                "signed_out.html",
                context! { app => "every app" },
            ),
        };
        if let Some(h) = session::clear_cookie(self.site.cookie_name, self.site.origin.https) {
            r.headers_mut().append(SET_COOKIE, h);
        }
        Ok(r)
    }
}
