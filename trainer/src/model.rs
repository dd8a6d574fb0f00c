//! A LLaMA-style decoder in burn, following Hugging Face's `LlamaForCausalLM` exactly, so
//! that weights export unchanged: RMSNorm `x · rsqrt(mean(x²) + ε) · w`, RoPE in the
//! rotate-half layout (`[x₁, x₂] → [−x₂, x₁]` over the two halves of each head), causal
//! multi-head attention with optional grouped-query heads, SwiGLU `down(silu(gate(x)) ·
//! up(x))`, no biases, final norm and an LM head (tied or not).
//!
//! burn's `Linear` stores its weight as `[d_in, d_out]`, the transpose of PyTorch's
//! `[out, in]`; export transposes.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Int, Tensor};

use crate::config::ModelConfig;

/// Causal self-attention with rotary positions.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Query projection (`q_proj`).
    pub wq: Linear<B>,
    /// Key projection (`k_proj`).
    pub wk: Linear<B>,
    /// Value projection (`v_proj`).
    pub wv: Linear<B>,
    /// Output projection (`o_proj`).
    pub wo: Linear<B>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    rope_theta: f64,
}

/// SwiGLU feed-forward.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    /// `gate_proj`.
    pub gate: Linear<B>,
    /// `up_proj`.
    pub up: Linear<B>,
    /// `down_proj`.
    pub down: Linear<B>,
}

/// One pre-norm decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    /// `input_layernorm`.
    pub attention_norm: RmsNorm<B>,
    /// `self_attn`.
    pub attention: Attention<B>,
    /// `post_attention_layernorm`.
    pub ffn_norm: RmsNorm<B>,
    /// `mlp`.
    pub ffn: FeedForward<B>,
}

/// The whole decoder.
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    /// `embed_tokens`, `[vocab, d_model]`.
    pub embedding: Embedding<B>,
    /// `layers`.
    pub layers: Vec<DecoderLayer<B>>,
    /// Final `norm`.
    pub norm: RmsNorm<B>,
    /// `lm_head`; `None` when tied to the embedding.
    pub lm_head: Option<Linear<B>>,
}

fn linear<B: Backend>(d_in: usize, d_out: usize, std: f64, device: &B::Device) -> Linear<B> {
    LinearConfig::new(d_in, d_out)
        .with_bias(false)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device)
}

impl ModelConfig {
    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Builds a freshly initialised model (normal(0, `init_std`) weights, unit norms).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Llama<B> {
        let std = self.init_std;
        let head_dim = self.head_dim();
        let norm = || RmsNormConfig::new(self.d_model).with_epsilon(self.rms_eps).init(device);
        let layers = (0..self.n_layers)
            .map(|_| DecoderLayer {
                attention_norm: norm(),
                attention: Attention {
                    wq: linear(self.d_model, self.n_heads * head_dim, std, device),
                    wk: linear(self.d_model, self.n_kv_heads * head_dim, std, device),
                    wv: linear(self.d_model, self.n_kv_heads * head_dim, std, device),
                    wo: linear(self.n_heads * head_dim, self.d_model, std, device),
                    n_heads: self.n_heads,
                    n_kv_heads: self.n_kv_heads,
                    head_dim,
                    rope_theta: self.rope_theta,
                },
                ffn_norm: norm(),
                ffn: FeedForward {
                    gate: linear(self.d_model, self.ffn_hidden, std, device),
                    up: linear(self.d_model, self.ffn_hidden, std, device),
                    down: linear(self.ffn_hidden, self.d_model, std, device),
                },
            })
            .collect();
        Llama {
            embedding: EmbeddingConfig::new(self.vocab_size, self.d_model)
                .with_initializer(Initializer::Normal { mean: 0.0, std })
                .init(device),
            layers,
            norm: norm(),
            lm_head: (!self.tie_embeddings).then(|| linear(self.d_model, self.vocab_size, std, device)),
        }
    }
}

