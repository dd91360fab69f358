//! `flotilla run --once` and `flotilla diff` through the real binary against the test API server:
//! the scenarios in `support::apply_scenarios` (shared with `integration/`), plus what only the
//! test server can show through its request log.

use crate::support::apply_scenarios::Env;
use crate::support::kube_api::ApiServer;

env_scenarios!(
    apply_scenarios:
    example_fleet_applies_for_dev,
    a_value_change_updates_only_changed_objects_and_a_removed_app_is_pruned,
    a_kubectl_edit_drift_is_reverted,
    a_crd_and_its_cr_in_one_unit,
    an_immutable_change_fails_without_recreate_and_is_recreated_with_it,
    tenant_isolation,
    a_role_and_its_binding_in_one_app_converge_on_the_first_sync,
    a_departed_tenant_is_pruned_only_with_on_removal_prune,
    a_terminating_namespace_is_reported_once_per_unit_and_retried,
    a_failed_render_prunes_nothing_and_other_apps_go_on,
    diff_shows_what_a_sync_would_change,
    infra_layers_apply_in_order_and_hold_tenant_apps_back,
    the_platform_shapes_tenant_namespaces,
    infra_split_into_layers_keeps_its_objects,
);

env_scenarios!(hook_scenarios: helm_hooks_run_in_their_phases_once_per_render);

/// `wait: true` on an app whose Job never completes (the test server runs no Job controller):
/// the unit fails after its timeout, naming the object and what it waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_times_out_names_the_object() {
    let server = ApiServer::start();
    let env = Env::new(server.kubeconfig(), Some(&server)).await;
    env.run(|env| async move {
        let t = env.name("jobs");
        env.tenant(
            &t,
            &[&t],
            "",
            "apps:\n  - { name: batch, source: { path: batch }, options: { wait: true, timeout: 1s } }\n",
        );
        env.write(
            &format!("tenants/{t}/batch/job.yaml"),
            "apiVersion: batch/v1\nkind: Job\nmetadata: { name: once }\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{ name: main, image: registry.k8s.io/pause:3.10 }]\n",
        );
        let run = env.flotilla(&["run", "--once"]).await;
        assert_eq!(run.code, 1, "{run:?}");
        assert!(
            run.stdout.contains(&format!(
                "failed Job.batch {t}/once: not ready: the Job has not completed (waited 1s)"
            )),
            "{run:?}"
        );
    })
    .await;
}

/// An app whose render comes out empty does not prune what it applied before unless it says
/// `allowEmpty: true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_render_prunes_only_with_allow_empty() {
    let server = ApiServer::start();
    let env = Env::new(server.kubeconfig(), Some(&server)).await;
    env.run(|env| async move {
        let t = env.name("empty");
        env.tenant(&t, &[&t], "", "apps:\n  - { name: web, source: { path: web } }\n");
        let file = env.write(
            &format!("tenants/{t}/web/cm.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: kept }\n",
        );
        env.sync().await;
        std::fs::write(&file, "# nothing here any more\n").unwrap();
        let run = env.flotilla(&["run", "--once"]).await;
        assert_eq!(run.code, 1, "{run:?}");
        assert!(
            run.stdout.contains("rendered no objects; refusing to prune the 1 object it applied before (set options.allowEmpty: true to allow it)"),
            "{run:?}"
        );
        assert!(env.configmap(&t, "kept").await.is_some());

        env.write(
            &format!("tenants/{t}/tenant.yaml"),
            "apps:\n  - { name: web, source: { path: web }, options: { allowEmpty: true } }\n",
        );
        let run = env.sync().await;
        assert!(run.stdout.contains(&format!("pruned ConfigMap {t}/kept")), "{run:?}");
        assert!(env.configmap(&t, "kept").await.is_none());
    })
    .await;
}

