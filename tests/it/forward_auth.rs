//! Forward auth with real front proxies (docs/product.md#s4): nginx with `auth_request` and
//! Caddy with `forward_auth`, each started from the configuration the README shows, in front of
//! the harness's upstream, with otpgate as their login service. The whole PIN login through
//! nginx in headless Chromium, the same by hand through Caddy; the identity headers upstream,
//! logout, a blocked person, `rd` validation, and client-sent identity and description headers
//! that never reach the upstream nor change a decision (docs/security.md#34).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::browser::Browser;
use crate::front_proxy::{EXAMPLES, FrontProxy, free_port};
use crate::harness::*;
use crate::login::{Page, Visitor, pin_of};
use crate::smtp::ReceivedMail;

/// One app behind the front proxy: `/public/` for all, the rest for staff of corp.example
/// except Mallory.
/// Sessions idle out after 10 s, so they are refreshed after 1 s (and the refresh can be seen).
fn otpgate_yaml(front: u16) -> String {
    format!(
        "version: 1
listen: {{ http: 127.0.0.1:0, admin: 127.0.0.1:0 }}
trusted_proxies: [127.0.0.1/32]
session: {{ duration: 1h, idle_timeout: 10s }}
users:
  - {{ id: alice@corp.example, groups: [engineering] }}
apps:
  - name: app
    mode: forward_auth
    hosts: [app.example.test]
    public_url: https://app.example.test:{front}
    policies:
      - {{ name: public, action: bypass, paths: [/public/] }}
      - {{ name: blocked, action: block, include: [ {{ email: mallory@corp.example }} ] }}
      - {{ name: staff, action: allow, include: [ {{ email_domain: corp.example }} ] }}
"
    )
}

#[derive(Clone, Copy)]
enum Kind {
    Nginx,
    Caddy,
}

/// The upstream, otpgate, and the front proxy before both.
struct Site {
    up: Upstream,
    gw: Gw,
    front: FrontProxy,
    base: String,
    seen: HashSet<PathBuf>,
}

