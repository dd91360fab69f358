//! `flotilla render` and the fleet part of `flotilla validate`: read the fleet and the tenants'
//! catalogs, place units on a cluster, render them, and report every problem.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{Config, SourceLocation, SourceSpec};
use crate::fleet::{self, Catalog, Cluster, Fleet, Owner, Problem, Unit, UnitId, UnitSource};
use crate::render::{self, Object, Tools};

/// Which units to print.
pub struct Filter {
    pub cluster: Option<String>,
    pub tenant: Option<String>,
    pub app: Option<String>,
}

/// The fleet, its tenants' catalog folders and catalogs, read once.
struct Loaded {
    fleet_root: PathBuf,
    fleet: Fleet,
    /// The folder holding each tenant's `tenant.yaml`, for the tenants whose repo could be opened.
    tenant_roots: BTreeMap<String, PathBuf>,
    catalogs: BTreeMap<String, Catalog>,
    problems: Vec<Problem>,
}

/// One cluster's units rendered.
struct Rendered {
    units: Vec<Unit>,
    results: BTreeMap<UnitId, Result<Vec<Object>, Vec<Problem>>>,
    problems: Vec<Problem>,
}

pub fn render(config: &Config, filter: &Filter) -> anyhow::Result<ExitCode> {
    let cluster_name = filter
        .cluster
        .clone()
        .unwrap_or_else(|| config.cluster.clone());
    let wanted = |t: &str| filter.tenant.as_deref().is_none_or(|w| w == t);
    // Every catalog is read even when one tenant is asked for: a filtered render must report
    // exactly what the full render reports about that tenant (duplicates across tenants included).
    let mut loaded = load(config)?;
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
        anyhow::bail!("tenant {t:?} is not in the fleet");
    }
    let rendered = render_cluster(&mut loaded, &cluster, &Tools::from(&config.render));

    let mut out = std::io::stdout().lock();
    for unit in &rendered.units {
        let selected = match &unit.id.tenant {
            Some(t) => wanted(t),
            None => filter.tenant.is_none(),
        } && filter.app.as_deref().is_none_or(|a| a == unit.id.app);
        if let (true, Some(Ok(objects))) = (selected, rendered.results.get(&unit.id)) {
            for o in objects {
                write_object(&mut out, &unit.id, o)?;
            }
        }
    }
    out.flush()?;

    // Problems of the fleet, of the tenants on this cluster and of the selected units.
    let mut problems: Vec<&Problem> = loaded.problems.iter().chain(&rendered.problems).collect();
    for (id, result) in &rendered.results {
        let selected = id.tenant.as_deref().is_none_or(wanted)
            && filter.app.as_deref().is_none_or(|a| a == id.app);
        if let (true, Err(list)) = (selected, result) {
            problems.extend(list);
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

/// Checks the fleet and every tenant catalog, and renders every cluster of the fleet.
pub fn validate(config: &Config, config_file: &Path) -> anyhow::Result<ExitCode> {
    let mut loaded = load(config)?;
    let tools = Tools::from(&config.render);
    let mut lines = Vec::new();
    let mut units = 0;
    for cluster in loaded
        .fleet
        .clusters
        .values()
        .cloned()
        .collect::<Vec<Cluster>>()
    {
        let rendered = render_cluster(&mut loaded, &cluster, &tools);
        units += rendered.units.len();
        let problems = rendered.problems.iter().chain(
            rendered
                .results
                .values()
                .filter_map(|r| r.as_ref().err())
                .flatten(),
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
            "{}: ok (fleet: {} clusters, {} tenants; {units} units rendered)",
            config_file.display(),
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

/// Reads the fleet and every tenant's catalog.
fn load(config: &Config) -> anyhow::Result<Loaded> {
    let fleet_root = local_root(&config.fleet).map_err(|why| anyhow::anyhow!("fleet: {why}"))?;
    let known = |name: &str| {
        config
            .credentials
            .get(name)
            .map(crate::config::Credential::kind)
    };
    let (fleet, mut problems) = fleet::read_fleet(&fleet_root, &known);
    let mut tenant_roots = BTreeMap::new();
    let mut catalogs = BTreeMap::new();
    for tenant in fleet.tenants.values() {
        let root = match local_root(&tenant.source) {
            Ok(root) => root,
            Err(why) => {
                problems.push(Problem::new(
                    Owner::Tenant(tenant.name.clone()),
                    format!("source: {why}"),
                ));
                continue;
            }
        };
        match fleet::read_catalog(tenant, &root, &known) {
            Ok(catalog) => {
                catalogs.insert(tenant.name.clone(), catalog);
            }
            Err(list) => problems.extend(list),
        }
        tenant_roots.insert(tenant.name.clone(), root);
    }
    Ok(Loaded {
        fleet_root,
        fleet,
        tenant_roots,
        catalogs,
        problems,
    })
}

fn render_cluster(loaded: &mut Loaded, cluster: &Cluster, tools: &Tools) -> Rendered {
    let placement = fleet::place(&loaded.fleet, cluster, &loaded.catalogs);
    let mut results = BTreeMap::new();
    for unit in &placement.units {
        let root = match &unit.source {
            UnitSource::Fleet { .. } => Ok(loaded.fleet_root.clone()),
            UnitSource::Tenant { .. } => {
                let tenant = unit.id.tenant.as_deref().unwrap_or_default();
                Ok(loaded.tenant_roots.get(tenant).cloned().unwrap_or_default())
            }
            // The app repo's own `path` is applied by the renderer, so open the repo itself.
            UnitSource::Repo(spec) => local_root(&SourceSpec {
                path: None,
                ..spec.clone()
            }),
        };
        let result = match root {
            Ok(root) => render::render_unit(unit, &root, tools),
            Err(why) => Err(vec![Problem::new(
                Owner::Unit(unit.id.clone()),
                format!("source: {why}"),
            )]),
        };
        results.insert(unit.id.clone(), result);
    }
    render::check_duplicates(&mut results);
    Rendered {
        units: placement.units,
        results,
        problems: placement.problems,
    }
}

/// The folder a source names on this machine. Git URLs are fetched by the source module; until it
/// lands, only `dir` sources can be opened.
fn local_root(spec: &SourceSpec) -> Result<PathBuf, String> {
    match &spec.location {
        SourceLocation::Dir(dir) => {
            let root = match &spec.path {
                Some(p) => dir.join(p),
                None => dir.clone(),
            };
            if root.is_dir() {
                Ok(root)
            } else {
                Err(format!("{}: no such directory", root.display()))
            }
        }
        SourceLocation::Url(_) => Err(format!(
            "{}: fetching Git URLs is not implemented yet in this build; use a dir source",
            spec.location
        )),
    }
}

/// One object as a YAML document, headed by where it came from and its hash.
fn write_object(out: &mut impl std::io::Write, unit: &UnitId, o: &Object) -> anyhow::Result<()> {
    let yaml = serde_saphyr::to_string(&o.body)?;
    writeln!(
        out,
        "---\n# Source: {unit} {}:{}\n# sha256: {}",
        o.file, o.line, o.hash
    )?;
    out.write_all(yaml.as_bytes())?;
    if !yaml.ends_with('\n') {
        writeln!(out)?;
    }
    Ok(())
}
