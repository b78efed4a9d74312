//! End to end: the real `otpgate` binary, its command line, signals and the committed configs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_otpgate");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A running `otpgate` process, killed when dropped.
struct Proc {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    http: Option<SocketAddr>,
    https: Option<SocketAddr>,
    admin: Option<SocketAddr>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Starts the binary on `config` with every listener moved to an ephemeral port and JSON logs,
/// and waits for its "is serving" line.
async fn spawn(config: &Path, extra_env: &[(&str, &str)]) -> Proc {
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
    fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }

    async fn wait_for_line(&mut self, needle: &str) -> String {
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
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok ("));
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
}

/// SPEC.md §2, the newcomer's path: the binary on the committed config, a browser at
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
