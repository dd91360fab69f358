//! The scheduler's state, without I/O: when each unit is due, what has been asked for, which
//! rounds may start now, and which waiting callers a finished round satisfies.
//!
//! A **round** reconciles a scope: every unit (`All`: also onboarding, removed apps and
//! departed tenants), one tenant (`Tenant`: its apps and its removed apps) or some units
//! (`Units`). Requests that arrive while a unit is queued or running merge into one pending
//! round: a burst of pushes costs one fetch and one sync. Rounds whose scopes are disjoint run
//! at once, and asked-for rounds also run beside a running `All` round (which may be waiting on
//! slow units); a pending `All` round waits for the others to finish and holds back new ones.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

pub(crate) use crate::agent::{Plan, Scope, covers};
use crate::deadline::after;
use crate::failure::{self, Kind};
use crate::fleet::UnitId;

/// A round ready to start.
#[derive(Debug)]
pub(crate) struct Round {
    pub id: u64,
    pub scope: Scope,
    /// Location keys to fetch from their remotes; `None`: every source.
    pub fresh: Option<BTreeSet<String>>,
    /// Why it runs: `interval`, `webhook github`, `sync`, ...
    pub reasons: BTreeSet<String>,
    /// Known units a periodic full round leaves alone: not due yet by their own interval (a
    /// full round still reads the fleet, onboards, and finds removed apps and departed tenants).
    pub skip: BTreeSet<UnitId>,
    /// Whether each known unit converged last time (`dependsOn` across rounds).
    pub prior: BTreeMap<UnitId, bool>,
    /// Known units whose last failure was permanent: their dependents wait for a change too.
    pub stuck: BTreeSet<UnitId>,
}

struct Timing {
    plan: Plan,
    next: Instant,
    /// Failures in a row, of either kind.
    failures: u32,
    /// Transient failures in a row: the backoff's exponent (a permanent failure or a success
    /// starts it again).
    transient: u32,
    /// The kind of the last failure, `None` after a success.
    last: Option<Kind>,
}

struct Waiting<W> {
    /// Requests numbered before this; rounds started later satisfy it.
    seq: u64,
    scope: Scope,
    /// For a `Units` scope: the units no round has covered yet.
    remaining: BTreeSet<UnitId>,
    waiter: W,
}

#[derive(Default)]
struct Pending {
    all: bool,
    tenants: BTreeSet<String>,
    units: BTreeSet<UnitId>,
    fresh: BTreeSet<String>,
    reasons: BTreeSet<String>,
}

pub(crate) struct Schedule<W> {
    interval: Duration,
    units: BTreeMap<UnitId, Timing>,
    next_all: Instant,
    pending: Pending,
    running: BTreeMap<u64, (u64, Scope)>,
    waiting: Vec<Waiting<W>>,
    seq: u64,
    /// Full rounds that failed as a whole in a row.
    all_failures: u32,
}

impl<W: Clone> Schedule<W> {
    /// A schedule whose first round (`All`) is due now.
    pub(crate) fn new(interval: Duration, now: Instant) -> Schedule<W> {
        Schedule {
            interval,
            units: BTreeMap::new(),
            next_all: now,
            pending: Pending::default(),
            running: BTreeMap::new(),
            waiting: Vec::new(),
            seq: 0,
            all_failures: 0,
        }
    }

    /// A new config's interval; the next full round comes at most that far away.
    pub(crate) fn set_interval(&mut self, interval: Duration, now: Instant) {
        self.interval = interval;
        self.next_all = self.next_all.min(after(now, jitter(interval)));
    }

    /// Asks for a round of `scope` (fetching `fresh` first); `waiter` is handed back by
    /// [`Schedule::finish`] once rounds started after this request have covered the scope.
    pub(crate) fn request(
        &mut self,
        scope: Scope,
        fresh: BTreeSet<String>,
        reason: &str,
        waiter: Option<W>,
    ) {
        self.seq += 1;
        self.pending.fresh.extend(fresh);
        self.pending.reasons.insert(reason.to_string());
        let remaining = match &scope {
            Scope::Units(units) => units.clone(),
            _ => BTreeSet::new(),
        };
        match &scope {
            Scope::All => self.pending.all = true,
            Scope::Tenant(t) => {
                self.pending.tenants.insert(t.clone());
            }
            Scope::Units(units) => self.pending.units.extend(units.iter().cloned()),
        }
        if let Some(waiter) = waiter {
            self.waiting.push(Waiting {
                seq: self.seq,
                scope,
                remaining,
                waiter,
            });
        }
    }

