//! What each unit applied last, kept as a kubectl ApplySet-compatible parent object: a ConfigMap
//! in the unit's namespace whose id label and annotations are computed exactly as kubectl computes
//! them, so `kubectl apply --prune --applyset` and flotilla agree on membership, plus flotilla's
//! own record of every member with the hash it was applied with and a fingerprint of the fields
//! flotilla owned right after. This file is pure; `reconcile` reads and writes the parent.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use base64::Engine as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::fleet::UnitId;
use crate::render::{LABEL_APP, LABEL_TENANT, ObjectKey};

/// Label on the parent: the ApplySet's id.
pub(crate) const ID_LABEL: &str = "applyset.kubernetes.io/id";
/// Label on each member: the id of the ApplySet it belongs to.
pub(crate) const PART_OF_LABEL: &str = "applyset.kubernetes.io/part-of";
/// Annotation on the parent: the tool that manages the set, `flotilla/<version>`.
pub(crate) const TOOLING_ANNOTATION: &str = "applyset.kubernetes.io/tooling";
/// Annotation on the parent: the group-kinds of its members.
pub(crate) const GROUP_KINDS_ANNOTATION: &str = "applyset.kubernetes.io/contains-group-kinds";
/// Annotation on the parent: the namespaces of its members besides the parent's own.
pub(crate) const NAMESPACES_ANNOTATION: &str = "applyset.kubernetes.io/additional-namespaces";
/// The parent's data key that holds flotilla's member list.
pub(crate) const MEMBERS_KEY: &str = "members";
/// The namespace of the parents of the agent's own sets (the infra unit, tenant onboarding).
pub(crate) const AGENT_NAMESPACE: &str = "kube-system";

/// On an infra layer's parent: which fleet and cluster applied it (a short hash of the fleet's
/// location and the cluster's name).
pub(crate) const FLEET_LABEL: &str = "flotilla.dev/fleet";

/// The value of [`FLEET_LABEL`] for an agent of `cluster` reading the fleet at `location`.
pub(crate) fn fleet_id(location: &str, cluster: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{location}\n{cluster}").as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a set's parent lives: a ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Parent {
    pub namespace: String,
    pub name: String,
}

/// One member as flotilla applied it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Member {
    pub api_version: String,
    /// The sha256 of the rendered object it was applied from.
    pub hash: String,
    /// The fingerprint of flotilla's managed fields right after the apply (see
    /// `plan::fingerprint`); empty when not known (not applied yet, or it failed).
    pub fields: String,
}

/// The members of a set, by object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Record {
    pub members: BTreeMap<ObjectKey, Member>,
    /// Helm hook objects flotilla created and has not deleted (not members: never pruned for
    /// being absent from a render, but deleted with the set), by object, with their apiVersion.
    pub hooks: BTreeMap<ObjectKey, String>,
    /// The digest of the render whose hooks last ran to the end: hooks run again only when
    /// the render changes.
    pub hooks_ran: String,
    /// The digest of the render whose pre hooks last ran to the end.
    pub hooks_pre_ran: String,
}

/// The parent's data key that holds the hooks flotilla created.
pub(crate) const HOOKS_KEY: &str = "hooks";

/// Why a ConfigMap cannot be used as a parent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum Error {
    #[error("inventory {parent}: {why}; flotilla will not use or prune it")]
    Foreign { parent: Parent, why: String },
    #[error("inventory {parent}: line {line} of data.members or data.hooks is malformed")]
    Malformed { parent: Parent, line: usize },
}

impl fmt::Display for Parent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConfigMap {}/{}", self.namespace, self.name)
    }
}

impl Parent {
    /// The parent of a tenant app's set (in the app's namespace), or of the cluster's infra.
    pub(crate) fn of_unit(unit: &UnitId, namespace: Option<&str>) -> Parent {
        match (&unit.tenant, namespace) {
            (Some(_), Some(ns)) => Parent {
                namespace: ns.to_string(),
                name: format!("flotilla-{}", unit.app),
            },
            // An infra unit: `flotilla-infra`, or `flotilla-infra-configs` for `infra/configs`
            // (a ConfigMap's name has no `/`; an infra layer's name has no `-` prefix issue, and
            // `infra-x` is not a layer name, so two units never share a parent).
            _ => Parent {
                namespace: AGENT_NAMESPACE.to_string(),
                name: format!("flotilla-{}", unit.app.replace('/', "-")),
            },
        }
    }

    /// The parent of a tenant's onboarding set (its namespaces, ServiceAccount, RoleBindings).
    pub(crate) fn of_onboarding(tenant: &str) -> Parent {
        Parent {
            namespace: AGENT_NAMESPACE.to_string(),
            name: format!("flotilla-tenant-{tenant}"),
        }
    }

