//! The engine's waiting room: a bounded queue that hands out the most urgent request first.
//! Callers with stake (validators, asking through the axon) go before other traffic, more
//! stake first, and arrivals in order within the same stake. When the queue is full, a
//! request that outranks the last one waiting takes its place (that one is refused as if it
//! had found the queue full), so that open HTTP traffic cannot crowd out the validators who
//! decide a miner's pay. A request whose deadline passes while it waits is answered and
//! dropped when its turn comes, never run.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Where a request stands in the queue: the stake behind its caller (0 for other traffic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Priority {
    /// The caller's stake on the ledger, in its smallest unit.
    pub stake: u64,
}

/// The queue was full of requests that rank at least as high: the item comes back.
#[derive(Debug)]
pub struct Full<T>(pub T);

/// A bounded priority queue shared by the callers (pushing) and the engine (popping).
pub struct Queue<T> {
    capacity: usize,
    waiting: Mutex<Waiting<T>>,
    arrived: Condvar,
}

struct Waiting<T> {
    /// By rank: highest stake first, then earliest arrival.
    items: BTreeMap<(Reverse<Priority>, u64), T>,
    next: u64,
    closed: bool,
}

/// What a push did.
pub enum Pushed<T> {
    /// Queued, with room to spare or in a free place.
    Queued,
    /// Queued in the place of this lower-ranked request, which is refused.
    Displaced(T),
}

impl<T> Queue<T> {
    /// A queue holding at most `capacity` waiting requests.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            waiting: Mutex::new(Waiting {
                items: BTreeMap::new(),
                next: 0,
                closed: false,
            }),
            arrived: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting<T>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `item` at `priority`; when full, in the place of the lowest-ranked waiting
    /// request if `item` outranks it.
    pub fn push(&self, item: T, priority: Priority) -> Result<Pushed<T>, Full<T>> {
        let mut waiting = self.lock();
        if waiting.closed {
            return Err(Full(item));
        }
        let mut displaced = None;
        if waiting.items.len() >= self.capacity {
            let outranks = waiting
                .items
                .last_key_value()
                .is_some_and(|((Reverse(last), _), _)| priority > *last);
            if !outranks {
                return Err(Full(item));
            }
            displaced = waiting.items.pop_last().map(|(_, item)| item);
        }
        let seq = waiting.next;
        waiting.next += 1;
        waiting.items.insert((Reverse(priority), seq), item);
        drop(waiting);
        self.arrived.notify_one();
        Ok(match displaced {
            Some(item) => Pushed::Displaced(item),
            None => Pushed::Queued,
        })
    }

    /// The highest-ranked waiting request, waiting up to `limit` for one (`None`: forever);
    /// `None` once the queue is closed and empty, or the time is up.
    pub fn pop(&self, limit: Option<Duration>) -> Option<T> {
        let until = limit.map(|l| Instant::now() + l);
        let mut waiting = self.lock();
        loop {
            if let Some((_, item)) = waiting.items.pop_first() {
                return Some(item);
            }
            if waiting.closed {
                return None;
            }
            waiting = match until {
                None => self
                    .arrived
                    .wait(waiting)
                    .unwrap_or_else(|p| p.into_inner()),
                Some(until) => {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    self.arrived
                        .wait_timeout(waiting, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    /// Refuses new requests; the engine takes what waits, then stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.arrived.notify_all();
    }

    /// How many requests wait.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stake(stake: u64) -> Priority {
        Priority { stake }
    }

    #[test]
    fn stake_goes_first_then_arrival_order() {
        let queue = Queue::new(8);
        for (item, s) in [("a", 0), ("b", 5), ("c", 0), ("d", 9), ("e", 5)] {
            assert!(matches!(queue.push(item, stake(s)), Ok(Pushed::Queued)));
        }
        let order: Vec<_> = (0..5).map(|_| queue.pop(None).unwrap()).collect();
        assert_eq!(order, ["d", "b", "e", "a", "c"]);
        assert_eq!(queue.pop(Some(Duration::from_millis(10))), None);
    }

    #[test]
    fn a_full_queue_takes_a_higher_rank_in_the_place_of_the_lowest_and_refuses_the_rest() {
        let queue = Queue::new(2);
        queue.push("open-1", stake(0)).unwrap();
        queue.push("open-2", stake(0)).unwrap();
        // Other traffic finds it full.
        assert!(matches!(
            queue.push("open-3", stake(0)),
            Err(Full("open-3"))
        ));
        // A validator displaces the latest open request.
        match queue.push("validator", stake(100)) {
            Ok(Pushed::Displaced(out)) => assert_eq!(out, "open-2"),
            _ => panic!("the validator was not queued"),
        }
        // A smaller validator displaces the remaining open one, never the larger validator.
        match queue.push("small", stake(1)) {
            Ok(Pushed::Displaced(out)) => assert_eq!(out, "open-1"),
            _ => panic!("the small validator was not queued"),
        }
        assert!(matches!(queue.push("tie", stake(1)), Err(Full("tie"))));
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.pop(None), Some("validator"));
        assert_eq!(queue.pop(None), Some("small"));
    }

    #[test]
    fn a_waiting_engine_wakes_for_a_push_and_stops_once_closed_and_empty() {
        let queue = std::sync::Arc::new(Queue::new(1));
        let engine = {
            let queue = queue.clone();
            std::thread::spawn(move || (queue.pop(None), queue.pop(None)))
        };
        std::thread::sleep(Duration::from_millis(20));
        queue.push(7, stake(0)).unwrap();
        queue.close();
        assert!(matches!(queue.push(8, stake(0)), Err(Full(8))));
        assert_eq!(engine.join().unwrap(), (Some(7), None));
    }
}
