//! One validator's scores for one round: filter the peers' pseudo-gradients, value the
//! survivors by Shapley (accurate) and Fisher importance (cheap), and turn the chosen score
//! into the validator's weight row.
//!
//! The value of a coalition `S` is supplied by the caller (the trainer, which owns the model):
//! `v(S) = L(θ) − L(θ after the outer step built from the mean of {Δ_j : j ∈ S})`.
//! Fisher importance is the second-order Taylor estimate of the cost of removing peer j,
//! `w_j = g·Δ_j + ½ Δ_jᵀ F Δ_j`, from the gradient `g` and the diagonal empirical Fisher `F` of
//! the validator's loss at θ.

use serde::{Deserialize, Serialize};

use crate::filter::{FilterConfig, Rejection, filter};
use crate::shapley::{self, Coalitions, EXACT_MAX};

/// Which score becomes the weight row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreKind {
    /// Shapley values (exact up to eight survivors, Monte-Carlo above).
    Shapley,
    /// Fisher importance.
    Fisher,
}

/// How a validator scores a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringConfig {
    /// The score that becomes weights.
    pub weights_from: ScoreKind,
    /// Monte-Carlo permutations when more than eight peers survive filtering.
    pub permutations: usize,
    /// Monte-Carlo truncation: stop a permutation within this fraction of `v(N)`.
    pub truncation: f64,
    /// Byzantine filtering thresholds.
    pub filter: FilterConfig,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        Self {
            weights_from: ScoreKind::Shapley,
            permutations: 256,
            truncation: 0.01,
            filter: FilterConfig::default(),
        }
    }
}

/// The gradient and diagonal empirical Fisher of the validator's loss at θ.
pub struct Curvature<'a> {
    /// `∇L(θ)`.
    pub gradient: &'a [f32],
    /// `E[(∇ℓ)²]` over the validator's batches.
    pub fisher: &'a [f32],
}

/// One validator's verdict on one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundScores {
    /// Why each peer was left out (`None`: averaged and scored).
    pub rejected: Vec<Option<Rejection>>,
    /// Shapley value of each peer (0 for the rejected).
    pub shapley: Vec<f64>,
    /// Standard error of each Shapley value (0 when exact).
    pub shapley_std_error: Vec<f64>,
    /// Fisher importance of each peer (0 for the rejected), if curvature was given.
    pub fisher: Option<Vec<f64>>,
    /// The weight row: non-negative, summing to 1 (all zero if nobody earned anything).
    pub weights: Vec<f64>,
    /// Coalition values evaluated.
    pub evaluations: usize,
    /// Monte-Carlo permutations (0 when exact).
    pub permutations: usize,
}

/// `g·Δ + ½ ΔᵀFΔ` for a diagonal `F`.
pub fn fisher_importance(curvature: &Curvature<'_>, delta: &[f32]) -> f64 {
    delta
        .iter()
        .zip(curvature.gradient)
        .zip(curvature.fisher)
        .map(|((d, g), f)| {
            let d = *d as f64;
            *g as f64 * d + 0.5 * *f as f64 * d * d
        })
        .sum()
}

/// Scores clamped at zero and normalized to sum 1 (all zero if none is positive).
pub fn weight_row(scores: &[f64]) -> Vec<f64> {
    let clamped: Vec<f64> = scores
        .iter()
        .map(|s| if s.is_finite() { s.max(0.0) } else { 0.0 })
        .collect();
    let total: f64 = clamped.iter().sum();
    if total > 0.0 {
        clamped.iter().map(|s| s / total).collect()
    } else {
        clamped
    }
}

/// A weight row as the chain takes it: `u16`, the largest at 65535 (the chain normalizes rows
/// itself, so the scale only sets the precision).
pub fn to_u16_row(row: &[f64]) -> Vec<u16> {
    let max = row.iter().cloned().fold(0.0, f64::max);
    if max <= 0.0 {
        return vec![0; row.len()];
    }
    row.iter()
        .map(|w| (w / max * 65535.0).round() as u16)
        .collect()
}

/// Filters one round: `game` is over all the round's peers (`0..n`); its singleton values
/// answer the loss check and stay memoised for [`value_round`].
pub fn filter_round<F: FnMut(&[usize]) -> f64>(
    updates: &[&[f32]],
    committed_at: &[u64],
    game: &mut Coalitions<F>,
    config: &ScoringConfig,
) -> Vec<Option<Rejection>> {
    filter(updates, committed_at, |j| game.alone(j), &config.filter)
}

