//! Daemon figures (a benchmark that prints numbers, not a timed test), all through the real
//! `flotilla run` against the in-process test API server:
//!
//! - webhook → applied: from sending a GitHub push webhook for an app repo to the changed
//!   ConfigMap being readable from the API server, over 20 pushes; the fetch's own share (from
//!   `/metrics`) is printed beside it (target: under 1 s plus the fetch);
//! - idle RSS of the agent with the example fleet, after its first sync;
//! - RSS of the agent managing 10,000 objects (20 apps of 500 ConfigMaps; target: under 64 MiB).
//!
//! The test server runs in this process, so its memory is not in the agent's figures; it says
//! nothing about a real control plane's latency.
//!
//! Run: `cargo bench --bench daemon`

// Benchmarks block on purpose; the rule against blocking sleeps (clippy.toml) is for `src/`.
#![allow(clippy::disallowed_methods)]

#[path = "common.rs"]
mod common;
#[path = "../../tests/support/kube_api/mod.rs"]
#[allow(unused)]
mod kube_api;
use common::*;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use kube::api::{Api, DynamicObject};

const SECRET: &str = "bench-secret";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = kube_api::ApiServer::start();
    let admin = runtime.block_on(client(server.kubeconfig()));
    runtime.spawn(kube_api::roll_out_deployments(admin.clone()));
    println!("against the in-process TEST API server (not a real cluster)\n");

    // BENCH_ONLY=latency|idle|objects runs one part.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "latency" {
        webhook_latency(&runtime, &server, &admin);
    }
    if only.is_empty() || only == "idle" {
        idle_example_fleet(&server);
    }
    if only.is_empty() || only == "objects" {
        ten_thousand_objects(&server);
    }
}

