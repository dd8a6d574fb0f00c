//! A LLaMA-style decoder in burn, following Hugging Face's `LlamaForCausalLM` exactly, so
//! that weights export unchanged: RMSNorm `x · rsqrt(mean(x²) + ε) · w`, RoPE in the
//! rotate-half layout (`[x₁, x₂] → [−x₂, x₁]` over the two halves of each head), causal
//! multi-head attention with optional grouped-query heads, SwiGLU `down(silu(gate(x)) ·
//! up(x))`, no biases, final norm and an LM head (tied or not).
//!
//! burn's `Linear` stores its weight as `[d_in, d_out]`, the transpose of PyTorch's
//! `[out, in]`; export transposes.

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;

use crate::fused::{AttentionShape, ModelBackend, repeat_kv};
use burn::tensor::{Int, Tensor, TensorData};

use crate::config::ModelConfig;

/// RMSNorm as Hugging Face computes it: `x · rsqrt(mean(x²) + ε) · weight`, on `[tokens, d]`.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// The learned scale, `[d]`, initialised to ones.
    pub weight: Param<Tensor<B, 1>>,
    epsilon: f64,
}

impl<B: Backend> RmsNorm<B> {
    fn new(d: usize, epsilon: f64, device: &B::Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([d], device)),
            epsilon,
        }
    }
}

impl<B: ModelBackend> RmsNorm<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        B::rms_norm(x, self.weight.val(), self.epsilon)
    }
}

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

/// `x · layer`'s weight, through the backend's linear op (the model's layers have no bias).
fn project<B: ModelBackend>(layer: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    B::dense(x, layer.weight.val())
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

    /// How many parameters [`ModelConfig::init`] makes: what sizes from the network are
    /// checked against before anything is allocated.
    pub fn param_count(&self) -> usize {
        let (d, kv) = (self.d_model, self.n_kv_heads * self.head_dim());
        let attention = d * self.n_heads * self.head_dim() * 2 + d * kv * 2;
        let layer = attention + 3 * d * self.ffn_hidden + 2 * d;
        let head = if self.tie_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        self.vocab_size * d + self.n_layers * layer + d + head
    }

    /// Builds a freshly initialised model (normal(0, `init_std`) weights, unit norms).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Llama<B> {
        let std = self.init_std;
        let head_dim = self.head_dim();
        let norm = || RmsNorm::new(self.d_model, self.rms_eps, device);
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
            lm_head: (!self.tie_embeddings)
                .then(|| linear(self.d_model, self.vocab_size, std, device)),
        }
    }
}

/// `cos` and `sin` of the RoPE angles of each of `positions`, one row of `heads · head_dim`
/// each (Hugging Face layout: frequencies repeated over both halves of each head).
fn rope_angles(
    positions: &[usize],
    heads: usize,
    head_dim: usize,
    theta: f64,
) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv_freqs: Vec<f64> = (0..head_dim)
        .map(|j| 1.0 / theta.powf((2 * (j % half)) as f64 / head_dim as f64))
        .collect();
    let width = heads * head_dim;
    let mut cos = Vec::with_capacity(positions.len() * width);
    let mut sin = Vec::with_capacity(positions.len() * width);
    for &pos in positions {
        let (head_cos, head_sin): (Vec<f32>, Vec<f32>) = inv_freqs
            .iter()
            .map(|inv_freq| {
                let angle = pos as f64 * inv_freq;
                (angle.cos() as f32, angle.sin() as f32)
            })
            .unzip();
        for _ in 0..heads {
            cos.extend_from_slice(&head_cos);
            sin.extend_from_slice(&head_sin);
        }
    }
    (cos, sin)
}

/// RoPE's tables for rows at given positions: every position of a sequence when training,
/// one new token per sequence when decoding.
struct Rope<B: Backend> {
    /// `cos` and `sin` of each position's angles, `[positions, heads · head_dim]` (Hugging
    /// Face layout: frequencies repeated over both halves of each head).
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    head_dim: usize,
}

