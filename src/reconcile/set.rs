//! One set (a unit's objects, or a tenant's onboarding) against the cluster: read its inventory,
//! list what is live, decide, widen the inventory, apply group by group, prune, record, wait.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use serde_json::Value;
use tokio::sync::Semaphore;

use super::apply::{Applied, apply_one};
use crate::cluster::{Cluster, Error, Resource};
use crate::failure::{Failure, Kind};
use crate::fleet::{Identity, Limits};
use crate::inventory::{Member, PART_OF_LABEL, Parent, Record};
use crate::plan::{self, Decision};
use crate::render::hook::Phase;
use crate::render::{Object, ObjectKey};

/// What a set is and how it is synced.
pub(crate) struct SetSpec {
    /// For messages: `tenant ai, app jupyter`.
    pub name: String,
    pub tenant: Option<String>,
    /// The parent's `flotilla.dev/app` label: the app, `infra`, or [`super::ONBOARDING`].
    pub set: String,
    pub identity: Identity,
    pub parent: Parent,
    /// The objects to apply (refused ones are not here).
    pub objects: Vec<Object>,
    /// Objects the render refused: never sent, and never pruned for being absent.
    pub refused: Vec<ObjectKey>,
    pub options: SetOptions,
    pub mode: Mode,
    /// For an infra layer: the agent's fleet and cluster (`flotilla.dev/fleet` on its parent), so
    /// that a layer the fleet no longer names is told from another agent's.
    pub fleet: Option<String>,
    /// The pass's reads shared with the tenant's other sets (apply mode, tenant apps).
    pub shared: Option<Arc<super::Shared>>,
}

#[derive(Clone, Debug)]
pub(crate) struct SetOptions {
    pub prune: bool,
    pub force: bool,
    pub allow_empty: bool,
    pub recreate: bool,
    pub wait: bool,
    pub timeout: Duration,
    /// Never delete Namespaces (the onboarding sets).
    pub keep_namespaces: bool,
    /// A tenant's boundaries, checked again once discovery knows a kind's real scope.
    pub limits: Option<Limits>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Apply,
    /// Change nothing; describe what a sync would do.
    Diff,
    /// The set left Git: prune its members, then delete its parent.
    Remove,
}

/// What syncing a set did (or, in diff mode, would do).
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub applied: Vec<String>,
    pub unchanged: usize,
    pub pruned: Vec<String>,
    /// Objects that failed, each `object: cause`, with its kind.
    pub failed: Vec<Failure>,
    /// Notes that are not failures (objects left in place, and why).
    pub notes: Vec<String>,
    /// A failure of the set as a whole (its inventory, an empty render, a namespace being
    /// deleted, a render that failed).
    pub error: Option<Failure>,
    /// Namespaces found being deleted: nothing more of the set was sent into them.
    pub terminating: BTreeSet<String>,
    /// Diff mode: the text to print.
    pub diff: String,
    /// Diff mode: how many objects would change or be pruned.
    pub changes: usize,
    /// How long the sync took.
    pub took: std::time::Duration,
    /// Not run: an app it depends on did not converge (`error` says which).
    pub held_back: bool,
    /// Diff mode: every object's state and health.
    pub objects: Vec<ObjectRow>,
}

/// One object of a set compared with the cluster (diff mode).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct ObjectRow {
    /// `Deployment`, or `Certificate.cert-manager.io`.
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    /// `in sync`, `differs`, `missing`, `would be pruned`, `refused` or `failed`.
    pub state: &'static str,
    /// `ready`, `progressing: why`, `failed: why`; `None` when not live.
    pub health: Option<String>,
    /// Why it failed or was refused.
    pub detail: Option<String>,
}

