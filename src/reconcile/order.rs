//! The order of a pass: dependency levels, and whether a unit is held back by a unit it waits
//! for (an app of its tenant, an infra unit it or its tenant names, or for an infra unit another
//! infra unit).

use std::collections::{BTreeMap, BTreeSet};

use crate::failure::{Failure, Kind};
use crate::fleet::{Unit, UnitId};

/// The units `unit` waits for.
fn dependencies(unit: &Unit) -> impl Iterator<Item = UnitId> + '_ {
    let own = unit.depends_on.iter().map(|d| match &unit.id.tenant {
        Some(t) => UnitId::app(t, d),
        None => UnitId::infra_named(d),
    });
    own.chain(unit.after_infra.iter().map(|d| UnitId::infra_named(d)))
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
pub(super) fn waited_for(units: &[Unit]) -> BTreeSet<UnitId> {
    units.iter().flat_map(dependencies).collect()
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