    /// Queues whatever is due at `now`: the full round, and units whose interval (or backoff)
    /// has passed, with their sources to fetch.
    pub(crate) fn due(&mut self, now: Instant) {
        // Each due time, once taken, moves a whole interval on (the round's end sets the real
        // next run), so that nothing is due again while it is queued or running.
        if now >= self.next_all {
            self.next_all = after(now, self.interval);
            self.pending.all = true;
            self.pending.reasons.insert("interval".into());
        }
        let due: Vec<(UnitId, Vec<String>)> = self
            .units
            .iter()
            .filter(|(_, t)| !t.plan.suspend && t.next <= now)
            .map(|(id, t)| (id.clone(), t.plan.sources.clone()))
            .collect();
        for (id, sources) in due {
            if let Some(t) = self.units.get_mut(&id) {
                t.next = after(now, t.plan.interval);
            }
            if self.busy(&id) {
                continue;
            }
            self.pending.units.insert(id);
            self.pending.fresh.extend(sources);
            self.pending.reasons.insert("interval".into());
        }
    }

    /// When something next falls due.
    pub(crate) fn next_wake(&self) -> Instant {
        self.units
            .values()
            .filter(|t| !t.plan.suspend)
            .map(|t| t.next)
            .fold(self.next_all, Instant::min)
    }

    /// The rounds that may start now; they count as running until [`Schedule::finish`].
    pub(crate) fn start(&mut self, now: Instant) -> Vec<Round> {
        let mut rounds = Vec::new();
        let reasons = |p: &Pending| p.reasons.clone();
        if self.pending.all {
            if self.running.is_empty() {
                let reasons = reasons(&self.pending);
                // Only the clock asked: units whose own interval has not come are left alone
                // (within a tenth of it: a unit nearly due goes now rather than alone later).
                let skip = if reasons.iter().all(|r| r == "interval") {
                    self.units
                        .iter()
                        .filter(|(u, t)| {
                            !self.pending.units.contains(*u)
                                && t.next > after(now, t.plan.interval / 10)
                        })
                        .map(|(u, _)| u.clone())
                        .collect()
                } else {
                    BTreeSet::new()
                };
                let round = Round {
                    id: 0,
                    scope: Scope::All,
                    fresh: None,
                    reasons,
                    skip,
                    prior: BTreeMap::new(),
                    stuck: BTreeSet::new(),
                };
                self.pending = Pending::default();
                rounds.push(round);
            }
        } else {
            // Beside a running full round, asked-for rounds start at once: the full round may be
            // waiting on a tenant's slow units, and a push must not wait for them. Two rounds
            // that reach one unit sync it one after the other (the engine locks each unit).
            for t in self.pending.tenants.clone() {
                if self
                    .running
                    .values()
                    .any(|(_, s)| *s != Scope::All && touches_tenant(s, &t))
                {
                    continue;
                }
                self.pending.tenants.remove(&t);
                self.pending
                    .units
                    .retain(|id| id.tenant.as_deref() != Some(t.as_str()));
                rounds.push(Round {
                    id: 0,
                    scope: Scope::Tenant(t),
                    fresh: Some(self.pending.fresh.clone()),
                    reasons: reasons(&self.pending),
                    skip: BTreeSet::new(),
                    prior: BTreeMap::new(),
                    stuck: BTreeSet::new(),
                });
            }
            let ready: BTreeSet<UnitId> = self
                .pending
                .units
                .iter()
                .filter(|id| {
                    !self.busy_beside_full(id)
                        && !id
                            .tenant
                            .as_ref()
                            .is_some_and(|t| self.pending.tenants.contains(t))
                        && !rounds.iter().any(|r| covers(&r.scope, id))
                })
                .cloned()
                .collect();
            if !ready.is_empty() {
                self.pending.units.retain(|id| !ready.contains(id));
                rounds.push(Round {
                    id: 0,
                    scope: Scope::Units(ready),
                    fresh: Some(self.pending.fresh.clone()),
                    reasons: reasons(&self.pending),
                    skip: BTreeSet::new(),
                    prior: BTreeMap::new(),
                    stuck: BTreeSet::new(),
                });
            }
            if !rounds.is_empty()
                && self.pending.tenants.is_empty()
                && self.pending.units.is_empty()
            {
                self.pending.fresh.clear();
                self.pending.reasons.clear();
            }
        }
        for round in &mut rounds {
            round.prior = self
                .units
                .iter()
                .map(|(u, t)| (u.clone(), t.failures == 0))
                .collect();
            round.stuck = self
                .units
                .iter()
                .filter(|(_, t)| t.last == Some(Kind::Permanent))
                .map(|(u, _)| u.clone())
                .collect();
            self.seq += 1;
            round.id = self.seq;
            self.running
                .insert(round.id, (self.seq, round.scope.clone()));
        }
        rounds
    }

