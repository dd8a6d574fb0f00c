//! What a run needs to continue exactly where it stopped, as a checkpoint directory
//! (`sinter_checkpoints`): `model.safetensors` (the global parameters, loadable on its own
//! like any saved weights), `outer.safetensors` (the outer momentum), `inner-W.safetensors`
//! per worker (AdamW's moments and step counts, error-feedback residuals) and `meta.json`
//! (round, step, tokens, counters and the evaluations so far).
//!
//! Taken at a round boundary, where every worker's parameters equal the global ones, so
//! workers' models are not stored.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::record::AdaptorRecord;
use burn::optim::{AdamWState, AdaptiveMomentumState, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use sinter_checkpoints::tensors;
use sinter_checkpoints::writer::{BackgroundWriter, Written};
use sinter_checkpoints::{Checkpoint, CheckpointError};

use crate::config::RunConfig;
use crate::eval::EvalPoint;
use crate::inner::{InnerOptimizer, inner_optimizer};
use crate::model::Llama;
use crate::params::ParamLayout;
use crate::round_state::RoundState;
use crate::{TrainerError, weights};

/// Checkpoint directories are `round-NNNNNN`, the round about to start.
pub const PREFIX: &str = "round-";

/// The directory name of a checkpoint taken before `round`.
pub fn name(round: u64) -> String {
    format!("{PREFIX}{round:06}")
}

/// Checkpoints a run wrote and what they cost it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckpointStats {
    /// Checkpoints written.
    pub checkpoints_written: usize,
    /// Seconds the training loop spent on checkpoints (snapshots, waiting for a write).
    pub checkpoint_stall_secs: f64,
    /// Seconds the background writer spent serialising, hashing and writing.
    pub checkpoint_write_secs: f64,
    /// Merkle root of the newest checkpoint written.
    pub last_checkpoint_root: Option<String>,
}

/// Whether a checkpoint is due after `rounds` rounds ending at inner step `end`: every
/// `checkpoint.every_rounds` rounds and after the last.
pub fn due(config: &RunConfig, rounds: usize, end: usize) -> bool {
    let every = config.checkpoint.every_rounds;
    every > 0 && (rounds.is_multiple_of(every) || end == config.inner.steps)
}

/// A run's background checkpoint writer and what it has cost.
pub(crate) struct Checkpointing {
    writer: BackgroundWriter,
    pub(crate) stats: CheckpointStats,
}

impl Checkpointing {
    /// A writer under `dir`, unless the config turns checkpoints off.
    pub(crate) fn new(dir: &Path, config: &RunConfig) -> Option<Self> {
        (config.checkpoint.every_rounds > 0).then(|| Self {
            writer: BackgroundWriter::new(dir, PREFIX, config.checkpoint.keep),
            stats: CheckpointStats::default(),
        })
    }

    fn record(
        &mut self,
        done: Option<Result<Written, CheckpointError>>,
    ) -> Result<(), TrainerError> {
        if let Some(done) = done {
            let written = done?;
            tracing::info!(path = %written.path.display(), root = %written.manifest.root(), secs = written.secs, "checkpoint written");
            self.stats.checkpoints_written += 1;
            self.stats.checkpoint_write_secs += written.secs;
            self.stats.last_checkpoint_root = Some(written.manifest.root().to_owned());
        }
        Ok(())
    }

    /// Hands `snapshot` to the background writer; the loop's cost since `started` (building
    /// the snapshot, waiting for the previous write) is counted as stall.
    pub(crate) fn submit(
        &mut self,
        snapshot: Snapshot,
        layout: &ParamLayout,
        config: &RunConfig,
        started: Instant,
    ) -> Result<(), TrainerError> {
        let (layout, config) = (layout.clone(), config.clone());
        let done = self.writer.submit(name(snapshot.meta.round), move || {
            snapshot.to_checkpoint(&layout, &config)
        });
        self.stats.checkpoint_stall_secs += started.elapsed().as_secs_f64();
        self.record(done)
    }

    /// Waits for the last write.
    pub(crate) fn finish(&mut self) -> Result<(), TrainerError> {
        let started = Instant::now();
        let done = self.writer.wait();
        self.stats.checkpoint_stall_secs += started.elapsed().as_secs_f64();
        self.record(done)
    }
}

/// One worker's state besides the (global) parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerState {
    /// AdamW's first moments, flat in layout order (zeros where `times` is 0).
    pub moment_1: Vec<f32>,
    /// AdamW's second moments.
    pub moment_2: Vec<f32>,
    /// AdamW's step count per parameter tensor (0: no state yet).
    pub times: Vec<u64>,
    /// Error-feedback residual, if the run uses it.
    pub residual: Option<Vec<f32>>,
}

