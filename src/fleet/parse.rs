//! Reading the fleet repo (`clusters/*/cluster.yaml`, `tenants/*.yaml`) into the model, with every
//! problem reported with its file, line and field; the readers `catalog.rs` shares.

use std::collections::BTreeMap;
use std::path::Path;

use super::{
    Cluster, Fleet, InfraUnit, Matcher, NamespacePolicy, OnRemoval, Owner, Problem, Tenant, layers,
};
use crate::config::{Credential, check_name, decode_source};
use crate::yaml::{Diagnostics, Fields, Node, Report, Value, join};

/// The default `serviceAccount` of a tenant.
pub(super) const DEFAULT_SERVICE_ACCOUNT: &str = "flotilla-tenant";
/// The default `role` of a tenant.
pub(super) const DEFAULT_ROLE: &str = "admin";

pub(super) type Known<'a> = &'a dyn Fn(&str) -> Option<&'a Credential>;

/// Reads the fleet at `root`. A broken cluster or tenant file leaves that entry out and is
/// reported; the rest of the fleet is still read.
pub fn read_fleet(root: &Path, known_credentials: Known<'_>) -> (Fleet, Vec<Problem>) {
    let mut fleet = Fleet::default();
    let mut problems = Vec::new();
    let mut fail = |detail: String| problems.push(Problem::new(Owner::Fleet, detail));

    let clusters_dir = root.join("clusters");
    match sorted_entries(&clusters_dir) {
        Err(e) => fail(format!("clusters/: cannot list the fleet's clusters: {e}")),
        Ok(entries) => {
            for dir_name in entries
                .into_iter()
                .filter(|n| clusters_dir.join(n).is_dir())
            {
                let rel = format!("clusters/{dir_name}/cluster.yaml");
                match read_yaml(root, &rel)
                    .and_then(|doc| decode_cluster(&doc, &rel, &dir_name, known_credentials))
                {
                    Ok((mut cluster, listed)) => {
                        cluster.infra = match listed {
                            Some(list) => list,
                            // The cluster's tenants still go on; its infra waits for the fix.
                            None => {
                                layers::infra_from_folder(root, &dir_name).unwrap_or_else(|why| {
                                    fail(why);
                                    Vec::new()
                                })
                            }
                        };
                        fleet.clusters.insert(cluster.name.clone(), cluster);
                    }
                    Err(d) => d.iter().for_each(|d| fail(d.to_string())),
                }
            }
        }
    }

    let tenants_dir = root.join("tenants");
    if tenants_dir.is_dir() {
        match sorted_entries(&tenants_dir) {
            Err(e) => fail(format!("tenants/: cannot list the fleet's tenants: {e}")),
            Ok(entries) => {
                for file in entries
                    .iter()
                    .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
                {
                    let rel = format!("tenants/{file}");
                    let stem = file.trim_end_matches(".yaml").trim_end_matches(".yml");
                    let decoded = read_yaml(root, &rel).and_then(|doc| {
                        decode_tenant(&doc, &rel, stem, &tenants_dir, known_credentials)
                    });
                    match decoded {
                        // `ai.yaml` and `ai.yml` would both be tenant ai: neither wins silently.
                        Ok(tenant) if fleet.tenants.contains_key(&tenant.name) => fail(format!(
                            "{rel}: tenant {} is also defined by {}; keep one file per tenant",
                            tenant.name, fleet.tenants[&tenant.name].file
                        )),
                        Ok(tenant) => {
                            fleet.tenants.insert(tenant.name.clone(), tenant);
                        }
                        Err(d) => d.iter().for_each(|d| fail(d.to_string())),
                    }
                }
            }
        }
    }
    (fleet, problems)
}

/// File names in a folder, sorted, so reading order never depends on the file system.
fn sorted_entries(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Reads and parses `rel` below `root`; the diagnostics name the file by `rel`.
pub(super) fn read_yaml(root: &Path, rel: &str) -> Result<Node, Diagnostics> {
    let one = |message: String| {
        Diagnostics::one(crate::yaml::Diagnostic {
            file: rel.to_string(),
            line: 1,
            column: 1,
            path: String::new(),
            message,
        })
    };
    let bytes = std::fs::read(root.join(rel)).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            one("no such file".to_string())
        } else {
            one(format!("cannot read: {e}"))
        }
    })?;
    let text = String::from_utf8(bytes)
        .map_err(|_| one("not a text file (not valid UTF-8)".to_string()))?;
    Node::parse(&text, rel)
}

