//! Where a built message goes: an outbox folder (development) or an SMTP relay.
//!
//! The relay is reached with lettre's pooled async client over rustls with the ring provider
//! (no OpenSSL, no aws-lc). lettre 0.11 takes no ready-made `rustls::ClientConfig`, so the
//! trust anchors are handed to its rustls builder instead: the Mozilla set (webpki-roots), the
//! system store and any extra roots the caller passes (tests). aws-lc-rs is not compiled in,
//! so the provider lettre picks (the process default, else ring) is always ring.
//!
//! lettre's async client bounds only the TCP connect; a relay that accepts and then stalls
//! would hold an attempt forever. Each attempt therefore has an overall deadline. An attempt
//! cut off mid-conversation may leave a pooled connection out of step with the relay (the
//! next command would read the previous reply), so a timeout also discards the whole pool and
//! the next attempt starts from a fresh one.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::transport::smtp::{AsyncSmtpTransport, AsyncSmtpTransportBuilder, PoolConfig};
use lettre::{AsyncTransport as _, Tokio1Executor};
use rustls::pki_types::CertificateDer;

use super::MailError;
use crate::clock::Clock;
use crate::config::{MailConfig, MailTransport, SmtpTls};
use crate::email::Email;
use crate::random::{self, Random};

/// How long an idle pooled SMTP connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// A failed delivery attempt.
#[derive(Debug)]
pub(crate) struct SendError {
    /// A permanent refusal (SMTP 5xx): retrying cannot help.
    pub(crate) permanent: bool,
    /// What went wrong (never the message).
    pub(crate) reason: String,
}

/// The configured way out.
pub(crate) enum Transport {
    /// One `.eml` file per message in this folder.
    Outbox(PathBuf),
    /// An SMTP relay.
    Smtp(Box<Relay>),
}

/// An SMTP relay and the pooled client talking to it.
pub(crate) struct Relay {
    host: String,
    port: u16,
    tls: SmtpTls,
    /// Makes a fresh client (and pool) after a timed-out attempt.
    builder: AsyncSmtpTransportBuilder,
    client: ArcSwap<AsyncSmtpTransport<Tokio1Executor>>,
    attempt_timeout: Duration,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Outbox(dir) => f.debug_tuple("Outbox").field(dir).finish(),
            Self::Smtp(r) => f
                .debug_struct("Smtp")
                .field("host", &r.host)
                .field("port", &r.port)
                .field("tls", &r.tls)
                .finish_non_exhaustive(),
        }
    }
}

