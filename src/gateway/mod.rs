//! The per-request pipeline, readable top to bottom in [`Gateway::handle`]:
//! route by Host/SNI → normalise the path → who is the client → HTTPS redirect → gateway pages →
//! policy → proxy. Every exit goes through one place that maps errors to responses, counts the
//! request and writes the access-log line.

pub mod error;
pub mod forwarded;
pub mod pages;
pub mod route;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arc_swap::{ArcSwap, Guard};
use http::header::{HeaderValue, LOCATION};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use rustls::pki_types::CertificateDer;

pub use error::{Blame, GateError};

use crate::body::Body;
use crate::clock::Clock;
use crate::config::{AppConfig, Config, HostPattern, Origin, Upstream as UpstreamConfig};
use crate::metrics::{self, AppMetrics, DecisionLabel};
use crate::policy::{self, Decision};
use crate::proxy::{self, HttpClient, ProxyError, Upstream};
use route::Router;

/// The reserved path prefix of the gateway's own pages on every app host.
pub const RESERVED_PREFIX: &str = "/.otpgate/";

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
}

/// An immutable snapshot of everything config-derived; replaced as a whole on reload.
#[derive(Debug)]
pub struct Runtime {
    /// The config it was built from.
    pub config: Arc<Config>,
    /// Apps in config order.
    pub apps: Vec<App>,
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
            apps.push(App {
                origin: a
                    .public_url
                    .clone()
                    .unwrap_or_else(|| default_origin(a, bound)),
                config: a.clone(),
                upstream,
                metrics: AppMetrics::new(&a.name),
            });
        }
        let router = Router::new(apps.iter().map(|a| a.config.hosts.as_slice()));
        Ok(Self {
            config: Arc::new(config),
            apps,
            router,
            clients,
        })
    }

    /// The app serving `host` (normalised).
    pub fn app_for(&self, host: &str) -> Option<&App> {
        self.router.find(host).map(|i| &self.apps[i])
    }
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
    bound: BoundAddrs,
    ready: AtomicBool,
    clock: Arc<dyn Clock>,
}

impl Gateway {
    /// A gateway serving `runtime`.
    pub fn new(runtime: Runtime, bound: BoundAddrs, clock: Arc<dyn Clock>) -> Self {
        Self {
            runtime: ArcSwap::from_pointee(runtime),
            bound,
            ready: AtomicBool::new(false),
            clock,
        }
    }

    /// The current snapshot.
    pub fn runtime(&self) -> Guard<Arc<Runtime>> {
        self.runtime.load()
    }

    /// Replaces the snapshot; requests already running finish on the old one.
    pub fn swap(&self, runtime: Runtime) {
        self.runtime.store(Arc::new(runtime));
    }

    /// The bound listener addresses.
    pub fn bound(&self) -> BoundAddrs {
        self.bound
    }

    /// The injected clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Whether `/readyz` reports ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
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
                    Blame::Client => tracing::debug!(error = %e, "request refused"),
                }
                e.into_response()
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
            return Err(GateError::NotFound);
        }

        // 6. Policy (no sessions yet: anything that needs a login is refused).
        let decision = policy::decide(
            &app.config.policies,
            &policy::Request {
                path,
                ip: client.ip,
            },
            None,
        );
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

        // 7. Upstream.
        let target = proxy::Target {
            app: &app.config.name,
            upstream: &app.upstream,
            timeout: app.config.timeout,
            max_body: app.config.max_request_body,
            preserve_host: app.config.preserve_host,
            metrics: &app.metrics,
        };
        let changed = normalised.is_some();
        let path = normalised.unwrap_or_default();
        Ok(proxy::forward(target, req, &path, changed, client).await?)
    }
}

/// A redirect to an already validated absolute URL.
pub fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut r = Response::new(Body::Empty);
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(LOCATION, v);
    }
    pages::security_headers(r.headers_mut());
    r
}
