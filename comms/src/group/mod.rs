//! A run's group of peers and its all-reduce.
//!
//! | module | what |
//! |---|---|
//! | `messages` | the request header and reply, decoded with limits |
//! | `membership` | introductions, heartbeats, connections, leaving |
//! | `formation` | each round's leader and group, the agreed state |
//! | `healing` | a run split by a cut link becoming one again |
//! | `all_reduce` | the pipelined reduce-scatter + all-gather |
//! | `transfers` | state, contributions and checkpoints offered and fetched in chunks |
//! | `extension` | a protocol riding on the run's connections (the ledger) |
//! | `status` | what `launch status` shows |
//! | `exchange` | the naive exchange the all-reduce is benchmarked against |
//! | `faults` | test-only fault hooks |
//!
//! **Membership.** Every peer gossips a heartbeat (with its progress, for `launch status`) on
//! the run's topic; a peer heard from within `peer_timeout` is live, one that says `Leave` is
//! gone at once. **Group.** At the start of each round every peer sends `Ready` with the hash
//! of its state; the leader (the lowest live peer id among the last round's members) waits
//! until each of them is ready (or the round's deadline passes) and announces the members,
//! sorted, with their state hashes. The member list fixes, for that round, who owns which
//! shard and which data shard each member trains on. **Joining.** A newcomer sends `Ready`
//! without a state for the next round, is announced as a member, and fetches the state the
//! majority holds ([`crate::transfer`]: chunks from several members at once, each verified);
//! a member whose hash differs from the majority's fetches it the same way. **All-reduce.** Reduce-scatter, then all-gather: member *i* sends shard *k* of its
//! payload to member *k*, which combines what arrived (the trainer's `reduce`) and sends the
//! combined shard to every member. Each member sends about 2(N−1)/N of one payload. If an
//! owner dies, its shard passes to the next live member in the ring, to whom every member
//! resends its part; a contributor that dies is left out of the shards it did not reach.
//!
//! Every request names the run and the round; requests for another run, from a peer outside
//! the round's group, for an old round, or repeating one already received are refused with a
//! reason and counted per peer. Requests no honest peer sends (malformed, forged, oversized,
//! over the network layer's limits) are offences: a peer with [`GroupLimits::ban_after`] of
//! them within a minute is banned — disconnected, refused for the rest of the run, and never
//! again counted live.

mod all_reduce;
mod exchange;
mod extension;
mod faults;
mod formation;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod healing;
mod membership;
mod messages;
mod status;
#[cfg(test)]
mod tests;
mod transfers;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::{Notify, mpsc};

use crate::net::{Client, NetError, NetEvent};
use extension::EXTENSION_GOSSIP;
use messages::{Header, Heartbeat, Reply, decode_request, encode_request};
use transfers::Offer;

pub use all_reduce::{AllReduced, Arrival, Reduction};
pub use extension::Extension;
pub use formation::Formed;
pub use membership::config_differences;
pub use messages::Stage;
pub use messages::{GroupStatus, PeerStats, RunProgress};
pub use status::query_status;
pub use transfers::{BlobSource, ContributionProofs, Handed};

/// Errors of the group protocol.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// A network operation failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A peer of the run has a different configuration.
    #[error("peer {peer} runs a different configuration: {differences}")]
    ConfigMismatch {
        /// The peer.
        peer: PeerId,
        /// Which fields differ, and how.
        differences: String,
    },
    /// A peer refused a request.
    #[error("peer {peer} refused: {reason}")]
    Refused {
        /// The peer.
        peer: PeerId,
        /// Its reason.
        reason: String,
    },
    /// This peer was left out of the round's group (its `Ready` came after the group formed);
    /// it can join the next round.
    #[error("left out of round {round}'s group: it formed before this peer was ready")]
    NotInGroup {
        /// The round.
        round: u64,
    },
    /// Fetching a state from other peers failed.
    #[error(transparent)]
    Transfer(#[from] crate::transfer::TransferError),
    /// Nothing arrived in time.
    #[error("round {round}: {what} did not arrive within {secs} s")]
    Deadline {
        /// The round.
        round: u64,
        /// What was missing.
        what: String,
        /// The deadline.
        secs: u64,
    },
}

