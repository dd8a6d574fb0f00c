//! Sampling text from a model: temperature, top-k, top-p; temperature 0 is greedy.

use crate::fused::ModelBackend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::model::Llama;

/// How to sample.
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    /// Softmax temperature; 0 picks the most likely token.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1: all).
    pub top_p: f32,
    /// Seed for the sampler.
    pub seed: u64,
}

/// Picks the next token from `logits` (one row).
pub fn sample_token(logits: &[f32], sampling: &Sampling, rng: &mut StdRng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &l)| {
                if l > best.1 { (i, l) } else { best }
            })
            .0 as u32
    };
    if sampling.temperature <= 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if sampling.top_k > 0 {
        order.truncate(sampling.top_k);
    }
    let max = logits[order[0]];
    let mut probs: Vec<f32> = order
        .iter()
        .map(|&i| ((logits[i] - max) / sampling.temperature).exp())
        .collect();
    let total: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    let mut cumulative = 0.0;
    let keep = probs
        .iter()
        .position(|&p| {
            cumulative += p;
            cumulative >= sampling.top_p
        })
        .map_or(probs.len(), |i| i + 1);
    let kept: f32 = probs[..keep].iter().sum();
    let mut target = rng.random::<f32>() * kept;
    for (rank, &p) in probs[..keep].iter().enumerate() {
        if target < p {
            return order[rank] as u32;
        }
        target -= p;
    }
    order[keep - 1] as u32
}

/// Extends `prompt` by up to `max_tokens` tokens, calling `on_token` with each as it is
/// chosen; generation stops early when it returns `false`. An empty prompt yields nothing.
pub fn generate<B: ModelBackend>(
    model: &Llama<B>,
    prompt: &[u32],
    max_tokens: usize,
    context: usize,
    sampling: &Sampling,
    device: &B::Device,
    mut on_token: impl FnMut(u32) -> bool,
) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(sampling.seed);
    let mut tokens = prompt.to_vec();
    if tokens.is_empty() || max_tokens == 0 {
        // Nothing to condition on; callers pick a start token their tokenizer knows.
        return tokens;
    }
    let window = |tokens: &[u32]| {
        let window = &tokens[tokens.len().saturating_sub(context)..];
        let ids: Vec<i32> = window.iter().map(|&t| t as i32).collect();
        Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, window.len()]), device)
    };
    let (mut logits, mut cache) = model.prefill(window(&tokens));
    for made in 1..=max_tokens {
        let row = logits.into_data().convert::<f32>();
        let next = sample_token(row.as_slice::<f32>().expect("f32"), sampling, &mut rng);
        tokens.push(next);
        slow_for_test();
        if !on_token(next) || made == max_tokens {
            break;
        }
        // Within the context the cache grows by the new token; past it the window slides
        // and is run again.
        if cache.len() < context {
            let row = model.decode(&[next], &mut [&mut cache]);
            let vocab = row.dims()[1];
            logits = row.reshape([vocab]);
        } else {
            (logits, cache) = model.prefill(window(&tokens));
        }
    }
    tokens
}

/// Fault injection for the serving tests (test builds only): with
/// `SINTER_FAULT_SLOW_TOKEN_MS=MS` each token takes MS milliseconds longer, so that requests
/// queue up and a client can leave mid-generation.
pub fn slow_for_test() {
    if let Some(ms) =
        crate::fault_for_test("SINTER_FAULT_SLOW_TOKEN_MS").and_then(|ms| ms.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_temperature_is_greedy_and_top_k_one_too() {
        let logits = [0.1, 3.0, -1.0, 2.9];
        let mut rng = StdRng::seed_from_u64(0);
        let greedy = Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        };
        assert_eq!(sample_token(&logits, &greedy, &mut rng), 1);
        let top1 = Sampling {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            seed: 0,
        };
        assert!((0..50).all(|_| sample_token(&logits, &top1, &mut rng) == 1));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let logits = [10.0, 9.5, -5.0, -6.0];
        let mut rng = StdRng::seed_from_u64(1);
        let nucleus = Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.9,
            seed: 0,
        };
        assert!((0..200).all(|_| sample_token(&logits, &nucleus, &mut rng) < 2));
    }
}
