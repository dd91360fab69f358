//! Object post-processing and checks, on plain documents (no files, no tools).

use std::collections::BTreeMap;

use serde_json::json;

use super::objects::{Document, hash};
use super::{Scope, check_duplicates};
use crate::fleet::{Identity, Limits, Unit, UnitId, UnitOptions, UnitSource};

/// Objects with plain hashes (no key for Secrets).
fn finish(
    unit: &Unit,
    documents: Vec<Document>,
) -> Result<Vec<super::Object>, Vec<crate::fleet::Problem>> {
    super::objects::finish(unit, documents, None)
}

fn tenant_unit(app: &str) -> Unit {
    Unit {
        decryption: Vec::new(),
        id: UnitId::app("ai", app),
        identity: Identity::ServiceAccount {
            namespace: "ai".into(),
            name: "flotilla-tenant".into(),
        },
        namespace: Some("ai".into()),
        source: UnitSource::Tenant {
            path: format!("apps/{app}"),
        },
        values: json!({}),
        values_files: vec![],
        release_name: app.into(),
        vars: BTreeMap::new(),
        depends_on: vec![],
        after_infra: vec![],
        options: UnitOptions::default(),
        limits: Some(Limits {
            namespaces: vec!["ai".into(), "ai-jobs".into()],
            cluster_scoped_kinds: vec!["PriorityClass".into()],
            remote_bases: false,
        }),
    }
}

fn doc(body: serde_json::Value, line: u32) -> Document {
    Document {
        body,
        file: "apps/x/all.yaml".into(),
        line,
    }
}

/// The problems of a unit's documents: its render errors, or the objects it refused (refused
/// objects do not fail the render; they are reported and never sent).
fn problems(unit: &Unit, docs: Vec<Document>) -> Vec<String> {
    let list = match finish(unit, docs) {
        Ok(objects) => objects.iter().filter_map(|o| o.refusal(&unit.id)).collect(),
        Err(list) => list,
    };
    assert!(!list.is_empty(), "no problem found");
    list.into_iter().map(|p| p.to_string()).collect()
}

#[test]
fn namespaced_objects_get_the_unit_namespace_and_ownership_labels() {
    let objects = finish(
        &tenant_unit("web"),
        vec![doc(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
            1,
        )],
    )
    .unwrap();
    let o = &objects[0];
    assert_eq!(o.key.namespace.as_deref(), Some("ai"));
    assert_eq!(o.body.value()["metadata"]["namespace"], "ai");
    assert_eq!(
        o.body.value()["metadata"]["labels"]["flotilla.dev/tenant"],
        "ai"
    );
    assert_eq!(
        o.body.value()["metadata"]["labels"]["flotilla.dev/app"],
        "web"
    );
    assert_eq!(o.scope, Scope::Namespaced);
    assert_eq!(o.hash, hash(&o.body.value()));
    assert_eq!(o.hash.len(), 64);
}

#[test]
fn an_explicit_namespace_of_the_tenant_is_kept() {
    let objects = finish(
        &tenant_unit("web"),
        vec![doc(json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "ai-jobs"}}), 1)],
    )
    .unwrap();
    assert_eq!(objects[0].key.namespace.as_deref(), Some("ai-jobs"));
}

#[test]
fn missing_identity_fields_are_named() {
    let p = problems(
        &tenant_unit("web"),
        vec![
            doc(json!({"kind": "ConfigMap", "metadata": {"name": "c"}}), 1),
            doc(json!({"apiVersion": "v1", "metadata": {}}), 5),
            doc(json!("just a string"), 9),
        ],
    );
    assert_eq!(
        p,
        vec![
            "tenant ai, app web: apps/x/all.yaml:1: ConfigMap c: missing apiVersion",
            "tenant ai, app web: apps/x/all.yaml:5: missing kind, metadata.name",
            "tenant ai, app web: apps/x/all.yaml:9: a document must be a mapping (an object), not a scalar or a list",
        ]
    );
}

#[test]
fn a_namespace_the_tenant_does_not_own_is_refused() {
    let p = problems(
        &tenant_unit("web"),
        vec![doc(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "kube-system"}}),
            3,
        )],
    );
    assert_eq!(
        p,
        vec![
            "tenant ai, app web: apps/x/all.yaml:3: Secret kube-system/s: namespace kube-system is not one of the tenant's namespaces (ai, ai-jobs); refused"
        ]
    );
}

