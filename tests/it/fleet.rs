//! A fleet of `otpgate` processes (the real binary) for the replica tests
//! (replicas_processes.rs, replicas_faults.rs): replicas of one gateway on one real
//! redis-server and, through [`Fleet::shared`], one real PostgreSQL, mailing through the real
//! SMTP receiver; and the browser steps those tests share.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cli::{Proc, spawn};
use crate::harness::*;
use crate::login::{Page, Visitor, pin_of};
use crate::onetime::{
    GOOD_PASSWORD, ask, mails_to, next_mail, normalised, password_login, temp_of,
};
use crate::postgres::PgServer;
use crate::redis::RedisServer;
use crate::smtp::SmtpServer;

pub const BIN: &str = env!("CARGO_BIN_EXE_otpgate");
pub const ALICE: &str = "alice@corp.example";
pub const CAROL: &str = "carol@corp.example";
pub const NO_ACCESS: &str = "That account does not have access.";
/// Room for every request of a test from one client address (127.0.0.1).
pub const ROOMY: &str = "rate_limits: { login_requests_per_ip: 1000/15m, code_resend_cooldown: 1ms, \
                     code_sends_per_address: 100/15m }";

/// Where the replicas keep their durable data: one folder for all of them here. This is the
/// line a shared credentials store (PostgreSQL) replaces; the cookie and signing keys stay
/// files every replica has a copy of.
pub fn durable(shared: &Path) -> String {
    format!("data_dir: {shared:?}")
}

