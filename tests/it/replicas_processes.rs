//! Several replicas as separate `otpgate` processes (the real binary) on one real redis-server,
//! mailing through the real SMTP receiver (docs/product.md#s6): codes, attempts and limits are
//! shared, a link mailed by one replica works once on another, a logout or `sessions revoke`
//! reaches every replica within 2 s (pushed on Redis: typically milliseconds; the delay is
//! measured and printed) and outlives restarting them all, and the command line reaches the
//! state the replicas share. A temporary password asked through one replica is not mailed again
//! through another within the day, and the password chosen with it signs in everywhere.
//!
//! The fleet and the browser steps are in [`crate::fleet`], shared with the outage tests of
//! replicas_faults.rs.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::fleet::*;
use crate::harness::Upstream;
use crate::onetime::{GOOD_PASSWORD, ask, mails_to, next_mail, password_login, temp_of};
use crate::redis::RedisServer;
use crate::smtp::SmtpServer;
use otpgate::store::RevocationKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sec_16_replicas_processes_share_codes_and_attempts() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let fleet = Fleet::shared(3, &smtp, &up, &redis, ROOMY).await;
    let mut seen = Vec::new();

    // Asked through A, verified through B, once.
    let mut a = fleet.visitor(0);
    assert_eq!(a.request_code(ALICE).await.status, 200);
    let pin = next_pin(&smtp, ALICE, &mut seen).await;
    let p = fleet.switch(&a, 1).enter(&pin).await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert!(is_refusal(&a.enter(&pin).await), "used up through B");

    // Submitted at once to A, B and C: one session.
    let mut a = fleet.visitor(0);
    a.request_code(ALICE).await;
    let pin = next_pin(&smtp, ALICE, &mut seen).await;
    let tries: Vec<_> = (0..9)
        .map(|i| {
            let mut v = fleet.switch(&a, i % 3);
            let pin = pin.clone();
            tokio::spawn(async move { v.enter(&pin).await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tries {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 303).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        8,
        "{statuses:?}"
    );

    // Five wrong guesses spread over the replicas burn the code everywhere.
    let mut a = fleet.visitor(0);
    a.request_code(CAROL).await;
    let pin = next_pin(&smtp, CAROL, &mut Vec::new()).await;
    let wrong: String = pin
        .chars()
        .map(|c| if c == '1' { '2' } else { '1' })
        .collect();
    for i in 0..5 {
        let p = fleet.switch(&a, i % 3).enter(&wrong).await;
        assert!(is_refusal(&p), "guess {i}: {}", p.body);
    }
    for i in 0..3 {
        let p = fleet.switch(&a, i).enter(&pin).await;
        assert!(is_refusal(&p), "burnt, also on replica {i}: {}", p.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sec_17_replicas_processes_share_the_per_address_and_per_ip_limits() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let limits = "rate_limits: { code_sends_per_address: 2/15m, code_resend_cooldown: 1ms, \
                  login_requests_per_ip: 6/15m }";
    let fleet = Fleet::shared(3, &smtp, &up, &redis, limits).await;
    // Per address: two mails in all, whichever replica is asked (the same answer each time).
    for i in 0..3 {
        let p = fleet.visitor(i).request_code(ALICE).await;
        assert!(
            p.body.contains("A code has been emailed to you"),
            "{}",
            p.body
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.count(), 2);
    // Per client address: six requests counted across the replicas, then no mail.
    for (i, to) in ["new1", "new2", "new3", "new4"].iter().enumerate() {
        fleet
            .visitor(i % 3)
            .request_code(&format!("{to}@corp.example"))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let to: Vec<String> = smtp
        .received()
        .iter()
        .flat_map(|m| m.recipients())
        .collect();
    assert!(to.contains(&"new3@corp.example".to_owned()), "{to:?}");
    assert!(!to.contains(&"new4@corp.example".to_owned()), "{to:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_processes_a_link_mailed_by_one_works_once_on_another() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let fleet = Fleet::shared(2, &smtp, &up, &redis, ROOMY).await;
    let mut seen = Vec::new();
    // Mailed by A (the login page), opened on B, then refused on A.
    let mut a = fleet.visitor(0);
    a.get("/.otpgate/login?rd=%2Fdocs").await;
    let p = a
        .post("/.otpgate/login", &[("email", ALICE), ("method", "link")])
        .await;
    assert!(
        p.body.contains("An email has been sent to you"),
        "{}",
        p.body
    );
    let token = next_link_token(&smtp, ALICE, &mut seen).await;
    let use_link = async |i: usize| {
        let mut v = fleet.visitor(i);
        v.get(&format!("/.otpgate/link?t={token}")).await;
        v.post("/.otpgate/link", &[("t", token.as_str())]).await
    };
    assert_eq!(use_link(1).await.status, 303);
    assert!(is_refusal(&use_link(0).await), "used once, on B");

    // Mailed by the command line (`send-auth-email`, beside the replicas): the same.
    let out = fleet.cli(&["send-auth-email", "--user", ALICE, "--method", "link"]);
    assert!(out.contains("sent"), "{out}");
    let token = next_link_token(&smtp, ALICE, &mut seen).await;
    let use_link = async |i: usize| {
        let mut v = fleet.visitor(i);
        v.get(&format!("/.otpgate/link?t={token}")).await;
        v.post("/.otpgate/link", &[("t", token.as_str())]).await
    };
    assert_eq!(use_link(1).await.status, 303);
    assert!(is_refusal(&use_link(0).await), "used once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sec_31_replicas_processes_revocations_reach_every_replica_within_2s_and_outlive_restarts()
{
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let mut fleet = Fleet::shared(3, &smtp, &up, &redis, ROOMY).await;
    let mut seen = Vec::new();
    let limit = Duration::from_secs(2);

    // A logout on A.
    let cookie = sign_in(&fleet, 0, &smtp, &mut seen).await;
    for i in 0..3 {
        assert_eq!(fleet.docs(i, &cookie).await, 200);
    }
    sign_out(&fleet, 0, &cookie).await;
    for i in 1..3 {
        let d = refused_after(&fleet, i, &cookie, limit).await;
        eprintln!("logout on replica 0 took effect on replica {i} after {d:?}");
    }

    // "Log out everywhere" from the command line.
    let other = sign_in(&fleet, 1, &smtp, &mut seen).await;
    assert_eq!(fleet.docs(2, &other).await, 200);
    let out = fleet.cli(&["sessions", "revoke", "--user", ALICE]);
    assert!(out.starts_with("revoked every session of"), "{out}");
    for i in 0..3 {
        let d = refused_after(&fleet, i, &other, limit).await;
        eprintln!("sessions revoke took effect on replica {i} after {d:?}");
    }

    // Every replica restarted: both stay dead, a new login works.
    fleet.restart_all().await;
    for i in 0..3 {
        assert_eq!(fleet.docs(i, &cookie).await, 302, "replica {i}");
        assert_eq!(fleet.docs(i, &other).await, 302, "replica {i}");
    }
    let fresh = sign_in(&fleet, 2, &smtp, &mut seen).await;
    assert_eq!(fleet.docs(0, &fresh).await, 200);
    // What outlived the restarts is PostgreSQL's (under CI always; elsewhere it may be the
    // shared SQLite folder that stands in).
    if let Some(pg) = &fleet.pg {
        let kinds: Vec<RevocationKind> = pg
            .store()
            .await
            .revocations_since(0)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.kind)
            .collect();
        assert!(kinds.contains(&RevocationKind::Session), "{kinds:?}");
        assert!(kinds.contains(&RevocationKind::User), "{kinds:?}");
        assert!(!fleet.dir.path().join("data/otpgate.db").exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sec_31_replicas_processes_push_revocations_and_resubscribe_after_a_redis_restart() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    // Each replica its own store, the keys shared: only the push can tell B of A's logouts.
    let own_store = |d: &Path, i: usize| {
        format!(
            "data_dir: {:?}\nsession: {{ keys_file: {:?} }}",
            d.join(format!("data{i}")),
            d.join("keys.json")
        )
    };
    let mut fleet = Fleet::start(2, &smtp, &up, &redis, own_store, ROOMY).await;
    let mut seen = Vec::new();
    let limit = Duration::from_secs(2);
    let cookie = sign_in(&fleet, 0, &smtp, &mut seen).await;
    assert_eq!(fleet.docs(1, &cookie).await, 200);
    sign_out(&fleet, 0, &cookie).await;
    let d = refused_after(&fleet, 1, &cookie, limit).await;
    eprintln!("pushed logout took effect on the other replica after {d:?}");

    // Redis restarts: the subscription is made again, and the next logout arrives as fast.
    let cookie = sign_in(&fleet, 0, &smtp, &mut seen).await;
    redis.kill();
    redis.restart().await;
    fleet.procs[1].wait_for_line("subscribed again").await;
    assert_eq!(fleet.docs(1, &cookie).await, 200);
    sign_out(&fleet, 0, &cookie).await;
    let d = refused_after(&fleet, 1, &cookie, limit).await;
    eprintln!("after the Redis restart, a pushed logout took effect after {d:?}");
    assert!(fleet.dir.path().join("data1").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sec_26_replicas_processes_cli_unlock_and_list_reach_the_shared_state() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let limits = "rate_limits: { code_sends_per_address: 2/15m, code_resend_cooldown: 1ms, \
                  login_requests_per_ip: 1000/15m }";
    let fleet = Fleet::shared(2, &smtp, &up, &redis, limits).await;
    // Alice's mail budget is spent across the replicas ...
    for i in 0..3 {
        fleet.visitor(i % 2).request_code(ALICE).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.count(), 2);
    // ... and carol is under a password ban (three wrong passwords, through both).
    for i in 0..3 {
        let mut v = fleet.visitor(i % 2);
        v.get("/.otpgate/login?rd=%2Fdocs").await;
        let p = v
            .post(
                "/.otpgate/login",
                &[
                    ("method", "password"),
                    ("email", CAROL),
                    ("password", "wrong wrong wrong"),
                ],
            )
            .await;
        assert_eq!(p.error().as_deref(), Some(NO_ACCESS));
    }
    let list = fleet.cli(&["users", "list"]);
    let carol = list.lines().find(|l| l.starts_with(CAROL)).unwrap();
    assert!(carol.ends_with("banned"), "{list}");

    // `users unlock` clears both in Redis, for every replica.
    let out = fleet.cli(&["users", "unlock", CAROL]);
    assert!(out.starts_with("unlocked carol@corp.example"), "{out}");
    let list = fleet.cli(&["users", "list"]);
    let carol = list.lines().find(|l| l.starts_with(CAROL)).unwrap();
    assert!(!carol.contains("banned"), "{list}");
    assert!(
        !redis.command("KEYS *").contains(CAROL),
        "{}",
        redis.command("KEYS *")
    );
    fleet.cli(&["users", "unlock", ALICE]);
    fleet.visitor(1).request_code(ALICE).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while smtp.count() < 3 {
        assert!(Instant::now() < deadline, "no mail after the unlock");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sec_24_replicas_processes_one_temporary_password_a_day_and_the_chosen_password_everywhere()
{
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let fleet = Fleet::shared(2, &smtp, &up, &redis, ROOMY).await;
    // A session of carol's on B, from before the password (a change ends it on every replica).
    let old = sign_in_as(&fleet, 1, &smtp, CAROL, &mut Vec::new()).await;
    let mut seen: Vec<Vec<u8>> = mails_to(&smtp, CAROL).into_iter().map(|m| m.raw).collect();

    // A temporary password asked through A; asked again through B within the day (past the
    // 1 ms resend cooldown): the same page as the first answer and as for an unknown address,
    // and no second mail.
    let mut a = fleet.visitor(0);
    let first = ask(&mut a, "token", CAROL).await;
    assert!(first.body.contains("An email has been sent to you"));
    let temp = temp_of(&next_mail(&smtp, CAROL, &mut seen).await);
    let mut b = fleet.visitor(1);
    let second = ask(&mut b, "token", CAROL).await;
    let unknown = ask(&mut fleet.visitor(1), "token", "zulu1@else.example").await;
    let first = page_of(&fleet, 0, &first, CAROL);
    assert_eq!(page_of(&fleet, 1, &second, CAROL), first);
    assert_eq!(page_of(&fleet, 1, &unknown, "zulu1@else.example"), first);
    let deadline = Instant::now() + Duration::from_secs(10);
    let suppressed = loop {
        let e = events(&fleet, "token.suppressed");
        if let Some(e) = e.into_iter().find(|e| e["email"] == CAROL) {
            break e;
        }
        assert!(Instant::now() < deadline, "B did not suppress the second");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(suppressed["reason"], "reissue_after");
    assert_eq!(mails_to(&smtp, CAROL).len(), seen.len(), "no second mail");

    // The first one, mailed by A, signs in through B; the password is chosen through A.
    let p = password_login(&mut b, CAROL, &temp).await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert!(p.location().ends_with("/.otpgate/password"));
    let mut v = set_new_password(fleet.switch(&b, 0)).await;
    assert_eq!(v.get("/docs").await.status, 200);
    // The session from before ends on both replicas; the temporary password is used up.
    for i in 0..2 {
        refused_after(&fleet, i, &old, Duration::from_secs(2)).await;
    }
    let p = password_login(&mut fleet.visitor(0), CAROL, &temp).await;
    assert!(is_refusal(&p), "{}", p.body);

    // The chosen password signs in through B (and A), each a session every replica accepts.
    for i in [1, 0] {
        let mut w = fleet.visitor(i);
        let p = password_login(&mut w, CAROL, GOOD_PASSWORD).await;
        assert_eq!(p.status, 303, "{}", p.body);
        let cookie = format!("__Host-otpgate={}", w.jar["__Host-otpgate"]);
        assert_eq!(fleet.docs(1 - i, &cookie).await, 200);
    }
}
