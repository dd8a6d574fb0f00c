//! Yuma consensus as the Bittensor papers describe it (the seed paper's incentive mechanism),
//! selectable instead of the chain's algorithm with `consensus = "papers"`:
//!
//! - trust `T_j = Σ_i S_i [w_ij > 0]` (stake that gave j any weight),
//! - consensus `C = σ(ρ(T − κ))`,
//! - rank `R = Wᵀ S`, incentive `I = R ∘ C`, normalized,
//! - bonds accumulate: `B ← B + S_i w_ij` (in stake units, never decaying),
//! - emission `ΔS = ½ Bᵀ I + ½ I`: validators are paid through their column share of bonds,
//!   miners through incentive.
//!
//! Not on any chain, so plain `f64`; the same inputs give the same outputs on any IEEE-754
//! machine (fixed operation order).

use serde::{Deserialize, Serialize};

/// Sigmoid steepness and threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PapersParams {
    /// Consensus threshold κ (a stake fraction).
    pub kappa: f64,
    /// Sigmoid steepness ρ.
    pub rho: f64,
}

impl Default for PapersParams {
    fn default() -> Self {
        Self {
            kappa: 0.5,
            rho: 10.0,
        }
    }
}

/// One epoch's results, as fractions.
#[derive(Debug, Clone, PartialEq)]
pub struct PapersOutput {
    /// `σ(ρ(T − κ))` per uid.
    pub consensus: Vec<f64>,
    /// Incentive, summing to 1 (or all zero).
    pub incentive: Vec<f64>,
    /// Dividends, summing to 1 (or all zero).
    pub dividends: Vec<f64>,
    /// Each validator's weight on uids with consensus above ½.
    pub validator_trust: Vec<f64>,
    /// Each uid's share of the epoch's emission.
    pub emission_share: Vec<f64>,
}

fn normalized(x: &[f64]) -> Vec<f64> {
    let total: f64 = x.iter().sum();
    if total > 0.0 {
        x.iter().map(|v| v / total).collect()
    } else {
        vec![0.0; x.len()]
    }
}

/// Runs one epoch. `weights` rows may have any scale (they are normalized, self-weights and
/// rows without a permit dropped); `bonds` (n × n, stake units) is updated in place.
pub fn epoch(
    stake: &[f64],
    permits: &[bool],
    weights: &[Vec<f64>],
    bonds: &mut [Vec<f64>],
    params: &PapersParams,
) -> PapersOutput {
    let n = stake.len();
    let masked: Vec<f64> = stake
        .iter()
        .zip(permits)
        .map(|(s, p)| if *p { *s } else { 0.0 })
        .collect();
    let s = normalized(&masked);
    let w: Vec<Vec<f64>> = weights
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let kept: Vec<f64> = row
                .iter()
                .enumerate()
                .map(|(j, v)| if i == j || !permits[i] { 0.0 } else { *v })
                .collect();
            normalized(&kept)
        })
        .collect();
    let mut trust = vec![0.0; n];
    let mut rank = vec![0.0; n];
    for i in 0..n {
        for j in 0..n {
            if w[i][j] > 0.0 {
                trust[j] += s[i];
                rank[j] += s[i] * w[i][j];
                bonds[i][j] += s[i] * w[i][j];
            }
        }
    }
    let consensus: Vec<f64> = trust
        .iter()
        .map(|t| 1.0 / (1.0 + (-params.rho * (t - params.kappa)).exp()))
        .collect();
    let incentive = normalized(
        &rank
            .iter()
            .zip(&consensus)
            .map(|(r, c)| r * c)
            .collect::<Vec<f64>>(),
    );
    let column_totals: Vec<f64> = (0..n)
        .map(|j| bonds.iter().map(|row| row[j]).sum())
        .collect();
    let dividends = normalized(
        &bonds
            .iter()
            .map(|row| {
                (0..n)
                    .filter(|j| column_totals[*j] > 0.0)
                    .map(|j| row[j] / column_totals[j] * incentive[j])
                    .sum()
            })
            .collect::<Vec<f64>>(),
    );
    let validator_trust = w
        .iter()
        .map(|row| {
            row.iter()
                .zip(&consensus)
                .filter(|(_, c)| **c > 0.5)
                .map(|(v, _)| v)
                .sum()
        })
        .collect();
    let emission_share = normalized(
        &incentive
            .iter()
            .zip(&dividends)
            .map(|(i, d)| 0.5 * i + 0.5 * d)
            .collect::<Vec<f64>>(),
    );
    PapersOutput {
        consensus,
        incentive,
        dividends,
        validator_trust,
        emission_share,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_majority_backed_miner_outearns_a_minority_backed_one() {
        // uid 0 (70 % stake) backs miner 2, uid 1 (30 %) backs miner 3.
        let stake = [70.0, 30.0, 0.0, 0.0];
        let permits = [true, true, false, false];
        let weights = vec![
            vec![0.0, 0.0, 1.0, 0.0],
            vec![0.0, 0.0, 0.0, 1.0],
            vec![0.0; 4],
            vec![0.0; 4],
        ];
        let mut bonds = vec![vec![0.0; 4]; 4];
        let out = epoch(
            &stake,
            &permits,
            &weights,
            &mut bonds,
            &PapersParams::default(),
        );
        assert!(out.incentive[2] > 0.9, "{:?}", out.incentive);
        assert!((out.incentive.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((bonds[0][2] - 0.7).abs() < 1e-12 && (bonds[1][3] - 0.3).abs() < 1e-12);
        assert!(out.dividends[0] > out.dividends[1]);
        assert!((out.emission_share.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
}
