//! The model's two widest operations as single operations with their own backward: the
//! scaled, causally masked softmax over the attention scores, and SwiGLU's `silu(gate) · up`.
//!
//! burn records the masked softmax as seven operations and SwiGLU as three, each a pass over a tensor of
//! `batch · heads · seq²` or `tokens · ffn_hidden` values, most of them kept for the backward
//! pass; and flex computes `exp` one value at a time. [`ModelBackend`] makes each one
//! operation on every backend: its default methods compose burn's tensor operations (wgpu,
//! CUDA), flex overrides them with host kernels ([`flex`]: one pass per row or element, a
//! vectorized `exp`), and autodiff records a single node whose backward calls the op's own
//! ([`autodiff`]).

mod autodiff;
mod exp;
mod flex;

use burn::tensor::Tensor;
use burn::tensor::activation::{sigmoid, silu, softmax};
use burn::tensor::backend::{AutodiffBackend, Backend};

pub use exp::exp;

/// A backend the model runs on: burn's [`Backend`] with the model's fused operations.
pub trait ModelBackend: Backend {
    /// Attention probabilities from raw scores `[groups · len, len]` (a group per batch and
    /// head, its row `i` the query at position `i`): softmax along each row of `scale ·
    /// scores`, with the keys after the query's position masked out (probability 0).
    fn causal_softmax(scores: Tensor<Self, 2>, scale: f32) -> Tensor<Self, 2> {
        composed::causal_softmax(scores, scale)
    }

    /// The gradient of [`ModelBackend::causal_softmax`] at its output `y`: `scale · y ⊙
    /// (grad − Σ grad ⊙ y)`, the sum along each row.
    fn causal_softmax_backward(
        y: Tensor<Self, 2>,
        grad: Tensor<Self, 2>,
        scale: f32,
    ) -> Tensor<Self, 2> {
        composed::causal_softmax_backward(y, grad, scale)
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

/// The fused operations written with burn's tensor operations, for any backend.
mod composed {
    use super::*;

    pub fn causal_softmax<B: Backend>(scores: Tensor<B, 2>, scale: f32) -> Tensor<B, 2> {
        let [rows, len] = scores.dims();
        let future = |k: usize| k % len > k / len;
        let bias: Vec<f32> = (0..len * len)
            .map(|k| if future(k) { f32::NEG_INFINITY } else { 0.0 })
            .collect();
        let bias = Tensor::<B, 1>::from_floats(bias.as_slice(), &scores.device());
        let groups = scores.mul_scalar(scale).reshape([rows / len, len * len]);
        softmax((groups + bias.unsqueeze()).reshape([rows, len]), 1)
    }

    pub fn causal_softmax_backward<B: Backend>(
        y: Tensor<B, 2>,
        grad: Tensor<B, 2>,
        scale: f32,
    ) -> Tensor<B, 2> {
        let dot = (grad.clone() * y.clone()).sum_dim(1);
        (y * (grad - dot)).mul_scalar(scale)
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
