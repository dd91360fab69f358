//! `flotilla sync` and `flotilla status`: the running agent's API, through its unix socket (the
//! config's `listen.socket`) or over HTTP (`--server URL --token-file F`).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};

use super::{Global, Output};
use crate::agent::status::{Report, SyncEvent};
use crate::config::{self, Config};
use crate::failure::{Failure, Kind};

/// How to reach the agent.
#[derive(Debug, clap::Args)]
pub struct Remote {
    /// The agent's HTTP address (`http://host:8080`) instead of its unix socket.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// The file holding the API's bearer token (with --server).
    #[arg(long, value_name = "FILE", requires = "server")]
    pub token_file: Option<PathBuf>,
}

enum Endpoint {
    Socket(PathBuf),
    Http {
        authority: String,
        token: Option<String>,
    },
}

impl Endpoint {
    fn of(global: &Global, remote: &Remote) -> anyhow::Result<Endpoint> {
        if let Some(url) = &remote.server {
            let Some(rest) = url.strip_prefix("http://") else {
                anyhow::bail!(
                    "--server {url:?}: give an http:// URL (TLS belongs to a proxy in front of the agent)"
                );
            };
            let authority = rest.trim_end_matches('/').to_string();
            let token = match &remote.token_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("--token-file {}", f.display()))?
                        .trim()
                        .to_string(),
                ),
                None => None,
            };
            return Ok(Endpoint::Http { authority, token });
        }
        // The socket the config names; a config this user cannot read gives the default.
        let socket = match Config::load(&global.config) {
            Ok(c) => c.listen.socket,
            Err(_) => Some(PathBuf::from(config::DEFAULT_SOCKET)),
        };
        match socket {
            Some(path) => Ok(Endpoint::Socket(path)),
            None => anyhow::bail!(
                "the config turns the operator socket off (listen.socket: null); use --server URL --token-file F"
            ),
        }
    }

    fn shown(&self) -> String {
        match self {
            Endpoint::Socket(p) => p.display().to_string(),
            Endpoint::Http { authority, .. } => format!("http://{authority}"),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let reach = |e: std::io::Error| {
            anyhow::anyhow!(
                "cannot reach the agent at {}: {e} (is `flotilla run` running?{})",
                self.shown(),
                if matches!(self, Endpoint::Socket(_)) {
                    " Or reach it over HTTP with --server URL --token-file F"
                } else {
                    ""
                }
            )
        };
        let mut sender = match self {
            Endpoint::Socket(path) => {
                let stream = tokio::net::UnixStream::connect(path).await.map_err(reach)?;
                handshake(stream).await?
            }
            Endpoint::Http { authority, .. } => {
                let stream = tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .map_err(reach)?;
                handshake(stream).await?
            }
        };
        let host = match self {
            Endpoint::Http { authority, .. } => authority.clone(),
            Endpoint::Socket(_) => "localhost".into(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, host);
        if let Endpoint::Http {
            token: Some(token), ..
        } = self
        {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let bytes = match body {
            Some(v) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(&v)?)
            }
            None => Bytes::new(),
        };
        let response = sender.send_request(req.body(Full::new(bytes))?).await?;
        Ok(response)
    }
}

async fn handshake<S>(
    stream: S,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(tracing::Instrument::in_current_span(async move {
        let _ = conn.await;
    }));
    Ok(sender)
}

/// The error an API answer carries (`{"error": ...}`), or its status.
async fn refusal(response: hyper::Response<hyper::body::Incoming>) -> anyhow::Error {
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
    anyhow::anyhow!("the agent refused: {status}: {message}")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Asks the agent to sync; with `wait`, prints each set as it is synced and exits 1 if any
/// failed.
pub(super) fn sync(
    global: &Global,
    remote: &Remote,
    tenant: Option<String>,
    app: Option<String>,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    let endpoint = Endpoint::of(global, remote)?;
    runtime()?.block_on(async {
        let body = serde_json::json!({ "tenant": tenant, "app": app, "wait": wait });
        let response = endpoint
            .send(Method::POST, "/api/v1/sync", Some(body))
            .await?;
        if !response.status().is_success() {
            return Err(refusal(response).await);
        }
        let mut body = response.into_body();
        let mut buffer = Vec::new();
        let mut out = std::io::stdout().lock();
        let mut result = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.context("the agent's answer broke off")?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buffer.extend_from_slice(&data);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let event: SyncEvent = serde_json::from_slice(&line).with_context(|| {
                    format!("unexpected answer: {}", String::from_utf8_lossy(&line))
                })?;
                if let Some(ok) = print_event(&mut out, &event)? {
                    result = Some(ok);
                }
            }
        }
        out.flush()?;
        Ok(match (wait, result) {
            (false, _) | (true, Some(true)) => ExitCode::SUCCESS,
            (true, Some(false)) => ExitCode::from(1),
            (true, None) => {
                eprintln!("error: the agent stopped before the sync finished");
                ExitCode::from(1)
            }
        })
    })
}

