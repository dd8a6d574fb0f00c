//! `launch bench validator`: what a validator's round costs it, as the number of miners
//! grows, beside the least it must do: opening the signed answers (a signature check and a
//! decode each). A round here is all the validator computes besides the network and its own
//! forward pass: routing each example through the gate, opening the answers, the target
//! probabilities, each example's Shapley values, the gate's step, and the copy check. Run
//! once with the gate's `k` miners per example, and once asking every miner.

use std::time::Duration;

use anyhow::{Result, ensure};
use rand::{Rng, SeedableRng};
use sinter_mechanism::ledger::keys::Keypair;

use super::{GATE_FEATURES as FEATURES, copies, gate, value};
use crate::bench::median_time as median;
use crate::synapse::{self, Output, Said, Synapse, TopK};

const VOCAB: u32 = 256;
const CONTEXT: usize = 64;
const TOP_K: usize = 16;

/// One miner's signed answer to one example, as it arrived.
struct Arrived {
    request: Vec<u8>,
    bytes: Vec<u8>,
}

/// Prints, for each count in `miners`, the median time of a round of `examples` examples with
/// `k` miners per example and with every miner, and its ratio to opening the answers alone.
pub fn bench(miners: &[usize], examples: usize, k: usize, iters: usize) -> Result<()> {
    ensure!(
        examples > 0 && k > 0 && iters > 0,
        "examples, k and iters must be at least 1"
    );
    let validator = Keypair::generate().0;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let windows: Vec<Vec<u32>> = (0..examples)
        .map(|_| (0..=CONTEXT).map(|_| rng.random_range(0..VOCAB)).collect())
        .collect();
    println!(
        "validator round: {examples} examples of {CONTEXT} tokens, top-{TOP_K}, vocabulary {VOCAB}; median of {iters}"
    );
    println!(
        "{:>7} {:>6} {:>9} {:>12} {:>12} {:>10}",
        "miners", "asked", "answers", "open (ms)", "round (ms)", "ratio"
    );
    for &n in miners {
        ensure!(
            n > 0 && n <= usize::from(u16::MAX),
            "miners must be 1 to 65535"
        );
        let keys: Vec<Keypair> = (0..n).map(|_| Keypair::generate().0).collect();
        let answers: Vec<Vec<Arrived>> = keys
            .iter()
            .map(|key| {
                windows
                    .iter()
                    .map(|w| answer(&validator, key, &w[..CONTEXT], &mut rng))
                    .collect()
            })
            .collect();
        let asked_counts = if k < n { vec![k, n] } else { vec![n] };
        for asked in asked_counts {
            let chosen: Vec<Vec<usize>> = (0..examples)
                .map(|e| (0..asked).map(|j| (e * 7 + j) % n).collect())
                .collect();
            let open = median(iters, || {
                for (e, miners) in chosen.iter().enumerate() {
                    for &m in miners {
                        std::hint::black_box(open_rows(&answers[m][e], &keys[m], &windows[e]));
                    }
                }
            });
            let mut gate = gate::Gate::new(FEATURES, 0.5, 0.1, 0);
            let uids: Vec<(u16, _)> = keys
                .iter()
                .enumerate()
                .map(|(m, key)| (m as u16, key.account()))
                .collect();
            gate.sync(&uids);
            let round = median(iters, || {
                for (e, miners) in chosen.iter().enumerate() {
                    let x = gate::features(&windows[e], FEATURES);
                    gate.observe(&x);
                    std::hint::black_box(gate.choose(&x, asked));
                    let probs: Vec<Vec<f64>> = miners
                        .iter()
                        .map(|&m| {
                            let rows = open_rows(&answers[m][e], &keys[m], &windows[e]);
                            value::target_probs(&rows, &windows[e][1..], VOCAB)
                        })
                        .collect();
                    let scores: Vec<f64> = gate
                        .scores(&x)
                        .iter()
                        .filter(|(uid, _)| miners.contains(&usize::from(*uid)))
                        .map(|(_, s)| f64::from(*s))
                        .collect();
                    let estimate = value::example_values(&probs, &scores, VOCAB, 64, e as u64);
                    std::hint::black_box(estimate);
                    let uids: Vec<u16> = miners.iter().map(|&m| m as u16).collect();
                    gate.remember(x, &uids, probs);
                }
                gate.replay();
                let samples: Vec<copies::Sample> = (0..n)
                    .map(|m| copies::Sample {
                        uid: m as u16,
                        registered_at: m as u64,
                        tokens: Some(&windows[m % examples][..16]),
                    })
                    .collect();
                std::hint::black_box(copies::copied(&samples));
            });
            println!(
                "{n:>7} {asked:>6} {:>9} {:>12.2} {:>12.2} {:>10.2}",
                examples * asked,
                open.as_secs_f64() * 1e3,
                round.as_secs_f64() * 1e3,
                round.as_secs_f64() / open.as_secs_f64()
            );
        }
    }
    Ok(())
}

/// `miner`'s signed answer to a `CausalLm` request for `tokens`: random distributions.
fn answer(validator: &Keypair, miner: &Keypair, tokens: &[u32], rng: &mut impl Rng) -> Arrived {
    let synapse = Synapse::CausalLm {
        tokens: tokens.to_vec(),
        top_k: TOP_K as u32,
    };
    let request = synapse::request(
        validator,
        miner.account(),
        &synapse,
        Duration::from_secs(10),
    );
    let rows = tokens
        .iter()
        .map(|_| {
            let mut ids: Vec<u32> = Vec::with_capacity(TOP_K);
            while ids.len() < TOP_K {
                let id = rng.random_range(0..VOCAB);
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            let probs = (0..TOP_K)
                .map(|i| half::bf16::from_f32(0.9 * 0.5f32.powi(i as i32 + 1)).to_bits())
                .collect::<Vec<_>>();
            let listed: f32 = probs
                .iter()
                .map(|&p| half::bf16::from_bits(p).to_f32())
                .sum();
            TopK {
                ids,
                probs,
                rest: (1.0 - listed).max(0.0),
            }
        })
        .collect();
    let said = Said {
        model: [0; 32],
        output: Output::Distributions(rows),
    };
    let bytes = synapse::answer(miner, synapse::request_hash(&request), &said);
    Arrived { request, bytes }
}

/// Opens an arrived answer as the validator does; its distributions.
fn open_rows(arrived: &Arrived, miner: &Keypair, window: &[u32]) -> Vec<TopK> {
    let synapse = Synapse::CausalLm {
        tokens: window[..CONTEXT].to_vec(),
        top_k: TOP_K as u32,
    };
    let said = synapse::open_answer(
        &arrived.bytes,
        &arrived.request,
        &miner.account(),
        &synapse,
        VOCAB,
        0,
    )
    .expect("the bench's answers are well formed");
    match said.output {
        Output::Distributions(rows) => rows,
        _ => Vec::new(),
    }
}
