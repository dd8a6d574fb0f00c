//! One real peer of a DiLoCo run: the same rounds as [`crate::simulate`], with the other
//! workers in other processes. At the start of each round the group agrees on its members
//! (which fixes this peer's data shard); after `H` local steps the pseudo-gradient is split
//! into one shard per member, all-reduced through [`sinter_comms::group`], and the outer
//! Nesterov step applied. Every member computes the same mean in the same order, so all end
//! the round with bit-identical parameters — equal to the simulation's at the same settings.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;
use sha2::Digest;
use sinter_comms::group::{Arrival, Group, GroupError, Reduction};
use sinter_comms::{CodecLimits, decode, encode};
use sinter_kernels::Kernels;

use crate::config::{Mode, RunConfig};
use crate::data::{Dataset, ShardSampler};
use crate::eval::validation_loss;
use crate::inner::{eval_model, inner_optimizer, train_step};
use crate::model::Llama;
use crate::params::{ParamLayout, ParamSlot, flatten, load};
use crate::simulate::{EvalPoint, Observer, Summary, allreduce_factor, outer_step};
use crate::{TrainerError, pseudo_gradient};

/// How a peer runs.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// Stop after this many outer rounds (otherwise when the config's steps are done).
    pub max_rounds: Option<usize>,
    /// Wait for this many peers (this one included) before the first round…
    pub min_peers: usize,
    /// …but start with whoever is there after this long.
    pub start_wait: Duration,
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
    /// SHA-256 of the final global parameters (little-endian f32 bytes).
    pub params_sha256: String,
    /// Bytes this peer received.
    pub bytes_received: u64,
    /// Requests and contributions refused, per peer.
    pub rejected_by_peer: std::collections::BTreeMap<String, u64>,
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

