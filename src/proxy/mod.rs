//! Forwarding to the upstream: URI rewrite, header hygiene, the size limit, the response-head
//! timeout, streaming bodies both ways, and protocol upgrades (WebSocket) as a byte tunnel.

pub mod client;
pub mod echo;
pub mod h1;
pub mod headers;
pub mod plan;
pub mod pool;
pub mod strip;

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use http::header::{CACHE_CONTROL, CONTENT_LENGTH, HOST, HeaderValue, SET_COOKIE, TE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::Limited;
use hyper_util::rt::TokioIo;

pub use client::UpstreamBody;
pub use headers::ForwardInfo;
pub use plan::Plan;
pub use pool::Pool;
pub use strip::Strip;

use crate::access::Permitted;
use crate::body::{Body, RequestBody};
use crate::config::IdentityHeaders;
use crate::metrics::AppMetrics;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Upstream failures.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request body exceeds the app's limit (413).
    #[error("request body too large")]
    TooLarge,
    /// No response head within the app's timeout (504).
    #[error("upstream did not answer in time")]
    Timeout,
    /// The upstream could not be reached (502).
    #[error("upstream unreachable: {0}")]
    Connect(#[source] BoxError),
    /// Any other upstream failure (502).
    #[error("upstream failed: {0}")]
    Upstream(#[source] BoxError),
}

impl ProxyError {
    fn from_hyper(e: hyper::Error) -> Self {
        let mut src: Option<&(dyn StdError + 'static)> = e.source();
        while let Some(s) = src {
            if s.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Self::TooLarge;
            }
            src = s.source();
        }
        Self::Upstream(Box::new(e))
    }
}

/// Where an app's requests go, ready to use.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// An HTTP(S) server and its connections (shared by apps with the same upstream and
    /// settings, and kept across reloads).
    Http(Arc<Pool>),
    /// The built-in echo app.
    Echo,
}

/// One app's forwarding settings.
#[derive(Debug)]
pub struct Route<'a> {
    /// The app's name (for echo and logs).
    pub(crate) app: &'a str,
    /// Where to send the request.
    pub(crate) upstream: &'a Upstream,
    /// Time allowed for the response head.
    pub(crate) timeout: Duration,
    /// Largest request body.
    pub(crate) max_body: Option<u64>,
    /// Send the client's Host upstream.
    pub(crate) preserve_host: bool,
    /// Request headers removed before anything else is set (docs/security.md#40).
    pub(crate) strip: &'a Strip,
    /// The names the identity goes under.
    pub(crate) identity: &'a IdentityHeaders,
    /// Metric handles.
    pub(crate) metrics: &'a AppMetrics,
    /// Limits for the tunnel: present exactly when the request is an HTTP/1.1 WebSocket upgrade
    /// (the pipeline's `tunnel_limits` decides; without them no upgrade is passed through).
    pub(crate) tunnel: Option<TunnelLimits>,
    /// The service-token headers as configured: never forwarded (docs/security.md#34).
    pub(crate) credential_headers: [&'a http::HeaderName; 2],
}

/// What keeps an upgraded (WebSocket) connection in check once it is a plain byte tunnel:
/// a slot among `limits.max_connections`, the idle timeout, the session's expiry and
/// revocation, and the gateway's shutdown.
#[derive(Debug)]
pub struct TunnelLimits {
    /// The tunnel's slot; released when it ends.
    pub permit: tokio::sync::OwnedSemaphorePermit,
    /// Closed after this long without traffic.
    pub idle: Duration,
    /// Closed at the latest after this long (what is left of the session).
    pub max_lifetime: Option<Duration>,
    /// Closed on shutdown.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Closed when this session is revoked.
    pub session: Option<(Arc<crate::session::Revocations>, crate::session::Claims)>,
}

/// Facts about the downstream client, for the forwarding headers.
#[derive(Debug, Clone, Copy)]
pub struct Downstream {
    /// The resolved client address.
    pub ip: std::net::IpAddr,
    /// The direct peer.
    pub peer: std::net::IpAddr,
    /// Whether the peer is a trusted proxy.
    pub peer_trusted: bool,
    /// Whether the client used HTTPS.
    pub https: bool,
}

/// Forwards `req`, which the policy stage let in (`permit`), and whose path was normalised to
/// `path` (`changed` when normalisation altered it); returns the upstream's response with a
/// streamed body, carrying the refreshed session cookie when one is due.
pub async fn forward(
    mut permit: Permitted,
    t: Route<'_>,
    req: Request<RequestBody>,
    path: &str,
    changed: bool,
    client: Downstream,
) -> Result<Response<Body>, ProxyError> {
    let refreshed = permit.take_refreshed();
    let mut response = send(&permit, t, req, path, changed, client).await?;
    if let Some(cookie) = refreshed {
        let h = response.headers_mut();
        h.append(SET_COOKIE, cookie);
        // A response carrying a session must never be stored by a shared cache.
        h.insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    }
    Ok(response)
}

async fn send(
    permit: &Permitted,
    t: Route<'_>,
    mut req: Request<RequestBody>,
    path: &str,
    changed: bool,
    client: Downstream,
) -> Result<Response<Body>, ProxyError> {
    if let Some(max) = t.max_body
        && declared_length(req.headers()).is_some_and(|n| n > max)
    {
        return Err(ProxyError::TooLarge);
    }
    // Decided by the pipeline, which gives tunnel limits only to an HTTP/1.1 WebSocket upgrade.
    let upgrade = t.tunnel.is_some();
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let tunnel = t.tunnel;
    // gRPC needs `TE: trailers`; a hop-by-hop header, it is set again for HTTP/2 upstreams only.
    let te_trailers = headers::has(req.headers(), &TE)
        && req
            .headers()
            .get_all(TE)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let (mut parts, body) = req.into_parts();
    let (orig_host, mut plan) = plan_headers(
        &parts,
        permit,
        (t.strip, t.identity, t.credential_headers),
        client,
        upgrade,
    );
    let path_and_query = path_and_query(&parts.uri, path, changed)?;
    let body = Limited::new(
        body,
        t.max_body
            .map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX)),
    );

    let pool = match t.upstream {
        Upstream::Echo => {
            plan.apply(&mut parts.headers);
            parts.uri = Uri::from_parts({
                let mut p = http::uri::Parts::default();
                p.path_and_query = Some(path_and_query);
                p
            })
            .map_err(|e| ProxyError::Upstream(Box::new(e)))?;
            let echo = Box::pin(echo::respond(t.app, t.identity, &parts, body));
            return echo.await;
        }
        Upstream::Http(pool) => pool,
    };

    let preserved = if t.preserve_host { orig_host } else { None };
    // A bodiless GET or HEAD to an HTTP/1.1 upstream: its head is written straight onto a
    // pooled connection (see `h1`).
    if !upgrade
        && pool.direct()
        && (parts.method == Method::GET || parts.method == Method::HEAD)
        && http_body::Body::is_end_stream(&body)
    {
        match preserved {
            Some(host) => plan.add(HOST, host),
            None => plan.add_ref(&HOST, pool.host()),
        }
        let send = pool.send_direct(&parts.method, |out| {
            h1::head::encode(
                &parts.method,
                path_and_query.as_str(),
                &parts.headers,
                &plan,
                out,
            );
        });
        let mut resp = timed(send, t.timeout, t.metrics).await?;
        crate::session::strip_gateway_set_cookies(resp.headers_mut());
        return Ok(resp);
    }
    plan.apply(&mut parts.headers);
    // Origin form; HTTP/2 gets scheme and authority in `prepare`.
    parts.uri = Uri::from(path_and_query);
    // Boxed: hyper's client future is several KiB; the direct path above stays inline.
    let exchanged = Box::pin(exchange(
        pool,
        Request::from_parts(parts, body),
        (upgrade, te_trailers),
        preserved.as_ref(),
        t.timeout,
        t.metrics,
    ));
    let resp = exchanged.await?;
    finish(resp, client_upgrade, tunnel)
}

