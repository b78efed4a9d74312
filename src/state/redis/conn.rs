//! Connections to Redis: one server through `ConnectionManager` (it reconnects by itself), or
//! the primary the sentinels name, asked again after a failure so a failover is followed.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, IntoConnectionInfo as _, Pipeline,
    RedisFuture, RedisResult, Value,
};

use super::CALL_TIMEOUT;
use crate::config::{RedisConfig, RedisTarget};

/// One usable connection (both kinds multiplex; clones share it).
#[derive(Clone)]
pub(super) enum Conn {
    Managed(ConnectionManager),
    Direct(MultiplexedConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Managed(c) => c.req_packed_command(cmd),
            Self::Direct(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Managed(c) => c.req_packed_commands(cmd, offset, count),
            Self::Direct(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Managed(c) => c.get_db(),
            Self::Direct(c) => c.get_db(),
        }
    }
}

/// The primary as named by the sentinels, connected lazily and forgotten after a failure.
pub(super) struct Sentinel {
    client: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<MultiplexedConnection>>,
    config: AsyncConnectionConfig,
}

impl Sentinel {
    pub(super) async fn conn(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let mut client = self.client.lock().await;
        // Another call may have connected while this one waited for the lock.
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let conn = client
            .async_get_client()
            .await?
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
        Ok(conn)
    }

    /// A client for the primary the sentinels name now (for a dedicated connection).
    pub(super) async fn client(&self) -> RedisResult<Client> {
        self.client.lock().await.async_get_client().await
    }

    fn cached(&self) -> Option<MultiplexedConnection> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn forget(&self) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

pub(super) enum Source {
    /// The manager serves every call; the client opens the dedicated pub/sub connection.
    Server(ConnectionManager, Box<Client>),
    Sentinel(Box<Sentinel>),
}

fn addr(host: &str, port: u16, tls: bool) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host.to_owned(), port)
    }
}

pub(super) fn source(config: &RedisConfig) -> RedisResult<Source> {
    let connection = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CALL_TIMEOUT))
        .set_response_timeout(Some(CALL_TIMEOUT));
    match &config.target {
        RedisTarget::Server { host, port } => {
            let info = addr(host, *port, config.tls).into_connection_info()?;
            let mut settings = info.redis_settings().clone().set_db(config.db);
            if let Some(user) = &config.username {
                settings = settings.set_username(user);
            }
            if let Some(pw) = &config.password {
                settings = settings.set_password(pw.expose());
            }
            let client = Client::open(info.set_redis_settings(settings))?;
            let manager = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CALL_TIMEOUT))
                .set_response_timeout(Some(CALL_TIMEOUT))
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_secs(1))
                .set_number_of_retries(2);
            // Lazy: a Redis that is down at start does not stop the gateway; logins fail
            // closed until it answers.
            Ok(Source::Server(
                ConnectionManager::new_lazy_with_config(client.clone(), manager)?,
                Box::new(client),
            ))
        }
        RedisTarget::Sentinel { sentinels, service } => {
            let addrs = sentinels.iter().map(|(h, p)| addr(h, *p, config.tls));
            let mut b = SentinelClientBuilder::new(addrs, service, SentinelServerType::Master)?
                .set_client_to_redis_db(config.db);
            if config.tls {
                b = b
                    .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                    .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
            }
            if let Some(user) = &config.username {
                b = b.set_client_to_redis_username(user);
            }
            if let Some(pw) = &config.password {
                b = b.set_client_to_redis_password(pw.expose());
            }
            Ok(Source::Sentinel(Box::new(Sentinel {
                client: tokio::sync::Mutex::new(b.build()?),
                current: Mutex::new(None),
                config: connection,
            })))
        }
    }
}
