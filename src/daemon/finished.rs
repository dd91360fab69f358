//! The bookkeeping of finished rounds: each unit's status and metrics, the schedule's next runs
//! and backoffs, follow-up rounds when a narrow round saw a new fleet or tenant revision, and the
//! callers waiting on a sync.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use super::round::{Done, unit_name};
use super::schedule::{self, Schedule, Scope};
use super::status::{self, SyncEvent, UnitStatus};
use super::{Shared, Waiter, systemd};
use crate::fleet::UnitId;
use crate::reconcile::Entry;

/// A round task ended: its result recorded, or, if it panicked or was cancelled, its round
/// failed as a whole so that its units are not left busy forever.
pub(super) fn joined_round(
    shared: &Shared,
    schedule: &mut Schedule<Waiter>,
    known: &mut Revisions,
    task_rounds: &mut BTreeMap<tokio::task::Id, u64>,
    joined: Result<(tokio::task::Id, Done), tokio::task::JoinError>,
) {
    match joined {
        Ok((task, done)) => {
            task_rounds.remove(&task);
            finished(shared, schedule, known, done);
        }
        Err(e) => {
            let id = task_rounds.remove(&e.id()).unwrap_or_default();
            let why = if e.is_cancelled() {
                "cancelled"
            } else {
                "panicked"
            };
            tracing::error!(round = id, error = %e, "a round {why}");
            for (w, satisfied) in schedule.failed_whole(id, Instant::now()) {
                w.ok.store(false, Ordering::SeqCst);
                let _ = w.tx.send(SyncEvent::Error {
                    message: format!("internal error: the round {why}"),
                });
                if satisfied {
                    let _ = w.tx.send(SyncEvent::Done { ok: false });
                }
            }
        }
    }
}

/// The last revisions seen of the fleet and of each tenant's repo.
#[derive(Default)]
pub(super) struct Revisions {
    fleet: Option<String>,
    tenants: BTreeMap<String, String>,
}