/// The request body length the client declared, if any.
fn declared_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Header hygiene (with the app's `strip` list), forwarding headers and the identity headers
/// under the app's `names`, as a plan for the request's headers; and the Host the client
/// asked for, as sent (for `preserve_host`).
fn plan_headers<'a>(
    parts: &http::request::Parts,
    permit: &'a Permitted,
    (strip, names, credential_headers): (&Strip, &'a IdentityHeaders, [&'a http::HeaderName; 2]),
    client: Downstream,
    upgrade: bool,
) -> (Option<HeaderValue>, Plan<'a>) {
    let orig_host: Option<HeaderValue> = parts.headers.get(HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let host_str = orig_host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let fwd = ForwardInfo {
        client_ip: client.ip,
        peer_trusted: client.peer_trusted,
        peer_ip: client.peer,
        proto: if client.https { "https" } else { "http" },
        host: host_str,
    };
    let mut plan = headers::plan_request(&parts.headers, &fwd, strip, upgrade);
    // docs/security.md#34, #40: the session never reaches the upstream; identity arrives only
    // as the gateway's own headers (client-supplied ones, under any name an app might trust,
    // were removed above).
    // docs/security.md#34: an assertion a client sent is never passed on either, under the
    // default name or the configured one, in any spelling: both are on the app's `strip` list.
    plan.cookies(crate::session::CookieEdit::of(&parts.headers));
    if let Some(id) = permit.identity() {
        // Borrowed, names and values: both outlive the plan, and a clone's reference count
        // would be taken and given back for nothing.
        plan.add_ref(&names.email, &id.email);
        plan.add_ref(&names.user, &id.user);
        plan.add_ref(&names.groups, &id.groups);
        if let Some((name, token)) = &id.assertion {
            plan.set_ref(name, token);
        }
    } else if let Some(user) = permit.service_user() {
        // A service has no address or groups: only the user header, `service:<name>`. No
        // assertion either: it names a person who logged in (docs/product.md#s4).
        plan.add_ref(&names.user, user);
    }
    // The default spellings went in `plan_request`; these are the configured names.
    for name in credential_headers {
        plan.remove_ref(name);
    }
    (orig_host, plan)
}

/// The path and query sent upstream: as received, or the normalised path with the query.
fn path_and_query(uri: &Uri, path: &str, changed: bool) -> Result<PathAndQuery, ProxyError> {
    match uri.path_and_query() {
        Some(pq) if !changed => Ok(pq.clone()),
        pq => {
            let text = match pq.and_then(PathAndQuery::query) {
                Some(q) => format!("{path}?{q}"),
                None => path.to_owned(),
            };
            PathAndQuery::try_from(text).map_err(|e| ProxyError::Upstream(Box::new(e)))
        }
    }
}

/// Sends the request and waits for the response head (connecting first if need be), within
/// `timeout`. The request's URI is in origin form and it has no `Host`; both are completed for
/// the connection it goes on.
async fn exchange(
    pool: &Arc<Pool>,
    req: Request<UpstreamBody>,
    (upgrade, te_trailers): (bool, bool),
    preserved_host: Option<&HeaderValue>,
    timeout: Duration,
    metrics: &AppMetrics,
) -> Result<Response<hyper::body::Incoming>, ProxyError> {
    let prepare = |req: &mut Request<UpstreamBody>, h2: bool| {
        if h2 {
            *req.version_mut() = Version::HTTP_2;
            let authority = preserved_host
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                .unwrap_or_else(|| pool.authority().clone());
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(if pool.https() {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            });
            uri.authority = Some(authority);
            uri.path_and_query = req.uri().path_and_query().cloned();
            if let Ok(u) = Uri::from_parts(uri) {
                *req.uri_mut() = u;
            }
            req.headers_mut().remove(HOST);
            if te_trailers {
                req.headers_mut()
                    .insert(TE, HeaderValue::from_static("trailers"));
            }
        } else {
            *req.version_mut() = Version::HTTP_11;
            let host = preserved_host.unwrap_or_else(|| pool.host()).clone();
            req.headers_mut().insert(HOST, host);
        }
    };
    timed(pool.send(req, upgrade, prepare), timeout, metrics).await
}

/// Runs `exchange` (connecting if need be, sending, reading the response head) within
/// `timeout`, counting timeouts, connect failures and the time to the response head.
async fn timed<T>(
    exchange: impl Future<Output = Result<T, ProxyError>>,
    timeout: Duration,
    metrics: &AppMetrics,
) -> Result<T, ProxyError> {
    // One clock read for both the deadline and the histogram.
    let started = tokio::time::Instant::now();
    match tokio::time::timeout_at(started + timeout, exchange).await {
        Err(_) => {
            metrics.upstream_timeouts.increment(1);
            Err(ProxyError::Timeout)
        }
        Ok(Err(e)) => {
            if matches!(e, ProxyError::Connect(_)) {
                metrics.upstream_connect_errors.increment(1);
            }
            Err(e)
        }
        Ok(Ok(r)) => {
            metrics
                .upstream_seconds
                .record(started.elapsed().as_secs_f64());
            Ok(r)
        }
    }
}

/// The upstream's response, cleaned; on `101 Switching Protocols` the tunnel starts.
fn finish(
    mut resp: Response<hyper::body::Incoming>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    tunnel: Option<TunnelLimits>,
) -> Result<Response<Body>, ProxyError> {
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        let (Some(client_upgrade), Some(limits)) = (client_upgrade, tunnel) else {
            return Err(ProxyError::Upstream(
                "upstream switched protocols unasked".into(),
            ));
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (Ok(down), Ok(up)) = tokio::join!(client_upgrade, upstream_upgrade) else {
                tracing::debug!("protocol upgrade did not complete on both sides");
                return;
            };
            run_tunnel(TokioIo::new(down), TokioIo::new(up), limits).await;
        });
    }
    headers::clean_response(resp.headers_mut(), switching);
    // The client's connection has its own version; an HTTP/2 upstream's must not leak into it.
    *resp.version_mut() = Version::HTTP_11;
    crate::session::strip_gateway_set_cookies(resp.headers_mut());
    Ok(resp.map(Body::Upstream))
}

