//! An in-process Kubernetes API server for the hermetic tests: plain HTTP on 127.0.0.1 and an
//! ephemeral port, reached through a generated kubeconfig, following the documented semantics of
//! the real API for what flotilla touches:
//!
//! - discovery of the built-in kinds and of CRDs created at run time (`Established` at once);
//! - create, get, list (label and field selectors, `limit`/`continue` over a consistent
//!   snapshot), update, merge and strategic patches, delete (finalizers, namespace and CRD
//!   cascades), watch; `resourceVersion`, `generation`, `uid`, `creationTimestamp`;
//! - server-side apply with managedFields, removal of dropped fields, conflicts and `force`,
//!   `dryRun=All`, immutable fields refused with 422;
//! - bearer tokens (and TokenRequest for ServiceAccounts), impersonation checked against the
//!   `impersonate` verb, RBAC over the stored roles and bindings with the bootstrap roles
//!   (`cluster-admin`, aggregated `admin`/`edit`/`view`) and the escalation check;
//! - a request log for assertions such as "no writes" or "every write impersonated".
//!
//! Not modelled (documented in ARCHITECTURE.md): TLS, admission webhooks, garbage collection by
//! ownerReferences, the OpenAPI schemas of built-in kinds (unknown fields are kept), graceful
//! namespace termination (a deleted namespace and its contents go at once, unless finalizers hold
//! it Terminating), controllers (no pods,
//! no status; tests write `/status` themselves).

mod checks;
mod errors;
mod fields;
mod rbac;
mod resources;
mod server;
mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use server::Logged;

use server::State;

