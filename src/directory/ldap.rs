//! Reading the directory with ldap3: connect (`ldap://`, `ldaps://`, or StartTLS; rustls with
//! ring, trusting the system store, the Mozilla roots and `ca_file`), bind, and two paged
//! subtree searches (RFC 2696, so directories that cap answers — Active Directory's
//! `MaxPageSize` of 1000 — return everything). Any error fails the whole read: a partial answer
//! must never replace a complete snapshot.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use rustls::pki_types::CertificateDer;

use super::DirectoryError;
use super::build::Entry;
use crate::config::DirectoryConfig;
use crate::trust;

/// What one read returned.
#[derive(Debug)]
pub(super) struct Read {
    pub(super) users: Vec<Entry>,
    pub(super) groups: Vec<Entry>,
}

fn tls_config(extra: &[CertificateDer<'static>]) -> Result<rustls::ClientConfig, DirectoryError> {
    let roots = trust::root_store(extra).map_err(|e| DirectoryError::Tls(e.to_string()))?;
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| DirectoryError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// Connects, binds and reads the users and (when configured) the groups.
pub(super) async fn read(cfg: &DirectoryConfig) -> Result<Read, DirectoryError> {
    let mut settings = LdapConnSettings::new()
        .set_conn_timeout(cfg.timeout)
        .set_starttls(cfg.starttls);
    if cfg.starttls || cfg.url.starts_with("ldaps://") {
        settings = settings.set_config(Arc::new(tls_config(&cfg.ca)?));
    }
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &cfg.url)
        .await
        .map_err(|source| DirectoryError::Connect {
            url: cfg.url.clone(),
            source: Box::new(source),
        })?;
    // The connection is driven by its own task; it ends when the handle unbinds or drops.
    tokio::spawn(async move {
        if let Err(e) = conn.drive().await {
            tracing::debug!(error = %e, "directory connection closed with an error");
        }
    });
    if let (Some(dn), Some(password)) = (&cfg.bind_dn, &cfg.bind_password) {
        ldap.with_timeout(cfg.timeout)
            .simple_bind(dn, password.expose())
            .await
            .and_then(ldap3::LdapResult::success)
            .map_err(|source| DirectoryError::Bind {
                dn: dn.clone(),
                source: Box::new(source),
            })?;
    }
    let mut user_attrs = vec![cfg.users.id.clone()];
    user_attrs.extend(cfg.users.temp_auth_email.clone());
    user_attrs.extend(cfg.users.member_of.clone());
    let users = search(
        &mut ldap,
        cfg,
        &cfg.users.base,
        &cfg.users.filter,
        user_attrs,
    )
    .await?;
    let groups = match &cfg.groups {
        Some(g) => {
            search(
                &mut ldap,
                cfg,
                &g.base,
                &g.filter,
                vec![g.name.clone(), g.member.clone()],
            )
            .await?
        }
        None => Vec::new(),
    };
    // Best effort: the read is complete either way.
    let _ = ldap.unbind().await;
    Ok(Read { users, groups })
}

async fn search(
    ldap: &mut ldap3::Ldap,
    cfg: &DirectoryConfig,
    base: &str,
    filter: &str,
    attrs: Vec<String>,
) -> Result<Vec<Entry>, DirectoryError> {
    let fail = |source| DirectoryError::Search {
        base: base.to_owned(),
        source: Box::new(source),
    };
    let page = i32::try_from(cfg.page_size).unwrap_or(i32::MAX);
    let adapters: Vec<Box<dyn Adapter<'_, String, Vec<String>>>> = vec![
        Box::new(EntriesOnly::new()),
        Box::new(PagedResults::new(page)),
    ];
    let mut stream = ldap
        .with_timeout(cfg.timeout)
        .streaming_search_with(adapters, base, Scope::Subtree, filter, attrs)
        .await
        .map_err(fail)?;
    let mut out = Vec::new();
    loop {
        match stream.next().await {
            Ok(Some(raw)) => {
                // ldap3 panics on an entry it cannot decode; a broken answer fails this read
                // instead of the sync task.
                let entry =
                    std::panic::catch_unwind(AssertUnwindSafe(|| SearchEntry::construct(raw)))
                        .map_err(|_| DirectoryError::Malformed {
                            base: base.to_owned(),
                        })?;
                out.push(Entry::new(entry.dn, entry.attrs));
            }
            Ok(None) => break,
            Err(e) => {
                let _ = stream.finish().await;
                return Err(fail(e));
            }
        }
    }
    stream.finish().await.success().map_err(fail)?;
    Ok(out)
}
