//! The shared test harness: a real upstream HTTP server, a test certificate authority, the
//! gateway started in-process on port 0, and clients that trust the test CA.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite;

pub use otpgate::Running;

/// Installs process-wide test prerequisites once.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        }
    });
}

/// Polls `f` until it returns true, panicking with `what` after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// === Test certificate authority ===

/// A throwaway CA issuing leaf certificates for test host names.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A leaf certificate and its key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    pub key_der: Vec<u8>,
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "otpgate test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        Self {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.as_ref().der().clone()
    }

    pub fn pem(&self) -> String {
        self.issuer.as_ref().pem()
    }

    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    /// Writes a leaf's PEM files into `dir` as `NAME.pem` / `NAME-key.pem`.
    pub fn write_leaf(&self, dir: &Path, file: &str, names: &[&str]) -> Leaf {
        let leaf = self.leaf(names);
        std::fs::write(dir.join(format!("{file}.pem")), &leaf.cert_pem).unwrap();
        std::fs::write(dir.join(format!("{file}-key.pem")), &leaf.key_pem).unwrap();
        leaf
    }
}

// === The upstream test server ===

/// What the upstream saw, and levers tests pull.
#[derive(Default)]
pub struct UpstreamState {
    pub hits: AtomicUsize,
    /// Released by the test to let `/stream` send the rest of its body.
    pub release_download: Notify,
    /// Signalled when `/upload` received its first body bytes.
    pub upload_started: Notify,
}

/// A real HTTP/1.1 server (optionally TLS) the gateway proxies to.
pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<UpstreamState>,
}

impl Upstream {
    pub async fn start() -> Self {
        Self::start_inner(None).await
    }

    pub async fn start_tls(leaf: &Leaf) -> Self {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone())),
        )
        .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self::start_inner(Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))).await
    }

    async fn start_inner(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(UpstreamState::default());
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(upstream_handle(st, req).await) }
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(s), svc)
                                    .with_upgrades()
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), svc)
                                .with_upgrades()
                                .await;
                        }
                    }
                });
            }
        });
        Self { addr, state }
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> UpBody {
    http_body_util::Full::new(b.into()).boxed()
}

/// A response body fed from a channel, so the server can pause mid-body.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn query_u64(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{key}="))?.parse().ok())
}

/// Deterministic content for transfers: byte i is (i * 7 + 3) mod 251.
pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (((offset + i) * 7 + 3) % 251) as u8)
        .collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn upstream_handle(st: Arc<UpstreamState>, mut req: Request<Incoming>) -> Response<UpBody> {
    st.hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/ws" => {
            let key = req
                .headers()
                .get("sec-websocket-key")
                .map(|k| k.as_bytes().to_vec())
                .unwrap_or_default();
            let accept = tungstenite::handshake::derive_accept_key(&key);
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(up) = on_upgrade.await else { return };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(up),
                    tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        break;
                    }
                    if msg.is_text() || msg.is_binary() {
                        let _ = ws.send(msg).await;
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("upgrade", "websocket")
                .header("connection", "Upgrade")
                .header("sec-websocket-accept", accept)
                .body(full(""))
                .unwrap()
        }
        "/stream" => {
            let size = query_u64(&req, "size").unwrap_or(1 << 20);
            let (tx, rx) = mpsc::channel(4);
            let st2 = st.clone();
            tokio::spawn(async move {
                const CHUNK: u64 = 64 * 1024;
                let first = CHUNK.min(size);
                if tx
                    .send(Bytes::from(pattern(0, first as usize)))
                    .await
                    .is_err()
                {
                    return;
                }
                st2.release_download.notified().await;
                let mut off = first;
                while off < size {
                    let n = CHUNK.min(size - off);
                    if tx
                        .send(Bytes::from(pattern(off, n as usize)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    off += n;
                }
            });
            Response::builder()
                .header("content-length", size.to_string())
                .body(ChannelBody(rx).boxed())
                .unwrap()
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            let mut n: u64 = 0;
            let mut first = true;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(d) = frame.data_ref() {
                    if first && !d.is_empty() {
                        st.upload_started.notify_one();
                        first = false;
                    }
                    n += d.len() as u64;
                    ctx.update(d);
                }
            }
            let hex: String = ctx
                .finish()
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            json_response(&serde_json::json!({ "bytes": n, "sha256": hex }))
        }
        "/plant" => Response::builder()
            .header(
                "set-cookie",
                "__Host-otpgate=v1.planted.AAAA; Path=/; Secure; HttpOnly",
            )
            .header("set-cookie", "otpgate-login=planted; Path=/")
            .header("set-cookie", "theme=dark; Path=/")
            .body(full("planted"))
            .unwrap(),
        "/slow" => {
            let ms = query_u64(&req, "ms").unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full("slow done"))
        }
        _ => {
            let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (k, v) in req.headers() {
                headers
                    .entry(k.as_str().to_owned())
                    .or_default()
                    .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
            }
            let doc = serde_json::json!({
                "method": req.method().as_str(),
                "path": req.uri().path(),
                "query": req.uri().query(),
                "headers": headers,
            });
            let mut r = json_response(&doc);
            // Hop-by-hop headers the gateway must not pass back to the client.
            let h = r.headers_mut();
            h.insert("connection", "x-upstream-secret".parse().unwrap());
            h.insert("x-upstream-secret", "1".parse().unwrap());
            h.insert("keep-alive", "timeout=5".parse().unwrap());
            h.insert("x-kept", "yes".parse().unwrap());
            r
        }
    }
}

fn json_response(v: &serde_json::Value) -> Response<UpBody> {
    Response::builder()
        .header("content-type", "application/json")
        .body(full(v.to_string()))
        .unwrap()
}

