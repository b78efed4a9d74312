//! `state`: memory, or a Redis URL with its password in a file (docs/product.md#s6).

use super::Ctx;
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
