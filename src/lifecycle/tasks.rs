//! The background tasks of a running gateway: the directory sync, metric upkeep, the sweep of
//! expired state and its saving (the revocation sync is in `revocations`).

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::audit;
use crate::config::DirectoryConfig;
use crate::directory;
use crate::gateway::Gateway;
use crate::metrics;
use crate::state::{self, Saved, StateFile};
use crate::store::{Store, StoreError};
use crate::users::DirectorySnapshot;

/// The directory sync task for the running config, and earlier ones still stopping.
#[derive(Debug, Default)]
pub(super) struct DirectoryTasks {
    pub(super) current: Option<DirectoryTask>,
    pub(super) stopping: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
pub(super) struct DirectoryTask {
    pub(super) config: DirectoryConfig,
    pub(super) cancel: CancellationToken,
    pub(super) handle: JoinHandle<()>,
}

impl DirectoryTask {
    pub(super) fn spawn(
        gw: &Arc<Gateway>,
        config: DirectoryConfig,
        parent: &CancellationToken,
    ) -> Self {
        let cancel = parent.child_token();
        let sink = directory::Sink {
            table: gw.user_table().clone(),
            store: gw.store().clone(),
            clock: gw.clock().clone(),
        };
        let handle = tokio::spawn(directory::run(sink, config.clone(), cancel.clone()));
        Self {
            config,
            cancel,
            handle,
        }
    }
}

/// The persisted directory snapshot, when it was taken with the settings of `cfg`.
pub(super) async fn stored_snapshot(
    store: &Store,
    cfg: &DirectoryConfig,
) -> Result<Option<Arc<DirectorySnapshot>>, StoreError> {
    Ok(match store.directory_snapshot().await? {
        Some(s) if s.fingerprint == cfg.fingerprint() => {
            tracing::info!(
                users = s.users.len(),
                synced = %audit::rfc3339(Duration::from_millis(s.synced_ms)),
                "directory snapshot loaded from the store; it serves until the first sync"
            );
            Some(Arc::new(s))
        }
        Some(_) => {
            tracing::info!(
                "the stored directory snapshot was taken with other directory settings; directory users are unknown until the first sync"
            );
            None
        }
        None => None,
    })
}

/// The periodic tasks: metric upkeep, the revocation poll, the sweep of expired state and, with
/// a state file, its saving.
pub(super) fn spawn_upkeep(
    gateway: &Arc<Gateway>,
    cancel: &CancellationToken,
    state_file: Option<Arc<StateFile>>,
) -> Vec<JoinHandle<()>> {
    let every = |period: Duration, work: Box<dyn Fn() + Send>| {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    _ = tick.tick() => work(),
                }
            }
        })
    };
    let sweeper = gateway.clone();
    let mut tasks = vec![
        every(Duration::from_secs(5), Box::new(metrics::upkeep)),
        every(
            Duration::from_secs(30),
            Box::new(move || sweeper.state().sweep()),
        ),
        tokio::spawn(super::revocations::sync(gateway.clone(), cancel.clone())),
    ];
    if let Some(file) = state_file {
        tasks.push(tokio::spawn(save_state_periodically(file, cancel.clone())));
    }
    tasks
}

/// Puts back the state the previous run saved (docs/security.md#42).
pub(super) fn restore_state(file: &StateFile) {
    match file.load() {
        Ok(r) if r == state::Restored::default() => {}
        Ok(r) => tracing::info!(
            path = %file.path().display(), restored = r.entries, expired = r.expired,
            "state restored from the previous run"
        ),
        // Failing open, an exception to docs/security.md#36: without the file no code issued
        // before the restart exists (those logins simply start again) and the limits count
        // from zero, as every restart did before they were saved; refusing to start would turn
        // a damaged file into an outage. The next save replaces the file.
        Err(e) => tracing::warn!(
            error = %e,
            "the saved state cannot be used; starting with empty limits and no pending codes"
        ),
    }
}

/// Saves the state every [`state::SAVE_INTERVAL`] when it changed.
async fn save_state_periodically(file: Arc<StateFile>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(state::SAVE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => save_state(file.clone(), false).await,
        }
    }
}

/// Saves the state if it changed, on a blocking thread so no request waits for the disk.
pub(super) async fn save_state(file: Arc<StateFile>, last: bool) {
    let path = file.path().display().to_string();
    match tokio::task::spawn_blocking(move || file.save()).await {
        Ok(Ok(Saved::Written(entries))) if last => {
            tracing::info!(path, entries, "state saved");
        }
        Ok(Ok(Saved::Written(entries))) => tracing::debug!(path, entries, "state saved"),
        Ok(Ok(Saved::Unchanged)) => {}
        Ok(Err(e)) if last => tracing::error!(error = %e, "cannot save the state"),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot save the state; trying again"),
        Err(e) => tracing::error!(error = %e, "the state save did not complete"),
    }
}
