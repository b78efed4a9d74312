//! Outgoing mail (docs/product.md#s5): a bounded queue in front of the relay, so that a slow,
//! failing or unreachable SMTP server never blocks, fails or changes an HTTP response.
//!
//! [`Mailer::enqueue`] only does a `try_send` on a bounded channel. One worker task takes mails
//! off the queue and delivers a few at a time, each with retries and exponential backoff; a
//! permanent refusal (SMTP 5xx) is not retried. No mail disappears silently: a full queue, a
//! mail given up and a mail abandoned at shutdown each leave an error log line (recipient, app
//! and kind; never the subject or body, which carry the PIN, link or password, docs/security.md#18
//! and 38) and a metric.

mod message;
mod transport;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

pub use self::message::MessageError;
use self::transport::Transport;
use crate::clock::{self, Clock};
use crate::config::MailConfig;
use crate::email::Email;
use crate::metrics::{MAIL_DROPPED, MAIL_FAILED, MAIL_QUEUE_DEPTH, MAIL_RETRIES, MAIL_SENT};
use crate::random::{self, Random};

/// One mail to send. Subject and bodies are already rendered by the caller.
#[derive(Clone)]
pub struct OutgoingMail {
    /// The recipient (validated and normalised).
    pub to: Email,
    /// The subject line; control characters are replaced by spaces.
    pub subject: String,
    /// The text/plain body.
    pub text: String,
    /// An optional text/html alternative.
    pub html: Option<String>,
    /// Metric label: `"pin"`, `"link"`, `"token"`, `"password_changed"`, ...
    pub kind: &'static str,
    /// The app name, for logs and metrics only.
    pub app: String,
}

/// Shows who and what, never the subject or bodies (they carry secrets).
impl fmt::Debug for OutgoingMail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutgoingMail")
            .field("to", &self.to)
            .field("kind", &self.kind)
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

/// Why the mailer could not start.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// `mail.from` could not be parsed.
    #[error("mail.from: {0}")]
    From(#[from] MessageError),
    /// The outbox folder could not be created.
    #[error("mail outbox {path}: {source}")]
    Outbox {
        /// The folder.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// TLS to the relay could not be set up (for example an unusable trust anchor).
    #[error("mail relay {host}: TLS setup: {source}")]
    Tls {
        /// The relay.
        host: String,
        /// What lettre said.
        source: lettre::transport::smtp::Error,
    },
    /// The relay URL names a user but no password is configured.
    #[error("mail.transport names a user but mail.password_file is not set")]
    MissingPassword,
    /// A password is configured but the relay URL names no user.
    #[error("mail.password_file is set but mail.transport names no user (smtp://USER@host)")]
    MissingUser,
    /// `start` was called outside a tokio runtime.
    #[error("the mailer must be started inside a tokio runtime")]
    NoRuntime,
}

/// When failed deliveries are tried again: `attempts` in all, the first retry after
/// `first_delay`, each later one after twice the previous delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// The wait before the first retry.
    pub first_delay: Duration,
}

impl Default for Retry {
    /// 5 attempts: after 1 s, 2 s, 4 s and 8 s.
    fn default() -> Self {
        Self {
            attempts: 5,
            first_delay: Duration::from_secs(1),
        }
    }
}

impl Retry {
    /// The wait after failed attempt `n` (1-based).
    pub fn delay_after(&self, n: u32) -> Duration {
        self.first_delay
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
    }
}

/// Tuning for [`Mailer::start_with`]; [`Default`] is what the gateway uses.
#[derive(Debug, Clone)]
pub struct MailerOptions {
    /// Trust anchors for the relay's certificate beyond the system store and the Mozilla set.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Retry schedule.
    pub retry: Retry,
    /// Limit on one delivery attempt: connect, TLS, AUTH and the whole SMTP conversation
    /// (30 s).
    pub attempt_timeout: Duration,
    /// Mails delivered at the same time, and pooled SMTP connections (8).
    pub concurrency: usize,
}

