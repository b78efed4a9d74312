//! End to end: the real `otpgate` binary, its command line, signals and the committed configs.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::harness::*;
use crate::smtp::ReceivedMail;
use crate::zscaler_browser::{link_of, temp_password_of};

const BIN: &str = env!("CARGO_BIN_EXE_otpgate");

mod service_token;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A running `otpgate` process, killed when dropped.
pub struct Proc {
    pub child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Starts the binary on `config` with every listener moved to an ephemeral port and JSON logs,
/// and waits for its "is serving" line.
pub async fn spawn(config: &Path, extra_env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .env("OTPGATE_LOG__FORMAT", "json")
        .env("OTPGATE_LISTEN__HTTP", "127.0.0.1:0")
        .env("OTPGATE_LISTEN__HTTPS", "127.0.0.1:0")
        .env("OTPGATE_LISTEN__ADMIN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("the otpgate binary starts");
    let (tx, mut lines) = mpsc::unbounded_channel();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    for (reader, tx) in [
        (
            Box::new(out) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            tx.clone(),
        ),
        (Box::new(err), tx),
    ] {
        tokio::spawn(async move {
            let mut l = BufReader::new(reader).lines();
            while let Ok(Some(line)) = l.next_line().await {
                let _ = tx.send(line);
            }
        });
    }
    let serving = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let line = lines.recv().await.expect("otpgate exited before serving");
            if line.contains("is serving") {
                return line;
            }
        }
    })
    .await
    .expect("otpgate reported it is serving");
    let v: serde_json::Value = serde_json::from_str(&serving).expect("JSON log line");
    let addr = |k: &str| v["fields"][k].as_str().and_then(|s| s.parse().ok());
    Proc {
        http: addr("http"),
        https: addr("https"),
        admin: addr("admin"),
        child,
        lines,
    }
}

impl Proc {
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }

    pub async fn wait_for_line(&mut self, needle: &str) -> String {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let line = self
                    .lines
                    .recv()
                    .await
                    .unwrap_or_else(|| panic!("otpgate exited before logging {needle:?}"));
                if line.contains(needle) {
                    return line;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no log line containing {needle:?}"))
    }
}

