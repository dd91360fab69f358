//! `flotilla run` as a child process: started in a platform folder, asked over HTTP, signalled,
//! and killed when dropped.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};

/// A running agent.
pub struct Daemon {
    child: Option<Child>,
    pub port: u16,
    /// The API token `/metrics` is read with, when the agent has one.
    pub token: Option<String>,
    log: PathBuf,
    pub code: Option<i32>,
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The status line and headers, as sent.
    pub head: String,
    pub body: String,
}

impl Answer {
    /// A header's value (the first, by case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

impl Daemon {
    /// Starts `flotilla run --config <config>` in `dir`, HTTP on `port`, logs to `<config>.log`.
    pub fn start(dir: &Path, config: &str, port: u16, env: &[(&str, String)]) -> Daemon {
        let log = dir.join(format!("{config}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla"));
        cmd.args([
            "run",
            "--config",
            config,
            "--log-level",
            "info,flotilla=debug",
        ])
        .current_dir(dir)
        .env_remove("FLOTILLA_CONFIG")
        .env_remove("STATE_DIRECTORY")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon {
            child: Some(cmd.spawn().expect("flotilla run starts")),
            port,
            token: None,
            log,
            code: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `needle`.
    pub async fn wait_log(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.logs().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log within {within:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.get("/readyz").await.is_some_and(|a| a.status == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not ready within {within:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn get(&self, path: &str) -> Option<Answer> {
        self.http("GET", path, &[], Vec::new()).await
    }

    /// One HTTP/1.1 request on a new connection; `None` if nothing listens.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Option<Answer> {
        http(self.port, method, path, headers, body).await
    }
    /// Sends a signal (`TERM`, `INT`, `STOP`, `CONT`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {name}");
    }

    /// Waits for the process to exit; its exit code (`None` if killed by a signal).
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.code = status.code();
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "still running after {within:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The agent's peak resident memory so far, in MiB (Linux `VmHWM`).
    pub fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status");
        kib / 1024.0
    }

    /// The metrics page (with the token, if the agent has one).
    pub async fn metrics(&self) -> String {
        let auth: Vec<(&str, String)> = self
            .token
            .iter()
            .map(|t| ("Authorization", format!("Bearer {t}")))
            .collect();
        self.http("GET", "/metrics", &auth, Vec::new())
            .await
            .map(|a| a.body)
            .unwrap_or_default()
    }

    /// Metric value of the exact series `name{labels}`, 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// The status document, read through the socket-free HTTP API with `token`.
    pub async fn status(&self, token: &str) -> serde_json::Value {
        let a = self
            .http(
                "GET",
                "/api/v1/status",
                &[("Authorization", format!("Bearer {token}"))],
                Vec::new(),
            )
            .await
            .expect("the agent answers");
        assert_eq!(a.status, 200, "{a:?}");
        serde_json::from_str(&a.body).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && child.try_wait().ok().flatten().is_none()
        {
            let _ = Command::new("kill")
                .args(["-s", "CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn dechunk(body: &str) -> String {
    // Enough for the agent's answers: chunked bodies are hex-length lines and data.
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((len, after)) = rest.split_once("\r\n") else {
            return if out.is_empty() {
                body.to_string()
            } else {
                out
            };
        };
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            return body.to_string();
        };
        if n == 0 || after.len() < n {
            return out;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
}

/// `hex(HMAC-SHA256(secret, body))`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A push of `branch` to the repository at `url`, as `provider` sends it: headers and body.
pub fn push(
    provider: &str,
    url: &str,
    branch: &str,
    secret: &str,
) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let r = format!("refs/heads/{branch}");
    let body = match provider {
        "github" | "gitea" => serde_json::json!({"ref": r, "repository": {"clone_url": url}}),
        "gitlab" => serde_json::json!({"ref": r, "project": {"git_http_url": url}}),
        "bitbucket" => serde_json::json!({
            "repository": {"links": {"html": {"href": url}}},
            "push": {"changes": [{"new": {"type": "branch", "name": branch}}]}
        }),
        _ => serde_json::json!({"url": url, "ref": r}),
    };
    let body = serde_json::to_vec(&body).unwrap();
    let sig = sign(secret, &body);
    let headers = match provider {
        "github" => vec![
            ("X-GitHub-Event", "push".to_string()),
            ("X-Hub-Signature-256", format!("sha256={sig}")),
        ],
        "gitea" => vec![
            ("X-Gitea-Event", "push".to_string()),
            ("X-Gitea-Signature", sig),
        ],
        "gitlab" => vec![
            ("X-Gitlab-Event", "Push Hook".to_string()),
            ("X-Gitlab-Token", secret.to_string()),
        ],
        "bitbucket" => vec![
            ("X-Event-Key", "repo:push".to_string()),
            ("X-Hub-Signature", format!("sha256={sig}")),
        ],
        _ => vec![("X-Signature", format!("sha256={sig}"))],
    };
    (headers, body)
}

/// One HTTP/1.1 request to 127.0.0.1:`port` on a new connection; `None` if nothing listens.
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Option<Answer> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
        s.write_all(head.as_bytes()).ok()?;
        // A refused body may be answered before it is all sent.
        let _ = s.write_all(&body);
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.get(9..12)?.parse().ok()?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        Some(Answer {
            status,
            head: head.to_string(),
            body: dechunk(body),
        })
    })
    .await
    .unwrap()
}
