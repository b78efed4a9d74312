//! The upstream connection pool: hyper's `client::conn` handles, one pool per upstream.
//!
//! HTTP/1.1: each connection has one task (spawned when it opens, driving it until it closes)
//! and one [`http1::SendRequest`] handle. A request takes the most recently used handle that
//! is ready, sends on it directly and puts it back as soon as the response head is in: hyper
//! marks it ready again once that response's body is read, so the next request can take it
//! then. Nothing is spawned per request and no request waits for a pool task.
//!
//! HTTP/2: one multiplexed connection per upstream, its cloneable handle shared by every
//! request; a new one is opened when it closes (GOAWAY, error).
//!
//! Handles idle longer than [`IDLE_TIMEOUT`] are dropped (which closes their connection) by a
//! sweeper that lives as long as the pool; at most [`MAX_IDLE`] are kept.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;

use super::ProxyError;
use super::client::{Connector, Stream, UpstreamBody};
use super::h1;
use crate::body::Body;
use crate::config::UpstreamProtocol;

/// An idle HTTP/1.1 connection is closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle HTTP/1.1 connections kept per upstream.
pub const MAX_IDLE: usize = 1024;
/// A direct-path connection idle this long is checked for an end of stream or an answer out
/// of turn before it carries a request (busy connections are reused within milliseconds, and
/// upstreams close idle ones after seconds).
pub const PROBE_AFTER: Duration = Duration::from_secs(1);

/// The connections to one upstream.
#[derive(Debug)]
pub struct Pool {
    https: bool,
    authority: http::uri::Authority,
    protocol: UpstreamProtocol,
    upstream_ca: Vec<CertificateDer<'static>>,
    connector: Connector,
    /// `Host` for HTTP/1.1 requests: the upstream's authority.
    host: http::HeaderValue,
    /// HTTP/1.1 handles, most recently used last.
    idle: Mutex<VecDeque<Idle>>,
    /// The shared HTTP/2 connection.
    h2: Mutex<Option<http2::SendRequest<UpstreamBody>>>,
    /// Idle connections of the direct HTTP/1.1 path, most recently used last.
    direct: Mutex<Vec<h1::Conn>>,
    sweeping: AtomicBool,
}

#[derive(Debug)]
struct Idle {
    tx: http1::SendRequest<UpstreamBody>,
    since: Instant,
}

/// A connection to send one request on.
enum Conn {
    H1(http1::SendRequest<UpstreamBody>),
    H2(http2::SendRequest<UpstreamBody>),
}

impl Pool {
    /// A pool for `http(s)://authority`, speaking `protocol`.
    pub fn new(
        https: bool,
        authority: http::uri::Authority,
        protocol: UpstreamProtocol,
        upstream_ca: Vec<CertificateDer<'static>>,
    ) -> Result<Self, ProxyError> {
        let connector = Connector::new(https, &authority, protocol, &upstream_ca)?;
        let host = http::HeaderValue::from_str(authority.as_str())
            .map_err(|e| ProxyError::Upstream(Box::new(e)))?;
        Ok(Self {
            host,
            https,
            authority,
            protocol,
            upstream_ca,
            connector,
            idle: Mutex::new(VecDeque::new()),
            h2: Mutex::new(None),
            direct: Mutex::new(Vec::new()),
            sweeping: AtomicBool::new(false),
        })
    }

    /// Whether this pool serves the same upstream with the same settings (a reload keeps it).
    pub fn serves(
        &self,
        https: bool,
        authority: &http::uri::Authority,
        protocol: UpstreamProtocol,
        upstream_ca: &[CertificateDer<'static>],
    ) -> bool {
        self.https == https
            && self.authority == *authority
            && self.protocol == protocol
            && self.upstream_ca == upstream_ca
    }

    /// `https`?
    pub fn https(&self) -> bool {
        self.https
    }

    /// The upstream's `host:port` as a `Host` header.
    pub fn host(&self) -> &http::HeaderValue {
        &self.host
    }

    /// The upstream's `host:port`.
    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    /// Sends `req` (its URI and headers already made for the upstream by `prepare`) and waits
    /// for the response head. `prepare` gets whether the connection is HTTP/2. `upgrade`
    /// requests (WebSocket) always go over HTTP/1.1 unless the app is `http2`.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<UpstreamBody>,
        upgrade: bool,
        prepare: impl Fn(&mut Request<UpstreamBody>, bool),
    ) -> Result<Response<Incoming>, ProxyError> {
        // Connecting (TCP, TLS, the HTTP/2 handshake) makes a large future; boxed, it costs an
        // allocation per new connection instead of a larger state (copied as it moves) on
        // every request. Boxed in a statement of its own, here and below: a temporary lives to
        // the end of its statement, so `Box::pin(f()).await` would keep room for the unboxed
        // future across the await (docs/architecture.md, "Futures").
        let (conn, pooled) = match self.checkout(upgrade) {
            Some(c) => (c, true),
            None => {
                let connecting = Box::pin(self.connect(upgrade));
                (connecting.await?, false)
            }
        };
        prepare(&mut req, matches!(conn, Conn::H2(_)));
        match self.send_on(conn, req).await {
            Ok(r) => Ok(r),
            // A kept connection the upstream closed meanwhile: the request was not sent, so it
            // is safe to send it again, once, on a new connection.
            Err(Retry::Unsent(req, _)) if pooled => {
                let mut req = *req;
                let connecting = Box::pin(self.connect(upgrade));
                let conn = connecting.await?;
                prepare(&mut req, matches!(conn, Conn::H2(_)));
                self.send_on(conn, req).await.map_err(Retry::into_error)
            }
            Err(e) => Err(e.into_error()),
        }
    }

