//! Healing a split run. A link cut for longer than the peer timeout splits the run: each side
//! takes the other for gone and goes on as a group of its own, and once the link is back both
//! see each other live again while each keeps its own group (its leader is the lowest live
//! member of *its* last group). Every heartbeat therefore names the group its sender is in,
//! by the group's lowest member; a peer that sees, for a whole peer timeout, a group that
//! outranks its own leaves its group and joins that one as a newcomer, fetching its state.
//! Groups rank by live size, then by the lower key, so exactly one group (the top one) never
//! yields and the run ends as one.
//!
//! Only peers this one sees live, outside its own group, are counted, each once, for the
//! group it names: a group is as large as the live peers that say they are in it. A member of
//! this peer's last group that names another group is outside it: the rest of a group that
//! went on without a peer cut off (even its lowest member, which then leads a group of one
//! that nobody else is in) is a larger group to it.
//!
//! Splits are also made rarer: a minority of the last round's group (fewer than half of it
//! live, or exactly half without its lowest member) leads no round while some of the others
//! went silent recently without closing their connections or saying they leave (a cut link
//! looks like that; a crash closes its connections). It waits for them for up to
//! [`MINORITY_WAIT`] peer timeouts, then goes on alone.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::time::Instant;

use libp2p::PeerId;

use super::{Shared, State};

/// How many peer timeouts a minority waits for the silent rest of its group.
pub(super) const MINORITY_WAIT: u32 = 6;

impl Shared {
    /// The key of the newest group this peer is in: its lowest member.
    pub(super) fn group_key(&self, state: &State) -> Option<PeerId> {
        state
            .groups
            .values()
            .rev()
            .find(|g| g.members.contains(&self.me))
            .and_then(|g| g.members.iter().min().copied())
    }

    /// A group this peer sees live that outranks its own (larger, or as large with a lower
    /// key), by its key.
    pub(super) fn larger_group(&self, state: &State) -> Option<PeerId> {
        let mine = state
            .groups
            .values()
            .rev()
            .find(|g| g.members.contains(&self.me))?;
        let my_key = *mine.members.iter().min()?;
        let live = self.live(state);
        // A member of this peer's last group that names another group has left it for that
        // one (the rest of a group went on without this peer while it was cut off).
        let left = |p: &PeerId| state.peer_groups.get(p).is_some_and(|k| *k != my_key);
        let in_mine = |p: &PeerId| mine.members.contains(p) && (*p == self.me || !left(p));
        let outside = |p: &PeerId| live.contains(p) && !in_mine(p);
        let my_size = mine
            .members
            .iter()
            .filter(|m| live.contains(m) && in_mine(m))
            .count();
        let mut others: BTreeMap<PeerId, usize> = BTreeMap::new();
        for (peer, key) in &state.peer_groups {
            if outside(peer) && outside(key) {
                *others.entry(*key).or_default() += 1;
            }
        }
        others
            .into_iter()
            .find(|(key, size)| (*size, Reverse(*key)) > (my_size, Reverse(my_key)))
            .map(|(key, _)| key)
    }

    /// Whether this peer, about to lead round `round`, is in a minority of the last round's
    /// group that should wait for the others (see the module docs).
    pub(super) fn minority_waits(&self, state: &State, round: u64) -> bool {
        let Some(previous) = round.checked_sub(1).and_then(|r| state.groups.get(&r)) else {
            return false;
        };
        let live = self.live(state);
        let here = previous.members.iter().filter(|m| live.contains(m)).count();
        let lowest_here = previous
            .members
            .iter()
            .min()
            .is_some_and(|m| live.contains(m));
        let n = previous.members.len();
        let minority = 2 * here < n || (2 * here == n && !lowest_here);
        let wait = self.settings.peer_timeout * MINORITY_WAIT;
        minority
            && previous.members.iter().any(|m| {
                !live.contains(m)
                    && !state.left.contains(m)
                    && !state.closed.contains(m)
                    && !state.banned.contains(m)
                    && state.last_seen.get(m).is_some_and(|t| t.elapsed() < wait)
            })
    }

    /// Notes since when a larger group has been in sight (called on every heartbeat).
    pub(super) fn watch_for_split(&self, state: &mut State) {
        state.outranked_since = match self.larger_group(state) {
            Some(_) => Some(state.outranked_since.unwrap_or_else(Instant::now)),
            None => None,
        };
    }

    /// Whether a larger group has been in sight for a whole peer timeout (and still is):
    /// time to leave this peer's group and join it.
    pub(super) fn outranked(&self, state: &State) -> bool {
        state
            .outranked_since
            .is_some_and(|t| t.elapsed() >= self.settings.peer_timeout)
            && self.larger_group(state).is_some()
    }
}
