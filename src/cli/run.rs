//! `flotilla run --once` and `flotilla diff`: fetch, render, then one pass over the cluster that
//! applies (or describes) every unit, and a summary per unit.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use crate::cluster::Cluster;
use crate::config::Config;
use crate::fleet::{Owner, Problem};
use crate::pipeline::{Fetcher, prepare_with, short};
use crate::reconcile::{self, Engine, Entry, Filter, Input, Mode};

/// Reconciles every unit once; exit 0 only if every one converged.
pub(crate) fn once(config: &Config) -> anyhow::Result<ExitCode> {
    let (fetcher, engine, mut input, problems) = prepare(config, true)?;
    let engine = engine?;
    let entries = fetcher.block_on(reconcile::pass(
        engine,
        &mut input,
        &Filter::default(),
        Mode::Apply,
    ));
    let mut out = std::io::stdout().lock();
    let mut ok = problems.is_empty();
    for e in &entries {
        ok &= e.outcome.converged();
        write_entry(&mut out, e)?;
    }
    out.flush()?;
    for p in &problems {
        eprintln!("{p}");
    }
    let failed = entries.iter().filter(|e| !e.outcome.converged()).count();
    if failed > 0 {
        eprintln!(
            "{failed} of {} not converged",
            reconcile::set::count(entries.len(), "set")
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Prints what a sync would change; exit 1 if anything would (or could not be compared).
pub(crate) fn diff(config: &Config, filter: Filter) -> anyhow::Result<ExitCode> {
    let (fetcher, engine, mut input, problems) = prepare(config, false)?;
    if let Some(t) = &filter.tenant
        && !input.fleet.tenants.contains_key(t)
    {
        return Err(super::render::unknown_tenant(t, &input.fleet, &problems));
    }
    let engine = engine?;
    let entries = fetcher.block_on(reconcile::pass(engine, &mut input, &filter, Mode::Diff));
    let mut out = std::io::stdout().lock();
    let mut changes = 0;
    let mut errors = 0;
    for e in &entries {
        changes += e.outcome.changes;
        if !e.outcome.diff.is_empty() {
            writeln!(out, "# {}", e.name)?;
            out.write_all(e.outcome.diff.as_bytes())?;
        }
        for f in &e.outcome.failed {
            eprintln!("{}: {f}", e.name);
            errors += 1;
        }
        if let Some(error) = &e.outcome.error {
            eprintln!("{}: {error}", e.name);
            errors += 1;
        }
    }
    out.flush()?;
    let selected: Vec<&Problem> = problems
        .iter()
        .filter(|p| match &p.owner {
            Owner::Tenant(t) => filter.tenant.as_deref().is_none_or(|w| w == t),
            Owner::Unit(id) => {
                filter
                    .tenant
                    .as_deref()
                    .is_none_or(|w| id.tenant.as_deref() == Some(w))
                    && filter.app.as_deref().is_none_or(|a| a == id.app)
            }
            Owner::Fleet => true,
        })
        .collect();
    for p in &selected {
        eprintln!("{p}");
    }
    eprintln!(
        "{} would change{}",
        reconcile::set::count(changes, "object"),
        if errors + selected.len() > 0 {
            format!("; {} could not be compared", errors + selected.len())
        } else {
            String::new()
        }
    );
    Ok(if changes == 0 && errors == 0 && selected.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Connects to the cluster, then fetches and renders this agent's cluster with what it serves
/// (offline if it cannot be reached: the connection's error comes back beside the input, so that
/// the caller reports what matters first); the fleet's and tenants' problems come back with the
/// input (units' own render problems are in the input's results).
fn prepare(
    config: &Config,
    applying: bool,
) -> anyhow::Result<(Fetcher, Connected, Input, Vec<Problem>)> {
    let fetcher = Fetcher::new(config)?;
    let engine = fetcher.block_on(connect(config));
    let capabilities = match &engine {
        Ok(engine) => match fetcher.block_on(engine.cluster.capabilities()) {
            Ok(c) => Some(c),
            Err(error) => {
                tracing::warn!(%error, "cannot read the cluster's capabilities; charts render without them");
                None
            }
        },
        Err(_) => None,
    };
    let read_secret = |identity: &crate::fleet::Identity, ns: &str, name: &str| match &engine {
        Ok(engine) => fetcher.block_on(engine.cluster.read_secret(identity, ns, name)),
        Err(_) => Err("the cluster cannot be reached".to_string()),
    };
    // The key of Secrets' hashes, shared with the agent through the cluster; `diff` reads it
    // but does not make it.
    let secret_key = match &engine {
        Ok(engine) => fetcher
            .block_on(engine.cluster.secret_hash_key(applying))
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "no key for Secrets' hashes");
                None
            }),
        Err(_) => None,
    };
    let prepared = prepare_with(
        config,
        &fetcher,
        &|_| true,
        capabilities,
        Some(&read_secret),
        secret_key,
    )?;
    Ok((fetcher, engine, prepared.input, prepared.problems))
}

/// The engine, or why the cluster could not be reached.
type Connected = anyhow::Result<Arc<Engine>>;

/// Connects and checks that the API server answers, so that an unreachable cluster is one clear
/// error rather than one per unit.
pub(crate) async fn connect(config: &Config) -> anyhow::Result<Arc<Engine>> {
    let cluster = Cluster::connect(config.kubeconfig.as_deref()).await?;
    if let Err(e) = cluster.resolve("v1", "ConfigMap").await {
        anyhow::bail!("API server {}: {e}; nothing applied", cluster.url());
    }
    Ok(Arc::new(Engine {
        cluster: Arc::new(cluster),
        concurrency: config.apply_concurrency as usize,
        units: crate::reconcile::slots::Slots::new(config.concurrency as usize),
        max_wait: config.unit_timeout,
        unit_locks: Default::default(),
        touched: Default::default(),
        synced_by: Default::default(),
        wanted: Default::default(),
    }))
}

/// `name @ revision: state: counts`, then one line per change, failure and note.
pub(crate) fn write_entry(out: &mut impl std::io::Write, e: &Entry) -> std::io::Result<()> {
    write_entry_of_kind(out, e, e.outcome.failure_kind())
}

/// [`write_entry`], the kind of its failure given (`None`: not known, from an older agent).
pub(crate) fn write_entry_of_kind(
    out: &mut impl std::io::Write,
    e: &Entry,
    kind: Option<crate::failure::Kind>,
) -> std::io::Result<()> {
    let o = &e.outcome;
    let revision = e
        .revision
        .as_deref()
        .map(|r| format!(" @ {}", short(r)))
        .unwrap_or_default();
    // A failure says whether the agent retries it soon (transient) or waits for a change.
    let state = match (o.converged(), kind) {
        (true, _) => "converged".to_string(),
        (false, Some(kind)) => format!("FAILED ({kind})"),
        (false, None) => "FAILED".to_string(),
    };
    let mut counts = vec![
        format!("{} applied", o.applied.len()),
        format!("{} unchanged", o.unchanged),
        format!("{} pruned", o.pruned.len()),
    ];
    if !o.failed.is_empty() {
        counts.push(format!("{} failed", o.failed.len()));
    }
    writeln!(out, "{}{revision}: {state}: {}", e.name, counts.join(", "))?;
    if let Some(error) = &o.error {
        writeln!(out, "  error: {error}")?;
    }
    for a in &o.applied {
        writeln!(out, "  applied {a}")?;
    }
    for p in &o.pruned {
        writeln!(out, "  pruned {p}")?;
    }
    for f in &o.failed {
        writeln!(out, "  failed {f}")?;
    }
    for n in &o.notes {
        writeln!(out, "  note: {n}")?;
    }
    Ok(())
}
