//! Scale figures (a benchmark that prints numbers, not a timed test): 100 tenants of 20 apps of
//! 10 ConfigMaps each, 20,000 objects, one namespace per tenant.
//!
//! - cold: `flotilla run --once` from nothing (onboarding included): time, objects per second,
//!   peak RSS, reads and writes; beside it, a minimal kube-rs client doing nothing but
//!   server-side applies of as many ConfigMaps with the same concurrency (`concurrency` ×
//!   `apply_concurrency`), in the same run, on the same API server;
//! - steady: `run --once` again with nothing changed: time, peak RSS, reads and writes;
//! - the agent (`flotilla run`) with it all: peak RSS, and the webhook → applied latency of one
//!   app while a full round of the rest runs.
//!
//! Reads and writes are counted by the test API server's request log; on a real cluster they are
//! not known here (shown as n/a). Against `FLOTILLA_IT_KUBECONFIG` when set, else the
//! in-process test API server (labelled so; its memory is this process's, not the agent's).
//!
//! Run: `cargo bench --bench scale` (`SCALE_TENANTS=10` for a smaller fleet).

// Benchmarks block on purpose; the rule against blocking sleeps (clippy.toml) is for `src/`.
#![allow(clippy::disallowed_methods)]

#[path = "common.rs"]
mod common;
#[path = "../../tests/support/kube_api/mod.rs"]
#[allow(unused)]
mod kube_api;
use common::*;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use kube::api::{Api, DynamicObject, Patch, PatchParams};

const APPS: usize = 20;
const OBJECTS: usize = 10;
const CONCURRENCY: usize = 4;
const APPLY_CONCURRENCY: usize = 16;
const SECRET: &str = "bench-secret";

