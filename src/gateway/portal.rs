//! Requests for the single sign-on portal's host: the same first stages as an app's (path,
//! client, HTTPS redirect), then the portal's pages (`login::portal`), never a proxy. The
//! login forms there are the app's a login is for, named by `?app=` or the portal's app cookie.

use std::borrow::Cow;

use http::{Request, Response, StatusCode};

use super::route::RouteError;
use super::{Gateway, forwarded, runtime::Runtime};
use crate::body::{Body, RequestBody};
use crate::http::redirect;
use crate::login::{Flow, Site, portal};

impl Gateway {
    pub(super) async fn serve_portal(
        &self,
        rt: &Runtime,
        req: Request<RequestBody>,
        conn: &super::ConnInfo,
    ) -> Result<Response<Body>, super::GateError> {
        let Some(origin) = rt.config.portal.as_ref() else {
            return Err(RouteError::UnknownHost.into());
        };
        let path = match crate::path::normalise(req.uri().path())? {
            Cow::Borrowed(p) => p.to_owned(),
            Cow::Owned(p) => p,
        };
        let client = forwarded::downstream(conn, req.headers(), &rt.config.trusted_proxies);
        if origin.https && !client.https {
            let mut target = format!("{origin}{path}");
            if let Some(q) = req.uri().query() {
                target.push('?');
                target.push_str(q);
            }
            return Ok(redirect(StatusCode::PERMANENT_REDIRECT, &target));
        }
        let named = portal::chosen_app(req.uri().query(), req.headers(), origin.https);
        let chosen = named
            .as_deref()
            .and_then(|n| rt.apps.iter().find(|a| a.config.name == n));
        // Pages that are for no app in particular (the launcher, sign-out) still run in a
        // flow; the first app stands in and decides nothing there.
        let Some(app) = chosen.or_else(|| rt.apps.first()) else {
            return Err(RouteError::UnknownHost.into());
        };
        let users = self.users.users_full();
        let flow = Flow::new(
            self.services(rt, &users),
            Site {
                config: &rt.config,
                pages: &rt.pages,
                audit: &rt.audit,
                origins: &rt.origins,
                app: &app.config,
                origin,
                cookie_name: portal::cookie_name(origin.https),
                session_lifetime: rt.config.session.duration,
                portal_for: Some(&app.origin),
            },
            client.ip,
        );
        let mut r = portal::handle(flow, req, &path, chosen.is_some()).await?;
        allow_forms_to_apps(&mut r, rt);
        Ok(r)
    }
}

/// A login form on the portal ends in a redirect to an app's callback, and browsers hold
/// every redirect of a form submission to the page's `form-action`: the portal's pages allow
/// the apps' origins there besides their own.
fn allow_forms_to_apps(r: &mut Response<Body>, rt: &Runtime) {
    let csp = http::header::CONTENT_SECURITY_POLICY;
    let Some(widened) = r
        .headers()
        .get(&csp)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let origins: Vec<String> = rt.origins.iter().map(ToString::to_string).collect();
            v.replace(
                "form-action 'self'",
                &format!("form-action 'self' {}", origins.join(" ")),
            )
        })
    else {
        return;
    };
    if let Ok(v) = http::HeaderValue::from_str(&widened) {
        r.headers_mut().insert(csp, v);
    }
}
