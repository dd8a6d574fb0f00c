//! # sinter-comms
//!
//! What peers say to each other. For now: the wire codec for a set of tensors (a peer's
//! pseudo-gradient for one round), used by the in-process simulation exactly as the network
//! layer will use it, so that every byte counted in a simulation is a byte that would travel.
//!
//! | module | what |
//! |---|---|
//! | [`wire`] | versioned, zstd-compressed, checksummed frames of int8 or f32 tensors |
#![warn(missing_docs)]

pub mod wire;

pub use wire::{CodecLimits, TensorPayload, TensorSet, WireError, WireTensor, decode, encode};
