//! A real OpenLDAP `slapd` for tests: a throwaway instance per test (research/ecosystem.md §5c),
//! with its cn=config and MDB database in a temp dir, listening on a free loopback port,
//! loaded with the project fixture `tests/data/directory.ldif` through `ldapadd`, and killed
//! when dropped. It runs as `nobody` (through `setpriv`) when the tests run as root, as CI does.
//!
//! Options: the `memberof` overlay (Active Directory-style `memberOf` on user entries), and TLS
//! (`ldaps://` on a second port, StartTLS on the first) with a certificate from the test CA.
//! Without slapd and the OpenLDAP tools a test that needs the server is skipped loudly, except
//! under `CI=true`, where it fails.
//!
//! ```ignore
//! let Some(ldap) = Slapd::start(Options::default()).await else { return };
//! // directory: { url: ldap.url(), bind_dn: READER_DN, bind_password_file: ldap.password_file() ... }
//! ldap.modify("dn: cn=engineering,ou=groups,dc=example,dc=org\nchangetype: modify\n...");
//! ```

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::harness::Leaf;

/// The suffix of the test directory.
pub const SUFFIX: &str = "dc=example,dc=org";
/// The administrator (writes the fixture and the tests' changes).
pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=org";
const ADMIN_PW: &str = "admin-secret-pw";
/// The read-only account the gateway binds as (defined in the fixture).
pub const READER_DN: &str = "cn=reader,dc=example,dc=org";
/// Its password (as in the fixture).
pub const READER_PW: &str = "reader-secret-pw";
/// Where the users are.
pub const PEOPLE: &str = "ou=people,dc=example,dc=org";
/// Where the groups are.
pub const GROUPS: &str = "ou=groups,dc=example,dc=org";

/// How to start the instance.
#[derive(Default)]
pub struct Options<'a> {
    /// Load the `memberof` overlay: users get `memberOf` values for their groups.
    pub member_of: bool,
    /// Serve `ldaps://` on a second port and StartTLS on the first, with this certificate.
    pub tls: Option<&'a Leaf>,
}

/// A running slapd; killed when dropped.
pub struct Slapd {
    /// The `ldap://` port (127.0.0.1).
    pub port: u16,
    /// The `ldaps://` port, with TLS.
    pub tls_port: Option<u16>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/directory.ldif")
}

/// Where Debian's slapd keeps its schemas and modules (asked from dpkg, as the recipe does;
/// the usual paths otherwise).
fn slapd_paths() -> (PathBuf, PathBuf) {
    let listed = Command::new("dpkg")
        .args(["-L", "slapd"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let find = |suffix: &str, fallback: &str| {
        listed
            .lines()
            .find(|l| l.ends_with(suffix))
            .and_then(|l| Path::new(l).parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from(fallback))
    };
    (
        find("/schema/core.ldif", "/etc/ldap/schema"),
        find("/back_mdb.so", "/usr/lib/ldap"),
    )
}

fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
    })
}

fn tool_available(name: &str) -> bool {
    [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ]
    .iter()
    .any(|d| Path::new(d).join(name).exists())
}

/// True when slapd can run; otherwise fails under `CI=true`, or prints a loud skip line.
fn usable() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    let available = *AVAILABLE.get_or_init(|| {
        ["slapd", "slapadd", "ldapadd", "ldapmodify"]
            .iter()
            .all(|t| tool_available(t))
            && (!is_root() || tool_available("setpriv"))
    });
    if available {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "slapd and ldap-utils are required for the directory tests under CI \
             (apt-get install slapd ldap-utils)"
        );
    }
    // Written to the process's stderr directly: `eprintln!` would be captured by the test
    // harness and shown only for failing tests.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: slapd / ldap-utils not installed (apt-get install slapd ldap-utils); \
         the directory test returns early"
    );
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config_ldif(dir: &Path, options: &Options<'_>) -> String {
    let (schema, modules) = slapd_paths();
    let d = dir.display();
    let tls = if options.tls.is_some() {
        format!("olcTLSCertificateFile: {d}/tls.pem\nolcTLSCertificateKeyFile: {d}/tls-key.pem\n")
    } else {
        String::new()
    };
    let memberof_module = if options.member_of {
        "olcModuleLoad: memberof\n"
    } else {
        ""
    };
    let memberof_overlay = if options.member_of {
        "\ndn: olcOverlay={0}memberof,olcDatabase={1}mdb,cn=config\n\
         objectClass: olcOverlayConfig\n\
         objectClass: olcMemberOf\n\
         olcOverlay: {0}memberof\n\
         olcMemberOfRefInt: TRUE\n"
    } else {
        ""
    };
    format!(
        "dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {d}/slapd.pid
{tls}
dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: {modules}
olcModuleLoad: back_mdb
{memberof_module}
dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file://{schema}/core.ldif
include: file://{schema}/cosine.ldif
include: file://{schema}/inetorgperson.ldif

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {SUFFIX}
olcRootDN: {ADMIN_DN}
olcRootPW: {ADMIN_PW}
olcDbDirectory: {d}/db
olcDbMaxSize: 67108864
olcAccess: {{0}}to attrs=userPassword by anonymous auth by * none
olcAccess: {{1}}to * by users read by * none
{memberof_overlay}",
        schema = schema.display(),
        modules = modules.display(),
    )
}

