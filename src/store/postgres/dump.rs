//! `store copy` on PostgreSQL: every record out (one consistent snapshot), and every record in
//! (replacing what was there) in one transaction.

use super::queries::{read_snapshot, write_snapshot};
use super::{BULK_TIMEOUT, PgError, PgStore, from_i64, to_i64};
use crate::store::StoreError;
use crate::store::dump::{
    Counts, Dump, FailureRow, LinkRow, PasswordRow, RevocationRow, TempPasswordRow,
};

impl PgStore {
    pub(in crate::store) async fn counts(&self) -> Result<Counts, StoreError> {
        self.call("counts", async {
            let r = self
                .conn()
                .await?
                .query_one(
                    "SELECT (SELECT count(*) FROM passwords), (SELECT count(*) FROM temp_passwords),
                            (SELECT count(*) FROM link_tokens), (SELECT count(*) FROM revocations),
                            (SELECT count(*) FROM login_failures),
                            (SELECT count(*) FROM directory_users),
                            (SELECT count(*) FROM directory_sync)",
                    &[],
                )
                .await?;
            let n = |i: usize| -> Result<usize, PgError> {
                Ok(usize::try_from(r.try_get::<_, i64>(i)?).unwrap_or(0))
            };
            Ok(Counts {
                passwords: n(0)?,
                temp_passwords: n(1)?,
                links: n(2)?,
                revocations: n(3)?,
                failures: n(4)?,
                directory_users: n(5)?,
                directory_snapshots: n(6)?,
            })
        })
        .await
    }

    pub(in crate::store) async fn dump(&self) -> Result<Dump, StoreError> {
        self.call_within("dump", BULK_TIMEOUT, async {
            let mut c = self.conn().await?;
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let mut d = Dump::default();
            for r in tx
                .query("SELECT email, hash, changed_ms FROM passwords ORDER BY email COLLATE \"C\"", &[])
                .await?
            {
                d.passwords.push(PasswordRow {
                    email: r.try_get(0)?,
                    hash: r.try_get(1)?,
                    changed_ms: from_i64(r.try_get(2)?),
                });
            }
            for r in tx
                .query(
                    "SELECT email, digest, kid, issued_ms, expires_ms, used_ms FROM temp_passwords
                     ORDER BY email COLLATE \"C\"",
                    &[],
                )
                .await?
            {
                d.temp_passwords.push(TempPasswordRow {
                    email: r.try_get(0)?,
                    digest: r.try_get(1)?,
                    kid: r.try_get(2)?,
                    issued_ms: from_i64(r.try_get(3)?),
                    expires_ms: from_i64(r.try_get(4)?),
                    used_ms: r.try_get::<_, Option<i64>>(5)?.map(from_i64),
                });
            }
            for r in tx
                .query(
                    "SELECT digest, email, app, rd, issued_ms, expires_ms, used_ms FROM link_tokens
                     ORDER BY digest",
                    &[],
                )
                .await?
            {
                d.links.push(LinkRow {
                    digest: r.try_get(0)?,
                    email: r.try_get(1)?,
                    app: r.try_get(2)?,
                    rd: r.try_get(3)?,
                    issued_ms: from_i64(r.try_get(4)?),
                    expires_ms: from_i64(r.try_get(5)?),
                    used_ms: r.try_get::<_, Option<i64>>(6)?.map(from_i64),
                });
            }
            for r in tx
                .query(
                    "SELECT seq, kind, subject, not_before_ms, expires_ms, created_ms FROM revocations
                     ORDER BY seq",
                    &[],
                )
                .await?
            {
                d.revocations.push(RevocationRow {
                    seq: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    subject: r.try_get(2)?,
                    not_before_ms: from_i64(r.try_get(3)?),
                    expires_ms: from_i64(r.try_get(4)?),
                    created_ms: from_i64(r.try_get(5)?),
                });
            }
            for r in tx
                .query(
                    "SELECT email, consecutive, last_ms, locked_ms, lock_until_ms, locks
                     FROM login_failures ORDER BY email COLLATE \"C\"",
                    &[],
                )
                .await?
            {
                d.failures.push(FailureRow {
                    email: r.try_get(0)?,
                    consecutive: r.try_get(1)?,
                    last_ms: from_i64(r.try_get(2)?),
                    locked_ms: r.try_get::<_, Option<i64>>(3)?.map(from_i64),
                    lock_until_ms: r.try_get::<_, Option<i64>>(4)?.map(from_i64),
                    locks: r.try_get(5)?,
                });
            }
            d.directory = read_snapshot(&tx).await?;
            tx.commit().await?;
            Ok(d)
        })
        .await
    }

