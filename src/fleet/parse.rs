//! Reading the fleet repo (`clusters/*/cluster.yaml`, `tenants/*.yaml`) and a tenant's
//! `tenant.yaml` into the model, with every problem reported with its file, line and field.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::{
    App, AppOptions, AppSource, Catalog, Cluster, ClusterEntry, Fleet, Matcher, OnRemoval,
    Override, Owner, Problem, Tenant,
};
use crate::config::{Credential, check_name, decode_source};
use crate::yaml::{Diagnostics, Fields, Node, Report, Value, join};

/// The default `serviceAccount` of a tenant.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "flotilla-tenant";
/// The default `role` of a tenant.
pub const DEFAULT_ROLE: &str = "admin";

type Known<'a> = &'a dyn Fn(&str) -> Option<&'a Credential>;

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
                match read_yaml(root, &rel).and_then(|doc| decode_cluster(&doc, &rel, &dir_name)) {
                    Ok(mut cluster) => {
                        let infra = format!("clusters/{dir_name}/infra");
                        cluster.infra = root.join(&infra).is_dir().then_some(infra);
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

/// Reads `tenant.yaml` at `root` (the tenant repo, or its `path`).
pub fn read_catalog(
    tenant: &Tenant,
    root: &Path,
    known_credentials: Known<'_>,
) -> Result<Catalog, Vec<Problem>> {
    let owner = || Owner::Tenant(tenant.name.clone());
    read_yaml(root, "tenant.yaml")
        .and_then(|doc| decode_catalog(&doc, tenant, root, known_credentials))
        .map_err(|d| {
            d.iter()
                .map(|d| Problem::new(owner(), d.to_string()))
                .collect()
        })
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
fn read_yaml(root: &Path, rel: &str) -> Result<Node, Diagnostics> {
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

fn finish<T>(report: Report, value: Option<T>) -> Result<T, Diagnostics> {
    match value {
        Some(v) if report.is_clean() => Ok(v),
        _ => Err(report.finish()),
    }
}

fn decode_cluster(doc: &Node, rel: &str, dir_name: &str) -> Result<Cluster, Diagnostics> {
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
        f.finish(&["name", "labels", "vars"], &mut report);
        Some(Cluster {
            name: name?,
            labels: labels?,
            vars: vars?,
            infra: None,
        })
    })();
    finish(report, cluster)
}

fn decode_matcher(node: &Node, path: &str, report: &mut Report) -> Option<Matcher> {
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

fn name_list(node: &Node, path: &str, report: &mut Report) -> Option<Vec<String>> {
    let names = node.strings(path, report)?;
    let mut ok = true;
    for name in &names {
        if let Err(why) = check_name(name) {
            report.error(node, path, why);
            ok = false;
        }
    }
    ok.then_some(names)
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
            let list = name_list(n, "namespaces", r)?;
            if list.is_empty() {
                r.error(n, "namespaces", "a tenant needs at least one namespace");
                return None;
            }
            Some(list)
        });
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
                l.finish(
                    &[
                        "clusterScopedKinds",
                        "credentials",
                        "schemes",
                        "remoteBases",
                    ],
                    r,
                );
                Some((kinds?, credentials?, schemes?, remote?))
            })(),
            None => Some((Vec::new(), Vec::new(), Vec::new(), false)),
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
        f.finish(ALLOWED, r);
        Some(Tenant {
            name: name?,
            namespaces: namespaces?,
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
            remote_bases: limits?.3,
            on_removal: on_removal?,
            file: rel.to_string(),
        })
    })();
    finish(report, tenant)
}

/// `None` when absent, `Some(None)` when present and broken, `Some(Some(v))` when good — folded
/// into `Option<Option<T>>` so `?` on the outer value means "broken".
fn optional<T>(node: Option<&Node>, read: impl FnOnce(&Node) -> Option<T>) -> Option<Option<T>> {
    match node {
        None => Some(None),
        Some(n) => read(n).map(Some),
    }
}

fn decode_catalog(
    doc: &Node,
    tenant: &Tenant,
    root: &Path,
    known: Known<'_>,
) -> Result<Catalog, Diagnostics> {
    let mut report = Report::new("tenant.yaml");
    let r = &mut report;
    let catalog = (|| {
        let mut f = Fields::new(doc, "", r)?;
        let apps = match f.require("apps", doc, r) {
            Some(
                n @ Node {
                    value: Value::Seq(items),
                    ..
                },
            ) => {
                let apps: Vec<Option<App>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        decode_app(item, &format!("apps[{i}]"), tenant, root, known, r)
                    })
                    .collect();
                let mut seen = BTreeSet::new();
                for (item, app) in items.iter().zip(&apps) {
                    if let Some(app) = app
                        && !seen.insert(app.name.clone())
                    {
                        r.error(item, "apps", format!("app {:?} is listed twice", app.name));
                    }
                }
                let _ = n;
                apps.into_iter().collect::<Option<Vec<_>>>()
            }
            Some(n) => r.wrong_type(n, "apps", "a list of apps"),
            None => None,
        };
        let names: BTreeSet<String> = apps
            .as_ref()
            .map(|a| a.iter().map(|a| a.name.clone()).collect())
            .unwrap_or_default();
        let clusters = match f.get("clusters") {
            Some(Node {
                value: Value::Seq(items),
                ..
            }) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    decode_entry(item, &format!("clusters[{i}]"), &names, apps.is_some(), r)
                })
                .collect::<Vec<_>>()
                .into_iter()
                .collect::<Option<Vec<_>>>(),
            Some(n) => r.wrong_type(n, "clusters", "a list of { match, apps } entries"),
            None => Some(Vec::new()),
        };
        f.finish(&["apps", "clusters"], r);
        Some(Catalog {
            apps: apps?,
            clusters: clusters?,
        })
    })();
    finish(report, catalog)
}

