//! Zscaler's flows against a real SMTP server: the one-time link, the temporary password with
//! its forced password change, later password logins, and the operator's "Send Authentication
//! Email" through the admin API. One test per requirement docs/security.md#19–#27, named after it,
//! plus the enumeration (10) and generic-failure (11) checks of these flows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use otpgate::clock::ManualClock;

use crate::harness::*;
use crate::login::{Page, Visitor, events};
use crate::smtp::{ReceivedMail, SmtpServer};
use crate::timing::{self, Case};

pub const CERTS: &[(&str, &[&str])] = &[("site", &["app.test", "alias.test", "wiki.test"])];
const ADMIN_TOKEN: &str = "an-admin-token-for-tests-0123456789";
const NO_ACCESS: &str = "That account does not have access.";
pub const GOOD_PASSWORD: &str = "correct horse battery staple";

/// One app offering all three methods; alice has a `temp_auth_email`, bravo is blocked.
pub fn config(up: &Upstream, smtp: &SmtpServer, extra: &str) -> String {
    format!(
        "version: 1
{LISTEN_ALL}
tls: {{ certificates: [ {{ cert: site.pem, key: site-key.pem }} ] }}
admin: {{ token: {ADMIN_TOKEN} }}
mail: {{ from: 'Gate <gate@corp.example>', transport: 'smtp://{smtp}?tls=none' }}
identity_providers:
  - {{ type: onetimepin }}
  - {{ type: onetimelink }}
  - {{ type: onetimetoken }}
users:
  - {{ id: alice@corp.example, temp_auth_email: alice.home@mail.example, groups: [engineering] }}
  - {{ id: bravo@corp.example, groups: [banned] }}
  - {{ id: carol@corp.example, groups: [engineering] }}
{extra}
apps:
  - name: app
    hosts: [app.test, alias.test]
    upstream: {up}
    login_methods: [onetimepin, onetimelink, onetimetoken]
    policies:
      - {{ name: no-banned, action: block, include: [ {{ group: banned }} ] }}
      - {{ name: staff, action: allow, include: [ {{ email_domain: corp.example }} ] }}
",
        up = up.url(),
        smtp = smtp.addr
    )
}

pub async fn setup(extra: &str) -> Option<(SmtpServer, Upstream, Gw)> {
    let smtp = SmtpServer::start().await?;
    let up = Upstream::start().await;
    let gw = Gw::start_with(&config(&up, &smtp, extra), CERTS).await;
    Some((smtp, up, gw))
}

async fn setup_clock(extra: &str) -> Option<(SmtpServer, Upstream, Gw, ManualClock)> {
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

/// Opens the login page for `/docs?x=1` and presses the button of `method` for `email`.
pub async fn ask(v: &mut Visitor, method: &str, email: &str) -> Page {
    let p = v.get("/.otpgate/login?rd=%2Fdocs%3Fx%3D1").await;
    assert_eq!(p.status, 200);
    v.post("/.otpgate/login", &[("email", email), ("method", method)])
        .await
}

/// The password form of the login page.
pub async fn password_login(v: &mut Visitor, email: &str, password: &str) -> Page {
    if v.csrf.is_empty() || !v.jar.keys().any(|k| k.ends_with("otpgate-login")) {
        v.get("/.otpgate/login?rd=%2Fdocs%3Fx%3D1").await;
    }
    v.post(
        "/.otpgate/login",
        &[
            ("method", "password"),
            ("email", email),
            ("password", password),
        ],
    )
    .await
}

/// The link in a mail: the line that is only the link.
fn link_of(mail: &ReceivedMail) -> String {
    mail.text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("https://") && l.contains("/.otpgate/link?t="))
        .expect("a link line")
        .to_owned()
}

/// The temporary password in a mail: the line of four dash-separated groups.
pub fn temp_of(mail: &ReceivedMail) -> String {
    mail.text
        .lines()
        .map(str::trim)
        .find(|l| {
            l.len() == 19
                && l.split('-').count() == 4
                && l.split('-').all(|g| {
                    g.len() == 4
                        && g.bytes()
                            .all(|b| b"abcdefghijkmnpqrstuvwxyz23456789".contains(&b))
                })
        })
        .expect("a temporary-password line")
        .to_owned()
}

/// The path and query of a link on this gateway.
fn local(v: &Visitor, url: &str) -> String {
    url.replacen(&v.base, "", 1)
}

/// Mails to `to` so far.
pub fn mails_to(smtp: &SmtpServer, to: &str) -> Vec<ReceivedMail> {
    smtp.received()
        .into_iter()
        .filter(|m| m.recipients().iter().any(|r| r == to))
        .collect()
}

