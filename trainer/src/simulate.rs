//! N workers in one process: DiLoCo (local steps, then the averaged pseudo-gradient and an
//! outer Nesterov step) or the data-parallel baseline (gradients averaged every step).
//!
//! Workers take turns on the CPU (burn's flex backend already spreads each step over all
//! cores), so a run is deterministic for a given seed. Pseudo-gradients go through the real
//! path: quantize → encode → decode → dequantize-accumulate, and the bytes counted are those
//! of the frames. Bytes per worker follow a bandwidth-optimal all-reduce: `2(N−1)/N` of a
//! payload per sync.
//!
//! Data-parallel mode trains one model on the concatenation of all workers' batches: with
//! equal batches, the gradient of the mean loss equals the mean of the workers' gradients,
//! so this is exactly "gradients averaged every step" without N copies of the model.
//!
//! DiLoCo runs write checkpoints at round boundaries in the background and resume from
//! them bit-exactly (same losses, same parameters as the uninterrupted run).

use crate::fused::TrainBackend;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;
use sha2::Digest;
use sinter_comms::{CodecLimits, decode, encode};
use sinter_kernels::Kernels;

pub use crate::checkpoint::CheckpointStats;
use crate::checkpoint::{self, Checkpointing, Meta, Snapshot, restore_optimizer, worker_state};
use crate::config::{Mode, Quant, RunConfig};
use crate::data::{DataOrder, DataUsage, Dataset, position};
pub use crate::eval::EvalPoint;
use crate::eval::validation_loss;
use crate::inner::{InnerOptimizer, eval_model, inner_optimizer, train_step};
use crate::memory::MemoryStats;
use crate::model::Llama;
use crate::outer::{CANONICAL, outer_step};
use crate::params::{ParamLayout, flatten, initial_model, load};
use crate::{TrainerError, pseudo_gradient};

/// The outcome of a run, as written to `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Validation loss before training.
    pub initial_val_loss: f32,
    /// Validation loss at the end.
    pub final_val_loss: f32,
    /// Training tokens consumed by all workers.
    pub tokens: u64,
    /// Workers.
    pub workers: usize,
    /// Local steps per round (H).
    pub inner_steps: usize,
    /// Inner steps per worker.
    pub steps: usize,
    /// Outer rounds (syncs).
    pub rounds: usize,
    /// `diloco` or `ddp`.
    pub mode: Mode,
    /// `int8` or `none`.
    pub quant: Quant,
    /// Model parameters.
    pub params: usize,
    /// Bytes each worker sent: compressed frames (DiLoCo) or fp32 gradients (data-parallel).
    pub bytes_sent_per_worker: u64,
    /// The same before zstd: quantized values and scales as an all-reduce moves them.
    pub payload_bytes_per_worker: u64,
    /// What data-parallel training (fp32 gradients every step) would send for these tokens.
    pub ddp_equivalent_bytes_per_worker: u64,
    /// Worker pseudo-gradients left out of a round (non-finite or malformed).
    pub rejected_contributions: usize,
    /// SHA-256 of the final global parameters (little-endian f32 bytes): equal for a
    /// simulation and real peers at the same settings.
    pub params_sha256: String,
    /// Wall-clock seconds.
    pub wall_secs: f64,
    /// Training tokens per second.
    pub tokens_per_sec: f64,
    /// SHA-256 of the run config.
    pub config_hash: String,
    /// Checkpoints written and what they cost.
    #[serde(flatten)]
    pub checkpoints: CheckpointStats,
    /// The round this run resumed at, if it did.
    pub resumed_from_round: Option<u64>,
    /// Memory used.
    #[serde(flatten)]
    pub memory: MemoryStats,
    /// What the workers trained on.
    pub data: DataUsage,
}

