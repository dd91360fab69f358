//! The bookkeeping of finished rounds, as a pure state transition: [`record`] takes the status
//! the agent shows, the schedule and a finished round, and returns what must be told (to the
//! callers waiting on a sync, to the metrics, to systemd). No I/O, no clock, no locks: the
//! scheduler applies the notices (`finished.rs`), and the tests here drive it as
//! `schedule_tests.rs` drives the schedule.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::round::{Done, unit_name};
use super::schedule::{self, Schedule, Scope};
use crate::agent::Status;
use crate::agent::status::{SyncEvent, SyncRecord, UnitStatus};
use crate::failure::{Failure, Kind};
use crate::fleet::UnitId;
use crate::reconcile::Entry;

/// The status the agent shows, and the revisions it last saw.
#[derive(Default)]
pub(super) struct Book {
    pub(super) status: Status,
    /// The agent is stopping: a round finishing now does not make it ready (again).
    pub(super) stopping: bool,
    /// The last revisions seen of the fleet and of each tenant's repo: a narrow round that sees
    /// a newer one asks for the wider round.
    fleet: Option<String>,
    tenants: BTreeMap<String, String>,
}

/// Something [`record`] asks the scheduler to tell.
#[derive(Debug, PartialEq)]
pub(super) enum Notice<W> {
    /// An event for a caller waiting on a sync.
    Tell(W, SyncEvent),
    /// Everything the caller asked for has run.
    Done(W),
    /// A unit ran (metrics): `None` converged, else the kind of its failure.
    Reconciled {
        unit: String,
        result: Option<Kind>,
        took: Duration,
        counts: [usize; 3],
    },
    /// The first full round synced the fleet: the agent is ready.
    Ready,
    /// A full round failed as a whole (systemd's status line).
    SyncFailed(String),
}

/// A caller waiting on a sync, as far as the bookkeeping needs to know it.
pub(super) trait Caller: Clone {
    fn scope(&self) -> &Scope;
}

impl Caller for crate::agent::Waiter {
    fn scope(&self) -> &Scope {
        &self.scope
    }
}

/// Records a finished round: each unit's status, the schedule's next runs (by the error policy),
/// follow-up rounds when a narrow round saw a new fleet or tenant revision, and the callers the
/// round satisfied. `stamp` is the time to show as each unit's last run.
pub(super) fn record<W: Caller>(
    book: &mut Book,
    schedule: &mut Schedule<W>,
    done: &Done,
    now: Instant,
    stamp: &str,
) -> Vec<Notice<W>> {
    match &done.error {
        Some(error) => failed_whole(book, schedule, done, error, now, stamp),
        None => synced(book, schedule, done, now, stamp),
    }
}

/// A round that failed as a whole: the units it covers fail with its error.
fn failed_whole<W: Caller>(
    book: &mut Book,
    schedule: &mut Schedule<W>,
    done: &Done,
    error: &Failure,
    now: Instant,
    stamp: &str,
) -> Vec<Notice<W>> {
    let mut notices = Vec::new();
    // The placement was read but nothing synced (no API server): its units are known, and fail.
    if let Some(view) = &done.view {
        schedule.learn(&done.scope, &view.plans, now);
        book.status.plans = schedule.plans();
    }
    let covered: Vec<UnitId> = book
        .status
        .plans
        .keys()
        .filter(|u| schedule::covers(&done.scope, u))
        .cloned()
        .collect();
    for id in &covered {
        notices.push(fail_unit(&mut book.status, id, error, stamp));
    }
    if done.scope == Scope::All {
        book.status.error = Some(error.message.clone());
        notices.push(Notice::SyncFailed(first_line(&error.message).to_string()));
    }
    for (w, satisfied) in schedule.failed_whole(done.id, now, error.kind) {
        notices.push(Notice::Tell(
            w.clone(),
            SyncEvent::Error {
                message: error.message.clone(),
            },
        ));
        if satisfied {
            notices.push(Notice::Done(w));
        }
    }
    notices
}

