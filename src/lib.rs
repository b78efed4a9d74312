//! otpgate: an identity-aware reverse proxy.
//!
//! A request flows through the modules in this order:
//!
//! ```text
//! server (TCP, TLS with SNI, HTTP/1.1 + HTTP/2, timeouts, graceful drain)
//!   → gateway::Gateway::handle: route by Host/SNI → normalise path → client address
//!       → HTTPS redirect → gateway pages → policy → proxy
//!   → proxy::forward: header hygiene, pooled upstream client, streamed bodies, upgrades
//! ```
//!
//! beside `config` (YAML → validated runtime config), `metrics`, `admin` (health, readiness,
//! metrics), `mailer` (the outgoing-mail queue), `users` + `directory` (the user table and the
//! LDAP / Active Directory sync feeding it) and `clock` (injected time). `policy`, `path` and
//! `email` are pure.

pub mod admin;
pub mod audit;
pub mod body;
pub mod clock;
pub mod commands;
pub mod config;
pub mod directory;
pub mod dn;
pub mod email;
pub mod gateway;
pub mod io;
pub mod login;
pub mod mailer;
pub mod metrics;
pub mod pages;
pub mod path;
pub mod policy;
pub mod proxy;
pub mod random;
pub mod return_to;
pub mod server;
pub mod session;
pub mod state;
pub mod store;
pub mod trust;
pub mod users;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::{Config, ConfigError, DirectoryConfig, Problem};
use crate::gateway::{BoundAddrs, BuildError, Gateway, Parts, Runtime};
use crate::mailer::{MailError, Mailer};
use crate::server::tls::{CertStore, SniResolver, TlsError};
use crate::server::{Kind, Listeners, ServerError};
use crate::session::keys::KeyError;
use crate::session::{KeyRing, Sessions};
use crate::state::State;
use crate::store::{Credentials, StoreError};
use crate::users::DirectorySnapshot;

/// What a gateway is started with besides its config.
#[derive(Debug, Clone)]
pub struct Options {
    /// The clock (tests inject a manual one).
    pub clock: Arc<dyn Clock>,
    /// Randomness (tests may inject a seeded one).
    pub random: Arc<dyn random::Random>,
    /// The environment the config was loaded with, reused on reload (`OTPGATE_*` overrides).
    pub env: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clock: clock::system(),
            random: random::system(),
            env: Vec::new(),
        }
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// Certificates could not be loaded or made.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The runtime could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The mail transport could not be set up.
    #[error(transparent)]
    Mail(#[from] MailError),
    /// The cookie keys could not be read or made.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The credentials store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

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
}

/// A running gateway.
#[derive(Debug)]
pub struct Running {
    gateway: Arc<Gateway>,
    resolver: Option<Arc<SniResolver>>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    env: Vec<(String, String)>,
    directory: Mutex<DirectoryTasks>,
}

/// The directory sync task for the running config, and earlier ones still stopping.
#[derive(Debug, Default)]
struct DirectoryTasks {
    current: Option<DirectoryTask>,
    stopping: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct DirectoryTask {
    config: DirectoryConfig,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

impl DirectoryTask {
    fn spawn(gw: &Arc<Gateway>, config: DirectoryConfig, parent: &CancellationToken) -> Self {
        let cancel = parent.child_token();
        let handle = tokio::spawn(directory::run(gw.clone(), config.clone(), cancel.clone()));
        Self {
            config,
            cancel,
            handle,
        }
    }
}

/// The persisted directory snapshot, when it was taken with the settings of `cfg`.
fn stored_snapshot(
    credentials: &Credentials,
    cfg: &DirectoryConfig,
) -> Result<Option<Arc<DirectorySnapshot>>, StoreError> {
    Ok(match credentials.directory_snapshot()? {
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

/// Binds the listeners and starts serving `config`.
pub async fn start(config: Config, options: Options) -> Result<Running, StartError> {
    metrics::install();
    let keys = KeyRing::load_or_create(
        &config.session.keys_file,
        options.random.as_ref(),
        options.clock.unix_secs(),
    )?;
    let credentials = Credentials::open_embedded(&config.data_dir)?;
    let sessions = Sessions::new(keys, options.random.clone());
    // Revocations are in memory before the first request is served.
    sessions
        .revocations()
        .apply(&credentials.revocations_since(0)?);
    let listeners = Listeners::bind(&config.listen).await?;
    let bound = listeners.addrs();
    let (resolver, acceptor) = if listeners.https.is_some() {
        let resolver = SniResolver::new(CertStore::load(&config.tls)?);
        let acceptor =
            tokio_rustls::TlsAcceptor::from(server::tls::server_config(resolver.clone())?);
        (Some(resolver), Some(acceptor))
    } else {
        (None, None)
    };
    let mailer = Mailer::start(&config.mail)?;
    // The last good directory snapshot serves until the first sync (the directory may be down).
    let snapshot = match &config.directory {
        Some(d) => stored_snapshot(&credentials, d)?,
        None => None,
    };
    let directory_config = config.directory.clone();
    let runtime = Runtime::build(config, &bound, None)?;
    let cancel = CancellationToken::new();
    let state = State::memory(options.clock.clone());
    let parts = Parts {
        clock: options.clock,
        random: options.random,
        sessions,
        credentials,
        state,
        mailer,
        shutdown: cancel.clone(),
    };
    let gateway = Arc::new(Gateway::new(runtime, bound, parts));
    if let Some(s) = snapshot {
        directory::snapshot_metrics(&s);
        gateway.set_directory_snapshot(Some(s));
    }
    let directory_tasks = DirectoryTasks {
        current: directory_config.map(|d| DirectoryTask::spawn(&gateway, d, &cancel)),
        stopping: Vec::new(),
    };
    let mut tasks = Vec::new();
    if let Some(l) = listeners.http {
        tasks.push(server::spawn(
            Kind::Http,
            l,
            gateway.clone(),
            None,
            cancel.clone(),
        ));
    }
    if let Some(l) = listeners.https {
        tasks.push(server::spawn(
            Kind::Https,
            l,
            gateway.clone(),
            acceptor,
            cancel.clone(),
        ));
    }
    if let Some(l) = listeners.admin {
        tasks.push(server::spawn(
            Kind::Admin,
            l,
            gateway.clone(),
            None,
            cancel.clone(),
        ));
    }
    let upkeep_cancel = cancel.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                () = upkeep_cancel.cancelled() => break,
                _ = tick.tick() => metrics::upkeep(),
            }
        }
    }));
    tasks.push(tokio::spawn(sync_revocations(
        gateway.clone(),
        cancel.clone(),
    )));
    let sweeper = gateway.clone();
    let sweep_cancel = cancel.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                () = sweep_cancel.cancelled() => break,
                _ = tick.tick() => sweeper.state().sweep(),
            }
        }
    }));
    gateway.set_ready(true);
    Ok(Running {
        gateway,
        resolver,
        cancel,
        tasks,
        env: options.env,
        directory: Mutex::new(directory_tasks),
    })
}