/// `cos` and `sin` tables, `[seq, head_dim]`, in Hugging Face's layout (frequencies repeated
/// over both halves of the head).
fn rope_tables<B: Backend>(seq: usize, head_dim: usize, theta: f64, device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let half = head_dim / 2;
    let mut angles = Vec::with_capacity(seq * head_dim);
    for pos in 0..seq {
        for i in 0..head_dim {
            let inv_freq = 1.0 / theta.powf((2 * (i % half)) as f64 / head_dim as f64);
            angles.push((pos as f64 * inv_freq) as f32);
        }
    }
    let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
    let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
    let make = |v: Vec<f32>| Tensor::<B, 1>::from_floats(v.as_slice(), device).reshape([seq, head_dim]);
    (make(cos), make(sin))
}

/// Applies RoPE to `[batch, heads, seq, head_dim]`.
fn apply_rope<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) -> Tensor<B, 4> {
    let [b, h, s, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    let cos = cos.clone().unsqueeze::<4>().expand([b, h, s, d]);
    let sin = sin.clone().unsqueeze::<4>().expand([b, h, s, d]);
    x * cos + rotated * sin
}

impl<B: Backend> Attention<B> {
    fn forward(&self, x: Tensor<B, 3>, cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let heads = |t: Tensor<B, 3>, n: usize| t.reshape([b, s, n, self.head_dim]).swap_dims(1, 2);
        let q = apply_rope(heads(self.wq.forward(x.clone()), self.n_heads), cos, sin);
        let mut k = apply_rope(heads(self.wk.forward(x.clone()), self.n_kv_heads), cos, sin);
        let mut v = heads(self.wv.forward(x), self.n_kv_heads);
        let repeat = self.n_heads / self.n_kv_heads;
        if repeat > 1 {
            let expand = |t: Tensor<B, 4>| {
                t.unsqueeze_dim::<5>(2)
                    .expand([b, self.n_kv_heads, repeat, s, self.head_dim])
                    .reshape([b, self.n_heads, s, self.head_dim])
            };
            k = expand(k);
            v = expand(v);
        }
        let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: true };
        let out = attention(q, k, v, None, None, options);
        self.wo.forward(out.swap_dims(1, 2).reshape([b, s, self.n_heads * self.head_dim]))
    }
}

impl<B: Backend> FeedForward<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.down.forward(silu(self.gate.forward(x.clone())) * self.up.forward(x))
    }
}

impl<B: Backend> Llama<B> {
    /// Logits `[batch, seq, vocab]` for tokens `[batch, seq]`.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [_, seq] = tokens.dims();
        let device = tokens.device();
        let first = &self.layers[0].attention;
        let (cos, sin) = rope_tables::<B>(seq, first.head_dim, first.rope_theta, &device);
        let mut x = self.embedding.forward(tokens);
        for layer in &self.layers {
            x = x.clone() + layer.attention.forward(layer.attention_norm.forward(x), &cos, &sin);
            x = x.clone() + layer.ffn.forward(layer.ffn_norm.forward(x));
        }
        let x = self.norm.forward(x);
        match &self.lm_head {
            Some(head) => head.forward(x),
            None => x.matmul(self.embedding.weight.val().transpose().unsqueeze()),
        }
    }

    /// Mean cross-entropy per token of predicting `tokens[:, 1:]` from `tokens[:, :-1]`.
    pub fn loss(&self, windows: Tensor<B, 2, Int>) -> Tensor<B, 1> {
        let [b, s1] = windows.dims();
        let inputs = windows.clone().narrow(1, 0, s1 - 1);
        let targets = windows.narrow(1, 1, s1 - 1).reshape([b * (s1 - 1)]);
        let logits = self.forward(inputs);
        let vocab = logits.dims()[2];
        let logp = burn::tensor::activation::log_softmax(logits.reshape([b * (s1 - 1), vocab]), 1);
        logp.gather(1, targets.unsqueeze_dim(1)).mean().neg()
    }
}
