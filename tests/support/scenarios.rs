//! The Kubernetes API semantics flotilla relies on, as scenarios that run both against the test
//! API server (`tests/kube_api.rs`) and against a real cluster (`integration/kube_api.rs`), so the
//! stand-in cannot drift from the real thing unnoticed. Each scenario works in namespaces and
//! with cluster-scoped names unique to the run, and leaves nothing behind (`Cluster::run`).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use kube::core::Status;
use kube::discovery::{Discovery, Scope};
use serde_json::{Value, json};

use super::cluster::{Cluster, resource};

/// The API error of a call that must fail.
fn failure<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn apply_params(manager: &str, force: bool) -> PatchParams {
    let mut p = PatchParams::apply(manager);
    p.force = force;
    p
}

fn configmap(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})
}

/// Applies ConfigMap `app` with `data` as `manager`.
async fn apply_app(
    api: &Api<ConfigMap>,
    manager: &str,
    force: bool,
    data: Value,
) -> Result<ConfigMap, kube::Error> {
    let params = apply_params(manager, force);
    api.patch("app", &params, &Patch::Apply(configmap("app", data)))
        .await
}

/// Retries `op` while it is refused with 403, for up to 10 s: a real server's RBAC cache takes a
/// moment to see a new binding.
async fn once_authorized<T, F, Fut>(mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut last = None;
    for _ in 0..50 {
        match op().await {
            Ok(v) => return v,
            Err(kube::Error::Api(s)) if s.code == 403 => last = Some(s),
            Err(e) => panic!("unexpected error: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("still forbidden after 10 s: {last:?}")
}

/// The managers and operations in an object's managedFields.
fn managers(obj: &Value) -> Vec<(String, String)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["manager"].as_str().unwrap_or_default().to_string(),
                e["operation"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn owned_by(obj: &Value, manager: &str) -> Value {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["manager"] == manager)
        .map(|e| e["fieldsV1"].clone())
        .unwrap_or(Value::Null)
}

/// Discovery lists the built-in kinds flotilla touches, with their scope (plain and aggregated).
pub async fn discovery_serves_the_builtin_kinds(c: Arc<Cluster>) {
    let plain = Discovery::new(c.admin.clone())
        .run()
        .await
        .expect("discovery");
    let aggregated = Discovery::new(c.admin.clone())
        .run_aggregated()
        .await
        .expect("aggregated discovery");
    let kinds = [
        ("", "v1", "ConfigMap", true),
        ("", "v1", "Namespace", false),
        ("", "v1", "ServiceAccount", true),
        ("", "v1", "Secret", true),
        ("apps", "v1", "Deployment", true),
        ("batch", "v1", "Job", true),
        ("rbac.authorization.k8s.io", "v1", "RoleBinding", true),
        ("rbac.authorization.k8s.io", "v1", "ClusterRole", false),
        ("networking.k8s.io", "v1", "NetworkPolicy", true),
        ("policy", "v1", "PodDisruptionBudget", true),
        ("coordination.k8s.io", "v1", "Lease", true),
        ("events.k8s.io", "v1", "Event", true),
        (
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            false,
        ),
        (
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingWebhookConfiguration",
            false,
        ),
        ("scheduling.k8s.io", "v1", "PriorityClass", false),
    ];
    for discovery in [&plain, &aggregated] {
        for (group, version, kind, namespaced) in kinds {
            let gvk = GroupVersionKind::gvk(group, version, kind);
            let (ar, caps) = discovery
                .resolve_gvk(&gvk)
                .unwrap_or_else(|| panic!("{kind}.{group} is not discovered"));
            assert_eq!(ar.kind, kind);
            let scope = if namespaced {
                Scope::Namespaced
            } else {
                Scope::Cluster
            };
            assert_eq!(caps.scope, scope, "{kind}");
        }
    }
}

fn crd(group: &str) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("widgets.{group}")},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer"}}},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                }}},
            }],
        },
    })
}

