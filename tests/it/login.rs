//! The one-time PIN login against a real SMTP server (aiosmtpd): the flow, anti-enumeration,
//! limits, single use, binding, expiry, CSRF, audit, logout. One test per requirement
//! docs/security.md#6–#18, #37 and #38, named after it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use otpgate::clock::ManualClock;

use crate::harness::*;
use crate::smtp::SmtpServer;
use crate::timing::{self, Case};

pub(crate) const CERTS: &[(&str, &[&str])] = &[("site", &["app.test", "wiki.test"])];

/// A gateway with one protected app, mailing through `smtp`.
pub(crate) fn config(up: &Upstream, smtp: &SmtpServer, extra: &str) -> String {
    format!(
        "version: 1
{LISTEN_ALL}
tls: {{ certificates: [ {{ cert: site.pem, key: site-key.pem }} ] }}
mail: {{ from: 'Gate <gate@corp.example>', transport: 'smtp://{smtp}?tls=none' }}
users:
  - {{ id: alice@corp.example, groups: [engineering] }}
  - {{ id: bravo@corp.example, groups: [banned] }}
{extra}
apps:
  - name: app
    hosts: [app.test]
    upstream: {up}
    policies:
      - {{ name: no-banned, action: block, include: [ {{ group: banned }} ] }}
      - {{ name: staff, action: allow, include: [ {{ email_domain: corp.example }} ] }}
",
        up = up.url(),
        smtp = smtp.addr
    )
}

/// A real SMTP server, an upstream, and a gateway mailing through the one in front of the other.
/// `None` when aiosmtpd is not installed (outside CI).
pub(crate) async fn setup(extra: &str) -> Option<(SmtpServer, Upstream, Gw)> {
    let smtp = SmtpServer::start().await?;
    let up = Upstream::start().await;
    let gw = Gw::start_with(&config(&up, &smtp, extra), CERTS).await;
    Some((smtp, up, gw))
}

/// A browser-like client: keeps cookies, sends `Origin` on posts, reads CSRF tokens.
pub(crate) struct Visitor {
    pub(crate) client: reqwest::Client,
    pub(crate) base: String,
    pub(crate) jar: HashMap<String, String>,
    pub(crate) csrf: String,
    /// The client address a trusted proxy in front reports (`X-Forwarded-For`), if any.
    pub(crate) from: Option<String>,
}

pub(crate) struct Page {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: String,
}

impl Page {
    pub(crate) fn location(&self) -> &str {
        self.headers
            .get("location")
            .map_or("", |v| v.to_str().unwrap())
    }
    pub(crate) fn error(&self) -> Option<String> {
        let start = self.body.find("class=\"error\" role=\"alert\">")?;
        let rest = &self.body[start + 27..];
        Some(rest[..rest.find('<')?].to_owned())
    }
}

impl Visitor {
    pub(crate) fn new(gw: &Gw) -> Self {
        Self {
            client: gw.client(),
            base: format!("https://app.test:{}", gw.https().port()),
            jar: HashMap::new(),
            csrf: String::new(),
            from: None,
        }
    }

    /// A browser at `ip`, behind a proxy the gateway trusts (configure `trusted_proxies`).
    pub(crate) fn at(gw: &Gw, ip: &str) -> Self {
        Self {
            from: Some(ip.to_owned()),
            ..Self::new(gw)
        }
    }

