//! The reads one pass shares between the sets of a tenant: each kind's labelled objects in a
//! namespace, and the namespace's inventories, listed once for all of the tenant's apps there
//! instead of once per app (steady-state reads grow with kinds × namespaces, not with apps).
//!
//! Objects are listed as metadata only and kept compact (the `part-of` label, the hash
//! annotation, the deletion mark, flotilla's own managed fields): what deciding needs. Each set
//! takes its own share out, so the cache shrinks as the pass goes. A share is used only if the
//! set's inventory was not written since the list was read (by another round: a unit is synced
//! by one round at a time, but a second round may have read the list before the first wrote);
//! else, and when a list fails, the set reads for itself as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kube::Client;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::cluster::{Cluster, Resource};
use crate::inventory::{ID_LABEL, PART_OF_LABEL};
use crate::plan::{FINGERPRINT, HASH_ANNOTATION};

/// Who lists, which kind (`apiVersion/kind`), where.
type Key = (String, String, Option<String>);

/// One list: when it was read, and the shares not taken yet.
struct Listed<T> {
    at: Instant,
    shares: Mutex<HashMap<String, Vec<T>>>,
}

type Lists<T> = Mutex<HashMap<Key, Arc<OnceCell<Option<Listed<T>>>>>>;

/// What deciding needs of a live member (a few hundred bytes; the same as a JSON tree takes
/// kilobytes, and a pass may hold every tenant's lists at once).
struct Summary {
    name: String,
    namespace: Option<String>,
    uid: Option<String>,
    deletion: Option<String>,
    hash: Option<String>,
    /// [`crate::plan::fingerprint`] of flotilla's managed fields.
    fingerprint: String,
}

/// One pass's shared lists.
#[derive(Default)]
pub(crate) struct Shared {
    members: Lists<Summary>,
    inventories: Lists<Value>,
}

impl Shared {
    /// The live members of set `id` of kind `r` in `ns`, compact, listed as `identity`; `None`
    /// if the list failed (the set lists for itself). The `Instant` is when the list was read.
    pub(crate) async fn members(
        &self,
        (client, identity): (&Client, &str),
        r: &Resource,
        ns: Option<&str>,
        id: &str,
    ) -> Option<(Instant, Vec<Value>)> {
        let key = (
            identity.to_string(),
            format!("{}/{}", r.api.api_version, r.api.kind),
            ns.map(str::to_string),
        );
        let (at, mine) = take(&self.members, key, id, async {
            let items = Cluster::list_metadata(client, r, ns, PART_OF_LABEL).await;
            items.map(|items| {
                let mut shares: HashMap<String, Vec<Summary>> = HashMap::new();
                for item in items {
                    let meta = &item["metadata"];
                    let text = |v: &Value| v.as_str().map(str::to_string);
                    let set = text(&meta["labels"][PART_OF_LABEL]).unwrap_or_default();
                    shares.entry(set).or_default().push(Summary {
                        name: text(&meta["name"]).unwrap_or_default(),
                        namespace: text(&meta["namespace"]),
                        uid: text(&meta["uid"]),
                        deletion: text(&meta["deletionTimestamp"]),
                        hash: text(&meta["annotations"][HASH_ANNOTATION]),
                        fingerprint: crate::plan::fingerprint(&item),
                    });
                }
                shares
            })
        })
        .await?;
        Some((at, mine.into_iter().map(|s| compact(s, r, id)).collect()))
    }

    /// The inventory ConfigMap `name` in `ns`, read with the namespace's other inventories;
    /// `Some((at, None))` if it does not exist.
    pub(crate) async fn inventory(
        &self,
        (client, identity): (&Client, &str),
        configmaps: &Resource,
        ns: &str,
        name: &str,
    ) -> Option<(Instant, Option<Value>)> {
        let key = (
            identity.to_string(),
            "v1/ConfigMap".to_string(),
            Some(ns.to_string()),
        );
        let (at, mut found) = take(&self.inventories, key, name, async {
            let items = Cluster::list(client, configmaps, Some(ns), ID_LABEL).await;
            items.map(|items| {
                items
                    .into_iter()
                    .map(|mut i| {
                        // Kept until its set takes it: without the managed fields' tree.
                        if let Some(meta) = i["metadata"].as_object_mut() {
                            meta.remove("managedFields");
                        }
                        let name = i["metadata"]["name"].as_str().unwrap_or_default();
                        (name.to_string(), vec![i])
                    })
                    .collect()
            })
        })
        .await?;
        Some((at, found.pop()))
    }
}

/// Takes `share` out of the list `key`, reading the list first if no set did.
async fn take<T>(
    lists: &Lists<T>,
    key: Key,
    share: &str,
    read: impl Future<Output = Result<HashMap<String, Vec<T>>, crate::cluster::Error>>,
) -> Option<(Instant, Vec<T>)> {
    let cell = lists
        .lock()
        .expect("shared lists")
        .entry(key)
        .or_default()
        .clone();
    let listed = cell
        .get_or_init(|| async {
            let at = Instant::now();
            match read.await {
                Ok(shares) => Some(Listed {
                    at,
                    shares: Mutex::new(shares),
                }),
                Err(error) => {
                    tracing::debug!(%error, "a shared list failed; each set lists for itself");
                    None
                }
            }
        })
        .await
        .as_ref()?;
    let mine = listed
        .shares
        .lock()
        .expect("shared list")
        .remove(share)
        .unwrap_or_default();
    Some((listed.at, mine))
}

/// A member as the set decides on it: `apiVersion`, `kind`, its name, uid and deletion mark,
/// the `part-of` label, the hash annotation, and the fingerprint of flotilla's managed fields
/// (read by [`crate::plan::fingerprint`]).
fn compact(s: Summary, r: &Resource, id: &str) -> Value {
    json!({
        "apiVersion": r.api.api_version,
        "kind": r.api.kind,
        FINGERPRINT: s.fingerprint,
        "metadata": {
            "name": s.name,
            "namespace": s.namespace,
            "uid": s.uid,
            "deletionTimestamp": s.deletion,
            "labels": { PART_OF_LABEL: id },
            "annotations": { HASH_ANNOTATION: s.hash },
        }
    })
}
