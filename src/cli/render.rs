//! `flotilla render` and the fleet part of `flotilla validate`: fetch the fleet, the tenants'
//! repos and the app repos, read the catalogs, place units on a cluster, render them, and report
//! every problem.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;
use crate::fleet::{Fleet, Owner, Problem, UnitId};
use crate::pipeline::{Fetcher, load, render_cluster, short, unit_problems};
use crate::render::{Object, Tools};

/// Which units to print.
pub(crate) struct Filter {
    pub cluster: Option<String>,
    pub tenant: Option<String>,
    pub app: Option<String>,
    /// Print Secrets' values instead of `***`.
    pub show_secrets: bool,
}

pub(crate) fn render(config: &Config, filter: &Filter) -> anyhow::Result<ExitCode> {
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
    let rendered = render_cluster(&loaded, &fetcher, &cluster, &Tools::of(config), &|_| true);

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
                write_object(&mut out, &unit.id, revision, o, filter.show_secrets)?;
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
pub(crate) fn validate(config: &Config, config_file: &Path) -> anyhow::Result<ExitCode> {
    let fetcher = Fetcher::new(config)?;
    let loaded = load(config, &fetcher, None)?;
    let tools = Tools::of(config);
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

/// One object as a YAML document, headed by where it came from and its hash.
fn write_object(
    out: &mut impl std::io::Write,
    unit: &UnitId,
    revision: &str,
    o: &Object,
    show_secrets: bool,
) -> anyhow::Result<()> {
    // A Secret's values, and its hash (which could confirm a guess), only when asked for.
    let secret = o.key.group.is_empty() && o.key.kind == "Secret";
    let (body, hash) = if secret && !show_secrets {
        let mut masked = o.body.value();
        for field in ["data", "stringData"] {
            if let Some(map) = masked[field].as_object_mut() {
                for value in map.values_mut() {
                    *value = "***".into();
                }
            }
        }
        (masked, "(a Secret: --show-secrets prints it)")
    } else {
        (o.body.value(), o.hash.as_str())
    };
    let yaml = serde_saphyr::to_string(&body)?;
    writeln!(
        out,
        "---\n# Source: {unit} {}:{} @ {}\n# sha256: {hash}",
        o.file,
        o.line,
        short(revision),
    )?;
    out.write_all(yaml.as_bytes())?;
    if !yaml.ends_with('\n') {
        writeln!(out)?;
    }
    Ok(())
}