/// Timing of the group protocol.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    /// The run's identity (hash of its config).
    pub run: String,
    /// The run's config as JSON, compared field by field with joining peers.
    pub config: serde_json::Value,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// A peer not heard from for this long is considered gone.
    pub peer_timeout: Duration,
    /// The longest any step of a round may wait for others (the ceiling on deadlines).
    pub round_ceiling: Duration,
    /// When to ban a peer, and how much one transfer may bring.
    pub limits: GroupLimits,
}

/// What this peer puts up with from others.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupLimits {
    /// Each peer's requests per second and in flight (enforced by the network layer: give
    /// them to [`crate::net::NetConfig::limits`]).
    pub requests: crate::net::PeerLimits,
    /// Offences (requests no honest peer sends) of one peer within a minute after which it
    /// is banned.
    pub ban_after: u32,
    /// Largest state, contribution or checkpoint one fetch may bring (held in memory); the
    /// run's own size limits apply below it.
    pub max_transfer_bytes: u64,
}

impl Default for GroupLimits {
    /// 100 offences a minute (an honest peer commits none, bar a refused announcement in a
    /// failover); 8 GiB.
    fn default() -> Self {
        Self {
            requests: crate::net::PeerLimits::default(),
            ban_after: 100,
            max_transfer_bytes: 8 << 30,
        }
    }
}

/// The window in which refusals count towards a ban.
const OFFENCE_WINDOW: Duration = Duration::from_secs(60);

/// Pause before retrying a request to a peer that is live but not reachable yet.
pub(super) const RETRY: Duration = Duration::from_millis(300);
/// How long a request to a live peer is retried: a peer behind a NAT is heard of by gossip
/// at once but reachable only once it has found itself private and reserved a relay slot
/// (AutoNAT's dial-back times out after 10 s).
pub(super) const REACH_LIMIT: Duration = Duration::from_secs(60);
/// How often a member waiting for its group repeats its `Ready` (a joiner: every second).
pub(super) const READY_REPEAT: Duration = Duration::from_secs(5);
/// How long a leaving peer tries to say so.
pub(super) const LEAVE_NOTICE: Duration = Duration::from_secs(2);

#[derive(Default)]
struct State {
    last_seen: HashMap<PeerId, Instant>,
    connected: BTreeSet<PeerId>,
    dialled: HashMap<PeerId, Instant>,
    gone: BTreeSet<PeerId>,
    /// Members of a round's group that refused this peer as a member of that round: they hold
    /// another group for it (they lost touch at its forming), so they are out of the round.
    outside: BTreeSet<(u64, PeerId)>,
    /// The group named by shards that came before this peer had their round's group.
    claimed: BTreeMap<(u64, PeerId), String>,
    /// Per round, who said it is ready, with its state hash.
    ready: BTreeMap<u64, BTreeMap<PeerId, Option<String>>>,
    /// How long the last few all-reduces took here.
    all_reduce_times: std::collections::VecDeque<Duration>,
    /// The newest round whose all-reduce finished here.
    completed: Option<u64>,
    /// Newcomers waiting to join, with the first round they asked for.
    joiners: BTreeMap<PeerId, u64>,
    /// Where each peer said it listens (heartbeats, `Ready`, announcements).
    addrs: BTreeMap<PeerId, Vec<String>>,
    /// This peer's own addresses.
    my_addrs: Vec<String>,
    /// Peers to connect to directly, learned from a request.
    introduce: Vec<PeerId>,
    groups: BTreeMap<u64, Formed>,
    /// Rounds whose group this peer announced, as leader.
    led: BTreeSet<u64>,
    /// Group announcements to (re)send: to a peer whose `Ready` came after the group formed.
    announce: Vec<(PeerId, u64)>,
    shards: HashMap<all_reduce::ShardKey, BTreeMap<PeerId, Arrival>>,
    round: u64,
    rejected: BTreeMap<PeerId, u64>,
    /// Per peer, the start of its current minute of refusals and how many it has had in it.
    offences: HashMap<PeerId, (Instant, u32)>,
    /// Peers refused for the rest of the run.
    banned: BTreeSet<PeerId>,
    /// Peers to ban at the network layer.
    ban: Vec<PeerId>,
    bytes_received: u64,
    /// Peers that said they leave (heartbeats still in flight do not bring them back).
    left: BTreeSet<PeerId>,
    /// Whether this peer has been in a formed group, or heard of one.
    under_way: bool,
    /// The newest round any peer reported.
    newest_round: u64,
    offer: Option<Arc<Offer>>,
    /// This peer's own contributions of the last few rounds, for validators to fetch.
    contributions: BTreeMap<u64, Arc<Offer>>,
    blobs: Option<Arc<dyn BlobSource>>,
    /// Proves this peer's contribution to a round (see [`Group::serve_contribution_proofs`]).
    proofs: Option<ContributionProofs>,
    /// Per round of the last few, the peers this peer handed its proof of that contribution.
    proofs_served: BTreeMap<u64, BTreeSet<PeerId>>,
    extension: Option<Arc<dyn Extension>>,
    stats: PeerStats,
    peer_stats: BTreeMap<PeerId, PeerStats>,
    /// The group each peer says it is in (by its lowest member), from its heartbeats.
    peer_groups: BTreeMap<PeerId, PeerId>,
    /// Since when a group outranking this peer's has been in sight.
    outranked_since: Option<Instant>,
    /// Peers whose last connection closed (a crash or an exit, unlike a cut link, which goes
    /// silent), until heard from again.
    closed: BTreeSet<PeerId>,
}

