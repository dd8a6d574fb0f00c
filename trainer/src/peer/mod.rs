//! One real peer of a DiLoCo run: the same rounds as [`crate::simulate`], with the other
//! workers in other processes. At the start of each round the group agrees on its members
//! (which fixes this peer's data shard); after `H` local steps the pseudo-gradient is split
//! into one shard per member, all-reduced through [`sinter_comms::group`], and the outer
//! Nesterov step applied. Every member computes the same mean in the same order, so all end
//! the round with bit-identical parameters — equal to the simulation's at the same settings.
//! Each round starts with the members comparing the hash of their [`RoundState`]: a joiner,
//! or a member whose hash is not the majority's, fetches the majority's state from them.
//!
//! | module | what |
//! |---|---|
//! | [`validator`] | commitments, and with stake the scoring of the others, through the `Ledger` |
//! | [`identity`] | which ledger uid a member is: the signed address it serves |
//! | [`contribution`] | a peer's contribution to a round as one committed blob |
//! | `reduce` | a shard owner's checked mean of its shard |
//! | `faults` | test-only fault hooks |

use crate::fused::TrainBackend;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use sinter_comms::group::{Arrival, Group, GroupError, PeerStats};
use sinter_comms::net::PeerId;
use sinter_comms::{CodecLimits, encode};
use sinter_kernels::Kernels;
use sinter_mechanism::Ledger;

use crate::checkpoint::{Checkpointing, Snapshot};
use crate::config::{Mode, Quant, RunConfig};
use crate::data::{DataUsage, Dataset, position};
use crate::eval::EvalPoint;
use crate::eval::validation_loss;
use crate::inner::{eval_model, inner_optimizer, train_step};
use crate::model::Llama;
use crate::outer::{CANONICAL, outer_lr, outer_step};
use crate::params::{ParamLayout, flatten, initial_model, load};
use crate::round_state::{RoundState, sha256_hex};
pub use crate::simulate::params_sha256;
use crate::simulate::{Observer, Summary, allreduce_factor};
use crate::{TrainerError, pseudo_gradient};
use validator::{IncentiveSummary, RunIncentives, Scoring};

pub mod contribution;
mod faults;
pub mod identity;
mod reduce;
pub mod validator;

use faults::{lazy_for_test, perturb_for_test, slow_for_test};
use reduce::reduce_shard;

/// How a peer runs.
#[derive(Clone)]
pub struct PeerOptions {
    /// Stop after this many outer rounds (otherwise when the config's steps are done).
    pub max_rounds: Option<usize>,
    /// Wait for this many peers (this one included) before the first round…
    pub min_peers: usize,
    /// …but start with whoever is there after this long.
    pub start_wait: Duration,
    /// Write checkpoints of the shared state here every `checkpoint.every_rounds` rounds.
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// Start from this checkpoint's state (the group's majority still wins if it differs).
    pub resume: Option<crate::checkpoint::Snapshot>,
    /// The run's ledger: commit contributions to it and, with stake, score the others.
    pub ledger: Option<Arc<dyn Ledger>>,
}

/// What a peer's run produced: the simulation's summary plus what only a real run knows.
#[derive(Debug, Clone, Serialize)]
pub struct PeerSummary {
    /// The same fields as a simulation's summary (workers = the last round's group size).
    #[serde(flatten)]
    pub summary: Summary,
    /// This peer's id.
    pub peer_id: String,
    /// Every peer seen in a group during the run.
    pub peers_seen: Vec<String>,
    /// Bytes this peer received.
    pub bytes_received: u64,
    /// Requests and contributions refused, per peer.
    pub rejected_by_peer: std::collections::BTreeMap<String, u64>,
    /// The round this peer joined a run already under way (none: it was there from the start).
    pub joined_at_round: Option<usize>,
    /// Rounds at whose start this peer fetched the group's state (joining, or resyncing after
    /// its own state differed from the majority's).
    pub state_fetches: Vec<usize>,
    /// The run's round count when this peer stopped.
    pub last_round: usize,
    /// Scores, emission and the scoring cost, when the run keeps a ledger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incentives: Option<IncentiveSummary>,
}

