//! A run's group of peers and its all-reduce.
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
//! reason and counted per peer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};

use crate::net::{Client, NetError, NetEvent};
use crate::transfer::{self, Manifest, chunk_size_for};

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
    /// Ready for `round`, holding the state whose hash is `state` (none: joining, will fetch).
    Ready {
        run: String,
        round: u64,
        state: Option<String>,
        addrs: Vec<String>,
    },
    /// A round's members with their state hashes and addresses, from its leader.
    Group {
        run: String,
        round: u64,
        members: Vec<String>,
        states: Vec<Option<String>>,
        addrs: Vec<Vec<String>>,
    },
    Leave {
        run: String,
    },
    /// Asks for the group's status; answered to anyone (it is what `launch status` shows).
    Status,
    StateManifest {
        run: String,
        round: u64,
    },
    StateChunk {
        run: String,
        round: u64,
        index: u32,
    },
    /// Asks for the manifest of a served blob (a checkpoint): the one with `root`, or the
    /// newest.
    BlobManifest {
        run: String,
        root: Option<String>,
    },
    BlobChunk {
        run: String,
        root: String,
        index: u32,
    },
    Shard {
        run: String,
        round: u64,
        shard: u32,
        stage: Stage,
        contributors: Vec<String>,
    },
    /// Asks for the manifest of this peer's own contribution (all its shards) to `round`.
    ContributionManifest {
        run: String,
        round: u64,
    },
    ContributionChunk {
        run: String,
        round: u64,
        index: u32,
    },
    /// A request of the protocol extending the group (the ledger); the frame is its body.
    Extension {
        run: String,
    },
}

#[derive(Debug, PartialEq)]
enum Reply {
    Ok,
    Refused(String),
    Data(Vec<u8>),
}

impl Reply {
    /// One tag byte, then the reason (UTF-8) or the data.
    fn encode(self) -> Vec<u8> {
        let (tag, body) = match self {
            Reply::Ok => (0, Vec::new()),
            Reply::Refused(reason) => (1, reason.into_bytes()),
            Reply::Data(data) => (2, data),
        };
        let mut out = Vec::with_capacity(1 + body.len());
        out.push(tag);
        out.extend_from_slice(&body);
        out
    }

    fn decode(mut bytes: Vec<u8>) -> Result<Self, String> {
        match bytes.first() {
            Some(0) => Ok(Reply::Ok),
            Some(1) => Ok(Reply::Refused(String::from_utf8_lossy(&bytes[1..]).into())),
            Some(2) => {
                bytes.remove(0);
                Ok(Reply::Data(bytes))
            }
            _ => Err("unreadable reply".into()),
        }
    }

    fn json(value: &impl Serialize) -> Self {
        Reply::Data(serde_json::to_vec(value).expect("replies serialise"))
    }
}

/// A peer's progress, gossiped with its heartbeats and shown by `launch status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerStats {
    /// The outer round it is in.
    pub round: u64,
    /// Inner steps done, per worker.
    pub step: u64,
    /// The last validation loss it measured.
    pub val_loss: Option<f64>,
    /// Bytes it sent in all-reduces.
    pub bytes_sent: u64,
    /// Bytes it received.
    pub bytes_received: u64,
    /// Seconds its last round took (inner steps and all-reduce).
    pub last_round_secs: f64,
    /// Its incentive (share of the miners' emission, 0–1) at the last epoch of its ledger
    /// replica; none without a ledger.
    #[serde(default)]
    pub incentive: Option<f64>,
    /// Emission credited to it so far on its ledger replica.
    #[serde(default)]
    pub emission: Option<u64>,
}

/// What a peer answers to `launch status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupStatus {
    /// The run's id.
    pub run: String,
    /// The answering peer.
    pub peer: String,
    /// The members of the newest group it knows.
    pub members: Vec<String>,
    /// Each live peer's last reported progress, the answering one included.
    pub peers: BTreeMap<String, PeerStats>,
    /// Requests refused, per peer.
    pub rejected: BTreeMap<String, u64>,
}

/// What a peer says about the run when a newcomer introduces itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RunProgress {
    /// The round it is in.
    pub round: u64,
    /// Whether a group has formed already (a newcomer must then join, fetching the state).
    pub under_way: bool,
}

/// The answer to a `Hello`: where the run is, and who is in it where.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Welcome {
    progress: RunProgress,
    /// Live peers (the answering one included) and their addresses.
    peers: BTreeMap<String, Vec<String>>,
}

