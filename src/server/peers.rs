//! With sharding, what one replica cannot answer alone: a sync of another replica's tenant is
//! forwarded to the holder of its shard (the answer streamed back as it comes); a sync of
//! everything goes to every holder and their answers are merged into one; a webhook is passed on
//! to the other replicas (each checks its signature again and takes its own units); the status
//! gathers every replica's units. A request one replica passed on carries [`FORWARDED`] and is
//! never passed on again.

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use std::collections::{BTreeMap, BTreeSet};

use super::{Api, NDJSON, Queued, Streamed, SyncBody, error, json_line, ndjson, queue};
use crate::agent::Ownership;
use crate::agent::status::{Report, SyncEvent, UnitStatus};
use crate::fleet::UnitId;
use crate::shard::{CLUSTER_SHARD, shard_of, shard_of_unit};

/// The header of a request one replica passed to another (its value: the sender).
pub(super) const FORWARDED: &str = "x-flotilla-forwarded";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long another replica may take to start its answer (a streamed sync goes on after).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest status document read from another replica.
const MAX_STATUS: usize = 64 * 1024 * 1024;

type Peer = Client<HttpConnector, Full<Bytes>>;

fn client() -> &'static Peer {
    static CLIENT: OnceLock<Peer> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        Client::builder(TokioExecutor::new()).build(http)
    })
}

/// Whether another replica passed this request on.
pub(super) fn forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED)
}

/// Sends a request to the replica at `base` (`http://host:port`).
async fn send(
    base: &str,
    method: Method,
    path: &str,
    headers: &[(header::HeaderName, HeaderValue)],
    body: Bytes,
    me: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let uri = format!("{base}{path}");
    let mut req = hyper::Request::builder().method(method).uri(&uri);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let req = req
        .header(FORWARDED, me)
        .body(Full::new(body))
        .map_err(|e| format!("{uri}: {e}"))?;
    match tokio::time::timeout(ANSWER_TIMEOUT, client().request(req)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(format!("{uri}: {e}")),
        Err(_) => Err(format!(
            "{uri}: no answer within {}s",
            ANSWER_TIMEOUT.as_secs()
        )),
    }
}

/// The bearer token another replica is asked with: the caller's (already checked), else the
/// agent's own token file (a request over the socket). `None`: the API over TCP is off.
async fn credentials(api: &Api, headers: &HeaderMap) -> Option<HeaderValue> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        return Some(v.clone());
    }
    let file = api.agent.snapshot().config.listen.token_file.clone()?;
    let token = tokio::fs::read_to_string(&file).await.ok()?;
    HeaderValue::from_str(&format!("Bearer {}", token.trim())).ok()
}

/// The shards a sync request covers: one (a tenant's, or shard 0 for infra), or all (`None`).
fn shard_of_ask(ask: &SyncBody, count: u32) -> Option<u32> {
    match (&ask.tenant, &ask.app) {
        (Some(t), _) => Some(shard_of(t, count)),
        (None, Some(_)) => Some(CLUSTER_SHARD),
        (None, None) => None,
    }
}

/// How long a request waits for a shard that has no holder (one is taking it over, or this
/// replica has not read the Lease of the one that just did).
const HANDOVER_WAIT: Duration = Duration::from_secs(10);

/// The ownership once each of `shards` has a holder, or as it stands after [`HANDOVER_WAIT`].
async fn settled(api: &Api, shards: &[u32]) -> Option<Ownership> {
    let mut rx = api.agent.subscribe();
    let deadline = tokio::time::Instant::now() + HANDOVER_WAIT;
    loop {
        let own = rx.borrow_and_update().ownership.clone()?;
        let unheld = shards
            .iter()
            .any(|s| own.holders.get(*s as usize).is_none_or(Option::is_none));
        if !unheld {
            return Some(own);
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            _ => return Some(own),
        }
    }
}

