//! What the agent's scheduler and its servers share, and the types that cross between them: the
//! snapshot the servers read (readiness, leadership, status, webhook targets), published through
//! a `watch` channel; the requests they send; the metrics. `daemon` publishes, `server` reads;
//! neither imports the other.

pub(crate) mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};

use crate::config::{Config, GitRef, SourceSpec};
use crate::fleet::UnitId;
use crate::pipeline::location_key;
use status::{Inspection, Metrics, Report, SyncEvent, SyncRecord, UnitStatus};

/// What a round covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    All,
    Tenant(String),
    Units(BTreeSet<UnitId>),
}

/// How a unit is scheduled, from its placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub interval: Duration,
    pub suspend: bool,
    /// The sources (location keys) the unit is rendered from, fetched fresh when it is due.
    pub sources: Vec<String>,
    /// Where the unit comes from, as the status shows it (`tenant repo: apps/shop`, `chart
    /// podinfo 6.x from https://…`).
    pub source: String,
}

/// Whether a round of `scope` reconciles `unit`.
pub(crate) fn covers(scope: &Scope, unit: &UnitId) -> bool {
    match scope {
        Scope::All => true,
        Scope::Tenant(t) => unit.tenant.as_deref() == Some(t.as_str()),
        Scope::Units(units) => units.contains(unit),
    }
}

/// A repository a webhook can name, and the scope a push to it reconciles.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// The normalized URL (see [`normalize_url`]).
    pub url: String,
    pub reference: GitRef,
    /// The location key to fetch fresh.
    pub key: String,
    pub scope: Scope,
}

impl Target {
    pub(crate) fn of(spec: &SourceSpec, scope: Scope) -> Target {
        let raw = match &spec.location {
            crate::config::SourceLocation::Url(u) => u.clone(),
            crate::config::SourceLocation::Dir(d) => d.display().to_string(),
        };
        Target {
            url: normalize_url(&raw),
            reference: spec.reference.clone(),
            key: location_key(spec),
            scope,
        }
    }
}

/// `all`, `tenant ai`, or `ai/shop, infra`.
pub(crate) fn describe(scope: &Scope) -> String {
    match scope {
        Scope::All => "all units".into(),
        Scope::Tenant(t) => format!("tenant {t}"),
        Scope::Units(units) => units.iter().map(unit_name).collect::<Vec<_>>().join(", "),
    }
}

/// `ai/shop`, or `infra`.
pub(crate) fn unit_name(id: &UnitId) -> String {
    match &id.tenant {
        Some(t) => format!("{t}/{}", id.app),
        None => id.app.clone(),
    }
}

/// Something to reconcile, and who waits for it.
pub(crate) struct Request {
    pub scope: Scope,
    /// Location keys to fetch from their remotes first.
    pub fresh: BTreeSet<String>,
    pub reason: String,
    pub waiter: Option<Waiter>,
}

/// A caller of `sync --wait`: hears of each set synced for its scope, then `done`.
#[derive(Clone)]
pub(crate) struct Waiter {
    pub(crate) tx: mpsc::UnboundedSender<SyncEvent>,
    pub(crate) scope: Scope,
    pub(crate) ok: Arc<AtomicBool>,
}

