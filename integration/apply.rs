//! The scenarios of `tests/support/apply_scenarios.rs` against the real cluster in
//! `FLOTILLA_IT_KUBECONFIG`, through the real `flotilla` binary. Where the hermetic suite reads
//! the test server's request log, these check the objects themselves (resourceVersions, uids).
//! Every name is unique to the run, except the example fleet's (its namespaces `ai`, `ai-jobs`,
//! `bigdata`, `security`, its PriorityClasses and `kube-system/flotilla-infra`), and everything
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
);
