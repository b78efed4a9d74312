//! The state operations against a real Redis (docs/product.md#s6): the same contract as the
//! memory backend's unit tests, plus atomicity between concurrent callers, expiry by Redis
//! itself, namespaced keys that all carry a TTL, and fail-closed errors with a deadline.

use std::time::{Duration, Instant};

use otpgate::config::{RedisConfig, RedisTarget, StateConfig};
use otpgate::state::{CodeRecord, Consume, State, StateError};

use crate::harness::init;
use crate::redis::RedisServer;

fn open(port: u16) -> State {
    open_as(port, None)
}

fn open_as(port: u16, password: Option<&str>) -> State {
    init();
    let config = StateConfig::Redis(RedisConfig {
        url: format!("redis://127.0.0.1:{port}/0"),
        target: RedisTarget::Server {
            host: "127.0.0.1".into(),
            port,
        },
        username: None,
        password: password.map(|p| otpgate::config::Secret::new(p.to_owned())),
        db: 0,
        tls: false,
    });
    State::open(&config, otpgate::clock::system()).unwrap()
}

fn record(digest: u8, attempts: u32) -> CodeRecord {
    CodeRecord {
        payload: b"payload".to_vec(),
        digest: [digest; 32],
        attempts,
    }
}

const MIN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_state_operations_match_the_memory_contract() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    contract(&State::memory(otpgate::clock::system())).await;
    contract(&open(redis.port)).await;
}

