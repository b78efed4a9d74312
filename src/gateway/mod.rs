//! The gateway: what every connection shares, and the per-request pipeline over it.
//!
//! - [`runtime`]: everything derived from one config (apps, router, templates), swapped whole
//!   on reload;
//! - this file: the long-lived parts (sessions, state, store, mailer, the user table) and the
//!   accessors the rest of the program uses;
//! - [`pipeline`]: one request's way through the stages, readable top to bottom;
//! - [`auth_endpoint`]: the same stages for a front proxy asking `/.otpgate/auth`;
//! - [`portal`]: requests for the single sign-on portal's host;
//! - [`error`]: the one map from errors to responses.

mod auth_endpoint;
pub mod error;
pub mod forwarded;
mod pipeline;
mod portal;
pub mod route;
pub mod runtime;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::{ArcSwap, Guard};

pub use error::{Blame, GateError};
pub use runtime::{App, BuildError, Runtime};

use crate::assertion::Assertions;
use crate::clock::Clock;
use crate::config::BoundAddrs;
use crate::mailer::Mailer;
use crate::random::Random;
use crate::session::Sessions;
use crate::state::State;
use crate::store::Store;
use crate::users::{DirectorySnapshot, UserTable, Users};

/// The reserved path prefix of the gateway's own pages on every app host.
pub const RESERVED_PREFIX: &str = "/.otpgate/";
/// The login page (stable).
pub const LOGIN_PATH: &str = crate::login::LOGIN_PATH;

/// What the server knows about a client connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The SNI name the client sent, if any.
    pub sni: Option<Box<str>>,
}

/// The gateway: shared by every connection.
#[derive(Debug)]
pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    users: Arc<UserTable>,
    bound: BoundAddrs,
    ready: AtomicBool,
    clock: Arc<dyn Clock>,
    random: Arc<dyn Random>,
    sessions: Sessions,
    store: Store,
    state: State,
    mailer: Mailer,
    tunnels: Arc<tokio::sync::Semaphore>,
    shutdown: tokio_util::sync::CancellationToken,
    assertions: Assertions,
}

/// The long-lived parts of a gateway, made once at start.
#[derive(Debug)]
pub struct Parts {
    /// Wall time.
    pub clock: Arc<dyn Clock>,
    /// Randomness.
    pub random: Arc<dyn Random>,
    /// Session keys and revocations.
    pub sessions: Sessions,
    /// The durable store.
    pub store: Store,
    /// Ephemeral shared state (codes, rate limits).
    pub state: State,
    /// Outgoing mail.
    pub mailer: Mailer,
    /// Fired on shutdown (ends WebSocket tunnels).
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl Gateway {
    /// A gateway serving `runtime`.
    pub fn new(runtime: Runtime, bound: BoundAddrs, parts: Parts) -> Self {
        // Tunnels count against the same limit as client connections (set at start).
        let tunnels = runtime.config.limits.max_connections;
        let users = UserTable::new(&runtime.config.users, fingerprint(&runtime));
        Self {
            users: Arc::new(users),
            runtime: ArcSwap::from_pointee(runtime),
            bound,
            ready: AtomicBool::new(false),
            clock: parts.clock,
            random: parts.random,
            tunnels: Arc::new(tokio::sync::Semaphore::new(tunnels)),
            sessions: parts.sessions,
            store: parts.store,
            state: parts.state,
            mailer: parts.mailer,
            shutdown: parts.shutdown,
            assertions: Assertions::default(),
        }
    }

    /// The identity-assertion signer: its keys are put in service at start and on reload
    /// (`Assertions::replace_keys`); until then no assertion is made.
    pub fn assertions(&self) -> &Assertions {
        &self.assertions
    }

    /// Sessions (keys, revocations).
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Ephemeral shared state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Outgoing mail.
    pub fn mailer(&self) -> &Mailer {
        &self.mailer
    }

    /// The durable store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The injected randomness.
    pub fn random(&self) -> &Arc<dyn Random> {
        &self.random
    }

    /// The injected clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The current snapshot.
    pub fn runtime(&self) -> Guard<Arc<Runtime>> {
        self.runtime.load()
    }

    /// Replaces the snapshot; requests already running finish on the old one. The user table
    /// is rebuilt with the new config's users.
    pub fn swap(&self, runtime: Runtime) {
        let users = runtime.config.users.clone();
        let fingerprint = fingerprint(&runtime);
        self.runtime.store(Arc::new(runtime));
        self.users.set_config(&users, fingerprint);
    }

    /// The user table: the config's users merged with the directory snapshot.
    pub fn users(&self) -> Guard<Arc<Users>> {
        self.users.users()
    }

    /// The user table with its directory snapshot (the directory sync feeds it).
    pub fn user_table(&self) -> &Arc<UserTable> {
        &self.users
    }

    /// The directory snapshot serving now, if any.
    pub fn directory_snapshot(&self) -> Option<Arc<DirectorySnapshot>> {
        self.users.snapshot()
    }

    /// Puts a directory snapshot in service (or removes it with `None`); see
    /// [`UserTable::set_snapshot`]. Returns whether it was taken.
    pub fn set_directory_snapshot(&self, snapshot: Option<Arc<DirectorySnapshot>>) -> bool {
        self.users.set_snapshot(snapshot)
    }

    /// The bound listener addresses.
    pub fn bound(&self) -> BoundAddrs {
        self.bound
    }

    /// Whether `/readyz` reports ready: started and not shutting down, and, with a directory
    /// configured, a directory snapshot in service (a failed sync alone does not make the
    /// gateway unready while an earlier snapshot serves).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && (self.runtime.load().config.directory.is_none() || self.users.has_snapshot())
    }

    /// Sets readiness.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// The fingerprint of a runtime's directory settings (`None` without a directory).
fn fingerprint(rt: &Runtime) -> Option<String> {
    rt.config.directory.as_ref().map(|d| d.fingerprint())
}
