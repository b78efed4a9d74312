//! Real front proxies for the forward-auth tests: nginx (`auth_request`) and Caddy
//! (`forward_auth`), started on a loopback port from the very configurations the README shows
//! (`config/examples/forward-auth/`), with only their addresses changed and TLS added with a
//! certificate of the test CA (browsers send `Sec-Fetch-*` over HTTPS only, and the deployments
//! these configs are for use HTTPS). Each runs in a temporary folder (pid, logs, temp files,
//! the certificate, Caddy's data) as a single process that is killed when the test drops it.
//!
//! Locally a missing nginx or Caddy skips the test with a loud message; under `CI=true` it
//! fails it (`.ci/run` installs both).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::Leaf;

/// Where the README's front-proxy configurations live.
pub const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/examples/forward-auth");

/// A running front proxy.
pub struct FrontProxy {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
    name: &'static str,
}

impl Drop for FrontProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FrontProxy {
    /// nginx with `config/examples/forward-auth/nginx.conf`, in front of `upstream`, asking
    /// otpgate at `otpgate`, serving HTTPS with `leaf` on `port`.
    pub fn nginx(port: u16, otpgate: u16, upstream: u16, leaf: &Leaf) -> Option<Self> {
        let bin = find("nginx", "/usr/sbin/nginx", "nginx")?;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        write_leaf(dir.path(), leaf);
        let site = example(
            "nginx.conf",
            &[
                (
                    "listen 80;",
                    format!(
                        "listen 127.0.0.1:{port} ssl;\n    ssl_certificate {d}/site.pem;\n    ssl_certificate_key {d}/site-key.pem;"
                    ),
                ),
                (
                    "server 127.0.0.1:8080;",
                    format!("server 127.0.0.1:{otpgate};"),
                ),
                (
                    "server 127.0.0.1:3000;",
                    format!("server 127.0.0.1:{upstream};"),
                ),
            ],
        );
        std::fs::write(dir.path().join("site.conf"), site).unwrap();
        // One process (no master), so killing it ends it; as root it stays root rather than
        // switching to a user who could not read the temporary folder.
        let main = format!(
            "daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp;
    proxy_temp_path {d}/tmp;
    fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp;
    scgi_temp_path {d}/tmp;
    include {d}/site.conf;
}}
"
        );
        std::fs::write(dir.path().join("nginx.conf"), main).unwrap();
        let child = Command::new(bin)
            .args(["-p", &d, "-c", &format!("{d}/nginx.conf"), "-e"])
            .arg(format!("{d}/error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        Some(Self::ready(port, child, dir, "nginx"))
    }

    /// Caddy with `config/examples/forward-auth/Caddyfile`, the site at `https://HOST:port` on
    /// loopback with `leaf`, admin endpoint and automatic HTTPS off.
    pub fn caddy(port: u16, otpgate: u16, upstream: u16, leaf: &Leaf) -> Option<Self> {
        let bin = find("caddy", "/usr/bin/caddy", "caddy")?;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        write_leaf(dir.path(), leaf);
        let site = example(
            "Caddyfile",
            &[
                (
                    "app.example.test {",
                    format!(
                        "https://app.example.test:{port} {{\n\tbind 127.0.0.1\n\ttls {d}/site.pem {d}/site-key.pem"
                    ),
                ),
                ("127.0.0.1:8080", format!("127.0.0.1:{otpgate}")),
                ("127.0.0.1:3000", format!("127.0.0.1:{upstream}")),
            ],
        );
        let file = dir.path().join("Caddyfile");
        std::fs::write(
            &file,
            format!("{{\n\tadmin off\n\tauto_https off\n}}\n\n{site}"),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("caddy.log")).unwrap();
        let child = Command::new(bin)
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&file)
            .env("HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("caddy starts");
        Some(Self::ready(port, child, dir, "caddy"))
    }

    /// Waits until the proxy accepts connections; shows its log when it does not.
    fn ready(port: u16, mut child: Child, dir: tempfile::TempDir, name: &'static str) -> Self {
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "{name} did not start ({exited:?}):\n{}",
                logs(dir.path())
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        Self {
            port,
            child,
            dir,
            name,
        }
    }

    /// The proxy's logs, for failure messages.
    pub fn logs(&self) -> String {
        format!("{} logs:\n{}", self.name, logs(self.dir.path()))
    }
}

fn write_leaf(dir: &Path, leaf: &Leaf) {
    std::fs::write(dir.join("site.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join("site-key.pem"), &leaf.key_pem).unwrap();
}

/// A free loopback port (released again, so a proxy can take it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The example file `name` with each `(from, to)` replaced. Each `from` must occur in it, so a
/// changed example cannot quietly leave the test running something else.
pub fn example(name: &str, replace: &[(&str, String)]) -> String {
    let path = Path::new(EXAMPLES).join(name);
    let mut text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (from, to) in replace {
        assert!(text.contains(from), "{name} no longer contains {from:?}");
        text = text.replace(from, to);
    }
    text
}

fn logs(dir: &Path) -> String {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect()
}

/// The binary `cmd` on PATH or at `fallback`; `None`, loudly, on a developer machine without
/// it; a failure under `CI=true`.
fn find(cmd: &str, fallback: &str, package: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(cmd))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if let Some(p) = on_path
        .into_iter()
        .chain([PathBuf::from(fallback)])
        .find(|p| p.is_file())
    {
        return Some(p);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{cmd} is required in CI (apt-get install {package})"
    );
    eprintln!("SKIPPED: {cmd} is not installed (apt-get install {package})");
    None
}
