//! A real PostgreSQL for tests: Debian's server binaries (`initdb`, `pg_ctl`, `postgres`) run a
//! throwaway cluster in a temp dir on a free loopback port, with fsync off. PostgreSQL refuses
//! to run as root, so under root (as CI runs) the cluster belongs to `nobody` and its commands
//! run with that uid. The role `otpgate` logs in with a SCRAM password over TCP (the password is
//! in [`PgServer::password_file`]); optionally TLS with a certificate of the test CA.
//! [`PgServer::stop`] (`pg_ctl stop -m immediate`, a crash) and [`PgServer::start_again`] make
//! outages. Without the binaries a test that needs them is skipped loudly, except under
//! `CI=true`, where it fails.
//!
//! ```ignore
//! let Some(pg) = PgServer::start().await else { return };
//! let store = pg.store().await;
//! ```

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use otpgate::config::{CredentialsConfig, PostgresConfig, Secret};
use otpgate::store::Store;

use crate::harness::Leaf;
use crate::redis::free_port;

/// The folder of the server binaries: Debian's newest `/usr/lib/postgresql/N/bin`, else PATH.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|d| d.join("postgres").exists() && d.join("initdb").exists())
    })
}

/// True when PostgreSQL can run; otherwise fails under `CI=true`, or prints a loud skip line.
pub fn usable() -> bool {
    if bin_dir().is_some() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("PostgreSQL is required for these tests under CI (apt-get install postgresql)");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: PostgreSQL not installed (apt-get install postgresql); the test returns early"
    );
    false
}

/// The uid and gid the cluster runs as: `nobody` under root, else the current user (`None`).
fn server_user() -> Option<(u32, u32)> {
    let uid = std::fs::metadata("/proc/self").ok().map(|m| {
        use std::os::unix::fs::MetadataExt as _;
        m.uid()
    })?;
    if uid != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .expect("a nobody user to run PostgreSQL as under root");
    let f: Vec<&str> = line.split(':').collect();
    Some((f[2].parse().unwrap(), f[3].parse().unwrap()))
}

/// The login role's password.
pub const PASSWORD: &str = "pg-test-secret";

/// A running PostgreSQL cluster; stopped when dropped.
pub struct PgServer {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    user: Option<(u32, u32)>,
    running: bool,
}

impl PgServer {
    /// A cluster on a free port, plain TCP; `None` (after a loud line) without PostgreSQL
    /// outside CI.
    pub async fn start() -> Option<Self> {
        Self::start_with(None).await
    }

    /// A cluster that also accepts TLS with `leaf` (its names must include 127.0.0.1).
    pub async fn start_tls(leaf: &Leaf) -> Option<Self> {
        Self::start_with(Some(leaf)).await
    }

    async fn start_with(tls: Option<&Leaf>) -> Option<Self> {
        if !usable() {
            return None;
        }
        let bin = bin_dir().unwrap();
        let user = server_user();
        let dir = tempfile::tempdir().unwrap();
        let pwfile = dir.path().join("password");
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
        let me = Self {
            port: free_port(),
            bin,
            dir,
            user,
            running: false,
        };
        me.chown(me.dir.path());
        me.chown(&pwfile);
        let out = me
            .command("initdb")
            .args(["-D"])
            .arg(me.data())
            .args([
                "-U",
                "otpgate",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-N",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nfsync = off\n\
             max_connections = 100\n",
            me.port,
            me.dir.path().display()
        );
        if let Some(leaf) = tls {
            let (cert, key) = (
                me.dir.path().join("server.pem"),
                me.dir.path().join("server-key.pem"),
            );
            std::fs::write(&cert, &leaf.cert_pem).unwrap();
            std::fs::write(&key, &leaf.key_pem).unwrap();
            {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
            me.chown(&cert);
            me.chown(&key);
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                cert.display(),
                key.display()
            ));
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(me.data().join("postgresql.conf"))
            .unwrap();
        f.write_all(conf.as_bytes()).unwrap();
        let mut me = me;
        me.start_again().await;
        me.sql_in("postgres", "CREATE DATABASE otpgate").await;
        Some(me)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// A file holding the login role's password (for `password_file`).
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("password")
    }

    fn chown(&self, path: &Path) {
        if let Some((uid, gid)) = self.user {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        }
    }

    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(self.bin.join(tool));
        c.current_dir(self.dir.path());
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid).env("HOME", self.dir.path());
        }
        c
    }

    /// Starts the (stopped) cluster again on the same port and data, and waits until it
    /// accepts connections.
    pub async fn start_again(&mut self) {
        if !self.log().exists() {
            std::fs::write(self.log(), "").unwrap();
            self.chown(&self.log());
        }
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log())
            .args(["-w", "-t", "30", "start"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.log()).unwrap_or_default()
        );
        self.running = true;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "PostgreSQL does not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the cluster as a crash would (`pg_ctl stop -m immediate`).
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-m", "immediate", "stop"])
            .output();
        self.running = false;
    }

    /// `postgres://otpgate@127.0.0.1:PORT/otpgate?sslmode=MODE`.
    pub fn url_with(&self, sslmode: &str) -> String {
        format!(
            "postgres://otpgate@127.0.0.1:{}/otpgate?sslmode={sslmode}",
            self.port
        )
    }

    /// The plain-TCP URL.
    pub fn url(&self) -> String {
        self.url_with("disable")
    }

    /// The `credentials:` line of a gateway config.
    pub fn yaml(&self) -> String {
        format!(
            "credentials: {{ url: \"{}\", password_file: {:?} }}\n",
            self.url(),
            self.password_file()
        )
    }

    /// Settings of a store on this cluster.
    pub fn config_with(&self, sslmode: &str, ca: Option<&Path>) -> PostgresConfig {
        let mut url = self.url_with(sslmode);
        if let Some(ca) = ca {
            url.push_str(&format!("&sslrootcert={}", ca.display()));
        }
        otpgate::config::postgres_config(&url, Some(Secret::new(PASSWORD)), Path::new("/")).unwrap()
    }

    /// A new store handle (its own pool, as another replica would have).
    pub async fn store(&self) -> Store {
        Store::open(
            &CredentialsConfig::Postgres(self.config_with("disable", None)),
            self.dir.path(),
        )
        .await
        .unwrap()
    }

    /// Runs SQL in the test database through a client of its own (not the store's).
    pub async fn sql(&self, statement: &str) {
        self.sql_in("otpgate", statement).await;
    }

    async fn sql_in(&self, db: &str, statement: &str) {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user("otpgate")
            .password(PASSWORD)
            .dbname(db)
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.batch_execute(statement).await.unwrap();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}