impl ObjectRow {
    pub(crate) fn new(key: &ObjectKey, state: &'static str, live: Option<&Value>) -> ObjectRow {
        ObjectRow {
            kind: if key.group.is_empty() {
                key.kind.clone()
            } else {
                format!("{}.{}", key.kind, key.group)
            },
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            state,
            health: live.map(|l| match super::health::of(l) {
                super::health::Health::Ready => "ready".to_string(),
                super::health::Health::Progressing(why) => format!("progressing: {why}"),
                super::health::Health::Failed(why) => format!("failed: {why}"),
            }),
            detail: None,
        }
    }

    fn failed(key: &ObjectKey, state: &'static str, why: &Failure) -> ObjectRow {
        ObjectRow {
            detail: Some(why.to_string()),
            ..ObjectRow::new(key, state, None)
        }
    }
}

impl Outcome {
    pub(crate) fn converged(&self) -> bool {
        self.error.is_none() && self.failed.is_empty()
    }

    /// `None` when converged; else whether a retry soon could help (see [`crate::failure`]).
    pub(crate) fn failure_kind(&self) -> Option<Kind> {
        Kind::worst(self.error.iter().chain(&self.failed).map(|f| f.kind))
    }

    /// The set's error and its objects' failures, as lines to show.
    pub(crate) fn failure_lines(&self) -> Vec<String> {
        self.error
            .iter()
            .chain(&self.failed)
            .map(ToString::to_string)
            .collect()
    }
}

/// Applies sets against one cluster.
pub(crate) struct Engine {
    pub cluster: Arc<Cluster>,
    /// How many applies (or deletes) of one order group run at once.
    pub concurrency: usize,
    /// Bounds the tenant apps synced at once (`concurrency`), across all passes in flight,
    /// handed out fairly between tenants.
    pub units: Arc<super::slots::Slots>,
    /// The most a unit may wait for its objects' health, whatever its `timeout` says
    /// (`unit_timeout` of the agent config).
    pub max_wait: Duration,
    /// One lock per unit: two rounds that reach one unit (a push beside a full round) sync it
    /// one after the other, never at once.
    pub unit_locks: std::sync::Mutex<HashMap<crate::fleet::UnitId, Arc<tokio::sync::Mutex<()>>>>,
    /// The latest round that synced each unit: an earlier round (an older render) that reaches
    /// it afterwards leaves it alone, and does not take its app for removed.
    pub synced_by: std::sync::Mutex<HashMap<crate::fleet::UnitId, u64>>,
    /// The latest round that queued each unit, and a bell rung when it moves: a round still
    /// waiting for a unit when a later one (a push) queues it gives way, rather than syncing
    /// its older render first while the push waits behind it.
    pub wanted: Wanted,
    /// When each inventory (by its ApplySet id) was last written or deleted: a list shared by a
    /// pass and read before that is stale for its set (see `shared`).
    pub touched: std::sync::Mutex<HashMap<String, std::time::Instant>>,
}

/// See [`Engine::wanted`].
#[derive(Debug, Default)]
pub(crate) struct Wanted {
    by: std::sync::Mutex<HashMap<crate::fleet::UnitId, u64>>,
    moved: tokio::sync::Notify,
}

impl Wanted {
    /// Round `round` queues `units` (round 0, a command's single pass, is never superseded);
    /// the waiting rounds hear of it once.
    pub(crate) fn want<'a>(
        &self,
        units: impl IntoIterator<Item = &'a crate::fleet::UnitId>,
        round: u64,
    ) {
        if round == 0 {
            return;
        }
        let mut moved = false;
        let mut by = self.by.lock().expect("wanted lock");
        for unit in units {
            // No key copied for a unit already known (every round names every unit).
            match by.get_mut(unit) {
                Some(last) if *last >= round => {}
                Some(last) => {
                    *last = round;
                    moved = true;
                }
                None => {
                    by.insert(unit.clone(), round);
                    moved = true;
                }
            }
        }
        drop(by);
        if moved {
            self.moved.notify_waiters();
        }
    }

    /// The later round that queued `unit` after `round`, if any.
    fn later(&self, unit: &crate::fleet::UnitId, round: u64) -> Option<u64> {
        let by = self.by.lock().expect("wanted lock");
        by.get(unit)
            .copied()
            .filter(|last| round != 0 && *last > round)
    }

    /// Runs `wait` (a unit's turn) unless a later round queues `unit` first: then its number.
    pub(crate) async fn unless_later<T>(
        &self,
        unit: &crate::fleet::UnitId,
        round: u64,
        wait: impl std::future::Future<Output = T>,
    ) -> Result<T, u64> {
        let mut wait = std::pin::pin!(wait);
        loop {
            let moved = self.moved.notified();
            let mut moved = std::pin::pin!(moved);
            // Registered before the check: a move between the two is not missed.
            moved.as_mut().enable();
            if let Some(later) = self.later(unit, round) {
                return Err(later);
            }
            tokio::select! {
                done = &mut wait => return Ok(done),
                () = &mut moved => {}
            }
        }
    }
}

