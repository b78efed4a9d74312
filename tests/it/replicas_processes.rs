//! Several replicas as separate `otpgate` processes (the real binary) on one real redis-server,
//! mailing through the real SMTP receiver (docs/product.md#s6): codes, attempts and limits are
//! shared, a link mailed by one replica works once on another, a logout or `sessions revoke`
//! reaches every replica within 2 s (pushed on Redis: typically milliseconds; the delay is
//! measured and printed) and outlives restarting them all, and the command line reaches the
//! state the replicas share.
//!
//! The durable data (cookie keys, credentials store) is shared through [`durable`], the one
//! place a shared credentials store replaces the shared folder.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cli::{Proc, spawn};
use crate::harness::*;
use crate::login::{Page, Visitor, pin_of};
use crate::postgres::PgServer;
use crate::redis::RedisServer;
use crate::smtp::SmtpServer;

const BIN: &str = env!("CARGO_BIN_EXE_otpgate");
const ALICE: &str = "alice@corp.example";
const CAROL: &str = "carol@corp.example";
const NO_ACCESS: &str = "That account does not have access.";
/// Room for every request of a test from one client address (127.0.0.1).
const ROOMY: &str = "rate_limits: { login_requests_per_ip: 1000/15m, code_resend_cooldown: 1ms, \
                     code_sends_per_address: 100/15m }";

/// Where the replicas keep their durable data: one folder for all of them here. This is the
/// line a shared credentials store (PostgreSQL) replaces; the cookie and signing keys stay
/// files every replica has a copy of.
fn durable(shared: &Path) -> String {
    format!("data_dir: {shared:?}")
}

