//! Per-request work that does not touch the network: path normalisation, host parsing, client
//! address resolution, header hygiene, the policy decision, the service-token check, the
//! identity assertion, the direct HTTP/1.1 path's request and response heads, and a whole
//! authenticated request through the pipeline to
//! `builtin:echo` with the assertion on and off.
//!
//! `cargo bench --bench hot_path`

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue};
use otpgate::config::{HeaderPattern, IdentityHeaders};
use otpgate::email::Email;
use otpgate::policy::{self, Action, LoginMethod, Policy, Selector};
use otpgate::proxy::Strip;
use otpgate::proxy::h1::head;
use otpgate::proxy::headers::{ForwardInfo, plan_request, prepare_request};

fn browser_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "app.example.test"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br"),
        (
            "cookie",
            "__Host-otpgate=v1.k1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA; theme=dark",
        ),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-site", "same-origin"),
        ("connection", "keep-alive"),
        ("upgrade-insecure-requests", "1"),
    ] {
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

fn policies() -> Vec<Policy> {
    vec![
        Policy {
            name: "public".into(),
            action: Action::Bypass,
            paths: vec!["/static/".into()],
            include: vec![],
            require: vec![],
            exclude: vec![],
        },
        Policy {
            name: "block-admin".into(),
            action: Action::Block,
            paths: vec!["/admin".into()],
            include: vec![Selector::EmailDomain("contractor.example".into())],
            require: vec![],
            exclude: vec![],
        },
        Policy {
            name: "staff".into(),
            action: Action::Allow,
            paths: vec![],
            include: vec![
                Selector::EmailDomain("corp.example".into()),
                Selector::Email(
                    Email::parse("guest@partner.example").unwrap_or_else(|_| unreachable!()),
                ),
            ],
            require: vec![Selector::LoginMethod(LoginMethod::OneTimePin)],
            exclude: vec![Selector::Email(
                Email::parse("mallory@corp.example").unwrap_or_else(|_| unreachable!()),
            )],
        },
    ]
}

fn bench(c: &mut Criterion) {
    c.bench_function("path::normalise (plain)", |b| {
        b.iter(|| otpgate::path::normalise(black_box("/api/v1/projects/42/issues")))
    });
    c.bench_function("path::normalise (escapes)", |b| {
        b.iter(|| otpgate::path::normalise(black_box("/api/%7Euser/caf%c3%a9/%61dmin")))
    });
    c.bench_function("route::normalise host", |b| {
        b.iter(|| otpgate::gateway::route::normalise(black_box("App.Example.Test:8443")))
    });
    // Twenty apps, one of them behind a wildcard: the Host of a request to an exact name.
    let hosts: Vec<Vec<otpgate::config::HostPattern>> = (0..20)
        .map(|i| {
            if i == 19 {
                vec![otpgate::config::HostPattern::Wildcard(
                    "corp.example".into(),
                )]
            } else {
                vec![otpgate::config::HostPattern::Exact(format!(
                    "app{i}.example.test"
                ))]
            }
        })
        .collect();
    let router = otpgate::gateway::route::Router::new(hosts.iter().map(Vec::as_slice));
    let uri: http::Uri = "/".parse().unwrap_or_else(|_| unreachable!());
    let mut host_headers = HeaderMap::new();
    host_headers.insert(
        http::header::HOST,
        HeaderValue::from_static("app7.example.test:8443"),
    );
    c.bench_function("route::app_index (20 apps, exact host)", |b| {
        b.iter(|| otpgate::gateway::route::app_index(&router, black_box(&uri), &host_headers, None))
    });
    let headers = browser_headers();
    c.bench_function("forwarded::client_ip (untrusted peer)", |b| {
        let peer: IpAddr = "198.51.100.7".parse().unwrap_or_else(|_| unreachable!());
        b.iter(|| otpgate::gateway::forwarded::client_ip(black_box(peer), &headers, &[]))
    });
    let fwd = ForwardInfo {
        client_ip: "198.51.100.7".parse().unwrap_or_else(|_| unreachable!()),
        peer_trusted: false,
        peer_ip: "198.51.100.7".parse().unwrap_or_else(|_| unreachable!()),
        proto: "https",
        host: "app.example.test",
    };
    c.bench_function("headers::prepare_request (browser request)", |b| {
        let strip = Strip::default();
        b.iter_batched_ref(
            browser_headers,
            |h| prepare_request(h, &fwd, &strip, false),
            criterion::BatchSize::SmallInput,
        )
    });
    // An operator's list and renamed identity headers, and a request carrying spoofed ones.
    c.bench_function("headers::prepare_request (strip list, 3 spoofs)", |b| {
        let operator: Vec<HeaderPattern> = ["X-Employee-Id", "X-Legacy-*"]
            .iter()
            .filter_map(|p| HeaderPattern::parse(p))
            .collect();
        let names = IdentityHeaders {
            email: HeaderName::from_static("x-webauth-user"),
            ..IdentityHeaders::default()
        };
        let strip = Strip::new(&operator, &names);
        let spoofed = || {
            let mut h = browser_headers();
            for (k, v) in [
                ("remote-user", "mallory"),
                ("x_forwarded_email", "mallory@evil.example"),
                ("x-legacy-role", "admin"),
            ] {
                h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
            }
            h
        };
        b.iter_batched_ref(
            spoofed,
            |h| prepare_request(h, &fwd, &strip, false),
            criterion::BatchSize::SmallInput,
        )
    });
    // The direct HTTP/1.1 path: the plan written as a request head (no `HeaderMap` edits),
    // and a small upstream response head parsed.
    c.bench_function("h1 request head (plan written, browser request)", |b| {
        let strip = Strip::default();
        let headers = browser_headers();
        let mut out = Vec::with_capacity(1024);
        b.iter(|| {
            let mut plan = plan_request(&headers, &fwd, &strip, false);
            plan.cookies(otpgate::session::CookieEdit::of(&headers));
            plan.set(
                http::header::HOST,
                HeaderValue::from_static("127.0.0.1:8080"),
            );
            head::encode(&http::Method::GET, "/index.html", &headers, &plan, &mut out);
            black_box(out.len())
        })
    });
    c.bench_function("h1 response head parse (5 headers)", |b| {
        let text: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 04:38:31 GMT\r\nContent-Type: text/plain\r\nContent-Length: 24\r\nConnection: keep-alive\r\n\r\nhello from the upstream\n";
        b.iter_batched_ref(
            || bytes::BytesMut::from(text),
            |buf| head::parse(buf, &http::Method::GET).map(|h| h.map(|h| h.status)),
            criterion::BatchSize::SmallInput,
        )
    });
    let ps = policies();
    let email = Email::parse("alice@corp.example").unwrap_or_else(|_| unreachable!());
    let groups: Vec<std::sync::Arc<str>> = vec!["engineering".into()];
    c.bench_function("policy::decide (3 policies, identity)", |b| {
        let who = policy::Identity {
            email: &email,
            groups: &groups,
            login_method: LoginMethod::OneTimePin,
        };
        let req = policy::Request {
            path: "/projects/42",
            ip: "198.51.100.7".parse().unwrap_or_else(|_| unreachable!()),
        };
        b.iter(|| policy::decide(black_box(&ps), black_box(&req), Some(&who)))
    });
}

/// The authenticated hot path without I/O: find the cookie, open it (AES-256-GCM), check
/// revocation, decide with the identity. docs/product.md#s8 target: under 2 µs. A browser
/// sends the same cookie again and again, so after the first request the value comes from the
/// cache of opened cookies; `cookie::open` alone is the cost of a value seen for the first time.
fn session(c: &mut Criterion) {
    use otpgate::session::{KeyRing, Sessions, TokenKind, cookie, cookie_name};
    let keys = KeyRing::from_secrets(&[("k1", [9; 32])]).unwrap_or_else(|| unreachable!());
    let sessions = Sessions::new(keys.clone(), otpgate::random::system());
    let email = Email::parse("alice@corp.example").unwrap_or_else(|_| unreachable!());
    let now = 1_800_000_000_000;
    let (_, value) = sessions
        .issue(
            TokenKind::Session,
            "app",
            email,
            LoginMethod::OneTimePin,
            std::time::Duration::from_secs(86_400),
            now,
        )
        .unwrap_or_else(|_| unreachable!());
    let mut headers = browser_headers();
    headers.insert(
        http::header::COOKIE,
        HeaderValue::from_str(&format!("theme=dark; {}={value}", cookie_name(true)))
            .unwrap_or_else(|_| unreachable!()),
    );
    let ps = policies();
    let groups: Vec<std::sync::Arc<str>> = vec!["engineering".into()];
    let ip: IpAddr = "198.51.100.7".parse().unwrap_or_else(|_| unreachable!());
    c.bench_function("cookie::open (uncached: base64, AES-256-GCM, parse)", |b| {
        b.iter(|| {
            cookie::open(
                black_box(&value),
                TokenKind::Session,
                "app",
                &keys,
                now + 1000,
                None,
            )
            .is_ok()
        })
    });
    c.bench_function("session open (cached cookie) + policy decide", |b| {
        b.iter(|| {
            let claims = sessions
                .from_headers(
                    black_box(&headers),
                    cookie_name(true),
                    "app",
                    now + 1000,
                    None,
                )
                .unwrap_or_else(|_| unreachable!());
            let who = policy::Identity {
                email: claims.email(),
                groups: &groups,
                login_method: claims.method(),
            };
            let req = policy::Request {
                path: "/projects/42",
                ip,
            };
            let before = policy::decide(&ps, &req, None);
            let after = policy::decide(&ps, &req, Some(&who));
            black_box((before.permits(), after.permits()))
        })
    });
}

/// The identity assertion on the hot path (docs/product.md#s8): a cached token is a map lookup
/// and a few string comparisons; signing (ECDSA P-256) happens once per session and lifetime.
fn assertion(c: &mut Criterion) {
    use otpgate::assertion::{Assertions, MAX_LIFETIME, SigningKeys, Subject};
    use otpgate::session::SessionId;
    let a = Assertions::default();
    a.replace_keys(SigningKeys::ephemeral("bench").unwrap_or_else(|_| unreachable!()));
    let groups: Vec<std::sync::Arc<str>> = vec!["engineering".into(), "ops".into()];
    let mut s = Subject {
        session: SessionId([1; 16]),
        session_expires_ms: 1_800_086_400_000,
        issuer: "https://app.example.test",
        audience: "otpgate:app:app",
        user: "alice@corp.example",
        email: "alice@corp.example",
        groups: &groups,
        method: LoginMethod::OneTimePin,
    };
    let now = 1_800_000_000_000;
    c.bench_function("assertion::token (cached)", |b| {
        b.iter(|| a.token(black_box(&s), MAX_LIFETIME, now))
    });
    let mut n = 0u64;
    c.bench_function("assertion::token (signed: a new session)", |b| {
        b.iter(|| {
            n += 1;
            s.session.0[..8].copy_from_slice(&n.to_be_bytes());
            a.token(black_box(&s), MAX_LIFETIME, now)
        })
    });
}

/// A service token presented with a request: the lookup by client id, the keyed hash and the
/// constant-time comparisons, then the policy decision for the service.
fn service_token(c: &mut Criterion) {
    use otpgate::config::{Secret, ServiceTokenConfig, ServiceTokenSettings, TokenSecret};
    use otpgate::session::service_token::ServiceTokens;

    let secret = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let tokens = (0..20)
        .map(|i| ServiceTokenConfig {
            name: format!("token{i}"),
            client_id: format!("{i:032x}"),
            secrets: vec![TokenSecret::Plain(Secret::new(secret))],
            expires: None,
        })
        .collect();
    let settings = ServiceTokenSettings {
        key_file: "unused".into(),
        key: Some(Secret::new("BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=")),
        client_id_header: HeaderName::from_static(otpgate::config::CLIENT_ID_HEADER),
        client_secret_header: HeaderName::from_static(otpgate::config::CLIENT_SECRET_HEADER),
        tokens,
    };
    let table = ServiceTokens::build(&settings);
    let mut headers = browser_headers();
    headers.remove("cookie");
    headers.insert(
        otpgate::config::CLIENT_ID_HEADER,
        HeaderValue::from_str(&format!("{:032x}", 7)).unwrap_or_else(|_| unreachable!()),
    );
    headers.insert(
        otpgate::config::CLIENT_SECRET_HEADER,
        HeaderValue::from_static(secret),
    );
    let ps = vec![Policy {
        name: "machines".into(),
        action: Action::ServiceAuth,
        paths: vec![],
        include: vec![Selector::ServiceToken("token7".into())],
        require: vec![],
        exclude: vec![],
    }];
    let ip: IpAddr = "198.51.100.7".parse().unwrap_or_else(|_| unreachable!());
    c.bench_function("service-token check", |b| {
        b.iter(|| {
            let ok = table.check(black_box(&headers), 1_900_000_000_000).is_ok();
            black_box(ok)
        })
    });
    c.bench_function("service-token check + policy decide", |b| {
        b.iter(|| {
            let s = table
                .check(black_box(&headers), 1_900_000_000_000)
                .unwrap_or_else(|_| unreachable!());
            let req = policy::Request {
                path: "/projects/42",
                ip,
            };
            black_box(policy::decide_service(&ps, &req, s.name()).permits())
        })
    });
}

/// A whole authenticated request through `Gateway::handle` to `builtin:echo` (no socket), with
/// the assertion switched on and off: the on/off ratio is the assertion's share of the work.
fn gateway(c: &mut Criterion) {
    for (label, head) in [
        (
            "gateway: authenticated echo request, assertion off",
            "identity_assertion: { enabled: false }",
        ),
        (
            "gateway: authenticated echo request, assertion on (cached)",
            "",
        ),
    ] {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|_| unreachable!());
        let dir = tempfile::tempdir().unwrap_or_else(|_| unreachable!());
        let (gw, cookie) = rt.block_on(async { echo_gateway(dir.path(), head) });
        let conn = otpgate::gateway::ConnInfo {
            peer: "198.51.100.7:50000"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
            tls: false,
            sni: None,
        };
        c.bench_function(label, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let req = http::Request::get("/projects/42")
                        .header("host", "app.test")
                        .header("cookie", &cookie)
                        .body(String::new())
                        .unwrap_or_else(|_| unreachable!());
                    let r = gw.handle(req, &conn).await;
                    black_box(
                        http_body_util::BodyExt::collect(r.into_body())
                            .await
                            .is_ok(),
                    )
                })
            })
        });
    }
}