impl Site {
    async fn start(kind: Kind) -> Option<Self> {
        let up = Upstream::start().await;
        let port = free_port();
        let gw = Gw::start(&otpgate_yaml(port)).await;
        let (otp, app) = (gw.http().port(), up.addr.port());
        let leaf = gw.ca.leaf(&["app.example.test"]);
        let front = match kind {
            Kind::Nginx => FrontProxy::nginx(port, otp, app, &leaf)?,
            Kind::Caddy => FrontProxy::caddy(port, otp, app, &leaf)?,
        };
        Some(Self {
            up,
            gw,
            front,
            base: format!("https://app.example.test:{port}"),
            seen: HashSet::new(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A visitor of the app through the front proxy, with a cookie jar; no redirects followed.
    fn visitor(&self) -> Visitor {
        Visitor {
            client: self.gw.client(),
            base: self.base.clone(),
            jar: HashMap::new(),
            csrf: String::new(),
            from: None,
        }
    }

    /// `GET path` with `headers`, sent by a client that follows no redirects.
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Page {
        let mut req = self.gw.client().get(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        Page {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.text().await.unwrap(),
        }
    }

    /// The PIN of the next unseen development-outbox mail to `to`.
    async fn pin_for(&mut self, to: &str) -> String {
        let outbox = self.gw.config_path.parent().unwrap().join("data/outbox");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(m) = new_mails(&outbox, &mut self.seen)
                .into_iter()
                .find(|m| m.recipients().iter().any(|r| r == to))
            {
                return pin_of(&m);
            }
            assert!(tokio::time::Instant::now() < deadline, "no mail to {to}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn new_mails(outbox: &Path, seen: &mut HashSet<PathBuf>) -> Vec<ReceivedMail> {
    let Ok(entries) = std::fs::read_dir(outbox) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml") && seen.insert(p.clone()))
        .map(|p| ReceivedMail::parse(std::fs::read(&p).unwrap()))
        .collect()
}

/// The identity headers as the upstream received them (the harness's upstream echoes every
/// header as a list of values), including any spelling a client could have slipped through.
fn identity_upstream(page: &Page) -> serde_json::Map<String, serde_json::Value> {
    assert_eq!(page.status, 200, "{}", page.body);
    let v: serde_json::Value = serde_json::from_str(&page.body).unwrap();
    v["headers"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.replace('_', "-").starts_with("x-otpgate"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The identity assertions the upstream received, in any spelling of the header.
fn assertions_upstream(page: &Page) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&page.body).unwrap();
    v["headers"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.replace('_', "-") == "otpgate-jwt-assertion")
        .flat_map(|(_, v)| v.as_array().unwrap().clone())
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// What a client sends to pass as someone else.
const SPOOFS: &[(&str, &str)] = &[
    ("X-Otpgate-Email", "ceo@corp.example"),
    ("x-otpgate-user", "ceo"),
    ("X-Otpgate-Groups", "admins"),
    ("X-Otpgate_Email", "ceo@corp.example"),
    ("Otpgate-Jwt-Assertion", "forged.by.client"),
    ("Otpgate_Jwt_Assertion", "forged.by.client"),
];

/// Paths that could mean two things (docs/security.md#35), spelt so an HTTP client sends them
/// as they are (it would resolve `%2e%2e` itself; the stage tests cover that one).
const AMBIGUOUS: &[&str] = &["/public/..%2Fdocs", "/public//docs", "/public/%5C..%5Cdocs"];

/// Asserts the upstream saw exactly Alice's identity and nothing the client made up.
fn assert_alice_upstream(page: &Page) {
    let id = identity_upstream(page);
    assert_eq!(
        serde_json::Value::Object(id),
        serde_json::json!({
            "x-otpgate-email": ["alice@corp.example"],
            "x-otpgate-user": ["alice@corp.example"],
            "x-otpgate-groups": ["engineering"],
        })
    );
    // Only otpgate's own assertion, copied by the front proxy from the 200 (docs/product.md#s4).
    let tokens = assertions_upstream(page);
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    let payload = tokens[0].split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], "alice@corp.example", "{claims}");
    assert_eq!(claims["aud"], "otpgate:app:app", "{claims}");
}

/// The whole PIN login through nginx in a real browser: the login page, the code from the
/// outbox, the app with Alice's identity headers, a foreign `rd` refused, logout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_front_pin_login_in_a_browser() {
    let Some(mut site) = Site::start(Kind::Nginx).await else {
        return;
    };
    let Some(mut b) = Browser::start("forward_auth_nginx").await else {
        return;
    };
    let start = site.url("/docs/page?x=1");
    b.client.goto(&start).await.unwrap();
    let at = b.client.current_url().await.unwrap();
    assert_eq!(at.path(), "/.otpgate/login", "{}", site.front.logs());
    assert_eq!(at.query_pairs().find(|(k, _)| k == "rd").unwrap().1, start);
    b.shot("login").await;
    b.fill_and_submit("input[name=email]", "alice@corp.example")
        .await;
    let text = b.text().await;
    assert!(text.contains("A code has been emailed to you"), "{text}");
    let pin = site.pin_for("alice@corp.example").await;
    b.fill_and_submit("input[name=code]", &pin).await;
    assert_eq!(b.client.current_url().await.unwrap().as_str(), start);
    let echoed: serde_json::Value = serde_json::from_str(&b.text().await).unwrap();
    assert_eq!(echoed["path"], "/docs/page");
    assert_eq!(
        echoed["headers"]["x-otpgate-email"][0],
        "alice@corp.example"
    );
    assert_eq!(echoed["headers"]["x-otpgate-groups"][0], "engineering");
    b.shot("app").await;

    // docs/security.md#1: a logged-in visitor of the login page goes to a validated target only.
    b.client
        .goto(&site.url("/.otpgate/login?rd=https%3A%2F%2Fevil.example%2F"))
        .await
        .unwrap();
    assert_eq!(
        b.client.current_url().await.unwrap().as_str(),
        site.url("/")
    );

    b.client.goto(&site.url("/.otpgate/logout")).await.unwrap();
    b.click("button[type=submit]").await;
    assert!(b.text().await.contains("You are signed out"));
    b.shot("signed-out").await;
    b.client.goto(&start).await.unwrap();
    assert_eq!(
        b.client.current_url().await.unwrap().path(),
        "/.otpgate/login",
        "the session is gone"
    );
    b.close().await;
}

/// Through nginx: identity headers upstream and no client-made ones, 403 for a blocked person,
/// the login redirect with `rd`, a refreshed cookie, and requests that must not pass.
#[tokio::test]
async fn nginx_front_forwards_identity_and_refuses_what_it_must() {
    let Some(site) = Site::start(Kind::Nginx).await else {
        return;
    };
    let alice = site.gw.mint("app", "alice@corp.example");
    let mut with_alice = vec![("cookie", alice.as_str())];
    with_alice.extend_from_slice(SPOOFS);
    let page = site.get("/docs/a?x=1", &with_alice).await;
    assert_alice_upstream(&page);
    // A bypass sends no identity; what the client sent is gone all the same.
    let page = site.get("/public/x", SPOOFS).await;
    assert!(identity_upstream(&page).is_empty(), "{}", page.body);
    assert!(assertions_upstream(&page).is_empty(), "{}", page.body);

    let hits = site.up.hits();
    let mallory = site.gw.mint("app", "mallory@corp.example");
    assert_eq!(site.get("/docs", &[("cookie", &mallory)]).await.status, 403);
    let p = site.get("/docs/a?x=1", &[]).await;
    assert_eq!(p.status, 302);
    assert_eq!(
        p.location(),
        site.url("/.otpgate/login?rd=https%3A%2F%2Fapp.example.test%3A")
            + &format!("{}%2Fdocs%2Fa%3Fx%3D1", site.front.port)
    );
    // API calls and subresources keep the 401: a script is not sent to a form.
    let api = site.get("/docs", &[("accept", "application/json")]).await;
    assert_eq!(api.status, 401);
    assert_eq!(
        site.get("/favicon.ico", &[("sec-fetch-mode", "no-cors")])
            .await
            .status,
        401
    );
    // The endpoint is nginx's, not the visitors'.
    let auth = site.get("/.otpgate/auth", &[("cookie", &alice)]).await;
    assert_eq!(auth.status, 404);
    // A client's own description of the request makes the description contradict itself, and
    // an ambiguous path cannot be judged: otpgate answers 400, which auth_request turns into
    // 500. Either way nothing reaches the upstream.
    let spoofed_uri = [("x-forwarded-uri", "/public/x")];
    assert_eq!(site.get("/docs", &spoofed_uri).await.status, 500);
    for path in AMBIGUOUS {
        let r = site.get(path, &[("cookie", &alice)]).await;
        assert_eq!(r.status, 500, "{path}");
    }
    assert_eq!(site.up.hits(), hits, "nothing was forwarded");

    // docs/security.md#30: the refreshed cookie reaches the browser.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let page = site.get("/docs", &[("cookie", &alice)]).await;
    let set = page.headers.get("set-cookie").map(|v| v.to_str().unwrap());
    assert!(
        set.is_some_and(|c| c.starts_with("__Host-otpgate=v1.")),
        "{set:?}"
    );
}

/// Through Caddy, by hand: the login redirect, the PIN login, the identity headers and nothing
/// a client made up, `rd` validation, a blocked person, a refreshed cookie, logout.
#[tokio::test]
async fn caddy_front_pin_login_identity_and_logout() {
    let Some(mut site) = Site::start(Kind::Caddy).await else {
        return;
    };
    let p = site.get("/docs/a?x=1", &[]).await;
    assert_eq!(p.status, 302, "{}", site.front.logs());
    let login = p.location().to_owned();
    assert!(
        login.starts_with(&site.url("/.otpgate/login?rd=https%3A%2F%2Fapp.example.test%3A")),
        "{login}"
    );
    let api = site.get("/docs", &[("accept", "application/json")]).await;
    assert_eq!(api.status, 401);
    assert!(api.body.contains("\"login_required\""), "{}", api.body);

    let mut v = site.visitor();
    assert_eq!(
        v.get(login.strip_prefix(&site.base).unwrap()).await.status,
        200
    );
    let p = v
        .post("/.otpgate/login", &[("email", "alice@corp.example")])
        .await;
    assert!(
        p.body.contains("A code has been emailed to you"),
        "{}",
        p.body
    );
    let pin = site.pin_for("alice@corp.example").await;
    let p = v.enter(&pin).await;
    assert_eq!(p.status, 303);
    assert_eq!(p.location(), site.url("/docs/a?x=1"));

    let mut spoofed = v.client.get(site.url("/docs/a?x=1"));
    for (k, val) in SPOOFS {
        spoofed = spoofed.header(*k, *val);
    }
    assert_alice_upstream(&v.send(spoofed).await);
    // docs/security.md#1: a foreign target sends the logged-in visitor to the app's root.
    let p = v
        .get("/.otpgate/login?rd=https%3A%2F%2Fevil.example%2F")
        .await;
    assert_eq!(p.location(), site.url("/"));

    let hits = site.up.hits();
    let mallory = site.gw.mint("app", "mallory@corp.example");
    assert_eq!(site.get("/docs", &[("cookie", &mallory)]).await.status, 403);
    // Caddy hands otpgate's refusals to the client as they are: 400 for a description the
    // client tried to add to, or a path that could mean two things; 404 for the endpoint.
    let cookie = format!("__Host-otpgate={}", v.jar["__Host-otpgate"]);
    let spoofed_url = [("cookie", cookie.as_str()), ("x-original-url", "/public/x")];
    assert_eq!(site.get("/docs", &spoofed_url).await.status, 400);
    for path in AMBIGUOUS {
        let r = site.get(path, &[("cookie", &cookie)]).await;
        assert_eq!(r.status, 400, "{path}");
    }
    assert_eq!(
        site.get("/.otpgate/auth", &[("cookie", &cookie)])
            .await
            .status,
        404
    );
    assert_eq!(site.up.hits(), hits, "nothing was forwarded");

    // docs/security.md#30: the refreshed cookie reaches the browser.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = v.jar["__Host-otpgate"].clone();
    assert_eq!(v.get("/docs").await.status, 200);
    assert_ne!(v.jar["__Host-otpgate"], before, "a refreshed cookie");

    assert_eq!(v.get("/.otpgate/logout").await.status, 200);
    assert_eq!(v.post("/.otpgate/logout", &[]).await.status, 200);
    let p = site
        .get("/docs", &[("cookie", &format!("__Host-otpgate={before}"))])
        .await;
    assert_eq!(p.status, 302, "the session is gone");
}

/// The example otpgate config beside the front-proxy configs is valid, and `check-config`
/// shows each app's mode; the mode's rules are enforced with the key path.
#[test]
fn forward_auth_configs_are_checked() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_otpgate"))
        .args(["check-config", "--config"])
        .arg(Path::new(EXAMPLES).join("otpgate.yaml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("  app: forward_auth"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let check = |trusted: &str, app: &str| -> Vec<String> {
        let yaml = format!(
            "version: 1\nlisten: {{ http: 127.0.0.1:0 }}\ntrusted_proxies: {trusted}\napps:\n  - name: a\n    hosts: [a.test]\n{app}    policies: [ {{ name: p, action: bypass }} ]\n"
        );
        match otpgate::config::load_str(
            &yaml,
            &dir.path().join("c.yaml"),
            Vec::<(String, String)>::new(),
        ) {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    };
    let ok = "    mode: forward_auth\n    public_url: https://a.test\n";
    assert_eq!(check("[10.0.0.1]", ok), Vec::<String>::new());
    assert_eq!(
        check("[]", "    upstream: builtin:echo\n"),
        Vec::<String>::new()
    );
    for (trusted, app, problem) in [
        (
            "[]",
            ok,
            "apps[0].mode: forward_auth needs the front proxy's address in trusted_proxies",
        ),
        (
            "[10.0.0.1]",
            "    mode: forward_auth\n",
            "apps[0].public_url: required with mode: forward_auth",
        ),
        (
            "[10.0.0.1]",
            "    mode: forward_auth\n    public_url: https://a.test\n    upstream: builtin:echo\n",
            "apps[0].upstream: not used with mode: forward_auth",
        ),
        ("[]", "", "apps[0].upstream: required"),
        (
            "[]",
            "    mode: proxied\n    upstream: builtin:echo\n",
            "apps[0].mode: unknown mode \"proxied\"",
        ),
    ] {
        let errors = check(trusted, app);
        assert!(
            errors.iter().any(|e| e.starts_with(problem)),
            "{problem}: {errors:?}"
        );
    }
}

/// The README shows the configurations the tests run, as they are.
#[test]
fn the_readme_shows_the_tested_configs() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for f in ["otpgate.yaml", "nginx.conf", "Caddyfile", "traefik.yml"] {
        let text = std::fs::read_to_string(Path::new(EXAMPLES).join(f)).unwrap();
        assert!(
            readme.contains(text.trim_end()),
            "README.md does not show config/examples/forward-auth/{f} as it is"
        );
    }
}