/// A chart renders with what the cluster serves, as an install would: `run --once` passes the
/// API server's version and every group/version and group/version/Kind it serves to
/// `helm template` (the stand-in's SDK cannot apply them, so the command line is checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_charts_get_the_clusters_capabilities() {
    let server = ApiServer::start();
    let env = Env::new(server.kubeconfig(), Some(&server)).await;
    env.run(|env| async move {
        let Some(helm) = crate::support::helm_standin(env.dir.path()) else {
            eprintln!("capabilities: no Python with helm-python-sdk (set FLOTILLA_TEST_HELM_PYTHON); skipped");
            return;
        };
        let config = std::fs::read_to_string(env.dir.path().join("flotilla.yaml")).unwrap();
        env.write(
            "flotilla.yaml",
            &format!("{config}render: {{ helm: {} }}\n", helm.display()),
        );
        let t = env.name("charts");
        env.tenant(&t, &[&t], "", "apps:\n  - { name: chart, source: { path: chart } }\n");
        env.write(&format!("tenants/{t}/chart/Chart.yaml"), "apiVersion: v2\nname: chart\nversion: 0.1.0\n");
        env.write(
            &format!("tenants/{t}/chart/templates/cm.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: {{ .Release.Name }} }\n",
        );
        let run = env.sync().await;
        assert!(run.stdout.contains(&format!("tenant {t}, app chart")), "{run:?}");
        assert!(env.configmap(&t, "chart").await.is_some());
        let args = std::fs::read_to_string(env.dir.path().join("helm.args")).unwrap();
        let words: Vec<&str> = args.split_whitespace().collect();
        let after = |flag: &str| -> Vec<&str> {
            words
                .windows(2)
                .filter(|w| w[0] == flag)
                .map(|w| w[1])
                .collect()
        };
        let version = after("--kube-version");
        assert!(version.first().is_some_and(|v| v.starts_with("v1.")), "{args}");
        let apis = after("--api-versions");
        for api in ["v1", "v1/ConfigMap", "apps/v1", "apps/v1/Deployment"] {
            assert!(apis.contains(&api), "{api}: {args}");
        }
    })
    .await;
}

/// A pre-install Job hook is waited for until it completes (the test server's stand-in Job
/// controller completes it), and only then are the app's objects applied; a Job hook that fails
/// stops the sync, naming the hook and why, and the app's objects are not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_install_job_is_waited_for_and_its_failure_stops_the_sync() {
    let server = ApiServer::start();
    let env = Env::new(server.kubeconfig(), Some(&server)).await;
    env.run(|env| async move {
        let jobs = tokio::spawn(crate::support::kube_api::run_jobs(env.cluster.admin.clone()));
        let t = env.name("jobs");
        env.tenant(&t, &[&t], "", "apps:\n  - { name: db, source: { path: db } }\n");
        let job = |outcome: &str| {
            format!(
                "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: migrate\n  annotations: {{ helm.sh/hook: pre-upgrade, helm.sh/hook-delete-policy: before-hook-creation }}\nspec:\n  template:\n    metadata: {{ annotations: {{ flotilla.test/outcome: {outcome} }} }}\n    spec: {{ restartPolicy: Never, containers: [ {{ name: m, image: busybox }} ] }}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: schema }}\ndata: {{ version: {outcome} }}\n"
            )
        };
        env.write(&format!("tenants/{t}/db/all.yaml"), &job("ok"));
        env.clear_log();
        let run = env.sync().await;
        assert!(run.stdout.contains(&format!("Job.batch {t}/migrate (hook ran)")), "{run:?}");
        let writes = env.writes().unwrap();
        let at = |part: &str| {
            writes
                .iter()
                .position(|w| w.path.contains(part))
                .unwrap_or_else(|| panic!("{part}: {writes:#?}"))
        };
        assert!(at("/jobs/migrate/status") < at("/configmaps/schema"), "{writes:#?}");

        env.write(&format!("tenants/{t}/db/all.yaml"), &job("fail"));
        let run = env.flotilla(&["run", "--once"]).await;
        assert_ne!(run.code, 0, "{run:?}");
        assert!(
            run.stdout.contains(&format!("error: hook Job.batch {t}/migrate failed: the Job failed: BackoffLimitExceeded")),
            "{run:?}"
        );
        let schema = env.configmap(&t, "schema").await.unwrap();
        assert_eq!(schema["data"]["version"], "ok", "not applied after the failed hook");
        jobs.abort();
    })
    .await;
}

