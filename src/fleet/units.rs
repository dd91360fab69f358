//! From the fleet and the tenants' catalogs to one cluster's units: placement of tenants,
//! per-cluster enablement and values, app paths with variables, and `dependsOn` checks.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    AppSource, Catalog, Cluster, Fleet, Identity, InfraUnit, Limits, Owner, Problem, Tenant, Unit,
    UnitId, UnitOptions, UnitSource, ValuesFile, layers,
};
use crate::config::check_subpath;
use crate::subst::{Vars, deep_merge, substitute};

/// One cluster's units, and the problems that kept tenants or units out.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    /// The tenants that land on this cluster, by name (including any that failed).
    pub tenants: Vec<String>,
    /// The units that are good to render, infra first, then by tenant and catalog order.
    pub units: Vec<Unit>,
    pub problems: Vec<Problem>,
}

/// Computes `cluster`'s units. `catalogs` holds the catalogs that could be read; a placed tenant
/// without one yields no units (its read error is the caller's to report).
pub fn place(fleet: &Fleet, cluster: &Cluster, catalogs: &BTreeMap<String, Catalog>) -> Placement {
    let mut placement = Placement::default();
    for infra in &cluster.infra {
        placement.units.push(infra_unit(cluster, infra));
    }
    let placed: Vec<&Tenant> = fleet
        .tenants
        .values()
        .filter(|t| t.lands_on(cluster))
        .collect();
    placement.tenants = placed.iter().map(|t| t.name.clone()).collect();

    // Two tenants owning one namespace on the same cluster could overwrite each other's objects:
    // neither is applied until the fleet says whose it is.
    let mut owners: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for t in &placed {
        for ns in &t.namespaces {
            owners.entry(ns).or_default().push(&t.name);
        }
    }
    let mut conflicted = BTreeSet::new();
    for (ns, names) in owners.iter().filter(|(_, names)| names.len() > 1) {
        for name in names {
            conflicted.insert(*name);
            placement.problems.push(Problem::new(
                Owner::Tenant(name.to_string()),
                format!(
                    "namespace {ns} on cluster {} is claimed by tenants {}",
                    cluster.name,
                    names.join(", ")
                ),
            ));
        }
    }

    for tenant in placed
        .into_iter()
        .filter(|t| !conflicted.contains(t.name.as_str()))
    {
        if let Some(catalog) = catalogs.get(&tenant.name) {
            tenant_units(cluster, tenant, catalog, &mut placement);
        }
    }
    // Infra units in dependsOn order, and tenant apps after the infra units they name.
    let held = layers::check_layers(cluster, &placement.units, &mut placement.problems);
    placement.units.retain(|u| !held.contains(&u.id));
    placement
}

fn infra_unit(cluster: &Cluster, infra: &InfraUnit) -> Unit {
    let mut vars = cluster_vars(cluster);
    vars.extend(
        cluster
            .vars
            .iter()
            .map(|(k, v)| (format!("vars.{k}"), v.clone())),
    );
    Unit {
        decryption: cluster.decryption.clone(),
        id: UnitId::infra_named(&infra.name),
        identity: Identity::Agent,
        namespace: infra.namespace.clone(),
        source: match &infra.chart {
            Some(chart) => UnitSource::Chart(chart.clone()),
            None => UnitSource::Fleet {
                path: infra.path.clone(),
            },
        },
        values: infra.values.clone(),
        values_files: Vec::new(),
        release_name: infra.name.replace('/', "-"),
        vars,
        depends_on: infra.depends_on.clone(),
        after_infra: Vec::new(),
        options: UnitOptions {
            wait: infra.wait,
            timeout: infra.timeout,
            ..UnitOptions::default()
        },
        limits: None,
    }
}

fn cluster_vars(cluster: &Cluster) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::from([("cluster.name".to_string(), cluster.name.clone())]);
    vars.extend(
        cluster
            .labels
            .iter()
            .map(|(k, v)| (format!("cluster.labels.{k}"), v.clone())),
    );
    vars
}

/// The most an app's values (its own merged with its clusters' entries) may weigh, as JSON.
pub(super) const MAX_VALUES_BYTES: usize = 1 << 20;

