//! The pipeline the commands and the agent share: fetch the fleet, the tenants' repositories and
//! the app repositories (each once), read the catalogs, place units on a cluster, render them, and
//! build a pass's input. No terminal, no exit codes: `cli` prints and exits, `daemon` schedules.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, SourceSpec};
use crate::failure::Failure;
use crate::fleet::{self, Catalog, Cluster, Fleet, Owner, Problem, Unit, UnitId, UnitSource};
use crate::reconcile::Input;
use crate::render::{self, Tools};
use crate::source::{Checkout, Sources};

/// Why the pipeline could not produce its input at all (problems of single tenants and units are
/// not errors: they come back with the input).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The command's own runtime for fetches could not start.
    #[error("cannot start the fetch runtime: {0}")]
    Runtime(std::io::Error),
    /// The fleet repository could not be fetched (transient or not, as the source says).
    #[error("fleet: {0}")]
    Fleet(crate::source::Error),
    /// The agent's cluster is not in the fleet; nothing may be applied.
    #[error("cluster {cluster:?} is not in the fleet; nothing applied{problems}")]
    UnknownCluster { cluster: String, problems: String },
}

impl Error {
    /// Whether a retry soon could help: a fleet fetch that failed for a transient reason, or a
    /// runtime that did not start; a cluster missing from the fleet waits for the fleet to change.
    pub(crate) fn kind(&self) -> crate::failure::Kind {
        use crate::failure::Kind;
        match self {
            Error::Runtime(_) => Kind::Transient,
            Error::Fleet(e) => e.kind,
            Error::UnknownCluster { .. } => Kind::Permanent,
        }
    }
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
    /// Who signed each unit's revision, where its source asks for signatures.
    pub signers: BTreeMap<UnitId, String>,
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
    repos: std::cell::RefCell<BTreeMap<String, Result<Checkout, Failure>>>,
    /// The locations (see [`location_key`]) to fetch from their remote; any other is served from
    /// its last good checkout when it has one. `None`: fetch everything.
    pub fresh: Option<BTreeSet<String>>,
    /// Told of every remote fetch: the location, how long it took, whether it worked.
    pub observe: Option<Observer>,
    /// Charts already fetched in this run, by [`chart_key`].
    charts: std::cell::RefCell<BTreeMap<String, Result<Checkout, Failure>>>,
    /// The interval of units that set none: a chart repository's listing is read at most once
    /// per its units' interval.
    pub interval: std::time::Duration,
}

/// Reads a Secret as a tenant: `(identity, namespace, name)` → its entries as text, or why not.
pub(crate) type SecretReader<'a> =
    &'a dyn Fn(&crate::fleet::Identity, &str, &str) -> Result<BTreeMap<String, String>, String>;

/// The key a chart spec is fetched by: repository, chart, range and credentials.
fn chart_key(spec: &crate::config::ChartSpec) -> String {
    format!(
        "{}|{}|{}|{}",
        spec.repo,
        spec.name,
        spec.version,
        spec.credentials.as_deref().unwrap_or_default()
    )
}

/// A callback for fetch figures (the daemon's metrics).
/// Told of a fetch: the location key, how long it took, and its error if it failed.
pub(crate) type Observer =
    Arc<dyn Fn(&str, std::time::Duration, Option<&crate::source::Error>) + Send + Sync>;

