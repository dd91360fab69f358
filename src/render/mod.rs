//! A unit → its ordered list of objects: plain YAML, kustomize or Helm (chosen by what the folder
//! holds), variable substitution, namespace defaulting, ownership labels, the sha256 of each
//! object, and the checks that must pass before anything reaches a cluster.
//!
//! Pure but for reading the checkout from disk and running `kustomize`/`helm`.

pub mod hook;
mod kustomize_check;
mod objects;
mod packed;
mod plain;
mod scope;
pub(crate) mod secrets;
mod tools;

use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

pub use objects::{Body, Object, ObjectKey, hash};
pub use packed::Packed;
pub use scope::{Scope, Scopes};
pub use tools::{Capabilities, Tools};

use crate::failure::Failure;
use crate::fleet::{Owner, Problem, Unit, UnitId, UnitSource};

/// Label naming the tenant that owns an object.
pub const LABEL_TENANT: &str = "flotilla.dev/tenant";
/// Label naming the app (unit) that owns an object.
pub const LABEL_APP: &str = "flotilla.dev/app";

/// What a unit's folder holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Plain,
    Kustomize,
    Helm,
}

/// The folder of its checkout a unit's manifests are in.
pub(crate) fn unit_path(unit: &Unit) -> String {
    match &unit.source {
        UnitSource::Fleet { path } | UnitSource::Tenant { path } => path.clone(),
        UnitSource::Repo(spec) => spec.path.clone().unwrap_or_default(),
        UnitSource::Chart(_) => String::new(),
    }
}

/// Renders `unit` from `root`, the checkout its source names (fleet, tenant or app repo).
pub fn render_unit(unit: &Unit, root: &Path, tools: &Tools) -> Result<Vec<Object>, Vec<Problem>> {
    let fail = |details: Vec<String>| -> Vec<Problem> {
        details
            .into_iter()
            .map(|d| {
                // A key Secret the tenant cannot read yet (its RoleBinding comes with this very
                // sync's onboarding) may be readable in a moment: retried soon.
                let kind = if d.contains(crate::sops::KEY_NOT_READ) {
                    crate::failure::Kind::Transient
                } else {
                    crate::failure::Kind::Permanent
                };
                Problem::of_kind(Owner::Unit(unit.id.clone()), d, kind)
            })
            .collect()
    };
    let rel = unit_path(unit);
    let shown = if let UnitSource::Chart(spec) = &unit.source {
        format!("chart {}", spec.name)
    } else if rel.is_empty() {
        ".".to_string()
    } else {
        rel.clone()
    };
    let root = root.canonicalize().map_err(|e| {
        fail(vec![format!(
            "cannot open the checkout {}: {e}",
            root.display()
        )])
    })?;
    let dir =
        inside(&root, &root.join(&rel)).map_err(|why| fail(vec![format!("{shown}: {why}")]))?;
    if !dir.is_dir() {
        return Err(fail(vec![format!(
            "{shown}: no such folder in the repository"
        )]));
    }
    let kind = detect(&dir);
    // A plain folder's walk reports such links itself; a tool's folder is walked for them here.
    if kind != Kind::Plain {
        let refused = refused_links(&root, &dir);
        if !refused.is_empty() {
            return Err(fail(refused.iter().map(|rel| refused_link(rel)).collect()));
        }
    }
    // The SOPS keys the unit may use (an error only matters when a file needs them).
    let ring = tools.keys.ring(&unit.decryption);
    let (documents, unreadable) = match kind {
        Kind::Plain => plain::read(&root, &dir, unit, &ring),
        Kind::Kustomize => {
            // A tenant's kustomization reaches only its own checkout, and the network only
            // where the fleet allows remote bases.
            if let Some(limits) = &unit.limits {
                kustomize_check::check(&root, &dir, limits.remote_bases).map_err(fail)?;
            }
            // Encrypted files it names are decrypted into a private copy, which is built.
            let files = kustomize_check::referenced_files(&root, &dir);
            let copy = secrets::decrypted_copy(&root, &dir, &files, &ring).map_err(fail)?;
            let build_dir = copy.as_ref().map_or(dir.as_path(), |(_, d)| d.as_path());
            // The copy is checked as the checkout was: a link that stayed inside the checkout
            // must stay inside the copy.
            if let (Some((tmp, inner)), Some(limits)) = (&copy, &unit.limits) {
                let copy_root = tmp
                    .path()
                    .canonicalize()
                    .map_err(|e| fail(vec![e.to_string()]))?;
                kustomize_check::check(&copy_root, inner, limits.remote_bases).map_err(fail)?;
            }
            let docs = tools
                .kustomize(build_dir, &shown, unit, copy.is_none())
                .map_err(fail)?;
            drop(copy);
            (docs, Vec::new())
        }
        Kind::Helm => (tools.helm(&dir, &shown, unit).map_err(fail)?, Vec::new()),
    };
    // Helm runs test hooks on demand and delete and rollback hooks on those actions, none of
    // which a sync is: they are never applied (nor pruned: not the unit's), whatever renders them.
    let documents: Vec<_> = documents
        .into_iter()
        .filter(|d| !hook::is_hook(&d.body) || hook::of(&d.body).is_some())
        .collect();
    match (
        objects::finish(unit, documents, tools.secret_key.as_deref()),
        unreadable.is_empty(),
    ) {
        (Ok(objects), true) => Ok(objects),
        (Ok(objects), false) => {
            let mut all = fail(unreadable);
            all.extend(objects.iter().filter_map(|o| o.refusal(&unit.id)));
            Err(all)
        }
        (Err(mut problems), _) => {
            let mut all = fail(unreadable);
            all.append(&mut problems);
            Err(all)
        }
    }
}

