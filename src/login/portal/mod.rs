//! The single sign-on portal (`portal_url`, docs/product.md#s4): one login for every app.
//!
//! ```text
//! app  GET  /.otpgate/login?rd=…        no app session: 302 to the portal with the app and target
//! portal GET /.otpgate/login?app=&rd=…  a portal session: hand-off at once (or "no access");
//!                                       none: the app's login forms, served by the portal
//! portal (the login posts, code, link, password pages of the app, as on the app itself)
//! portal GET  /                         the launcher: the apps the person may open
//! portal GET|POST /.otpgate/logout      ends the portal session and its whole family
//! app  GET  /.otpgate/callback?code=…   redeems a hand-off code for the app's own cookie
//! ```
//!
//! The portal runs the ordinary login flows with the portal as the page origin and the app's
//! config (methods, policies, anti-enumeration rules) deciding everything else; the portal
//! session it starts is sealed for [`PORTAL_AUDIENCE`], which no app may be named. Files:
//! `entry` (the portal's login page and its dispatch), `handoff` (codes, both sides),
//! `launcher`, `signout`.

mod entry;
mod handoff;
mod launcher;
mod signout;

use std::time::Duration;

use http::HeaderMap;

pub(crate) use entry::handle;

use super::Flow;
use crate::session::{Claims, SessionError};

/// The audience portal sessions are sealed for: not a valid app name (`:`), so no app's
/// cookie opens as the portal's or the other way round.
pub(crate) const PORTAL_AUDIENCE: &str = "otpgate:portal";
/// Where an app redeems a hand-off code (stable path).
pub(crate) const CALLBACK_PATH: &str = "/.otpgate/callback";
use crate::session::{PORTAL_COOKIE_HOST as COOKIE_HOST, PORTAL_COOKIE_PLAIN as COOKIE_PLAIN};
/// Which app the portal's pages are for when their address does not say (the forms carry it
/// in their action, so each tab's post reaches its own app): not secret (the login transaction
/// it goes with is sealed for that app, so a changed value opens nothing).
pub(crate) const APP_COOKIE_HOST: &str = "__Host-otpgate-portal-app";
/// The app cookie on a plain-http portal.
pub(crate) const APP_COOKIE_PLAIN: &str = "otpgate-portal-app";
/// How long a hand-off code is good for (docs/security.md#44).
pub(crate) const HANDOFF_TTL: Duration = Duration::from_secs(60);
/// How long the portal remembers which app a login is for.
const APP_COOKIE_LIFETIME: Duration = Duration::from_secs(3600);

/// The portal session cookie's name.
pub(crate) fn cookie_name(https: bool) -> &'static str {
    if https { COOKIE_HOST } else { COOKIE_PLAIN }
}

/// The app cookie's name.
pub(crate) fn app_cookie_name(https: bool) -> &'static str {
    if https {
        APP_COOKIE_HOST
    } else {
        APP_COOKIE_PLAIN
    }
}

/// The hand-off nonce cookie's name on an app.
pub(crate) fn handoff_cookie_name(https: bool) -> &'static str {
    if https {
        crate::session::HANDOFF_COOKIE_HOST
    } else {
        crate::session::HANDOFF_COOKIE_PLAIN
    }
}

/// A query parameter, decoded once (the first one counts).
fn param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The `app` query parameter of a portal request.
pub(crate) fn app_param(query: Option<&str>) -> Option<String> {
    param(query, "app")
}

/// A hand-off nonce: 32 lower-case hex digits, as the app makes them.
fn valid_state(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The portal's app cookie: `NAME` or `NAME~NONCE`.
fn app_cookie(headers: &HeaderMap, https: bool) -> Option<(String, Option<String>)> {
    let v = crate::session::cookie_values(headers, app_cookie_name(https)).next()?;
    Some(match v.split_once('~') {
        Some((name, state)) => (name.to_owned(), Some(state.to_owned())),
        None => (v.to_owned(), None),
    })
}

/// The app a portal request is for: its `app` parameter, else the app cookie.
pub(crate) fn chosen_app(query: Option<&str>, headers: &HeaderMap, https: bool) -> Option<String> {
    app_param(query).or_else(|| app_cookie(headers, https).map(|(name, _)| name))
}

/// The hand-off nonce of a portal request: its `state` parameter when it names the app, else
/// the one remembered with the app in the app cookie.
fn handoff_state(query: Option<&str>, headers: &HeaderMap, https: bool) -> Option<String> {
    let state = if app_param(query).is_some() {
        param(query, "state")
    } else {
        app_cookie(headers, https).and_then(|(_, s)| s)
    };
    state.filter(|s| valid_state(s))
}

impl Flow<'_> {
    /// The portal session of a request on the portal.
    fn portal_session(&self, headers: &HeaderMap) -> Result<Claims, SessionError> {
        self.svc.sessions.from_headers(
            headers,
            self.site.cookie_name,
            PORTAL_AUDIENCE,
            self.now_ms(),
            Some(self.site.config.session.idle_timeout),
        )
    }
}
