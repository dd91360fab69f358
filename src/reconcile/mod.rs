//! One pass over a cluster: each tenant's onboarding, the infra unit, every tenant app in
//! `dependsOn` order, then the sets that left Git (apps no longer enabled here, tenants that left
//! the cluster). A failure is the failing unit's alone: the others go on.
//!
//! `set` syncs one set; `health` says whether a live object is ready.

mod apply;
pub(crate) mod health;
mod hooks;
mod onboarding;
mod order;
mod prune;
mod removal;
pub(crate) mod set;
mod shared;
pub(crate) mod slots;
mod wait;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::failure::{Failure, Kind};
use crate::fleet::{self, Fleet, Identity, Tenant, Unit, UnitId};
use crate::inventory::Parent;
use crate::render;
pub(crate) use onboarding::{onboarding, onboarding_name};
use removal::{departed_tenants, removed_apps};
pub(crate) use set::{Engine, Mode, ObjectRow, Outcome, SetOptions, SetSpec};
use shared::Shared;

/// The `flotilla.dev/app` label of a tenant's onboarding set (not a valid app name).
pub(crate) const ONBOARDING: &str = "flotilla.onboarding";
/// How long `wait` waits when the app gives no `timeout`.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// What the fleet and the renders say about one cluster.
pub(crate) struct Input {
    pub fleet: Fleet,
    /// Tenants that land on this cluster.
    pub placed: Vec<String>,
    /// Tenants whose catalog was read without a tenant-wide problem: only their missing apps
    /// may be taken as removed.
    pub tenants_ok: BTreeSet<String>,
    /// Tenants with any problem (their file, source or catalog): never taken as departed.
    pub tenants_failed: BTreeSet<String>,
    /// Whether the fleet itself was read without problems.
    pub fleet_ok: bool,
    pub units: Vec<Unit>,
    pub results: BTreeMap<UnitId, render::Rendered>,
    pub revisions: BTreeMap<UnitId, String>,
    /// Who signed each unit's revision, where its source asks for signatures.
    pub signers: BTreeMap<UnitId, String>,
    /// Units named by a placement problem: they exist in Git though they were not placed.
    pub problem_units: BTreeSet<UnitId>,
    /// The last result (converged or not) of units outside this pass, for `dependsOn`.
    pub prior: BTreeMap<UnitId, bool>,
    /// Units whose last failure was permanent: a unit held back by one of them waits for a
    /// change too, instead of being retried within seconds.
    pub stuck: BTreeSet<UnitId>,
    /// What the platform writes into every tenant's namespaces on this cluster
    /// (`tenantDefaults` of its `cluster.yaml`).
    pub namespace_defaults: fleet::NamespacePolicy,
    /// This agent's fleet and cluster, as the infra layers' parents carry it
    /// ([`crate::inventory::fleet_id`]).
    pub fleet_id: String,
    /// The daemon's round number (later rounds fetched later); 0 for a command's single pass.
    /// A unit a later round already synced is left to it: this pass's render is older.
    pub round: u64,
}

/// Which units a pass covers.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filter {
    pub tenant: Option<String>,
    pub app: Option<String>,
    /// Only these units (the daemon's rounds): no removed apps or departed tenants are looked
    /// for, and only the tenants of these units are onboarded.
    pub only: Option<BTreeSet<UnitId>>,
    /// Units left alone by this pass (not due yet); they still count as present, so nothing of
    /// theirs is taken as removed.
    pub skip: BTreeSet<UnitId>,
    /// With sharding, the shards this replica holds: the tenants of the others are left alone,
    /// and infra, onboarding and departed tenants are shard 0's.
    pub held: Option<crate::shard::Held>,
}

/// What happened to one set.
#[derive(Debug)]
pub(crate) struct Entry {
    /// `tenant ai, app jupyter`, `tenant ai: onboarding`, `cluster infra`.
    pub name: String,
    /// The unit, for a unit's set (not for onboarding, removals and departures).
    pub unit: Option<UnitId>,
    /// The tenant the set is of (a unit's, an onboarding's, a removal's): who hears of it.
    pub tenant: Option<String>,
    pub revision: Option<String>,
    pub outcome: Outcome,
}

impl Entry {
    /// The tenant whose onboarding this entry is.
    pub(crate) fn onboarding_of(&self) -> Option<&str> {
        let t = self.tenant.as_deref()?;
        (self.unit.is_none() && self.name == onboarding_name(t)).then_some(t)
    }
}

