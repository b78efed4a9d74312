//! Directory sync: users and groups from OpenLDAP or Active Directory join the config's hosted
//! users (Zscaler's users "hosted by the service or synchronized from a directory server").
//!
//! Every `directory.refresh` the sync task binds, reads users and groups with paged searches
//! ([`ldap`]), turns the entries into a snapshot ([`build`]), persists it in the credentials
//! store and hands it to the gateway, which rebuilds its user table ([`crate::users`]). When the
//! directory cannot be reached, the last good snapshot keeps serving — also across a restart,
//! since it is loaded from the store before the first sync. Each sync is counted, timed and
//! logged; entries the gateway would reject are skipped and reported by DN and reason.
//!
//! otpgate never checks or writes directory passwords: the bind is the only authentication
//! it performs against the directory, and passwords users choose for temporary-password logins
//! live in otpgate's own store (as with Zscaler).

pub mod build;
mod ldap;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

pub use build::{Built, Entry, SkipReason, Skipped, build};

use crate::clock::Clock;
use crate::config::DirectoryConfig;
use crate::store::Store;
use crate::users::{DirectorySnapshot, UserTable};

/// After a failed sync, the next attempt comes after `refresh` or this, whichever is shorter.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Skipped entries logged one by one per sync; the rest are counted.
const SKIP_LINES: usize = 20;

/// Why a sync failed (the last good snapshot keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// No connection (refused, timed out, TLS handshake).
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The configured URL.
        url: String,
        /// Why.
        source: Box<ldap3::LdapError>,
    },
    /// The bind was refused (wrong DN or password, locked account).
    #[error("bind as {dn} failed: {source}")]
    Bind {
        /// The bind DN.
        dn: String,
        /// Why.
        source: Box<ldap3::LdapError>,
    },
    /// A search failed or was cut short.
    #[error("search under {base} failed: {source}")]
    Search {
        /// The search base.
        base: String,
        /// Why.
        source: Box<ldap3::LdapError>,
    },
    /// The server sent an entry that could not be decoded.
    #[error("search under {base}: the directory sent a malformed entry")]
    Malformed {
        /// The search base.
        base: String,
    },
    /// The TLS settings could not be built.
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// Reads the directory once and builds a snapshot; no side effects.
pub async fn sync_once(cfg: &DirectoryConfig, synced_ms: u64) -> Result<Built, DirectoryError> {
    let read = ldap::read(cfg).await?;
    Ok(build(cfg, &read.users, &read.groups, synced_ms))
}

/// Sets the gauges that describe the snapshot serving now (also for one loaded at start).
pub fn snapshot_metrics(s: &DirectorySnapshot) {
    ::metrics::gauge!(crate::metrics::DIRECTORY_USERS).set(s.users.len() as f64);
    ::metrics::gauge!(crate::metrics::DIRECTORY_GROUPS).set(s.group_count() as f64);
    ::metrics::gauge!(crate::metrics::DIRECTORY_LAST_SUCCESS).set(s.synced_ms as f64 / 1000.0);
}

fn report(built: &Built, elapsed: Duration) {
    let s = &built.snapshot;
    for reason in SkipReason::ALL {
        let n = built.skipped.iter().filter(|k| k.reason == reason).count();
        ::metrics::gauge!(crate::metrics::DIRECTORY_SKIPPED, "reason" => reason.as_str())
            .set(n as f64);
    }
    for k in built.skipped.iter().take(SKIP_LINES) {
        tracing::warn!(
            dn = %k.dn,
            reason = k.reason.as_str(),
            detail = %k.detail,
            "directory entry skipped"
        );
    }
    if built.skipped.len() > SKIP_LINES {
        tracing::warn!(
            more = built.skipped.len() - SKIP_LINES,
            "more directory entries skipped (see otpgate_directory_skipped_entries)"
        );
    }
    tracing::info!(
        users = s.users.len(),
        groups = s.group_count(),
        skipped = built.skipped.len(),
        ms = elapsed.as_millis() as u64,
        "directory sync finished"
    );
}

/// What the sync task works with: where snapshots are persisted and put in service, and the
/// clock that stamps them.
#[derive(Debug, Clone)]
pub struct Sink {
    /// The user table the snapshots serve in.
    pub table: Arc<UserTable>,
    /// The store that keeps the last good snapshot across restarts.
    pub store: Store,
    /// Stamps each snapshot.
    pub clock: Arc<dyn Clock>,
}

/// Persists a fresh snapshot and puts it in service.
async fn publish(sink: &Sink, snapshot: DirectorySnapshot) {
    let previous = sink.table.snapshot().map_or(0, |p| p.users.len());
    if previous > 0 && snapshot.users.is_empty() {
        tracing::warn!(
            previous,
            "the directory returned no users: every directory user loses their groups (check the base, filter and the bind's read rights)"
        );
    }
    let snapshot = Arc::new(snapshot);
    if let Err(e) = sink.store.save_directory_snapshot(&snapshot).await {
        tracing::error!(error = %e, "cannot persist the directory snapshot; it serves from memory");
    }
    if sink.table.set_snapshot(Some(snapshot.clone())) {
        snapshot_metrics(&snapshot);
    } else {
        tracing::debug!("directory settings changed during the sync; its snapshot is dropped");
    }
}

/// The sync task: syncs now, then every `refresh` (sooner after a failure), until `cancel`.
pub async fn run(sink: Sink, cfg: DirectoryConfig, cancel: CancellationToken) {
    tracing::info!(url = %cfg.url, refresh_secs = cfg.refresh.as_secs(), "directory sync started");
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            () = cancel.cancelled() => break,
            r = sync_once(&cfg, sink.clock.now_ms()) => r,
        };
        let elapsed = started.elapsed();
        ::metrics::gauge!(crate::metrics::DIRECTORY_DURATION).set(elapsed.as_secs_f64());
        let delay = match result {
            Ok(built) => {
                if cancel.is_cancelled() {
                    break;
                }
                ::metrics::counter!(crate::metrics::DIRECTORY_SYNCS, "result" => "success")
                    .increment(1);
                report(&built, elapsed);
                publish(&sink, built.snapshot).await;
                cfg.refresh
            }
            Err(e) => {
                ::metrics::counter!(crate::metrics::DIRECTORY_SYNCS, "result" => "failure")
                    .increment(1);
                match sink.table.snapshot() {
                    Some(s) => tracing::warn!(
                        error = %e,
                        users = s.users.len(),
                        synced = %crate::audit::rfc3339(Duration::from_millis(s.synced_ms)),
                        "directory sync failed; the last snapshot keeps serving"
                    ),
                    None => tracing::error!(
                        error = %e,
                        "directory sync failed and there is no earlier snapshot: directory users are unknown and /readyz answers 503"
                    ),
                }
                cfg.refresh.min(RETRY_AFTER)
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
    }
    tracing::debug!("directory sync stopped");
}
