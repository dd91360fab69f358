//! Helm hooks as a sync runs them (Argo CD's mapping): `pre-install`/`pre-upgrade` before the
//! chart's other objects, `post-install`/`post-upgrade` after them; ordered by
//! `helm.sh/hook-weight`, then kind (Helm's install order), then name; deleted by
//! `helm.sh/hook-delete-policy` (`before-hook-creation` when none is given, as Helm does). Test,
//! delete and rollback hooks are never part of a sync and are dropped at render.

use serde_json::Value;

use super::ObjectKey;

const HOOK: &str = "helm.sh/hook";
const WEIGHT: &str = "helm.sh/hook-weight";
const DELETE_POLICY: &str = "helm.sh/hook-delete-policy";
const RESOURCE_POLICY: &str = "helm.sh/resource-policy";

/// When a hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Pre,
    Post,
}

/// A hook object's phase, weight and delete policies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    pub phase: Phase,
    pub weight: i32,
    /// Delete a previous copy before creating it (the default).
    pub before_creation: bool,
    /// Delete it once it succeeded.
    pub on_success: bool,
    /// Delete it once it failed.
    pub on_failure: bool,
}

/// The hook an object is, if its annotations make it one that a sync runs.
pub fn of(body: &Value) -> Option<Hook> {
    let annotations = &body["metadata"]["annotations"];
    let events: Vec<String> = annotations[HOOK]
        .as_str()?
        .split(',')
        .map(|e| e.trim().to_ascii_lowercase())
        .collect();
    let has = |e: &str| events.iter().any(|x| x == e);
    let phase = if has("pre-install") || has("pre-upgrade") {
        Phase::Pre
    } else if has("post-install") || has("post-upgrade") {
        Phase::Post
    } else {
        return None;
    };
    let weight = annotations[WEIGHT]
        .as_str()
        .and_then(|w| w.trim().parse().ok())
        .unwrap_or(0);
    let policies: Vec<String> = annotations[DELETE_POLICY]
        .as_str()
        .unwrap_or_default()
        .split(',')
        .map(|p| p.trim().to_ascii_lowercase())
        .filter(|p| !p.is_empty())
        .collect();
    let policy = |p: &str| policies.iter().any(|x| x == p);
    Some(Hook {
        phase,
        weight,
        before_creation: policies.is_empty() || policy("before-hook-creation"),
        on_success: policy("hook-succeeded"),
        on_failure: policy("hook-failed"),
    })
}

/// Whether an object is a Helm hook of any event (a sync's or not).
pub fn is_hook(body: &Value) -> bool {
    body["metadata"]["annotations"][HOOK].is_string()
}

/// Whether an object asks never to be deleted (`helm.sh/resource-policy: keep`).
pub fn keep(body: &Value) -> bool {
    body["metadata"]["annotations"][RESOURCE_POLICY]
        .as_str()
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("keep"))
}

/// Helm's install order of kinds (`pkg/release/util/kind_sorter.go`); other kinds after.
const INSTALL_ORDER: &[&str] = &[
    "PriorityClass",
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodSecurityPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "SecretList",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleList",
    "ClusterRoleBinding",
    "ClusterRoleBindingList",
    "Role",
    "RoleList",
    "RoleBinding",
    "RoleBindingList",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];

/// The order hooks of one phase run in: weight, then kind, then name.
pub fn order_key(hook: &Hook, key: &ObjectKey) -> (i32, usize, String) {
    let kind = INSTALL_ORDER
        .iter()
        .position(|k| *k == key.kind)
        .unwrap_or(INSTALL_ORDER.len());
    (hook.weight, kind, key.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with(annotations: Value) -> Value {
        json!({"metadata": {"annotations": annotations}})
    }

    #[test]
    fn hooks_are_read_as_helm_reads_them() {
        let h = of(&with(
            json!({"helm.sh/hook": "pre-install,pre-upgrade", "helm.sh/hook-weight": "-5"}),
        ))
        .unwrap();
        assert_eq!((h.phase, h.weight), (Phase::Pre, -5));
        assert!(h.before_creation && !h.on_success && !h.on_failure);
        let h = of(&with(json!({"helm.sh/hook": "post-upgrade", "helm.sh/hook-delete-policy": "hook-succeeded, hook-failed"}))).unwrap();
        assert_eq!(h.phase, Phase::Post);
        assert!(!h.before_creation && h.on_success && h.on_failure);
        for off_sync in [
            "test",
            "test-success",
            "pre-delete",
            "post-rollback",
            "nonsense",
        ] {
            assert_eq!(
                of(&with(json!({ "helm.sh/hook": off_sync }))),
                None,
                "{off_sync}"
            );
            assert!(is_hook(&with(json!({ "helm.sh/hook": off_sync }))));
        }
        assert_eq!(of(&json!({"metadata": {}})), None);
        assert!(keep(&with(json!({"helm.sh/resource-policy": "keep"}))));
    }

    #[test]
    fn hooks_run_by_weight_then_kind_then_name() {
        let key = |kind: &str, name: &str| ObjectKey {
            group: String::new(),
            kind: kind.into(),
            namespace: None,
            name: name.into(),
        };
        let hook = |weight| Hook {
            phase: Phase::Pre,
            weight,
            before_creation: true,
            on_success: false,
            on_failure: false,
        };
        let mut list = [
            (hook(1), key("ConfigMap", "a")),
            (hook(0), key("Job", "b")),
            (hook(0), key("ServiceAccount", "z")),
            (hook(-1), key("Job", "c")),
        ];
        list.sort_by_key(|(h, k)| order_key(h, k));
        let names: Vec<&str> = list.iter().map(|(_, k)| k.name.as_str()).collect();
        assert_eq!(names, ["c", "z", "b", "a"]);
    }
}
