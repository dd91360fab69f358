//! The scheduler's side of a finished round: [`book::record`] decides, this applies its notices
//! (callers, metrics, systemd) and publishes the new status to the servers.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use super::book::{self, Book, Notice};
use super::round::Done;
use super::schedule::{Schedule, Scope};
use super::{Waiter, systemd};
use crate::agent::Publisher;
use crate::agent::status::{self, Metrics};
use crate::failure::Failure;

/// Round task ids → the round each runs, so that a round whose task panicked is failed, not lost.
pub(super) type TaskRounds = BTreeMap<tokio::task::Id, (u64, Scope)>;

/// A round task ended: its result recorded, or, if it panicked or was cancelled, its round
/// failed as a whole so that its units are not left busy forever.
pub(super) fn joined_round(
    out: (&Publisher, &Metrics),
    schedule: &mut Schedule<Waiter>,
    book: &mut Book,
    task_rounds: &mut TaskRounds,
    joined: Result<(tokio::task::Id, Done), tokio::task::JoinError>,
) {
    let done = match joined {
        Ok((task, done)) => {
            task_rounds.remove(&task);
            done
        }
        Err(e) => {
            let (id, scope) = task_rounds.remove(&e.id()).unwrap_or((0, Scope::All));
            let why = if e.is_cancelled() {
                "cancelled"
            } else {
                "panicked"
            };
            tracing::error!(round = id, error = %e, "a round {why}");
            Done {
                id,
                scope,
                entries: Vec::new(),
                error: Some(Failure::transient(format!(
                    "internal error: the round {why}"
                ))),
                view: None,
            }
        }
    };
    finished(out, schedule, book, &done);
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
    publisher.update(|s| s.status = book.status.clone());
}

/// Publishes when each unit runs next.
pub(super) fn publish_next_runs(publisher: &Publisher, schedule: &Schedule<Waiter>) {
    let (now, wall) = (Instant::now(), SystemTime::now());
    let next = schedule
        .next_runs()
        .map(|(id, at)| (id.clone(), wall + at.saturating_duration_since(now)))
        .collect();
    publisher.update(|s| s.next_runs = next);
}
