//! One request's way through the gateway, readable top to bottom in [`Gateway::handle`]:
//! route by Host/SNI → normalise the path → who is the client → HTTPS redirect → gateway pages
//! → policy stage → proxy stage. Every exit goes through one place that maps errors to
//! responses, logs the failure once with its cause chain, counts the request and writes the
//! access-log line.
//!
//! The pipeline takes any request body that converts into [`RequestBody`], so each stage can be
//! driven in process with a built request and no socket.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use http::header::SET_COOKIE;
use http::{HeaderMap, Request, Response, StatusCode, Version};

use super::error::{Blame, GateError, chain};
use super::route::RouteError;
use super::{
    ConnInfo, Gateway, LOGIN_PATH, RESERVED_PREFIX, route, runtime::App, runtime::Runtime,
};
use crate::access::{self, Permitted, Refusal};
use crate::body::{Body, RequestBody};
use crate::config::AppMode;
use crate::forward_auth;
use crate::http::{redirect, wants_json};
use crate::login::{Flow, Services, Site};
use crate::metrics;
use crate::policy;
use crate::proxy::{self, Downstream, Route, TunnelLimits};
use crate::return_to;
use crate::session;
use crate::users::Users;

use super::forwarded;

/// Where a request was served: an app, the portal (the gateway's own host), or nowhere.
#[derive(Debug, Clone, Copy)]
enum Served<'r> {
    App(&'r App),
    Portal,
    Nowhere,
}

impl<'r> Served<'r> {
    fn app(self) -> Option<&'r App> {
        match self {
            Self::App(a) => Some(a),
            Self::Portal | Self::Nowhere => None,
        }
    }
}

