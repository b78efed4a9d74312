//! Durable data (`credentials`): revocations, login failures, passwords and the last good
//! directory snapshot. An enum rather than a trait object: each backend is a variant, calls are static, and
//! the async wrappers run the synchronous database work on blocking threads.
//!
//! Backends: `embedded` (SQLite in `data_dir`); `postgres://` arrives for several replicas.

mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;

pub use sqlite::SqliteStore;

use crate::users::DirectorySnapshot;

/// Store failures. Callers fail closed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The data folder could not be created.
    #[error("{path}: {source}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database was written by a newer otpgate.
    #[error("the database has schema version {found}; this build knows up to {known}")]
    Newer {
        /// Version in the file.
        found: i64,
        /// Newest this build knows.
        known: i64,
    },
    /// A thread panicked while holding the connection.
    #[error("the database connection is unusable after an earlier failure")]
    Poisoned,
    /// The blocking task did not complete.
    #[error("database task failed: {0}")]
    Task(String),
}

/// What a revocation covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationKind {
    /// One session, by id.
    Session,
    /// Every session of one address issued before a cut-off ("log out everywhere").
    User,
    /// A portal session and every app session handed off from it, by the portal session's id
    /// (docs/security.md#46).
    Family,
}

impl RevocationKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::User => "user",
            Self::Family => "family",
        }
    }

    /// The kind stored as `text`; unknown text reads as one session, the narrowest.
    pub fn from_text(text: &str) -> Self {
        match text {
            "user" => Self::User,
            "family" => Self::Family,
            _ => Self::Session,
        }
    }
}

/// One stored revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Increasing sequence number; replicas and the cache catch up from the last one seen.
    pub seq: i64,
    /// What it covers.
    pub kind: RevocationKind,
    /// The session id (hex) or the normalised address.
    pub subject: String,
    /// For `User`: sessions issued before this instant (Unix ms) are revoked.
    pub not_before_ms: u64,
    /// After this instant (Unix ms) the entry is moot and may be pruned.
    pub expires_ms: u64,
}

/// Consecutive failed logins of one account from clients without its device cookie.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Failures {
    /// Failures since the last success (failures during a lock or ban count once).
    pub consecutive: u32,
    /// Locked now (for clients without the account's device cookie).
    pub locked: bool,
    /// When the latest lock ends (Unix ms; [`LockPolicy::FOREVER`] at the hard cap, until
    /// `users unlock`).
    pub lock_until_ms: Option<u64>,
    /// How many locks since the last success: each lasts twice as long as the one before.
    pub locks: u32,
}

/// How failed logins from untrusted clients lock an account (docs/security.md#39): after
/// `after` consecutive failures, for `first`, doubling with each further lock up to `longest`;
/// at `hard_cap` consecutive failures, until an operator unlocks it (NIST 800-63B s5.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockPolicy {
    /// Consecutive failures that lock the account.
    pub after: u32,
    /// The first lock's length.
    pub first: std::time::Duration,
    /// The longest lock.
    pub longest: std::time::Duration,
    /// Consecutive failures that lock it until `users unlock`.
    pub hard_cap: u32,
}

impl LockPolicy {
    /// The end of a lock that waits for an operator (the largest instant the store keeps).
    pub const FOREVER: u64 = i64::MAX.unsigned_abs();

    /// The account's state after a failure at `now_ms` (`counted`: it was not during a lock).
    /// A failure after a lock ended locks again at once, for twice as long.
    pub fn after_failure(self, f: Failures, now_ms: u64, counted: bool) -> Failures {
        if f.consecutive >= self.hard_cap {
            return Failures {
                locked: true,
                lock_until_ms: Some(Self::FOREVER),
                ..f
            };
        }
        if !counted || f.locked || f.consecutive < self.after {
            return f;
        }
        let locks = f.locks.saturating_add(1);
        let factor = 2u32.saturating_pow(locks - 1);
        let length = self.first.saturating_mul(factor).min(self.longest);
        let length_ms = u64::try_from(length.as_millis()).unwrap_or(u64::MAX);
        Failures {
            locked: true,
            lock_until_ms: Some(now_ms.saturating_add(length_ms)),
            locks,
            ..f
        }
    }
}

/// A temporary password as stored: its keyed digest, never the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TempPassword {
    /// The address it belongs to.
    pub email: String,
    /// HMAC of the password under the key `kid`.
    pub digest: [u8; 32],
    /// The key of the digest.
    pub kid: String,
    /// When it was issued (Unix ms), for the once-per-`reissue_after` rule.
    pub issued_ms: u64,
    /// When it stops working (Unix ms).
    pub expires_ms: u64,
    /// Whether it was used (it works once).
    pub used: bool,
}

/// A one-time link as stored: its keyed digest, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// HMAC of the token.
    pub digest: [u8; 32],
    /// Who it logs in.
    pub email: String,
    /// The app it is for.
    pub app: String,
    /// The validated return target.
    pub rd: String,
    /// Issued (Unix ms).
    pub issued_ms: u64,
    /// Stops working (Unix ms).
    pub expires_ms: u64,
}

/// The durable store: password hashes, temporary passwords, link tokens, revocations, failure
/// counts and the directory snapshot. Named for what it is, not for one kind of record.
#[derive(Debug, Clone)]
pub enum Store {
    /// SQLite in `data_dir`.
    Embedded(Arc<SqliteStore>),
}

impl Store {
    /// Opens the embedded store in `data_dir`.
    pub fn open_embedded(data_dir: &std::path::Path) -> Result<Self, StoreError> {
        Ok(Self::Embedded(Arc::new(SqliteStore::open(data_dir)?)))
    }

