//! Sharding over Leases (`sharding` in the config): each of N shards is a `coordination.k8s.io/v1`
//! Lease `<prefix>-shard-<i>`; each replica announces itself in its own Lease
//! `<prefix>-replica-<hash of its identity>` (its URL in an annotation) and holds shards until it
//! holds its fair share, `ceil(N / live replicas)`.
//!
//! The rules are leader election's ([`super::leader`]), per Lease: a holder renews every third of
//! the lease; a Lease is taken over only after its record (holder, renew time) was seen unchanged
//! for a whole lease duration on this replica's clock; every write carries the read
//! `resourceVersion`, so two replicas never both win. A replica is live while its Lease's record
//! moves. A replica over its fair share gives shards up, highest first, but only once the
//! scheduler has stopped their work ([`Ownership::generation`]); a shard that could not be renewed
//! within two thirds of the lease, or that another replica took, is dropped at once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::agent::Ownership;
use crate::config::Sharding;
use crate::shard::{Held, fnv1a64};

/// The annotation on a replica's Lease with the URL it is reached at.
pub(crate) const ADDRESS_ANNOTATION: &str = "flotilla.dev/address";

/// A replica's Lease not renewed for this many lease durations is deleted by whoever sees it.
const SWEEP_AFTER: u32 = 10;

