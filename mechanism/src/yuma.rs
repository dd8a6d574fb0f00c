//! One Yuma consensus epoch, as subtensor runs it every `tempo` blocks
//! (`../shared/chain/README.md`), in the chain's fixed point so that the same inputs give the
//! same stored `u16` values:
//!
//! 1. stake normalized (`I64F64`, then `I32F32`); active stake = stake of permitted, active
//!    validators, normalized;
//! 2. weights: rows of non-permitted uids and self-weights dropped, rows normalized;
//! 3. consensus `c_j`: the stake-weighted median of column j at `kappa`;
//! 4. weights clipped to consensus; validator trust = each row's clipped sum;
//! 5. rank `r_j = Σ_i a_i ŵ_ij`, incentive = r normalized;
//! 6. bonds: `ΔB = a_i ŵ_ij` column-normalized, `B ← α ΔB + (1 − α) B` (α = 1 − moving
//!    average), column-normalized; dividends `D_i = Σ_j B_ij I_j`, normalized;
//! 7. emission: `I_j / Σ(I + D)` and `D_i / Σ(I + D)` of the epoch's emission (before any owner
//!    cut, which is the chain's business).

use serde::{Deserialize, Serialize};

use crate::MechanismError;
use crate::fixed::{
    self, I32F32, I64F64, I96F32, Sparse, col_clip, col_normalize, ema, mask_diagonal, mask_rows,
    mask_vector, matmul, matmul_transpose, normalize, normalize_64, row_hadamard, row_normalize,
    row_sum, to_u16_proportion, weighted_median_col,
};

fn default_kappa() -> u16 {
    32767
}

fn default_bonds_moving_average() -> u64 {
    900_000
}

fn default_emission() -> f64 {
    1e9
}

/// One epoch's inputs, as `launch ledger epoch FILE.json` reads them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochInput {
    /// Each uid's stake (any unit: only proportions matter).
    pub stake: Vec<f64>,
    /// n × n `u16` weights, row i as uid i set them (the chain's stored form).
    pub weights: Vec<Vec<u16>>,
    /// n × n `u16` bonds as stored by the previous epoch (default: none).
    #[serde(default)]
    pub bonds: Option<Vec<Vec<u16>>>,
    /// Which uids hold a validator permit.
    pub validator_permit: Vec<bool>,
    /// Which uids were active recently (default: all).
    #[serde(default)]
    pub active: Option<Vec<bool>>,
    /// Consensus majority as a `u16` proportion (default 32767, one half).
    #[serde(default = "default_kappa")]
    pub kappa: u16,
    /// Bonds moving average in millionths (default 900000: 0.9).
    #[serde(default = "default_bonds_moving_average")]
    pub bonds_moving_average: u64,
    /// The emission this epoch splits (default 1e9).
    #[serde(default = "default_emission")]
    pub emission: f64,
}

/// What the chain stores after the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochOutput {
    /// Consensus weight of each uid (as a miner).
    pub consensus: Vec<u16>,
    /// Each uid's share of the miners' emission.
    pub incentive: Vec<u16>,
    /// Each uid's share of the validators' emission.
    pub dividends: Vec<u16>,
    /// How much of each validator's weight survived clipping.
    pub validator_trust: Vec<u16>,
    /// n × n bonds (column-normalized, `u16`); rows of uids without a permit are empty (zeros).
    pub bonds: Vec<Vec<u16>>,
    /// Emission per uid (miner part + validator part).
    pub emission: Vec<u64>,
}

/// A dense `u16` matrix as sparse fixed-point rows (zeros dropped).
fn sparse(rows: &[Vec<u16>]) -> Sparse {
    rows.iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .filter(|(_, v)| **v > 0)
                .map(|(j, v)| (j as u16, I32F32::from_num(*v)))
                .collect()
        })
        .collect()
}

