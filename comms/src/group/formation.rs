//! Forming each round's group: every peer sends `Ready` with its state's hash; the leader
//! (the lowest live peer id among the last round's members) waits for the expected members,
//! announces the group with their state hashes, and the members agree on the state most hold.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::messages::{Header, Reply};
use super::{Group, GroupError, READY_REPEAT, RETRY, Shared, State};

/// A round's group as announced by its leader.
#[derive(Debug, Clone, PartialEq)]
pub struct Formed {
    /// The round.
    pub round: u64,
    /// The members, sorted by peer id.
    pub members: Vec<PeerId>,
    /// Each member's state hash at the start of the round (none: joining).
    pub states: Vec<Option<String>>,
}

impl Formed {
    /// The state hash most members hold (ties broken by the hash, so everyone agrees) and the
    /// members holding it.
    pub fn agreed_state(&self) -> Option<(String, Vec<PeerId>)> {
        let mut holders: BTreeMap<&String, Vec<PeerId>> = BTreeMap::new();
        for (m, s) in self.members.iter().zip(&self.states) {
            if let Some(s) = s {
                holders.entry(s).or_default().push(*m);
            }
        }
        holders
            .into_iter()
            .max_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.0.cmp(a.0)))
            .map(|(s, peers)| (s.clone(), peers))
    }
}

/// A short name for round `round`'s group of `members` (sorted): every all-reduce message
/// carries its sender's, so that two members holding different groups for a round (two
/// leaders' announcements crossed) find out at the first shard and leave each other out,
/// instead of combining shards cut for different member counts.
pub(super) fn group_key(round: u64, members: &[PeerId]) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(round.to_le_bytes());
    for m in members {
        hash.update(m.to_bytes());
    }
    hex::encode(&hash.finalize()[..8])
}

impl Shared {
    /// A peer is ready for `round` with the state hashed `held` (none: a newcomer).
    pub(super) fn on_ready(
        &self,
        state: &mut State,
        peer: PeerId,
        round: u64,
        held: Option<String>,
        addrs: Vec<String>,
    ) -> Reply {
        match held {
            // A newcomer: the leader of this round or any later one takes it in. The run may
            // have moved on while its `Ready` was on the way (rounds can take a fraction of a
            // second): it is then taken into the next round that forms.
            None => {
                state.addrs.insert(peer, addrs);
                let from = round.max(state.round);
                state.joiners.entry(peer).or_insert(from);
            }
            _ if round.saturating_add(1) < state.round => {
                return self.reject(state, peer, &round_is_over(round));
            }
            held => {
                state.addrs.insert(peer, addrs);
                state.ready.entry(round).or_default().insert(peer, held);
                if state.led.contains(&round) {
                    state.announce.push((peer, round));
                }
            }
        }
        Reply::Ok
    }

    /// A round's group, announced by its leader.
    pub(super) fn on_group(
        &self,
        state: &mut State,
        peer: PeerId,
        round: u64,
        members: Vec<String>,
        states: Vec<Option<String>>,
        addrs: Vec<Vec<String>>,
    ) -> Reply {
        match members
            .iter()
            .map(|m| m.parse())
            .collect::<Result<Vec<PeerId>, _>>()
        {
            Err(_) => self.offence(state, peer, "unparsable member id"),
            Ok(members) if members.len() != states.len() => {
                self.offence(state, peer, "one state per member expected")
            }
            Ok(members) if !members.contains(&peer) => self.offence(
                state,
                peer,
                "a group is announced by its leader, a member of it",
            ),
            Ok(members) => {
                if let Err(reason) = self.may_lead(state, round, peer, &members, &states) {
                    return self.offence(state, peer, &reason);
                }
                state.under_way = true;
                // Every member is live as of the announcement (its heartbeats may not
                // have reached this peer yet) and reachable at the given addresses.
                for (m, a) in members.iter().zip(addrs) {
                    state.joiners.remove(m);
                    if *m != self.me {
                        state.last_seen.entry(*m).or_insert_with(Instant::now);
                        if !a.is_empty() {
                            state.addrs.insert(*m, a);
                        }
                        state.introduce.push(*m);
                    }
                }
                if members.contains(&self.me) {
                    // A newcomer taken into a later round than it asked for is in that round.
                    state.round = state.round.max(round);
                }
                state.groups.entry(round).or_insert(Formed {
                    round,
                    members,
                    states,
                });
                Reply::Ok
            }
        }
    }
}

