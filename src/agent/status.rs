//! What the daemon tells: each unit's status (the API's `/api/v1/status`, `flotilla status`)
//! and the Prometheus metrics (`/metrics`), both kept in memory and replaced as rounds finish.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::failure::Kind;

/// One unit as `flotilla status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct UnitStatus {
    /// `ai/jupyter`, or `infra`.
    pub unit: String,
    pub revision: Option<String>,
    /// Who signed the revision, where its source asks for signatures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// Where the unit comes from (see [`crate::agent::Plan::source`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `pending` (not run yet), `converged`, `failed`, `held-back` (not applied: an app it
    /// depends on did not converge) or `suspended`; with sharding also `unknown` (the replica
    /// owning it did not answer, or its shard has no holder).
    pub result: String,
    pub last_error: Option<String>,
    /// Objects applied, pruned and failed in the last run.
    pub applied: usize,
    pub pruned: usize,
    pub failed: usize,
    /// RFC 3339, UTC.
    pub last_run: Option<String>,
    pub next_run: Option<String>,
    pub duration_seconds: Option<f64>,
    /// With sharding: the replica that reconciles the unit (`None`: its shard has no holder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// The whole status document.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Report {
    pub cluster: String,
    pub ready: bool,
    /// Whether this replica holds the Lease (always, without leader election).
    pub leader: bool,
    pub fleet_revision: Option<String>,
    /// The last full round's error, when it failed as a whole.
    pub error: Option<String>,
    pub units: Vec<UnitStatus>,
    /// With sharding: who holds what, and which replicas did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharding: Option<ShardReport>,
}

/// The shards as the answering replica sees them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ShardReport {
    /// The replica that answered.
    pub replica: String,
    /// Each shard's holder (`None`: none right now).
    pub holders: Vec<Option<String>>,
    /// Live replicas whose status could not be read: their units are missing or unknown.
    #[serde(default)]
    pub unreachable: Vec<String>,
}

/// How many syncs of each unit the status keeps.
pub(crate) const HISTORY: usize = 10;

/// How many changed objects a sync's record names (the rest are counted).
const CHANGES_NAMED: usize = 20;

/// One sync of a unit, as the status page lists it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct SyncRecord {
    /// RFC 3339, UTC: when it (the last of `runs`) finished.
    pub time: String,
    pub revision: Option<String>,
    pub result: String,
    /// What it changed: `applied ConfigMap ai/x (created)`, `pruned …`, at most 20.
    pub changes: Vec<String>,
    /// Changes beyond those named.
    pub more: usize,
    pub failed: usize,
    /// Its error and failures, in full.
    pub error: Option<String>,
    pub duration_seconds: f64,
    /// Consecutive syncs that changed nothing at one revision with one result are one record.
    pub runs: u32,
}

impl SyncRecord {
    pub(crate) fn new(status: &UnitStatus, applied: &[String], pruned: &[String]) -> SyncRecord {
        let all = applied
            .iter()
            .map(|a| format!("applied {a}"))
            .chain(pruned.iter().map(|p| format!("pruned {p}")));
        let total = applied.len() + pruned.len();
        SyncRecord {
            time: status.last_run.clone().unwrap_or_default(),
            revision: status.revision.clone(),
            result: status.result.clone(),
            changes: all.take(CHANGES_NAMED).collect(),
            more: total.saturating_sub(CHANGES_NAMED),
            failed: status.failed,
            error: status.last_error.clone(),
            duration_seconds: status.duration_seconds.unwrap_or_default(),
            runs: 1,
        }
    }

    /// Adds `record` to the front of `history`, folded into the newest one when neither changed
    /// anything and they agree on revision, result and error; at most [`HISTORY`] kept.
    pub(crate) fn push(history: &mut std::collections::VecDeque<SyncRecord>, record: SyncRecord) {
        if let Some(last) = history.front_mut()
            && record.changes.is_empty()
            && last.changes.is_empty()
            && (&last.revision, &last.result, &last.error, last.failed)
                == (
                    &record.revision,
                    &record.result,
                    &record.error,
                    record.failed,
                )
        {
            last.runs += 1;
            last.time = record.time;
            last.duration_seconds = record.duration_seconds;
            return;
        }
        history.push_front(record);
        history.truncate(HISTORY);
    }
}

