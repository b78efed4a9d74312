//! Several replicas on one Redis (docs/product.md#s6): two in-process gateways share a real
//! redis-server (and one data_dir, so the cookie keys and the embedded store are shared too;
//! tests/it/pg_gateway.rs runs the store on PostgreSQL). A PIN asked through one verifies through the
//! other exactly once, limits count across both, a Redis outage fails logins closed while
//! sessions keep being proxied, and everything recovers without a restart, also through a
//! Sentinel failover.

use std::time::{Duration, Instant};

use crate::harness::*;
use crate::login::{CERTS, Visitor, config, events, pin_of};
use crate::redis::{RedisServer, SentinelSet};
use crate::smtp::SmtpServer;

const ALICE: &str = "alice@corp.example";
const UNAVAILABLE: &str = "Signing in is not possible right now";

/// Two gateways on `state`, sharing `shared` as their data_dir.
async fn pair(
    smtp: &SmtpServer,
    up: &Upstream,
    shared: &std::path::Path,
    state: &str,
    extra: &str,
) -> (Gw, Gw) {
    let extra = format!("data_dir: {shared:?}\nstate: {state}\n{extra}");
    let a = Gw::start_with(&config(up, smtp, &extra), CERTS).await;
    let b = Gw::start_with(&config(up, smtp, &extra), CERTS).await;
    (a, b)
}

/// The same browser, now talking to `gw` (the load balancer picked another replica).
fn switch(v: &Visitor, gw: &Gw) -> Visitor {
    let mut w = Visitor::new(gw);
    w.jar = v.jar.clone();
    w.csrf = v.csrf.clone();
    w
}

