//! The Hugging Face export checked against an independent LLaMA: candle-transformers'
//! `llama` loads the exported directory (`config.json` + `model.safetensors`, as
//! `LlamaForCausalLM.from_pretrained` would) and must give sinter's logits at every position
//! of a fixed prompt, for grouped-query attention with a separate LM head and for tied
//! embeddings.

use burn::tensor::{Int, Tensor, TensorData};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::llama::{Cache, Llama, LlamaConfig};
use sinter_trainer::config::RunConfig;
use sinter_trainer::params::{flatten, skeleton};
use sinter_trainer::{CpuBackend, export, weights};

fn config(tied: bool) -> RunConfig {
    let mut c = RunConfig::default();
    c.model.d_model = 64;
    c.model.n_layers = 2;
    c.model.n_heads = 4;
    c.model.n_kv_heads = if tied { 4 } else { 2 };
    c.model.ffn_hidden = 96;
    c.model.context = 32;
    c.model.rope_theta = 500.0;
    c.model.tie_embeddings = tied;
    // Large weights make logits that differ clearly between positions and tokens.
    c.model.init_std = 0.2;
    c
}

fn sinter_logits(config: &RunConfig, tokens: &[u32]) -> (Vec<u8>, Vec<Vec<f32>>) {
    let device = Default::default();
    let model = skeleton::<CpuBackend>(&config.model, &device);
    let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    let input =
        Tensor::<CpuBackend, 2, Int>::from_data(TensorData::new(ids, [1, tokens.len()]), &device);
    let logits = model.forward(input).into_data().to_vec::<f32>().unwrap();
    let vocab = config.model.vocab_size;
    let (layout, values) = flatten(&model);
    let bytes = weights::to_bytes(&layout, &values, config).unwrap();
    (bytes, logits.chunks(vocab).map(<[f32]>::to_vec).collect())
}

fn candle_logits(dir: &std::path::Path, tokens: &[u32]) -> Vec<Vec<f32>> {
    let hf: LlamaConfig =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let config = hf.into_config(false);
    let device = Device::Cpu;
    // SAFETY: the file is ours and nothing modifies it while mapped.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &device)
    }
    .unwrap();
    let model = Llama::load(vb, &config).unwrap();
    let mut cache = Cache::new(true, DType::F32, &config, &device).unwrap();
    tokens
        .iter()
        .enumerate()
        .map(|(pos, &t)| {
            let x = candle_core::Tensor::new(&[[t]], &device).unwrap();
            let logits = model.forward(&x, pos, &mut cache).unwrap();
            logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap()
        })
        .collect()
}

fn check(tied: bool) {
    let config = config(tied);
    let tokens: Vec<u32> = b"To be, or not to be: that"
        .iter()
        .map(|&b| b.into())
        .collect();
    let (bytes, ours) = sinter_logits(&config, &tokens);
    let out = tempfile::tempdir().unwrap();
    export::hf(
        &bytes,
        std::path::Path::new("model.safetensors"),
        out.path(),
    )
    .unwrap();
    for file in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.path().join(file).exists(), "{file} missing");
    }
    let theirs = candle_logits(out.path(), &tokens);
    let mut max_diff = 0.0f32;
    let mut spread = 0.0f32;
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            max_diff = max_diff.max((x - y).abs());
            spread = spread.max(x.abs());
        }
    }
    assert!(
        spread > 0.5,
        "logits too small to compare meaningfully: {spread}"
    );
    assert!(
        max_diff <= 1e-4,
        "tied={tied}: max |sinter − candle| = {max_diff}"
    );
}

#[test]
fn exported_gqa_model_gives_candles_logits() {
    check(false);
}

#[test]
fn exported_tied_model_gives_candles_logits() {
    check(true);
}
