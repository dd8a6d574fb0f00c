//! What a miner's answers are worth to the validator. Each answer gives, at every position of
//! an example, the probability of the token that really comes next (a token outside its top-k
//! gets an equal share of the mass left over). The gate's weights mix the answers of a set `S`
//! of miners, and `S` is worth `v(S) = ln(vocab) − L(S)`: how far the mixture's loss is below
//! a uniform guess (`v(∅) = 0`). A miner's value on the example is its Shapley value in that
//! game, exact up to eight miners and Monte-Carlo above; a miner that did not answer in time
//! is absent from every coalition.

use sinter_mechanism::shapley::{self, Coalitions, EXACT_MAX, Estimate};

use crate::synapse::TopK;

use super::gate::softmax;

/// The least probability a token gets: a miner claiming a certain wrong token is charged a
/// large but finite loss.
const FLOOR: f64 = 1e-9;

/// The probability `rows` (one per position) give each of `targets`, the tokens that follow
/// each position; `rows` and `targets` have the same length (checked by the caller).
pub fn target_probs(rows: &[TopK], targets: &[u32], vocab: u32) -> Vec<f64> {
    rows.iter()
        .zip(targets)
        .map(|(row, target)| {
            let p = match row.ids.iter().position(|id| id == target) {
                Some(i) => f64::from(half::bf16::from_bits(row.probs[i]).to_f32()),
                None => {
                    let others = u64::from(vocab).saturating_sub(row.ids.len() as u64).max(1);
                    f64::from(row.rest) / others as f64
                }
            };
            if p.is_finite() { p.max(FLOOR) } else { FLOOR }
        })
        .collect()
}

/// The loss (mean negative log-likelihood) of mixing `probs[i]` with weights `weights[i]`.
pub fn mixture_loss(probs: &[&[f64]], weights: &[f64]) -> f64 {
    let positions = probs.first().map_or(0, |p| p.len());
    if positions == 0 {
        return 0.0;
    }
    let total: f64 = (0..positions)
        .map(|t| {
            let mixed: f64 = probs.iter().zip(weights).map(|(p, w)| w * p[t]).sum();
            -mixed.max(FLOOR).ln()
        })
        .sum();
    total / positions as f64
}

/// The derivative of the mixture's loss by each gate score, where `weights` is the softmax of
/// those scores: `w_j (1 − mean_t p_j[t] / m[t])`.
pub fn loss_gradient(probs: &[&[f64]], weights: &[f64]) -> Vec<f64> {
    let positions = probs.first().map_or(0, |p| p.len());
    if positions == 0 {
        return vec![0.0; probs.len()];
    }
    let mixed: Vec<f64> = (0..positions)
        .map(|t| {
            probs
                .iter()
                .zip(weights)
                .map(|(p, w)| w * p[t])
                .sum::<f64>()
                .max(FLOOR)
        })
        .collect();
    probs
        .iter()
        .zip(weights)
        .map(|(p, w)| {
            let ratio: f64 = p.iter().zip(&mixed).map(|(p, m)| p / m).sum::<f64>();
            w * (1.0 - ratio / positions as f64)
        })
        .collect()
}

/// The Shapley value of each answering miner on one example: `probs[i]` the probabilities its
/// answer gives the example's targets, `scores[i]` its gate score.
pub fn example_values(
    probs: &[Vec<f64>],
    scores: &[f64],
    vocab: u32,
    permutations: usize,
    seed: u64,
) -> Estimate {
    let uniform = f64::from(vocab.max(1)).ln();
    let mut game = Coalitions::new((0..probs.len()).collect(), |members: &[usize]| {
        if members.is_empty() {
            return 0.0;
        }
        let chosen: Vec<&[f64]> = members.iter().map(|&i| probs[i].as_slice()).collect();
        let weights = softmax(&members.iter().map(|&i| scores[i]).collect::<Vec<_>>());
        uniform - mixture_loss(&chosen, &weights)
    });
    if probs.len() <= EXACT_MAX {
        shapley::exact(&mut game)
    } else {
        shapley::monte_carlo(&mut game, permutations, 0.0, seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16(p: f32) -> u16 {
        half::bf16::from_f32(p).to_bits()
    }

    #[test]
    fn a_token_outside_the_top_k_shares_the_mass_left_over_and_none_gets_zero() {
        let row = TopK {
            ids: vec![3, 1],
            probs: vec![bf16(0.5), bf16(0.25)],
            rest: 0.25,
        };
        let p = target_probs(&[row.clone(), row.clone(), row], &[3, 1, 7], 10);
        assert_eq!(p[0], 0.5);
        assert_eq!(p[1], 0.25);
        assert!((p[2] - 0.25 / 8.0).abs() < 1e-9);
        let certain = TopK {
            ids: vec![0],
            probs: vec![bf16(1.0)],
            rest: 0.0,
        };
        assert_eq!(target_probs(&[certain], &[1], 10), vec![FLOOR]);
    }

    #[test]
    fn the_gradient_matches_finite_differences_of_the_mixture_loss() {
        let a = [0.6, 0.1, 0.3];
        let b = [0.2, 0.5, 0.3];
        let c = [0.01, 0.02, 0.9];
        let probs: [&[f64]; 3] = [&a, &b, &c];
        let scores = [0.3, -0.2, 0.1];
        let analytic = loss_gradient(&probs, &softmax(&scores));
        for j in 0..3 {
            let h = 1e-6;
            let mut up = scores;
            up[j] += h;
            let mut down = scores;
            down[j] -= h;
            let numeric = (mixture_loss(&probs, &softmax(&up))
                - mixture_loss(&probs, &softmax(&down)))
                / (2.0 * h);
            assert!(
                (numeric - analytic[j]).abs() < 1e-6,
                "{j}: {numeric} vs {}",
                analytic[j]
            );
        }
    }

    #[test]
    fn a_miner_that_predicts_the_text_is_worth_more_than_one_that_guesses_and_values_add_up() {
        let vocab = 16;
        let good = vec![0.8; 5];
        let guess = vec![1.0 / 16.0; 5];
        let bad = vec![0.001; 5];
        let probs = vec![good.clone(), guess.clone(), bad.clone()];
        let values = example_values(&probs, &[0.0; 3], vocab, 64, 0).values;
        assert!(values[0] > values[1] && values[1] > values[2], "{values:?}");
        // Efficiency: the values sum to what everyone together is worth.
        let together =
            f64::from(vocab).ln() - mixture_loss(&[&good, &guess, &bad], &softmax(&[0.0; 3]));
        assert!((values.iter().sum::<f64>() - together).abs() < 1e-9);
        // A guess adds about nothing on its own.
        let alone = example_values(&[guess], &[0.0], vocab, 64, 0).values;
        assert!(alone[0].abs() < 1e-9);
    }
}
