//! The long-running agent (`flotilla run`) through the real binary against the test API server:
//! the scenarios in `support::daemon_scenarios`, shared with `integration/`.

env_scenarios!(
    daemon_scenarios:
    webhooks_sync_exactly_the_units_of_the_pushed_repo,
    sync_status_and_the_api,
    failures_are_retried_by_their_kind,
    config_reload_good_and_bad,
    sigterm_during_an_apply,
    leader_election_hands_over,
);

env_scenarios!(
    page_scenarios:
    the_status_page_shows_the_fleet_and_syncs_with_the_token,
);

env_scenarios!(
    shard_scenarios:
    shards_divide_the_tenants_and_move_when_a_replica_dies,
);
