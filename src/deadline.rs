//! Deadlines that cannot overflow (`Instant + Duration` panics past the clock's range, and a
//! duration can come from a file a tenant writes), and the one backoff with jitter that Git
//! retries and the scheduler share.

use std::hash::BuildHasher as _;
use std::time::{Duration, Instant};

/// `now + delay`, saturating (a year on, or `now` on a clock with no room) instead of panicking.
pub(crate) fn after(now: Instant, delay: Duration) -> Instant {
    now.checked_add(delay)
        .or_else(|| now.checked_add(crate::yaml::MAX_DURATION))
        .unwrap_or(now)
}

/// A deadline `delay` from now.
pub(crate) fn from_now(delay: Duration) -> Instant {
    after(Instant::now(), delay)
}

/// `d` ± `fraction` (0.1: ±10%), so that many units and agents do not act in step.
pub(crate) fn jitter(d: Duration, fraction: f64) -> Duration {
    let r = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    let factor = 1.0 - fraction + 2.0 * fraction * (r % 10_001) as f64 / 10_000.0;
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(d)
}

/// The wait before retry `attempt` (0, 1, ...): `base` doubling, at most `cap`, ± `fraction`.
pub(crate) fn backoff(base: Duration, attempt: u32, cap: Duration, fraction: f64) -> Duration {
    jitter(base.saturating_mul(1 << attempt.min(16)).min(cap), fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_delay_saturates_instead_of_panicking() {
        let now = Instant::now();
        let far = after(now, Duration::MAX);
        assert!(far > now);
        assert_eq!(
            after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
    }
}