/// A sync with sharding: queued here for the shards held here, forwarded for the others.
pub(super) async fn sync(api: &Api, headers: &HeaderMap, body: Bytes, ask: SyncBody) -> Response {
    let passed_on = forwarded(headers);
    let Some(count) = api
        .agent
        .snapshot()
        .ownership
        .as_ref()
        .map(|o| o.held.count)
    else {
        return super::queue_sync(api, ask);
    };
    let target = shard_of_ask(&ask, count);
    let shards: Vec<u32> = match target {
        Some(s) => vec![s],
        None => (0..count).collect(),
    };
    let Some(own) = settled(api, &shards).await else {
        return super::queue_sync(api, ask);
    };
    let own = &own;
    let Some(shard) = target else {
        return sync_all(api, own, headers, body, ask, passed_on).await;
    };
    if own.held.held.contains(&shard) {
        return super::queue_sync(api, ask);
    }
    let retry = |why: String| {
        let mut r = error(StatusCode::SERVICE_UNAVAILABLE, &why);
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        r
    };
    if passed_on {
        return retry(format!(
            "shard {shard} moved away from this replica meanwhile; send the request again"
        ));
    }
    let Some((holder, address)) = own.elsewhere(shard) else {
        return retry(format!(
            "shard {shard} has no holder right now (a replica is taking it over); send the request again"
        ));
    };
    let misdirected = |why: &str| {
        super::json(
            StatusCode::MISDIRECTED_REQUEST,
            &serde_json::json!({"error": why, "replica": holder, "address": address}),
        )
    };
    let Some(address) = address else {
        return misdirected(&format!(
            "replica {holder} holds shard {shard}, and it has no address to forward to; ask it directly"
        ));
    };
    let Some(token) = credentials(api, headers).await else {
        return misdirected(&format!(
            "replica {holder} at {address} holds shard {shard}; ask it there (no API token to forward with)"
        ));
    };
    let sent = send(
        address,
        Method::POST,
        "/api/v1/sync",
        &[
            (header::AUTHORIZATION, token),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ],
        body,
        &own.me,
    )
    .await;
    match sent {
        Ok(answer) => {
            tracing::info!(replica = %holder, %address, shard, "sync forwarded to the holder of its shard");
            let (parts, incoming) = answer.into_parts();
            let mut response = axum::body::Body::new(incoming).into_response();
            *response.status_mut() = parts.status;
            if let Some(t) = parts.headers.get(header::CONTENT_TYPE) {
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, t.clone());
            }
            response
        }
        Err(why) => error(
            StatusCode::BAD_GATEWAY,
            &format!("replica {holder} holds shard {shard} and did not answer: {why}"),
        ),
    }
}

