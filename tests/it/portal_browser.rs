//! The single sign-on portal clicked through in a real headless Chromium over HTTPS, the PIN
//! from a real SMTP server: log in once through the portal on app A, open B and C with no
//! second login, see the launcher list the three apps, sign out at the portal and be signed out
//! of all three (docs/security.md#44, #47). Screenshots: `target/tmp/screenshots/portal_sso/`.

use std::time::{Duration, Instant};

use fantoccini::Locator;

use crate::browser::Browser;
use crate::harness::*;
use crate::login::pin_of;
use crate::portal::{ALICE, CERTS, config, free_port};
use crate::smtp::SmtpServer;

async fn url(b: &Browser) -> url::Url {
    b.client.current_url().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_47_browser_signs_in_once_for_three_apps_and_out_of_all_of_them() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let Some(mut b) = Browser::start("portal_sso").await else {
        return;
    };
    let up = Upstream::start().await;
    let port = free_port();
    let gw = Gw::start_with(&config(port, &up, &smtp), CERTS).await;
    let app = |name: &str, path: &str| format!("https://{name}.test:{port}{path}");

    // App A sends the browser to the portal's login.
    b.client.goto(&app("a", "/docs?x=1")).await.unwrap();
    let at = url(&b).await;
    assert_eq!(at.host_str(), Some("auth.test"), "{at}");
    assert_eq!(at.path(), "/.otpgate/login");
    b.shot("portal-login").await;
    b.fill_and_submit("input[name=email]", ALICE).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while smtp.received().is_empty() {
        assert!(Instant::now() < deadline, "no mail");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let pin = pin_of(&smtp.received()[0]);
    b.shot("portal-code").await;
    b.fill_and_submit("input[name=code]", &pin).await;
    let at = url(&b).await;
    assert_eq!(
        at.as_str(),
        app("a", "/docs?x=1"),
        "back on A without the code"
    );
    assert!(b.text().await.contains(ALICE));
    b.shot("app-a").await;

    // B and C: no second login.
    for name in ["b", "c"] {
        b.client.goto(&app(name, "/")).await.unwrap();
        let at = url(&b).await;
        assert_eq!(at.as_str(), app(name, "/"), "{name}");
        assert!(b.text().await.contains(ALICE), "{name}");
        b.shot(&format!("app-{name}")).await;
    }
    assert_eq!(smtp.received().len(), 1, "one login, one mail");

    // The launcher lists the three apps, with working links.
    b.client
        .goto(&format!("https://auth.test:{port}/"))
        .await
        .unwrap();
    let text = b.text().await;
    assert!(text.contains("Your apps"), "{text}");
    for name in ["a", "b", "c"] {
        let link = b
            .client
            .find(Locator::Css(&format!(
                "ul.apps a[href='{}']",
                app(name, "/")
            )))
            .await
            .unwrap_or_else(|e| panic!("no launcher link to {name}: {e}"));
        assert_eq!(link.text().await.unwrap(), name);
    }
    b.shot("launcher").await;

    // Sign out at the portal: every app asks for a login again.
    b.client
        .goto(&format!("https://auth.test:{port}/.otpgate/logout"))
        .await
        .unwrap();
    b.click("button[type=submit]").await;
    assert!(b.text().await.contains("You are signed out"));
    b.shot("signed-out").await;
    for name in ["a", "b", "c"] {
        b.client.goto(&app(name, "/")).await.unwrap();
        let at = url(&b).await;
        assert_eq!(at.host_str(), Some("auth.test"), "{name} still open: {at}");
        assert_eq!(at.path(), "/.otpgate/login");
    }
    drop(gw);
    b.close().await;
}
