//! Helpers the benchmarks share (each bench includes this file with `#[path]`): the agent as a
//! child process, its memory, HTTP to it, and the platform's files and Git repositories.

#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::discovery::ApiResource;

/// `flotilla run --once`: its wall time, peak RSS (KiB, read from /proc while it runs) and report.
pub fn flotilla_once(root: &Path) -> (Duration, u64, String) {
    let start = Instant::now();
    let mut child = flotilla()
        .args(["run", "--once", "--config", "flotilla.yaml"])
        .current_dir(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Both pipes drained while it runs: a report over the pipe's buffer would block it.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    use std::io::Read as _;
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if let Ok(text) = std::fs::read_to_string(&status_file)
            && let Some(line) = text.lines().find(|l| l.starts_with("VmHWM:"))
        {
            peak = peak.max(
                line.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    let report = stdout.join().unwrap();
    let err = stderr.join().unwrap();
    if !status.success() {
        panic!("flotilla run --once failed: {err}");
    }
    (elapsed, peak, report)
}

/// The agent's binary; with BENCH_WRAPPER (e.g. `heaptrack -o /tmp/agent` or `valgrind
/// --tool=massif`) run under a profiler.
fn flotilla() -> Command {
    let wrapper: Vec<String> = std::env::var("BENCH_WRAPPER")
        .map(|w| w.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let (program, mut args): (String, Vec<String>) = match wrapper.split_first() {
        Some((p, rest)) => (p.clone(), rest.to_vec()),
        None => (String::new(), Vec::new()),
    };
    if program.is_empty() {
        Command::new(env!("CARGO_BIN_EXE_flotilla"))
    } else {
        args.push(env!("CARGO_BIN_EXE_flotilla").into());
        let mut c = Command::new(program);
        c.args(&args);
        c
    }
}

pub fn start(root: &Path) -> Child {
    start_with(root, "flotilla.yaml")
}

/// The agent with the config file `config` in `root`.
pub fn start_with(root: &Path, config: &str) -> Child {
    let mut cmd = flotilla();
    cmd.args(["run", "--config", config])
        .current_dir(root)
        .env_remove("NOTIFY_SOCKET")
        .envs(
            std::env::var("BENCH_MALLOC_ARENA_MAX")
                .ok()
                .map(|v| ("MALLOC_ARENA_MAX", v)),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.join("agent.log")).unwrap())
        .spawn()
        .unwrap()
}

pub fn wait_ready(port: u16, agent: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while http(port, "GET", "/readyz", &[], b"").0 != 200 {
        assert!(agent.try_wait().unwrap().is_none(), "the agent exited");
        assert!(Instant::now() < deadline, "not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stop(agent: &mut Child) {
    let _ = Command::new("kill")
        .args(["-s", "TERM", &agent.id().to_string()])
        .status();
    let _ = agent.wait();
}

/// Current and peak resident memory of a process, MiB.
pub fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

pub fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn ar(api_version: &str, kind: &str, plural: &str) -> ApiResource {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

pub async fn client(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}