/// The replicas' config: one app offering PINs, links and passwords; `state` is Redis.
pub fn config(up: &Upstream, smtp: &SmtpServer, durable: &str, state: &str, extra: &str) -> String {
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
pub struct Fleet {
    /// The shared credentials store of [`Fleet::shared`] (stopped last, after the replicas).
    pub pg: Option<PgServer>,
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub configs: Vec<PathBuf>,
    pub procs: Vec<Proc>,
}

impl Fleet {
    /// `n` replicas; replica `i` keeps its durable data as `durable(i)` says.
    pub async fn start(
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
            pg: None,
            dir,
            ca,
            configs,
            procs,
        }
    }

    /// Every replica on the one shared folder.
    pub async fn shared(
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
        fleet.pg = pg;
        fleet
    }

    pub fn port(&self, i: usize) -> u16 {
        self.procs[i].https.unwrap().port()
    }

    /// A new browser talking to replica `i`.
    pub fn visitor(&self, i: usize) -> Visitor {
        Visitor {
            client: client_with(&[self.ca.der()], Versions::Http1),
            base: format!("https://app.test:{}", self.port(i)),
            jar: Default::default(),
            csrf: String::new(),
            from: None,
        }
    }

    /// The same browser, sent to replica `i` by the load balancer.
    pub fn switch(&self, v: &Visitor, i: usize) -> Visitor {
        let mut w = self.visitor(i);
        w.jar = v.jar.clone();
        w.csrf = v.csrf.clone();
        w
    }

    /// The status replica `i` answers a request for /docs with `cookie`.
    pub async fn docs(&self, i: usize, cookie: &str) -> u16 {
        client_with(&[self.ca.der()], Versions::Http1)
            .get(format!("https://app.test:{}/docs", self.port(i)))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// What replica `i`'s admin listener answers on `/readyz`: the status and the text.
    pub async fn readyz(&self, i: usize) -> (u16, String) {
        let admin = self.procs[i].admin.unwrap();
        let r = client_with(&[], Versions::Http1)
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Stops every replica, then starts them all again.
    pub async fn restart_all(&mut self) {
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
    pub fn cli(&self, args: &[&str]) -> String {
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
pub async fn next_pin(smtp: &SmtpServer, to: &str, seen: &mut Vec<String>) -> String {
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
pub async fn next_link_token(smtp: &SmtpServer, to: &str, seen: &mut Vec<String>) -> String {
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

/// Signs alice in on replica `i` with a PIN mailed by it; the session cookie (`NAME=VALUE`).
pub async fn sign_in(fleet: &Fleet, i: usize, smtp: &SmtpServer, seen: &mut Vec<String>) -> String {
    sign_in_as(fleet, i, smtp, ALICE, seen).await
}

/// Signs `email` in on replica `i` with a PIN mailed by it; the session cookie.
pub async fn sign_in_as(
    fleet: &Fleet,
    i: usize,
    smtp: &SmtpServer,
    email: &str,
    seen: &mut Vec<String>,
) -> String {
    let mut v = fleet.visitor(i);
    assert_eq!(v.request_code(email).await.status, 200);
    let pin = next_pin(smtp, email, seen).await;
    let p = v.enter(&pin).await;
    assert_eq!(p.status, 303, "{}", p.body);
    format!("__Host-otpgate={}", v.jar["__Host-otpgate"])
}

/// Signs out on replica `i` (the sign-out page, then its button).
pub async fn sign_out(fleet: &Fleet, i: usize, cookie: &str) {
    let mut v = fleet.visitor(i);
    let (name, value) = cookie.split_once('=').unwrap();
    v.jar.insert(name.to_owned(), value.to_owned());
    assert_eq!(v.get("/.otpgate/logout").await.status, 200);
    let p = v.post("/.otpgate/logout", &[]).await;
    assert!(p.body.contains("You are signed out"), "{}", p.body);
}

/// How long after now replica `i` starts refusing `cookie` (a redirect to the login page);
/// fails after `limit`.
pub async fn refused_after(fleet: &Fleet, i: usize, cookie: &str, limit: Duration) -> Duration {
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
pub fn is_refusal(p: &Page) -> bool {
    p.status == 200
        && p.error().is_some()
        && !p
            .headers
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("__Host-otpgate="))
}

/// Has a temporary password mailed to `email` through replica `ask_on`, signs in with it there,
/// and chooses [`GOOD_PASSWORD`] through replica `choose_on`: the browser ends signed in (on
/// `choose_on`).
pub async fn choose_password(
    fleet: &Fleet,
    smtp: &SmtpServer,
    email: &str,
    ask_on: usize,
    choose_on: usize,
) -> Visitor {
    let mut seen: Vec<Vec<u8>> = mails_to(smtp, email).into_iter().map(|m| m.raw).collect();
    let mut v = fleet.visitor(ask_on);
    let p = ask(&mut v, "token", email).await;
    assert!(
        p.body.contains("An email has been sent to you"),
        "{}",
        p.body
    );
    let temp = temp_of(&next_mail(smtp, email, &mut seen).await);
    let p = password_login(&mut v, email, &temp).await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert!(p.location().ends_with("/.otpgate/password"));
    set_new_password(fleet.switch(&v, choose_on)).await
}

/// On the password page of a restricted session: chooses [`GOOD_PASSWORD`].
pub async fn set_new_password(mut v: Visitor) -> Visitor {
    assert_eq!(v.get("/.otpgate/password").await.status, 200);
    let p = v
        .post(
            "/.otpgate/password",
            &[("password", GOOD_PASSWORD), ("confirm", GOOD_PASSWORD)],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    v
}

/// The audit events named `name` the replicas (one shared data folder) wrote so far.
pub fn events(fleet: &Fleet, name: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(fleet.dir.path().join("data/audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == name)
        .collect()
}

/// A page of replica `i` as compared across replicas and addresses: [`normalised`], and its
/// own port (in the links back; one public origin behind a load balancer) made neutral.
pub fn page_of(
    fleet: &Fleet,
    i: usize,
    p: &Page,
    email: &str,
) -> (u16, Vec<(String, String)>, String) {
    let (status, mut headers, body) = normalised(p, email);
    headers.retain(|(k, _)| k != "content-length");
    (
        status,
        headers,
        body.replace(&fleet.port(i).to_string(), "<port>"),
    )
}
