//! `listen` and `tls`: where the gateway listens and the certificates it serves.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::super::{CertPair, Listen, TlsConfig};
use super::{Ctx, file, is_host_name, pem_error};

pub(super) fn listen(c: &mut Ctx<'_>, l: Option<file::ListenFile>) -> Listen {
    let Some(l) = l else {
        return Listen {
            http: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            https: Some(SocketAddr::from(([127, 0, 0, 1], 8443))),
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
        };
    };
    let mut addr = |key: &str, v: Option<String>| -> Option<SocketAddr> {
        let v = v?;
        match SocketAddr::from_str(v.trim()) {
            Ok(a) => Some(a),
            Err(_) => {
                c.err(
                    format!("listen.{key}"),
                    format!("expected IP:PORT (like 127.0.0.1:8080), found {v:?}"),
                );
                None
            }
        }
    };
    let out = Listen {
        http: addr("http", l.http),
        https: addr("https", l.https),
        admin: addr("admin", l.admin),
    };
    if out.http.is_none()
        && out.https.is_none()
        && c.errors.iter().all(|p| !p.path.starts_with("listen."))
    {
        c.err(
            "listen",
            "neither listen.http nor listen.https is set: nothing would be served",
        );
    }
    let all = [
        ("http", out.http),
        ("https", out.https),
        ("admin", out.admin),
    ];
    for (i, (k1, a1)) in all.iter().enumerate() {
        for (k2, a2) in &all[i + 1..] {
            if a1.is_some() && a1 == a2 && a1.is_some_and(|a| a.port() != 0) {
                c.err(
                    format!("listen.{k2}"),
                    format!("same address as listen.{k1}"),
                );
            }
        }
    }
    out
}

pub(super) fn tls(c: &mut Ctx<'_>, t: &file::TlsFile, listen: &Listen) -> TlsConfig {
    let mut certificates = Vec::new();
    for (i, pair) in t.certificates.iter().enumerate() {
        if let Some(p) = cert_pair(c, &format!("tls.certificates[{i}]"), pair) {
            certificates.push(p);
        }
    }
    let self_signed = self_signed_names(c, &t.self_signed);
    if listen.https.is_some() && t.certificates.is_empty() && self_signed.is_empty() {
        c.err(
            "tls",
            "listen.https needs tls.certificates (or tls.self_signed for development)",
        );
    }
    if !self_signed.is_empty() {
        c.warn(
            "tls.self_signed",
            "self-signed certificates are for development; browsers will warn",
        );
    }
    TlsConfig {
        certificates,
        self_signed,
        self_signed_dir: c.resolve(t.self_signed_dir.as_deref().unwrap_or("certs")),
    }
}

/// Reads one chain and its key and checks that they belong together.
fn cert_pair(c: &mut Ctx<'_>, at: &str, pair: &file::CertFile) -> Option<CertPair> {
    let cert_path = c.resolve(&pair.cert);
    let key_path = c.resolve(&pair.key);
    let chain: Result<Vec<CertificateDer<'static>>, _> =
        CertificateDer::pem_file_iter(&cert_path).and_then(Iterator::collect);
    let chain = match chain {
        Ok(ch) if !ch.is_empty() => Some(ch),
        Ok(_) => {
            c.err(
                format!("{at}.cert"),
                format!("no certificate in {}", cert_path.display()),
            );
            None
        }
        Err(e) => {
            c.err(
                format!("{at}.cert"),
                format!("cannot read {}: {}", cert_path.display(), pem_error(&e)),
            );
            None
        }
    };
    let key = match PrivateKeyDer::from_pem_file(&key_path) {
        Ok(k) => Some(k),
        Err(e) => {
            c.err(
                format!("{at}.key"),
                format!("cannot read {}: {}", key_path.display(), pem_error(&e)),
            );
            None
        }
    };
    let (chain, key) = (chain?, key?);
    match rustls::crypto::ring::sign::any_supported_type(&key) {
        Ok(signer) => {
            let ck = rustls::sign::CertifiedKey::new(chain.clone(), signer);
            if ck.keys_match().is_err() {
                c.err(
                    at,
                    format!(
                        "{} is not the key of {}",
                        key_path.display(),
                        cert_path.display()
                    ),
                );
            }
        }
        Err(e) => c.err(
            format!("{at}.key"),
            format!("unsupported key in {}: {e}", key_path.display()),
        ),
    }
    Some(CertPair {
        cert_path,
        key_path,
        chain,
        key: Arc::new(key),
    })
}

fn self_signed_names(c: &mut Ctx<'_>, names: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let n = name.trim().to_ascii_lowercase();
        if is_host_name(&n) || n.parse::<IpAddr>().is_ok() {
            out.push(n);
        } else {
            c.err(
                format!("tls.self_signed[{i}]"),
                format!("not a host name or IP address: {name:?}"),
            );
        }
    }
    out
}