/// A sync of everything: queued here, and on every other holder; with `wait`, one answer from
/// all of them, done when all are, ok when all are.
async fn sync_all(
    api: &Api,
    own: &Ownership,
    headers: &HeaderMap,
    body: Bytes,
    ask: SyncBody,
    passed_on: bool,
) -> Response {
    let wait = ask.wait;
    let local = match queue(api, ask) {
        Ok(q) => q,
        Err(refused) => return *refused,
    };
    if passed_on {
        return super::answer(local);
    }
    let mut notes = Vec::new();
    let mut peers: Vec<(&str, &str)> = Vec::new();
    for shard in 0..own.held.count {
        if own.held.held.contains(&shard) {
            continue;
        }
        match own.elsewhere(shard) {
            Some((holder, Some(address))) => {
                if !peers.iter().any(|(h, _)| *h == holder) {
                    peers.push((holder, address));
                }
            }
            Some((holder, None)) => notes.push(format!(
                "shard {shard}: replica {holder} holds it and has no address; not synced"
            )),
            None => notes.push(format!(
                "shard {shard} has no holder right now; its tenants are synced once it has one"
            )),
        }
    }
    let token = credentials(api, headers).await;
    // Every source's events, into one channel: each other holder's, and (with `wait`) this
    // replica's.
    let (each, mut all) = mpsc::unbounded_channel();
    for (holder, address) in peers {
        let Some(token) = token.clone() else {
            notes.push(format!(
                "replica {holder} at {address}: not asked (no API token to forward with)"
            ));
            continue;
        };
        let tx = each.clone();
        let (holder, address, body, me) = (
            holder.to_string(),
            address.to_string(),
            body.clone(),
            own.me.clone(),
        );
        tokio::spawn(async move {
            let headers = [
                (header::AUTHORIZATION, token),
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
            ];
            match send(&address, Method::POST, "/api/v1/sync", &headers, body, &me).await {
                Ok(answer) if answer.status().is_success() => {
                    read_events(answer.into_body(), &holder, &tx).await
                }
                Ok(answer) => {
                    let status = answer.status();
                    let text = read_all(answer.into_body(), 64 * 1024)
                        .await
                        .unwrap_or_default();
                    let _ = tx.send(SyncEvent::Error {
                        message: format!(
                            "replica {holder}: {status}: {}",
                            String::from_utf8_lossy(&text).trim()
                        ),
                    });
                }
                Err(why) => {
                    let _ = tx.send(SyncEvent::Error {
                        message: format!("replica {holder} did not answer: {why}"),
                    });
                }
            }
        });
    }
    let errors: Vec<SyncEvent> = notes
        .into_iter()
        .map(|message| SyncEvent::Error { message })
        .collect();
    if !wait {
        drop(each);
        let mut events = match local {
            Queued::Now(e) => vec![e],
            Queued::Waiting(_) => Vec::new(),
        };
        while let Some(e) = all.recv().await {
            events.push(e);
        }
        events.extend(errors);
        return ndjson(StatusCode::ACCEPTED, &events);
    }
    if let Queued::Waiting(mut rx) = local {
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                if each.send(e).is_err() {
                    return;
                }
            }
        });
    }
    let (out, merged) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut ok = errors.is_empty();
        for e in errors {
            let _ = out.send(e);
        }
        while let Some(e) = all.recv().await {
            match e {
                SyncEvent::Done { ok: o } => ok &= o,
                SyncEvent::Set {
                    converged: false, ..
                }
                | SyncEvent::Error { .. } => {
                    ok = false;
                    if out.send(e).is_err() {
                        return;
                    }
                }
                e => {
                    if out.send(e).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = out.send(SyncEvent::Done { ok });
    });
    (
        [(header::CONTENT_TYPE, NDJSON)],
        axum::body::Body::new(Streamed {
            rx: merged,
            encode: json_line,
        }),
    )
        .into_response()
}

/// Every unit once, in unit order: this replica's and the others' (a unit two replicas list, as
/// one just gave its shard up, is the current holder's), and, as `unknown`, every unit placed on
/// the cluster that none reported.
fn merge(
    ours: Vec<UnitStatus>,
    theirs: Vec<UnitStatus>,
    own: &Ownership,
    everywhere: &BTreeSet<UnitId>,
) -> Vec<UnitStatus> {
    let ids: BTreeMap<String, &UnitId> = everywhere
        .iter()
        .map(|id| (crate::agent::unit_name(id), id))
        .collect();
    let shard = |name: &str| ids.get(name).map(|id| shard_of_unit(id, own.held.count));
    let holder = |shard: u32| own.holders.get(shard as usize).cloned().flatten();
    let mut units: BTreeMap<String, UnitStatus> =
        ours.into_iter().map(|u| (u.unit.clone(), u)).collect();
    for unit in theirs {
        let current = shard(&unit.unit).is_none_or(|s| holder(s) == unit.owner);
        if current || !units.contains_key(&unit.unit) {
            units.insert(unit.unit.clone(), unit);
        }
    }
    for (name, id) in ids {
        if units.contains_key(&name) {
            continue;
        }
        let shard = shard_of_unit(id, own.held.count);
        let owner = holder(shard);
        let why = match &owner {
            Some(o) => format!("replica {o}, which holds shard {shard}, did not report this unit"),
            None => format!("shard {shard} has no holder right now"),
        };
        let unknown = UnitStatus {
            unit: name.clone(),
            result: "unknown".into(),
            last_error: Some(why),
            owner,
            ..Default::default()
        };
        units.insert(name, unknown);
    }
    units.into_values().collect()
}

