//! The model's widest operations as single operations with their own backward: the linear
//! layers, causal self-attention (scores, masked softmax and the weighted sum of values, over
//! all heads), RMSNorm, rotary position embedding, SwiGLU's `silu(gate) · up`, and the
//! cross-entropy loss.
//!
//! burn records attention as a dozen operations, RMSNorm as seven, RoPE as four (one of them
//! a matrix product) and SwiGLU as three, each a pass over a tensor of `batch · heads · seq²`
//! or `tokens · width` values, most of them kept for the backward pass, with copies to split
//! the heads and merge them again; flex computes `exp` one value at a time, and its matrix
//! products clear their output before gemm overwrites it and split poorly across threads.
//! [`ModelBackend`] makes each one operation on every backend: its default methods compose
//! burn's tensor operations (wgpu, CUDA), flex overrides them with host kernels ([`flex`],
//! [`flex_attention`]: gemm on strided views, one pass per row or element, a vectorized
//! `exp`; [`matrix`]: products split across the threads into uninitialized buffers;
//! [`buffer`]: every output allocated without clearing and written once), and autodiff
//! records a single node whose backward calls the op's own ([`autodiff`]).

mod autodiff;
mod buffer;
mod exp;
mod flex;
mod flex_attention;
mod matrix;

use burn::tensor::activation::{log_softmax, sigmoid, silu, softmax};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};

pub use exp::exp;

/// The sizes of one causal self-attention: `batch` sequences of `seq` tokens, `heads` query
/// heads of `head_dim` values, sharing `kv_heads` key/value heads (grouped-query attention
/// when fewer; `heads` a multiple of `kv_heads`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
}

impl AttentionShape {
    /// The scores' scale, `1 / √head_dim`.
    pub fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    /// Query heads per key/value head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// A backend the model runs on: burn's [`Backend`] with the model's fused operations.
pub trait ModelBackend: Backend {
    /// A linear layer without bias: `x` `[rows, d_in]` times `weight` `[d_in, d_out]` (burn's
    /// `Linear` layout).
    fn dense(x: Tensor<Self, 2>, weight: Tensor<Self, 2>) -> Tensor<Self, 2> {
        composed::dense(x, weight)
    }

    /// The gradients of [`ModelBackend::dense`] with respect to `x` and `weight`, given the
    /// output's gradient `grad`: `grad · weightᵀ` and `xᵀ · grad`.
    fn dense_backward(
        x: Tensor<Self, 2>,
        weight: Tensor<Self, 2>,
        grad: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        composed::dense_backward(x, weight, grad)
    }

    /// Causal self-attention on token-major projections: `q` is `[batch · seq, heads ·
    /// head_dim]`, `k` and `v` `[batch · seq, kv_heads · head_dim]` (keys after RoPE), and
    /// each query attends with `softmax(q · kᵀ / √head_dim)` to the keys at its own position
    /// and before. Returns the output in `q`'s layout, and the attention probabilities
    /// `[batch · heads · seq, seq]` (a future key's exactly 0) that the backward pass takes.
    fn causal_attention(
        q: Tensor<Self, 2>,
        k: Tensor<Self, 2>,
        v: Tensor<Self, 2>,
        shape: AttentionShape,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        composed::causal_attention(q, k, v, shape)
    }

    /// The gradients of [`ModelBackend::causal_attention`]'s output with respect to `q`, `k`
    /// and `v`, given its inputs, its probabilities and the output's gradient `grad`.
    fn causal_attention_backward(
        q: Tensor<Self, 2>,
        k: Tensor<Self, 2>,
        v: Tensor<Self, 2>,
        probs: Tensor<Self, 2>,
        grad: Tensor<Self, 2>,
        shape: AttentionShape,
    ) -> [Tensor<Self, 2>; 3] {
        composed::causal_attention_backward(q, k, v, probs, grad, shape)
    }

    /// The mean cross-entropy `[1]` of predicting `targets` `[rows]` (token ids) from
    /// `logits` `[rows, vocab]`: the mean over rows of `logsumexp(row) − row[target]`. A
    /// target outside the vocabulary makes it NaN.
    fn cross_entropy(logits: Tensor<Self, 2>, targets: Tensor<Self, 1, Int>) -> Tensor<Self, 1> {
        composed::cross_entropy(logits, targets)
    }

