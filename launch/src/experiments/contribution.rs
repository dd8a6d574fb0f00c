//! Contributions become emission, in one process: a DiLoCo run whose peers behave
//! differently (honest on Shakespeare shards, honest on Milton, lazy, copycat), one validator
//! that scores every round, and the embedded ledger that records commitments and weights and
//! runs Yuma every epoch. This is experiment 1 of the incentive mechanism and the README's
//! example of how contributions become emission.
//!
//! Each round:
//! 1. peers train `H` steps from θ (lazy and copycat peers do not train), build their int8
//!    pseudo-gradient frames, and commit `blake2_256(frame)` to the ledger;
//! 2. frames are revealed; the copycat re-sends another peer's frame, committing it only now
//!    (one block later: it could not know the hash before the reveal);
//! 3. the validator decodes the frames and filters them (NaN, norm outliers, copies of an
//!    earlier commitment, loss-raising updates); the survivors' mean takes the outer step;
//! 4. on a thread beside the next round's training, the validator values the survivors
//!    (Shapley, Fisher) and the experiment's ground truth (leave-one-out over all peers);
//!    its weight row is committed and revealed in the next round's blocks, and every
//!    `tempo` = 3 blocks (one per round) an epoch pays emission.
//!
//! Keys are well-known dev keys derived from fixed secret URIs (`//sinter/peer/0` …): a
//! simulation, not a wallet.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use sinter_comms::encode;
use sinter_kernels::Kernels;
use sinter_mechanism::ledger::extrinsic::{Call, Extrinsic, blake2_256, weights_commitment};
use sinter_mechanism::ledger::keys::{AccountId, Keypair};
use sinter_mechanism::ledger::state::{Genesis, GenesisBalance, GenesisNeuron};
use sinter_mechanism::ledger::{LedgerError, Replica};
use sinter_mechanism::score::{
    Curvature, RoundScores, filter_round, spearman, to_u16_row, value_round,
};
use sinter_mechanism::shapley::{Coalitions, monte_carlo, relative_error};
use sinter_trainer::fused::TrainBackend;

use sinter_trainer::config::{DataConfig, IncentiveConfig, RunConfig};
use sinter_trainer::data::{DataOrder, Dataset};
use sinter_trainer::inner::{InnerOptimizer, eval_model, inner_optimizer, train_step};
use sinter_trainer::model::Llama;
use sinter_trainer::outer::{outer_lr, outer_step};
use sinter_trainer::params::{ParamLayout, flatten, initial_model, load};
use sinter_trainer::tokenizer::Tokenizer;
use sinter_trainer::valuation::{Evaluator, RoundGame, curvature, mean_of};
use sinter_trainer::{TrainerError, pseudo_gradient};

/// How a simulated peer behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Trains on its own shard of Shakespeare.
    Shakespeare,
    /// Trains on Milton (useful to a validator evaluating on both).
    Milton,
    /// Trains nothing and sends noise the size of an honest update.
    Lazy,
    /// Re-sends the first peer's frame after it is revealed.
    Copycat,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "shakespeare" | "honest" => Ok(Self::Shakespeare),
            "milton" => Ok(Self::Milton),
            "lazy" => Ok(Self::Lazy),
            "copycat" => Ok(Self::Copycat),
            other => Err(format!(
                "unknown role {other:?}: shakespeare, milton, lazy or copycat"
            )),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ContributionOptions {
    /// The peers.
    pub roles: Vec<Role>,
    /// Rounds with only the honest peers, unscored, before the scored ones (the others join
    /// a run in progress, where updates carry more than the first steps' generic statistics).
    pub warmup_rounds: usize,
    /// Scored rounds.
    pub rounds: usize,
    /// Where the ledger file goes (created; must not exist).
    pub ledger: PathBuf,
}

