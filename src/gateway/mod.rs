//! The per-request pipeline, readable top to bottom in [`Gateway::handle`]:
//! route by Host/SNI → normalise the path → who is the client → HTTPS redirect → gateway pages →
//! policy → proxy. Every exit goes through one place that maps errors to responses, counts the
//! request and writes the access-log line.

pub mod error;
pub mod forwarded;
pub mod route;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption, Guard};
use http::header::{ACCEPT, HeaderValue, LOCATION, SET_COOKIE};
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;
use rustls::pki_types::CertificateDer;

pub use error::{Blame, GateError};

use crate::audit::{Audit, AuditError};
use crate::body::Body;
use crate::clock::Clock;
use crate::config::{AppConfig, Config, HostPattern, Origin, Upstream as UpstreamConfig};
use crate::mailer::Mailer;
use crate::metrics::{self, AppMetrics, DecisionLabel};
use crate::pages::{Pages, PagesError};
use crate::policy::{self, Decision};
use crate::proxy::{self, HttpClient, ProxyError, Upstream};
use crate::random::Random;
use crate::return_to;
use crate::session::{self, Claims, SessionError, Sessions};
use crate::state::State;
use crate::store::Credentials;
use crate::users::{DirectorySnapshot, Users};
use route::Router;

/// The reserved path prefix of the gateway's own pages on every app host.
pub const RESERVED_PREFIX: &str = "/.otpgate/";
/// The login page (stable).
pub const LOGIN_PATH: &str = crate::login::LOGIN_PATH;

/// What the server knows about a client connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The SNI name the client sent, if any.
    pub sni: Option<Box<str>>,
}

/// The addresses the listeners are bound to (ports resolved when `:0` was asked for).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BoundAddrs {
    /// Plain HTTP.
    pub http: Option<SocketAddr>,
    /// HTTPS.
    pub https: Option<SocketAddr>,
    /// Admin.
    pub admin: Option<SocketAddr>,
}

/// Problems building a runtime from a config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An upstream client could not be set up.
    #[error("app {app}: {source}")]
    Client {
        /// The app.
        app: String,
        /// Why.
        source: ProxyError,
    },
    /// The audit log could not be opened.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A page template is broken.
    #[error(transparent)]
    Pages(#[from] PagesError),
}

/// One app, ready to serve.
#[derive(Debug)]
pub struct App {
    /// Its configuration.
    pub config: AppConfig,
    /// The origin users see.
    pub origin: Origin,
    /// Where requests go.
    pub upstream: Upstream,
    /// Metric handles.
    pub metrics: Arc<AppMetrics>,
    /// The gateway cookie's name on this app (`__Host-otpgate` on https origins).
    pub cookie_name: &'static str,
    /// Session lifetime on this app.
    pub session_lifetime: Duration,
}

