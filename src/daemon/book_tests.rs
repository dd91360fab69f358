//! Tests of `book.rs`: the bookkeeping of finished rounds, driven without I/O.
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::*;
use crate::agent::{Plan, Target};
use crate::config::GitRef;
use crate::daemon::round::View;
use crate::fleet::{Owner, Problem};
use crate::reconcile::Outcome;

/// A waiting caller: a number and its scope.
#[derive(Clone, Debug, PartialEq)]
struct Caller(u32, Scope);

impl super::Caller for Caller {
    fn scope(&self) -> &Scope {
        &self.1
    }
}

const HOUR: Duration = Duration::from_secs(3600);

fn plan() -> Plan {
    Plan {
        interval: HOUR,
        suspend: false,
        sources: vec!["repo".into()],
        source: "tenant repo: app".into(),
    }
}

fn view(fleet: &str, units: &[&UnitId]) -> View {
    View {
        fleet_revision: fleet.into(),
        tenant_revisions: BTreeMap::new(),
        plans: units.iter().map(|u| ((*u).clone(), plan())).collect(),
        problems: BTreeMap::new(),
        tenants_failed: BTreeSet::new(),
        signers: BTreeMap::new(),
        everywhere: units.iter().map(|u| (*u).clone()).collect(),
        targets: vec![Target {
            url: "/srv/ai".into(),
            reference: GitRef::Branch("main".into()),
            key: "ai".into(),
            scope: Scope::Tenant("ai".into()),
        }],
    }
}

fn entry(unit: &UnitId, failed: Option<Failure>) -> Entry {
    Entry {
        name: format!(
            "tenant {}, app {}",
            unit.tenant.as_deref().unwrap_or(""),
            unit.app
        ),
        unit: Some(unit.clone()),
        tenant: unit.tenant.clone(),
        revision: Some("abc".into()),
        outcome: Outcome {
            applied: vec!["ConfigMap ai/x".into()],
            failed: failed.into_iter().collect(),
            ..Default::default()
        },
    }
}

fn done(id: u64, scope: Scope, entries: Vec<Entry>, view: Option<View>) -> Done {
    Done {
        id,
        scope,
        entries,
        error: None,
        view,
    }
}

/// Starts the round asked for by `scope` and returns its id.
fn start(s: &mut Schedule<Caller>, scope: Scope, waiter: Option<Caller>, now: Instant) -> u64 {
    s.request(scope, BTreeSet::new(), "test", waiter);
    let rounds = s.start(now);
    assert_eq!(rounds.len(), 1, "{rounds:?}");
    rounds[0].id
}

/// A schedule and book after a first full round placing `units`, all converged.
fn placed(units: &[&UnitId], now: Instant) -> (Schedule<Caller>, Book) {
    let mut s = Schedule::new(HOUR, now);
    let mut book = Book::default();
    s.due(now);
    let first = s.start(now);
    let entries = units.iter().map(|u| entry(u, None)).collect();
    let d = done(first[0].id, Scope::All, entries, Some(view("f1", units)));
    let notices = record(&mut book, &mut s, &d, now, "t0");
    assert!(notices.contains(&Notice::Ready), "{notices:?}");
    (s, book)
}

fn next_run(s: &Schedule<Caller>, unit: &UnitId, now: Instant) -> Duration {
    s.next_runs()
        .find(|(u, _)| *u == unit)
        .map(|(_, at)| at - now)
        .expect("known unit")
}

#[test]
fn the_first_full_round_makes_the_agent_ready_once_and_fills_the_status() {
    let now = Instant::now();
    let a = UnitId::app("ai", "a");
    let (mut s, mut book) = placed(&[&a], now);
    assert!(book.status.ready);
    assert_eq!(book.status.fleet_revision.as_deref(), Some("f1"));
    assert_eq!(book.status.units[&a].result, "converged");
    assert_eq!(book.status.units[&a].last_run.as_deref(), Some("t0"));
    assert_eq!(book.status.tenants, ["ai".to_string()].into());
    // A second full round is not a second Ready.
    let id = start(&mut s, Scope::All, None, now);
    let d = done(
        id,
        Scope::All,
        vec![entry(&a, None)],
        Some(view("f1", &[&a])),
    );
    let notices = record(&mut book, &mut s, &d, now, "t1");
    assert!(!notices.contains(&Notice::Ready), "{notices:?}");
    assert!(notices.iter().any(|n| matches!(n,
        Notice::Reconciled { unit, result: None, .. } if unit == "ai/a")));
}

