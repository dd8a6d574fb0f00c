//! # sinter-mechanism
//!
//! What a run's contributions are worth and who gets paid. This crate holds the parts that
//! must agree bit for bit with the chain:
//!
//! | module | what |
//! |---|---|
//! | [`fixed`] | the chain's fixed-point vector and sparse-matrix operations (`I32F32`, `I64F64`, `I96F32`) |
//! | [`yuma`] | one Yuma consensus epoch as subtensor runs it: stake, weights and bonds in; consensus, incentive, dividends, validator trust, bonds and emission out, as the chain stores them |
#![warn(missing_docs)]

pub mod fixed;
pub mod yuma;

/// Everything that can go wrong in the mechanism.
#[derive(Debug, thiserror::Error)]
pub enum MechanismError {
    /// An epoch's inputs do not fit together.
    #[error("epoch input: {0}")]
    Input(String),
}