impl Gateway {
    /// Answers one request from a client connection (or a built one, in tests).
    pub async fn handle<B: Into<RequestBody>>(
        &self,
        req: Request<B>,
        conn: &ConnInfo,
    ) -> Response<Body> {
        let req = req.map(Into::into);
        let rt = self.runtime.load_full();
        // The clock is read only for the access line: a clock read is a hundred instructions.
        let access = rt.config.log.access.then(|| {
            (
                req.method().clone(),
                req.uri().path().to_owned(),
                Instant::now(),
            )
        });
        let (served, result) = self.serve(&rt, req, conn).await;
        let app = served.app();
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                let app_name = app.map_or("-", |a| a.config.name.as_str());
                match e.blame() {
                    Blame::Upstream => {
                        tracing::warn!(app = app_name, error = %chain(&e), "upstream failure");
                    }
                    Blame::Internal => {
                        tracing::error!(app = app_name, error = %chain(&e), "request failed");
                    }
                    Blame::Client => {
                        tracing::debug!(app = app_name, error = %chain(&e), "request refused");
                    }
                    Blame::Outage => {
                        tracing::debug!(app = app_name, error = %chain(&e), "login refused: shared state down");
                    }
                }
                e.into_response(&rt.pages)
            }
        };
        match served {
            Served::App(a) => a.metrics.request(response.status()),
            // The portal is the gateway's own host: its requests are not "unrouted".
            Served::Portal => {}
            Served::Nowhere => ::metrics::counter!(metrics::UNROUTED).increment(1),
        }
        if let Some((method, path, started)) = access {
            tracing::info!(
                target: "otpgate::access",
                app = app.map_or("-", |a| a.config.name.as_str()),
                client = %conn.peer.ip(),
                method = %method,
                path = %path,
                status = response.status().as_u16(),
                ms = started.elapsed().as_secs_f64() * 1000.0,
            );
        }
        response
    }

    /// Stage 1, routing: which app, by Host checked against SNI; or, for a trusted front proxy
    /// asking `/.otpgate/auth`, by the host of the request it describes. From anyone else that
    /// path is an ordinary request, judged on its own Host and path (docs/security.md#34).
    async fn serve<'r>(
        &self,
        rt: &'r Runtime,
        req: Request<RequestBody>,
        conn: &ConnInfo,
    ) -> (Served<'r>, Result<Response<Body>, GateError>) {
        if req.uri().path() == forward_auth::AUTH_PATH
            && forwarded::is_trusted(conn.peer.ip().to_canonical(), &rt.config.trusted_proxies)
        {
            let (app, result) = self.forward_auth(rt, &req, conn);
            return (app.map_or(Served::Nowhere, Served::App), result);
        }
        // Routed once per request: the answer also says how the request is counted.
        match route::target(&rt.router, req.uri(), req.headers(), conn.sni.as_deref()) {
            Ok(route::Target::App(idx)) => {
                let app = &rt.apps[idx];
                (Served::App(app), self.serve_app(rt, app, req, conn).await)
            }
            // Boxed, as the login pages are: the portal's future is large and rarely wanted.
            Ok(route::Target::Portal) => {
                let portal = Box::pin(self.serve_portal(rt, req, conn));
                (Served::Portal, portal.await)
            }
            Err(e) => (Served::Nowhere, Err(e.into())),
        }
    }

    async fn serve_app(
        &self,
        rt: &Runtime,
        app: &App,
        req: Request<RequestBody>,
        conn: &ConnInfo,
    ) -> Result<Response<Body>, GateError> {
        // 2. The path policies see is the path that is forwarded.
        let normalised: Option<String> = match crate::path::normalise(req.uri().path())? {
            Cow::Borrowed(_) => None,
            Cow::Owned(p) => Some(p),
        };
        let path = normalised.as_deref().unwrap_or_else(|| req.uri().path());

        // 3. Who the client is (forwarding headers only from trusted proxies).
        let client = forwarded::downstream(conn, req.headers(), &rt.config.trusted_proxies);

        // 4. An app served over HTTPS is never used over plain HTTP.
        if app.origin.https && !client.https {
            let mut target = format!("{}{path}", app.origin);
            if let Some(q) = req.uri().query() {
                target.push('?');
                target.push_str(q);
            }
            return Ok(redirect(StatusCode::PERMANENT_REDIRECT, &target));
        }

        // 5. The gateway's own pages are never proxied.
        if path.starts_with(RESERVED_PREFIX) || path == "/.otpgate" {
            let path = path.to_owned();
            let users = self.users.users_full();
            let flow = self.login_flow(rt, app, &users, &client);
            // Boxed: the login pages' future is large, and proxied requests would otherwise
            // carry (and copy) its size too.
            let pages = Box::pin(crate::login::handle(flow, req, &path));
            return Ok(pages.await?);
        }
        // An app behind its own front proxy is never proxied from here.
        if app.config.mode == AppMode::ForwardAuth {
            return Err(RouteError::UnknownHost.into());
        }

        // 6. The policy stage: a `Permitted`, or why not.
        let users = self.users();
        let facts = policy::Request {
            path,
            ip: client.ip,
        };
        let deps = self.access_deps(rt, &users);
        let permit = match access::authorize(deps, app.access(), &facts, req.headers()) {
            Ok(p) => p,
            Err(r) => return refused(rt, app, (path, req.uri().query()), req.headers(), r),
        };
        drop(users);

        // 7. The proxy stage.
        let tunnel = self.tunnel_limits(rt, &permit, &req)?;
        let route = route_of(rt, app, tunnel);
        let changed = normalised.is_some();
        let path = normalised.unwrap_or_default();
        // Boxed: an async fn's future holds its awaited future beside its own arguments, so
        // each level up the pipeline was about twice the size of the one below and every
        // level was copied as it was created (tens of KiB a request). With the proxy stage on
        // the heap, one allocation replaces those copies (docs/architecture.md, "Futures").
        // In a statement of its own: a temporary lives to the end of its statement, so
        // `Box::pin(f()).await` would keep room for the unboxed future across the await.
        let forward = Box::pin(proxy::forward(permit, route, req, &path, changed, client));
        Ok(forward.await?)
    }

    /// What the policy stage reads, from this gateway and the runtime serving now.
    pub(super) fn access_deps<'a>(&'a self, rt: &'a Runtime, users: &'a Users) -> access::Deps<'a> {
        access::Deps {
            sessions: &self.sessions,
            users,
            now_ms: self.clock.now_ms(),
            idle: rt.config.session.idle_timeout,
            assertion: rt
                .config
                .identity_assertion
                .as_ref()
                .map(|c| (&self.assertions, c)),
            service_tokens: &rt.service_tokens,
            audit: &rt.audit,
        }
    }

    /// A WebSocket upgrade needs a tunnel slot; the tunnel ends with the session, or when the
    /// service token that opened it expires.
    fn tunnel_limits(
        &self,
        rt: &Runtime,
        permit: &Permitted,
        req: &Request<RequestBody>,
    ) -> Result<Option<TunnelLimits>, GateError> {
        // The one place the upgrade is decided: a WebSocket upgrade is HTTP/1.1 only, and a
        // request that will not be tunnelled takes no tunnel slot. The proxy stage tunnels
        // exactly when this gave limits.
        if req.version() != Version::HTTP_11 || !proxy::headers::wants_websocket(req.headers()) {
            return Ok(None);
        }
        let slot = self
            .tunnels
            .clone()
            .try_acquire_owned()
            .map_err(|_| GateError::Busy)?;
        let claims = permit.claims();
        let now_ms = self.clock.now_ms();
        Ok(Some(TunnelLimits {
            permit: slot,
            idle: rt.config.limits.idle_timeout,
            max_lifetime: permit
                .ends_ms()
                .map(|end| Duration::from_millis(end.saturating_sub(now_ms))),
            shutdown: self.shutdown.clone(),
            session: claims.map(|c| (self.sessions.revocations_arc(), c.clone())),
        }))
    }

    /// The parts a request for a login page may use.
    fn login_flow<'a>(
        &'a self,
        rt: &'a Runtime,
        app: &'a App,
        users: &'a Users,
        client: &Downstream,
    ) -> Flow<'a> {
        Flow::new(
            self.services(rt, users),
            Site {
                config: &rt.config,
                pages: &rt.pages,
                audit: &rt.audit,
                origins: &rt.origins,
                app: &app.config,
                origin: &app.origin,
                cookie_name: app.cookie_name,
                session_lifetime: app.session_lifetime,
                portal_for: None,
            },
            client.ip,
        )
    }

    /// The long-lived parts the login pages use.
    pub(super) fn services<'a>(&'a self, rt: &Runtime, users: &'a Users) -> Services<'a> {
        Services {
            sessions: &self.sessions,
            state: &self.state,
            store: &self.store,
            mailer: &self.mailer,
            outbox: matches!(
                rt.config.mail.transport,
                crate::config::MailTransport::Outbox(_)
            ),
            users,
            clock: &self.clock,
            random: &self.random,
            assertions: &self.assertions,
        }
    }
}