impl Default for MailerOptions {
    fn default() -> Self {
        Self {
            extra_roots: Vec::new(),
            retry: Retry::default(),
            attempt_timeout: Duration::from_secs(30),
            concurrency: 8,
        }
    }
}

/// The outgoing-mail queue and its worker. Cheap to clone; clones share the queue.
#[derive(Clone, Debug)]
pub struct Mailer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: mpsc::Sender<Queued>,
    shared: Arc<Shared>,
    closed: AtomicBool,
    cancel: CancellationToken,
    worker: Mutex<Option<JoinHandle<()>>>,
}

/// What the worker and the delivery tasks share.
#[derive(Debug)]
struct Shared {
    transport: Transport,
    from: lettre::message::Mailbox,
    retry: Retry,
    clock: Arc<dyn Clock>,
    random: Arc<dyn Random>,
    /// Mails accepted and not yet finished (sent or given up).
    pending: AtomicUsize,
    /// Signalled when `pending` drops to zero.
    idle: Notify,
}

/// A mail in the queue; dropping it (wherever that happens) ends its `pending` count.
struct Queued {
    mail: OutgoingMail,
    pending: Pending,
}

struct Pending(Arc<Shared>);

impl Pending {
    fn new(shared: Arc<Shared>) -> Self {
        let n = shared.pending.fetch_add(1, Ordering::AcqRel) + 1;
        depth_gauge(n);
        Self(shared)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let n = self
            .0
            .pending
            .fetch_sub(1, Ordering::AcqRel)
            .saturating_sub(1);
        depth_gauge(n);
        if n == 0 {
            self.0.idle.notify_waiters();
        }
    }
}

#[allow(clippy::cast_precision_loss)] // queue sizes are far below 2^52
fn depth_gauge(n: usize) {
    metrics::gauge!(MAIL_QUEUE_DEPTH).set(n as f64);
}

impl Mailer {
    /// Builds the transport from the config and spawns the queue worker on the current tokio
    /// runtime.
    pub fn start(config: &MailConfig) -> Result<Self, MailError> {
        Self::start_with(config, &MailerOptions::default())
    }

    /// Like [`Mailer::start`], also trusting `extra_roots` for the relay's certificate (tests
    /// use their own CA).
    pub fn start_with_roots(
        config: &MailConfig,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<Self, MailError> {
        Self::start_with(
            config,
            &MailerOptions {
                extra_roots: extra_roots.to_vec(),
                ..MailerOptions::default()
            },
        )
    }

    /// Like [`Mailer::start`] with explicit tuning.
    pub fn start_with(config: &MailConfig, options: &MailerOptions) -> Result<Self, MailError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| MailError::NoRuntime)?;
        let from = message::parse_from(&config.from)?;
        let concurrency = options.concurrency.clamp(1, 256);
        let transport = Transport::build(
            config,
            &options.extra_roots,
            options.attempt_timeout,
            u32::try_from(concurrency).unwrap_or(8),
        )?;
        let shared = Arc::new(Shared {
            transport,
            from,
            retry: Retry {
                attempts: options.retry.attempts.max(1),
                ..options.retry
            },
            clock: clock::system(),
            random: random::system(),
            pending: AtomicUsize::new(0),
            idle: Notify::new(),
        });
        let (tx, rx) = mpsc::channel(config.queue_size.max(1));
        let cancel = CancellationToken::new();
        let worker = runtime.spawn(work(rx, shared.clone(), concurrency, cancel.clone()));
        depth_gauge(0);
        Ok(Self {
            inner: Arc::new(Inner {
                tx,
                shared,
                closed: AtomicBool::new(false),
                cancel,
                worker: Mutex::new(Some(worker)),
            }),
        })
    }

    /// Queues a mail; never blocks and never waits for SMTP. Returns false when the queue is
    /// full (the mail is dropped with a log line and a metric) or the mailer is shutting down.
    pub fn enqueue(&self, mail: OutgoingMail) -> bool {
        if self.inner.closed.load(Ordering::Acquire) {
            dropped(&mail, "the mailer is shutting down");
            return false;
        }
        let queued = Queued {
            mail,
            pending: Pending::new(self.inner.shared.clone()),
        };
        match self.inner.tx.try_send(queued) {
            Ok(()) => true,
            Err(TrySendError::Full(q)) => {
                dropped(&q.mail, "the mail queue is full");
                false
            }
            Err(TrySendError::Closed(q)) => {
                dropped(&q.mail, "the mailer has stopped");
                false
            }
        }
    }

    /// Sends one mail now, with the queue's retries, and says whether it went out. For the
    /// operator's "Send Authentication Email", which reports per user whether the mail left;
    /// never used on a visitor's request (those go through [`Mailer::enqueue`]).
    pub async fn send_now(&self, mail: &OutgoingMail) -> bool {
        let _pending = Pending::new(self.inner.shared.clone());
        deliver(mail, &self.inner.shared, &self.inner.cancel).await
    }

    /// Mails accepted and not yet finished: waiting in the queue, being sent, or waiting to be
    /// retried.
    pub fn queue_depth(&self) -> usize {
        self.inner.shared.pending.load(Ordering::Acquire)
    }

    /// Stops taking new mail and waits up to `grace` for the queue to drain (for graceful
    /// shutdown). Mails still unsent after `grace` are abandoned, each with an error log line
    /// and a count in `otpgate_mail_failed_total`; pooled relay connections are then closed
    /// (at most 2 s more).
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.closed.store(true, Ordering::Release);
        let shared = &self.inner.shared;
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let idle = shared.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if shared.pending.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                break;
            }
        }
        self.inner.cancel.cancel();
        let worker = self
            .inner
            .worker
            .lock()
            .map(|mut w| w.take())
            .unwrap_or_default();
        if let Some(w) = worker {
            let _ = w.await;
        }
    }
}

