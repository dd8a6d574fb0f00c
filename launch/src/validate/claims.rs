//! Checking the model a miner claims. Every answer is signed with the SHA-256 of the weights
//! the miner says produced it. Given the shared model (`--shared`), the validator runs its own
//! forward pass over one of each claiming miner's examples a round and compares the miner's
//! probabilities at a few sampled positions with its own: a miner claiming the shared model
//! but sending other distributions is caught, and its round's answers count for nothing.
//! Miners claiming other weights (specialists) are valued on their answers alone.

use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::{Int, Tensor, TensorData};
use sha2::Digest;
use sinter_trainer::CpuBackend;
use sinter_trainer::model::Llama;

use crate::cli::WeightsArgs;
use crate::synapse::TopK;

/// Positions checked in a miner's example.
pub const POSITIONS: usize = 4;
/// How far a probability a miner sends may be from the validator's own: bf16 rounding (2⁻⁸
/// relative) and another machine's arithmetic stay well inside it; another model does not.
pub const TOLERANCE: f32 = 0.02;

/// The shared model, on the CPU.
pub struct Shared {
    model: Llama<CpuBackend>,
    /// SHA-256 of its weights file: what a miner serving it claims.
    pub hash: [u8; 32],
    vocab: usize,
}

impl Shared {
    /// The shared model at `path`: a weights file, or a checkpoint directory (verified).
    pub fn load(path: &Path, vocab: usize) -> Result<Self> {
        let source = WeightsArgs {
            weights: (!path.is_dir()).then(|| path.to_path_buf()),
            checkpoint: path.is_dir().then(|| path.to_path_buf()),
        };
        let (bytes, file) = crate::checkpoints::weights_bytes(&source)
            .with_context(|| format!("reading the shared model {} (--shared)", path.display()))?;
        let (config, model) =
            sinter_trainer::weights::from_bytes::<CpuBackend>(&bytes, &file, &Default::default())?;
        anyhow::ensure!(
            config.model.vocab_size == vocab,
            "--shared {}: a vocabulary of {}, not the config's {vocab}",
            path.display(),
            config.model.vocab_size
        );
        Ok(Self {
            model,
            hash: sha2::Sha256::digest(&bytes).into(),
            vocab,
        })
    }

    /// The shared model's next-token probabilities at every position of `tokens`.
    pub fn probs(&self, tokens: &[u32]) -> Vec<Vec<f32>> {
        let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        let input = Tensor::<CpuBackend, 2, Int>::from_data(
            TensorData::new(ids, [1, tokens.len()]),
            &Default::default(),
        );
        let logits = self.model.forward(input);
        let logits: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 logits");
        logits.chunks(self.vocab).map(softmax).collect()
    }
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let total: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / total).collect()
}

/// Whether `row` (a miner's distribution at one position) is the shared model's `own` there:
/// each probability it sends, and the mass it leaves over, within [`TOLERANCE`]; and no token
/// it leaves out likelier than one it lists.
pub fn matches(row: &TopK, own: &[f32]) -> Result<(), String> {
    let mut listed = 0.0;
    for (&id, &p) in row.ids.iter().zip(&row.probs) {
        let sent = half::bf16::from_bits(p).to_f32();
        let mine = own.get(id as usize).copied().unwrap_or(0.0);
        if (sent - mine).abs() > TOLERANCE {
            return Err(format!(
                "token {id} has probability {sent:.4}, the shared model's {mine:.4}"
            ));
        }
        listed += mine;
    }
    if (row.rest - (1.0 - listed)).abs() > TOLERANCE {
        return Err(format!(
            "the mass left over is {:.4}, the shared model's {:.4}",
            row.rest,
            1.0 - listed
        ));
    }
    let least = row
        .probs
        .last()
        .map_or(0.0, |&p| half::bf16::from_bits(p).to_f32());
    let left_out = own
        .iter()
        .enumerate()
        .filter(|(id, _)| !row.ids.contains(&(*id as u32)))
        .map(|(_, p)| *p)
        .fold(0.0, f32::max);
    if left_out > least + TOLERANCE {
        return Err(format!(
            "a token it left out has probability {left_out:.4}, above the {least:.4} it listed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(u32, f32)], rest: f32) -> TopK {
        TopK {
            ids: pairs.iter().map(|p| p.0).collect(),
            probs: pairs
                .iter()
                .map(|p| half::bf16::from_f32(p.1).to_bits())
                .collect(),
            rest,
        }
    }

    #[test]
    fn the_shared_models_own_top_k_matches_through_bf16() {
        let own = [0.5, 0.3013, 0.1, 0.0987];
        assert_eq!(
            matches(&row(&[(0, 0.5), (1, 0.3013)], 0.1987), &own),
            Ok(())
        );
    }

    #[test]
    fn other_probabilities_a_wrong_rest_or_a_hidden_favourite_are_caught() {
        let own = [0.5, 0.3, 0.1, 0.1];
        let other = matches(&row(&[(0, 0.4), (1, 0.3)], 0.3), &own);
        assert!(other.unwrap_err().contains("token 0"));
        let rest = matches(&row(&[(0, 0.5), (1, 0.3)], 0.1), &own);
        assert!(rest.unwrap_err().contains("left over"));
        // Listing the second and third likeliest, leaving out the likeliest.
        let hidden = matches(&row(&[(1, 0.3), (2, 0.1)], 0.6), &own);
        assert!(hidden.is_err());
    }
}
