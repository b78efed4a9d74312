//! Reloading: the config file is read again and swapped in whole, or not at all.

use std::sync::PoisonError;

use super::Running;
use super::tasks::{DirectoryTask, stored_snapshot};
use crate::assertion::{SigningKeyError, SigningKeys};
use crate::config::{self, ConfigError, Problem};
use crate::gateway::{BuildError, Runtime};
use crate::metrics;
use crate::server::tls::{CertStore, TlsError};
use crate::session::KeyRing;
use crate::session::keys::KeyError;

/// Why a reload was refused (the old config keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file has problems.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Certificates could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The runtime could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The cookie keys could not be read.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The assertion signing keys could not be read.
    #[error(transparent)]
    SigningKeys(#[from] SigningKeyError),
}

impl Running {
    /// Re-reads the config file and swaps it in atomically. On any problem the running config
    /// stays. Returns the new config's warnings.
    pub fn reload(&self) -> Result<Vec<Problem>, ReloadError> {
        let result = self.try_reload();
        let outcome = if result.is_ok() { "success" } else { "failure" };
        ::metrics::counter!(metrics::CONFIG_RELOADS, "result" => outcome).increment(1);
        result
    }

    fn try_reload(&self) -> Result<Vec<Problem>, ReloadError> {
        let current = self.gateway.runtime();
        let loaded = config::load(&current.config.file, self.env.clone())?;
        if loaded.config.listen != current.config.listen {
            tracing::warn!("listen addresses change only on restart; the old ones stay in use");
        }
        if loaded.config.data_dir != current.config.data_dir {
            tracing::warn!("data_dir changes only on restart; the old store stays in use");
        }
        if loaded.config.state.url() != current.config.state.url() {
            tracing::warn!("state changes only on restart; the old backend stays in use");
        }
        if loaded.config.credentials.url() != current.config.credentials.url() {
            tracing::warn!("credentials change only on restart; the old store stays in use");
        }
        let store = match &self.resolver {
            Some(_) => Some(CertStore::load(&loaded.config.tls)?),
            None => None,
        };
        let keys = KeyRing::load_or_create(
            &loaded.config.session.keys_file,
            self.gateway.random().as_ref(),
            self.gateway.clock().unix_secs(),
        )?;
        // A rotated signing-keys file (`keys rotate --jwt`) is picked up here.
        let signing_keys = loaded
            .config
            .identity_assertion
            .as_ref()
            .map(|a| {
                SigningKeys::load_or_create(
                    &a.keys_file,
                    self.gateway.random().as_ref(),
                    self.gateway.clock().unix_secs(),
                )
            })
            .transpose()?;
        let runtime = Runtime::build(loaded.config, &self.gateway.bound(), Some(&current))?;
        if let (Some(resolver), Some(store)) = (&self.resolver, store) {
            resolver.replace(store);
        }
        self.gateway.sessions().replace_keys(keys);
        if let Some(k) = signing_keys {
            self.gateway.assertions().replace_keys(k);
        }
        self.gateway.swap(runtime);
        self.restart_directory();
        Ok(loaded.warnings)
    }

    /// After a reload: stops, starts or restarts the directory sync when its settings changed.
    /// A snapshot taken with other settings (server, bases, filters, attributes) stops serving.
    fn restart_directory(&self) {
        let wanted = self.gateway.runtime().config.directory.clone();
        let mut tasks = self
            .directory
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if tasks.current.as_ref().map(|t| &t.config) == wanted.as_ref() {
            return;
        }
        let old_fingerprint = tasks.current.as_ref().map(|t| t.config.fingerprint());
        if let Some(old) = tasks.current.take() {
            old.cancel.cancel();
            tasks.stopping.push(old.handle);
        }
        tasks.stopping.retain(|h| !h.is_finished());
        match wanted {
            None => {
                self.gateway.set_directory_snapshot(None);
                tracing::info!("directory sync removed from the config; only config users remain");
            }
            Some(cfg) => {
                if old_fingerprint.as_deref() != Some(cfg.fingerprint().as_str()) {
                    self.gateway.set_directory_snapshot(None);
                    // The store is read in the background (it may be PostgreSQL); a sync that
                    // finishes first wins, as its snapshot is the newer one.
                    let (gw, wanted) = (self.gateway.clone(), cfg.clone());
                    tokio::spawn(async move {
                        match stored_snapshot(gw.store(), &wanted).await {
                            Ok(Some(s)) if gw.directory_snapshot().is_none() => {
                                gw.set_directory_snapshot(Some(s));
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e,
                                "cannot read the stored directory snapshot"),
                        }
                    });
                }
                tasks.current = Some(DirectoryTask::spawn(&self.gateway, cfg, &self.cancel));
            }
        }
    }
}
