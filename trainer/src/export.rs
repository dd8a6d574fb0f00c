//! Export of saved weights (a checkpoint's `model.safetensors`) to a Hugging Face LLaMA
//! checkpoint: tensors renamed and transposed (`sinter_checkpoints::hf`), `config.json`,
//! `generation_config.json`, and the tokenizer as `tokenizer.json` + `tokenizer_config.json`.

use std::path::Path;

use sinter_checkpoints::hf::{self, LlamaShape};

use crate::config::ModelConfig;
use crate::params::flatten;
use crate::tokenizer::Tokenizer;
use crate::{CpuBackend, TrainerError, weights};

impl ModelConfig {
    /// The architecture as Hugging Face's `LlamaConfig` spells it.
    pub fn hf_shape(&self) -> LlamaShape {
        LlamaShape {
            vocab_size: self.vocab_size,
            hidden_size: self.d_model,
            intermediate_size: self.ffn_hidden,
            num_hidden_layers: self.n_layers,
            num_attention_heads: self.n_heads,
            num_key_value_heads: self.n_kv_heads,
            max_position_embeddings: self.context,
            rms_norm_eps: self.rms_eps,
            rope_theta: self.rope_theta,
            tie_word_embeddings: self.tie_embeddings,
            bos_token_id: None,
            eos_token_id: None,
        }
    }
}

/// Writes the Hugging Face checkpoint of weights `bytes` (from `path`) into `out`.
pub fn hf(bytes: &[u8], path: &Path, out: &Path) -> Result<(), TrainerError> {
    let (config, model) = weights::from_bytes::<CpuBackend>(bytes, path, &Default::default())?;
    let (layout, values) = flatten(&model);
    let tensors: Vec<_> = layout.tensors(&values, "").collect();
    hf::export(&tensors, &config.model.hf_shape(), out)?;
    let tokenizer = Tokenizer::load(&config.data.tokenizer)?;
    let tokenizer_config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": config.model.context,
        "clean_up_tokenization_spaces": false,
    });
    for (name, text) in [
        ("tokenizer.json", tokenizer.hf_json()?),
        (
            "tokenizer_config.json",
            serde_json::to_string_pretty(&tokenizer_config).expect("json"),
        ),
    ] {
        let file = out.join(name);
        std::fs::write(&file, text).map_err(|source| TrainerError::Io { path: file, source })?;
    }
    Ok(())
}