struct Shared {
    me: PeerId,
    settings: GroupSettings,
    /// How peers are reached (for status).
    routes: crate::net::Routes,
    state: Mutex<State>,
    changed: Notify,
}

impl Shared {
    /// A group's state and handlers without a network (tests and fuzzing).
    #[cfg(any(test, feature = "fuzzing"))]
    fn detached(me: PeerId, settings: GroupSettings) -> Self {
        Self {
            me,
            settings,
            routes: Default::default(),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_live(&self, state: &State, peer: &PeerId) -> bool {
        *peer == self.me
            || (!state.gone.contains(peer)
                && !state.left.contains(peer)
                && !state.banned.contains(peer)
                && state
                    .last_seen
                    .get(peer)
                    .is_some_and(|t| t.elapsed() < self.settings.peer_timeout))
    }

    /// Whether `peer` takes part in round `round`'s all-reduce: live, not in another group
    /// for that round, and not past it. A member whose heartbeat says it is in a later round
    /// has finished this one: whatever it sent arrived, and what it could not deliver (its
    /// link was down) it will never send again, so its shards pass to the next owner.
    fn in_round(&self, state: &State, round: u64, peer: &PeerId) -> bool {
        self.is_live(state, peer)
            && !state.outside.contains(&(round, *peer))
            && state.peer_stats.get(peer).is_none_or(|s| s.round <= round)
    }

    /// Whether `peer`, heard from before, has sent no heartbeat for a peer timeout: a cut
    /// link or a frozen process. (A peer never heard from is not silent, only unknown.)
    fn is_silent(&self, state: &State, peer: &PeerId) -> bool {
        state
            .last_seen
            .get(peer)
            .is_some_and(|t| t.elapsed() >= self.settings.peer_timeout)
    }

    fn live(&self, state: &State) -> BTreeSet<PeerId> {
        let mut live: BTreeSet<PeerId> = state
            .last_seen
            .keys()
            .filter(|p| self.is_live(state, p))
            .copied()
            .collect();
        live.insert(self.me);
        live
    }

    /// Peers heard from within the time a minority waits for them, with no connection left
    /// and none closed by them (their connections stalled: a cut link): to dial again.
    fn lost(&self, state: &State) -> Vec<PeerId> {
        let patience = self.settings.peer_timeout * healing::MINORITY_WAIT;
        state
            .last_seen
            .iter()
            .filter(|(peer, seen)| {
                **peer != self.me
                    && seen.elapsed() < patience
                    && !state.connected.contains(peer)
                    && !state.closed.contains(peer)
                    && !state.left.contains(peer)
                    && !state.banned.contains(peer)
            })
            .map(|(peer, _)| *peer)
            .collect()
    }

    /// Refuses a request, counting it for `launch status`: a stale or misdirected one that an
    /// honest peer may send (an old round, a replay after a retry, another run's config).
    fn reject(&self, state: &mut State, peer: PeerId, reason: &str) -> Reply {
        tracing::warn!(%peer, reason, "request refused");
        *state.rejected.entry(peer).or_default() += 1;
        Reply::Refused(reason.to_string())
    }

    /// Refuses a request no honest peer sends (malformed, forged, oversized, over a limit):
    /// counted towards a ban, which comes at [`GroupLimits::ban_after`] within a minute.
    fn offence(&self, state: &mut State, peer: PeerId, reason: &str) -> Reply {
        let reply = self.reject(state, peer, reason);
        let now = Instant::now();
        let (since, count) = state.offences.entry(peer).or_insert((now, 0));
        if now.duration_since(*since) > OFFENCE_WINDOW {
            (*since, *count) = (now, 0);
        }
        *count = count.saturating_add(1);
        if *count >= self.settings.limits.ban_after && state.banned.insert(peer) {
            tracing::warn!(%peer, offences = *count, "peer banned for the rest of the run");
            state.offences.remove(&peer);
            state.ban.push(peer);
        }
        reply
    }

    /// Handles one incoming request and says what to answer.
    fn on_request(&self, peer: PeerId, data: &[u8]) -> Reply {
        let mut state = self.lock();
        if state.banned.contains(&peer) {
            return Reply::Refused("banned from this run".into());
        }
        state.bytes_received += data.len() as u64;
        let (header, frame) = match decode_request(data) {
            Ok(parsed) => parsed,
            Err(reason) => return self.offence(&mut state, peer, &reason),
        };
        let run = header.run().map(str::to_owned);
        // A Hello from another run is answered with the differing fields.
        if let Some(run) = &run
            && *run != self.settings.run
            && !matches!(header, Header::Hello { .. })
        {
            return self.reject(&mut state, peer, &format!("run {run} is not this run"));
        }
        let reply = match header {
            Header::BlobManifest { .. } | Header::BlobChunk { .. } => {
                // Served from disk: off the group's lock.
                let source = state.blobs.clone();
                drop(state);
                return transfers::serve_blob(source.as_deref(), header);
            }
            Header::Extension { .. } => {
                let extension = state.extension.clone();
                drop(state);
                return extension::answer(extension, peer, frame);
            }
            Header::Leave { .. } => {
                self.on_leave(&mut state, peer);
                drop(state);
                self.changed.notify_waiters();
                return Reply::Ok;
            }
            Header::Hello { run, config } => self.on_hello(&mut state, peer, run, config),
            Header::Ready {
                round,
                state: held,
                addrs,
                ..
            } => self.on_ready(&mut state, peer, round, held, addrs),
            Header::Group {
                round,
                members,
                states,
                addrs,
                ..
            } => self.on_group(&mut state, peer, round, members, states, addrs),
            Header::Status => Reply::json(&self.status(&state)),
            Header::StateManifest { round, .. } => {
                transfers::serve_offer(state.offer.as_ref(), round, None, "state")
            }
            Header::StateChunk { round, index, .. } => {
                // With `SINTER_FAULT_ABORT_SERVING_STATE=1`, a donor dies in the middle of a transfer.
                #[cfg(feature = "fault-injection")]
                faults::fault_point(
                    "SINTER_FAULT_ABORT_SERVING_STATE",
                    "1",
                    "serving a state chunk",
                );
                transfers::serve_offer(state.offer.as_ref(), round, Some(index), "state")
            }
            Header::ContributionManifest { round, .. } => {
                self.serve_contribution(&state, peer, round, None)
            }
            Header::ContributionProof { round, .. } => {
                let proofs = state.proofs.clone();
                drop(state);
                // The provider reads the ledger: off the group's lock.
                return match proofs.and_then(|prove| prove(round)) {
                    Some(proof) => {
                        self.proof_served(peer, round);
                        Reply::Data(proof)
                    }
                    None => {
                        Reply::Refused(format!("no proof of a contribution to round {round} here"))
                    }
                };
            }
            Header::ContributionChunk { round, index, .. } => {
                self.serve_contribution(&state, peer, round, Some(index))
            }
            Header::Shard {
                round,
                shard,
                stage,
                group,
                contributors,
                ..
            } => self.on_shard(
                &mut state,
                peer,
                round,
                shard,
                stage,
                group,
                contributors,
                frame,
            ),
        };
        if !matches!(reply, Reply::Refused(_)) && run.is_some() {
            state.last_seen.insert(peer, Instant::now());
            state.gone.remove(&peer);
            state.closed.remove(&peer);
        }
        drop(state);
        self.changed.notify_waiters();
        reply
    }
}

/// This peer's membership in a run's group. Cheap to clone.
#[derive(Clone)]
pub struct Group {
    shared: Arc<Shared>,
    client: Client,
}

impl Group {
    /// Starts serving the group protocol on `events` (spawned on the current tokio runtime):
    /// answering requests, recording heartbeats and sending this peer's own.
    pub fn start(
        client: Client,
        mut events: mpsc::Receiver<NetEvent>,
        settings: GroupSettings,
    ) -> Self {
        let shared = Arc::new(Shared {
            me: client.peer_id(),
            settings,
            routes: client.routes(),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        });
        let inbox = shared.clone();
        let responder = client.clone();
        let group = {
            let (shared, client) = (shared.clone(), client.clone());
            move || Group {
                shared: shared.clone(),
                client: client.clone(),
            }
        };
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match event {
                    NetEvent::Request { peer, data, reply } => {
                        let answer = inbox.on_request(peer, &data);
                        if responder.respond(reply, answer.encode()).await.is_err() {
                            return;
                        }
                    }
                    NetEvent::Gossip { peer, .. } if inbox.lock().banned.contains(&peer) => {}
                    NetEvent::Gossip { peer, data } if data.first() == Some(&EXTENSION_GOSSIP) => {
                        let extension = inbox.lock().extension.clone();
                        if let Some(extension) = extension {
                            extension.gossip(peer, &data[1..]);
                        }
                    }
                    NetEvent::Gossip { peer, data } => {
                        if let Ok(beat) = serde_json::from_slice::<Heartbeat>(&data)
                            && beat.run == inbox.settings.run
                        {
                            {
                                let mut state = inbox.lock();
                                tracing::trace!(%peer, round = beat.stats.round, "heartbeat");
                                // Gossip relays old heartbeats: one from a peer whose last
                                // connection closed proves nothing until it is reconnected.
                                if !state.gone.contains(&peer) || state.connected.contains(&peer) {
                                    state.last_seen.insert(peer, Instant::now());
                                    state.gone.remove(&peer);
                                    state.closed.remove(&peer);
                                }
                                state.under_way |= beat.under_way;
                                state.newest_round = state.newest_round.max(beat.stats.round);
                                state.peer_stats.insert(peer, beat.stats);
                                match beat.group.and_then(|g| g.parse().ok()) {
                                    Some(key) => state.peer_groups.insert(peer, key),
                                    None => state.peer_groups.remove(&peer),
                                };
                                state.addrs.insert(peer, beat.addrs);
                            }
                            // Gossip may reach us through another peer: connect directly,
                            // since the all-reduce talks to every member.
                            group().connect(peer).await;
                        }
                        inbox.changed.notify_waiters();
                    }
                    NetEvent::Connected(peer) => {
                        inbox.lock().connected.insert(peer);
                    }
                    NetEvent::Refused { peer, reason } => {
                        let mut state = inbox.lock();
                        inbox.offence(&mut state, peer, &reason);
                    }
                    NetEvent::Stalled(peer) => {
                        // Silence, not a departure: the peer stays live until its timeout,
                        // and the heartbeats dial it again.
                        inbox.lock().connected.remove(&peer);
                        inbox.changed.notify_waiters();
                    }
                    NetEvent::Disconnected(peer) => {
                        let mut state = inbox.lock();
                        state.connected.remove(&peer);
                        state.gone.insert(peer);
                        state.closed.insert(peer);
                        drop(state);
                        inbox.changed.notify_waiters();
                    }
                }
                // What handling the event left to do: announcements to resend, peers to
                // dial, peers to ban.
                let (announce, introduce, ban) = {
                    let mut state = inbox.lock();
                    (
                        std::mem::take(&mut state.announce),
                        std::mem::take(&mut state.introduce),
                        std::mem::take(&mut state.ban),
                    )
                };
                for (to, round) in announce {
                    let group = group();
                    tokio::spawn(async move { group.announce(to, round).await });
                }
                for peer in introduce {
                    group().connect(peer).await;
                }
                for peer in ban {
                    let _ = responder.ban(peer).await;
                }
            }
        });
        let beats = shared.clone();
        let publisher = client.clone();
        let redialler = Group {
            shared: shared.clone(),
            client: client.clone(),
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(beats.settings.heartbeat);
            loop {
                tick.tick().await;
                let Ok(addrs) = publisher.listen_addrs().await else {
                    return;
                };
                let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                beats.lock().my_addrs = addrs.clone();
                let beat = {
                    let mut state = beats.lock();
                    beats.watch_for_split(&mut state);
                    Heartbeat {
                        run: beats.settings.run.clone(),
                        addrs,
                        stats: state.stats.clone(),
                        under_way: state.under_way,
                        group: beats.group_key(&state).map(|k| k.to_string()),
                    }
                };
                let data = serde_json::to_vec(&beat).expect("heartbeats serialise");
                if publisher.publish(data).await.is_err() {
                    return;
                }
                let lost = beats.lost(&beats.lock());
                for peer in lost {
                    redialler.connect(peer).await;
                }
                // Deadlines are checked by waiters when they wake; wake them regularly.
                beats.changed.notify_waiters();
            }
        });
        Self { shared, client }
    }

    /// This peer's id.
    pub fn me(&self) -> PeerId {
        self.shared.me
    }

    /// Peers currently considered live, this one included, sorted.
    pub fn live_peers(&self) -> Vec<PeerId> {
        let state = self.shared.lock();
        self.shared.live(&state).into_iter().collect()
    }

    /// Requests refused so far, per peer.
    pub fn rejected_counts(&self) -> BTreeMap<PeerId, u64> {
        self.shared.lock().rejected.clone()
    }

    /// Peers banned for the rest of the run.
    pub fn banned_peers(&self) -> BTreeSet<PeerId> {
        self.shared.lock().banned.clone()
    }

    /// Sends a request; returns the bytes sent and the data answered (empty for a plain Ok).
    async fn ask(
        &self,
        peer: PeerId,
        header: &Header,
        frame: &[u8],
    ) -> Result<(u64, Vec<u8>), GroupError> {
        let request = encode_request(header, frame);
        let bytes = request.len() as u64;
        // Over a cut link a request waits out its whole timeout (and a leader announcing
        // its group, or a member sending its shard, waits with it): it is given up as soon
        // as the peer falls silent instead.
        let answer = tokio::select! {
            answer = self.client.request(peer, request) => answer?,
            () = self.until_silent(peer) => {
                let reason = format!(
                    "no heartbeat for {:?} (a cut link?); request given up",
                    self.shared.settings.peer_timeout
                );
                return Err(NetError::Request { peer, reason }.into());
            }
        };
        self.shared.lock().bytes_received += answer.len() as u64;
        match Reply::decode(answer) {
            Ok(Reply::Ok) => Ok((bytes, Vec::new())),
            Ok(Reply::Data(data)) => Ok((bytes, data)),
            Ok(Reply::Refused(reason)) => Err(GroupError::Refused { peer, reason }),
            Err(reason) => Err(GroupError::Refused { peer, reason }),
        }
    }

    /// Returns once `peer` is silent (see [`Shared::is_silent`]); never, while it is not.
    async fn until_silent(&self, peer: PeerId) {
        let mut silent =
            |shared: &Shared, state: &mut State| shared.is_silent(state, &peer).then_some(());
        while self
            .wait_for(Duration::from_secs(3600), &mut silent)
            .await
            .is_none()
        {}
    }

    /// Waits until `done` holds, for at most `limit`; `done` sees the state each time
    /// something arrives or a heartbeat ticks.
    async fn wait_for<T>(
        &self,
        limit: Duration,
        mut done: impl FnMut(&Shared, &mut State) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = done(&self.shared, &mut self.shared.lock()) {
                return Some(v);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return done(&self.shared, &mut self.shared.lock());
            }
        }
    }
}
