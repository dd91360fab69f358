//! flotilla's hermetic test suite: one binary, one module per area. Tests drive the real
//! `flotilla` binary (`support::Flotilla`) and build their inputs in temporary folders.

// Test helpers block on purpose (they wait for files, processes and servers on their own
// threads); the product's rule against blocking sleeps (clippy.toml) is for `src/`.
#![allow(clippy::disallowed_methods)]

mod support;

/// Tests that each run one shared scenario of `support::<module>` against a fresh test API
/// server, through `support::apply_scenarios::Env`.
macro_rules! env_scenarios {
    ($module:ident: $($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let server = crate::support::kube_api::ApiServer::start();
            let env = crate::support::apply_scenarios::Env::new(server.kubeconfig(), Some(&server)).await;
            env.run(crate::support::$module::$name).await;
        }
    )*};
}

// run --once and diff against the test API server: the scenarios shared with integration/.
mod apply;
// Charts from Helm repositories and OCI registries.
mod charts;
// The command line: help, version, usage errors, exit codes.
mod cli;
// SOPS-encrypted files: decryption, keys per tenant, no plaintext anywhere.
mod secrets;
// The agent config file: the shipped example, and every error reported at once.
mod config;
// The long-running agent: webhooks, sync and status, reload, signals, leader election.
mod daemon;
// A hostile tenant cannot hurt the agent or another tenant: one test per attack.
mod hostile;
// The test Kubernetes API server, through kube-rs: the scenarios shared with integration/.
mod kube_api;
// Verified provenance: SSH and OpenPGP signatures on commits and tags.
mod provenance;
// The status page in headless Chromium: filters, a unit's page, Sync now.
mod page;
// The fleet, catalogs and rendering: render and validate on whole platforms.
mod render;
// Git sources: file://, git daemon and sshd on 127.0.0.1; local directories.
mod source;