/// A CRD created at run time becomes Established and its kind appears in discovery; its custom
/// resources are served (unknown fields pruned), and go when the CRD goes.
pub async fn a_new_crd_is_established_and_discovered(c: Arc<Cluster>) {
    let group = format!("{}.flotilla.dev", c.name("it"));
    let crds = resource(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
    );
    c.create_cluster_object(crds.clone(), crd(&group)).await;
    let api: Api<DynamicObject> = Api::all_with(c.admin.clone(), &crds);
    let name = format!("widgets.{group}");
    let mut established = false;
    for _ in 0..100 {
        let obj = api.get(&name).await.expect("the CRD");
        let conditions = serde_json::to_value(&obj.data["status"]["conditions"]).unwrap();
        if conditions
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Established" && c["status"] == "True")
        {
            established = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(established, "the CRD never became Established");

    let gvk = GroupVersionKind::gvk(&group, "v1", "Widget");
    let mut found = None;
    for _ in 0..50 {
        let discovery = Discovery::new(c.admin.clone())
            .run()
            .await
            .expect("discovery");
        if let Some(hit) = discovery.resolve_gvk(&gvk) {
            found = Some(hit);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ar, caps) = found.expect("the new kind is discovered");
    assert_eq!(caps.scope, Scope::Namespaced);
    assert_eq!(ar.plural, "widgets");

    let ns = c.namespace("crd").await;
    let widgets: Api<DynamicObject> = Api::namespaced_with(c.admin.clone(), &ns, &ar);
    let widget = json!({"apiVersion": format!("{group}/v1"), "kind": "Widget",
        "metadata": {"name": "w"}, "spec": {"size": 3}});
    // A new CRD's endpoint can take a moment to serve on a real server.
    let mut created = None;
    for _ in 0..50 {
        match widgets
            .patch("w", &apply_params("flotilla", true), &Patch::Apply(&widget))
            .await
        {
            Ok(obj) => {
                created = Some(obj);
                break;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("apply a Widget: {e}"),
        }
    }
    let created = created.expect("the Widget endpoint serves");
    assert_eq!(created.data["spec"], json!({"size": 3}));
    assert_eq!(created.metadata.generation, Some(1));

    api.delete(&name, &DeleteParams::default())
        .await
        .expect("delete the CRD");
    let mut gone = false;
    for _ in 0..100 {
        match widgets.get("w").await {
            Err(kube::Error::Api(s)) if s.code == 404 => {
                gone = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    assert!(gone, "custom resources go with their CRD");
}

/// Create, get, delete and their failures carry the real `Status` shapes; the server fills uid,
/// resourceVersion and creationTimestamp, and counts generation on spec changes only.
pub async fn objects_have_server_metadata_and_status_shapes(c: Arc<Cluster>) {
    let ns = c.namespace("crud").await;
    let cms: Api<ConfigMap> = Api::namespaced(c.admin.clone(), &ns);
    let body: ConfigMap = serde_json::from_value(configmap("one", json!({"a": "1"}))).unwrap();
    let created = cms
        .create(&PostParams::default(), &body)
        .await
        .expect("create");
    let meta = &created.metadata;
    assert!(
        meta.uid.as_deref().is_some_and(|u| u.len() == 36),
        "{meta:?}"
    );
    assert!(meta.resource_version.is_some() && meta.creation_timestamp.is_some());
    assert_eq!(meta.namespace.as_deref(), Some(ns.as_str()));

    let again = failure(cms.create(&PostParams::default(), &body).await);
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(again.message, "configmaps \"one\" already exists");

    let missing = failure(cms.get("nope").await);
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert_eq!(missing.message, "configmaps \"nope\" not found");

    let bad: ConfigMap = serde_json::from_value(configmap("Bad_Name", json!({}))).unwrap();
    let invalid = failure(cms.create(&PostParams::default(), &bad).await);
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));
    assert!(
        invalid.message.starts_with(
            "ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\""
        ),
        "{}",
        invalid.message
    );
    let causes = invalid.details.expect("details").causes;
    assert_eq!(causes[0].field, "metadata.name");

    let nowhere = c.name("missing-ns");
    let elsewhere: Api<ConfigMap> = Api::namespaced(c.admin.clone(), &nowhere);
    let no_ns = failure(elsewhere.create(&PostParams::default(), &body).await);
    assert_eq!((no_ns.code, no_ns.reason.as_str()), (404, "NotFound"));
    assert_eq!(no_ns.message, format!("namespaces \"{nowhere}\" not found"));
    let no_ns_apply = failure(
        elsewhere
            .patch(
                "one",
                &apply_params("flotilla", true),
                &Patch::Apply(configmap("one", json!({}))),
            )
            .await,
    );
    assert_eq!(no_ns_apply.code, 404);

    // A stale resourceVersion on update is a 409 Conflict.
    let mut stale = created.clone();
    cms.patch(
        "one",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"b": "2"}})),
    )
    .await
    .unwrap();
    stale.data = Some([("a".to_string(), "changed".to_string())].into());
    let conflict = failure(cms.replace("one", &PostParams::default(), &stale).await);
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    assert!(
        conflict.message.contains("the object has been modified"),
        "{}",
        conflict.message
    );

    let deleted = cms
        .delete("one", &DeleteParams::default())
        .await
        .expect("delete");
    let status = deleted
        .right()
        .expect("an immediate delete returns a Status");
    assert!(status.is_success());
    let twice = failure(cms.delete("one", &DeleteParams::default()).await);
    assert_eq!(twice.code, 404);

    // Generation counts spec changes, not metadata changes.
    let deployments = resource("apps/v1", "Deployment", "deployments");
    let api: Api<DynamicObject> = Api::namespaced_with(c.admin.clone(), &ns, &deployments);
    let deploy = deployment("web", 1, "nginx:1.27");
    let d1 = api
        .patch(
            "web",
            &apply_params("flotilla", true),
            &Patch::Apply(&deploy),
        )
        .await
        .unwrap();
    assert_eq!(d1.metadata.generation, Some(1));
    let mut labelled = deploy.clone();
    labelled["metadata"]["labels"] = json!({"team": "a"});
    let d2 = api
        .patch(
            "web",
            &apply_params("flotilla", true),
            &Patch::Apply(&labelled),
        )
        .await
        .unwrap();
    assert_eq!(
        d2.metadata.generation,
        Some(1),
        "a label change keeps the generation"
    );
    labelled["spec"]["replicas"] = json!(2);
    let d3 = api
        .patch(
            "web",
            &apply_params("flotilla", true),
            &Patch::Apply(&labelled),
        )
        .await
        .unwrap();
    assert_eq!(d3.metadata.generation, Some(2));
    // A Deployment's annotations are part of what its generation counts.
    labelled["metadata"]["annotations"] = json!({"flotilla.dev/hash": "abc"});
    let d4 = api
        .patch(
            "web",
            &apply_params("flotilla", true),
            &Patch::Apply(&labelled),
        )
        .await
        .unwrap();
    assert_eq!(d4.metadata.generation, Some(3));

    // Deleting a namespace answers with the namespace, now terminating, not a Status.
    let doomed = c.namespace("doomed").await;
    let namespaces: Api<DynamicObject> =
        Api::all_with(c.admin.clone(), &resource("v1", "Namespace", "namespaces"));
    let answer = namespaces
        .delete(&doomed, &DeleteParams::default())
        .await
        .expect("delete a namespace");
    let ns = answer.left().expect("the namespace object");
    assert!(ns.metadata.deletion_timestamp.is_some());
    assert_eq!(ns.data["status"]["phase"], "Terminating");
}

fn deployment(name: &str, replicas: u32, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    })
}

