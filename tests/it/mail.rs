//! The mailer against real SMTP servers (aiosmtpd, see smtp.rs): plain, STARTTLS required,
//! smtps, AUTH; a relay that hangs or is down; a full queue; the outbox; shutdown.
//!
//! Metrics are process-wide, so each test labels its mails with a `kind` of its own and reads
//! only those series.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use otpgate::config::MailConfig;
use otpgate::email::Email;
use otpgate::mailer::{Mailer, MailerOptions, OutgoingMail, Retry};
use tokio::net::TcpListener;

use crate::harness::{TestCa, eventually, init};
use crate::smtp::SmtpServer;

const WAIT: Duration = Duration::from_secs(20);

/// The `mail` section of a config file loaded through the real loader (URL parsing included).
fn mail_config(dir: &Path, mail: &str) -> MailConfig {
    let yaml = format!(
        "version: 1
listen: {{ http: 127.0.0.1:0 }}
data_dir: {data}
mail:
{mail}
apps:
  - name: wiki
    hosts: [wiki.test]
    upstream: builtin:echo
    policies: [ {{ name: open, action: bypass }} ]
",
        data = dir.join("data").display()
    );
    otpgate::config::load_str(&yaml, &dir.join("otpgate.yaml"), Vec::new())
        .unwrap_or_else(|e| panic!("test config does not load: {:#?}", e.errors))
        .config
        .mail
}

fn smtp_config(dir: &Path, url: &str, extra: &str) -> MailConfig {
    mail_config(
        dir,
        &format!(
            "  from: \"Wiki Access <no-reply@corp.example>\"
  transport: \"{url}\"
{extra}"
        ),
    )
}

fn mail(to: &str, kind: &'static str, html: bool) -> OutgoingMail {
    OutgoingMail {
        to: Email::parse(to).unwrap(),
        subject: "Your sign-in code for Wiki".to_owned(),
        text: "Your code for Wiki:\n\n482913\n\nIt expires in 10 minutes.\n".to_owned(),
        html: html.then(|| "<p>Your code for Wiki: <b>482913</b></p>".to_owned()),
        kind,
        app: "wiki".to_owned(),
    }
}