/// Records a finished round: status, metrics, schedule, follow-ups, and the callers waiting.
pub(super) fn finished(
    shared: &Shared,
    schedule: &mut Schedule<Waiter>,
    known: &mut Revisions,
    done: Done,
) {
    let now = Instant::now();
    let stamp = status::timestamp(SystemTime::now());
    // The placement was read but nothing synced (no API server): its units are known, and fail.
    if let (Some(_), Some(view)) = (&done.error, &done.view) {
        schedule.learn(&done.scope, &view.plans, now);
        if let Ok(mut p) = shared.plans.lock() {
            *p = schedule.plans();
        }
    }
    if let Some(error) = done.error.clone() {
        let plans = shared.plans.lock().map(|p| p.clone()).unwrap_or_default();
        if let Ok(mut units) = shared.units.lock() {
            for id in plans.keys().filter(|u| schedule::covers(&done.scope, u)) {
                let s = units.entry(id.clone()).or_insert_with(|| UnitStatus {
                    unit: unit_name(id),
                    ..Default::default()
                });
                s.result = "failed".into();
                s.last_error = Some(error.clone());
                s.last_run = Some(stamp.clone());
                if let Ok(mut m) = shared.metrics.lock() {
                    m.reconciled(&unit_name(id), false, Duration::ZERO, [0, 0, 0]);
                }
            }
        }
        if done.scope == Scope::All
            && let Ok(mut s) = shared.summary.lock()
        {
            s.1 = Some(error.clone());
            systemd::notify(&format!("STATUS=sync failed: {}", first_line(&error)));
        }
        for (w, satisfied) in schedule.failed_whole(done.id, now) {
            w.ok.store(false, Ordering::SeqCst);
            let _ = w.tx.send(SyncEvent::Error {
                message: error.clone(),
            });
            if satisfied {
                let _ = w.tx.send(SyncEvent::Done { ok: false });
            }
        }
        return;
    }
    let Some(view) = done.view else {
        return;
    };

    // A new revision of the fleet or of a tenant's repo seen by a narrower round: the wider
    // round follows (placement, values and removed apps may have changed).
    if done.scope != Scope::All {
        if known
            .fleet
            .as_ref()
            .is_some_and(|f| *f != view.fleet_revision)
        {
            schedule.request(Scope::All, BTreeSet::new(), "fleet changed", None);
        }
        for (t, rev) in &view.tenant_revisions {
            let covered = done.scope == Scope::Tenant(t.clone());
            if !covered && known.tenants.get(t).is_some_and(|r| r != rev) {
                schedule.request(
                    Scope::Tenant(t.clone()),
                    BTreeSet::new(),
                    "tenant repo changed",
                    None,
                );
            }
        }
    }
    known.fleet = Some(view.fleet_revision.clone());
    known.tenants.extend(view.tenant_revisions.clone());

    // Units of tenants that could not be read are kept, and failed with the tenant's problem.
    let mut placed = view.plans.clone();
    let mut results: Vec<(UnitId, bool)> = Vec::new();
    let mut tenant_failures: BTreeMap<UnitId, String> = BTreeMap::new();
    let previous = shared.plans.lock().map(|p| p.clone()).unwrap_or_default();
    for t in &view.tenants_failed {
        let why = view
            .problems
            .get(&Some(t.clone()))
            .map(|p| p.join("; "))
            .unwrap_or_else(|| format!("tenant {t} could not be read"));
        for (id, plan) in previous
            .iter()
            .filter(|(id, _)| id.tenant.as_deref() == Some(t))
        {
            if schedule::covers(&done.scope, id) {
                placed.insert(id.clone(), plan.clone());
                results.push((id.clone(), false));
                tenant_failures.insert(id.clone(), why.clone());
            }
        }
    }
    for e in &done.entries {
        if let Some(id) = &e.unit {
            results.push((id.clone(), e.outcome.converged()));
        }
    }
    let told = schedule.finish(done.id, now, &results, Some(&placed));

    // The shared view of the placement.
    let all_plans = schedule.plans();
    if let Ok(mut p) = shared.plans.lock() {
        *p = all_plans.clone();
    }
    if let Ok(mut t) = shared.targets.lock() {
        *t = view.targets.clone();
    }
    if let Ok(mut t) = shared.tenants.lock() {
        *t = view
            .targets
            .iter()
            .filter_map(|t| match &t.scope {
                Scope::Tenant(name) => Some(name.clone()),
                _ => None,
            })
            .chain(view.tenants_failed.iter().cloned())
            .collect();
    }

    // Status and metrics of each unit.
    if let (Ok(mut units), Ok(mut metrics)) = (shared.units.lock(), shared.metrics.lock()) {
        units.retain(|id, _| all_plans.contains_key(id));
        for e in done.entries.iter().filter(|e| e.unit.is_some()) {
            let id = e.unit.as_ref().expect("filtered");
            if all_plans.get(id).is_some_and(|p| p.suspend) {
                continue;
            }
            units.insert(id.clone(), unit_status(id, e, &stamp));
            let o = &e.outcome;
            metrics.reconciled(
                &unit_name(id),
                o.converged(),
                o.took,
                [o.applied.len(), o.pruned.len(), o.failed.len()],
            );
        }
        for (id, why) in &tenant_failures {
            let s = units.entry(id.clone()).or_insert_with(|| UnitStatus {
                unit: unit_name(id),
                ..Default::default()
            });
            s.result = "failed".into();
            s.last_error = Some(why.clone());
            s.last_run = Some(stamp.clone());
            metrics.reconciled(&unit_name(id), false, Duration::ZERO, [0, 0, 0]);
        }
        if done.scope == Scope::All && !shared.ready.swap(true, Ordering::SeqCst) {
            metrics.set_ready(true);
            tracing::info!("ready: the fleet was fetched and synced");
            systemd::notify("READY=1\nSTATUS=ready");
        }
    }
    if done.scope == Scope::All
        && let Ok(mut s) = shared.summary.lock()
    {
        *s = (
            Some(view.fleet_revision.clone()),
            view.problems.get(&None).map(|p| p.join("; ")),
        );
    }

    // The callers waiting for these sets.
    for (w, satisfied) in told {
        for e in done.entries.iter().filter(|e| concerns(&w.scope, e)) {
            let o = &e.outcome;
            if !o.converged() {
                w.ok.store(false, Ordering::SeqCst);
            }
            let _ = w.tx.send(SyncEvent::Set {
                name: e.name.clone(),
                revision: e.revision.clone(),
                converged: o.converged(),
                applied: o.applied.clone(),
                unchanged: o.unchanged,
                pruned: o.pruned.clone(),
                failed: o.failed.clone(),
                notes: o.notes.clone(),
                error: o.error.clone(),
            });
        }
        for (id, why) in tenant_failures
            .iter()
            .filter(|(id, _)| schedule::covers(&w.scope, id))
        {
            w.ok.store(false, Ordering::SeqCst);
            let _ = w.tx.send(SyncEvent::Error {
                message: format!("{}: {why}", unit_name(id)),
            });
        }
        if satisfied {
            let _ = w.tx.send(SyncEvent::Done {
                ok: w.ok.load(Ordering::SeqCst),
            });
        }
    }
}

fn unit_status(id: &UnitId, e: &Entry, stamp: &str) -> UnitStatus {
    let o = &e.outcome;
    let mut errors: Vec<String> = o.error.iter().cloned().collect();
    errors.extend(o.failed.iter().cloned());
    UnitStatus {
        unit: unit_name(id),
        revision: e.revision.clone(),
        result: if o.converged() { "converged" } else { "failed" }.into(),
        last_error: (!errors.is_empty()).then(|| errors.join("; ")),
        applied: o.applied.len(),
        pruned: o.pruned.len(),
        failed: o.failed.len(),
        last_run: Some(stamp.to_string()),
        next_run: None,
        duration_seconds: Some(o.took.as_secs_f64()),
    }
}

/// Whether an entry belongs to a caller's scope.
fn concerns(scope: &Scope, e: &Entry) -> bool {
    match (scope, &e.unit) {
        (Scope::All, _) => true,
        (_, Some(id)) => schedule::covers(scope, id),
        (Scope::Tenant(t), None) => {
            e.name == format!("tenant {t}")
                || e.name.starts_with(&format!("tenant {t}:"))
                || e.name.starts_with(&format!("tenant {t},"))
        }
        (Scope::Units(_), None) => false,
    }
}

pub(super) fn publish_next_runs(shared: &Shared, schedule: &Schedule<Waiter>) {
    let (now, wall) = (Instant::now(), SystemTime::now());
    if let Ok(mut next) = shared.next_runs.lock() {
        *next = schedule
            .next_runs()
            .map(|(id, at)| (id.clone(), wall + at.saturating_duration_since(now)))
            .collect();
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