/// The symlinks below `dir` that the checkout wrote as links to nowhere because they led out of
/// the repository (relative to `root`); folders are walked without following links.
fn refused_links(root: &Path, dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() && entry.file_name() != ".git" => pending.push(path),
                Ok(t) if t.is_symlink() && is_refused_link(&path) => {
                    found.push(
                        path.strip_prefix(root)
                            .unwrap_or(&path)
                            .display()
                            .to_string(),
                    );
                }
                _ => {}
            }
        }
    }
    found.sort();
    found
}

/// The problem of a symlink the checkout wrote as a link to nowhere (`rel` below the checkout).
pub(crate) fn refused_link(rel: &str) -> String {
    format!("the symlink {rel} points outside the repository; refused")
}

/// Whether `path` is a symlink the checkout wrote as a link to nowhere.
pub(crate) fn is_refused_link(path: &Path) -> bool {
    std::fs::read_link(path).is_ok_and(|target| target == Path::new(crate::source::REFUSED_LINK))
}

/// Which renderer a folder needs.
pub fn detect(dir: &Path) -> Kind {
    if kustomize_check::kustomization_file(dir).is_some() {
        Kind::Kustomize
    } else if dir.join("Chart.yaml").is_file() {
        Kind::Helm
    } else {
        Kind::Plain
    }
}

/// `path` resolved (symlinks followed) and checked to stay inside `root`, which is canonical.
pub(crate) fn inside(root: &Path, path: &Path) -> Result<PathBuf, String> {
    let Ok(real) = path.canonicalize() else {
        return Ok(path.to_path_buf()); // missing: reported by the caller as missing
    };
    if real.starts_with(root) {
        Ok(real)
    } else {
        Err("leaves the repository through a symlink; refused".to_string())
    }
}

/// What rendering a unit gave.
pub type Rendered = Result<Vec<Object>, Vec<Problem>>;

/// Renders every unit, in parallel on the machine's cores (units are independent; kustomize and
/// Helm calls overlap too), then checks that no object has two owners. `root_of` names the
/// checkout a unit's source lives in.
pub fn render_all(
    units: &[Unit],
    root_of: &(dyn Fn(&Unit) -> Result<PathBuf, Failure> + Sync),
    tools: &Tools,
) -> BTreeMap<UnitId, Rendered> {
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(units.len())
        .max(1);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(unit) = units.get(i) else { break done };
            let result = match root_of(unit) {
                // A bug that panics while rendering one unit fails that unit, not the others.
                Ok(root) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    render_unit(unit, &root, tools)
                }))
                .unwrap_or_else(|_| {
                    Err(vec![Problem::new(
                        Owner::Unit(unit.id.clone()),
                        "internal error while rendering (a flotilla bug; the log has the panic)"
                            .to_string(),
                    )])
                }),
                Err(why) => Err(vec![Problem::of_kind(
                    Owner::Unit(unit.id.clone()),
                    format!("source: {why}"),
                    why.kind,
                )]),
            };
            done.push((unit.id.clone(), result));
        }
    };
    let mut results = BTreeMap::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = (1..workers).map(|_| s.spawn(work)).collect();
        results.extend(work());
        for h in handles {
            results.extend(h.join().expect("a render worker does not panic"));
        }
    });
    check_duplicates(&mut results);
    results
}

/// Every object key rendered by more than one unit makes all of those units fail: applying
/// either would silently take the other's object.
/// Which unit owns which object, as the renders said: a round that renders only some units
/// (a webhook's, a tenant's, one app's) checks their objects against the others' claims, so no
/// unit takes an object that belongs to one it did not render.
#[derive(Debug, Default)]
pub struct Claims {
    /// Each unit's objects (by [`claim`]), and the round whose render said so.
    by_unit: HashMap<UnitId, (u64, Vec<u128>)>,
}