/// What both backends promise, operation by operation.
async fn contract(s: &State) {
    assert!(s.put_new("otpgate:k", b"a", MIN).await.unwrap());
    assert!(!s.put_new("otpgate:k", b"b", MIN).await.unwrap());
    assert_eq!(
        s.get("otpgate:k").await.unwrap().as_deref(),
        Some(&b"a"[..])
    );
    assert_eq!(
        s.swap("otpgate:k", b"c", MIN).await.unwrap().as_deref(),
        Some(&b"a"[..])
    );
    assert_eq!(s.swap("otpgate:new", b"x", MIN).await.unwrap(), None);
    s.delete("otpgate:k").await.unwrap();
    assert_eq!(s.get("otpgate:k").await.unwrap(), None);
    // Codes: NX keeps a pending record (decoys), replace overwrites; peek uses no attempt.
    assert!(
        s.put_code("otpgate:c", record(1, 5), MIN, true)
            .await
            .unwrap()
    );
    assert!(
        !s.put_code("otpgate:c", record(2, 5), MIN, false)
            .await
            .unwrap()
    );
    assert_eq!(
        s.peek_code("otpgate:c").await.unwrap().as_deref(),
        Some(&b"payload"[..])
    );
    assert_eq!(
        s.consume_code("otpgate:c", &[2; 32]).await.unwrap(),
        Consume::Rejected { left: 4 }
    );
    assert_eq!(
        s.consume_code("otpgate:c", &[1; 32]).await.unwrap(),
        Consume::Accepted(b"payload".to_vec())
    );
    assert_eq!(
        s.consume_code("otpgate:c", &[1; 32]).await.unwrap(),
        Consume::Missing,
        "single use"
    );
    // Burn after N wrong guesses: the right code fails afterwards.
    s.put_code("otpgate:b", record(7, 3), MIN, true)
        .await
        .unwrap();
    for left in [2, 1, 0] {
        assert_eq!(
            s.consume_code("otpgate:b", &[9; 32]).await.unwrap(),
            Consume::Rejected { left }
        );
    }
    assert_eq!(
        s.consume_code("otpgate:b", &[7; 32]).await.unwrap(),
        Consume::Missing,
        "burnt"
    );
    assert_eq!(s.peek_code("otpgate:b").await.unwrap(), None);
    // The batched forms: several counters and a flag in one round trip each.
    for _ in 0..2 {
        s.hit_many(&["otpgate:h1", "otpgate:h2"], MIN, "otpgate:f", MIN)
            .await
            .unwrap();
    }
    let (counts, flags) = s
        .read_many(
            &["otpgate:h1", "otpgate:h2", "otpgate:none"],
            &["otpgate:f", "otpgate:nf"],
        )
        .await
        .unwrap();
    assert_eq!((counts, flags), (vec![2, 2, 0], vec![true, false]));
    s.ping().await.unwrap();
    s.ready().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_windows_and_records_expire_and_every_key_has_a_ttl() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let s = open(redis.port);
    let short = Duration::from_millis(300);
    for i in 1..=3 {
        assert_eq!(s.hit("otpgate:ip", short).await.unwrap(), i);
    }
    assert_eq!(s.count("otpgate:ip").await.unwrap(), 3);
    s.put_new("otpgate:cool", b"1", short).await.unwrap();
    s.put_code("otpgate:code", record(1, 5), short, true)
        .await
        .unwrap();
    s.hit("otpgate:long", MIN).await.unwrap();
    // Every key is namespaced and carries an expiry: nothing outlives its window.
    let keys = redis.command("KEYS *");
    for key in ["otpgate:ip", "otpgate:cool", "otpgate:code", "otpgate:long"] {
        assert!(keys.contains(key), "{keys}");
        let ttl = redis.command(&format!("PTTL {key}"));
        let ms: i64 = ttl.trim().trim_start_matches(':').parse().unwrap();
        assert!(ms > 0, "{key} has no TTL: {ttl}");
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(s.count("otpgate:ip").await.unwrap(), 0);
    assert_eq!(s.get("otpgate:cool").await.unwrap(), None);
    assert_eq!(
        s.consume_code("otpgate:code", &[1; 32]).await.unwrap(),
        Consume::Missing
    );
    assert_eq!(s.hit("otpgate:ip", short).await.unwrap(), 1, "a new window");
    assert_eq!(s.count("otpgate:long").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_consume_is_atomic_under_concurrency() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    // Two independent clients, as two replicas would have.
    let clients = [open(redis.port), open(redis.port)];
    for round in 0..10 {
        let key = format!("otpgate:code:{round}");
        clients[0]
            .put_code(&key, record(5, 5), MIN, true)
            .await
            .unwrap();
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let s = clients[i % 2].clone();
                let key = key.clone();
                tokio::spawn(async move { s.consume_code(&key, &[5; 32]).await.unwrap() })
            })
            .collect();
        let mut accepted = 0;
        for t in tasks {
            match t.await.unwrap() {
                Consume::Accepted(_) => accepted += 1,
                Consume::Missing => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(accepted, 1, "round {round}");
    }
    // Wrong guesses from many callers at once spend exactly the attempts there are.
    clients[0]
        .put_code("otpgate:guess", record(5, 5), MIN, true)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let s = clients[i % 2].clone();
            tokio::spawn(async move { s.consume_code("otpgate:guess", &[6; 32]).await.unwrap() })
        })
        .collect();
    let mut rejected = Vec::new();
    for t in tasks {
        if let Consume::Rejected { left } = t.await.unwrap() {
            rejected.push(left);
        }
    }
    rejected.sort_unstable();
    assert_eq!(rejected, vec![0, 1, 2, 3, 4]);
    // Window counters count every hit once.
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let s = clients[i % 2].clone();
            tokio::spawn(async move { s.hit("otpgate:w", MIN).await.unwrap() })
        })
        .collect();
    let mut seen: Vec<u64> = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=50).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_fails_closed_within_the_deadline_and_recovers() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let s = open(redis.port);
    s.put_new("otpgate:before", b"1", MIN).await.unwrap();
    redis.kill();
    let started = Instant::now();
    let e = s.get("otpgate:before").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(e, StateError::Unavailable(_)), "{e:?}");
    assert!(std::error::Error::source(&e).is_some(), "the cause is kept");
    assert!(s.ping().await.is_err());
    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.put_new("otpgate:after", b"1", MIN).await.is_err() {
        assert!(Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        s.get("otpgate:after").await.unwrap().as_deref(),
        Some(&b"1"[..])
    );
    // A state that was never reachable does not stop anyone from building it (lazy).
    let nowhere = open(crate::redis::free_port());
    assert!(nowhere.ping().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_auth_uses_the_password_and_fails_closed_without_it() {
    let Some(redis) = RedisServer::start_with(&["--requirepass", "redis-test-pw"]).await else {
        return;
    };
    let good = open_as(redis.port, Some("redis-test-pw"));
    assert!(good.put_new("otpgate:k", b"1", MIN).await.unwrap());
    let none = open(redis.port);
    assert!(none.get("otpgate:k").await.is_err());
    let wrong = open_as(redis.port, Some("not-it"));
    let e = wrong.ping().await.unwrap_err();
    assert!(!format!("{e:?}").contains("not-it"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_state_publish_reaches_listeners_and_prefix_deletes_are_literal() {
    use otpgate::state::Heard;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (a, b) = (open(redis.port), open(redis.port));
    let cancel = tokio_util::sync::CancellationToken::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let listener = {
        let cancel = cancel.clone();
        tokio::spawn(async move { b.listen("otpgate:test", &tx, &cancel).await })
    };
    let next = async |rx: &mut tokio::sync::mpsc::Receiver<Heard>| {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(next(&mut rx).await, Heard::Subscribed);
    assert_eq!(a.publish("otpgate:test", b"one").await.unwrap(), 1);
    assert_eq!(next(&mut rx).await, Heard::Message(b"one".to_vec()));
    // Redis restarts: the listener subscribes again and says so (what came meanwhile is lost).
    let mut redis = redis;
    redis.kill();
    redis.restart().await;
    assert_eq!(next(&mut rx).await, Heard::Subscribed);
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.publish("otpgate:test", b"two").await.unwrap_or(0) != 1 {
        assert!(Instant::now() < deadline, "the publisher did not reconnect");
    }
    assert_eq!(next(&mut rx).await, Heard::Message(b"two".to_vec()));
    cancel.cancel();
    listener.await.unwrap();

    // Prefixes are matched literally, glob characters included.
    for k in [
        "otpgate:p:a*b:1",
        "otpgate:p:a*b:2",
        "otpgate:p:axb:1",
        "otpgate:p:a*bc:1",
    ] {
        assert!(a.put_new(k, b"1", MIN).await.unwrap());
    }
    assert_eq!(a.delete_prefixed("otpgate:p:a*b:").await.unwrap(), 2);
    assert!(a.get("otpgate:p:axb:1").await.unwrap().is_some());
    assert!(a.get("otpgate:p:a*bc:1").await.unwrap().is_some());
    let memory = State::memory(otpgate::clock::system());
    assert!(memory.put_new("otpgate:p:a:1", b"1", MIN).await.unwrap());
    assert_eq!(memory.delete_prefixed("otpgate:p:a:").await.unwrap(), 1);
}