/// How the app's requests are forwarded.
fn route_of<'a>(rt: &'a Runtime, app: &'a App, tunnel: Option<TunnelLimits>) -> Route<'a> {
    Route {
        app: &app.config.name,
        upstream: &app.upstream,
        timeout: app.config.timeout,
        max_body: app.config.max_request_body,
        preserve_host: app.config.preserve_host,
        strip: &app.strip,
        identity: &app.config.identity_headers,
        metrics: &app.metrics,
        tunnel,
        credential_headers: rt.service_tokens.headers(),
    }
}

/// The answer to a request the policy stage refused; `at` is its path and query.
fn refused(
    rt: &Runtime,
    app: &App,
    (path, query): (&str, Option<&str>),
    headers: &HeaderMap,
    refusal: Refusal,
) -> Result<Response<Body>, GateError> {
    match refusal {
        Refusal::Forbidden => Err(GateError::Forbidden),
        Refusal::InvalidServiceToken => Ok(invalid_service_token(rt)),
        Refusal::LoginRequired { clear_cookie } => {
            Ok(login_required(rt, app, path, query, headers, clear_cookie))
        }
    }
}

/// A bad service token: a script gets JSON it can read, never a login page
/// (docs/product.md#s4).
pub(super) fn invalid_service_token(rt: &Runtime) -> Response<Body> {
    rt.pages.json(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({ "error": "invalid_service_token" }),
    )
}

/// No usable session: browsers are sent to the login page, API clients get 401 JSON
/// (docs/product.md#s4). A cookie that was sent but did not open is deleted.
pub(super) fn login_required(
    rt: &Runtime,
    app: &App,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    clear: bool,
) -> Response<Body> {
    let login_url = login_url(app, path, query);
    let mut response = if wants_json(headers) {
        rt.pages.json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({ "error": "login_required", "login_url": login_url }),
        )
    } else {
        redirect(StatusCode::FOUND, &login_url)
    };
    if clear && let Some(c) = session::clear_cookie(app.cookie_name, app.origin.https) {
        response.headers_mut().append(SET_COOKIE, c);
    }
    response
}

/// The app's login page with the original URL, rebuilt on the app's public origin, as `rd`.
pub(super) fn login_url(app: &App, path: &str, query: Option<&str>) -> String {
    let mut original = format!("{}{path}", app.origin);
    if let Some(q) = query {
        original.push('?');
        original.push_str(q);
    }
    return_to::with_rd(&format!("{}{LOGIN_PATH}", app.origin), &original)
}
