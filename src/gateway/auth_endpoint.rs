//! The forward-auth endpoint, `/.otpgate/auth`, for a trusted front proxy asking about a request
//! it is about to forward (docs/product.md#s4). It runs the proxy-mode stages on the described
//! request instead of the auth request itself: route the described host, normalise the
//! described path (ambiguous spellings get `400`, docs/security.md#35), find the client behind
//! the proxy, and ask `access::authorize`. Nothing is forwarded and nothing waits on the
//! network, so an answer costs no more than the policy stage of a proxied request.

use http::header::SET_COOKIE;
use http::{HeaderMap, Request, Response};

use super::error::GateError;
use super::pipeline::{invalid_service_token, login_required, login_url};
use super::route::{self, RouteError};
use super::runtime::{App, Runtime};
use super::{ConnInfo, Gateway, RESERVED_PREFIX, forwarded};
use crate::access::{self, Refusal};
use crate::body::{Body, RequestBody};
use crate::config::AppMode;
use crate::forward_auth::{self, Answer, ForwardAuthError, Original};
use crate::http::wants_json;
use crate::policy;
use crate::session;

impl Gateway {
    /// Answers a trusted front proxy's question about the request its headers describe.
    pub(super) fn forward_auth<'r>(
        &self,
        rt: &'r Runtime,
        req: &Request<RequestBody>,
        conn: &ConnInfo,
    ) -> (Option<&'r App>, Result<Response<Body>, GateError>) {
        let original = match forward_auth::describe(req.headers(), req.uri().query()) {
            Ok(o) => o,
            Err(e) => return (None, Err(e.into())),
        };
        match described_app(rt, &original) {
            Ok(app) => (
                Some(app),
                self.judge(rt, app, &original, req.headers(), conn),
            ),
            Err(e) => (None, Err(e)),
        }
    }

    /// The policy stage on the described request.
    fn judge(
        &self,
        rt: &Runtime,
        app: &App,
        original: &Original<'_>,
        headers: &HeaderMap,
        conn: &ConnInfo,
    ) -> Result<Response<Body>, GateError> {
        let path = crate::path::normalise(original.path)?;
        // As in proxy mode, the gateway's own pages never reach an app, however the front
        // proxy's routing spelt them.
        if path.starts_with(RESERVED_PREFIX) || path == "/.otpgate" {
            return Err(ForwardAuthError::ReservedPath.into());
        }
        let client = forwarded::downstream(conn, headers, &rt.config.trusted_proxies);
        let users = self.users();
        let deps = self.access_deps(rt, &users);
        let facts = policy::Request {
            path: &path,
            ip: client.ip,
        };
        match access::authorize(deps, app.access(), &facts, headers) {
            Ok(permit) => Ok(forward_auth::allowed(permit, &app.config.identity_headers)),
            Err(Refusal::Forbidden) => Err(GateError::Forbidden),
            // A script gets JSON it can read, as in proxy mode (docs/product.md#s4).
            Err(Refusal::InvalidServiceToken) => Ok(invalid_service_token(rt)),
            Err(Refusal::LoginRequired { clear_cookie }) => Ok(match original.answer {
                Answer::Redirect => {
                    login_required(rt, app, &path, original.query, headers, clear_cookie)
                }
                Answer::Status => {
                    let url = login_url(app, &path, original.query);
                    let mut r = forward_auth::login_status(&rt.pages, &url, !wants_json(headers));
                    if clear_cookie
                        && let Some(c) = session::clear_cookie(app.cookie_name, app.origin.https)
                    {
                        r.headers_mut().append(SET_COOKIE, c);
                    }
                    r
                }
            }),
        }
    }
}

/// The forward-auth app the description names. Its hosts are routed as the Host of a proxied
/// request is; when the description names the host twice, both must be the same.
fn described_app<'r>(rt: &'r Runtime, original: &Original<'_>) -> Result<&'r App, GateError> {
    let host = route::normalise(original.host).map_err(RouteError::from)?;
    if let Some(other) = original.also_host
        && route::normalise(other).map_err(RouteError::from)? != host
    {
        return Err(ForwardAuthError::HostsDisagree.into());
    }
    let app = rt.app_for(&host).ok_or(RouteError::UnknownHost)?;
    if app.config.mode != AppMode::ForwardAuth {
        return Err(ForwardAuthError::NotForwardAuth.into());
    }
    Ok(app)
}
