//! Apply figures, side by side with `kubectl apply --server-side` on the same objects (a benchmark
//! that prints numbers, not a timed test): 1,000 ConfigMaps over 20 namespaces, one tenant app
//! per namespace.
//!
//! - cold apply: flotilla `run --once` from nothing (onboarding and its 20 namespaces included)
//!   against one `kubectl apply --server-side` of the same 1,000 objects into 20 namespaces made
//!   beforehand;
//! - steady state: the same two commands again with nothing changed, and the write requests
//!   each made;
//! - flotilla's peak RSS.
//!
//! Against the cluster in `FLOTILLA_IT_KUBECONFIG` (what the targets are about); without it,
//! against the in-process test API server, which says little about a real control plane and is
//! labelled so.
//!
//! Run: `FLOTILLA_IT_KUBECONFIG=~/.kube/config cargo bench --bench apply`

// Benchmarks block on purpose; the rule against blocking sleeps (clippy.toml) is for `src/`.
#![allow(clippy::disallowed_methods)]

#[path = "common.rs"]
mod common;
#[path = "../../tests/support/kube_api/mod.rs"]
#[allow(unused)]
mod kube_api;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const NAMESPACES: usize = 20;
const PER_NAMESPACE: usize = 50;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let (kubeconfig, server, target) = match std::env::var_os("FLOTILLA_IT_KUBECONFIG") {
        Some(p) if !p.is_empty() => (
            PathBuf::from(p),
            None,
            "the cluster in FLOTILLA_IT_KUBECONFIG",
        ),
        _ => {
            let server = kube_api::ApiServer::start();
            let path = server.kubeconfig().to_path_buf();
            (
                path,
                Some(server),
                "the in-process TEST API server (not a real cluster)",
            )
        }
    };
    let suffix = format!("{:x}", std::process::id());
    let tenant = format!("bench-{suffix}");
    let ours: Vec<String> = (0..NAMESPACES)
        .map(|i| format!("fl-{suffix}-{i}"))
        .collect();
    let theirs: Vec<String> = (0..NAMESPACES)
        .map(|i| format!("kc-{suffix}-{i}"))
        .collect();

    // The platform: one tenant, 20 namespaces, one app of 50 ConfigMaps per namespace.
    let root = dir.path();
    write(
        root,
        "flotilla.yaml",
        &format!(
            "cluster: bench\nfleet: {{ dir: fleet }}\nstate_dir: state\nkubeconfig: {}\napply_concurrency: 16\nconcurrency: 4\nlog: {{ level: warn }}\n",
            kubeconfig.display()
        ),
    );
    write(root, "fleet/clusters/bench/cluster.yaml", "name: bench\n");
    write(
        root,
        &format!("fleet/tenants/{tenant}.yaml"),
        &format!(
            "name: {tenant}\nnamespaces: [{}]\nsource: {{ dir: ../../tenant }}\nclusters: [{{ name: bench }}]\n",
            ours.join(", ")
        ),
    );
    let mut catalog = String::from("apps:\n");
    for (i, ns) in ours.iter().enumerate() {
        catalog.push_str(&format!(
            "  - {{ name: app{i}, source: {{ path: app{i} }}, namespace: {ns} }}\n"
        ));
        write(
            root,
            &format!("tenant/app{i}/objects.yaml"),
            &configmaps(None),
        );
    }
    write(root, "tenant/tenant.yaml", &catalog);
    // kubectl's copy: the same objects with their namespaces, in one folder.
    for ns in &theirs {
        write(root, &format!("kubectl/{ns}.yaml"), &configmaps(Some(ns)));
    }
    let namespaces: String = theirs
        .iter()
        .map(|ns| format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{ name: {ns} }}\n"))
        .collect();
    write(root, "kubectl-namespaces.yaml", &namespaces);
    // kubectl's discovery needs a real API server (the test server serves kube-rs's discovery
    // requests only), so the side-by-side runs against a real cluster only.
    let real = server.is_none();
    if real {
        kubectl(
            &kubeconfig,
            &["apply", "--server-side", "-f", "kubectl-namespaces.yaml"],
            root,
        );
    }

    println!("apply benchmark against {target}");
    println!(
        "{} ConfigMaps over {NAMESPACES} namespaces, one app per namespace\n",
        NAMESPACES * PER_NAMESPACE
    );

    let (cold, _, _) = flotilla_once(root);
    let kc_cold = real.then(|| {
        kubectl(
            &kubeconfig,
            &["apply", "--server-side", "-f", "kubectl"],
            root,
        )
        .0
    });
    if let Some(s) = &server {
        s.clear_requests();
    }
    let (steady, rss, report) = flotilla_once(root);
    let reported = report
        .lines()
        .filter(|l| l.starts_with("  applied") || l.starts_with("  pruned"))
        .count();
    let flotilla_writes = match &server {
        Some(s) => format!(
            "{} requests",
            s.requests().iter().filter(|r| r.is_write()).count()
        ),
        None => format!("{reported} objects"),
    };
    let kc_steady = real.then(|| {
        kubectl(
            &kubeconfig,
            &["apply", "--server-side", "-v=6", "-f", "kubectl"],
            root,
        )
    });

    let secs =
        |d: Option<Duration>| d.map_or("n/a".to_string(), |d| format!("{:.2}s", d.as_secs_f64()));
    let ratio = |a: Duration, b: Option<Duration>| {
        b.map_or("n/a".to_string(), |b| {
            format!("{:.1}x", b.as_secs_f64() / a.as_secs_f64().max(1e-9))
        })
    };
    let kc_steady_time = kc_steady.as_ref().map(|k| k.0);
    let kc_writes = kc_steady.as_ref().map_or("n/a".to_string(), |k| {
        format!(
            "{} requests",
            k.1.lines().filter(|l| l.contains("PATCH http")).count()
        )
    });
    println!(
        "{:<28}{:>16}{:>16}{:>10}",
        "", "flotilla", "kubectl", "ratio"
    );
    println!(
        "{:<28}{:>16}{:>16}{:>10}",
        "cold apply",
        secs(Some(cold)),
        secs(kc_cold),
        ratio(cold, kc_cold)
    );
    println!(
        "{:<28}{:>16}{:>16}{:>10}",
        "steady-state re-sync",
        secs(Some(steady)),
        secs(kc_steady_time),
        ratio(steady, kc_steady_time)
    );
    println!(
        "{:<28}{:>16}{:>16}",
        "writes in the steady state", flotilla_writes, kc_writes
    );
    println!("{:<28}{:>12} MiB", "flotilla peak RSS", rss / 1024);
    println!(
        "\ntargets: cold >=10x faster, steady state zero writes and >=50x faster than kubectl"
    );

    // Clean up what a real cluster keeps (the test server goes with the process).
    if real {
        let names: Vec<String> = ours
            .iter()
            .chain(&theirs)
            .map(|n| format!("namespace/{n}"))
            .collect();
        let mut args = vec!["delete", "--wait=false", "--ignore-not-found"];
        args.extend(names.iter().map(String::as_str));
        kubectl(&kubeconfig, &args, root);
        let parent = format!("configmap/flotilla-tenant-{tenant}");
        kubectl(
            &kubeconfig,
            &["delete", "-n", "kube-system", "--ignore-not-found", &parent],
            root,
        );
    }
}

fn configmaps(namespace: Option<&str>) -> String {
    let mut out = String::new();
    for j in 0..PER_NAMESPACE {
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{j}\n"
        ));
        if let Some(ns) = namespace {
            out.push_str(&format!("  namespace: {ns}\n"));
        }
        out.push_str(&format!(
            "data:\n  index: \"{j}\"\n  payload: \"{}\"\n",
            "x".repeat(200)
        ));
    }
    out
}

/// Runs kubectl; its wall time and stderr.
fn kubectl(kubeconfig: &Path, args: &[&str], dir: &Path) -> (Duration, String) {
    let start = Instant::now();
    let out = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .current_dir(dir)
        .output()
        .expect("kubectl runs");
    let elapsed = start.elapsed();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (elapsed, String::from_utf8_lossy(&out.stderr).into_owned())
}
