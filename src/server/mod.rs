//! The daemon's HTTP server, on TCP (`listen.http`) and on the operator socket (`listen.socket`):
//!
//! - `POST /hooks/{github,gitlab,gitea,bitbucket,generic}`: webhooks (see [`webhook`]);
//! - `POST /api/v1/sync`, `GET /api/v1/status`: the operator API; over TCP only with the bearer
//!   token of `listen.token_file`, over the socket for whoever may open it (mode 0660);
//! - `GET /metrics`, `/healthz`, `/readyz`;
//! - the status page (see [`page`]): `GET /`, `/unit`, with the token or the socket.
//!
//! Requests never wait for work: a webhook or sync is queued and answered at once (a sync with
//! `wait` streams its progress as newline-delimited JSON until it is done).

mod hooks;
mod page;
pub(super) mod peers;
pub(crate) mod webhook;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::serve::Listener;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Frame;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tower::Service as _;

use crate::agent::status::{METRICS_CONTENT_TYPE, SyncEvent};
use crate::agent::{self, Handle, Scope, Waiter, describe};
use crate::fleet::UnitId;

/// The largest API request body.
const MAX_API_BODY: usize = 64 * 1024;

/// Where a request came in: the socket is trusted by its file mode, TCP needs the token, the
/// metrics listener serves metrics and health only.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Tcp,
    Socket,
    Metrics,
}

/// What every handler gets: the agent's handle, and which listener the request came in on.
#[derive(Clone)]
struct Api {
    agent: Handle,
    via: Via,
}

/// The most connections one TCP listener serves at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 128;

/// How long a client may take to send a request's headers (and, in `read_body`, its body).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP on `listener` until `stop` turns true (`metrics_only`: the `listen.metrics`
/// listener).
pub(crate) async fn serve_tcp(
    listener: tokio::net::TcpListener,
    agent: Handle,
    stop: watch::Receiver<bool>,
    metrics_only: bool,
) {
    let via = if metrics_only { Via::Metrics } else { Via::Tcp };
    serve(
        listener,
        router(Api { agent, via }),
        stop,
        Some(MAX_CONNECTIONS),
    )
    .await
}

/// Serves the operator API on the unix socket until `stop` turns true.
pub(crate) async fn serve_unix(
    listener: tokio::net::UnixListener,
    agent: Handle,
    stop: watch::Receiver<bool>,
) {
    let api = Api {
        agent,
        via: Via::Socket,
    };
    serve(listener, router(api), stop, None).await
}

/// The routes of a listener. Each route takes every method and checks its own: a wrong method
/// on a public path is a 404 (as for an unknown path), and on the API only after the token was
/// checked (a 401 says nothing of which methods exist).
fn router(api: Api) -> Router {
    let health = Router::new()
        .route("/healthz", any(healthz))
        .route("/readyz", any(readyz))
        .route("/metrics", any(metrics));
    let routes = if api.via == Via::Metrics {
        health.fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "this listener serves metrics and health only",
            )
        })
    } else {
        health
            .route("/hooks/{*name}", any(hook))
            .route(
                "/hooks",
                any(|| async { error(StatusCode::NOT_FOUND, "no such receiver") }),
            )
            .route("/api/v1/sync", any(sync))
            .route("/api/v1/status", any(status))
            .merge(page::routes())
            .fallback(|| async { not_found() })
    };
    routes.with_state(api)
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not found")
}

async fn healthz(method: Method) -> Response {
    if method != Method::GET {
        return not_found();
    }
    text(StatusCode::OK, "ok\n")
}

/// Accepts connections until `stop` turns true, at most `limit` open at once, each served by
/// hyper with a deadline for its headers. Our own loop rather than `axum::serve`, which has
/// neither: a flood of idle connections must not exhaust the agent.
async fn serve<L: Listener>(
    mut listener: L,
    app: Router,
    mut stop: watch::Receiver<bool>,
    limit: Option<usize>,
) {
    let slots = limit.map(|n| Arc::new(tokio::sync::Semaphore::new(n)));
    loop {
        // A connection slot before accepting: more connections wait in the kernel's backlog.
        let slot = match &slots {
            Some(slots) => tokio::select! {
                slot = slots.clone().acquire_owned() => Some(slot.expect("never closed")),
                _ = agent::stopped(&mut stop) => return,
            },
            None => None,
        };
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = agent::stopped(&mut stop) => return,
        };
        let app = app.clone();
        let connection = async move {
            let _slot = slot;
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let mut app = app.clone();
                    async move { app.call(req.map(axum::body::Body::new)).await }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                .await;
        };
        tokio::spawn(tracing::Instrument::in_current_span(connection));
    }
}