impl Slapd {
    /// Starts an instance with the fixture loaded; `None` (after a loud line) when slapd is not
    /// installed outside CI.
    pub async fn start(options: Options<'_>) -> Option<Self> {
        if !usable() {
            return None;
        }
        let mut last_log = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("slapd.d")).unwrap();
            std::fs::create_dir_all(dir.path().join("db")).unwrap();
            if let Some(leaf) = options.tls {
                std::fs::write(dir.path().join("tls.pem"), &leaf.cert_pem).unwrap();
                std::fs::write(dir.path().join("tls-key.pem"), &leaf.key_pem).unwrap();
            }
            std::fs::write(dir.path().join("reader-password"), READER_PW).unwrap();
            let ldif = dir.path().join("config.ldif");
            std::fs::write(&ldif, config_ldif(dir.path(), &options)).unwrap();
            let out = Command::new("slapadd")
                .args(["-n", "0", "-F"])
                .arg(dir.path().join("slapd.d"))
                .arg("-l")
                .arg(&ldif)
                .output()
                .expect("slapadd runs");
            assert!(
                out.status.success(),
                "slapadd of the config failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            if is_root() {
                let ok = Command::new("chown")
                    .args(["-R", "nobody:nogroup"])
                    .arg(dir.path())
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "chown of the slapd folder");
            }
            let mut slapd = Self {
                port: free_port(),
                tls_port: options.tls.map(|_| free_port()),
                dir,
                child: None,
            };
            if slapd.launch().await {
                slapd.ldap_tool("ldapadd", &std::fs::read_to_string(fixture()).unwrap());
                return Some(slapd);
            }
            last_log = slapd.log_text();
        }
        panic!("slapd did not start; its last output:\n{last_log}");
    }

    /// Starts slapd on the instance's folder and ports; false when it did not come up.
    async fn launch(&mut self) -> bool {
        let mut urls = format!("ldap://127.0.0.1:{}/", self.port);
        if let Some(p) = self.tls_port {
            urls.push_str(&format!(" ldaps://127.0.0.1:{p}/"));
        }
        let mut cmd = if is_root() {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "slapd",
            ]);
            c
        } else {
            Command::new("slapd")
        };
        let log = std::fs::File::create(self.log_path()).unwrap();
        // `-d 0` keeps slapd in the foreground, so the child is slapd itself.
        cmd.arg("-F")
            .arg(self.dir.path().join("slapd.d"))
            .args(["-h", &urls, "-d", "0"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("slapd starts"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while tokio::time::Instant::now() < deadline {
            if self
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().unwrap().is_some())
            {
                return false;
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("slapd.log")
    }

    /// The server's output so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `ldap://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// `ldaps://127.0.0.1:PORT` (TLS instances only).
    pub fn ldaps_url(&self) -> String {
        format!(
            "ldaps://127.0.0.1:{}",
            self.tls_port.expect("a TLS instance")
        )
    }

    /// A file holding the reader's password, for `bind_password_file`.
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("reader-password")
    }

    /// The YAML `directory` block for this instance: groupOfNames groups, `otherMailbox` as
    /// the temporary-authentication address, and the given refresh. Pages of two entries, so
    /// every sync of the fixture's six people takes several pages (RFC 2696).
    pub fn directory_yaml(&self, refresh: &str) -> String {
        format!(
            "directory:
  url: {url}
  bind_dn: {READER_DN}
  bind_password_file: {pw}
  users: {{ base: '{PEOPLE}', id: mail, temp_auth_email: otherMailbox }}
  groups: {{ base: '{GROUPS}' }}
  refresh: {refresh}
  timeout: 5s
  page_size: 2
",
            url = self.url(),
            pw = self.password_file().display(),
        )
    }

    /// Stops the server (the directory is "down"); the data stays.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = tokio::task::spawn_blocking(move || c.wait()).await;
        }
    }

    /// Starts the server again on the same ports and data.
    pub async fn restart(&mut self) {
        for _ in 0..50 {
            if self.launch().await {
                return;
            }
            // The old process may hold the port a moment longer.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("slapd did not restart:\n{}", self.log_text());
    }

    fn ldap_tool(&self, tool: &str, ldif: &str) {
        let mut child = Command::new(tool)
            .args(["-x", "-H", &self.url(), "-D", ADMIN_DN, "-w", ADMIN_PW])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{tool} starts: {e}"));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ldif.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{tool} failed: {}{}\nslapd log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
    }

    /// Applies an LDIF change (`ldapmodify` as the administrator).
    pub fn modify(&self, ldif: &str) {
        self.ldap_tool("ldapmodify", ldif);
    }

    /// Removes `uid=UID` from group `cn=GROUP`.
    pub fn remove_member(&self, group: &str, uid: &str) {
        self.modify(&format!(
            "dn: cn={group},{GROUPS}\nchangetype: modify\ndelete: member\nmember: uid={uid},{PEOPLE}\n"
        ));
    }

    /// Adds `uid=UID` to group `cn=GROUP`.
    pub fn add_member(&self, group: &str, uid: &str) {
        self.modify(&format!(
            "dn: cn={group},{GROUPS}\nchangetype: modify\nadd: member\nmember: uid={uid},{PEOPLE}\n"
        ));
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
