//! The embedded credentials store: SQLite in `data_dir` (WAL, full sync: what is committed
//! survives a crash or a SIGKILL), schema versioned with `PRAGMA user_version`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Failures, Link, LockPolicy, Revocation, RevocationKind, StoreError, TempPassword};
use crate::email::Email;
use crate::users::{DirectorySnapshot, DirectoryUser};

/// Schema migrations, applied in order; `user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: revocations (single sessions and "log out everywhere" cut-offs).
    "CREATE TABLE revocations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL CHECK (kind IN ('session', 'user')),
        subject TEXT NOT NULL,
        not_before_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX revocations_expires ON revocations (expires_ms);",
    // 2: consecutive failed logins per account (growing delays, hard cap, `users unlock`).
    "CREATE TABLE login_failures (
        email TEXT PRIMARY KEY,
        consecutive INTEGER NOT NULL,
        last_ms INTEGER NOT NULL,
        locked_ms INTEGER
    );",
    // 3: passwords users chose (argon2id PHC strings), temporary passwords (keyed digests, with
    //    their issue time for the once-per-24h rule) and one-time links (keyed digests).
    "CREATE TABLE passwords (
        email TEXT PRIMARY KEY,
        hash TEXT NOT NULL,
        changed_ms INTEGER NOT NULL
    );
    CREATE TABLE temp_passwords (
        email TEXT PRIMARY KEY,
        digest BLOB NOT NULL,
        kid TEXT NOT NULL,
        issued_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        used_ms INTEGER
    );
    CREATE TABLE link_tokens (
        digest BLOB PRIMARY KEY,
        email TEXT NOT NULL,
        app TEXT NOT NULL,
        rd TEXT NOT NULL,
        issued_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        used_ms INTEGER
    );
    CREATE INDEX link_tokens_expires ON link_tokens (expires_ms);",
    // 4: the last good directory snapshot (users synced from LDAP / Active Directory), so a
    //    restart while the directory is unreachable still knows them. One snapshot at a time,
    //    replaced whole by every successful sync; `fingerprint` names the settings it was taken
    //    with (it is ignored when they change).
    "CREATE TABLE directory_sync (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        fingerprint TEXT NOT NULL,
        synced_ms INTEGER NOT NULL
    );
    CREATE TABLE directory_users (
        id TEXT PRIMARY KEY,
        dn TEXT NOT NULL,
        temp_auth_email TEXT
    );
    CREATE TABLE directory_memberships (
        user_id TEXT NOT NULL REFERENCES directory_users (id) ON DELETE CASCADE,
        group_name TEXT NOT NULL,
        PRIMARY KEY (user_id, group_name)
    );",
    // 5: locks that expire (docs/security.md#39): each lock of an account lasts longer than the
    //    one before, up to a ceiling, and only the hard cap locks until an operator acts. A lock
    //    from before this version becomes a first, five-minute one.
    "ALTER TABLE login_failures ADD COLUMN lock_until_ms INTEGER;
    ALTER TABLE login_failures ADD COLUMN locks INTEGER NOT NULL DEFAULT 0;
    UPDATE login_failures SET lock_until_ms = locked_ms + 300000, locks = 1
        WHERE locked_ms IS NOT NULL;",
    // 6: family revocations (docs/security.md#47): a portal session and every app session
    //    handed off from it. SQLite cannot widen a CHECK in place, so the table is copied into
    //    one that takes the new kind, with its sequence numbers as they were.
    "CREATE TABLE revocations_new (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL CHECK (kind IN ('session', 'user', 'family')),
        subject TEXT NOT NULL,
        not_before_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        created_ms INTEGER NOT NULL
    );
    INSERT INTO revocations_new (seq, kind, subject, not_before_ms, expires_ms, created_ms)
        SELECT seq, kind, subject, not_before_ms, expires_ms, created_ms FROM revocations;
    DROP TABLE revocations;
    ALTER TABLE revocations_new RENAME TO revocations;
    CREATE INDEX revocations_expires ON revocations (expires_ms);",
];

