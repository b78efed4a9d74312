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
}

impl RevocationKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::User => "user",
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

/// Consecutive failed logins of one account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Failures {
    /// Failures since the last success.
    pub consecutive: u32,
    /// Locked after reaching the cap, until `users unlock`.
    pub locked: bool,
}

/// The credentials store.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// SQLite in `data_dir`.
    Embedded(Arc<SqliteStore>),
}

impl Credentials {
    /// Opens the embedded store in `data_dir`.
    pub fn open_embedded(data_dir: &std::path::Path) -> Result<Self, StoreError> {
        Ok(Self::Embedded(Arc::new(SqliteStore::open(data_dir)?)))
    }

    /// Records a revocation (blocking; see [`Credentials::run`] for async callers).
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

    /// The failure count of an account (blocking).
    pub fn failures(&self, email: &str) -> Result<Failures, StoreError> {
        match self {
            Self::Embedded(db) => db.failures(email),
        }
    }

    /// Counts a failed login; locks the account when `cap` is reached (blocking).
    pub fn record_failure(
        &self,
        email: &str,
        now_ms: u64,
        cap: u32,
    ) -> Result<Failures, StoreError> {
        match self {
            Self::Embedded(db) => db.record_failure(email, now_ms, cap),
        }
    }

    /// Clears the failure count and any lock (a success, or `users unlock`) (blocking). Returns
    /// whether there was anything to clear.
    pub fn reset_failures(&self, email: &str) -> Result<bool, StoreError> {
        match self {
            Self::Embedded(db) => db.reset_failures(email),
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
mod tests {
    use super::*;

    #[test]
    fn revocations_persist_across_reopen_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let s = Credentials::open_embedded(dir.path()).unwrap();
        let a = s
            .revoke(RevocationKind::Session, "00ff", 0, 5_000, 1_000)
            .unwrap();
        let b = s
            .revoke(
                RevocationKind::User,
                "alice@corp.example",
                1_000,
                90_000,
                1_000,
            )
            .unwrap();
        assert!(b > a);
        drop(s);
        let s = Credentials::open_embedded(dir.path()).unwrap();
        let all = s.revocations_since(0).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].kind, RevocationKind::User);
        assert_eq!(all[1].subject, "alice@corp.example");
        assert_eq!(s.revocations_since(a).unwrap().len(), 1);
        assert_eq!(s.prune(10_000).unwrap(), 1);
        assert_eq!(s.revocations_since(0).unwrap().len(), 1);
        s.ping().unwrap();
    }

    #[test]
    fn failures_count_lock_at_the_cap_and_reset() {
        let dir = tempfile::tempdir().unwrap();
        let s = Credentials::open_embedded(dir.path()).unwrap();
        assert_eq!(s.failures("a@b.example").unwrap(), Failures::default());
        for i in 1..=3 {
            let f = s.record_failure("a@b.example", 1_000, 3).unwrap();
            assert_eq!(
                f,
                Failures {
                    consecutive: i,
                    locked: i == 3
                }
            );
        }
        drop(s);
        let s = Credentials::open_embedded(dir.path()).unwrap();
        assert!(
            s.failures("a@b.example").unwrap().locked,
            "the lock survives a restart"
        );
        assert!(s.reset_failures("a@b.example").unwrap());
        assert_eq!(s.failures("a@b.example").unwrap(), Failures::default());
        assert!(!s.reset_failures("a@b.example").unwrap());
    }

    #[test]
    fn directory_snapshot_is_replaced_whole_and_survives_reopen() {
        use crate::email::Email;
        use crate::users::DirectoryUser;
        let dir = tempfile::tempdir().unwrap();
        let s = Credentials::open_embedded(dir.path()).unwrap();
        assert_eq!(s.directory_snapshot().unwrap(), None);
        let user = |id: &str, temp: Option<&str>, groups: &[&str]| DirectoryUser {
            id: id.into(),
            dn: format!("uid={id},dc=x"),
            temp_auth_email: temp.map(|t| Email::parse(t).unwrap()),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        };
        let first = DirectorySnapshot {
            fingerprint: "abc".into(),
            synced_ms: 1_000,
            users: vec![
                user(
                    "alice@x.example",
                    Some("alice@home.example"),
                    &["admins", "staff"],
                ),
                user("bob@x.example", None, &[]),
                user("carol", Some("carol@x.example"), &["staff"]),
            ],
        };
        s.save_directory_snapshot(&first).unwrap();
        assert_eq!(s.directory_snapshot().unwrap().as_ref(), Some(&first));
        let second = DirectorySnapshot {
            fingerprint: "def".into(),
            synced_ms: 2_000,
            users: vec![user("bob@x.example", None, &["staff"])],
        };
        s.save_directory_snapshot(&second).unwrap();
        drop(s);
        let s = Credentials::open_embedded(dir.path()).unwrap();
        assert_eq!(s.directory_snapshot().unwrap(), Some(second));
    }

    #[test]
    fn refuses_a_database_from_a_newer_build() {
        let dir = tempfile::tempdir().unwrap();
        drop(Credentials::open_embedded(dir.path()).unwrap());
        let c = rusqlite::Connection::open(dir.path().join("otpgate.db")).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        assert!(matches!(
            Credentials::open_embedded(dir.path()),
            Err(StoreError::Newer { found: 99, .. })
        ));
    }
}
