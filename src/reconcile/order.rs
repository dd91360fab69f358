//! The order of a pass: dependency levels, and whether a unit is held back by a unit it waits
//! for (an app of its tenant, an infra unit it or its tenant names, or for an infra unit another
//! infra unit).

use std::collections::{BTreeMap, BTreeSet};

use crate::failure::{Failure, Kind};
use crate::fleet::{Fleet, Unit, UnitId};

/// The units `unit` waits for.
fn dependencies(unit: &Unit) -> impl Iterator<Item = UnitId> + '_ {
    same_kind(unit).chain(unit.after_infra.iter().map(|d| UnitId::infra_named(d)))
}

/// The units of its own kind `unit` depends on: apps of its tenant, or for an infra layer other
/// layers.
fn same_kind(unit: &Unit) -> impl Iterator<Item = UnitId> + '_ {
    unit.depends_on.iter().map(|d| match &unit.id.tenant {
        Some(t) => UnitId::app(t, d),
        None => UnitId::infra_named(d),
    })
}

/// Why `unit` is held back, if a unit it waits for did not converge (in this pass, or when it
/// last ran): of that unit's kind, since a transient failure may pass on its own retry and a
/// permanent one waits for a change, and so does this unit.
pub(super) fn held_back(
    unit: &Unit,
    done: &BTreeMap<UnitId, bool>,
    stuck: &BTreeSet<UnitId>,
) -> Option<Failure> {
    let dep = dependencies(unit).find(|d| done.get(d) == Some(&false))?;
    let kind = if stuck.contains(&dep) {
        Kind::Permanent
    } else {
        Kind::Transient
    };
    Some(Failure::new(
        kind,
        format!(
            "not applied: it depends on {}, which did not converge",
            dep.app
        ),
    ))
}

/// The units something waits for: their sets wait for health, so that "converged" means ready.
/// What the platform says counts (an infra layer's `dependsOn`, a tenant's in its fleet file,
/// an app's on an app of its tenant); an app's own `dependsOn` on a layer does not: a tenant may
/// wait for infra, but cannot make infra wait for its health.
pub(super) fn waited_for(units: &[Unit], fleet: &Fleet) -> BTreeSet<UnitId> {
    units
        .iter()
        .flat_map(|unit| {
            let tenants = unit
                .id
                .tenant
                .as_ref()
                .and_then(|t| fleet.tenants.get(t))
                .into_iter()
                .flat_map(|t| t.depends_on.iter().map(|d| UnitId::infra_named(d)));
            same_kind(unit).chain(tenants).collect::<Vec<_>>()
        })
        .collect()
}

/// Groups units so that each comes after the units it depends on (the fleet refuses cycles).
pub(super) fn levels<'a>(units: &[&'a Unit]) -> Vec<Vec<&'a Unit>> {
    let mut level: BTreeMap<&UnitId, usize> = BTreeMap::new();
    let by_id: BTreeMap<(Option<&str>, &str), &Unit> = units
        .iter()
        .map(|u| ((u.id.tenant.as_deref(), u.id.app.as_str()), *u))
        .collect();
    fn depth<'a>(
        u: &'a Unit,
        by_id: &BTreeMap<(Option<&str>, &str), &'a Unit>,
        level: &mut BTreeMap<&'a UnitId, usize>,
        guard: usize,
    ) -> usize {
        if let Some(l) = level.get(&u.id) {
            return *l;
        }
        let l = if guard > 64 {
            0
        } else {
            u.depends_on
                .iter()
                .filter_map(|d| by_id.get(&(u.id.tenant.as_deref(), d.as_str())))
                .map(|d| depth(d, by_id, level, guard + 1) + 1)
                .max()
                .unwrap_or(0)
        };
        level.insert(&u.id, l);
        l
    }
    let mut out: Vec<Vec<&Unit>> = Vec::new();
    for u in units {
        let l = depth(u, &by_id, &mut level, 0);
        if out.len() <= l {
            out.resize_with(l + 1, Vec::new);
        }
        out[l].push(u);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{Identity, UnitOptions, UnitSource};

    fn unit(id: UnitId, depends_on: &[&str], after_infra: &[&str]) -> Unit {
        Unit {
            decryption: Vec::new(),
            id,
            identity: Identity::Agent,
            namespace: None,
            source: UnitSource::Fleet { path: "x".into() },
            values: serde_json::json!({}),
            values_files: vec![],
            release_name: "r".into(),
            vars: BTreeMap::new(),
            depends_on: depends_on.iter().map(|s| s.to_string()).collect(),
            after_infra: after_infra.iter().map(|s| s.to_string()).collect(),
            options: UnitOptions::default(),
            limits: None,
        }
    }

    #[test]
    fn a_tenant_app_cannot_make_infra_wait_for_its_health_but_the_fleet_can() {
        let units = vec![
            unit(UnitId::infra_named("infra/a"), &[], &[]),
            unit(UnitId::infra_named("infra/b"), &["infra/a"], &[]),
            unit(UnitId::infra_named("infra/c"), &[], &[]),
            unit(UnitId::app("ai", "web"), &["db"], &["infra/c"]),
            unit(UnitId::app("ai", "db"), &[], &[]),
        ];
        let mut fleet = Fleet::default();
        let waited = waited_for(&units, &fleet);
        assert_eq!(
            waited,
            [UnitId::infra_named("infra/a"), UnitId::app("ai", "db")].into(),
            "an app's own dependsOn on infra/c does not make infra/c wait"
        );
        // The fleet's tenant file does.
        let mut ai = crate::fleet::Tenant {
            decryption: Vec::new(),
            name: "ai".into(),
            namespaces: vec!["ai".into()],
            service_account: "sa".into(),
            role: "admin".into(),
            source: crate::config::SourceSpec {
                location: crate::config::SourceLocation::Dir("/x".into()),
                reference: crate::config::GitRef::DefaultBranch,
                path: None,
                credentials: None,
                verify: None,
            },
            clusters: vec![],
            interval: None,
            prune: true,
            suspend: false,
            vars: BTreeMap::new(),
            cluster_scoped_kinds: vec![],
            credentials: vec![],
            schemes: vec![],
            remote_bases: false,
            on_removal: Default::default(),
            namespace_policy: Default::default(),
            namespace_overrides: Default::default(),
            depends_on: vec![],
            app_verify: None,
            file: "tenants/ai.yaml".into(),
        };
        ai.depends_on = vec!["infra/c".into()];
        fleet.tenants.insert("ai".into(), ai);
        assert!(waited_for(&units, &fleet).contains(&UnitId::infra_named("infra/c")));
        // Held back by a layer that did not converge, of its kind.
        let done = BTreeMap::from([(UnitId::infra_named("infra/c"), false)]);
        let why = held_back(&units[3], &done, &[UnitId::infra_named("infra/c")].into()).unwrap();
        assert_eq!(why.kind, Kind::Permanent);
        assert!(why.message.contains("infra/c"), "{why:?}");
        assert!(held_back(&units[3], &BTreeMap::new(), &BTreeSet::new()).is_none());
    }
}