/// Checkpointing and resumption of a simulation.
#[derive(Default)]
pub struct SimOptions {
    /// Write checkpoints here every `checkpoint.every_rounds` rounds and after the last.
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue from this snapshot, taken by a run of the same config.
    pub resume: Option<Snapshot>,
    /// Start from these parameters (flat, in the model's layout) instead of a fresh
    /// initialisation: fine-tuning a trained model, e.g. on another corpus.
    pub start_from: Option<Vec<f32>>,
}

/// What a simulation reports while it runs.
pub trait Observer {
    /// After each inner step of each worker (data-parallel: each global step).
    fn on_step(&mut self, _worker: usize, _step: usize, _loss: f32, _tokens: u64) {}
    /// After each evaluation.
    fn on_eval(&mut self, _point: &EvalPoint) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// SHA-256 of parameters as little-endian f32 bytes, hex.
pub fn params_sha256(values: &[f32]) -> String {
    let mut hasher = sha2::Sha256::new();
    for v in values {
        hasher.update(v.to_le_bytes());
    }
    hex::encode(hasher.finalize())
}

/// All-reduce share: the fraction of a payload each of `n` peers sends.
pub fn allreduce_factor(n: usize) -> f64 {
    2.0 * (n as f64 - 1.0) / n as f64
}

struct Worker<B: TrainBackend> {
    model: Llama<B>,
    optimizer: InnerOptimizer<B>,
    residual: Option<Vec<f32>>,
    /// Where this round's local steps started, when not at the global parameters (the
    /// delayed outer step).
    anchor: Option<Vec<f32>>,
}

struct Run<'a, B: TrainBackend> {
    config: &'a RunConfig,
    dataset: &'a Dataset,
    order: DataOrder,
    usage: DataUsage,
    kernels: &'a dyn Kernels,
    device: B::Device,
    observer: &'a mut dyn Observer,
    validation: Vec<Vec<u32>>,
    layout: ParamLayout,
    tokens: u64,
    bytes_sent: f64,
    payload_bytes: f64,
    rejected: usize,
    evals: Vec<EvalPoint>,
    checkpointing: Option<Checkpointing>,
}