    /// The gradient of [`ModelBackend::cross_entropy`] with respect to `logits`, given the
    /// loss's gradient `grad` `[1]`: `(softmax(row) − onehot(target)) · grad / rows`.
    fn cross_entropy_backward(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
        grad: Tensor<Self, 1>,
    ) -> Tensor<Self, 2> {
        composed::cross_entropy_backward(logits, targets, grad)
    }

    /// RMSNorm over each row of `x` `[rows, d]`: `x · rsqrt(mean(x²) + ε) ⊙ weight`.
    fn rms_norm(x: Tensor<Self, 2>, weight: Tensor<Self, 1>, epsilon: f64) -> Tensor<Self, 2> {
        composed::rms_norm(x, weight, epsilon)
    }

    /// The gradients of [`ModelBackend::rms_norm`] with respect to `x` and `weight`: with `r =
    /// rsqrt(mean(x²) + ε)` per row, `dx = r · (grad ⊙ weight − x · r² · mean(grad ⊙ weight ⊙
    /// x))` and `dweight = Σ_rows grad ⊙ x · r`.
    fn rms_norm_backward(
        x: Tensor<Self, 2>,
        weight: Tensor<Self, 1>,
        grad: Tensor<Self, 2>,
        epsilon: f64,
    ) -> (Tensor<Self, 2>, Tensor<Self, 1>) {
        composed::rms_norm_backward(x, weight, grad, epsilon)
    }

    /// Rotary position embedding in Hugging Face's rotate-half layout on `x` `[rows, heads ·
    /// head_dim]`: `x ⊙ cos + rotate_half(x) ⊙ sin` per head, `rotate_half([x₁, x₂]) = [−x₂,
    /// x₁]` over the head's halves, row `r` taking row `r mod m` of the constant tables `cos`
    /// and `sin` `[m, heads · head_dim]` (`rows` a multiple of `m`). The tables repeat each
    /// frequency over both halves of a head, so the gradient is the same rotation with `sin`
    /// negated.
    fn rope(
        x: Tensor<Self, 2>,
        cos: Tensor<Self, 2>,
        sin: Tensor<Self, 2>,
        head_dim: usize,
    ) -> Tensor<Self, 2> {
        composed::rope(x, cos, sin, head_dim)
    }

    /// SwiGLU's gated activation `silu(gate) ⊙ up` (both `[tokens, ffn_hidden]`).
    fn swiglu(gate: Tensor<Self, 2>, up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        composed::swiglu(gate, up)
    }

    /// The gradients of [`ModelBackend::swiglu`] with respect to `gate` and `up`.
    fn swiglu_backward(
        gate: Tensor<Self, 2>,
        up: Tensor<Self, 2>,
        grad: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        composed::swiglu_backward(gate, up, grad)
    }
}

/// A backend the model trains on: autodiff over a [`ModelBackend`], itself one.
pub trait TrainBackend: AutodiffBackend<InnerBackend: ModelBackend> + ModelBackend {}

impl<B> TrainBackend for B
where
    B: AutodiffBackend + ModelBackend,
    B::InnerBackend: ModelBackend,
{
}

#[cfg(feature = "wgpu")]
impl ModelBackend for burn::backend::Wgpu {}

#[cfg(feature = "cuda")]
impl ModelBackend for burn::backend::Cuda {}

/// Key/value heads `[batch, kv_heads, len, head_dim]` with each repeated for the `group` query
/// heads sharing it: `[batch, kv_heads · group, len, head_dim]`.
pub fn repeat_kv<B: Backend>(t: Tensor<B, 4>, group: usize) -> Tensor<B, 4> {
    if group == 1 {
        return t;
    }
    let [b, kv_heads, len, head_dim] = t.dims();
    t.unsqueeze_dim::<5>(2)
        .expand([b, kv_heads, group, len, head_dim])
        .reshape([b, kv_heads * group, len, head_dim])
}

/// The fused operations written with burn's tensor operations, for any backend.
mod composed {
    use super::*;

    pub fn dense<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 2>) -> Tensor<B, 2> {
        x.matmul(weight)
    }

    pub fn dense_backward<B: Backend>(
        x: Tensor<B, 2>,
        weight: Tensor<B, 2>,
        grad: Tensor<B, 2>,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        (
            grad.clone().matmul(weight.transpose()),
            x.transpose().matmul(grad),
        )
    }

