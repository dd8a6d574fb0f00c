//! Export to a Hugging Face LLaMA checkpoint: `model.safetensors` with `LlamaForCausalLM`'s
//! tensor names (linear weights transposed from burn's `[in, out]` to PyTorch's `[out, in]`),
//! `config.json` and `generation_config.json`. The model itself already follows Hugging
//! Face's conventions (rotate-half RoPE, RMSNorm, SwiGLU), so export only renames and
//! transposes. The tokenizer files are the caller's.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use crate::CheckpointError;
use crate::tensors::{self, NamedTensor};

/// The architecture numbers `config.json` carries.
#[derive(Debug, Clone, Serialize)]
pub struct LlamaShape {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// SwiGLU hidden width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Longest context.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Whether the LM head is the embedding.
    pub tie_word_embeddings: bool,
    /// Beginning-of-text token, if the tokenizer has one.
    pub bos_token_id: Option<u32>,
    /// End-of-text token, if the tokenizer has one.
    pub eos_token_id: Option<u32>,
}

/// sinter's name → Hugging Face's, and whether the tensor is a linear weight (transposed).
fn hf_name(name: &str) -> Option<(String, bool)> {
    const LAYER: [(&str, &str, bool); 9] = [
        ("attention.wq.weight", "self_attn.q_proj.weight", true),
        ("attention.wk.weight", "self_attn.k_proj.weight", true),
        ("attention.wv.weight", "self_attn.v_proj.weight", true),
        ("attention.wo.weight", "self_attn.o_proj.weight", true),
        ("ffn.gate.weight", "mlp.gate_proj.weight", true),
        ("ffn.up.weight", "mlp.up_proj.weight", true),
        ("ffn.down.weight", "mlp.down_proj.weight", true),
        ("attention_norm.weight", "input_layernorm.weight", false),
        ("ffn_norm.weight", "post_attention_layernorm.weight", false),
    ];
    match name {
        "embedding.weight" => return Some(("model.embed_tokens.weight".into(), false)),
        "norm.weight" => return Some(("model.norm.weight".into(), false)),
        "lm_head.weight" => return Some(("lm_head.weight".into(), true)),
        _ => {}
    }
    let rest = name.strip_prefix("layers.")?;
    let (index, tail) = rest.split_once('.')?;
    let index: usize = index.parse().ok()?;
    LAYER
        .iter()
        .find(|(ours, _, _)| *ours == tail)
        .map(|(_, theirs, t)| (format!("model.layers.{index}.{theirs}"), *t))
}

fn transpose(t: &NamedTensor) -> Result<(Vec<usize>, Vec<f32>), CheckpointError> {
    let [rows, cols] = t.shape[..] else {
        return Err(CheckpointError::Tensors(format!(
            "{} has shape {:?}, expected a matrix",
            t.name, t.shape
        )));
    };
    let mut out = vec![0.0; t.values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = t.values[r * cols + c];
        }
    }
    Ok((vec![cols, rows], out))
}

/// sinter's tensors as Hugging Face's.
pub fn to_hf(tensors: &[NamedTensor]) -> Result<Vec<NamedTensor>, CheckpointError> {
    tensors
        .iter()
        .map(|t| {
            let (name, is_linear) = hf_name(&t.name).ok_or_else(|| {
                CheckpointError::Tensors(format!("{} has no Hugging Face LLaMA name", t.name))
            })?;
            let (shape, values) = if is_linear {
                transpose(t)?
            } else {
                (t.shape.clone(), t.values.clone())
            };
            Ok(NamedTensor {
                name,
                shape,
                values,
            })
        })
        .collect()
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    std::fs::write(path, bytes).map_err(CheckpointError::io(path))
}

/// Writes `model.safetensors`, `config.json` and `generation_config.json` into `out`.
pub fn export(
    tensors: &[NamedTensor],
    shape: &LlamaShape,
    out: &Path,
) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(out).map_err(CheckpointError::io(out))?;
    let hf = to_hf(tensors)?;
    let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    write_file(
        &out.join("model.safetensors"),
        &tensors::to_bytes(&hf, metadata)?,
    )?;
    let mut config = serde_json::to_value(shape).expect("shapes serialise");
    let extra = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "head_dim": shape.hidden_size / shape.num_attention_heads,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "rope_scaling": null,
        "torch_dtype": "float32",
        "use_cache": true,
        "transformers_version": "4.46.0",
    });
    config
        .as_object_mut()
        .expect("an object")
        .extend(extra.as_object().expect("an object").clone());
    write_file(
        &out.join("config.json"),
        &serde_json::to_vec_pretty(&config).expect("json"),
    )?;
    let generation = serde_json::json!({
        "bos_token_id": shape.bos_token_id,
        "eos_token_id": shape.eos_token_id,
        "do_sample": true,
        "temperature": 0.8,
        "top_k": 40,
        "top_p": 0.95,
        "transformers_version": "4.46.0",
    });
    write_file(
        &out.join("generation_config.json"),
        &serde_json::to_vec_pretty(&generation).expect("json"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_and_linears_transpose() {
        let t = |name: &str, shape: Vec<usize>| NamedTensor {
            name: name.into(),
            values: (0..shape.iter().product::<usize>())
                .map(|i| i as f32)
                .collect(),
            shape,
        };
        let hf = to_hf(&[
            t("layers.3.attention.wk.weight", vec![2, 3]),
            t("layers.0.ffn_norm.weight", vec![2]),
            t("embedding.weight", vec![4, 2]),
        ])
        .unwrap();
        assert_eq!(hf[0].name, "model.layers.3.self_attn.k_proj.weight");
        assert_eq!(hf[0].shape, vec![3, 2]);
        assert_eq!(hf[0].values, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert_eq!(hf[1].name, "model.layers.0.post_attention_layernorm.weight");
        assert_eq!(hf[2].name, "model.embed_tokens.weight");
        assert_eq!(hf[2].values, (0..8).map(|i| i as f32).collect::<Vec<_>>());
        let err = to_hf(&[t("layers.0.extra.weight", vec![1])]).unwrap_err();
        assert!(err.to_string().contains("layers.0.extra.weight"));
    }
}