/// Waits for a mail to `to` that is not in `seen` (maildir listings are not in time order),
/// adds it there and returns it.
pub async fn next_mail(smtp: &SmtpServer, to: &str, seen: &mut Vec<Vec<u8>>) -> ReceivedMail {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(m) = mails_to(smtp, to)
            .into_iter()
            .find(|m| !seen.contains(&m.raw))
        {
            seen.push(m.raw.clone());
            return m;
        }
        assert!(Instant::now() < deadline, "no new mail to {to}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first mail to `to`.
pub async fn first_mail(smtp: &SmtpServer, to: &str) -> ReceivedMail {
    next_mail(smtp, to, &mut Vec::new()).await
}

/// A page as compared across addresses: status, headers without `date`, and the body without
/// the address and the per-transaction CSRF token.
pub fn normalised(p: &Page, email: &str) -> (u16, Vec<(String, String)>, String) {
    let mut h: Vec<(String, String)> = p
        .headers
        .iter()
        .filter(|(k, _)| k.as_str() != "date")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    h.sort();
    let body = p.body.replace(email, "<email>");
    let body = match body.find("name=\"csrf\" value=\"") {
        Some(i) => {
            let end = body[i + 19..].find('"').unwrap() + i + 19;
            format!("{}{}", &body[..i], &body[end..])
        }
        None => body,
    };
    (p.status, h, body)
}

/// Everything in the data folder, as bytes (to check that no secret is stored in clear).
fn data_bytes(gw: &Gw) -> Vec<u8> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(&gw.config().data_dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            out.extend(std::fs::read(&p).unwrap());
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// A temporary password for `email` (mailed to `to`), signed in with, and a new password
/// chosen: the visitor ends with a session.
pub async fn set_password(
    gw: &Gw,
    smtp: &SmtpServer,
    email: &str,
    to: &str,
    password: &str,
) -> Visitor {
    let mut seen: Vec<Vec<u8>> = mails_to(smtp, to).into_iter().map(|m| m.raw).collect();
    let mut v = Visitor::new(gw);
    let p = ask(&mut v, "token", email).await;
    assert!(p.body.contains("An email has been sent to you"));
    let temp = temp_of(&next_mail(smtp, to, &mut seen).await);
    let p = v
        .post(
            "/.otpgate/login",
            &[
                ("method", "password"),
                ("email", email),
                ("password", &temp),
            ],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert!(p.location().ends_with("/.otpgate/password"));
    let p = v.get("/.otpgate/password").await;
    assert_eq!(p.status, 200);
    let p = v
        .post(
            "/.otpgate/password",
            &[("password", password), ("confirm", password)],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_19_links_are_random_single_use_bound_and_expire_after_24_hours() {
    let Some((smtp, _up, gw, clock)) = setup_clock("").await else {
        return;
    };
    let port = gw.https().port();
    let mut v = Visitor::new(&gw);
    let p = ask(&mut v, "link", "Alice@Corp.Example").await;
    assert_eq!(p.status, 200);
    assert!(
        p.body.contains("An email has been sent to you"),
        "{}",
        p.body
    );

    // docs/product.md#s5: links go to the user's temp_auth_email.
    let mail = first_mail(&smtp, "alice.home@mail.example").await;
    assert!(mail.subject.contains("app"), "{}", mail.subject);
    let link = link_of(&mail);
    assert!(
        mail.text.lines().any(|l| l == link),
        "the link stands alone on its line"
    );
    let token = link.split("t=").nth(1).unwrap();
    let secret = token.split_once('.').unwrap().1;
    assert!(
        secret.len() >= 22,
        "at least 128 bits in base64url: {secret}"
    );
    assert!(
        !contains(&data_bytes(&gw), secret),
        "stored as a digest only"
    );

    // Another browser (the mail client's) opens it: a confirmation page, then a session for
    // the address the link was made for, on the target the login started from.
    let mut w = Visitor::new(&gw);
    let p = w.get(&local(&w, &link)).await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("alice@corp.example") && p.body.contains("Sign in"));
    let p = w.post("/.otpgate/link", &[("t", token)]).await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(p.location(), format!("https://app.test:{port}/docs?x=1"));
    let p = w.get("/docs?x=1").await;
    assert_eq!(p.status, 200);
    let seen: serde_json::Value = serde_json::from_str(&p.body).unwrap();
    assert_eq!(seen["headers"]["x-otpgate-email"][0], "alice@corp.example");

    // Single use: the page says so and a second post gets nothing.
    let mut x = Visitor::new(&gw);
    let p = x.get(&local(&x, &link)).await;
    assert_eq!(p.error().as_deref(), Some(NO_ACCESS));
    let p = x.post("/.otpgate/link", &[("t", token)]).await;
    assert_eq!(p.error().as_deref(), Some(NO_ACCESS));
    assert!(!x.jar.contains_key("__Host-otpgate"));

    // 24 hours: a link works until then and not after.
    let mut seen = Vec::new();
    let mut v = Visitor::new(&gw);
    ask(&mut v, "link", "carol@corp.example").await;
    let young = link_of(&next_mail(&smtp, "carol@corp.example", &mut seen).await);
    clock.advance(Duration::from_secs(24 * 3600 - 1));
    let mut y = Visitor::new(&gw);
    let p = y.get(&local(&y, &young)).await;
    assert!(p.body.contains("Sign in"), "{}", p.body);
    let t = young.split("t=").nth(1).unwrap().to_owned();
    assert_eq!(y.post("/.otpgate/link", &[("t", &t)]).await.status, 303);

    let mut v = Visitor::new(&gw);
    ask(&mut v, "link", "carol@corp.example").await;
    let old = link_of(&next_mail(&smtp, "carol@corp.example", &mut seen).await);
    clock.advance(Duration::from_secs(24 * 3600 + 1));
    let mut z = Visitor::new(&gw);
    let p = z.get(&local(&z, &old)).await;
    assert_eq!(p.error().as_deref(), Some(NO_ACCESS), "expired");
    let t = old.split("t=").nth(1).unwrap().to_owned();
    let p = z.post("/.otpgate/link", &[("t", &t)]).await;
    assert_eq!(p.error().as_deref(), Some(NO_ACCESS));
    let audit = std::fs::read_to_string(gw.config().data_dir.join("audit.log")).unwrap();
    assert!(!audit.contains(secret), "never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_20_get_and_head_never_use_a_link_or_create_a_session() {
    let Some((smtp, _up, gw)) = setup("").await else {
        return;
    };
    let mut v = Visitor::new(&gw);
    ask(&mut v, "link", "carol@corp.example").await;
    let link = link_of(&first_mail(&smtp, "carol@corp.example").await);
    let token = link.split("t=").nth(1).unwrap().to_owned();
    let url = link.clone();
    let client = gw.client();
    for _ in 0..3 {
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()
                .get_all("set-cookie")
                .iter()
                .all(|c| !c.to_str().unwrap().starts_with("__Host-otpgate=")),
            "no session from a GET"
        );
        let r = client.head(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // A post without the landing page's transaction and CSRF token does nothing...
    let mut m = Visitor::new(&gw);
    let p = m.post("/.otpgate/link", &[("t", &token)]).await;
    assert_eq!(p.error().as_deref(), Some(NO_ACCESS));
    // ... nor one from a foreign origin ...
    let mut w = Visitor::new(&gw);
    w.get(&local(&w, &link)).await;
    let body = format!("csrf={}&t={token}", w.csrf);
    let req = w
        .client
        .post(format!("{}/.otpgate/link", w.base))
        .header("origin", "https://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    let p = w.send(req).await;
    assert_eq!(p.error().as_deref(), Some(NO_ACCESS));
    assert!(!w.jar.contains_key("__Host-otpgate"));
    // ... and the link still works from its page.
    let p = w.post("/.otpgate/link", &[("t", &token)]).await;
    assert_eq!(p.status, 303);
    assert!(w.jar.contains_key("__Host-otpgate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_21_links_come_from_the_public_origin_and_leave_no_trace() {
    let Some((smtp, _up, gw)) = setup("").await else {
        return;
    };
    let port = gw.https().port();
    // Asked through the app's other host name, with forwarded-host headers from a client that
    // is not a trusted proxy: the link still names the app's public origin.
    let mut v = Visitor::new(&gw);
    v.base = format!("https://alias.test:{port}");
    v.get("/.otpgate/login").await;
    let body = format!("csrf={}&email=carol%40corp.example&method=link", v.csrf);
    let req = v
        .client
        .post(format!("{}/.otpgate/login", v.base))
        .header("origin", format!("https://app.test:{port}"))
        .header("x-forwarded-host", "evil.example")
        .header("forwarded", "host=evil.example;proto=http")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    let p = v.send(req).await;
    assert!(
        p.body.contains("An email has been sent to you"),
        "{}",
        p.body
    );
    let link = link_of(&first_mail(&smtp, "carol@corp.example").await);
    assert!(
        link.starts_with(&format!("https://app.test:{port}/.otpgate/link?t=")),
        "{link}"
    );
    // The landing page leaks nothing through Referer; using the link leaves its page with a
    // redirect, so the token is out of the address bar.
    let mut w = Visitor::new(&gw);
    let p = w.get(&local(&w, &link)).await;
    assert_eq!(p.headers["referrer-policy"], "no-referrer");
    assert_eq!(p.headers["cache-control"], "no-store");
    let token = link.split("t=").nth(1).unwrap().to_owned();
    let p = w.post("/.otpgate/link", &[("t", &token)]).await;
    assert_eq!(p.status, 303);
    assert!(!p.location().contains("t="), "{}", p.location());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_22_temporary_passwords_are_random_single_use_and_expire_after_24_hours() {
    let Some((smtp, _up, gw, clock)) = setup_clock("").await else {
        return;
    };
    let mut v = Visitor::new(&gw);
    let p = ask(&mut v, "token", "alice@corp.example").await;
    assert!(p.body.contains("An email has been sent to you"));
    assert!(
        p.body
            .contains("type=\"password\" name=\"password\" autocomplete=\"current-password\""),
        "the sent page lets the visitor sign in with it"
    );
    let mail = first_mail(&smtp, "alice.home@mail.example").await;
    let temp = temp_of(&mail);
    assert!(mail.text.lines().any(|l| l == temp), "alone on its line");
    assert!(
        !contains(&data_bytes(&gw), &temp),
        "stored as a digest only"
    );
    assert!(!contains(&data_bytes(&gw), &temp.replace('-', "")));

    // Works once (typed sloppily, as people do).
    let p = password_login(
        &mut v,
        "alice@corp.example",
        &temp.to_uppercase().replace('-', " "),
    )
    .await;
    assert_eq!(p.status, 303, "{}", p.body);
    let mut w = Visitor::new(&gw);
    let p = password_login(&mut w, "alice@corp.example", &temp).await;
    assert_eq!(p.status, 200);
    assert_eq!(p.error().as_deref(), Some(NO_ACCESS));

    // Stops working after 24 hours.
    let mut v = Visitor::new(&gw);
    ask(&mut v, "token", "carol@corp.example").await;
    let temp = temp_of(&first_mail(&smtp, "carol@corp.example").await);
    clock.advance(Duration::from_secs(24 * 3600 + 1));
    let mut v = Visitor::new(&gw);
    let p = password_login(&mut v, "carol@corp.example", &temp).await;
    assert_eq!(p.error().as_deref(), Some(NO_ACCESS));
    let audit = std::fs::read_to_string(gw.config().data_dir.join("audit.log")).unwrap();
    assert!(!audit.contains(&temp), "never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_23_a_temporary_password_gives_a_session_that_can_only_choose_a_password() {
    let Some((smtp, _up, gw)) = setup("").await else {
        return;
    };
    let port = gw.https().port();
    let mut v = Visitor::new(&gw);
    ask(&mut v, "token", "carol@corp.example").await;
    let temp = temp_of(&first_mail(&smtp, "carol@corp.example").await);
    let p = password_login(&mut v, "carol@corp.example", &temp).await;
    assert_eq!(p.status, 303);
    assert_eq!(
        p.location(),
        format!("https://app.test:{port}/.otpgate/password")
    );
    assert!(v.jar.contains_key("__Host-otpgate-pw"));
    assert!(!v.jar.contains_key("__Host-otpgate"), "no session yet");

    // The restricted cookie opens nothing else, also under the session cookie's name.
    let p = v.get("/docs?x=1").await;
    assert_eq!(p.status, 302);
    let restricted = v.jar["__Host-otpgate-pw"].clone();
    let r = gw
        .client()
        .get(format!("{}/docs", v.base))
        .header("cookie", format!("__Host-otpgate={restricted}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);

    // The page asks for a new password with the browser hints for password managers.
    let p = v.get("/.otpgate/password").await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("Choose a new password"));
    assert_eq!(p.body.matches("autocomplete=\"new-password\"").count(), 2);
    // The new password must differ from the temporary one.
    let p = v
        .post(
            "/.otpgate/password",
            &[("password", &temp), ("confirm", &temp)],
        )
        .await;
    assert_eq!(
        p.error().as_deref(),
        Some("Choose a password different from the temporary one.")
    );
    let p = v
        .post(
            "/.otpgate/password",
            &[("password", GOOD_PASSWORD), ("confirm", GOOD_PASSWORD)],
        )
        .await;
    assert_eq!(p.status, 303);
    assert_eq!(p.location(), format!("https://app.test:{port}/docs?x=1"));
    assert!(v.jar.contains_key("__Host-otpgate"));
    assert!(
        !v.jar.contains_key("__Host-otpgate-pw"),
        "the restricted cookie is cleared"
    );
    // The gateway's cookies never reach the app.
    let r = gw
        .client()
        .get(format!("{}/docs", v.base))
        .header(
            "cookie",
            format!(
                "__Host-otpgate={}; __Host-otpgate-pw={restricted}; app=1",
                v.jar["__Host-otpgate"]
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["headers"]["cookie"][0], "app=1");
    assert_eq!(seen["headers"]["x-otpgate-email"][0], "carol@corp.example");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_24_at_most_one_temporary_password_per_address_per_day() {
    let Some((smtp, _up, gw, clock)) = setup_clock(
        "rate_limits: { code_sends_per_address: 100/15m, login_requests_per_ip: 1000/15m }",
    )
    .await
    else {
        return;
    };
    let mut seen = Vec::new();
    let mut v = Visitor::new(&gw);
    let first = ask(&mut v, "token", "carol@corp.example").await;
    let temp = temp_of(&next_mail(&smtp, "carol@corp.example", &mut seen).await);
    // Past the resend cooldown, which temporary passwords share with codes and links.
    clock.advance(Duration::from_secs(61));
    let mut w = Visitor::new(&gw);
    let second = ask(&mut w, "token", "carol@corp.example").await;
    let mut u = Visitor::new(&gw);
    let unknown = ask(&mut u, "token", "zulu1@else.example").await;
    assert_eq!(
        normalised(&second, "carol@corp.example"),
        normalised(&first, "carol@corp.example")
    );
    assert_eq!(
        normalised(&unknown, "zulu1@else.example"),
        normalised(&first, "carol@corp.example")
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        mails_to(&smtp, "carol@corp.example").len(),
        1,
        "no second mail"
    );
    let reasons: Vec<String> = events(&gw, "token.suppressed")
        .iter()
        .filter(|e| e["email"] == "carol@corp.example")
        .map(|e| e["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reasons, ["reissue_after"]);

    // The first one still works.
    let p = password_login(&mut w, "carol@corp.example", &temp).await;
    assert_eq!(p.status, 303);

    // A day later a new one goes out.
    clock.advance(Duration::from_secs(24 * 3600));
    let mut x = Visitor::new(&gw);
    ask(&mut x, "token", "carol@corp.example").await;
    let again = temp_of(&next_mail(&smtp, "carol@corp.example", &mut seen).await);
    assert_ne!(again, temp);

    // The operator's --force is the one exception, and it is audited.
    let r = admin_send(
        &gw,
        &serde_json::json!({ "users": ["carol@corp.example"], "method": "token" }),
    )
    .await;
    assert_eq!(r["results"][0]["outcome"], "skipped (sent within 24h)");
    let r = admin_send(
        &gw,
        &serde_json::json!({ "users": ["carol@corp.example"], "method": "token", "force": true }),
    )
    .await;
    assert_eq!(r["results"][0]["outcome"], "sent");
    assert_eq!(mails_to(&smtp, "carol@corp.example").len(), 3);
    let forced: Vec<serde_json::Value> = events(&gw, "auth_email.sent")
        .into_iter()
        .filter(|e| e["forced"] == true)
        .collect();
    assert_eq!(forced.len(), 1);
    assert_eq!(forced[0]["via"], "admin api");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_25_new_passwords_follow_nist_rules_and_are_stored_with_argon2id() {
    let Some((smtp, _up, gw)) = setup("").await else {
        return;
    };
    let mut v = Visitor::new(&gw);
    ask(&mut v, "token", "carol@corp.example").await;
    let temp = temp_of(&first_mail(&smtp, "carol@corp.example").await);
    let p = password_login(&mut v, "carol@corp.example", &temp).await;
    assert_eq!(p.status, 303, "{}", p.body);
    v.get("/.otpgate/password").await;
    let long: String = "pässwörd ✓ ".repeat(30).chars().take(300).collect();
    for (password, confirm, message) in [
        (
            "short one",
            "short one",
            "Choose a password of at least 12 characters.",
        ),
        (
            "password1234",
            "password1234",
            "That password is too common or too easy to guess. Choose another.",
        ),
        (
            "PASSWORD1234",
            "PASSWORD1234",
            "That password is too common or too easy to guess. Choose another.",
        ),
        (
            "carol carol carol",
            "carol carol carol",
            "That password is too common or too easy to guess. Choose another.",
        ),
        (
            GOOD_PASSWORD,
            "correct horse battery stapler",
            "The two passwords differ.",
        ),
        (&long, &long, "Choose a password of at most 256 characters."),
    ] {
        let p = v
            .post(
                "/.otpgate/password",
                &[("password", password), ("confirm", confirm)],
            )
            .await;
        assert_eq!(p.status, 200, "{password:?} {}", p.location());
        assert_eq!(p.error().as_deref(), Some(message), "{password:?}");
    }
    // 64 characters of any printable Unicode, no composition rules, never truncated.
    let chosen: String = "ünïcödé wörds ✓ sind in Passwörtern willkommen, 日本語も大丈夫です — ok?"
        .chars()
        .cycle()
        .take(64)
        .collect();
    assert_eq!(chosen.chars().count(), 64);
    let p = v
        .post(
            "/.otpgate/password",
            &[("password", &chosen), ("confirm", &chosen)],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    let db = rusqlite::Connection::open(gw.config().data_dir.join("otpgate.db"))
        .or_else(|_| {
            let found = std::fs::read_dir(&gw.config().data_dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.extension().is_some_and(|e| e == "db" || e == "sqlite"))
                .unwrap();
            rusqlite::Connection::open(found)
        })
        .unwrap();
    let hash: String = db
        .query_row(
            "SELECT hash FROM passwords WHERE email = 'carol@corp.example'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains(&chosen));
    let mut w = Visitor::new(&gw);
    let shorter: String = chosen.chars().take(63).collect();
    let p = password_login(&mut w, "carol@corp.example", &shorter).await;
    assert_eq!(p.error().as_deref(), Some(NO_ACCESS), "not truncated");
    let p = password_login(&mut w, "carol@corp.example", &chosen).await;
    assert_eq!(p.status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_26_password_logins_are_throttled_and_reveal_nobody() {
    let Some((smtp, _up, gw, clock)) = setup_clock(
        "rate_limits: { failed_logins_per_account: 5, login_requests_per_ip: 1000/15m, code_sends_per_address: 100/15m }",
    )
    .await
    else {
        return;
    };
    set_password(
        &gw,
        &smtp,
        "carol@corp.example",
        "carol@corp.example",
        GOOD_PASSWORD,
    )
    .await;

    // Authelia-style: 3 failures within 2 minutes ban the address for 5 minutes, silently.
    let mut v = Visitor::new(&gw);
    for _ in 0..3 {
        let p = password_login(&mut v, "carol@corp.example", "wrong wrong wrong").await;
        assert_eq!(p.error().as_deref(), Some(NO_ACCESS));
    }
    let p = password_login(&mut v, "carol@corp.example", GOOD_PASSWORD).await;
    assert_eq!(
        p.error().as_deref(),
        Some(NO_ACCESS),
        "banned, even with the right password"
    );
    clock.advance(Duration::from_secs(5 * 60 + 1));
    let p = password_login(&mut v, "carol@corp.example", GOOD_PASSWORD).await;
    assert_eq!(p.status, 303, "the ban is over");

    // Five failures lock the account (for strangers; it would end by itself, see
    // sec_39_locks_expire_and_count_a_blocked_failure_once); `otpgate users unlock` ends it now.
    for i in 0..5 {
        let mut v = Visitor::new(&gw);
        let p = password_login(&mut v, "carol@corp.example", "wrong wrong wrong").await;
        assert_eq!(p.error().as_deref(), Some(NO_ACCESS));
        if i % 2 == 1 {
            clock.advance(Duration::from_secs(5 * 60 + 1)); // stay clear of the ban
        }
    }
    let mut v = Visitor::new(&gw);
    let p = password_login(&mut v, "carol@corp.example", GOOD_PASSWORD).await;
    assert_eq!(p.error().as_deref(), Some(NO_ACCESS), "locked");
    assert!(
        events(&gw, "login.locked")
            .iter()
            .any(|e| e["email"] == "carol@corp.example")
    );
    otpgate::commands::unlock_user(
        &gw.config(),
        "carol@corp.example",
        &otpgate::clock::SystemClock,
        otpgate::random::system().as_ref(),
    )
    .await
    .unwrap();
    let p = password_login(&mut v, "carol@corp.example", GOOD_PASSWORD).await;
    assert_eq!(p.status, 303, "unlocked");

    // Known (A) and unknown (B) addresses take the same time: each attempt checks an Argon2id
    // hash. The known account fails twice per ban window and is unlocked before the cap; the
    // unlock (a second connection to the store) runs in both cases, so its after-effects on
    // the gateway's next store access weigh on both alike.
    let samples = timing::interleaved(async |case, i| {
        let email = match case {
            Case::A => "carol@corp.example".to_owned(),
            Case::B => format!("nobody{i}@else.example"),
        };
        if case == Case::A && i % 2 == 0 {
            clock.advance(Duration::from_secs(5 * 60 + 1));
        }
        let mut v = Visitor::new(&gw);
        v.get("/.otpgate/login").await;
        let (p, t) = timing::timed(password_login(&mut v, &email, "wrong wrong wrong")).await;
        assert_eq!(p.error().as_deref(), Some(NO_ACCESS));
        if i % 2 == 1 {
            otpgate::commands::unlock_user(
                &gw.config(),
                &email,
                &otpgate::clock::SystemClock,
                otpgate::random::system().as_ref(),
            )
            .await
            .unwrap();
        }
        t
    })
    .await;
    samples.assert_same("known vs unknown address, wrong password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_26_password_logins_are_limited_per_client_ip() {
    let Some((smtp, _up, gw)) =
        setup("rate_limits: { login_requests_per_ip: 6/15m, code_sends_per_address: 100/15m }")
            .await
    else {
        return;
    };
    // One request for the temporary password, one to sign in with it: 2 of the 6.
    set_password(
        &gw,
        &smtp,
        "carol@corp.example",
        "carol@corp.example",
        GOOD_PASSWORD,
    )
    .await;
    let mut v = Visitor::new(&gw);
    for _ in 0..4 {
        password_login(&mut v, "someone@else.example", "wrong wrong wrong").await;
    }
    let p = password_login(&mut v, "carol@corp.example", GOOD_PASSWORD).await;
    assert_eq!(
        p.error().as_deref(),
        Some(NO_ACCESS),
        "over the per-IP limit"
    );
    let m = gw.metrics().await;
    assert!(
        m.contains("otpgate_rate_limited_total{limit=\"ip\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_27_a_new_password_is_announced_and_ends_other_sessions() {
    let Some((smtp, _up, gw)) = setup("").await else {
        return;
    };
    let other = gw.mint("app", "alice@corp.example");
    let client = gw.client();
    let base = format!("https://app.test:{}", gw.https().port());
    let get = |cookie: String| {
        let client = client.clone();
        let url = format!("{base}/docs");
        async move {
            client
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(get(other.clone()).await, 200);
    // Mails for alice go to her temp_auth_email.
    let v = set_password(
        &gw,
        &smtp,
        "alice@corp.example",
        "alice.home@mail.example",
        GOOD_PASSWORD,
    )
    .await;
    assert_eq!(get(other).await, 302, "the other session ended");
    let session = format!("__Host-otpgate={}", v.jar["__Host-otpgate"]);
    assert_eq!(get(session).await, 200, "the new session works");
    let deadline = Instant::now() + Duration::from_secs(10);
    let notice = loop {
        if let Some(m) = mails_to(&smtp, "alice.home@mail.example")
            .into_iter()
            .find(|m| m.subject.contains("was changed"))
        {
            break m;
        }
        assert!(Instant::now() < deadline, "no notice");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(notice.subject.contains("app"));
    assert!(notice.text.contains("alice@corp.example"));
    assert!(!notice.text.contains(GOOD_PASSWORD));
    assert_eq!(events(&gw, "password.changed").len(), 1);
    assert!(
        events(&gw, "session.revoked")
            .iter()
            .any(|e| e["via"] == "password change")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_10_link_and_temporary_password_requests_answer_the_same_for_everyone() {
    let Some((smtp, _up, gw)) =
        setup("rate_limits: { code_sends_per_address: 1/15m, login_requests_per_ip: 1000/15m }")
            .await
    else {
        return;
    };
    for method in ["link", "token"] {
        let mut v = Visitor::new(&gw);
        // Equal lengths: the pages must be identical apart from the address and CSRF token.
        let allowed = if method == "link" {
            "carol@corp.example"
        } else {
            "alice@corp.example"
        };
        let blocked = "bravo@corp.example";
        let unknown = "zulu1@else.example";
        let throttled = if method == "link" {
            "delta@corp.example"
        } else {
            "echo1@corp.example"
        };
        ask(&mut v, method, throttled).await;
        let mut pages = Vec::new();
        for email in [allowed, blocked, unknown, throttled] {
            let mut v = Visitor::new(&gw);
            let p = ask(&mut v, method, email).await;
            pages.push((email, p));
        }
        let first = normalised(&pages[0].1, pages[0].0);
        assert!(first.2.contains("An email has been sent to you"));
        for (email, p) in &pages[1..] {
            assert_eq!(
                normalised(p, email),
                first,
                "{method}: {email} answered differently"
            );
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(mails_to(&smtp, blocked).is_empty());
        assert!(mails_to(&smtp, unknown).is_empty());
        assert_eq!(mails_to(&smtp, throttled).len(), 1, "its first mail only");
        let kind = if method == "link" { "link" } else { "token" };
        let reasons: HashMap<String, String> = events(&gw, &format!("{kind}.suppressed"))
            .into_iter()
            .map(|e| {
                (
                    e["email"].as_str().unwrap().to_owned(),
                    e["reason"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(reasons[blocked], "policy_block");
        assert_eq!(reasons[unknown], "unknown_user");
        assert_eq!(reasons[throttled], "rate_limited");
    }
    assert_eq!(mails_to(&smtp, "alice.home@mail.example").len(), 1);
    assert_eq!(mails_to(&smtp, "carol@corp.example").len(), 1);

    // Timing: allowed (A) and unknown (B) addresses answer equally fast (the durable write and
    // the mail happen after the answer).
    let samples = timing::interleaved(async |case, i| {
        let email = match case {
            Case::A => format!("t{i:02}a@corp.example"),
            Case::B => format!("t{i:02}u@else.example"),
        };
        let mut v = Visitor::new(&gw);
        v.get("/.otpgate/login").await;
        let (p, t) =
            timing::timed(v.post("/.otpgate/login", &[("email", &email), ("method", "link")]))
                .await;
        assert_eq!(p.status, 200);
        t
    })
    .await;
    samples.assert_same("allowed vs unknown address, link");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_11_failed_links_and_passwords_all_look_the_same() {
    let Some((smtp, _up, gw)) = setup("").await else {
        return;
    };
    set_password(
        &gw,
        &smtp,
        "carol@corp.example",
        "carol@corp.example",
        GOOD_PASSWORD,
    )
    .await;
    let mut pages = Vec::new();
    for (who, password) in [
        ("carol@corp.example", "not the password"),
        ("nobody@corp.example", GOOD_PASSWORD),
        ("bravo@corp.example", GOOD_PASSWORD),
    ] {
        let mut v = Visitor::new(&gw);
        let p = password_login(&mut v, who, password).await;
        assert_eq!(p.status, 200, "{who}");
        assert_eq!(p.error().as_deref(), Some(NO_ACCESS), "{who}");
        pages.push(
            p.body
                .replace(who, "<email>")
                .split("name=\"csrf\"")
                .count(),
        );
    }
    let mut v = Visitor::new(&gw);
    for t in [
        "",
        "garbage",
        "k1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let p = v.get(&format!("/.otpgate/link?t={t}")).await;
        assert_eq!(
            (p.status, p.error().as_deref()),
            (200, Some(NO_ACCESS)),
            "{t:?}"
        );
    }
    // The failures are told apart in the audit log only.
    let reasons: Vec<String> = events(&gw, "login.failed")
        .iter()
        .filter(|e| e["login_method"] == "onetimetoken")
        .map(|e| e["reason"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        reasons.contains(&"wrong_password".to_owned()),
        "{reasons:?}"
    );
    assert!(reasons.contains(&"policy".to_owned()), "{reasons:?}");
}

/// `POST /admin/send-auth-email` with the admin token.
async fn admin_send(gw: &Gw, body: &serde_json::Value) -> serde_json::Value {
    let r = gw
        .client()
        .post(gw.admin_url("/admin/send-auth-email"))
        .bearer_auth(ADMIN_TOKEN)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_sends_authentication_email_to_users_and_groups() {
    let Some((smtp, _up, gw)) = setup("").await else {
        return;
    };
    let url = gw.admin_url("/admin/send-auth-email");
    let client = gw.client();
    let body = serde_json::json!({ "users": ["alice@corp.example"], "method": "link" });
    let r = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(&url)
        .bearer_auth("an-admin-token-for-tests-012345678X")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    let r = admin_send(
        &gw,
        &serde_json::json!({
            "users": ["alice@corp.example", "outsider@partner.example", "not an id"],
            "groups": ["engineering"],
            "method": "link"
        }),
    )
    .await;
    let results: Vec<(String, String)> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["user"].as_str().unwrap().to_owned(),
                x["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        results,
        [
            ("alice@corp.example".to_owned(), "sent".to_owned()),
            ("outsider@partner.example".to_owned(), "sent".to_owned()),
            ("not an id".to_owned(), "unknown user".to_owned()),
            ("carol@corp.example".to_owned(), "sent".to_owned()),
        ],
        "users first, then group members, each once"
    );
    // Sent at once: the mails are there when the answer is.
    let alice = mails_to(&smtp, "alice.home@mail.example");
    assert_eq!(alice.len(), 1, "to the temp_auth_email");
    let link = link_of(&alice[0]);
    let mut v = Visitor::new(&gw);
    v.get(&local(&v, &link)).await;
    let token = link.split("t=").nth(1).unwrap().to_owned();
    let p = v.post("/.otpgate/link", &[("t", &token)]).await;
    assert_eq!(p.status, 303);
    assert_eq!(
        p.location(),
        format!("https://app.test:{}/", gw.https().port())
    );
    let sent = events(&gw, "auth_email.sent");
    assert_eq!(sent.len(), 3, "one per user mailed");
    assert!(
        sent.iter()
            .all(|e| e["via"] == "admin api" && e["login_method"] == "onetimelink")
    );
    let audit = std::fs::read_to_string(gw.config().data_dir.join("audit.log")).unwrap();
    assert!(!audit.contains(&token));

    // Bad requests say what is wrong.
    for body in [
        serde_json::json!({ "users": [] }),
        serde_json::json!({ "users": ["a@corp.example"], "method": "pin" }),
        serde_json::json!({ "users": ["a@corp.example"], "app": "nope" }),
        serde_json::json!({ "users": ["a@corp.example"], "surprise": 1 }),
    ] {
        let r = client
            .post(&url)
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_is_closed_without_a_configured_token() {
    let up = Upstream::start().await;
    let gw = Gw::start(&format!(
        "version: 1\nlisten: {{ http: 127.0.0.1:0, admin: 127.0.0.1:0 }}\napps:\n  - {{ name: app, hosts: [app.test], upstream: {} }}\n",
        up.url()
    ))
    .await;
    let r = gw
        .client()
        .post(gw.admin_url("/admin/send-auth-email"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "users": ["a@corp.example"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}
