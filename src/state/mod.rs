//! Ephemeral shared state (`state`): login codes, rate-limit counters, cooldowns. Memory now;
//! every operation maps onto one Redis primitive or script so several replicas can later share
//! it exactly (SET NX PX, GETDEL, INCR + PEXPIRE, an atomic compare-and-consume).
//!
//! Values are opaque bytes with a time to live; expiry is decided by the injected clock.
//!
//! On the embedded default the memory backend is saved to `data_dir` ([`StateFile`]) and
//! restored at start, so limits and pending codes outlive a restart (docs/security.md#42).

mod memory;
mod persist;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use memory::MemoryState;
pub use persist::{FILE_NAME, Restored, SAVE_INTERVAL, Saved, StateFile};

use crate::clock::Clock;

/// State failures. Callers fail closed (a login is refused, never waved through).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    /// The backend is unreachable.
    #[error("shared state unavailable: {0}")]
    Unavailable(String),
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
}

impl State {
    /// An in-memory store reading time from `clock`.
    pub fn memory(clock: Arc<dyn Clock>) -> Self {
        Self::Memory(Arc::new(MemoryState::new(clock)))
    }

    /// The file this state is saved to and restored from, at `path`; `None` for a backend that
    /// keeps its data itself.
    pub fn file(&self, path: PathBuf) -> Option<StateFile> {
        match self {
            Self::Memory(m) => Some(StateFile::new(path, m.clone())),
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
        }
    }

    /// The value under `key`.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        match self {
            Self::Memory(m) => Ok(m.get(key)),
        }
    }

    /// Removes `key`.
    pub async fn delete(&self, key: &str) -> Result<(), StateError> {
        match self {
            Self::Memory(m) => {
                m.delete(key);
                Ok(())
            }
        }
    }

    /// Counts an event in a fixed window starting at the first event (INCR, PEXPIRE on the
    /// first); returns the count including this one.
    pub async fn hit(&self, key: &str, window: Duration) -> Result<u64, StateError> {
        match self {
            Self::Memory(m) => Ok(m.hit(key, window)),
        }
    }

    /// The current count of a window counter without adding to it.
    pub async fn count(&self, key: &str) -> Result<u64, StateError> {
        match self {
            Self::Memory(m) => Ok(m.count(key)),
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
        }
    }

    /// The payload of the code record under `key`, without using an attempt.
    pub async fn peek_code(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        match self {
            Self::Memory(m) => Ok(m.peek_code(key)),
        }
    }

    /// Atomically checks `digest` against the record under `key`: on a match the record is
    /// deleted and its payload returned (single use, also under concurrent submissions); on a
    /// mismatch one attempt is used, and the record is deleted when none are left.
    pub async fn consume_code(&self, key: &str, digest: &[u8; 32]) -> Result<Consume, StateError> {
        match self {
            Self::Memory(m) => Ok(m.consume_code(key, digest)),
        }
    }

    /// Drops expired entries (memory only; Redis expires by itself).
    pub fn sweep(&self) {
        match self {
            Self::Memory(m) => m.sweep(),
        }
    }

    /// Whether the backend answers (readiness).
    pub async fn ping(&self) -> Result<(), StateError> {
        match self {
            Self::Memory(_) => Ok(()),
        }
    }
}