    /// Records a revocation (blocking; see [`Store::run`] for async callers).
    pub fn revoke(
        &self,
        kind: RevocationKind,
        subject: &str,
        not_before_ms: u64,
        expires_ms: u64,
        now_ms: u64,
    ) -> Result<i64, StoreError> {
        match self {
            Self::Embedded(db) => {
                db.add_revocation(kind, subject, not_before_ms, expires_ms, now_ms)
            }
        }
    }

    /// Revocations recorded after `seq` (blocking).
    pub fn revocations_since(&self, seq: i64) -> Result<Vec<Revocation>, StoreError> {
        match self {
            Self::Embedded(db) => db.revocations_since(seq),
        }
    }

    /// Deletes revocations that no longer matter (blocking).
    pub fn prune(&self, now_ms: u64) -> Result<usize, StoreError> {
        match self {
            Self::Embedded(db) => db.prune(now_ms),
        }
    }

    /// The failure count of an account as of `now_ms` (blocking).
    pub fn failures(&self, email: &str, now_ms: u64) -> Result<Failures, StoreError> {
        match self {
            Self::Embedded(db) => db.failures(email, now_ms),
        }
    }

    /// Writes a failed login; `count` is false for a failure during a lock or ban, which is
    /// written the same way but not counted again. Locks the account as `policy` says
    /// (blocking).
    pub fn record_failure(
        &self,
        email: &str,
        now_ms: u64,
        policy: LockPolicy,
        count: bool,
    ) -> Result<Failures, StoreError> {
        match self {
            Self::Embedded(db) => db.record_failure(email, now_ms, policy, count),
        }
    }

    /// Clears the failure count and any lock (a success, or `users unlock`) (blocking). Returns
    /// whether there was anything to clear.
    pub fn reset_failures(&self, email: &str) -> Result<bool, StoreError> {
        match self {
            Self::Embedded(db) => db.reset_failures(email),
        }
    }

    /// The Argon2id PHC string of an address's password (blocking).
    pub fn password_hash(&self, email: &str) -> Result<Option<String>, StoreError> {
        match self {
            Self::Embedded(db) => db.password_hash(email),
        }
    }

    /// Stores a password hash; committed (durable) when this returns (blocking).
    pub fn set_password(&self, email: &str, hash: &str, now_ms: u64) -> Result<(), StoreError> {
        match self {
            Self::Embedded(db) => db.set_password(email, hash, now_ms),
        }
    }

    /// Records a new temporary password unless one was issued within `reissue_after_ms` (then
    /// nothing changes and the earlier one stays valid); `force` overrides (blocking). Returns
    /// whether it was recorded.
    pub fn issue_temp_password(
        &self,
        t: &TempPassword,
        reissue_after_ms: u64,
        force: bool,
    ) -> Result<bool, StoreError> {
        match self {
            Self::Embedded(db) => db.issue_temp_password(t, reissue_after_ms, force),
        }
    }

    /// The current temporary password record of an address (blocking).
    pub fn temp_password(&self, email: &str) -> Result<Option<TempPassword>, StoreError> {
        match self {
            Self::Embedded(db) => db.temp_password(email),
        }
    }

    /// Marks the temporary password used if `digest` is its digest and it is unused and
    /// unexpired; atomic (blocking). Returns whether it was.
    pub fn use_temp_password(
        &self,
        email: &str,
        digest: &[u8; 32],
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        match self {
            Self::Embedded(db) => db.use_temp_password(email, digest, now_ms),
        }
    }

    /// Stores a one-time link (blocking).
    pub fn put_link(&self, link: &Link) -> Result<(), StoreError> {
        match self {
            Self::Embedded(db) => db.put_link(link),
        }
    }

    /// A live (unused, unexpired) link, without using it (blocking).
    pub fn link(&self, digest: &[u8; 32], now_ms: u64) -> Result<Option<Link>, StoreError> {
        match self {
            Self::Embedded(db) => db.link(digest, now_ms),
        }
    }

    /// Uses a live link: atomic, so it works once (blocking).
    pub fn use_link(&self, digest: &[u8; 32], now_ms: u64) -> Result<Option<Link>, StoreError> {
        match self {
            Self::Embedded(db) => db.use_link(digest, now_ms),
        }
    }

    /// Deletes expired links (blocking).
    pub fn prune_links(&self, now_ms: u64) -> Result<usize, StoreError> {
        match self {
            Self::Embedded(db) => db.prune_links(now_ms),
        }
    }

    /// Whether the address has a password of its own (blocking).
    pub fn has_password(&self, email: &str) -> Result<bool, StoreError> {
        match self {
            Self::Embedded(db) => db.has_password(email),
        }
    }

    /// Replaces the persisted directory snapshot with `snapshot` (blocking).
    pub fn save_directory_snapshot(&self, snapshot: &DirectorySnapshot) -> Result<(), StoreError> {
        match self {
            Self::Embedded(db) => db.save_directory_snapshot(snapshot),
        }
    }

    /// The persisted directory snapshot, if a sync ever succeeded (blocking).
    pub fn directory_snapshot(&self) -> Result<Option<DirectorySnapshot>, StoreError> {
        match self {
            Self::Embedded(db) => db.directory_snapshot(),
        }
    }

    /// Checks that the store answers (blocking).
    pub fn ping(&self) -> Result<(), StoreError> {
        match self {
            Self::Embedded(db) => db.ping(),
        }
    }

    /// Runs blocking store work on a blocking thread.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Self) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

#[cfg(test)]
mod tests;