    /// Whether a request without a body may take the direct HTTP/1.1 path: the app speaks
    /// HTTP/1.1 to this upstream (`http1`, or `auto` without TLS, where nothing else is
    /// offered).
    pub fn direct(&self) -> bool {
        match self.protocol {
            UpstreamProtocol::Http1 => true,
            UpstreamProtocol::Auto => !self.https,
            UpstreamProtocol::Http2 => false,
        }
    }

    /// Sends a request without a body on the direct path; `encode` writes its head. A kept
    /// connection the upstream closed unanswered is replaced once (the methods sent here are
    /// idempotent, RFC 9110 s9.2.2, so sending again is safe).
    pub async fn send_direct(
        self: &Arc<Self>,
        method: &http::Method,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Response<Body>, ProxyError> {
        let (mut conn, pooled) = match self.checkout_direct() {
            Some(c) => (c, true),
            None => {
                let connecting = Box::pin(self.connect_direct());
                (connecting.await?, false)
            }
        };
        encode(&mut conn.out);
        match h1::exchange(conn, self, method).await {
            Ok(r) => Ok(r),
            Err(f) if pooled && f.unanswered => {
                let connecting = Box::pin(self.connect_direct());
                let mut conn = connecting.await?;
                conn.out = f.out;
                h1::exchange(conn, self, method)
                    .await
                    .map_err(|f| ProxyError::Upstream(Box::new(f.error)))
            }
            Err(f) => Err(ProxyError::Upstream(Box::new(f.error))),
        }
    }

    fn checkout_direct(&self) -> Option<h1::Conn> {
        let now = Instant::now();
        loop {
            let conn = self.direct.lock().ok()?.pop()?;
            let idle = now.saturating_duration_since(conn.since);
            if idle > IDLE_TIMEOUT || (idle >= PROBE_AFTER && !conn.still_open()) {
                continue;
            }
            return Some(conn);
        }
    }

    async fn connect_direct(self: &Arc<Self>) -> Result<h1::Conn, ProxyError> {
        self.start_sweeper();
        let io = match self.connector.connect(true).await? {
            Stream::Plain(io) => h1::Io::Plain(io.into_inner()),
            Stream::Tls(io, _) => h1::Io::Tls(io.into_inner()),
        };
        Ok(h1::Conn::new(io))
    }

    async fn send_on(
        self: &Arc<Self>,
        conn: Conn,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, Retry> {
        match conn {
            Conn::H1(mut tx) => {
                let resp = tx.try_send_request(req).await.map_err(Retry::from)?;
                // An upgraded connection is the tunnel's now; any other goes back at once and
                // is taken again when hyper says it is ready (its response body read).
                if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                    self.put(tx);
                }
                Ok(resp)
            }
            Conn::H2(mut tx) => {
                let r = tx.try_send_request(req).await;
                if tx.is_closed() {
                    self.drop_closed_h2();
                }
                r.map_err(Retry::from)
            }
        }
    }

    /// A kept connection that can take a request now, if any.
    fn checkout(&self, upgrade: bool) -> Option<Conn> {
        if !(upgrade && self.protocol != UpstreamProtocol::Http2)
            && let Ok(h2) = self.h2.lock()
            && let Some(tx) = h2.as_ref()
            && !tx.is_closed()
        {
            return Some(Conn::H2(tx.clone()));
        }
        let mut idle = self.idle.lock().ok()?;
        // Most recently used first; handles still busy with their last response stay (checked
        // with two atomic loads each, so a long list of busy ones costs little).
        let now = Instant::now();
        for _ in 0..idle.len() {
            let entry = idle.pop_back()?;
            if entry.tx.is_ready() {
                if now.saturating_duration_since(entry.since) > IDLE_TIMEOUT {
                    continue;
                }
                return Some(Conn::H1(entry.tx));
            }
            if !entry.tx.is_closed() {
                idle.push_front(entry);
            }
        }
        None
    }

    fn put(&self, tx: http1::SendRequest<UpstreamBody>) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() >= MAX_IDLE {
                idle.pop_front();
            }
            idle.push_back(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }

    fn drop_closed_h2(&self) {
        if let Ok(mut h2) = self.h2.lock()
            && h2.as_ref().is_some_and(http2::SendRequest::is_closed)
        {
            *h2 = None;
        }
    }

    /// Opens a connection: HTTP/2 when the app says so (or ALPN chose it under `auto`), else
    /// HTTP/1.1 with upgrades allowed. Its task is spawned here, once.
    async fn connect(self: &Arc<Self>, upgrade: bool) -> Result<Conn, ProxyError> {
        self.start_sweeper();
        let h1_only = upgrade && self.protocol == UpstreamProtocol::Auto;
        let stream = self.connector.connect(h1_only).await?;
        let h2 = match (&stream, self.protocol) {
            (_, UpstreamProtocol::Http2) => true,
            (Stream::Tls(_, alpn_h2), UpstreamProtocol::Auto) => *alpn_h2,
            _ => false,
        };
        let handshake = |e: hyper::Error| ProxyError::Connect(Box::new(e));
        if h2 {
            let mut b = http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(20))
                .adaptive_window(true);
            let tx = match stream {
                Stream::Plain(io) => {
                    let (tx, conn) = b.handshake(io).await.map_err(handshake)?;
                    tokio::spawn(drive(conn));
                    tx
                }
                Stream::Tls(io, _) => {
                    let (tx, conn) = b.handshake(io).await.map_err(handshake)?;
                    tokio::spawn(drive(conn));
                    tx
                }
            };
            if let Ok(mut slot) = self.h2.lock() {
                *slot = Some(tx.clone());
            }
            return Ok(Conn::H2(tx));
        }
        let mut b = http1::Builder::new();
        // As on the listeners: head and small bodies in one write(2).
        b.writev(false);
        let tx = match stream {
            Stream::Plain(io) => {
                let (tx, conn) = b.handshake(io).await.map_err(handshake)?;
                tokio::spawn(drive(conn.with_upgrades()));
                tx
            }
            Stream::Tls(io, _) => {
                let (tx, conn) = b.handshake(io).await.map_err(handshake)?;
                tokio::spawn(drive(conn.with_upgrades()));
                tx
            }
        };
        Ok(Conn::H1(tx))
    }