/// Lists filter by label and field selectors and page with limit/continue.
pub async fn lists_filter_and_page(c: Arc<Cluster>) {
    let ns = c.namespace("list").await;
    let cms: Api<ConfigMap> = Api::namespaced(c.admin.clone(), &ns);
    for (i, tier) in ["web", "web", "db", "db", "cache", "web", "none"]
        .iter()
        .enumerate()
    {
        let mut body = configmap(&format!("cm-{i}"), json!({}));
        body["metadata"]["labels"] = json!({"suite": "list"});
        if *tier != "none" {
            body["metadata"]["labels"]["tier"] = json!(tier);
        }
        cms.create(
            &PostParams::default(),
            &serde_json::from_value(body).unwrap(),
        )
        .await
        .unwrap();
    }
    let names = |list: &kube::api::ObjectList<ConfigMap>| -> Vec<String> {
        list.items
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect()
    };
    let web = cms
        .list(&ListParams::default().labels("tier=web"))
        .await
        .unwrap();
    assert_eq!(names(&web), ["cm-0", "cm-1", "cm-5"]);
    let set = cms
        .list(&ListParams::default().labels("tier in (db,cache)"))
        .await
        .unwrap();
    assert_eq!(names(&set), ["cm-2", "cm-3", "cm-4"]);
    let untiered = cms
        .list(&ListParams::default().labels("suite=list,!tier"))
        .await
        .unwrap();
    assert_eq!(names(&untiered), ["cm-6"]);
    let not_web = cms
        .list(&ListParams::default().labels("suite=list,tier!=web"))
        .await
        .unwrap();
    assert_eq!(names(&not_web), ["cm-2", "cm-3", "cm-4", "cm-6"]);
    let by_name = cms
        .list(&ListParams::default().fields("metadata.name=cm-4"))
        .await
        .unwrap();
    assert_eq!(names(&by_name), ["cm-4"]);

    // Paging: pages of 3, 3 and 1 from one snapshot: a write between pages does not show.
    let mut seen = Vec::new();
    let mut params = ListParams::default().labels("suite=list").limit(3);
    let mut pages = 0;
    loop {
        let page = cms.list(&params).await.unwrap();
        pages += 1;
        seen.extend(names(&page));
        if pages == 1 {
            let extra = configmap("cm-9", json!({}));
            let mut extra = extra;
            extra["metadata"]["labels"] = json!({"suite": "list"});
            cms.create(
                &PostParams::default(),
                &serde_json::from_value(extra).unwrap(),
            )
            .await
            .unwrap();
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        ["cm-0", "cm-1", "cm-2", "cm-3", "cm-4", "cm-5", "cm-6"]
    );
}

/// Apply, then re-apply without a field: the field is gone; managedFields record the manager
/// per field.
pub async fn apply_removes_a_field_no_longer_applied(c: Arc<Cluster>) {
    let ns = c.namespace("apply").await;
    let cms: Api<ConfigMap> = Api::namespaced(c.admin.clone(), &ns);
    let mut first = configmap("app", json!({"a": "1", "b": "2"}));
    first["metadata"]["labels"] = json!({"keep": "yes", "drop": "yes"});
    let applied = cms
        .patch(
            "app",
            &apply_params("flotilla", false),
            &Patch::Apply(&first),
        )
        .await
        .unwrap();
    let v = serde_json::to_value(&applied).unwrap();
    assert_eq!(
        managers(&v),
        [("flotilla".to_string(), "Apply".to_string())]
    );
    let owned = owned_by(&v, "flotilla");
    assert_eq!(owned["f:data"], json!({"f:a": {}, "f:b": {}}));
    assert_eq!(
        owned["f:metadata"]["f:labels"],
        json!({"f:drop": {}, "f:keep": {}})
    );

    let mut second = configmap("app", json!({"a": "1"}));
    second["metadata"]["labels"] = json!({"keep": "yes"});
    let reapplied = cms
        .patch(
            "app",
            &apply_params("flotilla", false),
            &Patch::Apply(&second),
        )
        .await
        .unwrap();
    assert_eq!(
        reapplied.data.unwrap(),
        [("a".to_string(), "1".to_string())].into()
    );
    let labels = reapplied.metadata.labels.unwrap();
    assert!(
        labels.contains_key("keep") && !labels.contains_key("drop"),
        "{labels:?}"
    );

    // Re-applying the same configuration changes nothing, not even the resourceVersion.
    let rv = reapplied.metadata.resource_version.clone();
    let same = cms
        .patch(
            "app",
            &apply_params("flotilla", false),
            &Patch::Apply(&second),
        )
        .await
        .unwrap();
    assert_eq!(same.metadata.resource_version, rv);
}

/// A field applied by two managers with the same value stays when one stops applying it.
pub async fn a_shared_field_stays_with_its_other_owner(c: Arc<Cluster>) {
    let ns = c.namespace("shared").await;
    let cms: Api<ConfigMap> = Api::namespaced(c.admin.clone(), &ns);
    apply_app(&cms, "flotilla", false, json!({"a": "1", "b": "2"}))
        .await
        .unwrap();
    apply_app(&cms, "other", false, json!({"b": "2"}))
        .await
        .unwrap();
    let after = apply_app(&cms, "flotilla", false, json!({"a": "1"}))
        .await
        .unwrap();
    let data = after.data.unwrap();
    assert_eq!(
        data.get("b").map(String::as_str),
        Some("2"),
        "b is still owned by other"
    );
    let v = serde_json::to_value(after.metadata).unwrap();
    let v = json!({"metadata": v});
    assert_eq!(owned_by(&v, "other")["f:data"], json!({"f:b": {}}));
    assert_eq!(owned_by(&v, "flotilla")["f:data"], json!({"f:a": {}}));
}

/// Two managers applying different values conflict (409 naming the field and the manager)
/// unless forced; forcing moves the field to the new manager.
pub async fn conflicting_managers_and_force(c: Arc<Cluster>) {
    let ns = c.namespace("conflict").await;
    let cms: Api<ConfigMap> = Api::namespaced(c.admin.clone(), &ns);
    apply_app(&cms, "first", false, json!({"x": "1", "y": "1"}))
        .await
        .unwrap();
    let clash = failure(apply_app(&cms, "second", false, json!({"x": "2"})).await);
    assert_eq!((clash.code, clash.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        clash.message,
        "Apply failed with 1 conflict: conflict with \"first\": .data.x"
    );
    let causes = clash.details.expect("details").causes;
    assert_eq!(causes[0].field, ".data.x");
    assert_eq!(causes[0].reason, "FieldManagerConflict");
    assert_eq!(
        cms.get("app").await.unwrap().data.unwrap()["x"],
        "1",
        "a conflict changes nothing"
    );
    let two = failure(apply_app(&cms, "third", false, json!({"x": "9", "y": "9"})).await);
    assert_eq!(
        two.message,
        "Apply failed with 2 conflicts: conflicts with \"first\":\n- .data.x\n- .data.y"
    );

    let forced = apply_app(&cms, "second", true, json!({"x": "2"}))
        .await
        .unwrap();
    assert_eq!(forced.data.as_ref().unwrap()["x"], "2");
    let v = json!({"metadata": serde_json::to_value(&forced.metadata).unwrap()});
    assert_eq!(owned_by(&v, "first")["f:data"], json!({"f:y": {}}));
    assert_eq!(owned_by(&v, "second")["f:data"], json!({"f:x": {}}));

    // An edit by another client (an Update) conflicts with the applier's next apply, and force
    // takes the field back: the way flotilla reverts a `kubectl edit`.
    cms.patch(
        "app",
        &PatchParams {
            field_manager: Some("kubectl-edit".into()),
            ..Default::default()
        },
        &Patch::Merge(json!({"data": {"x": "edited"}})),
    )
    .await
    .unwrap();
    let edited = cms.get("app").await.unwrap();
    let v = json!({"metadata": serde_json::to_value(&edited.metadata).unwrap()});
    assert!(managers(&v).contains(&("kubectl-edit".into(), "Update".into())));
    let clash = failure(apply_app(&cms, "second", false, json!({"x": "2"})).await);
    assert_eq!(
        clash.message,
        "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using v1: .data.x"
    );
    let reverted = apply_app(&cms, "second", true, json!({"x": "2"}))
        .await
        .unwrap();
    assert_eq!(reverted.data.unwrap()["x"], "2");
}

/// `dryRun=All` returns the would-be object and stores nothing, for apply, create and delete.
pub async fn dry_run_stores_nothing(c: Arc<Cluster>) {
    let ns = c.namespace("dry").await;
    let cms: Api<ConfigMap> = Api::namespaced(c.admin.clone(), &ns);
    let mut params = apply_params("flotilla", true);
    params.dry_run = true;
    let would = cms
        .patch(
            "app",
            &params,
            &Patch::Apply(configmap("app", json!({"a": "1"}))),
        )
        .await
        .unwrap();
    assert_eq!(would.data.unwrap()["a"], "1");
    assert_eq!(
        failure(cms.get("app").await).code,
        404,
        "a dry-run apply creates nothing"
    );

    let post = PostParams {
        dry_run: true,
        field_manager: None,
    };
    cms.create(
        &post,
        &serde_json::from_value(configmap("app", json!({"a": "1"}))).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        failure(cms.get("app").await).code,
        404,
        "a dry-run create creates nothing"
    );

    let real = apply_app(&cms, "flotilla", true, json!({"a": "1"}))
        .await
        .unwrap();
    let would = cms
        .patch(
            "app",
            &params,
            &Patch::Apply(configmap("app", json!({"a": "2"}))),
        )
        .await
        .unwrap();
    assert_eq!(would.data.unwrap()["a"], "2");
    let live = cms.get("app").await.unwrap();
    assert_eq!(live.data.unwrap()["a"], "1");
    assert_eq!(
        live.metadata.resource_version,
        real.metadata.resource_version
    );

    cms.delete(
        "app",
        &DeleteParams {
            dry_run: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        cms.get("app").await.is_ok(),
        "a dry-run delete deletes nothing"
    );
}

/// Immutable fields are refused with 422 naming the field: a Deployment's selector, a Job's
/// template, the data of an immutable ConfigMap.
pub async fn immutable_fields_are_refused(c: Arc<Cluster>) {
    let ns = c.namespace("immutable").await;
    let deployments: Api<DynamicObject> = Api::namespaced_with(
        c.admin.clone(),
        &ns,
        &resource("apps/v1", "Deployment", "deployments"),
    );
    let apply = apply_params("flotilla", true);
    deployments
        .patch("web", &apply, &Patch::Apply(deployment("web", 1, "nginx")))
        .await
        .unwrap();
    let mut moved = deployment("web", 1, "nginx");
    moved["spec"]["selector"]["matchLabels"] = json!({"app": "web", "tier": "front"});
    moved["spec"]["template"]["metadata"]["labels"] = json!({"app": "web", "tier": "front"});
    let refused = failure(
        deployments
            .patch("web", &apply, &Patch::Apply(&moved))
            .await,
    );
    assert_eq!((refused.code, refused.reason.as_str()), (422, "Invalid"));
    assert!(
        refused
            .message
            .starts_with("Deployment.apps \"web\" is invalid: spec.selector: Invalid value: "),
        "{}",
        refused.message
    );
    assert!(
        refused.message.ends_with("field is immutable"),
        "{}",
        refused.message
    );
    assert_eq!(
        refused.details.expect("details").causes[0].field,
        "spec.selector"
    );

    let jobs: Api<DynamicObject> =
        Api::namespaced_with(c.admin.clone(), &ns, &resource("batch/v1", "Job", "jobs"));
    let job = |image: &str| {
        json!({
            "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once"},
            "spec": {"suspend": true, "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "run", "image": image}]}}},
        })
    };
    jobs.patch("once", &apply, &Patch::Apply(job("busybox:1")))
        .await
        .unwrap();
    let refused = failure(
        jobs.patch("once", &apply, &Patch::Apply(job("busybox:2")))
            .await,
    );
    assert_eq!(refused.code, 422);
    assert!(
        refused
            .message
            .starts_with("Job.batch \"once\" is invalid: "),
        "{}",
        refused.message
    );
    assert_eq!(refused.reason, "Invalid");
    // The field path is guaranteed to lie under the template; how deep the server names it is
    // not (`spec.template` up to 1.35, `spec.template.spec` on 1.36).
    let causes = refused.details.expect("details").causes;
    assert!(
        causes.iter().any(|c| c.field.starts_with("spec.template")),
        "{causes:?}"
    );

    let cms: Api<ConfigMap> = Api::namespaced(c.admin.clone(), &ns);
    let mut frozen = configmap("frozen", json!({"a": "1"}));
    frozen["immutable"] = json!(true);
    cms.patch("frozen", &apply, &Patch::Apply(&frozen))
        .await
        .unwrap();
    frozen["data"]["a"] = json!("2");
    let refused = failure(cms.patch("frozen", &apply, &Patch::Apply(&frozen)).await);
    assert_eq!(refused.code, 422);
    assert!(
        refused
            .message
            .contains("data: Forbidden: field is immutable when `immutable` is set"),
        "{}",
        refused.message
    );
}

/// A tenant's ServiceAccount bound to `admin` in its namespace, impersonated by the admin, may
/// write there and nowhere else: not another tenant's namespace, not kube-system, not a
/// Namespace, not a ClusterRoleBinding.
pub async fn impersonated_tenant_is_confined_to_its_namespace(c: Arc<Cluster>) {
    let mine = c.namespace("tenant-a").await;
    let theirs = c.namespace("tenant-b").await;
    bind(&c, &mine, "admin", "flotilla-tenant").await;
    let user = format!("system:serviceaccount:{mine}:flotilla-tenant");
    let tenant = c.impersonating(&user, &[]).await;
    let apply = apply_params("flotilla", true);

    let own: Api<ConfigMap> = Api::namespaced(tenant.clone(), &mine);
    once_authorized(|| async {
        own.patch(
            "app",
            &apply,
            &Patch::Apply(configmap("app", json!({"a": "1"}))),
        )
        .await
    })
    .await;

    let other: Api<ConfigMap> = Api::namespaced(tenant.clone(), &theirs);
    let refused = failure(
        other
            .patch(
                "app",
                &apply,
                &Patch::Apply(configmap("app", json!({"a": "1"}))),
            )
            .await,
    );
    assert_eq!((refused.code, refused.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        refused.message,
        format!(
            "configmaps \"app\" is forbidden: User \"{user}\" cannot patch resource \"configmaps\" in API group \"\" in the namespace \"{theirs}\""
        )
    );
    let system: Api<ConfigMap> = Api::namespaced(tenant.clone(), "kube-system");
    assert_eq!(
        failure(
            system
                .patch("app", &apply, &Patch::Apply(configmap("app", json!({}))))
                .await
        )
        .code,
        403
    );

    let namespaces: Api<DynamicObject> =
        Api::all_with(tenant.clone(), &resource("v1", "Namespace", "namespaces"));
    let name = c.name("tenant-made");
    let refused = failure(
        namespaces
            .patch(
                &name,
                &apply,
                &Patch::Apply(
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
                ),
            )
            .await,
    );
    assert_eq!(refused.code, 403);
    // The real RequestInfo treats a namespace's own path as inside that namespace.
    assert!(
        refused.message.ends_with(&format!(
            "cannot patch resource \"namespaces\" in API group \"\" in the namespace \"{name}\""
        )),
        "{}",
        refused.message
    );

    let crbs = resource(
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
    );
    let bindings: Api<DynamicObject> = Api::all_with(tenant.clone(), &crbs);
    let crb = c.name("tenant-escape");
    let refused = failure(bindings.patch(&crb, &apply, &Patch::Apply(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": crb},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "flotilla-tenant", "namespace": mine}],
    }))).await);
    assert_eq!(refused.code, 403);
    c.track(crbs, &crb);
}

/// Binds `role` (a ClusterRole) to a new ServiceAccount `sa` in `namespace`.
async fn bind(c: &Cluster, namespace: &str, role: &str, sa: &str) {
    let api: Api<DynamicObject> = Api::namespaced_with(
        c.admin.clone(),
        namespace,
        &resource("v1", "ServiceAccount", "serviceaccounts"),
    );
    let apply = apply_params("flotilla", true);
    api.patch(
        sa,
        &apply,
        &Patch::Apply(
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}}),
        ),
    )
    .await
    .unwrap();
    let bindings: Api<DynamicObject> =
        Api::namespaced_with(c.admin.clone(), namespace, &rolebindings());
    let name = format!("{sa}-{role}");
    bindings.patch(&name, &apply, &Patch::Apply(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
    }))).await.unwrap();
}

