//! One round: fetch what it needs fresh (the rest comes from the last good checkouts), read the
//! fleet and catalogs, render the units in its scope, sync them, and post a Kubernetes Event for
//! each unit that failed or changed something.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use tracing::Instrument as _;

use crate::failure::Failure;
use crate::fleet::Problem;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::schedule::{Plan, Round, Scope, covers};
use crate::agent::status::Metrics;
pub(crate) use crate::agent::{Target, describe, unit_name};
use crate::config::Config;
use crate::fleet::{Identity, Owner, UnitId, UnitSource};
use crate::inventory::Parent;
use crate::pipeline::{Fetcher, location_key, prepare_with, short};
use crate::reconcile::{self, Engine, Entry, Filter, Mode};
use crate::source::Sources;

/// What a round works with; replaced as a whole when the config is reloaded.
pub(crate) struct Context {
    pub config: Arc<Config>,
    pub sources: Arc<Sources>,
    pub engine: Arc<Engine>,
    pub metrics: Arc<Metrics>,
    /// Which unit owns which object, from every round's renders; kept across reloads.
    pub claims: Arc<Mutex<crate::render::Claims>>,
    /// With sharding: the shards the scheduler acts on (a round reads them as it starts; a
    /// shard lost later cancels it).
    pub shards: Option<tokio::sync::watch::Receiver<crate::shard::Held>>,
}

/// A finished round.
pub(crate) struct Done {
    pub id: u64,
    pub scope: Scope,
    pub entries: Vec<Entry>,
    /// The round failed as a whole: nothing was synced.
    pub error: Option<Failure>,
    pub view: Option<View>,
}

/// What a round learnt of the fleet.
pub(crate) struct View {
    pub fleet_revision: String,
    pub tenant_revisions: BTreeMap<String, String>,
    /// Who signed each unit's revision, where its source asks for signatures.
    pub signers: BTreeMap<UnitId, String>,
    /// Every placed unit's schedule.
    pub plans: BTreeMap<UnitId, Plan>,
    /// Problems of the fleet (`None`) or of a tenant, by owner.
    pub problems: BTreeMap<Option<String>, Vec<Problem>>,
    /// Tenants whose repo or catalog could not be read: their units are kept, not dropped.
    pub tenants_failed: BTreeSet<String>,
    /// Which repositories feed which scopes, for webhooks.
    pub targets: Vec<Target>,
    /// Every unit placed on the cluster, of every shard (the status lists them all).
    pub everywhere: BTreeSet<UnitId>,
}

/// Runs one round to the end, in its span (`round{id, scope}`): the logs of its fetches,
/// renders and units carry it.
pub(crate) async fn run(ctx: Arc<Context>, round: Round) -> Done {
    let span = tracing::info_span!("round", id = round.id, scope = %describe(&round.scope));
    run_in(ctx, round, span.clone()).instrument(span).await
}

