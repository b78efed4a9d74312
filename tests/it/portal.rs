//! The single sign-on portal end to end over HTTPS, with the PIN taken from a real SMTP server
//! (aiosmtpd): one login at the portal for app A, app B and C with no second login and no
//! second mail, the hand-off refused when replayed, the app's policy deciding whether a code
//! is mailed, and the portal's sign-out ending every app session (docs/security.md#44–#47).
//! The same setup serves the Chromium test in `browser.rs`'s neighbour `portal_browser`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::login::pin_of;
use crate::smtp::SmtpServer;

pub const ALICE: &str = "alice@corp.example";

/// A port that was free a moment ago: the portal's origin names the HTTPS listener's port, so
/// it is chosen before the gateway starts.
pub use crate::redis::free_port;

pub const CERTS: &[(&str, &[&str])] = &[("site", &["a.test", "b.test", "c.test", "auth.test"])];

/// Three apps and a portal on `https://auth.test:PORT`; `c` is open to engineering only.
pub fn config(port: u16, up: &Upstream, smtp: &SmtpServer) -> String {
    config_on(port, port, up, smtp, "")
}

/// [`config`] with the HTTPS listener on `https` (a replica behind a load balancer) and the
/// top-level keys `extra`.
pub fn config_on(port: u16, https: u16, up: &Upstream, smtp: &SmtpServer, extra: &str) -> String {
    format!(
        "version: 1
listen: {{ http: 127.0.0.1:0, https: 127.0.0.1:{https}, admin: 127.0.0.1:0 }}
tls: {{ certificates: [ {{ cert: site.pem, key: site-key.pem }} ] }}
{extra}
portal_url: https://auth.test:{port}
mail: {{ from: 'Gate <gate@corp.example>', transport: 'smtp://{smtp}?tls=none' }}
identity_providers:
  - {{ type: onetimepin }}
  - {{ type: onetimelink }}
users:
  - {{ id: {ALICE}, groups: [engineering] }}
  - {{ id: bob@corp.example, groups: [sales] }}
apps:
  - name: a
    hosts: [a.test]
    upstream: {up}
    policies: [ {{ name: staff, action: allow, include: [ {{ email_domain: corp.example }} ] }} ]
  - name: b
    hosts: [b.test]
    upstream: {up}
    login_methods: [onetimepin, onetimelink]
    policies: [ {{ name: staff, action: allow, include: [ {{ email_domain: corp.example }} ] }} ]
  - name: c
    hosts: [c.test]
    upstream: {up}
    policies: [ {{ name: eng, action: allow, include: [ {{ group: engineering }} ] }} ]
",
        up = up.url(),
        smtp = smtp.addr
    )
}

/// A browser-like client that keeps cookies per host and reads CSRF tokens.
pub struct Agent {
    client: reqwest::Client,
    pub port: u16,
    pub jar: HashMap<(String, String), String>,
    csrf: String,
}

pub struct Answer {
    pub status: u16,
    pub location: String,
    pub body: String,
}

impl Agent {
    pub fn new(gw: &Gw) -> Self {
        Self::with(gw.client(), gw.https().port())
    }

    fn with(client: reqwest::Client, port: u16) -> Self {
        Self {
            client,
            port,
            jar: HashMap::new(),
            csrf: String::new(),
        }
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.port)
    }

    async fn send(&mut self, host: &str, req: reqwest::RequestBuilder) -> Answer {
        let cookies: Vec<String> = self
            .jar
            .iter()
            .filter(|((h, _), _)| h == host)
            .map(|((_, n), v)| format!("{n}={v}"))
            .collect();
        let req = if cookies.is_empty() {
            req
        } else {
            req.header("cookie", cookies.join("; "))
        };
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let location = r
            .headers()
            .get("location")
            .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
        for v in r.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (name, value) = pair.split_once('=').unwrap();
            let key = (host.to_owned(), name.to_owned());
            if attrs.contains("Max-Age=0") {
                self.jar.remove(&key);
            } else {
                self.jar.insert(key, value.to_owned());
            }
        }
        let body = r.text().await.unwrap();
        if let Some(i) = body.find("name=\"csrf\" value=\"") {
            let rest = &body[i + 19..];
            self.csrf = rest[..rest.find('"').unwrap()].to_owned();
        }
        Answer {
            status,
            location,
            body,
        }
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Answer {
        let req = self.client.get(self.url(host, path));
        self.send(host, req).await
    }

    /// Follows redirects (each hop with the cookies of its own host) to the first answer that
    /// is not one; returns it and the URL it came from.
    pub async fn open(&mut self, url: &str) -> (String, Answer) {
        let mut url = url.to_owned();
        for _ in 0..10 {
            let u = url::Url::parse(&url).unwrap();
            let host = u.host_str().unwrap().to_owned();
            let mut path = u.path().to_owned();
            if let Some(q) = u.query() {
                path.push('?');
                path.push_str(q);
            }
            let a = self.get(&host, &path).await;
            if !(300..400).contains(&a.status) {
                return (url, a);
            }
            url = a.location.clone();
        }
        panic!("a redirect loop from {url}");
    }

    pub async fn post(&mut self, host: &str, path: &str, fields: &[(&str, &str)]) -> Answer {
        let csrf = self.csrf.clone();
        self.post_with(host, path, &csrf, fields).await
    }

    /// Submits the first form of `page` (a page of another tab: its own action and token).
    pub async fn submit(&mut self, host: &str, page: &Answer, fields: &[(&str, &str)]) -> Answer {
        let field = |body: &str, start: &str| {
            let rest = &body[body.find(start).unwrap() + start.len()..];
            rest[..rest.find('"').unwrap()].replace("&amp;", "&")
        };
        let action = field(&page.body, "action=\"");
        let csrf = field(&page.body, "name=\"csrf\" value=\"");
        self.post_with(host, &action, &csrf, fields).await
    }

    async fn post_with(
        &mut self,
        host: &str,
        path: &str,
        csrf: &str,
        fields: &[(&str, &str)],
    ) -> Answer {
        let mut form: Vec<(&str, &str)> = vec![("csrf", csrf)];
        form.extend_from_slice(fields);
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let req = self
            .client
            .post(self.url(host, path))
            .header("origin", self.url(host, ""))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        self.send(host, req).await
    }
}

