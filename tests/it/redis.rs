//! A real Redis for tests: Debian's `redis-server` (and `redis-sentinel`) as throwaway
//! processes on free loopback ports, with their files in a temp dir and no persistence
//! (`--save '' --appendonly no`), run as the current user (Redis allows root, as CI runs).
//! Killed when dropped; [`RedisServer::kill`] and [`RedisServer::restart`] make outages.
//! Without the binaries a test that needs them is skipped loudly, except under `CI=true`,
//! where it fails.
//!
//! ```ignore
//! let Some(mut redis) = RedisServer::start().await else { return };
//! // state: redis.url()
//! redis.kill();
//! redis.restart().await;
//! ```

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn tool_available(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(name).exists()))
        || ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
            .iter()
            .any(|d| Path::new(d).join(name).exists())
}

/// True when `tools` can run; otherwise fails under `CI=true`, or prints a loud skip line.
pub fn usable(tools: &[&str]) -> bool {
    if tools.iter().all(|t| tool_available(t)) {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{tools:?} are required for the Redis tests under CI (apt-get install redis-server redis-sentinel)"
        );
    }
    // Written to the process's stderr directly: `eprintln!` would be captured by the test
    // harness and shown only for failing tests.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {tools:?} not installed (apt-get install redis-server redis-sentinel); \
         the Redis test returns early"
    );
    false
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends one inline command and returns the raw reply (enough for PING, INFO, SENTINEL ...).
pub fn command(port: u16, cmd: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    // Read until the reply looks complete or the server pauses.
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.ends_with(b"\r\n") && complete(&out) {
            break;
        }
    }
    (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned())
}

/// Whether a RESP reply is whole (simple, error, integer, bulk, or an array of those).
fn complete(reply: &[u8]) -> bool {
    fn one(b: &[u8], i: &mut usize) -> bool {
        let Some(end) = b[*i..].windows(2).position(|w| w == b"\r\n") else {
            return false;
        };
        let line = &b[*i + 1..*i + end];
        let kind = b[*i];
        *i += end + 2;
        let n: i64 = std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        match kind {
            b'$' if n >= 0 => {
                *i += usize::try_from(n).unwrap() + 2;
                *i <= b.len()
            }
            b'*' => (0..n).all(|_| *i < b.len() && one(b, i)),
            _ => true,
        }
    }
    let mut i = 0;
    one(reply, &mut i)
}

async fn wait_ping(port: u16, what: &str, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // A server with a password answers, too, if only to ask for it.
        if command(port, "PING").is_some_and(|r| r.starts_with("+PONG") || r.contains("NOAUTH")) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "{what} did not answer PING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running redis-server; killed when dropped.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// A server on a free port; `None` (after a loud line) without redis-server outside CI.
    pub async fn start() -> Option<Self> {
        Self::start_with(&[]).await
    }

    /// A server with extra arguments (`--replicaof`, `--requirepass` ...).
    pub async fn start_with(extra: &[&str]) -> Option<Self> {
        Self::start_on(free_port(), extra).await
    }

    /// A server on `port` (one a gateway was already told about).
    pub async fn start_on(port: u16, extra: &[&str]) -> Option<Self> {
        if !usable(&["redis-server"]) {
            return None;
        }
        let mut s = Self {
            port,
            dir: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
        };
        s.spawn().await;
        Some(s)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    async fn spawn(&mut self) {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        wait_ping(self.port, "redis-server", &mut child, &self.log()).await;
        self.child = Some(child);
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server at once (SIGKILL): an outage, not a shutdown.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty (nothing was saved).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// One command through the wire protocol (see [`command`]).
    pub fn command(&self, cmd: &str) -> String {
        command(self.port, cmd).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A primary, one replica and one sentinel watching them (quorum 1, quick failure detection).
pub struct SentinelSet {
    pub primary: RedisServer,
    pub replica: RedisServer,
    pub sentinel_port: u16,
    /// The monitored primary's name.
    pub service: &'static str,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl SentinelSet {
    /// Starts the three and waits until the sentinel knows the replica and the replica is in
    /// sync; `None` (after a loud line) without the binaries outside CI.
    pub async fn start() -> Option<Self> {
        if !usable(&["redis-server", "redis-sentinel"]) {
            return None;
        }
        let primary = RedisServer::start().await?;
        let replica =
            RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()])
                .await?;
        let dir = tempfile::tempdir().unwrap();
        let sentinel_port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel_port}\nbind 127.0.0.1\ndir {d}\nlogfile {d}/sentinel.log\n\
                 sentinel monitor mymaster 127.0.0.1 {p} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 5000\n\
                 sentinel parallel-syncs mymaster 1\n",
                d = dir.path().display(),
                p = primary.port
            ),
        )
        .unwrap();
        let mut child = Command::new("redis-sentinel")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-sentinel starts");
        wait_ping(
            sentinel_port,
            "redis-sentinel",
            &mut child,
            &dir.path().join("sentinel.log"),
        )
        .await;
        let set = Self {
            primary,
            replica,
            sentinel_port,
            service: "mymaster",
            dir,
            child: Some(child),
        };
        let replica_port = set.replica.port.to_string();
        set.wait("the sentinel to know the replica", || {
            command(set.sentinel_port, "SENTINEL REPLICAS mymaster")
                .is_some_and(|r| r.contains(&replica_port))
                && set
                    .replica
                    .command("INFO replication")
                    .contains("master_link_status:up")
        })
        .await;
        Some(set)
    }

    /// `redis+sentinel://127.0.0.1:PORT/mymaster/0`.
    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://127.0.0.1:{}/{}/0",
            self.sentinel_port, self.service
        )
    }

    /// The port the sentinel names as the primary now.
    pub fn primary_port(&self) -> Option<u16> {
        let r = command(
            self.sentinel_port,
            &format!("SENTINEL GET-MASTER-ADDR-BY-NAME {}", self.service),
        )?;
        r.lines()
            .filter(|l| !l.starts_with(['*', '$']))
            .nth(1)?
            .parse()
            .ok()
    }

    pub async fn wait(&self, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; sentinel log: {}",
                std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