    /// Drops expired idle handles now and then, for as long as the pool exists.
    fn start_sweeper(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(IDLE_TIMEOUT / 3);
            loop {
                tick.tick().await;
                let Some(pool) = weak.upgrade() else { break };
                if let Ok(mut idle) = pool.idle.lock() {
                    idle.retain(|e| !e.tx.is_closed() && e.since.elapsed() <= IDLE_TIMEOUT);
                }
                if let Ok(mut idle) = pool.direct.lock() {
                    idle.retain(|c| c.since.elapsed() <= IDLE_TIMEOUT);
                }
            }
        });
    }
}

impl h1::Reuse for Pool {
    /// A direct-path connection whose response was read to its end.
    fn reuse(&self, mut conn: h1::Conn) {
        conn.since = Instant::now();
        if let Ok(mut idle) = self.direct.lock() {
            if idle.len() >= MAX_IDLE {
                idle.remove(0);
            }
            idle.push(conn);
        }
    }
}

/// Runs a connection until it closes.
async fn drive<F: Future<Output = Result<(), hyper::Error>>>(conn: F) {
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "upstream connection ended with an error");
    }
}

/// A failed send: unsent (safe to retry on a new connection; boxed, as it is rare and large),
/// or failed.
enum Retry {
    Unsent(Box<Request<UpstreamBody>>, hyper::Error),
    Failed(hyper::Error),
}

impl From<hyper::client::conn::TrySendError<Request<UpstreamBody>>> for Retry {
    fn from(mut e: hyper::client::conn::TrySendError<Request<UpstreamBody>>) -> Self {
        match e.take_message() {
            Some(req) => Self::Unsent(Box::new(req), e.into_error()),
            None => Self::Failed(e.into_error()),
        }
    }
}

impl Retry {
    fn into_error(self) -> ProxyError {
        let (Self::Unsent(_, e) | Self::Failed(e)) = self;
        ProxyError::from_hyper(e)
    }
}
