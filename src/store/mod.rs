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
mod tests {
    use super::*;

    #[test]
    fn revocations_persist_across_reopen_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_embedded(dir.path()).unwrap();
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
        let s = Store::open_embedded(dir.path()).unwrap();
        let all = s.revocations_since(0).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].kind, RevocationKind::User);
        assert_eq!(all[1].subject, "alice@corp.example");
        assert_eq!(s.revocations_since(a).unwrap().len(), 1);
        assert_eq!(s.prune(10_000).unwrap(), 1);
        assert_eq!(s.revocations_since(0).unwrap().len(), 1);
        s.ping().unwrap();
    }

    const POLICY: LockPolicy = LockPolicy {
        after: 3,
        first: std::time::Duration::from_secs(300),
        longest: std::time::Duration::from_secs(3600),
        hard_cap: 6,
    };

    #[test]
    fn failures_lock_for_a_growing_time_and_reset() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_embedded(dir.path()).unwrap();
        let a = "a@b.example";
        assert_eq!(s.failures(a, 0).unwrap(), Failures::default());
        for i in 1..=3 {
            let f = s.record_failure(a, 1_000, POLICY, true).unwrap();
            assert_eq!(f.consecutive, i);
            assert_eq!(f.locked, i == 3);
        }
        assert_eq!(s.failures(a, 1_000).unwrap().lock_until_ms, Some(301_000));
        // Failures during the lock are written but not counted.
        let f = s.record_failure(a, 2_000, POLICY, false).unwrap();
        assert_eq!((f.consecutive, f.locks), (3, 1));
        drop(s);
        let s = Store::open_embedded(dir.path()).unwrap();
        assert!(
            s.failures(a, 300_999).unwrap().locked,
            "the lock survives a restart"
        );
        assert!(
            !s.failures(a, 301_000).unwrap().locked,
            "and ends by itself"
        );
        // The next failure locks again, twice as long.
        let f = s.record_failure(a, 400_000, POLICY, true).unwrap();
        assert_eq!(
            (f.locked, f.lock_until_ms, f.locks),
            (true, Some(1_000_000), 2)
        );
        assert!(s.reset_failures(a).unwrap());
        assert_eq!(s.failures(a, 0).unwrap(), Failures::default());
        assert!(!s.reset_failures(a).unwrap());
    }

    #[test]
    fn the_hard_cap_locks_until_an_operator_unlocks() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_embedded(dir.path()).unwrap();
        let a = "a@b.example";
        let mut now = 0;
        for _ in 0..6 {
            now += 10_000_000;
            s.record_failure(a, now, POLICY, true).unwrap();
        }
        let f = s.failures(a, now + 100 * 86_400_000).unwrap();
        assert_eq!((f.consecutive, f.locked), (6, true));
        assert!(s.reset_failures(a).unwrap());
        assert!(!s.failures(a, now).unwrap().locked);
    }

    #[test]
    fn locks_double_up_to_the_longest() {
        let mut f = Failures::default();
        let mut lengths = Vec::new();
        let mut now = 0;
        for _ in 0..20 {
            f.consecutive += 1;
            f.locked = f.lock_until_ms.is_some_and(|u| u > now);
            let after = POLICY_LONG.after_failure(f, now, true);
            if after.locks > f.locks {
                lengths.push((after.lock_until_ms.unwrap() - now) / 60_000);
            }
            f = after;
            now = f.lock_until_ms.unwrap_or(now);
        }
        assert_eq!(&lengths[..6], &[5, 10, 20, 40, 60, 60]);
    }

    const POLICY_LONG: LockPolicy = LockPolicy {
        after: 1,
        first: std::time::Duration::from_secs(300),
        longest: std::time::Duration::from_secs(3600),
        hard_cap: 100,
    };

    #[test]
    fn temporary_passwords_follow_the_reissue_rule_and_work_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_embedded(dir.path()).unwrap();
        let day = 86_400_000;
        let t = |digest: u8, at: u64| TempPassword {
            email: "a@b.example".into(),
            digest: [digest; 32],
            kid: "k1".into(),
            issued_ms: at,
            expires_ms: at + day,
            used: false,
        };
        assert!(s.issue_temp_password(&t(1, 1_000), day, false).unwrap());
        // Within 24 h: nothing changes, the first stays valid.
        assert!(!s.issue_temp_password(&t(2, 2_000), day, false).unwrap());
        assert_eq!(
            s.temp_password("a@b.example").unwrap().unwrap().digest,
            [1; 32]
        );
        // --force replaces it.
        assert!(s.issue_temp_password(&t(3, 3_000), day, true).unwrap());
        assert!(
            !s.use_temp_password("a@b.example", &[1; 32], 4_000).unwrap(),
            "the replaced one is dead"
        );
        assert!(s.use_temp_password("a@b.example", &[3; 32], 4_000).unwrap());
        assert!(
            !s.use_temp_password("a@b.example", &[3; 32], 4_001).unwrap(),
            "once"
        );
        // After 24 h a new one may be issued; an expired one does not work.
        assert!(
            s.issue_temp_password(&t(4, 3_000 + day), day, false)
                .unwrap()
        );
        assert!(
            !s.use_temp_password("a@b.example", &[4; 32], 3_000 + 2 * day)
                .unwrap()
        );
    }

    #[test]
    fn links_work_once_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_embedded(dir.path()).unwrap();
        let l = Link {
            digest: [9; 32],
            email: "a@b.example".into(),
            app: "app".into(),
            rd: "https://x/".into(),
            issued_ms: 0,
            expires_ms: 1_000,
        };
        s.put_link(&l).unwrap();
        assert_eq!(
            s.link(&[9; 32], 10).unwrap(),
            Some(l.clone()),
            "looking does not use it"
        );
        assert_eq!(s.link(&[9; 32], 20).unwrap(), Some(l.clone()));
        assert_eq!(s.use_link(&[9; 32], 30).unwrap(), Some(l));
        assert_eq!(s.use_link(&[9; 32], 40).unwrap(), None, "once");
        assert_eq!(s.link(&[9; 32], 40).unwrap(), None);
        let l2 = Link {
            digest: [8; 32],
            email: "a@b.example".into(),
            app: "app".into(),
            rd: "https://x/".into(),
            issued_ms: 0,
            expires_ms: 1_000,
        };
        s.put_link(&l2).unwrap();
        assert_eq!(s.use_link(&[8; 32], 1_000).unwrap(), None, "expired");
        assert_eq!(s.prune_links(2_000).unwrap(), 2);
    }

    #[test]
    fn passwords_are_stored_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_embedded(dir.path()).unwrap();
        assert_eq!(s.password_hash("a@b.example").unwrap(), None);
        assert!(!s.has_password("a@b.example").unwrap());
        s.set_password("a@b.example", "$argon2id$one", 1).unwrap();
        s.set_password("a@b.example", "$argon2id$two", 2).unwrap();
        assert_eq!(
            s.password_hash("a@b.example").unwrap().as_deref(),
            Some("$argon2id$two")
        );
        assert!(s.has_password("a@b.example").unwrap());
    }

    #[test]
    fn directory_snapshot_is_replaced_whole_and_survives_reopen() {
        use crate::email::Email;
        use crate::users::DirectoryUser;
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_embedded(dir.path()).unwrap();
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
        let s = Store::open_embedded(dir.path()).unwrap();
        assert_eq!(s.directory_snapshot().unwrap(), Some(second));
    }

    #[test]
    fn refuses_a_database_from_a_newer_build() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open_embedded(dir.path()).unwrap());
        let c = rusqlite::Connection::open(dir.path().join("otpgate.db")).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        assert!(matches!(
            Store::open_embedded(dir.path()),
            Err(StoreError::Newer { found: 99, .. })
        ));
    }
}
