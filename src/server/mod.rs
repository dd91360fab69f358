//! The daemon's HTTP server, on TCP (`listen.http`) and on the operator socket (`listen.socket`):
//!
//! - `POST /hooks/{github,gitlab,gitea,bitbucket,generic}`: webhooks (see [`webhook`]);
//! - `POST /api/v1/sync`, `GET /api/v1/status`: the operator API; over TCP only with the bearer
//!   token of `listen.token_file`, over the socket for whoever may open it (mode 0660);
//! - `GET /metrics`, `/healthz`, `/readyz`.
//!
//! Requests never wait for work: a webhook or sync is queued and answered at once (a sync with
//! `wait` streams its progress as newline-delimited JSON until it is done).

mod hooks;
pub mod webhook;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use crate::agent::status::SyncEvent;
use crate::agent::{self, Scope, Shared, Waiter, describe};
use crate::fleet::UnitId;
use hooks::hook;

/// The largest API request body.
const MAX_API_BODY: usize = 64 * 1024;

pub(super) type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Where a request came in: the socket is trusted by its file mode, TCP needs the token, the
/// metrics listener serves metrics and health only.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Tcp,
    Socket,
    Metrics,
}

/// The most connections one TCP listener serves at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 128;

/// Serves HTTP on `listener` until `stop` turns true (`metrics_only`: the `listen.metrics`
/// listener).
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    metrics_only: bool,
) {
    let via = if metrics_only { Via::Metrics } else { Via::Tcp };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // A connection slot before accepting: a flood of idle connections cannot exhaust the
        // agent, and each is cut off by the header and body timeouts.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            _ = agent::stopped(&mut stop) => return,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => connection(stream, shared.clone(), via, Some(slot)),
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = agent::stopped(&mut stop) => return,
        }
    }
}

/// Serves the operator API on the unix socket until `stop` turns true.
pub async fn serve_unix(
    listener: tokio::net::UnixListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => connection(stream, shared.clone(), Via::Socket, None),
                Err(error) => {
                    tracing::warn!(%error, "accept failed on the operator socket");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = agent::stopped(&mut stop) => return,
        }
    }
}