pub async fn wait_for_mails(smtp: &SmtpServer, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while smtp.received().len() < n {
        assert!(Instant::now() < deadline, "no mail");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_44_one_portal_login_opens_every_app_and_the_sign_out_ends_them_all() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let port = free_port();
    let gw = Gw::start_with(&config(port, &up, &smtp), CERTS).await;
    let mut v = Agent::new(&gw);
    let portal = format!("https://auth.test:{port}");

    // App A sends the browser to the portal, which shows A's login form.
    let (at, page) = v.open(&v.url("a.test", "/docs?x=1")).await;
    assert!(
        at.starts_with(&format!("{portal}/.otpgate/login?app=a&state=")),
        "{at}"
    );
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Send me a code"), "{}", page.body);
    let sent = v
        .post("auth.test", "/.otpgate/login", &[("email", ALICE)])
        .await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    wait_for_mails(&smtp, 1).await;
    let pin = pin_of(&smtp.received()[0]);
    let done = v
        .post("auth.test", "/.otpgate/code", &[("code", &pin)])
        .await;
    assert_eq!(done.status, 303, "{}", done.body);
    let callback = done.location.clone();
    assert!(
        callback.starts_with(&format!("https://a.test:{port}/.otpgate/callback?code=")),
        "{callback}"
    );
    assert!(
        v.jar
            .contains_key(&("auth.test".into(), "__Host-otpgate-portal".into()))
    );
    let (at, page) = v.open(&callback).await;
    assert_eq!(
        at,
        v.url("a.test", "/docs?x=1"),
        "the code is gone from the address"
    );
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(ALICE), "{}", page.body);

    // The code works once.
    let path = &callback[callback.find("/.otpgate").unwrap()..];
    let replay = gw.client().get(v.url("a.test", path)).send().await.unwrap();
    assert_eq!(replay.status(), 400);

    // B and C need no second login and no second mail.
    for app in ["b", "c"] {
        let (at, page) = v.open(&v.url(&format!("{app}.test"), "/")).await;
        assert_eq!(at, v.url(&format!("{app}.test"), "/"));
        assert_eq!(page.status, 200, "{app}: {}", page.body);
    }
    assert_eq!(smtp.received().len(), 1);

    // The launcher lists the three apps.
    let launcher = v.get("auth.test", "/").await;
    for app in ["a", "b", "c"] {
        assert!(
            launcher
                .body
                .contains(&format!("{app}.test:{port}&#x2f;\">{app}</a>")),
            "{}",
            launcher.body
        );
    }

    // Signing out at the portal ends every app's session.
    let page = v.get("auth.test", "/.otpgate/logout").await;
    assert!(page.body.contains("Sign out of every app"), "{}", page.body);
    let out = v.post("auth.test", "/.otpgate/logout", &[]).await;
    assert_eq!(out.status, 200, "{}", out.body);
    for app in ["a", "b", "c"] {
        let r = v.get(&format!("{app}.test"), "/").await;
        assert_eq!(r.status, 302, "{app} still open");
    }
    assert!(
        !v.jar
            .contains_key(&("auth.test".into(), "__Host-otpgate-portal".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_46_the_apps_policy_decides_the_mail_and_a_refusal_is_a_page() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let port = free_port();
    let gw = Gw::start_with(&config(port, &up, &smtp), CERTS).await;
    let mut v = Agent::new(&gw);

    // Bob may not open C: asking for a code from C's login mails nothing (the same page as
    // for anyone), and the code page then fails like a wrong code.
    let (_, page) = v.open(&v.url("c.test", "/")).await;
    assert_eq!(page.status, 200);
    let sent = v
        .post(
            "auth.test",
            "/.otpgate/login",
            &[("email", "bob@corp.example")],
        )
        .await;
    assert_eq!(sent.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.received().len(), 0, "C's policy refuses bob: no mail");

    // From B's login he gets a code and a portal session.
    let (_, _) = v.open(&v.url("b.test", "/")).await;
    v.post(
        "auth.test",
        "/.otpgate/login",
        &[("email", "bob@corp.example")],
    )
    .await;
    wait_for_mails(&smtp, 1).await;
    let pin = pin_of(&smtp.received()[0]);
    let done = v
        .post("auth.test", "/.otpgate/code", &[("code", &pin)])
        .await;
    let (_, page) = v.open(&done.location).await;
    assert_eq!(page.status, 200);

    // C with that portal session: "no access" and a way out, never a loop.
    let (at, page) = v.open(&v.url("c.test", "/")).await;
    assert!(at.contains("/.otpgate/login?app=c"), "{at}");
    assert_eq!(page.status, 403);
    assert!(page.body.contains("That account does not have access."));
    assert!(page.body.contains("Use a different account"));
    let out = v
        .post(
            "auth.test",
            "/.otpgate/logout",
            &[("app", "c"), ("rd", &v.url("c.test", "/"))],
        )
        .await;
    assert_eq!(out.status, 303);
    let (_, page) = v.open(&out.location).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Send me a code"));
}

/// Two tabs, two apps, one browser: opening B's login while A's is under way ends neither.
/// The PIN typed in A's tab completes A's login and hands off to A; B's form is still good and
/// B, opened again, hands off at once. Hand-offs are counted per app and outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_log_in_to_two_apps_at_the_portal() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let port = free_port();
    let gw = Gw::start_with(&config(port, &up, &smtp), CERTS).await;
    let mut v = Agent::new(&gw);

    // Tab A asks for a code.
    let (_, page_a) = v.open(&v.url("a.test", "/docs")).await;
    assert_eq!(page_a.status, 200, "{}", page_a.body);
    let code_a = v.submit("auth.test", &page_a, &[("email", ALICE)]).await;
    assert_eq!(code_a.status, 200, "{}", code_a.body);
    wait_for_mails(&smtp, 1).await;
    // Tab B opens B's login at the portal in the meantime.
    let (_, page_b) = v.open(&v.url("b.test", "/wiki")).await;
    assert_eq!(page_b.status, 200, "{}", page_b.body);
    assert!(page_b.body.contains("Send me a code"), "{}", page_b.body);

    // The PIN in tab A completes A's login and hands off to A.
    let pin = pin_of(&smtp.received()[0]);
    let done = v.submit("auth.test", &code_a, &[("code", &pin)]).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert!(
        done.location
            .starts_with(&format!("https://a.test:{port}/.otpgate/callback?code=")),
        "{}",
        done.location
    );
    let (at, page) = v.open(&done.location).await;
    assert_eq!(at, v.url("a.test", "/docs"));
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(ALICE), "{}", page.body);

    // Tab B's form is still B's and still good (not "expired"; the code page answers, the
    // same for any address), and opened again, B finds the portal session and hands off at once.
    let code_b = v.submit("auth.test", &page_b, &[("email", ALICE)]).await;
    assert_eq!(code_b.status, 200, "{}", code_b.body);
    assert!(!code_b.body.contains("expired"), "{}", code_b.body);
    assert!(
        code_b.body.contains("/.otpgate/code?app=b&amp;state="),
        "{}",
        code_b.body
    );
    let (at, page) = v.open(&v.url("b.test", "/wiki")).await;
    assert_eq!(at, v.url("b.test", "/wiki"));
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(ALICE), "{}", page.body);

    // A spent code is refused, and the metrics say so.
    let path = &done.location[done.location.find("/.otpgate").unwrap()..];
    assert_eq!(v.get("a.test", path).await.status, 400);
    let m = gw.metrics().await;
    for line in [
        "otpgate_portal_handoffs_total{app=\"a\",outcome=\"issued\"}",
        "otpgate_portal_handoffs_total{app=\"a\",outcome=\"redeemed\"}",
        "otpgate_portal_handoffs_total{app=\"a\",outcome=\"refused\"}",
        "otpgate_portal_handoffs_total{app=\"b\",outcome=\"redeemed\"}",
        "# HELP otpgate_portal_handoffs_total ",
    ] {
        assert!(m.contains(line), "{line}\n{m}");
    }
}

