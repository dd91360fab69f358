//! `flotilla render` and the fleet part of `flotilla validate`: fetch the fleet, the tenants'
//! repos and the app repos, read the catalogs, place units on a cluster, render them, and report
//! every problem.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::{Config, SourceSpec};
use crate::fleet::{self, Catalog, Cluster, Fleet, Owner, Problem, Unit, UnitId, UnitSource};
use crate::render::{self, Object, Tools};
use crate::source::{Checkout, Sources};

/// Which units to print.
pub struct Filter {
    pub cluster: Option<String>,
    pub tenant: Option<String>,
    pub app: Option<String>,
}

/// The fleet, the tenants' checkouts and catalogs, read once.
pub(crate) struct Loaded {
    pub fleet_checkout: Checkout,
    pub fleet: Fleet,
    /// Each tenant's checkout (at the folder holding its `tenant.yaml`), when it could be fetched.
    pub tenants: BTreeMap<String, Checkout>,
    pub catalogs: BTreeMap<String, Catalog>,
    pub problems: Vec<Problem>,
}

/// One cluster's units rendered.
pub(crate) struct Rendered {
    /// The tenants that land on the cluster.
    pub tenants: Vec<String>,
    pub units: Vec<Unit>,
    pub results: BTreeMap<UnitId, render::Rendered>,
    /// The revision each unit was rendered from.
    pub revisions: BTreeMap<UnitId, String>,
    pub problems: Vec<Problem>,
}

/// Fetches sources on a runtime from a blocking thread: the CLI's own runtime, or the daemon's
/// (from `spawn_blocking`).
pub(crate) struct Fetcher {
    /// The CLI's runtime, owned here; the daemon lends its handle instead.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    sources: Arc<Sources>,
    /// App repos already fetched in this run, by location and ref: `validate` renders every
    /// cluster, and an app repo used on several clusters is fetched once, not once per cluster.
    repos: std::cell::RefCell<BTreeMap<String, Result<Checkout, String>>>,
    /// The locations (see [`location_key`]) to fetch from their remote; any other is served from
    /// its last good checkout when it has one. `None`: fetch everything.
    pub fresh: Option<BTreeSet<String>>,
    /// Told of every remote fetch: the location, how long it took, whether it worked.
    pub observe: Option<Observer>,
}

/// A callback for fetch figures (the daemon's metrics).
pub(crate) type Observer = Arc<dyn Fn(&str, std::time::Duration, bool) + Send + Sync>;

/// The key a source is known by for webhooks and fresh fetches: its location, redacted.
pub(crate) fn location_key(spec: &SourceSpec) -> String {
    spec.location.to_string()
}

