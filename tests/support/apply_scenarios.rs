//! End-to-end scenarios of `flotilla run --once` and `flotilla diff` through the real binary,
//! shared by `tests/apply.rs` (the test API server, which adds request-log checks) and
//! `integration/apply.rs` (a real cluster, where the same facts are checked on the objects:
//! resourceVersions and uids).
//!
//! Names are unique per run (tenants, namespaces, cluster-scoped objects carry the run's suffix)
//! and everything a scenario creates is deleted afterwards, even when it fails.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::cluster::{Cluster, resource};
use super::kube_api::{ApiServer, Logged, RequestLog};
use super::{Dir, Run, flotilla};

/// A platform folder wired to a cluster, and the cluster.
pub struct Env {
    pub cluster: Arc<Cluster>,
    pub dir: Dir,
    /// The test server's request log; `None` on a real cluster.
    pub log: Option<RequestLog>,
    tenants: std::sync::Mutex<Vec<(String, Vec<String>)>>,
    controller: Option<tokio::task::JoinHandle<()>>,
    /// The infra units the scenario applied (their inventories are deleted afterwards).
    infra: std::sync::Mutex<Vec<String>>,
}

impl Env {
    pub async fn new(kubeconfig: &Path, server: Option<&ApiServer>) -> Env {
        let cluster = Arc::new(Cluster::connect(kubeconfig).await);
        let dir = Dir::new();
        dir.write(
            "flotilla.yaml",
            format!(
                "cluster: dev\nfleet: {{ dir: fleet }}\nstate_dir: .state\nkubeconfig: {}\n",
                kubeconfig.display()
            ),
        );
        dir.write(
            "fleet/clusters/dev/cluster.yaml",
            "name: dev\nlabels: { env: dev }\nvars: { domain: dev.example.com }\n",
        );
        // The test server runs no controllers: a stand-in rolls Deployments out.
        let controller = server
            .map(|_| tokio::spawn(super::kube_api::roll_out_deployments(cluster.admin.clone())));
        Env {
            cluster,
            dir,
            log: server.map(ApiServer::log),
            tenants: Default::default(),
            controller,
            infra: Default::default(),
        }
    }

    /// `base` made unique to this run.
    pub fn name(&self, base: &str) -> String {
        self.cluster.name(base)
    }

    /// Adds a tenant (its name and namespaces are used as given: pass names from [`Env::name`])
    /// with this `tenant.yaml` and extra fleet fields; its namespaces are deleted afterwards.
    pub fn tenant(&self, name: &str, namespaces: &[&str], extra: &str, catalog: &str) {
        self.dir.write(
            &format!("fleet/tenants/{name}.yaml"),
            format!(
                "name: {name}\nnamespaces: [{}]\nsource: {{ dir: ../../tenants/{name} }}\nclusters: [{{ name: dev }}]\n{extra}",
                namespaces.join(", ")
            ),
        );
        self.dir
            .write(&format!("tenants/{name}/tenant.yaml"), catalog);
        self.tenants.lock().unwrap().push((
            name.to_string(),
            namespaces.iter().map(|s| s.to_string()).collect(),
        ));
    }

    /// An infra unit the scenario applies (`infra/<name>`): its inventory is deleted afterwards.
    pub fn track_infra(&self, unit: &str) {
        self.infra.lock().unwrap().push(unit.to_string());
    }

    /// Writes a file below the platform folder.
    pub fn write(&self, rel: &str, contents: &str) -> PathBuf {
        self.dir.write(rel, contents)
    }

    /// Runs `flotilla <args> --config flotilla.yaml`.
    pub async fn flotilla(&self, args: &[&str]) -> Run {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--config".into(), "flotilla.yaml".into()]);
        let dir = self.dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            flotilla(&dir, &args)
        })
        .await
        .unwrap()
    }

    /// `run --once`, which must exit 0.
    pub async fn sync(&self) -> Run {
        let run = self.flotilla(&["run", "--once"]).await;
        assert_eq!(run.code, 0, "{run:?}");
        run
    }

    /// The live object, or `None`.
    pub async fn get(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let ar = resource(api_version, kind, &plural(kind));
        let api: Api<DynamicObject> = match ns {
            Some(ns) => Api::namespaced_with(self.cluster.admin.clone(), ns, &ar),
            None => Api::all_with(self.cluster.admin.clone(), &ar),
        };
        api.get_opt(name)
            .await
            .expect("a get")
            .map(|o| serde_json::to_value(o).unwrap())
    }

    pub async fn configmap(&self, ns: &str, name: &str) -> Option<Value> {
        self.get("v1", "ConfigMap", Some(ns), name).await
    }

    /// Writes as another field manager with an Update (what `kubectl edit` does).
    pub async fn edit(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        name: &str,
        change: impl Fn(&mut Value),
    ) {
        let ar = resource(api_version, kind, &plural(kind));
        let api: Api<DynamicObject> = Api::namespaced_with(self.cluster.admin.clone(), ns, &ar);
        let params = PostParams {
            field_manager: Some("kubectl-edit".into()),
            ..Default::default()
        };
        // As kubectl does: read, change, replace; again if a controller wrote in between (409).
        for attempt in 0.. {
            let mut live = serde_json::to_value(api.get(name).await.unwrap()).unwrap();
            change(&mut live);
            let object: DynamicObject = serde_json::from_value(live).unwrap();
            match api.replace(name, &params, &object).await {
                Ok(_) => return,
                Err(kube::Error::Api(e)) if e.code == 409 && attempt < 5 => {}
                Err(e) => panic!("the edit: {e}"),
            }
        }
    }

    /// Creates (or updates) an object as the admin, deleted afterwards if cluster-scoped.
    pub async fn admin_apply(&self, body: Value) {
        let api_version = body["apiVersion"].as_str().unwrap().to_string();
        let kind = body["kind"].as_str().unwrap().to_string();
        let name = body["metadata"]["name"].as_str().unwrap().to_string();
        let ar = resource(&api_version, &kind, &plural(&kind));
        let api: Api<DynamicObject> = match body["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(self.cluster.admin.clone(), ns, &ar),
            None => {
                self.cluster.track(ar.clone(), &name);
                Api::all_with(self.cluster.admin.clone(), &ar)
            }
        };
        api.patch(
            &name,
            &PatchParams::apply("test-admin").force(),
            &Patch::Apply(&body),
        )
        .await
        .expect("an admin apply");
    }

    /// The test server's write requests (not dry runs) since the log was last cleared.
    pub fn writes(&self) -> Option<Vec<Logged>> {
        self.log
            .as_ref()
            .map(|l| l.requests().into_iter().filter(Logged::is_write).collect())
    }

    pub fn clear_log(&self) {
        if let Some(l) = &self.log {
            l.clear();
        }
    }

    /// Runs `scenario`, then deletes what it made (tenant namespaces and their onboarding
    /// inventories, tracked cluster-scoped objects), then re-raises its panic if it failed.
    pub async fn run<F, Fut>(self, scenario: F)
    where
        F: FnOnce(Arc<Env>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let env = Arc::new(self);
        let outcome = tokio::spawn(scenario(Arc::clone(&env))).await;
        env.cleanup().await;
        if let Err(e) = outcome {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
            panic!("the scenario was cancelled: {e}");
        }
    }

    async fn cleanup(&self) {
        if let Some(c) = &self.controller {
            c.abort();
        }
        let tenants = self.tenants.lock().unwrap().clone();
        let namespaces: Api<DynamicObject> = Api::all_with(
            self.cluster.admin.clone(),
            &resource("v1", "Namespace", "namespaces"),
        );
        let parents: Api<DynamicObject> = Api::namespaced_with(
            self.cluster.admin.clone(),
            "kube-system",
            &resource("v1", "ConfigMap", "configmaps"),
        );
        for (tenant, list) in tenants {
            for ns in list {
                let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
            }
            let _ = parents
                .delete(
                    &format!("flotilla-tenant-{tenant}"),
                    &DeleteParams::default(),
                )
                .await;
        }
        let infra = self.infra.lock().unwrap().clone();
        for unit in infra {
            let parent = format!("flotilla-{}", unit.replace('/', "-"));
            let _ = parents.delete(&parent, &DeleteParams::default()).await;
        }
        self.cluster.cleanup().await;
    }
}

