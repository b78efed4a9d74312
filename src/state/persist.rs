//! The memory backend saved to a file in `data_dir` and restored at start, so rate-limit
//! counters, cooldowns, bans and pending codes outlive a restart (docs/security.md#42). Memory
//! stays the source of truth while running; the file is a copy written off the request path.
//!
//! A file of its own rather than a table in the SQLite store: the copy is replaced whole, which a
//! rename does atomically without holding the store's connection (which logins wait on) for a
//! write of every entry; the store is meant to become shared between replicas
//! (`credentials: postgres://`), while this state belongs to one process; and it needs no schema
//! migration. JSON keeps it readable when an operator wants to look.
//!
//! Format (`version` 1): `{"version":1,"saved_ms":…,"entries":[{"key":"…","expires_ms":…,
//! "value":{"counter":3}}, …]}`, where a value is `{"counter":n}`, `{"bytes":"<base64>"}` or
//! `{"code":{"payload":"<base64>","digest":"<base64>","attempts":n}}`. Times are Unix ms by the
//! injected clock. Keys are opaque: whatever key the login code uses is saved.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::memory::{MemoryState, Value};
use super::{CodeRecord, StateError};

/// The file's name in `data_dir`.
pub const FILE_NAME: &str = "state.json";

/// How often the running gateway saves the state when it changed: what a crash can lose.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(5);

const VERSION: u32 = 1;

/// The memory state's file (see the module documentation).
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    state: Arc<MemoryState>,
    /// The change count the file holds. The lock also keeps two saves from sharing the
    /// temporary file.
    saved: Mutex<u64>,
}

/// What a restore found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Entries put back with their original deadlines.
    pub entries: usize,
    /// Entries whose deadline passed while the gateway was down, left out.
    pub expired: usize,
}

/// What a save did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// Nothing changed since the last save; the file was left alone.
    Unchanged,
    /// The file was replaced with this many live entries.
    Written(usize),
}

#[derive(Deserialize)]
struct Header {
    version: u32,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    saved_ms: u64,
    entries: Vec<SavedEntry>,
}

#[derive(Serialize, Deserialize)]
struct SavedEntry {
    key: String,
    expires_ms: u64,
    value: SavedValue,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SavedValue {
    Counter(u64),
    Bytes(#[serde(with = "b64")] Vec<u8>),
    Code {
        #[serde(with = "b64")]
        payload: Vec<u8>,
        #[serde(with = "b64")]
        digest: Vec<u8>,
        attempts: u32,
    },
}

impl From<&Value> for SavedValue {
    fn from(v: &Value) -> Self {
        match v {
            Value::Counter(n) => Self::Counter(*n),
            Value::Bytes(b) => Self::Bytes(b.clone()),
            Value::Code(r) => Self::Code {
                payload: r.payload.clone(),
                digest: r.digest.to_vec(),
                attempts: r.attempts,
            },
        }
    }
}

impl SavedValue {
    fn into_value(self) -> Option<Value> {
        Some(match self {
            Self::Counter(n) => Value::Counter(n),
            Self::Bytes(b) => Value::Bytes(b),
            Self::Code {
                payload,
                digest,
                attempts,
            } => Value::Code(CodeRecord {
                payload,
                digest: digest.try_into().ok()?,
                attempts,
            }),
        })
    }
}

mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

impl StateFile {
    pub(super) fn new(path: PathBuf, state: Arc<MemoryState>) -> Self {
        Self {
            path,
            state,
            saved: Mutex::new(0),
        }
    }

    /// Where the file lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Puts back what the file holds, with the original deadlines; entries already past theirs
    /// are left out. No file is an empty state. The file is read and checked whole before
    /// anything is put back, so a damaged one restores nothing. Blocking; call it once, before
    /// the gateway serves.
    pub fn load(&self) -> Result<Restored, StateError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Restored::default()),
            Err(e) => return Err(self.io(e)),
        };
        let header: Header = serde_json::from_slice(&bytes).map_err(|e| self.format(e))?;
        if header.version != VERSION {
            return Err(StateError::Version {
                path: self.path.clone(),
                found: header.version,
                known: VERSION,
            });
        }
        let snapshot: Snapshot = serde_json::from_slice(&bytes).map_err(|e| self.format(e))?;
        let mut entries = Vec::with_capacity(snapshot.entries.len());
        for e in snapshot.entries {
            let Some(value) = e.value.into_value() else {
                return Err(StateError::Digest {
                    path: self.path.clone(),
                    key: e.key,
                });
            };
            entries.push((e.key, value, e.expires_ms));
        }
        let mut restored = Restored::default();
        for (key, value, expires_ms) in entries {
            if self.state.restore(key, value, expires_ms) {
                restored.entries += 1;
            } else {
                restored.expired += 1;
            }
        }
        Ok(restored)
    }

    /// Replaces the file with every live entry, if anything changed since the last save.
    /// Blocking (it copies the map and writes the disk): run it off the request path.
    pub fn save(&self) -> Result<Saved, StateError> {
        let mut saved = self.saved.lock().unwrap_or_else(PoisonError::into_inner);
        // Read before copying: a write counted after this point is saved next time.
        let changes = self.state.changes();
        if changes == *saved {
            return Ok(Saved::Unchanged);
        }
        let entries = self
            .state
            .live_entries(|key, value, expires_ms| SavedEntry {
                key: key.to_owned(),
                expires_ms,
                value: value.into(),
            });
        let count = entries.len();
        let snapshot = Snapshot {
            version: VERSION,
            saved_ms: self.state.now_ms(),
            entries,
        };
        let bytes = serde_json::to_vec(&snapshot).map_err(|e| self.format(e))?;
        crate::private_file::replace(&self.path, &bytes).map_err(|e| self.io(e))?;
        *saved = changes;
        Ok(Saved::Written(count))
    }

    fn io(&self, e: std::io::Error) -> StateError {
        StateError::File {
            path: self.path.clone(),
            source: Arc::new(e),
        }
    }

    fn format(&self, e: serde_json::Error) -> StateError {
        StateError::Format {
            path: self.path.clone(),
            source: Arc::new(e),
        }
    }
}

#[cfg(test)]
mod tests;