// === The gateway under test ===

/// A gateway running in-process on loopback with ephemeral ports.
pub struct Gw {
    pub running: Running,
    pub _dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub ca: Arc<TestCa>,
}

/// Listener section used by most tests: every listener on an ephemeral port.
pub const LISTEN_ALL: &str =
    "listen: { http: 127.0.0.1:0, https: 127.0.0.1:0, admin: 127.0.0.1:0 }";

impl Gw {
    /// Starts a gateway on `yaml` (written to `otpgate.yaml` in a fresh folder). The folder holds
    /// `ca.pem` plus, from `certs`, leaf certificates `NAME.pem`/`NAME-key.pem` for the listed names.
    pub async fn start(yaml: &str) -> Self {
        Self::start_with(yaml, &[]).await
    }

    pub async fn start_with(yaml: &str, certs: &[(&str, &[&str])]) -> Self {
        Self::start_full(yaml, certs, otpgate::Options::default()).await
    }

    /// Starts with injected options (a manual clock, ...).
    pub async fn start_full(
        yaml: &str,
        certs: &[(&str, &[&str])],
        options: otpgate::Options,
    ) -> Self {
        init();
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(TestCa::new());
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        for (file, names) in certs {
            ca.write_leaf(dir.path(), file, names);
        }
        let config_path = dir.path().join("otpgate.yaml");
        std::fs::write(&config_path, yaml).unwrap();
        let loaded = otpgate::config::load(&config_path, Vec::<(String, String)>::new())
            .unwrap_or_else(|e| panic!("test config does not load: {:#?}", e.errors));
        let running = otpgate::start(loaded.config, options).await.unwrap();
        Self {
            running,
            _dir: dir,
            config_path,
            ca,
        }
    }

    pub fn http(&self) -> SocketAddr {
        self.running.addrs().http.expect("http listener")
    }
    pub fn https(&self) -> SocketAddr {
        self.running.addrs().https.expect("https listener")
    }
    pub fn admin(&self) -> SocketAddr {
        self.running.addrs().admin.expect("admin listener")
    }

    /// `http://HOST:PORT/PATH` on the plain listener.
    pub fn http_url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.http().port())
    }
    /// `https://HOST:PORT/PATH` on the TLS listener.
    pub fn https_url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.https().port())
    }
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin())
    }

    /// The config as the gateway loaded it (for the administrative commands).
    pub fn config(&self) -> otpgate::config::Config {
        otpgate::config::load(&self.config_path, Vec::<(String, String)>::new())
            .unwrap()
            .config
    }

    /// Starts another gateway on the same folder (config, keys, store): a restart.
    pub async fn restart(self) -> Self {
        let Self {
            running,
            _dir,
            config_path,
            ca,
        } = self;
        running.shutdown();
        running.wait().await;
        let loaded = otpgate::config::load(&config_path, Vec::<(String, String)>::new()).unwrap();
        let running = otpgate::start(loaded.config, otpgate::Options::default())
            .await
            .unwrap();
        Self {
            running,
            _dir,
            config_path,
            ca,
        }
    }

    /// Mints a session cookie (`NAME=VALUE`) for `email` on `app`, as `otpgate mint-cookie` does.
    pub fn mint(&self, app: &str, email: &str) -> String {
        otpgate::commands::mint_cookie(
            &self.config(),
            app,
            email,
            None,
            otpgate::policy::LoginMethod::OneTimePin,
            &otpgate::clock::SystemClock,
            &otpgate::random::system(),
        )
        .unwrap()
    }

    /// What the admin listener answers on `/readyz`: the status and the text.
    pub async fn readyz(&self) -> (u16, String) {
        let r = self
            .client()
            .get(self.admin_url("/readyz"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// The Prometheus text of the admin listener.
    pub async fn metrics(&self) -> String {
        self.client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Rewrites the config file (for reload tests).
    pub fn write_config(&self, yaml: &str) {
        std::fs::write(&self.config_path, yaml).unwrap();
    }
}

/// A resolver that sends every name to 127.0.0.1, so tests can use real host names.
struct Loopback;

impl reqwest::dns::Resolve for Loopback {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async {
            let addrs: reqwest::dns::Addrs =
                Box::new(std::iter::once(SocketAddr::from(([127, 0, 0, 1], 0))));
            Ok(addrs)
        })
    }
}

/// Which HTTP versions a client offers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    Http1,
    Http2,
}

/// A client trusting `roots` (and nothing else), resolving every name to loopback, not
/// following redirects.
pub fn client_with(roots: &[CertificateDer<'static>], versions: Versions) -> reqwest::Client {
    init();
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    tls.alpn_protocols = match versions {
        Versions::Http1 => vec![b"http/1.1".to_vec()],
        Versions::Http2 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    let mut b = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .dns_resolver(Loopback)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30));
    if versions == Versions::Http1 {
        b = b.http1_only();
    }
    b.build().unwrap()
}

impl Gw {
    /// An HTTP/1.1 client trusting this gateway's test CA.
    pub fn client(&self) -> reqwest::Client {
        client_with(&[self.ca.der()], Versions::Http1)
    }
}

// === Raw HTTP/1.1 for requests real clients refuse to send ===

/// A parsed raw response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends `head` (request line and headers, without the blank line; `Connection: close` is
/// added) plus `body` over a fresh TCP connection and reads the whole response.
pub async fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = head
        .trim_end()
        .replace('\n', "\r\n")
        .replace("\r\r\n", "\r\n");
    req.push_str("\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .unwrap();
    parse_raw(&buf)
}

pub fn parse_raw(buf: &[u8]) -> RawResponse {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &buf[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    RawResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..eol])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
}
