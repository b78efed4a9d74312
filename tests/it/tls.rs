//! The HTTPS listener: ALPN HTTP/2, certificate choice by SNI, SNI/Host consistency, handshake
//! deadline.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

fn two_cert_config(up: &Upstream) -> String {
    format!(
        "version: 1
{LISTEN_ALL}
tls:
  certificates:
    - {{ cert: a.pem, key: a-key.pem }}
    - {{ cert: b.pem, key: b-key.pem }}
apps:
  - name: a
    hosts: [a.test]
    upstream: {up}
    policies: [ {{ name: open, action: bypass }} ]
  - name: b
    hosts: [b.test]
    upstream: builtin:echo
    policies: [ {{ name: open, action: bypass }} ]
",
        up = up.url()
    )
}

async fn start_two_certs(up: &Upstream) -> Gw {
    Gw::start_with(
        &two_cert_config(up),
        &[("a", &["a.test", "127.0.0.1"]), ("b", &["b.test"])],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_with_sni_choosing_between_two_certificates() {
    let up = Upstream::start().await;
    let gw = start_two_certs(&up).await;
    let client = client_with(&[gw.ca.der()], Versions::Http2);
    // Each name gets the certificate that covers it: a wrong one would fail verification.
    let r = client
        .get(gw.https_url("a.test", "/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["path"], "/hello");
    assert_eq!(v["headers"]["x-forwarded-proto"][0], "https");
    let r = client
        .get(gw.https_url("b.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["app"], "b");
    // HTTP/1.1 over the same listener.
    let r = gw
        .client()
        .get(gw.https_url("b.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), http::Version::HTTP_11);
    assert_eq!(r.status(), 200);
}

async fn tls_connect(
    gw: &Gw,
    name: ServerName<'static>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(gw.ca.der()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(gw.https()).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("handshake with a verified certificate")
}

async fn request_over(
    mut s: tokio_rustls::client::TlsStream<TcpStream>,
    host: &str,
) -> RawResponse {
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    parse_raw(&buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_sni_get_the_default_certificate() {
    let up = Upstream::start().await;
    let gw = start_two_certs(&up).await;
    // An IP address as server name: rustls sends no SNI. The default (first) certificate covers
    // 127.0.0.1, so verification passes only if that one was chosen.
    let s = tls_connect(
        &gw,
        ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
    )
    .await;
    let r = request_over(s, "a.test").await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_for_one_app_and_host_for_another_is_misdirected() {
    let up = Upstream::start().await;
    let gw = start_two_certs(&up).await;
    let s = tls_connect(&gw, ServerName::try_from("a.test").unwrap()).await;
    let r = request_over(s, "b.test").await;
    assert_eq!(r.status, 421);
    // Matching names are fine.
    let s = tls_connect(&gw, ServerName::try_from("b.test").unwrap()).await;
    assert_eq!(request_over(s, "b.test").await.status, 200);
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_dropped_after_the_handshake_deadline() {
    let up = Upstream::start().await;
    let yaml =
        two_cert_config(&up).replace("apps:", "limits: { tls_handshake_timeout: 300ms }\napps:");
    let gw = Gw::start_with(
        &yaml,
        &[("a", &["a.test", "127.0.0.1"]), ("b", &["b.test"])],
    )
    .await;
    let mut s = TcpStream::connect(gw.https()).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("closed by the gateway");
    assert!(matches!(n, Ok(0) | Err(_)));
}
