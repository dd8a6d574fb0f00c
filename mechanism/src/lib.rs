//! # sinter-mechanism
//!
//! What a run's contributions are worth and who gets paid: a validator's filtering and
//! scoring of a round's pseudo-gradients (model-agnostic: the trainer supplies the coalition
//! values), consensus epochs that agree bit for bit with the chain, and the embedded ledger.
//!
//! | module | what |
//! |---|---|
//! | [`fixed`] | the chain's fixed-point vector and sparse-matrix operations (`I32F32`, `I64F64`, `I96F32`) |
//! | [`yuma`] | one Yuma consensus epoch as subtensor runs it: stake, weights and bonds in; consensus, incentive, dividends, validator trust, bonds and emission out, as the chain stores them |
//! | [`papers`] | the papers' Yuma (sigmoid consensus, accumulating bonds) |
//! | [`consensus`] | one epoch under whichever of the two the config selects |
//! | [`shapley`] | exact and Monte-Carlo Shapley values of a coalition game |
//! | [`filter`] | Byzantine filtering of a round's pseudo-gradients, with reasons |
//! | [`score`] | a validator's round: filter, Shapley and Fisher scores, weight row |
//! | [`ledger`] | the [`Ledger`] interface every chain implements; the embedded signed, hash-chained ledger (extrinsics, blocks, state, epochs), its sans-IO sync protocol, wallets |
//! | [`subtensor`] | Bittensor's chain through subxt: calls, reads, the metagraph |
//! | [`cabal`] | experiment 2: a 40 % cabal against a 60 % honest majority |
#![warn(missing_docs)]

pub mod consensus;
pub mod filter;
pub mod fixed;
pub mod ledger;
pub mod papers;
pub mod score;
pub mod shapley;
pub mod subtensor;
pub mod yuma;

pub use ledger::Ledger;

/// Everything that can go wrong in the mechanism.
#[derive(Debug, thiserror::Error)]
pub enum MechanismError {
    /// An epoch's inputs do not fit together.
    #[error("epoch input: {0}")]
    Input(String),
}