/// `meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// The run's identity: the config hash.
    pub run_id: String,
    /// The run's config, TOML.
    pub config: String,
    /// The round about to start.
    pub round: u64,
    /// Inner steps done per worker.
    pub step: u64,
    /// Tokens trained on, all workers together.
    pub tokens: u64,
    /// The group's members (peer ids; worker indices in a simulation).
    pub members: Vec<String>,
    /// Bytes sent per worker so far (wire and payload).
    pub bytes_sent: f64,
    /// Payload bytes per worker so far.
    pub payload_bytes: f64,
    /// Contributions refused so far.
    pub rejected: usize,
    /// Evaluations so far (the first is the initial loss).
    pub evals: Vec<EvalPoint>,
    /// The sinter version that wrote it.
    pub sinter_version: String,
}

/// A run's state at a round boundary.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Everything but tensors.
    pub meta: Meta,
    /// The global parameters.
    pub global: Vec<f32>,
    /// The outer momentum.
    pub momentum: Vec<f32>,
    /// Per worker.
    pub workers: Vec<WorkerState>,
}

/// The most bytes a checkpoint of a run of `config` can take: the global parameters and the
/// outer momentum, each worker's AdamW moments and error-feedback residual, and room for the
/// metadata. A fetch refuses a donor's offer of more before allocating for it.
pub fn max_len(config: &RunConfig) -> u64 {
    let params = config.model.param_count() as u64;
    params * 4 * (2 + 3 * config.outer.workers as u64) + (64 << 20)
}

fn inner_file(worker: usize) -> String {
    format!("inner-{worker}.safetensors")
}

impl Snapshot {
    /// What every member of a real run holds identically after a round — so that their
    /// checkpoints of the same round have the same root: the state, the members, the config.
    /// Inner optimizer state is each peer's own and not included.
    pub fn shared(config: &RunConfig, state: &RoundState, mut members: Vec<String>) -> Self {
        members.sort();
        Self {
            meta: Meta {
                run_id: config.hash(),
                config: toml::to_string(config).expect("a RunConfig always serialises"),
                round: state.round,
                step: state.step,
                tokens: state.tokens,
                members,
                bytes_sent: 0.0,
                payload_bytes: 0.0,
                rejected: 0,
                evals: Vec::new(),
                sinter_version: env!("CARGO_PKG_VERSION").to_owned(),
            },
            global: state.global.clone(),
            momentum: state.momentum.clone(),
            workers: Vec::new(),
        }
    }

    /// The run's state at the start of the checkpoint's round.
    pub fn round_state(&self) -> RoundState {
        RoundState {
            round: self.meta.round,
            step: self.meta.step,
            tokens: self.meta.tokens,
            global: self.global.clone(),
            momentum: self.momentum.clone(),
        }
    }

    /// The checkpoint's files.
    pub fn to_checkpoint(
        &self,
        layout: &ParamLayout,
        config: &RunConfig,
    ) -> Result<Checkpoint, CheckpointError> {
        let mut c = Checkpoint::default();
        c.add(
            "model.safetensors",
            weights::to_bytes(layout, &self.global, config)?,
        );
        let outer: Vec<_> = layout.tensors(&self.momentum, "").collect();
        c.add(
            "outer.safetensors",
            tensors::to_bytes(&outer, HashMap::new())?,
        );
        for (w, state) in self.workers.iter().enumerate() {
            let mut ts: Vec<_> = layout
                .tensors(&state.moment_1, ".moment_1")
                .chain(layout.tensors(&state.moment_2, ".moment_2"))
                .collect();
            if let Some(r) = &state.residual {
                ts.extend(layout.tensors(r, ".residual"));
            }
            let meta = HashMap::from([(
                "times".to_owned(),
                serde_json::to_string(&state.times).expect("numbers serialise"),
            )]);
            c.add(inner_file(w), tensors::to_bytes(&ts, meta)?);
        }
        c.add(
            "meta.json",
            serde_json::to_vec_pretty(&self.meta).expect("meta serialises"),
        );
        Ok(c)
    }

