//! Durable data (`credentials`): revocations, login failures, passwords and the last good
//! directory snapshot. An enum rather than a trait object: each backend is a variant, calls are
//! static. The methods are async: the SQLite backend's synchronous work runs on a blocking
//! thread, PostgreSQL is asynchronous already.
//!
//! Backends: `embedded` (SQLite in `data_dir`, one replica) and `postgres://` (shared by
//! several replicas). `otpgate store copy` moves the data between them ([`copy`]).

pub mod copy;
mod dump;
mod postgres;
mod sqlite;
mod sqlite_dump;

use std::path::PathBuf;
use std::sync::Arc;

pub use dump::{Counts, Dump, FailureRow, LinkRow, PasswordRow, RevocationRow, TempPasswordRow};
pub use postgres::{PgError, PgStore};
pub use sqlite::SqliteStore;

use crate::config::CredentialsConfig;
use crate::metrics;
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
    /// PostgreSQL refused, is unreachable or did not answer in time.
    #[error("credentials store (PostgreSQL {op})")]
    Postgres {
        /// The operation.
        op: &'static str,
        /// Why.
        #[source]
        source: PgError,
    },
}

/// What a revocation covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationKind {
    /// One session, by id.
    Session,
    /// Every session of one address issued before a cut-off ("log out everywhere").
    User,
    /// A portal session and every app session handed off from it, by the portal session's id
    /// (docs/security.md#47).
    Family,
}

impl RevocationKind {
    /// The name stored in the database (text, so new kinds need no schema change).
    pub fn as_str(self) -> &'static str {
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
    /// PostgreSQL, shared by several replicas.
    Postgres(Arc<PgStore>),
}

