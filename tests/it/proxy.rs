//! Proxying: streaming, header hygiene, forwarding headers, upgrades, upstream failures.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

/// One app on plain HTTP in front of `upstream`, open to everyone (bypass).
pub fn bypass_app(upstream: &str, extra: &str) -> String {
    format!(
        "version: 1
listen: {{ http: 127.0.0.1:0, admin: 127.0.0.1:0 }}
apps:
  - name: app
    hosts: [app.test]
    public_url: http://app.test
    upstream: {upstream}
{extra}
    policies:
      - {{ name: open, action: bypass }}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_app_is_proxied_to_a_real_upstream() {
    let up = Upstream::start().await;
    let gw = Gw::start(&bypass_app(&up.url(), "")).await;
    let r = gw
        .client()
        .get(gw.http_url("app.test", "/some/path?q=1&r=%20x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-kept"], "yes");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["path"], "/some/path");
    assert_eq!(v["query"], "q=1&r=%20x");
    assert_eq!(v["method"], "GET");
    // Host is the upstream's by default.
    assert_eq!(v["headers"]["host"][0], up.addr.to_string());
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preserve_host_sends_the_clients_host() {
    let up = Upstream::start().await;
    let gw = Gw::start(&bypass_app(&up.url(), "    preserve_host: true")).await;
    let v: serde_json::Value = gw
        .client()
        .get(gw.http_url("app.test", "/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["headers"]["host"][0],
        format!("app.test:{}", gw.http().port())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_is_streamed_not_buffered() {
    const SIZE: u64 = 32 << 20;
    let up = Upstream::start().await;
    let gw = Gw::start(&bypass_app(&up.url(), "")).await;
    let mut r = gw
        .client()
        .get(gw.http_url("app.test", &format!("/stream?size={SIZE}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The upstream sent only its first chunk and waits for us: if the gateway buffered whole
    // bodies, nothing would arrive here.
    let first = tokio::time::timeout(Duration::from_secs(10), r.chunk())
        .await
        .expect("first chunk before the upstream finished")
        .unwrap()
        .unwrap();
    assert!(!first.is_empty());
    up.state.release_download.notify_one();
    let mut got = first.to_vec();
    while let Some(c) = r.chunk().await.unwrap() {
        got.extend_from_slice(&c);
    }
    assert_eq!(got.len() as u64, SIZE);
    assert_eq!(sha256_hex(&got), sha256_hex(&pattern(0, SIZE as usize)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_is_streamed_not_buffered() {
    const SIZE: usize = 32 << 20;
    const CHUNK: usize = 256 * 1024;
    let up = Upstream::start().await;
    let gw = Gw::start(&bypass_app(&up.url(), "    max_request_body: 0")).await;
    let (tx, rx) = mpsc::channel::<Bytes>(2);
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    }));
    let data = pattern(0, SIZE);
    let client = gw.client();
    let url = gw.http_url("app.test", "/upload");
    let req = tokio::spawn(async move { client.post(url).body(body).send().await });
    tx.send(Bytes::copy_from_slice(&data[..CHUNK]))
        .await
        .unwrap();
    // The upstream must see the first chunk while the client still holds the rest back.
    tokio::time::timeout(Duration::from_secs(10), up.state.upload_started.notified())
        .await
        .expect("upstream received data before the upload finished");
    for c in data[CHUNK..].chunks(CHUNK) {
        tx.send(Bytes::copy_from_slice(c)).await.unwrap();
    }
    drop(tx);
    let r = req.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["bytes"], SIZE as u64);
    assert_eq!(v["sha256"], sha256_hex(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_limit_gets_413() {
    let up = Upstream::start().await;
    let gw = Gw::start(&bypass_app(&up.url(), "    max_request_body: 1KiB")).await;
    // Declared too large: refused before anything reaches the upstream.
    let r = gw
        .client()
        .post(gw.http_url("app.test", "/upload"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(up.hits(), 0);
    // Chunked and too large: cut off while streaming.
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(
        (0..4).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 600]))),
    ));
    let r = gw
        .client()
        .post(gw.http_url("app.test", "/upload"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Within the limit: fine.
    let r = gw
        .client()
        .post(gw.http_url("app.test", "/upload"))
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_34_spoofed_identity_and_url_override_headers_are_stripped() {
    let up = Upstream::start().await;
    let gw = Gw::start(&bypass_app(&up.url(), "")).await;
    let r = raw(
        gw.http(),
        "GET /x HTTP/1.1
Host: app.test
X-Otpgate-Email: evil@attacker.example
X-OTPGATE-USER: evil
x_otpgate_groups: admins
X-Otpgate_Email: evil2@attacker.example
X-Original-URL: /admin
X_Rewrite_URL: /admin
X-Forwarded-For: 6.6.6.6
X_Forwarded_For: 6.6.6.6
X-Forwarded-Host: evil.example
X-Real-IP: 6.6.6.6
Forwarded: for=6.6.6.6
Accept: application/json",
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let headers = v["headers"].as_object().unwrap();
    for name in headers.keys() {
        let folded = name.replace('_', "-");
        assert!(
            !folded.starts_with("x-otpgate-"),
            "identity header {name} reached the upstream"
        );
        assert!(
            !folded.contains("original-url") && !folded.contains("rewrite-url"),
            "{name} reached the upstream"
        );
        assert!(
            !name.contains('_'),
            "underscore header {name} reached the upstream"
        );
    }
    assert_eq!(
        v["headers"]["x-forwarded-for"],
        serde_json::json!(["127.0.0.1"])
    );
    assert_eq!(
        v["headers"]["x-forwarded-host"],
        serde_json::json!(["app.test"])
    );
    assert_eq!(
        v["headers"]["x-forwarded-proto"],
        serde_json::json!(["http"])
    );
    assert_eq!(v["headers"]["x-real-ip"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(
        v["headers"]["forwarded"],
        serde_json::json!(["for=127.0.0.1;host=\"app.test\";proto=http"])
    );
}

/// docs/security.md#40 over a socket, from a trusted proxy: raw header lines keep the
/// client's spelling (case, `_`) up to the gateway's parser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_40_foreign_identity_headers_are_stripped_before_a_real_upstream() {
    let up = Upstream::start().await;
    let app = "    identity_headers: { email: X-Employee-Email }";
    let yaml = bypass_app(&up.url(), app).replace(
        "apps:",
        "trusted_proxies: [127.0.0.1]\nstrip_request_headers: [X-Legacy-*]\napps:",
    );
    let gw = Gw::start(&yaml).await;
    let spoofs = "Remote_User: m\nX-Remote-User: m\nX-Auth-Request-Email: m\nX_Auth_Request_User: m
X-Forwarded-User: m\nX_Forwarded_Email: m\nX-WEBAUTH-USER: m\ncf-access-jwt-assertion: m
X-Pomerium-Jwt-Assertion: m\nOTPGATE-USER: m\nX-Otpgate_Email: m\nX-Legacy-Role: m
X_Employee_Email: m\nX-Forwarded-For: 203.0.113.50";
    let r = raw(
        gw.http(),
        &format!("GET / HTTP/1.1\nHost: app.test\n{spoofs}"),
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let headers = v["headers"].as_object().unwrap();
    for (name, values) in headers {
        let spoofed = values.as_array().unwrap().iter().any(|v| v == "m");
        assert!(!spoofed, "{name} reached the upstream");
    }
    assert_eq!(
        v["headers"]["x-forwarded-for"],
        serde_json::json!(["203.0.113.50, 127.0.0.1"])
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let up = Upstream::start().await;
    let gw = Gw::start(&bypass_app(&up.url(), "")).await;
    let r = raw(
        gw.http(),
        "GET / HTTP/1.1
Host: app.test
Connection: X-Foo, x-bar
Keep-Alive: timeout=9
X-Foo: secret
X-Bar: secret
X-Baz: kept
TE: trailers
Proxy-Authorization: Basic Zm9vOmJhcg==
Upgrade: h2c",
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let h = v["headers"].as_object().unwrap();
    for gone in [
        "x-foo",
        "x-bar",
        "keep-alive",
        "te",
        "proxy-authorization",
        "upgrade",
    ] {
        assert!(!h.contains_key(gone), "{gone} reached the upstream: {h:?}");
    }
    assert_eq!(h["x-baz"], serde_json::json!(["kept"]));
    // The upstream's hop-by-hop response headers do not reach the client.
    assert_eq!(r.header("x-upstream-secret"), None);
    assert_eq!(r.header("keep-alive"), None);
    assert_eq!(r.header("x-kept"), Some("yes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_extend_forwarding_headers() {
    let up = Upstream::start().await;
    let yaml = bypass_app(&up.url(), "").replace("apps:", "trusted_proxies: [127.0.0.1]\napps:");
    let gw = Gw::start(&yaml).await;
    let r = raw(
        gw.http(),
        "GET / HTTP/1.1
Host: app.test
X-Forwarded-For: 203.0.113.50
X-Forwarded-Proto: https
X-Forwarded-Host: public.example
Forwarded: for=203.0.113.50",
        b"",
    )
    .await;
    let v = r.json();
    assert_eq!(
        v["headers"]["x-forwarded-for"],
        serde_json::json!(["203.0.113.50, 127.0.0.1"])
    );
    assert_eq!(
        v["headers"]["x-forwarded-proto"],
        serde_json::json!(["https"])
    );
    assert_eq!(
        v["headers"]["x-forwarded-host"],
        serde_json::json!(["public.example"])
    );
    assert_eq!(
        v["headers"]["x-real-ip"],
        serde_json::json!(["203.0.113.50"])
    );
    assert_eq!(
        v["headers"]["forwarded"],
        serde_json::json!(["for=203.0.113.50, for=127.0.0.1;host=\"app.test\";proto=https"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    let up = Upstream::start().await;
    let gw = Gw::start(&bypass_app(&up.url(), "")).await;
    let stream = tokio::net::TcpStream::connect(gw.http()).await.unwrap();
    let url = format!("ws://app.test:{}/ws", gw.http().port());
    let (mut ws, resp) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(resp.status(), 101);
    for text in ["hello", "through", "otpgate"] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_data().as_ref(), &[0u8, 1, 2, 255]);
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gives_502_page() {
    // Bind and drop: nothing listens on this port now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = Gw::start(&bypass_app(&format!("http://127.0.0.1:{port}"), "")).await;
    let r = gw
        .client()
        .get(gw.http_url("app.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert!(r.text().await.unwrap().contains("Bad gateway"));
    let m = gw.metrics().await;
    assert!(
        m.contains("otpgate_requests_total{app=\"app\",status=\"502\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_gives_504_after_the_app_timeout() {
    let up = Upstream::start().await;
    let gw = Gw::start(&bypass_app(&up.url(), "    timeout: 300ms")).await;
    let started = std::time::Instant::now();
    let r = gw
        .client()
        .get(gw.http_url("app.test", "/slow?ms=3000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "504 came after {:?}",
        started.elapsed()
    );
    assert!(r.text().await.unwrap().contains("Gateway timeout"));
    // Within the timeout it works.
    let r = gw
        .client()
        .get(gw.http_url("app.test", "/slow?ms=10"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_a_private_ca() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["upstream.test", "127.0.0.1"]);
    let up = Upstream::start_tls(&leaf).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let yaml = bypass_app(
        &format!("https://127.0.0.1:{}", up.addr.port()),
        &format!("    upstream_ca: {}", ca_path.display()),
    );
    let gw = Gw::start(&yaml).await;
    let r = gw
        .client()
        .get(gw.http_url("app.test", "/over-tls"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["path"], "/over-tls");
    // Without the CA the upstream's certificate is not trusted: 502, never an insecure fallback.
    let gw2 = Gw::start(&bypass_app(
        &format!("https://127.0.0.1:{}", up.addr.port()),
        "",
    ))
    .await;
    let r = gw2
        .client()
        .get(gw2.http_url("app.test", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_echo_shows_what_the_app_receives() {
    let gw = Gw::start(&bypass_app("builtin:echo", "")).await;
    let r = gw
        .client()
        .post(gw.http_url("app.test", "/echo/me?x=1"))
        .header("x-otpgate-email", "spoof@evil.example")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["app"], "app");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/echo/me");
    assert_eq!(v["query"], "x=1");
    assert_eq!(v["body_bytes"], 5);
    assert_eq!(v["identity"], serde_json::json!({}));
    assert_eq!(
        v["headers"]["x-forwarded-for"],
        serde_json::json!(["127.0.0.1"])
    );
    let html = gw
        .client()
        .get(gw.http_url("app.test", "/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(html.headers()["content-type"], "text/html; charset=utf-8");
    assert!(
        html.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert!(html.text().await.unwrap().contains("app is behind otpgate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_32_upstreams_cannot_plant_the_gateways_cookies() {
    let up = Upstream::start().await;
    let gw = Gw::start(&bypass_app(&up.url(), "")).await;
    let r = raw(gw.http(), "GET /plant HTTP/1.1\nHost: app.test", b"").await;
    assert_eq!(r.status, 200);
    let cookies: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies, ["theme=dark; Path=/"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_websocket_upgrades_are_passed_through() {
    let up = Upstream::start().await;
    let gw = Gw::start(&bypass_app(&up.url(), "")).await;
    let r = raw(gw.http(), "GET / HTTP/1.1\nHost: app.test\nConnection: Upgrade, HTTP2-Settings\nUpgrade: h2c\nHTTP2-Settings: AAMAAABkAAQAAP__", b"").await;
    assert_eq!(r.status, 200, "served as a plain request");
    let h = r.json()["headers"].clone();
    assert!(
        h.get("upgrade").is_none() && h.get("http2-settings").is_none(),
        "{h}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_websocket_tunnels_are_closed_and_count_against_the_connection_cap() {
    let up = Upstream::start().await;
    let gw = Gw::start(&bypass_app(&up.url(), "").replace(
        "apps:",
        "limits: { idle_timeout: 1s, max_connections: 2 }\napps:",
    ))
    .await;
    let url = format!("ws://app.test:{}/ws", gw.http().port());
    let (mut first, _) = tokio_tungstenite::client_async(
        url.clone(),
        tokio::net::TcpStream::connect(gw.http()).await.unwrap(),
    )
    .await
    .unwrap();
    let (_second, _) = tokio_tungstenite::client_async(
        url.clone(),
        tokio::net::TcpStream::connect(gw.http()).await.unwrap(),
    )
    .await
    .unwrap();
    // Both slots are taken by tunnels: a third upgrade is refused, plain requests still work.
    let err = tokio_tungstenite::client_async(
        url.clone(),
        tokio::net::TcpStream::connect(gw.http()).await.unwrap(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    // A request that cannot become a tunnel (HTTP/1.0 has no upgrades) takes no tunnel slot,
    // whatever headers it carries: it is answered, not refused as busy.
    let r = raw(
        gw.http(),
        "GET / HTTP/1.0\nHost: app.test\nUpgrade: websocket\nConnection: upgrade",
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    // An active tunnel stays open past the idle time...
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        first.send(Message::text("ping")).await.unwrap();
        assert!(first.next().await.unwrap().is_ok());
    }
    // ...an idle one is closed by the gateway.
    let end = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            match first.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(m)) if m.is_close() => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "idle tunnel still open");
    // Freed slots take new tunnels.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut again, _) = tokio_tungstenite::client_async(
        url,
        tokio::net::TcpStream::connect(gw.http()).await.unwrap(),
    )
    .await
    .unwrap();
    again.send(Message::text("hi")).await.unwrap();
    assert_eq!(
        again
            .next()
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        "hi"
    );
}
