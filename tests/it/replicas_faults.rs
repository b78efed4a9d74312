//! Outages under a fleet of `otpgate` processes (docs/security.md#36, #43): two replicas on one
//! real redis-server (`state`) and one real PostgreSQL (`credentials`). When either goes down,
//! logins that need it fail closed on every replica with the "try again in a moment" page (the
//! same page whoever asks), signed-in browsers keep being proxied by every replica, and each
//! replica's `/readyz` says it is not ready and names what is missing; when it returns on the
//! same port, logins work again without restarting any replica.

use std::time::{Duration, Instant};

use crate::fleet::*;
use crate::harness::Upstream;
use crate::login::Page;
use crate::onetime::{GOOD_PASSWORD, normalised, password_login};
use crate::redis::RedisServer;
use crate::smtp::SmtpServer;

const UNAVAILABLE: &str = "Signing in is not possible right now";
const STRANGER: &str = "zulu1@else.example";

/// "Send me a code" for `email` on replica `i`.
async fn ask_code(fleet: &Fleet, i: usize, email: &str) -> Page {
    fleet.visitor(i).request_code(email).await
}

/// A password login of `email` on replica `i`, from a new browser.
async fn ask_password(fleet: &Fleet, i: usize, email: &str, password: &str) -> Page {
    password_login(&mut fleet.visitor(i), email, password).await
}

/// The friendly 503 page, with no session; the same page for a known and an unknown address.
fn assert_unavailable(known: &Page, unknown: &Page) {
    assert_eq!(known.status, 503, "{}", known.body);
    assert!(known.body.contains(UNAVAILABLE), "{}", known.body);
    assert!(
        !known
            .headers
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("__Host-otpgate=")),
        "no session"
    );
    assert_eq!(normalised(unknown, STRANGER), normalised(known, ALICE));
}

/// Replica `i` proxies `cookie`'s request upstream.
async fn assert_proxied(fleet: &Fleet, up: &Upstream, i: usize, cookie: &str) {
    let hits = up.hits();
    assert_eq!(fleet.docs(i, cookie).await, 200, "replica {i}");
    assert_eq!(up.hits(), hits + 1, "replica {i}");
}

/// Waits until every replica's `/readyz` answers 200.
async fn wait_ready(fleet: &Fleet) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0..fleet.procs.len() {
        loop {
            let (status, body) = fleet.readyz(i).await;
            if status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {i} stays unready: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sec_36_replicas_processes_redis_down_fails_logins_closed_keeps_sessions_and_recovers() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let fleet = Fleet::shared(2, &smtp, &up, &redis, ROOMY).await;
    let mut seen = Vec::new();
    let cookie = sign_in(&fleet, 0, &smtp, &mut seen).await;
    wait_ready(&fleet).await;

    redis.kill();
    for i in 0..2 {
        let known = ask_code(&fleet, i, ALICE).await;
        let unknown = ask_code(&fleet, i, STRANGER).await;
        assert_unavailable(&known, &unknown);
        assert_proxied(&fleet, &up, i, &cookie).await;
        let (status, body) = fleet.readyz(i).await;
        assert_eq!(status, 503, "replica {i}: {body}");
        assert!(body.contains("shared state"), "replica {i}: {body}");
    }

    // Redis back on the same port, empty: logins work again on both, no replica restarted.
    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    for i in 0..2 {
        loop {
            let p = ask_code(&fleet, i, ALICE).await;
            if p.status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {i}: logins did not recover: {}",
                p.status
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let pin = next_pin(&smtp, ALICE, &mut seen).await;
        let mut v = fleet.visitor(i);
        v.request_code(ALICE).await;
        let pin2 = next_pin(&smtp, ALICE, &mut seen).await;
        assert_ne!(pin, pin2);
        assert_eq!(v.enter(&pin2).await.status, 303, "replica {i}");
        assert_proxied(&fleet, &up, 1 - i, &cookie).await;
    }
    wait_ready(&fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sec_43_replicas_processes_postgresql_down_fails_logins_closed_keeps_sessions_and_recovers()
{
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let mut fleet = Fleet::shared(2, &smtp, &up, &redis, ROOMY).await;
    if fleet.pg.is_none() {
        // Without PostgreSQL outside CI (said loudly by its helper), there is nothing to stop.
        return;
    }
    // Alice chooses a password (asked on A, chosen on B), and is signed in with it.
    let v = choose_password(&fleet, &smtp, ALICE, 0, 1).await;
    let cookie = format!("__Host-otpgate={}", v.jar["__Host-otpgate"]);
    wait_ready(&fleet).await;

    fleet.pg.as_mut().unwrap().stop();
    for i in 0..2 {
        let known = ask_password(&fleet, i, ALICE, GOOD_PASSWORD).await;
        let unknown = ask_password(&fleet, i, STRANGER, GOOD_PASSWORD).await;
        assert_unavailable(&known, &unknown);
        assert_proxied(&fleet, &up, i, &cookie).await;
        let (status, body) = fleet.readyz(i).await;
        assert_eq!(status, 503, "replica {i}: {body}");
        assert!(body.contains("credentials store"), "replica {i}: {body}");
    }

    // PostgreSQL back on the same port: password logins work again on both by themselves.
    fleet.pg.as_mut().unwrap().start_again().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    for i in 0..2 {
        loop {
            let p = ask_password(&fleet, i, ALICE, GOOD_PASSWORD).await;
            if p.status == 303 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {i}: logins did not recover: {}",
                p.status
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_proxied(&fleet, &up, i, &cookie).await;
    }
    wait_ready(&fleet).await;
}