/// A gateway with one `builtin:echo` app, no listener, and a session cookie for it.
fn echo_gateway(dir: &std::path::Path, head: &str) -> (otpgate::gateway::Gateway, String) {
    use otpgate::session::{KeyRing, Sessions, TokenKind};
    let yaml = format!(
        "version: 1\nlisten: {{ http: 127.0.0.1:0 }}\nlog: {{ access: false }}\n{head}\napps:\n  - name: app\n    hosts: [app.test]\n    public_url: http://app.test\n    upstream: builtin:echo\n    policies:\n      - {{ name: all, action: allow, include: [ {{ everyone: true }} ] }}\n"
    );
    let config = otpgate::config::load_str(
        &yaml,
        &dir.join("otpgate.yaml"),
        Vec::<(String, String)>::new(),
    )
    .unwrap_or_else(|_| unreachable!())
    .config;
    let random = otpgate::random::system();
    let clock: std::sync::Arc<dyn otpgate::clock::Clock> = otpgate::clock::system();
    let sessions = Sessions::new(
        KeyRing::from_secrets(&[("k1", [7; 32])]).unwrap_or_else(|| unreachable!()),
        random.clone(),
    );
    let (_, value) = sessions
        .issue(
            TokenKind::Session,
            "app",
            Email::parse("alice@corp.example").unwrap_or_else(|_| unreachable!()),
            LoginMethod::OneTimePin,
            std::time::Duration::from_secs(86_400),
            clock.now_ms(),
        )
        .unwrap_or_else(|_| unreachable!());
    let _ = std::fs::create_dir_all(&config.data_dir);
    let parts = otpgate::gateway::Parts {
        clock: clock.clone(),
        random,
        sessions,
        store: otpgate::store::Store::open_embedded(&config.data_dir)
            .unwrap_or_else(|_| unreachable!()),
        state: otpgate::state::State::memory(clock),
        mailer: otpgate::mailer::Mailer::start(&config.mail).unwrap_or_else(|_| unreachable!()),
        shutdown: tokio_util::sync::CancellationToken::new(),
    };
    let bound = otpgate::config::BoundAddrs::default();
    let runtime =
        otpgate::gateway::Runtime::build(config, &bound, None).unwrap_or_else(|_| unreachable!());
    let gw = otpgate::gateway::Gateway::new(runtime, bound, parts);
    gw.assertions().replace_keys(
        otpgate::assertion::SigningKeys::ephemeral("bench").unwrap_or_else(|_| unreachable!()),
    );
    (gw, format!("otpgate={value}"))
}

criterion_group!(benches, bench, session, service_token, assertion, gateway);
criterion_main!(benches);