impl EpochInput {
    fn check(&self) -> Result<usize, MechanismError> {
        let n = self.stake.len();
        let bad = |m: String| Err(MechanismError::Input(m));
        if n == 0 || n > u16::MAX as usize {
            return bad(format!("{n} uids: need 1 to 65535"));
        }
        if let Some(s) = self.stake.iter().find(|s| !s.is_finite() || **s < 0.0) {
            return bad(format!("stake {s} is not a non-negative number"));
        }
        // The chain's stake is I64F64 (integers below 2^63): the total must fit.
        if self.stake.iter().sum::<f64>() >= 2f64.powi(62) {
            return bad("total stake must be below 2^62 (the chain's I64F64)".into());
        }
        let mut matrices = vec![("weights", &self.weights)];
        matrices.extend(self.bonds.as_ref().map(|b| ("bonds", b)));
        for (what, m) in matrices {
            if m.len() != n {
                return bad(format!("`{what}` has {} rows, expected {n}", m.len()));
            }
            if let Some(i) = m.iter().position(|r| r.len() != n) {
                return bad(format!(
                    "`{what}` row {i} has {} entries, expected {n}",
                    m[i].len()
                ));
            }
        }
        if self.validator_permit.len() != n {
            return bad(format!(
                "`validator_permit` has {} entries, expected {n}",
                self.validator_permit.len()
            ));
        }
        if self.active.as_ref().is_some_and(|a| a.len() != n) {
            return bad(format!("`active` must have {n} entries"));
        }
        if self.bonds_moving_average > 1_000_000 {
            return bad("`bonds_moving_average` is in millionths: at most 1000000".into());
        }
        if !self.emission.is_finite() || !(0.0..1e19).contains(&self.emission) {
            return bad(format!(
                "`emission` {} is not a non-negative number",
                self.emission
            ));
        }
        Ok(n)
    }