fn rolebindings() -> ApiResource {
    resource(
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        "rolebindings",
    )
}

/// Impersonation needs the `impersonate` verb: a ServiceAccount without it is refused, and may
/// once it is granted `impersonate` on that ServiceAccount. Bearer tokens from TokenRequest
/// authenticate; an unknown token is 401.
pub async fn impersonation_needs_the_impersonate_verb(c: Arc<Cluster>) {
    let ns = c.namespace("imp").await;
    bind(&c, &ns, "edit", "tenant").await;
    let token = c.service_account_token(&ns, "agent").await;
    let agent = c.with_token(&token).await;
    let tenant_user = format!("system:serviceaccount:{ns}:tenant");

    let marker = serde_json::from_value(configmap("marker", json!({}))).unwrap();
    Api::<ConfigMap>::namespaced(c.admin.clone(), &ns)
        .create(&PostParams::default(), &marker)
        .await
        .unwrap();

    // Authenticated, but not allowed to read configmaps yet.
    let own: Api<ConfigMap> = Api::namespaced(agent.clone(), &ns);
    let refused = failure(own.list(&ListParams::default()).await);
    assert_eq!((refused.code, refused.reason.as_str()), (403, "Forbidden"));
    assert_eq!(refused.details.expect("details").kind, "configmaps");

    let as_tenant = impersonate(&c, &token, &tenant_user).await;
    let tenant_cms: Api<ConfigMap> = Api::namespaced(as_tenant.clone(), &ns);
    // Refused with 403 Forbidden; the wording is not guaranteed (1.36's constrained
    // impersonation says `cannot impersonate-on:serviceaccount:list ...`).
    let refused = failure(tenant_cms.list(&ListParams::default()).await);
    assert_eq!((refused.code, refused.reason.as_str()), (403, "Forbidden"));

    // Grant impersonation of that one ServiceAccount.
    let roles: Api<DynamicObject> = Api::namespaced_with(
        c.admin.clone(),
        &ns,
        &resource("rbac.authorization.k8s.io/v1", "Role", "roles"),
    );
    let apply = apply_params("flotilla", true);
    roles.patch("impersonate-tenant", &apply, &Patch::Apply(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "impersonate-tenant"},
        "rules": [{"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["impersonate"], "resourceNames": ["tenant"]}],
    }))).await.unwrap();
    let bindings: Api<DynamicObject> = Api::namespaced_with(c.admin.clone(), &ns, &rolebindings());
    bindings.patch("agent-impersonates", &apply, &Patch::Apply(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "agent-impersonates"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "impersonate-tenant"},
        "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": ns}],
    }))).await.unwrap();
    let listed = once_authorized(|| async { tenant_cms.list(&ListParams::default()).await }).await;
    assert!(
        listed
            .items
            .iter()
            .any(|cm| cm.metadata.name.as_deref() == Some("marker"))
    );

    // The grant names one ServiceAccount: another is still refused.
    let other = impersonate(&c, &token, &format!("system:serviceaccount:{ns}:default")).await;
    let refused = failure(
        Api::<ConfigMap>::namespaced(other, &ns)
            .list(&ListParams::default())
            .await,
    );
    assert_eq!(refused.code, 403);

    let stranger = c.with_token("not-a-token").await;
    let refused = failure(
        Api::<ConfigMap>::namespaced(stranger, &ns)
            .list(&ListParams::default())
            .await,
    );
    assert_eq!(
        (refused.code, refused.reason.as_str()),
        (401, "Unauthorized")
    );
}

