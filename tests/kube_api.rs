//! The test Kubernetes API server (`support::kube_api`) against the scenarios in
//! `support::scenarios`, which `integration/` also runs against a real cluster; plus what only
//! the test server can show: its request log.

use crate::support::cluster::Cluster;
use crate::support::kube_api::ApiServer;
use crate::support::scenarios;

/// A test that runs one shared scenario against a fresh test API server.
macro_rules! scenario {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let server = ApiServer::start();
            Cluster::connect(server.kubeconfig()).await.run(scenarios::$name).await;
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
    default_roles_grant_what_they_grant_on_a_real_cluster,
    escalation_is_refused,
    impersonated_groups_are_authorized,
    watch_sees_changes_after_a_resource_version,
);

/// Confinement through impersonation, and the log shows every write to the tenant's namespace
/// was made as the tenant.
#[tokio::test]
async fn impersonated_tenant_is_confined_to_its_namespace() {
    let server = ApiServer::start();
    Cluster::connect(server.kubeconfig())
        .await
        .run(scenarios::impersonated_tenant_is_confined_to_its_namespace)
        .await;
    let tenant_writes: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.is_write() && r.path.contains("/configmaps"))
        .collect();
    assert!(!tenant_writes.is_empty());
    for r in &tenant_writes {
        let who = r.impersonated.as_deref().unwrap_or_default();
        assert!(who.ends_with(":flotilla-tenant"), "{r:?}");
        assert_eq!(r.user, "kubernetes-admin");
    }
    assert!(
        tenant_writes
            .iter()
            .any(|r| r.status == 200 || r.status == 201)
    );
    assert!(tenant_writes.iter().any(|r| r.status == 403));
}

#[tokio::test]
async fn impersonation_needs_the_impersonate_verb() {
    let server = ApiServer::start();
    Cluster::connect(server.kubeconfig())
        .await
        .run(scenarios::impersonation_needs_the_impersonate_verb)
        .await;
    let unauthorized = server
        .requests()
        .into_iter()
        .filter(|r| r.status == 401)
        .count();
    assert_eq!(unauthorized, 1);
}

/// The log records method, path, verb, user, impersonation, dry-run and status; reads and dry
/// runs store nothing.
#[tokio::test]
async fn the_request_log_tells_reads_writes_and_dry_runs_apart() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, ListParams, Patch, PatchParams};

    let server = ApiServer::start();
    let cluster = Cluster::connect(server.kubeconfig()).await;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.admin.clone(), "default");
    let body =
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
    server.clear_requests();
    let before = server.resource_version();
    cms.list(&ListParams::default()).await.unwrap();
    cms.patch(
        "x",
        &PatchParams::apply("flotilla").dry_run(),
        &Patch::Apply(&body),
    )
    .await
    .unwrap();
    assert_eq!(
        server.resource_version(),
        before,
        "reads and dry runs store nothing"
    );
    assert!(server.requests().iter().all(|r| !r.is_write()));

    let tenant = cluster
        .impersonating("system:serviceaccount:default:default", &[])
        .await;
    let as_tenant: Api<ConfigMap> = Api::namespaced(tenant, "default");
    let refused = as_tenant
        .patch("x", &PatchParams::apply("flotilla"), &Patch::Apply(&body))
        .await;
    assert!(refused.is_err());
    cms.patch("x", &PatchParams::apply("flotilla"), &Patch::Apply(&body))
        .await
        .unwrap();

    let log = server.requests();
    let summary: Vec<String> = log
        .iter()
        .map(|r| {
            format!(
                "{} {} {} as={} dry={} {}",
                r.method,
                r.verb,
                r.user,
                r.impersonated.as_deref().unwrap_or("-"),
                r.dry_run,
                r.status
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            "GET list kubernetes-admin as=- dry=false 200",
            "PATCH patch kubernetes-admin as=- dry=true 201",
            "PATCH patch kubernetes-admin as=system:serviceaccount:default:default dry=false 403",
            "PATCH patch kubernetes-admin as=- dry=false 201",
        ]
    );
    assert!(
        log[3]
            .path
            .starts_with("/api/v1/namespaces/default/configmaps/x?")
    );
    assert_eq!(log[3].field_manager.as_deref(), Some("flotilla"));
    assert!(log[3].is_write());
}

