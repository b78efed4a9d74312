//! `store copy` on the embedded store: every record out, and every record in (replacing what
//! was there) in one transaction.

use rusqlite::{Connection, params};

use super::dump::{Counts, Dump, FailureRow, LinkRow, PasswordRow, RevocationRow, TempPasswordRow};
use super::{SqliteStore, StoreError};
use crate::email::Email;

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_i64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn count(c: &Connection, table: &str) -> rusqlite::Result<usize> {
    // `table` is one of this file's constants, never input.
    c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| usize::try_from(n).unwrap_or(0))
}

impl SqliteStore {
    pub(super) fn counts(&self) -> Result<Counts, StoreError> {
        self.with(|c| {
            Ok(Counts {
                passwords: count(c, "passwords")?,
                temp_passwords: count(c, "temp_passwords")?,
                links: count(c, "link_tokens")?,
                revocations: count(c, "revocations")?,
                failures: count(c, "login_failures")?,
                directory_users: count(c, "directory_users")?,
                directory_snapshots: count(c, "directory_sync")?,
            })
        })
    }

    pub(super) fn dump(&self) -> Result<Dump, StoreError> {
        let directory = self.directory_snapshot()?;
        let mut d = self.with(|c| {
            let mut d = Dump::default();
            let mut st = c.prepare("SELECT email, hash, changed_ms FROM passwords ORDER BY email")?;
            d.passwords = st
                .query_map([], |r| {
                    Ok(PasswordRow {
                        email: r.get(0)?,
                        hash: r.get(1)?,
                        changed_ms: from_i64(r.get(2)?),
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut st = c.prepare(
                "SELECT email, digest, kid, issued_ms, expires_ms, used_ms FROM temp_passwords ORDER BY email",
            )?;
            d.temp_passwords = st
                .query_map([], |r| {
                    Ok(TempPasswordRow {
                        email: r.get(0)?,
                        digest: r.get(1)?,
                        kid: r.get(2)?,
                        issued_ms: from_i64(r.get(3)?),
                        expires_ms: from_i64(r.get(4)?),
                        used_ms: r.get::<_, Option<i64>>(5)?.map(from_i64),
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut st = c.prepare(
                "SELECT digest, email, app, rd, issued_ms, expires_ms, used_ms FROM link_tokens ORDER BY digest",
            )?;
            d.links = st
                .query_map([], |r| {
                    Ok(LinkRow {
                        digest: r.get(0)?,
                        email: r.get(1)?,
                        app: r.get(2)?,
                        rd: r.get(3)?,
                        issued_ms: from_i64(r.get(4)?),
                        expires_ms: from_i64(r.get(5)?),
                        used_ms: r.get::<_, Option<i64>>(6)?.map(from_i64),
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut st = c.prepare(
                "SELECT seq, kind, subject, not_before_ms, expires_ms, created_ms FROM revocations ORDER BY seq",
            )?;
            d.revocations = st
                .query_map([], |r| {
                    Ok(RevocationRow {
                        seq: r.get(0)?,
                        kind: r.get(1)?,
                        subject: r.get(2)?,
                        not_before_ms: from_i64(r.get(3)?),
                        expires_ms: from_i64(r.get(4)?),
                        created_ms: from_i64(r.get(5)?),
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut st = c.prepare(
                "SELECT email, consecutive, last_ms, locked_ms, lock_until_ms, locks FROM login_failures ORDER BY email",
            )?;
            d.failures = st
                .query_map([], |r| {
                    Ok(FailureRow {
                        email: r.get(0)?,
                        consecutive: r.get(1)?,
                        last_ms: from_i64(r.get(2)?),
                        locked_ms: r.get::<_, Option<i64>>(3)?.map(from_i64),
                        lock_until_ms: r.get::<_, Option<i64>>(4)?.map(from_i64),
                        locks: r.get(5)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(d)
        })?;
        d.directory = directory;
        Ok(d)
    }

    pub(super) fn restore(&self, d: &Dump) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            for table in [
                "passwords",
                "temp_passwords",
                "link_tokens",
                "revocations",
                "login_failures",
                "directory_memberships",
                "directory_users",
                "directory_sync",
            ] {
                tx.execute(&format!("DELETE FROM {table}"), [])?;
            }
            for p in &d.passwords {
                tx.execute(
                    "INSERT INTO passwords (email, hash, changed_ms) VALUES (?1, ?2, ?3)",
                    params![p.email, p.hash, to_i64(p.changed_ms)],
                )?;
            }
            for t in &d.temp_passwords {
                tx.execute(
                    "INSERT INTO temp_passwords (email, digest, kid, issued_ms, expires_ms, used_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![t.email, t.digest, t.kid, to_i64(t.issued_ms), to_i64(t.expires_ms), t.used_ms.map(to_i64)],
                )?;
            }
            for l in &d.links {
                tx.execute(
                    "INSERT INTO link_tokens (digest, email, app, rd, issued_ms, expires_ms, used_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![l.digest, l.email, l.app, l.rd, to_i64(l.issued_ms), to_i64(l.expires_ms), l.used_ms.map(to_i64)],
                )?;
            }
            for r in &d.revocations {
                tx.execute(
                    "INSERT INTO revocations (seq, kind, subject, not_before_ms, expires_ms, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![r.seq, r.kind, r.subject, to_i64(r.not_before_ms), to_i64(r.expires_ms), to_i64(r.created_ms)],
                )?;
            }
            for f in &d.failures {
                tx.execute(
                    "INSERT INTO login_failures (email, consecutive, last_ms, locked_ms, lock_until_ms, locks) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![f.email, f.consecutive, to_i64(f.last_ms), f.locked_ms.map(to_i64), f.lock_until_ms.map(to_i64), f.locks],
                )?;
            }
            if let Some(s) = &d.directory {
                for u in &s.users {
                    tx.execute(
                        "INSERT INTO directory_users (id, dn, temp_auth_email) VALUES (?1, ?2, ?3)",
                        params![u.id, u.dn, u.temp_auth_email.as_ref().map(Email::as_str)],
                    )?;
                    for g in &u.groups {
                        tx.execute(
                            "INSERT OR IGNORE INTO directory_memberships (user_id, group_name) VALUES (?1, ?2)",
                            params![u.id, g],
                        )?;
                    }
                }
                tx.execute(
                    "INSERT INTO directory_sync (singleton, fingerprint, synced_ms) VALUES (1, ?1, ?2)",
                    params![s.fingerprint, to_i64(s.synced_ms)],
                )?;
            }
            tx.commit()
        })
    }
}
