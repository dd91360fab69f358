//! A chart's dependencies (`dependencies:` in `Chart.yaml`) that its `charts/` folder does not
//! hold, fetched from their Helm repository or OCI registry like any chart source, and put
//! beside a copy of the chart in a folder of their own (`state_dir/charts/composed/<key>/`,
//! immutable, keyed by the chart's and its dependencies' revisions). A chart whose
//! dependencies are all there is used as it is.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{Checkout, Error, Sources};
use crate::config::{ChartSpec, check_repo};
use crate::failure::Kind;
use crate::semver_range::Range;

/// The most dependencies a chart may name.
const MAX_DEPENDENCIES: usize = 32;

#[derive(serde::Deserialize)]
struct ChartFile {
    #[serde(default)]
    dependencies: Vec<Dependency>,
}

#[derive(serde::Deserialize)]
struct Dependency {
    name: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    repository: Option<String>,
}

/// What fetching a chart's dependencies needs to know of its unit.
pub(crate) struct DependencyRules<'a> {
    /// The credentials the unit may use (its tenant's grants; every one for the fleet's own
    /// units): a dependency gets the first that is bound to its repository's host.
    pub credentials: &'a [String],
    /// URL schemes allowed besides `https` and `oci` (a tenant's `limits.schemes`).
    pub schemes: &'a [String],
    pub min_age: Duration,
}

impl Sources {
    /// The chart at `root`/`rel` with its missing dependencies: `None` when none is missing,
    /// else a folder that holds a copy of the chart at `rel` with them in its `charts/`.
    pub(crate) async fn chart_dependencies(
        &self,
        root: &Path,
        rel: &str,
        revision: &str,
        rules: &DependencyRules<'_>,
    ) -> Result<Option<PathBuf>, Error> {
        let dir = root.join(rel);
        // Only a folder inside the checkout (the render says why another is refused).
        let inside = match (dir.canonicalize(), root.canonicalize()) {
            (Ok(d), Ok(r)) => d.starts_with(r),
            _ => false,
        };
        if !inside {
            return Ok(None);
        }
        let fail = |kind: Kind, message: String| Error {
            location: format!("{}/Chart.yaml", if rel.is_empty() { "." } else { rel }),
            message,
            unverified: false,
            kind,
        };
        let Ok(text) = std::fs::read_to_string(dir.join("Chart.yaml")) else {
            return Ok(None);
        };
        let file: ChartFile = match serde_saphyr::from_str(&text) {
            Ok(f) => f,
            // Helm says what is wrong with it when it renders.
            Err(_) => return Ok(None),
        };
        let missing: Vec<&Dependency> = file
            .dependencies
            .iter()
            .filter(|d| !vendored(&dir, &d.name))
            .collect();
        if missing.is_empty() {
            return Ok(None);
        }
        // A name becomes a folder below charts/: only a chart name (no `/`, no `..`).
        if let Some(bad) = file
            .dependencies
            .iter()
            .find(|d| !crate::config::is_chart_name(&d.name))
        {
            return Err(fail(
                Kind::Permanent,
                format!(
                    "dependency {:?} is not a chart name (letters, digits, '-', '_' and '.')",
                    bad.name
                ),
            ));
        }
        if missing.len() > MAX_DEPENDENCIES {
            return Err(fail(
                Kind::Permanent,
                format!(
                    "{} dependencies, over the {MAX_DEPENDENCIES} a chart may have",
                    missing.len()
                ),
            ));
        }
        let mut fetched: Vec<(String, Checkout)> = Vec::new();
        for dep in missing {
            let repository = dep.repository.as_deref().unwrap_or_default();
            let repo = check_repo(repository).ok().filter(|r| {
                matches!(r.transport(), "https" | "oci")
                    || rules.schemes.iter().any(|s| s == r.transport())
            });
            let Some(repo) = repo else {
                return Err(fail(
                    Kind::Permanent,
                    format!(
                        "dependency {} is not in charts/ and its repository {repository:?} cannot be fetched (an https:// or oci:// repository is needed, or vendor it with helm dependency build)",
                        dep.name
                    ),
                ));
            };
            let version = match Range::parse(dep.version.as_deref().unwrap_or("*")) {
                Ok(v) => v,
                Err(e) => {
                    return Err(fail(
                        Kind::Permanent,
                        format!("dependency {}: version: {e}", dep.name),
                    ));
                }
            };
            let url = match &repo {
                crate::config::ChartRepo::Http(u) => u.clone(),
                crate::config::ChartRepo::Oci(u) => super::oci::locate(u, &dep.name).0,
            };
            let credentials = rules
                .credentials
                .iter()
                .find(|name| self.credentials.get(*name).is_some_and(|c| c.allows(&url)))
                .cloned();
            let spec = ChartSpec {
                repo,
                name: dep.name.clone(),
                version,
                credentials,
            };
            let chart = self.chart(&spec, rules.min_age).await.map_err(|e| Error {
                message: format!("dependency {}: {}", dep.name, e.message),
                ..e
            })?;
            fetched.push((dep.name.clone(), chart));
        }
        let mut key = Sha256::new();
        key.update(format!("{}\n{rel}\n{revision}\n", root.display()));
        for (name, c) in &fetched {
            key.update(format!("{name} {}\n", c.revision));
        }
        let key = super::chart::hex(&key.finalize()[..12]);
        let composed = self.state_dir.join("charts/composed").join(key);
        if composed.join(rel).join("Chart.yaml").is_file() {
            // Marked as used: composed charts unused for a week are swept.
            if let Ok(dir) = std::fs::File::open(&composed) {
                let _ = dir.set_modified(std::time::SystemTime::now());
            }
            return Ok(Some(composed));
        }
        let (src, dest, rel) = (dir.clone(), composed.clone(), rel.to_string());
        tokio::task::spawn_blocking(move || compose(&src, &dest, &rel, &fetched))
            .await
            .map_err(|e| fail(Kind::Transient, e.to_string()))?
            .map_err(|e| fail(Kind::Transient, format!("composing the chart: {e}")))?;
        Ok(Some(composed))
    }
}

/// Whether `charts/` holds the dependency `name`, unpacked or as an archive.
fn vendored(chart: &Path, name: &str) -> bool {
    let charts = chart.join("charts");
    if charts.join(name).join("Chart.yaml").is_file() {
        return true;
    }
    std::fs::read_dir(&charts).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let file = e.file_name().to_string_lossy().to_string();
            file.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|rest| rest.ends_with(".tgz"))
        })
    })
}

/// Writes a copy of `src` at `rel` below `dest`, with each dependency in its `charts/`.
fn compose(src: &Path, dest: &Path, rel: &str, deps: &[(String, Checkout)]) -> std::io::Result<()> {
    let parent = dest.parent().expect("composed/<key> has a parent");
    std::fs::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(".compose-")
        .tempdir_in(parent)?;
    let chart = tmp.path().join(rel);
    super::copy_tree(src, &chart, false)?;
    for (name, c) in deps {
        super::copy_tree(&c.root, &chart.join("charts").join(name), false)?;
    }
    let kept = tmp.keep();
    if std::fs::rename(&kept, dest).is_err() {
        let _ = std::fs::remove_dir_all(&kept);
    }
    Ok(())
}
