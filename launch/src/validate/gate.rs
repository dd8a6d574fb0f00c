//! The sparse gate of the Bittensor paper (eq. 9–10): a linear map from an example's features
//! to one score per miner. The `k` best scores, after exploration noise, choose the miners an
//! example goes to; the softmax of the chosen miners' scores weights their outputs in the
//! mixture; and the scores learn, by gradient descent on the mixture's loss, which miners help
//! on which text. Rows belong to uids and are forgotten when a uid's hotkey changes.
//!
//! The features are standardized by their running mean and variance over the examples seen:
//! what all text shares (its most common tokens) cancels, and what sets kinds of text apart is
//! what the scores learn from. Unstandardized, two corpora's token counts point almost the
//! same way and the gate learns little beyond one bias per miner.
//!
//! Answers are what a validator pays for, so the gate learns from each more than once: it
//! keeps the last [`REPLAY`] answered examples (their features, the miners that answered and
//! the probabilities each gave the targets) and after each round takes [`PASSES`] passes of
//! steps over them, each step with its current scores.

use std::collections::{BTreeMap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sinter_mechanism::ledger::keys::AccountId;

use super::value::loss_gradient;

/// Answered examples the gate keeps learning from.
pub const REPLAY: usize = 512;
/// Passes over them after each round.
pub const PASSES: usize = 8;

/// An answered example: its features, the miners that answered it, and the probability each
/// gave every target.
struct Seen {
    x: Vec<f32>,
    miners: Vec<(u16, AccountId)>,
    probs: Vec<Vec<f64>>,
}

/// One miner's row of the gate.
struct Row {
    hotkey: AccountId,
    weights: Vec<f32>,
}

/// The running mean and variance of the features (Welford's), the bias excluded.
#[derive(Default)]
struct Moments {
    count: f64,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

/// Added to a feature's variance before dividing by its root: a bucket that barely varies is
/// not blown up.
const VARIANCE_FLOOR: f64 = 1e-4;

impl Moments {
    fn observe(&mut self, x: &[f32]) {
        let n = x.len().saturating_sub(1);
        if self.mean.len() != n {
            *self = Self {
                count: 0.0,
                mean: vec![0.0; n],
                m2: vec![0.0; n],
            };
        }
        self.count += 1.0;
        for (i, &v) in x[..n].iter().enumerate() {
            let v = f64::from(v);
            let delta = v - self.mean[i];
            self.mean[i] += delta / self.count;
            self.m2[i] += delta * (v - self.mean[i]);
        }
    }

    /// `x` standardized (as it is before two examples are seen), scaled to unit length, with
    /// its bias kept.
    fn standardize(&self, x: &[f32]) -> Vec<f32> {
        let n = x.len().saturating_sub(1);
        let seen = self.count >= 2.0 && self.mean.len() == n;
        let mut z: Vec<f32> = (0..n)
            .map(|i| match seen {
                true => {
                    let variance = self.m2[i] / (self.count - 1.0);
                    ((f64::from(x[i]) - self.mean[i]) / (variance + VARIANCE_FLOOR).sqrt()) as f32
                }
                false => x[i],
            })
            .collect();
        let norm = z.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            z.iter_mut().for_each(|v| *v /= norm);
        }
        z.extend(x.get(n));
        z
    }
}

/// The gate.
pub struct Gate {
    features: usize,
    moments: Moments,
    rows: BTreeMap<u16, Row>,
    seen: VecDeque<Seen>,
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
            moments: Moments::default(),
            rows: BTreeMap::new(),
            seen: VecDeque::new(),
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
        // What a uid's former miner answered says nothing of its new one.
        let rows = &self.rows;
        self.seen.retain(|seen| {
            seen.miners
                .iter()
                .all(|(uid, hotkey)| rows.get(uid).is_some_and(|row| row.hotkey == *hotkey))
        });
    }

    /// Keeps an answered example for [`Gate::replay`]: its features `x`, the miners `uids`
    /// that answered it, and `probs[i]` the probabilities `uids[i]` gave its targets.
    pub fn remember(&mut self, x: Vec<f32>, uids: &[u16], probs: Vec<Vec<f64>>) {
        let miners = uids
            .iter()
            .filter_map(|uid| Some((*uid, self.rows.get(uid)?.hotkey)))
            .collect::<Vec<_>>();
        if miners.len() != uids.len() || probs.len() != uids.len() {
            return;
        }
        if self.seen.len() == REPLAY {
            self.seen.pop_front();
        }
        self.seen.push_back(Seen { x, miners, probs });
    }

    /// [`PASSES`] passes of steps on the mixture's loss over the examples kept, oldest first.
    pub fn replay(&mut self) {
        let seen = std::mem::take(&mut self.seen);
        for _ in 0..PASSES {
            for example in &seen {
                let uids: Vec<u16> = example.miners.iter().map(|(uid, _)| *uid).collect();
                let scores: BTreeMap<u16, f32> = self.scores(&example.x).into_iter().collect();
                let chosen: Vec<f64> = uids
                    .iter()
                    .map(|uid| f64::from(scores.get(uid).copied().unwrap_or(0.0)))
                    .collect();
                let weights = softmax(&chosen);
                let probs: Vec<&[f64]> = example.probs.iter().map(Vec::as_slice).collect();
                self.learn(&example.x, &uids, &loss_gradient(&probs, &weights));
            }
        }
        self.seen = seen;
    }

    /// Counts an example with features `x` into the running mean and variance the features
    /// are standardized by: each example once, before it is routed.
    pub fn observe(&mut self, x: &[f32]) {
        self.moments.observe(x);
    }

    /// Each miner's score for an example with features `x`, in uid order.
    pub fn scores(&self, x: &[f32]) -> Vec<(u16, f32)> {
        let z = self.moments.standardize(x);
        self.rows
            .iter()
            .map(|(uid, row)| (*uid, dot(&row.weights, &z)))
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
        let z = self.moments.standardize(x);
        for (uid, g) in uids.iter().zip(gradient) {
            if let Some(row) = self.rows.get_mut(uid) {
                let step = self.learning_rate * *g as f32;
                for (w, xi) in row.weights.iter_mut().zip(&z) {
                    *w -= step * xi;
                }
            }
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// An example's features: its tokens counted into the first half of `dim - 1` buckets (token
/// id modulo), its pairs of neighbouring tokens into the second half (hashed), scaled to unit
/// length; and a constant 1 (the bias). Pairs tell kinds of text apart where single tokens
/// barely do (a Milton window from a Shakespeare one, among others).
pub fn features(tokens: &[u32], dim: usize) -> Vec<f32> {
    let buckets = dim.saturating_sub(1).max(1);
    let singles = buckets.div_ceil(2);
    let pairs = buckets - singles;
    let mut x = vec![0.0f32; buckets + 1];
    for &t in tokens {
        x[t as usize % singles] += 1.0;
    }
    if pairs > 0 {
        for pair in tokens.windows(2) {
            let hash = u64::from(pair[0])
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(u64::from(pair[1]))
                .wrapping_mul(0xff51_afd7_ed55_8ccd);
            x[singles + (hash >> 32) as usize % pairs] += 1.0;
        }
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
        // Two kinds of text sharing their commonest token (as two corpora share spaces and
        // vowels); miner 0 lowers the loss on kind A, miner 1 on kind B.
        let mut gate = Gate::new(17, 0.5, 0.0, 1);
        gate.sync(&miners(2));
        let common = [0u32; 30];
        let a = features(&[&common[..], &[1, 2]].concat(), 17);
        let b = features(&[&common[..], &[5, 6]].concat(), 17);
        for _ in 0..30 {
            for (x, good) in [(&a, 0usize), (&b, 1usize)] {
                gate.observe(x);
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
        // Most of each kind's mixture is its miner's: what the texts share does not hide it.
        for (x, good) in [(&a, 0usize), (&b, 1usize)] {
            let scores: Vec<f64> = gate.scores(x).iter().map(|(_, s)| *s as f64).collect();
            assert!(softmax(&scores)[good] > 0.8, "{scores:?}");
        }
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
