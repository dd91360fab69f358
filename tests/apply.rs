//! `flotilla run --once` and `flotilla diff` through the real binary against the test API server:
//! the scenarios in `support::apply_scenarios` (shared with `integration/`), plus what only the
//! test server can show through its request log.

use crate::support::apply_scenarios::{self, Env};
use crate::support::kube_api::ApiServer;

/// A test that runs one shared scenario against a fresh test API server.
macro_rules! scenario {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let server = ApiServer::start();
            let env = Env::new(server.kubeconfig(), Some(&server)).await;
            env.run(apply_scenarios::$name).await;
        }
    )*};
}

scenario!(
    example_fleet_applies_for_dev,
    a_value_change_updates_only_changed_objects_and_a_removed_app_is_pruned,
    a_kubectl_edit_drift_is_reverted,
    a_crd_and_its_cr_in_one_unit,
    an_immutable_change_fails_without_recreate_and_is_recreated_with_it,
    tenant_isolation,
    a_failed_render_prunes_nothing_and_other_apps_go_on,
    diff_shows_what_a_sync_would_change,
);
