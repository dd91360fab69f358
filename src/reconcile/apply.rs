//! One object against the cluster: apply it as the plan decided (or dry-run it and compare),
//! recreate it when an immutable field changed and the app allows it, or show the diff.

use std::time::{Duration, Instant};

use kube::Client;
use serde_json::Value;

use super::set::Mode;
use crate::cluster::{Cluster, Resource};
use crate::failure::Failure;
use crate::plan::{self, Decision};

/// The result of one object's apply.
pub(super) enum Applied {
    Unchanged,
    /// Applied; the response's fingerprint of flotilla's fields.
    Changed(String, &'static str),
    /// Diff mode: it would change; the diff.
    Diff(String),
    Failed(Failure),
    /// Refused because its namespace is being deleted.
    Terminating,
}

/// Applies one object as `decision` says; an immutable field is recreated if allowed.
#[allow(clippy::too_many_arguments)]
pub(super) async fn apply_one(
    client: &Client,
    r: &Resource,
    body: &Value,
    live: Option<Value>,
    decision: Decision,
    force: bool,
    recreate: bool,
    mode: Mode,
    timeout: Duration,
) -> Applied {
    let ns = body["metadata"]["namespace"]
        .as_str()
        .filter(|_| r.namespaced);
    let name = body["metadata"]["name"].as_str().unwrap_or_default();
    let why: &'static str = match decision {
        Decision::Apply(reason) => reason,
        _ => "drifted",
    };
    if mode == Mode::Diff || decision == Decision::Check {
        match Cluster::apply(client, r, body, force, true).await {
            Ok(dry) => {
                let current = live.clone().unwrap_or(Value::Null);
                if current.is_object() && !plan::drifted(&current, &dry) {
                    return Applied::Unchanged;
                }
                if mode == Mode::Diff {
                    return Applied::Diff(diff_text(&current, &dry));
                }
            }
            Err(e) if e.namespace_terminating() => return Applied::Terminating,
            Err(e) if mode == Mode::Diff => {
                return match (&live, e.is_not_found()) {
                    // A new object whose namespace is not there yet (onboarding comes first).
                    (None, true) => Applied::Diff(diff_text(&Value::Null, body)),
                    _ => Applied::Failed(e.into()),
                };
            }
            Err(e) if e.immutable_fields().is_none() => return Applied::Failed(e.into()),
            Err(_) => {} // the apply below meets it again and handles it
        }
    }
    let why = match (decision, &live) {
        (Decision::Check, Some(l)) => {
            let others = plan::other_managers(l);
            if others.is_empty() {
                "drifted"
            } else {
                tracing::info!(object = %name, changed_by = ?others, "reverting drift");
                "drift reverted"
            }
        }
        _ => why,
    };
    match Cluster::apply(client, r, body, force, false).await {
        Ok(applied) => Applied::Changed(plan::fingerprint(&applied), why),
        Err(e) if e.namespace_terminating() => Applied::Terminating,
        Err(e) => match e.immutable_fields() {
            Some(fields) if recreate => {
                let uid = live
                    .as_ref()
                    .and_then(|l| l["metadata"]["uid"].as_str())
                    .map(str::to_string);
                if let Err(e) = Cluster::delete(client, r, ns, name, uid.as_deref()).await {
                    let immutable = fields.join(", ");
                    return Applied::Failed(
                        Failure::from(e)
                            .context(format_args!("recreating (immutable {immutable})")),
                    );
                }
                let deadline = crate::deadline::from_now(timeout);
                loop {
                    match Cluster::get(client, r, ns, name).await {
                        Ok(None) => break,
                        Ok(Some(_)) if Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(200)).await
                        }
                        Ok(Some(_)) => {
                            return Applied::Failed(Failure::transient(
                                "recreating: the old object is still being deleted",
                            ));
                        }
                        Err(e) => return Applied::Failed(Failure::from(e).context("recreating")),
                    }
                }
                match Cluster::apply(client, r, body, force, false).await {
                    Ok(applied) => Applied::Changed(plan::fingerprint(&applied), "recreated"),
                    Err(e) => Applied::Failed(Failure::from(e).context("recreating")),
                }
            }
            Some(fields) => {
                let named = if fields.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", fields.join(", "))
                };
                Applied::Failed(Failure::permanent(format!(
                    "{e}; the change touches an immutable field{named}: set options.recreate: true on the app to delete and recreate the object"
                )))
            }
            None => Applied::Failed(e.into()),
        },
    }
}

/// A unified diff between live (or nothing) and the dry-run result, noise stripped and Secret
/// values masked.
fn diff_text(live: &Value, dry: &Value) -> String {
    let mut before = if live.is_null() {
        Value::Null
    } else {
        plan::normalize(live)
    };
    let mut after = plan::normalize(dry);
    plan::mask_secrets(&mut before, &mut after);
    let yaml = |v: &Value| {
        if v.is_null() {
            String::new()
        } else {
            serde_saphyr::to_string(v).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
        }
    };
    let name = |v: &Value| {
        format!(
            "{} {}",
            v["kind"].as_str().unwrap_or_default(),
            match v["metadata"]["namespace"].as_str() {
                Some(ns) => format!(
                    "{ns}/{}",
                    v["metadata"]["name"].as_str().unwrap_or_default()
                ),
                None => v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            }
        )
    };
    let title = name(&after);
    let old_name = if live.is_null() {
        "/dev/null".to_string()
    } else {
        format!("live {title}")
    };
    plan::unified_diff(
        &yaml(&before),
        &yaml(&after),
        &old_name,
        &format!("desired {title}"),
    )
}