fn decode_app(
    node: &Node,
    path: &str,
    tenant: &Tenant,
    root: &Path,
    known: Known<'_>,
    r: &mut Report,
) -> Option<App> {
    const ALLOWED: &[&str] = &[
        "name",
        "source",
        "enabled",
        "namespace",
        "values",
        "dependsOn",
        "options",
    ];
    let mut f = Fields::new(node, path, r)?;
    let name = f.require("name", node, r).and_then(|n| {
        let name = n.str(&join(path, "name"), r)?;
        check_name(name)
            .map_err(|why| r.error(n, &join(path, "name"), why))
            .ok()?;
        Some(name.to_string())
    });
    let source = f.require("source", node, r).and_then(|n| {
        let p = join(path, "source");
        let mut s = Fields::new(n, &p, r)?;
        if s.present(&["url", "dir"]).is_empty() {
            // `{ path }` alone: a folder of the tenant repo; `${...}` is allowed and checked later.
            let sub = s
                .require("path", n, r)
                .and_then(|x| x.str(&join(&p, "path"), r).map(str::to_string));
            s.finish(&["path", "url", "dir"], r);
            return sub.map(|path| AppSource::Tenant { path });
        }
        // A tenant's catalog is the tenant's to write: it may not read the agent's disk, and it
        // may use only the credentials its fleet entry grants.
        if let Some(d) = s.get("dir") {
            r.error(
                d,
                &join(&p, "dir"),
                "a tenant's apps cannot use local directories; use a path in the tenant repo or a Git url",
            );
            s.finish(&["path", "url", "dir", "ref", "credentials"], r);
            return None;
        }
        // The credentials a tenant may name: those its fleet entry grants, and its own source's
        // for its own repository only. Any other name, existing or not, gets the same answer, so
        // a catalog cannot probe which credentials the agent holds.
        let own_repo = |url: &str| match &tenant.source.location {
            crate::config::SourceLocation::Url(own) => same_repo(own, url),
            crate::config::SourceLocation::Dir(_) => false,
        };
        let url = s
            .get("url")
            .and_then(|u| u.str(&join(&p, "url"), r).map(str::to_string));
        let asked = s
            .get("credentials")
            .and_then(|c| Some((c, c.str(&join(&p, "credentials"), r)?.to_string())));
        if let (Some(url), Some((c, name))) = (&url, &asked) {
            let granted = tenant.credentials.iter().any(|g| g == name)
                || (tenant.source.credentials.as_deref() == Some(name.as_str()) && own_repo(url));
            if !granted || known(name).is_none() {
                r.error(
                    c,
                    &join(&p, "credentials"),
                    format!("credentials {name:?} are not granted to tenant {} for this repository (the fleet grants them in tenants/{}.yaml limits.credentials)", tenant.name, tenant.name),
                );
                return None;
            }
        }
        if let Some(url) = &url {
            let scheme = match url.split_once("://") {
                Some((scheme, _)) => scheme,
                None if url.starts_with('/') => "file",
                None => "ssh",
            };
            if !matches!(scheme, "https" | "ssh") && !tenant.schemes.iter().any(|s| s == scheme) {
                r.error(
                    s.get("url").unwrap_or(n),
                    &join(&p, "url"),
                    format!("{scheme} URLs are not allowed for tenant {}'s apps (the fleet allows them in tenants/{}.yaml limits.schemes)", tenant.name, tenant.name),
                );
                return None;
            }
        }
        let spec = decode_source(n, &p, root, known, r)?;
        Some(AppSource::Repo(spec))
    });
    let enabled = f
        .get("enabled")
        .map_or(Some(true), |n| n.bool(&join(path, "enabled"), r));
    let namespace = optional(f.get("namespace"), |n| {
        let ns = n.str(&join(path, "namespace"), r)?;
        if !tenant.namespaces.iter().any(|t| t == ns) {
            r.error(
                n,
                &join(path, "namespace"),
                format!(
                    "{ns:?} is not one of the tenant's namespaces ({})",
                    tenant.namespaces.join(", ")
                ),
            );
            return None;
        }
        Some(ns.to_string())
    });
    let values = f
        .get("values")
        .map_or(Some(serde_json::Value::Object(Default::default())), |n| {
            values_map(n, &join(path, "values"), r)
        });
    let depends_on = f
        .get("dependsOn")
        .map_or(Some(Vec::new()), |n| n.strings(&join(path, "dependsOn"), r));
    let options = f.get("options").map_or(Some(AppOptions::default()), |n| {
        decode_options(n, &join(path, "options"), r)
    });
    f.finish(ALLOWED, r);
    Some(App {
        name: name?,
        source: source?,
        enabled: enabled?,
        namespace: namespace?,
        values: values?,
        depends_on: depends_on?,
        options: options?,
    })
}

