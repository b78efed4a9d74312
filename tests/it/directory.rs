//! Directory sync against a real OpenLDAP `slapd` (tests/it/ldap.rs) loaded with the fixture
//! tests/data/directory.ldif: users and groups merged with the config's users, groups deciding
//! policies before login (is a PIN mailed?) and on every request of existing sessions, group
//! changes and outages of the directory, the snapshot kept across a restart, groupOfNames and
//! memberOf styles, ldaps:// and StartTLS, and `otpgate users list` through the binary.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use otpgate::users::Source;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::harness::*;
use crate::ldap::{Options, READER_PW, Slapd};
use crate::smtp::SmtpServer;

const CERTS: &[(&str, &[&str])] = &[("site", &["app.test"])];

/// A gateway whose only app (`portal`: a name of its own, as the metrics other tests count are
/// process-wide and labelled by app) lets the `engineering` group in, with config users beside
/// the directory's: alice is in both, zoe and yann only in the config.
fn config(up: &Upstream, directory: &str, extra: &str) -> String {
    format!(
        "version: 1
{LISTEN_ALL}
tls: {{ certificates: [ {{ cert: site.pem, key: site-key.pem }} ] }}
users:
  - {{ id: alice@example.org, groups: [ops] }}
  - {{ id: zoe@corp.example, groups: [engineering] }}
  - {{ id: yann, temp_auth_email: yann@home.example }}
{directory}
{extra}
apps:
  - name: portal
    hosts: [app.test]
    upstream: {up}
    policies:
      - {{ name: engineers, action: allow, include: [ {{ group: engineering }} ] }}
",
        up = up.url()
    )
}

/// Waits until a directory snapshot serves.
async fn synced(gw: &Gw) {
    let g = gw.running.gateway().clone();
    eventually("a directory snapshot", Duration::from_secs(15), move || {
        g.directory_snapshot().is_some()
    })
    .await;
}

/// The groups the gateway serves for `email` (`None`: unknown user).
fn groups_of(gw: &Gw, email: &str) -> Option<Vec<String>> {
    gw.running
        .gateway()
        .users()
        .by_email(email)
        .map(|u| u.groups.iter().map(ToString::to_string).collect())
}

/// Waits until the gateway serves `want` as `email`'s groups.
async fn groups_become(gw: &Gw, email: &str, want: &[&str]) {
    let g = gw.running.gateway().clone();
    let email = email.to_owned();
    let want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    eventually(
        &format!("{email} in {want:?}"),
        Duration::from_secs(15),
        move || {
            g.users()
                .by_email(&email)
                .map(|u| u.groups.iter().map(ToString::to_string).collect::<Vec<_>>())
                .as_ref()
                == Some(&want)
        },
    )
    .await;
}