/// A peer's outcome.
pub struct PeerOutcome<B: burn::tensor::backend::Backend> {
    /// The summary.
    pub summary: PeerSummary,
    /// Every evaluation.
    pub evals: Vec<EvalPoint>,
    /// The final global model.
    pub model: Llama<B>,
}

fn group_error(e: GroupError) -> TrainerError {
    TrainerError::Network(e.to_string())
}

/// Fetches the state of `round` the group agreed on (hashed `agreed`) from its `holders`,
/// checking the hash and the round before anything is used. Returns it and its bytes.
fn fetch_agreed_state(
    group: &Group,
    runtime: &tokio::runtime::Handle,
    round: u64,
    holders: &[PeerId],
    agreed: &str,
    params: usize,
) -> Result<(RoundState, Vec<u8>), TrainerError> {
    let (blob, donors) = runtime
        .block_on(group.fetch_state(round, holders, RoundState::max_len(params)))
        .map_err(group_error)?;
    let got = sha256_hex(&blob);
    if got != agreed {
        return Err(TrainerError::Network(format!(
            "fetched state of round {round} hashes to {got}, the group's is {agreed}"
        )));
    }
    let fetched = RoundState::from_bytes(&blob, params)?;
    if fetched.round != round {
        return Err(TrainerError::Network(format!(
            "fetched state is of round {}, not {round}",
            fetched.round
        )));
    }
    tracing::info!(
        round,
        bytes = blob.len(),
        donors = ?donors.iter().map(|(d, n)| (d.to_string(), *n)).collect::<Vec<_>>(),
        "fetched the group's state"
    );
    Ok((fetched, blob))
}

/// The mean pseudo-gradient of a round from its reduced shards (a dense shard's mean, or a
/// sparse shard's bundle of its contributors' sets); a shard that does not decode leaves its
/// parameters out of this round (every member skips it alike). Canonical kernels: every
/// member decodes the same bytes to the same bits.
fn reduced_delta(
    config: &RunConfig,
    layout: &ParamLayout,
    bounds: &[std::ops::Range<usize>],
    shards: &[Arrival],
    round: usize,
) -> Vec<f32> {
    let mut delta = vec![0.0f32; layout.len()];
    for (k, shard) in shards.iter().enumerate() {
        if shard.frame.is_empty() {
            continue;
        }
        let slots = &layout.slots[bounds[k].clone()];
        let applied = match config.outer.quant {
            Quant::Sparse => sinter_comms::decode(&shard.frame, &CodecLimits::default())
                .map_err(TrainerError::from)
                .and_then(|bundle| {
                    pseudo_gradient::accumulate_bundle(
                        slots,
                        bundle,
                        shard.contributors.len(),
                        &mut delta,
                    )
                }),
            _ => pseudo_gradient::accumulate_frame(CANONICAL, slots, &shard.frame, &mut delta, 1.0),
        };
        if let Err(e) = applied {
            tracing::warn!(round, shard = k, from = %shard.from, error = %e, "reduced shard unusable; its parameters skip this round");
        }
    }
    delta
}

/// The bytes a member sends in a round's exchange per byte of its own pseudo-gradient: dense
/// sets are all-reduced (2(N−1)/N); sparse sets reach the shards' owners ((N−1)/N), which
/// relay every member's parts to the N−1 others (on average N−1 more).
pub fn exchange_factor(config: &RunConfig, n: usize) -> f64 {
    match config.outer.quant {
        Quant::Sparse => (n as f64 - 1.0) * (n as f64 + 1.0) / n as f64,
        _ => allreduce_factor(n),
    }
}

/// What a peer counts over its run, for its summary.
#[derive(Default)]
struct Tally {
    bytes_sent: u64,
    bytes_received: u64,
    /// Quantized bytes before compression, as an all-reduce moves them.
    payload_bytes: f64,
    peers_seen: std::collections::BTreeSet<String>,
    joined_at_round: Option<usize>,
    state_fetches: Vec<usize>,
    /// The last round's group size.
    workers: usize,
    rounds_done: usize,
    steps_done: usize,
    /// What this peer trained on.
    data: DataUsage,
}

