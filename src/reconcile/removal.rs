//! What left Git: the inventories of apps no longer rendered here, and of tenants that no longer
//! land on this cluster, found in the cluster and pruned (as the tenant) or reported.

use std::collections::{BTreeMap, BTreeSet};

use super::set::{self, Engine, Mode, Outcome, SetOptions, SetSpec};
use super::{DEFAULT_TIMEOUT, Entry, Filter, Input, ONBOARDING, tenant_identity};
use crate::cluster::Cluster;
use crate::failure::Failure;
use crate::fleet::layers::is_infra_name;
use crate::fleet::{Identity, OnRemoval, Tenant, UnitId};
use crate::inventory::{AGENT_NAMESPACE, FLEET_LABEL, ID_LABEL, Parent};
use crate::render::{LABEL_APP, LABEL_TENANT};

/// A set that left Git: pruned (or described) and its parent deleted.
fn removal(tenant: &Tenant, app: &str, parent: Parent, mode: Mode) -> SetSpec {
    removal_of(
        format!("tenant {}, app {app} (removed)", tenant.name),
        (Some(tenant.name.clone()), app.to_string()),
        tenant_identity(tenant),
        parent,
        mode,
    )
}

/// The set that prunes every member of `parent` (tenant and `flotilla.dev/app` label given),
/// then deletes it; in diff mode, says what that would do.
fn removal_of(
    name: String,
    (tenant, set): (Option<String>, String),
    identity: Identity,
    parent: Parent,
    mode: Mode,
) -> SetSpec {
    SetSpec {
        name,
        tenant,
        set,
        identity,
        parent,
        objects: Vec::new(),
        refused: Vec::new(),
        options: SetOptions {
            prune: true,
            force: true,
            allow_empty: true,
            recreate: false,
            wait: false,
            timeout: DEFAULT_TIMEOUT,
            keep_namespaces: true,
            limits: None,
        },
        mode: if mode == Mode::Diff {
            Mode::Diff
        } else {
            Mode::Remove
        },
        fleet: None,
        shared: None,
    }
}

/// The inventories of a tenant's apps that are no longer rendered for this cluster, found in the
/// tenant's namespaces through the tenant's own identity.
/// A tenant whose onboarding failed is left for a later pass: its identity may not work yet, and
/// its units already said why.
pub(super) async fn removed_apps(
    engine: &Engine,
    input: &Input,
    filter: &Filter,
    mode: Mode,
    not_onboarded: &BTreeMap<String, Failure>,
) -> Vec<Entry> {
    let mut entries = Vec::new();
    for name in &input.tenants_ok {
        let Some(tenant) = input.fleet.tenants.get(name) else {
            continue;
        };
        if !filter.tenant(name) || not_onboarded.contains_key(name) {
            continue;
        }
        let present: BTreeSet<&str> = input
            .units
            .iter()
            .map(|u| &u.id)
            .chain(&input.problem_units)
            .filter(|id| id.tenant.as_deref() == Some(name))
            .map(|id| id.app.as_str())
            .collect();
        let found = match parents(engine, tenant).await {
            Ok(found) => found,
            Err(e) => {
                entries.push(Entry {
                    unit: None,
                    tenant: Some(name.clone()),
                    name: format!("tenant {name}: removed apps"),
                    revision: None,
                    outcome: Outcome {
                        error: Some(Failure::from(e).context("listing the tenant's inventories")),
                        ..Default::default()
                    },
                });
                continue;
            }
        };
        for (app, parent) in found {
            // An app a later round synced is one this pass's (older) catalog may not know yet.
            if present.contains(app.as_str())
                || app == ONBOARDING
                || filter.app.as_deref().is_some_and(|a| a != app)
                || engine.synced_later(&UnitId::app(name, &app), input.round)
            {
                continue;
            }
            entries.push(remove_set(engine, tenant, &app, parent, tenant.prune, mode).await);
        }
    }
    entries
}

/// Tenants with inventories on this cluster that no longer land on it: reported, and pruned
/// only if the fleet says `onRemoval: prune`.
pub(super) async fn departed_tenants(engine: &Engine, input: &Input, mode: Mode) -> Vec<Entry> {
    let found = match parents_everywhere(engine).await {
        Ok(found) => found,
        Err(e) => {
            return vec![Entry {
                unit: None,
                tenant: None,
                name: "departed tenants".into(),
                revision: None,
                outcome: Outcome {
                    error: Some(Failure::from(e).context("listing flotilla's inventories")),
                    ..Default::default()
                },
            }];
        }
    };
    let mut entries = Vec::new();
    let mut by_tenant: BTreeMap<String, Vec<(String, Parent)>> = BTreeMap::new();
    for (tenant, app, parent) in found {
        if !input.placed.contains(&tenant) && !input.tenants_failed.contains(&tenant) {
            by_tenant.entry(tenant).or_default().push((app, parent));
        }
    }
    for (name, sets) in by_tenant {
        let apps: Vec<&(String, Parent)> = sets.iter().filter(|(a, _)| a != ONBOARDING).collect();
        match input.fleet.tenants.get(&name) {
            Some(tenant) if tenant.on_removal == OnRemoval::Prune => {
                for (app, parent) in apps {
                    // The tenant's own identity: a set outside its namespaces is not its own.
                    if tenant.namespaces.contains(&parent.namespace) {
                        entries.push(
                            remove_set(engine, tenant, app, parent.clone(), true, mode).await,
                        );
                    }
                }
            }
            _ if apps.is_empty() => {}
            _ => entries.push(Entry {
                unit: None,
                tenant: Some(name.clone()),
                name: format!("tenant {name}"),
                revision: None,
                outcome: Outcome {
                    notes: vec![format!(
                        "no longer lands on this cluster; the objects of its {} are kept (onRemoval: keep)",
                        set::count(apps.len(), "app")
                    )],
                    ..Default::default()
                },
            }),
        }
    }
    entries
}