fn main() {
    let tenants: usize = std::env::var("SCALE_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
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
    let admin = runtime.block_on(client(&kubeconfig));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let suffix = format!("{:x}", std::process::id());
    let names: Vec<String> = (0..tenants).map(|t| format!("s{t}-{suffix}")).collect();
    let total = tenants * APPS * OBJECTS;

    // The platform; app 0 of the first tenant comes from a Git repository, for the webhook.
    let port = free_port();
    write(root, "secret", SECRET);
    write(root, "api-token", SECRET);
    // The agent's config: `name` (its state and socket take the name too), the cluster, the port.
    let agent_config = |name: &str, kubeconfig: &std::path::Path, port: u16| {
        write(
            root,
            &format!("{name}.yaml"),
            &format!(
                "cluster: bench\nfleet: {{ dir: fleet }}\nstate_dir: {name}-state\nkubeconfig: {}\ninterval: 1h\n\
                 concurrency: {CONCURRENCY}\napply_concurrency: {APPLY_CONCURRENCY}\n\
                 listen: {{ http: \"127.0.0.1:{port}\", socket: {name}.sock, token_file: api-token }}\n\
                 webhooks: {{ github: {{ secret_file: secret }} }}\nlog: {{ level: warn }}\n",
                kubeconfig.display()
            ),
        )
    };
    agent_config("flotilla", &kubeconfig, port);
    write(root, "fleet/clusters/bench/cluster.yaml", "name: bench\n");
    let repo = root.join("app-repo");
    git(root, &["init", "-q", "-b", "main", repo.to_str().unwrap()]);
    for (k, v) in [
        ("user.name", "Bench"),
        ("user.email", "bench@example.com"),
        ("commit.gpgsign", "false"),
    ] {
        git(&repo, &["config", k, v]);
    }
    write(&repo, "cms.yaml", &configmaps(0, 0, "0"));
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "v0"]);
    let url = format!("file://{}", repo.display());
    for (t, name) in names.iter().enumerate() {
        write(
            root,
            &format!("fleet/tenants/{name}.yaml"),
            &format!(
                "name: {name}\nnamespaces: [{name}]\nsource: {{ dir: ../../tenants/{name} }}\nclusters: [{{ name: bench }}]\nlimits: {{ schemes: [file] }}\n"
            ),
        );
        let mut catalog = String::from("apps:\n");
        for a in 0..APPS {
            if t == 0 && a == 0 {
                catalog.push_str(&format!(
                    "  - {{ name: app0, source: {{ url: \"{url}\", ref: {{ branch: main }} }} }}\n"
                ));
                continue;
            }
            catalog.push_str(&format!(
                "  - {{ name: app{a}, source: {{ path: app{a} }} }}\n"
            ));
            write(
                root,
                &format!("tenants/{name}/app{a}/cms.yaml"),
                &configmaps(t, a, "0"),
            );
        }
        write(root, &format!("tenants/{name}/tenant.yaml"), &catalog);
    }

    println!("scale benchmark against {target}");
    println!(
        "{tenants} tenants, {} apps, {total} ConfigMaps; concurrency {CONCURRENCY} × apply_concurrency {APPLY_CONCURRENCY}\n",
        tenants * APPS
    );
    let requests = |s: &Option<kube_api::ApiServer>| -> (String, String) {
        match s {
            Some(s) => {
                let log = s.requests();
                let writes = log.iter().filter(|r| r.is_write()).count();
                let reads = log
                    .iter()
                    .filter(|r| {
                        r.method == "GET" && !r.path.starts_with("/api?") && r.path != "/api"
                    })
                    .count();
                (reads.to_string(), writes.to_string())
            }
            None => ("n/a".into(), "n/a".into()),
        }
    };

    // Cold, then steady.
    if let Some(s) = &server {
        s.clear_requests();
    }
    let (cold, cold_rss, _) = flotilla_once(root);
    let (cold_reads, cold_writes) = requests(&server);
    if let Some(s) = &server {
        s.clear_requests();
    }
    let (steady, steady_rss, _) = flotilla_once(root);
    let (steady_reads, steady_writes) = requests(&server);

    // The reference: server-side applies only, as many objects, the same concurrency.
    let reference = runtime.block_on(reference_applies(&admin, &names, total));

    println!("{:<34}{:>12}{:>12}", "", "cold", "steady");
    println!(
        "{:<34}{:>11.2}s{:>11.2}s",
        "flotilla run --once",
        cold.as_secs_f64(),
        steady.as_secs_f64()
    );
    println!(
        "{:<34}{:>12.0}{:>12}",
        "objects per second",
        total as f64 / cold.as_secs_f64(),
        ""
    );
    println!(
        "{:<34}{:>8.1} MiB{:>8.1} MiB",
        "peak RSS",
        cold_rss as f64 / 1024.0,
        steady_rss as f64 / 1024.0
    );
    println!(
        "{:<34}{cold_reads:>12}{steady_reads:>12}",
        "reads (GET, LIST)"
    );
    println!("{:<34}{cold_writes:>12}{steady_writes:>12}", "writes");
    println!(
        "{:<34}{:>12.0}   ({} applies, {} at once, {:.2}s)\n",
        "reference client: objects/second",
        total as f64 / reference.as_secs_f64(),
        total,
        CONCURRENCY * APPLY_CONCURRENCY,
        reference.as_secs_f64()
    );

    // The agent: its memory with it all, and one app's webhook while a full round runs.
    let mut agent = start(root);
    wait_ready(port, &mut agent);
    let api: Api<DynamicObject> = Api::namespaced_with(
        admin.clone(),
        &names[0],
        &ar("v1", "ConfigMap", "configmaps"),
    );
    let body = serde_json::to_vec(&serde_json::json!({
        "ref": "refs/heads/main", "repository": {"clone_url": url}}))
    .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let sig: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut latencies = Vec::new();
    for round in 1..=3 {
        // A full round of everything starts; then a push of one app.
        let auth = [("Authorization", format!("Bearer {SECRET}"))];
        let (code, _) = http(port, "POST", "/api/v1/sync", &auth, b"{}");
        assert_eq!(code, 202);
        std::thread::sleep(Duration::from_millis(200));
        let v = round.to_string();
        write(&repo, "cms.yaml", &configmaps(0, 0, &v));
        git(&repo, &["commit", "-qam", &v]);
        let started = Instant::now();
        let (code, text) = http(
            port,
            "POST",
            "/hooks/github",
            &[
                ("X-GitHub-Event", "push".into()),
                ("X-Hub-Signature-256", format!("sha256={sig}")),
            ],
            &body,
        );
        assert_eq!(code, 202, "{text}");
        runtime.block_on(async {
            loop {
                if let Ok(o) = api.get("cm-0-0-0").await
                    && o.data["data"]["v"] == v.as_str()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        latencies.push(started.elapsed());
        // Let the full round finish before the next.
        let (code, _) = http(port, "POST", "/api/v1/sync", &auth, b"{\"wait\": true}");
        assert_eq!(code, 200);
    }
    let (rss, peak) = memory(agent.id());
    stop(&mut agent);
    latencies.sort();
    println!("the agent (flotilla run) with {total} objects:");
    println!("  RSS {rss:.1} MiB   peak {peak:.1} MiB");
    println!(
        "  webhook → applied while a full round runs: median {:.0} ms, max {:.0} ms (3 pushes)",
        latencies[1].as_secs_f64() * 1000.0,
        latencies[2].as_secs_f64() * 1000.0
    );

    // The agent cold: its first round applies everything to an empty cluster (a second test API
    // server; on a real cluster the objects exist already, so this is the test server's only).
    match &server {
        Some(_) => {
            let empty = kube_api::ApiServer::start();
            let cold_port = free_port();
            agent_config("flotilla-cold", empty.kubeconfig(), cold_port);
            let started = Instant::now();
            let mut agent = start_with(root, "flotilla-cold.yaml");
            wait_ready(cold_port, &mut agent);
            let took = started.elapsed();
            let (rss, peak) = memory(agent.id());
            stop(&mut agent);
            let writes = empty.requests().iter().filter(|r| r.is_write()).count();
            println!(
                "  cold (its first round on an empty cluster): {:.1}s, {writes} writes, RSS {rss:.1} MiB   peak {peak:.1} MiB",
                took.as_secs_f64()
            );
        }
        None => println!("  cold: measured against the test API server only (an empty cluster)"),
    }
    println!(
        "\ntargets: peak RSS ≤ 48 MiB at 10,000 objects, ≤ 80 MiB at 20,000; cold at the reference's rate"
    );

    // A real cluster keeps what was made: the namespaces and the onboarding inventories.
    if server.is_none() {
        runtime.block_on(async {
            let namespaces: Api<DynamicObject> =
                Api::all_with(admin.clone(), &ar("v1", "Namespace", "namespaces"));
            let parents: Api<DynamicObject> = Api::namespaced_with(
                admin.clone(),
                "kube-system",
                &ar("v1", "ConfigMap", "configmaps"),
            );
            for name in &names {
                let _ = namespaces.delete(name, &Default::default()).await;
                let _ = parents
                    .delete(&format!("flotilla-tenant-{name}"), &Default::default())
                    .await;
            }
        });
    }
}

/// `OBJECTS` ConfigMaps of app `a` of tenant `t`.
fn configmaps(t: usize, a: usize, v: &str) -> String {
    let mut out = String::new();
    for j in 0..OBJECTS {
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: cm-{t}-{a}-{j} }}\ndata: {{ v: \"{v}\", payload: \"{}\" }}\n",
            "x".repeat(200)
        ));
    }
    out
}

/// `total` server-side applies of new ConfigMaps into the tenants' namespaces, as many at once
/// as flotilla sends at most; how long they took.
async fn reference_applies(admin: &kube::Client, namespaces: &[String], total: usize) -> Duration {
    let limit = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY * APPLY_CONCURRENCY));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let ns = namespaces[i % namespaces.len()].clone();
        let api: Api<DynamicObject> =
            Api::namespaced_with(admin.clone(), &ns, &ar("v1", "ConfigMap", "configmaps"));
        tasks.spawn(async move {
            let _permit = permit;
            let name = format!("reference-{i}");
            let body = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name}, "data": {"v": "0", "payload": "x".repeat(200)}});
            api.patch(
                &name,
                &PatchParams::apply("reference").force(),
                &Patch::Apply(&body),
            )
            .await
            .expect("a reference apply");
        });
    }
    while tasks.join_next().await.is_some() {}
    started.elapsed()
}
