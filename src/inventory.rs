//! What each unit applied last, kept as a kubectl ApplySet-compatible parent object. This file
//! holds the pure part: the ApplySet identity and the annotations kubectl reads, computed exactly
//! as kubectl computes them, so `kubectl apply --prune --applyset` and flotilla agree on membership.

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// Label on the parent: the ApplySet's id.
pub const ID_LABEL: &str = "applyset.kubernetes.io/id";
/// Label on each member: the id of the ApplySet it belongs to.
pub const PART_OF_LABEL: &str = "applyset.kubernetes.io/part-of";
/// Annotation on the parent: the tool that manages the set, `flotilla/<version>`.
pub const TOOLING_ANNOTATION: &str = "applyset.kubernetes.io/tooling";
/// Annotation on the parent: the group-kinds of its members.
pub const GROUP_KINDS_ANNOTATION: &str = "applyset.kubernetes.io/contains-group-kinds";

/// The id of the ApplySet whose parent is `kind.group` `name` in `namespace` (empty for a
/// cluster-scoped parent, empty group for core): `applyset-` + unpadded base64url of
/// sha256(`<name>.<namespace>.<kind>.<group>`) + `-v1`.
pub fn applyset_id(name: &str, namespace: &str, kind: &str, group: &str) -> String {
    let digest = Sha256::digest(format!("{name}.{namespace}.{kind}.{group}"));
    format!(
        "applyset-{}-v1",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    )
}

/// The `contains-group-kinds` value for members of these `(group, kind)`s: `Kind` for the core
/// group, `Kind.group` otherwise, sorted and comma-separated without duplicates.
pub fn group_kinds<'a>(members: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out: Vec<String> = members
        .into_iter()
        .map(|(group, kind)| {
            if group.is_empty() {
                kind.to_string()
            } else {
                format!("{kind}.{group}")
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out.join(",")
}

/// The tooling annotation's value for this build.
pub fn tooling() -> String {
    format!("flotilla/{}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector kubectl 1.32 gives: a ConfigMap parent `notebook` in namespace `ai`.
    #[test]
    fn applyset_id_matches_kubectl() {
        assert_eq!(
            applyset_id("notebook", "ai", "ConfigMap", ""),
            "applyset-iXEUPwyee6SsdYUKZF2AOOzYJ97D7LLiCvt6drAVnhs-v1"
        );
        // Label values are at most 63 characters; the id is always 55.
        assert_eq!(
            applyset_id("a-long-parent-name", "a-namespace", "Secret", "").len(),
            55
        );
    }

    #[test]
    fn group_kinds_are_sorted_deduplicated_and_core_has_no_group() {
        assert_eq!(group_kinds([("", "ConfigMap")]), "ConfigMap");
        assert_eq!(
            group_kinds([
                ("apps", "Deployment"),
                ("", "ConfigMap"),
                ("apps", "Deployment")
            ]),
            "ConfigMap,Deployment.apps"
        );
        assert_eq!(group_kinds([]), "");
    }

    #[test]
    fn tooling_names_flotilla_and_its_version() {
        assert!(tooling().starts_with("flotilla/0."));
    }
}