impl<B: TrainBackend> Run<'_, B> {
    fn tokens_per_step(&self) -> u64 {
        (self.config.inner.batch_size * self.config.model.context) as u64
    }

    fn evaluate(&mut self, model: &Llama<B::InnerBackend>, round: usize, step: usize) -> f32 {
        let val_loss = validation_loss(
            model,
            &self.validation,
            self.config.data.validation_batch_size,
            &self.device,
        );
        let point = EvalPoint {
            round,
            step,
            tokens: self.tokens,
            val_loss,
            bytes_sent: self.bytes_sent.round() as u64,
        };
        self.observer.on_eval(&point);
        self.evals.push(point);
        val_loss
    }

    fn should_eval(&self, before: usize, after: usize) -> bool {
        let every = self.config.eval.every_steps;
        after / every > before / every || after == self.config.inner.steps
    }

    /// Data-parallel steps `from..to` on `model`: every worker's batch in one step.
    fn data_parallel(
        &mut self,
        mut model: Llama<B>,
        optimizer: &mut InnerOptimizer<B>,
        n: usize,
        from: usize,
        to: usize,
    ) -> Result<Llama<B>, TrainerError> {
        let params = self.layout.len() as f64;
        for step in from..to {
            let windows = self.dataset.batch(
                &self.order,
                position(self.tokens, self.config.model.context, 0, 0),
                n * self.config.inner.batch_size,
                &mut self.usage,
            );
            let (next, loss) = train_step(
                model,
                optimizer,
                &windows,
                n * self.config.inner.batch_size,
                step,
                self.config,
                &self.device,
            );
            model = next;
            if !loss.is_finite() {
                return Err(TrainerError::Diverged(format!(
                    "data-parallel loss is {loss} at step {step}"
                )));
            }
            self.tokens += self.tokens_per_step() * n as u64;
            let sent = allreduce_factor(n) * params * 4.0;
            self.bytes_sent += sent;
            self.payload_bytes += sent;
            self.observer.on_step(0, step + 1, loss, self.tokens);
            if self.should_eval(step, step + 1) {
                self.evaluate(
                    &eval_model(&model),
                    (step + 1) / self.config.outer.inner_steps,
                    step + 1,
                );
            }
        }
        Ok(model)
    }

    /// One DiLoCo round's communication: each worker's pseudo-gradient through the wire into
    /// the mean. Returns the mean, or `None` if no worker contributed.
    fn reduce(
        &mut self,
        global: &[f32],
        workers: &mut [Worker<B>],
        round: usize,
    ) -> Result<Option<Vec<f32>>, TrainerError> {
        let n = workers.len();
        let outer = &self.config.outer;
        let quant = pseudo_gradient::quant_config(outer);
        let sparse = outer.quant == Quant::Sparse;
        // Dense sets are all-reduced (each member sends 2(N−1)/N of one). Sparse sets, whose
        // mean is no longer sparse, go in parts to the shards' owners ((N−1)/N of one), which
        // relay the bundle of every member's parts to the N−1 others (below).
        let share = if sparse {
            (n - 1) as f64 / n as f64
        } else {
            allreduce_factor(n)
        };
        let limits = CodecLimits::default();
        let mut frames = Vec::with_capacity(n);
        for (w, worker) in workers.iter_mut().enumerate() {
            let (_, local) = flatten(&worker.model);
            let built = pseudo_gradient::build_for(
                self.kernels,
                &self.layout,
                worker.anchor.as_deref().unwrap_or(global),
                &local,
                worker.residual.as_deref_mut(),
                outer,
            );
            match built.and_then(|set| Ok((set.payload_bytes(), encode(&set, 3)?))) {
                Ok((payload, frame)) => {
                    self.bytes_sent += share * frame.len() as f64 / n as f64;
                    self.payload_bytes += share * payload as f64 / n as f64;
                    frames.push((w, frame));
                }
                Err(e) => {
                    tracing::warn!(worker = w, round, error = %e, "pseudo-gradient rejected; worker left out of this round and its optimizer reset");
                    self.rejected += 1;
                    worker.optimizer = inner_optimizer::<B>(&self.config.inner);
                    if let Some(r) = worker.residual.as_mut() {
                        r.fill(0.0);
                    }
                }
            }
        }
        let mut contributions = Vec::with_capacity(frames.len());
        for (w, frame) in frames {
            match decode(&frame, &limits)
                .map_err(TrainerError::from)
                .and_then(|set| pseudo_gradient::check(&self.layout.slots, &set).map(|()| set))
            {
                Ok(set) => contributions.push(set),
                Err(e) => {
                    tracing::warn!(worker = w, round, error = %e, "frame rejected");
                    self.rejected += 1;
                }
            }
        }
        if contributions.is_empty() {
            return Ok(None);
        }
        let mut mean = vec![0.0f32; global.len()];
        if sparse {
            let count = contributions.len();
            let bundle = pseudo_gradient::bundle(contributions);
            let relayed = (n - 1) as f64 / n as f64;
            self.payload_bytes += relayed * bundle.payload_bytes() as f64;
            self.bytes_sent += relayed * encode(&bundle, 3)?.len() as f64;
            pseudo_gradient::accumulate_bundle(&self.layout.slots, bundle, count, &mut mean)?;
            return Ok(Some(mean));
        }
        let reduced =
            pseudo_gradient::mean(self.kernels, &self.layout.slots, &contributions, quant)?;
        pseudo_gradient::accumulate(CANONICAL, &self.layout.slots, &reduced, &mut mean, 1.0)?;
        Ok(Some(mean))
    }
}