    fn cookie_header(&self) -> String {
        self.jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub(crate) async fn send(&mut self, req: reqwest::RequestBuilder) -> Page {
        let req = match &self.from {
            Some(ip) => req.header("x-forwarded-for", ip.as_str()),
            None => req,
        };
        let req = if self.jar.is_empty() {
            req
        } else {
            req.header("cookie", self.cookie_header())
        };
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
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
        let body = r.text().await.unwrap();
        if let Some(i) = body.find("name=\"csrf\" value=\"") {
            let rest = &body[i + 19..];
            self.csrf = rest[..rest.find('"').unwrap()].to_owned();
        }
        Page {
            status,
            headers,
            body,
        }
    }

    pub(crate) async fn get(&mut self, path: &str) -> Page {
        let req = self.client.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    pub(crate) async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let mut form: Vec<(&str, &str)> = vec![("csrf", self.csrf.as_str())];
        form.extend_from_slice(fields);
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("origin", self.base.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        self.send(req).await
    }

    /// Opens the login page (new transaction) and asks for a code for `email`.
    pub(crate) async fn request_code(&mut self, email: &str) -> Page {
        let p = self.get("/.otpgate/login?rd=%2Fdocs%3Fx%3D1").await;
        assert_eq!(p.status, 200);
        self.post("/.otpgate/login", &[("email", email)]).await
    }

    pub(crate) async fn enter(&mut self, code: &str) -> Page {
        self.post("/.otpgate/code", &[("code", code)]).await
    }
}

/// The PIN in a received mail: the line that is only digits.
pub(crate) fn pin_of(mail: &crate::smtp::ReceivedMail) -> String {
    mail.text
        .lines()
        .map(str::trim)
        .find(|l| l.len() >= 6 && l.bytes().all(|b| b.is_ascii_digit()))
        .expect("a PIN line")
        .to_owned()
}

/// Waits for a mail whose PIN has not been seen yet (maildir listings are not in time order).
async fn new_pin(smtp: &SmtpServer, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(p) = smtp
            .received()
            .iter()
            .map(pin_of)
            .find(|p| !seen.contains(p))
        {
            seen.push(p.clone());
            return p;
        }
        assert!(Instant::now() < deadline, "no new mail");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn wrong(pin: &str) -> String {
    pin.chars()
        .map(|c| {
            if c == '9' {
                '0'
            } else {
                char::from(c as u8 + 1)
            }
        })
        .collect()
}

pub(crate) fn audit(gw: &Gw) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(gw.config().data_dir.join("audit.log")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub(crate) fn events(gw: &Gw, name: &str) -> Vec<serde_json::Value> {
    audit(gw)
        .into_iter()
        .filter(|e| e["event"] == name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_login_end_to_end_over_real_smtp() {
    let Some((smtp, _up, gw)) = setup("").await else {
        return;
    };
    let mut v = Visitor::new(&gw);
    let port = gw.https().port();

    // A protected page sends the browser to the login page.
    let p = v.get("/docs?x=1").await;
    assert_eq!(p.status, 302);
    let p = v.get(&p.location().replacen(&v.base.clone(), "", 1)).await;
    assert_eq!(p.status, 200);
    assert!(
        p.body
            .contains("<input id=\"email\" type=\"email\" name=\"email\" autocomplete=\"email\""),
        "{}",
        p.body
    );
    assert!(p.body.contains("Send me a code") && p.body.contains("<label for=\"email\">"));
    assert!(!p.body.contains("<script"));
    for (h, want) in [
        ("cache-control", "no-store"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
    ] {
        assert_eq!(p.headers[h], want);
    }
    assert!(
        p.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'none'")
    );
    assert!(
        v.jar.contains_key("__Host-otpgate-login"),
        "a login transaction cookie"
    );

    // docs/security.md#7: the typed address is normalised (ASCII lower case) everywhere.
    let p = v
        .post("/.otpgate/login", &[("email", "  Alice@Corp.Example ")])
        .await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("A code has been emailed to you"));
    assert!(p.body.contains(
        "<input id=\"code\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\""
    ));
    let mail = smtp
        .wait_for_mail("alice@corp.example", Duration::from_secs(10))
        .await;
    assert_eq!(
        mail.recipients(),
        ["alice@corp.example"],
        "the SMTP recipient is the normalised address"
    );
    assert!(
        mail.subject.contains("app"),
        "the subject names the app: {}",
        mail.subject
    );
    let pin = pin_of(&mail);
    assert_eq!(pin.len(), 6);
    assert!(
        mail.text.lines().any(|l| l == pin),
        "the PIN stands alone on its line"
    );

    // The code: a session cookie and 303 to the original URL.
    let p = v.enter(&pin).await;
    assert_eq!(p.status, 303);
    assert_eq!(p.location(), format!("https://app.test:{port}/docs?x=1"));
    assert!(v.jar.contains_key("__Host-otpgate"));
    assert!(
        !v.jar.contains_key("__Host-otpgate-login"),
        "the transaction is over"
    );
    let p = v.get("/docs?x=1").await;
    assert_eq!(p.status, 200);
    let seen: serde_json::Value = serde_json::from_str(&p.body).unwrap();
    assert_eq!(seen["headers"]["x-otpgate-email"][0], "alice@corp.example");
    assert_eq!(seen["headers"]["x-otpgate-groups"][0], "engineering");
    assert_eq!(seen["query"], "x=1");
    let m = gw.metrics().await;
    assert!(
        m.contains("otpgate_logins_total{app=\"app\",method=\"onetimepin\",outcome=\"success\"}"),
        "{m}"
    );
    assert!(
        m.contains("otpgate_codes_total{app=\"app\",outcome=\"sent\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_6_malformed_addresses_are_refused_from_their_syntax_alone() {
    let Some((smtp, _up, gw)) = setup("").await else {
        return;
    };
    let mut v = Visitor::new(&gw);
    v.get("/.otpgate/login").await;
    for bad in [
        "",
        "alice",
        "alice@localhost",
        "a@[127.0.0.1]",
        "\"a b\"@corp.example",
        "Alice <alice@corp.example>",
        "a@@corp.example",
        "alice@corp.example\r\nBcc: eve@else.example",
        "alice@corp.example,eve@else.example",
        "alïce@corp.example",
        "alice@cörp.example",
        &format!("{}@corp.example", "a".repeat(65)),
    ] {
        let p = v.post("/.otpgate/login", &[("email", bad)]).await;
        assert_eq!(p.status, 400, "{bad:?}");
        assert_eq!(
            p.error().as_deref(),
            Some("Enter a valid email address."),
            "{bad:?}"
        );
        assert!(p.body.contains("Send me a code"), "the email form again");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.count(), 0, "no mail for malformed input");
    assert!(
        events(&gw, "code.requested").is_empty(),
        "rejected before any lookup or limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_8_non_ascii_addresses_are_refused() {
    let Some((_smtp, _up, gw)) = setup("").await else {
        return;
    };
    let mut v = Visitor::new(&gw);
    v.get("/.otpgate/login").await;
    for bad in [
        "ａlice@corp.example",
        "alice@xn--crp-qoa.example\u{200b}",
        "用户@例子.广告",
        "alice@corp.exampleß",
    ] {
        let p = v.post("/.otpgate/login", &[("email", bad)]).await;
        assert_eq!(p.status, 400, "{bad:?}");
    }
    // A-labels are plain ASCII and fine.
    let p = v
        .post("/.otpgate/login", &[("email", "alice@xn--crp-qoa.example")])
        .await;
    assert_eq!(p.status, 200);
}

/// docs/security.md#9: addresses reach SMTP only validated; mail headers are built from validated
/// values; lookups use parameterised queries (a hostile address is just data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_9_no_header_or_query_is_built_from_unvalidated_input() {
    let Some((smtp, _up, gw)) = setup("").await else {
        return;
    };
    let mut v = Visitor::new(&gw);
    // Valid dot-atom characters that mean something to SQL or shells.
    let odd = "o'neil+x=1%y|z@corp.example";
    let p = v.request_code(odd).await;
    assert_eq!(p.status, 200);
    let mail = smtp.wait_for_mail(odd, Duration::from_secs(10)).await;
    assert_eq!(mail.recipients(), [odd]);
    // The failure counter is keyed by it without harm.
    let p = v.enter("000000").await;
    assert_eq!(
        p.error().as_deref(),
        Some("That account does not have access.")
    );
    let store = otpgate::store::Store::open_embedded(&gw.config().data_dir).unwrap();
    assert_eq!(store.failures(odd, 0).unwrap().consecutive, 1);
}

/// Requests for four classes of address, compared byte for byte (after the typed address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_10_every_well_formed_address_gets_the_same_answer() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let gw = Gw::start_with(
        &config(
            &up,
            &smtp,
            "rate_limits: { code_sends_per_address: 1/15m, login_requests_per_ip: 1000/15m }",
        ),
        CERTS,
    )
    .await;
    let mut v = Visitor::new(&gw);
    v.get("/.otpgate/login").await;
    // Equal lengths, so the pages must be identical apart from the address.
    let allowed = "alice@corp.example";
    let blocked = "bravo@corp.example";
    let unknown = "carol@else.example";
    let throttled = "delta@corp.example";
    let warm = v.post("/.otpgate/login", &[("email", throttled)]).await;
    assert_eq!(warm.status, 200);
    let mut pages = Vec::new();
    for email in [allowed, blocked, unknown, throttled] {
        let p = v.post("/.otpgate/login", &[("email", email)]).await;
        pages.push((email, p));
    }
    let norm = |p: &Page, email: &str| {
        let mut h: Vec<(String, String)> = p
            .headers
            .iter()
            .filter(|(k, _)| k.as_str() != "date")
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        h.sort();
        (p.status, h, p.body.replace(email, "<email>"))
    };
    let first = norm(&pages[0].1, pages[0].0);
    assert!(first.2.contains("A code has been emailed to you"));
    for (email, p) in &pages[1..] {
        assert_eq!(
            norm(p, email),
            first,
            "{email} answered differently from {allowed}"
        );
    }
    // Only the allowed address got mail (the throttled one got its first code only).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let to: Vec<String> = smtp
        .received()
        .iter()
        .flat_map(|m| m.recipients())
        .collect();
    let mut to_sorted = to.clone();
    to_sorted.sort();
    assert_eq!(to_sorted, [allowed, throttled], "{to:?}");
    // Operators see why: the suppressions are in the audit log with their reasons.
    let reasons: HashMap<String, String> = events(&gw, "code.suppressed")
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

    // Timing: allowed (A) and unknown (B) addresses answer equally fast.
    let samples = timing::interleaved(async |case, i| {
        let email = match case {
            Case::A => format!("t{i:02}a@corp.example"),
            Case::B => format!("t{i:02}u@else.example"),
        };
        let (p, t) = timing::timed(v.post("/.otpgate/login", &[("email", &email)])).await;
        assert_eq!(p.status, 200);
        t
    })
    .await;
    samples.assert_same("allowed vs unknown address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_11_every_failure_gets_the_same_message_and_status() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let gw = Gw::start_with(
        &config(&up, &smtp, "rate_limits: { code_resend_cooldown: 1ms }"),
        CERTS,
    )
    .await;
    let mut outcomes = Vec::new();
    // No code ever requested in this browser.
    let mut v = Visitor::new(&gw);
    v.get("/.otpgate/login").await;
    outcomes.push(("no code", v.enter("123456").await));
    // A blocked user (no mail, decoy record).
    let mut v = Visitor::new(&gw);
    v.request_code("bravo@corp.example").await;
    outcomes.push(("blocked user", v.enter("123456").await));
    // Wrong code, then the used code.
    let mut v = Visitor::new(&gw);
    v.request_code("alice@corp.example").await;
    let pin = pin_of(
        &smtp
            .wait_for_mail("alice@corp.example", Duration::from_secs(10))
            .await,
    );
    outcomes.push(("wrong code", v.enter(&wrong(&pin)).await));
    assert_eq!(v.enter(&pin).await.status, 303);
    let mut again = Visitor::new(&gw);
    again.get("/.otpgate/login").await;
    outcomes.push(("malformed code", again.enter("12ab").await));
    for (what, p) in &outcomes {
        assert_eq!(p.status, 200, "{what}");
        assert_eq!(
            p.error().as_deref(),
            Some("That account does not have access."),
            "{what}"
        );
        assert!(
            p.body.contains("A code has been emailed to you"),
            "{what}: the same form, to try again"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_12_pins_have_the_configured_number_of_digits() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let gw = Gw::start_with(
        &config(
            &up,
            &smtp,
            "identity_providers: [ { type: onetimepin, config: { length: 8 } } ]",
        ),
        CERTS,
    )
    .await;
    let mut v = Visitor::new(&gw);
    let p = v.request_code("alice@corp.example").await;
    assert!(p.body.contains("maxlength=\"8\""));
    let pin = pin_of(
        &smtp
            .wait_for_mail("alice@corp.example", Duration::from_secs(10))
            .await,
    );
    assert_eq!(pin.len(), 8);
    assert_eq!(v.enter(&pin).await.status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_13_codes_stop_working_after_ten_minutes() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let clock = ManualClock::at(1_900_000_000);
    let options = otpgate::Options {
        clock: Arc::new(clock.clone()),
        ..Default::default()
    };
    let gw = Gw::start_full(
        &config(&up, &smtp, "rate_limits: { code_resend_cooldown: 1ms }"),
        CERTS,
        options,
    )
    .await;
    let mut v = Visitor::new(&gw);
    v.request_code("alice@corp.example").await;
    let pin = pin_of(
        &smtp
            .wait_for_mail("alice@corp.example", Duration::from_secs(10))
            .await,
    );
    let mut seen = vec![pin.clone()];
    clock.advance(Duration::from_secs(10 * 60 + 1));
    let p = v.enter(&pin).await;
    assert_eq!(
        p.error().as_deref(),
        Some("That account does not have access.")
    );
    // Within the ten minutes it works.
    let mut w = Visitor::new(&gw);
    w.request_code("alice@corp.example").await;
    let pin = new_pin(&smtp, &mut seen).await;
    clock.advance(Duration::from_secs(9 * 60 + 59));
    assert_eq!(w.enter(&pin).await.status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_14_a_code_is_accepted_once_even_under_concurrent_submission() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let gw = Gw::start_with(
        &config(
            &up,
            &smtp,
            "rate_limits: { login_requests_per_ip: 1000/15m }",
        ),
        CERTS,
    )
    .await;
    let mut v = Visitor::new(&gw);
    v.request_code("alice@corp.example").await;
    let pin = pin_of(
        &smtp
            .wait_for_mail("alice@corp.example", Duration::from_secs(10))
            .await,
    );
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("csrf", v.csrf.as_str()), ("code", pin.as_str())])
        .finish();
    let cookie = v.cookie_header();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let req = v
                .client
                .post(format!("{}/.otpgate/code", v.base))
                .header("origin", v.base.clone())
                .header("cookie", cookie.clone())
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.clone());
            tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 303).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        9,
        "{statuses:?}"
    );
    assert_eq!(events(&gw, "session.issued").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_15_a_code_completes_only_the_login_of_the_browser_that_asked() {
    let Some((smtp, _up, gw)) = setup("").await else {
        return;
    };
    let mut victim = Visitor::new(&gw);
    victim.request_code("alice@corp.example").await;
    let pin = pin_of(
        &smtp
            .wait_for_mail("alice@corp.example", Duration::from_secs(10))
            .await,
    );
    // Someone else, in another browser, who learns the code (shoulder surfing, a forwarded mail).
    let mut other = Visitor::new(&gw);
    other.get("/.otpgate/login").await;
    let p = other.enter(&pin).await;
    assert_eq!(
        p.error().as_deref(),
        Some("That account does not have access.")
    );
    // A login transaction of another app is worthless here too.
    assert_eq!(victim.enter(&pin).await.status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_16_wrong_guesses_burn_the_code_and_the_account_locks_at_the_cap() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let gw = Gw::start_with(
        &config(&up, &smtp, "rate_limits: { code_sends_per_address: 100/15m, code_resend_cooldown: 1ms, login_requests_per_ip: 1000/15m, failed_logins_per_account: 7 }"),
        CERTS,
    )
    .await;
    let mut v = Visitor::new(&gw);
    v.request_code("alice@corp.example").await;
    let mut seen = Vec::new();
    let pin = pin_of(
        &smtp
            .wait_for_mail("alice@corp.example", Duration::from_secs(10))
            .await,
    );
    seen.push(pin.clone());
    // Five wrong guesses (the default max_attempts) burn the code: the right one fails after.
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let p = v.enter(&wrong(&pin)).await;
        times.push(started.elapsed());
        assert_eq!(
            p.error().as_deref(),
            Some("That account does not have access.")
        );
    }
    assert_eq!(
        v.enter(&pin).await.error().as_deref(),
        Some("That account does not have access.")
    );
    // Growing delays after three consecutive failures.
    assert!(
        times[4] >= Duration::from_millis(500),
        "no delay before the 5th answer: {times:?}"
    );
    assert!(times[4] > times[3], "delays grow: {times:?}");
    // The account locks at the cap (7 consecutive failures): even a fresh, right code fails.
    let mut w = Visitor::new(&gw);
    w.request_code("alice@corp.example").await;
    let pin2 = new_pin(&smtp, &mut seen).await;
    // Failures 6 and 7 (the guess against the deleted, burnt code could not be attributed).
    assert_eq!(w.enter(&wrong(&pin2)).await.status, 200);
    assert_eq!(w.enter(&wrong(&pin2)).await.status, 200);
    assert!(
        !events(&gw, "login.locked").is_empty(),
        "the lock is audited"
    );
    assert_eq!(
        w.enter(&pin2).await.error().as_deref(),
        Some("That account does not have access.")
    );
    // While locked, no codes are mailed (same answer).
    let before = smtp.count();
    let mut x = Visitor::new(&gw);
    let p = x.request_code("alice@corp.example").await;
    assert!(p.body.contains("A code has been emailed to you"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.count(), before);
    // `otpgate users unlock` releases it.
    let out = otpgate::commands::unlock_user(
        &gw.config(),
        "alice@corp.example",
        &otpgate::clock::SystemClock,
        otpgate::random::system().as_ref(),
    )
    .await
    .unwrap();
    assert!(out.starts_with("unlocked alice@corp.example"), "{out}");
    let mut y = Visitor::new(&gw);
    y.request_code("alice@corp.example").await;
    let pin3 = new_pin(&smtp, &mut seen).await;
    assert_eq!(y.enter(&pin3).await.status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_17_sends_are_limited_per_address_and_per_ip_for_every_address() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let gw = Gw::start_with(
        &config(&up, &smtp, "rate_limits: { code_sends_per_address: 2/15m, code_resend_cooldown: 1ms, login_requests_per_ip: 6/15m }"),
        CERTS,
    )
    .await;
    let mut v = Visitor::new(&gw);
    // Per address: two codes, then none (same answer).
    for _ in 0..3 {
        let p = v.request_code("alice@corp.example").await;
        assert_eq!(p.status, 200);
        assert!(p.body.contains("A code has been emailed to you"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.count(), 2);
    // Per client address: six submissions counted (any address, allowed or not), then no mail.
    let p = v.request_code("unknown@else.example").await; // 4th
    assert_eq!(p.status, 200);
    v.request_code("new1@corp.example").await; // 5th
    v.request_code("new2@corp.example").await; // 6th
    v.request_code("new3@corp.example").await; // 7th: over
    tokio::time::sleep(Duration::from_millis(500)).await;
    let to: Vec<String> = smtp
        .received()
        .iter()
        .flat_map(|m| m.recipients())
        .collect();
    assert!(to.contains(&"new2@corp.example".to_owned()));
    assert!(!to.contains(&"new3@corp.example".to_owned()), "{to:?}");
    let m = gw.metrics().await;
    assert!(
        m.contains("otpgate_rate_limited_total{limit=\"ip\"}"),
        "{m}"
    );
    assert!(
        m.contains("otpgate_rate_limited_total{limit=\"address\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_18_pins_are_never_stored_or_logged_in_clear() {
    let Some((smtp, _up, gw)) = setup("").await else {
        return;
    };
    let mut v = Visitor::new(&gw);
    v.request_code("alice@corp.example").await;
    let pin = pin_of(
        &smtp
            .wait_for_mail("alice@corp.example", Duration::from_secs(10))
            .await,
    );
    v.enter(&wrong(&pin)).await;
    v.enter(&pin).await;
    let data = gw.config().data_dir;
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(pin.len()).any(|w| w == pin.as_bytes()),
                "the PIN is in {}",
                path.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_37_forms_need_the_csrf_token_and_the_apps_origin() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let gw = Gw::start_with(
        &config(&up, &smtp, "rate_limits: { code_resend_cooldown: 1ms }"),
        CERTS,
    )
    .await;
    let mut v = Visitor::new(&gw);
    v.get("/.otpgate/login").await;
    let good = v.csrf.clone();
    // No token, a forged token, a foreign origin: a fresh form, no mail.
    for (csrf, origin) in [
        ("", v.base.clone()),
        ("k1.AAAA", v.base.clone()),
        (good.as_str(), "https://evil.example".to_owned()),
    ] {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([("csrf", csrf), ("email", "alice@corp.example")])
            .finish();
        let p = v
            .send(
                v.client
                    .post(format!("{}/.otpgate/login", v.base))
                    .header("origin", origin)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body),
            )
            .await;
        assert_eq!(p.status, 400);
        assert_eq!(
            p.error().as_deref(),
            Some("Your sign-in form expired. Please try again.")
        );
    }
    // Without the transaction cookie (a cross-site post: SameSite=Lax keeps it home).
    let mut stranger = Visitor::new(&gw);
    stranger.csrf = good.clone();
    assert_eq!(
        stranger
            .post("/.otpgate/login", &[("email", "alice@corp.example")])
            .await
            .status,
        400
    );
    // Not a form at all.
    let r = gw
        .client()
        .post(gw.https_url("app.test", "/.otpgate/login"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(smtp.count(), 0);
    // Logout needs its own token: a forged sign-out leaves the session alive.
    v.request_code("alice@corp.example").await;
    let pin = pin_of(
        &smtp
            .wait_for_mail("alice@corp.example", Duration::from_secs(10))
            .await,
    );
    assert_eq!(v.enter(&pin).await.status, 303);
    v.csrf = "k1.AAAA".into();
    let p = v.post("/.otpgate/logout", &[]).await;
    assert_eq!(p.status, 403);
    assert_eq!(v.get("/docs").await.status, 200, "still signed in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_38_authentication_events_are_audited_without_secrets() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let up = Upstream::start().await;
    let gw = Gw::start_with(
        &config(&up, &smtp, "rate_limits: { code_resend_cooldown: 1ms }"),
        CERTS,
    )
    .await;
    let mut v = Visitor::new(&gw);
    v.request_code("Alice@Corp.Example").await;
    let pin = pin_of(
        &smtp
            .wait_for_mail("alice@corp.example", Duration::from_secs(10))
            .await,
    );
    v.enter(&wrong(&pin)).await;
    v.enter(&pin).await;
    let cookie = v.jar["__Host-otpgate"].clone();
    v.get("/.otpgate/logout").await;
    assert_eq!(v.post("/.otpgate/logout", &[]).await.status, 200);
    let mut w = Visitor::new(&gw);
    w.request_code("eve@else.example").await;
    let all = audit(&gw);
    let names: Vec<&str> = all.iter().map(|e| e["event"].as_str().unwrap()).collect();
    for want in [
        "code.requested",
        "code.sent",
        "login.failed",
        "login.succeeded",
        "session.issued",
        "logout",
        "session.revoked",
        "code.suppressed",
    ] {
        assert!(names.contains(&want), "{want} missing in {names:?}");
    }
    for e in &all {
        assert_eq!(e["app"], "app");
        assert_eq!(e["ip"], "127.0.0.1");
        assert!(e["request_id"].as_str().is_some_and(|r| r.len() == 16));
        assert!(e["time"].as_str().unwrap().ends_with('Z'));
        let line = e.to_string();
        assert!(
            !line.contains(&pin) && !line.contains(&cookie) && !line.contains(&v.csrf),
            "{line}"
        );
        if let Some(email) = e["email"].as_str() {
            assert_eq!(email, email.to_ascii_lowercase(), "normalised");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_31_logout_ends_the_session_on_the_server_also_after_a_restart() {
    let Some((smtp, _up, gw)) = setup("").await else {
        return;
    };
    let mut v = Visitor::new(&gw);
    v.request_code("alice@corp.example").await;
    let pin = pin_of(
        &smtp
            .wait_for_mail("alice@corp.example", Duration::from_secs(10))
            .await,
    );
    assert_eq!(v.enter(&pin).await.status, 303);
    let copied = v.jar["__Host-otpgate"].clone();
    let p = v.get("/.otpgate/logout").await;
    assert!(p.body.contains(">Sign out</button>") && p.body.contains("alice@corp.example"));
    let p = v.post("/.otpgate/logout", &[]).await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("You are signed out"));
    assert!(
        !v.jar.contains_key("__Host-otpgate"),
        "the cookie is cleared"
    );
    // The copied cookie is dead, at once and after a restart.
    let cookie = format!("__Host-otpgate={copied}");
    let r = gw
        .client()
        .get(gw.https_url("app.test", "/docs"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let gw = gw.restart().await;
    let r = gw
        .client()
        .get(gw.https_url("app.test", "/docs"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_smtp_relay_never_changes_or_slows_the_answer() {
    let up = Upstream::start().await;
    // A relay that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let yaml = format!(
        "version: 1
{LISTEN_ALL}
tls: {{ certificates: [ {{ cert: site.pem, key: site-key.pem }} ] }}
mail: {{ from: gate@corp.example, transport: 'smtp://127.0.0.1:{port}?tls=none' }}
apps:
  - name: app
    hosts: [app.test]
    upstream: {}
    policies: [ {{ name: staff, action: allow, include: [ {{ email_domain: corp.example }} ] }} ]
",
        up.url()
    );
    let gw = Gw::start_with(&yaml, CERTS).await;
    let mut v = Visitor::new(&gw);
    v.get("/.otpgate/login").await;
    let started = Instant::now();
    let p = v
        .post("/.otpgate/login", &[("email", "alice@corp.example")])
        .await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("A code has been emailed to you"));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "answered in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_walks_through_the_pin_login_with_screenshots() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let Some(mut b) = crate::browser::Browser::start("pin_login").await else {
        return;
    };
    let up = Upstream::start().await;
    let gw = Gw::start_with(&config(&up, &smtp, ""), CERTS).await;
    let port = gw.https().port();
    let start = format!("https://app.test:{port}/docs/page?x=1");
    b.client.goto(&start).await.unwrap();
    assert!(
        b.client
            .current_url()
            .await
            .unwrap()
            .path()
            .starts_with("/.otpgate/login")
    );
    b.shot("email-page").await;
    b.fill_and_submit("input[name=email]", "alice@corp.example")
        .await;
    b.shot("code-page").await;
    let text = b.text().await;
    assert!(text.contains("A code has been emailed to you"), "{text}");
    let pin = pin_of(
        &smtp
            .wait_for_mail("alice@corp.example", Duration::from_secs(10))
            .await,
    );
    b.fill_and_submit("input[name=code]", &wrong(&pin)).await;
    assert!(
        b.text()
            .await
            .contains("That account does not have access.")
    );
    b.shot("wrong-code").await;
    b.fill_and_submit("input[name=code]", &pin).await;
    assert_eq!(b.client.current_url().await.unwrap().as_str(), start);
    let text = b.text().await;
    assert!(
        text.contains("\"x-otpgate-email\":[\"alice@corp.example\"]")
            || text.contains("alice@corp.example"),
        "{text}"
    );
    b.shot("app").await;
    b.client
        .goto(&format!("https://app.test:{port}/.otpgate/logout"))
        .await
        .unwrap();
    b.shot("logout-page").await;
    b.click("button[type=submit]").await;
    assert!(b.text().await.contains("You are signed out"));
    b.shot("signed-out").await;
    b.client.goto(&start).await.unwrap();
    assert!(
        b.client
            .current_url()
            .await
            .unwrap()
            .path()
            .starts_with("/.otpgate/login"),
        "the session is gone"
    );
    b.close().await;
}