fn webhook_latency(
    rt: &tokio::runtime::Runtime,
    server: &kube_api::ApiServer,
    admin: &kube::Client,
) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let repo = root.join("app-repo");
    git(root, &["init", "-q", "-b", "main", repo.to_str().unwrap()]);
    for (k, v) in [
        ("user.name", "Bench"),
        ("user.email", "bench@example.com"),
        ("commit.gpgsign", "false"),
    ] {
        git(&repo, &["config", k, v]);
    }
    write(&repo, "cm.yaml", &cm("latency", "0"));
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "v0"]);
    let url = format!("file://{}", repo.display());
    let port = free_port();
    config(root, server.kubeconfig(), port, "fleet: { dir: fleet }\n");
    write(root, "fleet/clusters/bench/cluster.yaml", "name: bench\n");
    write(
        root,
        "fleet/tenants/lat.yaml",
        "name: lat\nnamespaces: [lat]\nsource: { dir: ../../tenant }\nclusters: [{ name: bench }]\nlimits: { schemes: [file] }\n",
    );
    write(
        root,
        "tenant/tenant.yaml",
        &format!(
            "apps:\n  - {{ name: app, enabled: true, source: {{ url: \"{url}\", ref: {{ branch: main }} }} }}\n"
        ),
    );
    let mut agent = start(root);
    wait_ready(port, &mut agent);

    let api: Api<DynamicObject> =
        Api::namespaced_with(admin.clone(), "lat", &ar("v1", "ConfigMap", "configmaps"));
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
    let fetch_sum = |port| metric(port, "flotilla_fetch_duration_seconds_sum", &url);
    let mut total = Vec::new();
    let mut fetches = Vec::new();
    for i in 1..=20 {
        let v = i.to_string();
        write(&repo, "cm.yaml", &cm("latency", &v));
        git(&repo, &["commit", "-qam", &v]);
        let before = fetch_sum(port);
        let started = Instant::now();
        let status = http(
            port,
            "POST",
            "/hooks/github",
            &[
                ("X-GitHub-Event", "push".into()),
                ("X-Hub-Signature-256", format!("sha256={sig}")),
            ],
            &body,
        );
        assert_eq!(status.0, 202, "{status:?}");
        rt.block_on(async {
            loop {
                if let Ok(o) = api.get("latency").await
                    && o.data["data"]["v"] == v.as_str()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        total.push(started.elapsed());
        fetches.push(Duration::from_secs_f64((fetch_sum(port) - before).max(0.0)));
    }
    stop(&mut agent);
    total.sort();
    fetches.sort();
    println!("webhook → applied (20 pushes of a file:// app repo):");
    println!(
        "  median {:>7.1} ms   max {:>7.1} ms   (of which the fetch: median {:.1} ms, max {:.1} ms)\n",
        ms(total[total.len() / 2]),
        ms(*total.last().unwrap()),
        ms(fetches[fetches.len() / 2]),
        ms(*fetches.last().unwrap()),
    );
}

fn idle_example_fleet(server: &kube_api::ApiServer) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
    for part in ["fleet", "tenants", "keys"] {
        let status = Command::new("cp")
            .args([
                "-r",
                examples.join(part).to_str().unwrap(),
                root.to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(status.success());
    }
    let port = free_port();
    config(root, server.kubeconfig(), port, "fleet: { dir: fleet }\n");
    let text = std::fs::read_to_string(root.join("flotilla.yaml")).unwrap();
    write(
        root,
        "flotilla.yaml",
        &format!(
            "{}decryption:\n  ai-key: {{ age_key_file: keys/ai-test.agekey, test_key: true }}\n",
            text.replace("cluster: bench", "cluster: dev")
        ),
    );
    let mut agent = start(root);
    wait_ready(port, &mut agent);
    std::thread::sleep(Duration::from_secs(3));
    let (rss, peak) = memory(agent.id());
    stop(&mut agent);
    println!("idle, example fleet for dev (19 units), after the first sync:");
    println!("  RSS {rss:.1} MiB   peak {peak:.1} MiB\n");
}

fn ten_thousand_objects(server: &kube_api::ApiServer) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let port = free_port();
    config(root, server.kubeconfig(), port, "fleet: { dir: fleet }\n");
    write(root, "fleet/clusters/bench/cluster.yaml", "name: bench\n");
    let namespaces: Vec<String> = (0..20).map(|i| format!("big-{i}")).collect();
    write(
        root,
        "fleet/tenants/big.yaml",
        &format!(
            "name: big\nnamespaces: [{}]\nsource: {{ dir: ../../tenant }}\nclusters: [{{ name: bench }}]\n",
            namespaces.join(", ")
        ),
    );
    let mut catalog = String::from("apps:\n");
    for (i, ns) in namespaces.iter().enumerate() {
        catalog.push_str(&format!(
            "  - {{ name: app{i}, enabled: true, source: {{ path: app{i} }}, namespace: {ns} }}\n"
        ));
        let mut docs = String::new();
        for j in 0..500 {
            docs.push_str(&format!(
                "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: cm-{j} }}\ndata: {{ k: \"value-{i}-{j}\", other: \"some text that makes the object a little larger\" }}\n"
            ));
        }
        write(root, &format!("tenant/app{i}/cms.yaml"), &docs);
    }
    write(root, "tenant/tenant.yaml", &catalog);
    let started = Instant::now();
    let mut agent = start(root);
    wait_ready(port, &mut agent);
    let first = started.elapsed();
    let (_, peak_first) = memory(agent.id());
    // A second full round, with nothing changed.
    let before = Instant::now();
    let sync = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["sync", "--wait", "--config", "flotilla.yaml"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        sync.status.success(),
        "{}",
        String::from_utf8_lossy(&sync.stdout)
    );
    let steady = before.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let (rss, peak) = memory(agent.id());
    stop(&mut agent);
    println!("10,000 objects (20 apps of 500 ConfigMaps):");
    println!(
        "  first sync {:.1} s (peak RSS {peak_first:.1} MiB); an unchanged full round {:.2} s",
        first.as_secs_f64(),
        steady.as_secs_f64()
    );
    println!("  RSS after {rss:.1} MiB   peak {peak:.1} MiB   (target: under 64 MiB)");
}

// === helpers ===

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn cm(name: &str, v: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: {name} }}\ndata: {{ v: \"{v}\" }}\n"
    )
}

fn config(root: &Path, kubeconfig: &Path, port: u16, fleet: &str) -> String {
    write(root, "secret", SECRET);
    write(root, "api-token", SECRET);
    let text = format!(
        "cluster: bench\n{fleet}state_dir: state\nkubeconfig: {}\ninterval: 1h\n\
         listen: {{ http: \"127.0.0.1:{port}\", socket: agent.sock, token_file: api-token }}\n\
         webhooks: {{ github: {{ secret_file: secret }} }}\nlog: {{ level: warn }}\n",
        kubeconfig.display()
    );
    write(root, "flotilla.yaml", &text);
    text
}

fn metric(port: u16, name: &str, label: &str) -> f64 {
    let auth = [("Authorization", format!("Bearer {SECRET}"))];
    let (_, text) = http(port, "GET", "/metrics", &auth, b"");
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
