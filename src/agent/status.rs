//! What the daemon tells: each unit's status (the API's `/api/v1/status`, `flotilla status`)
//! and the Prometheus metrics (`/metrics`), both kept in memory and replaced as rounds finish.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// One unit as `flotilla status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UnitStatus {
    /// `ai/jupyter`, or `infra`.
    pub unit: String,
    pub revision: Option<String>,
    /// `pending` (not run yet), `converged`, `failed` or `suspended`.
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
}

/// The whole status document.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub cluster: String,
    pub ready: bool,
    /// Whether this replica holds the Lease (always, without leader election).
    pub leader: bool,
    pub fleet_revision: Option<String>,
    /// The last full round's error, when it failed as a whole.
    pub error: Option<String>,
    pub units: Vec<UnitStatus>,
}

/// A line of `POST /api/v1/sync`'s answer (newline-delimited JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum SyncEvent {
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
    },
    /// A round failed as a whole (no fetch, no API server).
    Error { message: String },
    /// Everything asked for has run.
    Done { ok: bool },
}

/// RFC 3339 in UTC, to the second.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

const DURATION_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

#[derive(Clone, Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; DURATION_BUCKETS.len()];
        }
        for (i, b) in DURATION_BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

/// The daemon's metrics, rendered in the Prometheus text format.
#[derive(Debug, Default)]
pub struct Metrics {
    reconcile: BTreeMap<(String, &'static str), u64>,
    reconcile_duration: BTreeMap<String, Histogram>,
    objects: BTreeMap<(String, &'static str), u64>,
    last_success: BTreeMap<String, f64>,
    fetch_duration: BTreeMap<String, Histogram>,
    fetch_failures: BTreeMap<String, u64>,
    webhooks: BTreeMap<(String, String), u64>,
    ready: bool,
}

impl Metrics {
    /// A unit's run: its result, duration and object counts.
    pub fn reconciled(&mut self, unit: &str, ok: bool, took: Duration, counts: [usize; 3]) {
        let result = if ok { "success" } else { "failure" };
        *self.reconcile.entry((unit.into(), result)).or_default() += 1;
        self.reconcile_duration
            .entry(unit.into())
            .or_default()
            .observe(took.as_secs_f64());
        for (action, n) in ["applied", "pruned", "failed"].into_iter().zip(counts) {
            *self.objects.entry((unit.into(), action)).or_default() += n as u64;
        }
        if ok {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            self.last_success.insert(unit.into(), now.as_secs_f64());
        }
    }

    pub fn fetched(&mut self, repo: &str, took: Duration, ok: bool) {
        self.fetch_duration
            .entry(repo.into())
            .or_default()
            .observe(took.as_secs_f64());
        let failures = self.fetch_failures.entry(repo.into()).or_default();
        if !ok {
            *failures += 1;
        }
    }

    pub fn webhook(&mut self, provider: &str, result: &str) {
        *self
            .webhooks
            .entry((provider.into(), result.into()))
            .or_default() += 1;
    }

    pub fn set_ready(&mut self, ready: bool) {
        self.ready = ready;
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut out,
            "flotilla_ready",
            "gauge",
            "1 once the fleet was fetched and synced.",
        );
        let _ = writeln!(out, "flotilla_ready {}", u8::from(self.ready));
        head(
            &mut out,
            "flotilla_reconcile_total",
            "counter",
            "Unit runs by result.",
        );
        for ((unit, result), n) in &self.reconcile {
            let _ = writeln!(
                out,
                "flotilla_reconcile_total{{unit=\"{}\",result=\"{result}\"}} {n}",
                esc(unit)
            );
        }
        head(
            &mut out,
            "flotilla_reconcile_duration_seconds",
            "histogram",
            "How long a unit's run took.",
        );
        for (unit, h) in &self.reconcile_duration {
            histogram(
                &mut out,
                "flotilla_reconcile_duration_seconds",
                "unit",
                unit,
                h,
            );
        }
        for (action, help) in [
            ("applied", "Objects applied (created or changed)."),
            ("pruned", "Objects pruned."),
            ("failed", "Objects that failed to apply or prune."),
        ] {
            let name = format!("flotilla_objects_{action}_total");
            head(&mut out, &name, "counter", help);
            for ((unit, a), n) in &self.objects {
                if *a == action {
                    let _ = writeln!(out, "{name}{{unit=\"{}\"}} {n}", esc(unit));
                }
            }
        }
        head(
            &mut out,
            "flotilla_last_successful_sync_timestamp_seconds",
            "gauge",
            "When a unit last converged (Unix time).",
        );
        for (unit, t) in &self.last_success {
            let _ = writeln!(
                out,
                "flotilla_last_successful_sync_timestamp_seconds{{unit=\"{}\"}} {t:.3}",
                esc(unit)
            );
        }
        head(
            &mut out,
            "flotilla_fetch_duration_seconds",
            "histogram",
            "How long a fetch from a repository took.",
        );
        for (repo, h) in &self.fetch_duration {
            histogram(&mut out, "flotilla_fetch_duration_seconds", "repo", repo, h);
        }
        head(
            &mut out,
            "flotilla_fetch_failures_total",
            "counter",
            "Fetches that failed, by repository.",
        );
        for (repo, n) in &self.fetch_failures {
            let _ = writeln!(
                out,
                "flotilla_fetch_failures_total{{repo=\"{}\"}} {n}",
                esc(repo)
            );
        }
        head(
            &mut out,
            "flotilla_webhook_requests_total",
            "counter",
            "Webhook requests by provider and result.",
        );
        for ((provider, result), n) in &self.webhooks {
            let _ = writeln!(
                out,
                "flotilla_webhook_requests_total{{provider=\"{}\",result=\"{}\"}} {n}",
                esc(provider),
                esc(result)
            );
        }
        out
    }
}

fn histogram(out: &mut String, name: &str, label: &str, value: &str, h: &Histogram) {
    let v = esc(value);
    for (i, b) in DURATION_BUCKETS.iter().enumerate() {
        let _ = writeln!(
            out,
            "{name}_bucket{{{label}=\"{v}\",le=\"{b}\"}} {}",
            h.counts.get(i).copied().unwrap_or(0)
        );
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{{label}=\"{v}\",le=\"+Inf\"}} {}",
        h.count
    );
    let _ = writeln!(out, "{name}_sum{{{label}=\"{v}\"}} {}", h.sum);
    let _ = writeln!(out, "{name}_count{{{label}=\"{v}\"}} {}", h.count);
}

/// A label value escaped as the text format requires.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_counters_histograms_and_escaped_labels() {
        let mut m = Metrics::default();
        m.reconciled("ai/shop", true, Duration::from_millis(300), [2, 1, 0]);
        m.reconciled("ai/shop", false, Duration::from_secs(2), [0, 0, 1]);
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
            "flotilla_reconcile_duration_seconds_bucket{unit=\"ai/shop\",le=\"0.5\"} 1",
            "flotilla_reconcile_duration_seconds_bucket{unit=\"ai/shop\",le=\"+Inf\"} 2",
            "flotilla_reconcile_duration_seconds_count{unit=\"ai/shop\"} 2",
            "flotilla_objects_applied_total{unit=\"ai/shop\"} 2",
            "flotilla_objects_failed_total{unit=\"ai/shop\"} 1",
            "flotilla_fetch_failures_total{repo=\"ssh://git@host/\\\"odd\\\".git\"} 1",
            "flotilla_webhook_requests_total{provider=\"github\",result=\"accepted\"} 1",
            "# TYPE flotilla_reconcile_duration_seconds histogram",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