impl Waiter {
    pub(crate) fn new(tx: mpsc::UnboundedSender<SyncEvent>, scope: Scope) -> Waiter {
        Waiter {
            tx,
            scope,
            ok: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Tells the caller of one event; a failure makes its final answer a failure.
    pub(crate) fn tell(&self, event: SyncEvent) {
        let failed = match &event {
            SyncEvent::Set { converged, .. } => !converged,
            SyncEvent::Error { .. } => true,
            _ => false,
        };
        if failed {
            self.ok.store(false, Ordering::SeqCst);
        }
        let _ = self.tx.send(event);
    }

    /// Everything asked for has run: the final answer.
    pub(crate) fn done(&self) {
        let _ = self.tx.send(SyncEvent::Done {
            ok: self.ok.load(Ordering::SeqCst),
        });
    }
}

/// What the finished rounds left, as the servers show it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Status {
    /// Once the first full round has synced the fleet.
    pub ready: bool,
    /// Every unit placed on this cluster, with its schedule.
    pub plans: BTreeMap<UnitId, Plan>,
    /// The tenants that land on this cluster.
    pub tenants: BTreeSet<String>,
    /// Which repositories feed which scopes (webhooks).
    pub targets: Vec<Target>,
    /// Each unit's last run.
    pub units: BTreeMap<UnitId, UnitStatus>,
    /// Each unit's recent syncs, newest first (at most [`status::HISTORY`]); one `Arc` per unit,
    /// so that publishing the status copies no history.
    pub history: BTreeMap<UnitId, Arc<std::collections::VecDeque<SyncRecord>>>,
    /// Each tenant's onboarding (namespaces, ServiceAccount, RoleBindings): its last run.
    pub onboarding: BTreeMap<String, UnitStatus>,
    /// With sharding: every unit placed on the cluster, as of the last full round, whichever
    /// replica owns it.
    pub everywhere: BTreeSet<UnitId>,
    /// The fleet revision of the last full round, and its error if it failed as a whole.
    pub fleet_revision: Option<String>,
    pub error: Option<String>,
}

/// The agent's state as the servers read it, published whole by the scheduler through a
/// `watch` channel: a reader takes the latest snapshot and holds no lock.
#[derive(Clone, Debug)]
pub(crate) struct Snapshot {
    /// The running config.
    pub config: Arc<Config>,
    /// Whether this replica holds the Lease (always, without leader election).
    pub leader: bool,
    pub status: Status,
    /// When each unit runs next.
    pub next_runs: BTreeMap<UnitId, SystemTime>,
    /// With `sharding`: who holds which shard.
    pub ownership: Option<Ownership>,
}

/// With `sharding`: the shards this replica holds, who holds the others, and where the live
/// replicas are; published by the shard manager (`daemon::shards`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ownership {
    /// This replica's identity (the Leases' holder).
    pub me: String,
    pub held: crate::shard::Held,
    /// Each shard's holder as last read (`None`: free, or not read yet).
    pub holders: Vec<Option<String>>,
    /// The live replicas (this one too): identity → the URL it is reached at.
    pub replicas: BTreeMap<String, Option<String>>,
    /// This replica's Lease was written: the others count it.
    pub announced: bool,
    /// Bumped whenever `held` loses a shard: the scheduler acknowledges it once that shard's
    /// work has stopped, and only then is a shard given up.
    pub generation: u64,
}

impl Ownership {
    /// The holder of `shard` and its URL, when another replica holds it.
    pub(crate) fn elsewhere(&self, shard: u32) -> Option<(&str, Option<&str>)> {
        let holder = self.holders.get(shard as usize)?.as_deref()?;
        (holder != self.me).then(|| (holder, self.replicas.get(holder).and_then(|a| a.as_deref())))
    }
}

/// The servers' handle on the agent: the latest snapshot, the request channel and the metrics.
/// The servers never see the scheduler's own state.
#[derive(Clone)]
pub(crate) struct Handle {
    state: watch::Receiver<Arc<Snapshot>>,
    requests: mpsc::UnboundedSender<Request>,
    inspections: mpsc::UnboundedSender<Inspect>,
    /// At most two inspections run at once, whoever asks.
    inspecting: Arc<tokio::sync::Semaphore>,
    pub metrics: Arc<Metrics>,
}

/// A request to compare one unit with the cluster now (its render from the last good
/// checkouts, dry-run applied): what a sync would change, object by object.
pub(crate) struct Inspect {
    pub unit: UnitId,
    pub reply: tokio::sync::oneshot::Sender<Result<Inspection, String>>,
    /// One of the inspections allowed at once, held until this one ends.
    pub permit: tokio::sync::OwnedSemaphorePermit,
}

/// How long an inspection may take before the page is told it did not finish.
pub(crate) const INSPECT_TIMEOUT: Duration = Duration::from_secs(60);

/// The scheduler's side of the snapshot.
pub(crate) struct Publisher {
    state: watch::Sender<Arc<Snapshot>>,
}

impl Handle {
    /// A handle, and the publisher of its snapshots, for an agent running `config`.
    pub(crate) fn new(
        config: Arc<Config>,
        (requests, inspections): (
            mpsc::UnboundedSender<Request>,
            mpsc::UnboundedSender<Inspect>,
        ),
        metrics: Arc<Metrics>,
    ) -> (Handle, Publisher) {
        let status = Status {
            targets: vec![Target::of(&config.fleet, Scope::All)],
            ..Default::default()
        };
        let (tx, rx) = watch::channel(Arc::new(Snapshot {
            config,
            leader: false,
            status,
            next_runs: BTreeMap::new(),
            ownership: None,
        }));
        (
            Handle {
                state: rx,
                requests,
                inspections,
                inspecting: Arc::new(tokio::sync::Semaphore::new(2)),
                metrics,
            },
            Publisher { state: tx },
        )
    }

