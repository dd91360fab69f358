//! The kinds the test API server serves: a fixed table of built-in kinds plus the kinds of the
//! CustomResourceDefinitions stored at run time, and the discovery documents built from them.

use serde_json::{Value, json};

/// One served resource (a plural under one group/version).
#[derive(Clone, Debug)]
pub struct Resource {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
    /// Has a `/status` subresource: the main endpoint ignores `status`, and `generation` counts
    /// changes of everything but metadata and status.
    pub status: bool,
    /// Keeps `metadata.generation` (workloads, custom resources, CRDs, webhook configurations).
    pub generation: bool,
    /// Served from a CustomResourceDefinition (lists keep `apiVersion`/`kind` on each item).
    pub custom: bool,
    pub short_names: Vec<String>,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `configmaps` or `deployments.apps`: how the real server names a resource in messages.
    pub fn qualified(&self) -> String {
        qualified(&self.group, &self.plural)
    }

    /// `ConfigMap` or `Deployment.apps`: how validation messages name a kind.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }
}

pub fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

// (group, version, kind, plural, namespaced, status subresource, generation, short names)
type Row = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    bool,
    bool,
    &'static str,
);

#[rustfmt::skip]
const BUILTIN: &[Row] = &[
    ("", "v1", "Namespace", "namespaces", false, true, false, "ns"),
    ("", "v1", "ConfigMap", "configmaps", true, false, false, "cm"),
    ("", "v1", "Secret", "secrets", true, false, false, ""),
    ("", "v1", "ServiceAccount", "serviceaccounts", true, false, false, "sa"),
    ("", "v1", "Service", "services", true, true, false, "svc"),
    ("", "v1", "Pod", "pods", true, true, false, "po"),
    ("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", true, true, false, "pvc"),
    ("", "v1", "PersistentVolume", "persistentvolumes", false, true, false, "pv"),
    ("", "v1", "Endpoints", "endpoints", true, false, false, "ep"),
    ("", "v1", "Event", "events", true, false, false, "ev"),
    ("", "v1", "LimitRange", "limitranges", true, false, false, "limits"),
    ("", "v1", "ResourceQuota", "resourcequotas", true, true, false, "quota"),
    ("", "v1", "Node", "nodes", false, true, false, "no"),
    ("", "v1", "ReplicationController", "replicationcontrollers", true, true, true, "rc"),
    ("apps", "v1", "Deployment", "deployments", true, true, true, "deploy"),
    ("apps", "v1", "StatefulSet", "statefulsets", true, true, true, "sts"),
    ("apps", "v1", "DaemonSet", "daemonsets", true, true, true, "ds"),
    ("apps", "v1", "ReplicaSet", "replicasets", true, true, true, "rs"),
    ("apps", "v1", "ControllerRevision", "controllerrevisions", true, false, false, ""),
    ("batch", "v1", "Job", "jobs", true, true, true, ""),
    ("batch", "v1", "CronJob", "cronjobs", true, true, true, "cj"),
    ("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", true, true, false, "hpa"),
    ("rbac.authorization.k8s.io", "v1", "Role", "roles", true, false, false, ""),
    ("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", false, false, false, ""),
    ("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", true, false, false, ""),
    ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", false, false, false, ""),
    ("networking.k8s.io", "v1", "Ingress", "ingresses", true, true, true, "ing"),
    ("networking.k8s.io", "v1", "IngressClass", "ingressclasses", false, false, false, ""),
    ("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", true, false, true, "netpol"),
    ("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", true, true, true, "pdb"),
    ("coordination.k8s.io", "v1", "Lease", "leases", true, false, false, ""),
    ("events.k8s.io", "v1", "Event", "events", true, false, false, "ev"),
    ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", true, false, false, ""),
    ("scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", false, false, false, "pc"),
    ("storage.k8s.io", "v1", "StorageClass", "storageclasses", false, false, false, "sc"),
    ("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", false, true, true, "crd,crds"),
    ("admissionregistration.k8s.io", "v1", "ValidatingWebhookConfiguration", "validatingwebhookconfigurations", false, false, true, ""),
    ("admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration", "mutatingwebhookconfigurations", false, false, true, ""),
    ("admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicy", "validatingadmissionpolicies", false, true, true, ""),
    ("admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicyBinding", "validatingadmissionpolicybindings", false, false, true, ""),
];

/// The built-in resources, in discovery order.
pub fn builtin() -> Vec<Resource> {
    BUILTIN
        .iter()
        .map(
            |&(group, version, kind, plural, namespaced, status, generation, short)| Resource {
                group: group.into(),
                version: version.into(),
                kind: kind.into(),
                plural: plural.into(),
                namespaced,
                status,
                generation,
                custom: false,
                short_names: short
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
            },
        )
        .collect()
}

