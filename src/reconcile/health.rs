//! Whether a live object is healthy: workloads rolled out, Jobs complete, CRDs Established, and
//! anything with a `Ready` condition ready. Pure.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    Ready,
    /// Not yet; why.
    Progressing(String),
    /// Will not get there without a change (a failed Job).
    Failed(String),
}

/// The health of `live`; objects without a notion of health are ready once they exist.
pub(crate) fn of(live: &Value) -> Health {
    let kind = live["kind"].as_str().unwrap_or_default();
    let group = live["apiVersion"]
        .as_str()
        .and_then(|v| v.rsplit_once('/'))
        .map_or("", |(g, _)| g);
    let status = &live["status"];
    let generation = live["metadata"]["generation"].as_i64().unwrap_or(0);
    let observed = status["observedGeneration"].as_i64().unwrap_or(-1);
    let int = |v: &Value| v.as_i64().unwrap_or(0);
    match (group, kind) {
        ("apps", "Deployment" | "StatefulSet") => {
            let wanted = live["spec"]["replicas"].as_i64().unwrap_or(1);
            if observed < generation {
                return progressing("the controller has not observed the latest generation");
            }
            let updated = int(&status["updatedReplicas"]);
            let ready_field = if kind == "Deployment" {
                "availableReplicas"
            } else {
                "readyReplicas"
            };
            let ready = int(&status[ready_field]);
            if updated < wanted || ready < wanted {
                return progressing(&format!(
                    "{updated} of {wanted} replicas updated, {ready} {}",
                    if kind == "Deployment" {
                        "available"
                    } else {
                        "ready"
                    }
                ));
            }
            Health::Ready
        }
        ("apps", "DaemonSet") => {
            if observed < generation {
                return progressing("the controller has not observed the latest generation");
            }
            let wanted = int(&status["desiredNumberScheduled"]);
            let updated = int(&status["updatedNumberScheduled"]);
            let available = int(&status["numberAvailable"]);
            if updated < wanted || available < wanted {
                return progressing(&format!(
                    "{updated} of {wanted} pods updated, {available} available"
                ));
            }
            Health::Ready
        }
        ("batch", "Job") => {
            if condition(live, "Complete") == Some(true) {
                Health::Ready
            } else if condition(live, "Failed") == Some(true) {
                Health::Failed(format!(
                    "the Job failed: {}",
                    condition_message(live, "Failed")
                ))
            } else {
                progressing("the Job has not completed")
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            match condition(live, "Established") {
                Some(true) => Health::Ready,
                _ => progressing("not Established"),
            }
        }
        _ => match condition(live, "Ready") {
            Some(false) => progressing(&format!(
                "Ready is False: {}",
                condition_message(live, "Ready")
            )),
            _ => Health::Ready,
        },
    }
}

fn progressing(why: &str) -> Health {
    Health::Progressing(why.to_string())
}

fn find<'a>(live: &'a Value, kind: &str) -> Option<&'a Value> {
    live["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn condition(live: &Value, kind: &str) -> Option<bool> {
    find(live, kind).map(|c| c["status"] == "True")
}

fn condition_message(live: &Value, kind: &str) -> String {
    find(live, kind)
        .map(|c| {
            let reason = c["reason"].as_str().unwrap_or_default();
            let message = c["message"].as_str().unwrap_or_default();
            match (reason.is_empty(), message.is_empty()) {
                (false, false) => format!("{reason}: {message}"),
                (false, true) => reason.to_string(),
                _ => message.to_string(),
            }
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deployments_jobs_crds_and_ready_conditions() {
        let deploy = |status: Value| {
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"generation": 2}, "spec": {"replicas": 2}, "status": status})
        };
        assert!(matches!(
            of(&deploy(json!({"observedGeneration": 1}))),
            Health::Progressing(_)
        ));
        assert_eq!(
            of(&deploy(
                json!({"observedGeneration": 2, "updatedReplicas": 2,
                "availableReplicas": 1})
            )),
            Health::Progressing("2 of 2 replicas updated, 1 available".into())
        );
        assert_eq!(
            of(&deploy(
                json!({"observedGeneration": 2, "updatedReplicas": 2,
                "availableReplicas": 2})
            )),
            Health::Ready
        );
        let job = |t: &str| {
            json!({"apiVersion": "batch/v1", "kind": "Job", "status": {"conditions": [
                {"type": t, "status": "True", "reason": "BackoffLimitExceeded"}]}})
        };
        assert_eq!(of(&job("Complete")), Health::Ready);
        assert_eq!(
            of(&job("Failed")),
            Health::Failed("the Job failed: BackoffLimitExceeded".into())
        );
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition", "status": {}});
        assert!(matches!(of(&crd), Health::Progressing(_)));
        let cr = json!({"apiVersion": "x.io/v1", "kind": "Db", "status": {"conditions": [
            {"type": "Ready", "status": "False", "message": "waiting for disk"}]}});
        assert_eq!(
            of(&cr),
            Health::Progressing("Ready is False: waiting for disk".into())
        );
        assert_eq!(
            of(&json!({"apiVersion": "v1", "kind": "ConfigMap"})),
            Health::Ready
        );
    }
}
