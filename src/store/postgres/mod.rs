//! The credentials store in PostgreSQL, shared by several replicas: a pool of connections
//! (deadpool) over tokio-postgres, TLS through rustls with the ring provider. Every call has a
//! deadline; a failure is counted and logged once per outage, and callers fail closed. The pool
//! drops closed connections and opens new ones, so the gateway recovers by itself when the
//! database answers again.
//!
//! Atomicity across replicas lives in the statements ([`queries`]): single-use records are
//! claimed with one conditional `UPDATE`, the once-per-24h rule is one conditional upsert, and
//! failure counting is an upsert that holds the row lock until its transaction ends.

mod dump;
mod migrations;
mod queries;
mod tls;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, Runtime, Timeouts};

use super::StoreError;
use crate::config::{PgSslMode, PostgresConfig};

/// How long one call may take, connection included: a login waits at most this long before
/// the "try again in a moment" page.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Deadline of the bulk calls (directory snapshot, `store copy`, migrations).
const BULK_TIMEOUT: Duration = Duration::from_secs(60);

/// Connections per replica: logins are short transactions; more would only queue in PostgreSQL.
const POOL_SIZE: usize = 16;

/// Why a PostgreSQL call failed.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// No connection could be had from the pool (the server is down, refuses the login, ...).
    #[error("no connection")]
    Pool(#[source] deadpool_postgres::PoolError),
    /// The server answered with an error, or the connection broke.
    #[error("query failed")]
    Db(#[source] tokio_postgres::Error),
    /// No answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The TLS settings could not be built.
    #[error("TLS settings")]
    Tls(#[source] rustls::Error),
    /// The pool could not be built.
    #[error("connection pool")]
    Build(#[source] deadpool_postgres::BuildError),
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e)
    }
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Pool(e)
    }
}

/// The PostgreSQL store.
#[derive(Debug)]
pub struct PgStore {
    pool: Pool,
    url: String,
    /// Whether the last call failed (one log line per outage, one when it ends).
    down: AtomicBool,
}

impl PgStore {
    /// Builds the pool, checks that the database answers and applies the migrations this build
    /// knows (refusing a database written by a newer build).
    pub async fn connect(config: &PostgresConfig) -> Result<Self, StoreError> {
        let fail = |source| StoreError::Postgres {
            op: "connect",
            source,
        };
        let mut pg = tokio_postgres::Config::new();
        pg.host(&config.host)
            .port(config.port)
            .user(&config.user)
            .dbname(&config.dbname)
            .application_name("otpgate")
            .connect_timeout(CALL_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .ssl_mode(match config.ssl_mode {
                PgSslMode::Disable => tokio_postgres::config::SslMode::Disable,
                PgSslMode::Require | PgSslMode::VerifyFull => {
                    tokio_postgres::config::SslMode::Require
                }
            });
        if let Some(p) = &config.password {
            pg.password(p.expose());
        }
        let tls = tls::connector(config).map_err(|e| fail(PgError::Tls(e)))?;
        let manager = Manager::from_config(pg, tls, ManagerConfig::default());
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(CALL_TIMEOUT),
                create: Some(CALL_TIMEOUT),
                recycle: Some(CALL_TIMEOUT),
            })
            .build()
            .map_err(|e| fail(PgError::Build(e)))?;
        let store = Self {
            pool,
            url: config.url.clone(),
            down: AtomicBool::new(false),
        };
        migrations::migrate(&store).await?;
        Ok(store)
    }

    /// The URL as configured (no password in it).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A pooled connection.
    async fn conn(&self) -> Result<Object, PgError> {
        Ok(self.pool.get().await?)
    }

    /// Runs one call under [`CALL_TIMEOUT`].
    async fn call<T>(
        &self,
        op: &'static str,
        work: impl Future<Output = Result<T, PgError>>,
    ) -> Result<T, StoreError> {
        self.call_within(op, CALL_TIMEOUT, work).await
    }

    /// Runs one call under `deadline`; logs the start and the end of an outage once each.
    async fn call_within<T>(
        &self,
        op: &'static str,
        deadline: Duration,
        work: impl Future<Output = Result<T, PgError>>,
    ) -> Result<T, StoreError> {
        let result = tokio::time::timeout(deadline, work)
            .await
            .unwrap_or(Err(PgError::Timeout(deadline)));
        match result {
            Ok(v) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!(url = %self.url, "credentials store (PostgreSQL) answers again");
                }
                Ok(v)
            }
            Err(source) => {
                let err = StoreError::Postgres { op, source };
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::error!(url = %self.url, op, error = %chain(&err),
                        "credentials store (PostgreSQL) failing: logins that need it fail closed until it answers");
                }
                Err(err)
            }
        }
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        self.call("ping", async {
            self.conn().await?.simple_query("SELECT 1").await?;
            Ok(())
        })
        .await
    }
}

/// `a: b: c`, for the one log line of an outage.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_i64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
