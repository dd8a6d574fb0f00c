//! The all-reduce of one round: reduce-scatter, then all-gather, pipelined shard by shard.
//! Member *i* sends shard *k* of its payload to the shard's owner, which combines what arrived
//! (the trainer's reduction) and sends the combined shard to every member. An owner that dies
//! is replaced by the next live member in the ring; a contributor that dies is left out of the
//! shards it did not reach.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::faults::crash_point;
use super::formation::group_key;
use super::messages::{Header, Reply, Stage};
use super::{Group, GroupError, REACH_LIMIT, RETRY, Shared, State};
use libp2p::PeerId;

/// One shard as it arrived.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// Who sent it.
    pub from: PeerId,
    /// The encoded tensors.
    pub frame: Vec<u8>,
    /// For a reduced shard: whose contributions it combines.
    pub contributors: Vec<PeerId>,
}

/// What the trainer's reduction made of one shard's contributions.
#[derive(Debug)]
pub struct Reduction {
    /// The combined shard, encoded.
    pub frame: Vec<u8>,
    /// The contributors whose parts went in.
    pub contributors: Vec<PeerId>,
    /// Contributions refused, with the reason.
    pub rejected: Vec<(PeerId, String)>,
}

/// The result of one all-reduce.
#[derive(Debug)]
pub struct AllReduced {
    /// Each shard's combined frame, in shard order.
    pub shards: Vec<Arrival>,
    /// Bytes this peer sent during the all-reduce.
    pub bytes_sent: u64,
    /// Bytes this peer received during the all-reduce.
    pub bytes_received: u64,
}

pub(super) type ShardKey = (u64, Stage, u32);

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_shard(
        &self,
        state: &mut State,
        peer: PeerId,
        round: u64,
        shard: u32,
        stage: Stage,
        group: String,
        contributors: Vec<String>,
        frame: &[u8],
    ) -> Reply {
        if round.saturating_add(1) < state.round || state.completed.is_some_and(|c| round <= c) {
            return self.reject(state, peer, &format!("round {round} is over (replay?)"));
        }
        if round > state.round.saturating_add(1) {
            return self.offence(
                state,
                peer,
                &format!(
                    "round {round} is ahead of this peer's round {}",
                    state.round
                ),
            );
        }
        match state.groups.get(&round) {
            Some(formed) if !formed.members.contains(&peer) => {
                return self.reject(state, peer, &not_a_member(round));
            }
            Some(formed) if group_key(round, &formed.members) != group => {
                tracing::warn!(%peer, round, "a member holds another group for this round; it is out of the round");
                state.outside.insert((round, peer));
                return self.reject(state, peer, &not_a_member(round));
            }
            Some(_) => {}
            // Before this peer has the round's group: a member of the newest group it knows
            // (running a round ahead) or a newcomer it has heard from, holding at most what
            // one transfer may bring.
            None => {
                if let Some((_, newest)) = state.groups.last_key_value()
                    && !newest.members.contains(&peer)
                    && !state.joiners.contains_key(&peer)
                {
                    return self.reject(
                        state,
                        peer,
                        &format!(
                            "sent round {round} before its group, and is not a member of round {}",
                            newest.round
                        ),
                    );
                }
                let early: u64 = state
                    .shards
                    .iter()
                    .filter(|((r, _, _), _)| !state.groups.contains_key(r))
                    .filter_map(|(_, arrivals)| arrivals.get(&peer))
                    .map(|a| a.frame.len() as u64)
                    .sum();
                let cap = self.settings.limits.max_transfer_bytes;
                if early.saturating_add(frame.len() as u64) > cap {
                    return self.offence(
                        state,
                        peer,
                        &format!("over {cap} bytes sent ahead of a group this peer has"),
                    );
                }
            }
        }
        let Ok(contributors) = contributors
            .iter()
            .map(|c| c.parse())
            .collect::<Result<Vec<PeerId>, _>>()
        else {
            return self.offence(state, peer, "unparsable contributor id");
        };
        let arrivals = state.shards.entry((round, stage, shard)).or_default();
        if arrivals.contains_key(&peer) {
            return self.reject(
                state,
                peer,
                &format!("{stage:?} for shard {shard} of round {round} already received"),
            );
        }
        if !state.groups.contains_key(&round) {
            state.claimed.insert((round, peer), group);
        }
        arrivals.insert(
            peer,
            Arrival {
                from: peer,
                frame: frame.to_vec(),
                contributors,
            },
        );
        Reply::Ok
    }

    /// Once this peer has round `round`'s group (named `key`): senders whose shards came
    /// before it and named another group hold another group for the round, and are out of it
    /// (what they sent is dropped).
    pub(super) fn leave_out_other_groups(&self, round: u64, key: &str) {
        let mut state = self.lock();
        let others: Vec<PeerId> = state
            .claimed
            .iter()
            .filter(|((r, _), claimed)| *r == round && claimed.as_str() != key)
            .map(|((_, peer), _)| *peer)
            .collect();
        for peer in others {
            tracing::warn!(%peer, round, "a member holds another group for this round; it is out of the round");
            state.outside.insert((round, peer));
            for ((r, _, _), arrivals) in state.shards.iter_mut() {
                if *r == round {
                    arrivals.remove(&peer);
                }
            }
        }
        state.claimed.retain(|(r, _), _| *r > round);
    }
}