impl Engine {
    /// Marks `unit` as synced by `round`, unless a later round synced it already (its number is
    /// returned). Round 0 (a command's single pass) always goes ahead.
    pub(crate) fn begin_sync(&self, unit: &crate::fleet::UnitId, round: u64) -> Result<(), u64> {
        if round == 0 {
            return Ok(());
        }
        let mut by = self.synced_by.lock().expect("synced_by lock");
        let last = by.entry(unit.clone()).or_default();
        if *last > round {
            return Err(*last);
        }
        *last = round;
        Ok(())
    }

    /// Whether a round later than `round` synced `unit`.
    pub(crate) fn synced_later(&self, unit: &crate::fleet::UnitId, round: u64) -> bool {
        round != 0
            && self
                .synced_by
                .lock()
                .is_ok_and(|by| by.get(unit).is_some_and(|last| *last > round))
    }

    /// Waits until no other round syncs `unit`, and holds it until the guard drops.
    pub(crate) async fn lock_unit(
        &self,
        unit: &crate::fleet::UnitId,
    ) -> tokio::sync::OwnedMutexGuard<()> {
        // One entry per unit ever synced, like `synced_by`: a few bytes each, never swept (a
        // sweep on every sync would cost a pass over all units per unit).
        let lock = self
            .unit_locks
            .lock()
            .expect("unit locks")
            .entry(unit.clone())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// Whether set `id`'s inventory was not written since `at`.
    fn untouched_since(&self, id: &str, at: std::time::Instant) -> bool {
        self.touched
            .lock()
            .is_ok_and(|t| t.get(id).is_none_or(|w| *w < at))
    }

    fn touch(&self, id: &str) {
        if let Ok(mut t) = self.touched.lock() {
            t.insert(id.to_string(), std::time::Instant::now());
        }
    }

    pub(crate) async fn sync(&self, spec: &SetSpec) -> Outcome {
        self.sync_in(spec, None).await
    }

    /// [`Engine::sync`] in a sync slot, given back before the wait for health: a unit whose
    /// objects never become ready holds no one else up while it waits.
    pub(crate) async fn sync_in(
        &self,
        spec: &SetSpec,
        slot: Option<super::slots::Slot>,
    ) -> Outcome {
        let started = std::time::Instant::now();
        let mut out = Outcome::default();
        let mut slot = slot;
        if let Err(e) = self.sync_inner(spec, &mut out, &mut slot).await {
            out.error = Some(e);
        }
        out.took = started.elapsed();
        out
    }

    async fn sync_inner(
        &self,
        spec: &SetSpec,
        out: &mut Outcome,
        slot: &mut Option<super::slots::Slot>,
    ) -> Result<(), Failure> {
        let client = self.cluster.client(&spec.identity)?;
        let configmaps = self.cluster.resolve("v1", "ConfigMap").await?;
        let parent = &spec.parent;
        let id = parent.id();
        let who = format!("{:?}", spec.identity);
        let shared_parent = match &spec.shared {
            // Boxed: every unit's task holds its set's future from the pass's start, and the
            // list's future inline would make each of them larger.
            Some(shared) => Box::pin(shared.inventory(
                (&client, &who),
                &configmaps,
                &parent.namespace,
                &parent.name,
            ))
            .await
            .filter(|(at, _)| self.untouched_since(&id, *at)),
            None => None,
        };
        let stored = match shared_parent {
            Some((_, stored)) => stored,
            None => Cluster::get(&client, &configmaps, Some(&parent.namespace), &parent.name)
                .await
                .map_err(|e| {
                    Failure::from(e).context(format_args!("reading the inventory {parent}"))
                })?,
        };
        let old = match &stored {
            Some(live) => parent
                .read(live)
                .map_err(|e| Failure::permanent(e.to_string()))?,
            None => Record::default(),
        };

        // Helm hooks are not members: they run around the other objects (see `hooks`).
        let objects: Vec<&Object> = spec.objects.iter().filter(|o| o.hook.is_none()).collect();
        let digest = super::hooks::digest(&spec.objects);
        let pre = super::hooks::of_phase(&spec.objects, Phase::Pre);
        let post = super::hooks::of_phase(&spec.objects, Phase::Post);
        let run_hooks = (!pre.is_empty() || !post.is_empty()) && old.hooks_ran != digest;
        if run_hooks && spec.mode == Mode::Diff {
            out.notes.push(format!(
                "{} would run (the render changed since they last ran)",
                count(pre.len() + post.len(), "hook")
            ));
        }
        let run_hooks = run_hooks && spec.mode == Mode::Apply;

        if objects.is_empty()
            && spec.refused.is_empty()
            && !old.members.is_empty()
            && spec.mode != Mode::Remove
            && !spec.options.allow_empty
        {
            return Err(Failure::permanent(format!(
                "rendered no objects; refusing to prune the {} it applied before (set options.allowEmpty: true to allow it)",
                count(old.members.len(), "object")
            )));
        }

        // Widen the inventory to old ∪ new before anything is applied, so that a crash in the
        // middle never forgets an object.
        let mut union = old.clone();
        if run_hooks {
            for (o, _) in pre.iter().chain(&post) {
                union.hooks.insert(o.key.clone(), o.api_version.clone());
            }
        }
        for o in &objects {
            union
                .members
                .entry(o.key.clone())
                .or_insert_with(|| Member {
                    api_version: o.api_version.clone(),
                    hash: o.hash.clone(),
                    fields: String::new(),
                });
        }
        let mut written = old.clone();
        if union != old && spec.mode == Mode::Apply {
            self.write_parent(&client, &configmaps, spec, &union)
                .await
                .map_err(|e| {
                    if e.namespace_terminating() {
                        out.terminating.insert(parent.namespace.clone());
                        Failure::transient(terminating_error(&out.terminating))
                    } else {
                        Failure::from(e).context(format_args!("writing the inventory {parent}"))
                    }
                })?;
            written = union;
        }

        // Hooks that must run before the other objects: one failing stops the sync.
        // One budget for all of a sync's hooks, as for its health wait.
        let hooks_deadline = crate::deadline::from_now(spec.options.timeout.min(self.max_wait));
        let mut record = Record {
            hooks: written.hooks.clone(),
            hooks_ran: old.hooks_ran.clone(),
            hooks_pre_ran: old.hooks_pre_ran.clone(),
            ..Record::default()
        };
        // Pre hooks that ran to the end for this render are not run again while the rest of
        // the sync keeps failing.
        if run_hooks && old.hooks_pre_ran != digest {
            let ran = self
                .run_hooks(&client, spec, &pre, hooks_deadline, &mut record, out)
                .await;
            if ran.is_ok() {
                record.hooks_pre_ran = digest.clone();
            }
            if let Err(e) = ran {
                if record.hooks != written.hooks {
                    let mut kept = written.clone();
                    kept.hooks = record.hooks.clone();
                    let _ = self.write_parent(&client, &configmaps, spec, &kept).await;
                }
                return Err(e);
            }
        }

        // Apply, group by group.
        let mut by_rank: BTreeMap<u8, Vec<&Object>> = BTreeMap::new();
        for &o in &objects {
            by_rank
                .entry(plan::rank(&o.key, o.scope))
                .or_default()
                .push(o);
        }
        let mut live: HashMap<ObjectKey, Value> = HashMap::new();
        // The fingerprints of the compact live objects (shared lists'): such an object is read
        // whole when it must be checked.
        let mut fingerprints: HashMap<ObjectKey, String> = HashMap::new();
        let mut listed: BTreeSet<(String, Option<String>)> = BTreeSet::new();
        let mut healthy_wanted: Vec<(&Object, Resource)> = Vec::new();
        for (rank, group) in by_rank {
            // Resolve kinds (after the CRDs of this set, for its custom resources). Nothing more
            // goes into a namespace found being deleted: it would be refused object by object.
            let mut resolved: Vec<(&Object, Resource)> = Vec::new();
            for o in group {
                if in_terminating(o, &out.terminating) {
                    keep_old(&old, &mut record, o);
                    continue;
                }
                match self.resolve_checked(o, spec).await {
                    Ok(r) => resolved.push((o, r)),
                    Err(why) => {
                        if spec.mode == Mode::Diff {
                            out.objects.push(ObjectRow::failed(&o.key, "failed", &why));
                        }
                        out.failed.push(why.context(&o.key));
                        keep_old(&old, &mut record, o);
                    }
                }
            }
            // List what this set has live, once per kind and namespace.
            for (o, r) in &resolved {
                let ns = if r.namespaced {
                    o.key.namespace.clone()
                } else {
                    None
                };
                if !listed.insert((r.api.api_version.clone() + "/" + &r.api.kind, ns.clone())) {
                    continue;
                }
                let shared = match &spec.shared {
                    Some(shared) => {
                        Box::pin(shared.members((&client, &who), r, ns.as_deref(), &id))
                            .await
                            .filter(|(at, _)| self.untouched_since(&id, *at))
                    }
                    None => None,
                };
                let items = match shared {
                    Some((_, items)) => {
                        let mut compact = Vec::with_capacity(items.len());
                        for (item, fingerprint) in items {
                            fingerprints
                                .insert(key_of(&item, &r.api.kind, &r.api.group), fingerprint);
                            compact.push(item);
                        }
                        Ok(compact)
                    }
                    None => {
                        let selector = format!("{PART_OF_LABEL}={id}");
                        Cluster::list(&client, r, ns.as_deref(), &selector).await
                    }
                };
                match items {
                    Ok(items) => {
                        for item in items {
                            live.insert(key_of(&item, &r.api.kind, &r.api.group), item);
                        }
                    }
                    // Not allowed to list, or the namespace is missing: every object of the kind
                    // is treated as new, and its apply reports the cause.
                    Err(e) => tracing::debug!(set = %spec.name, error = %e, "listing failed"),
                }
            }
            // A Namespace of this set that is being deleted is not applied (the apply would
            // succeed, and every object after it be refused).
            resolved.retain(|(o, _)| {
                let deleting = o.key.group.is_empty()
                    && o.key.kind == "Namespace"
                    && live
                        .get(&o.key)
                        .is_some_and(|l| l["metadata"]["deletionTimestamp"].is_string());
                if deleting {
                    out.terminating.insert(o.key.name.clone());
                    keep_old(&old, &mut record, o);
                }
                !deleting
            });
            let results = self
                .apply_group(&client, spec, (&id, &fingerprints), &resolved, &live, &old)
                .await;
            for ((o, r), result) in resolved.into_iter().zip(results) {
                if spec.mode == Mode::Diff {
                    let live = live.get(&o.key);
                    out.objects.push(match &result {
                        Applied::Unchanged => ObjectRow::new(&o.key, "in sync", live),
                        Applied::Diff(_) if live.is_some() => {
                            ObjectRow::new(&o.key, "differs", live)
                        }
                        Applied::Diff(_) => ObjectRow::new(&o.key, "missing", None),
                        Applied::Failed(why) => ObjectRow {
                            detail: Some(why.to_string()),
                            ..ObjectRow::new(&o.key, "failed", live)
                        },
                        Applied::Changed(..) => ObjectRow::new(&o.key, "in sync", live),
                        Applied::Terminating => ObjectRow {
                            detail: Some("its namespace is being deleted".into()),
                            ..ObjectRow::new(&o.key, "failed", live)
                        },
                    });
                }
                match result {
                    Applied::Unchanged => {
                        out.unchanged += 1;
                        keep_old(&old, &mut record, o);
                        healthy_wanted.push((o, r));
                    }
                    Applied::Changed(fields, what) => {
                        out.applied.push(format!("{} ({what})", o.key));
                        record.members.insert(
                            o.key.clone(),
                            Member {
                                api_version: o.api_version.clone(),
                                hash: o.hash.clone(),
                                fields,
                            },
                        );
                        healthy_wanted.push((o, r));
                    }
                    Applied::Diff(text) => {
                        out.changes += 1;
                        out.diff.push_str(&text);
                        keep_old(&old, &mut record, o);
                    }
                    Applied::Failed(why) => {
                        out.failed.push(why.context(&o.key));
                        keep_old(&old, &mut record, o);
                    }
                    Applied::Terminating => {
                        out.terminating
                            .insert(o.key.namespace.clone().unwrap_or_default());
                        keep_old(&old, &mut record, o);
                    }
                }
            }
            if rank == 0 && spec.mode != Mode::Diff {
                self.wait_established(&client, &healthy_wanted, out).await;
            }
        }
        for key in &spec.refused {
            if spec.mode == Mode::Diff {
                out.objects.push(ObjectRow {
                    detail: Some("refused by the render (see the unit's error)".into()),
                    ..ObjectRow::new(key, "refused", None)
                });
            }
            if let Some(m) = old.members.get(key) {
                record.members.insert(key.clone(), m.clone());
            }
        }

        // Prune what left Git.
        let desired: BTreeSet<&ObjectKey> = objects.iter().map(|o| &o.key).collect();
        // Refused objects keep their place; an object that became a hook leaves the members
        // without being deleted (it was just run as a hook).
        let keep: BTreeSet<&ObjectKey> = spec
            .refused
            .iter()
            .chain(pre.iter().chain(&post).map(|(o, _)| &o.key))
            .collect();
        let candidates = plan::prune_candidates(&old, &desired, &keep);
        if !candidates.is_empty() && !spec.options.prune {
            out.notes.push(format!(
                "{} no longer rendered and left in place (prune: false)",
                count(candidates.len(), "object")
            ));
        } else if !candidates.is_empty() {
            self.prune(&client, spec, &id, candidates, &mut record, out)
                .await;
        }

        // Hooks that run after the other objects, once those are applied and healthy; the
        // render counts as having run its hooks only when all of them succeeded.
        if run_hooks && out.failed.is_empty() && out.terminating.is_empty() {
            if !post.is_empty() {
                self.wait_healthy(&client, spec, &healthy_wanted, out).await;
            }
            if out.failed.is_empty() {
                match self
                    .run_hooks(&client, spec, &post, hooks_deadline, &mut record, out)
                    .await
                {
                    Ok(()) => record.hooks_ran = digest,
                    Err(e) => out.failed.push(e),
                }
            }
        }
        if spec.mode == Mode::Remove {
            self.delete_hooks(&client, &id, &mut record, out).await;
        }

        // Narrow the inventory to what is there now.
        if spec.mode == Mode::Apply && record != written {
            self.write_parent(&client, &configmaps, spec, &record)
                .await
                .map_err(|e| {
                    Failure::from(e).context(format_args!("writing the inventory {parent}"))
                })?;
        }
        if spec.mode == Mode::Remove
            && record.members.is_empty()
            && record.hooks.is_empty()
            && stored.is_some()
        {
            let uid = stored.as_ref().and_then(|s| s["metadata"]["uid"].as_str());
            self.touch(&id);
            let deleted = Cluster::delete(
                &client,
                &configmaps,
                Some(&parent.namespace),
                &parent.name,
                uid,
            )
            .await;
            self.touch(&id);
            deleted.map_err(|e| {
                Failure::from(e).context(format_args!("deleting the inventory {parent}"))
            })?;
        } else if spec.mode == Mode::Remove && stored.is_some() {
            self.write_parent(&client, &configmaps, spec, &record)
                .await
                .map_err(|e| {
                    Failure::from(e).context(format_args!("writing the inventory {parent}"))
                })?;
        }

        if !out.terminating.is_empty() {
            return Err(Failure::transient(terminating_error(&out.terminating)));
        }
        if spec.options.wait && spec.mode == Mode::Apply && out.failed.is_empty() {
            drop(slot.take());
            self.wait_healthy(&client, spec, &healthy_wanted, out).await;
        }
        Ok(())
    }

    /// The kind as the cluster serves it, with the tenant's limits checked against its real scope.
    pub(super) async fn resolve_checked(
        &self,
        o: &Object,
        spec: &SetSpec,
    ) -> Result<Resource, Failure> {
        let r = self.cluster.resolve(&o.api_version, &o.key.kind).await?;
        if let (false, Some(limits)) = (r.namespaced, &spec.options.limits)
            && !limits.allows_cluster_kind(&o.key.group, &o.key.kind)
        {
            return Err(Failure::permanent(format!(
                "{} is cluster-scoped in this cluster and not in the tenant's limits.clusterScopedKinds; refused",
                o.key.kind
            )));
        }
        if r.namespaced && o.key.namespace.is_none() {
            return Err(Failure::permanent(
                "namespaced in this cluster, but names no namespace",
            ));
        }
        Ok(r)
    }

    /// Applies one order group, `concurrency` objects at a time; results in input order.
    async fn apply_group(
        &self,
        client: &Client,
        spec: &SetSpec,
        (id, fingerprints): (&str, &HashMap<ObjectKey, String>),
        group: &[(&Object, Resource)],
        live: &HashMap<ObjectKey, Value>,
        old: &Record,
    ) -> Vec<Applied> {
        let limit = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let mut spawned = BTreeSet::new();
        for (i, (o, r)) in group.iter().enumerate() {
            let fields = fingerprints.get(&o.key).map(String::as_str);
            let decision = plan::decide(o, live.get(&o.key), old.members.get(&o.key), fields);
            if decision == Decision::Unchanged {
                continue;
            }
            spawned.insert(i);
            // The permit before the task: only `concurrency` request bodies exist at once.
            let permit = limit
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let body = plan::applied_body(o, id);
            let live = live.get(&o.key).cloned();
            let (client, r) = (client.clone(), r.clone());
            let (force, recreate, mode) = (spec.options.force, spec.options.recreate, spec.mode);
            let timeout = spec.options.timeout.min(self.max_wait);
            let whole = fields.is_some() && decision == Decision::Check;
            tasks.spawn(tracing::Instrument::in_current_span(async move {
                let _permit = permit;
                // A compact live object is enough to decide, not to compare: read it whole.
                let live = if whole {
                    let ns = body["metadata"]["namespace"]
                        .as_str()
                        .filter(|_| r.namespaced);
                    let name = body["metadata"]["name"].as_str().unwrap_or_default();
                    match Cluster::get(&client, &r, ns, name).await {
                        Ok(l) => l,
                        Err(e) => {
                            return (i, Applied::Failed(Failure::from(e).context("reading it")));
                        }
                    }
                } else {
                    live
                };
                let result = apply_one(
                    &client, &r, &body, live, decision, force, recreate, mode, timeout,
                )
                .await;
                (i, result)
            }));
        }
        // A task that never reports (a panic, a bug) fails its object; it is never "unchanged".
        let mut results: Vec<Applied> = (0..group.len())
            .map(|i| {
                if spawned.contains(&i) {
                    Applied::Failed(Failure::transient(
                        "internal error: the apply did not finish (see the log)",
                    ))
                } else {
                    Applied::Unchanged
                }
            })
            .collect();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((i, result)) => results[i] = result,
                Err(e) => tracing::error!(error = %e, "an apply task failed"),
            }
        }
        results
    }

    async fn write_parent(
        &self,
        client: &Client,
        configmaps: &Resource,
        spec: &SetSpec,
        record: &Record,
    ) -> Result<(), Error> {
        // Before and after: a list read while the write is in flight is stale either way.
        self.touch(&spec.parent.id());
        let mut body = spec.parent.body(record, spec.tenant.as_deref(), &spec.set);
        if let Some(fleet) = &spec.fleet {
            body["metadata"]["labels"][crate::inventory::FLEET_LABEL] = fleet.as_str().into();
        }
        let written = Cluster::apply(client, configmaps, &body, true, false).await;
        self.touch(&spec.parent.id());
        written.map(|_| ())
    }
}

