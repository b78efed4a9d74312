//! Listeners: TCP accept loops for plain HTTP, HTTPS and admin; per connection a TLS handshake
//! with a deadline, the HTTP/1.1 fast path for simple requests, hyper's HTTP/1.1 + HTTP/2
//! server for the rest, header-read and idle timeouts, and a graceful drain on shutdown.

mod h1;
mod rewind;
pub(crate) mod tls;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::BoundAddrs;
use crate::config::{Limits, Listen, ServeRuntime};
use crate::gateway::{ConnInfo, Gateway};
use crate::io::{Activity, Tracked};

use rewind::Rewind;

/// Listener problems.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// An address could not be bound.
    #[error("cannot listen on {addr} ({kind}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener.
        kind: &'static str,
        /// Why.
        source: io::Error,
    },
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListenerKind {
    /// Plain HTTP for apps.
    Http,
    /// HTTPS for apps.
    Https,
    /// Health, readiness, metrics, admin API.
    Admin,
}

impl ListenerKind {
    fn name(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
            Self::Admin => "admin",
        }
    }
}

/// Bound, not yet serving, listeners.
#[derive(Debug)]
pub(crate) struct Listeners {
    /// Plain HTTP.
    pub http: Option<TcpListener>,
    /// HTTPS.
    pub https: Option<TcpListener>,
    /// Admin.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds every configured address; with `per_core`, the app listeners allow more sockets
    /// on their address (`SO_REUSEPORT`, same user only) for the other cores.
    pub(crate) async fn bind(listen: &Listen, runtime: ServeRuntime) -> Result<Self, ServerError> {
        async fn one(
            addr: Option<SocketAddr>,
            kind: &'static str,
            shared: bool,
        ) -> Result<Option<TcpListener>, ServerError> {
            let Some(addr) = addr else { return Ok(None) };
            let bound = if shared {
                bind_shared(addr).and_then(TcpListener::from_std)
            } else {
                TcpListener::bind(addr).await
            };
            bound
                .map(Some)
                .map_err(|source| ServerError::Bind { addr, kind, source })
        }
        let shared = runtime == ServeRuntime::PerCore;
        Ok(Self {
            http: one(listen.http, "http", shared).await?,
            https: one(listen.https, "https", shared).await?,
            admin: one(listen.admin, "admin", false).await?,
        })
    }

    /// The bound addresses.
    pub(crate) fn addrs(&self) -> BoundAddrs {
        let a = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
        BoundAddrs {
            http: a(&self.http),
            https: a(&self.https),
            admin: a(&self.admin),
        }
    }
}