/// Logs and counts a mail refused by [`Mailer::enqueue`].
fn dropped(mail: &OutgoingMail, why: &str) {
    metrics::counter!(MAIL_DROPPED, "kind" => mail.kind).increment(1);
    tracing::error!(
        to = %mail.to,
        app = %mail.app,
        kind = mail.kind,
        "mail dropped: {why}"
    );
}

/// Logs and counts a mail that will not be sent.
fn given_up(mail: &OutgoingMail, attempts: u32, why: &str) {
    metrics::counter!(MAIL_FAILED, "kind" => mail.kind).increment(1);
    tracing::error!(
        to = %mail.to,
        app = %mail.app,
        kind = mail.kind,
        attempts,
        "mail not sent: {why}"
    );
}

/// The queue worker: takes mails while a delivery slot is free and starts their deliveries.
async fn work(
    mut rx: mpsc::Receiver<Queued>,
    shared: Arc<Shared>,
    concurrency: usize,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let slot = tokio::select! {
            () = cancel.cancelled() => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let queued = tokio::select! {
            () = cancel.cancelled() => break,
            q = rx.recv() => match q {
                Some(q) => q,
                None => break,
            },
        };
        let shared = shared.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move {
            // Destructured inside the task so the whole `Queued` moves in: a closure-style
            // capture of `queued.mail` alone would drop the `Pending` count right here.
            let Queued { mail, pending } = queued;
            let _ = deliver(&mail, &shared, &cancel).await;
            drop(pending);
            drop(slot);
        });
    }
    if cancel.is_cancelled() {
        rx.close();
        while let Ok(q) = rx.try_recv() {
            given_up(&q.mail, 0, "abandoned at shutdown");
        }
    }
    while tasks.join_next().await.is_some() {}
    drop(rx);
    let _ = tokio::time::timeout(Duration::from_secs(2), shared.transport.close()).await;
}