impl Running {
    /// The bound listener addresses.
    pub fn addrs(&self) -> BoundAddrs {
        self.gateway.bound()
    }

    /// The gateway.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

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
        let store = match &self.resolver {
            Some(_) => Some(CertStore::load(&loaded.config.tls)?),
            None => None,
        };
        let keys = KeyRing::load_or_create(
            &loaded.config.session.keys_file,
            self.gateway.random().as_ref(),
            self.gateway.clock().unix_secs(),
        )?;
        let runtime = Runtime::build(loaded.config, &self.gateway.bound(), Some(&current))?;
        if let (Some(resolver), Some(store)) = (&self.resolver, store) {
            resolver.replace(store);
        }
        self.gateway.sessions().replace_keys(keys);
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
                    let stored =
                        stored_snapshot(self.gateway.credentials(), &cfg).unwrap_or_else(|e| {
                            tracing::warn!(error = %e, "cannot read the stored directory snapshot");
                            None
                        });
                    self.gateway.set_directory_snapshot(stored);
                }
                tasks.current = Some(DirectoryTask::spawn(&self.gateway, cfg, &self.cancel));
            }
        }
    }

    /// Stops accepting connections and starts draining; [`Running::wait`] completes when done.
    pub fn shutdown(&self) {
        self.gateway.set_ready(false);
        self.cancel.cancel();
    }

    /// Waits until every listener has drained after [`Running::shutdown`], then gives queued
    /// mail the same grace to leave.
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
        let directory = std::mem::take(
            &mut *self
                .directory
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for h in directory
            .current
            .map(|t| t.handle)
            .into_iter()
            .chain(directory.stopping)
        {
            let _ = h.await;
        }
        let grace = self.gateway.runtime().config.limits.shutdown_grace;
        self.gateway.mailer().shutdown(grace).await;
    }
}

/// Keeps the revocation cache current: polls the store for revocations made elsewhere (the
/// command line, other replicas) and prunes entries that can no longer matter.
async fn sync_revocations(gw: Arc<Gateway>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(session::revocation::POLL_INTERVAL);
    let mut rounds: u64 = 0;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        rounds += 1;
        let since = gw.sessions().revocations().last_seq();
        match gw
            .credentials()
            .run(move |c| c.revocations_since(since))
            .await
        {
            Ok(rows) => gw.sessions().revocations().apply(&rows),
            Err(e) => tracing::error!(error = %e, "cannot read revocations; retrying"),
        }
        if rounds.is_multiple_of(30) {
            let now_ms = u64::try_from(gw.clock().now().as_millis()).unwrap_or(u64::MAX);
            let max_ms = 30 * 86_400_000;
            gw.sessions().revocations().prune(now_ms, max_ms);
            let cutoff = now_ms.saturating_sub(session::cookie::SKEW_MS);
            if let Err(e) = gw.credentials().run(move |c| c.prune(cutoff)).await {
                tracing::warn!(error = %e, "cannot prune old revocations");
            }
        }
    }
}