/// The value of `name{kind="KIND"}` in the Prometheus output (0 when absent).
fn metric(name: &str, kind: &str) -> u64 {
    let prefix = format!("{name}{{kind=\"{kind}\"}} ");
    otpgate::metrics::render()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

fn setup() {
    init();
    otpgate::metrics::install().expect("the metrics recorder");
}

/// Fast retries so failure paths finish in a few seconds.
fn fast(attempts: u32, attempt_timeout: Duration) -> MailerOptions {
    MailerOptions {
        retry: Retry {
            attempts,
            first_delay: Duration::from_millis(100),
        },
        attempt_timeout,
        ..MailerOptions::default()
    }
}

fn assert_code_mail(m: &crate::smtp::ReceivedMail, to: &str) {
    assert_eq!(m.sender_address(), "no-reply@corp.example");
    assert!(m.from.contains("Wiki Access"), "{}", m.from);
    assert_eq!(m.to, to);
    assert_eq!(m.subject, "Your sign-in code for Wiki");
    assert!(
        m.text.lines().any(|l| l == "482913"),
        "the code stands alone on its line: {:?}",
        m.text
    );
}

/// A TCP server that accepts connections and never says a word (a hung relay).
async fn silent_relay() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_smtp_delivers_text_and_html() {
    setup();
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("smtp://127.0.0.1:{}?tls=none", smtp.addr.port());
    let mailer = Mailer::start(&smtp_config(dir.path(), &url, "")).unwrap();
    let sent_before = metric("otpgate_mail_sent_total", "it_plain");
    assert!(mailer.enqueue(mail("Alice@Example.org", "it_plain", false)));
    assert!(mailer.enqueue(mail("bob@example.org", "it_plain", true)));

    let alice = smtp.wait_for_mail("alice@example.org", WAIT).await;
    assert_code_mail(&alice, "alice@example.org");
    assert_eq!(alice.html, None);
    let raw = String::from_utf8_lossy(&alice.raw);
    assert!(raw.contains("Message-ID: <"), "{raw}");
    assert!(raw.contains("Date: "), "{raw}");
    assert!(
        raw.contains("X-MailFrom: no-reply@corp.example"),
        "envelope sender: {raw}"
    );

    let bob = smtp.wait_for_mail("bob@example.org", WAIT).await;
    assert_code_mail(&bob, "bob@example.org");
    assert_eq!(
        bob.html.as_deref().map(str::trim_end),
        Some("<p>Your code for Wiki: <b>482913</b></p>")
    );

    eventually("sent metric", WAIT, || {
        metric("otpgate_mail_sent_total", "it_plain") == sent_before + 2
    })
    .await;
    eventually("an empty queue", WAIT, || mailer.queue_depth() == 0).await;
    mailer.shutdown(Duration::from_secs(5)).await;
    assert_eq!(smtp.count(), 2);
    assert_eq!(smtp.received().len(), 2);
    assert!(smtp.maildir().join("new").is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_required_delivers_to_a_relay_with_a_trusted_certificate() {
    setup();
    let ca = TestCa::new();
    let leaf = ca.leaf(&["localhost", "127.0.0.1"]);
    let Some(smtp) = SmtpServer::start_starttls(&leaf).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // smtp:// without ?tls= means STARTTLS, required.
    let url = format!("smtp://127.0.0.1:{}", smtp.addr.port());
    let config = smtp_config(dir.path(), &url, "");
    assert!(matches!(
        config.transport,
        otpgate::config::MailTransport::Smtp {
            tls: otpgate::config::SmtpTls::StartTls,
            ..
        }
    ));
    let mailer = Mailer::start_with_roots(&config, &[ca.der()]).unwrap();
    assert!(mailer.enqueue(mail("carol@example.org", "it_starttls", true)));
    let m = smtp.wait_for_mail("carol@example.org", WAIT).await;
    assert_code_mail(&m, "carol@example.org");
    assert!(m.html.is_some());
    mailer.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_required_never_falls_back_to_cleartext_or_an_untrusted_certificate() {
    setup();
    let dir = tempfile::tempdir().unwrap();

    // A relay that offers no STARTTLS: nothing is sent in the clear.
    let Some(plain) = SmtpServer::start().await else {
        return;
    };
    let url = format!("smtp://127.0.0.1:{}?tls=required", plain.addr.port());
    let mailer = Mailer::start_with(
        &smtp_config(dir.path(), &url, ""),
        &fast(2, Duration::from_secs(5)),
    )
    .unwrap();
    let failed = metric("otpgate_mail_failed_total", "it_no_starttls");
    assert!(mailer.enqueue(mail("dave@example.org", "it_no_starttls", false)));
    eventually("the mail given up", WAIT, || {
        metric("otpgate_mail_failed_total", "it_no_starttls") == failed + 1
    })
    .await;
    assert_eq!(plain.count(), 0, "no mail went out without TLS");

    // A relay whose certificate chains to a CA the mailer does not trust.
    let ca = TestCa::new();
    let Some(tls) = SmtpServer::start_starttls(&ca.leaf(&["127.0.0.1"])).await else {
        return;
    };
    let url = format!("smtp://127.0.0.1:{}", tls.addr.port());
    let mailer = Mailer::start_with(
        &smtp_config(dir.path(), &url, ""),
        &fast(2, Duration::from_secs(5)),
    )
    .unwrap();
    let failed = metric("otpgate_mail_failed_total", "it_untrusted");
    assert!(mailer.enqueue(mail("erin@example.org", "it_untrusted", false)));
    eventually("the mail given up", WAIT, || {
        metric("otpgate_mail_failed_total", "it_untrusted") == failed + 1
    })
    .await;
    assert_eq!(tls.count(), 0, "no mail went to an unverified relay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opportunistic_tls_upgrades_when_offered_and_sends_in_the_clear_otherwise() {
    setup();
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    // This server refuses MAIL before STARTTLS, so delivery proves the upgrade happened.
    let Some(tls) = SmtpServer::start_starttls(&ca.leaf(&["127.0.0.1"])).await else {
        return;
    };
    let url = format!("smtp://127.0.0.1:{}?tls=opportunistic", tls.addr.port());
    let mailer = Mailer::start_with_roots(&smtp_config(dir.path(), &url, ""), &[ca.der()]).unwrap();
    assert!(mailer.enqueue(mail("olga@example.org", "it_opportunistic", false)));
    assert_code_mail(
        &tls.wait_for_mail("olga@example.org", WAIT).await,
        "olga@example.org",
    );
    mailer.shutdown(Duration::from_secs(5)).await;

    let Some(plain) = SmtpServer::start().await else {
        return;
    };
    let url = format!("smtp://127.0.0.1:{}?tls=opportunistic", plain.addr.port());
    let mailer = Mailer::start(&smtp_config(dir.path(), &url, "")).unwrap();
    assert!(mailer.enqueue(mail("pete@example.org", "it_opportunistic", false)));
    assert_code_mail(
        &plain.wait_for_mail("pete@example.org", WAIT).await,
        "pete@example.org",
    );
    mailer.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtps_delivers_over_implicit_tls() {
    setup();
    let ca = TestCa::new();
    let Some(smtp) = SmtpServer::start_smtps(&ca.leaf(&["127.0.0.1"])).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("smtps://127.0.0.1:{}", smtp.addr.port());
    let mailer = Mailer::start_with_roots(&smtp_config(dir.path(), &url, ""), &[ca.der()]).unwrap();
    assert!(mailer.enqueue(mail("frank@example.org", "it_smtps", false)));
    let m = smtp.wait_for_mail("frank@example.org", WAIT).await;
    assert_code_mail(&m, "frank@example.org");
    mailer.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_delivers_with_the_password_and_a_wrong_one_is_not_retried() {
    setup();
    let ca = TestCa::new();
    let leaf = ca.leaf(&["127.0.0.1"]);
    let Some(smtp) = SmtpServer::start_auth(&leaf, "gateway", "correct horse 42").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("smtp://gateway@127.0.0.1:{}", smtp.addr.port());

    let config = smtp_config(dir.path(), &url, "  password: \"correct horse 42\"");
    let mailer = Mailer::start_with_roots(&config, &[ca.der()]).unwrap();
    assert!(mailer.enqueue(mail("grace@example.org", "it_auth", false)));
    let m = smtp.wait_for_mail("grace@example.org", WAIT).await;
    assert_code_mail(&m, "grace@example.org");
    mailer.shutdown(Duration::from_secs(5)).await;

    // 535 is permanent: given up at once (the default schedule would retry after 1 s).
    let config = smtp_config(dir.path(), &url, "  password: \"wrong\"");
    let mailer = Mailer::start_with_roots(&config, &[ca.der()]).unwrap();
    let failed = metric("otpgate_mail_failed_total", "it_auth_wrong");
    let started = Instant::now();
    assert!(mailer.enqueue(mail("heidi@example.org", "it_auth_wrong", false)));
    eventually("the mail given up", WAIT, || {
        metric("otpgate_mail_failed_total", "it_auth_wrong") == failed + 1
    })
    .await;
    assert_eq!(metric("otpgate_mail_retries_total", "it_auth_wrong"), 0);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(smtp.count(), 1, "only the authenticated mail arrived");
    mailer.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_relay_never_blocks_enqueue_and_failures_are_retried_then_counted() {
    setup();
    let (addr, accepted) = silent_relay().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("smtp://127.0.0.1:{}?tls=none", addr.port());
    let mailer = Mailer::start_with(
        &smtp_config(dir.path(), &url, ""),
        &fast(3, Duration::from_millis(500)),
    )
    .unwrap();
    let kind = "it_hung_relay";
    let (failed, retries) = (
        metric("otpgate_mail_failed_total", kind),
        metric("otpgate_mail_retries_total", kind),
    );

    assert!(mailer.enqueue(mail("ivan@example.org", kind, false)));
    // The worker is now stuck waiting for a greeting that never comes.
    eventually("a connection to the relay", WAIT, || {
        accepted.load(Ordering::SeqCst) > 0
    })
    .await;
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let t = Instant::now();
        assert!(mailer.enqueue(mail(&format!("user{i}@example.org"), kind, false)));
        slowest = slowest.max(t.elapsed());
    }
    // A blocking enqueue would take at least the 500 ms attempt timeout.
    assert!(
        slowest < Duration::from_millis(100),
        "enqueue waited {slowest:?} on a hung relay"
    );
    assert!(mailer.queue_depth() >= 20);

    // 21 mails × 3 attempts of 500 ms, 8 at a time: about 5 s.
    eventually("every mail given up", Duration::from_secs(60), || {
        metric("otpgate_mail_failed_total", kind) == failed + 21
    })
    .await;
    assert_eq!(metric("otpgate_mail_retries_total", kind), retries + 42);
    assert_eq!(mailer.queue_depth(), 0);
    assert!(accepted.load(Ordering::SeqCst) >= 21 * 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_relay_is_retried_with_backoff_then_counted() {
    setup();
    // A port nobody listens on: connections are refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("smtp://127.0.0.1:{port}?tls=none");
    let mailer = Mailer::start_with(
        &smtp_config(dir.path(), &url, ""),
        &fast(4, Duration::from_secs(2)),
    )
    .unwrap();
    let kind = "it_unreachable";
    let (failed, retries) = (
        metric("otpgate_mail_failed_total", kind),
        metric("otpgate_mail_retries_total", kind),
    );
    let t = Instant::now();
    assert!(mailer.enqueue(mail("judy@example.org", kind, false)));
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    eventually("the mail given up", WAIT, || {
        metric("otpgate_mail_failed_total", kind) == failed + 1
    })
    .await;
    // Backoff 100 + 200 + 400 ms before the 2nd, 3rd and 4th attempts.
    assert!(
        t.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(metric("otpgate_mail_retries_total", kind), retries + 3);
    assert_eq!(mailer.queue_depth(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_new_mail_and_shutdown_accounts_for_the_rest() {
    setup();
    let (addr, _) = silent_relay().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("smtp://127.0.0.1:{}?tls=none", addr.port());
    let config = smtp_config(dir.path(), &url, "  queue_size: 2");
    assert_eq!(config.queue_size, 2);
    let mailer = Mailer::start_with(
        &config,
        &MailerOptions {
            concurrency: 1,
            ..fast(5, Duration::from_secs(30))
        },
    )
    .unwrap();
    let kind = "it_full_queue";
    let (dropped, failed) = (
        metric("otpgate_mail_dropped_total", kind),
        metric("otpgate_mail_failed_total", kind),
    );
    // One mail in flight (hung), two queued, the rest refused.
    let accepted = (0..10)
        .filter(|i| mailer.enqueue(mail(&format!("q{i}@example.org"), kind, false)))
        .count();
    assert!((2..=3).contains(&accepted), "accepted {accepted}");
    assert_eq!(
        metric("otpgate_mail_dropped_total", kind),
        dropped + (10 - accepted) as u64
    );
    assert_eq!(mailer.queue_depth(), accepted);

    // Shutdown with no grace: what could not be sent is given up, logged and counted.
    let t = Instant::now();
    mailer.shutdown(Duration::from_millis(200)).await;
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(
        metric("otpgate_mail_failed_total", kind),
        failed + accepted as u64
    );
    assert_eq!(mailer.queue_depth(), 0);
    assert!(!mailer.enqueue(mail("late@example.org", kind, false)));
    assert_eq!(
        metric("otpgate_mail_dropped_total", kind),
        dropped + (11 - accepted) as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_queue_to_a_live_relay() {
    setup();
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("smtp://127.0.0.1:{}?tls=none", smtp.addr.port());
    let mailer = Mailer::start(&smtp_config(dir.path(), &url, "")).unwrap();
    for i in 0..30 {
        assert!(mailer.enqueue(mail(&format!("d{i}@example.org"), "it_drain", false)));
    }
    mailer.shutdown(WAIT).await;
    assert_eq!(mailer.queue_depth(), 0);
    assert_eq!(
        smtp.count(),
        30,
        "every queued mail was delivered before shutdown returned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_holds_one_parseable_file_per_mail() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let config = mail_config(
        dir.path(),
        "  from: \"Wiki Access <no-reply@corp.example>\"\n  transport: outbox",
    );
    let outbox = dir.path().join("data/outbox");
    assert_eq!(
        config.transport,
        otpgate::config::MailTransport::Outbox(outbox.clone())
    );
    let mailer = Mailer::start(&config).unwrap();
    assert!(mailer.enqueue(mail("kim@example.org", "it_outbox", true)));
    let files = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&outbox)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };
    eventually("the outbox file", WAIT, || !files().is_empty()).await;
    mailer.shutdown(Duration::from_secs(5)).await;
    let files = files();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].extension().unwrap(), "eml");
    let m = crate::smtp::ReceivedMail::parse(std::fs::read(&files[0]).unwrap());
    assert_code_mail(&m, "kim@example.org");
    assert_eq!(
        m.html.as_deref().map(str::trim_end),
        Some("<p>Your code for Wiki: <b>482913</b></p>")
    );
}
