//! A real headless Chromium driven through Debian's chromedriver with fantoccini, for tests that
//! click through the login pages. Every `*.test` name resolves to 127.0.0.1 inside the browser;
//! certificates of the test CA are accepted. Screenshots are kept as test artefacts under
//! `target/tmp/screenshots/<test>/`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

/// A running browser session.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    shots: PathBuf,
    taken: usize,
}

fn find(cmd: &str, fallback: &str) -> Option<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !path.is_empty() {
        return Some(path);
    }
    std::path::Path::new(fallback)
        .exists()
        .then(|| fallback.to_owned())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium. `None` (with a loud message) when they are
    /// not installed on a developer machine; under `CI=true` a missing browser fails the test.
    pub async fn start(test: &str) -> Option<Self> {
        crate::harness::init();
        let (Some(driver_bin), Some(chromium)) = (
            find("chromedriver", "/usr/bin/chromedriver"),
            find("chromium", "/usr/bin/chromium"),
        ) else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "chromium and chromedriver are required in CI (apt-get install chromium chromium-driver)"
            );
            eprintln!(
                "SKIPPED {test}: chromium/chromedriver not installed (apt-get install chromium chromium-driver)"
            );
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), "chrome".into());
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=900,900",
                    "--ignore-certificate-errors", "--host-resolver-rules=MAP *.test 127.0.0.1",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a browser session");
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("screenshots")
            .join(test);
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots).unwrap();
        Some(Self {
            client,
            driver,
            _profile: profile,
            shots,
            taken: 0,
        })
    }

    /// Saves a screenshot of the current page as `NN-name.png`.
    pub async fn shot(&mut self, name: &str) -> PathBuf {
        self.taken += 1;
        let png = self.client.screenshot().await.expect("a screenshot");
        let path = self.shots.join(format!("{:02}-{name}.png", self.taken));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Types into the field matching `css` and submits the form with its button.
    pub async fn fill_and_submit(&self, css: &str, text: &str) {
        let field = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no field {css}: {e}"));
        field.clear().await.ok();
        field.send_keys(text).await.unwrap();
        self.click("button[type=submit]").await;
    }

    /// Clicks the element matching `css` and waits for the next page.
    pub async fn click(&self, css: &str) {
        let before = self.client.find(Locator::Css("html")).await.unwrap();
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap();
        // Wait until the old document is gone (a form post navigates).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while before.tag_name().await.is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "clicking {css} did not navigate"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The visible text of the page.
    pub async fn text(&self) -> String {
        self.client
            .find(Locator::Css("body"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Ends the session and the driver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
