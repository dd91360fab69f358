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
use std::hash::BuildHasher as _;
use std::time::{Duration, Instant};

use crate::deadline::after;
use crate::fleet::UnitId;

/// The first retry of a failed unit comes this much later, doubling each time up to the unit's
/// interval.
pub const BACKOFF_BASE: Duration = Duration::from_secs(5);

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

/// A round ready to start.
#[derive(Debug)]
pub struct Round {
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
}

struct Timing {
    plan: Plan,
    next: Instant,
    failures: u32,
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

pub struct Schedule<W> {
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
    pub fn new(interval: Duration, now: Instant) -> Schedule<W> {
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
    pub fn set_interval(&mut self, interval: Duration, now: Instant) {
        self.interval = interval;
        self.next_all = self.next_all.min(after(now, jitter(interval)));
    }

    /// Asks for a round of `scope` (fetching `fresh` first); `waiter` is handed back by
    /// [`Schedule::finish`] once rounds started after this request have covered the scope.
    pub fn request(
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
    pub fn due(&mut self, now: Instant) {
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
    pub fn next_wake(&self) -> Instant {
        self.units
            .values()
            .filter(|t| !t.plan.suspend)
            .map(|t| t.next)
            .fold(self.next_all, Instant::min)
    }

    /// The rounds that may start now; they count as running until [`Schedule::finish`].
    pub fn start(&mut self, now: Instant) -> Vec<Round> {
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
            self.seq += 1;
            round.id = self.seq;
            self.running
                .insert(round.id, (self.seq, round.scope.clone()));
        }
        rounds
    }

    /// Whether a round is queued or running.
    pub fn idle(&self) -> bool {
        self.running.is_empty()
            && !self.pending.all
            && self.pending.tenants.is_empty()
            && self.pending.units.is_empty()
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Records a finished round: each unit's result (`true`: converged) sets its next run (its
    /// interval, or a backoff after a failure); `placed`, when the round read the placement,
    /// replaces the known units in its scope. Returns the waiters the round covered (in part),
    /// each with whether it is now satisfied.
    pub fn finish(
        &mut self,
        id: u64,
        now: Instant,
        results: &[(UnitId, bool)],
        placed: Option<&BTreeMap<UnitId, Plan>>,
    ) -> Vec<(W, bool)> {
        let Some((started, scope)) = self.running.remove(&id) else {
            return Vec::new();
        };
        if let Some(placed) = placed {
            self.learn(&scope, placed, now);
        }
        for (u, ok) in results {
            if let Some(t) = self.units.get_mut(u) {
                if *ok {
                    t.failures = 0;
                    t.next = after(now, jitter(t.plan.interval));
                } else {
                    t.failures += 1;
                    t.next = after(now, backoff(t.failures, t.plan.interval));
                }
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
    pub fn learn(&mut self, scope: &Scope, placed: &BTreeMap<UnitId, Plan>, now: Instant) {
        self.units
            .retain(|u, _| !covers(scope, u) || placed.contains_key(u));
        for (u, plan) in placed.iter().filter(|(u, _)| covers(scope, u)) {
            let timing = self.units.entry(u.clone()).or_insert_with(|| Timing {
                plan: plan.clone(),
                next: after(now, jitter(plan.interval)),
                failures: 0,
            });
            timing.plan = plan.clone();
        }
    }

    /// A round that failed as a whole (no fetch, no API server): its units are retried with
    /// backoff, and a full round after a backoff too.
    pub fn failed_whole(&mut self, id: u64, now: Instant) -> Vec<(W, bool)> {
        let scope = self.running.get(&id).map(|(_, s)| s.clone());
        let units: Vec<(UnitId, bool)> = self
            .units
            .keys()
            .filter(|u| scope.as_ref().is_some_and(|s| covers(s, u)))
            .map(|u| (u.clone(), false))
            .collect();
        let whole = scope == Some(Scope::All);
        let failures = self.all_failures + 1;
        let waiters = self.finish(id, now, &units, None);
        if whole {
            self.all_failures = failures;
            self.next_all = after(now, backoff(failures, self.interval));
        }
        waiters
    }

    /// Every unit known, with its next run.
    pub fn next_runs(&self) -> impl Iterator<Item = (&UnitId, Instant)> {
        self.units.iter().map(|(u, t)| (u, t.next))
    }

    /// Every known unit's plan.
    pub fn plans(&self) -> BTreeMap<UnitId, Plan> {
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

/// Whether a round of `scope` reconciles `unit`.
pub fn covers(scope: &Scope, unit: &UnitId) -> bool {
    match scope {
        Scope::All => true,
        Scope::Tenant(t) => unit.tenant.as_deref() == Some(t.as_str()),
        Scope::Units(units) => units.contains(unit),
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
pub fn jitter(interval: Duration) -> Duration {
    let r = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    let factor = 0.9 + 0.2 * (r % 10_000) as f64 / 10_000.0;
    Duration::try_from_secs_f64(interval.as_secs_f64() * factor).unwrap_or(interval)
}

/// The wait before retry number `failures` (1, 2, ...): 5 s doubling, at most `cap`, ± 10%.
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1 << failures.saturating_sub(1).min(16));
    jitter(exp.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(secs: u64, sources: &[&str]) -> Plan {
        Plan {
            interval: Duration::from_secs(secs),
            suspend: false,
            sources: sources.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn placed(list: &[(UnitId, Plan)]) -> BTreeMap<UnitId, Plan> {
        list.iter().cloned().collect()
    }

    fn done(told: Vec<(u32, bool)>) -> Vec<u32> {
        told.into_iter()
            .filter(|(_, d)| *d)
            .map(|(w, _)| w)
            .collect()
    }

    fn started(s: &mut Schedule<u32>, now: Instant, placement: &BTreeMap<UnitId, Plan>) {
        s.due(now);
        let rounds = s.start(now);
        assert_eq!(rounds.len(), 1);
        assert_eq!(rounds[0].scope, Scope::All);
        s.finish(rounds[0].id, now, &[], Some(placement));
    }

    #[test]
    fn a_burst_of_triggers_coalesces_into_one_round() {
        let now = Instant::now();
        let mut s: Schedule<u32> = Schedule::new(Duration::from_secs(300), now);
        let a = UnitId::app("ai", "a");
        started(&mut s, now, &placed(&[(a.clone(), plan(300, &["r"]))]));
        for i in 0..20 {
            s.request(
                Scope::Units([a.clone()].into()),
                ["r".to_string()].into(),
                "webhook github",
                Some(i),
            );
        }
        let rounds = s.start(now);
        assert_eq!(rounds.len(), 1, "{rounds:?}");
        assert_eq!(rounds[0].scope, Scope::Units([a.clone()].into()));
        // More triggers while it runs: one more round, after this one.
        s.request(
            Scope::Units([a.clone()].into()),
            BTreeSet::new(),
            "sync",
            Some(99),
        );
        s.request(
            Scope::Units([a.clone()].into()),
            BTreeSet::new(),
            "sync",
            Some(100),
        );
        assert!(s.start(now).is_empty(), "the unit is busy");
        let told = done(s.finish(rounds[0].id, now, &[(a.clone(), true)], None));
        assert_eq!(told, (0..20).collect::<Vec<_>>());
        let again = s.start(now);
        assert_eq!(again.len(), 1);
        assert_eq!(
            done(s.finish(again[0].id, now, &[(a, true)], None)),
            vec![99, 100]
        );
        assert!(s.idle());
    }

    #[test]
    fn due_units_by_interval_failures_back_off_and_suspended_units_wait() {
        let now = Instant::now();
        let mut s: Schedule<u32> = Schedule::new(Duration::from_secs(300), now);
        let (a, b, c) = (
            UnitId::app("ai", "a"),
            UnitId::app("ai", "b"),
            UnitId::app("web", "c"),
        );
        let mut off = plan(60, &["rc"]);
        off.suspend = true;
        started(
            &mut s,
            now,
            &placed(&[
                (a.clone(), plan(60, &["ra"])),
                (b.clone(), plan(600, &["rb"])),
                (c.clone(), off),
            ]),
        );
        s.due(now + Duration::from_secs(70));
        let rounds = s.start(now);
        assert_eq!(rounds.len(), 1);
        assert_eq!(rounds[0].scope, Scope::Units([a.clone()].into()));
        assert_eq!(rounds[0].fresh, Some(["ra".to_string()].into()));
        let t = now + Duration::from_secs(70);
        s.finish(rounds[0].id, t, &[(a.clone(), false)], None);
        let retry = s.next_wake();
        assert!(
            retry >= t + Duration::from_millis(4500) && retry <= t + Duration::from_millis(5500)
        );
        // Repeated failures double the wait, capped at the interval.
        for _ in 0..10 {
            s.request(
                Scope::Units([a.clone()].into()),
                BTreeSet::new(),
                "retry",
                None,
            );
            let r = s.start(now);
            s.finish(r[0].id, t, &[(a.clone(), false)], None);
        }
        let wait = s.next_wake() - t;
        assert!(wait <= Duration::from_secs(66), "{wait:?}");
        assert!(wait >= Duration::from_secs(54), "{wait:?}");
    }

    #[test]
    fn a_periodic_full_round_leaves_units_alone_until_their_own_interval() {
        let now = Instant::now();
        let mut s: Schedule<u32> = Schedule::new(Duration::from_secs(10), now);
        let (hourly, often) = (UnitId::app("ai", "hourly"), UnitId::app("ai", "often"));
        started(
            &mut s,
            now,
            &placed(&[
                (hourly.clone(), plan(3600, &[])),
                (often.clone(), plan(10, &[])),
            ]),
        );
        s.due(now + Duration::from_secs(12));
        let rounds = s.start(now);
        assert_eq!(rounds.len(), 1);
        assert_eq!(rounds[0].scope, Scope::All);
        assert_eq!(rounds[0].skip, [hourly.clone()].into());
        s.finish(rounds[0].id, now, &[(often, false)], None);
        // A sync asked for by someone skips nothing; the failure is remembered for dependsOn.
        s.request(Scope::All, BTreeSet::new(), "sync", None);
        let asked = s.start(now);
        assert!(asked[0].skip.is_empty());
        assert_eq!(
            asked[0].prior.get(&UnitId::app("ai", "often")),
            Some(&false)
        );
        assert_eq!(asked[0].prior.get(&hourly), Some(&true));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..200 {
            let j = jitter(Duration::from_secs(100));
            assert!(j >= Duration::from_secs(90) && j <= Duration::from_secs(110));
        }
    }

    /// Issue 14: a full round held up by a tenant's slow units does not hold up a push of
    /// another tenant's app: the asked-for round starts beside it.
    #[test]
    fn an_asked_for_round_starts_beside_a_running_full_round() {
        let now = Instant::now();
        let mut s: Schedule<u32> = Schedule::new(Duration::from_secs(300), now);
        let a = UnitId::app("ai", "a");
        started(&mut s, now, &placed(&[(a.clone(), plan(300, &["r"]))]));
        s.request(Scope::All, BTreeSet::new(), "sync", None);
        let full = s.start(now);
        assert_eq!(full.len(), 1);
        s.request(
            Scope::Units([a.clone()].into()),
            ["r".to_string()].into(),
            "webhook github",
            Some(1),
        );
        s.request(Scope::Tenant("web".into()), BTreeSet::new(), "sync", None);
        let beside = s.start(now);
        let scopes: Vec<&Scope> = beside.iter().map(|r| &r.scope).collect();
        assert_eq!(
            scopes,
            [
                &Scope::Tenant("web".into()),
                &Scope::Units([a.clone()].into())
            ]
        );
        // Not twice beside each other: the unit is busy in its own round now.
        s.request(
            Scope::Units([a.clone()].into()),
            BTreeSet::new(),
            "sync",
            None,
        );
        assert!(s.start(now).is_empty());
    }

    #[test]
    fn a_full_round_waits_for_running_rounds_and_holds_back_new_ones() {
        let now = Instant::now();
        let mut s: Schedule<u32> = Schedule::new(Duration::from_secs(300), now);
        let a = UnitId::app("ai", "a");
        let b = UnitId::app("web", "b");
        started(
            &mut s,
            now,
            &placed(&[(a.clone(), plan(300, &[])), (b.clone(), plan(300, &[]))]),
        );
        s.request(
            Scope::Units([a.clone()].into()),
            BTreeSet::new(),
            "sync",
            None,
        );
        let first = s.start(now);
        s.request(Scope::All, BTreeSet::new(), "webhook", Some(1));
        s.request(
            Scope::Units([b.clone()].into()),
            BTreeSet::new(),
            "sync",
            None,
        );
        assert!(s.start(now).is_empty());
        assert!(done(s.finish(first[0].id, now, &[(a, true)], None)).is_empty());
        let full = s.start(now);
        assert_eq!(full[0].scope, Scope::All);
        assert_eq!(full[0].fresh, None);
        assert_eq!(done(s.finish(full[0].id, now, &[], None)), vec![1]);
        assert!(s.idle(), "the full round took the pending unit");
    }

    #[test]
    fn tenant_and_unit_rounds_run_side_by_side_when_disjoint() {
        let now = Instant::now();
        let mut s: Schedule<u32> = Schedule::new(Duration::from_secs(300), now);
        let a = UnitId::app("ai", "a");
        let b = UnitId::app("web", "b");
        started(
            &mut s,
            now,
            &placed(&[(a.clone(), plan(300, &[])), (b.clone(), plan(300, &[]))]),
        );
        s.request(
            Scope::Tenant("ai".into()),
            ["t".into()].into(),
            "webhook",
            Some(1),
        );
        s.request(
            Scope::Units([a.clone(), b.clone()].into()),
            BTreeSet::new(),
            "sync",
            Some(2),
        );
        let rounds = s.start(now);
        let scopes: Vec<&Scope> = rounds.iter().map(|r| &r.scope).collect();
        assert_eq!(
            scopes,
            vec![
                &Scope::Tenant("ai".into()),
                &Scope::Units([b.clone()].into())
            ]
        );
        // The sync of both units hears of b's round, and is satisfied by a's.
        assert_eq!(
            s.finish(rounds[1].id, now, &[(b, true)], None),
            vec![(2, false)]
        );
        assert_eq!(
            done(s.finish(rounds[0].id, now, &[(a, true)], None)),
            vec![1, 2]
        );
    }
}