#[test]
fn cluster_scoped_kinds_need_the_tenant_limits() {
    let unit = tenant_unit("web");
    let allowed = doc(
        json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "p", "namespace": "ai"}, "value": 1}),
        1,
    );
    let objects = finish(&unit, vec![allowed]).unwrap();
    assert_eq!(
        objects[0].key.namespace, None,
        "a cluster-scoped object carries no namespace"
    );
    assert!(
        objects[0].body.value()["metadata"]
            .get("namespace")
            .is_none()
    );

    let p = problems(
        &unit,
        vec![doc(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}),
            2,
        )],
    );
    assert_eq!(
        p,
        vec![
            "tenant ai, app web: apps/x/all.yaml:2: Namespace other: cluster-scoped kind Namespace is not in the tenant's limits.clusterScopedKinds; refused"
        ]
    );
}

#[test]
fn lists_are_flattened_and_crds_of_the_unit_decide_scope() {
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced", "names": {"kind": "Widget", "plural": "widgets"}}
    });
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}},
        {"apiVersion": "other.io/v1", "kind": "Gizmo", "metadata": {"name": "g"}}
    ]});
    let mut unit = tenant_unit("web");
    unit.limits
        .as_mut()
        .unwrap()
        .cluster_scoped_kinds
        .push("apiextensions.k8s.io/CustomResourceDefinition".into());
    let objects = finish(&unit, vec![doc(list, 1), doc(crd, 9)]).unwrap();
    assert_eq!(objects.len(), 3);
    assert_eq!(
        (objects[0].key.kind.as_str(), objects[0].scope),
        ("Widget", Scope::Namespaced)
    );
    assert_eq!(objects[0].key.namespace.as_deref(), Some("ai"));
    assert_eq!(
        (objects[1].key.kind.as_str(), objects[1].scope),
        ("Gizmo", Scope::Unknown)
    );
    assert_eq!(
        objects[1].key.namespace.as_deref(),
        Some("ai"),
        "a tenant's unknown kind stays in its namespace"
    );
}

#[test]
fn infra_objects_must_name_their_namespace() {
    let mut unit = tenant_unit("infra");
    unit.id = UnitId::infra_named("infra");
    unit.limits = None;
    unit.namespace = None;
    let p = problems(
        &unit,
        vec![doc(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
            1,
        )],
    );
    assert_eq!(
        p,
        vec![
            "cluster infra: apps/x/all.yaml:1: ConfigMap c: cluster infrastructure must name metadata.namespace"
        ]
    );
}

#[test]
fn the_same_object_twice_in_one_unit_is_refused() {
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    let p = problems(&tenant_unit("web"), vec![doc(cm.clone(), 1), doc(cm, 7)]);
    assert_eq!(
        p,
        vec![
            "tenant ai, app web: apps/x/all.yaml:7: ConfigMap ai/c: also defined at apps/x/all.yaml:1"
        ]
    );
}

#[test]
fn the_same_object_from_two_units_fails_both() {
    let cm = || {
        doc(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}}),
            1,
        )
    };
    let other = doc(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "mine"}}),
        1,
    );
    let mut results = BTreeMap::new();
    for (app, docs) in [("a", vec![cm()]), ("b", vec![cm()]), ("c", vec![other])] {
        let unit = tenant_unit(app);
        results.insert(unit.id.clone(), finish(&unit, docs));
    }
    check_duplicates(&mut results);
    let text = |app: &str| -> Vec<String> {
        results[&UnitId::app("ai", app)]
            .as_ref()
            .unwrap_err()
            .iter()
            .map(|p| p.to_string())
            .collect()
    };
    assert_eq!(
        text("a"),
        vec![
            "tenant ai, app a: ConfigMap ai/shared is also rendered by ai/b; an object must have one owner"
        ]
    );
    assert_eq!(
        text("b"),
        vec![
            "tenant ai, app b: ConfigMap ai/shared is also rendered by ai/a; an object must have one owner"
        ]
    );
    assert!(
        results[&UnitId::app("ai", "c")].is_ok(),
        "an unrelated unit is untouched"
    );
}