impl<B: ModelBackend> Rope<B> {
    fn at(
        positions: &[usize],
        heads: usize,
        head_dim: usize,
        theta: f64,
        device: &B::Device,
    ) -> Self {
        let (cos, sin) = rope_angles(positions, heads, head_dim, theta);
        let table = |v: Vec<f32>| {
            Tensor::<B, 1>::from_floats(v.as_slice(), device)
                .reshape([positions.len(), heads * head_dim])
        };
        Self {
            cos: table(cos),
            sin: table(sin),
            head_dim,
        }
    }

    /// Positions `0..seq`, for whole sequences.
    fn sequence(seq: usize, heads: usize, head_dim: usize, theta: f64, device: &B::Device) -> Self {
        let positions: Vec<usize> = (0..seq).collect();
        Self::at(&positions, heads, head_dim, theta, device)
    }

    /// The tables' positions.
    fn len(&self) -> usize {
        self.cos.dims()[0]
    }

    /// RoPE on `[rows, heads · head_dim]` projections before they are split into heads, row
    /// `r` at the table's position `r mod len`.
    fn apply(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        B::rope(x, self.cos.clone(), self.sin.clone(), self.head_dim)
    }
}

/// Keys and values `[batch, kv_heads, seq, head_dim]` (keys after RoPE), before grouped-query
/// heads are repeated.
type KeysValues<B> = (Tensor<B, 4>, Tensor<B, 4>);

impl<B: ModelBackend> Attention<B> {
    /// `x` is `[batch · seq, d_model]`; the output, and the keys and values it attended to.
    fn forward(
        &self,
        x: Tensor<B, 2>,
        q_rope: &Rope<B>,
        kv_rope: &Rope<B>,
    ) -> (Tensor<B, 2>, KeysValues<B>) {
        let seq = q_rope.len();
        let batch = x.dims()[0] / seq;
        let q = q_rope.apply(project(&self.wq, x.clone()));
        let k = kv_rope.apply(project(&self.wk, x.clone()));
        let v = project(&self.wv, x);
        let shape = AttentionShape {
            batch,
            seq,
            heads: self.n_heads,
            kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
        };
        let (out, _) = B::causal_attention(q, k.clone(), v.clone(), shape);
        let heads = |t: Tensor<B, 2>| {
            t.reshape([batch, seq, self.n_kv_heads, self.head_dim])
                .swap_dims(1, 2)
        };
        (project(&self.wo, out), (heads(k), heads(v)))
    }

    /// `[batch, kv_heads, len, head_dim]` with each key/value head repeated for the query
    /// heads sharing it.
    fn repeat_kv(&self, t: Tensor<B, 4>) -> Tensor<B, 4> {
        repeat_kv(t, self.n_heads / self.n_kv_heads)
    }
}

impl<B: ModelBackend> FeedForward<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let hidden = B::swiglu(project(&self.gate, x.clone()), project(&self.up, x));
        project(&self.down, hidden)
    }
}