impl<B: TrainBackend> Run<'_, B> {
    /// Snapshots the run before `round` (at inner step `step`) and hands it to the
    /// background writer; the loop only pays for copying the state out.
    fn checkpoint(
        &mut self,
        workers: &[Worker<B>],
        global: &[f32],
        momentum: &[f32],
        round: usize,
        step: usize,
    ) -> Result<(), TrainerError> {
        let Some(checkpointing) = self.checkpointing.as_mut() else {
            return Ok(());
        };
        let started = Instant::now();
        let snapshot = Snapshot {
            meta: Meta {
                run_id: self.config.hash(),
                config: toml::to_string(self.config).expect("a RunConfig always serialises"),
                round: round as u64,
                step: step as u64,
                tokens: self.tokens,
                members: (0..workers.len()).map(|w| format!("worker-{w}")).collect(),
                bytes_sent: self.bytes_sent,
                payload_bytes: self.payload_bytes,
                rejected: self.rejected,
                evals: self.evals.clone(),
                sinter_version: env!("CARGO_PKG_VERSION").to_owned(),
            },
            global: global.to_vec(),
            momentum: momentum.to_vec(),
            workers: workers
                .iter()
                .map(|w| worker_state(&w.model, &w.optimizer, w.residual.as_deref()))
                .collect(),
        };
        checkpointing.submit(snapshot, &self.layout, self.config, started)
    }

    /// Waits for the last checkpoint write.
    fn finish_checkpoints(&mut self) -> Result<(), TrainerError> {
        self.checkpointing
            .as_mut()
            .map_or(Ok(()), Checkpointing::finish)
    }

    /// Every worker's inner steps `from..to`, one worker after another. (burn 0.21's autodiff
    /// graph registry can deadlock when independent graphs run backward passes on several
    /// threads at once, so workers do not train concurrently.)
    fn local_steps(&mut self, workers: &mut [Worker<B>], from: usize, to: usize) {
        let batch = self.config.inner.batch_size;
        let (n, context) = (workers.len(), self.config.model.context);
        let start = self.tokens;
        for (w, worker) in workers.iter_mut().enumerate() {
            for s in from..to {
                let before = start + ((s - from) * n * batch * context) as u64;
                let windows = self.dataset.batch(
                    &self.order,
                    position(before, context, w, batch),
                    batch,
                    &mut self.usage,
                );
                let model = worker.model.clone();
                let (next, loss) = train_step(
                    model,
                    &mut worker.optimizer,
                    &windows,
                    batch,
                    s,
                    self.config,
                    &self.device,
                );
                worker.model = next;
                self.tokens += self.tokens_per_step();
                self.observer.on_step(w, s + 1, loss, self.tokens);
            }
        }
    }
}

/// The delayed outer step's start of a worker's next round: the new `global` parameters plus
/// the progress of its last round (`local − anchor`), which the group's mean of that round
/// replaces a round later. A worker whose parameters stopped being finite (its contribution
/// was refused) starts over from `global`, as in the synchronous step.
fn rebase<B: TrainBackend>(worker: &mut Worker<B>, global: &[f32], device: &B::Device) {
    let (_, local) = flatten(&worker.model);
    let anchor = worker.anchor.get_or_insert_with(|| global.to_vec());
    if local.iter().all(|v| v.is_finite()) {
        for ((a, l), g) in anchor.iter_mut().zip(&local).zip(global) {
            *a = g + (l - *a);
        }
    } else {
        anchor.copy_from_slice(global);
    }
    worker.model = load(worker.model.clone(), anchor, device);
}

/// A snapshot can continue this run: same run id, a DiLoCo run, one state per worker.
fn check_resumable(config: &RunConfig, snapshot: &Snapshot) -> Result<(), TrainerError> {
    let refuse = |why: String| Err(TrainerError::Resume(why));
    if snapshot.meta.run_id != config.hash() {
        return refuse(format!(
            "the checkpoint belongs to run {}, this config is run {}: resume with the config it was written with (its meta.json holds it)",
            &snapshot.meta.run_id[..16.min(snapshot.meta.run_id.len())],
            &config.hash()[..16]
        ));
    }
    if config.outer.mode != Mode::Diloco {
        return refuse("only DiLoCo runs resume from checkpoints".into());
    }
    if snapshot.workers.len() != config.outer.workers {
        return refuse(format!(
            "the checkpoint holds {} workers, the config {}",
            snapshot.workers.len(),
            config.outer.workers
        ));
    }
    Ok(())
}