pub(super) fn finish<T>(report: Report, value: Option<T>) -> Result<T, Diagnostics> {
    match value {
        Some(v) if report.is_clean() => Ok(v),
        _ => Err(report.finish()),
    }
}

/// A cluster file, with its `infra:` list if it has one.
fn decode_cluster(
    doc: &Node,
    rel: &str,
    dir_name: &str,
    known: Known<'_>,
) -> Result<(Cluster, Option<Vec<InfraUnit>>), Diagnostics> {
    let mut report = Report::new(rel);
    let cluster = (|| {
        let mut f = Fields::new(doc, "", &mut report)?;
        let name = f.require("name", doc, &mut report).and_then(|n| {
            let name = n.str("name", &mut report)?;
            if name != dir_name {
                report.error(
                    n,
                    "name",
                    format!("{name:?} must match its folder clusters/{dir_name}/"),
                );
            }
            Some(name.to_string())
        });
        let labels = f.get("labels").map_or(Some(BTreeMap::new()), |n| {
            n.string_map("labels", &mut report)
        });
        let vars = f
            .get("vars")
            .map_or(Some(BTreeMap::new()), |n| n.string_map("vars", &mut report));
        let infra = optional(f.get("infra"), |n| {
            layers::decode_infra(n, known, &mut report)
        });
        let defaults = match f.get("tenantDefaults") {
            None => Some(NamespacePolicy::default()),
            Some(n) => (|| {
                let mut d = Fields::new(n, "tenantDefaults", &mut report)?;
                let policy = layers::decode_policy(&mut d, "tenantDefaults", &mut report);
                d.finish(&layers::POLICY_FIELDS, &mut report);
                policy
            })(),
        };
        let decryption = f
            .get("decryption")
            .map_or(Some(Vec::new()), |n| n.strings("decryption", &mut report));
        f.finish(
            &[
                "name",
                "labels",
                "vars",
                "infra",
                "tenantDefaults",
                "decryption",
            ],
            &mut report,
        );
        Some((
            Cluster {
                name: name?,
                labels: labels?,
                vars: vars?,
                infra: Vec::new(),
                tenant_defaults: defaults?,
                decryption: decryption?,
            },
            infra?,
        ))
    })();
    finish(report, cluster)
}

pub(super) fn decode_matcher(node: &Node, path: &str, report: &mut Report) -> Option<Matcher> {
    let mut f = Fields::new(node, path, report)?;
    let given = f.present(&["name", "labels"]);
    let name = f
        .get("name")
        .and_then(|n| n.str(&join(path, "name"), report).map(str::to_string));
    let labels = f
        .get("labels")
        .and_then(|n| n.string_map(&join(path, "labels"), report));
    f.finish(&["name", "labels"], report);
    if given.len() != 1 {
        report.error(node, path, "give exactly one of name or labels");
        return None;
    }
    name.map(Matcher::Name).or(labels.map(Matcher::Labels))
}

fn decode_matchers(node: &Node, path: &str, report: &mut Report) -> Option<Vec<Matcher>> {
    let Value::Seq(items) = &node.value else {
        return report.wrong_type(
            node,
            path,
            "a list of matchers ({ name: ... } or { labels: {...} })",
        );
    };
    let out: Vec<_> = items
        .iter()
        .enumerate()
        .map(|(i, item)| decode_matcher(item, &format!("{path}[{i}]"), report))
        .collect();
    out.into_iter().collect()
}

