//! The pipeline's stages driven in process: built requests go straight into
//! `Gateway::handle`, answers come back without a socket, a listener or a real upstream (apps
//! use `builtin:echo`, which shows what it received). The socket tests in `routing.rs`,
//! `proxy.rs` and `sessions.rs` check the same rules end to end; these pin each stage on its
//! own, with the connection facts (peer, TLS, SNI) and the clock under the test's control.

mod assertion;
mod forward_auth;
mod future_size;
mod headers;
mod login_dispatch;
mod path;
mod policy;
mod portal;
mod routing;
mod service_tokens;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;

use otpgate::body::{Body, RequestBody};
use otpgate::clock::{Clock, ManualClock};
use otpgate::config::BoundAddrs;
use otpgate::gateway::{ConnInfo, Gateway, Parts, Runtime};
use otpgate::policy::LoginMethod;
use otpgate::session::{Claims, KeyRing, Sessions, TokenKind};

/// Where the manual clock starts (2030-03-17): far from the epoch, so expiry arithmetic is
/// realistic.
pub const START_SECS: u64 = 1_900_000_000;

/// The peer of requests that do not say otherwise: a client on the internet, not a proxy.
pub const CLIENT: &str = "203.0.113.9:50000";

/// A gateway built from a config, with no listener bound, a manual clock and fixed cookie keys.
pub struct Stage {
    gateway: Gateway,
    clock: ManualClock,
    _dir: tempfile::TempDir,
}

impl Stage {
    /// A gateway serving `yaml`, whose relative paths (data folder, outbox, audit log) resolve
    /// in a fresh temporary folder. Must run inside a tokio runtime (the mailer's worker).
    pub fn new(yaml: &str) -> Self {
        crate::harness::init();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("otpgate.yaml");
        let config = otpgate::config::load_str(yaml, &config_path, Vec::<(String, String)>::new())
            .unwrap_or_else(|e| panic!("stage config does not load: {:#?}", e.errors))
            .config;
        let clock = ManualClock::at(START_SECS);
        let random = otpgate::random::system();
        // Fixed keys: nothing on disk to create, and every stage seals alike.
        let keys = KeyRing::from_secrets(&[("k1", [7; 32])]).unwrap();
        std::fs::create_dir_all(&config.data_dir).unwrap();
        let store = otpgate::store::Store::open_embedded(&config.data_dir).unwrap();
        let mailer = otpgate::mailer::Mailer::start(&config.mail).unwrap();
        let bound = BoundAddrs::default();
        let runtime = Runtime::build(config, &bound, None).unwrap();
        let clock_dyn: Arc<dyn Clock> = Arc::new(clock.clone());
        let parts = Parts {
            clock: clock_dyn.clone(),
            random: random.clone(),
            sessions: Sessions::new(keys, random),
            store,
            state: otpgate::state::State::memory(clock_dyn),
            mailer,
            shutdown: tokio_util::sync::CancellationToken::new(),
        };
        let gateway = Gateway::new(runtime, bound, parts);
        // Signing keys in memory, as `lifecycle::start` would read them: with assertions on
        // (the default) every session request gets one, and nothing is written to disk.
        gateway
            .assertions()
            .replace_keys(otpgate::assertion::SigningKeys::ephemeral("stage").unwrap());
        Self {
            gateway,
            clock,
            _dir: dir,
        }
    }

    /// The gateway under test.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Sends `req` as from an ordinary client over plain HTTP.
    pub async fn send<B: Into<RequestBody>>(&self, req: Request<B>) -> Reply {
        self.send_on(req, &conn(CLIENT)).await
    }

    /// Sends `req` as if it arrived on `conn`.
    pub async fn send_on<B: Into<RequestBody>>(&self, req: Request<B>, conn: &ConnInfo) -> Reply {
        Reply::read(self.gateway.handle(req, conn).await).await
    }

    /// A session for `email` on `app`, issued now, as a `Cookie` pair (`NAME=VALUE`).
    pub fn cookie_for(&self, app: &str, email: &str) -> String {
        self.session_for(app, email).1
    }

    /// Like [`Stage::cookie_for`], also returning the session's claims (to revoke it).
    pub fn session_for(&self, app: &str, email: &str) -> (Claims, String) {
        let rt = self.gateway.runtime();
        let a = rt
            .apps
            .iter()
            .find(|a| a.config.name == app)
            .unwrap_or_else(|| panic!("no app {app}"));
        let (claims, value) = self
            .gateway
            .sessions()
            .issue(
                TokenKind::Session,
                app,
                otpgate::email::Email::parse(email).unwrap(),
                LoginMethod::OneTimePin,
                a.session_lifetime,
                self.clock.now_ms(),
            )
            .unwrap();
        (claims, format!("{}={value}", a.cookie_name))
    }

    /// Moves the clock on.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }
}

/// A plain-HTTP connection from `peer`, without SNI.
pub fn conn(peer: &str) -> ConnInfo {
    ConnInfo {
        peer: peer.parse::<SocketAddr>().unwrap(),
        tls: false,
        sni: None,
    }
}

/// A TLS connection from an ordinary client that sent `sni` (if any).
pub fn tls(sni: Option<&str>) -> ConnInfo {
    ConnInfo {
        peer: CLIENT.parse().unwrap(),
        tls: true,
        sni: sni.map(Into::into),
    }
}

/// `GET path` with `Host: host`, as an HTTP/1.1 client sends it (origin-form URI).
pub fn get(host: &str, path: &str) -> http::request::Builder {
    Request::get(path).header("host", host)
}

/// `METHOD path` with `Host: host`.
pub fn request(method: &str, host: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
}

/// A response read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    async fn read(r: Response<Body>) -> Self {
        let (parts, body) = r.into_parts();
        Self {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Every `Set-Cookie` header.
    pub fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {}", self.status, self.text()))
    }

    /// What the echo upstream received; fails when the request did not reach it.
    pub fn echo(&self) -> serde_json::Value {
        assert_eq!(self.status, 200, "not forwarded: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "not the echo upstream: {}",
            self.text()
        );
        self.json()
    }

    /// The values of one header as the echo upstream received it (empty when absent).
    pub fn echoed(&self, name: &str) -> Vec<String> {
        self.echo()["headers"]
            .get(name)
            .and_then(|v| v.as_array())
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    }

    /// Asserts this is one of the gateway's own HTML pages (so no upstream answered it).
    pub fn assert_gateway_page(&self, status: u16, says: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("text/html; charset=utf-8"),
            "{}",
            self.text()
        );
        assert!(
            self.text().contains(says),
            "{says:?} not in {}",
            self.text()
        );
    }
}

/// A config of top-level keys `head` and the `apps` list. Its listener address is never bound:
/// the stages take built requests.
pub fn config(head: &str, apps: &str) -> String {
    format!("version: 1\nlisten: {{ http: 127.0.0.1:0 }}\n{head}\napps:\n{apps}")
}
