//! The Redis state backend, shared by every replica (docs/product.md#s6).
//!
//! Each operation is one command or one Lua script, so it is atomic across replicas exactly
//! as the memory backend's shard lock is within one process: a code is consumed once however
//! many replicas receive it, wrong guesses are counted and burn the code in the same script,
//! and a window counter gets its expiry in the script that creates it. Keys arrive namespaced
//! (`otpgate:`) from the login code, every key carries a TTL, and values are digests and
//! opaque payloads, never a code or a password.
//!
//! Every call has a deadline; a failure is `StateError::Unavailable` with its cause, which the
//! login pages turn into the 503 page (fail closed). Proxied requests never come here. The
//! connection re-establishes itself: `ConnectionManager` for one server; for Sentinel the
//! primary is asked of the sentinels again after any failure, which follows a failover.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::{Cmd, RedisError, RedisResult, Script, Value};

use super::{CodeRecord, Consume, StateError};
use crate::clock::Clock;
use crate::config::RedisConfig;
use crate::metrics;
use conn::{Conn, Source, source};

mod conn;
mod pubsub;

pub use pubsub::Heard;

/// The deadline of every call, connecting included.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a readiness answer is reused, so probes do not hammer Redis.
const READY_CACHE_MS: u64 = 1_000;

/// Adds one to a window counter; the first hit (or a counter somehow without expiry) starts
/// the window, in the same script so no counter can live forever.
const HIT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
";

/// [`HIT`] for every key but the last, then sets the last unless it is set: the budgets a
/// request spends, in one round trip.
const HIT_MANY: &str = r"
local n = #KEYS - 1
for i = 1, n do
  local c = redis.call('INCR', KEYS[i])
  if c == 1 or redis.call('PTTL', KEYS[i]) < 0 then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  end