/// What every peer gossips periodically: enough for others to see it is alive and, if they
/// have no connection to it yet, to dial it.
#[derive(Debug, Serialize, Deserialize)]
struct Heartbeat {
    run: String,
    addrs: Vec<String>,
    stats: PeerStats,
    under_way: bool,
}

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

/// The state this peer offers to joiners: the run's state at the start of `round`.
struct Offer {
    round: u64,
    blob: Arc<Vec<u8>>,
    manifest: std::sync::OnceLock<Manifest>,
}

impl Offer {
    fn new(round: u64, blob: Vec<u8>) -> Arc<Self> {
        Arc::new(Self {
            round,
            blob: Arc::new(blob),
            manifest: std::sync::OnceLock::new(),
        })
    }

    fn manifest(&self) -> &Manifest {
        self.manifest
            .get_or_init(|| Manifest::of(&self.blob, chunk_size_for(self.blob.len())))
    }
}

/// Answers for an offered blob of `round` (`what`: the state, a contribution): its manifest,
/// or chunk `index`.
fn serve_offer(offer: Option<&Arc<Offer>>, round: u64, index: Option<u32>, what: &str) -> Reply {
    match offer {
        Some(offer) if offer.round == round => {
            let manifest = offer.manifest();
            match index {
                None => Reply::json(manifest),
                Some(i) if (i as usize) < manifest.chunks.len() => {
                    Reply::Data(offer.blob[manifest.range(i as usize)].to_vec())
                }
                Some(i) => Reply::Refused(format!("no chunk {i} of the {what} of round {round}")),
            }
        }
        other => Reply::Refused(format!(
            "no {what} for round {round} here (offering {})",
            other.map_or("none".into(), |o| format!("round {}", o.round))
        )),
    }
}

/// Rounds of this peer's own contributions kept for validators.
const CONTRIBUTIONS_KEPT: usize = 4;

/// The first byte of an extension's gossip (heartbeats are JSON, so `{`).
const EXTENSION_GOSSIP: u8 = 0;

/// A protocol riding on a run's connections and gossip (the ledger): requests sent with
/// [`Group::ask_extension`] and gossip sent with [`Group::publish_extension`] arrive here.
pub trait Extension: Send + Sync {
    /// Answers a request: the data, or the reason it is refused.
    fn request(&self, peer: PeerId, data: &[u8]) -> Result<Vec<u8>, String>;
    /// Takes a gossiped message (`peer` relayed it).
    fn gossip(&self, peer: PeerId, data: &[u8]);
}

