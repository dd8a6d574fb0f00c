//! Incentives inside a multi-process run (`launch run` with an `[incentives.ledger]`),
//! through the [`Ledger`] interface only: the same code serves any chain.
//!
//! Every peer commits `blake2_256` of its whole contribution (its encoded shards, in shard
//! order) to the ledger before the all-reduce reveals any of it, and offers the contribution
//! to validators. A peer with stake is a validator: after each round it fetches every
//! member's contribution, checks it against the member's commitment, and, on a thread beside
//! the next round's training, filters the members and values the survivors by Shapley (exact
//! up to eight, Monte-Carlo above; forward passes only, with the CPU kernels). The next round
//! it commits the weight row and, on a thread of its own, reveals it as soon as the ledger
//! opens its reveal window; every `tempo` blocks the ledger's
//! epoch turns the revealed rows into emission.
//!
//! The filter's verdict decides a member's score, not the round's average: the all-reduce has
//! averaged by then (its shard owners drop malformed and non-finite parts, and parts whose
//! norm is an outlier by the same robust z-score, on their own).
//! Weights come from Shapley values: Fisher importance needs backward passes, which burn's
//! autodiff keeps on the training thread (`launch incentives` reports it).

use crate::fused::{ModelBackend, TrainBackend};
use std::collections::BTreeMap;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use serde::Serialize;
use sinter_comms::group::{Group, Handed};
use sinter_comms::net::PeerId;
use sinter_kernels::RayonKernels;
use sinter_mechanism::Ledger;
use sinter_mechanism::ledger::extrinsic::blake2_256;
use sinter_mechanism::ledger::interface::{
    ContributionRecord, Metagraph, NeuronInfo, blocks, put_weights, reveal_wait, wait_until,
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
    /// Rounds it left unscored: too many earlier rounds still waited for their commitments.
    pub rounds_unscored: usize,
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
    /// When its all-reduce ended: its members' commitments are waited for from then on.
    ended: Instant,
}

