//! Incentives inside a multi-process run (`launch run` with an `[incentives.ledger]`).
//!
//! Every peer commits `blake2_256` of its whole contribution (its encoded shards, in shard
//! order) to the ledger before the all-reduce reveals any of it, and offers the contribution
//! to validators. A peer with stake is a validator: after each round it fetches every
//! member's contribution, checks it against the member's commitment, and, on a thread beside
//! the next round's training, filters the members and values the survivors by Shapley (exact
//! up to eight, Monte-Carlo above; forward passes only, with the CPU kernels). The next round
//! it commits the weight row and reveals it a round later; every `tempo` blocks the ledger's
//! epoch turns the revealed rows into emission.
//!
//! The filter's verdict decides a member's score, not the round's average: the all-reduce has
//! averaged by then (its shard owners drop malformed and non-finite parts, and parts whose
//! norm is an outlier by the same robust z-score, on their own).
//! Weights come from Shapley values: Fisher importance needs backward passes, which burn's
//! autodiff keeps on the training thread (`launch incentives` reports it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use rand::Rng;
use serde::Serialize;
use sinter_comms::group::Group;
use sinter_comms::net::PeerId;
use sinter_kernels::RayonKernels;
use sinter_mechanism::ledger::extrinsic::{Call, blake2_256, weights_commitment};
use sinter_mechanism::ledger::keys::AccountId;
use sinter_mechanism::ledger::state::State;
use sinter_mechanism::score::{ScoringConfig, filter_round, to_u16_row, value_round};
use sinter_mechanism::shapley::Coalitions;

use crate::params::ParamLayout;
use crate::pseudo_gradient;
use crate::validator::{Evaluator, RoundGame};

/// What a peer of a run asks of the ledger. `launch` implements it over the run's own
/// connections: the author's peer authors blocks, every peer keeps a verified replica.
pub trait LedgerLink: Send + Sync {
    /// This peer's hotkey.
    fn hotkey(&self) -> AccountId;
    /// Signs `call` with the hotkey and submits it to the author; the reason if refused.
    fn submit(&self, call: Call) -> Result<(), String>;
    /// The replica's state now.
    fn state(&self) -> State;
    /// Seconds between blocks.
    fn block_secs(&self) -> f64;
    /// The subnet the ledger's weights are for.
    fn netuid(&self) -> u16;
    /// The ledger's genesis hash.
    fn genesis_hash(&self) -> [u8; 32];
}

/// What a peer's identity key signs to say that `hotkey` speaks for it on this ledger.
fn serve_message(genesis_hash: &[u8; 32], hotkey: &AccountId) -> Vec<u8> {
    parity_scale_codec::Encode::encode(&("sinter-serve", genesis_hash, hotkey.0))
}

/// The address a peer serves on the ledger: `<addr>/p2p/<peer id>#<signature>`, the
/// signature by the peer's identity key over the hotkey, so that no other hotkey can claim
/// the peer's contributions.
pub fn served_address(
    key: &sinter_comms::net::Keypair,
    addr: Option<&sinter_comms::net::Multiaddr>,
    genesis_hash: &[u8; 32],
    hotkey: &AccountId,
) -> String {
    let peer = key.public().to_peer_id();
    let signature = sinter_comms::net::key::sign(key, &serve_message(genesis_hash, hotkey));
    let addr = addr
        .map(|a| {
            let mut a = a.clone();
            if matches!(a.iter().last(), Some(sinter_comms::net::Protocol::P2p(_))) {
                a.pop();
            }
            a.to_string()
        })
        .unwrap_or_default();
    format!(
        "{addr}/p2p/{peer}#{}",
        sinter_mechanism::ledger::keys::hex(&signature)
    )
}

