//! Waiting on what a set applied: CRDs Established and served before their custom resources, and
//! every object healthy when the unit asks for it (`wait: true`), within its budget.

use std::time::{Duration, Instant};

use kube::Client;
use serde_json::Value;

use super::health::{self, Health};
use super::set::{Engine, Outcome, SetSpec};
use crate::cluster::{Cluster, Resource};
use crate::failure::Failure;
use crate::render::Object;

impl Engine {
    /// Waits for the CRDs just applied to be Established, so their custom resources can follow.
    pub(super) async fn wait_established(
        &self,
        client: &Client,
        objects: &[(&Object, Resource)],
        out: &mut Outcome,
    ) {
        let crds: Vec<&(&Object, Resource)> = objects
            .iter()
            .filter(|(o, _)| o.key.kind == "CustomResourceDefinition")
            .collect();
        for (o, r) in crds {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match Cluster::get(client, r, None, &o.key.name).await {
                    Ok(Some(live)) if health::of(&live) == Health::Ready => {
                        // Discovery lags Established a little on a real API server.
                        if !self.served(&live, deadline).await {
                            out.failed.push(Failure::transient(format!(
                                "{}: Established, but its kind is not served by discovery after 60s",
                                o.key
                            )));
                        }
                        break;
                    }
                    Ok(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    Ok(_) => {
                        out.failed.push(Failure::transient(format!(
                            "{}: not Established after 60s",
                            o.key
                        )));
                        break;
                    }
                    Err(e) => {
                        out.failed.push(Failure::from(e).context(&o.key));
                        break;
                    }
                }
            }
        }
    }

    /// Waits until discovery serves the kind of every served version of `crd`.
    async fn served(&self, crd: &Value, deadline: Instant) -> bool {
        let group = crd["spec"]["group"].as_str().unwrap_or_default();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap_or_default();
        let versions: Vec<&str> = crd["spec"]["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["served"] != false)
            .filter_map(|v| v["name"].as_str())
            .collect();
        for version in versions {
            let api_version = format!("{group}/{version}");
            while self.cluster.resolve(&api_version, kind).await.is_err() {
                if Instant::now() >= deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        true
    }

    /// Waits up to the set's timeout for every object to be healthy; reports those that are not.
    pub(super) async fn wait_healthy(
        &self,
        client: &Client,
        spec: &SetSpec,
        objects: &[(&Object, Resource)],
        out: &mut Outcome,
    ) {
        let deadline = crate::deadline::from_now(spec.options.timeout.min(self.max_wait));
        let mut pending: Vec<&(&Object, Resource)> = objects.iter().collect();
        let mut delay = Duration::from_millis(100);
        loop {
            let mut still = Vec::new();
            let mut reasons = Vec::new();
            for entry in pending {
                let (o, r) = entry;
                let ns = o.key.namespace.as_deref().filter(|_| r.namespaced);
                match Cluster::get(client, r, ns, &o.key.name).await {
                    Ok(Some(live)) => match health::of(&live) {
                        Health::Ready => {}
                        Health::Progressing(why) => {
                            reasons.push(format!("{}: not ready: {why}", o.key));
                            still.push(entry);
                        }
                        // The object itself gave up (a Job out of retries): until it changes.
                        Health::Failed(why) => {
                            out.failed
                                .push(Failure::permanent(format!("{}: {why}", o.key)));
                        }
                    },
                    Ok(None) => {
                        reasons.push(format!("{}: not found", o.key));
                        still.push(entry);
                    }
                    Err(e) => {
                        reasons.push(format!("{}: {e}", o.key));
                        still.push(entry);
                    }
                }
            }
            if still.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                let waited = humantime::format_duration(spec.options.timeout.min(self.max_wait));
                out.failed.extend(
                    reasons
                        .into_iter()
                        .map(|r| Failure::transient(format!("{r} (waited {waited})"))),
                );
                return;
            }
            pending = still;
            tokio::time::sleep(delay.min(deadline.saturating_duration_since(Instant::now()))).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}