/// Pause before retrying a request to a peer that is live but not reachable yet.
const RETRY: Duration = Duration::from_millis(300);
/// How often a member waiting for its group repeats its `Ready` (a joiner: every second).
const READY_REPEAT: Duration = Duration::from_secs(5);
/// How long a leaving peer tries to say so.
const LEAVE_NOTICE: Duration = Duration::from_secs(2);

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
    shards: HashMap<ShardKey, BTreeMap<PeerId, Arrival>>,
    round: u64,
    rejected: BTreeMap<PeerId, u64>,
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
    extension: Option<Arc<dyn Extension>>,
    stats: PeerStats,
    peer_stats: BTreeMap<PeerId, PeerStats>,
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
                && !state.left.contains(peer)
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
            Header::Status => None,
            Header::Hello { run, .. }
            | Header::Ready { run, .. }
            | Header::Group { run, .. }
            | Header::Leave { run }
            | Header::StateManifest { run, .. }
            | Header::StateChunk { run, .. }
            | Header::BlobManifest { run, .. }
            | Header::BlobChunk { run, .. }
            | Header::Shard { run, .. }
            | Header::ContributionManifest { run, .. }
            | Header::ContributionChunk { run, .. }
            | Header::Extension { run } => Some(run.clone()),
        };
        // A Hello from another run is answered with the differing fields, below.
        if let Some(run) = &run
            && *run != self.settings.run
            && !matches!(header, Header::Hello { .. })
        {
            return self.reject(&mut state, peer, &format!("run {run} is not this run"));
        }
        if matches!(
            header,
            Header::BlobManifest { .. } | Header::BlobChunk { .. }
        ) {
            // Served from disk: off the group's lock.
            let source = state.blobs.clone();
            drop(state);
            return serve_blob(source.as_deref(), header);
        }
        if matches!(header, Header::Extension { .. }) {
            let extension = state.extension.clone();
            drop(state);
            return match extension {
                Some(extension) => match extension.request(peer, frame) {
                    Ok(data) => Reply::Data(data),
                    Err(reason) => Reply::Refused(reason),
                },
                None => Reply::Refused("this peer runs no extension protocol".into()),
            };
        }
        let reply = match header {
            Header::BlobManifest { .. } | Header::BlobChunk { .. } => {
                unreachable!("served above")
            }
            Header::Hello { run, config } => {
                let mut differences = config_differences(&config, &self.settings.config);
                if differences.is_empty() && run != self.settings.run {
                    differences.push(format!("run id {run}, the run's {}", self.settings.run));
                }
                if differences.is_empty() {
                    state.left.remove(&peer);
                    let mut peers: BTreeMap<String, Vec<String>> = self
                        .live(&state)
                        .iter()
                        .filter(|p| **p != peer)
                        .map(|p| {
                            (
                                p.to_string(),
                                state.addrs.get(p).cloned().unwrap_or_default(),
                            )
                        })
                        .collect();
                    peers.insert(self.me.to_string(), state.my_addrs.clone());
                    Reply::json(&Welcome {
                        progress: RunProgress {
                            round: state.round,
                            under_way: state.under_way,
                        },
                        peers,
                    })
                } else {
                    self.reject(&mut state, peer, &differences.join("; "))
                }
            }
            Header::Ready { round, .. } if round + 1 < state.round => {
                self.reject(&mut state, peer, &format!("round {round} is over"))
            }
            Header::Ready {
                round,
                state: None,
                addrs,
                ..
            } => {
                // A newcomer: the leader of this round or any later one takes it in.
                state.joiners.entry(peer).or_insert(round);
                state.addrs.insert(peer, addrs);
                Reply::Ok
            }
            Header::Ready {
                round,
                state: held,
                addrs,
                ..
            } => {
                state.addrs.insert(peer, addrs);
                state.ready.entry(round).or_default().insert(peer, held);
                if state.led.contains(&round) {
                    state.announce.push((peer, round));
                }
                Reply::Ok
            }
            Header::Group {
                round,
                members,
                states,
                addrs,
                ..
            } => {
                match members
                    .iter()
                    .map(|m| m.parse())
                    .collect::<Result<Vec<PeerId>, _>>()
                {
                    Err(_) => self.reject(&mut state, peer, "unparsable member id"),
                    Ok(members) if members.len() != states.len() => {
                        self.reject(&mut state, peer, "one state per member expected")
                    }
                    Ok(members) if !members.contains(&peer) => self.reject(
                        &mut state,
                        peer,
                        "a group is announced by its leader, a member of it",
                    ),
                    Ok(members) => {
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
                        state.groups.entry(round).or_insert(Formed {
                            round,
                            members,
                            states,
                        });
                        Reply::Ok
                    }
                }
            }
            Header::Leave { .. } => {
                tracing::info!(%peer, "peer left the run");
                state.left.insert(peer);
                drop(state);
                self.changed.notify_waiters();
                return Reply::Ok;
            }
            Header::Status => Reply::json(&self.status(&state)),
            Header::StateManifest { round, .. } => {
                serve_offer(state.offer.as_ref(), round, None, "state")
            }
            Header::StateChunk { round, index, .. } => {
                // With `SINTER_FAULT_ABORT_SERVING_STATE=1`, a donor dies in the middle of a transfer.
                fault_point(
                    "SINTER_FAULT_ABORT_SERVING_STATE",
                    "1",
                    "serving a state chunk",
                );
                serve_offer(state.offer.as_ref(), round, Some(index), "state")
            }
            Header::ContributionManifest { round, .. } => {
                serve_offer(state.contributions.get(&round), round, None, "contribution")
            }
            Header::ContributionChunk { round, index, .. } => serve_offer(
                state.contributions.get(&round),
                round,
                Some(index),
                "contribution",
            ),
            Header::Extension { .. } => unreachable!("answered above"),
            Header::Shard {
                round,
                shard,
                stage,
                contributors,
                ..
            } => self.on_shard(&mut state, peer, round, shard, stage, contributors, frame),
        };
        if !matches!(reply, Reply::Refused(_)) && run.is_some() {
            state.last_seen.insert(peer, Instant::now());
            state.gone.remove(&peer);
        }
        drop(state);
        self.changed.notify_waiters();
        reply
    }

    fn status(&self, state: &State) -> GroupStatus {
        let live = self.live(state);
        let mut peers: BTreeMap<String, PeerStats> = state
            .peer_stats
            .iter()
            .filter(|(p, _)| live.contains(p))
            .map(|(p, s)| (p.to_string(), s.clone()))
            .collect();
        peers.insert(self.me.to_string(), state.stats.clone());
        GroupStatus {
            run: self.settings.run.clone(),
            peer: self.me.to_string(),
            members: state
                .groups
                .values()
                .next_back()
                .map(|g| g.members.iter().map(|m| m.to_string()).collect())
                .unwrap_or_default(),
            peers,
            rejected: state
                .rejected
                .iter()
                .map(|(p, c)| (p.to_string(), *c))
                .collect(),
        }
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
        if round + 1 < state.round || state.completed.is_some_and(|c| round <= c) {
            return self.reject(state, peer, &format!("round {round} is over (replay?)"));
        }
        if let Some(group) = state.groups.get(&round)
            && !group.members.contains(&peer)
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

/// Blobs (checkpoints) a peer serves by Merkle root, from disk.
pub trait BlobSource: Send + Sync {
    /// The manifest of the blob with `root`, or of the newest one when `root` is `None`.
    fn manifest(&self, root: Option<&str>) -> Option<Manifest>;
    /// Chunk `index` of the blob with `root`.
    fn chunk(&self, root: &str, index: usize) -> Option<Vec<u8>>;
}

fn serve_blob(source: Option<&dyn BlobSource>, header: Header) -> Reply {
    let Some(source) = source else {
        return Reply::Refused("this peer serves no checkpoints".into());
    };
    match header {
        Header::BlobManifest { root, .. } => match source.manifest(root.as_deref()) {
            Some(manifest) => Reply::json(&manifest),
            None => Reply::Refused(match root {
                Some(root) => format!("no checkpoint with root {root} here"),
                None => "no checkpoint here yet".into(),
            }),
        },
        Header::BlobChunk { root, index, .. } => {
            // With `SINTER_FAULT_ABORT_SERVING_BLOB=1`, a donor dies in the middle of a transfer.
            fault_point(
                "SINTER_FAULT_ABORT_SERVING_BLOB",
                "1",
                "serving a checkpoint chunk",
            );
            match source.chunk(&root, index as usize) {
                Some(data) => Reply::Data(data),
                None => Reply::Refused(format!("no chunk {index} of {root} here")),
            }
        }
        _ => unreachable!("only blob requests come here"),
    }
}

/// Fault injection for the crash tests: when the environment variable `var` equals `value`,
/// the process aborts here, as `kill -9` would stop it.
fn fault_point(var: &str, value: &str, what: &str) {
    if std::env::var(var).is_ok_and(|v| v == value) {
        tracing::error!("{var}={value}: aborting while {what}");
        std::process::abort();
    }
}

/// With `SINTER_FAULT_ABORT_IN_ROUND=R`, the process aborts in round R right after sending
/// its contributions, in the middle of the all-reduce, before it has sent the shard it owns.
fn crash_point(round: u64) {
    fault_point(
        "SINTER_FAULT_ABORT_IN_ROUND",
        &round.to_string(),
        "in the all-reduce",
    );
}

/// Asks `peer` for its view of the run's group (what `launch status` shows); any peer may ask.
pub async fn query_status(client: &Client, peer: PeerId) -> Result<GroupStatus, GroupError> {
    let answer = client
        .request(peer, encode_request(&Header::Status, &[]))
        .await?;
    let refused = |reason: String| GroupError::Refused { peer, reason };
    match Reply::decode(answer).map_err(refused)? {
        Reply::Data(data) => {
            serde_json::from_slice(&data).map_err(|e| refused(format!("unreadable status: {e}")))
        }
        Reply::Refused(reason) => Err(refused(reason)),
        Reply::Ok => Err(refused("an empty answer to a status request".into())),
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
                        let (announce, introduce) = {
                            let mut state = inbox.lock();
                            (
                                std::mem::take(&mut state.announce),
                                std::mem::take(&mut state.introduce),
                            )
                        };
                        for (to, round) in announce {
                            let group = group();
                            tokio::spawn(async move { group.announce(to, round).await });
                        }
                        for peer in introduce {
                            group().connect(peer).await;
                        }
                    }
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
                                // Gossip relays old heartbeats: one from a peer whose last
                                // connection closed proves nothing until it is reconnected.
                                if !state.gone.contains(&peer) || state.connected.contains(&peer) {
                                    state.last_seen.insert(peer, Instant::now());
                                    state.gone.remove(&peer);
                                }
                                state.under_way |= beat.under_way;
                                state.newest_round = state.newest_round.max(beat.stats.round);
                                state.peer_stats.insert(peer, beat.stats);
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
                        inbox.reject(&mut state, peer, &reason);
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
                let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                beats.lock().my_addrs = addrs.clone();
                let beat = {
                    let state = beats.lock();
                    Heartbeat {
                        run: beats.settings.run.clone(),
                        addrs,
                        stats: state.stats.clone(),
                        under_way: state.under_way,
                    }
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

    /// Sends a request; returns the bytes sent and the data answered (empty for a plain Ok).
    async fn ask(
        &self,
        peer: PeerId,
        header: &Header,
        frame: &[u8],
    ) -> Result<(u64, Vec<u8>), GroupError> {
        let request = encode_request(header, frame);
        let bytes = request.len() as u64;
        let answer = self.client.request(peer, request).await?;
        self.shared.lock().bytes_received += answer.len() as u64;
        match Reply::decode(answer) {
            Ok(Reply::Ok) => Ok((bytes, Vec::new())),
            Ok(Reply::Data(data)) => Ok((bytes, data)),
            Ok(Reply::Refused(reason)) => Err(GroupError::Refused { peer, reason }),
            Err(reason) => Err(GroupError::Refused { peer, reason }),
        }
    }

    /// Introduces this peer to `peer`: fails with the differing fields if its config differs.
    /// Returns where the run is, as `peer` sees it.
    pub async fn hello(&self, peer: PeerId) -> Result<RunProgress, GroupError> {
        let header = Header::Hello {
            run: self.shared.settings.run.clone(),
            config: self.shared.settings.config.clone(),
        };
        match self.ask(peer, &header, &[]).await {
            Ok((_, data)) => {
                let welcome: Welcome =
                    serde_json::from_slice(&data).map_err(|e| GroupError::Refused {
                        peer,
                        reason: format!("unreadable answer to hello: {e}"),
                    })?;
                let others: Vec<PeerId> = {
                    let mut state = self.shared.lock();
                    state.last_seen.insert(peer, Instant::now());
                    state.under_way |= welcome.progress.under_way;
                    state.newest_round = state.newest_round.max(welcome.progress.round);
                    let mut others = Vec::new();
                    for (p, addrs) in welcome.peers {
                        if let Ok(p) = p.parse::<PeerId>()
                            && p != self.me()
                        {
                            // Live as the bootstrap peer sees them: connect to them all now,
                            // before any heartbeat of theirs arrives.
                            state.last_seen.entry(p).or_insert_with(Instant::now);
                            if !addrs.is_empty() {
                                state.addrs.insert(p, addrs);
                            }
                            others.push(p);
                        }
                    }
                    others
                };
                for p in others {
                    self.connect(p).await;
                }
                Ok(welcome.progress)
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

    /// The leader of `round`: the lowest live peer id among the last round's members (at the
    /// first round, or when none of them is left, among all live peers).
    fn leader(&self, state: &State, round: u64) -> PeerId {
        let live = self.shared.live(state);
        round
            .checked_sub(1)
            .and_then(|r| state.groups.get(&r))
            .and_then(|g| g.members.iter().filter(|m| live.contains(m)).min())
            .copied()
            .unwrap_or_else(|| *live.first().expect("this peer is always live"))
    }

    /// Agrees with the other peers on the members of `round`. `state` is the hash of this
    /// peer's state at the start of the round; `None` for a peer joining, which never leads,
    /// is taken into the first group formed from `round` on (whose round the result says),
    /// and fetches the agreed state then ([`Group::fetch_state`]).
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
                (self.leader(&s, round), self.shared.live(&s))
            };
            if !joining && leader == me {
                return self.lead(round).await;
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
                for (peer, result) in futures::future::join_all(sends).await {
                    match result {
                        Ok(_) => leader_heard |= peer == leader,
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
                            .map(|(_, g)| Some(g.clone()));
                    }
                    if let Some(group) = state.groups.get(&round) {
                        return Some(Some(group.clone()));
                    }
                    // A leader that stops answering heartbeats is replaced.
                    (!joining && !shared.is_live(state, &leader)).then_some(None)
                })
                .await;
            match group {
                Some(Some(group)) if group.members.contains(&me) => return Ok(group),
                Some(Some(_)) => return Err(GroupError::NotInGroup { round }),
                Some(None) => {
                    tracing::warn!(%leader, round, "leader went silent; electing the next");
                    self.shared.lock().gone.insert(leader);
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

    /// As leader: waits until the last round's live members are ready (at the first round,
    /// every live peer), then announces everyone ready and live, newcomers included.
    async fn lead(&self, round: u64) -> Result<Formed, GroupError> {
        let me = self.me();
        self.wait_for(self.shared.settings.round_ceiling, |shared, state| {
            let live = shared.live(state);
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
                .then_some(())
        })
        .await;
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
        Ok(formed)
    }

    /// Offers the run's state at the start of `round` to peers that fetch it (replacing the
    /// previous offer).
    pub fn offer_state(&self, round: u64, blob: Vec<u8>) {
        self.shared.lock().offer = Some(Offer::new(round, blob));
    }

    /// Offers this peer's own contribution to `round` to validators (the last few rounds are
    /// kept).
    pub fn offer_contribution(&self, round: u64, blob: Vec<u8>) {
        let mut state = self.shared.lock();
        state.contributions.insert(round, Offer::new(round, blob));
        while state.contributions.len() > CONTRIBUTIONS_KEPT {
            state.contributions.pop_first();
        }
    }

    /// Fetches `peer`'s own contribution to `round`, chunk by chunk, each chunk verified.
    pub async fn fetch_contribution(
        &self,
        round: u64,
        peer: PeerId,
    ) -> Result<Vec<u8>, GroupError> {
        let run = &self.shared.settings.run;
        let (_, blob, _) = self
            .fetch(
                &[peer],
                &format!("{peer}'s contribution to round {round}"),
                Header::ContributionManifest {
                    run: run.clone(),
                    round,
                },
                |_, index| Header::ContributionChunk {
                    run: run.clone(),
                    round,
                    index,
                },
            )
            .await?;
        Ok(blob)
    }

    /// Serves `extension`'s requests and gossip on this group's connections.
    pub fn extend(&self, extension: Arc<dyn Extension>) {
        self.shared.lock().extension = Some(extension);
    }

    /// Sends `data` to `peer`'s extension; returns its answer.
    pub async fn ask_extension(&self, peer: PeerId, data: &[u8]) -> Result<Vec<u8>, GroupError> {
        let header = Header::Extension {
            run: self.shared.settings.run.clone(),
        };
        self.ask(peer, &header, data)
            .await
            .map(|(_, answer)| answer)
    }

    /// Gossips `data` to the extensions of the run's peers.
    pub async fn publish_extension(&self, data: &[u8]) -> Result<(), GroupError> {
        let mut message = Vec::with_capacity(1 + data.len());
        message.push(EXTENSION_GOSSIP);
        message.extend_from_slice(data);
        Ok(self.client.publish(message).await?)
    }

    /// Serves blobs (checkpoints) from `source` to peers that ask.
    pub fn serve_blobs(&self, source: Arc<dyn BlobSource>) {
        self.shared.lock().blobs = Some(source);
    }

    /// Fetches the state of `round` from `donors`: each is asked for its manifest, the one most
    /// agree on is fetched in chunks from all of them at once, each chunk verified. Returns
    /// the blob and how many chunks each donor delivered.
    pub async fn fetch_state(
        &self,
        round: u64,
        donors: &[PeerId],
    ) -> Result<(Vec<u8>, BTreeMap<PeerId, usize>), GroupError> {
        let run = &self.shared.settings.run;
        let (_, blob, delivered) = self
            .fetch(
                donors,
                &format!("the state of round {round}"),
                Header::StateManifest {
                    run: run.clone(),
                    round,
                },
                |_, index| Header::StateChunk {
                    run: run.clone(),
                    round,
                    index,
                },
            )
            .await?;
        Ok((blob, delivered))
    }

    /// Fetches a served blob (a checkpoint) from `donors` the same way: the one with `root`,
    /// or the newest most donors agree on. Returns its manifest, bytes and who delivered what.
    pub async fn fetch_blob(
        &self,
        donors: &[PeerId],
        root: Option<String>,
    ) -> Result<(Manifest, Vec<u8>, BTreeMap<PeerId, usize>), GroupError> {
        let run = &self.shared.settings.run;
        let what = root
            .as_ref()
            .map_or("a checkpoint".to_owned(), |r| format!("checkpoint {r}"));
        self.fetch(
            donors,
            &what,
            Header::BlobManifest {
                run: run.clone(),
                root,
            },
            |root, index| Header::BlobChunk {
                run: run.clone(),
                root: root.to_owned(),
                index,
            },
        )
        .await
    }

    /// Asks every donor for a manifest, takes the one most agree on and fetches its chunks
    /// from all of its holders at once, each verified (`transfer::fetch`).
    async fn fetch(
        &self,
        donors: &[PeerId],
        what: &str,
        ask_manifest: Header,
        ask_chunk: impl Fn(&str, u32) -> Header,
    ) -> Result<(Manifest, Vec<u8>, BTreeMap<PeerId, usize>), GroupError> {
        let asks = donors.iter().map(|d| {
            let header = &ask_manifest;
            async move {
                let manifest = self.ask(*d, header, &[]).await.and_then(|(_, data)| {
                    serde_json::from_slice::<Manifest>(&data).map_err(|e| GroupError::Refused {
                        peer: *d,
                        reason: format!("unreadable manifest: {e}"),
                    })
                });
                (*d, manifest)
            }
        });
        let mut offers = Vec::new();
        let mut last = String::from("no donors");
        for (donor, manifest) in futures::future::join_all(asks).await {
            match manifest {
                Ok(m) => offers.push((donor, m)),
                Err(e) => {
                    tracing::warn!(%donor, error = %e, what, "no manifest from donor");
                    last = e.to_string();
                }
            }
        }
        let (manifest, holders) =
            transfer::agreed_manifest(&offers).ok_or(transfer::TransferError::NoOffer {
                what: what.to_owned(),
                last,
            })?;
        tracing::info!(
            what,
            bytes = manifest.total_len,
            chunks = manifest.chunks.len(),
            donors = holders.len(),
            root = %&manifest.root[..16],
            "fetching"
        );
        let root = manifest.root.clone();
        let get = |peer: PeerId, index: usize| {
            let header = ask_chunk(&root, index as u32);
            async move { self.ask(peer, &header, &[]).await.map(|(_, data)| data) }
        };
        let (blob, delivered) = transfer::fetch(&manifest, &holders, get).await?;
        self.shared.lock().bytes_received += manifest.total_len;
        Ok((manifest, blob, delivered))
    }

    /// Records this peer's progress, gossiped with its heartbeats.
    pub fn report(&self, stats: PeerStats) {
        self.shared.lock().stats = stats;
    }

    /// Where the run is, as far as this peer has heard: the newest round and whether a group
    /// has formed.
    pub fn run_progress(&self) -> RunProgress {
        let state = self.shared.lock();
        RunProgress {
            round: state.newest_round.max(state.round),
            under_way: state.under_way,
        }
    }

    /// This peer's view of the group, as `launch status` shows it.
    pub fn status(&self) -> GroupStatus {
        self.shared.status(&self.shared.lock())
    }

    /// Tells every live peer that this one leaves (for at most a couple of seconds), so that
    /// the next round forms without waiting for it.
    pub async fn leave(&self) {
        let me = self.me();
        let header = Header::Leave {
            run: self.shared.settings.run.clone(),
        };
        let live = self.live_peers();
        let sends = live
            .iter()
            .filter(|p| **p != me)
            .map(|p| self.ask(*p, &header, &[]));
        let _ = tokio::time::timeout(LEAVE_NOTICE, futures::future::join_all(sends)).await;
    }

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
        let bytes_sent = std::sync::atomic::AtomicU64::new(0);
        let count = |result: Result<u64, GroupError>, what: &str, k: usize| match result {
            Ok(bytes) => {
                bytes_sent.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, round, shard = k, "{what} not delivered"),
        };
        // Owner of shard k: member k mod N, or the next live member after it in the ring.
        let owner = |state: &State, k: usize| -> PeerId {
            (0..n)
                .map(|i| members[(k + i) % n])
                .find(|m| self.shared.is_live(state, m))
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
            let (parts, count) = (&parts, &count);
            let forward = async {
                for (k, held) in &forwards {
                    let header = Header::Shard {
                        run: self.shared.settings.run.clone(),
                        round,
                        shard: *k as u32,
                        stage: Stage::Reduced,
                        contributors: held.contributors.iter().map(|c| c.to_string()).collect(),
                    };
                    let sends = members
                        .iter()
                        .filter(|m| **m != me && **m != held.from)
                        .map(|m| self.deliver(*m, &header, &held.frame));
                    for result in futures::future::join_all(sends).await {
                        count(result, "forwarded reduced shard", *k);
                    }
                }
            };
            let send = async {
                let per_owner = queues.iter().map(|(target, ks)| async move {
                    for &k in ks {
                        let header = Header::Shard {
                            run: self.shared.settings.run.clone(),
                            round,
                            shard: k as u32,
                            stage: Stage::Contribution,
                            contributors: Vec::new(),
                        };
                        count(
                            self.deliver(*target, &header, &parts[k]).await,
                            "contribution",
                            k,
                        );
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
                                        || !shared.is_live(state, m)
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
                        count(result, "reduced shard", k);
                    }
                }
            };
            futures::join!(forward, send, reduce_mine);
            reduced_by_me.extend(mine);
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
        let reduced = (0..shards)
            .map(|k| Self::chosen(&state, round, k).expect("checked above"))
            .collect();
        state.completed = Some(round);
        state.all_reduce_times.push_back(started.elapsed());
        if state.all_reduce_times.len() > 5 {
            state.all_reduce_times.pop_front();
        }
        state.shards.retain(|(r, _, _), _| *r > round);
        state.ready.retain(|r, _| *r > round);
        state.groups.retain(|r, _| *r + 1 >= round);
        let bytes_received = state.bytes_received - received_before;
        Ok(AllReduced {
            shards: reduced,
            bytes_sent: bytes_sent.into_inner(),
            bytes_received,
        })
    }

    /// The naive exchange the all-reduce is measured against: this peer sends its whole
    /// `payload` to every other member and waits for theirs ((N−1) payloads each way instead
    /// of about 2(N−1)/N). Returns the members' payloads in member order and the bytes sent.
    pub async fn exchange(
        &self,
        round: u64,
        members: &[PeerId],
        payload: &[u8],
    ) -> Result<(Vec<Vec<u8>>, u64), GroupError> {
        let me = self.me();
        let index = members.iter().position(|m| *m == me).expect("a member");
        let header = Header::Shard {
            run: self.shared.settings.run.clone(),
            round,
            shard: index as u32,
            stage: Stage::Contribution,
            contributors: Vec::new(),
        };
        let sends = members
            .iter()
            .filter(|m| **m != me)
            .map(|m| self.deliver(*m, &header, payload));
        let mut sent = 0;
        for result in futures::future::join_all(sends).await {
            sent += result?;
        }
        let ceiling = self.shared.settings.round_ceiling;
        let got = self
            .wait_for(ceiling, |_, state| {
                members
                    .iter()
                    .enumerate()
                    .map(|(k, m)| match *m == me {
                        true => Some(payload.to_vec()),
                        false => state
                            .shards
                            .get(&(round, Stage::Contribution, k as u32))
                            .and_then(|g| g.get(m))
                            .map(|a| a.frame.clone()),
                    })
                    .collect::<Option<Vec<_>>>()
            })
            .await
            .ok_or(GroupError::Deadline {
                round,
                what: "the members' payloads".into(),
                secs: ceiling.as_secs(),
            })?;
        let mut state = self.shared.lock();
        state.completed = Some(round);
        state.shards.retain(|(r, _, _), _| *r > round);
        Ok((got, sent))
    }

    /// Sends a request, retrying while `to` is live (a peer heard of by gossip may not be
    /// connected yet), at most 20 times.
    async fn deliver(&self, to: PeerId, header: &Header, frame: &[u8]) -> Result<u64, GroupError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.ask(to, header, frame).await {
                Ok((bytes, _)) => return Ok(bytes),
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

    /// Dials `peer` at the addresses it gave, unless connected or dialled in the last
    /// seconds; once the swarm knows them, requests to the peer can dial too.
    async fn connect(&self, peer: PeerId) {
        let addrs = {
            let mut state = self.shared.lock();
            let due = state
                .dialled
                .get(&peer)
                .is_none_or(|t| t.elapsed() > Duration::from_secs(5));
            if peer == self.me() || state.connected.contains(&peer) || !due {
                return;
            }
            state.dialled.insert(peer, Instant::now());
            state.addrs.get(&peer).cloned().unwrap_or_default()
        };
        for addr in addrs
            .iter()
            .filter_map(|a| a.parse::<libp2p::Multiaddr>().ok())
        {
            let _ = self.client.add_address(peer, addr.clone()).await;
            let client = self.client.clone();
            tokio::spawn(async move {
                if let Err(e) = client.dial(addr).await {
                    tracing::debug!(%peer, error = %e, "dial failed");
                }
            });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_and_malformed_headers() {
        let header = Header::Ready {
            run: "abc".into(),
            round: 3,
            state: None,
            addrs: Vec::new(),
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
            other => panic!("accepted: {other:?}"),
        }
    }

    #[test]
    fn untrusted_requests_are_refused_with_a_reason_and_counted() {
        let group = shared();
        let (member, outsider) = (peer(), peer());
        group.lock().groups.insert(
            3,
            Formed {
                round: 3,
                members: vec![group.me, member],
                states: vec![None, None],
            },
        );
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