/// A client authenticating with `token` and impersonating `user`.
async fn impersonate(c: &Cluster, token: &str, user: &str) -> kube::Client {
    let mut config = c.token_config(token).await;
    config.auth_info.impersonate = Some(user.into());
    kube::Client::try_from(config).expect("a client")
}

/// The default ClusterRoles behave as on a real cluster: `view` reads but does not write or
/// read Secrets, `edit` writes workloads and Secrets but not RBAC, `admin` manages Roles and
/// RoleBindings in its namespace.
pub async fn default_roles_grant_what_they_grant_on_a_real_cluster(c: Arc<Cluster>) {
    let ns = c.namespace("roles").await;
    for role in ["view", "edit", "admin"] {
        bind(&c, &ns, role, role).await;
    }
    let client = |sa: &str| {
        let user = format!("system:serviceaccount:{ns}:{sa}");
        let c = Arc::clone(&c);
        async move { c.impersonating(&user, &[]).await }
    };
    let apply = apply_params("flotilla", true);
    let viewer = client("view").await;
    let cms: Api<ConfigMap> = Api::namespaced(viewer.clone(), &ns);
    once_authorized(|| async { cms.list(&ListParams::default()).await }).await;
    assert_eq!(
        failure(
            cms.patch("v", &apply, &Patch::Apply(configmap("v", json!({}))))
                .await
        )
        .code,
        403
    );
    let secrets: Api<DynamicObject> =
        Api::namespaced_with(viewer, &ns, &resource("v1", "Secret", "secrets"));
    assert_eq!(
        failure(secrets.list(&ListParams::default()).await).code,
        403
    );

    let editor = client("edit").await;
    let deployments: Api<DynamicObject> = Api::namespaced_with(
        editor.clone(),
        &ns,
        &resource("apps/v1", "Deployment", "deployments"),
    );
    once_authorized(|| async {
        deployments
            .patch("web", &apply, &Patch::Apply(deployment("web", 1, "nginx")))
            .await
    })
    .await;
    let roles = resource("rbac.authorization.k8s.io/v1", "Role", "roles");
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]});
    let as_editor: Api<DynamicObject> = Api::namespaced_with(editor, &ns, &roles);
    assert_eq!(
        failure(
            as_editor
                .patch("reader", &apply, &Patch::Apply(&role))
                .await
        )
        .code,
        403
    );

    let admin = client("admin").await;
    let as_admin: Api<DynamicObject> = Api::namespaced_with(admin.clone(), &ns, &roles);
    once_authorized(|| async { as_admin.patch("reader", &apply, &Patch::Apply(&role)).await })
        .await;
}