#[test]
fn hashes_are_stable_and_key_order_does_not_matter() {
    let a: serde_json::Value = serde_json::from_str(r#"{"b": 1, "a": {"y": 2, "x": 1}}"#).unwrap();
    let b: serde_json::Value = serde_json::from_str(r#"{"a": {"x": 1, "y": 2}, "b": 1}"#).unwrap();
    assert_eq!(hash(&a), hash(&b));
    assert_ne!(hash(&a), hash(&json!({"a": {"x": 1, "y": 3}, "b": 1})));
}

#[test]
fn a_tenant_cannot_take_down_the_infra_unit_by_rendering_its_object() {
    let quota = || {
        doc(
            json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q", "namespace": "ai"}}),
            1,
        )
    };
    let mut infra = tenant_unit("infra");
    infra.id = UnitId::infra_named("infra");
    infra.limits = None;
    infra.namespace = None;
    let web = tenant_unit("web");
    let mut results = BTreeMap::new();
    results.insert(infra.id.clone(), finish(&infra, vec![quota()]));
    results.insert(web.id.clone(), finish(&web, vec![quota()]));
    check_duplicates(&mut results);
    assert!(
        results[&UnitId::infra_named("infra")].is_ok(),
        "infra keeps its object"
    );
    let p: Vec<String> = results[&web.id]
        .as_ref()
        .unwrap_err()
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(
        p,
        vec![
            "tenant ai, app web: ResourceQuota ai/q belongs to the cluster's infra unit; a tenant cannot render it"
        ]
    );
}

#[test]
fn a_tenant_object_of_unknown_kind_in_a_foreign_namespace_is_refused() {
    let p = problems(
        &tenant_unit("web"),
        vec![doc(
            json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "c", "namespace": "kube-system"}}),
            4,
        )],
    );
    assert_eq!(
        p,
        vec![
            "tenant ai, app web: apps/x/all.yaml:4: Certificate.cert-manager.io kube-system/c: namespace kube-system is not one of the tenant's namespaces (ai, ai-jobs); refused"
        ]
    );
}

#[test]
fn claims_survive_a_failed_render_and_an_older_round() {
    use super::Claims;
    let cm = |name: &str| {
        doc(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}),
            1,
        )
    };
    let (a, b) = (tenant_unit("a"), tenant_unit("b"));
    let placed = vec![a.id.clone(), b.id.clone()];
    let unread = std::collections::BTreeSet::new();
    let mut claims = Claims::default();
    let mut round1 = BTreeMap::new();
    round1.insert(a.id.clone(), finish(&a, vec![cm("owned-by-a")]));
    claims.record(1, &round1, &placed, &unread);

    // A's render fails in a full round; B renders A's object: B fails, A keeps its claim.
    let mut round2 = BTreeMap::new();
    round2.insert(a.id.clone(), Err(vec![]));
    round2.insert(b.id.clone(), finish(&b, vec![cm("owned-by-a")]));
    claims.check(&mut round2);
    let problems = round2[&b.id].as_ref().unwrap_err();
    assert!(
        problems[0].to_string().ends_with(
            "ConfigMap ai/owned-by-a is also rendered by ai/a; an object must have one owner"
        ),
        "{problems:?}"
    );
    claims.record(2, &round2, &placed, &unread);

    // Round 4 moved the object to B; round 3 (an older render, finishing later) does not undo it.
    let mut round4 = BTreeMap::new();
    round4.insert(a.id.clone(), finish(&a, vec![]));
    round4.insert(b.id.clone(), finish(&b, vec![cm("owned-by-a")]));
    claims.record(4, &round4, &placed, &unread);
    let mut round3 = BTreeMap::new();
    round3.insert(a.id.clone(), finish(&a, vec![cm("owned-by-a")]));
    claims.record(3, &round3, &placed, &unread);
    let mut later = BTreeMap::new();
    later.insert(b.id.clone(), finish(&b, vec![cm("owned-by-a")]));
    claims.check(&mut later);
    assert!(later[&b.id].is_ok(), "B owns it since round 4");
}

#[test]
fn a_body_kept_as_text_is_the_same_object_again() {
    // Floats in their last digit (serde_json parses them back exactly), key order, nesting.
    let value = serde_json::json!({
        "kind": "ConfigMap", "apiVersion": "v1",
        "metadata": {"name": "x", "labels": {"b": "1", "a": "2"}},
        "spec": {"ratio": 0.15838287025480557, "big": 1.7976931348623157e308, "n": -3,
                 "list": [1.1, [0.1, {"z": null, "y": true}]]}
    });
    let body = crate::render::Body::of(&value);
    let again = body.value();
    assert_eq!(again, value);
    assert_eq!(hash(&again), hash(&value));
    assert_eq!(
        serde_json::to_string(&again).unwrap(),
        serde_json::to_string(&value).unwrap()
    );
}
