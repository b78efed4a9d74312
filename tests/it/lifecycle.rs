//! Connection limits and timeouts, graceful shutdown, config reload, the admin listener.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// One bypass app `one.test` in front of `up`, with these `limits` (also used by the fast
/// path's tests).
pub fn config(up: &str, limits: &str, apps_extra: &str) -> String {
    format!(
        "version: 1
listen: {{ http: 127.0.0.1:0, admin: 127.0.0.1:0 }}
limits: {{ {limits} }}
apps:
  - name: one
    hosts: [one.test]
    public_url: http://one.test
    upstream: {up}
    policies: [ {{ name: open, action: bypass }} ]
{apps_extra}"
    )
}

/// Reads until the peer closes; returns what was read, or panics after `within`.
pub async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(within, s.read_to_end(&mut buf))
        .await
        .expect("the gateway closed the connection");
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_cut_off() {
    let up = Upstream::start().await;
    let gw = Gw::start(&config(&up.url(), "header_read_timeout: 300ms", "")).await;
    let mut s = TcpStream::connect(gw.http()).await.unwrap();
    // A slowloris client: part of a head, then nothing.
    s.write_all(b"GET / HTTP/1.1\r\nHost: one.test\r\nX-Slow: ")
        .await
        .unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(
        !String::from_utf8_lossy(&got).contains(" 200 "),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    let up = Upstream::start().await;
    let gw = Gw::start(&config(
        &up.url(),
        "header_read_timeout: 400ms, idle_timeout: 400ms",
        "",
    ))
    .await;
    // HTTP/1.1: one request, then silence.
    let mut s = TcpStream::connect(gw.http()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: one.test\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(3)).await;
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));

    // HTTP/2 (prior knowledge on the plain listener): the connection ends after the idle time.
    let tcp = TcpStream::connect(gw.http()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let conn_task = tokio::spawn(conn);
    let req = http::Request::get(format!("http://one.test:{}/h2", gw.http().port()))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await.unwrap();
    tokio::time::timeout(Duration::from_secs(3), conn_task)
        .await
        .expect("idle HTTP/2 connection closed")
        .unwrap()
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_get_431() {
    let up = Upstream::start().await;
    let gw = Gw::start(&config(&up.url(), "max_header_bytes: 8KiB", "")).await;
    let big = "x".repeat(16 * 1024);
    let r = raw(
        gw.http(),
        &format!("GET / HTTP/1.1\nHost: one.test\nX-Big: {big}"),
        b"",
    )
    .await;
    assert_eq!(r.status, 431);
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let up = Upstream::start().await;
    let gw = Gw::start(&config(
        &up.url(),
        "max_connections: 2, idle_timeout: 30s",
        "",
    ))
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(gw.http()).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: one.test\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(s);
    }
    let mut third = TcpStream::connect(gw.http()).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: one.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.read_exact(&mut buf))
            .await
            .is_err(),
        "served beyond the cap"
    );
    drop(held.pop());
    tokio::time::timeout(Duration::from_secs(5), third.read_exact(&mut buf))
        .await
        .expect("served once a slot freed")
        .unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let up = Upstream::start().await;
    let gw = Gw::start(&config(&up.url(), "shutdown_grace: 10s", "")).await;
    let client = gw.client();
    let url = gw.http_url("one.test", "/slow?ms=1000");
    let in_flight =
        tokio::spawn(async move { client.get(url).send().await.unwrap().text().await.unwrap() });
    eventually(
        "the request to reach the upstream",
        Duration::from_secs(5),
        || up.hits() == 1,
    )
    .await;
    let addr = gw.http();
    let Gw { running, .. } = gw;
    running.shutdown();
    assert!(!running.gateway().is_ready());
    let started = std::time::Instant::now();
    running.wait().await;
    assert_eq!(in_flight.await.unwrap(), "slow done");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Nothing listens any more.
    assert!(TcpStream::connect(addr).await.is_err());
}

