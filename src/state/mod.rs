//! Ephemeral shared state (`state`): login codes, rate-limit counters, cooldowns. In memory for
//! one replica, or in Redis ([`redis`]) for several: every operation maps onto one Redis
//! primitive or script so replicas share it exactly (SET NX PX, SET GET, INCR + PEXPIRE, an
//! atomic compare-and-consume).
//!
//! Values are opaque bytes with a time to live; expiry is decided by the injected clock.
//!
//! On the embedded default the memory backend is saved to `data_dir` ([`StateFile`]) and
//! restored at start, so limits and pending codes outlive a restart (docs/security.md#42).

mod memory;
mod persist;
mod redis;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use self::redis::{Heard, RedisState};
pub use memory::MemoryState;
pub use persist::{FILE_NAME, Restored, SAVE_INTERVAL, Saved, StateFile};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::StateConfig;

/// State failures. Callers fail closed (a login is refused, never waved through).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    /// The backend is unreachable, answered an error, or did not answer in time.
    #[error("shared state unavailable")]
    Unavailable(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The state file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The state file is not valid JSON of the expected shape.
    #[error("{path}: not a state file: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// The state file was written by another version of the format.
    #[error("{path}: state file version {found}; this build reads version {known}")]
    Version {
        /// The file.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// The version this build reads and writes.
        known: u32,
    },
    /// A code record in the state file has a digest of the wrong length.
    #[error("{path}: the code record {key:?} has no valid digest")]
    Digest {
        /// The file.
        path: PathBuf,
        /// The record's key.
        key: String,
    },
}

/// The outcome of presenting a code digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consume {
    /// It matched: the record (now deleted, so it works once).
    Accepted(Vec<u8>),
    /// It did not match; this many attempts are left (0: the record was deleted).
    Rejected {
        /// Attempts left.
        left: u32,
    },
    /// No such record (never issued, expired, used or burnt).
    Missing,
}

/// A code record: an opaque payload, the digest that unlocks it, and the attempts left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRecord {
    /// Returned on success.
    pub payload: Vec<u8>,
    /// The keyed digest of the code.
    pub digest: [u8; 32],
    /// Wrong guesses allowed before the record is burnt.
    pub attempts: u32,
}

/// The ephemeral store.
#[derive(Debug, Clone)]
pub enum State {
    /// In this process.
    Memory(Arc<MemoryState>),
    /// In Redis, shared by every replica.
    Redis(Arc<RedisState>),
}

impl State {
    /// An in-memory store reading time from `clock`.
    pub fn memory(clock: Arc<dyn Clock>) -> Self {
        Self::Memory(Arc::new(MemoryState::new(clock)))
    }

    /// The configured backend. Redis is connected lazily: one that is down at start does not
    /// stop the gateway; logins fail closed until it answers.
    pub fn open(config: &StateConfig, clock: Arc<dyn Clock>) -> Result<Self, StateError> {
        match config {
            StateConfig::Memory => Ok(Self::memory(clock)),
            StateConfig::Redis(r) => Ok(Self::Redis(Arc::new(RedisState::new(r, clock)?))),
        }
    }

    /// The file this state is saved to and restored from, at `path`; `None` for a backend that
    /// keeps its data itself.
    pub fn file(&self, path: PathBuf) -> Option<StateFile> {
        match self {
            Self::Memory(m) => Some(StateFile::new(path, m.clone())),
            Self::Redis(_) => None,
        }
    }

    /// Stores `value` under `key` unless the key exists (SET NX PX). Returns whether it was set.
    pub async fn put_new(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StateError> {
        match self {
            Self::Memory(m) => Ok(m.put_new(key, value, ttl)),
            Self::Redis(r) => r.put_new(key, value, ttl).await,
        }
    }

    /// Stores `value` under `key`, returning the previous value (SET GET PX).
    pub async fn swap(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<Option<Vec<u8>>, StateError> {
        match self {
            Self::Memory(m) => Ok(m.swap(key, value, ttl)),
            Self::Redis(r) => r.swap(key, value, ttl).await,
        }
    }

    /// The value under `key`.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        match self {
            Self::Memory(m) => Ok(m.get(key)),
            Self::Redis(r) => r.get(key).await,
        }
    }

    /// Removes `key`.
    pub async fn delete(&self, key: &str) -> Result<(), StateError> {
        match self {
            Self::Memory(m) => {
                m.delete(key);
                Ok(())
            }
            Self::Redis(r) => r.delete(key).await,
        }
    }

    /// Counts an event in a fixed window starting at the first event (INCR, PEXPIRE on the
    /// first); returns the count including this one.
    pub async fn hit(&self, key: &str, window: Duration) -> Result<u64, StateError> {
        match self {
            Self::Memory(m) => Ok(m.hit(key, window)),
            Self::Redis(r) => r.hit(key, window).await,
        }
    }