/// Reads another replica's newline-delimited events into `tx`; a stream that ends without
/// `done` (the replica went away) is an error.
async fn read_events(
    mut body: hyper::body::Incoming,
    holder: &str,
    tx: &mpsc::UnboundedSender<SyncEvent>,
) {
    let mut buffer = Vec::new();
    let mut finished = false;
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buffer.extend_from_slice(&data);
                }
                while let Some(at) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=at).collect();
                    match serde_json::from_slice::<SyncEvent>(&line) {
                        Ok(e) => {
                            finished |= matches!(e, SyncEvent::Done { .. });
                            let _ = tx.send(e);
                        }
                        Err(_) if line.trim_ascii().is_empty() => {}
                        Err(e) => {
                            let _ = tx.send(SyncEvent::Error {
                                message: format!(
                                    "replica {holder}: an answer line that is not an event: {e}"
                                ),
                            });
                        }
                    }
                }
                if buffer.len() > 1024 * 1024 {
                    break;
                }
            }
            Some(Err(e)) => {
                let _ = tx.send(SyncEvent::Error {
                    message: format!("replica {holder}: the answer broke off: {e}"),
                });
                return;
            }
            None => break,
        }
    }
    if !finished {
        let _ = tx.send(SyncEvent::Error {
            message: format!("replica {holder}: the answer ended before the sync was done"),
        });
    }
}

async fn read_all(body: hyper::body::Incoming, max: usize) -> Result<Bytes, String> {
    let limited = http_body_util::Limited::new(body, max);
    match tokio::time::timeout(ANSWER_TIMEOUT, limited.collect()).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no whole answer within {}s",
            ANSWER_TIMEOUT.as_secs()
        )),
    }
}

/// Passes a webhook on to every other live replica, in the background (the Git host is
/// answered at once); each checks it as this one did.
pub(super) fn pass_on_webhook(own: &Ownership, path: String, headers: &HeaderMap, body: Bytes) {
    let keep: Vec<(header::HeaderName, HeaderValue)> = headers
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "host" | "content-length" | "connection" | "transfer-encoding" | FORWARDED
            )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (replica, address) in &own.replicas {
        if *replica == own.me {
            continue;
        }
        let Some(address) = address.clone() else {
            tracing::warn!(%replica, "webhook not passed on: the replica has no address");
            continue;
        };
        let (replica, keep, body, path, me) = (
            replica.clone(),
            keep.clone(),
            body.clone(),
            path.clone(),
            own.me.clone(),
        );
        tokio::spawn(async move {
            match send(&address, Method::POST, &path, &keep, body, &me).await {
                Ok(answer) => {
                    tracing::info!(%replica, status = %answer.status(), "webhook passed on")
                }
                Err(why) => tracing::warn!(%replica, error = %why, "webhook not passed on"),
            }
        });
    }
}