impl Group {
    /// The all-reduce of one round among `members` (as [`Group::form`] returned them).
    /// `parts[k]` is this peer's encoded part of shard `k`; there are `c · N` shards for `N`
    /// members, and shard `k` belongs to member `k mod N` (or the next live one). `reduce(k,
    /// parts)` combines the contributions to a shard this peer owns, given in member order.
    ///
    /// Pipelined: each peer sends its parts to each owner one after the other, in shard order,
    /// while it reduces and broadcasts each shard it owns as soon as that shard is complete,
    /// so the all-gather of early shards overlaps the reduce-scatter of later ones.
    pub async fn all_reduce(
        &self,
        round: u64,
        members: &[PeerId],
        parts: Vec<Vec<u8>>,
        reduce: &(dyn Fn(usize, &[Arrival]) -> Reduction + Sync),
    ) -> Result<AllReduced, GroupError> {
        let n = members.len();
        assert!(
            !parts.is_empty() && parts.len().is_multiple_of(n),
            "a multiple of one part per member"
        );
        let shards = parts.len();
        let me = self.me();
        let ceiling = self.shared.settings.round_ceiling;
        let deadline = self.deadline();
        let started = Instant::now();
        let received_before = self.shared.lock().bytes_received;
        let outbox = Outbox::default();
        let key = group_key(round, members);
        self.shared.leave_out_other_groups(round, &key);
        let key = key.as_str();
        // Owner of shard k: member k mod N, or the next live member after it in the ring.
        let owner = |state: &State, k: usize| -> PeerId {
            (0..n)
                .map(|i| members[(k + i) % n])
                .find(|m| self.shared.in_round(state, round, m))
                .unwrap_or(me)
        };
        let mut sent_to: Vec<Option<PeerId>> = vec![None; shards];
        let mut reduced_by_me: BTreeSet<usize> = BTreeSet::new();
        loop {
            let owners: Vec<PeerId> = {
                let state = self.shared.lock();
                (0..shards).map(|k| owner(&state, k)).collect()
            };
            // Send (or resend, after an owner died) each part to its shard's current owner:
            // to each owner in shard order, to all owners at once.
            let mut queues: BTreeMap<PeerId, Vec<usize>> = BTreeMap::new();
            let mut forwards = Vec::new();
            for k in 0..shards {
                if sent_to[k] == Some(owners[k]) {
                    continue;
                }
                let resend = sent_to[k].is_some();
                sent_to[k] = Some(owners[k]);
                if let Some(held) = self.reduction(round, k) {
                    // The owner died after reducing and reached only some members: pass its
                    // reduction on, so that the new owner does not wait for contributions
                    // this peer will never resend, and every member applies the same one.
                    if resend {
                        forwards.push((k, held));
                    }
                    continue;
                }
                if owners[k] == me {
                    let arrival = Arrival {
                        from: me,
                        frame: parts[k].clone(),
                        contributors: vec![me],
                    };
                    self.store(round, Stage::Contribution, k, arrival);
                } else {
                    queues.entry(owners[k]).or_default().push(k);
                }
            }
            let (parts, outbox) = (&parts, &outbox);
            let redeliver = async {
                let due = {
                    let state = self.shared.lock();
                    outbox.due(|p| self.shared.in_round(&state, round, p))
                };
                // A contribution whose shard has another owner now is resent to it above.
                let sends = due
                    .iter()
                    .filter(|u| u.reduced || owners[u.k] == u.to)
                    .map(|u| outbox.send(self, round, u.to, &u.header, &u.frame, u.k));
                futures::future::join_all(sends).await;
            };
            let forward = async {
                for (k, held) in &forwards {
                    let header = Header::Shard {
                        run: self.shared.settings.run.clone(),
                        round,
                        group: key.into(),
                        shard: *k as u32,
                        stage: Stage::Reduced,
                        contributors: held.contributors.iter().map(|c| c.to_string()).collect(),
                    };
                    let sends = members
                        .iter()
                        .filter(|m| **m != me && **m != held.from)
                        .map(|m| outbox.send(self, round, *m, &header, &held.frame, *k));
                    futures::future::join_all(sends).await;
                }
            };
            let send = async {
                let per_owner = queues.iter().map(|(target, ks)| async move {
                    for &k in ks {
                        let header = Header::Shard {
                            run: self.shared.settings.run.clone(),
                            round,
                            group: key.into(),
                            shard: k as u32,
                            stage: Stage::Contribution,
                            contributors: Vec::new(),
                        };
                        outbox
                            .send(self, round, *target, &header, &parts[k], k)
                            .await;
                    }
                });
                futures::future::join_all(per_owner).await;
                crash_point(round);
            };
            // Reduce every shard this peer now owns, in order, each once all live members'
            // parts are in, and send the result to every member.
            let mine: Vec<usize> = (0..shards)
                .filter(|&k| owners[k] == me && !reduced_by_me.contains(&k))
                .collect();
            let reduce_mine = async {
                for &k in &mine {
                    // A contributor that stalls past the deadline is left out.
                    let complete = self
                        .wait_for(deadline, |shared, state| {
                            let reduced = state
                                .shards
                                .get(&(round, Stage::Reduced, k as u32))
                                .is_some_and(|g| !g.is_empty());
                            let got = state.shards.get(&(round, Stage::Contribution, k as u32));
                            (reduced
                                || members.iter().all(|m| {
                                    got.is_some_and(|g| g.contains_key(m))
                                        || !shared.in_round(state, round, m)
                                }))
                            .then_some(())
                        })
                        .await;
                    if self.has_reduced(round, k) {
                        continue; // a dead owner's reduction reached us: it stands
                    }
                    if complete.is_none() {
                        tracing::warn!(
                            round,
                            shard = k,
                            secs = deadline.as_secs(),
                            "deadline passed; reducing the contributions that arrived"
                        );
                    }
                    let arrivals: Vec<Arrival> = self
                        .shared
                        .lock()
                        .shards
                        .get(&(round, Stage::Contribution, k as u32))
                        .map(|g| g.values().cloned().collect())
                        .unwrap_or_default();
                    let ordered: Vec<Arrival> = members
                        .iter()
                        .filter_map(|m| arrivals.iter().find(|a| a.from == *m).cloned())
                        .collect();
                    let reduction = reduce(k, &ordered);
                    {
                        let mut state = self.shared.lock();
                        for (peer, reason) in &reduction.rejected {
                            tracing::warn!(%peer, reason, round, shard = k, "contribution rejected");
                            *state.rejected.entry(*peer).or_default() += 1;
                        }
                    }
                    self.store(
                        round,
                        Stage::Reduced,
                        k,
                        Arrival {
                            from: me,
                            frame: reduction.frame.clone(),
                            contributors: reduction.contributors.clone(),
                        },
                    );
                    let header = Header::Shard {
                        run: self.shared.settings.run.clone(),
                        round,
                        group: key.into(),
                        shard: k as u32,
                        stage: Stage::Reduced,
                        contributors: reduction
                            .contributors
                            .iter()
                            .map(|c| c.to_string())
                            .collect(),
                    };
                    let sends = members
                        .iter()
                        .filter(|m| **m != me)
                        .map(|m| outbox.send(self, round, *m, &header, &reduction.frame, k));
                    futures::future::join_all(sends).await;
                }
            };
            futures::join!(redeliver, forward, send, reduce_mine);
            reduced_by_me.extend(mine);
            // Wait for every shard; stop waiting for one whose owner has died.
            let progress = self
                .wait_for(ceiling, |shared, state| {
                    // A peer this one could not reach is back: resend what it missed.
                    if outbox.waiting_for(|p| shared.in_round(state, round, p)) {
                        return Some(false);
                    }
                    let mut missing = 0;
                    for (k, previous_owner) in owners.iter().enumerate() {
                        if state
                            .shards
                            .get(&(round, Stage::Reduced, k as u32))
                            .is_some_and(|g| !g.is_empty())
                        {
                            continue;
                        }
                        if owner(state, k) != *previous_owner {
                            return Some(false); // an owner left the round: resend, retry
                        }
                        missing += 1;
                    }
                    (missing == 0).then_some(true)
                })
                .await;
            match progress {
                Some(true) => break,
                Some(false) => continue,
                None => {
                    return Err(GroupError::Deadline {
                        round,
                        what: "reduced shards".into(),
                        secs: ceiling.as_secs(),
                    });
                }
            }
        }
        let mut state = self.shared.lock();
        let reduced = (0..shards)
            .map(|k| Self::chosen(&state, round, k).expect("checked above"))
            .collect();
        state.completed = Some(round);
        state.all_reduce_times.push_back(started.elapsed());
        if state.all_reduce_times.len() > 5 {
            state.all_reduce_times.pop_front();
        }
        state.shards.retain(|(r, _, _), _| *r > round);
        state.outside.retain(|(r, _)| *r > round);
        state.ready.retain(|r, _| *r > round);
        state.groups.retain(|r, _| *r + 1 >= round);
        let bytes_received = state.bytes_received - received_before;
        Ok(AllReduced {
            shards: reduced,
            bytes_sent: outbox.bytes_sent.into_inner(),
            bytes_received,
        })
    }