/// `limits.runtime: per_core`: a thread and a socket per core serve the app listener; many
/// connections are all answered, and shutdown still drains an in-flight request first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_core_runtime_serves_and_drains() {
    let up = Upstream::start().await;
    let gw = Gw::start(&config(
        &up.url(),
        "runtime: per_core, shutdown_grace: 10s",
        "",
    ))
    .await;
    // Fresh connections each, so the kernel spreads them over the per-core sockets.
    for i in 0..16 {
        let r = raw(
            gw.http(),
            &format!("GET /n{i} HTTP/1.1\nHost: one.test\nConnection: close"),
            b"",
        )
        .await;
        assert_eq!(r.status, 200, "request {i}");
    }
    let client = gw.client();
    let url = gw.http_url("one.test", "/slow?ms=1000");
    let in_flight =
        tokio::spawn(async move { client.get(url).send().await.unwrap().text().await.unwrap() });
    eventually(
        "the request to reach the upstream",
        Duration::from_secs(5),
        || up.hits() == 17,
    )
    .await;
    let addr = gw.http();
    let Gw { running, .. } = gw;
    running.shutdown();
    let started = std::time::Instant::now();
    running.wait().await;
    assert_eq!(in_flight.await.unwrap(), "slow done");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_the_config_and_keeps_it_when_the_new_file_is_bad() {
    let up = Upstream::start().await;
    let gw = Gw::start(&config(&up.url(), "", "")).await;
    let client = gw.client();
    assert_eq!(
        client
            .get(gw.http_url("two.test", "/"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let two = "  - name: two
    hosts: [two.test]
    public_url: http://two.test
    upstream: builtin:echo
    policies: [ { name: open, action: bypass } ]
";
    gw.write_config(&config(&up.url(), "", two));
    gw.running.reload().expect("good config reloads");
    let v: serde_json::Value = client
        .get(gw.http_url("two.test", "/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["app"], "two");

    // A broken file is refused with its key path, and the running config stays.
    gw.write_config(&config(&up.url(), "", &two.replace("bypass", "bypas")));
    match gw.running.reload() {
        Err(otpgate::ReloadError::Config(e)) => {
            assert!(
                e.errors
                    .iter()
                    .any(|p| p.path == "apps[1].policies[0].action"),
                "{:?}",
                e.errors
            );
        }
        other => panic!("bad config accepted: {other:?}"),
    }
    assert_eq!(
        client
            .get(gw.http_url("two.test", "/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let m = gw.metrics().await;
    assert!(
        m.contains("otpgate_config_reloads_total{result=\"success\"}"),
        "{m}"
    );
    assert!(
        m.contains("otpgate_config_reloads_total{result=\"failure\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_serves_health_readiness_and_metrics_only() {
    let up = Upstream::start().await;
    let gw = Gw::start(&config(&up.url(), "", "")).await;
    let c = gw.client();
    assert_eq!(
        c.get(gw.http_url("one.test", "/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = c.get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok\n");
    assert_eq!(
        c.get(gw.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let m = c.get(gw.admin_url("/metrics")).send().await.unwrap();
    assert!(
        m.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let m = m.text().await.unwrap();
    for want in [
        "otpgate_requests_total{app=\"one\",status=\"200\"}",
        "otpgate_upstream_duration_seconds_bucket{app=\"one\"",
        "otpgate_policy_decisions_total{app=\"one\",decision=\"bypass\"}",
        "# HELP otpgate_requests_total",
    ] {
        assert!(m.contains(want), "missing {want} in metrics:\n{m}");
    }
    assert_eq!(
        c.post(gw.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    assert_eq!(
        c.get(gw.admin_url("/nope")).send().await.unwrap().status(),
        404
    );
    // The admin listener never proxies app traffic.
    let r = raw(gw.admin(), "GET / HTTP/1.1\nHost: one.test", b"").await;
    assert_eq!(r.status, 404);
    assert_eq!(up.hits(), 1);
}
