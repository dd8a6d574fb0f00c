//! Shapley values of the peers of one round: how much each peer's pseudo-gradient was worth,
//! averaged over every order in which the group could have been assembled.
//!
//! The game is a [`Coalitions`]: a value function `v(S)` (for sinter, the validator's loss drop
//! when the outer step is built from the mean of the members' updates) evaluated at most once
//! per coalition. [`exact`] visits all `2^n` coalitions (n ≤ [`EXACT_MAX`]);
//! [`monte_carlo`] samples permutations in groups (all rotations of one, or one and its
//! reverse) from a seeded ChaCha generator (`StdRng` of rand 0.9), truncating a permutation once its prefix already holds all but
//! `tolerance` of `v(N)` (the TMC-Shapley trick: late members add nothing measurable), and
//! reports each value's standard error. Same seed, same game → same scores on any machine.

use std::collections::HashMap;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// Largest group [`exact`] enumerates (2^8 = 256 coalitions).
pub const EXACT_MAX: usize = 8;

/// A cooperative game over `players` peers with a memoised value function.
pub struct Coalitions<F: FnMut(&[usize]) -> f64> {
    players: Vec<usize>,
    value: F,
    cache: HashMap<Vec<usize>, f64>,
}

impl<F: FnMut(&[usize]) -> f64> Coalitions<F> {
    /// A game over `players` (peer indices handed to `value`); `value(&[])` is taken as 0.
    pub fn new(players: Vec<usize>, value: F) -> Self {
        Self {
            players,
            value,
            cache: HashMap::new(),
        }
    }

    /// Plays the same value function (and its memo) over other players.
    pub fn set_players(&mut self, players: Vec<usize>) {
        self.players = players;
    }

    /// How many players the game has.
    pub fn len(&self) -> usize {
        self.players.len()
    }

    /// Whether the game has no players.
    pub fn is_empty(&self) -> bool {
        self.players.is_empty()
    }

    /// Value functions evaluated so far (the expensive part).
    pub fn evaluations(&self) -> usize {
        self.cache.len()
    }

    /// `v(S)` for the coalition of player positions marked in `members`.
    pub fn value(&mut self, members: &[bool]) -> f64 {
        let mut peers: Vec<usize> = members
            .iter()
            .zip(&self.players)
            .filter(|(m, _)| **m)
            .map(|(_, p)| *p)
            .collect();
        if peers.is_empty() {
            return 0.0;
        }
        peers.sort_unstable();
        if let Some(v) = self.cache.get(&peers) {
            return *v;
        }
        let v = (self.value)(&peers);
        self.cache.insert(peers, v);
        v
    }

    /// The value of one player alone (position `i`).
    pub fn alone(&mut self, i: usize) -> f64 {
        let mut members = vec![false; self.len()];
        members[i] = true;
        self.value(&members)
    }

    /// The value of the whole group.
    pub fn everyone(&mut self) -> f64 {
        self.value(&vec![true; self.len()])
    }
}

/// Shapley values with their standard errors (zero when exact).
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// Each player's value, in the order of the game's players.
    pub values: Vec<f64>,
    /// Each value's standard error.
    pub std_errors: Vec<f64>,
    /// Permutations sampled (0 for exact values).
    pub permutations: usize,
}

/// Exact Shapley values: `φ_j = Σ_{S ∌ j} |S|!(n−|S|−1)!/n! · (v(S ∪ {j}) − v(S))`.
///
/// # Panics
/// If the game has more than [`EXACT_MAX`] players.
pub fn exact<F: FnMut(&[usize]) -> f64>(game: &mut Coalitions<F>) -> Estimate {
    let n = game.len();
    assert!(
        n <= EXACT_MAX,
        "exact Shapley for {n} > {EXACT_MAX} players"
    );
    let factorial = |k: usize| (1..=k).product::<usize>() as f64;
    let mut values = vec![0.0; n];
    for mask in 0u32..(1 << n) {
        let members: Vec<bool> = (0..n).map(|i| mask & (1 << i) != 0).collect();
        let size = mask.count_ones() as usize;
        if size == n {
            continue;
        }
        let base = game.value(&members);
        let weight = factorial(size) * factorial(n - size - 1) / factorial(n);
        for j in (0..n).filter(|j| !members[*j]) {
            let mut with = members.clone();
            with[j] = true;
            values[j] += weight * (game.value(&with) - base);
        }
    }
    Estimate {
        values,
        std_errors: vec![0.0; n],
        permutations: 0,
    }
}

