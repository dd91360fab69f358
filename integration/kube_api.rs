//! The scenarios of `tests/support/scenarios.rs` against the real cluster in
//! `FLOTILLA_IT_KUBECONFIG`: what the test API server claims, a stock kube-apiserver does.
//! Every name is unique to the run and everything created is deleted afterwards.

use crate::support::cluster::Cluster;
use crate::support::scenarios;

macro_rules! scenario {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let Some(path) = crate::kubeconfig(stringify!($name)) else {
                return;
            };
            Cluster::connect(&path).await.run(scenarios::$name).await;
        }
    )*};
}

scenario!(
    discovery_serves_the_builtin_kinds,
    a_new_crd_is_established_and_discovered,
    objects_have_server_metadata_and_status_shapes,
    lists_filter_and_page,
    apply_removes_a_field_no_longer_applied,
    a_shared_field_stays_with_its_other_owner,
    conflicting_managers_and_force,
    dry_run_stores_nothing,
    immutable_fields_are_refused,
    impersonated_tenant_is_confined_to_its_namespace,
    impersonation_needs_the_impersonate_verb,
    default_roles_grant_what_they_grant_on_a_real_cluster,
    escalation_is_refused,
    impersonated_groups_are_authorized,
    watch_sees_changes_after_a_resource_version,
);