end
redis.call('SET', KEYS[#KEYS], '1', 'NX', 'PX', ARGV[2])
return 1
";

/// Stores a code record (a hash: payload, digest, attempts left) unless `replace` is 0 and a
/// record is pending (a decoy must never replace a real code, docs/security.md#39).
const PUT_CODE: &str = r"
if ARGV[4] == '0' and redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'p', ARGV[1], 'd', ARGV[2], 'a', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
";

/// Compare-and-consume: a match deletes the record and returns its payload (single use); a
/// mismatch spends one attempt and deletes the record with the last. The comparison visits
/// every byte (no early exit), like the memory backend's constant-time one.
const CONSUME_CODE: &str = r"
local d = redis.call('HGET', KEYS[1], 'd')
if not d then
  return {0}
end
local g = ARGV[1]
local diff = 0
if #d ~= #g then diff = 1 end
for i = 1, #g do
  if string.byte(d, i) ~= string.byte(g, i) then diff = diff + 1 end
end
if diff == 0 then
  local p = redis.call('HGET', KEYS[1], 'p')
  redis.call('DEL', KEYS[1])
  return {1, p}
end
local left = redis.call('HINCRBY', KEYS[1], 'a', -1)
if left <= 0 then
  redis.call('DEL', KEYS[1])
  left = 0
end
return {2, left}
";

/// Why a call failed; the source of `StateError::Unavailable`.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// Redis answered with an error, or the connection failed.
    #[error("Redis")]
    Redis(#[source] RedisError),
    /// No answer in time.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// An answer of an unexpected shape.
    #[error("unexpected answer from Redis to {0}")]
    Shape(&'static str),
}

/// The Redis store.
pub struct RedisState {
    url: String,
    source: Source,
    clock: Arc<dyn Clock>,
    /// Whether the last call failed: the outage is logged once when it starts and once when
    /// it ends, not per request.
    down: AtomicBool,
    /// The last readiness answer and when (ms) it was taken.
    checked: Mutex<Option<(u64, Result<(), StateError>)>>,
    hit: Script,
    hit_many: Script,
    put_code: Script,
    consume_code: Script,
}

impl std::fmt::Debug for RedisState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisState")
            .field("url", &self.url)
            .finish()
    }
}

fn ms(d: Duration) -> u64 {
    // Redis refuses an expiry of 0.
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisState {
    /// Prepares the connection without making it (see [`source`]).
    pub(super) fn new(config: &RedisConfig, clock: Arc<dyn Clock>) -> Result<Self, StateError> {
        let source = source(config).map_err(|e| unavailable(Failure::Redis(e)))?;
        Ok(Self {
            url: config.url.clone(),
            source,
            clock,
            down: AtomicBool::new(false),
            checked: Mutex::new(None),
            hit: Script::new(HIT),
            hit_many: Script::new(HIT_MANY),
            put_code: Script::new(PUT_CODE),
            consume_code: Script::new(CONSUME_CODE),
        })
    }

    async fn conn(&self) -> RedisResult<Conn> {
        match &self.source {
            Source::Server(m, _) => Ok(Conn::Managed(m.clone())),
            Source::Sentinel(s) => s.conn().await.map(Conn::Direct),
        }
    }

    /// Whether `e` says the Sentinel-named primary is gone or no longer the primary.
    fn stale(&self, e: &RedisError) -> bool {
        matches!(self.source, Source::Sentinel(_))
            && (e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly))
    }

    fn forget(&self) {
        if let Source::Sentinel(s) = &self.source {
            s.forget();
        }
    }

    /// Runs one call under the deadline, counting and logging failures.
    async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, StateError>
    where
        T: Send,
        F: Fn(Conn) -> Fut + Send + Sync,
        Fut: Future<Output = Result<T, Failure>> + Send,
    {
        match self.call(f).await {
            Ok(v) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!(url = %self.url, "shared state (Redis) answers again");
                }
                Ok(v)
            }
            Err(failure) => {
                ::metrics::counter!(metrics::STATE_ERRORS, "op" => op).increment(1);
                self.forget();
                let err = unavailable(failure);
                // Readiness reports the outage at once, not after its cache expires.
                *self.checked.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some((self.clock.now_ms(), Err(err.clone())));
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::error!(url = %self.url, op, error = %chain(&err),
                        "shared state (Redis) unreachable: logins fail closed until it answers");
                }
                Err(err)
            }
        }
    }

    /// One call under the deadline, asking the sentinels again when the primary changed.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, Failure>
    where
        T: Send,
        F: Fn(Conn) -> Fut + Send + Sync,
        Fut: Future<Output = Result<T, Failure>> + Send,
    {
        // Boxed and erased: the client's futures are deep, and every login page awaits this
        // one (the compiler's auto-trait and layout checks stop at the `dyn`).
        let call: Pin<Box<dyn Future<Output = Result<T, Failure>> + Send + '_>> = Box::pin(async {
            let conn = self.conn().await.map_err(Failure::Redis)?;
            match f(conn).await {
                Err(Failure::Redis(e)) if self.stale(&e) => {
                    // The primary this replica knew is gone (or demoted): ask the sentinels
                    // again at once rather than failing a login after every failover. The
                    // command did not run there, or ran on a primary that no longer serves.
                    self.forget();
                    let conn = self.conn().await.map_err(Failure::Redis)?;
                    f(conn).await
                }
                other => other,
            }
        });
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .unwrap_or(Err(Failure::Timeout(CALL_TIMEOUT)))
    }

    /// Runs one command.
    async fn cmd<T: redis::FromRedisValue + Send>(
        &self,
        op: &'static str,
        cmd: Cmd,
    ) -> Result<T, StateError> {
        let cmd = &cmd;
        self.run(op, move |mut c| async move {
            cmd.query_async(&mut c).await.map_err(Failure::Redis)
        })
        .await
    }

    /// Runs one script.
    async fn script<T: redis::FromRedisValue + Send>(
        &self,
        op: &'static str,
        script: &Script,
        key: &str,
        args: &[&[u8]],
    ) -> Result<T, StateError> {
        let mut inv = script.key(key);
        for a in args {
            inv.arg(*a);
        }
        let inv = &inv;
        self.run(op, move |mut c| async move {
            inv.invoke_async(&mut c).await.map_err(Failure::Redis)
        })
        .await
    }

    pub(super) async fn put_new(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StateError> {
        let mut c = redis::cmd("SET");
        c.arg(key).arg(value).arg("NX").arg("PX").arg(ms(ttl));
        Ok(self.cmd::<Option<String>>("put_new", c).await?.is_some())
    }

    pub(super) async fn swap(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<Option<Vec<u8>>, StateError> {
        let mut c = redis::cmd("SET");
        c.arg(key).arg(value).arg("PX").arg(ms(ttl)).arg("GET");
        self.cmd("swap", c).await
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let mut c = redis::cmd("GET");
        c.arg(key);
        self.cmd("get", c).await
    }

    pub(super) async fn delete(&self, key: &str) -> Result<(), StateError> {
        let mut c = redis::cmd("DEL");
        c.arg(key);
        self.cmd::<i64>("delete", c).await.map(drop)
    }

    /// Removes every key starting with `prefix` (SCAN, then DEL in batches); how many. For
    /// the command line, not for requests: SCAN walks the whole key space.
    pub(super) async fn delete_prefixed(&self, prefix: &str) -> Result<u64, StateError> {
        let pattern = format!("{}*", glob_escape(prefix));
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let mut c = redis::cmd("SCAN");
            c.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, keys): (u64, Vec<String>) = self.cmd("scan", c).await?;
            if !keys.is_empty() {
                let mut c = redis::cmd("DEL");
                c.arg(&keys);
                deleted += self.cmd::<u64>("delete", c).await?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    pub(super) async fn hit(&self, key: &str, window: Duration) -> Result<u64, StateError> {
        let window = ms(window).to_string();
        self.script("hit", &self.hit, key, &[window.as_bytes()])
            .await
    }

    pub(super) async fn count(&self, key: &str) -> Result<u64, StateError> {
        let mut c = redis::cmd("GET");
        c.arg(key);
        let v: Option<String> = self.cmd("count", c).await?;
        Ok(v.and_then(|s| s.parse().ok()).unwrap_or_default())
    }

    pub(super) async fn read_many(
        &self,
        counters: &[&str],
        flags: &[&str],
    ) -> Result<(Vec<u64>, Vec<bool>), StateError> {
        let mut c = redis::cmd("MGET");
        c.arg(counters).arg(flags);
        let mut values: Vec<Option<Vec<u8>>> = self.cmd("read_many", c).await?;
        if values.len() != counters.len() + flags.len() {
            return Err(unavailable(Failure::Shape("read_many")));
        }
        let flags = values.split_off(counters.len());
        let counts = values
            .into_iter()
            .map(|v| {
                v.and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok())
                    .unwrap_or_default()
            })
            .collect();
        Ok((counts, flags.iter().map(Option::is_some).collect()))
    }

    pub(super) async fn hit_many(
        &self,
        counters: &[&str],
        window: Duration,
        flag: &str,
        ttl: Duration,
    ) -> Result<(), StateError> {
        let (window, ttl) = (ms(window).to_string(), ms(ttl).to_string());
        let mut inv = self.hit_many.prepare_invoke();
        for k in counters {
            inv.key(*k);
        }
        inv.key(flag).arg(window).arg(ttl);
        let inv = &inv;
        self.run("hit_many", move |mut c| async move {
            inv.invoke_async::<i64>(&mut c)
                .await
                .map_err(Failure::Redis)
        })
        .await
        .map(drop)
    }

    pub(super) async fn put_code(
        &self,
        key: &str,
        record: CodeRecord,
        ttl: Duration,
        replace: bool,
    ) -> Result<bool, StateError> {
        let attempts = record.attempts.to_string();
        let ttl = ms(ttl).to_string();
        let replace: &[u8] = if replace { b"1" } else { b"0" };
        let args: [&[u8]; 5] = [
            &record.payload,
            &record.digest,
            attempts.as_bytes(),
            replace,
            ttl.as_bytes(),
        ];
        let stored: i64 = self.script("put_code", &self.put_code, key, &args).await?;
        Ok(stored == 1)
    }

    pub(super) async fn peek_code(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let mut c = redis::cmd("HGET");
        c.arg(key).arg("p");
        self.cmd("peek_code", c).await
    }

    pub(super) async fn consume_code(
        &self,
        key: &str,
        digest: &[u8; 32],
    ) -> Result<Consume, StateError> {
        let answer: Vec<Value> = self
            .script("consume_code", &self.consume_code, key, &[digest])
            .await?;
        match answer.as_slice() {
            [Value::Int(0)] => Ok(Consume::Missing),
            [Value::Int(1), Value::BulkString(p)] => Ok(Consume::Accepted(p.clone())),
            [Value::Int(2), Value::Int(left)] => Ok(Consume::Rejected {
                left: u32::try_from(*left).unwrap_or(0),
            }),
            _ => Err(unavailable(Failure::Shape("consume_code"))),
        }
    }

    /// PING under the deadline.
    pub(super) async fn ping(&self) -> Result<(), StateError> {
        let c = redis::cmd("PING");
        self.cmd::<String>("ping", c).await.map(drop)
    }

    /// [`RedisState::ping`], answered from the last second's result when there is one.
    pub(super) async fn ready(&self) -> Result<(), StateError> {
        let now = self.clock.now_ms();
        if let Some((at, r)) = &*self.checked.lock().unwrap_or_else(PoisonError::into_inner)
            && now.saturating_sub(*at) < READY_CACHE_MS
        {
            return r.clone();
        }
        let r = self.ping().await;
        *self.checked.lock().unwrap_or_else(PoisonError::into_inner) = Some((now, r.clone()));
        r
    }
}

/// `text` matched literally by a Redis glob pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn unavailable(f: Failure) -> StateError {
    StateError::Unavailable(Arc::new(f))
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