/// An object key as a claim: 128 bits of its sha256 (kept for every object across rounds:
/// a tenth of the key's memory; two keys share it with a chance below 2^-80 among ten million
/// objects).
fn claim(key: &ObjectKey) -> u128 {
    let mut h = Sha256::new();
    for part in [key.group.as_str(), key.kind.as_str(), key.name.as_str()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    match &key.namespace {
        Some(ns) => {
            h.update([1]);
            h.update(ns.as_bytes());
        }
        None => h.update([2]),
    }
    let digest = h.finalize();
    u128::from_le_bytes(digest[..16].try_into().unwrap_or_default())
}

impl Claims {
    /// Records the claims of every unit rendered successfully in `results`; `placed` lists every
    /// unit that exists now (claims of units gone from the placement are dropped, except those
    /// of `unread` tenants, whose catalogs could not be read this time). A unit whose render
    /// failed keeps its previous claims.
    /// A later `round`'s render is never replaced by an earlier one's.
    pub fn record(
        &mut self,
        round: u64,
        results: &BTreeMap<UnitId, Rendered>,
        placed: &[UnitId],
        unread: &std::collections::BTreeSet<String>,
    ) {
        let placed: std::collections::HashSet<&UnitId> = placed.iter().collect();
        self.by_unit.retain(|id, _| {
            placed.contains(id) || id.tenant.as_ref().is_some_and(|t| unread.contains(t))
        });
        for (id, result) in results {
            if let Ok(objects) = result
                && self.by_unit.get(id).is_none_or(|(r, _)| *r <= round)
            {
                let keys = objects.iter().map(|o| claim(&o.key)).collect();
                self.by_unit.insert(id.clone(), (round, keys));
            }
        }
    }

    /// Fails each unit of `results` that renders an object another unit claims: one not
    /// rendered in this round, or whose render failed this time (it keeps what it had); the
    /// cluster's infra unit keeps its objects against any tenant. Run in every round: a full
    /// round's own one-owner check sees only the renders that worked.
    pub fn check(&self, results: &mut BTreeMap<UnitId, Rendered>) {
        let mut owner: HashMap<u128, &UnitId> = HashMap::new();
        for (id, (_, keys)) in &self.by_unit {
            if matches!(results.get(id), Some(Ok(_))) {
                continue;
            }
            for k in keys {
                owner.insert(*k, id);
            }
        }
        let mut failed: Vec<(UnitId, Vec<Problem>)> = Vec::new();
        for (id, result) in results.iter() {
            let Ok(objects) = result else { continue };
            let problems: Vec<Problem> = objects
                .iter()
                .filter_map(|o| {
                    let other = owner.get(&claim(&o.key))?;
                    let detail = match (&other.tenant, &id.tenant) {
                        // Infra's objects are the platform's; infra never yields to a tenant.
                        (_, None) => return None,
                        (None, Some(_)) => format!(
                            "{} belongs to the cluster's {other} unit; a tenant cannot render it",
                            o.key
                        ),
                        (Some(_), Some(_)) => format!(
                            "{} is also rendered by {other}; an object must have one owner",
                            o.key
                        ),
                    };
                    Some(Problem::new(Owner::Unit(id.clone()), detail))
                })
                .collect();
            if !problems.is_empty() {
                failed.push((id.clone(), problems));
            }
        }
        for (id, problems) in failed {
            results.insert(id, Err(problems));
        }
    }
}

pub fn check_duplicates(results: &mut BTreeMap<UnitId, Rendered>) {
    let mut seen: HashMap<&ObjectKey, Vec<&UnitId>> = HashMap::new();
    for (id, result) in results.iter() {
        if let Ok(objects) = result {
            for o in objects {
                seen.entry(&o.key).or_default().push(id);
            }
        }
    }
    let mut problems: BTreeMap<UnitId, Vec<Problem>> = BTreeMap::new();
    for (key, ids) in seen.iter().filter(|(_, ids)| ids.len() > 1) {
        // The cluster's infra unit is the platform's: a tenant cannot take it down by rendering
        // one of its objects, so only the tenants' units fail then.
        let infra = ids.iter().find(|id| id.tenant.is_none());
        for id in ids
            .iter()
            .filter(|id| infra.is_none() || id.tenant.is_some())
        {
            let detail = match infra {
                Some(infra) => format!(
                    "{key} belongs to the cluster's {infra} unit; a tenant cannot render it"
                ),
                None => {
                    let others: Vec<String> = ids
                        .iter()
                        .filter(|o| *o != id)
                        .map(|o| o.to_string())
                        .collect();
                    format!(
                        "{key} is also rendered by {}; an object must have one owner",
                        others.join(", ")
                    )
                }
            };
            problems
                .entry((*id).clone())
                .or_default()
                .push(Problem::new(Owner::Unit((*id).clone()), detail));
        }
    }
    for (id, mut list) in problems {
        list.sort();
        results.insert(id, Err(list));
    }
}

#[cfg(test)]
mod tests;