/// The replicas' config: one app offering PINs, links and passwords; `state` is Redis.
fn config(up: &Upstream, smtp: &SmtpServer, durable: &str, state: &str, extra: &str) -> String {
    format!(
        "version: 1
{LISTEN_ALL}
{durable}
state: {state}
tls: {{ certificates: [ {{ cert: site.pem, key: site-key.pem }} ] }}
mail: {{ from: 'Gate <gate@corp.example>', transport: 'smtp://{smtp}?tls=none' }}
identity_providers:
  - {{ type: onetimepin, config: {{ max_attempts: 5 }} }}
  - {{ type: onetimelink }}
  - {{ type: onetimetoken }}
users:
  - {{ id: alice@corp.example, groups: [engineering] }}
  - {{ id: carol@corp.example, groups: [engineering] }}
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

/// Replicas of one gateway, each its own process.
struct Fleet {
    /// The shared credentials store of [`Fleet::shared`] (stopped last, after the replicas).
    _pg: Option<PgServer>,
    dir: tempfile::TempDir,
    ca: TestCa,
    configs: Vec<PathBuf>,
    procs: Vec<Proc>,
}

impl Fleet {
    /// `n` replicas; replica `i` keeps its durable data as `durable(i)` says.
    async fn start(
        n: usize,
        smtp: &SmtpServer,
        up: &Upstream,
        redis: &RedisServer,
        durable: impl Fn(&Path, usize) -> String,
        extra: &str,
    ) -> Self {
        init();
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        ca.write_leaf(dir.path(), "site", &["app.test"]);
        let mut configs = Vec::new();
        for i in 0..n {
            let path = dir.path().join(format!("replica{i}.yaml"));
            let yaml = config(up, smtp, &durable(dir.path(), i), &redis.url(), extra);
            std::fs::write(&path, yaml).unwrap();
            configs.push(path);
        }
        let mut procs = Vec::new();
        for c in &configs {
            procs.push(spawn(c, &[]).await);
        }
        Self {
            _pg: None,
            dir,
            ca,
            configs,
            procs,
        }
    }

    /// Every replica on the one shared folder.
    async fn shared(
        n: usize,
        smtp: &SmtpServer,
        up: &Upstream,
        redis: &RedisServer,
        extra: &str,
    ) -> Self {
        // Replicas share the credentials store the way production does: one PostgreSQL (and one
        // folder only for the keys every replica must share). Without PostgreSQL outside CI, a
        // shared SQLite folder stands in (said loudly by the server helper).
        let pg = PgServer::start().await;
        let credentials = pg.as_ref().map(PgServer::yaml).unwrap_or_default();
        let mut fleet = Self::start(
            n,
            smtp,
            up,
            redis,
            |d, _| format!("{}\n{credentials}", durable(&d.join("data"))),
            extra,
        )
        .await;
        fleet._pg = pg;
        fleet
    }

    fn port(&self, i: usize) -> u16 {
        self.procs[i].https.unwrap().port()
    }

    /// A new browser talking to replica `i`.
    fn visitor(&self, i: usize) -> Visitor {
        Visitor {
            client: client_with(&[self.ca.der()], Versions::Http1),
            base: format!("https://app.test:{}", self.port(i)),
            jar: Default::default(),
            csrf: String::new(),
            from: None,
        }
    }

    /// The same browser, sent to replica `i` by the load balancer.
    fn switch(&self, v: &Visitor, i: usize) -> Visitor {
        let mut w = self.visitor(i);
        w.jar = v.jar.clone();
        w.csrf = v.csrf.clone();
        w
    }

    /// The status replica `i` answers a request for /docs with `cookie`.
    async fn docs(&self, i: usize, cookie: &str) -> u16 {
        client_with(&[self.ca.der()], Versions::Http1)
            .get(format!("https://app.test:{}/docs", self.port(i)))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Stops every replica, then starts them all again.
    async fn restart_all(&mut self) {
        for p in &mut self.procs {
            p.signal("TERM");
            let _ = tokio::time::timeout(Duration::from_secs(15), p.child.wait()).await;
        }
        self.procs.clear();
        for c in &self.configs {
            self.procs.push(crate::cli::restart(c).await);
        }
    }

    /// Runs a command of the binary on replica 0's config.
    fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&self.configs[0])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "otpgate {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }
}

/// Waits for a mail to `to` with a PIN not seen before.
async fn next_pin(smtp: &SmtpServer, to: &str, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(p) = smtp
            .received()
            .iter()
            .filter(|m| m.recipients().iter().any(|r| r == to))
            .map(pin_of)
            .find(|p| !seen.contains(p))
        {
            seen.push(p.clone());
            return p;
        }
        assert!(Instant::now() < deadline, "no new mail to {to}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for a mail to `to` with a link not seen before; its token.
async fn next_link_token(smtp: &SmtpServer, to: &str, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let token = smtp
            .received()
            .iter()
            .filter(|m| m.recipients().iter().any(|r| r == to))
            .filter_map(|m| {
                m.text
                    .lines()
                    .find_map(|l| l.trim().split_once("/.otpgate/link?t="))
                    .map(|(_, t)| t.to_owned())
            })
            .find(|t| !seen.contains(t));
        if let Some(t) = token {
            seen.push(t.clone());
            return t;
        }
        assert!(Instant::now() < deadline, "no new link to {to}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Signs in on replica `i` with a PIN mailed by it; the session cookie (`NAME=VALUE`).
async fn sign_in(fleet: &Fleet, i: usize, smtp: &SmtpServer, seen: &mut Vec<String>) -> String {
    let mut v = fleet.visitor(i);
    assert_eq!(v.request_code(ALICE).await.status, 200);
    let pin = next_pin(smtp, ALICE, seen).await;
    let p = v.enter(&pin).await;
    assert_eq!(p.status, 303, "{}", p.body);
    format!("__Host-otpgate={}", v.jar["__Host-otpgate"])
}

/// Signs out on replica `i` (the sign-out page, then its button).
async fn sign_out(fleet: &Fleet, i: usize, cookie: &str) {
    let mut v = fleet.visitor(i);
    let (name, value) = cookie.split_once('=').unwrap();
    v.jar.insert(name.to_owned(), value.to_owned());
    assert_eq!(v.get("/.otpgate/logout").await.status, 200);
    let p = v.post("/.otpgate/logout", &[]).await;
    assert!(p.body.contains("You are signed out"), "{}", p.body);
}

/// How long after now replica `i` starts refusing `cookie` (a redirect to the login page);
/// fails after `limit`.
async fn refused_after(fleet: &Fleet, i: usize, cookie: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if fleet.docs(i, cookie).await == 302 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "replica {i} still lets the revoked session through after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The login page again, with an error and no session.
fn is_refusal(p: &Page) -> bool {
    p.status == 200
        && p.error().is_some()
        && !p
            .headers
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("__Host-otpgate="))
}

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