fn decode_tenant(
    doc: &Node,
    rel: &str,
    stem: &str,
    tenants_dir: &Path,
    known: Known<'_>,
) -> Result<Tenant, Diagnostics> {
    const ALLOWED: &[&str] = &[
        "name",
        "namespaces",
        "namespaceLabels",
        "namespaceAnnotations",
        "resourceQuota",
        "limitRange",
        "dependsOn",
        "serviceAccount",
        "role",
        "source",
        "clusters",
        "interval",
        "prune",
        "suspend",
        "vars",
        "limits",
        "onRemoval",
        "decryption",
    ];
    let mut report = Report::new(rel);
    let r = &mut report;
    let tenant = (|| {
        let mut f = Fields::new(doc, "", r)?;
        let name = f.require("name", doc, r).and_then(|n| {
            let name = n.str("name", r)?;
            check_name(name)
                .map_err(|why| r.error(n, "name", why))
                .ok()?;
            if name == layers::INFRA {
                // `infra/<app>` would read as an infra layer in status, metrics and dependsOn.
                r.error(
                    n,
                    "name",
                    "\"infra\" is reserved for the cluster's infra units",
                );
                return None;
            }
            if name != stem {
                r.error(
                    n,
                    "name",
                    format!("{name:?} must match its file name tenants/{stem}.yaml"),
                );
            }
            Some(name.to_string())
        });
        let namespaces = f.require("namespaces", doc, r).and_then(|n| {
            let (list, overrides) = layers::decode_namespaces(n, r)?;
            if list.is_empty() {
                r.error(n, "namespaces", "a tenant needs at least one namespace");
                return None;
            }
            Some((list, overrides))
        });
        let policy = layers::decode_policy(&mut f, "", r);
        let depends_on = f
            .get("dependsOn")
            .map_or(Some(Vec::new()), |n| layers::infra_names(n, "dependsOn", r));
        let service_account = match f.get("serviceAccount") {
            Some(n) => n.str("serviceAccount", r).and_then(|s| {
                check_name(s)
                    .map_err(|why| r.error(n, "serviceAccount", why))
                    .ok()?;
                Some(s.to_string())
            }),
            None => Some(DEFAULT_SERVICE_ACCOUNT.to_string()),
        };
        let role = match f.get("role") {
            Some(n) => n.str("role", r).map(str::to_string),
            None => Some(DEFAULT_ROLE.to_string()),
        };
        let source = f
            .require("source", doc, r)
            .and_then(|n| decode_source(n, "source", tenants_dir, known, r));
        let clusters = f
            .require("clusters", doc, r)
            .and_then(|n| decode_matchers(n, "clusters", r));
        let interval = optional(f.get("interval"), |n| {
            n.duration_at_most("interval", super::MAX_INTERVAL, r)
        });
        let prune = f.get("prune").map_or(Some(true), |n| n.bool("prune", r));
        let suspend = f
            .get("suspend")
            .map_or(Some(false), |n| n.bool("suspend", r));
        let vars = f
            .get("vars")
            .map_or(Some(BTreeMap::new()), |n| n.string_map("vars", r));
        let limits = match f.get("limits") {
            Some(n) => (|| {
                let mut l = Fields::new(n, "limits", r)?;
                let kinds = l.get("clusterScopedKinds").map_or(Some(Vec::new()), |k| {
                    k.strings("limits.clusterScopedKinds", r)
                });
                let credentials = l.get("credentials").map_or(Some(Vec::new()), |c| {
                    let names = c.strings("limits.credentials", r)?;
                    for name in &names {
                        if known(name).is_none() {
                            r.error(
                                c,
                                "limits.credentials",
                                format!("no credentials named {name:?} in the agent config"),
                            );
                        }
                    }
                    Some(names)
                });
                let schemes = l.get("schemes").map_or(Some(Vec::new()), |s| {
                    let names = s.strings("limits.schemes", r)?;
                    for name in &names {
                        if !["http", "git", "file"].contains(&name.as_str()) {
                            r.error(
                                s,
                                "limits.schemes",
                                format!("{name:?} is not http, git or file (https and ssh are always allowed)"),
                            );
                        }
                    }
                    Some(names)
                });
                let remote = l
                    .get("remoteBases")
                    .map_or(Some(false), |b| b.bool("limits.remoteBases", r));
                let verify = optional(l.get("verify"), |v| {
                    crate::config::decode_verify(v, "limits.verify", r)
                });
                l.finish(
                    &[
                        "clusterScopedKinds",
                        "credentials",
                        "schemes",
                        "remoteBases",
                        "verify",
                    ],
                    r,
                );
                Some((kinds?, credentials?, schemes?, remote?, verify?))
            })(),
            None => Some((Vec::new(), Vec::new(), Vec::new(), false, None)),
        };
        let on_removal = match f.get("onRemoval") {
            Some(n) => match n.str("onRemoval", r)? {
                "keep" => Some(OnRemoval::Keep),
                "prune" => Some(OnRemoval::Prune),
                other => {
                    r.error(n, "onRemoval", format!("{other:?} is not keep or prune"));
                    None
                }
            },
            None => Some(OnRemoval::Keep),
        };
        let decryption_node = f.get("decryption");
        f.finish(ALLOWED, r);
        let (namespaces, namespace_overrides) = namespaces?;
        let decryption =
            decryption_node.map_or(Some(Vec::new()), |n| decode_decryption(n, &namespaces, r));
        let source_verify = source.as_ref().and_then(|s| s.verify.clone());
        let app_verify = limits.as_ref().and_then(|l| l.4.clone()).or(source_verify);
        if limits.as_ref().is_some_and(|l| l.3) && app_verify.is_some() {
            // kustomize would fetch remote bases itself, past every signature check.
            r.error(
                doc,
                "limits",
                "remoteBases and verify cannot go together: kustomize fetches remote bases without signature checks",
            );
            return None;
        }
        Some(Tenant {
            decryption: decryption?,
            name: name?,
            namespaces,
            namespace_overrides,
            namespace_policy: policy?,
            depends_on: depends_on?,
            service_account: service_account?,
            role: role?,
            source: source?,
            clusters: clusters?,
            interval: interval?,
            prune: prune?,
            suspend: suspend?,
            vars: vars?,
            cluster_scoped_kinds: limits.clone()?.0,
            credentials: limits.clone()?.1,
            schemes: limits.clone()?.2,
            remote_bases: limits.clone()?.3,
            app_verify,
            on_removal: on_removal?,
            file: rel.to_string(),
        })
    })();
    finish(report, tenant)
}