/// The plural of the kinds these scenarios use.
pub fn plural(kind: &str) -> String {
    match kind {
        "PriorityClass" => "priorityclasses".into(),
        "NetworkPolicy" => "networkpolicies".into(),
        "Ingress" => "ingresses".into(),
        k => format!("{}s", k.to_lowercase()),
    }
}

pub fn rv(object: &Value) -> String {
    object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

// === scenarios ===

/// The shipped example fleet, applied for `dev`: the infra unit with the agent's identity, each
/// tenant onboarded, every enabled app applied as its tenant; a second run changes nothing.
pub async fn example_fleet_applies_for_dev(env: Arc<Env>) {
    let examples = super::repo_root().join("config/examples");
    copy(&examples.join("fleet"), &env.dir.path().join("fleet"));
    copy(&examples.join("tenants"), &env.dir.path().join("tenants"));
    // The example's SOPS test key, as its agent config names it.
    copy(&examples.join("keys"), &env.dir.path().join("keys"));
    let config = std::fs::read_to_string(env.dir.path().join("flotilla.yaml")).unwrap();
    env.write(
        "flotilla.yaml",
        &format!("{config}decryption:\n  ai-key: {{ age_key_file: keys/ai-test.agekey, test_key: true }}\n"),
    );
    // The scenario is about flotilla, not the apps' images: on a real cluster every Deployment
    // runs the pause image, so that `dependsOn` health (spark-history before airflow) does not
    // depend on pulling and starting the example's real software.
    let path = env
        .dir
        .path()
        .join("tenants/bigdata/apps/spark-history/spark-history.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("docker.io/apache/spark:3.5.3", "registry.k8s.io/pause:3.10"),
    )
    .unwrap();
    for (tenant, namespaces) in [
        ("ai", vec!["ai", "ai-jobs"]),
        ("bigdata", vec!["bigdata"]),
        ("security", vec!["security"]),
    ] {
        env.tenants.lock().unwrap().push((
            tenant.into(),
            namespaces.into_iter().map(String::from).collect(),
        ));
    }
    let pcs = resource("scheduling.k8s.io/v1", "PriorityClass", "priorityclasses");
    env.cluster.track(pcs, "tenant-batch");
    env.track_infra("infra/controllers");
    env.track_infra("infra/configs");

    let first = env.sync().await;
    assert!(first.stdout.contains("cluster infra"), "{first:?}");
    assert!(
        first.stdout.contains("tenant ai, app jupyter @ "),
        "{first:?}"
    );
    let jupyter = env
        .get("apps/v1", "Deployment", Some("ai"), "jupyter")
        .await
        .expect("jupyter applied");
    assert_eq!(jupyter["metadata"]["labels"]["flotilla.dev/tenant"], "ai");
    // The Secret kept encrypted in Git, applied decrypted.
    let secret = env
        .get("v1", "Secret", Some("ai"), "model-registry")
        .await
        .expect("the encrypted Secret applied");
    let token = match secret["data"]["token"].as_str() {
        Some(b64) => {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            String::from_utf8(bytes).unwrap()
        }
        None => secret["stringData"]["token"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    };
    assert_eq!(token, "example-token-not-a-real-secret");
    let sa = env
        .get("v1", "ServiceAccount", Some("ai"), "flotilla-tenant")
        .await
        .expect("the tenant's ServiceAccount");
    assert_eq!(sa["metadata"]["labels"]["flotilla.dev/tenant"], "ai");
    let binding = env
        .get(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            Some("ai-jobs"),
            "flotilla-tenant",
        )
        .await
        .expect("a RoleBinding in each namespace");
    assert_eq!(binding["roleRef"]["name"], "admin");
    // The platform's settings on every tenant namespace: Pod Security labels, a quota (bigdata
    // its own), a limit range.
    let security = env
        .get("v1", "Namespace", None, "security")
        .await
        .expect("onboarded");
    assert_eq!(
        security["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "baseline"
    );
    for (ns, pods) in [("security", "200"), ("bigdata", "100")] {
        let quota = env
            .get("v1", "ResourceQuota", Some(ns), "flotilla-tenant")
            .await
            .unwrap_or_else(|| panic!("{ns}'s quota"));
        assert_eq!(quota["spec"]["hard"]["pods"], pods, "{quota}");
    }
    assert!(
        env.get("v1", "LimitRange", Some("ai-jobs"), "flotilla-tenant")
            .await
            .is_some()
    );
    assert!(
        env.get(
            "scheduling.k8s.io/v1",
            "PriorityClass",
            None,
            "tenant-batch"
        )
        .await
        .is_some()
    );
    // The inventory: an ApplySet parent per unit, members labelled with its id.
    let parent = env
        .configmap("ai", "flotilla-jupyter")
        .await
        .expect("jupyter's inventory");
    let id = parent["metadata"]["labels"]["applyset.kubernetes.io/id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        jupyter["metadata"]["labels"]["applyset.kubernetes.io/part-of"],
        id.as_str()
    );
    assert!(
        parent["metadata"]["annotations"]["applyset.kubernetes.io/tooling"]
            .as_str()
            .unwrap()
            .starts_with("flotilla/")
    );
    assert_eq!(
        parent["metadata"]["annotations"]["applyset.kubernetes.io/contains-group-kinds"],
        "Deployment.apps,Service"
    );

    // On a real cluster controllers keep writing the Deployment's status; its generation and the
    // resourceVersions of objects no controller touches show that flotilla sent nothing.
    let service = env
        .get("v1", "Service", Some("ai"), "jupyter")
        .await
        .unwrap();
    let dashboard = env.configmap("security", "audit-dashboard").await.unwrap();
    env.clear_log();
    let second = env.sync().await;
    assert!(!second.stdout.contains("  applied"), "{second:?}");
    let after = env
        .get("apps/v1", "Deployment", Some("ai"), "jupyter")
        .await
        .unwrap();
    assert_eq!(
        after["metadata"]["generation"],
        jupyter["metadata"]["generation"]
    );
    let service_after = env
        .get("v1", "Service", Some("ai"), "jupyter")
        .await
        .unwrap();
    assert_eq!(rv(&service_after), rv(&service));
    let parent_after = env.configmap("ai", "flotilla-jupyter").await.unwrap();
    assert_eq!(rv(&parent_after), rv(&parent));
    let dashboard_after = env.configmap("security", "audit-dashboard").await.unwrap();
    assert_eq!(rv(&dashboard_after), rv(&dashboard));
    if let Some(writes) = env.writes() {
        // The stand-in Deployment controller may still be writing a status (as a real one
        // would); flotilla writes nothing.
        let ours: Vec<_> = writes
            .iter()
            .filter(|w| !w.path.contains("/status"))
            .collect();
        assert!(ours.is_empty(), "steady state wrote: {ours:#?}");
    }
}

/// A tenant `shop-<run>` owning namespace of the same name, with apps written by the caller.
fn shop(env: &Env, catalog: &str) -> String {
    let t = env.name("shop");
    env.tenant(&t, &[&t], "", catalog);
    t
}

/// Writes the YAML of `value` (JSON is YAML) to `rel` below the platform.
/// A CustomResourceDefinition of `kind` in `group` (`spec.size`, an integer), deleted afterwards.
fn crd(env: &Env, group: &str, scope: &str, kind: &str) -> Value {
    let singular = kind.to_lowercase();
    let plural = format!("{singular}s");
    let name = format!("{plural}.{group}");
    env.cluster.track(
        resource(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
        ),
        &name,
    );
    json!({
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": name},
    "spec": {"group": group, "scope": scope,
        "names": {"plural": plural, "singular": singular, "kind": kind, "listKind": format!("{kind}List")},
        "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
            "type": "object", "properties": {"spec": {"type": "object",
                "properties": {"size": {"type": "integer"}}}}}}}]}})
}