    pub(in crate::store) async fn restore(&self, d: &Dump) -> Result<(), StoreError> {
        self.call_within("restore", BULK_TIMEOUT, async {
            let mut c = self.conn().await?;
            let tx = c.transaction().await?;
            tx.batch_execute(
                "LOCK TABLE revocations IN SHARE ROW EXCLUSIVE MODE;
                 DELETE FROM passwords; DELETE FROM temp_passwords; DELETE FROM link_tokens;
                 DELETE FROM revocations; DELETE FROM login_failures;
                 DELETE FROM directory_memberships; DELETE FROM directory_users;
                 DELETE FROM directory_sync",
            )
            .await?;
            let st = tx
                .prepare("INSERT INTO passwords (email, hash, changed_ms) VALUES ($1, $2, $3)")
                .await?;
            for p in &d.passwords {
                tx.execute(&st, &[&p.email, &p.hash, &to_i64(p.changed_ms)])
                    .await?;
            }
            let st = tx
                .prepare(
                    "INSERT INTO temp_passwords (email, digest, kid, issued_ms, expires_ms, used_ms)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .await?;
            for t in &d.temp_passwords {
                tx.execute(
                    &st,
                    &[
                        &t.email,
                        &t.digest,
                        &t.kid,
                        &to_i64(t.issued_ms),
                        &to_i64(t.expires_ms),
                        &t.used_ms.map(to_i64),
                    ],
                )
                .await?;
            }
            let st = tx
                .prepare(
                    "INSERT INTO link_tokens (digest, email, app, rd, issued_ms, expires_ms, used_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .await?;
            for l in &d.links {
                tx.execute(
                    &st,
                    &[
                        &l.digest,
                        &l.email,
                        &l.app,
                        &l.rd,
                        &to_i64(l.issued_ms),
                        &to_i64(l.expires_ms),
                        &l.used_ms.map(to_i64),
                    ],
                )
                .await?;
            }
            let st = tx
                .prepare(
                    "INSERT INTO revocations (seq, kind, subject, not_before_ms, expires_ms, created_ms)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .await?;
            for r in &d.revocations {
                tx.execute(
                    &st,
                    &[
                        &r.seq,
                        &r.kind,
                        &r.subject,
                        &to_i64(r.not_before_ms),
                        &to_i64(r.expires_ms),
                        &to_i64(r.created_ms),
                    ],
                )
                .await?;
            }
            // New revocations continue after the copied ones.
            tx.execute(
                "SELECT setval(pg_get_serial_sequence('revocations', 'seq'),
                               greatest((SELECT max(seq) FROM revocations), 1),
                               (SELECT max(seq) FROM revocations) IS NOT NULL)",
                &[],
            )
            .await?;
            let st = tx
                .prepare(
                    "INSERT INTO login_failures (email, consecutive, last_ms, locked_ms, lock_until_ms, locks)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .await?;
            for f in &d.failures {
                tx.execute(
                    &st,
                    &[
                        &f.email,
                        &f.consecutive,
                        &to_i64(f.last_ms),
                        &f.locked_ms.map(to_i64),
                        &f.lock_until_ms.map(to_i64),
                        &f.locks,
                    ],
                )
                .await?;
            }
            if let Some(s) = &d.directory {
                write_snapshot(&tx, s).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}