/// Prints one progress line; `Some(ok)` at the end.
fn print_event(out: &mut impl std::io::Write, event: &SyncEvent) -> anyhow::Result<Option<bool>> {
    match event {
        SyncEvent::Queued { scope } => writeln!(out, "sync queued: {scope}")?,
        SyncEvent::Set {
            name,
            revision,
            converged: _,
            applied,
            unchanged,
            pruned,
            failed,
            notes,
            error,
            kind,
        } => {
            // The kind only labels the state line (`None` from an agent that did not send it).
            let failure = |m: &String| Failure::new(kind.unwrap_or(Kind::Permanent), m.clone());
            // The same lines `run --once` prints for a set.
            let entry = crate::reconcile::Entry {
                name: name.clone(),
                unit: None,
                tenant: None,
                revision: revision.clone(),
                outcome: crate::reconcile::Outcome {
                    applied: applied.clone(),
                    unchanged: *unchanged,
                    pruned: pruned.clone(),
                    failed: failed.iter().map(failure).collect(),
                    notes: notes.clone(),
                    error: error.as_ref().map(failure),
                    ..Default::default()
                },
            };
            super::run::write_entry_of_kind(out, &entry, *kind)?;
        }
        SyncEvent::Error { message } => writeln!(out, "error: {message}")?,
        SyncEvent::Done { ok } => {
            writeln!(out, "sync {}", if *ok { "done" } else { "FAILED" })?;
            return Ok(Some(*ok));
        }
    }
    out.flush()?;
    Ok(None)
}

/// Prints each unit's status, as a table or as JSON.
pub(super) fn status(global: &Global, remote: &Remote, output: Output) -> anyhow::Result<ExitCode> {
    let endpoint = Endpoint::of(global, remote)?;
    let report: Report = runtime()?.block_on(async {
        let response = endpoint.send(Method::GET, "/api/v1/status", None).await?;
        if response.status() != StatusCode::OK {
            return Err(refusal(response).await);
        }
        let body = response.into_body().collect().await?.to_bytes();
        serde_json::from_slice(&body).context("unexpected status answer")
    })?;
    let mut out = std::io::stdout().lock();
    match output {
        Output::Json => {
            serde_json::to_writer_pretty(&mut out, &report)?;
            writeln!(out)?;
        }
        Output::Table => write_table(&mut out, &report)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn write_table(out: &mut impl std::io::Write, r: &Report) -> std::io::Result<()> {
    let fleet = r
        .fleet_revision
        .as_deref()
        .map(|f| format!(" @ {}", crate::pipeline::short(f)))
        .unwrap_or_default();
    let state = match (r.leader, r.ready, &r.sharding) {
        (false, _, Some(_)) => "holds no shard",
        (false, _, None) => "follower (not the leader)",
        (true, true, _) => "ready",
        (true, false, _) => "not ready",
    };
    writeln!(out, "cluster {}: fleet{fleet}: {state}", r.cluster)?;
    if let Some(s) = &r.sharding {
        let held: Vec<String> = s
            .holders
            .iter()
            .enumerate()
            .map(|(i, h)| format!("{i}={}", h.as_deref().unwrap_or("-")))
            .collect();
        writeln!(out, "answered by {}; shards: {}", s.replica, held.join(" "))?;
        for u in &s.unreachable {
            writeln!(out, "not read: replica {u}")?;
        }
    }
    if let Some(e) = &r.error {
        writeln!(out, "error: {e}")?;
    }
    let owners = r.sharding.is_some();
    let mut rows = vec![
        [
            "UNIT", "REVISION", "RESULT", "APPLIED", "PRUNED", "FAILED", "LAST RUN", "NEXT RUN",
            "OWNER", "ERROR",
        ]
        .map(String::from),
    ];
    for u in &r.units {
        rows.push([
            u.unit.clone(),
            u.revision
                .as_deref()
                .map(|r| crate::pipeline::short(r).to_string())
                .unwrap_or_else(|| "-".into()),
            u.result.clone(),
            u.applied.to_string(),
            u.pruned.to_string(),
            u.failed.to_string(),
            u.last_run.clone().unwrap_or_else(|| "-".into()),
            u.next_run.clone().unwrap_or_else(|| "-".into()),
            u.owner.clone().unwrap_or_else(|| "-".into()),
            u.last_error
                .as_deref()
                .map(|e| e.lines().next().unwrap_or_default().to_string())
                .unwrap_or_default(),
        ]);
    }
    let widths: Vec<usize> = (0..10)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            // The owner only with sharding.
            if i == 8 && !owners {
                continue;
            }
            if i == 9 {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}