async fn readyz(State(api): State<Api>, method: Method) -> Response {
    if method != Method::GET {
        return not_found();
    }
    let snapshot = api.agent.snapshot();
    // With sharding: ready once announced, while it waits for a shard, and once the shards it
    // holds were synced.
    if let Some(own) = &snapshot.ownership {
        return if !own.announced {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: this replica has not announced itself through its Lease yet\n",
            )
        } else if own.held.held.is_empty() {
            text(StatusCode::OK, "ready: waiting for a shard\n")
        } else if snapshot.status.ready {
            text(StatusCode::OK, "ready\n")
        } else {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the shards held have not been synced yet\n",
            )
        };
    }
    if snapshot.status.ready {
        text(StatusCode::OK, "ready\n")
    } else if !snapshot.leader {
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

/// Metrics name every tenant, app and repository: over the main TCP listener only with the API
/// token (a scraper without one uses `listen.metrics`).
async fn metrics(State(api): State<Api>, method: Method, headers: HeaderMap) -> Response {
    if method != Method::GET {
        return not_found();
    }
    if api.via == Via::Tcp
        && let Err(why) = authorize(&headers, &api).await
    {
        return error(StatusCode::UNAUTHORIZED, &why);
    }
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        api.agent.metrics.render(),
    )
        .into_response()
}

/// The receiver's name as sent (not percent-decoded).
async fn hook(State(api): State<Api>, req: Request) -> Response {
    if req.method() != Method::POST {
        return not_found();
    }
    let name = req.uri().path().trim_start_matches("/hooks/").to_string();
    hooks::hook(&name, req, &api.agent).await
}

async fn status(State(api): State<Api>, method: Method, headers: HeaderMap) -> Response {
    if let Err(why) = authorize(&headers, &api).await {
        return error(StatusCode::UNAUTHORIZED, &why);
    }
    if method != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let snapshot = api.agent.snapshot();
    let mut report = snapshot.report();
    if let Some(own) = &snapshot.ownership
        && !peers::forwarded(&headers)
    {
        report = peers::status(&api, own, &headers, report, &snapshot.status.everywhere).await;
    }
    json(
        StatusCode::OK,
        &serde_json::to_value(report).unwrap_or_default(),
    )
}