#[test]
fn failures_are_retried_by_their_kind_and_counted_with_it() {
    let now = Instant::now();
    let (a, b, c) = (
        UnitId::app("ai", "a"),
        UnitId::app("ai", "b"),
        UnitId::app("ai", "c"),
    );
    let (mut s, mut book) = placed(&[&a, &b, &c], now);
    let id = start(&mut s, Scope::Tenant("ai".into()), None, now);
    let entries = vec![
        entry(&a, Some(Failure::transient("ConfigMap ai/x: 503"))),
        entry(&b, Some(Failure::permanent("ConfigMap ai/x: 422 Invalid"))),
        entry(&c, None),
    ];
    let d = done(
        id,
        Scope::Tenant("ai".into()),
        entries,
        Some(view("f1", &[&a, &b, &c])),
    );
    let notices = record(&mut book, &mut s, &d, now, "t1");

    // Transient: retried in about 5 s; permanent: at the interval, like a converged unit.
    let soon = next_run(&s, &a, now);
    assert!(
        soon >= Duration::from_millis(4500) && soon <= Duration::from_millis(5500),
        "{soon:?}"
    );
    for unit in [&b, &c] {
        let later = next_run(&s, unit, now);
        assert!(
            later >= HOUR.mul_f64(0.89) && later <= HOUR.mul_f64(1.11),
            "{unit}: {later:?}"
        );
    }
    let kind_of = |name: &str| {
        notices.iter().find_map(|n| match n {
            Notice::Reconciled { unit, result, .. } if unit == name => Some(*result),
            _ => None,
        })
    };
    assert_eq!(kind_of("ai/a"), Some(Some(Kind::Transient)));
    assert_eq!(kind_of("ai/b"), Some(Some(Kind::Permanent)));
    assert_eq!(kind_of("ai/c"), Some(None));
    assert_eq!(book.status.units[&b].result, "failed");
    assert_eq!(
        book.status.units[&b].last_error.as_deref(),
        Some("ConfigMap ai/x: 422 Invalid")
    );
}

#[test]
fn a_round_failed_as_a_whole_fails_its_units_and_tells_its_callers() {
    let now = Instant::now();
    let a = UnitId::app("ai", "a");
    let (mut s, mut book) = placed(&[&a], now);
    let caller = Caller(7, Scope::All);
    let id = start(&mut s, Scope::All, Some(caller.clone()), now);
    let mut d = done(id, Scope::All, Vec::new(), None);
    d.error = Some(Failure::transient(
        "fleet: /srv/fleet: connection refused\nmore",
    ));
    let notices = record(&mut book, &mut s, &d, now, "t1");
    assert_eq!(book.status.units[&a].result, "failed");
    assert_eq!(
        book.status.error.as_deref(),
        Some("fleet: /srv/fleet: connection refused\nmore")
    );
    let message = "fleet: /srv/fleet: connection refused\nmore".to_string();
    assert_eq!(
        notices
            .iter()
            .filter(|n| !matches!(n, Notice::Reconciled { .. }))
            .collect::<Vec<_>>(),
        vec![
            &Notice::SyncFailed("fleet: /srv/fleet: connection refused".into()),
            &Notice::Tell(caller.clone(), SyncEvent::Error { message }),
            &Notice::Done(caller),
        ]
    );
    // Transient: the unit and the next full round come back soon.
    assert!(next_run(&s, &a, now) <= Duration::from_millis(5500));
    assert!(s.next_wake() <= now + Duration::from_millis(5500));
}

#[test]
fn a_permanent_whole_round_failure_waits_for_the_interval() {
    let now = Instant::now();
    let a = UnitId::app("ai", "a");
    let (mut s, mut book) = placed(&[&a], now);
    let id = start(&mut s, Scope::All, None, now);
    let mut d = done(id, Scope::All, Vec::new(), None);
    d.error = Some(Failure::permanent("cluster \"dev\" is not in the fleet"));
    record(&mut book, &mut s, &d, now, "t1");
    assert!(next_run(&s, &a, now) >= HOUR.mul_f64(0.89));
    assert!(s.next_wake() >= now + HOUR.mul_f64(0.89));
}

