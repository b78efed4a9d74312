//! Where the ephemeral state lives (`state:`): in this process, or in Redis shared by every
//! replica. The URL forms are parsed here, without the `redis` crate, so `check-config` can
//! explain a bad one and the state room receives a target it only has to connect to.
//!
//! ```text
//! redis://[user@]host[:6379][/db]                      one server
//! rediss://[user@]host[:6379][/db]                     one server over TLS
//! redis+sentinel://[user@]host[:26379][,host[:26379]...]/service[/db]
//! rediss+sentinel://...                                the same, TLS to sentinels and servers
//! ```
//!
//! A password never goes in the URL (it would end up in logs and `ps` listings): the map form
//! `{ url, password_file }` carries it.

use serde::Deserialize;

use super::Secret;

/// `state:` as written: `memory`, a URL, or `{ url, password_file }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum StateFile {
    /// `memory` or a URL.
    Word(String),
    /// A URL and the file holding the AUTH password.
    Map(StateMapFile),
}

/// `{ url, password_file }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StateMapFile {
    pub(crate) url: String,
    pub(crate) password_file: Option<String>,
}

/// The ephemeral state backend.
#[derive(Debug, Clone, Default)]
pub enum StateConfig {
    /// In this process (one replica).
    #[default]
    Memory,
    /// Redis, shared by every replica.
    Redis(RedisConfig),
}

impl StateConfig {
    /// `memory` or the URL as written (no secret in either).
    pub fn url(&self) -> &str {
        match self {
            Self::Memory => "memory",
            Self::Redis(r) => &r.url,
        }
    }
}

/// A Redis deployment and how to log in to it.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The URL as written (no password in it), for messages.
    pub url: String,
    /// One server or a set of sentinels.
    pub target: RedisTarget,
    /// ACL user name, when the URL names one.
    pub username: Option<String>,
    /// AUTH password, from `password_file`.
    pub password: Option<Secret>,
    /// Database number.
    pub db: i64,
    /// TLS (`rediss`), verified against the system's and the Mozilla roots.
    pub tls: bool,
}

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server.
    Server {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// Sentinels that name the current primary of `service`.
    Sentinel {
        /// Sentinel addresses.
        sentinels: Vec<(String, u16)>,
        /// The monitored primary's name.
        service: String,
    },
}

/// The parts of a state URL: target, user name, database, TLS.
pub(crate) type ParsedUrl = (RedisTarget, Option<String>, i64, bool);

/// Parses a `redis://`, `rediss://`, `redis+sentinel://` or `rediss+sentinel://` URL.
pub(crate) fn parse_redis_url(url: &str) -> Result<ParsedUrl, String> {
    let (rest, tls, sentinel) = if let Some(r) = url.strip_prefix("redis://") {
        (r, false, false)
    } else if let Some(r) = url.strip_prefix("rediss://") {
        (r, true, false)
    } else if let Some(r) = url.strip_prefix("redis+sentinel://") {
        (r, false, true)
    } else if let Some(r) = url.strip_prefix("rediss+sentinel://") {
        (r, true, true)
    } else {
        return Err(format!(
            "expected memory, redis://, rediss:// or redis+sentinel://, found {url:?}"
        ));
    };
    if rest.contains(['?', '#']) {
        return Err("query parameters are not supported in the state URL".into());
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (username, hosts) = match authority.rsplit_once('@') {
        Some((user, _)) if user.contains(':') => {
            return Err(
                "do not put a password in the URL: use { url: ..., password_file: FILE }".into(),
            );
        }
        Some(("", hosts)) => (None, hosts),
        Some((user, hosts)) => (Some(user.to_owned()), hosts),
        None => (None, authority),
    };
    let default_port = if sentinel { 26379 } else { 6379 };
    let hosts = hosts
        .split(',')
        .map(|h| host_port(h, default_port))
        .collect::<Result<Vec<_>, _>>()?;
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let target = if sentinel {
        let service = segments
            .next()
            .ok_or("a sentinel URL names the primary: redis+sentinel://host:26379/mymaster")?;
        RedisTarget::Sentinel {
            sentinels: hosts,
            service: service.to_owned(),
        }
    } else {
        let [(host, port)] = <[_; 1]>::try_from(hosts)
            .map_err(|_| "redis:// names one server; several are redis+sentinel://")?;
        RedisTarget::Server { host, port }
    };
    let db = match segments.next() {
        None => 0,
        Some(d) => d
            .parse::<i64>()
            .ok()
            .filter(|n| (0..=1_000_000).contains(n))
            .ok_or_else(|| format!("expected a database number, found {d:?}"))?,
    };
    if segments.next().is_some() {
        return Err(format!("unexpected path in {url:?}"));
    }
    Ok((target, username, db, tls))
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("unclosed [ in {s:?}"))?;
        (host, after.strip_prefix(':'))
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '@') {
        return Err(format!("expected host[:port], found {s:?}"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("expected a port number, found {p:?}"))?,
    };
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let (t, u, db, tls) = parse_redis_url("redis://cache:6380/2").unwrap();
        assert_eq!(
            t,
            RedisTarget::Server {
                host: "cache".into(),
                port: 6380
            }
        );
        assert_eq!((u, db, tls), (None, 2, false));
        let (t, u, db, tls) = parse_redis_url("rediss://otpgate@[::1]").unwrap();
        assert_eq!(
            t,
            RedisTarget::Server {
                host: "::1".into(),
                port: 6379
            }
        );
        assert_eq!((u.as_deref(), db, tls), (Some("otpgate"), 0, true));
        let (t, _, db, _) =
            parse_redis_url("redis+sentinel://s1:26379,s2,10.0.0.3:26380/mymaster/1").unwrap();
        assert_eq!(
            t,
            RedisTarget::Sentinel {
                sentinels: vec![
                    ("s1".into(), 26379),
                    ("s2".into(), 26379),
                    ("10.0.0.3".into(), 26380)
                ],
                service: "mymaster".into()
            }
        );
        assert_eq!(db, 1);
    }

    #[test]
    fn bad_urls_are_explained() {
        for (url, says) in [
            ("redis://:pw@cache", "password_file"),
            ("redis://u:pw@cache", "password_file"),
            ("redis://a,b", "one server"),
            ("redis+sentinel://s1", "names the primary"),
            ("redis://cache:0", "port"),
            ("redis://cache/x", "database"),
            ("redis://cache?timeout=1", "query"),
            ("memcached://x", "expected memory"),
        ] {
            let e = parse_redis_url(url).unwrap_err();
            assert!(e.contains(says), "{url}: {e}");
        }
    }
}