    /// Reads a snapshot back from a checkpoint (`dir` names it in errors).
    pub fn from_checkpoint(
        c: &Checkpoint,
        dir: &Path,
        layout: &ParamLayout,
    ) -> Result<Self, TrainerError> {
        let bad = |e: CheckpointError| TrainerError::Weights {
            path: dir.to_owned(),
            reason: e.to_string(),
        };
        let meta: Meta = serde_json::from_slice(c.require("meta.json", dir).map_err(bad)?)
            .map_err(|e| bad(CheckpointError::Tensors(format!("meta.json: {e}"))))?;
        let (model, _) =
            tensors::from_bytes(c.require("model.safetensors", dir).map_err(bad)?).map_err(bad)?;
        let (outer, _) =
            tensors::from_bytes(c.require("outer.safetensors", dir).map_err(bad)?).map_err(bad)?;
        let mut workers = Vec::new();
        // One inner-W.safetensors per worker, numbered from 0 (none in a real run's checkpoint).
        for (w, bytes) in (0..).map_while(|w| c.get(&inner_file(w)).map(|b| (w, b))) {
            let (ts, m) = tensors::from_bytes(bytes).map_err(bad)?;
            let times: Vec<u64> = m
                .get("times")
                .and_then(|t| serde_json::from_str(t).ok())
                .filter(|t: &Vec<u64>| t.len() == layout.slots.len())
                .ok_or_else(|| {
                    bad(CheckpointError::Tensors(format!(
                        "{}: no step counts for its {} tensors",
                        inner_file(w),
                        layout.slots.len()
                    )))
                })?;
            let has_residual = ts.iter().any(|t| t.name.ends_with(".residual"));
            workers.push(WorkerState {
                moment_1: layout.gather(&ts, ".moment_1").map_err(bad)?,
                moment_2: layout.gather(&ts, ".moment_2").map_err(bad)?,
                times,
                residual: has_residual
                    .then(|| layout.gather(&ts, ".residual"))
                    .transpose()
                    .map_err(bad)?,
            });
        }
        Ok(Self {
            global: layout.gather(&model, "").map_err(bad)?,
            momentum: layout.gather(&outer, "").map_err(bad)?,
            meta,
            workers,
        })
    }
}

/// burn's optimizer record (a `hashbrown` map from parameter id to state).
type Records<B> = <InnerOptimizer<B> as Optimizer<Llama<B>, B>>::Record;

struct CollectAdam<'a, B: AutodiffBackend> {
    records: &'a Records<B>,
    state: WorkerState,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for CollectAdam<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let n = param.val().shape().num_elements();
        let flat = |t: Tensor<B::InnerBackend, D>| t.into_data().convert::<f32>().to_vec::<f32>();
        match self.records.get(&param.id) {
            Some(record) => {
                let state: AdamWState<B::InnerBackend, D> = record.clone().into_state();
                let m = state.momentum;
                self.state.times.push(m.time as u64);
                self.state
                    .moment_1
                    .extend(flat(m.moment_1).expect("f32 data"));
                self.state
                    .moment_2
                    .extend(flat(m.moment_2).expect("f32 data"));
            }
            None => {
                self.state.times.push(0);
                self.state.moment_1.extend(std::iter::repeat_n(0.0, n));
                self.state.moment_2.extend(std::iter::repeat_n(0.0, n));
            }
        }
    }
}

/// A worker's AdamW state (for `model`'s parameters) and its residual.
pub fn worker_state<B: AutodiffBackend>(
    model: &Llama<B>,
    optimizer: &InnerOptimizer<B>,
    residual: Option<&[f32]>,
) -> WorkerState {
    let records = optimizer.to_record();
    let mut collect = CollectAdam::<B> {
        records: &records,
        state: WorkerState {
            moment_1: Vec::new(),
            moment_2: Vec::new(),
            times: Vec::new(),
            residual: residual.map(<[f32]>::to_vec),
        },
    };
    model.visit(&mut collect);
    collect.state
}

struct RestoreAdam<'a, B: AutodiffBackend> {
    state: &'a WorkerState,
    slot: usize,
    offset: usize,
    records: Records<B>,
    device: B::Device,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for RestoreAdam<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let shape = param.val().shape();
        let n = shape.num_elements();
        let time = self.state.times[self.slot];
        if time > 0 {
            let tensor = |v: &[f32]| {
                Tensor::<B::InnerBackend, D>::from_data(
                    TensorData::new(v[self.offset..self.offset + n].to_vec(), shape.clone()),
                    &self.device,
                )
            };
            let momentum = AdaptiveMomentumState::new(
                time as usize,
                tensor(&self.state.moment_1),
                tensor(&self.state.moment_2),
            );
            self.records
                .insert(param.id, AdaptorRecord::from_state(AdamWState { momentum }));
        }
        self.slot += 1;
        self.offset += n;
    }
}

/// A fresh inner optimizer holding `state`'s AdamW moments for `model`'s parameters.
pub fn restore_optimizer<B: AutodiffBackend>(
    model: &Llama<B>,
    config: &RunConfig,
    state: &WorkerState,
    device: &B::Device,
) -> InnerOptimizer<B> {
    let mut restore = RestoreAdam::<B> {
        state,
        slot: 0,
        offset: 0,
        records: Records::<B>::default(),
        device: device.clone(),
    };
    model.visit(&mut restore);
    inner_optimizer::<B>(&config.inner).load_record(restore.records)
}
