//! # sinter-checkpoints
//!
//! A checkpoint is a directory of files (the trainer decides which: `model.safetensors`,
//! `outer.safetensors`, `inner-*.safetensors`, `meta.json`) plus `manifest.json`: the files
//! in order with their lengths, and a manifest of fixed-size chunks over their concatenation
//! with its Merkle root (`sinter_comms::transfer`). The root is the checkpoint's identity; the
//! same manifest lets peers serve and fetch a checkpoint chunk by chunk.
//!
//! | module | what |
//! |---|---|
//! | [`tensors`] | named `f32` tensors ↔ safetensors bytes |
//! | [`store`] | atomic writes (temporary directory, fsync, rename), `latest`, keep-K, load, verify |
//! | [`serve`] | serving a checkpoints directory to peers by root; rebuilding a fetched one |
//! | [`fetched`] | a fetched checkpoint's blob on disk: checked, then copied out into a directory |
//! | [`writer`] | a background writer: training goes on while a snapshot is written |
//! | [`hf`] | export to a Hugging Face LLaMA checkpoint |
#![warn(missing_docs)]

pub mod fetched;
pub mod hf;
pub mod serve;
pub mod store;
pub mod tensors;
pub mod writer;

use std::path::PathBuf;

pub use store::{Checkpoint, DirManifest, Verification};
pub use tensors::NamedTensor;

/// Everything that can go wrong with a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The checkpoint is incomplete, corrupt or not a checkpoint.
    #[error("checkpoint {path}: {reason}")]
    Invalid {
        /// The checkpoint directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Tensors could not be encoded or decoded.
    #[error("tensors: {0}")]
    Tensors(String),
}

impl CheckpointError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    pub(crate) fn invalid(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
