//! The fused operations on flex: host loops over contiguous `f32` rows or elements, split
//! across rayon's threads and vectorized through [`vectorized`]. Other element types take
//! the composed operations.

use burn::backend::Flex;
use burn::backend::flex::{FlexTensor, Layout};
use burn::tensor::{Bytes, DType, Tensor, TensorPrimitive};
use rayon::prelude::*;

use super::exp::{exp, vectorized};
use super::{ModelBackend, composed};

/// Values per rayon task: enough to outweigh a task's cost, few enough to fill both cores.
const TASK_VALUES: usize = 16 * 1024;
/// Running values a row reduction keeps: one AVX-512 register of `f32`.
const LANES: usize = 16;

impl ModelBackend for Flex {
    fn causal_softmax(scores: Tensor<Self, 2>, scale: f32) -> Tensor<Self, 2> {
        if scores.dtype() != DType::F32 {
            return composed::causal_softmax(scores, scale);
        }
        let [rows, len] = scores.dims();
        let x = contiguous(scores);
        let mut y = vec![0.0f32; rows * len];
        for_chunks(
            len,
            &mut y,
            [x.storage()],
            #[inline(always)]
            |first, [x], y| {
                for (r, (x, y)) in x.chunks(len).zip(y.chunks_mut(len)).enumerate() {
                    // The query's own position and those before it; the rest stay 0.
                    let seen = (first + r) % len + 1;
                    let (x, y) = (&x[..seen], &mut y[..seen]);
                    let max = fold_lanes(x, f32::NEG_INFINITY, |m, v| m.max(v));
                    y.iter_mut()
                        .zip(x)
                        .for_each(|(y, &x)| *y = exp(scale * (x - max)));
                    let inv = 1.0 / fold_lanes(y, 0.0, |s, v| s + v);
                    y.iter_mut().for_each(|y| *y *= inv);
                }
            },
        );
        tensor(y, [rows, len])
    }

    fn causal_softmax_backward(
        y: Tensor<Self, 2>,
        grad: Tensor<Self, 2>,
        scale: f32,
    ) -> Tensor<Self, 2> {
        if y.dtype() != DType::F32 || grad.dtype() != DType::F32 {
            return composed::causal_softmax_backward(y, grad, scale);
        }
        let [rows, len] = y.dims();
        let (y, grad) = (contiguous(y), contiguous(grad));
        let mut dx = vec![0.0f32; rows * len];
        for_chunks(
            len,
            &mut dx,
            [y.storage(), grad.storage()],
            #[inline(always)]
            |_, [y, g], dx| {
                let rows = y.chunks(len).zip(g.chunks(len)).zip(dx.chunks_mut(len));
                for ((y, g), dx) in rows {
                    dx.iter_mut()
                        .zip(y)
                        .zip(g)
                        .for_each(|((dx, &y), &g)| *dx = y * g);
                    let dot = fold_lanes(dx, 0.0, |s, v| s + v);
                    for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                        *dx = scale * (y * (g - dot));
                    }
                }
            },
        );
        tensor(dx, [rows, len])
    }

    fn swiglu(gate: Tensor<Self, 2>, up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        if gate.dtype() != DType::F32 || up.dtype() != DType::F32 {
            return composed::swiglu(gate, up);
        }
        let dims = gate.dims();
        let (gate, up) = (contiguous(gate), contiguous(up));
        let mut h = vec![0.0f32; dims[0] * dims[1]];
        for_chunks(
            1,
            &mut h,
            [gate.storage(), up.storage()],
            #[inline(always)]
            |_, [g, u], h| {
                for ((h, &g), &u) in h.iter_mut().zip(g).zip(u) {
                    *h = g * sigmoid(g) * u;
                }
            },
        );
        tensor(h, dims)
    }

    fn swiglu_backward(
        gate: Tensor<Self, 2>,
        up: Tensor<Self, 2>,
        grad: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        if [&gate, &up, &grad].iter().any(|t| t.dtype() != DType::F32) {
            return composed::swiglu_backward(gate, up, grad);
        }
        let dims = gate.dims();
        let (gate, up, grad) = (contiguous(gate), contiguous(up), contiguous(grad));
        let n = dims[0] * dims[1];
        let (mut d_gate, mut d_up) = (vec![0.0f32; n], vec![0.0f32; n]);
        let ins = [gate.storage(), up.storage(), grad.storage()];
        let chunk = TASK_VALUES;
        d_gate
            .par_chunks_mut(chunk)
            .zip(d_up.par_chunks_mut(chunk))
            .zip(ins[0].par_chunks(chunk))
            .zip(ins[1].par_chunks(chunk).zip(ins[2].par_chunks(chunk)))
            .for_each(|(((d_gate, d_up), g), (u, grad))| {
                vectorized(
                    #[inline(always)]
                    || {
                        let values = d_gate
                            .iter_mut()
                            .zip(d_up.iter_mut())
                            .zip(g)
                            .zip(u)
                            .zip(grad);
                        for ((((d_gate, d_up), &g), &u), &grad) in values {
                            let s = sigmoid(g);
                            *d_up = grad * g * s;
                            *d_gate = grad * u * s * (1.0 + g * (1.0 - s));
                        }
                    },
                )
            });
        (tensor(d_gate, dims), tensor(d_up, dims))
    }
}

/// `values` folded by `op` in [`LANES`] interleaved running values, then across them: an
/// order that vectorizes and is the same on every CPU.
#[inline(always)]
fn fold_lanes(values: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = op(*lane, v);
        }
    }
    let folded = lanes.into_iter().fold(init, &op);
    tail.iter().fold(folded, |acc, &v| op(acc, v))
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Runs `f` on consecutive chunks of `out`, each a whole number of `row`-value rows, with the
/// index of the chunk's first row and the same ranges of `ins`: a chunk per rayon task,
/// vectorized.
fn for_chunks<const N: usize>(
    row: usize,
    out: &mut [f32],
    ins: [&[f32]; N],
    f: impl Fn(usize, [&[f32]; N], &mut [f32]) + Sync,
) {
    if out.is_empty() {
        return;
    }
    let row = row.max(1);
    let chunk = TASK_VALUES.div_ceil(row) * row;
    out.par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(task, out)| {
            let start = task * chunk;
            let ins = ins.map(|x| &x[start..start + out.len()]);
            vectorized(
                #[inline(always)]
                || f(start / row, ins, out),
            )
        });
}

fn contiguous(x: Tensor<Flex, 2>) -> FlexTensor {
    x.into_primitive().tensor().to_contiguous()
}

fn tensor(values: Vec<f32>, dims: [usize; 2]) -> Tensor<Flex, 2> {
    let layout = Layout::contiguous(dims.into());
    let primitive = FlexTensor::new(Bytes::from_elems(values), layout, DType::F32);
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}
