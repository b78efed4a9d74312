//! `state`: memory, or a Redis URL with its password in a file (docs/product.md#s6);
//! `credentials`: embedded, or a PostgreSQL URL, the same way.

use super::Ctx;
use crate::config::credentials::{
    CredentialsConfig, CredentialsFile, PgSslMode, PostgresConfig, parse_postgres_url,
};
use crate::config::state::{RedisConfig, StateConfig, StateFile, parse_redis_url};

pub(super) fn state(c: &mut Ctx<'_>, f: Option<StateFile>) -> StateConfig {
    let (url, password_file) = match f {
        None => return StateConfig::Memory,
        Some(StateFile::Word(w)) if w == "memory" => return StateConfig::Memory,
        Some(StateFile::Word(url)) => (url, None),
        Some(StateFile::Map(m)) => (m.url, m.password_file),
    };
    let parsed = match parse_redis_url(&url) {
        Ok(p) => p,
        Err(e) => {
            c.err("state", e);
            return StateConfig::Memory;
        }
    };
    let (target, username, db, tls) = parsed;
    let password = c.secret(
        "state",
        password_file.as_deref(),
        None,
        "password_file",
        "password",
    );
    if username.is_some() && password.is_none() {
        c.err(
            "state.password_file",
            "a Redis user name needs its password in password_file",
        );
    }
    StateConfig::Redis(RedisConfig {
        url,
        target,
        username,
        password,
        db,
        tls,
    })
}

/// `credentials`: embedded, or a PostgreSQL URL with its password in a file.
pub(super) fn credentials(c: &mut Ctx<'_>, f: Option<CredentialsFile>) -> CredentialsConfig {
    let (url, password_file) = match f {
        None => return CredentialsConfig::Embedded,
        Some(CredentialsFile::Word(w)) if w == "embedded" => return CredentialsConfig::Embedded,
        Some(CredentialsFile::Word(url)) => (url, None),
        Some(CredentialsFile::Map(m)) => (m.url, m.password_file),
    };
    let parsed = match parse_postgres_url(&url) {
        Ok(p) => p,
        Err(e) => {
            c.err("credentials", e);
            return CredentialsConfig::Embedded;
        }
    };
    let password = c.secret(
        "credentials",
        password_file.as_deref(),
        None,
        "password_file",
        "password",
    );
    let root_certs = match &parsed.root_cert {
        Some(file) => c.trust_anchors("credentials.url", file),
        None => Vec::new(),
    };
    if parsed.ssl_mode == PgSslMode::Disable && !loopback(&parsed.host) {
        c.warn(
            "credentials.url",
            "sslmode=disable sends the password and every record unencrypted; use verify-full \
             unless the network path is private",
        );
    }
    CredentialsConfig::Postgres(PostgresConfig {
        url,
        host: parsed.host,
        port: parsed.port,
        user: parsed.user,
        dbname: parsed.dbname,
        password,
        ssl_mode: parsed.ssl_mode,
        root_certs,
    })
}

fn loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}