impl Shared {
    /// The leader of `round`: the lowest live peer id among the last round's members (at the
    /// first round, or when none of them is left, among all live peers but newcomers).
    fn leader(&self, state: &State, round: u64) -> PeerId {
        let live = self.live(state);
        round
            .checked_sub(1)
            .and_then(|r| state.groups.get(&r))
            .and_then(|g| g.members.iter().filter(|m| live.contains(m)).min())
            .copied()
            .unwrap_or_else(|| self.established(state).first().copied().unwrap_or(self.me))
    }

    /// Whether this peer, leading round `round`, may announce its group: every member of
    /// the last round's group it sees live is ready, and it is not a minority of that group
    /// waiting for the rest (the rest may fall silent while it waits, as they do when its
    /// link is cut just as a round forms).
    pub(super) fn ready_to_form(&self, state: &State, round: u64) -> bool {
        let live = self.established(state);
        let expected: BTreeSet<PeerId> =
            match round.checked_sub(1).and_then(|r| state.groups.get(&r)) {
                Some(previous) => previous
                    .members
                    .iter()
                    .filter(|m| live.contains(m))
                    .copied()
                    .collect(),
                None => live,
            };
        let ready = state.ready.get(&round);
        expected
            .iter()
            .all(|p| ready.is_some_and(|r| r.contains_key(p)))
            && !self.minority_waits(state, round)
    }

    /// Live peers other than newcomers waiting to join: those that lead and are waited for
    /// when no earlier group says who is in the run (a newcomer never leads, and one that
    /// asked for a far round must not hold up this one).
    fn established(&self, state: &State) -> BTreeSet<PeerId> {
        let mut live = self.live(state);
        live.retain(|p| *p == self.me || !state.joiners.contains_key(p));
        live
    }

    /// Whether `announcer` may announce round `round`'s group, as this peer sees the run.
    ///
    /// Knowing the last round's group, only its lowest member this peer still sees live may
    /// (or, when none is, the lowest live peer): a peer ahead of the announcer that this peer
    /// still sees live makes the announcement a forgery, or a failover this peer has not
    /// noticed yet, which the new leader's re-announcement settles once it has (a member
    /// waiting for its group repeats its `Ready`, and a leader answers that with the group).
    /// Without the last round's group (the first round, or a newcomer) the announcer must be
    /// the lowest member it names that holds a state: a newcomer then trusts the first group
    /// that takes it in (README, "Security model").
    fn may_lead(
        &self,
        state: &State,
        round: u64,
        announcer: PeerId,
        members: &[PeerId],
        states: &[Option<String>],
    ) -> Result<(), String> {
        let Some(previous) = round.checked_sub(1).and_then(|r| state.groups.get(&r)) else {
            // A member learns the last round's group before the next is announced; only a
            // newcomer (waiting for any group from its round on) takes one on less.
            let joining = state
                .ready
                .get(&state.round)
                .and_then(|r| r.get(&self.me))
                .is_some_and(Option::is_none);
            if round > state.round && !joining {
                return Err(format!(
                    "round {round}'s group announced before this peer knows round {}'s",
                    round - 1
                ));
            }
            // The leader is then the lowest live peer, which is the lowest member holding a
            // state (a newcomer ahead of it holds none).
            let lowest_holder = members
                .iter()
                .zip(states)
                .filter(|(_, s)| s.is_some())
                .map(|(m, _)| m)
                .min();
            return match lowest_holder == Some(&announcer) {
                true => Ok(()),
                false => Err(format!(
                    "round {round}'s group is announced by its leader, the lowest member holding a state"
                )),
            };
        };
        let previous_live = previous.members.iter().any(|m| self.is_live(state, m));
        let expected = self.leader(state, round);
        let leads = match previous.members.contains(&announcer) {
            true => !previous_live || announcer <= expected,
            false => !previous_live && announcer <= expected,
        };
        match leads {
            true => Ok(()),
            false => Err(format!(
                "round {round}'s group is announced by its leader, {expected} as this peer sees it"
            )),
        }
    }
}