fn manifest(env: &Env, rel: &str, value: Value) {
    env.write(rel, &serde_json::to_string_pretty(&value).unwrap());
}

fn cm(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})
}

fn deployment(name: &str, replicas: i64, selector: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": selector}},
            "template": {"metadata": {"labels": {"app": selector}},
                "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}]}}}})
}

/// A changed value re-applies only the object it lands in; an app removed from `tenant.yaml` is
/// pruned with its inventory.
pub async fn a_value_change_updates_only_changed_objects_and_a_removed_app_is_pruned(
    env: Arc<Env>,
) {
    let catalog = |color: &str, extra: bool| {
        let mut c = format!(
            "apps:\n  - {{ name: web, source: {{ path: web }}, values: {{ color: {color} }} }}\n"
        );
        if extra {
            c.push_str("  - { name: extra, source: { path: extra } }\n");
        }
        c
    };
    let t = shop(&env, &catalog("blue", true));
    let dir = format!("tenants/{t}");
    manifest(
        &env,
        &format!("{dir}/web/a.yaml"),
        cm("a", json!({"color": "${values.color}"})),
    );
    manifest(
        &env,
        &format!("{dir}/web/b.yaml"),
        cm("b", json!({"fixed": "1"})),
    );
    manifest(
        &env,
        &format!("{dir}/extra/c.yaml"),
        cm("c", json!({"x": "1"})),
    );
    env.sync().await;
    let (a0, b0) = (
        env.configmap(&t, "a").await.unwrap(),
        env.configmap(&t, "b").await.unwrap(),
    );
    assert!(env.configmap(&t, "c").await.is_some());

    env.write(&format!("{dir}/tenant.yaml"), &catalog("green", true));
    env.clear_log();
    let run = env.sync().await;
    assert!(
        run.stdout
            .contains(&format!("applied ConfigMap {t}/a (changed in Git)")),
        "{run:?}"
    );
    let (a1, b1) = (
        env.configmap(&t, "a").await.unwrap(),
        env.configmap(&t, "b").await.unwrap(),
    );
    assert_eq!(a1["data"]["color"], "green");
    assert_ne!(rv(&a1), rv(&a0));
    assert_eq!(rv(&b1), rv(&b0), "b did not change and was not written");
    if let Some(writes) = env.writes() {
        let paths: Vec<&str> = writes
            .iter()
            .map(|w| w.path.split('?').next().unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                format!("/api/v1/namespaces/{t}/configmaps/a"),
                format!("/api/v1/namespaces/{t}/configmaps/flotilla-web"),
            ],
            "only the changed object and its inventory are written"
        );
    }

    env.write(&format!("{dir}/tenant.yaml"), &catalog("green", false));
    let run = env.sync().await;
    assert!(
        run.stdout.contains(&format!("pruned ConfigMap {t}/c")),
        "{run:?}"
    );
    assert!(env.configmap(&t, "c").await.is_none());
    assert!(
        env.configmap(&t, "flotilla-extra").await.is_none(),
        "the inventory goes too"
    );
    assert!(env.configmap(&t, "a").await.is_some());
}

/// A `kubectl edit` of a field Git sets is reverted; a field Git does not set is left alone; and
/// the run after that writes nothing.
pub async fn a_kubectl_edit_drift_is_reverted(env: Arc<Env>) {
    let t = shop(&env, "apps:\n  - { name: web, source: { path: web } }\n");
    manifest(
        &env,
        &format!("tenants/{t}/web/deploy.yaml"),
        deployment("web", 2, "web"),
    );
    env.sync().await;
    env.edit("apps/v1", "Deployment", &t, "web", |d| {
        d["spec"]["replicas"] = json!(5);
        d["metadata"]["annotations"]["team.example.com/note"] = json!("kept");
    })
    .await;
    let run = env.sync().await;
    assert!(
        run.stdout
            .contains(&format!("applied Deployment.apps {t}/web (drift reverted)")),
        "{run:?}"
    );
    let live = env
        .get("apps/v1", "Deployment", Some(&t), "web")
        .await
        .unwrap();
    assert_eq!(live["spec"]["replicas"], 2);
    assert_eq!(
        live["metadata"]["annotations"]["team.example.com/note"],
        "kept"
    );

    // Steady state again: nothing is sent (on a real cluster the controller may still write the
    // status, which flotilla ignores).
    env.clear_log();
    let run = env.sync().await;
    assert!(!run.stdout.contains("  applied"), "{run:?}");
    if let Some(writes) = env.writes() {
        let ours: Vec<_> = writes
            .iter()
            .filter(|w| !w.path.contains("/status"))
            .collect();
        assert!(ours.is_empty(), "{ours:#?}");
    }
}