impl ContributionOptions {
    /// Refuses peer lists the run cannot play: someone must train, and the copycat copies the
    /// first peer, which must not be a copycat itself.
    pub fn check(&self) -> Result<(), String> {
        if self.roles.len() < 2 {
            return Err("need at least two peers".into());
        }
        if !self
            .roles
            .iter()
            .any(|r| matches!(r, Role::Shakespeare | Role::Milton))
        {
            return Err("need at least one peer that trains (shakespeare or milton)".into());
        }
        if self.roles[0] == Role::Copycat {
            return Err("a copycat copies the first peer: put another role first".into());
        }
        Ok(())
    }
}

/// One peer's totals over the run.
#[derive(Debug, Clone, Serialize)]
pub struct PeerReport {
    /// Its role.
    pub role: Role,
    /// Its uid on the ledger.
    pub uid: u16,
    /// Its hotkey.
    pub hotkey: String,
    /// Shapley values summed over rounds.
    pub shapley: f64,
    /// Fisher importance summed over rounds.
    pub fisher: f64,
    /// Ground truth, summed over rounds: the loss increase when the peer is left out of the
    /// accepted aggregate (for a filtered peer: the loss decrease had it been let in).
    pub leave_one_out: f64,
    /// `(round, reason)` for each round it was filtered out.
    pub rejected: Vec<(usize, String)>,
    /// Emission credited over the run.
    pub emission: u64,
    /// Its share of all emission.
    pub emission_share: f64,
}

/// The experiment's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ContributionReport {
    /// Per peer.
    pub peers: Vec<PeerReport>,
    /// The validator's share of all emission (its dividends).
    pub validator_emission_share: f64,
    /// Spearman correlation of Shapley totals with leave-one-out totals.
    pub spearman_shapley: f64,
    /// Spearman correlation of Fisher totals with leave-one-out totals.
    pub spearman_fisher: f64,
    /// Share of all emission earned by lazy and copycat peers.
    pub lazy_and_copycat_share: f64,
    /// Validator loss at the start and at the end.
    pub validator_loss: (f64, f64),
    /// Seconds of peer training (all peers, one after another).
    pub training_secs: f64,
    /// Seconds of scoring (filter and curvature on the training thread, Shapley beside it).
    pub scoring_secs: f64,
    /// Seconds the training thread spent on scoring work, or waiting for it.
    pub scoring_stall_secs: f64,
    /// Coalition values evaluated.
    pub evaluations: usize,
    /// Per round with exact Shapley values: the relative L2 error of a Monte-Carlo estimate
    /// from `scoring.permutations` permutations against them.
    pub monte_carlo_relative_error: Vec<f64>,
    /// Rounds.
    pub rounds: usize,
    /// Ledger blocks and epochs.
    pub blocks: u64,
    /// Epochs run on the ledger.
    pub epochs: u64,
}

struct Peer<B: TrainBackend> {
    role: Role,
    key: Keypair,
    model: Llama<B>,
    optimizer: InnerOptimizer<B>,
    /// The peer's own share of its corpus (none: it does not train).
    data: Option<DataOrder>,
}

/// A round's scores and ground truth, computed beside the next round.
struct Scored {
    round: usize,
    scores: RoundScores,
    leave_one_out: Vec<f64>,
    monte_carlo_error: Option<f64>,
    secs: f64,
}

/// Milton's dataset, tokenized like the run's.
fn milton(config: &RunConfig, tokenizer: &Tokenizer) -> Result<Dataset, TrainerError> {
    let data = DataConfig {
        corpus: "milton".into(),
        ..config.data.clone()
    };
    Dataset::load(&data, tokenizer, config.model.context)
}

fn dev_key(name: &str) -> Keypair {
    Keypair::from_secret(&format!("//sinter/{name}")).expect("a dev secret URI")
}

fn err(e: LedgerError) -> TrainerError {
    TrainerError::Incentive(e.to_string())
}

/// Sends extrinsics in the next block; a refusal here is a bug in the experiment.
fn block(
    ledger: &mut Replica,
    author: &Keypair,
    pending: Vec<Extrinsic>,
) -> Result<(), TrainerError> {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let applied = ledger.author(author, pending, timestamp).map_err(err)?;
    if let Some(refused) = applied.refused.first() {
        return Err(TrainerError::Incentive(format!(
            "block {}: {} refused: {}",
            applied.block.header.number,
            refused.extrinsic.call.name(),
            refused.reason
        )));
    }
    Ok(())
}