impl Filter {
    /// The tenant's apps: named by the filter, and of a shard this replica holds.
    fn tenant(&self, t: &str) -> bool {
        self.named(t) && crate::shard::owns_tenant(self.held.as_ref(), t)
    }
    fn named(&self, t: &str) -> bool {
        self.tenant.as_deref().is_none_or(|w| w == t)
    }
    /// What is the cluster's rather than a tenant's: infra, onboarding, departed tenants.
    fn cluster(&self) -> bool {
        crate::shard::owns_cluster(self.held.as_ref())
    }
    fn unit(&self, id: &UnitId) -> bool {
        let tenant = match &id.tenant {
            Some(t) => self.tenant(t),
            None => self.tenant.is_none() && self.cluster(),
        };
        tenant
            && self.app.as_deref().is_none_or(|a| a == id.app)
            && self.only.as_ref().is_none_or(|only| only.contains(id))
            && !self.skip.contains(id)
    }

    /// Whether the pass covers this tenant's onboarding.
    fn onboards(&self, t: &str) -> bool {
        self.named(t)
            && self.cluster()
            && self
                .only
                .as_ref()
                .is_none_or(|only| only.iter().any(|id| id.tenant.as_deref() == Some(t)))
    }
}

/// Runs one pass: applies (or, in diff mode, describes) every selected set.
/// Each selected unit's rendered objects are moved out of `input.results` as it is synced.
pub(crate) async fn pass(
    engine: Arc<Engine>,
    input: &mut Input,
    filter: &Filter,
    mode: Mode,
) -> Vec<Entry> {
    let mut entries = Vec::new();

    // Onboarding first: namespaces, ServiceAccount, RoleBindings (infra may put quotas or
    // policies into the tenants' namespaces).
    // Tenants whose onboarding failed, with what their units are told.
    let mut not_onboarded: BTreeMap<String, Failure> = BTreeMap::new();
    for name in &input.placed {
        let Some(tenant) = input.fleet.tenants.get(name) else {
            continue;
        };
        if !filter.onboards(name) || (filter.app.is_some() && mode == Mode::Diff) {
            continue;
        }
        let spec = onboarding(tenant, &input.namespace_defaults, mode);
        let mut outcome = engine.sync(&spec).await;
        if mode == Mode::Apply
            && outcome.converged()
            && !outcome.applied.is_empty()
            && let Err(e) = await_access(&engine, tenant).await
        {
            outcome.error = Some(e);
        }
        if !outcome.converged() {
            let why = if outcome.terminating.is_empty() {
                format!("not applied: tenant {name}'s onboarding failed")
            } else {
                format!(
                    "not applied: {}",
                    set::terminating_error(&outcome.terminating)
                )
            };
            let kind = outcome.failure_kind().unwrap_or(Kind::Transient);
            not_onboarded.insert(name.clone(), Failure::new(kind, why));
        }
        entries.push(Entry {
            unit: None,
            tenant: Some(name.clone()),
            name: spec.name,
            revision: None,
            outcome,
        });
    }

    // The cluster's infra, with the agent's identity.
    let mut done: BTreeMap<UnitId, bool> = input.prior.clone();
    // Units whose last failure was permanent (before this pass, or in it).
    let mut stuck: BTreeSet<UnitId> = input.stuck.clone();
    fn note(
        (done, stuck): (&mut BTreeMap<UnitId, bool>, &mut BTreeSet<UnitId>),
        id: &UnitId,
        outcome: &Outcome,
    ) {
        done.insert(id.clone(), outcome.converged());
        if outcome.failure_kind() == Some(Kind::Permanent) {
            stuck.insert(id.clone());
        } else {
            stuck.remove(id);
        }
    }
    // What something waits for waits for health in turn.
    let waited = order::waited_for(&input.units, &input.fleet);
    let infra: Vec<Unit> = input
        .units
        .iter()
        .filter(|u| u.id.tenant.is_none() && filter.unit(&u.id))
        .cloned()
        .collect();
    for level in order::levels(&infra.iter().collect::<Vec<_>>()) {
        for unit in level {
            let entry = match order::held_back(unit, &done, &stuck) {
                Some(why) => Entry {
                    unit: Some(unit.id.clone()),
                    tenant: None,
                    name: fleet::Owner::Unit(unit.id.clone()).to_string(),
                    revision: input.revisions.get(&unit.id).cloned(),
                    outcome: Outcome {
                        error: Some(why),
                        held_back: true,
                        ..Default::default()
                    },
                },
                None => sync_unit(&engine, input, unit, mode, waited.contains(&unit.id)).await,
            };
            note((&mut done, &mut stuck), &unit.id, &entry.outcome);
            entries.push(entry);
        }
    }

    // Tenant apps, a dependency level at a time; the apps of a tenant in one namespace share
    // their reads.
    let apps: Vec<&Unit> = input
        .units
        .iter()
        .filter(|u| u.id.tenant.is_some() && filter.unit(&u.id))
        .collect();
    // A pass of one app (a push, a sync) reads for itself: a shared list would read all.
    let shared = (mode == Mode::Apply && apps.len() > 1).then(|| Arc::new(Shared::default()));
    // Units asked for by name (a push, a sync request) wait for a slot in the urgent queue, and
    // an earlier round still waiting for one of this pass's units leaves it to this one.
    let urgent = filter.only.is_some();
    if mode == Mode::Apply {
        engine.wanted.want(apps.iter().map(|u| &u.id), input.round);
    }
    for level in order::levels(&apps) {
        let mut tasks = tokio::task::JoinSet::new();
        for unit in level {
            let tenant = unit.id.tenant.clone().unwrap_or_default();
            let blocked = match not_onboarded.get(&tenant) {
                Some(why) => Some(why.clone()),
                None => order::held_back(unit, &done, &stuck),
            };
            let held_back = blocked.is_some() && !not_onboarded.contains_key(&tenant);
            if unit.options.suspend {
                done.insert(unit.id.clone(), true);
                entries.push(Entry {
                    unit: Some(unit.id.clone()),
                    tenant: unit.id.tenant.clone(),
                    name: fleet::Owner::Unit(unit.id.clone()).to_string(),
                    revision: input.revisions.get(&unit.id).cloned(),
                    outcome: Outcome {
                        notes: vec!["suspended: not reconciled".into()],
                        ..Default::default()
                    },
                });
                continue;
            }
            if let Some(why) = blocked {
                let entry = Entry {
                    unit: Some(unit.id.clone()),
                    tenant: unit.id.tenant.clone(),
                    name: fleet::Owner::Unit(unit.id.clone()).to_string(),
                    revision: input.revisions.get(&unit.id).cloned(),
                    outcome: Outcome {
                        error: Some(why),
                        held_back,
                        ..Default::default()
                    },
                };
                note((&mut done, &mut stuck), &unit.id, &entry.outcome);
                entries.push(entry);
                continue;
            }
            let has_dependents = waited.contains(&unit.id);
            // The task carries the unit's id, not the unit (a thousand of them wait at once).
            let (engine, id) = (engine.clone(), unit.id.clone());
            // Moved, not copied: a unit's objects leave the input as its sync starts.
            let spec = unit_spec(
                input.results.remove(&unit.id),
                (unit, &input.fleet_id),
                mode,
                has_dependents,
            )
            .map(|(mut spec, refused)| {
                spec.shared = shared.clone();
                // Packed while the unit waits for its slot (a thousand units may wait at once).
                let packed = render::Packed::of(std::mem::take(&mut spec.objects));
                (spec, refused, packed)
            });
            let revision = input.revisions.get(&unit.id).cloned();
            let round = input.round;
            let span = tracing::info_span!("unit", unit = %fleet::Owner::Unit(unit.id.clone()));
            let sync = async move {
                // Both waits are bounded by one unit budget: the unit's other round ends its
                // health wait by then, and slots come round to every tenant in turn.
                // A later round that queues the unit meanwhile (a push) takes it over.
                let waited = engine.wanted.unless_later(&id, round, async {
                    let unit_lock = engine.lock_unit(&id).await;
                    let slot = engine
                        .units
                        .acquire(id.tenant.as_deref().unwrap_or_default(), urgent)
                        .await;
                    (unit_lock, slot)
                });
                // A comparison writes nothing: it neither waits for a sync of the unit nor
                // takes a sync slot from the rounds.
                let outcome = if mode == Mode::Diff {
                    Box::pin(run_spec(&engine, unpacked(spec), None)).await
                } else {
                    match tokio::time::timeout(engine.max_wait, waited).await {
                        // Taken over before it was synced: its dependents in this round wait.
                        Ok(Err(later)) => {
                            let entry = left_to(&id, later, revision, "takes it over");
                            return (id.clone(), entry, false);
                        }
                        Ok(Ok((_unit_lock, slot))) => match engine.begin_sync(&id, round) {
                            // Boxed: only the units holding a slot carry a sync's state; the others wait small.
                            Ok(()) => Box::pin(run_spec(&engine, unpacked(spec), Some(slot))).await,
                            // A later round (a newer fetch) synced it meanwhile: this render is
                            // older, and that round's result is the unit's.
                            Err(later) => {
                                let entry = left_to(&id, later, revision, "synced it meanwhile");
                                return (id.clone(), entry, true);
                            }
                        },
                        Err(_) => Outcome {
                            error: Some(Failure::transient(format!(
                                "not synced: another round's sync of this unit or a sync slot took longer than {}; retried later",
                                humantime::format_duration(engine.max_wait)
                            ))),
                            ..Default::default()
                        },
                    }
                };
                (
                    id.clone(),
                    Entry {
                        unit: Some(id.clone()),
                        tenant: id.tenant.clone(),
                        name: fleet::Owner::Unit(id.clone()).to_string(),
                        revision,
                        outcome,
                    },
                    true,
                )
            };
            tasks.spawn(tracing::Instrument::instrument(sync, span));
        }
        let mut level_entries = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((id, entry, settled)) => {
                    if settled {
                        note((&mut done, &mut stuck), &id, &entry.outcome);
                    } else {
                        done.insert(id, false);
                    }
                    level_entries.push(entry);
                }
                // Never silently missing from the report (and so from the exit code).
                Err(e) => level_entries.push(Entry {
                    unit: None,
                    tenant: None,
                    name: "a tenant app".into(),
                    revision: None,
                    outcome: Outcome {
                        error: Some(Failure::transient(format!(
                            "internal error: its sync did not finish: {e}"
                        ))),
                        ..Default::default()
                    },
                }),
            }
        }
        level_entries.sort_by(|a, b| a.name.cmp(&b.name));
        entries.extend(level_entries);
    }

    if filter.only.is_some() {
        return entries;
    }
    entries.extend(removed_apps(&engine, input, filter, mode, &not_onboarded).await);
    if filter.tenant.is_none() && input.fleet_ok && filter.cluster() {
        // A layer left the fleet: pruned only once every layer that stays converged in this
        // pass, so that a layer taking its objects over (a rename, a split) holds them first.
        let infra_settled = input
            .units
            .iter()
            .filter(|u| u.id.tenant.is_none())
            .all(|u| done.get(&u.id) == Some(&true))
            && input.problem_units.iter().all(|u| u.tenant.is_some());
        if filter.app.is_none() && infra_settled {
            entries.extend(removal::removed_infra(&engine, input, mode).await);
        }
        entries.extend(departed_tenants(&engine, input, mode).await);
    }
    entries
}