/// An immutable snapshot of everything config-derived; replaced as a whole on reload.
#[derive(Debug)]
pub struct Runtime {
    /// The config it was built from.
    pub config: Arc<Config>,
    /// Apps in config order.
    pub apps: Vec<App>,
    /// Every app's origin (the allowed return targets).
    pub origins: Vec<Origin>,
    /// The audit log.
    pub audit: Audit,
    /// Page and mail templates.
    pub pages: Pages,
    router: Router,
    clients: Vec<(Vec<CertificateDer<'static>>, Arc<HttpClient>)>,
}

impl Runtime {
    /// Builds the snapshot. Upstream clients of `previous` are reused where the trust settings
    /// are the same, so a reload keeps pooled connections.
    pub fn build(
        config: Config,
        bound: &BoundAddrs,
        previous: Option<&Self>,
    ) -> Result<Self, BuildError> {
        let mut clients: Vec<(Vec<CertificateDer<'static>>, Arc<HttpClient>)> = Vec::new();
        let mut apps = Vec::with_capacity(config.apps.len());
        for a in &config.apps {
            let upstream = match &a.upstream {
                UpstreamConfig::Echo => Upstream::Echo,
                UpstreamConfig::Http { https, authority } => {
                    let existing = clients
                        .iter()
                        .chain(previous.map_or(&[][..], |p| &p.clients[..]))
                        .find(|(ca, _)| *ca == a.upstream_ca)
                        .map(|(_, c)| c.clone());
                    let client = match existing {
                        Some(c) => c,
                        None => proxy::client::build(&a.upstream_ca).map(Arc::new).map_err(
                            |source| BuildError::Client {
                                app: a.name.clone(),
                                source,
                            },
                        )?,
                    };
                    if !clients.iter().any(|(ca, _)| *ca == a.upstream_ca) {
                        clients.push((a.upstream_ca.clone(), client.clone()));
                    }
                    let scheme = if *https {
                        http::uri::Scheme::HTTPS
                    } else {
                        http::uri::Scheme::HTTP
                    };
                    Upstream::Http {
                        client,
                        scheme,
                        authority: authority.clone(),
                    }
                }
            };
            let origin = app_origin(a, bound);
            apps.push(App {
                cookie_name: session::cookie_name(origin.https),
                session_lifetime: a.session_duration.unwrap_or(config.session.duration),
                origin,
                config: a.clone(),
                upstream,
                metrics: AppMetrics::new(&a.name),
            });
        }
        let router = Router::new(apps.iter().map(|a| a.config.hosts.as_slice()));
        let origins = apps.iter().map(|a| a.origin.clone()).collect();
        let audit = Audit::open(&config.audit)?;
        let pages = Pages::load(config.templates_dir.as_deref())?;
        Ok(Self {
            config: Arc::new(config),
            apps,
            origins,
            audit,
            pages,
            router,
            clients,
        })
    }

    /// The app serving `host` (normalised).
    pub fn app_for(&self, host: &str) -> Option<&App> {
        self.router.find(host).map(|i| &self.apps[i])
    }
}

/// An app's public origin: its `public_url`, else [`default_origin`].
pub fn app_origin(a: &AppConfig, bound: &BoundAddrs) -> Origin {
    a.public_url
        .clone()
        .unwrap_or_else(|| default_origin(a, bound))
}

/// An app's origin when `public_url` is not set: the HTTPS listener if there is one, else the
/// HTTP listener, with the app's first host.
fn default_origin(a: &AppConfig, bound: &BoundAddrs) -> Origin {
    let host = match a.hosts.first() {
        Some(HostPattern::Exact(h)) => h.clone(),
        // Validation requires public_url for wildcard-first apps.
        Some(HostPattern::Wildcard(s)) => s.clone(),
        None => "localhost".to_owned(),
    };
    match (bound.https, bound.http) {
        (Some(a), _) => Origin {
            https: true,
            host,
            port: a.port(),
        },
        (None, Some(a)) => Origin {
            https: false,
            host,
            port: a.port(),
        },
        (None, None) => Origin {
            https: true,
            host,
            port: 443,
        },
    }
}

/// The gateway: shared by every connection.
#[derive(Debug)]
pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    /// The config's users merged with the directory snapshot; rebuilt when either changes.
    users: ArcSwap<Users>,
    /// The directory snapshot serving now.
    directory: ArcSwapOption<DirectorySnapshot>,
    /// Serialises rebuilds of `users`, so a reload and a sync finishing together cannot leave
    /// a table built from an outdated half.
    users_rebuild: std::sync::Mutex<()>,
    bound: BoundAddrs,
    ready: AtomicBool,
    clock: Arc<dyn Clock>,
    random: Arc<dyn Random>,
    sessions: Sessions,
    credentials: Credentials,
    state: State,
    mailer: Mailer,
    tunnels: Arc<tokio::sync::Semaphore>,
    shutdown: tokio_util::sync::CancellationToken,
}

/// The long-lived parts of a gateway, made once at start.
#[derive(Debug)]
pub struct Parts {
    /// Wall time.
    pub clock: Arc<dyn Clock>,
    /// Randomness.
    pub random: Arc<dyn Random>,
    /// Session keys and revocations.
    pub sessions: Sessions,
    /// The durable store.
    pub credentials: Credentials,
    /// Ephemeral shared state (codes, rate limits).
    pub state: State,
    /// Outgoing mail.
    pub mailer: Mailer,
    /// Fired on shutdown (ends WebSocket tunnels).
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl Gateway {
    /// A gateway serving `runtime`.
    pub fn new(runtime: Runtime, bound: BoundAddrs, parts: Parts) -> Self {
        // Tunnels count against the same limit as client connections (set at start).
        let tunnels = runtime.config.limits.max_connections;
        let users = Users::from_config(&runtime.config.users);
        Self {
            users: ArcSwap::from_pointee(users),
            directory: ArcSwapOption::empty(),
            users_rebuild: std::sync::Mutex::new(()),
            runtime: ArcSwap::from_pointee(runtime),
            bound,
            ready: AtomicBool::new(false),
            clock: parts.clock,
            random: parts.random,
            tunnels: Arc::new(tokio::sync::Semaphore::new(tunnels)),
            sessions: parts.sessions,
            credentials: parts.credentials,
            state: parts.state,
            mailer: parts.mailer,
            shutdown: parts.shutdown,
        }
    }

    /// Sessions (keys, revocations).
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Ephemeral shared state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Outgoing mail.
    pub fn mailer(&self) -> &Mailer {
        &self.mailer
    }

    /// Whether mail goes to the development outbox (suppressed codes are then logged at info).
    pub fn mail_is_outbox(&self) -> bool {
        matches!(
            self.runtime.load().config.mail.transport,
            crate::config::MailTransport::Outbox(_)
        )
    }

    /// The durable store.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The injected randomness.
    pub fn random(&self) -> &Arc<dyn Random> {
        &self.random
    }

    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.now().as_millis()).unwrap_or(u64::MAX)
    }