fn tenant_units(cluster: &Cluster, tenant: &Tenant, catalog: &Catalog, placement: &mut Placement) {
    let mut units = Vec::new();
    // In `tenant.yaml`, `infra/<name>` names a layer; a bare `infra` names the cluster's single
    // infra unit unless the tenant has an app of that name (which it meant before layers).
    let infra_ref = |d: &String| {
        layers::is_infra_name(d)
            && (d != layers::INFRA || !catalog.apps.iter().any(|a| a.name == *d))
    };
    for app in &catalog.apps {
        let mut enabled = app.enabled;
        let mut values = app.values.clone();
        let mut files = app.values_files.clone();
        for entry in catalog
            .clusters
            .iter()
            .filter(|e| e.matcher.matches(cluster))
        {
            for (_, o) in entry.apps.iter().filter(|(name, _)| *name == app.name) {
                enabled = o.enabled.unwrap_or(enabled);
                if let Some(v) = &o.values {
                    deep_merge(&mut values, v);
                }
                files.extend(o.values_files.iter().cloned());
            }
        }
        if !enabled {
            continue;
        }
        let id = UnitId::app(&tenant.name, &app.name);
        let namespace = app
            .namespace
            .clone()
            .unwrap_or_else(|| tenant.namespaces[0].clone());
        let mut vars = cluster_vars(cluster);
        vars.insert("tenant.name".into(), tenant.name.clone());
        vars.insert("app.name".into(), app.name.clone());
        vars.insert("app.namespace".into(), namespace.clone());
        // Cluster vars, then the tenant's over them.
        for (k, v) in cluster.vars.iter().chain(&tenant.vars) {
            vars.insert(format!("vars.{k}"), v.clone());
        }
        let fail = |detail: String| Problem::new(Owner::Unit(id.clone()), detail);
        let path_in = |field: &str, path: &str| -> Result<String, Problem> {
            let substituted = substitute(
                path,
                &Vars {
                    flat: &vars,
                    values: &values,
                },
            )
            .map_err(|failure| match failure {
                crate::subst::Failure::Undefined(undefined) => {
                    let names: Vec<String> = undefined
                        .iter()
                        .map(|u| format!("${{{}}}", u.name))
                        .collect();
                    fail(format!(
                        "tenant.yaml: {field} {path:?}: undefined variable {}",
                        names.join(", ")
                    ))
                }
                too_large => fail(format!("tenant.yaml: {field} {path:?}: {too_large}")),
            })?;
            check_subpath(&substituted)
                .map_err(|why| fail(format!("tenant.yaml: {field} {path:?} becomes {why}")))?;
            Ok(substituted.into_owned())
        };
        let path_of = |path: &str| path_in("source.path", path);
        let values_files: Result<Vec<ValuesFile>, Problem> = files
            .iter()
            .map(|f| {
                Ok(ValuesFile {
                    path: path_in("valuesFiles", &f.path)?,
                    optional: f.optional,
                })
            })
            .collect();
        let values_files = match values_files {
            Ok(files) => files,
            Err(problem) => {
                placement.problems.push(problem);
                continue;
            }
        };
        let source = match &app.source {
            AppSource::Tenant { path } => path_of(path).map(|path| UnitSource::Tenant { path }),
            AppSource::Repo(spec) => match &spec.path {
                Some(p) => path_of(p).map(|p| {
                    UnitSource::Repo(crate::config::SourceSpec {
                        path: Some(p),
                        ..spec.clone()
                    })
                }),
                None => Ok(UnitSource::Repo(spec.clone())),
            },
            AppSource::Chart(spec) => Ok(UnitSource::Chart(spec.clone())),
        };
        let source = match source {
            Ok(s) => s,
            Err(problem) => {
                placement.problems.push(problem);
                continue;
            }
        };
        let size = serde_json::to_string(&values).map_or(0, |s| s.len());
        if size > MAX_VALUES_BYTES {
            placement.problems.push(fail(format!(
                "tenant.yaml: the app's values are {} KiB, over the {} KiB an app's values may have; refused",
                size >> 10,
                MAX_VALUES_BYTES >> 10
            )));
            continue;
        }
        units.push(Unit {
            decryption: tenant.decryption.clone(),
            release_name: app.release_name.clone().unwrap_or_else(|| app.name.clone()),
            values_files,
            id,
            identity: Identity::ServiceAccount {
                namespace: tenant.namespaces[0].clone(),
                name: tenant.service_account.clone(),
            },
            namespace: Some(namespace),
            source,
            values,
            vars,
            // Apps of the tenant; infra units (`infra/...`) are waited for apart, as are the
            // tenant's own.
            depends_on: app
                .depends_on
                .iter()
                .filter(|d| !infra_ref(d))
                .cloned()
                .collect(),
            after_infra: tenant
                .depends_on
                .iter()
                .chain(app.depends_on.iter().filter(|d| infra_ref(d)))
                .cloned()
                .collect::<BTreeSet<String>>()
                .into_iter()
                .collect(),
            options: UnitOptions {
                prune: app.options.prune.unwrap_or(tenant.prune),
                force: app.options.force,
                wait: app.options.wait,
                timeout: app.options.timeout,
                allow_empty: app.options.allow_empty,
                recreate: app.options.recreate,
                interval: app.options.interval.or(tenant.interval),
                suspend: app.options.suspend.unwrap_or(tenant.suspend),
            },
            limits: Some(Limits {
                namespaces: tenant.namespaces.clone(),
                cluster_scoped_kinds: tenant.cluster_scoped_kinds.clone(),
                remote_bases: tenant.remote_bases,
            }),
        });
    }
    let broken = check_depends_on(cluster, tenant, catalog, &units, &mut placement.problems);
    placement
        .units
        .extend(units.into_iter().filter(|u| !broken.contains(&u.id.app)));
}

