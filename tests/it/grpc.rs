//! HTTP/2 upstreams: a real gRPC server and client (Python grpcio, tests/support/grpc_app.py)
//! with the gateway between them (`upstream_protocol: http2`, h2c both sides, a service
//! token), and trailers both ways through a hyper HTTP/2 upstream. Without python3 + grpcio
//! the gRPC test is skipped loudly, except under `CI=true`, where it fails (`.ci/run` installs
//! it).

use std::io::Write as _;
use std::process::Stdio;
use std::sync::OnceLock;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use otpgate::random::SystemRandom;
use otpgate::session::service_token;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::harness::Gw;

const GRPCIO: &str = "grpcio==1.84.0";

fn script() -> String {
    format!("{}/tests/support/grpc_app.py", env!("CARGO_MANIFEST_DIR"))
}

fn grpcio_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::process::Command::new("python3")
            .args(["-c", "import grpc"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn usable() -> bool {
    if grpcio_available() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("python3 with grpcio is required under CI (python3 -m pip install {GRPCIO})");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: grpcio not installed (pip install {GRPCIO}); the gRPC test returns early"
    );
    false
}

/// An app in front of `upstream` over HTTP/2, open to the `ci` token only.
fn config(upstream: &str, key: &std::path::Path, token: &service_token::Created) -> String {
    format!(
        "version: 1
listen: {{ http: 127.0.0.1:0 }}
service_token_key_file: {key}
service_tokens:
  - {{ name: ci, client_id: {id}, secret_hash: \"{hash}\" }}
apps:
  - name: rpc
    hosts: [grpc.test]
    upstream: {upstream}
    upstream_protocol: http2
    policies:
      - {{ name: machines, action: service_auth, include: [ {{ service_token: ci }} ] }}
",
        key = key.display(),
        id = token.client_id,
        hash = token.secret_hash,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_streaming_and_errors_pass_through_with_their_trailers() {
    if !usable() {
        return;
    }
    let mut server = tokio::process::Command::new("python3")
        .args([script().as_str(), "serve"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .await
        .unwrap();
    let port: u16 = line.trim().parse().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("service-token.key");
    let token = service_token::create(&key, &SystemRandom::default()).unwrap();
    let gw = Gw::start(&config(&format!("http://127.0.0.1:{port}"), &key, &token)).await;

    let out = tokio::process::Command::new("python3")
        .args([
            script().as_str(),
            "call",
            &gw.http().to_string(),
            "grpc.test",
        ])
        .env("OTPGATE_CLIENT_ID", &token.client_id)
        .env("OTPGATE_CLIENT_SECRET", token.secret.expose())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "grpc client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The message, the status (grpc-status is a trailer) and the server's own trailer; the
    // upstream saw the service, never the secret.
    assert_eq!(v["say"]["reply"], "hello grpc from service:ci");
    assert_eq!(v["say"]["code"], "OK");
    assert_eq!(v["say"]["trailers"]["x-checksum"], "c0ffee");
    assert_eq!(v["count"]["items"], serde_json::json!(["0", "1", "2"]));
    assert_eq!(v["count"]["code"], "OK");
    assert_eq!(v["count"]["trailers"]["x-count"], "3");
    assert_eq!(v["missing"]["code"], "NOT_FOUND");
    assert_eq!(v["missing"]["details"], "no such thing: x");
    // A bad token gets the gateway's 401, which gRPC reads as UNAUTHENTICATED.
    assert_eq!(v["no_token"]["code"], "UNAUTHENTICATED");
    drop(server.stdin.take());
    let _ = server.wait().await;
}

/// A hyper HTTP/2 (h2c) upstream that answers with the request's trailer `x-sum` echoed as
/// `x-got-sum`, after a body and with a trailer `x-reply-sum` of its own.
async fn trailer_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let collected = req.into_body().collect().await.unwrap();
                    let got = collected
                        .trailers()
                        .and_then(|t| t.get("x-sum").cloned())
                        .unwrap_or(HeaderValue::from_static("none"));
                    let body = collected.to_bytes();
                    let mut trailers = HeaderMap::new();
                    trailers.insert("x-reply-sum", HeaderValue::from_static("42"));
                    trailers.insert("x-got-sum", got);
                    let frames = vec![
                        Ok::<_, std::convert::Infallible>(Frame::data(body)),
                        Ok(Frame::trailers(trailers)),
                    ];
                    let mut r = Response::new(StreamBody::new(futures_util::stream::iter(frames)));
                    r.headers_mut().insert(
                        "trailer",
                        HeaderValue::from_static("x-reply-sum, x-got-sum"),
                    );
                    Ok::<_, std::convert::Infallible>(r)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn bypass(upstream: std::net::SocketAddr) -> String {
    format!(
        "version: 1
listen: {{ http: 127.0.0.1:0 }}
apps:
  - name: h2
    hosts: [h2.test]
    upstream: http://{upstream}
    upstream_protocol: http2
    policies:
      - {{ name: open, action: bypass }}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_pass_both_ways_through_an_http2_upstream() {
    let up = trailer_upstream().await;
    let gw = Gw::start(&bypass(up)).await;

    // A downstream HTTP/2 client (h2c, prior knowledge) with a request trailer.
    let stream = tokio::net::TcpStream::connect(gw.http()).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut trailers = HeaderMap::new();
    trailers.insert("x-sum", HeaderValue::from_static("7"));
    let frames = vec![
        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"payload"))),
        Ok(Frame::trailers(trailers)),
    ];
    let req = Request::post("http://h2.test/sum")
        .header("te", "trailers")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let t = collected.trailers().cloned().expect("response trailers");
    assert_eq!(t["x-reply-sum"], "42");
    assert_eq!(t["x-got-sum"], "7");
    assert_eq!(collected.to_bytes(), "payload");

    // A downstream HTTP/1.1 client asking for trailers gets them chunked, as declared.
    let mut s = tokio::net::TcpStream::connect(gw.http()).await.unwrap();
    s.write_all(
        b"POST /sum HTTP/1.1\r\nHost: h2.test\r\nTE: trailers\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(text.contains("\r\n0\r\n"), "{text}");
    assert!(text.contains("x-reply-sum: 42\r\n"), "{text}");
    assert!(text.contains("x-got-sum: none\r\n"), "{text}");
}

/// A TLS upstream offering `alpn` that answers with the HTTP version its request came in.
async fn version_upstream(leaf: &crate::harness::Leaf, alpn: &[&[u8]]) -> std::net::SocketAddr {
    let mut cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der.clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
            leaf.key_der.clone(),
        )),
    )
    .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let v = format!("{:?}", req.version());
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                        Bytes::from(v),
                    )))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_speaks_http2_when_alpn_offers_it_and_http1_otherwise() {
    let ca = crate::harness::TestCa::new();
    let leaf = ca.leaf(&["127.0.0.1"]);
    let h2 = version_upstream(&leaf, &[b"h2", b"http/1.1"]).await;
    let h1 = version_upstream(&leaf, &[b"http/1.1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let app = |name: &str, addr: std::net::SocketAddr, protocol: &str| {
        format!(
            "  - name: {name}
    hosts: [{name}.test]
    upstream: https://{addr}
    upstream_ca: {ca}
    upstream_protocol: {protocol}
    policies:
      - {{ name: open, action: bypass }}
",
            ca = ca_path.display()
        )
    };
    let yaml = format!(
        "version: 1\nlisten: {{ http: 127.0.0.1:0 }}\napps:\n{}{}{}{}",
        app("autoh2", h2, "auto"),
        app("autoh1", h1, "auto"),
        app("one", h2, "http1"),
        app("two", h2, "http2"),
    );
    let gw = Gw::start(&yaml).await;
    for (host, want) in [
        ("autoh2", "HTTP/2.0"),
        ("autoh1", "HTTP/1.1"),
        ("one", "HTTP/1.1"),
        ("two", "HTTP/2.0"),
    ] {
        // Twice: the second request goes over the kept connection.
        for _ in 0..2 {
            let r = gw
                .client()
                .get(gw.http_url(&format!("{host}.test"), "/"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{host}");
            assert_eq!(r.text().await.unwrap(), want, "{host}");
        }
    }
}