    /// The current snapshot.
    pub fn runtime(&self) -> Guard<Arc<Runtime>> {
        self.runtime.load()
    }

    /// Replaces the snapshot; requests already running finish on the old one. The user table
    /// is rebuilt with the new config's users.
    pub fn swap(&self, runtime: Runtime) {
        let _serial = self
            .users_rebuild
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.runtime.store(Arc::new(runtime));
        self.rebuild_users();
    }

    /// The user table: the config's users merged with the directory snapshot.
    pub fn users(&self) -> Guard<Arc<Users>> {
        self.users.load()
    }

    /// The directory snapshot serving now, if any.
    pub fn directory_snapshot(&self) -> Option<Arc<DirectorySnapshot>> {
        self.directory.load_full()
    }

    /// Puts a directory snapshot in service (or removes it with `None`) and rebuilds the user
    /// table; the next request sees the new groups. A snapshot taken with other directory
    /// settings than the running config's (a sync that finished while a reload changed them)
    /// is refused: returns whether it was taken.
    pub fn set_directory_snapshot(&self, snapshot: Option<Arc<DirectorySnapshot>>) -> bool {
        let _serial = self
            .users_rebuild
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = &snapshot {
            let current = self
                .runtime
                .load()
                .config
                .directory
                .as_ref()
                .map(|d| d.fingerprint());
            if current.as_deref() != Some(s.fingerprint.as_str()) {
                return false;
            }
        }
        self.directory.store(snapshot);
        self.rebuild_users();
        true
    }

    fn rebuild_users(&self) {
        let rt = self.runtime.load();
        let directory = self.directory.load();
        self.users.store(Arc::new(Users::merged(
            &rt.config.users,
            directory.as_deref(),
        )));
    }

    /// The bound listener addresses.
    pub fn bound(&self) -> BoundAddrs {
        self.bound
    }

