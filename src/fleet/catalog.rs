//! Reading a tenant's `tenant.yaml` into its catalog: apps, their sources (within what the fleet
//! grants the tenant: credentials, URL schemes), options and per-cluster entries, with every
//! problem reported with its file, line and field.

use std::collections::BTreeSet;
use std::path::Path;

use super::parse::{Known, decode_matcher, finish, optional, read_yaml};
use super::{
    App, AppOptions, AppSource, Catalog, ClusterEntry, Override, Owner, Problem, Tenant, ValuesFile,
};
use crate::config::{check_name, decode_source};
use crate::yaml::{Diagnostics, Fields, Node, Report, Value, join};

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
        "valuesFiles",
        "releaseName",
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
        if let Some(c) = s.get("chart") {
            s.finish(&["chart"], r);
            return decode_app_chart(c, &join(&p, "chart"), tenant, known, r).map(AppSource::Chart);
        }
        if s.present(&["url", "dir"]).is_empty() {
            // `{ path }` alone: a folder of the tenant repo; `${...}` is allowed and checked later.
            let sub = s
                .require("path", n, r)
                .and_then(|x| x.str(&join(&p, "path"), r).map(str::to_string));
            s.finish(&["path", "url", "dir", "chart"], r);
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
        let mut spec = decode_source(n, &p, root, known, r)?;
        // Signatures: the fleet's requirement on the tenant's source holds for its app repos
        // too. An app may ask for more (a tag as well, fewer of the fleet's keys), never less.
        let required = tenant.app_verify.as_ref();
        match (&spec.verify, required) {
            (None, required) => spec.verify = required.cloned(),
            (Some(own), Some(required)) if own.within(required) => {}
            (Some(_), _) => {
                let v = s.get("verify").unwrap_or(n);
                let why = match required {
                    Some(req) => format!(
                        "must check at least what the fleet asks of tenant {} (mode {}, keys among {})",
                        tenant.name,
                        req.mode,
                        req.keys.join(", ")
                    ),
                    None => format!(
                        "names keys the fleet does not give tenant {} (tenants/{}.yaml limits.verify)",
                        tenant.name, tenant.name
                    ),
                };
                r.error(v, &join(&p, "verify"), why);
                return None;
            }
        }
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
    let values_files = f.get("valuesFiles").map_or(Some(Vec::new()), |n| {
        values_files(n, &join(path, "valuesFiles"), r)
    });
    let release_name = optional(f.get("releaseName"), |n| {
        let name = n.str(&join(path, "releaseName"), r)?;
        // Helm's rule: dot-separated DNS labels, at most 53 characters in all.
        if name.len() > 53 || !name.split('.').all(|label| check_name(label).is_ok()) {
            r.error(
                n,
                &join(path, "releaseName"),
                format!("{name:?} is not a valid release name (at most 53 characters: lowercase letters, digits, '-' and '.', each part starting and ending with a letter or digit)"),
            );
            return None;
        }
        Some(name.to_string())
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
        values_files: values_files?,
        release_name: release_name?,
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
                let files = o.get("valuesFiles").map_or(Some(Vec::new()), |n| {
                    values_files(n, &join(&p, "valuesFiles"), r)
                });
                o.finish(&["enabled", "values", "valuesFiles"], r);
                match (enabled, values, files) {
                    (Some(enabled), Some(values), Some(values_files)) => out.push((
                        app.to_string(),
                        Override {
                            enabled,
                            values,
                            values_files,
                        },
                    )),
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

/// `valuesFiles:` a list of paths in the tenant's repository, or `{ path, optional }` entries.
fn values_files(node: &Node, path: &str, r: &mut Report) -> Option<Vec<ValuesFile>> {
    let Value::Seq(items) = &node.value else {
        return r.wrong_type(node, path, "a list of values files");
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let file = match &item.value {
            Value::Str(s) => Some(ValuesFile {
                path: s.clone(),
                optional: false,
            }),
            Value::Map(_) => (|| {
                let mut f = Fields::new(item, &p, r)?;
                let file = f
                    .require("path", item, r)
                    .and_then(|n| n.str(&join(&p, "path"), r).map(str::to_string));
                let optional = f
                    .get("optional")
                    .map_or(Some(false), |n| n.bool(&join(&p, "optional"), r));
                f.finish(&["path", "optional"], r);
                Some(ValuesFile {
                    path: file?,
                    optional: optional?,
                })
            })(),
            _ => r.wrong_type(item, &p, "a path, or { path, optional }"),
        };
        match file {
            Some(f) => out.push(f),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// An app's `source.chart`: decoded, then held to what the fleet grants the tenant (its
/// credentials by name, `http://` only where `limits.schemes` allows it).
fn decode_app_chart(
    node: &Node,
    path: &str,
    tenant: &Tenant,
    known: Known<'_>,
    r: &mut Report,
) -> Option<crate::config::ChartSpec> {
    // Same answer for a name that exists and one that does not, as for Git sources.
    if let Some(c) = node.get("credentials") {
        let name = c.str(&join(path, "credentials"), r)?;
        if !tenant.credentials.iter().any(|g| g == name) || known(name).is_none() {
            r.error(
                c,
                &join(path, "credentials"),
                format!("credentials {name:?} are not granted to tenant {} for this repository (the fleet grants them in tenants/{}.yaml limits.credentials)", tenant.name, tenant.name),
            );
            return None;
        }
    }
    let spec = crate::config::decode_chart(node, path, known, r)?;
    let scheme = spec.repo.transport();
    if !matches!(scheme, "https" | "oci") && !tenant.schemes.iter().any(|s| s == scheme) {
        r.error(
            node.get("repo").unwrap_or(node),
            &join(path, "repo"),
            format!("{scheme} URLs are not allowed for tenant {}'s apps (the fleet allows them in tenants/{}.yaml limits.schemes)", tenant.name, tenant.name),
        );
        return None;
    }
    Some(spec)
}
