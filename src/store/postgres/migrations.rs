//! The schema, versioned: migrations are applied in order at start, each recorded in
//! `schema_migrations`, all in one transaction under an advisory lock, so replicas starting
//! together apply them once and never see half a schema. A database migrated by a newer build
//! is refused rather than written with old assumptions.
//!
//! Times are Unix milliseconds in `bigint`; digests are `bytea`; revocation kinds are text so
//! a new kind needs no schema change.

use super::{BULK_TIMEOUT, PgError, PgStore};
use crate::store::StoreError;

/// The advisory lock key of migrations ("otpgate" in ASCII).
const LOCK_KEY: i64 = 0x006f_7470_6761_7465;

/// Migrations, applied in order; `schema_migrations` records which ran.
const MIGRATIONS: &[&str] = &[
    // 1: everything the embedded store holds at its version 5.
    "CREATE TABLE revocations (
        seq bigserial PRIMARY KEY,
        kind text NOT NULL,
        subject text NOT NULL,
        not_before_ms bigint NOT NULL,
        expires_ms bigint NOT NULL,
        created_ms bigint NOT NULL
    );
    CREATE INDEX revocations_expires ON revocations (expires_ms);
    CREATE TABLE login_failures (
        email text PRIMARY KEY,
        consecutive bigint NOT NULL,
        last_ms bigint NOT NULL,
        locked_ms bigint,
        lock_until_ms bigint,
        locks bigint NOT NULL DEFAULT 0
    );
    CREATE TABLE passwords (
        email text PRIMARY KEY,
        hash text NOT NULL,
        changed_ms bigint NOT NULL
    );
    CREATE TABLE temp_passwords (
        email text PRIMARY KEY,
        digest bytea NOT NULL,
        kid text NOT NULL,
        issued_ms bigint NOT NULL,
        expires_ms bigint NOT NULL,
        used_ms bigint
    );
    CREATE TABLE link_tokens (
        digest bytea PRIMARY KEY,
        email text NOT NULL,
        app text NOT NULL,
        rd text NOT NULL,
        issued_ms bigint NOT NULL,
        expires_ms bigint NOT NULL,
        used_ms bigint
    );
    CREATE INDEX link_tokens_expires ON link_tokens (expires_ms);
    CREATE TABLE directory_sync (
        singleton integer PRIMARY KEY CHECK (singleton = 1),
        fingerprint text NOT NULL,
        synced_ms bigint NOT NULL
    );
    CREATE TABLE directory_users (
        id text PRIMARY KEY,
        dn text NOT NULL,
        temp_auth_email text
    );
    CREATE TABLE directory_memberships (
        user_id text NOT NULL REFERENCES directory_users (id) ON DELETE CASCADE,
        group_name text NOT NULL,
        PRIMARY KEY (user_id, group_name)
    );",
];

/// The newest schema version this build knows.
pub(super) fn known() -> i64 {
    i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX)
}

pub(super) async fn migrate(store: &PgStore) -> Result<(), StoreError> {
    let outcome = store
        .call_within("migrate", BULK_TIMEOUT, async {
            let mut c = store.conn().await?;
            let tx = c.transaction().await?;
            // Held until commit: a second replica waits here, then finds the work done.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
                .await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                    version bigint PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )",
            )
            .await?;
            let found: i64 = tx
                .query_one(
                    "SELECT coalesce(max(version), 0) FROM schema_migrations",
                    &[],
                )
                .await?
                .try_get(0)?;
            if found > known() {
                return Ok(Err(found));
            }
            for (i, sql) in MIGRATIONS
                .iter()
                .enumerate()
                .skip(usize::try_from(found).unwrap_or(0))
            {
                tx.batch_execute(sql).await?;
                let version = i64::try_from(i + 1).unwrap_or(i64::MAX);
                tx.execute(
                    "INSERT INTO schema_migrations (version) VALUES ($1)",
                    &[&version],
                )
                .await?;
            }
            tx.commit().await?;
            Ok::<_, PgError>(Ok(()))
        })
        .await?;
    outcome.map_err(|found| StoreError::Newer {
        found,
        known: known(),
    })
}
