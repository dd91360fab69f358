//! Leader election through a `coordination.k8s.io/v1` Lease, as client-go does it: the holder
//! renews every third of the lease; another replica takes the Lease over only after it has seen
//! the same holder and renew time for a whole lease duration (its own clock, so clock skew
//! between nodes does not matter); every write is an update with the read `resourceVersion`,
//! so two replicas never both win.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

use crate::config::LeaderElection;

pub(crate) struct Elector {
    api: Api<Lease>,
    name: String,
    /// This replica's holder identity.
    pub identity: String,
    duration: Duration,
    /// The last holder/renew record seen, and when it was first seen.
    observed: Option<(String, Instant)>,
}

impl Elector {
    pub(crate) fn new(client: kube::Client, config: &LeaderElection, identity: String) -> Elector {
        Elector {
            api: Api::namespaced(client, &config.namespace),
            name: config.name.clone(),
            identity,
            duration: config.lease_duration,
            observed: None,
        }
    }

    /// One attempt to take or renew the Lease: whether this replica holds it afterwards.
    pub(crate) async fn try_acquire(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let seconds = self.duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = format!("{holder}|{:?}", spec.renew_time);
        let seen = match &self.observed {
            Some((r, at)) if *r == record => *at,
            _ => {
                let at = Instant::now();
                self.observed = Some((record, at));
                at
            }
        };
        let held_for = spec
            .lease_duration_seconds
            .map_or(self.duration, |s| Duration::from_secs(s.max(1) as u64));
        if !holder.is_empty() && holder != self.identity && seen.elapsed() < held_for {
            return Ok(false);
        }
        if holder != self.identity {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.acquire_time = Some(now.clone());
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(now);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            // Someone else wrote it since we read it.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (on shutdown), so that another replica takes over at once.
    pub(crate) async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        if let Err(error) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(%error, "could not release the Lease");
        }
    }

    /// How often the holder renews, and a follower retries.
    pub(crate) fn period(&self) -> Duration {
        self.duration / 3
    }

    /// How long the holder may fail to renew before it stops applying.
    pub(crate) fn deadline(&self) -> Duration {
        self.duration * 2 / 3
    }
}
/// Keeps renewing the Lease every period; a Lease taken by another replica, or not renewed
/// within the renew deadline, is reported on `lost` and ends the task. A renewal that hangs never
/// outlives the deadline: past it, another replica may already hold the Lease.
pub(crate) fn spawn_renewer(
    elector: std::sync::Arc<tokio::sync::Mutex<Elector>>,
    lost: tokio::sync::mpsc::UnboundedSender<String>,
) -> tokio::task::JoinHandle<()> {
    use tracing::Instrument as _;
    let task = async move {
        let mut last_ok = Instant::now();
        loop {
            let (period, deadline) = {
                let e = elector.lock().await;
                (e.period(), e.deadline())
            };
            tokio::time::sleep(period).await;
            let left = deadline.saturating_sub(last_ok.elapsed());
            let result =
                tokio::time::timeout(left, async { elector.lock().await.try_acquire().await })
                    .await;
            match result {
                Ok(Ok(true)) => last_ok = Instant::now(),
                Ok(Ok(false)) => {
                    let _ = lost.send("another replica holds the Lease".into());
                    return;
                }
                Ok(Err(error)) if last_ok.elapsed() < deadline => {
                    tracing::warn!(%error, "Lease renewal failed; retrying")
                }
                Ok(Err(error)) => {
                    let _ = lost.send(format!("the Lease could not be renewed: {error}"));
                    return;
                }
                Err(_) => {
                    let _ = lost.send("the Lease could not be renewed in time".into());
                    return;
                }
            }
        }
    };
    tokio::spawn(task.instrument(tracing::info_span!("lease")))
}