pub(crate) struct Manager {
    api: Api<Lease>,
    prefix: String,
    count: u32,
    me: String,
    address: Option<String>,
    duration: Duration,
    /// Each Lease's last record (holder, renew time, duration) and when it was first seen.
    observed: BTreeMap<String, (String, Instant)>,
    /// Held shards and when each was last written.
    held: BTreeMap<u32, Instant>,
    /// Shards dropped from the published set but still held until the scheduler acknowledged
    /// the generation that dropped them.
    releasing: BTreeMap<u32, u64>,
    published: Ownership,
    ticks: u64,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl Manager {
    pub(crate) fn new(
        client: kube::Client,
        config: &Sharding,
        me: String,
        address: Option<String>,
    ) -> Manager {
        Manager {
            api: Api::namespaced(client, &config.lease.namespace),
            prefix: config.lease.name.clone(),
            count: config.shards,
            published: Ownership {
                me: me.clone(),
                held: Held {
                    count: config.shards,
                    held: BTreeSet::new(),
                },
                holders: vec![None; config.shards as usize],
                replicas: BTreeMap::new(),
                announced: false,
                generation: 0,
            },
            me,
            address,
            duration: config.lease.lease_duration,
            observed: BTreeMap::new(),
            held: BTreeMap::new(),
            releasing: BTreeMap::new(),
            ticks: 0,
        }
    }

    pub(crate) fn shard_lease(&self, shard: u32) -> String {
        format!("{}-shard-{shard}", self.prefix)
    }

    fn replica_lease(&self) -> String {
        format!(
            "{}-replica-{:016x}",
            self.prefix,
            fnv1a64(self.me.as_bytes())
        )
    }

    /// How often leases are renewed and read.
    pub(crate) fn period(&self) -> Duration {
        self.duration / 3
    }

    /// A held shard not renewed within this is dropped: another replica may take it after a
    /// lease duration.
    fn deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    fn lease(&self, name: &str, spec: LeaseSpec) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            spec: Some(spec),
        }
    }

    /// Whether `lease`'s record has stood still for its whole duration (its holder is gone).
    fn expired(&mut self, lease: &Lease) -> bool {
        let spec = lease.spec.clone().unwrap_or_default();
        let name = lease.metadata.name.clone().unwrap_or_default();
        let record = format!(
            "{}|{:?}|{:?}",
            spec.holder_identity.as_deref().unwrap_or_default(),
            spec.renew_time,
            spec.lease_duration_seconds
        );
        let seen = match self.observed.get(&name) {
            Some((r, at)) if *r == record => *at,
            _ => {
                let at = Instant::now();
                self.observed.insert(name, (record, at));
                at
            }
        };
        let lasts = spec
            .lease_duration_seconds
            .map_or(self.duration, |s| Duration::from_secs(s.max(1) as u64));
        spec.holder_identity
            .as_deref()
            .unwrap_or_default()
            .is_empty()
            || seen.elapsed() >= lasts
    }

    /// Writes `lease` (a replace with its `resourceVersion`, or a create when new): whether
    /// this replica's write won.
    async fn write(&self, name: &str, lease: Lease, exists: bool) -> Result<bool, kube::Error> {
        let result = if exists {
            self.api.replace(name, &PostParams::default(), &lease).await
        } else {
            self.api.create(&PostParams::default(), &lease).await
        };
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One round of reading and writing the Leases; `acked` is the last generation whose lost
    /// shards the scheduler has stopped. Errors are logged; what was held stays held until its
    /// deadline passes.
    pub(crate) async fn tick(&mut self, acked: u64) {
        self.ticks += 1;
        let leases = match self.api.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(error) => {
                tracing::warn!(%error, "sharding: cannot list the Leases");
                return;
            }
        };
        let mut by_name: BTreeMap<String, Lease> = leases
            .into_iter()
            .filter_map(|l| Some((l.metadata.name.clone()?, l)))
            .filter(|(n, _)| n.starts_with(&format!("{}-", self.prefix)))
            .collect();
        let seconds = self.duration.as_secs().max(1) as i32;

        // This replica's own Lease: its announcement.
        let mine = self.replica_lease();
        let mut own = by_name
            .remove(&mine)
            .unwrap_or_else(|| self.lease(&mine, LeaseSpec::default()));
        let exists = own.metadata.resource_version.is_some();
        let spec = own.spec.get_or_insert_with(Default::default);
        spec.holder_identity = Some(self.me.clone());
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(now());
        if !exists {
            spec.acquire_time = spec.renew_time.clone();
        }
        let annotations = own
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        match &self.address {
            Some(a) => annotations.insert(ADDRESS_ANNOTATION.into(), a.clone()),
            None => annotations.remove(ADDRESS_ANNOTATION),
        };
        match self.write(&mine, own, exists).await {
            Ok(true) => self.published.announced = true,
            Ok(false) => tracing::debug!(
                "sharding: this replica's Lease changed meanwhile; written next time"
            ),
            Err(error) => tracing::warn!(%error, "sharding: cannot write this replica's Lease"),
        }

        // The live replicas, by their Leases; long-dead ones are swept.
        let mut replicas = BTreeMap::new();
        replicas.insert(self.me.clone(), self.address.clone());
        let replica_prefix = format!("{}-replica-", self.prefix);
        let others: Vec<Lease> = by_name
            .iter()
            .filter(|(n, _)| n.starts_with(&replica_prefix))
            .map(|(_, l)| l.clone())
            .collect();
        for lease in others {
            let name = lease.metadata.name.clone().unwrap_or_default();
            let holder = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.clone())
                .unwrap_or_default();
            if !self.expired(&lease) {
                let address = lease
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ADDRESS_ANNOTATION).cloned());
                replicas.insert(holder, address);
            } else if self
                .observed
                .get(&name)
                .is_some_and(|(_, at)| at.elapsed() >= self.duration * SWEEP_AFTER)
            {
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        resource_version: lease.metadata.resource_version.clone(),
                        uid: None,
                    }),
                    ..Default::default()
                };
                if self.api.delete(&name, &params).await.is_ok() {
                    tracing::info!(lease = %name, replica = %holder, "sharding: swept the Lease of a replica gone long ago");
                    self.observed.remove(&name);
                }
            }
        }
        let fair = self.count.div_ceil(replicas.len() as u32) as usize;

        // Held shards renewed (or found lost), free ones noted.
        let mut holders = vec![None; self.count as usize];
        let mut free = Vec::new();
        for shard in 0..self.count {
            let name = self.shard_lease(shard);
            let lease = by_name.get(&name).cloned();
            let holder = lease
                .as_ref()
                .and_then(|l| l.spec.as_ref()?.holder_identity.clone())
                .filter(|h| !h.is_empty());
            let ours = self.held.contains_key(&shard);
            match (&lease, ours) {
                (Some(lease), true) if holder.as_deref() == Some(self.me.as_str()) => {
                    let mut lease = lease.clone();
                    let spec = lease.spec.get_or_insert_with(Default::default);
                    spec.renew_time = Some(now());
                    spec.lease_duration_seconds = Some(seconds);
                    match self.write(&name, lease, true).await {
                        Ok(true) => {
                            self.held.insert(shard, Instant::now());
                        }
                        Ok(false) => {
                            tracing::warn!(
                                shard,
                                "sharding: the shard's Lease changed under this replica; dropping the shard"
                            );
                            self.held.remove(&shard);
                        }
                        Err(error) => {
                            tracing::warn!(shard, %error, "sharding: cannot renew the shard's Lease; retrying")
                        }
                    }
                }
                (_, true) => {
                    tracing::warn!(shard, holder = ?holder, "sharding: another replica holds the shard now; dropping it");
                    self.held.remove(&shard);
                }
                (Some(l), false)
                    if self.expired(l) || holder.as_deref() == Some(self.me.as_str()) =>
                {
                    free.push(shard)
                }
                (None, false) => free.push(shard),
                (Some(_), false) => {}
            }
            holders[shard as usize] = if self.held.contains_key(&shard) {
                Some(self.me.clone())
            } else {
                holder
            };
        }
        self.drop_overdue();

        // Over the fair share: the highest shards are given up once their work has stopped.
        let keep: Vec<u32> = self
            .held
            .keys()
            .copied()
            .filter(|s| !self.releasing.contains_key(s))
            .collect();
        if keep.len() > fair {
            for &shard in keep.iter().rev().take(keep.len() - fair) {
                self.releasing.insert(shard, self.published.generation + 1);
            }
        }
        let acked_now: Vec<u32> = self
            .releasing
            .iter()
            .filter(|&(_, g)| *g <= acked)
            .map(|(s, _)| *s)
            .collect();
        for shard in acked_now {
            self.releasing.remove(&shard);
            if self.held.remove(&shard).is_some() {
                self.release(shard).await;
                holders[shard as usize] = None;
            }
        }
        // Under it (never on the first round: replicas started together see each other first):
        // free shards taken, starting at a place of this replica's own, so that replicas
        // starting together try different ones.
        let keep = self.held.len() - self.releasing.len();
        if self.ticks > 1 && keep < fair && !free.is_empty() {
            let start = (fnv1a64(self.me.as_bytes()) % u64::from(self.count)) as u32;
            free.sort_by_key(|s| (s + self.count - start) % self.count);
            for shard in free.into_iter().take(fair - keep) {
                if self
                    .acquire(shard, by_name.get(&self.shard_lease(shard)).cloned())
                    .await
                {
                    holders[shard as usize] = Some(self.me.clone());
                }
            }
        }
        self.publish(holders, replicas);
    }

    async fn acquire(&mut self, shard: u32, lease: Option<Lease>) -> bool {
        let name = self.shard_lease(shard);
        let exists = lease.is_some();
        let mut lease = lease.unwrap_or_else(|| self.lease(&name, LeaseSpec::default()));
        let spec = lease.spec.get_or_insert_with(Default::default);
        spec.holder_identity = Some(self.me.clone());
        spec.lease_duration_seconds = Some(self.duration.as_secs().max(1) as i32);
        spec.acquire_time = Some(now());
        spec.renew_time = spec.acquire_time.clone();
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + i32::from(exists));
        match self.write(&name, lease, exists).await {
            Ok(true) => {
                tracing::info!(shard, lease = %name, "sharding: acquired the shard");
                self.held.insert(shard, Instant::now());
                true
            }
            Ok(false) => false,
            Err(error) => {
                tracing::warn!(shard, %error, "sharding: cannot take the shard's Lease");
                false
            }
        }
    }

    /// Shards not renewed within the deadline are dropped, whatever the API server says later.
    pub(crate) fn drop_overdue(&mut self) {
        let deadline = self.deadline();
        let overdue: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, at)| at.elapsed() >= deadline)
            .map(|(s, _)| *s)
            .collect();
        for shard in overdue {
            tracing::error!(
                shard,
                "sharding: the shard's Lease could not be renewed in time; its work stops"
            );
            self.held.remove(&shard);
            self.releasing.remove(&shard);
        }
    }

    /// The ownership as it stands; a new generation when a shard was lost or is being given up.
    fn publish(
        &mut self,
        holders: Vec<Option<String>>,
        replicas: BTreeMap<String, Option<String>>,
    ) {
        let held: BTreeSet<u32> = self
            .held
            .keys()
            .copied()
            .filter(|s| !self.releasing.contains_key(s))
            .collect();
        let next = &mut self.published;
        if !next.held.held.is_subset(&held) {
            next.generation += 1;
            // Shards marked in this tick carry the generation that drops them.
            for g in self.releasing.values_mut() {
                *g = (*g).min(next.generation);
            }
        }
        next.held.held = held;
        next.holders = holders;
        next.replicas = replicas;
    }

    pub(crate) fn ownership(&self) -> &Ownership {
        &self.published
    }

    /// Gives a shard up: no holder, so that another replica takes it at once.
    async fn release(&self, shard: u32) {
        let name = self.shard_lease(shard);
        let Ok(Some(mut lease)) = self.api.get_opt(&name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.me.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(shard, lease = %name, "sharding: gave the shard up"),
            Err(error) => tracing::warn!(shard, %error, "sharding: could not give the shard up"),
        }
    }

    /// On shutdown, once no work runs: every shard given up and this replica's Lease deleted.
    pub(crate) async fn leave(&mut self) {
        let shards: Vec<u32> = self.held.keys().copied().collect();
        for shard in shards {
            self.release(shard).await;
        }
        self.held.clear();
        let _ = self
            .api
            .delete(&self.replica_lease(), &DeleteParams::default())
            .await;
    }
}

