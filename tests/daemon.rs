//! The long-running agent (`flotilla run`) through the real binary against the test API server:
//! the scenarios in `support::daemon_scenarios`, shared with `integration/`.

use crate::support::apply_scenarios::Env;
use crate::support::daemon_scenarios;
use crate::support::kube_api::ApiServer;

/// A test that runs one shared scenario against a fresh test API server.
macro_rules! scenario {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let server = ApiServer::start();
            let env = Env::new(server.kubeconfig(), Some(&server)).await;
            env.run(daemon_scenarios::$name).await;
        }
    )*};
}

scenario!(
    webhooks_sync_exactly_the_units_of_the_pushed_repo,
    sync_status_and_the_api,
    config_reload_good_and_bad,
    sigterm_during_an_apply,
    leader_election_hands_over,
);