/// A one-time link asked for on the portal names its app, so it logs in through the portal in
/// another browser too (no app cookie there yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailed_link_logs_in_through_the_portal_in_any_browser() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let port = free_port();
    let gw = Gw::start_with(&config(port, &up, &smtp), CERTS).await;
    let mut v = Agent::new(&gw);
    let (_, page) = v.open(&v.url("b.test", "/docs")).await;
    assert!(
        page.body.contains("Email me a sign-in link"),
        "{}",
        page.body
    );
    let sent = v
        .post(
            "auth.test",
            "/.otpgate/login",
            &[("email", ALICE), ("method", "link")],
        )
        .await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    wait_for_mails(&smtp, 1).await;
    let link =
        crate::zscaler_browser::link_of(&smtp.received()[0], &format!("https://auth.test:{port}"));
    assert!(link.ends_with("&app=b"), "{link}");
    let mut other = Agent::new(&gw);
    let path = link[link.find("/.otpgate").unwrap()..].to_owned();
    let confirm = other.get("auth.test", &path).await;
    assert_eq!(confirm.status, 200);
    let t = path
        .split("t=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let done = other
        .post("auth.test", "/.otpgate/link", &[("t", &t)])
        .await;
    assert_eq!(done.status, 303, "{}", done.body);
    let (at, page) = other.open(&done.location).await;
    assert_eq!(at, other.url("b.test", "/docs"));
    assert_eq!(page.status, 200);
}