/// A `login_failures` row as of `now_ms`.
fn failures_row(r: &rusqlite::Row<'_>, now_ms: u64) -> Failures {
    let consecutive = r.get::<_, i64>(0).unwrap_or(0);
    let lock_until_ms = r
        .get::<_, Option<i64>>(1)
        .ok()
        .flatten()
        .map(|v| u64::try_from(v).unwrap_or(0));
    let locks = r.get::<_, i64>(2).unwrap_or(0);
    Failures {
        consecutive: u32::try_from(consecutive).unwrap_or(u32::MAX),
        locked: lock_until_ms.is_some_and(|u| u > now_ms),
        lock_until_ms,
        locks: u32::try_from(locks).unwrap_or(u32::MAX),
    }
}

/// The SQLite store. One connection; SQLite serialises writers anyway, and every operation is
/// short (the lock is never held across an await: callers run on blocking threads).
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating when needed) `otpgate.db` in `data_dir` and migrates it.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Io {
            path: data_dir.into(),
            source,
        })?;
        let path = data_dir.join("otpgate.db");
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(Self {
            path,
            conn: Mutex::new(conn),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut guard = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(f(&mut guard)?)
    }

    pub(super) fn add_revocation(
        &self,
        kind: RevocationKind,
        subject: &str,
        not_before_ms: u64,
        expires_ms: u64,
        now_ms: u64,
    ) -> Result<i64, StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO revocations (kind, subject, not_before_ms, expires_ms, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![kind.as_str(), subject, to_i64(not_before_ms), to_i64(expires_ms), to_i64(now_ms)],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    pub(super) fn revocations_since(&self, seq: i64) -> Result<Vec<Revocation>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT seq, kind, subject, not_before_ms, expires_ms FROM revocations WHERE seq > ?1 ORDER BY seq",
            )?;
            let rows = st.query_map(params![seq], |r| {
                let kind: String = r.get(1)?;
                Ok(Revocation {
                    seq: r.get(0)?,
                    kind: RevocationKind::from_text(&kind),
                    subject: r.get(2)?,
                    not_before_ms: from_i64(r.get(3)?),
                    expires_ms: from_i64(r.get(4)?),
                })
            })?;
            rows.collect()
        })
    }

    pub(super) fn prune(&self, now_ms: u64) -> Result<usize, StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM revocations WHERE expires_ms < ?1",
                params![to_i64(now_ms)],
            )
        })
    }

    pub(super) fn failures(&self, email: &str, now_ms: u64) -> Result<Failures, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT consecutive, lock_until_ms, locks FROM login_failures WHERE email = ?1",
                params![email],
                |r| Ok(failures_row(r, now_ms)),
            )
            .optional()
            .map(Option::unwrap_or_default)
        })
    }

    pub(super) fn record_failure(
        &self,
        email: &str,
        now_ms: u64,
        policy: LockPolicy,
        count: bool,
    ) -> Result<Failures, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            // A failure during a lock or ban is written too (the same work for every answer),
            // but does not count again.
            tx.execute(
                "INSERT INTO login_failures (email, consecutive, last_ms) VALUES (?1, ?3, ?2)
                 ON CONFLICT (email) DO UPDATE SET consecutive = consecutive + ?3, last_ms = ?2",
                params![email, to_i64(now_ms), i64::from(count)],
            )?;
            let before = tx.query_row(
                "SELECT consecutive, lock_until_ms, locks FROM login_failures WHERE email = ?1",
                params![email],
                |r| Ok(failures_row(r, now_ms)),
            )?;
            let after = policy.after_failure(before, now_ms, count);
            if after != before {
                tx.execute(
                    "UPDATE login_failures SET lock_until_ms = ?2, locks = ?3, locked_ms = ?4
                     WHERE email = ?1",
                    params![
                        email,
                        after.lock_until_ms.map(to_i64),
                        i64::from(after.locks),
                        to_i64(now_ms)
                    ],
                )?;
            }
            tx.commit()?;
            Ok(after)
        })
    }

    pub(super) fn reset_failures(&self, email: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM login_failures WHERE email = ?1",
                params![email],
            )? > 0)
        })
    }

    pub(super) fn password_hash(&self, email: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT hash FROM passwords WHERE email = ?1",
                params![email],
                |r| r.get(0),
            )
            .optional()
        })
    }

    pub(super) fn set_password(
        &self,
        email: &str,
        hash: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO passwords (email, hash, changed_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (email) DO UPDATE SET hash = ?2, changed_ms = ?3",
                params![email, hash, to_i64(now_ms)],
            )
            .map(|_| ())
        })
    }

    pub(super) fn issue_temp_password(
        &self,
        t: &TempPassword,
        reissue_after_ms: u64,
        force: bool,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let last: Option<i64> =
                tx.query_row("SELECT issued_ms FROM temp_passwords WHERE email = ?1", params![t.email], |r| r.get(0)).optional()?;
            let recent = last.is_some_and(|issued| from_i64(issued).saturating_add(reissue_after_ms) > t.issued_ms);
            if recent && !force {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO temp_passwords (email, digest, kid, issued_ms, expires_ms, used_ms) VALUES (?1, ?2, ?3, ?4, ?5, NULL)
                 ON CONFLICT (email) DO UPDATE SET digest = ?2, kid = ?3, issued_ms = ?4, expires_ms = ?5, used_ms = NULL",
                params![t.email, &t.digest[..], t.kid, to_i64(t.issued_ms), to_i64(t.expires_ms)],
            )?;
            tx.commit()?;
            Ok(true)
        })
    }

    pub(super) fn temp_password(&self, email: &str) -> Result<Option<TempPassword>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT email, digest, kid, issued_ms, expires_ms, used_ms FROM temp_passwords WHERE email = ?1",
                params![email],
                |r| {
                    let digest: Vec<u8> = r.get(1)?;
                    Ok(TempPassword {
                        email: r.get(0)?,
                        digest: digest.try_into().unwrap_or([0; 32]),
                        kid: r.get(2)?,
                        issued_ms: from_i64(r.get(3)?),
                        expires_ms: from_i64(r.get(4)?),
                        used: r.get::<_, Option<i64>>(5)?.is_some(),
                    })
                },
            )
            .optional()
        })
    }

    pub(super) fn use_temp_password(
        &self,
        email: &str,
        digest: &[u8; 32],
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE temp_passwords SET used_ms = ?3 WHERE email = ?1 AND digest = ?2 AND used_ms IS NULL AND expires_ms > ?3",
                params![email, &digest[..], to_i64(now_ms)],
            )?;
            Ok(n == 1)
        })
    }

    pub(super) fn put_link(&self, l: &Link) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO link_tokens (digest, email, app, rd, issued_ms, expires_ms, used_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)",
                params![&l.digest[..], l.email, l.app, l.rd, to_i64(l.issued_ms), to_i64(l.expires_ms)],
            )
            .map(|_| ())
        })
    }

    pub(super) fn link(&self, digest: &[u8; 32], now_ms: u64) -> Result<Option<Link>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT email, app, rd, issued_ms, expires_ms FROM link_tokens WHERE digest = ?1 AND used_ms IS NULL AND expires_ms > ?2",
                params![&digest[..], to_i64(now_ms)],
                |r| Ok(Link { digest: *digest, email: r.get(0)?, app: r.get(1)?, rd: r.get(2)?, issued_ms: from_i64(r.get(3)?), expires_ms: from_i64(r.get(4)?) }),
            )
            .optional()
        })
    }

    pub(super) fn use_link(
        &self,
        digest: &[u8; 32],
        now_ms: u64,
    ) -> Result<Option<Link>, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE link_tokens SET used_ms = ?2 WHERE digest = ?1 AND used_ms IS NULL AND expires_ms > ?2",
                params![&digest[..], to_i64(now_ms)],
            )?;
            if n != 1 {
                return Ok(None);
            }
            let l = tx.query_row(
                "SELECT email, app, rd, issued_ms, expires_ms FROM link_tokens WHERE digest = ?1",
                params![&digest[..]],
                |r| Ok(Link { digest: *digest, email: r.get(0)?, app: r.get(1)?, rd: r.get(2)?, issued_ms: from_i64(r.get(3)?), expires_ms: from_i64(r.get(4)?) }),
            )?;
            tx.commit()?;
            Ok(Some(l))
        })
    }

    pub(super) fn prune_links(&self, now_ms: u64) -> Result<usize, StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM link_tokens WHERE expires_ms < ?1",
                params![to_i64(now_ms)],
            )
        })
    }

    pub(super) fn has_password(&self, email: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT 1 FROM passwords WHERE email = ?1",
                params![email],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
        })
    }

    pub(super) fn save_directory_snapshot(&self, s: &DirectorySnapshot) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM directory_memberships", [])?;
            tx.execute("DELETE FROM directory_users", [])?;
            {
                let mut user = tx.prepare_cached(
                    "INSERT INTO directory_users (id, dn, temp_auth_email) VALUES (?1, ?2, ?3)",
                )?;
                let mut member = tx.prepare_cached(
                    "INSERT OR IGNORE INTO directory_memberships (user_id, group_name) VALUES (?1, ?2)",
                )?;
                for u in &s.users {
                    user.execute(params![
                        u.id,
                        u.dn,
                        u.temp_auth_email.as_ref().map(Email::as_str)
                    ])?;
                    for g in &u.groups {
                        member.execute(params![u.id, g])?;
                    }
                }
            }
            tx.execute(
                "INSERT INTO directory_sync (singleton, fingerprint, synced_ms) VALUES (1, ?1, ?2)
                 ON CONFLICT (singleton) DO UPDATE SET fingerprint = ?1, synced_ms = ?2",
                params![s.fingerprint, to_i64(s.synced_ms)],
            )?;
            tx.commit()
        })
    }

    pub(super) fn directory_snapshot(&self) -> Result<Option<DirectorySnapshot>, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let Some((fingerprint, synced_ms)) = tx
                .query_row(
                    "SELECT fingerprint, synced_ms FROM directory_sync WHERE singleton = 1",
                    [],
                    |r| Ok((r.get::<_, String>(0)?, from_i64(r.get(1)?))),
                )
                .optional()?
            else {
                return Ok(None);
            };
            let mut users: Vec<DirectoryUser> = {
                let mut st = tx.prepare_cached(
                    "SELECT id, dn, temp_auth_email FROM directory_users ORDER BY id",
                )?;
                let rows = st.query_map([], |r| {
                    Ok(DirectoryUser {
                        id: r.get(0)?,
                        dn: r.get(1)?,
                        // Stored from a validated address; one that no longer parses is dropped.
                        temp_auth_email: r
                            .get::<_, Option<String>>(2)?
                            .and_then(|e| Email::parse(&e).ok()),
                        groups: Vec::new(),
                    })
                })?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            {
                let mut st = tx.prepare_cached(
                    "SELECT user_id, group_name FROM directory_memberships ORDER BY user_id, group_name",
                )?;
                let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
                let mut i = 0;
                for row in rows {
                    let (uid, group) = row?;
                    // Both lists are ordered by user id: walk them together.
                    while i < users.len() && users[i].id < uid {
                        i += 1;
                    }
                    if let Some(u) = users.get_mut(i).filter(|u| u.id == uid) {
                        u.groups.push(group);
                    }
                }
            }
            tx.commit()?;
            Ok(Some(DirectorySnapshot {
                fingerprint,
                synced_ms,
                users,
            }))
        })
    }

    pub(super) fn ping(&self) -> Result<(), StoreError> {
        self.with(|c| {
            c.query_row("SELECT 1", [], |_| Ok(()))
                .optional()
                .map(|_| ())
        })
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_i64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if version > known {
        return Err(StoreError::Newer {
            found: version,
            known,
        });
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )?;
        tx.commit()?;
    }
    Ok(())
}
