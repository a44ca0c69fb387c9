//! Headless Chromium (Debian's `chromium`) driven over WebDriver through `chromedriver`.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::free_port;

/// One browser session; the session, chromedriver and every Chromium process it started go
/// when dropped (the whole process group is killed).
pub struct Browser {
    driver: Child,
    session: String,
    base: String,
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
}

/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    /// Starts chromedriver and a headless Chromium session (1280×900).
    pub fn start() -> Self {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver is not installed (scripts/setup.sh installs it)");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        cadre_actors::tls::install_provider();
        let mut browser = Self {
            driver,
            session: String::new(),
            base: format!("http://127.0.0.1:{port}"),
            runtime,
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while browser.request("GET", "/status", None).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"],
            },
        }}});
        let session = browser
            .request("POST", "/session", Some(capabilities))
            .unwrap_or_else(|e| panic!("no browser session: {e}"));
        browser.session = session["sessionId"].as_str().unwrap().to_string();
        browser
    }

    fn request(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        self.runtime.block_on(async {
            let request = match method {
                "GET" => self.http.get(&url),
                "DELETE" => self.http.delete(&url),
                _ => self.http.post(&url).json(&body.unwrap_or(json!({}))),
            };
            let response = request
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let ok = response.status().is_success();
            let answer: Value = response.json().await.map_err(|e| e.to_string())?;
            if ok {
                Ok(answer["value"].clone())
            } else {
                Err(answer["value"].to_string())
            }
        })
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.request(method, &path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body) in the page with `args`; its return value.
    pub fn eval(&self, script: &str, args: Value) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Waits (up to `limit`) until `script` returns something truthy; returns it.
    pub fn wait_for(&self, what: &str, limit: Duration, script: &str, args: Value) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.eval(script, args.clone());
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {limit:?}; the page shows:\n{}",
                self.eval("return document.body.innerText", json!([]))
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Clicks the element `css` selects, as a user would.
    pub fn click(&self, css: &str) {
        let found = self.session_call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        let id = found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element reference in {found}"))
            .to_string();
        self.session_call("POST", &format!("/element/{id}/click"), None);
    }

    /// Saves a PNG of the viewport to `path`.
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let png = self.session_call("GET", "/screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64"))
            .expect("a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.request("DELETE", &format!("/session/{}", self.session), None);
        }
        // chromedriver and the Chromium processes it started share its process group.
        unsafe { libc::kill(-(self.driver.id() as i32), libc::SIGKILL) };
        let _ = self.driver.wait();
    }
}