/// The committed config in a scratch copy of the repository layout (config/, certs/, data/),
/// so generated files land in the scratch folder.
fn scratch_with_committed_config() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let cfg = dir.path().join("config/otpgate.yaml");
    std::fs::copy(repo("config/otpgate.yaml"), &cfg).unwrap();
    (dir, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_healthz_with_the_committed_config() {
    init();
    let (dir, cfg) = scratch_with_committed_config();
    let p = spawn(&cfg, &[]).await;
    let c = client_with(&[], Versions::Http1);
    let r = c
        .get(format!("http://{}/healthz", p.admin.unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok\n");
    // The development certificate went to certs/ beside config/ (paths resolve from the file).
    assert!(dir.path().join("certs/self-signed.pem").exists());
    assert!(dir.path().join("certs/self-signed-key.pem").exists());
    // The demo app is served over HTTPS with that certificate.
    let pem = std::fs::read(dir.path().join("certs/self-signed.pem")).unwrap();
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
    let c = client_with(&[der], Versions::Http2);
    let r = c
        .get(format!("https://localhost:{}/", p.https.unwrap().port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2);
    // Its policy needs a login: the browser is sent to the login page.
    assert_eq!(r.status(), 302);
    let port = p.https.unwrap().port();
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("https://localhost:{port}/.otpgate/login?rd=https%3A%2F%2Flocalhost%3A{port}%2F")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_proxies_a_bypass_app_to_builtin_echo() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("otpgate.yaml");
    std::fs::write(
        &cfg,
        "version: 1
listen: { http: 127.0.0.1:8080 }
apps:
  - name: echo
    hosts: [echo.test]
    public_url: http://echo.test
    upstream: builtin:echo
    policies: [ { name: open, action: bypass } ]
",
    )
    .unwrap();
    let p = spawn(&cfg, &[("OTPGATE_LISTEN__HTTPS", "null")]).await;
    let c = client_with(&[], Versions::Http1);
    let r = c
        .get(format!(
            "http://echo.test:{}/through/the/binary?q=1",
            p.http.unwrap().port()
        ))
        .header("x-otpgate-user", "spoofed")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["app"], "echo");
    assert_eq!(v["path"], "/through/the/binary");
    assert_eq!(v["identity"], serde_json::json!({}));
}

fn check_config(path: &Path) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(path)
        .env_remove("OTPGATE_LOG__FORMAT")
        .output()
        .unwrap()
}

#[test]
fn check_config_exit_codes_and_key_paths() {
    // The committed configs are valid.
    for f in ["config/otpgate.yaml", "config/otpgate.example.yaml"] {
        let out = check_config(&repo(f));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(": ok ("));
        // The assertion audience of every app is shown.
        assert!(stdout.contains("audience otpgate:app:"), "{stdout}");
    }
    // A broken file: exit 1, one line per problem, each with its key path.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "version: 1
listen: { http: 127.0.0.1:8080 }
apps:
  - name: a
    hosts: [a.test]
    upstream: builtin:echo
    policies:
      - name: p
        action: allow
        include: [ { everyone: true }, { email: a@b.example }, { emial: x@y.example } ]
  - name: b
    hosts: [b.test]
    upstream: builtin:echo
    timeout: forever
",
    )
    .unwrap();
    let out = check_config(&bad);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: apps[0].policies[0].include[2]: unknown selector \"emial\""),
        "{err}"
    );
    assert!(
        err.contains("error: apps[1].timeout: invalid duration \"forever\""),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
    // A missing file: exit 1, one line.
    let out = check_config(&dir.path().join("missing.yaml"));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    // Usage errors: exit 2. `--config` works before or after the subcommand.
    let out = std::process::Command::new(BIN)
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(repo("config/otpgate.example.yaml"))
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    // Warnings are printed and do not fail the check.
    let warn = dir.path().join("warn.yaml");
    std::fs::write(
        &warn,
        "version: 1
listen: { http: 127.0.0.1:8080 }
apps:
  - name: nobody
    hosts: [n.test]
    upstream: builtin:echo
    policies: [ { name: deny, action: block, include: [ { everyone: true } ] } ]
",
    )
    .unwrap();
    let out = check_config(&warn);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "warning: apps[0].policies: no policy of app \"nobody\" can ever allow anyone"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_sigterm_drains_in_flight_requests() {
    init();
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("otpgate.yaml");
    let base = format!(
        "version: 1
listen: {{ http: 127.0.0.1:8080 }}
apps:
  - name: one
    hosts: [one.test]
    public_url: http://one.test
    upstream: {}
    policies: [ {{ name: open, action: bypass }} ]
",
        up.url()
    );
    std::fs::write(&cfg, &base).unwrap();
    let mut p = spawn(&cfg, &[("OTPGATE_LISTEN__HTTPS", "null")]).await;
    let port = p.http.unwrap().port();
    let c = client_with(&[], Versions::Http1);
    assert_eq!(
        c.get(format!("http://two.test:{port}/"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // SIGHUP with a broken file: refused, logged, old config serving.
    std::fs::write(&cfg, base.replace("bypass", "bypas")).unwrap();
    p.signal("HUP");
    p.wait_for_line("reload refused").await;
    assert_eq!(
        c.get(format!("http://one.test:{port}/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // SIGHUP with a good file: the new app appears.
    std::fs::write(
        &cfg,
        format!(
            "{base}  - name: two
    hosts: [two.test]
    public_url: http://two.test
    upstream: builtin:echo
    policies: [ {{ name: open, action: bypass }} ]
"
        ),
    )
    .unwrap();
    p.signal("HUP");
    p.wait_for_line("configuration reloaded").await;
    assert_eq!(
        c.get(format!("http://two.test:{port}/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // SIGTERM while a request is in flight: it completes, then the process exits 0.
    let before = up.hits();
    let c2 = c.clone();
    let slow = tokio::spawn(async move {
        c2.get(format!("http://one.test:{port}/slow?ms=1500"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    eventually(
        "the slow request to reach the upstream",
        Duration::from_secs(5),
        || up.hits() > before,
    )
    .await;
    p.signal("TERM");
    assert_eq!(slow.await.unwrap(), "slow done");
    let status = tokio::time::timeout(Duration::from_secs(10), p.child.wait())
        .await
        .expect("exits after draining")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

fn otpgate(args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn administrative_commands_through_the_binary() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("otpgate.yaml");
    std::fs::write(
        &cfg,
        "version: 1
listen: { http: 127.0.0.1:8080 }
users:
  - { id: alice@corp.example, groups: [engineering] }
  - { id: bob, temp_auth_email: bob@home.example, groups: [] }
apps:
  - name: app
    hosts: [app.test]
    public_url: https://app.test
    upstream: builtin:echo
    policies:
      - { name: public, action: bypass, paths: [/static/] }
      - { name: no-admin, action: block, paths: [/admin], include: [ { email_domain: corp.example } ], exclude: [ { group: engineering } ] }
      - { name: staff, action: allow, include: [ { email_domain: corp.example } ] }
",
    )
    .unwrap();
    let c = cfg.to_str().unwrap();

    // policy explain: the deciding policy and why, before and after a login.
    let out = otpgate(&[
        "policy",
        "explain",
        "--config",
        c,
        "--app",
        "app",
        "--email",
        "Alice@corp.example",
        "--path",
        "/admin/x",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("as alice@corp.example (user alice@corp.example; groups: engineering; login method onetimepin)"), "{text}");
    assert!(
        text.contains("before a login: login required (policy \"no-admin\""),
        "{text}"
    );
    assert!(
        text.contains("1. public (bypass): skipped: path /admin/x is not under /static/"),
        "{text}"
    );
    assert!(text.contains("2. no-admin (block): does not match: include [email_domain corp.example: yes], exclude [group engineering: yes]"), "{text}");
    assert!(
        text.trim_end()
            .ends_with("decision: allow by policy \"staff\""),
        "{text}"
    );
    let out = otpgate(&[
        "policy",
        "explain",
        "--config",
        c,
        "--app",
        "app",
        "--email",
        "eve@evil.example",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .trim_end()
            .ends_with("decision: deny: no policy matched (deny by default)")
    );
    let out = otpgate(&[
        "policy",
        "explain",
        "--config",
        c,
        "--app",
        "nope",
        "--email",
        "a@b.example",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no app named \"nope\" (apps: app)"));
    let out = otpgate(&[
        "policy",
        "explain",
        "--config",
        c,
        "--app",
        "app",
        "--email",
        "a@b.example",
        "--path",
        "/a/../admin",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("dot segment"));

    // mint-cookie: one NAME=VALUE line, audited; bad input refused with exit 1.
    let out = otpgate(&[
        "mint-cookie",
        "--config",
        c,
        "--app",
        "app",
        "--email",
        "load@corp.example",
        "--ttl",
        "1h",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout).trim_end().to_owned();
    assert_eq!(line.lines().count(), 1);
    assert!(line.starts_with("__Host-otpgate=v1.k"), "{line}");
    assert!(
        dir.path().join("data/keys.json").exists(),
        "keys are generated on first use"
    );
    let audit = std::fs::read_to_string(dir.path().join("data/audit.log")).unwrap();
    assert!(audit.contains("\"event\":\"cookie.minted\"") && audit.contains("\"ttl_secs\":3600"));
    assert!(
        !audit.contains(line.split_once('=').unwrap().1),
        "the cookie is not in the audit log"
    );
    for bad in [
        vec!["--app", "app", "--email", "not-an-address"],
        vec!["--app", "app", "--email", "a@b.example", "--ttl", "31d"],
        vec!["--app", "zzz", "--email", "a@b.example"],
    ] {
        let mut args = vec!["mint-cookie", "--config", c];
        args.extend(bad.iter().copied());
        let out = otpgate(&args);
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).lines().count(),
            1,
            "{bad:?}"
        );
    }
    let out = otpgate(&[
        "mint-cookie",
        "--config",
        c,
        "--app",
        "app",
        "--email",
        "a@b.example",
        "--ttl",
        "soon",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a malformed duration is a usage error"
    );

    // sessions revoke: by address or by user id (then every address of the user).
    let out = otpgate(&["sessions", "revoke", "--config", c, "--user", "bob"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .starts_with("revoked every session of bob@home.example")
    );
    let out = otpgate(&["sessions", "revoke", "--config", c, "--user", "nobody"]);
    assert_eq!(out.status.code(), Some(1));

    // keys: rotate adds a current key, list shows both, the current one cannot be retired.
    let out = otpgate(&["keys", "rotate", "--config", c]);
    assert_eq!(out.status.code(), Some(0));
    let out = otpgate(&["keys", "list", "--config", c]);
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(list.lines().count(), 2, "{list}");
    let current = list
        .lines()
        .find(|l| l.ends_with("(current)"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let out = otpgate(&["keys", "retire", &current, "--config", c]);
    assert_eq!(out.status.code(), Some(1));

    // keys --jwt: the assertion signing keys, beside the cookie keys, mode 0600; rotate keeps
    // the previous key listed (published) beside the new current one.
    let out = otpgate(&["keys", "rotate", "--jwt", "--config", c]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = otpgate(&["keys", "list", "--jwt", "--config", c]);
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(list.lines().count(), 2, "{list}");
    assert_eq!(list.lines().filter(|l| l.ends_with("(current)")).count(), 1);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(dir.path().join("data/jwt_keys.json")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
}

/// docs/product.md#s2, the newcomer's path: the binary on the committed config, a browser at
/// https://localhost/, the PIN read from the development outbox, the echo app at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newcomer_path_in_a_browser_with_the_committed_config() {
    init();
    let Some(mut b) = crate::browser::Browser::start("newcomer").await else {
        return;
    };
    let (dir, cfg) = scratch_with_committed_config();
    let mut p = spawn(&cfg, &[]).await;
    let port = p.https.unwrap().port();
    b.client
        .goto(&format!("https://localhost:{port}/"))
        .await
        .unwrap();
    assert!(
        b.client
            .current_url()
            .await
            .unwrap()
            .path()
            .starts_with("/.otpgate/login")
    );
    b.shot("login").await;
    b.fill_and_submit("input[name=email]", "Newcomer@Example.org")
        .await;
    assert!(b.text().await.contains("A code has been emailed to you"));
    let line = p.wait_for_line("mail written to the outbox").await;
    assert!(line.contains("newcomer@example.org"), "{line}");
    let outbox = dir.path().join("data/outbox");
    let file = std::fs::read_dir(&outbox)
        .unwrap()
        .next()
        .expect("a mail in the outbox")
        .unwrap()
        .path();
    let mail = crate::smtp::ReceivedMail::parse(std::fs::read(&file).unwrap());
    let pin = mail
        .text
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 6 && l.bytes().all(|c| c.is_ascii_digit()))
        .expect("a PIN")
        .to_owned();
    assert!(
        !line.contains(&pin),
        "the log line says where, never the PIN"
    );
    b.fill_and_submit("input[name=code]", &pin).await;
    assert_eq!(
        b.client.current_url().await.unwrap().as_str(),
        format!("https://localhost:{port}/")
    );
    let text = b.text().await;
    assert!(
        text.contains("demo is behind otpgate")
            && text.contains("Signed in as newcomer@example.org"),
        "{text}"
    );
    assert!(
        text.contains("x-otpgate-email") && text.contains("x-otpgate-user"),
        "{text}"
    );
    b.shot("echo").await;
    b.close().await;
}

// === Links and temporary passwords through the binary ===

/// The outbox's messages not in `seen` (oldest first; their names start with the time), now
/// marked seen.
fn new_mails(outbox: &Path, seen: &mut HashSet<PathBuf>) -> Vec<ReceivedMail> {
    let Ok(entries) = std::fs::read_dir(outbox) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml") && !seen.contains(p))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let m = ReceivedMail::parse(std::fs::read(&p).unwrap());
            seen.insert(p);
            m
        })
        .collect()
}

/// Waits for an unseen outbox message to `to` whose subject contains `subject`.
pub async fn outbox_mail(
    outbox: &Path,
    to: &str,
    subject: &str,
    seen: &mut HashSet<PathBuf>,
) -> ReceivedMail {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut other = Vec::new();
    loop {
        for m in new_mails(outbox, seen) {
            if m.subject.contains(subject) && m.recipients().iter().any(|r| r == to) {
                return m;
            }
            other.push(m);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no \"{subject}\" mail for {to} in the outbox; others: {:?}",
            other
                .iter()
                .map(|m| (m.recipients(), m.subject.clone()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn audit_events(data: &Path, name: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(data.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == name)
        .collect()
}

fn random_token() -> String {
    otpgate::random::hex(&otpgate::random::bytes::<16>(otpgate::random::system().as_ref()).unwrap())
}

const ZSCALER_USERS: &str = "users:
  - { id: alice@corp.example, temp_auth_email: alice.home@mail.example, groups: [engineering] }
  - { id: bob@corp.example, groups: [engineering] }
  - { id: carol, temp_auth_email: carol@home.example, groups: [ops] }
  - { id: dave, groups: [ops] }
";

/// A config for the binary: HTTPS for app.test with a test-CA certificate written beside it,
/// mail to the outbox (data/outbox), links and temporary passwords, and `extra` at the top level.
pub fn zscaler_config(dir: &Path, ca: &TestCa, extra: &str) -> PathBuf {
    ca.write_leaf(dir, "site", &["app.test"]);
    let cfg = dir.join("otpgate.yaml");
    std::fs::write(
        &cfg,
        format!(
            "version: 1
listen: {{ http: 127.0.0.1:8080, https: 127.0.0.1:8443, admin: 127.0.0.1:9090 }}
tls: {{ certificates: [ {{ cert: site.pem, key: site-key.pem }} ] }}
mail: {{ from: 'Gate <gate@corp.example>', transport: outbox }}
identity_providers:
  - {{ type: onetimepin }}
  - {{ type: onetimelink }}
  - {{ type: onetimetoken }}
{ZSCALER_USERS}{extra}
apps:
  - name: app
    hosts: [app.test]
    upstream: builtin:echo
    login_methods: [onetimepin, onetimelink, onetimetoken]
    policies:
      - {{ name: staff, action: allow, include: [ {{ email_domain: corp.example }}, {{ email_domain: home.example }} ] }}
"
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn send_auth_email_through_the_binary() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("otpgate.yaml");
    std::fs::write(
        &cfg,
        format!(
            "version: 1
listen: {{ http: 127.0.0.1:8080 }}
mail: {{ from: 'Gate <gate@corp.example>', transport: outbox }}
identity_providers:
  - {{ type: onetimelink }}
  - {{ type: onetimetoken }}
{ZSCALER_USERS}
apps:
  - name: app
    hosts: [app.test]
    public_url: https://app.test
    upstream: builtin:echo
    login_methods: [onetimelink, onetimetoken]
    policies: [ {{ name: staff, action: allow, include: [ {{ email_domain: corp.example }} ] }} ]
"
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let data = dir.path().join("data");
    let outbox = data.join("outbox");
    let mut seen = HashSet::new();
    let mut secrets: Vec<String> = Vec::new();
    let run = |args: &[&str]| {
        let mut all = vec!["send-auth-email", "--config", c];
        all.extend_from_slice(args);
        let out = otpgate(&all);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // Links: to temp_auth_email when there is one, else to the id.
    let (code, stdout, stderr) = run(&[
        "--user",
        "alice@corp.example",
        "--user",
        "bob@corp.example",
        "--method",
        "link",
    ]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(stdout, "alice@corp.example: sent\nbob@corp.example: sent\n");
    let mails = new_mails(&outbox, &mut seen);
    let mut to: Vec<Vec<String>> = mails.iter().map(ReceivedMail::recipients).collect();
    to.sort();
    assert_eq!(
        to,
        [vec!["alice.home@mail.example"], vec!["bob@corp.example"]]
    );
    for m in &mails {
        assert_eq!(m.subject, "Your sign-in link for app");
        let link = link_of(m, "https://app.test");
        assert!(m.text.lines().any(|l| l == link), "alone on its line");
        assert!(!stdout.contains(&link) && !stderr.contains(&link));
        secrets.push(link.split_once("?t=").unwrap().1.to_owned());
    }
    assert_ne!(secrets[0], secrets[1]);

    // Temporary passwords to a group: a member without any address is reported, exit 1.
    let (code, stdout, stderr) = run(&["--group", "ops", "--method", "token"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(stdout, "carol: sent\ndave: no address\n");
    let mails = new_mails(&outbox, &mut seen);
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].recipients(), ["carol@home.example"]);
    assert_eq!(mails[0].subject, "Your temporary password for app");
    let first = temp_password_of(&mails[0]);
    assert!(mails[0].text.lines().any(|l| l == first));
    assert!(
        mails[0].text.contains("https://app.test/.otpgate/login"),
        "{}",
        mails[0].text
    );
    secrets.push(first.clone());

    // Within 24 hours: skipped, nothing sent, exit 0 (the first one still works).
    let (code, stdout, stderr) = run(&["--user", "carol", "--method", "token"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(stdout, "carol: skipped (sent within 24h)\n");
    assert!(new_mails(&outbox, &mut seen).is_empty(), "no mail");

    // --force sends a new one anyway.
    let (code, stdout, stderr) = run(&["--user", "carol", "--method", "token", "--force"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(stdout, "carol: sent\n");
    let mails = new_mails(&outbox, &mut seen);
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].recipients(), ["carol@home.example"]);
    let second = temp_password_of(&mails[0]);
    assert_ne!(second, first);
    secrets.push(second);

    // Unknown ids are reported (exit 1); an address outside the table is mailed there; an
    // empty group is named.
    let (code, stdout, stderr) = run(&[
        "--user",
        "nobody",
        "--user",
        "eve@else.example",
        "--group",
        "nosuch",
        "--method",
        "link",
    ]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        "group nosuch: no users\nnobody: unknown user\neve@else.example: sent\n"
    );
    let mails = new_mails(&outbox, &mut seen);
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].recipients(), ["eve@else.example"]);
    secrets.push(
        link_of(&mails[0], "https://app.test")
            .split_once("?t=")
            .unwrap()
            .1
            .to_owned(),
    );

    // Audited, one event per mailed (or skipped) user, without any secret.
    let events = audit_events(&data, "auth_email.sent");
    let summary: Vec<(String, String, String, String, bool)> = events
        .iter()
        .map(|e| {
            assert_eq!(e["via"], "command line");
            assert_eq!(e["app"], "app");
            (
                e["email"].as_str().unwrap().to_owned(),
                e["to"].as_str().unwrap().to_owned(),
                e["login_method"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
                e["forced"].as_bool().unwrap(),
            )
        })
        .collect();
    let row = |email: &str, to: &str, method: &str, outcome: &str, forced: bool| {
        (
            email.to_owned(),
            to.to_owned(),
            method.to_owned(),
            outcome.to_owned(),
            forced,
        )
    };
    assert_eq!(
        summary,
        [
            row(
                "alice@corp.example",
                "alice.home@mail.example",
                "onetimelink",
                "sent",
                false
            ),
            row(
                "bob@corp.example",
                "bob@corp.example",
                "onetimelink",
                "sent",
                false
            ),
            row(
                "carol@home.example",
                "carol@home.example",
                "onetimetoken",
                "sent",
                false
            ),
            row(
                "carol@home.example",
                "carol@home.example",
                "onetimetoken",
                "skipped (sent within 24h)",
                false
            ),
            row(
                "carol@home.example",
                "carol@home.example",
                "onetimetoken",
                "sent",
                true
            ),
            row(
                "eve@else.example",
                "eve@else.example",
                "onetimelink",
                "sent",
                false
            ),
        ]
    );
    assert_eq!(secrets.len(), 5);
    let audit = std::fs::read_to_string(data.join("audit.log")).unwrap();
    // The stored records are digests: no secret outside the outbox either.
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(&data).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            stored.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    assert!(stored.iter().any(|(p, _)| p.ends_with("audit.log")));
    for s in &secrets {
        assert!(!audit.contains(s.as_str()), "a secret in the audit log");
        let normalised = s.replace('-', "");
        for (p, bytes) in &stored {
            for needle in [s.as_str(), normalised.as_str()] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "a secret in {}",
                    p.display()
                );
            }
        }
    }
}

/// A browser-like client for the binary's pages: keeps cookies, sends `Origin` on posts, reads
/// CSRF tokens.
pub struct Visitor {
    client: reqwest::Client,
    pub base: String,
    pub jar: BTreeMap<String, String>,
    csrf: String,
}

pub struct Page {
    pub status: u16,
    pub location: String,
    pub body: String,
}

impl Visitor {
    pub fn new(ca: &TestCa, port: u16) -> Self {
        Self {
            client: client_with(&[ca.der()], Versions::Http1),
            base: format!("https://app.test:{port}"),
            jar: BTreeMap::new(),
            csrf: String::new(),
        }
    }

    fn cookies(&self) -> String {
        self.jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, headers: &reqwest::header::HeaderMap) {
        for v in headers.get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.jar.remove(name);
            } else {
                self.jar.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    async fn read(&mut self, r: reqwest::Response) -> Page {
        let status = r.status().as_u16();
        self.keep_cookies(r.headers());
        let location = r
            .headers()
            .get("location")
            .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
        let body = r.text().await.unwrap();
        if let Some(i) = body.find("name=\"csrf\" value=\"") {
            let rest = &body[i + 19..];
            self.csrf = rest[..rest.find('"').unwrap()].to_owned();
        }
        Page {
            status,
            location,
            body,
        }
    }

    fn with_cookies(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if self.jar.is_empty() {
            req
        } else {
            req.header("cookie", self.cookies())
        }
    }

    pub async fn get(&mut self, path_or_url: &str) -> Page {
        let url = if path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else {
            format!("{}{path_or_url}", self.base)
        };
        let r = self
            .with_cookies(self.client.get(url))
            .send()
            .await
            .unwrap();
        self.read(r).await
    }

    /// The form post a browser sends: CSRF token, `Origin`, cookies.
    fn form_body(&self, fields: &[(&str, &str)]) -> String {
        let mut form: Vec<(&str, &str)> = vec![("csrf", self.csrf.as_str())];
        form.extend_from_slice(fields);
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish()
    }

    fn form(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::RequestBuilder {
        self.with_cookies(
            self.client
                .post(format!("{}{path}", self.base))
                .header("origin", self.base.clone())
                .header("content-type", "application/x-www-form-urlencoded")
                .body(self.form_body(fields)),
        )
    }

    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let r = self.form(path, fields).send().await.unwrap();
        self.read(r).await
    }

    /// A new login transaction for /docs, then "Email me a temporary password".
    async fn ask_temp_password(&mut self, email: &str) {
        assert_eq!(self.get("/.otpgate/login?rd=%2Fdocs").await.status, 200);
        let p = self
            .post("/.otpgate/login", &[("email", email), ("method", "token")])
            .await;
        assert_eq!(p.status, 200);
        assert!(
            p.body.contains("An email has been sent to you"),
            "{}",
            p.body
        );
    }

    /// The login page's password form (a new login transaction for /docs).
    async fn sign_in(&mut self, email: &str, password: &str) -> Page {
        assert_eq!(self.get("/.otpgate/login?rd=%2Fdocs").await.status, 200);
        self.post(
            "/.otpgate/login",
            &[
                ("email", email),
                ("method", "password"),
                ("password", password),
            ],
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_send_auth_email_on_the_running_binary() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let token = random_token();
    std::fs::write(dir.path().join("admin-token"), format!("{token}\n")).unwrap();
    let cfg = zscaler_config(dir.path(), &ca, "admin: { token_file: admin-token }");
    let data = dir.path().join("data");
    let outbox = data.join("outbox");
    let p = spawn(&cfg, &[]).await;
    let port = p.https.unwrap().port();
    let url = format!("http://{}/admin/send-auth-email", p.admin.unwrap());
    let c = client_with(&[], Versions::Http1);
    let body = serde_json::json!({
        "users": ["alice@corp.example"], "groups": ["ops"], "method": "link"
    });
    let mut seen = HashSet::new();

    // Without the token, or with a wrong one: 401, nothing sent.
    for auth in [None, Some(format!("Bearer {token}x")), Some(token.clone())] {
        let mut req = c.post(&url).json(&body);
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"], "unauthorised");
    }
    assert!(new_mails(&outbox, &mut seen).is_empty());
    assert!(audit_events(&data, "auth_email.sent").is_empty());

    // With it: one result per user, the mails written before the answer.
    let r = c
        .post(&url)
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["app"], "app");
    assert_eq!(v["method"], "onetimelink");
    assert_eq!(
        v["results"],
        serde_json::json!([
            { "user": "alice@corp.example", "outcome": "sent" },
            { "user": "carol", "outcome": "sent" },
            { "user": "dave", "outcome": "no address" },
        ])
    );
    let mails = new_mails(&outbox, &mut seen);
    let mut to: Vec<Vec<String>> = mails.iter().map(ReceivedMail::recipients).collect();
    to.sort();
    assert_eq!(
        to,
        [vec!["alice.home@mail.example"], vec!["carol@home.example"]]
    );
    let events = audit_events(&data, "auth_email.sent");
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e["via"] == "admin api"));

    // The link points at the running gateway's public origin and logs Alice in there.
    let alice_mail = mails
        .iter()
        .find(|m| m.recipients() == ["alice.home@mail.example"])
        .unwrap();
    let link = link_of(alice_mail, &format!("https://app.test:{port}"));
    let mut v = Visitor::new(&ca, port);
    let page = v.get(&link).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("alice@corp.example"), "{}", page.body);
    let t = link.split_once("?t=").unwrap().1.to_owned();
    let page = v.post("/.otpgate/link", &[("t", &t)]).await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(page.location, format!("https://app.test:{port}/"));
    let page = v.get("/").await;
    assert_eq!(page.status, 200);
    let echo: serde_json::Value = serde_json::from_str(&page.body).unwrap();
    assert_eq!(echo["identity"]["email"], "alice@corp.example");

    // Bad requests are refused with a reason.
    for bad in [
        serde_json::json!({ "users": [], "groups": [] }),
        serde_json::json!({ "users": ["bob@corp.example"], "method": "pin" }),
        serde_json::json!({ "users": ["bob@corp.example"], "app": "nope" }),
        serde_json::json!({ "users": ["bob@corp.example"], "colour": "red" }),
    ] {
        let r = c
            .post(&url)
            .bearer_auth(&token)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    assert!(new_mails(&outbox, &mut seen).is_empty());
    drop(p);

    // Without a configured token the API is closed, whatever is sent.
    let dir2 = tempfile::tempdir().unwrap();
    let cfg2 = zscaler_config(dir2.path(), &ca, "");
    let p2 = spawn(&cfg2, &[]).await;
    let url2 = format!("http://{}/admin/send-auth-email", p2.admin.unwrap());
    for auth in [None, Some(token.as_str())] {
        let mut req = c.post(&url2).json(&body);
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 403);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"], "admin_api_disabled");
    }
    assert!(new_mails(&dir2.path().join("data/outbox"), &mut seen).is_empty());
}

/// Kills the process with SIGKILL (no shutdown, no flush) and waits until it is gone.
pub async fn sigkill(p: &mut Proc) {
    p.child.start_kill().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), p.child.wait())
        .await
        .expect("the process dies")
        .unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(9), "{status:?}");
}

/// A restart on the same folder: serving, healthy and ready.
pub async fn restart(cfg: &Path) -> Proc {
    let p = spawn(cfg, &[]).await;
    let c = client_with(&[], Versions::Http1);
    for path in ["/healthz", "/readyz"] {
        let r = c
            .get(format!("http://{}{path}", p.admin.unwrap()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} after the restart");
    }
    p
}

/// A temporary password for `email` from the login page, signed in with: the visitor then
/// holds the restricted session and the "Choose a new password" form's CSRF token.
async fn temporary_login(
    v: &mut Visitor,
    outbox: &Path,
    seen: &mut HashSet<PathBuf>,
    email: &str,
) -> String {
    v.ask_temp_password(email).await;
    let mail = outbox_mail(outbox, email, "Your temporary password for app", seen).await;
    let temp = temp_password_of(&mail);
    let p = v.sign_in(email, &temp).await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(p.location, format!("{}/.otpgate/password", v.base));
    assert!(v.jar.contains_key("__Host-otpgate-pw"));
    let p = v.get("/.otpgate/password").await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("Choose a new password"));
    temp
}

/// The state after a committed change: the new password logs in (303, session cookie, the
/// app sees the user), the used temporary password and the restricted session do not.
async fn assert_changed(
    ca: &TestCa,
    port: u16,
    email: &str,
    password: &str,
    temp: &str,
    restricted: &str,
) {
    let mut v = Visitor::new(ca, port);
    let p = v.sign_in(email, password).await;
    assert_eq!(p.status, 303, "the new password logs in: {}", p.body);
    assert_eq!(p.location, format!("https://app.test:{port}/docs"));
    assert!(v.jar.contains_key("__Host-otpgate"), "a session cookie");
    let p = v.get("/docs").await;
    assert_eq!(p.status, 200);
    let echo: serde_json::Value = serde_json::from_str(&p.body).unwrap();
    assert_eq!(echo["identity"]["email"], email);
    // The temporary password was used up.
    let mut w = Visitor::new(ca, port);
    let p = w.sign_in(email, temp).await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("That account does not have access."));
    // The restricted session ended with the change (its sessions were all revoked).
    let mut r = Visitor::new(ca, port);
    r.jar
        .insert("__Host-otpgate-pw".to_owned(), restricted.to_owned());
    let p = r.get("/.otpgate/password").await;
    assert_eq!(p.status, 303, "the restricted session is over");
    assert_eq!(
        p.location,
        format!("https://app.test:{port}/.otpgate/login")
    );
}

/// A request written whole to the gateway over TLS; returns the stream for the answer.
async fn send_raw_tls(
    ca: &TestCa,
    addr: SocketAddr,
    request: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt as _;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("app.test").unwrap();
    let mut s = connector.connect(name, tcp).await.unwrap();
    s.write_all(request).await.unwrap();
    s.flush().await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_password_change_loses_no_committed_password() {
    use tokio::io::AsyncReadExt as _;
    init();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let cfg = zscaler_config(dir.path(), &ca, "");
    let data = dir.path().join("data");
    let outbox = data.join("outbox");
    let mut seen = HashSet::new();

    // 1. Killed the moment the 303 of a password change arrives.
    let mut p = spawn(&cfg, &[]).await;
    let port = p.https.unwrap().port();
    let mut v = Visitor::new(&ca, port);
    let alice = "alice.home@mail.example";
    // Alice's mails go to her temp_auth_email; she signs in as her work address.
    v.ask_temp_password("alice@corp.example").await;
    let mail = outbox_mail(&outbox, alice, "Your temporary password for app", &mut seen).await;
    let temp = temp_password_of(&mail);
    let page = v.sign_in("alice@corp.example", &temp).await;
    assert_eq!(page.status, 303, "{}", page.body);
    let page = v.get("/.otpgate/password").await;
    assert!(page.body.contains("Choose a new password"));
    let restricted = v.jar["__Host-otpgate-pw"].clone();
    let chosen = "amber kettle orchard 41";
    let r = v
        .form(
            "/.otpgate/password",
            &[("password", chosen), ("confirm", chosen)],
        )
        .send()
        .await
        .unwrap();
    sigkill(&mut p).await;
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("https://app.test:{port}/docs"),
        "back to the page the login started from"
    );
    v.keep_cookies(r.headers());
    assert!(v.jar.contains_key("__Host-otpgate"));
    drop(p);

    let p = restart(&cfg).await;
    let port = p.https.unwrap().port();
    assert_changed(&ca, port, "alice@corp.example", chosen, &temp, &restricted).await;

    // 2. Killed while a change is in flight: the request is written whole, then SIGKILL
    // without waiting for the answer.
    let mut p = p;
    let bob = "bob@corp.example";
    let mut v = Visitor::new(&ca, port);
    let bob_temp = temporary_login(&mut v, &outbox, &mut seen, bob).await;
    let restricted = v.jar["__Host-otpgate-pw"].clone();
    let bob_pw = "granite meadow falcon 93";
    let body = v.form_body(&[("password", bob_pw), ("confirm", bob_pw)]);
    let request = format!(
        "POST /.otpgate/password HTTP/1.1\r\nHost: app.test:{port}\r\nOrigin: {base}\r\n\
         Cookie: {cookies}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n{body}",
        base = v.base,
        cookies = v.cookies(),
        len = body.len(),
    );
    let mut stream = send_raw_tls(&ca, p.https.unwrap(), request.as_bytes()).await;
    sigkill(&mut p).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the dead process's connection ends");
    let answered = answer.starts_with(b"HTTP/1.1 303");
    drop(p);

    let p = restart(&cfg).await;
    let port = p.https.unwrap().port();
    // What the store holds decides which consistent state this is; the gateway must agree.
    let committed = otpgate::store::Store::open_embedded(&data)
        .unwrap()
        .password_hash(bob)
        .await
        .unwrap()
        .is_some();
    if answered {
        assert!(committed, "a 303 was sent, so the password was committed");
    }
    if committed {
        assert_changed(&ca, port, bob, bob_pw, &bob_temp, &restricted).await;
    } else {
        // The change never happened: no password, the temporary one is used up...
        let mut w = Visitor::new(&ca, port);
        for typed in [bob_pw, bob_temp.as_str()] {
            let page = w.sign_in(bob, typed).await;
            assert_eq!(page.status, 200);
            assert!(page.body.contains("That account does not have access."));
            assert!(!w.jar.contains_key("__Host-otpgate"));
        }
        // ... and the login page sends no second one within 24 hours (docs/security.md#24)...
        let before = audit_events(&data, "token.suppressed").len();
        w.ask_temp_password(bob).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while audit_events(&data, "token.suppressed").len() == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no token.suppressed"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let last = audit_events(&data, "token.suppressed").pop().unwrap();
        assert_eq!(last["reason"], "reissue_after");
        assert_eq!(last["email"], bob);
        // ... but the restricted session survived the crash: Bob can still choose one.
        let mut r = Visitor::new(&ca, port);
        r.jar
            .insert("__Host-otpgate-pw".to_owned(), restricted.clone());
        let page = r.get("/.otpgate/password").await;
        assert_eq!(page.status, 200);
        assert!(page.body.contains("Choose a new password"));
        // And an operator can send a new temporary password at once (`--force`).
        let out = otpgate(&[
            "send-auth-email",
            "--config",
            cfg.to_str().unwrap(),
            "--user",
            bob,
            "--method",
            "token",
            "--force",
        ]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{bob}: sent\n"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mail = outbox_mail(&outbox, bob, "Your temporary password for app", &mut seen).await;
        let fresh = temp_password_of(&mail);
        let mut x = Visitor::new(&ca, port);
        let page = x.sign_in(bob, &fresh).await;
        assert_eq!(page.status, 303);
        assert_eq!(
            page.location,
            format!("https://app.test:{port}/.otpgate/password")
        );
        let page = x.get("/.otpgate/password").await;
        assert!(page.body.contains("Choose a new password"));
        let restricted = x.jar["__Host-otpgate-pw"].clone();
        let page = x
            .post(
                "/.otpgate/password",
                &[("password", bob_pw), ("confirm", bob_pw)],
            )
            .await;
        assert_eq!(page.status, 303);
        assert_changed(&ca, port, bob, bob_pw, &fresh, &restricted).await;
    }
    // Alice's password, committed before the first crash, survived the second one too.
    let mut v = Visitor::new(&ca, port);
    assert_eq!(v.sign_in("alice@corp.example", chosen).await.status, 303);
    eprintln!("in-flight kill: answered={answered} committed={committed}");
}

/// The newcomer's path with the one-time link: the committed config, a browser, the link read
/// from the mail file in data/outbox/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newcomer_link_login_in_a_browser_with_the_committed_config() {
    init();
    let Some(mut b) = crate::browser::Browser::start("newcomer_link").await else {
        return;
    };
    let (dir, cfg) = scratch_with_committed_config();
    let mut p = spawn(&cfg, &[]).await;
    let port = p.https.unwrap().port();
    let origin = format!("https://localhost:{port}");
    b.client.goto(&format!("{origin}/")).await.unwrap();
    assert_eq!(
        b.client.current_url().await.unwrap().path(),
        "/.otpgate/login"
    );
    b.shot("login").await;
    let field = b
        .client
        .find(fantoccini::Locator::Css("input#email"))
        .await
        .unwrap();
    field.send_keys("Newcomer@Example.org").await.unwrap();
    b.click("button[name=method][value=link]").await;
    let text = b.text().await;
    assert!(text.contains("An email has been sent to you"), "{text}");
    b.shot("sent").await;
    let line = p.wait_for_line("mail written to the outbox").await;
    assert!(line.contains("newcomer@example.org"), "{line}");
    let mut seen = HashSet::new();
    let mails = new_mails(&dir.path().join("data/outbox"), &mut seen);
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].recipients(), ["newcomer@example.org"]);
    assert_eq!(mails[0].subject, "Your sign-in link for demo");
    let link = link_of(&mails[0], &origin);
    let token = link.split_once("?t=").unwrap().1;
    assert!(
        !line.contains(token),
        "the log line says where, never the link"
    );
    b.client.goto(&link).await.unwrap();
    let text = b.text().await;
    assert!(text.contains("Continue as newcomer@example.org"), "{text}");
    b.shot("confirm").await;
    b.click("button[type=submit]").await;
    assert_eq!(
        b.client.current_url().await.unwrap().as_str(),
        format!("{origin}/")
    );
    let text = b.text().await;
    assert!(
        text.contains("demo is behind otpgate")
            && text.contains("Signed in as newcomer@example.org"),
        "{text}"
    );
    b.shot("echo").await;
    // The link is used up.
    b.client.goto(&link).await.unwrap();
    assert!(
        b.text()
            .await
            .contains("That account does not have access.")
    );
    b.close().await;
}