#[test]
fn callers_hear_of_their_own_sets_routed_by_unit_and_tenant() {
    let now = Instant::now();
    let (a, w) = (UnitId::app("ai", "a"), UnitId::app("web", "w"));
    let (mut s, mut book) = placed(&[&a, &w], now);
    let ai = Caller(1, Scope::Tenant("ai".into()));
    let only_w = Caller(2, Scope::Units([w.clone()].into()));
    s.request(
        Scope::Tenant("ai".into()),
        BTreeSet::new(),
        "t",
        Some(ai.clone()),
    );
    s.request(
        Scope::Units([w.clone()].into()),
        BTreeSet::new(),
        "t",
        Some(only_w.clone()),
    );
    s.request(Scope::All, BTreeSet::new(), "t", None);
    s.due(now);
    let rounds = s.start(now);
    let all = rounds.iter().find(|r| r.scope == Scope::All).map(|r| r.id);
    let id = all.unwrap_or_else(|| rounds[0].id);
    let onboarding = |tenant: &str| Entry {
        name: format!("tenant {tenant}: onboarding"),
        unit: None,
        tenant: Some(tenant.into()),
        revision: None,
        outcome: Outcome::default(),
    };
    let entries = vec![
        onboarding("ai"),
        onboarding("web"),
        entry(&a, None),
        entry(&w, Some(Failure::permanent("x"))),
    ];
    let d = done(id, Scope::All, entries, Some(view("f1", &[&a, &w])));
    let notices = record(&mut book, &mut s, &d, now, "t1");
    let heard = |c: &Caller| -> Vec<String> {
        notices
            .iter()
            .filter_map(|n| match n {
                Notice::Tell(to, SyncEvent::Set { name, .. }) if to == c => Some(name.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        heard(&ai),
        vec!["tenant ai: onboarding", "tenant ai, app a"]
    );
    assert_eq!(heard(&only_w), vec!["tenant web, app w"]);
    let kind = notices.iter().find_map(|n| match n {
        Notice::Tell(to, SyncEvent::Set { kind, .. }) if *to == only_w => Some(*kind),
        _ => None,
    });
    assert_eq!(kind, Some(Some(Kind::Permanent)));
    for c in [&ai, &only_w] {
        assert!(
            notices.contains(&Notice::Done(c.clone())),
            "{c:?}: {notices:?}"
        );
    }
}

#[test]
fn a_narrow_round_that_sees_a_new_fleet_revision_asks_for_a_full_round() {
    let now = Instant::now();
    let a = UnitId::app("ai", "a");
    let (mut s, mut book) = placed(&[&a], now);
    let id = start(&mut s, Scope::Units([a.clone()].into()), None, now);
    let d = done(
        id,
        Scope::Units([a.clone()].into()),
        vec![entry(&a, None)],
        Some(view("f2", &[&a])),
    );
    record(&mut book, &mut s, &d, now, "t1");
    let next = s.start(now);
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(next[0].scope, Scope::All);
    assert!(next[0].reasons.contains("fleet changed"));
}

#[test]
fn the_units_of_a_tenant_that_could_not_be_read_are_kept_and_failed_with_its_problem() {
    let now = Instant::now();
    let a = UnitId::app("ai", "a");
    let (mut s, mut book) = placed(&[&a], now);
    let id = start(&mut s, Scope::All, None, now);
    let mut v = view("f1", &[]);
    v.tenants_failed.insert("ai".into());
    v.problems.insert(
        Some("ai".into()),
        vec![Problem::of_kind(
            Owner::Tenant("ai".into()),
            "source: connection refused",
            Kind::Transient,
        )],
    );
    let d = done(id, Scope::All, Vec::new(), Some(v));
    record(&mut book, &mut s, &d, now, "t1");
    assert!(book.status.plans.contains_key(&a), "kept");
    assert_eq!(book.status.units[&a].result, "failed");
    assert_eq!(
        book.status.units[&a].last_error.as_deref(),
        Some("tenant ai: source: connection refused")
    );
    assert!(
        next_run(&s, &a, now) <= Duration::from_millis(5500),
        "transient"
    );
}

#[test]
fn a_round_finishing_while_the_agent_stops_does_not_make_it_ready_again() {
    let now = Instant::now();
    let a = UnitId::app("ai", "a");
    let mut s: Schedule<Caller> = Schedule::new(HOUR, now);
    let mut book = Book {
        stopping: true,
        ..Default::default()
    };
    s.due(now);
    let first = s.start(now);
    let d = done(
        first[0].id,
        Scope::All,
        vec![entry(&a, None)],
        Some(view("f1", &[&a])),
    );
    let notices = record(&mut book, &mut s, &d, now, "t0");
    assert!(!notices.contains(&Notice::Ready), "{notices:?}");
    assert!(!book.status.ready);
    assert_eq!(book.status.units[&a].result, "converged");
}
