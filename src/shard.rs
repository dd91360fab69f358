//! Which replica reconciles what, with `sharding`: a tenant belongs to shard
//! `fnv1a64(name) mod shards`; the cluster's infra, every tenant's onboarding and the removal of
//! departed tenants to shard 0. Pure: the Leases that say who holds which shard are
//! `daemon::shards`'s.

use std::collections::BTreeSet;

use crate::fleet::UnitId;

/// The shards this replica holds, of how many.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    pub count: u32,
    pub held: BTreeSet<u32>,
}

/// A tenant's shard: FNV-1a (64 bits) of its name, modulo `count`; the same on every replica,
/// every platform and every version (changing it would move every tenant at an upgrade).
pub(crate) fn shard_of(tenant: &str, count: u32) -> u32 {
    (fnv1a64(tenant.as_bytes()) % u64::from(count.max(1))) as u32
}

/// The shard of what is not a tenant's: infra, onboarding, departed tenants.
pub(crate) const CLUSTER_SHARD: u32 = 0;

/// A unit's shard: its tenant's, or [`CLUSTER_SHARD`] for infra (and its layers).
pub(crate) fn shard_of_unit(id: &UnitId, count: u32) -> u32 {
    id.tenant
        .as_deref()
        .map_or(CLUSTER_SHARD, |t| shard_of(t, count))
}

pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl Held {
    pub(crate) fn tenant(&self, tenant: &str) -> bool {
        self.held.contains(&shard_of(tenant, self.count))
    }

    /// Infra, onboarding and departures.
    pub(crate) fn cluster(&self) -> bool {
        self.held.contains(&CLUSTER_SHARD)
    }

    pub(crate) fn unit(&self, id: &UnitId) -> bool {
        self.held.contains(&shard_of_unit(id, self.count))
    }
}

/// Whether `held` (`None`: no sharding, all) covers each of these.
pub(crate) fn owns_tenant(held: Option<&Held>, tenant: &str) -> bool {
    held.is_none_or(|h| h.tenant(tenant))
}

pub(crate) fn owns_cluster(held: Option<&Held>) -> bool {
    held.is_none_or(Held::cluster)
}

pub(crate) fn owns_unit(held: Option<&Held>, id: &UnitId) -> bool {
    held.is_none_or(|h| h.unit(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fnv1a_and_stable() {
        // Published FNV-1a 64 test vectors: the assignment must never change between versions.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(shard_of("anything", 1), 0);
    }

    #[test]
    fn tenants_spread_over_the_shards() {
        let mut counts = [0u32; 4];
        for i in 0..400 {
            counts[shard_of(&format!("tenant-{i}"), 4) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (70..=130).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn infra_and_onboarding_go_with_shard_zero() {
        let count = 3;
        let tenant = (0..100)
            .map(|i| format!("t{i}"))
            .find(|t| shard_of(t, count) == 2)
            .unwrap();
        let held = Held {
            count,
            held: [2].into(),
        };
        assert!(held.tenant(&tenant));
        assert!(held.unit(&UnitId::app(&tenant, "a")));
        assert!(!held.cluster());
        assert!(!held.unit(&UnitId::infra_named("infra")));
        let zero = Held {
            count,
            held: [0].into(),
        };
        assert!(zero.cluster() && !zero.tenant(&tenant));
        assert!(owns_unit(None, &UnitId::app(&tenant, "a")));
    }
}