/// A tenant's `decryption`: names of the agent config's keys, or `{ secret, namespace }` for
/// keys in a Secret of one of its namespaces (default its first), read with its identity:
/// kept as `secret:<namespace>/<name>`.
fn decode_decryption(node: &Node, namespaces: &[String], r: &mut Report) -> Option<Vec<String>> {
    let Value::Seq(items) = &node.value else {
        return r.wrong_type(
            node,
            "decryption",
            "a list of key names and { secret, namespace }",
        );
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("decryption[{i}]");
        if let Value::Str(name) = &item.value {
            // A name of the agent config's keys; `secret:` names are made below, never written.
            if name.contains(':') {
                r.error(item, &path, format!("{name:?} is not a key name (use {{ secret, namespace }} for a key in a Secret)"));
                return None;
            }
            out.push(name.clone());
            continue;
        }
        let mut f = Fields::new(item, &path, r)?;
        let secret = f
            .require("secret", item, r)
            .and_then(|n| n.str(&join(&path, "secret"), r).map(str::to_string));
        let namespace = match f.get("namespace") {
            None => namespaces.first().cloned(),
            Some(n) => {
                let ns = n.str(&join(&path, "namespace"), r)?;
                if !namespaces.iter().any(|t| t == ns) {
                    r.error(
                        n,
                        &join(&path, "namespace"),
                        format!("{ns:?} is not one of the tenant's namespaces"),
                    );
                    return None;
                }
                Some(ns.to_string())
            }
        };
        f.finish(&["secret", "namespace"], r);
        let secret = secret?;
        crate::config::check_name(&secret)
            .map_err(|why| r.error(item, &join(&path, "secret"), why))
            .ok()?;
        out.push(format!("secret:{}/{secret}", namespace?));
    }
    Some(out)
}

/// `None` when absent, `Some(None)` when present and broken, `Some(Some(v))` when good — folded
/// into `Option<Option<T>>` so `?` on the outer value means "broken".
pub(super) fn optional<T>(
    node: Option<&Node>,
    read: impl FnOnce(&Node) -> Option<T>,
) -> Option<Option<T>> {
    match node {
        None => Some(None),
        Some(n) => read(n).map(Some),
    }
}
