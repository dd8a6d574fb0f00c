//! # sinter-trainer
//!
//! DiLoCo training of a LLaMA-style model in burn: each worker takes `H` local AdamW steps
//! on its own shard; the group averages int8 pseudo-gradients (global − local parameters)
//! and applies them with an outer Nesterov step. A data-parallel mode is the yardstick.
//!
//! | module | what |
//! |---|---|
//! | [`config`] | the TOML run configuration and its validation |
//! | [`model`] | the decoder (Hugging Face LLaMA conventions) |
//! | [`fused`] | the model's fused softmax and SwiGLU, with their backward: flex host kernels, autodiff nodes |
//! | [`tokenizer`], [`data`] | tokens, cached token files, shards, validation windows |
//! | [`params`] | a model's parameters as one flat vector with a named layout |
//! | [`inner`], [`schedule`] | one worker's AdamW step with global-norm clipping; its learning rate |
//! | [`pseudo_gradient`] | pseudo-gradient → wire frame → accumulated mean (shared with the network layer) |
//! | [`outer`] | the outer Nesterov step and its learning-rate schedule |
//! | [`simulate`] | N workers in one process: DiLoCo or data-parallel |
//! | [`peer`] | one real peer of a run: the same rounds over the network, its commitments and, with stake, its scoring |
//! | [`ledger_net`] | the embedded ledger over the network: a run's replicas, the standalone node |
//! | [`checkpoint`] | a run's state at a round boundary as a checkpoint directory, and back |
//! | [`round_state`] | the state a joiner fetches: round, global parameters, outer momentum |
//! | [`eval`], [`generate`], [`weights`] | validation loss, sampling, saved weights |
//! | [`export`] | saved weights as a Hugging Face LLaMA checkpoint |
//! | [`valuation`] | a validator's loss, coalition values and curvature for a round |
//!
//! The default backend is burn's `flex` CPU backend; `wgpu` and `cuda` are features.
#![warn(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod eval;
pub mod export;
pub mod fused;
pub mod generate;
pub mod inner;
pub mod ledger_net;
pub mod memory;
pub mod model;
pub mod outer;
pub mod params;
pub mod peer;
pub mod pseudo_gradient;
pub mod round_state;
pub mod schedule;
pub mod simulate;
pub mod tokenizer;
pub mod valuation;
pub mod weights;

use std::path::PathBuf;

pub use config::RunConfig;

/// The value of the test-only fault hook `var` (a `SINTER_FAULT_*` variable): always `None`
/// unless built with the `fault-injection` feature, which only the test builds turn on.
pub fn fault_for_test(var: &str) -> Option<String> {
    match cfg!(feature = "fault-injection") {
        true => std::env::var(var).ok(),
        false => None,
    }
}

/// The CPU backend used by default.
pub type CpuBackend = burn::backend::Flex;
/// The CPU backend with autodiff, for training.
pub type CpuTrainBackend = burn::backend::Autodiff<CpuBackend>;

/// Everything that can go wrong while training.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The corpus, tokenizer or token file is unusable.
    #[error("data: {0}")]
    Data(String),
    /// A prepared dataset (or its preparation) is unusable.
    #[error("dataset: {0}")]
    Dataset(#[from] data::DatasetError),
    /// A kernel refused its input.
    #[error(transparent)]
    Kernel(#[from] sinter_kernels::KernelError),
    /// A frame could not be encoded or decoded.
    #[error(transparent)]
    Wire(#[from] sinter_comms::WireError),
    /// A peer's pseudo-gradient does not fit the model.
    #[error("pseudo-gradient does not match the model: {0}")]
    Layout(String),
    /// The weights a run was asked to start from do not fit its model.
    #[error("the weights to start from do not fit the model: {0}")]
    StartFrom(String),
    /// A saved weights file is unusable.
    #[error("weights file {path}: {reason}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Training diverged or every worker failed in a round.
    #[error("training failed: {0}")]
    Diverged(String),
    /// The group could not be formed or the all-reduce failed.
    #[error("network: {0}")]
    Network(String),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] sinter_checkpoints::CheckpointError),
    /// A checkpoint cannot continue this run.
    #[error("cannot resume: {0}")]
    Resume(String),
    /// Scoring or the ledger failed.
    #[error("incentives: {0}")]
    Incentive(String),
    /// The config asks for a backend this build lacks.
    #[error("backend `{0}` is not compiled in: rebuild with `--features {0}`")]
    BackendUnavailable(&'static str),
}
