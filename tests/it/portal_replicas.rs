//! The portal on two replicas sharing a real redis-server (and one data_dir, so the cookie keys
//! and the store are shared, as in `replicas.rs`): a hand-off code made on one replica is
//! redeemed on the other exactly once, and the family sign-out on one ends the app sessions on
//! the other (docs/security.md#44, #47).

use std::time::{Duration, Instant};

use crate::harness::*;
use crate::login::pin_of;
use crate::portal::{ALICE, Agent, CERTS, config_on, free_port, wait_for_mails};
use crate::redis::RedisServer;
use crate::smtp::SmtpServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sec_47_replicas_share_hand_offs_and_the_family_sign_out() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let shared = tempfile::tempdir().unwrap();
    let (p, q) = (free_port(), free_port());
    // Behind a load balancer: the portal's port is the balancer's (here: replica one's).
    let extra = format!(
        "data_dir: {:?}\nstate: {}\ntrusted_proxies: [192.0.2.1]",
        shared.path(),
        redis.url()
    );
    let one = Gw::start_with(&config_on(p, p, &up, &smtp, &extra), CERTS).await;
    let two = Gw::start_with(&config_on(p, q, &up, &smtp, &extra), CERTS).await;
    let mut v = Agent::new(&one);
    v.open(&v.url("a.test", "/")).await;
    v.post("auth.test", "/.otpgate/login", &[("email", ALICE)])
        .await;
    wait_for_mails(&smtp, 1).await;
    let done = v
        .post(
            "auth.test",
            "/.otpgate/code",
            &[("code", &pin_of(&smtp.received()[0]))],
        )
        .await;
    assert_eq!(done.status, 303, "{}", done.body);
    let path = done.location[done.location.find("/.otpgate").unwrap()..].to_owned();

    // Redeemed through replica two (the same browser: its cookies); then spent on one too.
    let mut w = Agent::new(&two);
    w.jar = v.jar.clone();
    let r = w.get("a.test", &path).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        v.get("a.test", &path).await.status,
        400,
        "used up on the other replica"
    );
    assert_eq!(w.get("a.test", "/").await.status, 200);

    // Signed out at the portal through replica one: replica two learns it from the store.
    v.get("auth.test", "/.otpgate/logout").await;
    assert_eq!(
        v.post("auth.test", "/.otpgate/logout", &[]).await.status,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if w.get("a.test", "/").await.status == 302 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica two still lets the family in"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