/// The peers, each with its own data (Shakespeare peers split Shakespeare into shards).
fn make_peers<B: TrainBackend>(
    roles: &[Role],
    initial: &Llama<B>,
    shakespeare: &Dataset,
    milton: &Dataset,
    config: &RunConfig,
) -> Result<Vec<Peer<B>>, TrainerError> {
    let seed = config.run.seed;
    let shakespeare_peers = roles.iter().filter(|r| **r == Role::Shakespeare).count();
    let mut shard = 0;
    let mut peers = Vec::with_capacity(roles.len());
    for (i, role) in roles.iter().enumerate() {
        let peer_seed = seed.wrapping_add(i as u64);
        let data = match role {
            Role::Shakespeare => {
                shard += 1;
                Some(shakespeare.part(shard - 1, shakespeare_peers, peer_seed)?)
            }
            Role::Milton => Some(milton.part(0, 1, peer_seed)?),
            Role::Lazy | Role::Copycat => None,
        };
        peers.push(Peer {
            role: *role,
            key: dev_key(&format!("peer/{i}")),
            model: initial.clone(),
            optimizer: inner_optimizer::<B>(&config.inner),
            data,
        });
    }
    Ok(peers)
}

/// The ledger's genesis: the validator (uid 0, all the stake, the author) and every peer
/// registered with no stake.
fn genesis<B: TrainBackend>(
    validator: &Keypair,
    owner: &Keypair,
    peers: &[Peer<B>],
    incentives: &IncentiveConfig,
) -> Genesis {
    Genesis {
        author: validator.account(),
        netuid: 1,
        tempo: incentives.tempo,
        burn: incentives.burn,
        emission_per_epoch: incentives.emission_per_epoch,
        max_validators: 128,
        max_uids: 4096,
        contribution_window: sinter_mechanism::ledger::state::CONTRIBUTION_WINDOW,
        consensus: incentives.consensus.clone(),
        balances: vec![GenesisBalance {
            account: owner.account(),
            balance: 0,
        }],
        neurons: std::iter::once(GenesisNeuron {
            hotkey: validator.account(),
            coldkey: owner.account(),
            stake: 1_000_000_000_000,
        })
        .chain(peers.iter().map(|p| GenesisNeuron {
            hotkey: p.key.account(),
            coldkey: dev_key(&format!("peer-owner/{}", p.key.account())).account(),
            stake: 0,
        }))
        .collect(),
    }
}

/// A peer's commitment to its frame for `round`.
fn commit_contribution(ledger: &Replica, key: &Keypair, round: usize, frame: &[u8]) -> Extrinsic {
    ledger.sign(
        key,
        Call::CommitContribution {
            round: round as u64,
            hash: blake2_256(frame),
        },
    )
}