/// Copies bytes both ways until either side closes, the tunnel idles out, the session ends or
/// is revoked, or the gateway shuts down.
async fn run_tunnel<A, B>(down: A, up: B, limits: TunnelLimits)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let TunnelLimits {
        permit,
        idle,
        max_lifetime,
        shutdown,
        session,
    } = limits;
    let activity = Arc::new(crate::io::Activity::new());
    let mut down = crate::io::Tracked::new(down, activity.clone());
    let mut up = crate::io::Tracked::new(up, activity.clone());
    let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
    tokio::pin!(copy);
    let deadline = tokio::time::sleep(max_lifetime.unwrap_or(Duration::from_secs(366 * 86_400)));
    tokio::pin!(deadline);
    let mut check = tokio::time::interval(crate::session::revocation::POLL_INTERVAL);
    let why = loop {
        tokio::select! {
            r = &mut copy => break match r { Ok(_) => "closed", Err(_) => "error" },
            () = shutdown.cancelled() => break "shutdown",
            () = &mut deadline => break "session or service token expired",
            _ = check.tick() => {
                if activity.idle() >= idle {
                    break "idle";
                }
                if session.as_ref().is_some_and(|(r, c)| r.is_revoked(c)) {
                    break "session revoked";
                }
            }
        }
    };
    tracing::debug!(reason = why, "tunnel ended");
    drop(permit);
}
