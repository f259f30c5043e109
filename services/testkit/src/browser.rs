//! A real headless Chromium driven through ChromeDriver's W3C WebDriver protocol (plain HTTP and
//! JSON, so a few reqwest calls replace a WebDriver crate).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{POLL, free_port, http_client};

/// The key under which WebDriver returns an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser session; the ChromeDriver process and the session end when it is dropped.
pub struct Browser {
    driver: Child,
    base: String,
    client: reqwest::Client,
    _profile: tempfile::TempDir,
}

/// How long a click may take to bring up the next page.
const NAVIGATION_TIMEOUT: Duration = Duration::from_secs(10);

/// A reference to an element on the current page.
#[derive(Debug, Clone)]
pub struct Element(String);

fn find_program(candidates: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    candidates.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|c| c.is_file())
    })
}

impl Browser {
    /// Starts ChromeDriver on a free port and opens a headless Chromium session. Panics with
    /// what to install when Debian's `chromium` and `chromium-driver` are missing.
    pub async fn start() -> Browser {
        let driver_bin = find_program(&["chromedriver"]).unwrap_or_else(|| {
            panic!("no chromedriver on PATH: apt-get install chromium chromium-driver")
        });
        let chromium = find_program(&["chromium", "chromium-browser"]).unwrap_or_else(|| {
            panic!("no chromium on PATH: apt-get install chromium chromium-driver")
        });
        let port = free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromedriver: {e}"));
        let profile = tempfile::tempdir().expect("a temporary profile directory");
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            client: http_client(),
            _profile: profile,
        };
        browser.wait_for_driver().await;
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Screenshots the size of a laptop's browser window.
            "--window-size=1280,900",
            &format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args}
        }}});
        let session = browser.call("POST", "/session", Some(capabilities)).await;
        let id = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {session}"))
            .to_owned();
        browser.base = format!("{}/session/{id}", browser.base);
        browser
    }

    async fn wait_for_driver(&mut self) {
        for _ in 0..1000 {
            let ready = self
                .client
                .get(format!("{}/status", self.base))
                .send()
                .await;
            if let Ok(response) = ready
                && response.status().is_success()
            {
                return;
            }
            if let Ok(Some(status)) = self.driver.try_wait() {
                panic!("chromedriver exited with {status}");
            }
            tokio::time::sleep(POLL).await;
        }
        panic!("chromedriver did not answer within 10 s");
    }

    /// One WebDriver command; a WebDriver error fails the test with its message.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .await
            .unwrap_or_else(|failure| panic!("WebDriver {method} {path}: {failure}"))
    }

    /// One WebDriver command; a WebDriver error comes back as its status and JSON answer.
    async fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.client.get(&url),
            "DELETE" => self.client.delete(&url),
            _ => self
                .client
                .post(&url)
                .json(&body.unwrap_or_else(|| json!({}))),
        };
        let response = request
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(answer["value"].clone())
        } else {
            Err(format!("{status} {answer}"))
        }
    }

    /// Loads `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url }))).await;
    }

    /// The address of the current page (after redirects).
    pub async fn current_url(&self) -> String {
        self.call("GET", "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page's `<title>`.
    pub async fn title(&self) -> String {
        self.call("GET", "/title", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The first element matching a CSS selector; fails the test if there is none.
    pub async fn find(&self, css: &str) -> Element {
        let found = self
            .call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        Element(
            found[ELEMENT_KEY]
                .as_str()
                .unwrap_or_else(|| panic!("no element {css}: {found}"))
                .to_owned(),
        )
    }

    /// The visible text of every element matching a CSS selector.
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let found = self
            .call(
                "POST",
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        let mut texts = Vec::new();
        for element in found.as_array().cloned().unwrap_or_default() {
            let id = element[ELEMENT_KEY].as_str().unwrap_or_default().to_owned();
            texts.push(self.text(&Element(id)).await);
        }
        texts
    }

    /// An element's visible text.
    pub async fn text(&self, element: &Element) -> String {
        let path = format!("/element/{}/text", element.0);
        self.call("GET", &path, None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Clicks an element (a link, a button, an option of a select).
    pub async fn click(&self, element: &Element) {
        self.call("POST", &format!("/element/{}/click", element.0), None)
            .await;
    }

    /// Clicks a link or a submit button and waits until the next page has replaced this one.
    /// WebDriver's click can return before the navigation starts, and a `find` right after it
    /// then searches the old page (the browser test failed so in 5 of 20 runs under CPU load).
    /// The old page is marked with a variable on its `window`, which a new page does not have.
    pub async fn click_to_next_page(&self, element: &Element) {
        let mark = json!({"script": "window.gradebookOldPage = true", "args": []});
        self.call("POST", "/execute/sync", Some(mark)).await;
        self.click(element).await;
        let probe = json!({
            "script": "return !window.gradebookOldPage && document.readyState === 'complete'",
            "args": []
        });
        let deadline = Instant::now() + NAVIGATION_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            // While the documents swap, ChromeDriver may answer with a transient error.
            match self
                .try_call("POST", "/execute/sync", Some(probe.clone()))
                .await
            {
                Ok(Value::Bool(true)) => return,
                Ok(answer) => last = answer.to_string(),
                Err(failure) => last = failure,
            }
            tokio::time::sleep(POLL).await;
        }
        panic!("no new page within 10 s of the click; last answer: {last}");
    }

    /// Types `text` into the first input matching `css`, after clearing it.
    pub async fn fill(&self, css: &str, text: &str) {
        self.type_into(&self.find(css).await, text).await;
    }

    /// Clicks the first link or button matching `css` and waits for the page it leads to.
    pub async fn follow(&self, css: &str) {
        self.click_to_next_page(&self.find(css).await).await;
    }

    /// The visible text of the first element matching `css`.
    pub async fn text_of(&self, css: &str) -> String {
        self.text(&self.find(css).await).await
    }

    /// Types `text` into an input, after clearing it.
    pub async fn type_into(&self, element: &Element, text: &str) {
        self.call("POST", &format!("/element/{}/clear", element.0), None)
            .await;
        let path = format!("/element/{}/value", element.0);
        self.call("POST", &path, Some(json!({ "text": text })))
            .await;
    }

    /// Saves a PNG of the browser window to `path` (its folder is created), for the README's
    /// pictures of what a user sees.
    pub async fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine as _;
        let encoded = self.call("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("WebDriver sent a screenshot that is not base64: {e}"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        std::fs::write(path, png)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// The HTML of the current page as the browser holds it.
    pub async fn page_source(&self) -> String {
        self.call("GET", "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

impl Browser {
    /// Ends the session, which closes Chromium; then ChromeDriver goes with the drop.
    pub async fn quit(self) {
        let _ = self
            .client
            .delete(&self.base)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Without quit() first (a failed test), Chromium may outlive its driver briefly: it
        // exits when its DevTools pipe closes.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