    /// Runs the epoch.
    pub fn run(&self) -> Result<EpochOutput, MechanismError> {
        let n = self.check()?;
        // 1. Stake, and the active stake of permitted validators.
        let mut stake_64: Vec<I64F64> = self.stake.iter().map(|s| I64F64::from_num(*s)).collect();
        normalize_64(&mut stake_64);
        let stake: Vec<I32F32> = stake_64.iter().map(|s| I32F32::from_num(*s)).collect();
        let forbids: Vec<bool> = self.validator_permit.iter().map(|p| !p).collect();
        let mut active_stake = stake.clone();
        if let Some(active) = &self.active {
            let inactive: Vec<bool> = active.iter().map(|a| !a).collect();
            mask_vector(&inactive, &mut active_stake);
        }
        mask_vector(&forbids, &mut active_stake);
        normalize(&mut active_stake);

        // 2. Weights.
        let mut weights = mask_diagonal(&mask_rows(&forbids, &sparse(&self.weights)));
        row_normalize(&mut weights);

        // 3–5. Consensus, clipping, validator trust, ranks and incentive.
        let kappa = fixed::from_u16_proportion(self.kappa);
        let consensus = weighted_median_col(&active_stake, &weights, n, kappa);
        let clipped = col_clip(&weights, &consensus);
        let validator_trust = row_sum(&clipped);
        let mut incentive = matmul(&clipped, &active_stake, n);
        normalize(&mut incentive);

        // 6. Bonds and dividends.
        let mut bonds = self
            .bonds
            .as_deref()
            .map(sparse)
            .unwrap_or_else(|| vec![Vec::new(); n]);
        col_normalize(&mut bonds, n);
        let mut delta = row_hadamard(&clipped, &active_stake);
        col_normalize(&mut delta, n);
        let moving_average =
            I64F64::from_num(self.bonds_moving_average) / I64F64::from_num(1_000_000);
        let alpha = I32F32::from_num(1) - I32F32::from_num(moving_average);
        let mut ema_bonds = ema(&delta, &bonds, alpha, n);
        col_normalize(&mut ema_bonds, n);
        let mut dividends = matmul_transpose(&ema_bonds, &incentive);
        normalize(&mut dividends);

        // 7. Emission.
        let total: I32F32 = incentive.iter().chain(&dividends).sum();
        let share = |x: I32F32| {
            if total == fixed::zero() {
                fixed::zero()
            } else {
                x.saturating_div(total)
            }
        };
        let emission_total = I96F32::from_num(self.emission);
        let emission = incentive
            .iter()
            .zip(&dividends)
            .map(|(i, d)| {
                let part =
                    |x: I32F32| (I96F32::from_num(share(x)) * emission_total).to_num::<u64>();
                part(*i) + part(*d)
            })
            .collect();

        let to_u16 = |v: &[I32F32]| {
            v.iter()
                .map(|x| to_u16_proportion(*x))
                .collect::<Vec<u16>>()
        };
        let bonds = ema_bonds
            .iter()
            .zip(&self.validator_permit)
            .map(|(row, permitted)| {
                let mut dense = vec![0u16; n];
                if *permitted {
                    for (j, v) in row {
                        dense[*j as usize] = to_u16_proportion(*v);
                    }
                }
                dense
            })
            .collect();
        Ok(EpochOutput {
            consensus: to_u16(&consensus),
            incentive: to_u16(&incentive),
            dividends: to_u16(&dividends),
            validator_trust: to_u16(&validator_trust),
            bonds,
            emission,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's worked example: three uids with permits, stake 1000 / 500 / 0.
    fn worked_example(stake: Vec<f64>) -> EpochInput {
        EpochInput {
            stake,
            weights: vec![vec![0, 65535, 32767], vec![65535, 0, 65535], vec![0, 0, 0]],
            bonds: None,
            validator_permit: vec![true; 3],
            active: None,
            kappa: default_kappa(),
            bonds_moving_average: default_bonds_moving_average(),
            emission: default_emission(),
        }
    }

    const CONSENSUS: [u16; 3] = [0, 43690, 21844];
    const TRUST: [u16; 3] = [65534, 21844, 0];
    const INCENTIVE: [u16; 3] = [0, 37449, 28085];
    const DIVIDENDS: [u16; 3] = [56173, 9361, 0];

    fn bonds() -> Vec<Vec<u16>> {
        vec![vec![0, 65535, 43690], vec![0, 0, 21844], vec![0, 0, 0]]
    }

    /// With the stake exactly 2 : 1, consensus, validator trust and bonds are what the chain
    /// stored, and incentive and dividends are within one unit of the last place: in exact
    /// arithmetic incentive is 37448.8 / 65535, which no truncation (the chain's rounding)
    /// or rounding to nearest turns into both 37449 and 28085. The runtime's stake was not
    /// exactly 2 : 1 (uid 0's share of the active stake must lie in [0.6666743, 0.6666819] for
    /// all five stored vectors at once; see `with_the_runtimes_stake_ratio…`).
    #[test]
    fn the_worked_example_at_the_nominal_stake() {
        let out = worked_example(vec![1000.0, 500.0, 0.0]).run().unwrap();
        assert_eq!(out.consensus, CONSENSUS);
        assert_eq!(out.validator_trust, TRUST);
        assert_eq!(out.bonds, bonds());
        let near =
            |got: &[u16], want: [u16; 3]| got.iter().zip(want).all(|(g, w)| g.abs_diff(w) <= 1);
        assert!(near(&out.incentive, INCENTIVE), "{:?}", out.incentive);
        assert!(near(&out.dividends, DIVIDENDS), "{:?}", out.dividends);
        // Each share truncates to whole units: at most one unit lost per uid and part.
        assert!(out.emission.iter().sum::<u64>().abs_diff(1_000_000_000) <= 6);
    }

    #[test]
    fn with_the_runtimes_stake_ratio_every_stored_value_matches_exactly() {
        let out = worked_example(vec![1000.0, 499.98, 0.0]).run().unwrap();
        assert_eq!(out.consensus, CONSENSUS);
        assert_eq!(out.validator_trust, TRUST);
        assert_eq!(out.bonds, bonds());
        assert_eq!(out.incentive, INCENTIVE);
        assert_eq!(out.dividends, DIVIDENDS);
    }

    #[test]
    fn malformed_inputs_are_refused_naming_the_field() {
        let mut input = worked_example(vec![1.0, 1.0, 1.0]);
        input.weights[1].pop();
        assert!(
            input
                .run()
                .unwrap_err()
                .to_string()
                .contains("`weights` row 1")
        );
        let mut input = worked_example(vec![1.0, f64::NAN, 1.0]);
        assert!(input.run().is_err());
        input.stake = vec![1e30; 3];
        assert!(input.run().unwrap_err().to_string().contains("2^62"));
        input.stake = vec![1.0; 3];
        input.emission = 1e30;
        assert!(input.run().unwrap_err().to_string().contains("emission"));
        input.emission = 1e9;
        input.stake = vec![1.0; 3];
        input.validator_permit.pop();
        assert!(
            input
                .run()
                .unwrap_err()
                .to_string()
                .contains("validator_permit")
        );
    }
}
