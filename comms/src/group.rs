//! A run's group of peers and its all-reduce.
//!
//! **Membership.** Every peer gossips a heartbeat on the run's topic; a peer heard from within
//! `peer_timeout` is live. **Group.** At the end of each round every peer sends `Ready` to the
//! leader (the lowest live peer id); the leader waits until every live peer is ready (or the
//! round's deadline passes) and announces the members, sorted, to each of them. The member
//! list fixes, for that round, who owns which shard and which data shard each member trains
//! on next. **All-reduce.** Reduce-scatter, then all-gather: member *i* sends shard *k* of its
//! payload to member *k*, which combines what arrived (the trainer's `reduce`) and sends the
//! combined shard to every member. Each member sends about 2(N−1)/N of one payload. If an
//! owner dies, its shard passes to the next live member in the ring, to whom every member
//! resends its part; a contributor that dies is left out of the shards it did not reach.
//!
//! Every request names the run and the round; requests for another run, from a peer outside
//! the round's group, for an old round, or repeating one already received are refused with a
//! reason and counted per peer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};

use crate::net::{Client, NetError, NetEvent};

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
    /// This peer was left out of the round's group (it was not ready in time).
    #[error(
        "left out of round {round}'s group: the group formed before this peer was ready (joining a run already under way needs the state transfer, not built yet)"
    )]
    NotInGroup {
        /// The round.
        round: u64,
    },
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
}

/// The two stages of the all-reduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Stage {
    /// A member's part of one shard, sent to the shard's owner.
    Contribution,
    /// The owner's combined shard, sent to every member.
    Reduced,
}