/// The status of every replica: this one's units, and each other live replica's; a unit two
/// replicas list (one just gave its shard up) is the current holder's.
pub(super) async fn status(
    api: &Api,
    own: &Ownership,
    headers: &HeaderMap,
    mut report: Report,
    everywhere: &BTreeSet<UnitId>,
) -> Report {
    let token = credentials(api, headers).await;
    let mut asked = tokio::task::JoinSet::new();
    let mut unreachable = Vec::new();
    for (replica, address) in &own.replicas {
        if *replica == own.me {
            continue;
        }
        let (Some(address), Some(token)) = (address.clone(), token.clone()) else {
            unreachable.push(format!(
                "{replica}: {}",
                if address.is_none() {
                    "no address"
                } else {
                    "no API token to ask with"
                }
            ));
            continue;
        };
        let (replica, me) = (replica.clone(), own.me.clone());
        asked.spawn(async move {
            let answer = send(
                &address,
                Method::GET,
                "/api/v1/status",
                &[(header::AUTHORIZATION, token)],
                Bytes::new(),
                &me,
            )
            .await;
            let read = match answer {
                Ok(a) if a.status() == StatusCode::OK => read_all(a.into_body(), MAX_STATUS)
                    .await
                    .and_then(|b| serde_json::from_slice::<Report>(&b).map_err(|e| e.to_string())),
                Ok(a) => Err(format!("answered {}", a.status())),
                Err(e) => Err(e),
            };
            (replica, read)
        });
    }
    let mut theirs = Vec::new();
    while let Some(joined) = asked.join_next().await {
        let Ok((replica, read)) = joined else {
            continue;
        };
        match read {
            Ok(r) => theirs.extend(r.units),
            Err(why) => unreachable.push(format!("{replica}: {why}")),
        }
    }
    report.units = merge(std::mem::take(&mut report.units), theirs, own, everywhere);
    if let Some(s) = &mut report.sharding {
        s.unreachable = unreachable;
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::Held;

    fn unit(name: &str, owner: &str, result: &str) -> UnitStatus {
        UnitStatus {
            unit: name.into(),
            owner: Some(owner.into()),
            result: result.into(),
            ..Default::default()
        }
    }

    // Regression: a unit's shard was read back from its name, so an infra layer
    // (`infra/edge`) went to the shard of a tenant called `infra`.
    #[test]
    fn units_merge_by_their_current_holder_and_the_missing_are_unknown() {
        // A shard count where the tenant `infra` is not in shard 0, and a tenant elsewhere.
        let count = (3..20).find(|c| shard_of("infra", *c) != 0).unwrap();
        let infra_tenant_shard = shard_of("infra", count);
        let tenant = (0..1000)
            .map(|i| format!("t{i}"))
            .find(|t| ![0, infra_tenant_shard].contains(&shard_of(t, count)))
            .unwrap();
        let tenant_shard = shard_of(&tenant, count);
        let mut holders: Vec<Option<String>> = (0..count).map(|i| Some(format!("r{i}"))).collect();
        holders[0] = Some("a".into());
        let own = Ownership {
            me: "a".into(),
            held: Held {
                count,
                held: [0].into(),
            },
            holders,
            replicas: BTreeMap::new(),
            announced: true,
            generation: 0,
        };
        let stale = format!("r{infra_tenant_shard}");
        let current = format!("r{tenant_shard}");
        let everywhere: BTreeSet<UnitId> = [
            UnitId::infra_named("infra/edge"),
            UnitId::app(&tenant, "web"),
            UnitId::app(&tenant, "api"),
        ]
        .into();
        let ours = vec![
            unit("infra/edge", "a", "converged"),
            unit(&format!("{tenant}/web"), "a", "converged"),
        ];
        let theirs = vec![
            // A stale report of the layer from the holder of the `infra` tenant's shard.
            unit("infra/edge", &stale, "failed"),
            // The holder's own report wins over this replica's stale one.
            unit(&format!("{tenant}/web"), &current, "failed"),
        ];
        let merged = merge(ours, theirs, &own, &everywhere);
        let names: Vec<&str> = merged.iter().map(|u| u.unit.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        let get = |n: &str| merged.iter().find(|u| u.unit == n).unwrap();
        assert_eq!(get("infra/edge").result, "converged");
        assert_eq!(get(&format!("{tenant}/web")).result, "failed");
        let api = get(&format!("{tenant}/api"));
        assert_eq!(api.result, "unknown");
        assert_eq!(api.owner.as_deref(), Some(current.as_str()));
    }
}