/// A unit compared with the cluster now: each object's state and health, and the diff a sync
/// would apply (Secret values masked).
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Inspection {
    pub revision: Option<String>,
    pub objects: Vec<crate::reconcile::ObjectRow>,
    pub diff: String,
    /// Objects that would change or be pruned.
    pub changes: usize,
    pub notes: Vec<String>,
    /// Why the unit, or some of its objects, could not be compared.
    pub errors: Vec<String>,
}

/// A line of `POST /api/v1/sync`'s answer (newline-delimited JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub(crate) enum SyncEvent {
    /// The request is queued: what it covers.
    Queued { scope: String },
    /// A set was synced (a unit, an onboarding, a removal).
    Set {
        name: String,
        revision: Option<String>,
        converged: bool,
        applied: Vec<String>,
        #[serde(default)]
        unchanged: usize,
        pruned: Vec<String>,
        failed: Vec<String>,
        notes: Vec<String>,
        error: Option<String>,
        /// When not converged: `transient` (retried soon, with backoff) or `permanent` (retried
        /// at the unit's interval or on a change).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<crate::failure::Kind>,
    },
    /// A round failed as a whole (no fetch, no API server).
    Error { message: String },
    /// Everything asked for has run.
    Done { ok: bool },
}

/// RFC 3339 in UTC, to the second.
pub(crate) fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

