//! Whether a kind is namespaced: the built-in kinds flotilla knows, plus the kinds of
//! CustomResourceDefinitions rendered in the same unit. Anything else is resolved later by
//! discovery against the cluster.

use std::collections::BTreeMap;

/// Where objects of a kind live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Namespaced,
    Cluster,
    /// Not a built-in kind and not defined by a CRD of the unit: discovery decides.
    Unknown,
}

/// (group, kind) of the built-in kinds and their scope.
const BUILTIN: &[(&str, &str, bool)] = &[
    ("", "Binding", true),
    ("", "ComponentStatus", false),
    ("", "ConfigMap", true),
    ("", "Endpoints", true),
    ("", "Event", true),
    ("", "LimitRange", true),
    ("", "Namespace", false),
    ("", "Node", false),
    ("", "PersistentVolume", false),
    ("", "PersistentVolumeClaim", true),
    ("", "Pod", true),
    ("", "PodTemplate", true),
    ("", "ReplicationController", true),
    ("", "ResourceQuota", true),
    ("", "Secret", true),
    ("", "Service", true),
    ("", "ServiceAccount", true),
    (
        "admissionregistration.k8s.io",
        "MutatingWebhookConfiguration",
        false,
    ),
    (
        "admissionregistration.k8s.io",
        "ValidatingAdmissionPolicy",
        false,
    ),
    (
        "admissionregistration.k8s.io",
        "ValidatingAdmissionPolicyBinding",
        false,
    ),
    (
        "admissionregistration.k8s.io",
        "ValidatingWebhookConfiguration",
        false,
    ),
    ("apiextensions.k8s.io", "CustomResourceDefinition", false),
    ("apiregistration.k8s.io", "APIService", false),
    ("apps", "ControllerRevision", true),
    ("apps", "DaemonSet", true),
    ("apps", "Deployment", true),
    ("apps", "ReplicaSet", true),
    ("apps", "StatefulSet", true),
    ("autoscaling", "HorizontalPodAutoscaler", true),
    ("batch", "CronJob", true),
    ("batch", "Job", true),
    ("certificates.k8s.io", "CertificateSigningRequest", false),
    ("coordination.k8s.io", "Lease", true),
    ("discovery.k8s.io", "EndpointSlice", true),
    ("events.k8s.io", "Event", true),
    ("flowcontrol.apiserver.k8s.io", "FlowSchema", false),
    (
        "flowcontrol.apiserver.k8s.io",
        "PriorityLevelConfiguration",
        false,
    ),
    ("networking.k8s.io", "IngressClass", false),
    ("networking.k8s.io", "Ingress", true),
    ("networking.k8s.io", "NetworkPolicy", true),
    ("node.k8s.io", "RuntimeClass", false),
    ("policy", "PodDisruptionBudget", true),
    ("rbac.authorization.k8s.io", "ClusterRole", false),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding", false),
    ("rbac.authorization.k8s.io", "Role", true),
    ("rbac.authorization.k8s.io", "RoleBinding", true),
    ("scheduling.k8s.io", "PriorityClass", false),
    ("storage.k8s.io", "CSIDriver", false),
    ("storage.k8s.io", "CSINode", false),
    ("storage.k8s.io", "CSIStorageCapacity", true),
    ("storage.k8s.io", "StorageClass", false),
    ("storage.k8s.io", "VolumeAttachment", false),
];

/// Kinds known for one unit: the built-ins and the CRDs it renders.
#[derive(Debug, Default)]
pub struct Scopes {
    crds: BTreeMap<(String, String), Scope>,
}

impl Scopes {
    /// Learns the kind a CRD object defines (`spec.group`, `spec.names.kind`, `spec.scope`).
    pub fn learn_crd(&mut self, crd: &serde_json::Value) {
        let spec = &crd["spec"];
        let (Some(group), Some(kind)) = (spec["group"].as_str(), spec["names"]["kind"].as_str())
        else {
            return;
        };
        let scope = match spec["scope"].as_str() {
            Some("Cluster") => Scope::Cluster,
            _ => Scope::Namespaced,
        };
        self.crds
            .insert((group.to_string(), kind.to_string()), scope);
    }

    pub fn of(&self, group: &str, kind: &str) -> Scope {
        if let Some((_, _, namespaced)) = BUILTIN.iter().find(|(g, k, _)| *g == group && *k == kind)
        {
            return if *namespaced {
                Scope::Namespaced
            } else {
                Scope::Cluster
            };
        }
        self.crds
            .get(&(group.to_string(), kind.to_string()))
            .copied()
            .unwrap_or(Scope::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builtin_kinds_and_unit_crds_have_a_scope() {
        let mut scopes = Scopes::default();
        assert_eq!(scopes.of("apps", "Deployment"), Scope::Namespaced);
        assert_eq!(scopes.of("", "Namespace"), Scope::Cluster);
        assert_eq!(scopes.of("example.com", "Widget"), Scope::Unknown);
        scopes.learn_crd(&json!({"spec": {"group": "example.com", "names": {"kind": "Widget"}, "scope": "Namespaced"}}));
        scopes.learn_crd(&json!({"spec": {"group": "example.com", "names": {"kind": "Gadget"}, "scope": "Cluster"}}));
        assert_eq!(scopes.of("example.com", "Widget"), Scope::Namespaced);
        assert_eq!(scopes.of("example.com", "Gadget"), Scope::Cluster);
    }
}
