//! The Zscaler-style logins clicked through in a real headless Chromium over HTTPS, with the
//! mails taken from a real SMTP server (aiosmtpd): the one-time link, and the temporary
//! password followed by a chosen password, a sign-out and password logins. Every page is kept
//! as a screenshot under `target/tmp/screenshots/zscaler_flows/`.

use std::time::{Duration, Instant};

use fantoccini::Locator;

use crate::browser::Browser;
use crate::harness::*;
use crate::smtp::{ReceivedMail, SmtpServer};

const CERTS: &[(&str, &[&str])] = &[("site", &["app.test"])];

/// Alice logs in as her work address; her link and temporary-password mails go home.
const ALICE: &str = "alice@corp.example";
const ALICE_HOME: &str = "alice.home@mail.example";

fn config(up: &Upstream, smtp: &SmtpServer) -> String {
    format!(
        "version: 1
{LISTEN_ALL}
tls: {{ certificates: [ {{ cert: site.pem, key: site-key.pem }} ] }}
mail: {{ from: 'Gate <gate@corp.example>', transport: 'smtp://{smtp}?tls=none' }}
identity_providers:
  - {{ type: onetimepin }}
  - {{ type: onetimelink }}
  - {{ type: onetimetoken }}
users:
  - {{ id: {ALICE}, temp_auth_email: {ALICE_HOME}, groups: [engineering] }}
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

/// Waits for the mail to `to` whose subject contains `subject`.
async fn mail(smtp: &SmtpServer, to: &str, subject: &str) -> ReceivedMail {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = smtp.received();
        if let Some(m) = all
            .iter()
            .find(|m| m.subject.contains(subject) && m.recipients().iter().any(|r| r == to))
        {
            return m.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no mail \"{subject}\" for {to}; received: {:?}",
            all.iter()
                .map(|m| (m.recipients(), m.subject.clone()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The line of the text part that is exactly a link to `origin`'s link page.
pub fn link_of(mail: &ReceivedMail, origin: &str) -> String {
    let prefix = format!("{origin}/.otpgate/link?t=");
    mail.text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix} in:\n{}", mail.text))
        .to_owned()
}

/// The line of the text part that is a temporary password (`abcd-efgh-jkmn-pqrs`).
pub fn temp_password_of(mail: &ReceivedMail) -> String {
    mail.text
        .lines()
        .find(|l| {
            l.len() == 19
                && l.split('-').count() == 4
                && l.split('-').all(|g| {
                    g.len() == 4
                        && g.bytes()
                            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'9').contains(&b))
                })
        })
        .unwrap_or_else(|| panic!("no temporary password line in:\n{}", mail.text))
        .to_owned()
}

async fn type_into(b: &Browser, css: &str, text: &str) {
    let field = b
        .client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no field {css}: {e}"));
    field.clear().await.ok();
    field.send_keys(text).await.unwrap();
}

async fn attr(b: &Browser, css: &str, name: &str) -> Option<String> {
    b.client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .attr(name)
        .await
        .unwrap()
}

async fn path(b: &Browser) -> String {
    b.client.current_url().await.unwrap().path().to_owned()
}

/// The JSON the upstream echoed (the page Chromium shows for it).
async fn echoed(b: &Browser) -> serde_json::Value {
    let text = b
        .client
        .find(Locator::Css("pre"))
        .await
        .expect("the upstream's JSON")
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The password form of the login page (and of the temporary-password "sent" page).
const PW_SUBMIT: &str = "#password ~ button[type=submit]";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_walks_through_the_link_and_temporary_password_logins() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let Some(mut b) = Browser::start("zscaler_flows").await else {
        return;
    };
    let up = Upstream::start().await;
    let gw = Gw::start_with(&config(&up, &smtp), CERTS).await;
    let port = gw.https().port();
    let origin = format!("https://app.test:{port}");
    let start = format!("{origin}/docs/page?x=1");

    // === (a) The one-time link ===
    b.client.goto(&start).await.unwrap();
    assert_eq!(path(&b).await, "/.otpgate/login");
    b.shot("login-page").await;
    // One email form with a button per offered method, and the password form.
    for (value, label) in [
        ("pin", "Send me a code"),
        ("link", "Email me a sign-in link"),
        ("token", "Email me a temporary password"),
    ] {
        let button = b
            .client
            .find(Locator::Css(&format!(
                "form button[name=method][value={value}]"
            )))
            .await
            .unwrap_or_else(|e| panic!("no {value} button: {e}"));
        assert_eq!(button.text().await.unwrap(), label);
    }
    assert_eq!(
        attr(&b, "input#password", "type").await.as_deref(),
        Some("password")
    );
    assert_eq!(
        attr(&b, "input#password", "autocomplete").await.as_deref(),
        Some("current-password")
    );
    type_into(&b, "input#email", ALICE).await;
    b.click("button[name=method][value=link]").await;
    let text = b.text().await;
    assert!(text.contains("An email has been sent to you"), "{text}");
    assert!(text.contains("sign-in link"), "{text}");
    b.shot("link-sent").await;

    let link_mail = mail(&smtp, ALICE_HOME, "Your sign-in link for app").await;
    assert_eq!(
        link_mail.recipients(),
        [ALICE_HOME],
        "links go to temp_auth_email"
    );
    let link = link_of(&link_mail, &origin);
    assert!(
        link_mail.text.lines().any(|l| l == link),
        "the link stands alone"
    );

    // Opening the link shows a confirmation page; only its button logs in.
    let hits = up.hits();
    b.client.goto(&link).await.unwrap();
    assert_eq!(path(&b).await, "/.otpgate/link");
    let text = b.text().await;
    assert!(text.contains(&format!("Continue as {ALICE}")), "{text}");
    b.shot("link-confirm").await;
    assert_eq!(up.hits(), hits, "the confirmation page is the gateway's");
    b.click("button[type=submit]").await;
    assert_eq!(b.client.current_url().await.unwrap().as_str(), start);
    let seen = echoed(&b).await;
    assert_eq!(seen["headers"]["x-otpgate-email"][0], ALICE);
    assert_eq!(seen["path"], "/docs/page");
    assert_eq!(seen["query"], "x=1");
    b.shot("link-app").await;

    // The link worked once.
    b.client.goto(&link).await.unwrap();
    let text = b.text().await;
    assert!(
        text.contains("That account does not have access."),
        "{text}"
    );
    b.shot("link-used").await;

    // Keep the link session's cookie (a password change must end it), then drop it from the
    // browser, which is signed out again.
    let link_session = b
        .client
        .get_named_cookie("__Host-otpgate")
        .await
        .expect("the session cookie")
        .value()
        .to_owned();
    let old_cookie = format!("__Host-otpgate={link_session}");
    let r = gw
        .client()
        .get(&start)
        .header("cookie", &old_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the link session works before the change");
    b.client.delete_cookie("__Host-otpgate").await.unwrap();

    // === (b) The temporary password, then a password of one's own ===
    b.client.goto(&start).await.unwrap();
    assert_eq!(path(&b).await, "/.otpgate/login");
    type_into(&b, "input#email", ALICE).await;
    b.click("button[name=method][value=token]").await;
    let text = b.text().await;
    assert!(text.contains("An email has been sent to you"), "{text}");
    assert_eq!(
        attr(&b, "input#pw-email", "value").await.as_deref(),
        Some(ALICE),
        "the sent page's form has the address filled in"
    );
    b.shot("token-sent").await;

    let token_mail = mail(&smtp, ALICE_HOME, "Your temporary password for app").await;
    assert_eq!(
        token_mail.recipients(),
        [ALICE_HOME],
        "temporary passwords go to temp_auth_email"
    );
    let temp = temp_password_of(&token_mail);
    assert!(
        token_mail
            .text
            .contains(&format!("{origin}/.otpgate/login")),
        "{}",
        token_mail.text
    );

    // Signing in with it on the sent page leads to "Choose a new password" only.
    type_into(&b, "input#password", &temp).await;
    b.click(PW_SUBMIT).await;
    assert_eq!(path(&b).await, "/.otpgate/password");
    let text = b.text().await;
    assert!(text.contains("Choose a new password"), "{text}");
    assert!(
        b.client.get_named_cookie("__Host-otpgate-pw").await.is_ok(),
        "a restricted session"
    );
    assert!(
        b.client.get_named_cookie("__Host-otpgate").await.is_err(),
        "no session yet"
    );
    b.shot("choose-password").await;

    // A password on the breached-password list is refused (case-insensitively).
    let common = "Unbelievable";
    type_into(&b, "#new-password", common).await;
    type_into(&b, "#confirm-password", common).await;
    b.click("button[type=submit]").await;
    assert_eq!(path(&b).await, "/.otpgate/password");
    let text = b.text().await;
    assert!(
        text.contains("That password is too common or too easy to guess. Choose another."),
        "{text}"
    );
    b.shot("password-too-common").await;
    // Two different entries.
    let chosen = "violet harbour lantern 7";
    type_into(&b, "#new-password", chosen).await;
    type_into(&b, "#confirm-password", "violet harbour lantern 8").await;
    b.click("button[type=submit]").await;
    assert!(b.text().await.contains("The two passwords differ."));
    b.shot("passwords-differ").await;

    // A good one: stored, and back to the page first asked for.
    type_into(&b, "#new-password", chosen).await;
    type_into(&b, "#confirm-password", chosen).await;
    b.click("button[type=submit]").await;
    assert_eq!(b.client.current_url().await.unwrap().as_str(), start);
    assert_eq!(echoed(&b).await["headers"]["x-otpgate-email"][0], ALICE);
    assert!(
        b.client
            .get_named_cookie("__Host-otpgate-pw")
            .await
            .is_err(),
        "the restricted session cookie is gone"
    );
    b.shot("password-saved-app").await;

    let changed = mail(&smtp, ALICE_HOME, "Your password for app was changed").await;
    assert_eq!(changed.recipients(), [ALICE_HOME]);
    assert!(
        changed.text.contains(ALICE)
            && changed
                .text
                .contains("Your other sessions were signed out."),
        "{}",
        changed.text
    );
    // docs/security.md#27: the session from the link ended with the change.
    let r = gw
        .client()
        .get(&start)
        .header("cookie", &old_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302, "the older session was signed out");

    // Sign out.
    b.client
        .goto(&format!("{origin}/.otpgate/logout"))
        .await
        .unwrap();
    b.shot("logout-page").await;
    b.click("button[type=submit]").await;
    assert!(b.text().await.contains("You are signed out"));
    b.shot("signed-out").await;

    // Later: the login page's password form with the chosen password.
    b.client.goto(&start).await.unwrap();
    assert_eq!(path(&b).await, "/.otpgate/login", "signed out for real");
    type_into(&b, "input#pw-email", ALICE).await;
    type_into(&b, "input#password", chosen).await;
    b.shot("password-login").await;
    b.click(PW_SUBMIT).await;
    assert_eq!(b.client.current_url().await.unwrap().as_str(), start);
    assert_eq!(echoed(&b).await["headers"]["x-otpgate-email"][0], ALICE);
    b.shot("password-login-app").await;

    // Signed out again: the used temporary password and a wrong password both fail alike.
    b.client
        .goto(&format!("{origin}/.otpgate/logout"))
        .await
        .unwrap();
    b.click("button[type=submit]").await;
    for (typed, shot) in [
        (temp.as_str(), "used-temporary-password"),
        ("violet harbour lantern 8", "wrong-password"),
    ] {
        b.client.goto(&start).await.unwrap();
        assert_eq!(path(&b).await, "/.otpgate/login");
        type_into(&b, "input#pw-email", ALICE).await;
        type_into(&b, "input#password", typed).await;
        b.click(PW_SUBMIT).await;
        assert_eq!(path(&b).await, "/.otpgate/login", "{shot}");
        let text = b.text().await;
        assert!(
            text.contains("That account does not have access."),
            "{shot}: {text}"
        );
        assert!(
            b.client.get_named_cookie("__Host-otpgate").await.is_err(),
            "{shot}: no session"
        );
        b.shot(shot).await;
    }

    // Every login is audited with its method.
    let audit = std::fs::read_to_string(gw.config().data_dir.join("audit.log")).unwrap_or_default();
    let methods: Vec<String> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "login.succeeded")
        .map(|e| e["login_method"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        methods,
        ["onetimelink", "onetimetoken", "onetimetoken"],
        "{audit}"
    );
    assert!(!audit.contains(&temp) && !audit.contains(chosen));
    b.close().await;
}
