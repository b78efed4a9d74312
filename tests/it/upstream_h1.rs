//! The direct HTTP/1.1 upstream path (bodiless GET and HEAD) against an upstream that answers
//! with exactly the bytes each test needs: framing by length, by chunks and by close, kept
//! and closed connections, interim responses, refused heads.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

/// What the upstream does after a request head arrives.
#[derive(Clone, Copy)]
enum Then {
    /// Writes the pieces (with a short pause between them) and waits for the next request.
    Keep,
    /// Writes the pieces, then closes the connection.
    Close,
}

/// An HTTP/1.1 upstream on loopback that answers every request head with `pieces`, counting
/// connections and request heads; on the first request of each connection after
/// `close_idle_after` requests in all, it closes without answering (a kept connection the
/// upstream dropped while idle).
struct Scripted {
    port: u16,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    heads: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Scripted {
    async fn start(pieces: Vec<Vec<u8>>, then: Then) -> Self {
        Self::start_with(pieces, then, None).await
    }

    async fn start_with(pieces: Vec<Vec<u8>>, then: Then, drop_kept_after: Option<usize>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, r, h) = (connections.clone(), requests.clone(), heads.clone());
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (pieces, r, h) = (pieces.clone(), r.clone(), h.clone());
                tokio::spawn(serve(s, pieces, then, r, h, drop_kept_after));
            }
        });
        Self {
            port,
            connections,
            requests,
            heads,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn serve(
    mut s: TcpStream,
    pieces: Vec<Vec<u8>>,
    then: Then,
    requests: Arc<AtomicUsize>,
    heads: Arc<std::sync::Mutex<Vec<String>>>,
    drop_kept_after: Option<usize>,
) {
    let mut buf = Vec::new();
    let mut served_here = 0;
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head: Vec<u8> = buf.drain(..end).collect();
        let total = requests.fetch_add(1, Ordering::SeqCst) + 1;
        if served_here > 0 && drop_kept_after.is_some_and(|n| total > n) {
            // Closed while the gateway thought it idle: the request is never answered.
            return;
        }
        heads
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&head).into_owned());
        for (i, p) in pieces.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if s.write_all(p).await.is_err() {
                return;
            }
        }
        served_here += 1;
        if let Then::Close = then {
            let _ = s.shutdown().await;
            return;
        }
    }
}

fn app(upstream: &str) -> String {
    crate::proxy::bypass_app(upstream, "")
}

async fn get(gw: &Gw, client: &reqwest::Client, path: &str) -> reqwest::Response {
    client
        .get(gw.http_url("app.test", path))
        .send()
        .await
        .unwrap()
}

