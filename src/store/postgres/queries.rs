//! The record operations on PostgreSQL, with the same meaning as the embedded store's, atomic
//! across replicas. Parameterised statements only.

use tokio_postgres::Row;

use super::{BULK_TIMEOUT, PgError, PgStore, from_i64, to_i64};
use crate::email::Email;
use crate::store::{
    Failures, Link, LockPolicy, Revocation, RevocationKind, StoreError, TempPassword,
};
use crate::users::{DirectorySnapshot, DirectoryUser};

fn failures_row(r: &Row, now_ms: u64) -> Result<Failures, PgError> {
    let consecutive: i64 = r.try_get(0)?;
    let lock_until_ms = r.try_get::<_, Option<i64>>(1)?.map(from_i64);
    let locks: i64 = r.try_get(2)?;
    Ok(Failures {
        consecutive: u32::try_from(consecutive).unwrap_or(u32::MAX),
        locked: lock_until_ms.is_some_and(|u| u > now_ms),
        lock_until_ms,
        locks: u32::try_from(locks).unwrap_or(u32::MAX),
    })
}

fn temp_row(r: &Row) -> Result<TempPassword, PgError> {
    let digest: Vec<u8> = r.try_get(1)?;
    Ok(TempPassword {
        email: r.try_get(0)?,
        digest: digest.try_into().unwrap_or([0; 32]),
        kid: r.try_get(2)?,
        issued_ms: from_i64(r.try_get(3)?),
        expires_ms: from_i64(r.try_get(4)?),
        used: r.try_get::<_, Option<i64>>(5)?.is_some(),
    })
}

fn link_row(digest: &[u8; 32], r: &Row) -> Result<Link, PgError> {
    Ok(Link {
        digest: *digest,
        email: r.try_get(0)?,
        app: r.try_get(1)?,
        rd: r.try_get(2)?,
        issued_ms: from_i64(r.try_get(3)?),
        expires_ms: from_i64(r.try_get(4)?),
    })
}

const TEMP_COLUMNS: &str = "email, digest, kid, issued_ms, expires_ms, used_ms";

