//! Rendering figures (a benchmark that prints numbers, not a timed test):
//!
//! - plain YAML: objects/s through the whole pure pipeline (fleet, catalogs, placement, render,
//!   checks) for 1,000 apps × 10 objects, and end to end through `flotilla render` (process,
//!   pipeline and YAML output);
//! - kustomize: milliseconds per build of a base + overlay, through flotilla and bare.
//!
//! Run: `cargo bench --bench render`

// Benchmarks block on purpose; the rule against blocking sleeps (clippy.toml) is for `src/`.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla::config::{Credential, Render};
use flotilla::fleet::{self, UnitSource};
use flotilla::render::{self, Tools};

const TENANTS: usize = 10;
const APPS_PER_TENANT: usize = 100;
const OBJECTS_PER_APP: usize = 10;

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A platform with 1,000 plain-YAML apps of 10 objects each (alternating ConfigMaps and
/// Deployments, with variables), spread over 10 tenants.
fn platform(root: &Path) {
    write(
        root,
        "flotilla.yaml",
        "cluster: bench\nfleet: { dir: fleet }\n",
    );
    write(
        root,
        "fleet/clusters/bench/cluster.yaml",
        "name: bench\nlabels: { env: prod }\nvars: { domain: example.com }\n",
    );
    for t in 0..TENANTS {
        write(
            root,
            &format!("fleet/tenants/t{t}.yaml"),
            &format!(
                "name: t{t}\nnamespaces: [t{t}]\nsource: {{ dir: ../../tenants/t{t} }}\nclusters: [{{ name: bench }}]\n"
            ),
        );
        let mut catalog = String::from("apps:\n");
        for a in 0..APPS_PER_TENANT {
            catalog.push_str(&format!("  - {{ name: app{a}, source: {{ path: apps/app{a} }}, values: {{ replicas: 2, image: web:1.{a} }} }}\n"));
            let mut docs = String::new();
            for o in 0..OBJECTS_PER_APP {
                if o % 2 == 0 {
                    docs.push_str(&format!(
                        "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app{a}-config-{o}\n  labels: {{ app: app{a} }}\ndata:\n  url: https://app{a}.${{cluster.name}}.${{vars.domain}}\n  team: ${{tenant.name}}\n  level: info\n"
                    ));
                } else {
                    docs.push_str(&format!(
                        "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app{a}-{o}\n  labels: {{ app: app{a} }}\nspec:\n  replicas: ${{values.replicas}}\n  selector:\n    matchLabels: {{ app: app{a}-{o} }}\n  template:\n    metadata:\n      labels: {{ app: app{a}-{o} }}\n    spec:\n      containers:\n        - name: web\n          image: registry.example.com/${{values.image}}\n          ports: [{{ containerPort: 8080 }}]\n          resources:\n            requests: {{ cpu: 100m, memory: 128Mi }}\n"
                    ));
                }
            }
            write(root, &format!("tenants/t{t}/apps/app{a}/all.yaml"), &docs);
        }
        write(root, &format!("tenants/t{t}/tenant.yaml"), &catalog);
    }
}

/// The pure pipeline over the platform; returns what it rendered (the caller frees it).
fn pipeline(root: &Path, tools: &Tools) -> BTreeMap<fleet::UnitId, render::Rendered> {
    let known = |_: &str| -> Option<&Credential> { None };
    let (fleet, problems) = fleet::read_fleet(&root.join("fleet"), &known);
    assert!(problems.is_empty(), "{problems:?}");
    let mut catalogs = BTreeMap::new();
    for t in fleet.tenants.values() {
        let catalog = fleet::read_catalog(t, &root.join("tenants").join(&t.name), &known).unwrap();
        catalogs.insert(t.name.clone(), catalog);
    }
    let placement = fleet::place(&fleet, &fleet.clusters["bench"], &catalogs);
    let root_of = |unit: &fleet::Unit| {
        let UnitSource::Tenant { .. } = unit.source else {
            unreachable!()
        };
        Ok(root
            .join("tenants")
            .join(unit.id.tenant.as_deref().unwrap()))
    };
    render::render_all(&placement.units, &root_of, tools)
}

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..runs {
        let start = Instant::now();
        let v = f();
        best = best.min(start.elapsed());
        out = Some(v);
    }
    (best, out.unwrap())
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    platform(root);
    let tools = Tools::from(&Render::default());
    let expected = TENANTS * APPS_PER_TENANT * OBJECTS_PER_APP;

    // Best of 5; the rendered objects are freed outside the timed part and timed on their own.
    let mut t = Duration::MAX;
    let mut t_free = Duration::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let results = pipeline(root, &tools);
        t = t.min(start.elapsed());
        let n: usize = results
            .values()
            .map(|r| r.as_ref().expect("renders").len())
            .sum();
        assert_eq!(n, expected);
        let start = Instant::now();
        drop(results);
        t_free = t_free.min(start.elapsed());
    }
    println!(
        "plain YAML, pipeline (fleet+catalogs+placement+render+checks, {} threads): {expected} objects from {} apps in {:.1} ms = {:.0} objects/s (best of 5)",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        TENANTS * APPS_PER_TENANT,
        t.as_secs_f64() * 1e3,
        expected as f64 / t.as_secs_f64()
    );
    println!(
        "  freeing the rendered objects afterwards: {:.1} ms; render + free = {:.0} objects/s",
        t_free.as_secs_f64() * 1e3,
        expected as f64 / (t + t_free).as_secs_f64()
    );

    // Where the time goes: reading the files, and parsing them alone.
    let files: Vec<std::path::PathBuf> = (0..TENANTS)
        .flat_map(|t| {
            (0..APPS_PER_TENANT)
                .map(move |a| root.join(format!("tenants/t{t}/apps/app{a}/all.yaml")))
        })
        .collect();
    let (t_read, texts) = best_of(5, || {
        files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect::<Vec<_>>()
    });
    let (t_parse, docs) = best_of(5, || {
        texts
            .iter()
            .map(|t| flotilla::yaml::Node::parse_documents(t, "x").unwrap().len())
            .sum::<usize>()
    });
    assert_eq!(docs, expected);
    println!(
        "  single-threaded pieces: reading 1,000 files {:.1} ms; YAML parsing alone {:.1} ms ({:.0} objects/s)",
        t_read.as_secs_f64() * 1e3,
        t_parse.as_secs_f64() * 1e3,
        expected as f64 / t_parse.as_secs_f64()
    );

    let exe = env!("CARGO_BIN_EXE_flotilla");
    let (t, out) = best_of(3, || {
        Command::new(exe)
            .args(["render", "--config", "flotilla.yaml"])
            .current_dir(root)
            .output()
            .unwrap()
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "plain YAML, `flotilla render` end to end (process, pipeline, YAML output of {:.1} MiB): {:.1} ms = {:.0} objects/s (best of 3)",
        out.stdout.len() as f64 / (1024.0 * 1024.0),
        t.as_secs_f64() * 1e3,
        expected as f64 / t.as_secs_f64()
    );

    // kustomize: a base with 3 resources and an overlay with a patch, built 10 times.
    let k = root.join("kustomize");
    write(
        &k,
        "base/kustomization.yaml",
        "resources: [deploy.yaml, svc.yaml, cm.yaml]\nlabels:\n  - pairs: { app: web }\n    includeSelectors: true\n",
    );
    write(
        &k,
        "base/deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: web }\nspec:\n  replicas: 1\n  selector: { matchLabels: {} }\n  template:\n    spec:\n      containers: [{ name: web, image: web:1 }]\n",
    );
    write(
        &k,
        "base/svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: { name: web }\nspec:\n  ports: [{ port: 80 }]\n",
    );
    write(
        &k,
        "base/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: web }\ndata: { a: b }\n",
    );
    write(
        &k,
        "overlays/prod/kustomization.yaml",
        "resources: [../../base]\nreplicas: [{ name: web, count: 3 }]\ncommonAnnotations: { owner: \"${tenant.name}\" }\n",
    );
    let Some(kustomize) = tools.kustomize.clone() else {
        println!("kustomize: no kustomize or kubectl binary found; skipped");
        return;
    };
    let known = |_: &str| -> Option<&Credential> { None };
    write(&k, "fleet/clusters/bench/cluster.yaml", "name: bench\n");
    write(
        &k,
        "fleet/tenants/t.yaml",
        "name: t\nnamespaces: [t]\nsource: { dir: ../.. }\nclusters: [{ name: bench }]\n",
    );
    write(
        &k,
        "tenant.yaml",
        "apps: [{ name: web, source: { path: overlays/prod } }]\n",
    );
    let (fleet_k, p) = fleet::read_fleet(&k.join("fleet"), &known);
    assert!(p.is_empty(), "{p:?}");
    let catalog = fleet::read_catalog(&fleet_k.tenants["t"], &k, &known).unwrap();
    let placement = fleet::place(
        &fleet_k,
        &fleet_k.clusters["bench"],
        &BTreeMap::from([("t".to_string(), catalog)]),
    );
    let unit = &placement.units[0];
    const BUILDS: u32 = 10;
    let start = Instant::now();
    for _ in 0..BUILDS {
        assert_eq!(render::render_unit(unit, &k, &tools).unwrap().len(), 3);
    }
    let through = start.elapsed() / BUILDS;
    let sub = if kustomize.file_name().is_some_and(|n| n == "kubectl") {
        "kustomize"
    } else {
        "build"
    };
    let start = Instant::now();
    for _ in 0..BUILDS {
        let out = Command::new(&kustomize)
            .arg(sub)
            .arg(k.join("overlays/prod"))
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let bare = start.elapsed() / BUILDS;
    println!(
        "kustomize ({} {sub}), base + overlay, 3 objects: {:.1} ms per build through flotilla, {:.1} ms bare (mean of {BUILDS})",
        kustomize.display(),
        through.as_secs_f64() * 1e3,
        bare.as_secs_f64() * 1e3
    );
}