    pub(crate) fn id(&self) -> String {
        applyset_id(&self.name, &self.namespace, "ConfigMap", "")
    }

    /// The parent object for `record`, to be server-side applied.
    pub(crate) fn body(
        &self,
        record: &Record,
        tenant: Option<&str>,
        set: &str,
    ) -> serde_json::Value {
        let mut labels = serde_json::Map::new();
        labels.insert(ID_LABEL.into(), self.id().into());
        if let Some(t) = tenant {
            labels.insert(LABEL_TENANT.into(), t.into());
        }
        labels.insert(LABEL_APP.into(), set.into());
        let mut annotations = serde_json::Map::new();
        annotations.insert(TOOLING_ANNOTATION.into(), tooling().into());
        annotations.insert(
            GROUP_KINDS_ANNOTATION.into(),
            group_kinds(
                record
                    .members
                    .keys()
                    .map(|k| (k.group.as_str(), k.kind.as_str())),
            )
            .into(),
        );
        let others: BTreeSet<&str> = record
            .members
            .keys()
            .filter_map(|k| k.namespace.as_deref())
            .filter(|ns| *ns != self.namespace)
            .collect();
        if !others.is_empty() {
            let list: Vec<&str> = others.into_iter().collect();
            annotations.insert(NAMESPACES_ANNOTATION.into(), list.join(",").into());
        }
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": labels,
                "annotations": annotations,
            },
            "data": if record.hooks.is_empty()
                && record.hooks_ran.is_empty()
                && record.hooks_pre_ran.is_empty()
            {
                json!({ MEMBERS_KEY: record.encode() })
            } else {
                json!({ MEMBERS_KEY: record.encode(), HOOKS_KEY: record.encode_hooks() })
            },
        })
    }

    /// The record a live parent holds, after checking that it is flotilla's and that its id is
    /// its own (an id copied from another set is how a set is hijacked).
    pub(crate) fn read(&self, live: &serde_json::Value) -> Result<Record, Error> {
        let foreign = |why: String| Error::Foreign {
            parent: self.clone(),
            why,
        };
        let meta = &live["metadata"];
        let tooling = meta["annotations"][TOOLING_ANNOTATION].as_str();
        if !tooling.is_some_and(|t| t.starts_with("flotilla/")) {
            return Err(foreign(format!(
                "it exists but is not flotilla's (tooling {})",
                tooling.unwrap_or("not set")
            )));
        }
        let id = meta["labels"][ID_LABEL].as_str().unwrap_or_default();
        if id != self.id() {
            return Err(foreign(format!(
                "its {ID_LABEL} label {id:?} is not the id of this parent ({})",
                self.id()
            )));
        }
        let malformed = |line| Error::Malformed {
            parent: self.clone(),
            line,
        };
        let mut record = Record::decode(live["data"][MEMBERS_KEY].as_str().unwrap_or_default())
            .map_err(malformed)?;
        record
            .decode_hooks(live["data"][HOOKS_KEY].as_str().unwrap_or_default())
            .map_err(malformed)?;
        Ok(record)
    }
}