impl PgStore {
    pub(in crate::store) async fn add_revocation(
        &self,
        kind: RevocationKind,
        subject: &str,
        not_before_ms: u64,
        expires_ms: u64,
        now_ms: u64,
    ) -> Result<i64, StoreError> {
        self.call("revoke", async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            // Writers take turns so sequence numbers become visible in order: a replica that
            // read up to seq N never misses an N-1 committed after it looked. Readers are not
            // blocked.
            tx.batch_execute("LOCK TABLE revocations IN SHARE ROW EXCLUSIVE MODE")
                .await?;
            let row = tx
                .query_one(
                    "INSERT INTO revocations (kind, subject, not_before_ms, expires_ms, created_ms)
                     VALUES ($1, $2, $3, $4, $5) RETURNING seq",
                    &[
                        &kind.as_str(),
                        &subject,
                        &to_i64(not_before_ms),
                        &to_i64(expires_ms),
                        &to_i64(now_ms),
                    ],
                )
                .await?;
            tx.commit().await?;
            Ok(row.try_get(0)?)
        })
        .await
    }

    pub(in crate::store) async fn revocations_since(
        &self,
        seq: i64,
    ) -> Result<Vec<Revocation>, StoreError> {
        self.call("revocations_since", async {
            let rows = self
                .conn()
                .await?
                .query(
                    "SELECT seq, kind, subject, not_before_ms, expires_ms FROM revocations
                     WHERE seq > $1 ORDER BY seq",
                    &[&seq],
                )
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let kind: String = r.try_get(1)?;
                // The embedded store's reading: anything but a user cut-off names a session.
                out.push(Revocation {
                    seq: r.try_get(0)?,
                    kind: RevocationKind::from_text(&kind),
                    subject: r.try_get(2)?,
                    not_before_ms: from_i64(r.try_get(3)?),
                    expires_ms: from_i64(r.try_get(4)?),
                });
            }
            Ok(out)
        })
        .await
    }

    pub(in crate::store) async fn prune(&self, now_ms: u64) -> Result<usize, StoreError> {
        self.call("prune", async {
            let n = self
                .conn()
                .await?
                .execute(
                    "DELETE FROM revocations WHERE expires_ms < $1",
                    &[&to_i64(now_ms)],
                )
                .await?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
        .await
    }

    pub(in crate::store) async fn failures(
        &self,
        email: &str,
        now_ms: u64,
    ) -> Result<Failures, StoreError> {
        self.call("failures", async {
            let row = self
                .conn()
                .await?
                .query_opt(
                    "SELECT consecutive, lock_until_ms, locks FROM login_failures WHERE email = $1",
                    &[&email],
                )
                .await?;
            row.map_or(Ok(Failures::default()), |r| failures_row(&r, now_ms))
        })
        .await
    }

    pub(in crate::store) async fn record_failure(
        &self,
        email: &str,
        now_ms: u64,
        policy: LockPolicy,
        count: bool,
    ) -> Result<Failures, StoreError> {
        self.call("record_failure", async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            // The upsert locks the row until commit: replicas counting the same account at
            // once take turns, and none loses a failure or a lock.
            let row = tx
                .query_one(
                    "INSERT INTO login_failures (email, consecutive, last_ms) VALUES ($1, $3, $2)
                     ON CONFLICT (email) DO UPDATE
                       SET consecutive = login_failures.consecutive + $3, last_ms = $2
                     RETURNING consecutive, lock_until_ms, locks",
                    &[&email, &to_i64(now_ms), &i64::from(count)],
                )
                .await?;
            let before = failures_row(&row, now_ms)?;
            let after = policy.after_failure(before, now_ms, count);
            if after != before {
                tx.execute(
                    "UPDATE login_failures SET lock_until_ms = $2, locks = $3, locked_ms = $4
                     WHERE email = $1",
                    &[
                        &email,
                        &after.lock_until_ms.map(to_i64),
                        &i64::from(after.locks),
                        &to_i64(now_ms),
                    ],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(after)
        })
        .await
    }

    pub(in crate::store) async fn reset_failures(&self, email: &str) -> Result<bool, StoreError> {
        self.call("reset_failures", async {
            let n = self
                .conn()
                .await?
                .execute("DELETE FROM login_failures WHERE email = $1", &[&email])
                .await?;
            Ok(n > 0)
        })
        .await
    }

    pub(in crate::store) async fn password_hash(
        &self,
        email: &str,
    ) -> Result<Option<String>, StoreError> {
        self.call("password_hash", async {
            let row = self
                .conn()
                .await?
                .query_opt("SELECT hash FROM passwords WHERE email = $1", &[&email])
                .await?;
            Ok(row.map(|r| r.try_get(0)).transpose()?)
        })
        .await
    }

    pub(in crate::store) async fn has_password(&self, email: &str) -> Result<bool, StoreError> {
        Ok(self.password_hash(email).await?.is_some())
    }

    pub(in crate::store) async fn set_password(
        &self,
        email: &str,
        hash: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.call("set_password", async {
            self.conn()
                .await?
                .execute(
                    "INSERT INTO passwords (email, hash, changed_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (email) DO UPDATE SET hash = $2, changed_ms = $3",
                    &[&email, &hash, &to_i64(now_ms)],
                )
                .await?;
            Ok(())
        })
        .await
    }

    pub(in crate::store) async fn issue_temp_password(
        &self,
        t: &TempPassword,
        reissue_after_ms: u64,
        force: bool,
    ) -> Result<bool, StoreError> {
        self.call("issue_temp_password", async {
            // One statement: of two replicas issuing at once, the second waits for the first's
            // row and then finds it recent, so one password goes out per `reissue_after`.
            let n = self
                .conn()
                .await?
                .execute(
                    "INSERT INTO temp_passwords (email, digest, kid, issued_ms, expires_ms, used_ms)
                     VALUES ($1, $2, $3, $4, $5, NULL)
                     ON CONFLICT (email) DO UPDATE
                       SET digest = EXCLUDED.digest, kid = EXCLUDED.kid,
                           issued_ms = EXCLUDED.issued_ms, expires_ms = EXCLUDED.expires_ms,
                           used_ms = NULL
                     WHERE $6 OR temp_passwords.issued_ms <= EXCLUDED.issued_ms - $7",
                    &[
                        &t.email,
                        &&t.digest[..],
                        &t.kid,
                        &to_i64(t.issued_ms),
                        &to_i64(t.expires_ms),
                        &force,
                        &to_i64(reissue_after_ms),
                    ],
                )
                .await?;
            Ok(n == 1)
        })
        .await
    }

    pub(in crate::store) async fn temp_password(
        &self,
        email: &str,
    ) -> Result<Option<TempPassword>, StoreError> {
        self.call("temp_password", async {
            let row = self
                .conn()
                .await?
                .query_opt(
                    &format!("SELECT {TEMP_COLUMNS} FROM temp_passwords WHERE email = $1"),
                    &[&email],
                )
                .await?;
            row.map(|r| temp_row(&r)).transpose()
        })
        .await
    }

    pub(in crate::store) async fn passwords(
        &self,
        email: &str,
    ) -> Result<(Option<String>, Option<TempPassword>), StoreError> {
        self.call("passwords", async {
            let c = self.conn().await?;
            let hash = c
                .query_opt("SELECT hash FROM passwords WHERE email = $1", &[&email])
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
            let temp = c
                .query_opt(
                    &format!("SELECT {TEMP_COLUMNS} FROM temp_passwords WHERE email = $1"),
                    &[&email],
                )
                .await?
                .map(|r| temp_row(&r))
                .transpose()?;
            Ok((hash, temp))
        })
        .await
    }

    pub(in crate::store) async fn use_temp_password(
        &self,
        email: &str,
        digest: &[u8; 32],
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        self.call("use_temp_password", async {
            let n = self
                .conn()
                .await?
                .execute(
                    "UPDATE temp_passwords SET used_ms = $3
                     WHERE email = $1 AND digest = $2 AND used_ms IS NULL AND expires_ms > $3",
                    &[&email, &&digest[..], &to_i64(now_ms)],
                )
                .await?;
            Ok(n == 1)
        })
        .await
    }

    pub(in crate::store) async fn put_link(&self, l: &Link) -> Result<(), StoreError> {
        self.call("put_link", async {
            self.conn()
                .await?
                .execute(
                    "INSERT INTO link_tokens (digest, email, app, rd, issued_ms, expires_ms, used_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, NULL)",
                    &[
                        &&l.digest[..],
                        &l.email,
                        &l.app,
                        &l.rd,
                        &to_i64(l.issued_ms),
                        &to_i64(l.expires_ms),
                    ],
                )
                .await?;
            Ok(())
        })
        .await
    }

    pub(in crate::store) async fn link(
        &self,
        digest: &[u8; 32],
        now_ms: u64,
    ) -> Result<Option<Link>, StoreError> {
        self.call("link", async {
            let row = self
                .conn()
                .await?
                .query_opt(
                    "SELECT email, app, rd, issued_ms, expires_ms FROM link_tokens
                     WHERE digest = $1 AND used_ms IS NULL AND expires_ms > $2",
                    &[&&digest[..], &to_i64(now_ms)],
                )
                .await?;
            row.map(|r| link_row(digest, &r)).transpose()
        })
        .await
    }

    pub(in crate::store) async fn use_link(
        &self,
        digest: &[u8; 32],
        now_ms: u64,
    ) -> Result<Option<Link>, StoreError> {
        self.call("use_link", async {
            // One conditional UPDATE: of two replicas using the same link at once, the second
            // waits for the first's row lock, then finds it used and gets nothing.
            let row = self
                .conn()
                .await?
                .query_opt(
                    "UPDATE link_tokens SET used_ms = $2
                     WHERE digest = $1 AND used_ms IS NULL AND expires_ms > $2
                     RETURNING email, app, rd, issued_ms, expires_ms",
                    &[&&digest[..], &to_i64(now_ms)],
                )
                .await?;
            row.map(|r| link_row(digest, &r)).transpose()
        })
        .await
    }

    pub(in crate::store) async fn prune_links(&self, now_ms: u64) -> Result<usize, StoreError> {
        self.call("prune_links", async {
            let n = self
                .conn()
                .await?
                .execute(
                    "DELETE FROM link_tokens WHERE expires_ms < $1",
                    &[&to_i64(now_ms)],
                )
                .await?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
        .await
    }

    pub(in crate::store) async fn save_directory_snapshot(
        &self,
        s: &DirectorySnapshot,
    ) -> Result<(), StoreError> {
        self.call_within("save_directory_snapshot", BULK_TIMEOUT, async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            write_snapshot(&tx, s).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    pub(in crate::store) async fn directory_snapshot(
        &self,
    ) -> Result<Option<DirectorySnapshot>, StoreError> {
        self.call_within("directory_snapshot", BULK_TIMEOUT, async {
            let mut c = self.conn().await?;
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let s = read_snapshot(&tx).await?;
            tx.commit().await?;
            Ok(s)
        })
        .await
    }
}

/// Replaces the snapshot inside `tx`: three statements whatever the number of users (arrays
/// unnested on the server), so a large directory fits the deadline.
pub(super) async fn write_snapshot(
    tx: &deadpool_postgres::Transaction<'_>,
    s: &DirectorySnapshot,
) -> Result<(), PgError> {
    tx.batch_execute("DELETE FROM directory_memberships; DELETE FROM directory_users")
        .await?;
    let ids: Vec<&str> = s.users.iter().map(|u| u.id.as_str()).collect();
    let dns: Vec<&str> = s.users.iter().map(|u| u.dn.as_str()).collect();
    let temps: Vec<Option<&str>> = s
        .users
        .iter()
        .map(|u| u.temp_auth_email.as_ref().map(Email::as_str))
        .collect();
    tx.execute(
        "INSERT INTO directory_users (id, dn, temp_auth_email)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[])",
        &[&ids, &dns, &temps],
    )
    .await?;
    let (members, groups): (Vec<&str>, Vec<&str>) = s
        .users
        .iter()
        .flat_map(|u| u.groups.iter().map(move |g| (u.id.as_str(), g.as_str())))
        .unzip();
    tx.execute(
        "INSERT INTO directory_memberships (user_id, group_name)
         SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
        &[&members, &groups],
    )
    .await?;
    tx.execute(
        "INSERT INTO directory_sync (singleton, fingerprint, synced_ms) VALUES (1, $1, $2)
         ON CONFLICT (singleton) DO UPDATE SET fingerprint = $1, synced_ms = $2",
        &[&s.fingerprint, &to_i64(s.synced_ms)],
    )
    .await?;
    Ok(())
}

pub(super) async fn read_snapshot(
    tx: &deadpool_postgres::Transaction<'_>,
) -> Result<Option<DirectorySnapshot>, PgError> {
    let Some(head) = tx
        .query_opt(
            "SELECT fingerprint, synced_ms FROM directory_sync WHERE singleton = 1",
            &[],
        )
        .await?
    else {
        return Ok(None);
    };
    let mut users = Vec::new();
    for r in tx
        .query(
            "SELECT id, dn, temp_auth_email FROM directory_users ORDER BY id COLLATE \"C\"",
            &[],
        )
        .await?
    {
        users.push(DirectoryUser {
            id: r.try_get(0)?,
            dn: r.try_get(1)?,
            // Stored from a validated address; one that no longer parses is dropped.
            temp_auth_email: r
                .try_get::<_, Option<String>>(2)?
                .and_then(|e| Email::parse(&e).ok()),
            groups: Vec::new(),
        });
    }
    let rows = tx
        .query(
            "SELECT user_id, group_name FROM directory_memberships
             ORDER BY user_id COLLATE \"C\", group_name COLLATE \"C\"",
            &[],
        )
        .await?;
    let mut i = 0;
    for r in rows {
        let uid: String = r.try_get(0)?;
        let group: String = r.try_get(1)?;
        // Both lists are ordered by user id (bytewise, as Rust compares): walk them together.
        while i < users.len() && users[i].id < uid {
            i += 1;
        }
        if let Some(u) = users.get_mut(i).filter(|u| u.id == uid) {
            u.groups.push(group);
        }
    }
    Ok(Some(DirectorySnapshot {
        fingerprint: head.try_get(0)?,
        synced_ms: from_i64(head.try_get(1)?),
        users,
    }))
}
