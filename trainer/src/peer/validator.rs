//! Incentives inside a multi-process run (`launch run` with an `[incentives.ledger]`),
//! through the [`Ledger`] interface only: the same code serves any chain.
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

use burn::tensor::backend::{AutodiffBackend, Backend};
use rand::Rng;
use serde::Serialize;
use sinter_comms::group::Group;
use sinter_comms::net::PeerId;
use sinter_kernels::RayonKernels;
use sinter_mechanism::Ledger;
use sinter_mechanism::ledger::extrinsic::{blake2_256, weights_commitment};
use sinter_mechanism::ledger::interface::{
    ContributionRecord, Metagraph, NeuronInfo, WeightsReveal, wait_until,
};
use sinter_mechanism::score::{ScoringConfig, filter_round, to_u16_row, value_round};
use sinter_mechanism::shapley::Coalitions;

use super::contribution::{contribution_blob, dequantize, max_contribution_len};
use super::identity::uid_of;
use crate::config::{DataConfig, RunConfig};
use crate::data::Dataset;
use crate::inner::eval_model;
use crate::model::Llama;
use crate::params::ParamLayout;
use crate::valuation::{Evaluator, RoundGame};

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
    pub neurons: Vec<NeuronInfo>,
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
    pub ledger: Arc<dyn Ledger>,
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

impl<B: Backend> Scoring<B> {
    /// What a peer of the run described by `config` scores with: the validator's own
    /// validation batches (`incentives.validator_batches`) on the model's current weights.
    #[allow(clippy::too_many_arguments)]
    pub fn for_run<AB: AutodiffBackend<InnerBackend = B>>(
        config: &RunConfig,
        dataset: &Dataset,
        model: &Llama<AB>,
        device: &B::Device,
        ledger: Arc<dyn Ledger>,
        group: &Group,
        runtime: &tokio::runtime::Handle,
        layout: &ParamLayout,
    ) -> Self {
        let data = DataConfig {
            validation_batches: config.incentives.validator_batches,
            ..config.data.clone()
        };
        let batches = dataset.validation_windows(&data, config.model.context, config.run.seed);
        // Validators that cannot read this peer's contributions off the ledger ask for proofs.
        let prover = ledger.clone();
        group.serve_contribution_proofs(Arc::new(move |round| prover.contribution_proof(round)));
        Self {
            evaluator: Evaluator::new(
                eval_model(model),
                batches,
                data.validation_batch_size,
                device.clone(),
            ),
            ledger,
            group: group.clone(),
            runtime: runtime.clone(),
            layout: layout.clone(),
            scoring: config.incentives.scoring.clone(),
            seed: config.run.seed,
        }
    }
}

/// One peer's part in a run's incentives: its commitments and, with stake, its scoring.
pub struct RunIncentives<B: Backend> {
    context: Arc<Scoring<B>>,
    pending: Option<JoinHandle<Scored>>,
    /// Weights committed (their hash) and waiting to be revealed.
    reveal: Option<([u8; 32], WeightsReveal)>,
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

