//! What one peer may ask of this one: requests (and gossip it authors) per second, as a
//! token bucket holding two seconds' worth, and requests being answered at once. Past either,
//! a request is dropped before the application sees it (the requester's request fails) and
//! reported, so that one peer's flood neither fills the application's queue nor delays the
//! others' requests.

use std::collections::HashMap;
use std::time::Instant;

use libp2p::PeerId;

/// Limits on each peer's requests; the defaults are far above what an honest peer sends
/// (a few requests per round, and chunk fetches of a few MiB each).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerLimits {
    /// Requests (and gossip messages) one peer may send per second, on average; twice as many
    /// pass in a burst.
    pub requests_per_sec: u32,
    /// Requests of one peer being answered at once.
    pub max_in_flight: u32,
}

impl Default for PeerLimits {
    fn default() -> Self {
        Self {
            requests_per_sec: 1000,
            max_in_flight: 32,
        }
    }
}

/// Each peer's spending against [`PeerLimits`].
#[derive(Debug, Default)]
pub(super) struct Budgets {
    limits: PeerLimits,
    peers: HashMap<PeerId, Budget>,
}

#[derive(Debug)]
struct Budget {
    tokens: f64,
    refilled: Instant,
    in_flight: u32,
}

impl Budgets {
    pub(super) fn new(limits: PeerLimits) -> Self {
        Self {
            limits,
            peers: HashMap::new(),
        }
    }

    fn capacity(&self) -> f64 {
        2.0 * f64::from(self.limits.requests_per_sec)
    }

    /// Takes one token from `peer`'s bucket: the reason if it is empty.
    fn spend(&mut self, peer: PeerId) -> Result<&mut Budget, String> {
        let (capacity, rate) = (self.capacity(), f64::from(self.limits.requests_per_sec));
        let budget = self.peers.entry(peer).or_insert_with(|| Budget {
            tokens: capacity,
            refilled: Instant::now(),
            in_flight: 0,
        });
        let now = Instant::now();
        let elapsed = now.duration_since(budget.refilled).as_secs_f64();
        budget.tokens = (budget.tokens + elapsed * rate).min(capacity);
        budget.refilled = now;
        if budget.tokens < 1.0 {
            return Err(format!(
                "over {} requests per second",
                self.limits.requests_per_sec
            ));
        }
        budget.tokens -= 1.0;
        Ok(budget)
    }

    /// Admits a request of `peer` (counted in flight until [`Budgets::answered`]), or says
    /// which limit it is over.
    pub(super) fn admit_request(&mut self, peer: PeerId) -> Result<(), String> {
        let max_in_flight = self.limits.max_in_flight;
        if self
            .peers
            .get(&peer)
            .is_some_and(|b| b.in_flight >= max_in_flight)
        {
            return Err(format!("over {max_in_flight} requests in flight"));
        }
        self.spend(peer)?.in_flight += 1;
        Ok(())
    }

    /// Admits a gossip message authored by `peer`, or says it is over the rate.
    pub(super) fn admit_gossip(&mut self, peer: PeerId) -> Result<(), String> {
        self.spend(peer).map(|_| ())
    }

    /// A request of `peer` has been answered.
    pub(super) fn answered(&mut self, peer: PeerId) {
        if let Some(budget) = self.peers.get_mut(&peer) {
            budget.in_flight = budget.in_flight.saturating_sub(1);
        }
    }

    /// Forgets a disconnected peer whose bucket is full again and has nothing in flight, so
    /// that peers coming and going do not grow the table (a flooder's empty bucket stays).
    pub(super) fn forget_idle(&mut self) {
        let (capacity, rate) = (self.capacity(), f64::from(self.limits.requests_per_sec));
        self.peers.retain(|_, b| {
            let tokens = b.tokens + b.refilled.elapsed().as_secs_f64() * rate;
            b.in_flight > 0 || tokens < capacity
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::peer;

    #[test]
    fn a_burst_passes_a_flood_does_not_and_others_are_unaffected() {
        let mut budgets = Budgets::new(PeerLimits {
            requests_per_sec: 10,
            max_in_flight: 1000,
        });
        let (flooder, other) = (peer(), peer());
        let admitted = (0..100)
            .filter(|_| budgets.admit_gossip(flooder).is_ok())
            .count();
        // Two seconds' worth, and at most a token or two refilled meanwhile.
        assert!((20..=22).contains(&admitted), "{admitted}");
        assert!(
            budgets
                .admit_gossip(flooder)
                .unwrap_err()
                .contains("10 requests per second")
        );
        assert!(budgets.admit_gossip(other).is_ok());
    }

    #[test]
    fn requests_in_flight_are_capped_until_answered() {
        let mut budgets = Budgets::new(PeerLimits {
            requests_per_sec: 1000,
            max_in_flight: 2,
        });
        let p = peer();
        budgets.admit_request(p).unwrap();
        budgets.admit_request(p).unwrap();
        assert!(
            budgets
                .admit_request(p)
                .unwrap_err()
                .contains("2 requests in flight")
        );
        budgets.answered(p);
        budgets.admit_request(p).unwrap();
        budgets.forget_idle();
        assert!(budgets.peers.contains_key(&p));
    }
}