impl Tally {
    /// The run's summary (its last round and incentives still to be filled in).
    #[allow(clippy::too_many_arguments)]
    fn summary(
        self,
        config: &RunConfig,
        group: &Group,
        state: &RoundState,
        evals: &[EvalPoint],
        params: usize,
        wall_secs: f64,
        checkpoints: crate::checkpoint::CheckpointStats,
        resumed_from_round: Option<u64>,
        memory: crate::memory::MemoryStats,
    ) -> PeerSummary {
        let workers = self.workers.max(1);
        let initial_val_loss = evals.first().map_or(f32::NAN, |p| p.val_loss);
        let rejected = group.rejected_counts();
        PeerSummary {
            summary: Summary {
                initial_val_loss,
                final_val_loss: evals.last().map_or(initial_val_loss, |p| p.val_loss),
                tokens: state.tokens,
                workers,
                inner_steps: config.outer.inner_steps,
                steps: state.step as usize,
                rounds: self.rounds_done,
                mode: config.outer.mode,
                quant: config.outer.quant,
                params,
                bytes_sent_per_worker: self.bytes_sent,
                payload_bytes_per_worker: self.payload_bytes.round() as u64,
                ddp_equivalent_bytes_per_worker: (allreduce_factor(workers)
                    * params as f64
                    * 4.0
                    * self.steps_done as f64)
                    .round() as u64,
                rejected_contributions: rejected.values().sum::<u64>() as usize,
                params_sha256: params_sha256(&state.global),
                wall_secs,
                tokens_per_sec: state.tokens as f64 / wall_secs,
                config_hash: config.hash(),
                checkpoints,
                resumed_from_round,
                memory,
                data: self.data,
            },
            peer_id: group.me().to_string(),
            peers_seen: self.peers_seen.into_iter().collect(),
            bytes_received: self.bytes_received,
            rejected_by_peer: rejected
                .into_iter()
                .map(|(p, c)| (p.to_string(), c))
                .collect(),
            joined_at_round: self.joined_at_round,
            state_fetches: self.state_fetches,
            last_round: 0,
            incentives: None,
        }
    }
}

/// Groups that may form after the run's last round (see [`run_peer`]): the closing one, and
/// one more while a member of it lacks the final state.
const CLOSINGS: usize = 2;

/// Shards of the pseudo-gradient per member: the all-reduce pipelines shard by shard, so
/// that the all-gather of early shards overlaps the reduce-scatter of later ones.
pub const SHARDS_PER_MEMBER: usize = 4;