/// Waits for a mail with a PIN not seen before.
async fn fresh_pin(smtp: &SmtpServer, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(p) = smtp
            .received()
            .iter()
            .map(pin_of)
            .find(|p| !seen.contains(p))
        {
            seen.push(p.clone());
            return p;
        }
        assert!(Instant::now() < deadline, "no new mail");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every key in Redis with its value as Redis prints it.
fn dump(redis: &RedisServer) -> Vec<(String, String)> {
    let keys = redis.command("KEYS *");
    keys.lines()
        .filter(|l| !l.starts_with(['*', '$']))
        .map(|k| {
            let kind = redis.command(&format!("TYPE {k}"));
            let value = if kind.contains("hash") {
                redis.command(&format!("HGETALL {k}"))
            } else {
                redis.command(&format!("GET {k}"))
            };
            (k.to_owned(), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_a_pin_asked_through_one_verifies_through_the_other_once() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let shared = tempfile::tempdir().unwrap();
    let (a, b) = pair(&smtp, &up, shared.path(), &redis.url(), "").await;
    let mut va = Visitor::new(&a);
    assert_eq!(va.request_code(ALICE).await.status, 200);
    let pin = pin_of(&smtp.wait_for_mail(ALICE, Duration::from_secs(10)).await);
    // In Redis: namespaced keys, each with an expiry, and no PIN in clear.
    let keys = dump(&redis);
    assert!(!keys.is_empty());
    for (k, v) in &keys {
        assert!(k.starts_with("otpgate:"), "{k}");
        let ttl = redis.command(&format!("PTTL {k}"));
        assert!(!ttl.starts_with(":-"), "{k} has no TTL");
        assert!(!v.contains(&pin), "{k} holds the PIN in clear");
    }
    let mut vb = switch(&va, &b);
    let p = vb.enter(&pin).await;
    assert_eq!(p.status, 303, "{}", p.body);
    // The session works on both replicas (same keys), and the code is spent on both.
    assert_eq!(vb.get("/docs").await.status, 200);
    let mut va2 = switch(&vb, &a);
    assert_eq!(va2.get("/docs").await.status, 200);
    assert_eq!(
        va.enter(&pin).await.status,
        200,
        "used up on the other replica"
    );
    assert_eq!(events(&a, "session.issued").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_concurrent_submissions_to_both_succeed_once() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let shared = tempfile::tempdir().unwrap();
    let limits = "rate_limits: { login_requests_per_ip: 1000/15m }";
    let (a, b) = pair(&smtp, &up, shared.path(), &redis.url(), limits).await;
    let mut va = Visitor::new(&a);
    va.request_code(ALICE).await;
    let pin = pin_of(&smtp.wait_for_mail(ALICE, Duration::from_secs(10)).await);
    let vb = switch(&va, &b);
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let v = if i % 2 == 0 { &va } else { &vb };
            let body = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs([("csrf", v.csrf.as_str()), ("code", pin.as_str())])
                .finish();
            let cookie = v
                .jar
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            let req = v
                .client
                .post(format!("{}/.otpgate/code", v.base))
                .header("origin", v.base.clone())
                .header("cookie", cookie)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body);
            tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 303).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        9,
        "{statuses:?}"
    );
    assert_eq!(events(&a, "session.issued").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_the_per_address_and_per_ip_limits() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let shared = tempfile::tempdir().unwrap();
    let limits = "rate_limits: { code_sends_per_address: 2/15m, code_resend_cooldown: 1ms, \
                  login_requests_per_ip: 6/15m }";
    let (a, b) = pair(&smtp, &up, shared.path(), &redis.url(), limits).await;
    let mut va = Visitor::new(&a);
    let mut vb = Visitor::new(&b);
    // Per address: two codes in all, whichever replica is asked (same answer every time).
    for i in 0..3 {
        let v = if i == 1 { &mut vb } else { &mut va };
        let p = v.request_code(ALICE).await;
        assert_eq!(p.status, 200);
        assert!(p.body.contains("A code has been emailed to you"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.count(), 2);
    // Per client address: six submissions counted across both replicas, then no mail.
    vb.request_code("new1@corp.example").await; // 4th
    va.request_code("new2@corp.example").await; // 5th
    vb.request_code("new3@corp.example").await; // 6th
    va.request_code("new4@corp.example").await; // 7th: over
    tokio::time::sleep(Duration::from_millis(500)).await;
    let to: Vec<String> = smtp
        .received()
        .iter()
        .flat_map(|m| m.recipients())
        .collect();
    assert!(to.contains(&"new3@corp.example".to_owned()), "{to:?}");
    assert!(!to.contains(&"new4@corp.example".to_owned()), "{to:?}");
}

/// Asks for a code as a new browser; the status of the submission.
async fn ask(gw: &Gw) -> (u16, String) {
    let mut v = Visitor::new(gw);
    let _ = v.get("/.otpgate/login?rd=%2Fdocs").await;
    let p = v.post("/.otpgate/login", &[("email", ALICE)]).await;
    (p.status, p.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_redis_down_fails_logins_closed_keeps_sessions_and_recovers() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let shared = tempfile::tempdir().unwrap();
    let limits = "rate_limits: { login_requests_per_ip: 1000/15m, code_resend_cooldown: 1ms }";
    let (a, _b) = pair(&smtp, &up, shared.path(), &redis.url(), limits).await;
    assert_eq!(a.readyz().await.0, 200);
    let mut v = Visitor::new(&a);
    v.request_code(ALICE).await;
    let mut seen = Vec::new();
    let pin = fresh_pin(&smtp, &mut seen).await;
    assert_eq!(v.enter(&pin).await.status, 303);

    redis.kill();
    // Logins fail closed with the friendly 503 page ...
    let (status, body) = ask(&a).await;
    assert_eq!(status, 503);
    assert!(body.contains(UNAVAILABLE), "{body}");
    // ... while a signed-in browser keeps being proxied (the hot path never asks Redis).
    let hits = up.hits();
    assert_eq!(v.get("/docs").await.status, 200);
    assert_eq!(up.hits(), hits + 1);
    // Readiness flips (the failed login above already told it; probes ask at most once a
    // second themselves).
    let (status, body) = a.readyz().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shared state unavailable"), "{body}");
    assert!(a.metrics().await.contains("otpgate_state_errors_total"));

    // Redis back on the same port: logins work again without restarting the gateway.
    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _) = ask(&a).await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "logins did not recover: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fresh_pin(&smtp, &mut seen).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.readyz().await.0 != 200 {
        assert!(Instant::now() < deadline, "/readyz stays unready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_logins_keep_working_after_a_sentinel_failover() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let Some(mut set) = SentinelSet::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let shared = tempfile::tempdir().unwrap();
    let limits = "rate_limits: { login_requests_per_ip: 1000/15m, code_resend_cooldown: 1ms, \
                  code_sends_per_address: 100/15m }";
    let (a, b) = pair(&smtp, &up, shared.path(), &set.url(), limits).await;
    let mut seen = Vec::new();
    let mut v = Visitor::new(&a);
    assert_eq!(v.request_code(ALICE).await.status, 200);
    let pin = fresh_pin(&smtp, &mut seen).await;
    assert_eq!(switch(&v, &b).enter(&pin).await.status, 303);

    set.primary.kill();
    let replica = set.replica.port;
    set.wait("the sentinel to promote the replica", || {
        set.primary_port() == Some(replica)
    })
    .await;
    set.wait("the replica to take writes", || {
        set.replica.command("ROLE").contains("master")
    })
    .await;
    // The first call after the switch may still meet the dead primary; the next asks the
    // sentinel again.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut v = loop {
        let mut v = Visitor::new(&a);
        let _ = v.get("/.otpgate/login?rd=%2Fdocs").await;
        if v.post("/.otpgate/login", &[("email", ALICE)]).await.status == 200 {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "logins did not come back after the failover"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let pin = fresh_pin(&smtp, &mut seen).await;
    assert_eq!(switch(&v, &b).enter(&pin).await.status, 303);
    assert_eq!(
        v.enter(&pin).await.status,
        200,
        "used once, across the switch"
    );
}

/// The commands one client sends (`MONITOR` marks those a script runs with `lua]`).
fn client_commands(monitor_log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(monitor_log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" [") && !l.contains("lua]"))
        .map(ToOwned::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_send_me_a_code_costs_five_round_trips() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    if !crate::redis::usable(&["redis-cli"]) {
        return;
    }
    let up = Upstream::start().await;
    let shared = tempfile::tempdir().unwrap();
    let limits = "rate_limits: { login_requests_per_ip: 1000/15m }";
    let (a, _b) = pair(&smtp, &up, shared.path(), &redis.url(), limits).await;
    // Warm up: the scripts are loaded on first use (one extra round trip each, once).
    let mut v = Visitor::new(&a);
    v.request_code("warm@corp.example").await;
    let log = shared.path().join("monitor.log");
    let mut monitor = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "monitor"])
        .stdout(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("OK")
    {
        assert!(Instant::now() < deadline, "MONITOR did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut v = Visitor::new(&a);
    let _ = v.get("/.otpgate/login?rd=%2Fdocs").await;
    // MONITOR's output reaches the file a moment after the commands.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = client_commands(&log).len();
    let p = v.post("/.otpgate/login", &[("email", ALICE)]).await;
    assert_eq!(p.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = monitor.kill();
    let _ = monitor.wait();
    let commands = client_commands(&log);
    // The per-IP count, the three limit reads (MGET), the budgets spent (one script), the
    // code filed (one script) and this browser's index of codes (SET GET).
    assert_eq!(commands.len() - before, 5, "{commands:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_a_redis_down_at_start_does_not_stop_the_gateway() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    if !crate::redis::usable(&["redis-server"]) {
        return;
    }
    let up = Upstream::start().await;
    let shared = tempfile::tempdir().unwrap();
    let port = crate::redis::free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let limits = "rate_limits: { login_requests_per_ip: 1000/15m }";
    let (a, _b) = pair(&smtp, &up, shared.path(), &url, limits).await;
    let (status, body) = a.readyz().await;
    assert_eq!(status, 503, "{body}");
    let (status, body) = ask(&a).await;
    assert_eq!(status, 503);
    assert!(body.contains(UNAVAILABLE), "{body}");
    // A minted session is proxied all along.
    let cookie = a.mint("app", ALICE);
    let r = a
        .client()
        .get(a.https_url("app.test", "/docs"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let _redis = crate::redis::RedisServer::start_on(port, &[])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while ask(&a).await.0 != 200 {
        assert!(Instant::now() < deadline, "logins did not start working");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    smtp.wait_for_mail(ALICE, Duration::from_secs(10)).await;
}