/// A round with its members' contributions fetched (or why not), for the scorer.
struct Fetched {
    job: RoundJob,
    blobs: Vec<Result<Vec<u8>, String>>,
    secs: f64,
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

impl<B: ModelBackend> Scoring<B> {
    /// What a peer of the run described by `config` scores with: the validator's own
    /// validation batches (`incentives.validator_batches`) on the model's current weights.
    #[allow(clippy::too_many_arguments)]
    pub fn for_run<AB: TrainBackend<InnerBackend = B>>(
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
        let batches = dataset.validation_windows(&data, config.run.seed);
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

/// Rounds a validator keeps waiting for their members' commitments at once; each holds the
/// round's parameters, outer momentum and contributions. On Bittensor a member commits once
/// per 100 blocks, so its proofs may come 20 minutes after the round; a round beyond these
/// goes unscored.
const ROUNDS_AWAITING_COMMITMENTS: usize = 16;

/// One peer's part in a run's incentives: its commitments and, with stake, its scoring.
pub struct RunIncentives<B: Backend> {
    context: Arc<Scoring<B>>,
    /// To the scorer: rounds whose contributions were fetched.
    fetched: mpsc::Sender<Fetched>,
    /// From the scorer: scored rounds.
    scored: mpsc::Receiver<Scored>,
    /// Rounds handed to scoring and not yet scored.
    pending: usize,
    /// Reveals the committed weights once their reveal window opens (it does not wait for
    /// training or scoring: a missed window drops them).
    revealing: Option<std::thread::JoinHandle<()>>,
    /// Per uid, the weights of rounds scored since the last commitment: a row waits while
    /// the previous one is unrevealed, and the next commitment carries every round since.
    unsent: BTreeMap<u16, f64>,
    scores: BTreeMap<String, MemberScore>,
    rounds_scored: usize,
    rounds_unscored: usize,
    scoring_secs: f64,
    stall_secs: f64,
    training_secs: f64,
}

impl<B: ModelBackend> RunIncentives<B> {
    /// A peer's incentives; starts the thread that scores rounds (it ends with them).
    pub fn new(scoring: Scoring<B>) -> Self {
        let context = Arc::new(scoring);
        let (fetched, rounds) = mpsc::channel::<Fetched>();
        let (done, scored) = mpsc::channel();
        let scorer = context.clone();
        std::thread::spawn(move || {
            for round in rounds {
                if done.send(score(&scorer, round)).is_err() {
                    return;
                }
            }
        });
        Self {
            context,
            fetched,
            scored,
            pending: 0,
            revealing: None,
            unsent: BTreeMap::new(),
            scores: BTreeMap::new(),
            rounds_scored: 0,
            rounds_unscored: 0,
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

    /// After `round`'s all-reduce: a validator starts scoring it beside the next rounds. `own`
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
        self.collect(false);
        if !self.is_validator() {
            return;
        }
        if self.pending >= ROUNDS_AWAITING_COMMITMENTS {
            tracing::warn!(
                round,
                waiting = self.pending,
                "round goes unscored: earlier rounds still wait for their members' commitments"
            );
            self.rounds_unscored += 1;
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
            ended: Instant::now(),
        };
        self.pending += 1;
        let (context, scorer) = (self.context.clone(), self.fetched.clone());
        std::thread::spawn(move || {
            let _ = scorer.send(fetch(&context, job));
        });
    }

    /// Takes the scores of the rounds scored so far (with `wait`, of every round, waiting
    /// for them), and commits them as weights once the previous commitment is revealed.
    fn collect(&mut self, wait: bool) {
        // A round waits for its commitments at most this long, then for the rounds before it.
        let patience = commitment_wait(self.context.ledger.as_ref()) + Duration::from_secs(60);
        let block = self.context.ledger.block_time();
        // Where commitments are in a block at once, scoring keeps pace with training: a round
        // is scored before the next one's scoring starts (so weights reach epochs during the
        // run). Where they are batched (a chain's rate limit), training does not wait.
        let blocking = wait || self.context.ledger.commitment_delay() <= 1;
        let mut since = Instant::now();
        while self.pending > 0 {
            let scored = if blocking {
                let waited = Instant::now();
                let got = self.scored.recv_timeout(block);
                self.stall_secs += waited.elapsed().as_secs_f64();
                match got {
                    Ok(scored) => Some(scored),
                    Err(mpsc::RecvTimeoutError::Timeout) if since.elapsed() < patience => {
                        continue;
                    }
                    Err(_) => None,
                }
            } else {
                self.scored.try_recv().ok()
            };
            let Some(scored) = scored else {
                if blocking {
                    tracing::error!(
                        rounds = self.pending,
                        "rounds still unscored after their commitments' wait; they go unscored"
                    );
                    self.rounds_unscored += std::mem::take(&mut self.pending);
                }
                break;
            };
            since = Instant::now();
            self.pending -= 1;
            self.tally(scored);
        }
        if self.revealed() {
            self.commit_weights();
        }
    }

    /// Whether no commitment waits to be revealed.
    fn revealed(&self) -> bool {
        self.revealing.as_ref().is_none_or(|r| r.is_finished())
    }

    /// Adds a scored round to the members' totals and to the weights not yet committed.
    fn tally(&mut self, scored: Scored) {
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
        match put_weights(&self.context.ledger, &uids, &values) {
            Ok(revealing) => {
                self.unsent.clear();
                self.revealing = revealing;
            }
            Err(why) => tracing::warn!(%why, "weights not committed; retrying next round"),
        }
    }

    /// Ends the run: scores the last round, commits and (once the commitment is in a block)
    /// reveals its weights, and summarizes. `last` is the last round this peer contributed to
    /// with its members: a peer that does not validate stays until the validators among them
    /// have fetched its contribution (a few blocks at most).
    pub fn finish(mut self, last: Option<(u64, Vec<PeerId>)>) -> IncentiveSummary {
        let ledger = self.context.ledger.clone();
        if self.pending > 0 {
            tracing::info!(
                rounds = self.pending,
                "scoring the last rounds: each waits for its members' commitments (at most {} s)",
                commitment_wait(ledger.as_ref()).as_secs()
            );
        }
        self.collect(true);
        if let Some((round, members)) = last {
            self.hand_over(round, &members);
        }
        if !self.revealed() || !self.unsent.is_empty() {
            tracing::info!(
                "revealing this validator's last weights (waiting at most {} s for the reveal window): leaving now would drop them",
                reveal_wait(ledger.as_ref()).as_secs()
            );
        }
        // The commitment waiting, then one of the rows scored since.
        for _ in 0..2 {
            if let Some(revealing) = self.revealing.take() {
                let _ = revealing.join();
            }
            self.commit_weights();
        }
        let metagraph = ledger.metagraph();
        let me = self.me(&metagraph);
        IncentiveSummary {
            hotkey: ledger.hotkey().ss58(),
            uid: me.map(|n| n.uid),
            validator: me.is_some_and(|n| n.stake > 0),
            rounds_scored: self.rounds_scored,
            rounds_unscored: self.rounds_unscored,
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

    /// Stays until the validators among `members` have this peer's last contribution (to
    /// `round`) and, on a ledger that batches commitments, its proof: the batch is committed
    /// first, as the chain's rate limit allows.
    fn hand_over(&self, round: u64, members: &[PeerId]) {
        let ledger = self.context.ledger.as_ref();
        let block = ledger.block_time();
        let metagraph = ledger.metagraph();
        let genesis_hash = ledger.genesis_hash();
        let group = &self.context.group;
        let me = group.me();
        let validators: Vec<PeerId> = members
            .iter()
            .filter(|m| **m != me)
            .filter(|m| {
                uid_of(&metagraph, &genesis_hash, m)
                    .and_then(|u| metagraph.neuron(u))
                    .is_some_and(|n| n.stake > 0)
            })
            .copied()
            .collect();
        let runtime = &self.context.runtime;
        let limit = 2 * block + Duration::from_secs(1);
        if !runtime.block_on(group.wait_handed(Handed::Contribution, round, &validators, limit)) {
            tracing::info!(
                round,
                "not every validator fetched this peer's last contribution"
            );
        }
        // Earlier rounds' validators may wait for proofs of the batch too.
        if !ledger.settle(blocks(ledger, ledger.commitment_delay().saturating_add(1))) {
            tracing::warn!("this peer's last contributions were not committed: they go unpaid");
            return;
        }
        if ledger.contribution_proof(round).is_some()
            && !runtime.block_on(group.wait_handed(
                Handed::Proof,
                round,
                &validators,
                3 * block + Duration::from_secs(2),
            ))
        {
            tracing::info!(
                round,
                "not every validator asked for the proof of this peer's last contribution"
            );
        }
    }

    /// This peer's incentive (0–1) and emission so far, for its heartbeats.
    pub fn standing(&self) -> (Option<f64>, Option<u64>) {
        let metagraph = self.context.ledger.metagraph();
        let me = self.me(&metagraph);
        (me.map(|n| n.incentive), me.map(|n| n.emission))
    }
}

/// Fetches every member's contribution to a round, as soon as the round ends (members keep
/// only their last few).
fn fetch<B: ModelBackend>(context: &Scoring<B>, job: RoundJob) -> Fetched {
    let started = Instant::now();
    let group = &context.group;
    let me = group.me();
    let parts = job.members.len() * super::SHARDS_PER_MEMBER;
    let max_len = max_contribution_len(context.layout.len(), parts);
    let blobs = context.runtime.block_on(async {
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
    Fetched {
        job,
        blobs,
        secs: started.elapsed().as_secs_f64(),
    }
}

/// Scores a fetched round: waits for its members' commitments, checks the contributions
/// against them, filters and values them.
fn score<B: ModelBackend>(context: &Scoring<B>, fetched: Fetched) -> Scored {
    let Fetched { job, blobs, secs } = fetched;
    let fetched: Vec<PeerId> = job
        .members
        .iter()
        .zip(&blobs)
        .filter(|(_, blob)| blob.is_ok())
        .map(|(m, _)| *m)
        .collect();
    let (metagraph, committed) = commitments(context, job.round, &fetched, job.ended);
    let valuing = Instant::now();
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
        secs: secs + valuing.elapsed().as_secs_f64(),
    }
}

/// How long a validator waits for a round's commitments: the ledger's commitment delay and
/// a few blocks more.
fn commitment_wait(ledger: &dyn Ledger) -> Duration {
    blocks(ledger, ledger.commitment_delay().saturating_add(3)) + Duration::from_secs(2)
}

/// The metagraph and the commitments to `round` once each registered member of `members`
/// has its commitment in a block, or [`commitment_wait`] has passed `since` the round ended
/// (a member that never
/// committed is scored zero). A member whose commitment the ledger does not show (the chain
/// holds only the root of its batch) is asked for its proof each block, which the ledger
/// checks.
fn commitments<B: ModelBackend>(
    context: &Scoring<B>,
    round: u64,
    members: &[PeerId],
    since: Instant,
) -> (Metagraph, Vec<ContributionRecord>) {
    let ledger = context.ledger.as_ref();
    let genesis_hash = ledger.genesis_hash();
    let group = &context.group;
    let mut metagraph = ledger.metagraph();
    let absent = |metagraph: &Metagraph| {
        let committed = ledger.contributions(round);
        members
            .iter()
            .filter_map(|m| Some((*m, uid_of(metagraph, &genesis_hash, m)?)))
            .filter(|(_, uid)| committed.iter().all(|c| c.uid != *uid))
            .collect::<Vec<_>>()
    };
    let mut first = true;
    let limit = commitment_wait(ledger).saturating_sub(since.elapsed());
    wait_until(ledger, limit, || {
        if !std::mem::take(&mut first) {
            metagraph = ledger.metagraph();
        }
        let missing = absent(&metagraph);
        if missing.is_empty() {
            return true;
        }
        let proofs = context.runtime.block_on(futures::future::join_all(
            missing
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
        absent(&metagraph).is_empty()
    });
    (metagraph, ledger.contributions(round))
}
