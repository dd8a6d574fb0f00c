//! One epoch under the configured consensus: the chain's Yuma ([`crate::yuma`], fixed point,
//! the default) or the papers' ([`crate::papers`]). The ledger and the experiments call this,
//! so both variants run through the same state: stake, `u16` weight rows, and bonds kept as
//! `f64` (the chain's `u16` bonds exactly; the papers' accumulated stake units).

use serde::{Deserialize, Serialize};

use crate::MechanismError;
use crate::papers::{self, PapersParams};
use crate::yuma::EpochInput;

/// Which consensus turns weights into emission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consensus {
    /// Subtensor's Yuma, bit for bit (clipping at the stake-weighted median, EMA bonds).
    #[default]
    Subtensor,
    /// The papers' sigmoid consensus with accumulating bonds.
    Papers,
}

/// Epoch hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hyperparams {
    /// Which algorithm.
    pub consensus: Consensus,
    /// Consensus majority, `u16` proportion (32767: one half).
    pub kappa: u16,
    /// Bonds moving average in millionths (subtensor).
    pub bonds_moving_average: u64,
    /// Sigmoid steepness (papers).
    pub rho: f64,
}

impl Default for Hyperparams {
    fn default() -> Self {
        Self {
            consensus: Consensus::Subtensor,
            kappa: 32767,
            bonds_moving_average: 900_000,
            rho: 10.0,
        }
    }
}

/// What an epoch stores, whichever consensus ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epoch {
    /// Consensus per uid (`u16` proportion).
    pub consensus: Vec<u16>,
    /// Incentive per uid.
    pub incentive: Vec<u16>,
    /// Dividends per uid.
    pub dividends: Vec<u16>,
    /// Validator trust per uid.
    pub validator_trust: Vec<u16>,
    /// Emission per uid.
    pub emission: Vec<u64>,
}

fn proportion(x: f64) -> u16 {
    (x.clamp(0.0, 1.0) * 65535.0).round() as u16
}

/// Runs one epoch over `stake`, `permits`, `weights` (`u16` rows) and `bonds` (updated in
/// place), splitting `emission`.
pub fn run_epoch(
    params: &Hyperparams,
    stake: &[f64],
    permits: &[bool],
    weights: &[Vec<u16>],
    bonds: &mut [Vec<f64>],
    emission: f64,
) -> Result<Epoch, MechanismError> {
    match params.consensus {
        Consensus::Subtensor => {
            let input = EpochInput {
                stake: stake.to_vec(),
                weights: weights.to_vec(),
                bonds: Some(
                    bonds
                        .iter()
                        .map(|row| row.iter().map(|b| *b as u16).collect())
                        .collect(),
                ),
                validator_permit: permits.to_vec(),
                active: None,
                kappa: params.kappa,
                bonds_moving_average: params.bonds_moving_average,
                emission,
            };
            let out = input.run()?;
            for (row, new) in bonds.iter_mut().zip(&out.bonds) {
                for (b, v) in row.iter_mut().zip(new) {
                    *b = *v as f64;
                }
            }
            Ok(Epoch {
                consensus: out.consensus,
                incentive: out.incentive,
                dividends: out.dividends,
                validator_trust: out.validator_trust,
                emission: out.emission,
            })
        }
        Consensus::Papers => {
            let n = stake.len();
            if weights.len() != n || bonds.len() != n || permits.len() != n {
                return Err(MechanismError::Input(format!(
                    "{n} uids but {} weight rows, {} bond rows, {} permits",
                    weights.len(),
                    bonds.len(),
                    permits.len()
                )));
            }
            let rows: Vec<Vec<f64>> = weights
                .iter()
                .map(|r| r.iter().map(|w| *w as f64).collect())
                .collect();
            let out = papers::epoch(
                stake,
                permits,
                &rows,
                bonds,
                &PapersParams {
                    kappa: params.kappa as f64 / 65535.0,
                    rho: params.rho,
                },
            );
            let u16s = |v: &[f64]| v.iter().map(|x| proportion(*x)).collect();
            Ok(Epoch {
                consensus: u16s(&out.consensus),
                incentive: u16s(&out.incentive),
                dividends: u16s(&out.dividends),
                validator_trust: u16s(&out.validator_trust),
                emission: out
                    .emission_share
                    .iter()
                    .map(|s| (s * emission).floor() as u64)
                    .collect(),
            })
        }
    }
}