async fn run_in(ctx: Arc<Context>, round: Round, span: tracing::Span) -> Done {
    let Round {
        id,
        scope,
        fresh,
        reasons,
        skip,
        prior,
        stuck,
    } = round;
    // The shards held as the round starts: a shard lost later cancels the round.
    let held = ctx.shards.as_ref().map(|rx| rx.borrow().clone());
    tracing::info!(parent: &span, reasons = ?reasons, shards = ?held.as_ref().map(|h| &h.held), "round starts");
    // A round asked for named units (a push) takes them over from an earlier round that has not
    // reached them yet, from now: that round's render is older.
    if let Scope::Units(units) = &scope {
        ctx.engine.wanted.want(units, id);
    }
    let started = std::time::Instant::now();
    let handle = tokio::runtime::Handle::current();
    // What the cluster serves, for Helm charts; without it (an API server that does not
    // answer) charts render as offline, and the round fails below anyway.
    let capabilities = match ctx.engine.cluster.capabilities().await {
        Ok(c) => Some(c),
        Err(error) => {
            tracing::warn!(parent: &span, %error, "cannot read the cluster's capabilities; charts render without them");
            None
        }
    };
    // The key of Secrets' hashes, shared by every replica through the cluster (read once).
    let secret_key = match ctx.engine.cluster.secret_hash_key(true).await {
        Ok(key) => key,
        Err(error) => {
            tracing::warn!(parent: &span, %error, "no key for Secrets' hashes; they are hashed plainly this round");
            None
        }
    };
    let prepared = {
        let (ctx, scope, span, held) = (ctx.clone(), scope.clone(), span.clone(), held.clone());
        tokio::task::spawn_blocking(move || {
            let _round = span.enter();
            let mut fetcher = Fetcher::on(handle, ctx.sources.clone());
            fetcher.fresh = fresh;
            fetcher.interval = ctx.config.interval;
            let metrics = ctx.metrics.clone();
            fetcher.observe = Some(Arc::new(move |repo, took, error| {
                metrics.fetched(repo, took, error.is_none());
                if error.is_some_and(|e| e.unverified) {
                    metrics.unverified(repo);
                }
            }));
            let cluster = ctx.engine.cluster.clone();
            let handle = tokio::runtime::Handle::current();
            let read_secret = |identity: &crate::fleet::Identity, ns: &str, name: &str| {
                handle.block_on(cluster.read_secret(identity, ns, name))
            };
            prepare_with(
                &ctx.config,
                &fetcher,
                &|u| covers(&scope, u) && crate::shard::owns_unit(held.as_ref(), u),
                capabilities,
                Some(&read_secret),
                secret_key,
            )
            .map_err(|e| Failure::new(e.kind(), e.to_string()))
        })
        .await
        .unwrap_or_else(|e| {
            Err(Failure::transient(format!(
                "internal error: the fetch and render task failed: {e}"
            )))
        })
    };
    let prepared = match prepared {
        Ok(p) => {
            tracing::info!(parent: &span, rendered = p.input.results.len(), took_ms = started.elapsed().as_millis() as u64, "fetched and rendered");
            p
        }
        Err(error) => {
            tracing::error!(parent: &span, %error, kind = %error.kind, "round failed; nothing applied or pruned");
            return Done {
                id,
                scope,
                entries: Vec::new(),
                error: Some(error),
                view: None,
            };
        }
    };
    let view = view_of(&ctx.config, &prepared, held.as_ref());
    // An API server that does not answer fails the round as a whole, not each unit on its own.
    if let Err(e) = ctx.engine.cluster.resolve("v1", "ConfigMap").await {
        let error = Failure::new(
            e.kind(),
            format!(
                "API server {}: {e}; nothing applied",
                ctx.engine.cluster.url()
            ),
        );
        tracing::error!(parent: &span, %error, kind = %error.kind, "round failed");
        return Done {
            id,
            scope,
            entries: Vec::new(),
            error: Some(error),
            view: Some(view),
        };
    }
    let filter = match &scope {
        Scope::All => Filter {
            skip,
            held,
            ..Default::default()
        },
        Scope::Tenant(t) => Filter {
            tenant: Some(t.clone()),
            held,
            ..Default::default()
        },
        Scope::Units(units) => Filter {
            only: Some(units.clone()),
            held,
            ..Default::default()
        },
    };
    let mut prepared = prepared;
    prepared.input.prior = prior;
    prepared.input.stuck = stuck;
    prepared.input.round = id;
    // Each unit's objects are checked against the claims of the units this round did not render
    // (a narrow round) or could not render (they keep what they had); then the claims are
    // updated.
    if let Ok(mut claims) = ctx.claims.lock() {
        claims.check(&mut prepared.input.results);
        let placed: Vec<UnitId> = prepared.input.units.iter().map(|u| u.id.clone()).collect();
        claims.record(
            id,
            &prepared.input.results,
            &placed,
            &prepared.input.tenants_failed,
        );
    }
    let entries = reconcile::pass(
        ctx.engine.clone(),
        &mut prepared.input,
        &filter,
        Mode::Apply,
    )
    .await;
    for e in &entries {
        log_entry(&span, e);
    }
    post_events(&ctx.engine, &prepared.input, &entries).await;
    Done {
        id,
        scope,
        entries,
        error: None,
        view: Some(view),
    }
}