/// Runs the experiment.
pub fn run<B: TrainBackend>(
    config: &RunConfig,
    kernels: &dyn Kernels,
    device: &B::Device,
    options: &ContributionOptions,
) -> Result<ContributionReport, TrainerError> {
    let (tokenizer, shakespeare) = config.load_data()?;
    let milton = milton(config, &tokenizer)?;
    options.check().map_err(TrainerError::Incentive)?;
    let n = options.roles.len();
    let h = config.outer.inner_steps;
    // The inner schedule spans exactly the rounds run.
    let mut config = config.clone();
    config.inner.steps = (options.warmup_rounds + options.rounds) * h;
    let config = &config;
    let seed = config.run.seed;
    let initial: Llama<B> = initial_model(&config.model, seed, device);
    let (layout, mut global): (ParamLayout, Vec<f32>) = flatten(&initial);
    let mut momentum = vec![0.0f32; global.len()];

    let mut peers = make_peers(&options.roles, &initial, &shakespeare, &milton, config)?;

    // The validator evaluates on both corpora.
    let incentives = &config.incentives;
    let data = DataConfig {
        validation_batches: incentives.validator_batches,
        ..config.data.clone()
    };
    let mut batches = shakespeare.validation_windows(&data, seed);
    batches.extend(milton.validation_windows(&data, seed));
    let batch_size = data.validation_batch_size;
    let evaluator = Evaluator::new(eval_model(&initial), batches, batch_size, device.clone());

    let validator = dev_key("validator");
    let owner = dev_key("owner");
    let genesis = genesis(&validator, &owner, &peers, incentives);
    let mut ledger = Replica::create(&options.ledger, genesis).map_err(err)?;
    let uid = |i: usize| (i + 1) as u16;

    let start_loss = evaluator.loss(&global);
    let mut totals = vec![(0.0f64, 0.0f64, 0.0f64); n];
    let mut rejected: Vec<Vec<(usize, String)>> = vec![Vec::new(); n];
    let mut evaluations = 0;
    let mut monte_carlo_errors = Vec::new();
    let (mut training_secs, mut scoring_secs, mut stall_secs) = (0.0, 0.0, 0.0);
    let quant = pseudo_gradient::quant_config(&config.outer);
    let rounds_total = options.warmup_rounds + options.rounds;

    std::thread::scope(|scope| -> Result<(), TrainerError> {
        let mut pending: Option<std::thread::ScopedJoinHandle<'_, Scored>> = None;
        for round in 0..=rounds_total {
            // 1. Training (beside the previous round's scoring).
            let started = Instant::now();
            if round < rounds_total {
                train_round(
                    &mut peers,
                    round * h..(round + 1) * h,
                    &shakespeare,
                    &milton,
                    config,
                    device,
                );
            }
            training_secs += started.elapsed().as_secs_f64();

            // Warm-up: the honest peers alone, unscored (the others join afterwards).
            if round < options.warmup_rounds {
                let mut deltas = Vec::new();
                for peer in peers.iter().filter(|p| p.data.is_some()) {
                    let (_, local) = flatten(&peer.model);
                    let bytes = frame(kernels, &layout, &global, &local, quant)?;
                    deltas.push(dequantize(kernels, &layout, &bytes)?);
                }
                let mean = mean_of(&deltas, &(0..deltas.len()).collect::<Vec<_>>());
                outer_step(
                    config,
                    &mut global,
                    &mut momentum,
                    &mean,
                    round,
                    rounds_total,
                )?;
                restart_from(&mut peers, &global, device);
                continue;
            }

            // 2. The previous round's scores become weights: committed now, revealed next block.
            let waited = Instant::now();
            let mut commit_weights = Vec::new();
            let mut reveal = None;
            if let Some(handle) = pending.take() {
                let scored = handle.join().expect("scoring thread panicked");
                stall_secs += waited.elapsed().as_secs_f64();
                scoring_secs += scored.secs;
                evaluations += scored.scores.evaluations;
                monte_carlo_errors.extend(scored.monte_carlo_error);
                for j in 0..n {
                    let shapley = scored.scores.shapley[j];
                    let fisher = scored.scores.fisher.as_ref().map_or(0.0, |f| f[j]);
                    totals[j].0 += shapley;
                    totals[j].1 += fisher;
                    totals[j].2 += scored.leave_one_out[j];
                    if let Some(why) = &scored.scores.rejected[j] {
                        tracing::info!(round = scored.round, peer = j, reason = %why, "contribution filtered out");
                        rejected[j].push((scored.round, why.to_string()));
                    }
                }
                let row = to_u16_row(&scored.scores.weights);
                let uids: Vec<u16> = (0..n).map(uid).collect();
                let salt = vec![scored.round as u16, 0x5a17];
                let hash = weights_commitment(&validator.account(), 1, &uids, &row, &salt, 0);
                commit_weights.push(ledger.sign(&validator, Call::CommitWeights { hash }));
                reveal = Some(Call::RevealWeights {
                    uids,
                    values: row,
                    salt,
                    version_key: 0,
                });
            }
            if round == rounds_total {
                block(&mut ledger, &validator, commit_weights)?;
                if let Some(call) = reveal {
                    let ext = ledger.sign(&validator, call);
                    block(&mut ledger, &validator, vec![ext])?;
                }
                block(&mut ledger, &validator, vec![])?;
                break;
            }

            // 3. Frames, commitments, reveal.
            let mut frames: Vec<Option<Vec<u8>>> = vec![None; n];
            for (j, peer) in peers.iter().enumerate() {
                if peer.data.is_some() {
                    let (_, local) = flatten(&peer.model);
                    frames[j] = Some(frame(kernels, &layout, &global, &local, quant)?);
                }
            }
            let honest_norm = {
                let mut norms: Vec<f64> = frames
                    .iter()
                    .flatten()
                    .map(|f| frame_norm(kernels, &layout, f))
                    .collect::<Result<_, _>>()?;
                norms.sort_by(f64::total_cmp);
                norms.get(norms.len() / 2).copied().unwrap_or(1e-3)
            };
            for (j, peer) in peers.iter().enumerate() {
                if peer.role == Role::Lazy {
                    let noise = noise(
                        global.len(),
                        honest_norm,
                        seed ^ ((round as u64) << 8) ^ j as u64,
                    );
                    let local: Vec<f32> = global.iter().zip(&noise).map(|(g, e)| g - e).collect();
                    frames[j] = Some(frame(kernels, &layout, &global, &local, quant)?);
                }
            }
            let commits: Vec<Extrinsic> = (0..n)
                .filter_map(|j| {
                    frames[j]
                        .as_ref()
                        .map(|f| commit_contribution(&ledger, &peers[j].key, round, f))
                })
                .collect();
            let mut first_block = commits;
            first_block.extend(commit_weights);
            block(&mut ledger, &validator, first_block)?;
            // Revealed: the copycat takes the first peer's frame and commits to it.
            let mut second_block = Vec::new();
            for j in 0..n {
                if peers[j].role == Role::Copycat {
                    frames[j] = frames[0].clone();
                    if let Some(f) = &frames[j] {
                        second_block.push(commit_contribution(&ledger, &peers[j].key, round, f));
                    }
                }
            }
            if let Some(call) = reveal {
                second_block.push(ledger.sign(&validator, call));
            }
            block(&mut ledger, &validator, second_block)?;
            block(&mut ledger, &validator, vec![])?;

            // 4. The validator decodes, filters, aggregates.
            let scoring_started = Instant::now();
            let committed_at: Vec<u64> = (0..n)
                .map(|j| {
                    ledger
                        .state()
                        .contributions
                        .iter()
                        .find(|c| c.round == round as u64 && c.uid == uid(j))
                        .map_or(u64::MAX, |c| c.sequence)
                })
                .collect();
            let mut deltas = Vec::with_capacity(n);
            for frame in &frames {
                let frame = frame.as_deref().unwrap_or_default();
                deltas.push(dequantize(kernels, &layout, frame).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "undecodable frame: scored as non-finite");
                    vec![f32::NAN; layout.len()]
                }));
            }
            let inputs = RoundInputs {
                global: global.clone(),
                momentum: momentum.clone(),
                deltas,
                lr: outer_lr(config, round, rounds_total),
                mu: config.outer.momentum,
            };
            let base_loss = evaluator.loss(&global);
            let (gradient, fisher) =
                curvature(&initial, &global, evaluator.batches(), batch_size, device);
            let inputs = Arc::new(inputs);
            let mut coalitions = {
                let (inputs, evaluator) = (inputs.clone(), &evaluator);
                Coalitions::new((0..n).collect(), move |s: &[usize]| {
                    inputs.game(evaluator, kernels, base_loss).value(s)
                })
            };
            let verdict = {
                let updates: Vec<&[f32]> = inputs.deltas.iter().map(Vec::as_slice).collect();
                filter_round(
                    &updates,
                    &committed_at,
                    &mut coalitions,
                    &incentives.scoring,
                )
            };
            let survivors: Vec<usize> = (0..n).filter(|j| verdict[*j].is_none()).collect();
            if survivors.is_empty() {
                tracing::error!(round, "every contribution was filtered out; θ unchanged");
            } else {
                let mean = mean_of(&inputs.deltas, &survivors);
                outer_step(
                    config,
                    &mut global,
                    &mut momentum,
                    &mean,
                    round,
                    rounds_total,
                )?;
            }
            restart_from(&mut peers, &global, device);
            let main_thread_secs = scoring_started.elapsed().as_secs_f64();
            scoring_secs += main_thread_secs;
            stall_secs += main_thread_secs;

            // 5. Shapley, Fisher and the ground truth beside the next round's training.
            let scoring = &incentives.scoring;
            pending = Some(scope.spawn(move || {
                let started = Instant::now();
                let updates: Vec<&[f32]> = inputs.deltas.iter().map(Vec::as_slice).collect();
                let curvature = Curvature {
                    gradient: &gradient,
                    fisher: &fisher,
                };
                let scores = value_round(
                    &updates,
                    verdict,
                    &mut coalitions,
                    Some(&curvature),
                    scoring,
                    seed ^ round as u64,
                );
                // Experiment 3 for free: every coalition is memoised after the exact values.
                let monte_carlo_error = (scores.permutations == 0).then(|| {
                    let estimate = monte_carlo(
                        &mut coalitions,
                        scoring.permutations,
                        0.0,
                        seed ^ round as u64,
                    );
                    let survivors: Vec<f64> = (0..n)
                        .filter(|j| scores.rejected[*j].is_none())
                        .map(|j| scores.shapley[j])
                        .collect();
                    relative_error(&estimate.values, &survivors)
                });
                let leave_one_out = marginal_against_accepted(&mut coalitions, &scores);
                Scored {
                    round,
                    scores,
                    leave_one_out,
                    monte_carlo_error,
                    secs: started.elapsed().as_secs_f64(),
                }
            }));
        }
        Ok(())
    })?;

    let end_loss = evaluator.loss(&global);
    let state = ledger.state();
    let total_emission: u64 = state.neurons.iter().map(|x| x.total_emission).sum();
    let share = |e: u64| e as f64 / total_emission.max(1) as f64;
    let peers_report: Vec<PeerReport> = (0..n)
        .map(|j| {
            let neuron = &state.neurons[uid(j) as usize];
            PeerReport {
                role: options.roles[j],
                uid: uid(j),
                hotkey: AccountId::ss58(&neuron.hotkey),
                shapley: totals[j].0,
                fisher: totals[j].1,
                leave_one_out: totals[j].2,
                rejected: rejected[j].clone(),
                emission: neuron.total_emission,
                emission_share: share(neuron.total_emission),
            }
        })
        .collect();
    let column = |f: fn(&PeerReport) -> f64| peers_report.iter().map(f).collect::<Vec<f64>>();
    let truth = column(|p| p.leave_one_out);
    Ok(ContributionReport {
        spearman_shapley: spearman(&column(|p| p.shapley), &truth),
        spearman_fisher: spearman(&column(|p| p.fisher), &truth),
        lazy_and_copycat_share: peers_report
            .iter()
            .filter(|p| matches!(p.role, Role::Lazy | Role::Copycat))
            .map(|p| p.emission_share)
            .fold(0.0, |a, b| a + b),
        validator_emission_share: share(state.neurons[0].total_emission),
        peers: peers_report,
        validator_loss: (start_loss, end_loss),
        training_secs,
        scoring_secs,
        scoring_stall_secs: stall_secs,
        evaluations,
        monte_carlo_relative_error: monte_carlo_errors,
        rounds: rounds_total,
        blocks: state.block,
        epochs: state.epochs,
    })
}

