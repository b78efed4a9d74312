//! Trust anchors for the gateway's outgoing TLS: upstream apps (`proxy`), the LDAP directory
//! (`directory`) and the SMTP relay (`mailer`) all trust the same roots, the Mozilla set
//! (webpki-roots) plus the system store, and add the anchors their own config section names.
//! A leaf, so those three do not reach into each other for it.

use std::sync::OnceLock;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;

/// The system trust store, read once per process: reading it walks files, and every client
/// built on a reload would otherwise repeat that.
pub(crate) fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "skipping an unreadable system trust anchor");
        }
        found.certs
    })
}

/// The Mozilla roots, the parsable system roots and `extra` (a configured CA file). System
/// roots that do not parse are skipped, as the system store may hold such certificates; an
/// `extra` anchor that does not parse is an error, since the config asked for it.
pub(crate) fn root_store(
    extra: &[CertificateDer<'static>],
) -> Result<RootCertStore, rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let (_, _) = roots.add_parsable_certificates(system_roots().iter().cloned());
    for c in extra {
        roots.add(c.clone())?;
    }
    Ok(roots)
}
