//! TLS for the HTTPS listener: certificates chosen by SNI from a hot-swappable store, ALPN for
//! HTTP/2, ring as the only crypto provider, and development certificates made with rcgen.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::TlsConfig;

/// TLS problems (configuration or files).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key that rustls refuses.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The self-signed certificate could not be made or written.
    #[error("cannot create the self-signed certificate in {dir}: {message}")]
    SelfSigned {
        /// The folder.
        dir: PathBuf,
        /// Why.
        message: String,
    },
    /// No certificate at all.
    #[error("no certificate configured")]
    NoCertificate,
    /// rustls refused the server setup.
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider of every TLS configuration in the gateway (ring only; see ecosystem
/// notes: two compiled-in providers make rustls' implicit choice panic).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in use, in order of preference.
#[derive(Debug)]
pub(crate) struct CertStore {
    certs: Vec<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Loads the configured certificates, then the self-signed one (generated if absent or if it
    /// does not cover every configured name).
    pub(crate) fn load(tls: &TlsConfig) -> Result<Self, TlsError> {
        let mut certs = Vec::new();
        for pair in &tls.certificates {
            certs.push(Arc::new(certified(
                pair.chain.clone(),
                &pair.key,
                &pair.key_path,
            )?));
        }
        if !tls.self_signed.is_empty() {
            certs.push(Arc::new(self_signed(
                &tls.self_signed_dir,
                &tls.self_signed,
            )?));
        }
        if certs.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        Ok(Self { certs })
    }

    /// The certificate for an SNI name: the first whose names cover it, else the default (first).
    pub(crate) fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni.and_then(|s| ServerName::try_from(s).ok())
            && let Some(c) = self.certs.iter().find(|c| covers(c, &name))
        {
            return Some(c.clone());
        }
        self.certs.first().cloned()
    }
}

fn covers(c: &CertifiedKey, name: &ServerName<'_>) -> bool {
    c.end_entity_cert()
        .ok()
        .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
        .is_some_and(|ee| ee.verify_is_valid_for_subject_name(name).is_ok())
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'static>,
    key_path: &Path,
) -> Result<CertifiedKey, TlsError> {
    let signer =
        rustls::crypto::ring::sign::any_supported_type(key).map_err(|e| TlsError::Invalid {
            path: key_path.to_path_buf(),
            message: e.to_string(),
        })?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().map_err(|e| TlsError::Invalid {
        path: key_path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(ck)
}

/// File names of the development certificate inside `self_signed_dir`.
pub(crate) const SELF_SIGNED_CERT: &str = "self-signed.pem";
/// File name of the development certificate's key.
pub(crate) const SELF_SIGNED_KEY: &str = "self-signed-key.pem";

/// Loads the development certificate, or makes one covering `names` when it is missing or does
/// not cover them all.
fn self_signed(dir: &Path, names: &[String]) -> Result<CertifiedKey, TlsError> {
    let cert_path = dir.join(SELF_SIGNED_CERT);
    let key_path = dir.join(SELF_SIGNED_KEY);
    if let (Ok(chain), Ok(key)) = (
        CertificateDer::pem_file_iter(&cert_path).and_then(Iterator::collect::<Result<Vec<_>, _>>),
        PrivateKeyDer::from_pem_file(&key_path),
    ) && let Ok(ck) = certified(chain, &key, &key_path)
    {
        let all = names
            .iter()
            .all(|n| ServerName::try_from(n.as_str()).is_ok_and(|sn| covers(&ck, &sn)));
        if all {
            return Ok(ck);
        }
    }
    let fail = |message: String| TlsError::SelfSigned {
        dir: dir.to_path_buf(),
        message,
    };
    let mut params =
        rcgen::CertificateParams::new(names.to_vec()).map_err(|e| fail(e.to_string()))?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.distinguished_name.push(
        rcgen::DnType::OrganizationName,
        "otpgate development certificate",
    );
    let key = rcgen::KeyPair::generate().map_err(|e| fail(e.to_string()))?;
    let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    crate::private_file::replace(&key_path, key.serialize_pem().as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    std::fs::write(&cert_path, cert.pem()).map_err(|e| fail(e.to_string()))?;
    tracing::info!(path = %cert_path.display(), names = ?names, "generated a self-signed development certificate");
    let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| fail(e.to_owned()))?;
    certified(vec![cert.der().clone()], &key_der, &key_path)
}

/// Picks certificates by SNI from a store that config reloads can replace.
#[derive(Debug)]
pub(crate) struct SniResolver {
    store: ArcSwap<CertStore>,
}

impl SniResolver {
    /// A resolver serving `store`.
    pub(crate) fn new(store: CertStore) -> Arc<Self> {
        Arc::new(Self {
            store: ArcSwap::from_pointee(store),
        })
    }

    /// Replaces the certificates; new handshakes use them at once.
    pub(crate) fn replace(&self, store: CertStore) {
        self.store.store(Arc::new(store));
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.store.load().pick(hello.server_name())
    }
}

/// The rustls server configuration: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, session
/// tickets for cheap resumption.
pub(crate) fn server_config(
    resolver: Arc<SniResolver>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_for(dir: &Path, names: &[&str]) -> TlsConfig {
        TlsConfig {
            certificates: vec![],
            self_signed: names.iter().map(|s| (*s).to_owned()).collect(),
            self_signed_dir: dir.to_path_buf(),
        }
    }

    #[test]
    fn self_signed_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = CertStore::load(&tls_for(dir.path(), &["localhost", "127.0.0.1"])).unwrap();
        let first = std::fs::read(dir.path().join(SELF_SIGNED_CERT)).unwrap();
        assert!(store.pick(Some("localhost")).is_some());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SELF_SIGNED_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "key must be private");
        }
        CertStore::load(&tls_for(dir.path(), &["localhost", "127.0.0.1"])).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join(SELF_SIGNED_CERT)).unwrap(),
            first,
            "reused"
        );
        // A new name forces a new certificate that covers it.
        let store = CertStore::load(&tls_for(dir.path(), &["localhost", "app.localhost"])).unwrap();
        assert_ne!(
            std::fs::read(dir.path().join(SELF_SIGNED_CERT)).unwrap(),
            first
        );
        let ck = store.pick(Some("app.localhost")).unwrap();
        assert!(covers(&ck, &ServerName::try_from("app.localhost").unwrap()));
    }

    #[test]
    fn no_certificate_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            CertStore::load(&tls_for(dir.path(), &[])),
            Err(TlsError::NoCertificate)
        ));
    }
}