impl Group {
    /// Agrees with the other peers on the members of `round`. `state` is the hash of this
    /// peer's state at the start of the round; `None` for a peer joining, which never leads,
    /// is taken into the first group formed from `round` on (whose round the result says),
    /// and fetches the agreed state then ([`Group::fetch_state`]). Fails with
    /// [`GroupError::NotInGroup`] when this peer is left out of the round, or when its group
    /// is outranked by a larger one of the run (a split healing): it joins the run then.
    pub async fn form(&self, round: u64, state: Option<String>) -> Result<Formed, GroupError> {
        let me = self.me();
        let ceiling = self.shared.settings.round_ceiling;
        let joining = state.is_none();
        {
            let mut s = self.shared.lock();
            s.round = round;
            s.stats.round = round;
            s.ready.entry(round).or_default().insert(me, state.clone());
        }
        let ready = Header::Ready {
            run: self.shared.settings.run.clone(),
            round,
            state,
            addrs: self.shared.lock().my_addrs.clone(),
        };
        let started = Instant::now();
        let mut next_ready = Instant::now();
        loop {
            let (leader, live) = {
                let s = self.shared.lock();
                (self.shared.leader(&s, round), self.shared.live(&s))
            };
            tracing::trace!(round, %leader, live = live.len(), joining, "forming");
            if !joining {
                self.yield_to_larger_group(round).await?;
            }
            if !joining && leader == me {
                if !self.shared.minority_waits(&self.shared.lock(), round) {
                    match self.lead(round).await? {
                        Some(formed) => return Ok(formed),
                        // A lower member is back: it leads.
                        None => continue,
                    }
                }
                // Cut off from most of the group: wait for it to come back (or for the wait
                // to end) before leading a group of the few.
                self.wait_for(Duration::from_secs(1), |shared, state| {
                    (!shared.minority_waits(state, round)).then_some(())
                })
                .await;
                continue;
            }
            // Every live peer hears the Ready, so that whoever leads (also after a failover)
            // has it; it is repeated now and then, since a lost announcement is resent on a
            // repeated Ready.
            if Instant::now() >= next_ready {
                let sends = live
                    .iter()
                    .filter(|p| **p != me)
                    .map(|p| async { (*p, self.ask(*p, &ready, &[]).await) });
                let mut leader_heard = joining;
                let results = futures::future::join_all(sends).await;
                tracing::trace!(round, answers = ?results, "ready sent");
                for (peer, result) in results {
                    match result {
                        Ok(_) => leader_heard |= peer == leader,
                        // The leader is rounds ahead: this round formed and ended without
                        // this peer (it lost touch at the time), which joins the next one.
                        Err(GroupError::Refused { reason, .. })
                            if !joining && peer == leader && reason == round_is_over(round) =>
                        {
                            tracing::warn!(%leader, round, "the run moved on without this peer; joining it where it is");
                            return Err(GroupError::NotInGroup { round });
                        }
                        Err(e) => tracing::debug!(%peer, error = %e, round, "ready not delivered"),
                    }
                }
                next_ready = Instant::now()
                    + match (leader_heard, joining) {
                        (false, _) => RETRY,
                        (true, true) => Duration::from_secs(1),
                        (true, false) => READY_REPEAT,
                    };
            }
            let wait = next_ready.saturating_duration_since(Instant::now());
            let group = self
                .wait_for(wait, |shared, state| {
                    if joining {
                        return state
                            .groups
                            .range(round..)
                            .find(|(_, g)| g.members.contains(&me))
                            .map(|(_, g)| Heard::Group(g.clone()));
                    }
                    if let Some(group) = state.groups.get(&round) {
                        return Some(Heard::Group(group.clone()));
                    }
                    if shared.outranked(state) {
                        return Some(Heard::Outranked);
                    }
                    // A leader that stops answering heartbeats is replaced.
                    (!shared.is_live(state, &leader)).then_some(Heard::LeaderSilent)
                })
                .await;
            match group {
                Some(Heard::Group(group)) if group.members.contains(&me) => return Ok(group),
                Some(Heard::Group(_)) => return Err(GroupError::NotInGroup { round }),
                Some(Heard::Outranked) => return Err(self.leave_for_larger_group(round)),
                Some(Heard::LeaderSilent) => {
                    tracing::warn!(%leader, round, "leader went silent; electing the next");
                    self.shared.lock().gone.insert(leader);
                    // The next leader may have announced already and been refused (this peer
                    // still saw the old one live): a `Ready` now brings the announcement again.
                    next_ready = Instant::now();
                }
                None if started.elapsed() < ceiling => {}
                None => {
                    return Err(GroupError::Deadline {
                        round,
                        what: "the group announcement".into(),
                        secs: ceiling.as_secs(),
                    });
                }
            }
        }
    }

