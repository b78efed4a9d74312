//! Requests on the portal's host: the launcher, the family sign-out, and the login pages of
//! the app a login is for. `GET /.otpgate/login` is the portal's own: with a portal session
//! it hands off at once (or says the account has no access), without one it shows the app's
//! login forms.

use std::time::Duration;

use http::header::SET_COOKIE;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use minijinja::context;

use super::super::{CERTS_PATH, Flow, LOGIN_PATH, LOGOUT_PATH, LoginError, NO_ACCESS, tx};
use super::{APP_COOKIE_LIFETIME, app_cookie_name};
use crate::body::{Body, RequestBody};
use crate::http::redirect;
use crate::return_to;
use crate::session::{self, Claims};

/// Answers a request on the portal. `chosen`: whether the request names an app (parameter or
/// cookie) that exists; the flow is for that app then.
pub(crate) async fn handle(
    mut c: Flow<'_>,
    req: Request<RequestBody>,
    path: &str,
    chosen: bool,
) -> Result<Response<Body>, LoginError> {
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let post = *req.method() == Method::POST;
    let https = c.site.origin.https;
    c.handoff_state = super::handoff_state(req.uri().query(), req.headers(), https);
    // A page opened with `?app=` (the login page, a mailed link) remembers the app, and the
    // app's hand-off nonce, for the links that do not carry them (the forms do: `form_query`).
    let remember = (chosen && read && super::app_param(req.uri().query()).is_some())
        .then(|| {
            let value = match &c.handoff_state {
                Some(s) => format!("{}~{s}", c.name()),
                None => c.name().to_owned(),
            };
            session::set_cookie(app_cookie_name(https), &value, APP_COOKIE_LIFETIME, https)
        })
        .flatten();
    let mut r = match path {
        "/" if read => Ok(c.launcher(req.headers())),
        "/" => Err(LoginError::MethodNotAllowed),
        LOGOUT_PATH if read => Ok(c.portal_logout_page(req.headers())),
        LOGOUT_PATH if post => c.portal_logout(req).await,
        CERTS_PATH => super::super::handle(c, req, path).await,
        // Nothing to sign in to without an app: the launcher says where to start.
        _ if !chosen => Ok(redirect(
            StatusCode::SEE_OTHER,
            &format!("{}/", c.site.origin),
        )),
        LOGIN_PATH if read => c.portal_login(req.uri().query(), req.headers()).await,
        _ => super::super::handle(c, req, path).await,
    }?;
    if let Some(h) = remember {
        r.headers_mut().append(SET_COOKIE, h);
    }
    Ok(r)
}

impl Flow<'_> {
    /// `GET /.otpgate/login?app=…&rd=…` on the portal.
    async fn portal_login(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Response<Body>, LoginError> {
        let target = return_to::rd_param(query)
            .and_then(|rd| return_to::validate(&rd, self.rd_origin(), self.site.origins))
            .map_or_else(|| return_to::root(self.rd_origin()), String::from);
        match self.portal_session(headers) {
            // A session from a method this app does not offer is no login for it: the app's
            // own forms are shown, as for anyone signed out.
            Ok(c) if self.offers(c.method) => {
                let email = c.email.clone();
                if self.would_allow(&email, &target, c.method) {
                    // Every hand-off is activity: the portal session's idle clock restarts.
                    let mut r = self.handoff(&c, &target).await?;
                    let refreshed = self.svc.sessions.refresh(&c, self.now_ms())?;
                    if let Some(h) = session::set_cookie(
                        self.site.cookie_name,
                        &refreshed,
                        Duration::from_millis(c.expires_ms.saturating_sub(self.now_ms())),
                        self.site.origin.https,
                    ) {
                        r.headers_mut().append(SET_COOKIE, h);
                    }
                    return Ok(r);
                }
                Ok(self.denied(&c, &target))
            }
            _ => self.login_page(Some(&rd_query(&target)), headers),
        }
    }

    /// A portal session whose person this app's policy refuses: said plainly, with a way to
    /// sign in as someone else, never a redirect back to the app (docs/security.md#46).
    fn denied(&self, c: &Claims, target: &str) -> Response<Body> {
        let csrf = tx::csrf_token(
            &self.svc.sessions.keys(),
            "portal-logout",
            super::PORTAL_AUDIENCE,
            &c.id.0,
        );
        self.site.pages.page(
            StatusCode::FORBIDDEN,
            "portal_denied.html",
            context! {
                app => self.name(), email => c.email.as_str(), error => NO_ACCESS, csrf,
                rd => target,
            },
        )
    }
}

/// `rd=<target>` as a query string.
pub(super) fn rd_query(target: &str) -> String {
    let mut s = String::from("rd=");
    s.extend(url::form_urlencoded::byte_serialize(target.as_bytes()));
    s
}