async fn remove_set(
    engine: &Engine,
    tenant: &Tenant,
    app: &str,
    parent: Parent,
    prune: bool,
    mode: Mode,
) -> Entry {
    let spec = removal(tenant, app, parent, mode);
    if !prune {
        return Entry {
            unit: None,
            tenant: Some(tenant.name.clone()),
            name: spec.name,
            revision: None,
            outcome: Outcome {
                notes: vec!["no longer rendered here; its objects are kept (prune: false)".into()],
                ..Default::default()
            },
        };
    }
    let outcome = engine.sync(&spec).await;
    Entry {
        unit: None,
        tenant: Some(tenant.name.clone()),
        name: spec.name,
        revision: None,
        outcome,
    }
}

/// Infra units the fleet no longer names for this cluster (a layer taken out of `infra:`, a
/// folder removed): their inventories, found in the agent's namespace with this agent's fleet
/// label (never another agent's, nor one made before layers had it), are pruned with the agent's
/// identity. Only after a pass whose fleet was read whole and whose layers all converged.
pub(super) async fn removed_infra(engine: &Engine, input: &Input, mode: Mode) -> Vec<Entry> {
    let found = match infra_parents(engine, &input.fleet_id).await {
        Ok(found) => found,
        Err(e) => {
            return vec![Entry {
                unit: None,
                tenant: None,
                name: "removed infra units".into(),
                revision: None,
                outcome: Outcome {
                    error: Some(Failure::from(e).context("listing the infra inventories")),
                    ..Default::default()
                },
            }];
        }
    };
    let present: BTreeSet<&UnitId> = input
        .units
        .iter()
        .map(|u| &u.id)
        .chain(&input.problem_units)
        .collect();
    let mut entries = Vec::new();
    for (id, parent) in found {
        if present.contains(&id) || engine.synced_later(&id, input.round) {
            continue;
        }
        let spec = removal_of(
            format!("cluster {} (removed)", id.app),
            (None, id.label()),
            Identity::Agent,
            parent,
            mode,
        );
        let outcome = engine.sync(&spec).await;
        entries.push(Entry {
            unit: None,
            tenant: None,
            name: spec.name,
            revision: None,
            outcome,
        });
    }
    entries
}

/// The infra units' inventories in the agent's namespace: no tenant label, an app label that
/// names an infra unit, and the name flotilla gives that unit's parent.
async fn infra_parents(
    engine: &Engine,
    fleet: &str,
) -> Result<Vec<(UnitId, Parent)>, crate::cluster::Error> {
    let client = engine.cluster.client(&Identity::Agent)?;
    let configmaps = engine.cluster.resolve("v1", "ConfigMap").await?;
    let selector = format!("{FLEET_LABEL}={fleet},{ID_LABEL}");
    let items =
        Cluster::list_metadata(&client, &configmaps, Some(AGENT_NAMESPACE), &selector).await?;
    Ok(items
        .iter()
        .filter_map(|item| {
            let labels = &item["metadata"]["labels"];
            if labels.get(LABEL_TENANT).is_some() {
                return None;
            }
            let name = labels[LABEL_APP].as_str()?.replace('.', "/");
            if !is_infra_name(&name) {
                return None;
            }
            let id = UnitId::infra_named(&name);
            let parent = Parent::of_unit(&id, None);
            (item["metadata"]["name"].as_str() == Some(parent.name.as_str()))
                .then_some((id, parent))
        })
        .collect())
}

/// The app inventories of `tenant` in its namespaces: `(app, parent)`, only those whose name is
/// the one flotilla gives that app's parent.
async fn parents(
    engine: &Engine,
    tenant: &Tenant,
) -> Result<Vec<(String, Parent)>, crate::cluster::Error> {
    let client = engine.cluster.client(&tenant_identity(tenant))?;
    let configmaps = engine.cluster.resolve("v1", "ConfigMap").await?;
    let selector = format!("{LABEL_TENANT}={},{ID_LABEL}", tenant.name);
    let mut out = Vec::new();
    for ns in &tenant.namespaces {
        let items = match Cluster::list_metadata(&client, &configmaps, Some(ns), &selector).await {
            Ok(items) => items,
            // A namespace not created yet holds nothing.
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        for item in items {
            let Some(app) = item["metadata"]["labels"][LABEL_APP].as_str() else {
                continue;
            };
            let parent = Parent::of_unit(&UnitId::app(&tenant.name, app), Some(ns));
            if item["metadata"]["name"].as_str() == Some(parent.name.as_str()) {
                out.push((app.to_string(), parent));
            }
        }
    }
    Ok(out)
}

/// Every flotilla inventory of a tenant in the cluster, with the agent's identity:
/// `(tenant, app, parent)`.
async fn parents_everywhere(
    engine: &Engine,
) -> Result<Vec<(String, String, Parent)>, crate::cluster::Error> {
    let client = engine.cluster.client(&Identity::Agent)?;
    let configmaps = engine.cluster.resolve("v1", "ConfigMap").await?;
    let selector = format!("{LABEL_TENANT},{ID_LABEL}");
    let items = Cluster::list_metadata(&client, &configmaps, None, &selector).await?;
    Ok(items
        .iter()
        .filter_map(|item| {
            let meta = &item["metadata"];
            let tenant = meta["labels"][LABEL_TENANT].as_str()?;
            let app = meta["labels"][LABEL_APP].as_str()?;
            Some((
                tenant.to_string(),
                app.to_string(),
                Parent {
                    namespace: meta["namespace"].as_str()?.to_string(),
                    name: meta["name"].as_str()?.to_string(),
                },
            ))
        })
        .collect())
}
