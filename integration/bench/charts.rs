//! Chart figures (a benchmark that prints numbers, not a timed test):
//!
//! - the render time of a chart app (Helm's engine through the `helm` stand-in, rendered twice
//!   for determinism) against a plain-YAML app of the same 50 objects, through the binary;
//! - a no-change poll of 50 chart units, 25 over one Helm repository (5 charts in its index) and
//!   25 over one OCI registry (5 chart repositories): requests made and time (target: one
//!   conditional request per repository per interval, under 1 s).
//!
//! Run: `FLOTILLA_TEST_HELM_PYTHON=… cargo bench --bench charts` (needs helm-python-sdk and
//! Debian's docker-registry, as the tests do).

// Benchmarks block on purpose; the rule against blocking sleeps (clippy.toml) is for `src/`.
#![allow(clippy::disallowed_methods)]

// The tests' helpers (chart repositories, the registry, the `helm` stand-in); the parts only
// the tests use stay unused here.
#[allow(dead_code, unused_imports)]
#[path = "../../tests/support/mod.rs"]
mod support;

use support::repo_root;

use std::time::{Duration, Instant};

use flotilla::config::{ChartSpec, Config, check_repo};
use flotilla::source::Sources;
use support::charts::{FileServer, Registry, chart_tool, publish, write_chart};

const OBJECTS: usize = 50;
const UNITS: usize = 50;

fn main() {
    let probe = tempfile::tempdir().unwrap();
    if chart_tool(&["index", probe.path().to_str().unwrap(), "http://x"]).is_none() {
        println!(
            "charts bench: no Python with helm-python-sdk (set FLOTILLA_TEST_HELM_PYTHON); skipped"
        );
        return;
    }
    render_figures();
    poll_figures();
}

fn binary() -> std::path::PathBuf {
    let built = std::process::Command::new("cargo")
        .args(["build", "--release", "--bin", "flotilla", "--quiet"])
        .status()
        .unwrap();
    assert!(built.success());
    repo_root().join("target/release/flotilla")
}

fn render_figures() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let helm = support::helm_standin(root).expect("the engine was found above");
    let objects: String = (0..OBJECTS)
        .map(|i| format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: c{i} }}\ndata: {{ index: \"{i}\" }}\n"))
        .collect();
    std::fs::create_dir_all(root.join("tenants/t/plain")).unwrap();
    std::fs::create_dir_all(root.join("tenants/t/chart/templates")).unwrap();
    std::fs::create_dir_all(root.join("fleet/clusters/c")).unwrap();
    std::fs::create_dir_all(root.join("fleet/tenants")).unwrap();
    std::fs::write(root.join("tenants/t/plain/all.yaml"), &objects).unwrap();
    std::fs::write(
        root.join("tenants/t/chart/Chart.yaml"),
        "apiVersion: v2\nname: chart\nversion: 1.0.0\n",
    )
    .unwrap();
    // The same objects under other names (an object has one owner).
    std::fs::write(
        root.join("tenants/t/chart/templates/all.yaml"),
        objects.replace("name: c", "name: h"),
    )
    .unwrap();
    std::fs::write(root.join("fleet/clusters/c/cluster.yaml"), "name: c\n").unwrap();
    std::fs::write(
        root.join("fleet/tenants/t.yaml"),
        "name: t\nnamespaces: [t]\nsource: { dir: ../../tenants/t }\nclusters: [{ name: c }]\n",
    )
    .unwrap();
    std::fs::write(
        root.join("flotilla.yaml"),
        format!(
            "cluster: c\nfleet: {{ dir: fleet }}\nrender: {{ helm: {} }}\n",
            helm.display()
        ),
    )
    .unwrap();
    let flotilla = binary();
    // The tenant holds only the app measured: the command's whole time is that app's.
    let time = |app: &str| -> Duration {
        std::fs::write(
            root.join("tenants/t/tenant.yaml"),
            format!("apps:\n  - {{ name: {app}, source: {{ path: {app} }} }}\n"),
        )
        .unwrap();
        let mut runs: Vec<Duration> = (0..5)
            .map(|_| {
                let start = Instant::now();
                let out = std::process::Command::new(&flotilla)
                    .current_dir(root)
                    .args(["render", "--config", "flotilla.yaml"])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                start.elapsed()
            })
            .collect();
        runs.sort();
        runs[runs.len() / 2]
    };
    let (plain, chart) = (time("plain"), time("chart"));
    println!(
        "render of {OBJECTS} objects (median of 5, whole `flotilla render` command): plain YAML {:.0} ms; chart {:.0} ms (the stand-in engine, run twice for determinism)",
        plain.as_secs_f64() * 1e3,
        chart.as_secs_f64() * 1e3
    );
}

fn poll_figures() {
    let Some(registry) = Registry::open() else {
        println!("charts bench: docker-registry is not installed; the poll figures are skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let files = FileServer::start(&repo);
    let out = dir.path().join("out");
    const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: x }\n";
    for c in 0..5 {
        let chart = write_chart(
            dir.path(),
            &format!("chart{c}"),
            "1.0.0",
            &[("cm.yaml", CM)],
        );
        publish(&chart, &repo, &files.url());
        registry.push(&publish(&chart, &out, "http://x").unwrap());
    }
    std::fs::create_dir_all(dir.path().join("fleet")).unwrap();
    let config_file = dir.path().join("flotilla.yaml");
    std::fs::write(
        &config_file,
        "cluster: bench\nfleet: { dir: fleet }\nstate_dir: state\n",
    )
    .unwrap();
    let sources = std::sync::Arc::new(Sources::new(&Config::load(&config_file).unwrap()));
    let specs: Vec<ChartSpec> = (0..UNITS)
        .map(|i| ChartSpec {
            repo: check_repo(&if i % 2 == 0 {
                files.url()
            } else {
                registry.url()
            })
            .unwrap(),
            name: format!("chart{}", i % 5),
            version: "^1".parse().unwrap(),
            credentials: None,
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // Every unit's interval (1 s here) has passed when a poll starts, as in the agent when a
    // round of all of them is due: the first unit of a repository reads its listing, the others
    // find it fresh.
    let interval = Duration::from_secs(1);
    let poll = |label: &str| {
        std::thread::sleep(interval + Duration::from_millis(100));
        let (http_before, oci_before) = (files.requests().len(), registry.requests());
        let start = Instant::now();
        runtime.block_on(async {
            let tasks: Vec<_> = specs
                .iter()
                .map(|spec| {
                    let (sources, spec) = (sources.clone(), spec.clone());
                    tokio::spawn(async move { sources.chart(&spec, interval).await })
                })
                .collect();
            for t in tasks {
                t.await.unwrap().unwrap();
            }
        });
        let took = start.elapsed();
        let http: Vec<_> = files.requests()[http_before..].to_vec();
        let not_modified = http.iter().filter(|s| s.status == 304).count();
        println!(
            "{label}: {UNITS} chart units in {:.0} ms; Helm repository: {} requests ({} answered 304); OCI registry: {} requests",
            took.as_secs_f64() * 1e3,
            http.len(),
            not_modified,
            registry.requests() - oci_before
        );
    };
    poll("cold poll (index, tags, manifests and archives)");
    poll("no-change poll");
    poll("no-change poll");
}