/// Whether `o` is, or goes into, one of the namespaces being deleted.
fn in_terminating(o: &Object, terminating: &BTreeSet<String>) -> bool {
    match &o.key.namespace {
        Some(ns) => terminating.contains(ns),
        None => {
            o.key.group.is_empty() && o.key.kind == "Namespace" && terminating.contains(&o.key.name)
        }
    }
}

/// The set's error when namespaces it applies into are being deleted: said once, not per object.
pub(crate) fn terminating_error(namespaces: &BTreeSet<String>) -> String {
    let list: Vec<&str> = namespaces.iter().map(String::as_str).collect();
    let (noun, is, it, it_is) = if list.len() == 1 {
        ("namespace", "is", "it", "it is")
    } else {
        ("namespaces", "are", "them", "they are")
    };
    format!(
        "{noun} {} {is} being deleted: nothing is applied in {it} until {it_is} gone (retried later)",
        list.join(", ")
    )
}

fn keep_old(old: &Record, record: &mut Record, o: &Object) {
    let member = old.members.get(&o.key).cloned().unwrap_or_else(|| Member {
        api_version: o.api_version.clone(),
        hash: o.hash.clone(),
        fields: String::new(),
    });
    record.members.insert(o.key.clone(), member);
}

fn key_of(item: &Value, kind: &str, group: &str) -> ObjectKey {
    ObjectKey {
        group: group.to_string(),
        kind: kind.to_string(),
        namespace: item["metadata"]["namespace"].as_str().map(str::to_string),
        name: item["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    }
}

pub(crate) fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_unit_still_waiting_gives_way_to_a_later_round() {
        let wanted = Wanted::default();
        let unit = crate::fleet::UnitId {
            tenant: Some("ai".into()),
            app: "web".into(),
        };
        wanted.want([&unit], 1);
        // Round 1's turn never comes; round 2 queues the unit meanwhile.
        let waiting = wanted.unless_later(&unit, 1, std::future::pending::<()>());
        let push = async {
            tokio::task::yield_now().await;
            wanted.want([&unit], 2);
        };
        let (gave_way, ()) = tokio::join!(waiting, push);
        assert_eq!(gave_way, Err(2));
        // The later round's own wait goes ahead; so does a command's (round 0).
        assert_eq!(wanted.unless_later(&unit, 2, async { 7 }).await, Ok(7));
        assert_eq!(wanted.unless_later(&unit, 0, async { 8 }).await, Ok(8));
        // An earlier round queueing it again moves nothing.
        wanted.want([&unit], 1);
        assert_eq!(wanted.unless_later(&unit, 1, async {}).await, Err(2));
    }
}