/// Monte-Carlo Shapley values from about `permutations` sampled orders, seeded by `seed`.
///
/// Orders come in groups that are one sample each: a random permutation and its reverse
/// (antithetic: their estimates are negatively correlated), and, when the budget allows four
/// such groups, all `n` cyclic rotations of both (every player then takes every position
/// once per group, which cancels the large "who came first" term of games where any one
/// member already achieves most of `v(N)`).
/// With `tolerance > 0`, an order stops evaluating once
/// `|v(N) − v(prefix)| ≤ tolerance · |v(N)|`; the players after that point are credited zero.
pub fn monte_carlo<F: FnMut(&[usize]) -> f64>(
    game: &mut Coalitions<F>,
    permutations: usize,
    tolerance: f64,
    seed: u64,
) -> Estimate {
    let n = game.len();
    let rotations = n >= 2 && permutations >= 8 * n;
    let group = if rotations { 2 * n } else { 2 };
    let groups = permutations.div_ceil(group).max(1);
    let total = game.everyone();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sum = vec![0.0; n];
    let mut sum_sq = vec![0.0; n];
    let mut order: Vec<usize> = (0..n).collect();
    for _ in 0..groups {
        order.shuffle(&mut rng);
        let reverse: Vec<usize> = order.iter().rev().copied().collect();
        let walks: Vec<Vec<usize>> = if rotations {
            [&order, &reverse]
                .into_iter()
                .flat_map(|o| (0..n).map(|r| o[r..].iter().chain(&o[..r]).copied().collect()))
                .collect()
        } else {
            vec![order.clone(), reverse]
        };
        let mut sample = vec![0.0; n];
        for walk in walks {
            let mut members = vec![false; n];
            let mut previous = 0.0;
            for j in walk {
                if tolerance > 0.0 && (total - previous).abs() <= tolerance * total.abs() {
                    break;
                }
                members[j] = true;
                let current = game.value(&members);
                sample[j] += (current - previous) / group as f64;
                previous = current;
            }
        }
        for j in 0..n {
            sum[j] += sample[j];
            sum_sq[j] += sample[j] * sample[j];
        }
    }
    let samples = groups as f64;
    let values: Vec<f64> = sum.iter().map(|s| s / samples).collect();
    let std_errors = values
        .iter()
        .zip(&sum_sq)
        .map(|(mean, sq)| {
            if groups < 2 {
                return f64::INFINITY;
            }
            let variance = (sq - samples * mean * mean).max(0.0) / (samples - 1.0);
            (variance / samples).sqrt()
        })
        .collect();
    Estimate {
        values,
        std_errors,
        permutations: group * groups,
    }
}

/// `‖estimate − truth‖₂ / ‖truth‖₂` (0 when both are zero).
pub fn relative_error(estimate: &[f64], truth: &[f64]) -> f64 {
    let diff: f64 = estimate
        .iter()
        .zip(truth)
        .map(|(e, t)| (e - t).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = truth.iter().map(|t| t * t).sum::<f64>().sqrt();
    if norm > 0.0 { diff / norm } else { diff }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A game with synergy and redundancy: players 0 and 1 are substitutes, 2 helps only
    /// alongside 3, the rest add their index.
    fn interesting(members: &[usize]) -> f64 {
        let has = |p: usize| members.contains(&p);
        let mut v = if has(0) || has(1) { 3.0 } else { 0.0 };
        if has(2) && has(3) {
            v += 2.0;
        }
        v + members
            .iter()
            .filter(|p| **p >= 4)
            .map(|p| *p as f64 * 0.25)
            .sum::<f64>()
    }

    #[test]
    fn exact_values_are_efficient_symmetric_and_additive() {
        let mut game = Coalitions::new((0..6).collect(), interesting);
        let est = exact(&mut game);
        let total: f64 = est.values.iter().sum();
        assert!((total - game.everyone()).abs() < 1e-12, "efficiency");
        assert!((est.values[0] - 1.5).abs() < 1e-12, "{:?}", est.values);
        assert!((est.values[1] - 1.5).abs() < 1e-12);
        assert!((est.values[2] - 1.0).abs() < 1e-12);
        assert!((est.values[4] - 1.0).abs() < 1e-12);
        assert!((est.values[5] - 1.25).abs() < 1e-12);
        assert_eq!(game.evaluations(), 63, "each non-empty coalition once");
    }

    #[test]
    fn monte_carlo_is_seeded_and_close_to_exact_for_eight_players() {
        let mut game = Coalitions::new((0..8).collect(), interesting);
        let truth = exact(&mut game).values;
        let a = monte_carlo(&mut game, 256, 0.0, 7);
        let b = monte_carlo(&mut game, 256, 0.0, 7);
        assert_eq!(a, b, "same seed, same scores");
        let err = relative_error(&a.values, &truth);
        assert!(err < 0.05, "relative error {err}");
        for ((x, t), se) in a.values.iter().zip(&truth).zip(&a.std_errors) {
            assert!((x - t).abs() <= 4.0 * se + 1e-9, "{x} vs {t} ± {se}");
        }
    }

    #[test]
    fn truncation_saves_evaluations_when_late_players_add_nothing() {
        // Only player 0 matters: once it joined, the rest of a permutation is skipped (about
        // half of the evaluations).
        let value = |m: &[usize]| if m.contains(&0) { 1.0 } else { 0.0 };
        let mut full = Coalitions::new((0..12).collect(), value);
        monte_carlo(&mut full, 64, 0.0, 1);
        let mut truncated = Coalitions::new((0..12).collect(), value);
        let est = monte_carlo(&mut truncated, 64, 0.01, 1);
        assert!(3 * truncated.evaluations() < 2 * full.evaluations());
        assert!((est.values[0] - 1.0).abs() < 1e-12);
        assert!(est.values[1..].iter().all(|v| *v == 0.0));
    }
}
