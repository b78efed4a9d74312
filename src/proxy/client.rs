//! Connecting to an upstream: TCP through hyper-util's connector (name resolution, connect
//! timeout, keep-alive, no Nagle), then rustls (ring) for `https://` upstreams, offering in
//! ALPN the protocols the app's `upstream_protocol` allows.

use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tower_service::Service as _;

use super::ProxyError;
use crate::config::UpstreamProtocol;
use crate::trust;

/// The request body sent upstream: the client's body, streamed, with the size limit applied.
pub type UpstreamBody = http_body_util::Limited<crate::body::RequestBody>;

/// A connected upstream socket.
pub(super) enum Stream {
    /// `http://`.
    Plain(TokioIo<TcpStream>),
    /// `https://` (boxed: a TLS session is large), and whether ALPN chose `h2`.
    Tls(
        TokioIo<Box<tokio_rustls::client::TlsStream<TcpStream>>>,
        /// ALPN chose `h2`.
        bool,
    ),
}

/// Opens connections to one upstream.
#[derive(Clone)]
pub(super) struct Connector {
    tcp: HttpConnector,
    /// `http(s)://host:port`, what the TCP connector resolves.
    target: Uri,
    /// For `https://`: the name to verify, the connector offering the app's protocols, and one
    /// offering HTTP/1.1 only (for WebSocket upgrades, which need HTTP/1.1).
    tls: Option<(
        ServerName<'static>,
        tokio_rustls::TlsConnector,
        tokio_rustls::TlsConnector,
    )>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector for `authority`, trusting the system store, the Mozilla roots and `extra`
    /// (an app's `upstream_ca`) when `https`.
    pub(super) fn new(
        https: bool,
        authority: &http::uri::Authority,
        protocol: UpstreamProtocol,
        extra: &[CertificateDer<'static>],
    ) -> Result<Self, ProxyError> {
        let bad = |e: Box<dyn std::error::Error + Send + Sync>| ProxyError::Upstream(e);
        let target = Uri::builder()
            .scheme(if https { "https" } else { "http" })
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| bad(Box::new(e)))?;
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(Duration::from_secs(10)));
        tcp.set_keepalive(Some(Duration::from_secs(60)));
        let tls = if https {
            let host = authority.host();
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            let name = ServerName::try_from(host.to_owned()).map_err(|e| bad(Box::new(e)))?;
            let alpn: &[&[u8]] = match protocol {
                UpstreamProtocol::Http1 => &[b"http/1.1"],
                UpstreamProtocol::Http2 => &[b"h2"],
                UpstreamProtocol::Auto => &[b"h2", b"http/1.1"],
            };
            Some((
                name,
                tls_connector(extra, alpn)?,
                tls_connector(extra, &[b"http/1.1"])?,
            ))
        } else {
            None
        };
        Ok(Self { tcp, target, tls })
    }

    /// A new connection; `h1_only` offers only HTTP/1.1 in ALPN.
    pub(super) async fn connect(&self, h1_only: bool) -> Result<Stream, ProxyError> {
        let tcp = self
            .tcp
            .clone()
            .call(self.target.clone())
            .await
            .map_err(|e| ProxyError::Connect(Box::new(e)))?;
        let Some((name, alpn, h1)) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let connector = if h1_only { h1 } else { alpn };
        let tls = connector
            .connect(name.clone(), tcp.into_inner())
            .await
            .map_err(|e| ProxyError::Connect(Box::new(e)))?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok(Stream::Tls(TokioIo::new(Box::new(tls)), h2))
    }
}

fn tls_connector(
    extra: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> Result<tokio_rustls::TlsConnector, ProxyError> {
    let roots = trust::root_store(extra).map_err(|e| ProxyError::Upstream(Box::new(e)))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ProxyError::Upstream(Box::new(e)))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(tls)))
}
