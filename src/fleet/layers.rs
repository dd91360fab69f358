//! The fleet's own layers: a cluster's infra units (in `dependsOn` order, each its own unit with
//! the agent's identity), what tenant apps wait for among them, and what the platform writes into
//! a tenant's namespaces (labels, annotations, a quota and a limit range).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::{Cluster, InfraUnit, NamespacePolicy, Owner, Problem, Unit, UnitId};
use crate::config::{check_name, check_subpath};
use crate::yaml::{Fields, Node, Report, Value, join};

/// The name of the single infra unit of a cluster whose `infra/` folder holds manifests.
pub(crate) const INFRA: &str = "infra";

/// The fields of a namespace policy, as a tenant file and `tenantDefaults` spell them.
pub(super) const POLICY_FIELDS: [&str; 4] = [
    "namespaceLabels",
    "namespaceAnnotations",
    "resourceQuota",
    "limitRange",
];

/// Reads the policy fields present in `f` (`namespaceLabels`, `namespaceAnnotations`,
/// `resourceQuota`, `limitRange`).
pub(super) fn decode_policy(
    f: &mut Fields<'_>,
    path: &str,
    r: &mut Report,
) -> Option<NamespacePolicy> {
    let labels = f.get("namespaceLabels").map_or(Some(BTreeMap::new()), |n| {
        string_map_checked(n, &join(path, "namespaceLabels"), true, r)
    });
    let annotations = f
        .get("namespaceAnnotations")
        .map_or(Some(BTreeMap::new()), |n| {
            string_map_checked(n, &join(path, "namespaceAnnotations"), false, r)
        });
    let resource_quota = decode_spec(f, path, "resourceQuota", r);
    let limit_range = decode_spec(f, path, "limitRange", r);
    Some(NamespacePolicy {
        labels: labels?,
        annotations: annotations?,
        resource_quota: resource_quota?,
        limit_range: limit_range?,
    })
}

/// A label or annotation key: an optional DNS-subdomain prefix and `/`, then a name of at most
/// 63 characters (letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit).
fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key));
    // The prefix is a DNS subdomain: dot-separated DNS labels.
    let prefix_ok = key.find('/').is_none()
        || (prefix.len() <= 253 && prefix.split('.').all(|part| check_name(part).is_ok()));
    if prefix_ok && check_label_value(name).is_ok() && !name.is_empty() {
        Ok(())
    } else {
        Err(format!("{key:?} is not a valid label or annotation key"))
    }
}

/// A label value: empty, or at most 63 letters, digits, `-`, `_`, `.`, starting and ending with
/// a letter or digit.
fn check_label_value(value: &str) -> Result<(), String> {
    let b = value.as_bytes();
    let inner = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    let ok = value.is_empty()
        || (b.len() <= 63
            && b.iter().all(inner)
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric());
    ok.then_some(())
        .ok_or_else(|| format!("{value:?} is not a valid label value"))
}

/// Labels (`values: true`) or annotations, checked as the API server would, so that a mistake is
/// found by `validate` rather than by every onboarding.
fn string_map_checked(
    node: &Node,
    path: &str,
    labels: bool,
    r: &mut Report,
) -> Option<BTreeMap<String, String>> {
    let map = node.string_map(path, r)?;
    let mut ok = true;
    for (k, v) in &map {
        let checked =
            check_key(k).and_then(|()| if labels { check_label_value(v) } else { Ok(()) });
        if let Err(why) = checked {
            r.error(node, path, why);
            ok = false;
        }
    }
    ok.then_some(map)
}

/// A `resourceQuota` or `limitRange`: the object's `spec`, a mapping.
fn decode_spec(
    f: &mut Fields<'_>,
    path: &str,
    name: &str,
    r: &mut Report,
) -> Option<Option<serde_json::Value>> {
    match f.get(name) {
        None => Some(None),
        Some(
            n @ Node {
                value: Value::Map(_),
                ..
            },
        ) => Some(Some(n.to_json())),
        Some(n) => r.wrong_type(n, &join(path, name), "a mapping (the object's spec)"),
    }
}

