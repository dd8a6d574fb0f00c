//! Byzantine filtering: which peers' pseudo-gradients a validator leaves out of a round's
//! average and scores zero, and why.
//!
//! Checks, in order (the first that fails is the reason recorded):
//! 1. every value finite;
//! 2. the update's norm within `max_z` robust z-scores (median / MAD) of the group's norms —
//!    zero updates from lazy peers and blown-up ones from broken or hostile peers;
//! 3. not a copy (cosine ≥ `duplicate_cosine`) of an update whose hash was committed to the
//!    ledger earlier — payloads are revealed only after every commitment, so the first
//!    committer is the author and later ones copied;
//! 4. not raising the validator's loss on its own (`v({j}) < −loss_tolerance`).

use serde::{Deserialize, Serialize};

/// Why a peer's update was left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Rejection {
    /// A value was NaN or infinite.
    NonFinite {
        /// Index of the first bad value.
        index: usize,
    },
    /// The norm was far from the group's.
    NormOutlier {
        /// The update's L2 norm.
        norm: f64,
        /// The group's median norm.
        median: f64,
        /// The robust z-score.
        z: f64,
    },
    /// The norm was far above the group's median.
    NormAboveMedian {
        /// The update's L2 norm.
        norm: f64,
        /// The group's median norm.
        median: f64,
        /// The largest ratio allowed.
        ratio: f64,
    },
    /// A copy of an earlier-committed peer's update.
    Copycat {
        /// The peer copied.
        of: usize,
        /// Cosine similarity with it.
        cosine: f64,
    },
    /// Applying the update alone raised the validator's loss.
    RaisesLoss {
        /// Loss increase.
        by: f64,
    },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NonFinite { index } => write!(f, "non-finite value at index {index}"),
            Self::NormOutlier { norm, median, z } => write!(
                f,
                "norm {norm:.4e} is {z:.1} robust z-scores from the median {median:.4e}"
            ),
            Self::NormAboveMedian {
                norm,
                median,
                ratio,
            } => write!(
                f,
                "norm {norm:.3e} is over {ratio} times the median {median:.3e}"
            ),
            Self::Copycat { of, cosine } => write!(
                f,
                "copies peer {of}'s update (cosine {cosine:.5}), which was committed first"
            ),
            Self::RaisesLoss { by } => write!(f, "raises the validator's loss by {by:.4e}"),
        }
    }
}

/// Filtering thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// Largest robust z-score (0.6745 · |x − median| / MAD) of an update's norm.
    pub max_z: f64,
    /// The MAD is floored at this fraction of the median, so that near-identical honest norms
    /// do not make tiny differences look extreme.
    pub min_spread: f64,
    /// Cosine similarity at or above which an update counts as a copy.
    pub duplicate_cosine: f64,
    /// Loss increase (alone) above which an update is refused.
    pub loss_tolerance: f64,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            max_z: 3.5,
            min_spread: 0.15,
            duplicate_cosine: 0.995,
            loss_tolerance: 0.0,
        }
    }
}

fn norm(x: &[f32]) -> f64 {
    x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let denominator = norm(a) * norm(b);
    if denominator == 0.0 {
        if norm(a) == norm(b) { 1.0 } else { 0.0 }
    } else {
        dot / denominator
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        0.5 * (values[n / 2 - 1] + values[n / 2])
    }
}

/// How far above the median norm a contribution may be, under [`NormRule::AboveMedian`]'s
/// default (runs without a ledger).
pub const MAX_NORM_RATIO: f64 = 10.0;

/// When a norm is too far from the group's to use. One rule, two settings: a run's shard
/// owners without a ledger refuse only blown-up updates; validators (and shard owners in a run
/// keeping a ledger) also refuse updates far below the others, such as a lazy peer's zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NormRule {
    /// Over `ratio` times the median.
    AboveMedian {
        /// The largest ratio to the median.
        ratio: f64,
    },
    /// Over `max_z` robust z-scores (0.6745 · |x − median| / MAD) either way, the MAD floored
    /// at `min_spread` of the median.
    RobustZ {
        /// The largest z-score.
        max_z: f64,
        /// The MAD's floor, as a fraction of the median.
        min_spread: f64,
    },
}

impl FilterConfig {
    /// The validators' norm rule.
    pub fn norm_rule(&self) -> NormRule {
        NormRule::RobustZ {
            max_z: self.max_z,
            min_spread: self.min_spread,
        }
    }
}

/// The norms too far from the others' under `rule`: one entry per norm. Fewer than three
/// norms: none is flagged (with two, neither is the outlier).
pub fn norm_outliers(norms: &[f64], rule: &NormRule) -> Vec<Option<Rejection>> {
    if norms.len() < 3 {
        return vec![None; norms.len()];
    }
    let med = median(&mut norms.to_vec());
    match *rule {
        NormRule::AboveMedian { ratio } => norms
            .iter()
            .map(|&norm| {
                (norm > ratio * med.max(f64::MIN_POSITIVE)).then_some(Rejection::NormAboveMedian {
                    norm,
                    median: med,
                    ratio,
                })
            })
            .collect(),
        NormRule::RobustZ { max_z, min_spread } => {
            let mut deviations: Vec<f64> = norms.iter().map(|x| (x - med).abs()).collect();
            let mad = median(&mut deviations).max(min_spread * med);
            norms
                .iter()
                .map(|&norm| {
                    let z = if mad > 0.0 {
                        0.6745 * (norm - med).abs() / mad
                    } else if norm == med {
                        0.0
                    } else {
                        f64::INFINITY
                    };
                    (z > max_z).then_some(Rejection::NormOutlier {
                        norm,
                        median: med,
                        z,
                    })
                })
                .collect()
        }
    }
}