/// A namespace admin cannot grant what it does not hold: a Role with a rule beyond `admin`, or
/// a RoleBinding to `cluster-admin`, is refused by the escalation check; binding `view` is fine;
/// a binding to a Role that does not exist yet is refused as not found.
pub async fn escalation_is_refused(c: Arc<Cluster>) {
    let ns = c.namespace("escalate").await;
    bind(&c, &ns, "admin", "tenant").await;
    let tenant = c
        .impersonating(&format!("system:serviceaccount:{ns}:tenant"), &[])
        .await;
    let apply = apply_params("flotilla", true);
    let roles: Api<DynamicObject> = Api::namespaced_with(
        tenant.clone(),
        &ns,
        &resource("rbac.authorization.k8s.io/v1", "Role", "roles"),
    );
    let greedy = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "greedy"},
        "rules": [{"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["get"]}]});
    let modest = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "modest"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]});
    once_authorized(|| async { roles.patch("modest", &apply, &Patch::Apply(&modest)).await }).await;
    let refused = failure(roles.patch("greedy", &apply, &Patch::Apply(&greedy)).await);
    assert_eq!((refused.code, refused.reason.as_str()), (403, "Forbidden"));
    assert!(
        refused
            .message
            .contains("is attempting to grant RBAC permissions not currently held"),
        "{}",
        refused.message
    );
    assert!(
        refused.message.contains("customresourcedefinitions"),
        "{}",
        refused.message
    );

    let bindings: Api<DynamicObject> = Api::namespaced_with(tenant, &ns, &rolebindings());
    let binding = |name: &str, role: &str| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}],
        })
    };
    let refused = failure(
        bindings
            .patch("up", &apply, &Patch::Apply(binding("up", "cluster-admin")))
            .await,
    );
    assert_eq!(refused.code, 403);
    assert!(
        refused
            .message
            .contains("is attempting to grant RBAC permissions not currently held"),
        "{}",
        refused.message
    );
    bindings
        .patch("down", &apply, &Patch::Apply(binding("down", "view")))
        .await
        .expect("binding view is within admin");

    // A caller who may not `bind` cannot bind a Role that does not exist yet: the server looks
    // the role up to compare its rules, and the write is refused as not found. Once the Role is
    // there, the same binding is accepted.
    let scanner_binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "scanner"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "scanner"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}],
    });
    let refused = failure(
        bindings
            .patch("scanner", &apply, &Patch::Apply(&scanner_binding))
            .await,
    );
    assert_eq!((refused.code, refused.reason.as_str()), (404, "NotFound"));
    let scanner = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "scanner"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]});
    roles
        .patch("scanner", &apply, &Patch::Apply(&scanner))
        .await
        .expect("a Role within admin");
    bindings
        .patch("scanner", &apply, &Patch::Apply(&scanner_binding))
        .await
        .expect("the binding, once its Role exists");
}