    /// Leaves this peer's group for a larger one in sight (see `healing`): it joins the run.
    /// The sighting is spent: once in the group it joined, only a new one that lasts a peer
    /// timeout moves it again (its members name their old group for a moment).
    fn leave_for_larger_group(&self, round: u64) -> GroupError {
        tracing::warn!(round, "a larger group of this run is in sight; joining it");
        self.shared.lock().outranked_since = None;
        GroupError::NotInGroup { round }
    }

    /// A group that sees a larger one of the run (see `healing`) starts no round until it is
    /// sure, a peer timeout later, and then leaves to join it; a group racing through rounds
    /// alone would otherwise end the run before it heals.
    async fn yield_to_larger_group(&self, round: u64) -> Result<(), GroupError> {
        if self.shared.larger_group(&self.shared.lock()).is_none() {
            return Ok(());
        }
        let sure = self
            .wait_for(
                self.shared.settings.peer_timeout * 2,
                |shared, state| match (shared.outranked(state), shared.larger_group(state)) {
                    (true, _) => Some(true),
                    (false, None) => Some(false),
                    (false, Some(_)) => None,
                },
            )
            .await;
        match sure {
            Some(true) => Err(self.leave_for_larger_group(round)),
            _ => Ok(()),
        }
    }

    /// As leader: waits until the last round's live members are ready (at the first round,
    /// every live peer), then announces everyone ready and live, newcomers included.
    async fn lead(&self, round: u64) -> Result<Option<Formed>, GroupError> {
        let me = self.me();
        let next = self
            .wait_for(self.shared.settings.round_ceiling, |shared, state| {
                if shared.outranked(state) {
                    return Some(Leading::Yield);
                }
                if shared.leader(state, round) != me {
                    return Some(Leading::StepAside);
                }
                shared.ready_to_form(state, round).then_some(Leading::Form)
            })
            .await;
        match next {
            Some(Leading::Yield) => return Err(self.leave_for_larger_group(round)),
            Some(Leading::StepAside) => return Ok(None),
            Some(Leading::Form) | None => {}
        }
        let formed = {
            let mut state = self.shared.lock();
            let mut ready: BTreeMap<PeerId, Option<String>> =
                state.ready.get(&round).cloned().unwrap_or_default();
            for (joiner, from) in &state.joiners {
                if *from <= round {
                    ready.entry(*joiner).or_insert(None);
                }
            }
            let (members, states): (Vec<PeerId>, Vec<Option<String>>) = ready
                .into_iter()
                .filter(|(p, _)| self.shared.is_live(&state, p))
                .unzip();
            for m in &members {
                state.joiners.remove(m);
            }
            state.led.insert(round);
            state.under_way = true;
            state
                .groups
                .entry(round)
                .or_insert(Formed {
                    round,
                    members,
                    states,
                })
                .clone()
        };
        let sends = formed
            .members
            .iter()
            .filter(|m| **m != me)
            .map(|m| self.announce(*m, round));
        futures::future::join_all(sends).await;
        Ok(Some(formed))
    }

    /// Sends round `round`'s group to `to`, retrying a few times (a member that never hears
    /// it asks again with a repeated `Ready`).
    pub(super) async fn announce(&self, to: PeerId, round: u64) {
        let (group, addrs) = {
            let state = self.shared.lock();
            let Some(group) = state.groups.get(&round).cloned() else {
                return;
            };
            let addrs = group
                .members
                .iter()
                .map(|m| match *m == self.me() {
                    true => state.my_addrs.clone(),
                    false => state.addrs.get(m).cloned().unwrap_or_default(),
                })
                .collect();
            (group, addrs)
        };
        let header = Header::Group {
            run: self.shared.settings.run.clone(),
            round,
            members: group.members.iter().map(|m| m.to_string()).collect(),
            states: group.states,
            addrs,
        };
        for attempt in 1..=3 {
            match self.ask(to, &header, &[]).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(peer = %to, error = %e, round, attempt, "group announcement failed");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
}

/// What a member waiting for its round's group hears.
enum Heard {
    /// The group, announced.
    Group(Formed),
    /// The leader went silent.
    LeaderSilent,
    /// A larger group of the run is in sight (see `healing`).
    Outranked,
}

/// What a leader waiting for its group's `Ready`s does next.
enum Leading {
    /// Announce the group of those ready.
    Form,
    /// A larger group of the run is in sight: join it.
    Yield,
    /// A lower member of the last group is live again: it leads.
    StepAside,
}

/// The refusal of a `Ready` for a round this peer has left behind.
fn round_is_over(round: u64) -> String {
    format!("round {round} is over")
}
