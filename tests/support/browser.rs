//! A real browser for the status page's tests: Debian's `chromium`, headless, driven through
//! `chromedriver` with the W3C WebDriver protocol (JSON over HTTP on 127.0.0.1).

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use super::git::free_port;

/// The W3C name of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// `chromedriver` with one headless Chromium session; both stop when dropped.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

/// The Chromium and chromedriver of this machine, if both are installed.
pub fn installed() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| {
        names.iter().find_map(|n| {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|d| d.join(n))
                .find(|p| p.is_file())
        })
    };
    Some((
        find(&["chromium", "chromium-browser"])?,
        find(&["chromedriver"])?,
    ))
}

impl Browser {
    /// Starts chromedriver and a headless Chromium of `width`×`height` in time zone `tz`.
    pub async fn start(chromium: &std::path::Path, driver: &std::path::Path, tz: &str) -> Browser {
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .process_group(0)
            .env("TZ", tz)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let mut b = Browser {
            driver: child,
            port,
            session: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000",
                         "--no-first-run", "--disable-extensions"]
            }
        }}});
        let answer = b.call("POST", "/session", caps).await;
        b.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_string();
        b
    }

    /// One WebDriver command; its `value`.
    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let body = if method == "GET" || method == "DELETE" {
            Vec::new()
        } else {
            serde_json::to_vec(&body).unwrap()
        };
        let (port, request) = (
            self.port,
            format!(
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                self.port,
                body.len()
            ),
        );
        let (status, text) = tokio::task::spawn_blocking(move || exchange(port, &request, &body))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{method} {path}: chromedriver: {e}"));
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"));
        assert!(status == 200, "{method} {path}: {status} {}", v["value"]);
        v["value"].clone()
    }

    async fn session(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body).await
    }

    pub async fn open(&self, url: &str) {
        self.session("POST", "/url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; its result.
    pub async fn eval(&self, script: &str, args: Value) -> Value {
        self.session(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// The first element `css` selects (waiting up to 10 s for it).
    pub async fn find(&self, css: &str) -> String {
        self.wait_for(&format!("return !!document.querySelector({css:?})"), css)
            .await;
        let v = self
            .session(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v[ELEMENT].as_str().unwrap().to_string()
    }

    pub async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.session("POST", &format!("/element/{e}/click"), json!({}))
            .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.session(
            "POST",
            &format!("/element/{e}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    pub async fn text(&self, css: &str) -> String {
        let e = self.find(css).await;
        self.session("GET", &format!("/element/{e}/text"), json!({}))
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits up to 30 s until `script` returns true; `what` names it in the failure.
    pub async fn wait_for(&self, script: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.eval(script, json!([])).await == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let page = self
                    .eval(
                        "return document.body ? document.body.innerText : ''",
                        json!([]),
                    )
                    .await;
                panic!(
                    "waited 30 s for {what}; the page shows:\n{}",
                    page.as_str().unwrap_or("")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the window, written to `path`.
    pub async fn screenshot(&self, path: &std::path::Path) {
        let v = self.session("GET", "/screenshot", json!({})).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.session(
            "POST",
            "/window/rect",
            json!({"width": width, "height": height}),
        )
        .await;
    }
}

/// One request on a new connection, its answer read to its `Content-Length` (chromedriver keeps
/// connections open, so reading to the end would wait for its idle timeout).
fn exchange(port: u16, head: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut length = 0;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut out = vec![0; length];
    r.read_exact(&mut out)?;
    Ok((status, String::from_utf8_lossy(&out).into_owned()))
}

impl Drop for Browser {
    /// Ends the session (chromedriver closes its Chromium), then stops chromedriver's whole
    /// process group, so that no browser outlives the test even when it failed.
    fn drop(&mut self) {
        use std::io::{Read as _, Write as _};
        if !self.session.is_empty()
            && let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port))
        {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                s,
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                self.session
            );
            let _ = s.read_to_end(&mut Vec::new());
        }
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