/// What a simulation produces.
pub struct SimOutcome<B: burn::tensor::backend::Backend> {
    /// The summary.
    pub summary: Summary,
    /// Every evaluation, in order.
    pub evals: Vec<EvalPoint>,
    /// The final global model.
    pub model: Llama<B>,
}

/// Runs a whole simulation and returns its summary, evaluations and final global model.
pub fn simulate<B: TrainBackend>(
    config: &RunConfig,
    dataset: &Dataset,
    kernels: &dyn Kernels,
    device: &B::Device,
    observer: &mut dyn Observer,
    options: SimOptions,
) -> Result<SimOutcome<B::InnerBackend>, TrainerError> {
    let started = Instant::now();
    let resume = options.resume;
    if let Some(snapshot) = &resume {
        check_resumable(config, snapshot)?;
    }
    let n = config.outer.workers;
    let initial: Llama<B> = initial_model(&config.model, config.run.seed, device);
    let (layout, _) = flatten(&initial);
    let initial = match options.start_from {
        Some(values) if values.len() != layout.len() => {
            return Err(TrainerError::StartFrom(format!(
                "{} parameters where the config's [model] has {}",
                values.len(),
                layout.len()
            )));
        }
        Some(values) => load(initial, &values, device),
        None => initial,
    };
    let validation = dataset.validation_windows(&config.data, config.run.seed);
    let mut run = Run::<B> {
        config,
        dataset,
        order: dataset.order(config.run.seed),
        usage: dataset.usage(),
        kernels,
        device: device.clone(),
        observer,
        validation,
        layout,
        tokens: 0,
        bytes_sent: 0.0,
        payload_bytes: 0.0,
        rejected: 0,
        evals: Vec::new(),
        checkpointing: options
            .checkpoint_dir
            .filter(|_| config.outer.mode == Mode::Diloco)
            .and_then(|dir| Checkpointing::new(&dir, config)),
    };
    let resumed_from_round = resume.as_ref().map(|s| s.meta.round);
    let initial_val_loss = match &resume {
        Some(snapshot) => {
            let meta = &snapshot.meta;
            run.tokens = meta.tokens;
            run.bytes_sent = meta.bytes_sent;
            run.payload_bytes = meta.payload_bytes;
            run.rejected = meta.rejected;
            run.evals = meta.evals.clone();
            tracing::info!(round = meta.round, step = meta.step, "resuming");
            meta.evals.first().map_or(f32::NAN, |p| p.val_loss)
        }
        None => run.evaluate(&eval_model(&initial), 0, 0),
    };
    let steps = config.inner.steps;
    let h = config.outer.inner_steps;
    let mut rounds = 0;

    let final_model = match config.outer.mode {
        Mode::Ddp => {
            let mut optimizer = inner_optimizer::<B>(&config.inner);
            let model = run.data_parallel(initial, &mut optimizer, n, 0, steps)?;
            rounds = steps.div_ceil(h);
            eval_model(&model)
        }
        Mode::Diloco => {
            let warmup = config.outer.warmup_ddp_steps;
            let mut optimizer = inner_optimizer::<B>(&config.inner);
            let error_feedback = pseudo_gradient::keeps_residual(&config.outer);
            let delayed = config.outer.delayed_outer_step;
            // The delayed outer step's mean of an earlier round, and that round.
            let mut late: Option<(Vec<f32>, usize)> = None;
            let total_rounds = (steps - warmup).div_ceil(h);
            let (mut global, mut momentum, mut workers, mut step);
            match resume {
                Some(snapshot) => {
                    let start = load(initial, &snapshot.global, device);
                    workers = snapshot
                        .workers
                        .iter()
                        .map(|state| Worker {
                            optimizer: restore_optimizer(&start, config, state, device),
                            model: start.clone(),
                            residual: state.residual.clone().or_else(|| {
                                error_feedback.then(|| vec![0.0; snapshot.global.len()])
                            }),
                            anchor: None,
                        })
                        .collect::<Vec<_>>();
                    rounds = snapshot.meta.round as usize;
                    step = snapshot.meta.step as usize;
                    global = snapshot.global;
                    momentum = snapshot.momentum;
                }
                None => {
                    let start = if warmup > 0 {
                        run.data_parallel(initial, &mut optimizer, n, 0, warmup)?
                    } else {
                        initial
                    };
                    global = flatten(&start).1;
                    workers = (0..n)
                        .map(|_| Worker {
                            model: start.clone(),
                            optimizer: optimizer.clone(),
                            residual: error_feedback.then(|| vec![0.0; global.len()]),
                            anchor: delayed.then(|| global.clone()),
                        })
                        .collect();
                    momentum = vec![0.0f32; global.len()];
                    step = warmup;
                }
            }
            while step < steps {
                let end = (step + h).min(steps);
                run.local_steps(&mut workers, step, end);
                let reduced = run.reduce(&global, &mut workers, rounds)?;
                if reduced.is_none() {
                    tracing::error!(
                        round = rounds,
                        "no worker contributed; global parameters unchanged"
                    );
                }
                let mut apply = |mean: Option<(Vec<f32>, usize)>| match mean {
                    Some((delta, round)) => outer_step(
                        config,
                        &mut global,
                        &mut momentum,
                        &delta,
                        round,
                        total_rounds,
                    ),
                    None => Ok(()),
                };
                let this_round = reduced.map(|delta| (delta, rounds));
                if delayed {
                    // The mean of the round before lands now; this round's (the exchange
                    // the next round's steps would hide) lands after the next round, or now
                    // if there is none.
                    apply(std::mem::replace(&mut late, this_round))?;
                    if end == steps {
                        apply(late.take())?;
                    }
                    for worker in &mut workers {
                        rebase(worker, &global, device);
                    }
                } else {
                    apply(this_round)?;
                    for worker in &mut workers {
                        worker.model = load(worker.model.clone(), &global, device);
                    }
                }
                rounds += 1;
                if run.should_eval(step, end) {
                    let model = load(workers[0].model.clone(), &global, device);
                    run.evaluate(&eval_model(&model), rounds, end);
                }
                if checkpoint::due(config, rounds, end) {
                    run.checkpoint(&workers, &global, &momentum, rounds, end)?;
                }
                step = end;
            }
            run.finish_checkpoints()?;
            eval_model(&load(workers[0].model.clone(), &global, device))
        }
    };

    let params = run.layout.len();
    let final_val_loss = run.evals.last().map_or(initial_val_loss, |p| p.val_loss);
    let wall_secs = started.elapsed().as_secs_f64();
    let summary = Summary {
        initial_val_loss,
        final_val_loss,
        tokens: run.tokens,
        workers: n,
        inner_steps: h,
        steps,
        rounds,
        mode: config.outer.mode,
        quant: config.outer.quant,
        params,
        bytes_sent_per_worker: run.bytes_sent.round() as u64,
        payload_bytes_per_worker: run.payload_bytes.round() as u64,
        ddp_equivalent_bytes_per_worker: (allreduce_factor(n) * params as f64 * 4.0 * steps as f64)
            .round() as u64,
        rejected_contributions: run.rejected,
        params_sha256: params_sha256(&flatten(&final_model).1),
        wall_secs,
        tokens_per_sec: run.tokens as f64 / wall_secs,
        config_hash: config.hash(),
        checkpoints: run
            .checkpointing
            .as_ref()
            .map(|c| c.stats.clone())
            .unwrap_or_default(),
        resumed_from_round,
        memory: MemoryStats::measure(kernels),
        data: run.usage.clone(),
    };
    Ok(SimOutcome {
        summary,
        evals: run.evals,
        model: final_model,
    })
}