/// What the validator scores a round from.
struct RoundInputs {
    global: Vec<f32>,
    momentum: Vec<f32>,
    deltas: Vec<Vec<f32>>,
    lr: f32,
    mu: f32,
}

impl RoundInputs {
    fn game<'a, B: burn::tensor::backend::Backend>(
        &'a self,
        evaluator: &'a Evaluator<B>,
        kernels: &'a dyn Kernels,
        base_loss: f64,
    ) -> RoundGame<'a, B> {
        RoundGame {
            evaluator,
            kernels,
            global: &self.global,
            momentum: &self.momentum,
            deltas: &self.deltas,
            lr: self.lr,
            mu: self.mu,
            base_loss,
        }
    }
}

/// The ground truth of experiment 1, for each peer j: how much the round's accepted aggregate
/// A gains from j — `v(A) − v(A ∖ {j})` if j is in A (leave-one-out), `v(A ∪ {j}) − v(A)` if
/// it was filtered out (what letting it in would have done). Independent of j's own verdict,
/// and unlike leave-one-out over all peers it tells an original from its copy: removing
/// either of two identical updates changes `v` equally, adding a copy to A does not.
fn marginal_against_accepted<F: FnMut(&[usize]) -> f64>(
    game: &mut Coalitions<F>,
    scores: &RoundScores,
) -> Vec<f64> {
    let n = scores.rejected.len();
    game.set_players((0..n).collect());
    let accepted: Vec<bool> = scores.rejected.iter().map(Option::is_none).collect();
    let base = game.value(&accepted);
    (0..n)
        .map(|j| {
            let mut other = accepted.clone();
            other[j] = !other[j];
            let v = game.value(&other);
            if accepted[j] { base - v } else { v - base }
        })
        .collect()
}