/// Runs this peer until the config's steps (or `max_rounds`) are done, or `stop` is set (then
/// after the current round). `runtime` drives the network while training runs on this thread.
///
/// A peer that finds the run under way (or is left out of a round) joins the next round
/// without a state and fetches the one most members hold; a member whose state differs from
/// the majority's does the same.
///
/// The run ends with a closing group: after the last round one more forms, without
/// training, so that a peer waiting to join (left out of the last rounds) is taken in and
/// fetches the final state before the others leave; while a member of it lacks that state,
/// the members form once more, which they can only do once it has fetched it.
#[allow(clippy::too_many_arguments)]
pub fn run_peer<B: TrainBackend>(
    config: &RunConfig,
    dataset: &Dataset,
    kernels: &dyn Kernels,
    device: &B::Device,
    group: &Group,
    runtime: &tokio::runtime::Handle,
    options: &PeerOptions,
    stop: &AtomicBool,
    observer: &mut dyn Observer,
) -> Result<PeerOutcome<B::InnerBackend>, TrainerError> {
    if config.outer.mode != Mode::Diloco
        || config.outer.warmup_ddp_steps > 0
        || config.outer.delayed_outer_step
    {
        return Err(TrainerError::Network(
            "`launch run` trains DiLoCo without a data-parallel warm start or a delayed outer step: set outer.mode = \"diloco\", outer.warmup_ddp_steps = 0 and outer.delayed_outer_step = false".into(),
        ));
    }
    let started = Instant::now();
    let mut model: Llama<B> = initial_model(&config.model, config.run.seed, device);
    let (layout, global): (ParamLayout, Vec<f32>) = flatten(&model);
    let validation = dataset.validation_windows(&config.data, config.run.seed);
    let evaluate = |model: &Llama<B>| {
        validation_loss(
            &eval_model(model),
            &validation,
            config.data.validation_batch_size,
            device,
        )
    };
    let steps = config.inner.steps;
    let h = config.outer.inner_steps;
    let total_rounds = steps.div_ceil(h);
    let batch = config.inner.batch_size;

    let mut joining = group.run_progress().under_way;
    if !joining {
        let live = runtime.block_on(group.wait_for_peers(options.min_peers, options.start_wait));
        tracing::info!(peers = live, "starting");
        joining = group.run_progress().under_way;
    }
    let mut state = RoundState {
        round: 0,
        step: 0,
        tokens: 0,
        momentum: vec![0.0f32; global.len()],
        global,
    };
    if let Some(snapshot) = &options.resume {
        if snapshot.meta.run_id != config.hash() || snapshot.global.len() != layout.len() {
            return Err(TrainerError::Resume(format!(
                "the checkpoint belongs to run {}, this config is run {}",
                snapshot.meta.run_id,
                config.hash()
            )));
        }
        let progress = group.run_progress();
        if progress.under_way && progress.round > snapshot.meta.round {
            // The run moved on while this peer was away: its checkpoint is stale, and the
            // group's current state is fetched as any newcomer's would be.
            tracing::info!(
                checkpoint_round = snapshot.meta.round,
                run_round = progress.round,
                "the run is past the checkpoint's round: joining it where it is"
            );
        } else {
            state = snapshot.round_state();
            model = load(model, &state.global, device);
            joining = false;
            tracing::info!(round = state.round, "resuming from a checkpoint");
        }
    }
    let mut incentives = options.ledger.clone().map(|ledger| {
        RunIncentives::new(Scoring::for_run(
            config, dataset, &model, device, ledger, group, runtime, &layout,
        ))
    });
    let lazy = lazy_for_test();
    let mut checkpointing = options
        .checkpoint_dir
        .as_deref()
        .and_then(|dir| Checkpointing::new(dir, config));
    let mut evals = Vec::new();
    if !joining {
        let point = EvalPoint {
            round: 0,
            step: 0,
            tokens: 0,
            val_loss: evaluate(&model),
            bytes_sent: 0,
        };
        observer.on_eval(&point);
        evals.push(point);
    }
    // A joiner asks for the next round, or for the closing group once the run is at its end.
    let next_round = |after: usize| match after < total_rounds {
        true => after
            .max(group.run_progress().round as usize)
            .saturating_add(1)
            .min(total_rounds),
        false => after.saturating_add(1),
    };
    // The state a round starts from (a closing group's is the run's last); a joiner's round
    // is the one the group that took it in names.
    let state_round = |round: usize| round.min(total_rounds) as u64;
    let mut round = if joining {
        next_round(0)
    } else {
        state.round as usize
    };
    let mut tally = Tally {
        data: dataset.usage(),
        ..Tally::default()
    };
    let mut optimizer = inner_optimizer::<B>(&config.inner);
    let order = dataset.order(config.run.seed);
    let mut residual =
        pseudo_gradient::keeps_residual(&config.outer).then(|| vec![0.0f32; state.global.len()]);
    let mut last_group: Option<(u64, Vec<PeerId>)> = None;
    while round < total_rounds + CLOSINGS && options.max_rounds.is_none_or(|m| round < m) {
        if stop.load(Ordering::Relaxed) {
            tracing::info!(round, "leaving the run");
            break;
        }
        let round_started = Instant::now();
        let held = (!joining).then(|| {
            let blob = state.to_bytes();
            let hash = sha256_hex(&blob);
            group.offer_state(state_round(round), blob);
            hash
        });
        let formed = match runtime.block_on(group.form(round as u64, held.clone())) {
            Ok(formed) => {
                // A joiner is taken into the first group that forms after it asked.
                round = formed.round as usize;
                formed
            }
            Err(GroupError::NotInGroup { .. }) => {
                // Too late for this round: join the next one, fetching its state.
                round = next_round(round);
                tracing::info!(round, "left out of a round; joining the next");
                joining = true;
                continue;
            }
            Err(e) => return Err(group_error(e)),
        };
        let (agreed, holders) = formed.agreed_state().ok_or_else(|| {
            TrainerError::Network(format!("no member of round {round} holds a state"))
        })?;
        if held.as_ref() != Some(&agreed) {
            let (fetched, blob) = fetch_agreed_state(
                group,
                runtime,
                state_round(round),
                &holders,
                &agreed,
                layout.len(),
            )?;
            if joining {
                tally.joined_at_round = Some(round);
            } else {
                tracing::warn!(
                    round,
                    "this peer's state differed from the majority's; resynced"
                );
            }
            state = fetched;
            model = load(model, &state.global, device);
            optimizer = inner_optimizer::<B>(&config.inner);
            if let Some(r) = residual.as_mut() {
                r.fill(0.0);
            }
            tally.state_fetches.push(round);
            group.offer_state(state_round(round), blob);
            joining = false;
            if evals.is_empty() {
                let point = EvalPoint {
                    round,
                    step: state.step as usize,
                    tokens: state.tokens,
                    val_loss: evaluate(&model),
                    bytes_sent: tally.bytes_sent,
                };
                observer.on_eval(&point);
                evals.push(point);
            }
        }
        if round >= total_rounds {
            // The closing group: nothing to train; done once every member holds the state.
            if formed.states.iter().all(|s| s.as_ref() == Some(&agreed)) {
                break;
            }
            round += 1;
            continue;
        }
        let members = formed.members;
        last_group = Some((round as u64, members.clone()));
        let index = members
            .iter()
            .position(|m| *m == group.me())
            .expect("form() only returns groups with this peer");
        let n = members.len();
        tally.workers = n;
        tally
            .peers_seen
            .extend(members.iter().map(|m| m.to_string()));
        let step = state.step as usize;
        let end = (step + h).min(steps);
        let local_started = Instant::now();
        for s in step..end {
            // The group's members read disjoint positions of the run's order, a joiner too.
            let first = position(state.tokens, config.model.context, index, batch);
            state.tokens = state
                .tokens
                .saturating_add((batch * config.model.context * n) as u64);
            if lazy {
                continue;
            }
            let windows = dataset.batch(&order, first, batch, &mut tally.data);
            let (next, loss) =
                train_step(model, &mut optimizer, &windows, batch, s, config, device);
            model = next;
            observer.on_step(index, s + 1, loss, state.tokens);
        }
        slow_for_test(round);
        let compute_secs = local_started.elapsed().as_secs_f64();
        if let Some(i) = incentives.as_mut() {
            i.trained(compute_secs);
        }
        let (_, local) = flatten(&model);
        let bounds = pseudo_gradient::shard_bounds(&layout, n * SHARDS_PER_MEMBER);
        let parts = match pseudo_gradient::build_for(
            kernels,
            &layout,
            &state.global,
            &local,
            residual.as_deref_mut(),
            &config.outer,
        ) {
            Ok(set) => {
                tally.payload_bytes += exchange_factor(config, n) * set.payload_bytes() as f64;
                pseudo_gradient::split(set, &bounds)
                    .iter()
                    .map(|s| encode(s, 3))
                    .collect::<Result<Vec<_>, _>>()?
            }
            Err(e) => {
                tracing::warn!(round, error = %e, "own pseudo-gradient unusable; sending nothing this round and resetting the optimizer");
                optimizer = inner_optimizer::<B>(&config.inner);
                if let Some(r) = residual.as_mut() {
                    r.fill(0.0);
                }
                vec![Vec::new(); bounds.len()]
            }
        };
        // Committed before the all-reduce reveals any of it.
        let own = incentives.as_ref().map(|i| i.commit(round as u64, &parts));
        let comm_started = Instant::now();
        let slots_of = |k: usize| &layout.slots[bounds[k].clone()];
        let shard_reduce = |shard: usize, arrivals: &[Arrival]| {
            let usable: Vec<Arrival> = arrivals
                .iter()
                .filter(|a| !a.frame.is_empty())
                .cloned()
                .collect();
            reduce_shard(kernels, slots_of(shard), &usable, config)
        };
        let result = runtime
            .block_on(group.all_reduce(round as u64, &members, parts, &shard_reduce))
            .map_err(group_error)?;
        tally.bytes_sent += result.bytes_sent;
        tally.bytes_received += result.bytes_received;
        let delta = reduced_delta(config, &layout, &bounds, &result.shards, round);
        let before = incentives
            .is_some()
            .then(|| (state.global.clone(), state.momentum.clone()));
        outer_step(
            config,
            &mut state.global,
            &mut state.momentum,
            &delta,
            round,
            total_rounds,
        )?;
        if let (Some(i), Some((global, momentum)), Some(own)) = (incentives.as_mut(), before, own) {
            i.score_round(
                round as u64,
                members.clone(),
                own,
                &global,
                &momentum,
                outer_lr(config, round, total_rounds),
                config.outer.momentum,
            );
        }
        perturb_for_test(round, &mut state.global);
        model = load(model, &state.global, device);
        round += 1;
        tally.rounds_done += 1;
        tally.steps_done += end - step;
        state.round = round as u64;
        state.step = end as u64;
        tracing::info!(
            round,
            members = n,
            compute_secs,
            comm_secs = comm_started.elapsed().as_secs_f64(),
            round_secs = round_started.elapsed().as_secs_f64(),
            bytes_sent = result.bytes_sent,
            bytes_received = result.bytes_received,
            params = %&params_sha256(&state.global)[..16],
            "round done"
        );
        let every = config.eval.every_steps;
        // The last round this peer runs (`--max-rounds`) is evaluated too, so that its summary
        // tells the loss it ended at.
        let last = end == steps || options.max_rounds.is_some_and(|m| round >= m);
        if end / every > step / every || last {
            let point = EvalPoint {
                round,
                step: end,
                tokens: state.tokens,
                val_loss: evaluate(&model),
                bytes_sent: tally.bytes_sent,
            };
            observer.on_eval(&point);
            evals.push(point);
        }
        if let Some(c) = checkpointing.as_mut()
            && crate::checkpoint::due(config, round, end)
        {
            let started = Instant::now();
            let members = members.iter().map(|m| m.to_string()).collect();
            c.submit(
                Snapshot::shared(config, &state, members),
                &layout,
                config,
                started,
            )?;
        }
        let (incentive, emission) = incentives
            .as_ref()
            .map_or((None, None), RunIncentives::standing);
        group.report(PeerStats {
            round: round as u64,
            step: end as u64,
            val_loss: evals.last().map(|p| f64::from(p.val_loss)),
            bytes_sent: tally.bytes_sent,
            bytes_received: tally.bytes_received,
            last_round_secs: round_started.elapsed().as_secs_f64(),
            incentive,
            emission,
        });
    }
    if joining && round >= total_rounds {
        runtime.block_on(group.leave());
        return Err(TrainerError::Network(
            "the run ended before this peer could take its state from the others".into(),
        ));
    }
    // Before leaving: validators fetch the last round's contributions from the others.
    let incentives = incentives.map(|i| i.finish(last_group.take()));
    runtime.block_on(group.leave());
    if let Some(c) = checkpointing.as_mut() {
        c.finish()?;
    }
    let summary = tally.summary(
        config,
        group,
        &state,
        &evals,
        layout.len(),
        started.elapsed().as_secs_f64(),
        checkpointing.map(|c| c.stats).unwrap_or_default(),
        options.resume.as_ref().map(|s| s.meta.round),
        crate::memory::MemoryStats::measure(kernels),
    );
    Ok(PeerOutcome {
        summary: PeerSummary {
            last_round: round.min(total_rounds),
            incentives,
            ..summary
        },
        evals,
        model: eval_model(&model),
    })
}