pub struct ApiServer {
    state: Arc<State>,
    addr: SocketAddr,
    admin_token: String,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The admin's user name, in `system:masters` as a kubeadm admin is.
pub const ADMIN: &str = "kubernetes-admin";

impl ApiServer {
    /// Starts a server with a fresh cluster: the system namespaces, the bootstrap RBAC policy, and
    /// an admin token.
    pub fn start() -> ApiServer {
        let state = Arc::new(State::new());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener.local_addr().expect("a bound address");
        let admin_token = format!("admin-{}-{}", std::process::id(), addr.port());
        state.tokens.lock().unwrap().insert(
            admin_token.clone(),
            rbac::User::new(ADMIN, &["system:masters"]),
        );
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let shared = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("test-apiserver".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("a listener");
                    loop {
                        tokio::select! {
                            _ = &mut rx => break,
                            accepted = listener.accept() => {
                                let Ok((stream, _)) = accepted else { continue };
                                let state = Arc::clone(&shared);
                                tokio::spawn(async move {
                                    let service = hyper::service::service_fn(move |req| {
                                        server::serve(Arc::clone(&state), req)
                                    });
                                    let _ = hyper::server::conn::http1::Builder::new()
                                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                        .await;
                                });
                            }
                        }
                    }
                });
                // Dropping the runtime cancels open connections and watches.
            })
            .expect("the server thread starts");
        let dir = tempfile::tempdir().expect("a temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        let server = ApiServer {
            state,
            addr,
            admin_token,
            dir,
            kubeconfig,
            shutdown: Some(tx),
            thread: Some(thread),
        };
        server.write_kubeconfig(&server.kubeconfig, &server.admin_token);
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for the admin (`system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Writes a kubeconfig that authenticates with `token`.
    pub fn write_kubeconfig(&self, path: &Path, token: &str) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\nusers:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: user\ncurrent-context: test\n",
            self.url()
        );
        std::fs::write(path, text).expect("write a kubeconfig");
    }

    /// A kubeconfig for a new user `name` in `groups` (plus `system:authenticated`).
    pub fn user_kubeconfig(&self, name: &str, groups: &[&str]) -> PathBuf {
        let token = format!("user-{name}-{}", self.addr.port()).replace([':', '/'], "-");
        self.state
            .tokens
            .lock()
            .unwrap()
            .insert(token.clone(), rbac::User::new(name, groups));
        let path = self.dir.path().join(format!("kubeconfig-{}", token));
        self.write_kubeconfig(&path, &token);
        path
    }

    /// A handle on the request log that can outlive this borrow (moved into a scenario).
    pub fn log(&self) -> RequestLog {
        RequestLog(self.state.clone())
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn clear_requests(&self) {
        self.state.log.lock().unwrap().clear();
    }

    /// The current resource version of the whole store (bumped by every stored write).
    pub fn resource_version(&self) -> u64 {
        self.state.store.lock().unwrap().rv
    }
}

/// The request log of a running server.
#[derive(Clone)]
pub struct RequestLog(Arc<State>);

impl RequestLog {
    pub fn requests(&self) -> Vec<Logged> {
        self.0.log.lock().unwrap().clone()
    }
    /// Lets `token` authenticate as `name` in `groups` (plus `system:authenticated`).
    pub fn add_user(&self, token: &str, name: &str, groups: &[&str]) {
        self.0
            .tokens
            .lock()
            .unwrap()
            .insert(token.to_string(), rbac::User::new(name, groups));
    }
    pub fn clear(&self) {
        self.0.log.lock().unwrap().clear();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a Deployment controller does, for tests and benchmarks on this server (which runs no
/// controllers): once a Deployment's generation is new, its status says every replica is
/// updated, ready and available. Runs until its task is dropped.
pub async fn roll_out_deployments(admin: kube::Client) {
    use kube::api::{Api, DynamicObject, Patch, PatchParams};
    let ar = kube::discovery::ApiResource {
        group: "apps".into(),
        version: "v1".into(),
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        plural: "deployments".into(),
    };
    let api: Api<DynamicObject> = Api::all_with(admin.clone(), &ar);
    loop {
        if let Ok(list) = api.list(&Default::default()).await {
            for d in list.items {
                let v = serde_json::to_value(&d).unwrap();
                let generation = v["metadata"]["generation"].as_i64().unwrap_or(0);
                if v["status"]["observedGeneration"].as_i64() == Some(generation) {
                    continue;
                }
                let replicas = v["spec"]["replicas"].as_i64().unwrap_or(1);
                let ns = v["metadata"]["namespace"].as_str().unwrap_or_default();
                let name = v["metadata"]["name"].as_str().unwrap_or_default();
                let status = serde_json::json!({"status": {"observedGeneration": generation,
                    "replicas": replicas, "updatedReplicas": replicas,
                    "readyReplicas": replicas, "availableReplicas": replicas}});
                let _ = Api::<DynamicObject>::namespaced_with(admin.clone(), ns, &ar)
                    .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                    .await;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// What the Job controller does, for tests on this server: a Job with no outcome yet completes
/// (or fails, when its pod template is annotated `flotilla.test/outcome: fail`) a moment after
/// it is created. Runs until its task is dropped.
pub async fn run_jobs(admin: kube::Client) {
    use kube::api::{Api, DynamicObject, Patch, PatchParams};
    let ar = kube::discovery::ApiResource {
        group: "batch".into(),
        version: "v1".into(),
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        plural: "jobs".into(),
    };
    let api: Api<DynamicObject> = Api::all_with(admin.clone(), &ar);
    loop {
        if let Ok(list) = api.list(&Default::default()).await {
            for j in list.items {
                let v = serde_json::to_value(&j).unwrap();
                if v["status"]["conditions"].is_array() {
                    continue;
                }
                let fail = v["spec"]["template"]["metadata"]["annotations"]["flotilla.test/outcome"]
                    == "fail";
                let (kind, reason) = if fail {
                    ("Failed", "BackoffLimitExceeded")
                } else {
                    ("Complete", "Completed")
                };
                let ns = v["metadata"]["namespace"].as_str().unwrap_or_default();
                let name = v["metadata"]["name"].as_str().unwrap_or_default();
                let status = serde_json::json!({"status": {"conditions": [
                    {"type": kind, "status": "True", "reason": reason}]}});
                let _ = Api::<DynamicObject>::namespaced_with(admin.clone(), ns, &ar)
                    .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                    .await;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