/// The apps of a tenant in one namespace share their reads: an unchanged pass lists each kind
/// once in the namespace and the inventories once, whatever the number of apps, reads no
/// inventory by itself, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_of_a_tenant_in_one_namespace_share_their_reads() {
    let server = ApiServer::start();
    let env = Env::new(server.kubeconfig(), Some(&server)).await;
    env.run(|env| async move {
        let t = env.name("reads");
        let apps = 6;
        let mut catalog = String::from("apps:\n");
        for i in 0..apps {
            catalog.push_str(&format!("  - {{ name: a{i}, source: {{ path: a{i} }} }}\n"));
            for (kind, name) in [("ConfigMap", "one"), ("ConfigMap", "two"), ("Secret", "three")] {
                env.write(
                    &format!("tenants/{t}/a{i}/{name}.yaml"),
                    &format!("apiVersion: v1\nkind: {kind}\nmetadata: {{ name: a{i}-{name} }}\ndata: {{ v: MQ== }}\n"),
                );
            }
        }
        env.tenant(&t, &[&t], "", &catalog);
        env.sync().await;
        env.clear_log();
        let run = env.sync().await;
        assert!(run.stdout.contains("0 applied, 3 unchanged"), "{run:?}");
        let log = server.log().requests();
        let reads = |what: &str, verb: &str| {
            log.iter()
                .filter(|r| r.verb == verb && r.path.contains(&format!("/namespaces/{t}/{what}")))
                .count()
        };
        // The apps' members, their inventories, and the look for apps removed from Git (six
        // apps used to list twelve times: a member list and an inventory read each).
        assert_eq!(reads("configmaps", "list"), 3, "{log:#?}");
        assert_eq!(reads("secrets", "list"), 1, "{log:#?}");
        assert_eq!(reads("configmaps", "get"), 0, "no inventory read by itself: {log:#?}");
        assert!(env.writes().unwrap().is_empty(), "{:#?}", env.writes());
    })
    .await;
}

/// A ConfigMap that has an inventory's name but not its id label (a tenant's own, or one whose
/// label was stripped) is refused as before when the apps share their reads: never taken for
/// "no inventory", overwritten or adopted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_named_like_an_inventory_is_not_taken_over() {
    let server = ApiServer::start();
    let env = Env::new(server.kubeconfig(), Some(&server)).await;
    env.run(|env| async move {
        let t = env.name("squat");
        env.tenant(
            &t,
            &[&t],
            "",
            "apps:\n  - { name: a, source: { path: a } }\n  - { name: b, source: { path: b } }\n",
        );
        for app in ["a", "b"] {
            env.write(
                &format!("tenants/{t}/{app}/cm.yaml"),
                &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: {app} }}\ndata: {{ v: \"1\" }}\n"),
            );
        }
        env.admin_apply(serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": t}}))
            .await;
        env.admin_apply(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "flotilla-a", "namespace": t}, "data": {"keep": "me"}}))
            .await;
        let run = env.flotilla(&["run", "--once"]).await;
        assert_eq!(run.code, 1, "{run:?}");
        assert!(run.stdout.contains("not flotilla's"), "{run:?}");
        let kept = env.configmap(&t, "flotilla-a").await.unwrap();
        assert_eq!(kept["data"], serde_json::json!({"keep": "me"}), "{kept}");
        assert!(env.configmap(&t, "a").await.is_none(), "nothing of a applied");
        assert_eq!(env.configmap(&t, "b").await.unwrap()["data"]["v"], "1");
    })
    .await;
}