/// A CRD and a custom resource of it in one unit: the CRD first, Established, then the CR.
pub async fn a_crd_and_its_cr_in_one_unit(env: Arc<Env>) {
    let t = env.name("crds");
    let group = format!("{t}.example.com");
    env.tenant(
        &t,
        &[&t],
        "limits: { clusterScopedKinds: [CustomResourceDefinition] }\n",
        "apps:\n  - { name: widgets, source: { path: widgets } }\n",
    );
    // The platform grants the tenant what the fleet's limits allow.
    env.admin_apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": t},
        "rules": [{"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
                   "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
                  {"apiGroups": [group], "resources": ["*"], "verbs": ["*"]}]}))
    .await;
    env.admin_apply(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": t},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": t},
        "subjects": [{"kind": "ServiceAccount", "name": "flotilla-tenant", "namespace": t}]}),
    )
    .await;
    manifest(
        &env,
        &format!("tenants/{t}/widgets/crd.yaml"),
        crd(&env, &group, "Namespaced", "Widget"),
    );
    manifest(
        &env,
        &format!("tenants/{t}/widgets/widget.yaml"),
        json!({
        "apiVersion": format!("{group}/v1"), "kind": "Widget", "metadata": {"name": "first"},
        "spec": {"size": 3}}),
    );
    let run = env.sync().await;
    assert!(
        run.stdout
            .contains(&format!("applied Widget.{group} {t}/first (new)")),
        "{run:?}"
    );
    let widget = env
        .get(&format!("{group}/v1"), "Widget", Some(&t), "first")
        .await
        .unwrap();
    assert_eq!(widget["spec"]["size"], 3);

    env.clear_log();
    let run = env.sync().await;
    assert!(!run.stdout.contains("  applied"), "{run:?}");
    if let Some(writes) = env.writes() {
        assert!(writes.is_empty(), "{writes:#?}");
    }
}

/// A change of an immutable field fails, naming the field, unless the app says `recreate`.
pub async fn an_immutable_change_fails_without_recreate_and_is_recreated_with_it(env: Arc<Env>) {
    let t = shop(&env, "apps:\n  - { name: web, source: { path: web } }\n");
    let path = format!("tenants/{t}/web/deploy.yaml");
    manifest(&env, &path, deployment("web", 1, "v1"));
    env.sync().await;
    let uid = |d: &Value| d["metadata"]["uid"].as_str().unwrap().to_string();
    let before = env
        .get("apps/v1", "Deployment", Some(&t), "web")
        .await
        .unwrap();

    manifest(&env, &path, deployment("web", 1, "v2"));
    let run = env.flotilla(&["run", "--once"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("spec.selector"), "{run:?}");
    assert!(run.stdout.contains("options.recreate: true"), "{run:?}");
    let same = env
        .get("apps/v1", "Deployment", Some(&t), "web")
        .await
        .unwrap();
    assert_eq!(uid(&same), uid(&before));

    env.write(
        &format!("tenants/{t}/tenant.yaml"),
        "apps:\n  - { name: web, source: { path: web }, options: { recreate: true } }\n",
    );
    let run = env.sync().await;
    assert!(
        run.stdout
            .contains(&format!("applied Deployment.apps {t}/web (recreated)")),
        "{run:?}"
    );
    let after = env
        .get("apps/v1", "Deployment", Some(&t), "web")
        .await
        .unwrap();
    assert_ne!(uid(&after), uid(&before));
    assert_eq!(after["spec"]["selector"]["matchLabels"]["app"], "v2");
}

/// What a tenant may not touch is refused by name (by the fleet's limits, or by the API server
/// through impersonation) and its other objects are applied.
pub async fn tenant_isolation(env: Arc<Env>) {
    let a = env.name("alpha");
    let b = env.name("beta");
    env.tenant(
        &a,
        &[&a],
        "limits: { clusterScopedKinds: [ClusterRoleBinding] }\n",
        "apps:\n  - { name: app, source: { path: app } }\n",
    );
    env.tenant(&b, &[&b], "", "apps: []\n");
    let dir = format!("tenants/{a}/app");
    manifest(&env, &format!("{dir}/ok.yaml"), cm("ok", json!({"a": "1"})));
    let mut other = cm("intruder", json!({}));
    other["metadata"]["namespace"] = json!(b);
    manifest(&env, &format!("{dir}/other.yaml"), other);
    let mut system = cm("intruder", json!({}));
    system["metadata"]["namespace"] = json!("kube-system");
    manifest(&env, &format!("{dir}/system.yaml"), system);
    manifest(
        &env,
        &format!("{dir}/ns.yaml"),
        json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": env.name("grab")}}),
    );
    let crb = env.name("escalate");
    env.cluster.track(
        resource(
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
        ),
        &crb,
    );
    manifest(
        &env,
        &format!("{dir}/crb.yaml"),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding", "metadata": {"name": crb},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "flotilla-tenant", "namespace": a}]}),
    );

    let run = env.flotilla(&["run", "--once"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    for refused in [
        format!("ConfigMap {b}/intruder: namespace {b} is not one of the tenant's namespaces"),
        "ConfigMap kube-system/intruder: namespace kube-system is not one of the tenant's namespaces".to_string(),
        format!("Namespace {}: cluster-scoped kind Namespace is not in the tenant's limits", env.name("grab")),
        format!("ClusterRoleBinding.rbac.authorization.k8s.io {crb}: "),
    ] {
        assert!(run.stdout.contains(&refused), "{refused}\n{run:?}");
    }
    assert!(
        run.stdout.contains("forbidden"),
        "the API server refused the binding: {run:?}"
    );
    assert!(
        env.configmap(&a, "ok").await.is_some(),
        "the tenant's other objects are applied"
    );
    assert!(env.configmap(&b, "intruder").await.is_none());
    assert!(env.configmap("kube-system", "intruder").await.is_none());
    assert!(
        env.get("v1", "Namespace", None, &env.name("grab"))
            .await
            .is_none()
    );
    assert!(
        env.get(
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
            None,
            &crb
        )
        .await
        .is_none()
    );

    // Every write the agent made as itself is onboarding; everything else was impersonated.
    if let Some(log) = &env.log {
        let writes: Vec<Logged> = log
            .requests()
            .into_iter()
            .filter(Logged::is_write)
            .collect();
        for w in &writes {
            let path = w.path.split('?').next().unwrap();
            match &w.impersonated {
                Some(user) => assert_eq!(
                    user,
                    &format!("system:serviceaccount:{a}:flotilla-tenant"),
                    "{w:?}"
                ),
                None => assert!(
                    path.starts_with("/api/v1/namespaces/")
                        && !path.contains("/configmaps/")
                        && !path.contains(&format!("/namespaces/{b}/configmaps"))
                        || path.ends_with("/serviceaccounts/flotilla-tenant")
                        || path.ends_with("/rolebindings/flotilla-tenant")
                        || path.starts_with(
                            "/api/v1/namespaces/kube-system/configmaps/flotilla-tenant-"
                        ),
                    "a write not made as the tenant: {w:?}"
                ),
            }
        }
    }
}

/// A ServiceAccount, a Role and the RoleBinding granting it, in one tenant app, converge on the
/// first sync: the tenant may not `bind`, so the API server checks the binding against its Role,
/// which must exist by then (issue 13: they were applied side by side and the binding failed as
/// not found). The binding's file sorts first, so applying in file order would fail too.
pub async fn a_role_and_its_binding_in_one_app_converge_on_the_first_sync(env: Arc<Env>) {
    let t = shop(
        &env,
        "apps:\n  - { name: scanner, source: { path: scanner } }\n",
    );
    let dir = format!("tenants/{t}/scanner");
    manifest(
        &env,
        &format!("{dir}/a-binding.yaml"),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "scanner"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "scanner"},
        "subjects": [{"kind": "ServiceAccount", "name": "scanner", "namespace": t}]}),
    );
    manifest(
        &env,
        &format!("{dir}/b-role.yaml"),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "scanner"},
        "rules": [{"apiGroups": [""], "resources": ["pods", "configmaps"], "verbs": ["get", "list", "watch"]}]}),
    );
    manifest(
        &env,
        &format!("{dir}/c-sa.yaml"),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "scanner"}}),
    );
    let run = env.sync().await;
    for applied in [
        format!("applied ServiceAccount {t}/scanner"),
        format!("applied Role.rbac.authorization.k8s.io {t}/scanner"),
        format!("applied RoleBinding.rbac.authorization.k8s.io {t}/scanner"),
    ] {
        assert!(run.stdout.contains(&applied), "{applied}\n{run:?}");
    }
    let binding = env
        .get(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            Some(&t),
            "scanner",
        )
        .await
        .expect("the binding");
    assert_eq!(binding["roleRef"]["name"], "scanner");
    // Made as the tenant, not as the agent: the escalation check was the tenant's.
    if let Some(log) = &env.log {
        let binding_writes: Vec<Logged> = log
            .requests()
            .into_iter()
            .filter(|r| r.is_write() && r.path.contains("/rolebindings/scanner"))
            .collect();
        assert!(!binding_writes.is_empty());
        for w in &binding_writes {
            assert_eq!(
                w.impersonated.as_deref(),
                Some(format!("system:serviceaccount:{t}:flotilla-tenant").as_str()),
                "{w:?}"
            );
            assert!(w.status < 300, "no refused attempt first: {w:?}");
        }
    }
}