/// The key a source is known by for webhooks and fresh fetches: its location, redacted.
pub(crate) fn location_key(spec: &SourceSpec) -> String {
    spec.location.to_string()
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
    pub(crate) fn new(config: &Config) -> Result<Fetcher, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let handle = runtime.handle().clone();
        Ok(Fetcher {
            runtime: Some(runtime),
            interval: config.interval,
            ..Fetcher::on(handle, Arc::new(Sources::new(config)))
        })
    }

    /// A fetcher on a running runtime; to be used from a blocking thread.
    pub(crate) fn on(handle: tokio::runtime::Handle, sources: Arc<Sources>) -> Fetcher {
        Fetcher {
            runtime: None,
            handle,
            sources,
            repos: Default::default(),
            fresh: None,
            observe: None,
            charts: Default::default(),
            interval: crate::config::MIN_INTERVAL,
        }
    }

    /// Runs a future to completion on the fetcher's runtime (not from inside that runtime).
    pub(crate) fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
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
    ) -> BTreeMap<String, Result<Checkout, Failure>> {
        let new: Vec<(String, SourceSpec)> = wanted
            .iter()
            .filter(|(k, _)| !self.repos.borrow().contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let (keys, specs): (Vec<String>, Vec<SourceSpec>) = new.into_iter().unzip();
        let fetched = self.fetch_all(specs);
        let mut cache = self.repos.borrow_mut();
        for (k, r) in keys.into_iter().zip(fetched) {
            cache.insert(k, r.map_err(|e| Failure::new(e.kind, e.to_string())));
        }
        wanted
            .keys()
            .filter_map(|k| cache.get(k).map(|r| (k.clone(), r.clone())))
            .collect()
    }

    /// The charts of `wanted` (by [`chart_key`], each with the shortest interval of its units),
    /// each fetched at most once per run, the new ones all at the same time. A chart whose
    /// repository is not to be fetched fresh is served from its last good copy when there is one.
    fn fetch_charts(
        &self,
        wanted: BTreeMap<String, (crate::config::ChartSpec, std::time::Duration)>,
    ) -> BTreeMap<String, Result<Checkout, Failure>> {
        let new: Vec<_> = wanted
            .iter()
            .filter(|(k, _)| !self.charts.borrow().contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let fetched = self.block_on(async {
            let tasks: Vec<_> = new
                .iter()
                .map(|(_, (spec, every))| {
                    let (sources, spec, every) = (self.sources.clone(), spec.clone(), *every);
                    let key = spec.repo.to_string();
                    let stale = self.fresh.as_ref().is_some_and(|f| !f.contains(&key));
                    let observe = self.observe.clone();
                    tokio::spawn(tracing::Instrument::in_current_span(async move {
                        if stale && let Some(chart) = sources.last_good_chart(&spec) {
                            return Ok(chart);
                        }
                        let started = std::time::Instant::now();
                        let result = sources.chart(&spec, every).await;
                        if let Some(observe) = observe {
                            observe(&key, started.elapsed(), result.as_ref().err());
                        }
                        result
                    }))
                })
                .collect();
            let mut out = Vec::with_capacity(tasks.len());
            for task in tasks {
                out.push(match task.await {
                    Ok(r) => r.map_err(|e| Failure::new(e.kind, e.to_string())),
                    Err(e) => Err(Failure::transient(e.to_string())),
                });
            }
            out
        });
        let mut cache = self.charts.borrow_mut();
        for ((k, _), r) in new.into_iter().zip(fetched) {
            cache.insert(k, r);
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
                    let fetch = async move {
                        if stale && let Some(checkout) = sources.last_good(&spec) {
                            return Ok(checkout);
                        }
                        let started = std::time::Instant::now();
                        let result = sources.fetch(&spec).await;
                        if let Some(observe) = observe {
                            observe(&key, started.elapsed(), result.as_ref().err());
                        }
                        result
                    };
                    tokio::spawn(tracing::Instrument::in_current_span(fetch))
                })
                .collect();
            let mut out = Vec::with_capacity(tasks.len());
            for task in tasks {
                out.push(task.await.unwrap_or_else(|e| {
                    Err(crate::source::Error {
                        location: "?".into(),
                        unverified: false,
                        message: e.to_string(),
                        kind: crate::failure::Kind::Transient,
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
) -> Result<Loaded, Error> {
    let fleet_checkout = fetcher
        .fetch_all(vec![config.fleet.clone()])
        .pop()
        .expect("one result per spec")
        .map_err(Error::Fleet)?;
    let known = |name: &str| config.credentials.get(name);
    let (mut fleet, mut problems) = fleet::read_fleet(&fleet_checkout.root, &known);
    // A tenant's signature requirement names keys of this agent: one that does not exist would
    // refuse every revision; the tenant is held back, saying which key.
    fleet.tenants.retain(|_, t| {
        let unknown: Vec<&String> = t
            .source
            .verify
            .iter()
            .chain(&t.app_verify)
            .flat_map(|v| &v.keys)
            .filter(|k| !config.verification_keys.contains_key(*k))
            .collect();
        if let Some(key) = unknown.first() {
            problems.push(Problem::new(
                Owner::Tenant(t.name.clone()),
                format!(
                    "{}: verify names {key:?}, which is not in the agent config's verification_keys",
                    t.file
                ),
            ));
        }
        // (A SOPS key it is granted that this agent lacks is named where a file needs it.)
        unknown.is_empty()
    });
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
                problems.push(Problem::of_kind(
                    Owner::Tenant(tenant.name.clone()),
                    format!("source: {e}"),
                    e.kind,
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
    // A chart's `<version>@sha256:<hex>`: the version and 12 hex.
    if let Some(at) = revision.find("@sha256:") {
        return &revision[..revision.len().min(at + "@sha256:".len() + 12)];
    }
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
    // Values files are read from the tenant's repository and merged under the app's values; a
    // unit whose files cannot be read is not rendered, and says why.
    let mut unreadable: BTreeMap<UnitId, render::Rendered> = BTreeMap::new();
    let selected: Vec<Unit> = placement
        .units
        .iter()
        .filter(|u| select(&u.id))
        .filter_map(|u| match with_values_files(u, loaded, tools) {
            Ok(unit) => Some(unit),
            Err(problem) => {
                unreadable.insert(u.id.clone(), Err(vec![problem]));
                None
            }
        })
        .collect();

    // App repos: each distinct one fetched once, all at the same time. The renderer applies the
    // app's `path`, so the repo itself is fetched.
    // The policy is part of the key: a repo asked for with signatures is never served from a
    // fetch made without them (or under another policy).
    let repo_key = |spec: &SourceSpec| {
        let policy = spec
            .verify
            .as_ref()
            .map(|v| v.cache_key())
            .unwrap_or_default();
        format!("{}|{}|{policy}", spec.location, spec.reference)
    };
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
    let mut charts_wanted: BTreeMap<String, (crate::config::ChartSpec, std::time::Duration)> =
        BTreeMap::new();
    for unit in &selected {
        if let UnitSource::Chart(spec) = &unit.source {
            let every = unit.options.interval.unwrap_or(fetcher.interval);
            charts_wanted
                .entry(chart_key(spec))
                .and_modify(|(_, e)| *e = (*e).min(every))
                .or_insert_with(|| (spec.clone(), every));
        }
    }
    let charts = fetcher.fetch_charts(charts_wanted);

    let checkout_of = |unit: &Unit| -> Result<Checkout, Failure> {
        match &unit.source {
            UnitSource::Fleet { .. } => Ok(loaded.fleet_checkout.clone()),
            UnitSource::Tenant { .. } => {
                let tenant = unit.id.tenant.as_deref().unwrap_or_default();
                loaded.tenants.get(tenant).cloned().ok_or_else(|| {
                    // Its fetch failed: the tenant's problem says how, and of what kind.
                    Failure::transient(format!("tenant {tenant}'s repository is not available"))
                })
            }
            UnitSource::Repo(spec) => repos
                .get(&repo_key(spec))
                .cloned()
                .unwrap_or_else(|| Err(Failure::transient("not fetched"))),
            UnitSource::Chart(spec) => charts
                .get(&chart_key(spec))
                .cloned()
                .unwrap_or_else(|| Err(Failure::transient("not fetched"))),
        }
    };
    let revisions: BTreeMap<UnitId, String> = selected
        .iter()
        .filter_map(|u| checkout_of(u).ok().map(|c| (u.id.clone(), c.revision)))
        .collect();
    let signers: BTreeMap<UnitId, String> = selected
        .iter()
        .filter_map(|u| Some((u.id.clone(), checkout_of(u).ok()?.signer?)))
        .collect();
    // Charts whose dependencies are not in their charts/ folder: fetched, and the chart
    // rendered from a copy that has them.
    let mut composed: BTreeMap<UnitId, Result<PathBuf, Failure>> = BTreeMap::new();
    for unit in &selected {
        let Ok(checkout) = checkout_of(unit) else {
            continue;
        };
        let rel = render::unit_path(unit);
        // Only what is rendered as a chart (a folder with a kustomization is kustomize's).
        if render::detect(&checkout.root.join(&rel)) != render::Kind::Helm {
            continue;
        }
        let schemes = match &unit.id.tenant {
            Some(t) => loaded
                .fleet
                .tenants
                .get(t)
                .map(|t| t.schemes.clone())
                .unwrap_or_default(),
            // The fleet's own units may use any scheme.
            None => vec!["http".to_string()],
        };
        // Those the tenant is granted (and its chart source's); the fleet's units any.
        let credentials: Vec<String> = match &unit.id.tenant {
            Some(t) => loaded
                .fleet
                .tenants
                .get(t)
                .map(|t| t.credentials.clone())
                .unwrap_or_default()
                .into_iter()
                .chain(match &unit.source {
                    UnitSource::Chart(spec) => spec.credentials.clone(),
                    _ => None,
                })
                .collect(),
            None => fetcher.sources.credential_names(),
        };
        let rules = crate::source::DependencyRules {
            credentials: &credentials,
            schemes: &schemes,
            min_age: unit.options.interval.unwrap_or(fetcher.interval),
        };
        let sources = fetcher.sources.clone();
        let result = fetcher.block_on(sources.chart_dependencies(
            &checkout.root,
            &rel,
            &checkout.revision,
            &rules,
        ));
        match result {
            Ok(None) => {}
            Ok(Some(dir)) => {
                composed.insert(unit.id.clone(), Ok(dir));
            }
            Err(e) => {
                composed.insert(unit.id.clone(), Err(Failure::new(e.kind, e.to_string())));
            }
        }
    }
    let root_of = |unit: &Unit| -> Result<PathBuf, Failure> {
        match composed.get(&unit.id) {
            Some(dir) => dir.clone(),
            None => checkout_of(unit).map(|c| c.root),
        }
    };
    let mut results = render::render_all(&selected, &root_of, tools);
    results.extend(unreadable);
    Rendered {
        tenants: placement.tenants,
        units: placement.units,
        results,
        revisions,
        signers,
        problems: placement.problems,
    }
}

/// The most a values file may weigh.
const MAX_VALUES_FILE: u64 = 1 << 20;
/// The most values files a unit may name.
const MAX_VALUES_FILES: usize = 64;

/// `unit` with its values files merged under its values (files in order, then the app's and
/// its clusters' `values` over them), read from its tenant's repository: only regular files
/// inside the tenant's folder (a link out of it, or one the checkout refused, is refused).
fn with_values_files(unit: &Unit, loaded: &Loaded, tools: &Tools) -> Result<Unit, Problem> {
    use std::io::Read as _;
    if unit.values_files.is_empty() {
        return Ok(unit.clone());
    }
    let tenant = unit.id.tenant.as_deref().unwrap_or_default();
    let fail = |detail: String| Problem::new(Owner::Unit(unit.id.clone()), detail);
    if unit.values_files.len() > MAX_VALUES_FILES {
        return Err(fail(format!(
            "valuesFiles: {} files, over the {MAX_VALUES_FILES} an app may name",
            unit.values_files.len()
        )));
    }
    let Some(checkout) = loaded.tenants.get(tenant) else {
        return Err(Problem::of_kind(
            Owner::Unit(unit.id.clone()),
            format!("valuesFiles: tenant {tenant}'s repository is not available"),
            crate::failure::Kind::Transient,
        ));
    };
    let root = checkout
        .root
        .canonicalize()
        .map_err(|e| fail(format!("valuesFiles: tenant {tenant}'s repository: {e}")))?;
    let mut merged = serde_json::Value::Object(Default::default());
    for file in &unit.values_files {
        let shown = format!("valuesFiles: {}", file.path);
        let path = root.join(&file.path);
        if render::is_refused_link(&path) {
            return Err(fail(format!(
                "{shown}: {}",
                render::refused_link(&file.path)
            )));
        }
        let path = render::inside(&root, &path).map_err(|why| fail(format!("{shown}: {why}")))?;
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path);
        let mut handle = match opened {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.optional => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(fail(format!(
                    "{shown}: no such file in tenant {tenant}'s repository (optional: true allows it)"
                )));
            }
            Err(e) => return Err(fail(format!("{shown}: {e}"))),
            Ok(handle) => handle,
        };
        // Opened non-blocking, so a FIFO does not wait for a writer; then checked on the open
        // handle: a regular file, read at most to the cap.
        if !handle.metadata().is_ok_and(|m| m.is_file()) {
            return Err(fail(format!("{shown}: not a regular file")));
        }
        let mut bytes = Vec::new();
        (&mut handle)
            .take(MAX_VALUES_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| fail(format!("{shown}: cannot read: {e}")))?;
        if bytes.len() as u64 > MAX_VALUES_FILE {
            return Err(fail(format!(
                "{shown}: over the {} KiB a values file may have",
                MAX_VALUES_FILE >> 10
            )));
        }
        let mut text =
            String::from_utf8(bytes).map_err(|_| fail(format!("{shown}: not UTF-8 text")))?;
        // A SOPS-encrypted values file is decrypted in memory with the unit's keys.
        if render::secrets::is_sops_text(&text) {
            let ring = tools.keys.ring(&unit.decryption);
            text = render::secrets::decrypt_text(&text, &shown, &ring).map_err(fail)?;
        }
        // An empty or comment-only file holds no values (as Helm reads it).
        if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---")
        {
            continue;
        }
        let node = crate::yaml::Node::parse(&text, &file.path)
            .map_err(|d| fail(format!("valuesFiles: {d}")))?;
        match node.to_json() {
            values @ serde_json::Value::Object(_) => crate::subst::deep_merge(&mut merged, &values),
            serde_json::Value::Null => {}
            _ => return Err(fail(format!("{shown}: not a mapping of values"))),
        }
    }
    crate::subst::deep_merge(&mut merged, &unit.values);
    Ok(Unit {
        values: merged,
        ..unit.clone()
    })
}

/// One cluster's fleet, catalogs and selected renders.
pub(crate) struct Prepared {
    pub input: Input,
    pub problems: Vec<Problem>,
    pub fleet_revision: String,
    /// Each fetched tenant repo's revision.
    pub tenant_revisions: BTreeMap<String, String>,
}

/// Fetches (through `fetcher`) and renders the units of this agent's cluster that `select`
/// picks; every placed unit is in the input, only the selected ones are rendered.
/// `capabilities`: what the cluster serves, for Helm charts (`None`: rendered offline).
pub(crate) fn prepare_with(
    config: &Config,
    fetcher: &Fetcher,
    select: &dyn Fn(&crate::fleet::UnitId) -> bool,
    capabilities: Option<Arc<render::Capabilities>>,
    secrets: Option<SecretReader<'_>>,
    secret_key: Option<[u8; 32]>,
) -> Result<Prepared, Error> {
    let loaded = load(config, fetcher, Some(&config.cluster))?;
    // SOPS keys the fleet lets tenants keep in a Secret of their own namespace, read as them.
    let mut extra = Vec::new();
    if let Some(read) = secrets {
        for (name, tenant) in &loaded.fleet.tenants {
            if !loaded.tenants.contains_key(name) {
                continue;
            }
            let identity = crate::fleet::Identity::ServiceAccount {
                namespace: tenant.namespaces[0].clone(),
                name: tenant.service_account.clone(),
            };
            for key in tenant
                .decryption
                .iter()
                .filter(|k| k.starts_with("secret:"))
            {
                let Some((ns, secret)) = key["secret:".len()..].split_once('/') else {
                    continue;
                };
                // Not readable (yet: the tenant's role is bound by this very sync's onboarding)
                // is transient; a Secret that holds no key is the tenant's to fix.
                let loaded_key = read(&identity, ns, secret)
                    .map_err(|why| {
                        format!("Secret {ns}/{secret} {}: {why}", crate::sops::KEY_NOT_READ)
                    })
                    .and_then(|data| {
                        crate::sops::Key::from_secret(key, &data)
                            .map_err(|why| format!("Secret {ns}/{secret}: {why}"))
                    })
                    .map(Arc::new);
                // A namespace has one owner; a name read twice (a conflict being reported) is
                // given to no one.
                if let Some(seen) = extra.iter_mut().find(|(k, _)| k == key) {
                    seen.1 = Err(format!("Secret {ns}/{secret} is claimed by two tenants"));
                } else {
                    extra.push((key.clone(), loaded_key));
                }
            }
        }
    }
    let Some(cluster) = loaded.fleet.clusters.get(&config.cluster).cloned() else {
        let problems: Vec<String> = loaded.problems.iter().map(|p| p.to_string()).collect();
        return Err(Error::UnknownCluster {
            cluster: config.cluster.clone(),
            problems: if problems.is_empty() {
                String::new()
            } else {
                format!(" ({})", problems.join("; "))
            },
        });
    };
    let rendered = render_cluster(
        &loaded,
        fetcher,
        &cluster,
        // What is applied carries Secrets' keyed hashes, under the cluster's key.
        &Tools {
            capabilities,
            secret_key: secret_key.map(Arc::new),
            ..Tools::of(config).with_keys(extra)
        },
        select,
    );
    let problems: Vec<Problem> = loaded
        .problems
        .iter()
        .chain(&rendered.problems)
        .cloned()
        .collect();
    let mut tenants_failed: BTreeSet<String> = BTreeSet::new();
    let mut problem_units = BTreeSet::new();
    let mut fleet_ok = true;
    for p in &problems {
        match &p.owner {
            Owner::Fleet => fleet_ok = false,
            Owner::Tenant(t) => {
                tenants_failed.insert(t.clone());
            }
            Owner::Unit(id) => {
                problem_units.insert(id.clone());
            }
        }
    }
    for t in &rendered.tenants {
        if !loaded.catalogs.contains_key(t) {
            tenants_failed.insert(t.clone());
        }
    }
    let tenants_ok = rendered
        .tenants
        .iter()
        .filter(|t| !tenants_failed.contains(*t))
        .cloned()
        .collect();
    let tenant_revisions = loaded
        .tenants
        .iter()
        .map(|(t, c)| (t.clone(), c.revision.clone()))
        .collect();
    let input = Input {
        fleet: loaded.fleet,
        placed: rendered.tenants,
        tenants_ok,
        tenants_failed,
        fleet_ok,
        units: rendered.units,
        results: rendered.results,
        revisions: rendered.revisions,
        signers: rendered.signers,
        problem_units,
        prior: BTreeMap::new(),
        stuck: BTreeSet::new(),
        namespace_defaults: cluster.tenant_defaults.clone(),
        fleet_id: crate::inventory::fleet_id(&location_key(&config.fleet), &config.cluster),
        round: 0,
    };
    Ok(Prepared {
        input,
        problems,
        fleet_revision: loaded.fleet_checkout.revision,
        tenant_revisions,
    })
}
