//! Sharding over Leases (`sharding` in the config): each of N shards is a `coordination.k8s.io/v1`
//! Lease `<prefix>-shard-<i>`; each replica announces itself in its own Lease
//! `<prefix>-replica-<hash of its identity>` (its shard count, and its URL signed with the API
//! token, in annotations) and holds shards until it holds its fair share,
//! `ceil(N / live replicas)`.
//!
//! The rules are leader election's ([`super::leader`]), per Lease: a holder renews every third of
//! the lease; a Lease is taken over only after its record (holder, renew time) was seen unchanged
//! for a whole lease duration on this replica's clock; every write carries the read
//! `resourceVersion`, so two replicas never both win. A replica is live while its Lease's record
//! moves. A replica over its fair share gives shards up, highest first, but only once the
//! scheduler has stopped their work ([`Ownership::generation`]). A shard is dropped at once when
//! another replica took it, or when two thirds of the lease have passed since its last successful
//! renewal was *sent* (a tick never runs past that moment): the others wait a whole lease from
//! when they first read that renewal.
//!
//! Replicas that disagree on the number of shards map tenants differently: while a live replica
//! announces another count (a rollout that changes `shards`), a replica holds no shard at all.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
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
/// HMAC-SHA256 of `<identity> <address> <renew time>` with the API token: an address is used
/// (and the token sent to it) only when signed by a holder of the same token, lately.
const SIGNATURE_ANNOTATION: &str = "flotilla.dev/address-signature";
/// The replica's `sharding.shards`.
const SHARDS_ANNOTATION: &str = "flotilla.dev/shards";

/// A replica's Lease not renewed for this many lease durations is deleted by whoever sees it.
const SWEEP_AFTER: u32 = 10;

pub(crate) struct Manager {
    api: Api<Lease>,
    prefix: String,
    count: u32,
    me: String,
    address: Option<String>,
    /// The API token's file: it signs this replica's address and checks the others'.
    token_file: Option<PathBuf>,
    duration: Duration,
    /// Each Lease's last record (holder, renew time, duration) and when it was first seen.
    observed: BTreeMap<String, (String, Instant)>,
    /// Held shards, and when the last renewal that succeeded was sent.
    held: BTreeMap<u32, Instant>,
    /// Shards dropped from the published set but still held until the scheduler acknowledged
    /// the generation that dropped them.
    releasing: BTreeMap<u32, u64>,
    published: Ownership,
    ticks: u64,
    /// The agent is stopping: no shard is taken any more (held ones are still renewed).
    pub(crate) stopping: Arc<AtomicBool>,
}

