//! What the agent's scheduler and its servers share, and the types that cross between them: the
//! state the servers read (readiness, leadership, status, metrics, webhook targets) and the
//! requests they send. `daemon` writes it, `server` reads it; neither imports the other.

pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};

use crate::config::{Config, GitRef, SourceSpec};
use crate::fleet::UnitId;
use crate::pipeline::location_key;
use status::{Metrics, Report, SyncEvent, UnitStatus};

/// What a round covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Tenant(String),
    Units(BTreeSet<UnitId>),
}

/// How a unit is scheduled, from its placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub interval: Duration,
    pub suspend: bool,
    /// The sources (location keys) the unit is rendered from, fetched fresh when it is due.
    pub sources: Vec<String>,
}

/// Whether a round of `scope` reconciles `unit`.
pub fn covers(scope: &Scope, unit: &UnitId) -> bool {
    match scope {
        Scope::All => true,
        Scope::Tenant(t) => unit.tenant.as_deref() == Some(t.as_str()),
        Scope::Units(units) => units.contains(unit),
    }
}

/// A repository a webhook can name, and the scope a push to it reconciles.
#[derive(Clone, Debug)]
pub struct Target {
    /// The normalized URL (see [`normalize_url`]).
    pub url: String,
    pub reference: GitRef,
    /// The location key to fetch fresh.
    pub key: String,
    pub scope: Scope,
}

impl Target {
    pub fn of(spec: &SourceSpec, scope: Scope) -> Target {
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
pub fn describe(scope: &Scope) -> String {
    match scope {
        Scope::All => "all units".into(),
        Scope::Tenant(t) => format!("tenant {t}"),
        Scope::Units(units) => units.iter().map(unit_name).collect::<Vec<_>>().join(", "),
    }
}

/// `ai/shop`, or `infra`.
pub fn unit_name(id: &UnitId) -> String {
    match &id.tenant {
        Some(t) => format!("{t}/{}", id.app),
        None => id.app.clone(),
    }
}

/// Something to reconcile, and who waits for it.
pub struct Request {
    pub scope: Scope,
    /// Location keys to fetch from their remotes first.
    pub fresh: BTreeSet<String>,
    pub reason: String,
    pub waiter: Option<Waiter>,
}

/// A caller of `sync --wait`: hears of each set synced for its scope, then `done`.
#[derive(Clone)]
pub struct Waiter {
    pub(crate) tx: mpsc::UnboundedSender<SyncEvent>,
    pub(crate) scope: Scope,
    pub(crate) ok: Arc<AtomicBool>,
}

impl Waiter {
    pub fn new(tx: mpsc::UnboundedSender<SyncEvent>, scope: Scope) -> Waiter {
        Waiter {
            tx,
            scope,
            ok: Arc::new(AtomicBool::new(true)),
        }
    }
}

/// What the servers and the scheduler share.
pub struct Shared {
    pub ready: AtomicBool,
    pub leader: AtomicBool,
    pub metrics: Arc<Mutex<Metrics>>,
    /// Which repositories feed which scopes (webhooks).
    pub targets: Mutex<Vec<Target>>,
    /// Every unit placed on this cluster, with its schedule.
    pub plans: Mutex<BTreeMap<UnitId, Plan>>,
    /// The tenants that land on this cluster.
    pub tenants: Mutex<BTreeSet<String>>,
    pub(crate) config: Mutex<Arc<Config>>,
    pub(crate) units: Mutex<BTreeMap<UnitId, UnitStatus>>,
    pub(crate) next_runs: Mutex<BTreeMap<UnitId, SystemTime>>,
    pub(crate) summary: Mutex<(Option<String>, Option<String>)>,
    requests: mpsc::UnboundedSender<Request>,
}

impl Shared {
    pub fn new(config: Arc<Config>, requests: mpsc::UnboundedSender<Request>) -> Shared {
        Shared {
            ready: AtomicBool::new(false),
            leader: AtomicBool::new(false),
            metrics: Default::default(),
            targets: Mutex::new(vec![Target::of(&config.fleet, Scope::All)]),
            plans: Default::default(),
            tenants: Default::default(),
            config: Mutex::new(config),
            units: Default::default(),
            next_runs: Default::default(),
            summary: Default::default(),
            requests,
        }
    }

    /// The running config.
    pub fn config(&self) -> Arc<Config> {
        self.config.lock().expect("config lock").clone()
    }

    /// Queues a request for the scheduler.
    pub fn request(&self, request: Request) {
        let _ = self.requests.send(request);
    }

    /// The location key of a tenant's repo (its webhook target).
    pub fn tenant_source(&self, tenant: &str) -> Option<String> {
        let targets = self.targets.lock().ok()?;
        targets
            .iter()
            .find(|t| t.scope == Scope::Tenant(tenant.to_string()))
            .map(|t| t.key.clone())
    }
}

/// The status document: every unit placed here, in unit order.
pub fn report(shared: &Shared) -> Report {
    let plans = shared.plans.lock().map(|p| p.clone()).unwrap_or_default();
    let units = shared.units.lock().map(|u| u.clone()).unwrap_or_default();
    let next = shared
        .next_runs
        .lock()
        .map(|n| n.clone())
        .unwrap_or_default();
    let (fleet_revision, error) = shared.summary.lock().map(|s| s.clone()).unwrap_or_default();
    Report {
        cluster: shared.config().cluster.clone(),
        ready: shared.ready.load(Ordering::SeqCst),
        leader: shared.leader.load(Ordering::SeqCst),
        fleet_revision,
        error,
        units: plans
            .iter()
            .map(|(id, plan)| {
                let mut s = units.get(id).cloned().unwrap_or_else(|| UnitStatus {
                    unit: unit_name(id),
                    result: "pending".into(),
                    ..Default::default()
                });
                if plan.suspend {
                    s.result = "suspended".into();
                    s.next_run = None;
                } else {
                    s.next_run = next.get(id).map(|t| status::timestamp(*t));
                }
                s
            })
            .collect(),
    }
}

/// Resolves once the stop flag is on.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A repository URL reduced to what names the repository: `host/path` without scheme, user,
/// port and `.git`, lower-cased; a local path (`file://` or absolute) stays a path. So that
/// `git@github.com:org/app.git`, `ssh://git@github.com/org/app` and
/// `https://github.com/org/app.git` are the same repository.
pub fn normalize_url(url: &str) -> String {
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