/// Checks every `dependsOn` of the tenant's units on this cluster: the app must exist, be enabled
/// here, and not be part of a cycle. Returns the apps that fail.
fn check_depends_on(
    cluster: &Cluster,
    tenant: &Tenant,
    catalog: &Catalog,
    units: &[Unit],
    problems: &mut Vec<Problem>,
) -> BTreeSet<String> {
    let enabled: BTreeMap<&str, &Unit> = units.iter().map(|u| (u.id.app.as_str(), u)).collect();
    let mut broken = BTreeSet::new();
    for unit in units {
        for dep in &unit.depends_on {
            let detail = if !catalog.apps.iter().any(|a| a.name == *dep) {
                format!(
                    "tenant.yaml: dependsOn names {dep:?}, which is not an app of tenant {}",
                    tenant.name
                )
            } else if !enabled.contains_key(dep.as_str()) {
                format!(
                    "tenant.yaml: dependsOn names {dep:?}, which is not enabled on cluster {}",
                    cluster.name
                )
            } else {
                continue;
            };
            problems.push(Problem::new(Owner::Unit(unit.id.clone()), detail));
            broken.insert(unit.id.app.clone());
        }
    }
    // Cycles: one depth-first walk (white/grey/black); a back edge to a grey unit closes a cycle.
    let mut state: BTreeMap<&str, Visit> = BTreeMap::new();
    let mut reported = BTreeSet::new();
    for start in enabled.keys() {
        if !state.contains_key(start) {
            walk(&enabled, start, &mut Vec::new(), &mut state, &mut reported);
        }
    }
    for cycle in reported {
        let text = cycle.join(" → ");
        for app in &cycle[..cycle.len() - 1] {
            problems.push(Problem::new(
                Owner::Unit(UnitId::app(&tenant.name, app)),
                format!("tenant.yaml: dependsOn cycle: {text}"),
            ));
            broken.insert(app.to_string());
        }
    }
    // A unit that depends on one held back can never be applied in order either: hold it back
    // too, transitively. This also catches every member of a cyclic group the walk did not list.
    loop {
        let newly: Vec<(&Unit, &String)> = units
            .iter()
            .filter(|u| !broken.contains(&u.id.app))
            .filter_map(|u| {
                u.depends_on
                    .iter()
                    .find(|d| broken.contains(*d))
                    .map(|d| (u, d))
            })
            .collect();
        if newly.is_empty() {
            break;
        }
        for (unit, dep) in newly {
            problems.push(Problem::new(
                Owner::Unit(unit.id.clone()),
                format!("tenant.yaml: dependsOn names {dep:?}, which is held back on cluster {} (see its problem)", cluster.name),
            ));
            broken.insert(unit.id.app.clone());
        }
    }
    broken
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Visit {
    InProgress,
    Done,
}

fn walk<'a>(
    units: &BTreeMap<&'a str, &'a Unit>,
    at: &'a str,
    stack: &mut Vec<&'a str>,
    state: &mut BTreeMap<&'a str, Visit>,
    found: &mut BTreeSet<Vec<String>>,
) {
    state.insert(at, Visit::InProgress);
    stack.push(at);
    for dep in &units[at].depends_on {
        let Some((dep, _)) = units.get_key_value(dep.as_str()) else {
            continue;
        };
        match state.get(dep) {
            Some(Visit::InProgress) => {
                let i = stack.iter().position(|s| s == dep).unwrap_or(0);
                let mut cycle: Vec<String> = stack[i..].iter().map(|s| s.to_string()).collect();
                cycle.push(dep.to_string());
                found.insert(cycle);
            }
            Some(Visit::Done) => {}
            None => walk(units, dep, stack, state, found),
        }
    }
    stack.pop();
    state.insert(at, Visit::Done);
}

#[cfg(test)]
#[path = "units_tests.rs"]
mod tests;