/// `namespaces:` of a tenant file: names, or `{ name, labels, annotations, resourceQuota,
/// limitRange }` entries (over the tenant's settings for that namespace).
pub(super) fn decode_namespaces(
    node: &Node,
    r: &mut Report,
) -> Option<(Vec<String>, BTreeMap<String, NamespacePolicy>)> {
    let Value::Seq(items) = &node.value else {
        return r.wrong_type(node, "namespaces", "a list of namespace names");
    };
    let mut names = Vec::new();
    let mut overrides = BTreeMap::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let path = format!("namespaces[{i}]");
        let entry = match &item.value {
            Value::Str(name) => Some((name.clone(), None)),
            Value::Map(_) => (|| {
                let mut f = Fields::new(item, &path, r)?;
                let name = f
                    .require("name", item, r)
                    .and_then(|n| n.str(&join(&path, "name"), r).map(str::to_string));
                let labels = f.get("labels").map_or(Some(BTreeMap::new()), |n| {
                    string_map_checked(n, &join(&path, "labels"), true, r)
                });
                let annotations = f.get("annotations").map_or(Some(BTreeMap::new()), |n| {
                    string_map_checked(n, &join(&path, "annotations"), false, r)
                });
                let resource_quota = decode_spec(&mut f, &path, "resourceQuota", r);
                let limit_range = decode_spec(&mut f, &path, "limitRange", r);
                f.finish(
                    &[
                        "name",
                        "labels",
                        "annotations",
                        "resourceQuota",
                        "limitRange",
                    ],
                    r,
                );
                let policy = NamespacePolicy {
                    labels: labels?,
                    annotations: annotations?,
                    resource_quota: resource_quota?,
                    limit_range: limit_range?,
                };
                Some((name?, Some(policy)))
            })(),
            _ => r.wrong_type(
                item,
                &path,
                "a namespace name or { name, labels, annotations }",
            ),
        };
        let Some((name, policy)) = entry else {
            ok = false;
            continue;
        };
        if let Err(why) = check_name(&name) {
            r.error(item, &path, why);
            ok = false;
            continue;
        }
        if names.contains(&name) {
            r.error(item, &path, format!("namespace {name:?} is listed twice"));
            ok = false;
            continue;
        }
        if let Some(policy) = policy {
            overrides.insert(name.clone(), policy);
        }
        names.push(name);
    }
    ok.then_some((names, overrides))
}

/// `dependsOn:` naming infra units (a tenant file's, or the infra entries of a tenant app):
/// `infra` or `infra/<name>`.
pub(super) fn infra_names(node: &Node, path: &str, r: &mut Report) -> Option<Vec<String>> {
    let names = node.strings(path, r)?;
    let mut ok = true;
    for name in &names {
        if !is_infra_name(name) {
            r.error(
                node,
                path,
                format!("{name:?} is not an infra unit's name (infra, or infra/<name>)"),
            );
            ok = false;
        }
    }
    ok.then_some(names)
}

/// `infra`, or `infra/<name>` with a valid layer name.
pub(crate) fn is_infra_name(name: &str) -> bool {
    name == INFRA
        || name
            .strip_prefix("infra/")
            .is_some_and(|n| check_layer_name(n).is_ok())
}

/// The longest layer name: its Helm release name, `infra-<name>`, must stay within Helm's 53
/// characters (and its objects' `flotilla.dev/app` label, `infra.<name>`, within a label's 63).
const MAX_LAYER_NAME: usize = 53 - "infra-".len();

/// A layer's name: a valid name of at most 47 characters.
fn check_layer_name(name: &str) -> Result<(), String> {
    check_name(name)?;
    if name.len() > MAX_LAYER_NAME {
        return Err(format!(
            "{name:?} is longer than the {MAX_LAYER_NAME} characters an infra layer's name may have"
        ));
    }
    Ok(())
}

