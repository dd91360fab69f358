//! Tests of `schedule.rs`.
use super::*;

fn plan(secs: u64, sources: &[&str]) -> Plan {
    Plan {
        interval: Duration::from_secs(secs),
        suspend: false,
        sources: sources.iter().map(|s| s.to_string()).collect(),
        source: String::new(),
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
    let told = done(s.finish(rounds[0].id, now, &[(a.clone(), None)], None));
    assert_eq!(told, (0..20).collect::<Vec<_>>());
    let again = s.start(now);
    assert_eq!(again.len(), 1);
    assert_eq!(
        done(s.finish(again[0].id, now, &[(a, None)], None)),
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
    s.finish(rounds[0].id, t, &[(a.clone(), Some(Kind::Transient))], None);
    let retry = s.next_wake();
    assert!(retry >= t + Duration::from_millis(4500) && retry <= t + Duration::from_millis(5500));
    // Repeated failures double the wait, capped at the interval.
    for _ in 0..10 {
        s.request(
            Scope::Units([a.clone()].into()),
            BTreeSet::new(),
            "retry",
            None,
        );
        let r = s.start(now);
        s.finish(r[0].id, t, &[(a.clone(), Some(Kind::Transient))], None);
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
    s.finish(rounds[0].id, now, &[(often, Some(Kind::Transient))], None);
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
    assert!(done(s.finish(first[0].id, now, &[(a, None)], None)).is_empty());
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
        s.finish(rounds[1].id, now, &[(b, None)], None),
        vec![(2, false)]
    );
    assert_eq!(
        done(s.finish(rounds[0].id, now, &[(a, None)], None)),
        vec![1, 2]
    );
}

#[test]
fn a_permanent_failure_waits_the_interval_and_restarts_the_backoff() {
    let now = Instant::now();
    let mut s: Schedule<u32> = Schedule::new(Duration::from_secs(3600), now);
    let a = UnitId::app("ai", "a");
    started(&mut s, now, &placed(&[(a.clone(), plan(3600, &["ra"]))]));
    let run = |s: &mut Schedule<u32>, result: Option<Kind>| {
        s.request(Scope::Units([a.clone()].into()), BTreeSet::new(), "t", None);
        let r = s.start(now);
        s.finish(r[0].id, now, &[(a.clone(), result)], None);
        s.next_wake() - now
    };
    // Transient failures back off: 5 s, 10 s, 20 s.
    for secs in [5, 10, 20] {
        let wait = run(&mut s, Some(Kind::Transient));
        let centre = Duration::from_secs(secs);
        assert!(
            wait >= centre.mul_f64(0.89) && wait <= centre.mul_f64(1.11),
            "{wait:?}"
        );
    }
    // A permanent one waits the interval, and its unit is stuck for its dependents.
    let wait = run(&mut s, Some(Kind::Permanent));
    assert!(wait >= Duration::from_secs(3200), "{wait:?}");
    s.request(Scope::All, BTreeSet::new(), "t", None);
    let r = s.start(now);
    assert_eq!(r[0].stuck, [a.clone()].into());
    assert_eq!(r[0].prior.get(&a), Some(&false));
    s.finish(r[0].id, now, &[], None);
    // The next transient failure starts the backoff again at 5 s.
    let wait = run(&mut s, Some(Kind::Transient));
    assert!(wait <= Duration::from_millis(5500), "{wait:?}");
}
