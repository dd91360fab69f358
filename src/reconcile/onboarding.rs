//! A tenant's onboarding: its namespaces (with the platform's labels, annotations, quota and
//! limit range), its ServiceAccount and its RoleBindings, applied with the agent's identity.

use serde_json::json;

use super::{DEFAULT_TIMEOUT, Mode, ONBOARDING, SetOptions, SetSpec};
use crate::fleet::{self, Identity, Tenant};
use crate::inventory::Parent;
use crate::render::{self, LABEL_APP, LABEL_TENANT, Object, ObjectKey, Scope};

/// A tenant's namespaces, its ServiceAccount in the first, and a RoleBinding of its role to the
/// ServiceAccount in each namespace; applied with the agent's identity. Namespaces are never
/// pruned.
pub(crate) fn onboarding(
    tenant: &Tenant,
    defaults: &fleet::NamespacePolicy,
    mode: Mode,
) -> SetSpec {
    let labels = json!({ LABEL_TENANT: tenant.name, LABEL_APP: ONBOARDING });
    let home = tenant.namespaces.first().cloned().unwrap_or_default();
    let mut objects = Vec::new();
    for ns in &tenant.namespaces {
        // The platform's labels and annotations (flotilla's own labels win), and its quota and
        // limit range: the tenant's role may not write any of them, and a change made with
        // kubectl is drift, reverted like any other.
        let policy = tenant.policy_of(ns, defaults);
        let mut ns_labels = json!(policy.labels);
        for (k, v) in labels.as_object().into_iter().flatten() {
            ns_labels[k] = v.clone();
        }
        let mut metadata = json!({"name": ns, "labels": ns_labels});
        if !policy.annotations.is_empty() {
            metadata["annotations"] = json!(policy.annotations);
        }
        objects.push(made(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}),
            Scope::Cluster,
        ));
        for (kind, spec) in [
            ("ResourceQuota", &policy.resource_quota),
            ("LimitRange", &policy.limit_range),
        ] {
            if let Some(spec) = spec {
                objects.push(made(
                    json!({"apiVersion": "v1", "kind": kind,
                        "metadata": {"name": "flotilla-tenant", "namespace": ns, "labels": labels},
                        "spec": spec}),
                    Scope::Namespaced,
                ));
            }
        }
    }
    objects.push(made(
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": tenant.service_account, "namespace": home, "labels": labels}}),
        Scope::Namespaced,
    ));
    for ns in &tenant.namespaces {
        objects.push(made(
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "flotilla-tenant", "namespace": ns, "labels": labels},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": tenant.role},
                "subjects": [{"kind": "ServiceAccount", "name": tenant.service_account,
                    "namespace": home}]}),
            Scope::Namespaced,
        ));
    }
    SetSpec {
        name: onboarding_name(&tenant.name),
        tenant: Some(tenant.name.clone()),
        set: ONBOARDING.into(),
        identity: Identity::Agent,
        parent: Parent::of_onboarding(&tenant.name),
        objects,
        refused: Vec::new(),
        options: SetOptions {
            prune: true,
            force: true,
            allow_empty: false,
            recreate: false,
            wait: false,
            timeout: DEFAULT_TIMEOUT,
            keep_namespaces: true,
            limits: None,
        },
        mode,
        fleet: None,
        shared: None,
    }
}

fn made(body: serde_json::Value, scope: Scope) -> Object {
    let api_version = body["apiVersion"].as_str().unwrap_or_default().to_string();
    let key = ObjectKey {
        group: api_version
            .rsplit_once('/')
            .map_or("", |(g, _)| g)
            .to_string(),
        kind: body["kind"].as_str().unwrap_or_default().to_string(),
        namespace: body["metadata"]["namespace"].as_str().map(str::to_string),
        name: body["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    };
    Object {
        key,
        api_version,
        scope,
        hash: render::hash(&body),
        hook: None,
        body: render::Body::of(&body),
        file: "onboarding".into(),
        line: 0,
        refused: None,
    }
}

/// The name of a tenant's onboarding set in reports: `tenant ai: onboarding`.
pub(crate) fn onboarding_name(tenant: &str) -> String {
    format!("tenant {tenant}: onboarding")
}