    pub fn causal_attention<B: Backend>(
        q: Tensor<B, 2>,
        k: Tensor<B, 2>,
        v: Tensor<B, 2>,
        shape: AttentionShape,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let AttentionShape { batch, seq, .. } = shape;
        let group = shape.group();
        let q = split_heads(q, shape.heads, shape);
        let k = repeat_kv(split_heads(k, shape.kv_heads, shape), group);
        let v = repeat_kv(split_heads(v, shape.kv_heads, shape), group);
        let scores = q.matmul(k.swap_dims(2, 3));
        let probs = causal_softmax(
            scores.reshape([batch * shape.heads * seq, seq]),
            shape.scale(),
        );
        let out = probs
            .clone()
            .reshape([batch, shape.heads, seq, seq])
            .matmul(v);
        (merge_heads(out), probs)
    }

    pub fn causal_attention_backward<B: Backend>(
        q: Tensor<B, 2>,
        k: Tensor<B, 2>,
        v: Tensor<B, 2>,
        probs: Tensor<B, 2>,
        grad: Tensor<B, 2>,
        shape: AttentionShape,
    ) -> [Tensor<B, 2>; 3] {
        let AttentionShape {
            batch, seq, heads, ..
        } = shape;
        let group = shape.group();
        let q = split_heads(q, heads, shape);
        let k = repeat_kv(split_heads(k, shape.kv_heads, shape), group);
        let v = repeat_kv(split_heads(v, shape.kv_heads, shape), group);
        let grad = split_heads(grad, heads, shape);
        let p = probs.clone().reshape([batch, heads, seq, seq]);
        let dv = p.swap_dims(2, 3).matmul(grad.clone());
        let dp = grad.matmul(v.swap_dims(2, 3));
        let ds =
            causal_softmax_backward(probs, dp.reshape([batch * heads * seq, seq]), shape.scale())
                .reshape([batch, heads, seq, seq]);
        let dq = ds.clone().matmul(k);
        let dk = ds.swap_dims(2, 3).matmul(q);
        [
            merge_heads(dq),
            merge_heads(sum_groups(dk, group)),
            merge_heads(sum_groups(dv, group)),
        ]
    }

    /// Softmax along each row of `scale · scores` (`[groups · len, len]`, row `i` of a group
    /// the query at position `i`) with the keys after the query's position masked out.
    fn causal_softmax<B: Backend>(scores: Tensor<B, 2>, scale: f32) -> Tensor<B, 2> {
        let [rows, len] = scores.dims();
        let future = |k: usize| k % len > k / len;
        let bias: Vec<f32> = (0..len * len)
            .map(|k| if future(k) { f32::NEG_INFINITY } else { 0.0 })
            .collect();
        let bias = Tensor::<B, 1>::from_floats(bias.as_slice(), &scores.device());
        let groups = scores.mul_scalar(scale).reshape([rows / len, len * len]);
        softmax((groups + bias.unsqueeze()).reshape([rows, len]), 1)
    }

    /// The gradient of [`causal_softmax`] at its output `y`: `scale · y ⊙ (grad − Σ grad ⊙
    /// y)`, the sum along each row.
    fn causal_softmax_backward<B: Backend>(
        y: Tensor<B, 2>,
        grad: Tensor<B, 2>,
        scale: f32,
    ) -> Tensor<B, 2> {
        let dot = (grad.clone() * y.clone()).sum_dim(1);
        (y * (grad - dot)).mul_scalar(scale)
    }

    /// `[batch · seq, n · head_dim]` as `[batch, n, seq, head_dim]`.
    fn split_heads<B: Backend>(t: Tensor<B, 2>, n: usize, shape: AttentionShape) -> Tensor<B, 4> {
        t.reshape([shape.batch, shape.seq, n, shape.head_dim])
            .swap_dims(1, 2)
    }

    /// `[batch, n, seq, head_dim]` as `[batch · seq, n · head_dim]`.
    fn merge_heads<B: Backend>(t: Tensor<B, 4>) -> Tensor<B, 2> {
        let [batch, n, seq, head_dim] = t.dims();
        t.swap_dims(1, 2).reshape([batch * seq, n * head_dim])
    }

    /// Per-head gradients `[batch, heads, seq, head_dim]` summed over each group of query heads
    /// that shared a key/value head: the gradient through [`repeat_kv`].
    fn sum_groups<B: Backend>(t: Tensor<B, 4>, group: usize) -> Tensor<B, 4> {
        if group == 1 {
            return t;
        }
        let [batch, heads, seq, head_dim] = t.dims();
        t.reshape([batch, heads / group, group, seq, head_dim])
            .sum_dim(2)
            .reshape([batch, heads / group, seq, head_dim])
    }

