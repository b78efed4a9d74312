//! Starting, reloading and stopping a gateway: binds the listeners, builds the parts, starts
//! the background tasks ([`tasks`]) and swaps in new configs ([`reload`]).

mod reload;
mod revocations;
mod tasks;

use std::sync::{Arc, Mutex, PoisonError};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use reload::ReloadError;

use crate::assertion::{SigningKeyError, SigningKeys};
use crate::clock::{self, Clock};
use crate::config::{BoundAddrs, Config};
use crate::directory;
use crate::gateway::{BuildError, Gateway, Parts, Runtime};
use crate::mailer::{MailError, Mailer};
use crate::metrics;
use crate::random;
use crate::server::tls::{CertStore, SniResolver, TlsError};
use crate::server::{self, ListenerKind, Listeners, ServerError};
use crate::session::keys::KeyError;
use crate::session::{KeyRing, Sessions};
use crate::state::{self, State, StateError, StateFile};
use crate::store::{Store, StoreError};
use tasks::{DirectoryTask, DirectoryTasks, stored_snapshot};

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
    /// The assertion signing keys could not be read or made.
    #[error(transparent)]
    SigningKeys(#[from] SigningKeyError),
    /// The shared state's settings are unusable (an unreachable Redis is not an error here).
    #[error(transparent)]
    State(#[from] StateError),
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
    state_file: Option<Arc<StateFile>>,
}

/// Binds the listeners and starts serving `config`.
pub async fn start(config: Config, options: Options) -> Result<Running, StartError> {
    metrics::install();
    let keys = KeyRing::load_or_create(
        &config.session.keys_file,
        options.random.as_ref(),
        options.clock.unix_secs(),
    )?;
    // PostgreSQL must answer at start: its schema is checked and migrated before serving.
    let store = Store::open(&config.credentials, &config.data_dir).await?;
    // Redis is connected lazily: one that is down now does not stop the start.
    let state = State::open(&config.state, options.clock.clone())?;
    let state_file = state
        .file(config.data_dir.join(state::FILE_NAME))
        .map(Arc::new);
    if let Some(file) = &state_file {
        tasks::restore_state(file);
    }
    let sessions = Sessions::new(keys, options.random.clone());
    // Revocations are in memory before the first request is served.
    sessions
        .revocations()
        .apply(&store.revocations_since(0).await?);
    let listeners = Listeners::bind(&config.listen, config.limits.runtime).await?;
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
        Some(d) => stored_snapshot(&store, d).await?,
        None => None,
    };
    let directory_config = config.directory.clone();
    let signing_keys = signing_keys(&config, &options)?;
    let runtime = Runtime::build(config, &bound, None)?;
    let cancel = CancellationToken::new();
    let parts = Parts {
        clock: options.clock,
        random: options.random,
        sessions,
        store,
        state,
        mailer,
        shutdown: cancel.clone(),
    };
    let gateway = Arc::new(Gateway::new(runtime, bound, parts));
    if let Some(keys) = signing_keys {
        gateway.assertions().replace_keys(keys);
    }
    if let Some(s) = snapshot {
        directory::snapshot_metrics(&s);
        gateway.set_directory_snapshot(Some(s));
    }
    let directory_tasks = DirectoryTasks {
        current: directory_config.map(|d| DirectoryTask::spawn(&gateway, d, &cancel)),
        stopping: Vec::new(),
    };
    let mut tasks = spawn_listeners(listeners, acceptor, &gateway, &cancel);
    tasks.extend(tasks::spawn_upkeep(&gateway, &cancel, state_file.clone()));
    gateway.set_ready(true);
    Ok(Running {
        gateway,
        resolver,
        cancel,
        tasks,
        env: options.env,
        directory: Mutex::new(directory_tasks),
        state_file,
    })
}

/// The assertion signing keys, when assertions are on: read from the file every replica
/// shares, or made on first start.
fn signing_keys(
    config: &Config,
    options: &Options,
) -> Result<Option<SigningKeys>, SigningKeyError> {
    config
        .identity_assertion
        .as_ref()
        .map(|a| {
            SigningKeys::load_or_create(
                &a.keys_file,
                options.random.as_ref(),
                options.clock.unix_secs(),
            )
        })
        .transpose()
}

/// One accept loop per bound listener.
fn spawn_listeners(
    listeners: Listeners,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    gateway: &Arc<Gateway>,
    cancel: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let Listeners { http, https, admin } = listeners;
    [
        (ListenerKind::Http, http, None),
        (ListenerKind::Https, https, acceptor),
        (ListenerKind::Admin, admin, None),
    ]
    .into_iter()
    .filter_map(|(kind, l, tls)| {
        l.map(|l| server::spawn(kind, l, gateway.clone(), tls, cancel.clone()))
    })
    .collect()
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

    /// Stops accepting connections and starts draining; [`Running::wait`] completes when done.
    pub fn shutdown(&self) {
        self.gateway.set_ready(false);
        self.cancel.cancel();
    }

    /// Waits until every listener has drained after [`Running::shutdown`], saves the state,
    /// then gives queued mail the same grace to leave.
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
        // No request is left to change the state, so this save is complete
        // (docs/security.md#42).
        if let Some(file) = &self.state_file {
            tasks::save_state(file.clone(), true).await;
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