/// A tenant that no longer lands on the cluster (issue 13): with `onRemoval: prune` its apps'
/// objects and inventories are pruned, as the tenant; its namespace, ServiceAccount and RoleBinding
/// (the onboarding) are kept, as documented. A departed tenant without it keeps everything and is
/// reported; another tenant's objects are not touched.
pub async fn a_departed_tenant_is_pruned_only_with_on_removal_prune(env: Arc<Env>) {
    let leaver = env.name("leaver");
    let keeper = env.name("keeper");
    let stayer = env.name("stayer");
    let catalog = "apps:\n  - { name: web, source: { path: web } }\n  - { name: jobs, source: { path: jobs } }\n";
    env.tenant(&leaver, &[&leaver], "onRemoval: prune\n", catalog);
    env.tenant(&keeper, &[&keeper], "", catalog);
    env.tenant(&stayer, &[&stayer], "", catalog);
    for t in [&leaver, &keeper, &stayer] {
        manifest(
            &env,
            &format!("tenants/{t}/web/cm.yaml"),
            cm("web", json!({"a": "1"})),
        );
        manifest(
            &env,
            &format!("tenants/{t}/jobs/cm.yaml"),
            cm("jobs", json!({"b": "2"})),
        );
    }
    env.sync().await;
    let stayer_before = env.configmap(&stayer, "web").await.expect("stayer's web");

    // Both leave the cluster: their fleet files now match another cluster only.
    for (t, extra) in [(&leaver, "onRemoval: prune\n"), (&keeper, "")] {
        env.write(
            &format!("fleet/tenants/{t}.yaml"),
            &format!(
                "name: {t}\nnamespaces: [{t}]\nsource: {{ dir: ../../tenants/{t} }}\nclusters: [{{ name: elsewhere }}]\n{extra}"
            ),
        );
    }
    env.clear_log();
    let run = env.sync().await;
    for pruned in [
        format!("pruned ConfigMap {leaver}/web"),
        format!("pruned ConfigMap {leaver}/jobs"),
    ] {
        assert!(run.stdout.contains(&pruned), "{pruned}\n{run:?}");
    }
    for name in ["web", "jobs", "flotilla-web", "flotilla-jobs"] {
        assert!(
            env.configmap(&leaver, name).await.is_none(),
            "{leaver}/{name} is pruned"
        );
    }
    // The onboarding stays: namespaces are never deleted, and the identity with them.
    assert!(env.get("v1", "Namespace", None, &leaver).await.is_some());
    assert!(
        env.get("v1", "ServiceAccount", Some(&leaver), "flotilla-tenant")
            .await
            .is_some()
    );
    assert!(
        env.get(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            Some(&leaver),
            "flotilla-tenant"
        )
        .await
        .is_some()
    );

    // onRemoval: keep (the default) keeps everything and says so.
    let reported = run
        .stdout
        .split(&format!("tenant {keeper}: "))
        .nth(1)
        .unwrap_or_default();
    assert!(
        reported.lines().nth(1).is_some_and(|l| l.trim()
            == "note: no longer lands on this cluster; the objects of its 2 apps are kept (onRemoval: keep)"),
        "{run:?}"
    );
    for name in ["web", "jobs", "flotilla-web", "flotilla-jobs"] {
        assert!(
            env.configmap(&keeper, name).await.is_some(),
            "{keeper}/{name} is kept"
        );
    }
    let stayer_after = env.configmap(&stayer, "web").await.expect("stayer's web");
    assert_eq!(
        rv(&stayer_after),
        rv(&stayer_before),
        "another tenant is untouched"
    );

    // Every delete was made as the departing tenant, in its own namespace.
    if let Some(log) = &env.log {
        let deletes: Vec<Logged> = log
            .requests()
            .into_iter()
            .filter(|r| r.is_write() && r.method == "DELETE")
            .collect();
        assert!(!deletes.is_empty());
        for d in &deletes {
            assert!(
                d.path
                    .starts_with(&format!("/api/v1/namespaces/{leaver}/configmaps/")),
                "{d:?}"
            );
            assert_eq!(
                d.impersonated.as_deref(),
                Some(format!("system:serviceaccount:{leaver}:flotilla-tenant").as_str()),
                "{d:?}"
            );
        }
    }

    // The next pass has nothing left of it to prune, and still keeps the other's.
    let run = env.sync().await;
    assert!(!run.stdout.contains("  pruned "), "{run:?}");
}

