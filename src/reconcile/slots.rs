//! The agent's sync slots (`concurrency`), handed out fairly between tenants: whoever waits, the
//! next free slot goes to the next tenant in turn, not to whichever tenant queued the most units.
//! So one tenant's many or slow units delay another tenant's unit by at most one unit's sync.
//! Units asked for by name (a push, a sync request) wait in a queue of their own, served in the
//! same tenant turns and given every other free slot: a push beside a full round waits for a few
//! syncs, not for its tenant's turn among all the others, and pushes cannot starve the rounds.
//! A tenant that pushes to its own repository makes its units urgent: its units then delay
//! another tenant's by at most three syncs (its urgent ones on either side of one of the
//! others) rather than one.
//! A slot is held for a unit's writes only: it is given back before the unit waits for health.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// The pool.
#[derive(Debug)]
pub(crate) struct Slots {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    free: usize,
    /// The urgent waiters, then the others.
    classes: [Class; 2],
    /// Whether the next free slot goes to an urgent waiter first.
    urgent_turn: bool,
}

#[derive(Debug, Default)]
struct Class {
    /// Waiters by tenant (`""` for units of no tenant), each in arrival order.
    queues: BTreeMap<String, VecDeque<oneshot::Sender<Slot>>>,
    /// The tenant served last: the next slot goes to the next tenant after it.
    last: Option<String>,
}

impl Class {
    /// The next waiter in the tenants' turn, if any.
    fn pop(&mut self) -> Option<oneshot::Sender<Slot>> {
        // The first waiting tenant after the one served last, wrapping around.
        let next = match &self.last {
            Some(last) => self
                .queues
                .range::<String, _>((
                    std::ops::Bound::Excluded(last.clone()),
                    std::ops::Bound::Unbounded,
                ))
                .next()
                .or_else(|| self.queues.iter().next())
                .map(|(t, _)| t.clone()),
            None => self.queues.keys().next().cloned(),
        }?;
        let queue = self.queues.get_mut(&next).expect("listed");
        let tx = queue.pop_front().expect("queues are never left empty");
        if queue.is_empty() {
            self.queues.remove(&next);
        }
        self.last = Some(next);
        Some(tx)
    }
}

/// One slot, given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    pool: Arc<Slots>,
}

impl Slots {
    pub(crate) fn new(slots: usize) -> Arc<Slots> {
        Arc::new(Slots {
            state: Mutex::new(State {
                free: slots.max(1),
                classes: Default::default(),
                urgent_turn: true,
            }),
        })
    }

    /// A slot for a unit of `tenant`, when its turn comes; an `urgent` one (asked for: a push, a
    /// sync request) waits with the other urgent ones, which get every other free slot.
    pub(crate) async fn acquire(self: &Arc<Self>, tenant: &str, urgent: bool) -> Slot {
        let rx = {
            let mut s = self.state.lock().expect("slots lock");
            let class = usize::from(!urgent);
            if s.free > 0 && s.classes.iter().all(|c| c.queues.is_empty()) {
                s.free -= 1;
                s.classes[class].last = Some(tenant.to_string());
                return Slot { pool: self.clone() };
            }
            let (tx, rx) = oneshot::channel();
            s.classes[class]
                .queues
                .entry(tenant.to_string())
                .or_default()
                .push_back(tx);
            rx
        };
        match rx.await {
            Ok(slot) => slot,
            // The pool never drops a waiter without answering it; should it, wait again.
            Err(_) => Box::pin(self.acquire(tenant, urgent)).await,
        }
    }

    /// Hands a freed slot to the next waiting tenant in turn (urgent ones on every other slot),
    /// or back to the pool.
    fn release(self: &Arc<Self>) {
        let mut s = self.state.lock().expect("slots lock");
        loop {
            let order = if s.urgent_turn { [0, 1] } else { [1, 0] };
            let Some((class, tx)) = order
                .into_iter()
                .find_map(|c| s.classes[c].pop().map(|tx| (c, tx)))
            else {
                s.free += 1;
                return;
            };
            // A waiter that gave up drops its receiver: the slot comes back here unused.
            if let Err(slot) = tx.send(Slot { pool: self.clone() }) {
                std::mem::forget(slot);
                continue;
            }
            // The other class's turn next.
            s.urgent_turn = class == 1;
            return;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The order in which `waiters` (tenant, urgent), queued one after another while tenant a
    /// holds the one slot, are served once it is given back: `{tenant}{index}`.
    async fn served(waiters: &[(&'static str, bool)]) -> Vec<String> {
        let pool = Slots::new(1);
        let first = pool.acquire("a", false).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, &(t, urgent)) in waiters.iter().enumerate() {
            let (pool, order) = (pool.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = pool.acquire(t, urgent).await;
                order.lock().unwrap().push(format!("{t}{i}"));
                tokio::task::yield_now().await;
            }));
            tokio::task::yield_now().await;
        }
        drop(first);
        for task in tasks {
            task.await.unwrap();
        }
        order.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_next_tenant_in_turn() {
        // Tenant a queues five units before b queues one.
        let a = ("a", false);
        let order = served(&[a, a, a, a, a, ("b", false)]).await;
        assert_eq!(
            order[..2],
            ["b5", "a0"],
            "b is served after one slot, not six: {order:?}"
        );
        assert_eq!(order.len(), 6);
    }

    #[tokio::test]
    async fn urgent_units_take_every_other_slot() {
        // A full round's units of tenants a, b and c wait; then pushes of a's and c's apps.
        let order = served(&[
            ("a", false),
            ("a", false),
            ("b", false),
            ("c", false),
            ("c", true),
            ("a", true),
        ])
        .await;
        // The pushes take every other slot, in their own tenants' turn; the round's units keep
        // theirs in between, in theirs (a was served last: b, c, then a).
        assert_eq!(order, ["a5", "b2", "c4", "c3", "a0", "a1"]);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_loses_no_slot() {
        let pool = Slots::new(1);
        let held = pool.acquire("a", false).await;
        let gave_up = tokio::spawn({
            let pool = pool.clone();
            async move { pool.acquire("b", false).await }
        });
        tokio::task::yield_now().await;
        gave_up.abort();
        let _ = gave_up.await;
        drop(held);
        let again =
            tokio::time::timeout(std::time::Duration::from_secs(1), pool.acquire("c", false)).await;
        assert!(again.is_ok(), "the slot came back");
    }
}