    /// Sends a request, retrying while `to` is live (a peer heard of by gossip may not be
    /// reachable yet), for at most [`REACH_LIMIT`], with pauses growing from [`RETRY`] to 3 s.
    pub(super) async fn deliver(
        &self,
        to: PeerId,
        header: &Header,
        frame: &[u8],
    ) -> Result<u64, GroupError> {
        let started = tokio::time::Instant::now();
        let (mut pause, mut attempt) = (RETRY, 0u32);
        loop {
            attempt = attempt.saturating_add(1);
            match self.ask(to, header, frame).await {
                Ok((bytes, _)) => return Ok(bytes),
                Err(GroupError::Net(e)) if started.elapsed() < REACH_LIMIT => {
                    let live = {
                        let state = self.shared.lock();
                        self.shared.is_live(&state, &to)
                    };
                    if !live {
                        return Err(GroupError::Net(e));
                    }
                    tracing::debug!(peer = %to, error = %e, attempt, "request failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 3 / 2).min(Duration::from_secs(3));
                }
                Err(GroupError::Refused { peer, reason }) => {
                    if let Header::Shard { round, .. } = header
                        && reason == not_a_member(*round)
                    {
                        tracing::warn!(%peer, round, "a member holds another group for this round; it is out of the round");
                        self.shared.lock().outside.insert((*round, peer));
                        self.shared.changed.notify_waiters();
                    }
                    return Err(GroupError::Refused { peer, reason });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// How long an owner waits for a shard's contributions before reducing what arrived:
    /// four times the longest of the last five all-reduces, at least 30 s, at most the
    /// configured ceiling (which alone applies until a round has been timed).
    fn deadline(&self) -> Duration {
        let ceiling = self.shared.settings.round_ceiling;
        let state = self.shared.lock();
        match state.all_reduce_times.iter().max() {
            Some(longest) => ceiling.min((*longest * 4).max(Duration::from_secs(30))),
            None => ceiling,
        }
    }

    /// The reduction of shard `k` every member settles on when it holds more than one (a
    /// dead owner's, forwarded, and a new owner's): the one with the most contributors, ties
    /// broken by sender.
    fn chosen(state: &State, round: u64, k: usize) -> Option<Arrival> {
        state
            .shards
            .get(&(round, Stage::Reduced, k as u32))?
            .values()
            .max_by_key(|a| (a.contributors.len(), std::cmp::Reverse(a.from)))
            .cloned()
    }

    /// The reduction of shard `k` this peer holds, if any.
    fn reduction(&self, round: u64, k: usize) -> Option<Arrival> {
        Self::chosen(&self.shared.lock(), round, k)
    }

    fn has_reduced(&self, round: u64, k: usize) -> bool {
        self.shared
            .lock()
            .shards
            .get(&(round, Stage::Reduced, k as u32))
            .is_some_and(|g| !g.is_empty())
    }

    fn store(&self, round: u64, stage: Stage, k: usize, arrival: Arrival) {
        self.shared
            .lock()
            .shards
            .entry((round, stage, k as u32))
            .or_default()
            .insert(arrival.from, arrival);
        self.shared.changed.notify_waiters();
    }
}

/// The refusal of a shard from a peer outside this peer's group for `round`; a member that
/// gets it knows the refuser is in another group for the round.
fn not_a_member(round: u64) -> String {
    format!("not a member of round {round}")
}

/// What this peer sends in one all-reduce: the bytes delivered, and what could not be
/// (its target unreachable), kept to resend once the target is back in the round. After one
/// failed delivery to a peer, its other shards wait with it instead of each timing out.
#[derive(Default)]
struct Outbox {
    bytes_sent: std::sync::atomic::AtomicU64,
    undelivered: Mutex<Vec<Undelivered>>,
    /// Peers a delivery to failed in this round, until they are back.
    unreachable: Mutex<BTreeSet<PeerId>>,
}

/// A shard (contribution or reduced) that could not be delivered.
struct Undelivered {
    to: PeerId,
    header: Header,
    frame: Vec<u8>,
    k: usize,
    reduced: bool,
}

impl Outbox {
    /// Delivers shard `k` to `to` (see [`Group::deliver`]), or keeps it for later.
    async fn send(
        &self,
        group: &Group,
        round: u64,
        to: PeerId,
        header: &Header,
        frame: &[u8],
        k: usize,
    ) {
        let reduced = matches!(
            header,
            Header::Shard {
                stage: Stage::Reduced,
                ..
            }
        );
        let keep = || Undelivered {
            to,
            header: header.clone(),
            frame: frame.to_vec(),
            k,
            reduced,
        };
        if lock(&self.unreachable).contains(&to) {
            lock(&self.undelivered).push(keep());
            return;
        }
        match group.deliver(to, header, frame).await {
            Ok(bytes) => {
                self.bytes_sent
                    .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => {
                let what = if reduced {
                    "reduced shard"
                } else {
                    "contribution"
                };
                tracing::warn!(error = %e, round, shard = k, to = %to, "{what} not delivered");
                if matches!(e, GroupError::Net(_)) {
                    lock(&self.unreachable).insert(to);
                    lock(&self.undelivered).push(keep());
                }
            }
        }
    }

    /// Whether a peer something waits for is back (`back` says who is).
    fn waiting_for(&self, back: impl Fn(&PeerId) -> bool) -> bool {
        lock(&self.undelivered).iter().any(|u| back(&u.to))
    }

    /// Takes what waits for the peers that are back, which are reachable again.
    fn due(&self, back: impl Fn(&PeerId) -> bool) -> Vec<Undelivered> {
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut *lock(&self.undelivered))
            .into_iter()
            .partition(|u| back(&u.to));
        *lock(&self.undelivered) = rest;
        lock(&self.unreachable).retain(|p| !back(p));
        due
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
