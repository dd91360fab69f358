//! Running a set's Helm hooks: each phase's hooks one at a time in Helm's order, a previous copy
//! deleted first (`before-hook-creation`), each waited for (a Job until it completes, anything
//! else until healthy), deleted afterwards when its policy says so. Hooks run only when the
//! set's render changed since they last ran to the end; the hooks flotilla created are kept in
//! the inventory (not as members) and deleted with the set.

use std::time::{Duration, Instant};

use kube::Client;
use sha2::{Digest as _, Sha256};

use super::health::{self, Health};
use super::set::{Engine, Outcome, SetSpec};
use crate::cluster::{Cluster, Error, Resource};
use crate::failure::Failure;
use crate::inventory::{PART_OF_LABEL, Record};
use crate::render::hook::{self, Hook, Phase};
use crate::render::{Object, ObjectKey};

/// A digest of everything a set renders (hooks included): hooks run again when it changes.
pub(super) fn digest(objects: &[Object]) -> String {
    let mut all: Vec<(&ObjectKey, &str)> =
        objects.iter().map(|o| (&o.key, o.hash.as_str())).collect();
    all.sort();
    let mut hasher = Sha256::new();
    for (key, hash) in all {
        hasher.update(format!("{key} {hash}\n"));
    }
    hasher.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The hooks of `phase` among `objects`, in the order they run.
pub(super) fn of_phase(objects: &[Object], phase: Phase) -> Vec<(&Object, Hook)> {
    let mut hooks: Vec<(&Object, Hook)> = objects
        .iter()
        .filter_map(|o| Some((o, o.hook.clone()?)))
        .filter(|(_, h)| h.phase == phase)
        .collect();
    hooks.sort_by_cached_key(|(o, h)| hook::order_key(h, &o.key));
    hooks
}

impl Engine {
    /// Runs `hooks` in order; the first that fails stops the rest. `record.hooks` loses the
    /// ones deleted by their policy.
    pub(super) async fn run_hooks(
        &self,
        client: &Client,
        spec: &SetSpec,
        hooks: &[(&Object, Hook)],
        deadline: Instant,
        record: &mut Record,
        out: &mut Outcome,
    ) -> Result<(), Failure> {
        let timeout = spec.options.timeout.min(self.max_wait);
        let id = &spec.parent.id();
        for (o, h) in hooks {
            let r = self.resolve_hook(o, spec).await?;
            let ns = o.key.namespace.as_deref().filter(|_| r.namespaced);
            let fail = |e: Error, doing: &str| {
                Failure::from(e).context(format_args!("hook {}: {doing}", o.key))
            };
            if let Some(live) = Cluster::get(client, &r, ns, &o.key.name)
                .await
                .map_err(|e| fail(e, "reading it"))?
            {
                if live["metadata"]["labels"][PART_OF_LABEL].as_str() != Some(id) {
                    return Err(Failure::permanent(format!(
                        "hook {}: an object of that name exists and is not this set's; not replaced",
                        o.key
                    )));
                }
                if h.before_creation {
                    let uid = live["metadata"]["uid"].as_str();
                    Cluster::delete(client, &r, ns, &o.key.name, uid)
                        .await
                        .map_err(|e| fail(e, "deleting the previous copy"))?;
                    wait_gone(client, &r, ns, &o.key, deadline).await?;
                }
            }
            let body = crate::plan::applied_body(o, id);
            Cluster::apply(client, &r, &body, spec.options.force, false)
                .await
                .map_err(|e| fail(e, "creating it"))?;
            let (verdict, uid) = wait_done(client, &r, ns, &o.key, deadline, timeout).await;
            let delete = match &verdict {
                Ok(()) => h.on_success,
                Err(_) => h.on_failure,
            };
            if delete {
                Cluster::delete(client, &r, ns, &o.key.name, uid.as_deref())
                    .await
                    .map_err(|e| fail(e, "deleting it after it ran"))?;
                record.hooks.remove(&o.key);
            }
            verdict?;
            out.applied.push(format!("{} (hook ran)", o.key));
        }
        Ok(())
    }

    /// Deletes the hooks `record` holds (the set is being removed); those that cannot be stay.
    pub(super) async fn delete_hooks(
        &self,
        client: &Client,
        id: &str,
        record: &mut Record,
        out: &mut Outcome,
    ) {
        for (key, api_version) in record.hooks.clone() {
            let r = match self.cluster.resolve(&api_version, &key.kind).await {
                Ok(r) => r,
                Err(Error::UnknownKind { .. }) => {
                    record.hooks.remove(&key);
                    continue;
                }
                Err(e) => {
                    out.failed
                        .push(Failure::from(e).context(format_args!("hook {key}: not deleted")));
                    continue;
                }
            };
            let ns = key.namespace.as_deref().filter(|_| r.namespaced);
            let result = match Cluster::get(client, &r, ns, &key.name).await {
                Ok(Some(live))
                    if live["metadata"]["labels"][PART_OF_LABEL].as_str() == Some(id) =>
                {
                    let uid = live["metadata"]["uid"].as_str();
                    Cluster::delete(client, &r, ns, &key.name, uid)
                        .await
                        .map(|()| true)
                }
                Ok(_) => Ok(false),
                Err(e) => Err(e),
            };
            match result {
                Ok(deleted) => {
                    if deleted {
                        out.pruned.push(format!("{key} (hook)"));
                    }
                    record.hooks.remove(&key);
                }
                Err(e) => out
                    .failed
                    .push(Failure::from(e).context(format_args!("hook {key}: not deleted"))),
            }
        }
    }

    /// A hook's kind as the cluster serves it, within the tenant's limits.
    async fn resolve_hook(&self, o: &Object, spec: &SetSpec) -> Result<Resource, Failure> {
        self.resolve_checked(o, spec)
            .await
            .map_err(|e| e.context(format_args!("hook {}", o.key)))
    }
}

/// A hook's health: a Pod by its phase (it runs to completion, as Helm waits for it), anything
/// else as the health wait reads it (a Job complete).
fn hook_health(live: &serde_json::Value) -> Health {
    let pod = live["kind"] == "Pod" && live["apiVersion"] == "v1";
    if !pod {
        return health::of(live);
    }
    match live["status"]["phase"].as_str() {
        Some("Succeeded") => Health::Ready,
        Some("Failed") => Health::Failed("the Pod failed".into()),
        other => Health::Progressing(format!("the Pod is {}", other.unwrap_or("pending"))),
    }
}

/// Waits until the object is gone (a delete in the background may take a moment).
async fn wait_gone(
    client: &Client,
    r: &Resource,
    ns: Option<&str>,
    key: &ObjectKey,
    deadline: Instant,
) -> Result<(), Failure> {
    let mut delay = Duration::from_millis(50);
    loop {
        match Cluster::get(client, r, ns, &key.name).await {
            Ok(None) => return Ok(()),
            Ok(Some(_)) if Instant::now() < deadline => {}
            Ok(Some(_)) => {
                return Err(Failure::transient(format!(
                    "hook {key}: its previous copy is still being deleted"
                )));
            }
            Err(e) => return Err(Failure::from(e).context(format_args!("hook {key}"))),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

/// Waits until the hook succeeded (a Job completed; anything else healthy) or failed; its
/// verdict and the uid it had.
async fn wait_done(
    client: &Client,
    r: &Resource,
    ns: Option<&str>,
    key: &ObjectKey,
    deadline: Instant,
    timeout: Duration,
) -> (Result<(), Failure>, Option<String>) {
    let mut delay = Duration::from_millis(100);
    let mut uid = None;
    loop {
        let why = match Cluster::get(client, r, ns, &key.name).await {
            Ok(Some(live)) => {
                uid = live["metadata"]["uid"].as_str().map(str::to_string);
                match hook_health(&live) {
                    Health::Ready => return (Ok(()), uid),
                    Health::Failed(why) => {
                        return (
                            Err(Failure::permanent(format!("hook {key} failed: {why}"))),
                            uid,
                        );
                    }
                    Health::Progressing(why) => why,
                }
            }
            // Seen, then gone: deleted once finished (`ttlSecondsAfterFinished`), which only
            // the Job controller does after the end; counted as run rather than waited for.
            Ok(None) if uid.is_some() => return (Ok(()), None),
            Ok(None) => "not found".to_string(),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            let waited = humantime::format_duration(timeout);
            return (
                Err(Failure::transient(format!(
                    "hook {key} did not finish: {why} (waited {waited})"
                ))),
                uid,
            );
        }
        tokio::time::sleep(delay.min(deadline.saturating_duration_since(Instant::now()))).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}
