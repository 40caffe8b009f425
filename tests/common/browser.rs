//! A real headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`):
//! chromedriver is started on a free port for each [`Browser`] and stopped (its process group,
//! by PID) when it is dropped.
//!
//! Without chromedriver the tests fail: CI installs it (`.ci/run`). Only an explicit
//! `HOOKGATE_SKIP_BROWSER=1` skips them, for local runs on machines without a browser.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// The longest any wait for the page may take before the test fails with its message.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Browser {
    driver: Child,
    pub client: Client,
    _profile: tempfile::TempDir,
}

/// `None` when `HOOKGATE_SKIP_BROWSER=1` asks to skip; panics when no chromedriver is found.
pub fn chromedriver() -> Option<PathBuf> {
    if std::env::var("HOOKGATE_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("HOOKGATE_SKIP_BROWSER=1: browser test skipped");
        return None;
    }
    let path = std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"));
    assert!(
        path.exists(),
        "{} not found: install Debian's chromium and chromium-driver (.ci/run does), set \
         CHROMEDRIVER, or set HOOKGATE_SKIP_BROWSER=1 to skip the browser tests locally",
        path.display()
    );
    Some(path)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session with a window of `width`×`height`.
    pub async fn start(driver: &std::path::Path, width: u32, height: u32) -> Self {
        let port = free_port();
        let mut command = Command::new(driver);
        command
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group, so stopping it stops the browser it started too.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().expect("chromedriver starts");
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("chromedriver exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on port {port} within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": binary,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--disable-gpu", "--no-first-run", "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| {
                stop_group(&mut child);
                panic!("no WebDriver session with Chromium: {e}")
            });
        Self {
            driver: child,
            client,
            _profile: profile,
        }
    }

    /// Ends the session (Chromium quits), then stops chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }

    /// Waits until `css` matches an element; fails with `what` after [`WAIT`].
    pub async fn wait_for(&self, css: &str, what: &str) -> fantoccini::elements::Element {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(found) = self.client.find(Locator::Css(css)).await {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: `{css}` did not appear within {WAIT:?} on {}",
                self.client
                    .current_url()
                    .await
                    .map(|u| u.to_string())
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of the first element matching `css` (which must exist).
    pub async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("`{css}` is not on the page: {e}"))
            .text()
            .await
            .unwrap()
    }

    /// Reloads `url` until `css` matches; fails with `what` after [`WAIT`].
    pub async fn reload_until(
        &self,
        url: &str,
        css: &str,
        what: &str,
    ) -> fantoccini::elements::Element {
        let deadline = Instant::now() + WAIT;
        loop {
            self.client.goto(url).await.unwrap();
            if let Ok(found) = self.client.find(Locator::Css(css)).await {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: `{css}` not on {url} within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The `textContent` of the first element matching `css` (shown or not, e.g. inside a
    /// closed `<details>`).
    pub async fn content(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("`{css}` is not on the page: {e}"))
            .prop("textContent")
            .await
            .unwrap()
            .unwrap_or_default()
    }

    pub async fn screenshot(&self, path: &std::path::Path) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(path, png).unwrap();
    }
}

/// Stops chromedriver and every browser process in its group: TERM (Chromium shuts down
/// gracefully), then KILL whatever is left after a few seconds.
fn stop_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let signal = |sig: &str| {
        Command::new("kill")
            .args([sig, "--", &group])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let _ = child.try_wait();
        if !signal("-0") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    signal("-KILL");
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Browser {
    fn drop(&mut self) {
        stop_group(&mut self.driver);
    }
}
