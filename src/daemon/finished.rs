//! The scheduler's side of a finished round: [`book::record`] decides, this applies its notices
//! (callers, metrics, systemd) and publishes the new status to the servers.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use super::book::{self, Book, Notice};
use super::round::Done;
use super::schedule::Schedule;
use super::{Waiter, systemd};
use crate::agent::Publisher;
use crate::agent::status::{self, Metrics, SyncEvent};
use crate::failure::Kind;

/// Round task ids → the round each runs, so that a round whose task panicked is failed, not lost.
pub(super) type TaskRounds = BTreeMap<tokio::task::Id, u64>;

/// A round task ended: its result recorded, or, if it panicked or was cancelled, its units
/// retried (not left busy forever) and its callers told; its units' status is left as it was
/// (a lost Lease or the end of the grace period cancels rounds, which says nothing of them).
pub(super) fn joined_round(
    out: (&Publisher, &Metrics),
    schedule: &mut Schedule<Waiter>,
    book: &mut Book,
    task_rounds: &mut TaskRounds,
    joined: Result<(tokio::task::Id, Done), tokio::task::JoinError>,
) {
    match joined {
        Ok((task, done)) => {
            task_rounds.remove(&task);
            finished(out, schedule, book, &done);
        }
        Err(e) => {
            let Some(id) = task_rounds.remove(&e.id()) else {
                return;
            };
            let why = if e.is_cancelled() {
                "cancelled"
            } else {
                "panicked"
            };
            tracing::error!(round = id, error = %e, "a round {why}");
            let message = format!("internal error: the round {why}");
            for (w, satisfied) in schedule.failed_whole(id, Instant::now(), Kind::Transient) {
                w.tell(SyncEvent::Error {
                    message: message.clone(),
                });
                if satisfied {
                    w.done();
                }
            }
        }
    }
}

/// Records a finished round and tells whom it concerns.
pub(super) fn finished(
    (publisher, metrics): (&Publisher, &Metrics),
    schedule: &mut Schedule<Waiter>,
    book: &mut Book,
    done: &Done,
) {
    let stamp = status::timestamp(SystemTime::now());
    for notice in book::record(book, schedule, done, Instant::now(), &stamp) {
        match notice {
            Notice::Tell(w, event) => w.tell(event),
            Notice::Done(w) => w.done(),
            Notice::Reconciled {
                unit,
                result,
                took,
                counts,
            } => metrics.reconciled(&unit, result, took, counts),
            Notice::Ready => {
                metrics.set_ready(true);
                tracing::info!("ready: the fleet was fetched and synced");
                systemd::notify("READY=1\nSTATUS=ready");
            }
            Notice::SyncFailed(line) => {
                systemd::notify(&format!("STATUS=sync failed: {line}"));
            }
        }
    }
    // Copied before the snapshot's lock is taken.
    let status = book.status.clone();
    publisher.update(|s| s.status = status);
}

/// Publishes when each unit runs next.
pub(super) fn publish_next_runs(publisher: &Publisher, schedule: &Schedule<Waiter>) {
    let (now, wall) = (Instant::now(), SystemTime::now());
    let next = schedule
        .next_runs()
        .map(|(id, at)| (id.clone(), wall + at.saturating_duration_since(now)))
        .collect();
    publisher.set_next_runs(next);
}