impl<B: ModelBackend> Llama<B> {
    /// Logits `[batch, seq, vocab]` for tokens `[batch, seq]`.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.run(tokens).0
    }

    /// The last layer's hidden states `[batch, seq, d_model]` (after the final norm: what the
    /// LM head reads) for tokens `[batch, seq]`.
    pub fn hidden(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq] = tokens.dims();
        let (x, _) = self.trunk(tokens);
        let x = self.norm.forward(x);
        let dim = x.dims()[1];
        x.reshape([batch, seq, dim])
    }

    /// Logits `[batch, seq, vocab]`, and each layer's keys and values.
    fn run(&self, tokens: Tensor<B, 2, Int>) -> (Tensor<B, 3>, Vec<KeysValues<B>>) {
        let [batch, seq] = tokens.dims();
        let (x, kept) = self.trunk(tokens);
        let logits = self.head(x);
        let vocab = logits.dims()[1];
        (logits.reshape([batch, seq, vocab]), kept)
    }

    /// The decoder layers: hidden states `[batch * seq, d_model]` before the final norm, and
    /// each layer's keys and values.
    fn trunk(&self, tokens: Tensor<B, 2, Int>) -> (Tensor<B, 2>, Vec<KeysValues<B>>) {
        let [_, seq] = tokens.dims();
        let device = tokens.device();
        let first = &self.layers[0].attention;
        let q_rope = Rope::sequence(
            seq,
            first.n_heads,
            first.head_dim,
            first.rope_theta,
            &device,
        );
        let kv_rope_own = (first.n_kv_heads != first.n_heads).then(|| {
            Rope::sequence(
                seq,
                first.n_kv_heads,
                first.head_dim,
                first.rope_theta,
                &device,
            )
        });
        let kv_rope = kv_rope_own.as_ref().unwrap_or(&q_rope);
        let [batch, _] = tokens.dims();
        let mut x = self
            .embedding
            .forward(tokens)
            .reshape([batch * seq, self.norm.weight.dims()[0]]);
        let mut kept = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let (attended, kv) =
                layer
                    .attention
                    .forward(layer.attention_norm.forward(x.clone()), &q_rope, kv_rope);
            kept.push(kv);
            x = x + attended;
            x = x.clone() + layer.ffn.forward(layer.ffn_norm.forward(x));
        }
        (x, kept)
    }

    /// Final norm and LM head: `[rows, d_model]` to logits `[rows, vocab]`.
    fn head(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = self.norm.forward(x);
        match &self.lm_head {
            Some(head) => project(head, x),
            None => B::dense(x, self.embedding.weight.val().transpose()),
        }
    }

    /// Runs a prompt (`[1, len]`, not empty) once: the logits `[vocab]` of its last position,
    /// and the keys and values [`Llama::decode`] continues from.
    pub fn prefill(&self, prompt: Tensor<B, 2, Int>) -> (Tensor<B, 1>, KvCache<B>) {
        let [_, len] = prompt.dims();
        let (logits, kept) = self.run(prompt);
        let vocab = logits.dims()[2];
        let last = logits.narrow(1, len - 1, 1).reshape([vocab]);
        let layers = kept
            .into_iter()
            .map(|(k, v)| {
                let [_, heads, len, dim] = k.dims();
                (k.reshape([heads, len, dim]), v.reshape([heads, len, dim]))
            })
            .collect();
        (last, KvCache { layers })
    }

    /// One step of several sequences at once (continuous batching): `tokens[i]` follows the
    /// sequence `caches[i]` holds and is appended to it; the logits `[batch, vocab]` of each.
    /// The projections, feed-forward and head run on all rows together; attention runs per
    /// sequence over its own cache, so sequences of any lengths step together.
    pub fn decode(&self, tokens: &[u32], caches: &mut [&mut KvCache<B>]) -> Tensor<B, 2> {
        let b = tokens.len();
        assert_eq!(b, caches.len(), "one cache per token");
        let device = self.norm.weight.device();
        let positions: Vec<usize> = caches.iter().map(|c| c.len()).collect();
        let first = &self.layers[0].attention;
        let q_rope = Rope::at(
            &positions,
            first.n_heads,
            first.head_dim,
            first.rope_theta,
            &device,
        );
        let kv_rope_own = (first.n_kv_heads != first.n_heads).then(|| {
            Rope::at(
                &positions,
                first.n_kv_heads,
                first.head_dim,
                first.rope_theta,
                &device,
            )
        });
        let kv_rope = kv_rope_own.as_ref().unwrap_or(&q_rope);
        let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, 1]), &device);
        let mut x = self
            .embedding
            .forward(ids)
            .reshape([b, self.norm.weight.dims()[0]]);
        for (l, layer) in self.layers.iter().enumerate() {
            let a = &layer.attention;
            let h = layer.attention_norm.forward(x.clone());
            let q = q_rope.apply(project(&a.wq, h.clone()));
            let k = kv_rope.apply(project(&a.wk, h.clone()));
            let v = project(&a.wv, h);
            let scale = 1.0 / (a.head_dim as f64).sqrt();
            let outs = caches
                .iter_mut()
                .enumerate()
                .map(|(i, cache)| {
                    let row = |t: &Tensor<B, 2>, heads: usize| {
                        t.clone().narrow(0, i, 1).reshape([heads, 1, a.head_dim])
                    };
                    let (keys, values) = &mut cache.layers[l];
                    *keys = Tensor::cat(vec![keys.clone(), row(&k, a.n_kv_heads)], 1);
                    *values = Tensor::cat(vec![values.clone(), row(&v, a.n_kv_heads)], 1);
                    let kx = a.repeat_kv(keys.clone().unsqueeze_dim(0)).squeeze_dim(0);
                    let vx = a.repeat_kv(values.clone().unsqueeze_dim(0)).squeeze_dim(0);
                    let scores = row(&q, a.n_heads)
                        .matmul(kx.swap_dims(1, 2))
                        .mul_scalar(scale);
                    softmax(scores, 2)
                        .matmul(vx)
                        .reshape([1, a.n_heads * a.head_dim])
                })
                .collect();
            x = x + project(&a.wo, Tensor::cat(outs, 0));
            x = x.clone() + layer.ffn.forward(layer.ffn_norm.forward(x));
        }
        self.head(x)
    }

    /// Mean cross-entropy per token of predicting `tokens[:, 1:]` from `tokens[:, :-1]`.
    pub fn loss(&self, windows: Tensor<B, 2, Int>) -> Tensor<B, 1> {
        let [b, s1] = windows.dims();
        let inputs = windows.clone().narrow(1, 0, s1 - 1);
        let targets = windows.narrow(1, 1, s1 - 1).reshape([b * (s1 - 1)]);
        let logits = self.forward(inputs);
        let vocab = logits.dims()[2];
        B::cross_entropy(logits.reshape([b * (s1 - 1), vocab]), targets)
    }
}