/// Each training peer's steps `steps` on its own data.
fn train_round<B: TrainBackend>(
    peers: &mut [Peer<B>],
    steps: std::ops::Range<usize>,
    shakespeare: &Dataset,
    milton: &Dataset,
    config: &RunConfig,
    device: &B::Device,
) {
    let batch = config.inner.batch_size;
    for peer in peers.iter_mut() {
        let dataset = if peer.role == Role::Milton {
            milton
        } else {
            shakespeare
        };
        let Some(order) = peer.data.as_ref() else {
            continue;
        };
        for s in steps.clone() {
            let mut usage = dataset.usage();
            let windows = dataset.batch(order, (s * batch) as u64, batch, &mut usage);
            let (next, _) = train_step(
                peer.model.clone(),
                &mut peer.optimizer,
                &windows,
                batch,
                s,
                config,
                device,
            );
            peer.model = next;
        }
    }
}

/// Every peer continues from the new global parameters.
fn restart_from<B: TrainBackend>(peers: &mut [Peer<B>], global: &[f32], device: &B::Device) {
    for peer in peers.iter_mut() {
        peer.model = load(peer.model.clone(), global, device);
    }
}

/// The wire frame of `global − local`, as a peer sends it.
fn frame(
    kernels: &dyn Kernels,
    layout: &ParamLayout,
    global: &[f32],
    local: &[f32],
    quant: Option<sinter_kernels::QuantConfig>,
) -> Result<Vec<u8>, TrainerError> {
    let set = pseudo_gradient::build(kernels, layout, global, local, None, quant)?;
    Ok(encode(&set, 3)?)
}

/// A received frame as the whole model's pseudo-gradient.
fn dequantize(
    kernels: &dyn Kernels,
    layout: &ParamLayout,
    frame: &[u8],
) -> Result<Vec<f32>, TrainerError> {
    let mut out = vec![0.0f32; layout.len()];
    pseudo_gradient::accumulate_frame(kernels, &layout.slots, frame, &mut out, 1.0)?;
    Ok(out)
}

fn frame_norm(
    kernels: &dyn Kernels,
    layout: &ParamLayout,
    frame: &[u8],
) -> Result<f64, TrainerError> {
    let delta = dequantize(kernels, layout, frame)?;
    Ok(delta
        .iter()
        .map(|d| (*d as f64).powi(2))
        .sum::<f64>()
        .sqrt())
}

/// Uniform noise of L2 norm `norm`: what a lazy peer sends to look busy.
fn noise(len: usize, norm: f64, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let raw: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let raw_norm = raw.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    let scale = (norm / raw_norm.max(f64::MIN_POSITIVE)) as f32;
    raw.iter().map(|v| v * scale).collect()
}