/// SHA-256 of parameters as little-endian f32 bytes, hex.
pub fn params_sha256(values: &[f32]) -> String {
    let mut hasher = sha2::Sha256::new();
    for v in values {
        hasher.update(v.to_le_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn group_error(e: GroupError) -> TrainerError {
    TrainerError::Network(e.to_string())
}

/// Combines the contributions to one shard: each is decoded and checked against the shard's
/// slots (a bad one is rejected with its reason and left out); the rest are averaged.
fn reduce_shard(
    kernels: &dyn Kernels,
    slots: &[ParamSlot],
    arrivals: &[Arrival],
    config: &RunConfig,
) -> Reduction {
    let quant = pseudo_gradient::quant_config(&config.outer);
    let mut sets = Vec::new();
    let mut contributors = Vec::new();
    let mut rejected = Vec::new();
    for a in arrivals {
        match decode(&a.frame, &CodecLimits::default())
            .map_err(TrainerError::from)
            .and_then(|set| pseudo_gradient::check(slots, &set).map(|()| set))
        {
            Ok(set) => {
                sets.push(set);
                contributors.push(a.from);
            }
            Err(e) => rejected.push((a.from, e.to_string())),
        }
    }
    let frame = pseudo_gradient::mean(kernels, slots, &sets, quant)
        .and_then(|set| Ok(encode(&set, 3)?))
        .unwrap_or_else(|e| {
            // E.g. a mean too large for f16 scales. Every member then skips this shard's
            // parameters for the round (an empty frame), so all stay identical.
            tracing::error!(error = %e, "reduction failed; the shard is skipped this round");
            Vec::new()
        });
    Reduction {
        frame,
        contributors,
        rejected,
    }
}

/// Runs this peer until the config's steps (or `max_rounds`) are done, or `stop` is set (then
/// after the current round). `runtime` drives the network while training runs on this thread.
#[allow(clippy::too_many_arguments)]
pub fn run_peer<B: AutodiffBackend>(
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
    if config.outer.mode != Mode::Diloco || config.outer.warmup_ddp_steps > 0 {
        return Err(TrainerError::Network(
            "`launch run` trains DiLoCo without a data-parallel warm start: set outer.mode = \"diloco\" and outer.warmup_ddp_steps = 0".into(),
        ));
    }
    let started = Instant::now();
    B::seed(device, config.run.seed);
    let mut model: Llama<B> = config.model.init(device);
    let (layout, mut global): (ParamLayout, Vec<f32>) = flatten(&model);
    let validation =
        dataset.validation_windows(&config.data, config.model.context, config.run.seed);
    let evaluate = |model: &Llama<B>| {
        validation_loss(
            &eval_model(model),
            &validation,
            config.data.validation_batch_size,
            device,
        )
    };
    let mut evals = Vec::new();
    let mut tokens = 0u64;
    let mut bytes_sent = 0u64;
    let mut bytes_received = 0u64;
    let mut payload_bytes = 0.0f64;
    let mut peers_seen = std::collections::BTreeSet::new();
    let initial_val_loss = evaluate(&model);
    let point = EvalPoint {
        round: 0,
        step: 0,
        tokens: 0,
        val_loss: initial_val_loss,
        bytes_sent: 0,
    };
    observer.on_eval(&point);
    evals.push(point);

    let live = runtime.block_on(group.wait_for_peers(options.min_peers, options.start_wait));
    tracing::info!(peers = live, "starting");
    let steps = config.inner.steps;
    let h = config.outer.inner_steps;
    let total_rounds = steps.div_ceil(h);
    let batch = config.inner.batch_size;
    let mut optimizer = inner_optimizer::<B>(&config.inner);
    let mut momentum = vec![0.0f32; global.len()];
    let mut sampler: Option<(usize, usize, ShardSampler)> = None;
    let mut residual = (config.outer.error_feedback
        && config.outer.quant == crate::config::Quant::Int8)
        .then(|| vec![0.0f32; global.len()]);
    let mut round = 0usize;
    let mut step = 0usize;
    let mut workers = 1;
    while step < steps && options.max_rounds.is_none_or(|m| round < m) {
        if stop.load(Ordering::Relaxed) {
            tracing::info!(round, "leaving the run");
            break;
        }
        let members = runtime
            .block_on(group.form(round as u64))
            .map_err(group_error)?;
        let index = members
            .iter()
            .position(|m| *m == group.me())
            .expect("form() only returns groups with this peer");
        let n = members.len();
        workers = n;
        peers_seen.extend(members.iter().map(|m| m.to_string()));
        // Data shards follow membership: keep the sampler while the group is unchanged.
        if sampler
            .as_ref()
            .is_none_or(|(i, w, _)| (*i, *w) != (index, n))
        {
            let s = ShardSampler::new(
                dataset.shard(index, n),
                config.model.context,
                config.run.seed,
                index,
            )?;
            sampler = Some((index, n, s));
        }
        let (_, _, shard_sampler) = sampler.as_mut().expect("set above");
        let end = (step + h).min(steps);
        let local_started = Instant::now();
        for s in step..end {
            let windows = shard_sampler.next_batch(dataset, batch);
            let (next, loss) =
                train_step(model, &mut optimizer, &windows, batch, s, config, device);
            model = next;
            tokens += (batch * config.model.context * n) as u64;
            observer.on_step(index, s + 1, loss, tokens);
        }
        let compute_secs = local_started.elapsed().as_secs_f64();
        let (_, local) = flatten(&model);
        let quant = pseudo_gradient::quant_config(&config.outer);
        let bounds = pseudo_gradient::shard_bounds(&layout, n);
        let parts = match pseudo_gradient::build(
            kernels,
            &layout,
            &global,
            &local,
            residual.as_deref_mut(),
            quant,
        ) {
            Ok(set) => {
                payload_bytes += allreduce_factor(n) * set.payload_bytes() as f64 / n as f64;
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
                vec![Vec::new(); n]
            }
        };
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
        bytes_sent += result.bytes_sent;
        bytes_received += result.bytes_received;
        let mut delta = vec![0.0f32; global.len()];
        for (k, shard) in result.shards.iter().enumerate() {
            if shard.frame.is_empty() {
                continue;
            }
            let applied = decode(&shard.frame, &CodecLimits::default())
                .map_err(TrainerError::from)
                .and_then(|set| {
                    pseudo_gradient::accumulate(kernels, slots_of(k), &set, &mut delta, 1.0)
                });
            if let Err(e) = applied {
                tracing::warn!(round, shard = k, from = %shard.from, error = %e, "reduced shard unusable; its parameters skip this round");
            }
        }
        outer_step(
            kernels,
            config,
            &mut global,
            &mut momentum,
            &delta,
            round,
            total_rounds,
        )?;
        model = load(model, &global, device);
        round += 1;
        tracing::info!(
            round,
            members = n,
            compute_secs,
            comm_secs = comm_started.elapsed().as_secs_f64(),
            bytes_sent = result.bytes_sent,
            params = %&params_sha256(&global)[..16],
            "round done"
        );
        let every = config.eval.every_steps;
        if end / every > step / every || end == steps {
            let point = EvalPoint {
                round,
                step: end,
                tokens,
                val_loss: evaluate(&model),
                bytes_sent,
            };
            observer.on_eval(&point);
            evals.push(point);
        }
        step = end;
    }
    let wall_secs = started.elapsed().as_secs_f64();
    let params = layout.len();
    let summary = Summary {
        initial_val_loss,
        final_val_loss: evals.last().map_or(initial_val_loss, |p| p.val_loss),
        tokens,
        workers,
        inner_steps: h,
        steps: step,
        rounds: round,
        mode: config.outer.mode,
        quant: config.outer.quant,
        params,
        bytes_sent_per_worker: bytes_sent,
        payload_bytes_per_worker: payload_bytes.round() as u64,
        ddp_equivalent_bytes_per_worker: (allreduce_factor(workers)
            * params as f64
            * 4.0
            * step as f64)
            .round() as u64,
        rejected_contributions: group.rejected_counts().values().sum::<u64>() as usize,
        wall_secs,
        tokens_per_sec: tokens as f64 / wall_secs,
        config_hash: config.hash(),
    };
    Ok(PeerOutcome {
        summary: PeerSummary {
            summary,
            peer_id: group.me().to_string(),
            peers_seen: peers_seen.into_iter().collect(),
            params_sha256: params_sha256(&global),
            bytes_received,
            rejected_by_peer: group
                .rejected_counts()
                .into_iter()
                .map(|(p, c)| (p.to_string(), c))
                .collect(),
        },
        evals,
        model: eval_model(&model),
    })
}
