//! What kind of failure a sync met, and what the scheduler does about it: the error policy.
//!
//! Every failure that reaches the scheduler says whether waiting could help. A **transient**
//! failure (the network, a 5xx or 429, a timeout, an object not ready yet, a dependency not
//! converged, a namespace being deleted) is retried soon, with backoff. A **permanent** one (a
//! render error, a refused object, a 403 or 422, a missing ref or refused key) cannot pass
//! before something changes: it is reported and the unit waits for its next regular run (its
//! interval), or for a push, a config reload or an operator's sync, instead of retrying every
//! few seconds. As kube-runtime's `error_policy` does, the decision is the scheduler's, from the
//! kind alone.

use std::fmt;
use std::time::Duration;

/// Whether waiting could help.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Retried with backoff: the same input may pass in a moment.
    Transient,
    /// Reported; retried at the unit's interval or when its input changes.
    Permanent,
}

/// One failure: its kind and what to tell the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: Kind,
    pub message: String,
}

// === impl Kind ===

impl Kind {
    /// The label value of the `kind` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Transient => "transient",
            Kind::Permanent => "permanent",
        }
    }

    /// The kind of several failures together: transient if any is (a retry may clear that
    /// one, and the permanent ones are reported again), else permanent.
    pub fn worst<I: IntoIterator<Item = Kind>>(kinds: I) -> Option<Kind> {
        kinds.into_iter().min()
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Failure ===

impl Failure {
    pub fn new(kind: Kind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }

    pub fn transient(message: impl Into<String>) -> Failure {
        Failure::new(Kind::Transient, message)
    }

    pub fn permanent(message: impl Into<String>) -> Failure {
        Failure::new(Kind::Permanent, message)
    }

    /// The same failure, its message prefixed (`object: cause`).
    pub fn context(self, prefix: impl fmt::Display) -> Failure {
        Failure {
            message: format!("{prefix}: {}", self.message),
            ..self
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

// === the policy ===

/// When a unit (or a full round) runs next after a result: `None` is success. Success and a
/// permanent failure wait the interval (± 10%); a transient failure backs off from 5 s,
/// doubling with each failure in a row (`failures`, counting this one) up to the interval.
pub fn next_run(result: Option<Kind>, failures: u32, interval: Duration) -> Duration {
    match result {
        None | Some(Kind::Permanent) => crate::deadline::jitter(interval, 0.1),
        Some(Kind::Transient) => {
            crate::deadline::backoff(BACKOFF_BASE, failures.saturating_sub(1), interval, 0.1)
        }
    }
}

/// The first retry of a transient failure comes this much later.
pub const BACKOFF_BASE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn within(d: Duration, centre: Duration) -> bool {
        d >= centre.mul_f64(0.89) && d <= centre.mul_f64(1.11)
    }

    #[test]
    fn success_and_permanent_failures_wait_the_interval() {
        for failures in [0, 1, 5, 40] {
            assert!(within(next_run(None, failures, HOUR), HOUR));
            assert!(within(
                next_run(Some(Kind::Permanent), failures, HOUR),
                HOUR
            ));
        }
    }

    #[test]
    fn transient_failures_back_off_from_five_seconds_up_to_the_interval() {
        let secs = |n| next_run(Some(Kind::Transient), n, HOUR);
        assert!(within(secs(1), Duration::from_secs(5)));
        assert!(within(secs(2), Duration::from_secs(10)));
        assert!(within(secs(3), Duration::from_secs(20)));
        assert!(within(secs(30), HOUR));
        assert!(within(secs(u32::MAX), HOUR));
        // Never beyond a short interval either.
        let minute = Duration::from_secs(60);
        assert!(next_run(Some(Kind::Transient), 9, minute) <= minute.mul_f64(1.1));
    }

    #[test]
    fn a_transient_failure_among_permanent_ones_is_retried_soon() {
        assert_eq!(Kind::worst([]), None);
        assert_eq!(Kind::worst([Kind::Permanent]), Some(Kind::Permanent));
        assert_eq!(
            Kind::worst([Kind::Permanent, Kind::Transient, Kind::Permanent]),
            Some(Kind::Transient)
        );
    }
}