fn synced<W: Caller>(
    book: &mut Book,
    schedule: &mut Schedule<W>,
    done: &Done,
    now: Instant,
    stamp: &str,
) -> Vec<Notice<W>> {
    let mut notices = Vec::new();
    let Some(view) = &done.view else {
        return notices;
    };

    // A new revision of the fleet or of a tenant's repo seen by a narrower round: the wider
    // round follows (placement, values and removed apps may have changed).
    if done.scope != Scope::All {
        if book
            .fleet
            .as_ref()
            .is_some_and(|f| *f != view.fleet_revision)
        {
            schedule.request(Scope::All, BTreeSet::new(), "fleet changed", None);
        }
        for (t, rev) in &view.tenant_revisions {
            let covered = done.scope == Scope::Tenant(t.clone());
            if !covered && book.tenants.get(t).is_some_and(|r| r != rev) {
                schedule.request(
                    Scope::Tenant(t.clone()),
                    BTreeSet::new(),
                    "tenant repo changed",
                    None,
                );
            }
        }
    }
    book.fleet = Some(view.fleet_revision.clone());
    book.tenants.extend(view.tenant_revisions.clone());

    // Units of tenants that could not be read are kept, and failed with the tenant's problem.
    let mut placed = view.plans.clone();
    let mut results: Vec<(UnitId, Option<Kind>)> = Vec::new();
    let mut tenant_failures: BTreeMap<UnitId, Failure> = BTreeMap::new();
    for t in &view.tenants_failed {
        let problems = view.problems.get(&Some(t.clone()));
        let why = match problems {
            Some(p) if !p.is_empty() => {
                let lines: Vec<String> = p.iter().map(ToString::to_string).collect();
                let kind = Kind::worst(p.iter().map(|p| p.kind)).unwrap_or(Kind::Permanent);
                Failure::new(kind, lines.join("; "))
            }
            _ => Failure::transient(format!("tenant {t} could not be read")),
        };
        for (id, plan) in book
            .status
            .plans
            .iter()
            .filter(|(id, _)| id.tenant.as_deref() == Some(t))
        {
            if schedule::covers(&done.scope, id) {
                placed.insert(id.clone(), plan.clone());
                results.push((id.clone(), Some(why.kind)));
                tenant_failures.insert(id.clone(), why.clone());
            }
        }
    }
    for e in &done.entries {
        if let Some(id) = &e.unit {
            results.push((id.clone(), e.outcome.failure_kind()));
        }
    }
    let told = schedule.finish(done.id, now, &results, Some(&placed));

    // The placement.
    let stopping = book.stopping;
    let status = &mut book.status;
    status.plans = schedule.plans();
    status.targets = view.targets.clone();
    if done.scope == Scope::All {
        status.everywhere = view.everywhere.clone();
    }
    status.tenants = view
        .targets
        .iter()
        .filter_map(|t| match &t.scope {
            Scope::Tenant(name) => Some(name.clone()),
            _ => None,
        })
        .chain(view.tenants_failed.iter().cloned())
        .collect();

    // Each unit's status and metrics.
    let plans = &status.plans;
    status.units.retain(|id, _| plans.contains_key(id));
    status.history.retain(|id, _| plans.contains_key(id));
    let tenants = &status.tenants;
    status.onboarding.retain(|t, _| tenants.contains(t));
    for e in &done.entries {
        if let Some(t) = e.onboarding_of() {
            status
                .onboarding
                .insert(t.to_string(), unit_status("onboarding", e, stamp));
        }
        let Some(id) = &e.unit else { continue };
        if status.plans.get(id).is_some_and(|p| p.suspend) {
            continue;
        }
        let mut s = unit_status(&unit_name(id), e, stamp);
        s.signer = view.signers.get(id).cloned();
        remember(
            status,
            id,
            SyncRecord::new(&s, &e.outcome.applied, &e.outcome.pruned),
        );
        status.units.insert(id.clone(), s);
        let o = &e.outcome;
        notices.push(Notice::Reconciled {
            unit: unit_name(id),
            result: o.failure_kind(),
            took: o.took,
            counts: [o.applied.len(), o.pruned.len(), o.failed.len()],
        });
    }
    for (id, why) in &tenant_failures {
        // A suspended unit of a tenant that could not be read stays suspended.
        if status.plans.get(id).is_some_and(|p| p.suspend) {
            continue;
        }
        notices.push(fail_unit(status, id, why, stamp));
    }
    if done.scope == Scope::All {
        if !status.ready && !stopping {
            status.ready = true;
            notices.push(Notice::Ready);
        }
        status.fleet_revision = Some(view.fleet_revision.clone());
        status.error = view.problems.get(&None).map(|p| {
            p.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        });
    }

    // The callers waiting for these sets.
    for (w, satisfied) in told {
        for e in done.entries.iter().filter(|e| concerns(w.scope(), e)) {
            notices.push(Notice::Tell(w.clone(), set_event(e)));
        }
        for (id, why) in tenant_failures
            .iter()
            .filter(|(id, _)| schedule::covers(w.scope(), id))
        {
            notices.push(Notice::Tell(
                w.clone(),
                SyncEvent::Error {
                    message: format!("{}: {why}", unit_name(id)),
                },
            ));
        }
        if satisfied {
            notices.push(Notice::Done(w));
        }
    }
    notices
}