/// A tenant whose namespace is being deleted (held in Terminating by a finalizer) is told so once
/// per unit, nothing is sent into the namespace, and the run fails so that it is retried; once the
/// namespace is gone, the next run recreates it and converges (issue 13).
pub async fn a_terminating_namespace_is_reported_once_per_unit_and_retried(env: Arc<Env>) {
    let t = shop(&env, "apps:\n  - { name: web, source: { path: web } }\n");
    manifest(
        &env,
        &format!("tenants/{t}/web/cm.yaml"),
        cm("web", json!({"a": "1"})),
    );
    env.sync().await;

    let namespaces: Api<DynamicObject> = Api::all_with(
        env.cluster.admin.clone(),
        &resource("v1", "Namespace", "namespaces"),
    );
    let hold = |finalizers: Value| {
        let namespaces = namespaces.clone();
        let t = t.clone();
        async move {
            namespaces
                .patch(
                    &t,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"finalizers": finalizers}})),
                )
                .await
                .expect("patching the namespace's finalizers");
        }
    };
    hold(json!(["flotilla.test/hold"])).await;
    namespaces
        .delete(&t, &DeleteParams::default())
        .await
        .expect("deleting the namespace");
    // The namespace controller empties it; the finalizer keeps it Terminating.
    eventually("the namespace is emptied", || async {
        env.configmap(&t, "web").await.is_none()
    })
    .await;

    env.clear_log();
    let run = env.flotilla(&["run", "--once"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    let said = format!(
        "namespace {t} is being deleted: nothing is applied in it until it is gone (retried later)"
    );
    assert_eq!(
        run.stdout.matches(&said).count(),
        2,
        "once for the onboarding, once for the app: {run:?}"
    );
    assert!(
        !run.stdout.contains("  failed "),
        "no per-object failures: {run:?}"
    );
    assert!(!run.stdout.contains("applied Namespace"), "{run:?}");
    if let Some(writes) = env.writes() {
        let into: Vec<&Logged> = writes
            .iter()
            .filter(|w| {
                w.path.contains(&format!("/namespaces/{t}/"))
                    || w.path.ends_with(&format!("/namespaces/{t}"))
            })
            .collect();
        assert!(
            into.is_empty(),
            "nothing sent into the namespace: {into:#?}"
        );
    }

    // Once it is gone, the next run recreates it and the app.
    hold(Value::Null).await;
    eventually("the namespace is gone", || async {
        env.get("v1", "Namespace", None, &t).await.is_none()
    })
    .await;
    env.sync().await;
    assert_eq!(
        env.configmap(&t, "web").await.expect("web is back")["data"]["a"],
        "1"
    );
}

/// Polls `check` every 200 ms for up to 60 s (a real cluster's controllers act asynchronously).
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not after 60s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A render failure of one app applies and prunes nothing of it; the tenant's other apps go on.
pub async fn a_failed_render_prunes_nothing_and_other_apps_go_on(env: Arc<Env>) {
    let t = shop(
        &env,
        "apps:\n  - { name: one, source: { path: one } }\n  - { name: two, source: { path: two } }\n",
    );
    manifest(
        &env,
        &format!("tenants/{t}/one/a.yaml"),
        cm("a", json!({"v": "1"})),
    );
    manifest(
        &env,
        &format!("tenants/{t}/two/b.yaml"),
        cm("b", json!({"v": "1"})),
    );
    env.sync().await;
    env.write(
        &format!("tenants/{t}/one/a.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: [broken\n",
    );
    manifest(
        &env,
        &format!("tenants/{t}/two/b.yaml"),
        cm("b", json!({"v": "2"})),
    );
    let run = env.flotilla(&["run", "--once"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout
            .contains("render failed, nothing applied or pruned"),
        "{run:?}"
    );
    assert!(run.stdout.contains("one/a.yaml"), "{run:?}");
    assert!(env.configmap(&t, "a").await.is_some(), "nothing pruned");
    assert_eq!(env.configmap(&t, "b").await.unwrap()["data"]["v"], "2");
}

/// `flotilla diff` shows live against the dry-run result (Secret values masked) and what would be
/// pruned, exits 1; after a sync it exits 0.
pub async fn diff_shows_what_a_sync_would_change(env: Arc<Env>) {
    let catalog = |extra: bool| {
        let mut c = "apps:\n  - { name: web, source: { path: web } }\n".to_string();
        if extra {
            c.push_str("  - { name: extra, source: { path: extra } }\n");
        }
        c
    };
    let t = shop(&env, &catalog(true));
    let secret = |value: &str| {
        json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "creds"}, "stringData": {"password": value}})
    };
    manifest(
        &env,
        &format!("tenants/{t}/web/cm.yaml"),
        cm("settings", json!({"color": "blue"})),
    );
    manifest(
        &env,
        &format!("tenants/{t}/web/secret.yaml"),
        secret("hunter2"),
    );
    manifest(
        &env,
        &format!("tenants/{t}/extra/c.yaml"),
        cm("c", json!({})),
    );
    env.sync().await;
    let run = env.flotilla(&["diff"]).await;
    assert_eq!(run.code, 0, "in sync: {run:?}");

    manifest(
        &env,
        &format!("tenants/{t}/web/cm.yaml"),
        cm("settings", json!({"color": "green"})),
    );
    manifest(
        &env,
        &format!("tenants/{t}/web/secret.yaml"),
        secret("correct-horse"),
    );
    env.write(&format!("tenants/{t}/tenant.yaml"), &catalog(false));
    env.clear_log();
    let run = env.flotilla(&["diff", "--tenant", &t]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout
            .contains(&format!("--- live ConfigMap {t}/settings")),
        "{run:?}"
    );
    assert!(
        run.stdout.contains("-  color: blue\n+  color: green"),
        "{run:?}"
    );
    assert!(
        run.stdout.contains(&format!("would prune ConfigMap {t}/c")),
        "{run:?}"
    );
    for secret in [
        "hunter2",
        "correct-horse",
        "aHVudGVyMg",
        "Y29ycmVjdC1ob3JzZQ",
    ] {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "{run:?}"
        );
    }
    assert!(run.stdout.contains("*** (after)"), "{run:?}");
    if let Some(writes) = env.writes() {
        assert!(writes.is_empty(), "diff writes nothing: {writes:#?}");
    }
    assert_eq!(
        env.configmap(&t, "settings").await.unwrap()["data"]["color"],
        "blue"
    );

    env.sync().await;
    let run = env.flotilla(&["diff"]).await;
    assert_eq!(run.code, 0, "{run:?}");
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The fleet's infra in layers: a unit of controllers (a CRD) and a unit of configs (its
/// object) that depends on it, and a tenant whose apps wait for the configs. While the
/// controllers fail, the configs and the tenant's app are held back (saying what they wait for)
/// and nothing of theirs is applied; once the controllers converge, all three follow in order.
pub async fn infra_layers_apply_in_order_and_hold_tenant_apps_back(env: Arc<Env>) {
    let t = env.name("layered");
    let (ctl, cfg) = (env.name("ctl"), env.name("cfg"));
    let group = format!("{t}.example.com");
    env.write(
        "fleet/clusters/dev/cluster.yaml",
        &format!(
            "name: dev\nlabels: {{ env: dev }}\nvars: {{ domain: dev.example.com }}\n\
             infra:\n  - {{ name: {ctl}, path: infra/{ctl} }}\n\
             \x20 - {{ name: {cfg}, path: infra/{cfg}, dependsOn: [{ctl}], wait: true }}\n"
        ),
    );
    env.track_infra(&format!("infra/{ctl}"));
    env.track_infra(&format!("infra/{cfg}"));
    manifest(
        &env,
        &format!("fleet/infra/{ctl}/crd.yaml"),
        crd(&env, &group, "Cluster", "Gadget"),
    );
    // The controllers' layer fails at first: a kind no cluster serves.
    let broken = format!("fleet/infra/{ctl}/broken.yaml");
    manifest(
        &env,
        &broken,
        json!({"apiVersion": format!("missing.{group}/v1"), "kind": "Nothing",
            "metadata": {"name": "x"}}),
    );
    manifest(
        &env,
        &format!("fleet/infra/{cfg}/gadget.yaml"),
        json!({"apiVersion": format!("{group}/v1"), "kind": "Gadget",
            "metadata": {"name": t}, "spec": {"size": 2}}),
    );
    env.tenant(
        &t,
        &[&t],
        &format!("dependsOn: [infra/{cfg}]\n"),
        "apps:\n  - { name: web, source: { path: web } }\n",
    );
    manifest(
        &env,
        &format!("tenants/{t}/web/cm.yaml"),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web"},
            "data": {"v": "1"}}),
    );

    let run = env.flotilla(&["run", "--once"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    for (unit, waits_for) in [
        (format!("cluster infra/{cfg}"), format!("infra/{ctl}")),
        (format!("tenant {t}, app web"), format!("infra/{cfg}")),
    ] {
        let block = run
            .stdout
            .split("\n\n")
            .chain(run.stdout.lines())
            .find(|b| b.contains(&unit) && b.contains("it depends on"))
            .unwrap_or_default();
        assert!(
            block.contains(&format!(
                "it depends on {waits_for}, which did not converge"
            )),
            "{unit}: {run:?}"
        );
    }
    assert!(
        env.get(&format!("{group}/v1"), "Gadget", None, &t)
            .await
            .is_none()
    );
    assert!(env.configmap(&t, "web").await.is_none());

    // The controllers converge: the configs follow, then the tenant's app.
    std::fs::remove_file(env.dir.path().join(&broken)).unwrap();
    let run = env.sync().await;
    let order: Vec<usize> = [
        format!("cluster infra/{ctl}"),
        format!("cluster infra/{cfg}"),
        format!("tenant {t}, app web"),
    ]
    .iter()
    .map(|u| {
        run.stdout
            .find(u.as_str())
            .unwrap_or_else(|| panic!("{u}: {run:?}"))
    })
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{run:?}");
    let gadget = env
        .get(&format!("{group}/v1"), "Gadget", None, &t)
        .await
        .expect("the configs' object");
    assert_eq!(gadget["spec"]["size"], 2);
    assert!(env.configmap(&t, "web").await.is_some());
    // Each layer has its own inventory.
    for unit in [&ctl, &cfg] {
        assert!(
            env.configmap("kube-system", &format!("flotilla-infra-{unit}"))
                .await
                .is_some(),
            "{unit}"
        );
    }

    // A layer taken out of the fleet is pruned with its inventory (the tenant no longer
    // waits for it); the other layer stays.
    env.write(
        "fleet/clusters/dev/cluster.yaml",
        &format!(
            "name: dev\nlabels: {{ env: dev }}\nvars: {{ domain: dev.example.com }}\n\
             infra:\n  - {{ name: {ctl}, path: infra/{ctl} }}\n"
        ),
    );
    env.tenant(
        &t,
        &[&t],
        "",
        "apps:\n  - { name: web, source: { path: web } }\n",
    );
    let run = env.sync().await;
    assert!(
        run.stdout
            .contains(&format!("cluster infra/{cfg} (removed)")),
        "{run:?}"
    );
    assert!(
        env.get(&format!("{group}/v1"), "Gadget", None, &t)
            .await
            .is_none(),
        "{run:?}"
    );
    assert!(
        env.configmap("kube-system", &format!("flotilla-infra-{cfg}"))
            .await
            .is_none()
    );
    assert!(
        env.configmap("kube-system", &format!("flotilla-infra-{ctl}"))
            .await
            .is_some()
    );
}

/// What the platform writes into a tenant's namespaces: labels and annotations (the cluster's
/// defaults, the tenant's, a namespace's own), a ResourceQuota and a LimitRange. A change made
/// with kubectl is reverted; the tenant cannot raise its own quota.
pub async fn the_platform_shapes_tenant_namespaces(env: Arc<Env>) {
    let t = env.name("shaped");
    let batch = format!("{t}-batch");
    env.write(
        "fleet/clusters/dev/cluster.yaml",
        "name: dev\nlabels: { env: dev }\nvars: { domain: dev.example.com }\n\
         tenantDefaults:\n  namespaceLabels: { example.com/tier: shared, example.com/zone: a }\n\
         \x20 limitRange: { limits: [{ type: Container, defaultRequest: { cpu: 10m } }] }\n",
    );
    env.tenant(
        &t,
        &[
            &t,
            &format!("{{ name: {batch}, labels: {{ example.com/zone: b }} }}"),
        ],
        "namespaceAnnotations: { example.com/owner: team-shaped }\n\
         resourceQuota: { hard: { pods: \"10\" } }\n",
        "apps:\n  - { name: greedy, source: { path: greedy } }\n",
    );
    // Replace the tenant record of the namespaces the helper could not read from the entry.
    env.tenants.lock().unwrap().last_mut().unwrap().1 = vec![t.clone(), batch.clone()];
    // The tenant tries to raise its quota from its own repo.
    manifest(
        &env,
        &format!("tenants/{t}/greedy/quota.yaml"),
        json!({"apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "flotilla-tenant"}, "spec": {"hard": {"pods": "1000"}}}),
    );
    let run = env.flotilla(&["run", "--once"]).await;
    assert_eq!(run.code, 1, "the greedy app fails: {run:?}");
    let greedy = run
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("tenant {t}, app greedy")))
        .unwrap_or_default();
    assert!(
        greedy.contains("FAILED (permanent)"),
        "the API server's 403: {run:?}"
    );

    let namespaces: Api<DynamicObject> = Api::all_with(
        env.cluster.admin.clone(),
        &resource("v1", "Namespace", "namespaces"),
    );
    let labels_of = |ns: Value| ns["metadata"]["labels"].clone();
    for (ns, zone) in [(&t, "a"), (&batch, "b")] {
        let live = serde_json::to_value(namespaces.get(ns).await.unwrap()).unwrap();
        let labels = labels_of(live.clone());
        assert_eq!(labels["example.com/tier"], "shared", "{ns}: {live}");
        assert_eq!(labels["example.com/zone"], zone, "{ns}: {live}");
        assert_eq!(labels["flotilla.dev/tenant"], t.as_str(), "{ns}: {live}");
        assert_eq!(
            live["metadata"]["annotations"]["example.com/owner"], "team-shaped",
            "{ns}: {live}"
        );
        let quota = env
            .get("v1", "ResourceQuota", Some(ns), "flotilla-tenant")
            .await
            .expect("the platform's quota");
        assert_eq!(quota["spec"]["hard"]["pods"], "10", "{ns}: {quota}");
        let limits = env
            .get("v1", "LimitRange", Some(ns), "flotilla-tenant")
            .await
            .expect("the platform's limit range");
        assert_eq!(
            limits["spec"]["limits"][0]["defaultRequest"]["cpu"], "10m",
            "{ns}: {limits}"
        );
    }

    // A kubectl edit of the platform's label is drift: reverted on the next sync.
    let mut live = serde_json::to_value(namespaces.get(&t).await.unwrap()).unwrap();
    live["metadata"]["labels"]["example.com/tier"] = json!("dedicated");
    let object: DynamicObject = serde_json::from_value(live).unwrap();
    let params = PostParams {
        field_manager: Some("kubectl-edit".into()),
        ..Default::default()
    };
    namespaces
        .replace(&t, &params, &object)
        .await
        .expect("the edit");
    let _ = env.flotilla(&["run", "--once"]).await;
    let live = serde_json::to_value(namespaces.get(&t).await.unwrap()).unwrap();
    assert_eq!(
        labels_of(live.clone())["example.com/tier"],
        "shared",
        "{live}"
    );
}

/// A cluster's `infra/` folder of manifests split into layers: while a layer has not converged,
/// the old unit is not pruned and its objects stay; once every layer converged, the old
/// inventory goes, and the objects the layers took over stay.
pub async fn infra_split_into_layers_keeps_its_objects(env: Arc<Env>) {
    let (a, b, c) = (
        env.name("split-a"),
        env.name("split-b"),
        env.name("split-c"),
    );
    let (ctl, cfg) = (env.name("ctl"), env.name("cfg"));
    let pcs = resource("scheduling.k8s.io/v1", "PriorityClass", "priorityclasses");
    let pc = |name: &str| {
        json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": name}, "value": 10})
    };
    for name in [&a, &b, &c] {
        env.cluster.track(pcs.clone(), name);
    }
    env.track_infra("infra");
    env.track_infra(&format!("infra/{ctl}"));
    env.track_infra(&format!("infra/{cfg}"));
    manifest(&env, "fleet/clusters/dev/infra/a.yaml", pc(&a));
    manifest(&env, "fleet/clusters/dev/infra/b.yaml", pc(&b));
    env.sync().await;
    assert!(
        env.configmap("kube-system", "flotilla-infra")
            .await
            .is_some()
    );

    // Into layers; the first fails, so the second (which takes the objects over) is held back.
    env.write(
        "fleet/clusters/dev/cluster.yaml",
        &format!(
            "name: dev\nlabels: {{ env: dev }}\n\
             infra:\n  - {{ name: {ctl}, path: layers/ctl }}\n\
             \x20 - {{ name: {cfg}, path: layers/cfg, dependsOn: [{ctl}] }}\n"
        ),
    );
    let broken = "fleet/layers/ctl/broken.yaml";
    manifest(
        &env,
        broken,
        json!({"apiVersion": format!("missing.{ctl}.example.com/v1"), "kind": "Nothing",
            "metadata": {"name": "x"}}),
    );
    manifest(&env, "fleet/layers/ctl/c.yaml", pc(&c));
    manifest(&env, "fleet/layers/cfg/a.yaml", pc(&a));
    manifest(&env, "fleet/layers/cfg/b.yaml", pc(&b));
    let run = env.flotilla(&["run", "--once"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(!run.stdout.contains("(removed)"), "{run:?}");
    for name in [&a, &b] {
        assert!(
            env.get("scheduling.k8s.io/v1", "PriorityClass", None, name)
                .await
                .is_some(),
            "{name}: {run:?}"
        );
    }
    assert!(
        env.configmap("kube-system", "flotilla-infra")
            .await
            .is_some()
    );

    // Every layer converges: the old unit goes, its objects stay with the layer.
    std::fs::remove_file(env.dir.path().join(broken)).unwrap();
    let run = env.sync().await;
    assert!(run.stdout.contains("cluster infra (removed)"), "{run:?}");
    for name in [&a, &b] {
        let live = env
            .get("scheduling.k8s.io/v1", "PriorityClass", None, name)
            .await
            .unwrap_or_else(|| panic!("{name} kept: {run:?}"));
        assert_eq!(
            live["metadata"]["labels"]["flotilla.dev/app"],
            format!("infra.{cfg}"),
            "{live}"
        );
    }
    assert!(
        env.configmap("kube-system", "flotilla-infra")
            .await
            .is_none()
    );
}