/// Values the peers that passed [`filter_round`] (Shapley exact up to eight survivors,
/// Monte-Carlo with `seed` above; Fisher if `curvature` is given) and builds the weight row.
/// Derive `seed` from the round and the validator so that anyone can recompute the scores.
pub fn value_round<F: FnMut(&[usize]) -> f64>(
    updates: &[&[f32]],
    rejected: Vec<Option<Rejection>>,
    game: &mut Coalitions<F>,
    curvature: Option<&Curvature<'_>>,
    config: &ScoringConfig,
    seed: u64,
) -> RoundScores {
    let n = updates.len();
    let survivors: Vec<usize> = (0..n).filter(|j| rejected[*j].is_none()).collect();
    game.set_players(survivors.clone());
    let estimate = if game.len() <= EXACT_MAX {
        shapley::exact(game)
    } else {
        shapley::monte_carlo(game, config.permutations, config.truncation, seed)
    };
    let mut shapley = vec![0.0; n];
    let mut shapley_std_error = vec![0.0; n];
    for (k, &j) in survivors.iter().enumerate() {
        shapley[j] = estimate.values[k];
        shapley_std_error[j] = estimate.std_errors[k];
    }
    let fisher = curvature.map(|c| {
        (0..n)
            .map(|j| {
                if rejected[j].is_none() {
                    fisher_importance(c, updates[j])
                } else {
                    0.0
                }
            })
            .collect::<Vec<f64>>()
    });
    let chosen = match (config.weights_from, &fisher) {
        (ScoreKind::Fisher, Some(f)) => f,
        _ => &shapley,
    };
    RoundScores {
        weights: weight_row(chosen),
        rejected,
        shapley,
        shapley_std_error,
        fisher,
        evaluations: game.evaluations(),
        permutations: estimate.permutations,
    }
}

fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|a, b| x[*a].total_cmp(&x[*b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        for k in i..=j {
            ranks[order[k]] = (i + j) as f64 / 2.0;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman's rank correlation (ties share their mean rank); 0 if either side is constant.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let mean = (n - 1.0) / 2.0;
    let cov: f64 = ra
        .iter()
        .zip(&rb)
        .map(|(x, y)| (x - mean) * (y - mean))
        .sum();
    let var = |r: &[f64]| r.iter().map(|x| (x - mean).powi(2)).sum::<f64>();
    let denominator = (var(&ra) * var(&rb)).sqrt();
    if denominator == 0.0 {
        0.0
    } else {
        cov / denominator
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn spearman_handles_ties_and_order() {
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        let r = spearman(&[0.0, 0.0, 1.0, 2.0], &[-1.0, 0.5, 1.0, 2.0]);
        assert!(r > 0.9 && r < 1.0, "{r}");
    }

    use super::*;

    #[test]
    fn weight_rows_are_non_negative_and_sum_to_one() {
        let row = weight_row(&[2.0, -1.0, 0.0, 6.0, f64::NAN]);
        assert_eq!(row, vec![0.25, 0.0, 0.0, 0.75, 0.0]);
        assert_eq!(to_u16_row(&row), vec![21845, 0, 0, 65535, 0]);
        assert_eq!(weight_row(&[-1.0, 0.0]), vec![0.0, 0.0]);
    }

    #[test]
    fn fisher_importance_is_the_taylor_estimate() {
        let curvature = Curvature {
            gradient: &[1.0, -2.0],
            fisher: &[4.0, 0.5],
        };
        // 1·0.5 + (−2)·1 + ½(4·0.25 + 0.5·1) = −0.75
        assert!((fisher_importance(&curvature, &[0.5, 1.0]) + 0.75).abs() < 1e-12);
    }

    #[test]
    fn a_round_with_a_lazy_peer_and_a_copycat_pays_only_the_honest() {
        // A linear toy: v(S) = mean of the members' "quality" (the honest ones 1, 2, 3).
        let a: Vec<f32> = (0..32).map(|i| (i as f32).sin()).collect();
        let b: Vec<f32> = (0..32).map(|i| (i as f32 * 1.3).cos()).collect();
        let c: Vec<f32> = (0..32).map(|i| (i as f32 * 0.7).sin() + 0.2).collect();
        let zeros = vec![0.0f32; 32];
        let updates: Vec<&[f32]> = vec![&a, &b, &c, &zeros, &a];
        let quality = [1.0, 2.0, 3.0, 0.0, 1.0];
        let value = |s: &[usize]| s.iter().map(|j| quality[*j]).sum::<f64>() / s.len() as f64;
        let config = ScoringConfig::default();
        let mut game = Coalitions::new((0..5).collect(), value);
        let rejected = filter_round(&updates, &[0, 1, 2, 3, 4], &mut game, &config);
        let scores = value_round(&updates, rejected, &mut game, None, &config, 0);
        assert!(scores.rejected[3].is_some() && scores.rejected[4].is_some());
        assert_eq!(scores.weights[3] + scores.weights[4], 0.0);
        assert!(scores.weights[2] > scores.weights[1] && scores.weights[1] > scores.weights[0]);
        assert!((scores.weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
}
