//! Chart repositories for the tests: an HTTP Helm repository served from a folder, an OCI
//! registry (Debian's `docker-registry`, distribution 2.8) with basic auth, and Helm's engine
//! (`chart_tool.py` on `helm-python-sdk`) to package charts, index them and push them.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One request a [`FileServer`] received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub authorization: Option<String>,
    pub conditional: bool,
    pub status: u16,
}

/// Serves a folder over HTTP/1.1 on 127.0.0.1 (an ETag per file, 304 to a matching
/// `If-None-Match`), logging every request. Stops when dropped.
pub struct FileServer {
    pub port: u16,
    pub log: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FileServer {
    pub fn start(root: &Path) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (log, stop) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(AtomicBool::new(false)),
        );
        let (l, s, root) = (log.clone(), stop.clone(), root.to_path_buf());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let _ = answer(stream, &root, &l);
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        });
        FileServer {
            port,
            log,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(stream: TcpStream, root: &Path, log: &Mutex<Vec<Seen>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split(' ').nth(1).unwrap_or("/").to_string();
    let (mut authorization, mut if_none_match) = (None, None);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "authorization" => authorization = Some(value.trim().to_string()),
                "if-none-match" => if_none_match = Some(value.trim().to_string()),
                _ => {}
            }
        }
    }
    let file = root.join(path.trim_start_matches('/'));
    let (status, body, etag) = match std::fs::read(&file) {
        Ok(body) if !path.contains("..") => {
            let etag = format!("\"{:x}\"", body.len() as u64 ^ checksum(&body));
            if if_none_match.as_deref() == Some(etag.as_str()) {
                (304, Vec::new(), Some(etag))
            } else {
                (200, body, Some(etag))
            }
        }
        _ => (404, b"not found".to_vec(), None),
    };
    log.lock().unwrap().push(Seen {
        path,
        authorization,
        conditional: if_none_match.is_some(),
        status,
    });
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
        body.len(),
        etag.map(|e| format!("ETag: {e}\r\n")).unwrap_or_default()
    )?;
    out.write_all(&body)?;
    out.flush()
}

fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Runs `chart_tool.py` with Helm's engine; its stdout. `None` without the engine.
pub fn chart_tool(args: &[&str]) -> Option<String> {
    let python = super::helm_python()?;
    let out = std::process::Command::new(python)
        .arg(super::repo_root().join("tests/support/chart_tool.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chart_tool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Writes a chart folder `name` at `version` into `dir` with these templates.
pub fn write_chart(dir: &Path, name: &str, version: &str, templates: &[(&str, &str)]) -> PathBuf {
    let chart = dir.join(format!("src-{name}-{version}"));
    std::fs::create_dir_all(chart.join("templates")).unwrap();
    std::fs::write(
        chart.join("Chart.yaml"),
        format!("apiVersion: v2\nname: {name}\nversion: {version}\n"),
    )
    .unwrap();
    for (file, text) in templates {
        let path = chart.join("templates").join(file);
        std::fs::write(path, text).unwrap();
    }
    chart
}

/// Packages `chart` into `repo` and indexes `repo` for `base_url`; the archive's path.
pub fn publish(chart: &Path, repo: &Path, base_url: &str) -> Option<PathBuf> {
    std::fs::create_dir_all(repo).unwrap();
    let tgz = chart_tool(&["package", chart.to_str()?, repo.to_str()?])?;
    chart_tool(&["index", repo.to_str()?, base_url])?;
    Some(PathBuf::from(tgz))
}

/// An OCI registry on 127.0.0.1 with basic auth (`robot` / the password in `password`).
/// Stopped when dropped.
pub struct Registry {
    pub port: u16,
    pub password: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// `None` where `docker-registry` or `htpasswd` is missing and CI did not promise them.
    pub fn start() -> Option<Registry> {
        Registry::start_with(true)
    }

    /// A registry anyone may pull from and push to.
    pub fn open() -> Option<Registry> {
        Registry::start_with(false)
    }

    fn start_with(auth: bool) -> Option<Registry> {
        let have = |p: &str| {
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {p}")])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !have("docker-registry") || !have("htpasswd") {
            assert!(
                std::env::var("FLOTILLA_TEST_REGISTRY").is_err(),
                "FLOTILLA_TEST_REGISTRY is set but docker-registry or htpasswd is missing"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let password = "s3cret-registry".to_string();
        let htpasswd = std::process::Command::new("htpasswd")
            .args(["-Bbn", "robot", &password])
            .output()
            .unwrap();
        std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = format!(
            "version: 0.1\nlog: {{ level: info, formatter: json }}\nstorage: {{ filesystem: {{ rootdirectory: {root} }} }}\nhttp: {{ addr: 127.0.0.1:{port} }}\n",
            root = dir.path().display()
        );
        if auth {
            config.push_str(&format!(
                "auth: {{ htpasswd: {{ realm: test, path: {}/htpasswd }} }}\n",
                dir.path().display()
            ));
        }
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let registry = Registry {
            port,
            password: if auth { password } else { "-".into() },
            child,
            _dir: dir,
        };
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(registry);
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("docker-registry did not start on port {port}");
    }

    pub fn url(&self) -> String {
        format!("oci://127.0.0.1:{}/charts", self.port)
    }

    /// How many requests the registry has answered (its access log); the benchmark counts them.
    #[allow(dead_code)]
    pub fn requests(&self) -> usize {
        std::fs::read_to_string(self._dir.path().join("registry.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("response completed"))
            .count()
    }

    /// Pushes a packaged chart into `charts/`.
    pub fn push(&self, tgz: &Path) {
        let user = if self.password == "-" { "-" } else { "robot" };
        chart_tool(&[
            "push",
            tgz.to_str().unwrap(),
            &self.url(),
            user,
            &self.password,
        ])
        .expect("the engine is there when the registry is");
    }

    /// Stops the registry (a registry down).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
