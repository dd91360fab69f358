//! Scenarios against a real Kubernetes API server, selected by `FLOTILLA_IT_KUBECONFIG` (a path
//! to an admin kubeconfig). Without it every test says why it is skipped and passes, so the suite
//! stays runnable anywhere; CI's hermetic equivalents live in `tests/`.
//!
//! Run: `FLOTILLA_IT_KUBECONFIG=$HOME/.kube/config cargo test --test integration -- --nocapture`

// Test helpers block on purpose (they wait for files, processes and servers on their own
// threads); the product's rule against blocking sleeps (clippy.toml) is for `src/`.
#![allow(clippy::disallowed_methods)]

use std::path::PathBuf;
use std::process::Command;

// The helpers and scenarios of `tests/`, shared; parts only the hermetic suite uses stay unused.
#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

/// Tests that each run one shared scenario of `support::<module>` against the cluster in
/// `FLOTILLA_IT_KUBECONFIG` (skipped without it), through `support::apply_scenarios::Env`.
macro_rules! env_scenarios {
    ($module:ident: $($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(path) = crate::kubeconfig(stringify!($name)) else {
                return;
            };
            crate::support::apply_scenarios::Env::new(&path, None)
                .await
                .run(crate::support::$module::$name)
                .await;
        }
    )*};
}

// The API semantics scenarios shared with the test API server in `tests/`.
mod kube_api;
// run --once and diff through the real binary, shared with `tests/apply.rs`.
mod apply;
// The long-running agent through the real binary, shared with `tests/daemon.rs`.
mod daemon;

/// The admin kubeconfig, or `None` (after saying so) when the suite is not selected.
fn kubeconfig(test: &str) -> Option<PathBuf> {
    match std::env::var_os("FLOTILLA_IT_KUBECONFIG") {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ => {
            eprintln!(
                "skipped {test}: FLOTILLA_IT_KUBECONFIG is not set (a path to an admin kubeconfig)"
            );
            None
        }
    }
}

/// The agent accepts the cluster's kubeconfig as its `kubeconfig`.
#[test]
fn validate_accepts_the_cluster_kubeconfig() {
    let Some(kubeconfig) = kubeconfig("validate_accepts_the_cluster_kubeconfig") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The smallest fleet the fleet checks accept: one cluster, no tenants.
    let cluster = dir.path().join("fleet/clusters/it");
    std::fs::create_dir_all(&cluster).unwrap();
    std::fs::write(cluster.join("cluster.yaml"), "name: it\n").unwrap();
    let config = dir.path().join("flotilla.yaml");
    std::fs::write(
        &config,
        format!(
            "cluster: it\nfleet: {{ dir: fleet }}\nkubeconfig: {:?}\n",
            kubeconfig.display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The kube client stack flotilla is built with (rustls + ring, the kubeconfig's auth) reaches the
/// API server and is authorized to read discovery.
#[tokio::test]
async fn the_kube_client_reaches_the_api_server() {
    let Some(path) = kubeconfig("the_kube_client_reaches_the_api_server") else {
        return;
    };
    let kubeconfig =
        kube::config::Kubeconfig::read_from(&path).expect("FLOTILLA_IT_KUBECONFIG is a kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("the kubeconfig has a usable current context");
    let client = kube::Client::try_from(config).expect("a client");
    let version = client
        .apiserver_version()
        .await
        .expect("GET /version answers");
    assert!(!version.git_version.is_empty(), "{version:?}");
    let core = client
        .list_core_api_versions()
        .await
        .expect("GET /api answers");
    assert!(core.versions.contains(&"v1".to_string()), "{core:?}");
}