/// The same with the binary: outbox mail, the hand-off single use and bound to its app, the
/// portal's sign-out ending the apps' sessions, and `apps list`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_44_the_binary_hands_off_once_per_app_and_signs_out_the_family() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    ca.write_leaf(dir.path(), "site", CERTS[0].1);
    let port = free_port();
    let cfg = dir.path().join("otpgate.yaml");
    std::fs::write(
        &cfg,
        format!(
            "version: 1
listen: {{ http: 127.0.0.1:0, https: 127.0.0.1:{port}, admin: 127.0.0.1:0 }}
tls: {{ certificates: [ {{ cert: site.pem, key: site-key.pem }} ] }}
portal_url: https://auth.test:{port}
mail: {{ from: 'Gate <gate@corp.example>', transport: outbox }}
apps:
  - name: a
    hosts: [a.test]
    upstream: builtin:echo
    policies: [ {{ name: staff, action: allow, include: [ {{ email_domain: corp.example }} ] }} ]
  - name: b
    hosts: [b.test]
    upstream: builtin:echo
    launcher: false
    policies: [ {{ name: staff, action: allow, include: [ {{ email_domain: corp.example }} ] }} ]
"
        ),
    )
    .unwrap();
    let list = std::process::Command::new(env!("CARGO_BIN_EXE_otpgate"))
        .args(["apps", "list", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(
        list.contains(&format!(
            "a  hosts a.test  origin https://a.test:{port}  audience otpgate:app:a  launcher yes"
        )) && list.contains("launcher no")
            && list.contains(&format!("portal https://auth.test:{port}")),
        "{list}"
    );
    let https = port.to_string();
    let _p = crate::cli::spawn(
        &cfg,
        &[("OTPGATE_LISTEN__HTTPS", &format!("127.0.0.1:{https}"))],
    )
    .await;
    let mut v = Agent::with(client_with(&[ca.der()], Versions::Http1), port);

    let (at, _) = v.open(&v.url("a.test", "/x")).await;
    assert!(at.contains("/.otpgate/login?app=a"), "{at}");
    v.post("auth.test", "/.otpgate/login", &[("email", ALICE)])
        .await;
    let mut seen = std::collections::HashSet::new();
    let mail =
        crate::cli::outbox_mail(&dir.path().join("data/outbox"), ALICE, "code", &mut seen).await;
    let done = v
        .post("auth.test", "/.otpgate/code", &[("code", &pin_of(&mail))])
        .await;
    assert_eq!(done.status, 303, "{}", done.body);
    let path = done.location[done.location.find("/.otpgate").unwrap()..].to_owned();
    // Bound to A: B refuses it (and that does not use it up).
    assert_eq!(v.get("b.test", &path).await.status, 400);
    let r = v.get("a.test", &path).await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location, v.url("a.test", "/x"));
    // Single use.
    assert_eq!(v.get("a.test", &path).await.status, 400);
    let (_, page) = v.open(&v.url("b.test", "/")).await;
    assert_eq!(page.status, 200, "B without a second login");

    v.get("auth.test", "/.otpgate/logout").await;
    assert_eq!(
        v.post("auth.test", "/.otpgate/logout", &[]).await.status,
        200
    );
    for app in ["a.test", "b.test"] {
        assert_eq!(v.get(app, "/").await.status, 302, "{app}");
    }
}