    /// The injected clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Whether `/readyz` reports ready: started and not shutting down, and, with a directory
    /// configured, a directory snapshot in service (a failed sync alone does not make the
    /// gateway unready while an earlier snapshot serves).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && (self.runtime.load().config.directory.is_none() || self.directory.load().is_some())
    }

    /// Sets readiness.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Answers one request from a client connection.
    pub async fn handle(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<Body> {
        let rt = self.runtime.load_full();
        let started = Instant::now();
        let access = rt
            .config
            .log
            .access
            .then(|| (req.method().clone(), req.uri().path().to_owned()));
        let (app, result) = self.serve(&rt, req, conn).await;
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                match e.blame() {
                    Blame::Upstream => {
                        tracing::warn!(app = app.map_or("-", |a| a.config.name.as_str()), error = %e, "upstream failure");
                    }
                    Blame::Internal => tracing::error!(error = %e, "request failed"),
                    Blame::Client => tracing::debug!(error = %e, "request refused"),
                }
                e.into_response(&rt.pages)
            }
        };
        match app {
            Some(a) => a.metrics.request(response.status()),
            None => ::metrics::counter!(metrics::UNROUTED).increment(1),
        }
        if let Some((method, path)) = access {
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

    async fn serve<'r>(
        &self,
        rt: &'r Runtime,
        req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> (Option<&'r App>, Result<Response<Body>, GateError>) {
        // 1. Which app: by Host, checked against SNI.
        let idx = match route::request_host(req.uri(), req.headers()) {
            Ok(host) => rt.router.find(&host),
            Err(e) => return (None, Err(e.into())),
        };
        let Some(idx) = idx else {
            return (None, Err(GateError::UnknownHost));
        };
        if let Some(sni) = conn.sni.as_deref()
            && rt
                .router
                .find(&sni.to_ascii_lowercase())
                .is_some_and(|s| s != idx)
        {
            return (None, Err(GateError::Misdirected));
        }
        let app = &rt.apps[idx];
        (Some(app), self.serve_app(rt, app, req, conn).await)
    }

    async fn serve_app(
        &self,
        rt: &Runtime,
        app: &App,
        req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> Result<Response<Body>, GateError> {
        // 2. The path policies see is the path that is forwarded.
        let normalised: Option<String> = match crate::path::normalise(req.uri().path())? {
            Cow::Borrowed(_) => None,
            Cow::Owned(p) => Some(p),
        };
        let path = normalised.as_deref().unwrap_or_else(|| req.uri().path());

        // 3. Who the client is (forwarding headers only from trusted proxies).
        let trusted = &rt.config.trusted_proxies;
        let peer = conn.peer.ip().to_canonical();
        let peer_trusted = forwarded::is_trusted(peer, trusted);
        let client = proxy::Client {
            ip: forwarded::client_ip(peer, req.headers(), trusted),
            peer,
            peer_trusted,
            https: forwarded::client_https(conn.tls, peer_trusted, req.headers()),
        };

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
            let ctx = crate::login::Ctx {
                gw: self,
                rt,
                app,
                ip: client.ip,
            };
            return crate::login::handle(ctx, req, &path).await;
        }

        // 6. Policy: first without an identity; only when the answer depends on who it is,
        //    open the session and decide again with the identity (SECURITY.md 33, 36).
        let facts = policy::Request {
            path,
            ip: client.ip,
        };
        let mut session = None;
        let decision = match policy::decide(&app.config.policies, &facts, None) {
            Decision::LoginRequired(_) | Decision::Allow(_) => {
                let now_ms = self.now_ms();
                let idle = Some(rt.config.session.idle_timeout);
                match self.sessions.from_headers(
                    req.headers(),
                    app.cookie_name,
                    &app.config.name,
                    now_ms,
                    idle,
                ) {
                    Err(e) => {
                        app.metrics.decision(DecisionLabel::LoginRequired);
                        if e != SessionError::Missing {
                            app.metrics.session_rejected(e.label());
                        }
                        let clear = e != SessionError::Missing;
                        return Ok(self.login_required(
                            &rt.pages,
                            app,
                            path,
                            req.uri().query(),
                            req.headers(),
                            clear,
                        ));
                    }
                    Ok(claims) => {
                        let users = self.users();
                        let user = users.by_email(claims.email.as_str());
                        let groups = user.map_or(&[][..], |u| &u.groups[..]);
                        let who = policy::Identity {
                            email: &claims.email,
                            groups,
                            login_method: claims.method,
                        };
                        let d = policy::decide(&app.config.policies, &facts, Some(&who));
                        if d.permits() {
                            let refreshed = self.refresh_cookie(
                                app,
                                &claims,
                                rt.config.session.idle_timeout,
                                now_ms,
                            );
                            session = Some((identity_headers(&claims, user), refreshed, claims));
                        }
                        d
                    }
                }
            }
            d => d,
        };
        app.metrics.decision(match decision {
            Decision::Bypass(_) => DecisionLabel::Bypass,
            Decision::Allow(_) => DecisionLabel::Allow,
            Decision::Block(_) => DecisionLabel::Block,
            Decision::LoginRequired(_) => DecisionLabel::LoginRequired,
            Decision::NoMatch => DecisionLabel::NoMatch,
        });
        if !decision.permits() {
            return Err(GateError::Forbidden);
        }

        // 7. Upstream. A WebSocket upgrade needs a tunnel slot; the tunnel ends with the session.
        let (identity, refreshed, claims) = match session {
            Some((i, r, c)) => (Some(i), r, Some(c)),
            None => (None, None, None),
        };
        let tunnel = if proxy::headers::wants_websocket(req.headers()) {
            let permit = self
                .tunnels
                .clone()
                .try_acquire_owned()
                .map_err(|_| GateError::Busy)?;
            let max_lifetime = claims
                .as_ref()
                .map(|c| Duration::from_millis(c.expires_ms.saturating_sub(self.now_ms())));
            Some(proxy::TunnelLimits {
                permit,
                idle: rt.config.limits.idle_timeout,
                max_lifetime,
                shutdown: self.shutdown.clone(),
                session: claims.map(|c| (self.sessions.revocations_arc(), c)),
            })
        } else {
            None
        };
        let target = proxy::Target {
            app: &app.config.name,
            upstream: &app.upstream,
            timeout: app.config.timeout,
            max_body: app.config.max_request_body,
            preserve_host: app.config.preserve_host,
            metrics: &app.metrics,
            identity,
            tunnel,
        };
        let changed = normalised.is_some();
        let path = normalised.unwrap_or_default();
        let mut response = proxy::forward(target, req, &path, changed, client).await?;
        if let Some(cookie) = refreshed {
            let h = response.headers_mut();
            h.append(SET_COOKIE, cookie);
            // A response carrying a session must never be stored by a shared cache.
            h.insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            );
        }
        Ok(response)
    }

    /// No usable session: browsers are sent to the login page, API clients get 401 JSON
    /// (SPEC.md §4). A cookie that was sent but did not open is deleted.
    fn login_required(
        &self,
        pages: &Pages,
        app: &App,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        clear: bool,
    ) -> Response<Body> {
        let mut original = format!("{}{path}", app.origin);
        if let Some(q) = query {
            original.push('?');
            original.push_str(q);
        }
        let login_url = return_to::with_rd(&format!("{}{LOGIN_PATH}", app.origin), &original);
        let mut response = if wants_json(headers) {
            pages.json(
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

    /// A fresh cookie with a new activity time, when an idle timeout is configured and the
    /// last refresh is old enough (at most once a minute per session).
    fn refresh_cookie(
        &self,
        app: &App,
        claims: &Claims,
        idle: Duration,
        now_ms: u64,
    ) -> Option<HeaderValue> {
        let idle_ms = u64::try_from(idle.as_millis()).ok()?;
        let refresh_after = (idle_ms / 10).clamp(1_000, 60_000);
        if now_ms.saturating_sub(claims.refreshed_ms) < refresh_after {
            return None;
        }
        let value = self.sessions.refresh(claims, now_ms).ok()?;
        let left = Duration::from_millis(claims.expires_ms.saturating_sub(now_ms));
        session::set_cookie(app.cookie_name, &value, left, app.origin.https)
    }
}

/// Whether a request is an API call rather than a page navigation (SPEC.md §4).
fn wants_json(h: &HeaderMap) -> bool {
    let accept = h.get(ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let fetch_mode = h.get("sec-fetch-mode").and_then(|v| v.to_str().ok());
    let xhr = h
        .get("x-requested-with")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("XMLHttpRequest"));
    (accept.contains("application/json") && !accept.contains("text/html"))
        || xhr
        || fetch_mode.is_some_and(|m| m != "navigate")
}

/// The identity headers for an allowed request.
fn identity_headers(claims: &Claims, user: Option<&Arc<crate::users::User>>) -> proxy::Identity {
    let email = HeaderValue::from_str(claims.email.as_str())
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    let user_id = user
        .and_then(|u| HeaderValue::from_str(&u.id).ok())
        .unwrap_or_else(|| email.clone());
    let groups = user.map_or_else(|| HeaderValue::from_static(""), |u| u.groups_header.clone());
    proxy::Identity {
        email,
        user: user_id,
        groups,
    }
}

/// A redirect to an already validated absolute URL.
pub fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut r = Response::new(Body::Empty);
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(LOCATION, v);
    }
    crate::pages::static_headers(r.headers_mut());
    r
}