impl Record {
    /// One line per member: `apiVersion kind namespace|- name hash fields|-`.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        for (k, m) in &self.members {
            let field = |s: &str| {
                if s.is_empty() {
                    "-".to_string()
                } else {
                    s.to_string()
                }
            };
            out.push_str(&format!(
                "{} {} {} {} {} {}\n",
                m.api_version,
                k.kind,
                k.namespace.as_deref().unwrap_or("-"),
                k.name,
                field(&m.hash),
                field(&m.fields)
            ));
        }
        out
    }

    /// The inverse of [`Record::encode`]; a bad line gives its number.
    pub(crate) fn decode(text: &str) -> Result<Record, usize> {
        let mut members = BTreeMap::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let parts: Vec<&str> = line.split(' ').collect();
            let [api_version, kind, ns, name, hash, fields] = parts[..] else {
                return Err(i + 1);
            };
            let dash = |s: &str| {
                if s == "-" {
                    String::new()
                } else {
                    s.to_string()
                }
            };
            let group = api_version
                .rsplit_once('/')
                .map(|(g, _)| g.to_string())
                .unwrap_or_default();
            members.insert(
                ObjectKey {
                    group,
                    kind: kind.to_string(),
                    namespace: (ns != "-").then(|| ns.to_string()),
                    name: name.to_string(),
                },
                Member {
                    api_version: api_version.to_string(),
                    hash: dash(hash),
                    fields: dash(fields),
                },
            );
        }
        Ok(Record {
            members,
            ..Record::default()
        })
    }

    /// `ran <digest>` (when hooks ran), then one line per hook: `apiVersion kind namespace|- name`.
    pub(crate) fn encode_hooks(&self) -> String {
        let mut out = String::new();
        if !self.hooks_ran.is_empty() {
            out.push_str(&format!("ran {}\n", self.hooks_ran));
        }
        if !self.hooks_pre_ran.is_empty() {
            out.push_str(&format!("pre {}\n", self.hooks_pre_ran));
        }
        for (k, api_version) in &self.hooks {
            out.push_str(&format!(
                "{api_version} {} {} {}\n",
                k.kind,
                k.namespace.as_deref().unwrap_or("-"),
                k.name
            ));
        }
        out
    }

    /// The inverse of [`Record::encode_hooks`], into this record; a bad line gives its number.
    pub(crate) fn decode_hooks(&mut self, text: &str) -> Result<(), usize> {
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts[..] {
                ["ran", digest] => self.hooks_ran = digest.to_string(),
                ["pre", digest] => self.hooks_pre_ran = digest.to_string(),
                [api_version, kind, ns, name] => {
                    let group = api_version
                        .rsplit_once('/')
                        .map(|(g, _)| g.to_string())
                        .unwrap_or_default();
                    self.hooks.insert(
                        ObjectKey {
                            group,
                            kind: kind.to_string(),
                            namespace: (ns != "-").then(|| ns.to_string()),
                            name: name.to_string(),
                        },
                        api_version.to_string(),
                    );
                }
                _ => return Err(i + 1),
            }
        }
        Ok(())
    }
}

/// The id of the ApplySet whose parent is `kind.group` `name` in `namespace` (empty for a
/// cluster-scoped parent, empty group for core): `applyset-` + unpadded base64url of
/// sha256(`<name>.<namespace>.<kind>.<group>`) + `-v1`.
pub(crate) fn applyset_id(name: &str, namespace: &str, kind: &str, group: &str) -> String {
    let digest = Sha256::digest(format!("{name}.{namespace}.{kind}.{group}"));
    format!(
        "applyset-{}-v1",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    )
}

/// The `contains-group-kinds` value for members of these `(group, kind)`s: `Kind` for the core
/// group, `Kind.group` otherwise, sorted and comma-separated without duplicates.
pub(crate) fn group_kinds<'a>(members: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
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
pub(crate) fn tooling() -> String {
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
    fn a_record_survives_its_parent_and_a_copied_id_is_refused() {
        let parent = Parent::of_unit(&UnitId::app("ai", "notebook"), Some("ai"));
        let mut record = Record::default();
        for (api_version, kind, ns, name) in [
            ("v1", "ConfigMap", Some("ai"), "settings"),
            ("apps/v1", "Deployment", Some("ai-jobs"), "worker"),
            ("scheduling.k8s.io/v1", "PriorityClass", None, "batch"),
        ] {
            record.members.insert(
                ObjectKey {
                    group: api_version
                        .rsplit_once('/')
                        .map_or("", |(g, _)| g)
                        .to_string(),
                    kind: kind.into(),
                    namespace: ns.map(Into::into),
                    name: name.into(),
                },
                Member {
                    api_version: api_version.into(),
                    hash: "abc".into(),
                    fields: if ns.is_some() {
                        "f1".into()
                    } else {
                        String::new()
                    },
                },
            );
        }
        let body = parent.body(&record, Some("ai"), "notebook");
        let annotations = &body["metadata"]["annotations"];
        assert_eq!(
            annotations[GROUP_KINDS_ANNOTATION],
            "ConfigMap,Deployment.apps,PriorityClass.scheduling.k8s.io"
        );
        assert_eq!(annotations[NAMESPACES_ANNOTATION], "ai-jobs");
        assert_eq!(parent.read(&body), Ok(record));

        let other = Parent {
            name: "flotilla-other".into(),
            ..parent.clone()
        };
        assert!(matches!(other.read(&body), Err(Error::Foreign { .. })));
        let mut kubectl = body.clone();
        kubectl["metadata"]["annotations"][TOOLING_ANNOTATION] = "kubectl/v1.32".into();
        let error = parent.read(&kubectl).unwrap_err().to_string();
        assert!(
            error.contains("not flotilla's (tooling kubectl/v1.32)"),
            "{error}"
        );
    }

    #[test]
    fn tooling_names_flotilla_and_its_version() {
        assert!(tooling().starts_with("flotilla/0."));
    }
}