/// Delivers one mail with retries; logs and counts the outcome; true when it was sent.
async fn deliver(mail: &OutgoingMail, shared: &Shared, cancel: &CancellationToken) -> bool {
    let built = match message::build(
        &shared.from,
        mail,
        shared.clock.now(),
        shared.random.as_ref(),
    ) {
        Ok(b) => b,
        Err(e) => {
            given_up(mail, 0, &e.to_string());
            return false;
        }
    };
    let attempts = shared.retry.attempts;
    for attempt in 1..=attempts {
        let sent = tokio::select! {
            () = cancel.cancelled() => {
                given_up(mail, attempt - 1, "abandoned at shutdown");
                return false;
            }
            r = shared.transport.send(
                &built.envelope,
                &built.bytes,
                &mail.to,
                shared.clock.as_ref(),
                shared.random.as_ref(),
            ) => r,
        };
        let err = match sent {
            Ok(()) => {
                metrics::counter!(MAIL_SENT, "kind" => mail.kind).increment(1);
                tracing::info!(
                    to = %mail.to,
                    app = %mail.app,
                    kind = mail.kind,
                    attempt,
                    "mail sent"
                );
                return true;
            }
            Err(e) => e,
        };
        if err.permanent {
            given_up(
                mail,
                attempt,
                &format!("the relay refused it: {}", err.reason),
            );
            return false;
        }
        if attempt == attempts {
            given_up(mail, attempt, &err.reason);
            return false;
        }
        let delay = shared.retry.delay_after(attempt);
        tracing::warn!(
            to = %mail.to,
            app = %mail.app,
            kind = mail.kind,
            attempt,
            error = %err.reason,
            "mail delivery failed; retrying in {delay:?}"
        );
        metrics::counter!(MAIL_RETRIES, "kind" => mail.kind).increment(1);
        tokio::select! {
            () = cancel.cancelled() => {
                given_up(mail, attempt, "abandoned at shutdown");
                return false;
            }
            () = tokio::time::sleep(delay) => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MailTransport;

    #[test]
    fn default_backoff_is_1_2_4_8_seconds() {
        let r = Retry::default();
        assert_eq!(r.attempts, 5);
        let delays: Vec<u64> = (1..r.attempts)
            .map(|n| r.delay_after(n).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8]);
        assert_eq!(
            Retry {
                attempts: 100,
                first_delay: Duration::from_secs(1)
            }
            .delay_after(90),
            Duration::from_secs(65_536),
            "the exponent is capped"
        );
    }

    #[test]
    fn debug_never_shows_subject_or_body() {
        let m = OutgoingMail {
            to: Email::parse("a@b.example").unwrap(),
            subject: "subject-123456".to_owned(),
            text: "text-123456".to_owned(),
            html: Some("html-123456".to_owned()),
            kind: "pin",
            app: "wiki".to_owned(),
        };
        let d = format!("{m:?}");
        assert!(!d.contains("123456"), "{d}");
        assert!(d.contains("a@b.example") && d.contains("wiki"));
    }

    #[test]
    fn start_needs_a_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let config = MailConfig {
            from: "a@b.example".to_owned(),
            transport: MailTransport::Outbox(dir.path().join("outbox")),
            password: None,
            queue_size: 1,
        };
        assert!(matches!(Mailer::start(&config), Err(MailError::NoRuntime)));
    }

    #[tokio::test]
    async fn outbox_mailer_sends_and_drains_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = dir.path().join("outbox");
        let config = MailConfig {
            from: "Wiki <no-reply@corp.example>".to_owned(),
            transport: MailTransport::Outbox(outbox.clone()),
            password: None,
            queue_size: 100,
        };
        let mailer = Mailer::start(&config).unwrap();
        for i in 0..20 {
            assert!(mailer.enqueue(OutgoingMail {
                to: Email::parse(&format!("user{i}@example.org")).unwrap(),
                subject: "Code".to_owned(),
                text: format!("{i:06}\n"),
                html: None,
                kind: "pin",
                app: "wiki".to_owned(),
            }));
        }
        mailer.shutdown(Duration::from_secs(10)).await;
        assert_eq!(mailer.queue_depth(), 0);
        let count = std::fs::read_dir(&outbox)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "eml")
            })
            .count();
        assert_eq!(count, 20);
        let late = OutgoingMail {
            to: Email::parse("late@example.org").unwrap(),
            subject: "Code".to_owned(),
            text: "1".to_owned(),
            html: None,
            kind: "pin",
            app: "wiki".to_owned(),
        };
        assert!(!mailer.enqueue(late), "no mail is taken after shutdown");
    }
}
