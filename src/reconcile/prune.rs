//! Pruning what a set no longer renders: only objects that still carry the set's label, never a
//! namespace of an onboarding, each delete bound to the uid that was read.

use kube::Client;

use super::set::{Engine, Mode, Outcome, SetSpec};
use crate::cluster::{Cluster, Error};
use crate::failure::Failure;
use crate::inventory::{Member, PART_OF_LABEL, Record};
use crate::render::ObjectKey;

impl Engine {
    /// Prunes `candidates` (members of the old inventory no longer rendered); those that cannot
    /// be pruned stay in `record`.
    pub(super) async fn prune(
        &self,
        client: &Client,
        spec: &SetSpec,
        id: &str,
        candidates: Vec<(ObjectKey, Member)>,
        record: &mut Record,
        out: &mut Outcome,
    ) {
        for (key, member) in candidates {
            if spec.options.keep_namespaces && key.group.is_empty() && key.kind == "Namespace" {
                out.notes.push(format!(
                    "{key}: no longer wanted; namespaces are never deleted"
                ));
                continue;
            }
            let r = match self.cluster.resolve(&member.api_version, &key.kind).await {
                Ok(r) => r,
                // The kind is gone from the cluster (its CRD was deleted): so is the object.
                Err(Error::UnknownKind { .. }) => continue,
                Err(e) => {
                    out.failed
                        .push(Failure::from(e).context(format_args!("{key}: not pruned")));
                    record.members.insert(key, member);
                    continue;
                }
            };
            let ns = key.namespace.as_deref().filter(|_| r.namespaced);
            let live = match Cluster::get(client, &r, ns, &key.name).await {
                Ok(Some(live)) => live,
                Ok(None) => continue,
                Err(e) => {
                    out.failed
                        .push(Failure::from(e).context(format_args!("{key}: not pruned")));
                    record.members.insert(key, member);
                    continue;
                }
            };
            if live["metadata"]["labels"][PART_OF_LABEL].as_str() != Some(id) {
                out.notes.push(format!(
                    "{key}: no longer carries this set's {PART_OF_LABEL} label; forgotten, not deleted"
                ));
                continue;
            }
            if crate::render::hook::keep(&live) {
                out.notes.push(format!(
                    "{key}: helm.sh/resource-policy is keep; left in place and forgotten"
                ));
                continue;
            }
            if spec.mode == Mode::Diff {
                out.objects.push(super::set::ObjectRow::new(
                    &key,
                    "would be pruned",
                    Some(&live),
                ));
                out.changes += 1;
                out.diff.push_str(&format!("would prune {key}\n"));
                continue;
            }
            let uid = live["metadata"]["uid"].as_str();
            match Cluster::delete(client, &r, ns, &key.name, uid).await {
                Ok(()) => out.pruned.push(key.to_string()),
                Err(e) => {
                    out.failed
                        .push(Failure::from(e).context(format_args!("{key}: not pruned")));
                    record.members.insert(key, member);
                }
            }
        }
    }
}
