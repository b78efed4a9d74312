//! Limits a stranger cannot turn against a user (docs/security.md#39, #41): the attacks of a
//! hostile stranger who knows only a victim's address, scripted against a real SMTP server.
//! Each test shows the user still gets in and the attacker does not.
//!
//! The browsers sit at different client addresses behind a proxy the gateway trusts
//! (`X-Forwarded-For` from 127.0.0.1), and the gateway's clock is a manual one, so windows of
//! minutes pass in an instant.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use otpgate::clock::ManualClock;

use crate::harness::*;
use crate::login::{CERTS, Page, Visitor, events, pin_of};
use crate::smtp::SmtpServer;

const NO_ACCESS: &str = "That account does not have access.";
const ALICE: &str = "alice@corp.example";

fn config(up: &Upstream, smtp: &SmtpServer, extra: &str) -> String {
    format!(
        "version: 1
{LISTEN_ALL}
tls: {{ certificates: [ {{ cert: site.pem, key: site-key.pem }} ] }}
mail: {{ from: 'Gate <gate@corp.example>', transport: 'smtp://{smtp}?tls=none' }}
trusted_proxies: [127.0.0.1/32, '::1/128']
identity_providers:
  - {{ type: onetimepin }}
  - {{ type: onetimelink }}
  - {{ type: onetimetoken }}
users:
  - {{ id: alice@corp.example, groups: [engineering] }}
{extra}
apps:
  - name: app
    hosts: [app.test]
    upstream: {up}
    login_methods: [onetimepin, onetimelink, onetimetoken]
    policies:
      - {{ name: staff, action: allow, include: [ {{ email_domain: corp.example }} ] }}
",
        up = up.url(),
        smtp = smtp.addr
    )
}

async fn setup(extra: &str) -> Option<(SmtpServer, Upstream, Gw, ManualClock)> {
    let smtp = SmtpServer::start().await?;
    let up = Upstream::start().await;
    let clock = ManualClock::at(1_900_000_000);
    let options = otpgate::Options {
        clock: Arc::new(clock.clone()),
        ..Default::default()
    };
    let gw = Gw::start_full(&config(&up, &smtp, extra), CERTS, options).await;
    Some((smtp, up, gw, clock))
}

/// Mails to alice received so far.
fn pins(smtp: &SmtpServer) -> Vec<String> {
    smtp.received()
        .iter()
        .filter(|m| m.recipients().iter().any(|r| r == ALICE))
        .map(pin_of)
        .collect()
}

/// Waits for a PIN not in `seen`.
async fn next_pin(smtp: &SmtpServer, seen: &mut HashSet<String>) -> String {
    // Generous: a busy machine delays the mail queue, and the answer never waits for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(p) = pins(smtp).into_iter().find(|p| !seen.contains(p)) {
            seen.insert(p.clone());
            return p;
        }
        assert!(Instant::now() < deadline, "no new mail to alice");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Lets the mail queue run, then says how many PINs alice has received.
async fn settled_pins(smtp: &SmtpServer) -> usize {
    tokio::time::sleep(Duration::from_millis(600)).await;
    pins(smtp).len()
}

