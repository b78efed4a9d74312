//! The pooled upstream client: hyper-util's legacy client (keep-alive pool per upstream) over
//! a rustls connector (ring), speaking HTTP/1.1 upstream like nginx does.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Limited;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;

use super::ProxyError;
use crate::trust;

/// The request body sent upstream: the client's body, streamed, with the size limit applied.
pub type UpstreamBody = Limited<crate::body::RequestBody>;

/// A pooled HTTP/HTTPS client.
pub type UpstreamClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, UpstreamBody>;

/// Builds a client trusting the system store, the Mozilla roots and `extra` (an app's
/// `upstream_ca`).
pub fn build(extra: &[CertificateDer<'static>]) -> Result<UpstreamClient, ProxyError> {
    let roots = trust::root_store(extra).map_err(|e| ProxyError::Upstream(Box::new(e)))?;
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ProxyError::Upstream(Box::new(e)))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(4096)
        .build(https))
}