    /// The current count of a window counter without adding to it.
    pub async fn count(&self, key: &str) -> Result<u64, StateError> {
        match self {
            Self::Memory(m) => Ok(m.count(key)),
            Self::Redis(r) => r.count(key).await,
        }
    }

    /// Reads window counters ([`State::count`]) and whether keys are set, in one round trip
    /// (MGET): the send limits of one request.
    pub async fn read_many(
        &self,
        counters: &[&str],
        flags: &[&str],
    ) -> Result<(Vec<u64>, Vec<bool>), StateError> {
        match self {
            Self::Memory(m) => Ok((
                counters.iter().map(|k| m.count(k)).collect(),
                flags.iter().map(|k| m.get(k).is_some()).collect(),
            )),
            Self::Redis(r) => r.read_many(counters, flags).await,
        }
    }

    /// Counts one event in each of `counters` ([`State::hit`], same window) and sets `flag`
    /// unless it is set ([`State::put_new`]), in one round trip.
    pub async fn hit_many(
        &self,
        counters: &[&str],
        window: Duration,
        flag: &str,
        ttl: Duration,
    ) -> Result<(), StateError> {
        match self {
            Self::Memory(m) => {
                for k in counters {
                    m.hit(k, window);
                }
                m.put_new(flag, b"1", ttl);
                Ok(())
            }
            Self::Redis(r) => r.hit_many(counters, window, flag, ttl).await,
        }
    }

    /// Stores a code record; with `replace` false only when the key holds none (NX).
    /// Returns whether it was stored.
    pub async fn put_code(
        &self,
        key: &str,
        record: CodeRecord,
        ttl: Duration,
        replace: bool,
    ) -> Result<bool, StateError> {
        match self {
            Self::Memory(m) => Ok(m.put_code(key, record, ttl, replace)),
            Self::Redis(r) => r.put_code(key, record, ttl, replace).await,
        }
    }

    /// The payload of the code record under `key`, without using an attempt.
    pub async fn peek_code(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        match self {
            Self::Memory(m) => Ok(m.peek_code(key)),
            Self::Redis(r) => r.peek_code(key).await,
        }
    }

    /// Atomically checks `digest` against the record under `key`: on a match the record is
    /// deleted and its payload returned (single use, also under concurrent submissions); on a
    /// mismatch one attempt is used, and the record is deleted when none are left.
    pub async fn consume_code(&self, key: &str, digest: &[u8; 32]) -> Result<Consume, StateError> {
        match self {
            Self::Memory(m) => Ok(m.consume_code(key, digest)),
            Self::Redis(r) => r.consume_code(key, digest).await,
        }
    }

    /// Removes every key starting with `prefix`; how many. Walks every key: for the command
    /// line, never for a request.
    pub async fn delete_prefixed(&self, prefix: &str) -> Result<u64, StateError> {
        match self {
            Self::Memory(m) => Ok(m.delete_prefixed(prefix)),
            Self::Redis(r) => r.delete_prefixed(prefix).await,
        }
    }

    /// Whether other processes share this state (and hear what is published on it).
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Redis(_))
    }

    /// Publishes `payload` on `channel` to every process listening on this state; how many
    /// heard it. Nothing to do in memory: no other process shares it.
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> Result<u64, StateError> {
        match self {
            Self::Memory(_) => Ok(0),
            Self::Redis(r) => r.publish(channel, payload).await,
        }
    }

    /// Hands what is published on `channel` to `tx` until `cancel`, with
    /// [`Heard::Subscribed`] after every (re)subscription (what was published meanwhile is
    /// lost). In memory there is nothing to hear: it waits for `cancel`.
    pub async fn listen(
        &self,
        channel: &str,
        tx: &mpsc::Sender<Heard>,
        cancel: &CancellationToken,
    ) {
        match self {
            Self::Memory(_) => cancel.cancelled().await,
            Self::Redis(r) => r.listen(channel, tx, cancel).await,
        }
    }

    /// Drops expired entries (memory only; Redis expires by itself).
    pub fn sweep(&self) {
        match self {
            Self::Memory(m) => m.sweep(),
            Self::Redis(_) => {}
        }
    }

    /// Whether the backend answers (one round trip, under the call deadline).
    pub async fn ping(&self) -> Result<(), StateError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(r) => r.ping().await,
        }
    }

    /// [`State::ping`] for readiness probes: a result is reused for a second so frequent
    /// probes cost Redis at most one PING a second per replica.
    pub async fn ready(&self) -> Result<(), StateError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Redis(r) => r.ready().await,
        }
    }
}