/// One sequence's keys (after RoPE) and values per layer, `[kv_heads, len, head_dim]`: what
/// [`Llama::decode`] attends to instead of running the sequence again.
pub struct KvCache<B: Backend> {
    layers: Vec<(Tensor<B, 3>, Tensor<B, 3>)>,
}

impl<B: Backend> KvCache<B> {
    /// Tokens held.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |(k, _)| k.dims()[1])
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend as B;
    use crate::params::skeleton;
    use burn::tensor::Distribution;

    fn tiny(n_kv_heads: usize) -> ModelConfig {
        ModelConfig {
            vocab_size: 32,
            d_model: 16,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads,
            ffn_hidden: 24,
            context: 8,
            ..ModelConfig::default()
        }
    }

    #[test]
    fn rope_matches_the_hugging_face_formula() {
        let device = Default::default();
        let (seq, heads, hd) = (5, 2, 8);
        let pos = Rope::<B>::sequence(seq, heads, hd, 10000.0, &device);
        let x = Tensor::<B, 2>::random([seq, heads * hd], Distribution::Normal(0.0, 1.0), &device);
        let got = pos.apply(x.clone()).into_data().to_vec::<f32>().unwrap();
        let x = x.into_data().to_vec::<f32>().unwrap();
        for p in 0..seq {
            for h in 0..heads {
                for j in 0..hd {
                    // q·cos + rotate_half(q)·sin with θ_j = p / 10000^(2(j mod hd/2)/hd).
                    let half = hd / 2;
                    let angle = p as f64 / 10000f64.powf((2 * (j % half)) as f64 / hd as f64);
                    let at = |k: usize| x[p * heads * hd + h * hd + k] as f64;
                    let rotated = if j < half {
                        -at(j + half)
                    } else {
                        at(j - half)
                    };
                    let expect = at(j) * angle.cos() + rotated * angle.sin();
                    let got = got[p * heads * hd + h * hd + j] as f64;
                    assert!(
                        (got - expect).abs() < 1e-5,
                        "pos {p} head {h} dim {j}: {got} vs {expect}"
                    );
                }
            }
        }
    }

    fn ids(tokens: &[i32]) -> Tensor<B, 2, Int> {
        Tensor::from_data(
            TensorData::new(tokens.to_vec(), [1, tokens.len()]),
            &Default::default(),
        )
    }

