//! The sparse gate of the Bittensor paper (eq. 9–10): a linear map from an example's features
//! to one score per miner. The `k` best scores, after exploration noise, choose the miners an
//! example goes to; the softmax of the chosen miners' scores weights their outputs in the
//! mixture; and the scores learn, by gradient descent on the mixture's loss, which miners help
//! on which text. Rows belong to uids and are forgotten when a uid's hotkey changes.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sinter_mechanism::ledger::keys::AccountId;

/// One miner's row of the gate.
struct Row {
    hotkey: AccountId,
    weights: Vec<f32>,
}

/// The gate.
pub struct Gate {
    features: usize,
    rows: BTreeMap<u16, Row>,
    learning_rate: f32,
    noise: f32,
    rng: StdRng,
}

impl Gate {
    /// A gate over `features` features (see [`features`]) that learns at `learning_rate` and
    /// explores with Gumbel noise of scale `noise` (0: always the best `k`).
    pub fn new(features: usize, learning_rate: f32, noise: f32, seed: u64) -> Self {
        Self {
            features,
            rows: BTreeMap::new(),
            learning_rate,
            noise,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Keeps the rows of `miners` (uid, hotkey), starting new or re-registered uids at zero.
    pub fn sync(&mut self, miners: &[(u16, AccountId)]) {
        self.rows
            .retain(|uid, row| miners.iter().any(|(u, h)| u == uid && *h == row.hotkey));
        for (uid, hotkey) in miners {
            self.rows.entry(*uid).or_insert_with(|| Row {
                hotkey: *hotkey,
                weights: vec![0.0; self.features],
            });
        }
    }

    /// Each miner's score for an example with features `x`, in uid order.
    pub fn scores(&self, x: &[f32]) -> Vec<(u16, f32)> {
        self.rows
            .iter()
            .map(|(uid, row)| (*uid, dot(&row.weights, x)))
            .collect()
    }

    /// The `k` miners an example with features `x` goes to: the best scores after noise.
    pub fn choose(&mut self, x: &[f32], k: usize) -> Vec<u16> {
        let mut noisy: Vec<(u16, f32)> = self
            .scores(x)
            .into_iter()
            .map(|(uid, s)| {
                let u: f32 = self.rng.random_range(f32::EPSILON..1.0);
                (uid, s + self.noise * -(-u.ln()).ln())
            })
            .collect();
        noisy.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut chosen: Vec<u16> = noisy.into_iter().take(k).map(|(uid, _)| uid).collect();
        chosen.sort_unstable();
        chosen
    }

    /// One step against `gradient[i]`, the mixture loss's derivative by the score of
    /// `uids[i]`, for an example with features `x`.
    pub fn learn(&mut self, x: &[f32], uids: &[u16], gradient: &[f64]) {
        for (uid, g) in uids.iter().zip(gradient) {
            if let Some(row) = self.rows.get_mut(uid) {
                let step = self.learning_rate * *g as f32;
                for (w, xi) in row.weights.iter_mut().zip(x) {
                    *w -= step * xi;
                }
            }
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// An example's features: its tokens counted into `dim - 1` buckets (token id modulo), scaled
/// to unit length, and a constant 1 (the bias).
pub fn features(tokens: &[u32], dim: usize) -> Vec<f32> {
    let buckets = dim.saturating_sub(1).max(1);
    let mut x = vec![0.0f32; buckets + 1];
    for &t in tokens {
        x[t as usize % buckets] += 1.0;
    }
    let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        x.iter_mut().for_each(|v| *v /= norm);
    }
    x[buckets] = 1.0;
    x
}

/// The softmax of `scores`.
pub fn softmax(scores: &[f64]) -> Vec<f64> {
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f64 = exp.iter().sum();
    exp.iter().map(|e| e / total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn miners(n: u16) -> Vec<(u16, AccountId)> {
        (0..n).map(|u| (u, AccountId([u as u8; 32]))).collect()
    }

    #[test]
    fn the_gate_learns_to_send_each_kind_of_text_to_the_miner_that_helps_on_it() {
        // Two kinds of text; miner 0 lowers the loss on kind A, miner 1 on kind B.
        let mut gate = Gate::new(9, 0.5, 0.0, 1);
        gate.sync(&miners(2));
        let a = features(&[0, 1, 2, 0, 1], 9);
        let b = features(&[5, 6, 7, 5, 6], 9);
        for _ in 0..200 {
            for (x, good) in [(&a, 0usize), (&b, 1usize)] {
                let scores: Vec<f64> = gate.scores(x).iter().map(|(_, s)| *s as f64).collect();
                let w = softmax(&scores);
                // Loss −ln(Σ w_i p_i) with p_good = 0.9, p_other = 0.1: d/ds_j = w_j (1 − p_j/m).
                let mut p = [0.1f64, 0.1];
                p[good] = 0.9;
                let m: f64 = w.iter().zip(&p).map(|(w, p)| w * p).sum();
                let gradient: Vec<f64> = (0..2).map(|j| w[j] * (1.0 - p[j] / m)).collect();
                gate.learn(x, &[0, 1], &gradient);
            }
        }
        assert_eq!(gate.choose(&a, 1), vec![0]);
        assert_eq!(gate.choose(&b, 1), vec![1]);
    }

    #[test]
    fn a_re_registered_uid_starts_over_and_noise_explores() {
        let mut gate = Gate::new(3, 1.0, 0.0, 1);
        gate.sync(&miners(3));
        let x = features(&[1], 3);
        gate.learn(&x, &[2], &[-5.0]);
        assert_eq!(gate.choose(&x, 1), vec![2]);
        let mut changed = miners(3);
        changed[2].1 = AccountId([9; 32]);
        gate.sync(&changed);
        assert!(gate.scores(&x).iter().all(|(_, s)| *s == 0.0));
        gate.sync(&miners(2));
        assert_eq!(gate.scores(&x).len(), 2);
        // With noise, a miner the gate ranks last is still asked now and then.
        let mut noisy = Gate::new(3, 1.0, 1.0, 7);
        noisy.sync(&miners(3));
        noisy.learn(&x, &[0, 1], &[-1.0, -1.0]);
        let picks = (0..400).filter(|_| noisy.choose(&x, 1) == vec![2]).count();
        assert!((5..200).contains(&picks), "{picks}");
    }
}