/// Runs SQLite work on a blocking thread.
async fn blocking<T: Send + 'static>(
    db: &Arc<SqliteStore>,
    f: impl FnOnce(&SqliteStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let db = Arc::clone(db);
    tokio::task::spawn_blocking(move || f(&db))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

/// Counts a failed call (`otpgate_store_errors_total`), whichever the backend.
fn counted<T>(op: &'static str, r: Result<T, StoreError>) -> Result<T, StoreError> {
    if r.is_err() {
        ::metrics::counter!(metrics::STORE_ERRORS, "op" => op).increment(1);
    }
    r
}

/// Dispatches one call: SQLite on a blocking thread (with the owned arguments `$arg`), PostgreSQL
/// natively; failures counted under `$op`.
macro_rules! dispatch {
    ($self:ident, $op:literal, |$db:ident| $sqlite:expr, |$pg:ident| $postgres:expr) => {
        counted(
            $op,
            match $self {
                Self::Embedded(db) => blocking(db, move |$db| $sqlite).await,
                Self::Postgres($pg) => $postgres.await,
            },
        )
    };
}

impl Store {
    /// Opens the embedded store in `data_dir` (blocking: call before serving or on a blocking
    /// thread).
    pub fn open_embedded(data_dir: &std::path::Path) -> Result<Self, StoreError> {
        Ok(Self::Embedded(Arc::new(SqliteStore::open(data_dir)?)))
    }

    /// Opens the configured store: SQLite in `data_dir`, or PostgreSQL (connects, and applies
    /// the migrations this build knows under an advisory lock).
    pub async fn open(
        credentials: &CredentialsConfig,
        data_dir: &std::path::Path,
    ) -> Result<Self, StoreError> {
        match credentials {
            CredentialsConfig::Embedded => {
                let dir = data_dir.to_path_buf();
                tokio::task::spawn_blocking(move || Self::open_embedded(&dir))
                    .await
                    .map_err(|e| StoreError::Task(e.to_string()))?
            }
            CredentialsConfig::Postgres(pg) => {
                Ok(Self::Postgres(Arc::new(PgStore::connect(pg).await?)))
            }
        }
    }

    /// Which backend, for messages: `embedded (PATH)` or the URL (no secret in either).
    pub fn describe(&self) -> String {
        match self {
            Self::Embedded(db) => format!("embedded ({})", db.path().display()),
            Self::Postgres(pg) => pg.url().to_owned(),
        }
    }

    /// Records a revocation; returns its sequence number.
    pub async fn revoke(
        &self,
        kind: RevocationKind,
        subject: &str,
        not_before_ms: u64,
        expires_ms: u64,
        now_ms: u64,
    ) -> Result<i64, StoreError> {
        let s = subject.to_owned();
        dispatch!(
            self,
            "revoke",
            |db| db.add_revocation(kind, &s, not_before_ms, expires_ms, now_ms),
            |pg| pg.add_revocation(kind, subject, not_before_ms, expires_ms, now_ms)
        )
    }

    /// Revocations recorded after `seq`.
    pub async fn revocations_since(&self, seq: i64) -> Result<Vec<Revocation>, StoreError> {
        dispatch!(
            self,
            "revocations_since",
            |db| db.revocations_since(seq),
            |pg| pg.revocations_since(seq)
        )
    }

    /// Deletes revocations that no longer matter.
    pub async fn prune(&self, now_ms: u64) -> Result<usize, StoreError> {
        dispatch!(self, "prune", |db| db.prune(now_ms), |pg| pg.prune(now_ms))
    }

    /// The failure count of an account as of `now_ms`.
    pub async fn failures(&self, email: &str, now_ms: u64) -> Result<Failures, StoreError> {
        let e = email.to_owned();
        dispatch!(self, "failures", |db| db.failures(&e, now_ms), |pg| pg
            .failures(email, now_ms))
    }

    /// Writes a failed login; `count` is false for a failure during a lock or ban, which is
    /// written the same way but not counted again. Locks the account as `policy` says; atomic
    /// (one transaction), so replicas counting at once lose no failure.
    pub async fn record_failure(
        &self,
        email: &str,
        now_ms: u64,
        policy: LockPolicy,
        count: bool,
    ) -> Result<Failures, StoreError> {
        let e = email.to_owned();
        dispatch!(
            self,
            "record_failure",
            |db| db.record_failure(&e, now_ms, policy, count),
            |pg| pg.record_failure(email, now_ms, policy, count)
        )
    }

    /// Clears the failure count and any lock (a success, or `users unlock`). Returns whether
    /// there was anything to clear.
    pub async fn reset_failures(&self, email: &str) -> Result<bool, StoreError> {
        let e = email.to_owned();
        dispatch!(self, "reset_failures", |db| db.reset_failures(&e), |pg| pg
            .reset_failures(email))
    }

    /// The Argon2id PHC string of an address's password.
    pub async fn password_hash(&self, email: &str) -> Result<Option<String>, StoreError> {
        let e = email.to_owned();
        dispatch!(self, "password_hash", |db| db.password_hash(&e), |pg| pg
            .password_hash(email))
    }

    /// Stores a password hash; committed (durable) when this returns.
    pub async fn set_password(
        &self,
        email: &str,
        hash: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let (e, h) = (email.to_owned(), hash.to_owned());
        dispatch!(
            self,
            "set_password",
            |db| db.set_password(&e, &h, now_ms),
            |pg| pg.set_password(email, hash, now_ms)
        )
    }

    /// Records a new temporary password unless one was issued within `reissue_after_ms` (then
    /// nothing changes and the earlier one stays valid); `force` overrides. Atomic: of two
    /// replicas issuing at once, one records. Returns whether it was recorded.
    pub async fn issue_temp_password(
        &self,
        t: &TempPassword,
        reissue_after_ms: u64,
        force: bool,
    ) -> Result<bool, StoreError> {
        let owned = t.clone();
        dispatch!(
            self,
            "issue_temp_password",
            |db| db.issue_temp_password(&owned, reissue_after_ms, force),
            |pg| pg.issue_temp_password(t, reissue_after_ms, force)
        )
    }

    /// The current temporary password record of an address.
    pub async fn temp_password(&self, email: &str) -> Result<Option<TempPassword>, StoreError> {
        let e = email.to_owned();
        dispatch!(self, "temp_password", |db| db.temp_password(&e), |pg| pg
            .temp_password(email))
    }

    /// The password hash and the temporary password of an address, read together.
    pub async fn passwords(
        &self,
        email: &str,
    ) -> Result<(Option<String>, Option<TempPassword>), StoreError> {
        let e = email.to_owned();
        dispatch!(
            self,
            "passwords",
            |db| Ok((db.password_hash(&e)?, db.temp_password(&e)?)),
            |pg| pg.passwords(email)
        )
    }

    /// Marks the temporary password used if `digest` is its digest and it is unused and
    /// unexpired; atomic across replicas. Returns whether it was.
    pub async fn use_temp_password(
        &self,
        email: &str,
        digest: &[u8; 32],
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let (e, d) = (email.to_owned(), *digest);
        dispatch!(
            self,
            "use_temp_password",
            |db| db.use_temp_password(&e, &d, now_ms),
            |pg| pg.use_temp_password(email, digest, now_ms)
        )
    }

    /// Stores a one-time link.
    pub async fn put_link(&self, link: &Link) -> Result<(), StoreError> {
        let l = link.clone();
        dispatch!(self, "put_link", |db| db.put_link(&l), |pg| pg
            .put_link(link))
    }

    /// A live (unused, unexpired) link, without using it.
    pub async fn link(&self, digest: &[u8; 32], now_ms: u64) -> Result<Option<Link>, StoreError> {
        let d = *digest;
        dispatch!(self, "link", |db| db.link(&d, now_ms), |pg| pg
            .link(digest, now_ms))
    }

    /// Uses a live link: atomic across replicas, so it works once.
    pub async fn use_link(
        &self,
        digest: &[u8; 32],
        now_ms: u64,
    ) -> Result<Option<Link>, StoreError> {
        let d = *digest;
        dispatch!(self, "use_link", |db| db.use_link(&d, now_ms), |pg| pg
            .use_link(digest, now_ms))
    }

    /// Deletes expired links.
    pub async fn prune_links(&self, now_ms: u64) -> Result<usize, StoreError> {
        dispatch!(self, "prune_links", |db| db.prune_links(now_ms), |pg| pg
            .prune_links(now_ms))
    }

    /// Whether the address has a password of its own.
    pub async fn has_password(&self, email: &str) -> Result<bool, StoreError> {
        let e = email.to_owned();
        dispatch!(self, "has_password", |db| db.has_password(&e), |pg| pg
            .has_password(email))
    }

    /// Replaces the persisted directory snapshot with `snapshot`.
    pub async fn save_directory_snapshot(
        &self,
        snapshot: &DirectorySnapshot,
    ) -> Result<(), StoreError> {
        let s = snapshot.clone();
        dispatch!(
            self,
            "save_directory_snapshot",
            |db| db.save_directory_snapshot(&s),
            |pg| pg.save_directory_snapshot(snapshot)
        )
    }

    /// The persisted directory snapshot, if a sync ever succeeded.
    pub async fn directory_snapshot(&self) -> Result<Option<DirectorySnapshot>, StoreError> {
        dispatch!(
            self,
            "directory_snapshot",
            |db| db.directory_snapshot(),
            |pg| pg.directory_snapshot()
        )
    }

    /// Checks that the store answers (one round trip, under the call deadline).
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, "ping", |db| db.ping(), |pg| pg.ping())
    }

    /// Every durable record, for `store copy`.
    pub async fn dump(&self) -> Result<Dump, StoreError> {
        dispatch!(self, "dump", |db| db.dump(), |pg| pg.dump())
    }

    /// How many records of each kind the store holds.
    pub async fn counts(&self) -> Result<Counts, StoreError> {
        dispatch!(self, "counts", |db| db.counts(), |pg| pg.counts())
    }

    /// Replaces every durable record with `dump`'s, in one transaction.
    pub async fn restore(&self, dump: &Dump) -> Result<(), StoreError> {
        let d = dump.clone();
        dispatch!(self, "restore", |db| db.restore(&d), |pg| pg.restore(dump))
    }
}

#[cfg(test)]
mod tests;