/// Runs the manager: a tick every period (each within the period), the ownership published on
/// `out` when it changes; `acked` is the scheduler's acknowledgement of lost shards.
pub(crate) fn spawn(
    manager: std::sync::Arc<tokio::sync::Mutex<Manager>>,
    out: watch::Sender<Ownership>,
    acked: watch::Receiver<u64>,
) -> tokio::task::JoinHandle<()> {
    let task = async move {
        loop {
            let period = {
                let mut m = manager.lock().await;
                let period = m.period();
                let ack = *acked.borrow();
                if tokio::time::timeout(period, m.tick(ack)).await.is_err() {
                    tracing::warn!("sharding: the API server did not answer in time");
                }
                m.drop_overdue();
                let mut held = m.published.held.held.clone();
                held.retain(|s| m.held.contains_key(s));
                if held != m.published.held.held {
                    let (holders, replicas) =
                        (m.published.holders.clone(), m.published.replicas.clone());
                    m.publish(holders, replicas);
                }
                let now = m.ownership().clone();
                out.send_if_modified(|o| {
                    let changed = *o != now;
                    if changed {
                        *o = now;
                    }
                    changed
                });
                period
            };
            tokio::time::sleep(period).await;
        }
    };
    tokio::spawn(task.instrument(tracing::info_span!("sharding")))
}