/// A unit that failed without running (its round or its tenant failed): its status, and the
/// notice for the metrics.
fn fail_unit<W>(status: &mut Status, id: &UnitId, why: &Failure, stamp: &str) -> Notice<W> {
    let s = status
        .units
        .entry(id.clone())
        .or_insert_with(|| UnitStatus {
            unit: unit_name(id),
            ..Default::default()
        });
    s.result = "failed".into();
    s.last_error = Some(why.message.clone());
    s.last_run = Some(stamp.to_string());
    (s.applied, s.pruned, s.failed, s.duration_seconds) = (0, 0, 0, None);
    let record = SyncRecord::new(s, &[], &[]);
    remember(status, id, record);
    Notice::Reconciled {
        unit: unit_name(id),
        result: Some(why.kind),
        took: Duration::ZERO,
        counts: [0; 3],
    }
}

/// Adds a sync to a unit's history.
fn remember(status: &mut Status, id: &UnitId, record: SyncRecord) {
    let history = status.history.entry(id.clone()).or_default();
    SyncRecord::push(std::sync::Arc::make_mut(history), record);
}

fn unit_status(name: &str, e: &Entry, stamp: &str) -> UnitStatus {
    let o = &e.outcome;
    let errors = o.failure_lines();
    UnitStatus {
        unit: name.to_string(),
        revision: e.revision.clone(),
        signer: None,
        source: None,
        result: match (o.converged(), o.held_back) {
            (true, _) => "converged",
            (false, true) => "held-back",
            (false, false) => "failed",
        }
        .into(),
        last_error: (!errors.is_empty()).then(|| errors.join("; ")),
        applied: o.applied.len(),
        pruned: o.pruned.len(),
        failed: o.failed.len(),
        last_run: Some(stamp.to_string()),
        next_run: None,
        duration_seconds: Some(o.took.as_secs_f64()),
        owner: None,
    }
}

fn set_event(e: &Entry) -> SyncEvent {
    let o = &e.outcome;
    SyncEvent::Set {
        name: e.name.clone(),
        revision: e.revision.clone(),
        converged: o.converged(),
        applied: o.applied.clone(),
        unchanged: o.unchanged,
        pruned: o.pruned.clone(),
        failed: o.failed.iter().map(ToString::to_string).collect(),
        notes: o.notes.clone(),
        error: o.error.as_ref().map(ToString::to_string),
        kind: o.failure_kind(),
    }
}

/// Whether an entry belongs to a caller's scope: by its unit, or (onboarding, removals,
/// departures) by its tenant.
fn concerns(scope: &Scope, e: &Entry) -> bool {
    match (scope, &e.unit) {
        (Scope::All, _) => true,
        (_, Some(id)) => schedule::covers(scope, id),
        (Scope::Tenant(t), None) => e.tenant.as_deref() == Some(t.as_str()),
        (Scope::Units(_), None) => false,
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

#[cfg(test)]
#[path = "book_tests.rs"]
mod tests;