    fn me<'m>(&self, metagraph: &'m Metagraph) -> Option<&'m NeuronInfo> {
        metagraph
            .uid(&self.context.ledger.hotkey())
            .and_then(|u| metagraph.neuron(u))
    }

    /// Whether this peer holds stake (and so validates).
    pub fn is_validator(&self) -> bool {
        self.me(&self.context.ledger.metagraph())
            .is_some_and(|n| n.stake > 0)
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
        if let Err(why) = self.context.ledger.commit_contribution(round, hash) {
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
        let ledger = &self.context.ledger;
        let hash = weights_commitment(&ledger.hotkey(), ledger.netuid(), &uids, &values, &salt, 0);
        match ledger.commit_weights(hash) {
            Ok(()) => {
                self.unsent.clear();
                let reveal = WeightsReveal {
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
        let Some((hash, reveal)) = self.reveal.take() else {
            return;
        };
        let ledger = &self.context.ledger;
        if ledger.committed_weights() != Some(hash) {
            self.reveal = Some((hash, reveal));
            return;
        }
        if let Err(why) = ledger.reveal_weights(&reveal) {
            tracing::warn!(%why, "weights not revealed");
        }
    }

    /// Ends the run: scores the last round, commits and (once the commitment is in a block)
    /// reveals its weights, and summarizes. `last` is the last round this peer contributed to
    /// with its members: a peer that does not validate stays until the validators among them
    /// have fetched its contribution (a few blocks at most).
    pub fn finish(mut self, last: Option<(u64, Vec<PeerId>)>) -> IncentiveSummary {
        self.collect();
        let ledger = self.context.ledger.clone();
        let block = ledger.block_time();
        if !self.is_validator()
            && let Some((round, members)) = last
        {
            let metagraph = ledger.metagraph();
            let genesis_hash = ledger.genesis_hash();
            let me = self.context.group.me();
            let validators: Vec<PeerId> = members
                .into_iter()
                .filter(|m| *m != me)
                .filter(|m| {
                    uid_of(&metagraph, &genesis_hash, m)
                        .and_then(|u| metagraph.neuron(u))
                        .is_some_and(|n| n.stake > 0)
                })
                .collect();
            let limit = 2 * block + Duration::from_secs(1);
            let group = &self.context.group;
            if !self
                .context
                .runtime
                .block_on(group.wait_contribution_fetched(round, &validators, limit))
            {
                tracing::info!(
                    round,
                    "not every validator fetched this peer's last contribution"
                );
            }
        }
        let limit = 4 * block + Duration::from_secs(2);
        wait_until(ledger.as_ref(), limit, || {
            self.reveal_pending();
            if self.reveal.is_none() {
                self.commit_weights();
            }
            self.reveal.is_none() && self.unsent.is_empty()
        });
        let metagraph = ledger.metagraph();
        let me = self.me(&metagraph);
        IncentiveSummary {
            hotkey: ledger.hotkey().ss58(),
            uid: me.map(|n| n.uid),
            validator: me.is_some_and(|n| n.stake > 0),
            rounds_scored: self.rounds_scored,
            scores: self.scores,
            scoring_secs: self.scoring_secs,
            scoring_stall_secs: self.stall_secs,
            training_secs: self.training_secs,
            scoring_cost: self.scoring_secs / self.training_secs.max(1e-9),
            blocks: metagraph.block,
            epochs: metagraph.epochs,
            neurons: metagraph.neurons,
        }
    }

    /// This peer's incentive (0–1) and emission so far, for its heartbeats.
    pub fn standing(&self) -> (Option<f64>, Option<u64>) {
        let metagraph = self.context.ledger.metagraph();
        let me = self.me(&metagraph);
        (me.map(|n| n.incentive), me.map(|n| n.emission))
    }
}

/// Scores one round: fetches and checks every member's contribution, filters and values them.
fn score<B: Backend>(context: &Scoring<B>, job: RoundJob) -> Scored {
    let started = Instant::now();
    let group = &context.group;
    let me = group.me();
    let parts = job.members.len() * super::SHARDS_PER_MEMBER;
    let max_len = max_contribution_len(context.layout.len(), parts);
    let blobs: Vec<Result<Vec<u8>, String>> = context.runtime.block_on(async {
        let fetches = job.members.iter().map(|m| async {
            if *m == me {
                Ok(job.own.clone())
            } else {
                group
                    .fetch_contribution(job.round, *m, max_len)
                    .await
                    .map_err(|e| format!("fetching its contribution: {e}"))
            }
        });
        futures::future::join_all(fetches).await
    });
    let (metagraph, committed) = commitments(context, job.round, &job.members);
    let n = job.members.len();
    let genesis_hash = context.ledger.genesis_hash();
    let uids: Vec<Option<u16>> = job
        .members
        .iter()
        .map(|m| uid_of(&metagraph, &genesis_hash, m))
        .collect();
    let mut rejected: Vec<Option<String>> = vec![None; n];
    let mut deltas = Vec::new();
    let mut players = Vec::new();
    let mut committed_at = Vec::new();
    for (j, blob) in blobs.into_iter().enumerate() {
        let usable = (|| {
            let uid = uids[j].ok_or("not registered on the ledger (or serving another address)")?;
            let commitment = committed
                .iter()
                .find(|c| c.uid == uid)
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

/// The metagraph and the commitments to `round` once every registered member's commitment is
/// in a block (or a few blocks have passed: a member that never committed is scored zero).
/// A member whose commitment the ledger does not show (the chain holds only the root of its
/// batch) is asked for its proof, which the ledger checks.
fn commitments<B: Backend>(
    context: &Scoring<B>,
    round: u64,
    members: &[PeerId],
) -> (Metagraph, Vec<ContributionRecord>) {
    let ledger = context.ledger.as_ref();
    let genesis_hash = ledger.genesis_hash();
    let missing = || {
        let metagraph = ledger.metagraph();
        let committed = ledger.contributions(round);
        members
            .iter()
            .filter_map(|m| Some((*m, uid_of(&metagraph, &genesis_hash, m)?)))
            .filter(|(_, uid)| committed.iter().all(|c| c.uid != *uid))
            .collect::<Vec<_>>()
    };
    let all_in = || {
        let absent = missing();
        let group = &context.group;
        let proofs = context.runtime.block_on(futures::future::join_all(
            absent
                .iter()
                .filter(|(m, _)| *m != group.me())
                .map(|(m, uid)| async {
                    (*m, *uid, group.fetch_contribution_proof(round, *m).await)
                }),
        ));
        for (peer, uid, proof) in proofs {
            if let Ok(proof) = proof
                && let Err(why) = ledger.accept_contribution_proof(uid, round, &proof)
            {
                tracing::warn!(round, %peer, uid, %why, "contribution proof refused");
            }
        }
        absent.is_empty() || missing().is_empty()
    };
    wait_until(
        ledger,
        3 * ledger.block_time() + Duration::from_secs(2),
        all_in,
    );
    (ledger.metagraph(), ledger.contributions(round))
}