/// A user without a token is anonymous: discovery of the version is public, resources are not.
#[tokio::test]
async fn anonymous_requests_reach_only_public_paths() {
    let server = ApiServer::start();
    let config = kube::Config::new(server.url().parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let version = client
        .apiserver_version()
        .await
        .expect("/version is public");
    assert_eq!(version.major, "1");
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client, "default");
    match cms.list(&Default::default()).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403);
            assert!(
                s.message.contains("User \"system:anonymous\" cannot list"),
                "{}",
                s.message
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A bearer token maps to a user and its groups; a ClusterRoleBinding to one of the groups
/// grants its rules everywhere, and nothing else.
#[tokio::test]
async fn bearer_tokens_map_to_users_and_groups_bound_by_rbac() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, DynamicObject, ListParams, PostParams};

    let server = ApiServer::start();
    let admin = Cluster::connect(server.kubeconfig()).await;
    let alice = Cluster::connect(&server.user_kubeconfig("alice", &["platform"])).await;
    let cms: Api<ConfigMap> = Api::all(alice.admin.clone());
    match cms.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(
            s.message,
            "configmaps is forbidden: User \"alice\" cannot list resource \"configmaps\" in API group \"\" at the cluster scope"
        ),
        other => panic!("{other:?}"),
    }
    let crbs = crate::support::cluster::resource(
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
    );
    let binding = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "platform-view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "platform"}],
    });
    Api::<DynamicObject>::all_with(admin.admin.clone(), &crbs)
        .create(
            &PostParams::default(),
            &serde_json::from_value(binding).unwrap(),
        )
        .await
        .unwrap();
    let listed = cms
        .list(&ListParams::default())
        .await
        .expect("view lets the group list");
    assert!(
        listed
            .items
            .iter()
            .any(|c| c.metadata.name.as_deref() == Some("kube-root-ca.crt"))
    );
    let body =
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
    let write = Api::<ConfigMap>::namespaced(alice.admin.clone(), "default")
        .create(
            &PostParams::default(),
            &serde_json::from_value(body).unwrap(),
        )
        .await;
    assert!(matches!(write, Err(kube::Error::Api(s)) if s.code == 403));
}

/// Bodies of the wrong shape are a 400 naming the field, and the server goes on serving (a panic
/// in a handler would poison its store for every later request).
#[tokio::test]
async fn malformed_bodies_are_bad_requests_and_the_server_goes_on() {
    use kube::api::{Api, DynamicObject, Patch, PatchParams};

    let server = ApiServer::start();
    let cluster = Cluster::connect(server.kubeconfig()).await;
    let apply = PatchParams::apply("flotilla");
    let cms: Api<DynamicObject> = Api::namespaced_with(
        cluster.admin.clone(),
        "default",
        &crate::support::cluster::resource("v1", "ConfigMap", "configmaps"),
    );
    let string_data = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "x"}, "data": "not a map"});
    let namespaces: Api<DynamicObject> = Api::all_with(
        cluster.admin.clone(),
        &crate::support::cluster::resource("v1", "Namespace", "namespaces"),
    );
    let string_spec = serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "x"}, "spec": "not a map"});
    for (api, body) in [(&cms, string_data), (&namespaces, string_spec)] {
        match api.patch("x", &apply, &Patch::Apply(&body)).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 400, "{}", s.message);
                assert!(
                    s.message.contains("cannot unmarshal string"),
                    "{}",
                    s.message
                );
            }
            other => panic!("{other:?}"),
        }
    }
    let fine =
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
    cms.patch("x", &apply, &Patch::Apply(&fine))
        .await
        .expect("the server still serves");
}