    /// Whether a round is queued or running.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> bool {
        self.running.is_empty()
            && !self.pending.all
            && self.pending.tenants.is_empty()
            && self.pending.units.is_empty()
    }

    /// Records a finished round: each unit's result (`None`: converged, else the kind of its
    /// failure) sets its next run by the error policy ([`failure::next_run`]: its interval, or
    /// a backoff after a transient failure); `placed`, when the round read the placement,
    /// replaces the known units in its scope. Returns the waiters the round covered (in part),
    /// each with whether it is now satisfied.
    pub(crate) fn finish(
        &mut self,
        id: u64,
        now: Instant,
        results: &[(UnitId, Option<Kind>)],
        placed: Option<&BTreeMap<UnitId, Plan>>,
    ) -> Vec<(W, bool)> {
        let Some((started, scope)) = self.running.remove(&id) else {
            return Vec::new();
        };
        if let Some(placed) = placed {
            self.learn(&scope, placed, now);
        }
        for (u, result) in results {
            if let Some(t) = self.units.get_mut(u) {
                t.failures = match result {
                    None => 0,
                    Some(_) => t.failures.saturating_add(1),
                };
                t.transient = match result {
                    Some(Kind::Transient) => t.transient.saturating_add(1),
                    _ => 0,
                };
                t.last = *result;
                t.next = after(
                    now,
                    failure::next_run(*result, t.transient, t.plan.interval),
                );
            }
        }
        if scope == Scope::All {
            self.all_failures = 0;
            self.next_all = after(now, jitter(self.interval));
        }
        let mut told = Vec::new();
        let mut kept = Vec::new();
        for mut w in std::mem::take(&mut self.waiting) {
            if w.seq >= started {
                kept.push(w);
                continue;
            }
            let (touched, satisfied) = match (&scope, &w.scope) {
                (Scope::All, _) => (true, true),
                (Scope::Tenant(a), Scope::Tenant(b)) => (a == b, a == b),
                (_, Scope::Units(_)) => {
                    let before = w.remaining.len();
                    w.remaining.retain(|u| !covers(&scope, u));
                    (w.remaining.len() < before, w.remaining.is_empty())
                }
                _ => (false, false),
            };
            if touched {
                told.push((w.waiter.clone(), satisfied));
            }
            if !satisfied {
                kept.push(w);
            }
        }
        self.waiting = kept;
        told
    }

    /// The units of `scope` are now those `placed` (new ones are due an interval from now).
    pub(crate) fn learn(&mut self, scope: &Scope, placed: &BTreeMap<UnitId, Plan>, now: Instant) {
        self.units
            .retain(|u, _| !covers(scope, u) || placed.contains_key(u));
        for (u, plan) in placed.iter().filter(|(u, _)| covers(scope, u)) {
            let timing = self.units.entry(u.clone()).or_insert_with(|| Timing {
                plan: plan.clone(),
                next: after(now, jitter(plan.interval)),
                failures: 0,
                transient: 0,
                last: None,
            });
            timing.plan = plan.clone();
        }
    }

    /// A round that failed as a whole (no fetch, no API server): its units, and a full round,
    /// are retried as the failure's kind says (with backoff if transient).
    pub(crate) fn failed_whole(&mut self, id: u64, now: Instant, kind: Kind) -> Vec<(W, bool)> {
        let scope = self.running.get(&id).map(|(_, s)| s.clone());
        let units: Vec<(UnitId, Option<Kind>)> = self
            .units
            .keys()
            .filter(|u| scope.as_ref().is_some_and(|s| covers(s, u)))
            .map(|u| (u.clone(), Some(kind)))
            .collect();
        let whole = scope == Some(Scope::All);
        let failures = self.all_failures + 1;
        let waiters = self.finish(id, now, &units, None);
        if whole {
            self.all_failures = failures;
            self.next_all = after(now, failure::next_run(Some(kind), failures, self.interval));
        }
        waiters
    }

    /// Every unit known, with its next run.
    pub(crate) fn next_runs(&self) -> impl Iterator<Item = (&UnitId, Instant)> {
        self.units.iter().map(|(u, t)| (u, t.next))
    }

    /// Every known unit's plan.
    pub(crate) fn plans(&self) -> BTreeMap<UnitId, Plan> {
        self.units
            .iter()
            .map(|(u, t)| (u.clone(), t.plan.clone()))
            .collect()
    }

    fn busy(&self, unit: &UnitId) -> bool {
        self.running.values().any(|(_, s)| covers(s, unit))
    }

    /// Whether a round other than a full one covers `unit`.
    fn busy_beside_full(&self, unit: &UnitId) -> bool {
        self.running
            .values()
            .any(|(_, s)| *s != Scope::All && covers(s, unit))
    }
}

fn touches_tenant(scope: &Scope, tenant: &str) -> bool {
    match scope {
        Scope::All => true,
        Scope::Tenant(t) => t == tenant,
        Scope::Units(units) => units.iter().any(|u| u.tenant.as_deref() == Some(tenant)),
    }
}

/// `interval` ± 10%, so that many units (and many agents) do not poll in step.
pub(crate) fn jitter(interval: Duration) -> Duration {
    crate::deadline::jitter(interval, 0.1)
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;