    fn row(t: Tensor<B, 1>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    /// Decoding from a cache gives the logits a full pass gives at every position (plain and
    /// grouped heads), and sequences of different lengths stepped together get what each
    /// gets alone.
    #[test]
    fn decoding_from_the_cache_is_the_full_pass_alone_or_batched() {
        let device = Default::default();
        for kv in [4, 2, 1] {
            let model: Llama<B> = skeleton(&tiny(kv), &device);
            let tokens = [3i32, 9, 1, 30, 7, 7, 2, 11];
            let full = model.forward(ids(&tokens));
            let (first, mut cache) = model.prefill(ids(&tokens[..3]));
            let at = |p: usize| row(full.clone().narrow(1, p, 1).reshape([32]));
            let close = |a: &[f32], b: &[f32], what: &str| {
                let worst = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f32::max);
                assert!(worst < 1e-5, "{what} (kv heads {kv}): off by {worst}");
            };
            close(&row(first), &at(2), "prefill");
            for (p, &token) in tokens.iter().enumerate().skip(3) {
                let logits = model.decode(&[token as u32], &mut [&mut cache]);
                close(&row(logits.reshape([32])), &at(p), &format!("position {p}"));
            }
            assert_eq!(cache.len(), tokens.len());

            // Two sequences at different lengths, stepped together and alone.
            let (_, mut a) = model.prefill(ids(&tokens[..2]));
            let (_, mut b) = model.prefill(ids(&tokens[..5]));
            let (_, mut a_alone) = model.prefill(ids(&tokens[..2]));
            let (_, mut b_alone) = model.prefill(ids(&tokens[..5]));
            let together = model.decode(&[4, 5], &mut [&mut a, &mut b]);
            let la = model.decode(&[4], &mut [&mut a_alone]);
            let lb = model.decode(&[5], &mut [&mut b_alone]);
            close(
                &row(together.clone().narrow(0, 0, 1).reshape([32])),
                &row(la.reshape([32])),
                "batched a",
            );
            close(
                &row(together.narrow(0, 1, 1).reshape([32])),
                &row(lb.reshape([32])),
                "batched b",
            );
            assert_eq!((a.len(), b.len()), (3, 6));
        }
    }

    #[test]
    fn attention_is_causal_for_plain_and_grouped_heads() {
        let device = Default::default();
        for kv in [4, 2, 1] {
            let model: Llama<B> = skeleton(&tiny(kv), &device);
            let a = Tensor::<B, 2, Int>::from_data(
                TensorData::new(vec![1i32, 5, 7, 9, 2, 3], [1, 6]),
                &device,
            );
            let b = Tensor::<B, 2, Int>::from_data(
                TensorData::new(vec![1i32, 5, 7, 30, 31, 0], [1, 6]),
                &device,
            );
            let la = model
                .forward(a)
                .narrow(1, 0, 3)
                .into_data()
                .to_vec::<f32>()
                .unwrap();
            let lb = model
                .forward(b)
                .narrow(1, 0, 3)
                .into_data()
                .to_vec::<f32>()
                .unwrap();
            assert_eq!(la, lb, "future tokens changed past logits (kv heads {kv})");
        }
    }

    #[test]
    fn a_fresh_model_predicts_near_uniformly() {
        let device = Default::default();
        let model: Llama<B> = skeleton(&tiny(4), &device);
        let windows = Tensor::<B, 2, Int>::from_data(
            TensorData::new((0..18).map(|i| i % 32).collect::<Vec<i32>>(), [2, 9]),
            &device,
        );
        let loss = model.loss(windows).into_scalar();
        assert!((loss - (32f32).ln()).abs() < 0.1, "loss {loss} vs ln 32");
    }

    #[test]
    fn tied_embeddings_have_no_separate_head() {
        let device = Default::default();
        let config = ModelConfig {
            tie_embeddings: true,
            ..tiny(4)
        };
        let model: Llama<B> = skeleton(&config, &device);
        assert!(model.lm_head.is_none());
        let logits = model.forward(Tensor::from_data(
            TensorData::new(vec![1i32, 2], [1, 2]),
            &device,
        ));
        assert_eq!(logits.dims(), [1, 2, 32]);
    }

    #[test]
    fn the_parameter_count_is_what_init_makes() {
        let base = ModelConfig::default();
        let variants = [
            base.clone(),
            ModelConfig {
                tie_embeddings: !base.tie_embeddings,
                ..base.clone()
            },
            ModelConfig {
                n_kv_heads: base.n_heads / 2,
                ffn_hidden: 3 * base.d_model,
                ..base.clone()
            },
            tiny(2),
        ];
        for config in variants {
            let model: Llama<B> = skeleton(&config, &Default::default());
            assert_eq!(crate::params::flatten(&model).0.len(), config.param_count());
        }
    }
}