/// `infra:` of `cluster.yaml`: `[{ name, path, dependsOn, wait, timeout }]`, paths relative to
/// the fleet root, `dependsOn` naming other entries.
pub(super) fn decode_infra(
    node: &Node,
    known: super::parse::Known<'_>,
    r: &mut Report,
) -> Option<Vec<InfraUnit>> {
    let Value::Seq(items) = &node.value else {
        return r.wrong_type(
            node,
            "infra",
            "a list of { name, path, dependsOn, wait, timeout }",
        );
    };
    let mut units = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let path = format!("infra[{i}]");
        let unit = (|| {
            let mut f = Fields::new(item, &path, r)?;
            let name = f.require("name", item, r).and_then(|n| {
                let name = n.str(&join(&path, "name"), r)?;
                check_layer_name(name)
                    .map_err(|why| r.error(n, &join(&path, "name"), why))
                    .ok()?;
                Some(format!("infra/{name}"))
            });
            // A folder of the fleet, or a chart from a repository.
            let chart = match f.get("chart") {
                None => Some(None),
                Some(n) => {
                    crate::config::decode_chart(n, &join(&path, "chart"), known, r).map(Some)
                }
            };
            let folder = match (f.get("path"), f.get("chart")) {
                (Some(_), Some(c)) => {
                    r.error(c, &join(&path, "chart"), "give path or chart, not both");
                    None
                }
                (None, Some(_)) => Some(String::new()),
                (None, None) => {
                    r.error(item, &path, "give path (a folder of the fleet) or chart");
                    None
                }
                (Some(n), None) => n.str(&join(&path, "path"), r).and_then(|p| {
                    check_subpath(p)
                        .map_err(|why| r.error(n, &join(&path, "path"), why))
                        .ok()?;
                    Some(p.trim_end_matches('/').to_string())
                }),
            };
            let namespace = super::parse::optional(f.get("namespace"), |n| {
                let ns = n.str(&join(&path, "namespace"), r)?;
                check_name(ns)
                    .map_err(|why| r.error(n, &join(&path, "namespace"), why))
                    .ok()?;
                Some(ns.to_string())
            });
            let values = match f.get("values") {
                None => Some(serde_json::Value::Object(Default::default())),
                Some(n) => match n.to_json() {
                    v @ serde_json::Value::Object(_) => Some(v),
                    _ => r.wrong_type(n, &join(&path, "values"), "a mapping"),
                },
            };
            let depends_on = f.get("dependsOn").map_or(Some(Vec::new()), |n| {
                let names = n.strings(&join(&path, "dependsOn"), r)?;
                let mut out = Vec::new();
                for d in names {
                    let full = if d.starts_with("infra/") {
                        d
                    } else {
                        format!("infra/{d}")
                    };
                    if !is_infra_name(&full) {
                        r.error(
                            n,
                            &join(&path, "dependsOn"),
                            format!("{full:?} is not a valid name"),
                        );
                        return None;
                    }
                    out.push(full);
                }
                Some(out)
            });
            let wait = f
                .get("wait")
                .map_or(Some(false), |n| n.bool(&join(&path, "wait"), r));
            let timeout = super::parse::optional(f.get("timeout"), |n| {
                n.duration_at_most(&join(&path, "timeout"), super::MAX_TIMEOUT, r)
            });
            f.finish(
                &[
                    "name",
                    "path",
                    "chart",
                    "namespace",
                    "values",
                    "dependsOn",
                    "wait",
                    "timeout",
                ],
                r,
            );
            Some(InfraUnit {
                name: name?,
                path: folder?,
                chart: chart?,
                namespace: namespace?,
                values: values?,
                depends_on: depends_on?,
                wait: wait?,
                timeout: timeout?,
            })
        })();
        match unit {
            Some(u) if units.iter().any(|o: &InfraUnit| o.name == u.name) => {
                r.error(item, &path, format!("{} is listed twice", u.name));
                ok = false;
            }
            Some(u) => units.push(u),
            None => ok = false,
        }
    }
    ok.then_some(units)
}