/// The reasons the gateway gave itself for not mailing alice a code, in order.
fn suppressed(gw: &Gw) -> Vec<String> {
    events(gw, "code.suppressed")
        .iter()
        .filter(|e| e["email"] == ALICE)
        .map(|e| e["reason"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Submits a code with the code page's hidden address field, as a browser does.
async fn enter(v: &mut Visitor, code: &str) -> Page {
    v.post("/.otpgate/code", &[("code", code), ("email", ALICE)])
        .await
}

async fn wrong_password(v: &mut Visitor) -> Page {
    v.get("/.otpgate/login").await;
    v.post(
        "/.otpgate/login",
        &[
            ("method", "password"),
            ("email", ALICE),
            ("password", "not her password at all"),
        ],
    )
    .await
}

/// Logs alice in with a PIN on `v`; her browser keeps the device cookie it gets.
async fn log_in(v: &mut Visitor, smtp: &SmtpServer, seen: &mut HashSet<String>) {
    let p = v.request_code(ALICE).await;
    assert_eq!(p.status, 200);
    let pin = next_pin(smtp, seen).await;
    let p = v.enter(&pin).await;
    assert_eq!(p.status, 303, "{}", p.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_39_a_stranger_cannot_void_or_starve_a_users_code() {
    let Some((smtp, _up, gw, clock)) = setup("").await else {
        return;
    };
    let mut seen = HashSet::new();
    // Alice asks for a code on a browser she never used before.
    let mut alice = Visitor::at(&gw, "192.0.2.10");
    alice.request_code(ALICE).await;
    let her_pin = next_pin(&smtp, &mut seen).await;

    // A stranger asks for codes for her address, from elsewhere, 62 s later and on and on.
    let mut stranger = Visitor::at(&gw, "198.51.100.66");
    for _ in 0..6 {
        clock.advance(Duration::from_secs(62));
        stranger.request_code(ALICE).await;
    }
    // Before: her code was replaced by the stranger's. Now it still works.
    let p = alice.enter(&her_pin).await;
    assert_eq!(p.status, 303, "a stranger's request does not void her code");

    // The stranger spent only his own budget (3 mails per 15 minutes for his client); his
    // further requests were suppressed without spending hers.
    assert!(suppressed(&gw).iter().all(|r| r == "rate_limited"));
    assert_eq!(suppressed(&gw).len(), 3);
    assert_eq!(settled_pins(&smtp).await, 1 + 3);

    // Alice, on a new browser at her own address, still gets a fresh code at once: the
    // cooldown and budget are kept per client.
    let mut alice2 = Visitor::at(&gw, "192.0.2.11");
    alice2.request_code(ALICE).await;
    seen.extend(pins(&smtp));
    let pin = next_pin(&smtp, &mut seen).await;
    assert_eq!(alice2.enter(&pin).await.status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_39_suppressed_requests_never_spend_an_address_budget() {
    let Some((smtp, _up, gw, clock)) = setup("").await else {
        return;
    };
    // Alice logged in on this browser before the attack: it holds her device cookie.
    let mut seen = HashSet::new();
    let mut alice = Visitor::at(&gw, "192.0.2.10");
    log_in(&mut alice, &smtp, &mut seen).await;
    alice.jar.remove("__Host-otpgate");

    // A stranger floods her address from one client: after his own budget nothing more is
    // mailed, and his suppressed requests spend nobody's budget.
    let mut stranger = Visitor::at(&gw, "198.51.100.70");
    for _ in 0..10 {
        clock.advance(Duration::from_secs(61));
        stranger.request_code(ALICE).await;
    }
    assert_eq!(settled_pins(&smtp).await, 1 + 3);
    // Strangers from many clients together stop at the address's backstop (4 × 3 per window,
    // her own login included).
    for i in 0..20 {
        let mut s = Visitor::at(&gw, &format!("203.0.113.{}", i + 1));
        s.request_code(ALICE).await;
    }
    assert_eq!(
        settled_pins(&smtp).await,
        12,
        "the per-address backstop holds"
    );
    let reasons = suppressed(&gw);
    assert!(reasons.iter().all(|r| r == "rate_limited"), "{reasons:?}");
    assert_eq!(reasons.len(), 7 + 12);

    // Her browser with its device cookie is not held to the backstop: a fresh code, and in.
    seen.extend(pins(&smtp));
    alice.request_code(ALICE).await;
    let pin = next_pin(&smtp, &mut seen).await;
    assert_eq!(alice.enter(&pin).await.status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_39_a_device_cookie_keeps_its_owner_in_while_strangers_lock_the_account() {
    let Some((smtp, _up, gw, clock)) =
        setup("rate_limits: { failed_logins_per_account: 5, login_requests_per_ip: 1000/15m }")
            .await
    else {
        return;
    };
    let mut seen = HashSet::new();
    // Alice logged in on this browser before: it holds a device cookie for her address.
    let mut alice = Visitor::at(&gw, "192.0.2.10");
    log_in(&mut alice, &smtp, &mut seen).await;
    assert!(
        alice.jar.contains_key("__Host-otpgate-device"),
        "a device cookie after a login"
    );
    alice.jar.remove("__Host-otpgate");

    // Strangers from six addresses send a burst of wrong passwords. Before, every one counted,
    // also during the silent ban, and 102 of them locked the account until an operator stepped
    // in. Now a failure during a ban or lock counts once.
    let store = || otpgate::store::Store::open_embedded(&gw.config().data_dir).unwrap();
    for i in 0..24 {
        let mut s = Visitor::at(&gw, &format!("198.51.100.{}", i % 6 + 1));
        let p = wrong_password(&mut s).await;
        assert_eq!(p.error().as_deref(), Some(NO_ACCESS));
    }
    assert_eq!(store().failures(ALICE, 0).await.unwrap().consecutive, 3);
    // Patient strangers, three failures per ban, do lock her account (for strangers).
    while events(&gw, "login.locked").is_empty() {
        clock.advance(Duration::from_secs(5 * 60 + 1));
        for i in 0..3 {
            let mut s = Visitor::at(&gw, &format!("198.51.100.{}", i + 1));
            wrong_password(&mut s).await;
        }
    }

    // A browser without her device cookie gets no code now...
    clock.advance(Duration::from_secs(61));
    let mut fresh = Visitor::at(&gw, "192.0.2.12");
    fresh.request_code(ALICE).await;
    assert_eq!(suppressed(&gw).last().map(String::as_str), Some("locked"));
    // ...but hers gets one, and it logs her in.
    for p in pins(&smtp) {
        seen.insert(p);
    }
    alice.request_code(ALICE).await;
    let pin = next_pin(&smtp, &mut seen).await;
    let p = alice.enter(&pin).await;
    assert_eq!(p.status, 303, "the device cookie's owner gets in");

    let f = store().failures(ALICE, 0).await.unwrap();
    assert_eq!(f.consecutive, 0, "her login reset the count");
    assert!(!f.locked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_39_locks_expire_and_count_a_blocked_failure_once() {
    let Some((smtp, _up, gw, clock)) =
        setup("rate_limits: { failed_logins_per_account: 4, login_requests_per_ip: 1000/15m }")
            .await
    else {
        return;
    };
    let store = || otpgate::store::Store::open_embedded(&gw.config().data_dir).unwrap();
    // Wrong codes from strangers (two codes, two wrong guesses each) lock the account.
    for ip in ["198.51.100.1", "198.51.100.2"] {
        let mut s = Visitor::at(&gw, ip);
        s.request_code(ALICE).await;
        for _ in 0..2 {
            let p = s.enter("000000").await;
            assert_eq!(p.error().as_deref(), Some(NO_ACCESS));
        }
    }
    let now_ms = 1_900_000_000_000;
    assert!(store().failures(ALICE, now_ms).await.unwrap().locked);
    // Failures during the lock are answered alike but not counted again.
    for ip in ["198.51.100.3", "198.51.100.4", "198.51.100.5"] {
        let mut s = Visitor::at(&gw, ip);
        let p = wrong_password(&mut s).await;
        assert_eq!(p.error().as_deref(), Some(NO_ACCESS));
    }
    assert_eq!(
        store().failures(ALICE, now_ms).await.unwrap().consecutive,
        4
    );

    // The lock ends by itself after five minutes: no operator needed.
    clock.advance(Duration::from_secs(5 * 60 + 1));
    assert_eq!(settled_pins(&smtp).await, 2, "the strangers' two codes");
    let mut seen: HashSet<String> = pins(&smtp).into_iter().collect();
    let mut alice = Visitor::at(&gw, "192.0.2.10");
    log_in(&mut alice, &smtp, &mut seen).await;

    // The lock and its end are in the audit log.
    let locks = events(&gw, "login.locked");
    assert_eq!(locks.len(), 1);
    assert!(
        locks[0]["until"]
            .as_str()
            .unwrap()
            .starts_with("2030-03-17T17:")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_39_links_share_the_resend_cooldown() {
    let Some((smtp, _up, gw, clock)) = setup("").await else {
        return;
    };
    let mut v = Visitor::at(&gw, "192.0.2.10");
    for _ in 0..3 {
        v.get("/.otpgate/login").await;
        v.post("/.otpgate/login", &[("email", ALICE), ("method", "link")])
            .await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let links = |smtp: &SmtpServer| {
        smtp.received()
            .iter()
            .filter(|m| m.text.contains("/.otpgate/link?t="))
            .count()
    };
    assert_eq!(links(&smtp), 1, "one link mail within the cooldown");
    clock.advance(Duration::from_secs(61));
    v.get("/.otpgate/login").await;
    v.post("/.otpgate/login", &[("email", ALICE), ("method", "link")])
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(links(&smtp), 2, "and another after it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_41_failed_link_and_code_uses_count_toward_the_client_limit() {
    let Some((smtp, _up, gw, _clock)) =
        setup("rate_limits: { login_requests_per_ip: 20/15m }").await
    else {
        return;
    };
    // A real link for alice, mailed to her.
    let mut alice = Visitor::at(&gw, "192.0.2.10");
    alice.get("/.otpgate/login").await;
    alice
        .post("/.otpgate/login", &[("email", ALICE), ("method", "link")])
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let link = loop {
        if let Some(l) = smtp.received().iter().find_map(|m| {
            m.text
                .lines()
                .map(str::trim)
                .find(|l| l.contains("/.otpgate/link?t="))
                .map(str::to_owned)
        }) {
            break l;
        }
        assert!(Instant::now() < deadline, "no link mail");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let path = &link[link.find("/.otpgate/").unwrap()..];

    // A guesser tries random tokens: every miss counts toward his client's limit...
    let mut guesser = Visitor::at(&gw, "198.51.100.9");
    let mut answers = HashSet::new();
    for i in 0..25 {
        let p = guesser.get(&format!("/.otpgate/link?t=k1.{i:0>43}")).await;
        assert_eq!(p.status, 200);
        answers.insert(p.body.replace(char::is_whitespace, ""));
    }
    assert_eq!(answers.len(), 1, "throttled answers look like any bad link");
    // ...so even a real link no longer opens for him (same face as a bad one)...
    let p = guesser.get(path).await;
    assert!(p.body.contains(NO_ACCESS), "over the limit: {}", p.body);
    // ...while it does for alice at her own address.
    let p = alice.get(path).await;
    assert!(!p.body.contains(NO_ACCESS));
    assert!(p.body.contains(ALICE));

    // Code guesses count the same way: past the limit even the page's own posts are refused.
    let mut coder = Visitor::at(&gw, "198.51.100.10");
    coder.request_code(ALICE).await;
    for _ in 0..25 {
        coder.enter("123456").await;
    }
    let throttled = events(&gw, "login.failed")
        .iter()
        .filter(|e| e["reason"] == "throttled")
        .count();
    assert!(throttled > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_11_every_failed_code_page_echoes_the_address_alike() {
    let Some((smtp, _up, gw, clock)) = setup("").await else {
        return;
    };
    let mut seen = HashSet::new();
    // A wrong code, an expired code and a burnt code: the same page, the same address shown.
    let mut wrong = Visitor::at(&gw, "192.0.2.20");
    wrong.request_code(ALICE).await;
    next_pin(&smtp, &mut seen).await;
    let a = enter(&mut wrong, "000000").await;

    let mut expired = Visitor::at(&gw, "192.0.2.21");
    expired.request_code(ALICE).await;
    next_pin(&smtp, &mut seen).await;
    clock.advance(Duration::from_secs(11 * 60));
    let b = enter(&mut expired, "000000").await;

    let mut burnt = Visitor::at(&gw, "192.0.2.22");
    burnt.request_code(ALICE).await;
    next_pin(&smtp, &mut seen).await;
    for _ in 0..5 {
        enter(&mut burnt, "000000").await;
    }
    let c = enter(&mut burnt, "000000").await;

    for p in [&a, &b, &c] {
        assert_eq!(p.status, 200);
        assert_eq!(p.error().as_deref(), Some(NO_ACCESS));
        assert!(
            p.body.contains(&format!("<strong>{ALICE}</strong>")),
            "{}",
            p.body
        );
    }
}
