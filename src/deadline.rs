//! Deadlines that cannot overflow: `Instant + Duration` panics past the clock's range, and a
//! duration can come from a file a tenant writes.

use std::time::{Duration, Instant};

/// `now + delay`, saturating (a year on, or `now` on a clock with no room) instead of panicking.
pub fn after(now: Instant, delay: Duration) -> Instant {
    now.checked_add(delay)
        .or_else(|| now.checked_add(crate::yaml::MAX_DURATION))
        .unwrap_or(now)
}

/// A deadline `delay` from now.
pub fn from_now(delay: Duration) -> Instant {
    after(Instant::now(), delay)
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