/// Waits (up to 10 s) until the tenant's new RoleBindings take effect: a real API server's
/// authorizer learns of them from its cache a moment after they are written.
async fn await_access(engine: &Engine, tenant: &Tenant) -> Result<(), Failure> {
    let client = engine.cluster.client(&tenant_identity(tenant))?;
    let configmaps = engine.cluster.resolve("v1", "ConfigMap").await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for ns in &tenant.namespaces {
        loop {
            match Cluster::list_metadata(&client, &configmaps, Some(ns), "flotilla.dev/probe").await
            {
                Ok(_) => break,
                Err(e) if e.code() == Some(403) && std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                // Transient: the authorizer may learn of the bindings later still.
                Err(e) => {
                    return Err(Failure::transient(format!(
                        "the tenant's ServiceAccount cannot work in namespace {ns} after onboarding: {e}"
                    )));
                }
            }
        }
    }
    Ok(())
}

async fn sync_unit(
    engine: &Engine,
    input: &mut Input,
    unit: &Unit,
    mode: Mode,
    deps: bool,
) -> Entry {
    let rendered = input.results.remove(&unit.id);
    // A comparison writes nothing: it does not wait for a sync of the unit.
    let _unit = match mode {
        Mode::Diff => None,
        _ => Some(engine.lock_unit(&unit.id).await),
    };
    if let Err(later) = engine.begin_sync(&unit.id, input.round) {
        let revision = input.revisions.get(&unit.id).cloned();
        return left_to(&unit.id, later, revision, "synced it meanwhile");
    }
    Entry {
        unit: Some(unit.id.clone()),
        tenant: unit.id.tenant.clone(),
        name: fleet::Owner::Unit(unit.id.clone()).to_string(),
        revision: input.revisions.get(&unit.id).cloned(),
        outcome: run_spec(
            engine,
            unit_spec(rendered, (unit, &input.fleet_id), mode, deps),
            None,
        )
        .await,
    }
}

