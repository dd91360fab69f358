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

use crate::cluster::{Cluster, FIELD_MANAGER, Resource};
use crate::inventory::{ID_LABEL, PART_OF_LABEL};
use crate::plan::HASH_ANNOTATION;

/// Who lists, which kind (`apiVersion/kind`), where; and what the list is shared out by.
type Key = (String, String, Option<String>, Share);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Share {
    /// Labelled objects, by their `part-of` label.
    Members,
    /// Inventory ConfigMaps, by name.
    Inventories,
}

/// One list: when it was read, and the shares not taken yet.
struct Listed {
    at: Instant,
    shares: Mutex<HashMap<String, Vec<Value>>>,
}

/// One pass's shared lists.
#[derive(Default)]
pub(crate) struct Shared {
    lists: Mutex<HashMap<Key, Arc<OnceCell<Option<Listed>>>>>,
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
            Share::Members,
        );
        self.take(key, id, async {
            let items = Cluster::list_metadata(client, r, ns, PART_OF_LABEL).await;
            items.map(|items| {
                let mut shares: HashMap<String, Vec<Value>> = HashMap::new();
                for item in items {
                    let set = item["metadata"]["labels"][PART_OF_LABEL]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    shares.entry(set).or_default().push(compact(item, r));
                }
                shares
            })
        })
        .await
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
            Share::Inventories,
        );
        let (at, mut found) = self
            .take(key, name, async {
                let items = Cluster::list(client, configmaps, Some(ns), ID_LABEL).await;
                items.map(|items| {
                    items
                        .into_iter()
                        .map(|i| {
                            let name = i["metadata"]["name"].as_str().unwrap_or_default();
                            (name.to_string(), vec![i])
                        })
                        .collect()
                })
            })
            .await?;
        Some((at, found.pop()))
    }

    /// Takes `share` out of the list `key`, reading the list first if no set did.
    async fn take(
        &self,
        key: Key,
        share: &str,
        read: impl Future<Output = Result<HashMap<String, Vec<Value>>, crate::cluster::Error>>,
    ) -> Option<(Instant, Vec<Value>)> {
        let cell = self
            .lists
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
}

/// What deciding needs of a live object: `apiVersion`, `kind`, its name, uid and deletion mark,
/// the `part-of` label, the hash annotation and flotilla's own managed-fields entries.
fn compact(item: Value, r: &Resource) -> Value {
    let meta = &item["metadata"];
    let ours: Vec<&Value> = meta["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["manager"] == FIELD_MANAGER)
        .collect();
    json!({
        "apiVersion": r.api.api_version,
        "kind": r.api.kind,
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "deletionTimestamp": meta["deletionTimestamp"],
            "labels": { PART_OF_LABEL: meta["labels"][PART_OF_LABEL] },
            "annotations": { HASH_ANNOTATION: meta["annotations"][HASH_ANNOTATION] },
            "managedFields": ours,
        }
    })
}