pub fn render(config: &Config, filter: &Filter) -> anyhow::Result<ExitCode> {
    let cluster_name = filter
        .cluster
        .clone()
        .unwrap_or_else(|| config.cluster.clone());
    let wanted = |t: &str| filter.tenant.as_deref().is_none_or(|w| w == t);
    let fetcher = Fetcher::new(config)?;
    // Every catalog of a tenant on this cluster is read even when one tenant is asked for: a
    // filtered render must report exactly what the full render reports about that tenant
    // (duplicates across tenants included). Tenants elsewhere are not fetched at all.
    let loaded = load(config, &fetcher, Some(&cluster_name))?;
    let Some(cluster) = loaded.fleet.clusters.get(&cluster_name).cloned() else {
        let known: Vec<&str> = loaded.fleet.clusters.keys().map(String::as_str).collect();
        for p in &loaded.problems {
            eprintln!("{p}");
        }
        anyhow::bail!(
            "cluster {cluster_name:?} is not in the fleet (clusters: {})",
            known.join(", ")
        );
    };
    if let Some(t) = &filter.tenant
        && !loaded.fleet.tenants.contains_key(t)
    {
        return Err(unknown_tenant(t, &loaded.fleet, &loaded.problems));
    }
    let rendered = render_cluster(
        &loaded,
        &fetcher,
        &cluster,
        &Tools::from(&config.render),
        &|_| true,
    );

    let mut out = std::io::stdout().lock();
    for unit in &rendered.units {
        let selected = match &unit.id.tenant {
            Some(t) => wanted(t),
            None => filter.tenant.is_none(),
        } && filter.app.as_deref().is_none_or(|a| a == unit.id.app);
        if let (true, Some(Ok(objects))) = (selected, rendered.results.get(&unit.id)) {
            let revision = rendered
                .revisions
                .get(&unit.id)
                .map(String::as_str)
                .unwrap_or("?");
            for o in objects.iter().filter(|o| o.refused.is_none()) {
                write_object(&mut out, &unit.id, revision, o)?;
            }
        }
    }
    out.flush()?;

    // Problems of the fleet, of the tenants on this cluster and of the selected units.
    let mut problems: Vec<Problem> = loaded
        .problems
        .iter()
        .chain(&rendered.problems)
        .cloned()
        .collect();
    for (id, result) in &rendered.results {
        let selected = id.tenant.as_deref().is_none_or(wanted)
            && filter.app.as_deref().is_none_or(|a| a == id.app);
        if selected {
            problems.extend(unit_problems(id, result));
        }
    }
    problems.sort();
    problems.dedup();
    for p in &problems {
        eprintln!("{p}");
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Why `--tenant name` names no tenant of the fleet: its file could not be read (with every
/// problem found in it), or there is no such file (with the tenants there are).
pub(crate) fn unknown_tenant(name: &str, fleet: &Fleet, problems: &[Problem]) -> anyhow::Error {
    let in_its_file: Vec<&str> = problems
        .iter()
        .filter(|p| {
            p.owner == Owner::Fleet
                && [".yaml", ".yml"].iter().any(|ext| {
                    p.detail
                        .strip_prefix(&format!("tenants/{name}{ext}"))
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with(':'))
                })
        })
        .map(|p| p.detail.as_str())
        .collect();
    if in_its_file.is_empty() {
        let known: Vec<&str> = fleet.tenants.keys().map(String::as_str).collect();
        anyhow::anyhow!(
            "tenant {name:?} is not in the fleet (tenants: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )
    } else {
        anyhow::anyhow!(
            "tenant {name:?} could not be read from the fleet: {}",
            in_its_file.join("; ")
        )
    }
}

/// Checks the fleet and every tenant catalog, and renders every cluster of the fleet.
pub fn validate(config: &Config, config_file: &Path) -> anyhow::Result<ExitCode> {
    let fetcher = Fetcher::new(config)?;
    let loaded = load(config, &fetcher, None)?;
    let tools = Tools::from(&config.render);
    let mut lines = Vec::new();
    let mut units = 0;
    for cluster in loaded.fleet.clusters.values() {
        let rendered = render_cluster(&loaded, &fetcher, cluster, &tools, &|_| true);
        units += rendered.units.len();
        let problems = rendered.problems.iter().cloned().chain(
            rendered
                .results
                .iter()
                .flat_map(|(id, r)| unit_problems(id, r)),
        );
        for p in problems {
            // Tenant-wide problems do not depend on the cluster; say them once.
            match p.owner {
                Owner::Unit(_) => lines.push(format!("cluster {}: {p}", cluster.name)),
                _ => lines.push(p.to_string()),
            }
        }
    }
    lines.extend(loaded.problems.iter().map(Problem::to_string));
    lines.sort();
    lines.dedup();
    for line in &lines {
        eprintln!("{line}");
    }
    if lines.is_empty() {
        println!(
            "{}: ok (fleet {} at {}: {} clusters, {} tenants; {units} units rendered)",
            config_file.display(),
            config.fleet,
            loaded.fleet_checkout.revision,
            loaded.fleet.clusters.len(),
            loaded.fleet.tenants.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        let n = lines.len();
        eprintln!(
            "{}: {n} problem{}",
            config_file.display(),
            if n == 1 { "" } else { "s" }
        );
        Ok(ExitCode::from(1))
    }
}

/// A unit's render problems, or the objects it refused.
pub(crate) fn unit_problems(id: &UnitId, result: &render::Rendered) -> Vec<Problem> {
    match result {
        Ok(objects) => objects.iter().filter_map(|o| o.refusal(id)).collect(),
        Err(list) => list.clone(),
    }
}

impl Fetcher {
    /// A fetcher with its own runtime, for one CLI command.
    pub fn new(config: &Config) -> anyhow::Result<Fetcher> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(Fetcher {
            runtime: Some(runtime),
            ..Fetcher::on(handle, Arc::new(Sources::new(config)))
        })
    }

    /// A fetcher on a running runtime; to be used from a blocking thread.
    pub fn on(handle: tokio::runtime::Handle, sources: Arc<Sources>) -> Fetcher {
        Fetcher {
            runtime: None,
            handle,
            sources,
            repos: Default::default(),
            fresh: None,
            observe: None,
        }
    }

    /// Runs a future to completion on the fetcher's runtime (not from inside that runtime).
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        match &self.runtime {
            Some(rt) => rt.block_on(future),
            None => self.handle.block_on(future),
        }
    }

    /// The checkouts of `wanted` app repos (keyed by location and ref), each fetched at most
    /// once per run; the new ones all at the same time.
    fn fetch_repos(
        &self,
        wanted: BTreeMap<String, SourceSpec>,
    ) -> BTreeMap<String, Result<Checkout, String>> {
        let new: Vec<(String, SourceSpec)> = wanted
            .iter()
            .filter(|(k, _)| !self.repos.borrow().contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let (keys, specs): (Vec<String>, Vec<SourceSpec>) = new.into_iter().unzip();
        let fetched = self.fetch_all(specs);
        let mut cache = self.repos.borrow_mut();
        for (k, r) in keys.into_iter().zip(fetched) {
            cache.insert(k, r.map_err(|e| e.to_string()));
        }
        wanted
            .keys()
            .filter_map(|k| cache.get(k).map(|r| (k.clone(), r.clone())))
            .collect()
    }

    /// Fetches every spec at once (or takes its last good checkout, if it is not to be fetched
    /// fresh); the results come back in the same order.
    fn fetch_all(&self, specs: Vec<SourceSpec>) -> Vec<Result<Checkout, crate::source::Error>> {
        self.block_on(async {
            let tasks: Vec<_> = specs
                .into_iter()
                .map(|spec| {
                    let sources = self.sources.clone();
                    let key = location_key(&spec);
                    let stale = self.fresh.as_ref().is_some_and(|f| !f.contains(&key));
                    let observe = self.observe.clone();
                    tokio::spawn(async move {
                        if stale && let Some(checkout) = sources.last_good(&spec) {
                            return Ok(checkout);
                        }
                        let started = std::time::Instant::now();
                        let result = sources.fetch(&spec).await;
                        if let Some(observe) = observe {
                            observe(&key, started.elapsed(), result.is_ok());
                        }
                        result
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(tasks.len());
            for task in tasks {
                out.push(task.await.unwrap_or_else(|e| {
                    Err(crate::source::Error {
                        location: "?".into(),
                        message: e.to_string(),
                        transient: true,
                    })
                }));
            }
            out
        })
    }
}

/// Fetches the fleet, and the repos and catalogs of the tenants that land on `cluster` (of every
/// tenant when `None`).
pub(crate) fn load(
    config: &Config,
    fetcher: &Fetcher,
    cluster: Option<&str>,
) -> anyhow::Result<Loaded> {
    let fleet_checkout = fetcher
        .fetch_all(vec![config.fleet.clone()])
        .pop()
        .expect("one result per spec")
        .map_err(|e| anyhow::anyhow!("fleet: {e}"))?;
    let known = |name: &str| config.credentials.get(name);
    let (fleet, mut problems) = fleet::read_fleet(&fleet_checkout.root, &known);
    let on_cluster = |t: &&crate::fleet::Tenant| match cluster {
        None => true,
        Some(name) => fleet.clusters.get(name).is_some_and(|c| t.lands_on(c)),
    };
    let selected: Vec<&crate::fleet::Tenant> = fleet.tenants.values().filter(on_cluster).collect();
    let fetched = fetcher.fetch_all(selected.iter().map(|t| t.source.clone()).collect());
    let mut tenants = BTreeMap::new();
    let mut catalogs = BTreeMap::new();
    for (tenant, result) in selected.into_iter().zip(fetched) {
        let checkout = match result {
            Ok(checkout) => checkout,
            Err(e) => {
                problems.push(Problem::new(
                    Owner::Tenant(tenant.name.clone()),
                    format!("source: {e}"),
                ));
                continue;
            }
        };
        match fleet::read_catalog(tenant, &checkout.root, &known) {
            Ok(catalog) => {
                catalogs.insert(tenant.name.clone(), catalog);
            }
            Err(list) => {
                problems.extend(list.into_iter().map(|p| at_revision(p, &checkout.revision)))
            }
        }
        tenants.insert(tenant.name.clone(), checkout);
    }
    Ok(Loaded {
        fleet_checkout,
        fleet,
        tenants,
        catalogs,
        problems,
    })
}

/// Names the commit a tenant's problem was found at (a local folder is named by its path already).
fn at_revision(p: Problem, revision: &str) -> Problem {
    if revision.starts_with("sha256:") {
        return p;
    }
    Problem {
        detail: format!("{} (at {})", p.detail, short(revision)),
        ..p
    }
}

pub(crate) fn short(revision: &str) -> &str {
    match revision.strip_prefix("sha256:") {
        Some(hex) => &revision[..("sha256:".len() + hex.len().min(12))],
        None => &revision[..revision.len().min(12)],
    }
}

pub(crate) fn render_cluster(
    loaded: &Loaded,
    fetcher: &Fetcher,
    cluster: &Cluster,
    tools: &Tools,
    select: &dyn Fn(&UnitId) -> bool,
) -> Rendered {
    let placement = fleet::place(&loaded.fleet, cluster, &loaded.catalogs);
    let selected: Vec<Unit> = placement
        .units
        .iter()
        .filter(|u| select(&u.id))
        .cloned()
        .collect();

    // App repos: each distinct one fetched once, all at the same time. The renderer applies the
    // app's `path`, so the repo itself is fetched.
    let repo_key = |spec: &SourceSpec| format!("{}|{}", spec.location, spec.reference);
    let mut wanted: BTreeMap<String, SourceSpec> = BTreeMap::new();
    for unit in &selected {
        if let UnitSource::Repo(spec) = &unit.source {
            wanted.entry(repo_key(spec)).or_insert_with(|| SourceSpec {
                path: None,
                ..spec.clone()
            });
        }
    }
    let repos = fetcher.fetch_repos(wanted);

    let checkout_of = |unit: &Unit| -> Result<Checkout, String> {
        match &unit.source {
            UnitSource::Fleet { .. } => Ok(loaded.fleet_checkout.clone()),
            UnitSource::Tenant { .. } => {
                let tenant = unit.id.tenant.as_deref().unwrap_or_default();
                loaded
                    .tenants
                    .get(tenant)
                    .cloned()
                    .ok_or_else(|| format!("tenant {tenant}'s repository is not available"))
            }
            UnitSource::Repo(spec) => repos
                .get(&repo_key(spec))
                .cloned()
                .unwrap_or_else(|| Err("not fetched".into())),
        }
    };
    let revisions: BTreeMap<UnitId, String> = selected
        .iter()
        .filter_map(|u| checkout_of(u).ok().map(|c| (u.id.clone(), c.revision)))
        .collect();
    let root_of = |unit: &Unit| -> Result<PathBuf, String> { checkout_of(unit).map(|c| c.root) };
    let results = render::render_all(&selected, &root_of, tools);
    Rendered {
        tenants: placement.tenants,
        units: placement.units,
        results,
        revisions,
        problems: placement.problems,
    }
}

/// One object as a YAML document, headed by where it came from and its hash.
fn write_object(
    out: &mut impl std::io::Write,
    unit: &UnitId,
    revision: &str,
    o: &Object,
) -> anyhow::Result<()> {
    let yaml = serde_saphyr::to_string(&o.body)?;
    writeln!(
        out,
        "---\n# Source: {unit} {}:{} @ {}\n# sha256: {}",
        o.file,
        o.line,
        short(revision),
        o.hash
    )?;
    out.write_all(yaml.as_bytes())?;
    if !yaml.ends_with('\n') {
        writeln!(out)?;
    }
    Ok(())
}