/// A unit this pass leaves to round `later`, which has a newer render of it and `did` something
/// with it (took it over, synced it meanwhile). No `unit` on the entry: that round's result is
/// the unit's, and this one must not overwrite it.
fn left_to(unit: &UnitId, later: u64, revision: Option<String>, did: &str) -> Entry {
    Entry {
        unit: None,
        tenant: unit.tenant.clone(),
        name: format!(
            "{} (left to round {later})",
            fleet::Owner::Unit(unit.clone())
        ),
        revision,
        outcome: Outcome {
            notes: vec![format!(
                "not synced: round {later}, with a newer render, {did}"
            )],
            ..Default::default()
        },
    }
}

/// A waiting unit's set with its objects unpacked (see [`render::Packed`]).
fn unpacked(
    waiting: Result<(SetSpec, Vec<Failure>, render::Packed), Failure>,
) -> Result<(SetSpec, Vec<Failure>), Failure> {
    let (mut spec, refused, packed) = waiting?;
    spec.objects = packed
        .objects()
        .map_err(|e| Failure::transient(format!("internal error: {e}")))?;
    Ok((spec, refused))
}

/// Syncs a unit's set and adds its refused objects to the failures; a unit without a set (its
/// render failed) is that error.
async fn run_spec(
    engine: &Engine,
    spec: Result<(SetSpec, Vec<Failure>), Failure>,
    slot: Option<slots::Slot>,
) -> Outcome {
    match spec {
        Ok((spec, refused)) => {
            let mut outcome = engine.sync_in(&spec, slot).await;
            outcome.failed.extend(refused);
            outcome
        }
        Err(error) => Outcome {
            error: Some(error),
            ..Default::default()
        },
    }
}