impl Transport {
    /// Builds the transport. For SMTP no connection is made yet (the pool connects on the
    /// first mail); for the outbox the folder is created.
    pub(crate) fn build(
        config: &MailConfig,
        extra_roots: &[CertificateDer<'static>],
        attempt_timeout: Duration,
        max_connections: u32,
    ) -> Result<Self, MailError> {
        match &config.transport {
            MailTransport::Outbox(dir) => {
                create_private_dir(dir).map_err(|source| MailError::Outbox {
                    path: dir.clone(),
                    source,
                })?;
                Ok(Self::Outbox(dir.clone()))
            }
            MailTransport::Smtp {
                host,
                port,
                username,
                tls,
            } => {
                let lettre_tls = match tls {
                    SmtpTls::None => Tls::None,
                    SmtpTls::StartTls => Tls::Required(tls_parameters(host, extra_roots)?),
                    SmtpTls::Implicit => Tls::Wrapper(tls_parameters(host, extra_roots)?),
                    SmtpTls::Opportunistic => {
                        Tls::Opportunistic(tls_parameters(host, extra_roots)?)
                    }
                };
                let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
                    .port(*port)
                    .tls(lettre_tls)
                    .timeout(Some(attempt_timeout))
                    .pool_config(
                        PoolConfig::new()
                            .max_size(max_connections)
                            .idle_timeout(POOL_IDLE),
                    );
                match (username, &config.password) {
                    (Some(user), Some(password)) => {
                        builder = builder.credentials(Credentials::new(
                            user.clone(),
                            password.expose().to_owned(),
                        ));
                    }
                    (None, None) => {}
                    (Some(_), None) => return Err(MailError::MissingPassword),
                    (None, Some(_)) => return Err(MailError::MissingUser),
                }
                Ok(Self::Smtp(Box::new(Relay {
                    host: host.clone(),
                    port: *port,
                    tls: *tls,
                    client: ArcSwap::from_pointee(builder.clone().build()),
                    builder,
                    attempt_timeout,
                })))
            }
        }
    }

    /// One delivery attempt.
    pub(crate) async fn send(
        &self,
        envelope: &Envelope,
        bytes: &[u8],
        to: &Email,
        clock: &dyn Clock,
        random: &dyn Random,
    ) -> Result<(), SendError> {
        match self {
            Self::Outbox(dir) => {
                let name = format!(
                    "{}-{}.eml",
                    clock.now().as_millis(),
                    random::bytes::<8>(random)
                        .map(|b| random::hex(&b))
                        .map_err(|e| SendError {
                            permanent: false,
                            reason: e.to_string(),
                        })?
                );
                let dir = dir.clone();
                let bytes = bytes.to_vec();
                let path = tokio::task::spawn_blocking(move || write_outbox(&dir, &name, &bytes))
                    .await
                    .map_err(|e| SendError {
                        permanent: false,
                        reason: e.to_string(),
                    })?
                    .map_err(|e| SendError {
                        permanent: false,
                        reason: e.to_string(),
                    })?;
                tracing::info!(
                    to = %to,
                    file = %path.display(),
                    "mail written to the outbox"
                );
                Ok(())
            }
            Self::Smtp(relay) => {
                let Relay {
                    client,
                    builder,
                    attempt_timeout,
                    ..
                } = relay.as_ref();
                let current = client.load_full();
                match tokio::time::timeout(*attempt_timeout, current.send_raw(envelope, bytes))
                    .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(SendError {
                        permanent: e.is_permanent(),
                        // lettre's `Display` already carries the cause.
                        reason: e.to_string(),
                    }),
                    Err(_) => {
                        // Replace the pool unless another attempt already did.
                        let fresh = Arc::new(builder.clone().build());
                        let _ = client.compare_and_swap(&current, fresh);
                        Err(SendError {
                            permanent: false,
                            reason: format!("no answer from the relay within {attempt_timeout:?}"),
                        })
                    }
                }
            }
        }
    }

    /// Closes pooled connections (politely, with QUIT).
    pub(crate) async fn close(&self) {
        if let Self::Smtp(relay) = self {
            relay.client.load_full().shutdown().await;
        }
    }
}

/// TLS for `host`: the Mozilla roots, the system store and `extra`.
fn tls_parameters(
    host: &str,
    extra: &[CertificateDer<'static>],
) -> Result<TlsParameters, MailError> {
    let tls_err = |source| MailError::Tls {
        host: host.to_owned(),
        source,
    };
    let mut builder =
        TlsParameters::builder(host.to_owned()).certificate_store(CertificateStore::WebpkiRoots);
    // lettre refuses the whole set when one anchor does not parse; the system store may hold
    // such certificates (rustls skips them too).
    let system = crate::trust::system_roots()
        .iter()
        .filter(|der| webpki::anchor_from_trusted_cert(der).is_ok());
    for der in system.chain(extra) {
        builder =
            builder.add_root_certificate(Certificate::from_der(der.to_vec()).map_err(tls_err)?);
    }
    builder.build_rustls().map_err(tls_err)
}

/// Creates the outbox (readable by its owner only: the files hold PINs and passwords).
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(0o700);
    }
    b.create(dir)
}