/// The socket needs nothing (its mode guards it); TCP needs `Authorization: Bearer <token>`.
/// The token file is read on each request (a rotated token works at once), on the blocking pool.
async fn authorize(headers: &HeaderMap, api: &Api) -> Result<(), String> {
    if api.via == Via::Socket {
        return Ok(());
    }
    let Some(file) = api.agent.snapshot().config.listen.token_file.clone() else {
        return Err("the HTTP API is off: listen.token_file is not set (use the socket)".into());
    };
    let token = tokio::fs::read(&file).await.map_err(|e| {
        tracing::error!(file = %file.display(), error = %e, "cannot read the API token file");
        "the API token cannot be read".to_string()
    })?;
    let given = headers
        .get(header::AUTHORIZATION)
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

async fn sync(State(api): State<Api>, req: Request) -> Response {
    if let Err(why) = authorize(req.headers(), &api).await {
        return error(StatusCode::UNAUTHORIZED, &why);
    }
    if req.method() != Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    // A browser's request from another site (through a forwarded socket, say) is not an
    // operator's.
    if page::cross_site(req.headers()) {
        return error(StatusCode::FORBIDDEN, "a cross-site request; refused");
    }
    let headers = req.headers().clone();
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
    // With sharding, another replica may hold the tenant's shard.
    if api.agent.snapshot().ownership.is_some() {
        return peers::sync(&api, &headers, body, ask).await;
    }
    queue_sync(&api, ask)
}

/// A queued sync: its `queued` event, or (`wait`) the stream of its events until it is done.
enum Queued {
    Now(SyncEvent),
    Waiting(mpsc::UnboundedReceiver<SyncEvent>),
}

/// Queues the sync `ask` names: answered at once, or (`wait`) streamed until it is done.
fn queue_sync(api: &Api, ask: SyncBody) -> Response {
    match queue(api, ask) {
        Ok(queued) => answer(queued),
        Err(refused) => *refused,
    }
}

fn answer(queued: Queued) -> Response {
    match queued {
        Queued::Now(event) => ndjson(StatusCode::ACCEPTED, &[event]),
        Queued::Waiting(rx) => (
            [(header::CONTENT_TYPE, NDJSON)],
            axum::body::Body::new(Streamed {
                rx,
                encode: json_line,
            }),
        )
            .into_response(),
    }
}

/// Queues the sync `ask` names, here.
fn queue(api: &Api, ask: SyncBody) -> Result<Queued, Box<Response>> {
    let snapshot = api.agent.snapshot();
    if !snapshot.takes_requests() {
        return Err(Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this replica is not the leader",
        )));
    }
    let (plans, tenants) = (&snapshot.status.plans, &snapshot.status.tenants);
    let (scope, fresh) = match (&ask.tenant, &ask.app) {
        (None, None) => (Scope::All, BTreeSet::new()),
        // An infra unit: `infra`, or a layer `infra/<name>`.
        (None, Some(app)) => {
            let id = UnitId::infra_named(app);
            if !plans.contains_key(&id) {
                return Err(Box::new(error(
                    StatusCode::NOT_FOUND,
                    &format!("no unit {app:?} without a tenant on this cluster (give --tenant)"),
                )));
            }
            let fresh = plans[&id].sources.iter().cloned().collect();
            (Scope::Units([id].into()), fresh)
        }
        (Some(t), None) => {
            if !tenants.contains(t) {
                return Err(Box::new(error(
                    StatusCode::NOT_FOUND,
                    &format!("tenant {t:?} does not land on this cluster"),
                )));
            }
            let fresh = plans
                .iter()
                .filter(|(id, _)| id.tenant.as_deref() == Some(t.as_str()))
                .flat_map(|(_, p)| p.sources.iter().cloned())
                .chain(snapshot.tenant_source(t))
                .collect();
            (Scope::Tenant(t.clone()), fresh)
        }
        (Some(t), Some(a)) => {
            let id = UnitId::app(t, a);
            let Some(plan) = plans.get(&id) else {
                return Err(Box::new(error(
                    StatusCode::NOT_FOUND,
                    &format!("tenant {t:?} has no app {a:?} on this cluster"),
                )));
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
        api.agent.request(agent::Request {
            scope,
            fresh,
            reason: "sync".into(),
            waiter: None,
        });
        return Ok(Queued::Now(queued));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(queued);
    api.agent.request(agent::Request {
        scope: scope.clone(),
        fresh,
        reason: "sync".into(),
        waiter: Some(Waiter::new(tx, scope)),
    });
    Ok(Queued::Waiting(rx))
}

const NDJSON: &str = "application/x-ndjson";

/// A streamed body: each item sent, encoded, until the sender is dropped.
struct Streamed<T> {
    rx: mpsc::UnboundedReceiver<T>,
    encode: fn(T) -> Bytes,
}

impl<T> http_body::Body for Streamed<T> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let encode = self.encode;
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(|i| Ok(Frame::data(encode(i)))))
    }
}

/// A sync event as a line of newline-delimited JSON.
fn json_line(event: SyncEvent) -> Bytes {
    let mut line = serde_json::to_vec(&event).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// Reads a body of at most `max` bytes within 10 s; a larger one is a 413.
pub(super) async fn read_body(req: Request, max: usize) -> Result<Bytes, Response> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is larger than {max} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let read = Limited::new(req.into_body(), max).collect();
    let Ok(read) = tokio::time::timeout(HEADER_TIMEOUT, read).await else {
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

fn text(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

pub(super) fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn ndjson(status: StatusCode, events: &[SyncEvent]) -> Response {
    let mut body = Vec::new();
    for e in events {
        body.extend(serde_json::to_vec(e).unwrap_or_default());
        body.push(b'\n');
    }
    (status, [(header::CONTENT_TYPE, NDJSON)], body).into_response()
}

pub(super) fn error(status: StatusCode, message: &str) -> Response {
    json(status, &serde_json::json!({ "error": message }))
}