#[derive(Debug, Serialize, Deserialize)]
enum Header {
    Hello {
        run: String,
        config: serde_json::Value,
    },
    Ready {
        run: String,
        round: u64,
    },
    Group {
        run: String,
        round: u64,
        members: Vec<String>,
    },
    Shard {
        run: String,
        round: u64,
        shard: u32,
        stage: Stage,
        contributors: Vec<String>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Ok,
    Refused(String),
}

/// What every peer gossips periodically: enough for others to see it is alive and, if they
/// have no connection to it yet, to dial it.
#[derive(Debug, Serialize, Deserialize)]
struct Heartbeat {
    run: String,
    round: u64,
    addrs: Vec<String>,
}

/// Pause before retrying a request to a peer that is live but not reachable yet.
const RETRY: Duration = Duration::from_millis(300);
/// How often a member waiting for its group repeats its `Ready`.
const READY_REPEAT: Duration = Duration::from_secs(5);

/// Largest JSON header of a request.
const MAX_HEADER: usize = 64 * 1024;

fn encode_request(header: &Header, frame: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(header).expect("headers serialise");
    let mut out = Vec::with_capacity(4 + json.len() + frame.len());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(frame);
    out
}

fn decode_request(data: &[u8]) -> Result<(Header, &[u8]), String> {
    let len = data
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or("request shorter than its header length")?;
    if len > MAX_HEADER {
        return Err(format!("header of {len} bytes exceeds {MAX_HEADER}"));
    }
    let json = data
        .get(4..4 + len)
        .ok_or("request shorter than its header")?;
    let header = serde_json::from_slice(json).map_err(|e| format!("malformed header: {e}"))?;
    Ok((header, &data[4 + len..]))
}

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

type ShardKey = (u64, Stage, u32);

#[derive(Default)]
struct State {
    last_seen: HashMap<PeerId, Instant>,
    connected: BTreeSet<PeerId>,
    dialled: HashMap<PeerId, Instant>,
    gone: BTreeSet<PeerId>,
    ready: BTreeMap<u64, BTreeSet<PeerId>>,
    groups: BTreeMap<u64, Vec<PeerId>>,
    /// Rounds whose group this peer announced, as leader.
    led: BTreeSet<u64>,
    /// Group announcements to (re)send: to a peer whose `Ready` came after the group formed.
    announce: Vec<(PeerId, u64)>,
    shards: HashMap<ShardKey, BTreeMap<PeerId, Arrival>>,
    round: u64,
    rejected: BTreeMap<PeerId, u64>,
    bytes_received: u64,
}

struct Shared {
    me: PeerId,
    settings: GroupSettings,
    state: Mutex<State>,
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_live(&self, state: &State, peer: &PeerId) -> bool {
        *peer == self.me
            || (!state.gone.contains(peer)
                && state
                    .last_seen
                    .get(peer)
                    .is_some_and(|t| t.elapsed() < self.settings.peer_timeout))
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

    fn reject(&self, state: &mut State, peer: PeerId, reason: &str) -> Reply {
        tracing::warn!(%peer, reason, "request refused");
        *state.rejected.entry(peer).or_default() += 1;
        Reply::Refused(reason.to_string())
    }

    /// Handles one incoming request and says what to answer.
    fn on_request(&self, peer: PeerId, data: &[u8]) -> Reply {
        let mut state = self.lock();
        state.bytes_received += data.len() as u64;
        let (header, frame) = match decode_request(data) {
            Ok(parsed) => parsed,
            Err(reason) => return self.reject(&mut state, peer, &reason),
        };
        let run = match &header {
            Header::Hello { run, .. }
            | Header::Ready { run, .. }
            | Header::Group { run, .. }
            | Header::Shard { run, .. } => run,
        };
        // A Hello from another run is answered with the differing fields, below.
        if *run != self.settings.run && !matches!(header, Header::Hello { .. }) {
            return self.reject(&mut state, peer, &format!("run {run} is not this run"));
        }
        let reply = match header {
            Header::Hello { run, config } => {
                let mut differences = config_differences(&config, &self.settings.config);
                if differences.is_empty() && run != self.settings.run {
                    differences.push(format!("run id {run}, the run's {}", self.settings.run));
                }
                if differences.is_empty() {
                    Reply::Ok
                } else {
                    self.reject(&mut state, peer, &differences.join("; "))
                }
            }
            Header::Ready { round, .. } => {
                if round + 1 < state.round {
                    self.reject(&mut state, peer, &format!("round {round} is over"))
                } else {
                    state.ready.entry(round).or_default().insert(peer);
                    if state.led.contains(&round) {
                        state.announce.push((peer, round));
                    }
                    Reply::Ok
                }
            }
            Header::Group { round, members, .. } => {
                match members
                    .iter()
                    .map(|m| m.parse())
                    .collect::<Result<Vec<PeerId>, _>>()
                {
                    Err(_) => self.reject(&mut state, peer, "unparsable member id"),
                    Ok(members) => {
                        state.groups.entry(round).or_insert(members);
                        Reply::Ok
                    }
                }
            }
            Header::Shard {
                round,
                shard,
                stage,
                contributors,
                ..
            } => self.on_shard(&mut state, peer, round, shard, stage, contributors, frame),
        };
        if matches!(reply, Reply::Ok) {
            state.last_seen.insert(peer, Instant::now());
            state.gone.remove(&peer);
        }
        drop(state);
        self.changed.notify_waiters();
        reply
    }

    #[allow(clippy::too_many_arguments)]
    fn on_shard(
        &self,
        state: &mut State,
        peer: PeerId,
        round: u64,
        shard: u32,
        stage: Stage,
        contributors: Vec<String>,
        frame: &[u8],
    ) -> Reply {
        if round + 1 < state.round {
            return self.reject(state, peer, &format!("round {round} is over (replay?)"));
        }
        if let Some(members) = state.groups.get(&round)
            && !members.contains(&peer)
        {
            return self.reject(state, peer, &format!("not a member of round {round}"));
        }
        let Ok(contributors) = contributors
            .iter()
            .map(|c| c.parse())
            .collect::<Result<Vec<PeerId>, _>>()
        else {
            return self.reject(state, peer, "unparsable contributor id");
        };
        let arrivals = state.shards.entry((round, stage, shard)).or_default();
        if arrivals.contains_key(&peer) {
            return self.reject(
                state,
                peer,
                &format!("{stage:?} for shard {shard} of round {round} already received"),
            );
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
}

/// A JSON value for people: numbers that are f32 values print as such (0.7, not
/// 0.699999988079071).
fn show(v: &serde_json::Value) -> String {
    match v.as_f64() {
        Some(x) if v.is_f64() && f64::from(x as f32) == x => format!("{}", x as f32),
        _ => v.to_string(),
    }
}

/// Fault injection for the crash tests: with `SINTER_FAULT_ABORT_IN_ROUND=R`, the process
/// aborts (as `kill -9` would stop it) in round R right after sending its contributions,
/// in the middle of the all-reduce, before it has sent the shard it owns.
fn crash_point(round: u64) {
    if std::env::var("SINTER_FAULT_ABORT_IN_ROUND").is_ok_and(|r| r == round.to_string()) {
        tracing::error!(
            round,
            "SINTER_FAULT_ABORT_IN_ROUND: aborting in the all-reduce"
        );
        std::process::abort();
    }
}

/// Dotted paths where a joiner's JSON config differs from the run's, with both values.
pub fn config_differences(yours: &serde_json::Value, run: &serde_json::Value) -> Vec<String> {
    fn walk(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    let null = serde_json::Value::Null;
                    walk(
                        &p,
                        x.get(k).unwrap_or(&null),
                        y.get(k).unwrap_or(&null),
                        out,
                    );
                }
            }
            _ if a != b => out.push(format!("{path}: yours {}, the run's {}", show(a), show(b))),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", yours, run, &mut out);
    out
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
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        });
        let inbox = shared.clone();
        let responder = client.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match event {
                    NetEvent::Request { peer, data, reply } => {
                        let answer = inbox.on_request(peer, &data);
                        let bytes = serde_json::to_vec(&answer).expect("replies serialise");
                        if responder.respond(reply, bytes).await.is_err() {
                            return;
                        }
                        let announce = std::mem::take(&mut inbox.lock().announce);
                        for (to, round) in announce {
                            let group = Group {
                                shared: inbox.clone(),
                                client: responder.clone(),
                            };
                            tokio::spawn(async move { group.announce(to, round).await });
                        }
                    }
                    NetEvent::Gossip { peer, data } => {
                        if let Ok(beat) = serde_json::from_slice::<Heartbeat>(&data)
                            && beat.run == inbox.settings.run
                        {
                            let dial = {
                                let mut state = inbox.lock();
                                state.last_seen.insert(peer, Instant::now());
                                state.gone.remove(&peer);
                                let due = state
                                    .dialled
                                    .get(&peer)
                                    .is_none_or(|t| t.elapsed() > Duration::from_secs(5));
                                let dial = !state.connected.contains(&peer) && due;
                                if dial {
                                    state.dialled.insert(peer, Instant::now());
                                }
                                dial
                            };
                            // Gossip reached us through another peer: connect directly, since
                            // the all-reduce talks to every member.
                            if dial {
                                for addr in beat
                                    .addrs
                                    .iter()
                                    .filter_map(|a| a.parse::<libp2p::Multiaddr>().ok())
                                {
                                    // Known to the swarm, a request to the peer can dial too.
                                    let _ = responder.add_address(peer, addr.clone()).await;
                                    let client = responder.clone();
                                    tokio::spawn(async move {
                                        if let Err(e) = client.dial(addr).await {
                                            tracing::debug!(%peer, error = %e, "dial failed");
                                        }
                                    });
                                }
                            }
                        }
                        inbox.changed.notify_waiters();
                    }
                    NetEvent::Connected(peer) => {
                        inbox.lock().connected.insert(peer);
                    }
                    NetEvent::Disconnected(peer) => {
                        let mut state = inbox.lock();
                        state.connected.remove(&peer);
                        state.gone.insert(peer);
                        drop(state);
                        inbox.changed.notify_waiters();
                    }
                }
            }
        });
        let beats = shared.clone();
        let publisher = client.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(beats.settings.heartbeat);
            loop {
                tick.tick().await;
                let Ok(addrs) = publisher.listen_addrs().await else {
                    return;
                };
                let beat = Heartbeat {
                    run: beats.settings.run.clone(),
                    round: beats.lock().round,
                    addrs: addrs.iter().map(|a| a.to_string()).collect(),
                };
                let data = serde_json::to_vec(&beat).expect("heartbeats serialise");
                if publisher.publish(data).await.is_err() {
                    return;
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

    async fn ask(&self, peer: PeerId, header: &Header, frame: &[u8]) -> Result<u64, GroupError> {
        let request = encode_request(header, frame);
        let bytes = request.len() as u64;
        let answer = self.client.request(peer, request).await?;
        match serde_json::from_slice::<Reply>(&answer) {
            Ok(Reply::Ok) => Ok(bytes),
            Ok(Reply::Refused(reason)) => Err(GroupError::Refused { peer, reason }),
            Err(e) => Err(GroupError::Refused {
                peer,
                reason: format!("unreadable reply: {e}"),
            }),
        }
    }

    /// Introduces this peer to `peer`: fails with the differing fields if its config differs.
    pub async fn hello(&self, peer: PeerId) -> Result<(), GroupError> {
        let header = Header::Hello {
            run: self.shared.settings.run.clone(),
            config: self.shared.settings.config.clone(),
        };
        match self.ask(peer, &header, &[]).await {
            Ok(_) => {
                self.shared.lock().last_seen.insert(peer, Instant::now());
                Ok(())
            }
            Err(GroupError::Refused { peer, reason }) => Err(GroupError::ConfigMismatch {
                peer,
                differences: reason,
            }),
            Err(e) => Err(e),
        }
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

    /// Waits until at least `count` peers (this one included) are live, for at most `limit`.
    /// Returns how many are.
    pub async fn wait_for_peers(&self, count: usize, limit: Duration) -> usize {
        self.wait_for(limit, |shared, state| {
            let n = shared.live(state).len();
            (n >= count).then_some(n)
        })
        .await
        .unwrap_or_else(|| self.live_peers().len())
    }

    /// Agrees with the other live peers on the members of `round`, sorted by peer id.
    pub async fn form(&self, round: u64) -> Result<Vec<PeerId>, GroupError> {
        let me = self.me();
        let ceiling = self.shared.settings.round_ceiling;
        self.shared.lock().round = round;
        let waited = Instant::now();
        loop {
            let leader = *self
                .shared
                .live(&self.shared.lock())
                .first()
                .expect("this peer is always live");
            if leader == me {
                self.shared
                    .lock()
                    .ready
                    .entry(round)
                    .or_default()
                    .insert(me);
                // Wait for every live peer; one that dies meanwhile stops counting.
                self.wait_for(ceiling, |shared, state| {
                    let ready = state.ready.get(&round).cloned().unwrap_or_default();
                    shared.live(state).is_subset(&ready).then_some(())
                })
                .await;
                let members = {
                    let mut state = self.shared.lock();
                    let ready = state.ready.get(&round).cloned().unwrap_or_default();
                    let members: Vec<PeerId> = ready
                        .into_iter()
                        .filter(|p| self.shared.is_live(&state, p))
                        .collect();
                    state.led.insert(round);
                    state.groups.entry(round).or_insert(members).clone()
                };
                let sends = members
                    .iter()
                    .filter(|m| **m != me)
                    .map(|m| self.announce(*m, round));
                futures::future::join_all(sends).await;
                return Ok(members);
            }
            let header = Header::Ready {
                run: self.shared.settings.run.clone(),
                round,
            };
            if let Err(e) = self.ask(leader, &header, &[]).await {
                // Perhaps not connected yet; the leader is replaced only once its
                // heartbeats stop, so that every peer agrees on who leads.
                tracing::debug!(%leader, error = %e, round, "leader not reachable; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
            // Ask again now and then: a lost announcement is resent on a repeated Ready.
            let group = self
                .wait_for(ceiling.min(READY_REPEAT), |shared, state| {
                    if let Some(members) = state.groups.get(&round) {
                        return Some(Some(members.clone()));
                    }
                    // A leader that stops answering heartbeats is replaced.
                    (!shared.is_live(state, &leader)).then_some(None)
                })
                .await;
            match group {
                Some(Some(members)) if members.contains(&me) => return Ok(members),
                Some(Some(_)) => return Err(GroupError::NotInGroup { round }),
                Some(None) => {
                    tracing::warn!(%leader, round, "leader went silent; electing the next");
                    self.shared.lock().gone.insert(leader);
                }
                None if waited.elapsed() < ceiling => {}
                None => {
                    return Err(GroupError::Deadline {
                        round,
                        what: format!("the group announcement from {leader}"),
                        secs: ceiling.as_secs(),
                    });
                }
            }
        }
    }

    /// The all-reduce of one round among `members` (as [`Group::form`] returned them).
    /// `parts[k]` is this peer's encoded part of shard `k` (one per member); `reduce(k, parts)`
    /// combines the contributions to a shard `k` this peer owns, given in member order.
    pub async fn all_reduce(
        &self,
        round: u64,
        members: &[PeerId],
        parts: Vec<Vec<u8>>,
        reduce: &(dyn Fn(usize, &[Arrival]) -> Reduction + Sync),
    ) -> Result<AllReduced, GroupError> {
        assert_eq!(parts.len(), members.len(), "one part per member");
        let me = self.me();
        let ceiling = self.shared.settings.round_ceiling;
        let received_before = self.shared.lock().bytes_received;
        let mut bytes_sent = 0u64;
        let n = members.len();
        // Owner of shard k: member k, or the next live member after it in the ring.
        let owner = |state: &State, k: usize| -> PeerId {
            (0..n)
                .map(|i| members[(k + i) % n])
                .find(|m| self.shared.is_live(state, m))
                .unwrap_or(me)
        };
        let mut sent_to: Vec<Option<PeerId>> = vec![None; n];
        let mut reduced_by_me: BTreeSet<usize> = BTreeSet::new();
        loop {
            // Send (or resend, after an owner died) each part to its shard's current owner.
            let owners: Vec<PeerId> = {
                let state = self.shared.lock();
                (0..n).map(|k| owner(&state, k)).collect()
            };
            let mut sends = Vec::new();
            for k in 0..n {
                if sent_to[k] == Some(owners[k]) || self.has_reduced(round, k) {
                    continue;
                }
                sent_to[k] = Some(owners[k]);
                let arrival = Arrival {
                    from: me,
                    frame: parts[k].clone(),
                    contributors: vec![me],
                };
                if owners[k] == me {
                    self.store(round, Stage::Contribution, k, arrival);
                } else {
                    let header = Header::Shard {
                        run: self.shared.settings.run.clone(),
                        round,
                        shard: k as u32,
                        stage: Stage::Contribution,
                        contributors: Vec::new(),
                    };
                    let target = owners[k];
                    let frame = &parts[k];
                    sends.push(async move { (target, self.deliver(target, &header, frame).await) });
                }
            }
            for (target, result) in futures::future::join_all(sends).await {
                match result {
                    Ok(bytes) => bytes_sent += bytes,
                    Err(e) => {
                        tracing::warn!(%target, error = %e, round, "contribution not delivered")
                    }
                }
            }
            crash_point(round);
            // Reduce every shard this peer now owns, once all live members' parts are in.
            let mine: Vec<usize> = (0..n)
                .filter(|&k| owners[k] == me && !reduced_by_me.contains(&k))
                .collect();
            for k in mine {
                let arrivals = self
                    .wait_for(ceiling, |shared, state| {
                        let got = state.shards.get(&(round, Stage::Contribution, k as u32));
                        let complete = members.iter().all(|m| {
                            got.is_some_and(|g| g.contains_key(m)) || !shared.is_live(state, m)
                        });
                        complete.then(|| got.map(|g| g.values().cloned().collect::<Vec<_>>()))
                    })
                    .await
                    .flatten()
                    .unwrap_or_default();
                let mut ordered: Vec<Arrival> = Vec::with_capacity(arrivals.len());
                for m in members {
                    if let Some(a) = arrivals.iter().find(|a| a.from == *m) {
                        ordered.push(a.clone());
                    }
                }
                let reduction = reduce(k, &ordered);
                {
                    let mut state = self.shared.lock();
                    for (peer, reason) in &reduction.rejected {
                        tracing::warn!(%peer, reason, round, shard = k, "contribution rejected");
                        *state.rejected.entry(*peer).or_default() += 1;
                    }
                }
                reduced_by_me.insert(k);
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
                    .map(|m| self.deliver(*m, &header, &reduction.frame));
                for result in futures::future::join_all(sends).await {
                    match result {
                        Ok(bytes) => bytes_sent += bytes,
                        Err(e) => {
                            tracing::warn!(error = %e, round, shard = k, "reduced shard not delivered")
                        }
                    }
                }
            }
            // Wait for every shard; stop waiting for one whose owner has died.
            let progress = self
                .wait_for(ceiling, |_, state| {
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
                            return Some(false); // an owner died: resend and retry
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
        let shards = (0..n)
            .map(|k| {
                let got = &state.shards[&(round, Stage::Reduced, k as u32)];
                got.values().next().expect("checked above").clone()
            })
            .collect();
        state.shards.retain(|(r, _, _), _| *r > round);
        state.ready.retain(|r, _| *r > round);
        state.groups.retain(|r, _| *r + 1 >= round);
        let bytes_received = state.bytes_received - received_before;
        Ok(AllReduced {
            shards,
            bytes_sent,
            bytes_received,
        })
    }

    /// Sends a request, retrying while `to` is live (a peer heard of by gossip may not be
    /// connected yet), at most 20 times.
    async fn deliver(&self, to: PeerId, header: &Header, frame: &[u8]) -> Result<u64, GroupError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.ask(to, header, frame).await {
                Ok(bytes) => return Ok(bytes),
                Err(GroupError::Net(e)) if attempt < 20 => {
                    let live = {
                        let state = self.shared.lock();
                        self.shared.is_live(&state, &to)
                    };
                    if !live {
                        return Err(GroupError::Net(e));
                    }
                    tracing::debug!(peer = %to, error = %e, attempt, "request failed; retrying");
                    tokio::time::sleep(RETRY).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends round `round`'s group to `to`, retrying a few times (a member that never hears
    /// it asks again with a repeated `Ready`).
    async fn announce(&self, to: PeerId, round: u64) {
        let Some(members) = self.shared.lock().groups.get(&round).cloned() else {
            return;
        };
        let header = Header::Group {
            run: self.shared.settings.run.clone(),
            round,
            members: members.iter().map(|m| m.to_string()).collect(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_and_malformed_headers() {
        let header = Header::Ready {
            run: "abc".into(),
            round: 3,
        };
        let bytes = encode_request(&header, b"frame");
        let (back, frame) = decode_request(&bytes).unwrap();
        assert!(matches!(back, Header::Ready { round: 3, .. }));
        assert_eq!(frame, b"frame");
        assert!(decode_request(&[1, 0]).unwrap_err().contains("shorter"));
        assert!(
            decode_request(&[255, 255, 255, 255])
                .unwrap_err()
                .contains("exceeds")
        );
        assert!(
            decode_request(&[3, 0, 0, 0, b'{', b'x', b'}'])
                .unwrap_err()
                .contains("malformed")
        );
    }

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    fn shared() -> Shared {
        Shared {
            me: peer(),
            settings: GroupSettings {
                run: "run-a".into(),
                config: serde_json::json!({}),
                heartbeat: Duration::from_millis(500),
                peer_timeout: Duration::from_secs(5),
                round_ceiling: Duration::from_secs(60),
            },
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        }
    }

    fn shard(run: &str, round: u64) -> Vec<u8> {
        let header = Header::Shard {
            run: run.into(),
            round,
            shard: 0,
            stage: Stage::Contribution,
            contributors: Vec::new(),
        };
        encode_request(&header, b"frame")
    }

    fn refused(reply: Reply) -> String {
        match reply {
            Reply::Refused(reason) => reason,
            Reply::Ok => panic!("accepted"),
        }
    }

    #[test]
    fn untrusted_requests_are_refused_with_a_reason_and_counted() {
        let group = shared();
        let (member, outsider) = (peer(), peer());
        group.lock().groups.insert(3, vec![group.me, member]);
        group.lock().round = 3;
        assert!(matches!(
            group.on_request(member, &shard("run-a", 3)),
            Reply::Ok
        ));
        // Same shard again: a replay.
        assert!(refused(group.on_request(member, &shard("run-a", 3))).contains("already received"));
        assert!(refused(group.on_request(outsider, &shard("run-a", 3))).contains("not a member"));
        assert!(refused(group.on_request(member, &shard("run-b", 3))).contains("not this run"));
        assert!(refused(group.on_request(member, &shard("run-a", 1))).contains("is over"));
        assert!(refused(group.on_request(member, b"\x01\x00")).contains("shorter"));
        let counts = group.lock().rejected.clone();
        assert_eq!(counts[&member], 4);
        assert_eq!(counts[&outsider], 1);
        // Only the accepted contribution was stored, and only accepted requests mark liveness.
        assert_eq!(group.lock().shards[&(3, Stage::Contribution, 0)].len(), 1);
        assert!(!group.lock().last_seen.contains_key(&outsider));
    }

    #[test]
    fn config_differences_name_the_fields() {
        let yours =
            serde_json::json!({"inner": {"lr": f64::from(0.7f32), "steps": 600}, "seed": 0});
        let run = serde_json::json!({"inner": {"lr": 0.003, "steps": 600}, "seed": 0, "x": 1});
        assert_eq!(
            config_differences(&yours, &run),
            vec![
                "inner.lr: yours 0.7, the run's 0.003",
                "x: yours null, the run's 1"
            ]
        );
        assert!(config_differences(&yours, &yours).is_empty());
    }
}
