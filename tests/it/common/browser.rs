//! A real browser for the console's tests: Debian's `chromium`, headless,
//! driven over WebDriver by `chromedriver` (a process of the test's own).
//!
//! Without the two programs the browser tests say so and pass, so the test
//! command works on a machine without them; with `CI` set (`.ci/run`
//! installs them) they are required and a missing browser fails the test.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tokio::sync::{Semaphore, SemaphorePermit};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    _turn: SemaphorePermit<'static>,
}

/// Browsers at once: more only make them slow on a machine of two cores.
static TURNS: Semaphore = Semaphore::const_new(2);

impl Browser {
    /// A fresh headless browser with an empty profile, or `None` (after
    /// saying why) where there is none and CI does not require one.
    pub async fn start() -> Option<Self> {
        let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
            .into_iter()
            .filter(|p| !std::path::Path::new(p).exists())
            .collect();
        if !missing.is_empty() {
            let why = format!(
                "{} missing: install Debian's chromium and chromium-driver to run the browser tests",
                missing.join(" and ")
            );
            assert!(std::env::var_os("CI").is_none(), "{why} (CI requires them)");
            eprintln!("SKIPPED: {why}");
            return None;
        }
        let turn = TURNS.acquire().await.expect("never closed");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        // Its own process group, so dropping the browser ends chromium too.
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut capabilities = Capabilities::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--hide-scrollbars",
                    "--window-size=1280,1000", "--force-device-scale-factor=1",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut last = None;
        for _ in 0..100 {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    return Some(Browser {
                        client,
                        driver,
                        _profile: profile,
                        _turn: turn,
                    })
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver on {url} gave no browser session: {last:?}");
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("the page loads");
    }

    pub async fn path(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("a URL")
            .path()
            .to_owned()
    }

    /// The first element `css` selects; a test that expects it fails without.
    pub async fn element(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}` on the page: {e}"))
    }

    pub async fn text(&self, css: &str) -> String {
        let element = self.element(css).await;
        element.text().await.expect("the element's text")
    }

    pub async fn texts(&self, css: &str) -> Vec<String> {
        let mut all = Vec::new();
        for element in self
            .client
            .find_all(Locator::Css(css))
            .await
            .expect("a search")
        {
            all.push(element.text().await.expect("the element's text"));
        }
        all
    }

    pub async fn count(&self, css: &str) -> usize {
        let found = self.client.find_all(Locator::Css(css)).await;
        found.expect("a search").len()
    }

    pub async fn fill(&self, css: &str, value: &str) {
        let field = self.element(css).await;
        field.clear().await.expect("cleared");
        field.send_keys(value).await.expect("typed");
    }

    /// Sets a field's value as a person picking it would (a `datetime-local`
    /// input takes no typing that does not depend on the browser's locale).
    pub async fn set_value(&self, css: &str, value: &str) {
        let script = "document.querySelector(arguments[0]).value = arguments[1]";
        self.client
            .execute(script, vec![json!(css), json!(value)])
            .await
            .expect("the value is set");
    }

    /// Clicks a control that stays on the page (a checkbox).
    pub async fn tick(&self, css: &str) {
        self.element(css).await.click().await.expect("clicked");
    }

    /// Clicks what leads to another page, and waits until that page has
    /// loaded (WebDriver's click may return before a form's answer is in).
    pub async fn click(&self, css: &str) {
        let mark = "window.relayTestPage = 'left'";
        self.client
            .execute(mark, vec![])
            .await
            .expect("the page is marked");
        self.element(css).await.click().await.expect("clicked");
        let loaded =
            "return window.relayTestPage === undefined && document.readyState === 'complete'";
        for _ in 0..300 {
            if self.client.execute(loaded, vec![]).await.ok() == Some(json!(true)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("clicking `{css}` loaded no new page within 15 s");
    }

    /// The window's view of the page as PNG, into `dir/name.png`.
    pub async fn screenshot(&self, dir: &std::path::Path, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::create_dir_all(dir).expect("the screenshot directory");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("the screenshot is written");
    }

    /// Ends the browser session; dropping ends the processes.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("--")
            .arg(format!("-{}", self.driver.id()))
            .status();
        let _ = self.driver.wait();
    }
}