    /// The latest snapshot.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.state.borrow().clone()
    }

    /// Queues a request for the scheduler.
    pub(crate) fn request(&self, request: Request) {
        let _ = self.requests.send(request);
    }

    /// A receiver that wakes when the snapshot changes (the status page's live updates).
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.state.clone()
    }

    /// Compares `unit` with the cluster now (see [`Inspect`]); at most two at once (a caller
    /// that goes away ends its inspection), each within [`INSPECT_TIMEOUT`].
    pub(crate) async fn inspect(&self, unit: UnitId) -> Result<Inspection, String> {
        let permit = self
            .inspecting
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "the agent is stopping".to_string())?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.inspections
            .send(Inspect {
                unit,
                reply,
                permit,
            })
            .map_err(|_| "the agent is stopping".to_string())?;
        answer
            .await
            .unwrap_or_else(|_| Err("the comparison stopped before it finished".into()))
    }
}

impl Publisher {
    /// Changes the snapshot in place (copying it only if a reader still holds the last one).
    pub(crate) fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        self.state.send_modify(|s| change(Arc::make_mut(s)));
    }

    /// Sets when each unit runs next, unless every time is within a second of the one
    /// published (the status page is told of changes, not of the clock going on).
    pub(crate) fn set_next_runs(&self, next: BTreeMap<UnitId, SystemTime>) {
        let close = |a: &SystemTime, b: &SystemTime| {
            a.duration_since(*b)
                .or_else(|_| b.duration_since(*a))
                .is_ok_and(|d| d < Duration::from_secs(1))
        };
        self.state.send_if_modified(|s| {
            let same = s.next_runs.len() == next.len()
                && s.next_runs
                    .iter()
                    .zip(&next)
                    .all(|((i, a), (j, b))| i == j && close(a, b));
            if !same {
                Arc::make_mut(s).next_runs = next;
            }
            !same
        });
    }

    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.state.borrow().clone()
    }
}

impl Snapshot {
    /// Whether this replica queues webhooks and syncs: the leader, or with sharding any replica
    /// (the servers route what is another's to it).
    pub(crate) fn takes_requests(&self) -> bool {
        self.leader || self.ownership.is_some()
    }

    /// The location key of a tenant's repo (its webhook target).
    pub(crate) fn tenant_source(&self, tenant: &str) -> Option<String> {
        self.status
            .targets
            .iter()
            .find(|t| t.scope == Scope::Tenant(tenant.to_string()))
            .map(|t| t.key.clone())
    }

    /// The status document: every unit placed here (with sharding, every unit of the shards
    /// this replica holds, each with this replica as its owner), in unit order.
    pub(crate) fn report(&self) -> Report {
        let status = &self.status;
        let me = self.ownership.as_ref().map(|o| o.me.clone());
        Report {
            sharding: self.ownership.as_ref().map(|o| status::ShardReport {
                replica: o.me.clone(),
                holders: o.holders.clone(),
                unreachable: Vec::new(),
            }),
            cluster: self.config.cluster.clone(),
            ready: status.ready,
            leader: self.leader,
            fleet_revision: status.fleet_revision.clone(),
            error: status.error.clone(),
            units: status
                .plans
                .iter()
                .map(|(id, plan)| {
                    let mut s = status.units.get(id).cloned().unwrap_or_else(|| UnitStatus {
                        unit: unit_name(id),
                        result: "pending".into(),
                        ..Default::default()
                    });
                    s.source = Some(plan.source.clone());
                    s.owner = me.clone();
                    if plan.suspend {
                        s.result = "suspended".into();
                        s.next_run = None;
                    } else {
                        s.next_run = self.next_runs.get(id).map(|t| status::timestamp(*t));
                    }
                    s
                })
                .collect(),
        }
    }
}

/// Resolves once the stop flag is on.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A repository URL reduced to what names the repository: `host/path` without scheme, user,
/// port and `.git`, lower-cased; a local path (`file://` or absolute) stays a path. So that
/// `git@github.com:org/app.git`, `ssh://git@github.com/org/app` and
/// `https://github.com/org/app.git` are the same repository.
pub(crate) fn normalize_url(url: &str) -> String {
    let url = url.trim();
    let trimmed = |s: &str| -> String {
        let s = s.trim_end_matches('/');
        s.strip_suffix(".git").unwrap_or(s).to_string()
    };
    if let Some(path) = url.strip_prefix("file://") {
        return trimmed(path);
    }
    if url.starts_with('/') {
        return trimmed(url);
    }
    let rest = match url.split_once("://") {
        Some((_, rest)) => rest.to_string(),
        // scp-like `user@host:path`
        None => match url.split_once(':') {
            Some((host, path)) => format!("{host}/{}", path.trim_start_matches('/')),
            None => url.to_string(),
        },
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    trimmed(&format!("{host}{path}")).to_lowercase()
}