/// `GET https://app.test/` with a cookie: the status and the upstream's view of the request.
async fn visit(gw: &Gw, cookie: &str) -> (u16, serde_json::Value) {
    let r = gw
        .client()
        .get(gw.https_url("app.test", "/"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_merges_directory_users_with_config_users_and_reports_skipped_entries() {
    let Some(ldap) = Slapd::start(Options::default()).await else {
        return;
    };
    let up = Upstream::start().await;
    let gw = Gw::start_with(&config(&up, &ldap.directory_yaml("5m"), ""), CERTS).await;
    synced(&gw).await;
    assert_eq!(gw.readyz().await.0, 200);

    let users = gw.running.gateway().users();
    let ids: Vec<&str> = users.all().map(|u| u.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "alice@example.org",
            "bob@example.org",
            "carol@example.org",
            "yann",
            "zoe@corp.example"
        ],
        "dave, erin and grace are skipped; Carol@Example.ORG is lower-cased"
    );
    let alice = users.by_email("alice@example.org").unwrap();
    assert_eq!(alice.source, Source::Both);
    assert_eq!(
        groups_of(&gw, "alice@example.org").unwrap(),
        ["ops", "admins", "engineering"],
        "the config's groups first, then the directory's"
    );
    assert_eq!(
        alice.mail_to().unwrap().as_str(),
        "alice.home@mail.example",
        "the directory's otherMailbox, as the config sets none"
    );
    let bob = users.by_email("bob@example.org").unwrap();
    assert_eq!(bob.source, Source::Directory);
    assert_eq!(bob.temp_auth_email, None);
    assert_eq!(
        bob.mail_to().unwrap().as_str(),
        "bob@example.org",
        "no otherMailbox: temporary authentication falls back to the id"
    );
    assert_eq!(users.by_email("carol@example.org").unwrap().groups.len(), 0);
    assert_eq!(users.by_id("yann").unwrap().source, Source::Config);
    assert_eq!(
        users.by_email("zoe@corp.example").unwrap().source,
        Source::Config
    );
    assert!(users.by_email("dave@localhost").is_none());
    assert!(users.by_email("grace@example.org").is_none());
    drop(users);

    // The same read, directly: the skipped entries are reported with their DN and reason.
    let cfg = gw.config().directory.unwrap();
    let built = otpgate::directory::sync_once(&cfg, 7).await.unwrap();
    let skipped: Vec<(String, &str)> = built
        .skipped
        .iter()
        .map(|s| (s.dn.clone(), s.reason.as_str()))
        .collect();
    assert_eq!(
        skipped,
        [
            (
                "uid=dave,ou=people,dc=example,dc=org".to_owned(),
                "invalid_address"
            ),
            (
                "uid=erin,ou=people,dc=example,dc=org".to_owned(),
                "missing_id"
            ),
            (
                "uid=grace,ou=people,dc=example,dc=org".to_owned(),
                "invalid_address"
            ),
        ]
    );
    assert!(built.skipped[2].detail.contains("otherMailbox"));
    assert_eq!(built.snapshot.users.len(), 3);
    assert_eq!(built.snapshot.group_count(), 2);

    // Groups decide on every request: directory members, config members, and nobody else.
    for (email, status, header) in [
        ("bob@example.org", 200, Some("engineering")),
        ("alice@example.org", 200, Some("ops,admins,engineering")),
        ("zoe@corp.example", 200, Some("engineering")),
        ("carol@example.org", 403, None),
        ("stranger@example.org", 403, None),
    ] {
        let (got, seen) = visit(&gw, &gw.mint("portal", email)).await;
        assert_eq!(got, status, "{email}");
        if let Some(h) = header {
            assert_eq!(seen["headers"]["x-otpgate-groups"][0], h, "{email}");
            assert_eq!(seen["headers"]["x-otpgate-email"][0], email);
        }
    }

    // A snapshot taken with other directory settings is refused, and changes nothing.
    let mut foreign = built.snapshot.clone();
    foreign.fingerprint = "other settings".into();
    foreign.users.clear();
    assert!(
        !gw.running
            .gateway()
            .set_directory_snapshot(Some(Arc::new(foreign)))
    );
    assert_eq!(groups_of(&gw, "bob@example.org").unwrap(), ["engineering"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_change_in_ldap_decides_the_next_request_of_an_existing_session() {
    let Some(ldap) = Slapd::start(Options::default()).await else {
        return;
    };
    let up = Upstream::start().await;
    let yaml = config(&up, &ldap.directory_yaml("1s"), "");
    let gw = Gw::start_with(&yaml, CERTS).await;
    synced(&gw).await;
    let bob = gw.mint("portal", "bob@example.org");
    let alice = gw.mint("portal", "alice@example.org");
    assert_eq!(visit(&gw, &bob).await.0, 200);

    // Out of the group in LDAP: after the next refresh, the same cookie is refused.
    ldap.remove_member("engineering", "bob");
    groups_become(&gw, "bob@example.org", &[]).await;
    assert_eq!(visit(&gw, &bob).await.0, 403);
    assert_eq!(visit(&gw, &alice).await.0, 200, "alice is still a member");

    // Back in: allowed again, without a new login.
    ldap.add_member("engineering", "bob");
    groups_become(&gw, "bob@example.org", &["engineering"]).await;
    let (status, seen) = visit(&gw, &bob).await;
    assert_eq!(status, 200);
    assert_eq!(seen["headers"]["x-otpgate-groups"][0], "engineering");

    // A policy change (reload) also decides the next request; the directory snapshot stays.
    gw.write_config(&yaml.replace("{ group: engineering }", "{ group: admins }"));
    gw.running.reload().unwrap();
    assert_eq!(visit(&gw, &bob).await.0, 403);
    assert_eq!(
        visit(&gw, &alice).await.0,
        200,
        "admins comes from the directory, still serving after the reload"
    );
}

/// A login page visit and an address submitted, as a browser does; the status of the answer.
async fn ask_for_code(gw: &Gw, email: &str) -> u16 {
    let client = gw.client();
    let base = format!("https://app.test:{}", gw.https().port());
    let r = client
        .get(format!("{base}/.otpgate/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let cookies: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| {
            let v = v.to_str().unwrap();
            v.split(';').next().unwrap().to_owned()
        })
        .collect();
    let body = r.text().await.unwrap();
    let at = body.find("name=\"csrf\" value=\"").unwrap() + 19;
    let csrf = &body[at..at + body[at..].find('"').unwrap()];
    let form = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("csrf", csrf), ("email", email)])
        .finish();
    let r = client
        .post(format!("{base}/.otpgate/login"))
        .header("origin", &base)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", cookies.join("; "))
        .body(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("A code has been emailed to you")
    );
    status
}

fn suppressions(gw: &Gw) -> HashMap<String, String> {
    let text = std::fs::read_to_string(gw.config().data_dir.join("audit.log")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "code.suppressed")
        .map(|e| {
            (
                e["email"].as_str().unwrap().to_owned(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_is_mailed_only_to_members_of_the_directory_group() {
    let Some(ldap) = Slapd::start(Options::default()).await else {
        return;
    };
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let mail = format!(
        "mail: {{ from: 'Gate <gate@corp.example>', transport: 'smtp://{}?tls=none' }}
rate_limits: {{ code_resend_cooldown: 1ms }}",
        smtp.addr
    );
    let gw = Gw::start_with(&config(&up, &ldap.directory_yaml("1s"), &mail), CERTS).await;
    synced(&gw).await;

    // bob is in engineering in LDAP: mailed. carol is not: the same answer, no mail.
    assert_eq!(ask_for_code(&gw, "bob@example.org").await, 200);
    assert_eq!(ask_for_code(&gw, "carol@example.org").await, 200);
    smtp.wait_for_mail("bob@example.org", Duration::from_secs(10))
        .await;
    assert_eq!(suppressions(&gw)["carol@example.org"], "policy_block");

    // carol joins and bob leaves engineering in LDAP: after a refresh it is the other way round.
    ldap.add_member("engineering", "carol");
    ldap.remove_member("engineering", "bob");
    groups_become(&gw, "carol@example.org", &["engineering"]).await;
    groups_become(&gw, "bob@example.org", &[]).await;
    let before = smtp.count();
    assert_eq!(ask_for_code(&gw, "bob@example.org").await, 200);
    assert_eq!(ask_for_code(&gw, "carol@example.org").await, 200);
    smtp.wait_for_mail("carol@example.org", Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let to: Vec<String> = smtp
        .received()
        .iter()
        .flat_map(|m| m.recipients())
        .collect();
    assert_eq!(smtp.count(), before + 1, "{to:?}");
    assert_eq!(
        to.iter().filter(|t| *t == "bob@example.org").count(),
        1,
        "bob got his first code only: {to:?}"
    );
    assert_eq!(suppressions(&gw)["bob@example.org"], "policy_block");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_snapshot_serves_while_the_directory_is_down_also_across_a_restart() {
    let Some(mut ldap) = Slapd::start(Options::default()).await else {
        return;
    };
    let up = Upstream::start().await;
    let yaml = config(&up, &ldap.directory_yaml("1s"), "");
    let gw = Gw::start_with(&yaml, CERTS).await;
    synced(&gw).await;
    let bob = gw.mint("portal", "bob@example.org");

    // Down: syncs fail, the snapshot keeps serving, the gateway stays ready.
    ldap.stop().await;
    let cfg = gw.config().directory.unwrap();
    assert!(matches!(
        otpgate::directory::sync_once(&cfg, 0).await,
        Err(otpgate::directory::DirectoryError::Connect { .. })
    ));
    let last = gw.running.gateway().directory_snapshot().unwrap().synced_ms;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        gw.running.gateway().directory_snapshot().unwrap().synced_ms,
        last,
        "no sync succeeded while the directory was down"
    );
    assert_eq!(visit(&gw, &bob).await.0, 200);
    assert_eq!(gw.readyz().await.0, 200);

    // A restart while it is down: the persisted snapshot serves from the start.
    let gw = gw.restart().await;
    assert!(gw.running.gateway().directory_snapshot().is_some());
    assert_eq!(groups_of(&gw, "bob@example.org").unwrap(), ["engineering"]);
    assert_eq!(
        groups_of(&gw, "alice@example.org").unwrap(),
        ["ops", "admins", "engineering"]
    );
    assert_eq!(visit(&gw, &bob).await.0, 200);
    assert_eq!(gw.readyz().await.0, 200);

    // Another gateway that never synced knows no directory user and is not ready.
    let fresh = Gw::start_with(&yaml, CERTS).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(fresh.running.gateway().directory_snapshot().is_none());
    assert_eq!(fresh.readyz().await.0, 503);
    assert_eq!(groups_of(&fresh, "bob@example.org"), None);
    assert_eq!(
        visit(&fresh, &fresh.mint("portal", "bob@example.org"))
            .await
            .0,
        403
    );
    assert_eq!(
        visit(&fresh, &fresh.mint("portal", "zoe@corp.example"))
            .await
            .0,
        200,
        "config users still work"
    );

    // Back, with a change made meanwhile: the next sync applies it.
    ldap.restart().await;
    ldap.remove_member("engineering", "bob");
    groups_become(&gw, "bob@example.org", &[]).await;
    assert_eq!(visit(&gw, &bob).await.0, 403);
    synced(&fresh).await;
    assert_eq!(fresh.readyz().await.0, 200);
    assert_eq!(
        groups_of(&fresh, "alice@example.org").unwrap(),
        ["ops", "admins", "engineering"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_the_directory() {
    let Some(ldap) = Slapd::start(Options::default()).await else {
        return;
    };
    let up = Upstream::start().await;
    let without = config(&up, "", "");
    let gw = Gw::start_with(&without, CERTS).await;
    let bob = gw.mint("portal", "bob@example.org");
    assert_eq!(visit(&gw, &bob).await.0, 403);

    gw.write_config(&config(&up, &ldap.directory_yaml("5m"), ""));
    gw.running.reload().unwrap();
    groups_become(&gw, "bob@example.org", &["engineering"]).await;
    assert_eq!(visit(&gw, &bob).await.0, 200);

    gw.write_config(&without);
    gw.running.reload().unwrap();
    assert!(gw.running.gateway().directory_snapshot().is_none());
    assert_eq!(groups_of(&gw, "bob@example.org"), None);
    assert_eq!(visit(&gw, &bob).await.0, 403);
    assert_eq!(
        groups_of(&gw, "alice@example.org").unwrap(),
        ["ops"],
        "only the config's groups remain"
    );
}

/// The TLS-enabled instance and a folder with its CA.
async fn tls_slapd(member_of: bool) -> Option<(Slapd, tempfile::TempDir)> {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["127.0.0.1"]);
    let ldap = Slapd::start(Options {
        member_of,
        tls: Some(&leaf),
    })
    .await?;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ldap-ca.pem"), ca.pem()).unwrap();
    Some((ldap, dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_directory_style_member_of_over_ldaps() {
    let Some((ldap, ca_dir)) = tls_slapd(true).await else {
        return;
    };
    let up = Upstream::start().await;
    // As with Active Directory: memberOf on the user entries, no groups search.
    let directory = format!(
        "directory:
  url: {url}
  ca_file: {ca}
  bind_dn: {reader}
  bind_password_file: {pw}
  users:
    base: '{people}'
    filter: '(&(objectClass=inetOrgPerson)(mail=*))'
    id: mail
    member_of: memberOf
  refresh: 5m
  page_size: 2
",
        url = ldap.ldaps_url(),
        ca = ca_dir.path().join("ldap-ca.pem").display(),
        reader = crate::ldap::READER_DN,
        pw = ldap.password_file().display(),
        people = crate::ldap::PEOPLE,
    );
    let gw = Gw::start_with(&config(&up, &directory, ""), CERTS).await;
    synced(&gw).await;
    assert_eq!(
        groups_of(&gw, "alice@example.org").unwrap(),
        ["ops", "admins", "engineering"]
    );
    assert_eq!(groups_of(&gw, "bob@example.org").unwrap(), ["engineering"]);
    let users = gw.running.gateway().users();
    assert_eq!(
        users.by_email("alice@example.org").unwrap().temp_auth_email,
        None,
        "no temp_auth_email attribute configured: mail goes to the id"
    );
    drop(users);
    let (status, seen) = visit(&gw, &gw.mint("portal", "bob@example.org")).await;
    assert_eq!(status, 200);
    assert_eq!(seen["headers"]["x-otpgate-groups"][0], "engineering");

    // The certificate is checked: without the CA the handshake, and so the sync, fails.
    let mut untrusted = gw.config().directory.unwrap();
    untrusted.ca.clear();
    let e = otpgate::directory::sync_once(&untrusted, 0)
        .await
        .unwrap_err();
    assert!(
        matches!(e, otpgate::directory::DirectoryError::Connect { .. }),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_with_a_groups_search_and_member_of_together() {
    let Some((ldap, ca_dir)) = tls_slapd(true).await else {
        return;
    };
    let up = Upstream::start().await;
    // Both styles at once: memberOf values count only for groups the groups search returns.
    ldap.modify(&format!(
        "dn: cn=outsiders,{people}\nchangetype: add\nobjectClass: groupOfNames\ncn: outsiders\nmember: uid=bob,{people}\n",
        people = crate::ldap::PEOPLE
    ));
    let directory = format!(
        "directory:
  url: {url}
  starttls: true
  ca_file: {ca}
  bind_dn: {reader}
  bind_password_file: {pw}
  users: {{ base: '{people}', id: mail, temp_auth_email: otherMailbox, member_of: memberOf }}
  groups: {{ base: '{groups}', filter: '(objectClass=groupOfNames)' }}
  refresh: 5m
",
        url = ldap.url(),
        ca = ca_dir.path().join("ldap-ca.pem").display(),
        reader = crate::ldap::READER_DN,
        pw = ldap.password_file().display(),
        people = crate::ldap::PEOPLE,
        groups = crate::ldap::GROUPS,
    );
    let gw = Gw::start_with(&config(&up, &directory, ""), CERTS).await;
    synced(&gw).await;
    assert_eq!(
        groups_of(&gw, "bob@example.org").unwrap(),
        ["engineering"],
        "cn=outsiders is outside the groups base"
    );
    assert_eq!(
        groups_of(&gw, "alice@example.org").unwrap(),
        ["ops", "admins", "engineering"]
    );

    // A wrong bind password is a failed sync, never an anonymous read.
    let mut wrong = gw.config().directory.unwrap();
    wrong.bind_password = Some(otpgate::config::Secret::new("not-the-password"));
    let e = otpgate::directory::sync_once(&wrong, 0).await.unwrap_err();
    assert!(
        matches!(e, otpgate::directory::DirectoryError::Bind { .. }),
        "{e}"
    );
    assert!(!e.to_string().contains("not-the-password"), "{e}");
}

// === The binary ===

const BIN: &str = env!("CARGO_BIN_EXE_otpgate");

/// `otpgate serve` as a process: its log lines (JSON) and admin address; killed when dropped.
struct Proc {
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
    admin: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Proc {
    async fn start(config: &Path) -> Self {
        let mut child = tokio::process::Command::new(BIN)
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .env("OTPGATE_LOG__FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        for r in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut l = BufReader::new(r).lines();
                while let Ok(Some(line)) = l.next_line().await {
                    let _ = tx.send(line);
                }
            });
        }
        let mut p = Self {
            child,
            lines,
            seen: Vec::new(),
            admin: String::new(),
        };
        let serving = p.wait_for("is serving").await;
        p.admin = serving["fields"]["admin"].as_str().unwrap().to_owned();
        p
    }

    /// The next log line whose message contains `needle`.
    async fn wait_for(&mut self, needle: &str) -> serde_json::Value {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let line = self
                    .lines
                    .recv()
                    .await
                    .unwrap_or_else(|| panic!("otpgate exited before logging {needle:?}"));
                self.seen.push(line.clone());
                let v: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| panic!("not a JSON line: {line}"));
                if v["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(needle))
                {
                    return v;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no log line {needle:?}; seen: {:#?}", self.seen))
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::Client::new()
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

fn otpgate(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `users list` row of `id`, split into its columns (two or more spaces apart).
fn row(listing: &str, id: &str) -> Vec<String> {
    let line = listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .unwrap_or_else(|| panic!("no row for {id}: {listing}"));
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_syncs_logs_counts_and_lists_users() {
    let Some(mut ldap) = Slapd::start(Options::default()).await else {
        return;
    };
    init();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("otpgate.yaml");
    std::fs::write(
        &cfg,
        format!(
            "version: 1
listen: {{ http: 127.0.0.1:0, admin: 127.0.0.1:0 }}
data_dir: data
users:
  - {{ id: alice@example.org, groups: [ops] }}
  - {{ id: zoe@corp.example, groups: [engineering] }}
  - {{ id: yann, temp_auth_email: yann@home.example }}
{}
apps:
  - name: app
    hosts: [app.test]
    upstream: builtin:echo
    policies:
      - {{ name: engineers, action: allow, include: [ {{ group: engineering }} ] }}
",
            ldap.directory_yaml("1s")
        ),
    )
    .unwrap();
    let mut p = Proc::start(&cfg).await;

    // One line per skipped entry, then a summary line per sync.
    let mut skipped = Vec::new();
    let done = loop {
        let v = p.wait_for("directory").await;
        match v["fields"]["message"].as_str().unwrap() {
            "directory entry skipped" => skipped.push((
                v["fields"]["dn"].as_str().unwrap().to_owned(),
                v["fields"]["reason"].as_str().unwrap().to_owned(),
            )),
            "directory sync finished" => break v,
            _ => {}
        }
    };
    assert_eq!(
        skipped,
        [
            (
                "uid=dave,ou=people,dc=example,dc=org".into(),
                "invalid_address".into()
            ),
            (
                "uid=erin,ou=people,dc=example,dc=org".into(),
                "missing_id".into()
            ),
            (
                "uid=grace,ou=people,dc=example,dc=org".into(),
                "invalid_address".into()
            ),
        ] as [(String, String); 3]
    );
    assert_eq!(done["fields"]["users"], 3);
    assert_eq!(done["fields"]["groups"], 2);
    assert_eq!(done["fields"]["skipped"], 3);
    let (status, _) = p.get("/readyz").await;
    assert_eq!(status, 200);
    let (_, m) = p.get("/metrics").await;
    for want in [
        "otpgate_directory_users 3\n",
        "otpgate_directory_groups 2\n",
        "otpgate_directory_skipped_entries{reason=\"invalid_address\"} 2\n",
        "otpgate_directory_skipped_entries{reason=\"missing_id\"} 1\n",
        "otpgate_directory_skipped_entries{reason=\"duplicate_id\"} 0\n",
        "otpgate_directory_syncs_total{result=\"success\"} ",
        "otpgate_directory_last_success_timestamp_seconds ",
        "otpgate_directory_sync_duration_seconds ",
    ] {
        assert!(m.contains(want), "{want} in {m}");
    }
    assert!(
        !m.contains("otpgate_directory_syncs_total{result=\"failure\"}"),
        "{m}"
    );

    // A password and a lock, as logins would leave them.
    let data = dir.path().join("data");
    rusqlite::Connection::open(data.join("otpgate.db"))
        .unwrap()
        .execute(
            "INSERT INTO passwords (email, hash, changed_ms) VALUES ('alice@example.org', '$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA', 0)",
            [],
        )
        .unwrap();
    let store = otpgate::store::Store::open_embedded(&data).unwrap();
    assert!(
        store
            .record_failure(
                "bob@example.org",
                1,
                otpgate::store::LockPolicy {
                    after: 1,
                    first: std::time::Duration::from_secs(3600),
                    longest: std::time::Duration::from_secs(3600),
                    // Locked until unlocked, whatever the clock of the command below says.
                    hard_cap: 1
                },
                true
            )
            .await
            .unwrap()
            .locked
    );
    drop(store);

    let c = cfg.to_str().unwrap();
    let (code, list, err) = otpgate(&["users", "list", "--config", c]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        list.lines().count(),
        5,
        "dave, erin and grace are not users: {list}"
    );
    assert_eq!(
        row(&list, "alice@example.org"),
        [
            "alice@example.org",
            "alice.home@mail.example",
            "ops,admins,engineering",
            "config+directory",
            "password"
        ]
    );
    assert_eq!(
        row(&list, "bob@example.org"),
        [
            "bob@example.org",
            "bob@example.org",
            "engineering",
            "directory",
            "no password",
            "locked"
        ],
        "no otherMailbox: the id receives temporary authentication mail"
    );
    assert_eq!(
        row(&list, "carol@example.org"),
        [
            "carol@example.org",
            "carol@example.org",
            "-",
            "directory",
            "no password"
        ]
    );
    assert_eq!(
        row(&list, "yann"),
        ["yann", "yann@home.example", "-", "config", "no password"]
    );
    assert_eq!(
        row(&list, "zoe@corp.example"),
        [
            "zoe@corp.example",
            "zoe@corp.example",
            "engineering",
            "config",
            "no password"
        ]
    );

    // A directory user is known to `users unlock`.
    let (code, out, err) = otpgate(&["users", "unlock", "bob@example.org", "--config", c]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, list, _) = otpgate(&["users", "list", "--config", c]);
    assert_eq!(row(&list, "bob@example.org").len(), 5, "{list}");

    // The directory goes down: a warning per failed sync, the snapshot serves, still ready.
    ldap.stop().await;
    let failed = p.wait_for("directory sync failed").await;
    assert_eq!(failed["level"], "WARN");
    assert_eq!(failed["fields"]["users"], 3);
    let (status, _) = p.get("/readyz").await;
    assert_eq!(status, 200);
    let (_, m) = p.get("/metrics").await;
    assert!(
        m.contains("otpgate_directory_syncs_total{result=\"failure\"} "),
        "{m}"
    );
    assert!(m.contains("otpgate_directory_users 3\n"), "{m}");
    let (_, list, _) = otpgate(&["users", "list", "--config", c]);
    assert_eq!(list.lines().count(), 5, "{list}");

    // Never a password in the logs.
    assert!(
        p.seen.iter().all(|l| !l.contains(READER_PW)),
        "{:#?}",
        p.seen
    );
}
