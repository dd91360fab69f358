//! Desired objects against the inventory and the live cluster: what to apply, what to check by a
//! dry run, what to leave alone, what to prune, and in which order. Also the normal form objects
//! are compared and diffed in. Pure: plain JSON in, decisions out.

use std::collections::BTreeSet;

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::inventory::{Member, Record};
use crate::render::{Object, ObjectKey, Scope};

pub(crate) use crate::cluster::FIELD_MANAGER;
/// Annotation carrying the sha256 of the rendered object an object was applied from.
pub(crate) const HASH_ANNOTATION: &str = "flotilla.dev/hash";

/// What to do with one desired object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Same rendered form, and nobody touched flotilla's fields since it applied them: send nothing.
    Unchanged,
    /// Send it: it is new, or Git changed it.
    Apply(&'static str),
    /// Someone changed flotilla's fields (or their ownership): dry-run, and apply only if the
    /// result differs from live.
    Check,
}

/// The order group of a kind: CRDs, Namespaces, other cluster-scoped kinds (ClusterRoles among
/// them), ClusterRoleBindings, the namespaced kinds workloads need (ServiceAccounts, Roles,
/// ConfigMaps, Secrets, ...), RoleBindings, everything else, and admission webhook configurations
/// last. Applies go up; prunes go down.
///
/// A binding comes after the roles it may reference: the API server checks a binding written by a
/// caller that may not `bind` against the rules of its role, and refuses it as not found while the
/// role does not exist yet. Applies of one group run concurrently, so the role must be in an
/// earlier group, not merely earlier in the list.
pub(crate) fn rank(key: &ObjectKey, scope: Scope) -> u8 {
    match (key.group.as_str(), key.kind.as_str()) {
        ("apiextensions.k8s.io", "CustomResourceDefinition") => 0,
        ("", "Namespace") => 1,
        (
            "admissionregistration.k8s.io",
            "MutatingWebhookConfiguration"
            | "ValidatingWebhookConfiguration"
            | "ValidatingAdmissionPolicy"
            | "ValidatingAdmissionPolicyBinding",
        ) => 7,
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => 3,
        _ if scope == Scope::Cluster => 2,
        ("rbac.authorization.k8s.io", "RoleBinding") => 5,
        (
            "",
            "ServiceAccount"
            | "ConfigMap"
            | "Secret"
            | "ResourceQuota"
            | "LimitRange"
            | "PersistentVolumeClaim",
        )
        | ("rbac.authorization.k8s.io", "Role")
        | ("networking.k8s.io", "NetworkPolicy")
        | ("policy", "PodDisruptionBudget") => 4,
        _ => 6,
    }
}