fn values_map(node: &Node, path: &str, r: &mut Report) -> Option<serde_json::Value> {
    match &node.value {
        Value::Map(_) => Some(node.to_json()),
        _ => r.wrong_type(node, path, "a mapping of values"),
    }
}

fn decode_options(node: &Node, path: &str, r: &mut Report) -> Option<AppOptions> {
    const ALLOWED: &[&str] = &[
        "prune",
        "force",
        "wait",
        "timeout",
        "allowEmpty",
        "recreate",
        "interval",
        "suspend",
    ];
    let mut f = Fields::new(node, path, r)?;
    let prune = optional(f.get("prune"), |n| n.bool(&join(path, "prune"), r));
    let force = f
        .get("force")
        .map_or(Some(true), |n| n.bool(&join(path, "force"), r));
    let recreate = f
        .get("recreate")
        .map_or(Some(false), |n| n.bool(&join(path, "recreate"), r));
    let wait = f
        .get("wait")
        .map_or(Some(false), |n| n.bool(&join(path, "wait"), r));
    let timeout = optional(f.get("timeout"), |n| {
        n.duration_at_most(&join(path, "timeout"), super::MAX_TIMEOUT, r)
    });
    let allow_empty = f
        .get("allowEmpty")
        .map_or(Some(false), |n| n.bool(&join(path, "allowEmpty"), r));
    let interval = optional(f.get("interval"), |n| {
        n.duration_at_most(&join(path, "interval"), super::MAX_INTERVAL, r)
    });
    let suspend = optional(f.get("suspend"), |n| n.bool(&join(path, "suspend"), r));
    f.finish(ALLOWED, r);
    Some(AppOptions {
        prune: prune?,
        force: force?,
        wait: wait?,
        timeout: timeout?,
        allow_empty: allow_empty?,
        recreate: recreate?,
        interval: interval?,
        suspend: suspend?,
    })
}

fn decode_entry(
    node: &Node,
    path: &str,
    names: &BTreeSet<String>,
    check_names: bool,
    r: &mut Report,
) -> Option<ClusterEntry> {
    let mut f = Fields::new(node, path, r)?;
    let matcher = f
        .require("match", node, r)
        .and_then(|n| decode_matcher(n, &join(path, "match"), r));
    let apps = match f.get("apps") {
        Some(
            n @ Node {
                value: Value::Map(entries),
                ..
            },
        ) => {
            let _ = n;
            let mut out = Vec::new();
            let mut ok = true;
            for (key, value) in entries {
                let Some(app) = key.str(&join(path, "apps"), r) else {
                    ok = false;
                    continue;
                };
                let p = format!("{path}.apps.{app}");
                if check_names && !names.contains(app) {
                    r.error(key, &p, format!("no app named {app:?} in apps"));
                    ok = false;
                    continue;
                }
                let Some(mut o) = Fields::new(value, &p, r) else {
                    ok = false;
                    continue;
                };
                let enabled = optional(o.get("enabled"), |n| n.bool(&join(&p, "enabled"), r));
                let values = optional(o.get("values"), |n| values_map(n, &join(&p, "values"), r));
                o.finish(&["enabled", "values"], r);
                match (enabled, values) {
                    (Some(enabled), Some(values)) => {
                        out.push((app.to_string(), Override { enabled, values }))
                    }
                    _ => ok = false,
                }
            }
            ok.then_some(out)
        }
        Some(n) => r.wrong_type(
            n,
            &join(path, "apps"),
            "a mapping of app names to { enabled, values }",
        ),
        None => Some(Vec::new()),
    };
    f.finish(&["match", "apps"], r);
    Some(ClusterEntry {
        matcher: matcher?,
        apps: apps?,
    })
}

/// Whether two Git URLs name the same repository: same host, port and path (a trailing `.git`
/// or `/` aside); other URLs only when equal.
fn same_repo(a: &str, b: &str) -> bool {
    use crate::config::hosts::endpoint;
    let trim = |p: &str| {
        p.trim_end_matches('/')
            .trim_end_matches(".git")
            .to_ascii_lowercase()
    };
    match (endpoint(a), endpoint(b)) {
        (Some(x), Some(y)) => {
            x.host == y.host && x.port == y.port && trim(&x.path) == trim(&y.path)
        }
        _ => a == b,
    }
}