/// The resources a stored CRD serves (one per served version), or why it is invalid
/// (`(field, message)` pairs for a 422).
pub fn from_crd(crd: &Value) -> Result<Vec<Resource>, Vec<(String, String)>> {
    let spec = &crd["spec"];
    let mut errors = Vec::new();
    let group = spec["group"].as_str().unwrap_or_default();
    let plural = spec["names"]["plural"].as_str().unwrap_or_default();
    let kind = spec["names"]["kind"].as_str().unwrap_or_default();
    if group.is_empty() {
        errors.push(("spec.group".into(), "Required value".into()));
    }
    if plural.is_empty() {
        errors.push(("spec.names.plural".into(), "Required value".into()));
    }
    if kind.is_empty() {
        errors.push(("spec.names.kind".into(), "Required value".into()));
    }
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        errors.push((
            "metadata.name".into(),
            format!("Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    let namespaced = match spec["scope"].as_str() {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        other => {
            errors.push((
                "spec.scope".into(),
                format!(
                    "Unsupported value: {:?}: supported values: \"Cluster\", \"Namespaced\"",
                    other.unwrap_or_default()
                ),
            ));
            false
        }
    };
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        errors.push((
            "spec.versions".into(),
            "Invalid value: null: must have exactly one version marked as storage version".into(),
        ));
    }
    let storage = versions
        .iter()
        .filter(|v| v["storage"] == json!(true))
        .count();
    if !versions.is_empty() && storage != 1 {
        errors.push((
            "spec.versions".into(),
            format!(
                "Invalid value: {storage}: must have exactly one version marked as storage version"
            ),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let short_names: Vec<String> = spec["names"]["shortNames"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Ok(versions
        .iter()
        .filter(|v| v["served"] == json!(true))
        .map(|v| Resource {
            group: group.into(),
            version: v["name"].as_str().unwrap_or_default().into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced,
            status: v["subresources"]["status"].is_object(),
            generation: true,
            custom: true,
            short_names: short_names.clone(),
        })
        .collect())
}

/// The schema of a CRD's version, for pruning unknown fields.
pub fn crd_schema(crd: &Value, version: &str) -> Option<Value> {
    crd["spec"]["versions"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == version)
        .map(|v| v["schema"]["openAPIV3Schema"].clone())
        .filter(|s| s.is_object())
}

/// Every verb of a collection resource.
pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn verbs(res: &Resource) -> Vec<&'static str> {
    VERBS
        .iter()
        .copied()
        .filter(|v| res.plural != "namespaces" || *v != "deletecollection")
        .collect()
}

/// `APIResourceList` for one group/version.
pub fn resource_list(resources: &[Resource], group: &str, version: &str) -> Value {
    let mut items = Vec::new();
    for r in resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let singular = r.kind.to_lowercase();
        let mut entry = json!({
            "name": r.plural, "singularName": singular, "namespaced": r.namespaced,
            "kind": r.kind, "verbs": verbs(r),
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        items.push(entry);
        if r.status {
            items.push(json!({
                "name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
                "kind": r.kind, "verbs": ["get", "patch", "update"],
            }));
        }
        if r.group.is_empty() && r.plural == "serviceaccounts" {
            items.push(json!({
                "name": "serviceaccounts/token", "singularName": "", "namespaced": true,
                "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest",
                "verbs": ["create"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": items})
}

/// The groups (other than core) with their versions, in first-seen order; the first version
/// listed is the preferred one.
pub fn groups(resources: &[Resource]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for r in resources.iter().filter(|r| !r.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) => {
                if !versions.contains(&r.version) {
                    versions.push(r.version.clone());
                }
            }
            None => out.push((r.group.clone(), vec![r.version.clone()])),
        }
    }
    out
}

pub fn api_group(name: &str, versions: &[String]) -> Value {
    let gv = |v: &String| json!({"groupVersion": format!("{name}/{v}"), "version": v});
    json!({
        "name": name,
        "versions": versions.iter().map(gv).collect::<Vec<_>>(),
        "preferredVersion": gv(&versions[0]),
    })
}

/// Aggregated discovery (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`) of the core group
/// (`core`) or of every other group.
pub fn aggregated(resources: &[Resource], core: bool) -> Value {
    let entry = |r: &Resource| {
        let kind = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let mut subresources = Vec::new();
        if r.status {
            subresources.push(json!({"subresource": "status", "responseKind": kind, "verbs": ["get", "patch", "update"]}));
        }
        let mut e = json!({
            "resource": r.plural, "responseKind": kind, "singularResource": r.kind.to_lowercase(),
            "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
            "verbs": verbs(r), "subresources": subresources,
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        e
    };
    let mut groups: Vec<(String, Vec<String>)> = groups(resources);
    if core {
        groups = vec![(String::new(), vec!["v1".to_string()])];
    }
    let items: Vec<Value> = groups
        .iter()
        .map(|(g, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let rs: Vec<Value> = resources
                        .iter()
                        .filter(|r| r.group == *g && r.version == *v)
                        .map(entry)
                        .collect();
                    json!({"version": v, "resources": rs, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": g}, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}
