//! Restarts of the real binary: the limits and pending codes the gateway keeps in memory are
//! saved to `data_dir/state.json` and outlive a graceful restart, and a crash loses at most
//! the last save interval (docs/security.md#42).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{
    Page, Proc, Visitor, audit_events, outbox_mail, restart, sigkill, spawn, zscaler_config,
};
use crate::harness::*;
use crate::login::pin_of;

const LINK_SUBJECT: &str = "Your sign-in link for app";

/// A fresh login page for /docs, then its form for `email` with `method` (`link`, `pin`).
async fn ask(v: &mut Visitor, email: &str, method: &str) -> Page {
    assert_eq!(v.get("/.otpgate/login?rd=%2Fdocs").await.status, 200);
    let p = v
        .post("/.otpgate/login", &[("email", email), ("method", method)])
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    p
}

/// Uses up the mail budget (3 per 15 minutes) of `email` from this client, whose mail goes to
/// `to`: three links, each mailed.
async fn use_up_the_link_budget(
    port: u16,
    ca: &TestCa,
    email: &str,
    to: &str,
    outbox: &Path,
    seen: &mut HashSet<PathBuf>,
) {
    for _ in 0..3 {
        ask(&mut Visitor::new(ca, port), email, "link").await;
        outbox_mail(outbox, to, LINK_SUBJECT, seen).await;
    }
}

/// Asks for one more link for `email` and returns what became of it, from the audit log (the
/// answer is the same whatever happens, docs/security.md#10): `sent`, or why it was not.
async fn one_more_link(port: u16, ca: &TestCa, data: &Path, email: &str) -> String {
    let events = |name: &str| {
        audit_events(data, name)
            .into_iter()
            .filter(|e| e["email"] == email)
            .collect::<Vec<_>>()
    };
    let sent = events("link.sent").len();
    let suppressed = events("link.suppressed").len();
    ask(&mut Visitor::new(ca, port), email, "link").await;
    let mut outcome = None;
    eventually(
        "the link's outcome in the audit log",
        Duration::from_secs(10),
        || {
            outcome = if events("link.sent").len() > sent {
                Some("sent".to_owned())
            } else {
                events("link.suppressed")
                    .get(suppressed)
                    .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
            };
            outcome.is_some()
        },
    )
    .await;
    outcome.unwrap()
}

/// SIGTERM; the process drains, saves and exits 0.
async fn stop(mut p: Proc) {
    p.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), p.child.wait())
        .await
        .expect("exits after draining")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// The saved state, checked: owner-only, naming `email`, and without `pin` in any string.
fn saved_state(file: &Path, email: &str, pin: &str) -> serde_json::Value {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    let mut texts = Vec::new();
    strings(&saved, &mut texts);
    assert!(texts.iter().any(|t| t.contains(email)), "{saved}");
    assert!(!texts.iter().any(|t| t.contains(pin)), "a PIN in {saved}");
    saved
}

/// Waits until the periodic save has written a counter at `n` whose key names `email`.
async fn periodically_saved(file: &Path, email: &str, n: u64) {
    eventually("the periodic save", Duration::from_secs(15), || {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["entries"].as_array().cloned())
            .is_some_and(|entries| {
                entries.iter().any(|e| {
                    e["key"].as_str().is_some_and(|k| k.contains(email))
                        && e["value"]["counter"] == n
                })
            })
    })
    .await;
}

/// Every string in a JSON document.
fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(o) => o.iter().for_each(|(k, v)| {
            out.push(k.clone());
            strings(v, out);
        }),
        _ => {}
    }
}

/// The per-address link budget and a pending PIN across a SIGTERM restart of the binary, then
/// the periodic save across a SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sec_42_counters_survive_a_restart() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    // No resend cooldown, so what limits the fourth link is the budget's 15-minute window.
    let cfg = zscaler_config(
        dir.path(),
        &ca,
        "rate_limits: { code_resend_cooldown: 1ms }",
    );
    let data = dir.path().join("data");
    let outbox = data.join("outbox");
    let state_file = data.join("state.json");
    let mut seen = HashSet::new();
    // Alice's mail goes to her temp_auth_email.
    let (alice, alice_to) = ("alice@corp.example", "alice.home@mail.example");
    let bob = "bob@corp.example";
    // A damaged file from an earlier run is ignored, not fatal; the first save replaces it.
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(&state_file, b"{\"version\":1,\"entries\":[{").unwrap();

    let p = spawn(&cfg, &[]).await;
    let port = p.https.unwrap().port();
    use_up_the_link_budget(port, &ca, alice, alice_to, &outbox, &mut seen).await;
    // Bob asks for a PIN and keeps it for after the restart.
    let mut bob_v = Visitor::new(&ca, port);
    ask(&mut bob_v, bob, "pin").await;
    let pin = pin_of(&outbox_mail(&outbox, bob, "Your sign-in code for app", &mut seen).await);
    stop(p).await;

    // The file is the owner's only and holds no PIN (codes are kept as digests).
    saved_state(&state_file, alice, &pin);

    // Restarted: Alice's budget is still used up, and Bob's PIN still logs him in.
    let p = restart(&cfg).await;
    let port = p.https.unwrap().port();
    assert_eq!(one_more_link(port, &ca, &data, alice).await, "rate_limited");
    let metrics = client_with(&[], Versions::Http1)
        .get(format!("http://{}/metrics", p.admin.unwrap()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("otpgate_rate_limited_total{limit=\"address\"} 1"),
        "{metrics}"
    );
    bob_v.base = format!("https://app.test:{port}");
    let page = bob_v.post("/.otpgate/code", &[("code", &pin)]).await;
    assert_eq!(page.status, 303, "{}", page.body);
    // To the app's root: the target was recorded on the old port, no longer a configured origin.
    assert_eq!(page.location, format!("https://app.test:{port}/"));
    assert!(bob_v.jar.contains_key("__Host-otpgate"), "a session");
    assert_eq!(audit_events(&data, "link.sent").len(), 3, "no fourth link");

    // A crash: what the periodic save wrote survives SIGKILL.
    let erin = "erin@corp.example";
    use_up_the_link_budget(port, &ca, erin, erin, &outbox, &mut seen).await;
    periodically_saved(&state_file, erin, 3).await;
    let mut p = p;
    sigkill(&mut p).await;
    drop(p);
    let p = restart(&cfg).await;
    let port = p.https.unwrap().port();
    assert_eq!(one_more_link(port, &ca, &data, erin).await, "rate_limited");
    assert_eq!(one_more_link(port, &ca, &data, alice).await, "rate_limited");
    stop(p).await;
}