const DURATION_BUCKETS: [f64; 11] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// A label value (`prometheus-client` escapes it as the text format requires).
type Value = String;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Unit {
    unit: Value,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnitResult {
    unit: Value,
    result: Value,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnitKind {
    unit: Value,
    kind: Value,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Repo {
    repo: Value,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Webhook {
    provider: Value,
    result: Value,
}

type Durations = Family<Unit, Histogram, fn() -> Histogram>;
type RepoDurations = Family<Repo, Histogram, fn() -> Histogram>;

fn durations() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The daemon's metrics: a `prometheus-client` registry, shared by the scheduler (which counts)
/// and the servers (which render it); every family is safe to update from any task.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    reconcile: Family<UnitResult, Counter>,
    errors: Family<UnitKind, Counter>,
    reconcile_duration: Durations,
    objects: [Family<Unit, Counter>; 3],
    last_success: Family<Unit, Gauge<f64, AtomicU64>>,
    fetch_duration: RepoDurations,
    fetch_failures: Family<Repo, Counter>,
    unverified: Family<Repo, Counter>,
    webhooks: Family<Webhook, Counter>,
    ready: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::default();
        let ready = Gauge::default();
        registry.register(
            "flotilla_ready",
            "1 once the fleet was fetched and synced",
            ready.clone(),
        );
        let reconcile = Family::default();
        registry.register(
            "flotilla_reconcile",
            "Unit runs by result",
            reconcile.clone(),
        );
        let errors = Family::default();
        registry.register(
            "flotilla_reconcile_errors",
            "Unit runs that failed, by kind: transient (retried with backoff) or permanent (retried at the interval or on a change)",
            errors.clone(),
        );
        let reconcile_duration: Durations = Family::new_with_constructor(durations);
        registry.register(
            "flotilla_reconcile_duration_seconds",
            "How long a unit's run took",
            reconcile_duration.clone(),
        );
        let objects: [Family<Unit, Counter>; 3] = Default::default();
        for (action, help, family) in [
            (
                "applied",
                "Objects applied (created or changed)",
                &objects[0],
            ),
            ("pruned", "Objects pruned", &objects[1]),
            (
                "failed",
                "Objects that failed to apply or prune",
                &objects[2],
            ),
        ] {
            registry.register(format!("flotilla_objects_{action}"), help, family.clone());
        }
        let last_success = Family::default();
        registry.register(
            "flotilla_last_successful_sync_timestamp_seconds",
            "When a unit last converged (Unix time)",
            last_success.clone(),
        );
        let fetch_duration: RepoDurations = Family::new_with_constructor(durations);
        registry.register(
            "flotilla_fetch_duration_seconds",
            "How long a fetch from a repository took",
            fetch_duration.clone(),
        );
        let fetch_failures = Family::default();
        registry.register(
            "flotilla_fetch_failures",
            "Fetches that failed, by repository",
            fetch_failures.clone(),
        );
        let unverified = Family::default();
        registry.register(
            "flotilla_signature_failures",
            "Fetched revisions refused because their signature was missing, untrusted or wrong",
            unverified.clone(),
        );
        let webhooks = Family::default();
        registry.register(
            "flotilla_webhook_requests",
            "Webhook requests by provider and result",
            webhooks.clone(),
        );
        Metrics {
            registry,
            reconcile,
            errors,
            reconcile_duration,
            objects,
            last_success,
            fetch_duration,
            fetch_failures,
            unverified,
            webhooks,
            ready,
        }
    }
}

impl Metrics {
    /// A unit's run: its result (`None`: converged, else the kind of its failure), duration and
    /// object counts (applied, pruned, failed).
    pub(crate) fn reconciled(
        &self,
        unit: &str,
        result: Option<Kind>,
        took: Duration,
        counts: [usize; 3],
    ) {
        let name = unit.to_string();
        let outcome = if result.is_none() {
            "success"
        } else {
            "failure"
        };
        self.reconcile
            .get_or_create(&UnitResult {
                unit: name.clone(),
                result: outcome.into(),
            })
            .inc();
        if let Some(kind) = result {
            self.errors
                .get_or_create(&UnitKind {
                    unit: name.clone(),
                    kind: kind.as_str().into(),
                })
                .inc();
        }
        let unit = Unit { unit: name };
        self.reconcile_duration
            .get_or_create(&unit)
            .observe(took.as_secs_f64());
        for (family, n) in self.objects.iter().zip(counts) {
            family.get_or_create(&unit).inc_by(n as u64);
        }
        if result.is_none() {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            self.last_success
                .get_or_create(&unit)
                .set(now.as_secs_f64());
        }
    }

    pub(crate) fn fetched(&self, repo: &str, took: Duration, ok: bool) {
        let repo = Repo {
            repo: repo.to_string(),
        };
        self.fetch_duration
            .get_or_create(&repo)
            .observe(took.as_secs_f64());
        let failures = self.fetch_failures.get_or_create(&repo);
        if !ok {
            failures.inc();
        }
    }

    /// A fetched revision refused for its signature.
    pub(crate) fn unverified(&self, repo: &str) {
        self.unverified
            .get_or_create(&Repo {
                repo: repo.to_string(),
            })
            .inc();
    }

    pub(crate) fn webhook(&self, provider: &str, result: &str) {
        self.webhooks
            .get_or_create(&Webhook {
                provider: provider.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The OpenMetrics text exposition (which Prometheus reads as well as its own format).
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The content type of [`Metrics::render`]'s text.
pub(crate) const METRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_counters_histograms_and_escaped_labels() {
        let m = Metrics::default();
        m.reconciled("ai/shop", None, Duration::from_millis(300), [2, 1, 0]);
        m.reconciled(
            "ai/shop",
            Some(Kind::Permanent),
            Duration::from_secs(2),
            [0, 0, 1],
        );
        m.fetched(
            "ssh://git@host/\"odd\".git",
            Duration::from_millis(20),
            false,
        );
        m.webhook("github", "accepted");
        let text = m.render();
        for line in [
            "flotilla_reconcile_total{unit=\"ai/shop\",result=\"success\"} 1",
            "flotilla_reconcile_total{unit=\"ai/shop\",result=\"failure\"} 1",
            // prometheus-client writes `le` first.
            "flotilla_reconcile_duration_seconds_bucket{le=\"0.5\",unit=\"ai/shop\"} 1",
            "flotilla_reconcile_duration_seconds_bucket{le=\"+Inf\",unit=\"ai/shop\"} 2",
            "flotilla_reconcile_duration_seconds_count{unit=\"ai/shop\"} 2",
            "flotilla_objects_applied_total{unit=\"ai/shop\"} 2",
            "flotilla_objects_failed_total{unit=\"ai/shop\"} 1",
            "flotilla_fetch_failures_total{repo=\"ssh://git@host/\\\"odd\\\".git\"} 1",
            "flotilla_webhook_requests_total{provider=\"github\",result=\"accepted\"} 1",
            "flotilla_reconcile_errors_total{unit=\"ai/shop\",kind=\"permanent\"} 1",
            "# TYPE flotilla_reconcile_duration_seconds histogram",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