    pub fn cross_entropy<B: Backend>(
        logits: Tensor<B, 2>,
        targets: Tensor<B, 1, Int>,
    ) -> Tensor<B, 1> {
        let [_, vocab] = logits.dims();
        let clamped = targets.clone().clamp(0, vocab as i64 - 1);
        let valid = clamped.clone().equal(targets).float();
        let picked = log_softmax(logits, 1)
            .gather(1, clamped.unsqueeze_dim(1))
            .reshape([-1]);
        // A target outside the vocabulary: 0 · -∞ would hide it; NaN says it.
        let nan_if_invalid = valid.clone().log() * valid;
        (picked.neg() + nan_if_invalid).mean()
    }

    pub fn cross_entropy_backward<B: Backend>(
        logits: Tensor<B, 2>,
        targets: Tensor<B, 1, Int>,
        grad: Tensor<B, 1>,
    ) -> Tensor<B, 2> {
        let [rows, vocab] = logits.dims();
        let classes = Tensor::<B, 1, Int>::arange(0..vocab as i64, &logits.device());
        let one_hot = targets
            .unsqueeze_dim::<2>(1)
            .equal(classes.unsqueeze())
            .float();
        (softmax(logits, 1) - one_hot) * grad.div_scalar(rows as f32).unsqueeze()
    }

    /// Written with a multiply by the per-row reciprocal rather than burn's divide, which
    /// keeps burn's broadcasts on their fast paths.
    pub fn rms_norm<B: Backend>(
        x: Tensor<B, 2>,
        weight: Tensor<B, 1>,
        epsilon: f64,
    ) -> Tensor<B, 2> {
        (x.clone() * inv_rms(x, epsilon)) * weight.unsqueeze()
    }

    pub fn rms_norm_backward<B: Backend>(
        x: Tensor<B, 2>,
        weight: Tensor<B, 1>,
        grad: Tensor<B, 2>,
        epsilon: f64,
    ) -> (Tensor<B, 2>, Tensor<B, 1>) {
        let d = weight.dims()[0];
        let r = inv_rms(x.clone(), epsilon);
        let gw = grad.clone() * weight.unsqueeze();
        let mean = (gw.clone() * x.clone()).mean_dim(1);
        let dx = (gw - x.clone() * r.clone().square() * mean) * r.clone();
        let dweight = (grad * x * r).sum_dim(0).reshape([d]);
        (dx, dweight)
    }

    /// `rsqrt(mean(x²) + ε)` of each row, `[rows, 1]`.
    fn inv_rms<B: Backend>(x: Tensor<B, 2>, epsilon: f64) -> Tensor<B, 2> {
        (x.square().mean_dim(1) + epsilon).sqrt().recip()
    }

    pub fn rope<B: Backend>(
        x: Tensor<B, 2>,
        cos: Tensor<B, 2>,
        sin: Tensor<B, 2>,
        head_dim: usize,
    ) -> Tensor<B, 2> {
        let [rows, width] = x.dims();
        let [m, _] = cos.dims();
        let half = head_dim / 2;
        let heads = x.clone().reshape([rows, width / head_dim, head_dim]);
        let rotated = Tensor::cat(
            vec![
                heads.clone().narrow(2, half, half).neg(),
                heads.narrow(2, 0, half),
            ],
            2,
        );
        // Each group of `m` rows as one row against the tables as one row: a plain broadcast.
        let grouped = [rows / m, m * width];
        let table = |t: Tensor<B, 2>| t.reshape([1, m * width]);
        let out = x.reshape(grouped) * table(cos) + rotated.reshape(grouped) * table(sin);
        out.reshape([rows, width])
    }

    pub fn swiglu<B: Backend>(gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Tensor<B, 2> {
        silu(gate) * up
    }

    /// `d up = grad ⊙ silu(gate)`, `d gate = grad ⊙ up ⊙ σ ⊙ (1 + gate ⊙ (1 − σ))` with
    /// `σ = sigmoid(gate)`.
    pub fn swiglu_backward<B: Backend>(
        gate: Tensor<B, 2>,
        up: Tensor<B, 2>,
        grad: Tensor<B, 2>,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let s = sigmoid(gate.clone());
        let d_up = grad.clone() * gate.clone() * s.clone();
        let d_gate = grad * up * s.clone() * (gate * (s.neg() + 1.0) + 1.0);
        (d_gate, d_up)
    }
}

#[cfg(test)]
mod tests;