/// A listening socket that other sockets of this user may share (`SO_REUSEPORT`): the kernel
/// spreads new connections over them. Options as tokio's `bind` sets them.
fn bind_shared(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Starts the accept loop of one listener. It stops accepting when `cancel` fires, then gives
/// open connections `limits.shutdown_grace` to finish their requests. With
/// `limits.runtime: per_core` an app listener gets a thread per core instead, each with its own
/// single-threaded runtime and socket; the handle then completes when all of them have drained.
pub(crate) fn spawn(
    kind: ListenerKind,
    listener: TcpListener,
    gateway: Arc<Gateway>,
    tls: Option<TlsAcceptor>,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    if kind != ListenerKind::Admin
        && gateway.runtime().config.limits.runtime == ServeRuntime::PerCore
    {
        return spawn_per_core(kind, listener, &gateway, tls.as_ref(), &cancel);
    }
    tokio::spawn(accept_loop(kind, listener, gateway, tls, cancel))
}

fn spawn_per_core(
    kind: ListenerKind,
    listener: TcpListener,
    gateway: &Arc<Gateway>,
    tls: Option<&TlsAcceptor>,
    cancel: &CancellationToken,
) -> JoinHandle<()> {
    // Honours the CPU affinity mask: pinned to one core, one thread.
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let addr = listener.local_addr();
    let mut sockets = vec![listener.into_std()];
    for _ in 1..cores {
        sockets.push(match &addr {
            Ok(a) => bind_shared(*a),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        });
    }
    let mut done = Vec::with_capacity(cores);
    // Upstream connections are pooled across cores, so a connection one core's runtime drives
    // may carry another core's in-flight request: no runtime stops before every core drained.
    let all_drained = CancellationToken::new();
    for (core, socket) in sockets.into_iter().enumerate() {
        let socket = match socket {
            Ok(s) => s,
            Err(e) => {
                // The first socket always serves; a core without one only costs capacity.
                tracing::error!(listener = kind.name(), core, error = %e, "cannot add a per-core listener");
                continue;
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (gw, tls, cancel, all) = (
            gateway.clone(),
            tls.cloned(),
            cancel.clone(),
            all_drained.clone(),
        );
        let thread = std::thread::Builder::new()
            .name(format!("otpgate-{}-{core}", kind.name()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let served = runtime.and_then(|rt| {
                    rt.block_on(async {
                        let listener = TcpListener::from_std(socket)?;
                        accept_loop(kind, listener, gw, tls, cancel).await;
                        let _ = tx.send(());
                        all.cancelled().await;
                        Ok::<_, io::Error>(())
                    })
                });
                if let Err(e) = served {
                    tracing::error!(listener = kind.name(), core, error = %e, "per-core listener failed");
                }
            });
        match thread {
            Ok(_) => done.push(rx),
            Err(e) => {
                tracing::error!(listener = kind.name(), core, error = %e, "cannot start a serving thread");
            }
        }
    }
    tokio::spawn(async move {
        for rx in done {
            let _ = rx.await;
        }
        all_drained.cancel();
    })
}

async fn accept_loop(
    kind: ListenerKind,
    listener: TcpListener,
    gw: Arc<Gateway>,
    tls: Option<TlsAcceptor>,
    cancel: CancellationToken,
) {
    let mut conns = JoinSet::new();
    let open = ::metrics::gauge!(crate::metrics::CONNECTIONS, "listener" => kind.name());
    loop {
        let max = gw.runtime().config.limits.max_connections;
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => open.decrement(1.0),
            accepted = listener.accept(), if conns.len() < max => match accepted {
                Ok((stream, peer)) => {
                    open.increment(1.0);
                    conns.spawn(serve_tcp(kind, stream, peer, gw.clone(), tls.clone(), cancel.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = kind.name(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    let grace = gw.runtime().config.limits.shutdown_grace;
    let drain = async {
        while conns.join_next().await.is_some() {
            open.decrement(1.0);
        }
    };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!(
            listener = kind.name(),
            open = conns.len(),
            "shutdown grace over: closing connections"
        );
        open.decrement(conns.len() as f64);
        conns.abort_all();
    }
}

async fn serve_tcp(
    kind: ListenerKind,
    stream: TcpStream,
    peer: SocketAddr,
    gw: Arc<Gateway>,
    tls: Option<TlsAcceptor>,
    cancel: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let limits = gw.runtime().config.limits.clone();
    match tls {
        None => {
            let info = ConnInfo {
                peer,
                tls: false,
                sni: None,
            };
            serve_http(kind, stream, info, gw, &limits, cancel, false).await;
        }
        Some(acceptor) => {
            let tls_stream =
                match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream))
                    .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        ::metrics::counter!(crate::metrics::TLS_FAILURES, "reason" => "error")
                            .increment(1);
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        ::metrics::counter!(crate::metrics::TLS_FAILURES, "reason" => "timeout")
                            .increment(1);
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let sni = tls_stream.get_ref().1.server_name().map(Box::from);
            let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let info = ConnInfo {
                peer,
                tls: true,
                sni,
            };
            serve_http(kind, tls_stream, info, gw, &limits, cancel, h2).await;
        }
    }
}

/// Per-connection state shared with its requests.
struct ConnCtx {
    kind: ListenerKind,
    gw: Arc<Gateway>,
    info: ConnInfo,
    activity: Arc<Activity>,
}

/// Serves one connection: HTTP/1.1 on an app listener starts on the fast path ([`h1`]), which
/// hands the connection to hyper at the first request it does not serve itself; HTTP/2 (by
/// ALPN) and the admin listener go to hyper at once.
async fn serve_http<I>(
    kind: ListenerKind,
    io: I,
    info: ConnInfo,
    gw: Arc<Gateway>,
    limits: &Limits,
    cancel: CancellationToken,
    h2: bool,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, read) = if kind == ListenerKind::Admin || h2 {
        (io, bytes::Bytes::new())
    } else {
        match h1::serve(io, &gw, &info, limits, &cancel).await {
            h1::Outcome::Closed => return,
            h1::Outcome::HandOver(io, read) => (io, read),
        }
    };
    let io = Rewind::new(io, read);
    let ctx = Arc::new(ConnCtx {
        kind,
        gw,
        info,
        activity: Arc::new(Activity::new()),
    });
    let io = TokioIo::new(Tracked::new(io, ctx.activity.clone()));
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req| {
        let ctx = svc_ctx.clone();
        async move {
            let _busy = ctx.activity.busy();
            let resp = match ctx.kind {
                // Boxed: the admin API is rare; its future would widen every request's.
                ListenerKind::Admin => {
                    let admin = Box::pin(crate::admin::handle(&ctx.gw, req));
                    admin.await
                }
                ListenerKind::Http | ListenerKind::Https => ctx.gw.handle(req, &ctx.info).await,
            };
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper restarts this timer while a keep-alive connection waits for its next request,
        // so it bounds both slow request heads and idle HTTP/1.1 connections.
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        // Head and small bodies copied into one buffer and written with one write(2): less
        // work per response than queueing buffers for writev(2).
        .writev(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let idle = ctx.activity.idle_for(limits.idle_timeout);
    tokio::pin!(idle);
    let stop = cancel.cancelled();
    tokio::pin!(stop);
    let mut closing = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(peer = %ctx.info.peer, error = %e, "connection ended with an error");
                }
                break;
            }
            () = &mut stop, if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = &mut idle, if !closing => {
                tracing::debug!(peer = %ctx.info.peer, "closing idle connection");
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}