/// Writes `bytes` to `dir/name` through a hidden temporary file and a rename, so a reader of
/// the folder never sees half a message.
fn write_outbox(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    let result = o
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::random::SystemRandom;

    #[test]
    fn outbox_files_appear_whole_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = dir.path().join("a/outbox");
        create_private_dir(&outbox).unwrap();
        let path = write_outbox(&outbox, "1-ab.eml", b"Subject: x\r\n\r\nbody\r\n").unwrap();
        assert_eq!(path, outbox.join("1-ab.eml"));
        assert_eq!(std::fs::read(&path).unwrap(), b"Subject: x\r\n\r\nbody\r\n");
        let names: Vec<_> = std::fs::read_dir(&outbox)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["1-ab.eml"], "no temporary file is left behind");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o077;
            assert_eq!(mode(&outbox), 0);
            assert_eq!(mode(&path), 0);
        }
        assert!(write_outbox(&outbox.join("missing"), "x.eml", b"x").is_err());
    }

    #[tokio::test]
    async fn outbox_transport_writes_a_parseable_message() {
        let dir = tempfile::tempdir().unwrap();
        let config = MailConfig {
            from: "Wiki <no-reply@corp.example>".to_owned(),
            transport: MailTransport::Outbox(dir.path().join("outbox")),
            password: None,
            queue_size: 10,
        };
        let t = Transport::build(&config, &[], Duration::from_secs(5), 1).unwrap();
        let mail = super::super::OutgoingMail {
            to: Email::parse("bob@example.org").unwrap(),
            subject: "Code".to_owned(),
            text: "123456\n".to_owned(),
            html: None,
            kind: "pin",
            app: "wiki".to_owned(),
        };
        let random = SystemRandom::default();
        let clock = ManualClock::at(1_700_000_000);
        let from = super::super::message::parse_from(&config.from).unwrap();
        let built = super::super::message::build(&from, &mail, clock.now(), &random).unwrap();
        t.send(&built.envelope, &built.bytes, &mail.to, &clock, &random)
            .await
            .unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path().join("outbox"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1);
        let name = files[0].file_name().unwrap().to_str().unwrap().to_owned();
        assert!(
            name.starts_with("1700000000000-") && name.ends_with(".eml"),
            "{name}"
        );
        let raw = std::fs::read(&files[0]).unwrap();
        let parsed = mailparse::parse_mail(&raw).unwrap();
        use mailparse::MailHeaderMap as _;
        assert_eq!(
            parsed.headers.get_first_value("To").unwrap(),
            "bob@example.org"
        );
        assert_eq!(parsed.get_body().unwrap().trim_end(), "123456");
    }

    #[tokio::test]
    async fn smtp_credentials_must_come_in_pairs() {
        let smtp = |username: Option<&str>, password: Option<&str>| MailConfig {
            from: "a@b.example".to_owned(),
            transport: MailTransport::Smtp {
                host: "127.0.0.1".to_owned(),
                port: 25,
                username: username.map(str::to_owned),
                tls: SmtpTls::None,
            },
            password: password.map(crate::config::Secret::new),
            queue_size: 1,
        };
        let build = |c: &MailConfig| Transport::build(c, &[], Duration::from_secs(1), 1);
        assert!(build(&smtp(None, None)).is_ok());
        assert!(build(&smtp(Some("u"), Some("p"))).is_ok());
        assert!(matches!(
            build(&smtp(Some("u"), None)),
            Err(MailError::MissingPassword)
        ));
        assert!(matches!(
            build(&smtp(None, Some("p"))),
            Err(MailError::MissingUser)
        ));
        let t = build(&smtp(Some("u"), Some("hunter2"))).unwrap();
        assert!(!format!("{t:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn tls_parameters_accept_extra_roots_and_refuse_garbage() {
        assert!(tls_parameters("relay.example", &[]).is_ok());
        let bad = CertificateDer::from(vec![1u8, 2, 3]);
        assert!(matches!(
            tls_parameters("relay.example", &[bad]),
            Err(MailError::Tls { .. })
        ));
    }
}