fn bytes(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_gets_share_one_kept_upstream_connection() {
    let up = Scripted::start(
        vec![bytes(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\nhello",
        )],
        Then::Keep,
    )
    .await;
    let gw = Gw::start(&app(&up.url())).await;
    let client = gw.client();
    for _ in 0..20 {
        let r = get(&gw, &client, "/a?b=c").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-up"], "1");
        assert_eq!(r.text().await.unwrap(), "hello");
    }
    assert_eq!(up.requests(), 20);
    assert_eq!(
        up.connections(),
        1,
        "one kept connection for sequential requests"
    );
    let head = up.heads.lock().unwrap()[0].clone();
    assert!(head.starts_with("GET /a?b=c HTTP/1.1\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("host: 127.0.0.1:{}\r\n", up.port))
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("x-forwarded-proto: http\r\n"),
        "{head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_split_across_writes_arrive_whole() {
    let up = Scripted::start(
        vec![
            bytes("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"),
            bytes("lo\r\n6;ext=1\r\n, worl\r\n"),
            bytes("1\r\nd\r\n0\r\n\r\n"),
        ],
        Then::Keep,
    )
    .await;
    let gw = Gw::start(&app(&up.url())).await;
    let client = gw.client();
    for _ in 0..3 {
        let r = get(&gw, &client, "/").await;
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("content-length").is_none());
        assert_eq!(r.text().await.unwrap(), "hello, world");
    }
    assert_eq!(
        up.connections(),
        1,
        "a chunked body read to its end frees the connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_delimited_by_the_close_is_relayed_and_the_connection_not_kept() {
    let up = Scripted::start(
        vec![
            bytes("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil "),
            bytes("the end"),
        ],
        Then::Close,
    )
    .await;
    let gw = Gw::start(&app(&up.url())).await;
    let client = gw.client();
    for _ in 0..2 {
        let r = get(&gw, &client, "/").await;
        assert_eq!(r.text().await.unwrap(), "until the end");
    }
    assert_eq!(up.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_from_the_upstream_is_honoured() {
    let up = Scripted::start(
        vec![bytes(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        )],
        Then::Close,
    )
    .await;
    let gw = Gw::start(&app(&up.url())).await;
    let client = gw.client();
    for _ in 0..3 {
        let r = get(&gw, &client, "/").await;
        assert!(r.headers().get("connection").is_none_or(|v| v != "close"));
        assert_eq!(r.text().await.unwrap(), "ok");
    }
    assert_eq!(up.connections(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_connection_the_upstream_dropped_is_replaced_once() {
    // The first request is answered on connection 1; every later request arriving on a
    // connection that already served one is dropped unanswered.
    let up = Scripted::start_with(
        vec![bytes("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")],
        Then::Keep,
        Some(1),
    )
    .await;
    let gw = Gw::start(&app(&up.url())).await;
    let client = gw.client();
    for i in 0..3 {
        let r = get(&gw, &client, "/").await;
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.text().await.unwrap(), "ok");
    }
    // Requests 2 and 3 each found their kept connection dropped and went again on a new one.
    assert_eq!(up.connections(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_carry_the_length_and_no_body() {
    let up = Scripted::start(
        vec![bytes("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")],
        Then::Keep,
    )
    .await;
    let gw = Gw::start(&app(&up.url())).await;
    for _ in 0..2 {
        let r = raw(gw.http(), "HEAD / HTTP/1.1\nHost: app.test", b"").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some("10"));
        assert!(r.body.is_empty());
    }
    assert_eq!(
        up.connections(),
        1,
        "no body to read: the connection is kept at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_are_dropped() {
    let up = Scripted::start(
        vec![bytes(
            "HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )],
        Then::Keep,
    )
    .await;
    let gw = Gw::start(&app(&up.url())).await;
    let r = get(&gw, &gw.client(), "/").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_or_malformed_upstream_heads_get_502() {
    for answer in [
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nok",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        "SSH-2.0-OpenSSH_9.2\r\n\r\n",
    ] {
        let up = Scripted::start(vec![bytes(answer)], Then::Close).await;
        let gw = Gw::start(&app(&up.url())).await;
        let r = get(&gw, &gw.client(), "/").await;
        assert_eq!(r.status(), 502, "{answer:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_aborts_the_client_response() {
    let up = Scripted::start(
        vec![bytes(
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part",
        )],
        Then::Close,
    )
    .await;
    let gw = Gw::start(&app(&up.url())).await;
    // Either the response never completes its head or its body fails: never a short body
    // passed off as whole.
    match gw.client().get(gw.http_url("app.test", "/")).send().await {
        Err(_) => {}
        Ok(r) => assert!(
            r.bytes().await.is_err(),
            "the client must see the body end early"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_out_of_turn_on_an_idle_connection_is_never_relayed() {
    // Each connection answers its first request, then writes a 408 out of turn while idle
    // (as some servers do before closing an idle connection) and keeps the socket open.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => got.extend_from_slice(&buf[..k]),
                    }
                }
                let body = format!("conn {n}");
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(answer.as_bytes()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = s
                    .write_all(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
                    .await;
                // Keep the socket open; whatever arrives now goes unanswered.
                while let Ok(k) = s.read(&mut buf).await {
                    if k == 0 {
                        return;
                    }
                }
            });
        }
    });
    let gw = Gw::start(&app(&format!("http://127.0.0.1:{port}"))).await;
    let client = gw.client();
    let first = get(&gw, &client, "/").await;
    assert_eq!(first.text().await.unwrap(), "conn 1");
    // Idle past the probe threshold: the stray 408 is waiting on the kept connection.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = get(&gw, &client, "/").await;
    assert_eq!(second.status(), 200);
    assert_eq!(second.text().await.unwrap(), "conn 2");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_speaking_http1_take_the_direct_path() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["127.0.0.1"]);
    let up = Upstream::start_tls(&leaf).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let yaml = crate::proxy::bypass_app(
        &format!("https://127.0.0.1:{}", up.addr.port()),
        &format!(
            "    upstream_ca: {}\n    upstream_protocol: http1",
            ca_path.display()
        ),
    );
    let gw = Gw::start(&yaml).await;
    let client = gw.client();
    for i in 0..5 {
        let r = get(&gw, &client, &format!("/over-tls/{i}")).await;
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["path"], format!("/over-tls/{i}"));
        assert_eq!(v["method"], "GET");
    }
    assert_eq!(up.hits(), 5);
    // A body larger than the read buffer streams through the direct path's body reader.
    let r = get(&gw, &client, "/stream?size=60000").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), pattern(0, 60_000));
    assert_eq!(up.hits(), 6);
}