/// The set of a rendered unit, with its refused objects as failures; a failed render is an
/// error and prunes nothing.
fn unit_spec(
    rendered: Option<render::Rendered>,
    (unit, fleet): (&Unit, &str),
    mode: Mode,
    has_dependents: bool,
) -> Result<(SetSpec, Vec<Failure>), Failure> {
    let objects = match rendered {
        Some(Ok(objects)) => objects,
        // Permanent, unless a source could not be fetched for a transient reason.
        Some(Err(problems)) => {
            let lines: Vec<String> = problems.iter().map(|p| p.detail.clone()).collect();
            let kind = Kind::worst(problems.iter().map(|p| p.kind)).unwrap_or(Kind::Permanent);
            return Err(Failure::new(
                kind,
                format!(
                    "render failed, nothing applied or pruned:\n  {}",
                    lines.join("\n  ")
                ),
            ));
        }
        None => return Err(Failure::transient("not rendered")),
    };
    // The refused leave in place: the others keep their allocation (a new vector would grow
    // to twice what it holds).
    let mut objects = objects;
    let mut failures = Vec::new();
    let mut refused = Vec::new();
    objects.retain(|o| match o.refusal(&unit.id) {
        Some(p) => {
            failures.push(Failure::new(p.kind, p.detail));
            refused.push(o.key.clone());
            false
        }
        None => true,
    });
    let spec = SetSpec {
        name: fleet::Owner::Unit(unit.id.clone()).to_string(),
        tenant: unit.id.tenant.clone(),
        set: unit.id.label(),
        identity: unit.identity.clone(),
        parent: Parent::of_unit(&unit.id, unit.namespace.as_deref()),
        objects,
        refused,
        options: SetOptions {
            prune: unit.options.prune,
            force: unit.options.force,
            allow_empty: unit.options.allow_empty,
            recreate: unit.options.recreate,
            wait: unit.options.wait || has_dependents,
            timeout: unit.options.timeout.unwrap_or(DEFAULT_TIMEOUT),
            keep_namespaces: false,
            limits: unit.limits.clone(),
        },
        mode,
        fleet: unit.id.tenant.is_none().then(|| fleet.to_string()),
        shared: None,
    };
    Ok((spec, failures))
}

fn tenant_identity(tenant: &Tenant) -> Identity {
    Identity::ServiceAccount {
        namespace: tenant.namespaces.first().cloned().unwrap_or_default(),
        name: tenant.service_account.clone(),
    }
}
