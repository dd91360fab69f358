//! The scenarios of `tests/support/apply_scenarios.rs` against the real cluster in
//! `FLOTILLA_IT_KUBECONFIG`, through the real `flotilla` binary. Where the hermetic suite reads
//! the test server's request log, these check the objects themselves (resourceVersions, uids).
//! Every name is unique to the run, except the example fleet's (its namespaces `ai`, `ai-jobs`,
//! `bigdata`, `security`, its PriorityClasses and `kube-system/flotilla-infra-{controllers,configs}`), and everything
//! created is deleted afterwards.

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

/// Pod Security admission, which only a real API server runs: a tenant whose namespace the
/// platform labels `pod-security.kubernetes.io/enforce: restricted` cannot run a privileged Pod
/// there. The app fails (the API server's 403) and no Pod is created; the label is the
/// platform's, on the namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_security_restricted_on_a_tenant_namespace_refuses_a_privileged_pod() {
    let Some(path) =
        crate::kubeconfig("pod_security_restricted_on_a_tenant_namespace_refuses_a_privileged_pod")
    else {
        return;
    };
    crate::support::apply_scenarios::Env::new(&path, None)
        .await
        .run(|env| async move {
            let t = env.name("psa");
            env.tenant(
                &t,
                &[&t],
                "namespaceLabels: { pod-security.kubernetes.io/enforce: restricted }\n",
                "apps:\n  - { name: rogue, source: { path: rogue } }\n",
            );
            env.write(
                &format!("tenants/{t}/rogue/pod.yaml"),
                "apiVersion: v1\nkind: Pod\nmetadata: { name: rogue }\nspec:\n  containers:\n    - name: c\n      image: registry.k8s.io/pause:3.10\n      securityContext: { privileged: true }\n",
            );
            let run = env.flotilla(&["run", "--once"]).await;
            assert_eq!(run.code, 1, "{run:?}");
            let rogue = run
                .stdout
                .lines()
                .find(|l| l.starts_with(&format!("tenant {t}, app rogue")))
                .unwrap_or_default();
            assert!(rogue.contains("FAILED (permanent)"), "admission's 403: {run:?}");
            assert!(env.get("v1", "Pod", Some(&t), "rogue").await.is_none());
            let ns = env.get("v1", "Namespace", None, &t).await.expect("onboarded");
            assert_eq!(
                ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted",
                "{ns}"
            );
        })
        .await;
}