/// The infra units of a cluster without an `infra:` list: each folder under
/// `clusters/<name>/infra/` when it holds folders only, else the folder as one unit `infra`.
/// A folder that cannot be read, or a layer folder whose name is not a valid name, is an error
/// (never a silent change of the units, which would prune the old ones).
pub(super) fn infra_from_folder(root: &Path, cluster: &str) -> Result<Vec<InfraUnit>, String> {
    let rel = format!("clusters/{cluster}/infra");
    let entries = match std::fs::read_dir(root.join(&rel)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{rel}/: cannot list the cluster's infra: {e}")),
    };
    let mut folders = Vec::new();
    let mut files = false;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{rel}/: cannot list the cluster's infra: {e}"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        match entry.file_type() {
            Ok(t) if t.is_dir() && !name.starts_with('.') => folders.push(name),
            Ok(t) if t.is_file() && !name.starts_with('.') && !name.ends_with(".md") => {
                files = true
            }
            _ => {}
        }
    }
    folders.sort();
    if files || folders.is_empty() {
        return Ok(vec![InfraUnit::folder(INFRA.into(), rel)]);
    }
    for f in &folders {
        check_layer_name(f).map_err(|why| {
            format!("{rel}/{f}/: each folder here is an infra layer, named by the folder: {why}")
        })?;
    }
    Ok(folders
        .into_iter()
        .map(|f| InfraUnit::folder(format!("infra/{f}"), format!("{rel}/{f}")))
        .collect())
}

/// Checks the infra units' `dependsOn` (each names a unit of the cluster; no cycles) and the
/// tenant apps' (each names an infra unit of the cluster that is not held back). Returns the
/// units held back, each with its problem.
pub(super) fn check_layers(
    cluster: &Cluster,
    units: &[Unit],
    problems: &mut Vec<Problem>,
) -> BTreeSet<UnitId> {
    let infra: BTreeMap<&str, &Unit> = units
        .iter()
        .filter(|u| u.id.tenant.is_none())
        .map(|u| (u.id.app.as_str(), u))
        .collect();
    let mut broken: BTreeSet<UnitId> = BTreeSet::new();
    let mut hold = |unit: &Unit, detail: String, broken: &mut BTreeSet<UnitId>| {
        problems.push(Problem::new(Owner::Unit(unit.id.clone()), detail));
        broken.insert(unit.id.clone());
    };
    for unit in infra.values() {
        for dep in unit
            .depends_on
            .iter()
            .filter(|d| !infra.contains_key(d.as_str()))
        {
            hold(
                unit,
                format!(
                    "cluster.yaml: dependsOn names {dep:?}, which is not an infra unit of cluster {}",
                    cluster.name
                ),
                &mut broken,
            );
        }
    }
    // Cycles among infra units: each unit that reaches itself is held back.
    for (name, unit) in &infra {
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut todo: Vec<&str> = unit.depends_on.iter().map(String::as_str).collect();
        while let Some(d) = todo.pop() {
            if d == *name {
                hold(
                    unit,
                    format!("cluster.yaml: dependsOn cycle through {name}"),
                    &mut broken,
                );
                break;
            }
            if seen.insert(d)
                && let Some(u) = infra.get(d)
            {
                todo.extend(u.depends_on.iter().map(String::as_str));
            }
        }
    }
    // Held back transitively: an infra unit after a held-back one, a tenant app after either or
    // after an app of its tenant held back here.
    loop {
        let newly: Vec<(&Unit, String, bool)> = units
            .iter()
            .filter(|u| !broken.contains(&u.id))
            .filter_map(|u| {
                let infra_deps = if u.id.tenant.is_none() {
                    &u.depends_on
                } else {
                    &u.after_infra
                };
                let on_infra = infra_deps
                    .iter()
                    .find(|d| {
                        !infra.contains_key(d.as_str()) || broken.contains(&UnitId::infra_named(d))
                    })
                    .map(|d| (u, d.clone(), infra.contains_key(d.as_str())));
                let on_app = || {
                    let t = u.id.tenant.as_deref()?;
                    u.depends_on
                        .iter()
                        .find(|d| broken.contains(&UnitId::app(t, d)))
                        .map(|d| (u, d.clone(), true))
                };
                on_infra.or_else(on_app)
            })
            .collect();
        if newly.is_empty() {
            break;
        }
        for (unit, dep, known) in newly {
            let detail = if known {
                format!(
                    "dependsOn names {dep:?}, which is held back on cluster {} (see its problem)",
                    cluster.name
                )
            } else {
                format!(
                    "dependsOn names {dep:?}, which is not an infra unit of cluster {}",
                    cluster.name
                )
            };
            hold(unit, detail, &mut broken);
        }
    }
    broken
}
