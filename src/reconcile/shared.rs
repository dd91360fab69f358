//! The reads one pass shares between the sets of a tenant: each kind's labelled objects in a
//! namespace, and the namespace's inventories, listed once for all of the tenant's apps there
//! instead of once per app (steady-state reads grow with kinds × namespaces, not with apps).
//!
//! Objects are listed as metadata only and kept compact (the `part-of` label, the hash
//! annotation, the deletion mark, flotilla's own managed fields): what deciding needs. Each set
//! takes its own share out, so the cache shrinks as the pass goes. A share is used only within
//! 30 s of the list, once, and if the set's inventory was not written since the list was read
//! (by another round: a unit is synced by one round at a time, but a second round may have read
//! the list before the first wrote); else, and when a list fails, the set reads for itself as
//! before. A pass of a single app shares nothing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Client;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::cluster::{Cluster, Resource};
use crate::inventory::{ID_LABEL, PART_OF_LABEL};
use crate::plan::HASH_ANNOTATION;

/// Who lists, which kind (`apiVersion/kind`), where.
type Key = (String, String, Option<String>);

/// How long a list may serve its sets: a set that comes later (after a dependency level's
/// health wait, or a long queue for a slot) reads for itself.
const FRESH: Duration = Duration::from_secs(30);

/// One list: when it was read, the shares not taken yet, and those taken (a second taker of
/// one share reads for itself).
struct Listed<T> {
    at: Instant,
    shares: Mutex<Shares<T>>,
}

/// The shares not taken yet, and the names of those taken.
type Shares<T> = (HashMap<String, Vec<T>>, HashSet<String>);

type Lists<T> = Mutex<HashMap<Key, Arc<OnceCell<Option<Listed<T>>>>>>;

/// What deciding needs of a live member (a few hundred bytes; the same as a JSON tree takes
/// kilobytes, and a pass may hold every tenant's lists at once).
struct Summary {
    name: Box<str>,
    /// Shared by the members of one namespace.
    namespace: Option<Arc<str>>,
    uid: Option<Box<str>>,
    deletion: Option<Box<str>>,
    hash: Option<Box<str>>,
    /// [`crate::plan::fingerprint`] of the whole object's managed fields.
    fingerprint: Box<str>,
}

/// One pass's shared lists.
#[derive(Default)]
pub(crate) struct Shared {
    members: Lists<Summary>,
    /// Kept as JSON text until taken (a third of the tree's memory).
    inventories: Lists<Box<str>>,
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
    ) -> Option<(Instant, Vec<(Value, String)>)> {
        let key = (
            identity.to_string(),
            format!("{}/{}", r.api.api_version, r.api.kind),
            ns.map(str::to_string),
        );
        let (at, mine) = take(&self.members, key, id, async {
            let items = Cluster::list_metadata(client, r, ns, PART_OF_LABEL).await;
            items.map(|items| {
                let mut shares: HashMap<String, Vec<Summary>> = HashMap::new();
                let mut namespace: Option<Arc<str>> = None;
                for item in items {
                    let meta = &item["metadata"];
                    let text = |v: &Value| v.as_str().map(Box::<str>::from);
                    let set = meta["labels"][PART_OF_LABEL].as_str().unwrap_or_default();
                    let ns = meta["namespace"].as_str().map(|ns| match &namespace {
                        Some(shared) if **shared == *ns => shared.clone(),
                        _ => namespace.insert(Arc::from(ns)).clone(),
                    });
                    let summary = Summary {
                        name: text(&meta["name"]).unwrap_or_default(),
                        namespace: ns,
                        uid: text(&meta["uid"]),
                        deletion: text(&meta["deletionTimestamp"]),
                        hash: text(&meta["annotations"][HASH_ANNOTATION]),
                        fingerprint: crate::plan::fingerprint(&item).into(),
                    };
                    match shares.get_mut(set) {
                        Some(share) => share.push(summary),
                        None => {
                            shares.insert(set.to_string(), vec![summary]);
                        }
                    }
                }
                for share in shares.values_mut() {
                    share.shrink_to_fit();
                }
                shares
            })
        })
        .await?;
        let members = mine.into_iter().map(|s| {
            let fingerprint = s.fingerprint.to_string();
            (compact(s, r, id), fingerprint)
        });
        Some((at, members.collect()))
    }

    /// The inventory ConfigMap `name` in `ns`, read with the namespace's other inventories;
    /// `None` if the list did not hold it (the set reads it by name: it may not exist, or be a
    /// ConfigMap without the id label, which the set must refuse).
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
                        (name.to_string(), vec![i.to_string().into_boxed_str()])
                    })
                    .collect()
            })
        })
        .await?;
        // Not in the list: no inventory, or a ConfigMap of that name without the id label,
        // which the set must read and refuse itself. Either way, read by name.
        let text = found.pop()?;
        Some((at, Some(serde_json::from_str(&text).ok()?)))
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
                    shares: Mutex::new((shares, HashSet::new())),
                }),
                Err(error) => {
                    tracing::debug!(%error, "a shared list failed; each set lists for itself");
                    None
                }
            }
        })
        .await
        .as_ref()?;
    if listed.at.elapsed() > FRESH {
        return None;
    }
    let mut shares = listed.shares.lock().expect("shared list");
    let (left, taken) = &mut *shares;
    if !taken.insert(share.to_string()) {
        return None;
    }
    Some((listed.at, left.remove(share).unwrap_or_default()))
}

/// A member as the set decides on it: `apiVersion`, `kind`, its name, uid and deletion mark,
/// the `part-of` label and the hash annotation (its fingerprint goes beside it: see
/// [`crate::plan::decide`]).
fn compact(s: Summary, r: &Resource, id: &str) -> Value {
    json!({
        "apiVersion": r.api.api_version,
        "kind": r.api.kind,
        "metadata": {
            "name": s.name,
            "namespace": s.namespace.as_deref(),
            "uid": s.uid,
            "deletionTimestamp": s.deletion,
            "labels": { PART_OF_LABEL: id },
            "annotations": { HASH_ANNOTATION: s.hash },
        }
    })
}