/// A watch from a list's resourceVersion sees later changes, in order, as ADDED/MODIFIED/DELETED.
pub async fn watch_sees_changes_after_a_resource_version(c: Arc<Cluster>) {
    use futures_util::{StreamExt, TryStreamExt};
    let ns = c.namespace("watch").await;
    let cms: Api<ConfigMap> = Api::namespaced(c.admin.clone(), &ns);
    let list = cms
        .list(&ListParams::default().labels("suite=watch"))
        .await
        .unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let params = kube::api::WatchParams::default()
        .labels("suite=watch")
        .timeout(20);
    let mut stream = cms.watch(&params, &rv).await.unwrap().boxed();
    let mut body = configmap("w", json!({"a": "1"}));
    body["metadata"]["labels"] = json!({"suite": "watch"});
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(body).unwrap(),
    )
    .await
    .unwrap();
    cms.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"a": "2"}})),
    )
    .await
    .unwrap();
    cms.delete("w", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(20), stream.try_next())
            .await
            .expect("an event within 20 s")
            .expect("a good event")
            .expect("the watch is open");
        match event {
            kube::api::WatchEvent::Added(cm) => {
                seen.push(format!("ADDED {}", cm.data.unwrap()["a"]))
            }
            kube::api::WatchEvent::Modified(cm) => {
                seen.push(format!("MODIFIED {}", cm.data.unwrap()["a"]))
            }
            kube::api::WatchEvent::Deleted(cm) => {
                seen.push(format!("DELETED {}", cm.metadata.name.unwrap()))
            }
            kube::api::WatchEvent::Bookmark(_) => {}
            kube::api::WatchEvent::Error(e) => panic!("watch error: {e:?}"),
        }
    }
    assert_eq!(seen, ["ADDED 1", "MODIFIED 2", "DELETED w"]);
}

/// Impersonated groups count for authorization: a RoleBinding to a group lets a user
/// impersonated with that group (`Impersonate-Group`) read, and the same user without it cannot.
pub async fn impersonated_groups_are_authorized(c: Arc<Cluster>) {
    let ns = c.namespace("groups").await;
    let group = c.name("readers");
    let bindings: Api<DynamicObject> = Api::namespaced_with(c.admin.clone(), &ns, &rolebindings());
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "readers"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}],
    });
    bindings
        .patch(
            "readers",
            &apply_params("flotilla", true),
            &Patch::Apply(&binding),
        )
        .await
        .unwrap();
    let user = c.name("bob");
    let member = c.impersonating(&user, &[group.as_str()]).await;
    let cms: Api<ConfigMap> = Api::namespaced(member, &ns);
    once_authorized(|| async { cms.list(&ListParams::default()).await }).await;
    let outsider = c.impersonating(&user, &[]).await;
    let refused = failure(
        Api::<ConfigMap>::namespaced(outsider, &ns)
            .list(&ListParams::default())
            .await,
    );
    assert_eq!(refused.code, 403);
    assert!(
        refused
            .message
            .contains(&format!("User \"{user}\" cannot list")),
        "{}",
        refused.message
    );
}