fn connection<S>(
    stream: S,
    shared: Arc<Shared>,
    via: Via,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let _slot = slot;
        let service = hyper::service::service_fn(move |req| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(handle(req, shared, via).await) }
        });
        // Slow clients are cut off: headers within 10 s (bodies: see `read_body`).
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(std::time::Duration::from_secs(10))
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await;
    });
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>, via: Via) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if via == Via::Metrics && !matches!(path.as_str(), "/metrics" | "/healthz" | "/readyz") {
        return error(
            StatusCode::NOT_FOUND,
            "this listener serves metrics and health only",
        );
    }
    match (method, path.as_str()) {
        (Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (Method::GET, "/readyz") => {
            if shared.ready.load(Ordering::SeqCst) {
                text(StatusCode::OK, "ready\n")
            } else if !shared.leader.load(Ordering::SeqCst) {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: waiting to be elected leader\n",
                )
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: the fleet has not been fetched and synced yet\n",
                )
            }
        }
        (Method::GET, "/metrics") => {
            // Metrics name every tenant, app and repository: over the main TCP listener only
            // with the API token (a scraper without one uses `listen.metrics`).
            if via == Via::Tcp
                && let Err(why) = authorize(&req, &shared, via).await
            {
                return error(StatusCode::UNAUTHORIZED, &why);
            }
            let body = shared
                .metrics
                .lock()
                .map(|m| m.render())
                .unwrap_or_default();
            let mut r = text(StatusCode::OK, &body);
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8".parse().unwrap(),
            );
            r
        }
        (Method::POST, p) if p.starts_with("/hooks/") => {
            let name = p.trim_start_matches("/hooks/").to_string();
            hook(&name, req, &shared).await
        }
        (_, "/hooks") => error(StatusCode::NOT_FOUND, "no such receiver"),
        (m, "/api/v1/sync" | "/api/v1/status") => {
            if let Err(why) = authorize(&req, &shared, via).await {
                return error(StatusCode::UNAUTHORIZED, &why);
            }
            match (m, path.as_str()) {
                (Method::POST, "/api/v1/sync") => sync(req, &shared).await,
                (Method::GET, "/api/v1/status") => {
                    let report = agent::report(&shared);
                    json(
                        StatusCode::OK,
                        &serde_json::to_value(report).unwrap_or_default(),
                    )
                }
                _ => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// The socket needs nothing (its mode guards it); TCP needs `Authorization: Bearer <token>`.
/// The token file is read on each request (a rotated token works at once), on the blocking pool.
async fn authorize(req: &Request<Incoming>, shared: &Shared, via: Via) -> Result<(), String> {
    if via == Via::Socket {
        return Ok(());
    }
    let Some(file) = shared.config().listen.token_file.clone() else {
        return Err("the HTTP API is off: listen.token_file is not set (use the socket)".into());
    };
    let token = tokio::fs::read(&file).await.map_err(|e| {
        tracing::error!(file = %file.display(), error = %e, "cannot read the API token file");
        "the API token cannot be read".to_string()
    })?;
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or("a bearer token is required")?;
    let token = token.trim_ascii();
    if token.is_empty() || !webhook::same_secret(given.trim().as_bytes(), token) {
        return Err("the bearer token is not valid".into());
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncBody {
    tenant: Option<String>,
    app: Option<String>,
    #[serde(default)]
    wait: bool,
}

async fn sync(req: Request<Incoming>, shared: &Shared) -> Response<Body> {
    let body = match read_body(req, MAX_API_BODY).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let ask: SyncBody = if body.is_empty() {
        SyncBody {
            tenant: None,
            app: None,
            wait: false,
        }
    } else {
        match serde_json::from_slice(&body) {
            Ok(a) => a,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad sync request: {e}")),
        }
    };
    if !shared.leader.load(Ordering::SeqCst) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this replica is not the leader",
        );
    }
    let plans = shared.plans.lock().map(|p| p.clone()).unwrap_or_default();
    let tenants = shared.tenants.lock().map(|t| t.clone()).unwrap_or_default();
    let (scope, fresh) = match (&ask.tenant, &ask.app) {
        (None, None) => (Scope::All, BTreeSet::new()),
        (None, Some(app)) => {
            let id = UnitId::infra();
            if *app != id.app || !plans.contains_key(&id) {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("no unit {app:?} without a tenant on this cluster (give --tenant)"),
                );
            }
            let fresh = plans[&id].sources.iter().cloned().collect();
            (Scope::Units([id].into()), fresh)
        }
        (Some(t), None) => {
            if !tenants.contains(t) {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("tenant {t:?} does not land on this cluster"),
                );
            }
            let fresh = plans
                .iter()
                .filter(|(id, _)| id.tenant.as_deref() == Some(t.as_str()))
                .flat_map(|(_, p)| p.sources.iter().cloned())
                .chain(shared.tenant_source(t))
                .collect();
            (Scope::Tenant(t.clone()), fresh)
        }
        (Some(t), Some(a)) => {
            let id = UnitId::app(t, a);
            let Some(plan) = plans.get(&id) else {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("tenant {t:?} has no app {a:?} on this cluster"),
                );
            };
            (
                Scope::Units([id].into()),
                plan.sources.iter().cloned().collect(),
            )
        }
    };
    let queued = SyncEvent::Queued {
        scope: describe(&scope),
    };
    if !ask.wait {
        shared.request(agent::Request {
            scope,
            fresh,
            reason: "sync".into(),
            waiter: None,
        });
        return ndjson(StatusCode::ACCEPTED, &[queued]);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(queued);
    shared.request(agent::Request {
        scope: scope.clone(),
        fresh,
        reason: "sync".into(),
        waiter: Some(Waiter::new(tx, scope)),
    });
    let mut response = Response::new(BodyExt::boxed(Lines { rx }));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        "application/x-ndjson".parse().unwrap(),
    );
    response
}

/// A streamed body: one JSON line per event, until the sender is dropped.
struct Lines {
    rx: mpsc::UnboundedReceiver<SyncEvent>,
}

impl hyper::body::Body for Lines {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(event)) => {
                let mut line = serde_json::to_vec(&event).unwrap_or_default();
                line.push(b'\n');
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(line)))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Reads a body of at most `max` bytes; a larger one is a 413.
pub(super) async fn read_body(req: Request<Incoming>, max: usize) -> Result<Bytes, Response<Body>> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is larger than {max} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let read = Limited::new(req.into_body(), max).collect();
    let Ok(read) = tokio::time::timeout(std::time::Duration::from_secs(10), read).await else {
        return Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "the body did not arrive within 10 s",
        ));
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("cannot read the body: {e}"),
        )),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().unwrap(),
    );
    r
}

pub(super) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    r
}

fn ndjson(status: StatusCode, events: &[SyncEvent]) -> Response<Body> {
    let mut body = Vec::new();
    for e in events {
        body.extend(serde_json::to_vec(e).unwrap_or_default());
        body.push(b'\n');
    }
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        "application/x-ndjson".parse().unwrap(),
    );
    r
}

pub(super) fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}