/// Filters one round's updates. `committed_at[j]` orders the peers' commitments (earlier is
/// smaller: block number and position); `alone(j)` is `v({j})`, asked only of peers that pass
/// the cheaper checks. Returns one entry per peer: `None` if it may be averaged and scored.
pub fn filter(
    updates: &[&[f32]],
    committed_at: &[u64],
    mut alone: impl FnMut(usize) -> f64,
    config: &FilterConfig,
) -> Vec<Option<Rejection>> {
    let n = updates.len();
    let mut verdict: Vec<Option<Rejection>> = updates
        .iter()
        .map(|u| {
            u.iter()
                .position(|v| !v.is_finite())
                .map(|index| Rejection::NonFinite { index })
        })
        .collect();

    let norms: Vec<f64> = updates.iter().map(|u| norm(u)).collect();
    let finite: Vec<usize> = (0..n).filter(|j| verdict[*j].is_none()).collect();
    let finite_norms: Vec<f64> = finite.iter().map(|j| norms[*j]).collect();
    for (j, outlier) in finite
        .iter()
        .zip(norm_outliers(&finite_norms, &config.norm_rule()))
    {
        verdict[*j] = outlier;
    }

    let mut by_commitment: Vec<usize> = (0..n).collect();
    by_commitment.sort_by_key(|j| (committed_at[*j], *j));
    for (k, &j) in by_commitment.iter().enumerate() {
        if verdict[j].is_some() {
            continue;
        }
        let copied = by_commitment[..k]
            .iter()
            .filter(|&&i| !matches!(verdict[i], Some(Rejection::NonFinite { .. })))
            .map(|&i| (i, cosine(updates[i], updates[j])))
            .find(|(_, c)| *c >= config.duplicate_cosine);
        if let Some((of, cosine)) = copied {
            verdict[j] = Some(Rejection::Copycat { of, cosine });
        }
    }

    for (j, v) in verdict.iter_mut().enumerate() {
        if v.is_none() {
            let gain = alone(j);
            if gain < -config.loss_tolerance {
                *v = Some(Rejection::RaisesLoss { by: -gain });
            }
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norms_far_above_the_median_are_refused_under_the_ratio_rule() {
        let rule = NormRule::AboveMedian {
            ratio: MAX_NORM_RATIO,
        };
        let flagged = |norms: &[f64]| -> Vec<bool> {
            norm_outliers(norms, &rule)
                .iter()
                .map(Option::is_some)
                .collect()
        };
        assert_eq!(flagged(&[1.0, 1e6]), vec![false, false]);
        assert_eq!(
            flagged(&[1.0, 1.3, 0.8, 50.0]),
            vec![false, false, false, true]
        );
        assert_eq!(flagged(&[0.0, 0.0, 1.0]), vec![false, false, true]);
        // A lazy zero update passes the ratio rule but not the validators' z rule.
        let lazy = [1.0, 1.1, 0.9, 0.0];
        assert_eq!(flagged(&lazy), vec![false; 4]);
        let z = norm_outliers(&lazy, &FilterConfig::default().norm_rule());
        assert!(
            z[3].is_some() && z[..3].iter().all(Option::is_none),
            "{z:?}"
        );
    }

    fn honest(seed: u32) -> Vec<f32> {
        (0..64)
            .map(|i| (((i * 7 + seed * 13) % 17) as f32 - 8.0) * 0.01 + 0.02)
            .collect()
    }

    #[test]
    fn each_kind_of_bad_update_is_caught_with_its_reason() {
        let a = honest(1);
        let b = honest(2);
        let c = honest(3);
        let mut nan = honest(4);
        nan[5] = f32::NAN;
        let zeros = vec![0.0f32; 64];
        let huge: Vec<f32> = honest(5).iter().map(|v| v * 50.0).collect();
        let copy: Vec<f32> = a.iter().map(|v| v * 1.0001).collect();
        let harmful = honest(6);
        let updates: Vec<&[f32]> = vec![&a, &b, &c, &nan, &zeros, &huge, &copy, &harmful];
        let committed = [0, 1, 2, 3, 4, 5, 9, 6];
        let mut asked = Vec::new();
        let verdict = filter(
            &updates,
            &committed,
            |j| {
                asked.push(j);
                if j == 7 { -0.1 } else { 0.2 }
            },
            &FilterConfig::default(),
        );
        assert!(verdict[..3].iter().all(Option::is_none), "{verdict:?}");
        assert_eq!(verdict[3], Some(Rejection::NonFinite { index: 5 }));
        assert!(matches!(verdict[4], Some(Rejection::NormOutlier { .. })));
        assert!(matches!(verdict[5], Some(Rejection::NormOutlier { .. })));
        assert!(matches!(verdict[6], Some(Rejection::Copycat { of: 0, .. })));
        assert!(matches!(verdict[7], Some(Rejection::RaisesLoss { .. })));
        assert_eq!(
            asked,
            vec![0, 1, 2, 7],
            "the loss is asked only of survivors"
        );
    }

    #[test]
    fn the_earlier_commitment_wins_whoever_sent_first() {
        let a = honest(1);
        let b = honest(2);
        let c = honest(3);
        let updates: Vec<&[f32]> = vec![&a, &b, &c, &a];
        let verdict = filter(&updates, &[5, 1, 2, 0], |_| 1.0, &FilterConfig::default());
        assert!(matches!(verdict[0], Some(Rejection::Copycat { of: 3, .. })));
        assert!(verdict[3].is_none());
    }
}