/// What the round learnt; with sharding, only the units of the shards it held are scheduled here.
fn view_of(
    config: &Config,
    prepared: &crate::pipeline::Prepared,
    held: Option<&crate::shard::Held>,
) -> View {
    let input = &prepared.input;
    let mut plans = BTreeMap::new();
    let mut targets = vec![Target::of(&config.fleet, Scope::All)];
    for (name, tenant) in &input.fleet.tenants {
        if input.placed.contains(name) {
            targets.push(Target::of(&tenant.source, Scope::Tenant(name.clone())));
        }
    }
    for unit in input
        .units
        .iter()
        .filter(|u| crate::shard::owns_unit(held, &u.id))
    {
        let tenant = unit
            .id
            .tenant
            .as_ref()
            .and_then(|t| input.fleet.tenants.get(t));
        let mut sources = Vec::new();
        let source = match &unit.source {
            UnitSource::Fleet { path } => {
                sources.push(location_key(&config.fleet));
                format!("fleet repo: {path}")
            }
            UnitSource::Tenant { path } => {
                sources.extend(tenant.map(|t| location_key(&t.source)));
                format!("tenant repo: {path}")
            }
            UnitSource::Repo(spec) => {
                sources.extend(tenant.map(|t| location_key(&t.source)));
                sources.push(location_key(spec));
                targets.push(Target::of(spec, Scope::Units([unit.id.clone()].into())));
                let path = spec
                    .path
                    .as_deref()
                    .map(|p| format!(" {p}"))
                    .unwrap_or_default();
                format!("git {} {}{path}", location_key(spec), spec.reference)
            }
            UnitSource::Chart(spec) => {
                sources.extend(tenant.map(|t| location_key(&t.source)));
                sources.push(spec.repo.to_string());
                format!("chart {} {} from {}", spec.name, spec.version, spec.repo)
            }
        };
        plans.insert(
            unit.id.clone(),
            Plan {
                interval: unit
                    .options
                    .interval
                    .unwrap_or(config.interval)
                    .max(crate::config::MIN_INTERVAL),
                suspend: unit.options.suspend,
                sources,
                source,
            },
        );
    }
    let mut problems: BTreeMap<Option<String>, Vec<Problem>> = BTreeMap::new();
    for p in &prepared.problems {
        // Problems found before any set exists (the fleet's, a tenant's, an app that could not
        // be placed): logged here, since no set carries them.
        tracing::warn!(problem = %p, "fleet or catalog problem");
        match &p.owner {
            Owner::Fleet => problems.entry(None).or_default().push(p.clone()),
            Owner::Tenant(t) => problems.entry(Some(t.clone())).or_default().push(p.clone()),
            Owner::Unit(_) => {}
        }
    }
    View {
        fleet_revision: prepared.fleet_revision.clone(),
        tenant_revisions: prepared.tenant_revisions.clone(),
        signers: input.signers.clone(),
        plans,
        problems,
        tenants_failed: input.tenants_failed.clone(),
        targets,
        everywhere: input.units.iter().map(|u| u.id.clone()).collect(),
    }
}

fn log_entry(span: &tracing::Span, e: &Entry) {
    let revision = e.revision.as_deref().map(short).unwrap_or("-");
    let o = &e.outcome;
    for a in &o.applied {
        tracing::info!(parent: span, set = %e.name, revision, object = %a, "applied");
    }
    for p in &o.pruned {
        tracing::info!(parent: span, set = %e.name, revision, object = %p, "pruned");
    }
    for f in &o.failed {
        tracing::warn!(parent: span, set = %e.name, revision, failure = %f, "object failed");
    }
    if let Some(error) = &o.error {
        tracing::warn!(parent: span, set = %e.name, revision, %error, "set failed");
    }
    tracing::info!(
        parent: span,
        set = %e.name,
        revision,
        converged = o.converged(),
        applied = o.applied.len(),
        unchanged = o.unchanged,
        pruned = o.pruned.len(),
        failed = o.failed.len(),
        took_ms = o.took.as_millis() as u64,
        "synced"
    );
}

/// A Kubernetes Event on each unit's inventory for a failed sync and for a sync that changed
/// something; posted as the agent. An Event that cannot be posted is logged, nothing more.
async fn post_events(engine: &Engine, input: &reconcile::Input, entries: &[Entry]) {
    let Ok(client) = engine.cluster.client(&Identity::Agent) else {
        return;
    };
    let host = hostname();
    for e in entries {
        let Some(id) = &e.unit else { continue };
        let o = &e.outcome;
        let (kind, reason, message) = if !o.converged() {
            ("Warning", "SyncFailed", o.failure_lines().join("; "))
        } else if !o.applied.is_empty() || !o.pruned.is_empty() {
            (
                "Normal",
                "Synced",
                format!(
                    "{} applied, {} pruned at {}",
                    o.applied.len(),
                    o.pruned.len(),
                    e.revision.as_deref().map(short).unwrap_or("?")
                ),
            )
        } else {
            continue;
        };
        let namespace = input
            .units
            .iter()
            .find(|u| &u.id == id)
            .and_then(|u| u.namespace.clone());
        let parent = Parent::of_unit(id, namespace.as_deref());
        let now = std::time::SystemTime::now();
        let nanos = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let time = Time(k8s_openapi::jiff::Timestamp::now());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{nanos:x}", parent.name)),
                namespace: Some(parent.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("ConfigMap".into()),
                name: Some(parent.name.clone()),
                namespace: Some(parent.namespace.clone()),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(truncate(&format!("{}: {message}", unit_name(id)), 1024)),
            type_: Some(kind.into()),
            source: Some(EventSource {
                component: Some("flotilla".into()),
                host: Some(host.clone()),
            }),
            reporting_component: Some("flotilla".into()),
            reporting_instance: Some(host.clone()),
            first_timestamp: Some(time.clone()),
            last_timestamp: Some(time),
            count: Some(1),
            ..Default::default()
        };
        let api: kube::Api<Event> = kube::Api::namespaced(client.clone(), &parent.namespace);
        if let Err(error) = api.create(&Default::default(), &event).await {
            tracing::warn!(unit = %unit_name(id), %error, "could not post an Event");
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// This replica's name: `$POD_NAME`, else the host name.
pub(crate) fn hostname() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "flotilla".into())
}