/// The ledger uid that serves `peer` with a valid signature of the peer's identity key over
/// the uid's hotkey (see [`served_address`]); a neuron merely naming the peer id is ignored.
pub fn uid_of(state: &State, genesis_hash: &[u8; 32], peer: &PeerId) -> Option<u16> {
    let suffix = format!("/p2p/{peer}");
    state
        .neurons
        .iter()
        .find(|n| {
            let Some((addr, signature)) = n.address.as_deref().and_then(|a| a.rsplit_once('#'))
            else {
                return false;
            };
            addr.ends_with(&suffix)
                && sinter_mechanism::ledger::keys::decode_hex(signature).is_some_and(|signature| {
                    sinter_comms::net::key::verify(
                        peer,
                        &serve_message(genesis_hash, &n.hotkey),
                        &signature,
                    )
                })
        })
        .map(|n| n.uid)
}

/// A contribution as one blob: the number of parts, then each part's length and bytes
/// (little-endian `u32`s).
pub fn contribution_blob(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + parts.iter().map(|p| 4 + p.len()).sum::<usize>());
    out.extend_from_slice(&(parts.len() as u32).to_le_bytes());
    for part in parts {
        out.extend_from_slice(&(part.len() as u32).to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// The parts of a [`contribution_blob`].
fn contribution_parts(blob: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut rest = blob;
    let mut take = |n: usize| -> Result<&[u8], String> {
        if rest.len() < n {
            return Err("contribution ends early".into());
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let word = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize;
    let count = word(take(4)?);
    if count > 1 << 16 {
        return Err(format!("contribution claims {count} parts"));
    }
    let mut parts = Vec::with_capacity(count);
    for _ in 0..count {
        let len = word(take(4)?);
        parts.push(take(len)?);
    }
    Ok(parts)
}

/// A member's whole pseudo-gradient from its contribution blob, shard by shard.
fn dequantize(layout: &ParamLayout, blob: &[u8]) -> Result<Vec<f32>, String> {
    let parts = contribution_parts(blob)?;
    if parts.is_empty() || parts.iter().all(|p| p.is_empty()) {
        return Err("an empty contribution".into());
    }
    let bounds = pseudo_gradient::shard_bounds(layout, parts.len());
    let mut delta = vec![0.0f32; layout.len()];
    for (k, part) in parts.iter().enumerate() {
        let slots = &layout.slots[bounds[k].clone()];
        pseudo_gradient::accumulate_frame(&RayonKernels, slots, part, &mut delta, 1.0)
            .map_err(|e| format!("shard {k}: {e}"))?;
    }
    Ok(delta)
}

/// One member's score totals over the run, as this validator measured them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemberScore {
    /// Its ledger uid (none: not registered, or not serving this peer id).
    pub uid: Option<u16>,
    /// Shapley values summed over the rounds it was scored in.
    pub shapley: f64,
    /// Weight (share of the row) summed over rounds.
    pub weight: f64,
    /// Rounds it was scored in.
    pub rounds: usize,
    /// `(round, reason)` for each round it was filtered out or had no usable contribution.
    pub rejected: Vec<(u64, String)>,
}

/// A neuron on this peer's ledger replica at the end of the run.
#[derive(Debug, Clone, Serialize)]
pub struct NeuronRow {
    /// Its uid.
    pub uid: u16,
    /// Its hotkey (SS58).
    pub hotkey: String,
    /// The address it serves (`…/p2p/<peer id>`).
    pub address: Option<String>,
    /// Its stake.
    pub stake: u64,
    /// Incentive at the last epoch (0–1).
    pub incentive: f64,
    /// Dividends at the last epoch (0–1).
    pub dividends: f64,
    /// Emission credited over the ledger's life.
    pub emission: u64,
}

/// The incentive part of a peer's `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct IncentiveSummary {
    /// This peer's hotkey.
    pub hotkey: String,
    /// Its uid.
    pub uid: Option<u16>,
    /// Whether it had stake (and so scored the others).
    pub validator: bool,
    /// Rounds it scored.
    pub rounds_scored: usize,
    /// Per member (peer id) it scored.
    pub scores: BTreeMap<String, MemberScore>,
    /// Seconds of scoring (fetching and valuing, beside training).
    pub scoring_secs: f64,
    /// Seconds the training thread waited for scoring.
    pub scoring_stall_secs: f64,
    /// Seconds of this peer's inner steps.
    pub training_secs: f64,
    /// Scoring seconds per training second.
    pub scoring_cost: f64,
    /// The replica's height and epochs at the end.
    pub blocks: u64,
    /// Epochs run.
    pub epochs: u64,
    /// The metagraph at the end.
    pub neurons: Vec<NeuronRow>,
}

/// What a validator scores one round from.
struct RoundJob {
    round: u64,
    members: Vec<PeerId>,
    own: Vec<u8>,
    global: Vec<f32>,
    momentum: Vec<f32>,
    lr: f32,
    mu: f32,
}

/// A scored round.
struct Scored {
    round: u64,
    members: Vec<PeerId>,
    uids: Vec<Option<u16>>,
    shapley: Vec<f64>,
    weights: Vec<f64>,
    rejected: Vec<Option<String>>,
    secs: f64,
}

/// What a peer scores with; the scoring thread shares it with the training thread.
pub struct Scoring<B: Backend> {
    /// The validator's loss on its own batches.
    pub evaluator: Evaluator<B>,
    /// The ledger.
    pub link: Arc<dyn LedgerLink>,
    /// The run's group (contributions are offered and fetched through it).
    pub group: Group,
    /// The runtime the network runs on.
    pub runtime: tokio::runtime::Handle,
    /// The parameters' layout.
    pub layout: ParamLayout,
    /// Filter thresholds and Shapley's budget.
    pub scoring: ScoringConfig,
    /// The run's seed (Monte-Carlo Shapley's seed is derived from it and the round).
    pub seed: u64,
}

/// One peer's part in a run's incentives: its commitments and, with stake, its scoring.
pub struct RunIncentives<B: Backend> {
    context: Arc<Scoring<B>>,
    pending: Option<JoinHandle<Scored>>,
    /// Weights committed (their hash) and waiting to be revealed.
    reveal: Option<([u8; 32], Call)>,
    /// Per uid, the weights of rounds scored since the last commitment: a row waits while
    /// the previous one is unrevealed, and the next commitment carries every round since.
    unsent: BTreeMap<u16, f64>,
    scores: BTreeMap<String, MemberScore>,
    rounds_scored: usize,
    scoring_secs: f64,
    stall_secs: f64,
    training_secs: f64,
}

impl<B: Backend> RunIncentives<B> {
    /// A peer's incentives.
    pub fn new(scoring: Scoring<B>) -> Self {
        Self {
            context: Arc::new(scoring),
            pending: None,
            reveal: None,
            unsent: BTreeMap::new(),
            scores: BTreeMap::new(),
            rounds_scored: 0,
            scoring_secs: 0.0,
            stall_secs: 0.0,
            training_secs: 0.0,
        }
    }

    fn my_uid(&self, state: &State) -> Option<u16> {
        state.uid(&self.context.link.hotkey())
    }

    /// Whether this peer holds stake (and so validates).
    pub fn is_validator(&self) -> bool {
        let state = self.context.link.state();
        self.my_uid(&state)
            .is_some_and(|u| state.neurons[u as usize].stake > 0)
    }

    /// Commits this peer's contribution to `round` and offers it to validators; to be called
    /// before the all-reduce reveals it. Returns the blob (the validator scores its own too).
    pub fn commit(&self, round: u64, parts: &[Vec<u8>]) -> Vec<u8> {
        let blob = contribution_blob(parts);
        if parts.iter().all(Vec::is_empty) {
            return blob;
        }
        let hash = blake2_256(&blob);
        self.context.group.offer_contribution(round, blob.clone());
        if let Err(why) = self
            .context
            .link
            .submit(Call::CommitContribution { round, hash })
        {
            tracing::warn!(round, %why, "contribution not committed: validators will not score it");
        }
        blob
    }

    /// Counts `secs` of inner steps (for the scoring cost).
    pub fn trained(&mut self, secs: f64) {
        self.training_secs += secs;
    }

    /// After `round`'s all-reduce: a validator starts scoring it beside the next round. `own`
    /// is this peer's contribution blob; `global`/`momentum` are θ and the outer momentum
    /// before the round's outer step.
    #[allow(clippy::too_many_arguments)]
    pub fn score_round(
        &mut self,
        round: u64,
        members: Vec<PeerId>,
        own: Vec<u8>,
        global: &[f32],
        momentum: &[f32],
        lr: f32,
        mu: f32,
    ) {
        self.collect();
        if !self.is_validator() {
            return;
        }
        let job = RoundJob {
            round,
            members,
            own,
            global: global.to_vec(),
            momentum: momentum.to_vec(),
            lr,
            mu,
        };
        let context = self.context.clone();
        self.pending = Some(std::thread::spawn(move || score(&context, job)));
    }

    /// Takes the pending round's scores (waiting for them) and commits them as weights,
    /// revealing the previous commitment first.
    fn collect(&mut self) {
        let Some(handle) = self.pending.take() else {
            self.reveal_pending();
            return;
        };
        let waited = Instant::now();
        let scored = match handle.join() {
            Ok(scored) => scored,
            Err(_) => {
                tracing::error!("the scoring thread panicked; this round goes unscored");
                return;
            }
        };
        self.stall_secs += waited.elapsed().as_secs_f64();
        self.scoring_secs += scored.secs;
        self.rounds_scored += 1;
        for (j, peer) in scored.members.iter().enumerate() {
            let entry = self.scores.entry(peer.to_string()).or_default();
            entry.uid = scored.uids[j];
            match &scored.rejected[j] {
                Some(why) => {
                    tracing::info!(round = scored.round, %peer, reason = %why, "contribution scored zero");
                    entry.rejected.push((scored.round, why.clone()));
                }
                None => {
                    entry.shapley += scored.shapley[j];
                    entry.weight += scored.weights[j];
                    entry.rounds += 1;
                }
            }
        }
        for (uid, w) in scored.uids.iter().zip(&scored.weights) {
            if let Some(uid) = uid {
                *self.unsent.entry(*uid).or_default() += w;
            }
        }
        self.reveal_pending();
        if self.reveal.is_none() {
            self.commit_weights();
        }
    }

    /// Commits the weights of the rounds scored since the last commitment.
    fn commit_weights(&mut self) {
        let (uids, values): (Vec<u16>, Vec<f64>) =
            self.unsent.iter().map(|(u, w)| (*u, *w)).unzip();
        let values = to_u16_row(&values);
        if values.iter().all(|v| *v == 0) {
            self.unsent.clear();
            return;
        }
        let salt: Vec<u16> = (0..4).map(|_| rand::rng().random()).collect();
        let link = &self.context.link;
        let hash = weights_commitment(&link.hotkey(), link.netuid(), &uids, &values, &salt, 0);
        match link.submit(Call::CommitWeights { hash }) {
            Ok(()) => {
                self.unsent.clear();
                let reveal = Call::RevealWeights {
                    uids,
                    values,
                    salt,
                    version_key: 0,
                };
                self.reveal = Some((hash, reveal));
            }
            Err(why) => tracing::warn!(%why, "weights not committed; retrying next round"),
        }
    }

    /// Reveals the committed weights once their commitment is in a block.
    fn reveal_pending(&mut self) {
        let Some((hash, call)) = self.reveal.take() else {
            return;
        };
        let link = &self.context.link;
        let state = link.state();
        let committed = self
            .my_uid(&state)
            .and_then(|u| state.commits.get(&u))
            .is_some_and(|c| c.hash == sinter_mechanism::ledger::keys::hex(&hash));
        if !committed {
            self.reveal = Some((hash, call));
            return;
        }
        if let Err(why) = link.submit(call) {
            tracing::warn!(%why, "weights not revealed");
        }
    }

    /// Ends the run: scores the last round, commits and (once the commitment is in a block)
    /// reveals its weights, and summarizes.
    pub fn finish(mut self) -> IncentiveSummary {
        self.collect();
        let link = self.context.link.clone();
        if !self.is_validator() {
            // Validators fetch the last round's contribution from here.
            std::thread::sleep(Duration::from_secs_f64(2.0 * link.block_secs() + 1.0));
        }
        let deadline = Instant::now() + Duration::from_secs_f64(4.0 * link.block_secs() + 2.0);
        while (self.reveal.is_some() || !self.unsent.is_empty()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            self.reveal_pending();
            if self.reveal.is_none() {
                self.commit_weights();
            }
        }
        let state = link.state();
        let uid = self.my_uid(&state);
        let share = |v: u16| v as f64 / u16::MAX as f64;
        IncentiveSummary {
            hotkey: link.hotkey().ss58(),
            uid,
            validator: uid.is_some_and(|u| state.neurons[u as usize].stake > 0),
            rounds_scored: self.rounds_scored,
            scores: self.scores,
            scoring_secs: self.scoring_secs,
            scoring_stall_secs: self.stall_secs,
            training_secs: self.training_secs,
            scoring_cost: self.scoring_secs / self.training_secs.max(1e-9),
            blocks: state.block,
            epochs: state.epochs,
            neurons: state
                .neurons
                .iter()
                .map(|n| NeuronRow {
                    uid: n.uid,
                    hotkey: n.hotkey.ss58(),
                    address: n.address.clone(),
                    stake: n.stake,
                    incentive: share(n.incentive),
                    dividends: share(n.dividends),
                    emission: n.total_emission,
                })
                .collect(),
        }
    }

    /// This peer's incentive (0–1) and emission so far, for its heartbeats.
    pub fn standing(&self) -> (Option<f64>, Option<u64>) {
        let state = self.context.link.state();
        match self.my_uid(&state) {
            Some(u) => {
                let n = &state.neurons[u as usize];
                (
                    Some(n.incentive as f64 / u16::MAX as f64),
                    Some(n.total_emission),
                )
            }
            None => (None, None),
        }
    }
}

/// Scores one round: fetches and checks every member's contribution, filters and values them.
fn score<B: Backend>(context: &Scoring<B>, job: RoundJob) -> Scored {
    let started = Instant::now();
    let group = &context.group;
    let me = group.me();
    let blobs: Vec<Result<Vec<u8>, String>> = context.runtime.block_on(async {
        let fetches = job.members.iter().map(|m| async {
            if *m == me {
                Ok(job.own.clone())
            } else {
                group
                    .fetch_contribution(job.round, *m)
                    .await
                    .map_err(|e| format!("fetching its contribution: {e}"))
            }
        });
        futures::future::join_all(fetches).await
    });
    let state = commitments(context, job.round, &job.members);
    let n = job.members.len();
    let genesis_hash = context.link.genesis_hash();
    let uids: Vec<Option<u16>> = job
        .members
        .iter()
        .map(|m| uid_of(&state, &genesis_hash, m))
        .collect();
    let mut rejected: Vec<Option<String>> = vec![None; n];
    let mut deltas = Vec::new();
    let mut players = Vec::new();
    let mut committed_at = Vec::new();
    for (j, blob) in blobs.into_iter().enumerate() {
        let usable = (|| {
            let uid = uids[j].ok_or("not registered on the ledger (or serving another address)")?;
            let commitment = state
                .contributions
                .iter()
                .find(|c| c.round == job.round && c.uid == uid)
                .ok_or_else(|| format!("no commitment for round {}", job.round))?;
            let blob = blob?;
            if blake2_256(&blob) != commitment.hash {
                return Err("its contribution does not match its commitment".to_owned());
            }
            let delta = dequantize(&context.layout, &blob)?;
            Ok::<_, String>((delta, commitment.sequence))
        })();
        match usable {
            Ok((delta, sequence)) => {
                deltas.push(delta);
                committed_at.push(sequence);
                players.push(j);
            }
            Err(why) => rejected[j] = Some(why),
        }
    }
    let mut shapley = vec![0.0; n];
    let mut weights = vec![0.0; n];
    if !players.is_empty() {
        let base_loss = context.evaluator.loss(&job.global);
        let game = RoundGame {
            evaluator: &context.evaluator,
            kernels: &RayonKernels,
            global: &job.global,
            momentum: &job.momentum,
            deltas: &deltas,
            lr: job.lr,
            mu: job.mu,
            base_loss,
        };
        let mut coalitions =
            Coalitions::new((0..players.len()).collect(), |s: &[usize]| game.value(s));
        let updates: Vec<&[f32]> = deltas.iter().map(Vec::as_slice).collect();
        let verdict = filter_round(&updates, &committed_at, &mut coalitions, &context.scoring);
        let scores = value_round(
            &updates,
            verdict,
            &mut coalitions,
            None,
            &context.scoring,
            context.seed ^ job.round,
        );
        for (k, &j) in players.iter().enumerate() {
            shapley[j] = scores.shapley[k];
            weights[j] = scores.weights[k];
            if let Some(why) = &scores.rejected[k] {
                rejected[j] = Some(why.to_string());
            }
        }
    }
    Scored {
        round: job.round,
        members: job.members,
        uids,
        shapley,
        weights,
        rejected,
        secs: started.elapsed().as_secs_f64(),
    }
}

/// The replica's state once every registered member's commitment to `round` is in a block
/// (or a few blocks have passed: a member that never committed is scored zero).
fn commitments<B: Backend>(context: &Scoring<B>, round: u64, members: &[PeerId]) -> State {
    let link = &context.link;
    let genesis_hash = link.genesis_hash();
    let deadline = Instant::now() + Duration::from_secs_f64(3.0 * link.block_secs() + 2.0);
    loop {
        let state = link.state();
        let all_in = members.iter().all(|m| {
            uid_of(&state, &genesis_hash, m).is_none_or(|uid| {
                state
                    .contributions
                    .iter()
                    .any(|c| c.round == round && c.uid == uid)
            })
        });
        if all_in || Instant::now() >= deadline {
            return state;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_hotkey_a_peer_signed_for_gets_its_contributions() {
        use sinter_mechanism::ledger::keys::Keypair as Hotkey;
        use sinter_mechanism::ledger::state::{Genesis, GenesisNeuron};
        let (honest, thief) = (
            Hotkey::from_secret("//Honest").unwrap(),
            Hotkey::from_secret("//Thief").unwrap(),
        );
        let genesis: Genesis = serde_json::from_value(serde_json::json!({
            "author": honest.account(),
            "neurons": [
                GenesisNeuron { hotkey: thief.account(), coldkey: thief.account(), stake: 0 },
                GenesisNeuron { hotkey: honest.account(), coldkey: honest.account(), stake: 0 },
            ],
        }))
        .unwrap();
        let genesis_hash = genesis.hash();
        let mut state = State::genesis(&genesis);
        let peer_key = sinter_comms::net::Keypair::generate_ed25519();
        let peer = peer_key.public().to_peer_id();
        let addr: sinter_comms::net::Multiaddr = format!("/ip4/10.0.0.2/tcp/4001/p2p/{peer}")
            .parse()
            .unwrap();
        let honest_address =
            served_address(&peer_key, Some(&addr), &genesis_hash, &honest.account());
        assert!(honest_address.starts_with(&format!("/ip4/10.0.0.2/tcp/4001/p2p/{peer}#")));
        // uid 0 claims the peer id bare, then with the honest hotkey's signature copied.
        state.neurons[0].address = Some(format!("/ip4/10.0.0.9/tcp/1/p2p/{peer}"));
        assert_eq!(uid_of(&state, &genesis_hash, &peer), None);
        state.neurons[0].address = Some(honest_address.clone());
        state.neurons[1].address = Some(honest_address);
        assert_eq!(uid_of(&state, &genesis_hash, &peer), Some(1));
        // A signature for another ledger does not count either.
        let other = served_address(&peer_key, Some(&addr), &[7u8; 32], &honest.account());
        state.neurons[1].address = Some(other);
        assert_eq!(uid_of(&state, &genesis_hash, &peer), None);
    }

    #[test]
    fn contribution_blobs_round_trip_and_refuse_truncation() {
        let parts = vec![vec![1u8, 2, 3], Vec::new(), vec![9u8; 300]];
        let blob = contribution_blob(&parts);
        let back = contribution_parts(&blob).unwrap();
        assert_eq!(back, parts.iter().map(Vec::as_slice).collect::<Vec<_>>());
        for cut in [0, 3, 9, blob.len() - 1] {
            assert!(contribution_parts(&blob[..cut]).is_err(), "cut at {cut}");
        }
    }
}