/// A stable digest of the fields flotilla owns in `live` (its `Apply` entries of the main
/// resource in `metadata.managedFields`), or "" when it owns none. Another writer that changes or
/// removes one of those fields takes it out of flotilla's set, which changes the fingerprint;
/// status writes and fields flotilla never set do not.
pub(crate) fn fingerprint(live: &Value) -> String {
    let mut hasher = Sha256::new();
    let mut any = false;
    for entry in live["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let ours = entry["manager"] == FIELD_MANAGER
            && entry["operation"] == "Apply"
            && entry["subresource"].as_str().unwrap_or_default().is_empty();
        if ours {
            any = true;
            hasher.update(entry["apiVersion"].as_str().unwrap_or_default());
            hasher.update([0]);
            hasher.update(entry["fieldsV1"].to_string());
            hasher.update([0]);
        }
    }
    if !any {
        return String::new();
    }
    let digest = hasher.finalize();
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// The managers other than flotilla that wrote the main resource, for messages.
pub(crate) fn other_managers(live: &Value) -> Vec<String> {
    let mut out: BTreeSet<String> = BTreeSet::new();
    for entry in live["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let manager = entry["manager"].as_str().unwrap_or_default();
        if manager != FIELD_MANAGER && entry["subresource"].as_str().unwrap_or_default().is_empty()
        {
            out.insert(manager.to_string());
        }
    }
    out.into_iter().collect()
}

/// What to do with `desired`, given the live object carrying this set's label (if any) and what
/// the inventory recorded for it.
/// `fields`: the fingerprint of flotilla's fields when it was taken from the whole object
/// before `live` was made compact (a shared list's); else it is taken from `live`.
pub(crate) fn decide(
    desired: &Object,
    live: Option<&Value>,
    recorded: Option<&Member>,
    fields: Option<&str>,
) -> Decision {
    let Some(live) = live else {
        return Decision::Apply("new");
    };
    let live_hash = live["metadata"]["annotations"][HASH_ANNOTATION].as_str();
    if live_hash != Some(desired.hash.as_str()) {
        return Decision::Apply("changed in Git");
    }
    match recorded {
        Some(m)
            if m.hash == desired.hash
                && !m.fields.is_empty()
                && fields.map_or_else(|| fingerprint(live), str::to_string) == m.fields
                && live["metadata"]["deletionTimestamp"].is_null() =>
        {
            Decision::Unchanged
        }
        _ => Decision::Check,
    }
}

/// The body flotilla sends for `object`: the rendered object plus this set's part-of label and the
/// hash annotation.
pub(crate) fn applied_body(object: &Object, set_id: &str) -> Value {
    let mut body = object.body.value();
    let meta = &mut body["metadata"];
    if !meta["labels"].is_object() {
        meta["labels"] = Value::Object(Default::default());
    }
    meta["labels"][crate::inventory::PART_OF_LABEL] = set_id.into();
    if !meta["annotations"].is_object() {
        meta["annotations"] = Value::Object(Default::default());
    }
    meta["annotations"][HASH_ANNOTATION] = object.hash.clone().into();
    body
}

/// The members of `old` that are neither desired nor kept for another reason, in prune order
/// (the reverse of apply order).
pub(crate) fn prune_candidates(
    old: &Record,
    desired: &BTreeSet<&ObjectKey>,
    keep: &BTreeSet<&ObjectKey>,
) -> Vec<(ObjectKey, Member)> {
    let mut out: Vec<(ObjectKey, Member)> = old
        .members
        .iter()
        .filter(|(k, _)| !desired.contains(k) && !keep.contains(k))
        .map(|(k, m)| (k.clone(), m.clone()))
        .collect();
    out.sort_by(|(a, _), (b, _)| {
        let scope = |k: &ObjectKey| {
            if k.namespace.is_some() {
                Scope::Namespaced
            } else {
                Scope::Cluster
            }
        };
        rank(b, scope(b))
            .cmp(&rank(a, scope(a)))
            .then_with(|| b.cmp(a))
    });
    out
}

/// An object without what the server maintains (managedFields, resourceVersion, uid, timestamps,
/// generation, status), for comparison and diffs.
pub(crate) fn normalize(object: &Value) -> Value {
    let mut out = object.clone();
    if let Some(map) = out.as_object_mut() {
        map.remove("status");
    }
    if let Some(meta) = out["metadata"].as_object_mut() {
        for noise in [
            "managedFields",
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
            "selfLink",
        ] {
            meta.remove(noise);
        }
        if meta
            .get("annotations")
            .and_then(Value::as_object)
            .is_some_and(|a| a.is_empty())
        {
            meta.remove("annotations");
        }
    }
    out
}

/// Whether the dry-run result differs from live in anything but server noise.
pub(crate) fn drifted(live: &Value, dry_run: &Value) -> bool {
    normalize(live) != normalize(dry_run)
}

/// Replaces the values of a Secret's `data` and `stringData` in both versions by a mask that tells
/// only whether each value changed.
pub(crate) fn mask_secrets(before: &mut Value, after: &mut Value) {
    let is_secret = |v: &Value| v["kind"] == "Secret" && v["apiVersion"] == "v1";
    if !is_secret(before) && !is_secret(after) {
        return;
    }
    // A Secret first applied by `kubectl apply` carries all of itself in this annotation.
    for v in [&mut *before, &mut *after] {
        if let Some(a) = v["metadata"]["annotations"].as_object_mut()
            && a.contains_key("kubectl.kubernetes.io/last-applied-configuration")
        {
            a.insert(
                "kubectl.kubernetes.io/last-applied-configuration".into(),
                "***".into(),
            );
        }
    }
    for field in ["data", "stringData"] {
        let old = before[field].clone();
        let new = after[field].clone();
        let mask = |v: &mut Value, other: &Value, tag: &str| {
            if let Some(map) = v.as_object_mut() {
                for (k, value) in map.iter_mut() {
                    let same = other.get(k) == Some(value);
                    *value = if same {
                        "***".into()
                    } else {
                        format!("*** ({tag})").into()
                    };
                }
            }
        };
        if before.get(field).is_some() {
            mask(&mut before[field], &new, "before");
        }
        if after.get(field).is_some() {
            mask(&mut after[field], &old, "after");
        }
    }
}

/// A unified diff of two texts, with 3 lines of context around each change, or "" when equal.
pub(crate) fn unified_diff(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    if old.lines().eq(new.lines()) {
        return String::new();
    }
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(old_name, new_name)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(group: &str, kind: &str, ns: Option<&str>, name: &str) -> ObjectKey {
        ObjectKey {
            group: group.into(),
            kind: kind.into(),
            namespace: ns.map(Into::into),
            name: name.into(),
        }
    }

    fn object(hash: &str) -> Object {
        Object {
            key: key("", "ConfigMap", Some("ai"), "settings"),
            api_version: "v1".into(),
            scope: Scope::Namespaced,
            body: crate::render::Body::of(&json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "settings", "namespace": "ai"}})),
            hook: None,
            hash: hash.into(),
            file: "a.yaml".into(),
            line: 1,
            refused: None,
        }
    }

    fn live(hash: &str, ours: Value, others: &[(&str, &str)]) -> Value {
        let mut fields = vec![json!({"manager": "flotilla", "operation": "Apply",
            "apiVersion": "v1", "time": "2026-01-01T00:00:00Z", "fieldsV1": ours})];
        for (manager, sub) in others {
            fields.push(
                json!({"manager": manager, "operation": "Update", "apiVersion": "v1",
                "subresource": sub, "fieldsV1": {"f:status": {}}}),
            );
        }
        json!({"metadata": {"annotations": {HASH_ANNOTATION: hash}, "managedFields": fields}})
    }

    #[test]
    fn unchanged_only_when_hash_and_flotillas_fields_are_as_recorded() {
        let ours = json!({"f:data": {"f:a": {}}});
        let member = |fields: String| Member {
            api_version: "v1".into(),
            hash: "h1".into(),
            fields,
        };
        let live_now = live("h1", ours.clone(), &[("kube-controller-manager", "status")]);
        let recorded = member(fingerprint(&live_now));
        assert_eq!(
            decide(&object("h1"), Some(&live_now), Some(&recorded), None),
            Decision::Unchanged
        );
        // A status write or another manager's new field does not touch flotilla's set.
        let status_too = live("h1", ours.clone(), &[("kubelet", "status")]);
        assert_eq!(fingerprint(&status_too), recorded.fields);
        // `kubectl edit` of a field flotilla set takes it out of flotilla's set.
        let edited = live("h1", json!({"f:data": {}}), &[("kubectl-edit", "")]);
        assert_eq!(
            decide(&object("h1"), Some(&edited), Some(&recorded), None),
            Decision::Check
        );
        assert_eq!(other_managers(&edited), vec!["kubectl-edit".to_string()]);
        assert_eq!(
            decide(&object("h2"), Some(&live_now), Some(&recorded), None),
            Decision::Apply("changed in Git")
        );
        assert_eq!(
            decide(&object("h1"), None, Some(&recorded), None),
            Decision::Apply("new")
        );
        // Nothing recorded (a crash between apply and the inventory update): check.
        assert_eq!(
            decide(&object("h1"), Some(&live_now), None, None),
            Decision::Check
        );
        assert_eq!(fingerprint(&json!({"metadata": {}})), "");
    }

    #[test]
    fn apply_order_and_prune_order() {
        let crd = key(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            None,
            "x",
        );
        let ns = key("", "Namespace", None, "ai");
        let pc = key("scheduling.k8s.io", "PriorityClass", None, "batch");
        let cluster_role = key("rbac.authorization.k8s.io", "ClusterRole", None, "reader");
        let cluster_binding = key(
            "rbac.authorization.k8s.io",
            "ClusterRoleBinding",
            None,
            "reader",
        );
        let sa = key("", "ServiceAccount", Some("ai"), "runner");
        let role = key("rbac.authorization.k8s.io", "Role", Some("ai"), "scanner");
        let binding = key(
            "rbac.authorization.k8s.io",
            "RoleBinding",
            Some("ai"),
            "scanner",
        );
        let deploy = key("apps", "Deployment", Some("ai"), "web");
        let hook = key(
            "admissionregistration.k8s.io",
            "ValidatingWebhookConfiguration",
            None,
            "v",
        );
        let ranks: Vec<u8> = [
            (&crd, Scope::Cluster),
            (&ns, Scope::Cluster),
            (&pc, Scope::Cluster),
            (&cluster_role, Scope::Cluster),
            (&cluster_binding, Scope::Cluster),
            (&sa, Scope::Namespaced),
            (&role, Scope::Namespaced),
            (&binding, Scope::Namespaced),
            (&deploy, Scope::Namespaced),
            (&hook, Scope::Cluster),
        ]
        .iter()
        .map(|(k, s)| rank(k, *s))
        .collect();
        // Roles strictly before the bindings that reference them (issue 13: a tenant's binding
        // applied beside its Role was refused as not found on a real cluster).
        assert_eq!(ranks, vec![0, 1, 2, 2, 3, 4, 4, 5, 6, 7]);

        let mut old = Record::default();
        for k in [&crd, &ns, &sa, &deploy, &hook] {
            old.members.insert(
                k.clone(),
                Member {
                    api_version: "v1".into(),
                    hash: "h".into(),
                    fields: String::new(),
                },
            );
        }
        let desired = BTreeSet::from([&ns]);
        let keep = BTreeSet::from([&sa]);
        let order: Vec<String> = prune_candidates(&old, &desired, &keep)
            .into_iter()
            .map(|(k, _)| k.kind)
            .collect();
        assert_eq!(
            order,
            vec![
                "ValidatingWebhookConfiguration",
                "Deployment",
                "CustomResourceDefinition"
            ]
        );
    }

    #[test]
    fn drift_ignores_server_noise_and_secrets_are_masked() {
        let live = json!({"kind": "ConfigMap", "metadata": {"name": "a", "resourceVersion": "7",
            "managedFields": [], "uid": "u", "generation": 2}, "data": {"k": "v"},
            "status": {"x": 1}});
        let same = json!({"kind": "ConfigMap", "metadata": {"name": "a", "resourceVersion": "8"},
            "data": {"k": "v"}});
        assert!(!drifted(&live, &same));
        let changed = json!({"kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "w"}});
        assert!(drifted(&live, &changed));

        let mut before = json!({"apiVersion": "v1", "kind": "Secret",
            "data": {"same": "c2VjcmV0", "changed": "b2xk"}});
        let mut after = json!({"apiVersion": "v1", "kind": "Secret",
            "data": {"same": "c2VjcmV0", "changed": "bmV3"}, "stringData": {"plain": "hunter2"}});
        mask_secrets(&mut before, &mut after);
        let text = format!("{before}{after}");
        for secret in ["c2VjcmV0", "b2xk", "bmV3", "hunter2"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert_eq!(before["data"]["same"], "***");
        assert_eq!(before["data"]["changed"], "*** (before)");
        assert_eq!(after["data"]["changed"], "*** (after)");
    }

    #[test]
    fn unified_diff_has_hunks_with_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n";
        let new = "a\nb\nc\nd\nE\nf\ng\nh\ni\nj\nk\n";
        let diff = unified_diff(old, new, "live", "desired");
        assert_eq!(
            diff,
            "--- live\n+++ desired\n@@ -2,9 +2,10 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n i\n j\n+k\n"
        );
        assert_eq!(unified_diff(old, old, "a", "b"), "");
        assert_eq!(
            unified_diff("", "x\n", "a", "b"),
            // GNU diff's short form for a one-line range, as `similar` writes it.
            "--- a\n+++ b\n@@ -0,0 +1 @@\n+x\n"
        );
    }
}