async fn write(
    api: &Api<Lease>,
    name: &str,
    lease: Lease,
    exists: bool,
) -> Result<bool, kube::Error> {
    let result = if exists {
        api.replace(name, &PostParams::default(), &lease).await
    } else {
        api.create(&PostParams::default(), &lease).await
    };
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// A renew time as signed: to the microsecond, as the API server keeps it.
fn stamp(t: &MicroTime) -> String {
    let micros = t.0.as_microsecond();
    k8s_openapi::jiff::Timestamp::from_microsecond(micros)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The signature of `identity`'s `address` at `renewed` with `token` (a key derived for this use).
fn sign(token: &[u8], identity: &str, address: &str, renewed: &str) -> String {
    let mut key = hmac::Hmac::<sha2::Sha256>::new_from_slice(token).expect("any key length");
    key.update(b"flotilla replica address");
    let key = key.finalize().into_bytes();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(format!("{identity} {address} {renewed}").as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Manager {
    pub(crate) fn new(
        client: kube::Client,
        config: &Sharding,
        me: String,
        address: Option<String>,
        token_file: Option<PathBuf>,
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
            token_file,
            duration: config.lease.lease_duration,
            observed: BTreeMap::new(),
            held: BTreeMap::new(),
            releasing: BTreeMap::new(),
            ticks: 0,
            stopping: Arc::new(AtomicBool::new(false)),
        }
    }

    fn shard_lease(&self, shard: u32) -> String {
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

    /// A held shard whose last successful renewal was sent longer ago than this is dropped.
    fn deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// The lease's duration in whole seconds, rounded up (a holder never claims less).
    fn seconds(&self) -> i32 {
        let d = self.duration;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1) as i32
    }

    /// The time left until the first held shard's deadline (a period when none is held).
    pub(crate) fn time_left(&self) -> Duration {
        let deadline = self.deadline();
        self.held
            .values()
            .map(|sent| deadline.saturating_sub(sent.elapsed()))
            .min()
            .unwrap_or(self.period())
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

    /// Whether `lease`'s record has stood still for its whole duration (its holder is gone), or
    /// it has no holder.
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
        write(&self.api, name, lease, exists).await
    }

    /// The shards held and not being given up.
    fn kept(&self) -> Vec<u32> {
        self.held
            .keys()
            .copied()
            .filter(|s| !self.releasing.contains_key(s))
            .collect()
    }

    /// A shard no longer held, whatever its state.
    fn forget(&mut self, shard: u32) {
        self.held.remove(&shard);
        self.releasing.remove(&shard);
    }

    /// One round of reading and writing the Leases; `acked` is the last generation whose lost
    /// shards the scheduler has stopped. Errors are logged; what was held stays held until its
    /// deadline passes.
    pub(crate) async fn tick(&mut self, acked: u64) {
        self.ticks += 1;
        self.drop_overdue();
        let token = match &self.token_file {
            Some(f) => tokio::fs::read(f)
                .await
                .ok()
                .map(|t| t.trim_ascii().to_vec())
                .filter(|t| !t.is_empty()),
            None => None,
        };
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
        let seconds = self.seconds();

        // This replica's own Lease: its announcement.
        let mine = self.replica_lease();
        let mut own = by_name
            .remove(&mine)
            .unwrap_or_else(|| self.lease(&mine, LeaseSpec::default()));
        let exists = own.metadata.resource_version.is_some();
        let spec = own.spec.get_or_insert_with(Default::default);
        spec.holder_identity = Some(self.me.clone());
        spec.lease_duration_seconds = Some(seconds);
        let renewed = now();
        let signed_at = stamp(&renewed);
        spec.renew_time = Some(renewed);
        if !exists {
            spec.acquire_time = spec.renew_time.clone();
        }
        let annotations = own
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        annotations.insert(SHARDS_ANNOTATION.into(), self.count.to_string());
        match (&self.address, &token) {
            (Some(a), Some(t)) => {
                annotations.insert(ADDRESS_ANNOTATION.into(), a.clone());
                annotations.insert(
                    SIGNATURE_ANNOTATION.into(),
                    sign(t, &self.me, a, &signed_at),
                );
            }
            _ => {
                annotations.remove(ADDRESS_ANNOTATION);
                annotations.remove(SIGNATURE_ANNOTATION);
            }
        }
        match self.write(&mine, own, exists).await {
            Ok(true) => self.published.announced = true,
            Ok(false) => {
                tracing::debug!(
                    "sharding: this replica's Lease changed meanwhile; written next time"
                )
            }
            Err(error) => tracing::warn!(%error, "sharding: cannot write this replica's Lease"),
        }

        // The live replicas, by their Leases; long-dead ones are swept.
        let mut replicas = BTreeMap::new();
        replicas.insert(self.me.clone(), self.address.clone());
        let mut other_counts = BTreeSet::new();
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
            let annotation = |k: &str| {
                lease
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(k).cloned())
            };
            if !self.expired(&lease) {
                // An address is trusted only when signed with this replica's own token, with
                // the Lease's renew time, and that time is recent (a replayed old Lease is not).
                let renewed = lease.spec.as_ref().and_then(|s| s.renew_time.clone());
                let recent = renewed.as_ref().is_some_and(|r| {
                    let age = k8s_openapi::jiff::Timestamp::now().duration_since(r.0);
                    age.unsigned_abs() < self.duration * 3
                });
                let address = match (annotation(ADDRESS_ANNOTATION), &token) {
                    (Some(a), Some(t)) => {
                        let at = renewed.as_ref().map(stamp).unwrap_or_default();
                        let signed = recent
                            && annotation(SIGNATURE_ANNOTATION).is_some_and(|s| {
                                crate::server::webhook::same_secret(
                                    s.as_bytes(),
                                    sign(t, &holder, &a, &at).as_bytes(),
                                )
                            });
                        if !signed {
                            tracing::warn!(lease = %name, replica = %holder, "sharding: a replica's address is not signed with this replica's API token; nothing is sent to it");
                        }
                        signed.then_some(a)
                    }
                    _ => None,
                };
                // A replica that does not say how many shards it has disagrees too.
                let n = annotation(SHARDS_ANNOTATION).unwrap_or_else(|| "none".into());
                if n != self.count.to_string() {
                    other_counts.insert(n);
                }
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
        let disagree = !other_counts.is_empty();
        if disagree {
            tracing::warn!(shards = self.count, others = ?other_counts, "sharding: live replicas have another number of shards (a rollout changing it?); holding no shard until they are gone");
        }
        let fair = if disagree {
            0
        } else {
            self.count.div_ceil(replicas.len() as u32) as usize
        };

        // Held shards renewed, all at once (or found lost); free ones noted.
        let mut holders = vec![None; self.count as usize];
        let mut free = Vec::new();
        let mut renewals = Vec::new();
        for shard in 0..self.count {
            let name = self.shard_lease(shard);
            let lease = by_name.get(&name).cloned();
            let holder = lease
                .as_ref()
                .and_then(|l| l.spec.as_ref()?.holder_identity.clone())
                .filter(|h| !h.is_empty());
            let ours = self.held.contains_key(&shard);
            match (lease, ours) {
                (Some(mut lease), true) if holder.as_deref() == Some(self.me.as_str()) => {
                    let spec = lease.spec.get_or_insert_with(Default::default);
                    spec.renew_time = Some(now());
                    spec.lease_duration_seconds = Some(seconds);
                    renewals.push((shard, name, lease));
                }
                (_, true) => {
                    tracing::warn!(shard, holder = ?holder, "sharding: another replica holds the shard now; dropping it");
                    self.forget(shard);
                }
                (Some(l), false) => {
                    if self.expired(&l) || holder.as_deref() == Some(self.me.as_str()) {
                        free.push(shard)
                    }
                }
                (None, false) => free.push(shard),
            }
            holders[shard as usize] = holder;
        }
        let sent = Instant::now();
        let mut writes = tokio::task::JoinSet::new();
        for (shard, name, lease) in renewals {
            let api = self.api.clone();
            writes.spawn(async move { (shard, write(&api, &name, lease, true).await) });
        }
        while let Some(joined) = writes.join_next().await {
            let Ok((shard, result)) = joined else {
                continue;
            };
            match result {
                Ok(true) => {
                    if self.held.contains_key(&shard) {
                        self.held.insert(shard, sent);
                    }
                }
                Ok(false) => {
                    tracing::warn!(
                        shard,
                        "sharding: the shard's Lease changed under this replica; dropping the shard"
                    );
                    self.forget(shard);
                }
                Err(error) => {
                    tracing::warn!(shard, %error, "sharding: cannot renew the shard's Lease; retrying")
                }
            }
        }
        self.drop_overdue();
        for (shard, h) in holders.iter_mut().enumerate() {
            if self.held.contains_key(&(shard as u32)) {
                *h = Some(self.me.clone());
            } else if h.as_deref() == Some(self.me.as_str()) {
                *h = None;
            }
        }

        // Over the fair share: the highest shards are given up once their work has stopped.
        let keep = self.kept();
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
            // Forgotten once written: a release the tick's budget cut short is done next tick.
            if self.held.contains_key(&shard) {
                self.release(shard).await;
                holders[shard as usize] = None;
            }
            self.forget(shard);
        }
        // Under it (never on the first round: replicas started together see each other first):
        // free shards taken, starting at a place of this replica's own, so that replicas
        // starting together try different ones.
        let kept = self.kept().len();
        let stopping = self.stopping.load(Ordering::SeqCst);
        if self.ticks > 1 && !stopping && kept < fair && !free.is_empty() {
            let start = (fnv1a64(self.me.as_bytes()) % u64::from(self.count)) as u32;
            free.sort_by_key(|s| (s + self.count - start) % self.count);
            for shard in free.into_iter().take(fair - kept) {
                if self
                    .acquire(shard, by_name.get(&self.shard_lease(shard)).cloned())
                    .await
                {
                    holders[shard as usize] = Some(self.me.clone());
                }
            }
        }
        self.publish(Some(holders), Some(replicas));
    }

    async fn acquire(&mut self, shard: u32, lease: Option<Lease>) -> bool {
        let name = self.shard_lease(shard);
        let exists = lease.is_some();
        let mut lease = lease.unwrap_or_else(|| self.lease(&name, LeaseSpec::default()));
        let spec = lease.spec.get_or_insert_with(Default::default);
        spec.holder_identity = Some(self.me.clone());
        spec.lease_duration_seconds = Some(self.seconds());
        spec.acquire_time = Some(now());
        spec.renew_time = spec.acquire_time.clone();
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + i32::from(exists));
        let sent = Instant::now();
        match self.write(&name, lease, exists).await {
            Ok(true) => {
                tracing::info!(shard, lease = %name, "sharding: acquired the shard");
                self.held.insert(shard, sent);
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
            .filter(|(_, sent)| sent.elapsed() >= deadline)
            .map(|(s, _)| *s)
            .collect();
        for shard in overdue {
            tracing::error!(
                shard,
                "sharding: the shard's Lease could not be renewed in time; its work stops"
            );
            self.forget(shard);
        }
    }

    /// The ownership as it stands (holders and replicas as last read, unless given); a new
    /// generation when a shard was lost or is being given up.
    pub(crate) fn publish(
        &mut self,
        holders: Option<Vec<Option<String>>>,
        replicas: Option<BTreeMap<String, Option<String>>>,
    ) {
        let held: BTreeSet<u32> = self.kept().into_iter().collect();
        let next = &mut self.published;
        let marked = self.releasing.values().any(|g| *g > next.generation);
        if !next.held.held.is_subset(&held) || marked {
            next.generation += 1;
            for g in self.releasing.values_mut() {
                *g = (*g).min(next.generation);
            }
        }
        if let Some(holders) = holders {
            next.holders = holders;
        }
        // This replica is no holder of a shard it dropped since the Leases were read.
        for (shard, h) in next.holders.iter_mut().enumerate() {
            if h.as_deref() == Some(next.me.as_str()) && !self.held.contains_key(&(shard as u32)) {
                *h = None;
            }
        }
        if let Some(replicas) = replicas {
            next.replicas = replicas;
        }
        next.held.held = held;
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
        self.releasing.clear();
        let _ = self
            .api
            .delete(&self.replica_lease(), &DeleteParams::default())
            .await;
    }
}

/// Runs the manager: a tick every period, the ownership published on `out` when it changes;
/// `acked` is the scheduler's acknowledgement of lost shards. A tick never runs past the first
/// held shard's deadline, and overdue shards are dropped (and published) before and after it.
pub(crate) fn spawn(
    manager: Arc<tokio::sync::Mutex<Manager>>,
    out: watch::Sender<Ownership>,
    acked: watch::Receiver<u64>,
) -> tokio::task::JoinHandle<()> {
    let send = |m: &mut Manager, out: &watch::Sender<Ownership>| {
        m.drop_overdue();
        m.publish(None, None);
        let now = m.ownership().clone();
        out.send_if_modified(|o| {
            let changed = *o != now;
            if changed {
                *o = now;
            }
            changed
        });
    };
    let task = async move {
        loop {
            let wait = {
                let mut m = manager.lock().await;
                send(&mut m, &out);
                let budget = m.period().min(m.time_left());
                let ack = *acked.borrow();
                if tokio::time::timeout(budget, m.tick(ack)).await.is_err() {
                    tracing::warn!("sharding: the API server did not answer in time");
                }
                send(&mut m, &out);
                // Half the time left: a renewal that failed is tried again before the deadline.
                m.period().min(m.time_left() / 2).max(m.period() / 10)
            };
            tokio::time::sleep(wait).await;
        }
    };
    tokio::spawn(task.instrument(tracing::info_span!("sharding")))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Regression: signed with nanoseconds, read back with microseconds, no address verified.
    #[test]
    fn the_signed_renew_time_is_the_one_the_api_server_keeps() {
        let t: k8s_openapi::jiff::Timestamp = "2026-12-02T10:00:00.123456789Z".parse().unwrap();
        let written = MicroTime(t);
        let read: MicroTime =
            serde_json::from_value(serde_json::to_value(&written).unwrap()).unwrap();
        assert_eq!(stamp(&written), stamp(&read));
        assert_eq!(stamp(&read), "2026-12-02T10:00:00.123456Z");
    }

    #[test]
    fn an_address_is_signed_for_its_replica_only() {
        let t = "2026-12-02T10:00:00Z";
        let s = sign(b"token", "replica-a_1", "http://10.0.0.1:8080", t);
        assert_eq!(s.len(), 64);
        assert_eq!(s, sign(b"token", "replica-a_1", "http://10.0.0.1:8080", t));
        assert_ne!(s, sign(b"token", "replica-b_1", "http://10.0.0.1:8080", t));
        assert_ne!(s, sign(b"token", "replica-a_1", "http://10.0.0.2:8080", t));
        assert_ne!(s, sign(b"other", "replica-a_1", "http://10.0.0.1:8080", t));
        assert_ne!(
            s,
            sign(
                b"token",
                "replica-a_1",
                "http://10.0.0.1:8080",
                "2026-12-02T10:00:05Z"
            )
        );
    }
}
